"""Which build variant of a backend this machine can run, and why.

A variant compiled for CPU features the processor lacks dies with SIGILL at the first vector
instruction: that cannot be caught, so the check happens before dlopen, from /proc/cpuinfo.
A GPU variant is chosen only when it is built and a driver is present; the reason for every
choice (and every fallback) is returned so Model.info can show it.
"""
from __future__ import annotations

import ctypes
import functools
import json
import platform
from dataclasses import dataclass

from . import cache
from .errors import DeviceError
from .manifest import load_manifest

#: preference among CPU variants: the fastest the CPU can run first
CPU_ORDER = ("cpu", "cpu-avxonly")


@dataclass(frozen=True)
class VariantChoice:
    variant: str | None
    device: str            # "cpu" or "cuda"
    reason: str


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
    if not flags and platform.machine() not in ("x86_64", "AMD64", "i686"):
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
            if (lib_dir / f"libg4a-{spec.name}-{vname}.so").is_file():
                out.setdefault(spec.name, []).append(vname)
    return out


@functools.lru_cache(maxsize=1)
def cuda_driver() -> tuple[int, str]:
    """(number of CUDA devices, reason) from the driver library itself; 0 devices with a reason."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA driver (libcuda.so.1 cannot be loaded)"
    try:
        if cuda.cuInit(0) != 0:
            return 0, "the CUDA driver failed to initialise (cuInit)"
        n = ctypes.c_int(0)
        if cuda.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value == 0:
            return 0, "the CUDA driver reports no device"
        return n.value, f"{n.value} CUDA device(s)"
    except (AttributeError, OSError) as e:  # pragma: no cover - broken driver installs
        return 0, f"the CUDA driver is unusable: {e}"


def choose_variant(backend: str, device: str = "auto") -> VariantChoice:
    """Pick the variant of ``backend`` to load on this machine.

    ``device``: "auto" (GPU when possible, else the best CPU variant), "cpu", or "cuda" (fails
    loudly with DeviceError instead of falling back).
    """
    spec = load_manifest().get(backend)
    if spec is None:
        raise DeviceError(f"unknown backend {backend!r}")
    built = set(built_variants().get(backend, []))
    notes: list[str] = []

    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'")

    if device in ("auto", "cuda"):
        gpu_variants = [v for v in spec.variants.values() if v.gpu == "cuda"]
        why_not = None
        if not gpu_variants:
            why_not = f"backend {backend} has no CUDA variant"
        elif not any(v.name in built for v in gpu_variants):
            why_not = (f"the CUDA variant of {backend} is not built "
                       f"(python build_backends.py --only {backend} --variant {gpu_variants[0].name})")
        else:
            n, reason = cuda_driver()
            if n == 0:
                why_not = reason
            else:
                v = next(v for v in gpu_variants if v.name in built)
                return VariantChoice(v.name, "cuda", f"{v.name}: {reason}")
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
            notes.append(f"not {vname}: not built (python build_backends.py --only {backend} --variant {vname})")
            continue
        return VariantChoice(vname, "cpu", "; ".join([f"{vname}: CPU has {', '.join(var.cpu_features)}", *notes]))
    return VariantChoice(None, "cpu", "; ".join(notes) or f"no usable variant of {backend}")


def build_record(backend: str, variant: str) -> dict:
    p = cache.lib_dir() / f"libg4a-{backend}-{variant}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
