"""Where downloaded sdists, build trees and built backend libraries live.

One cache directory (platformdirs' user cache, or ``$GPT4ALL_LOADER_CACHE``) so that a fresh clone,
CI and the library all find the same builds, and a rebuild of an unchanged backend is a no-op.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

ENV_VAR = "GPT4ALL_LOADER_CACHE"


def cache_root() -> Path:
    """The cache directory (not created here); follows ``$GPT4ALL_LOADER_CACHE`` when it changes."""
    return _root(os.environ.get(ENV_VAR) or None, os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"))


@functools.lru_cache(maxsize=8)
def _root(override: str | None, xdg: str | None, home: str | None) -> Path:
    """One lookup per environment: asked for every library path, it would otherwise resolve a path
    (or ask platformdirs) dozens of times per load."""
    if override:
        return Path(override).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_cache_dir("gpt4all-loader"))


def sdist_dir() -> Path:
    return cache_root() / "sdists"


def build_dir() -> Path:
    return cache_root() / "build"


def lib_dir() -> Path:
    """Built backend libraries, one ``libg4a-<backend>-<variant>.so`` plus a ``.json`` record each."""
    return cache_root() / "lib"


def files_dir() -> Path:
    """Real model files taken from registry packages (vocab files inside sdists, model wheels)."""
    return cache_root() / "files"



def library_path(backend: str, variant: str) -> Path:
    """The built library of one backend variant."""
    return lib_dir() / f"libg4a-{backend}-{variant}.so"


def record_path(backend: str, variant: str) -> Path:
    """The build record beside the library: how it was made (sdist, flags, CUDA architectures, time)."""
    return library_path(backend, variant).with_suffix(".json")


def read_record(backend: str, variant: str) -> dict[str, Any]:
    """The build record, or {} when it is missing or unreadable (a library without one still loads)."""
    try:
        data = json.loads(record_path(backend, variant).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
