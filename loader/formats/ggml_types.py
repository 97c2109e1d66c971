"""The ggml tensor types, their block sizes per quant-layout generation, and the file-type names.

Tensor type ids are those of ``enum ggml_type`` (ids 0..42 of the 2026 ggml; ids 4 and 5 were Q4_2 and
Q4_3 in spring-2023 files).  The bytes a tensor takes depend on the *layout generation* of the file,
because two 2023 changes re-sized or re-ordered the same type ids:

* ``"pre-1405"``: ggml / ggmf / ggjt v1 files (and GPT-J/MPT ggml files without a quant version,
  "qnt0"): Q4_0 and Q4_1 with f32 scales, Q4_2 and Q4_3 with 16-element blocks, Q8_0 with an f32 scale.
* ``"pr1405"``: ggjt v2 (and ggml-examples files with quant version 1, "qnt1"): same sizes, other
  nibble order; Q4_2 and Q4_3 gone.
* ``"pr1508"``: ggjt v3 and every GGUF (and "qnt2" ggml-examples files): f16 scales for Q4_0, Q4_1,
  Q8_0; k-quants with 256-element super-blocks, and every later type.

Sizes are read from ``ggml.c`` of llama.cpp b454 / b558 and ``ggml/src/ggml-common.h`` of the 2026 tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import FormatError

QK_K = 256

LAYOUTS = ("pre-1405", "pr1405", "pr1508")

#: ggml-examples quant versions (ftype // 1000) -> the block layout they use
QNT_LAYOUT = {0: "pre-1405", 1: "pr1405", 2: "pr1508"}


@dataclass(frozen=True)
class GgmlType:
    id: int
    name: str
    block: int  # elements per block
    size: int  # bytes per block


def _t(i: int, name: str, block: int, size: int) -> tuple[int, GgmlType]:
    return i, GgmlType(i, name, block, size)


#: ggjt v3 and GGUF (2026 ggml); ids 31-33 and 36-38 (repacked ARM layouts) were stored in some 2024
#: GGUF files and are kept so such files can still be described.
_PR1508 = dict([
    _t(0, "F32", 1, 4),
    _t(1, "F16", 1, 2),
    _t(2, "Q4_0", 32, 18),
    _t(3, "Q4_1", 32, 20),
    _t(6, "Q5_0", 32, 22),
    _t(7, "Q5_1", 32, 24),
    _t(8, "Q8_0", 32, 34),
    _t(9, "Q8_1", 32, 36),  # never stored in model files; 40 bytes (f32 d, s) before 2024
    _t(10, "Q2_K", QK_K, 84),
    _t(11, "Q3_K", QK_K, 110),
    _t(12, "Q4_K", QK_K, 144),
    _t(13, "Q5_K", QK_K, 176),
    _t(14, "Q6_K", QK_K, 210),
    _t(15, "Q8_K", QK_K, 292),
    _t(16, "IQ2_XXS", QK_K, 66),
    _t(17, "IQ2_XS", QK_K, 74),
    _t(18, "IQ3_XXS", QK_K, 98),
    _t(19, "IQ1_S", QK_K, 50),
    _t(20, "IQ4_NL", 32, 18),
    _t(21, "IQ3_S", QK_K, 110),
    _t(22, "IQ2_S", QK_K, 82),
    _t(23, "IQ4_XS", QK_K, 136),
    _t(24, "I8", 1, 1),
    _t(25, "I16", 1, 2),
    _t(26, "I32", 1, 4),
    _t(27, "I64", 1, 8),
    _t(28, "F64", 1, 8),
    _t(29, "IQ1_M", QK_K, 56),
    _t(30, "BF16", 1, 2),
    _t(31, "Q4_0_4_4", 32, 18),
    _t(32, "Q4_0_4_8", 32, 18),
    _t(33, "Q4_0_8_8", 32, 18),
    _t(34, "TQ1_0", QK_K, 54),
    _t(35, "TQ2_0", QK_K, 66),
    _t(36, "IQ4_NL_4_4", 32, 18),
    _t(37, "IQ4_NL_4_8", 32, 18),
    _t(38, "IQ4_NL_8_8", 32, 18),
    _t(39, "MXFP4", 32, 17),
    _t(40, "NVFP4", 64, 36),
    _t(41, "Q1_0", 128, 18),
    _t(42, "Q2_0", 64, 18),
])

#: ggml / ggmf / ggjt v1 (llama.cpp b454, the last build with every spring-2023 type)
_PRE1405 = dict([
    _t(0, "F32", 1, 4),
    _t(1, "F16", 1, 2),
    _t(2, "Q4_0", 32, 20),
    _t(3, "Q4_1", 32, 24),
    _t(4, "Q4_2", 16, 10),
    _t(5, "Q4_3", 16, 12),
    _t(6, "Q5_0", 32, 22),
    _t(7, "Q5_1", 32, 24),
    _t(8, "Q8_0", 32, 36),
    _t(9, "Q8_1", 32, 44),  # f32 d, s0, s1; intermediate only
])

#: ggjt v2 (llama.cpp b529-b566)
_PR1405 = dict([
    _t(0, "F32", 1, 4),
    _t(1, "F16", 1, 2),
    _t(2, "Q4_0", 32, 20),
    _t(3, "Q4_1", 32, 24),
    _t(6, "Q5_0", 32, 22),
    _t(7, "Q5_1", 32, 24),
    _t(8, "Q8_0", 32, 36),
    _t(9, "Q8_1", 32, 40),  # f32 d, s; intermediate only
])

TYPES: dict[str, dict[int, GgmlType]] = {"pre-1405": _PRE1405, "pr1405": _PR1405, "pr1508": _PR1508}

#: every name ever used for each id (for messages)
TYPE_NAMES: dict[int, str] = {i: t.name for i, t in _PR1508.items()}
TYPE_NAMES.update({4: "Q4_2", 5: "Q4_3"})
TYPE_IDS: dict[str, int] = {n: i for i, n in TYPE_NAMES.items()}

#: header ftype of ggml/ggmf/ggjt files (llama.cpp ``enum llama_ftype`` up to b1011) and of the ggml
#: examples (``enum ggml_ftype``; ftype 5 = Q4_2 in GPT4All GPT-J/MPT files)
LEGACY_FTYPE_NAMES: dict[int, str] = {
    0: "ALL_F32",
    1: "MOSTLY_F16",
    2: "MOSTLY_Q4_0",
    3: "MOSTLY_Q4_1",
    4: "MOSTLY_Q4_1_SOME_F16",
    5: "MOSTLY_Q4_2",
    6: "MOSTLY_Q4_3",
    7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1",
    10: "MOSTLY_Q2_K",
    11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M",
    13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S",
    15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M",
    18: "MOSTLY_Q6_K",
}

#: GGUF ``general.file_type`` (``enum llama_ftype`` of include/llama.h, 2026; 5, 6 and 33-35 removed
#: upstream but still found in files)
GGUF_FTYPE_NAMES: dict[int, str] = dict(LEGACY_FTYPE_NAMES)
GGUF_FTYPE_NAMES.update({
    19: "MOSTLY_IQ2_XXS",
    20: "MOSTLY_IQ2_XS",
    21: "MOSTLY_Q2_K_S",
    22: "MOSTLY_IQ3_XS",
    23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S",
    25: "MOSTLY_IQ4_NL",
    26: "MOSTLY_IQ3_S",
    27: "MOSTLY_IQ3_M",
    28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M",
    30: "MOSTLY_IQ4_XS",
    31: "MOSTLY_IQ1_M",
    32: "MOSTLY_BF16",
    33: "MOSTLY_Q4_0_4_4",
    34: "MOSTLY_Q4_0_4_8",
    35: "MOSTLY_Q4_0_8_8",
    36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0",
    38: "MOSTLY_MXFP4_MOE",
    39: "MOSTLY_NVFP4",
    40: "MOSTLY_Q1_0",
    41: "MOSTLY_Q2_0",
    1024: "GUESSED",
})


def ftype_name(ftype: int | None, *, gguf: bool = False) -> str | None:
    """Name of a header ftype (legacy) or ``general.file_type`` (GGUF); ``None`` if unknown."""
    if ftype is None:
        return None
    return (GGUF_FTYPE_NAMES if gguf else LEGACY_FTYPE_NAMES).get(ftype)


def ftype_phrase(name: str | None) -> str:
    """``"MOSTLY_Q4_0"`` -> ``"mostly Q4_0"``, ``"ALL_F32"`` -> ``"all F32"`` (for descriptions)."""
    if not name:
        return "unknown file type"
    if name.startswith("MOSTLY_"):
        return "mostly " + name[len("MOSTLY_"):]
    if name.startswith("ALL_"):
        return "all " + name[len("ALL_"):]
    return name.lower()


def type_info(type_id: int, layout: str = "pr1508") -> GgmlType:
    """The type with this id in this layout generation; FormatError when it does not exist there."""
    table = TYPES.get(layout)
    if table is None:
        raise ValueError(f"unknown quant layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    t = table.get(type_id)
    if t is None:
        known = TYPE_NAMES.get(type_id)
        why = (f"{known} does not exist in {layout} files" if known
               else f"no ggml type has id {type_id}")
        raise FormatError(f"unknown ggml tensor type {type_id}: {why}")
    return t


def n_elements(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise FormatError(f"negative dimension {d} in tensor shape {list(shape)}")
        n *= d
    return n


def tensor_nbytes(type_id: int, shape: Iterable[int], layout: str = "pr1508") -> int:
    """Bytes on disk of a tensor of ``type_id`` with dimensions ``shape`` (ne[0] first).

    Raises FormatError for a type unknown in ``layout`` or a row length (ne[0]) that is not a whole
    number of blocks.
    """
    shape = list(shape)
    t = type_info(type_id, layout)
    n = n_elements(shape)
    row = shape[0] if shape else 1
    if row % t.block or n % t.block:
        raise FormatError(
            f"tensor of type {t.name} has row length {row} (shape {shape}), not a multiple of its "
            f"block size {t.block}")
    return n // t.block * t.size
