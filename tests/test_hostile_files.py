"""Hostile files: what took an engine down is refused with a reason, before any native code runs.

Three parts: llama.cpp's handcrafted GGUF kinds (``tests/test-gguf.cpp``) against our reader; tiny
models with one field made hostile (:mod:`hostile`) against the catalog, era by era; and, for a
representative set of those, ``load()`` + one ``evaluate`` in a child process with a time and
address-space limit, asserting no signal and no time-out.  ``tools/fuzz_reader.py`` (the reader) and
``tools/fuzz_native.py`` (mutated headers loaded in limited children) run larger randomized searches.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys

import pytest
from conftest import backend_built
from gguf_handcrafted import EXPECTED, KINDS, handcrafted
from hostile import CASES, CHILD_CASES, GGUF_ERAS, GPTJ_MPT_CASES, LIBRARY_ERRORS, gguf, legacy, run_child

from gpt4all_loader import probe
from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.errors import FormatError, UnsupportedModelError
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import write_gguf

#: seeds per handcrafted kind; G4A_HOSTILE_SEEDS=200 for the long run of the issue
SEEDS = range(int(os.environ.get("G4A_HOSTILE_SEEDS", "4")))


# -- llama.cpp's handcrafted GGUF files ----------------------------------------------------------------
def _refused(facts) -> bool:
    return not any(v.loadable for v in verdicts(facts))


@pytest.mark.parametrize("kind", KINDS)
def test_handcrafted_gguf_agrees_with_ggml(kind, tmp_path):
    """Where ggml's gguf reader refuses a file, so do we: the reader raises FormatError, or the facts
    say why no backend loads it (not a GGUF, truncated, an unknown tensor type).  Where ggml reads it,
    our reader does too (these files have no architecture, so no backend loads them as models)."""
    for seed in SEEDS:
        p = tmp_path / f"{kind}-{seed}.gguf"
        p.write_bytes(handcrafted(kind, seed))
        try:
            f = read_facts(p)
        except FormatError as e:
            assert EXPECTED[kind] == "refuse", f"{kind} seed {seed}: ggml reads it, we raise {e}"
            assert str(p) in str(e)
            continue
        assert _refused(f), (kind, seed)
        if kind == "HEADER_BAD_VERSION_1":
            # deliberate difference: GGUF v1 (32-bit counts, Aug-Oct 2023) is read on purpose, for the
            # gguf-2023-11 backend that still loads it; ggml 2026 refuses every v1 file
            assert f.format == "gguf" and f.format_version == 1
        elif kind == "DATA_NOT_ENOUGH_DATA":
            # llama.cpp's loader checks each tensor's own bytes (ggml, reading the data section,
            # also wants the last tensor's padding): refused whenever a tensor's byte is missing
            assert f.truncated or f.data_offset + f.data_bytes_expected <= f.size
        elif EXPECTED[kind] == "refuse":
            assert f.kind == "not-a-model" or f.truncated or any(t.startswith("TYPE_") for t in f.tensor_types), \
                f"{kind} seed {seed}: ggml refuses it, we read {f.description}"


def test_unknown_tensor_type_refused_with_reason(tmp_path):
    """ggml refuses a type id it does not know; we read the file (to describe it) and refuse it."""
    p = gguf(tmp_path / "t.gguf")
    b = bytearray(p.read_bytes())
    name = b"blk.1.ffn_norm.weight"  # the last tensor: the data of the others keeps its place
    struct.pack_into("<I", b, b.index(name) + len(name) + 4 + 8, 43)
    p.write_bytes(b)
    f = read_facts(p)
    assert "TYPE_43" in f.tensor_types and _refused(f)
    assert all(any("id 43 is newer than every pinned llama.cpp" in r for r in v.reasons) for v in verdicts(f)
               if v.backend in GGUF_ERAS)


# -- hostile tiny models, era by era ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_refused_with_reason(name, tmp_path):
    write, expected = CASES[name]
    p = write(tmp_path / f"{name}.bin")
    f = read_facts(p)
    by = {v.backend: v for v in verdicts(f)}
    for backend, needle in expected.items():
        v = by[backend]
        assert not v.loadable and any(needle in r for r in v.reasons), (backend, v.reasons)
    rep = probe(p)
    if not rep.loadable:  # the probe says so with the same reasons
        assert all(rep.reasons[b] == by[b].reasons for b in expected)
    else:  # another era reads it safely: the reasons of the refusing ones are still shown
        assert rep.backend not in expected


def test_baselines_are_loadable(tmp_path):
    """The hostile cases differ from these loadable files by one field each."""
    f = read_facts(gguf(tmp_path / "ok.gguf"))
    assert {v.backend for v in verdicts(f) if v.loadable} == set(GGUF_ERAS)
    f = read_facts(legacy(tmp_path / "ok.bin", "ggjt", 1))
    assert {"llama-2023-04", "llama-2023-05", "llama-2023-08"} <= {v.backend for v in verdicts(f) if v.loadable}


def test_load_raises_with_the_reason(tmp_path):
    p = CASES["gguf-rms-eps-negative"][0](tmp_path / "eps.gguf")
    with pytest.raises(UnsupportedModelError, match="finite positive"):
        from gpt4all_loader import load

        load(p)


# -- non-regular files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["fifo", "/dev/zero", "/dev/urandom", "/proc/self/cmdline"])
def test_special_files_refused_without_blocking(path, tmp_path):
    if path == "fifo":
        path = str(tmp_path / "model.gguf")
        os.mkfifo(path)
    elif not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    rep = probe(path)
    assert rep.error_kind == "unreadable" and "not" in rep.error and rep.loadable is not True
    with pytest.raises(OSError, match="not a regular file|does not report"):
        read_facts(path)
    from gpt4all_loader import load

    with pytest.raises(OSError, match=path):
        load(path)
    cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.probe", path], capture_output=True, text=True,
                        timeout=60)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 2 and ("not a regular file" in out or "does not report" in out), out


@pytest.mark.parametrize("vtype", [10, 5, 0])  # u64, i32, u8: llama.cpp aborts on anything but u32
def test_alignment_of_another_type_is_a_format_error(vtype, tmp_path):
    p = write_gguf(tmp_path / "a.gguf", [("general.architecture", 8, "llama"), ("general.alignment", vtype, 32)],
                   [("token_embd.weight", 0, [8, 4])])
    with pytest.raises(FormatError, match="general.alignment.*UINT32"):
        read_facts(p)


# -- the native step, in a child ----------------------------------------------------------------------
@pytest.mark.parametrize("name,backend", CHILD_CASES)
def test_hostile_load_in_child(name, backend, tmp_path):
    """Forced onto the era it crashed, the file now gets a library error naming the reason."""
    if not backend_built(backend):
        pytest.skip(f"backend {backend}/cpu is not built")
    p = CASES[name][0](tmp_path / f"{name}.bin")
    r = run_child(p, backend)
    assert "signal" not in r, f"{name} on {backend}: killed by {signal.Signals(r['signal']).name}: {r['stderr']}"
    assert not r.get("timeout") and "rc" not in r, r
    assert r["ok"] is False and r["error"].startswith("UnsupportedModelError: ")
    assert CASES[name][1][backend] in r["error"]


@pytest.mark.parametrize("backend,fmt,version", [("llama-2023-04", "ggjt", 1), ("llama-2023-08", "ggjt", 3),
                                                 ("gguf-2023-11", "gguf", 3), ("gguf-2026-10", "gguf", 3)])
def test_baseline_load_in_child(backend, fmt, version, tmp_path):
    """The same tiny files without the hostile field load and evaluate under the same limits."""
    if not backend_built(backend):
        pytest.skip(f"backend {backend}/cpu is not built")
    p = gguf(tmp_path / "ok.gguf") if fmt == "gguf" else legacy(tmp_path / "ok.bin", fmt, version)
    r = run_child(p, backend)
    assert r.get("ok") is True and r["token_evaluated"], r


@pytest.mark.parametrize("name", sorted(GPTJ_MPT_CASES))
@pytest.mark.parametrize("backend", ["ggml-gptj-mpt-2023-05", "ggml-gptj-mpt-2023-08"])
def test_gptj_mpt_hostile_header_in_child(name, backend, tmp_path):
    """The GPT-J/MPT loaders check their headers themselves: a load or a library error, never a signal."""
    if not backend_built(backend):
        pytest.skip(f"backend {backend}/cpu is not built")
    p = GPTJ_MPT_CASES[name](tmp_path / f"{name}.bin")
    try:
        loadable = any(v.loadable for v in verdicts(read_facts(p)) if v.backend == backend)
    except FormatError:
        return  # refused by the reader: nothing reaches native code
    r = run_child(p, backend if loadable else None)
    assert "signal" not in r and not r.get("timeout") and "rc" not in r, r
    assert r["ok"] or r["error"].startswith(LIBRARY_ERRORS), r


# -- file names --------------------------------------------------------------------------------------------
def test_probe_cli_reports_non_utf8_names(tmp_path):
    """A name that is not UTF-8 is shown escaped, and every file of the directory is reported."""
    bad = os.fsencode(tmp_path) + b"/caf\xe9.gguf"
    with open(bad, "wb") as f:
        f.write(gguf(tmp_path / "good.gguf").read_bytes())
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.probe", str(tmp_path)],
                        capture_output=True, timeout=120, env=env)
    out = cp.stdout.decode("utf-8")
    assert cp.returncode == 0 and "internal error" not in cp.stderr.decode(), cp.stderr
    assert "caf\\xe9.gguf" in out and "good.gguf" in out and out.count("LOADABLE") == 2
