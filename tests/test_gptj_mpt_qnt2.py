"""GPT-J and MPT files quantized after May 2023 (header ftype = 2000 + ftype, f16-scale Q4_0 blocks):
the same model code on the August 2023 ggml (backend ggml-gpt4all-2023-08).

The fixtures are F32 files from our writer, re-quantized here to the QNT v2 Q4_0 layout: 18 bytes
per 32 values, an f16 scale d, then 16 bytes where byte j holds value j (low nibble) and value j+16
(high nibble); x = (q - 8) * d.  The decoder below is checked against the engine's own dequantizer.
"""
from __future__ import annotations

import math
import struct
from array import array
from pathlib import Path

import pytest
from conftest import require_backend
from test_gptj_mpt import _vocab_end

import gpt4all_loader as g
from gpt4all_loader.engines import native
from gpt4all_loader.engines.catalog import choose
from gpt4all_loader.formats.sniff import read_facts

NEW, OLD = "ggml-gpt4all-2023-08", "ggml-gpt4all-2023-05"
QK, F32, Q4_0 = 32, 0, 2


def quantize_q4_0_v2(values: array) -> bytes:
    out = bytearray()
    for b in range(0, len(values), QK):
        x = values[b:b + QK]
        amax = max(x, key=abs)
        d = amax / -8.0
        d16 = struct.unpack("<e", struct.pack("<e", d))[0]   # the scale as stored
        idd = 1.0 / d if d else 0.0
        q = [min(15, int(v * idd + 8.5)) for v in x]
        out += struct.pack("<e", d16) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return bytes(out)


def dequantize_q4_0_v2(data: bytes) -> list[float]:
    vals: list[float] = []
    for b in range(0, len(data), 18):
        d = struct.unpack_from("<e", data, b)[0]
        qs = data[b + 2:b + 18]
        vals += [((qs[j] & 15) - 8) * d for j in range(16)] + [((qs[j] >> 4) - 8) * d for j in range(16)]
    return vals


def requantize_qnt2(src: Path, dst: Path, kind: str) -> Path:
    """Every 2-D weight of an F32 GPT-J/ggmm-MPT file to QNT v2 Q4_0; header ftype 2002."""
    buf = src.read_bytes()
    pos, ftype_at = _vocab_end(buf, kind)
    out = bytearray(buf[:pos])
    struct.pack_into("<i", out, ftype_at, 2002)
    while pos < len(buf):
        n_dims, name_len, ttype = struct.unpack_from("<3i", buf, pos)
        ne = struct.unpack_from(f"<{n_dims}i", buf, pos + 12)
        name = buf[pos + 12 + 4 * n_dims:pos + 12 + 4 * n_dims + name_len]
        at = pos + 12 + 4 * n_dims + name_len
        n = math.prod(ne)
        data = buf[at:at + 4 * n]
        pos = at + 4 * n
        if n_dims == 2 and not (kind == "ggmm" and name == b"transformer.wte.weight"):
            data, ttype = quantize_q4_0_v2(array("f", data)), Q4_0
        out += struct.pack(f"<3i{n_dims}i", n_dims, name_len, ttype, *ne) + name + data
    dst.write_bytes(bytes(out))
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from gpt4all_loader.formats.writer import TinyGPTJ, TinyMPT, write_gptj, write_mpt

    d = tmp_path_factory.mktemp("qnt2")
    gj = write_gptj(d / "gptj-f32.bin", TinyGPTJ(seed=12, n_vocab=50300, n_embd=64, n_head=4, n_rot=8), "f32")
    mp = write_mpt(d / "mpt-f32.bin", TinyMPT(seed=22, n_embd=64, n_head=4), "ggmm", "f32")
    return {"gptj-f32": gj, "gptj-q4_0-v2": requantize_qnt2(gj, d / "gptj-q4_0-v2.bin", "gptj"),
            "mpt-f32": mp, "mpt-q4_0-v2": requantize_qnt2(mp, d / "mpt-q4_0-v2.bin", "ggmm")}


def logits(path, backend, prompt="Hello world, once upon a time"):
    with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=1) as m:
        m.evaluate(m.tokenize(prompt))
        return m.logits(), m.generate(prompt, max_tokens=6)


def test_decoder_matches_the_engines_dequantizer():
    require_backend(NEW)
    vals = array("f", [math.sin(i * 0.37) * (1 + i % 7) for i in range(64)])
    blob = quantize_q4_0_v2(vals)
    be = native.open_backend(NEW, "cpu")
    ffi = native.ffi()
    dst = ffi.new("float[]", 64)
    assert be.lib.g4a_dequantize(Q4_0, ffi.from_buffer(blob), dst, 64) == 0
    assert list(dst) == pytest.approx(dequantize_q4_0_v2(blob), abs=0)


@pytest.mark.parametrize("arch", ["gptj", "mpt"])
def test_newer_layout_routes_to_the_2023_08_ggml_and_runs(files, arch):
    require_backend(NEW)
    q = files[f"{arch}-q4_0-v2"]
    facts = read_facts(q)
    assert facts.quant_layout == "qnt2" and "Q4_0" in facts.tensor_types
    best, verdicts = choose(facts)
    assert best.backend == NEW
    assert not next(v for v in verdicts if v.backend == OLD).loadable
    ref, _ = logits(files[f"{arch}-f32"], NEW)
    got, text = logits(q, NEW)
    assert max(abs(a - b) for a, b in zip(got, ref)) < 0.5 * max(abs(x) for x in ref)
    assert text


@pytest.mark.parametrize("arch", ["gptj", "mpt"])
def test_same_model_code_on_both_ggml_trees_agrees(files, arch):
    """F32 files read on the May and the August ggml give the same tokens and logits within the
    cross-era tolerance (measured: MPT < 1e-4; GPT-J 1.4e-3, its F16 KV cache rounds differently)."""
    require_backend(NEW)
    require_backend(OLD)
    a, ta = logits(files[f"{arch}-f32"], NEW)
    b, tb = logits(files[f"{arch}-f32"], OLD)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-2 and ta == tb


def test_tensors_whose_size_is_not_a_multiple_of_16_bytes_load(tmp_path):
    """The August 2023 ggml pads ggml_nbytes() to 16 bytes: an F32 lm_head.bias of 50257 values
    (201028 bytes) was refused as a "size mismatch" until the loader compared the data size itself."""
    from gpt4all_loader.formats.writer import TinyGPTJ, write_gptj

    require_backend(NEW)
    path = write_gptj(tmp_path / "gptj-50257.bin", TinyGPTJ(seed=0, n_vocab=50257), "f32")
    with g.load(path, backend=NEW, n_ctx=32, n_threads=1) as new, g.load(path, backend=OLD, n_ctx=32,
                                                                          n_threads=1) as old:
        new.evaluate([50, 60, 70])
        old.evaluate([50, 60, 70])
        assert max(abs(a - b) for a, b in zip(new.logits(), old.logits())) < 1e-2
