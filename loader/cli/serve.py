"""gpt4all-serve: an OpenAI-compatible HTTP server over model files of every era.

    gpt4all-serve PATH... [--host 127.0.0.1] [--port 4891] [--api-key KEY] [--max-loaded N]
                          [--memory-budget MIB] [--chat-template [MODEL=]NAME|FILE]... [--no-metrics]
                          [--max-body-bytes N] [--body-timeout S] [--header-timeout S]
                          [--max-connections N] [--shutdown-timeout S]

Files are found and judged the way ``gpt4all-probe`` does; the model id is the file name.  Each loaded
model runs in its own worker process (``load(..., isolated=True)``), so a native crash fails one request
and the model loads again on the next one.  A worker decodes up to ``--parallel`` requests of its model
together (continuous batching, in eras whose engine has sequences; else one at a time); the others wait
first come, first served; different models run at the same time.  Models load on first use; at most
``--max-loaded`` stay loaded and the sum of the probe's RAM+VRAM estimates stays under
``--memory-budget``: the least recently used idle model is unloaded first.

Streamed replies: once the first piece is made and the status sent, the worker writes the pieces of a
one-choice stream to the client's connection itself (HTTP/1.1 chunks; ``worker._Stream.direct``), and
the server writes the last chunks when it ends, so the server process does nothing per token.  Streams of
several choices, of tool calls (held back until read), and to HTTP/1.0 clients go through the server.

Chat works on every file: its own template, else the one GPT4All published for it, else
``--chat-template`` (for all models, or ``MODEL=`` one), else ChatML.  ``/v1/models`` and each reply's
``system_fingerprint`` name the template a model uses.

Operations: ``GET /health`` is the readiness probe (503 once a graceful shutdown began), ``GET /livez``
the liveness probe, ``GET /metrics`` Prometheus' (:mod:`.metrics`, read from the pool when scraped); the
graceful shutdown and the limits on connections and slow clients are :mod:`.lifecycle`'s; bodies are
bounded by ``--max-body-bytes`` (413) and ``--body-timeout`` (408) here.

Starlette, uvicorn and prometheus-client come with the ``serve`` extra and are imported only when the
server runs, so the core package keeps its small dependency set.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import enum
import hmac
import json
import logging
import math
import os
import signal
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Final

from ..errors import BackendError, ContextLengthError, ModelClosedError, UnsupportedModelError
from . import replies
from .lifecycle import TRANSPORT, Gate, Limits, run
from .metrics import EventCounts, ModelState, PoolEvent

if TYPE_CHECKING:  # pragma: no cover
    from ..sampling import GenerationStats
    from .metrics import ServerMetrics

log = logging.getLogger("gpt4all_loader.cli.serve")

#: largest request body read (--max-body-bytes; a longer one gets 413, read no further than the limit)
MAX_BODY_BYTES = 1 << 20
#: seconds a client has to send its whole request body (--body-timeout; then 408)
BODY_TIMEOUT = 30.0
#: largest max_tokens a request may ask for (the context bounds it further)
MAX_TOKENS = 8192
#: max_tokens when a request gives none: OpenAI's default for completions; chat replies run longer
DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 512}
#: stop strings: at most this many, each at most this long (OpenAI allows 4)
MAX_STOP, MAX_STOP_CHARS = 4, 256
#: embeddings: at most this many inputs per request
MAX_INPUTS = 256
#: seconds a worker may stay silent before it counts as hung (then killed, and the request fails)
WORKER_TIMEOUT = 300.0


class _Sentinel(enum.Enum):
    """The end of a stream for ``next(it, _END)``: an enum member, so that ``is _END`` narrows types."""

    END = "end"


_END: Final = _Sentinel.END


class ApiError(Exception):
    """An OpenAI error object with its HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _engine_error(model_id: str, e: BaseException) -> ApiError:
    """What a Model call raised, as the OpenAI error a client gets."""
    if isinstance(e, (ValueError, UnsupportedModelError)):  # the prompt or conversation does not fit the model
        code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
        return ApiError(400, f"{model_id}: {e}", code=code)
    if isinstance(e, (BackendError, ModelClosedError)):
        return ApiError(500, f"{model_id}: {e}; it loads again on the next request", type="server_error",
                        code="worker_failed")
    return ApiError(500, f"{model_id}: {type(e).__name__}: {e}", type="server_error")


# ------------------------------------------------------------------------------------------------
# Models and workers

@dataclass
class Entry:
    """One servable file."""

    id: str
    path: str
    memory_mib: float
    #: the template chat uses, and why ("file", "gpt4all:<name>", "user:<name or path>", "default:chatml")
    chat_template: str
    created: int
    waiting: int = 0
    #: the --chat-template given for this model (load()'s chat_template), None when none was
    template_spec: str | None = None
    #: a sentence-embedding file (BERT): /v1/embeddings only, its texts embedded in overlapping windows
    embedding_only: bool = False
    #: generations its worker decodes together (--parallel where the engine batches, else 1: a queue)
    parallel: int = 1


@dataclass
class Slot:
    """One worker of an entry: generation and embeddings load separately (embeddings=True changes the engine)."""

    entry: Entry
    embeddings: bool
    model: Any = None
    loading: bool = False
    #: requests running on this worker now (up to its entry's ``parallel``)
    busy: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return self.entry.id + (" (embeddings)" if self.embeddings else "")

    @property
    def held(self) -> bool:
        """Counts against --max-loaded and --memory-budget."""
        return self.loading or (self.model is not None and self.model.alive)


def parse_chat_templates(specs: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--chat-template`` values: (the one for every model, {model id: its own}); a value whose part
    before ``=`` is a model file name (a known extension) is per model, anything else a NAME or FILE.
    Each is checked here (a built-in name or a readable Jinja file), so a typo stops the server at once."""
    from ..chat import user_template
    from .probe import MODEL_EXTENSIONS

    every: str | None = None
    per_model: dict[str, str] = {}
    for spec in specs:
        model, eq, template = spec.partition("=")
        if eq and os.path.splitext(model)[1].lower() in MODEL_EXTENSIONS and not os.path.exists(spec):
            user_template(template)
            per_model[model] = template
        else:
            user_template(spec)
            every = spec
    return every, per_model


def discover(paths: list[str], templates: tuple[str | None, dict[str, str]] = (None, {}),
             published_table: str | None = None, parallel: int | None = 1,
             n_ctx: int | None = None) -> tuple[dict[str, Entry], list[str]]:
    """({model id: Entry}, [log line for each path that is not served]) found like gpt4all-probe does;
    ``templates`` is :func:`parse_chat_templates`'s answer.  Memory is estimated for ``parallel``
    sequences where the model's engine batches them (each has its own context window of ``n_ctx`` tokens,
    default the file's :func:`~gpt4all_loader.plan.default_n_ctx`); ``parallel=None``:
    :data:`AUTO_PARALLEL` where all of them fit in half of this machine's memory, else fewer."""
    from ..chat import resolve_template
    from ..engines.manifest import load_manifest
    from ..memory import estimate
    from ..plan import sequences
    from ..model import EMBEDDING_ONLY
    from ..probing import probe
    from .probe import _main_reason, expand

    entries: dict[str, Entry] = {}
    skipped: list[str] = []
    for path, error in expand(paths):
        if error:
            skipped.append(f"not served: {error}")
            continue
        rep = probe(path, published_table=published_table, estimate_ctx=n_ctx)
        name = os.path.basename(path)
        if rep.error or not rep.loadable or not rep.ready:
            why = rep.error or (rep.suggestion if rep.loadable else _main_reason(rep)) or "no backend loads it"
            skipped.append(f"not served: {path}: {why}")
            continue
        if name in entries:
            skipped.append(f"not served: {path}: model id {name} is taken by {entries[name].path}")
            continue
        mem = rep.memory  # planned for the context load() gives the file, which the workers load with
        mib = (mem["ram_bytes"] + mem["vram_bytes"]) / (1 << 20) if mem else 0.0
        spec = templates[1].get(name, templates[0])
        assert rep.facts is not None  # a report without error has its facts
        n_seq = sequences(rep.backend or "", AUTO_PARALLEL if parallel is None else parallel)
        if rep.architecture in EMBEDDING_ONLY or not rep.n_ctx:
            n_seq = 1
        while n_seq > 1:   # one cache for every sequence
            est = estimate(rep.facts, ctx_size=(rep.n_ctx or 0) * n_seq, era=load_manifest()[rep.backend or ""].era)
            need = (est["ram_bytes"] + est["vram_bytes"]) / (1 << 20)
            if parallel is not None or need <= _machine_mib() / 2:
                mib = max(mib, need)
                break
            n_seq //= 2
        source = resolve_template(path, rep.facts, spec, published_table).source
        entries[name] = Entry(name, path, mib, source, int(os.stat(path).st_mtime), template_spec=spec,
                              embedding_only=rep.architecture in EMBEDDING_ONLY, parallel=n_seq)
    return entries, skipped


#: --parallel's default: llama-server's and ollama's automatic choice, when memory allows
AUTO_PARALLEL = 4


def _machine_mib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 20)


class Pool:
    """Loaded workers, the per-model queues, and the LRU unloading under the limits."""

    def __init__(self, entries: dict[str, Entry], *, max_loaded: int, memory_budget_mib: float | None,
                 worker_timeout: float = WORKER_TIMEOUT, n_threads: int | None = None,
                 published_table: str | None = None, n_ctx: int | None = None) -> None:
        self.entries = entries
        self.published_table = published_table
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.max_loaded = max_loaded
        self.budget = memory_budget_mib
        self.worker_timeout = worker_timeout
        #: per model: requests wait here for a free sequence of its worker (and for its load)
        self.turns = {k: asyncio.Condition() for k in entries}
        self.slots: dict[tuple[str, bool], Slot] = {}
        self.changed = asyncio.Condition()
        #: loads, unloads, load failures and worker crashes by model, as /metrics counts them
        self.events: EventCounts = collections.Counter()

    def entry(self, model_id: Any) -> Entry:
        if not isinstance(model_id, str) or not model_id:
            raise ApiError(400, "'model' is required: one of the ids GET /v1/models lists", param="model")
        e = self.entries.get(model_id)
        if e is None:
            raise ApiError(404, f"the model {model_id!r} does not exist; GET /v1/models lists the models served",
                           param="model", code="model_not_found")
        return e

    def model_state(self, entry: Entry) -> ModelState:
        """What /health and /metrics report for ``entry``, read from the queue when they ask: one request
        at a time holds the model's lock (loading it or running), the others wait in ``entry.waiting``."""
        workers = [s for s in self.slots.values() if s.entry is entry]
        return ModelState(entry.id, mode="batch" if entry.parallel > 1 else "queue", slots=entry.parallel,
                          busy_slots=sum(s.busy for s in workers), waiting=entry.waiting,
                          loaded=any(s.model is not None and s.model.alive for s in workers))

    async def acquire(self, entry: Entry, embeddings: bool) -> Slot:
        """Wait for a free sequence of this model's worker (the first request loads it), and take it; pair
        with :meth:`release`.  A batching worker runs ``entry.parallel`` requests together, others one."""
        slot = self.slots.setdefault((entry.id, embeddings), Slot(entry, embeddings))
        turn = self.turns[entry.id]
        capacity = 1 if embeddings else entry.parallel

        def ready() -> bool:
            loaded = slot.model is not None and slot.model.alive
            return not slot.loading and (slot.busy == 0 or (loaded and slot.busy < capacity))
        entry.waiting += 1
        try:
            async with turn:
                await turn.wait_for(ready)
                slot.busy += 1
                load = slot.model is None or not slot.model.alive
                if load:
                    slot.loading = True   # the others wait for this load
        finally:
            entry.waiting -= 1
        try:
            if load:  # never loaded, unloaded, or its worker died idle
                if slot.model is not None:
                    log.info("%s: %s; loading it again", entry.id, slot.model.why_closed or "its worker is gone")
                    self.events[PoolEvent.WORKER_CRASH, entry.id] += 1
                    slot.model.close()
                slot.model = None
                await self._load(slot)
            return slot
        except BaseException:
            import anyio

            with anyio.CancelScope(shield=True):  # whoever waits for room must see this slot give it back
                await self.release(slot)
            raise
        finally:
            if load:
                slot.loading = False
                async with turn:
                    turn.notify_all()

    async def release(self, slot: Slot) -> None:
        slot.busy -= 1
        slot.last_used = time.monotonic()
        if slot.model is not None and slot.model.closed:  # its worker died: load again next time
            slot.model = None
            self.events[PoolEvent.WORKER_CRASH, slot.entry.id] += 1
        async with self.turns[slot.entry.id]:
            self.turns[slot.entry.id].notify_all()
        async with self.changed:
            self.changed.notify_all()

    def _over(self, slot: Slot) -> bool:
        held = [s for s in self.slots.values() if s.held and s is not slot]
        if len(held) + 1 > self.max_loaded:
            return True
        return self.budget is not None and sum(s.entry.memory_mib for s in held) + slot.entry.memory_mib > self.budget

    async def _load(self, slot: Slot) -> None:
        import anyio

        from .. import load

        async with self.changed:
            while self._over(slot):
                idle = sorted((s for s in self.slots.values() if s.held and not s.busy and not s.loading
                               and s is not slot), key=lambda s: s.last_used)
                if idle:
                    victim = idle[0]
                    log.info("unloading %s (least recently used) to make room for %s", victim.label, slot.label)
                    model, victim.model = victim.model, None
                    self.events[PoolEvent.UNLOAD, victim.entry.id] += 1
                    await anyio.to_thread.run_sync(model.close)
                else:
                    await self.changed.wait()  # every loaded model is busy: wait for one to finish
        try:
            t0 = time.monotonic()
            slot.model = await anyio.to_thread.run_sync(lambda: load(
                slot.entry.path, isolated=True, embeddings=slot.embeddings, worker_timeout=self.worker_timeout,
                n_threads=self.n_threads, n_ctx=self.n_ctx, chat_template=slot.entry.template_spec,
                published_table=self.published_table, parallel=1 if slot.embeddings else slot.entry.parallel))
            log.info("loaded %s in %.1f s (worker pid %d, %s/%s)", slot.label, time.monotonic() - t0, slot.model.pid,
                     slot.model.info.backend, slot.model.info.variant)
            self.events[PoolEvent.LOAD, slot.entry.id] += 1
        except Exception as e:  # noqa: BLE001 - a file that fails to load fails its request, clearly
            self.events[PoolEvent.LOAD_FAILURE, slot.entry.id] += 1
            raise ApiError(500, f"{slot.entry.id}: cannot load it: {e}", type="server_error",
                           code="load_failed") from None

    def kill_busy(self) -> None:
        """Kill the workers of the requests still running, when a shutdown cannot wait longer: each of those
        requests fails at once naming SIGKILL, instead of holding the exit until its worker times out."""
        for s in self.slots.values():
            if s.busy and s.model is not None and s.model.alive:  # alive: not yet reaped, so the pid is its own
                log.warning("%s: killing its worker (pid %d) to end the request it runs", s.label, s.model.pid)
                os.kill(s.model.pid, signal.SIGKILL)

    def close_all(self) -> None:
        for s in self.slots.values():
            if s.model is not None:
                s.model.close()
                s.model = None


# ------------------------------------------------------------------------------------------------
# Request parameters

def _body_int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be an integer from {lo} to {hi}, not {v!r}", param=key)
    return v


def _float(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be a number from {lo:g} to {hi:g}, not {v!r}", param=key)
    return float(v)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    seq = [v] if isinstance(v, str) else v
    if not isinstance(seq, list) or len(seq) > MAX_STOP or \
            not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in seq):
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOP} non-empty strings of at most "
                            f"{MAX_STOP_CHARS} characters", param="stop")
    return tuple(seq)


def _bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if not isinstance(v, bool) and v is not None:
        raise ApiError(400, f"'{key}' must be true or false, not {v!r}", param=key)
    return bool(v)


def generation_params(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """Model.generate() keywords from an OpenAI request (400 for anything out of range); the rest of the
    sampling fields are :func:`replies.sampling_params`'s."""
    seed = _body_int(body, "seed", None, -(2**63), 2**64 - 1)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return dict(
        max_tokens=_body_int({"max_tokens": max_tokens}, "max_tokens", DEFAULT_MAX_TOKENS[kind], 1, MAX_TOKENS),
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0),
        seed=None if seed is None else seed & 0xFFFFFFFFFFFFFFFF,
        stop=_stop(body))


def _prompt(body: dict[str, Any]) -> str | list[int]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in p):
        return p
    raise ApiError(400, "'prompt' must be a string (or a list of one string, or a list of token ids)", param="prompt")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation: {role, content} messages, and the calls and results of tools (an assistant message's
    ``tool_calls``, with content null; a ``tool`` message's ``tool_call_id``)."""
    ms = body.get("messages")
    if not isinstance(ms, list) or not ms:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(ms):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role'", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # the content-parts form: only text parts are understood
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            content = "".join(c["text"] for c in content)
        calls = m.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise ApiError(400, f"messages[{i}].tool_calls must be a list of calls", param="messages")
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
        msg: dict[str, Any] = {"role": m["role"], "content": content}
        if calls:
            msg["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


# ------------------------------------------------------------------------------------------------
# The application

#: the routes /metrics names (any other path counts as "other", so a scan of paths adds no series)
ROUTES = ("/health", "/livez", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings")


def create_app(pool: Pool, *, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               body_timeout: float = BODY_TIMEOUT, metrics: bool = True, gate: Gate | None = None) -> Any:
    """The Starlette application over ``pool``; ``gate`` says whether it takes new work (a graceful
    shutdown closes it), ``metrics`` adds ``GET /metrics``."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    key = api_key.encode() if api_key else None
    gate = gate or Gate()
    recorder: ServerMetrics | None = None
    if metrics:
        from .metrics import ServerMetrics

        recorder = ServerMetrics(lambda: [pool.model_state(e) for e in pool.entries.values()], pool.events)

    def error_response(e: ApiError) -> Response:
        return JSONResponse(e.body(), status_code=e.status)

    def check_key(request: Request) -> None:
        if key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
        if not hmac.compare_digest(given, key):  # constant time: the key is not guessable byte by byte
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                           type="authentication_error", code="invalid_api_key")

    async def read_json(request: Request) -> dict[str, Any]:
        """The body as a JSON object, read no further than ``max_body_bytes`` and for no longer than
        ``body_timeout`` seconds (else 413 or 408; the rest is never read: :class:`_Requests` closes)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise ApiError(413, f"the request body has {declared} bytes; at most {max_body_bytes} are read",
                           code="request_too_large")
        data = bytearray()
        try:
            with anyio.fail_after(body_timeout):
                async for chunk in request.stream():
                    data += chunk
                    if len(data) > max_body_bytes:
                        raise ApiError(413, f"the request body exceeds {max_body_bytes} bytes",
                                       code="request_too_large")
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {body_timeout:g} s (it had "
                                f"{len(data)} bytes)", code="request_timeout") from None
        except ClientDisconnect:
            raise ApiError(400, "the client closed the connection before its body ended") from None
        try:
            body = json.loads(bytes(data))
        except ValueError as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def api(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                check_key(request)
                if not gate.open:
                    raise ApiError(503, "the server is shutting down; send the request again (to another "
                                        "replica)", type="server_error", code="shutting_down")
                return await handler(request)
            except Exception as e:  # noqa: BLE001 - every failure answers with an OpenAI error object
                err = e if isinstance(e, ApiError) else ApiError(
                    500, f"internal error: {type(e).__name__}: {e}", type="server_error")
                if not isinstance(e, ApiError):
                    log.exception("internal error on %s %s", request.method, request.url.path)
                request.scope.setdefault("state", {})["error"] = err.message
                return error_response(err)
        return wrapped

    async def health(request: Request) -> Response:
        """Readiness: 200 while the server takes work, 503 once a graceful shutdown began."""
        loaded = [{"id": s.entry.id, "embeddings": s.embeddings, "pid": s.model.pid, "busy": s.busy,
                   "queued": s.entry.waiting} for s in pool.slots.values() if s.model is not None and s.model.alive]
        states = [dataclasses.asdict(pool.model_state(e)) for e in pool.entries.values()]
        return JSONResponse({"status": "ok" if gate.open else "shutting_down", "models": len(pool.entries),
                             "loaded": loaded, "model_states": states}, status_code=200 if gate.open else 503)

    async def livez(request: Request) -> Response:
        """Liveness: 200 while the event loop answers, shutting down or not."""
        return JSONResponse({"status": "alive"})

    async def metrics_route(request: Request) -> Response:
        assert recorder is not None
        body, content_type = recorder.exposition(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": e.id, "object": "model", "created": e.created, "owned_by": "gpt4all-loader",
             "chat_template": e.chat_template}
            for e in pool.entries.values()]})

    async def completions(request: Request) -> Response:
        return await _generate(request, "completion")

    async def chat_completions(request: Request) -> Response:
        return await _generate(request, "chat")

    def record(model_id: str, stats: GenerationStats | None, first_token_s: float | None) -> None:
        if recorder is not None:
            recorder.generation(model_id, stats, first_token_s)

    async def _generate(request: Request, kind: str) -> Response:
        t0 = time.monotonic()
        body = await read_json(request)
        entry = pool.entry(body.get("model"))
        request.scope.setdefault("state", {})["model"] = entry.id
        if entry.embedding_only:
            raise ApiError(400, f"{entry.id}: this model only embeds (a sentence-embedding file has no next-token "
                                f"logits and generates no text); use /v1/embeddings", param="model",
                           code="model_only_embeds")
        try:
            params = generation_params(body, kind) | replies.sampling_params(body, kind)
            extra = replies.chat_params(body) if kind == "chat" else {}
        except replies.RequestError as e:
            raise ApiError(400, str(e), param=e.param) from None
        n = _body_int(body, "n", 1, 1, replies.MAX_CHOICES)
        assert n is not None
        stream = _bool(body, "stream")
        opts = body.get("stream_options") or {}
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        if kind == "chat":
            messages = _messages(body)
        else:
            prompt = _prompt(body)
        tools = kind == "chat" and "tools" in extra and extra.get("tool_choice") != "none"
        slot = await pool.acquire(entry, False)
        model = slot.model
        # a batching model runs the n choices together; one that runs a generation at a time, one after another
        together = model.info.parallel > 1

        def start(i: int) -> Any:
            p = dict(params)
            if i and p.get("seed") is not None:   # n choices: n different samples of one seed
                p["seed"] = (p["seed"] + i) & 0xFFFFFFFFFFFFFFFF
            return model.chat(messages, stream=True, **extra, **p) if kind == "chat" else \
                model.generate(prompt, stream=True, **p)

        choices = [replies.Choice(i, kind, logprobs=bool(params.get("logprobs")), tools=tools) for i in range(n)]
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        # which engine answered, and for chat which template rendered the conversation
        fingerprint = f"{model.info.backend}/{model.info.variant}" + \
            (f"; chat_template={model.chat_template_source}" if kind == "chat" else "")
        obj = ("chat.completion" if kind == "chat" else "text_completion") + (".chunk" if stream and kind == "chat"
                                                                               else "")
        # every chunk is this object with one choice: its JSON up to the choice is written once
        head = replies.sse_head({"id": rid, "object": obj, "created": created, "model": entry.id,
                                 "system_fingerprint": fingerprint})
        # one streamed choice whose pieces go out as they come: the worker writes them to the connection itself
        transport = request.scope.get("extensions", {}).get(TRANSPORT)
        connection = transport.get_extra_info("socket") if transport is not None else None
        direct = stream and n == 1 and not tools and connection is not None and \
            request.scope.get("http_version") == "1.1"
        its: list[Any] = []
        try:
            if kind == "completion" and not isinstance(prompt, str) and max(prompt) >= model.n_vocab:
                raise ApiError(400, f"{entry.id}: token id {max(prompt)} in 'prompt' is out of range; the "
                                    f"vocabulary has {model.n_vocab} tokens", param="prompt")
            # the first piece of each choice that starts now, so that a request the model refuses gets its status
            its = [start(i) for i in range(n if together else 1)]
            direct = direct and hasattr(its[0], "direct")
            if direct:
                its[0].direct(replies.WireChunks(choices[0], head))
            firsts = await _firsts(its)
            first_token_s = None if firsts[0] is _END else time.monotonic() - t0
        except BaseException as e:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close_all, its)
                await pool.release(slot)
            if isinstance(e, Exception) and not isinstance(e, ApiError):
                raise _engine_error(entry.id, e) from None
            raise
        stats: list[GenerationStats | None] = [None] * n

        def usage() -> dict[str, int]:
            done = [g for g in stats if g is not None]
            p = done[0].prompt_tokens if done else 0
            c = sum(g.completion_tokens for g in done)
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

        async def pieces(i: int) -> AsyncGenerator[Any, None]:
            """Choice i's pieces, read in the event loop (the worker's reader thread wakes it per piece), then
            _END; its stats are recorded as it ends."""
            if i >= len(its):
                its.append(start(i))
                first = (await _firsts([its[i]]))[0]
            else:
                first = firsts[i]
            if first is not _END:
                yield first
                async for piece in its[i]:
                    yield piece
            stats[i] = its[i].stats
            record(entry.id, stats[i], first_token_s if i == 0 else None)
            yield _END

        async def merged() -> AsyncGenerator[tuple[int, Any], None]:
            """(choice, piece) of every choice: one after another, or, on a batching model, as they come."""
            if not together or n == 1:
                for i in range(n):
                    async for piece in pieces(i):
                        yield i, piece
                return
            send, receive = anyio.create_memory_object_stream[tuple[int, Any]](max_buffer_size=math.inf)

            async def run(i: int) -> None:
                async for piece in pieces(i):
                    await send.send((i, piece))

            async def run_all() -> None:
                try:
                    async with anyio.create_task_group() as tg:
                        for i in range(n):
                            tg.start_soon(run, i)
                except BaseException as e:  # noqa: BLE001 - handed to the reader below
                    await send.send((-1, _unwrap(e)))
                finally:
                    send.close()

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_all)
                async with receive:
                    async for i, piece in receive:
                        if i < 0:
                            raise piece
                        yield i, piece

        if not stream:
            try:
                async with contextlib.aclosing(merged()) as all_pieces:
                    async for i, piece in all_pieces:
                        if piece is not _END:
                            choices[i].add(piece)
            except BaseException as e:  # noqa: BLE001
                raise _engine_error(entry.id, _unwrap(e)) from None
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_close_all, its)
                    await pool.release(slot)
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": entry.id,
                                 "system_fingerprint": fingerprint,
                                 "choices": [c.gathered(stats[c.index]) for c in choices], "usage": usage()})

        def chunk(choice: dict[str, Any]) -> str:
            return replies.sse_chunk(head, choice)

        async def handed_over() -> AsyncGenerator[str, None]:
            """A direct stream: its worker writes its pieces while this waits for its end (a client that goes
            away cancels this, as any stream, which cancels it there)."""
            it = its[0]
            if firsts[0] is not _END:
                assert connection is not None   # a direct stream has one
                while transport.get_write_buffer_size():  # what was sent before goes out first
                    await asyncio.sleep(0.01)
                it.attach(connection.fileno())
                async for _ in it:
                    pass
            stats[0] = it.stats
            record(entry.id, stats[0], first_token_s)
            for end in choices[0].last_chunks(stats[0]):
                yield chunk(end)

        async def served() -> AsyncGenerator[str, None]:
            """The pieces of every choice, made into chunks here."""
            async with contextlib.aclosing(merged()) as all_pieces:
                async for i, piece in all_pieces:
                    if piece is _END:
                        for end in choices[i].last_chunks(stats[i]):
                            yield chunk(end)
                    else:
                        delta = choices[i].add(piece)
                        if delta is not None:
                            yield chunk(delta)

        async def events() -> AsyncIterator[str]:
            try:
                if kind == "chat":
                    for ch in choices:
                        yield chunk({"index": ch.index, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None})
                async with contextlib.aclosing(handed_over() if direct else served()) as chunks:
                    async for text in chunks:
                        yield text
                if include_usage:
                    yield _sse({"id": rid, "object": obj, "created": created, "model": entry.id, "choices": [],
                                "usage": usage()})
                yield "data: [DONE]\n\n"
            except Exception as e:  # noqa: BLE001 - the status is sent: the error goes in the stream
                err = _engine_error(entry.id, e)
                request.scope.setdefault("state", {})["error"] = err.message
                yield _sse(err.body())
            finally:
                with anyio.CancelScope(shield=True):  # a client that went away still frees the model
                    await anyio.to_thread.run_sync(_close_all, its)
                    await pool.release(slot)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def embeddings(request: Request) -> Response:
        body = await read_json(request)
        entry = pool.entry(body.get("model"))
        request.scope.setdefault("state", {})["model"] = entry.id
        if _bool(body, "stream"):
            raise ApiError(400, "embeddings do not stream; leave 'stream' out", param="stream")
        inp = body.get("input")
        texts = [inp] if isinstance(inp, str) else inp
        if not isinstance(texts, list) or not texts or len(texts) > MAX_INPUTS or \
                not all(isinstance(t, str) for t in texts):
            raise ApiError(400, f"'input' must be a string or a list of 1 to {MAX_INPUTS} strings", param="input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        slot = await pool.acquire(entry, True)
        model = slot.model

        def run() -> tuple[list[list[float]], int]:
            n_tokens = 0
            vectors = []
            for t in texts:
                n = len(model.tokenize(t))
                if n >= model.n_ctx and not entry.embedding_only:  # those embed a long text window by window
                    raise ContextLengthError(f"input has {n} tokens; the context holds {model.n_ctx}")
                n_tokens += n
                vectors.append(model.embed(t))
            return vectors, n_tokens

        try:
            vectors, n_tokens = await anyio.to_thread.run_sync(run)
        except Exception as e:  # noqa: BLE001
            raise _engine_error(entry.id, e) from None
        finally:
            await pool.release(slot)
        return JSONResponse({"object": "list", "model": entry.id,
                             "data": [{"object": "embedding", "index": i,
                                       "embedding": v if encoding == "float" else _base64_floats(v)}
                                      for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    async def bad_method(request: Request, exc: Exception) -> Response:
        return error_response(ApiError(405, f"{request.method} is not allowed on {request.url.path}"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/v1/models", api(models), methods=["GET"]),
        Route("/v1/completions", api(completions), methods=["POST"]),
        Route("/v1/chat/completions", api(chat_completions), methods=["POST"]),
        Route("/v1/embeddings", api(embeddings), methods=["POST"]),
    ]
    if recorder is not None:
        routes.append(Route("/metrics", metrics_route, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})
    app.state.pool = pool
    return _Requests(app, gate, recorder)


async def _firsts(its: list[Any]) -> list[Any]:
    """The first piece of each stream (_END for an empty one), fetched at once when there are several: in the
    event loop from a worker's stream (no thread hop before the first token), else in a thread."""
    import anyio

    firsts: list[Any] = [_END] * len(its)

    async def first(i: int) -> None:
        it = its[i]
        if hasattr(it, "__anext__"):
            try:
                firsts[i] = await it.__anext__()
            except StopAsyncIteration:
                pass
        else:
            firsts[i] = await anyio.to_thread.run_sync(next, it, _END)

    if len(its) == 1:
        await first(0)
    else:
        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(its)):
                    tg.start_soon(first, i)
        except BaseExceptionGroup as group:   # the first stream's error, as one stream would raise it
            raise _unwrap(group) from None
    return firsts


def _close_all(its: list[Any]) -> None:
    for it in its:
        it.close()


def _unwrap(e: BaseException) -> BaseException:
    """The first real error inside a task group's ExceptionGroup."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def _base64_floats(v: list[float]) -> str:
    """OpenAI's compact encoding (the openai client asks for it): little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii")


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Requests:
    """ASGI middleware: one log line per request, written when its response (stream included) ends; the
    count of requests in flight (a graceful shutdown waits for them); their metrics.  The connection ends
    with the answer when the request's body was not read to its end and is chunked (it may never end) or
    too slow (408), and while the server shuts down (the client reconnects, to another replica).  The rest
    of a body with a Content-Length is read and dropped after the answer (uvicorn does it), so that a client
    that sends its whole body before it reads gets the answer; :mod:`.lifecycle` bounds that in time."""

    def __init__(self, app: Any, gate: Gate, metrics: ServerMetrics | None) -> None:
        self.app, self.gate, self.metrics = app, gate, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        status = [0]
        headers = dict(scope["headers"])
        chunked = b"transfer-encoding" in headers
        body_read = [not chunked and headers.get(b"content-length", b"0") in (b"0", b"")]

        async def receive_body() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read[0] = True
            return message

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if (not body_read[0] and (chunked or status[0] == 408)) or not self.gate.open:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        state = scope.setdefault("state", {})
        self.gate.in_flight += 1
        try:
            await self.app(scope, receive_body, send_status)
        finally:
            self.gate.in_flight -= 1
            seconds = time.monotonic() - t0
            client = scope.get("client") or ("-", 0)
            extra = "".join(f" {k}={state[k]!r}" for k in ("model", "error") if k in state)
            log.info("%s %s %s %d %.3fs%s", client[0], scope["method"], scope["path"], status[0], seconds, extra)
            if self.metrics is not None:
                route = scope["path"] if scope["path"] in ROUTES else "other"
                self.metrics.request(route, state.get("model", ""), status[0], seconds)


# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gpt4all-serve",
        description="Serve model files of every era over an OpenAI-compatible HTTP API, each model in its own "
                    "worker process.")
    ap.add_argument("paths", nargs="+", metavar="PATH", help="model files or directories (searched recursively)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=4891, help="TCP port (default 4891, as the GPT4All app)")
    ap.add_argument("--api-key", default=None, metavar="KEY",
                    help="require 'Authorization: Bearer KEY' on /v1 routes (default: env GPT4ALL_API_KEY, if set)")
    ap.add_argument("--max-loaded", type=int, default=2, metavar="N", help="models loaded at once (default 2)")
    ap.add_argument("--memory-budget", type=float, default=None, metavar="MIB",
                    help="keep the sum of the loaded models' RAM+VRAM estimates under MIB (default: no limit)")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="CPU threads per model (default: the engine's own choice)")
    ap.add_argument("--ctx-size", type=int, default=None, metavar="N",
                    help="context of each request slot, in tokens (default: the file's training context, at most "
                         "4096; 2048 for ggml-era LLaMA files)")
    ap.add_argument("--parallel", type=int, default=None, metavar="N",
                    help=f"requests per model decoded together (continuous batching), each with its own context; "
                         f"models whose engine has no batches (ggml/ggjt files, 2023 GPT-J/MPT) take one at a time "
                         f"(default: {AUTO_PARALLEL} where their caches fit in half of this machine's memory, "
                         f"else fewer)")
    ap.add_argument("--chat-template", action="append", default=[], metavar="[MODEL=]NAME|FILE",
                    help="chat template for files that carry none and are not in GPT4All's published list: a "
                         "built-in (chatml, llama2, alpaca, vicuna) or a file of Jinja text; MODEL=... for one "
                         "model (repeatable; default: chatml)")
    ap.add_argument("--published-table", default=None, metavar="FILE",
                    help="a list of published files in the format of the packaged gpt4all_published.json, "
                         "used instead of it")
    ops = ap.add_argument_group("operations")
    ops.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                     help="serve Prometheus metrics on GET /metrics; like /health it needs no key (default: on)")
    ops.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, metavar="N",
                     help=f"largest request body read; a larger one gets 413 (default {MAX_BODY_BYTES})")
    ops.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT, metavar="S",
                     help=f"seconds a client has to send its request body, else 408 (default {BODY_TIMEOUT:g})")
    ops.add_argument("--header-timeout", type=float, default=Limits.header_timeout, metavar="S",
                     help="seconds a connection has to send a request's headers after it opens or after its "
                          f"previous answer, else it is closed (default {Limits.header_timeout:g})")
    ops.add_argument("--max-connections", type=int, default=Limits.max_connections, metavar="N",
                     help=f"requests get 503 while this many connections are open (default {Limits.max_connections})")
    ops.add_argument("--shutdown-timeout", type=float, default=Limits.shutdown_timeout, metavar="S",
                     help="on SIGTERM or SIGINT, seconds the requests in flight get to finish while new work "
                          f"gets 503 (default {Limits.shutdown_timeout:g}); a second signal stops at once")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.max_loaded < 1:
        print("gpt4all-serve: --max-loaded must be at least 1", file=sys.stderr)
        return 2
    if args.parallel is not None and not 1 <= args.parallel <= 256:
        print("gpt4all-serve: --parallel must be from 1 to 256", file=sys.stderr)
        return 2
    if args.memory_budget is not None and args.memory_budget <= 0:
        print("gpt4all-serve: --memory-budget must be a positive number of MiB", file=sys.stderr)
        return 2
    for flag in ("max_body_bytes", "body_timeout", "header_timeout", "max_connections", "shutdown_timeout"):
        if not getattr(args, flag) > 0:
            print(f"gpt4all-serve: --{flag.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        if args.metrics:
            import prometheus_client  # noqa: F401
    except ImportError:
        print("gpt4all-serve needs the serve extra: pip install 'gpt4all-loader[serve]'", file=sys.stderr)
        return 2
    from ..published import load_table

    try:
        templates = parse_chat_templates(args.chat_template)
        if args.published_table is not None:
            load_table(args.published_table)
    except ValueError as bad:  # ChatTemplateError is one
        print(f"gpt4all-serve: {bad}", file=sys.stderr)
        return 2
    if args.ctx_size is not None and args.ctx_size < 16:
        print("gpt4all-serve: --ctx-size must be at least 16", file=sys.stderr)
        return 2
    entries, skipped = discover(args.paths, templates, args.published_table, args.parallel, args.ctx_size)
    for model in templates[1]:
        if model not in entries:
            print(f"gpt4all-serve: --chat-template {model}=...: no model {model} is served", file=sys.stderr)
            return 2
    for line in skipped:
        log.info("%s", line)
    budget = args.memory_budget
    for e in list(entries.values()):
        if budget is not None and e.memory_mib > budget:
            log.info("not served: %s: needs about %.0f MiB, over --memory-budget %.0f MiB", e.path, e.memory_mib,
                     budget)
            del entries[e.id]
    if not entries:
        print("gpt4all-serve: no model to serve (see the reasons above)", file=sys.stderr)
        return 1
    for e in entries.values():
        log.info("serving %s (%s, about %.0f MiB, chat template %s, %s)", e.id, e.path, e.memory_mib, e.chat_template,
                 f"{e.parallel} requests together" if e.parallel > 1 else "one request at a time")
    pool = Pool(entries, max_loaded=args.max_loaded, memory_budget_mib=budget, n_threads=args.threads,
                published_table=args.published_table, n_ctx=args.ctx_size)
    # every worker's decodes share the cores: at most cores / threads at once (engines.cpu_gate)
    from ..engines import cores as engine_cores
    from ..engines import cpu_gate

    cores = len(os.sched_getaffinity(0))
    gate_dir = os.environ[cpu_gate.ENV] = cpu_gate.create(max(1, cores // (args.threads or cores)))
    # the server's own threads never preempt a decode (engines.cores); its workers keep this process's policy
    engine_cores.yield_to_decodes()
    gate = Gate()
    app = create_app(pool, api_key=args.api_key or os.environ.get("GPT4ALL_API_KEY") or None,
                     max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout, metrics=args.metrics,
                     gate=gate)
    try:
        run(app, gate, host=args.host, port=args.port, limits=Limits(
            header_timeout=args.header_timeout, max_connections=args.max_connections,
            shutdown_timeout=args.shutdown_timeout), cut_off=pool.kill_busy)
    finally:
        pool.close_all()
        import shutil

        shutil.rmtree(gate_dir, ignore_errors=True)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
