"""Per-token cost of ``load(..., isolated=True)`` next to in-process generation, same file and settings.

    python bench/bench_isolated.py [--reps 7] [--n-gen 48] [--threads 1] [--file PATH] [--json]

Both models are loaded once (SmolLM2-135M-Instruct Q4_1 by default, from ``realfiles``); then the two
generate the same greedy continuation of the same prompt in alternating runs (the order flips every
repetition), so both see the same machine load.  Per-token time = (time of the last streamed piece -
time of the first) / (pieces - 1), through ``generate(stream=True)``: for the isolated model each piece
crosses the process boundary.  Prints the medians and the ratio isolated / in-process (target < 1.05).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

PROMPT = "".join(f"{i}, " for i in range(1, 31))


def per_token(model: Any, n_gen: int) -> tuple[float, int, str]:
    """(seconds per generated token after the first, pieces, text) of one greedy streamed run."""
    stamps: list[float] = []
    pieces: list[str] = []
    for piece in model.generate(PROMPT, max_tokens=n_gen, temperature=0, repeat_penalty=1.0, stream=True):
        stamps.append(time.perf_counter())
        pieces.append(piece)
    if len(stamps) < 2:
        raise SystemExit(f"only {len(stamps)} pieces generated; raise --n-gen")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1), len(stamps), "".join(pieces)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--n-gen", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="1 on a busy machine (ggml's barriers spin)")
    ap.add_argument("--file", default=None, help="model file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from gpt4all_loader import load
    from gpt4all_loader.testing.realfiles import smollm2_path

    path = args.file or str(smollm2_path())
    models = {"in-process": load(path, n_threads=args.threads, n_ctx=512),
              "isolated": load(path, n_threads=args.threads, n_ctx=512, isolated=True)}
    try:
        texts = {k: per_token(m, args.n_gen)[2] for k, m in models.items()}  # warm-up, and the outputs
        times: dict[str, list[float]] = {k: [] for k in models}
        order = list(models)
        for _ in range(args.reps):
            for k in order:
                times[k].append(per_token(models[k], args.n_gen)[0])
            order.reverse()
    finally:
        for m in models.values():
            m.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["isolated"] / med["in-process"]
    result = {"file": path, "threads": args.threads, "n_gen": args.n_gen, "reps": args.reps,
              "ms_per_token": {k: round(v * 1e3, 3) for k, v in med.items()},
              "runs_ms": {k: [round(x * 1e3, 3) for x in v] for k, v in times.items()},
              "ratio_isolated_over_in_process": round(ratio, 4),
              "same_output": texts["isolated"] == texts["in-process"]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{path}: threads={args.threads} n_gen={args.n_gen}, median of {args.reps} alternating runs")
        for k, v in med.items():
            print(f"  {k:11s} {v * 1e3:8.2f} ms/token  runs: {' '.join(f'{x * 1e3:.1f}' for x in times[k])}")
        print(f"  isolated / in-process: {ratio:.3f} (target < 1.05); same output: {result['same_output']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
