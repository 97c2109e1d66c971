"""How long a probe takes, next to gguf-py's GGUFReader, and how it scales with file size.

    pip install gguf            # only for the comparison; not a dependency of the project
    python bench/bench_probe.py [--runs 7] [--json] [FILE.gguf ...]

Part 1 times ``gpt4all_loader.probe(path)`` (header, key/values, tensor directory, catalog verdict,
memory estimate) and ``gguf.GGUFReader(path)`` on the same GGUF files: the median of ``--runs`` runs
each, and the ratio.  Files: those named on the command line, the real SmolLM2 file when
``gpt4all_loader.testing.realfiles`` can provide it, and generated ones.

Part 2 times the probe on generated GGUF files of 1 MB, 100 MB and 4 GB (sparse: the tensor data is a
hole, so the disk holds only the header) to show that the cost depends on the header, not the size.
"""
from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def write_sparse_gguf(path: Path, total_bytes: int, *, n_layer: int = 24, n_embd: int = 128) -> Path:
    """A GGUF v3 llama file of about ``total_bytes``: real header, F32 tensors, tensor data left sparse."""
    n_vocab = 1000
    kv = [("general.architecture", 8, _s("llama")),
          ("general.name", 8, _s("bench")),
          ("llama.block_count", 4, struct.pack("<I", n_layer)),
          ("llama.context_length", 4, struct.pack("<I", 4096)),
          ("llama.embedding_length", 4, struct.pack("<I", n_embd)),
          ("llama.feed_forward_length", 4, struct.pack("<I", 4 * n_embd)),
          ("llama.attention.head_count", 4, struct.pack("<I", 16)),
          ("tokenizer.ggml.model", 8, _s("llama"))]
    # Per-layer tensors share what is left after the embedding; each is n_embd x rows F32.
    names = [f"blk.{i}.{t}.weight" for i in range(n_layer)
             for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    emb_bytes = n_vocab * n_embd * 4
    budget = max(total_bytes - emb_bytes, len(names) * n_embd * 4)
    rows = max(1, budget // (len(names) * n_embd * 4))
    tensors = [("token_embd.weight", (n_embd, n_vocab))] + [(n, (n_embd, rows)) for n in names]
    h = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, t, v in kv:
        h += _s(k) + struct.pack("<I", t) + v
    off = 0
    for name, (a, b) in tensors:
        h += _s(name) + struct.pack("<I", 2) + struct.pack("<QQ", a, b) + struct.pack("<IQ", 0, off)
        off += a * b * 4
        off += (-off) % 32
    h += b"\0" * ((-len(h)) % 32)
    with open(path, "wb") as f:
        f.write(h)
        f.truncate(len(h) + off)  # the data is a hole: nothing written, nothing read
    return path


def timeit(fn, runs: int) -> float:
    fn()  # warm the page cache and imports
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: real vocab-only GGUF files (realfiles.VOCAB_FILES kinds): GGUF v1 and v3, SentencePiece and BPE
#: tokenizers from 32k to 262k entries -- the part of a header that costs a reader the most
VOCAB_KINDS = ("gguf-v1-llama", "gguf-llama-spm", "gguf-llama-bpe", "gguf-qwen2", "gguf-command-r", "gguf-gemma-4")


def real_files() -> list[Path]:
    out: list[Path] = []
    try:
        from gpt4all_loader.testing import realfiles  # type: ignore[attr-defined]
    except ImportError:
        return out
    for getter in ("smollm2_path",):
        fn = getattr(realfiles, getter, None)
        if fn is None:
            continue
        try:
            p = fn()
            if p and Path(p).is_file():
                out.append(Path(p))
        except Exception as e:  # noqa: BLE001 - the bench goes on without it
            print(f"# {getter}: {e}", file=sys.stderr)
    vocab = getattr(realfiles, "vocab_file", None)
    if vocab is not None:
        for kind in VOCAB_KINDS:
            try:
                p = vocab(kind)
                if p and Path(p).is_file() and str(p).endswith(".gguf"):
                    out.append(Path(p))
            except Exception:  # noqa: BLE001
                pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-4g", action="store_true", help="skip the 4 GB sparse file (needs a filesystem with holes)")
    args = ap.parse_args(argv)

    from gpt4all_loader import probe

    try:
        from gguf import GGUFReader  # type: ignore[import-not-found]
    except ImportError:
        GGUFReader = None
        print("# gguf-py not installed (pip install gguf): comparison column left empty", file=sys.stderr)

    results: dict[str, list[dict]] = {"compare": [], "scaling": []}
    with tempfile.TemporaryDirectory(prefix="g4a-bench-") as tmp:
        tmpd = Path(tmp)
        gen = {"1MB": 1 << 20, "100MB": 100 << 20}
        if not args.no_4g:
            gen["4GB"] = 4 << 30
        made = {label: write_sparse_gguf(tmpd / f"bench-{label}.gguf", size) for label, size in gen.items()}

        files = list(args.files) + real_files() + list(made.values())
        for p in files:
            row = {"file": str(p), "size": p.stat().st_size}
            rep = probe(p)
            if rep.error:
                row["error"] = rep.error
            row["probe_s"] = timeit(lambda: probe(p), args.runs)
            if GGUFReader is not None:
                try:
                    row["gguf_py_s"] = timeit(lambda: GGUFReader(str(p)), args.runs)
                    row["ratio"] = row["gguf_py_s"] / row["probe_s"] if row["probe_s"] else None
                except Exception as e:  # noqa: BLE001
                    row["gguf_py_error"] = f"{type(e).__name__}: {e}"
            results["compare"].append(row)

        for label, p in made.items():
            row = next(r for r in results["compare"] if r["file"] == str(p))
            results["scaling"].append({"label": label, "size": p.stat().st_size,
                                       "disk_bytes": p.stat().st_blocks * 512,
                                       "probe_s": row["probe_s"], "gguf_py_s": row.get("gguf_py_s")})

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"probe vs gguf-py GGUFReader (median of {args.runs} runs)")
    print(f"{'file':<48} {'size':>12} {'probe ms':>9} {'gguf-py ms':>11} {'gguf-py/probe':>14}")
    for r in results["compare"]:
        g = r.get("gguf_py_s")
        print(f"{Path(r['file']).name[:48]:<48} {r['size']:>12} {r['probe_s'] * 1e3:>9.2f} "
              f"{(g * 1e3 if g else float('nan')):>11.2f} {(r.get('ratio') or float('nan')):>14.2f}"
              + (f"  ({r['error']})" if r.get("error") else ""))
    print()
    print("probe time vs file size (sparse files, same header shape)")
    for r in results["scaling"]:
        g = r.get("gguf_py_s")
        gms = g * 1e3 if g else float("nan")
        print(f"  {r['label']:>6}: probe {r['probe_s'] * 1e3:8.2f} ms, gguf-py {gms:8.2f} ms"
              f"  (size {r['size']}, on disk {r['disk_bytes']})")
    ratios = [r["ratio"] for r in results["compare"] if r.get("ratio")]
    if ratios:
        print()
        print(f"gguf-py/probe over {len(ratios)} files: min {min(ratios):.1f}x, "
              f"median {statistics.median(ratios):.1f}x, "
              f"max {max(ratios):.1f}x (target >= 20x: {'met' if min(ratios) >= 20 else 'missed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
