"""Generation speed on a busy machine: tokens/s with a CPU hog on every core next to tokens/s idle, every era.

    python bench/bench_busy.py [--rounds 5] [--tokens 64] [--threads N] [--only ERA] [--hogs N]
                               [--baseline-cache DIR] [--json]

Every backend gets a file it reads (SmolLM2-135M-Instruct Q4_1 from ``realfiles`` where the era reads it,
else a seeded tiny file written by ``formats.writer``, wide enough that a token takes a few ms) and runs in
its own child process, loaded once.  A round times ``--tokens`` single-token evaluations after a short
prompt (the decode step of generation; no sampling, so no end token can cut a run short) once with the
machine as it is ("idle") and once with ``--hogs`` busy-loop processes running (default: one per core this
process may run on, started before and killed after the timing).  The order idle/busy flips every round,
so both conditions see the same background load; the table gives the median, the spread (min-max) and the
ratio busy / idle.  ``--threads`` is passed to ``load()`` (default: none, i.e. the library's default).

``--baseline-cache DIR`` also runs every era from another library cache (``GPT4ALL_LOADER_CACHE``: e.g. the
libraries built without the busy-machine fix), interleaved with the current one, and adds new / old ratios.
``--baseline-fixed-threads`` does the same with the current libraries and ``GPT4ALL_LOADER_FIT_THREADS=0``:
every decode at the loaded thread count, as before decodes took only the cores left free (``engines.cores``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HOG = "while True:\n    pass\n"


# -- files ----------------------------------------------------------------------------------------------------
def bench_dir() -> Path:
    from gpt4all_loader.engines import cache
    d = cache.files_dir() / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cached(name: str, write: Callable[[Path], Any]) -> Path:
    p = bench_dir() / name
    if not p.is_file():
        tmp = p.with_name(p.name + f".tmp{os.getpid()}")
        write(tmp)
        tmp.replace(p)
    return p


def smollm2() -> Path:
    from gpt4all_loader.testing.realfiles import smollm2_path
    return smollm2_path()


def tiny_llama(fmt: str, version: int) -> Path:
    from gpt4all_loader.formats.writer import TinyLlama, write_llama
    m = TinyLlama(seed=5, n_embd=256, n_head=4, n_layer=32, n_ctx=2048)
    return _cached(f"busy-llama-e256-l32-{fmt}{version}-f16.bin",
                   lambda p: write_llama(p, m, fmt, version, ftype="f16"))


def tiny_gptj() -> Path:
    from gpt4all_loader.formats.writer import TinyGPTJ, write_gptj
    m = TinyGPTJ(seed=5, n_embd=512, n_head=8, n_layer=6, n_rot=32, n_ctx=2048)
    return _cached("busy-gptj-e512-l6-f16.bin", lambda p: write_gptj(p, m, "f16"))


def tiny_mpt() -> Path:
    from gpt4all_loader.formats.writer import TinyMPT, write_mpt
    m = TinyMPT(seed=5, n_embd=512, n_head=8, n_layer=8, n_ctx=2048)
    return _cached("busy-mpt-e512-l8-f16.bin", lambda p: write_mpt(p, m, "ggmm", "f16"))


#: backend -> (what the file is, how to get it)
ERAS: dict[str, tuple[str, Callable[[], Path]]] = {
    "llama-2023-04": ("tiny LLaMA ggjt v1 F16 (e256, 32 layers)", lambda: tiny_llama("ggjt", 1)),
    "llama-2023-05": ("tiny LLaMA ggjt v1 F16 (e256, 32 layers)", lambda: tiny_llama("ggjt", 1)),
    "llama-2023-08": ("tiny LLaMA ggjt v1 F16 (e256, 32 layers)", lambda: tiny_llama("ggjt", 1)),
    "gguf-2023-11": ("tiny LLaMA GGUF v3 F16 (e256, 32 layers)", lambda: tiny_llama("gguf", 3)),
    "gguf-2024-09": ("SmolLM2-135M-Instruct Q4_1", smollm2),
    "gguf-2026-10": ("SmolLM2-135M-Instruct Q4_1", smollm2),
    "ggml-gpt4all-2023-05": ("tiny GPT-J F16 (e512, 6 layers)", tiny_gptj),
    "ggml-gpt4all-2023-08": ("tiny MPT F16 (e512, 8 layers)", tiny_mpt),
}


# -- the child: one model, timed on request ----------------------------------------------------------------
def child(backend: str, path: str, threads: int) -> int:
    """Load ``path`` on ``backend``; for every line N on stdin print the tokens/s of N decode steps."""
    from gpt4all_loader import load

    m = load(path, backend=backend, device="cpu", n_ctx=512, n_threads=threads or None)
    prompt = m.tokenize("1, 2, 3, 4, 5, 6, 7, 8, 9, 10")[:8]
    steps = [t for t in m.tokenize(" the cat sat on the mat and looked at the dog, 11 12 13") if t > 2] or prompt
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        m.reset()
        m.evaluate(prompt)
        m.evaluate([steps[0]])  # warm: the first step after a reset allocates
        t0 = time.perf_counter()
        for i in range(n):
            m.evaluate([steps[i % len(steps)]])
        dt = time.perf_counter() - t0
        print(json.dumps({"tps": n / dt}), flush=True)
    m.close()
    return 0


class Child:
    def __init__(self, backend: str, path: Path, threads: int, env_extra: dict[str, str]):
        env = dict(os.environ) | env_extra
        self.p = subprocess.Popen([sys.executable, __file__, "--child", backend, str(path), str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self._read()
        if line != "ready":
            raise RuntimeError(f"{backend}: child did not start ({line!r})")

    def _read(self) -> str:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited with {self.p.wait()}")
        return line.strip()

    def run(self, n: int) -> float:
        assert self.p.stdin is not None
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        return float(json.loads(self._read())["tps"])

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(timeout=60)


class Hogs:
    """``n`` processes that each keep one core busy while the block runs."""

    def __init__(self, n: int):
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "Hogs":
        self.procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(self.n)]
        time.sleep(0.3)  # let them start spinning
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


# -- the parent ------------------------------------------------------------------------------------------------
def spread(v: list[float]) -> dict[str, float]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def bench_era(backend: str, a: argparse.Namespace) -> dict[str, Any]:
    what, make = ERAS[backend]
    path = make()
    libs: dict[str, dict[str, str]] = {"new": {}}
    if a.baseline_cache:
        libs["old"] = {"GPT4ALL_LOADER_CACHE": str(a.baseline_cache)}
    elif a.baseline_fixed_threads:
        libs["old"] = {"GPT4ALL_LOADER_FIT_THREADS": "0"}
    children = {k: Child(backend, path, a.threads, env) for k, env in libs.items()}
    tps: dict[tuple[str, str], list[float]] = {(k, c): [] for k in libs for c in ("idle", "busy")}
    try:
        for c in children.values():
            c.run(a.tokens)  # warm-up
        conds = ["idle", "busy"]
        order = list(children)
        for r in range(a.rounds):
            for cond in conds:
                print(f"# {backend} round {r + 1}/{a.rounds}: {cond}", file=sys.stderr, flush=True)
                if cond == "busy":
                    with Hogs(a.hogs):
                        for k in order:
                            tps[(k, cond)].append(children[k].run(a.tokens))
                else:
                    for k in order:
                        tps[(k, cond)].append(children[k].run(a.tokens))
            conds.reverse()
            order.reverse()
    finally:
        for c in children.values():
            c.close()
    out: dict[str, Any] = {"backend": backend, "file": what, "path": str(path)}
    for (k, cond), v in tps.items():
        out[f"{k}_{cond}"] = spread(v)
    return out


def row(e: dict[str, Any], has_old: bool) -> str:
    def cell(key: str) -> str:
        s = e[key]
        return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"

    def r(a: str, b: str) -> str:
        return f"{e[a]['median'] / e[b]['median']:.2f}"

    cells = [e["backend"], e["file"], cell("new_idle"), cell("new_busy"), r("new_busy", "new_idle")]
    if has_old:
        cells += [cell("old_idle"), cell("old_busy"), r("old_busy", "old_idle"),
                  r("new_idle", "old_idle"), r("new_busy", "old_busy")]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating idle/busy rounds per era")
    ap.add_argument("--tokens", type=int, default=64, help="decode steps timed per round")
    ap.add_argument("--threads", type=int, default=0, help="n_threads for load() (0: the library's default)")
    ap.add_argument("--hogs", type=int, default=len(os.sched_getaffinity(0)), help="busy-loop processes")
    ap.add_argument("--only", action="append", default=[], help="backend names containing this text (repeatable)")
    ap.add_argument("--baseline-cache", type=Path, help="a library cache to compare with (new / old)")
    ap.add_argument("--baseline-fixed-threads", action="store_true",
                    help="compare with every decode at the loaded thread count (GPT4ALL_LOADER_FIT_THREADS=0)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("BACKEND", "PATH", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child[0], a.child[1], int(a.child[2]))

    backends = [b for b in ERAS if not a.only or any(o in b for o in a.only)]
    cmd = shlex.join(["python", *sys.argv])
    cache = os.environ.get("GPT4ALL_LOADER_CACHE", "(default)")
    load_before = os.getloadavg()
    t0 = time.time()
    results = [bench_era(b, a) for b in backends]
    baseline = (f"  baseline: {a.baseline_cache}" if a.baseline_cache else
                "  baseline: fixed threads" if a.baseline_fixed_threads else "")
    header = (f"command: {cmd}\ncache: {cache}" + baseline
              + f"\n{os.cpu_count()} CPUs, {a.hogs} hogs, threads={a.threads or 'default'}, tokens={a.tokens}, "
              f"rounds={a.rounds}; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
              f"{time.time() - t0:.0f} s; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if a.json:
        print(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()}, "header": header,
                          "results": results}, indent=2))
        return 0
    has_old = a.baseline_cache is not None or a.baseline_fixed_threads
    cols = ["backend", "file", "idle tok/s", "busy tok/s", "busy/idle"]
    if has_old:
        cols += ["old idle", "old busy", "old busy/idle", "new/old idle", "new/old busy"]
    print(header)
    print("tok/s: median (min-max) over the rounds")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for e in results:
        print(row(e, has_old))
    return 0


if __name__ == "__main__":
    sys.exit(main())
