"""What the reader found in a large header, remembered by the file's identity.

Reading a modern GGUF header walks every token of its vocabulary in Python (the uniqueness and byte
token checks that protect the engines need each token text): 20-25 ms for SmolLM2's 49k tokens,
more than 100 ms for 250k-token vocabularies, on every load and every probe.  Files are loaded
again and again (an application's start, a server's reload), so the facts of a header of at least
:data:`MIN_HEADER_BYTES` are kept in the cache, under a key made of

* the path, device, inode, size, modification and status-change times (``st_ctime`` cannot be set
  by a user: a file rewritten in place, even with its old ``mtime`` put back, gets a new key), and
* the reader's own fingerprint (the size and mtime of every module that reads or validates a
  header), so that a changed or reinstalled reader never trusts what an older one wrote.

A file that cannot be read is never remembered (the error is raised again each time).  The store is
bounded (:data:`MAX_ENTRIES`, the oldest go first), written atomically, and any entry that cannot be
read back is ignored and rewritten.  Entries are JSON (not pickles: reading one cannot run code), and
one is written only when it reads back equal to the facts it stores.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .engines import cache
from .formats.facts import Anomaly, FileFacts, TensorTypeStat, VocabFacts
from .formats.sniff import read_facts

#: headers smaller than this are read again each time (they take a few milliseconds at most)
MIN_HEADER_BYTES = 1 << 20
#: entries kept; the oldest are removed when a new one would exceed it
MAX_ENTRIES = 256
#: set to a non-empty value to read every header from the file each time
ENV_DISABLE = "GPT4ALL_LOADER_NO_FACTS_CACHE"


def facts_dir() -> Path:
    return cache.cache_root() / "facts"


@functools.lru_cache(maxsize=1)
def reader_fingerprint() -> str:
    """Changes whenever the code that reads or validates a header changes (an install rewrites them)."""
    here = Path(__file__).resolve().parent
    parts = []
    for f in sorted([*(here / "formats").glob("*.py"), here / "engines" / "validate.py", Path(__file__)]):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _key(path: str, st: os.stat_result) -> str:
    ident = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
             reader_fingerprint())
    return hashlib.sha256(repr(ident).encode()).hexdigest()[:40]


def read_facts_cached(path: str | os.PathLike[str]) -> FileFacts:
    """``read_facts(path)``, from the cache when this very file was read before (see the module)."""
    p = os.fspath(path)
    if os.environ.get(ENV_DISABLE):
        return read_facts(p)
    try:
        before = os.stat(p)
    except (OSError, ValueError):
        return read_facts(p)  # the reader raises its own, precise error
    entry = facts_dir() / f"{_key(p, before)}.json"
    try:
        facts = from_json(json.loads(entry.read_bytes()))
        if facts.path == str(Path(p)):
            return facts
    except Exception:  # noqa: BLE001 - missing, partial or foreign entries are simply read again
        pass
    facts = read_facts(p)
    if (facts.data_offset or 0) >= MIN_HEADER_BYTES and facts.kind != "not-a-model":
        try:
            after = os.stat(p)
        except OSError:
            return facts
        if _key(p, after) == entry.stem:  # unchanged while it was read
            _store(entry, facts)
    return facts


def to_json(facts: FileFacts) -> dict[str, Any]:
    """FileFacts as JSON values (tuples and sets become lists; from_json puts them back)."""
    d = dataclasses.asdict(facts)
    d["tensor_names"] = sorted(facts.tensor_names)
    return d


def from_json(d: dict[str, Any]) -> FileFacts:
    """The inverse of :func:`to_json`; TypeError/KeyError/ValueError on anything else."""
    d = dict(d)
    d["tensor_types"] = {k: TensorTypeStat(**v) for k, v in d["tensor_types"].items()}
    d["tensor_names"] = frozenset(d["tensor_names"])
    d["tensors"] = {k: (t, tuple(ne), n) for k, (t, ne, n) in d["tensors"].items()}
    if d["vocab"] is not None:
        v = dict(d["vocab"])
        for k in ("scores", "token_types"):
            v[k] = tuple(v[k]) if v[k] is not None else None
        d["vocab"] = VocabFacts(**v)
    d["anomalies"] = [Anomaly(**a) for a in d["anomalies"]]
    return FileFacts(**d)


def _store(entry: Path, facts: FileFacts) -> None:
    try:
        doc = to_json(facts)
        if from_json(json.loads(json.dumps(doc))) != facts:
            return  # a value JSON cannot carry exactly (a tuple in the hparams ...): not remembered
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, entry)
        _prune(entry.parent)
    except (OSError, TypeError, ValueError):
        pass  # a read-only or full cache only costs the next read its time


def _prune(folder: Path) -> None:
    entries = list(folder.glob("*.json"))
    if len(entries) <= MAX_ENTRIES:
        return

    def age(f: Path) -> float:
        try:
            return f.stat().st_mtime
        except OSError:
            return 0.0
    for old in sorted(entries, key=age)[:len(entries) - MAX_ENTRIES]:
        old.unlink(missing_ok=True)
