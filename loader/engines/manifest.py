"""The backend manifest (``backends/manifest.toml``) as typed, read-only data.

Both the build (``gpt4all-build``) and the catalog read the manifest through this module, so
what is built and what is promised can never disagree.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BuildError


@dataclass(frozen=True)
class AcceptRule:
    """One kind of file a backend loads: every listed condition must hold."""

    formats: tuple[tuple[str, int], ...]          # (container, version); "ggml" has version 0
    architectures: tuple[str, ...]
    tensor_types: frozenset[str]
    header_ftypes: frozenset[int] | None = None   # legacy header ftype gate of the era's loader
    tokenizers: tuple[str, ...] | None = None     # GGUF tokenizer.ggml.model values understood
    split_experts: bool | None = None             # legacy per-expert MoE tensors allowed?
    quant_layouts: tuple[str, ...] | None = None  # FileFacts.quant_layout values (GPT-J/MPT: qnt0, qnt2)
    required_tensors: tuple[str, ...] = ()        # tensors the era's loader insists on
    moe: bool | None = None                       # False: the era predates mixture-of-experts models
    #: anomaly kind (``formats.facts.ANOMALY_KINDS``) -> what the era's engine does with it ("refuses ...",
    #: "aborts ..."); a file with any of them is refused by this rule
    anomalies: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Variant:
    name: str
    cmake: tuple[str, ...]
    cpu_features: tuple[str, ...]     # CPU flags the variant needs at run time
    gpu: str | None = None            # "cuda" for GPU variants


@dataclass(frozen=True)
class ContextTable:
    """An era whose ggml keeps its contexts in a fixed table (``GGML_MAX_CONTEXTS``).

    A full table makes ``ggml_init()`` return NULL, which the engines of 2023 dereference: the
    loader therefore counts contexts per library itself (see ``native.ContextBudget``).
    """

    table: int        # GGML_MAX_CONTEXTS
    per_model: int    # contexts an open model holds (weights, KV cache)
    per_call: int     # contexts one load or evaluation in flight adds (its graph)

    @property
    def max_open_models(self) -> int:
        """Open models that still leave room for one evaluation."""
        return (self.table - self.per_call) // self.per_model


@dataclass(frozen=True)
class BackendSpec:
    name: str
    era: str
    summary: str
    sdist: str
    sha256: str
    llama_cpp: str
    api: int
    api_defines: tuple[str, ...]
    archives: tuple[str, ...]
    cmake: tuple[str, ...]
    priority: int
    variants: dict[str, Variant]
    accepts: tuple[AcceptRule, ...]
    layout: str = "vendor"
    shim_sources: tuple[str, ...] = ("backends/shim/g4a_shim.cpp",)
    patches: tuple[str, ...] = ()
    ggml_contexts: ContextTable | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return pinned(self.sdist)[1]


def pinned(requirement: str) -> tuple[str, str]:
    """``name==version`` as (name, version); anything but one exact pin raises BuildError.

    Native code and test files are fetched by such pins only, so a range or a marker here is a
    mistake in the manifest, caught before anything is downloaded.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(requirement)
    except InvalidRequirement as e:
        raise BuildError(f"{requirement!r} is not a requirement: {e}") from None
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.extras or req.marker:
        raise BuildError(f"{requirement!r}: a pinned requirement must have the form name==version")
    return req.name, specs[0].version


def package_data(rel: str = "") -> Path:
    """A file shipped inside the package, by its path relative to the package (``backends/...``).

    The manifest's relative paths (``shim_sources``, ``patches``) name files below it.  In a checkout
    ``loader/backends`` links to the top-level ``backends/`` folder; a wheel holds a copy: the same
    names resolve in a checkout, an editable install and an installed wheel, and nothing looks for
    a source tree.
    """
    root = importlib.resources.files("gpt4all_loader")
    if not isinstance(root, Path):  # e.g. imported from a zip archive: compilers need real files
        raise BuildError(f"gpt4all_loader is imported from {root}, not from a folder: install it with pip")
    return root / rel if rel else root


BUILD_SCRIPT = "gpt4all-build"   # the console script of gpt4all_loader.cli.build (build_backends.py in a checkout)


def build_command(backend: str, variant: str | None = None, *, clean: bool = False) -> str:
    """The command that builds (or with ``clean``, removes) one backend: every "not built" message says it."""
    return " ".join([BUILD_SCRIPT, *(["--clean"] if clean else []), "--only", backend,
                     *(["--variant", variant] if variant else [])])


def manifest_path() -> Path:
    path = package_data("backends/manifest.toml")
    if not path.is_file():
        raise BuildError(f"{path} is missing: this installation of gpt4all_loader is incomplete; reinstall it")
    return path


def _parse_format(text: str) -> tuple[str, int]:
    name, _, ver = text.partition(":")
    return name, int(ver or 0)


@functools.lru_cache(maxsize=4)
def _parsed(path: Path | None = None) -> dict[str, Any]:
    """The manifest's TOML, parsed once per path and process.

    tomllib takes several milliseconds on it, inside every first ``load()``; the parsed tables are
    also kept as JSON in the cache, keyed by the manifest's bytes, and read from there (0.1 ms)."""
    path = path or manifest_path()
    data = path.read_bytes()
    from . import cache

    copy = cache.cache_root() / "manifest" / f"{hashlib.sha256(data).hexdigest()[:32]}.json"
    try:
        parsed = json.loads(copy.read_text(encoding="utf-8"))
        if isinstance(parsed, dict):
            return parsed
    except (OSError, ValueError):
        pass
    parsed = tomllib.loads(data.decode("utf-8"))
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(parsed), encoding="utf-8")
        os.replace(tmp, copy)
    except OSError:
        pass  # a read-only cache only costs the next process the parse
    return parsed


def cuda_table() -> dict[str, Any]:
    """The manifest's ``[cuda]`` table: pinned cuBLAS wheels, runtime libraries, VRAM reserve."""
    return dict(_parsed().get("cuda", {}))


def _anomalies(backend: str, table: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """An accept rule's ``anomalies`` table, each kind checked against the reader's (a misspelt kind
    would silently let the engine meet what it cannot take)."""
    from ..formats.facts import ANOMALY_KINDS

    unknown = sorted(set(table) - set(ANOMALY_KINDS))
    if unknown:
        raise BuildError(f"manifest: backend {backend}: unknown anomaly kind(s) {', '.join(unknown)} "
                         f"(known: {', '.join(ANOMALY_KINDS)})")
    return tuple((k, str(v)) for k, v in table.items())


@functools.lru_cache(maxsize=4)
def load_manifest(path: Path | None = None) -> dict[str, BackendSpec]:
    """All declared backends, by name, in manifest order."""
    data = _parsed(path)
    features = data.get("cpu_features", {})
    specs: dict[str, BackendSpec] = {}
    known = {f.name for f in BackendSpec.__dataclass_fields__.values()} | {"variants"}
    for name, b in data.get("backends", {}).items():
        variants = {
            vname: Variant(vname, tuple(v.get("cmake", ())),
                           tuple(v.get("cpu_features", features.get(vname, ()))), v.get("gpu"))
            for vname, v in b.get("variants", {}).items()
        }
        accepts = tuple(
            AcceptRule(
                formats=tuple(_parse_format(s) for s in r["formats"]),
                architectures=tuple(r["architectures"]),
                tensor_types=frozenset(r["tensor_types"]),
                header_ftypes=frozenset(r["header_ftypes"]) if "header_ftypes" in r else None,
                tokenizers=tuple(r["tokenizers"]) if "tokenizers" in r else None,
                split_experts=r.get("split_experts"),
                quant_layouts=tuple(r["quant_layouts"]) if "quant_layouts" in r else None,
                required_tensors=tuple(r.get("required_tensors", ())),
                moe=r.get("moe"),
                anomalies=_anomalies(name, r.get("anomalies", {})),
            )
            for r in b.get("accepts", ())
        )
        specs[name] = BackendSpec(
            name=name, era=b["era"], summary=b.get("summary", ""), sdist=b["sdist"], sha256=b["sha256"],
            llama_cpp=b.get("llama_cpp", ""), api=int(b["api"]), api_defines=tuple(b.get("api_defines", ())),
            archives=tuple(b.get("archives", ())), cmake=tuple(b.get("cmake", ())),
            priority=int(b.get("priority", 0)), variants=variants, accepts=accepts,
            layout=b.get("layout", "vendor"),
            shim_sources=tuple(b.get("shim_sources", ("backends/shim/g4a_shim.cpp",))),
            patches=tuple(b.get("patches", ())),
            ggml_contexts=ContextTable(**b["ggml_contexts"]) if "ggml_contexts" in b else None,
            extra={k: v for k, v in b.items() if k not in known},
        )
    return specs
