"""The shapes of the dicts the library reports (memory estimates, the probe's load checks), as TypedDicts:
their JSON stays plain dicts, and mypy checks every key a caller reads or writes.  The README lists the
keys and what they mean."""
# no "from __future__ import annotations": NotRequired must be seen at runtime (__required_keys__)
from typing import NotRequired, TypedDict


class MemoryEstimate(TypedDict):
    """:func:`gpt4all_loader.memory.estimate`: what a model needs at a context size, in bytes."""

    ram_bytes: int
    vram_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    ctx_size: int
    gpu_layers: int
    n_layer: int
    per_layer_bytes: int
    #: which rules: "gguf", "legacy-graph", "legacy-scratch", "gptj-mpt"
    formula: str
    era: str
    total_bytes: int
    repack_bytes: int
    output_bytes: int
    state_bytes: int
    kv_cells: int
    swa_layers: int


class DeviceItem(TypedDict):
    """One device of :class:`MemoryPlan` ``items`` (gguf-parser's ``estimate.items[]``)."""

    device: str
    bytes: int
    layers: int
    output: bool
    free_bytes: NotRequired[int]
    reserve_bytes: NotRequired[int]
    fits: NotRequired[bool]


class EngineLog(TypedDict):
    """:func:`gpt4all_loader.memory.parse_engine_log`: the buffer sizes an engine logged while loading."""

    parts: dict[str, int]
    devices: dict[str, int]
    total_bytes: int
    lines: list[str]


class EngineMemory(TypedDict):
    """``gpt4all-probe --estimate --exact``: the engine's own figures for a file (EngineLog's keys once
    it loaded), and how far the estimate was from them."""

    backend: str
    ctx_size: int
    ok: bool
    error: str | None
    parts: NotRequired[dict[str, int]]
    devices: NotRequired[dict[str, int]]
    total_bytes: NotRequired[int]
    lines: NotRequired[list[str]]
    variant: NotRequired[str | None]
    estimate_error_pct: NotRequired[float]


class MemoryPlan(MemoryEstimate):
    """:func:`gpt4all_loader.memory.plan_memory` (the probe report's ``memory``): the estimate split per device."""

    gpu_layers_requested: int | str
    items: list[DeviceItem]
    exact: NotRequired[EngineMemory]


class LoadCheck(TypedDict, total=False):
    """One entry of the probe report's ``load`` (``gpt4all-probe --load``): the smoke load of a file with
    one backend in a child process (:mod:`gpt4all_loader.smoke`); ``ok``, ``backend`` and ``error`` are
    always there, the rest when the child answered."""

    path: str
    backend: str | None
    device: str
    ok: bool
    load_s: float | None
    eval_s: float | None
    n_prompt_tokens: int | None
    token_evaluated: bool
    text: str | None
    variant: str | None
    error: str | None
    wall_s: float

