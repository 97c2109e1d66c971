"""Generation past the context: our Model's context shift next to the same shift done in C.

    python bench/bench_context_shift.py [--rounds 3] [--threads 1] [--n-ctx 128] [--n-gen 512] [--n-keep 8]

SmolLM2-135M on gguf-2026-10, greedy, a prompt of about 40 tokens and ``--n-gen`` tokens in a context of
``--n-ctx`` (a multiple of 256: the engine rounds the context up to one): the generation fills the
context several times.  Two engines, each in a fresh child process,
alternating over ``--rounds`` rounds:

* ours: ``Model.generate_tokens(prompt, max_tokens=N, n_keep=K)`` (context_shift is on by default);
* the peer: bench/shift_loop.cpp, the engine driven through llama.h with llama.cpp's own shift (keep
  the first K tokens, drop the older half of the rest with ``llama_memory_seq_rm``/``seq_add``) at
  the same moment, compiled against the static archives our library carries.

Printed: generated tokens/s from the first to the last token (median), the number of shifts, and
whether our token ids equal the peer's (same engine, same shifts: they should, token for token).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PROMPT = ("The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz "
          "combined movable metal type, oil-based ink and a wooden press. ")

OURS = r"""
import json, sys, time
import gpt4all_loader
model, prompt, n_gen, threads, n_ctx, n_keep = sys.argv[1:]
t0 = time.perf_counter()
m = gpt4all_loader.load(model, backend="gguf-2026-10", device="cpu", n_ctx=int(n_ctx), n_threads=int(threads))
load_s = time.perf_counter() - t0
text = open(prompt, encoding="utf-8").read()
n_prompt = len(m.tokenize(text))
toks, shifts, first, last, size = [], 0, None, None, 0
for t in m.generate_tokens(text, max_tokens=int(n_gen), n_keep=int(n_keep)):
    now = time.perf_counter()
    first = first or now
    last = now
    toks.append(t)
    n = len(m.cached_tokens)
    shifts += n < size
    size = n
print(json.dumps({"ok": True, "load_s": load_s, "n_prompt": n_prompt, "n_gen": len(toks), "shifts": shifts,
                  "gen_s": (last - first) if toks else 0.0, "tokens": toks}))
"""


def run(cmd: list[str]) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"ok": False, "error": (p.stderr or p.stdout).strip()[-500:]}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-ctx", type=int, default=256)  # the 2026 engine rounds n_ctx up to 256
    ap.add_argument("--n-gen", type=int, default=1024)
    ap.add_argument("--n-keep", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from bench_generate import compile_c_loop

    from gpt4all_loader.testing.realfiles import smollm2_path

    model = smollm2_path()
    exe = compile_c_loop(HERE / "shift_loop.cpp", "bench_shift_loop")
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Path(tmp) / "prompt.txt"
        prompt.write_text(PROMPT, encoding="utf-8")
        args = [str(model), str(prompt), str(a.n_gen), str(a.threads), str(a.n_ctx), str(a.n_keep)]
        runs: dict[str, list[dict]] = {"ours": [], "C loop": []}
        for _ in range(a.rounds):
            runs["ours"].append(run([sys.executable, "-c", OURS, *args]))
            runs["C loop"].append(run([str(exe), *args]))
    failed = {k: r["error"] for k, rs in runs.items() for r in rs if not r.get("ok")}
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    rows = {}
    for name, rs in runs.items():
        tps = [(r["n_gen"] - 1) / r["gen_s"] for r in rs if r["gen_s"] > 0]
        rows[name] = {"tok_s": statistics.median(tps), "all_tok_s": tps, "n_gen": rs[0]["n_gen"],
                      "shifts": rs[0]["shifts"], "n_prompt": rs[0]["n_prompt"], "tokens": rs[0]["tokens"]}
    ours, peer = rows["ours"]["tokens"], rows["C loop"]["tokens"]
    same = next((i for i, (x, y) in enumerate(zip(ours, peer)) if x != y), min(len(ours), len(peer)))
    if a.json:
        print(json.dumps({"settings": vars(a), "rows": rows, "same_prefix": same}, indent=2))
        return 0
    print(f"SmolLM2-135M Q4_1, gguf-2026-10, n_ctx={a.n_ctx}, n_keep={a.n_keep}, {a.n_gen} tokens greedy, "
          f"threads={a.threads}, median of {a.rounds} fresh processes each (alternating)")
    print(f"{'engine':<8} {'prompt':>6} {'generated':>9} {'shifts':>6} {'gen tok/s':>9}")
    for name, r in rows.items():
        print(f"{name:<8} {r['n_prompt']:>6} {r['n_gen']:>9} {r['shifts']:>6} {r['tok_s']:>9.1f}")
    print(f"ours / C loop: {rows['ours']['tok_s'] / rows['C loop']['tok_s']:.2f}x generation speed; token ids "
          f"equal for {same} of {len(peer)} tokens" + (" (all)" if same == len(peer) == len(ours) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
