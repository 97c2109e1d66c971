"""Hostile files: what took an engine down is refused with a reason, before any native code runs.

Three parts: llama.cpp's handcrafted GGUF kinds (``tests/test-gguf.cpp``) against our reader; the
hostile matrix (:data:`hostile.FAMILIES`): every family of tiny models with one field made hostile, on
every era with a rule for its container, checked against the catalog and then loaded in child
processes (``load()`` + one ``evaluate`` under a time and address-space limit: an era that loads a file
must evaluate it without a signal, one that refuses must refuse before native code); and files that
only some eras read (the dbrx-style vocabulary with a key stated twice).  ``tools/fuzz_reader.py``
(the reader) and ``tools/fuzz_native.py`` (mutated headers loaded in limited children) run larger
randomized searches.
"""
from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys

import pytest
from conftest import backend_built
from gguf_handcrafted import EXPECTED, KINDS, handcrafted
from hostile import (
    ENGINE_REFUSES,
    FAMILIES,
    GGUF_ERAS,
    LOADS,
    READER_REFUSES,
    dbrx_vocab,
    gguf,
    reading_eras,
    run_children,
)

from gpt4all_loader import probe
from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.engines.manifest import load_manifest
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
    """Where ggml's gguf reader (2026) refuses a file, so do we: the reader raises FormatError where no
    era reads past it, records an anomaly that the 2026-10 era refuses (a key twice, an empty key, tensor
    data out of order: older eras read those), or the facts say why no backend loads it (not a GGUF,
    truncated, an unknown tensor type).  Where ggml reads it, our reader does too (these files have no
    architecture, so no backend loads them as models)."""
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
            # also wants the last tensor's padding): a missing tensor byte is the reason every era gives
            assert not f.truncated or all(v.reasons[0].startswith("file is truncated") for v in verdicts(f)), \
                (kind, seed, [v.reasons for v in verdicts(f)])
        elif EXPECTED[kind] == "refuse" and f.anomalies and not f.truncated:
            # what only some eras refuse is read and recorded; the era of this ggml (2026-10) refuses it
            # for that reason, whatever else it finds
            reasons = {v.backend: v for v in verdicts(f)}["gguf-2026-10"].reasons
            assert any(r.startswith(a.detail) for a in f.anomalies for r in reasons), (kind, seed, reasons)
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


# -- the hostile matrix: every family x every era with a rule for its container -------------------------
def _pairs() -> list[tuple[str, str]]:
    return [(name, era) for name, (_, expected) in FAMILIES.items() for era in expected]


MATRIX = _pairs()


@pytest.fixture(scope="module")
def matrix_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return {name: write(folder / f"{name}.bin") for name, (write, _) in FAMILIES.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_names_every_reading_era(name, matrix_files):
    """The table states a verdict for exactly the eras that read the file's container and architecture:
    an era added to the manifest, or one left out of a row, shows up here."""
    f = read_facts(matrix_files[name])
    assert sorted(FAMILIES[name][1]) == sorted(reading_eras(f, load_manifest()))


@pytest.mark.parametrize("name,era", MATRIX, ids=[f"{n}@{e}" for n, e in MATRIX])
def test_matrix_verdict(name, era, matrix_files):
    """The catalog's verdict for the era is the table's, and the probe shows the same reasons."""
    expected = FAMILIES[name][1][era]
    f = read_facts(matrix_files[name])
    v = {v.backend: v for v in verdicts(f)}[era]
    if expected in (LOADS, ENGINE_REFUSES):
        assert v.loadable, (name, era, v.reasons)
    else:
        assert not v.loadable and any(expected in r for r in v.reasons), (name, era, v.reasons)
    assert probe(matrix_files[name]).reasons[era] == v.reasons


def test_memory_estimates_of_every_hostile_file_stay_small(matrix_files):
    """The estimate that probe() gives every file is arithmetic on the header: a hostile n_layer of
    2**31 - 1 once made a list that long (17 GB).  Run in a child held to 1 GiB of address space, so that a
    regression fails this test instead of the machine."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from gpt4all_loader.formats.sniff import read_facts\n"
        "from gpt4all_loader.memory import estimate\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        facts = read_facts(path)\n"
        "    except ValueError:\n"
        "        continue\n"
        "    for layers in (0, 5, 2**31 - 1):\n"
        "        estimate(facts, gpu_layers=layers)\n"
        "print('ok', len(sys.argv) - 1)\n")
    paths = [str(p) for p in matrix_files.values()]
    cp = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0 and cp.stdout.startswith("ok"), cp.stderr[-2000:]


@pytest.fixture(scope="module")
def matrix_runs(matrix_files):
    """Every (family, built era) pair loaded in children, several files per child (one child per era)."""

    jobs = [(matrix_files[n], e) for n, e in MATRIX if backend_built(e)]
    return run_children(jobs)


@pytest.mark.parametrize("name,era", MATRIX, ids=[f"{n}@{e}" for n, e in MATRIX])
def test_matrix_in_child(name, era, matrix_files, matrix_runs):
    """Forced onto the era, the file loads and evaluates (the era reads it), the engine's loader refuses it
    with an error, or it is refused with the table's reason before native code; never a signal, a time-out
    or a child that dies."""
    if not backend_built(era):
        pytest.skip(f"backend {era}/cpu is not built")
    r = matrix_runs[(str(matrix_files[name]), era)]
    assert "signal" not in r, f"{name} on {era}: killed by {signal.Signals(r['signal']).name}: {r['stderr']}"
    assert not r.get("timeout") and "rc" not in r, r
    expected = FAMILIES[name][1][era]
    if expected == LOADS:
        assert r["ok"] is True and r["n_prompt_tokens"], r
        assert r["token_evaluated"] or read_facts(matrix_files[name]).vocab_only, r
    elif expected == ENGINE_REFUSES:
        assert r["ok"] is False and r["error"].startswith("BackendError: "), r
    else:
        assert r["ok"] is False and r["error"].startswith("UnsupportedModelError: "), r
        assert expected in r["error"]


@pytest.mark.parametrize("name", sorted(READER_REFUSES))
def test_reader_refuses(name, tmp_path):
    """Files whose structure the reader cannot follow (a vocabulary that runs into the tensor table, a
    negative header number, unpadded Falcon data): FormatError naming the file, from the reader and from
    load(), before any era is asked."""
    write, expected = READER_REFUSES[name]
    p = write(tmp_path / f"{name}.bin")
    with pytest.raises(FormatError, match=re.escape(expected)) as e:
        read_facts(p)
    assert str(p) in str(e.value)
    from gpt4all_loader import load

    with pytest.raises(FormatError, match=re.escape(str(p))):
        load(p)


def test_load_raises_with_the_reason(tmp_path):
    p = FAMILIES["gguf-rms-eps-negative"][0](tmp_path / "eps.gguf")
    with pytest.raises(UnsupportedModelError, match="finite positive"):
        from gpt4all_loader import load

        load(p)


# -- read by some eras only: a published vocabulary with a key stated twice ----------------------------------
def test_dbrx_vocab_identified_and_read_by_the_era_that_reads_it(tmp_path):
    """llama.cpp's models/ggml-vocab-dbrx.gguf (2024) states general.file_type twice: ggml of 2024 reads it
    (keeping the first value), the 2026 reader refuses it.  The probe says what it is and both verdicts."""
    p = dbrx_vocab(tmp_path / "ggml-vocab-dbrx.gguf")
    rep = probe(p)
    assert rep.error is None and rep.format == "gguf" and rep.format_version == 3
    assert rep.architecture == "dbrx" and rep.vocab_only and rep.kind == "vocab-only" and rep.n_tensors == 0
    assert rep.anomalies == [{"kind": "duplicate-key", "detail": "duplicate key 'general.file_type' at kv 14"}]
    assert rep.reasons["gguf-2026-10"] == ["duplicate key 'general.file_type' at kv 14: llama.cpp 2026-10 refuses "
                                           "a key stated twice (gguf_init_from_file)"]
    assert rep.loadable and rep.backend == "gguf-2024-09" and rep.reasons["gguf-2024-09"] == []
    from gpt4all_loader.cli.probe import Style, render

    shown = render(rep, Style(False))
    assert "anomaly       duplicate key 'general.file_type' at kv 14 (refused by gguf-2026-10)" in shown
    assert "LOADABLE by gguf-2024-09" in shown
    if not backend_built("gguf-2024-09"):
        pytest.skip("backend gguf-2024-09/cpu is not built")
    code = ("import json, sys\nfrom gpt4all_loader import load\nm = load(sys.argv[1], vocab_only=True)\n"
            "ids = m.tokenize('Hello world')\n"
            "print(json.dumps([m.info.backend, [m.token_bytes(i).decode() for i in ids]]))")
    cp = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert json.loads(cp.stdout.splitlines()[-1]) == ["gguf-2024-09", ["Hello", " world"]]


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
