"""gpt4all-build as a newcomer meets it: progress while compiling, and a missing backend named with
the one command that builds it (load(), probe, gpt4all-probe)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import gpt4all_loader as g
from gpt4all_loader.cli import probe as probe_cli
from gpt4all_loader.engines import cache
from gpt4all_loader.engines.build import Progress, _data_members, inputs_key
from gpt4all_loader.engines.manifest import build_command, load_manifest, pinned
from gpt4all_loader.errors import BackendError, BuildError

ROOT = Path(__file__).resolve().parent.parent
NINJA = ["[1/4] Building C object CMakeFiles/ggml.dir/ggml.c.o\n", "warning: something\n",
         "[2/4] Building CXX object CMakeFiles/llama.dir/llama.cpp.o\n",
         "[3/4] Linking C static library libggml.a\n", "[4/4] Linking CXX static library libllama.a\n"]


class Clock:
    def __init__(self, times: list[float]):
        self.times = iter(times)

    def __call__(self) -> float:
        return next(self.times)


def test_progress_in_a_log_is_a_line_every_few_seconds():
    out = io.StringIO()
    p = Progress("x/cpu", out, tty=False, interval=5.0, clock=Clock([0.0, 1.0, 6.0, 6.5]))
    for line in NINJA:
        p.feed(line)
    p.close()
    lines = out.getvalue().splitlines()
    # the first step, the step 6 s later, not the one 0.5 s after it unless it is the last
    assert [line.split("] ", 1)[1] for line in lines] == [
        "x/cpu: compiling [1/4] 25%", "x/cpu: compiling [3/4] 75%", "x/cpu: compiling [4/4] 100%"]


def test_progress_on_a_terminal_rewrites_one_line():
    out = io.StringIO()
    p = Progress("x/cpu", out, tty=True, clock=Clock([0.0, 0.1, 0.2, 0.3]))
    for line in NINJA:
        p.feed(line)
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("[4/4] 100%\n") and text.count("\n") == 1


def test_extraction_without_tarfile_filters_refuses_what_the_data_filter_refuses(tmp_path):
    """Pythons before 3.11.4 have no filter="data": the same refusals are made by hand."""
    def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
        m = tarfile.TarInfo(name)
        m.type, m.linkname, m.mode = kind, link, mode
        return m

    good = [member("pkg-1.0/vendor/llama.cpp/ggml.c", mode=0o6777), member("pkg-1.0/vendor", tarfile.DIRTYPE),
            member("pkg-1.0/a/link", tarfile.SYMTYPE, "../b"), member("pkg-1.0/hard", tarfile.LNKTYPE, "pkg-1.0/b")]
    assert _data_members(good, tmp_path, tmp_path / "x.tar.gz") == good and good[0].mode == 0o755
    for bad in (member("../evil"), member("/etc/evil"), member("pkg-1.0/../../evil"),
                member("pkg-1.0/link", tarfile.SYMTYPE, "../../etc"), member("pkg-1.0/link", tarfile.SYMTYPE, "/etc"),
                member("pkg-1.0/hard", tarfile.LNKTYPE, "../evil"), member("pkg-1.0/dev", tarfile.CHRTYPE)):
        with pytest.raises(BuildError, match="refusing to extract"):
            _data_members([bad], tmp_path, tmp_path / "x.tar.gz")


def test_pins_are_exact():
    assert pinned("llama-cpp-python==0.1.39") == ("llama-cpp-python", "0.1.39")
    for bad in ("llama-cpp-python>=0.1", "llama-cpp-python", "x==1.*", "x[extra]==1", "not a requirement"):
        with pytest.raises(BuildError, match="pinned requirement|not a requirement"):
            pinned(bad)


def test_a_backend_that_is_not_built_is_named_with_its_build_command(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "empty-cache"))
    path = tiny_llama[("gguf", 3, "f32")]
    cmd = build_command("gguf-2026-10")
    assert cmd == "gpt4all-build --only gguf-2026-10"
    with pytest.raises(BackendError, match=f"not built here; build it with: {cmd}$"):
        g.load(path)
    rep = g.probe(path)
    assert rep.loadable and not rep.ready and rep.suggestion == f"build it with: {cmd}"
    assert probe_cli.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "LOADABLE by gguf-2026-10: not built here" in out and cmd in out


@pytest.mark.slow
def test_build_from_the_checkout_shows_progress_and_records_its_key(tmp_path):
    """A real (small) build into a private cache: the wrapper runs, the compile reports [n/N], the
    record holds the same key as the package computes; a second run is a no-op."""
    spec = load_manifest()["llama-2023-04"]
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    for cached in cache.sdist_dir().glob(f"*{spec.version}*"):  # spare the download when it is at hand
        shutil.copy(cached, sdists)
    env = {**os.environ, cache.ENV_VAR: str(tmp_path)}
    cmd = [sys.executable, str(ROOT / "build_backends.py"), "--only", spec.name, "--variant", "cpu"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "1 of 1 libraries to build: llama-2023-04/cpu" in first.stdout and "cold build" in first.stdout
    assert "llama-2023-04/cpu: compiling [" in first.stdout and "100%" in first.stdout
    record = json.loads((tmp_path / "lib" / "libg4a-llama-2023-04-cpu.json").read_text())
    assert record["inputs"] == inputs_key(spec, "cpu")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "cached" in again.stdout and "to build" not in again.stdout
