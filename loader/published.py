"""GPT4All's published list of ggml-era files, as data: which file this is, and its prompt template.

``gpt4all_published.json`` (package data, written by ``tools/gpt4all_published.py``) holds every
``.bin`` file that nomic-ai/gpt4all's ``gpt4all-chat/metadata/models.json`` listed from 2023-06-02 to
its last change before GGUF (a6309355, 2023-08-15): size, md5, type, quantization, RAM, the prompt
template and system prompt as GPT4All wrote them (``%1`` is the user's text), and the commit each
entry's data comes from.

A file is recognised by its name and size (cheap, no reading); its md5 is computed only when asked
(:func:`verify`, in chunks).  Every function takes ``table=``, so a caller can use a list of its own in
the same format (a path or a :class:`Table`) instead of the packaged one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Union

#: read size of the md5 pass
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One published file, with the fields of models.json (snake_case) and where they come from."""

    filename: str
    filesize: int
    md5sum: str
    name: str | None = None
    type: str | None = None
    quant: str | None = None
    ramrequired: int | None = None
    parameters: str | None = None
    requires: str | None = None
    url: str | None = None
    #: as published: ``%1`` stands for the user's text (``%2``, in later lists, for the reply)
    prompt_template: str | None = None
    system_prompt: str | None = None
    #: the models.json commit the data was taken from (the last one that listed the file), and its date
    commit: str = ""
    date: str = ""
    first_commit: str = ""
    first_date: str = ""

    @property
    def title(self) -> str:
        """The name GPT4All showed (the early lists gave none: then the file name)."""
        return self.name or self.filename

    def summary(self) -> str:
        """E.g. "GPT4All Falcon, q4_0, 8 GB RAM"."""
        parts = [self.title] + ([self.quant] if self.quant else []) + \
            ([f"{self.ramrequired} GB RAM"] if self.ramrequired else [])
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Table:
    """A published list: its entries, GPT4All's default template, and the strings it stopped replies at."""

    entries: tuple[Entry, ...]
    default_prompt_template: str
    reverse_prompts: tuple[str, ...]
    source: str

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> "Table":
        fields = set(Entry.__dataclass_fields__)
        return cls(entries=tuple(Entry(**{k: v for k, v in e.items() if k in fields}) for e in data["entries"]),
                   default_prompt_template=str(data["default_prompt_template"]["text"]),
                   reverse_prompts=tuple(data["reverse_prompts"]["list"]), source=source)

    def prompt_template(self, entry: Entry) -> str:
        """The entry's template, or what GPT4All used when the list gave none."""
        return entry.prompt_template if entry.prompt_template is not None else self.default_prompt_template


TableArg = Union[Table, str, "os.PathLike[str]", None]


@functools.lru_cache(maxsize=1)
def _packaged() -> Table:
    text = resources.files(__package__).joinpath("gpt4all_published.json").read_text(encoding="utf-8")
    return Table.from_json(json.loads(text), "gpt4all-loader's copy of nomic-ai/gpt4all models.json")


def load_table(table: TableArg = None) -> Table:
    """The packaged table, a table given as a path to a JSON file of the same format, or ``table`` itself."""
    if table is None:
        return _packaged()
    if isinstance(table, Table):
        return table
    path = os.fspath(table)
    try:
        with open(path, encoding="utf-8") as f:
            return Table.from_json(json.load(f), path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a published-files table in gpt4all_published.json's format: {e}") from None


def by_name(filename: str, table: TableArg = None) -> Entry | None:
    """The entry published under this file name (any size): for "named like X but not X" notes."""
    base = os.path.basename(filename)
    return next((e for e in load_table(table).entries if e.filename == base), None)


def lookup(path: str | os.PathLike[str], size: int | None = None, table: TableArg = None) -> Entry | None:
    """The published entry with this file's name and size (``size`` defaults to the file's own); None
    if there is none.  Several published files share a size, and renamed files are not recognised: the
    md5 (:func:`verify`) settles what the name and size only suggest."""
    spath = os.fspath(path)
    if size is None:
        size = os.stat(spath).st_size
    e = by_name(spath, table)
    return e if e is not None and e.filesize == size else None


@dataclass(frozen=True)
class Verification:
    """The result of :func:`verify`: ``ok`` is None when the file is not in the list."""

    md5: str
    expected: str | None
    ok: bool | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def md5_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike[str], table: TableArg = None) -> Verification:
    """Compare the file's md5 with the published one (reads the whole file)."""
    spath = os.fspath(path)
    size = os.stat(spath).st_size
    entry = lookup(spath, size, table)
    if entry is None:
        named = by_name(spath, table)
        md5 = md5_of(spath)
        if named is not None:
            return Verification(md5, named.md5sum, False,
                                f"named like GPT4All's {named.summary()} but {size} bytes, not {named.filesize}: "
                                f"not the published file (an incomplete download?)")
        return Verification(md5, None, None, "not in GPT4All's published list (by file name and size); "
                                             "nothing to compare the md5 with")
    md5 = md5_of(spath)
    if md5 == entry.md5sum.lower():
        return Verification(md5, entry.md5sum, True, f"md5 {md5} matches GPT4All's published {entry.summary()}")
    return Verification(md5, entry.md5sum, False,
                        f"md5 MISMATCH: {md5}, but GPT4All published {entry.md5sum} for {entry.filename}: the file "
                        f"is not the published one (damaged, or altered); download it again")
