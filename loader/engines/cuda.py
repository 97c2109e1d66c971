"""The CUDA side of choosing a variant: driver, device memory, runtime libraries, what the kernels take.

A CUDA variant is chosen (device="auto") only when every one of these holds, checked in this order:

1. the backend declares a CUDA variant and it is built (:mod:`.variants`);
2. the CUDA driver loads (libcuda.so.1) and reports a device;
3. the file's weight-matrix types are ones that era's CUDA kernels take (``matrix_types`` of
   ``[backends.NAME.cuda]`` in the manifest: the 2023-08 kernels abort the process on an F32 matrix);
4. the device's compute capability is covered by the architectures the variant was built for;
5. the estimated VRAM of at least one layer, plus a reserve, fits in the device's free memory
   (cuMemGetInfo in a context of the device, else NVML): this module asks the driver, the caller
   passes the fitting (``memory.fit_layers``, arithmetic over the estimates) in;
6. the CUDA runtime libraries the variant needs (cuBLAS 13) can be loaded.

Every function answers with a reason, so a fallback to the CPU can say why.
"""
from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import BackendError
from ..formats.facts import FileFacts
from ..reports import MemoryEstimate
from . import cache
from .manifest import cuda_settings, load_manifest

MiB = 1024 * 1024


class FitLayers(Protocol):
    """``memory.fit_layers``: (layers that fit, n_layer, estimate of one layer) in ``free_bytes`` less
    ``reserve_bytes``.  The estimates live above the engines: whoever has them passes the function in."""

    def __call__(self, facts: FileFacts, *, era: str | None, n_ctx: int | None, free_bytes: int,
                 reserve_bytes: int) -> tuple[int, int, MemoryEstimate]: ...


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


# ------------------------------------------------------------------------------------------------
# the CUDA device: compute capability and free memory

@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    capability: tuple[int, int]
    free_bytes: int
    total_bytes: int
    source: str            # "cuMemGetInfo" or "NVML"


_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR = 75, 76


def gpu_info(index: int = 0) -> GpuInfo | None:
    """Name, compute capability and free/total memory of CUDA device ``index``; None without a driver.

    Free memory comes from cuMemGetInfo inside the device's primary context (retained and released
    again), which is what this process can really allocate; NVML is the fallback.
    """
    if cuda_driver()[0] <= index:
        return None
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev = ctypes.c_int(0)
    if cu.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    cu.cuDeviceGetName(name, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    cu.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, dev)
    cu.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, dev)
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    source = "cuMemGetInfo"
    ctx = ctypes.c_void_p(0)
    ok = False
    try:
        if cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0:
            try:
                if cu.cuCtxPushCurrent_v2(ctx) == 0:
                    ok = cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)) == 0
                    popped = ctypes.c_void_p(0)
                    cu.cuCtxPopCurrent_v2(ctypes.byref(popped))
            finally:
                release = getattr(cu, "cuDevicePrimaryCtxRelease_v2", None) or cu.cuDevicePrimaryCtxRelease
                release(dev)
    except AttributeError:  # pragma: no cover - drivers older than CUDA 11
        ok = False
    if not ok:
        nv = _nvml_memory(index)
        if nv is None:
            return None
        free.value, total.value = nv
        source = "NVML"
    return GpuInfo(index, name.value.decode("utf-8", "replace"), (major.value, minor.value),
                   int(free.value), int(total.value), source)


def _nvml_memory(index: int) -> tuple[int, int] | None:
    class _Mem(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    try:
        nv = ctypes.CDLL("libnvidia-ml.so.1")
        if nv.nvmlInit_v2() != 0:
            return None
        h = ctypes.c_void_p(0)
        mem = _Mem()
        try:
            if nv.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(h)) != 0:
                return None
            if nv.nvmlDeviceGetMemoryInfo(h, ctypes.byref(mem)) != 0:
                return None
            return int(mem.free), int(mem.total)
        finally:
            nv.nvmlShutdown()
    except (OSError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------
# the manifest's [cuda] table and the CUDA runtime libraries



def _runtime_dirs() -> list[tuple[Path, str]]:
    """Folders that may hold the CUDA runtime libraries, best first, each with where it comes from."""
    dirs: list[tuple[Path, str]] = []
    if os.environ.get("G4A_CUDA_LIB_DIR"):
        dirs.append((Path(os.environ["G4A_CUDA_LIB_DIR"]), "$G4A_CUDA_LIB_DIR"))
    dirs.append((cache.lib_dir() / "cuda", "the links made by gpt4all-build"))
    try:  # an installed nvidia-cublas wheel: site-packages/nvidia/cu13/lib
        import importlib.util

        spec = importlib.util.find_spec("nvidia")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            dirs.append((Path(loc) / "cu13" / "lib", "the installed nvidia-cublas wheel"))
    except (ImportError, ValueError):
        pass
    for root in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):  # a full toolkit has cuBLAS here
            dirs.append((Path(root) / sub, "the CUDA toolkit"))
    return dirs


_preloaded: dict[str, str] = {}


def preload_cuda_runtime() -> str:
    """Load the shared libraries a CUDA variant needs (cuBLAS) before the variant is opened.

    A CUDA variant lists ``libcublas.so.13`` as a dependency (cudart is linked in statically) and
    finds it through its RUNPATH ``$ORIGIN/cuda``; when that folder is missing (libraries copied to
    another machine, cache cleaned) the libraries are loaded here from $G4A_CUDA_LIB_DIR, an
    installed nvidia-cublas wheel or the system, by full path.  The dynamic linker then satisfies the
    variant's dependency with the library already loaded under the same soname.  They are loaded
    RTLD_LOCAL: each CUDA variant binds to them through its own dependency list, and nothing else in
    the process sees cuBLAS symbols.  Returns where they came from; raises BackendError, naming every
    place looked at and how to install them, when they are nowhere.
    """
    names = list(cuda_settings().runtime_libraries)
    key = ",".join(names)
    if key in _preloaded:
        return _preloaded[key]
    mode = os.RTLD_NOW | os.RTLD_LOCAL
    looked: list[str] = []
    for d, what in _runtime_dirs():
        paths = [d / n for n in names]
        if all(p.exists() for p in paths):
            try:
                for p in paths:
                    ctypes.CDLL(str(p), mode=mode)
            except OSError as e:
                looked.append(f"{d} ({what}): {e}")
                continue
            _preloaded[key] = f"{d} ({what})"
            return _preloaded[key]
        looked.append(f"{d} ({what}): missing")
    try:  # the system: LD_LIBRARY_PATH, ld.so.cache
        for n in names:
            ctypes.CDLL(n, mode=mode)
        _preloaded[key] = "the system library path"
        return _preloaded[key]
    except OSError as e:
        looked.append(f"system library path: {e}")
    pins = " ".join(w.requirement for w in cuda_settings().wheels if "cublas" in w.requirement)
    raise BackendError(
        f"the CUDA variants need {', '.join(names)} (cuBLAS of CUDA 13) and it was not found; looked in: "
        + "; ".join(looked)
        + f". Install it with: pip install {pins or 'nvidia-cublas'}  (or set G4A_CUDA_LIB_DIR to a folder "
          f"holding {', '.join(names)}, or rebuild: gpt4all-build --variant cuda)")


# ------------------------------------------------------------------------------------------------
# conditions 3-5: what the file and the device allow

def _matrix_types(facts: FileFacts) -> set[str]:
    """Tensor types of the file's weight matrices.

    Every type but F32 is a matrix type.  F32 counts as one when there are more F32 tensors than
    LLaMA's 1-D norms (two per layer plus the output norm); without n_layer it always counts: a wrong
    "yes" only keeps a file on the CPU, a wrong "no" would abort the process.
    """
    tt = facts.tensor_types
    types = {t for t in tt if t != "F32"}
    if "F32" in tt:
        n_layer = int(facts.hparams.get("n_layer") or 0)
        n_f32 = tt["F32"].count
        if not n_layer or n_f32 > 2 * n_layer + 1 or facts.file_type == 0:
            types.add("F32")
    return types


def cuda_type_refusal(backend: str, facts: FileFacts | None) -> str | None:
    """Why ``backend``'s CUDA kernels must not get this file (None: they may)."""
    spec = load_manifest()[backend]
    allowed = spec.cuda.matrix_types if spec.cuda else None
    if not allowed or facts is None:
        return None
    bad = sorted(_matrix_types(facts) - set(allowed))
    if not bad:
        return None
    return (f"the file has {', '.join(bad)} weight matrices and the CUDA kernels of {backend} "
            f"(llama.cpp {spec.era}) take {', '.join(allowed)} only (offloading would abort the process)")


def _min_arch(record: dict[str, Any]) -> tuple[int, int] | None:
    archs = ((record.get("cuda") or {}).get("architectures") or "").replace(",", ";")
    nums = []
    for a in archs.split(";"):
        digits = "".join(ch for ch in a.split("-")[0] if ch.isdigit())
        if digits:
            nums.append(int(digits))
    if not nums:
        return None
    m = min(nums)
    return m // 10, m % 10


def _cuda_plan(backend: str, vname: str, facts: FileFacts | None, n_gpu_layers: int | None,
               n_ctx: int | None, fit_layers: FitLayers | None) -> tuple[int | None, str]:
    """(layers to offload, reason) for a built CUDA variant on a machine with a driver; layers None
    means the file must not go to CUDA and the reason says why."""
    spec = load_manifest()[backend]
    refusal = cuda_type_refusal(backend, facts)
    if refusal:
        return None, refusal
    gi = gpu_info(0)
    if gi is None:
        return None, "the CUDA driver reports a device but its memory could not be queried"
    lowest = _min_arch(cache.read_record(backend, vname))
    if lowest and gi.capability < lowest:
        return None, (f"{gi.name} has compute capability {gi.capability[0]}.{gi.capability[1]}, older than the "
                      f"oldest architecture of the {vname} build (sm_{lowest[0]}{lowest[1]})")
    dev = (f"{gi.name} (cc {gi.capability[0]}.{gi.capability[1]}, {gi.free_bytes // MiB} MiB free of "
           f"{gi.total_bytes // MiB} MiB, {gi.source})")
    if facts is None or fit_layers is None:
        layers = -1 if n_gpu_layers is None else n_gpu_layers
        return layers, f"{dev}; memory not checked (no {'file facts' if facts is None else 'estimate'} given)"
    reserve = cuda_settings().reserve_mib * MiB
    fit, n_layer, one = fit_layers(facts, era=spec.era, n_ctx=n_ctx, free_bytes=gi.free_bytes,
                                   reserve_bytes=reserve)
    if n_gpu_layers is not None and n_gpu_layers >= 0:
        want = min(n_gpu_layers, n_layer + 1 if n_layer else 1)  # no n_layer: all or nothing
        if want > fit:
            return None, (f"{want} layers requested but only {fit} of {n_layer} fit in the free VRAM of {dev} "
                          f"(estimate plus {reserve // MiB} MiB reserve)")
        return n_gpu_layers, f"{dev}; {want}/{n_layer} layers requested, {fit} would fit"
    if fit == 0:
        return None, (f"not even one layer fits in the free VRAM of {dev}: one layer needs about "
                      f"{one['vram_bytes'] // MiB} MiB plus a {reserve // MiB} MiB reserve")
    if n_gpu_layers is not None and n_gpu_layers < 0 and fit <= n_layer:  # -1: all were asked for
        return None, (f"all layers requested but only {fit} of {n_layer} fit in the free VRAM of {dev}")
    if fit > n_layer:
        return -1, f"{dev}; all {n_layer} layers and the output fit"
    return fit, f"{dev}; {fit}/{n_layer} layers fit (the rest runs on the CPU)"


def plan_offload(backend: str, vname: str, facts: FileFacts | None, n_gpu_layers: int | None,
                 n_ctx: int | None, fit_layers: FitLayers | None = None) -> tuple[int | None, str]:
    """Conditions 2-6 for the built CUDA variant ``vname``: (layers to offload, reason); layers None
    means the file does not go to CUDA and the reason says why."""
    n, reason = cuda_driver()
    if n == 0:
        return None, reason
    layers, detail = _cuda_plan(backend, vname, facts, n_gpu_layers, n_ctx, fit_layers)
    if layers is not None:
        try:
            preload_cuda_runtime()
        except BackendError as e:
            return None, str(e)
    return layers, (f"{vname}: {reason}: {detail}" if layers is not None else detail)
