"""Real files made by others: llama.cpp's vocab-only files from pinned sdists, a real 135M GGUF
model from a wheel, and a 4 GB sparse file that must probe as fast as a small one."""
from __future__ import annotations

import time

import pytest

from gpt4all_loader.errors import BuildError
from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import write_gguf
from gpt4all_loader.testing import realfiles


def _get(fn, *args):
    try:
        return fn(*args)
    except BuildError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"package index unreachable: {str(exc)[:200]}")
        raise


# kind -> (format, version, architecture, tokenizer, n_vocab)
EXPECTED = {
    "ggmf-v1": ("ggmf", 1, "llama", "llama", 32000),
    "ggjt-v1": ("ggjt", 1, "llama", "llama", 32000),
    "gguf-v1-llama": ("gguf", 1, "llama", "llama", 32000),
    "gguf-aquila": ("gguf", 2, "llama", "gpt2", 100008),
    "gguf-llama-spm": ("gguf", 3, "llama", "llama", 32000),
    "gguf-gpt-2": ("gguf", 3, "gpt2", "gpt2", 50257),
    "gguf-mpt": ("gguf", 3, "mpt", "gpt2", 50432),
    "gguf-bert-bge": ("gguf", 3, "bert", "bert", 30522),
    "gguf-starcoder": ("gguf", 3, "starcoder2", "gpt2", 49152),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_vocab_files(kind):
    f = read_facts(_get(realfiles.vocab_file, kind))
    fmt, ver, arch, tok, n_vocab = EXPECTED[kind]
    assert (f.format, f.format_version, f.architecture, f.tokenizer) == (fmt, ver, arch, tok)
    assert f.vocab_only and f.kind == "vocab-only" and f.n_tensors == 0 and not f.truncated
    assert f.hparams["n_vocab"] == n_vocab
    if fmt != "gguf":
        assert f.file_type == 1 and f.hparams["n_embd"] == 4096 and f.hparams["n_layer"] == 32


def test_legacy_vocab_contents():
    f = read_facts(_get(realfiles.vocab_file, "ggjt-v1"), with_vocab=True)
    toks = f.kv["tokenizer.ggml.tokens"]
    assert toks[3 + 0x41] == b"A" and len(toks) == 32000  # byte tokens stored as the raw byte


def test_smollm2():
    f = read_facts(_get(realfiles.smollm2_path), with_kv=True)
    assert (f.format, f.format_version, f.kind, f.architecture, f.tokenizer) == ("gguf", 3, "model", "llama", "gpt2")
    assert f.chat_template and "im_start" in f.chat_template
    assert {k: v.count for k, v in f.tensor_types.items()} == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert f.n_tensors == 272 and not f.truncated and not f.split_experts
    assert f.hparams["n_layer"] == 30 and f.hparams["n_head_kv"] == 3 and f.hparams["n_vocab"] == 49152
    assert f.file_type_name == "MOSTLY_Q4_1"
    assert f.data_offset + f.data_bytes_expected <= f.size
    assert 130e6 < f.n_params < 140e6
    assert f.kv["tokenizer.ggml.merges"]["type"] == "STRING"


def test_sparse_4gb_probe_reads_only_the_header(tmp_path):
    kv = [("general.architecture", 8, "llama"), ("llama.block_count", 4, 1)]
    small = write_gguf(tmp_path / "small.gguf", kv, [("token_embd.weight", 0, [4096, 256])])
    big = write_gguf(tmp_path / "big.gguf", kv, [("token_embd.weight", 0, [32, 32])])
    # rewrite the big one's tensor shape to claim 4 GiB of F32 data, then extend the file sparsely
    raw = bytearray(big.read_bytes())
    i = raw.index(b"token_embd.weight") + len("token_embd.weight") + 4
    raw[i:i + 16] = (1 << 16).to_bytes(8, "little") + (1 << 14).to_bytes(8, "little")
    big.write_bytes(bytes(raw[: len(raw) - 32 * 32 * 4]))
    f0 = read_facts(big)
    with open(big, "r+b") as fh:
        fh.truncate(f0.data_offset + 4 * (1 << 30))
    t = time.perf_counter()
    for _ in range(5):
        f = read_facts(big)
    t_big = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    for _ in range(5):
        read_facts(small)
    t_small = (time.perf_counter() - t) / 5
    assert f.size >= 4 << 30 and not f.truncated and f.tensor_types["F32"].bytes == 4 << 30
    assert t_big < 0.05 and t_big < 10 * t_small + 0.01
