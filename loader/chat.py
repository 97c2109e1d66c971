"""Chat templates: which one a model uses (:func:`resolve_template`), and rendering it in a sandbox.

The order, for every file: the file's own template (``tokenizer.chat_template``); else the prompt
template GPT4All published for that file (:mod:`~gpt4all_loader.published`, matched by name and
size); else the one the user names (``load(..., chat_template=NAME|FILE)``: a built-in of
:data:`BUILTIN` or a file of Jinja text); else ChatML, as llama-server falls back to.

Templates are Jinja programs written by model authors: they run in Jinja's immutable sandbox, with
the few helpers the ecosystem's templates expect (``raise_exception``, ``strftime_now``) and the
same variables (messages, bos_token, eos_token, add_generation_prompt).

The sandbox stops escapes but not work: a file could carry nested loops that run for minutes, or
``'x' * 4000000000``.  So every render is bounded: loop iterations in all, the length of any string
or list it builds, format widths, the size of integers, and wall time (checked at every loop step,
call, attribute access and output piece).  Whatever goes wrong inside a template, the caller gets
one error, :class:`~gpt4all_loader.errors.ChatTemplateError`.
"""
from __future__ import annotations

import datetime
import functools
import re
import string
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence, cast

from .errors import ChatTemplateError

if TYPE_CHECKING:  # pragma: no cover - jinja2 is imported when a template is first rendered
    from jinja2 import Template

    from .formats.facts import FileFacts
    from .published import TableArg

#: the longest string or list a template may build, and the longest output (characters / items)
MAX_LENGTH = 4 << 20
#: loop iterations of one render, all loops together
MAX_ITERATIONS = 1_000_000
#: widths and precisions in format strings ('%999999999d' allocates a gigabyte)
MAX_FORMAT_WIDTH = 4096
#: bits of an integer result (10 ** 10 ** 9 would compute for hours)
MAX_INT_BITS = 4096
#: wall time of one render, in seconds
MAX_SECONDS = 5.0

_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_SPEC_NUMBERS = re.compile(r"\d+")


def _raise(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _too_big(what: str) -> ChatTemplateError:
    return ChatTemplateError(f"the chat template exceeds the render limits: {what}")


def _check_printf(fmt: str) -> None:
    for width, precision in _PRINTF_FIELD.findall(fmt):
        for n in (width, precision):
            if n == "*" or (n and int(n) > MAX_FORMAT_WIDTH):
                raise _too_big(f"format field width or precision {n!r} (at most {MAX_FORMAT_WIDTH})")


def _check_str_format(fmt: str) -> None:
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and ("{" in spec or any(int(n) > MAX_FORMAT_WIDTH for n in _SPEC_NUMBERS.findall(spec))):
            raise _too_big(f"format spec {spec!r} (widths at most {MAX_FORMAT_WIDTH})")


def _length(value: Any) -> int:
    """Characters of a string; items of a list plus the characters of its strings ([s] * 1000)."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value) + sum(len(x) for x in value if isinstance(x, (str, bytes)))
    return 0


def _replaced_length(s: Any, old: Any, new: Any) -> int:
    """The length of ``s.replace(old, new)``, computed without building it."""
    if not all(isinstance(x, str) for x in (s, old, new)):
        return 0
    return len(s) + (len(s) + 1 if not old else s.count(old)) * max(len(new) - len(old), 0)


class _Sandbox(Protocol):
    """What render() uses of the bounded environment (its class is built once, by _sandbox_class)."""

    def from_string(self, source: str) -> Template: ...

    def compile(self, source: str) -> Any: ...

    def from_compiled(self, code: Any) -> Template: ...

    def tick(self) -> None: ...


def _environment() -> _Sandbox:
    """A fresh sandbox per render: the budget lives on the environment."""
    env: _Sandbox = _sandbox_class()()
    return env


@functools.cache
def _sandbox_class() -> Any:
    """The sandbox's class, made once (it imports Jinja, which a process that never chats need not)."""
    from jinja2 import nodes, pass_context
    from jinja2.filters import do_format
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.visitor import NodeTransformer

    class Counted(NodeTransformer):
        """Routes every for-loop's iterable and every ``~`` through a counting filter."""

        @staticmethod
        def _wrap(node: nodes.Node, name: str) -> nodes.Filter:
            return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)

        def visit_For(self, node: nodes.For) -> nodes.For:
            node = cast(nodes.For, self.generic_visit(node))  # generic_visit edits and returns the same node
            node.iter = self._wrap(node.iter, "_g4a_steps")
            return node

        def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
            return self._wrap(self.generic_visit(node), "_g4a_sized")

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "%", "+"])

        def __init__(self) -> None:
            super().__init__(trim_blocks=True, lstrip_blocks=True)
            self.deadline = time.monotonic() + MAX_SECONDS
            self.steps = 0
            self.globals["raise_exception"] = _raise
            self.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
            for name, f in list(self.filters.items()):
                self.filters[name] = self._bounded_filter(name, f)
            self.filters["_g4a_steps"] = pass_context(lambda ctx, it: ctx.environment.count(it))
            self.filters["_g4a_sized"] = pass_context(lambda ctx, v: ctx.environment.sized(v))
            self.filters["format"] = self._format

        def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
            tree: nodes.Template = Counted().visit(super()._parse(source, name, filename))
            tree.set_environment(self)
            return tree

        def from_compiled(self, code: Any) -> Template:
            """A template of this sandbox from code that :func:`_compiled` made (in another sandbox)."""
            return self.template_class.from_code(self, code, self.make_globals(None), None)

        def tick(self) -> None:
            if time.monotonic() > self.deadline:
                raise _too_big(f"it ran longer than {MAX_SECONDS:g} s")

        def count(self, iterable: Iterable[Any]) -> Iterator[Any]:
            for item in iterable:
                self.steps += 1
                if self.steps > MAX_ITERATIONS:
                    raise _too_big(f"more than {MAX_ITERATIONS} loop iterations")
                self.tick()
                yield item

        def sized(self, value: Any) -> Any:
            if _length(value) > MAX_LENGTH:
                raise _too_big(f"a value of {_length(value)} characters or items (at most {MAX_LENGTH})")
            return value

        def _bounded_filter(self, name: str, f: Any) -> Any:
            """A Jinja filter that refuses size arguments above MAX_LENGTH (center, indent, slice...),
            joins and replacements whose result would exceed it, and checks its result's size."""
            skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0   # context/environment first

            @functools.wraps(f)
            def bounded(*args: Any, **kwargs: Any) -> Any:
                self.tick()
                value, params = (args[skip] if len(args) > skip else None), (*args[skip + 1:], *kwargs.values())
                if any(isinstance(p, int) and not isinstance(p, bool) and p > MAX_LENGTH for p in params):
                    raise _too_big(f"the {name} filter with a size argument above {MAX_LENGTH}")
                if name == "join" and value is not None:
                    items = list(self.count(value))
                    sep = params[0] if params and isinstance(params[0], str) else ""
                    if len(sep) * len(items) > MAX_LENGTH:
                        raise _too_big(f"a join of {len(items)} items with a separator of {len(sep)} characters")
                    args = (*args[:skip], items, *args[skip + 1:])
                if name == "replace" and len(params) >= 2 and _replaced_length(value, *params[:2]) > MAX_LENGTH:
                    raise _too_big("the replace filter of that size")
                return self.sized(f(*args, **kwargs))

            return bounded

        def _format(self, value: Any, *args: Any, **kwargs: Any) -> str:
            _check_printf(str(value))
            out: str = self.sized(do_format(value, *args, **kwargs))
            return out

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            self.tick()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple)) \
                            and len(seq) * max(n, 0) > MAX_LENGTH:
                        raise _too_big(f"a repetition of {len(seq)} x {n} (at most {MAX_LENGTH})")
                if isinstance(left, int) and isinstance(right, int) \
                        and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _too_big(f"an integer of more than {MAX_INT_BITS} bits")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) \
                    and abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS:
                raise _too_big(f"an integer power of more than {MAX_INT_BITS} bits")
            elif operator == "%" and isinstance(left, str):
                _check_printf(left)
            return self.sized(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            __self.tick()
            owner = getattr(__obj, "__self__", None)
            if isinstance(owner, (str, bytes, list, tuple)):
                big = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and a > MAX_LENGTH]
                if big or (getattr(__obj, "__name__", "") == "replace" and len(args) >= 2
                           and _replaced_length(owner, *args[:2]) > MAX_LENGTH):
                    raise _too_big(f"{type(owner).__name__}.{getattr(__obj, '__name__', '?')} of that size")
            return __self.sized(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj: Any, attribute: str) -> Any:
            self.tick()
            if attribute in ("format", "format_map") and isinstance(obj, str):
                _check_str_format(obj)
            return super().getattr(obj, attribute)

        def getitem(self, obj: Any, argument: Any) -> Any:
            self.tick()
            return super().getitem(obj, argument)

    return Bounded


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    """A template's code, compiled once: every request of a chat renders the same template, and compiling it
    (parse, the sandbox's rewrite, code generation) costs more than rendering.  Errors are not cached."""
    return _environment().compile(template)


def render(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **extra: Any) -> str:
    """The conversation as the template writes it; ChatTemplateError for any failure or exceeded limit."""
    try:
        env = _environment()
        out: list[str] = []
        size = 0
        for piece in env.from_compiled(_compiled(template)).generate(
                messages=list(messages), bos_token=bos_token, eos_token=eos_token,
                add_generation_prompt=add_generation_prompt, **extra):
            size += len(piece)
            if size > MAX_LENGTH:
                raise _too_big(f"an output of more than {MAX_LENGTH} characters")
            env.tick()
            out.append(piece)
        return "".join(out)
    except ChatTemplateError:
        raise
    except Exception as e:  # a template is a program: any of its failures is its own
        raise ChatTemplateError(f"the chat template cannot be rendered: {type(e).__name__}: {e}") from None


# ------------------------------------------------------------------------------------------------
# Which template a model uses

#: built-in templates for ``chat_template=NAME``: (Jinja text, stop strings added to the caller's, since a
#: file that does not know the format has no end token for it)
BUILTIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        ("<|im_end|>", "<|im_start|>")),
    "llama2": (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set sys = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set msgs = messages[1:] %}"
        "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
        "{% for m in msgs %}{% if m['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + (sys if loop.first else '') + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}",
        ("[INST]",)),
    "alpaca": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ '### Response:\\n' + m['content'] + '\\n\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}",
        ("### Instruction:",)),
    "vicuna": (
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}{% else %}"
        "{{ 'A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user\\'s questions. ' }}{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
        "{% elif m['role'] == 'assistant' %}{{ 'ASSISTANT: ' + m['content'] + eos_token + ' ' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}",
        ("USER:",)),
}
#: the template of files that carry none, are not in GPT4All's list, and were given none
DEFAULT = "chatml"

#: GPT4All's prompt templates (``%1`` the user's text, ``%2`` the reply) rendered as gpt4all 1.0.8's
#: chat_session did: the system prompt stripped and followed by a blank line when it is not blank (a
#: system message of the conversation replaces the published one), each user message in the template,
#: each earlier reply followed by what follows ``%2`` (a newline when the template has no ``%2``)
GPT4ALL_PROGRAM = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% else %}{% set sys = system_prompt %}{% endif %}{% if sys | trim %}{{ sys | trim }}{{ '\\n\\n' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ user_prefix }}{{ m['content'] }}{{ user_suffix }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ reply_suffix }}{% endif %}{% endfor %}")
#: the most characters of a template file read for ``chat_template=FILE``
MAX_TEMPLATE_FILE = 1 << 20


@dataclass(frozen=True)
class ChatTemplate:
    """The template a model chats with, and why: ``source`` is "file", "gpt4all:<published name>",
    "user:<name or path>" or "default:chatml"."""

    source: str
    jinja: str
    #: stop strings added to the caller's (empty for the file's own template: its end token ends the reply)
    stop: tuple[str, ...] = ()
    #: extra variables of the Jinja program (the pieces of a GPT4All template)
    variables: dict[str, str] = field(default_factory=dict)

    def render(self, messages: Sequence[dict[str, Any]], *, bos_token: str = "", eos_token: str = "") -> str:
        return render(self.jinja, messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True,
                      **self.variables)


def from_gpt4all(prompt_template: str, system_prompt: str | None, *, source: str,
                 stop: Sequence[str] = ()) -> ChatTemplate:
    """A GPT4All prompt template (``%1`` user text, ``%2`` reply) and system prompt, as a ChatTemplate."""
    prefix, _, rest = prompt_template.partition("%1")
    suffix, two, after = rest.partition("%2")
    return ChatTemplate(source, GPT4ALL_PROGRAM, tuple(stop), {
        "system_prompt": system_prompt or "", "user_prefix": prefix, "user_suffix": suffix,
        "reply_suffix": after if two else "\n"})


def user_template(spec: str) -> ChatTemplate:
    """``chat_template=NAME|FILE``: a built-in (:data:`BUILTIN`) or a file of Jinja text, checked now."""
    if spec in BUILTIN:
        jinja, stop = BUILTIN[spec]
        return ChatTemplate(f"user:{spec}", jinja, stop)
    try:
        with open(spec, encoding="utf-8") as f:
            text = f.read(MAX_TEMPLATE_FILE + 1)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ChatTemplateError(
            f"chat template {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor a readable file of Jinja "
            f"text: {getattr(e, 'strerror', None) or e}") from None
    if len(text) > MAX_TEMPLATE_FILE:
        raise ChatTemplateError(f"chat template file {spec}: longer than {MAX_TEMPLATE_FILE} characters")
    try:
        _environment().from_string(text)
    except Exception as e:  # noqa: BLE001 - a syntax error names the line
        raise ChatTemplateError(f"chat template file {spec}: not a Jinja template: {type(e).__name__}: {e}") from None
    return ChatTemplate(f"user:{spec}", text)


def resolve_template(path: str, facts: FileFacts, user: str | None = None,
                     table: TableArg = None) -> ChatTemplate:
    """The template a model of ``path`` chats with: the file's own; else GPT4All's published one for that
    file (by name and size); else ``user`` (a built-in name or a file; checked even when not used);
    else ChatML."""
    from . import published

    chosen = user_template(user) if user is not None else None
    if facts.chat_template:
        return ChatTemplate("file", facts.chat_template)
    entry = published.lookup(path, facts.size, table)
    if entry is not None:
        t = published.load_table(table)
        return from_gpt4all(t.prompt_template(entry), entry.system_prompt, source=f"gpt4all:{entry.title}",
                            stop=t.reverse_prompts)
    if chosen is not None:
        return chosen
    jinja, stop = BUILTIN[DEFAULT]
    return ChatTemplate(f"default:{DEFAULT}", jinja, stop)


class ChatSession:
    """A conversation with one model, in the style of gpt4all's ``with model.chat_session(): ...``.

    The messages are kept here, each turn is rendered whole with the model's template, and the
    model evaluates only what follows the prefix it already holds (the previous turns), so a chat of
    n turns costs the new text of each turn instead of its whole history every time.  Works on a
    :class:`~gpt4all_loader.model.Model` and on an isolated one alike (only ``chat()`` is used).
    """

    def __init__(self, model: Any, system: str | None = None) -> None:
        self.model = model
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def __enter__(self) -> "ChatSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def send(self, content: str, **kwargs: Any) -> str | Iterator[str]:
        """Add a user message and answer it (``generate()`` arguments apply; ``stream=True`` yields
        pieces and records the reply once the stream ends)."""
        self.messages.append({"role": "user", "content": content})
        if not kwargs.get("stream"):
            reply: str = self.model.chat(self.messages, **kwargs)
            self.messages.append({"role": "assistant", "content": reply})
            return reply
        return self._stream(self.model.chat(self.messages, **kwargs))

    def _stream(self, pieces: Iterator[str]) -> Iterator[str]:
        parts: list[str] = []
        try:
            for p in pieces:
                parts.append(p)
                yield p
        finally:
            self.messages.append({"role": "assistant", "content": "".join(parts)})
