"""The handcrafted GGUF files of llama.cpp's ``tests/test-gguf.cpp`` (pinned 0.3.36 sdist), as Python.

Each kind damages one part of an otherwise random GGUF v3 file (random key/values of every value
type, random tensors of every type ggml can store, optional data) the way that test does, so that our
reader can be held to ggml's own verdict on each.  The randomness is Python's (seeded), not the
test's mt19937: the kinds, not the exact bytes, are what is compared.

``EXPECTED[kind]``: "ok" when ggml's ``gguf_init_from_file`` reads the file, "refuse" when it
returns NULL.
"""
from __future__ import annotations

import random
import struct

from gpt4all_loader.formats.ggml_types import TYPES
from gpt4all_loader.formats.gguf import SCALAR_FORMAT

HEADER = ["HEADER_BAD_MAGIC", "HEADER_BAD_VERSION_0", "HEADER_BAD_VERSION_1", "HEADER_BAD_VERSION_FUTURE",
          "HEADER_BAD_N_TENSORS", "HEADER_BAD_N_KV", "HEADER_EMPTY"]
KV = ["KV_BAD_KEY_SIZE", "KV_EMPTY_KEY", "KV_BAD_TYPE", "KV_DUPLICATE_KEY", "KV_BAD_ALIGN",
      "KV_WRONG_TYPE_ALIGN", "KV_SUCCESS"]
TENSORS = ["TENSORS_BAD_NAME_SIZE", "TENSORS_BAD_N_DIMS", "TENSORS_BAD_SHAPE", "TENSORS_ZERO_DIM",
           "TENSORS_NE_TOO_BIG", "TENSORS_NBYTES_TOO_BIG", "TENSORS_NBYTES_PAD_WRAP", "TENSORS_BAD_TYPE",
           "TENSORS_BAD_OFFSET", "TENSORS_DUPLICATE_NAME", "TENSORS_BAD_ALIGN", "TENSORS_INCONSISTENT_ALIGN",
           "TENSORS_SUCCESS", "TENSORS_CUSTOM_ALIGN"]
DATA = ["DATA_NOT_ENOUGH_DATA", "DATA_BAD_ALIGN", "DATA_INCONSISTENT_ALIGN", "DATA_MEM_SIZE_OVERFLOW",
        "DATA_SUCCESS", "DATA_CUSTOM_ALIGN"]
KINDS = HEADER + KV + TENSORS + DATA
_OK = {"HEADER_EMPTY", "KV_SUCCESS", "TENSORS_ZERO_DIM", "TENSORS_SUCCESS", "TENSORS_CUSTOM_ALIGN",
       "DATA_SUCCESS", "DATA_CUSTOM_ALIGN"}
EXPECTED = {k: "ok" if k in _OK else "refuse" for k in KINDS}

#: the types ggml 2026 can store (type_size > 0): the repacked ARM types 31-33 and 36-38 are gone
_STORABLE = {i: t for i, t in TYPES["pr1508"].items() if i not in (31, 32, 33, 36, 37, 38)}
#: the first id ggml 2026 does not know
GGML_TYPE_COUNT = max(TYPES["pr1508"]) + 1
_ALIGN_KINDS = {"KV_BAD_ALIGN", "KV_WRONG_TYPE_ALIGN", "TENSORS_BAD_ALIGN", "TENSORS_CUSTOM_ALIGN",
                "DATA_BAD_ALIGN", "DATA_CUSTOM_ALIGN"}


def _pad_to(buf: bytearray, alignment: int) -> None:
    buf += b"\0" * (-len(buf) % alignment)


def _tensor_configs(rng: random.Random) -> list[tuple[int, list[int]]]:
    out = []
    ids = sorted(_STORABLE)
    for _ in range(100):
        tid = rng.choice(ids)
        shape = [(1 + rng.randrange(10)) * _STORABLE[tid].block, 1, 1, 1]
        for i in range(1, 1 + rng.randrange(4)):
            shape[i] = 1 + rng.randrange(10)
        out.append((tid, shape))
    return out


def _kv_types(rng: random.Random) -> list[tuple[int, int]]:
    out = []
    for _ in range(100):
        t = rng.randrange(13)
        if t == 9:
            ta = rng.randrange(13)
            if ta != 9:
                out.append((9, ta))
            continue
        out.append((t, -1))
    rng.shuffle(out)
    return out


def _nbytes(tid: int, shape: list[int]) -> int:
    t = _STORABLE[tid]
    n = 1
    for d in shape:
        n *= d
    return n // t.block * t.size


def handcrafted(kind: str, seed: int) -> bytes:
    """The bytes of one handcrafted file of ``kind`` (one of :data:`KINDS`)."""
    rng = random.Random(seed)
    b = bytearray()
    alignment = 32
    b += b"FUGG" if kind == "HEADER_BAD_MAGIC" else b"GGUF"
    version = {"HEADER_BAD_VERSION_0": 0, "HEADER_BAD_VERSION_1": 1, "HEADER_BAD_VERSION_FUTURE": 4}.get(kind, 3)
    b += struct.pack("<I", version)
    tensors = _tensor_configs(rng) if kind in TENSORS + DATA else []
    if kind == "DATA_MEM_SIZE_OVERFLOW":
        tensors = [(24, [0x7FFFFFFFFFFFFFC0, 1, 1, 1])] * 2
    if kind == "TENSORS_NBYTES_PAD_WRAP":
        tensors = [(0, [4, (1 << 30) - 1, (1 << 30) + 1, 1])]  # 2^64 - 16 bytes: padding wraps to 0
    b += struct.pack("<Q", (1 << 64) - 1 if kind == "HEADER_BAD_N_TENSORS" else len(tensors))
    kvs = _kv_types(rng) if kind not in HEADER else []
    n_kv = len(kvs) + (1 if kind in _ALIGN_KINDS else 0)
    b += struct.pack("<Q", (1 << 64) - 1 if kind == "HEADER_BAD_N_KV" else n_kv)
    if kind in HEADER:
        _pad_to(b, alignment)
        return bytes(b)

    for i, (t, ta) in enumerate(kvs):
        if kind == "KV_BAD_TYPE":
            t = ta = 13
        key = b"" if kind == "KV_EMPTY_KEY" else f"my_key_{i // 2 if kind == 'KV_DUPLICATE_KEY' else i}".encode()
        b += struct.pack("<Q", (1 << 64) - 1 if kind == "KV_BAD_KEY_SIZE" else len(key)) + key
        b += struct.pack("<i", t)
        data = bytes(rng.randrange(256) | (1 if 8 in (t, ta) else 0) for _ in range(64))
        if t == 8:
            n = rng.randrange(64)
            b += struct.pack("<Q", n) + data[:n]
        elif t == 9:
            b += struct.pack("<i", ta)
            if ta == 8:
                nstr = rng.randrange(17)
                b += struct.pack("<Q", nstr)
                for j in range(nstr):
                    n = rng.randrange(5)
                    b += struct.pack("<Q", n) + data[4 * j:4 * j + n]
            else:
                size = struct.calcsize("<" + SCALAR_FORMAT[ta])
                n = rng.randrange(64) // size
                b += struct.pack("<Q", n) + data[:n * size]
        elif t == 13:
            b += data[:1]
        else:
            b += data[:struct.calcsize("<" + SCALAR_FORMAT[t])]
    if kind in _ALIGN_KINDS:
        key = b"general.alignment"
        b += struct.pack("<Q", len(key)) + key
        b += struct.pack("<i", 5 if kind == "KV_WRONG_TYPE_ALIGN" else 4)
        alignment = 1 if EXPECTED[kind] == "ok" else 13
        b += struct.pack("<I", alignment)
    if kind in KV:
        _pad_to(b, alignment)
        return bytes(b)

    if kind in ("TENSORS_INCONSISTENT_ALIGN", "DATA_INCONSISTENT_ALIGN"):
        alignment = 1  # offsets packed without padding while the file keeps the default 32
    offset = 0
    for i, (tid, shape) in enumerate(tensors):
        if kind == "TENSORS_NBYTES_TOO_BIG":
            tid = 27  # I64
        name = "my_tensor" + ("" if kind == "TENSORS_DUPLICATE_NAME" else f"_{i}")
        if kind == "TENSORS_BAD_NAME_SIZE":
            name += "_with_a_very_long_name_which_is_longer_than_what_is_allowed_for_ggml_tensors"
        b += struct.pack("<Q", len(name)) + name.encode()
        n_dims = 2 if kind in ("TENSORS_NE_TOO_BIG", "TENSORS_NBYTES_TOO_BIG") else 1
        for d in range(3, 0, -1):
            if shape[d] != 1:
                n_dims = d + 1
                break
        if kind == "TENSORS_ZERO_DIM":
            n_dims = 2
            dims = [shape[0], 0]
        elif kind == "TENSORS_BAD_SHAPE":
            dims = [-1] * n_dims
        elif kind == "TENSORS_NE_TOO_BIG":
            dims = [4 * 0x7FFFFFFF] * n_dims
        elif kind == "TENSORS_NBYTES_TOO_BIG":
            big_ne = (1 << 64) // 8
            dim = int(1.01 * big_ne ** (1.0 / n_dims)) + 1
            dims = [dim] * n_dims
        else:
            dims = shape[:n_dims]
        b += struct.pack("<I", 5 if kind == "TENSORS_BAD_N_DIMS" else n_dims)
        b += struct.pack(f"<{len(dims)}q", *dims)
        b += struct.pack("<i", GGML_TYPE_COUNT if kind == "TENSORS_BAD_TYPE" else tid)
        b += struct.pack("<Q", (1 << 64) - 1 if kind == "TENSORS_BAD_OFFSET" else offset)
        nbytes = 0 if kind == "TENSORS_ZERO_DIM" else _nbytes(tid, shape[:n_dims])
        offset += nbytes + (-nbytes % alignment)
    _pad_to(b, alignment)
    if kind in DATA:
        nbytes = {"DATA_NOT_ENOUGH_DATA": offset - 1, "DATA_MEM_SIZE_OVERFLOW": 32}.get(kind, offset)
        b += bytes(i % 256 for i in range(nbytes))
    return bytes(b)
