"""The binding to backend libraries: cffi in ABI mode over the one shim header.

The declarations come from ``backends/shim/g4a_shim.h`` itself (the part between the CDEF markers),
so the C side and the Python side cannot drift apart.  Every library is opened with
``RTLD_LOCAL | RTLD_NOW``: each era keeps its own ggml, and a missing symbol fails at open time with
a message, not later with a crash.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import BackendError
from . import cache, cores, cpu_gate
from .manifest import ContextTable, build_command, load_manifest, package_data
from .shim import ShimLib

_HEADER = "backends/shim/g4a_shim.h"   # shipped inside the package (manifest.package_data)
_lock = threading.Lock()
_open: dict[str, "Backend"] = {}
#: g4a_load and g4a_quantize point the process's fd 2 (and fd 1) at a temporary file while the engine
#: talks, then restore the descriptor they saved: two at once, on any backend, would restore each
#: other's temporary file for good.  Every call that captures holds this lock.
_capture_lock = threading.Lock()


@contextlib.contextmanager
def capturing_output() -> Iterator[None]:
    """Hold the process-wide lock that native calls which capture stdout/stderr need."""
    with _capture_lock:
        yield


class ContextBudget:
    """The ggml contexts of one library whose era keeps them in a fixed table.

    Open models hold ``per_model`` contexts each; a load or an evaluation in flight one graph more.
    A load beyond ``max_open_models`` is refused (the caller can close a model); an evaluation
    waits while the table is full (other threads' evaluations end by themselves).
    """

    def __init__(self, table: ContextTable):
        self.table = table
        self.open_models = 0
        self._used = 0
        self._cond = threading.Condition()

    def _take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._used + n <= self.table.table)
            self._used += n

    def _give(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()

    def reserve_model(self) -> bool:
        """Count one more open model; False when ``max_open_models`` are open already."""
        with self._cond:
            if self.open_models >= self.table.max_open_models:
                return False
            self.open_models += 1
        self._take(self.table.per_model)
        return True

    def release_model(self) -> None:
        with self._cond:
            self.open_models -= 1
        self._give(self.table.per_model)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Room for the graph of one load or evaluation, for the duration of the call."""
        self._take(self.table.per_call)
        try:
            yield
        finally:
            self._give(self.table.per_call)


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
def ffi() -> Any:
    """The cffi declarations of the shim header.

    Parsing C (pycparser) costs tens of milliseconds in every process that loads a model, so the
    parsed form is kept in the cache as a small generated module (cffi's out-of-line ABI mode), named
    by the header's hash: made once, then imported in about a millisecond.
    """
    text = _header_text()
    name = "_g4a_ffi_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache.lib_dir() / f"{name}.py"
    if path.is_file():
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module.ffi
        except Exception:  # noqa: BLE001 - a damaged file: parse the header again and rewrite it
            pass
    import cffi

    f = cffi.FFI()
    f.cdef(text)
    try:
        builder = cffi.FFI()
        builder.cdef(text)
        builder.set_source(name, None)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with contextlib.redirect_stdout(io.StringIO()):  # it announces the file; stdout may be JSON
            builder.emit_python_code(str(tmp))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: parse in every process, as before
        pass
    return f


def c_text(ptr: Any) -> str:
    """A NUL-terminated string the shim returned, as text: engines may write any bytes, so the
    undecodable ones show as U+FFFD instead of raising."""
    raw: bytes = ffi().string(ptr)
    return raw.decode("utf-8", "replace")


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
    record: dict[str, Any]
    #: the library's g4a_* functions, typed by :class:`~gpt4all_loader.engines.shim.ShimLib`
    lib: ShimLib
    budget: ContextBudget | None = field(default=None, repr=False)

    def info(self) -> str:
        return c_text(self.lib.g4a_backend_info())

    def last_error(self) -> str:
        return c_text(self.lib.g4a_last_error())

    @property
    def gpu(self) -> bool:
        return bool(self.lib.g4a_gpu_build())

    @contextlib.contextmanager
    def evaluating(self, handle: Any = None) -> Iterator[None]:
        """Wrap every native call that builds a graph (g4a_eval, g4a_decode): it may need a context slot,
        under a server one of the machine's decode slots (:mod:`.cpu_gate`), and the model (``handle``) as
        many threads as the rest of the machine leaves cores free (:mod:`.cores`)."""
        with cpu_gate.decoding(), (self.budget.call() if self.budget is not None else contextlib.nullcontext()):
            if handle is not None:
                self.lib.g4a_set_threads(handle, cores.decode_threads())
            yield
            if handle is not None:
                cores.note_decode_end()

    def load_model(self, path: str, params: Any) -> Any:
        """g4a_load under the output-capture lock and this library's context budget.

        Returns the handle, or NULL when the engine refused (``last_error()`` says why); raises
        BackendError when the era's fixed context table has no room for another model.
        """
        budget = self.budget
        if budget is not None and not budget.reserve_model():
            spec = load_manifest()[self.name]
            raise BackendError(
                f"{path}: at most {budget.table.max_open_models} models of llama.cpp {spec.era} "
                f"({self.name}) can be open at once in one process (its ggml has a fixed table of "
                f"{budget.table.table} contexts and each model holds {budget.table.per_model}); "
                f"close one first")
        handle = ffi().NULL
        try:
            with self.evaluating(), capturing_output():
                handle = self.lib.g4a_load(os.fsencode(path), params)
        finally:
            if handle == ffi().NULL and budget is not None:
                budget.release_model()
        return handle

    def free_model(self, handle: Any) -> None:
        """g4a_free, giving the model's contexts back to the budget."""
        self.lib.g4a_free(handle)
        if self.budget is not None:
            self.budget.release_model()


def record_for(name: str, variant: str) -> dict[str, Any]:
    """The build record (.json beside the .so), or an error that says how to build it."""
    so = cache.library_path(name, variant)
    if not so.exists():
        raise BackendError(f"backend {name}/{variant} is not built ({so} does not exist); "
                           f"build it with: {build_command(name, variant)}")
    data = cache.read_record(name, variant)
    data.setdefault("path", str(so))
    return data


def open_backend(name: str, variant: str, *, path: Path | None = None) -> Backend:
    """dlopen a backend once per process (thread-safe); refuse a library of another ABI version.

    Callers must have checked that this CPU can run the variant (see variants.py): an illegal
    instruction cannot be caught.
    """
    so = Path(path) if path else cache.library_path(name, variant)
    key = str(so)
    with _lock:
        if key in _open:
            return _open[key]
        record = record_for(name, variant) if path is None else {"path": key}
        if record.get("gpu") == "cuda":
            from .cuda import preload_cuda_runtime

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
        spec = load_manifest().get(name)
        table = spec.ggml_contexts if spec is not None else None
        b = Backend(name=name, variant=variant, path=so, record=record, lib=lib,
                    budget=ContextBudget(table) if table is not None else None)
        _open[key] = b
        return b
