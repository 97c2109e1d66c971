"""Write tiny, deterministic model files in every container the loader understands.

The central object is :class:`TinyLlama`: ONE small LLaMA weight set (same seed -> the same float32
values) plus a vocabulary, which :func:`write_llama` writes as unversioned ggml, ggmf v1, ggjt v1-v3
or GGUF v1-v3 (GGUF v3 also big-endian).  Every backend can then be compared on identical weights.
:class:`TinyGPTJ` / :func:`write_gptj` and :class:`TinyMPT` / :func:`write_mpt` do the same for the
GPT4All-era GPT-J (``ggml``) and MPT (``ggmm`` and ggml-examples) files, and :class:`TinyFalcon`,
:class:`TinyReplit`, :class:`TinyStarCoder`, :class:`TinyBert` with :func:`write_zoo` (``write_falcon``
...) for the rest of GPT4All's 2023 zoo; their headers and tensor tables come from :mod:`.zoo`.

Only F32 and F16 are written (1-D tensors always F32), plus Q4_0 for the zoo (:func:`quantize_q4_0`);
other quantized files are made by the engines' own quantizers from these.  Pure Python
(``struct``/``array``), no third-party packages.

Example::

    from gpt4all_loader.formats.writer import TinyLlama, write_llama
    m = TinyLlama(seed=1)
    write_llama("tiny-ggjt-v3.bin", m, "ggjt", version=3, ftype="f16")
    write_llama("tiny.gguf", m, "gguf", chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
"""
from __future__ import annotations

import math
import os
import random
import struct
import sys
from array import array
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Sequence, TypeAlias

from .gguf import GgufHeader, TokenType, ValueType
from .zoo import BERT, FALCON, GPTJ, MPT_GGML, MPT_GGMM, REPLIT, STARCODER, Architecture, ftype_of

__all__ = ["TinyLlama", "TinyGPTJ", "TinyMPT", "TinyGemma3", "TinyMamba", "write_llama", "write_gptj", "write_mpt",
           "write_gguf", "write_gemma3", "write_mamba", "LEGACY_TO_GGUF", "gguf_name", "gptj_header", "ggmm_header",
           "legacy_tensor_header", "TinyZoo", "TinyFalcon", "TinyReplit", "TinyStarCoder", "TinyBert", "write_zoo",
           "write_falcon", "write_replit", "write_starcoder", "write_bert", "zoo_header", "quantize_q4_0"]

_FTYPES = {"f32": 0, "f16": 1}

#: (key, GGUF value type, value); an array as (key, (ValueType.ARRAY, element type), list)
KeyValue: TypeAlias = "tuple[str, int | tuple[int, int], Any]"
#: (name, ggml type id, ne) for zero-filled data, or (name, ggml type id, ne, data bytes)
TensorSpec: TypeAlias = "tuple[str, int, Sequence[int]] | tuple[str, int, Sequence[int], bytes]"

#: words (and, below, all their prefixes) that make the vocabulary tokenize English sensibly
_WORDS = [
    " the", " of", " and", " to", " in", " is", " that", " it", " was", " for", " on", " with", " as",
    " Hello", " world", "Hello", " The", " Once", " once", " upon", " time", " there", " lived", " little",
    " cat", " dog", " you", " he", " she", " they", " said", " story", " model", " file", "ing", "ed", "er",
    " 1", " 2", " 3",
]


def _pieces() -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for w in _WORDS:
        for k in range(2, len(w) + 1):
            p = w[:k]
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out




def _uniform(seed: int, name: str, n: int, lo: float, hi: float) -> array[float]:
    rng = random.Random(f"{seed}:{name}")
    r = rng.random
    span = hi - lo
    return array("f", [lo + span * r() for _ in range(n)])


class _Tiny:
    """Tensors by name: shape (ne[0] first) and lazily generated float32 values."""

    seed: int

    def __init__(self) -> None:
        self._cache: dict[str, array[float]] = {}

    def tensor_shapes(self) -> dict[str, list[int]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:  # pragma: no cover
        raise NotImplementedError

    def weights(self, name: str) -> array[float]:
        """The float32 values of tensor ``name`` (row-major, ne[0] fastest); same seed, same values."""
        w = self._cache.get(name)
        if w is None:
            shape = self.tensor_shapes()[name]
            lo, hi = self._init_range(name, shape)
            w = self._cache[name] = _uniform(self.seed, name, math.prod(shape), lo, hi)
        return w

    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.tensor_shapes().values())


class TinyLlama(_Tiny):
    """A tiny LLaMA: hparams, a vocabulary, and deterministic weights under legacy tensor names.

    ``n_layer`` defaults to 32 because the spring-2023 loaders size scratch buffers from a table of
    known layer counts (32 = "7B") and refuse others.  ``n_vocab`` defaults to the built-in vocabulary
    (3 control tokens, 256 byte tokens, word pieces); a larger value pads with filler pieces.
    ``space_piece`` adds a piece for a lone space before the word pieces.
    """

    def __init__(self, seed: int = 0, n_vocab: int | None = None, n_embd: int = 64, n_head: int = 4,
                 n_head_kv: int | None = None, n_layer: int = 32, n_mult: int = 32, n_ctx: int = 256,
                 rms_norm_eps: float = 1e-6, space_piece: bool = False):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
        n_head_kv = n_head if n_head_kv is None else n_head_kv
        if n_head % n_head_kv:
            raise ValueError(f"n_head {n_head} is not a multiple of n_head_kv {n_head_kv}")
        self.seed, self.n_embd, self.n_head, self.n_head_kv = seed, n_embd, n_head, n_head_kv
        self.n_layer, self.n_mult, self.n_ctx, self.rms_norm_eps = n_layer, n_mult, n_ctx, rms_norm_eps
        self.n_ff = ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult
        self.n_rot = n_embd // n_head
        # space_piece: a piece for a lone space ("\u2581" in GGUF), as every real LLaMA vocabulary has;
        # without it the GGUF eras spell a space as the three UTF-8 bytes of "\u2581"
        words = ([" "] if space_piece else []) + _pieces()
        base = 3 + 256 + len(words)
        n_vocab = base if n_vocab is None else n_vocab
        if n_vocab < base:
            raise ValueError(f"n_vocab must be at least {base} (control, byte and word tokens)")
        words += [f"<extra_{i}>" for i in range(n_vocab - base)]
        self.words = words
        self.n_vocab = n_vocab
        self.bos_id, self.eos_id, self.unk_id = 1, 2, 0

    # -- vocabulary --------------------------------------------------------------------------------
    def gguf_vocab(self) -> tuple[list[str], list[float], list[int]]:
        """Tokens, scores and token types as GGUF stores them (SentencePiece style)."""
        toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        toks += [w.replace(" ", "\u2581") for w in self.words]
        scores = [0.0] * 259 + [-float(i) for i in range(len(self.words))]
        T = TokenType
        types: list[int] = [T.UNKNOWN, T.CONTROL, T.CONTROL]
        types += [T.BYTE] * 256 + [T.NORMAL] * len(self.words)
        return toks, scores, types

    def legacy_vocab(self) -> list[tuple[bytes, float]]:
        """(text, score) as the 2023 converters wrote them: byte tokens as the raw byte (the 2023
        tokenizers fall back to id = byte + 3), control tokens empty, spaces as real spaces."""
        out = [(" \u2047 ".encode(), 0.0), (b"", 0.0), (b"", 0.0)]
        out += [(bytes([b]), 0.0) for b in range(256)]
        out += [(w.encode(), -float(i)) for i, w in enumerate(self.words)]
        return out

    # -- tensors -----------------------------------------------------------------------------------
    def tensor_shapes(self) -> dict[str, list[int]]:
        """Legacy tensor names -> ne (ne[0] = row length), in the order the 2023 converters wrote."""
        e, f, v = self.n_embd, self.n_ff, self.n_vocab
        kv = e * self.n_head_kv // self.n_head
        s: dict[str, list[int]] = {"tok_embeddings.weight": [e, v], "norm.weight": [e], "output.weight": [e, v]}
        for i in range(self.n_layer):
            p = f"layers.{i}."
            s[p + "attention.wq.weight"] = [e, e]
            s[p + "attention.wk.weight"] = [e, kv]
            s[p + "attention.wv.weight"] = [e, kv]
            s[p + "attention.wo.weight"] = [e, e]
            s[p + "attention_norm.weight"] = [e]
            s[p + "feed_forward.w1.weight"] = [e, f]
            s[p + "feed_forward.w2.weight"] = [f, e]
            s[p + "feed_forward.w3.weight"] = [e, f]
            s[p + "ffn_norm.weight"] = [e]
        return s

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:
        if len(shape) == 1:
            return 0.9, 1.1  # norms ~1
        if name == "tok_embeddings.weight":
            return -0.5, 0.5
        b = 1.0 / math.sqrt(shape[0])
        if name == "output.weight":
            b *= 3.0  # well-spread logits
        return -b, b


#: legacy LLaMA tensor name parts -> GGUF names
LEGACY_TO_GGUF = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up",
}


def gguf_name(legacy: str) -> str:
    """``layers.3.feed_forward.w1.weight`` -> ``blk.3.ffn_gate.weight``."""
    if legacy in LEGACY_TO_GGUF:
        return LEGACY_TO_GGUF[legacy]
    _, layer, rest = legacy.split(".", 2)
    part = rest[: -len(".weight")]
    return f"blk.{layer}.{LEGACY_TO_GGUF[part]}.weight"


# -- tensor data encoding -----------------------------------------------------------------------------
def _data(values: array[float], ttype: int, endian: str) -> bytes:
    if ttype == 0:
        if (endian == ">") == (sys.byteorder == "little"):
            a = array("f", values)
            a.byteswap()
            return a.tobytes()
        return values.tobytes()
    return struct.pack(f"{endian}{len(values)}e", *values)


def _ttype(shape: list[int], ftype: int, force_f32: bool = False) -> int:
    return 0 if (len(shape) == 1 or force_f32) else ftype


def _pad(f: BinaryIO, align: int) -> None:
    pos = f.tell()
    if pos % align:
        f.write(b"\0" * (align - pos % align))


def legacy_tensor_header(name: str, shape: list[int], ttype: int) -> bytes:
    """A ggml-era tensor record before its data: n_dims, name length, type, ne[], name."""
    nb = name.encode()
    return struct.pack(f"<3i{len(shape)}i", len(shape), len(nb), ttype, *shape) + nb


def _legacy_tensor(f: BinaryIO, name: str, shape: list[int], ttype: int, values: array[float], align: int) -> None:
    f.write(legacy_tensor_header(name, shape, ttype))
    if align:
        _pad(f, align)
    f.write(_data(values, ttype, "<"))


def _check_ftype(ftype: str) -> int:
    if ftype not in _FTYPES:
        raise ValueError(f"ftype must be 'f32' or 'f16' (got {ftype!r}); quantize with an engine's quantizer")
    return _FTYPES[ftype]


# -- LLaMA ----------------------------------------------------------------------------------------------
def write_llama(path: str | os.PathLike[str], model: TinyLlama, fmt: str, version: int | None = None,
                ftype: str = "f32", vocab_only: bool = False, endian: str = "little",
                chat_template: str | None = None, name: str = "tiny-llama") -> Path:
    """Write ``model`` as ``fmt`` in {"ggml", "ggmf", "ggjt", "gguf"} and return the path.

    ``version``: ggmf 1; ggjt 1, 2 or 3 (default 3); gguf 1, 2 or 3 (default 3).  ``endian="big"``
    only for GGUF v3.  ``chat_template`` only for GGUF (``tokenizer.chat_template``).
    """
    ft = _check_ftype(ftype)
    path = Path(path)
    if fmt == "gguf":
        version = 3 if version is None else version
        if version not in (1, 2, 3):
            raise ValueError(f"GGUF version must be 1, 2 or 3 (got {version})")
        if endian not in ("little", "big") or (endian == "big" and version != 3):
            raise ValueError("big-endian GGUF exists only as version 3; endian is 'little' or 'big'")
        _write_gguf(path, model, version, ft, vocab_only, "<" if endian == "little" else ">",
                    chat_template, name)
        return path
    if endian != "little" or chat_template is not None:
        raise ValueError("legacy containers are little-endian only and have no chat template")
    if model.n_head_kv != model.n_head:
        raise ValueError("legacy LLaMA containers cannot state n_head_kv; use GGUF for GQA models")
    magic, version = {
        "ggml": (0x67676D6C, 0 if version in (None, 0) else -1),
        "ggmf": (0x67676D66, 1 if version in (None, 1) else -1),
        "ggjt": (0x67676A74, 3 if version is None else (version if version in (1, 2, 3) else -1)),
    }.get(fmt, (None, -1))
    if magic is None or version < 0:
        raise ValueError(f"unsupported container/version {fmt!r}/{version!r}: ggml (no version), ggmf 1, "
                         f"ggjt 1-3, gguf 1-3")
    align = 32 if fmt == "ggjt" else 0
    with open(path, "wb") as f:
        f.write(struct.pack("<I", magic))
        if fmt != "ggml":
            f.write(struct.pack("<I", version))
        f.write(struct.pack("<7i", model.n_vocab, model.n_embd, model.n_mult, model.n_head, model.n_layer,
                            model.n_rot, ft))
        for text, score in model.legacy_vocab():
            f.write(struct.pack("<I", len(text)))
            f.write(text)
            if fmt != "ggml":
                f.write(struct.pack("<f", score))
        if not vocab_only:
            for tname, shape in model.tensor_shapes().items():
                _legacy_tensor(f, tname, shape, _ttype(shape, ft), model.weights(tname), align)
    return path


def _write_gguf(path: Path, m: TinyLlama, version: int, ft: int, vocab_only: bool, e: str,
                chat_template: str | None, name: str) -> None:
    toks, scores, types = m.gguf_vocab()
    V = ValueType
    kvs: list[KeyValue] = [
        ("general.architecture", V.STRING, "llama"),
        ("general.name", V.STRING, name),
        ("general.file_type", V.UINT32, ft),
        ("general.alignment", V.UINT32, 32),
        ("llama.context_length", V.UINT32, m.n_ctx),
        ("llama.embedding_length", V.UINT32, m.n_embd),
        ("llama.block_count", V.UINT32, m.n_layer),
        ("llama.feed_forward_length", V.UINT32, m.n_ff),
        ("llama.rope.dimension_count", V.UINT32, m.n_rot),
        ("llama.attention.head_count", V.UINT32, m.n_head),
        ("llama.attention.head_count_kv", V.UINT32, m.n_head_kv),
        ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, m.rms_norm_eps),
        ("tokenizer.ggml.model", V.STRING, "llama"),
        ("tokenizer.ggml.tokens", (V.ARRAY, V.STRING), toks),
        ("tokenizer.ggml.scores", (V.ARRAY, V.FLOAT32), scores),
        ("tokenizer.ggml.token_type", (V.ARRAY, V.INT32), types),
        ("tokenizer.ggml.bos_token_id", V.UINT32, m.bos_id),
        ("tokenizer.ggml.eos_token_id", V.UINT32, m.eos_id),
        ("tokenizer.ggml.unknown_token_id", V.UINT32, m.unk_id),
    ]
    if chat_template is not None:
        kvs.append(("tokenizer.chat_template", V.STRING, chat_template))
    shapes = {} if vocab_only else m.tensor_shapes()
    tensors = [(gguf_name(lname), _ttype(shape, ft), shape, _data(m.weights(lname), _ttype(shape, ft), e))
               for lname, shape in shapes.items()]
    _write(path, _header(kvs, version, e), tensors, 32)


def write_gguf(path: str | os.PathLike[str], kv: Sequence[KeyValue],
               tensors: Sequence[TensorSpec], version: int = 3, endian: str = "little",
               alignment: int = 32) -> Path:
    """A GGUF file with the given key/values and tensors (for tests of odd files).

    ``kv``: (key, GGUF value type, value); arrays as (key, (9, element type), list).
    ``tensors``: (name, ggml type id, ne) for zero-filled data, or (name, ggml type id, ne, data bytes);
    sizes from :func:`ggml_types.tensor_nbytes`.
    """
    path = Path(path)
    _write(path, _header(kv, version, "<" if endian == "little" else ">"), tensors, alignment)
    return path


def _header(kv: Sequence[KeyValue], version: int, e: str) -> GgufHeader:
    head = GgufHeader(version, e)
    for key, vt, val in kv:
        if isinstance(vt, tuple):
            head.add_array(key, vt[1], val)
        else:
            head.add(key, vt, val)
    return head


def _write(path: Path, head: GgufHeader, tensors: Sequence[TensorSpec], alignment: int) -> None:
    """The header, then each tensor's data (zeros when none is given) at its aligned offset."""
    from .ggml_types import tensor_nbytes

    blobs: list[tuple[bytes | None, int]] = []
    for name, tt, shape, *data in tensors:
        nbytes = tensor_nbytes(tt, shape)
        if data and len(data[0]) != nbytes:
            raise ValueError(f"tensor {name}: {len(data[0])} bytes of data, the shape needs {nbytes}")
        head.add_tensor(name, shape, tt, nbytes)
        blobs.append((data[0] if data else None, nbytes))
    header, offsets = head.encode(alignment)
    with open(path, "wb") as f:
        f.write(header)
        for off, (blob, nbytes) in zip(offsets, blobs):
            f.write(b"\0" * (len(header) + off - f.tell()))
            f.write(blob if blob is not None else b"\0" * nbytes)


# -- Gemma 3 (GGUF only) -----------------------------------------------------------------------------
class TinyGemma3(_Tiny):
    """A tiny Gemma-3-style model: head size (``key_length``) unlike ``n_embd / n_head``, sliding-window
    attention on five of every six layers, Q/K norms, post-norms, and an output tied to the token
    embedding, the traits that make its memory use differ from a LLaMA's.  The vocabulary is
    :class:`TinyLlama`'s (SentencePiece style), padded to ``n_vocab``."""

    def __init__(self, seed: int = 0, n_vocab: int = 2048, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2,
                 head_dim: int = 32, n_layer: int = 12, n_ff: int = 128, n_ctx: int = 8192, sliding_window: int = 64):
        super().__init__()
        self.vocab = TinyLlama(n_vocab=n_vocab)
        self.seed, self.n_vocab, self.n_embd, self.n_head, self.n_head_kv = seed, n_vocab, n_embd, n_head, n_head_kv
        self.head_dim, self.n_layer, self.n_ff, self.n_ctx = head_dim, n_layer, n_ff, n_ctx
        self.sliding_window = sliding_window

    def tensor_shapes(self) -> dict[str, list[int]]:
        e, f, v = self.n_embd, self.n_ff, self.n_vocab
        q, kv = self.head_dim * self.n_head, self.head_dim * self.n_head_kv
        s: dict[str, list[int]] = {"token_embd.weight": [e, v], "output_norm.weight": [e]}
        for i in range(self.n_layer):
            p = f"blk.{i}."
            s.update({p + "attn_norm.weight": [e], p + "attn_q.weight": [e, q], p + "attn_k.weight": [e, kv],
                      p + "attn_v.weight": [e, kv], p + "attn_output.weight": [q, e],
                      p + "attn_q_norm.weight": [self.head_dim], p + "attn_k_norm.weight": [self.head_dim],
                      p + "post_attention_norm.weight": [e], p + "ffn_norm.weight": [e],
                      p + "ffn_gate.weight": [e, f], p + "ffn_up.weight": [e, f], p + "ffn_down.weight": [f, e],
                      p + "post_ffw_norm.weight": [e]})
        return s

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:
        if len(shape) == 1:
            return -0.1, 0.1  # Gemma norms scale by (1 + w)
        b = 1.0 / math.sqrt(shape[0])
        return -b, b

    def kv(self, ftype: int) -> list[KeyValue]:
        U32, I32, F32, STR = ValueType.UINT32, ValueType.INT32, ValueType.FLOAT32, ValueType.STRING
        toks, scores, types = self.vocab.gguf_vocab()
        a = "gemma3"
        return [("general.architecture", STR, a), ("general.name", STR, "tiny-gemma3"),
                ("general.file_type", U32, ftype),
                (f"{a}.context_length", U32, self.n_ctx), (f"{a}.embedding_length", U32, self.n_embd),
                (f"{a}.block_count", U32, self.n_layer), (f"{a}.feed_forward_length", U32, self.n_ff),
                (f"{a}.attention.head_count", U32, self.n_head), (f"{a}.attention.head_count_kv", U32, self.n_head_kv),
                (f"{a}.attention.key_length", U32, self.head_dim), (f"{a}.attention.value_length", U32, self.head_dim),
                (f"{a}.attention.layer_norm_rms_epsilon", F32, 1e-6),
                (f"{a}.attention.sliding_window", U32, self.sliding_window), (f"{a}.rope.freq_base", F32, 1e6),
                ("tokenizer.ggml.model", STR, "llama"), ("tokenizer.ggml.tokens", (ValueType.ARRAY, STR), toks),
                ("tokenizer.ggml.scores", (ValueType.ARRAY, F32), scores),
                ("tokenizer.ggml.token_type", (ValueType.ARRAY, I32), types),
                ("tokenizer.ggml.bos_token_id", U32, self.vocab.bos_id),
                ("tokenizer.ggml.eos_token_id", U32, self.vocab.eos_id)]


def write_gemma3(path: str | os.PathLike[str], model: TinyGemma3, ftype: str = "f32") -> Path:
    """``model`` as a GGUF v3 file (matrices F32 or F16, 1-D tensors F32)."""
    ft = _check_ftype(ftype)
    tensors: list[TensorSpec] = []
    for name, shape in model.tensor_shapes().items():
        tt = _ttype(shape, ft)
        tensors.append((name, tt, shape, _data(model.weights(name), tt, "<")))
    return write_gguf(path, model.kv(ft), tensors)


class TinyMamba(_Tiny):
    """A tiny Mamba (selective state space, no attention): its memory is a fixed recurrent state per
    layer instead of a KV cache.  ``d_inner = 2 * n_embd`` (the only expansion llama.cpp supports)."""

    def __init__(self, seed: int = 0, n_vocab: int = 1024, n_embd: int = 64, n_layer: int = 4, d_conv: int = 4,
                 d_state: int = 16, dt_rank: int = 8, n_ctx: int = 2048):
        super().__init__()
        self.vocab = TinyLlama(n_vocab=n_vocab)
        self.seed, self.n_vocab, self.n_embd, self.n_layer, self.n_ctx = seed, n_vocab, n_embd, n_layer, n_ctx
        self.d_inner, self.d_conv, self.d_state, self.dt_rank = 2 * n_embd, d_conv, d_state, dt_rank

    def tensor_shapes(self) -> dict[str, list[int]]:
        e, di, ds, r = self.n_embd, self.d_inner, self.d_state, self.dt_rank
        s: dict[str, list[int]] = {"token_embd.weight": [e, self.n_vocab], "output_norm.weight": [e]}
        for i in range(self.n_layer):
            p = f"blk.{i}."
            s.update({p + "attn_norm.weight": [e], p + "ssm_in.weight": [e, 2 * di],
                      p + "ssm_conv1d.weight": [self.d_conv, di], p + "ssm_conv1d.bias": [di],
                      p + "ssm_x.weight": [di, r + 2 * ds], p + "ssm_dt.weight": [r, di], p + "ssm_dt.bias": [di],
                      p + "ssm_a": [ds, di], p + "ssm_d": [di], p + "ssm_out.weight": [di, e]})
        return s

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:
        if name.endswith("ssm_a"):
            return -1.0, -0.1  # A = -exp(A_log): negative, a decaying state
        if len(shape) == 1 or name.endswith("ssm_conv1d.weight"):
            return 0.9, 1.1 if name.endswith("norm.weight") else 0.1
        b = 1.0 / math.sqrt(shape[0])
        return -b, b

    def kv(self, ftype: int) -> list[KeyValue]:
        U32, I32, F32, STR = ValueType.UINT32, ValueType.INT32, ValueType.FLOAT32, ValueType.STRING
        toks, scores, types = self.vocab.gguf_vocab()
        a = "mamba"
        return [("general.architecture", STR, a), ("general.name", STR, "tiny-mamba"),
                ("general.file_type", U32, ftype),
                (f"{a}.context_length", U32, self.n_ctx), (f"{a}.embedding_length", U32, self.n_embd),
                (f"{a}.block_count", U32, self.n_layer), (f"{a}.feed_forward_length", U32, 0),
                (f"{a}.attention.head_count", U32, 0), (f"{a}.attention.layer_norm_rms_epsilon", F32, 1e-5),
                (f"{a}.ssm.conv_kernel", U32, self.d_conv), (f"{a}.ssm.inner_size", U32, self.d_inner),
                (f"{a}.ssm.state_size", U32, self.d_state), (f"{a}.ssm.time_step_rank", U32, self.dt_rank),
                ("tokenizer.ggml.model", STR, "llama"), ("tokenizer.ggml.tokens", (ValueType.ARRAY, STR), toks),
                ("tokenizer.ggml.scores", (ValueType.ARRAY, F32), scores),
                ("tokenizer.ggml.token_type", (ValueType.ARRAY, I32), types),
                ("tokenizer.ggml.bos_token_id", U32, self.vocab.bos_id),
                ("tokenizer.ggml.eos_token_id", U32, self.vocab.eos_id)]


def write_mamba(path: str | os.PathLike[str], model: TinyMamba, ftype: str = "f32") -> Path:
    """``model`` as a GGUF v3 file (the large matrices F32 or F16; convolution, A and 1-D tensors F32)."""
    ft = _check_ftype(ftype)
    tensors: list[TensorSpec] = []
    for name, shape in model.tensor_shapes().items():
        tt = _ttype(shape, ft, force_f32=name.endswith(("ssm_a", "ssm_conv1d.weight")))
        tensors.append((name, tt, shape, _data(model.weights(name), tt, "<")))
    return write_gguf(path, model.kv(ft), tensors)


# -- GPT-J and MPT (GPT4All era) ------------------------------------------------------------------------
def _gpt_vocab(n_vocab: int, specials: dict[int, bytes], utf8_safe: bool) -> list[bytes]:
    """ids 0..255 = single bytes, word pieces, filler up to n_vocab, specials at their ids."""
    toks: list[bytes] = []
    for b in range(256):
        toks.append(bytes([b]) if (b < 128 or not utf8_safe) else "\ufffd".encode())
    for w in _pieces():
        toks.append(w.encode())
    i = len(toks)
    while len(toks) < n_vocab:
        toks.append(f"<|filler_{i}|>".encode())
        i += 1
    for tid, text in specials.items():
        if tid < n_vocab:
            toks[tid] = text
    return toks


class TinyGPTJ(_Tiny):
    """A tiny GPT-J in GPT4All's ggml layout (n_vocab must be 50300..50400 for gpt4all 1.0.8)."""

    def __init__(self, seed: int = 0, n_vocab: int = 50400, n_ctx: int = 128, n_embd: int = 16,
                 n_head: int = 2, n_layer: int = 2, n_rot: int = 4):
        super().__init__()
        if n_embd % n_head or n_rot % 2 or n_rot > n_embd // n_head:
            raise ValueError("need n_embd % n_head == 0 and an even n_rot <= n_embd / n_head")
        if n_vocab < 50257:
            raise ValueError("n_vocab must be at least 50257 (end token at id 50256)")
        self.seed, self.n_vocab, self.n_ctx, self.n_embd = seed, n_vocab, n_ctx, n_embd
        self.n_head, self.n_layer, self.n_rot = n_head, n_layer, n_rot
        self.eos_id = 50256

    def vocab(self) -> list[bytes]:
        return _gpt_vocab(self.n_vocab, {50256: b"<|endoftext|>"}, utf8_safe=False)

    def tensor_shapes(self) -> dict[str, list[int]]:
        hp = {"n_vocab": self.n_vocab, "n_embd": self.n_embd, "n_layer": self.n_layer}
        return {n: list(sh) for n, (sh, _, _) in GPTJ.expected_tensors(hp).items()}

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:
        if name.endswith("bias"):
            return -0.02, 0.02
        if len(shape) == 1:
            return 0.9, 1.1
        if name == "transformer.wte.weight":
            return -0.5, 0.5
        b = 1.0 / math.sqrt(shape[0]) * (3.0 if name == "lm_head.weight" else 1.0)
        return -b, b


def gptj_header(n_vocab: int, n_ctx: int, n_embd: int, n_head: int, n_layer: int, n_rot: int, ftype: int,
                tokens: list[bytes]) -> bytes:
    """Magic, hparams and vocabulary of a GPT4All-era GPT-J ``ggml`` file (tensor records follow)."""
    return zoo_header(GPTJ, [n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot, ftype], tokens)


def ggmm_header(n_vocab: int, n_ctx: int, n_layer: int, n_head: int, n_embd: int, alibi_bias_max: float,
                clip_qkv: float, ftype: int, tokens: list[bytes], special: set[int]) -> bytes:
    """Magic, hparams and vocabulary of a GPT4All ``ggmm`` MPT file; bit 31 of a length marks a special token."""
    return zoo_header(MPT_GGMM, [n_vocab, n_ctx, n_layer, n_head, n_embd, alibi_bias_max, clip_qkv, ftype], tokens,
                      special=special)


def write_gptj(path: str | os.PathLike[str], model: TinyGPTJ, ftype: str = "f32") -> Path:
    """GPT-J ggml file as GPT4All (and the ggml examples) read it: magic "ggml", 7 hparams, vocab count,
    vocab of (u32 length, bytes), unaligned tensor records; 2-D weights in ``ftype``, 1-D F32."""
    ft = _check_ftype(ftype)
    path = Path(path)
    m = model
    with open(path, "wb") as f:
        f.write(gptj_header(m.n_vocab, m.n_ctx, m.n_embd, m.n_head, m.n_layer, m.n_rot, ft, m.vocab()))
        for name, shape in m.tensor_shapes().items():
            _legacy_tensor(f, name, shape, _ttype(shape, ft), m.weights(name), 0)
    return path


class TinyMPT(_Tiny):
    """A tiny MPT (ALiBi, no biases, tied embeddings).  Vocabulary: ids 0..127 ASCII bytes, 128..255
    U+FFFD placeholders (MPT converters store decoded text; lone bytes >= 0x80 are not valid UTF-8),
    then "<|endoftext|>", "<|im_start|>", "<|im_end|>" (special), word pieces, filler."""

    SPECIALS = (b"<|endoftext|>", b"<|im_start|>", b"<|im_end|>")

    def __init__(self, seed: int = 0, n_vocab: int = 512, n_ctx: int = 128, n_embd: int = 16,
                 n_head: int = 2, n_layer: int = 2, alibi_bias_max: float = 8.0, clip_qkv: float = 0.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        if n_vocab < 256 + 3 + len(_pieces()):
            raise ValueError(f"n_vocab must be at least {256 + 3 + len(_pieces())}")
        self.seed, self.n_vocab, self.n_ctx, self.n_embd = seed, n_vocab, n_ctx, n_embd
        self.n_head, self.n_layer, self.alibi_bias_max, self.clip_qkv = n_head, n_layer, alibi_bias_max, clip_qkv
        self.special_ids = list(range(256, 259))
        self.eos_id = 256

    def vocab(self) -> list[bytes]:
        toks = _gpt_vocab(self.n_vocab, {}, utf8_safe=True)
        # specials go right after the byte tokens; the word pieces shift up by three
        toks = toks[:256] + list(self.SPECIALS) + toks[256:self.n_vocab - 3]
        return toks

    def tensor_shapes(self) -> dict[str, list[int]]:
        hp = {"n_vocab": self.n_vocab, "n_embd": self.n_embd, "n_layer": self.n_layer}
        return {n: list(sh) for n, (sh, _, _) in MPT_GGMM.expected_tensors(hp).items()}

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:
        if len(shape) == 1:
            return 0.9, 1.1
        if name == "transformer.wte.weight":
            return -0.5, 0.5
        b = 1.0 / math.sqrt(shape[0])
        return -b, b


def write_mpt(path: str | os.PathLike[str], model: TinyMPT, layout: str = "ggmm", ftype: str = "f32") -> Path:
    """MPT file in GPT4All's ``ggmm`` layout (wte always F32, special tokens flagged with bit 31 of
    the length) or the ggml-examples ``ggml`` layout (``layout="ggml"``, read by ctransformers)."""
    ft = _check_ftype(ftype)
    path = Path(path)
    m = model
    toks = m.vocab()
    special = set(m.special_ids)
    with open(path, "wb") as f:
        if layout == "ggmm":
            f.write(ggmm_header(m.n_vocab, m.n_ctx, m.n_layer, m.n_head, m.n_embd, m.alibi_bias_max, m.clip_qkv,
                                ft, toks, special))
        elif layout == "ggml":
            f.write(zoo_header(MPT_GGML, [m.n_embd, m.n_ctx, m.n_head, m.n_layer, m.n_vocab, m.alibi_bias_max,
                                          m.clip_qkv, ft], toks))
        else:
            raise ValueError(f"layout must be 'ggmm' or 'ggml' (got {layout!r})")
        arch = MPT_GGMM if layout == "ggmm" else MPT_GGML
        roles = arch.expected_tensors({"n_vocab": m.n_vocab, "n_embd": m.n_embd, "n_layer": m.n_layer})
        for name, shape in m.tensor_shapes().items():
            # GPT4All's ggmm keeps the token embedding F32 (the weight role of the table says so)
            _legacy_tensor(f, name, shape, ft if roles[name][1] else 0, m.weights(name), 0)
    return path


# -- GPT4All's 2023 zoo: Falcon, Replit, StarCoder, BERT ------------------------------------------------
#: real-looking multi-character entries beyond the English word pieces: code, accents, CJK, emoji
ZOO_EXTRA_PIECES = [
    "def", " def", " return", "return", " print", "print", "import", " import", " self", "self", "():", "()",
    "(", ")", ":", "    ", "\n", "\n\n", "\t", " =", " +", " #", "é", " café", "caf", " naïve", "ü", "ñ", " über",
    "你好", "世界", "你", "好", "🙂", "👍", "日本", "語",
]
#: single characters (beyond printable ASCII) that the Replit and BERT test vocabularies hold as pieces
ZOO_EXTRA_CHARS = "éèêàçüöäñïôÉ你好世界日本語🙂👍—’"

_FALCON_SPECIALS = [">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<", ">>ANSWER<<",
                    ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<", ">>SUFFIX<<", ">>MIDDLE<<", "<|endoftext|>"]
_STARCODER_SPECIALS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>",
                       "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
                       "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<empty_output>", "<commit_before>",
                       "<commit_msg>", "<commit_after>", "<reponame>"]


def _greedy_vocab(specials: list[str], n_vocab: int) -> list[bytes]:
    """For gpt4all's greedy longest-match tokenizer: specials, the 256 single bytes (so every text
    tokenizes), word and code pieces, then unique fillers up to ``n_vocab``."""
    toks = [s.encode() for s in specials] + [bytes([b]) for b in range(256)]
    seen = set(toks)
    for w in _pieces() + ZOO_EXTRA_PIECES:
        t = w.encode()
        if t not in seen:
            seen.add(t)
            toks.append(t)
    if len(toks) > n_vocab:
        raise ValueError(f"n_vocab must be at least {len(toks)}")
    toks += [f"<|filler_{i}|>".encode() for i in range(len(toks), n_vocab)]
    return toks


class TinyZoo(_Tiny):
    """A tiny model of one :mod:`.zoo` architecture: hparams by the project's keys, a vocabulary, and
    deterministic weights for the architecture's tensor table."""

    arch: ClassVar[Architecture]

    def __init__(self, seed: int, hparams: dict[str, int]):
        super().__init__()
        self.seed = seed
        self.hparams = dict(hparams)
        self.hparams.setdefault("n_head_kv", self.hparams["n_head"])
        self.hparams.setdefault("n_ff", 4 * self.hparams["n_embd"])
        if self.hparams["n_embd"] % self.hparams["n_head"]:
            raise ValueError(f"n_embd {self.hparams['n_embd']} is not a multiple of n_head {self.hparams['n_head']}")
        self.skip: set[str] = set()  # optional tensors left out

    def __getattr__(self, key: str) -> int:
        hp = self.__dict__.get("hparams", {})
        if key in hp:
            return int(hp[key])
        raise AttributeError(key)

    def vocab(self) -> list[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    def scores(self) -> list[float]:
        return [0.0] * len(self.vocab())

    def header_values(self, ftype: int) -> list[int]:
        """The header integers in file order."""
        hp = dict(self.hparams, ftype=ftype)
        return [hp[f.key] for f in self.arch.header]

    def tensor_shapes(self) -> dict[str, list[int]]:
        return {n: list(s) for n, (s, _, _) in self.arch.expected_tensors(self.hparams).items() if n not in self.skip}

    def is_weight(self, name: str) -> bool:
        return self.arch.expected_tensors(self.hparams)[name][1]

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:
        if len(shape) == 1:
            return (-0.02, 0.02) if name.endswith(("bias", "/b")) else (0.9, 1.1)
        if "position" in name or name == "model/wpe" or "token_type" in name:
            return -0.1, 0.1
        if name in ("transformer.word_embeddings.weight", "transformer.wte.weight", "model/wte",
                    "embeddings.word_embeddings.weight"):
            return -0.5, 0.5
        b = 1.0 / math.sqrt(shape[0]) * (3.0 if name in ("lm_head.weight", "model/lm_head") else 1.0)
        return -b, b


class TinyFalcon(TinyZoo):
    """Falcon-7B's layout (gpt4all 1.0.8 needs n_vocab 65024..65100, falcon_version 7, n_head_kv 1 and an
    even head dimension).  Vocabulary: Falcon's 11 ``>>…<<`` specials, ``<|endoftext|>`` = 11 (the end
    token), the 256 single bytes, word/code/accent/CJK/emoji pieces, fillers."""

    arch = FALCON

    def __init__(self, seed: int = 0, n_vocab: int = 65024, n_embd: int = 8, n_head: int = 2, n_head_kv: int = 1,
                 n_layer: int = 2, falcon_version: int = 7):
        super().__init__(seed, {"n_vocab": n_vocab, "n_embd": n_embd, "n_head": n_head, "n_head_kv": n_head_kv,
                                "n_layer": n_layer, "falcon_version": falcon_version, "n_ctx_train": 2048})
        self.eos_id = 11

    def vocab(self) -> list[bytes]:
        return _greedy_vocab(_FALCON_SPECIALS, self.hparams["n_vocab"])


class TinyStarCoder(TinyZoo):
    """StarCoder's layout (gpt4all 1.0.8 needs n_vocab 49100..49290; K/V already widened to n_head heads).
    Vocabulary: ``<|endoftext|>`` = 0 (the end token) and StarCoder's other specials, the 256 single
    bytes, pieces, fillers.  ``lm_head=False`` leaves ``model/lm_head`` out (the loader reuses wte)."""

    arch = STARCODER

    def __init__(self, seed: int = 0, n_vocab: int = 49152, n_ctx: int = 128, n_embd: int = 8, n_head: int = 2,
                 n_layer: int = 2, lm_head: bool = True):
        super().__init__(seed, {"n_vocab": n_vocab, "n_ctx_train": n_ctx, "n_embd": n_embd, "n_head": n_head,
                                "n_layer": n_layer})
        if not lm_head:
            self.skip.add("model/lm_head")
        self.eos_id = 0

    def vocab(self) -> list[bytes]:
        return _greedy_vocab(_STARCODER_SPECIALS, self.hparams["n_vocab"])


class TinyReplit(TinyZoo):
    """Replit's layout.  Vocabulary of SentencePiece pieces with scores, spaces as "▁" (U+2581):
    ``<|endoftext|>`` = 0, ``<|padding|>`` = 1, the 256 ``<0xNN>`` byte pieces (which gpt4all's
    segmentation never matches, as in the real file), single characters (printable ASCII, newline, tab,
    :data:`ZOO_EXTRA_CHARS`) with low scores, word/code pieces with higher scores, fillers."""

    arch = REPLIT

    def __init__(self, seed: int = 0, n_vocab: int = 1024, n_ctx: int = 128, n_embd: int = 16, n_head: int = 2,
                 n_layer: int = 2):
        super().__init__(seed, {"n_vocab": n_vocab, "n_ctx_train": n_ctx, "n_embd": n_embd, "n_head": n_head,
                                "n_layer": n_layer})
        self.eos_id = 0
        pieces: list[tuple[str, float]] = [("<|endoftext|>", 0.0), ("<|padding|>", 0.0)]
        pieces += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
        chars = [chr(c) for c in range(0x21, 0x7F)] + ["\u2581", "\n", "\t"] + list(ZOO_EXTRA_CHARS)
        pieces += [(c, -10.0 - 0.001 * k) for k, c in enumerate(chars)]
        seen = {p for p, _ in pieces}
        k = 0
        for w in _pieces() + ZOO_EXTRA_PIECES:
            p = w.replace(" ", "\u2581")
            if p not in seen:
                seen.add(p)
                pieces.append((p, -3.0 - 0.001 * k))
                k += 1
        if len(pieces) > n_vocab:
            raise ValueError(f"n_vocab must be at least {len(pieces)}")
        pieces += [(f"<|filler_{i}|>", -30.0) for i in range(len(pieces), n_vocab)]
        self._pieces = pieces

    def vocab(self) -> list[bytes]:
        return [p.encode() for p, _ in self._pieces]

    def _init_range(self, name: str, shape: list[int]) -> tuple[float, float]:
        # the output is tied to wte: with embeddings that dominate the residual stream, greedy decoding
        # repeats its input token forever; small embeddings and strong blocks make it move on
        if name == "transformer.wte.weight":
            return -0.1, 0.1
        if len(shape) == 2:
            b = 4.0 / math.sqrt(shape[0])
            return -b, b
        return super()._init_range(name, shape)

    def scores(self) -> list[float]:
        return [s for _, s in self._pieces]


class TinyBert(TinyZoo):
    """BERT (Embed4All) layout.  A WordPiece vocabulary like bert-base-uncased: [PAD] = 0, [unusedN],
    [UNK] = 100, [CLS] = 101, [SEP] = 102, [MASK] = 103, single characters (printable ASCII without
    capitals), ``##`` continuations of letters and digits, whole words and ``##`` suffixes, fillers.
    gpt4all 1.0.8 needs n_vocab > 103 and every tensor's byte size a multiple of 16 (n_embd and
    n_intermediate multiples of 8)."""

    arch = BERT

    def __init__(self, seed: int = 0, n_vocab: int = 512, n_max_tokens: int = 128, n_embd: int = 32,
                 n_intermediate: int = 64, n_head: int = 4, n_layer: int = 2):
        super().__init__(seed, {"n_vocab": n_vocab, "n_ctx_train": n_max_tokens, "n_embd": n_embd,
                                "n_ff": n_intermediate, "n_head": n_head, "n_layer": n_layer})
        toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        toks += [chr(c) for c in range(0x21, 0x7F) if not "A" <= chr(c) <= "Z"]
        toks += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
        words = ["the", "of", "and", "to", "in", "is", "hello", "world", "once", "upon", "time", "there", "lived",
                 "little", "cat", "dog", "story", "model", "file", "def", "return", "print", "import", "self",
                 "cafe", "naive", "uber", "code", "##ing", "##ed", "##er", "##s", "##ly", "##lo", "##ld"]
        toks += [w for w in words if w not in toks]
        if len(toks) > n_vocab:
            raise ValueError(f"n_vocab must be at least {len(toks)}")
        toks += [f"[unused{i}]" for i in range(99, 99 + n_vocab - len(toks))]
        self._toks = toks
        self.eos_id = 102

    def vocab(self) -> list[bytes]:
        return [t.encode() for t in self._toks]


def zoo_header(arch: Architecture, values: Sequence[float], tokens: Sequence[bytes],
               scores: Sequence[float] | None = None, *, format_version: int = 3, count: int | None = None,
               special: set[int] | None = None) -> bytes:
    """Magic, header numbers (``values`` in file order), vocabulary of a :mod:`.zoo` architecture;
    tensor records follow.  ``count``: the repeated vocabulary count (StarCoder, GPT-J, MPT; default
    len(tokens)); ``special``: ids flagged as special tokens (GPT4All MPT)."""
    parts = [struct.pack("<I", arch.magic)]
    if arch.has_version:
        parts.append(struct.pack("<I", format_version))
    parts.append(struct.pack("<" + "".join(f.code for f in arch.header), *values))
    if arch.vocab_count_repeated:
        parts.append(struct.pack("<i", len(tokens) if count is None else count))
    flagged = special or set()
    for k, t in enumerate(tokens):
        flag = (1 << 31) if arch.vocab_special_bit and k in flagged else 0
        parts.append(struct.pack("<I", len(t) | flag) + t)
        if arch.vocab_scores:
            parts.append(struct.pack("<f", scores[k] if scores is not None else 0.0))
    return b"".join(parts)


def quantize_q4_0(values: array[float]) -> bytes:
    """Q4_0 blocks in the layout of ggml quant version 2 (ggjt v3, the ggml GPT4All's zoo libraries linked):
    per 32 values an f16 scale d and 16 bytes whose low nibbles hold values 0-15 and high nibbles 16-31,
    each value (q - 8) * d; d = the value of largest magnitude / -8, as ggml's reference quantizer."""
    if len(values) % 32:
        raise ValueError("Q4_0 needs a multiple of 32 values per row")
    out = bytearray()
    for b in range(0, len(values), 32):
        x = values[b:b + 32]
        m = max(x, key=abs)
        d = m / -8.0
        d16 = struct.unpack("<e", struct.pack("<e", d))[0]
        inv = 1.0 / d if d else 0.0
        q = [min(15, int(v * inv + 8.5)) for v in x]
        out += struct.pack("<e", d16) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return bytes(out)


#: weight types write_zoo writes: name -> (ggml type id, encoder of float32 values)
_ZOO_WTYPES = {"f32": "F32", "f16": "F16", "q4_0": "Q4_0"}


def write_zoo(path: str | os.PathLike[str], model: TinyZoo, ftype: str = "f32", format_version: int = 3) -> Path:
    """``model`` in its architecture's GPT4All layout: weights (``weight`` rules) F32, F16 or Q4_0 (``ftype``
    "q4_0": rows must be multiples of 32 values), the rest F32, tensor data aligned where the architecture
    says (Falcon: 32 bytes)."""
    if ftype not in _ZOO_WTYPES:
        raise ValueError(f"ftype must be one of {', '.join(_ZOO_WTYPES)} (got {ftype!r})")
    wtype = _ZOO_WTYPES[ftype]
    tt_w = {"F32": 0, "F16": 1, "Q4_0": 2}[wtype]
    path = Path(path)
    arch = model.arch
    with open(path, "wb") as f:
        f.write(zoo_header(arch, model.header_values(ftype_of(arch, wtype)), model.vocab(), model.scores(),
                           format_version=format_version))
        for name, shape in model.tensor_shapes().items():
            tt = tt_w if model.is_weight(name) else 0
            f.write(legacy_tensor_header(name, shape, tt))
            if arch.alignment:
                _pad(f, arch.alignment)
            f.write(quantize_q4_0(model.weights(name)) if tt == 2 else _data(model.weights(name), tt, "<"))
    return path


def write_falcon(path: str | os.PathLike[str], model: TinyFalcon, ftype: str = "f32",
                 format_version: int = 3) -> Path:
    """Falcon as gpt4all 1.0.8 read it: magic "ggjt", a format version it ignores (3, as ggllm.cpp's
    quantizer wrote), 7 hparams, (length, bytes, f32 score) vocabulary, data 32-byte aligned."""
    return write_zoo(path, model, ftype, format_version)


def write_replit(path: str | os.PathLike[str], model: TinyReplit, ftype: str = "f32") -> Path:
    """Replit as gpt4all 1.0.8 read it: magic "repl", 6 hparams, (length, piece, f32 score) vocabulary."""
    return write_zoo(path, model, ftype)


def write_starcoder(path: str | os.PathLike[str], model: TinyStarCoder, ftype: str = "f32") -> Path:
    """StarCoder as the ggml example's converter wrote it: magic "ggml", 6 hparams, the vocabulary count
    again, (length, bytes) vocabulary; ``model/wpe`` always F32."""
    return write_zoo(path, model, ftype)


def write_bert(path: str | os.PathLike[str], model: TinyBert, ftype: str = "f32") -> Path:
    """BERT as gpt4all's converter wrote it: magic "bert", 7 hparams, (length, bytes) vocabulary; all
    2-D tensors (the three embedding tables included) in ``ftype``."""
    return write_zoo(path, model, ftype)
