"""gpt4all-convert: Hugging Face model folders to GGUF (GPT-J: GPT4All ggml), ggml-era LLaMA files upgraded to GGUF.

``gpt4all-convert SRC -o OUT.gguf [--outtype f16]``; the routes are described in
:mod:`gpt4all_loader.convert`.  OUT is probed at the end and the verdict printed.

Exit status: 0 success, 1 conversion failure (unreadable, malformed or unsupported SRC, missing
converter packages, write errors, or an OUT that does not load), 2 usage error (bad arguments, SRC
missing, SRC and OUT the same file, OUT exists without ``--force``, OUT's directory missing).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..convert import DEFAULT_CONTEXT, NEWEST, convert
from ..formats.legacy import LEGACY_GQA_RMS_EPS as RMS_EPS_GQA
from ..formats.legacy import LEGACY_RMS_EPS as RMS_EPS
from ..errors import ConvertError


def _verdict(out: Path) -> tuple[bool, str]:
    from ..probing import probe

    rep = probe(out, device="cpu")
    if rep.error:
        return False, f"{out}: probe failed: {rep.error}"
    if rep.loadable:
        where = f"{rep.backend}/{rep.variant}" if rep.variant else f"{rep.backend} (not built here)"
        return True, f"{out}: {rep.description}: LOADABLE by {where}"
    reasons = rep.reasons.get(NEWEST) or next((r for r in rep.reasons.values() if r), [])
    return False, f"{out}: {rep.description}: NOT LOADABLE" + (f" ({'; '.join(reasons)})" if reasons else "")


def _parser() -> argparse.ArgumentParser:
    from ..convert.hf import ROUTES

    p = argparse.ArgumentParser(
        prog="gpt4all-convert",
        description="Convert a Hugging Face model folder (GPT-J, LLaMA, MPT, ...), or upgrade a ggml/ggmf/ggjt "
                    "LLaMA file to GGUF for the newest pinned llama.cpp.  " + ROUTES,
        epilog="exit status: 0 converted, 1 conversion failed, 2 usage error")
    p.add_argument("src", metavar="SRC", help="Hugging Face model folder (config.json + weights), "
                                              "a ggml/ggmf/ggjt LLaMA file, or a GPT4All 2023 StarCoder, "
                                              "Falcon, BERT or Replit file")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="the file to write (.gguf: GGUF; .bin: GPT4All ggml for GPT-J/MPT folders)")
    p.add_argument("--format", choices=("gguf", "ggml"), default=None,
                   help="container of OUT for Hugging Face GPT-J/MPT folders (default: from OUT's suffix; "
                        "GPT-J: ggml, MPT: gguf)")
    p.add_argument("--outtype", default="f16", metavar="TYPE",
                   help="f32, f16 (default), bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k, ... (GGUF: made by the "
                        "newest backend's quantizer; GPT-J/MPT ggml: q4_0, q4_1, q5_0, q5_1, q8_0, made by the "
                        "ggml of August 2023)")
    p.add_argument("--ctx", type=int, default=DEFAULT_CONTEXT, metavar="N",
                   help=f"legacy files: training context length to record (they do not store it; "
                        f"default {DEFAULT_CONTEXT})")
    p.add_argument("--rms-norm-eps", type=float, default=None, metavar="EPS",
                   help=f"legacy files: RMS-norm epsilon (default {RMS_EPS}, {RMS_EPS_GQA} for GQA models)")
    p.add_argument("--rope-freq-base", type=float, default=None, metavar="BASE",
                   help="legacy files: RoPE frequency base to record (e.g. 1000000 for Code Llama)")
    p.add_argument("--tokenizer", default=None, metavar="TOKENIZER_JSON",
                   help="GPT4All Falcon/StarCoder files: the original model's tokenizer.json (the files carry "
                        "gpt4all's token list but no BPE merges; e.g. from tiiuae/falcon-7b, "
                        "bigcode/starcoderbase-3b)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="quantizer threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never SRC)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = "gpt4all-convert"
    try:
        convert(args.src, args.output, outtype=args.outtype, context_length=args.ctx,
                rms_norm_eps=args.rms_norm_eps, rope_freq_base=args.rope_freq_base, threads=args.threads,
                force=args.force, quiet=args.quiet, format=args.format,
                tokenizer=args.tokenizer)
    except ConvertError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug must still end with a message, not a traceback
        print(f"{prog}: error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    ok, line = _verdict(Path(args.output))
    print(line)
    if not ok:
        print(f"{prog}: error: the written file does not load on {NEWEST}; it was kept for inspection",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
