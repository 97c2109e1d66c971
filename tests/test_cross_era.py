"""The heart of our correctness story: the same weights, written in every container, give the same
logits and the same greedy tokens on every backend that claims to read that container.

Tolerances: eras differ in kernels and in the order of float additions (and 2026 builds its graph
differently), so F32 logits agree to ~2e-3 here, not bit for bit; F16 files are compared with F16
files.  Greedy tokens must be identical everywhere.  (Logits span about +-3 on this model.)
"""
from __future__ import annotations

import pytest
from conftest import LLAMA_FORMATS, PROBE_TOKENS, backend_built, fmt_label

import gpt4all_loader as g
from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.formats.sniff import read_facts

TOL = {"f32": 1e-2, "f16": 1e-2}   # measured: up to 5.9e-3 (2023-04, which keeps an F16 KV cache)
REFERENCE = ("gguf", 3)


def run(path, backend):
    with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=1) as m:
        m.evaluate(PROBE_TOKENS)
        logits = m.logits()
        tokens = m.tokenize("", add_bos=True)
        text = m.generate(PROBE_TOKENS, max_tokens=8, temperature=0)
    return logits, text, tokens


def claims(path):
    return [v.backend for v in verdicts(read_facts(path)) if v.loadable]


@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_same_weights_same_logits_in_every_era(tiny_llama, ftype):
    ref_backend = "gguf-2026-10" if backend_built("gguf-2026-10") else "gguf-2023-11"
    if not backend_built(ref_backend):
        pytest.skip("no GGUF backend built")
    ref_logits, ref_text, _ = run(tiny_llama[(*REFERENCE, ftype)], ref_backend)
    checked = []
    for fmt, version in LLAMA_FORMATS:
        path = tiny_llama[(fmt, version, ftype)]
        backends = claims(path)
        assert backends, f"no backend claims {fmt_label(fmt, version)}"
        for backend in backends:
            if not backend_built(backend):
                continue
            logits, text, _ = run(path, backend)
            diff = max(abs(a - b) for a, b in zip(logits, ref_logits))
            assert len(logits) == len(ref_logits)
            assert diff <= TOL[ftype], f"{fmt_label(fmt, version)} on {backend}: max |dlogit| {diff:.2e}"
            assert max(range(len(logits)), key=logits.__getitem__) \
                == max(range(len(ref_logits)), key=ref_logits.__getitem__)
            assert text == ref_text, f"{fmt_label(fmt, version)} on {backend}: {text!r} != {ref_text!r}"
            checked.append((fmt_label(fmt, version), backend))
    # every container was run on at least one era, and the legacy ones on several
    assert {c for c, _ in checked} >= {fmt_label(f, v) for f, v in LLAMA_FORMATS if any(
        backend_built(b) for b in claims(tiny_llama[(f, v, ftype)]))}


# Q4_0 made by each era's own quantizer, in that era's block layout.  PR 1405 changed only the nibble
# order, so the 2023-04 (ggjt v1) and 2023-05 (ggjt v2) files hold the same values and must give the
# same logits.  Later quantizers round differently (f16 scales, Q8_0 output), so those are held to the
# Q4_0 error of this model against F32: measured 1.73-1.82 for Q4_0 (a 32-layer random model amplifies
# quantization noise; logits span about +-3) and 0.11-0.17 for Q8_0.
Q4_SOURCES = [
    ("llama-2023-04", ("ggjt", 1), "pre-1405"),
    ("llama-2023-05", ("ggjt", 2), "pr1405"),
    ("llama-2023-08", ("ggjt", 3), "pr1508"),
    ("gguf-2026-10", ("gguf", 3), "pr1508"),
]
QUANT_VS_F32 = {"Q4_0": 2.5, "Q8_0": 0.3}
SAME_VALUES = 1e-6   # two layouts of the same quantized values


@pytest.mark.parametrize("quant", ["Q4_0", "Q8_0"])
def test_each_eras_quant_layout_reads_back_its_values(tiny_llama, tmp_path, quant):
    from gpt4all_loader.convert.quantize import quantize

    built = [s for s in Q4_SOURCES if backend_built(s[0])]
    if len(built) < 2:
        pytest.skip("needs at least two eras built")
    ref_logits, _, _ = run(tiny_llama[("gguf", 3, "f32")], "gguf-2026-10") if backend_built("gguf-2026-10") \
        else run(tiny_llama[("ggjt", 3, "f32")], "llama-2023-08")
    results = {}
    for backend, (fmt, version), layout in built:
        out = quantize(tiny_llama[(fmt, version, "f32")], tmp_path / f"{backend}-{quant}.bin", quant, backend=backend)
        facts = read_facts(out)
        assert (facts.format, facts.format_version, facts.quant_layout) == (fmt, version, layout)
        assert quant in facts.tensor_types
        logits, text, _ = run(out, backend)
        diff = max(abs(a - b) for a, b in zip(logits, ref_logits))
        assert diff <= QUANT_VS_F32[quant], f"{quant} by {backend}: {diff:.3f}"
        results[backend] = logits
    # (Q8_0's quantizer itself changed between the two eras: 4.7e-2 apart, so only Q4_0 is compared)
    if quant == "Q4_0" and "llama-2023-04" in results and "llama-2023-05" in results:
        diff = max(abs(x - y) for x, y in zip(results["llama-2023-04"], results["llama-2023-05"]))
        assert diff <= SAME_VALUES, f"ggjt v1 vs v2 {quant}: {diff:.2e}"


def test_old_layout_q4_0_is_refused_by_later_eras(tiny_llama, tmp_path):
    """A ggjt v1 Q4_0 file never reaches the 2023-05/08 loaders, which would misread its blocks."""
    from gpt4all_loader.convert.quantize import quantize

    if not backend_built("llama-2023-04"):
        pytest.skip("llama-2023-04 not built")
    out = quantize(tiny_llama[("ggjt", 1, "f32")], tmp_path / "v1-q4_0.bin", "Q4_0", backend="llama-2023-04")
    v = {x.backend: x for x in verdicts(read_facts(out))}
    assert v["llama-2023-04"].loadable
    assert not v["llama-2023-05"].loadable and "1405" in " ".join(v["llama-2023-05"].reasons)
    assert not v["llama-2023-08"].loadable
    with pytest.raises(g.UnsupportedModelError, match="1405"):
        g.load(out, backend="llama-2023-05")


def test_more_threads_than_cores_give_the_same_greedy_tokens(tiny_llama, tmp_path):
    """Every era, with more threads than this machine has cores: its waits for other threads then
    outlast their spin and sleep (backends/patches/ggml-*-wait-*, ggml-*-barrier-*), and the greedy
    tokens stay those of one thread."""
    import os

    from gpt4all_loader.formats.writer import TinyGPTJ, TinyMPT, write_gptj, write_mpt

    files = {b: tiny_llama[("ggjt", 1, "f16")] for b in ("llama-2023-04", "llama-2023-05", "llama-2023-08")}
    files |= {b: tiny_llama[("gguf", 3, "f16")] for b in ("gguf-2023-11", "gguf-2024-09", "gguf-2026-10")}
    files["ggml-gpt4all-2023-05"] = write_gptj(tmp_path / "gptj.bin", TinyGPTJ(seed=0), "f16")
    files["ggml-gpt4all-2023-08"] = write_mpt(tmp_path / "mpt.bin", TinyMPT(seed=0), "ggmm", "f16")
    threads = len(os.sched_getaffinity(0)) + 1
    checked = []
    for backend, path in files.items():
        if not backend_built(backend):
            continue
        texts = []
        for n in (1, threads):
            with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=n) as m:
                texts.append(m.generate(PROBE_TOKENS, max_tokens=8, temperature=0))
        assert texts[0] == texts[1], (backend, texts)
        checked.append(backend)
    if not checked:
        pytest.skip("no backend built")
