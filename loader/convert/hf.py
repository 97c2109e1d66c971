"""Hugging Face GPT-J, LLaMA and MPT folders converted without torch: safetensors read with numpy.

The seed's three architectures each get the file our engines run best:

* **GPT-J** (``GPTJForCausalLM``) -> the GPT4All-era GPT-J ``ggml`` file that backend
  ``ggml-gpt4all-*`` runs: llama.cpp never had a GPT-J graph, so there is no GGUF GPT-J to write.
  HF GPT-J rotates interleaved pairs (``rotate_every_two``), which is ggml's rope mode 0: the
  weights are written as stored.  Quantized GPT-J (and ggmm MPT) files are made as the ggml examples
  made them, by the ggml of August 2023: the 2-D weights go into a ggjt v3 "carrier" file that
  ``llama-2023-08``'s quantizer (llama-cpp-python 0.1.78, the ggml ``ggml-gpt4all-2023-08`` is built
  on) quantizes, and its blocks are copied into the GPT-J file (QNT version 2).
* **LLaMA** (``LlamaForCausalLM``) with a SentencePiece ``tokenizer.model`` -> GGUF for the newest
  engine; q and k projections are permuted as upstream's converter does, because HF stores them for
  ``rotate_half`` while llama.cpp rotates consecutive pairs.
* **MPT** (``MPTForCausalLM``, ALiBi, no biases) -> GGUF for the newest engine (default), or GPT4All's
  ``ggmm`` for our MPT engine.  Measured against a float64 reference of the HF arithmetic
  (tests/test_convert_hf.py), ggmm is marginally closer (max |dlogit| 1.6e-3 vs 2.0e-3 for F32,
  1.6e-3 vs 2.7e-3 for F16, where ggmm keeps the embedding F32; logits span 11; same greedy tokens).
  The gap is below F16 rounding, while GGUF runs on the maintained engine with CUDA, every quant type
  and a real BPE tokenizer (our ggmm engine tokenizes by greedy longest match): GGUF is the default.

Everything else (other architectures, ``pytorch_model*.bin`` checkpoints, LLaMA folders with only a
BPE ``tokenizer.json`` whose pre-tokenizer upstream identifies by hash, RoPE scaling) goes to
upstream's ``convert_hf_to_gguf.py`` (see :func:`gpt4all_loader.convert.legacy.convert_hf`), which needs torch.

The folder is validated completely (config values, every expected tensor present in a listed shard
with the shape the config implies, nothing unexpected, the vocabulary) before a byte is written.
Needs numpy (and sentencepiece for ``tokenizer.model``): ``pip install 'gpt4all-loader[hf]'``.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, TypeAlias

from ..errors import ConvertError, UsageError
from ..formats.gguf import GgufHeader, TokenType, ValueType
from .common import ALIGN, Options, Temps, check_space, outtype_number, quantize_in_child, say, write_error

if TYPE_CHECKING:  # pragma: no cover - numpy is an optional dependency, imported by _need_numpy()
    from numpy.typing import NDArray

#: the values of one checkpoint tensor
Array: TypeAlias = "NDArray[Any]"

#: ``architectures[0]`` (or ``model_type``) of config.json -> our name for it
ARCHITECTURES = {"GPTJForCausalLM": "gptj", "gptj": "gptj", "LlamaForCausalLM": "llama", "llama": "llama",
                 "MPTForCausalLM": "mpt", "mpt": "mpt"}
#: the file each architecture becomes when neither --format nor the suffix of OUT says
DEFAULT_FORMAT = {"gptj": "ggml", "llama": "gguf", "mpt": "gguf"}
#: safetensors dtype -> (numpy dtype name, bytes per element)
_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}
#: tensors HF checkpoints carry that are buffers, not weights (causal masks, rotary tables)
_BUFFERS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
#: GGUF token types


def _need_numpy() -> ModuleType:
    try:
        import numpy
    except ImportError:
        raise ConvertError("converting a Hugging Face folder needs numpy: pip install numpy  "
                           "(or: pip install 'gpt4all-loader[hf]')") from None
    return numpy


# --------------------------------------------------------------------------------------------------
# safetensors: header + memory map, no torch

@dataclass
class _Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the data in the file
    nbytes: int


class Checkpoint:
    """The tensors of a folder's safetensors shards, by name (read lazily, as float32 arrays)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, _Entry] = {}
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                wmap = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(wmap.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ConvertError(f"{index} cannot be read: {e}") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ConvertError(f"{folder}: shard(s) {', '.join(missing)} listed in {index.name} are missing; "
                                   f"download the complete model folder")
            files = [folder / s for s in shards]
        else:
            files = sorted(folder.glob("*.safetensors"))
            wmap = None
        for f in files:
            self._read_header(f)
        if wmap is not None:
            absent = [n for n, s in wmap.items() if n not in self.entries]
            if absent:
                raise ConvertError(f"{folder}: tensor {absent[0]} listed in the index is in no shard "
                                   f"({len(absent)} missing); download the model folder again")

    def _read_header(self, f: Path) -> None:
        try:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                raw = fh.read(8)
                n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
                if n < 2 or 8 + n > size or n > 100 << 20:
                    raise ConvertError(f"{f}: not a safetensors file (header length {n} in a {size} B file)")
                header = json.loads(fh.read(n))
        except OSError as e:
            raise ConvertError(f"cannot read {f}: {e.strerror or e}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ConvertError(f"{f}: the safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise ConvertError(f"{f}: the safetensors header is not a JSON object")
        base = 8 + n
        for name, v in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape = v["dtype"], tuple(int(d) for d in v["shape"])
                lo, hi = (int(x) for x in v["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ConvertError(f"{f}: tensor {name!r} has a malformed header entry") from None
            if dtype not in _DTYPES:
                raise ConvertError(f"{f}: tensor {name} is {dtype}; only F32, F16 and BF16 checkpoints convert")
            if min(shape, default=1) < 0 or not (0 <= lo <= hi and base + hi <= size
                                                 and hi - lo == math.prod(shape) * _DTYPES[dtype][1]):
                raise ConvertError(f"{f}: tensor {name} ({dtype} {list(shape)}) does not fit its data offsets "
                                   f"[{lo}, {hi}) in a {size} B file: the file is damaged or cut short")
            if name in self.entries:
                raise ConvertError(f"{self.folder}: tensor {name} is stored twice ({self.entries[name].file.name} "
                                   f"and {f.name})")
            self.entries[name] = _Entry(f, dtype, shape, base + lo, hi - lo)

    def array(self, name: str) -> Array:
        """float32 values of ``name`` in the checkpoint's (row-major, HF) shape."""
        np = _need_numpy()
        e = self.entries[name]
        mm = np.memmap(e.file, dtype=np.uint8, mode="r", offset=e.start, shape=(e.nbytes,))
        np_dtype = _DTYPES[e.dtype][0]
        if e.dtype == "BF16":
            a = (mm.view(np_dtype).astype(np.uint32) << 16).view(np.float32)
        else:
            a = mm.view(np_dtype).astype(np.float32)
        values: Array = a.reshape(e.shape)
        return values


# --------------------------------------------------------------------------------------------------
# Vocabularies

def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character standing for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclass
class BpeVocab:
    """A byte-level BPE vocabulary: tokens by id as the byte-level strings, merges, special ids."""

    tokens: list[str | None]
    merges: list[str]
    special: set[int] = field(default_factory=set)
    added: set[int] = field(default_factory=set)

    def token_bytes(self, i: int, dec: dict[str, int]) -> bytes:
        t = self.tokens[i]
        assert t is not None
        if i in self.added:
            return t.encode()
        return bytes(dec[c] for c in t)


def read_bpe(folder: Path) -> BpeVocab | None:
    """tokenizer.json (byte-level BPE), else vocab.json + merges.txt (+ added_tokens.json); None if neither.
    ``folder`` may also be the tokenizer.json file itself."""
    tj = folder if folder.is_file() else folder / "tokenizer.json"
    try:
        if tj.is_file():
            d = json.loads(tj.read_text(encoding="utf-8"))
            model = d.get("model") or {}
            if model.get("type") != "BPE":
                raise ConvertError(f"{tj}: a {model.get('type')} tokenizer; only byte-level BPE converts here")
            vocab = dict(model["vocab"])
            merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
            added = {int(a["id"]): (a["content"], bool(a.get("special"))) for a in d.get("added_tokens", [])}
        elif (folder / "vocab.json").is_file():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            mf = folder / "merges.txt"
            merges = [ln for ln in mf.read_text(encoding="utf-8").splitlines()
                      if ln and not ln.startswith("#version")] if mf.is_file() else []
            at = folder / "added_tokens.json"
            extra = json.loads(at.read_text(encoding="utf-8")) if at.is_file() else {}
            added = {int(i): (t, True) for t, i in extra.items()}
        else:
            return None
    except ConvertError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConvertError(f"{folder}: the tokenizer files cannot be read ({type(e).__name__}: {e})") from None
    n = max([int(i) for i in vocab.values()] + list(added) + [-1]) + 1
    tokens: list[str | None] = [None] * n
    for t, i in vocab.items():
        tokens[int(i)] = t
    for i, (t, _) in added.items():
        tokens[i] = t
    dec = _byte_decoder()
    for i, t in enumerate(tokens):
        if t is not None and i not in added and any(c not in dec for c in t):
            raise ConvertError(f"{folder}: token {i} ({t!r}) is not byte-level BPE text; this tokenizer "
                               f"converts only with upstream's converter")
    return BpeVocab(tokens, merges, {i for i, (_, s) in added.items() if s}, set(added))


@dataclass
class SpmVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos: int
    eos: int
    unk: int


def read_spm(path: Path) -> SpmVocab:
    try:
        import sentencepiece as spm
    except ImportError:
        raise ConvertError(f"reading {path} needs sentencepiece: pip install sentencepiece  "
                           f"(or: pip install 'gpt4all-loader[hf]')") from None
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{path}: not a SentencePiece model ({e})") from None
    toks: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(sp.get_piece_size()):
        toks.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i)
                     else TokenType.UNUSED if sp.is_unused(i) else TokenType.BYTE if sp.is_byte(i)
                     else TokenType.NORMAL)
    return SpmVocab(toks, scores, types, sp.bos_id(), sp.eos_id(), sp.unk_id())


# --------------------------------------------------------------------------------------------------
# Per-architecture plans: config -> hyperparameters, expected tensors, output names

@dataclass
class Tensor:
    hf: str                  # name in the checkpoint
    shape: tuple[int, ...]   # HF (row-major) shape the config implies
    gguf: str | None = None  # name in a GGUF file (None: not written there)
    legacy: bool = True      # written to the ggml-era file
    fix: Callable[[Array], Array] | None = None  # transform of the values (LLaMA q/k permutation)


@dataclass
class Plan:
    arch: str
    hp: dict[str, Any]
    tensors: list[Tensor]
    optional: set[str] = field(default_factory=set)  # hf names that may be absent


def _ints(config: dict[str, Any], src: Path, *keys: str) -> list[int]:
    out = []
    for k in keys:
        v = config.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConvertError(f"{src}/config.json: {k} must be a positive integer (got {v!r})")
        out.append(v)
    return out


def _refuse(src: Path, what: str) -> None:
    raise ConvertError(f"{src}: {what}; this variant converts only with upstream's convert_hf_to_gguf.py "
                       f"(which needs torch)")


def _permute(n_head: int) -> Callable[[Array], Array]:
    """Upstream's LlamaModel.permute: rows of each head from rotate_half order to interleaved pairs."""
    def f(w: Array) -> Array:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return f


def plan_gptj(c: dict[str, Any], src: Path) -> Plan:
    v, ctx, e, h, n = _ints(c, src, "vocab_size", "n_positions", "n_embd", "n_head", "n_layer")
    rot = c.get("rotary_dim") or e // h
    if e % h or not isinstance(rot, int) or rot % 2 or rot > e // h:
        raise ConvertError(f"{src}/config.json: n_embd {e}, n_head {h}, rotary_dim {rot!r}: need n_embd divisible "
                           f"by n_head and an even rotary_dim of at most n_embd/n_head")
    if c.get("n_inner") not in (None, 4 * e):
        _refuse(src, f"n_inner {c['n_inner']} is not 4 x n_embd, which the GPT-J engine assumes")
    if c.get("tie_word_embeddings"):
        _refuse(src, "tied embeddings (GPT-J has its own lm_head)")
    t = [Tensor("transformer.wte.weight", (v, e))]
    for i in range(n):
        p = f"transformer.h.{i}."
        t += [Tensor(p + "ln_1.weight", (e,)), Tensor(p + "ln_1.bias", (e,))]
        t += [Tensor(p + f"attn.{q}_proj.weight", (e, e)) for q in ("q", "k", "v", "out")]
        t += [Tensor(p + "mlp.fc_in.weight", (4 * e, e)), Tensor(p + "mlp.fc_in.bias", (4 * e,)),
              Tensor(p + "mlp.fc_out.weight", (e, 4 * e)), Tensor(p + "mlp.fc_out.bias", (e,))]
    t += [Tensor("transformer.ln_f.weight", (e,)), Tensor("transformer.ln_f.bias", (e,)),
          Tensor("lm_head.weight", (v, e)), Tensor("lm_head.bias", (v,))]
    return Plan("gptj", dict(n_vocab=v, n_ctx=ctx, n_embd=e, n_head=h, n_layer=n, n_rot=rot), t)


def plan_llama(c: dict[str, Any], src: Path) -> Plan:
    v, e, f, n, h, ctx = _ints(c, src, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "max_position_embeddings")
    kv = c.get("num_key_value_heads") or h
    if e % h or not isinstance(kv, int) or kv <= 0 or h % kv or (e // h) % 2:
        raise ConvertError(f"{src}/config.json: hidden_size {e}, num_attention_heads {h}, num_key_value_heads "
                           f"{kv!r}: need heads dividing hidden_size, an even head size and kv heads dividing heads")
    if c.get("head_dim") not in (None, e // h):
        _refuse(src, f"head_dim {c['head_dim']} differs from hidden_size / num_attention_heads")
    if c.get("rope_scaling"):
        _refuse(src, "RoPE scaling is set")
    if c.get("attention_bias") or c.get("mlp_bias"):
        _refuse(src, "attention or MLP biases are set")
    if c.get("hidden_act", "silu") != "silu":
        _refuse(src, f"hidden_act {c['hidden_act']!r} is not silu")
    eps = c.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConvertError(f"{src}/config.json: rms_norm_eps must be a small positive number (got {eps!r})")
    hd = e // h
    t = [Tensor("model.embed_tokens.weight", (v, e), "token_embd.weight")]
    for i in range(n):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t += [Tensor(p + "input_layernorm.weight", (e,), b + "attn_norm.weight"),
              Tensor(p + "self_attn.q_proj.weight", (e, e), b + "attn_q.weight", fix=_permute(h)),
              Tensor(p + "self_attn.k_proj.weight", (kv * hd, e), b + "attn_k.weight", fix=_permute(kv)),
              Tensor(p + "self_attn.v_proj.weight", (kv * hd, e), b + "attn_v.weight"),
              Tensor(p + "self_attn.o_proj.weight", (e, e), b + "attn_output.weight"),
              Tensor(p + "post_attention_layernorm.weight", (e,), b + "ffn_norm.weight"),
              Tensor(p + "mlp.gate_proj.weight", (f, e), b + "ffn_gate.weight"),
              Tensor(p + "mlp.down_proj.weight", (e, f), b + "ffn_down.weight"),
              Tensor(p + "mlp.up_proj.weight", (f, e), b + "ffn_up.weight")]
    t += [Tensor("model.norm.weight", (e,), "output_norm.weight"), Tensor("lm_head.weight", (v, e), "output.weight")]
    hp = dict(n_vocab=v, n_ctx=ctx, n_embd=e, n_ff=f, n_layer=n, n_head=h, n_head_kv=kv, n_rot=hd,
              eps=float(eps), rope_theta=c.get("rope_theta"))
    return Plan("llama", hp, t, optional={"lm_head.weight"} if c.get("tie_word_embeddings") else set())


def plan_mpt(c: dict[str, Any], src: Path) -> Plan:
    v, ctx, e, h, n = _ints(c, src, "vocab_size", "max_seq_len", "d_model", "n_heads", "n_layers")
    a = c.get("attn_config") or {}
    if e % h:
        raise ConvertError(f"{src}/config.json: d_model {e} is not a multiple of n_heads {h}")
    if not a.get("alibi", False):
        _refuse(src, "attn_config.alibi is off (both MPT engines position tokens with ALiBi only)")
    if a.get("kv_n_heads") not in (None, h) or a.get("qk_ln") or a.get("attn_type", "multihead_attention") \
            != "multihead_attention":
        _refuse(src, "grouped-query attention or qk layer norm is set")
    if not c.get("no_bias", False):
        _refuse(src, "no_bias is false (the layers carry biases)")
    if c.get("expansion_ratio", 4) != 4:
        _refuse(src, f"expansion_ratio {c['expansion_ratio']} is not 4")
    clip = a.get("clip_qkv") or 0.0
    bias_max = a.get("alibi_bias_max", 8)
    t = [Tensor("transformer.wte.weight", (v, e), "token_embd.weight")]
    for i in range(n):
        p, b = f"transformer.blocks.{i}.", f"blk.{i}."
        t += [Tensor(p + "norm_1.weight", (e,), b + "attn_norm.weight"),
              Tensor(p + "attn.Wqkv.weight", (3 * e, e), b + "attn_qkv.weight"),
              Tensor(p + "attn.out_proj.weight", (e, e), b + "attn_output.weight"),
              Tensor(p + "norm_2.weight", (e,), b + "ffn_norm.weight"),
              Tensor(p + "ffn.up_proj.weight", (4 * e, e), b + "ffn_up.weight"),
              Tensor(p + "ffn.down_proj.weight", (e, 4 * e), b + "ffn_down.weight")]
    t.append(Tensor("transformer.norm_f.weight", (e,), "output_norm.weight"))
    hp = dict(n_vocab=v, n_ctx=ctx, n_embd=e, n_head=h, n_layer=n, clip_qkv=float(clip),
              alibi_bias_max=float(bias_max))
    return Plan("mpt", hp, t)


PLANS = {"gptj": plan_gptj, "llama": plan_llama, "mpt": plan_mpt}


# --------------------------------------------------------------------------------------------------
# Which path a folder takes

def read_config(src: Path) -> dict[str, Any]:
    if not (src / "config.json").is_file():
        raise ConvertError(f"{src} is a folder without config.json: not a Hugging Face model folder "
                           f"(a converted model is one .gguf/.bin file; pass that file instead)")
    try:
        c = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{src}/config.json cannot be read: {e}") from None
    if not isinstance(c, dict):
        raise ConvertError(f"{src}/config.json is not a JSON object")
    return c


def architecture(c: dict[str, Any]) -> str | None:
    names = c.get("architectures") or []
    for key in ([names[0]] if isinstance(names, list) and names else []) + [c.get("model_type")]:
        if isinstance(key, str) and key in ARCHITECTURES:
            return ARCHITECTURES[key]
    return None


def route(src: Path) -> tuple[str, str]:
    """("native", arch) when this module converts the folder, ("upstream", why) when upstream's script does."""
    c = read_config(src)
    arch = architecture(c)
    has_st = any(src.glob("*.safetensors")) or (src / "model.safetensors.index.json").is_file()
    has_pt = any(src.glob("pytorch_model*.bin")) or any(src.glob("consolidated*.pth"))
    if arch is None:
        names = c.get("architectures")
        label = names[0] if isinstance(names, list) and names else c.get("model_type")
        return "upstream", f"architecture {label!r} is not GPT-J, LLaMA or MPT"
    if not has_st:
        if arch == "gptj" and has_pt:
            raise ConvertError(f"{src}: a GPT-J checkpoint stored as pytorch_model*.bin; no converter of ours reads "
                               f"that without torch, and upstream's has no GPT-J: save it as safetensors first "
                               f"(transformers: model.save_pretrained(folder, safe_serialization=True))")
        if has_pt:
            return "upstream", "the weights are pytorch_model*.bin (pickled torch tensors)"
        raise ConvertError(f"{src} has a config.json but no weights (*.safetensors or pytorch_model*.bin)")
    if arch == "llama" and not (src / "tokenizer.model").is_file():
        return "upstream", "a LLaMA folder without tokenizer.model (its BPE pre-tokenizer is identified by upstream)"
    return "native", arch


def output_format(arch: str, out: Path, fmt: str | None) -> str:
    """--format, else OUT's suffix (.gguf / .bin), else the architecture's default."""
    if fmt is None:
        fmt = {".gguf": "gguf", ".bin": "ggml"}.get(out.suffix.lower(), DEFAULT_FORMAT[arch])
        if arch == "llama":
            fmt = "gguf"  # LLaMA is written as GGUF only; .bin is just a name here
    if arch == "gptj" and fmt == "gguf":
        raise UsageError("GPT-J converts only to the GPT4All-era ggml file: no engine runs GPT-J GGUF (llama.cpp has "
                         "no GPT-J graph); write OUT as model.bin or pass --format ggml")
    if arch == "llama" and fmt == "ggml":
        raise UsageError("LLaMA converts to GGUF only (the 2023 ggml/ggjt engines are kept to read old files); "
                         "write OUT as model.gguf")
    return fmt


# --------------------------------------------------------------------------------------------------
# Validation: everything checked before anything is written

def validate(src: Path, plan: Plan, ck: Checkpoint) -> list[Tensor]:
    """The plan's tensors present in the checkpoint; raises ConvertError on any mismatch."""
    missing = [t.hf for t in plan.tensors if t.hf not in ck.entries and t.hf not in plan.optional]
    if missing:
        raise ConvertError(f"{src}: tensor {missing[0]} is missing ({len(missing)} missing of {len(plan.tensors)}); "
                           f"the checkpoint does not match config.json ({plan.arch}, {plan.hp['n_layer']} layers)")
    for t in plan.tensors:
        e = ck.entries.get(t.hf)
        if e is not None and e.shape != t.shape:
            raise ConvertError(f"{src}: tensor {t.hf} has shape {list(e.shape)} in {e.file.name}, config.json "
                               f"implies {list(t.shape)}: the weights and config.json do not belong together")
    known = {t.hf for t in plan.tensors}
    extra = [n for n in ck.entries if n not in known and not n.endswith(_BUFFERS)]
    if extra:
        raise ConvertError(f"{src}: unexpected tensor {extra[0]} ({len(extra)} not part of a plain {plan.arch} "
                           f"model of this config); this variant converts only with upstream's converter")
    return [t for t in plan.tensors if t.hf in ck.entries]


# --------------------------------------------------------------------------------------------------
# Writing

def _otype(shape: tuple[int, ...], f16: bool) -> int:
    return 1 if f16 and len(shape) > 1 else 0  # 1-D tensors always F32


#: a tensor's bytes as written: record header (ggml-era files) or nothing (GGUF), then data
_Part = tuple[int, bytes, Callable[[], bytes]]  # (absolute offset to pad to, or -1), header, data


def _stream(path: Path, head: bytes, parts: list[_Part], out: Path) -> None:
    """Write ``head`` then, per tensor, pad to its offset, its record header, its data."""
    try:
        with open(path, "wb") as fo:
            fo.write(head)
            for off, rec, data in parts:
                if off >= 0:
                    fo.write(b"\0" * (off - fo.tell()))
                fo.write(rec)
                fo.write(data())
            fo.flush()
            os.fsync(fo.fileno())
    except OSError as e:
        raise write_error(e, out) from None


def _values(ck: Checkpoint, t: Tensor, otype: int) -> Callable[[], bytes]:
    def get() -> bytes:
        a = ck.array(t.hf)
        if t.fix:
            a = t.fix(a)
        return a.astype("<f2" if otype == 1 else "<f4").tobytes()
    return get


def vocab_bytes(src: Path, bpe: BpeVocab, n_vocab: int) -> list[bytes]:
    """Tokens as the bytes they stand for, one per id up to n_vocab (gaps become placeholder tokens)."""
    if len(bpe.tokens) > n_vocab:
        raise ConvertError(f"{src}: the tokenizer has {len(bpe.tokens)} tokens, more than vocab_size {n_vocab}")
    dec = _byte_decoder()
    out = []
    for i in range(n_vocab):
        out.append(bpe.token_bytes(i, dec) if i < len(bpe.tokens) and bpe.tokens[i] is not None
                   else f"<|extratoken_{i}|>".encode())
    return out


# -- GPT4All-era files (GPT-J ggml, MPT ggmm), quantized through a ggjt carrier ------------------------

#: --outtype values of GPT4All-era GPT-J/MPT files: the block types of the ggml examples' quantizers
LEGACY_OUTTYPES = ("f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
#: the backend whose quantizer makes them: its ggml (llama-cpp-python 0.1.78) is the one backend
#: ggml-gpt4all-2023-08 runs, so the blocks are exactly that era's (QNT version 2, PR 1508 layout)
LEGACY_QUANTIZER = "llama-2023-08"
_QNT_VERSION = 2
_QK = 32  # values per block of every offered type: quantized rows must be a whole number of blocks


def _quantized(plan: Plan, t: Tensor) -> bool:
    """The ggml examples quantize every 2-D weight; GPT4All's ggmm keeps wte F32 (its MPT code reads
    embedding rows as floats)."""
    return len(t.shape) == 2 and not (plan.arch == "mpt" and t.hf == "transformer.wte.weight")


def _carrier_file(plan: Plan, ck: Checkpoint, tensors: list[Tensor], stage: Path, out: Path) -> None:
    """A ggjt v3 file holding the tensors to quantize, as F32: llama_model_quantize of that era
    quantizes each 2-D tensor whose name ends in "weight" without looking at the model around it."""
    from ..formats.writer import legacy_tensor_header

    hp = plan.hp
    head = struct.pack("<II7i", 0x67676A74, 3, 1, hp["n_embd"], 256, hp["n_head"], hp["n_layer"],
                       hp["n_embd"] // hp["n_head"], 0) + struct.pack("<I", 1) + b"x" + struct.pack("<f", 0.0)
    parts: list[_Part] = []
    pos = len(head)
    for t in tensors:
        if _quantized(plan, t):
            rec = legacy_tensor_header(t.hf, list(reversed(t.shape)), 0)
            pos += len(rec)
            pad = -pos % 32
            parts.append((-1, rec + b"\0" * pad, _values(ck, t, 0)))
            pos += pad + 4 * math.prod(t.shape)
    _stream(stage, head, parts, out)


def _carrier_blocks(path: Path) -> dict[str, tuple[int, Callable[[], bytes]]]:
    """hf name -> (ggml type id, the quantized bytes) of a quantized carrier file."""
    from ..formats.legacy import tensor_records
    from ..formats.sniff import read_facts

    def reader(off: int, n: int) -> Callable[[], bytes]:
        def get() -> bytes:
            with open(path, "rb") as f:
                f.seek(off)
                return f.read(n)
        return get

    try:
        recs = tensor_records(str(path), read_facts(path))
    except (OSError, ValueError) as e:
        raise ConvertError(f"the quantized tensors cannot be read back: {e}") from None
    return {name: (tid, reader(off, nbytes)) for name, tid, _, off, nbytes in recs}


def _legacy_file(src: Path, plan: Plan, ck: Checkpoint, tensors: list[Tensor], bpe: BpeVocab, ftype: int,
                 stage: Path, out: Path, blocks: dict[str, tuple[int, Callable[[], bytes]]] | None = None) -> None:
    """GPT-J ``ggml`` or MPT ``ggmm``; ``blocks``: quantized tensors (ftype then carries the QNT version)."""
    from ..formats.writer import ggmm_header, gptj_header, legacy_tensor_header

    hp, f16 = plan.hp, ftype == 1
    ft = ftype + _QNT_VERSION * 1000 if blocks else ftype
    toks = vocab_bytes(src, bpe, hp["n_vocab"])
    if plan.arch == "gptj":
        head = gptj_header(hp["n_vocab"], hp["n_ctx"], hp["n_embd"], hp["n_head"], hp["n_layer"], hp["n_rot"], ft, toks)
    else:
        head = ggmm_header(hp["n_vocab"], hp["n_ctx"], hp["n_layer"], hp["n_head"], hp["n_embd"],
                           hp["alibi_bias_max"], hp["clip_qkv"], ft, toks, bpe.special)
    parts: list[_Part] = []
    for t in tensors:
        ne = list(reversed(t.shape))
        if blocks and t.hf in blocks:
            tid, data = blocks[t.hf]
            parts.append((-1, legacy_tensor_header(t.hf, ne, tid), data))
            continue
        ot = _otype(t.shape, f16) if _quantized(plan, t) else 0
        parts.append((-1, legacy_tensor_header(t.hf, ne, ot), _values(ck, t, ot)))
    _stream(stage, head, parts, out)


def _gguf_meta(src: Path, plan: Plan, bpe: BpeVocab | None, spm: SpmVocab | None, file_type: int,
               config: dict[str, Any]) -> GgufHeader:
    hp, a = plan.hp, plan.arch
    m = GgufHeader()
    m.add("general.architecture", ValueType.STRING, a)
    m.add("general.name", ValueType.STRING, src.name)
    m.add("general.description", ValueType.STRING, f"converted by gpt4all-convert from a Hugging Face {a} folder")
    m.add("general.file_type", ValueType.UINT32, file_type)
    m.add(f"{a}.context_length", ValueType.UINT32, hp["n_ctx"])
    m.add(f"{a}.embedding_length", ValueType.UINT32, hp["n_embd"])
    m.add(f"{a}.block_count", ValueType.UINT32, hp["n_layer"])
    m.add(f"{a}.attention.head_count", ValueType.UINT32, hp["n_head"])
    if a == "llama":
        m.add("llama.feed_forward_length", ValueType.UINT32, hp["n_ff"])
        m.add("llama.rope.dimension_count", ValueType.UINT32, hp["n_rot"])
        m.add("llama.attention.head_count_kv", ValueType.UINT32, hp["n_head_kv"])
        m.add("llama.attention.layer_norm_rms_epsilon", ValueType.FLOAT32, hp["eps"])
        if hp["rope_theta"]:
            m.add("llama.rope.freq_base", ValueType.FLOAT32, float(hp["rope_theta"]))
    else:
        m.add("mpt.feed_forward_length", ValueType.UINT32, 4 * hp["n_embd"])
        m.add("mpt.attention.layer_norm_epsilon", ValueType.FLOAT32, 1e-5)
        m.add("mpt.attention.max_alibi_bias", ValueType.FLOAT32, hp["alibi_bias_max"])
        if hp["clip_qkv"]:
            m.add("mpt.attention.clamp_kqv", ValueType.FLOAT32, hp["clip_qkv"])
    n = hp["n_vocab"]
    if spm is not None:
        if len(spm.tokens) > n:
            raise ConvertError(f"{src}: tokenizer.model has {len(spm.tokens)} pieces, more than vocab_size {n}")
        pad = n - len(spm.tokens)
        m.add("tokenizer.ggml.model", ValueType.STRING, "llama")
        m.add_array("tokenizer.ggml.tokens", ValueType.STRING,
                    spm.tokens + [f"[PAD{i}]" for i in range(len(spm.tokens), n)])
        m.add_array("tokenizer.ggml.scores", ValueType.FLOAT32, spm.scores + [-1000.0] * pad)
        m.add_array("tokenizer.ggml.token_type", ValueType.INT32, spm.types + [TokenType.UNUSED] * pad)
        bos, eos, unk = config.get("bos_token_id", spm.bos), config.get("eos_token_id", spm.eos), spm.unk
    else:
        assert bpe is not None
        if len(bpe.tokens) > n:
            raise ConvertError(f"{src}: the tokenizer has {len(bpe.tokens)} tokens, more than vocab_size {n}")
        toks = [bpe.tokens[i] if i < len(bpe.tokens) and bpe.tokens[i] is not None else f"[PAD{i}]" for i in range(n)]
        types = [TokenType.CONTROL if i in bpe.special else TokenType.USER_DEFINED if i in bpe.added else
                 TokenType.NORMAL if i < len(bpe.tokens) and bpe.tokens[i] is not None else TokenType.UNUSED
                 for i in range(n)]
        m.add("tokenizer.ggml.model", ValueType.STRING, "gpt2")
        m.add("tokenizer.ggml.pre", ValueType.STRING, "mpt" if a == "mpt" else "gpt-2")
        m.add_array("tokenizer.ggml.tokens", ValueType.STRING, toks)
        m.add_array("tokenizer.ggml.token_type", ValueType.INT32, types)
        m.add_array("tokenizer.ggml.merges", ValueType.STRING, bpe.merges)
        end = next((i for i, t in enumerate(bpe.tokens) if t == "<|endoftext|>"), None)
        bos, eos, unk = config.get("bos_token_id", end), config.get("eos_token_id", end), None
    for key, tid in (("bos", bos), ("eos", eos), ("unknown", unk)):
        if isinstance(tid, int) and 0 <= tid < n:
            m.add(f"tokenizer.ggml.{key}_token_id", ValueType.UINT32, tid)
    return m


def _gguf_file(src: Path, plan: Plan, ck: Checkpoint, tensors: list[Tensor], meta_fn: Callable[[int], GgufHeader],
               f16: bool,
               stage: Path, out: Path) -> None:
    infos: list[tuple[str, list[int], int, int]] = []
    for t in tensors:
        if t.gguf is None:  # only GPT-J's tensors lack GGUF names, and GPT-J is never written as GGUF
            raise ConvertError(f"{src}: tensor {t.hf} has no GGUF name")
        ot = _otype(t.shape, f16)
        infos.append((t.gguf, list(reversed(t.shape)), ot, math.prod(t.shape) * (4 if ot == 0 else 2)))
    meta = meta_fn(1 if f16 else 0)
    for name, ne, ot, nbytes in infos:
        meta.add_tensor(name, ne, ot, nbytes)
    head, offsets = meta.encode(ALIGN)
    parts: list[_Part] = [(len(head) + off, b"", _values(ck, t, ot))
                          for t, off, (_, _, ot, _) in zip(tensors, offsets, infos)]
    _stream(stage, head, parts, out)


def convert_folder(src: Path, out: Path, opts: Options, arch: str) -> Path:
    """Convert a validated GPT-J / LLaMA / MPT safetensors folder (see the module docstring)."""
    _need_numpy()
    config = read_config(src)
    fmt = output_format(arch, out, opts.format)
    ftype_out = outtype_number(opts.outtype)
    if fmt == "ggml" and opts.outtype.lower() not in LEGACY_OUTTYPES:
        raise UsageError(f"--outtype {opts.outtype} for a GPT4All-era {arch} file: choose one of "
                         f"{', '.join(LEGACY_OUTTYPES)} (the block types of that era)")
    plan = PLANS[arch](config, src)
    ck = Checkpoint(src)
    tensors = validate(src, plan, ck)
    bpe = spm = None
    if arch == "llama":
        spm = read_spm(src / "tokenizer.model")
    else:
        bpe = read_bpe(src)
        if bpe is None:
            raise ConvertError(f"{src}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    quantize = ftype_out not in (0, 1)
    if quantize and fmt == "ggml":
        _check_legacy_quantizer(src, plan, tensors, opts)
    f16 = ftype_out == 1
    total = sum(4 * max(1, math.prod(t.shape)) for t in tensors)
    check_space(out.parent, (total if not f16 else total // 2) * (2 if quantize else 1), f"{out.name}")
    def meta_fn(ft: int) -> GgufHeader:
        return _gguf_meta(src, plan, bpe, spm, ft, config)
    if fmt == "gguf":
        meta_fn(0)  # vocabulary checks before anything is written
    else:
        vocab_bytes(src, _legacy_vocab(src, bpe), plan.hp["n_vocab"])
    say(opts, f"gpt4all-convert: {src} ({arch}, safetensors, numpy) -> {out} ({fmt}, "
               f"{'F32' if not f16 else 'F16'}{', then ' + opts.outtype.upper() if quantize else ''})")
    temps = Temps(out)
    try:
        stage = temps.new("f32" if quantize else fmt)
        if fmt == "gguf":
            _gguf_file(src, plan, ck, tensors, meta_fn, f16, stage, out)
            final = quantize_in_child(stage, temps, opts) if quantize else stage
        elif quantize:
            _carrier_file(plan, ck, tensors, stage, out)
            carrier = quantize_in_child(stage, temps, opts, LEGACY_QUANTIZER, mode="carrier")
            final = temps.new(fmt)
            _legacy_file(src, plan, ck, tensors, _legacy_vocab(src, bpe), ftype_out, final, out,
                         _carrier_blocks(carrier))
        else:
            _legacy_file(src, plan, ck, tensors, _legacy_vocab(src, bpe), ftype_out, stage, out)
            final = stage
        temps.commit(final)
    finally:
        temps.cleanup()
    return out


def _legacy_vocab(src: Path, bpe: BpeVocab | None) -> BpeVocab:
    """The BPE vocabulary of a GPT4All-era file: output_format() writes ggml/ggmm for GPT-J and MPT
    only, whose vocabulary convert_folder() has read (so the error below is never expected)."""
    if bpe is None:
        raise ConvertError(f"{src}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    return bpe


def _check_legacy_quantizer(src: Path, plan: Plan, tensors: list[Tensor], opts: Options) -> None:
    from ..engines.manifest import build_command
    from ..engines.variants import choose_variant

    rows = [t for t in tensors if _quantized(plan, t) and t.shape[1] % _QK]
    if rows:
        raise ConvertError(f"{src}: tensor {rows[0].hf} has rows of {rows[0].shape[1]} values, not a multiple of "
                           f"{_QK}, so it cannot be quantized to {opts.outtype}; use --outtype f16")
    choice = choose_variant(LEGACY_QUANTIZER, "cpu")
    if choice.variant is None:
        raise ConvertError(f"{opts.outtype} {plan.arch} files are quantized by backend {LEGACY_QUANTIZER}, which "
                           f"cannot run here ({choice.reason}); build it with: {build_command(LEGACY_QUANTIZER)}, "
                           f"or use --outtype f16")


#: for the CLI help: which folder takes which path
ROUTES = ("GPT-J, LLaMA (with tokenizer.model) and MPT folders stored as safetensors are converted with numpy, "
          "no torch: GPT-J -> GPT4All ggml (.bin), LLaMA -> GGUF, MPT -> GGUF (.gguf, default) or GPT4All ggmm "
          "(.bin or --format ggml).  Other architectures, pytorch_model*.bin weights and LLaMA folders with only "
          "tokenizer.json go to upstream's convert_hf_to_gguf.py of the newest pinned sdist (needs torch).")
