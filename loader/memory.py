"""RAM / VRAM estimates for running a model file at a given context size and GPU offload, per era.

The figures follow what each pinned engine allocates with the context parameters *our shim* sets
(``backends/shim/g4a_shim.cpp``, ``compat_load``): ``n_ctx`` as asked, ``n_batch = n_ubatch =
min(512, n_ctx)``, one sequence, f16 K and V, everything else at the engine's default (flash
attention "auto", which the CPU backend of 2026-10 turns on; full-size SWA caches).  The parts:

weights
    The sum of the tensor bytes the reader counted.  Offloaded layers move their own ``blk.N.*``
    bytes to VRAM (GGUF; other files: ``repeating_bytes / n_layer``); ``gpu_layers > n_layer``
    also offloads the output matrix (an output tied to the token embedding is then a second copy
    of it, in VRAM).  The token embedding always stays in RAM.

repack (2026-10, AVX2 CPU builds)
    ggml's CPU backend copies matrices of the types it has interleaved kernels for (``Q4_0``,
    ``Q4_K``, ``IQ4_NL``, ``MXFP4`` with AVX2; ``ggml_repack_get_optimal_repack_type``) into a
    ``CPU_REPACK`` buffer when their row count is a multiple of 8; the mapped file stays mapped, so
    these bytes count twice.  The token embedding (read with ``get_rows``) is never repacked.

output (2024-09, 2026-10)
    ``n_vocab * 4`` bytes: logits for one output per sequence, reserved at context creation.

KV cache
    Per layer ``(n_embd_k_gqa + n_embd_v_gqa) * cells * 2`` bytes with ``n_embd_k_gqa = key_length *
    n_head_kv`` (``key_length`` = ``attention.key_length`` when stated, else ``n_embd / n_head``;
    ``value_length`` likewise).  ``cells`` is ``n_ctx`` rounded up to the era's padding (256 in
    2026-10, 32 in 2024-09).  Sliding-window layers get a full-size cache: 2026-10 would give them
    ``pad(min(n_ctx, n_swa + n_ubatch), 256)`` cells only with ``swa_full = false``, which our shim
    leaves at its default ``true``; older eras have no SWA cache at all.  Recurrent layers (Mamba:
    ``ssm.*``; RWKV: ``wkv.head_size``) hold a fixed f32 state instead, ``(n_embd_r + n_embd_s) * 4``
    bytes per layer for the one sequence (``llama_hparams::n_embd_r/n_embd_s``).

compute
    Legacy eras (ggml/ggmf/ggjt) reserved fixed scratch buffers chosen by model size
    (``MEM_REQ_SCRATCH0``, ``MEM_REQ_SCRATCH1``, ``MEM_REQ_EVAL`` in llama.cpp):

    * up to b566 (backends of 2023-04 and 2023-05): 7B 512+512+768 MiB, 13B 512+512+1024,
      30B 512+512+1280, 65B 1024+1024+1536 (independent of ``n_ctx``);
    * b567..b1011 (2023-08) CUDA builds: SCRATCH0 = ``n_ctx/16 + 100`` MiB (7B; 3B ``/16 + 92``, 13B
      ``/12 + 120``, 30B ``/9 + 160``, 65B ``/6 + 256``, 70B ``/7 + 164``), SCRATCH1
      128/160/192/256/384/304 MiB and EVAL 8/10/12/16/24/24 MiB for 3B/7B/13B/30B/65B/70B.  The
      CPU builds of that era measure the graph with ggml-alloc instead (below).

    Model sizes are recognised the way those loaders did, by ``n_layer`` (26, 32, 40, 60, 80);
    any other size scales the 7B figures by ``n_embd / 4096``.

    GPT4All-era GPT-J and MPT files run on our own runner (``backends/legacy/g4a_legacy.cpp``),
    which sizes its evaluation buffer with ``eval_bytes()`` for chunks of 32 tokens; the estimate
    repeats that sum for a full context (the runner logs no sizes to check it against).  GPT4All's
    2023 zoo (Falcon, Replit, StarCoder, BERT) runs on the same runner and is estimated the same way:
    the activations of a GPT-J layer (BERT's with its own n_intermediate), a KV cache of n_head_kv
    heads (Falcon: one) at 2 bytes per value, context capped at the model's (Falcon 2048), and for
    BERT, an encoder, no cache and a window of n_max_tokens.

    Graph-allocator eras (2023-08 CPU, 2023-11, 2024-09, 2026-10) measure the graph of one
    micro-batch of ``ub = min(512, n_ctx)`` tokens against a full cache of ``n_kv`` cells and keep
    the peak.  Modelled as f32 activations::

        x           n_embd * ub * 4                (one hidden state)
        inputs      KQ mask n_kv * ub (f32; f16 with flash attention; one per cache: base and SWA)
        attention   n_head * n_kv * ub * 4         (KQ scores of one layer; none with flash attention,
                                                    which our CUDA build of 2026-10 lacks)
        layer       ub * (3 * n_embd + 2 * n_ff + n_head * key_length + 2 * n_embd_k_gqa) * 4
        output      n_vocab * ub * 4 + 4 * x
        compute     graph metadata + max(inputs + attention + 2 * x, inputs + layer, output)

    The 2023 eras count the graph's metadata (``ggml_tensor_overhead() * GGML_MAX_NODES``) in the
    figure they log.  The compute buffer lives on the GPU when any layer is offloaded.

The engine's own figures (``gpt4all-probe --estimate --exact``) come from its log lines, parsed by
:func:`parse_engine_log`; ``tests/test_memory.py`` holds the formula within 5 % of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # pragma: no cover
    from .formats.facts import FileFacts

from .engines.manifest import EraRules, cuda_settings, era_rules, newest_era
from .formats.legacy import LEGACY_CONTAINERS
from .formats.zoo import ARCHITECTURES as ZOO_ARCHITECTURES
from .plan import default_n_ctx
from .reports import DeviceItem, EngineLog, MemoryEstimate, MemoryPlan

MiB = 1024 * 1024

# llama.cpp legacy model-size tables (MiB), keyed by the e_model the loader derived from n_layer.
_N_LAYER_TO_SIZE = {26: "3B", 32: "7B", 40: "13B", 60: "30B", 80: "65B"}
_SCRATCH_2023_05 = {  # b454..b566: scratch0, scratch1, eval
    "7B": (512, 512, 768), "13B": (512, 512, 1024), "30B": (512, 512, 1280), "65B": (1024, 1024, 1536),
}
_SCRATCH0_2023_08 = {  # (divisor, base) of n_ctx / divisor + base
    "3B": (16, 92), "7B": (16, 100), "13B": (12, 120), "30B": (9, 160), "65B": (6, 256), "70B": (7, 164),
}
_SCRATCH1_2023_08 = {"3B": 128, "7B": 160, "13B": 192, "30B": 256, "65B": 384, "70B": 304}
_EVAL_2023_08 = {"3B": 8, "7B": 10, "13B": 12, "30B": 16, "65B": 24, "70B": 24}

MAX_UBATCH = 512  # the shim's n_batch = n_ubatch = min(512, n_ctx)


def _hparam(h: dict[str, Any], *keys: str, default: int = 0) -> int:
    for k in keys:
        v = h.get(k)
        if isinstance(v, (list, tuple)):  # per-layer arrays (e.g. n_head_kv of some GGUF files)
            v = max(v) if v else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return default


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to if to > 1 else n


def _legacy_size(n_layer: int, n_embd: int, n_head: int, n_head_kv: int) -> tuple[str | None, float]:
    """The e_model name a legacy loader would pick, and a scale factor for unknown sizes."""
    if n_layer == 80 and n_head_kv and n_head_kv < n_head:
        return "70B", 1.0
    size = _N_LAYER_TO_SIZE.get(n_layer)
    if size:
        return size, 1.0
    return None, max(n_embd, 1) / 4096.0


def _scratch_legacy(era: str, n_ctx: int, n_layer: int, n_embd: int, n_head: int, n_head_kv: int) -> int:
    size, scale = _legacy_size(n_layer, n_embd, n_head, n_head_kv)
    if era < "2023-06":
        key = "65B" if size == "70B" else (size if size in _SCRATCH_2023_05 else "7B")
        a, b, c = _SCRATCH_2023_05[key]
        return int((a + b + c) * MiB * scale)
    key = size if size in _SCRATCH0_2023_08 else "7B"
    div, base = _SCRATCH0_2023_08[key]
    total = (n_ctx / div + base) + _SCRATCH1_2023_08[key] + _EVAL_2023_08[key]
    return int(total * MiB * scale)


@dataclass(frozen=True)
class _Shape:
    """The hyperparameters the formulas use, with the engine's fallbacks filled in."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ff: int
    key_length: int
    value_length: int
    n_swa: int
    swa_layers: int
    state_per_layer: int  # recurrent f32 state bytes per layer (0: attention layers)

    @classmethod
    def of(cls, facts: FileFacts) -> "_Shape":
        h = dict(facts.hparams)
        n_layer = _hparam(h, "n_layer", "block_count")
        n_embd = _hparam(h, "n_embd", "embedding_length")
        n_head = _hparam(h, "n_head", "head_count", default=1)
        n_head_kv = _hparam(h, "n_head_kv", "head_count_kv", default=n_head)
        key_length = _hparam(h, "key_length", default=n_embd // n_head if n_head else 0)
        value_length = _hparam(h, "value_length", default=key_length)
        n_swa = _hparam(h, "sliding_window")
        pattern = h.get("sliding_window_pattern")
        if isinstance(pattern, list) and len(pattern) == n_layer:  # per-layer flags
            swa_layers = sum(1 for p in pattern if p)
        else:
            every = _hparam(h, "sliding_window_pattern", default=_SWA_PATTERN.get(facts.architecture or "", 0))
            swa_layers = (n_layer - n_layer // every if every else n_layer) if n_swa else 0
        return cls(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                   n_vocab=_hparam(h, "n_vocab", "vocab_size"), n_ff=_hparam(h, "n_ff", "feed_forward_length",
                                                                     default=4 * n_embd),
                   key_length=key_length, value_length=value_length, n_swa=n_swa, swa_layers=swa_layers,
                   state_per_layer=_recurrent_state(h, n_embd))


#: architectures whose every n-th layer is a full-attention one (``load_swa_pattern`` defaults of
#: 2026-10); other architectures with ``sliding_window`` use it on every layer
_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "llama4": 4, "gpt-oss": 2,
                "exaone4": 4, "smallthinker": 4}


def _recurrent_state(h: dict[str, Any], n_embd: int) -> int:
    """f32 bytes of one layer's recurrent state for one sequence (``n_embd_r() + n_embd_s()``)."""
    wkv = _hparam(h, "wkv_head_size")
    if wkv:  # RWKV: token shift + wkv state
        return (_hparam(h, "token_shift_count", default=2) * n_embd + n_embd * wkv) * 4
    d_state = _hparam(h, "ssm_state_size")
    if d_state:  # Mamba: conv state + ssm state
        d_inner, d_conv = _hparam(h, "ssm_inner_size"), _hparam(h, "ssm_conv_kernel")
        n_group = _hparam(h, "ssm_group_count")
        conv = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
        return (conv + d_state * d_inner) * 4
    return 0


def _layer_bytes(facts: FileFacts, n_layer: int) -> dict[int, int] | None:
    """Bytes of each ``blk.N.*`` layer where the reader kept the tensor table (GGUF), else None: {N: bytes}
    for the layers that have tensors (a hostile ``n_layer`` of 2**31 must not make a list that long)."""
    tensors = facts.tensors
    if not tensors or not n_layer:
        return None
    per: dict[int, int] = {}
    for name, (_t, _ne, nbytes) in tensors.items():
        if name.startswith("blk."):
            idx = name.split(".", 2)[1]
            if idx.isdigit() and (i := int(idx)) < n_layer:
                per[i] = per.get(i, 0) + nbytes
    return per


def _repack_bytes(facts: FileFacts, rules: EraRules) -> int:
    tensors = facts.tensors
    return sum(nbytes for name, (t, ne, nbytes) in tensors.items()
               if t in rules.repack_types and len(ne) >= 2 and ne[1] % 8 == 0
               and not name.startswith("token_embd."))


#: tokens per graph of our GPT-J/MPT runner (EVAL_CHUNK in backends/legacy/g4a_legacy.cpp)
_GPTJ_MPT_CHUNK = 32


def _compute_gptj_mpt(s: _Shape, n_ctx: int, encoder: bool = False) -> int:
    """The evaluation buffer our GPT-J/MPT runner sizes for a full context: ``eval_bytes(m, N, L)`` of
    ``backends/legacy/g4a_legacy.cpp`` with N = one chunk and L = n_ctx (ggml objects at 400 bytes).  An
    encoder (BERT) evaluates a whole window at once: N = L = the window."""
    n, ctx = (n_ctx if encoder else min(_GPTJ_MPT_CHUNK, n_ctx)), n_ctx
    e, f, h, v = s.n_embd, s.n_ff or 4 * s.n_embd, s.n_head, s.n_vocab
    per_layer = 16 * n * e + 8 * n * f + 6 * h * n * ctx + e * ctx
    head = 4 * n * e + 3 * n * v + n
    objects = (s.n_layer * 100 + 100) * 400
    work = 4 * max(n * f, h * n * ctx) + 64 * 16 + 4096
    total = (s.n_layer * per_layer + head) * 4 + objects + work + (1 << 20)
    return total + total // 4


def _compute_graph(s: _Shape, rules: EraRules, n_ctx: int, n_kv: int, flash_attn: bool) -> int:
    """The peak of one micro-batch's graph: the attention scores of a layer, the rest of a layer, or
    the logits (the graph allocator frees the masks and a layer's activations before the logits)."""
    ub = min(MAX_UBATCH, n_ctx)
    f32 = 4
    masks = 2 if rules.swa_cache and s.swa_layers and s.swa_layers < s.n_layer else 1
    mask_bytes = rules.mask_bytes // 2 if flash_attn else rules.mask_bytes
    inputs = 0 if s.state_per_layer else mask_bytes * n_kv * ub * masks
    x = s.n_embd * ub * f32
    attention = 0 if flash_attn or s.state_per_layer else s.n_head * n_kv * ub * f32
    q_kv = s.n_head * s.key_length + 2 * s.n_head_kv * s.key_length
    layer = ub * (3 * s.n_embd + 2 * s.n_ff + q_kv) * f32
    output = s.n_vocab * ub * f32 + 4 * x
    return rules.graph_meta + max(inputs + attention + 2 * x, inputs + layer, output)


def estimate(facts: FileFacts, *, ctx_size: int | None = None, gpu_layers: int = 0,
             era: str | None = None) -> MemoryEstimate:
    """Estimate memory needs of ``facts`` (a FileFacts) at ``ctx_size`` tokens with ``gpu_layers`` offloaded.

    ``era`` is the chosen backend's era ("2023-04" ...); None uses the newest rules for GGUF files
    and the newest legacy table for ggml-era files.  ``ctx_size`` defaults to the context ``load()``
    gives the file (:func:`gpt4all_loader.plan.default_n_ctx`).
    Returns ``{ram_bytes, vram_bytes, weights_bytes, kv_bytes, compute_bytes, ...}`` (the keys the
    README lists); every value is an int or a short string.
    """
    fmt = facts.format
    # GPT4All-era GPT-J and MPT files and GPT4All's 2023 zoo run on our own ggml runner (backends/legacy)
    zoo_arch = fmt in ("ggjt", "ggml", "repl", "bert") and facts.architecture in ZOO_ARCHITECTURES
    gptj_mpt = (fmt in ("ggml", "ggmm") and facts.architecture in ("gptj", "mpt")) or zoo_arch
    encoder = zoo_arch and facts.architecture == "bert"
    legacy = fmt in LEGACY_CONTAINERS and not gptj_mpt
    s = _Shape.of(facts)
    h = dict(facts.hparams)
    n_ctx_train = _hparam(h, "n_ctx_train", "context_length")
    if ctx_size is None or ctx_size <= 0:
        ctx_size = default_n_ctx(facts)
    if zoo_arch and n_ctx_train:  # the zoo's position tables and windows have the file's size
        ctx_size = n_ctx_train if encoder else min(ctx_size, n_ctx_train)
    gpu_layers = max(0, int(gpu_layers or 0))
    n_layer = s.n_layer
    era = era or ("2023-08" if legacy else "2023-05" if gptj_mpt else newest_era())
    # 2023-08 builds measure the graph unless built with CUDA (scratch buffers then)
    scratch = legacy and (era < "2023-06" or gpu_layers > 0)
    rules = EraRules() if gptj_mpt else era_rules(era)

    weights = sum(st.bytes for st in facts.tensor_types.values())
    n_params = facts.n_params
    bpw = weights / n_params if n_params else 0.0
    emb = int(s.n_vocab * s.n_embd * bpw)
    # A separate output matrix: always in the legacy llama files; GGUF files may tie it to the embedding.
    tensors = facts.tensors
    if tensors:
        out = tensors["output.weight"][2] if "output.weight" in tensors else 0
    else:
        out = emb if (legacy or bool(h.get("has_output", True))) else 0
    offloaded = min(gpu_layers, n_layer) if n_layer else 0
    layers = _layer_bytes(facts, n_layer)
    if layers is None:   # no tensor table: the repeating weights shared evenly
        repeating = max(weights - emb - out, weights // 2 if weights else 0)
        per_layer = repeating // n_layer if n_layer else 0
        offloaded_bytes = per_layer * offloaded
    else:                # the last ``offloaded`` layers, each with its own tensors
        per_layer = max(layers.values(), default=0)
        offloaded_bytes = sum(b for i, b in layers.items() if i >= n_layer - offloaded)
    # llama.cpp offloads the last layers first (i_gpu_start = n_layer - n_gpu_layers)
    output_offloaded = bool(n_layer) and gpu_layers > n_layer
    # an output tied to the token embedding is loaded a second time onto the GPU (TENSOR_DUPLICATED)
    tied = output_offloaded and bool(tensors) and not out and "token_embd.weight" in tensors
    copy = tensors["token_embd.weight"][2] if tied else 0
    vram_weights = offloaded_bytes + (out if output_offloaded else 0) + copy
    if not n_layer and gpu_layers:  # nothing known about layers: all or nothing
        vram_weights = weights
    vram_weights = min(vram_weights, weights + copy)

    cells = _pad(ctx_size, rules.kv_pad)
    attn_layers = n_layer if not (s.state_per_layer or encoder) else 0
    kv_per_layer = (s.key_length + s.value_length) * s.n_head_kv * cells * 2 if attn_layers else 0
    state_per_layer = s.state_per_layer
    kv = kv_per_layer * attn_layers
    state = state_per_layer * n_layer
    kv_vram = (kv_per_layer + state_per_layer) * offloaded

    repack = 0 if gpu_layers or legacy or gptj_mpt else _repack_bytes(facts, rules)
    output = s.n_vocab * 4 if rules.output_buffer and not (legacy or gptj_mpt) else 0
    if not n_layer or not s.n_embd:
        compute = 0
    elif gptj_mpt:
        compute = _compute_gptj_mpt(s, ctx_size, encoder)
    elif scratch:
        compute = _scratch_legacy(era, ctx_size, n_layer, s.n_embd, s.n_head, s.n_head_kv)
    else:
        flash_attn = rules.flash_attn_cuda if gpu_layers else rules.flash_attn
        compute = _compute_graph(s, rules, ctx_size, cells, flash_attn)
    compute_on_gpu = gpu_layers > 0 and not (legacy and era < "2023-06")

    vram = vram_weights + kv_vram + (compute if compute_on_gpu else 0)
    total = weights + copy + repack + output + kv + state + compute
    ram = total - vram
    return {
        "ram_bytes": int(ram),
        "vram_bytes": int(vram),
        "weights_bytes": weights,
        "kv_bytes": int(kv),
        "compute_bytes": int(compute),
        "ctx_size": int(ctx_size),
        "gpu_layers": int(offloaded + (1 if n_layer and gpu_layers > n_layer else 0)),
        "n_layer": n_layer,
        "per_layer_bytes": int(per_layer),
        "formula": "gptj-mpt" if gptj_mpt else "legacy-scratch" if scratch else ("legacy-graph" if legacy else "gguf"),
        "era": era,
        "total_bytes": int(total),
        "repack_bytes": int(repack),
        "output_bytes": int(output),
        "state_bytes": int(state),
        "kv_cells": int(cells) if attn_layers else 0,
        "swa_layers": s.swa_layers,
    }


def fit_layers(facts: FileFacts, *, era: str | None, n_ctx: int | None, free_bytes: int,
               reserve_bytes: int) -> tuple[int, int, MemoryEstimate]:
    """(layers that fit, n_layer, estimate for one layer): the most layers (n_layer + 1 = all and the
    output matrix) whose estimated VRAM plus ``reserve_bytes`` fits in ``free_bytes`` (the driver's
    figure, asked by the caller: ``engines.cuda.gpu_info``)."""
    budget = free_bytes - reserve_bytes
    n_layer = int(estimate(facts, ctx_size=n_ctx, gpu_layers=0, era=era)["n_layer"] or 0)
    one = estimate(facts, ctx_size=n_ctx, gpu_layers=1, era=era)
    for layers in range(n_layer + 1, 0, -1) if n_layer else (1,):  # no n_layer: all or nothing
        if estimate(facts, ctx_size=n_ctx, gpu_layers=layers, era=era)["vram_bytes"] <= budget:
            return layers, n_layer, one
    return 0, n_layer, one


def plan_memory(facts: FileFacts, *, ctx_size: int | None = None, gpu_layers: int | str = 0, era: str | None = None,
         free_vram_bytes: int | None = None, reserve_bytes: int | None = None) -> MemoryPlan:
    """:func:`estimate` with the layers split between the CPU and one GPU, and ``items`` per device.

    ``gpu_layers="auto"`` offloads the most layers (``n_layer + 1``: all and the output matrix) whose
    VRAM plus ``reserve_bytes`` (default: the manifest's ``[cuda] reserve_mib``) fits in
    ``free_vram_bytes`` (default: what the CUDA driver reports for device 0; no driver: 0 layers),
    by :func:`fit_layers`, the same figures ``load()`` uses to choose the CUDA
    variant.  ``items`` follows gguf-parser's ``estimate.items[]``: one entry per device with its
    bytes and the layers it runs.
    """
    from .engines import cuda

    auto = gpu_layers == "auto"
    free = free_vram_bytes
    if free is None and (auto or gpu_layers):
        gi = cuda.gpu_info(0)
        free = gi.free_bytes if gi is not None else None
    if reserve_bytes is None:
        reserve_bytes = cuda_settings().reserve_mib * MiB
    if auto:
        layers = fit_layers(facts, era=era, n_ctx=ctx_size, free_bytes=free, reserve_bytes=reserve_bytes)[0] \
            if free is not None else 0
    else:
        layers = max(0, int(gpu_layers or 0))
    est = estimate(facts, ctx_size=ctx_size, gpu_layers=layers, era=era)
    n_layer, on_gpu = est["n_layer"], min(est["gpu_layers"], est["n_layer"])
    items: list[DeviceItem] = [{"device": "cpu", "bytes": est["ram_bytes"], "layers": n_layer - on_gpu,
                                "output": not (n_layer and est["gpu_layers"] > n_layer)}]
    if layers:
        gpu: DeviceItem = {"device": "cuda:0", "bytes": est["vram_bytes"], "layers": on_gpu,
                           "output": bool(n_layer and est["gpu_layers"] > n_layer)}
        if free is not None:
            gpu.update({"free_bytes": int(free), "reserve_bytes": int(reserve_bytes),
                        "fits": est["vram_bytes"] + reserve_bytes <= free})
        items.append(gpu)
    out = cast(MemoryPlan, est)  # the estimate, with the two keys of a plan added here
    out["gpu_layers_requested"] = "auto" if auto else layers
    out["items"] = items
    return out


# --------------------------------------------------------------------------------------------------
# The engine's own figures, from its log lines (G4A_VERBOSE=1)

#: (part, pattern): the buffer sizes each era logs while loading.  Values are MiB (the 2023 eras
#: print "MB" but divide by 1024 * 1024 too).
_LOG_LINES: list[tuple[str, re.Pattern[str]]] = [
    ("model", re.compile(r"(?P<dev>\S+) model buffer size = +(?P<mib>[\d.]+) MiB")),
    ("model", re.compile(r"llm_load_tensors: +(?P<dev>\S+) buffer size = +(?P<mib>[\d.]+) MiB")),  # 2024-09
    ("model", re.compile(r"mem required += +(?P<mib>[\d.]+) MB")),
    ("output", re.compile(r"(?P<dev>\S+) +output buffer size = +(?P<mib>[\d.]+) MiB")),
    ("kv", re.compile(r"(?P<dev>\S+) KV buffer size = +(?P<mib>[\d.]+) MiB")),
    ("kv", re.compile(r"kv self size += +(?P<mib>[\d.]+) MB")),
    ("state", re.compile(r"(?P<dev>\S+) RS buffer size = +(?P<mib>[\d.]+) MiB")),
    ("compute", re.compile(r"(?P<dev>\S+) compute buffer size = +(?P<mib>[\d.]+) MiB")),
    ("compute", re.compile(r"compute buffer total size = +(?P<mib>[\d.]+) MB")),
]


def parse_engine_log(text: str) -> EngineLog:
    """The buffer sizes an engine logged while loading: ``{parts: {model, repack, output, kv, state,
    compute}, devices: {name: bytes}, total_bytes, lines}``.  The ``CPU_REPACK`` model buffer is
    reported as ``repack``.  Buffers add up (2026-10 logs one KV buffer per cache, base and SWA),
    except the compute buffer, which a re-reservation logs again: it counts once, at its largest."""
    seen: dict[tuple[str, str], int] = {}
    lines: list[str] = []
    for line in text.splitlines():
        for part, pat in _LOG_LINES:
            m = pat.search(line)
            if not m:
                continue
            dev = m.groupdict().get("dev") or "CPU"
            if part == "model" and dev == "CPU_REPACK":
                part = "repack"
            nbytes = int(round(float(m.group("mib")) * MiB))
            key = (part, dev)
            seen[key] = max(seen.get(key, 0), nbytes) if part == "compute" else seen.get(key, 0) + nbytes
            lines.append(line.strip())
            break
    parts = {p: 0 for p in ("model", "repack", "output", "kv", "state", "compute")}
    devices: dict[str, int] = {}
    for (part, dev), nbytes in seen.items():
        parts[part] += nbytes
        name = dev.split("_")[0]  # CPU_Mapped, CPU_REPACK -> CPU
        devices[name] = devices.get(name, 0) + nbytes
    return {"parts": parts, "devices": devices, "total_bytes": sum(parts.values()), "lines": lines}
