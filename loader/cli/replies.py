"""OpenAI's request fields beyond the prompt, and the shapes of its replies, for gpt4all-serve.

Requests: sampling (penalties, logit_bias, log-probabilities) and, for chat, structured output and tools
(``response_format``, ``tools``, ``tool_choice``, ``parallel_tool_calls``) are checked for their shape
here; what they mean is checked by the Model (a schema feature it cannot enforce, an unknown tool: a
ValueError, answered 400).  Replies: one :class:`Choice` per ``n``, streamed as chunks or gathered into
one answer, with ``logprobs`` in chat's form (``content[].token/logprob/bytes/top_logprobs``) or the
completions API's legacy form, and tool calls as ``message.tool_calls`` / ``delta.tool_calls``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..sampling import GenerationStats
    from ..sampling import TokenLogprob

#: choices one request may ask for (n)
MAX_CHOICES = 8
#: OpenAI's bound on top_logprobs; the completions API's legacy ``logprobs`` integer stops at 5
MAX_TOP_LOGPROBS, MAX_LEGACY_LOGPROBS = 20, 5


class RequestError(ValueError):
    """A field of the request is malformed (answered 400, naming the field)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise RequestError(key, f"'{key}' must be a number from {lo:g} to {hi:g}, not {v!r}")
    return float(v)


def sampling_params(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """Model.generate() keywords for penalties, logit_bias and log-probabilities (only those given)."""
    out: dict[str, Any] = {}
    for key in ("presence_penalty", "frequency_penalty"):
        v = _number(body, key, -2.0, 2.0)
        if v is not None:
            out[key] = v
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or len(bias) > 1024:
            raise RequestError("logit_bias", "'logit_bias' must map at most 1024 token ids to numbers")
        clean: dict[int, float] = {}
        for k, v in bias.items():
            if not (isinstance(k, str) and k.isdigit()) or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not -100 <= v <= 100:
                raise RequestError("logit_bias", f"'logit_bias' maps token ids (\"123\") to numbers from -100 to "
                                                 f"100; {k!r}: {v!r} is not one")
            clean[int(k)] = -math.inf if v <= -100 else float(v)   # -100 bans, as OpenAI documents
        out["logit_bias"] = clean
    lp = body.get("logprobs")
    top = body.get("top_logprobs")
    if kind == "chat":
        if lp is not None and not isinstance(lp, bool):
            raise RequestError("logprobs", f"'logprobs' must be true or false, not {lp!r}")
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
                raise RequestError("top_logprobs", f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}")
            if not lp:
                raise RequestError("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        if lp:
            out.update(logprobs=True, top_logprobs=top or 0)
    elif lp is not None:   # the completions API: an integer, the number of alternatives
        if isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_LEGACY_LOGPROBS:
            raise RequestError("logprobs", f"'logprobs' must be an integer from 0 to {MAX_LEGACY_LOGPROBS}")
        out.update(logprobs=True, top_logprobs=lp)
    return out


def chat_params(body: dict[str, Any]) -> dict[str, Any]:
    """Model.chat() keywords for structured output and tools (only those given)."""
    out: dict[str, Any] = {}
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise RequestError("response_format", "'response_format' must be {\"type\": \"text\"}, {\"type\": "
                                                  "\"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": "
                                                  "{\"name\": ..., \"schema\": {...}}}")
        out["response_format"] = rf
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise RequestError("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}}")
        if tools:
            out["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None and (tools or choice != "none"):
        out["tool_choice"] = choice
    par = body.get("parallel_tool_calls")
    if par is not None:
        if not isinstance(par, bool):
            raise RequestError("parallel_tool_calls", "'parallel_tool_calls' must be true or false")
        if tools:
            out["parallel_tool_calls"] = par
    return out


def _token(lp: TokenLogprob) -> dict[str, Any]:
    return {"token": lp.bytes.decode("utf-8", "replace"), "logprob": lp.logprob, "bytes": list(lp.bytes)}


def chat_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    """``choices[].logprobs`` of chat: each token with its bytes and its most likely alternatives."""
    return {"content": [dict(_token(lp), top_logprobs=[_token(t) for t in lp.top]) for lp in lps],
            "refusal": None}


def completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """``choices[].logprobs`` of the completions API (its legacy form); ``offset``: characters before these."""
    tokens, offsets = [], []
    for lp in lps:
        tokens.append(lp.bytes.decode("utf-8", "replace"))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t.bytes.decode("utf-8", "replace"): t.logprob for t in lp.top} for lp in lps],
            "text_offset": offsets}


@dataclass
class Choice:
    """One of a request's ``n`` choices as it streams or is gathered."""

    index: int
    kind: str                       # "chat" or "completion"
    logprobs: bool = False
    #: a reply with tools is held back: its text is JSON (or a template's call syntax) until read back
    tools: bool = False
    text: list[str] = field(default_factory=list)
    lps: list[Any] = field(default_factory=list)
    chars: int = 0

    def add(self, piece: str) -> dict[str, Any] | None:
        """Take one streamed piece; the chunk's choice to send now (None while a tool reply is held)."""
        self.text.append(piece)
        lps = list(getattr(piece, "logprobs", ()))
        self.lps += lps
        offset, self.chars = self.chars, self.chars + len(piece)
        if self.tools:
            return None
        logprobs = None
        if self.logprobs:
            logprobs = chat_logprobs(lps) if self.kind == "chat" else completion_logprobs(lps, offset)
        if self.kind == "chat":
            return {"index": self.index, "delta": {"content": str(piece)}, "logprobs": logprobs, "finish_reason": None}
        return {"index": self.index, "text": str(piece), "logprobs": logprobs, "finish_reason": None}

    def last_chunks(self, stats: GenerationStats | None) -> list[dict[str, Any]]:
        """The chunk choices that end this choice's stream: a held tool reply, read back, then the finish."""
        out: list[dict[str, Any]] = []
        finish = self.finish(stats)
        if self.tools and self.kind == "chat":
            content, calls = self.read_back(stats)
            if content:
                out.append({"index": self.index, "delta": {"content": content}, "logprobs": None,
                            "finish_reason": None})
            if calls:
                out.append({"index": self.index, "delta": {"tool_calls": [
                    dict(c, index=i) for i, c in enumerate(calls)]}, "logprobs": None, "finish_reason": None})
        if self.kind == "chat":
            out.append({"index": self.index, "delta": {}, "logprobs": None, "finish_reason": finish})
        else:
            out.append({"index": self.index, "text": "", "logprobs": None, "finish_reason": finish})
        return out

    def read_back(self, stats: GenerationStats | None) -> tuple[str | None, list[dict[str, Any]]]:
        if stats is not None and (stats.tool_calls is not None or stats.content is not None):
            return stats.content, list(stats.tool_calls or [])
        return "".join(self.text), []

    @staticmethod
    def finish(stats: GenerationStats | None) -> str:
        return (stats.finish_reason or "stop") if stats is not None else "stop"

    def gathered(self, stats: GenerationStats | None) -> dict[str, Any]:
        """The choice of a reply that is not streamed."""
        logprobs = None
        if self.logprobs:
            logprobs = chat_logprobs(self.lps) if self.kind == "chat" else completion_logprobs(self.lps, 0)
        if self.kind != "chat":
            return {"index": self.index, "text": "".join(self.text), "logprobs": logprobs,
                    "finish_reason": self.finish(stats)}
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text)}
        if self.tools:
            content, calls = self.read_back(stats)
            message["content"] = content
            if calls:
                message["tool_calls"] = calls
        return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": self.finish(stats)}


def sse_head(fields: dict[str, Any]) -> str:
    """The SSE text of a chunk object up to its one choice (``fields`` without "choices"): every chunk of a
    stream shares it, so it is written once."""
    return "data: " + json.dumps({**fields, "choices": None}, ensure_ascii=False).removesuffix("null}") + "["


def sse_chunk(head: str, choice: dict[str, Any]) -> str:
    """One chunk event: the shared head (:func:`sse_head`) and this choice."""
    return head + json.dumps(choice, ensure_ascii=False) + "]}\n\n"


@dataclass
class WireChunks:
    """A streamed choice's pieces as the bytes on an HTTP/1.1 connection: each piece's chunk event in an
    HTTP chunk.  A worker that writes its stream to the client's connection itself runs this (pickled to
    it), so the server does nothing per token."""

    choice: Choice
    head: str

    def __call__(self, piece: str) -> bytes:
        delta = self.choice.add(piece)
        if delta is None:
            return b""
        data = sse_chunk(self.head, delta).encode()
        return b"%x\r\n%b\r\n" % (len(data), data)
