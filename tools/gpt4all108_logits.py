#!/usr/bin/env python3
"""Run gpt4all 1.0.8's libllmodel on one model file and print JSON: the prompt's tokens, the logits of
the last prompt token, and the greedy continuation; for BERT (Embed4All) files, also the embedding.

gpt4all 1.0.8 bundles its own ggml (and several copies of it, one per model library), so run this
script in a CHILD process, never inside a process that also loads our backends:

    python tools/gpt4all108_logits.py --lib-dir .../gpt4all/llmodel_DO_NOT_MODIFY/build \\
        --model tiny-gptj-f32.bin --prompt "Hello world" --n-predict 8

``--lib-dir`` is the ``llmodel_DO_NOT_MODIFY/build`` folder of the extracted gpt4all==1.0.8 wheel.
Output (one JSON object on stdout):

    {"ok": true, "prompt_tokens": [...], "logits": [... n_vocab floats ...], "greedy": [...],
     "n_vocab": N}

or ``{"ok": false, "error": "..."}`` with exit status 2 when the file does not load.  ``--embed`` adds
``"embedding": [... n_embd floats ...]`` (``llmodel_embedding``, what ``GPT4All.model.generate_embedding``
calls; BERT only) and asks for no generation.  ``--prompts-file F`` (a JSON list of strings) runs every
prompt on the one loaded model and prints ``{"ok": true, "results": [{...one per prompt...}, ...]}``.

How the numbers are obtained (the C API of libllmodel, ``llmodel_c.h`` of gpt4all 1.0.8):

* ``llmodel_model_create2(path, "auto", &err)`` picks the implementation whose ``magic_match``
  accepts the file (GPT-J: magic "ggml" and 50300 <= n_vocab <= 50400; MPT: magic "ggmm");
* ``llmodel_prompt`` with ``n_predict = 0`` only evaluates the prompt, after which the prompt context
  holds the logits of the last prompt token; the prompt callback reports each prompt token id;
* a second ``llmodel_prompt`` from ``n_past = 0`` with ``top_k = 1`` (one candidate: the argmax,
  whatever the temperature) and no repeat penalty yields the greedy tokens through the response
  callback.  gpt4all stops early at its end-of-text tokens, so fewer tokens may come back.
* for BERT, ``llmodel_prompt`` with ``n_predict = 0`` only tokenizes (its token evaluation does
  nothing): the prompt callback reports gpt4all's WordPiece ids ([CLS] first, no [SEP]).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys


class LLModelError(ctypes.Structure):
    _fields_ = [("message", ctypes.c_char_p), ("code", ctypes.c_int32)]


class LLModelPromptContext(ctypes.Structure):
    _fields_ = [
        ("logits", ctypes.POINTER(ctypes.c_float)),
        ("logits_size", ctypes.c_size_t),
        ("tokens", ctypes.POINTER(ctypes.c_int32)),
        ("tokens_size", ctypes.c_size_t),
        ("n_past", ctypes.c_int32),
        ("n_ctx", ctypes.c_int32),
        ("n_predict", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("temp", ctypes.c_float),
        ("n_batch", ctypes.c_int32),
        ("repeat_penalty", ctypes.c_float),
        ("repeat_last_n", ctypes.c_int32),
        ("context_erase", ctypes.c_float),
    ]


PromptCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_int32)
ResponseCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_int32, ctypes.c_char_p)
RecalculateCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_bool)


def _bind(lib: ctypes.CDLL) -> None:
    lib.llmodel_model_create2.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(LLModelError)]
    lib.llmodel_model_create2.restype = ctypes.c_void_p
    lib.llmodel_model_destroy.argtypes = [ctypes.c_void_p]
    lib.llmodel_model_destroy.restype = None
    lib.llmodel_loadModel.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.llmodel_loadModel.restype = ctypes.c_bool
    lib.llmodel_isModelLoaded.argtypes = [ctypes.c_void_p]
    lib.llmodel_isModelLoaded.restype = ctypes.c_bool
    lib.llmodel_prompt.argtypes = [ctypes.c_void_p, ctypes.c_char_p, PromptCallback, ResponseCallback,
                                   RecalculateCallback, ctypes.POINTER(LLModelPromptContext)]
    lib.llmodel_prompt.restype = None
    lib.llmodel_setThreadCount.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.llmodel_setThreadCount.restype = None
    lib.llmodel_set_implementation_search_path.argtypes = [ctypes.c_char_p]
    lib.llmodel_set_implementation_search_path.restype = None
    lib.llmodel_embedding.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.llmodel_embedding.restype = ctypes.POINTER(ctypes.c_float)
    lib.llmodel_free_embedding.argtypes = [ctypes.POINTER(ctypes.c_float)]
    lib.llmodel_free_embedding.restype = None


def _context(n_predict: int, n_batch: int) -> LLModelPromptContext:
    ctx = LLModelPromptContext()
    ctx.n_past = 0
    ctx.n_ctx = 1024
    ctx.n_predict = n_predict
    ctx.top_k = 1
    ctx.top_p = 1.0
    ctx.temp = 1.0
    ctx.n_batch = n_batch
    ctx.repeat_penalty = 1.0
    ctx.repeat_last_n = 64
    ctx.context_erase = 0.5
    return ctx


def run(lib_dir: str, model: str, prompts: list[str], n_predict: int, threads: int, n_batch: int,
        embed: bool = False) -> dict:
    lib = ctypes.CDLL(os.path.join(lib_dir, "libllmodel.so"))
    _bind(lib)
    lib.llmodel_set_implementation_search_path(lib_dir.encode())
    err = LLModelError()
    m = lib.llmodel_model_create2(model.encode(), b"auto", ctypes.byref(err))
    if not m:
        msg = err.message.decode("utf-8", "replace") if err.message else "unknown error"
        return {"ok": False, "error": f"llmodel_model_create2: {msg} (code {err.code})"}
    try:
        if not lib.llmodel_loadModel(m, model.encode()) or not lib.llmodel_isModelLoaded(m):
            return {"ok": False, "error": "llmodel_loadModel failed"}
        if threads > 0:
            lib.llmodel_setThreadCount(m, threads)
        return {"ok": True, "results": [_one(lib, m, p, n_predict, n_batch, embed) for p in prompts]}
    finally:
        lib.llmodel_model_destroy(m)


def _one(lib: ctypes.CDLL, m: int, prompt: str, n_predict: int, n_batch: int, embed: bool) -> dict:
    prompt_tokens: list[int] = []
    greedy: list[int] = []

    def on_prompt(tok: int) -> bool:
        prompt_tokens.append(int(tok))
        return True

    def on_response(tok: int, _text: bytes) -> bool:
        if tok >= 0:
            greedy.append(int(tok))
        return True

    def on_recalc(_busy: bool) -> bool:
        return True

    cb_p, cb_r, cb_c = PromptCallback(on_prompt), ResponseCallback(on_response), RecalculateCallback(on_recalc)
    ctx = _context(0, n_batch)
    lib.llmodel_prompt(m, prompt.encode("utf-8"), cb_p, cb_r, cb_c, ctypes.byref(ctx))
    n = int(ctx.logits_size)
    logits = [float(ctx.logits[i]) for i in range(n)] if n and ctx.logits and not embed else []
    first_tokens = list(prompt_tokens)
    greedy.clear()
    out: dict = {"prompt": prompt, "prompt_tokens": first_tokens, "logits": logits, "n_vocab": len(logits)}
    if embed:
        size = ctypes.c_size_t()
        ptr = lib.llmodel_embedding(m, prompt.encode("utf-8"), ctypes.byref(size))
        out["embedding"] = [float(ptr[i]) for i in range(size.value)] if ptr else []
        if ptr:
            lib.llmodel_free_embedding(ptr)
    elif n_predict > 0:
        prompt_tokens.clear()
        ctx2 = _context(n_predict, n_batch)
        lib.llmodel_prompt(m, prompt.encode("utf-8"), cb_p, cb_r, cb_c, ctypes.byref(ctx2))
    out["greedy"] = list(greedy)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib-dir", required=True, help="gpt4all/llmodel_DO_NOT_MODIFY/build of gpt4all==1.0.8")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="Hello world")
    ap.add_argument("--n-predict", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-batch", type=int, default=512, help="prompt tokens per evaluation (default: all at once)")
    ap.add_argument("--embed", action="store_true", help="also compute the embedding (BERT); no generation")
    ap.add_argument("--prompts-file", help="a JSON list of prompts, all run on the one loaded model")
    args = ap.parse_args(argv)
    prompts = [args.prompt]
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts = json.load(f)
    # the native libraries print their progress to stdout: keep stdout for the JSON line alone
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        out = run(os.path.abspath(args.lib_dir), args.model, prompts, args.n_predict, args.threads,
                  args.n_batch, args.embed)
        if out.get("ok") and not args.prompts_file:
            out = {"ok": True, **out["results"][0]}
    except OSError as e:
        out = {"ok": False, "error": f"cannot run libllmodel: {e}"}
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(out))
    return 0 if out.get("ok") else 2


if __name__ == "__main__":
    raise SystemExit(main())
