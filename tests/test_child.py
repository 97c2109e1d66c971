"""engines/child.py, the one runner of child processes (isolated models, ``gpt4all-probe --load``, the
quantizer): how a child ended, in words, and its answer read back."""
from __future__ import annotations

import signal

from gpt4all_loader.engines import child


def test_an_ending_is_named():
    assert child.ending(-signal.SIGSEGV) == "signal SIGSEGV"
    assert child.ending(-signal.SIGABRT) == "signal SIGABRT"
    assert child.ending(1) == "exit status 1"
    assert child.ending(None) == "no exit status"


def test_a_child_runs_a_module_of_the_package_and_its_answer_is_read(tmp_path):
    missing = tmp_path / "missing.gguf"
    r = child.run("smoke", [str(missing), "--device", "cpu"], timeout=120, address_space=4 << 30)
    assert not r.timed_out and not r.crashed and r.returncode == 1
    answer = r.last_json()
    assert answer is not None and answer["ok"] is False and str(missing) in answer["error"]

