"""Continuous batching (load(parallel=N)) and the sampler of ABI 3, on real engines.

A request run in a batch must give what it gives alone.  The logits are compared directly through the
shim (g4a_decode, g4a_seq_logits): the 2026 engine's kernels do not depend on where a token sits in the
batch, so its logits are exactly equal; the 2023-11 and 2024-09 engines multiply with llamafile's tinyBLAS,
which picks its tiles (and so its order of summation) from the batch's shape, so a sequence decoded after
others in the same batch gets logits equal within rounding (measured below 6e-4 on the tiny F32 model,
logits of magnitude 5; on a 30-layer Q4_1 model the rounding grows through the layers to about 2 % of the
logit scale).  Greedy replies are compared where the logits are exact, and on the tiny model everywhere.
"""
from __future__ import annotations

import math
import threading

import pytest
from conftest import require_backend

import gpt4all_loader as g
from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, write_gptj, write_llama

BATCH_ERAS = ["gguf-2023-11", "gguf-2024-09", "gguf-2026-10"]
#: max |batched - alone| of the logits, per era (see the module doc)
TOLERANCE = {"gguf-2023-11": 2e-3, "gguf-2024-09": 2e-3, "gguf-2026-10": 1e-5}
PROMPTS = ["hello world", "the cat sat on", "a b c d e f g", "one two three four five six seven eight"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    p = tmp_path_factory.mktemp("batch") / "tiny.gguf"
    write_llama(p, TinyLlama(seed=0, space_piece=True), "gguf", version=3, ftype="f32")
    return p


def in_threads(fn, n: int, timeout: float = 120) -> None:
    """fn(0) .. fn(n-1), each in a thread of its own, all at once."""
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def _logits(m, seq):
    p = m._lib.g4a_seq_logits(m._h(), seq)
    assert p != m._ffi.NULL, m._backend.last_error()
    return list(m._ffi.unpack(p, m.n_vocab))


def _decode(m, toks, seqs):
    ffi = m._ffi
    return m._lib.g4a_decode(m._h(), ffi.new("int32_t[]", toks), ffi.new("int32_t[]", seqs), len(toks))


@pytest.mark.parametrize("backend", BATCH_ERAS)
def test_logits_in_a_batch_match_alone(tiny_gguf, backend):
    require_backend(backend)
    with g.load(tiny_gguf, backend=backend, parallel=3, n_ctx=128) as m:
        assert (m.info.parallel, m.info.batching) == (3, "batch")
        a, b = m.tokenize(PROMPTS[3]), m.tokenize(PROMPTS[1] + " " + PROMPTS[2])
        assert _decode(m, a, [0] * len(a)) == 0
        alone = _logits(m, 0)
        # the same prompt after another sequence's tokens in one batch
        assert _decode(m, b + a, [2] * len(b) + [1] * len(a)) == 0
        batched = _logits(m, 1)
        assert max(abs(x - y) for x, y in zip(alone, batched)) <= TOLERANCE[backend]
        # one more token each, decoded together
        t = max(range(m.n_vocab), key=alone.__getitem__)
        assert _decode(m, [t, t], [0, 1]) == 0
        assert max(abs(x - y) for x, y in zip(_logits(m, 0), _logits(m, 1))) <= TOLERANCE[backend]
        assert m._lib.g4a_seq_n_past(m._h(), 1) == len(a) + 1


@pytest.mark.parametrize("backend", BATCH_ERAS)
def test_concurrent_greedy_replies_equal_alone(tiny_gguf, backend):
    require_backend(backend)
    with g.load(tiny_gguf, backend=backend, n_ctx=128) as m:
        alone = [m.generate(p, max_tokens=16) for p in PROMPTS]
    with g.load(tiny_gguf, backend=backend, parallel=4, n_ctx=128) as m:
        out: list[str | None] = [None] * len(PROMPTS)
        stats: list = [None] * len(PROMPTS)

        def run(i):
            out[i] = m.generate(PROMPTS[i], max_tokens=16)
            stats[i] = m.last_generation   # this thread's own

        in_threads(run, len(PROMPTS))
        assert out == alone
        assert [s.prompt_tokens for s in stats] == [len(m.tokenize(p)) for p in PROMPTS]
        assert all(s.finish_reason in ("stop", "length") for s in stats)
        assert m._batcher is not None and m._batcher.step_sequences > m._batcher.steps  # really batched


def test_a_returning_conversation_reuses_its_sequence(tiny_gguf):
    require_backend("gguf-2026-10")
    with g.load(tiny_gguf, backend="gguf-2026-10", parallel=2, n_ctx=128) as m:
        first = m.generate(PROMPTS[3], max_tokens=8)
        n1 = m.last_generation.prompt_tokens
        m.generate("something else entirely", max_tokens=4)       # the other sequence, or a truncation
        m.generate(PROMPTS[3] + first, max_tokens=4)
        st = m.last_generation
        assert st.prompt_evaluated < st.prompt_tokens and st.prompt_evaluated <= st.prompt_tokens - n1 + 1


def test_cancelling_one_stream_leaves_the_others(tiny_gguf):
    require_backend("gguf-2026-10")
    with g.load(tiny_gguf, backend="gguf-2026-10", n_ctx=128) as m:
        want = m.generate(PROMPTS[0], max_tokens=24)
    with g.load(tiny_gguf, backend="gguf-2026-10", parallel=2, n_ctx=128) as m:
        a = m.generate_tokens(PROMPTS[1], max_tokens=24)
        next(a)
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(m.generate(PROMPTS[0], max_tokens=24)))
        t.start()
        a.close()   # cancel the first while the second runs
        t.join(60)
        assert got == [want]


def test_eras_without_sequences_queue(tmp_path):
    require_backend("ggml-gpt4all-2023-05")
    p = tmp_path / "gptj.bin"
    write_gptj(p, TinyGPTJ(seed=0, n_embd=32, n_ctx=256), "f32")
    with g.load(p, parallel=4) as m:
        assert (m.info.parallel, m.info.batching) == (1, "queue")
        want = m.generate("hello", max_tokens=8)
        out: list[str] = []
        in_threads(lambda _: out.append(m.generate("hello", max_tokens=8)), 3)
        assert out == [want] * 3


# -- the sampler ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["gguf-2023-11", "gguf-2026-10", "llama-2023-04"])
def test_logprobs_are_the_softmax_the_sampler_saw(tiny_gguf, tmp_path, backend):
    require_backend(backend)
    path = tiny_gguf
    if backend == "llama-2023-04":
        path = tmp_path / "tiny.ggjt"
        write_llama(path, TinyLlama(seed=0, space_piece=True), "ggjt", version=1, ftype="f32")
    with g.load(path, backend=backend, n_ctx=128) as m:
        m.evaluate(m.tokenize("hello world"))
        raw = m.logits()
        mx = max(raw)
        log_z = mx + math.log(sum(math.exp(x - mx) for x in raw))
        toks = list(m.generate_tokens("hello world", max_tokens=1, logprobs=True, top_logprobs=5))
        lp = m.last_generation.logprobs[0]
        assert lp.token == toks[0] == max(range(m.n_vocab), key=raw.__getitem__)  # greedy: the most likely
        assert lp.logprob == pytest.approx(raw[lp.token] - log_z, abs=1e-4)
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.top[0].token == lp.token and len(lp.top) == 5
        assert lp.bytes == m.token_bytes(lp.token)


def test_logit_bias_bans_and_forces(tiny_gguf):
    require_backend("gguf-2026-10")
    with g.load(tiny_gguf, backend="gguf-2026-10", n_ctx=128) as m:
        plain = list(m.generate_tokens("hello world", max_tokens=6))
        banned = list(m.generate_tokens("hello world", max_tokens=6, logit_bias={plain[0]: -math.inf}))
        assert plain[0] not in banned
        forced = list(m.generate_tokens("hello world", max_tokens=3, logit_bias={"7": 100}))
        assert forced == [7, 7, 7]
        # a presence penalty changes a reply that repeats itself
        a = list(m.generate_tokens("a a a a", max_tokens=12))
        b = list(m.generate_tokens("a a a a", max_tokens=12, presence_penalty=2.0, frequency_penalty=2.0))
        assert a != b
        with pytest.raises(ValueError, match="presence_penalty"):
            m.generate("x", presence_penalty=3)
        with pytest.raises(ValueError, match="logit_bias token id"):
            m.generate("x", logit_bias={m.n_vocab: 1})
        with pytest.raises(ValueError, match="top_logprobs"):
            m.generate("x", top_logprobs=21, logprobs=True)


def test_bad_sequence_calls_are_errors(tiny_gguf):
    require_backend("gguf-2024-09")
    with g.load(tiny_gguf, backend="gguf-2024-09", parallel=2, n_ctx=64) as m:
        lib, h = m._lib, m._h()
        assert lib.g4a_n_seq_max(h) == 2
        assert _decode(m, [1, 2], [0, 2]) == -1 and "sequence 2" in m._backend.last_error()
        assert lib.g4a_seq_logits(h, 1) == m._ffi.NULL       # nothing decoded there yet
        assert _decode(m, [1] * 65, [1] * 65) == -1 and "context full" in m._backend.last_error()
        assert lib.g4a_seq_n_past(h, 1) == 0
        assert lib.g4a_seq_copy(h, 0, 5) == -1 and lib.g4a_seq_truncate(h, 1, 3) == -1
        ffi = m._ffi
        params = ffi.new("g4a_sampling *", dict(temperature=0.0, repeat_penalty=1.0,
                                                allowed=ffi.new("uint32_t[]", (m.n_vocab + 31) // 32)))
        assert _decode(m, [1, 2], [1, 1]) == 0
        assert lib.g4a_seq_sample(h, 1, params, ffi.NULL, 0, ffi.NULL, ffi.NULL) == -1
        assert "constraint allows no token" in m._backend.last_error()
        # copy: sequence 0 becomes sequence 1 (its cache and logits)
        assert lib.g4a_seq_copy(h, 1, 0) == 0 and lib.g4a_seq_n_past(h, 0) == 2
        assert _logits(m, 0) == _logits(m, 1)
    with pytest.raises(ValueError, match="parallel"):
        g.load(tiny_gguf, parallel=0)


def test_an_isolated_batch_and_a_worker_killed_mid_batch(tiny_gguf):
    """The worker runs each stream in its own thread, so the streams of one isolated model batch; a
    native fault (here SIGKILL) fails every sequence of the batch with the signal's name."""
    import os
    import signal

    require_backend("gguf-2026-10")
    with g.load(tiny_gguf, backend="gguf-2026-10", n_ctx=128) as m:
        alone = [m.generate(p, max_tokens=12) for p in PROMPTS]
    m = g.load(tiny_gguf, backend="gguf-2026-10", parallel=4, n_ctx=128, isolated=True)
    try:
        assert m.info.batching == "batch"
        out: list[str | None] = [None] * len(PROMPTS)

        def run(i):
            out[i] = m.generate(PROMPTS[i], max_tokens=12)

        in_threads(run, len(PROMPTS))
        assert out == alone
        # three long streams, then the worker dies under them
        streams = [m.generate(p, max_tokens=100_000, stream=True, context_shift=False) for p in PROMPTS[:3]]
        for s in streams:
            next(s)
        os.kill(m.pid, signal.SIGKILL)
        for s in streams:
            with pytest.raises(g.BackendError, match="SIGKILL"):
                for _ in s:
                    pass
        assert not m.alive
    finally:
        m.close()


def test_single_stream_calls_on_a_batching_model(tiny_gguf):
    require_backend("gguf-2026-10")
    with g.load(tiny_gguf, backend="gguf-2026-10", parallel=2, n_ctx=128) as m:
        with pytest.raises(g.BackendError, match="parallel=1"):
            m.evaluate([1, 2])
        with pytest.raises(g.BackendError, match="parallel=1"):
            m.logits()
        a = m.generate(PROMPTS[0], max_tokens=6)
        m.reset()                                   # between generations: every sequence forgets
        assert m.generate(PROMPTS[0], max_tokens=6) == a
        assert m.last_generation.prompt_evaluated == m.last_generation.prompt_tokens
