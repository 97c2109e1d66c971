"""gpt4all-probe on broken and odd inputs: a clear message, the right exit status, never a traceback."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from gpt4all_loader import probe

REQUIRED_KEYS = {"path", "format", "format_version", "architecture", "file_type", "tensor_types", "n_params",
                 "vocab_only", "truncated", "loadable", "backend", "variant", "reasons", "memory", "error"}


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path, *, arch="llama", truncate=False, ttype=0):
    """A minimal valid GGUF v3: a few llama key/values and one 8x4 tensor."""
    kv = [("general.architecture", 8, _s(arch)),
          (f"{arch}.block_count", 4, struct.pack("<I", 1)),
          (f"{arch}.context_length", 4, struct.pack("<I", 128)),
          (f"{arch}.embedding_length", 4, struct.pack("<I", 8)),
          (f"{arch}.attention.head_count", 4, struct.pack("<I", 2))]
    h = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv))
    for k, t, v in kv:
        h += _s(k) + struct.pack("<I", t) + v
    h += _s("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 4) + struct.pack("<IQ", ttype, 0)
    h += b"\0" * ((-len(h)) % 32)
    data = b"\0" * (8 * 4 * 4)
    path.write_bytes(h + (data[:10] if truncate else data))
    return path


def cli(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.probe", *map(str, args)],
                        capture_output=True, text=True, timeout=60, env=e)
    assert "Traceback" not in cp.stderr and "Traceback" not in cp.stdout
    return cp


def cli_json(*args):
    cp = cli("--json", *args)
    data = json.loads(cp.stdout)
    assert isinstance(data, list)
    for d in data:
        assert REQUIRED_KEYS <= set(d), REQUIRED_KEYS - set(d)
    return cp.returncode, data


def test_zero_byte_file(tmp_path):
    f = tmp_path / "empty.bin"
    f.write_bytes(b"")
    rc, data = cli_json(f)
    assert rc == 1 and data[0]["loadable"] is False
    assert data[0]["format"] == "empty" and data[0]["kind"] == "not-a-model" and data[0]["error"] is None
    cp = cli(f)
    assert cp.returncode == 1 and "NOT LOADABLE: not a model file: an empty file" in cp.stdout


def test_six_byte_file(tmp_path):
    f = tmp_path / "six.gguf"
    f.write_bytes(b"GGUF\x03\x00")
    rc, data = cli_json(f)
    assert rc == 1
    assert data[0]["error"] and "6" in data[0]["error"]
    assert data[0]["loadable"] is False


def test_random_bytes(tmp_path):
    f = tmp_path / "noise.bin"
    f.write_bytes(bytes((i * 197 + 13) % 256 for i in range(4096)))
    rc, data = cli_json(f)
    assert rc == 1 and data[0]["loadable"] is False
    assert data[0]["format"] == "unknown" and data[0]["kind"] == "not-a-model" and data[0]["error"] is None


def test_html_page(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_text("<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>")
    rc, data = cli_json(f)
    assert rc == 1
    assert data[0]["format"] == "html" and data[0]["kind"] == "not-a-model"
    assert "download" in data[0]["suggestion"]
    assert all("not a model file" in r[0] for r in data[0]["reasons"].values())
    cp = cli(f)
    assert "HTML" in cp.stdout and "NOT LOADABLE" in cp.stdout


def test_valid_gguf(tmp_path):
    f = write_gguf(tmp_path / "tiny.gguf")
    rc, data = cli_json("--ctx-size", "64", f)
    d = data[0]
    assert rc == 0, d
    assert d["format"] == "gguf" and d["format_version"] == 3 and d["architecture"] == "llama"
    assert d["loadable"] is True and d["backend"] in d["reasons"] and d["reasons"][d["backend"]] == []
    assert d["memory"]["ctx_size"] == 64 and d["error"] is None
    assert d["tensor_types"]["F32"]["count"] == 1


def test_truncated_gguf(tmp_path):
    f = write_gguf(tmp_path / "cut.gguf", truncate=True)
    rc, data = cli_json(f)
    d = data[0]
    assert rc == 1 and d["truncated"] is True and d["loadable"] is False
    size = f.stat().st_size
    assert any(f"have {size}" in r[0] for r in d["reasons"].values())
    cp = cli(f)
    assert "truncated" in cp.stdout and cp.returncode == 1


def test_gptj_gguf_not_loadable(tmp_path):
    f = write_gguf(tmp_path / "gptj.gguf", arch="gptj")
    rc, data = cli_json(f)
    assert rc == 1 and "no graph" in data[0]["reasons"]["gguf-2026-10"][0]


def test_directory_without_models(tmp_path):
    d = tmp_path / "empty_dir"
    d.mkdir()
    (d / "README.txt").write_text("hello")
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    cp = cli(d)
    assert cp.returncode == 2 and "no model files" in cp.stdout
    rc, data = cli_json(d)
    assert rc == 2 and data[0]["error"]


def test_directory_recursion_skips_non_models(tmp_path):
    d = tmp_path / "models"
    (d / "sub").mkdir(parents=True)
    write_gguf(d / "sub" / "a.gguf")
    (d / "notes.txt").write_text("not a model")
    rc, data = cli_json(d)
    assert rc == 0 and [os.path.basename(x["path"]) for x in data] == ["a.gguf"]


def test_nonexistent_path(tmp_path):
    cp = cli(tmp_path / "missing.gguf")
    assert cp.returncode == 2 and "No such file" in cp.stdout
    rc, data = cli_json(tmp_path / "missing.gguf")
    assert rc == 2 and data[0]["error"] and data[0]["loadable"] is False


def test_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    cp = cli(f / "child")
    assert cp.returncode == 2 and "Not a directory" in cp.stdout


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path):
    f = write_gguf(tmp_path / "locked.gguf")
    f.chmod(0)
    try:
        cp = cli(f)
        assert cp.returncode == 2 and "Permission denied" in cp.stdout
    finally:
        f.chmod(0o644)


def test_symlink_loop(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    os.symlink(b, a)
    os.symlink(a, b)
    cp = cli(a)
    assert cp.returncode == 2 and "symbolic links" in cp.stdout.lower()


def test_mixed_exit_status(tmp_path):
    good = write_gguf(tmp_path / "good.gguf")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"")
    assert cli(good).returncode == 0
    assert cli(good, bad).returncode == 1
    assert cli(good, tmp_path / "nope").returncode == 2


def test_usage_errors():
    assert cli().returncode == 2
    assert cli("--ctx-size", "-5", "x").returncode == 2
    assert cli("--no-such-option", "x").returncode == 2


def test_no_colour_when_piped(tmp_path):
    f = write_gguf(tmp_path / "tiny.gguf")
    assert "\x1b[" not in cli(f).stdout


def test_probe_never_raises(tmp_path):
    for p in (tmp_path, tmp_path / "nope", b"\0bad", 12345):
        r = probe(p)
        assert r.error and r.loadable is False
        json.dumps(r.to_dict())


def _table_naming(tmp_path, filename: str, size: int, md5: str) -> str:
    """A test-only copy of the packaged published table whose ``filename`` entry has this size and md5."""
    from importlib import resources

    data = json.loads(resources.files("gpt4all_loader").joinpath("gpt4all_published.json").read_text())
    entry = next(e for e in data["entries"] if e["filename"] == filename)
    entry.update(filesize=size, md5sum=md5)
    out = tmp_path / "table.json"
    out.write_text(json.dumps(data))
    return str(out)


def test_published_file_named_and_verified(tmp_path):
    """A file of GPT4All's list (by name and size) is named; --verify compares its md5."""
    import hashlib

    name = "ggml-model-gpt4all-falcon-q4_0.bin"
    f = write_gguf(tmp_path / name)
    md5 = hashlib.md5(f.read_bytes()).hexdigest()
    table = _table_naming(tmp_path, name, f.stat().st_size, md5)
    rc, data = cli_json("--published-table", table, f)
    d = data[0]
    assert rc == 0 and d["published"]["name"] == "GPT4All Falcon" and d["published"]["md5sum"] == md5
    assert d["published"]["commit"].startswith("a6309355") and "verify" not in d
    assert d["chat_template_source"] == "gpt4all:GPT4All Falcon"
    text = cli("--published-table", table, f).stdout
    assert "GPT4All's GPT4All Falcon, q4_0, 8 GB RAM" in text and "a6309355" in text
    rc, data = cli_json("--verify", "--published-table", table, f)
    assert rc == 0 and data[0]["verify"] == {"md5": md5, "expected": md5, "ok": True,
                                             "message": f"md5 {md5} matches GPT4All's published GPT4All Falcon, "
                                                        f"q4_0, 8 GB RAM"}
    # the same size, other bytes: a mismatch, said clearly, exit status 1
    bad = _table_naming(tmp_path, name, f.stat().st_size, "0" * 32)
    cp = cli("--verify", "--published-table", bad, f)
    assert cp.returncode == 1 and "md5 MISMATCH" in cp.stdout and "0" * 32 in cp.stdout
    # the packaged table: a tiny file of that name is not the published one
    rc, data = cli_json("--verify", f)
    assert data[0]["published"] is None and data[0]["verify"]["ok"] is False
    assert any("named like GPT4All's published GPT4All Falcon" in n for n in data[0]["notes"])
    assert rc == 1


def test_verify_of_a_file_not_in_the_list(tmp_path):
    f = write_gguf(tmp_path / "mine.gguf")
    rc, data = cli_json("--verify", f)
    assert rc == 0 and data[0]["published"] is None and data[0]["verify"]["ok"] is None
    assert data[0]["chat_template_source"] == "default:chatml"
    assert "not in GPT4All's published list" in cli("--verify", f).stdout
    assert cli("--published-table", tmp_path / "nope.json", f).returncode == 2
