"""The catalog on hand-made facts: one case per row of the sniffing rules and of the manifest."""
from __future__ import annotations

import pytest

from gpt4all_loader.engines.catalog import choose, suggest, type_id
from gpt4all_loader.engines.manifest import load_manifest
from gpt4all_loader.formats.facts import FileFacts, TensorTypeStat
from gpt4all_loader.memory import estimate


def facts(fmt, ver, types, arch="llama", ftype=None, **kw):
    return FileFacts(path="model.bin", size=10_000, format=fmt, format_version=ver, architecture=arch,
                     tensor_types={t: TensorTypeStat(1, 1000) for t in types}, file_type=ftype, **kw)


def judge(f):
    best, allv = choose(f)
    return (best.backend if best else None), {v.backend: " ".join(v.reasons) for v in allv}


@pytest.mark.parametrize("fmt,ver,types,ftype,expected", [
    ("ggml", 0, ["F32", "F16"], 1, "llama-2023-05"),  # 2023-08 misreads unversioned ggml vocab (no scores)
    ("ggmf", 1, ["F32", "F16"], 1, "llama-2023-08"),
    ("ggjt", 1, ["F32", "F16"], 1, "llama-2023-08"),
    ("ggml", 0, ["F32", "Q4_0"], 2, "llama-2023-04"),
    ("ggjt", 1, ["F32", "Q4_0"], 2, "llama-2023-04"),
    ("ggjt", 1, ["F32", "Q4_1", "F16"], 4, "llama-2023-04"),
    ("ggjt", 1, ["F32", "Q4_2"], 5, "llama-2023-04"),
    ("ggjt", 1, ["F32", "Q4_3"], 6, "llama-2023-04"),
    ("ggjt", 1, ["F32", "Q8_0"], 7, "llama-2023-05"),
    ("ggjt", 2, ["F32", "Q4_0"], 2, "llama-2023-05"),
    ("ggjt", 2, ["F32", "Q8_0"], 7, "llama-2023-05"),
    ("ggjt", 2, ["F32", "F16"], 1, "llama-2023-08"),
    ("ggjt", 2, ["F32", "Q5_1"], 9, "llama-2023-08"),
    ("ggjt", 3, ["F32", "Q4_0"], 2, "llama-2023-08"),
    ("ggjt", 3, ["F32", "Q4_K", "Q6_K"], 15, "llama-2023-08"),
])
def test_legacy_routing(fmt, ver, types, ftype, expected):
    best, _ = judge(facts(fmt, ver, types, ftype=ftype))
    assert best == expected


def test_ggjt_v1_q4_0_reasons_name_pr1405():
    _, why = judge(facts("ggjt", 1, ["F32", "Q4_0"], ftype=2))
    assert "PR 1405" in why["llama-2023-05"] and "ggjt v1" in why["llama-2023-05"]
    assert "Q4_0" in why["llama-2023-08"]
    assert "b1012" in why["gguf-2026-10"]


def test_ggjt_v2_q4_0_reason_names_pr1508():
    _, why = judge(facts("ggjt", 2, ["F32", "Q4_0"], ftype=2))
    assert "PR 1508" in why["llama-2023-08"]
    assert "ggjt v2" in why["llama-2023-04"]


def test_q4_3_removed():
    _, why = judge(facts("ggjt", 1, ["F32", "Q4_3"], ftype=6))
    assert "Q4_3 was removed" in why["llama-2023-05"]


def test_header_ftype_gate():
    # Q4_1 tensors in a v2 file whose header says MOSTLY_Q4_1_SOME_F16: the 2023-08 loader refuses the header
    best, why = judge(facts("ggjt", 2, ["F32", "F16", "Q4_1"], ftype=4))
    assert best == "llama-2023-05"
    assert "header ftype" in why["llama-2023-08"]


def test_gguf_v1_only_2023_11():
    best, why = judge(facts("gguf", 1, ["F32", "Q4_0"], tokenizer="llama"))
    assert best == "gguf-2023-11"
    assert "GGUF v1 was dropped in Nov 2023" in why["gguf-2026-10"] and "b1470" in why["gguf-2026-10"]
    assert "predates GGUF" in why["llama-2023-08"]


def test_gguf_v1_new_arch_not_loadable_with_fix():
    f = facts("gguf", 1, ["F32", "Q4_0"], arch="qwen2", tokenizer="gpt2")
    best, allv = choose(f)
    assert best is None
    assert "GGUF v3" in suggest(f, allv)


def test_gguf_v3_llama_q4_k():
    best, why = judge(facts("gguf", 3, ["F32", "Q4_K", "Q6_K"], tokenizer="llama"))
    assert best == "gguf-2026-10"
    assert why["gguf-2026-10"] == ""


def test_prefer_built_backend():
    f = facts("gguf", 3, ["F32", "Q4_K"], tokenizer="llama")
    best, _ = choose(f, prefer=["gguf-2023-11"])
    assert best.backend == "gguf-2023-11"
    best, _ = choose(f, prefer=[])
    assert best.backend == "gguf-2026-10"


def test_new_type_unknown_to_old_gguf():
    _, why = judge(facts("gguf", 3, ["F32", "IQ2_XXS"], tokenizer="llama"))
    assert "IQ2_XXS" in why["gguf-2023-11"] and "b1792" in why["gguf-2023-11"]


def test_gptj_gguf():
    f = facts("gguf", 3, ["F32", "F16"], arch="gptj", tokenizer="gpt2")
    best, why = judge(f)
    assert best is None
    assert "'gptj' has no graph in any llama.cpp" in why["gguf-2026-10"]
    assert "GPT-J" in suggest(f, choose(f)[1])


def test_persimmon_only_2023_11():
    best, why = judge(facts("gguf", 2, ["F32", "Q8_0"], arch="persimmon", tokenizer="llama"))
    assert best == "gguf-2023-11"
    assert "b2952" in why["gguf-2026-10"]


def test_big_endian():
    f = facts("gguf", 3, ["F32"], endianness="big")
    best, why = judge(f)
    assert best is None
    assert all("big-endian" in w for w in why.values())
    assert "gguf-convert-endian" in suggest(f, choose(f)[1])


@pytest.mark.parametrize("tname,needle", [
    ("Q4_0_4_4", "Q4_0_4_4 (id 31) was removed from GGUF at b4282"),
    ("IQ4_NL_4_4", "id 36"),
    ("TYPE_43", "id 43"),
])
def test_removed_and_unknown_types(tname, needle):
    f = facts("gguf", 3, ["F32", tname], tokenizer="llama")
    best, why = judge(f)
    # the 2024-09 era still reads the ARM repack types 31-33; nothing reads the others
    assert best == ("gguf-2024-09" if tname.startswith("Q4_0_") else None)
    assert needle in why["gguf-2026-10"]
    if best is None:
        assert suggest(f, choose(f)[1])


def test_type_id_parsing():
    assert type_id("Q4_0_4_4") == 31
    assert type_id("TYPE_43") == 43
    assert type_id("Q9_9") is None


def test_split_experts():
    f = facts("gguf", 3, ["F32", "Q4_K"], arch="llama", tokenizer="llama", split_experts=True)
    best, why = judge(f)
    assert best == "gguf-2024-09"   # the last era with the split-expert loader
    assert "b3990" in why["gguf-2026-10"]
    assert "predates MoE" in why["gguf-2023-11"]
    without = {n: s for n, s in load_manifest().items() if n != "gguf-2024-09"}
    assert choose(f, without)[0] is None
    assert "convert_hf_to_gguf" in suggest(f, choose(f, without)[1], specs=without)


def test_unknown_architecture():
    f = facts("gguf", 3, ["F32"], arch="bamba9", tokenizer="gpt2")
    best, why = judge(f)
    assert best is None
    assert "unknown to every pinned llama.cpp" in why["gguf-2026-10"]
    assert "newer" in suggest(f, choose(f)[1])


def test_unknown_tokenizer_on_old_gguf():
    best, why = judge(facts("gguf", 3, ["F32"], arch="llama", tokenizer="bert"))
    assert best == "gguf-2026-10"
    assert "tokenizer model 'bert'" in why["gguf-2023-11"]


def test_lora_never_loadable():
    f = facts("ggla", 1, ["F32"], kind="lora")
    best, why = judge(f)
    assert best is None
    assert all("LoRA" in w for w in why.values())
    assert "base model" in suggest(f, choose(f)[1])


def test_not_a_model_never_loadable():
    f = FileFacts(path="x.bin", size=44, format="html", kind="not-a-model", description="an HTML page")
    best, why = judge(f)
    assert best is None
    assert all("not a model file" in w for w in why.values())
    assert "download" in suggest(f, choose(f)[1])


def test_truncated_reason():
    f = facts("gguf", 3, ["F32"], tokenizer="llama", truncated=True, data_offset=100, data_bytes_expected=50_000)
    best, why = judge(f)
    assert best is None
    assert "expected 50100 bytes, have 10000" in why["gguf-2026-10"]


def test_build_suggestion_when_not_built():
    f = facts("ggjt", 1, ["F32", "Q4_0"], ftype=2)
    allv = choose(f)[1]
    assert suggest(f, allv, built=["gguf-2026-10"]) == "build it with: gpt4all-build --only llama-2023-04"
    assert suggest(f, allv, built=["llama-2023-04"]) is None


def test_memory_estimate_shapes():
    f = facts("gguf", 3, ["F32", "Q4_K"], tokenizer="llama", n_params=7_000_000_000,
              hparams={"n_layer": 32, "n_embd": 4096, "n_head": 32, "n_head_kv": 8, "n_vocab": 32000,
                       "n_ff": 14336, "n_ctx_train": 8192})
    f.tensor_types = {"Q4_K": TensorTypeStat(200, 4_000_000_000), "F32": TensorTypeStat(65, 1_000_000)}
    cpu = estimate(f, ctx_size=4096)
    assert cpu["kv_bytes"] == 2 * 32 * 4096 * (128 * 8) * 2
    assert cpu["vram_bytes"] == 0 and cpu["ram_bytes"] > cpu["weights_bytes"]
    gpu = estimate(f, ctx_size=4096, gpu_layers=99)
    assert gpu["gpu_layers"] == 33 and gpu["vram_bytes"] > gpu["ram_bytes"]
    half = estimate(f, ctx_size=4096, gpu_layers=16)
    assert 0 < half["vram_bytes"] < gpu["vram_bytes"]


def test_memory_estimate_legacy_scratch():
    f = facts("ggjt", 1, ["F32", "Q4_0"], ftype=2, n_params=6_700_000_000,
              hparams={"n_layer": 32, "n_embd": 4096, "n_head": 32, "n_vocab": 32000})
    m = estimate(f, ctx_size=512, era="2023-04")
    assert m["compute_bytes"] == (512 + 512 + 768) * 1024 * 1024
    m8 = estimate(f, ctx_size=2048, era="2023-08", gpu_layers=1)  # the CUDA build of 2023-08: scratch
    assert m8["compute_bytes"] == (2048 // 16 + 100 + 160 + 10) * 1024 * 1024
