"""Sampling settings, and one sequence's sampler state around the shim's C sampler.

The choice of a token is made in C (``g4a_seq_sample``), the same in every era and in our own 2023
model code: logit bias, penalties, a constraint's token mask, log-probabilities, then greedy or seeded
sampling.  This module only checks the settings once (:class:`SamplingParams`) and keeps, per sequence,
what the C sampler is handed at each step (:class:`SequenceSampler`): the parameter block, the
penalty window, the seeded random state, the mask a constraint engine writes, and the log-probabilities
the sampler reports back.
"""
from __future__ import annotations

import math
import numbers
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future, ThreadPoolExecutor

    from .constrain import Matcher
    from .engines.shim import ShimLib

_pool: "ThreadPoolExecutor | None" = None
_pool_lock = threading.Lock()


def _mask_pool() -> "ThreadPoolExecutor":
    """The threads that compute constraint masks ahead (one per core: a batch's sequences at once)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max(1, min(8, len(os.sched_getaffinity(0)))), thread_name_prefix="g4a-mask")
        return _pool


#: the most alternatives a token's log-probabilities list (OpenAI's bound; G4A_MAX_TOP_LOGPROBS in C)
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as the sampler saw it: log-probabilities over the tokens that could be chosen
    (after logit bias, penalties and the constraint's mask; before temperature and top-k/p)."""

    token: int
    logprob: float
    #: the token's text as raw bytes (may be part of a UTF-8 character)
    bytes: bytes = b""
    #: the most likely alternatives, most likely first (the chosen token among them when it is one)
    top: tuple["TokenLogprob", ...] = ()


def int_arg(value: Any, what: str, lo: int, hi: int) -> int:
    """``value`` as an int in lo..hi, else a ValueError that names the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{what} must be between {lo} and {hi}, got {value}")
    return int(value)


def float_arg(value: Any, what: str, lo: float, hi: float = math.inf, *, above: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (or (lo, hi] with ``above``), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (above and v == lo) or v > hi:
        bound = f"above {lo}" if above else f"at least {lo}"
        raise ValueError(f"{what} must be a finite number {bound}" + (f" and at most {hi}" if hi < math.inf else "")
                         + f", got {value!r}")
    return v


@dataclass
class GenerationStats:
    """What one generation did, recorded by the Model as it runs (:attr:`Model.last_generation`) and
    sent back by the worker of an IsolatedModel: the usage and finish reason a server reports."""

    #: tokens of the prompt, and how many of them were evaluated (the rest were already in the cache)
    prompt_tokens: int = 0
    prompt_evaluated: int = 0
    completion_tokens: int = 0
    #: "stop" (an end-of-generation token or a stop string), "length" (max_tokens, or a full context
    #: without context shift), "cancelled" (the consumer closed the stream or a callback said no);
    #: "" while running, or when it failed
    finish_reason: str = ""
    #: seconds from the start of the generation (prompt evaluation included) to the first token
    time_to_first_token_s: float | None = None
    #: seconds from the first token to the end
    completion_s: float = 0.0
    #: each generated token's log-probabilities, when the generation asked for them (logprobs=True)
    logprobs: list[TokenLogprob] | None = None
    #: a reply with tools, read back (Model.chat(tools=...)): its text content and its calls (OpenAI's shape)
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    #: perf_counter() of the first token (for completion_s)
    first_token_at: float | None = field(default=None, repr=False)

    def token_done(self, t0: float, logprob: TokenLogprob | None) -> None:
        """Count one generated token (``t0``: when the generation started)."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.time_to_first_token_s, self.first_token_at = now - t0, now
        self.completion_tokens += 1
        self.completion_s = now - self.first_token_at
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens after the first, per second of generating them (None with fewer than 2)."""
        if self.completion_tokens < 2 or self.completion_s <= 0:
            return None
        return (self.completion_tokens - 1) / self.completion_s


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each token; :meth:`checked` validates every field (ValueError naming it)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    #: the window (most recent tokens) every penalty looks at
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: (token, bias) pairs added to the logits; -inf (or OpenAI's -100) bans a token
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    @classmethod
    def checked(cls, *, n_vocab: int, n_ctx: int, temperature: Any = 0.0, top_k: Any = 40, top_p: Any = 0.95,
                min_p: Any = 0.0, repeat_penalty: Any = 1.0, repeat_last_n: Any = 64, presence_penalty: Any = 0.0,
                frequency_penalty: Any = 0.0, logit_bias: Mapping[Any, Any] | None = None, logprobs: Any = False,
                top_logprobs: Any = None) -> "SamplingParams":
        if not isinstance(logprobs, bool):
            raise ValueError(f"logprobs must be True or False, got {logprobs!r}")
        top = 0 if top_logprobs is None else int_arg(top_logprobs, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if top and not logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        bias: list[tuple[int, float]] = []
        if logit_bias is not None:
            if not isinstance(logit_bias, Mapping):
                raise ValueError(f"logit_bias must map token ids to numbers, got {type(logit_bias).__name__}")
            for k, v in logit_bias.items():
                tok = int_arg(int(k) if isinstance(k, str) and k.strip().lstrip("-").isdigit() else k,
                           "a logit_bias token id", 0, n_vocab - 1)
                if isinstance(v, numbers.Real) and not isinstance(v, bool) and v == -math.inf:
                    bias.append((tok, -math.inf))
                else:
                    bias.append((tok, float_arg(v, f"logit_bias[{tok}]", -1e9, 1e9)))
        return cls(
            temperature=float_arg(temperature, "temperature", 0.0, math.inf),
            top_k=int_arg(top_k, "top_k", -2**31, 2**31 - 1), top_p=float_arg(top_p, "top_p", 0.0, 1.0),
            min_p=float_arg(min_p, "min_p", 0.0, 1.0),
            repeat_penalty=float_arg(repeat_penalty, "repeat_penalty", 0.0, math.inf, above=True),
            # no more history than the context holds (the window is allocated)
            repeat_last_n=min(int_arg(repeat_last_n, "repeat_last_n", 0, 2**31 - 1), n_ctx),
            presence_penalty=float_arg(presence_penalty, "presence_penalty", -2.0, 2.0),
            frequency_penalty=float_arg(frequency_penalty, "frequency_penalty", -2.0, 2.0),
            logit_bias=tuple(bias), logprobs=logprobs, top_logprobs=top)


@dataclass
class SequenceSampler:
    """What one sequence hands the C sampler at each step, kept alive between steps (cffi memory)."""

    ffi: Any
    params: SamplingParams
    seed: int
    n_vocab: int
    prompt: Sequence[int]
    matcher: "Matcher | None" = None
    _c: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ffi, p = self.ffi, self.params
        self._window = max(p.repeat_last_n, 1)
        self._recent = list(self.prompt[-self._window:])
        self._hist = ffi.new("int32_t[]", self._window)
        self._rng = ffi.new("uint64_t *", self.seed & 0xFFFFFFFFFFFFFFFF)
        self._bias_tokens = ffi.new("int32_t[]", [t for t, _ in p.logit_bias] or [0])
        self._bias_values = ffi.new("float[]", [v for _, v in p.logit_bias] or [0.0])
        self._mask = ffi.new("uint32_t[]", (self.n_vocab + 31) // 32) if self.matcher is not None else ffi.NULL
        self._lp = ffi.new("g4a_token_logprobs *") if p.logprobs else ffi.NULL
        self._c = ffi.new("g4a_sampling *", dict(
            temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
            repeat_penalty=p.repeat_penalty, repeat_last_n=p.repeat_last_n, presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty, n_bias=len(p.logit_bias), bias_tokens=self._bias_tokens,
            bias_values=self._bias_values, allowed=self._mask))
        #: the log-probabilities of the last sampled token (None unless params.logprobs)
        self.last: TokenLogprob | None = None
        self._next_mask: "Future[None] | None" = None
        self._done = False

    def sample(self, lib: "ShimLib", handle: Any, seq: int) -> int:
        """The next token of sequence ``seq`` from its current logits (negative: the shim's error)."""
        if self._next_mask is not None:
            self._next_mask.result()   # computed while the engine evaluated the last token
            self._next_mask = None
        elif self.matcher is not None:
            self.matcher.fill_mask(self._mask)
        if self.params.logprobs:
            self._lp.n_top = self.params.top_logprobs
        n = len(self._recent)
        self._hist[0:n] = self._recent
        tok = int(lib.g4a_seq_sample(handle, seq, self._c, self._hist, n, self._rng, self._lp))
        if tok >= 0 and self.params.logprobs:
            lp = self._lp
            self.last = TokenLogprob(tok, float(lp.logprob), top=tuple(
                TokenLogprob(int(lp.top_tokens[i]), float(lp.top_logprobs[i])) for i in range(lp.n_top)))
        return tok

    def accept(self, tok: int) -> None:
        """Record the token that was chosen (the penalty window, the constraint's state).  The constraint's
        next mask is then computed in a helper thread while the caller evaluates the token (both release
        the GIL), so that structured output costs little more than free text."""
        self._recent.append(tok)
        if len(self._recent) > self._window:
            del self._recent[0]
        if self.matcher is not None:
            self.matcher.consume(tok)
            # the matcher is touched by one thread at a time: its state is read before the helper starts
            self._done = self.matcher.is_stopped()
            if not self._done:
                self._next_mask = _mask_pool().submit(self.matcher.fill_mask, self._mask)

    @property
    def constraint_done(self) -> bool:
        """The constraint accepts nothing more: the reply is complete."""
        return self._done
