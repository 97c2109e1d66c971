"""Build and run tools/c_loop.cpp: the newest engine's own greedy loop, with none of our code.

    python tools/c_loop.py MODEL "PROMPT" [N_PREDICT] [N_THREADS] [N_CTX]

It links against the static archives that build_backends.py left in the cache for the gguf-2026-10
cpu variant, so it runs exactly the engine our backend library carries.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BACKEND, VARIANT = "gguf-2026-10", "cpu"


def build() -> Path:
    from gpt4all_loader.engines import cache
    from gpt4all_loader.engines.manifest import load_manifest

    spec = load_manifest()[BACKEND]
    bdir = cache.build_dir() / BACKEND / VARIANT
    src = sorted((cache.build_dir() / BACKEND / "src").glob("*/vendor/llama.cpp"))
    archives = [bdir / "cmake" / a for a in spec.archives]
    if not src or not all(a.exists() for a in archives):
        raise SystemExit(f"{BACKEND}/{VARIANT} is not built: "
                         f"python build_backends.py --only {BACKEND} --variant {VARIANT}")
    exe = bdir / "c_loop"
    source = HERE / "c_loop.cpp"
    if not exe.exists() or exe.stat().st_mtime < max(source.stat().st_mtime, *(a.stat().st_mtime for a in archives)):
        cmd = [os.environ.get("CXX", "c++"), "-std=c++17", "-O2", f"-I{src[0] / 'include'}",
               f"-I{src[0] / 'ggml' / 'include'}", str(source), "-o", str(exe), "-Wl,--start-group",
               *map(str, archives), "-Wl,--end-group", "-pthread", "-ldl", "-lm"]
        subprocess.run(cmd, check=True)
    return exe


def run(model: str, prompt: str, n_predict: int = 16, n_threads: int = 2, n_ctx: int = 512) -> dict:
    exe = build()
    out = subprocess.run([str(exe), model, prompt, str(n_predict), str(n_threads), str(n_ctx)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2:
        raise SystemExit(__doc__)
    print(json.dumps(run(args[0], args[1], *(int(a) for a in args[2:]))))
