"""Upgrade a ggml / ggmf / ggjt v1-v3 LLaMA file to GGUF.

Every tensor is dequantized by the backend of *that file's era* through the shim (``g4a_dequantize``
knows the era's block layout); F32 and F16 tensors pass through unchanged; a GGUF v3 file is written
with the LLaMA hyperparameters and the vocabulary mapped to GGUF conventions (byte tokens ``<0xXX>``,
control tokens, spaces as U+2581).  f32/f16 outputs are written directly, every other ``--outtype``
through the newest backend's quantizer.

Why not upstream's ``convert_llama_ggml_to_gguf.py`` (same sdist)?  It parses all three containers,
but it copies tensor blocks verbatim, so its ``validate_conversion`` refuses every quantized file older
than ggjt v2 ("Quantizations changed in GGJTv2") and the Q4_0/Q4_1/Q8_0 files of ggjt v2 ("Q4 and Q8
quantizations changed in GGJTv3"): the bulk of the spring-2023 downloads cannot be converted by it.
Dequantizing with each era's own code removes that limit, and the dequantization is exact (the
upgraded F32 file holds the very values the old engine multiplied with).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConvertError, FormatError
from ..formats.gguf import GgufHeader, TokenType, ValueType
from ..formats.legacy import LEGACY_CONTAINERS, LEGACY_GQA_RMS_EPS, LEGACY_RMS_EPS
from ..formats.zoo import ARCHITECTURES
from .common import Options, outtype_number
from .upgrade import PlanEntry, era_backend, write_upgraded

if TYPE_CHECKING:  # pragma: no cover - the native binding is imported only when a file is dequantized
    from ..engines.native import Backend
    from ..formats.facts import FileFacts

#: (name, ggml type id, ne, data offset, data bytes) of one tensor of a legacy file
_Record = tuple[str, int, list[int], int, int]

_BYTE_TEXT = re.compile(rb"<0x[0-9A-Fa-f]{2}>")


def legacy_vocab(tokens: list[bytes], scores: list[float] | None) -> tuple[list[bytes], list[float], list[int]]:
    """The vocabulary of a ggml/ggmf/ggjt file as GGUF stores a SentencePiece vocabulary.

    ids 0-2 become ``<unk>``, ``<s>``, ``</s>``; the byte tokens at ids 3..258 (the byte fallback of
    the 2023 tokenizers, id = byte + 3), whether stored as the raw byte or as ``<0xXX>`` text, become
    ``<0xXX>`` byte tokens; other empty tokens are control tokens; spaces are written as U+2581 as
    SentencePiece does.  Files without scores (unversioned ggml) get score 0 for every token, as the
    2023 loaders used them.  With the tokenizer keys that :func:`convert_legacy` writes
    (``add_space_prefix``, ``add_bos_token``), the GGUF eras then tokenize every text exactly as the
    2023 eras do through the shim.
    """
    out_t: list[bytes] = []
    out_ty: list[int] = []
    for i, t in enumerate(tokens):
        t = bytes(t)
        if i == 0:
            out_t.append(b"<unk>")
            out_ty.append(TokenType.UNKNOWN)
        elif i in (1, 2):
            out_t.append(b"<s>" if i == 1 else b"</s>")
            out_ty.append(TokenType.CONTROL)
        elif 3 <= i <= 258 and (len(t) == 1 or _BYTE_TEXT.fullmatch(t)):
            value = t[0] if len(t) == 1 else int(t[3:5], 16)
            out_t.append(f"<0x{value:02X}>".encode())
            out_ty.append(TokenType.BYTE)
        elif not t:
            out_t.append(t)
            out_ty.append(TokenType.CONTROL)
        else:
            out_t.append(t.replace(b" ", "\u2581".encode()))
            out_ty.append(TokenType.NORMAL)
    sc = [float(s) for s in scores] if scores is not None else [0.0] * len(tokens)
    return out_t, sc, out_ty


def _read_legacy(src: Path) -> FileFacts:
    from ..formats.sniff import read_facts

    try:
        facts = read_facts(src, with_vocab=True)
    except OSError as e:
        raise ConvertError(f"cannot read {src}: {e.strerror or e}") from None
    except FormatError as e:
        raise ConvertError(f"{e}") from None
    except ValueError as e:
        raise ConvertError(f"{src}: malformed file ({e})") from None
    return facts


def _refuse_non_legacy(facts: FileFacts, src: Path) -> None:
    fmt = facts.format
    if fmt == "gguf":
        raise ConvertError(f"{src} is already GGUF ({facts.description}); nothing to upgrade "
                           f"(to requantize a GGUF file use llama.cpp's quantizer)")
    if fmt == "safetensors" or facts.kind == "not-a-model" and fmt in ("pytorch-zip", "pickle"):
        raise ConvertError(f"{src} is {facts.description}: pass the Hugging Face model folder "
                           f"(the directory with config.json) instead of one weights file")
    if facts.kind == "not-a-model":
        raise ConvertError(f"{src} is {facts.description}")
    if fmt not in LEGACY_CONTAINERS or facts.architecture != "llama" or facts.kind not in ("model", "vocab-only"):
        raise ConvertError(f"{src}: {facts.description}: only ggml/ggmf/ggjt LLaMA files can be upgraded "
                           f"(architecture {facts.architecture or 'unknown'} is not supported by the converter)")
    if facts.vocab_only:
        raise ConvertError(f"{src}: {facts.description}: a vocabulary-only file has no weights to convert")
    if facts.truncated:
        note = next((n for n in facts.notes if "ends" in n), "the file is cut short")
        raise ConvertError(f"{src}: {facts.description}: {note}; download it again")


def legacy_llama_shapes(hp: dict[str, Any]) -> dict[str, list[int]]:
    """Every tensor a ggml-era LLaMA file with these hyperparameters holds, with its ne (ne[0] first)."""
    e, v, ff = int(hp["n_embd"]), int(hp["n_vocab"]), int(hp["n_ff"])
    kv = e * int(hp["n_head_kv"]) // int(hp["n_head"])
    s = {"tok_embeddings.weight": [e, v], "norm.weight": [e], "output.weight": [e, v]}
    per_layer = {"attention.wq.weight": [e, e], "attention.wk.weight": [e, kv], "attention.wv.weight": [e, kv],
                 "attention.wo.weight": [e, e], "attention_norm.weight": [e], "feed_forward.w1.weight": [e, ff],
                 "feed_forward.w2.weight": [ff, e], "feed_forward.w3.weight": [e, ff], "ffn_norm.weight": [e]}
    for i in range(int(hp["n_layer"])):
        s.update({f"layers.{i}.{k}": ne for k, ne in per_layer.items()})
    return s


def validate_legacy_llama(src: Path, hp: dict[str, Any], records: list[_Record]) -> None:
    """Hyperparameters against the tensors present, before any native code or any write.

    The engines trust the header: ``n_layer`` 1000 over 32 stored layers made the quantizer abort and
    produced F16 files that abort on load.  Every tensor the header implies must be present with the
    shape it implies, and nothing else."""
    def bad(why: str) -> ConvertError:
        return ConvertError(f"{src}: the header does not match the tensors ({why}); the file is damaged or was "
                            f"written by a broken tool, so it cannot be converted")

    n_embd, n_head, n_layer, n_vocab = (int(hp.get(k) or 0) for k in ("n_embd", "n_head", "n_layer", "n_vocab"))
    if min(n_embd, n_head, n_layer, n_vocab) <= 0:
        raise bad(f"n_vocab {n_vocab}, n_embd {n_embd}, n_head {n_head}, n_layer {n_layer} must all be positive")
    if n_embd % n_head:
        raise bad(f"n_head {n_head} does not divide n_embd {n_embd}")
    n_rot = int(hp.get("n_rot") or 0)
    if n_rot != n_embd // n_head:
        raise bad(f"n_rot {n_rot} is not n_embd / n_head = {n_embd // n_head}")
    if "n_ff" not in hp:
        raise bad("no layers.0.feed_forward.w1.weight to tell the feed-forward width")
    present = {name: list(ne) for name, _, ne, _, _ in records}
    layers = {int(n.split(".")[1]) for n in present if n.startswith("layers.") and n.split(".")[1].isdigit()}
    if layers != set(range(n_layer)):
        raise bad(f"n_layer is {n_layer}, the file holds {len(layers)} layers")
    want = legacy_llama_shapes(hp)
    for name, ne in want.items():
        if name not in present:
            raise bad(f"tensor {name} is missing")
        if present[name] != ne:
            raise bad(f"tensor {name} has shape {present[name]}, the header implies {ne}")
    extra = sorted(set(present) - set(want))
    if extra:
        raise bad(f"unexpected tensor {extra[0]}")


def convert_legacy(src: Path, out: Path, opts: Options) -> Path:
    """Upgrade a ggml/ggmf/ggjt LLaMA file (or a file of GPT4All's 2023 zoo: :mod:`.zoo`) to a GGUF v3 file
    at ``out`` (atomically)."""
    from ..formats.ggml_types import TYPES
    from ..formats.legacy import tensor_records
    from ..formats.writer import gguf_name

    ftype_out = outtype_number(opts.outtype)
    facts = _read_legacy(src)
    if facts.architecture in ARCHITECTURES and facts.kind == "model":
        if facts.truncated:
            note = next((n for n in facts.notes if "ends" in n), "the file is cut short")
            raise ConvertError(f"{src}: {facts.description}: {note}; download it again")
        from .zoo import convert_zoo

        return convert_zoo(src, out, opts, facts, Path(opts.tokenizer) if opts.tokenizer else None)
    if opts.tokenizer:
        raise ConvertError(f"{src}: --tokenizer is for GPT4All's Falcon and StarCoder files (which carry no "
                           f"BPE merges); this is {facts.description}")
    _refuse_non_legacy(facts, src)
    try:
        records = tensor_records(str(src), facts)
    except FormatError as e:
        raise ConvertError(str(e)) from None
    validate_legacy_llama(src, facts.hparams, records)
    if facts.quant_layout is None:  # tensor_records read the tensors, so the reader named the layout
        raise ConvertError(f"{src}: {facts.description}: no quant layout known for the file")
    layout = TYPES[facts.quant_layout]
    src_types = {layout[t].name for _, t, _, _, _ in records}
    era_name: str | None = None
    era: Backend | None = None
    if src_types - {"F32"}:
        era_name, era = era_backend(facts)

    hp = facts.hparams
    n_embd, n_head, n_layer = int(hp["n_embd"]), int(hp["n_head"]), int(hp["n_layer"])
    n_head_kv = int(hp.get("n_head_kv") or n_head)
    n_rot = int(hp.get("n_rot") or 0) or n_embd // n_head
    default_eps = LEGACY_GQA_RMS_EPS if n_head_kv < n_head else LEGACY_RMS_EPS
    eps = opts.rms_norm_eps if opts.rms_norm_eps is not None else default_eps
    toks = (facts.kv or {}).get("tokenizer.ggml.tokens")
    if not toks:
        raise ConvertError(f"{src}: the vocabulary could not be read")
    tokens, scores, types = legacy_vocab(toks, (facts.kv or {}).get("tokenizer.ggml.scores"))

    # per tensor: 1-D always F32; 2-D F32 for f32 output, else kept F16 when stored F16, else F32
    plan: list[PlanEntry] = []
    for name, tid, ne, off, nbytes in records:
        try:
            gname = gguf_name(name)
        except (KeyError, ValueError):
            raise ConvertError(f"{src}: tensor {name!r} is not a LLaMA tensor the converter knows") from None
        tname = layout[tid].name
        if len(ne) == 1 or ftype_out == 0:
            otype = 0
        else:
            otype = 1 if tname == "F16" else 0
        plan.append((name, gname, list(ne), tid, off, nbytes, otype))

    any_f32_matrix = any(len(p[2]) > 1 and p[6] == 0 for p in plan)
    needs_quantizer = ftype_out not in (0, 1) or (ftype_out == 1 and any_f32_matrix)
    file_type = 1 if any(p[6] == 1 for p in plan) else 0

    meta = GgufHeader()
    meta.add("general.architecture", ValueType.STRING, "llama")
    meta.add("general.name", ValueType.STRING, src.stem)
    meta.add("general.description", ValueType.STRING, f"upgraded by gpt4all-convert from {facts.description}")
    meta.add("general.file_type", ValueType.UINT32, file_type)
    meta.add("llama.context_length", ValueType.UINT32, int(opts.context_length))
    meta.add("llama.embedding_length", ValueType.UINT32, n_embd)
    meta.add("llama.block_count", ValueType.UINT32, n_layer)
    meta.add("llama.feed_forward_length", ValueType.UINT32, int(hp["n_ff"]))
    meta.add("llama.rope.dimension_count", ValueType.UINT32, n_rot)
    meta.add("llama.attention.head_count", ValueType.UINT32, n_head)
    meta.add("llama.attention.head_count_kv", ValueType.UINT32, n_head_kv)
    meta.add("llama.attention.layer_norm_rms_epsilon", ValueType.FLOAT32, float(eps))
    if opts.rope_freq_base:
        meta.add("llama.rope.freq_base", ValueType.FLOAT32, float(opts.rope_freq_base))
    meta.add("tokenizer.ggml.model", ValueType.STRING, "llama")
    meta.add_array("tokenizer.ggml.tokens", ValueType.STRING, tokens)
    meta.add_array("tokenizer.ggml.scores", ValueType.FLOAT32, scores)
    meta.add_array("tokenizer.ggml.token_type", ValueType.INT32, types)
    meta.add("tokenizer.ggml.bos_token_id", ValueType.UINT32, 1)
    meta.add("tokenizer.ggml.eos_token_id", ValueType.UINT32, 2)
    meta.add("tokenizer.ggml.unknown_token_id", ValueType.UINT32, 0)
    # said explicitly, so that no engine default decides: the 2023 LLaMA tokenizer adds BOS and
    # SentencePiece's dummy prefix, and no EOS
    meta.add("tokenizer.ggml.add_bos_token", ValueType.BOOL, True)
    meta.add("tokenizer.ggml.add_eos_token", ValueType.BOOL, False)
    meta.add("tokenizer.ggml.add_space_prefix", ValueType.BOOL, True)

    write_upgraded(src, out, opts, facts, meta, plan, layout, era_name, era, needs_quantizer)
    return out
