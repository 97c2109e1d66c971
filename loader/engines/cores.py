"""How many threads a decode may use now: the model's own count while the cores are free, fewer while other
programs keep them busy.

An engine's threads wait for one another at every operation of a graph, so a decode runs at the pace of
its slowest thread, and a thread that finds no free core stalls the others.  Measured with
``bench/bench_busy.py`` (SmolLM2 Q4_1, 2026 engine, 2 cores): with one busy-loop beside it a 2-thread
decode falls from 125 to 24 tok/s while a 1-thread decode keeps 93; with two busy-loops, 2 threads give 49
and 1 thread 59.  So before each decode the engine gets as many threads as the rest of the machine leaves
cores free, never more than it was loaded with (``g4a_set_threads``).

The measure is the kernel's count of runnable tasks (the fourth field of ``/proc/loadavg``, a few µs to
read), taken right after each decode: this process's engine threads have ended then, and whoever consumes the
tokens (a server, its client) has had a whole decode to do its share; it is read while this process still
holds its decode slot (:mod:`.cpu_gate`), so a sibling worker waiting for a slot does not count as load. The
fewest seen over the last :data:`WINDOW` decodes is the load that stays (a compile, another model), not a
passing one; readings older than :data:`STALE_S` are dropped and the load is read once before the next
decode. The count is machine-wide; on a process held to some of the machine's cores it is scaled to
those.

Where the file is missing (not Linux), or with ``GPT4ALL_LOADER_FIT_THREADS=0``, decodes keep the threads they
were loaded with.

A server's own threads stand aside for the decodes (:func:`yield_to_decodes`): they run as ``SCHED_BATCH``,
which the kernel never lets preempt a running thread when they wake, so each token handed on (the worker's
reader thread, the event loop, the response) waits for a core that an engine thread leaves, instead of
stopping one engine thread mid-graph while the others wait for it at the next barrier.  Its workers go
back to the policy the server had (:func:`restore_decode_policy`).
"""
from __future__ import annotations

import collections
import os
import threading
import time

#: set to "0" to keep every decode at the thread count of its load
ENV = "GPT4ALL_LOADER_FIT_THREADS"
#: the scheduling policy a server had before :func:`yield_to_decodes`, for the workers it starts
POLICY_ENV = "GPT4ALL_LOADER_DECODE_POLICY"
#: decodes over which the smallest runnable count is taken: a load shows after two decodes, and a passing
#: task (a server handing on the last token) must be seen at the end of two decodes in a row to count
WINDOW = 2
#: seconds after which the readings say nothing of now (a model idle between requests): the next decode reads anew
STALE_S = 1.0
_LOADAVG = "/proc/loadavg"

_lock = threading.Lock()
_seen: collections.deque[int] = collections.deque(maxlen=WINDOW)
_last = 0.0   # monotonic time of the newest reading
_HAS_LOADAVG = os.path.exists(_LOADAVG)
_enabled: bool | None = None
_fd: int | None = None   # the file, kept open: a read from offset 0 is the kernel's count now (2 µs, not 13)


def enabled() -> bool:
    """Whether decodes are fitted: :data:`ENV` is read at the first decode of the process (it is asked twice
    per token) and again after :func:`reset`."""
    global _enabled
    if _enabled is None:
        _enabled = _HAS_LOADAVG and os.environ.get(ENV, "1") != "0"
    return _enabled


def _cores() -> tuple[int, float]:
    """The cores this process may run on, and their share of the machine's."""
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return mine, mine / max(mine, os.cpu_count() or mine)


_MINE, _SHARE = _cores()


def runnable() -> int | None:
    """Tasks the kernel has runnable right now, the caller included (None where it does not say)."""
    global _fd
    try:
        if _fd is None:
            _fd = os.open(_LOADAVG, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return int(os.pread(_fd, 256, 0).split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


def note_decode_end() -> None:
    """Record the load seen as a decode ends (call from the thread that ran it)."""
    if enabled():
        n = runnable()
        if n is not None:
            record(n)


def record(n_runnable: int) -> None:
    """Add one reading of the runnable count (this thread included) to the window."""
    global _last
    with _lock:
        _seen.append(n_runnable)
        _last = time.monotonic()


def decode_threads() -> int:
    """Threads for the next decode: the cores the rest of the machine leaves free (at least 1); 0, i.e. as
    loaded, when fitting is off or the machine does not say.  When the readings are stale, the load is read
    now, before the decode: a reading can only be too high by what passes at that moment, which costs one
    decode some threads, never a collapse."""
    if not enabled():
        return 0
    with _lock:
        stale = time.monotonic() - _last > STALE_S
        if stale:
            _seen.clear()
    if stale:
        n = runnable()
        if n is None:
            return 0
        record(n)
    with _lock:
        if not _seen:
            return 0
        others = min(_seen) - 1   # the thread that read it was running
    return max(1, _MINE - round(others * _SHARE))


def yield_to_decodes() -> bool:
    """Make every thread of this process, and every thread and process it starts later, ``SCHED_BATCH``
    (call it in a server before it starts its workers): wake-ups of the server then never preempt a decode.
    Unprivileged and Linux only; a process that runs under a policy someone chose keeps it.  True when done.
    """
    batch, other = getattr(os, "SCHED_BATCH", None), getattr(os, "SCHED_OTHER", None)
    if batch is None or other is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        if os.sched_getscheduler(0) != other:
            return False
        tasks = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
        for tid in tasks:
            try:
                os.sched_setscheduler(tid, batch, os.sched_param(0))
            except ProcessLookupError:
                pass   # a thread that ended meanwhile
    except OSError:
        return False
    os.environ[POLICY_ENV] = str(other)
    return True


def restore_decode_policy() -> None:
    """In a worker that a server started after :func:`yield_to_decodes`: run its decodes (this thread and the
    ones it starts) under the policy the server had."""
    policy = os.environ.pop(POLICY_ENV, None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return
    try:
        os.sched_setscheduler(0, int(policy), os.sched_param(0))
    except (OSError, ValueError):
        pass   # it keeps the server's policy: slower beside a busy server, never wrong


def reset() -> None:
    """Forget what was seen, and read :data:`ENV` again (tests)."""
    global _last, _enabled
    _enabled = None
    with _lock:
        _seen.clear()
        _last = 0.0
