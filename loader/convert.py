"""gpt4all-convert: Hugging Face model folders to GGUF (GPT-J: GPT4All ggml), ggml-era LLaMA files upgraded to GGUF.

Two sources, one command (``gpt4all-convert SRC -o OUT.gguf [--outtype f16]``):

* **A Hugging Face GPT-J, LLaMA or MPT folder stored as safetensors** is converted without torch by
  :mod:`gpt4all_loader.convert_hf` (GPT-J to the GPT4All-era ``ggml`` file, LLaMA to GGUF, MPT to GGUF
  or GPT4All's ``ggmm``).
* **Any other Hugging Face model folder** (``config.json`` plus ``*.safetensors`` or ``pytorch_model*.bin``) is
  converted by the ``convert_hf_to_gguf.py`` that ships inside the pinned newest sdist
  (llama-cpp-python 0.3.36, the ``gguf-2026-10`` backend), together with its ``conversion`` package and
  its own ``gguf-py``.  The sdist is fetched and hash-checked by :func:`gpt4all_loader.sdist.fetch`
  like every other build input, and only those members are extracted into the cache.  The script runs
  in a child process and needs torch, numpy, transformers, sentencepiece, pyyaml and tqdm at run time
  (not dependencies of this package: ``pip install torch numpy transformers sentencepiece pyyaml
  tqdm``).  A quantized ``--outtype`` is then made by the newest backend's own quantizer.

* **A ggml / ggmf / ggjt v1-v3 LLaMA file** is read by our reader; every tensor is dequantized by
  the backend of *that file's era* through the shim (``g4a_dequantize`` knows the era's block layout),
  F32 and F16 tensors pass through unchanged, and a GGUF v3 file is written here with the LLaMA
  hyperparameters and the vocabulary mapped to GGUF conventions (byte tokens ``<0xXX>``, control
  tokens, spaces as U+2581).  f32/f16 outputs are written directly (F32 tensors become F16 through
  the newest backend's quantizer), every other ``--outtype`` through the newest backend's quantizer.

Why not upstream's ``convert_llama_ggml_to_gguf.py`` (same sdist)?  It parses all three containers,
but it copies tensor blocks verbatim, so its ``validate_conversion`` refuses every quantized file older
than ggjt v2 ("Quantizations changed in GGJTv2") and the Q4_0/Q4_1/Q8_0 files of ggjt v2 ("Q4 and Q8
quantizations changed in GGJTv3"): the bulk of the spring-2023 downloads (ggml/ggmf/ggjt v1 Q4_0,
Q4_1, Q4_2, Q4_3, Q5_x, Q8_0, and ggjt v2 Q4/Q8) cannot be converted by it.  Dequantizing with each
era's own code removes that limit, and the dequantization is exact (the upgraded F32 file holds the
very values the old engine multiplied with).

Guarantees: SRC is validated before anything is written (a legacy header against its tensors, a
folder's config against its shards); SRC is never written; OUT is written to a temporary file in its
own directory and renamed into place only when complete (a failure leaves nothing behind: quantizers
run in a child process, so even an engine abort cannot strand a temporary file); free space is
checked before writing and a full disk is reported; OUT is probed at the end and the verdict printed.

Exit status: 0 success, 1 conversion failure (unreadable, malformed or unsupported SRC, missing
converter packages, write errors), 2 usage error (bad arguments, SRC missing, SRC and OUT the same
file, OUT exists without ``--force``, OUT's directory missing).
"""
from __future__ import annotations

import argparse
import errno
import glob
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import BackendError, BuildError, FormatError, UnsupportedModelError
from .gguf import GgufHeader, TokenType, ValueType

#: the backend whose sdist ships the HF converter and whose quantizer makes quantized outputs
NEWEST = "gguf-2026-10"
#: legacy LLaMA files do not store their training context; the 2023 LLaMA models used 2048
DEFAULT_CONTEXT = 2048
#: RMS-norm epsilon of LLaMA-1 (and of the 2023 loaders), and of LLaMA-2 GQA models
RMS_EPS, RMS_EPS_GQA = 1e-6, 1e-5
#: packages convert_hf_to_gguf.py imports (import name -> pip name)
HF_PACKAGES = {"torch": "torch", "numpy": "numpy", "transformers": "transformers",
               "sentencepiece": "sentencepiece", "yaml": "pyyaml", "tqdm": "tqdm"}
#: members of the sdist's vendored llama.cpp that the HF converter needs
_HF_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
_LEGACY = ("ggml", "ggmf", "ggjt")
_ALIGN = 32
_CHUNK = 1 << 22  # elements dequantized per native call (16 MiB of float32)

_BYTE_TEXT = re.compile(rb"<0x[0-9A-Fa-f]{2}>")


class ConvertError(Exception):
    """A conversion that cannot be done; the message says why and what would help."""

    exit_code = 1


class UsageError(ConvertError):
    exit_code = 2


# --------------------------------------------------------------------------------------------------
# Output types

def _outtypes() -> dict[str, int]:
    """--outtype name (lower case) -> llama_ftype number, for the types the newest quantizer makes."""
    from .ggml_types import GGUF_FTYPE_NAMES

    dropped = {4, 5, 6, 33, 34, 35, 1024}  # Q4_1_SOME_F16, Q4_2, Q4_3, ARM repacks, GUESSED
    return {n.removeprefix("MOSTLY_").removeprefix("ALL_").lower(): k
            for k, n in GGUF_FTYPE_NAMES.items() if k not in dropped}


def outtype_number(outtype: str) -> int:
    table = _outtypes()
    key = outtype.lower()
    if key not in table:
        raise UsageError(f"unknown --outtype {outtype!r}; choose one of: {', '.join(table)}")
    return table[key]


# --------------------------------------------------------------------------------------------------
# Small helpers

@dataclass
class Options:
    outtype: str = "f16"
    context_length: int = DEFAULT_CONTEXT
    rms_norm_eps: float | None = None
    rope_freq_base: float | None = None
    threads: int = 0
    force: bool = False
    quiet: bool = False
    format: str | None = None  # "gguf" or "ggml" (Hugging Face GPT-J/MPT folders); None: from OUT's suffix


def _say(opts: Options, msg: str) -> None:
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _check_space(directory: Path, need: int, what: str) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError as e:
        raise ConvertError(f"cannot check free space in {directory}: {e.strerror or e}") from None
    margin = 16 << 20
    if free < need + margin:
        raise ConvertError(f"not enough free space in {directory} for {what}: about {_human(need)} needed, "
                           f"{_human(free)} free; free some space or write OUT elsewhere")


def _write_error(e: OSError, out: Path) -> ConvertError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConvertError(f"the disk holding {out.parent} is full (or over quota) while writing {out.name}; "
                            f"nothing was left behind: free some space or write OUT elsewhere")
    return ConvertError(f"cannot write {out}: {e.strerror or e}")


class _Temps:
    """Temporary files beside OUT: all removed unless handed over by :meth:`keep`."""

    def __init__(self, out: Path):
        self.out = out
        self.paths: list[Path] = []

    def new(self, tag: str) -> Path:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=f".{tag}.part", dir=self.out.parent)
        except OSError as e:
            raise _write_error(e, self.out) from None
        os.close(fd)
        p = Path(name)
        self.paths.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.paths:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass
        self.paths.clear()

    def commit(self, tmp: Path) -> None:
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give OUT the usual mode
            os.replace(tmp, self.out)
        except OSError as e:
            raise _write_error(e, self.out) from None
        self.paths.remove(tmp)


def _check_paths(src: Path, out: Path, opts: Options) -> None:
    if not os.path.lexists(src):
        raise UsageError(f"{src}: no such file or directory")
    parent = out.parent
    if not parent.exists():
        raise UsageError(f"cannot write {out}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"cannot write {out}: {parent} is not a directory")
    if out.is_dir():
        raise UsageError(f"cannot write {out}: it is a directory")
    same = os.path.realpath(src) == os.path.realpath(out)
    if not same and out.exists():
        try:
            same = os.path.samefile(src, out)
        except OSError:
            same = False
    if same:
        raise UsageError(f"OUT ({out}) is SRC itself; the source is never overwritten: choose another OUT")
    if out.exists() and not opts.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if not os.access(parent, os.W_OK):
        raise ConvertError(f"cannot write {out}: no write permission in {parent}")


# --------------------------------------------------------------------------------------------------
# Legacy LLaMA -> GGUF

def legacy_vocab(tokens: list[bytes], scores: list[float] | None) -> tuple[list[bytes], list[float], list[int]]:
    """The vocabulary of a ggml/ggmf/ggjt file as GGUF stores a SentencePiece vocabulary.

    ids 0-2 become ``<unk>``, ``<s>``, ``</s>``; the byte tokens at ids 3..258 (the byte fallback of
    the 2023 tokenizers, id = byte + 3), whether stored as the raw byte or as ``<0xXX>`` text, become
    ``<0xXX>`` byte tokens; other empty tokens are control tokens; spaces are written as U+2581 as
    SentencePiece does.  Files without scores (unversioned ggml) get score 0 for every token, as the
    2023 loaders used them.  With the tokenizer keys that :func:`convert_legacy` writes
    (``add_space_prefix``, ``add_bos_token``), the GGUF eras then tokenize every text exactly as the
    2023 eras do through the shim.
    """
    out_t: list[bytes] = []
    out_ty: list[int] = []
    for i, t in enumerate(tokens):
        t = bytes(t)
        if i == 0:
            out_t.append(b"<unk>")
            out_ty.append(TokenType.UNKNOWN)
        elif i in (1, 2):
            out_t.append(b"<s>" if i == 1 else b"</s>")
            out_ty.append(TokenType.CONTROL)
        elif 3 <= i <= 258 and (len(t) == 1 or _BYTE_TEXT.fullmatch(t)):
            value = t[0] if len(t) == 1 else int(t[3:5], 16)
            out_t.append(f"<0x{value:02X}>".encode())
            out_ty.append(TokenType.BYTE)
        elif not t:
            out_t.append(t)
            out_ty.append(TokenType.CONTROL)
        else:
            out_t.append(t.replace(b" ", "\u2581".encode()))
            out_ty.append(TokenType.NORMAL)
    sc = [float(s) for s in scores] if scores is not None else [0.0] * len(tokens)
    return out_t, sc, out_ty


def _era_backend(facts) -> tuple[str, object]:
    """The backend (and its opened library) that reads this file: it dequantizes the file's types.
    (The shim fills the 2023 ggml's fp16 table before dequantizing: no warm-up load is needed.)"""
    from . import native
    from .plan import plan

    try:
        name, choice = plan(facts, device="cpu").require()
    except UnsupportedModelError as e:
        raise ConvertError(f"{e}; so none can dequantize it") from None
    except BackendError as e:
        raise ConvertError(f"dequantizing it needs a backend that cannot run here: {e}") from None
    return name, native.open_backend(name, choice.variant)


def _read_legacy(src: Path):
    from .reader import read_facts

    try:
        facts = read_facts(src, with_vocab=True)
    except OSError as e:
        raise ConvertError(f"cannot read {src}: {e.strerror or e}") from None
    except FormatError as e:
        raise ConvertError(f"{e}") from None
    except ValueError as e:
        raise ConvertError(f"{src}: malformed file ({e})") from None
    return facts


def _refuse_non_legacy(facts, src: Path) -> None:
    fmt = facts.format
    if fmt == "gguf":
        raise ConvertError(f"{src} is already GGUF ({facts.description}); nothing to upgrade "
                           f"(to requantize a GGUF file use llama.cpp's quantizer)")
    if fmt == "safetensors" or facts.kind == "not-a-model" and fmt in ("pytorch-zip", "pickle"):
        raise ConvertError(f"{src} is {facts.description}: pass the Hugging Face model folder "
                           f"(the directory with config.json) instead of one weights file")
    if facts.kind == "not-a-model":
        raise ConvertError(f"{src} is {facts.description}")
    if fmt not in _LEGACY or facts.architecture != "llama" or facts.kind not in ("model", "vocab-only"):
        raise ConvertError(f"{src}: {facts.description}: only ggml/ggmf/ggjt LLaMA files can be upgraded "
                           f"(architecture {facts.architecture or 'unknown'} is not supported by the converter)")
    if facts.vocab_only:
        raise ConvertError(f"{src}: {facts.description}: a vocabulary-only file has no weights to convert")
    if facts.truncated:
        note = next((n for n in facts.notes if "ends" in n), "the file is cut short")
        raise ConvertError(f"{src}: {facts.description}: {note}; download it again")


def legacy_llama_shapes(hp: dict) -> dict[str, list[int]]:
    """Every tensor a ggml-era LLaMA file with these hyperparameters holds, with its ne (ne[0] first)."""
    e, v, ff = int(hp["n_embd"]), int(hp["n_vocab"]), int(hp["n_ff"])
    kv = e * int(hp["n_head_kv"]) // int(hp["n_head"])
    s = {"tok_embeddings.weight": [e, v], "norm.weight": [e], "output.weight": [e, v]}
    per_layer = {"attention.wq.weight": [e, e], "attention.wk.weight": [e, kv], "attention.wv.weight": [e, kv],
                 "attention.wo.weight": [e, e], "attention_norm.weight": [e], "feed_forward.w1.weight": [e, ff],
                 "feed_forward.w2.weight": [ff, e], "feed_forward.w3.weight": [e, ff], "ffn_norm.weight": [e]}
    for i in range(int(hp["n_layer"])):
        s.update({f"layers.{i}.{k}": ne for k, ne in per_layer.items()})
    return s


def validate_legacy_llama(src: Path, hp: dict, records: list) -> None:
    """Hyperparameters against the tensors present, before any native code or any write.

    The engines trust the header: ``n_layer`` 1000 over 32 stored layers made the quantizer abort and
    produced F16 files that abort on load.  Every tensor the header implies must be present with the
    shape it implies, and nothing else."""
    def bad(why: str) -> ConvertError:
        return ConvertError(f"{src}: the header does not match the tensors ({why}); the file is damaged or was "
                            f"written by a broken tool, so it cannot be converted")

    n_embd, n_head, n_layer, n_vocab = (int(hp.get(k) or 0) for k in ("n_embd", "n_head", "n_layer", "n_vocab"))
    if min(n_embd, n_head, n_layer, n_vocab) <= 0:
        raise bad(f"n_vocab {n_vocab}, n_embd {n_embd}, n_head {n_head}, n_layer {n_layer} must all be positive")
    if n_embd % n_head:
        raise bad(f"n_head {n_head} does not divide n_embd {n_embd}")
    n_rot = int(hp.get("n_rot") or 0)
    if n_rot != n_embd // n_head:
        raise bad(f"n_rot {n_rot} is not n_embd / n_head = {n_embd // n_head}")
    if "n_ff" not in hp:
        raise bad("no layers.0.feed_forward.w1.weight to tell the feed-forward width")
    present = {name: list(ne) for name, _, ne, _, _ in records}
    layers = {int(n.split(".")[1]) for n in present if n.startswith("layers.") and n.split(".")[1].isdigit()}
    if layers != set(range(n_layer)):
        raise bad(f"n_layer is {n_layer}, the file holds {len(layers)} layers")
    want = legacy_llama_shapes(hp)
    for name, ne in want.items():
        if name not in present:
            raise bad(f"tensor {name} is missing")
        if present[name] != ne:
            raise bad(f"tensor {name} has shape {present[name]}, the header implies {ne}")
    extra = sorted(set(present) - set(want))
    if extra:
        raise bad(f"unexpected tensor {extra[0]}")


def convert_legacy(src: Path, out: Path, opts: Options) -> Path:
    """Upgrade a ggml/ggmf/ggjt LLaMA file to a GGUF v3 file at ``out`` (atomically)."""
    from .ggml_types import TYPES
    from .native import ffi as _ffi
    from .reader_legacy import tensor_records
    from .writer import gguf_name

    ftype_out = outtype_number(opts.outtype)
    facts = _read_legacy(src)
    _refuse_non_legacy(facts, src)
    try:
        records = tensor_records(str(src), facts)
    except FormatError as e:
        raise ConvertError(str(e)) from None
    validate_legacy_llama(src, facts.hparams, records)
    layout = TYPES[facts.quant_layout]
    src_types = {layout[t].name for _, t, _, _, _ in records}
    era_name, era = (None, None)
    if src_types - {"F32"}:
        era_name, era = _era_backend(facts)

    hp = facts.hparams
    n_embd, n_head, n_layer = int(hp["n_embd"]), int(hp["n_head"]), int(hp["n_layer"])
    n_head_kv = int(hp.get("n_head_kv") or n_head)
    n_rot = int(hp.get("n_rot") or 0) or n_embd // n_head
    eps = opts.rms_norm_eps if opts.rms_norm_eps is not None else (RMS_EPS_GQA if n_head_kv < n_head else RMS_EPS)
    toks = (facts.kv or {}).get("tokenizer.ggml.tokens")
    if not toks:
        raise ConvertError(f"{src}: the vocabulary could not be read")
    tokens, scores, types = legacy_vocab(toks, (facts.kv or {}).get("tokenizer.ggml.scores"))

    # per tensor: 1-D always F32; 2-D F32 for f32 output, else kept F16 when stored F16, else F32
    plan = []  # (legacy name, gguf name, ne, src type id, src offset, src nbytes, out type id)
    for name, tid, ne, off, nbytes in records:
        try:
            gname = gguf_name(name)
        except (KeyError, ValueError):
            raise ConvertError(f"{src}: tensor {name!r} is not a LLaMA tensor the converter knows") from None
        tname = layout[tid].name
        if len(ne) == 1 or ftype_out == 0:
            otype = 0
        else:
            otype = 1 if tname == "F16" else 0
        plan.append((name, gname, list(ne), tid, off, nbytes, otype))

    any_f32_matrix = any(len(p[2]) > 1 and p[6] == 0 for p in plan)
    needs_quantizer = ftype_out not in (0, 1) or (ftype_out == 1 and any_f32_matrix)
    file_type = 1 if any(p[6] == 1 for p in plan) else 0

    meta = GgufHeader()
    meta.add("general.architecture", ValueType.STRING, "llama")
    meta.add("general.name", ValueType.STRING, src.stem)
    meta.add("general.description", ValueType.STRING, f"upgraded by gpt4all-convert from {facts.description}")
    meta.add("general.file_type", ValueType.UINT32, file_type)
    meta.add("llama.context_length", ValueType.UINT32, int(opts.context_length))
    meta.add("llama.embedding_length", ValueType.UINT32, n_embd)
    meta.add("llama.block_count", ValueType.UINT32, n_layer)
    meta.add("llama.feed_forward_length", ValueType.UINT32, int(hp["n_ff"]))
    meta.add("llama.rope.dimension_count", ValueType.UINT32, n_rot)
    meta.add("llama.attention.head_count", ValueType.UINT32, n_head)
    meta.add("llama.attention.head_count_kv", ValueType.UINT32, n_head_kv)
    meta.add("llama.attention.layer_norm_rms_epsilon", ValueType.FLOAT32, float(eps))
    if opts.rope_freq_base:
        meta.add("llama.rope.freq_base", ValueType.FLOAT32, float(opts.rope_freq_base))
    meta.add("tokenizer.ggml.model", ValueType.STRING, "llama")
    meta.add_array("tokenizer.ggml.tokens", ValueType.STRING, tokens)
    meta.add_array("tokenizer.ggml.scores", ValueType.FLOAT32, scores)
    meta.add_array("tokenizer.ggml.token_type", ValueType.INT32, types)
    meta.add("tokenizer.ggml.bos_token_id", ValueType.UINT32, 1)
    meta.add("tokenizer.ggml.eos_token_id", ValueType.UINT32, 2)
    meta.add("tokenizer.ggml.unknown_token_id", ValueType.UINT32, 0)
    # said explicitly, so that no engine default decides: the 2023 LLaMA tokenizer adds BOS and
    # SentencePiece's dummy prefix, and no EOS
    meta.add("tokenizer.ggml.add_bos_token", ValueType.BOOL, True)
    meta.add("tokenizer.ggml.add_eos_token", ValueType.BOOL, False)
    meta.add("tokenizer.ggml.add_space_prefix", ValueType.BOOL, True)

    def n_el(ne):
        n = 1
        for d in ne:
            n *= d
        return n

    infos = [(g, ne, ot, n_el(ne) * (4 if ot == 0 else 2)) for _, g, ne, _, _, _, ot in plan]
    for name, ne, ot, nbytes in infos:
        meta.add_tensor(name, ne, ot, nbytes)
    header, offsets = meta.encode(_ALIGN)
    total = len(header) + offsets[-1] + infos[-1][3] if infos else len(header)
    _check_space(out.parent, total * (2 if needs_quantizer else 1), f"{out.name} ({opts.outtype})")

    temps = _Temps(out)
    try:
        stage = temps.new("f32" if needs_quantizer else "gguf")
        _say(opts, f"gpt4all-convert: {src} ({facts.description}) -> {out}"
                   + (f"; dequantizing with {era_name}" if era_name and src_types - {"F32", "F16"} else ""))
        ffi = _ffi()
        buf = None
        try:
            with open(src, "rb") as fin, open(stage, "wb") as fo:
                fo.write(header)
                base = len(header)
                for i, ((name, gname, ne, tid, off, nbytes, otype), rel) in enumerate(zip(plan, offsets)):
                    t = layout[tid]
                    fo.write(b"\0" * (base + rel - fo.tell()))
                    _say(opts, f"[{i + 1:>4}/{len(plan)}] {gname:<28} {t.name:>5} -> {'F32' if otype == 0 else 'F16'} "
                               f"{'x'.join(map(str, ne))}")
                    if (t.name == "F32" and otype == 0) or (t.name == "F16" and otype == 1):
                        _copy(fin, fo, off, nbytes)
                        continue
                    # dequantize with the era's own code, whole blocks at a time
                    per = max(1, _CHUNK // t.block) * t.block
                    if buf is None:
                        buf = ffi.new("float[]", _CHUNK + 256)
                    n_total = n_el(ne)
                    fin.seek(off)
                    done = 0
                    while done < n_total:
                        n = min(per, n_total - done)
                        raw = fin.read(n // t.block * t.size)
                        if len(raw) != n // t.block * t.size:
                            raise ConvertError(f"{src}: the file became shorter while reading tensor {name}")
                        if era.lib.g4a_dequantize(tid, ffi.from_buffer(raw), buf, n) != 0:
                            raise ConvertError(f"{src}: {era_name} could not dequantize tensor {name} "
                                               f"({t.name}): {era.last_error()}")
                        fo.write(ffi.buffer(buf, 4 * n))
                        done += n
                fo.flush()
                os.fsync(fo.fileno())
        except OSError as e:
            if isinstance(e, (FileNotFoundError, PermissionError)) and not os.access(src, os.R_OK):
                raise ConvertError(f"cannot read {src}: {e.strerror or e}") from None
            raise _write_error(e, out) from None
        final = stage
        if needs_quantizer:
            final = quantize_in_child(stage, temps, opts)
        temps.commit(final)
    finally:
        temps.cleanup()
    return out


def _copy(fin, fo, off: int, nbytes: int) -> None:
    fin.seek(off)
    left = nbytes
    while left:
        chunk = fin.read(min(left, 1 << 24))
        if not chunk:
            raise ConvertError(f"{fin.name}: the file became shorter while reading")
        fo.write(chunk)
        left -= len(chunk)


#: the quantizer's child process: one line on stderr and exit 1 on a library error.  ``catalog``:
#: quantize() with the backend the catalog approves; ``carrier``: g4a_quantize of a backend directly, for
#: the ggjt carrier files of convert_hf.py that no catalog entry describes
_QUANTIZE_CHILD = """
import os, sys
from {pkg}.errors import BackendError
mode, src, dst, ftype, backend, threads = sys.argv[1:]
try:
    if mode == "catalog":
        from {pkg}.quantize import quantize
        quantize(src, dst, int(ftype), backend=backend, n_threads=int(threads))
    else:
        from {pkg} import native
        from {pkg}.variants import choose_variant
        be = native.open_backend(backend, choose_variant(backend, "cpu").variant)
        if be.lib.g4a_quantize(os.fsencode(src), os.fsencode(dst), int(ftype), int(threads)) != 0:
            raise BackendError(be.last_error())
except (BackendError, ValueError, OSError) as e:  # ValueError: FormatError, UnsupportedModelError
    print(e, file=sys.stderr)
    sys.exit(1)
"""


def quantize_in_child(stage: Path, temps: _Temps, opts: Options, backend: str = NEWEST,
                      mode: str = "catalog") -> Path:
    """Quantize ``stage`` to ``opts.outtype`` with ``backend`` in a child process; returns the new temp file.

    An engine that aborts (an assertion on a file it cannot handle) takes down only the child: the
    temporary files are registered in ``temps`` before it starts, so this process removes them (and
    any the quantizer itself left) and reports the failure instead of dying with them left behind."""
    dst = temps.new(opts.outtype.lower())
    _say(opts, f"quantizing to {opts.outtype.upper()} with {backend} ...")
    code = _QUANTIZE_CHILD.format(pkg=__package__)
    cmd = [sys.executable, "-c", code, mode, str(stage), str(dst), str(outtype_number(opts.outtype)), backend,
           str(opts.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    if proc.returncode != 0:
        for left in dst.parent.glob(glob.escape(dst.name) + ".*.part"):  # quantize()'s own temporary file
            left.unlink(missing_ok=True)
        err = proc.stderr or ""
        if "No space left on device" in err:
            raise _write_error(OSError(errno.ENOSPC, "No space left on device"), temps.out)
        lines = err.strip().splitlines()
        why = (f"the quantizer crashed (signal {-proc.returncode})" if proc.returncode < 0
               else lines[-1] if lines else f"the quantizer exited with status {proc.returncode}")
        raise ConvertError(f"quantizing to {opts.outtype} failed: {why}; nothing was left behind")
    return dst


# --------------------------------------------------------------------------------------------------
# Hugging Face folder -> GGUF

def missing_hf_packages() -> list[str]:
    """pip names of the packages convert_hf_to_gguf.py needs that are not importable here."""
    return [pip for mod, pip in HF_PACKAGES.items() if importlib.util.find_spec(mod) is None]


def converter_dir() -> Path:
    """The HF converter of the newest pinned sdist, extracted once into the cache (hash-checked sdist)."""
    from . import cache, sdist
    from .manifest import load_manifest

    spec = load_manifest()[NEWEST]
    root = cache.cache_root() / "convert"
    dest = root / f"{NEWEST}-{spec.sha256[:16]}"
    marker = dest / ".complete"
    try:
        tarball = sdist.fetch(spec.sdist, spec.sha256)
    except BuildError as e:
        raise ConvertError(f"cannot get the converter: {e}") from None
    if marker.is_file() and marker.read_text().strip() == spec.sha256:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            top = None
            for m in tf:
                parts = m.name.split("/")
                if top is None:
                    top = parts[0]
                prefix = f"{top}/vendor/llama.cpp/"
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if not any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in _HF_MEMBERS):
                    continue
                if ".." in rel.split("/") or rel.startswith("/"):
                    raise ConvertError(f"{tarball}: unsafe member name {m.name!r}")
                target = tmp / rel
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fsrc = tf.extractfile(m)
                    assert fsrc is not None
                    with fsrc, open(target, "wb") as fdst:
                        shutil.copyfileobj(fsrc, fdst)
        if not (tmp / "convert_hf_to_gguf.py").is_file() or not (tmp / "gguf-py" / "gguf").is_dir():
            raise ConvertError(f"{tarball}: convert_hf_to_gguf.py or gguf-py not found in the sdist")
        (tmp / ".complete").write_text(spec.sha256 + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (OSError, tarfile.TarError) as e:
        raise ConvertError(f"cannot extract the converter from {tarball}: {e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _hf_param_bytes(src: Path) -> int:
    """Bytes of the weights at 4 bytes per parameter (from safetensors headers, else file sizes x 2)."""
    total = 0
    for f in sorted(src.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                hdr = json.loads(fh.read(min(n, 100 << 20)))
            for k, v in hdr.items():
                if k != "__metadata__" and isinstance(v, dict):
                    c = 1
                    for d in v.get("shape", []):
                        c *= int(d)
                    total += 4 * c
        except (OSError, ValueError, struct.error):
            total += 2 * f.stat().st_size
    if not total:
        total = 2 * sum(f.stat().st_size for f in src.glob("pytorch_model*.bin"))
    return total


def convert_hf(src: Path, out: Path, opts: Options) -> Path:
    """Convert a Hugging Face model folder: GPT-J/LLaMA/MPT safetensors here (convert_hf.py), the rest with
    the pinned sdist's convert_hf_to_gguf.py."""
    from .convert_hf import route

    how, what = route(src)
    if how == "native":
        from .convert_hf import convert_folder

        return convert_folder(src, out, opts, what)
    if opts.format == "ggml":
        raise UsageError(f"--format ggml is offered for GPT-J and MPT folders only; {src}: {what}")
    weights = list(src.glob("*.safetensors")) + list(src.glob("pytorch_model*.bin")) + list(src.glob("consolidated*.pth"))
    if not weights:
        raise ConvertError(f"{src} has a config.json but no weights (*.safetensors or pytorch_model*.bin)")
    ftype_out = outtype_number(opts.outtype)
    missing = missing_hf_packages()
    if missing:
        raise ConvertError(f"{src}: {what}, so it goes to upstream's convert_hf_to_gguf.py, which needs "
                           "packages that are not installed: "
                           + ", ".join(missing) + "; install them with: pip install " + " ".join(missing)
                           + "  (or: pip install 'gpt4all-loader[convert]')")
    conv = converter_dir()
    direct = {0: "f32", 1: "f16", 32: "bf16"}
    hf_outtype = direct.get(ftype_out, "auto")
    params4 = _hf_param_bytes(src)
    need = params4 if ftype_out == 0 else params4 // 2
    if ftype_out not in direct:
        need += params4 // 2
    _check_space(out.parent, need, f"{out.name} ({opts.outtype})")
    temps = _Temps(out)
    try:
        stage = temps.new(hf_outtype)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(conv / "gguf-py")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.pop("NO_LOCAL_GGUF", None)
        cmd = [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(src), "--outfile", str(stage),
               "--outtype", hf_outtype]
        _say(opts, f"gpt4all-convert: {src} -> {out} with {NEWEST}'s convert_hf_to_gguf.py ({hf_outtype})")
        if opts.quiet:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace")
            log = proc.stdout or ""
        else:
            proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
            log = ""
        if proc.returncode != 0:
            tail = "\n".join(log.strip().splitlines()[-15:])
            if proc.returncode < 0 or proc.returncode == 137:
                why = "it was killed (out of memory?)"
            else:
                why = f"it exited with status {proc.returncode}"
            if "No space left on device" in log:
                why = "the disk is full"
            raise ConvertError(f"convert_hf_to_gguf.py could not convert {src}: {why}"
                               + (f"; its last messages:\n{tail}" if tail else "; see its messages above"))
        if not stage.stat().st_size:
            raise ConvertError(f"convert_hf_to_gguf.py wrote nothing for {src}")
        final = stage
        if ftype_out not in direct:
            final = quantize_in_child(stage, temps, opts)
        temps.commit(final)
    finally:
        temps.cleanup()
    return out


# --------------------------------------------------------------------------------------------------
# Entry points

def convert(src: str | os.PathLike, out: str | os.PathLike, *, outtype: str = "f16",
            context_length: int = DEFAULT_CONTEXT, rms_norm_eps: float | None = None,
            rope_freq_base: float | None = None, threads: int = 0, force: bool = False,
            quiet: bool = True, format: str | None = None) -> Path:
    """Convert ``src`` (HF folder or ggml-era LLaMA file) to ``out``; raises ConvertError."""
    if format not in (None, "gguf", "ggml"):
        raise UsageError(f"--format must be gguf or ggml (got {format!r})")
    opts = Options(outtype=outtype, context_length=context_length, rms_norm_eps=rms_norm_eps,
                   rope_freq_base=rope_freq_base, threads=threads, force=force, quiet=quiet, format=format)
    src_p, out_p = Path(os.fspath(src)), Path(os.fspath(out))
    outtype_number(outtype)
    if context_length <= 0:
        raise UsageError(f"--ctx must be positive (got {context_length})")
    _check_paths(src_p, out_p, opts)
    if src_p.is_dir():
        if not os.access(src_p, os.R_OK | os.X_OK):
            raise ConvertError(f"cannot read folder {src_p}: permission denied")
        return convert_hf(src_p, out_p, opts)
    if format == "ggml":
        raise UsageError("--format ggml is offered for Hugging Face GPT-J and MPT folders only; legacy files "
                         "are upgraded to GGUF")
    try:
        with open(src_p, "rb"):
            pass
    except OSError as e:
        raise ConvertError(f"cannot read {src_p}: {e.strerror or e}") from None
    return convert_legacy(src_p, out_p, opts)


def _verdict(out: Path) -> tuple[bool, str]:
    from .probe import probe

    rep = probe(out, device="cpu")
    if rep.error:
        return False, f"{out}: probe failed: {rep.error}"
    if rep.loadable:
        where = f"{rep.backend}/{rep.variant}" if rep.variant else f"{rep.backend} (not built here)"
        return True, f"{out}: {rep.description}: LOADABLE by {where}"
    reasons = rep.reasons.get(NEWEST) or next((r for r in rep.reasons.values() if r), [])
    return False, f"{out}: {rep.description}: NOT LOADABLE" + (f" ({'; '.join(reasons)})" if reasons else "")


def _parser() -> argparse.ArgumentParser:
    from .convert_hf import ROUTES

    p = argparse.ArgumentParser(
        prog="gpt4all-convert",
        description="Convert a Hugging Face model folder (GPT-J, LLaMA, MPT, ...), or upgrade a ggml/ggmf/ggjt "
                    "LLaMA file to GGUF for the newest pinned llama.cpp.  " + ROUTES,
        epilog="exit status: 0 converted, 1 conversion failed, 2 usage error")
    p.add_argument("src", metavar="SRC", help="Hugging Face model folder (config.json + weights), "
                                              "or a ggml/ggmf/ggjt LLaMA file")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="the file to write (.gguf: GGUF; .bin: GPT4All ggml for GPT-J/MPT folders)")
    p.add_argument("--format", choices=("gguf", "ggml"), default=None,
                   help="container of OUT for Hugging Face GPT-J/MPT folders (default: from OUT's suffix; "
                        "GPT-J: ggml, MPT: gguf)")
    p.add_argument("--outtype", default="f16", metavar="TYPE",
                   help="f32, f16 (default), bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k, ... (GGUF: made by the "
                        "newest backend's quantizer; GPT-J/MPT ggml: q4_0, q4_1, q5_0, q5_1, q8_0, made by the "
                        "ggml of August 2023)")
    p.add_argument("--ctx", type=int, default=DEFAULT_CONTEXT, metavar="N",
                   help=f"legacy files: training context length to record (they do not store it; "
                        f"default {DEFAULT_CONTEXT})")
    p.add_argument("--rms-norm-eps", type=float, default=None, metavar="EPS",
                   help=f"legacy files: RMS-norm epsilon (default {RMS_EPS}, {RMS_EPS_GQA} for GQA models)")
    p.add_argument("--rope-freq-base", type=float, default=None, metavar="BASE",
                   help="legacy files: RoPE frequency base to record (e.g. 1000000 for Code Llama)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="quantizer threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never SRC)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = "gpt4all-convert"
    try:
        convert(args.src, args.output, outtype=args.outtype, context_length=args.ctx,
                rms_norm_eps=args.rms_norm_eps, rope_freq_base=args.rope_freq_base, threads=args.threads,
                force=args.force, quiet=args.quiet, format=args.format)
    except ConvertError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug must still end with a message, not a traceback
        print(f"{prog}: error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    ok, line = _verdict(Path(args.output))
    print(line)
    if not ok:
        print(f"{prog}: error: the written file does not load on {NEWEST}; it was kept for inspection",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
