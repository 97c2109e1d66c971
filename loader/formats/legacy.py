"""Pre-GGUF containers: ggml / ggmf / ggjt LLaMA, ggla LoRA, GPT-J and MPT ggml files, and the
ggml-family files of other projects (whisper.cpp, rwkv.cpp, ggml examples) that we name but do not run.

LLaMA (llama.cpp, Mar-Aug 2023): u32 magic, u32 version (ggmf/ggjt only), 7 x i32 hparams
``n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype``, then ``n_vocab`` x (u32 length, bytes,
f32 score for ggmf/ggjt), then tensor records until the end of the file: i32 n_dims, i32 name length,
i32 ggml type, n_dims x i32 ne, name, (ggjt: padding to a multiple of 32 from the file start), data.

GPT-J (ggml examples / GPT4All): magic "ggml", 7 x i32 ``n_vocab, n_ctx, n_embd, n_head, n_layer,
n_rot, ftype``, i32 vocab count (= n_vocab), n_vocab x (u32 length, bytes), tensor records without
alignment.  MPT (ggml examples): magic "ggml", i32 ``d_model, max_seq_len, n_heads, n_layers,
n_vocab``, f32 ``alibi_bias_max, clip_qkv``, i32 ftype, n_vocab x (u32 length, bytes), tensor
records.  MPT (GPT4All, magic "ggmm"): u32 ``n_vocab, n_ctx, n_layer, n_head, n_embd``, f32
``alibi_bias_max, clip_qkv``, u32 ftype, u32 vocab count, n_vocab x (u32 length | bit 31 for special
tokens, bytes), tensor records.  ggml-examples ftypes >= 1000 are ``1000 * quant version + ftype``.

GPT4All's Falcon (inside "ggjt"), StarCoder (inside unversioned "ggml"), Replit ("repl") and BERT
("bert") files are read from their descriptions in :mod:`.zoo`.  Falcon is told from LLaMA, and
StarCoder from GPT-J, by the tensor table (the first record's name), not by n_vocab ranges.
"""
from __future__ import annotations

import math
import struct
from typing import Any, BinaryIO, cast

from ..errors import FormatError
from .facts import FileFacts, TensorTypeStat
from .ggml_types import LEGACY_FTYPE_NAMES, QNT_LAYOUT, TYPES, ftype_phrase, tensor_nbytes
from .sniff import MAGIC_BERT, MAGIC_GGJT, MAGIC_GGLA, MAGIC_GGMF, MAGIC_GGML, MAGIC_GGMM, MAGIC_REPL, ByteSource
from .zoo import BERT, FALCON, REPLIT, STARCODER, Architecture, wtype_of

#: the LLaMA containers of llama.cpp's 2023 releases (GPT4All's GPT-J files also say "ggml")
LEGACY_CONTAINERS = ("ggml", "ggmf", "ggjt")
#: what those files do not record: the training context (the 2023 LLaMA models used 2048) and the
#: RMS-norm epsilon of LLaMA-1 and of LLaMA-2 GQA models (the 2023-08 loader itself defaults to 5e-6)
LEGACY_N_CTX = 2048
LEGACY_RMS_EPS, LEGACY_GQA_RMS_EPS = 1e-6, 1e-5

MAX_TENSOR_NAME = 4096
MAX_TOKEN_LEN = 1 << 16

_LAYOUT_PHRASE = {
    "pre-1405": "pre-May-2023 quant layout",
    "pr1405": "May-2023 quant layout (llama.cpp PR 1405)",
    "pr1508": "post-May-2023 quant layout (llama.cpp PR 1508)",
}
_UNQUANTIZED = {"F32", "F16"}


class _Walk:
    """What walking the tensor records found."""

    def __init__(self) -> None:
        self.stats: dict[str, TensorTypeStat] = {}
        self.n = 0
        self.n_params = 0
        self.shapes: dict[str, list[int]] = {}
        #: name -> (ggml type name, ne, bytes), FileFacts.tensors
        self.tensors: dict[str, tuple[str, tuple[int, ...], int]] = {}
        self.names: list[str] = []
        self.truncated = False
        self.note: str | None = None
        self.end = 0  # byte offset just past the last tensor's data (as claimed)
        #: (name, ggml type id, ne, data offset, data bytes) per record, in file order
        self.records: list[tuple[str, int, list[int], int, int]] = []


#: real ggml-era files hold a few hundred tensors; the cap keeps a hostile file of millions of empty
#: records from turning the walk into a long loop
MAX_LEGACY_TENSORS = 100_000


def _walk_tensors(src: ByteSource, layout: str, align: int) -> _Walk:
    """Read every tensor record header, seeking over the data; never reads tensor data."""
    w = _Walk()
    src.readahead = 4096  # records are scattered: read small windows after each seek
    size = src.size
    w.end = src.pos
    while src.pos < size:
        i = w.n
        rec = src.pos
        if i >= MAX_LEGACY_TENSORS:
            raise src.error("tensor count", f"at most {MAX_LEGACY_TENSORS} tensor records (a 65B LLaMA has 723)", rec)
        if src.remaining < 12:
            w.truncated = True
            w.note = f"file ends inside the header of tensor {i} at byte {rec}"
            break
        n_dims, name_len, ttype = src.unpack("3i", f"tensor[{i}] header")
        if not 1 <= n_dims <= 4:
            raise src.error(f"tensor[{i}] n_dims", f"1 to 4 dimensions (got {n_dims})", rec)
        if not 1 <= name_len <= MAX_TENSOR_NAME:
            raise src.error(f"tensor[{i}] name length", f"1 to {MAX_TENSOR_NAME} bytes (got {name_len})", rec + 4)
        if src.remaining < 4 * n_dims + name_len:
            w.truncated = True
            w.note = f"file ends inside the header of tensor {i} at byte {rec}"
            break
        ne_off = src.pos
        ne = list(src.unpack(f"{n_dims}i", f"tensor[{i}] ne"))
        if any(d < 0 for d in ne):
            raise src.error(f"tensor[{i}] ne", f"non-negative dimensions (got {ne})", ne_off)
        name = src.take(name_len, f"tensor[{i}] name").decode("utf-8", "replace")
        data = src.pos + (-src.pos % align if align else 0)
        try:
            nbytes = tensor_nbytes(ttype, ne, layout)
        except FormatError as exc:
            raise src.error(f"tensor[{i}] ({name}) type/shape",
                            f"a ggml type of the {layout} layout with a whole number of blocks ({exc})",
                            rec + 8) from None
        tname = TYPES[layout][ttype].name
        st = w.stats.setdefault(tname, TensorTypeStat())
        st.count += 1
        st.bytes += nbytes
        w.n += 1
        w.n_params += math.prod(ne)
        w.names.append(name)
        w.shapes[name] = ne
        w.tensors[name] = (tname, tuple(ne), nbytes)
        w.end = data + nbytes
        w.records.append((name, ttype, ne, data, nbytes))
        if data + nbytes > size:
            w.truncated = True
            w.note = (f"tensor {i} ({name}) needs {nbytes} bytes of data from byte {data}, but the file "
                      f"ends at byte {size} (file cut short, e.g. an interrupted download)")
            break
        src.pos = data + nbytes
    return w


def _arch_from_names(names: list[str]) -> str | None:
    if not names:
        return None
    n = names[0]
    joined = " ".join(names[:8])
    if n.startswith(("tok_embeddings.", "norm.", "output.", "layers.")):
        return "llama"
    if "transformer.h." in joined and ("attn.q_proj" in joined or "mlp.fc_in" in joined
                                       or n.startswith("transformer.wte")):
        return "gptj"
    if "transformer.blocks." in joined or "transformer.norm_f" in joined:
        return "mpt"
    if "transformer.word_embeddings" in joined:
        return "falcon" if "self_attention" in joined or "word_embeddings" in n else "bloom"
    if n.startswith("gpt_neox."):
        return "gptneox"
    if n.startswith("model/"):
        return "gpt2"
    if n.startswith("transformer.wte") or "transformer.h." in joined:
        return "starcoder"
    return None


def _check_hparams(src: ByteSource, names: tuple[str, ...], values: tuple[int, ...], offset: int,
                   positive: tuple[str, ...] = ("n_vocab",)) -> None:
    for k, v in zip(names, values):
        if isinstance(v, int) and (v < 0 or (k in positive and v == 0)):
            idx = names.index(k)
            raise src.error(f"hparams.{k}", f"a {'positive' if k in positive else 'non-negative'} "
                                            f"value (got {v})", offset + 4 * idx)


def _read_vocab(src: ByteSource, n_vocab: int, *, scores: bool, mask: int = 0, collect: bool,
                count_field: str = "n_vocab", count_offset: int | None = None) -> list[tuple[bytes, bytes]] | None:
    per = 4 + (4 if scores else 0)
    if n_vocab * per > src.remaining:
        raise src.error(count_field, f"a vocabulary that fits the file: {n_vocab} entries need at least "
                                     f"{n_vocab * per} bytes, {src.remaining} left", count_offset)
    # without texts=True the records come back as (text, extra bytes) pairs
    return cast("list[tuple[bytes, bytes]] | None",
                src.walk_strings(n_vocab, "I", "vocab", extra=4 if scores else 0, mask=mask,
                                 collect=collect, max_len=MAX_TOKEN_LEN))


def _vocab_kv(vocab: list[tuple[bytes, bytes]] | None, scores: bool) -> dict[str, Any]:
    if vocab is None:
        return {}
    kv: dict[str, Any] = {"tokenizer.ggml.tokens": [t for t, _ in vocab]}
    if scores:
        kv["tokenizer.ggml.scores"] = [struct.unpack("<f", s)[0] for _, s in vocab]
    return kv


def _finish_model(f: FileFacts, w: _Walk, data_offset: int, kv: dict[str, Any] | None) -> None:
    """:func:`_finish` for a model container: a file without tensors is a vocabulary file, and
    ``kv`` (the vocabulary, when asked for) is kept."""
    _finish(f, w, data_offset)
    f.vocab_only = w.n == 0 and not w.truncated
    if f.vocab_only:
        f.kind = "vocab-only"
    if kv is not None:
        f.kv = kv


def _other_architecture(f: FileFacts, arch: str | None, what: str) -> FileFacts:
    """A container of ours holding another model's tensors: named, and run by no backend of ours."""
    f.kind = "unsupported-ggml"
    f.architecture = arch
    f.tokenizer = None
    f.description = f"{what}; no backend of ours runs it"
    return f


def _finish(f: FileFacts, w: _Walk | None, data_offset: int) -> None:
    f.data_offset = data_offset
    if w is None:
        return
    f.tensor_types = w.stats
    f.n_tensors = w.n
    f.n_params = w.n_params
    f.data_bytes_expected = w.end - data_offset
    f.truncated = w.truncated
    f.tensor_names = frozenset(w.names)
    f.tensors = w.tensors
    if w.note:
        f.notes.append(w.note)


def _describe(f: FileFacts, family: str, w: _Walk | None) -> str:
    ver = f.format if f.format_version in (None, 0) else f"{f.format} v{f.format_version}"
    parts = [f"{ver} {family}"]
    if f.vocab_only:
        parts.append("vocabulary only (no tensors)")
    if f.file_type_name:
        parts.append(ftype_phrase(f.file_type_name))
    elif f.file_type is not None:
        parts.append(f"file type {f.file_type}")
    head = ", ".join(parts)
    quantized = w is not None and any(t not in _UNQUANTIZED for t in w.stats)
    if f.quant_layout in _LAYOUT_PHRASE and (quantized or (w is None or not w.n) and f.file_type not in (0, 1)):
        head += f" ({_LAYOUT_PHRASE[f.quant_layout]})"
    elif f.quant_layout and f.quant_layout.startswith("qnt") and quantized:
        head += f" (ggml quant version {f.quant_layout[3:]})"
    if f.truncated:
        head += ", TRUNCATED"
    return head


# --------------------------------------------------------------------------------------------------
def _read_llama(src: ByteSource, fmt: str, version: int, with_vocab: bool) -> FileFacts:
    hp_off = src.pos
    names = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
    vals = src.unpack("7i", "hparams")
    _check_hparams(src, names, vals, hp_off)
    n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype = vals
    layout = {"ggml": "pre-1405", "ggmf": "pre-1405"}.get(fmt) or {1: "pre-1405", 2: "pr1405", 3: "pr1508"}[version]
    f = FileFacts(path=src.path, size=src.size, format=fmt, format_version=version, kind="model",
                  architecture="llama", tokenizer="llama", file_type=ftype,
                  file_type_name=LEGACY_FTYPE_NAMES.get(ftype), quant_layout=layout)
    f.hparams = {"n_vocab": n_vocab, "n_embd": n_embd, "n_mult": n_mult, "n_head": n_head,
                 "n_head_kv": n_head, "n_layer": n_layer, "n_rot": n_rot}
    if n_mult > 0:
        f.hparams["n_ff"] = ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult
    scores = fmt != "ggml"
    vocab = _read_vocab(src, n_vocab, scores=scores, collect=with_vocab, count_offset=hp_off)
    data_offset = src.pos
    if fmt == "ggjt" and FALCON.owns(_first_tensor_name(src) or ""):
        # the same header and vocabulary layout, other hparams: read it again as Falcon
        src.pos = hp_off
        return _read_zoo(src, FALCON, with_vocab, version=version)
    if ftype >= 1000:
        f.kind = "unsupported-ggml"
        f.architecture = None
        f.tokenizer = None
        f.quant_layout = None
        f.file_type_name = None
        f.notes.append(f"ftype {ftype} carries a ggml-examples quant version; not a llama.cpp file")
        f.data_offset = data_offset
        f.description = f"{fmt} file of a ggml-examples model (ftype {ftype}); no backend runs it"
        return f
    w = _walk_tensors(src, layout, 32 if fmt == "ggjt" else 0)
    _finish_model(f, w, data_offset, _vocab_kv(vocab, scores) if with_vocab else None)
    arch = _arch_from_names(w.names)
    if w.n and arch != "llama":
        what = f"{fmt} v{version} file of a non-LLaMA model ({arch or 'unknown architecture'}, first tensor " \
               f"{w.names[0]!r})"
        if arch == "falcon":
            # ggllm.cpp's falcon_convert.py wrote ggmf v1 without padding; gpt4all (and our Falcon code) read
            # the padded ggjt layout of its falcon_quantize
            what += " in ggllm.cpp's unquantized layout, which gpt4all never read (it read ggjt)"
        return _other_architecture(f, arch, what)
    wk = w.shapes.get("layers.0.attention.wk.weight")
    if wk and len(wk) == 2 and 0 < wk[1] < n_embd and n_embd % wk[1] == 0 and n_head:
        f.hparams["n_head_kv"] = n_head * wk[1] // n_embd
        f.notes.append(f"grouped-query attention: n_gqa = {n_embd // wk[1]} (pass n_gqa and "
                       f"rms_norm_eps=1e-5 to a 2023-08 loader)")
    w1 = w.shapes.get("layers.0.feed_forward.w1.weight")
    if w1 and len(w1) == 2:
        f.hparams["n_ff"] = w1[1]
    f.description = _describe(f, "LLaMA", w)
    return f


def _read_lora(src: ByteSource) -> FileFacts:
    v_off = src.pos
    version = src.u32("version")
    if version != 1:
        raise src.error("version", f"ggla version 1 (got {version})", v_off)
    r, alpha = src.unpack("2i", "lora_r, lora_alpha")
    f = FileFacts(path=src.path, size=src.size, format="ggla", format_version=1, kind="lora",
                  architecture="llama", hparams={"lora_r": r, "lora_alpha": alpha})
    data_offset = src.pos
    w = _walk_tensors(src, "pr1508", 32)
    _finish(f, w, data_offset)
    f.description = f"ggla v1 LoRA adapter (r={r}, alpha={alpha}, {w.n} tensors), not a model"
    if w.truncated:
        f.description += ", TRUNCATED"
    return f


def _qnt(ftype: int) -> tuple[int, str]:
    qv, base = divmod(ftype, 1000)
    return base, f"qnt{qv}"


def _layout_of(src: ByteSource, ftype: int, off: int) -> tuple[int, str, str]:
    base, qname = _qnt(ftype)
    layout = QNT_LAYOUT.get(int(qname[3:]))
    if layout is None:
        raise src.error("hparams.ftype", f"ftype below 3000 (quant versions 0-2; got {ftype})", off)
    return base, qname, layout


def _read_ggml_gptj_family(src: ByteSource, n_hp: int, with_vocab: bool) -> FileFacts:
    """GPT-J (7 hparams) or GPT-2/StarCoder (6 hparams), each followed by an i32 vocab count."""
    hp_off = src.pos
    names: tuple[str, ...]
    if n_hp == 7:
        names = ("n_vocab", "n_ctx_train", "n_embd", "n_head", "n_layer", "n_rot", "ftype")
    else:
        names = ("n_vocab", "n_ctx_train", "n_embd", "n_head", "n_layer", "ftype")
    vals = src.unpack(f"{n_hp}i", "hparams")
    _check_hparams(src, names, vals, hp_off)
    hp = dict(zip(names, vals))
    ftype = hp.pop("ftype")
    c_off = src.pos
    count = src.i32("vocab count")
    if count != hp["n_vocab"]:
        raise src.error("vocab count", f"the n_vocab of the header ({hp['n_vocab']}), got {count}", c_off)
    base, qname, layout = _layout_of(src, ftype, hp_off + 4 * (n_hp - 1))
    vocab = _read_vocab(src, count, scores=False, collect=with_vocab, count_field="vocab count",
                        count_offset=c_off)
    data_offset = src.pos
    if n_hp == 6 and STARCODER.owns(_first_tensor_name(src) or ""):
        src.pos = hp_off
        return _read_zoo(src, STARCODER, with_vocab, version=0)
    w = _walk_tensors(src, layout, 0)
    arch = _arch_from_names(w.names) or ("gptj" if n_hp == 7 else "gpt2")
    hp["n_ff"] = 4 * hp["n_embd"]
    f = FileFacts(path=src.path, size=src.size, format="ggml", format_version=0, kind="model",
                  architecture=arch, hparams=hp, file_type=ftype,
                  file_type_name=LEGACY_FTYPE_NAMES.get(base), quant_layout=qname)
    _finish_model(f, w, data_offset, _vocab_kv(vocab, False) if with_vocab else None)
    if arch == "gptj" and n_hp == 7:
        f.tokenizer = "gpt2"
        f.description = _describe(f, "GPT-J", w)
    else:
        f.kind = "unsupported-ggml"
        f.description = (f"ggml-examples {arch} file ({ftype_phrase(f.file_type_name)}); "
                         f"no backend of ours runs it")
    return f


def _read_mpt(src: ByteSource, fmt: str, with_vocab: bool) -> FileFacts:
    hp_off = src.pos
    if fmt == "ggmm":
        n_vocab, n_ctx, n_layer, n_head, n_embd = src.unpack("5I", "hparams")
        alibi, clip = src.unpack("2f", "hparams.alibi_bias_max, clip_qkv")
        ftype_off = src.pos
        ftype = src.u32("hparams.ftype")
        c_off = src.pos
        count = src.u32("vocab count")
        if count != n_vocab:
            raise src.error("vocab count", f"the n_vocab of the header ({n_vocab}), got {count}", c_off)
        mask = 1 << 31
    else:
        vals = src.unpack("5i", "hparams")
        _check_hparams(src, ("n_embd", "n_ctx_train", "n_head", "n_layer", "n_vocab"), vals, hp_off)
        n_embd, n_ctx, n_head, n_layer, n_vocab = vals
        alibi, clip = src.unpack("2f", "hparams.alibi_bias_max, clip_qkv")
        ftype_off = src.pos
        ftype = src.i32("hparams.ftype")
        c_off = hp_off + 16
        mask = 0
    if ftype < 0:
        raise src.error("hparams.ftype", f"a non-negative ftype (got {ftype})", ftype_off)
    base, qname, layout = _layout_of(src, ftype, ftype_off)
    vocab = _read_vocab(src, n_vocab, scores=False, mask=mask, collect=with_vocab, count_offset=c_off)
    data_offset = src.pos
    w = _walk_tensors(src, layout, 0)
    f = FileFacts(path=src.path, size=src.size, format=fmt, format_version=None if fmt == "ggmm" else 0,
                  kind="model", architecture="mpt", tokenizer="gpt2", file_type=ftype,
                  file_type_name=LEGACY_FTYPE_NAMES.get(base), quant_layout=qname)
    f.hparams = {"n_vocab": n_vocab, "n_ctx_train": n_ctx, "n_embd": n_embd, "n_head": n_head,
                 "n_layer": n_layer, "n_ff": 4 * n_embd, "alibi_bias_max": alibi, "clip_qkv": clip}
    _finish_model(f, w, data_offset, _vocab_kv(vocab, False) if with_vocab else None)
    arch = _arch_from_names(w.names)
    if w.n and arch != "mpt":
        return _other_architecture(f, arch, f"{fmt} file read as MPT, but its first tensor is {w.names[0]!r} "
                                            f"({arch or 'unknown architecture'})")
    f.description = _describe(f, "MPT (GPT4All layout)" if fmt == "ggmm" else "MPT (ggml-examples layout)", w)
    return f


def _read_ggml(src: ByteSource, with_vocab: bool) -> FileFacts:
    """Unversioned "ggml": LLaMA, GPT-J, MPT, GPT-2/StarCoder, whisper ... told apart by structure."""
    if src.remaining < 28:
        raise src.error("hparams", f"at least 7 x i32 of hyperparameters (only {src.remaining} bytes left)")
    head = src.peek(44)
    h = [int.from_bytes(head[i:i + 4], "little", signed=True) for i in range(0, len(head) - 3, 4)]
    if len(h) >= 2 and h[1] == 1500 and 51000 <= h[0] <= 52000:
        f = FileFacts(path=src.path, size=src.size, format="whisper", format_version=None,
                      kind="unsupported-ggml", architecture="whisper",
                      hparams={"n_vocab": h[0], "n_audio_ctx": h[1]})
        f.description = "whisper.cpp speech-recognition model (ggml), not a language model"
        return f
    if len(h) >= 8 and h[7] == h[0] > 0:
        return _read_ggml_gptj_family(src, 7, with_vocab)
    if len(h) >= 7 and h[6] == h[0] > 0:
        return _read_ggml_gptj_family(src, 6, with_vocab)
    if h[5] == 0 or h[5] > (1 << 20) or h[5] < 0:
        return _read_mpt(src, "ggml", with_vocab)
    return _read_llama(src, "ggml", 0, with_vocab)


def _first_tensor_name(src: ByteSource) -> str | None:
    """The name of the tensor record at ``src.pos`` (None when there is none or it is malformed);
    ``src.pos`` does not move."""
    head = src.peek(12 + 16 + 256)
    if len(head) < 12:
        return None
    n_dims, name_len, _ = struct.unpack_from("<3i", head)
    start = 12 + 4 * n_dims
    if not 1 <= n_dims <= 4 or not 1 <= name_len <= 256 or start + name_len > len(head):
        return None
    return head[start:start + name_len].decode("utf-8", "replace")


def _zoo_type_name(wtype: str | None) -> str | None:
    return None if wtype is None else ("ALL_F32" if wtype == "F32" else f"MOSTLY_{wtype}")


def _check_padding(src: ByteSource, arch: Architecture) -> None:
    """The first record of an aligned file (Falcon) must be followed by zero padding up to the data:
    gpt4all's own Falcon converter wrote records without padding, which its loader misread."""
    if not arch.alignment or src.remaining < 12:
        return
    rec = src.pos
    head = src.peek(12 + 16 + 256 + arch.alignment)
    n_dims, name_len, _ = struct.unpack_from("<3i", head)
    end = 12 + 4 * n_dims + name_len
    if not 1 <= n_dims <= 4 or not 1 <= name_len <= 256 or end > len(head):
        return  # the walk names the defect
    pad = -(rec + end) % arch.alignment
    if any(head[end:end + pad]):
        raise src.error("tensor[0] padding", f"zero bytes up to the next {arch.alignment}-byte boundary before the "
                                            f"tensor data ({arch.display} files align tensor data; this one looks "
                                            "unpadded, as gpt4all's convert_falcon_hf_to_ggml.py wrote it)",
                        rec + end)


def _read_zoo(src: ByteSource, arch: Architecture, with_vocab: bool, version: int | None = None) -> FileFacts:
    """A GPT4All 2023 zoo file (Falcon, Replit, StarCoder, BERT) as :mod:`.zoo` describes its layout;
    ``src.pos`` at the first header integer (after the magic and any version)."""
    hp_off = src.pos
    names = tuple(f.name for f in arch.header)
    vals = src.unpack(f"{len(names)}i", "hparams")
    _check_hparams(src, names, vals, hp_off)
    hp = arch.hparams_from_header(vals)
    ftype = vals[arch.ftype_field]
    n_vocab = hp["n_vocab"]
    c_off = hp_off
    if arch.vocab_count_repeated:
        c_off = src.pos
        count = src.i32("vocab count")
        if count != n_vocab:
            raise src.error("vocab count", f"the n_vocab of the header ({n_vocab}), got {count}", c_off)
    first = src.peek(4 + 64)
    first_token = first[4:4 + int.from_bytes(first[:4], "little")] if len(first) >= 4 else b""
    vocab = _read_vocab(src, n_vocab, scores=arch.vocab_scores, collect=with_vocab, count_offset=c_off)
    data_offset = src.pos
    _check_padding(src, arch)
    w = _walk_tensors(src, "pr1508", arch.alignment)
    wtype = wtype_of(arch, ftype)
    f = FileFacts(path=src.path, size=src.size, format=arch.container, format_version=version, kind="model",
                  architecture=arch.name, tokenizer=arch.tokenizer, file_type=ftype,
                  file_type_name=_zoo_type_name(wtype), quant_layout="qnt2", hparams=dict(hp))
    if hp.get("n_head", 0) > 0:
        f.hparams["head_dim"] = hp["n_embd"] // hp["n_head"]
    _finish_model(f, w, data_offset, _vocab_kv(vocab, arch.vocab_scores) if with_vocab else None)
    if arch is STARCODER and n_vocab and first_token != b"<|endoftext|>":
        # GPT-2 of the ggml examples: StarCoder's table, but a GPT-2 vocabulary (StarCoder's id 0 is
        # its end token "<|endoftext|>")
        f.tokenizer = None
        f.architecture = "gpt2"
        f.kind = "unsupported-ggml"
        f.description = (f"ggml-examples GPT-2 file ({ftype_phrase(f.file_type_name)}); no backend of ours runs "
                         "it (StarCoder's tensor table, but not StarCoder's vocabulary)")
        return f
    if wtype is None:
        f.notes.append(f"header ftype {ftype} is not one that gpt4all's {arch.display} loader maps to a weight type")
    for key, (lo, hi) in arch.gpt4all_ranges.items():
        if not lo <= hp.get(key, lo) <= hi:
            span = str(lo) if lo == hi else f"{lo}..{hi}"
            f.notes.append(f"gpt4all 1.0.8 recognized {arch.display} files only with {key} {span} "
                           f"(this one: {hp[key]})")
    if arch is BERT and any(nbytes % 16 for _, _, _, _, nbytes in w.records):
        f.notes.append("some tensor sizes are not multiples of 16 bytes: gpt4all 1.0.8's BERT loader, which "
                       "budgeted its memory pool exactly, failed on such files")
    family = arch.display if arch.container in LEGACY_CONTAINERS else f"file of GPT4All {arch.display}"
    f.description = _describe(f, family, w)
    return f


def _read_rwkv(src: ByteSource, version: int) -> FileFacts:
    n_vocab, n_embd, n_layer, dtype = src.unpack("4i", "hparams")
    f = FileFacts(path=src.path, size=src.size, format="rwkv", format_version=version,
                  kind="unsupported-ggml", architecture="rwkv",
                  hparams={"n_vocab": n_vocab, "n_embd": n_embd, "n_layer": n_layer}, file_type=dtype)
    f.description = f"rwkv.cpp model (ggmf version {version}); no backend of ours runs it"
    return f


def read(fh: BinaryIO, path: str, size: int, *, with_kv: bool = False, with_vocab: bool = False) -> FileFacts:
    src = ByteSource(fh, path, size)
    magic = src.u32("magic")
    if magic == MAGIC_REPL:
        return _read_zoo(src, REPLIT, with_vocab)
    if magic == MAGIC_BERT:
        return _read_zoo(src, BERT, with_vocab)
    if magic == MAGIC_GGML:
        return _read_ggml(src, with_vocab)
    if magic == MAGIC_GGMM:
        return _read_mpt(src, "ggmm", with_vocab)
    if magic == MAGIC_GGLA:
        return _read_lora(src)
    v_off = src.pos
    version = src.u32("version")
    if magic == MAGIC_GGMF:
        if version == 1:
            return _read_llama(src, "ggmf", 1, with_vocab)
        if version in (100, 101):
            return _read_rwkv(src, version)
        raise src.error("version", f"ggmf version 1 (llama.cpp) or 100/101 (rwkv.cpp), got {version}", v_off)
    if magic == MAGIC_GGJT:
        if version in (1, 2, 3):
            return _read_llama(src, "ggjt", version, with_vocab)
        raise src.error("version", f"ggjt version 1, 2 or 3 (got {version})", v_off)
    raise src.error("magic", "a ggml-family magic", 0)


def tensor_records(path: str, facts: FileFacts | None = None) -> list[tuple[str, int, list[int], int, int]]:
    """(name, ggml type id, ne, data offset, data bytes) of every tensor of a ggml/ggmf/ggjt/ggmm/ggla/repl/bert
    file, in file order; type ids and sizes are those of the file's quant layout (``facts.quant_layout``).

    ``facts``: the file's :func:`~gpt4all_loader.formats.sniff.read_facts` result (read here when None).
    Raises FormatError for a file that is not a legacy model container or whose tensor data runs
    past its end.
    """
    import os

    if facts is None:
        from .sniff import read_facts

        facts = read_facts(path)
    layout = facts.quant_layout
    layout = QNT_LAYOUT.get(int(layout[3:])) if layout and layout.startswith("qnt") else layout
    if layout is None and facts.format == "ggla":
        layout = "pr1508"  # LoRA adapters were written by ggjt v3 tools
    if facts.format not in ("ggml", "ggmf", "ggjt", "ggmm", "ggla", "repl", "bert") or facts.data_offset is None \
            or layout is None:
        raise FormatError(f"{path}: {facts.description or facts.format}: not a ggml-era model file with tensors")
    with open(path, "rb") as fh:
        src = ByteSource(fh, str(path), os.fstat(fh.fileno()).st_size)
        src.pos = facts.data_offset
        w = _walk_tensors(src, layout, 32 if facts.format in ("ggjt", "ggla") else 0)
    if w.truncated:
        raise FormatError(f"{path}: {w.note}")
    return w.records
