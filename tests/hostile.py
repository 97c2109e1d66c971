"""Hostile-but-plausible model files: consistent tiny models with one header field, tensor type,
vocabulary detail or key/value anomaly set to what took an engine down (SIGABRT, SIGFPE, SIGSEGV or an
unbounded allocation) before the validator existed, and the baselines they differ from.

:data:`FAMILIES` is the matrix as data: each family writes one file and states, for every era with a
manifest rule for the file's container and architecture (:func:`reading_eras`), whether that era loads
it (:data:`LOADS`), lets the engine refuse it by itself (:data:`ENGINE_REFUSES`) or what its refusal
says.  :func:`run_children` loads files in child processes with a time and address-space limit, for the
native step.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable

from zoo_common import TENSOR_CASES, ZOO_KINDS, ctor, reshape, small, zoo_bytes

from gpt4all_loader.engines import child
from gpt4all_loader.engines.manifest import BackendSpec
from gpt4all_loader.formats.facts import FileFacts
from gpt4all_loader.formats.writer import (
    TinyGPTJ,
    TinyLlama,
    TinyMPT,
    _legacy_tensor,
    gguf_name,
    write_gguf,
    write_gptj,
    write_llama,
    write_mpt,
    write_zoo,
)

GGUF_ERAS = ("gguf-2023-11", "gguf-2024-09", "gguf-2026-10")
U32, I32, F32, STR, ARR = 4, 5, 6, 8, 9
_HP = {"n_vocab": 0, "n_embd": 1, "n_mult": 2, "n_head": 3, "n_layer": 4, "n_rot": 5, "ftype": 6}


# -- legacy LLaMA ----------------------------------------------------------------------------------------
def legacy(path: Path, fmt: str, version: int | None, ftype: str = "f32", model: TinyLlama | None = None,
           **header: int) -> Path:
    """A tiny LLaMA in a legacy container, then header fields overwritten (``n_head=0`` ...)."""
    write_llama(path, model or TinyLlama(seed=0), fmt, version=version, ftype=ftype)
    b = bytearray(path.read_bytes())
    base = 4 if fmt == "ggml" else 8
    for k, v in header.items():
        struct.pack_into("<i", b, base + 4 * _HP[k], v)
    path.write_bytes(b)
    return path


def legacy_f16_norms(path: Path, fmt: str, version: int | None) -> Path:
    """Every tensor F16, the 1-D norms included (the 2023 converters kept those F32)."""
    m = TinyLlama(seed=0)
    write_llama(path, m, fmt, version=version, ftype="f16", vocab_only=True)
    with open(path, "ab") as f:
        for name, shape in m.tensor_shapes().items():
            _legacy_tensor(f, name, shape, 1, m.weights(name), 32 if fmt == "ggjt" else 0)
    return path


def patched(path: Path, offset: int, value: int) -> Path:
    """``path`` with the i32 at ``offset`` replaced (a header field of a GPT-J or MPT file)."""
    b = bytearray(path.read_bytes())
    struct.pack_into("<i", b, offset, value)
    path.write_bytes(b)
    return path


# -- GGUF --------------------------------------------------------------------------------------------------
def gguf(path: Path, *, n_layer: int = 2, kv: dict | None = None, drop: tuple[str, ...] = (),
         types: dict[str, int] | None = None, tokens: list[str] | None = None, alignment: int = 32,
         version: int = 3, extra: tuple[tuple[str, Any, Any], ...] = (),
         extra_tensors: tuple[tuple[str, int, list[int]], ...] = ()) -> Path:
    """A tiny zero-weight LLaMA GGUF; ``kv`` overrides or adds (key -> (type, value)), ``drop``
    removes keys, ``extra`` appends (key, type, value) as they are (a key twice, an empty key),
    ``types`` gives GGUF tensor names a ggml type id other than F32, ``extra_tensors`` appends
    (name, type id, ne)."""
    m = TinyLlama(seed=0, n_layer=n_layer)
    toks, scores, ttypes = m.gguf_vocab()
    toks = tokens if tokens is not None else toks
    base = {
        "general.architecture": (STR, "llama"),
        "general.alignment": (U32, alignment),
        "llama.context_length": (U32, m.n_ctx),
        "llama.embedding_length": (U32, m.n_embd),
        "llama.block_count": (U32, m.n_layer),
        "llama.feed_forward_length": (U32, m.n_ff),
        "llama.rope.dimension_count": (U32, m.n_rot),
        "llama.attention.head_count": (U32, m.n_head),
        "llama.attention.head_count_kv": (U32, m.n_head_kv),
        "llama.attention.layer_norm_rms_epsilon": (F32, m.rms_norm_eps),
        "tokenizer.ggml.model": (STR, "llama"),
        "tokenizer.ggml.tokens": ((ARR, STR), toks),
        "tokenizer.ggml.scores": ((ARR, F32), scores),
        "tokenizer.ggml.token_type": ((ARR, I32), ttypes),
        "tokenizer.ggml.bos_token_id": (U32, m.bos_id),
        "tokenizer.ggml.eos_token_id": (U32, m.eos_id),
    }
    base.update(kv or {})
    kvs = [(k, t, v) for k, (t, v) in base.items() if k not in drop] + list(extra)
    types = types or {}
    tensors = [(gguf_name(n), types.get(gguf_name(n), 0), shape) for n, shape in m.tensor_shapes().items()]
    tensors += list(extra_tensors)
    return write_gguf(path, kvs, tensors, version=version, alignment=alignment)


def _byte_level(b: int) -> str:
    """GPT-2's printable stand-in for one byte (byte-level BPE vocabularies store tokens so)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    if b in keep:
        return chr(b)
    return chr(256 + sum(1 for x in range(b) if x not in keep))


def dbrx_vocab(path: Path) -> Path:
    """A vocabulary-only DBRX GGUF shaped like llama.cpp's models/ggml-vocab-dbrx.gguf of 2024: byte-level
    BPE (tokenizer.ggml.pre "dbrx"), the DBRX hyperparameters, and ``general.file_type`` stated twice."""
    words = ["He", "ll", "Hell", "Hello", "\u0120w", "or", "ld", "\u0120wor", "\u0120world"]
    toks = [_byte_level(b) for b in range(256)] + words + ["<|endoftext|>"]
    merges = ["H e", "l l", "He ll", "Hell o", "\u0120 w", "o r", "l d", "\u0120w or", "\u0120wor ld"]
    kvs = [("general.architecture", STR, "dbrx"), ("general.name", STR, "dbrx"),
           ("general.file_type", U32, 1),
           ("dbrx.context_length", U32, 32768), ("dbrx.embedding_length", U32, 6144),
           ("dbrx.block_count", U32, 40), ("dbrx.feed_forward_length", U32, 10752),
           ("dbrx.attention.head_count", U32, 48), ("dbrx.attention.head_count_kv", U32, 8),
           ("dbrx.rope.freq_base", F32, 500000.0), ("dbrx.attention.clamp_kqv", F32, 8.0),
           ("dbrx.attention.layer_norm_epsilon", F32, 1e-5), ("dbrx.expert_count", U32, 16),
           ("dbrx.expert_used_count", U32, 4),
           ("general.file_type", U32, 1),  # kv 14, as in the published file
           ("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, "dbrx"),
           ("tokenizer.ggml.tokens", (ARR, STR), toks),
           ("tokenizer.ggml.token_type", (ARR, I32), [1] * (len(toks) - 1) + [3]),
           ("tokenizer.ggml.merges", (ARR, STR), merges),
           ("tokenizer.ggml.bos_token_id", U32, len(toks) - 1), ("tokenizer.ggml.eos_token_id", U32, len(toks) - 1)]
    return write_gguf(path, kvs, [])


def _dup_tokens() -> list[str]:
    toks = TinyLlama(seed=0).gguf_vocab()[0]
    toks[-1] = toks[-2]
    return toks


def _no_byte_tokens() -> list[str]:
    toks = TinyLlama(seed=0).gguf_vocab()[0]
    return toks[:3] + [f"<b{i}>" for i in range(256)] + toks[259:]


def _empty_token() -> list[str]:
    toks = TinyLlama(seed=0).gguf_vocab()[0]
    toks[-1] = ""
    return toks


def reading_eras(facts: FileFacts, specs: dict[str, BackendSpec]) -> list[str]:
    """The backends with a manifest rule for this file's container and architecture: the eras a hostile
    file must be checked on (a refusal elsewhere says nothing about the hostile field)."""
    key = (facts.format, facts.format_version or 0)
    return [name for name, spec in specs.items()
            if any(key in r.formats and (facts.architecture is None or facts.architecture in r.architectures)
                   for r in spec.accepts)]


def _offset_field(data: bytes, name: str) -> int:
    """Where the data offset of tensor ``name`` (GGUF v2/v3) is stored: after its name, n_dims, ne and type."""
    at = data.index(name.encode()) + len(name)
    return at + 4 + 8 * struct.unpack_from("<I", data, at)[0] + 4


def swapped_offsets(path: Path, a: str, b: str) -> Path:
    """``path`` with the data offsets of two 1-D tensors of one size swapped: the data is all there,
    but not in the order of the tensor infos."""
    data = bytearray(path.read_bytes())
    at = [_offset_field(data, n) for n in (a, b)]
    oa, ob = (struct.unpack_from("<Q", data, i)[0] for i in at)
    struct.pack_into("<Q", data, at[0], ob)
    struct.pack_into("<Q", data, at[1], oa)
    path.write_bytes(data)
    return path


def shifted_offset(path: Path, name: str, delta: int) -> Path:
    """``path`` with the data offset of tensor ``name`` moved by ``delta`` bytes (into its padding or the
    next tensor's data: every byte read is still in the file)."""
    data = bytearray(path.read_bytes())
    at = _offset_field(data, name)
    struct.pack_into("<Q", data, at, struct.unpack_from("<Q", data, at)[0] + delta)
    path.write_bytes(data)
    return path


# -- GPT4All's 2023 zoo: Falcon, Replit, StarCoder, BERT --------------------------------------------------
_ZOO_ERA = "ggml-gpt4all-2023-08"
_MAX = 2**31 - 1
#: what the refusal of a header field set to 0 or to 2**31 - 1 says (n_vocab: the reader refuses it)
_ZOO_FIELD_REASONS = {
    "n_embd": ("n_embd is 0", "does not divide n_embd 2147483647"),
    "n_head": ("n_head is 0", "n_head 2147483647 does not divide"),
    "n_layer": ("n_layer is 0", "outside 1..4096"),
    "n_ctx": ("n_ctx_train is 0", "beyond 65536 tokens"),
    "n_max_tokens": ("n_ctx_train is 0", "beyond 65536 tokens"),
    "n_head_kv": ("one key/value head", "one key/value head"),
    "falcon_version": ("Falcon-7B's (7)", "Falcon-7B's (7)"),
    "n_intermediate": ("n_ff is 0", "the header says [2147483647]"),
    "ftype": ("the file's weight type (ftype 0)", "is not a weight type"),
    "f16": ("the file's weight type (ftype 0)", "is not a weight type"),
}
#: tensor-table defects (:data:`zoo_common.TENSOR_CASES`) and what their refusal says
_ZOO_TENSOR_REASONS = {"missing": "missing", "misshapen": "the header says", "duplicate": "more than once",
                       "unknown": "does not have", "norm-f16": "as every norm and bias",
                       "weight-f32": "it must be F16, the file's weight type"}


def zoo_file(path: Path, kind: str, model: Any = None, **edits: Any) -> Path:
    """:func:`zoo_common.zoo_bytes` of ``kind``'s small model (zero weights) with ``edits``, written to ``path``."""
    path.write_bytes(zoo_bytes(model or small(kind), **edits))
    return path


def cut(path: Path, n: int) -> Path:
    """``path`` without its last ``n`` bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:-n])
    return path


def _zoo_families() -> dict[str, tuple[Callable[[Path], Path], dict[str, str]]]:
    """Per architecture: the seeded baseline, every header field at 0 and at 2**31 - 1 (those the reader
    reads), each tensor-table defect, cut data, and the values that must still load."""
    out: dict[str, tuple[Callable[[Path], Path], dict[str, str]]] = {}
    for kind in ZOO_KINDS:
        out[f"{kind}-baseline"] = (lambda p, k=kind: write_zoo(p, small(k), "f16"), {_ZOO_ERA: LOADS})
        for field in small(kind).arch.header:
            for value, reason in zip((0, _MAX), _ZOO_FIELD_REASONS.get(field.name, ())):
                if (kind, field.name, value) == ("starcoder", "ftype", _MAX):
                    continue  # the reader refuses it (a quantization version above 2)
                out[f"{kind}-{field.name}-{value}"] = (
                    lambda p, k=kind, f=field.name, v=value: zoo_file(p, k, header={f: v}), {_ZOO_ERA: reason})
        for case, reason in _ZOO_TENSOR_REASONS.items():
            out[f"{kind}-tensor-{case}"] = (lambda p, k=kind, c=case: zoo_file(p, k, edit=TENSOR_CASES[c]),
                                            {_ZOO_ERA: reason})
        out[f"{kind}-data-cut"] = (lambda p, k=kind: cut(zoo_file(p, k), 7), {_ZOO_ERA: "file is truncated"})
    for kind in ("replit", "starcoder"):  # one head: the same shapes
        out[f"{kind}-n_head-1"] = (lambda p, k=kind: zoo_file(p, k, header={"n_head": 1}), {_ZOO_ERA: LOADS})
    # ggml of 2023 aborts on BERT's single-head attention (measured): refused before native code
    out["bert-n_head-1"] = (lambda p: zoo_file(p, "bert", header={"n_head": 1}), {_ZOO_ERA: "n_head is 1"})
    # the ggml examples' quantizers add 1000 x the quantization version to ftype
    out["falcon-ftype-2001"] = (lambda p: zoo_file(p, "falcon", header={"ftype": 2001}), {_ZOO_ERA: LOADS})
    out["falcon-version-40"] = (lambda p: zoo_file(p, "falcon", header={"falcon_version": 40}),
                                {_ZOO_ERA: "Falcon-40B"})
    hp = small("falcon").hparams
    qkv = [hp["n_embd"], (hp["n_head"] + 4) * (hp["n_embd"] // hp["n_head"])]
    out["falcon-n_head_kv-2-consistent"] = (
        lambda p: zoo_file(p, "falcon", header={"n_head_kv": 2}, edit=reshape("query_key_value.weight", qkv)),
        {_ZOO_ERA: "one key/value head"})
    for n, reason in ((8200, "at most 8192"), (32, "overlap by 32")):  # windows too large, too small
        out[f"bert-window-{n}"] = (lambda p, n=n: zoo_file(p, "bert", _window(n), header={"n_max_tokens": n}),
                                   {_ZOO_ERA: reason})
    out["replit-n_ctx-3-consistent"] = (lambda p: zoo_file(p, "replit", header={"n_ctx": 3}),
                                        {_ZOO_ERA: "n_ctx_train is 3"})
    return out


def _window(n: int) -> Any:
    """The small BERT with ``n`` positions (its position table follows)."""
    m = small("bert")
    return type(m)(seed=3, **ctor("bert", dict(m.hparams, n_ctx_train=n)))


#: files the reader itself refuses (FormatError, so no era is asked): name -> (writer, message substring)
READER_REFUSES: dict[str, tuple[Callable[[Path], Path], str]] = {
    **{f"{k}-n_vocab-0": (lambda p, k=k: zoo_file(p, k, header={"n_vocab": 0}), "expected a positive value")
       for k in ZOO_KINDS},
    **{f"{k}-n_vocab-max": (lambda p, k=k: zoo_file(p, k, header={"n_vocab": _MAX}),
                            "a vocabulary that fits the file") for k in ZOO_KINDS},
    **{f"{k}-{f.name}-negative": (lambda p, k=k, f=f.name: zoo_file(p, k, header={f: -1}), "(got -1)")
       for k in ZOO_KINDS for f in small(k).arch.header},
    # the vocabulary five tokens short of n_vocab: the tensor records are read as tokens
    **{f"{k}-vocab-short": (lambda p, k=k: zoo_file(p, k, tokens=small(k).vocab()[:-5]), "vocab")
       for k in ZOO_KINDS},
    "starcoder-ftype-max": (lambda p: zoo_file(p, "starcoder", header={"ftype": _MAX}), "below 3000"),
    # gpt4all's own Falcon converter wrote no padding before tensor data (its loader needs 32-byte alignment)
    "falcon-data-unpadded": (lambda p: zoo_file(p, "falcon", align=0), "tensor[1]"),
}


# -- the matrix: every family x every era that reads its container ------------------------------------------
#: the expected verdict of an era that loads the file (and must then evaluate it without a signal)
LOADS = "loads"
#: the catalog lets the era try and the engine's own loader refuses the file with an error (no signal)
ENGINE_REFUSES = "the engine refuses"
_EARLY = ("llama-2023-04", "llama-2023-05")
_LEGACY_ERAS = ("llama-2023-04", "llama-2023-05", "llama-2023-08")
_GPTJ_MPT_ERAS = ("ggml-gpt4all-2023-05", "ggml-gpt4all-2023-08")
_F16 = 1


def _each(eras: tuple[str, ...], verdict: str) -> dict[str, str]:
    return dict.fromkeys(eras, verdict)


#: family -> (writer(path), {backend: LOADS or a substring of its refusal}) for every backend with a manifest
#: rule for the file's container and architecture (the test checks that the table names exactly those)
FAMILIES: dict[str, tuple[Callable[[Path], Path], dict[str, str]]] = {
    # the tiny models the families differ from by one field
    "legacy-ggml-baseline": (lambda p: legacy(p, "ggml", None), _each(_EARLY, LOADS)),
    "legacy-ggjt1-baseline": (lambda p: legacy(p, "ggjt", 1), _each(_LEGACY_ERAS, LOADS)),
    "legacy-ggjt3-baseline": (lambda p: legacy(p, "ggjt", 3), {"llama-2023-08": LOADS}),
    "gguf-baseline": (gguf, _each(GGUF_ERAS, LOADS)),
    "gguf-v2-baseline": (lambda p: gguf(p, version=2), _each(GGUF_ERAS, LOADS)),
    "gptj-baseline": (lambda p: write_gptj(p, TinyGPTJ(seed=0)), _each(_GPTJ_MPT_ERAS, LOADS)),
    "mpt-baseline": (lambda p: write_mpt(p, TinyMPT(seed=0)), _each(_GPTJ_MPT_ERAS, LOADS)),
    # GPT-J (ggml: magic, n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot) and MPT (ggmm: magic, n_vocab, n_ctx,
    # n_layer, n_head, n_embd) header fields set hostile: their loaders (ours) check what they read
    "gptj-n_head-0": (lambda p: patched(write_gptj(p, TinyGPTJ(seed=0)), 16, 0), _each(_GPTJ_MPT_ERAS, ENGINE_REFUSES)),
    "gptj-n_layer-1000": (lambda p: patched(write_gptj(p, TinyGPTJ(seed=0)), 20, 1000),
                          _each(_GPTJ_MPT_ERAS, ENGINE_REFUSES)),
    "gptj-n_rot-0": (lambda p: patched(write_gptj(p, TinyGPTJ(seed=0)), 24, 0), _each(_GPTJ_MPT_ERAS, LOADS)),
    "mpt-n_head-0": (lambda p: patched(write_mpt(p, TinyMPT(seed=0)), 16, 0), _each(_GPTJ_MPT_ERAS, ENGINE_REFUSES)),
    "mpt-n_layer-1000": (lambda p: patched(write_mpt(p, TinyMPT(seed=0)), 12, 1000),
                         _each(_GPTJ_MPT_ERAS, ENGINE_REFUSES)),
    # legacy LLaMA (2023-04/05 read ggml/ggmf/ggjt v1; 2023-08 ggmf/ggjt)
    "legacy-n_layer-2-ggml-f16": (lambda p: legacy(p, "ggml", None, "f16", TinyLlama(seed=0, n_layer=2)),
                                  _each(_EARLY, "model-size table")),
    "legacy-n_layer-36-ggjt3": (lambda p: legacy(p, "ggjt", 3, model=TinyLlama(seed=0, n_layer=36)),
                                {"llama-2023-08": "model-size table"}),
    "legacy-n_mult-0": (lambda p: legacy(p, "ggjt", 1, n_mult=0), _each(_LEGACY_ERAS, "n_mult is 0")),
    "legacy-n_head-0": (lambda p: legacy(p, "ggjt", 1, n_head=0), _each(_LEGACY_ERAS, "n_head is 0")),
    "legacy-n_head-not-dividing": (lambda p: legacy(p, "ggjt", 3, n_head=3), {"llama-2023-08": "does not divide"}),
    "legacy-odd-head-dim": (lambda p: legacy(p, "ggml", None, n_head=64), _each(_EARLY, "n_embd / n_head = 1 is odd")),
    "legacy-n_rot-wrong": (lambda p: legacy(p, "ggjt", 3, n_rot=8), {"llama-2023-08": "n_rot 8 differs"}),
    "legacy-n_layer-vs-blocks": (lambda p: legacy(p, "ggjt", 3, n_layer=40), {"llama-2023-08": "blocks"}),
    # b1000's ggml_mul takes an F16 src1 (measured: loads and evaluates)
    "legacy-f16-norms": (lambda p: legacy_f16_norms(p, "ggjt", 1),
                         {**_each(_EARLY, "1-D tensors"), "llama-2023-08": LOADS}),
    # GGUF: header numbers
    "gguf-alignment-1": (lambda p: gguf(p, alignment=1), {"gguf-2023-11": "multiple of 8",
                                                          "gguf-2024-09": "multiple of 32",
                                                          "gguf-2026-10": "multiple of 32"}),
    "gguf-alignment-8": (lambda p: gguf(p, alignment=8),
                         {"gguf-2023-11": LOADS, **_each(GGUF_ERAS[1:], "multiple of 32")}),
    "gguf-block_count-0": (lambda p: gguf(p, kv={"llama.block_count": (U32, 0)}),
                           _each(GGUF_ERAS, "outside 1..4096")),
    "gguf-block_count-1000": (lambda p: gguf(p, kv={"llama.block_count": (U32, 1000)}), _each(GGUF_ERAS, "2 blocks")),
    "gguf-expert_used-without-count": (lambda p: gguf(p, kv={"llama.expert_used_count": (U32, 2)}),
                                       _each(GGUF_ERAS, "without expert_count")),
    "gguf-expert_used-above-count": (lambda p: gguf(p, kv={"llama.expert_count": (U32, 2),
                                                           "llama.expert_used_count": (U32, 4)}),
                                     {"gguf-2023-11": "predates MoE support",
                                      **_each(GGUF_ERAS[1:], "exceeds expert_count")}),
    "gguf-rms-eps-negative": (lambda p: gguf(p, kv={"llama.attention.layer_norm_rms_epsilon": (F32, -1e-5)}),
                              _each(GGUF_ERAS, "finite positive")),
    "gguf-rms-eps-nan": (lambda p: gguf(p, kv={"llama.attention.layer_norm_rms_epsilon": (F32, float("nan"))}),
                         _each(GGUF_ERAS, "finite positive")),
    "gguf-odd-rope": (lambda p: gguf(p, kv={"llama.rope.dimension_count": (U32, 7)}),
                      _each(GGUF_ERAS, "n_rot 7 is not an even number")),
    "gguf-head_count-0": (lambda p: gguf(p, kv={"llama.attention.head_count": (U32, 0)}),
                          _each(GGUF_ERAS, "n_head is 0")),
    "gguf-head_count_kv-0": (lambda p: gguf(p, kv={"llama.attention.head_count_kv": (U32, 0)}),
                             _each(GGUF_ERAS, "n_head_kv is 0")),
    "gguf-no-architecture": (lambda p: gguf(p, drop=("general.architecture",)),
                             _each(GGUF_ERAS, "does not state its architecture")),
    # GGUF: tensor types by role
    "gguf-i32-weights": (lambda p: gguf(p, types={"blk.0.attn_q.weight": 26}),
                         {"gguf-2023-11": "I32 is unknown to llama.cpp 2023-11",
                          **_each(GGUF_ERAS[1:], "which no matrix multiplication takes")}),
    "gguf-q8_1-weights": (lambda p: gguf(p, types={"blk.0.attn_q.weight": 9}),
                          _each(GGUF_ERAS, "which no matrix multiplication takes")),
    **{f"gguf-f16-{t.split('.')[-2]}": (lambda p, t=t: gguf(p, types={t: _F16}),
                                        {**_each(GGUF_ERAS[:2], f"1-D tensors (norms, biases) of type F16 ({t})"),
                                         "gguf-2026-10": f"norm tensors of type F16 ({t})"})
       for t in ("blk.0.attn_norm.weight", "blk.1.ffn_norm.weight", "output_norm.weight")},
    # GGUF: the vocabulary
    "gguf-duplicate-tokens": (lambda p: gguf(p, tokens=_dup_tokens()), _each(GGUF_ERAS, "occurs more than once")),
    "gguf-no-byte-tokens": (lambda p: gguf(p, tokens=_no_byte_tokens()), _each(GGUF_ERAS, "0 of the 256 byte tokens")),
    "gguf-empty-token": (lambda p: gguf(p, tokens=_empty_token()), _each(GGUF_ERAS, "empty token")),
    "gguf-u32-tokens": (lambda p: gguf(p, kv={"tokenizer.ggml.tokens": ((ARR, U32), list(range(355)))}),
                        _each(GGUF_ERAS, "not of strings")),
    "gguf-vocab-vs-embedding": (lambda p: gguf(p, tokens=TinyLlama(seed=0).gguf_vocab()[0][:-1],
                                                kv={"tokenizer.ggml.scores": ((ARR, F32), [0.0] * 361),
                                                    "tokenizer.ggml.token_type": ((ARR, I32), [1] * 361)}),
                                _each(GGUF_ERAS, "token_embd.weight has 362 rows")),
    "gguf-short-scores": (lambda p: gguf(p, kv={"tokenizer.ggml.scores": ((ARR, F32), [0.0] * 10)}),
                          _each(GGUF_ERAS, "has 10 entries")),
    **{f"gguf-tokenizer-{t}": (lambda p, t=t: gguf(p, kv={"tokenizer.ggml.model": (STR, t)}),
                               _each(GGUF_ERAS, f"tokenizer model '{t}'"))
       for t in ("bert", "none", "no_vocab", "rwkv")},
    # GGUF: what the reader records and each era's rules decide (manifest: accepts.anomalies)
    "gguf-duplicate-key": (lambda p: gguf(p, kv={"general.file_type": (U32, 0)},
                                          extra=(("general.file_type", U32, 0),)),
                           {**_each(GGUF_ERAS[:2], LOADS), "gguf-2026-10": "duplicate key 'general.file_type' at kv"}),
    "gguf-empty-key": (lambda p: gguf(p, extra=(("", U32, 1),)),
                       {**_each(GGUF_ERAS[:2], LOADS), "gguf-2026-10": "empty key at kv 16"}),
    "gguf-nested-array": (lambda p: gguf(p, extra=(("general.tags", (ARR, ARR), [(U32, [1, 2]), (STR, ["a"])]),)),
                          {**_each(GGUF_ERAS[:2], "array of arrays in key 'general.tags' at kv 16: llama.cpp 20"),
                           "gguf-2026-10": "refuses an array of arrays"}),
    "gguf-tensor-data-order": (lambda p: swapped_offsets(gguf(p), "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"),
                               {**_each(GGUF_ERAS[:2], LOADS), "gguf-2026-10": "not packed in the order"}),
    **{f"gguf-tensor-data-misaligned-{t.split('.')[-2]}": (
        lambda p, t=t: shifted_offset(gguf(p), t, 4),
        {"gguf-2023-11": LOADS, "gguf-2026-10": f"tensor '{t}' (tensor {i}) has its data at",
         # 2024-09 aborts when the first tensor's data (where its mapped buffer starts) is misaligned
         "gguf-2024-09": "not a multiple of the alignment 32: llama.cpp 2024-09 aborts"})
       for i, t in ((0, "token_embd.weight"), (11, "blk.0.ffn_norm.weight"))},
    # a tensor the architecture does not use: the engines count it and refuse the file, except that ggml of
    # 2024 aborts on its dimension of 0 first
    "gguf-zero-dim": (lambda p: gguf(p, extra_tensors=(("blk.0.extra.weight", 0, [0, 4]),)),
                      {"gguf-2023-11": ENGINE_REFUSES, "gguf-2026-10": ENGINE_REFUSES,
                       "gguf-2024-09": "'blk.0.extra.weight' (tensor 21) has a dimension of 0"}),
    "dbrx-vocab": (dbrx_vocab, {"gguf-2024-09": LOADS,
                                "gguf-2026-10": "duplicate key 'general.file_type' at kv 14"}),
    **_zoo_families(),
}


#: address space a child may map: the tiny models need a few hundred MB; an engine that tries to
#: allocate gigabytes for a hostile header fails inside the limit instead of exhausting the machine
CHILD_ADDRESS_SPACE = 8 << 30


def run_children(jobs: list[tuple[Path, str]], timeout: float = 120) -> dict[tuple[str, str], dict]:
    """``load()`` + one ``evaluate`` of each (path, backend) in children (``gpt4all_loader.smoke --batch``, the
    probe's ``--load`` step, started by the package's child runner) under an address-space limit and a
    time-out, several files per child: one child per backend, and after a child that ended early a new one
    for the rest.  Result per (path, backend): the smoke JSON line, or how the child ended on it
    ("signal", "timeout" or "rc" with its stderr tail)."""
    out: dict[tuple[str, str], dict] = {}
    by_backend: dict[str, list[str]] = {}
    for path, backend in jobs:
        by_backend.setdefault(backend, []).append(str(path))
    for backend, paths in by_backend.items():
        while paths:
            stdin = "".join(json.dumps({"path": p, "backend": backend}) + "\n" for p in paths)
            # one thread: a 32-layer tiny model evaluates in milliseconds, and a busy machine would make
            # the engines' threads wait for each other at every node
            cp = child.run("smoke", ["--batch", "--device", "cpu", "--ctx-size", "64", "--threads", "1"],
                           timeout=timeout, address_space=CHILD_ADDRESS_SPACE, input=stdin)
            ended: dict[str, Any] = ({"timeout": True} if cp.timed_out else
                                     {"signal": -(cp.returncode or 0)} if cp.crashed else {"rc": cp.returncode})
            current = None
            for line in cp.stdout.splitlines():
                if not line.startswith("{"):
                    continue
                rec = json.loads(line)
                if "start" in rec:
                    current = rec["start"]
                elif current is not None:
                    out[(current, backend)] = rec
                    current = None
            done = [p for p in paths if (p, backend) in out]
            if current is not None:  # the child ended on this file
                out[(current, backend)] = {**ended, "stderr": cp.stderr[-2000:]}
                done.append(current)
            elif len(done) < len(paths):  # ended before it started the next one
                out[(paths[len(done)], backend)] = {**ended, "stderr": cp.stderr[-2000:]}
                done.append(paths[len(done)])
            paths = [p for p in paths if p not in done]
    return out
