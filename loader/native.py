"""The binding to backend libraries: cffi in ABI mode over the one shim header.

The declarations come from ``backends/shim/g4a_shim.h`` itself (the part between the CDEF markers),
so the C side and the Python side cannot drift apart.  Every library is opened with
``RTLD_LOCAL | RTLD_NOW``: each era keeps its own ggml, and a missing symbol fails at open time with
a message, not later with a crash.
"""
from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cache
from .errors import BackendError
from .manifest import build_command, package_data

_HEADER = "backends/shim/g4a_shim.h"   # shipped inside the package (manifest.package_data)
_lock = threading.Lock()
_open: dict[str, "Backend"] = {}


def _header_text() -> str:
    p = package_data(_HEADER)
    try:
        text = p.read_text()
    except OSError as e:
        raise BackendError(f"the shim header {p} cannot be read ({e.strerror or e}): this installation of "
                           f"gpt4all_loader is incomplete; reinstall it") from None
    try:
        start = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
        end = text.index("/* CDEF-END */")
    except ValueError:
        raise BackendError(f"{p}: the shim header lacks its CDEF markers") from None
    return text[start:end]


@functools.lru_cache(maxsize=1)
def ffi():
    import cffi

    f = cffi.FFI()
    f.cdef(_header_text())
    return f


@functools.lru_cache(maxsize=1)
def abi_version() -> int:
    """The ABI version this Python side speaks (from the header)."""
    import re

    m = re.search(r"G4A_ABI_VERSION\s*=\s*(\d+)", _header_text())
    if not m:
        raise BackendError("the shim header does not declare G4A_ABI_VERSION")
    return int(m.group(1))


@dataclass
class Backend:
    """One opened backend library (one era, one variant)."""

    name: str
    variant: str
    path: Path
    record: dict
    lib: Any

    def info(self) -> str:
        return ffi().string(self.lib.g4a_backend_info()).decode("utf-8", "replace")

    def last_error(self) -> str:
        return ffi().string(self.lib.g4a_last_error()).decode("utf-8", "replace")

    @property
    def gpu(self) -> bool:
        return bool(self.lib.g4a_gpu_build())


def record_for(name: str, variant: str) -> dict:
    """The build record (.json beside the .so), or an error that says how to build it."""
    so = cache.lib_dir() / f"libg4a-{name}-{variant}.so"
    rec = so.with_suffix(".json")
    if not so.exists():
        raise BackendError(f"backend {name}/{variant} is not built ({so} does not exist); "
                           f"build it with: {build_command(name, variant)}")
    try:
        data = json.loads(rec.read_text()) if rec.exists() else {}
    except ValueError:
        data = {}
    data.setdefault("path", str(so))
    return data


def open_backend(name: str, variant: str, *, path: Path | None = None) -> Backend:
    """dlopen a backend once per process (thread-safe); refuse a library of another ABI version.

    Callers must have checked that this CPU can run the variant (see variants.py): an illegal
    instruction cannot be caught.
    """
    so = Path(path) if path else cache.lib_dir() / f"libg4a-{name}-{variant}.so"
    key = str(so)
    with _lock:
        if key in _open:
            return _open[key]
        record = record_for(name, variant) if path is None else {"path": key}
        if record.get("gpu") == "cuda":
            from .variants import preload_cuda_runtime

            record["cuda_runtime_from"] = preload_cuda_runtime()  # BackendError, saying how to fix, if absent
        f = ffi()
        try:
            lib = f.dlopen(key, f.RTLD_LOCAL | f.RTLD_NOW)
        except OSError as e:
            raise BackendError(f"cannot open backend library {so}: {e}; "
                               f"rebuild it with: {build_command(name, variant, clean=True)} && "
                               f"{build_command(name, variant)}") from None
        try:
            got = int(lib.g4a_abi_version())
        except (AttributeError, OSError) as e:
            raise BackendError(f"{so} is not a gpt4all-loader backend (no g4a_abi_version: {e})") from None
        if got != abi_version():
            raise BackendError(f"{so} speaks shim ABI {got}, this package speaks {abi_version()}; "
                               f"rebuild it with: {build_command(name, variant)}")
        b = Backend(name=name, variant=variant, path=so, record=record, lib=lib)
        _open[key] = b
        return b
