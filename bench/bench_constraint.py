"""The cost of constrained output, per vocabulary: llguidance (ours) next to outlines-core.

    pip install outlines-core   # only for the comparison; not a dependency of the project
    python bench/bench_constraint.py [--runs 3] [--json]

For a 32k LLaMA SentencePiece vocabulary (llama.cpp's ``ggml-vocab-llama-spm.gguf``: LLaMA's own tokenizer),
SmolLM2-135M's 49k BPE vocabulary (the demo's model) and Qwen2's 152k vocabulary (``ggml-vocab-qwen2.gguf``),
each engine is timed on the same token table (our :class:`~gpt4all_loader.constrain.Vocabulary`):

* vocab: building the engine's tokenizer/vocabulary object from the table (once per model);
* compile: a typical schema (6 properties: strings, an integer, an enum, an array of strings, a nested
  object), median of ``--runs``;
* mask: filling the allowed-token bitmask before every token of a valid document (mean and p99 over the
  walk), then advancing past the token; ``--runs`` walks.

xgrammar is not measured: its wheel requires torch, transformers and triton, and ``xgrammar/matcher.py``
imports torch at import time, so it cannot run in this project's dependency set.  The decode time of one
SmolLM2 token on the same machine (1 thread) is printed as the yardstick for the mask cost.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                                      "zip": {"type": "string"}},
                    "required": ["street", "city", "zip"]},
    },
    "required": ["name", "age", "email", "role", "tags", "address"],
}
DOC = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "role": "editor",
       "tags": ["math", "engines", "poetry of science"],
       "address": {"street": "12 St James's Square", "city": "London", "zip": "SW1Y 4JH"}}
#: the same bounded whitespace for both engines (gpt4all_loader.constrain.JSON_OPTIONS)
WHITESPACE = r"(?: |\n[ \t]{0,20})?"


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = f()
    return time.perf_counter() - t0, r


def bench_llguidance(vocab: Any, ids: list[int], runs: int) -> dict[str, Any]:
    from gpt4all_loader import constrain as C

    vocab._tokenizer = None  # build it here, timed
    t_vocab, _ = timed(lambda: vocab.tokenizer)
    compiles = [timed(lambda: C.compile(vocab, json_schema=SCHEMA))[0] for _ in range(runs)]
    grammar = C.compile(vocab, json_schema=SCHEMA)
    masks: list[float] = []
    buf = bytearray(vocab.mask_bytes)
    for _ in range(runs):
        m = grammar.matcher()
        for t in ids:
            t0 = time.perf_counter()
            m.fill_mask(buf)
            masks.append(time.perf_counter() - t0)
            assert C.allows(buf, t)
            m.consume(t)
        assert m.is_accepting()
    return {"engine": "llguidance", "vocab_s": t_vocab, "compile_s": statistics.median(compiles),
            "mask_mean_s": statistics.fmean(masks), "mask_p99_s": p99(masks), "steps": len(ids)}


def bench_outlines(vocab: Any, ids: list[int], runs: int) -> dict[str, Any]:
    import ctypes

    import outlines_core as oc
    from outlines_core.json_schema import build_regex_from_schema

    def build() -> Any:
        table: dict[bytes, list[int]] = {}
        for t, p in enumerate(vocab.pieces):
            if p and t not in vocab.special:
                table.setdefault(p, []).append(t)
        return oc.Vocabulary(vocab.eog[0], table)

    t_vocab, ovocab = timed(build)

    def compile_() -> Any:
        return oc.Index(build_regex_from_schema(json.dumps(SCHEMA), whitespace_pattern=WHITESPACE), ovocab)

    compiles = [timed(compile_)[0] for _ in range(runs)]
    index = compile_()
    words = vocab.mask_words
    buf = (ctypes.c_uint32 * words)()
    addr = ctypes.addressof(buf)
    masks: list[float] = []
    for _ in range(runs):
        guide = oc.Guide(index)
        for t in ids:
            t0 = time.perf_counter()
            guide.write_mask_into(addr, words, 4)
            masks.append(time.perf_counter() - t0)
            assert buf[t >> 5] >> (t & 31) & 1, t
            guide.advance(t)
        assert guide.is_finished() or vocab.eog[0] in guide.get_tokens()
    return {"engine": "outlines-core", "vocab_s": t_vocab, "compile_s": statistics.median(compiles),
            "mask_mean_s": statistics.fmean(masks), "mask_p99_s": p99(masks), "steps": len(ids)}


def decode_ms(path: Any) -> float:
    """Median time of evaluating one token on SmolLM2 (1 thread): what one generated token costs anyway."""
    import gpt4all_loader as g

    with g.load(path, n_ctx=256, n_threads=1) as m:
        m.evaluate(m.tokenize("The capital of France is"))
        times = []
        for t in m.tokenize(" Paris, and the capital of Italy is Rome", add_bos=False)[:10]:
            times.append(timed(lambda: m.evaluate([t]))[0])
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import gpt4all_loader as g
    from gpt4all_loader import constrain as C
    from gpt4all_loader.testing import realfiles

    files = [("32k LLaMA SPM", lambda: realfiles.vocab_file("gguf-llama-spm")),
             ("49k SmolLM2", realfiles.smollm2_path),
             ("152k Qwen2", lambda: realfiles.vocab_file("gguf-qwen2"))]
    text = json.dumps(DOC, ensure_ascii=False)
    rows: list[dict[str, Any]] = []
    for label, get in files:
        path = get()
        with g.load(path, vocab_only=True) as model:
            t_model, vocab = timed(lambda: C.Vocabulary.from_model(model))
        ids = vocab.tokenize(text.encode())
        for fn in (bench_llguidance, bench_outlines):
            row = fn(vocab, ids, args.runs)
            row.update(vocab_label=label, n_vocab=vocab.n_vocab, read_s=t_model)
            rows.append(row)
            print(f"{label:14} {row['engine']:13} done", file=sys.stderr)
    yard = decode_ms(realfiles.smollm2_path())
    if args.json:
        print(json.dumps({"rows": rows, "decode_ms": yard}, indent=2))
        return 0
    print(f"schema: 6 properties (4 strings, integer, enum, array of strings, nested object of 3); "
          f"document: {len(text)} bytes; median of {args.runs} compiles, masks over {args.runs} walks\n")
    print("| vocabulary | engine | read vocab from model ms | build tokenizer ms | compile ms | "
          "mask mean us | mask p99 us | tokens walked |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['vocab_label']} ({r['n_vocab']}) | {r['engine']} | {r['read_s'] * 1e3:.0f} | "
              f"{r['vocab_s'] * 1e3:.0f} | {r['compile_s'] * 1e3:.1f} | {r['mask_mean_s'] * 1e6:.0f} | "
              f"{r['mask_p99_s'] * 1e6:.0f} | {r['steps']} |")
    print("| any | xgrammar 0.2.9 | not measured: requires torch, transformers, triton (matcher.py imports "
          "torch) | | | | | |\n")
    for i in range(0, len(rows), 2):
        ours, peer = rows[i], rows[i + 1]
        print(f"{ours['vocab_label']}: outlines-core / llguidance: build {peer['vocab_s'] / ours['vocab_s']:.2f}x, "
              f"compile {peer['compile_s'] / ours['compile_s']:.2f}x, mask mean "
              f"{peer['mask_mean_s'] / ours['mask_mean_s']:.2f}x, p99 {peer['mask_p99_s'] / ours['mask_p99_s']:.2f}x; "
              f"llguidance mask mean = {ours['mask_mean_s'] * 1e3 / yard * 100:.2f} % of a SmolLM2 decode")
    print(f"\nSmolLM2-135M Q4_1 decode of one token (1 thread, median of 10): {yard:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
