"""The reader's fast paths against its careful ones: the windowed string walks give the same strings, the
same end position and the same errors as the record-by-record walk; the vocabulary read on demand equals the
one the header pass summarized; a hostile vocabulary is still refused before any native load."""
from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest

from gpt4all_loader.errors import FormatError
from gpt4all_loader.formats.sniff import ByteSource, read_facts


def _records(rng: random.Random, n: int, big: int = 0) -> list[bytes]:
    toks = [bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 3, 7, 20, 90)))) for _ in range(n)]
    if big:
        toks[rng.randrange(n)] = b"x" * big
    return toks


def _encode(toks: list[bytes], fmt: str, prefix: bytes = b"", tail: bytes = b"") -> bytes:
    return prefix + b"".join(struct.pack("<" + fmt, len(t)) + t for t in toks) + tail


def _source(data: bytes, readahead: int, pos: int = 0) -> ByteSource:
    src = ByteSource(io.BytesIO(data), "mem.gguf", len(data), readahead=readahead)
    src.pos = pos
    return src


def _outcome(fn, src: ByteSource):
    try:
        got = fn(src)
    except FormatError as e:
        return "error", str(e)
    return got, src.pos


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("fmt", ["Q", "I"])
@pytest.mark.parametrize("readahead", [16, 61, 4096])
def test_windowed_walks_equal_the_careful_walk(seed, fmt, readahead):
    rng = random.Random(seed)
    toks = _records(rng, rng.randrange(1, 300), big=rng.choice((0, 0, 300)))
    prefix = b"\x01" * rng.randrange(8)
    data = _encode(toks, fmt, prefix=prefix, tail=b"\x02" * rng.randrange(8))
    start = len(prefix)
    n = len(toks)

    def careful(s: ByteSource) -> list[bytes]:
        return list(s.walk_strings(n, fmt, "t", texts=True, max_len=1 << 20) or [])

    want = _outcome(careful, _source(data, readahead, start))
    assert want[0] == toks
    assert _outcome(lambda s: s.collect_strings(n, fmt, "t", max_len=1 << 20), _source(data, readahead, start)) == want
    assert _outcome(lambda s: s.skip_strings(n, fmt, "t") or toks, _source(data, readahead, start)) == want


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("readahead", [16, 77, 4096])
def test_windowed_walks_fail_like_the_careful_walk(seed, readahead):
    """Damaged lengths (past the end of the file, longer than allowed) and cut arrays: same error, same text."""
    rng = random.Random(1000 + seed)
    toks = _records(rng, rng.randrange(1, 120))
    data = bytearray(_encode(toks, "Q"))
    n = len(toks) + rng.choice((0, 0, 1, 5))   # more records announced than there are: a cut array
    if rng.random() < 0.7:
        # overwrite one length with something large
        offs, p = [], 0
        for t in toks:
            offs.append(p)
            p += 8 + len(t)
        at = rng.choice(offs)
        struct.pack_into("<Q", data, at, rng.choice((len(data), len(data) * 3, 1 << 40, (1 << 64) - 1, 200, 64)))
    data = bytes(data)
    max_len = rng.choice((1 << 20, 50, 100))

    def careful_skip(s: ByteSource) -> None:
        s.walk_strings(n, "Q", "t", max_len=s.size)

    def careful_texts(s: ByteSource) -> list[bytes]:
        return list(s.walk_strings(n, "Q", "t", texts=True, max_len=max_len) or [])

    assert _outcome(lambda s: s.skip_strings(n, "Q", "t"), _source(data, readahead)) == \
        _outcome(careful_skip, _source(data, readahead))
    assert _outcome(lambda s: s.collect_strings(n, "Q", "t", max_len=max_len), _source(data, readahead)) == \
        _outcome(careful_texts, _source(data, readahead))


def test_real_vocab_read_on_demand_equals_eager(tmp_path):
    """The token array read by itself (from the offset the header pass kept) equals the full read."""
    from gpt4all_loader.formats.gguf_reader import read_tokens
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    p = write_llama(tmp_path / "m.gguf", TinyLlama(seed=2, n_layer=1, n_embd=32, n_head=4), "gguf", 3)
    lazy = read_facts(p)
    eager = read_facts(p, with_vocab=True)
    assert lazy.vocab is not None and lazy.vocab.offset is not None
    toks = read_tokens(p, lazy)
    assert [t.decode("utf-8", "replace") for t in toks] == eager.kv["tokenizer.ggml.tokens"]
    assert len(toks) == lazy.vocab.n_tokens == lazy.hparams["n_vocab"]
    assert lazy.vocab == eager.vocab


@pytest.mark.parametrize("case", ["gguf-duplicate-tokens", "gguf-no-byte-tokens", "gguf-empty-token"])
def test_hostile_vocab_refused_before_native_code(tmp_path, monkeypatch, case):
    """The header pass keeps counts only, yet load() still refuses these vocabularies without opening an engine."""
    import gpt4all_loader as g
    from gpt4all_loader.engines import native
    from gpt4all_loader.errors import UnsupportedModelError
    from hostile import FAMILIES

    def no_native(*a, **kw):
        raise AssertionError("native code reached")

    monkeypatch.setattr(native, "open_backend", no_native)
    write, reasons = FAMILIES[case]
    p = write(tmp_path / f"{case}.gguf")
    with pytest.raises(UnsupportedModelError) as e:
        g.load(p, backend="gguf-2026-10")
    assert reasons["gguf-2026-10"] in str(e.value)


def _facts_tuple(f):
    return f.to_dict(), f.tensors, f.tensor_names, f.vocab, f.kv_types, f.alignment


@pytest.mark.parametrize("version,endian", [(1, "little"), (2, "little"), (3, "little"), (3, "big")])
@pytest.mark.parametrize("with_vocab", [False, True])
def test_fast_paths_give_the_facts_of_the_careful_paths(tmp_path, monkeypatch, version, endian, with_vocab):
    """The whole header read with every fast path on, then with each replaced by its careful counterpart."""
    from gpt4all_loader.formats import gguf_reader
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    p = write_llama(tmp_path / "m.gguf", TinyLlama(seed=5, n_layer=2, n_embd=32, n_head=4), "gguf", version,
                    endian=endian, ftype="f16")
    fast = read_facts(p, with_vocab=with_vocab)
    assert fast.vocab is not None and fast.vocab.n_tokens > 256
    toks = gguf_reader.read_tokens(p, fast)

    def careful_skip(self, count, len_fmt, field):
        self.walk_strings(count, len_fmt, field, max_len=self.size)

    def careful_collect(self, count, len_fmt, field, *, max_len):
        return list(self.walk_strings(count, len_fmt, field, texts=True, max_len=max_len) or [])

    monkeypatch.setattr(gguf_reader, "_plain_tensor_info", lambda *a: None)
    monkeypatch.setattr(ByteSource, "skip_strings", careful_skip)
    monkeypatch.setattr(ByteSource, "collect_strings", careful_collect)
    slow = read_facts(p, with_vocab=with_vocab)
    assert _facts_tuple(fast) == _facts_tuple(slow)
    assert fast.kv == slow.kv
    assert toks == gguf_reader.read_tokens(p, slow)
    if with_vocab:
        assert [t.decode("utf-8", "replace") for t in toks] == slow.kv["tokenizer.ggml.tokens"]


def _tensor_info_at(data: bytes, name: str) -> int:
    """Byte offset of the (GGUF v3, little-endian) tensor info of ``name``: its length field."""
    raw = name.encode()
    return data.rindex(struct.pack("<Q", len(raw)) + raw)


def _damage(data: bytearray, name: str, what: str, names: list[str]) -> None:
    if what == "duplicate-name":  # a later tensor takes the name of an earlier one of the same length
        name, other = next((b, a) for i, a in enumerate(names) for b in names[i + 1:] if len(a) == len(b))
    at = _tensor_info_at(bytes(data), name)
    q = at + 8 + len(name)                                # n_dims
    n_dims = struct.unpack_from("<I", data, q)[0]
    ne_at, tail = q + 4, q + 4 + 8 * n_dims               # ne, then type (u32) and offset (u64)
    if what == "name-too-long":
        struct.pack_into("<Q", data, at, 100)
    elif what == "name-past-the-end":
        struct.pack_into("<Q", data, at, 1 << 40)
    elif what == "duplicate-name":
        data[at + 8:at + 8 + len(name)] = other.encode()
    elif what in ("n_dims-0", "n_dims-5"):
        struct.pack_into("<I", data, q, int(what[-1]))
    elif what == "negative-dim":
        struct.pack_into("<q", data, ne_at, -4)
    elif what == "huge-shape":
        struct.pack_into("<q", data, ne_at, 1 << 62)
    elif what == "zero-dim":
        struct.pack_into("<q", data, ne_at, 0)
    elif what == "row-not-a-block":
        struct.pack_into("<I", data, tail, 2)             # Q4_0: rows of 32
        struct.pack_into("<q", data, ne_at, 33)
    elif what in ("unknown-type", "removed-type"):
        struct.pack_into("<I", data, tail, 99 if what == "unknown-type" else 4)
    elif what == "misaligned":
        struct.pack_into("<Q", data, tail + 4, struct.unpack_from("<Q", data, tail + 4)[0] + 3)
    elif what == "out-of-order":
        struct.pack_into("<Q", data, tail + 4, struct.unpack_from("<Q", data, tail + 4)[0] + 32)
    elif what == "offset-past-2^63":
        struct.pack_into("<Q", data, tail + 4, (1 << 63) - 8)
    else:
        raise AssertionError(what)


DAMAGE = ["name-too-long", "name-past-the-end", "duplicate-name", "n_dims-0", "n_dims-5", "negative-dim",
          "huge-shape", "zero-dim", "row-not-a-block", "unknown-type", "removed-type", "misaligned", "out-of-order",
          "offset-past-2^63"]


@pytest.mark.parametrize("what", DAMAGE)
@pytest.mark.parametrize("which", [0, 1, -1])
def test_damaged_tensor_infos_fail_alike_on_both_paths(tmp_path, monkeypatch, what, which):
    """One checking function for both paths: a damaged tensor info gives the same error (or the same
    anomalies and facts) whether the fast path or the careful one reads it."""
    from gpt4all_loader.formats import gguf_reader
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    p = write_llama(tmp_path / "m.gguf", TinyLlama(seed=5, n_layer=2, n_embd=32, n_head=4), "gguf", 3, ftype="f16")
    names = list(read_facts(p).tensors)
    data = bytearray(Path(p).read_bytes())
    _damage(data, names[which], what, names)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))

    def outcome():
        try:
            return _facts_tuple(read_facts(bad)), read_facts(bad).anomalies
        except FormatError as e:
            return "error", str(e)

    fast = outcome()
    monkeypatch.setattr(gguf_reader, "_plain_tensor_info", lambda *a: None)
    assert outcome() == fast
    if what not in ("unknown-type", "removed-type", "misaligned", "out-of-order", "zero-dim"):
        assert fast[0] == "error", fast
