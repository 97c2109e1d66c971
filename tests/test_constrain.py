"""The constraint engine (gpt4all_loader.constrain) over the vocabularies of every era: token bytes, masks,
walks, errors and limits, and a mask-guided greedy generation on a random-weight model that must give JSON
that validates."""
from __future__ import annotations

import json
import time
from array import array

import pytest

import gpt4all_loader as g
from gpt4all_loader import constrain as C
from gpt4all_loader.constrain import ConstraintError, Limits, Vocabulary

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "kind": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "home": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    "required": ["name", "age", "kind", "tags", "home"],
}
DOC = {"name": "Bob\nthe cat \u00fc", "age": 3, "kind": "dog", "tags": ["a b", "x"], "home": {"city": "Z"}}


def walk(vocab: Vocabulary, grammar: C.Grammar, ids: list[int]) -> C.Matcher:
    """Consume ``ids`` checking each one against a freshly filled mask first."""
    m = grammar.matcher()
    for t in ids:
        assert C.allows(m.mask(), t), (t, vocab.pieces[t])
        m.consume(t)
    return m


def doc_tokens(model, vocab: Vocabulary, text: str) -> list[int]:
    """The model's own tokenization of ``text`` where its bytes are exactly ``text`` (no dummy prefix),
    else the vocabulary's greedy one."""
    ids = model.tokenize(text, add_bos=False)
    if b"".join(vocab.pieces[t] for t in ids) == text.encode():
        return ids
    return vocab.tokenize(text.encode())


# -- vocabularies of every family ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vocabs(tiny_llama):
    out = {}
    for fmt, version in (("ggml", None), ("ggjt", 3), ("gguf", 1), ("gguf", 3)):
        with g.load(tiny_llama[(fmt, version, "f32")], vocab_only=True) as m:
            out[(fmt, version)] = (Vocabulary.from_model(m), m.tokenize("Hello world\nthe cat", add_bos=False))
    return out


@pytest.mark.parametrize("fmt,version", [("ggml", None), ("ggjt", 3), ("gguf", 1), ("gguf", 3)])
def test_llama_vocab_pieces_are_raw_bytes_in_every_era(tiny_vocabs, fmt, version):
    vocab, ids = tiny_vocabs[(fmt, version)]
    assert vocab.n_vocab == 362 and vocab.eog == (2,)
    assert vocab.pieces[3 + 0x0A] == b"\n" and vocab.pieces[3 + 0x41] == b"A"   # <0x0A>, <0x41>
    # SentencePiece's U+2581 is a space; the dummy prefix is the engine's, kept as bytes
    assert b"".join(vocab.pieces[t] for t in ids) == b" Hello world\nthe cat"
    assert {0, 1, 2} <= set(vocab.special)
    if fmt == "gguf":  # named by the file's token types
        assert vocab.special[1] == "<s>" and vocab.special[2] == "</s>"
    else:              # 2023 files have no token types: the begin/end ids are named by id
        assert vocab.special[2] == "<[2]>"
    assert vocab.mask_bytes == 12 * 4


def test_gptj_vocab_keeps_bytes_and_marks_its_end_token(tmp_path):
    from gpt4all_loader.formats.writer import TinyGPTJ, write_gptj

    p = write_gptj(tmp_path / "gptj.bin", TinyGPTJ(seed=0))
    with g.load(p, vocab_only=True) as m:
        vocab = Vocabulary.from_model(m)
        ids = m.tokenize("Hello world\nthe cat", add_bos=False)
    assert vocab.n_vocab == 50400 and vocab.eog == (50256,)
    assert vocab.special == {50256: "<|endoftext|>"}   # text in the file, but never text in the output
    assert vocab.pieces[10] == b"\n" and vocab.pieces[0xE9] == b"\xe9"
    assert b"".join(vocab.pieces[t] for t in ids) == b"Hello world\nthe cat"
    # the end token's text is not allowed as text inside a string
    grammar = C.compile(vocab, regex=r"<\|[a-z]+\|>")
    assert not C.allows(grammar.matcher().mask(), 50256)



def test_smollm2_vocab_special_tokens_and_cache(smollm2_vocab):
    m, vocab = smollm2_vocab
    assert vocab.n_vocab == 49152 and vocab.mask_bytes == 49152 // 8
    assert vocab.eog[0] == 2 and vocab.special[2] == "<|im_end|>" and vocab.special[1] == "<|im_start|>"
    assert Vocabulary.from_model(m) is vocab and vocab.tokenizer is vocab.tokenizer
    ids = m.tokenize("caf\u00e9 {\"a\": 1}\n", add_bos=False)
    assert b"".join(vocab.pieces[t] for t in ids) == "caf\u00e9 {\"a\": 1}\n".encode()
    # a grammar names a control token; it is not the text "<|im_end|>"
    grammar = C.compile(vocab, grammar='start: "ok" <|im_end|>')
    matcher = walk(vocab, grammar, m.tokenize("ok", add_bos=False))
    assert C.allowed_ids(matcher.mask(), vocab.n_vocab) == [2]


# -- masks and walks ----------------------------------------------------------------------------------
def test_fresh_schema_mask_allows_only_an_opening_brace(smollm2_vocab):
    m, vocab = smollm2_vocab
    grammar = C.compile(vocab, json_schema=SCHEMA)
    allowed = C.allowed_ids(grammar.matcher().mask(), vocab.n_vocab)
    assert allowed and all(vocab.pieces[t].startswith(b"{") for t in allowed)
    assert all(vocab.pieces[t][1:].strip(b'"\n\t ') == b"" for t in allowed)


def test_walking_a_valid_document_keeps_every_token_allowed(smollm2_vocab):
    m, vocab = smollm2_vocab
    grammar = C.compile(vocab, json_schema=SCHEMA)
    for text in (json.dumps(DOC, ensure_ascii=False), json.dumps(DOC, ensure_ascii=False, indent=2),
                 json.dumps(DOC, ensure_ascii=False, separators=(",", ":"))):
        matcher = walk(vocab, grammar, doc_tokens(m, vocab, text))
        assert matcher.is_accepting()
        assert set(C.allowed_ids(matcher.mask(), vocab.n_vocab)) == set(vocab.eog)
        matcher.consume(vocab.eog[0])
        assert matcher.is_stopped()


def test_tiny_llama_walk_and_buffers(tiny_llama):
    with g.load(tiny_llama[("gguf", 3, "f32")], vocab_only=True) as m:
        vocab = Vocabulary.from_model(m)
    grammar = C.compile(vocab, json_schema={"type": "array", "items": {"type": "integer"}, "maxItems": 3})
    ids = vocab.tokenize(b"[1, 22,\n  333]")
    matcher = walk(vocab, grammar, ids)
    assert matcher.is_accepting()
    # every kind of buffer gets the same mask; bits past n_vocab stay clear
    from gpt4all_loader.engines import native

    ffi = native.ffi()
    want = bytes(matcher.mask())
    cbuf = ffi.new("uint32_t[]", vocab.mask_words)
    matcher.fill_mask(cbuf)
    arr = array("I", [0xFFFFFFFF] * vocab.mask_words)
    matcher.fill_mask(arr)
    big = bytearray(vocab.mask_bytes + 8)
    matcher.fill_mask(memoryview(big))
    assert bytes(ffi.buffer(cbuf)) == arr.tobytes() == big[:vocab.mask_bytes] == want
    assert int.from_bytes(want[-4:], "little") >> (vocab.n_vocab % 32) == 0
    with pytest.raises(ValueError, match="needs 48"):
        matcher.fill_mask(bytearray(8))
    with pytest.raises(TypeError, match="read-only"):
        matcher.fill_mask(bytes(vocab.mask_bytes))
    # a refused token leaves the state as it was; rollback and reset
    with pytest.raises(ConstraintError, match="not allowed"):
        matcher.consume(vocab.tokenize(b"x")[0])
    matcher.rollback(1)
    assert not matcher.is_accepting()
    matcher.reset()
    assert C.allowed_ids(matcher.mask(), vocab.n_vocab) == C.allowed_ids(grammar.matcher().mask(), vocab.n_vocab)


def test_grammar_forms_lark_gbnf_regex_json_object(smollm2_vocab):
    m, vocab = smollm2_vocab
    gbnf = 'root ::= answer\nanswer ::= "yes" | "no"\n'
    for grammar in (C.compile(vocab, grammar=gbnf), C.compile(vocab, grammar='start: "yes" | "no"'),
                    C.compile(vocab, regex="yes|no")):
        assert grammar.kind in ("gbnf", "lark", "regex")
        walk(vocab, grammar, m.tokenize("no", add_bos=False))
        maybe = m.tokenize("maybe", add_bos=False)[0]
        fresh = grammar.matcher()
        assert not C.allows(fresh.mask(), maybe)
        with pytest.raises(ConstraintError, match="not allowed"):
            fresh.consume(maybe)
    assert C.compile(vocab, grammar=gbnf).kind == "gbnf"
    obj = C.compile(vocab, json_object=True)
    assert walk(vocab, obj, doc_tokens(m, vocab, '{"any": [1, {"x": null}]}')).is_accepting()
    with pytest.raises(ConstraintError, match="exactly one"):
        C.compile(vocab, regex="a", json_object=True)
    with pytest.raises(ConstraintError, match="exactly one"):
        C.compile(vocab)


# -- errors and limits --------------------------------------------------------------------------------
@pytest.mark.parametrize("schema,word", [
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "'not'"),
    ({"if": {"type": "string"}, "then": {"minLength": 2}}, "'if'"),
    ({"type": "string", "format": "shoe-size"}, "format 'shoe-size'"),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, "'oneOf'"),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ({"type": "strin"}, "strin"),
])
def test_unsupported_schema_raises_naming_it(smollm2_vocab, schema, word):
    with pytest.raises(ConstraintError, match=word.replace("$", r"\$")):
        C.compile(smollm2_vocab[1], json_schema=schema)


@pytest.mark.parametrize("kwargs,match", [
    ({"json_schema": "{not json"}, "not JSON"),
    ({"json_schema": [1, 2]}, "is an object"),
    ({"grammar": "start: foo"}, "foo"),
    ({"grammar": "root ::= (\"a\""}, "GBNF"),
    ({"grammar": 'start: <|no_such_token|>'}, "no_such_token"),
    ({"regex": "(("}, "regex"),
])
def test_bad_input_raises_constraint_error(smollm2_vocab, kwargs, match):
    with pytest.raises(ConstraintError, match=match):
        C.compile(smollm2_vocab[1], **kwargs)


def test_limits_refuse_huge_deep_and_pathological_input_quickly(smollm2_vocab):
    vocab = smollm2_vocab[1]
    props = {f"p{i}": {"type": "string", "description": "x" * 60} for i in range(1200)}
    cases = [
        ({"json_schema": {"type": "object", "properties": props}}, "more than the limit"),
        ({"grammar": "start: " + "(" * 20000 + '"a"' + ")" * 20000}, "limit"),
        ({"grammar": "root ::= " + "(" * 5000 + '"a"' + ")" * 5000}, "nested too deeply|limit"),
        ({"json_schema": _nested_array(5000)}, "more than the limit|nest|recursion"),
        ({"regex": "(" * 5000 + "a" + ")" * 5000}, "invalid|limit"),
        # a counted repetition whose lexer outgrows its expression budget: refused at compile or first steps
        ({"regex": "a{1000000}{1000000}"}, "limit"),
    ]
    for kwargs, match in cases:
        t0 = time.perf_counter()
        with pytest.raises(ConstraintError, match=match):
            matcher = C.compile(vocab, **kwargs).matcher()
            for _ in range(3):
                matcher.consume(max(C.allowed_ids(matcher.mask(), vocab.n_vocab), key=lambda t: len(vocab.pieces[t])))
        assert time.perf_counter() - t0 < 30  # a hang guard, not a timing assertion
    with pytest.raises(ConstraintError, match="more than the limit of 100 bytes"):
        C.compile(vocab, regex="a" * 101, limits=Limits(max_text_bytes=100))


def test_a_long_chain_of_rules_compiles_without_overflowing_the_stack(smollm2_vocab):
    """~3000 nested rule references overflow an 8 MiB stack inside llguidance; the compile thread has more."""
    n = 4000
    lark = "start: r0\n" + "\n".join(f"r{i}: r{i + 1}" for i in range(n)) + f'\nr{n}: "a"\n'
    grammar = C.compile(smollm2_vocab[1], grammar=lark)
    assert grammar.matcher().forced_bytes() == b"a"


def _nested_array(depth: int) -> dict:
    s: dict = {"type": "string"}
    for _ in range(depth):
        s = {"type": "array", "items": s}
    return s


# -- end to end: mask-guided greedy decoding on real logits ---------------------------------------
GEN_SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "bird"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "word": {"type": "string", "maxLength": 6},
    },
    "required": ["kind", "n", "ok", "word"],
    "additionalProperties": False,
}


def greedy(model, vocab: Vocabulary, grammar: C.Grammar, prompt: str, max_tokens: int) -> tuple[list[int], bytes]:
    """Argmax over the allowed tokens of the real logits, token by token (what the C sampler will do)."""
    model.reset()
    model.evaluate(model.tokenize(prompt))
    matcher = grammar.matcher()
    out: list[int] = []
    for _ in range(max_tokens):
        mask = matcher.mask()
        logits = model.logits()
        t = max(C.allowed_ids(mask, vocab.n_vocab), key=lambda i: logits[i])
        matcher.consume(t)
        if t in vocab.eog:
            break
        out.append(t)
        model.evaluate([t])
    return out, b"".join(vocab.pieces[t] for t in out)


def test_mask_guided_greedy_walk_on_random_weights_gives_valid_json(tiny_llama):
    jsonschema = pytest.importorskip("jsonschema")
    with g.load(tiny_llama[("gguf", 3, "f32")], n_ctx=256, n_threads=1) as model:
        vocab = Vocabulary.from_model(model)
        grammar = C.compile(vocab, json_schema=GEN_SCHEMA)
        ids, text = greedy(model, vocab, grammar, "Hello world", 240)
        again, _ = greedy(model, vocab, grammar, "Hello world", 240)
    doc = json.loads(text)
    jsonschema.validate(doc, GEN_SCHEMA)
    assert again == ids   # same grammar, same logits: the same tokens


def test_isolated_model_gives_the_same_vocabulary(tiny_llama):
    """An IsolatedModel hands its token table over in one round trip; the result equals the in-process one."""
    path = tiny_llama[("gguf", 3, "f32")]
    with g.load(path, vocab_only=True) as m:
        here = Vocabulary.from_model(m)
    with g.load(path, vocab_only=True, isolated=True) as iso:
        there = Vocabulary.from_model(iso)
        assert Vocabulary.from_model(iso) is there
    assert (there.pieces, there.special, there.eog) == (here.pieces, here.special, here.eog)


def test_schemas_are_read_as_llama_cpp_reads_them():
    """An object that lists its properties is closed unless it says otherwise, integers get JSON's safe range,
    the branches of an allOf stay open, and a property named like a keyword is a property."""
    from gpt4all_loader.constrain import SAFE_INTEGER, _tightened

    got = _tightened({"type": "object", "properties": {
        "properties": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "open": {"type": "object", "properties": {}, "additionalProperties": True},
        "both": {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}}})
    assert got["additionalProperties"] is False
    inner = got["properties"]["properties"]
    assert inner["additionalProperties"] is False and "additionalProperties" not in got["properties"]
    assert inner["properties"]["n"]["maximum"] == SAFE_INTEGER and inner["properties"]["n"]["minimum"] == -SAFE_INTEGER
    assert got["properties"]["open"]["additionalProperties"] is True
    assert all("additionalProperties" not in b for b in got["properties"]["both"]["allOf"])
