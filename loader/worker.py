"""Isolated models: the engine of a Model runs in a worker process, so a native fault costs one call.

``load(path, isolated=True)`` returns an :class:`IsolatedModel`.  It has the API of
:class:`~gpt4all_loader.model.Model` (every public method and property is forwarded to a real Model
living in the worker); streaming methods (``generate``/``chat`` with ``stream=True``,
``generate_tokens``) stream across the boundary: the worker sends each piece as soon as it is made.
Any number of threads may use one IsolatedModel at once: each stream and each call is a request of its
own, so that several streams reach the worker's Model together (which decodes them as its lock and
scheduler allow) and a short call is answered while streams run.

The worker is a child started by :mod:`~gpt4all_loader.engines.child` (the same interpreter and
``sys.path``, running :func:`main`), so it starts the same way from a script, a REPL or a server.  The
channel is a socketpair wrapped in ``multiprocessing.connection.Connection`` (framed pickles; the peer is our own
child).

Protocol: every request carries an id (``rid``) that its replies carry back, so requests interleave.
    parent -> worker
    ("load", rid, path, kwargs)             -> ("ok", rid, (info, facts))      the first request, alone
    ("call", rid, name, args, kwargs)       -> ("ok", rid, value)   a method call, or a property when args is None
    ("iter", rid, name, args, kwargs)       -> ("item", rid, x)* then ("end", rid, GenerationStats)
    ("iter", rid, name, args, kwargs, enc)  -> ("item", rid, None), ("tick", rid, None)*, then the end: direct
    ("credit", rid, n)                      the stream may send n more items (no reply)
    ("attach", rid) + a descriptor          a direct stream's connection (below), sent with SCM_RIGHTS
    ("cancel", rid)                         stop that stream: its generator is closed, its "end" follows
    ("exit",)                               cancel every stream, answer the calls in flight, free the model, exit
    any request                             -> ("err", rid, exception) when the Model raised
The parent has one reader thread: it routes each message to its request's queue and never blocks on
one request.  The worker receives in its main thread and runs each call and each stream in a thread of
its own (a call may wait for the Model's lock while a stream holds it; the receive loop never waits);
one lock orders its sends.

Backpressure is a credit window per stream: the worker sends at most :data:`STREAM_WINDOW` items beyond
what that stream's consumer has taken, then its thread waits for credit (or a cancel).  So the parent
holds at most a window per stream, a stalled consumer stalls only its own stream's thread, and the
socket never fills with one stream's items ahead of another's replies.

Direct streams: a stream started with an encoder (:meth:`_Stream.direct`) is written by the worker
itself to a connection the parent hands over, so no piece crosses the channel and the parent spends
nothing per piece (the server's per-token path).  The "iter" request carries the encoder as a sixth
field (pickled: a callable from a piece to the bytes to write).  At the first piece the worker sends
``("item", rid, None)`` (an error or an empty stream ends as usual instead) and generates on, keeping the
encoded pieces until ``("attach", rid)`` and the descriptor come; its receive loop then writes them at
once, as far as the connection takes them without waiting.  From then on the stream writes each piece
itself, waiting for a slow reader as long as it takes (a cancel ends the wait).  It closes its copy of the
descriptor before its "end", so the parent owns the connection again when the end arrives; a reader that
went away ends the stream early (its ``finish_reason`` is "cancelled").  While it writes, or waits to,
it sends ``("tick", rid, None)`` at least every :data:`TICK` seconds, so the hang rule still sees it
alive.  No credit window applies.  A worker that dies in the middle of a write to a full connection
leaves part of a piece on it; the parent cannot know, and what it writes next follows that part.

Hang: the worker counts as hung when it owes an answer (a request is outstanding and no stream is
waiting for its consumer's credit, which may be what holds the others up) and has sent nothing at all
for ``timeout`` seconds; it is then killed and every outstanding request fails with one BackendError.
A worker that dies fails every outstanding request with the same BackendError naming the signal.
"""
from __future__ import annotations

import array
import asyncio
import itertools
import os
import pickle
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence, overload

from .engines import child, cores
from .errors import BackendError, ModelClosedError
from .model import Closing, ModelInfo
from .sampling import GenerationStats

if TYPE_CHECKING:  # pragma: no cover
    from .chat import ChatSession
    from .formats.facts import FileFacts

#: seconds the worker may stay silent (no reply, no streamed piece) while it owes one before it counts as hung
DEFAULT_TIMEOUT = 300.0
#: seconds to wait for a worker to exit after close() before it is killed
EXIT_GRACE = 5.0
#: items the worker may stream ahead of a stream's consumer; credit goes back every half window consumed
STREAM_WINDOW = 64
#: seconds between a direct stream's signs of life (its pieces do not cross the channel)
TICK = 1.0


def _dumps(msg: Any) -> memoryview:
    """A message as ``Connection.recv`` reads it, pickled before the send lock is taken."""
    return ForkingPickler.dumps(msg)


class _Request:
    """One outstanding request of the parent: its name (for errors) and the queue its replies arrive in."""

    def __init__(self, rid: int, name: str, stream: bool) -> None:
        self.id = rid
        self.name = name
        self.stream = stream
        self.replies: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        #: items the worker may send (streams): the window, plus every credit given back
        self.granted = STREAM_WINDOW if stream else 0
        self.received = 0
        self.cancelled = False
        #: called (by the reader thread) after each reply put here, while an asynchronous consumer waits
        self.waker: Callable[[], None] | None = None

    def put(self, reply: tuple[str, Any]) -> None:
        self.replies.put(reply)
        wake = self.waker
        if wake is not None:
            wake()

    @property
    def parked(self) -> bool:
        """A stream whose worker thread waits for its consumer (the window is used up, no cancel sent)."""
        return self.stream and not self.cancelled and self.received >= self.granted


class _Channel:
    """The parent's end of the worker's socket: numbered requests, one reader thread that routes every
    message to its request, the hang rule and the worker's death (which fails every outstanding request).

    It holds no reference to the IsolatedModel, so that dropping the model still closes it."""

    def __init__(self, conn: Connection, proc: subprocess.Popen[bytes], path: str, timeout: float | None) -> None:
        self._conn = conn
        self._proc = proc
        self._path = path
        self._timeout = timeout
        self._state = threading.Lock()  # the requests, the clock and `dead`
        self._send_lock = threading.Lock()
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count(1)
        #: when the worker last sent anything, or last became owing (a request while idle, credit to a parked stream)
        self._clock = time.monotonic()
        #: why the channel is closed (closed, hung, died); None while open
        self.dead: str | None = None
        self._reader = threading.Thread(target=self._read, name=f"isolated model worker {proc.pid}", daemon=True)
        self._reader.start()

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    # -- requests -------------------------------------------------------------------------------
    def start(self, op: str, name: str, payload: tuple[Any, ...], *, stream: bool = False) -> _Request:
        """Send a request; its replies arrive in ``req.replies`` (read them with :meth:`get`)."""
        with self._state:
            if self.dead is not None:
                raise ModelClosedError(f"{self._path}: the model is closed ({self.dead}); load the file again")
            req = _Request(next(self._ids), name, stream)
            if not self._requests:
                self._clock = time.monotonic()  # the worker owes something from now on
            self._requests[req.id] = req
        try:
            data = _dumps((op, req.id, *payload))
        except BaseException:
            self.forget(req)
            raise
        if not self._send(data):
            self._proc.kill()  # the socket is broken: the reader's end of file fails the request, naming why
        return req

    def get(self, req: _Request) -> tuple[str, Any]:
        """The next message of ``req``: ("item" | "ok" | "end" | "err", value); a hung worker is killed here."""
        try:
            return req.replies.get_nowait()  # a stream's pieces are mostly here already
        except queue.Empty:
            pass
        while True:
            try:
                return req.replies.get(timeout=self._left())
            except queue.Empty:
                self._hang_check()

    async def aget(self, req: _Request) -> tuple[str, Any]:
        """:meth:`get` for a consumer in an event loop: the reader thread wakes the loop when a reply comes,
        so no thread of ours waits per reply."""
        try:
            return req.replies.get_nowait()
        except queue.Empty:
            pass
        loop = asyncio.get_running_loop()
        while True:
            fut: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass
            req.waker = wake
            try:
                try:
                    return req.replies.get_nowait()   # it came before the waker was in place
                except queue.Empty:
                    pass
                left = self._left()
                timer = loop.call_later(left, _resolve, fut) if left is not None else None
                try:
                    await fut
                finally:
                    if timer is not None:
                        timer.cancel()
            finally:
                req.waker = None
            try:
                return req.replies.get_nowait()
            except queue.Empty:
                self._hang_check()

    def forget(self, req: _Request) -> None:
        """Stop waiting for ``req`` (an interrupted caller): what the worker still sends for it is dropped."""
        with self._state:
            self._requests.pop(req.id, None)

    def cancel(self, req: _Request) -> None:
        """Stop the stream ``req`` in the worker; its "end" follows."""
        with self._state:
            self._unpark(req)
            req.cancelled = True
        self._send(_dumps(("cancel", req.id)))

    def grant(self, req: _Request, n: int) -> None:
        """Let the worker stream ``n`` more items of ``req``."""
        with self._state:
            self._unpark(req)
            req.granted += n
        self._send(_dumps(("credit", req.id, n)))

    def attach(self, req: _Request, fd: int) -> None:
        """Hand the worker a copy of descriptor ``fd`` for the direct stream ``req`` (the message, then the
        descriptor as SCM_RIGHTS data, under one lock so that nothing comes between)."""
        with self._send_lock, socket.fromfd(self._conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
            self._conn.send_bytes(_dumps(("attach", req.id)))
            s.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])

    def _unpark(self, req: _Request) -> None:
        """(With the lock) the worker may go on with ``req``: its silence counts from now."""
        if req.parked:
            self._clock = time.monotonic()

    def _send(self, data: memoryview) -> bool:
        """Write one message; False when the socket is broken (the reader then sees the worker's end)."""
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
            return True
        except OSError:
            return False

    # -- the reader -----------------------------------------------------------------------------
    def _read(self) -> None:
        cause = None
        while True:
            try:
                kind, rid, value = self._conn.recv()
            except (EOFError, OSError):
                break
            except Exception as e:  # noqa: BLE001 - a message that does not unpickle here: end the worker
                cause = f"the worker sent a message that cannot be read ({type(e).__name__}: {e}) and was killed"
                self.kill()
                break
            with self._state:
                self._clock = time.monotonic()
                req = self._requests.get(rid)
                if req is None or kind == "tick":
                    continue  # its caller stopped waiting, or a direct stream is alive
                if kind == "item":
                    req.received += 1
                else:
                    del self._requests[rid]
            req.put((kind, value))
        self._ended(cause)

    def _ended(self, cause: str | None) -> None:
        """End of file: the worker exited or died.  Fail what is outstanding, naming the cause."""
        try:
            rc = self._proc.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:  # it closed the socket but lives on: it is of no use now
            self._proc.kill()
            rc = self._proc.wait()
        with self._state:
            pending = list(self._requests.values())
            self._requests.clear()
            died = self.dead is None
            if died:
                names = ", ".join(dict.fromkeys(r.name for r in pending))
                self.dead = cause or (f"the worker process (pid {self._proc.pid}) died "
                                      f"{f'during {names}' if names else 'while idle'}: {child.ending(rc)}")
            dead = self.dead
        for r in pending:
            r.put(("err", BackendError(f"{self._path}: {dead}") if died else
                   ModelClosedError(f"{self._path}: the model is closed ({dead}); load the file again")))
        with self._send_lock:
            self._conn.close()

    # -- the hang rule --------------------------------------------------------------------------
    def _owing(self) -> bool:
        """The worker owes an answer, and nothing it may wait for is ours to give (call with the lock)."""
        return bool(self._requests) and not any(r.parked for r in self._requests.values())

    def _left(self) -> float | None:
        """Seconds to wait before looking at the hang rule again (None: no time limit)."""
        if self._timeout is None:
            return None
        with self._state:
            if self.dead is not None or not self._owing():
                return self._timeout
            return max(0.0, self._clock + self._timeout - time.monotonic())

    def _hang_check(self) -> None:
        if self._timeout is None:
            return
        with self._state:
            if self.dead is not None or not self._owing() or time.monotonic() - self._clock < self._timeout:
                return
            pending = list(self._requests.values())
            self._requests.clear()
            self.dead = (f"the worker gave no answer to {pending[0].name} within {self._timeout:g} s "
                         f"and was killed")
            dead = self.dead
        self.kill()
        for r in pending:
            r.put(("err", BackendError(f"{self._path}: {dead}")))

    # -- the end --------------------------------------------------------------------------------
    def reading_here(self) -> bool:
        return threading.current_thread() is self._reader

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, why: str) -> None:
        """Ask the worker to exit (it cancels its streams, answers its calls, frees the model); make sure it has."""
        with self._state:
            first = self.dead is None
            if first:
                self.dead = why
        if first:  # else it was closed, or killed, or it died: its end of file comes, or came
            if self._proc.poll() is None and self._send(_dumps(("exit",))):
                try:
                    self._proc.wait(EXIT_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            self.kill()
        if not self.reading_here():
            self._reader.join()  # it fails what is left and closes the socket


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Stream:
    """An iterator over what the worker streams; closing it early cancels the generation there.  It is also an
    asynchronous iterator (``async for``), for an event loop that reads it without a thread of its own (a
    callback that says stop closes the stream there too, which waits for the worker's end).

    ``stats`` is the GenerationStats of this request, set at its end (also the model's
    :attr:`~IsolatedModel.last_generation`: the most recently finished stream's).  A stream its
    consumer closes before its end reports finish_reason "cancelled", as the in-process Model does.
    """

    def __init__(self, owner: "IsolatedModel", name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 callback: Callable[[str], bool] | None) -> None:
        self._owner = owner
        self._name = name
        self._payload: tuple[Any, ...] = (name, args, kwargs)
        self._callback = callback
        self._req: _Request | None = None
        self._done = False
        self._taken = 0  # items consumed since credit was last given back
        self._direct = False
        self._thread = threading.get_ident()
        #: what this generation did (the worker Model's record of it), once the stream has ended
        self.stats: GenerationStats | None = None

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        self._thread = threading.get_ident()
        req = self._begin()
        try:
            kind, value = self._owner._chan.get(req)
        except BaseException:  # interrupted: the worker stops this stream, the others go on
            self._interrupted(req)
            raise
        return self._take(req, kind, value)

    def __aiter__(self) -> "_Stream":
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        req = self._begin()
        try:
            kind, value = await self._owner._chan.aget(req)
        except BaseException:  # cancelled (a client that went away): as an interrupted __next__
            self._interrupted(req)
            raise
        try:
            return self._take(req, kind, value)
        except StopIteration:
            raise StopAsyncIteration from None

    def direct(self, encode: Callable[[Any], bytes]) -> None:
        """Let the worker write this stream itself to a connection given later with :meth:`attach`, each
        piece as ``encode(piece)`` (``encode`` is pickled to the worker; the module docstring has the
        protocol).  Call it before the first item; then the stream yields one ``None`` when its first piece
        is ready, and ends (with ``stats``) when the worker has written its last piece and let go of the
        connection."""
        if self._req is not None or self._callback is not None:
            raise RuntimeError("direct(): before the first item, on a stream without a callback")
        self._payload = (*self._payload, encode)
        self._direct = True

    def attach(self, fd: int) -> None:
        """Give the worker the connection of a :meth:`direct` stream (a copy of descriptor ``fd``), after its
        first ``None``; nothing else may write to it until the stream ends."""
        if not self._direct or self._req is None:
            raise RuntimeError("attach(): after the first item of a direct stream")
        self._owner._chan.attach(self._req, fd)

    def _begin(self) -> _Request:
        """The request of this stream, sent at the first item asked for."""
        if self._req is None:
            o = self._owner
            o._not_streaming_here(self)
            self._req = o._chan.start("iter", self._name, self._payload, stream=True)
            with o._open_lock:
                o._open.add(self)
        return self._req

    def _interrupted(self, req: _Request) -> None:
        chan = self._owner._chan
        chan.forget(req)
        chan.cancel(req)
        self._finish()

    def _take(self, req: _Request, kind: str, value: Any) -> Any:
        """One message of the worker: the item it carries (credit goes back every half window), else the end
        (StopIteration) or the error it carries, raised."""
        if kind == "item":
            if self._direct:
                return value
            self._taken += 1
            if self._taken >= STREAM_WINDOW // 2:
                self._owner._chan.grant(req, self._taken)
                self._taken = 0
            if self._callback is not None and self._callback(value) is False:
                self.close()
                raise StopIteration
            return value
        self._finish()
        if kind == "end":
            self._ended(value, cut=False)
            raise StopIteration
        raise value  # "err": the Model's own exception, or the worker's end, raised here

    def _ended(self, stats: GenerationStats | None, *, cut: bool) -> None:
        if stats is not None and cut:
            stats.finish_reason = "cancelled"  # the consumer stopped first; the worker may have run ahead
        self.stats = stats
        if stats is not None:
            self._owner.last_generation = stats

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            with self._owner._open_lock:
                self._owner._open.discard(self)

    def close(self) -> None:
        """Stop the generation in the worker and wait for its end (the stats of what it did)."""
        if self._done:
            return
        req = self._req
        if req is None:
            self._done = True
            return
        chan = self._owner._chan
        if chan.reading_here():  # dropped by the reader thread's garbage collection: it cannot wait for itself
            chan.forget(req)
            chan.cancel(req)
            self._finish()
            return
        try:
            chan.cancel(req)
            while True:
                kind, value = chan.get(req)
                if kind == "end":
                    self._ended(value, cut=True)
                    break
                if kind == "err":
                    break  # the worker died meanwhile: the model is closed and says why
        finally:
            self._finish()

    def __del__(self) -> None:  # pragma: no cover - best effort when a caller drops a stream
        try:
            self.close()
        except Exception:
            pass


class IsolatedModel(Closing):
    """A Model whose engine runs in a worker process.

    Same API as :class:`~gpt4all_loader.model.Model`, usable from any number of threads at once
    (streams and calls run side by side in the worker; its Model decides what runs together).  A thread
    with an open stream of this model must exhaust or close it before its next request of the model
    (RuntimeError): the worker's Model would wait for that stream, which waits for this thread.

    When the worker dies (a native crash, an abort, a signal) or owes an answer and stays silent longer
    than ``timeout`` seconds (it is then killed), every request in flight raises :class:`BackendError`
    naming the signal or the time-out and the file.  The model is then closed: every later call raises
    :class:`ModelClosedError` repeating that cause; load the file again (the server does so on the next
    request).  ``pid`` is the worker's process id.
    """

    def __init__(self, path: str, load_kwargs: dict[str, Any], timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self._path = path
        #: as :attr:`Model.last_generation`: the stats of the stream that ended last (each stream's own
        #: are its ``stats``: with several threads streaming, read those)
        self.last_generation: GenerationStats | None = None
        # the started, unfinished streams, and the thread that last advanced each (the rule above)
        self._open: set[_Stream] = set()
        self._open_lock = threading.Lock()
        parent_sock, child_sock = socket.socketpair()
        try:
            self._proc = child.start("worker", [str(child_sock.fileno())], pass_fds=[child_sock.fileno()])
        finally:
            child_sock.close()
        self.pid = self._proc.pid
        self._chan = _Channel(Connection(parent_sock.detach()), self._proc, path, timeout)
        try:
            req = self._chan.start("load", "load", (path, load_kwargs))
            kind, value = self._chan.get(req)
        except BaseException:
            self._chan.kill()
            self._chan.stop("the load was interrupted")
            raise
        if kind == "err":
            self._chan.stop("it did not load")
            raise value
        info, facts = value
        self.info: ModelInfo = info
        self.facts: FileFacts = facts

    def _not_streaming_here(self, stream: _Stream | None = None) -> None:
        """A model that runs one generation at a time holds its lock for an open stream: a call from the
        thread that consumes that stream would wait for itself.  Batching models hold no lock between
        steps, so any thread may go on."""
        if getattr(self, "info", None) is not None and self.info.parallel > 1:
            return
        me = threading.get_ident()
        with self._open_lock:
            if self._chan.dead is None and any(s._thread == me and s is not stream for s in self._open):
                raise RuntimeError(f"{self._path}: a stream of this model is open in this thread; "
                                   f"exhaust or close it before the next call")

    def _call(self, name: str, args: tuple[Any, ...] | None, kwargs: dict[str, Any]) -> Any:
        self._not_streaming_here()
        req = self._chan.start("call", name, (name, args, kwargs))
        try:
            kind, value = self._chan.get(req)
        except BaseException:
            self._chan.forget(req)  # interrupted: the answer, when it comes, is dropped
            raise
        if kind == "err":
            raise value
        return value

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker: open streams (of any thread) end as cancelled, calls in flight are answered,
        then it frees the model and exits."""
        self._chan.stop("the model was closed")

    @property
    def closed(self) -> bool:
        return self._chan.dead is not None

    @property
    def why_closed(self) -> str | None:
        """Why the model is closed (closed by the caller, or how its worker ended); None while open."""
        if self._chan.dead is None and self._proc.poll() is not None:
            return f"the worker process (pid {self.pid}) ended: {child.ending(self._proc.returncode)}"
        return self._chan.dead

    @property
    def alive(self) -> bool:
        """Open, and the worker process still runs (a worker that died while idle shows here first)."""
        return self.why_closed is None

    @property
    def in_flight(self) -> int:
        """Requests sent to the worker and not yet answered (open streams and calls)."""
        return self._chan.in_flight

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

class _Credit:
    """How many more items one stream may send, whether its consumer cancelled it, and (a direct stream) the
    connection it writes to."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._left = STREAM_WINDOW
        self.cancelled = False
        self.sink: socket.socket | None = None
        self._kept: list[bytes] = []

    def grant(self, n: int) -> None:
        with self._cond:
            self._left += n
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify()

    def take(self) -> bool:
        """Wait for room to send one item; False when the stream was cancelled."""
        with self._cond:
            while self._left <= 0 and not self.cancelled:
                self._cond.wait()
            if self.cancelled:
                return False
            self._left -= 1
            return True

    def keep(self, data: bytes) -> bytes | None:
        """Keep a direct stream's ``data`` until its connection comes (None); once it is there, what the
        stream writes now: what was kept, then ``data`` (after that the stream writes without asking)."""
        with self._cond:
            if self.sink is None:
                self._kept.append(data)
                return None
            self._kept.append(data)
            out = b"".join(self._kept)
            self._kept.clear()
            return out

    def kept(self) -> bytes:
        with self._cond:
            data = b"".join(self._kept)
            self._kept.clear()
            return data

    def attach(self, fd: int) -> None:
        """The connection has come: write what was kept, as far as it goes at once (in the receive loop,
        which never waits), and let the stream write the rest."""
        with self._cond:
            sink = socket.socket(fileno=fd)
            sink.setblocking(False)  # as it is in the parent's event loop: the flag is shared
            data = b"".join(self._kept)
            try:
                data = data[sink.send(data, socket.MSG_NOSIGNAL):] if data else data
            except OSError:  # full, or the reader went away: the stream finds out
                pass
            self._kept = [data] if data else []
            self.sink = sink
            self._cond.notify()

    def wait_sink(self, tick: Callable[[], None]) -> socket.socket | None:
        """The connection, once attached (None when the stream was cancelled first); ``tick`` every TICK."""
        with self._cond:
            while self.sink is None and not self.cancelled:
                if not self._cond.wait(TICK):
                    tick()
            return None if self.cancelled else self.sink

    def close_sink(self) -> None:
        if self.sink is not None:
            self.sink.close()


class _Worker:
    """The receive loop (which never waits on the Model) and a thread per call and per stream."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._model: Any = None
        self._streams: dict[int, _Credit] = {}
        self._streams_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        from .model import load

        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break  # the parent went away
            op = msg[0]
            if op == "exit":
                break
            if op == "attach":  # the descriptor follows; a stream that has ended meanwhile lets it go
                fd = self._receive_fd()
                with self._streams_lock:
                    credit = self._streams.get(msg[1])
                    if credit is not None:
                        credit.attach(fd)
                if credit is None:
                    os.close(fd)
            elif op in ("credit", "cancel"):  # may come after the stream ended: then there is nothing to do
                with self._streams_lock:
                    credit = self._streams.get(msg[1])
                if credit is not None and op == "credit":
                    credit.grant(msg[2])
                elif credit is not None:
                    credit.cancel()
            elif op == "load":  # the first request, before any other: run here
                try:
                    self._model = load(msg[2], **msg[3])
                    self._send(("ok", msg[1], (self._model.info, self._model.facts)))
                except Exception as e:  # noqa: BLE001 - the load's error goes back to the caller
                    self._error(msg[1], e)
            else:
                if op == "iter":
                    with self._streams_lock:
                        self._streams[msg[1]] = _Credit()
                self._threads = [t for t in self._threads if t.is_alive()]
                t = threading.Thread(target=self._iter if op == "iter" else self._call, args=msg[1:], daemon=True)
                self._threads.append(t)
                t.start()
        with self._streams_lock:
            credits = list(self._streams.values())
        for c in credits:
            c.cancel()
        for t in self._threads:
            t.join()
        if self._model is not None:
            self._model.close()

    def _receive_fd(self) -> int:
        with socket.fromfd(self._conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
            fds = array.array("i")
            _, ancillary, _, _ = s.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:fds.itemsize])
        if not fds:
            raise OSError("an attach came without its descriptor")
        return fds[0]

    def _send(self, msg: tuple[Any, ...]) -> None:
        data = _dumps(msg)  # outside the lock: a value that does not pickle raises before anything is sent
        with self._send_lock:
            self._conn.send_bytes(data)

    def _error(self, rid: int, e: Exception) -> None:
        """Send the Model's exception as it is, or as a BackendError when it would not arrive whole."""
        try:
            pickle.loads(_dumps(e))
            err: Exception = e
        except Exception:  # noqa: BLE001 - an exception that does not pickle, or not back
            err = BackendError(f"{type(e).__name__}: {e}")
        self._send(("err", rid, err))

    def _call(self, rid: int, name: str, args: tuple[Any, ...] | None, kwargs: dict[str, Any]) -> None:
        try:
            try:
                attr = getattr(self._model, name)
                self._send(("ok", rid, attr if args is None else attr(*args, **kwargs)))
            except Exception as e:  # noqa: BLE001 - every error of the Model goes back to the caller
                self._error(rid, e)
        except OSError:
            pass  # the parent went away: the receive loop ends

    def _iter(self, rid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              encode: Callable[[Any], bytes] | None = None) -> None:
        with self._streams_lock:
            credit = self._streams[rid]
        try:
            try:
                it = getattr(self._model, name)(*args, **kwargs)
                stats = self._run(rid, credit, it) if encode is None else self._write(rid, credit, it, encode)
                with self._streams_lock:  # the connection is the parent's again before the end says so
                    credit.close_sink()
                self._send(("end", rid, stats))
            except Exception as e:  # noqa: BLE001 - every error of the Model goes back to the caller
                self._error(rid, e)
        except OSError:
            pass  # the parent went away: the receive loop ends
        finally:
            with self._streams_lock:
                del self._streams[rid]
                credit.close_sink()

    def _run(self, rid: int, credit: _Credit, it: Any) -> GenerationStats | None:
        """Stream ``it`` within its credit until it ends or is cancelled; the stats of its generation.

        The Model records each generation in ``last_generation`` per thread when it starts, and this stream
        runs in its own thread: read after the first item, it is this stream's, batched or not.
        """
        stats: GenerationStats | None = None
        try:
            for x in it:
                if stats is None:
                    stats = self._model.last_generation
                if not credit.take():
                    break
                self._send(("item", rid, x))
                if credit.cancelled:
                    break
        finally:
            it.close()  # in this thread, which holds what the generation holds
        return self._model.last_generation if stats is None else stats

    def _write(self, rid: int, credit: _Credit, it: Any, encode: Callable[[Any], bytes]) -> GenerationStats | None:
        """A direct stream: write ``encode(x)`` of every item to the attached connection (the module
        docstring); stops early when cancelled or when the reader has gone; the stats of its generation.
        Until the connection comes the pieces wait here, and the generation goes on: a batch does not wait
        for this stream's hand-over."""
        stats: GenerationStats | None = None
        started = False  # the first piece is made: the parent attaches the connection
        sink: socket.socket | None = None  # once the stream has seen it attached
        last = time.monotonic()

        def tick() -> None:
            nonlocal last
            last = time.monotonic()
            self._send(("tick", rid, None))

        try:
            for x in it:
                if stats is None:
                    stats = self._model.last_generation
                data = encode(x)
                if not started:
                    started = True
                    self._send(("item", rid, None))
                if sink is None:
                    out = credit.keep(data)
                    if out is not None:
                        sink = credit.sink
                        data = out
                if sink is not None and not _write_all(sink, data, credit, tick):
                    break
                if credit.cancelled:
                    break
                if time.monotonic() - last >= TICK:
                    tick()
            else:
                if started and sink is None:  # what is kept goes out once the connection is there
                    sink = credit.wait_sink(tick)
                    if sink is not None:
                        _write_all(sink, credit.kept(), credit, tick)
        finally:
            it.close()
        return self._model.last_generation if stats is None else stats


def _write_all(sink: socket.socket, data: bytes, credit: _Credit, tick: Callable[[], None]) -> bool:
    """Write all of ``data`` to a non-blocking connection, waiting as long as its reader takes (a tick every
    TICK, a cancel ends the wait); False when cancelled or when the reader has gone."""
    view = memoryview(data)
    writable: select.poll | None = None  # made the first time the connection is full
    while view:
        try:
            view = view[sink.send(view, socket.MSG_NOSIGNAL):]
        except BlockingIOError:
            if writable is None:
                writable = select.poll()
                writable.register(sink, select.POLLOUT)
            if not writable.poll(TICK * 1000):
                tick()
                if credit.cancelled:
                    return False
        except OSError:  # reset, broken pipe: the reader went away
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C in a terminal reaches the whole process group: the caller decides, the worker carries on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cores.restore_decode_policy()
    _Worker(Connection(int(args[0]))).serve()
    return 0
