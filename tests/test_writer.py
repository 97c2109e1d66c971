"""The fixture writer: determinism, identical weights in every container, exact on-disk layouts."""
from __future__ import annotations

import struct
from array import array

import pytest

from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, TinyMPT, gguf_name, write_gptj, write_llama, write_mpt


@pytest.fixture(scope="module")
def m():
    return TinyLlama(seed=11, n_layer=2, n_embd=32, n_head=4)


def test_defaults():
    t = TinyLlama()
    assert t.n_layer == 32 and t.n_embd == 64 and t.n_ff == ((2 * 256 // 3 + 31) // 32) * 32 == 192
    assert t.n_vocab == 3 + 256 + len(t.words)


def test_deterministic():
    a, b, c = TinyLlama(seed=1, n_layer=1), TinyLlama(seed=1, n_layer=1), TinyLlama(seed=2, n_layer=1)
    name = "layers.0.attention.wq.weight"
    assert a.weights(name) == b.weights(name) != c.weights(name)
    w = a.weights("tok_embeddings.weight")
    assert w.typecode == "f" and len(w) == a.n_embd * a.n_vocab
    assert 0.9 <= min(a.weights("norm.weight")) and max(a.weights("norm.weight")) <= 1.1
    assert max(abs(x) for x in a.weights(name)) <= 1 / a.n_embd ** 0.5 + 1e-6
    assert len(set(a.weights(name))) > 0.9 * len(a.weights(name))  # not degenerate


def test_vocab_conventions(m):
    leg = m.legacy_vocab()
    assert leg[3 + ord("A")][0] == b"A" and leg[3 + 0xFF][0] == b"\xff"
    assert any(t == b" the" for t, _ in leg)
    toks, scores, types = m.gguf_vocab()
    assert toks[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [2, 3, 3]
    assert toks[3 + 0x0A] == "<0x0A>" and types[3 + 0x0A] == 6
    assert "\u2581the" in toks and types[toks.index("\u2581the")] == 1
    assert len(set(toks)) == len(toks) == m.n_vocab
    assert len({t for t, _ in leg[3:]}) == m.n_vocab - 3  # no duplicate texts (byte tokens are unique)


def _first_tensor_data(path, nbytes):
    f = read_facts(path)
    with open(path, "rb") as fh:
        if f.format == "gguf":
            fh.seek(f.data_offset)
            return fh.read(nbytes)
        fh.seek(f.data_offset)
        n_dims, name_len, _ = struct.unpack("<3i", fh.read(12))
        fh.seek(4 * n_dims + name_len, 1)
        if f.format == "ggjt":
            fh.seek(-fh.tell() % 32, 1)
        return fh.read(nbytes)


@pytest.mark.parametrize("fmt,version", [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 3), ("gguf", 1),
                                         ("gguf", 3)])
def test_same_weights_everywhere(tmp_path, m, fmt, version):
    p = write_llama(tmp_path / "x", m, fmt, version)
    w = m.weights("tok_embeddings.weight")
    assert _first_tensor_data(p, 4 * len(w)) == w.tobytes()


def test_f16_and_big_endian(tmp_path, m):
    w = m.weights("tok_embeddings.weight")
    p = write_llama(tmp_path / "h.gguf", m, "gguf", 3, ftype="f16")
    assert _first_tensor_data(p, 2 * len(w)) == struct.pack(f"<{len(w)}e", *w)
    p = write_llama(tmp_path / "b.gguf", m, "gguf", 3, endian="big")
    sw = array("f", w)
    sw.byteswap()
    assert _first_tensor_data(p, 4 * len(w)) == sw.tobytes()
    assert p.read_bytes()[:8] == b"GGUF\0\0\0\3"


def test_gguf_metadata(tmp_path, m):
    kv = read_facts(write_llama(tmp_path / "k.gguf", m, "gguf", 1, chat_template="T"), with_kv=True).kv
    for k in ["general.architecture", "general.name", "general.file_type", "llama.context_length",
              "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
              "llama.rope.dimension_count", "llama.attention.head_count", "llama.attention.head_count_kv",
              "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
              "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.chat_template"]:
        assert k in kv, k
    assert kv["llama.feed_forward_length"] == m.n_ff and kv["general.alignment"] == 32


def test_tensor_names(m):
    assert gguf_name("tok_embeddings.weight") == "token_embd.weight"
    assert gguf_name("norm.weight") == "output_norm.weight"
    assert gguf_name("layers.1.feed_forward.w1.weight") == "blk.1.ffn_gate.weight"
    assert gguf_name("layers.0.feed_forward.w2.weight") == "blk.0.ffn_down.weight"
    assert gguf_name("layers.0.attention.wo.weight") == "blk.0.attn_output.weight"
    s = m.tensor_shapes()
    assert s["layers.0.feed_forward.w1.weight"] == [32, m.n_ff] and s["layers.0.feed_forward.w2.weight"] == [m.n_ff, 32]
    assert s["tok_embeddings.weight"] == [32, m.n_vocab]


def test_refusals(tmp_path, m):
    with pytest.raises(ValueError):
        write_llama(tmp_path / "a", m, "ggjt", 3, ftype="q4_0")
    with pytest.raises(ValueError):
        write_llama(tmp_path / "a", m, "ggjt", 4)
    with pytest.raises(ValueError):
        write_llama(tmp_path / "a", m, "gguf", 2, endian="big")
    with pytest.raises(ValueError):
        write_llama(tmp_path / "a", TinyLlama(n_layer=1, n_head=4, n_head_kv=2), "ggjt", 3)


def test_gptj_layout(tmp_path):
    g = TinyGPTJ(seed=2, n_vocab=50400, n_embd=8, n_head=2, n_layer=1, n_rot=4)
    p = write_gptj(tmp_path / "j.bin", g, "f16")
    head = struct.unpack("<I7ii", p.read_bytes()[:36])
    assert head == (0x67676D6C, 50400, g.n_ctx, 8, 2, 1, 4, 1, 50400)
    assert 50300 <= head[1] <= 50400  # GPT4All 1.0.8 gptj magic_match
    v = g.vocab()
    assert v[65] == b"A" and v[50256] == b"<|endoftext|>" and len(v) == 50400


def test_mpt_layouts(tmp_path):
    mp = TinyMPT(seed=2, n_embd=8, n_layer=1)
    raw = write_mpt(tmp_path / "a", mp, "ggmm", "f16").read_bytes()
    magic, n_vocab, n_ctx, n_layer, n_head, n_embd = struct.unpack("<6I", raw[:24])
    assert (magic, n_vocab, n_layer, n_embd) == (0x67676D6D, mp.n_vocab, 1, 8)
    alibi, clip, ftype, again = struct.unpack("<2fII", raw[24:40])
    assert (alibi, clip, ftype, again) == (8.0, 0.0, 1, mp.n_vocab)
    pos, flags = 40, []
    for _ in range(mp.n_vocab):
        (ln,) = struct.unpack_from("<I", raw, pos)
        flags.append(bool(ln >> 31))
        pos += 4 + (ln & 0x7FFFFFFF)
    assert [i for i, fl in enumerate(flags) if fl] == mp.special_ids
    f = read_facts(tmp_path / "a")
    assert f.tensor_types["F32"].count == 4  # wte (always F32 in ggmm), 2 norms, norm_f
    raw = write_mpt(tmp_path / "b", mp, "ggml", "f16").read_bytes()
    assert struct.unpack("<I5i2fi", raw[:36]) == (0x67676D6C, 8, mp.n_ctx, mp.n_head, 1, mp.n_vocab, 8.0, 0.0, 1)
    for t in mp.vocab():
        t.decode("utf-8")  # ctransformers decodes every token as UTF-8
