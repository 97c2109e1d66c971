"""Where downloaded sdists, build trees and built backend libraries live.

One cache directory (platformdirs' user cache, or ``$GPT4ALL_LOADER_CACHE``) so that a fresh clone,
CI and the library all find the same builds, and a rebuild of an unchanged backend is a no-op.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GPT4ALL_LOADER_CACHE"


def cache_root() -> Path:
    """The cache directory (not created here)."""
    override = os.environ.get(ENV_VAR)
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

