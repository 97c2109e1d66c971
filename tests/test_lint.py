"""The tree stays free of what pyflakes and pycodestyle call errors (unused imports and names, undefined
names, long lines, ...) and the package type-checks under mypy --strict: ruff and mypy, configured in
pyproject.toml, run as part of the test command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    pytest.importorskip("ruff", reason="ruff is in the test extra: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "loader", "tests", "bench", "tools",
                           "build_backends.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_strict_finds_nothing():
    """The package type-checks under mypy --strict ([tool.mypy] in pyproject.toml), so annotations stay true."""
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def _parameters(f):
    import inspect

    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


def test_the_package_level_functions_mirror_the_ones_they_call():
    """gpt4all_loader.load and read_facts spell out the parameters of the functions they import on first
    call (so that the package import stays cheap): the copies must not drift.  load() adds the choice of
    process (isolated, worker_timeout) to model.load's."""
    import gpt4all_loader as g
    from gpt4all_loader import model
    from gpt4all_loader.formats import sniff

    assert [p for p in _parameters(g.load) if p[0] not in ("isolated", "worker_timeout")] == \
        _parameters(model.load)
    assert _parameters(g.read_facts) == _parameters(sniff.read_facts)


def test_importing_the_package_loads_no_model_code():
    code = "import sys, gpt4all_loader; print(sorted(m for m in ('gpt4all_loader.model', 'cffi') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
