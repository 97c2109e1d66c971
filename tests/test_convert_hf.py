"""Hugging Face GPT-J, LLaMA and MPT folders converted without torch, checked against a numpy forward pass.

Each fixture writes a tiny HF-style folder: config.json, weights drawn from a seeded numpy generator
and saved with ``safetensors.numpy`` (an independent writer for our header+memmap reader), and
tokenizer files built with ``tokenizers`` (byte-level BPE) or ``sentencepiece``.  The reference is
the HF model's arithmetic written out in float64 numpy below (GPT-J: parallel attention + MLP,
interleaved partial rotary, gelu_new; LLaMA: RMS norm, rotate_half RoPE on the *unpermuted* q/k, GQA,
SwiGLU; MPT: bias-free LayerNorm, ALiBi, exact GELU, tied output).

Tolerances (logits of these models span 9-11; measured values are printed with -s):

* F32 files: the engines keep the KV cache in F16 and ggml computes GELU through an F16 table, so
  agreement stops at about 1e-4 relative: measured max |dlogit| 1.4e-3 (GPT-J), 1.7e-3 (LLaMA),
  1.6e-3 / 2.0e-3 (MPT ggmm / GGUF), i.e. 1.4e-4 to 1.8e-4 of the logit span; held to ``F32_TOL``
  = 1e-2 (the cross-era tolerance of test_cross_era.py) and the greedy tokens must match.
* F16 files: the weights are rounded to 11 bits: measured 2.8e-3 (GPT-J), 3.9e-3 (LLaMA), 1.6e-3 /
  2.7e-3 (MPT ggmm, whose embedding stays F32 / GGUF); held to ``F16_TOL`` = 2e-2, first greedy
  token must match (F16 rounding may break a near-tie later).
* Quantized GPT4All-era files: see ``QUANT_TOL``.
A wrong permutation, a transposed tensor or a missing rotary changes logits by O(1): far outside all.
"""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
st = pytest.importorskip("safetensors.numpy")
tokenizers = pytest.importorskip("tokenizers")
spm = pytest.importorskip("sentencepiece")

from conftest import backend_built, require_backend, spm_model  # noqa: E402

import gpt4all_loader as g  # noqa: E402
import gpt4all_loader.convert as cv  # noqa: E402
from gpt4all_loader.cli import convert as convert_cli  # noqa: E402
from gpt4all_loader.formats.legacy import tensor_records  # noqa: E402
from gpt4all_loader.formats.sniff import read_facts  # noqa: E402

NEWEST = "gguf-2026-10"
GPTJ_MPT = ("ggml-gpt4all-2023-08", "ggml-gpt4all-2023-05")
F32_TOL, F16_TOL = 1e-2, 2e-2
SENTENCES = ["Once upon a time there lived a little cat.", "The dog said hello to the world.",
             "She read a story about a model file.", "They walked to the river and sat on the bank.",
             "Hello world, the quick brown fox jumps over the lazy dog.", "In the beginning was the word."]
PROMPT = "Once upon a time there lived"


def cli(argv, capsys):
    rc = convert_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --------------------------------------------------------------------------------------------------
# tiny HF folders

def _bpe(folder: Path, as_tokenizer_json: bool, specials=("<|endoftext|>",)) -> "tokenizers.Tokenizer":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 20, trainer)
    if as_tokenizer_json:
        tok.save(str(folder / "tokenizer.json"))
    else:
        tok.model.save(str(folder))  # vocab.json + merges.txt, as GPT-J repositories ship them
    return tok


def _weights(rng, shapes: dict[str, tuple[int, ...]]) -> dict:
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = (rng.uniform(0.9, 1.1, shape) if "bias" not in name
                         else rng.uniform(-0.05, 0.05, shape)).astype(np.float32)
        else:
            b = 0.5 if name.endswith(("wte.weight", "embed_tokens.weight")) else 1.0 / math.sqrt(shape[1])
            if name.startswith("lm_head"):
                b *= 3.0
            out[name] = rng.uniform(-b, b, shape).astype(np.float32)
    return out


def _save(folder: Path, config: dict, w: dict, shards: int = 1) -> None:
    (folder / "config.json").write_text(json.dumps(config))
    names = list(w)
    if shards == 1:
        st.save_file(w, str(folder / "model.safetensors"))
        return
    wmap = {}
    for k in range(shards):
        part = names[k::shards]
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        st.save_file({n: w[n] for n in part}, str(folder / fname))
        wmap.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


@pytest.fixture(scope="module")
def hf_gptj(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny-gptj"
    d.mkdir()
    tok = _bpe(d, as_tokenizer_json=False)
    # vocab_size beyond the tokenizer, as GPT-J's 50400 over 50257 tokens; a multiple of 8 like 50400
    # because the 2023-08 engine compares tensor sizes with ggml_nbytes, which that ggml pads to 16
    # bytes (lm_head.bias F32, wte Q4_0/Q8_0 rows of 18/34 bytes)
    e, h, n, v, rot = 32, 2, 2, (tok.get_vocab_size() + 8) // 8 * 8, 8
    cfg = {"architectures": ["GPTJForCausalLM"], "model_type": "gptj", "vocab_size": v, "n_positions": 128,
           "n_embd": e, "n_head": h, "n_layer": n, "rotary_dim": rot, "n_inner": None,
           "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False}
    shapes = {"transformer.wte.weight": (v, e)}
    for i in range(n):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (e,), p + "ln_1.bias": (e,), p + "attn.q_proj.weight": (e, e),
                       p + "attn.k_proj.weight": (e, e), p + "attn.v_proj.weight": (e, e),
                       p + "attn.out_proj.weight": (e, e), p + "mlp.fc_in.weight": (4 * e, e),
                       p + "mlp.fc_in.bias": (4 * e,), p + "mlp.fc_out.weight": (e, 4 * e),
                       p + "mlp.fc_out.bias": (e,)})
    shapes.update({"transformer.ln_f.weight": (e,), "transformer.ln_f.bias": (e,), "lm_head.weight": (v, e),
                   "lm_head.bias": (v,)})
    w = _weights(np.random.default_rng(1), shapes)
    w["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 128, 128), np.float32))  # a buffer, skipped
    _save(d, cfg, w)
    return d, cfg, w, tok.encode(PROMPT).ids


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):

    d = tmp_path_factory.mktemp("hf") / "tiny-llama"
    d.mkdir()
    model = spm_model(SENTENCES)
    (d / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    e, f, n, h, kv, v = 64, 128, 2, 4, 2, sp.get_piece_size() + 4
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": v, "hidden_size": e,
           "intermediate_size": f, "num_hidden_layers": n, "num_attention_heads": h, "num_key_value_heads": kv,
           "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
    hd = e // h
    shapes = {"model.embed_tokens.weight": (v, e)}
    for i in range(n):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (e,), p + "self_attn.q_proj.weight": (e, e),
                       p + "self_attn.k_proj.weight": (kv * hd, e), p + "self_attn.v_proj.weight": (kv * hd, e),
                       p + "self_attn.o_proj.weight": (e, e), p + "post_attention_layernorm.weight": (e,),
                       p + "mlp.gate_proj.weight": (f, e), p + "mlp.up_proj.weight": (f, e),
                       p + "mlp.down_proj.weight": (e, f)})
    shapes.update({"model.norm.weight": (e,), "lm_head.weight": (v, e)})
    w = _weights(np.random.default_rng(2), shapes)
    _save(d, cfg, w, shards=2)
    return d, cfg, w, [1] + sp.encode(PROMPT)


@pytest.fixture(scope="module")
def hf_mpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny-mpt"
    d.mkdir()
    tok = _bpe(d, as_tokenizer_json=True, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    e, h, n, v = 32, 4, 2, tok.get_vocab_size()
    cfg = {"architectures": ["MPTForCausalLM"], "model_type": "mpt", "vocab_size": v, "max_seq_len": 128,
           "d_model": e, "n_heads": h, "n_layers": n, "expansion_ratio": 4, "no_bias": True,
           "attn_config": {"alibi": True, "alibi_bias_max": 8, "clip_qkv": None, "qk_ln": False,
                           "attn_type": "multihead_attention"}}
    shapes = {"transformer.wte.weight": (v, e)}
    for i in range(n):
        p = f"transformer.blocks.{i}."
        shapes.update({p + "norm_1.weight": (e,), p + "attn.Wqkv.weight": (3 * e, e),
                       p + "attn.out_proj.weight": (e, e), p + "norm_2.weight": (e,),
                       p + "ffn.up_proj.weight": (4 * e, e), p + "ffn.down_proj.weight": (e, 4 * e)})
    shapes["transformer.norm_f.weight"] = (e,)
    w = _weights(np.random.default_rng(3), shapes)
    _save(d, cfg, w)
    return d, cfg, w, tok.encode(PROMPT).ids


# --------------------------------------------------------------------------------------------------
# numpy reference forward passes (float64), last position's logits

def _softmax_attn(q, k, v, bias=None):
    """q, k, v: (H, T, D); causal."""
    t = q.shape[1]
    s = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[2])
    if bias is not None:
        s = s + bias
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def _heads(x, h):
    t, e = x.shape
    return x.reshape(t, h, e // h).transpose(1, 0, 2)


def _merge(x):
    h, t, d = x.shape
    return x.transpose(1, 0, 2).reshape(t, h * d)


def _layernorm(x, w, b=None, eps=1e-5):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w
    return y if b is None else y + b


def ref_gptj(cfg, w, ids):
    W = {k: v.astype(np.float64) for k, v in w.items()}
    h, rot = cfg["n_head"], cfg["rotary_dim"]
    x = W["transformer.wte.weight"][ids]
    pos = np.arange(len(ids))[:, None]
    inv = 1.0 / 10000 ** (np.arange(0, rot, 2) / rot)
    sin, cos = np.repeat(np.sin(pos * inv), 2, -1), np.repeat(np.cos(pos * inv), 2, -1)

    def rope(t):  # (H, T, D): rotate_every_two on the first rot dims
        r, rest = t[..., :rot], t[..., rot:]
        r2 = np.stack([-r[..., 1::2], r[..., ::2]], -1).reshape(r.shape)
        return np.concatenate([r * cos + r2 * sin, rest], -1)

    def gelu_new(z):
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))

    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        a = _layernorm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"])
        q, k, v = (_heads(a @ W[p + f"attn.{n}_proj.weight"].T, h) for n in "qkv")
        att = _merge(_softmax_attn(rope(q), rope(k), v)) @ W[p + "attn.out_proj.weight"].T
        mlp = gelu_new(a @ W[p + "mlp.fc_in.weight"].T + W[p + "mlp.fc_in.bias"]) @ W[p + "mlp.fc_out.weight"].T
        x = x + att + mlp + W[p + "mlp.fc_out.bias"]
    x = _layernorm(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"])
    return (x @ W["lm_head.weight"].T + W["lm_head.bias"])[-1]


def ref_llama(cfg, w, ids):
    W = {k: v.astype(np.float64) for k, v in w.items()}
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // h
    eps = cfg["rms_norm_eps"]
    x = W["model.embed_tokens.weight"][ids]
    pos = np.arange(len(ids))[:, None]
    f = pos * (1.0 / cfg["rope_theta"] ** (np.arange(0, d, 2) / d))
    cos, sin = np.cos(np.concatenate([f, f], -1)), np.sin(np.concatenate([f, f], -1))

    def rope(t):  # rotate_half, as transformers does on the unpermuted weights
        t1, t2 = t[..., : d // 2], t[..., d // 2:]
        return t * cos + np.concatenate([-t2, t1], -1) * sin

    def rms(z, g):
        return z / np.sqrt((z * z).mean(-1, keepdims=True) + eps) * g

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms(x, W[p + "input_layernorm.weight"])
        q = rope(_heads(a @ W[p + "self_attn.q_proj.weight"].T, h))
        k = np.repeat(rope(_heads(a @ W[p + "self_attn.k_proj.weight"].T, kv)), h // kv, 0)
        v = np.repeat(_heads(a @ W[p + "self_attn.v_proj.weight"].T, kv), h // kv, 0)
        x = x + _merge(_softmax_attn(q, k, v)) @ W[p + "self_attn.o_proj.weight"].T
        b = rms(x, W[p + "post_attention_layernorm.weight"])
        gate = b @ W[p + "mlp.gate_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (b @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    return (rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T)[-1]


def ref_mpt(cfg, w, ids):
    W = {k: v.astype(np.float64) for k, v in w.items()}
    h, t = cfg["n_heads"], len(ids)
    slopes = 1.0 / 2 ** (np.arange(1, h + 1) * (cfg["attn_config"]["alibi_bias_max"] / h))  # h a power of 2
    rel = np.arange(t)[None, :] - np.arange(t)[:, None]
    bias = slopes[:, None, None] * rel[None]
    erf = np.vectorize(math.erf)
    x = W["transformer.wte.weight"][ids]
    for i in range(cfg["n_layers"]):
        p = f"transformer.blocks.{i}."
        a = _layernorm(x, W[p + "norm_1.weight"])
        q, k, v = np.split(a @ W[p + "attn.Wqkv.weight"].T, 3, -1)
        x = x + _merge(_softmax_attn(_heads(q, h), _heads(k, h), _heads(v, h), bias)) @ W[p + "attn.out_proj.weight"].T
        u = _layernorm(x, W[p + "norm_2.weight"]) @ W[p + "ffn.up_proj.weight"].T
        x = x + (0.5 * u * (1 + erf(u / math.sqrt(2)))) @ W[p + "ffn.down_proj.weight"].T
    return (_layernorm(x, W["transformer.norm_f.weight"]) @ W["transformer.wte.weight"].T)[-1]


def ref_greedy(fn, cfg, w, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(fn(cfg, w, ids)))
        out.append(nxt)
        ids.append(nxt)
    return out


def engine(path, backend, ids, n=4):
    with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=1) as m:
        m.evaluate(list(ids))
        logits = np.array(m.logits())
        gen = list(m.generate_tokens(list(ids), max_tokens=n, temperature=0))
    return logits, gen


def gptj_mpt_backends() -> list[str]:
    built = [b for b in GPTJ_MPT if backend_built(b)]
    if not built:
        pytest.skip(f"no GPT-J/MPT backend is built ({', '.join(GPTJ_MPT)})")
    return built


def _check(name, fmt, path, backend, fn, cfg, w, ids, outtype):
    ref = fn(cfg, w, ids)
    logits, gen = engine(path, backend, ids)
    d = float(np.abs(logits - ref).max())
    span = float(ref.max() - ref.min())
    want = ref_greedy(fn, cfg, w, ids, len(gen))
    print(f"{name} {fmt} {outtype} on {backend}: max |dlogit| {d:.2e} (logit span {span:.2f}, "
          f"relative {d / span:.1e}); greedy {gen} vs reference {want}")
    assert d <= (F32_TOL if outtype == "f32" else F16_TOL)
    if outtype == "f32":
        assert gen == want
    else:
        assert gen[0] == want[0]
    return d


# --------------------------------------------------------------------------------------------------
# conversions checked against the reference

@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_gptj_to_ggml(hf_gptj, tmp_path, capsys, outtype):
    backends = gptj_mpt_backends()
    src, cfg, w, ids = hf_gptj
    out = tmp_path / "gptj.bin"
    rc, stdout, err = cli([src, "-o", out, "--outtype", outtype], capsys)
    assert rc == 0, err
    assert "LOADABLE" in stdout and "numpy" in err
    assert listing(tmp_path) == ["gptj.bin"]
    facts = read_facts(out)
    assert (facts.format, facts.architecture) == ("ggml", "gptj")
    assert facts.hparams["n_rot"] == cfg["rotary_dim"] and facts.hparams["n_vocab"] == cfg["vocab_size"]
    assert set(facts.tensor_types) == ({"F32"} if outtype == "f32" else {"F32", "F16"})
    for backend in backends:
        _check("GPT-J", "ggml", out, backend, ref_gptj, cfg, w, ids, outtype)


def test_gptj_vocabulary_is_bytes(hf_gptj, tmp_path, capsys):
    """vocab.json's byte-level strings are stored as the bytes they stand for (" the" not "Ġthe")."""
    src = hf_gptj[0]
    out = tmp_path / "gptj.bin"
    assert cli([src, "-o", out, "-q"], capsys)[0] == 0
    toks = read_facts(out, with_vocab=True).kv["tokenizer.ggml.tokens"]
    vocab = json.loads((src / "vocab.json").read_text())
    assert toks[vocab["Ġthe"]] == b" the" and toks[vocab["<|endoftext|>"]] == b"<|endoftext|>"
    assert len(toks) == hf_gptj[1]["vocab_size"] and toks[-1].startswith(b"<|extratoken_")


def test_gptj_refuses_gguf_and_other_quant_types(hf_gptj, tmp_path, capsys):
    src = hf_gptj[0]
    rc, _, err = cli([src, "-o", tmp_path / "gptj.gguf"], capsys)
    assert rc == 2 and "no engine runs GPT-J GGUF" in err and "--format ggml" in err
    rc, _, err = cli([src, "-o", tmp_path / "gptj.bin", "--outtype", "q4_k_m"], capsys)
    assert rc == 2 and "q4_0, q4_1, q5_0, q5_1, q8_0" in err
    assert listing(tmp_path) == []


#: quantized GPT4All-era files against the F32 reference, measured: GPT-J q8_0 0.059, q5_1 0.29,
#: q4_0 0.59, MPT ggmm q8_0 0.048 (random weights quantize worse than trained ones); held to about
#: 1.5x, still far below the logit span of 10 that a wrong block layout or scale would disturb
QUANT_TOL = {"q8_0": 0.1, "q5_1": 0.45, "q4_0": 0.9}


@pytest.mark.parametrize("outtype", list(QUANT_TOL))
def test_gptj_quantized_by_the_eras_quantizer(hf_gptj, tmp_path, capsys, outtype):
    """Blocks made by llama-2023-08's ggml, the ggml backend ggml-gpt4all-2023-08 runs."""
    require_backend("llama-2023-08")
    require_backend("ggml-gpt4all-2023-08")
    src, cfg, w, ids = hf_gptj
    out = tmp_path / "gptj.bin"
    rc, stdout, err = cli([src, "-o", out, "--outtype", outtype], capsys)
    assert rc == 0, err
    assert "LOADABLE by ggml-gpt4all-2023-08" in stdout
    assert listing(tmp_path) == ["gptj.bin"]
    facts = read_facts(out)
    assert facts.quant_layout == "qnt2" and outtype.upper() in facts.tensor_types
    logits, _ = engine(out, "ggml-gpt4all-2023-08", ids)
    d = float(np.abs(logits - ref_gptj(cfg, w, ids)).max())
    print(f"GPT-J ggml {outtype}: max |dlogit| {d:.3f}")
    assert d <= QUANT_TOL[outtype]


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_llama_to_gguf(hf_llama, tmp_path, capsys, outtype):
    require_backend(NEWEST)
    src, cfg, w, ids = hf_llama
    out = tmp_path / "llama.gguf"
    rc, stdout, err = cli([src, "-o", out, "--outtype", outtype], capsys)
    assert rc == 0, err
    assert f"LOADABLE by {NEWEST}" in stdout
    assert listing(tmp_path) == ["llama.gguf"]
    facts = read_facts(out, with_kv=True)
    assert facts.architecture == "llama" and facts.hparams.get("n_head_kv") == 2
    assert facts.kv["tokenizer.ggml.model"] == "llama"
    assert facts.kv["tokenizer.ggml.tokens"]["length"] == cfg["vocab_size"]
    _check("LLaMA", "gguf", out, NEWEST, ref_llama, cfg, w, ids, outtype)


def test_llama_tokenizes_like_sentencepiece(hf_llama, tmp_path, capsys):
    require_backend(NEWEST)
    src, _, _, ids = hf_llama
    out = tmp_path / "llama.gguf"
    assert cli([src, "-o", out, "-q"], capsys)[0] == 0
    with g.load(out, backend=NEWEST, device="cpu", n_ctx=64, n_threads=1) as m:
        assert m.tokenize(PROMPT) == ids


def test_llama_quantized_by_the_newest_quantizer(hf_llama, tmp_path, capsys):
    require_backend(NEWEST)
    src, cfg, w, ids = hf_llama
    out = tmp_path / "q8.gguf"
    rc, _, err = cli([src, "-o", out, "--outtype", "q8_0", "-q"], capsys)
    assert rc == 0, err
    assert read_facts(out).file_type_name == "MOSTLY_Q8_0"
    assert listing(tmp_path) == ["q8.gguf"]
    logits, _ = engine(out, NEWEST, ids)
    assert float(np.abs(logits - ref_llama(cfg, w, ids)).max()) <= 0.3  # Q8_0 rounding (test_convert.py)


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_mpt_both_containers(hf_mpt, tmp_path, capsys, outtype):
    """GGUF on the newest engine and GPT4All's ggmm on the GPT-J/MPT engine, measured side by side."""
    require_backend(NEWEST)
    backends = gptj_mpt_backends()
    src, cfg, w, ids = hf_mpt
    gguf, ggmm = tmp_path / "mpt.gguf", tmp_path / "mpt.bin"
    for out in (gguf, ggmm):
        rc, stdout, err = cli([src, "-o", out, "--outtype", outtype], capsys)
        assert rc == 0, err
        assert "LOADABLE" in stdout
    assert listing(tmp_path) == ["mpt.bin", "mpt.gguf"]
    assert (read_facts(gguf).format, read_facts(ggmm).format) == ("gguf", "ggmm")
    d_gguf = _check("MPT", "gguf", gguf, NEWEST, ref_mpt, cfg, w, ids, outtype)
    d_ggmm = {b: _check("MPT", "ggmm", ggmm, b, ref_mpt, cfg, w, ids, outtype) for b in backends}
    print(f"MPT {outtype}: GGUF/{NEWEST} {d_gguf:.2e} vs "
          + ", ".join(f"ggmm/{b} {d:.2e}" for b, d in d_ggmm.items()))


def test_mpt_ggmm_quantized(hf_mpt, tmp_path, capsys):
    require_backend("llama-2023-08")
    require_backend("ggml-gpt4all-2023-08")
    src, cfg, w, ids = hf_mpt
    out = tmp_path / "mpt.bin"
    rc, stdout, err = cli([src, "-o", out, "--outtype", "q8_0"], capsys)
    assert rc == 0, err
    facts = read_facts(out)
    assert facts.format == "ggmm" and facts.quant_layout == "qnt2"
    recs = {n: t for n, t, _, _, _ in tensor_records(str(out), read_facts(out))}
    assert recs["transformer.wte.weight"] == 0  # ggmm keeps the embedding F32
    logits, _ = engine(out, "ggml-gpt4all-2023-08", ids)
    d = float(np.abs(logits - ref_mpt(cfg, w, ids)).max())
    print(f"MPT ggmm q8_0: max |dlogit| {d:.3f}")
    assert d <= QUANT_TOL["q8_0"]


def test_mpt_gguf_tokenizes_like_tokenizers(hf_mpt, tmp_path, capsys):
    """The GGUF's byte-level BPE (tokens, merges, pre-tokenizer "mpt") splits text as tokenizers does."""
    require_backend(NEWEST)
    src, _, _, ids = hf_mpt
    out = tmp_path / "mpt.gguf"
    assert cli([src, "-o", out, "-q"], capsys)[0] == 0
    with g.load(out, backend=NEWEST, device="cpu", n_ctx=64, n_threads=1) as m:
        assert m.tokenize(PROMPT, add_bos=False) == ids
        assert m.tokenize("<|im_start|>user", add_bos=False, special=True)[0] == 1


def test_bf16_checkpoint_reads_exactly(tmp_path):
    from gpt4all_loader.convert.hf import Checkpoint

    a = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    bf = (a.view(np.uint32) >> 16).astype(np.uint16)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]},
                         "h": {"dtype": "F16", "shape": [2], "data_offsets": [30, 34]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bf.tobytes()
                                                 + np.array([1.5, -2], "<f2").tobytes())
    ck = Checkpoint(tmp_path)
    assert np.array_equal(ck.array("w"), (bf.astype(np.uint32) << 16).view(np.float32))
    assert ck.array("h").tolist() == [1.5, -2.0]


# --------------------------------------------------------------------------------------------------
# bad folders: exit 1 with the reason, no output, no temporary file

def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _refused(src, tmp_path, capsys, words, rc_want=1):
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    rc, _, err = cli([src, "-o", outdir / "x.bin"], capsys)  # .bin: each architecture's own container
    assert rc == rc_want, err
    for word in words:
        assert word in err
    assert listing(outdir) == []


def test_missing_config(hf_mpt, tmp_path, capsys):
    src = _copy(hf_mpt[0], tmp_path / "m")
    (src / "config.json").unlink()
    _refused(src, tmp_path, capsys, ["without config.json"])


def test_missing_shard(hf_llama, tmp_path, capsys):
    src = _copy(hf_llama[0], tmp_path / "m")
    (src / "model-00002-of-00002.safetensors").unlink()
    _refused(src, tmp_path, capsys, ["model-00002-of-00002.safetensors", "missing"])


def test_mismatched_shapes(hf_gptj, tmp_path, capsys):
    src = _copy(hf_gptj[0], tmp_path / "m")
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_embd"] = 48
    (src / "config.json").write_text(json.dumps(cfg))
    _refused(src, tmp_path, capsys, ["transformer.wte.weight", "shape", "do not belong together"])


def test_layer_count_beyond_the_weights(hf_llama, tmp_path, capsys):
    src = _copy(hf_llama[0], tmp_path / "m")
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_hidden_layers"] = 1000
    (src / "config.json").write_text(json.dumps(cfg))
    _refused(src, tmp_path, capsys, ["model.layers.2.", "missing", "1000 layers"])


def test_unknown_architecture(hf_mpt, tmp_path, capsys, monkeypatch):
    src = _copy(hf_mpt[0], tmp_path / "m")
    (src / "config.json").write_text(json.dumps({"architectures": ["FancyNewForCausalLM"]}))
    monkeypatch.setattr(cv.upstream, "missing_hf_packages", lambda: ["torch"])
    _refused(src, tmp_path, capsys, ["'FancyNewForCausalLM' is not GPT-J, LLaMA or MPT", "pip install torch"])


def test_truncated_safetensors(hf_mpt, tmp_path, capsys):
    src = _copy(hf_mpt[0], tmp_path / "m")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 100])
    _refused(src, tmp_path, capsys, ["cut short"])


@pytest.mark.parametrize("header", [b"not json at all", json.dumps({"w": {"dtype": "F32", "shape": [2],
                                                                             "data_offsets": ["0", None]}}).encode(),
                                    json.dumps({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}).encode()])
def test_malformed_safetensors_header(hf_mpt, tmp_path, capsys, header):
    src = _copy(hf_mpt[0], tmp_path / "m")
    (src / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    _refused(src, tmp_path, capsys, ["model.safetensors"])


# --------------------------------------------------------------------------------------------------
# issue 12 part 5: a header that lies about n_layer; each conversion in a child process

def _lying_header(tmp_path: Path, ftype: str) -> Path:
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    p = write_llama(tmp_path / f"ok-{ftype}.bin", TinyLlama(seed=0), "ggjt", ftype=ftype)
    b = bytearray(p.read_bytes())
    struct.pack_into("<i", b, 8 + 4 * 4, 1000)  # magic, version, n_vocab n_embd n_mult n_head, then n_layer
    bad = tmp_path / "src" / f"lying-{ftype}.bin"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(bytes(b))
    return bad


@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_lying_n_layer_is_refused_before_writing(tmp_path, ftype):
    src = _lying_header(tmp_path, ftype)
    outdir = tmp_path / "out"
    outdir.mkdir()
    p = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.convert", str(src), "-o", str(outdir / "x.gguf"),
                        "--outtype", "f16"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr  # not 134 (SIGABRT) nor a negative signal
    assert "n_layer is 1000, the file holds 32 layers" in p.stderr and "Traceback" not in p.stderr
    assert listing(outdir) == []  # no output, no hidden .part file


def test_quantizer_abort_leaves_nothing(tmp_path):
    """An engine abort inside the quantizer ends in a message and an empty directory, because the
    quantizer runs in a child process.  The staged GGUF claims 1000 blocks over 2 (what an unvalidated
    n_layer 1000 header used to stage); the newest quantizer aborts on it (SIGABRT), or refuses it
    once the catalog validates block counts: either way a ConvertError and nothing left behind."""
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    require_backend(NEWEST)
    temps = cv.Temps(tmp_path / "x.gguf")
    stage = temps.new("f32")
    write_llama(stage, TinyLlama(seed=0, n_layer=2), "gguf", ftype="f32")
    b = bytearray(stage.read_bytes())
    k = b.index(b"llama.block_count") + len(b"llama.block_count")
    assert struct.unpack_from("<II", b, k) == (4, 2)  # u32, 2
    struct.pack_into("<I", b, k + 4, 1000)
    stage.write_bytes(bytes(b))
    with pytest.raises(cv.ConvertError) as e:
        try:
            cv.quantize_in_child(stage, temps, cv.Options(outtype="q8_0", quiet=True))
        finally:
            temps.cleanup()
    assert "quantizing to q8_0 failed" in str(e.value) and "nothing was left behind" in str(e.value)
    print(e.value)
    assert listing(tmp_path) == []


def test_import_needs_no_numpy():
    code = "import sys, gpt4all_loader, gpt4all_loader.cli.convert; sys.exit('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_format_ggml_only_for_gptj_and_mpt(hf_llama, tmp_path, capsys):
    rc, _, err = cli([hf_llama[0], "-o", tmp_path / "x.bin", "--format", "ggml"], capsys)
    assert rc == 2 and "LLaMA converts to GGUF only" in err
    assert listing(tmp_path) == []


def test_help_says_which_path(capsys):
    with pytest.raises(SystemExit):
        convert_cli.main(["--help"])
    out = capsys.readouterr().out
    assert "numpy, no torch" in out and "convert_hf_to_gguf.py" in out and "--format" in out
