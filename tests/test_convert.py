"""gpt4all-convert: ggml-era LLaMA files upgraded to GGUF, Hugging Face folders converted, bad inputs refused.

Tolerances (logits span about +-3 on the tiny 32-layer model):

* F32/F16 legacy files: the upgraded GGUF holds the very same tensor bytes, so it is compared with the
  original on its own era with the cross-era tolerance of test_cross_era.py (1e-2; measured 4.6e-3
  for F32 and 5.9e-3 to 6.4e-3 for F16 files: F16 KV caches and another summation order) and the
  greedy tokens must be identical.
* Q4_0 legacy files upgraded to F32: dequantization is exact (checked value by value against an
  independent decoder of each era's block layout below), but the original runs Q4_0 x Q8_0 dot
  products (the 2023 engines quantize activations to 8 bits before a quantized matmul) while the
  upgraded file runs F32 x F32.  Measured max |dlogit|: 0.075 (ggjt v1 on 2023-04), 0.075 (ggjt v2
  on 2023-05), 0.086 (ggjt v3 on 2023-08); held to 0.15, far below the Q4_0-vs-F32 error of this
  model (1.7-1.8, test_cross_era.py).  Greedy tokens may part after a few steps for the same reason
  (near-ties in a random model), so only the first token is compared.
* Hugging Face F32: the same float32 weights in llama.cpp and transformers, but llama.cpp keeps its
  KV cache in F16 and sums in another order: measured max |dlogit| 3.9e-3 (logits span -3.5 to 2.9),
  held to the cross-era 1e-2; greedy tokens identical.  F16 weights: measured 7.1e-3, held to 5e-2,
  greedy tokens identical here but only the first is required (F16 rounding may break a near-tie).
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from conftest import PROBE_TOKENS, backend_built, fmt_label, require_backend, spm_model

import gpt4all_loader as g
import gpt4all_loader.convert as cv
from gpt4all_loader.cli import convert as convert_cli
from gpt4all_loader.engines.catalog import choose
from gpt4all_loader.formats.sniff import read_facts

NEWEST = "gguf-2026-10"
LEGACY = [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]
F_TOL = 1e-2
Q4_TOL = 0.15


def run(path, backend, tokens=PROBE_TOKENS):
    with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=1) as m:
        m.evaluate(tokens)
        logits = m.logits()
        text = m.generate(tokens, max_tokens=8, temperature=0)
        ids = list(m.generate_tokens(tokens, max_tokens=8, temperature=0))
    return logits, text, ids


def own_era(path) -> str:
    built = [b for b in ("llama-2023-04", "llama-2023-05", "llama-2023-08") if backend_built(b)]
    best, _ = choose(read_facts(path), prefer=built)
    assert best is not None
    return best.backend


def cli(argv, capsys):
    rc = convert_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def max_diff(a, b):
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def argmax(v):
    return max(range(len(v)), key=v.__getitem__)


# --------------------------------------------------------------------------------------------------
# legacy F32/F16 files

@pytest.mark.parametrize("ftype", ["f32", "f16"])
@pytest.mark.parametrize("fmt,version", LEGACY, ids=[fmt_label(f, v) for f, v in LEGACY])
def test_legacy_upgrade_same_greedy_tokens(tiny_llama, tmp_path, capsys, fmt, version, ftype):
    require_backend(NEWEST)
    src = tiny_llama[(fmt, version, ftype)]
    era = own_era(src)
    require_backend(era)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "up.gguf"
    rc, stdout, err = cli([src, "-o", out, "--outtype", ftype], capsys)
    assert rc == 0, err
    assert "LOADABLE by gguf-2026-10" in stdout
    assert "[ 291/291]" in err  # progress per tensor
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.gguf"]
    facts = read_facts(out, with_kv=True)
    assert (facts.format, facts.format_version, facts.architecture) == ("gguf", 3, "llama")
    assert set(facts.tensor_types) == ({"F32"} if ftype == "f32" else {"F32", "F16"})
    assert facts.kv["llama.context_length"] == 2048
    assert facts.kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    ref_logits, ref_text, ref_ids = run(src, era)
    logits, text, ids = run(out, NEWEST)
    d = max_diff(logits, ref_logits)
    print(f"{fmt_label(fmt, version)} {ftype}: {era} vs upgraded on {NEWEST}: max |dlogit| {d:.2e}")
    assert d <= F_TOL
    assert ids == ref_ids and text == ref_text


def test_upgraded_file_equals_native_gguf(tiny_llama, tmp_path, capsys):
    """The same weights written as GGUF by the writer and upgraded from ggjt give identical logits;
    an F32 source asked for f16 goes through the newest quantizer and matches the writer's F16 file."""
    require_backend(NEWEST)
    require_backend("llama-2023-08")
    out32, out16 = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert cli([tiny_llama[("ggjt", 3, "f32")], "-o", out32, "--outtype", "f32", "-q"], capsys)[0] == 0
    assert cli([tiny_llama[("ggjt", 3, "f32")], "-o", out16, "--outtype", "f16", "-q"], capsys)[0] == 0
    assert run(out32, NEWEST)[0] == run(tiny_llama[("gguf", 3, "f32")], NEWEST)[0]
    assert read_facts(out16).file_type_name == "MOSTLY_F16"
    assert max_diff(run(out16, NEWEST)[0], run(tiny_llama[("gguf", 3, "f16")], NEWEST)[0]) <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf"]


def test_vocab_mapping():
    toks = [" \u2047 ".encode(), b"", b""] + [bytes([b]) for b in range(256)] + [b" the", b"", b"ab"]
    t, s, ty = cv.legacy_vocab(toks, [0.0] * len(toks))
    assert t[:3] == [b"<unk>", b"<s>", b"</s>"] and ty[:3] == [2, 3, 3]
    assert t[3] == b"<0x00>" and t[3 + 0x41] == b"<0x41>" and set(ty[3:259]) == {6}
    assert t[259] == "\u2581the".encode() and ty[259] == 1
    assert ty[260] == 3 and t[261] == b"ab"
    assert cv.legacy_vocab(toks, None)[1] == [0.0] * len(toks)


# --------------------------------------------------------------------------------------------------
# quantized legacy files

Q4_SOURCES = [("llama-2023-04", 1, "pre-1405"), ("llama-2023-05", 2, "pr1405"), ("llama-2023-08", 3, "pr1508")]


def _decode_q4_0(raw: bytes, layout: str) -> list[float]:
    """Q4_0 blocks of each 2023 layout, decoded independently of any engine."""
    out: list[float] = []
    bsize = 18 if layout == "pr1508" else 20
    for i in range(0, len(raw), bsize):
        blk = raw[i:i + bsize]
        d = struct.unpack("<e", blk[:2])[0] if layout == "pr1508" else struct.unpack("<f", blk[:4])[0]
        qs = blk[bsize - 16:]
        vals = [0.0] * 32
        for j, q in enumerate(qs):
            lo, hi = (q & 0xF) - 8, (q >> 4) - 8
            if layout == "pre-1405":  # interleaved nibbles
                vals[2 * j], vals[2 * j + 1] = lo * d, hi * d
            else:  # llama.cpp PR 1405: low nibbles first half, high nibbles second half
                vals[j], vals[j + 16] = lo * d, hi * d
        out.extend(vals)
    return out


@pytest.mark.parametrize("era,version,layout", Q4_SOURCES, ids=[s[0] for s in Q4_SOURCES])
def test_quantized_legacy_upgrade(tiny_llama, tmp_path, capsys, era, version, layout):
    from gpt4all_loader.convert.quantize import quantize
    from gpt4all_loader.formats.legacy import tensor_records

    require_backend(era)
    require_backend(NEWEST)
    src = quantize(tiny_llama[("ggjt", version, "f32")], tmp_path / f"q4-v{version}.bin", "Q4_0", backend=era)
    facts = read_facts(src)
    assert facts.quant_layout == layout and "Q4_0" in facts.tensor_types
    out = tmp_path / "up.gguf"
    rc, stdout, err = cli([src, "-o", out, "--outtype", "f32"], capsys)
    assert rc == 0, err
    assert f"dequantizing with {era}" in err
    ofacts = read_facts(out)
    assert set(ofacts.tensor_types) == {"F32"}

    # exact: every Q4_0 value of a few tensors equals the independent decoding of its block
    recs = tensor_records(str(src), facts)
    offsets, off = {}, 0
    for name, _, ne, _, _ in recs:  # the converter writes F32 tensors in record order, 32-aligned
        off += -off % 32
        offsets[name] = off
        off += 4 * math.prod(ne)
    checked = 0
    with open(src, "rb") as fs, open(out, "rb") as fo:
        for name, tid, ne, doff, nbytes in recs:
            if tid != 2 or checked >= 3:
                continue
            fs.seek(doff)
            want = _decode_q4_0(fs.read(nbytes), layout)
            fo.seek(ofacts.data_offset + offsets[name])
            got = array("f")
            got.frombytes(fo.read(4 * len(want)))
            assert list(got) == [float(array("f", [w])[0]) for w in want], name
            checked += 1
    assert checked == 3

    ref_logits, _, ref_ids = run(src, era)
    logits, _, ids = run(out, NEWEST)
    d = max_diff(logits, ref_logits)
    print(f"ggjt v{version} Q4_0: {era} vs upgraded F32 on {NEWEST}: max |dlogit| {d:.3f}")
    assert d <= Q4_TOL
    assert argmax(logits) == argmax(ref_logits) and ids[0] == ref_ids[0]


def test_requantize_with_newest_quantizer(tiny_llama, tmp_path, capsys):
    require_backend(NEWEST)
    require_backend("llama-2023-08")
    out = tmp_path / "q8.gguf"
    rc, stdout, err = cli([tiny_llama[("ggjt", 1, "f16")], "-o", out, "--outtype", "q8_0", "-q"], capsys)
    assert rc == 0, err
    assert err == ""  # --quiet
    facts = read_facts(out)
    assert facts.file_type_name == "MOSTLY_Q8_0" and "Q8_0" in facts.tensor_types
    d = max_diff(run(out, NEWEST)[0], run(tiny_llama[("gguf", 3, "f16")], NEWEST)[0])
    assert d <= 0.3  # Q8_0 vs F16 on this model (test_cross_era.py: 0.11-0.17)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.gguf"]


def test_probe_suggests_the_upgrade(tiny_llama, tmp_path):
    from gpt4all_loader.convert.quantize import quantize

    require_backend("llama-2023-04")
    src = quantize(tiny_llama[("ggjt", 1, "f32")], tmp_path / "old.bin", "Q4_0", backend="llama-2023-04")
    rep = g.probe(src)
    assert rep.loadable and rep.backend == "llama-2023-04"
    assert f"gpt4all-convert {src} -o {tmp_path / 'old.gguf'}" in rep.suggestion
    assert g.probe(tiny_llama[("gguf", 3, "f32")]).suggestion is None


# --------------------------------------------------------------------------------------------------
# bad inputs: a clear message, the right exit status, nothing left behind

def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_folder_without_config(tmp_path, capsys):
    src = tmp_path / "model"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"\0" * 16)
    outdir = tmp_path / "out"
    outdir.mkdir()
    rc, _, err = cli([src, "-o", outdir / "x.gguf"], capsys)
    assert rc == 1 and "without config.json" in err
    assert _listing(outdir) == []


def test_truncated_legacy_file(tiny_llama, tmp_path, capsys):
    data = tiny_llama[("ggjt", 3, "f16")].read_bytes()
    src = tmp_path / "cut.bin"
    src.write_bytes(data[: len(data) * 2 // 3])
    rc, _, err = cli([src, "-o", tmp_path / "x.gguf"], capsys)
    assert rc == 1 and "cut short" in err and "download it again" in err
    assert _listing(tmp_path) == ["cut.bin"]


def test_garbage_file(tmp_path, capsys):
    src = tmp_path / "page.bin"
    src.write_text("<html><body>not found</body></html>")
    rc, _, err = cli([src, "-o", tmp_path / "x.gguf"], capsys)
    assert rc == 1 and "HTML" in err
    assert _listing(tmp_path) == ["page.bin"]


def test_gptj_file_is_refused(tmp_path, capsys):
    from gpt4all_loader.formats.writer import TinyGPTJ, write_gptj

    src = write_gptj(tmp_path / "gptj.bin", TinyGPTJ(seed=0))
    rc, _, err = cli([src, "-o", tmp_path / "x.gguf"], capsys)
    assert rc == 1 and "only ggml/ggmf/ggjt LLaMA" in err and "gptj" in err
    assert _listing(tmp_path) == ["gptj.bin"]


def test_gguf_source_is_refused(tiny_llama, tmp_path, capsys):
    rc, _, err = cli([tiny_llama[("gguf", 3, "f32")], "-o", tmp_path / "x.gguf"], capsys)
    assert rc == 1 and "already GGUF" in err
    assert _listing(tmp_path) == []


def test_output_under_a_regular_file(tiny_llama, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = cli([tiny_llama[("ggjt", 3, "f32")], "-o", blocker / "x.gguf"], capsys)
    assert rc == 2 and "is not a directory" in err
    assert _listing(tmp_path) == ["file"]


def test_output_in_proc(tiny_llama, capsys):
    rc, _, err = cli([tiny_llama[("ggjt", 3, "f32")], "-o", "/proc/g4a-convert-test.gguf"], capsys)
    assert rc in (1, 2) and "/proc" in err
    assert not os.path.exists("/proc/g4a-convert-test.gguf")


def test_src_equals_out(tiny_llama, tmp_path, capsys):
    src = tmp_path / "m.bin"
    src.write_bytes(tiny_llama[("ggjt", 3, "f32")].read_bytes())
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    for out in (src, tmp_path / "." / "m.bin"):
        rc, _, err = cli([src, "-o", out, "--force"], capsys)
        assert rc == 2 and "is SRC itself" in err
    os.link(src, tmp_path / "hard.bin")
    rc, _, err = cli([src, "-o", tmp_path / "hard.bin", "--force"], capsys)
    assert rc == 2 and "is SRC itself" in err
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert _listing(tmp_path) == ["hard.bin", "m.bin"]


def test_usage_errors(tiny_llama, tmp_path, capsys):
    src = tiny_llama[("ggjt", 3, "f32")]
    rc, _, err = cli([tmp_path / "missing.bin", "-o", tmp_path / "x.gguf"], capsys)
    assert rc == 2 and "no such file" in err
    rc, _, err = cli([src, "-o", tmp_path / "x.gguf", "--outtype", "q9_9"], capsys)
    assert rc == 2 and "unknown --outtype" in err
    (tmp_path / "exists.gguf").write_text("keep me")
    rc, _, err = cli([src, "-o", tmp_path / "exists.gguf"], capsys)
    assert rc == 2 and "--force" in err
    assert (tmp_path / "exists.gguf").read_text() == "keep me"
    with pytest.raises(SystemExit) as e:
        convert_cli.main([str(src)])  # no -o
    assert e.value.code == 2
    assert _listing(tmp_path) == ["exists.gguf"]


def test_not_enough_space(tiny_llama, tmp_path, capsys, monkeypatch):
    import shutil as _sh

    monkeypatch.setattr(_sh, "disk_usage",
                        lambda p, _real=_sh.disk_usage: _sh._ntuple_diskusage(1 << 40, 1 << 40, 1 << 20))
    rc, _, err = cli([tiny_llama[("ggjt", 3, "f32")], "-o", tmp_path / "x.gguf"], capsys)
    assert rc == 1 and "not enough free space" in err
    assert _listing(tmp_path) == []


def test_disk_full_while_writing(tiny_llama, tmp_path, capsys, monkeypatch):
    require_backend("llama-2023-08")
    calls = []

    def full(fin, fo, off, nbytes):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(28, "No space left on device")
        fo.write(b"\0" * nbytes)

    monkeypatch.setattr(cv.upgrade, "_copy", full)
    rc, _, err = cli([tiny_llama[("ggjt", 3, "f32")], "-o", tmp_path / "x.gguf", "--outtype", "f32"], capsys)
    assert rc == 1 and "is full" in err
    assert _listing(tmp_path) == []


def test_console_script_exit_status(tmp_path):
    exe = Path(sys.executable).with_name("gpt4all-convert")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gpt4all_loader.cli.convert"]
    src = tmp_path / "empty"
    src.mkdir()
    p = subprocess.run(cmd + [str(src), "-o", str(tmp_path / "x.gguf")], capture_output=True, text=True)
    assert p.returncode == 1 and "config.json" in p.stderr and "Traceback" not in p.stderr


def test_missing_converter_packages(tmp_path, capsys, monkeypatch):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (src / "model.safetensors").write_bytes(b"\0" * 16)
    monkeypatch.setattr(cv.upstream, "missing_hf_packages", lambda: ["torch", "transformers"])
    rc, _, err = cli([src, "-o", tmp_path / "x.gguf"], capsys)
    assert rc == 1 and "pip install torch transformers" in err
    assert _listing(tmp_path) == ["hf"]


# --------------------------------------------------------------------------------------------------
# Hugging Face folders (needs torch, transformers, sentencepiece: skipped without them)

_HF_MISSING = [m for m in ("torch", "transformers", "sentencepiece", "numpy", "yaml", "tqdm")
               if importlib.util.find_spec(m) is None]
_SENTENCES = ["Once upon a time there lived a little cat.", "The dog said hello to the world.",
              "She read a story about a model file.", "They walked to the river and sat on the bank.",
              "Hello world, the quick brown fox jumps over the lazy dog.", "In the beginning was the word."]


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """A tiny random LLaMA (GQA, 2 layers) with a SentencePiece tokenizer trained here, saved as safetensors."""
    if _HF_MISSING:
        pytest.skip("the Hugging Face converter needs " + ", ".join(_HF_MISSING)
                    + " (pip install torch transformers sentencepiece numpy pyyaml tqdm)")
    if not backend_built(NEWEST):
        pytest.skip(f"{NEWEST} is not built")

    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("hf") / "tiny-llama-hf"
    d.mkdir()
    model = spm_model(_SENTENCES)
    (d / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    try:  # the transformers tokenizer files too, as a real model folder has them
        from transformers import LlamaTokenizer

        LlamaTokenizer(vocab_file=str(d / "tokenizer.model")).save_pretrained(d)
    except Exception:  # noqa: BLE001 - tokenizer.model is what the converter reads
        pass
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rms_norm_eps=1e-6, initializer_range=0.15, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(d, safe_serialization=True)
    prompt = [1] + sp.encode("Once upon a time")
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].tolist()
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=2)
    return d, prompt, logits, gen[0].tolist()[len(prompt):]


def _hf_run(path, prompt):
    with g.load(path, backend=NEWEST, device="cpu", n_ctx=64, n_threads=1) as m:
        m.evaluate(prompt)
        logits = m.logits()
        ids = list(m.generate_tokens(prompt, max_tokens=8, temperature=0))
    return logits, ids


@pytest.mark.slow
@pytest.mark.parametrize("outtype,tol", [("f32", 1e-2), ("f16", 5e-2)])
def test_hf_folder_converts(hf_llama, tmp_path, capsys, outtype, tol):
    src, prompt, ref_logits, ref_ids = hf_llama
    out = tmp_path / f"hf-{outtype}.gguf"
    rc, stdout, err = cli([src, "-o", out, "--outtype", outtype, "-q"], capsys)
    assert rc == 0, err
    assert "LOADABLE by gguf-2026-10" in stdout
    assert _listing(tmp_path) == [out.name]
    facts = read_facts(out)
    assert facts.architecture == "llama" and facts.hparams.get("n_head_kv") == 2
    logits, ids = _hf_run(out, prompt)
    d = max_diff(logits, ref_logits)
    print(f"HF {outtype}: transformers vs {NEWEST}: max |dlogit| {d:.2e}; ids {ids} vs {ref_ids}")
    assert d <= tol
    if outtype == "f32":
        assert ids == ref_ids
    else:
        assert ids[0] == ref_ids[0]
