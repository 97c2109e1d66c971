"""GGUF's own vocabulary: key/value types, token types, and the one writer of GGUF headers.

Value types are ggml's ``enum gguf_type``; token types llama.cpp's ``enum llama_token_type``.  The
reader (``gguf_reader``) parses with these tables, and every GGUF the project writes (the tiny test
models of ``writer``, the upgrades of ``convert``, the Hugging Face conversions of ``convert_hf``)
is encoded by :class:`GgufHeader`, in v1-v3 and either byte order.
"""
from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any, Sequence


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class TokenType(IntEnum):
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


#: value type id -> its name, for messages ("UINT32")
VALUE_TYPE_NAMES: dict[int, str] = {t.value: t.name for t in ValueType}
#: struct format character of each fixed-size value type (plain int keys: the reader looks them up often)
SCALAR_FORMAT: dict[int, str] = {int(t): c for t, c in (
    (ValueType.UINT8, "B"), (ValueType.INT8, "b"), (ValueType.UINT16, "H"), (ValueType.INT16, "h"),
    (ValueType.UINT32, "I"), (ValueType.INT32, "i"), (ValueType.FLOAT32, "f"), (ValueType.BOOL, "?"),
    (ValueType.UINT64, "Q"), (ValueType.INT64, "q"), (ValueType.FLOAT64, "d"))}


class GgufHeader:
    """The key/values and tensor infos of one GGUF file, encoded as ``version`` in byte order ``endian``
    ("<" or ">"): v1 stores counts, lengths and dimensions as u32, v2/v3 as u64.

    Strings may be ``str`` (UTF-8) or ``bytes`` (written as they are: token texts of legacy files).
    """

    def __init__(self, version: int = 3, endian: str = "<") -> None:
        if version not in (1, 2, 3) or endian not in ("<", ">"):
            raise ValueError(f"GGUF version 1-3 in byte order '<' or '>' (got {version}, {endian!r})")
        self.version, self.endian = version, endian
        self._len = "I" if version == 1 else "Q"
        self._kv: list[bytes] = []
        self._tensors: list[tuple[bytes, int]] = []   # (info without the offset, data bytes)

    def _pack(self, fmt: str, *values: Any) -> bytes:
        return struct.pack(self.endian + fmt, *values)

    def _string(self, text: str | bytes) -> bytes:
        b = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return self._pack(self._len, len(b)) + b

    def add(self, key: str, vtype: int, value: Any) -> None:
        """A scalar or string key/value."""
        if vtype == ValueType.STRING:
            body = self._string(value)
        elif vtype in SCALAR_FORMAT:
            body = self._pack(SCALAR_FORMAT[vtype], value)
        else:
            raise ValueError(f"{key}: value type {vtype} is not a scalar or string (use add_array)")
        self._kv.append(self._string(key) + self._pack("I", vtype) + body)

    def add_array(self, key: str, etype: int, values: Sequence[Any]) -> None:
        """An array of scalars or strings; of arrays when ``etype`` is ARRAY, each value then an
        (element type, values) pair (the format allows it; most engines do not read it)."""
        self._kv.append(self._string(key) + self._pack("I", ValueType.ARRAY) + self._array(key, etype, values))

    def _array(self, key: str, etype: int, values: Sequence[Any]) -> bytes:
        body = [self._pack("I", etype), self._pack(self._len, len(values))]
        if etype == ValueType.STRING:
            body.extend(self._string(v) for v in values)
        elif etype in SCALAR_FORMAT:
            body.append(self._pack(f"{len(values)}{SCALAR_FORMAT[etype]}", *values))
        elif etype == ValueType.ARRAY:
            body.extend(self._array(key, et, vals) for et, vals in values)
        else:
            raise ValueError(f"{key}: arrays of value type {etype} are not written")
        return b"".join(body)

    def add_tensor(self, name: str, ne: Sequence[int], ggml_type: int, nbytes: int) -> None:
        """A tensor info; its data follows the header at the next offset that is a multiple of the alignment."""
        info = (self._string(name) + self._pack("I", len(ne)) + self._pack(self._len * len(ne), *ne)
                + self._pack("I", ggml_type))
        self._tensors.append((info, nbytes))

    def encode(self, alignment: int = 32) -> tuple[bytes, list[int]]:
        """The header, padded to ``alignment``, and each tensor's offset in the data that follows it."""
        parts = [b"GGUF", self._pack("I", self.version), self._pack(self._len, len(self._tensors)),
                 self._pack(self._len, len(self._kv)), *self._kv]
        offsets, off = [], 0
        for info, nbytes in self._tensors:
            off += -off % alignment
            parts.append(info + self._pack("Q", off))
            offsets.append(off)
            off += nbytes
        head = b"".join(parts)
        return head + b"\0" * (-len(head) % alignment), offsets
