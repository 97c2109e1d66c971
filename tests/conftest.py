"""Shared fixtures: which backends are built, and tiny models written once per session."""
from __future__ import annotations

import pytest

from gpt4all_loader.variants import built_variants


def backend_built(name: str, variant: str = "cpu") -> bool:
    return variant in built_variants().get(name, [])


def require_backend(name: str, variant: str = "cpu") -> None:
    """Skip (with the command that fixes it) when a backend variant is not built."""
    if not backend_built(name, variant):
        pytest.skip(f"backend {name}/{variant} is not built: python build_backends.py --only {name} --variant {variant}")
