"""Hyperparameters against tensors, per architecture and era, before any native code sees a file.

The reader checks that a container is well formed; the catalog checks that an era reads the
container, the architecture and the tensor types.  Neither compares what the header *says* with
what the tensors *are*, and the engines do that with asserts (SIGABRT), divisions (SIGFPE) or not at
all (SIGSEGV): ``n_head = 0``, ``n_layer`` outside a 2023 size table, an F16 norm, a vocabulary with a
short score array, two tokens with the same text.  :func:`problems` lists, for one backend, every
such reason the file would take that backend's process down, so that the catalog refuses the file
with a reason instead.  GPT4All's 2023 zoo (Falcon, Replit, StarCoder, BERT) is checked against its
tensor tables in :mod:`..formats.zoo`: every tensor present once, of the exact shape and type.

What each backend's engine asserts is data (the manifest's ``[backends.NAME.limits]``, parsed into
:class:`~.manifest.EraLimits`); the checks themselves are the same small functions for every era.
"""
from __future__ import annotations

import math
import re
from typing import Callable

from ..formats import zoo
from ..formats.facts import FileFacts, int_or_none
from .manifest import EraLimits, load_manifest


#: element types ggml can hold but no matrix multiplication of any era takes as weights
#: (SIGSEGV or SIGABRT in the first evaluation, measured on 2026-10)
NON_WEIGHT_TYPES = frozenset({"I8", "I16", "I32", "I64", "F64", "Q8_1"})
#: more layers than any released model has: a header number beyond it is damage, not a model
MAX_LAYERS = 4096

#: the longest context a GPT4All 2023 zoo header may state (StarCoder's 8192 was the longest): a larger
#: number is damage, and the 2023 loaders sized their caches with it
MAX_ZOO_CTX = 1 << 16

#: architectures whose graph divides by the head counts (the cases measured to crash)
ATTENTION_ARCHS = frozenset({"llama"})

_LEGACY = frozenset({"ggml", "ggmf", "ggjt"})
_BLOCK = {"gguf": re.compile(r"^blk\.(\d+)\."), "legacy": re.compile(r"^layers\.(\d+)\.")}


def _blocks(facts: FileFacts, family: str) -> set[int]:
    pat = _BLOCK[family]
    out = set()
    for name in facts.tensor_names:
        m = pat.match(name)
        if m:
            out.add(int(m.group(1)))
    return out


def _layer_count(facts: FileFacts, family: str, exact: bool) -> list[str]:
    """``n_layer`` against the ``blk.N.`` / ``layers.N.`` blocks the file holds."""
    n_layer = int_or_none(facts.hparams.get("n_layer"))
    key = "block_count" if family == "gguf" else "n_layer"
    if not facts.n_tensors:
        return []
    if n_layer is None:
        return [f"the header states no {key}"] if family == "gguf" else []
    if not 1 <= n_layer <= MAX_LAYERS:
        return [f"{key} {n_layer} is outside 1..{MAX_LAYERS}"]
    blocks = _blocks(facts, family)
    if blocks and max(blocks) >= n_layer:
        return [f"{key} is {n_layer} but the file holds tensors of block {max(blocks)}"]
    # a file without any block tensors gets the engine's own "missing tensor" error instead
    if exact and blocks and blocks != set(range(n_layer)):
        return [f"{key} is {n_layer} but the file holds {len(blocks)} blocks of tensors"]
    return []


def _heads(facts: FileFacts) -> list[str]:
    """Head counts: zero divides by zero (SIGFPE); LLaMA needs n_head to divide n_embd."""
    hp = facts.hparams
    out = []
    for name in ("n_head", "n_head_kv"):
        v = int_or_none(hp.get(name))
        # state-space models (mamba ...) state 0 heads on purpose: only attention graphs divide by it
        if facts.architecture in ATTENTION_ARCHS and v is not None and v <= 0:
            out.append(f"{name} is {v}; it must be positive (the engine divides by it)")
    n_head, n_embd = int_or_none(hp.get("n_head")), int_or_none(hp.get("n_embd"))
    if facts.architecture == "llama" and n_head and n_head > 0 and n_embd is not None and n_embd % n_head:
        out.append(f"n_head {n_head} does not divide n_embd {n_embd}")
    n_kv = int_or_none(hp.get("n_head_kv"))
    if facts.architecture == "llama" and n_head and n_kv and n_kv > 0 and n_head % n_kv:
        out.append(f"n_head_kv {n_kv} does not divide n_head {n_head}")
    if facts.architecture == "llama" and n_head and n_head > 0 and n_embd and n_embd % n_head == 0:
        # RoPE turns pairs of values: ggml asserts an even number of rotated dimensions
        head_dim, n_rot = n_embd // n_head, int_or_none(hp.get("n_rot"))
        if head_dim % 2:
            out.append(f"the head dimension n_embd / n_head = {head_dim} is odd; RoPE needs it even")
        elif n_rot is not None and (n_rot <= 0 or n_rot % 2 or n_rot > head_dim):
            out.append(f"n_rot {n_rot} is not an even number of dimensions up to the head dimension {head_dim}")
    return out


def _legacy_llama(facts: FileFacts, era: EraLimits) -> list[str]:
    hp = facts.hparams
    out = []
    n_mult = int_or_none(hp.get("n_mult"))
    if n_mult is not None and n_mult <= 0:
        out.append(f"n_mult is {n_mult}; it must be positive (the loader divides by it)")
    n_layer = int_or_none(hp.get("n_layer"))
    if era.layer_table is not None and n_layer is not None and n_layer not in era.layer_table \
            and not n_layer < era.layer_table_below:
        sizes = ", ".join(map(str, sorted(era.layer_table)))
        below = f" or fewer than {era.layer_table_below}" if era.layer_table_below else ""
        out.append(f"n_layer {n_layer} is not in this loader's model-size table ({sizes}{below}); "
                   "it aborts on any other value")
    n_head, n_embd, n_rot = int_or_none(hp.get("n_head")), int_or_none(hp.get("n_embd")), int_or_none(hp.get("n_rot"))
    if era.rot_asserted and n_head and n_embd and n_embd % n_head == 0 and n_rot != n_embd // n_head:
        out.append(f"n_rot {n_rot} differs from n_embd / n_head = {n_embd // n_head}; this loader asserts "
                   "they are equal")
    emb = facts.tensors.get("tok_embeddings.weight")
    n_vocab = int_or_none(hp.get("n_vocab"))
    if emb and len(emb[1]) == 2 and n_vocab is not None and emb[1][1] != n_vocab:
        out.append(f"n_vocab is {n_vocab} but tok_embeddings.weight has {emb[1][1]} rows")
    return out


def _types(facts: FileFacts, era: EraLimits) -> list[str]:
    """Tensor types by role: weight matrices of a computable type; norms of the type the era assumes."""
    out = []
    bad_w = sorted({t for t, shape, _ in facts.tensors.values()
                    if t in NON_WEIGHT_TYPES and sum(d > 1 for d in shape) >= 2})
    if bad_w:
        out.append(f"weight matrices of type {'/'.join(bad_w)}, which no matrix multiplication takes")
    vec = [(n, t) for n, (t, shape, _) in facts.tensors.items() if len(shape) == 1]
    if era.vector_types is not None:
        bad_v = [(n, t) for n, t in vec if t not in era.vector_types]
        if bad_v:
            out.append(f"1-D tensors (norms, biases) of type {'/'.join(sorted({t for _, t in bad_v}))}"
                       f"{_first(bad_v)}; this engine needs {'/'.join(sorted(era.vector_types))}")
    if era.norms_f32:
        bad_n = [(n, t) for n, t in vec if n.endswith("norm.weight") and t != "F32"]
        if bad_n:
            out.append(f"norm tensors of type {'/'.join(sorted({t for _, t in bad_n}))}{_first(bad_n)}; "
                       "this engine needs F32 norms")
    return out


def _first(named: list[tuple[str, str]]) -> str:
    """" (blk.0.attn_norm.weight and 4 more)": where in the file a rule found its tensors."""
    more = f" and {len(named) - 1} more" if len(named) > 1 else ""
    return f" ({named[0][0]}{more})"


def _gguf_hparams(facts: FileFacts, era: EraLimits) -> list[str]:
    hp = facts.hparams
    out = []
    # experts: both counts or neither (0 counts as absent), and no more used than there are
    n_exp, n_used = int_or_none(hp.get("expert_count")) or 0, int_or_none(hp.get("expert_used_count")) or 0
    if n_used and not n_exp:
        out.append("expert_used_count is set without expert_count")
    elif n_exp and not n_used:
        out.append(f"expert_count is {n_exp} but expert_used_count is not set")
    elif n_used > n_exp:
        out.append(f"expert_used_count {n_used} exceeds expert_count {n_exp}")
    for key in ("rms_norm_eps", "norm_eps"):
        v = hp.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isfinite(v) and v > 0):
            out.append(f"{key} is {v}; it must be a finite positive number")
    # the reader already refused a general.alignment that is not a UINT32 power of two
    if facts.alignment is not None and facts.alignment % era.alignment_multiple:
        out.append(f"general.alignment is {facts.alignment}; this engine needs a multiple of "
                   f"{era.alignment_multiple}")
    return out


def _vocab(facts: FileFacts, era: EraLimits) -> list[str]:
    v = facts.vocab
    if v is None:
        return []
    out = []
    if v.token_type != "STRING":
        return [f"tokenizer.ggml.tokens is an array of {v.token_type}, not of strings"]
    for key, arr, want in (("scores", v.scores, "FLOAT32"), ("token_type", v.token_types, "INT32")):
        if arr is None:
            continue
        etype, n = arr
        if etype != want:
            out.append(f"tokenizer.ggml.{key} holds {etype}, not {want}")
        elif n != v.n_tokens:
            out.append(f"tokenizer.ggml.{key} has {n} entries for {v.n_tokens} tokens")
    emb = facts.tensors.get("token_embd.weight")
    if emb and len(emb[1]) == 2 and emb[1][1] != v.n_tokens:
        out.append(f"the vocabulary has {v.n_tokens} tokens but token_embd.weight has {emb[1][1]} rows")
    if era.unique_tokens and v.duplicate is not None:
        out.append(f"token text {v.duplicate!r} occurs more than once ({v.n_duplicates} repeats); this engine "
                   "asserts every token text is unique")
    if facts.tokenizer == "llama" and v.n_tokens:
        if v.n_empty:
            out.append(f"{v.n_empty} empty token string(s) in a SentencePiece vocabulary")
        if v.n_byte_tokens < 256:
            out.append(f"the SentencePiece vocabulary has {v.n_byte_tokens} of the 256 byte tokens <0x00>..<0xFF> "
                       "its byte fallback needs")
    for arch, toks in era.arch_tokenizers:
        if facts.architecture == arch and facts.tokenizer is not None and facts.tokenizer not in toks:
            out.append(f"tokenizer model '{facts.tokenizer}' cannot drive a {arch} model on this engine "
                       f"(it takes {' or '.join(sorted(toks))})")
    return out


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A 1-D tensor may be stored as [n, 1]: compare shapes without trailing ones."""
    out = list(shape)
    while len(out) > 1 and out[-1] == 1:
        out.pop()
    return tuple(out)


def _zoo_hparams(facts: FileFacts, arch: zoo.Architecture) -> list[str]:
    """The header numbers the model code divides by, sizes buffers with or indexes with."""
    hp = facts.hparams
    out = []
    for key, low in (("n_vocab", 1), ("n_embd", 1), ("n_head", 1), ("n_layer", 1), ("n_ff", 1), ("n_ctx_train", 4)):
        v = int_or_none(hp.get(key))
        if v is None or v < low:
            out.append(f"{key} is {v}; it must be at least {low}")
    n_layer = int_or_none(hp.get("n_layer")) or 0
    if n_layer > MAX_LAYERS:
        out.append(f"n_layer {n_layer} is outside 1..{MAX_LAYERS}")
    n_ctx = int_or_none(hp.get("n_ctx_train")) or 0
    if n_ctx > MAX_ZOO_CTX:
        out.append(f"the context {n_ctx} is beyond {MAX_ZOO_CTX} tokens; no model of this format had more than 8192 "
                   "(a damaged header)")
    if out:
        return out
    n_embd, n_head, n_vocab = int(hp["n_embd"]), int(hp["n_head"]), int(hp["n_vocab"])
    if n_embd % n_head:
        out.append(f"n_head {n_head} does not divide n_embd {n_embd}")
    if arch is zoo.FALCON:
        if hp.get("falcon_version") != 7:
            out.append(f"falcon_version is {hp.get('falcon_version')}; the Falcon graph is Falcon-7B's (7): 40 "
                       "marks Falcon-40B, whose grouped key/value heads it does not run")
        if hp.get("n_head_kv") != 1:
            out.append(f"n_head_kv is {hp.get('n_head_kv')}; the Falcon graph shares one key/value head (1)")
        if n_embd % n_head == 0 and (n_embd // n_head) % 2:
            out.append(f"the head dimension n_embd / n_head = {n_embd // n_head} is odd; RoPE needs it even")
    if arch is zoo.BERT:
        if n_vocab <= zoo.BERT_MASK:
            out.append(f"n_vocab is {n_vocab}; the BERT tokenizer uses the fixed ids [CLS] {zoo.BERT_CLS} and "
                       f"[SEP] {zoo.BERT_SEP}, so the vocabulary needs more than {zoo.BERT_MASK} tokens")
        if n_head == 1:  # measured: ggml of 2023 aborts in the attention's matrix product (ne1 == ne11)
            out.append("n_head is 1; the BERT graph runs two or more attention heads (the published files have 12)")
        n_max = int(hp["n_ctx_train"])
        if n_max <= zoo.BERT_WINDOW_OVERLAP:
            out.append(f"n_max_tokens is {n_max}; long texts are embedded in windows of n_max_tokens that overlap "
                       f"by {zoo.BERT_WINDOW_OVERLAP} tokens, so it must exceed {zoo.BERT_WINDOW_OVERLAP}")
        elif n_max > zoo.BERT_MAX_WINDOW:
            out.append(f"n_max_tokens is {n_max}; a window is evaluated at once and its attention grows with its "
                       f"square, so this runner takes at most {zoo.BERT_MAX_WINDOW} (the published files use 512)")
    top = max(arch.end_token_ids, default=0)
    if n_vocab <= top:
        out.append(f"n_vocab is {n_vocab}; the end token id {top} must be in the vocabulary")
    return out


def _zoo_tensors(facts: FileFacts, arch: zoo.Architecture) -> list[str]:
    """The tensor table against the hyperparameters: every tensor present once, of its exact shape and type."""
    hp = facts.hparams
    if int(hp["n_layer"]) > facts.n_tensors:
        return [f"n_layer is {hp['n_layer']} but the file holds only {facts.n_tensors} tensors"]
    if facts.n_tensors != len(facts.tensors):
        return [f"{facts.n_tensors - len(facts.tensors)} tensor name(s) occur more than once"]
    wtype = zoo.wtype_of(arch, int(facts.file_type or 0))
    if wtype is None:
        return [f"header ftype {facts.file_type} is not a weight type the {arch.display} loader maps "
                f"(it takes {', '.join(f'{k} ({v})' for k, v in arch.ftype_types.items())})"]
    expected = arch.expected_tensors({k: int(v) for k, v in hp.items() if isinstance(v, int)})
    out = []
    unknown = sorted(set(facts.tensors) - set(expected))
    if unknown:
        out.append(f"{len(unknown)} tensor(s) that {arch.display} does not have, e.g. {unknown[0]!r}")
    missing = [n for n, (_, _, opt) in expected.items() if not opt and n not in facts.tensors]
    if missing:
        out.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}")
    for name, (shape, weight, _) in expected.items():
        got = facts.tensors.get(name)
        if got is None:
            continue
        gtype, gshape, _ = got
        if len(gshape) > 2:
            out.append(f"{name} has {len(gshape)} dimensions; {arch.display} tensors have at most 2")
        elif _strip_ones(gshape) != _strip_ones(shape):
            out.append(f"{name} has shape {list(gshape)}; the header says {list(shape)}")
        want = wtype if weight else "F32"
        if gtype != want:
            role = f"the file's weight type (ftype {facts.file_type})" if weight else "as every norm and bias"
            out.append(f"{name} is {gtype}; it must be {want}, {role}")
        if len(out) >= 8:
            out.append("(further tensor problems not listed)")
            break
    return out


def _zoo_checks(facts: FileFacts, era: EraLimits) -> list[str]:
    arch = zoo.ARCHITECTURES[str(facts.architecture)]
    bad = _zoo_hparams(facts, arch)
    if bad or not facts.n_tensors:
        return bad
    return _zoo_tensors(facts, arch)


def _gguf_checks(facts: FileFacts, era: EraLimits) -> list[str]:
    return (_layer_count(facts, "gguf", exact=facts.architecture == "llama") + _heads(facts)
            + _gguf_hparams(facts, era) + _types(facts, era) + _vocab(facts, era))


def _legacy_checks(facts: FileFacts, era: EraLimits) -> list[str]:
    if facts.architecture in zoo.ARCHITECTURES:
        return _zoo_checks(facts, era)
    if facts.architecture != "llama":
        return []
    return (_heads(facts) + _legacy_llama(facts, era) + _layer_count(facts, "legacy", exact=True)
            + _types(facts, era))


_FAMILY: dict[str, Callable[[FileFacts, EraLimits], list[str]]] = {
    "gguf": _gguf_checks, **{f: _legacy_checks for f in _LEGACY}, "repl": _zoo_checks, "bert": _zoo_checks,
}


def problems(facts: FileFacts, backend: str) -> list[str]:
    """Why ``backend``'s engine would crash on this file although it reads its container, architecture
    and tensor types; empty when nothing is known to be wrong."""
    check = _FAMILY.get(facts.format)
    if check is None or facts.kind not in ("model", "vocab-only"):
        return []
    return check(facts, load_manifest()[backend].limits)
