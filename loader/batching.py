"""Continuous batching: the generations running on one Model decoded together, one step at a time.

Where the engine decodes several sequences in one context (the batch API: 2023-11, 2024-09, 2026-10;
``g4a_n_seq_max() > 1``), ``load(path, parallel=N)`` gives the Model a :class:`Batcher`: every
generation, from any thread, becomes one sequence of it.  The generations' own threads run the steps, one
at a time: a thread that needs its next token runs the next step when none is running (for every
sequence, not only its own), else waits for the running one to end; so a lone generation decodes in its
own thread, as without batching, with no hand-over per token.  Each step decodes
the last sampled token of every generating sequence together, plus a chunk of the prompts that are
still waiting (so a long new prompt never stalls the others for more than one chunk), then samples each
sequence with its own settings, seed and constraint (:class:`~gpt4all_loader.sampling.SequenceSampler`).
This is llama-server's slot loop: on a CPU the batch costs little more than one sequence, so the
throughput of N users grows with N.

Each sequence keeps what it cached: a new generation takes the free sequence whose cached tokens share
the longest prefix with its prompt, so a returning conversation continues where it left.  A sequence
whose context fills moves its cache (the 2026 engine) or ends with finish_reason "length".
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generator

from .errors import BackendError, ModelClosedError
from .sampling import GenerationStats, SequenceSampler

#: tokens of waiting prompts decoded in one step while other sequences generate: small enough that the
#: generating ones see a short pause, large enough that a prompt is read at batch speed
PROMPT_CHUNK = 128
#: how long a step waits for the other generations to hand on their tokens before it starts anyway
CATCH_UP_S = 0.005
_END = object()


@dataclass(eq=False)
class _Request:
    tokens: list[int]
    sampler: SequenceSampler
    max_tokens: int
    stats: GenerationStats
    out: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    t0: float = field(default_factory=time.perf_counter)
    seq: int = -1
    #: prompt tokens still to decode, then the sampled token waiting to be decoded
    todo: list[int] = field(default_factory=list)
    generated: int = 0
    cancelled: bool = False


@dataclass(eq=False)
class _Sequence:
    seq: int
    #: the tokens this sequence's cache holds, in order
    cached: list[int] = field(default_factory=list)
    request: _Request | None = None
    last_used: float = 0.0


class Batcher:
    """The step loop of one Model's sequences (see the module doc)."""

    def __init__(self, model: Any, n_seq: int) -> None:
        """``model``: the :class:`~gpt4all_loader.model.Model` whose native handle, lock and info the steps use
        (typed loosely: the model module builds its batcher, so this one cannot import it)."""
        self.model = model
        self.sequences = [_Sequence(i) for i in range(n_seq)]
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        #: generations whose caller holds a token not yet handed on (they run Python, not the engine)
        self._outside = 0
        #: held by the thread running a step; ``_step_no`` counts the steps that ended (under ``_cond``)
        self._step_lock = threading.Lock()
        self._step_no = 0
        #: decoding steps run, and the sequences they carried (for metrics: mean batch size)
        self.steps = 0
        self.step_sequences = 0

    # -- the consumer's side ---------------------------------------------------------------------
    def run(self, tokens: list[int], sampler: SequenceSampler, max_tokens: int,
            stats: GenerationStats) -> Generator[int, None, None]:
        """The tokens of one generation (runs in the caller's thread; closing it cancels the sequence)."""
        req = _Request(list(tokens), sampler, max_tokens, stats)
        with self._cond:
            if self._closed:
                raise ModelClosedError(f"{self.model.info.path}: the model was closed (or its batch stopped)")
            self._waiting.append(req)
        try:
            while True:
                try:
                    item = req.out.get_nowait()
                except queue.Empty:
                    self._take_a_step(req)
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                with self._cond:
                    self._outside += 1
                try:
                    yield item
                finally:
                    with self._cond:
                        self._outside -= 1
                        self._cond.notify_all()
        except GeneratorExit:
            stats.finish_reason = stats.finish_reason or "cancelled"
            raise
        finally:
            if not stats.finish_reason or stats.finish_reason == "cancelled":
                with self._cond:
                    req.cancelled = True
                self._reap()

    def _take_a_step(self, req: _Request) -> None:
        """Run the next step, or wait for the one another thread runs (or for an item of ``req``)."""
        with self._cond:
            seen = self._step_no
        if self._step_lock.acquire(blocking=False):
            try:
                # the others turn their last tokens into text first (briefly): their Python work would
                # otherwise take the cores from the engine's threads in the middle of the step
                with self._cond:
                    self._cond.wait_for(lambda: self._outside == 0 or self._closed, timeout=CATCH_UP_S)
                self._step()
            except BaseException as e:  # noqa: BLE001 - one thread's failure must not leave the others waiting
                self._stop(e)
            finally:
                self._step_lock.release()
                with self._cond:
                    self._step_no += 1
                    self._cond.notify_all()
            return
        with self._cond:
            self._cond.wait_for(lambda: self._step_no != seen or not req.out.empty() or self._closed, timeout=5.0)

    def _reap(self) -> None:
        """Free the sequences of cancelled generations now, when no step runs (else that step does)."""
        if not self._step_lock.acquire(blocking=False):
            return
        try:
            with self._cond:
                for s in self.sequences:
                    if s.request is not None and s.request.cancelled:
                        self._finish(s, "cancelled")
                for r in [r for r in self._waiting if r.cancelled]:
                    self._waiting.remove(r)
                    r.out.put(_END)
        finally:
            self._step_lock.release()

    def _stop(self, e: BaseException) -> None:
        """A step failed in a way no request caused: fail every one, and take no more."""
        err = BackendError(f"{self.model.info.path}: the batch stopped: {type(e).__name__}: {e}")
        with self._cond:
            self._closed = True
            for s in self.sequences:
                if s.request is not None:
                    self._finish(s, err)
            while self._waiting:
                self._waiting.popleft().out.put(err)

    @property
    def active(self) -> int:
        """Sequences generating now."""
        return sum(1 for s in self.sequences if s.request is not None)

    @property
    def waiting(self) -> int:
        """Generations waiting for a free sequence."""
        return len(self._waiting)

    def forget(self) -> None:
        """The caches are about to be cleared (Model.reset): refused while generations run."""
        with self._cond:
            if self._waiting or any(s.request is not None for s in self.sequences):
                raise BackendError(f"{self.model.info.path}: reset() while generations run on this model")
            for s in self.sequences:
                s.cached.clear()

    def close(self) -> None:
        """Fail what is running or waiting, and end the step loop (the Model frees after this)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with self._step_lock:   # the step that runs now ends first
            err = ModelClosedError(f"{self.model.info.path}: the model was closed")
            with self._cond:
                for s in self.sequences:
                    if s.request is not None:
                        s.request.out.put(err)
                        s.request = None
                while self._waiting:
                    self._waiting.popleft().out.put(err)
                self._cond.notify_all()

    # -- the step loop ---------------------------------------------------------------------------
    def _admit(self) -> list[tuple[_Sequence, int]]:
        """Give waiting generations a free sequence: the one that already holds most of the prompt.  Returns the
        (sequence, positions to keep) whose caches must be cut back before the step (under the model's lock)."""
        cuts: list[tuple[_Sequence, int]] = []
        while self._waiting:
            free = [s for s in self.sequences if s.request is None]
            if not free:
                break
            req = self._waiting.popleft()
            if req.cancelled:
                req.out.put(_END)
                continue

            def shared(s: _Sequence) -> int:
                n = 0
                for a, b in zip(s.cached, req.tokens[:-1]):  # at least the last token is decoded again
                    if a != b:
                        break
                    n += 1
                return n
            # llama-server's rule: the sequence holding most of the prompt, when it holds a real part of it
            # (a tenth); else the one unused longest, so a conversation that may return keeps its cache
            best = max(free, key=shared)
            keep = shared(best)
            if keep * 10 < len(req.tokens):
                best = min(free, key=lambda s: (len(s.cached) > 0, s.last_used))
                keep = shared(best)
            if keep < len(best.cached):
                cuts.append((best, keep))
            req.seq = best.seq
            req.todo = req.tokens[keep:]
            req.stats.prompt_evaluated = len(req.todo)
            best.request = req
        return cuts

    def _finish(self, s: _Sequence, reason: str | BaseException) -> None:
        req = s.request
        assert req is not None
        s.request = None
        s.last_used = time.monotonic()
        if isinstance(reason, BaseException):
            req.out.put(reason)
        else:
            req.stats.finish_reason = req.stats.finish_reason or reason
            req.out.put(_END)

    def _step(self) -> None:
        """One step: admit waiting generations, decode one token of each generating sequence and a chunk of
        the waiting prompts together, sample every sequence whose prompt is complete."""
        m = self.model
        ffi = m._ffi
        n_ctx = m.info.n_ctx
        can_shift = m.info.context_shift == "cache"
        with self._cond:
            if self._closed:
                return
            for s in self.sequences:
                if s.request is not None and s.request.cancelled:
                    self._finish(s, "cancelled")
            cuts = self._admit()
            running = [s for s in self.sequences if s.request is not None]
        if cuts:
            with m._lock:
                h = m._h()
                for s, keep in cuts:
                    assert s.request is not None
                    if m._lib.g4a_seq_truncate(h, s.seq, keep) != 0:   # cannot cut back: start it again
                        m._lib.g4a_seq_truncate(h, s.seq, 0)
                        s.request.todo = s.request.tokens[:]
                        s.request.stats.prompt_evaluated = len(s.request.todo)
                        keep = 0
                    del s.cached[keep:]
        if not running:
            return
        # the batch: one token of each generating sequence, then prompt chunks in arrival order
        toks: list[int] = []
        seqs: list[int] = []
        stepped: list[tuple[_Sequence, int]] = []   # each sequence in the batch, and its tokens there
        generating = [s for s in running if s.request is not None and s.request.generated > 0]
        prompting = [s for s in running if s.request is not None and s.request.generated == 0]
        budget = PROMPT_CHUNK if generating else 512
        for s in generating + prompting:
            req = s.request
            assert req is not None
            n = 1 if req.generated > 0 else min(len(req.todo), budget)
            if n <= 0:
                continue
            if len(s.cached) + n > n_ctx and not (can_shift and self._shift(s)):   # generating ones only
                self._finish(s, "length")
                continue
            if req.generated == 0:
                budget -= n
            toks += req.todo[:n]
            seqs += [s.seq] * n
            stepped.append((s, n))
        if not toks:
            return
        with m._lock:
            try:
                h = m._h()
            except ModelClosedError as e:
                for s in running:
                    self._finish(s, e)
                return
            with m._backend.evaluating(h):
                rc = m._lib.g4a_decode(h, ffi.new("int32_t[]", toks), ffi.new("int32_t[]", seqs), len(toks))
            if rc != 0:
                err = m._err("batch evaluation failed")
                for s, _ in stepped:
                    self._finish(s, err)
                return
            self.steps += 1
            self.step_sequences += len(stepped)
            for s, n in stepped:
                req = s.request
                assert req is not None
                s.cached += req.todo[:n]
                del req.todo[:n]
                if req.todo:          # more prompt to come: no token yet
                    continue
                self._sample(s, h)

    def _sample(self, s: _Sequence, h: Any) -> None:
        m = self.model
        req = s.request
        assert req is not None
        if req.cancelled:
            self._finish(s, "cancelled")
            return
        if req.generated >= req.max_tokens:
            self._finish(s, "length")
            return
        sampler = req.sampler
        try:
            tok = sampler.sample(m._lib, h, s.seq)
            if tok < 0:
                raise m._err("sampling failed")
            if m._lib.g4a_is_eog(h, tok):
                self._finish(s, "stop")
                return
            req.stats.token_done(req.t0, sampler.last and m._token_logprob(sampler.last))
            sampler.accept(tok)
        except (BackendError, ValueError) as e:
            self._finish(s, e)
            return
        req.generated += 1
        req.out.put(tok)
        if sampler.constraint_done:
            self._finish(s, "stop")
        elif req.generated >= req.max_tokens:
            self._finish(s, "length")
        else:
            req.todo = [tok]

    def _shift(self, s: _Sequence) -> bool:
        """Make room in a full sequence by moving its cache (keep a quarter at the start, drop half the rest)."""
        m = self.model
        n = len(s.cached)
        keep = max(1, m.info.n_ctx // 4)
        discard = max(1, (n - keep) // 2)
        with m._lock:
            if m._lib.g4a_seq_shift(m._h(), s.seq, keep, discard) != 0:
                return False
        del s.cached[keep:keep + discard]
        return True
