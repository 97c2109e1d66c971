"""gpt4all 1.0.8 (the reference) reads the tiny Falcon, Replit, StarCoder and BERT files our writers make.

This validates the writers against the real 2023 readers: each file loads in gpt4all 1.0.8 (in a child
process), every test text tokenizes to something, decoders produce greedy tokens and BERT produces a
unit-length embedding of n_embd floats.  Skipped only when the gpt4all 1.0.8 wheel cannot be fetched.
"""
from __future__ import annotations

import math

import pytest
from zoo_common import ZOO_KINDS, ZOO_TEXTS, ZOO_TEXTS_BERT, gpt4all108, gpt4all108_lib_dir, write_zoo_files


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    return write_zoo_files(tmp_path_factory.mktemp("zoo108"))


@pytest.fixture(scope="module")
def lib_dir():
    return gpt4all108_lib_dir()


@pytest.fixture(scope="module")
def reference(zoo_files, lib_dir):
    """name -> gpt4all 1.0.8's results for every text (computed once per file)."""
    cache: dict[str, list] = {}

    def get(name: str) -> list:
        if name not in cache:
            bert = name.startswith("bert")
            cache[name] = gpt4all108(lib_dir, zoo_files[name], ZOO_TEXTS_BERT if bert else ZOO_TEXTS, n_predict=6,
                                     embed=bert)
        return cache[name]
    return get


@pytest.mark.parametrize("kind", ZOO_KINDS)
@pytest.mark.parametrize("ftype", ["f32", "f16"])
def test_gpt4all108_runs_the_tiny_file(reference, kind, ftype):
    from gpt4all_loader.formats import writer as w

    results = reference(f"{kind}-{ftype}")
    assert [r["prompt"] for r in results] == (ZOO_TEXTS_BERT if kind == "bert" else ZOO_TEXTS)
    for r in results:
        assert r["prompt_tokens"], f"gpt4all tokenized {r['prompt']!r} to nothing"
        if kind == "bert":
            model = w.TinyBert(seed=5)
            assert r["prompt_tokens"][0] == 101 and 102 not in r["prompt_tokens"]  # [CLS] first, no [SEP]
            assert len(r["embedding"]) == model.n_embd
            assert math.isclose(math.fsum(x * x for x in r["embedding"]), 1.0, rel_tol=1e-4)
        else:
            assert r["greedy"], f"no greedy tokens after {r['prompt']!r}"


@pytest.mark.parametrize("kind", ["falcon", "starcoder"])
def test_gpt4all108_runs_q4_0(reference, kind):
    """Q4_0 in ggml quant version 2 blocks (18 bytes per 32 values), the type of the published Falcon."""
    results = reference(f"{kind}-q4_0")
    assert all(r["prompt_tokens"] and r["greedy"] for r in results)
    assert [r["prompt_tokens"] for r in results] == [r["prompt_tokens"] for r in reference(f"{kind}-f32")]


@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_tokenization_does_not_depend_on_the_weight_type(reference, kind):
    f32, f16 = reference(f"{kind}-f32"), reference(f"{kind}-f16")
    assert [r["prompt_tokens"] for r in f32] == [r["prompt_tokens"] for r in f16]


def test_replit_segments_spaces_as_the_space_piece(reference):
    """Replit: a space becomes "▁" (U+2581) before segmentation, so " world" is one piece."""
    from gpt4all_loader.formats.writer import TinyReplit

    vocab = TinyReplit(seed=5).vocab()
    toks = reference("replit-f32")[0]["prompt_tokens"]  # "Hello world"
    assert b"".join(vocab[t] for t in toks) == "Hello▁world".encode()
    assert "▁world".encode() in [vocab[t] for t in toks]


@pytest.mark.parametrize("kind", ["falcon", "starcoder"])
def test_greedy_vocabularies_rebuild_the_text(reference, kind):
    """Falcon/StarCoder: greedy longest match over raw bytes; every byte is a token, so nothing is dropped."""
    from gpt4all_loader.formats import writer as w

    model = w.TinyFalcon(seed=5) if kind == "falcon" else w.TinyStarCoder(seed=5)
    vocab = model.vocab()
    for r in reference(f"{kind}-f32"):
        assert b"".join(vocab[t] for t in r["prompt_tokens"]) == r["prompt"].encode()


@pytest.mark.parametrize("kind", ["falcon", "replit", "starcoder"])
def test_greedy_continuations_move_on(reference, kind):
    """The tiny weights do not lock greedy decoding on one token, so a comparison exercises the cache and
    the positions (Replit's output is tied to its embedding: its writer keeps the embeddings small)."""
    assert all(len(set(r["greedy"])) > 1 for r in reference(f"{kind}-f32"))
