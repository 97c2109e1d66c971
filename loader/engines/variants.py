"""Which build variant of a backend this machine can run, and why.

A variant compiled for CPU features the processor lacks dies with SIGILL at the first vector
instruction: that cannot be caught, so the check happens before dlopen, from /proc/cpuinfo.

A CUDA variant is chosen when the conditions of :mod:`.cuda` hold; otherwise the best CPU variant
is loaded and the reason names the first condition that failed; device="cuda" raises DeviceError
with that reason instead.  n_gpu_layers=None means "all that fit".
The reason for every choice (and every fallback) is returned so Model.info can show it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BackendError, DeviceError
from ..formats.facts import FileFacts
from . import cache
from .manifest import build_command, load_manifest

if TYPE_CHECKING:  # pragma: no cover
    from .cuda import FitLayers

#: preference among CPU variants: the fastest the CPU can run first
CPU_ORDER = ("cpu", "cpu-avxonly")


@dataclass(frozen=True)
class VariantChoice:
    variant: str | None
    device: str            # "cpu" or "cuda"
    reason: str
    #: layers to offload when device == "cuda" (-1: all, as the engine counts them); None on CPU
    n_gpu_layers: int | None = None


@dataclass(frozen=True)
class RunnableChoice(VariantChoice):
    """A choice with a variant this machine runs (what LoadPlan.require hands out), so that callers
    can open the library without checking for None again."""

    variant: str


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (lower case, as /proc/cpuinfo names them)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def missing_features(needed: tuple[str, ...] | list[str]) -> list[str]:
    flags = cpu_flags()
    if not flags and os.uname().machine not in ("x86_64", "AMD64", "i686"):
        return list(needed)
    # /proc/cpuinfo calls F16C "f16c" and FMA "fma"; names in the manifest use the same spelling
    return [f for f in needed if f not in flags]


def built_variants() -> dict[str, list[str]]:
    """backend name -> variants whose library exists in the cache."""
    out: dict[str, list[str]] = {}
    lib_dir = cache.lib_dir()
    if not lib_dir.is_dir():
        return out
    for spec in load_manifest().values():
        for vname in spec.variants:
            if cache.library_path(spec.name, vname).is_file():
                out.setdefault(spec.name, []).append(vname)
    return out



def choose_variant(backend: str, device: str = "auto", facts: FileFacts | None = None, n_gpu_layers: int | None = None,
                   n_ctx: int | None = None, fit_layers: FitLayers | None = None) -> VariantChoice:
    """Pick the variant of ``backend`` to load on this machine.

    ``device``: "auto" (GPU when possible, else the best CPU variant), "cpu", or "cuda" (fails
    loudly with DeviceError instead of falling back).  ``facts`` (the file's FileFacts), with
    ``n_ctx``, lets the tensor-type and memory conditions be checked; without them only the build
    and the driver are; ``fit_layers`` (``memory.fit_layers``) lets the layers be fitted to the free
    VRAM.  ``n_gpu_layers``: None = all that fit, -1 = all (or none), N = exactly N.
    """
    spec = load_manifest().get(backend)
    if spec is None:
        raise BackendError(f"unknown backend {backend!r}; declared: {', '.join(load_manifest())}")
    built = set(built_variants().get(backend, []))
    notes: list[str] = []

    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")

    if device == "auto" and n_gpu_layers == 0:
        notes.append("not cuda: n_gpu_layers=0 requested")
    elif device in ("auto", "cuda"):
        gpu_variants = [v for v in spec.variants.values() if v.gpu == "cuda"]
        why_not = None
        if not gpu_variants:
            why_not = f"backend {backend} has no CUDA variant"
        elif not any(v.name in built for v in gpu_variants):
            why_not = f"the CUDA variant of {backend} is not built ({build_command(backend, gpu_variants[0].name)})"
        else:
            v = next(v for v in gpu_variants if v.name in built)
            missing = missing_features(v.cpu_features)
            if missing:
                why_not = f"this CPU lacks {', '.join(missing)} (needed by the CPU part of {v.name})"
            else:
                from . import cuda  # ctypes, the driver and NVML only where a CUDA build exists

                layers, detail = cuda.plan_offload(backend, v.name, facts, n_gpu_layers, n_ctx, fit_layers)
                if layers is not None:
                    return VariantChoice(v.name, "cuda", detail, layers)
                why_not = detail
        if device == "cuda":
            raise DeviceError(f"device='cuda' requested but {why_not}")
        notes.append(f"not cuda: {why_not}")

    for vname in CPU_ORDER:
        var = spec.variants.get(vname)
        if var is None:
            continue
        missing = missing_features(var.cpu_features)
        if missing:
            notes.append(f"not {vname}: this CPU lacks {', '.join(missing)}")
            continue
        if vname not in built:
            notes.append(f"not {vname}: not built ({build_command(backend, vname)})")
            continue
        return VariantChoice(vname, "cpu", "; ".join([f"{vname}: CPU has {', '.join(var.cpu_features)}", *notes]))
    return VariantChoice(None, "cpu", "; ".join(notes) or f"no usable variant of {backend}")


