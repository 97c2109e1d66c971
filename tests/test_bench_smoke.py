"""The benchmark scripts still import and their pure-Python parts still work (no engine is run)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_probe_bench_sparse_file_is_probed(tmp_path):
    from gpt4all_loader import probe

    bp = _module("bench_probe")
    p = bp.write_sparse_gguf(tmp_path / "s.gguf", 1 << 20)
    rep = probe(p)
    assert not rep.error
    assert p.stat().st_size > 0.9 * (1 << 20)


def test_generate_bench_report_renders():
    bg = _module("bench_generate")
    row = dict(label="ours", runs=1, load_s=0.5, ttft_s=1.0, hwm_after_load_mb=100.0, load_delta_mb=80.0,
               hwm_end_mb=110.0, pp_tps=200.0, pp_n=3, tg_tps=50.0, tg_n=3, n_prompt=10, n_gen=4, text=" 1, 2",
               errors=[])
    peer = dict(row, label="peer", pp_tps=100.0, tg_tps=25.0, ttft_s=2.0, text=" 1, 3")
    groups = [{"title": "t", "file": "f", "rows": [row, peer, {"label": "broken", "error": "exit 1"}], "notes": ["n"]}]
    text = bg.render(groups, None, markdown=True)
    assert "| ours |" in text and "prompt 2.00x" in text and "generation 2.00x" in text and "TTFT 2.00x" in text
    assert "failed: exit 1" in text and "no (" in text
    assert "ours / peer" in bg.render(groups, None, markdown=False)


def test_serve_bench_report_renders():
    bs = _module("bench_serve")
    # 48 content chunks each: 30 ms apart for ours, 15 ms for the peer and 24 ms for a baseline
    ours = [bs.Reply(start=0.0, first=0.5, last=0.5 + 47 * 0.030, end=2.0, tokens=48, chunks=48),
            bs.Reply(start=0.0, first=1.0, end=4.0, tokens=48)]
    peer = [bs.Reply(start=0.0, first=0.25, last=0.25 + 47 * 0.015, end=1.0, tokens=48, chunks=48),
            bs.Reply(start=0.0, first=0.5, end=2.0, tokens=48)]
    base = [bs.Reply(start=0.0, first=0.5, last=0.5 + 47 * 0.024, end=1.6, tokens=48, chunks=48)]
    figs = {"ours": bs.Figures(single=ours[:1], many=[ours], busy=ours[1:]),
            "baseline": bs.Figures(single=base, many=[base]),
            "llama-server": bs.Figures(single=peer[:1], many=[peer], busy=peer[1:])}
    text = bs.render({k: f.summary() for k, f in figs.items()}, 2)
    assert "| ours | 24.0 | 0.50 | 30.00 | 24.0 |" in text and "median (min-max)" in text
    assert "tok/s 1 client: 0.50x (target >= 0.9x: not met)" in text
    assert "time between tokens, 1 client: 2.00x" in text
    assert "ours / baseline:" in text and "* time between tokens, 1 client: 1.25x" in text
    assert "* tok/s 1 client: 0.80x" in text.split("ours / baseline:")[1]
    assert "aggregate tok/s: 0.50x" in text and "p95 TTFT: 2.00x (target <= 1.5x: not met)" in text
    assert "busy/idle (ours): 0.50x (target >= 0.4x: met)" in text
    assert bs.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_serve_bench_peer_options_follow_our_build():
    ps = _module("peer_server")
    flavour, opts = ps.cmake_options()
    assert "-DLLAMA_BUILD_SERVER=ON" in opts and "-DLLAMA_USE_PREBUILT_UI=OFF" in opts and "-DLLAMA_CURL=OFF" in opts
    assert "-DGGML_NATIVE=OFF" in opts and "-DGGML_OPENMP=OFF" in opts and flavour in ("cpu", "cpu-avxonly")
    assert len({o.split("=")[0] for o in opts}) == len(opts)  # each option once
    assert "-DGGML_NATIVE=ON" in ps.cmake_options(native=True)[1]
