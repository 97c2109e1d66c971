"""The demo's table: readable text for random models, and the column that makes the point."""
from __future__ import annotations

from gpt4all_loader.cli.demo import readable, same_as_original


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
