"""The few exception types the project raises.

Each derives from a standard base class so callers can catch broadly, and each message names the
file, what it is, why it cannot be used, and what would work instead.
"""
from __future__ import annotations


class FormatError(ValueError):
    """A file is not a model file we understand, or its structure is malformed or truncated.

    The message gives the path, the byte offset and field, and what was expected.
    """


class UnsupportedModelError(ValueError):
    """A well-formed model file that none of the built backends can load (message says which would)."""


class ChatTemplateError(UnsupportedModelError):
    """A file's chat template cannot render the conversation: it failed (any exception inside the
    template, or its own ``raise_exception``) or exceeded the render limits of ``chat.py`` (time,
    loop iterations, string and output length).  Generating with a prompt written by hand works."""


class ContextLengthError(ValueError):
    """A prompt (or an input to embed) has more tokens than the model's context holds; the message gives
    both numbers.  A server answers it with ``context_length_exceeded``."""


class ConstraintError(ValueError):
    """A JSON schema, grammar or regex that the output cannot be constrained to: a keyword or feature the
    engine does not enforce (named in the message), a syntax error, or a limit of
    :class:`~gpt4all_loader.constrain.Limits` (size, compile time, parser fuel).  Also raised when a token
    the constraint does not allow is consumed.  A server answers it with 400."""


class ToolSpecError(ValueError):
    """``tools``, ``tool_choice`` or ``parallel_tool_calls`` of a chat request that cannot be honoured: the
    message names the field and what is wrong (an unknown tool name, parameters that are not an object
    schema, a wrong type).  A server answers it with 400."""


class BackendError(RuntimeError):
    """A backend library is missing, corrupt, of the wrong ABI, or failed inside native code."""


class BuildError(RuntimeError):
    """Fetching, verifying or compiling a backend failed."""


class ManifestError(BuildError):
    """``backends/manifest.toml`` states something this package does not read: an unknown key, a wrong
    type, a missing table or another schema.  The message names the file and the key."""


class DeviceError(RuntimeError):
    """The requested device (e.g. ``cuda``) cannot be used; never silently replaced by another."""


class ModelClosedError(RuntimeError):
    """A Model was used after close()."""


class ConvertError(Exception):
    """A conversion that cannot be done; the message says why and what would help.  ``exit_code`` is
    gpt4all-convert's exit status for it."""

    exit_code = 1


class UsageError(ConvertError):
    """A command line or call that asks for something impossible (bad arguments, SRC missing, OUT exists):
    exit status 2 of every command.  A ``ConvertError`` so that callers of ``convert()`` catch one type."""

    exit_code = 2
