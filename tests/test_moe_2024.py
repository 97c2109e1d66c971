"""The 2024-09 era: Mixtral-style GGUF files that keep one tensor per expert.

Such files (converted Dec 2023 - Apr 2024) load on no current llama.cpp.  We build them from the
tiny dense LLaMA: two identical experts with a zero router give each expert weight 0.5 after
Mixtral's renormalised top-2, so the MoE output equals the dense FFN.  The split-expert file on
gguf-2024-09 and the merged-expert file on gguf-2026-10 must therefore match the dense model.
"""
from __future__ import annotations

from array import array

from conftest import PROBE_TOKENS, require_backend

import gpt4all_loader as g
from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import TinyLlama, gguf_name, write_gguf, write_llama

U32, I32, F32, STR = 4, 5, 6, 8
N_EXPERT = 2


def moe_file(path, m: TinyLlama, merged: bool):
    toks, scores, types = m.gguf_vocab()
    kv = [("general.architecture", STR, "llama"), ("general.name", STR, "tiny-moe"), ("general.file_type", U32, 0),
          ("llama.context_length", U32, m.n_ctx), ("llama.embedding_length", U32, m.n_embd),
          ("llama.block_count", U32, m.n_layer), ("llama.feed_forward_length", U32, m.n_ff),
          ("llama.rope.dimension_count", U32, m.n_rot), ("llama.attention.head_count", U32, m.n_head),
          ("llama.attention.head_count_kv", U32, m.n_head_kv),
          ("llama.attention.layer_norm_rms_epsilon", F32, m.rms_norm_eps),
          ("llama.expert_count", U32, N_EXPERT), ("llama.expert_used_count", U32, N_EXPERT),
          ("tokenizer.ggml.model", STR, "llama"), ("tokenizer.ggml.tokens", (9, STR), toks),
          ("tokenizer.ggml.scores", (9, F32), scores), ("tokenizer.ggml.token_type", (9, I32), types),
          ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2)]
    tensors = []
    for lname, shape in m.tensor_shapes().items():
        data = m.weights(lname).tobytes()
        name = gguf_name(lname)
        if ".ffn_gate." in name or ".ffn_down." in name or ".ffn_up." in name:
            if merged:
                tensors.append((name.replace(".weight", "_exps.weight"), 0, shape + [N_EXPERT], data * N_EXPERT))
            else:
                tensors += [(name.replace(".weight", f".{e}.weight"), 0, shape, data) for e in range(N_EXPERT)]
            if ".ffn_gate." in name:
                router = name.replace("ffn_gate", "ffn_gate_inp")
                tensors.append((router, 0, [m.n_embd, N_EXPERT], array("f", [0.0] * (m.n_embd * N_EXPERT)).tobytes()))
        else:
            tensors.append((name, 0, shape, data))
    return write_gguf(path, kv, tensors)


def logits_of(path, backend):
    with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=1) as m:
        m.evaluate(PROBE_TOKENS)
        return m.logits(), m.generate(PROBE_TOKENS, max_tokens=8)


def test_split_expert_moe_loads_on_the_2024_era_only(tmp_path):
    require_backend("gguf-2024-09")
    require_backend("gguf-2026-10")
    m = TinyLlama(seed=0, n_layer=4)
    dense = write_llama(tmp_path / "dense.gguf", m, "gguf", version=3, ftype="f32")
    split = moe_file(tmp_path / "split.gguf", m, merged=False)
    merged = moe_file(tmp_path / "merged.gguf", m, merged=True)

    facts = read_facts(split)
    assert facts.split_experts and facts.hparams.get("expert_count") == N_EXPERT
    v = {x.backend: x for x in verdicts(facts)}
    assert v["gguf-2024-09"].loadable
    assert not v["gguf-2026-10"].loadable and "b3990" in " ".join(v["gguf-2026-10"].reasons)
    with g.load(split, n_ctx=64) as model:
        assert model.info.backend == "gguf-2024-09"

    # each engine against its own dense run: MoE routing must not change a single greedy token
    for path, backend in ((split, "gguf-2024-09"), (merged, "gguf-2026-10"), (merged, "gguf-2024-09")):
        ref_logits, ref_text = logits_of(dense, backend)
        logits, text = logits_of(path, backend)
        diff = max(abs(a - b) for a, b in zip(logits, ref_logits))
        assert diff < 1e-4, f"{path.name} on {backend}: {diff:.2e}"
        assert text == ref_text


def test_2024_era_reads_the_same_dense_weights(tiny_llama):
    require_backend("gguf-2024-09")
    require_backend("gguf-2026-10")
    a = logits_of(tiny_llama[("gguf", 3, "f32")], "gguf-2024-09")
    b = logits_of(tiny_llama[("gguf", 3, "f32")], "gguf-2026-10")
    assert max(abs(x - y) for x, y in zip(a[0], b[0])) < 1e-2 and a[1] == b[1]
