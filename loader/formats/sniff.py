"""Read what a file is, from its first bytes and its headers, without reading any tensor data.

Entry point: :func:`read_facts`.  It dispatches on the magic to :mod:`.gguf_reader` (GGUF v1-v3, either
byte order) or :mod:`.legacy` (ggml / ggmf / ggjt LLaMA, ggla LoRA, GPT-J and MPT ggml files,
GPT4All's Falcon, Replit, StarCoder and BERT files, whisper and rwkv.cpp files), and recognizes
common non-model files (safetensors, PyTorch archives, pickles, HTML/XML/JSON/text, empty files) so
that they get a readable verdict instead of an error.

Guarantees: the time taken depends on the header size, never on the data size (tensor data is
skipped by seeking); every count and length is checked against the bytes left in the file before
anything is allocated or looped over; a malformed or cut header of a model container raises
:class:`~gpt4all_loader.errors.FormatError` naming the path, byte offset, field and expectation.
Tensor data running past the end of the file is reported (``truncated=True``), not raised.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

from ..errors import FormatError
from .facts import FileFacts

from .source import (  # noqa: F401 - re-exported: the dispatcher's names of the magics
    GGUF_MAGIC, LEGACY_MAGICS, MAGIC_BERT, MAGIC_GGJT, MAGIC_GGLA, MAGIC_GGMF, MAGIC_GGML, MAGIC_GGMM, MAGIC_REPL,
    ByteSource,
)


def _text_kind(head: bytes) -> tuple[str, str] | None:
    """Recognize text files (HTML error pages saved as .bin, JSON configs, LFS pointers ...)."""
    s = head.lstrip(b"\xef\xbb\xbf").lstrip()
    low = s[:512].lower()
    if low.startswith(b"version https://git-lfs"):
        return "git-lfs-pointer", "a Git LFS pointer file, not the model itself (fetch the real file)"
    if low.startswith(b"<!doctype html") or low.startswith(b"<html") or b"<html" in low[:256]:
        return "html", "an HTML page (e.g. an error or login page saved in place of the model)"
    if low.startswith(b"<?xml") or low.startswith(b"<"):
        return "xml", "an XML/markup document, not a model"
    if s[:1] in (b"{", b"["):
        return "json", "JSON text (e.g. a config or tokenizer file), not a model"
    if not s and head:
        return "text", "a text file of blanks only, not a model"
    try:
        sample = head[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the sample end is still text
        if exc.start < len(head[:4096]) - 4:
            return None
        sample = head[:exc.start].decode("utf-8", "replace")
    if sample and all(c.isprintable() or c in "\r\n\t\f" for c in sample):
        return "text", "a text file, not a model"
    return None


def _not_a_model(path: str, size: int, head: bytes) -> FileFacts:
    def facts(fmt: str, desc: str) -> FileFacts:
        return FileFacts(path=path, size=size, format=fmt, format_version=None, kind="not-a-model",
                         description=desc)

    if size == 0:
        return facts("empty", "an empty file (0 bytes), not a model")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        if b"data.pkl" in head or b"/data/" in head or b"version" in head[:512]:
            return facts("pytorch-zip", "a PyTorch checkpoint (zip archive); convert it to GGUF first")
        return facts("zip", "a zip archive, not a model file")
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return facts("safetensors", f"a safetensors file ({n}-byte JSON header); convert it to GGUF first")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return facts("pickle", f"a Python pickle (protocol {head[1]}), e.g. an old PyTorch checkpoint")
    if head.startswith(b"\x1f\x8b"):
        return facts("gzip", "a gzip-compressed file; decompress it first")
    if head.startswith(b"\x89HDF"):
        return facts("hdf5", "an HDF5 file (e.g. Keras weights), not a ggml/GGUF model")
    t = _text_kind(head)
    if t:
        return facts(*t)
    shown = head[:8].hex(" ")
    return facts("unknown", f"not a known model format (first bytes {shown})")


#: what a path that is not a regular file is, for the message (stat.S_IFMT value -> words)
_SPECIAL_FILES = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                  stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def check_regular_file(path: str) -> os.stat_result:
    """``os.stat(path)``, refusing anything but a regular file before it is opened for reading.

    Opening a FIFO blocks until a writer appears, and reading a device such as ``/dev/zero`` never
    ends; a directory raises IsADirectoryError.  OSError (missing file, permission) propagates.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        what = _SPECIAL_FILES.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise OSError(errno.EINVAL, f"{what}, not a regular file: only model files on disk are read", path)
    return st


def read_facts(path: str | os.PathLike[str], *, with_kv: bool = False, with_vocab: bool = False) -> FileFacts:
    """Identify ``path`` and describe it (container, version, architecture, hparams, tensor types ...).

    ``with_kv``: also return the GGUF key/values in ``FileFacts.kv`` (arrays longer than 64 elements
    summarized as ``{"type": ..., "length": n}``).  ``with_vocab``: return the vocabulary arrays in
    full as well (GGUF tokens/scores/token types/merges; for legacy files ``kv`` gets
    ``"tokenizer.ggml.tokens"`` as raw bytes and, where stored, ``"tokenizer.ggml.scores"``).

    Non-model files give ``kind="not-a-model"``; a damaged header of a model container raises
    FormatError; OSError (missing file, permission) propagates unchanged, and anything that is not a
    regular file (FIFO, device, /proc pseudo-file) raises OSError without being read.
    """
    p = str(Path(path))
    check_regular_file(p)
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(4096)
        if size == 0 and head:
            raise OSError(errno.EINVAL, "a file whose size the system does not report (a /proc or /sys "
                                        "pseudo-file), not a model file", p)
        try:
            if len(head) >= 4 and head[:4] == GGUF_MAGIC:
                from . import gguf_reader

                return gguf_reader.read(f, p, size, with_kv=with_kv, with_vocab=with_vocab)
            if len(head) >= 4 and int.from_bytes(head[:4], "little") in LEGACY_MAGICS:
                from . import legacy

                return legacy.read(f, p, size, with_kv=with_kv, with_vocab=with_vocab)
            return _not_a_model(p, size, head)
        except FormatError:
            raise
        except (struct.error, IndexError, KeyError, ValueError, TypeError, UnicodeDecodeError,
                MemoryError, OverflowError, RecursionError, ZeroDivisionError) as exc:
            raise FormatError(f"{p}: malformed header ({type(exc).__name__}: {exc})") from exc
