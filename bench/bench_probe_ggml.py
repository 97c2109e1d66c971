"""The probe and the reader next to ggml's own GGUF header reader, in one run.

    python bench/bench_probe_ggml.py [--runs 21] [--c-runs 51] [--load-runs 5] [--json] [FILE.gguf ...]

ggml's side: ``bench/gguf_init_bench.c``, compiled here at run time against the gguf-2026-10 ``cpu``
archives in the cache (read only; nothing is rebuilt), times ``gguf_init_from_file(path, {no_alloc=true,
ctx=NULL})`` + ``gguf_free`` in-process and prints the median of ``--c-runs`` calls per file.  That call
reads the whole header, every token and merge string included, into ggml's own structures.

Our side, in this process: ``gpt4all_loader.probe(path)`` (header, catalog verdict for every backend,
memory estimate) and ``formats.sniff.read_facts(path)`` alone, median of ``--runs`` calls each after one
warm-up.  Files: those named on the command line, the real SmolLM2 file and the real vocabulary files of
``gpt4all_loader.testing.realfiles`` (GGUF v1 is left to our side only: ggml refuses it since Nov 2023).

Then, ``load(SmolLM2)`` (all tensors, vocab_only=False, n_ctx 512): its median time in this process and
the share of it spent in ``read_facts`` and in ``engines.validate.problems`` (measured inside load() by
wrapping both); and the load in fresh processes, ours against the bare C loop of ``bench/bare_loop.cpp``
(``llama_model_load_from_file`` and the context, on the same archives).  Last, where one probe's time goes
on the first three files (see :func:`breakdown`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
C_SRC = HERE / "gguf_init_bench.c"
ENGINE = "gguf-2026-10"
#: realfiles.VOCAB_FILES kinds: every real GGUF vocabulary file of the 0.3.36 sdist, and GGUF v1
VOCAB_KINDS = ("gguf-v1-llama", "gguf-llama-spm", "gguf-llama-bpe", "gguf-qwen2", "gguf-command-r",
               "gguf-gemma-4", "gguf-deepseek-llm", "gguf-phi-3", "gguf-gpt-2", "gguf-qwen35")


def ggml_exe(out_dir: Path) -> Path:
    """Compile gguf_init_bench.c against the cached gguf-2026-10 cpu build (its libggml-base.a holds gguf.cpp)."""
    from gpt4all_loader.engines import cache

    bdir = cache.build_dir() / ENGINE / "cpu" / "cmake"
    trees = sorted((cache.build_dir() / ENGINE / "src").glob("*/vendor/llama.cpp"))
    archive = bdir / "ggml" / "src" / "libggml-base.a"
    if not trees or not archive.is_file():
        raise FileNotFoundError(f"{ENGINE}/cpu is not built (python build_backends.py --only {ENGINE} --variant cpu)")
    obj, exe = out_dir / "gguf_init_bench.o", out_dir / "gguf_init_bench"
    cc, cxx = os.environ.get("CC", "gcc"), os.environ.get("CXX", "g++")
    subprocess.run([cc, "-O2", f"-I{trees[0] / 'ggml' / 'include'}", "-c", str(C_SRC), "-o", str(obj)], check=True)
    subprocess.run([cxx, str(obj), "-o", str(exe), str(archive), "-pthread", "-lm"], check=True)
    return exe


def bare_exe(out_dir: Path) -> Path:
    """bench/bare_loop.cpp linked against the cached gguf-2026-10 cpu archives, into ``out_dir`` (the cache is
    only read)."""
    from gpt4all_loader.engines import cache
    from gpt4all_loader.engines.manifest import load_manifest

    bdir = cache.build_dir() / ENGINE / "cpu" / "cmake"
    tree = sorted((cache.build_dir() / ENGINE / "src").glob("*/vendor/llama.cpp"))[0]
    exe = out_dir / "bare_loop"
    subprocess.run([os.environ.get("CXX", "g++"), "-std=c++17", "-O2", f"-I{tree / 'include'}",
                    f"-I{tree / 'ggml' / 'include'}", str(HERE / "bare_loop.cpp"), "-o", str(exe), "-Wl,--start-group",
                    *(str(bdir / a) for a in load_manifest()[ENGINE].archives), "-Wl,--end-group", "-pthread", "-ldl",
                    "-lm"], check=True)
    return exe


def ggml_times(exe: Path, files: list[Path], runs: int) -> dict[str, dict[str, Any]]:
    p = subprocess.run([str(exe), str(runs), *map(str, files)], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return {r["file"]: r for r in rows}


def median_s(fn: Callable[[], object], runs: int) -> float:
    """Median seconds of ``runs`` calls after one untimed call (bench_probe's timer)."""
    from bench_probe import timeit

    return float(timeit(fn, runs))


def real_files() -> list[Path]:
    from gpt4all_loader.testing import realfiles

    out = [Path(realfiles.smollm2_path())]
    for kind in VOCAB_KINDS:
        try:
            out.append(Path(realfiles.vocab_file(kind)))
        except Exception as e:  # noqa: BLE001 - the bench goes on without it
            print(f"# {kind}: {e}", file=sys.stderr)
    return out


def load_share(path: Path, runs: int) -> dict[str, float]:
    """Median load() time and, in the same calls, the time inside read_facts and validate.problems."""
    import gpt4all_loader as g
    from gpt4all_loader import facts_cache
    from gpt4all_loader.engines import validate

    spent = {"read_facts": 0.0, "validate": 0.0}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    orig_rf, orig_val = facts_cache.read_facts, validate.problems
    facts_cache.read_facts = timed("read_facts", orig_rf)
    validate.problems = timed("validate", orig_val)
    def one() -> float:
        """One load with the bare loop's settings, timed without the free."""
        t0 = time.perf_counter()
        m = g.load(path, n_ctx=512, n_threads=1, device="cpu")
        dt = time.perf_counter() - t0
        m.close()
        return dt

    rows = []
    try:
        one()  # warm-up: library opened once per process
        for _ in range(runs):
            spent.update(read_facts=0.0, validate=0.0)
            rows.append((one(), spent["read_facts"], spent["validate"]))
    finally:
        facts_cache.read_facts, validate.problems = orig_rf, orig_val
    rows.sort()
    total, rf, val = rows[len(rows) // 2]
    # the same loads with the facts remembered (a process that loads the same file again)
    os.environ.pop("GPT4ALL_LOADER_NO_FACTS_CACHE", None)
    try:
        again = statistics.median(one() for _ in range(runs))
    finally:
        os.environ["GPT4ALL_LOADER_NO_FACTS_CACHE"] = "1"
    return {"load_s": total, "read_facts_s": rf, "validate_s": val, "load_again_s": again}


_CHILD_LOAD = """
import sys, time
import gpt4all_loader as g
t0 = time.perf_counter()
m = g.load(sys.argv[1], n_ctx=512, n_threads=1, device="cpu")  # the bare loop's settings
print(time.perf_counter() - t0)  # the load alone, as the bare loop times it (not the free)
m.close()
"""


def fresh_loads(path: Path, runs: int) -> dict[str, float | str]:
    """Median load time in fresh processes: ours (the load() call alone, library opened in it) and the bare
    C loop of bench/bare_loop.cpp (llama_model_load_from_file + context, same archives, 1 token generated).

    Ours twice: the first load of a file (``GPT4ALL_LOADER_NO_FACTS_CACHE=1``: the header is read and
    its vocabulary walked) and a load again (the facts remembered by facts_cache).  The children may
    write bytecode, as an installed package has it (PYTHONDONTWRITEBYTECODE would compile every module
    in every child)."""
    out: dict[str, float | str] = {}
    ours: list[float] = []
    again: list[float] = []
    bare: list[float] = []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "GPT4ALL_LOADER_NO_FACTS_CACHE")}
    cold_env = {**env, "GPT4ALL_LOADER_NO_FACTS_CACHE": "1"}
    subprocess.run([sys.executable, "-c", _CHILD_LOAD, str(path)], env=env, capture_output=True, check=True)
    with tempfile.TemporaryDirectory(prefix="g4a-bench-bare-") as tmp, \
            tempfile.NamedTemporaryFile("w", suffix=".txt") as prompt:
        prompt.write("1, 2")
        prompt.flush()
        try:
            exe: Path | None = bare_exe(Path(tmp))
        except (OSError, IndexError, subprocess.CalledProcessError) as e:
            exe = None
            out["bare_c_error"] = f"{type(e).__name__}: {e}"
        for _ in range(runs):  # alternating, so that both see the same machine load
            p = subprocess.run([sys.executable, "-c", _CHILD_LOAD, str(path)], capture_output=True, text=True,
                               check=True, env=cold_env)
            ours.append(float(p.stdout.split()[-1]))
            p = subprocess.run([sys.executable, "-c", _CHILD_LOAD, str(path)], capture_output=True, text=True,
                               check=True, env=env)
            again.append(float(p.stdout.split()[-1]))
            if exe is not None:
                p = subprocess.run([str(exe), str(path), prompt.name, "1", "1", "512", "1", "-1"],
                                   capture_output=True, text=True, check=True)
                bare.append(float(json.loads(p.stdout.strip().splitlines()[-1])["load_s"]))
    out["ours_fresh_load_s"] = statistics.median(ours)
    out["ours_fresh_load_again_s"] = statistics.median(again)
    if bare:
        out["bare_c_load_s"] = statistics.median(bare)
    return out


def breakdown(path: Path, runs: int) -> dict[str, float]:
    """Where one probe's time goes (ms, median of ``runs``): the token texts (walk, slice, count), the other
    string arrays (skipped by their lengths), the rest of read_facts, and probe() beyond read_facts; and, as
    the floor of any Python reader, one loop over the token lengths alone (``skip_strings``)."""
    from gpt4all_loader.formats import gguf_reader
    from gpt4all_loader.formats.sniff import ByteSource, read_facts
    from gpt4all_loader import probe

    spent: dict[str, float] = {}
    orig_tokens, orig_skip = gguf_reader._Gguf.tokens, ByteSource.skip_strings

    def tokens(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_tokens(self, *a, **kw)
        finally:
            spent["tokens"] += time.perf_counter() - t0

    def skip(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig_skip(self, *a, **kw)
        finally:
            spent["skip"] += time.perf_counter() - t0

    rows = []
    gguf_reader._Gguf.tokens, ByteSource.skip_strings = tokens, skip  # type: ignore[method-assign]
    try:
        for _ in range(runs + 1):
            spent.update(tokens=0.0, skip=0.0)
            t0 = time.perf_counter()
            facts = read_facts(path)
            t1 = time.perf_counter()
            tok, skipped = spent["tokens"], spent["skip"]
            probe(path)
            t2 = time.perf_counter()
            rows.append({"token texts (walk, slice, set)": tok, "other string arrays (skipped)": skipped,
                         "rest of read_facts": t1 - t0 - tok - skipped,
                         "probe() beyond read_facts": (t2 - t1) - (t1 - t0)})
    finally:
        gguf_reader._Gguf.tokens, ByteSource.skip_strings = orig_tokens, orig_skip  # type: ignore[method-assign]
    out = {k: statistics.median(r[k] for r in rows[1:]) * 1e3 for k in rows[0]}
    vocab = facts.vocab
    if vocab is not None and vocab.offset is not None:
        def floor() -> None:
            with open(path, "rb") as f:
                src = ByteSource(f, str(path), os.fstat(f.fileno()).st_size)
                src.pos = vocab.offset or 0
                src.skip_strings(vocab.n_tokens, "I" if facts.format_version == 1 else "Q", "tokens")
        out["floor: token lengths alone"] = median_s(floor, runs) * 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--runs", type=int, default=21, help="timed calls of probe() and read_facts() per file")
    ap.add_argument("--c-runs", type=int, default=51, help="timed calls of gguf_init_from_file per file")
    ap.add_argument("--load-runs", type=int, default=5, help="timed load() calls of SmolLM2 (0: skip)")
    ap.add_argument("--parts", type=int, default=3, help="break the probe's time down on this many files (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from gpt4all_loader.formats.sniff import read_facts
    from gpt4all_loader import probe

    # the reader itself is measured: a probe of a file seen before would answer from facts_cache
    os.environ["GPT4ALL_LOADER_NO_FACTS_CACHE"] = "1"

    files = list(args.files) + real_files()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="g4a-bench-ggml-") as tmp:
        exe = ggml_exe(Path(tmp))
        for p in files:  # file by file, ggml then ours, so that both see the same machine load
            c = ggml_times(exe, [p], args.c_runs).get(str(p), {})
            rows.append({"file": p.name, "size": p.stat().st_size,
                         "ggml_us": c.get("median_us"), "ggml_error": c.get("error"),
                         "probe_us": median_s(lambda: probe(p), args.runs) * 1e6,
                         "read_facts_us": median_s(lambda: read_facts(p), args.runs) * 1e6})
    smol = files[len(args.files)]
    load: dict[str, Any] | None = None
    if args.load_runs > 0:
        load = {**load_share(smol, args.load_runs), **fresh_loads(smol, args.load_runs)}
    parts = {p.name: breakdown(p, args.runs) for p in files[len(args.files):len(args.files) + args.parts]}
    if args.json:
        print(json.dumps({"rows": rows, "load": load, "breakdown": parts}, indent=2))
        return 0

    print(f"probe() and read_facts() vs ggml gguf_init_from_file(no_alloc) of {ENGINE} "
          f"(median of {args.runs} / {args.c_runs} calls; ratio = ours / ggml)")
    print(f"{'file':<40} {'size':>10} {'ggml ms':>8} {'read_facts ms':>13} {'ratio':>6} {'probe ms':>9} {'ratio':>6}")
    ratios = []
    for r in rows:
        g = r["ggml_us"]
        rr = r["read_facts_us"] / g if g else None
        pr = r["probe_us"] / g if g else None
        if pr:
            ratios.append(pr)
        print(f"{r['file'][:40]:<40} {r['size']:>10} {(g / 1e3 if g else float('nan')):>8.2f} "
              f"{r['read_facts_us'] / 1e3:>13.2f} {(rr or float('nan')):>6.2f} {r['probe_us'] / 1e3:>9.2f} "
              f"{(pr or float('nan')):>6.2f}" + ("  (ggml refuses it)" if r["ggml_error"] else ""))
    if ratios:
        print(f"probe/ggml over {len(ratios)} files: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
              f"max {max(ratios):.2f}x (target <= 3x: {'met' if max(ratios) <= 3 else 'missed'})")
    for name, part in parts.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in part.items()))
    if load:
        print(f"in-process load({files[len(args.files)].name}), median of {args.load_runs}: "
              f"{load['load_s'] * 1e3:.1f} ms, of which read_facts {load['read_facts_s'] * 1e3:.1f} ms and "
              f"validate {load['validate_s'] * 1e3:.2f} ms "
              f"({(load['read_facts_s'] + load['validate_s']) / load['load_s'] * 100:.1f} %); "
              f"with the facts remembered {load['load_again_s'] * 1e3:.1f} ms")
        bare = load.get("bare_c_load_s")
        first, again = load["ours_fresh_load_s"], load["ours_fresh_load_again_s"]
        print(f"fresh processes, median of {args.load_runs}: ours load() {first * 1e3:.1f} ms the first time, "
              f"{again * 1e3:.1f} ms again (facts remembered), "
              + (f"bare C loop {bare * 1e3:.1f} ms (ours/bare {first / bare:.2f}x first, {again / bare:.2f}x again)"
                 if bare else f"bare C loop: {load.get('bare_c_error')}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
