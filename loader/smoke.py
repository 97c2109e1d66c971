"""Load one file with one backend, evaluate one token (embed it, for a sentence-embedding model), print one
JSON line.

Run as a child process (:mod:`~gpt4all_loader.engines.child`) by ``gpt4all-probe --load`` and
``--estimate --exact`` so that a crash in native code ends only this process::

    python -m gpt4all_loader.smoke PATH --backend NAME [--device auto] [--ctx-size N] [--vocab-only] [--threads N]

Exit status 0 when the model loaded (and, unless ``--vocab-only``, evaluated a token), else 1.

``--batch`` reads one JSON object per line from stdin ({"path": ..., "backend": ...}) and runs each in
turn in this one process, printing {"start": path, "backend": ...} before and the result line after each:
many tiny files cost one process start, and a crash still names the file it happened on (the last start
line without a result).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from .reports import LoadCheck

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model


def run(path: str, backend: str | None, device: str, n_ctx: int | None, vocab_only: bool,
        n_threads: int | None = None) -> LoadCheck:
    out: LoadCheck = {"path": path, "backend": backend, "device": device, "ok": False,
                           "load_s": None, "eval_s": None, "n_prompt_tokens": None,
                           "token_evaluated": False, "text": None, "variant": None, "error": None}
    model: Model | None = None
    try:
        from .formats.sniff import read_facts
        from .model import EMBEDDING_ONLY, load

        # a sentence-embedding model (BERT) has no logits: it is loaded to embed
        embeds = read_facts(path).architecture in EMBEDDING_ONLY
        t0 = time.perf_counter()
        model = load(path, backend=backend, device=device, n_ctx=n_ctx or 256, n_threads=n_threads,
                     embeddings=embeds)
        out["load_s"] = round(time.perf_counter() - t0, 4)
        out["variant"] = model.info.variant
        out["backend"] = model.info.backend
        out["device"] = model.info.device
        toks = model.tokenize("Hello", add_bos=True)
        out["n_prompt_tokens"] = len(toks)
        if embeds and not vocab_only:
            t1 = time.perf_counter()
            vector = model.embed("Hello")
            out["eval_s"] = round(time.perf_counter() - t1, 4)
            out["text"] = f"{len(vector)} dims"
            out["token_evaluated"] = True
        elif not (vocab_only or model.info.vocab_only):  # a vocabulary file: tokenizing is all it does
            t1 = time.perf_counter()
            model.evaluate(toks or [model.token_bos()])
            logits = model.logits()
            out["eval_s"] = round(time.perf_counter() - t1, 4)
            best = max(range(len(logits)), key=logits.__getitem__)
            out["text"] = model.token_bytes(best).decode("utf-8", "replace")  # the piece, as generate() streams it
            out["token_evaluated"] = True
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001 - report everything as one JSON line
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if model is not None:
            try:
                model.close()
            except Exception:  # noqa: BLE001
                pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt4all_loader.smoke")
    ap.add_argument("path", nargs="?")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ctx-size", type=int, default=None)
    ap.add_argument("--vocab-only", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="n_threads of the load (default: the engine's)")
    ap.add_argument("--batch", action="store_true", help="read {path, backend} JSON lines from stdin")
    args = ap.parse_args(argv)
    if args.batch:
        for line in sys.stdin:
            job = json.loads(line)
            sys.stdout.write(json.dumps({"start": job["path"], "backend": job.get("backend")}) + "\n")
            sys.stdout.flush()
            sys.stdout.write(json.dumps(run(job["path"], job.get("backend"), args.device, args.ctx_size,
                                            args.vocab_only, args.threads)) + "\n")
            sys.stdout.flush()
        return 0
    if args.path is None:
        ap.error("PATH is required without --batch")
    res = run(args.path, args.backend, args.device, args.ctx_size, args.vocab_only, args.threads)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
