"""The facts of large headers are remembered by file identity, and never outlive a change of the file."""
from __future__ import annotations

import os
import shutil

import pytest

from gpt4all_loader import facts_cache
from gpt4all_loader.errors import FormatError
from gpt4all_loader.formats import sniff
from gpt4all_loader.formats.writer import TinyLlama, write_llama


@pytest.fixture(scope="module")
def big_header(tmp_path_factory):
    """A GGUF whose header (a 60k-token vocabulary) is larger than MIN_HEADER_BYTES."""
    path = write_llama(tmp_path_factory.mktemp("fc") / "big.gguf",
                       TinyLlama(n_vocab=60000, n_embd=32, n_head=2, n_layer=1), "gguf", ftype="f16")
    assert sniff.read_facts(path).data_offset >= facts_cache.MIN_HEADER_BYTES
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    folder = tmp_path / "facts"
    monkeypatch.setattr(facts_cache, "facts_dir", lambda: folder)
    monkeypatch.delenv(facts_cache.ENV_DISABLE, raising=False)
    return folder


def _no_reading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the header was read again")
    monkeypatch.setattr(facts_cache, "read_facts", refuse)


def test_same_facts_and_read_once(big_header, store, tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    shutil.copyfile(big_header, path)
    first = facts_cache.read_facts_cached(path)
    assert len(list(store.glob("*.json"))) == 1
    _no_reading(monkeypatch)
    again = facts_cache.read_facts_cached(path)
    fresh = sniff.read_facts(path)
    assert again.to_dict() == fresh.to_dict() == first.to_dict()
    assert again.vocab == fresh.vocab and again.tensors == fresh.tensors and again.kv_types == fresh.kv_types


def test_a_rewritten_file_is_read_again(big_header, store, tmp_path):
    """Same size, same mtime put back: the status-change time still tells, and the damage is seen."""
    path = tmp_path / "m.gguf"
    shutil.copyfile(big_header, path)
    assert facts_cache.read_facts_cached(path).kind == "model"
    st = os.stat(path)
    with open(path, "r+b") as f:   # the token count becomes absurd: the header no longer fits the file
        f.seek(8)
        f.write((2**40).to_bytes(8, "little"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(FormatError):
        facts_cache.read_facts_cached(path)


def test_a_replaced_file_is_read_again(big_header, store, tmp_path):
    path = tmp_path / "m.gguf"
    shutil.copyfile(big_header, path)
    facts_cache.read_facts_cached(path)
    other = tmp_path / "other.gguf"
    write_llama(other, TinyLlama(n_vocab=400), "gguf")
    os.replace(other, path)
    assert facts_cache.read_facts_cached(path).hparams["n_vocab"] == 400


def test_small_headers_errors_and_other_files_are_not_stored(store, tmp_path):
    small = write_llama(tmp_path / "small.gguf", TinyLlama(), "gguf")
    facts_cache.read_facts_cached(small)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(FormatError):
        facts_cache.read_facts_cached(bad)
    text = tmp_path / "notes.txt"
    text.write_text("not a model " * 200_000)
    assert facts_cache.read_facts_cached(text).kind == "not-a-model"
    assert not list(store.glob("*.json"))


def test_unreadable_entries_and_switch_off(big_header, store, tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    shutil.copyfile(big_header, path)
    facts_cache.read_facts_cached(path)
    (entry,) = store.glob("*.json")
    entry.write_bytes(b"not json")
    assert facts_cache.read_facts_cached(path).kind == "model"   # read again and rewritten
    assert entry.read_bytes() != b"not json"
    monkeypatch.setenv(facts_cache.ENV_DISABLE, "1")
    _no_reading(monkeypatch)
    with pytest.raises(AssertionError, match="read again"):
        facts_cache.read_facts_cached(path)


def test_store_is_bounded(big_header, store, tmp_path, monkeypatch):
    monkeypatch.setattr(facts_cache, "MAX_ENTRIES", 3)
    for i in range(5):
        p = tmp_path / f"m{i}.gguf"
        shutil.copyfile(big_header, p)
        facts_cache.read_facts_cached(p)
    assert len(list(store.glob("*.json"))) == 3


def test_load_and_probe_use_it(big_header, store, tmp_path, monkeypatch):
    """The second probe of a file does not read its header (load() takes the same path)."""
    import gpt4all_loader

    path = tmp_path / "m.gguf"
    shutil.copyfile(big_header, path)
    rep = gpt4all_loader.probe(path)
    _no_reading(monkeypatch)
    again = gpt4all_loader.probe(path)
    assert again.to_dict() == rep.to_dict()


def test_anomalies_are_remembered(tmp_path):
    """What only some eras refuse (here a key stated twice) comes back from an entry as it was read."""
    from gpt4all_loader.formats.writer import write_gguf

    p = write_gguf(tmp_path / "a.gguf", [("general.architecture", 8, "llama"), ("general.file_type", 4, 1),
                                         ("general.file_type", 4, 1)], [])
    f = sniff.read_facts(p)
    assert f.anomalies and facts_cache.from_json(facts_cache.to_json(f)) == f
