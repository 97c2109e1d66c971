"""One decode at a time per share of the cores, across every process that serves models.

Each engine's threads busy-wait for one another at every operation of a graph; when two processes
decode at once with more threads than there are cores, both slow down by large factors (a spinning
thread holds the core its partner needs).  A server that runs several model workers therefore lets
only ``cores // n_threads`` decodes run at the same moment: each evaluation holds one of that many
lock files (``flock``, released by the kernel if the process dies) for its duration.  Batching keeps
this cheap: one decode step serves every sequence of a model.

The gate is set up by the server (:func:`create`) and reaches its worker processes through the
environment variable :data:`ENV`; a process without it evaluates ungated.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from typing import Iterator

#: the folder of lock files, one per decode allowed at once
ENV = "GPT4ALL_LOADER_CPU_GATE"

_fds: list[int] | None = None
_setup = threading.Lock()


def create(n_slots: int) -> str:
    """A new gate of ``n_slots`` lock files; returns its folder (set it as :data:`ENV` for workers)."""
    folder = tempfile.mkdtemp(prefix="g4a-cpu-gate-")
    for i in range(max(1, n_slots)):
        with open(os.path.join(folder, f"slot{i}"), "wb"):
            pass
    return folder


def _open() -> list[int]:
    global _fds
    with _setup:
        if _fds is None:
            folder = os.environ.get(ENV, "")
            names = sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []
            _fds = [os.open(os.path.join(folder, n), os.O_RDONLY | os.O_CLOEXEC) for n in names if n.startswith("slot")]
        return _fds


@contextlib.contextmanager
def decoding() -> Iterator[None]:
    """Hold one decode slot (any free one; else wait for this process's own) while the body runs."""
    fds = _open()
    if not fds:
        yield
        return
    held = -1
    for fd in fds:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = fd
            break
        except BlockingIOError:
            continue
    if held < 0:
        held = fds[os.getpid() % len(fds)]
        fcntl.flock(held, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
