"""Child processes of our own modules: one way to start one, bound it, read its answer and name its end.

Native code that may crash or hang on a file (an isolated model's engine, ``gpt4all-probe --load``,
convert's quantizer) runs in a child, so that a fault costs the child and the parent reports it.
The child is the same interpreter running ``main()`` of one of this package's modules with the
caller's ``sys.path`` (the package is found however the caller found it: installed, or a path it
added), not ``python -m``, which needs the package installed, nor ``multiprocessing``, whose spawn
re-imports the caller's ``__main__`` (scripts without a ``__name__`` guard run again).
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

#: the package whose modules children run ("gpt4all_loader" when installed)
_PACKAGE = __name__.rsplit(".", 2)[0]
#: the child's first statement: the caller's import path, then ``sys.exit(<module>.main())`` with the
#: module's arguments in ``sys.argv[1:]``
_BOOT = ("import importlib, sys; sys.path[:0] = {path!r}; "
         "sys.exit(importlib.import_module(sys.argv.pop(1)).main())")


def command(module: str, args: Sequence[str] = ()) -> list[str]:
    """The command line that runs ``main()`` of the package's ``module`` ("worker", "smoke",
    "convert.quantize") with ``args``."""
    return [sys.executable, "-c", _BOOT.format(path=sys.path), f"{_PACKAGE}.{module}", *args]


def signal_name(returncode: int) -> str:
    """The name of the signal that ended a process (``returncode`` < 0): "SIGSEGV", or its number."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return str(-returncode)


def ending(returncode: int | None) -> str:
    """How a process ended, in words: "signal SIGSEGV", "exit status 1", or "no exit status"."""
    if returncode is None:
        return "no exit status"
    return f"signal {signal_name(returncode)}" if returncode < 0 else f"exit status {returncode}"


def start(module: str, args: Sequence[str] = (), *, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """A long-lived child (the isolated model's worker): its stdin is closed, its output is the caller's."""
    return subprocess.Popen(command(module, args), pass_fds=tuple(pass_fds), stdin=subprocess.DEVNULL)


@dataclass
class ChildResult:
    """What a child run by :func:`run` left: its output, and how it ended."""

    #: the exit status (negative: the signal that ended it); None when it was killed at the time limit
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    timeout: float | None = None

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def crashed(self) -> bool:
        """Ended by a signal (a native fault, an abort, the address-space limit's allocation failure)."""
        return self.returncode is not None and self.returncode < 0

    @property
    def ending(self) -> str:
        """ "signal SIGSEGV", "exit status 1", or "no answer within N s"."""
        return f"no answer within {self.timeout:.0f} s" if self.timed_out else ending(self.returncode)

    def last_error_line(self) -> str:
        """The last line the child wrote to stderr ("" when none)."""
        lines = self.stderr.strip().splitlines()
        return lines[-1].strip() if lines else ""

    def last_json(self) -> dict[str, Any] | None:
        """The last line of stdout that is a JSON object (the answer of a child that prints one)."""
        for line in reversed(self.stdout.splitlines()):
            if line.strip().startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
        return None


def _limits(address_space: int | None) -> Callable[[], None] | None:
    if address_space is None:
        return None

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    return apply


def run(module: str, args: Sequence[str] = (), *, timeout: float | None = None, env: dict[str, str] | None = None,
        address_space: int | None = None, keep_stdout: bool = True, input: str | None = None) -> ChildResult:
    """Run ``main()`` of the package's ``module`` in a child and wait for it, at most ``timeout`` seconds
    (then it is killed); ``address_space``: a limit in bytes on the child's memory, so that a runaway
    allocation fails there.  ``env``: variables added to this process's environment.  ``keep_stdout``
    False sends the child's stdout to /dev/null (an engine that talks a lot).  Raises OSError when the
    child cannot be started.  ``input``: text for the child's stdin (else it reads nothing)."""
    t0 = time.perf_counter()
    try:
        cp = subprocess.run(command(module, args), input=input, stdin=None if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, errors="replace", timeout=timeout,
                            env=dict(os.environ, **env) if env else None, preexec_fn=_limits(address_space))
    except subprocess.TimeoutExpired as e:
        out, err = (x.decode("utf-8", "replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        return ChildResult(None, out, err, round(time.perf_counter() - t0, 3), timeout)
    return ChildResult(cp.returncode, cp.stdout or "", cp.stderr or "", round(time.perf_counter() - t0, 3), timeout)
