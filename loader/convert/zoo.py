"""Upgrade GPT4All's 2023 zoo files (StarCoder, Falcon, BERT, Replit) to GGUF for the newest engine.

The tensors are those of the old file, renamed to the GGUF names (F32/F16 copied, quantized ones
dequantized by the era's own engine, as for LLaMA: :func:`.upgrade.write_upgraded`).  No tensor needs
reshaping: StarCoder's files already hold K and V widened to every head (``head_count_kv`` = n_head),
Falcon's fused QKV is laid out as llama.cpp's (all Q heads, then K, then V: n_head_kv 1), BERT's and
Replit's are plain.  Replit runs as ``mpt`` (its math is MPT's: ALiBi with max bias 8, no biases,
weight-only LayerNorms, the output tied to the token embedding).

Every LayerNorm epsilon is 1e-5: gpt4all's graphs called ``ggml_norm`` with its fixed 1e-5, BERT
included (MiniLM itself was trained with 1e-12); the upgraded file computes what the old one did.

The tokenizer is the catch.  Falcon and StarCoder files carry gpt4all's token list only, with no BPE
merges, and gpt4all's greedy longest match was never the model's own tokenizer: GGUF's BPE needs the
merges, so the model's ``tokenizer.json`` must be given (``--tokenizer``); its vocabulary must be the
file's token list.  The upgraded file then tokenizes as the original model does, which differs from
gpt4all's ids wherever the greedy longest match picked another split than the merges make.  Replit's
SentencePiece pieces with scores (written for llama.cpp's Unigram tokenizer, which segments as
replit.cpp did) and BERT's WordPiece list carry all GGUF needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConvertError
from ..formats.gguf import GgufHeader, TokenType, ValueType
from ..formats.zoo import ARCHITECTURES, HF_TOKENIZER_REPOS, Architecture
from .common import Options, outtype_number
from .upgrade import PlanEntry, era_backend, write_upgraded

if TYPE_CHECKING:  # pragma: no cover
    from ..engines.native import Backend
    from ..formats.facts import FileFacts

#: ggml_norm's fixed epsilon in the 2023 graphs (all four architectures)
ZOO_NORM_EPS = 1e-5
#: GGUF's pooling type "mean" (llama.cpp ``LLAMA_POOLING_TYPE_MEAN``): gpt4all's BERT averaged all tokens
POOLING_MEAN = 1


@dataclass(frozen=True)
class ZooTarget:
    """How one zoo architecture becomes GGUF: the GGUF architecture, the tensor renames (``{i}`` = layer),
    extra hyperparameter keys (beside the common ones), and the tokenizer route."""

    gguf_arch: str
    names: dict[str, str]
    tokenizer: str                 #: "bpe" (needs tokenizer.json), "bert" (WordPiece), "unigram" (scored pieces)
    extra: tuple[tuple[str, int, Any], ...] = ()
    bpe_pre: str = ""              #: tokenizer.ggml.pre of a BPE model (llama.cpp's pre-tokenizer regexes)


def _layer(prefix: str, pairs: dict[str, str]) -> dict[str, str]:
    return {prefix + k: "blk.{i}." + v for k, v in pairs.items()}


ZOO_TARGETS: dict[str, ZooTarget] = {
    "starcoder": ZooTarget(
        gguf_arch="starcoder", tokenizer="bpe", bpe_pre="starcoder",
        names={"model/wte": "token_embd.weight", "model/wpe": "position_embd.weight", "model/lm_head": "output.weight",
               "model/ln_f/g": "output_norm.weight", "model/ln_f/b": "output_norm.bias",
               **_layer("model/h{i}/", {"ln_1/g": "attn_norm.weight", "ln_1/b": "attn_norm.bias",
                                         "attn/c_attn/w": "attn_qkv.weight", "attn/c_attn/b": "attn_qkv.bias",
                                         "attn/c_proj/w": "attn_output.weight", "attn/c_proj/b": "attn_output.bias",
                                         "ln_2/g": "ffn_norm.weight", "ln_2/b": "ffn_norm.bias",
                                         "mlp/c_fc/w": "ffn_up.weight", "mlp/c_fc/b": "ffn_up.bias",
                                         "mlp/c_proj/w": "ffn_down.weight", "mlp/c_proj/b": "ffn_down.bias"})}),
    "falcon": ZooTarget(
        gguf_arch="falcon", tokenizer="bpe", bpe_pre="falcon",
        names={"transformer.word_embeddings.weight": "token_embd.weight", "lm_head.weight": "output.weight",
               "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
               **_layer("transformer.h.{i}.", {
                   "input_layernorm.weight": "attn_norm.weight", "input_layernorm.bias": "attn_norm.bias",
                   "self_attention.query_key_value.weight": "attn_qkv.weight",
                   "self_attention.dense.weight": "attn_output.weight",
                   "mlp.dense_h_to_4h.weight": "ffn_up.weight", "mlp.dense_4h_to_h.weight": "ffn_down.weight"})},
        extra=(("rope.freq_base", ValueType.FLOAT32, 10000.0),)),
    "bert": ZooTarget(
        gguf_arch="bert", tokenizer="bert",
        names={"embeddings.word_embeddings.weight": "token_embd.weight",
               "embeddings.position_embeddings.weight": "position_embd.weight",
               "embeddings.token_type_embeddings.weight": "token_types.weight",
               "embeddings.LayerNorm.weight": "token_embd_norm.weight",
               "embeddings.LayerNorm.bias": "token_embd_norm.bias",
               **_layer("encoder.layer.{i}.", {
                   "attention.self.query.weight": "attn_q.weight", "attention.self.query.bias": "attn_q.bias",
                   "attention.self.key.weight": "attn_k.weight", "attention.self.key.bias": "attn_k.bias",
                   "attention.self.value.weight": "attn_v.weight", "attention.self.value.bias": "attn_v.bias",
                   "attention.output.dense.weight": "attn_output.weight",
                   "attention.output.dense.bias": "attn_output.bias",
                   "attention.output.LayerNorm.weight": "attn_output_norm.weight",
                   "attention.output.LayerNorm.bias": "attn_output_norm.bias",
                   "intermediate.dense.weight": "ffn_up.weight", "intermediate.dense.bias": "ffn_up.bias",
                   "output.dense.weight": "ffn_down.weight", "output.dense.bias": "ffn_down.bias",
                   "output.LayerNorm.weight": "layer_output_norm.weight",
                   "output.LayerNorm.bias": "layer_output_norm.bias"})},
        extra=(("attention.causal", ValueType.BOOL, False), ("pooling_type", ValueType.UINT32, POOLING_MEAN))),
    "replit": ZooTarget(
        gguf_arch="mpt", tokenizer="unigram",
        names={"transformer.wte.weight": "token_embd.weight", "transformer.ln_f.weight": "output_norm.weight",
               **_layer("transformer.blocks.{i}.", {
                   "ln_1.weight": "attn_norm.weight", "attn.Wqkv.weight": "attn_qkv.weight",
                   "attn.out_proj.weight": "attn_output.weight", "ln_2.weight": "ffn_norm.weight",
                   "mlp.mlp_up.weight": "ffn_up.weight", "mlp.mlp_down.weight": "ffn_down.weight"})},
        # replit.cpp hard-codes ggml_alibi's max bias 8; no clip of QKV
        extra=(("attention.max_alibi_bias", ValueType.FLOAT32, 8.0),)),
}


def _bad(src: Path, why: str) -> ConvertError:
    return ConvertError(f"{src}: the header does not match the tensors ({why}); the file is damaged or was "
                        f"written by a broken tool, so it cannot be converted")


def _gguf_names(src: Path, arch: Architecture, target: ZooTarget, hp: dict[str, int],
                records: list[tuple[str, int, list[int], int, int]]) -> dict[str, str]:
    """Every tensor present against the table (shapes from the header), and its GGUF name."""
    n_embd, n_head, n_layer, n_vocab = (hp.get(k, 0) for k in ("n_embd", "n_head", "n_layer", "n_vocab"))
    if min(n_embd, n_head, n_layer, n_vocab, hp.get("n_head_kv", 0), hp.get("n_ff", 0), arch.n_ctx(hp)) <= 0:
        raise _bad(src, f"n_vocab {n_vocab}, n_embd {n_embd}, n_head {n_head}, n_layer {n_layer} and the "
                        f"context must all be positive")
    if n_embd % n_head or n_head % hp["n_head_kv"]:
        raise _bad(src, f"n_head {n_head} must divide n_embd {n_embd} and be a multiple of n_head_kv "
                        f"{hp['n_head_kv']}")
    want = arch.expected_tensors(hp)
    present = {name: tuple(ne) for name, _, ne, _, _ in records}
    for name, (shape, _, optional) in want.items():
        if name not in present:
            if optional:
                continue
            raise _bad(src, f"tensor {name} is missing")
        got = present[name] + (1,) * (len(shape) - len(present[name]))
        if got[:len(shape)] != shape or any(d != 1 for d in got[len(shape):]):
            raise _bad(src, f"tensor {name} has shape {list(present[name])}, the header implies {list(shape)}")
    extra = sorted(set(present) - set(want))
    if extra:
        raise _bad(src, f"unexpected tensor {extra[0]}")
    out: dict[str, str] = {}
    for i in range(n_layer):
        for legacy, gname in target.names.items():
            out[legacy.format(i=i)] = gname.format(i=i)
    return out


def _bpe_vocab(src: Path, facts: FileFacts, tokens: list[bytes], tokenizer: Path | None,
               ) -> tuple[list[str], list[int], list[str]]:
    """tokens (byte-level text), token types and merges from the model's tokenizer.json, checked
    against the file's token list."""
    from .hf import _byte_decoder, read_bpe

    arch = str(facts.architecture)
    if tokenizer is None:
        raise ConvertError(
            f"{src}: {facts.description}: the file carries only gpt4all's token list, no BPE merges (gpt4all "
            f"tokenized by greedy longest match, not with the model's tokenizer); GGUF needs the merges: pass "
            f"the original model's tokenizer.json with --tokenizer PATH/tokenizer.json (from the Hugging Face "
            f"repository {HF_TOKENIZER_REPOS[arch]} or the model the file was made from)")
    bpe = read_bpe(tokenizer)
    if bpe is None:
        raise ConvertError(f"{tokenizer}: no tokenizer.json (or vocab.json + merges.txt) there")
    if not bpe.merges:
        raise ConvertError(f"{tokenizer}: the tokenizer has no merges; the model's own tokenizer.json is needed")
    if len(bpe.tokens) != len(tokens):
        raise ConvertError(f"{tokenizer}: {len(bpe.tokens)} tokens, but {src} has {len(tokens)}: not this "
                           f"model's tokenizer")
    dec = _byte_decoder()
    for i, t in enumerate(tokens):
        if bpe.tokens[i] is None:
            raise ConvertError(f"{tokenizer}: token {i} is missing; {src} has {t!r}: not this model's tokenizer")
        if bpe.token_bytes(i, dec) != bytes(t):
            raise ConvertError(f"{tokenizer}: token {i} is {bpe.token_bytes(i, dec)!r}, {src} has {bytes(t)!r}: "
                               f"not this model's tokenizer")
    texts = [str(t) for t in bpe.tokens]
    types = [TokenType.CONTROL if i in bpe.special else TokenType.USER_DEFINED if i in bpe.added
             else TokenType.NORMAL for i in range(len(texts))]
    return texts, [int(t) for t in types], bpe.merges


def _tokenizer_keys(src: Path, facts: FileFacts, target: ZooTarget, meta: GgufHeader,
                    tokenizer: Path | None) -> None:
    kv = facts.kv or {}
    tokens: list[bytes] = [bytes(t) for t in kv.get("tokenizer.ggml.tokens") or []]
    if not tokens:
        raise ConvertError(f"{src}: the vocabulary could not be read")
    arch = ARCHITECTURES[str(facts.architecture)]
    eos = arch.end_token_ids[0]
    if target.tokenizer == "bpe":
        texts, types, merges = _bpe_vocab(src, facts, tokens, tokenizer)
        meta.add("tokenizer.ggml.model", ValueType.STRING, "gpt2")
        meta.add("tokenizer.ggml.pre", ValueType.STRING, target.bpe_pre)
        meta.add_array("tokenizer.ggml.tokens", ValueType.STRING, texts)
        meta.add_array("tokenizer.ggml.token_type", ValueType.INT32, types)
        meta.add_array("tokenizer.ggml.merges", ValueType.STRING, merges)
        meta.add("tokenizer.ggml.bos_token_id", ValueType.UINT32, eos)
        meta.add("tokenizer.ggml.eos_token_id", ValueType.UINT32, eos)
        meta.add("tokenizer.ggml.add_bos_token", ValueType.BOOL, False)
        return
    if tokenizer is not None:
        raise ConvertError(f"{src}: {facts.description}: the file's own vocabulary is complete; --tokenizer is "
                           f"for Falcon and StarCoder files only")
    if target.tokenizer == "bert":
        # as convert_hf_to_gguf writes WordPiece: "##x" continues a word ("x"), a whole word starts
        # with the phantom space ("\u2581word"); the bracketed specials are control tokens
        special = {b"[PAD]", b"[UNK]", b"[CLS]", b"[SEP]", b"[MASK]"}
        texts_b: list[bytes] = []
        types = []
        for t in tokens:
            if t in special:
                texts_b.append(t)
                types.append(int(TokenType.CONTROL))
            else:
                texts_b.append(t[2:] if t.startswith(b"##") else "\u2581".encode() + t)
                types.append(int(TokenType.NORMAL))

        def find(name: bytes) -> int:
            if name not in tokens:
                raise ConvertError(f"{src}: the vocabulary has no {name.decode()} token")
            return tokens.index(name)
        meta.add("tokenizer.ggml.model", ValueType.STRING, "bert")
        meta.add_array("tokenizer.ggml.tokens", ValueType.STRING, texts_b)
        meta.add_array("tokenizer.ggml.token_type", ValueType.INT32, types)
        meta.add("tokenizer.ggml.token_type_count", ValueType.UINT32, 2)
        for key, name in (("bos", b"[CLS]"), ("seperator", b"[SEP]"), ("unknown", b"[UNK]"), ("padding", b"[PAD]"),
                          ("mask", b"[MASK]")):
            meta.add(f"tokenizer.ggml.{key}_token_id", ValueType.UINT32, find(name))
        meta.add("tokenizer.ggml.add_bos_token", ValueType.BOOL, True)
        meta.add("tokenizer.ggml.add_eos_token", ValueType.BOOL, True)
        return
    # Replit: SentencePiece Unigram pieces with their scores ("<0xNN>" byte pieces, "<|...|>" control), for
    # llama.cpp's Unigram tokenizer ("t5"): its Viterbi segmentation by scores is replit.cpp's and
    # SentencePiece's (the "llama" tokenizer merges pairs, and cannot reach a piece like "def" whose halves
    # are not pieces)
    import re

    scores = [float(s) for s in kv.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
    byte = re.compile(rb"<0x[0-9A-Fa-f]{2}>")
    types = [int(TokenType.BYTE) if byte.fullmatch(t) else int(TokenType.CONTROL)
             if t.startswith(b"<|") and t.endswith(b"|>") else int(TokenType.NORMAL) for t in tokens]
    meta.add("tokenizer.ggml.model", ValueType.STRING, "t5")
    meta.add_array("tokenizer.ggml.tokens", ValueType.STRING, tokens)
    meta.add_array("tokenizer.ggml.scores", ValueType.FLOAT32, scores)
    meta.add_array("tokenizer.ggml.token_type", ValueType.INT32, types)
    pad = tokens.index(b"<|padding|>") if b"<|padding|>" in tokens else eos
    unk = tokens.index(b"<|unk|>") if b"<|unk|>" in tokens else eos
    for key, tid in (("bos", eos), ("eos", eos), ("unknown", unk), ("padding", pad)):
        meta.add(f"tokenizer.ggml.{key}_token_id", ValueType.UINT32, tid)
    # replit.cpp's tokenizer added neither a BOS nor a leading space, and kept repeated spaces
    meta.add("tokenizer.ggml.add_bos_token", ValueType.BOOL, False)
    meta.add("tokenizer.ggml.add_eos_token", ValueType.BOOL, False)
    meta.add("tokenizer.ggml.add_space_prefix", ValueType.BOOL, False)


def convert_zoo(src: Path, out: Path, opts: Options, facts: FileFacts, tokenizer: Path | None) -> Path:
    """Upgrade a StarCoder, Falcon, BERT or Replit file of GPT4All's 2023 zoo to GGUF at ``out``."""
    from ..formats.ggml_types import QNT_LAYOUT, TYPES
    from ..formats.legacy import tensor_records
    from ..errors import FormatError

    arch = ARCHITECTURES[str(facts.architecture)]
    target = ZOO_TARGETS[arch.name]
    ftype_out = outtype_number(opts.outtype)
    hp = {k: int(v) for k, v in facts.hparams.items() if isinstance(v, int)}
    try:
        records = tensor_records(str(src), facts)
    except FormatError as e:
        raise ConvertError(str(e)) from None
    names = _gguf_names(src, arch, target, hp, records)
    layout = TYPES[QNT_LAYOUT[int(str(facts.quant_layout)[3:])]]
    plan: list[PlanEntry] = []
    shapes = arch.expected_tensors(hp)
    for name, tid, _, off, nbytes in records:
        ne = list(shapes[name][0])  # a 1-D tensor may be stored as [n, 1]
        otype = 0 if len(ne) == 1 or ftype_out == 0 else (1 if layout[tid].name == "F16" else 0)
        plan.append((name, names[name], list(ne), tid, off, nbytes, otype))
    needs_quantizer = ftype_out not in (0, 1) or (ftype_out == 1 and any(len(p[2]) > 1 and p[6] == 0 for p in plan))

    a = target.gguf_arch
    meta = GgufHeader()
    meta.add("general.architecture", ValueType.STRING, a)
    meta.add("general.name", ValueType.STRING, src.stem)
    meta.add("general.description", ValueType.STRING, f"upgraded by gpt4all-convert from {facts.description}")
    meta.add("general.file_type", ValueType.UINT32, 1 if any(p[6] == 1 for p in plan) else 0)
    meta.add(f"{a}.context_length", ValueType.UINT32, arch.n_ctx(hp))
    meta.add(f"{a}.embedding_length", ValueType.UINT32, hp["n_embd"])
    meta.add(f"{a}.block_count", ValueType.UINT32, hp["n_layer"])
    meta.add(f"{a}.feed_forward_length", ValueType.UINT32, hp["n_ff"])
    meta.add(f"{a}.attention.head_count", ValueType.UINT32, hp["n_head"])
    meta.add(f"{a}.attention.head_count_kv", ValueType.UINT32, hp["n_head_kv"])
    meta.add(f"{a}.attention.layer_norm_epsilon", ValueType.FLOAT32, ZOO_NORM_EPS)
    for key, vtype, value in target.extra:
        meta.add(f"{a}.{key}", vtype, value)
    _tokenizer_keys(src, facts, target, meta, tokenizer)
    # native code only once the file and the tokenizer are known good
    era_name: str | None = None
    era: Backend | None = None
    if {layout[p[3]].name for p in plan} - {"F32"}:
        era_name, era = era_backend(facts)
    write_upgraded(src, out, opts, facts, meta, plan, layout, era_name, era, needs_quantizer)
    return out
