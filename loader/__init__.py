"""gpt4all_loader: open any llama.cpp-family model file and run it on the pinned engine that reads it.

Public entry points:
    probe(path)  -> ProbeReport   what a file is and which backend loads it (never raises for bad files)
    load(path)   -> Model         load it on the chosen backend and variant
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, overload

from .errors import (
    BackendError,
    BuildError,
    ChatTemplateError,
    ConstraintError,
    ContextLengthError,
    DeviceError,
    FormatError,
    ModelClosedError,
    ToolSpecError,
    UnsupportedModelError,
)

# imported eagerly (pure Python, no native code); the module is ``probing``, so that
# ``gpt4all_loader.probe`` is the function and nothing else
from .probing import ProbeReport, probe

__all__ = ["probe", "ProbeReport", "load", "read_facts", "FormatError", "UnsupportedModelError", "BackendError",
           "BuildError", "ChatTemplateError", "ConstraintError", "ContextLengthError", "DeviceError",
           "ModelClosedError", "ToolSpecError"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .formats.facts import FileFacts
    from .model import Model
    from .published import TableArg
    from .worker import IsolatedModel


# load() and read_facts() import their modules when first called: importing the package stays as cheap
# as the probe (model.py and the readers are not loaded by ``import gpt4all_loader``).  load() is where
# the in-process Model and the worker's IsolatedModel meet, so that model.py never imports worker.py.
@overload
def load(path: str | os.PathLike[str], *, device: str = ..., n_ctx: int | None = ...,
         n_threads: int | None = ..., n_gpu_layers: int | None = ..., backend: str | None = ...,
         embeddings: bool = ..., seed: int = ..., vocab_only: bool | None = ..., isolated: Literal[False] = ...,
         worker_timeout: float | None = ..., flash_attn: str | bool = ..., chat_template: str | None = ...,
         published_table: TableArg = ..., parallel: int = ...) -> Model: ...


@overload
def load(path: str | os.PathLike[str], *, device: str = ..., n_ctx: int | None = ...,
         n_threads: int | None = ..., n_gpu_layers: int | None = ..., backend: str | None = ...,
         embeddings: bool = ..., seed: int = ..., vocab_only: bool | None = ..., isolated: Literal[True],
         worker_timeout: float | None = ..., flash_attn: str | bool = ..., chat_template: str | None = ...,
         published_table: TableArg = ..., parallel: int = ...) -> IsolatedModel: ...


@overload
def load(path: str | os.PathLike[str], *, device: str = ..., n_ctx: int | None = ...,
         n_threads: int | None = ..., n_gpu_layers: int | None = ..., backend: str | None = ...,
         embeddings: bool = ..., seed: int = ..., vocab_only: bool | None = ..., isolated: bool = ...,
         worker_timeout: float | None = ..., flash_attn: str | bool = ..., chat_template: str | None = ...,
         published_table: TableArg = ..., parallel: int = ...) -> Model | IsolatedModel: ...


def load(path: str | os.PathLike[str], *, device: str = "auto", n_ctx: int | None = None,
         n_threads: int | None = None, n_gpu_layers: int | None = None, backend: str | None = None,
         embeddings: bool = False, seed: int = 0, vocab_only: bool | None = None, isolated: bool = False,
         worker_timeout: float | None = None, flash_attn: str | bool = "auto", chat_template: str | None = None,
         published_table: TableArg = None, parallel: int = 1) -> Model | IsolatedModel:
    """Load a model file on the backend that reads it; the parameters are :func:`gpt4all_loader.model.load`'s.

    isolated: run the engine in a worker process (see :class:`~gpt4all_loader.worker.IsolatedModel`: a
    native crash or a hang longer than ``worker_timeout`` seconds becomes a BackendError, after which the
    model is closed: later calls raise ModelClosedError naming the cause).
    """
    kwargs: dict[str, Any] = dict(device=device, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                  backend=backend, embeddings=embeddings, seed=seed, vocab_only=vocab_only,
                                  flash_attn=flash_attn, chat_template=chat_template, published_table=published_table,
                                  parallel=parallel)
    if isolated:
        from .worker import DEFAULT_TIMEOUT, IsolatedModel

        return IsolatedModel(os.fspath(path), kwargs, DEFAULT_TIMEOUT if worker_timeout is None else worker_timeout)
    from .model import load as load_here

    return load_here(path, **kwargs)


def read_facts(path: str | os.PathLike[str], *, with_kv: bool = False, with_vocab: bool = False) -> FileFacts:
    """What a file is, read from its header: :func:`gpt4all_loader.formats.sniff.read_facts`."""
    from .formats.sniff import read_facts as _read

    return _read(path, with_kv=with_kv, with_vocab=with_vocab)
