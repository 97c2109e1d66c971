"""What a file is, which backend loads it, why the others do not, and what it needs in memory.

:func:`probe` never raises for a bad, unreadable or non-model file: whatever goes wrong is reported
in :attr:`ProbeReport.error`.  The report's :meth:`~ProbeReport.to_dict` is the stable JSON object
printed by ``gpt4all-probe --json`` (its keys are documented in the README).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import memory as _memory
from .engines import catalog
from .engines.manifest import build_command, load_manifest

if TYPE_CHECKING:  # pragma: no cover
    from .formats.facts import FileFacts
    from .published import TableArg
    from .reports import LoadCheck, MemoryPlan

#: bump when a key is removed or changes meaning (adding keys keeps the version)
SCHEMA_VERSION = 1


@dataclass
class ProbeReport:
    path: str
    format: str | None = None
    format_version: int | None = None
    kind: str | None = None
    description: str | None = None
    size: int | None = None
    endianness: str | None = None
    architecture: str | None = None
    file_type: int | None = None
    file_type_name: str | None = None
    quant_layout: str | None = None
    tensor_types: dict[str, dict[str, int]] = field(default_factory=dict)
    n_tensors: int = 0
    n_params: int = 0
    hparams: dict[str, Any] = field(default_factory=dict)
    context_length: int | None = None
    tokenizer: str | None = None
    chat_template: bool = False
    vocab_only: bool = False
    split_experts: bool = False
    truncated: bool = False
    loadable: bool = False
    ready: bool = False
    backend: str | None = None
    variant: str | None = None
    variant_reason: str | None = None
    #: the context the variant, its GPU layers and ``memory`` were planned for: ``estimate_ctx``, else the
    #: one load() gives the file (:func:`gpt4all_loader.plan.default_n_ctx`); None when no backend loads it
    n_ctx: int | None = None
    reasons: dict[str, list[str]] = field(default_factory=dict)
    suggestion: str | None = None
    backends_built: dict[str, list[str]] | None = None
    memory: MemoryPlan | None = None
    notes: list[str] = field(default_factory=list)
    #: what only some engines refuse ({"kind", "detail"}; each era's verdict says whether it does)
    anomalies: list[dict[str, str]] = field(default_factory=list)
    kv: dict[str, Any] | None = None
    error: str | None = None
    #: "unreadable" (the path cannot be opened), "format" (not a file we understand or malformed),
    #: "internal" (a bug of ours); None when there is no error
    error_kind: str | None = None
    #: filled by ``gpt4all-probe --load``: one entry per backend tried
    load: list[LoadCheck] | None = None
    #: the entry of GPT4All's published list with this file's name and size (:mod:`published`); None otherwise
    published: dict[str, Any] | None = None
    #: only with ``verify=True`` (``--verify``): the md5 compared with the published one
    verify: dict[str, Any] | None = None
    #: the chat template chat() would use without a user's choice: "file", "gpt4all:<name>", "default:chatml"
    chat_template_source: str | None = None

    def __post_init__(self) -> None:
        # what the reader found, for callers in Python; not a dataclass field, so not in to_dict()
        self._facts: FileFacts | None = None

    @property
    def facts(self) -> FileFacts | None:
        return self._facts

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for name in self.__dataclass_fields__:
            d[name] = _jsonable(getattr(self, name))
        if d["kv"] is None:
            del d["kv"]
        for optional in ("load", "verify"):
            if d[optional] is None:
                del d[optional]
        return d


def _jsonable(v: Any, depth: int = 0) -> Any:
    """Plain JSON data: large arrays summarized, bytes and odd numbers spelled out."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, dict):
        return {str(k): _jsonable(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        seq = list(v)
        if len(seq) > 64:
            return {"array_len": len(seq), "first": [_jsonable(x, depth + 1) for x in seq[:8]]}
        return [_jsonable(x, depth + 1) for x in seq]
    if hasattr(v, "__dataclass_fields__"):
        return {k: _jsonable(getattr(v, k), depth + 1) for k in v.__dataclass_fields__}
    if hasattr(v, "item"):  # numpy scalars
        try:
            return _jsonable(v.item(), depth + 1)
        except Exception:  # noqa: BLE001
            pass
    return str(v)


def _precheck(path: str) -> None:
    """Raise OSError for paths that cannot be read as a file (clear messages before the reader runs);
    FIFOs and devices are refused before they are opened (opening a FIFO blocks)."""
    from .formats.sniff import check_regular_file

    check_regular_file(path)  # ENOENT, ELOOP, ENOTDIR, EACCES, EISDIR, EINVAL (not a regular file)
    with open(path, "rb"):
        pass


def _fill_from_facts(rep: ProbeReport, facts: FileFacts) -> None:
    rep.format = facts.format
    rep.format_version = facts.format_version
    rep.kind = facts.kind
    rep.description = facts.description or None
    rep.size = facts.size
    rep.endianness = facts.endianness
    rep.architecture = facts.architecture
    rep.file_type = facts.file_type
    rep.file_type_name = facts.file_type_name
    rep.quant_layout = facts.quant_layout
    rep.tensor_types = {k: {"count": s.count, "bytes": s.bytes} for k, s in facts.tensor_types.items()}
    rep.n_tensors = facts.n_tensors
    rep.n_params = facts.n_params
    rep.hparams = dict(facts.hparams)
    ctx = rep.hparams.get("n_ctx_train") or rep.hparams.get("context_length")
    rep.context_length = int(ctx) if isinstance(ctx, (int, float)) and not isinstance(ctx, bool) else None
    rep.tokenizer = facts.tokenizer
    rep.chat_template = bool(facts.chat_template)
    rep.vocab_only = bool(facts.vocab_only)
    rep.split_experts = bool(facts.split_experts)
    rep.truncated = bool(facts.truncated)
    rep.notes = list(facts.notes) + rep.notes
    rep.anomalies = [{"kind": a.kind, "detail": a.detail} for a in facts.anomalies]
    if facts.kv is not None:
        rep.kv = dict(facts.kv)


def probe(path: Any, *, estimate_ctx: int | None = None, gpu_layers: int | str = 0, with_kv: bool = False,
          device: str = "auto", free_vram_bytes: int | None = None, verify: bool = False,
          published_table: TableArg = None) -> ProbeReport:
    """Describe ``path`` and say which backend (and variant) loads it.  Never raises for a bad file.

    The variant and the memory estimate are planned for ``estimate_ctx`` tokens, else for the context
    ``load()`` gives the file (``report.n_ctx`` says which).  ``gpu_layers`` (a count or "auto") and
    ``free_vram_bytes`` shape the memory estimate's split between the CPU and the GPU (see
    :func:`memory.plan_memory`).  A file of GPT4All's published list (by name and size) is named in
    ``published``; ``verify=True`` also compares its md5 (reads the whole file).  ``published_table``: a table
    of the packaged one's format to use instead (a path)."""
    spath = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    rep = ProbeReport(path=spath)
    try:
        _precheck(spath)
    except OSError as e:
        rep.error = f"cannot read {spath}: {e.strerror or e}"
        rep.error_kind = "unreadable"
        return rep
    except (ValueError, TypeError) as e:  # e.g. an embedded NUL byte
        rep.error = f"cannot read {spath!r}: invalid path ({e})"
        rep.error_kind = "unreadable"
        return rep
    try:
        _published(rep, spath, verify, published_table)
    except OSError as e:
        rep.error = f"cannot read {spath}: {e.strerror or e}"
        rep.error_kind = "unreadable"
        return rep
    from .facts_cache import read_facts_cached
    from .formats.sniff import read_facts

    try:
        facts = read_facts(spath, with_kv=True) if with_kv else read_facts_cached(spath)
    except OSError as e:
        rep.error = f"cannot read {spath}: {e.strerror or e}"
        rep.error_kind = "unreadable"
        return rep
    except ValueError as e:  # FormatError and other malformed-structure complaints
        rep.error = str(e) or type(e).__name__
        rep.error_kind = "format"
        return rep
    except Exception as e:  # noqa: BLE001 - a reader bug must still produce a report
        rep.error = f"internal error while reading: {type(e).__name__}: {e}"
        rep.error_kind = "internal"
        return rep
    try:
        if facts.kind == "model":
            from .chat import resolve_template

            rep.chat_template_source = resolve_template(spath, facts, None, published_table).source
        _judge(rep, facts, estimate_ctx=estimate_ctx, gpu_layers=gpu_layers, device=device,
               free_vram_bytes=free_vram_bytes)
    except Exception as e:  # noqa: BLE001
        rep.error = f"internal error while judging the file: {type(e).__name__}: {e}"
        rep.error_kind = "internal"
    return rep


def _published(rep: ProbeReport, path: str, verify: bool, table: TableArg) -> None:
    """``published`` (by name and size), a note for a file named like a published one but of another
    size, and with ``verify`` the md5 comparison."""
    from . import published

    size = os.stat(path).st_size
    entry = published.lookup(path, size, table)
    if entry is not None:
        rep.published = entry.to_dict()
    else:
        named = published.by_name(path, table)
        if named is not None:
            rep.notes.append(f"named like GPT4All's published {named.summary()}, but {size} bytes, not "
                             f"{named.filesize}: not that file (an incomplete download?)")
    if verify:
        rep.verify = published.verify(path, table).to_dict()


def _judge(rep: ProbeReport, facts: FileFacts, *, estimate_ctx: int | None, gpu_layers: int | str, device: str,
           free_vram_bytes: int | None = None) -> None:
    _fill_from_facts(rep, facts)
    rep._facts = facts
    specs = load_manifest()
    from .errors import DeviceError
    from .plan import plan

    variant_error = None
    n_ctx = estimate_ctx if estimate_ctx is not None and estimate_ctx > 0 else None  # None: load()'s default
    try:  # the very plan load() makes, so that probe and load never name different variants
        lp = plan(facts, device=device, n_ctx=n_ctx, fit_layers=_memory.fit_layers)
    except DeviceError as e:  # device="cuda" that cannot be had here: say so, choose none
        lp, variant_error = plan(facts, device="cpu", n_ctx=n_ctx), str(e)
    built = lp.built
    rep.backends_built = built
    prefer = [b for b, vs in built.items() if vs]
    best, all_v = lp.chosen, lp.verdicts
    rep.reasons = {v.backend: list(v.reasons) for v in all_v}
    rep.loadable = best is not None
    if best is not None:
        rep.backend = best.backend
        rep.n_ctx = lp.n_ctx
        if variant_error is not None:
            rep.variant_reason = variant_error
        elif lp.variant is not None:
            rep.variant = lp.variant.variant
            rep.variant_reason = lp.variant.reason or None
        rep.ready = rep.variant is not None
        if rep.variant is None and not built.get(best.backend):  # nothing of it built: one command
            rep.suggestion = f"build it with: {build_command(best.backend)}"
        elif rep.variant is None:
            why = rep.variant_reason or f"backend {best.backend} has no built variant"
            rep.suggestion = f"{why}; build it with: {build_command(best.backend)}"
    else:
        rep.suggestion = catalog.suggest(facts, all_v, built=prefer, specs=specs)
    if best is not None and rep.suggestion is None:
        rep.suggestion = catalog.upgrade_suggestion(facts, all_v, specs=specs)
    if facts.kind in ("model", "vocab-only") and not facts.truncated:
        era = specs[best.backend].era if best is not None else None
        rep.memory = _memory.plan_memory(facts, ctx_size=lp.n_ctx, gpu_layers=gpu_layers, era=era,
                                         free_vram_bytes=free_vram_bytes)
