"""GPT4All's other 2023 architectures (Falcon, Replit, StarCoder, BERT) on backend ggml-gpt4all-2023-08
(our model code on the ggml of August 2023, the quant layout GPT4All's own libraries for them linked),
compared with gpt4all 1.0.8, the last gpt4all that read these files.

Fixtures come from ``gpt4all_loader.formats.writer`` (F32, F16; Q4_0 for Falcon and StarCoder).
gpt4all 1.0.8 runs in a child process (``tools/gpt4all108_logits.py``, through ``zoo_common``): it
carries its own ggml.  The comparison is skipped only when its wheel cannot be fetched.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_backend
from zoo_common import (
    BERT_CLS_ONLY_TEXT,
    ZOO_TEXTS,
    ZOO_TEXTS_BERT,
    evaluate_greedy,
    gpt4all108,
    gpt4all108_lib_dir,
    write_zoo_files,
)

BACKEND = "ggml-gpt4all-2023-08"
N_PREDICT = 8
DECODERS = ["falcon-f32", "falcon-f16", "falcon-q4_0", "starcoder-f32", "starcoder-f16", "starcoder-q4_0",
            "replit-f32", "replit-f16"]
#: a text longer than the tiny BERT's 128 positions: gpt4all embeds it in overlapping chunks
LONG_TEXT = " ".join(["once upon a time there lived a little cat, hello world 123."] * 20)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_zoo_files(tmp_path_factory.mktemp("zoo-ours"))


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    return gpt4all108_lib_dir()


def ours(path: Path, texts: list[str], n_predict: int = N_PREDICT) -> list[dict]:
    import gpt4all_loader

    out = []
    with gpt4all_loader.load(path, device="cpu", n_threads=2) as m:
        assert m.info.backend == BACKEND
        for text in texts:
            m.reset()
            out.append(evaluate_greedy(m, m.tokenize(text), n_predict))
    return out


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b)) / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


# --------------------------------------------------------------------------------------------------
# parity with gpt4all 1.0.8

@pytest.mark.parametrize("name", DECODERS)
def test_tokens_logits_and_greedy_match_gpt4all_108(files, lib_dir, name):
    require_backend(BACKEND)
    ref = gpt4all108(lib_dir, files[name], ZOO_TEXTS, n_predict=N_PREDICT)
    got = ours(files[name], ZOO_TEXTS)
    for text, r, g in zip(ZOO_TEXTS, ref, got):
        assert g["prompt_tokens"] == r["prompt_tokens"], text
        diff = max(abs(x - y) for x, y in zip(g["logits"], r["logits"]))
        assert len(g["logits"]) == len(r["logits"]) and diff <= 1e-4, (text, diff)
        # gpt4all stops at its end tokens: compare what it produced
        assert r["greedy"] and g["greedy"][:len(r["greedy"])] == r["greedy"], text


@pytest.mark.parametrize("name", ["bert-f32", "bert-f16"])
def test_bert_tokens_and_embeddings_match_gpt4all_108(files, lib_dir, name):
    require_backend(BACKEND)
    import gpt4all_loader

    texts = ZOO_TEXTS_BERT + [LONG_TEXT]
    ref = gpt4all108(lib_dir, files[name], texts, embed=True)
    with gpt4all_loader.load(files[name], device="cpu", n_threads=2, embeddings=True) as m:
        assert m.info.backend == BACKEND
        for text, r in zip(texts, ref):
            if text != LONG_TEXT:   # gpt4all's llmodel_prompt refuses (and does not tokenize) a text this long
                assert m.tokenize(text) == r["prompt_tokens"], text
            e = m.embed(text)
            assert len(e) == len(r["embedding"]) == m.info.n_embd
            assert cosine(e, r["embedding"]) >= 0.9999, text
        assert len(m.tokenize(LONG_TEXT)) > m.info.n_ctx_train   # the chunked path ran


# --------------------------------------------------------------------------------------------------
# our backend alone

def test_bert_refuses_generation_and_embeds_a_cls_only_text(files):
    require_backend(BACKEND)
    import gpt4all_loader
    from gpt4all_loader.errors import BackendError

    with gpt4all_loader.load(files["bert-f32"], device="cpu", embeddings=True) as m:
        with pytest.raises(BackendError, match="embedding"):
            m.generate("Hello world", max_tokens=4)
        # gpt4all 1.0.8 aborts on a text whose WordPiece ids are [CLS] alone; ours embeds it
        assert m.tokenize(BERT_CLS_ONLY_TEXT) == [101]
        e = m.embed(BERT_CLS_ONLY_TEXT)
        assert math.isclose(math.fsum(x * x for x in e), 1.0, rel_tol=1e-5)


def test_bert_window_too_small_to_chunk_is_an_error_not_a_hang(tmp_path):
    """Chunks advance by n_max_tokens - 32: with a window of 32 or less gpt4all loops forever on a long
    text.  Validation refuses such files; the native code, reached directly, says why it cannot embed."""
    require_backend(BACKEND)
    from gpt4all_loader.engines import native
    from gpt4all_loader.formats import writer as w

    p = w.write_bert(tmp_path / "bert-window16.bin", w.TinyBert(seed=3, n_max_tokens=16), "f32")
    be = native.open_backend(BACKEND, "cpu")
    f = native.ffi()
    h = be.lib.g4a_load(os.fsencode(str(p)), f.new("g4a_load_params *", dict(n_ctx=0, n_threads=1)))
    assert h != f.NULL, be.last_error()
    try:
        assert be.lib.g4a_eval(h, f.new("int32_t[]", [101, 200, 201]), 3) == 0
        assert be.lib.g4a_embeddings(h) != f.NULL, be.last_error()
        assert be.lib.g4a_reset(h) == 0
        assert be.lib.g4a_eval(h, f.new("int32_t[]", [101] + [200] * 40), 41) == 0
        assert be.lib.g4a_embeddings(h) == f.NULL
        assert "would not advance" in be.last_error()
    finally:
        be.lib.g4a_free(h)


@pytest.mark.parametrize("name", ["falcon-f32", "starcoder-f32", "replit-f32"])
def test_kv_cache_matches_full_evaluation(files, name):
    require_backend(BACKEND)
    import gpt4all_loader

    with gpt4all_loader.load(files[name], device="cpu", n_threads=2) as m:
        toks = m.tokenize(ZOO_TEXTS[1])
        m.evaluate(toks)
        full = m.logits()
        m.reset()
        for t in toks:
            m.evaluate([t])
        step = m.logits()
    assert max(abs(a - b) for a, b in zip(full, step)) <= 1e-4


def test_starcoder_without_lm_head_uses_the_embedding_table(tmp_path):
    """The converter may leave model/lm_head out; the embedding table is the output head then."""
    require_backend(BACKEND)
    from gpt4all_loader.engines import native
    from gpt4all_loader.formats import writer as w

    tied = w.TinyStarCoder(seed=7, lm_head=False)
    p = w.write_starcoder(tmp_path / "starcoder-tied.bin", tied, "f32")
    be = native.open_backend(BACKEND, "cpu")
    f = native.ffi()
    h = be.lib.g4a_load(os.fsencode(str(p)), f.new("g4a_load_params *", dict(n_ctx=0, n_threads=1)))
    assert h != f.NULL, be.last_error()
    try:
        assert be.lib.g4a_eval(h, f.new("int32_t[]", [5, 6, 7]), 3) == 0
        assert all(math.isfinite(x) for x in f.unpack(be.lib.g4a_logits(h), be.lib.g4a_n_vocab(h)))
    finally:
        be.lib.g4a_free(h)


# --------------------------------------------------------------------------------------------------
# bad files fail with a message, never an abort (the native loads run in a child process)

_CHILD = r"""
import json, os, sys
from gpt4all_loader.engines import native
be = native.open_backend(sys.argv[1], "cpu")
f = native.ffi()
out = {}
for path in sys.argv[2:]:
    h = be.lib.g4a_load(os.fsencode(path), f.new("g4a_load_params *", dict(n_ctx=0, n_threads=1)))
    if h != f.NULL:
        be.lib.g4a_free(h)
        out[path] = ""
    else:
        out[path] = be.last_error() or "(no message)"
print(json.dumps(out))
"""


def _first_record(buf: bytes, kind: str) -> int:
    """Offset of the first tensor record of a writer's zoo file."""
    if kind == "falcon":
        pos, n_vocab, scores = 4 + 4 + 7 * 4, struct.unpack_from("<i", buf, 8)[0], True
    elif kind == "starcoder":
        pos, n_vocab, scores = 4 + 7 * 4, struct.unpack_from("<i", buf, 4)[0], False
    elif kind == "replit":
        pos, n_vocab, scores = 4 + 6 * 4, struct.unpack_from("<i", buf, 4)[0], True
    else:
        pos, n_vocab, scores = 4 + 7 * 4, struct.unpack_from("<i", buf, 4)[0], False
    for _ in range(n_vocab):
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + n + (4 if scores else 0)
    return pos


#: header fields to break, per kind: (byte offset, value)
BAD_HEADERS = {
    "falcon": {"falcon-40": (28, 40), "n_head_kv-2": (20, 2), "odd-head": (16, 8), "n_layer-0": (24, 0)},
    "starcoder": {"count-differs": (28, 7), "n_head-3": (16, 3), "n_ctx-0": (8, 0)},
    "replit": {"ftype-7": (24, 7), "n_embd-0": (12, 0), "n_vocab-huge": (4, 1 << 30)},
    "bert": {"n_vocab-50": (4, 50), "ftype-1001": (28, 1001), "n_intermediate-neg": (16, -4)},
}


@pytest.mark.parametrize("kind", ["falcon", "starcoder", "replit", "bert"])
def test_native_loader_rejects_damaged_files(files, tmp_path, kind):
    require_backend(BACKEND)
    buf = files[f"{kind}-f32"].read_bytes()
    rec = _first_record(buf, kind)
    n_dims = struct.unpack_from("<i", buf, rec)[0]
    muts = {
        "truncated": buf[:-5],
        "cut-in-vocab": buf[:rec - 3],
        "bad-type": buf[:rec + 8] + struct.pack("<i", 99) + buf[rec + 12:],
        "bad-shape": buf[:rec + 12] + struct.pack("<i", 3) + buf[rec + 16:],
        "huge-name": buf[:rec + 4] + struct.pack("<i", 1 << 30) + buf[rec + 8:],
        "unknown-name": buf[:rec + 12 + 4 * n_dims] + b"X" + buf[rec + 13 + 4 * n_dims:],
        "trailing-garbage": buf + b"\x01\x02\x03",
    }
    for label, (at, value) in BAD_HEADERS[kind].items():
        b = bytearray(buf)
        struct.pack_into("<i", b, at, value)
        muts[label] = bytes(b)
    paths = []
    for label, data in muts.items():
        p = tmp_path / f"{kind}-{label}.bin"
        p.write_bytes(data)
        paths.append(str(p))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _CHILD, BACKEND, str(files[f"{kind}-f32"]), *paths],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res[str(files[f"{kind}-f32"])] == "", res[str(files[f"{kind}-f32"])]
    for p in paths:
        assert res[p], f"{Path(p).name} loaded"
