"""reports.py's TypedDicts say exactly which keys the reports carry: the dicts estimate(), plan_memory() and the
smoke load return have those keys (all the required ones, no others)."""
from __future__ import annotations

from gpt4all_loader.formats.sniff import read_facts
from gpt4all_loader.formats.writer import TinyLlama, write_llama
from gpt4all_loader.memory import estimate, plan_memory
from gpt4all_loader.reports import DeviceItem, LoadCheck, MemoryEstimate, MemoryPlan
from gpt4all_loader.smoke import run


def _keys_fit(d: dict, td: type) -> None:
    assert td.__required_keys__ <= set(d) <= td.__required_keys__ | td.__optional_keys__, \
        (sorted(set(d) - td.__required_keys__ - td.__optional_keys__), sorted(td.__required_keys__ - set(d)))


def test_estimate_and_plan_carry_the_keys_their_types_name(tmp_path):
    p = tmp_path / "tiny.gguf"
    write_llama(p, TinyLlama(seed=0), "gguf", version=3, ftype="f16")
    facts = read_facts(p)
    _keys_fit(estimate(facts, ctx_size=64), MemoryEstimate)
    both = plan_memory(facts, ctx_size=64, gpu_layers=2, free_vram_bytes=1 << 30, reserve_bytes=0)
    _keys_fit(both, MemoryPlan)
    assert len(both["items"]) == 2
    for item in both["items"]:
        _keys_fit(item, DeviceItem)


def test_the_smoke_answer_carries_the_keys_of_a_load_check(tmp_path):
    _keys_fit(run(str(tmp_path / "missing.gguf"), None, "cpu", 64, True), LoadCheck)
