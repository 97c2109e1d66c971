"""A ten-turn chat on SmolLM2: the cost of each turn with and without reusing the evaluated prefix,
next to llama-cpp-python's create_chat_completion on the same file.

    python bench/bench_chat.py [--threads 2] [--max-tokens 32] [--rounds 2] [--lcp-venv /tmp/bench-venv]

Each engine runs in a fresh child process (``--child NAME``), one after the other, ``--rounds`` times
interleaved; the report gives the median total time of the ten turns, the prompt tokens each turn
evaluated (ours: ``Model.last_evaluated``), and whether the replies equal ours.  Engines:

* ``ours-session``: ``model.chat_session()``; every turn renders the whole conversation with the
  file's template and evaluates only what follows the prefix the cache holds;
* ``ours-fresh``: the same conversation through the stateless ``model.chat()`` after ``reset()``
  before every turn (what every turn cost before prefix reuse: its whole history);
* ``llama-cpp-python``: ``Llama.create_chat_completion`` of the pinned 0.3.36 sdist built by
  ``bench/bench_generate.py --setup``, with ``flash_attn=True`` (our engine's default on the CPU).

Greedy decoding, the same n_ctx, threads and ``--max-tokens`` everywhere.  Child mode imports only
the standard library and its engine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TURNS = ["Hi! Who are you?", "What is the capital of France?", "And of Italy?", "Name a river in that country.",
         "How long is it?", "Write one sentence about it.", "Now translate that sentence into French.",
         "What is 12 times 12?", "And that number plus one?", "Thank you. Say goodbye."]


def child(name: str, model: str, threads: int, max_tokens: int, n_ctx: int) -> dict:
    times, evaluated, replies = [], [], []
    if name.startswith("ours"):
        import gpt4all_loader

        t0 = time.perf_counter()
        m = gpt4all_loader.load(model, n_ctx=n_ctx, n_threads=threads)
        load_s = time.perf_counter() - t0
        session = m.chat_session()
        for text in TURNS:
            t = time.perf_counter()
            if name == "ours-session":
                reply = session.send(text, max_tokens=max_tokens, temperature=0)
            else:
                session.messages.append({"role": "user", "content": text})
                m.reset()
                reply = m.chat(session.messages, max_tokens=max_tokens, temperature=0)
                session.messages.append({"role": "assistant", "content": reply})
            times.append(time.perf_counter() - t)
            evaluated.append(m.last_evaluated)
            replies.append(reply)
    else:
        from llama_cpp import Llama

        t0 = time.perf_counter()
        llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, flash_attn=True,
                    verbose=False)
        load_s = time.perf_counter() - t0
        messages: list[dict[str, str]] = []
        for text in TURNS:
            messages.append({"role": "user", "content": text})
            t = time.perf_counter()
            out = llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0)
            times.append(time.perf_counter() - t)
            reply = out["choices"][0]["message"]["content"] or ""
            messages.append({"role": "assistant", "content": reply})
            evaluated.append(None)
            replies.append(reply)
    return {"engine": name, "load_s": load_s, "turn_s": times, "total_s": sum(times), "evaluated": evaluated,
            "replies": replies}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="a GGUF file with a chat template (default: SmolLM2-135M)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lcp-venv", type=Path, default=Path(os.environ.get("BENCH_LCP_VENV", "/tmp/bench-venv")))
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.model, a.threads, a.max_tokens, a.n_ctx)))
        return 0
    if a.model is None:
        from gpt4all_loader.testing import realfiles
        a.model = str(realfiles.smollm2_path())
    peer = a.lcp_venv / "bin" / "python"
    engines = [("ours-session", sys.executable), ("ours-fresh", sys.executable)]
    if peer.exists():
        engines.append(("llama-cpp-python", str(peer)))
    else:
        print(f"(llama-cpp-python skipped: no venv at {a.lcp_venv}; run bench/bench_generate.py --setup)")
    runs: dict[str, list[dict]] = {name: [] for name, _ in engines}
    for _ in range(a.rounds):
        for name, python in engines:
            cmd = [python, __file__, "--child", name, "--model", a.model, "--threads", str(a.threads),
                   "--max-tokens", str(a.max_tokens), "--n-ctx", str(a.n_ctx)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    ours = runs["ours-session"][0]["replies"]
    base = statistics.median(r["total_s"] for r in runs["ours-session"])
    print(f"ten turns on {Path(a.model).name}, {a.threads} threads, {a.max_tokens} tokens a reply, greedy, "
          f"median of {a.rounds} rounds\n")
    print(f"{'engine':<18} {'total s':>8} {'ratio':>6}  {'same replies':<12} prompt tokens evaluated per turn")
    for name, rs in runs.items():
        total = statistics.median(r["total_s"] for r in rs)
        same = "yes" if rs[0]["replies"] == ours else "no"
        ev = rs[0]["evaluated"]
        ev_s = " ".join("-" if e is None else str(e) for e in ev)
        print(f"{name:<18} {total:>8.2f} {total / base:>6.2f}  {same:<12} {ev_s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
