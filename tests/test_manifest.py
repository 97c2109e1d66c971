"""The manifest is read strictly: a misspelt key, a value of the wrong type, a missing per-era table or
another schema number is an error naming the file and the key, never a silently dropped check."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gpt4all_loader.engines import validate
from gpt4all_loader.engines.manifest import SCHEMA, era_rules, load_manifest, manifest_path, read_manifest
from gpt4all_loader.errors import ManifestError

PATH = Path("backends/manifest.toml")


def _read(text: str) -> None:
    read_manifest(tomllib.loads(text), PATH)


@pytest.fixture(scope="module")
def text() -> str:
    return manifest_path().read_text(encoding="utf-8")


def test_the_shipped_manifest_reads(text):
    _read(text)
    specs = load_manifest()
    assert all(era_rules(s.era) is not None for s in specs.values())
    assert specs["llama-2023-08"].limits.rot_asserted and specs["gguf-2026-10"].flash_attn == "auto"


def test_a_misspelt_accept_rule_key_is_named(text):
    bad = text.replace('tokenizers = ["llama", "gpt2", "bert", "t5", "rwkv", "plamo2"',
                       'tokenizer = ["llama", "gpt2", "bert", "t5", "rwkv", "plamo2"', 1)
    assert bad != text
    with pytest.raises(ManifestError, match=r"^backends/manifest.toml: backends\.gguf-2026-10\.accepts\[0\]: "
                                            r"unknown key 'tokenizer' \(did you mean 'tokenizers'\?\)"):
        _read(bad)


@pytest.mark.parametrize("table,line", [
    ("[backends.gguf-2024-09]", "flash_atn = \"off\""),
    ("[backends.gguf-2024-09.limits]", "unique_token = true"),
    ("[backends.llama-2023-08.cuda]", "matrix_type = []"),
    ("[backends.llama-2023-04.variants.cpu]", "cpu_feature = []"),
    ("[cuda]", "reserve = 1"),
    ('[eras."2024-09"]', "kvpad = 32"),
])
def test_an_unknown_key_anywhere_is_an_error(text, table, line):
    assert f"\n{table}\n" in text
    with pytest.raises(ManifestError, match=rf"backends/manifest.toml: .*unknown key '{line.split()[0]}'"):
        _read(text.replace(f"\n{table}\n", f"\n{table}\n{line}\n", 1))


def test_a_value_of_the_wrong_type_is_an_error(text):
    with pytest.raises(ManifestError, match=r"backends\.llama-2023-04: priority = '10' is not an integer"):
        _read(text.replace("priority = 10\n", "priority = \"10\"\n", 1))
    with pytest.raises(ManifestError, match=r"flash_attn = 'on' is not \"auto\" or \"off\""):
        _read(text.replace('flash_attn = "auto"', 'flash_attn = "on"', 1))


def test_a_missing_era_table_is_an_error(text):
    with pytest.raises(ManifestError, match=r"backends\.gguf-2023-11: era '2023-11' has no table \[eras\.\"2023-11"):
        _read(text.replace('[eras."2023-11"]', '[eras."2023-12"]', 1))
    start = text.index("[backends.gguf-2024-09.limits]")
    end = text.index("[backends.gguf-2024-09.variants.cpu]")
    with pytest.raises(ManifestError, match=r"backends\.gguf-2024-09: the table 'limits' is missing"):
        _read(text[:start] + text[end:])


def test_another_schema_is_refused(text):
    with pytest.raises(ManifestError, match=rf"^backends/manifest.toml: schema = {SCHEMA + 1}, "
                                            rf"but this gpt4all_loader reads schema {SCHEMA}"):
        _read(text.replace(f"schema = {SCHEMA}", f"schema = {SCHEMA + 1}", 1))


def test_an_unknown_anomaly_kind_is_named(text):
    with pytest.raises(ManifestError, match=r"accepts\[0\]\.anomalies: unknown anomaly kind 'duplicate-keys'"):
        _read(text.replace("duplicate-key = ", "duplicate-keys = ", 1))


def test_limits_and_memory_rules_come_from_the_manifest():
    """validate and memory keep no table of their own: an era the manifest lacks is an error, not a default."""
    assert not hasattr(validate, "ERAS")
    with pytest.raises(ValueError, match="unknown era '1999-01'"):
        era_rules("1999-01")
