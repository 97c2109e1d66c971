"""GGUF headers: v1 (32-bit counts and lengths, Aug-Oct 2023), v2 and v3, little- or big-endian.

Layout: "GGUF", u32 version, n_tensors, n_kv (u32 in v1, u64 later), n_kv key/values
(string key, u32 value type, value), n_tensors tensor infos (string name, u32 n_dims, n_dims x ne
(u32 in v1, u64 later), u32 ggml type, u64 offset from the data start), padding to
``general.alignment`` (default 32), tensor data.  A string is a length (u32 in v1, u64 later) and
UTF-8 bytes.  Big-endian files (v3) store every number big-endian; they are recognized by a version
that reads as a byte-swapped small number.

What no engine reads past raises FormatError.  What a well-formed file may hold but only some engines
refuse (a key stated twice, an empty key, an array of arrays, tensor data out of order or misaligned,
a dimension of 0) is read and recorded in ``FileFacts.anomalies``; each era's manifest rules decide.
"""
from __future__ import annotations

import os
import re
import struct
from array import array
from math import prod
from typing import Any, BinaryIO

from ..errors import FormatError
from .facts import Anomaly, FileFacts, TensorTypeStat, VocabFacts, int_or_none
from .ggml_types import TYPE_NAMES, TYPES, ftype_name, ftype_phrase
from .gguf import SCALAR_FORMAT, VALUE_TYPE_NAMES
from .source import ByteSource

#: arrays up to this many elements are returned as lists by ``with_kv``; longer ones are summarized
SMALL_ARRAY = 64
#: string values longer than this are not read into memory (summarized instead)
MAX_STRING_VALUE = 1 << 20
MAX_KEY_LEN = 1 << 16
MAX_TENSOR_NAME = 1 << 12
MAX_NESTING = 3
#: ggml's GGML_MAX_NAME: a tensor name must be shorter (it is copied into a fixed char array)
GGML_MAX_NAME = 64
#: tensor data must end below this many bytes from the data start (file offsets are signed 64-bit;
#: ggml refuses sizes that overflow size_t after padding or when summed)
MAX_DATA = 1 << 63
#: the 256 byte tokens of a SentencePiece vocabulary with byte fallback
_BYTE_TOKENS = frozenset(f"<0x{i:02X}>".encode() for i in range(256))
_SPLIT_EXPERT = re.compile(r"^blk\.\d+\.ffn_(gate|down|up)\.\d+\.weight$")

_SCALAR_SIZES = {t: struct.calcsize("<" + c) for t, c in SCALAR_FORMAT.items()}
_ARRAY_CODES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 10: "Q", 11: "q", 12: "d"}


class _Anomalies:
    """The first anomaly of each kind, where it is, and how many more of that kind follow: a hostile file
    with a million repeated keys gets one record (and one reason per era), not a million."""

    def __init__(self) -> None:
        self.first: dict[str, str] = {}
        self.more: dict[str, int] = {}

    def add(self, kind: str, detail: str) -> None:
        if kind in self.first:
            self.more[kind] = self.more.get(kind, 0) + 1
        else:
            self.first[kind] = detail

    def records(self) -> list[Anomaly]:
        return [Anomaly(kind, detail + (f" (and {self.more[kind]} more)" if kind in self.more else ""))
                for kind, detail in self.first.items()]


class _Gguf:
    def __init__(self, src: ByteSource, version: int, want_kv: bool, want_vocab: bool):
        self.src = src
        self.v1 = version == 1
        self.len_fmt = "I" if self.v1 else "Q"
        self.len_size = 4 if self.v1 else 8
        self.want_kv = want_kv or want_vocab
        self.want_vocab = want_vocab

    def string(self, field: str, max_len: int) -> str:
        src = self.src
        start = src.pos
        n = src.unpack(self.len_fmt, f"{field} length")[0]
        if n > max_len or n > src.remaining:
            raise src.error(f"{field} length", f"a length of at most {min(max_len, src.remaining)} "
                                               f"(got {n})", start)
        return src.take(n, field).decode("utf-8", "replace")

    def value(self, vtype: int, field: str, depth: int = 0, *, keep_arrays: bool = False) -> Any:
        src = self.src
        if vtype in SCALAR_FORMAT:
            return src.unpack(SCALAR_FORMAT[vtype], field)[0]
        if vtype == 8:
            start = src.pos
            n = src.unpack(self.len_fmt, f"{field} length")[0]
            if n > src.remaining:
                raise src.error(f"{field} length", f"a string length that fits the file (got {n}, "
                                                   f"{src.remaining} bytes left)", start)
            if n > MAX_STRING_VALUE:
                src.skip(n, field)
                return {"type": "STRING", "length": n}
            return src.take(n, field).decode("utf-8", "replace")
        if vtype == 9:
            if depth >= MAX_NESTING:
                raise src.error(field, f"arrays nested at most {MAX_NESTING} deep")
            atype = src.u32(f"{field} array element type")
            start = src.pos
            count = src.unpack(self.len_fmt, f"{field} array length")[0]
            if atype not in VALUE_TYPE_NAMES:
                raise src.error(f"{field} array element type",
                                f"a GGUF value type 0-12 (got {atype})", start - 4)
            tname = VALUE_TYPE_NAMES[atype]
            # smallest possible encoding of one element: check the count before looping
            min_el = _SCALAR_SIZES.get(atype, self.len_size if atype == 8 else 4 + self.len_size)
            if count * min_el > src.remaining:
                raise src.error(f"{field} array length",
                                f"at most {src.remaining // max(min_el, 1)} {tname} elements in the "
                                f"{src.remaining} bytes left (got {count})", start)
            full = keep_arrays or count <= SMALL_ARRAY
            if atype in SCALAR_FORMAT:
                nbytes = count * min_el
                if not full:
                    src.skip(nbytes, field)
                    return {"type": tname, "length": count}
                raw = src.take(nbytes, field)
                if atype == 7:
                    return [b != 0 for b in raw]
                arr = array(_ARRAY_CODES[atype])
                if arr.itemsize != min_el:  # platform without an exact-size typecode
                    return list(struct.unpack(f"{src.endian}{count}{SCALAR_FORMAT[atype]}", raw))
                arr.frombytes(raw)
                if src.endian == ">":
                    arr.byteswap()
                return arr.tolist()
            if atype == 8:
                if not full:
                    src.skip_strings(count, self.len_fmt, field)
                    return {"type": tname, "length": count}
                got = src.collect_strings(count, self.len_fmt, field, max_len=MAX_STRING_VALUE)
                return [t.decode("utf-8", "replace") for t in got]
            # arrays of arrays: walk element by element (bounded by the count check above)
            items = [self.value(9, f"{field}[{i}]", depth + 1, keep_arrays=keep_arrays) for i in range(count)]
            return items if full else {"type": tname, "length": count}
        raise src.error(field, f"a GGUF value type 0-12 (got {vtype})", src.pos - 4)

    def tokens(self, field: str, keep: bool) -> tuple[Any, VocabFacts]:
        """The token array (value as :meth:`value` returns it) and its :class:`VocabFacts`.

        String arrays are walked once, collecting the raw bytes, so that duplicates, empty strings
        and byte tokens are counted without decoding every token.
        """
        src = self.src
        start = src.pos
        raw4 = src.peek(4)
        atype = int.from_bytes(raw4, "little" if src.endian == "<" else "big") if len(raw4) == 4 else -1
        if atype != 8:
            val = self.value(9, field, keep_arrays=keep)
            n = len(val) if isinstance(val, list) else int(val.get("length", 0))
            return val, VocabFacts(token_type=VALUE_TYPE_NAMES.get(atype, str(atype)), n_tokens=n)
        src.u32(f"{field} array element type")
        count = src.unpack(self.len_fmt, f"{field} array length")[0]
        if count * self.len_size > src.remaining:
            raise src.error(f"{field} array length", f"at most {src.remaining // self.len_size} STRING elements "
                                                     f"in the {src.remaining} bytes left (got {count})", start + 4)
        offset = src.pos
        # one bytes object per token is the least Python can do: the uniqueness check needs them hashed;
        # everything after the walk is set and list operations that run in C
        raw = src.collect_strings(count, self.len_fmt, field, max_len=MAX_STRING_VALUE)
        uniq = set(raw)
        vf = VocabFacts(n_tokens=count, n_duplicates=count - len(uniq),
                        n_empty=raw.count(b"") if b"" in uniq else 0, n_byte_tokens=len(uniq & _BYTE_TOKENS),
                        offset=offset)
        if vf.n_duplicates:
            seen: set[bytes] = set()
            for t in raw:
                if t in seen:
                    vf.duplicate = t.decode("utf-8", "replace")
                    break
                seen.add(t)
        if keep or count <= SMALL_ARRAY:
            return [t.decode("utf-8", "replace") for t in raw], vf
        return {"type": "STRING", "length": count}, vf


def read_tokens(path: str | os.PathLike[str], facts: FileFacts) -> list[bytes]:
    """The token texts of a GGUF file whose header :func:`read` summarized, as raw bytes, read on demand.

    The header pass keeps only counts and the array's offset (``facts.vocab.offset``), so that a probe
    or a load decodes no token it does not need; this reads the array again, with the same checks.
    Raises FormatError when the file has no string token array there (or changed since).
    """
    vocab = facts.vocab
    if facts.format != "gguf" or vocab is None or vocab.offset is None:
        raise FormatError(f"{facts.path}: no GGUF token string array to read")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != facts.size:
            raise FormatError(f"{facts.path}: the file changed size since its header was read "
                              f"({facts.size} -> {size} bytes)")
        src = ByteSource(f, str(path), size, endian=">" if facts.endianness == "big" else "<")
        src.pos = vocab.offset
        return src.collect_strings(vocab.n_tokens, "I" if facts.format_version == 1 else "Q",
                                   "tokenizer.ggml.tokens", max_len=MAX_STRING_VALUE)


#: the tensor types of GGUF (the block layout of llama.cpp PR 1508 on)
_TENSOR_TYPES = TYPES["pr1508"]

_TiStructs = tuple[struct.Struct, struct.Struct, tuple[struct.Struct, ...], struct.Struct]
_TI_CACHE: dict[tuple[str, str, str], _TiStructs] = {}


def _tensor_info_structs(endian: str, len_fmt: str, ne_fmt: str) -> _TiStructs:
    """(name length, n_dims, ne for 0-4 dims, type + offset) decoders for one GGUF flavour."""
    key = (endian, len_fmt, ne_fmt)
    got = _TI_CACHE.get(key)
    if got is None:
        got = _TI_CACHE[key] = (struct.Struct(endian + len_fmt), struct.Struct(endian + "I"),
                                tuple(struct.Struct(endian + ne_fmt * n) for n in range(5)),
                                struct.Struct(endian + "IQ"))
    return got


_PlainInfo = tuple[str, int, tuple[int, ...], int, int, int]


def _plain_tensor_info(buf: bytes, p: int, structs: _TiStructs) -> _PlainInfo | None:
    """(name, name length, ne, type id, offset, end index) of the tensor info at ``buf[p:]`` when it has 1-4
    dimensions and lies whole in ``buf``; None otherwise.  Decoding only: :func:`_tensor_info_error` and
    :func:`_tensor_info_anomalies` check it, as they check the careful path's fields."""
    len_s, u32_s, ne_s, tail_s = structs
    try:
        n = len_s.unpack_from(buf, p)[0]
        q = p + len_s.size + n
        n_dims = u32_s.unpack_from(buf, q)[0]
        if not 1 <= n_dims <= 4:  # the shape's decoder depends on it
            return None
        s = ne_s[n_dims]
        ne = s.unpack_from(buf, q + 4)
        r = q + 4 + s.size
        ttype, offset = tail_s.unpack_from(buf, r)
    except struct.error:  # runs past the window: the careful path reads it
        return None
    return buf[p + len_s.size:q].decode("utf-8", "replace"), n, ne, ttype, offset, r + tail_s.size


def _type_name(ttype: int) -> str:
    t = _TENSOR_TYPES.get(ttype)
    return t.name if t is not None else TYPE_NAMES[ttype] if ttype in (4, 5) else f"TYPE_{ttype}"


def _tensor_info_error(name: str, name_len: int, names: set[str], alignment: int, n_dims: int | None = None,
                       ne: list[int] | None = None, ttype: int | None = None,
                       offset: int | None = None) -> tuple[str, str] | None:
    """(field, what ggml needs there) for the first field of one tensor info, in file order, that the
    engines cannot take; None when all fields given pass.  The fast path asks once with the whole record,
    the careful path after each field it reads (None: not read yet), so that a damaged file gives the same
    error on both."""
    if name_len >= GGML_MAX_NAME:
        return "name", f"a name shorter than {GGML_MAX_NAME} bytes (ggml's limit)"
    if name in names:
        return "name", "a tensor name not used before (a second tensor of that name)"
    if n_dims is None:
        return None
    if not 1 <= n_dims <= 4:
        return "n_dims", f"1 to 4 dimensions (got {n_dims})"
    if ne is None:
        return None
    if any(d < 0 for d in ne):
        return "ne", f"non-negative dimensions (got {ne})"
    n_el = prod(ne)
    if n_el >= 1 << 63:
        return "ne", f"at most 2^63 elements (got shape {ne})"
    if ttype is None or offset is None:
        return None
    t = _TENSOR_TYPES.get(ttype)  # a type unknown to us: its size is not counted
    if t is not None and ne[0] % t.block:
        return "ne[0]", f"a row length that is a multiple of the {t.name} block size {t.block} (got {ne[0]})"
    nbytes = n_el // t.block * t.size if t is not None else 0
    if offset + nbytes + (-nbytes % alignment) >= MAX_DATA:
        return "ne", (f"tensor data that ends below 2^63 bytes (shape {ne} of {_type_name(ttype)} at offset "
                      f"{offset} needs {nbytes} bytes)")
    return None


def _tensor_info_anomalies(i: int, name: str, ne: list[int], offset: int, expected: int | None,
                           alignment: int) -> list[tuple[str, str]]:
    """What a readable tensor info holds that some era refuses (``FileFacts.anomalies``); the fast path
    takes only records without any."""
    out = []
    if offset % alignment:
        # ggml of 2023 maps such data where it lies; later eras refuse it or assert the alignment
        out.append(("tensor-data-misaligned", f"tensor {name!r} (tensor {i}) has its data at offset {offset}, "
                                              f"not a multiple of the alignment {alignment}"))
    if expected is not None and offset != expected:
        # ggml writes tensors packed in order; engines before 2025 read data at any offset
        out.append(("tensor-data-order", f"tensor {name!r} (tensor {i}) has its data at offset {offset}, "
                                         f"not at {expected} where the previous tensor's data ends"))
    if 0 in ne:
        out.append(("zero-dim", f"tensor {name!r} (tensor {i}) has a dimension of 0 (shape {ne})"))
    return out


def _type_label(src: ByteSource, vtype: int) -> str:
    """"UINT32", "STRING", "ARRAY[STRING]" ... of the value that starts at ``src.pos``."""
    if vtype != 9:
        return VALUE_TYPE_NAMES.get(vtype, str(vtype))
    raw = src.peek(4)
    atype = int.from_bytes(raw, "little" if src.endian == "<" else "big") if len(raw) == 4 else -1
    return f"ARRAY[{VALUE_TYPE_NAMES.get(atype, str(atype))}]"


def _array_shape(kv: dict[str, Any], kv_types: dict[str, str], key: str) -> tuple[str, int] | None:
    """(element type, length) of an array value; (value type, 0) for a key that is not an array;
    None when the key is absent."""
    t = kv_types.get(key, "")
    v = kv.get(key)
    if not t.startswith("ARRAY["):
        return (t, 0) if t else None
    n = len(v) if isinstance(v, list) else int(v.get("length", 0)) if isinstance(v, dict) else 0
    return t[6:-1], n


def _version_and_endian(src: ByteSource) -> tuple[int, str]:
    raw = src.take(4, "version")
    v_le = int.from_bytes(raw, "little")
    v_be = int.from_bytes(raw, "big")
    if 1 <= v_le <= 0xFFFF:
        return v_le, "<"
    if 1 <= v_be <= 0xFFFF:
        return v_be, ">"
    raise src.error("version", f"a GGUF version 1, 2 or 3 (got 0x{v_le:08x})", 4)


def read(f: BinaryIO, path: str, size: int, *, with_kv: bool = False, with_vocab: bool = False) -> FileFacts:
    src = ByteSource(f, path, size)
    src.take(4, "magic")
    version, endian = _version_and_endian(src)
    src.endian = endian
    # GGUF v1 is read on purpose although ggml refuses it since Nov 2023: the gguf-2023-11 backend
    # still loads it, and the probe can say so (the only deliberate difference from ggml's reader)
    if version not in (1, 2, 3):
        raise src.error("version", f"GGUF version 1, 2 or 3 (got {version}; a newer GGUF revision "
                                   f"or a damaged file)", 4)
    g = _Gguf(src, version, with_kv, with_vocab)
    n_tensors = src.unpack(g.len_fmt, "n_tensors")[0]
    n_kv = src.unpack(g.len_fmt, "n_kv")[0]
    # a key/value takes at least: key length + 1 key byte + u32 type + 1 value byte
    min_kv = g.len_size + 1 + 4 + 1
    if n_kv * min_kv > src.remaining:
        raise src.error("n_kv", f"at most {src.remaining // min_kv} key/values in the "
                                f"{src.remaining} bytes left (got {n_kv})", 8 + g.len_size)
    # a tensor info takes at least: name length + u32 n_dims + u32 type + u64 offset
    min_ti = g.len_size + 4 + 4 + 8
    if n_tensors * min_ti > src.remaining:
        raise src.error("n_tensors", f"at most {src.remaining // min_ti} tensor infos in the "
                                     f"{src.remaining} bytes left (got {n_tensors})", 8)

    kv: dict[str, Any] = {}
    kv_types: dict[str, str] = {}
    notes: list[str] = []
    vocab: VocabFacts | None = None
    anomalies = _Anomalies()
    for i in range(n_kv):
        key = g.string(f"kv[{i}] key", MAX_KEY_LEN)
        # an empty or repeated key is readable (ggml before 2025 reads both, keeping the first value
        # of a key, as gguf_find_key finds it); which era refuses it is the manifest's to say
        if not key:
            anomalies.add("empty-key", f"empty key at kv {i}")
        repeated = key in kv_types
        if repeated:
            anomalies.add("duplicate-key", f"duplicate key {key!r} at kv {i}")
        vtype = src.u32(f"kv[{i}] ({key}) value type")
        label = _type_label(src, vtype)
        if label == "ARRAY[ARRAY]":
            anomalies.add("nested-array", f"array of arrays in key {key!r} at kv {i}")
        if key == "tokenizer.ggml.tokens" and vtype == 9 and not repeated:
            val, vocab = g.tokens(f"kv[{i}] ({key})", keep=with_vocab)
        else:
            val = g.value(vtype, f"kv[{i}] ({key})", keep_arrays=with_vocab and not repeated)
        if not repeated:
            kv_types[key] = label
            kv[key] = val
    if vocab is not None:
        vocab.scores = _array_shape(kv, kv_types, "tokenizer.ggml.scores")
        vocab.token_types = _array_shape(kv, kv_types, "tokenizer.ggml.token_type")

    # alignment: checked before the tensor infos, whose offsets must be multiples of it
    alignment = kv.get("general.alignment", 32)
    if "general.alignment" in kv and kv_types["general.alignment"] != "UINT32":
        raise src.error("general.alignment", f"a UINT32 value (got {kv_types['general.alignment']}; "
                                             f"llama.cpp aborts on any other type)")
    if alignment <= 0 or alignment & (alignment - 1):
        raise src.error("general.alignment", f"a power of two (got {alignment!r})")

    # tensor infos
    stats: dict[str, TensorTypeStat] = {}
    n_params = 0
    max_end = 0
    split = False
    names: set[str] = set()
    shapes: dict[str, tuple[str, tuple[int, ...], int]] = {}
    unknown_types: set[int] = set()
    ne_fmt = "I" if g.v1 else "q"
    table = _TENSOR_TYPES
    #: where the next tensor's data must start (ggml packs tensors in order, each padded to the
    #: alignment); None once a tensor of unknown size makes it unknowable
    expected: int | None = 0
    # longest plain tensor info: name length, name (< GGML_MAX_NAME), n_dims, 4 dims, type, offset
    max_ti = g.len_size + GGML_MAX_NAME + 4 + 4 * (4 if g.v1 else 8) + 4 + 8
    ti_structs = _tensor_info_structs(endian, g.len_fmt, ne_fmt)
    for i in range(n_tensors):
        name_off = src.pos
        # the common case, a plain tensor info, read in one go and checked at once; anything unusual
        # (and every error) takes the careful field-by-field path below, from the same offset
        buf, rel = src.window(max_ti)
        rec = _plain_tensor_info(buf, rel, ti_structs)
        plain = False
        if rec is not None and expected is not None:
            name, name_len, ne_t, ttype, offset, rec_end = rec
            ne = list(ne_t)
            plain = ttype in table and not _tensor_info_error(name, name_len, names, alignment, len(ne), ne, ttype,
                                                              offset) \
                and not _tensor_info_anomalies(i, name, ne, offset, expected, alignment)
        if plain:
            src.pos = src.buf_start + rec_end
        else:
            name = g.string(f"tensor_info[{i}] name", MAX_TENSOR_NAME)
            name_len = src.pos - name_off - g.len_size  # the length in bytes, as stored
            label = f"tensor_info[{i}] ({name})"
            at = {"name": name_off}

            def refuse(err: tuple[str, str] | None) -> None:
                if err is not None:
                    raise src.error(f"{label} {err[0]}", err[1], at[err[0]])

            refuse(_tensor_info_error(name, name_len, names, alignment))
            at["n_dims"] = src.pos
            n_dims = src.u32(f"{label} n_dims")
            refuse(_tensor_info_error(name, name_len, names, alignment, n_dims))
            at["ne"] = at["ne[0]"] = src.pos
            ne = list(src.unpack(ne_fmt * n_dims, f"{label} ne"))
            refuse(_tensor_info_error(name, name_len, names, alignment, n_dims, ne))
            ttype = src.u32(f"{label} type")
            offset = src.u64(f"{label} offset")
            refuse(_tensor_info_error(name, name_len, names, alignment, n_dims, ne, ttype, offset))
            if ttype not in table:
                unknown_types.add(ttype)
            for kind, detail in _tensor_info_anomalies(i, name, ne, offset, expected, alignment):
                anomalies.add(kind, detail)
                if kind == "tensor-data-order":
                    expected = None  # one such record says it; the packing of the rest is not checked
        t = table.get(ttype)
        n_el = prod(ne)
        nbytes = n_el // t.block * t.size if t is not None else 0
        tname = _type_name(ttype)
        if t is None:
            expected = None
        elif expected is not None:
            expected += nbytes + (-nbytes % alignment)
        st = stats.setdefault(tname, TensorTypeStat())
        st.count += 1
        st.bytes += nbytes
        n_params += n_el
        max_end = max(max_end, offset + nbytes)
        names.add(name)
        shapes[name] = (tname, tuple(ne), nbytes)
        if not split and _SPLIT_EXPERT.match(name):
            split = True

    # data start
    header_end = src.pos
    data_offset = header_end + (-header_end % alignment)

    arch = kv.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    hp = _hparams(kv, arch)
    file_type = kv.get("general.file_type")
    file_type = int_or_none(file_type)
    tok = kv.get("tokenizer.ggml.model")
    tmpl = kv.get("tokenizer.chat_template")
    gtype = kv.get("general.type")
    vocab_only = n_tensors == 0
    kind = "lora" if gtype == "adapter" else ("vocab-only" if vocab_only else "model")

    facts = FileFacts(
        path=path, size=size, format="gguf", format_version=version, kind=kind,
        endianness="big" if endian == ">" else "little", architecture=arch, hparams=hp,
        file_type=file_type, file_type_name=ftype_name(file_type, gguf=True), quant_layout="pr1508",
        tensor_types=stats, n_tensors=n_tensors, n_params=n_params,
        tokenizer=tok if isinstance(tok, str) else None,
        chat_template=tmpl if isinstance(tmpl, str) else None,
        vocab_only=vocab_only, split_experts=split, data_offset=data_offset,
        data_bytes_expected=max_end, notes=notes, tensor_names=frozenset(names), tensors=shapes,
        vocab=vocab, kv_types=kv_types, alignment=alignment, anomalies=anomalies.records(),
    )
    if n_tensors and data_offset + max_end > size:
        facts.truncated = True
        notes.append(f"tensor data needs {max_end} bytes from byte {data_offset}, but the file has "
                     f"{max(0, size - data_offset)} (file cut short, e.g. an interrupted download)")
    if unknown_types:
        notes.append("tensor type id(s) " + ", ".join(map(str, sorted(unknown_types)))
                     + " unknown to the 2026-10 ggml (a newer type, a removed one, or a damaged file); "
                     "their sizes are not counted")
    if split:
        notes.append("MoE experts stored as one tensor per expert (blk.N.ffn_*.E.weight, Dec 2023-Apr "
                     "2024 conversions)")
    if endian == ">":
        notes.append("big-endian GGUF: only builds for big-endian hosts read it")
    if with_kv or with_vocab:
        facts.kv = kv
    facts.description = _describe(facts, kv)
    return facts


def _bool_as_number(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    return v


def _hparams(kv: dict[str, Any], arch: str | None) -> dict[str, Any]:
    hp: dict[str, Any] = {}
    toks = kv.get("tokenizer.ggml.tokens")
    if isinstance(toks, list):
        hp["n_vocab"] = len(toks)
    elif isinstance(toks, dict) and "length" in toks:
        hp["n_vocab"] = toks["length"]
    if not arch:
        return hp
    keys = {
        "n_ctx_train": "context_length",
        "n_embd": "embedding_length",
        "n_layer": "block_count",
        "n_ff": "feed_forward_length",
        "n_head": "attention.head_count",
        "n_head_kv": "attention.head_count_kv",
        "n_rot": "rope.dimension_count",
        "rope_freq_base": "rope.freq_base",
        "expert_count": "expert_count",
        "expert_used_count": "expert_used_count",
        "rms_norm_eps": "attention.layer_norm_rms_epsilon",
        "norm_eps": "attention.layer_norm_epsilon",
        # head sizes and the attention/state layout the memory estimate needs (loader/memory.py)
        "key_length": "attention.key_length",
        "value_length": "attention.value_length",
        "sliding_window": "attention.sliding_window",
        "sliding_window_pattern": "attention.sliding_window_pattern",
        "ssm_conv_kernel": "ssm.conv_kernel",
        "ssm_inner_size": "ssm.inner_size",
        "ssm_state_size": "ssm.state_size",
        "ssm_group_count": "ssm.group_count",
        "wkv_head_size": "wkv.head_size",
        "token_shift_count": "token_shift_count",
    }
    for name, suffix in keys.items():
        v = kv.get(f"{arch}.{suffix}")
        if v is not None:
            hp[name] = _bool_as_number(v)
    prefix = kv.get("tokenizer.ggml.add_space_prefix")  # SentencePiece's dummy prefix (default: on)
    if isinstance(prefix, bool):
        hp["add_space_prefix"] = prefix
    if "n_vocab" not in hp and isinstance(kv.get(f"{arch}.vocab_size"), int):
        hp["n_vocab"] = kv[f"{arch}.vocab_size"]
    return hp


def _describe(facts: FileFacts, kv: dict[str, Any]) -> str:
    arch = facts.architecture or "unknown architecture"
    parts = [f"GGUF v{facts.format_version} {arch}"]
    if facts.endianness == "big":
        parts[0] += " (big-endian)"
    name = kv.get("general.name")
    if isinstance(name, str) and name:
        parts[0] += f" '{name[:60]}'"
    if facts.kind == "vocab-only":
        parts.append("vocabulary only (no tensors)")
    elif facts.kind == "lora":
        parts.append("LoRA adapter")
    if facts.file_type_name:
        parts.append(ftype_phrase(facts.file_type_name))
    elif facts.tensor_types:
        big = max(facts.tensor_types.items(), key=lambda kv_: kv_[1].bytes)[0]
        parts.append(f"mostly {big}")
    if facts.tokenizer:
        parts.append(f"{facts.tokenizer} tokenizer")
    if facts.n_tensors:
        parts.append(f"{facts.n_tensors} tensors")
    if facts.truncated:
        parts.append("TRUNCATED")
    return ", ".join(parts)
