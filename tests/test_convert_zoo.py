"""gpt4all-convert upgrades GPT4All's 2023 zoo (StarCoder, Falcon, BERT, Replit) to GGUF for gguf-2026-10.

The legacy file runs on our own 2023 model code (ggml-gpt4all-2023-08), the upgraded one on the 2026
engine; both get the SAME token ids (their tokenizers differ by design, see below) and must agree:

* causal models: max |dlogit| at the last position <= 1e-3 x the logit span, and the same greedy ids
  for 6 steps.  The weights are the same float32 values; what differs is the kernels (summation order,
  GELU: the 2023 ggml looks tanh-GELU up in an fp16 table, the 2026 one computes it) and the KV cache
  (F32 in the 2023 graphs, F16 in the 2026 engine).
* BERT: the mean-pooled embedding of the same ids, cosine >= 0.999.  The 2026 engine's own tokenizer
  adds [SEP] (gpt4all's never did), so ids are given directly.

Tokenization: Falcon and StarCoder files carry gpt4all's token list without BPE merges; the upgrade
needs the model's tokenizer.json.  Here a tiny byte-level BPE tokenizer.json is built whose vocabulary
is the tiny file's token list (merges made from the multi-byte pieces) with the real models'
pre-tokenizers; the upgraded file tokenizes exactly as HF tokenizers does with it, and differs from
gpt4all's greedy longest match.
"""
from __future__ import annotations

import json
import math
import struct

import pytest
from conftest import require_backend
from zoo_common import ZOO_TEXTS

import gpt4all_loader as g
from gpt4all_loader.cli import convert as convert_cli
from gpt4all_loader.formats import writer as w
from gpt4all_loader.formats.sniff import read_facts

LEGACY = "ggml-gpt4all-2023-08"
NEWEST = "gguf-2026-10"
IDS = [300, 301, 305, 420, 77, 500, 333, 290]
SPAN_TOL = 1e-3
#: where the 2026 engine's "falcon" pre-tokenizer regex parts from HF's pre-tokenizer sequence (Punctuation,
#: ByteLevel, Digits, Split): HF runs Digits on the byte-level text, so it splits a space from the digit
#: after it ("Ġ", "2") and splits at byte-level characters that Unicode counts as numerals ("¼", the
#: second byte of "ü"); llama.cpp keeps " 2" and "ü" whole.  Text -> a piece llama.cpp keeps, HF does not.
LLAMA_CPP_PRE_DIFFERS = {"falcon": {
    "def hello(self):\n    return print(1 + 2)  # code\n": " 2",
    "Café, naïve, über — déjà vu.": "\u00fc"}}
PRE = {
    "starcoder": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "falcon": {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "Contiguous"},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "Digits", "individual_digits": False},
        {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": False}]},
}


def byte_encoder() -> dict[int, str]:
    from gpt4all_loader.convert.hf import _byte_decoder

    return {b: c for c, b in _byte_decoder().items()}


def tokenizer_json(vocab: list[bytes], n_specials: int, kind: str) -> dict:
    """A byte-level BPE tokenizer.json whose vocabulary is ``vocab`` (the first ``n_specials`` entries
    special added tokens), merges joining each multi-byte piece from two shorter tokens of the vocabulary."""
    enc = byte_encoder()
    texts = [t.decode() if i < n_specials else "".join(enc[b] for b in t) for i, t in enumerate(vocab)]
    ids = {t: i for i, t in enumerate(texts)}
    merges = []
    for i, t in sorted(enumerate(texts), key=lambda it: (len(it[1]), it[0])):
        if i < n_specials or len(t) < 2 or t.startswith("<|filler"):
            continue
        for k in range(1, len(t)):
            if t[:k] in ids and t[k:] in ids:
                merges.append(f"{t[:k]} {t[k:]}")
                break
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": texts[i], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i in range(n_specials)],
        "normalizer": None, "pre_tokenizer": PRE[kind], "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(texts)}, "merges": merges}}


MODELS = {
    "starcoder": (lambda: w.TinyStarCoder(seed=5), w.write_starcoder, 19),
    "falcon": (lambda: w.TinyFalcon(seed=5), w.write_falcon, 12),
    "replit": (lambda: w.TinyReplit(seed=5), w.write_replit, 0),
    "bert": (lambda: w.TinyBert(seed=5), w.write_bert, 0),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo-convert")
    out = {}
    for kind, (make, write, n_specials) in MODELS.items():
        m = make()
        out[kind] = write(d / f"{kind}-f32.bin", m, "f32")
        if n_specials:
            tj = d / f"{kind}-tokenizer.json"
            tj.write_text(json.dumps(tokenizer_json(m.vocab(), n_specials, kind)), encoding="utf-8")
            out[f"{kind}-tokenizer"] = tj
    out["falcon-q4_0"] = w.write_falcon(d / "falcon-q4_0.bin", w.TinyFalcon(seed=5, n_embd=32, n_head=4), "q4_0")
    out["starcoder-q4_0"] = w.write_starcoder(d / "starcoder-q4_0.bin", w.TinyStarCoder(seed=5, n_embd=32, n_head=4),
                                              "q4_0")
    return out


def cli(argv, capsys):
    rc = convert_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def upgrade(zoo, kind, tmp_path, capsys, src_key=None):
    src = zoo[src_key or kind]
    out = tmp_path / f"{kind}.gguf"
    extra = ["--tokenizer", zoo[f"{kind}-tokenizer"]] if f"{kind}-tokenizer" in zoo else []
    rc, so, se = cli([src, "-o", out, "--outtype", "f32", "-q", *extra], capsys)
    assert rc == 0, se
    assert f"LOADABLE by {NEWEST}" in so
    return out


def run(path, backend, ids):
    with g.load(path, backend=backend, device="cpu", n_ctx=64, n_threads=1) as m:
        m.evaluate(ids)
        logits = m.logits()
        greedy = list(m.generate_tokens(ids, max_tokens=6, temperature=0))
    return logits, greedy


@pytest.mark.parametrize("kind", ["starcoder", "falcon", "replit"])
def test_upgraded_causal_model_gives_the_same_logits(zoo, kind, tmp_path, capsys):
    require_backend(LEGACY)
    require_backend(NEWEST)
    out = upgrade(zoo, kind, tmp_path, capsys)
    ref, ref_ids = run(zoo[kind], LEGACY, IDS)
    got, ids = run(out, NEWEST, IDS)
    span = max(ref) - min(ref)
    d = max(abs(a - b) for a, b in zip(got, ref))
    print(f"{kind}: max |dlogit| {d:.3g}, span {span:.3g}, ratio {d / span:.3g}; greedy {ids} vs {ref_ids}")
    assert d <= SPAN_TOL * span
    assert ids == ref_ids


def test_upgraded_bert_gives_the_same_embedding(zoo, tmp_path, capsys):
    require_backend(LEGACY)
    require_backend(NEWEST)
    out = upgrade(zoo, "bert", tmp_path, capsys)
    ids = [101, 200, 230, 250, 300, 102]
    vecs = []
    for path, be in ((zoo["bert"], LEGACY), (out, NEWEST)):
        with g.load(path, backend=be, device="cpu", n_threads=1, embeddings=True) as m:
            vecs.append(m.embed_tokens(ids))
    a, b = vecs
    cos = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    print(f"bert: cosine {cos:.7f}")
    assert cos >= 0.999
    with g.load(out, backend=NEWEST, device="cpu", n_threads=1, embeddings=True) as m:
        toks = m.tokenize("hello world", add_bos=True)
    # WordPiece as the model's tokenizer: [CLS] hello world [SEP] (gpt4all's had no [SEP])
    assert toks[0] == 101 and toks[-1] == 102 and len(toks) == 4


@pytest.mark.parametrize("kind", ["starcoder", "falcon"])
def test_upgraded_bpe_file_tokenizes_like_its_tokenizer_json(zoo, kind, tmp_path, capsys):
    """The GGUF tokenizes as HF tokenizers with the given tokenizer.json does; gpt4all's greedy longest
    match (our legacy run) gives other ids for some texts."""
    tokenizers = pytest.importorskip("tokenizers")
    require_backend(LEGACY)
    require_backend(NEWEST)
    out = upgrade(zoo, kind, tmp_path, capsys)
    hf = tokenizers.Tokenizer.from_file(str(zoo[f"{kind}-tokenizer"]))
    differ = []
    with g.load(out, backend=NEWEST, device="cpu", n_ctx=64) as new, \
            g.load(zoo[kind], backend=LEGACY, device="cpu", n_ctx=64) as old:
        for text in ZOO_TEXTS:
            ids = new.tokenize(text, add_bos=False)
            ref = hf.encode(text, add_special_tokens=False)
            if text in LLAMA_CPP_PRE_DIFFERS.get(kind, {}):
                # llama.cpp's "falcon" pre-tokenizer is a regex approximation of Falcon's sequence
                piece = LLAMA_CPP_PRE_DIFFERS[kind][text]
                assert piece.encode() in [new.token_bytes(i) for i in ids]
                assert piece.replace(" ", "\u0120") not in ref.tokens
                continue
            assert ids == ref.ids, text
            greedy = old.tokenize(text, add_bos=False)
            if greedy != ids:
                differ.append((text, [old.token_bytes(i) for i in greedy], [new.token_bytes(i) for i in ids]))
    assert differ
    text, greedy_pieces, pieces = differ[0]
    print(f"{kind}: {text!r}: gpt4all {greedy_pieces} vs merges {pieces}")


def test_bpe_file_without_tokenizer_is_refused(zoo, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    rc, _, err = cli([zoo["starcoder"], "-o", out, "-q"], capsys)
    assert rc == 1 and not out.exists()
    assert "no BPE merges" in err and "--tokenizer" in err and "bigcode/starcoderbase-3b" in err


def test_wrong_tokenizer_is_refused(zoo, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    rc, _, err = cli([zoo["starcoder"], "-o", out, "-q", "--tokenizer", zoo["falcon-tokenizer"]], capsys)
    assert rc == 1 and not out.exists()
    assert "not this model's tokenizer" in err


@pytest.mark.parametrize("kind", ["starcoder", "falcon"])
def test_quantized_source_is_dequantized_by_its_era(zoo, kind, tmp_path, capsys):
    """A Q4_0 file: the 2023 engine dequantizes it; the F32 result runs F32 x F32 while the original ran
    Q4_0 x Q8_0 products (measured 5e-3 of the span), so only the first greedy token must agree."""
    require_backend(LEGACY)
    require_backend(NEWEST)
    out = upgrade(zoo, kind, tmp_path, capsys, src_key=f"{kind}-q4_0")
    ref, ref_ids = run(zoo[f"{kind}-q4_0"], LEGACY, IDS)
    got, ids = run(out, NEWEST, IDS)
    span = max(ref) - min(ref)
    d = max(abs(a - b) for a, b in zip(got, ref))
    print(f"{kind} q4_0: max |dlogit| {d:.3g}, span {span:.3g}")
    assert d <= 0.02 * span
    assert ids[0] == ref_ids[0]


def test_f16_source_stays_f16(zoo, tmp_path, capsys):
    """An F16 Falcon file upgraded with --outtype f16: the F16 weights are copied as they are."""
    require_backend(LEGACY)
    require_backend(NEWEST)
    src = w.write_falcon(tmp_path / "falcon-f16.bin", w.TinyFalcon(seed=5), "f16")
    out = tmp_path / "falcon-f16.gguf"
    rc, so, se = cli([src, "-o", out, "--outtype", "f16", "-q", "--tokenizer", zoo["falcon-tokenizer"]], capsys)
    assert rc == 0 and f"LOADABLE by {NEWEST}" in so, se
    facts = read_facts(out)
    assert facts.tensor_types.get("F16") and facts.architecture == "falcon"
    ref, ref_ids = run(src, LEGACY, IDS)
    got, ids = run(out, NEWEST, IDS)
    d = max(abs(a - b) for a, b in zip(got, ref))
    print(f"falcon f16: max |dlogit| {d:.3g}, span {max(ref) - min(ref):.3g}")
    assert d <= SPAN_TOL * (max(ref) - min(ref)) and ids[0] == ref_ids[0]


def test_probe_names_the_upgrade_command(zoo):
    from gpt4all_loader import probe

    for kind in ("starcoder", "falcon", "bert", "replit"):
        sug = probe(zoo[kind], device="cpu").suggestion or ""
        assert f"gpt4all-convert {zoo[kind]} -o " in sug, sug
        assert ("--tokenizer" in sug) == (kind in ("starcoder", "falcon")), sug


def test_damaged_zoo_files_are_refused(zoo, tmp_path, capsys):
    """A header that does not match the tensors, and a file cut short: refused before anything is written."""
    raw = zoo["bert"].read_bytes()
    bad = tmp_path / "bert-layers.bin"
    bad.write_bytes(raw[:24] + struct.pack("<i", 3) + raw[28:])  # n_layer 3 over 2 stored layers
    cut = tmp_path / "bert-cut.bin"
    cut.write_bytes(raw[:len(raw) - 100])
    for src, why in ((bad, "does not match the tensors"), (cut, "download it again")):
        out = tmp_path / "x.gguf"
        rc, _, err = cli([src, "-o", out, "-q"], capsys)
        assert rc == 1 and why in err and not out.exists(), err
    rc, _, err = cli([zoo["bert"], "-o", tmp_path / "y.gguf", "-q", "--tokenizer", zoo["falcon-tokenizer"]], capsys)
    assert rc == 1 and "Falcon and StarCoder files only" in err


def test_upgraded_replit_segments_as_gpt4all_did(zoo, tmp_path, capsys):
    """Replit's pieces go to llama.cpp's Unigram tokenizer: the same best-score segmentation as replit.cpp
    (and SentencePiece).  A text with characters no piece holds: replit.cpp gave up ([0] for the whole
    text); the Unigram tokenizer marks just those characters unknown."""
    require_backend(LEGACY)
    require_backend(NEWEST)
    out = upgrade(zoo, "replit", tmp_path, capsys)
    with g.load(out, backend=NEWEST, device="cpu", n_ctx=64) as new, \
            g.load(zoo["replit"], backend=LEGACY, device="cpu", n_ctx=64) as old:
        for text in ZOO_TEXTS:
            ids, greedy = new.tokenize(text, add_bos=False), old.tokenize(text, add_bos=False)
            if greedy == [0]:
                assert len(ids) > 1
                continue
            assert ids == greedy, text


def test_upgraded_bert_tokenizes_like_gpt4all_plus_sep_and_unk(zoo, tmp_path, capsys):
    """The same WordPiece pieces as gpt4all's tokenizer; the GGUF adds [SEP] at the end (as the model's own
    tokenizer does) and gives [UNK] for a character gpt4all silently dropped."""
    require_backend(LEGACY)
    require_backend(NEWEST)
    out = upgrade(zoo, "bert", tmp_path, capsys)
    with g.load(out, backend=NEWEST, device="cpu", embeddings=True) as new, \
            g.load(zoo["bert"], backend=LEGACY, device="cpu", embeddings=True) as old:
        for text in ZOO_TEXTS:
            ids, greedy = new.tokenize(text, add_bos=True), old.tokenize(text, add_bos=True)
            assert ids[0] == greedy[0] == 101 and ids[-1] == 102
            assert [i for i in ids[:-1] if i != 100] == greedy, text


def test_quantized_output_through_the_newest_quantizer(zoo, tmp_path, capsys):
    """--outtype q8_0: the F32 upgrade goes through the newest engine's quantizer; the greedy start agrees."""
    require_backend(LEGACY)
    require_backend(NEWEST)
    out = tmp_path / "starcoder-q8_0.gguf"
    rc, so, se = cli([zoo["starcoder"], "-o", out, "--outtype", "q8_0", "-q", "--tokenizer",
                      zoo["starcoder-tokenizer"]], capsys)
    assert rc == 0 and f"LOADABLE by {NEWEST}" in so, se
    assert "Q8_0" in read_facts(out).tensor_types
    _, ref_ids = run(zoo["starcoder"], LEGACY, IDS)
    _, ids = run(out, NEWEST, IDS)
    assert ids[0] == ref_ids[0]
