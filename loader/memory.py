"""RAM / VRAM estimates for running a model file at a given context size and GPU offload.

The estimate has three parts, each reported on its own:

weights
    The sum of the tensor bytes the reader counted (``FileFacts.tensor_types``).  With ``gpu_layers``
    set, each offloaded repeating layer moves ``repeating_bytes / n_layer`` to VRAM, where
    ``repeating_bytes`` is the weights minus the token embedding and the output matrix (each
    estimated as ``n_vocab * n_embd`` weights at the file's mean bytes per weight, the output only
    when the file has a separate one, i.e. ``n_tensors`` suggests it or the era always had one).
    ``gpu_layers > n_layer`` also offloads the output matrix, as llama.cpp does.  The token
    embedding always stays in RAM (llama.cpp keeps ``get_rows`` on the CPU).

KV cache
    ``2 * n_layer * n_ctx * n_embd_k_gqa * 2`` bytes (K and V, f16), where
    ``n_embd_k_gqa = head_dim * n_head_kv`` (``head_dim = key_length`` when the file states it, else
    ``n_embd / n_head``).  The KV of offloaded layers is in VRAM.  Recurrent architectures (mamba,
    rwkv) have a small fixed state instead; their estimate uses the same formula and is an upper bound.

compute
    Legacy eras (ggml/ggmf/ggjt, llama.cpp up to b1011) reserved fixed scratch buffers chosen by
    model size (``MEM_REQ_SCRATCH0``, ``MEM_REQ_SCRATCH1``, ``MEM_REQ_EVAL`` in llama.cpp):

    * up to b566 (backends of 2023-04 and 2023-05): 7B 512+512+768 MiB, 13B 512+512+1024,
      30B 512+512+1280, 65B 1024+1024+1536 (independent of ``n_ctx``);
    * b567..b1011 (2023-08): SCRATCH0 = ``n_ctx/16 + 100`` MiB (7B; 3B ``/16 + 92``, 13B ``/12 + 120``,
      30B ``/9 + 160``, 65B ``/6 + 256``, 70B ``/7 + 164``), SCRATCH1 128/160/192/256/384/304 MiB and
      EVAL 8/10/12/16/24/24 MiB for 3B/7B/13B/30B/65B/70B.  (b1011 builds without CUDA measure the graph
      with ggml-alloc instead and usually need less; the table is the upper bound.)

    Model sizes are recognised the way those loaders did, by ``n_layer`` (26, 32, 40, 60, 80);
    any other size scales the 7B figures by ``n_embd / 4096``.

    GGUF eras allocate a compute graph measured at load time.  We estimate it for one micro-batch of
    ``n_ubatch = min(512, n_ctx)`` tokens as f32 activations::

        logits      n_vocab * n_ubatch * 4
        attention   n_head * n_ctx * n_ubatch * 4        (KQ scores of one layer, no flash attention)
        activations n_ubatch * (4 * n_embd + 2 * n_ff) * 4
        compute     max(logits, attention + activations) + activations

    The graph allocator reuses memory, so the logits and the attention scores are not live at once.
    Checked against the engine's own "compute buffer size" (2026-10, SmolLM2-135M): 53 vs 49 MiB at
    n_ctx 256, 106 vs 98 at 512, 106 vs 103 at 2048.

    The compute buffer lives on the GPU when any layer is offloaded, otherwise in RAM.
"""
from __future__ import annotations

from typing import Any

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

DEFAULT_CTX = 2048


def _int(h: dict[str, Any], *keys: str, default: int = 0) -> int:
    for k in keys:
        v = h.get(k)
        if isinstance(v, (list, tuple)):  # per-layer arrays (e.g. n_head_kv of some GGUF files)
            v = max(v) if v else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return default


def _legacy_size(n_layer: int, n_embd: int, n_head: int, n_head_kv: int) -> tuple[str | None, float]:
    """The e_model name a legacy loader would pick, and a scale factor for unknown sizes."""
    if n_layer == 80 and n_head_kv and n_head_kv < n_head:
        return "70B", 1.0
    size = _N_LAYER_TO_SIZE.get(n_layer)
    if size:
        return size, 1.0
    return None, max(n_embd, 1) / 4096.0


def _compute_legacy(era: str, n_ctx: int, n_layer: int, n_embd: int, n_head: int, n_head_kv: int) -> int:
    size, scale = _legacy_size(n_layer, n_embd, n_head, n_head_kv)
    if era < "2023-06":
        key = "65B" if size == "70B" else (size if size in _SCRATCH_2023_05 else "7B")
        a, b, c = _SCRATCH_2023_05[key]
        return int((a + b + c) * MiB * scale)
    key = size if size in _SCRATCH0_2023_08 else "7B"
    div, base = _SCRATCH0_2023_08[key]
    total = (n_ctx / div + base) + _SCRATCH1_2023_08[key] + _EVAL_2023_08[key]
    return int(total * MiB * scale)


def _compute_gguf(n_ctx: int, n_vocab: int, n_embd: int, n_head: int, n_ff: int) -> int:
    ub = min(512, n_ctx)
    logits = n_vocab * ub * 4
    attn = n_head * n_ctx * ub * 4
    act = ub * (4 * n_embd + 2 * n_ff) * 4
    return int(max(logits, attn + act) + act)


def estimate(facts: Any, *, ctx_size: int | None = None, gpu_layers: int = 0,
             era: str | None = None) -> dict[str, Any]:
    """Estimate memory needs of ``facts`` (a FileFacts) at ``ctx_size`` tokens with ``gpu_layers`` offloaded.

    ``era`` is the chosen backend's era ("2023-04" ...); None or a GGUF era uses the GGUF formula for
    GGUF files and the newest legacy table for ggml-era files.  ``ctx_size`` defaults to the file's
    training context capped at 2048 (or 512 for legacy files, their usual default).
    Returns ``{ram_bytes, vram_bytes, weights_bytes, kv_bytes, compute_bytes, ctx_size, gpu_layers,
    n_layer, ...}``; every value is an int (``None`` only where nothing could be said).
    """
    h = dict(getattr(facts, "hparams", None) or {})
    fmt = getattr(facts, "format", None)
    legacy = fmt in ("ggml", "ggmf", "ggjt")
    n_layer = _int(h, "n_layer", "block_count")
    n_embd = _int(h, "n_embd", "embedding_length")
    n_head = _int(h, "n_head", "head_count", default=1)
    n_head_kv = _int(h, "n_head_kv", "head_count_kv", default=n_head)
    n_vocab = _int(h, "n_vocab", "vocab_size")
    n_ff = _int(h, "n_ff", "feed_forward_length", default=4 * n_embd)
    head_dim = _int(h, "key_length", "head_dim", default=(n_embd // n_head) if n_head else 0)
    n_ctx_train = _int(h, "n_ctx_train", "context_length")

    if ctx_size is None or ctx_size <= 0:
        ctx_size = 512 if legacy else min(n_ctx_train or DEFAULT_CTX, DEFAULT_CTX)
    gpu_layers = max(0, int(gpu_layers or 0))

    tt = getattr(facts, "tensor_types", None) or {}
    weights = int(sum(getattr(s, "bytes", 0) or 0 for s in tt.values()))
    n_params = int(getattr(facts, "n_params", 0) or 0)
    bpw = weights / n_params if n_params else 0.0
    emb = int(n_vocab * n_embd * bpw)
    # A separate output matrix: always in the legacy llama files; GGUF files may tie it to the embedding.
    has_output = legacy or bool(h.get("has_output", True))
    out = emb if has_output else 0
    repeating = max(weights - emb - out, weights // 2 if weights else 0)
    per_layer = repeating // n_layer if n_layer else 0

    offloaded = min(gpu_layers, n_layer) if n_layer else 0
    vram_weights = per_layer * offloaded + (out if n_layer and gpu_layers > n_layer else 0)
    if not n_layer and gpu_layers:  # nothing known about layers: all or nothing
        vram_weights = weights
    vram_weights = min(vram_weights, weights)

    kv_per_layer = 2 * ctx_size * head_dim * n_head_kv * 2 if n_layer else 0
    kv = kv_per_layer * n_layer
    kv_vram = kv_per_layer * offloaded

    if not n_layer or not n_embd:
        compute = 0
    elif legacy:
        compute = _compute_legacy(era or "2023-08", ctx_size, n_layer, n_embd, n_head, n_head_kv)
    else:
        compute = _compute_gguf(ctx_size, n_vocab, n_embd, n_head, n_ff)
    compute_on_gpu = gpu_layers > 0 and not legacy

    vram = vram_weights + kv_vram + (compute if compute_on_gpu else 0)
    ram = (weights - vram_weights) + (kv - kv_vram) + (0 if compute_on_gpu else compute)
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
        "formula": "legacy-scratch" if legacy else "gguf",
    }
