"""The library face: one Model API over every backend era.

``load(path)`` reads the file's structure (pure Python), lets the catalog pick the backend that
reads it, picks the variant this machine can run, and only then hands the file to native code.
Sampling runs in the shim (C), identically in every era.

Thread safety: all calls on one Model are serialized by a lock (a streaming generation holds it
until the stream ends or is closed); different Models, even of different eras, run concurrently.
``close()`` during a stream (from the loop body or a callback) frees nothing under the running
generation: the model counts as closed at once, its next step raises ModelClosedError, and the
native model is freed when the stream lets go of it.
"""
from __future__ import annotations

import codecs
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, Literal, Mapping, Sequence, TypeVar, overload

from .engines import cache, native
from .engines.manifest import load_manifest
from .errors import BackendError, ChatTemplateError, ContextLengthError, ModelClosedError
from .formats.facts import FileFacts
from .formats.legacy import LEGACY_CONTAINERS, LEGACY_GQA_RMS_EPS, LEGACY_N_CTX, LEGACY_RMS_EPS
from .sampling import GenerationStats, SamplingParams, SequenceSampler, TokenLogprob
from .sampling import int_arg as _int_arg

if TYPE_CHECKING:  # pragma: no cover
    from .batching import Batcher
    from .chat import ChatSession, ChatTemplate
    from .constrain import Grammar
    from .tool_calls import ToolPlan
    from .published import TableArg

#: n_ctx used when neither the caller nor the file says (2023 LLaMA files were trained on 2048); the
#: whole default rule is :func:`gpt4all_loader.plan.default_n_ctx`
DEFAULT_N_CTX = LEGACY_N_CTX
#: the largest text tokenize() takes: the engines allocate several times the input (and tokens are
#: counted in int32), so a bigger text is refused with a message instead of ending in bad_alloc
MAX_TOKENIZE_BYTES = 64 << 20
#: the largest n_ctx load() takes, beyond a file's own training context: 2**20 already costs 8 GiB on
#: gguf-2023-11 for a tiny model, and the eras' int32 sizes overflow on the way to 2**31 (SIGSEGV)
MAX_N_CTX = 1 << 20
#: the most sequences one context decodes together (the 2026 engine's own bound is 256)
MAX_PARALLEL = 256
#: architectures that encode a text into one vector (embed()) and have no next-token logits to generate from
EMBEDDING_ONLY = frozenset({"bert"})


def max_threads() -> int:
    """The largest n_threads load() takes: 4 per core this process may run on, at most 256.

    More only stalls (the engines' threads spin at every barrier: n_threads=5000 took minutes per
    token) or aborts (the ggml of 2024 and later asserts n_threads <= 512).
    """
    return min(256, 4 * len(os.sched_getaffinity(0)))


@dataclass
class ModelInfo:
    """What was loaded, and why this backend and variant."""

    path: str
    backend: str
    llama_cpp: str
    sdist: str
    variant: str
    device: str
    format: str
    format_version: int | None
    architecture: str | None
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    n_embd: int
    n_gpu_layers: int
    load_seconds: float
    why_backend: str
    why_variant: str
    rejected: dict[str, list[str]] = field(default_factory=dict)
    engine: str = ""
    #: loaded for tokenizing only (no weights, no context): tokenize/detokenize work, evaluation does not
    vocab_only: bool = False
    #: flash attention as loaded: "on", "off", or "auto" (the 2026 engine decides per device: on for the
    #: CPU); eras without it always "off"
    flash_attn: str = "off"
    #: how a full context makes room during generation: "cache" (the engine moves the kept positions)
    #: or "re-evaluate" (the kept tokens are evaluated again); "" when nothing can be evaluated
    context_shift: str = ""
    #: the chat template chat() uses, and why: "file", "gpt4all:<published name>", "user:<name or path>",
    #: "default:chatml" (see :func:`~gpt4all_loader.chat.resolve_template`)
    chat_template_source: str = ""
    #: generations decoded together (load(parallel=N)): 1 where the era evaluates one stream per context
    parallel: int = 1

    @property
    def batching(self) -> str:
        """"batch" when generations run together (continuous batching), else "queue" (one at a time)."""
        return "batch" if self.parallel > 1 else "queue"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Piece(str):
    """A piece of generated text (a str) with the log-probabilities of the tokens it came from, streamed by
    ``generate(..., stream=True, logprobs=True)``."""

    logprobs: tuple[TokenLogprob, ...]

    def __new__(cls, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> "Piece":
        obj = super().__new__(cls, text)
        obj.logprobs = logprobs
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (Piece, (str(self), self.logprobs))


class Reply(str):
    """A chat reply with tools (a str: the raw text the model wrote), read back: ``content`` (None when it
    only calls) and ``tool_calls`` (OpenAI's shape: ``{"id", "type": "function", "function": {"name",
    "arguments": <JSON text>}}``)."""

    content: str | None
    tool_calls: list[dict[str, Any]]

    def __new__(cls, raw: str, content: str | None, tool_calls: list[dict[str, Any]]) -> "Reply":
        obj = super().__new__(cls, raw)
        obj.content, obj.tool_calls = content, tool_calls
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (Reply, (str(self), self.content, self.tool_calls))


def response_schema(response_format: Any) -> dict[str, Any] | bool | None:
    """The constraint of OpenAI's ``response_format``: None (text), True (any JSON object) or a JSON schema.
    ValueError names what is wrong."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be an object, not {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":   # llama-server also takes a schema here
        schema = response_format.get("schema")
        return dict(schema) if isinstance(schema, Mapping) else True
    if kind == "json_schema":
        js = response_format.get("json_schema")
        if not isinstance(js, Mapping):
            raise ValueError("response_format.json_schema must be an object with a 'schema'")
        schema = js.get("schema")
        if schema is None:
            return True
        if not isinstance(schema, Mapping):
            raise ValueError("response_format.json_schema.schema must be a JSON schema object")
        return dict(schema)
    raise ValueError(f"response_format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}")


_C = TypeVar("_C", bound="Closing")


class Closing:
    """``with`` and garbage collection for objects with ``close()`` (Model, IsolatedModel): leaving the
    block closes, and so does dropping the last reference (best effort at interpreter exit)."""

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


class Model(Closing):
    """A loaded model.  Create with :func:`load`; use as a context manager or call :meth:`close`."""

    def __init__(self, backend: native.Backend, handle: Any, info: ModelInfo, facts: FileFacts,
                 embeddings: bool, chat_template: ChatTemplate):
        self._backend = backend
        self._lib = backend.lib
        self._ffi = native.ffi()
        self._handle = handle
        self._lock = threading.RLock()
        self._streams = 0        # generations of this thread now holding the lock
        self._closing = False    # close() was called during one: free when the last one ends
        self.info = info
        self.facts = facts
        self._embeddings = embeddings
        self._chat_template = chat_template
        self._piece_buf = self._ffi.new("char[256]")
        self._pieces: dict[int, bytes] = {}
        #: the tokens the engine's cache holds, in order (n_past of them): a new prompt evaluates only
        #: what follows the longest prefix it shares with them
        self._kv: list[int] = []
        self._local = threading.local()       # each thread's last generation
        self._last_any: GenerationStats | None = None
        #: the continuous batch, when the engine decodes several sequences (load(parallel=N))
        self._batcher: "Batcher | None" = None
        # SentencePiece vocabularies: tokenize() adds the dummy prefix " ", detokenize() removes it
        self._dummy_prefix = facts.tokenizer == "llama" and facts.hparams.get("add_space_prefix", True) is not False

    @property
    def last_generation(self) -> GenerationStats | None:
        """What the last generation of the calling thread did (of any thread, when this one ran none);
        None before the first.  Per thread, so that concurrent generations each read their own."""
        return getattr(self._local, "stats", None) or self._last_any

    @last_generation.setter
    def last_generation(self, stats: GenerationStats | None) -> None:
        self._local.stats = stats
        self._last_any = stats

    @property
    def last_evaluated(self) -> int:
        """Prompt tokens the last generation evaluated (the others were already in the cache)."""
        return self.last_generation.prompt_evaluated if self.last_generation is not None else 0

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the native model (deferred to the end of a running stream; see the module doc)."""
        batcher, self._batcher = self._batcher, None
        if batcher is not None:   # its step loop takes the lock: end it first
            batcher.close()
        with self._lock:
            if self._handle is None or self._closing:
                return
            self._closing = True
            if not self._streams:
                self._free()

    def _free(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._backend.free_model(handle)

    @property
    def closed(self) -> bool:
        return self._handle is None or self._closing

    def _h(self) -> Any:
        """The native handle; every native call asks again, so a close() in between is seen."""
        if self._handle is None or self._closing:
            raise ModelClosedError(f"{self.info.path}: the model was closed")
        return self._handle

    def _weights(self) -> Any:
        """The handle, for calls that evaluate: a vocabulary-only Model refuses them clearly."""
        h = self._h()
        if self.info.vocab_only:
            raise BackendError(f"{self.info.path}: loaded for tokenizing only (vocab_only), so it cannot "
                               f"evaluate; load the model file itself with vocab_only=False")
        return h

    def _err(self, what: str) -> BackendError:
        return BackendError(f"{self.info.path} ({self.info.backend}/{self.info.variant}): {what}: "
                            f"{self._backend.last_error() or 'no reason given'}")

    # -- vocabulary -----------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    def token_bos(self) -> int:
        with self._lock:
            return int(self._lib.g4a_token_bos(self._h()))

    def token_eos(self) -> int:
        with self._lock:
            return int(self._lib.g4a_token_eos(self._h()))

    def tokenize(self, text: str | bytes, *, add_bos: bool = True, special: bool = False) -> list[int]:
        """The ids the model's own tokenizer gives for ``text``, the same in every era.

        ``add_bos``: start with the beginning-of-sequence token where the model has one (LLaMA-style
        vocabularies; GPT-J and MPT have none).  ``special``: read control tokens written in the text
        (``"<s>"``, ``"<|im_start|>"``) as those tokens; otherwise they are plain text.  SentencePiece
        vocabularies get the dummy prefix (a leading space) before each piece of text, as the
        original tokenizer does, in the 2023 eras too (see the README's tokenization contract).
        """
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if len(data) > MAX_TOKENIZE_BYTES:
            raise ValueError(f"{self.info.path}: tokenize() takes at most {MAX_TOKENIZE_BYTES >> 20} MiB of text "
                             f"at once, got {len(data)} bytes; split the text")
        with self._lock:
            h = self._h()
            cap = len(data) + 8
            buf = self._ffi.new("int32_t[]", cap)
            n = self._lib.g4a_tokenize(h, data, len(data), int(add_bos), int(special), buf, cap)
            if n < 0 and n != -(2**31):
                cap = -n
                buf = self._ffi.new("int32_t[]", cap)
                n = self._lib.g4a_tokenize(h, data, len(data), int(add_bos), int(special), buf, cap)
            if n < 0:
                raise self._err("tokenize failed")
            return list(buf[0:n])

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (possibly part of a UTF-8 character).  Remembered per id, so that
        the streams of a batch turn tokens into text without waiting for the step that holds the lock."""
        piece = self._pieces.get(token)
        if piece is not None:
            self._h()   # a closed model says so, remembered or not
            return piece
        with self._lock:
            h = self._h()
            n = self._lib.g4a_token_to_piece(h, int(token), self._piece_buf, 256)
            if n == -(2**31):
                raise self._err(f"token {token}")
            if n < 0:
                big = self._ffi.new("char[]", -n)
                n = self._lib.g4a_token_to_piece(h, int(token), big, -n)
                piece = bytes(self._ffi.buffer(big, n))
            else:
                piece = bytes(self._ffi.buffer(self._piece_buf, n))
        if isinstance(token, int) and not isinstance(token, bool):
            self._pieces[token] = piece
        return piece

    def token_pieces(self) -> list[bytes]:
        """:meth:`token_bytes` of every id, in one call: what a constraint engine reads (an
        IsolatedModel answers it in one round trip instead of one per token)."""
        with self._lock:
            self._h()
            return [self.token_bytes(t) for t in range(self.n_vocab)]

    def eog_tokens(self) -> list[int]:
        """The ids that end a generation in this engine (EOS, and end-of-turn tokens where the era knows them)."""
        with self._lock:
            h = self._h()
            return [t for t in range(self.n_vocab) if self._lib.g4a_is_eog(h, t)]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``: ``detokenize(tokenize(text)) == text`` for every text.

        Control tokens have no text; for SentencePiece vocabularies the dummy prefix that
        :meth:`tokenize` adds (one leading space of the first piece of text) is removed, as the
        original tokenizer's decode does.  Pieces of a generation are :meth:`token_bytes`, unstripped.
        """
        data = b"".join(self.token_bytes(t) for t in tokens)
        if self._dummy_prefix and data.startswith(b" "):
            data = data[1:]
        return data.decode("utf-8", "replace")

    # -- evaluation -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything evaluated so far (a batching model: every sequence's cache, between generations)."""
        if self._batcher is not None:
            self._batcher.forget()   # before the lock: a step takes the batch's state, then the lock
        with self._lock:
            self._lib.g4a_reset(self._h())
            self._kv = []

    def _single_stream(self, what: str) -> None:
        """The low-level single-stream calls share sequence 0 with a batch: refused on a batching model."""
        if self._batcher is not None:
            raise BackendError(f"{self.info.path}: {what} works on one stream, and this model batches its "
                               f"generations (load(parallel={self.info.parallel})); load it with parallel=1 for "
                               f"{what}, or use generate()")

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens the engine's cache holds (the prompt and output of the last generation, or what
        :meth:`evaluate` appended); the next prompt that starts with them evaluates only the rest."""
        with self._lock:
            return list(self._kv)

    def _rewind(self, n_keep: int) -> None:
        """Keep the first ``n_keep`` cached tokens; engines that cannot cut their state back (recurrent
        models) start again from nothing, and the caller evaluates what is missing."""
        if n_keep >= len(self._kv):
            return
        h = self._h()
        if n_keep > 0 and self._lib.g4a_truncate(h, n_keep) == 0:
            del self._kv[n_keep:]
        else:
            self._lib.g4a_reset(h)
            self._kv = []

    def _evaluate_to(self, tokens: Sequence[int]) -> int:
        """Make the cache hold exactly ``tokens``, evaluating only what follows the longest common
        prefix (at least the last token, so the logits belong to it); returns the tokens evaluated."""
        keep = 0
        for a, b in zip(self._kv, tokens[:-1]):
            if a != b:
                break
            keep += 1
        self._rewind(keep)
        todo = list(tokens[len(self._kv):])
        self.evaluate(todo)
        return len(todo)

    def _shift(self, n_keep: int) -> None:
        """Context shift: keep the first ``n_keep`` tokens and drop the older half of the rest.  The
        engine moves the kept tail back in its cache where it can (2026 era); otherwise the tail is
        evaluated again at its new positions, which every era can (see ``info.context_shift``)."""
        kv = self._kv
        n_keep = min(n_keep, len(kv) - 1)
        n_discard = max(1, (len(kv) - n_keep) // 2)
        if self._lib.g4a_shift(self._h(), n_keep, n_discard) == 0:
            del kv[n_keep:n_keep + n_discard]
        else:
            self._evaluate_to(kv[:n_keep] + kv[n_keep + n_discard:])

    @property
    def n_past(self) -> int:
        with self._lock:
            return int(self._lib.g4a_n_past(self._h()))

    def evaluate(self, tokens: Sequence[int]) -> None:
        """Append tokens to the context (after whatever was evaluated before)."""
        if not tokens:
            return
        self._single_stream("evaluate()")
        with self._lock:
            h = self._weights()
            # the shim checks each id against the vocabulary and the context; Python keeps them int32
            ids = [_int_arg(t, "a token id", -2**31, 2**31 - 1) for t in tokens]
            self._eval(h, self._ffi.new("int32_t[]", ids), ids)

    def _eval(self, h: Any, arr: Any, ids: Sequence[int]) -> None:
        """Evaluate ``ids`` (already in ``arr``) after the cache, and remember them there."""
        with self._backend.evaluating(h):
            rc = self._lib.g4a_eval(h, arr, len(ids))
        if rc != 0:
            err = self._err("evaluation failed")
            self._lib.g4a_reset(h)   # what the engine holds after a failed batch is not known
            self._kv = []
            raise err
        self._kv.extend(ids)

    def logits(self) -> list[float]:
        """Logits of the last evaluated position (n_vocab floats)."""
        self._single_stream("logits()")
        with self._lock:
            p = self._lib.g4a_logits(self._weights())
            if p == self._ffi.NULL:
                raise self._err("no logits")
            return list(self._ffi.unpack(p, self.info.n_vocab))

    def embed(self, text: str) -> list[float]:
        """Embedding of ``text`` (needs ``load(..., embeddings=True)``)."""
        if not self._embeddings:
            raise BackendError(f"{self.info.path}: embeddings were not requested at load time; "
                               f"use gpt4all_loader.load(path, embeddings=True)")
        return self.embed_tokens(self.tokenize(text, add_bos=True))

    def embed_tokens(self, tokens: Sequence[int]) -> list[float]:
        """Embedding of these token ids as they are (no tokenizer: two engines compared on the same ids)."""
        if not self._embeddings:
            raise BackendError(f"{self.info.path}: embeddings were not requested at load time; "
                               f"use gpt4all_loader.load(path, embeddings=True)")
        with self._lock:
            self.reset()
            self.evaluate(tokens)
            p = self._lib.g4a_embeddings(self._h())
            if p == self._ffi.NULL:
                raise self._err(f"{self.info.backend} gives no embedding for this model")
            n = int(self._lib.g4a_n_embd(self._h())) or self.info.n_embd
            return list(self._ffi.unpack(p, n))

    # -- generation -----------------------------------------------------------------------------
    @overload
    def generate(self, prompt: str | Sequence[int], *, stream: Literal[False] = ..., **kwargs: Any) -> str: ...

    @overload
    def generate(self, prompt: str | Sequence[int], *, stream: Literal[True], **kwargs: Any) -> Iterator[str]: ...

    @overload
    def generate(self, prompt: str | Sequence[int], *, stream: bool = ..., **kwargs: Any) -> str | Iterator[str]: ...

    def generate(self, prompt: str | Sequence[int], *, stream: bool = False, stop: Sequence[str] = (),
                 callback: Callable[[str], bool] | None = None, **kwargs: Any) -> str | Iterator[str]:
        """Continue ``prompt`` (text, or token ids); ``kwargs`` are :meth:`generate_tokens`'s.

        ``temperature=0`` is greedy and deterministic; otherwise sampling is seeded by ``seed``
        (a random seed when None).  Generation stops at an end-of-generation token, at a ``stop``
        string (not included in the output), after ``max_tokens``, when a constraint (``json_schema``,
        ``grammar``) is complete, or when ``callback(piece)`` returns False.  Only what follows the
        longest prefix the prompt shares with the cached tokens (:attr:`cached_tokens`) is evaluated.
        When the context fills, ``context_shift`` keeps the first ``n_keep`` tokens (default: the
        prompt's start, up to a quarter of the context, so at least BOS), drops the older half of the
        rest and goes on; ``context_shift=False`` stops.  ``stream=True`` returns an iterator of text
        pieces that never splits a UTF-8 character; breaking out of it cancels the generation.  With
        ``logprobs=True`` each piece is a :class:`Piece` (a str) that also carries the log-probabilities
        of its tokens, and :attr:`last_generation` has them all.
        Parameters are checked here, before anything runs (ValueError).
        """
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {stop!r}")
        if callback is not None and not callable(callback):
            raise ValueError(f"callback must be callable or None, got {callback!r}")
        tokens = self.generate_tokens(prompt, **kwargs)
        it = self._generate(tokens, stop=stops, callback=callback, logprobs=bool(kwargs.get("logprobs")))
        if stream:
            return it
        return "".join(it)

    def generate_tokens(self, prompt: str | Sequence[int], *, max_tokens: int = 128, temperature: float = 0.0,
                        top_k: int = 40, top_p: float = 0.95, min_p: float = 0.0, repeat_penalty: float = 1.0,
                        repeat_last_n: int = 64, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                        logit_bias: Mapping[int | str, float] | None = None, logprobs: bool = False,
                        top_logprobs: int | None = None, json_schema: Mapping[str, Any] | bool | None = None,
                        grammar: "str | Grammar | None" = None, seed: int | None = None, add_bos: bool = True,
                        special: bool = False, context_shift: bool = True,
                        n_keep: int | None = None) -> Generator[int, None, None]:
        """The token ids generate() would produce, one at a time (the model stays locked while iterating).

        presence_penalty, frequency_penalty (-2..2) and logit_bias ({token id: bias}) work as in OpenAI's
        API, over the ``repeat_last_n`` window.  json_schema (a JSON schema; ``True``: any JSON object) or
        grammar (a Lark or GBNF grammar) constrains every token (:mod:`gpt4all_loader.constrain`): the
        reply fits, or ends with finish_reason "length".  logprobs/top_logprobs record each token's
        log-probability (and up to 20 alternatives) in :attr:`last_generation`.
        """
        if self.info.architecture in EMBEDDING_ONLY:
            raise BackendError(f"{self.info.path}: a {self.info.architecture} file is a sentence-embedding model: it "
                               f"has no next-token logits and generates no text; use embed() (load(..., "
                               f"embeddings=True))")
        params = SamplingParams.checked(
            n_vocab=self.info.n_vocab, n_ctx=self.info.n_ctx, temperature=temperature, top_k=top_k, top_p=top_p,
            min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, logit_bias=logit_bias, logprobs=logprobs, top_logprobs=top_logprobs)
        max_tokens = _int_arg(max_tokens, "max_tokens", 0, 2**31 - 1)
        seed = _int_arg(seed, "seed", -2**63, 2**64 - 1) if seed is not None \
            else int.from_bytes(os.urandom(8), "little")
        if not isinstance(prompt, (str, bytes)):
            prompt = [_int_arg(t, "a token id", -2**31, 2**31 - 1) for t in prompt]
        keep = None if n_keep is None else _int_arg(n_keep, "n_keep", 0, 2**31 - 1)
        shift = keep if context_shift else -1
        grammar_ = self.constraint(json_schema=json_schema, grammar=grammar)
        return self._token_stream(prompt, max_tokens, params, seed, add_bos, special, shift, grammar_)

    def constraint(self, *, json_schema: Mapping[str, Any] | bool | None = None,
                   grammar: "str | Grammar | None" = None) -> "Grammar | None":
        """The compiled constraint for this model's vocabulary (None when neither is given).  The vocabulary
        is read once per model; each call compiles (1-3 ms for a typical schema), and a compiled Grammar
        passed as ``grammar`` is used as it is."""
        if json_schema is None and grammar is None:
            return None
        if json_schema is not None and grammar is not None:
            raise ValueError("give json_schema or grammar, not both")
        from .constrain import Grammar, Vocabulary
        from .constrain import compile as compile_constraint

        vocab = Vocabulary.from_model(self)   # built once per model
        if isinstance(grammar, Grammar):
            return grammar
        if json_schema is True:
            return compile_constraint(vocab, json_object=True)
        if grammar is not None:
            return compile_constraint(vocab, grammar=grammar)
        if not isinstance(json_schema, Mapping):
            raise ValueError(f"json_schema must be a JSON schema (a dict) or True, got {type(json_schema).__name__}")
        return compile_constraint(vocab, json_schema=dict(json_schema))

    def _token_logprob(self, lp: TokenLogprob) -> TokenLogprob:
        """The sampler's ids with each token's bytes, as a reply shows them."""
        return TokenLogprob(lp.token, lp.logprob, self.token_bytes(lp.token),
                            tuple(TokenLogprob(t.token, t.logprob, self.token_bytes(t.token)) for t in lp.top))

    def _token_stream(self, prompt: str | bytes | list[int], max_tokens: int, params: SamplingParams,
                      seed: int, add_bos: bool, special: bool, shift: int | None,
                      grammar: "Grammar | None") -> Generator[int, None, None]:
        """generate_tokens() after its checks.  Each native call fetches the handle again (``_h``):
        the consumer may close the model between two steps, and the free waits for this stream."""
        if self._batcher is not None:
            yield from self._batched_stream(prompt, max_tokens, params, seed, add_bos, special, grammar)
            return
        with self._lock:
            self._weights()
            self._streams += 1
            try:
                tokens = (self.tokenize(prompt, add_bos=add_bos, special=special)
                          if isinstance(prompt, (str, bytes)) else prompt)
                if not tokens:
                    tokens = [self.token_bos()]
                if len(tokens) >= self.info.n_ctx:
                    raise ContextLengthError(f"the prompt has {len(tokens)} tokens; the context holds "
                                             f"{self.info.n_ctx}")
                stats = self.last_generation = GenerationStats(prompt_tokens=len(tokens))
                if params.logprobs:
                    stats.logprobs = []
                t0 = time.perf_counter()
                stats.prompt_evaluated = self._evaluate_to(tokens)
                # context shift: -1 off; None the prompt's start, up to a quarter of the context
                n_keep = min(len(tokens), max(1, self.info.n_ctx // 4)) if shift is None else shift
                sampler = SequenceSampler(self._ffi, params, seed, self.info.n_vocab, tokens,
                                          grammar.matcher() if grammar is not None else None)
                one = self._ffi.new("int32_t[1]")
                try:
                    for i in range(max_tokens):
                        tok = sampler.sample(self._lib, self._h(), 0)
                        if tok < 0:
                            raise self._err("sampling failed")
                        if self._lib.g4a_is_eog(self._h(), tok):
                            stats.finish_reason = "stop"
                            return
                        stats.token_done(t0, sampler.last and self._token_logprob(sampler.last))
                        yield tok
                        sampler.accept(tok)
                        if sampler.constraint_done:
                            stats.finish_reason = "stop"
                            return
                        if i + 1 == max_tokens:   # the last one: its evaluation would only delay the end
                            break
                        if len(self._kv) + 1 > self.info.n_ctx:
                            if n_keep < 0:
                                stats.finish_reason = "length"
                                return
                            self._shift(n_keep)
                        one[0] = tok
                        self._eval(self._h(), one, (tok,))
                    stats.finish_reason = "length"
                except GeneratorExit:
                    stats.finish_reason = stats.finish_reason or "cancelled"  # _generate sets "stop" for a stop string
                    raise
            finally:
                self._streams -= 1
                if self._closing and not self._streams:
                    self._free()

    def _batched_stream(self, prompt: str | bytes | list[int], max_tokens: int, params: SamplingParams, seed: int,
                        add_bos: bool, special: bool, grammar: "Grammar | None") -> Generator[int, None, None]:
        """One sequence of the continuous batch (:mod:`gpt4all_loader.batching`): this thread waits for
        the tokens the batch's step loop samples for it."""
        assert self._batcher is not None
        tokens = (self.tokenize(prompt, add_bos=add_bos, special=special)
                  if isinstance(prompt, (str, bytes)) else prompt)
        if not tokens:
            tokens = [self.token_bos()]
        if len(tokens) >= self.info.n_ctx:
            raise ContextLengthError(f"the prompt has {len(tokens)} tokens; the context holds {self.info.n_ctx}")
        stats = self.last_generation = GenerationStats(prompt_tokens=len(tokens))
        if params.logprobs:
            stats.logprobs = []
        sampler = SequenceSampler(self._ffi, params, seed, self.info.n_vocab, tokens,
                                  grammar.matcher() if grammar is not None else None)
        yield from self._batcher.run(tokens, sampler, max_tokens, stats)

    def _generate(self, tokens: Generator[int, None, None], *, stop: tuple[str, ...],
                  callback: Callable[[str], bool] | None, logprobs: bool = False) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""          # text held back because it may be the start of a stop string
        hold = max((len(s) for s in stop), default=0)
        stats: GenerationStats | None = None
        taken = consumed = 0  # log-probabilities handed out with a piece; tokens read so far

        def piece(text: str) -> str:
            nonlocal taken
            if not logprobs or stats is None or stats.logprobs is None:
                return text
            lps = stats.logprobs[taken:consumed]  # a batch may have sampled this stream's next token already
            taken = consumed
            return Piece(text, tuple(lps))

        try:
            for tok in tokens:
                consumed += 1
                stats = self.last_generation  # this stream's: set by its first step, in this thread
                pending += decoder.decode(self.token_bytes(tok))
                if stop:
                    cut = min((i for i in (pending.find(s) for s in stop) if i >= 0), default=-1)
                    if cut >= 0:
                        if stats is not None:
                            stats.finish_reason = "stop"
                        if pending[:cut]:
                            yield piece(pending[:cut])
                        return
                    keep = hold - 1
                    out, pending = (pending[:-keep], pending[-keep:]) if keep and len(pending) > keep else \
                        (("", pending) if keep else (pending, ""))
                else:
                    out, pending = pending, ""
                if out:
                    if callback is not None and callback(out) is False:
                        return
                    yield piece(out)
            pending += decoder.decode(b"", final=True)
            if pending:
                if callback is None or callback(pending) is not False:
                    yield piece(pending)
        finally:
            tokens.close()

    # -- chat -----------------------------------------------------------------------------------
    @property
    def chat_template(self) -> ChatTemplate:
        """The template :meth:`chat` renders with (its ``source`` says why this one)."""
        return self._chat_template

    @property
    def chat_template_source(self) -> str:
        return self.info.chat_template_source

    @overload
    def chat(self, messages: Sequence[Mapping[str, Any]], *, stream: Literal[False] = ..., **kwargs: Any) -> str: ...

    @overload
    def chat(self, messages: Sequence[Mapping[str, Any]], *, stream: Literal[True],
             **kwargs: Any) -> Iterator[str]: ...

    @overload
    def chat(self, messages: Sequence[Mapping[str, Any]], *, stream: bool = ...,
             **kwargs: Any) -> str | Iterator[str]: ...

    def chat(self, messages: Sequence[Mapping[str, Any]], *, stream: bool = False, response_format: Any = None,
             tools: Any = None, tool_choice: Any = None, parallel_tool_calls: Any = None,
             **kwargs: Any) -> str | Iterator[str]:
        """Render ``messages`` with the model's chat template (:attr:`chat_template`) and generate the
        reply; the template's stop strings are added to ``stop``.  ``kwargs`` are :meth:`generate`'s.

        response_format (OpenAI's): ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema":
        {"name": ..., "schema": {...}}}`` constrains the reply to JSON (that fits the schema).  tools,
        tool_choice, parallel_tool_calls (OpenAI's): the model may call the tools
        (:mod:`gpt4all_loader.tool_calls`); the reply is then a :class:`Reply` (a str, the raw text) whose
        ``content`` and ``tool_calls`` (OpenAI's shape, arguments that fit each tool's parameters) are read
        back, also recorded in :attr:`last_generation` (finish_reason "tool_calls" when it calls).
        """
        from .tool_calls import plan as tool_plan

        schema = response_schema(response_format)
        t = self._chat_template
        bos = self.token_bytes(self.token_bos()).decode("utf-8", "replace")
        eos = self.token_bytes(self.token_eos()).decode("utf-8", "replace")
        the_plan = None
        try:
            if tools is not None or tool_choice is not None:
                the_plan = tool_plan(tools or [], tool_choice, parallel_tool_calls,
                                     schema if isinstance(schema, dict) else None, chat_template=t.jinja)
                text = the_plan.render(t, messages, bos_token=bos, eos_token=eos)
            else:
                text = t.render([dict(m) for m in messages], bos_token=bos, eos_token=eos)
        except ChatTemplateError as e:
            raise ChatTemplateError(f"{self.info.path}: {t.source} template: {e}") from None
        if the_plan is not None and the_plan.constrained:
            from .constrain import Vocabulary

            kwargs["grammar"] = the_plan.compile(Vocabulary.from_model(self))
        elif schema is not None:
            kwargs["json_schema"] = schema
        add_bos = not (bos and text.startswith(bos))
        kwargs.setdefault("special", True)
        stop = kwargs.get("stop", ())
        kwargs["stop"] = tuple(dict.fromkeys(((stop,) if isinstance(stop, str) else tuple(stop)) + t.stop))
        if the_plan is None:
            reply: str | Iterator[str] = self.generate(text, add_bos=add_bos, stream=stream, **kwargs)
            return reply
        pieces = self._tool_reply(self.generate(text, add_bos=add_bos, stream=True, **kwargs), the_plan)
        if stream:
            return pieces
        raw = "".join(pieces)
        st = self.last_generation
        return Reply(raw, st.content if st is not None else raw,
                     st.tool_calls or [] if st is not None else [])

    def _tool_reply(self, pieces: Iterator[str], the_plan: "ToolPlan") -> Iterator[str]:
        """The raw pieces of a reply with tools; at its end, its content and calls go in the stats."""
        text: list[str] = []
        try:
            for p in pieces:
                text.append(p)
                yield p
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        st = self.last_generation
        if st is not None:
            st.content, calls = the_plan.parse("".join(text))
            st.tool_calls = calls
            if calls:
                st.finish_reason = "tool_calls"

    def chat_session(self, system: str | None = None) -> "ChatSession":
        """A multi-turn conversation that keeps its messages and reuses the evaluated history
        (``with model.chat_session() as chat: chat.send("Hi")``); :meth:`chat` stays stateless."""
        from .chat import ChatSession

        return ChatSession(self, system)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_ctx={self.info.n_ctx}"
        return f"<Model {Path(self.info.path).name} on {self.info.backend}/{self.info.variant} {state}>"


# ------------------------------------------------------------------------------------------------
def _flash_attn(value: str | bool, era_default: str, backend: str) -> str:
    """"auto", "on" or "off" from load()'s flash_attn; True on an era without flash attention is an error."""
    fa = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    if fa not in ("auto", "on", "off"):
        raise ValueError(f"flash_attn must be 'auto', True or False, got {value!r}")
    if fa == "on" and not era_default:
        raise ValueError(f"backend {backend} has no flash attention (flash_attn=True); use 'auto' or False")
    return fa


def _legacy_params(facts: FileFacts) -> tuple[int, float]:
    """(n_gqa, rms_norm_eps) that ggjt-era files need but do not carry."""
    if facts.format not in LEGACY_CONTAINERS:
        return 0, 0.0
    n_head = int(facts.hparams.get("n_head") or 0)
    n_head_kv = int(facts.hparams.get("n_head_kv") or n_head or 0)
    if n_head and n_head_kv and n_head_kv < n_head:
        return n_head // n_head_kv, LEGACY_GQA_RMS_EPS
    return 0, LEGACY_RMS_EPS


def load(path: str | os.PathLike[str], *, device: str = "auto", n_ctx: int | None = None,
         n_threads: int | None = None, n_gpu_layers: int | None = None, backend: str | None = None,
         embeddings: bool = False, seed: int = 0, vocab_only: bool | None = None, flash_attn: str | bool = "auto",
         chat_template: str | None = None, published_table: TableArg = None, parallel: int = 1) -> Model:
    """Load a model file, in this process, on the backend that reads it (``gpt4all_loader.load`` also
    runs it in a worker process: ``isolated=True``).

    device: "auto" (CUDA when a CUDA variant is built and usable, else the best CPU variant),
    "cpu", or "cuda" (raises DeviceError rather than falling back).  backend: force one backend
    by name (it must still accept the file: files are never handed to an engine that would misread
    them).
    vocab_only: load only the tokenizer (no weights, no context): the Model tokenizes and
    detokenizes, and refuses to evaluate.  None (the default) means True for vocabulary-only files
    (no tensors) and False otherwise.
    flash_attn: "auto" (the era's default: the 2026 engine turns it on for the CPU, 2024-09 leaves it
    off), True or False, to match another tool's numbers; eras without flash attention refuse True.
    chat_template: the template :meth:`Model.chat` uses when the file carries none and GPT4All published
    none for it: a built-in name ("chatml", "llama2", "alpaca", "vicuna") or a file of Jinja text; the
    default is ChatML (:func:`~gpt4all_loader.chat.resolve_template`).  published_table: a list of
    published files in the format of the packaged ``gpt4all_published.json`` (a path), used instead of it.
    """
    from .chat import resolve_template
    from .facts_cache import read_facts_cached
    from .memory import fit_layers
    from .plan import plan

    path = os.fspath(path)
    facts = read_facts_cached(path)
    template = resolve_template(path, facts, chat_template, published_table)
    if vocab_only is None:
        vocab_only = bool(facts.vocab_only)
    n_ctx_train = int(facts.hparams.get("n_ctx_train") or 0)
    if n_ctx is not None:  # None: the plan's default_n_ctx(facts), the context probe() plans with too
        n_ctx = _int_arg(n_ctx, "n_ctx", 1, max(MAX_N_CTX, n_ctx_train))
    n_threads = _int_arg(n_threads, "n_threads", 1, max_threads()) if n_threads is not None else 0
    if n_gpu_layers is not None:
        _int_arg(n_gpu_layers, "n_gpu_layers", -1, 2**31 - 1)
    seed = _int_arg(seed, "seed", -2**63, 2**64 - 1)
    parallel = _int_arg(parallel, "parallel", 1, MAX_PARALLEL)
    the_plan = plan(facts, device=device, backend=backend, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                    fit_layers=fit_layers)
    name, choice = the_plan.require()
    n_ctx = the_plan.n_ctx
    rejected, why_backend = the_plan.rejected, the_plan.why_backend
    fa_default = load_manifest()[name].flash_attn or ""
    fa = _flash_attn(flash_attn, fa_default, name)
    be = native.open_backend(name, choice.variant)
    n_gqa, eps = _legacy_params(facts)
    ffi = native.ffi()
    params = ffi.new("g4a_load_params *", dict(
        n_ctx=n_ctx, n_threads=n_threads,
        n_gpu_layers=int(-1 if choice.n_gpu_layers is None else choice.n_gpu_layers) if choice.device == "cuda" else 0,
        vocab_only=int(vocab_only), embeddings=int(embeddings), n_gqa=n_gqa, rms_norm_eps=eps, seed=seed & 0xFFFFFFFF,
        flash_attn={"auto": -1, "off": 0, "on": 1}[fa], n_seq_max=1 if vocab_only or embeddings else parallel))
    t0 = time.perf_counter()
    handle = be.load_model(path, params)
    seconds = time.perf_counter() - t0
    if handle == ffi.NULL:
        raise BackendError(f"{path}: {be.name}/{be.variant} failed to load it: {be.last_error()}")
    rec = cache.read_record(be.name, be.variant)
    info = ModelInfo(
        path=path, backend=be.name, llama_cpp=rec.get("llama_cpp", ""), sdist=rec.get("sdist", ""),
        variant=be.variant, device=choice.device, format=facts.format, format_version=facts.format_version,
        architecture=facts.architecture, n_ctx=int(be.lib.g4a_n_ctx(handle)),
        n_ctx_train=int(be.lib.g4a_n_ctx_train(handle)) or n_ctx_train, n_vocab=int(be.lib.g4a_n_vocab(handle)),
        n_embd=int(be.lib.g4a_n_embd(handle)), n_gpu_layers=int(be.lib.g4a_n_gpu_layers(handle)),
        load_seconds=seconds, why_backend=why_backend, why_variant=choice.reason, rejected=rejected,
        engine=be.info(), vocab_only=bool(vocab_only), flash_attn=fa if fa != "auto" else (fa_default or "off"),
        context_shift="" if vocab_only else ("cache" if be.lib.g4a_shift(handle, 0, 0) == 0 else "re-evaluate"),
        chat_template_source=template.source, parallel=max(1, int(be.lib.g4a_n_seq_max(handle))))
    model = Model(be, handle, info, facts, embeddings, template)
    if info.parallel > 1:
        from .batching import Batcher

        model._batcher = Batcher(model, info.parallel)
    return model
