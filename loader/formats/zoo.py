"""GPT4All's 2023 ggml model zoo as data: Falcon, Replit, StarCoder and BERT (Embed4All), and the GPT-J and
MPT layouts the project already ran (:data:`GPTJ`, :data:`MPT_GGMM`, :data:`MPT_GGML`).

Each :class:`Architecture` states what gpt4all 1.0.8's loader of that model read: the magic, the header
fields in file order, the vocabulary layout, the tensor table (names, shapes as functions of the
hyperparameters, which tensors take the file's weight type and which are always F32), the alignment of
tensor data, the tokenizer, the context length and the end tokens.  The reader (:mod:`.legacy`), the
validator (:mod:`..engines.validate`) and the writer of test files (:mod:`.writer`) all use these
tables, so a layout is written down once.  GPT-J and MPT keep their own reader code (in :mod:`.legacy`)
and loaders that check their files themselves; their tables here drive the writer.

Common to all four (gpt4all-backend at 39acbc83): little-endian; tensor records of ``i32 n_dims,
i32 name_len, i32 ggml type, i32 ne[n_dims], name`` then the data (Falcon: zero padding first, so that
the data starts at a file offset that is a multiple of 32); at most 2 dimensions; ``ne[0]`` is the row
length; records in any order, looked up by name.  The quant blocks are those of the ggml the libraries
linked (QNT version 2: Q4_0 = f16 scale + 16 bytes), whatever quant version the ftype carries.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping

from .source import MAGIC_BERT, MAGIC_GGJT, MAGIC_GGML, MAGIC_GGMM, MAGIC_REPL

#: hyperparameters by the project's keys (n_vocab, n_embd, n_head, n_head_kv, n_layer, n_ctx_train, n_ff)
Hparams = Mapping[str, int]

#: ``enum ggml_ftype`` -> tensor type, as ``ggml_ftype_to_ggml_type`` of the 2023-06 ggml maps it
#: (Falcon, StarCoder); other values abort there
GGML_FTYPE_TYPES: dict[int, str] = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
                                    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}
#: Replit and BERT map the ftype with a switch of their own: anything else is a load error
SMALL_FTYPE_TYPES: dict[int, str] = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1"}


@dataclass(frozen=True)
class HeaderField:
    """One header number: its name in gpt4all's hparams struct, the project's hparams key, and its
    ``struct`` code ("i" int32, "I" uint32, "f" float32)."""

    name: str
    key: str
    code: str = "i"


@dataclass(frozen=True)
class TensorRule:
    """One tensor of the table: ``name`` (``{i}`` = layer), ``shape`` as ggml ``ne`` (row length first),
    ``weight``: True for the file's weight type, False for always F32; ``optional`` tensors may be left out."""

    name: str
    shape: Callable[[Hparams], tuple[int, ...]]
    weight: bool
    optional: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name


@dataclass(frozen=True)
class Architecture:
    name: str                     #: FileFacts.architecture
    display: str                  #: for descriptions
    model_type: str               #: gpt4all's ``get_model_type()``
    magic: int
    container: str                #: FileFacts.format
    has_version: bool             #: a u32 format version follows the magic (read and ignored)
    header: tuple[HeaderField, ...]
    vocab_count_repeated: bool    #: an i32 count equal to n_vocab precedes the vocabulary
    vocab_scores: bool            #: each entry is followed by an f32 score
    tensors: tuple[TensorRule, ...]
    alignment: int                #: tensor data at a file offset that is a multiple of this (0: none)
    tokenizer: str                #: FileFacts.tokenizer
    n_ctx_fixed: int | None       #: the context when the file does not state one
    end_token_texts: tuple[str, ...]  #: end tokens by text (looked up in the vocabulary)
    end_token_ids: tuple[int, ...]    #: end tokens by id
    ftype_types: Mapping[int, str]
    ftype_mod_1000: bool          #: ``ftype %= 1000`` before mapping (ggml-examples quant version)
    #: what gpt4all 1.0.8's ``magic_match`` also asks, by hparams key: (low, high) inclusive
    gpt4all_ranges: Mapping[str, tuple[int, int]]
    #: bit 31 of a token's length marks a special token (GPT4All's MPT)
    vocab_special_bit: bool = False

    @cached_property
    def _name_pattern(self) -> re.Pattern[str]:
        alts = (re.escape(r.name).replace(re.escape("{i}"), r"(?:0|[1-9][0-9]*)") for r in self.tensors)
        return re.compile("(?:" + "|".join(alts) + ")")

    def owns(self, tensor_name: str) -> bool:
        """Whether ``tensor_name`` is one of this architecture's tensor names (any layer)."""
        return self._name_pattern.fullmatch(tensor_name) is not None

    @property
    def ftype_field(self) -> int:
        """Index of the ftype among the header fields."""
        return [f.key for f in self.header].index("ftype")

    def n_ctx(self, hp: Hparams) -> int:
        return self.n_ctx_fixed if self.n_ctx_fixed is not None else int(hp["n_ctx_train"])

    def expected_tensors(self, hp: Hparams) -> dict[str, tuple[tuple[int, ...], bool, bool]]:
        """name -> (ne, weight, optional) for every tensor a file with these hyperparameters holds, in the
        order the converters wrote them (a run of per-layer rules repeats once per layer)."""
        out: dict[str, tuple[tuple[int, ...], bool, bool]] = {}
        rules = list(self.tensors)
        k = 0
        while k < len(rules):
            if not rules[k].per_layer:
                r = rules[k]
                out[r.name] = (r.shape(hp), r.weight, r.optional)
                k += 1
                continue
            run = []
            while k < len(rules) and rules[k].per_layer:
                run.append(rules[k])
                k += 1
            for i in range(hp["n_layer"]):
                for r in run:
                    out[r.name.format(i=i)] = (r.shape(hp), r.weight, r.optional)
        return out

    def hparams_from_header(self, values: tuple[int, ...]) -> dict[str, int]:
        """The header's integers (ftype excluded) by the project's keys, plus the derived ones."""
        hp = {f.key: int(v) for f, v in zip(self.header, values) if f.key != "ftype" and f.code != "f"}
        hp.setdefault("n_head_kv", hp.get("n_head", 0))
        hp.setdefault("n_ff", 4 * hp.get("n_embd", 0))
        if self.n_ctx_fixed is not None:
            hp["n_ctx_train"] = self.n_ctx_fixed
        return hp

    def n_params(self, hp: Hparams) -> int:
        return sum(math.prod(s) for s, _, _ in self.expected_tensors(hp).values())


def _hd(h: Hparams) -> int:
    return h["n_embd"] // h["n_head"] if h["n_head"] else 0


_E: Callable[[Hparams], tuple[int, ...]] = lambda h: (h["n_embd"],)  # noqa: E731


def _r(name: str, shape: Callable[[Hparams], tuple[int, ...]], weight: bool, optional: bool = False) -> TensorRule:
    return TensorRule(name, shape, weight, optional)

FALCON = Architecture(
    name="falcon", display="Falcon", model_type="Falcon", magic=MAGIC_GGJT, container="ggjt", has_version=True,
    header=(HeaderField("n_vocab", "n_vocab"), HeaderField("n_embd", "n_embd"), HeaderField("n_head", "n_head"),
            HeaderField("n_head_kv", "n_head_kv"), HeaderField("n_layer", "n_layer"),
            HeaderField("falcon_version", "falcon_version"), HeaderField("ftype", "ftype")),
    vocab_count_repeated=False, vocab_scores=True,
    tensors=(
        _r("transformer.word_embeddings.weight", lambda h: (h["n_embd"], h["n_vocab"]), True),
        _r("transformer.h.{i}.input_layernorm.weight", _E, False),
        _r("transformer.h.{i}.input_layernorm.bias", _E, False),
        _r("transformer.h.{i}.self_attention.query_key_value.weight",
           lambda h: (h["n_embd"], (h["n_head"] + 2 * h["n_head_kv"]) * _hd(h)), True),
        _r("transformer.h.{i}.self_attention.dense.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("transformer.h.{i}.mlp.dense_h_to_4h.weight", lambda h: (h["n_embd"], 4 * h["n_embd"]), True),
        _r("transformer.h.{i}.mlp.dense_4h_to_h.weight", lambda h: (4 * h["n_embd"], h["n_embd"]), True),
        _r("transformer.ln_f.weight", _E, False),
        _r("transformer.ln_f.bias", _E, False),
        _r("lm_head.weight", lambda h: (h["n_embd"], h["n_vocab"]), True),
    ),
    alignment=32, tokenizer="gpt4all-greedy", n_ctx_fixed=2048, end_token_texts=(), end_token_ids=(11,),
    ftype_types=GGML_FTYPE_TYPES, ftype_mod_1000=True,
    gpt4all_ranges={"n_vocab": (65024, 65100), "falcon_version": (7, 7), "n_head_kv": (1, 1)},
)

REPLIT = Architecture(
    name="replit", display="Replit", model_type="Replit", magic=MAGIC_REPL, container="repl", has_version=False,
    header=(HeaderField("n_vocab", "n_vocab"), HeaderField("n_ctx", "n_ctx_train"), HeaderField("n_embd", "n_embd"),
            HeaderField("n_head", "n_head"), HeaderField("n_layer", "n_layer"), HeaderField("ftype", "ftype")),
    vocab_count_repeated=False, vocab_scores=True,
    tensors=(
        _r("transformer.wte.weight", lambda h: (h["n_embd"], h["n_vocab"]), True),
        _r("transformer.blocks.{i}.ln_1.weight", _E, False),
        _r("transformer.blocks.{i}.attn.Wqkv.weight", lambda h: (h["n_embd"], 3 * h["n_embd"]), True),
        _r("transformer.blocks.{i}.attn.out_proj.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("transformer.blocks.{i}.ln_2.weight", _E, False),
        _r("transformer.blocks.{i}.mlp.mlp_up.weight", lambda h: (h["n_embd"], 4 * h["n_embd"]), True),
        _r("transformer.blocks.{i}.mlp.mlp_down.weight", lambda h: (4 * h["n_embd"], h["n_embd"]), True),
        _r("transformer.ln_f.weight", _E, False),
    ),
    alignment=0, tokenizer="replit-sentencepiece-dp", n_ctx_fixed=None, end_token_texts=("<|endoftext|>",),
    end_token_ids=(0,), ftype_types=SMALL_FTYPE_TYPES, ftype_mod_1000=True, gpt4all_ranges={},
)

STARCODER = Architecture(
    name="starcoder", display="StarCoder", model_type="Starcoder", magic=MAGIC_GGML, container="ggml",
    has_version=False,
    header=(HeaderField("n_vocab", "n_vocab"), HeaderField("n_ctx", "n_ctx_train"), HeaderField("n_embd", "n_embd"),
            HeaderField("n_head", "n_head"), HeaderField("n_layer", "n_layer"), HeaderField("ftype", "ftype")),
    vocab_count_repeated=True, vocab_scores=False,
    tensors=(
        _r("model/wte", lambda h: (h["n_embd"], h["n_vocab"]), True),
        _r("model/wpe", lambda h: (h["n_embd"], h["n_ctx_train"]), False),
        _r("model/h{i}/ln_1/g", _E, False),
        _r("model/h{i}/ln_1/b", _E, False),
        _r("model/h{i}/attn/c_attn/w", lambda h: (h["n_embd"], 3 * h["n_embd"]), True),
        _r("model/h{i}/attn/c_attn/b", lambda h: (3 * h["n_embd"],), False),
        _r("model/h{i}/attn/c_proj/w", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("model/h{i}/attn/c_proj/b", _E, False),
        _r("model/h{i}/ln_2/g", _E, False),
        _r("model/h{i}/ln_2/b", _E, False),
        _r("model/h{i}/mlp/c_fc/w", lambda h: (h["n_embd"], 4 * h["n_embd"]), True),
        _r("model/h{i}/mlp/c_fc/b", lambda h: (4 * h["n_embd"],), False),
        _r("model/h{i}/mlp/c_proj/w", lambda h: (4 * h["n_embd"], h["n_embd"]), True),
        _r("model/h{i}/mlp/c_proj/b", _E, False),
        _r("model/ln_f/g", _E, False),
        _r("model/ln_f/b", _E, False),
        # without it the loader uses model/wte (only when the model/wte record comes first)
        _r("model/lm_head", lambda h: (h["n_embd"], h["n_vocab"]), True, optional=True),
    ),
    alignment=0, tokenizer="gpt4all-greedy", n_ctx_fixed=None, end_token_texts=(), end_token_ids=(0,),
    ftype_types=GGML_FTYPE_TYPES, ftype_mod_1000=True, gpt4all_ranges={"n_vocab": (49100, 49290)},
)

BERT = Architecture(
    name="bert", display="BERT (Embed4All)", model_type="Bert", magic=MAGIC_BERT, container="bert",
    has_version=False,
    header=(HeaderField("n_vocab", "n_vocab"), HeaderField("n_max_tokens", "n_ctx_train"),
            HeaderField("n_embd", "n_embd"), HeaderField("n_intermediate", "n_ff"), HeaderField("n_head", "n_head"),
            HeaderField("n_layer", "n_layer"), HeaderField("f16", "ftype")),
    vocab_count_repeated=False, vocab_scores=False,
    tensors=(
        _r("embeddings.word_embeddings.weight", lambda h: (h["n_embd"], h["n_vocab"]), True),
        _r("embeddings.position_embeddings.weight", lambda h: (h["n_embd"], h["n_ctx_train"]), True),
        _r("embeddings.token_type_embeddings.weight", lambda h: (h["n_embd"], 2), True),
        _r("embeddings.LayerNorm.weight", _E, False),
        _r("embeddings.LayerNorm.bias", _E, False),
        _r("encoder.layer.{i}.attention.self.query.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("encoder.layer.{i}.attention.self.query.bias", _E, False),
        _r("encoder.layer.{i}.attention.self.key.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("encoder.layer.{i}.attention.self.key.bias", _E, False),
        _r("encoder.layer.{i}.attention.self.value.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("encoder.layer.{i}.attention.self.value.bias", _E, False),
        _r("encoder.layer.{i}.attention.output.dense.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("encoder.layer.{i}.attention.output.dense.bias", _E, False),
        _r("encoder.layer.{i}.attention.output.LayerNorm.weight", _E, False),
        _r("encoder.layer.{i}.attention.output.LayerNorm.bias", _E, False),
        _r("encoder.layer.{i}.intermediate.dense.weight", lambda h: (h["n_embd"], h["n_ff"]), True),
        _r("encoder.layer.{i}.intermediate.dense.bias", lambda h: (h["n_ff"],), False),
        _r("encoder.layer.{i}.output.dense.weight", lambda h: (h["n_ff"], h["n_embd"]), True),
        _r("encoder.layer.{i}.output.dense.bias", _E, False),
        _r("encoder.layer.{i}.output.LayerNorm.weight", _E, False),
        _r("encoder.layer.{i}.output.LayerNorm.bias", _E, False),
    ),
    alignment=0, tokenizer="bert-wordpiece", n_ctx_fixed=None, end_token_texts=(), end_token_ids=(102,),
    ftype_types=SMALL_FTYPE_TYPES, ftype_mod_1000=False, gpt4all_ranges={},
)

# -- the layouts the project already ran on its own model code --------------------------------------------
#: ``enum ggml_ftype`` of the May 2023 ggml GPT4All's GPT-J and MPT libraries linked (5: Q4_2)
_GGML_230511_FTYPES: dict[int, str] = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 5: "Q4_2", 7: "Q8_0", 8: "Q5_0",
                                       9: "Q5_1"}

GPTJ = Architecture(
    name="gptj", display="GPT-J", model_type="GPT-J", magic=MAGIC_GGML, container="ggml", has_version=False,
    header=(HeaderField("n_vocab", "n_vocab"), HeaderField("n_ctx", "n_ctx_train"), HeaderField("n_embd", "n_embd"),
            HeaderField("n_head", "n_head"), HeaderField("n_layer", "n_layer"), HeaderField("n_rot", "n_rot"),
            HeaderField("ftype", "ftype")),
    vocab_count_repeated=True, vocab_scores=False,
    tensors=(
        _r("transformer.wte.weight", lambda h: (h["n_embd"], h["n_vocab"]), True),
        _r("transformer.h.{i}.ln_1.weight", _E, False),
        _r("transformer.h.{i}.ln_1.bias", _E, False),
        _r("transformer.h.{i}.attn.q_proj.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("transformer.h.{i}.attn.k_proj.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("transformer.h.{i}.attn.v_proj.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("transformer.h.{i}.attn.out_proj.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("transformer.h.{i}.mlp.fc_in.weight", lambda h: (h["n_embd"], 4 * h["n_embd"]), True),
        _r("transformer.h.{i}.mlp.fc_in.bias", lambda h: (4 * h["n_embd"],), False),
        _r("transformer.h.{i}.mlp.fc_out.weight", lambda h: (4 * h["n_embd"], h["n_embd"]), True),
        _r("transformer.h.{i}.mlp.fc_out.bias", _E, False),
        _r("transformer.ln_f.weight", _E, False),
        _r("transformer.ln_f.bias", _E, False),
        _r("lm_head.weight", lambda h: (h["n_embd"], h["n_vocab"]), True),
        _r("lm_head.bias", lambda h: (h["n_vocab"],), False),
    ),
    alignment=0, tokenizer="gpt2", n_ctx_fixed=None, end_token_texts=("<|endoftext|>",), end_token_ids=(50256,),
    ftype_types=_GGML_230511_FTYPES, ftype_mod_1000=True, gpt4all_ranges={"n_vocab": (50300, 50400)},
)


def _mpt_tensors(wte_weight: bool) -> tuple[TensorRule, ...]:
    return (
        _r("transformer.wte.weight", lambda h: (h["n_embd"], h["n_vocab"]), wte_weight),
        _r("transformer.blocks.{i}.norm_1.weight", _E, False),
        _r("transformer.blocks.{i}.attn.Wqkv.weight", lambda h: (h["n_embd"], 3 * h["n_embd"]), True),
        _r("transformer.blocks.{i}.attn.out_proj.weight", lambda h: (h["n_embd"], h["n_embd"]), True),
        _r("transformer.blocks.{i}.norm_2.weight", _E, False),
        _r("transformer.blocks.{i}.ffn.up_proj.weight", lambda h: (h["n_embd"], 4 * h["n_embd"]), True),
        _r("transformer.blocks.{i}.ffn.down_proj.weight", lambda h: (4 * h["n_embd"], h["n_embd"]), True),
        _r("transformer.norm_f.weight", _E, False),
    )


#: GPT4All's MPT ("ggmm"): unsigned header, the token embedding always F32, special tokens flagged
MPT_GGMM = Architecture(
    name="mpt", display="MPT (GPT4All layout)", model_type="MPT", magic=MAGIC_GGMM, container="ggmm",
    has_version=False,
    header=(HeaderField("n_vocab", "n_vocab", "I"), HeaderField("n_ctx", "n_ctx_train", "I"),
            HeaderField("n_layer", "n_layer", "I"), HeaderField("n_head", "n_head", "I"),
            HeaderField("n_embd", "n_embd", "I"), HeaderField("alibi_bias_max", "alibi_bias_max", "f"),
            HeaderField("clip_qkv", "clip_qkv", "f"), HeaderField("ftype", "ftype", "I")),
    vocab_count_repeated=True, vocab_scores=False, vocab_special_bit=True, tensors=_mpt_tensors(False),
    alignment=0, tokenizer="gpt2", n_ctx_fixed=None, end_token_texts=("<|endoftext|>",), end_token_ids=(),
    ftype_types=_GGML_230511_FTYPES, ftype_mod_1000=True, gpt4all_ranges={},
)

#: the ggml examples' MPT (read by ctransformers, not by gpt4all)
MPT_GGML = Architecture(
    name="mpt", display="MPT (ggml-examples layout)", model_type="MPT", magic=MAGIC_GGML, container="ggml",
    has_version=False,
    header=(HeaderField("d_model", "n_embd"), HeaderField("max_seq_len", "n_ctx_train"),
            HeaderField("n_heads", "n_head"), HeaderField("n_layers", "n_layer"), HeaderField("n_vocab", "n_vocab"),
            HeaderField("alibi_bias_max", "alibi_bias_max", "f"), HeaderField("clip_qkv", "clip_qkv", "f"),
            HeaderField("ftype", "ftype")),
    vocab_count_repeated=False, vocab_scores=False, tensors=_mpt_tensors(True),
    alignment=0, tokenizer="gpt2", n_ctx_fixed=None, end_token_texts=("<|endoftext|>",), end_token_ids=(),
    ftype_types=_GGML_230511_FTYPES, ftype_mod_1000=True, gpt4all_ranges={},
)

#: the zoo this module adds, by FileFacts.architecture (what the reader and the validator dispatch on)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (FALCON, REPLIT, STARCODER, BERT)}
BY_CONTAINER_MAGIC: dict[int, Architecture] = {MAGIC_REPL: REPLIT, MAGIC_BERT: BERT}

#: the Hugging Face repositories whose tokenizer.json the BPE zoo files need to become GGUF (the files
#: carry gpt4all's token list but no merges): where the published files came from
HF_TOKENIZER_REPOS: dict[str, str] = {"falcon": "tiiuae/falcon-7b", "starcoder": "bigcode/starcoderbase-3b"}

#: BERT's special token ids (bert-base-uncased vocab.txt): gpt4all's tokenizer always starts with [CLS]
BERT_PAD, BERT_UNK, BERT_CLS, BERT_SEP, BERT_MASK = 0, 100, 101, 102, 103
#: Bert::embedding splits long inputs into windows of n_max_tokens that overlap by this many tokens
BERT_WINDOW_OVERLAP = 32
#: the largest window a BERT file may declare: a window is evaluated at once, and its attention scores
#: take n_head x window^2 floats per layer (8192: 256 MiB a head); the published BERT files use 512
BERT_MAX_WINDOW = 8192


def wtype_of(arch: Architecture, ftype: int) -> str | None:
    """The weight type a header ftype stands for, as the model's loader maps it; None: refused."""
    base = ftype % 1000 if arch.ftype_mod_1000 and ftype >= 0 else ftype
    return arch.ftype_types.get(base)


def ftype_of(arch: Architecture, wtype: str) -> int:
    """The header ftype that makes the loader expect weight type ``wtype``."""
    for k, v in arch.ftype_types.items():
        if v == wtype:
            return k
    raise ValueError(f"{arch.display} files cannot hold {wtype} weights")
