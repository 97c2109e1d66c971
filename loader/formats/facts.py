"""What the reader found out about one file: plain data, no judgement.

The reader (``sniff.read_facts`` and its per-family modules) fills a :class:`FileFacts`; the catalog
matches it against the backend manifest; the probe prints it.  Keeping the facts free of verdicts
means every consumer sees the same truth about the file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


#: what the reader records instead of refusing: things a well-formed file may hold that only some engines
#: refuse (or abort on).  Which era refuses which kind is data: the ``anomalies`` of each accept rule in
#: ``backends/manifest.toml``.  Kind -> what it is.
ANOMALY_KINDS: dict[str, str] = {
    "duplicate-key": "a GGUF key stated twice (engines that read it keep the first value)",
    "empty-key": "a GGUF key of zero length",
    "nested-array": "a GGUF key/value holding an array of arrays",
    "tensor-data-order": "tensor data not packed in the order of the tensor infos (gaps, or out of order)",
    "tensor-data-misaligned": "tensor data at an offset that is not a multiple of general.alignment",
    "zero-dim": "a tensor with a dimension of 0 (no elements)",
}


def int_or_none(v: Any) -> int | None:
    """A header value as an integer, None for anything else (a bool is not a number here)."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class Anomaly:
    """One thing only some engines refuse, where it is in the file (``detail`` names the key, kv index
    or tensor, e.g. "duplicate key 'general.file_type' at kv 14")."""

    kind: str
    detail: str


@dataclass
class TensorTypeStat:
    """How many tensors of one ggml type a file holds, and their bytes on disk."""

    count: int = 0
    bytes: int = 0


@dataclass
class VocabFacts:
    """What the validator needs to know about a vocabulary, gathered while the reader walks it.

    Kept as counts and flags, not the token list, so that probing a 150k-token file stays cheap.
    """

    #: element type of the token array ("STRING" normally; GGUF value type name otherwise)
    token_type: str = "STRING"
    n_tokens: int = 0
    #: (element type, length) of the score and token-type arrays, None where absent
    scores: tuple[str, int] | None = None
    token_types: tuple[str, int] | None = None
    #: first token string that occurs twice, and how many repeats there are
    duplicate: str | None = None
    n_duplicates: int = 0
    n_empty: int = 0
    #: how many of the 256 byte tokens "<0x00>".."<0xFF>" the vocabulary holds
    n_byte_tokens: int = 0
    #: file offset of the first token record (GGUF string arrays): where
    #: ``gguf_reader.read_tokens`` reads the token texts again when someone asks for them
    offset: int | None = None


@dataclass
class FileFacts:
    path: str
    size: int
    #: container: "ggml", "ggmf", "ggjt", "ggmm", "gguf", "ggla"; or a non-model kind such as
    #: "safetensors", "pytorch-zip", "html", "whisper", "rwkv" (never None once identified)
    format: str
    #: 0 for the unversioned "ggml" container; None where the container has no version
    format_version: int | None = None
    #: "model", "lora", "vocab-only", "not-a-model", "unsupported-ggml" (a ggml file of a kind we name
    #: but no backend of ours runs, e.g. whisper)
    kind: str = "model"
    #: one line a person can read, e.g. "ggjt v1 LLaMA, mostly Q4_0 (pre-May-2023 quant layout)"
    description: str = ""
    endianness: str = "little"
    architecture: str | None = None
    #: n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ctx_train, n_rot, n_mult, n_ff, rope_freq_base,
    #: expert_count ... whatever the file states (absent keys: unknown)
    hparams: dict[str, Any] = field(default_factory=dict)
    #: the header ftype (legacy) or general.file_type (GGUF), and its name
    file_type: int | None = None
    file_type_name: str | None = None
    #: legacy quant-block layout of the file: "pre-1405" (ggml/ggmf/ggjt v1), "pr1405" (ggjt v2),
    #: "pr1508" (ggjt v3 and GGUF); for GPT-J/MPT files "qnt0" (pre-May-2023) or "qnt2"
    quant_layout: str | None = None
    #: ggml type name ("F32", "Q4_0", ...) -> count and bytes
    tensor_types: dict[str, TensorTypeStat] = field(default_factory=dict)
    n_tensors: int = 0
    n_params: int = 0
    tokenizer: str | None = None
    chat_template: str | None = None
    vocab_only: bool = False
    #: legacy MoE files with one tensor per expert (blk.N.ffn_gate.E.weight)
    split_experts: bool = False
    #: bytes the header says the tensor data needs, from the data start, versus the file size
    data_offset: int | None = None
    data_bytes_expected: int | None = None
    truncated: bool = False
    #: GGUF key/values (only when asked for: large arrays are summarized unless requested)
    kv: dict[str, Any] | None = None
    #: further remarks the reader wants a person to see
    notes: list[str] = field(default_factory=list)
    #: what only some engines refuse (see :data:`ANOMALY_KINDS`); each era's accept rules decide
    anomalies: list[Anomaly] = field(default_factory=list)
    #: names of all tensors (for rules such as "needs output.weight"); not part of to_dict()
    tensor_names: frozenset[str] = field(default_factory=frozenset, repr=False)
    #: name -> (ggml type name, ne, bytes) of every tensor: per-layer and per-use memory figures
    #: (GGUF) and the checks of hyperparameters against the tensors (``validate.py``); not part of
    #: to_dict()
    tensors: dict[str, tuple[str, tuple[int, ...], int]] = field(default_factory=dict, repr=False)
    #: vocabulary summary (GGUF files with a token array); not part of to_dict()
    vocab: VocabFacts | None = field(default=None, repr=False)
    #: GGUF ``general.alignment`` (None: legacy container); not part of to_dict()
    alignment: int | None = field(default=None, repr=False)
    #: GGUF key -> value type name ("UINT32", "ARRAY[STRING]" ...); not part of to_dict()
    kv_types: dict[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("tensor_names", "tensors", "vocab", "kv_types", "alignment"):
            d.pop(k, None)
        return d
