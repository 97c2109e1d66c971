"""Speed at the edges, same output: a Model evaluates only what follows the prefix its cache already
holds, shifts a full context instead of stopping, and a chat session resends no history.

Every check compares against a freshly loaded model given the same prompt: reuse must never change
what is generated (greedy), in any era.
"""
from __future__ import annotations

import pytest
from conftest import require_backend

import gpt4all_loader as g
from gpt4all_loader.formats.writer import (
    TinyGPTJ,
    TinyLlama,
    TinyMamba,
    TinyMPT,
    write_gptj,
    write_llama,
    write_mamba,
    write_mpt,
)

TEMPLATE = ("{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")

#: (backend, how to write its file)
ERAS = {
    "llama-2023-04": lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "ggjt", version=1, ftype="f32"),
    "llama-2023-05": lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "ggjt", version=2, ftype="f32"),
    "llama-2023-08": lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "ggjt", version=3, ftype="f32"),
    "gguf-2023-11": lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "gguf", version=3, ftype="f32",
                                          chat_template=TEMPLATE),
    "gguf-2024-09": lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "gguf", version=3, ftype="f32",
                                          chat_template=TEMPLATE),
    "gguf-2026-10": lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "gguf", version=3, ftype="f32",
                                          chat_template=TEMPLATE),
    "ggml-gpt4all-2023-05": lambda p: write_gptj(p, TinyGPTJ(seed=0, n_embd=32, n_ctx=512), "f32"),
    "ggml-gpt4all-2023-08": lambda p: write_mpt(p, TinyMPT(seed=0, n_embd=32, n_ctx=512), "ggmm", "f32"),
}


def _load(path, backend, n_ctx=96):
    return g.load(path, backend=backend, n_ctx=n_ctx, n_threads=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("reuse")
    return {b: write(d / f"{b}.bin") for b, write in ERAS.items()}


@pytest.mark.parametrize("backend", sorted(ERAS))
def test_a_shared_prefix_is_not_evaluated_again_and_the_output_is_the_same(files, backend):
    require_backend(backend)
    first, second = "the cat said hello", "the cat said hello world to the dog"
    with _load(files[backend], backend) as m:
        m.generate(first, max_tokens=6)
        held = m.cached_tokens
        want_ids = m.tokenize(second)
        common = next((i for i, (a, b) in enumerate(zip(held, want_ids)) if a != b), min(len(held), len(want_ids)))
        reused = m.generate(second, max_tokens=10)
        assert m.last_evaluated == len(want_ids) - common < len(want_ids)
        again = m.generate(second, max_tokens=10)      # the same prompt: only its last token again
        assert m.last_evaluated == 1
    with _load(files[backend], backend) as fresh:
        assert fresh.generate(second, max_tokens=10) == reused == again
        assert fresh.last_evaluated == len(want_ids)


@pytest.mark.parametrize("backend", sorted(ERAS))
def test_a_generation_longer_than_the_context_goes_on(files, backend):
    """Context shift (keep the prompt's start, drop the older half of the rest) in every era."""
    require_backend(backend)
    with _load(files[backend], backend, n_ctx=48) as m:
        n_ctx = m.info.n_ctx   # the 2024+ eras round the context up to 256
        assert m.info.context_shift == ("cache" if backend == "gguf-2026-10" else "re-evaluate")
        ids = m.tokenize("the cat")
        shifted = list(m.generate_tokens(ids, max_tokens=3 * n_ctx, repeat_penalty=1.3))
        assert len(m.cached_tokens) <= n_ctx and m.cached_tokens[:len(ids)] == ids
        stopped = list(m.generate_tokens(ids, max_tokens=3 * n_ctx, repeat_penalty=1.3, context_shift=False))
    assert len(stopped) < n_ctx and shifted[:len(stopped)] == stopped
    assert len(shifted) > n_ctx, "the generation stopped at the end of the context instead of shifting"


@pytest.mark.parametrize("backend", sorted(ERAS))
def test_the_last_token_ends_the_stream_unevaluated(files, backend):
    """A generation that reaches max_tokens ends as its last token is sampled, without a decode that only
    the next prompt could use (it evaluates that token with the rest of itself)."""
    require_backend(backend)
    with _load(files[backend], backend) as m:
        ids = m.tokenize("the cat said")
        out = list(m.generate_tokens(ids, max_tokens=5))
        assert len(out) == 5 and m.last_generation.finish_reason == "length"
        assert m.cached_tokens == ids + out[:-1]


def test_reset_and_evaluate_keep_the_cache_honest(files):
    require_backend("gguf-2026-10")
    with _load(files["gguf-2026-10"], "gguf-2026-10") as m:
        m.evaluate([1, 300, 301])
        assert m.cached_tokens == [1, 300, 301] and m.n_past == 3
        with pytest.raises(g.BackendError):
            m.evaluate([10**6])                  # outside the vocabulary: nothing is half-known after it
        assert m.cached_tokens == [] and m.n_past == 0
        m.generate([1, 300, 301, 302], max_tokens=2)
        m.reset()
        assert m.cached_tokens == [] and m.n_past == 0


def test_recurrent_models_start_again_instead_of_cutting_their_state(tmp_path):
    """A Mamba state cannot be cut back to a prefix (the engine refuses): the model evaluates the
    whole prompt again and still answers what a fresh model answers."""
    require_backend("gguf-2026-10")
    path = write_mamba(tmp_path / "mamba.gguf", TinyMamba(seed=0))
    with _load(path, "gguf-2026-10") as m:
        assert m.info.context_shift == "re-evaluate"
        m.generate([1, 300, 301, 302], max_tokens=4)
        reused = m.generate([1, 300, 301, 302, 303, 304], max_tokens=6)
    with _load(path, "gguf-2026-10") as fresh:
        assert fresh.generate([1, 300, 301, 302, 303, 304], max_tokens=6) == reused


@pytest.mark.parametrize("backend", ["gguf-2026-10", "gguf-2023-11"])
def test_a_chat_session_resends_no_history(files, backend):
    require_backend(backend)
    turns = ["Hello", "the cat said", "once upon a time"]
    with _load(files[backend], backend, n_ctx=256) as m, m.chat_session(system="the story") as chat:
        replies, evaluated = [], []
        for t in turns:
            replies.append(chat.send(t, max_tokens=6))
            evaluated.append(m.last_evaluated)
        assert [x["role"] for x in chat.messages] == ["system"] + ["user", "assistant"] * len(turns)
    with _load(files[backend], backend, n_ctx=256) as fresh:
        history = [{"role": "system", "content": "the story"}]
        for t, r in zip(turns, replies):
            history.append({"role": "user", "content": t})
            fresh.reset()
            assert fresh.chat(history, max_tokens=6) == r   # stateless, from an empty cache
            full = fresh.last_evaluated                      # the whole conversation so far
            history.append({"role": "assistant", "content": r})
    # later turns evaluate only their new text, far less than the whole conversation
    assert evaluated[-1] < full // 2, (evaluated, full)


def test_flash_attention_is_a_load_option(files):
    """flash_attn="auto" is the era's default (on for the CPU in 2026, off in 2024-09); True/False
    set it; an era without flash attention refuses True.  The logits agree either way."""
    out = {}
    for backend, fa, want in (("gguf-2026-10", "auto", "auto"), ("gguf-2026-10", False, "off"),
                              ("gguf-2026-10", True, "on"), ("gguf-2024-09", "auto", "off"),
                              ("gguf-2024-09", True, "on"), ("llama-2023-08", "auto", "off")):
        require_backend(backend)
        with g.load(files[backend], backend=backend, n_ctx=64, n_threads=1, flash_attn=fa) as m:
            assert m.info.flash_attn == want
            m.evaluate([1, 300, 301, 302])
            out[(backend, fa)] = m.logits()
    ref = out[("gguf-2026-10", False)]
    for key, logits in out.items():
        assert max(abs(a - b) for a, b in zip(logits, ref)) < 1e-2, key
    with pytest.raises(ValueError, match="no flash attention"):
        g.load(files["llama-2023-08"], backend="llama-2023-08", n_ctx=64, flash_attn=True)
