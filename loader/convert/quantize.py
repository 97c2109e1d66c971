"""Quantize a model file with the quantizer of the era that reads it.

Each era writes its own layout (the 2023-04 quantizer writes ggjt v1 blocks, 2023-05 ggjt v2, ...),
so quantized fixtures and conversions get bytes from the real engines, never from a re-implementation.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ..engines import native
from ..errors import BackendError, UnsupportedModelError
from ..formats.ggml_types import GGUF_FTYPE_NAMES

_BY_NAME = {name.removeprefix("MOSTLY_").removeprefix("ALL_"): num for num, name in GGUF_FTYPE_NAMES.items()}


def ftype_number(ftype: str | int) -> int:
    """llama_ftype number of ``ftype`` ("Q4_0", "q4_k_m", "F16", or the number itself)."""
    if isinstance(ftype, int):
        return ftype
    key = ftype.upper().removeprefix("MOSTLY_")
    if key not in _BY_NAME:
        raise ValueError(f"unknown quantization {ftype!r}; known: {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[key]


def quantize(src: str | os.PathLike[str], dst: str | os.PathLike[str], ftype: str | int, *, backend: str | None = None,
             n_threads: int = 0) -> Path:
    """Write ``dst``: ``src`` quantized to ``ftype`` by ``backend`` (default: the era that reads ``src``).

    ``src`` is validated by the reader and the catalog before any native code sees it; ``dst`` is
    written to a temporary file beside it and renamed, so a failure leaves nothing behind.
    """
    from ..formats.sniff import read_facts
    from ..plan import plan

    src, dst = Path(src), Path(dst)
    facts = read_facts(src)
    try:
        backend, choice = plan(facts, device="cpu", backend=backend).require()
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{e}; so it cannot be quantized") from None
    be = native.open_backend(backend, choice.variant)
    number = ftype_number(ftype)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".part", dir=dst.parent)
    os.close(fd)
    try:
        with native.capturing_output():
            rc = be.lib.g4a_quantize(os.fsencode(src), os.fsencode(tmp), number, int(n_threads))
        if rc != 0:
            raise BackendError(f"{src}: {backend} could not quantize to {ftype}: {be.last_error()}")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def main(argv: list[str] | None = None) -> int:
    """The quantizer's child process (:func:`~gpt4all_loader.convert.common.quantize_in_child`):
    ``MODE SRC DST FTYPE BACKEND THREADS``; a library error is one line on stderr and exit status 1.

    MODE ``catalog``: :func:`quantize` with the backend the catalog approves; ``carrier``: g4a_quantize of
    a backend directly, for the ggjt carrier files of convert/hf.py that no catalog entry describes.
    """
    mode, src, dst, ftype, backend, threads = sys.argv[1:] if argv is None else argv
    try:
        if mode == "catalog":
            quantize(src, dst, int(ftype), backend=backend, n_threads=int(threads))
        else:
            from ..engines.variants import choose_variant

            choice = choose_variant(backend, "cpu")
            if choice.variant is None:
                raise BackendError(f"{backend}: {choice.reason}")
            be = native.open_backend(backend, choice.variant)
            if be.lib.g4a_quantize(os.fsencode(src), os.fsencode(dst), int(ftype), int(threads)) != 0:
                raise BackendError(be.last_error())
    except (BackendError, ValueError, OSError) as e:  # ValueError: FormatError, UnsupportedModelError
        print(e, file=sys.stderr)
        return 1
    return 0
