"""The demo's table: readable text for random models, and the column that makes the point."""
from __future__ import annotations

from conftest import require_backend

from gpt4all_loader.cli.demo import embedding_row, readable, run_one, same_as_original, write_gpt4all_2023_samples


def test_random_bytes_and_control_characters_read_as_escapes():
    assert readable(b"\xc3(t\xa7 lit\n\x01ok") == "\\xc3(t\\xa7 lit\\n\\x01ok"
    assert readable("Paris, caf\u00e9".encode()) == "Paris, caf\u00e9"


def test_same_as_the_gguf_v3_original_compares_tokens_of_the_same_weights():
    rows = [{"file": "tiny-llama-gguf3-f32.bin", "tokens": [5, 6]},
            {"file": "tiny-llama-ggml-f32.bin", "tokens": [5, 6]},
            {"file": "tiny-llama-ggjt1-f32.bin", "tokens": [5, 7]},
            {"file": "tiny-llama-ggmf1-f16.bin", "tokens": [5, 6]},  # its original (f16) is absent
            {"file": "tiny-llama-ggjt1-q4_0-by-llama-2023-04.bin", "tokens": [9]},
            {"file": "tiny-gptj-gpt4all-f16.bin", "tokens": [1]}]
    same_as_original(rows)
    assert [r["same"] for r in rows] == ["(the original)", "yes", "NO", "-", "-", "-"]


def test_embedding_row_gives_dimensions_and_cosine():
    assert embedding_row([[1.0, 0.0], [1.0, 1.0]]) == "embeds: 2 dims, cosine 0.707"


def test_every_gpt4all_2023_architecture_generates_or_embeds(tmp_path):
    """GPT-J and MPT generate on a ggml-gpt4all backend, Falcon, Replit and StarCoder on its 2023-08 era; BERT
    embeds."""
    require_backend("ggml-gpt4all-2023-08")
    rows = {r["file"].split("-")[1]: r for r in map(run_one, write_gpt4all_2023_samples(tmp_path))}
    assert sorted(rows) == ["bert", "falcon", "gptj", "mpt", "replit", "starcoder"]
    for kind, r in rows.items():
        era = "ggml-gpt4all-" if kind in ("gptj", "mpt") else "ggml-gpt4all-2023-08/"
        assert r["ok"] and r["backend"].startswith(era), r
        if kind == "bert":
            assert r["text"].startswith("embeds: 32 dims, cosine ") and r["tokens"] is None
        else:
            assert len(r["tokens"]) == 8, r
    assert -1.0 <= float(rows["bert"]["text"].split()[-1]) <= 1.0
