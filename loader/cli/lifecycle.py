"""How the ``gpt4all-serve`` process takes connections and stops: uvicorn with limits against idle or
slow clients, and a graceful shutdown that finishes the requests in flight.

* Shutdown: the first SIGTERM or SIGINT closes the :class:`Gate`: ``/health`` answers 503 and new work
  gets a 503 ``shutting_down`` error (the port stays open, so a load balancer that has not yet noticed
  gets an answer it can retry elsewhere), while the requests in flight run to their end, for at most
  ``shutdown_timeout`` seconds (then ``cut_off`` ends those still running).  Then uvicorn closes the port
  and the connections, and the caller closes the workers; the process exits 0.  A second signal stops at
  once.
* Connections: each must deliver a complete request head within ``header_timeout`` seconds of opening
  or of its previous answer, and the unread rest of a body within the same time after the answer, else
  it is closed (uvicorn alone keeps a connection that sends nothing, or dribbles its bytes, open for
  ever).  An idle keep-alive connection closes after uvicorn's 5 s.  From ``max_connections`` open
  connections on, requests get uvicorn's plain 503.  Request heads: h11 buffers at most 16 KiB of an
  incomplete head beyond one read (asyncio reads up to 256 KiB); more gets a 400 and the connection closes.

* Hand-over: each request's scope carries its connection's asyncio transport in
  ``scope["extensions"][TRANSPORT]``, so that a streamed reply can be written by the worker that makes it
  (``worker._Stream.direct``) while the server waits for its end.

uvicorn is imported only when :func:`run` is called (the ``serve`` extra).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from types import FrameType

log = logging.getLogger("gpt4all_loader.cli.serve")

#: the key of a request's transport in its ASGI scope's "extensions"
TRANSPORT = "gpt4all.transport"


class Gate:
    """Whether the server takes new work, and how many requests it is answering.  A graceful shutdown
    closes it and waits until no request is in flight."""

    def __init__(self) -> None:
        self.open = True
        self.in_flight = 0

    async def drain(self, timeout: float) -> bool:
        """Close, then wait at most ``timeout`` seconds for the requests in flight; True when none is left."""
        self.open = False
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight


@dataclass(frozen=True)
class Limits:
    """The connection limits and the shutdown bound of one server (the command line's flags)."""

    header_timeout: float = 10.0
    max_connections: int = 512
    shutdown_timeout: float = 30.0


#: seconds uvicorn still gives the requests the shutdown timeout cut off, before it cancels them
CUT_OFF_GRACE = 1


def _protocol_class(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for each request head, and the transport in each request's scope."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        """Closes a connection that has not sent a whole request head ``header_timeout`` seconds after it
        opened or after its previous answer (the rest of an unread body included); uvicorn's own keep-alive
        timer restarts on every byte.  While a request is being answered the timer is off (the app bounds
        how long it waits for the body)."""

        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.our_state is h11.SEND_RESPONSE:  # a request head is in and waits for its answer
                self._stop_timer()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.our_state is h11.SEND_RESPONSE:
                # a request's app task starts at the loop's next turn, with this in its scope
                extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
                extensions[TRANSPORT] = self.transport

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.our_state is not h11.SEND_RESPONSE and not self.transport.is_closing():
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._stop_timer()
            self._head_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _stop_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeadDeadline


def run(app: Any, gate: Gate, *, host: str, port: int, limits: Limits, cut_off: Callable[[], object]) -> None:
    """Serve ``app`` until a signal, then shut down gracefully (the module's docstring says how);
    ``cut_off()`` makes the requests still running after the shutdown timeout end now."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        drain_task: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn's own handler stops listening at once and raises the signal again at the end (exit
            # status 128+sig); here the port stays open while the requests in flight finish, and the exit is 0
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:  # not serving yet
                loop = None
            if not gate.open or self.should_exit:  # a second signal: stop now
                log.info("%s again: stopping now", signal.Signals(sig).name)
                self.should_exit = self.force_exit = True
                if loop is not None:
                    loop.call_soon_threadsafe(cut_off)
                return
            gate.open = False  # /health answers 503 from now on
            if loop is None:
                self.should_exit = True
                return
            log.info("%s: shutting down; %d request(s) in flight get at most %g s to finish",
                     signal.Signals(sig).name, gate.in_flight, limits.shutdown_timeout)
            loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self) -> None:
            self.drain_task = asyncio.get_running_loop().create_task(self._drain())

        async def _drain(self) -> None:
            if not await gate.drain(limits.shutdown_timeout):
                log.warning("shutting down: %d request(s) still running after %g s are cut off", gate.in_flight,
                            limits.shutdown_timeout)
                cut_off()
                await gate.drain(CUT_OFF_GRACE)
            self.should_exit = True

    # lifespan off: the app has no startup or shutdown events (the caller closes the workers after run())
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", lifespan="off",
                            http=_protocol_class(limits.header_timeout), limit_concurrency=limits.max_connections,
                            timeout_graceful_shutdown=CUT_OFF_GRACE)
    GracefulServer(config).run()
