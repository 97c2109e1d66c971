"""Which backend loads a file, and why each of the others does not.

The catalog compares what the reader found (:class:`~gpt4all_loader.formats.facts.FileFacts`) with the
``accepts`` rules of every backend in the manifest.  A backend loads a file when one of its rules
matches all of: container and version, architecture, every tensor type the file really holds, the
header ftype (legacy loaders checked only that) and the tokenizer model (GGUF).

Reasons are built from the manifest (what a backend reads) plus a small table of history (why an era
refuses what it refuses), so that a new backend in the manifest needs no code here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..formats.facts import FileFacts
from ..formats.ggml_types import LEGACY_FTYPE_NAMES, TYPE_NAMES
from ..formats.legacy import LEGACY_CONTAINERS

from . import validate
from .manifest import AcceptRule, BackendSpec, build_command, load_manifest

# --------------------------------------------------------------------------------------------------
# History: data keyed by type, (format, version) and architecture.

#: ggml type ids, used to name a type in messages ("Q4_0_4_4 (id 31)") and to parse unnamed ids
TYPE_IDS: dict[str, int] = {name: i for i, name in TYPE_NAMES.items()}
NEWEST_TYPE_ID = max(TYPE_IDS.values())

#: when a tensor type entered llama.cpp (shown when an older backend does not know it)
TYPE_ADDED: dict[str, str] = {
    "Q4_2": "b379 (April 2023)", "Q4_3": "b391 (April 2023)", "Q5_0": "b443 (April 2023)",
    "Q5_1": "b443 (April 2023)", **{t: "b616 (June 2023, k-quants)" for t in
                                    ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")},
    "IQ2_XXS": "b1792 (Jan 2024)", "IQ2_XS": "b1827 (Jan 2024)", "IQ3_XXS": "b2015 (Jan 2024)",
    "IQ1_S": "b2172 (Feb 2024)", "IQ4_NL": "b2221 (Feb 2024)", "IQ3_S": "b2253 (Feb 2024)",
    "IQ2_S": "b2270 (Feb 2024)", "IQ4_XS": "b2281 (Feb 2024)", "IQ1_M": "b2539 (March 2024)",
    "BF16": "b2808 (May 2024)", "TQ1_0": "b3672 (Sept 2024)", "TQ2_0": "b3672 (Sept 2024)",
    "MXFP4": "Aug 2025", "NVFP4": "2026", "Q1_0": "2026", "Q2_0": "2026",
    "I8": "March 2024 (as a storable type)", "I16": "March 2024 (as a storable type)",
    "I32": "March 2024 (as a storable type)", "I64": "March 2024", "F64": "March 2024",
}

#: tensor types that were removed from llama.cpp, and how
TYPE_REMOVED: dict[str, str] = {
    "Q4_3": "Q4_3 was removed at b455 (llama.cpp PR 1218, April 2023)",
    "Q4_2": "Q4_2 was removed by llama.cpp PR 1405 (b529, May 2023)",
    **{t: f"tensor type {t} (id {TYPE_IDS[t]}) was removed from GGUF at b4282 (llama.cpp PR 10446): "
          "Q4_0 is repacked at run time instead" for t in ("Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8")},
    **{t: f"tensor type {t} (id {TYPE_IDS[t]}) existed only between b4207 and b4282 and was never in a "
          "release" for t in ("IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8")},
}

_PRE_1405 = {("ggml", 0), ("ggmf", 1), ("ggjt", 1)}

#: why a type in a legacy container cannot be read by a later legacy loader:
#: (file quant layout group, type) -> explanation
_LAYOUT_CHANGE: dict[tuple[str, str], str] = {
    **{("pre-1405", t): "whose quant layout (nibble order) changed in llama.cpp PR 1405 (May 2023, ggjt v2)"
       for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1")},
    ("pre-1405", "Q8_0"): "whose scales changed from f32 to f16 in llama.cpp PR 1508 (May 2023, ggjt v3)",
    **{("pr1405", t): "whose scales changed from f32 to f16 in llama.cpp PR 1508 (May 2023, ggjt v3)"
       for t in ("Q4_0", "Q4_1", "Q8_0")},
}

#: what a (format, version) is, for the messages
FORMAT_HISTORY: dict[tuple[str, int], str] = {
    ("ggml", 0): "the unversioned container of March 2023",
    ("ggmf", 1): "written by llama.cpp b112-b263, spring 2023",
    ("ggjt", 1): "April 2023, the quant layout before llama.cpp PR 1405",
    ("ggjt", 2): "the quant layout of llama.cpp PR 1405, May 2023",
    ("ggjt", 3): "the f16 quant scales of llama.cpp PR 1508, May 2023; the last pre-GGUF format",
    ("gguf", 1): "GGUF v1 was dropped in Nov 2023 (llama.cpp b1470)",
    ("gguf", 2): "Sept 2023, llama.cpp b1087",
    ("gguf", 3): "Oct 2023, llama.cpp b1405",
    ("repl", 0): "GPT4All's Replit container (June 2023), read by no llama.cpp",
    ("bert", 0): "GPT4All's BERT / Embed4All container (July 2023), read by no llama.cpp",
}

#: GPT4All's 2023 zoo: what runs each architecture as GGUF today (the probe's upgrade hint)
ZOO_GGUF_HINT: dict[str, str] = {
    "falcon": "llama.cpp runs Falcon as GGUF",
    "starcoder": "llama.cpp runs StarCoder as GGUF",
    "bert": "llama.cpp runs BERT embedding models as GGUF",
    "replit": "llama.cpp runs Replit as GGUF (as MPT: the same math)",
}

#: architectures with a known story
ARCH_HISTORY: dict[str, str] = {
    "gptj": "architecture 'gptj' has no graph in any llama.cpp (it is only named in llama.cpp's tables)",
    "clip": "architecture 'clip' is a quantize-only placeholder in llama.cpp, not a runnable model",
    "persimmon": "architecture 'persimmon' was removed from llama.cpp at b2952 (May 2024)",
}

_NON_MODEL_HINTS: dict[str, str] = {
    "html": "an HTML page (an error or login page saved instead of the model): download the file itself again",
    "safetensors": "a safetensors checkpoint: convert it to GGUF with llama.cpp's convert_hf_to_gguf.py",
    "pytorch-zip": "a PyTorch checkpoint: convert it to GGUF with llama.cpp's convert_hf_to_gguf.py",
    "pytorch": "a PyTorch checkpoint: convert it to GGUF with llama.cpp's convert_hf_to_gguf.py",
    "pickle": "a Python pickle (PyTorch checkpoint?): convert it to GGUF with llama.cpp's convert_hf_to_gguf.py",
    "json": "a JSON file (a config or tokenizer file), not the weights",
    "text": "a text file, not a model",
    "empty": "an empty file: the download did not happen or was interrupted",
    "zip": "a zip archive: unpack it first",
    "gzip": "a gzip archive: unpack it first",
    "whisper": "a whisper.cpp speech model: it runs in whisper.cpp, not llama.cpp",
    "rwkv": "an rwkv.cpp model: it runs in rwkv.cpp, or convert the original weights to GGUF",
    "ggla": "a LoRA adapter",
    "git-lfs-pointer": "a Git LFS pointer, not the model: fetch the real file (git lfs pull)",
    "hdf5": "an HDF5 (Keras) checkpoint: convert the original model to GGUF",
    "unknown": "not a format we know: check where the file came from",
}


# --------------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """One backend's answer for one file."""

    backend: str
    loadable: bool
    reasons: list[str] = field(default_factory=list)
    rule: AcceptRule | None = None
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "loadable": self.loadable, "reasons": list(self.reasons),
                "priority": self.priority}


def type_id(name: str) -> int | None:
    """The ggml id of a type name; unnamed ids as reported by a reader ("TYPE_43", "43") too."""
    if name in TYPE_IDS:
        return TYPE_IDS[name]
    m = re.search(r"(\d+)\)?$", name)
    return int(m.group(1)) if m and not re.match(r"^[A-Z]+\d+_", name) else None


def type_label(name: str) -> str:
    tid = type_id(name)
    if name in TYPE_IDS:
        return name
    return f"id {tid}" if tid is not None else repr(name)


def format_label(fmt: str | None, version: int | None) -> str:
    if fmt is None:
        return "unknown format"
    if fmt == "gguf":
        return f"GGUF v{version}" if version is not None else "GGUF"
    if fmt == "ggml" and not version:
        return "ggml (unversioned)"
    return f"{fmt} v{version}" if version is not None else fmt


def _formats_label(formats: Iterable[tuple[str, int]]) -> str:
    order = {"ggml": 0, "ggmf": 1, "ggjt": 2, "gguf": 3}
    items = sorted(set(formats), key=lambda f: (order.get(f[0], 9), f[0], f[1]))
    by_fmt: dict[str, list[int]] = {}
    for f, v in items:
        by_fmt.setdefault(f, []).append(v)
    parts = []
    for f, vs in by_fmt.items():
        if f == "ggml":
            parts.append("ggml")
        elif f == "gguf":
            parts.append("GGUF v" + "/".join(str(v) for v in vs))
        else:
            parts.append(f"{f} v" + "/".join(str(v) for v in vs))
    return _join(parts)


def _join(items: list[str], word: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {word} " + items[-1]


def _types_label(types: Iterable[str]) -> str:
    ordered = sorted(types, key=lambda t: (TYPE_IDS.get(t, 1000 + (type_id(t) or 0)), t))
    return "/".join(ordered)


def _file_version(facts: FileFacts) -> int:
    v = facts.format_version
    return 0 if v is None else int(v)


def _layout_group(facts: FileFacts) -> str | None:
    key = (facts.format, _file_version(facts))
    if key in _PRE_1405:
        return "pre-1405"
    if key == ("ggjt", 2):
        return "pr1405"
    return None


def _spec_knows_type(spec: BackendSpec, t: str) -> bool:
    return any(t in r.tensor_types for r in spec.accepts)


# --------------------------------------------------------------------------------------------------
# Checks of one rule.  Each failure is (weight, message); the lightest failing rule explains a refusal.

def _check_rule(facts: FileFacts, spec: BackendSpec, rule: AcceptRule,
                all_archs: frozenset[str]) -> list[tuple[int, str]]:
    fails: list[tuple[int, str]] = []
    fmt, ver = facts.format, _file_version(facts)
    this = format_label(fmt, facts.format_version)

    if (fmt, ver) not in rule.formats:
        fails.append((100, _format_reason(facts, spec)))
        return fails

    arch = facts.architecture
    if arch is None:
        # even a vocabulary-only file needs it: the engines pick the tokenizer's defaults by architecture
        fails.append((50, "the file does not state its architecture"))
    elif arch not in rule.architectures:
        fails.append((50, _arch_reason(arch, spec, all_archs)))

    types = set(facts.tensor_types)
    bad = types - rule.tensor_types
    if bad:
        fails.append((10 + len(bad), _types_reason(facts, spec, rule, bad, this)))

    if rule.header_ftypes is not None and facts.file_type is not None and facts.file_type not in rule.header_ftypes:
        name = facts.file_type_name or LEGACY_FTYPE_NAMES.get(facts.file_type, "unknown")
        fails.append((5, f"its loader checks the header ftype and refuses {facts.file_type} ({name}); "
                         f"it takes {_join([str(x) for x in sorted(rule.header_ftypes)], 'or')}"))

    if rule.tokenizers is not None and facts.tokenizer is not None and facts.tokenizer not in rule.tokenizers:
        fails.append((5, f"tokenizer model '{facts.tokenizer}' is unknown to llama.cpp {spec.era} "
                         f"(it knows {_join(list(rule.tokenizers), 'and')})"))

    quantized = set(facts.tensor_types) - {"F32", "F16"}
    if rule.quant_layouts is not None and quantized and facts.quant_layout not in rule.quant_layouts:
        fails.append((30, f"its quant blocks are the {facts.quant_layout} layout; llama.cpp {spec.era} reads "
                          f"{_join(list(rule.quant_layouts), 'and')} only"))

    names = facts.tensor_names
    missing = [t for t in rule.required_tensors if names and t not in names]
    if missing and not facts.vocab_only:
        fails.append((15, f"llama.cpp {spec.era} requires tensor {_join(missing, 'and')}, which this file "
                          f"lacks (e.g. output tied to the token embedding, supported from late 2023)"))

    if rule.moe is False and int(facts.hparams.get("expert_count") or 0) > 0 and not facts.split_experts:
        fails.append((20, f"a mixture-of-experts model ({facts.hparams['expert_count']} experts); llama.cpp "
                          f"{spec.era} predates MoE support (b1629, Dec 2023)"))

    refused = dict(rule.anomalies)
    for a in facts.anomalies:
        if a.kind in refused:
            fails.append((3, f"{a.detail}: llama.cpp {spec.era} {refused[a.kind]}"))

    if rule.split_experts is False and facts.split_experts:
        if spec.era < "2023-12":
            msg = ("the file stores one tensor per MoE expert (blk.N.ffn_gate.E.weight); llama.cpp "
                   f"{spec.era} predates MoE support (b1629, Dec 2023)")
        else:
            msg = ("legacy split-expert MoE tensors (blk.N.ffn_gate.E.weight) were merged into ffn_*_exps at "
                   "b2587 and their compatibility path was removed at b3990 (llama.cpp PR 10026, Oct 2024)")
        fails.append((20, msg))
    return fails


def _format_reason(facts: FileFacts, spec: BackendSpec) -> str:
    fmt, ver = facts.format, _file_version(facts)
    this = format_label(fmt, facts.format_version)
    reads = _formats_label(f for r in spec.accepts for f in r.formats)
    spec_is_gguf = all(f == "gguf" for r in spec.accepts for f, _ in r.formats)
    history = FORMAT_HISTORY.get((fmt, ver))
    if fmt == "gguf" and not any(f == "gguf" for r in spec.accepts for f, _ in r.formats):
        return f"llama.cpp {spec.era} predates GGUF (Aug 2023, b1012); it reads {reads}"
    if fmt == "gguf" and ver == 1:
        return f"{history}; llama.cpp {spec.era} reads {reads}"
    if fmt == "gguf" and ver > 3:
        return f"GGUF v{ver} is newer than any llama.cpp writes (v3 is the latest); llama.cpp {spec.era} reads {reads}"
    if fmt in LEGACY_CONTAINERS and spec_is_gguf:
        return (f"llama.cpp {spec.era} reads {reads} only: ggml-era files ({this}) stopped loading at b1012 "
                "(Aug 2023)")
    if fmt == "gguf":
        return f"llama.cpp {spec.era} predates GGUF (Aug 2023, b1012); it reads {reads}"
    if fmt == "ggjt" and ver > 3:
        return f"no llama.cpp wrote {this} (ggjt v3 was the last); llama.cpp {spec.era} reads {reads}"
    tail = f" ({history})" if history else ""
    return f"llama.cpp {spec.era} reads {reads}; this file is {this}{tail}"


def _arch_reason(arch: str, spec: BackendSpec, all_archs: frozenset[str]) -> str:
    if arch in ARCH_HISTORY and arch not in all_archs:
        return ARCH_HISTORY[arch]
    if arch in ARCH_HISTORY:
        return f"{ARCH_HISTORY[arch]}; llama.cpp {spec.era} does not run it"
    if arch not in all_archs:
        return f"architecture '{arch}' is unknown to every pinned llama.cpp, including llama.cpp {spec.era}"
    return f"architecture '{arch}' is not supported by llama.cpp {spec.era}"


def _types_reason(facts: FileFacts, spec: BackendSpec, rule: AcceptRule, bad: set[str], this: str) -> str:
    # Removed and unknown types explain themselves.
    removed = [t for t in sorted(bad) if t in TYPE_REMOVED]
    unknown = sorted(t for t in bad if t not in TYPE_IDS)
    if removed and facts.format == "gguf" and all(not _spec_knows_type(spec, t) for t in removed):
        return "; ".join(TYPE_REMOVED[t] for t in removed)
    if unknown and len(unknown) == len(bad):
        ids = [type_id(t) for t in unknown]
        shown = _join([type_label(t) for t in unknown], "and")
        newest = f"newest known id {NEWEST_TYPE_ID} {TYPE_NAMES[NEWEST_TYPE_ID]}"
        if ids and all(i is not None and i > NEWEST_TYPE_ID for i in ids):
            return f"tensor type {shown} is newer than every pinned llama.cpp ({newest})"
        return f"tensor type {shown} is unknown to every pinned llama.cpp ({newest})"
    accepts = _types_label(rule.tensor_types)
    bad_label = _types_label(bad)
    group = _layout_group(facts)
    if group:
        # legacy container: explain by the quant-layout history of the file's era
        causes = [(_LAYOUT_CHANGE.get((group, t)) or TYPE_REMOVED.get(t)) for t in sorted(bad)]
        why = [w for w in dict.fromkeys(causes) if w]
        fmts = _formats_label(rule.formats)
        msg = f"llama.cpp {spec.era} reads {fmts} only with {accepts} tensors; this file is {this} with {bad_label}"
        if why:
            msg += " tensors, " + "; ".join(why)
        else:
            msg += " tensors"
        return msg
    later = [f"{t} arrived at llama.cpp {TYPE_ADDED[t]}" for t in sorted(bad)
             if t in TYPE_ADDED and t not in TYPE_REMOVED]
    rem = [TYPE_REMOVED[t] for t in sorted(bad) if t in TYPE_REMOVED]
    plural = len(bad) > 1
    msg = (f"tensor type{'s' if plural else ''} {bad_label} {'are' if plural else 'is'} unknown to "
           f"llama.cpp {spec.era}")
    extra = later + rem
    return msg + (" (" + "; ".join(extra) + ")" if extra else "")


def all_architectures(specs: dict[str, BackendSpec] | None = None) -> frozenset[str]:
    """Every architecture some backend of the manifest runs."""
    specs = specs if specs is not None else load_manifest()
    return frozenset(a for s in specs.values() for r in s.accepts for a in r.architectures)


# --------------------------------------------------------------------------------------------------

def global_refusal(facts: FileFacts) -> list[str]:
    """Reasons that refuse a file in every backend, whatever the manifest says."""
    out: list[str] = []
    kind = facts.kind
    desc = facts.description or format_label(facts.format, facts.format_version)
    if kind == "not-a-model":
        out.append(f"not a model file: {desc}")
    elif kind == "lora":
        out.append("a LoRA adapter, not a model: it is applied on top of its base model")
    elif kind == "unsupported-ggml":
        out.append(f"a ggml file that no llama.cpp runs: {desc}")
    if facts.endianness and facts.endianness != "little":
        out.append(f"file is {facts.endianness}-endian; every backend reads little-endian files")
    if facts.truncated:
        out.append(truncation_reason(facts))
    return out


def truncation_reason(facts: FileFacts) -> str:
    expected = None
    if facts.data_offset is not None and facts.data_bytes_expected is not None:
        expected = facts.data_offset + facts.data_bytes_expected
    if expected is not None:
        return f"file is truncated: expected {expected} bytes, have {facts.size}"
    return f"file is truncated (have {facts.size} bytes)"


def verdict_for(facts: FileFacts, spec: BackendSpec, all_archs: frozenset[str] | None = None) -> Verdict:
    glob = global_refusal(facts)
    if glob:
        return Verdict(spec.name, False, glob, None, spec.priority)
    if all_archs is None:
        all_archs = frozenset(a for r in spec.accepts for a in r.architectures)
    best: tuple[int, list[str], AcceptRule | None] | None = None
    for rule in spec.accepts:
        fails = _check_rule(facts, spec, rule, all_archs)
        if not fails:
            # the era reads this kind of file: now what the header says against what the tensors are
            bad = validate.problems(facts, spec.name)
            if bad:
                return Verdict(spec.name, False, bad, None, spec.priority)
            return Verdict(spec.name, True, [], rule, spec.priority)
        score = sum(w for w, _ in fails)
        if best is None or score < best[0]:
            best = (score, [m for _, m in fails], rule)
    if best is None:
        return Verdict(spec.name, False, ["the manifest lists no accept rule for this backend"], None, spec.priority)
    return Verdict(spec.name, False, best[1], None, spec.priority)


def verdicts(facts: FileFacts, specs: dict[str, BackendSpec] | None = None) -> list[Verdict]:
    """One verdict per backend, in manifest order."""
    specs = specs if specs is not None else load_manifest()
    archs = all_architectures(specs)
    return [verdict_for(facts, s, archs) for s in specs.values()]


def choose(facts: FileFacts, specs: dict[str, BackendSpec] | None = None, *,
           prefer: Iterable[str] | None = None) -> tuple[Verdict | None, list[Verdict]]:
    """The best verdict (highest priority among loadable ones) and every verdict.

    ``prefer``: backend names to favour (e.g. those built on this machine); the highest-priority
    loadable backend among them wins, and only when none of them loads does the rest count.
    """
    all_v = verdicts(facts, specs)
    ok = sorted((v for v in all_v if v.loadable), key=lambda v: -v.priority)
    if not ok:
        return None, all_v
    if prefer is not None:
        pref = set(prefer)
        for v in ok:
            if v.backend in pref:
                return v, all_v
    return ok[0], all_v


def upgrade_suggestion(facts: FileFacts, all_v: list[Verdict], *,
                       specs: dict[str, BackendSpec] | None = None) -> str | None:
    """For a ggml/ggmf/ggjt LLaMA file that only pre-GGUF backends load, or a file of GPT4All's 2023 zoo:
    the command that upgrades it to GGUF for the newest backend (gpt4all-convert, with ``--tokenizer``
    for Falcon and StarCoder); None for every other file.  The probe shows it
    for loadable files (:func:`suggest` stays None for those)."""
    import shlex
    from pathlib import PurePath

    if facts.architecture in ZOO_GGUF_HINT and facts.kind == "model" and not facts.truncated:
        from ..formats.zoo import HF_TOKENIZER_REPOS

        arch = str(facts.architecture)
        zsrc = PurePath(str(facts.path))
        cmd = f"gpt4all-convert {shlex.quote(str(zsrc))} -o {shlex.quote(str(zsrc.with_suffix('.gguf')))}"
        if arch in HF_TOKENIZER_REPOS:
            cmd += (f" --tokenizer PATH/tokenizer.json (the original model's, e.g. from {HF_TOKENIZER_REPOS[arch]}: "
                    "the file carries gpt4all's token list but no BPE merges)")
        return f"only our 2023 model code reads this file; {ZOO_GGUF_HINT[arch]} (gguf-2026-10): upgrade it with: {cmd}"
    if (facts.format not in LEGACY_CONTAINERS or facts.architecture != "llama" or facts.kind != "model"
            or facts.truncated or facts.vocab_only):
        return None
    specs = specs if specs is not None else load_manifest()
    ok = [v for v in all_v if v.loadable]
    if not ok or any(f == "gguf" for v in ok if v.backend in specs
                     for r in specs[v.backend].accepts for f, _ in r.formats):
        return None
    src = PurePath(str(facts.path))
    out = src.with_suffix(".gguf") if src.suffix.lower() != ".gguf" else src.with_name(src.name + ".gguf")
    return (f"only llama.cpp of 2023 reads this file; upgrade it to GGUF with: "
            f"gpt4all-convert {shlex.quote(str(src))} -o {shlex.quote(str(out))}")


def suggest(facts: FileFacts, all_v: list[Verdict], *, built: Iterable[str] | None = None,
            specs: dict[str, BackendSpec] | None = None) -> str | None:
    """What would make this file usable, or None when it loads with what is built.

    ``built``: names of the backends built here (None: do not judge what is built).
    """
    kind = facts.kind
    if kind == "not-a-model":
        hint = _NON_MODEL_HINTS.get(facts.format)
        return f"this is {hint}" if hint else f"this is {facts.description or facts.format}, not a llama.cpp model"
    if kind == "lora":
        return "this is a LoRA adapter: load its base model and apply the adapter to it"
    if kind == "unsupported-ggml" and facts.architecture in ZOO_GGUF_HINT:
        return (f"this is {facts.description}; {ZOO_GGUF_HINT[str(facts.architecture)]}: convert the original "
                "Hugging Face weights with gpt4all-convert HF_FOLDER -o model.gguf")
    if kind == "unsupported-ggml":
        return f"this is {facts.description or 'a ggml file of another project'}; no llama.cpp runs it"
    if facts.endianness and facts.endianness != "little":
        return "convert it to little-endian: gguf-convert-endian FILE little (pip install gguf)"
    if facts.truncated:
        return "the file is incomplete: download it again (" + truncation_reason(facts).split(": ", 1)[-1] + ")"
    ok = sorted((v for v in all_v if v.loadable), key=lambda v: -v.priority)
    if ok:
        built_set = set(built) if built is not None else None
        if built_set is not None and not any(v.backend in built_set for v in ok):
            return "build it with: " + build_command(ok[0].backend)
        return None
    # Nothing declared loads it: say what would.
    types = set(facts.tensor_types)
    arch = facts.architecture
    fmt, ver = facts.format, _file_version(facts)
    if any(t in TYPE_REMOVED for t in types) and fmt == "gguf":
        return ("requantize it to Q4_0 (llama-quantize --allow-requantize IN OUT Q4_0); current llama.cpp repacks "
                "Q4_0 for ARM at run time; or use llama.cpp b4281 or older (llama-cpp-python 0.3.2)")
    if any(t not in TYPE_IDS for t in types):
        return "the file uses a tensor type no pinned llama.cpp knows: a newer backend is needed"
    if facts.split_experts:
        return ("re-convert the original weights with a current convert_hf_to_gguf.py (merged expert tensors), "
                "or use llama.cpp b3989 or older (llama-cpp-python 0.3.1)")
    if fmt == "gguf" and ver > 3:
        return "this GGUF version is newer than every llama.cpp: check the file's origin"
    if fmt == "gguf" and ver == 1:
        return ("rewrite it as GGUF v3 (e.g. gguf-new-metadata IN OUT, from pip package gguf) or re-convert "
                "from the original weights")
    if arch == "gptj" and fmt == "gguf":
        return ("no llama.cpp runs GPT-J GGUF files; the GPT4All-era GPT-J ggml file (if you still have it) "
                "loads on our ggml-gpt4all-2023-05 backend")
    if arch in ("gptj", "mpt") and facts.quant_layout not in (None, "qnt0"):
        return (f"this {arch} file was quantized after May 2023 ({facts.quant_layout} blocks); our GPT-J/MPT "
                "backend reads the GPT4All-era (qnt0) layout: use the F16/F32 original or a GGUF conversion")
    if arch and arch not in all_architectures(specs):
        return f"architecture '{arch}' needs a llama.cpp newer than the newest pinned backend"
    if arch == "persimmon":
        return "persimmon needs llama.cpp b2951 or older (e.g. the gguf-2023-11 backend with a supported tokenizer)"
    if arch in ZOO_GGUF_HINT:
        return (f"{ZOO_GGUF_HINT[arch]}: convert the original Hugging Face weights with gpt4all-convert HF_FOLDER "
                "-o model.gguf")
    if fmt in LEGACY_CONTAINERS:
        return ("convert it to GGUF with llama.cpp's convert_llama_ggml_to_gguf.py (from a ggjt v3 file), or "
                "re-convert from the original weights")
    refusing = [v for v in all_v if v.reasons]
    if refusing:
        top = max(refusing, key=lambda v: v.priority)
        return f"no pinned backend loads it; closest: {top.backend}: {top.reasons[0]}"
    return None
