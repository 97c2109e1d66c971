"""Conversion: old and foreign model files to ones the newest engines read.

``convert(SRC, OUT)`` picks the route from SRC:

* a ggml / ggmf / ggjt LLaMA file: upgraded to GGUF (:mod:`.legacy`), dequantized by its own era;
* a file of GPT4All's 2023 zoo (StarCoder, Falcon, BERT, Replit): upgraded to GGUF the same way (:mod:`.zoo`;
  Falcon and StarCoder need the model's tokenizer.json, ``tokenizer=``);
* a Hugging Face GPT-J, LLaMA or MPT folder stored as safetensors: converted here without torch
  (:mod:`.hf`; GPT-J to the GPT4All-era ``ggml`` file, LLaMA to GGUF, MPT to GGUF or ``ggmm``);
* any other Hugging Face folder: the pinned sdist's ``convert_hf_to_gguf.py`` (:mod:`.upstream`).

:mod:`.quantize` runs an era's own quantizer.  Guarantees of every route: SRC is validated before
anything is written and never written; OUT appears only when complete; free space is checked first.
The command line is :mod:`gpt4all_loader.cli.convert`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConvertError, UsageError
from .common import DEFAULT_CONTEXT, NEWEST, Options, Temps, check_paths, outtype_number, quantize_in_child
from .legacy import convert_legacy, legacy_vocab
from .upstream import convert_hf

__all__ = ["convert", "ConvertError", "UsageError", "Options", "Temps", "NEWEST", "DEFAULT_CONTEXT",
           "legacy_vocab", "quantize_in_child", "convert_legacy", "convert_hf"]


def convert(src: str | os.PathLike[str], out: str | os.PathLike[str], *, outtype: str = "f16",
            context_length: int = DEFAULT_CONTEXT, rms_norm_eps: float | None = None,
            rope_freq_base: float | None = None, threads: int = 0, force: bool = False,
            quiet: bool = True, format: str | None = None, tokenizer: str | os.PathLike[str] | None = None) -> Path:
    """Convert ``src`` (HF folder or ggml-era LLaMA file) to ``out``; raises ConvertError."""
    if format not in (None, "gguf", "ggml"):
        raise UsageError(f"--format must be gguf or ggml (got {format!r})")
    opts = Options(outtype=outtype, context_length=context_length, rms_norm_eps=rms_norm_eps,
                   rope_freq_base=rope_freq_base, threads=threads, force=force, quiet=quiet, format=format,
                   tokenizer=os.fspath(tokenizer) if tokenizer is not None else None)
    src_p, out_p = Path(os.fspath(src)), Path(os.fspath(out))
    outtype_number(outtype)
    if context_length <= 0:
        raise UsageError(f"--ctx must be positive (got {context_length})")
    check_paths(src_p, out_p, opts)
    if src_p.is_dir():
        if tokenizer is not None:
            raise UsageError("--tokenizer is for GPT4All's Falcon and StarCoder files; a Hugging Face folder "
                             "brings its own tokenizer")
        if not os.access(src_p, os.R_OK | os.X_OK):
            raise ConvertError(f"cannot read folder {src_p}: permission denied")
        return convert_hf(src_p, out_p, opts)
    if format == "ggml":
        raise UsageError("--format ggml is offered for Hugging Face GPT-J and MPT folders only; legacy files "
                         "are upgraded to GGUF")
    try:
        with open(src_p, "rb"):
            pass
    except OSError as e:
        raise ConvertError(f"cannot read {src_p}: {e.strerror or e}") from None
    return convert_legacy(src_p, out_p, opts)


