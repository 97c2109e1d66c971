"""The CPU gate: the decodes of several processes (a server's workers) hold one of N lock files each, so at
most N run at once; a process without the gate decodes freely."""
from __future__ import annotations

import os
import subprocess
import sys

from gpt4all_loader.engines import cpu_gate

CHILD = r"""
import os, sys, time
from gpt4all_loader.engines import cpu_gate
log = sys.argv[1]
for _ in range(5):
    with cpu_gate.decoding():
        with open(log, "a") as f:
            f.write(f"in {os.getpid()}\n")
        time.sleep(0.02)
        with open(log, "a") as f:
            f.write(f"out {os.getpid()}\n")
"""


def _most_inside(log: str) -> int:
    inside = most = 0
    for line in open(log).read().split("\n"):
        if line.startswith("in "):
            inside += 1
            most = max(most, inside)
        elif line.startswith("out "):
            inside -= 1
    return most


def _run(tmp_path, slots: int | None) -> int:
    env = dict(os.environ)
    env.pop(cpu_gate.ENV, None)
    if slots is not None:
        env[cpu_gate.ENV] = cpu_gate.create(slots)
    log = str(tmp_path / f"log{slots}")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, log], env=env) for _ in range(4)]
    for p in procs:
        assert p.wait(60) == 0
    return _most_inside(log)


def test_one_slot_lets_one_decode_run(tmp_path):
    assert _run(tmp_path, 1) == 1


def test_two_slots_never_let_three_run(tmp_path):
    assert _run(tmp_path, 2) <= 2


def test_without_the_gate_nothing_waits(tmp_path, monkeypatch):
    monkeypatch.delenv(cpu_gate.ENV, raising=False)
    monkeypatch.setattr(cpu_gate, "_fds", None)
    with cpu_gate.decoding():
        pass
    assert cpu_gate._fds == []
