"""Constrained output: the allowed-token mask of a JSON schema, grammar or regex over any of our vocabularies.

One engine for every era: `llguidance <https://github.com/guidance-ai/llguidance>`_ (MIT, no dependencies).
It needs only what every era gives, the bytes of each token id and the ids that end a generation, and
writes the mask the C sampler reads: ``ceil(n_vocab / 32)`` little-endian 32-bit words, bit ``t % 32`` of
word ``t // 32`` set when token ``t`` is allowed.

* :class:`Vocabulary`: built once per model (:meth:`Vocabulary.from_model`); control tokens carry
  llguidance's ``\\xff`` prefix, so a grammar names them (``<|im_end|>``) but never writes them as text.
* :func:`compile` -> :class:`Grammar` (one per request) -> :meth:`Grammar.matcher` -> :class:`Matcher`
  (one per sequence): :meth:`~Matcher.fill_mask`, then :meth:`~Matcher.consume` the sampled token.
* :class:`Limits`: what one request may cost (text size, compile time, llguidance's parser limits).

JSON output is OpenAI-like: properties in schema order, ``additionalProperties`` as the schema says
(llguidance follows JSON Schema: allowed unless false), strings as UTF-8 (``\\u`` escapes only for
control characters), and bounded whitespace (:data:`JSON_OPTIONS`).  A schema keyword llguidance cannot
enforce raises :class:`ConstraintError` naming it; nothing is silently left out.
"""
from __future__ import annotations

import json
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import ConstraintError

if TYPE_CHECKING:  # pragma: no cover
    import llguidance

__all__ = ["ConstraintError", "Limits", "Vocabulary", "Grammar", "Matcher", "compile", "allows", "allowed_ids",
           "JSON_OPTIONS"]

#: llguidance's JSON options, applied over any ``x-guidance`` a schema carries.  Whitespace is
#: llama.cpp's rule (``space ::= | " " | "\n" [ \t]{0,20}``): none, one space, or a newline and up to 20
#: characters of indentation between tokens, so compact, ``json.dumps`` and pretty-printed JSON all fit,
#: but a model cannot spin in whitespace (unbounded by default).  ``lenient`` false: an unimplemented
#: keyword is an error, never ignored; ``coerce_one_of`` false: an overlapping ``oneOf`` is refused
#: rather than widened to ``anyOf``.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": True,
    "whitespace_pattern": r"(?: |\n[ \t]{0,20})",
    "item_separator": ",",
    "key_separator": ":",
    "lenient": False,
    "coerce_one_of": False,
}

#: GGUF token types (llama.cpp's ``enum llama_token_type``) that are not text: unknown, control, unused
_NOT_TEXT_TYPES = frozenset({2, 3, 5})

#: the grammar compiles on a thread with this much stack: llguidance's grammar passes recurse once per
#: level of rule nesting, and a chain of ~3000 rules (60 KB of Lark) overflows the 8 MiB default and kills
#: the process.  Reserved address space, touched only as deep as the recursion goes.
_COMPILE_STACK = 256 << 20
_stack_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    """What one grammar may cost, so that a request can neither hang a worker nor balloon its memory.

    The parser limits are llguidance's :class:`~llguidance.LLParserLimits` (its speeds: lexer fuel ~50k
    per ms at build, ~14k per ms per step; Earley items ~20k per ms).
    """

    #: schema / grammar / regex text, in bytes of UTF-8 (a large tool set is ~10 KiB)
    max_text_bytes: int = 64 << 10
    #: wall time of a compile (llguidance's own work is bounded by the fuel below; this catches the rest)
    compile_seconds: float = 2.0
    #: branching factor of one grammar row (llguidance's default)
    max_items_in_row: int = 2000
    #: fuel to build the lexer's regexes, ~20 ms (default)
    initial_lexer_fuel: int = 1_000_000
    #: lexer fuel of one mask, ~14 ms at worst against a decode of 5-50 ms (default)
    step_lexer_fuel: int = 200_000
    #: Earley items of one mask, ~2.5 ms (default)
    step_max_items: int = 50_000
    #: lexer states one matcher may build, 1-2 KB each: 20 000 caps it near 40 MB (default 250 000, 0.5 GB);
    #: JSON schemas need hundreds to a few thousand
    max_lexer_states: int = 20_000
    #: symbols of the compiled grammar (default 500 000); 64 KiB of schema compiles to far fewer
    max_grammar_size: int = 200_000

    def parser_limits(self) -> llguidance.LLParserLimits:
        import llguidance

        return llguidance.LLParserLimits(
            max_items_in_row=self.max_items_in_row, initial_lexer_fuel=self.initial_lexer_fuel,
            step_lexer_fuel=self.step_lexer_fuel, step_max_items=self.step_max_items,
            max_lexer_states=self.max_lexer_states, max_grammar_size=self.max_grammar_size,
            verbose_errors=False)


class _Pieces:
    """The token table llguidance's TokenizerWrapper reads; its tokenize callback is llguidance's own greedy
    tokenizer over the same table (set once the LLTokenizer exists).  llguidance tokenizes only the bytes a
    grammar forces (to propose fast-forward tokens); masks depend on the token bytes alone, so no engine
    call, and no dummy-prefix rule of a SentencePiece tokenizer, is involved."""

    def __init__(self, tokens: list[bytes], eos: int) -> None:
        self.tokens = tokens
        self.eos_token_id = eos
        self.bos_token_id = None
        self.special_token_ids: list[int] = []
        self.greedy: Any = None

    def __call__(self, data: bytes) -> list[int]:
        if self.greedy is None:
            return []
        out: list[int] = self.greedy(data.decode("utf-8", "replace"))
        return out


class Vocabulary:
    """What the mask engine knows of a model's vocabulary: each id's bytes, which ids are not text, the end ids.

    ``pieces[i]``: the raw bytes token ``i`` stands for (``<0x0A>`` is ``b"\\n"``, ``▁`` is a space), as
    the engine detokenizes it.  ``special``: ids that are not text (control, unknown, unused, end and
    begin tokens, ids without bytes), each with the name a grammar calls it by (``<|im_end|>``; ``<[id]>``
    when it has none).  ``eog``: the ids that end a generation, EOS first; the grammar allows them once it
    is satisfied.
    """

    def __init__(self, pieces: Sequence[bytes], *, special: Mapping[int, str], eog: Sequence[int]) -> None:
        n = len(pieces)
        if n <= 0:
            raise ConstraintError("a vocabulary needs at least one token")
        if not eog or any(not 0 <= t < n for t in eog):
            raise ConstraintError(f"end-of-generation ids {list(eog)} are not ids of a {n}-token vocabulary")
        bad = [t for t in special if not 0 <= t < n]
        if bad:
            raise ConstraintError(f"special ids {bad[:5]} are not ids of a {n}-token vocabulary")
        self.n_vocab = n
        self.pieces: tuple[bytes, ...] = tuple(bytes(p) for p in pieces)
        self.eog: tuple[int, ...] = tuple(dict.fromkeys(int(t) for t in eog))
        self.special: dict[int, str] = {int(t): special.get(t) or f"<[{t}]>" for t in (*special, *self.eog)}
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def mask_words(self) -> int:
        """32-bit words of one mask: ``ceil(n_vocab / 32)``."""
        return (self.n_vocab + 31) // 32

    @property
    def mask_bytes(self) -> int:
        return self.mask_words * 4

    def __repr__(self) -> str:
        return f"<Vocabulary {self.n_vocab} tokens, {len(self.special)} special, eog {list(self.eog)}>"

    @classmethod
    def from_model(cls, model: Any) -> Vocabulary:
        """The vocabulary of a loaded :class:`~gpt4all_loader.model.Model` or
        :class:`~gpt4all_loader.worker.IsolatedModel`, built once per model object (cached).

        Bytes and end ids come from the engine (``token_pieces``, ``eog_tokens``); which ids are control,
        unknown or unused from the file's ``tokenizer.ggml.token_type`` (GGUF).  2023 files state no token
        types: there the begin, end and byte-less ids are the special ones.
        """
        got = _by_model.get(model)
        if got is not None:
            return got
        pieces: list[bytes] = model.token_pieces()
        eos = int(model.token_eos())
        eog = [eos] + [t for t in model.eog_tokens() if t != eos] if 0 <= eos < len(pieces) else model.eog_tokens()
        names = _token_names(model.facts)
        special: dict[int, str] = {}
        for t, (kind, name) in names.items():
            if kind in _NOT_TEXT_TYPES and t < len(pieces):
                special[t] = name
        bos = int(model.token_bos())
        for t in (bos, *eog):
            if 0 <= t < len(pieces):
                special.setdefault(t, names.get(t, (0, ""))[1] or pieces[t].decode("utf-8", "replace"))
        for t, p in enumerate(pieces):
            if not p:
                special.setdefault(t, names.get(t, (0, ""))[1])
        if not eog:
            eog = [eos] if 0 <= eos < len(pieces) else [len(pieces) - 1]
        vocab = cls(pieces, special=special, eog=eog)
        _by_model[model] = vocab
        return vocab

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's tokenizer of this vocabulary, built on first use (~0.1 s per 50k tokens) and kept."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance

                table = [b"\xff" + self.special[t].encode("utf-8") if t in self.special else p
                         for t, p in enumerate(self.pieces)]
                wrapper = _Pieces(table, self.eog[0])
                tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper), n_vocab=self.n_vocab,
                                             eos_token=list(self.eog))
                wrapper.greedy = tok.greedy_tokenize
                self._tokenizer = tok
            return self._tokenizer

    def tokenize(self, data: bytes) -> list[int]:
        """A greedy (longest match) tokenization of ``data`` over the pieces: ids whose bytes join to
        ``data``, not necessarily the model tokenizer's choice."""
        return list(self.tokenizer.tokenize_bytes(bytes(data)))

    def special_name(self, token: int) -> str | None:
        return self.special.get(token)


#: one Vocabulary per model object, for as long as the model lives
_by_model: weakref.WeakKeyDictionary[Any, Vocabulary] = weakref.WeakKeyDictionary()


def _token_names(facts: Any) -> dict[int, tuple[int, str]]:
    """id -> (GGUF token type, token text) of a GGUF file's vocabulary; empty for files without types."""
    if facts is None or getattr(facts, "format", None) != "gguf":
        return {}
    vocab = getattr(facts, "vocab", None)
    if vocab is None or vocab.token_types is None:
        return {}
    from .formats.sniff import read_facts

    kv = read_facts(facts.path, with_vocab=True).kv or {}
    types, texts = kv.get("tokenizer.ggml.token_type"), kv.get("tokenizer.ggml.tokens")
    if not isinstance(types, list) or not isinstance(texts, list):
        return {}
    return {t: (int(k), str(texts[t]) if t < len(texts) else "") for t, k in enumerate(types) if k != 1}


# ------------------------------------------------------------------------------------------------
# Compiling

class Grammar:
    """One compiled constraint over one vocabulary; :meth:`matcher` gives each sequence its own state."""

    def __init__(self, vocab: Vocabulary, kind: str, source: str, template: llguidance.LLMatcher,
                 seconds: float) -> None:
        self.vocab = vocab
        #: "json_schema", "json_object", "lark", "gbnf" or "regex"
        self.kind = kind
        #: what llguidance compiled (its JSON grammar description)
        self.source = source
        #: how long the compile took, in seconds
        self.compile_seconds = seconds
        self._template = template

    def matcher(self) -> Matcher:
        """A fresh matcher at the start of the output (a copy of the compiled one: no second compile)."""
        return Matcher(self.vocab, self._template.deep_copy())

    def __repr__(self) -> str:
        ms = self.compile_seconds * 1e3
        return f"<Grammar {self.kind} over {self.vocab.n_vocab} tokens, compiled in {ms:.1f} ms>"


def compile(vocab: Vocabulary, *, json_schema: Mapping[str, Any] | str | bool | None = None,
            json_object: bool = False, grammar: str | None = None, regex: str | None = None,
            limits: Limits = Limits()) -> Grammar:
    """Compile exactly one of: a JSON schema (a dict or its JSON text), any JSON object, a grammar (llguidance's
    Lark syntax, or llama.cpp's GBNF, recognised by ``::=``) or a regular expression (Rust ``regex`` syntax).

    Raises :class:`ConstraintError` naming the unsupported keyword, the syntax error or the exceeded limit.
    """
    import llguidance

    given = [name for name, v in (("json_schema", json_schema), ("json_object", json_object or None),
                                  ("grammar", grammar), ("regex", regex)) if v is not None]
    if len(given) != 1:
        raise ConstraintError(f"give exactly one of json_schema, json_object, grammar, regex (got "
                              f"{', '.join(given) or 'none'})")
    kind = given[0]
    if kind in ("json_schema", "json_object"):
        schema: Any = {"type": "object"} if json_object else json_schema
        if isinstance(schema, str):
            _check_size("JSON schema", schema, limits)
            try:
                schema = json.loads(schema)
            except (ValueError, RecursionError) as e:
                raise ConstraintError(f"the JSON schema is not JSON: {e}") from None
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, Mapping):
            raise ConstraintError(f"a JSON schema is an object, not {type(schema).__name__}")
        schema = _tightened(schema)
        try:
            text = json.dumps(schema, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise ConstraintError(f"the JSON schema cannot be written as JSON: {type(e).__name__}: {e}") from None
        _check_size("JSON schema", text, limits)
        try:
            source = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)  # type: ignore
        except ValueError as e:
            raise ConstraintError(f"the JSON schema cannot be read: {e}") from None
    elif kind == "grammar":
        assert grammar is not None
        if not isinstance(grammar, str):
            raise ConstraintError(f"a grammar is text, not {type(grammar).__name__}")
        _check_size("grammar", grammar, limits)
        from llguidance.gbnf_to_lark import gbnf_to_lark, is_lark_syntax

        lark = grammar
        if "::=" in grammar and not is_lark_syntax(grammar):
            kind = "gbnf"
            try:
                lark = gbnf_to_lark(grammar)
            except RecursionError:
                raise ConstraintError("the GBNF grammar is nested too deeply") from None
            except Exception as e:  # noqa: BLE001 - the converter raises plain Exception for grammar errors
                raise ConstraintError(f"the GBNF grammar cannot be read: {e}") from None
        else:
            kind = "lark"
        source = llguidance.LLMatcher.grammar_from_lark(lark)
    else:
        if not isinstance(regex, str):
            raise ConstraintError(f"a regex is text, not {type(regex).__name__}")
        _check_size("regex", regex, limits)
        source = llguidance.LLMatcher.grammar_from_regex(regex)
    template, seconds = _build(vocab, source, limits, kind)
    return Grammar(vocab, kind, source, template, seconds)


#: JSON's interoperable integers (RFC 8259 §6): an integer without bounds gets these, so that a model
#: cannot write digits for ever (a random or confused model otherwise fills max_tokens with one number)
SAFE_INTEGER = 2**53 - 1


#: keywords whose value maps names to schemas
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def _tightened(schema: Any, depth: int = 0, closed: bool = True) -> Any:
    """A copy of ``schema`` read as llama.cpp's converter reads it: an object that lists its ``properties``
    allows no others unless it says so (``additionalProperties``), and every integer without a minimum or
    maximum has JSON's safe bound.  Both keep a model from writing one reply until max_tokens."""
    if depth > 200:   # deeper than any real schema; the size limit refuses it anyway
        return schema
    if isinstance(schema, list):
        return [_tightened(x, depth + 1, closed) for x in schema]
    if not isinstance(schema, Mapping):
        return schema
    # the branches of an allOf add up to one object: none of them may close it alone; the values of a
    # name -> schema map (properties, $defs, ...) are schemas, the map itself is not
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in _SCHEMA_MAPS and isinstance(v, Mapping):
            out[k] = {name: _tightened(sub, depth + 1) for name, sub in v.items()}
        else:
            out[k] = _tightened(v, depth + 1, k != "allOf")
    if closed and isinstance(out.get("properties"), Mapping) and "additionalProperties" not in out \
            and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    t = out.get("type")
    if t == "integer" or (isinstance(t, list) and "integer" in t and "number" not in t):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -SAFE_INTEGER
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INTEGER
    return out


def _check_size(what: str, text: str, limits: Limits) -> None:
    n = len(text.encode("utf-8", "replace"))
    if n > limits.max_text_bytes:
        raise ConstraintError(f"the {what} is {n} bytes, more than the limit of {limits.max_text_bytes} bytes")


def _build(vocab: Vocabulary, source: str, limits: Limits, kind: str) -> tuple[llguidance.LLMatcher, float]:
    """llguidance's matcher of ``source`` and its first mask, computed on a thread with a deep stack and
    waited for at most ``limits.compile_seconds``."""
    import llguidance

    tok = vocab.tokenizer
    plimits = limits.parser_limits()
    out: list[Any] = []

    def work() -> None:
        try:
            m = llguidance.LLMatcher(tok, source, log_level=0, limits=plimits)
            if not m.is_error():
                # the first mask builds the lexer's start states: limits hit here are compile errors
                m.compute_bitmask()
            out.append(m)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            out.append(e)

    t0 = time.perf_counter()
    with _stack_lock:  # stack_size() is process-wide: set it only around this thread's start
        old = threading.stack_size(_COMPILE_STACK)
        try:
            thread = threading.Thread(target=work, name="g4a-grammar-compile", daemon=True)
            thread.start()
        finally:
            threading.stack_size(old)
    thread.join(limits.compile_seconds)
    seconds = time.perf_counter() - t0
    if thread.is_alive():
        raise ConstraintError(f"the {_KIND_NAMES.get(kind, kind)} took longer than {limits.compile_seconds:g} s "
                              f"to compile (Limits.compile_seconds); simplify it")
    got = out[0]
    if isinstance(got, BaseException):
        raise ConstraintError(f"the {_KIND_NAMES.get(kind, kind)} cannot be compiled: {got}") from None
    if got.is_error():
        raise ConstraintError(_explain(got.get_error(), kind))
    return got, seconds


_KIND_NAMES = {"json_schema": "JSON schema", "json_object": "JSON schema", "lark": "grammar",
               "gbnf": "GBNF grammar", "regex": "regex"}
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")
_FORMAT = re.compile(r"Unknown format: (\S+)")
_LIMIT_WORDS = ("too many", "too large", "too deeply", "limit", "fuel", "too complex")


def _explain(error: str, kind: str) -> str:
    """llguidance's error as one line naming what the caller can change."""
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    m = _UNIMPLEMENTED.search(error)
    if m:
        keys = [k.strip().strip('"') for k in m.group(1).split(",") if k.strip()]
        names = ", ".join(repr(k) for k in keys)
        return f"unsupported JSON schema keyword{'s' if len(keys) > 1 else ''} {names}"
    m = _FORMAT.search(error)
    if m:
        return f"unsupported JSON schema format {m.group(1)!r}"
    if "oneOf constraints are not supported" in error:
        return "unsupported JSON schema keyword 'oneOf' whose branches overlap (use anyOf)"
    what = _KIND_NAMES.get(kind, kind) or "constraint"
    if any(w in error.lower() for w in _LIMIT_WORDS):
        return f"the {what} exceeds a limit: {first}"
    if kind in ("lark", "gbnf") and len(error.strip().splitlines()) > 1:
        return f"the {what} is invalid: {' '.join(line.strip() for line in error.strip().splitlines()[:3])}"
    return f"the {what} is invalid: {first}"


# ------------------------------------------------------------------------------------------------
# Matching

class Matcher:
    """The constraint's state for one sequence: fill the mask, sample, :meth:`consume`, repeat.

    Not thread-safe: one sequence, one thread at a time.  Once :meth:`is_stopped`, only an end id is allowed.
    """

    def __init__(self, vocab: Vocabulary, matcher: llguidance.LLMatcher) -> None:
        self.vocab = vocab
        self._m = matcher

    def fill_mask(self, buf: Any) -> None:
        """Write the allowed-token bitmask into ``buf``: a writable buffer of at least
        :attr:`Vocabulary.mask_bytes` bytes (a cffi ``uint32_t[]`` array, ``bytearray``, ``memoryview``,
        ``array('I')`` or numpy array).  Bits past ``n_vocab`` in the last word are zero."""
        nbytes = self.vocab.mask_bytes
        address, keep = _address(buf, nbytes)
        try:
            self._m.unsafe_compute_mask_ptr(address, nbytes)
        finally:
            del keep
        if self._m.is_error():
            raise ConstraintError(f"the constraint failed while generating: {_explain(self._m.get_error(), '')}")

    def mask(self) -> bytearray:
        """A new mask (see :meth:`fill_mask`)."""
        buf = bytearray(self.vocab.mask_bytes)
        self.fill_mask(buf)
        return buf

    def consume(self, token: int) -> None:
        """Advance past ``token``; ConstraintError (the state unchanged) when the constraint does not allow it."""
        t = int(token)
        if not 0 <= t < self.vocab.n_vocab:
            raise ConstraintError(f"token {t} is not an id of this {self.vocab.n_vocab}-token vocabulary")
        if self._m.is_error():
            raise ConstraintError(f"the constraint failed earlier: {_explain(self._m.get_error(), '')}")
        # an end id after a complete output is always allowed (llguidance's validate says no once stopped)
        if not (t in self.vocab.eog and self._m.is_accepting()) and self._m.validate_tokens([t]) != 1:
            raise ConstraintError(f"token {t} ({self._describe(t)}) is not allowed here by the constraint")
        if not self._m.consume_token(t):
            raise ConstraintError(f"token {t} ({self._describe(t)}): {_explain(self._m.get_error(), '')}")

    def _describe(self, t: int) -> str:
        name = self.vocab.special.get(t)
        return name if name is not None else repr(self.vocab.pieces[t])

    def is_accepting(self) -> bool:
        """The output so far is complete: an end id may follow."""
        return bool(self._m.is_accepting())

    def is_stopped(self) -> bool:
        """Nothing more can follow (the output is complete and cannot grow, or an end id was consumed)."""
        return bool(self._m.is_stopped())

    def forced_bytes(self) -> bytes:
        """The bytes the constraint forces next (``{"`` at the start of most schemas); may be empty."""
        return bytes(self._m.compute_ff_bytes())

    def rollback(self, n_tokens: int) -> None:
        """Undo the last ``n_tokens`` consumed (a stop string that was cut, a speculative draft refused)."""
        if n_tokens < 0 or not self._m.rollback(int(n_tokens)):
            raise ConstraintError(f"cannot roll back {n_tokens} tokens")

    def reset(self) -> None:
        """Back to the start of the output."""
        if not self._m.reset():
            raise ConstraintError("cannot reset the matcher")

    def copy(self) -> Matcher:
        """An independent matcher in the same state (for a second choice or a speculative branch)."""
        return Matcher(self.vocab, self._m.deep_copy())


def allows(mask: Any, token: int) -> bool:
    """Whether ``mask`` (as :meth:`Matcher.fill_mask` writes it) allows ``token``."""
    view = memoryview(mask).cast("B")
    return bool(view[token >> 3] >> (token & 7) & 1)


def allowed_ids(mask: Any, n_vocab: int) -> list[int]:
    """The ids ``mask`` allows, ascending."""
    data = memoryview(mask).cast("B")
    out: list[int] = []
    for i, byte in enumerate(data[:(n_vocab + 7) // 8]):
        while byte:
            low = byte & -byte
            t = i * 8 + low.bit_length() - 1
            if t < n_vocab:
                out.append(t)
            byte ^= low
    return out


def _address(buf: Any, nbytes: int) -> tuple[int, Any]:
    """(address, object to keep alive during the call) of a writable buffer of at least ``nbytes``."""
    import ctypes

    from .engines import native

    ffi = native.ffi()
    if isinstance(buf, ffi.CData):
        kind = ffi.typeof(buf).kind
        if kind != "array":
            raise TypeError(f"a mask buffer from cffi must be an array (ffi.new('uint32_t[]', n)), not a {kind}")
        size = ffi.sizeof(buf)
        if size < nbytes:
            raise ValueError(f"the mask buffer holds {size} bytes; this vocabulary needs {nbytes}")
        return int(ffi.cast("uintptr_t", buf)), buf
    view = memoryview(buf)
    if view.readonly:
        raise TypeError("the mask buffer is read-only")
    if not view.c_contiguous:
        raise TypeError("the mask buffer is not contiguous")
    if view.nbytes < nbytes:
        raise ValueError(f"the mask buffer holds {view.nbytes} bytes; this vocabulary needs {nbytes}")
    keep = (ctypes.c_char * nbytes).from_buffer(view)
    return ctypes.addressof(keep), keep

