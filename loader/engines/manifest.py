"""The backend manifest (``backends/manifest.toml``) as typed, read-only data.

Both the build (``gpt4all-build``) and the catalog read the manifest through this module, so
what is built and what is promised can never disagree.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.resources
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ..errors import BuildError, ManifestError


#: the manifest layout this module reads (the manifest's ``schema``); another number is refused
SCHEMA = 1


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
class EraLimits:
    """What one backend's engine asserts about a file beyond its accept rules (``[backends.NAME.limits]``,
    read by ``validate.problems``)."""

    #: legacy LLaMA: n_layer values of the loader's model-size table (others abort when the size
    #: is printed); None: no table
    layer_table: frozenset[int] | None = None
    #: legacy LLaMA: n_layer below this is taken as 7B instead of aborting (2023-08)
    layer_table_below: int = 0
    #: legacy LLaMA: the loader asserts n_rot == n_embd / n_head
    rot_asserted: bool = False
    #: ggml types a 1-D tensor may have (norms and biases); None: any type the era reads
    vector_types: frozenset[str] | None = None
    #: GGUF: 1-D tensors named ``*norm.weight`` must be F32
    norms_f32: bool = False
    #: GGUF: two tokens with the same text abort the vocabulary load
    unique_tokens: bool = False
    #: GGUF: tokenizer models each architecture runs with (others abort or allocate without bound)
    arch_tokenizers: tuple[tuple[str, frozenset[str]], ...] = ()
    #: GGUF: ``general.alignment`` must be a multiple of this
    alignment_multiple: int = 8


@dataclass(frozen=True)
class EraRules:
    """How one era's llama.cpp sizes its buffers with the context parameters our shim passes
    (``[eras."YYYY-MM"]``, read by ``memory.estimate``)."""

    #: KV cells are n_ctx rounded up to this
    kv_pad: int = 1
    #: flash attention on by default on the CPU (no KQ score matrix in the graph; the mask cast to f16)
    flash_attn: bool = False
    #: ... and with layers on our CUDA build
    flash_attn_cuda: bool = False
    #: bytes per f32 KQ-mask element in the graph inputs (0: the era masks in place, no input tensor)
    mask_bytes: int = 4
    #: a separate KV cache (and mask) for sliding-window layers
    swa_cache: bool = False
    #: metadata counted in the logged compute buffer: ggml_tensor_overhead() * GGML_MAX_NODES + graph
    graph_meta: int = 0
    #: an output buffer (logits of one token) reserved at context creation
    output_buffer: bool = False
    #: tensor types the AVX2 CPU build repacks into CPU_REPACK
    repack_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BackendCuda:
    """``[backends.NAME.cuda]``: what a backend's CUDA variant needs beyond its CPU one."""

    archives: tuple[str, ...] = ()                    # static libraries of the CUDA code
    matrix_types: tuple[str, ...] | None = None       # weight-matrix types its CUDA matmul takes (None: any)

    def key_facts(self) -> dict[str, Any]:
        """The table as the build key has always hashed it: only the keys the manifest states."""
        out: dict[str, Any] = {"archives": list(self.archives)}
        if self.matrix_types is not None:
            out["matrix_types"] = list(self.matrix_types)
        return out


@dataclass(frozen=True)
class Wheel:
    requirement: str   # name==version
    sha256: str


@dataclass(frozen=True)
class CudaSettings:
    """The top-level ``[cuda]`` table: how every CUDA variant is built and what it needs at run time."""

    architectures: str = ""                      # CMAKE_CUDA_ARCHITECTURES
    wheels: tuple[Wheel, ...] = ()               # pinned cuBLAS (and CUDA runtime) wheels
    #: shared libraries a CUDA variant loads, in order
    runtime_libraries: tuple[str, ...] = ("libcublasLt.so.13", "libcublas.so.13")
    reserve_mib: int = 768                       # VRAM left free beyond the estimate


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
    limits: EraLimits = EraLimits()
    layout: str = "vendor"
    shim_sources: tuple[str, ...] = ("backends/shim/g4a_shim.cpp",)
    patches: tuple[str, ...] = ()
    ggml_contexts: ContextTable | None = None
    #: the era's default for load(flash_attn="auto"): "auto" or "off"; None: no flash attention
    flash_attn: str | None = None
    cuda: BackendCuda | None = None

    @property
    def version(self) -> str:
        return pinned(self.sdist)[1]


@dataclass(frozen=True)
class Manifest:
    backends: dict[str, BackendSpec]   # by name, in manifest order
    eras: dict[str, EraRules]          # by era ("2023-08"), one per era a backend states
    cuda: CudaSettings


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


_REQUIRED: Any = object()


class _Table:
    """One manifest table being read: every key taken once with its type, and whatever is left over
    is an unknown key (a misspelt key would otherwise drop a check without a word)."""

    def __init__(self, data: Any, where: str, path: Path) -> None:
        self.path, self.where = path, where
        if not isinstance(data, dict):
            self.fail(f"is {type(data).__name__}, not a table")
        self.data: dict[str, Any] = data
        self.taken: set[str] = set()

    def fail(self, why: str) -> NoReturn:
        raise ManifestError(f"{self.path}: {self.where + ': ' if self.where else ''}{why}")

    def _get(self, key: str, default: Any) -> Any:
        self.taken.add(key)
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            self.fail(f"the key {key!r} is missing")
        return default

    def _check(self, key: str, value: Any, ok: bool, what: str) -> Any:
        if not ok:
            self.fail(f"{key} = {value!r} is not {what}")
        return value

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        return v if v is default else self._check(key, v, isinstance(v, str), "a string")

    def num(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        return v if v is default else self._check(key, v, type(v) is int, "an integer")

    def flag(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        return v if v is default else self._check(key, v, type(v) is bool, "true or false")

    def texts(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        if v is default:
            return v
        return tuple(self._check(key, v, isinstance(v, list) and all(isinstance(x, str) for x in v),
                                 "a list of strings"))

    def nums(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        if v is default:
            return v
        return tuple(self._check(key, v, isinstance(v, list) and all(type(x) is int for x in v),
                                 "a list of integers"))

    def table(self, key: str, default: Any = _REQUIRED) -> Any:
        v = self._get(key, default)
        return v if v is default else _Table(v, f"{self.where}.{key}" if self.where else key, self.path)

    def tables(self, key: str) -> list[_Table]:
        v = self._get(key, [])
        self._check(key, v, isinstance(v, list), "an array of tables")
        return [_Table(t, f"{self.where}.{key}[{i}]", self.path) for i, t in enumerate(v)]

    def items(self) -> list[tuple[str, Any]]:
        """A table of named entries (variants, eras, anomalies): each key is a name, not a field."""
        self.taken = set(self.data)
        return list(self.data.items())

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.taken]
        if unknown:
            near = difflib.get_close_matches(unknown[0], sorted(self.taken), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(sorted(self.taken))})"
            self.fail(f"unknown key {unknown[0]!r}{hint}")


def _parse_format(text: str) -> tuple[str, int]:
    name, _, ver = text.partition(":")
    return name, int(ver or 0)


def _accept_rule(t: _Table) -> AcceptRule:
    from ..formats.facts import ANOMALY_KINDS

    anomalies = []
    at = t.table("anomalies", None)
    for kind, what in at.items() if at is not None else ():
        if kind not in ANOMALY_KINDS:  # a misspelt kind would silently let the engine meet what it cannot take
            at.fail(f"unknown anomaly kind {kind!r} (known: {', '.join(ANOMALY_KINDS)})")
        anomalies.append((kind, at._check(kind, what, isinstance(what, str), "a string")))
    header_ftypes, split_experts = t.nums("header_ftypes", None), t.flag("split_experts", None)
    rule = AcceptRule(
        formats=tuple(_parse_format(s) for s in t.texts("formats")), architectures=t.texts("architectures"),
        tensor_types=frozenset(t.texts("tensor_types")),
        header_ftypes=frozenset(header_ftypes) if header_ftypes is not None else None,
        tokenizers=t.texts("tokenizers", None), split_experts=split_experts,
        quant_layouts=t.texts("quant_layouts", None), required_tensors=t.texts("required_tensors", ()),
        moe=t.flag("moe", None), anomalies=tuple(anomalies))
    t.done()
    return rule


def _limits(t: _Table) -> EraLimits:
    layer_table, vector_types = t.nums("layer_table", None), t.texts("vector_types", None)
    tok = t.table("arch_tokenizers", None)
    limits = EraLimits(
        layer_table=frozenset(layer_table) if layer_table is not None else None,
        layer_table_below=t.num("layer_table_below", 0), rot_asserted=t.flag("rot_asserted", False),
        vector_types=frozenset(vector_types) if vector_types is not None else None,
        norms_f32=t.flag("norms_f32", False), unique_tokens=t.flag("unique_tokens", False),
        arch_tokenizers=tuple((arch, frozenset(tok.texts(arch))) for arch, _ in tok.items()) if tok else (),
        alignment_multiple=t.num("alignment_multiple", 8))
    t.done()
    return limits


def _era_rules(t: _Table) -> EraRules:
    rules = EraRules(
        kv_pad=t.num("kv_pad", 1), flash_attn=t.flag("flash_attn", False),
        flash_attn_cuda=t.flag("flash_attn_cuda", False), mask_bytes=t.num("mask_bytes", 4),
        swa_cache=t.flag("swa_cache", False), graph_meta=t.num("graph_meta", 0),
        output_buffer=t.flag("output_buffer", False), repack_types=frozenset(t.texts("repack_types", ())))
    t.done()
    return rules


def _backend(name: str, b: _Table, features: dict[str, tuple[str, ...]]) -> BackendSpec:
    variants = {}
    for vname, _ in (vt := b.table("variants")).items():
        v = vt.table(vname)
        variants[vname] = Variant(vname, v.texts("cmake", ()), v.texts("cpu_features", features.get(vname, ())),
                                  v.text("gpu", None))
        v.done()
    cuda = None
    if (ct := b.table("cuda", None)) is not None:
        cuda = BackendCuda(archives=ct.texts("archives", ()), matrix_types=ct.texts("matrix_types", None))
        ct.done()
    contexts = None
    if (gt := b.table("ggml_contexts", None)) is not None:
        contexts = ContextTable(gt.num("table"), gt.num("per_model"), gt.num("per_call"))
        gt.done()
    if "limits" not in b.data:
        b.fail("the table 'limits' is missing (what this backend's engine asserts; an empty table: nothing "
               "beyond its accept rules)")
    flash_attn = b.text("flash_attn", None)
    if flash_attn not in (None, "auto", "off"):
        b.fail(f"flash_attn = {flash_attn!r} is not \"auto\" or \"off\"")
    spec = BackendSpec(
        name=name, era=b.text("era"), summary=b.text("summary", ""), sdist=b.text("sdist"), sha256=b.text("sha256"),
        llama_cpp=b.text("llama_cpp", ""), api=b.num("api"), api_defines=b.texts("api_defines", ()),
        archives=b.texts("archives", ()), cmake=b.texts("cmake", ()), priority=b.num("priority", 0),
        variants=variants, accepts=tuple(_accept_rule(r) for r in b.tables("accepts")),
        limits=_limits(b.table("limits")), layout=b.text("layout", "vendor"),
        shim_sources=b.texts("shim_sources", ("backends/shim/g4a_shim.cpp",)), patches=b.texts("patches", ()),
        ggml_contexts=contexts, flash_attn=flash_attn, cuda=cuda)
    b.done()
    return spec


def _cuda_settings(t: _Table | None) -> CudaSettings:
    if t is None:
        return CudaSettings()
    wheels = []
    for w in t.tables("wheels"):
        wheels.append(Wheel(w.text("requirement"), w.text("sha256")))
        w.done()
    out = CudaSettings(architectures=t.text("architectures", ""), wheels=tuple(wheels),
                       runtime_libraries=t.texts("runtime_libraries", ()), reserve_mib=t.num("reserve_mib", 768))
    t.done()
    return out


def read_manifest(data: dict[str, Any], path: Path) -> Manifest:
    """The parsed TOML of a manifest as typed data; anything it does not expect is a ManifestError
    naming ``path`` and the key."""
    top = _Table(data, "", path)
    schema = top.num("schema")
    if schema != SCHEMA:
        top.fail(f"schema = {schema}, but this gpt4all_loader reads schema {SCHEMA}")
    cuda = _cuda_settings(top.table("cuda", None))
    features: dict[str, tuple[str, ...]] = {}
    if (ft := top.table("cpu_features", None)) is not None:
        features = {k: ft.texts(k) for k, _ in ft.items()}
    eras: dict[str, EraRules] = {}
    et = top.table("eras")
    for era, _ in et.items():
        eras[era] = _era_rules(et.table(era))
    bt = top.table("backends")
    backends = {name: _backend(name, bt.table(name), features) for name, _ in bt.items()}
    top.done()
    for name, spec in backends.items():
        if spec.era not in eras:
            bt.table(name).fail(f"era {spec.era!r} has no table [eras.\"{spec.era}\"] (how its engine sizes memory)")
    unused = sorted(set(eras) - {s.era for s in backends.values()})
    if unused:
        et.fail(f"no backend has the era {unused[0]!r}")
    return Manifest(backends=backends, eras=eras, cuda=cuda)


@functools.lru_cache(maxsize=4)
def manifest(path: Path | None = None) -> Manifest:
    """The whole manifest, read and checked once per path and process."""
    path = path or manifest_path()
    return read_manifest(_parsed(path), path)


def load_manifest(path: Path | None = None) -> dict[str, BackendSpec]:
    """All declared backends, by name, in manifest order."""
    return manifest(path).backends


def cuda_settings() -> CudaSettings:
    """The manifest's ``[cuda]`` table: pinned cuBLAS wheels, runtime libraries, VRAM reserve."""
    return manifest().cuda


def era_rules(era: str) -> EraRules:
    """How the llama.cpp of ``era`` sizes its buffers; an era the manifest does not state is a ValueError."""
    eras = manifest().eras
    if era not in eras:
        raise ValueError(f"unknown era {era!r} (the manifest states {', '.join(eras)})")
    return eras[era]


def newest_era() -> str:
    return max(manifest().eras)
