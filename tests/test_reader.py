"""The reader on files of every container written by the writer, on hand-made odd files, and on
non-model files."""
from __future__ import annotations

import struct
import time

import pytest

from gpt4all_loader.errors import FormatError
from gpt4all_loader.formats.ggml_types import TYPES, ftype_name, tensor_nbytes
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, TinyMPT, write_gguf, write_gptj, write_llama, write_mpt

FORMATS = [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3), ("gguf", 1), ("gguf", 2),
           ("gguf", 3)]
LAYOUT = {("ggml", None): "pre-1405", ("ggmf", 1): "pre-1405", ("ggjt", 1): "pre-1405",
          ("ggjt", 2): "pr1405", ("ggjt", 3): "pr1508"}


@pytest.fixture(scope="module")
def small():
    # the reader does not care about the 2023 layer-count table: 2 layers keep the files small
    return TinyLlama(seed=3, n_layer=2, n_embd=32, n_head=4)


@pytest.mark.parametrize("fmt,version", FORMATS)
@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_llama_formats(tmp_path, small, fmt, version, ftype):
    p = write_llama(tmp_path / "m.bin", small, fmt, version, ftype=ftype)
    f = read_facts(p)
    assert f.format == fmt
    assert f.format_version == (0 if version is None else version)
    assert f.kind == "model" and not f.vocab_only and not f.truncated
    assert f.architecture == "llama" and f.tokenizer == "llama"
    assert f.n_tensors == 3 + 9 * 2
    assert f.n_params == small.n_params()
    assert f.file_type == (0 if ftype == "f32" else 1)
    assert f.file_type_name == ("ALL_F32" if ftype == "f32" else "MOSTLY_F16")
    assert f.quant_layout == LAYOUT.get((fmt, version), "pr1508")
    hp = f.hparams
    assert (hp["n_vocab"], hp["n_embd"], hp["n_head"], hp["n_layer"], hp["n_rot"], hp["n_ff"]) == \
        (small.n_vocab, 32, 4, 2, 8, small.n_ff)
    if ftype == "f32":
        assert set(f.tensor_types) == {"F32"}
    else:
        assert f.tensor_types["F32"].count == 1 + 2 * 2  # norms
        assert f.tensor_types["F16"].count == 2 + 7 * 2
    total = sum(s.bytes for s in f.tensor_types.values())
    assert total == sum(n * (4 if len(small.tensor_shapes()[k]) == 1 or ftype == "f32" else 2)
                        for k, n in ((k, _prod(s)) for k, s in small.tensor_shapes().items()))
    assert f.data_offset is not None and f.data_offset + f.data_bytes_expected == p.stat().st_size
    assert ("LLaMA" in f.description or "llama" in f.description) and f.description.count("\n") == 0


def _prod(s):
    n = 1
    for d in s:
        n *= d
    return n


def test_descriptions(tmp_path, small):
    p = write_llama(tmp_path / "a.bin", small, "ggjt", 1, ftype="f16")
    assert read_facts(p).description == "ggjt v1 LLaMA, mostly F16"
    p = write_llama(tmp_path / "b.gguf", small, "gguf", 3, chat_template="{{ x }}")
    f = read_facts(p)
    assert f.description.startswith("GGUF v3 llama 'tiny-llama', all F32, llama tokenizer")
    assert f.chat_template == "{{ x }}"


@pytest.mark.parametrize("fmt,version", FORMATS)
def test_vocab_only(tmp_path, small, fmt, version):
    p = write_llama(tmp_path / "v.bin", small, fmt, version, vocab_only=True)
    f = read_facts(p)
    assert f.vocab_only and f.kind == "vocab-only" and f.n_tensors == 0 and not f.truncated
    assert f.hparams["n_vocab"] == small.n_vocab


def test_big_endian_gguf(tmp_path, small):
    p = write_llama(tmp_path / "be.gguf", small, "gguf", 3, endian="big", ftype="f16")
    f = read_facts(p)
    assert f.endianness == "big" and f.format_version == 3
    assert f.n_params == small.n_params() and f.hparams["n_embd"] == 32
    assert "big-endian" in f.description


def test_with_kv_and_vocab(tmp_path, small):
    p = write_llama(tmp_path / "m.gguf", small, "gguf", 2, vocab_only=True)
    assert read_facts(p).kv is None
    kv = read_facts(p, with_kv=True).kv
    assert kv["general.architecture"] == "llama"
    assert kv["tokenizer.ggml.tokens"] == {"type": "STRING", "length": small.n_vocab}
    assert kv["tokenizer.ggml.scores"] == {"type": "FLOAT32", "length": small.n_vocab}
    kv = read_facts(p, with_vocab=True).kv
    toks, scores, types = small.gguf_vocab()
    assert kv["tokenizer.ggml.tokens"] == toks and kv["tokenizer.ggml.token_type"] == types
    leg = read_facts(write_llama(tmp_path / "l.bin", small, "ggmf", 1, vocab_only=True), with_vocab=True).kv
    assert leg["tokenizer.ggml.tokens"][3 + 65] == b"A"
    assert len(leg["tokenizer.ggml.scores"]) == small.n_vocab


def test_gptj_and_mpt(tmp_path):
    g = TinyGPTJ(seed=1, n_vocab=50300, n_embd=8, n_head=2, n_layer=1, n_rot=4)
    f = read_facts(write_gptj(tmp_path / "j.bin", g, "f16"))
    assert (f.format, f.format_version, f.kind, f.architecture, f.quant_layout) == ("ggml", 0, "model", "gptj", "qnt0")
    assert f.hparams["n_vocab"] == 50300 and f.hparams["n_rot"] == 4 and f.n_params == g.n_params()
    assert f.description == "ggml GPT-J, mostly F16"
    m = TinyMPT(seed=1)
    f = read_facts(write_mpt(tmp_path / "m.bin", m, "ggmm", "f16"))
    assert (f.format, f.kind, f.architecture) == ("ggmm", "model", "mpt")
    assert f.tensor_types["F32"].count == 1 + 2 * 2 + 1  # wte, norms
    assert f.hparams["alibi_bias_max"] == 8.0 and f.n_params == m.n_params()
    f = read_facts(write_mpt(tmp_path / "u.bin", m, "ggml", "f32"))
    assert (f.format, f.format_version, f.kind, f.architecture) == ("ggml", 0, "model", "mpt")
    assert f.hparams["n_vocab"] == m.n_vocab and f.n_params == m.n_params()


def test_gptj_quant_version(tmp_path):
    g = TinyGPTJ(seed=1, n_vocab=50300, n_embd=8, n_head=2, n_layer=1, n_rot=4)
    p = write_gptj(tmp_path / "j.bin", g, "f32")
    b = bytearray(p.read_bytes())
    b[28:32] = struct.pack("<i", 2000)  # ftype field: QNT version 2, F32
    p.write_bytes(b)
    f = read_facts(p)
    assert f.quant_layout == "qnt2" and f.file_type == 2000 and f.file_type_name == "ALL_F32"


def test_data_past_eof_is_reported(tmp_path, small):
    for fmt, v in [("ggjt", 3), ("gguf", 3), ("ggml", None)]:
        p = write_llama(tmp_path / f"t{fmt}.bin", small, fmt, v)
        full = p.stat().st_size
        with open(p, "r+b") as fh:
            fh.truncate(full - 1000)
        f = read_facts(p)
        assert f.truncated, fmt
        assert any("ends" in n or "cut short" in n for n in f.notes)
        if fmt == "gguf":
            assert f.data_offset + f.data_bytes_expected == full
        assert "TRUNCATED" in f.description


def test_truncated_header_raises(tmp_path, small):
    p = write_llama(tmp_path / "h.bin", small, "ggjt", 1)
    data = p.read_bytes()
    p.write_bytes(data[:500])  # inside the vocabulary
    with pytest.raises(FormatError) as ei:
        read_facts(p)
    msg = str(ei.value)
    assert str(p) in msg and "byte offset" in msg and "field" in msg and "expected" in msg
    g = write_llama(tmp_path / "h.gguf", small, "gguf", 3)
    p.write_bytes(g.read_bytes()[:300])
    with pytest.raises(FormatError, match="n_tensors|kv"):
        read_facts(p)


def test_huge_counts_fail_fast(tmp_path):
    p = tmp_path / "x.bin"
    # ggjt v1 claiming 2^31-1 vocab entries in a 1 KB file
    p.write_bytes(struct.pack("<II7i", 0x67676A74, 1, 0x7FFFFFFF, 4096, 256, 32, 32, 128, 2) + b"\0" * 1000)
    t = time.perf_counter()
    with pytest.raises(FormatError, match="n_vocab"):
        read_facts(p)
    assert time.perf_counter() - t < 0.5
    for hdr, field in [(struct.pack("<4sIQQ", b"GGUF", 3, 1 << 62, 0), "n_tensors"),
                       (struct.pack("<4sIQQ", b"GGUF", 3, 0, 1 << 40), "n_kv"),
                       (struct.pack("<4sIQQQ", b"GGUF", 3, 0, 1, 1 << 60), "length")]:
        p.write_bytes(hdr + b"\0" * 1000)
        with pytest.raises(FormatError, match=field):
            read_facts(p)
    # array count of 2^40 u8 elements
    body = struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 0, 1 << 40)
    p.write_bytes(struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + body + b"\0" * 100)
    with pytest.raises(FormatError, match="array length"):
        read_facts(p)


def test_bad_versions(tmp_path):
    p = tmp_path / "v.bin"
    for blob, what in [(struct.pack("<4sI", b"GGUF", 4) + b"\0" * 64, "version"),
                       (struct.pack("<II", 0x67676A74, 7) + b"\0" * 64, "version"),
                       (struct.pack("<II", 0x67676D66, 2) + b"\0" * 64, "version")]:
        p.write_bytes(blob)
        with pytest.raises(FormatError, match=what):
            read_facts(p)


def test_gguf_unknown_type_and_split_experts(tmp_path):
    kv = [("general.architecture", 8, "llama"), ("llama.expert_count", 4, 2)]
    tensors = [("blk.0.ffn_gate.0.weight", 0, [32, 4]), ("blk.0.ffn_gate.1.weight", 2, [32, 4])]
    f = read_facts(write_gguf(tmp_path / "e.gguf", kv, tensors, version=2))
    assert f.split_experts and f.hparams["expert_count"] == 2 and f.format_version == 2
    assert f.tensor_types["Q4_0"].bytes == 4 * 18
    p = write_gguf(tmp_path / "u.gguf", kv, [("a.weight", 0, [4])])
    b = bytearray(p.read_bytes())
    i = b.index(b"a.weight") + len(b"a.weight") + 4 + 8
    b[i:i + 4] = struct.pack("<I", 99)
    p.write_bytes(b)
    f = read_facts(p)
    assert "TYPE_99" in f.tensor_types and any("99" in n for n in f.notes)


def test_gguf_row_not_multiple_of_block(tmp_path):
    p = tmp_path / "r.gguf"
    with pytest.raises(ValueError):
        write_gguf(p, [], [("x", 2, [16, 2])])  # the writer refuses too
    good = write_gguf(p, [], [("x", 2, [32, 2])])
    b = bytearray(good.read_bytes())
    i = b.index(b"x") + 1 + 4
    b[i:i + 8] = struct.pack("<Q", 16)
    p.write_bytes(b)
    with pytest.raises(FormatError, match="block size"):
        read_facts(p)


def test_lora(tmp_path):
    p = tmp_path / "lora.bin"
    name = b"layers.0.attention.wq.weight.loraA"
    rec = struct.pack("<3i2i", 2, len(name), 0, 32, 4) + name
    body = struct.pack("<IIii", 0x67676C61, 1, 4, 8) + rec
    pad = -len(body) % 32
    p.write_bytes(body + b"\0" * pad + b"\0" * (32 * 4 * 4))
    f = read_facts(p)
    assert (f.format, f.kind, f.n_tensors) == ("ggla", "lora", 1)
    assert f.hparams == {"lora_r": 4, "lora_alpha": 8} and not f.truncated


def test_other_ggml_families(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(struct.pack("<I11i", 0x67676D6C, 51865, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1) + b"\0" * 64)
    f = read_facts(p)
    assert (f.format, f.kind) == ("whisper", "unsupported-ggml")
    p.write_bytes(struct.pack("<II4i", 0x67676D66, 101, 50277, 768, 12, 1) + b"\0" * 64)
    f = read_facts(p)
    assert (f.format, f.kind, f.format_version) == ("rwkv", "unsupported-ggml", 101)
    # GPT-2 (ggml examples): 6 hparams, vocab count, tensors named model/...
    name = b"model/ln_f/g"
    blob = struct.pack("<I6ii", 0x67676D6C, 2, 16, 4, 1, 1, 0, 2) + struct.pack("<I", 1) + b"a" \
        + struct.pack("<I", 1) + b"b" + struct.pack("<4i", 1, len(name), 0, 4) + name + b"\0" * 16
    p.write_bytes(blob)
    f = read_facts(p)
    assert (f.format, f.kind, f.architecture) == ("ggml", "unsupported-ggml", "gpt2")


NOT_MODELS = {
    "empty": b"",
    "safetensors": struct.pack("<Q", 20) + b'{"a":{"dtype":"F32"}}' + b"\0" * 8,
    "pytorch-zip": b"PK\x03\x04" + b"\0" * 26 + b"archive/data.pkl" + b"\0" * 100,
    "pickle": b"\x80\x02}q\x00.",
    "html": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
    "json": b'{"model_type": "llama"}',
    "text": b"hello, this is not a model\n",
    "git-lfs-pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
    "unknown": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("fmt", sorted(NOT_MODELS))
def test_not_a_model(tmp_path, fmt):
    p = tmp_path / "x.bin"
    p.write_bytes(NOT_MODELS[fmt])
    f = read_facts(p)
    assert f.kind == "not-a-model" and f.format == fmt and f.description


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_facts(tmp_path / "nope.bin")


def test_type_table():
    assert tensor_nbytes(2, [32, 2], "pre-1405") == 40
    assert tensor_nbytes(2, [32, 2], "pr1405") == 40
    assert tensor_nbytes(2, [32, 2], "pr1508") == 36
    assert tensor_nbytes(4, [32], "pre-1405") == 20  # Q4_2: 2 blocks of 16
    assert tensor_nbytes(5, [16], "pre-1405") == 12  # Q4_3
    assert tensor_nbytes(8, [32], "pre-1405") == 36 and tensor_nbytes(8, [32]) == 34
    assert tensor_nbytes(12, [256, 3]) == 3 * 144  # Q4_K
    assert tensor_nbytes(30, [7]) == 14  # BF16
    assert tensor_nbytes(40, [64]) == 36 and tensor_nbytes(41, [128]) == 18 and tensor_nbytes(42, [64]) == 18
    assert TYPES["pr1508"][39].name == "MXFP4" and TYPES["pr1508"][34].size == 54
    for bad in [(4, [32], "pr1508"), (12, [256], "pre-1405"), (43, [32], "pr1508"), (2, [16], "pr1508")]:
        with pytest.raises(FormatError):
            tensor_nbytes(*bad)
    assert ftype_name(4) == "MOSTLY_Q4_1_SOME_F16" and ftype_name(32, gguf=True) == "MOSTLY_BF16"
    assert ftype_name(1024, gguf=True) == "GUESSED"


# -- what only some engines refuse: read, and recorded where it is --------------------------------------------
def _kv(*extra):
    return [("general.architecture", 8, "llama"), ("general.file_type", 4, 1), *extra]


def test_repeated_key_keeps_the_first_value(tmp_path):
    """ggml before 2025 reads a key stated twice and finds the first value (gguf_find_key): so does the reader,
    and the repetition is an anomaly naming the key and its kv index."""
    p = write_gguf(tmp_path / "a.gguf", _kv(("general.name", 8, "x"), ("general.file_type", 4, 7)),
                   [("token_embd.weight", 0, [8, 4])])
    f = read_facts(p, with_kv=True)
    assert f.file_type == 1 and f.kv["general.file_type"] == 1 and f.kv_types["general.file_type"] == "UINT32"
    detail = "duplicate key 'general.file_type' at kv 3"
    assert [(a.kind, a.detail) for a in f.anomalies] == [("duplicate-key", detail)]
    assert f.to_dict()["anomalies"] == [{"kind": "duplicate-key", "detail": detail}]


def test_empty_key_and_nested_arrays_are_anomalies(tmp_path):
    p = write_gguf(tmp_path / "a.gguf", _kv(("", 4, 1), ("general.tags", (9, 9), [(4, [1, 2]), (8, ["a", "b"])]),
                                            ("", 4, 2), ("", 4, 3)), [])
    f = read_facts(p, with_kv=True)
    # the first of each kind, and how many more follow (a hostile file gets one reason per kind)
    assert [(a.kind, a.detail) for a in f.anomalies] == [
        ("empty-key", "empty key at kv 2 (and 2 more)"),
        ("nested-array", "array of arrays in key 'general.tags' at kv 3"),
        ("duplicate-key", "duplicate key '' at kv 4 (and 1 more)")]
    assert f.kv["general.tags"] == [[1, 2], ["a", "b"]] and f.kv_types["general.tags"] == "ARRAY[ARRAY]"
    # nesting beyond what any writer produces stays a format error (the reader's recursion is bounded)
    deep = write_gguf(tmp_path / "d.gguf", _kv(("t", (9, 9), [(9, [(9, [(4, [1])])])])), [])
    with pytest.raises(FormatError, match="nested at most 3 deep"):
        read_facts(deep)


def test_tensor_data_out_of_order_and_zero_dims_are_anomalies(tmp_path):
    """Data offsets that are aligned but not packed in order (read by ggml before 2025), and a dimension of 0
    (aborts ggml of 2024): both recorded with the tensor's name."""
    p = write_gguf(tmp_path / "a.gguf", _kv(), [("a.weight", 0, [8]), ("b.weight", 0, [8]), ("c.weight", 0, [0, 4])])
    b = bytearray(p.read_bytes())
    at = [b.index(n) + len(n) + 4 + 8 + 4 for n in (b"a.weight", b"b.weight")]
    offs = [struct.unpack_from("<Q", b, i)[0] for i in at]
    for i, off in zip(at, reversed(offs)):
        struct.pack_into("<Q", b, i, off)
    p.write_bytes(b)
    f = read_facts(p)
    assert [a.kind for a in f.anomalies] == ["tensor-data-order", "zero-dim"]
    assert f.anomalies[0].detail.startswith("tensor 'a.weight' (tensor 0) has its data at offset 32, not at 0")
    assert f.anomalies[1].detail == "tensor 'c.weight' (tensor 2) has a dimension of 0 (shape [0, 4])"
    assert not f.truncated and f.tensors["c.weight"] == ("F32", (0, 4), 0)
