"""load(..., isolated=True): the Model API with the engine in a worker process, and its faults as errors."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest
from conftest import require_backend

from gpt4all_loader import BackendError, ContextLengthError, FormatError, ModelClosedError, UnsupportedModelError, load
from gpt4all_loader.cli.replies import Choice, WireChunks
from gpt4all_loader.formats.writer import TinyLlama, write_llama
from gpt4all_loader.worker import STREAM_WINDOW, IsolatedModel

TEMPLATE = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"
#: every worker call in these tests answers within this many seconds, or fails the test
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    require_backend("gguf-2026-10")
    p = tmp_path_factory.mktemp("iso") / "tiny.gguf"
    return write_llama(p, TinyLlama(seed=0), "gguf", version=3, chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def pair(gguf):
    """(isolated, in-process) on the same file, with embeddings."""
    iso = load(gguf, isolated=True, n_threads=1, embeddings=True, worker_timeout=TIMEOUT)
    ref = load(gguf, n_threads=1, embeddings=True)
    yield iso, ref
    iso.close()
    ref.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): read its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_same_api_same_answers(pair):
    iso, ref = pair
    assert isinstance(iso, IsolatedModel) and iso.pid != os.getpid()
    for key in ("path", "backend", "variant", "n_ctx", "n_vocab", "n_embd", "format"):
        assert getattr(iso.info, key) == getattr(ref.info, key)
    assert iso.facts.architecture == ref.facts.architecture
    text = "hello world, once upon a time"
    toks = iso.tokenize(text)
    assert toks == ref.tokenize(text) and iso.detokenize(toks) == ref.detokenize(toks)
    assert (iso.token_bos(), iso.token_eos(), iso.n_vocab, iso.n_ctx) == (ref.token_bos(), ref.token_eos(),
                                                                            ref.n_vocab, ref.n_ctx)
    for m in (iso, ref):
        m.reset()
        m.evaluate(toks)
    assert iso.n_past == ref.n_past == len(toks)
    assert iso.logits() == ref.logits()
    assert iso.embed("hello") == ref.embed("hello")
    kw = dict(max_tokens=12, temperature=0)
    assert iso.generate("hello", **kw) == ref.generate("hello", **kw)
    assert list(iso.generate_tokens("hello", **kw)) == list(ref.generate_tokens("hello", **kw))
    sampled = dict(max_tokens=12, temperature=0.8, seed=5)
    assert iso.generate("hello", **sampled) == ref.generate("hello", **sampled)
    msgs = [{"role": "user", "content": "hi"}]
    assert iso.chat(msgs, max_tokens=6, temperature=0) == ref.chat(msgs, max_tokens=6, temperature=0)


def test_streaming_stop_callback_and_cancel(pair):
    iso, ref = pair
    kw = dict(max_tokens=16, temperature=0)
    it = iso.generate("hello", stream=True, **kw)
    assert not isinstance(it, str)
    pieces = list(it)
    assert pieces == list(ref.generate("hello", stream=True, **kw))
    # the Model records what each generation did, in this process and in the worker alike
    got, want = iso.last_generation, ref.last_generation
    assert got is not None and want is not None
    assert got.completion_tokens == want.completion_tokens == 16
    assert got.finish_reason == want.finish_reason == "length"
    assert got.prompt_tokens == want.prompt_tokens == len(ref.tokenize("hello"))
    assert got.time_to_first_token_s is not None and got.tokens_per_second
    full = "".join(pieces)
    stop = full[3:5]
    assert iso.generate("hello", stop=[stop], **kw) == ref.generate("hello", stop=[stop], **kw) \
        == full[:full.find(stop)]
    assert iso.last_generation.finish_reason == ref.last_generation.finish_reason == "stop"
    assert iso.last_generation.completion_tokens == ref.last_generation.completion_tokens < 16
    seen_i: list[str] = []
    seen_r: list[str] = []
    got = iso.generate("hello", callback=lambda p: seen_i.append(p) or len(seen_i) < 3, **kw)
    want = ref.generate("hello", callback=lambda p: seen_r.append(p) or len(seen_r) < 3, **kw)
    assert got == want and seen_i == seen_r and len(seen_i) == 3
    assert iso.last_generation.finish_reason == ref.last_generation.finish_reason == "cancelled"
    # breaking out cancels in the worker: the next call answers at once, from a short context (the worker
    # streams ahead while the cancel is in flight; how far depends on the scheduler, never to max_tokens)
    stream = iso.generate("hello", stream=True, max_tokens=200, temperature=0)
    next(stream)
    stream.close()
    assert iso.n_past < 100
    assert iso.last_generation.finish_reason == "cancelled" and iso.last_generation.completion_tokens < 100
    assert iso.tokenize("abc") == ref.tokenize("abc")
    # a stream left open blocks other calls of the same thread with a clear error, not a deadlock
    stream = iso.generate("hello", stream=True, max_tokens=4, temperature=0)
    next(stream)
    with pytest.raises(RuntimeError, match="stream of this model is open"):
        iso.tokenize("x")
    stream.close()


def test_streams_read_in_an_event_loop(gguf, pair):
    """``async for`` over a stream (the server's way: the worker's reader thread wakes the loop per piece)
    gives what the synchronous iteration gives; leaving it early cancels; a dying worker and a hung one are
    errors there as well."""
    import asyncio

    iso, ref = pair
    kw = dict(max_tokens=12, temperature=0)

    async def pieces(stream, n=None):
        got = []
        async for p in stream:
            got.append(p)
            if n is not None and len(got) == n:
                break
        return got

    assert asyncio.run(pieces(iso.generate("hello", stream=True, **kw))) == list(ref.generate("hello", stream=True,
                                                                                                **kw))
    assert iso.last_generation.finish_reason == "length" and iso.last_generation.completion_tokens == 12
    stream = iso.generate("hello", stream=True, max_tokens=200, temperature=0)
    assert len(asyncio.run(pieces(stream, 2))) == 2
    stream.close()
    assert iso.last_generation.finish_reason == "cancelled" and iso.last_generation.completion_tokens < 100

    m = load(gguf, isolated=True, n_threads=1, worker_timeout=TIMEOUT)

    async def killed():
        stream = m.generate("hello", stream=True, max_tokens=100, temperature=0)
        async for _ in stream:
            os.kill(m.pid, signal.SIGKILL)
    with pytest.raises(BackendError, match="SIGKILL"):
        asyncio.run(killed())
    m.close()
    m = load(gguf, isolated=True, n_threads=1, worker_timeout=1.0)

    async def hung():
        stream = m.generate("hello", stream=True, max_tokens=100, temperature=0)
        os.kill(m.pid, signal.SIGSTOP)
        return await pieces(stream)
    with pytest.raises(BackendError, match=r"no answer to .* within 1 s"):
        asyncio.run(hung())
    assert _gone(m.pid)
    m.close()


def test_errors_cross_the_boundary(pair, tmp_path):
    iso, ref = pair
    with pytest.raises(ContextLengthError, match="context holds"):
        iso.generate("hello " * 400, max_tokens=1)
    with pytest.raises(AttributeError):
        iso.no_such_method  # noqa: B018
    not_model = tmp_path / "notes.gguf"
    not_model.write_text("hello\n")
    with pytest.raises((FormatError, UnsupportedModelError)) as e:
        load(not_model, isolated=True, worker_timeout=TIMEOUT)
    assert str(not_model) in str(e.value)
    assert iso.generate("hello", max_tokens=2, temperature=0) == ref.generate("hello", max_tokens=2, temperature=0)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV])
def test_a_dying_worker_is_an_error_not_a_crash(gguf, sig):
    m = load(gguf, isolated=True, n_threads=1, worker_timeout=TIMEOUT)
    stream = m.generate("hello", stream=True, max_tokens=100, temperature=0)
    next(stream)
    os.kill(m.pid, sig)
    with pytest.raises(BackendError) as e:
        list(stream)
    assert sig.name in str(e.value) and str(gguf) in str(e.value)
    assert m.closed and _gone(m.pid)
    with pytest.raises(ModelClosedError, match=sig.name):  # the next call reports it closed, and why
        m.tokenize("x")
    m.close()


def test_a_hung_worker_times_out(gguf):
    m = load(gguf, isolated=True, n_threads=1, worker_timeout=1.0)
    os.kill(m.pid, signal.SIGSTOP)
    with pytest.raises(BackendError, match=r"no answer to tokenize within 1 s") as e:
        m.tokenize("hello")
    assert str(gguf) in str(e.value) and _gone(m.pid)
    with pytest.raises(ModelClosedError):
        m.generate("x")


def test_close_ends_the_worker(gguf):
    with load(gguf, isolated=True, n_threads=1, worker_timeout=TIMEOUT) as m:
        pid = m.pid
        stream = m.generate("hello", stream=True, max_tokens=50, temperature=0)
        next(stream)
    assert m.closed and _gone(pid)
    with pytest.raises(ModelClosedError):
        m.tokenize("x")


def test_legacy_era_isolated(tiny_llama):
    require_backend("llama-2023-08")
    path = tiny_llama[("ggjt", 3, "f32")]
    with load(path, isolated=True, n_threads=1, worker_timeout=TIMEOUT) as iso, load(path, n_threads=1) as ref:
        assert iso.info.backend == ref.info.backend
        assert iso.generate("hello", max_tokens=8, temperature=0) == ref.generate("hello", max_tokens=8, temperature=0)


# -- several requests at once on one worker ---------------------------------------------------------

#: a prompt for each of the threads that stream at once
PROMPTS = ["hello", "once upon a time", "the cat", "abc def"]


def _threads(targets) -> list:
    """Run each target in a thread, all started together; their results (or exceptions) in order."""
    results: list = [None] * len(targets)
    start = threading.Barrier(len(targets))

    def run(i, f):
        start.wait()
        results[i] = _catch(f)

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a request never ended"
    return results


def _wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def test_concurrent_streams_each_get_what_they_get_alone(pair):
    iso, _ = pair
    kw = dict(max_tokens=24, temperature=0)
    alone = [list(iso.generate(p, stream=True, **kw)) for p in PROMPTS]
    counts = [len(iso.tokenize(p)) for p in PROMPTS]

    def stream(p):
        it = iso.generate(p, stream=True, **kw)
        return list(it), it.stats

    results = _threads([lambda p=p: stream(p) for p in PROMPTS])
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [r[0] for r in results] == alone
    # each stream carries its own record of what its generation did
    for (_, stats), n in zip(results, counts):
        assert stats.prompt_tokens == n and stats.completion_tokens == 24 and stats.finish_reason == "length"
    assert iso.in_flight == 0


def _held_stream(model, prompt: str, first: threading.Event, go: threading.Event):
    """A stream whose consumer holds back after its first piece (its generation stays open in the worker)
    until ``go``, then closes it; its stats."""
    it = model.generate(prompt, stream=True, max_tokens=250, temperature=0)
    next(it)
    first.set()
    go.wait(TIMEOUT)
    it.close()
    return it.stats


def test_a_call_is_answered_while_streams_run(pair):
    iso, ref = pair
    first, go = threading.Event(), threading.Event()
    held: list = []
    other: list = []
    threads = [threading.Thread(target=lambda: held.append(_held_stream(iso, "hello", first, go))),
               threading.Thread(target=lambda: other.append(list(iso.generate("the cat", stream=True, max_tokens=8,
                                                                              temperature=0))))]
    for t in threads:
        t.start()
    _wait_for(lambda: first.is_set() and iso.in_flight == 2, "both streams in flight")
    # answered by the worker while both streams are open: calls do not wait for streams ...
    assert iso.chat_template.source == ref.chat_template.source and iso.n_ctx == ref.n_ctx
    assert iso.in_flight == 2 and not held
    # ... and one that needs the Model while a generation holds it is answered when its turn comes
    tokens: list = []
    c = threading.Thread(target=lambda: tokens.append(iso.tokenize("abc")))
    c.start()
    go.set()
    for t in (*threads, c):
        t.join(TIMEOUT)
    assert tokens == [ref.tokenize("abc")] and len(other) == 1 and other[0]
    assert held[0].finish_reason == "cancelled" and iso.in_flight == 0
    # its consumer took one piece (one token here): the worker ran at most a window ahead, then waited
    assert held[0].completion_tokens <= 1 + STREAM_WINDOW


def test_cancelling_one_stream_leaves_the_other_whole(pair):
    iso, _ = pair
    kw = dict(max_tokens=40, temperature=0)
    alone = list(iso.generate("once upon a time", stream=True, **kw))
    first, go = threading.Event(), threading.Event()
    held: list = []
    whole: list = []

    def stream():
        it = iso.generate("once upon a time", stream=True, **kw)
        whole.append((list(it), it.stats))

    threads = [threading.Thread(target=lambda: held.append(_held_stream(iso, "hello", first, go))),
               threading.Thread(target=stream)]
    threads[0].start()
    first.wait(TIMEOUT)
    threads[1].start()
    _wait_for(lambda: iso.in_flight == 2, "both streams in flight")
    go.set()
    for t in threads:
        t.join(TIMEOUT)
    stats = held[0]
    assert stats.finish_reason == "cancelled" and stats.completion_tokens < 250
    pieces, whole_stats = whole[0]
    assert pieces == alone and whole_stats.finish_reason == "length" and whole_stats.completion_tokens == 40
    assert whole_stats.prompt_tokens == len(iso.tokenize("once upon a time"))


def test_a_worker_killed_under_three_streams_fails_all_three(gguf):
    m = load(gguf, isolated=True, n_threads=1, worker_timeout=TIMEOUT)
    got_first = threading.Event()
    go = threading.Event()

    def stream(p):
        it = m.generate(p, stream=True, max_tokens=250, temperature=0)
        next(it)  # the generation served first answers; the others wait for the Model in the worker
        got_first.set()
        go.wait(TIMEOUT)
        return list(it)

    results: list = []
    threads = [threading.Thread(target=lambda p=p: results.append(_catch(lambda: stream(p)))) for p in PROMPTS[:3]]
    for t in threads:
        t.start()
    _wait_for(lambda: m.in_flight == 3 and got_first.is_set(), "three streams in flight")
    os.kill(m.pid, signal.SIGKILL)
    go.set()
    for t in threads:
        t.join(TIMEOUT)
    assert len(results) == 3
    for e in results:
        assert isinstance(e, BackendError) and "SIGKILL" in str(e) and str(gguf) in str(e), e
    assert not m.alive and m.closed and m.in_flight == 0 and _gone(m.pid)
    with pytest.raises(ModelClosedError, match="SIGKILL"):
        m.tokenize("x")
    m.close()


def test_a_stalled_consumer_is_not_a_hung_worker(gguf):
    m = load(gguf, isolated=True, n_threads=1, worker_timeout=TIMEOUT)
    m._chan._timeout = 2.0  # short from here on (the load itself may take longer on a busy machine)
    held = m.generate_tokens("hello", max_tokens=250, temperature=0)
    first = next(held)
    tokens: list = []
    t = threading.Thread(target=lambda: tokens.append(_catch(lambda: m.tokenize("abc"))))
    t.start()
    # the worker waits for this consumer (its window is full), and the call for the Model, far longer
    # than the time-out: nobody is hung
    time.sleep(5)
    rest = list(held)
    t.join(TIMEOUT)
    assert m.alive and len(rest) == 249 and held.stats.completion_tokens == 250
    assert tokens == [m.tokenize("abc")]
    assert [first, *rest] == list(m.generate_tokens("hello", max_tokens=250, temperature=0))
    m.close()


def _catch(f):
    try:
        return f()
    except BaseException as e:  # noqa: BLE001 - the test looks at it
        return e


# -- direct streams: the worker writes to a connection handed over ----------------------------------

def _unchunk(data: bytes) -> list[bytes]:
    """The payloads of HTTP/1.1 chunks, checking their framing."""
    out = []
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        assert rest[n:n + 2] == b"\r\n", "a chunk's framing is broken"
        out.append(rest[:n])
        data = rest[n + 2:]
    return out


def _read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_direct_stream_writes_each_piece_to_the_connection(pair):
    iso, _ = pair
    expect = list(iso.generate("hello", stream=True, max_tokens=12, temperature=0))
    it = iso.generate("hello", stream=True, max_tokens=12, temperature=0)
    it.direct(str.encode)  # pickled to the worker
    assert next(it) is None  # the first piece is ready; nothing is written before the connection comes
    ours, theirs = socket.socketpair()
    with ours, theirs:
        it.attach(ours.fileno())
        ours.close()  # the worker holds its own copy until the stream's end
        assert list(it) == []  # the pieces went to the connection, not here
        assert _read_all(theirs) == "".join(expect).encode()  # and the worker let go of it before its end
    assert it.stats.completion_tokens == 12 and it.stats.finish_reason == "length"


def test_a_direct_stream_ends_when_its_reader_goes_away(pair):
    iso, _ = pair
    it = iso.generate("hello", stream=True, max_tokens=200, temperature=0)
    it.direct(str.encode)
    assert next(it) is None
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        it.attach(ours.fileno())
    assert list(it) == []
    assert it.stats.finish_reason == "cancelled" and it.stats.completion_tokens < 200
    assert iso.generate("hello", max_tokens=3, temperature=0)  # the model goes on


def test_a_slow_direct_reader_is_waited_for_and_a_cancel_ends_the_wait(gguf):
    """A reader that takes nothing for longer than the hang time-out: the worker waits (its ticks keep
    it alive), then writes the rest; a stream whose reader never reads ends at a cancel."""
    m = load(gguf, isolated=True, n_threads=1, worker_timeout=TIMEOUT)
    m._chan._timeout = 2.5  # short from here on; the worker ticks every TICK (1 s) while it waits
    wide = WireChunks(Choice(0, "completion"), "x" * 4000)  # about 4 KB a piece: the buffer fills at once
    expect = list(m.generate("hello", stream=True, max_tokens=30, temperature=0))
    for cancel in (False, True):
        it = m.generate("hello", stream=True, max_tokens=30, temperature=0)
        it.direct(wide)
        assert next(it) is None
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        with ours, theirs:
            it.attach(ours.fileno())
            ours.close()
            time.sleep(0.5 if cancel else 4)
            assert m.alive and not it._done  # waiting for its reader, not hung
            if cancel:
                t0 = time.monotonic()
                it.close()
                assert time.monotonic() - t0 < 10 and it.stats.finish_reason == "cancelled"
                continue
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.append(_read_all(theirs)))
            reader.start()
            assert list(it) == []
            reader.join(TIMEOUT)
        pieces = [json.loads(p.removeprefix(b"x" * 4000).removesuffix(b"]}\n\n"))["text"] for p in _unchunk(got[0])]
        assert pieces == expect and it.stats.completion_tokens == 30
    assert m.alive
    m.close()
