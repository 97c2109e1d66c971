"""CUDA variants: the choice between CUDA and CPU, its reasons, and the built CUDA libraries.

These run on machines without a GPU (CI, developers): there the choice must fall back to a CPU
variant with the reason "no CUDA driver" (when a CUDA variant is built) or "not built" (when none
is), and device="cuda" must fail with that reason.  The conditions that need a device (tensor types,
free memory, compute capability) are exercised with a simulated driver.  tools/gpu_check.sh runs
the real thing on a GPU host.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_backend

import gpt4all_loader as g
from gpt4all_loader.engines import cache, cuda, native, variants
from gpt4all_loader.engines.cuda import GpuInfo
from gpt4all_loader.engines.manifest import CudaSettings, Wheel, cuda_settings, load_manifest
from gpt4all_loader.engines.variants import choose_variant
from gpt4all_loader.errors import BackendError, DeviceError
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.memory import fit_layers
from gpt4all_loader.plan import default_n_ctx

ROOT = Path(__file__).resolve().parent.parent
CUDA_BACKENDS = sorted(n for n, s in load_manifest().items() if any(v.gpu == "cuda" for v in s.variants.values()))
GiB = 1024 ** 3


def has_driver() -> bool:
    return cuda.cuda_driver()[0] > 0


def cuda_built(backend: str) -> bool:
    return "cuda" in variants.built_variants().get(backend, [])


def expected_reason(backend: str) -> str:
    """What a machine without a GPU must say about CUDA for this backend."""
    return "no CUDA driver" if cuda_built(backend) else "not built"


# ------------------------------------------------------------------------------------------------
# the manifest and the build script

def test_manifest_declares_cuda_variants_of_the_newest_and_a_2023_backend():
    assert {"gguf-2026-10", "llama-2023-08"} <= set(CUDA_BACKENDS)
    settings = cuda.cuda_settings()
    assert settings.architectures and all(int(re.sub(r"\D", "", a.split("-")[0])) >= 75
                                          for a in settings.architectures.split(";"))  # CUDA 13: sm_75+
    for w in settings.wheels:
        assert re.fullmatch(r"[\w-]+==[\w.]+", w.requirement) and re.fullmatch(r"[0-9a-f]{64}", w.sha256)
    assert settings.runtime_libraries
    for name in CUDA_BACKENDS:
        spec = load_manifest()[name]
        var = spec.variants["cuda"]
        assert var.cpu_features, "the ggml CPU part of a CUDA variant needs CPU features too"
        assert spec.cuda is not None and isinstance(spec.cuda.archives, tuple)
    assert "F32" not in (load_manifest()["llama-2023-08"].cuda.matrix_types or ())


def test_default_build_skips_cuda_and_cuda_selection_skips_backends_without_it():
    out = subprocess.run([sys.executable, str(ROOT / "build_backends.py"), "--list", "--json"],
                         capture_output=True, text=True, check=True)
    import json

    rows = json.loads(out.stdout)
    assert {(r["name"], r["variant"]) for r in rows if r["gpu"] == "cuda"} == {(b, "cuda") for b in CUDA_BACKENDS}
    proc = subprocess.run([sys.executable, str(ROOT / "build_backends.py"), "--only", "llama-2023-04",
                           "--variant", "cuda"], capture_output=True, text=True)
    assert proc.returncode == 2 and "nothing selected" in proc.stderr


# ------------------------------------------------------------------------------------------------
# machines without a GPU (what CI sees)

@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_auto_falls_back_to_cpu_and_says_why(backend):
    if has_driver():
        pytest.skip("this machine has a CUDA driver: tools/gpu_check.sh covers it")
    choice = choose_variant(backend, "auto")
    assert choice.device == "cpu" and choice.n_gpu_layers is None
    assert "not cuda: " in choice.reason and expected_reason(backend) in choice.reason, choice.reason
    if not cuda_built(backend):
        assert f"gpt4all-build --only {backend} --variant cuda" in choice.reason


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_device_cuda_fails_loudly(backend):
    if has_driver():
        pytest.skip("this machine has a CUDA driver")
    with pytest.raises(DeviceError, match=rf"device='cuda' requested but .*{expected_reason(backend)}"):
        choose_variant(backend, "cuda")


def test_backend_without_cuda_variant():
    choice = choose_variant("llama-2023-04", "auto")
    assert "llama-2023-04 has no CUDA variant" in choice.reason
    with pytest.raises(DeviceError, match="has no CUDA variant"):
        choose_variant("llama-2023-04", "cuda")


def test_load_auto_and_cuda_on_a_machine_without_gpu(tiny_llama):
    if has_driver():
        pytest.skip("this machine has a CUDA driver")
    require_backend("gguf-2026-10")
    path = tiny_llama[("gguf", 3, "f16")]
    with g.load(path, device="auto", n_ctx=64) as m:
        assert m.info.device == "cpu" and m.info.variant in ("cpu", "cpu-avxonly")
        assert expected_reason("gguf-2026-10") in m.info.why_variant
        assert m.info.n_gpu_layers == 0
    with pytest.raises(DeviceError, match=expected_reason("gguf-2026-10")):
        g.load(path, device="cuda", n_ctx=64)
    # asking for no GPU layers keeps even a GPU machine on the CPU variant
    assert "n_gpu_layers=0" in choose_variant("gguf-2026-10", "auto", n_gpu_layers=0).reason


# ------------------------------------------------------------------------------------------------
# the conditions that need a device, with a simulated driver

@pytest.fixture
def fake_gpu(monkeypatch):
    """A built CUDA variant, a driver with one device, and settable free memory / capability."""
    state = {"free": 80 * GiB, "cc": (9, 0), "archs": "75-virtual;80-real;86-real;89-real;90-real"}
    real_built = variants.built_variants

    def built():
        out = {k: list(v) for k, v in real_built().items()}
        for b in CUDA_BACKENDS:
            out.setdefault(b, ["cpu"])
            if "cpu" not in out[b]:
                out[b].append("cpu")
            if "cuda" not in out[b]:
                out[b].append("cuda")
        return out

    monkeypatch.setattr(variants, "built_variants", built)
    monkeypatch.setattr(cuda, "cuda_driver", lambda: (1, "1 CUDA device(s)"))
    monkeypatch.setattr(cuda, "gpu_info", lambda index=0: GpuInfo(
        0, "Simulated H100", state["cc"], state["free"], 80 * GiB, "cuMemGetInfo"))
    monkeypatch.setattr(cache, "read_record", lambda b, v: {"cuda": {"architectures": state["archs"]}})
    monkeypatch.setattr(variants, "missing_features", lambda needed: [])
    monkeypatch.setattr(cuda, "preload_cuda_runtime", lambda: "simulated")
    return state


def test_old_call_signature_still_works(fake_gpu):
    choice = choose_variant("gguf-2026-10", "auto")       # how probing.py calls it
    assert choice.device == "cuda" and choice.variant == "cuda" and choice.n_gpu_layers == -1
    assert "memory not checked" in choice.reason


def test_f16_file_goes_to_cuda_with_all_layers(fake_gpu, tiny_llama):
    facts = read_facts(tiny_llama[("ggjt", 3, "f16")])
    choice = choose_variant("llama-2023-08", "auto", facts=facts, n_ctx=64, fit_layers=fit_layers)
    assert choice.device == "cuda" and choice.n_gpu_layers == -1, choice.reason
    assert "all 32 layers and the output fit" in choice.reason and "Simulated H100" in choice.reason


def test_all_f32_file_is_never_offloaded_to_2023_kernels(fake_gpu, tiny_llama):
    """The 2023-08 CUDA kernels abort the process on an F32 weight matrix (get_row_rounding)."""
    facts = read_facts(tiny_llama[("ggjt", 3, "f32")])
    choice = choose_variant("llama-2023-08", "auto", facts=facts, n_ctx=64, fit_layers=fit_layers)
    assert choice.device == "cpu"
    assert "F32 weight matrices" in choice.reason and "abort" in choice.reason, choice.reason
    with pytest.raises(DeviceError, match="F32 weight matrices"):
        choose_variant("llama-2023-08", "cuda", facts=facts, n_ctx=64, fit_layers=fit_layers)
    # the 2026 kernels take F32 (no matrix_types rule): the same model as GGUF goes to CUDA
    gguf = read_facts(tiny_llama[("gguf", 3, "f32")])
    assert choose_variant("gguf-2026-10", "auto", facts=gguf, n_ctx=64, fit_layers=fit_layers).device == "cuda"


def test_free_memory_decides_how_many_layers(fake_gpu, tiny_llama):
    from gpt4all_loader.memory import estimate

    facts = read_facts(tiny_llama[("gguf", 3, "f16")])
    reserve = cuda.cuda_settings().reserve_mib * 1024 * 1024
    ten = estimate(facts, ctx_size=64, gpu_layers=10, era="2026-10")["vram_bytes"]
    eleven = estimate(facts, ctx_size=64, gpu_layers=11, era="2026-10")["vram_bytes"]
    assert ten < eleven
    fake_gpu["free"] = reserve + ten + (eleven - ten) // 2     # room for 10 layers, not 11
    choice = choose_variant("gguf-2026-10", "auto", facts=facts, n_ctx=64, fit_layers=fit_layers)
    assert choice.device == "cuda" and choice.n_gpu_layers == 10, choice.reason
    assert "10/32 layers fit" in choice.reason
    # an explicit request beyond what fits: auto falls back, cuda refuses
    choice = choose_variant("gguf-2026-10", "auto", facts=facts, n_ctx=64, n_gpu_layers=20, fit_layers=fit_layers)
    assert choice.device == "cpu" and "20 layers requested but only 10 of 32 fit" in choice.reason
    with pytest.raises(DeviceError, match="only 10 of 32 fit"):
        choose_variant("gguf-2026-10", "cuda", facts=facts, n_ctx=64, n_gpu_layers=20, fit_layers=fit_layers)
    five = choose_variant("gguf-2026-10", "auto", facts=facts, n_ctx=64, n_gpu_layers=5, fit_layers=fit_layers)
    assert five.n_gpu_layers == 5
    # nothing fits
    fake_gpu["free"] = reserve // 2
    choice = choose_variant("gguf-2026-10", "auto", facts=facts, n_ctx=64, fit_layers=fit_layers)
    assert choice.device == "cpu" and "not even one layer fits" in choice.reason


def test_gpu_older_than_the_built_architectures_is_refused(fake_gpu, tiny_llama):
    fake_gpu["cc"] = (6, 1)
    facts = read_facts(tiny_llama[("gguf", 3, "f16")])
    choice = choose_variant("gguf-2026-10", "auto", facts=facts, n_ctx=64, fit_layers=fit_layers)
    assert choice.device == "cpu" and "compute capability 6.1" in choice.reason and "sm_75" in choice.reason


def test_missing_cuda_runtime_falls_back_or_fails_loudly(fake_gpu, monkeypatch, tiny_llama):
    def missing():
        raise BackendError("the CUDA variants need libcublas.so.13 ... pip install nvidia-cublas==13.0.2.14")

    monkeypatch.setattr(cuda, "preload_cuda_runtime", missing)
    facts = read_facts(tiny_llama[("gguf", 3, "f16")])
    choice = choose_variant("gguf-2026-10", "auto", facts=facts, n_ctx=64, fit_layers=fit_layers)
    assert choice.device == "cpu" and "pip install nvidia-cublas" in choice.reason
    with pytest.raises(DeviceError, match="libcublas.so.13"):
        choose_variant("gguf-2026-10", "cuda", facts=facts, n_ctx=64, fit_layers=fit_layers)


def test_missing_cuda_runtime_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(cuda, "_runtime_dirs", lambda: [(tmp_path, "nowhere")])
    monkeypatch.setattr(cuda, "cuda_settings", lambda: CudaSettings(
        runtime_libraries=("libg4a-no-such-cublas.so.13",), wheels=(Wheel("nvidia-cublas==13.0.2.14", ""),)))
    monkeypatch.setattr(cuda, "_preloaded", {})
    with pytest.raises(BackendError, match=r"libg4a-no-such-cublas.so.13.*pip install nvidia-cublas==13.0.2.14"):
        cuda.preload_cuda_runtime()


# ------------------------------------------------------------------------------------------------
# the built CUDA libraries (when this machine built them)

@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_built_cuda_library_is_isolated_and_finds_cublas(backend):
    require_backend(backend, "cuda")
    so = cache.lib_dir() / f"libg4a-{backend}-cuda.so"
    nm = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in nm.splitlines() if line.strip()]
    assert names and all(n.startswith("g4a_") for n in names)
    dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", dyn)
    assert f"[{so.name}]" in dyn and "$ORIGIN/cuda" in dyn
    cuda_needed = [n for n in needed if "cu" in n]
    assert cuda_needed == ["libcublas.so.13"], needed   # cudart static, no libcuda (no VMM)
    rec = native.record_for(backend, "cuda")
    assert rec["gpu"] == "cuda" and rec["cuda"]["architectures"]


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_library_opens_and_reports_a_gpu_build(backend):
    """Opened in a child process (a CUDA runtime without a device must not take the test run down)."""
    require_backend(backend, "cuda")
    code = (f"from gpt4all_loader import native\n"
            f"b = native.open_backend({backend!r}, 'cuda')\n"
            f"print('gpu', b.gpu, b.record['cuda_runtime_from'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("gpu True"), proc.stdout


def test_probe_and_load_make_the_same_plan(fake_gpu, tiny_llama):
    """probe() asks the same plan as load(): with the file's facts, so an all-F32 file that the 2023
    CUDA kernels would abort on is not promised to CUDA by the probe either."""
    from gpt4all_loader import probe
    from gpt4all_loader.plan import plan

    for key, device in ((("ggjt", 3, "f32"), "cpu"), (("ggjt", 3, "f16"), "cuda")):
        path = tiny_llama[key]
        rep = probe(path)
        lp = plan(read_facts(path))
        assert rep.backend == lp.chosen.backend == "llama-2023-08"
        assert rep.variant == lp.variant.variant and lp.variant.device == device, rep.variant_reason
    assert "F32 weight matrices" in probe(tiny_llama[("ggjt", 3, "f32")]).variant_reason


# ------------------------------------------------------------------------------------------------
# one default context: probe and load plan the same variant and layers for every sample file

class _Planned(Exception):
    """Stops load() right after its plan, before any native code (a CUDA variant is only simulated)."""


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Path]:
    """The demo's sample set: every container, each era's own quantizations, GPT-J, MPT, SmolLM2."""
    from gpt4all_loader.cli.demo import write_samples

    return write_samples(tmp_path_factory.mktemp("samples"), log=lambda line: None)


def _plans(monkeypatch, path: Path, **probe_kw):
    """(probe report, the plan probe made, the plan load() made) for ``path``, both with no n_ctx."""
    import gpt4all_loader.plan as plan_module

    real, made = plan_module.plan, []

    def recorded(*a, **kw):
        made.append(real(*a, **kw))
        if stop:
            raise _Planned
        return made[-1]

    with monkeypatch.context() as m:
        m.setattr(plan_module, "plan", recorded)
        stop = False
        rep = g.probe(path, **probe_kw)
        (probe_plan,) = made
        stop = True
        with pytest.raises(_Planned):
            g.load(path)
    return rep, probe_plan, made[-1]


def _assert_same(rep, probe_plan, load_plan, label: str) -> None:
    assert rep.error is None, (label, rep.error)
    assert load_plan.n_ctx > 0 and probe_plan.n_ctx == load_plan.n_ctx == rep.n_ctx == rep.memory["ctx_size"], label
    assert probe_plan.chosen is not None and load_plan.chosen is not None, label
    assert probe_plan.chosen.backend == load_plan.chosen.backend == rep.backend, label
    assert probe_plan.variant == load_plan.variant, label     # variant, device, n_gpu_layers and the reason
    assert rep.variant == load_plan.variant.variant, label


def test_probe_and_load_plan_alike_for_every_sample_file(samples, monkeypatch):
    assert len(samples) >= 18, [p.name for p in samples]
    for path in samples:
        rep, probe_plan, load_plan = _plans(monkeypatch, path)
        _assert_same(rep, probe_plan, load_plan, path.name)
        assert load_plan.n_ctx == default_n_ctx(load_plan.facts), path.name


def test_probe_and_load_plan_alike_with_free_vram_around_the_estimate(samples, fake_gpu, monkeypatch):
    """Free VRAM for half of the layers, for all of them at a 512 context but not at the default one,
    and for all: probe and load offload the same layers, since both count them at the same context."""
    from gpt4all_loader.memory import estimate

    reserve = cuda_settings().reserve_mib * 1024 * 1024
    offloaded = 0
    for path in samples:
        facts = read_facts(path)
        n_ctx = default_n_ctx(facts)
        rep = g.probe(path)
        if rep.backend not in CUDA_BACKENDS:
            continue
        era = load_manifest()[rep.backend].era
        n_layer = estimate(facts, ctx_size=n_ctx, era=era)["n_layer"]
        full = estimate(facts, ctx_size=n_ctx, gpu_layers=n_layer + 1, era=era)["vram_bytes"]
        short = estimate(facts, ctx_size=min(512, n_ctx), gpu_layers=n_layer + 1, era=era)["vram_bytes"]
        for free in (full // 2, (short + full) // 2, full):
            fake_gpu["free"] = reserve + free
            rep, probe_plan, load_plan = _plans(monkeypatch, path, gpu_layers="auto")
            label = f"{path.name} with {free} bytes free"
            _assert_same(rep, probe_plan, load_plan, label)
            choice = load_plan.variant
            if choice.device == "cuda":   # the memory estimate's "auto" split is the variant's
                offloaded += 1
                want = n_layer + 1 if choice.n_gpu_layers == -1 else choice.n_gpu_layers
                assert rep.memory["gpu_layers"] == want, label
    assert offloaded, "no sample file went to the simulated GPU"
