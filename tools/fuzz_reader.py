"""Long fuzz run of the file reader: random truncations and byte mutations of every container the
writer produces.  Each input must give a FileFacts or a FormatError, quickly.

    python tools/fuzz_reader.py 20000 [--seed 1]

Prints the count of each outcome and any other exception (with the input kept for replay).
"""
from __future__ import annotations

import argparse
import collections
import random
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.errors import FormatError
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import (
    TinyBert,
    TinyFalcon,
    TinyGPTJ,
    TinyLlama,
    TinyMPT,
    TinyReplit,
    TinyStarCoder,
    write_gguf,
    write_gptj,
    write_llama,
    write_mpt,
    write_zoo,
)

INTERESTING = [0, 1, 2, 3, 4, 31, 32, 255, 256, 1000, 2002, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE]


def bases(d: Path) -> dict[str, bytes]:
    m = TinyLlama(seed=5, n_layer=2, n_embd=32, n_head=4)
    out: dict[str, bytes] = {}
    for fmt, v in [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3), ("gguf", 1),
                   ("gguf", 2), ("gguf", 3)]:
        out[f"{fmt}{v}"] = write_llama(d / f"{fmt}{v}", m, fmt, v, ftype="f16").read_bytes()
    out["gguf3-be"] = write_llama(d / "be", m, "gguf", 3, endian="big").read_bytes()
    out["gguf3-vocab"] = write_llama(d / "gv", m, "gguf", 3, vocab_only=True, chat_template="{{x}}").read_bytes()
    out["gguf-odd"] = write_gguf(d / "odd", [("general.architecture", 8, "llama"), ("a.b", (9, 4), [1, 2, 3]),
                                             ("s", (9, 8), ["x", "yz"])],
                                 [("blk.0.ffn_up.1.weight", 2, [32, 2]), ("t", 12, [256])]).read_bytes()
    g = TinyGPTJ(seed=5, n_vocab=50300, n_embd=4, n_head=1, n_layer=1, n_rot=4)
    out["gptj"] = write_gptj(d / "gptj", g, "f16").read_bytes()
    mp = TinyMPT(seed=5, n_embd=8, n_layer=1)
    out["mpt-ggmm"] = write_mpt(d / "mm", mp, "ggmm", "f16").read_bytes()
    out["mpt-ggml"] = write_mpt(d / "mg", mp, "ggml", "f32").read_bytes()
    # GPT4All's 2023 zoo, with short vocabularies so that mutations reach the tensor tables
    zoo_models = {"falcon": TinyFalcon(seed=5, n_vocab=600, n_layer=1),
                  "replit": TinyReplit(seed=5, n_vocab=600, n_layer=1),
                  "starcoder": TinyStarCoder(seed=5, n_vocab=600, n_ctx=8, n_layer=1),
                  "bert": TinyBert(seed=5, n_vocab=256, n_max_tokens=40, n_embd=8, n_intermediate=16, n_head=2,
                                   n_layer=1)}
    for name, zm in zoo_models.items():
        out[name] = write_zoo(d / name, zm, "f16").read_bytes()
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    # most structure lives in the first few KB; sometimes reach anywhere
    span = len(b) if rng.random() < 0.2 else min(len(b), 4096)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        op = rng.random()
        if op < 0.25 and b:
            b = b[: rng.randrange(len(b) + 1) if rng.random() < 0.5 else rng.randrange(min(len(b), span) + 1)]
        elif op < 0.55 and len(b) >= 4:
            i = rng.randrange(max(1, min(len(b), span) - 3))
            b[i:i + 4] = struct.pack("<I", rng.choice(INTERESTING) if rng.random() < 0.7 else rng.getrandbits(32))
        elif op < 0.6 and len(b) >= 8:
            i = rng.randrange(max(1, min(len(b), span) - 7))
            b[i:i + 8] = struct.pack("<Q", rng.choice([0, 1 << 32, 1 << 62, (1 << 64) - 1, rng.getrandbits(64)]))
        elif op < 0.9 and b:
            i = rng.randrange(min(len(b), span))
            b[i] = rng.randrange(256)
        elif b:
            i = rng.randrange(min(len(b), span))
            n = rng.randrange(1, 64)
            if rng.random() < 0.5:
                del b[i:i + n]
            else:
                b[i:i] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="base files to mutate (default: all), e.g. falcon replit starcoder bert")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    counts: collections.Counter[str] = collections.Counter()
    bad = 0
    slowest = (0.0, "")
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        base = bases(d)
        names = sorted(n for n in base if not args.only or n in args.only)
        target = d / "input.bin"
        t0 = time.perf_counter()
        for i in range(args.n):
            name = names[i % len(names)]
            data = mutate(rng, base[name])
            target.write_bytes(data)
            t = time.perf_counter()
            try:
                f = read_facts(target)
                counts[f"facts:{f.kind}{'/truncated' if f.truncated else ''}"] += 1
                # validation and verdicts must hold up on whatever the reader returned
                if any(v.loadable for v in verdicts(f)):
                    counts["loadable"] += 1
            except FormatError:
                counts["FormatError"] += 1
            except Exception:  # noqa: BLE001 - the point is to find these
                bad += 1
                keep = Path(f"fuzz-failure-{args.seed}-{i}.bin")
                keep.write_bytes(data)
                print(f"input {i} (from {name}, kept as {keep}):", file=sys.stderr)
                traceback.print_exc()
            dt = time.perf_counter() - t
            if dt > slowest[0]:
                slowest = (dt, name)
        total = time.perf_counter() - t0
    print(f"{args.n} inputs from {len(names)} base files in {total:.1f} s (seed {args.seed})")
    for k, v in sorted(counts.items()):
        print(f"  {k:32s} {v}")
    print(f"  other exceptions                 {bad}")
    print(f"  slowest single read: {slowest[0] * 1000:.1f} ms (from {slowest[1]})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
