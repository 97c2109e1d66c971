"""gpt4all_loader: open any llama.cpp-family model file and run it on the pinned engine that reads it.

Public entry points:
    probe(path)  -> ProbeReport   what a file is and which backend loads it (never raises for bad files)
    load(path)   -> Model         load it on the chosen backend and variant
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendError,
    BuildError,
    ChatTemplateError,
    DeviceError,
    FormatError,
    ModelClosedError,
    UnsupportedModelError,
)

# imported eagerly (pure Python, no native code): the function must shadow the submodule of the same name
from .probe import ProbeReport, probe

__all__ = ["probe", "ProbeReport", "load", "read_facts", "FormatError", "UnsupportedModelError", "BackendError",
           "BuildError", "ChatTemplateError", "DeviceError", "ModelClosedError"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model


def load(path: Any, **kwargs: Any) -> "Model":
    from .model import load as _load

    return _load(path, **kwargs)


def read_facts(path: Any, **kwargs: Any):
    from .formats.sniff import read_facts as _read

    return _read(path, **kwargs)
