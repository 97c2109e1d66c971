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
from typing import Any

from ..errors import FormatError
from .facts import FileFacts

MAGIC_GGML = 0x67676D6C  # "ggml" (bytes "lmgg")
MAGIC_GGMF = 0x67676D66  # "ggmf"
MAGIC_GGJT = 0x67676A74  # "ggjt"
MAGIC_GGLA = 0x67676C61  # "ggla" LoRA
MAGIC_GGMM = 0x67676D6D  # "ggmm" GPT4All MPT
MAGIC_REPL = 0x7265706C  # "repl" GPT4All Replit (bytes "lper")
MAGIC_BERT = 0x62657274  # "bert" GPT4All BERT / Embed4All (bytes "treb")
LEGACY_MAGICS = {MAGIC_GGML: "ggml", MAGIC_GGMF: "ggmf", MAGIC_GGJT: "ggjt", MAGIC_GGLA: "ggla",
                 MAGIC_GGMM: "ggmm", MAGIC_REPL: "repl", MAGIC_BERT: "bert"}
GGUF_MAGIC = b"GGUF"


class ByteSource:
    """Buffered, bounds-checked reads from a file at a current position.

    Every read first checks that the bytes exist (else FormatError at the current offset), then
    serves them from an in-memory window that is refilled with one ``read`` call when needed.
    """

    def __init__(self, f: Any, path: str, size: int, endian: str = "<", readahead: int = 1 << 18):
        self.f = f
        self.path = path
        self.size = size
        self.endian = endian
        self.readahead = readahead
        self.buf = b""
        self.buf_start = 0
        self.pos = 0
        self._structs: dict[str, struct.Struct] = {}

    # -- errors -------------------------------------------------------------------------------
    def error(self, field: str, expected: str, offset: int | None = None) -> FormatError:
        off = self.pos if offset is None else offset
        return FormatError(f"{self.path}: byte offset {off}, field {field}: expected {expected}")

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    # -- raw access ---------------------------------------------------------------------------
    def _ensure(self, n: int, field: str) -> int:
        """Make ``n`` bytes from ``pos`` available in ``buf``; return their index in ``buf``."""
        if n < 0 or self.pos < 0:
            raise self.error(field, "a non-negative length")
        if self.pos + n > self.size:
            raise self.error(field, f"{n} more byte(s), but the file ends at byte {self.size} "
                                    f"(truncated or not this format)")
        rel = self.pos - self.buf_start
        if rel < 0 or rel + n > len(self.buf):
            self.f.seek(self.pos)
            self.buf = self.f.read(max(n, self.readahead))
            self.buf_start = self.pos
            rel = 0
            if len(self.buf) < n:
                raise self.error(field, f"{n} byte(s); the file became shorter while reading")
        return rel

    def _struct(self, fmt: str) -> struct.Struct:
        s = self._structs.get(fmt)
        if s is None:
            s = self._structs[fmt] = struct.Struct(self.endian + fmt)
        return s

    def unpack(self, fmt: str, field: str) -> tuple[Any, ...]:
        s = self._struct(fmt)
        rel = self._ensure(s.size, field)
        self.pos += s.size
        return s.unpack_from(self.buf, rel)

    def u8(self, field: str) -> int:
        v: int = self.unpack("B", field)[0]
        return v

    def u32(self, field: str) -> int:
        v: int = self.unpack("I", field)[0]
        return v

    def i32(self, field: str) -> int:
        v: int = self.unpack("i", field)[0]
        return v

    def u64(self, field: str) -> int:
        v: int = self.unpack("Q", field)[0]
        return v

    def f32(self, field: str) -> float:
        v: float = self.unpack("f", field)[0]
        return v

    def take(self, n: int, field: str) -> bytes:
        rel = self._ensure(n, field)
        self.pos += n
        return self.buf[rel:rel + n]

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from ``pos`` without moving (fewer near the end of the file)."""
        n = max(0, min(n, self.size - self.pos))
        rel = self._ensure(n, "peek")
        return self.buf[rel:rel + n]

    def window(self, n: int) -> tuple[bytes, int]:
        """The buffer and the index of ``pos`` in it, holding the next ``min(n, remaining)`` bytes: for a
        parser that reads a whole record with ``unpack_from`` and checks it afterwards (it must not move
        ``pos`` past what it read)."""
        rel = self._ensure(max(0, min(n, self.size - self.pos)), "window")
        return self.buf, rel

    def skip(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.error(field, f"{n} byte(s) to skip, but the file ends at byte {self.size}")
        self.pos += n

    def skip_strings(self, count: int, len_fmt: str, field: str) -> None:
        """Move past ``count`` length-prefixed strings, reading only their lengths.

        The common case runs as one tight loop per buffered window, with no check inside it: a length
        that runs past the window makes the next ``unpack_from`` fail or leaves the position beyond
        the window, and only then is the position checked against the file size.  Any record that
        does not fit the file is handed to :meth:`walk_strings`, from the array's start, so that the
        error names the same record and offset as the careful walk.
        """
        start = self.pos
        unpack_len = self._struct(len_fmt).unpack_from
        lsize = self._struct(len_fmt).size
        size = self.size
        i = 0
        while i < count:
            rel = self._ensure(lsize, f"{field}[{i}] length")
            buf, base = self.buf, self.buf_start
            p = rel
            k = i
            try:
                for k in range(i, count):
                    p += unpack_len(buf, p)[0] + lsize
                k = count
            except (struct.error, OverflowError):  # OverflowError: an offset past 2^63 after a huge length
                pass  # record k's length is not in this window: p is its start (or past the window)
            if base + p > size:
                self.pos = start
                self.walk_strings(count, len_fmt, field, max_len=size)
                raise self.error(f"{field} length", "string lengths that fit the file")  # not reached
            self.pos = base + p
            i = k
        return None

    def collect_strings(self, count: int, len_fmt: str, field: str, *, max_len: int) -> list[bytes]:
        """The raw bytes of ``count`` length-prefixed strings: :meth:`walk_strings` with ``texts=True``,
        in one tight loop per buffered window (see :meth:`skip_strings`); errors come from the careful
        walk, from the array's start.

        ``max_len`` needs no check per record: a record that lies whole in a window is no longer than
        the window, so only the records of a window larger than ``max_len`` (rare: one that had to grow
        for a long record) and records cut at a window's end are measured.
        """
        start = self.pos
        unpack_len = self._struct(len_fmt).unpack_from
        lsize = self._struct(len_fmt).size
        size = self.size
        out: list[bytes] = []
        append = out.append
        i = 0
        while i < count:
            rel = self._ensure(lsize, f"{field}[{i}] length")
            buf, base, end = self.buf, self.buf_start, len(self.buf)
            first = len(out)
            p = q = rel
            try:
                for _ in range(i, count):
                    # the length first: when it is not in the window, q still marks the last record
                    p = unpack_len(buf, p)[0] + (q := p + lsize)
                    append(buf[q:p])
            except (struct.error, OverflowError):  # OverflowError: an offset past 2^63 after a huge length
                pass  # the next record's length is not in this window: p is its start
            if p > end:
                # the last record collected runs past the window (cut short): read it again whole
                out.pop()
                n = p - q
                if n > max_len or base + p > size:
                    self.pos = start
                    self.walk_strings(count, len_fmt, field, texts=True, max_len=max_len)
                    raise self.error(f"{field} length", "string lengths that fit the file")  # not reached
                self.pos = base + q - lsize
                self._ensure(lsize + n, f"{field}[{len(out)}]")
            else:
                self.pos = base + p
            if end - lsize > max_len and len(out) > first and max(map(len, out[first:])) > max_len:
                self.pos = start
                self.walk_strings(count, len_fmt, field, texts=True, max_len=max_len)
                raise self.error(f"{field} length", f"string lengths of at most {max_len}")  # not reached
            i = len(out)
        return out

    def walk_strings(self, count: int, len_fmt: str, field: str, *, extra: int = 0, mask: int = 0,
                     collect: bool = False, texts: bool = False,
                     max_len: int = 1 << 20) -> list[tuple[bytes, bytes]] | list[bytes] | None:
        """Walk ``count`` records of (length, bytes[length], ``extra`` bytes) as fast as possible.

        ``mask`` clears flag bits from the length (GPT4All MPT marks special tokens with bit 31).
        With ``collect``, returns the (text, extra) pairs; with ``texts`` (and no ``extra``), the texts
        alone, which is cheaper.  A length beyond the end of the file or above ``max_len`` raises
        FormatError naming the record.
        """
        if texts and extra:
            raise ValueError("texts=True returns records without extra bytes")
        collect = collect or texts
        ls = self._struct(len_fmt)
        lsize = ls.size
        unpack_len = ls.unpack_from
        out: list[Any] | None = [] if collect else None
        i = 0
        size = self.size
        while i < count:
            rel = self._ensure(lsize, f"{field}[{i}] length")
            buf = self.buf
            base = self.buf_start
            end = len(buf)
            p = rel
            while i < count and p + lsize <= end:
                n = unpack_len(buf, p)[0]
                if mask:
                    n &= ~mask
                if n > max_len or base + p + lsize + n + extra > size:
                    self.pos = base + p
                    raise self.error(
                        f"{field}[{i}] length",
                        f"a length that fits the file (got {n}, {size - self.pos - lsize} bytes left)")
                if out is not None:
                    q = p + lsize
                    if q + n + extra <= end:
                        out.append(buf[q:q + n] if texts else (buf[q:q + n], buf[q + n:q + n + extra]))
                    else:
                        self.pos = base + q
                        text = self.take(n, f"{field}[{i}]")
                        tail = self.take(extra, f"{field}[{i}] extra") if extra else b""
                        out.append(text if texts else (text, tail))
                        i += 1
                        break
                p += lsize + n + extra
                i += 1
            else:
                self.pos = base + p
                continue
            # left the inner loop through "break" after a slow-path read: pos is already set
        return out


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
