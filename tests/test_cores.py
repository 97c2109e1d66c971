"""Threads that fit the machine: a decode gets as many threads as the rest of the machine leaves cores free
(``engines.cores``), through ``g4a_set_threads`` on every era, and the logits do not depend on the count."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import LLAMA_FORMATS, PROBE_TOKENS, backend_built
import gpt4all_loader as g
from gpt4all_loader.engines import cores
from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.formats.sniff import read_facts


@pytest.fixture(autouse=True)
def fresh_window(monkeypatch):
    monkeypatch.delenv(cores.ENV, raising=False)
    cores.reset()
    yield
    cores.reset()


def every_era(tiny_llama, tmp_path_factory) -> dict[str, str]:
    """One tiny F32 file per built backend that reads one of the LLaMA containers or GPT-J (our 2023 code):
    {backend: path}."""
    from gpt4all_loader.formats.writer import TinyGPTJ, write_gptj

    gptj = tmp_path_factory.mktemp("cores") / "tiny-gptj.bin"
    write_gptj(gptj, TinyGPTJ(seed=0))
    out: dict[str, str] = {}
    for path in [*(tiny_llama[(fmt, version, "f32")] for fmt, version in LLAMA_FORMATS), gptj]:
        for v in verdicts(read_facts(path)):
            if v.loadable and v.backend not in out and backend_built(v.backend):
                out[v.backend] = str(path)
    return out


def test_set_threads_never_exceeds_the_loaded_count_on_every_era(tiny_llama, tmp_path_factory):
    eras = every_era(tiny_llama, tmp_path_factory)
    assert len(eras) >= 3
    seen = []
    for backend, path in eras.items():
        with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=2) as m:
            lib, h = m._lib, m._h()
            assert lib.g4a_set_threads(h, 0) == 2, backend
            assert lib.g4a_set_threads(h, 16) == 2, backend
            assert lib.g4a_set_threads(h, 1) == 1, backend
            assert lib.g4a_set_threads(h, -1) == 2, backend
        seen.append(backend)
        assert lib.g4a_set_threads(m._ffi.NULL, 1) == -1
        assert "no model" in m._backend.last_error()
    assert any(b.startswith("ggml-gpt4all") for b in seen) and any(b.startswith("llama-2023") for b in seen)


def test_the_logits_do_not_depend_on_the_thread_count(tiny_llama, tmp_path_factory, monkeypatch):
    for backend, path in every_era(tiny_llama, tmp_path_factory).items():
        got = []
        for threads in (0, 1):   # 0: as loaded (2)
            monkeypatch.setattr(cores, "decode_threads", lambda t=threads: t)
            with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=2) as m:
                m.evaluate(PROBE_TOKENS)
                got.append((m.logits(), m.generate(PROBE_TOKENS, max_tokens=6, temperature=0)))
        assert got[0] == got[1], backend


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="threads are counted in /proc")
def test_a_model_keeps_its_decode_threads(tiny_llama, tmp_path_factory, monkeypatch):
    """Eras with ggml's thread pool (``G4A_THREADPOOL``) keep n_threads - 1 helper threads from load to close.
    Without it the engine started and joined its helpers at every graph: a new thread per generated token,
    which beside a busy server waits for a core each time (bench/RESULTS.md)."""
    from gpt4all_loader.engines.manifest import load_manifest

    pooled = {name for name, b in load_manifest().items() if "G4A_THREADPOOL" in b.api_defines}
    assert {"gguf-2024-09", "gguf-2026-10"} <= pooled
    eras = {b: p for b, p in every_era(tiny_llama, tmp_path_factory).items() if b in pooled}
    assert eras
    for backend, path in eras.items():
        before = _threads()
        with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=3) as m:
            helpers = _threads() - before
            assert len(helpers) == 2, backend
            for _ in m.generate_tokens(PROBE_TOKENS, max_tokens=8, temperature=0):
                assert _threads() - before == helpers, backend
            with monkeypatch.context() as mp:   # decodes on fewer threads for a while: the pool stays
                mp.setattr(cores, "decode_threads", lambda: 1)
                m.generate(PROBE_TOKENS, max_tokens=4, temperature=0)
            assert _threads() - before == helpers, backend
        assert _threads() == before, backend   # closed with the model


def test_the_rule_leaves_the_other_programs_their_cores():
    mine = len(os.sched_getaffinity(0))
    for _ in range(cores.WINDOW):
        cores.record(1)                          # only the reader ran
    assert cores.decode_threads() == mine
    cores.record(1 + mine)                       # a passing burst is outweighed by the quiet readings
    assert cores.decode_threads() == mine
    for _ in range(cores.WINDOW):
        cores.record(1 + mine)                   # as many busy programs as cores: one thread
    assert cores.decode_threads() == 1
    for _ in range(cores.WINDOW):
        cores.record(1 + 100 * mine)             # never fewer than one
    assert cores.decode_threads() == 1
    cores._last -= cores.STALE_S + 1            # a while later: those readings are dropped, the load read anew
    cores.decode_threads()
    assert len(cores._seen) == 1


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="the runnable count is read from /proc/loadavg")
def test_busy_loops_on_every_core_are_seen(monkeypatch):
    mine = len(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(mine)]
    try:
        time.sleep(0.3)
        for _ in range(cores.WINDOW):
            cores.note_decode_end()
            time.sleep(0.01)
        assert cores.decode_threads() == 1
        monkeypatch.setenv(cores.ENV, "0")
        cores.reset()
        assert cores.decode_threads() == 0       # fitting off: every decode as loaded
    finally:
        for h in hogs:
            h.kill()
            h.wait()
