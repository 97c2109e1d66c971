"""Long fuzz run of the native step: header numbers of tiny models (LLaMA in every container, GPT-J,
MPT, and GPT4All's Falcon, Replit, StarCoder and BERT) set to hostile values; every file that the
catalog calls loadable is loaded and evaluated on each built backend that accepts it, in a child
process with a time and address-space limit.  A signal
or a time-out is a finding (a check missing from ``validate.py``); a library error or a load is fine.

    python tools/fuzz_native.py 200 [--seed 1] [--timeout 60] [--only falcon,replit,starcoder,bert]

Prints the count of each outcome; files that crashed are kept (``fuzz-native-SEED-I.bin``) for replay
with ``python -m gpt4all_loader.smoke FILE --backend NAME`` (the child runner of ``engines/child.py``).
"""
from __future__ import annotations

import argparse
import collections
import random
import struct
import sys
import tempfile
from pathlib import Path

from gpt4all_loader.engines import child
from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.engines.variants import built_variants
from gpt4all_loader.errors import FormatError
from gpt4all_loader.formats import writer as w
from gpt4all_loader.formats import zoo
from gpt4all_loader.formats.sniff import read_facts

INTERESTING = [0, 1, 2, 3, 7, 8, 13, 31, 32, 33, 64, 255, 1000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
ADDRESS_SPACE = 8 << 30


def bases(d: Path) -> dict[str, bytes]:
    out = {}
    for fmt, v in [("ggml", None), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3), ("gguf", 3)]:
        m = w.TinyLlama(seed=3, n_layer=32 if fmt != "gguf" else 2)
        out[f"{fmt}{v}"] = w.write_llama(d / f"{fmt}{v}", m, fmt, v, ftype="f16").read_bytes()
    out["gptj"] = w.write_gptj(d / "gptj", w.TinyGPTJ(seed=3), "f16").read_bytes()
    out["mpt"] = w.write_mpt(d / "mpt", w.TinyMPT(seed=3), "ggmm", "f16").read_bytes()
    for model in (w.TinyFalcon(seed=3), w.TinyReplit(seed=3), w.TinyStarCoder(seed=3), w.TinyBert(seed=3)):
        out[model.arch.name] = w.write_zoo(d / model.arch.name, model, "f16").read_bytes()
    return out


def hot_spots(data: bytes, facts) -> list[int]:
    """Offsets of the numbers that matter most: the legacy hparams and the GGUF scalar key/values
    (a tensor's type or shape changes its size, which the reader already refuses)."""
    if facts.format != "gguf":
        base = 8 if facts.format in ("ggmf", "ggjt") else 4
        arch = zoo.ARCHITECTURES.get(facts.architecture or "")
        spots = [base + 4 * k for k in range(len(arch.header) if arch else 7)]
    else:
        spots = []
        for key in facts.kv or {}:
            k = key.encode()
            i = data.find(struct.pack("<Q", len(k)) + k)
            vtype = struct.unpack_from("<I", data, i + 8 + len(k))[0] if i >= 0 else None
            if vtype in (4, 5, 6):
                spots.append(i + 8 + len(k) + 4)
    return spots


def mutate(rng: random.Random, data: bytes, spots: list[int], header_end: int) -> bytes:
    """One to three 4-byte header numbers (mostly hot spots) set to an interesting or random value."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2])):
        i = rng.choice(spots) if rng.random() < 0.9 else rng.randrange(4, max(5, header_end - 4)) & ~3
        val = rng.choice(INTERESTING) if rng.random() < 0.8 else rng.getrandbits(32)
        struct.pack_into("<I", b, i, val)
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--only", default=None, help="comma-separated base files to mutate (default: all)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    built = {b for b, vs in built_variants().items() if "cpu" in vs}
    counts: collections.Counter[str] = collections.Counter()
    crashes = 0
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        base = bases(d)
        ends, spots = {}, {}
        for name in base:
            f = read_facts(d / name, with_kv=True)
            ends[name] = f.data_offset
            spots[name] = hot_spots(base[name], f)
        names = sorted(n for n in base if args.only is None or n in args.only.split(","))
        target = d / "input.bin"
        for i in range(args.n):
            name = names[i % len(names)]
            data = mutate(rng, base[name], spots[name], ends[name])
            target.write_bytes(data)
            try:
                facts = read_facts(target)
            except (FormatError, OSError):
                counts["reader refused"] += 1
                continue
            ok = [v.backend for v in verdicts(facts) if v.loadable and v.backend in built]
            if not ok:
                counts["catalog refused"] += 1
                continue
            for backend in ok:
                cp = child.run("smoke", [str(target), "--backend", backend, "--device", "cpu", "--ctx-size", "64"],
                               timeout=args.timeout, address_space=ADDRESS_SPACE)
                if not cp.timed_out and not cp.crashed:
                    counts[f"{backend}: {'loaded' if cp.returncode == 0 else 'library error'}"] += 1
                    continue
                crashes += 1
                how = "time-out" if cp.timed_out else cp.ending
                counts[f"{backend}: {how}"] += 1
                keep = Path(f"fuzz-native-{args.seed}-{i}.bin")
                keep.write_bytes(data)
                tail = cp.last_error_line()
                print(f"input {i} (from {name}) on {backend}: {how}, kept as {keep}; {tail}", file=sys.stderr)
    print(f"{args.n} inputs (seed {args.seed}); backends built: {', '.join(sorted(built))}")
    for k, v in sorted(counts.items()):
        print(f"  {k:40s} {v}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
