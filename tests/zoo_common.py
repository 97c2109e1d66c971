"""Shared by the tests of GPT4All's 2023 zoo (Falcon, Replit, StarCoder, BERT): the test texts, the tiny
files of each architecture, and gpt4all 1.0.8 (the reference) run in a child process.

gpt4all 1.0.8 carries its own ggml copies: it runs only in a child (``tools/gpt4all108_logits.py``).
:func:`gpt4all108_lib_dir` skips the calling test, with the reason, when its wheel cannot be fetched.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest

from gpt4all_loader.formats import zoo
from gpt4all_loader.formats.ggml_types import tensor_nbytes
from gpt4all_loader.formats.writer import (
    TinyBert,
    TinyFalcon,
    TinyReplit,
    TinyStarCoder,
    TinyZoo,
    legacy_tensor_header,
    zoo_header,
)

GPT4ALL_108 = "gpt4all==1.0.8"
GPT4ALL_108_SHA256 = "96b5f8e139784d9ce11aea2cb6d39d7866943d7cb574917af48eca4cccb31a12"
TOOL = Path(__file__).resolve().parent.parent / "tools" / "gpt4all108_logits.py"

#: texts every tokenizer and model comparison runs: spaces, newlines, tabs, accents, CJK, emoji, code
#: (short enough for the tiny files' 128-token contexts)
ZOO_TEXTS = [
    "Hello world",
    "Once upon a time there lived a little cat.",
    "  two  spaces   and\ttabs\n\nnew lines\n",
    "Café, naïve, über — déjà vu.",
    "你好，世界！日本語",
    "emoji 🙂👍 end",
    "def hello(self):\n    return print(1 + 2)  # code\n",
    "MiXeD CaSe 123 4567!?",
]

#: gpt4all 1.0.8's BERT aborts (GGML_ASSERT ggml_nelements(dst) == ggml_nelements(src0)) on a text whose
#: WordPiece ids are [CLS] alone, e.g. one without any ASCII letter, digit or punctuation (its tokenizer
#: drops every non-ASCII byte): the BERT comparisons use the texts that keep at least one token
ZOO_TEXTS_BERT = [t for t in ZOO_TEXTS if any(c.isascii() and c.isalnum() or c in "!?.,:;()#+-" for c in t)]
#: such a text, to check that our BERT answers it without a signal
BERT_CLS_ONLY_TEXT = "你好，世界！日本語"

ZOO_KINDS = ("falcon", "replit", "starcoder", "bert")


def write_zoo_files(d: Path, seed: int = 5) -> dict[str, Path]:
    """``{"falcon-f32": path, "falcon-f16": ..., ...}``: one seeded tiny model per architecture, F32 and F16,
    and Q4_0 Falcon and StarCoder files (``"falcon-q4_0"``, ``"starcoder-q4_0"``, n_embd 32)."""
    from gpt4all_loader.formats import writer as w

    models = {"falcon": (w.TinyFalcon(seed=seed), w.write_falcon),
              "replit": (w.TinyReplit(seed=seed), w.write_replit),
              "starcoder": (w.TinyStarCoder(seed=seed), w.write_starcoder),
              "bert": (w.TinyBert(seed=seed), w.write_bert)}
    out: dict[str, Path] = {}
    for kind, (model, write) in models.items():
        for ft in ("f32", "f16"):
            out[f"{kind}-{ft}"] = write(d / f"tiny-{kind}-{ft}.bin", model, ft)  # type: ignore[operator]
    # Q4_0 (ggml quant version 2 blocks, the published Falcon's type): rows of 32 values
    out["falcon-q4_0"] = w.write_falcon(d / "tiny-falcon-q4_0.bin", w.TinyFalcon(seed=seed, n_embd=32, n_head=4),
                                        "q4_0")
    out["starcoder-q4_0"] = w.write_starcoder(d / "tiny-starcoder-q4_0.bin",
                                              w.TinyStarCoder(seed=seed, n_embd=32, n_head=4), "q4_0")
    return out


# -- hostile variants of the zoo's files (the reader's tests and the hostile matrix) ------------------------
def small(kind: str) -> TinyZoo:
    """Small models for the many hostile variants (Falcon and StarCoder with short vocabularies: the
    reader and the validator do not ask for gpt4all's n_vocab ranges)."""
    return {"falcon": lambda: TinyFalcon(seed=3, n_vocab=600),
            "replit": lambda: TinyReplit(seed=3),
            "starcoder": lambda: TinyStarCoder(seed=3, n_vocab=600, n_ctx=16),
            "bert": lambda: TinyBert(seed=3, n_vocab=256, n_max_tokens=40, n_embd=16, n_intermediate=32, n_head=2,
                                     n_layer=1)}[kind]()


Record = list  # [name, ne, ggml type id]


def zoo_bytes(model: TinyZoo, *, header: dict[str, int] | None = None, tokens: list[bytes] | None = None,
              count: int | None = None, edit: Callable[[list[Record]], list[Record]] | None = None,
              align: int | None = None, ftype: int = 1) -> bytes:
    """``model``'s file (zero tensor data), with header fields, vocabulary or tensor records changed."""
    arch = model.arch
    names = [f.name for f in arch.header]
    vals = model.header_values(zoo.ftype_of(arch, "F16" if ftype else "F32"))
    for k, v in (header or {}).items():
        vals[names.index(k)] = v
    out = bytearray(zoo_header(arch, vals, model.vocab() if tokens is None else tokens, model.scores(), count=count))
    recs = [[n, list(s), (ftype if model.is_weight(n) else 0)] for n, s in model.tensor_shapes().items()]
    for name, shape, tt in (edit(recs) if edit else recs):
        out += legacy_tensor_header(name, shape, tt)
        a = arch.alignment if align is None else align
        if a:
            out += b"\0" * (-len(out) % a)
        out += b"\0" * tensor_nbytes(tt, shape)
    return bytes(out)



def ctor(kind: str, hp: dict) -> dict:
    """The constructor keywords of ``kind``'s tiny model for the hyperparameters ``hp`` (a file's facts)."""
    if kind == "falcon":
        return dict(n_vocab=hp["n_vocab"], n_embd=hp["n_embd"], n_head=hp["n_head"], n_layer=hp["n_layer"])
    if kind == "bert":
        return dict(n_vocab=hp["n_vocab"], n_max_tokens=hp["n_ctx_train"], n_embd=hp["n_embd"],
                    n_intermediate=hp["n_ff"], n_head=hp["n_head"], n_layer=hp["n_layer"])
    return dict(n_vocab=hp["n_vocab"], n_ctx=hp["n_ctx_train"], n_embd=hp["n_embd"], n_head=hp["n_head"],
                n_layer=hp["n_layer"])


def reshape(suffix: str, shape: list[int]) -> Callable[[list[Record]], list[Record]]:
    """A tensor-record edit: the tensors whose names end in ``suffix`` get ``shape``."""
    def f(recs: list[Record]) -> list[Record]:
        return [[n, shape if n.endswith(suffix) else s, t] for n, s, t in recs]
    return f


#: one defect of a tensor table each (applied to the records of :func:`zoo_bytes`)
def _tensor_cases() -> dict[str, Callable[[list[Record]], list[Record]]]:
    return {
        "missing": lambda r: r[:3] + r[4:],
        "duplicate": lambda r: r + [r[2]],
        "unknown": lambda r: r + [["transformer.extra.weight", [4], 0]],
        "misshapen": lambda r: [[n, ([s[0] + 1] + s[1:]) if i == 2 else s, t] for i, (n, s, t) in enumerate(r)],
        "transposed": lambda r: [[n, s[::-1] if len(s) == 2 and s[0] != s[1] and i < 4 else s, t]
                                 for i, (n, s, t) in enumerate(r)],
        "3-dims": lambda r: [[n, (s + [2, 1]) if len(s) == 1 else s, t] for n, s, t in r],
        "norm-f16": lambda r: [[n, s, 1 if len(s) == 1 else t] for n, s, t in r],
        "weight-f32": lambda r: [[n, s, 0] for n, s, t in r],
        "weight-q4_0": lambda r: [[n, s, 2 if t == 1 and s[0] % 32 == 0 else t] for n, s, t in r],
        "unknown-empty": lambda r: r + [["x", [0], 0]],
        "only-globals": lambda r: [x for x in r if ".0." not in x[0] and "h0/" not in x[0] and "layer.0" not in x[0]
                                   and ".1." not in x[0] and "h1/" not in x[0]],
    }


TENSOR_CASES = _tensor_cases()


def gpt4all108_lib_dir() -> Path:
    """The build folder of the extracted gpt4all 1.0.8 wheel (libllmodel.so and its model libraries)."""
    from gpt4all_loader.engines import cache, sdist
    from gpt4all_loader.errors import BuildError

    try:
        wheel = sdist.fetch(GPT4ALL_108, GPT4ALL_108_SHA256, binary=True)
    except BuildError as e:
        pytest.skip(f"{GPT4ALL_108} wheel not available: {e}")
    root = cache.files_dir() / "gpt4all-1.0.8"
    lib_dir = root / "gpt4all" / "llmodel_DO_NOT_MODIFY" / "build"
    if not (lib_dir / "libllmodel.so").exists():
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if "/llmodel_DO_NOT_MODIFY/build/" in n and n.endswith(".so")]
            z.extractall(root, members=members)
    return lib_dir


def gpt4all108(lib_dir: Path, model: Path, texts: list[str], *, n_predict: int = 8, embed: bool = False,
               tmp: Path | None = None) -> list[dict[str, Any]]:
    """gpt4all 1.0.8's prompt token ids, greedy ids (and, with ``embed``, the embedding) for each text,
    from one child process; the test fails with the child's stderr when the file does not load."""
    prompts = (tmp or model.parent) / f"{model.stem}.prompts.json"
    prompts.write_text(json.dumps(texts), encoding="utf-8")
    cmd = [sys.executable, str(TOOL), "--lib-dir", str(lib_dir), "--model", str(model), "--prompts-file",
           str(prompts), "--n-predict", str(n_predict), "--threads", "1"] + (["--embed"] if embed else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"gpt4all 1.0.8 child printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    out = json.loads(lines[-1])
    assert out.get("ok"), f"{out.get('error')}: {proc.stderr[-2000:]}"
    return list(out["results"])


def evaluate_greedy(m: Any, toks: list[int], n_predict: int) -> dict[str, Any]:
    """Our side of a gpt4all comparison: ``toks`` evaluated on a loaded Model, the last position's logits, and
    up to ``n_predict`` greedy ids (argmax, no sampler: what gpt4all does at temperature 0) before an end token."""
    m.evaluate(toks)
    logits = m.logits()
    greedy: list[int] = []
    for _ in range(n_predict):
        lg = m.logits()
        t = max(range(len(lg)), key=lg.__getitem__)
        if m._lib.g4a_is_eog(m._handle, t):
            break
        greedy.append(t)
        m.evaluate([t])
    return {"prompt_tokens": toks, "logits": logits, "greedy": greedy}
