"""The pinned backends as built: isolation, determinism, coexistence in one process, hashed inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROBE_TOKENS, backend_built, require_backend

import gpt4all_loader as g
from gpt4all_loader.engines import cache, native, sdist
from gpt4all_loader.engines.manifest import load_manifest
from gpt4all_loader.engines.variants import VariantChoice, built_variants, choose_variant, cpu_flags
from gpt4all_loader.errors import BackendError, BuildError

ROOT = Path(__file__).resolve().parent.parent

#: for each backend, one tiny file it serves (key into the tiny_llama fixture)
SERVED = {
    "llama-2023-04": ("ggjt", 1, "f32"),
    "llama-2023-05": ("ggjt", 2, "f32"),
    "llama-2023-08": ("ggjt", 3, "f32"),
    "gguf-2023-11": ("gguf", 1, "f32"),
    "gguf-2026-10": ("gguf", 3, "f32"),
}


def greedy(path, backend, n=8):
    with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=1) as m:
        return m.generate(PROBE_TOKENS, max_tokens=n, temperature=0, stream=False), m.info


@pytest.mark.parametrize("backend", sorted(SERVED))
def test_each_backend_loads_its_era_and_is_deterministic(backend, tiny_llama):
    require_backend(backend)
    path = tiny_llama[SERVED[backend]]
    first, info = greedy(path, backend)
    second, _ = greedy(path, backend)
    assert first and first == second
    assert info.backend == backend and info.variant in ("cpu", "cpu-avxonly")
    assert info.n_vocab == 362 and info.n_ctx >= 64  # 2026 rounds n_ctx up to its padding
    spec = load_manifest()[backend]
    assert spec.llama_cpp.split()[0] in info.engine


def test_all_backends_in_one_process_interleaved(tiny_llama):
    """Five eras of ggml side by side: each gives, interleaved, exactly what it gives alone."""
    names = [b for b in sorted(SERVED) if "cpu" in built_variants().get(b, [])]
    if len(names) < len(SERVED):
        pytest.skip(f"needs all backends built; built: {names}")
    alone = {b: greedy(tiny_llama[SERVED[b]], b)[0] for b in names}
    models = {b: g.load(tiny_llama[SERVED[b]], backend=b, device="cpu", n_ctx=64, n_threads=1) for b in names}
    try:
        streams = {b: m.generate(PROBE_TOKENS, max_tokens=8, stream=True) for b, m in models.items()}
        outs = {b: [] for b in names}
        active = list(names)
        while active:  # one piece from each era in turn
            for b in list(active):
                piece = next(streams[b], None)
                if piece is None:
                    active.remove(b)
                else:
                    outs[b].append(piece)
        assert {b: "".join(o) for b, o in outs.items()} == alone
    finally:
        for m in models.values():
            m.close()


def test_libraries_export_only_the_shim():
    libs = sorted(cache.lib_dir().glob("libg4a-*.so"))
    if not libs:
        pytest.skip("no backend built")
    for so in libs:
        out = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True)
        names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
        foreign = [n for n in names if not n.startswith("g4a_")]
        assert names and not foreign, (so.name, foreign[:5])
        soname = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True).stdout
        assert f"[{so.name}]" in soname  # unique SONAME per era and variant


def test_tampered_sdist_is_refused(tmp_path):
    spec = load_manifest()["llama-2023-04"]
    fake = tmp_path / f"llama_cpp_python-{spec.version}.tar.gz"
    fake.write_bytes(b"not the pinned sdist")
    with pytest.raises(BuildError, match=r"sha256 .* does not match the pinned"):
        sdist.fetch(spec.sdist, spec.sha256, dest=tmp_path)


def test_missing_and_corrupt_library_errors(tmp_path):
    with pytest.raises(BackendError, match=r"not built .* gpt4all-build --only nosuch --variant cpu"):
        native.open_backend("nosuch", "cpu")
    bad = tmp_path / "libg4a-broken-cpu.so"
    bad.write_bytes(b"\x7fELF garbage")
    with pytest.raises(BackendError, match=r"cannot open backend library .*libg4a-broken-cpu.so"):
        native.open_backend("broken", "cpu", path=bad)


def test_build_list_json_contract():
    out = subprocess.run([sys.executable, str(ROOT / "build_backends.py"), "--list", "--json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    declared = {(n, v) for n, s in load_manifest().items() for v in s.variants}
    assert {(r["name"], r["variant"]) for r in rows} == declared
    for r in rows:
        assert {"name", "variant", "built", "path", "sdist", "sha256"} <= set(r)
        assert isinstance(r["built"], bool) and r["path"].endswith(".so") and len(r["sha256"]) == 64
        assert r["built"] == Path(r["path"]).is_file()


def test_variant_needing_missing_cpu_features_is_never_chosen(monkeypatch):
    require_backend("llama-2023-04")
    # a CPU with AVX but no AVX2/FMA/F16C must get the avx-only build, never the AVX2 one
    monkeypatch.setattr("gpt4all_loader.engines.variants.cpu_flags", lambda: frozenset({"avx", "sse3"}))
    choice = choose_variant("llama-2023-04", "cpu")
    if "cpu-avxonly" in built_variants()["llama-2023-04"]:
        assert choice.variant == "cpu-avxonly"
    else:
        assert choice.variant is None
    assert "lacks avx2" in choice.reason
    # and a CPU without AVX gets nothing rather than a crash
    monkeypatch.setattr("gpt4all_loader.engines.variants.cpu_flags", lambda: frozenset({"sse3"}))
    assert choose_variant("llama-2023-04", "cpu").variant is None


def test_avxonly_variant_gives_the_same_tokens(tiny_llama):
    """The old-CPU build is the same engine: same greedy tokens as the AVX2 build."""
    require_backend("llama-2023-08", "cpu-avxonly")
    require_backend("llama-2023-08", "cpu")
    path = tiny_llama[SERVED["llama-2023-08"]]
    from gpt4all_loader.model import load as _load
    a = greedy(path, "llama-2023-08")[0]
    be = native.open_backend("llama-2023-08", "cpu-avxonly")
    assert "AVX2 = 0" in be.info()
    import gpt4all_loader.engines.variants as variants_mod
    orig = variants_mod.choose_variant
    try:
        variants_mod.choose_variant = lambda b, d, **kw: VariantChoice("cpu-avxonly", "cpu", "test: old CPU")
        with _load(path, backend="llama-2023-08", n_ctx=64, n_threads=1) as m:
            assert m.info.variant == "cpu-avxonly"
            assert m.generate(PROBE_TOKENS, max_tokens=8) == a
    finally:
        variants_mod.choose_variant = orig


def test_cpu_flags_are_read():
    flags = cpu_flags()
    assert flags, "/proc/cpuinfo flags could not be read"


DEQUANT_CHECK = r"""
import json, struct, sys
from gpt4all_loader.engines import native
out = {}
for arg in sys.argv[1:]:
    name, variant = arg.split(":")
    be = native.open_backend(name, variant)
    ffi = native.ffi()
    src = ffi.new("uint16_t[2]", [0x3C00, 0xC000])          # F16 1.0 and -2.0
    dst = ffi.new("float[2]")
    rc = be.lib.g4a_dequantize(1, src, dst, 2)
    out[arg] = [rc, dst[0], dst[1]]
print(json.dumps(out))
"""


def test_fp16_tables_are_ready_before_any_load():
    """2023 ggml fills its fp16 table in ggml_init(): dequantize/quantize must not see zeros when they
    run first in a process (a fresh process is the only honest test).  The cpu-avxonly variants
    matter most: without F16C every F16 value goes through that table (the GPT-J/MPT backend gave
    zeros there until its dequantizer initialised ggml before converting F16)."""
    names = [f"{b}:{v}" for b in load_manifest() for v in ("cpu", "cpu-avxonly") if backend_built(b, v)]
    if not names:
        pytest.skip("no backend built")
    out = subprocess.run([sys.executable, "-c", DEQUANT_CHECK, *names], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.splitlines()[-1])
    assert got == {n: [0, 1.0, -2.0] for n in names}


QUANT_F16 = r"""
import sys
from gpt4all_loader.convert.quantize import quantize
import gpt4all_loader as g
quantize(sys.argv[1], sys.argv[2], "Q4_0", backend="llama-2023-04")
with g.load(sys.argv[2], n_ctx=64, n_threads=1) as m:
    m.evaluate([1, 300, 301])
    print(max(abs(x) for x in m.logits()))
"""


def test_quantizing_an_f16_file_first_thing_in_a_process(tiny_llama, tmp_path):
    require_backend("llama-2023-04")
    out = subprocess.run([sys.executable, "-c", QUANT_F16, str(tiny_llama[("ggjt", 1, "f16")]),
                          str(tmp_path / "q.bin")], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) > 0.5   # an all-zero model would give 0 logits


ABORT_AT_LOAD = r"""
import sys
from gpt4all_loader.engines import native
from gpt4all_loader.formats.writer import TinyLlama, write_gguf
m = TinyLlama(seed=0, n_layer=1)
toks, scores, types = m.gguf_vocab()
kv = [("general.architecture", 8, "llama"), ("llama.context_length", 4, 64), ("llama.embedding_length", 4, 64),
      ("llama.block_count", 4, 1000), ("llama.feed_forward_length", 4, m.n_ff),
      ("llama.attention.head_count", 4, 4), ("llama.attention.layer_norm_rms_epsilon", 6, 1e-6),
      ("tokenizer.ggml.model", 8, "llama"), ("tokenizer.ggml.tokens", (9, 8), toks),
      ("tokenizer.ggml.scores", (9, 6), scores), ("tokenizer.ggml.token_type", (9, 5), types)]
write_gguf(sys.argv[1], kv, [("token_embd.weight", 0, [64, m.n_vocab])])
be = native.open_backend("gguf-2026-10", "cpu")
ffi = native.ffi()
be.lib.g4a_load(sys.argv[1].encode(), ffi.new("g4a_load_params *", dict(n_ctx=64, n_threads=1)))
print("the engine returned")
"""


def test_an_engine_abort_during_a_load_keeps_its_last_words(tmp_path):
    """The shim points stderr at a capture file during a load; when the engine aborts there (here a
    block_count above LLAMA_MAX_LAYERS, handed to native code directly, past every check of ours),
    its assertion text must still reach the real stderr instead of dying with the capture file."""
    require_backend("gguf-2026-10")
    proc = subprocess.run([sys.executable, "-c", ABORT_AT_LOAD, str(tmp_path / "layers.gguf")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    assert proc.returncode != 0 and "the engine returned" not in proc.stdout
    assert "GGML_ASSERT(hparams.n_layer_all > 0" in proc.stderr
