"""Hostile-but-plausible model files: consistent tiny models with one header field, tensor type or
vocabulary detail set to what took an engine down (SIGABRT, SIGFPE, SIGSEGV or an unbounded
allocation) before the validator existed.

Each case is (name, writer, {backend: reason substring}): the backends listed are those whose
format the file is in, and the substring is what their refusal must say.  ``run_child`` loads a file
in a child process with a time and address-space limit, for the native step.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

from gpt4all_loader.engines import child
from gpt4all_loader.formats.writer import (
    TinyGPTJ,
    TinyLlama,
    TinyMPT,
    _legacy_tensor,
    gguf_name,
    write_gguf,
    write_gptj,
    write_llama,
    write_mpt,
)

GGUF_ERAS = ("gguf-2023-11", "gguf-2024-09", "gguf-2026-10")
U32, I32, F32, STR, ARR = 4, 5, 6, 8, 9
_HP = {"n_vocab": 0, "n_embd": 1, "n_mult": 2, "n_head": 3, "n_layer": 4, "n_rot": 5, "ftype": 6}


# -- legacy LLaMA ----------------------------------------------------------------------------------------
def legacy(path: Path, fmt: str, version: int | None, ftype: str = "f32", model: TinyLlama | None = None,
           **header: int) -> Path:
    """A tiny LLaMA in a legacy container, then header fields overwritten (``n_head=0`` ...)."""
    write_llama(path, model or TinyLlama(seed=0), fmt, version=version, ftype=ftype)
    b = bytearray(path.read_bytes())
    base = 4 if fmt == "ggml" else 8
    for k, v in header.items():
        struct.pack_into("<i", b, base + 4 * _HP[k], v)
    path.write_bytes(b)
    return path


def legacy_f16_norms(path: Path, fmt: str, version: int | None) -> Path:
    """Every tensor F16, the 1-D norms included (the 2023 converters kept those F32)."""
    m = TinyLlama(seed=0)
    write_llama(path, m, fmt, version=version, ftype="f16", vocab_only=True)
    with open(path, "ab") as f:
        for name, shape in m.tensor_shapes().items():
            _legacy_tensor(f, name, shape, 1, m.weights(name), 32 if fmt == "ggjt" else 0)
    return path


def patched(path: Path, offset: int, value: int) -> Path:
    """``path`` with the i32 at ``offset`` replaced (a header field of a GPT-J or MPT file)."""
    b = bytearray(path.read_bytes())
    struct.pack_into("<i", b, offset, value)
    path.write_bytes(b)
    return path


#: GPT-J (ggml: magic, n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot) and MPT (ggmm: magic, n_vocab,
#: n_ctx, n_layer, n_head, n_embd) header fields set hostile; their loaders check what they read, so
#: these must end in a load or a library error on every era
GPTJ_MPT_CASES: dict[str, Callable[[Path], Path]] = {
    "gptj-n_head-0": lambda p: patched(write_gptj(p, TinyGPTJ(seed=0)), 16, 0),
    "gptj-n_layer-1000": lambda p: patched(write_gptj(p, TinyGPTJ(seed=0)), 20, 1000),
    "gptj-n_rot-0": lambda p: patched(write_gptj(p, TinyGPTJ(seed=0)), 24, 0),
    "mpt-n_head-0": lambda p: patched(write_mpt(p, TinyMPT(seed=0)), 16, 0),
    "mpt-n_layer-1000": lambda p: patched(write_mpt(p, TinyMPT(seed=0)), 12, 1000),
}


# -- GGUF --------------------------------------------------------------------------------------------------
def gguf(path: Path, *, n_layer: int = 2, kv: dict | None = None, drop: tuple[str, ...] = (),
         types: dict[str, int] | None = None, tokens: list[str] | None = None, alignment: int = 32,
         version: int = 3) -> Path:
    """A tiny zero-weight LLaMA GGUF; ``kv`` overrides or adds (key -> (type, value)), ``drop``
    removes keys, ``types`` gives GGUF tensor names a ggml type id other than F32."""
    m = TinyLlama(seed=0, n_layer=n_layer)
    toks, scores, ttypes = m.gguf_vocab()
    toks = tokens if tokens is not None else toks
    base = {
        "general.architecture": (STR, "llama"),
        "general.alignment": (U32, alignment),
        "llama.context_length": (U32, m.n_ctx),
        "llama.embedding_length": (U32, m.n_embd),
        "llama.block_count": (U32, m.n_layer),
        "llama.feed_forward_length": (U32, m.n_ff),
        "llama.rope.dimension_count": (U32, m.n_rot),
        "llama.attention.head_count": (U32, m.n_head),
        "llama.attention.head_count_kv": (U32, m.n_head_kv),
        "llama.attention.layer_norm_rms_epsilon": (F32, m.rms_norm_eps),
        "tokenizer.ggml.model": (STR, "llama"),
        "tokenizer.ggml.tokens": ((ARR, STR), toks),
        "tokenizer.ggml.scores": ((ARR, F32), scores),
        "tokenizer.ggml.token_type": ((ARR, I32), ttypes),
        "tokenizer.ggml.bos_token_id": (U32, m.bos_id),
        "tokenizer.ggml.eos_token_id": (U32, m.eos_id),
    }
    base.update(kv or {})
    kvs = [(k, t, v) for k, (t, v) in base.items() if k not in drop]
    types = types or {}
    tensors = [(gguf_name(n), types.get(gguf_name(n), 0), shape) for n, shape in m.tensor_shapes().items()]
    return write_gguf(path, kvs, tensors, version=version, alignment=alignment)


def _dup_tokens() -> list[str]:
    toks = TinyLlama(seed=0).gguf_vocab()[0]
    toks[-1] = toks[-2]
    return toks


def _no_byte_tokens() -> list[str]:
    toks = TinyLlama(seed=0).gguf_vocab()[0]
    return toks[:3] + [f"<b{i}>" for i in range(256)] + toks[259:]


def _empty_token() -> list[str]:
    toks = TinyLlama(seed=0).gguf_vocab()[0]
    toks[-1] = ""
    return toks


_EARLY = ("llama-2023-04", "llama-2023-05")
_ALL_GGUF = dict.fromkeys(GGUF_ERAS)

#: name -> (writer(path), {backend: reason substring})
CASES: dict[str, tuple[Callable[[Path], Path], dict[str, str]]] = {
    # legacy LLaMA (2023-04/05 read ggml/ggmf/ggjt v1; 2023-08 ggmf/ggjt)
    "legacy-n_layer-2-ggml-f16": (lambda p: legacy(p, "ggml", None, "f16", TinyLlama(seed=0, n_layer=2)),
                                  {b: "model-size table" for b in _EARLY}),
    "legacy-n_layer-36-ggjt3": (lambda p: legacy(p, "ggjt", 3, model=TinyLlama(seed=0, n_layer=36)),
                                {"llama-2023-08": "model-size table"}),
    "legacy-n_mult-0": (lambda p: legacy(p, "ggjt", 1, n_mult=0),
                        {**{b: "n_mult is 0" for b in _EARLY}, "llama-2023-08": "n_mult is 0"}),
    "legacy-n_head-0": (lambda p: legacy(p, "ggjt", 1, n_head=0),
                        {**{b: "n_head is 0" for b in _EARLY}, "llama-2023-08": "n_head is 0"}),
    "legacy-n_head-not-dividing": (lambda p: legacy(p, "ggjt", 3, n_head=3), {"llama-2023-08": "does not divide"}),
    "legacy-odd-head-dim": (lambda p: legacy(p, "ggml", None, n_head=64),
                            {b: "n_embd / n_head = 1 is odd" for b in _EARLY}),
    "legacy-n_rot-wrong": (lambda p: legacy(p, "ggjt", 3, n_rot=8), {"llama-2023-08": "n_rot 8 differs"}),
    "legacy-n_layer-vs-blocks": (lambda p: legacy(p, "ggjt", 3, n_layer=40), {"llama-2023-08": "blocks"}),
    "legacy-f16-norms": (lambda p: legacy_f16_norms(p, "ggjt", 1), {b: "1-D tensors" for b in _EARLY}),
    # GGUF
    "gguf-alignment-1": (lambda p: gguf(p, alignment=1), {"gguf-2023-11": "multiple of 8",
                                                          "gguf-2024-09": "multiple of 32",
                                                          "gguf-2026-10": "multiple of 32"}),
    "gguf-alignment-8": (lambda p: gguf(p, alignment=8),
                         {b: "multiple of 32" for b in ("gguf-2024-09", "gguf-2026-10")}),
    "gguf-block_count-0": (lambda p: gguf(p, kv={"llama.block_count": (U32, 0)}),
                           {b: "outside 1..4096" for b in GGUF_ERAS}),
    "gguf-block_count-1000": (lambda p: gguf(p, kv={"llama.block_count": (U32, 1000)}),
                              {b: "2 blocks" for b in GGUF_ERAS}),
    "gguf-expert_used-without-count": (lambda p: gguf(p, kv={"llama.expert_used_count": (U32, 2)}),
                                       {b: "without expert_count" for b in ("gguf-2024-09", "gguf-2026-10")}),
    "gguf-expert_used-above-count": (lambda p: gguf(p, kv={"llama.expert_count": (U32, 2),
                                                           "llama.expert_used_count": (U32, 4)}),
                                     {b: "exceeds expert_count" for b in ("gguf-2024-09", "gguf-2026-10")}),
    "gguf-rms-eps-negative": (lambda p: gguf(p, kv={"llama.attention.layer_norm_rms_epsilon": (F32, -1e-5)}),
                              {b: "finite positive" for b in GGUF_ERAS}),
    "gguf-rms-eps-nan": (lambda p: gguf(p, kv={"llama.attention.layer_norm_rms_epsilon": (F32, float("nan"))}),
                         {b: "finite positive" for b in GGUF_ERAS}),
    "gguf-odd-rope": (lambda p: gguf(p, kv={"llama.rope.dimension_count": (U32, 7)}),
                      {b: "n_rot 7 is not an even number" for b in GGUF_ERAS}),
    "gguf-head_count-0": (lambda p: gguf(p, kv={"llama.attention.head_count": (U32, 0)}),
                          {b: "n_head is 0" for b in GGUF_ERAS}),
    "gguf-head_count_kv-0": (lambda p: gguf(p, kv={"llama.attention.head_count_kv": (U32, 0)}),
                             {b: "n_head_kv is 0" for b in GGUF_ERAS}),
    "gguf-i32-weights": (lambda p: gguf(p, types={"blk.0.attn_q.weight": 26}),
                         {b: "which no matrix multiplication takes" for b in ("gguf-2024-09", "gguf-2026-10")}),
    "gguf-q8_1-weights": (lambda p: gguf(p, types={"blk.0.attn_q.weight": 9}),
                          {b: "which no matrix multiplication takes" for b in GGUF_ERAS}),
    "gguf-f16-norm": (lambda p: gguf(p, types={"blk.0.attn_norm.weight": 1}), {"gguf-2026-10": "F32 norms"}),
    "gguf-duplicate-tokens": (lambda p: gguf(p, tokens=_dup_tokens()),
                              {b: "occurs more than once" for b in ("gguf-2024-09", "gguf-2026-10")}),
    "gguf-no-byte-tokens": (lambda p: gguf(p, tokens=_no_byte_tokens()),
                            {b: "0 of the 256 byte tokens" for b in GGUF_ERAS}),
    "gguf-empty-token": (lambda p: gguf(p, tokens=_empty_token()), {b: "empty token" for b in GGUF_ERAS}),
    "gguf-u32-tokens": (lambda p: gguf(p, kv={"tokenizer.ggml.tokens": ((ARR, U32), list(range(355)))}),
                        {b: "not of strings" for b in GGUF_ERAS}),
    "gguf-vocab-vs-embedding": (lambda p: gguf(p, tokens=TinyLlama(seed=0).gguf_vocab()[0][:-1],
                                                kv={"tokenizer.ggml.scores": ((ARR, F32), [0.0] * 361),
                                                    "tokenizer.ggml.token_type": ((ARR, I32), [1] * 361)}),
                                {b: "token_embd.weight has 362 rows" for b in GGUF_ERAS}),
    "gguf-short-scores": (lambda p: gguf(p, kv={"tokenizer.ggml.scores": ((ARR, F32), [0.0] * 10)}),
                          {b: "has 10 entries" for b in GGUF_ERAS}),
    "gguf-no-architecture": (lambda p: gguf(p, drop=("general.architecture",)),
                             {b: "does not state its architecture" for b in GGUF_ERAS}),
    **{f"gguf-tokenizer-{t}": (lambda p, t=t: gguf(p, kv={"tokenizer.ggml.model": (STR, t)}),
                               {b: f"tokenizer model '{t}'" for b in ("gguf-2024-09", "gguf-2026-10")})
       for t in ("bert", "none", "no_vocab", "rwkv")},
}

#: a representative set of the cases above that crashed an engine, with the backend to force, for
#: the native step in a child process
CHILD_CASES = [
    ("legacy-n_layer-2-ggml-f16", "llama-2023-04"), ("legacy-n_mult-0", "llama-2023-05"),
    ("legacy-n_rot-wrong", "llama-2023-08"), ("legacy-odd-head-dim", "llama-2023-05"),
    ("gguf-alignment-1", "gguf-2026-10"), ("gguf-alignment-8", "gguf-2024-09"),
    ("gguf-block_count-1000", "gguf-2026-10"), ("gguf-head_count-0", "gguf-2023-11"),
    ("gguf-rms-eps-nan", "gguf-2026-10"), ("gguf-duplicate-tokens", "gguf-2026-10"),
    ("gguf-tokenizer-rwkv", "gguf-2026-10"), ("gguf-u32-tokens", "gguf-2023-11"),
]

#: address space a child may map: the tiny models need a few hundred MB; an engine that tries to
#: allocate gigabytes for a hostile header fails inside the limit instead of exhausting the machine
CHILD_ADDRESS_SPACE = 8 << 30
#: what a refusal or failure inside the library looks like in gpt4all_loader.testing.smoke's "error"
LIBRARY_ERRORS = ("UnsupportedModelError", "FormatError", "BackendError", "OSError", "MemoryError")


def run_child(path: Path, backend: str | None, timeout: float = 120) -> dict:
    """``load()`` + one ``evaluate`` of ``path`` in a child (``gpt4all_loader.smoke``, the probe's ``--load``
    step, started by the package's child runner) under an address-space limit: its JSON line, or a dict
    saying how it ended ("signal": N, "timeout": True, or "rc" with its stderr tail)."""
    args = [str(path), "--device", "cpu", "--ctx-size", "64"] + (["--backend", backend] if backend else [])
    cp = child.run("smoke", args, timeout=timeout, address_space=CHILD_ADDRESS_SPACE)
    if cp.timed_out:
        return {"timeout": True}
    if cp.crashed:
        return {"signal": -cp.returncode, "stderr": cp.stderr[-2000:]}
    res = cp.last_json()
    return res if res is not None else {"rc": cp.returncode, "stderr": cp.stderr[-2000:]}
