"""gpt4all_loader: open any llama.cpp-family model file and run it on the pinned engine that reads it.

Public entry points:
    probe(path)  -> ProbeReport   what a file is and which backend loads it (never raises for bad files)
    load(path)   -> Model         load it on the chosen backend and variant
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (BackendError, BuildError, DeviceError, FormatError, ModelClosedError,
                     UnsupportedModelError)

__all__ = ["probe", "load", "read_facts", "FormatError", "UnsupportedModelError", "BackendError",
           "BuildError", "DeviceError", "ModelClosedError"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model
    from .probe import ProbeReport


def probe(path: Any, **kwargs: Any) -> "ProbeReport":
    from .probe import probe as _probe

    return _probe(path, **kwargs)


def load(path: Any, **kwargs: Any) -> "Model":
    from .model import load as _load

    return _load(path, **kwargs)


def read_facts(path: Any, **kwargs: Any):
    from .reader import read_facts as _read

    return _read(path, **kwargs)
