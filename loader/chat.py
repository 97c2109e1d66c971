"""Render a GGUF file's own chat template (``tokenizer.chat_template``).

Templates are Jinja programs written by model authors: they run in Jinja's immutable sandbox, with
the few helpers the ecosystem's templates expect (``raise_exception``, ``strftime_now``) and the
same variables (messages, bos_token, eos_token, add_generation_prompt).
"""
from __future__ import annotations

import datetime
from typing import Any, Sequence

from .errors import UnsupportedModelError


def _raise(message: str) -> None:
    raise UnsupportedModelError(f"the chat template refused the conversation: {message}")


def render(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **extra: Any) -> str:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=list(messages), bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt, **extra)
    except TemplateError as e:
        raise UnsupportedModelError(f"the file's chat template cannot be rendered: {e}") from None
