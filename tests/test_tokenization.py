"""One tokenization in every era: the same vocabulary gives the same ids and the same text on every
backend that reads it, in every container, and after ``gpt4all-convert`` upgrades it to GGUF.

The reference is the model's own tokenizer as the 2024+ llama.cpp implements it (SentencePiece with
its dummy prefix; control tokens only with ``special``).  The older eras are brought to it by the shim.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import LLAMA_FORMATS, backend_built, fmt_label, require_backend

import gpt4all_loader as g
from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import TinyLlama, write_llama

REFERENCE = "gguf-2026-10"

TEXTS = [
    "", " ", "hello", "Hello world", " leading space", "trailing space ", "double  space", "  two  spaces  ",
    "line\nbreak\n", "tab\there\t", "caf\u00e9 na\u00efve \u00fcber", "\u65e5\u672c\u8a9e\u306e\u6587",
    "emoji \U0001F600 and \U0001F44D\U0001F3FD", "<s>control</s> text <unk>", "</s><s>", "the cat said hello world",
]


def _backends(path: Path) -> list[str]:
    """Every built backend whose catalog verdict accepts the file."""
    return [v.backend for v in verdicts(read_facts(path)) if v.loadable and backend_built(v.backend)]


def _tokenizations(model: g.Model) -> dict:
    out = {}
    for text in TEXTS:
        for special in (False, True):
            for add_bos in (True, False):
                out[(text, special, add_bos)] = model.tokenize(text, add_bos=add_bos, special=special)
    return out


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
    """TinyLlama with a lone-space piece in every container, plus the GGUF upgrade of each legacy one."""
    from gpt4all_loader.convert import convert

    d = tmp_path_factory.mktemp("tok")
    model = TinyLlama(seed=0, space_piece=True)
    files = {}
    for fmt, version in LLAMA_FORMATS:
        p = d / f"tok-{fmt_label(fmt, version)}.bin"
        write_llama(p, model, fmt, version=version, ftype="f32")
        files[fmt_label(fmt, version)] = p
        if fmt != "gguf":
            up = d / f"tok-{fmt_label(fmt, version)}-upgraded.gguf"
            convert(p, up, outtype="f32")
            files[fmt_label(fmt, version) + "-upgraded"] = up
    return files


@pytest.fixture(scope="module")
def reference(vocab_files):
    require_backend(REFERENCE)
    with g.load(vocab_files["gguf3"], backend=REFERENCE, vocab_only=True) as m:
        return _tokenizations(m)


def test_the_reference_follows_sentencepiece(reference):
    """The dummy prefix, BOS only when asked, control tokens only with special, [] for no text."""
    ref = reference
    assert ref[("", False, True)] == [1] and ref[("", False, False)] == []
    hello = ref[("hello", False, False)]
    assert ref[("hello", False, True)] == [1] + hello
    space = 3 + 256  # the lone-space piece comes first after the control and byte tokens
    assert ref[(" ", False, False)] == [space, space]  # the dummy prefix and the space itself

    assert 1 not in ref[("<s>control</s> text <unk>", False, False)]
    assert ref[("</s><s>", True, False)] == [2, 1]


@pytest.mark.parametrize("name", [fmt_label(f, v) for f, v in LLAMA_FORMATS]
                         + [fmt_label(f, v) + "-upgraded" for f, v in LLAMA_FORMATS if f != "gguf"])
def test_every_container_and_era_tokenizes_like_the_reference(vocab_files, reference, name):
    path = vocab_files[name]
    backends = _backends(path)
    assert backends, f"no built backend reads {name}"
    for backend in backends:
        with g.load(path, backend=backend, vocab_only=True) as m:
            got = _tokenizations(m)
            wrong = {k: (v, reference[k]) for k, v in got.items() if v != reference[k]}
            assert not wrong, f"{name} on {backend}: {len(wrong)} differ, e.g. {next(iter(wrong.items()))}"
            for text in TEXTS:  # detokenization gives the text back, in every era
                assert m.detokenize(m.tokenize(text)) == text, (name, backend, text)


def test_a_full_load_tokenizes_like_a_vocabulary_load(vocab_files, reference):
    for name, backend in (("ggjt3", "llama-2023-08"), ("ggjt1", "llama-2023-04"), ("gguf3", REFERENCE)):
        require_backend(backend)
        with g.load(vocab_files[name], backend=backend, n_ctx=64, n_threads=1) as m:
            assert not m.info.vocab_only
            assert _tokenizations(m) == reference, (name, backend)


@pytest.mark.parametrize("name,backend", [("ggml", "llama-2023-04"), ("ggmf1", "llama-2023-05"),
                                          ("ggjt1", "llama-2023-08"), ("ggjt2", "llama-2023-05"),
                                          ("ggjt3", "llama-2023-08")])
def test_greedy_text_of_the_upgrade_equals_the_original(vocab_files, name, backend):
    """Same text prompt, same weights: the GGUF upgrade on the newest era writes the same text."""
    require_backend(backend)
    require_backend(REFERENCE)
    prompt = "Once upon a time the cat"
    with g.load(vocab_files[name], backend=backend, n_ctx=64, n_threads=1) as old:
        want_ids = old.tokenize(prompt)
        want = old.generate(prompt, max_tokens=12, temperature=0)
    with g.load(vocab_files[name + "-upgraded"], backend=REFERENCE, n_ctx=64, n_threads=1) as new:
        assert new.tokenize(prompt) == want_ids
        assert new.generate(prompt, max_tokens=12, temperature=0) == want


def test_pieces_are_the_same_in_every_era(vocab_files):
    """token_bytes of every id agree across eras (byte tokens, words with spaces, control tokens)."""
    require_backend(REFERENCE)
    with g.load(vocab_files["gguf3"], backend=REFERENCE, vocab_only=True) as m:
        want = [m.token_bytes(t) for t in range(m.n_vocab)]
    for name in ("ggml", "ggjt1", "ggjt3", "gguf1"):
        for backend in _backends(vocab_files[name]):
            with g.load(vocab_files[name], backend=backend, vocab_only=True) as m:
                assert [m.token_bytes(t) for t in range(m.n_vocab)] == want, (name, backend)


def test_upgrade_says_how_it_tokenizes(vocab_files):
    kv = read_facts(vocab_files["ggjt3-upgraded"], with_kv=True).kv
    assert kv["tokenizer.ggml.add_space_prefix"] is True and kv["tokenizer.ggml.add_bos_token"] is True
    assert kv["tokenizer.ggml.add_eos_token"] is False
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"],
            kv["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)


def test_vocab_only_model_says_it_cannot_evaluate(vocab_files):
    require_backend(REFERENCE)
    with g.load(vocab_files["gguf3"], backend=REFERENCE, vocab_only=True) as m:
        assert m.info.vocab_only and m.info.n_ctx == 0
        for call in (lambda: m.evaluate([1]), lambda: m.generate("hi"), lambda: m.logits()):
            with pytest.raises(g.BackendError, match="tokenizing only"):
                call()


# --------------------------------------------------------------------------------------------------
# real vocabularies shipped inside the pinned sdists

REAL_TEXTS = ["Hello world", " Hello  world ", "The quick brown fox\njumps over\tthe lazy dog.",
              "caf\u00e9 \u00fcber na\u00efve", "\u65e5\u672c\u8a9e", "\U0001F600\U0001F44D", "<s>hi</s>", "", "  "]


def _real(kind: str) -> Path:
    from gpt4all_loader.testing import realfiles
    try:
        return realfiles.vocab_file(kind)
    except Exception as e:  # noqa: BLE001 - the package index is unreachable
        pytest.skip(f"{kind} could not be fetched: {e}")


def test_real_llama_vocabularies_agree_in_every_container_and_era():
    """LLaMA's own tokenizer as llama.cpp shipped it: ggmf v1 (0.1.10), ggjt v1 (0.1.39), GGUF v1
    (0.1.85) and the GGUF v3 SentencePiece vocabulary (0.3.36), on every era that reads each."""
    require_backend(REFERENCE)
    with g.load(_real("gguf-llama-spm"), backend=REFERENCE) as ref_model:
        assert ref_model.info.vocab_only
        ref = {(t, s): ref_model.tokenize(t, special=s) for t in REAL_TEXTS for s in (False, True)}
    assert ref[("Hello world", False)] == [1, 15043, 3186]  # LLaMA's own ids for this text
    checked = []
    for kind in ("ggmf-v1", "ggjt-v1", "gguf-v1-llama", "gguf-llama-spm"):
        path = _real(kind)
        for backend in _backends(path):
            with g.load(path, backend=backend) as m:  # vocabulary files load vocab-only by default
                got = {(t, s): m.tokenize(t, special=s) for t in REAL_TEXTS for s in (False, True)}
                wrong = {k: (v, ref[k]) for k, v in got.items() if v != ref[k]}
                assert not wrong, f"{kind} on {backend}: {wrong}"
                for t in REAL_TEXTS:
                    assert m.detokenize(m.tokenize(t)) == t, (kind, backend, t)
            checked.append((kind, backend))
    assert len(checked) >= 6, checked


# --------------------------------------------------------------------------------------------------
# regressions that used to end the process or fail: run where a crash cannot take the runner down

def _child(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode >= 0, f"the child died of signal {-proc.returncode}: {proc.stderr[-2000:]}"
    return proc


def test_byte_tokens_stored_as_text_give_an_error_not_an_abort(tmp_path):
    """A ggjt vocabulary whose byte tokens are '<0xXX>' text: the 2023-08 tokenizer threw
    std::out_of_range through the ABI (terminate); now the byte is named."""
    require_backend("llama-2023-08")
    path = tmp_path / "bytes-as-text.bin"
    proc = _child(f"""
        from gpt4all_loader.formats.writer import TinyLlama, write_llama
        import gpt4all_loader as g

        class ByteText(TinyLlama):
            def legacy_vocab(self):
                v = super().legacy_vocab()
                return v[:3] + [(f"<0x{{b:02X}}>".encode(), 0.0) for b in range(256)] + v[259:]

        write_llama({str(path)!r}, ByteText(seed=0, space_piece=True), "ggjt", version=3, ftype="f32")
        with g.load({str(path)!r}, backend="llama-2023-08", vocab_only=True) as m:
            print("ok", m.tokenize("the cat"))
            try:
                m.tokenize("the cat\\nworld")
            except g.BackendError as e:
                print("error:", e)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "ok [1," in proc.stdout
    assert "error:" in proc.stdout and "0x0A" in proc.stdout and "gpt4all-convert" in proc.stdout


def test_many_byte_tokens_per_byte_fit(tmp_path):
    """Without a lone-space piece, the GGUF eras spell each space as three byte tokens: more tokens
    than bytes, which a fixed one-token-per-byte buffer could not hold."""
    require_backend(REFERENCE)
    path = tmp_path / "no-space-piece.gguf"
    write_llama(path, TinyLlama(seed=0), "gguf", ftype="f32")
    proc = _child(f"""
        import gpt4all_loader as g
        with g.load({str(path)!r}, backend={REFERENCE!r}, vocab_only=True) as m:
            text = "  two  spaces" + " " * 50
            ids = m.tokenize(text)
            print(len(text.encode()), len(ids), ids.count(3 + 0xE2))
    """)
    assert proc.returncode == 0, proc.stderr
    n_bytes, n_ids, n_e2 = map(int, proc.stdout.split())
    # each space not absorbed by a word piece ("\u2581t", "\u2581s") is "\u2581" spelled as three byte tokens
    assert n_ids > n_bytes and n_e2 == 55 - 2


def test_probe_load_of_a_vocabulary_file_succeeds():
    """gpt4all-probe --load of a vocabulary-only file loads it for tokenizing (it used to report FAILED)."""
    require_backend("llama-2023-04")
    path = _real("ggjt-v1")
    proc = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.probe", "--load", "--json", str(path)],
                          capture_output=True, text=True, timeout=300)
    import json

    rep = json.loads(proc.stdout)[0]
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert rep["kind"] == "vocab-only" and rep["load"] and all(ld["ok"] for ld in rep["load"])
    assert rep["load"][0]["n_prompt_tokens"] == 2 and not rep["load"][0]["token_evaluated"]  # BOS, "▁Hello"
