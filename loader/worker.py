"""Isolated models: the engine of a Model runs in a worker process, so a native fault costs one call.

``load(path, isolated=True)`` returns an :class:`IsolatedModel`.  It has the API of
:class:`~gpt4all_loader.model.Model` (every public method and property is forwarded to a real Model
living in the worker); streaming methods (``generate``/``chat`` with ``stream=True``,
``generate_tokens``) stream across the boundary: the worker sends each piece as soon as it is made.

The worker is a child started by :mod:`~gpt4all_loader.engines.child` (the same interpreter and
``sys.path``, running :func:`main`), so it starts the same way from a script, a REPL or a server.  The
channel is a socketpair wrapped in ``multiprocessing.connection.Connection`` (framed pickles; the peer is our own
child), whose ``poll`` gives the time-out that turns a hang into an error.

Protocol (parent -> worker, one request at a time):
    ("load", path, kwargs)            -> ("ok", (info, facts))
    ("call", name, args, kwargs)      -> ("ok", value)      a method call, or a property when args is None
    ("iter", name, args, kwargs)      -> ("item", x)* then ("end", GenerationStats); ("cancel",) from the parent
                                         between items stops the iteration early
    any request                       -> ("err", exception) when the Model raised
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence, overload

from .engines import child
from .errors import BackendError, ModelClosedError
from .model import Closing, GenerationStats, ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    from .chat import ChatSession
    from .formats.facts import FileFacts

#: seconds the worker may stay silent (no reply, no streamed piece) before it counts as hung
DEFAULT_TIMEOUT = 300.0
#: seconds to wait for a worker to exit after close() before it is killed
EXIT_GRACE = 5.0


class _Call:
    """The holder of the channel during one request/reply."""

    def __init__(self) -> None:
        self._thread = threading.get_ident()


class _Stream:
    """An iterator over what the worker streams; closing it early cancels the generation there.

    At the end, the model's :attr:`~IsolatedModel.last_generation` is what the worker's Model recorded.
    """

    def __init__(self, owner: "IsolatedModel", name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 callback: Callable[[str], bool] | None) -> None:
        self._owner = owner
        self._request = ("iter", name, args, kwargs)
        self._callback = callback
        self._started = False
        self._done = False
        self._thread = threading.get_ident()

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        o = self._owner
        self._thread = threading.get_ident()
        if not self._started:
            o._claim(self)  # held until the stream ends: calls on one Model are serialized
            self._started = True
            try:
                o._send(self._request)
            except BaseException:
                self._finish()
                raise
        try:
            kind, value = o._recv()
        except BaseException:
            self._finish()
            raise
        if kind == "item":
            if self._callback is not None and self._callback(value) is False:
                self.close()
                raise StopIteration
            return value
        self._finish()
        if kind == "end":
            o.last_generation = value
            raise StopIteration
        raise value  # "err": the Model's own exception, raised here

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            if self._started:
                self._owner._unclaim()

    def close(self) -> None:
        """Stop the generation in the worker and wait for it to acknowledge (keeps the channel in step)."""
        if self._done:
            return
        if not self._started:
            self._done = True
            return
        o = self._owner
        try:
            o._send(("cancel",))
            while True:
                kind, value = o._recv()
                if kind == "end":
                    o.last_generation = value
                    break
                if kind == "err":
                    break
        except (BackendError, ModelClosedError):
            pass  # the worker died meanwhile: the model is closed and says why
        finally:
            self._finish()

    def __del__(self) -> None:  # pragma: no cover - best effort when a caller drops a stream
        try:
            self.close()
        except Exception:
            pass


class IsolatedModel(Closing):
    """A Model whose engine runs in a worker process.

    Same API as :class:`~gpt4all_loader.model.Model`.  When the worker dies (a native crash, an abort,
    a signal) or stays silent longer than ``timeout`` seconds (it is then killed), the call raises
    :class:`BackendError` naming the signal or the time-out and the file.  The model is then closed:
    every later call raises :class:`ModelClosedError` repeating that cause; load the file again (the
    server does so on the next request).  ``pid`` is the worker's process id.
    """

    def __init__(self, path: str, load_kwargs: dict[str, Any], timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._path = path
        self._timeout = timeout
        # who holds the channel (a call, or an open stream that may move between threads); not an RLock:
        # a stream started in one thread may be consumed and closed in another (an async server does)
        self._free = threading.Condition()
        self._holder: Any = None
        self._dead: str | None = None
        self._doing = "load"  # the request in progress, named when the worker dies
        #: as :attr:`Model.last_generation`: what the worker's Model recorded, at the end of each stream
        self.last_generation: GenerationStats | None = None
        parent_sock, child_sock = socket.socketpair()
        try:
            self._proc = child.start("worker", [str(child_sock.fileno())], pass_fds=[child_sock.fileno()])
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self.pid = self._proc.pid
        try:
            self._send(("load", path, load_kwargs))
            kind, value = self._recv(self._timeout)
        except BaseException:
            self._kill()
            raise
        if kind == "err":
            self._stop()
            raise value
        info, facts = value
        self.info: ModelInfo = info
        self.facts: FileFacts = facts

    # -- transport ------------------------------------------------------------------------------
    def _send(self, msg: tuple[Any, ...]) -> None:
        if self._dead is not None:
            raise ModelClosedError(f"{self._path}: the model is closed ({self._dead}); load the file again")
        try:
            self._conn.send(msg)
            if msg[0] in ("call", "iter"):
                self._doing = msg[1]
        except (OSError, EOFError):
            raise self._died(f"before {msg[1] if msg[0] in ('call', 'iter') else msg[0]}") from None

    def _recv(self, timeout: float | None = None) -> tuple[str, Any]:
        timeout = self._timeout if timeout is None else timeout
        try:
            if not self._conn.poll(timeout):
                self._kill()
                self._dead = f"the worker gave no answer to {self._doing} within {timeout:g} s and was killed"
                raise BackendError(f"{self._path}: {self._dead}")
            reply: tuple[str, Any] = self._conn.recv()
            return reply
        except (OSError, EOFError):
            raise self._died(f"during {self._doing}") from None
        except BaseException:
            if self._dead is None:  # interrupted mid-request: the channel is out of step, end the worker
                self._kill()
                self._dead = "a request was interrupted"
            raise

    def _died(self, when: str) -> BackendError:
        try:
            rc = self._proc.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self._kill()
            rc = self._proc.returncode
        self._dead = f"the worker process (pid {self.pid}) died {when}: {child.ending(rc)}"
        self._conn.close()
        return BackendError(f"{self._path}: {self._dead}")

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()

    def _stop(self) -> None:
        """Ask the worker to exit (it frees the model), and make sure it has."""
        if self._proc.poll() is None and self._dead is None:
            try:
                self._conn.send(("exit",))
                self._proc.wait(EXIT_GRACE)
            except (OSError, EOFError, subprocess.TimeoutExpired):
                pass
        self._kill()

    def _claim(self, holder: Any) -> None:
        with self._free:
            while self._holder is not None:
                if self._holder._thread == threading.get_ident():
                    raise RuntimeError(f"{self._path}: a stream of this model is open in this thread; "
                                       f"exhaust or close it before the next call")
                self._free.wait()
            self._holder = holder

    def _unclaim(self) -> None:
        with self._free:
            self._holder = None
            self._free.notify()

    def _call(self, name: str, args: tuple[Any, ...] | None, kwargs: dict[str, Any]) -> Any:
        call = _Call()
        self._claim(call)
        try:
            self._send(("call", name, args, kwargs))
            kind, value = self._recv()
        finally:
            self._unclaim()
        if kind == "err":
            raise value
        return value

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker (an open stream of this thread is cancelled first; other threads' calls end first)."""
        holder = self._holder
        if isinstance(holder, _Stream) and holder._thread == threading.get_ident():
            holder.close()
        self._claim(_Call())
        try:
            if self._dead is None:
                self._stop()
                self._dead = "the model was closed"
        finally:
            self._unclaim()

    @property
    def closed(self) -> bool:
        return self._dead is not None

    @property
    def why_closed(self) -> str | None:
        """Why the model is closed (closed by the caller, or how its worker ended); None while open."""
        if self._dead is None and self._proc.poll() is not None:
            return f"the worker process (pid {self.pid}) ended: {child.ending(self._proc.returncode)}"
        return self._dead

    @property
    def alive(self) -> bool:
        """Open, and the worker process still runs (a worker that died while idle shows here first)."""
        return self.why_closed is None

    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    @property
    def last_evaluated(self) -> int:
        return self.last_generation.prompt_evaluated if self.last_generation is not None else 0

    @property
    def chat_template_source(self) -> str:
        """As :attr:`Model.chat_template_source` (the worker resolved it when it loaded the file)."""
        return self.info.chat_template_source

    # -- streaming methods ----------------------------------------------------------------------
    @overload
    def generate(self, prompt: str | Sequence[int], *, stream: Literal[False] = ...,
                 callback: Callable[[str], bool] | None = ..., **kwargs: Any) -> str: ...

    @overload
    def generate(self, prompt: str | Sequence[int], *, stream: Literal[True],
                 callback: Callable[[str], bool] | None = ..., **kwargs: Any) -> Iterator[str]: ...

    @overload
    def generate(self, prompt: str | Sequence[int], *, stream: bool = ...,
                 callback: Callable[[str], bool] | None = ..., **kwargs: Any) -> str | Iterator[str]: ...

    def generate(self, prompt: str | Sequence[int], *, stream: bool = False,
                 callback: Callable[[str], bool] | None = None, **kwargs: Any) -> str | Iterator[str]:
        """As :meth:`Model.generate`; ``callback`` runs here, in the caller's process."""
        return self._text("generate", (prompt if isinstance(prompt, (str, bytes)) else list(prompt),),
                          kwargs, stream, callback)

    @overload
    def chat(self, messages: Sequence[dict[str, str]], *, stream: Literal[False] = ...,
             callback: Callable[[str], bool] | None = ..., **kwargs: Any) -> str: ...

    @overload
    def chat(self, messages: Sequence[dict[str, str]], *, stream: Literal[True],
             callback: Callable[[str], bool] | None = ..., **kwargs: Any) -> Iterator[str]: ...

    @overload
    def chat(self, messages: Sequence[dict[str, str]], *, stream: bool = ...,
             callback: Callable[[str], bool] | None = ..., **kwargs: Any) -> str | Iterator[str]: ...

    def chat(self, messages: Sequence[dict[str, str]], *, stream: bool = False,
             callback: Callable[[str], bool] | None = None, **kwargs: Any) -> str | Iterator[str]:
        return self._text("chat", ([dict(m) for m in messages],), kwargs, stream, callback)

    def chat_session(self, system: str | None = None) -> ChatSession:
        """As :meth:`Model.chat_session`: the messages stay here, the worker's model reuses its prefix."""
        from .chat import ChatSession

        return ChatSession(self, system)

    def generate_tokens(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[int]:
        return _Stream(self, "generate_tokens", (prompt if isinstance(prompt, (str, bytes)) else list(prompt),),
                       kwargs, None)

    def _text(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], stream: bool,
              callback: Callable[[str], bool] | None) -> str | Iterator[str]:
        it = _Stream(self, name, args, dict(kwargs, stream=True), callback)
        if stream:
            return it
        try:
            return "".join(it)
        finally:
            it.close()

    # -- everything else: forwarded --------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        from .model import Model

        attr = getattr(Model, name, None)
        if name.startswith("_") or attr is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        if isinstance(attr, property):
            return self._call(name, None, {})
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_ctx={self.info.n_ctx}, pid {self.pid}"
        return f"<IsolatedModel {os.path.basename(self._path)} on {self.info.backend}/{self.info.variant} {state}>"


# ------------------------------------------------------------------------------------------------
# The worker side

def _serve(conn: Connection) -> None:
    from .model import load

    model: Any = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break  # the parent went away
        op = msg[0]
        if op == "exit":
            break
        if op == "cancel":  # arrived after the stream ended on its own: the "end" was already sent
            continue
        try:
            if op == "load":
                model = load(msg[1], **msg[2])
                conn.send(("ok", (model.info, model.facts)))
            elif op == "call":
                _, name, args, kwargs = msg
                attr = getattr(model, name)
                conn.send(("ok", attr if args is None else attr(*args, **kwargs)))
            elif op == "iter":
                _, name, args, kwargs = msg
                it = getattr(model, name)(*args, **kwargs)
                try:
                    for x in it:
                        conn.send(("item", x))
                        if conn.poll() and conn.recv()[0] == "cancel":
                            break
                finally:
                    it.close()
                conn.send(("end", model.last_generation))
        except (EOFError, OSError):
            break
        except Exception as e:  # noqa: BLE001 - every error of the Model goes back to the caller
            try:
                conn.send(("err", e))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                conn.send(("err", BackendError(f"{type(e).__name__}: {e}")))
    if model is not None:
        model.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C in a terminal reaches the whole process group: the caller decides, the worker carries on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(Connection(int(args[0])))
    return 0
