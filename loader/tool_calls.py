"""OpenAI tool calls for any model: what the model is told, what its reply must fit, and the reply read back.

:func:`plan` validates a request's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` (and an optional
response schema) and picks one of two formats:

* **hermes** - the model's own chat template renders ``tools`` and speaks ``<tool_call>`` (Qwen2.5,
  Hermes 2/3, ...): the tools go through the template, and a reply is ``<tool_call>\\n{"name": ...,
  "arguments": {...}}\\n</tool_call>`` (several, one per line, for parallel calls), constrained by a Lark
  grammar whose arguments are ``%json`` of each tool's parameters; with ``tool_choice="auto"`` plain text
  (not starting with ``<``) is allowed instead.
* **generic** - every other template (llama.cpp's generic handler): a system text lists the tools, and the
  reply is one JSON object, ``{"tool_call": {"name": ..., "arguments": {...}}}`` or ``{"response": "..."}``
  (``"auto"``), only calls for ``"required"`` or a named tool, ``{"tool_calls": [...]}`` for parallel calls.

Either way the constraint guarantees arguments that fit the tool's parameters; :meth:`ToolPlan.parse` turns
any text (truncated, or written without the constraint) into ``(content, tool_calls)`` in OpenAI's shape and
never raises.
"""
from __future__ import annotations

import functools
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from .errors import ChatTemplateError, ToolSpecError

if TYPE_CHECKING:  # pragma: no cover
    from .chat import ChatTemplate
    from .constrain import Grammar, Limits, Vocabulary

__all__ = ["ToolSpecError", "Tool", "ToolPlan", "plan", "template_format", "MAX_TOOLS"]

#: OpenAI's limit on tools per request
MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
Format = Literal["none", "generic", "hermes"]


@dataclass(frozen=True)
class Tool:
    """One function the model may call (OpenAI's ``{"type": "function", "function": {...}}``)."""

    name: str
    description: str | None
    #: a JSON schema of type object (``{"type": "object", "properties": {}}`` when the request gave none)
    parameters: dict[str, Any]
    strict: bool | None = None

    def openai(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolPlan:
    """How one request with tools is prompted, constrained and read back."""

    format: Format
    tools: tuple[Tool, ...]
    #: "none", "auto", "required", or the one tool's name
    choice: str
    parallel: bool
    #: text added to the system message (generic); None when the template shows the tools itself
    system_text: str | None
    #: the tools passed to the chat template as ``tools`` (hermes)
    template_tools: list[dict[str, Any]] | None
    #: the JSON schema the reply must fit (generic; or the response schema of format "none")
    json_schema: dict[str, Any] | None
    #: the Lark grammar the reply must fit (hermes)
    grammar: str | None
    response_schema: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def constrained(self) -> bool:
        return self.json_schema is not None or self.grammar is not None

    def compile(self, vocab: Vocabulary, limits: Limits | None = None) -> Grammar | None:
        """The reply's constraint over ``vocab`` (None for format "none" without a response schema)."""
        from .constrain import Limits, compile

        lim = limits or Limits()
        if self.grammar is not None:
            return compile(vocab, grammar=self.grammar, limits=lim)
        if self.json_schema is not None:
            return compile(vocab, json_schema=self.json_schema, limits=lim)
        return None

    # -- prompt --------------------------------------------------------------------------------------
    def messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The conversation as the template should see it: the tool text in the system message (generic),
        earlier calls and results in this format's words."""
        out = [dict(m) for m in messages]
        if self.format == "generic":
            out = [_generic_history(m) for m in out]
            if self.system_text:
                if out and out[0].get("role") == "system":
                    out[0]["content"] = f"{_text(out[0].get('content'))}\n\n{self.system_text}"
                else:
                    out.insert(0, {"role": "system", "content": self.system_text})
        elif self.format == "hermes":
            out = [_hermes_history(m) for m in out]
        return out

    def render(self, template: ChatTemplate, messages: Sequence[Mapping[str, Any]], *, bos_token: str = "",
               eos_token: str = "") -> str:
        """The prompt: ``template`` rendered with :meth:`messages` (and ``tools`` for hermes).  A template that
        refuses system messages gets the tool text at the start of the first user message instead."""
        from .chat import render

        msgs = self.messages(messages)
        extra: dict[str, Any] = dict(template.variables)
        if self.template_tools is not None:
            extra["tools"] = self.template_tools
        try:
            return render(template.jinja, msgs, bos_token=bos_token, eos_token=eos_token, **extra)
        except ChatTemplateError:
            if not (self.format == "generic" and self.system_text):
                raise
            msgs = [_generic_history(dict(m)) for m in messages]
            for m in msgs:
                if m.get("role") == "user":
                    m["content"] = f"{self.system_text}\n\n{_text(m.get('content'))}"
                    break
            return render(template.jinja, msgs, bos_token=bos_token, eos_token=eos_token, **extra)

    # -- reply ---------------------------------------------------------------------------------------
    def parse(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """``(content, tool_calls)`` of a reply, tool calls in OpenAI's shape (``arguments`` a JSON string).

        Never raises: text that is not a call of a known tool with object arguments (a truncated reply,
        say) is content.
        """
        try:
            if self.format == "generic":
                return self._parse_generic(text)
            if self.format == "hermes":
                return self._parse_hermes(text)
        except Exception:  # noqa: BLE001 - a reply is data: whatever it holds, it is at worst content
            pass
        return (text if text else None), []

    def _call(self, obj: Any) -> dict[str, Any] | None:
        """An OpenAI tool call from ``{"name", "arguments"}``, or None when it is not a call of one of the tools."""
        if not isinstance(obj, dict):
            return None
        name, args = obj.get("name"), obj.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(name, str) or not isinstance(args, dict) or name not in {t.name for t in self.tools}:
            return None
        if self.choice not in ("auto", "required", "none") and name != self.choice:
            return None
        return {"id": f"call_{secrets.token_hex(12)}", "type": "function",
                "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}

    def _parse_generic(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        stripped = text.strip()
        try:
            obj, end = json.JSONDecoder().raw_decode(stripped)
        except ValueError:
            return (text or None), []
        if not isinstance(obj, dict) or stripped[end:].strip():
            return (text or None), []
        if "response" in obj and len(obj) == 1:
            resp = obj["response"]
            return (resp if isinstance(resp, str) else json.dumps(resp, ensure_ascii=False)), []
        raw = [obj["tool_call"]] if "tool_call" in obj else obj.get("tool_calls")
        if len(obj) != 1 or not isinstance(raw, list) or not raw:
            return (text or None), []
        calls = [self._call(c) for c in raw]
        if any(c is None for c in calls):
            return (text or None), []
        return None, [c for c in calls if c is not None]

    def _parse_hermes(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        calls: list[dict[str, Any]] = []
        rest: list[str] = []
        pos = 0
        decoder = json.JSONDecoder()
        while True:
            start = text.find(_OPEN, pos)
            if start < 0:
                rest.append(text[pos:])
                break
            body = start + len(_OPEN)
            while body < len(text) and text[body] in " \t\r\n":
                body += 1
            call = None
            try:
                obj, end = decoder.raw_decode(text, body)
                close = text.find(_CLOSE, end)
                if close >= 0 and not text[end:close].strip():
                    call = self._call(obj)
            except ValueError:
                pass
            if call is None:  # not a complete call: the rest is content, as written
                rest.append(text[pos:])
                break
            rest.append(text[pos:start])
            calls.append(call)
            pos = close + len(_CLOSE)
        if calls and not self.parallel:
            calls = calls[:1]
        content = "".join(rest).strip()
        return (content or None), calls


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


def _text(content: Any) -> str:
    """A message's content as text (OpenAI allows a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _arguments(call: Mapping[str, Any]) -> tuple[str, Any]:
    fn = call.get("function") or {}
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass
    return str(fn.get("name", "")), args


def _generic_history(m: dict[str, Any]) -> dict[str, Any]:
    """Earlier turns in the generic format's words: calls as the JSON the model writes, results as user turns."""
    if m.get("role") == "assistant" and m.get("tool_calls"):
        calls = [dict(zip(("name", "arguments"), _arguments(c))) for c in m["tool_calls"]]
        body = {"tool_call": calls[0]} if len(calls) == 1 else {"tool_calls": calls}
        return {"role": "assistant", "content": json.dumps(body, ensure_ascii=False)}
    if m.get("role") == "tool":
        result = {"tool_response": {"tool_call_id": m.get("tool_call_id"), "content": _text(m.get("content"))}}
        return {"role": "user", "content": json.dumps(result, ensure_ascii=False)}
    return m


def _hermes_history(m: dict[str, Any]) -> dict[str, Any]:
    """Earlier calls with their arguments as objects, as the hermes templates print them (``| tojson``)."""
    if m.get("role") == "assistant" and m.get("tool_calls"):
        calls = []
        for c in m["tool_calls"]:
            name, args = _arguments(c)
            calls.append({**c, "function": {**(c.get("function") or {}), "name": name, "arguments": args}})
        return {**m, "content": _text(m.get("content")), "tool_calls": calls}
    return m


# ------------------------------------------------------------------------------------------------
# Validation and planning

def _tools(tools: Any) -> tuple[Tool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, (list, tuple)):
        raise ToolSpecError(f"tools must be a list of tools, not {type(tools).__name__}")
    if len(tools) > MAX_TOOLS:
        raise ToolSpecError(f"tools holds {len(tools)} tools; at most {MAX_TOOLS} are allowed")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, Mapping):
            raise ToolSpecError(f"{where} must be an object, not {type(t).__name__}")
        if t.get("type") != "function":
            raise ToolSpecError(f"{where}.type must be 'function' (got {t.get('type')!r})")
        fn = t.get("function")
        if not isinstance(fn, Mapping):
            raise ToolSpecError(f"{where}.function must be an object with a name")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ToolSpecError(f"{where}.function.name must be 1-64 letters, digits, '_' or '-' (got {name!r})")
        if any(o.name == name for o in out):
            raise ToolSpecError(f"{where}.function.name {name!r} is given twice")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ToolSpecError(f"{where}.function.description must be a string")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise ToolSpecError(f"{where}.function.parameters must be a JSON schema object, "
                                f"not {type(params).__name__}")
        ptype = params.get("type", "object")
        if ptype != "object":
            raise ToolSpecError(f"{where}.function.parameters must be a JSON schema of type 'object' "
                                f"(got type {ptype!r}): arguments are a JSON object")
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ToolSpecError(f"{where}.function.strict must be true, false or null")
        out.append(Tool(name, desc, {"type": "object", **dict(params)}, strict))
    return tuple(out)


def _choice(tool_choice: Any, tools: tuple[Tool, ...]) -> str:
    if tool_choice is None:
        return "auto" if tools else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ToolSpecError(f"tool_choice must be 'none', 'auto', 'required' or a function, "
                                f"not {tool_choice!r}")
        if tool_choice == "required" and not tools:
            raise ToolSpecError("tool_choice 'required' needs tools")
        return "none" if not tools else tool_choice
    if isinstance(tool_choice, Mapping):
        if tool_choice.get("type") != "function":
            raise ToolSpecError(f"tool_choice of type {tool_choice.get('type')!r} is not supported "
                                f"(use 'none', 'auto', 'required' or {{'type': 'function', ...}})")
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str):
            raise ToolSpecError("tool_choice.function.name must be a string")
        names = [t.name for t in tools]
        if name not in names:
            raise ToolSpecError(f"tool_choice names the function {name!r}, which is not among the tools "
                                f"({', '.join(names) or 'none given'})")
        return name
    raise ToolSpecError(f"tool_choice must be a string or an object, not {type(tool_choice).__name__}")


def plan(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None,
         response_schema: Mapping[str, Any] | None = None, *, chat_template: str | None = None) -> ToolPlan:
    """The plan for one request (see the module doc).  ``chat_template``: the model's Jinja template text
    (decides between hermes and generic).  ``parallel_tool_calls`` defaults to false, as llama-server's does:
    small models call one tool far more reliably than a list.  Raises :class:`ToolSpecError`."""
    offered = _tools(tools)
    choice = _choice(tool_choice, offered)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ToolSpecError(f"parallel_tool_calls must be true or false, not {parallel_tool_calls!r}")
    parallel = bool(parallel_tool_calls) and choice in ("auto", "required")
    if response_schema is not None and not isinstance(response_schema, Mapping):
        raise ToolSpecError(f"the response schema must be a JSON schema object, not {type(response_schema).__name__}")
    resp = dict(response_schema) if response_schema is not None else None
    if choice == "none":
        return ToolPlan("none", offered, choice, False, None, None, resp, None, resp)
    callable_tools = offered if choice in ("auto", "required") else tuple(t for t in offered if t.name == choice)
    if chat_template is not None and template_format(chat_template) == "hermes":
        return ToolPlan("hermes", offered, choice, parallel, None, [t.openai() for t in offered], None,
                        _hermes_grammar(callable_tools, choice, parallel, resp), resp)
    text = _generic_text(offered, callable_tools, choice, parallel, resp)
    return ToolPlan("generic", offered, choice, parallel, text, None,
                    _generic_schema(callable_tools, choice, parallel, resp), None, resp)


_PROBE_NAME = "g4a_probe_tool_7f3a"
_PROBE = {"type": "function", "function": {"name": _PROBE_NAME, "description": "probe",
                                           "parameters": {"type": "object", "properties": {}}}}


@functools.lru_cache(maxsize=64)
def template_format(jinja: str) -> Format:
    """"hermes" when the template renders ``tools`` (a probe tool's name appears in its output) and speaks
    ``<tool_call>``; "generic" otherwise."""
    if _OPEN not in jinja:
        return "generic"
    from .chat import render

    try:
        out = render(jinja, [{"role": "user", "content": "hi"}], tools=[_PROBE])
    except ChatTemplateError:
        return "generic"
    return "hermes" if _PROBE_NAME in out else "generic"


# -- the generic format ---------------------------------------------------------------------------------
def _relocate(schema: Mapping[str, Any], key: str, defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` moved under ``$defs/key`` of a larger document: its own ``$defs``/``definitions`` become
    ``$defs/key_<name>`` and every local ``$ref`` is rewritten to match.  Returns a ``$ref`` to it."""
    def ref(r: str) -> str:
        if not r.startswith("#"):
            return r
        pointer = r[1:]
        for head in ("/$defs/", "/definitions/"):
            if pointer.startswith(head):
                return f"#/$defs/{key}_{pointer[len(head):]}"
        return f"#/$defs/{key}{pointer}"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (ref(v) if k == "$ref" and isinstance(v, str) else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    body = dict(schema)
    for section in ("$defs", "definitions"):
        inner = body.pop(section, None)
        if isinstance(inner, Mapping):
            for name, sub in inner.items():
                defs[f"{key}_{name}"] = walk(sub)
    defs[key] = walk(body)
    return {"$ref": f"#/$defs/{key}"}


def _call_schema(tool: Tool, i: int, defs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": tool.name},
                                             "arguments": _relocate(tool.parameters, f"tool{i}", defs)},
            "required": ["name", "arguments"], "additionalProperties": False}


def _one_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0] if len(items) == 1 else {"anyOf": items}


def _generic_schema(tools: Sequence[Tool], choice: str, parallel: bool,
                    resp: dict[str, Any] | None) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    calls = _one_of([_call_schema(t, i, defs) for i, t in enumerate(tools)])
    if parallel:
        call_obj = {"type": "object", "properties": {"tool_calls": {"type": "array", "items": calls, "minItems": 1}},
                    "required": ["tool_calls"], "additionalProperties": False}
    else:
        call_obj = {"type": "object", "properties": {"tool_call": calls}, "required": ["tool_call"],
                    "additionalProperties": False}
    branches = [call_obj]
    if choice == "auto":
        answer = _relocate(resp, "response", defs) if resp is not None else {"type": "string"}
        branches.append({"type": "object", "properties": {"response": answer}, "required": ["response"],
                         "additionalProperties": False})
    schema = _one_of(branches)
    return {**schema, "$defs": defs} if defs else schema


def _generic_text(offered: Sequence[Tool], tools: Sequence[Tool], choice: str, parallel: bool,
                  resp: dict[str, Any] | None) -> str:
    listing = json.dumps([{"name": t.name, **({"description": t.description} if t.description else {}),
                           "parameters": t.parameters} for t in offered], ensure_ascii=False, indent=2)
    example = tools[0].name
    call = f'{{"name": "{example}", "arguments": {{...}}}}'
    lines = [f"You can call the following tools:\n{listing}\n"]
    if parallel:
        shape = f'{{"tool_calls": [{call}, ...]}} to call one or more tools'
    else:
        shape = f'{{"tool_call": {call}}} to call a tool'
    if choice == "auto":
        answer = "your reply to the user" if resp is None else "your reply, fitting the response schema"
        lines.append(f'Respond in JSON: either {shape}, or {{"response": <{answer}>}} to answer directly.')
    elif choice == "required":
        lines.append(f"Respond in JSON: {shape}. You must call a tool.")
    else:
        lines.append(f'Respond in JSON: {shape}. Call the tool "{choice}".')
    return "\n".join(lines)


# -- the hermes format ----------------------------------------------------------------------------------
def _hermes_grammar(tools: Sequence[Tool], choice: str, parallel: bool, resp: dict[str, Any] | None) -> str:
    from .constrain import JSON_OPTIONS

    rules = []
    for i, t in enumerate(tools):
        defs: dict[str, Any] = {}
        schema = _call_schema(t, 0, defs)
        schema = {**schema, "$defs": defs, "x-guidance": JSON_OPTIONS}
        rules.append(f"fn{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    calls = 'call ("\\n" call)*' if parallel else "call"
    if choice == "auto":
        if resp is not None:
            answer = json.dumps({**resp, "x-guidance": JSON_OPTIONS}, ensure_ascii=False)
            head = f"start: answer | calls\nanswer: %json {answer}\n"
        else:
            # text that does not open with "<" (a call does), of any length
            head = "start: TEXT | calls\nTEXT: /[^<](?s:.)*/\n"
    else:
        head = "start: calls\n"
    return (f"%llguidance {{}}\n{head}calls: {calls}\n"
            f'call: "{_OPEN}\\n" fn "\\n{_CLOSE}"\n'
            f"fn: {' | '.join(f'fn{i}' for i in range(len(tools)))}\n" + "\n".join(rules) + "\n")
