"""GPT4All's 2023 zoo (Falcon, Replit, StarCoder, BERT) in the reader, the validator, the catalog and the probe.

Identification comes from the header and the tensor table, never from n_vocab ranges.  Hostile files
(every header field out of range, vocabularies and tensor tables damaged one defect at a time, Falcon
data off its 32-byte boundary) end in FormatError or in a refusal with a reason, never in another
exception; the native step of such files is covered by ``test_hostile_files.py`` once their model code
exists.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zoo_common import TENSOR_CASES, ZOO_KINDS, ctor, reshape, small, write_zoo_files, zoo_bytes

from gpt4all_loader.engines import catalog, validate
from gpt4all_loader.errors import FormatError
from gpt4all_loader.formats import zoo
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import (
    TinyBert,
    TinyGPTJ,
    TinyLlama,
    TinyStarCoder,
    write_gptj,
    write_llama,
)

BACKEND = "ggml-gpt4all-2023-08"


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    return write_zoo_files(tmp_path_factory.mktemp("zoo"))


def outcome(path: Path) -> str:
    """"format-error: ...", "refused: ..." (no backend loads it) or "loadable"; anything else raises."""
    try:
        f = read_facts(path)
    except FormatError as e:
        assert str(path) in str(e)
        return f"format-error: {e}"
    vs = catalog.verdicts(f)
    if any(v.loadable for v in vs):
        return "loadable"
    ours = [v for v in vs if v.backend == BACKEND]
    assert ours and ours[0].reasons
    return "refused: " + "; ".join(ours[0].reasons)


# -- identification -------------------------------------------------------------------------------------
EXPECT = {"falcon": ("ggjt", 3, "gpt4all-greedy", 2048), "replit": ("repl", None, "replit-sentencepiece-dp", 128),
          "starcoder": ("ggml", 0, "gpt4all-greedy", 128), "bert": ("bert", None, "bert-wordpiece", 128)}


@pytest.mark.parametrize("kind", ZOO_KINDS)
@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_reader_identifies_each_architecture(zoo_files, kind, ftype):
    f = read_facts(zoo_files[f"{kind}-{ftype}"])
    fmt, ver, tok, n_ctx = EXPECT[kind]
    arch = zoo.ARCHITECTURES[kind]
    assert (f.format, f.format_version, f.kind, f.architecture, f.tokenizer) == (fmt, ver, "model", kind, tok)
    assert f.hparams["n_ctx_train"] == n_ctx and not f.truncated
    assert f.file_type_name == ("ALL_F32" if ftype == "f32" else "MOSTLY_F16")
    assert f.n_params == arch.n_params(f.hparams)
    per_layer = sum(r.per_layer for r in arch.tensors)
    assert f.n_tensors == len(arch.tensors) - per_layer + per_layer * f.hparams["n_layer"]
    assert validate.problems(f, BACKEND) == []
    best, _ = catalog.choose(f)
    assert best is not None and best.backend == BACKEND


@pytest.mark.parametrize("kind", ["falcon", "starcoder"])
def test_q4_0_files(zoo_files, kind):
    f = read_facts(zoo_files[f"{kind}-q4_0"])
    assert f.file_type == 2 and f.file_type_name == "MOSTLY_Q4_0" and "Q4_0" in f.tensor_types
    assert validate.problems(f, BACKEND) == [] and catalog.choose(f)[0].backend == BACKEND


def test_falcon_told_from_llama_by_its_tensor_table(tmp_path):
    """Both are ggjt with 7 header integers and a scored vocabulary; the tensor names decide, whatever
    the version field (gpt4all's converter wrote 1, ggllm.cpp's quantizer 3) or n_vocab."""
    lf = read_facts(write_llama(tmp_path / "llama.bin", TinyLlama(seed=0, n_layer=2), "ggjt", 3))
    assert lf.architecture == "llama"
    for version in (1, 2, 3):
        p = tmp_path / f"falcon-v{version}.bin"
        p.write_bytes(zoo_bytes(small("falcon")).replace(b"\x03\0\0\0", struct.pack("<I", version), 1))
        f = read_facts(p)
        assert (f.architecture, f.format_version, f.hparams["falcon_version"]) == ("falcon", version, 7)
        assert outcome(p) == "loadable"


def test_starcoder_told_from_gptj_and_gpt2(tmp_path):
    """Unversioned ggml: GPT-J has 7 header integers, StarCoder and the ggml examples' GPT-2 have 6 and the
    same tensor names; StarCoder's vocabulary starts with its end token "<|endoftext|>"."""
    g = read_facts(write_gptj(tmp_path / "gptj.bin", TinyGPTJ(seed=0, n_vocab=50300, n_embd=8, n_layer=1)))
    assert g.architecture == "gptj"
    m = small("starcoder")
    p = tmp_path / "sc.bin"
    p.write_bytes(zoo_bytes(m))
    assert read_facts(p).architecture == "starcoder"
    toks = m.vocab()
    toks[0] = b"!"
    p.write_bytes(zoo_bytes(m, tokens=toks))
    f = read_facts(p)
    assert (f.architecture, f.kind) == ("gpt2", "unsupported-ggml")


def test_identification_ignores_gpt4all_n_vocab_ranges(tmp_path):
    """gpt4all 1.0.8 matched Falcon only with n_vocab 65024..65100 and StarCoder 49100..49290; we read
    the table, so smaller vocabularies are the same architectures."""
    for kind in ("falcon", "starcoder"):
        p = tmp_path / f"{kind}.bin"
        p.write_bytes(zoo_bytes(small(kind)))
        assert read_facts(p).architecture == kind


def test_starcoder_without_lm_head_is_valid(tmp_path):
    p = tmp_path / "sc.bin"
    p.write_bytes(zoo_bytes(TinyStarCoder(seed=1, n_vocab=600, lm_head=False)))
    assert "model/lm_head" not in read_facts(p).tensor_names and outcome(p) == "loadable"


def test_ggml_quantized_falcon_header_reads_ftype_mod_1000(tmp_path):
    """ggml-examples quantizers add 1000 x the quant version to ftype; the loaders took ftype % 1000."""
    p = tmp_path / "f.bin"
    p.write_bytes(zoo_bytes(small("falcon"), header={"ftype": 2001}))
    f = read_facts(p)
    assert f.file_type == 2001 and f.file_type_name == "MOSTLY_F16" and outcome(p) == "loadable"


# -- hostile headers ------------------------------------------------------------------------------------
def _header_cases() -> list[tuple[str, str, int]]:
    out = []
    for kind in ZOO_KINDS:
        for field in zoo.ARCHITECTURES[kind].header:
            for v in (0, -1, 1, 3, 2**31 - 1, 1 << 20):
                out.append((kind, field.name, v))
    out += [("falcon", "falcon_version", 40), ("falcon", "n_head_kv", 2), ("falcon", "n_head", 8),
            ("falcon", "ftype", 4), ("falcon", "ftype", 5), ("falcon", "ftype", 15), ("starcoder", "ftype", 6),
            ("replit", "ftype", 7), ("bert", "f16", 1001), ("bert", "n_vocab", 103),
            ("bert", "n_max_tokens", 32), ("starcoder", "n_ctx", 3), ("replit", "n_ctx", 2)]
    return out


@pytest.mark.parametrize("kind,field,value", _header_cases())
def test_hostile_header_field(tmp_path, kind, field, value):
    m = small(kind)
    p = tmp_path / "h.bin"
    p.write_bytes(zoo_bytes(m, header={field: value}))
    t = time.monotonic()
    got = outcome(p)
    assert time.monotonic() - t < 5
    unchanged = m.header_values(1)[[f.name for f in m.arch.header].index(field)] == value
    if unchanged or (field == "n_head" and value == 1 and kind in ("replit", "starcoder")):
        # the value the file already had (F16 files have ftype 1), or one head (same shapes; Falcon's
        # fused QKV changes shape; BERT's graph needs two heads)
        assert got == "loadable"
    else:
        assert got != "loadable", got


@pytest.mark.parametrize("kind,field,value,reason", [
    ("falcon", "falcon_version", 40, "Falcon-40B"),
    ("falcon", "n_head_kv", 2, "one key/value head"),
    ("falcon", "ftype", 4, "not a weight type"),
    ("bert", "n_max_tokens", 32, "overlap by 32"),
    ("bert", "n_max_tokens", 8200, "at most 8192"),
    ("replit", "n_ctx", 3, "n_ctx_train is 3"),
])
def test_hostile_header_reasons(tmp_path, kind, field, value, reason):
    """The refusal names the field (the shapes follow the header, so only the named defect remains)."""
    m = small(kind)
    if field in ("n_max_tokens", "n_ctx"):
        hp = dict(m.hparams, n_ctx_train=value)
        m = type(m)(seed=3, **ctor(kind, hp))
    p = tmp_path / "h.bin"
    edit = None
    if field == "n_head_kv":  # keep the fused QKV shape consistent with the header
        e, hd = m.hparams["n_embd"], m.hparams["n_embd"] // m.hparams["n_head"]
        edit = reshape("self_attention.query_key_value.weight", [e, (m.hparams["n_head"] + 2 * value) * hd])
    p.write_bytes(zoo_bytes(m, header={field: value}, edit=edit))
    got = outcome(p)
    assert got.startswith("refused") and reason in got, got


# -- hostile vocabularies and tensor tables -----------------------------------------------------------


@pytest.mark.parametrize("kind", ZOO_KINDS)
@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_hostile_tensor_table(tmp_path, kind, case):
    m = small(kind)
    if case == "weight-q4_0":
        m = type(m)(seed=3, **ctor(kind, dict(m.hparams, n_embd=32, n_ff=64)))
    p = tmp_path / "t.bin"
    p.write_bytes(zoo_bytes(m, edit=TENSOR_CASES[case]))
    got = outcome(p)
    assert got != "loadable", got


@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_truncated_files(zoo_files, tmp_path, kind):
    """Cut anywhere (header, vocabulary, tensor headers, tensor data): FormatError or refused as truncated."""
    data = zoo_files[f"{kind}-f16"].read_bytes()
    p = tmp_path / "cut.bin"
    cuts = sorted({4, 8, 20, 40, 100, 1000, 5000, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1})
    for cut in cuts:
        p.write_bytes(data[:cut])
        got = outcome(p)
        assert got != "loadable", (cut, got)


@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_vocabulary_defects(tmp_path, kind):
    m = small(kind)
    toks = m.vocab()
    p = tmp_path / "v.bin"
    # a token length running past the end of the file
    raw = bytearray(zoo_bytes(m))
    first = raw.index(struct.pack("<I", len(toks[0])) + toks[0])
    raw[first:first + 4] = struct.pack("<I", 0x7FFFFFF0)
    p.write_bytes(bytes(raw))
    assert outcome(p).startswith("format-error"), kind
    # fewer tokens than n_vocab: the tensor records are read as vocabulary, or the table no longer fits
    p.write_bytes(zoo_bytes(m, tokens=toks[:-5]))
    assert outcome(p) != "loadable"


def test_starcoder_repeated_count_must_match(tmp_path):
    p = tmp_path / "c.bin"
    p.write_bytes(zoo_bytes(small("starcoder"), count=599))
    got = outcome(p)
    assert got != "loadable", got


def test_falcon_data_off_its_boundary(tmp_path):
    """gpt4all's own Falcon converter wrote no padding before tensor data; its loader (and ours) needs it."""
    p = tmp_path / "unpadded.bin"
    p.write_bytes(zoo_bytes(small("falcon"), align=0))
    got = outcome(p)
    assert got != "loadable", got


# -- probe ----------------------------------------------------------------------------------------------
def test_probe_reports_the_zoo(zoo_files):
    paths = [str(zoo_files[f"{k}-f16"]) for k in ZOO_KINDS]
    cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.probe", "--json", "--estimate", *paths],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    reports = {Path(r["path"]).name: r for r in json.loads(cp.stdout)}
    for kind in ZOO_KINDS:
        r = reports[f"tiny-{kind}-f16.bin"]
        assert r["architecture"] == kind and r["backend"] == BACKEND and r["loadable"], r
        assert r["tokenizer"] == zoo.ARCHITECTURES[kind].tokenizer
        assert r["context_length"] == EXPECT[kind][3]
        assert r["hparams"]["n_layer"] == 2 and r["n_params"] > 0
        assert r["memory"]["ram_bytes"] > 0
    text = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.probe", paths[0]], capture_output=True,
                          text=True, timeout=300).stdout
    assert "falcon_version 7" in text and "gpt4all-greedy" in text and "GGUF" in text


def test_tiny_files_stay_small(zoo_files):
    assert all(p.stat().st_size < 8 << 20 for p in zoo_files.values())


def test_unpadded_ggmf_falcon_points_to_gguf(tmp_path):
    """ggllm.cpp's falcon_convert.py wrote "ggmf" v1 without padding: no 2023 loader of ours (nor gpt4all)
    read it, and the suggestion is the GGUF conversion that today's llama.cpp runs."""
    m = small("falcon")
    raw = bytearray(zoo_bytes(m, align=0, ftype=0).replace(b"\x03\0\0\0", b"\x01\0\0\0", 1))
    raw[0:4] = struct.pack("<I", 0x67676D66)
    p = tmp_path / "ggmf-falcon.bin"
    p.write_bytes(bytes(raw))
    f = read_facts(p)
    assert (f.kind, f.architecture) == ("unsupported-ggml", "falcon")
    best, all_v = catalog.choose(f)
    assert best is None and "gpt4all-convert" in (catalog.suggest(f, all_v) or "")


@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_zoo_files_on_the_2023_backend_in_a_child(zoo_files, kind):
    """load() + one evaluate in a child process: the model code runs it, or the library says why not;
    never a signal or a hang."""
    from conftest import backend_built
    from hostile import run_children

    if not backend_built(BACKEND):
        pytest.skip(f"backend {BACKEND}/cpu is not built")
    path = zoo_files[f"{kind}-f16"]
    r = run_children([(path, BACKEND)])[(str(path), BACKEND)]
    assert "signal" not in r and not r.get("timeout") and "rc" not in r, r
    assert r["ok"] or r.get("error"), r


@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_writers_are_deterministic(tmp_path, kind):
    from gpt4all_loader.formats.writer import write_zoo

    a, b = write_zoo(tmp_path / "a.bin", small(kind), "f16"), write_zoo(tmp_path / "b.bin", small(kind), "f16")
    assert a.read_bytes() == b.read_bytes()


def test_bert_writer_keeps_gpt4all_tensor_sizes(zoo_files, tmp_path):
    """gpt4all 1.0.8's BERT pool holds exactly 256 bytes per tensor plus its data: every tensor's bytes
    must be a multiple of 16 (the reader notes a file where they are not)."""
    from gpt4all_loader.formats.legacy import tensor_records

    for ft in ("f32", "f16"):
        f = read_facts(zoo_files[f"bert-{ft}"])
        assert all(n % 16 == 0 for *_, n in tensor_records(str(zoo_files[f"bert-{ft}"]), f)) and not f.notes
    p = tmp_path / "odd.bin"
    p.write_bytes(zoo_bytes(TinyBert(seed=1, n_embd=10, n_intermediate=20, n_head=2, n_layer=1)))
    assert any("multiples of 16" in n for n in read_facts(p).notes)
