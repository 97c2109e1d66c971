"""What structured output costs: per-token time with a JSON-schema constraint against the same model without.

    python bench/bench_structured.py [--rounds 5] [--tokens 96] [--threads 1] [--json]

The constraint is applied in the C sampler as a token mask computed by llguidance (``gpt4all_loader.constrain``)
before every token.  Files: SmolLM2-135M-Instruct Q4_1 (2026-10 engine, 49k vocabulary), a 2023 ggjt v3 LLaMA
(2023-08 engine, written by ``formats.writer``, 32 layers of width 256, the SentencePiece test vocabulary) and a
GPT-J file of our 2023 code (width 256, 50k vocabulary).  Each round generates ``--tokens`` tokens
greedily, unconstrained and then constrained (order flipped every round), and times the decode steps
(``GenerationStats.completion_s`` over the tokens after the first, so the prompt is left out).  The
schema asks for a list of 40 to 64 short strings, so the constrained reply runs to ``--tokens`` like the
free one.  Printed: median ms per token both ways and the ratio constrained / free (target <= 1.10),
the compile time of the schema (target < 50 ms) and the one-time cost of reading the vocabulary into
the constraint engine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_busy import _cached, smollm2  # noqa: E402

SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "minItems": 40, "maxItems": 64,
                                                     "items": {"type": "string", "minLength": 3, "maxLength": 12}}},
          "required": ["items"]}
TYPICAL = {"type": "object", "required": ["name", "age", "email", "tags", "address"],
           "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                          "email": {"type": "string", "format": "email"},
                          "tags": {"type": "array", "items": {"type": "string"}},
                          "role": {"enum": ["admin", "user", "guest"]},
                          "address": {"type": "object", "properties": {"city": {"type": "string"},
                                                                       "zip": {"type": "string"}}}}}


def files() -> dict[str, Path]:
    from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, write_gptj, write_llama

    llama = TinyLlama(seed=5, n_embd=256, n_head=4, n_layer=32, n_ctx=2048)
    gptj = TinyGPTJ(seed=5, n_embd=256, n_ctx=2048)
    return {"SmolLM2 Q4_1 (GGUF, 2026-10)": smollm2(),
            "LLaMA ggjt v3 F16 (2023-08)": _cached("structured-llama-e256-l32-ggjt3-f16.bin",
                                                   lambda p: write_llama(p, llama, "ggjt", 3, ftype="f16")),
            "GPT-J F16 (our 2023 code)": _cached("structured-gptj-e256-f16.bin",
                                                 lambda p: write_gptj(p, gptj, "f16"))}


def per_token_ms(m: Any, prompt: str, tokens: int, **kw: Any) -> tuple[float, int]:
    m.generate(prompt, max_tokens=tokens, **kw)
    st = m.last_generation
    n = st.completion_tokens
    return (st.completion_s / (n - 1) * 1000 if n > 1 else float("nan")), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import gpt4all_loader as g
    from gpt4all_loader.constrain import Vocabulary

    rows = []
    for label, path in files().items():
        with g.load(path, n_threads=args.threads, n_ctx=1024) as m:
            t = time.perf_counter()
            Vocabulary.from_model(m)
            vocab_s = time.perf_counter() - t
            compile_ms = []
            for i in range(args.rounds):   # a new schema each time (compiled grammars are not cached)
                schema = dict(TYPICAL, title=f"person{i}")
                t = time.perf_counter()
                m.constraint(json_schema=schema)
                compile_ms.append((time.perf_counter() - t) * 1000)
            grammar = m.constraint(json_schema=SCHEMA)
            free, held, n_free, n_held = [], [], [], []
            prompt = "Write a list of fruits as JSON:"
            for r in range(args.rounds):
                for constrained in ((False, True) if r % 2 == 0 else (True, False)):
                    if constrained:
                        ms, n = per_token_ms(m, prompt, args.tokens, grammar=grammar)
                        held.append(ms)
                        n_held.append(n)
                    else:
                        ms, n = per_token_ms(m, prompt, args.tokens, logit_bias={t: -1e9 for t in m.eog_tokens()})
                        free.append(ms)
                        n_free.append(n)
            rows.append({"file": label, "n_vocab": m.n_vocab, "vocab_s": vocab_s,
                         "compile_ms": statistics.median(compile_ms), "free_ms": statistics.median(free),
                         "constrained_ms": statistics.median(held), "tokens_free": statistics.median(n_free),
                         "tokens_constrained": statistics.median(n_held),
                         "ratio": statistics.median(held) / statistics.median(free)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'file':30} {'vocab':>7} {'read vocab s':>12} {'compile ms':>10} {'free ms/tok':>11} "
          f"{'JSON ms/tok':>11} {'tokens':>9} {'JSON/free':>9}")
    for r in rows:
        print(f"{r['file']:30} {r['n_vocab']:>7} {r['vocab_s']:>12.2f} {r['compile_ms']:>10.1f} {r['free_ms']:>11.2f} "
              f"{r['constrained_ms']:>11.2f} {r['tokens_free']:>4.0f}/{r['tokens_constrained']:<4.0f} "
              f"{r['ratio']:>8.2f}x")
    print("targets: JSON/free <= 1.10x, compile < 50 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
