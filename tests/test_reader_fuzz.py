"""Mutated and truncated headers of every written container (GPT4All's Falcon, Replit, StarCoder and BERT
files included): the reader returns facts or raises FormatError, never anything else, and never takes
long; the catalog's verdicts (validation included) on whatever it returns raise nothing."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt4all_loader.engines.catalog import verdicts
from gpt4all_loader.errors import FormatError
from gpt4all_loader.formats.facts import FileFacts
from gpt4all_loader.formats.sniff import read_facts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fuzz_reader  # noqa: E402


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return fuzz_reader.bases(tmp_path_factory.mktemp("fuzzbases"))


def _check(path: Path) -> None:
    try:
        f = read_facts(path)
    except FormatError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(f, FileFacts) and f.format
    verdicts(f)


NAMES = ["ggmlNone", "ggmf1", "ggjt1", "ggjt2", "ggjt3", "gguf1", "gguf2", "gguf3", "gguf3-be",
         "gguf3-vocab", "gguf-odd", "gptj", "mpt-ggmm", "mpt-ggml", "falcon", "replit", "starcoder", "bert"]


@settings(max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), seed=st.integers(0, 2**32 - 1))
def test_random_mutations(tmp_path, bases, name, seed):
    p = tmp_path / "m.bin"
    p.write_bytes(fuzz_reader.mutate(random.Random(seed), bases[name]))
    _check(p)


@settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), cut=st.integers(0, 8192))
def test_truncations(tmp_path, bases, name, cut):
    p = tmp_path / "t.bin"
    p.write_bytes(bases[name][:cut])
    _check(p)


@settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), pos=st.integers(0, 4095), word=st.sampled_from(fuzz_reader.INTERESTING))
def test_interesting_words(tmp_path, bases, name, pos, word):
    b = bytearray(bases[name])
    pos = min(pos, len(b) - 4)
    b[pos:pos + 4] = word.to_bytes(4, "little")
    p = tmp_path / "w.bin"
    p.write_bytes(bytes(b))
    _check(p)


@settings(max_examples=60, deadline=2000)
@given(blob=st.binary(max_size=512))
def test_arbitrary_bytes(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("blob") / "b.bin"
    p.write_bytes(blob)
    _check(p)


@settings(max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from([b"GGUF", b"lmgg", b"fmgg", b"tjgg", b"algg", b"mmgg", b"lper", b"treb"]),
       rest=st.binary(max_size=256))
def test_magic_then_garbage(tmp_path, magic, rest):
    p = tmp_path / "g.bin"
    p.write_bytes(magic + rest)
    _check(p)
