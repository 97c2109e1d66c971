"""Generation speed, time to first token and peak memory: our Model API next to the peers, same file.

    python bench/bench_generate.py --setup          # once: peer venvs (llama-cpp-python from the pinned sdist, gpt4all)
    python bench/bench_generate.py [--procs 3] [--reps 3] [--threads 1] [--n-gen 64] [--json] [--markdown FILE]

Every engine runs in a fresh child process (bench/gen_child.py, or bench/bare_loop.cpp for the bare
C loop), one after the other and interleaved over ``--procs`` rounds, so that all of them see the same
machine load; no two copies of ggml share a process.  Settings are the same for every engine: the
same file, the same prompt text (the numbers 1..60, about 230 tokens), ``--threads``, ``--n-ctx``,
greedy decoding, no repeat penalty, ``--n-gen`` generated tokens.

Groups (a group is skipped, with the reason, when its peer or backend is missing):

* gguf-2026-10 on SmolLM2-135M Q4_1: ours; the engine's own C loop (bare_loop.cpp compiled here
  against the static archives in the cache build dir, i.e. the very object code our backend library
  carries); llama-cpp-python 0.3.36 built from the same pinned sdist with the cpu variant's flags,
  with its default flash_attn=False and with flash_attn=True (llama.cpp's own default, ``auto``, which
  ours and the bare loop use, turns it on for the CPU).
* gpt4all 2.8.2 (llama.cpp of mid 2024): SmolLM2 again, in a copy whose ``tokenizer.ggml.pre`` value
  "smollm" (unknown before late 2024) is renamed in place to "falcon" (the same length, so the copy
  is byte-for-byte the same file otherwise); ours runs the same copy.
* gpt4all 1.0.8 (August 2023, ggml era): a seeded GPT-J ggml file (writer.TinyGPTJ, F16) on our
  ggml-gpt4all-2023-05 backend, and a seeded LLaMA ggjt v3 file (writer.TinyLlama, F16) on our
  llama-2023-08 backend.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "gen_child.py"
BARE_SRC = HERE / "bare_loop.cpp"
NEW = "gguf-2026-10"

#: where --setup puts the peers (override with the options of the same name)
DEFAULT_VENVS = {
    "llama-cpp-python": Path(os.environ.get("BENCH_LCP_VENV", "/tmp/bench-venv")),
    "gpt4all2": Path(os.environ.get("BENCH_GPT4ALL2_VENV", "/tmp/g4a282-venv")),
    "gpt4all1": Path(os.environ.get("BENCH_GPT4ALL1_VENV", "/tmp/g4a108-venv")),
}
GPT4ALL2 = "gpt4all==2.8.2"
GPT4ALL1 = "gpt4all==1.0.8"


# -- setup ----------------------------------------------------------------------------------------------
def lcp_cmake_args(backend: str = NEW, variant: str = "cpu") -> list[str]:
    """CMake options of our backend variant, for llama-cpp-python's own build (no llava/mtmd, no tools)."""
    from gpt4all_loader.engines.manifest import load_manifest

    spec = load_manifest()[backend]
    keep = [o for o in spec.cmake if not o.startswith(("-DLLAMA_BUILD_COMMON", "-DLLAMA_BUILD_APP"))]
    return ["-DLLAVA_BUILD=OFF", *keep, *spec.variants[variant].cmake]


def link_archives(backend: str, out: Path) -> Path:
    """One shared library holding the static archives that build_backends.py left for ``backend``/cpu:
    the object code our backend library carries, for a peer's Python package to load."""
    from gpt4all_loader.engines import cache
    from gpt4all_loader.engines.manifest import load_manifest

    spec = load_manifest()[backend]
    archives = [cache.build_dir() / backend / "cpu" / "cmake" / a for a in spec.archives]
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [os.environ.get("CXX", "g++"), "-shared", "-o", str(out), "-Wl,--whole-archive", *map(str, archives),
           "-Wl,--no-whole-archive", f"-Wl,-soname,{out.name}", "-pthread", "-ldl", "-lm"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def setup_lcp_archives(args: argparse.Namespace) -> None:
    """llama-cpp-python 0.3.36's Python package (LLAMA_BUILD=OFF) + libllama.so from our archives, and
    0.1.78's package (pure ctypes, copied out of its pinned sdist) + libllama.so from the llama-2023-08
    archives: the peers' bindings over exactly our object code, without their own 30-minute builds."""
    import tarfile

    from gpt4all_loader.engines import sdist
    from gpt4all_loader.engines.manifest import load_manifest

    man = load_manifest()
    new = man[NEW]
    archive = sdist.fetch(new.sdist, new.sha256)
    venv = args.lcp_arch_venv
    for cmd, env in (([sys.executable, "-m", "venv", str(venv)], {}),
                     ([str(venv / "bin" / "pip"), "install", str(archive)],
                      {"CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"})):
        print("$", " ".join(f"{k}={v!r}" for k, v in env.items()), " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, **env})
    site = next((venv / "lib").glob("python3*/site-packages/llama_cpp"))
    lib = link_archives(NEW, site / "lib" / "libllama.so")
    for alias in ("libggml.so", "libggml-base.so"):  # the ggml symbols live in the same library
        (lib.parent / alias).unlink(missing_ok=True)
        (lib.parent / alias).symlink_to(lib.name)

    old = man["llama-2023-08"]
    old_archive = sdist.fetch(old.sdist, old.sha256)
    dest = args.lcp_old_path
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(old_archive) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and "/llama_cpp/" in m.name and m.name.endswith(".py")]
        for m in members:
            m.name = "llama_cpp/" + m.name.split("/llama_cpp/", 1)[1]
        tf.extractall(dest, members=members)
    link_archives("llama-2023-08", dest / "llama_cpp" / "libllama.so")


def setup(args: argparse.Namespace) -> int:
    """Create the peer venvs.  llama-cpp-python comes from the sdist that build_backends.py verified."""
    from gpt4all_loader.engines import sdist
    from gpt4all_loader.engines.manifest import load_manifest

    spec = load_manifest()[NEW]
    archive = sdist.fetch(spec.sdist, spec.sha256)  # refuses a file whose sha256 differs from the manifest
    steps = [
        ([sys.executable, "-m", "venv", str(args.lcp_venv)], {}),
        ([str(args.lcp_venv / "bin" / "pip"), "install", "-v", str(archive)],
         {"CMAKE_ARGS": " ".join(lcp_cmake_args()), "CMAKE_BUILD_PARALLEL_LEVEL": str(args.jobs)}),
        ([sys.executable, "-m", "venv", str(args.gpt4all2_venv)], {}),
        ([str(args.gpt4all2_venv / "bin" / "pip"), "install", GPT4ALL2], {}),
        ([sys.executable, "-m", "venv", str(args.gpt4all1_venv)], {}),
        ([str(args.gpt4all1_venv / "bin" / "pip"), "install", GPT4ALL1], {}),
    ]
    if args.setup_skip_pip_build:
        steps = steps[2:]
    for cmd, env in steps:
        print("$", " ".join(f"{k}={v!r}" for k, v in env.items()), " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, **env})
    setup_lcp_archives(args)
    return 0


# -- inputs -------------------------------------------------------------------------------------------------
def bench_dir() -> Path:
    from gpt4all_loader.engines import cache
    d = cache.files_dir() / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def prompt_file() -> Path:
    p = bench_dir() / "prompt-numbers.txt"
    text = ", ".join(str(i) for i in range(1, 61)) + ","
    if not p.is_file() or p.read_text() != text:
        p.write_text(text)
    return p


def smollm2_renamed_pre(src: Path) -> Path:
    """Copy of ``src`` with tokenizer.ggml.pre "smollm" renamed to "falcon" in place (same length)."""
    out = bench_dir() / (src.stem + ".pre-falcon.gguf")
    if out.is_file() and out.stat().st_size == src.stat().st_size:
        return out
    data = bytearray(src.read_bytes())
    key = b"tokenizer.ggml.pre"
    i = data.find(key)
    j = i + len(key) + 4 + 8  # value type (u32), string length (u64)
    if i < 0 or data[j:j + 6] != b"smollm":
        raise RuntimeError(f"{src}: tokenizer.ggml.pre is not 'smollm'")
    data[j:j + 6] = b"falcon"
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(out)
    return out


def tiny_gptj() -> Path:
    from gpt4all_loader.formats.writer import TinyGPTJ, write_gptj

    p = bench_dir() / "gptj-e256-l4-f16.bin"
    if not p.is_file():
        write_gptj(p, TinyGPTJ(seed=3, n_embd=256, n_head=4, n_layer=4, n_rot=32, n_ctx=2048), "f16")
    return p


def tiny_llama_ggjt3() -> Path:
    from gpt4all_loader.formats.writer import TinyLlama, write_llama

    p = bench_dir() / "llama-e256-l32-ggjt3-f16.bin"
    if not p.is_file():
        write_llama(p, TinyLlama(seed=3, n_embd=256, n_head=4, n_layer=32, n_ctx=2048), "ggjt", 3, ftype="f16")
    return p


def compile_c_loop(src: Path, name: str) -> Path:
    """Compile a C++ driver of llama.h (bare_loop.cpp, shift_loop.cpp) against the gguf-2026-10 cpu
    archives in the cache, i.e. the very object code our library carries (again only when newer)."""
    from gpt4all_loader.engines import cache
    from gpt4all_loader.engines.manifest import load_manifest

    spec = load_manifest()[NEW]
    bdir = cache.build_dir() / NEW / "cpu"
    trees = sorted((cache.build_dir() / NEW / "src").glob("*/vendor/llama.cpp"))
    archives = [bdir / "cmake" / a for a in spec.archives]
    missing = [str(a) for a in archives if not a.is_file()]
    if not trees or missing:
        raise FileNotFoundError(f"{NEW}/cpu is not built (python build_backends.py --only {NEW} --variant cpu)")
    exe = bdir / name
    newest = max(src.stat().st_mtime, *(a.stat().st_mtime for a in archives))
    if not exe.is_file() or exe.stat().st_mtime < newest:
        cmd = [os.environ.get("CXX", "g++"), "-std=c++17", "-O2", f"-I{trees[0] / 'include'}",
               f"-I{trees[0] / 'ggml' / 'include'}", str(src), "-o", str(exe), "-Wl,--start-group",
               *map(str, archives), "-Wl,--end-group", "-pthread", "-ldl", "-lm"]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    return exe


def bare_loop_exe() -> Path:
    return compile_c_loop(BARE_SRC, "bench_bare_loop")


# -- running ------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, label: str, cmd: list[str], env: dict[str, str] | None = None):
        self.label, self.cmd, self.env = label, cmd, env or {}
        self.results: list[dict] = []
        self.errors: list[str] = []

    def run(self, timeout: float) -> None:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **self.env}
        try:
            p = subprocess.run(self.cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            self.errors.append(f"timed out after {timeout:.0f}s")
            return
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
            self.errors.append(f"exit {p.returncode}: {tail[:300]}")
            return
        out = json.loads(lines[-1])
        if not out.get("ok"):
            self.errors.append(str(out.get("error")))
            return
        self.results.append(out)

    def summary(self) -> dict:
        if not self.results:
            return {"label": self.label, "error": "; ".join(self.errors[:1]) or "not run"}
        med = lambda key: statistics.median(r[key] for r in self.results if r.get(key) is not None)  # noqa: E731
        pp = [v for r in self.results for v in r["pp"]]
        tg = [v for r in self.results for v in r["tg"]]
        return {"label": self.label, "runs": len(self.results), "load_s": med("load_s"), "ttft_s": med("ttft_s"),
                "hwm_after_load_mb": med("hwm_after_load_kb") / 1024,
                "load_delta_mb": statistics.median(r["hwm_after_load_kb"] - r["hwm_before_kb"]
                                                   for r in self.results) / 1024,
                "hwm_end_mb": med("hwm_end_kb") / 1024,
                "pp_tps": statistics.median(pp) if pp else None, "pp_n": len(pp),
                "tg_tps": statistics.median(tg) if tg else None, "tg_n": len(tg),
                "n_prompt": self.results[0]["n_prompt"], "n_gen": self.results[0]["n_gen"],
                "text": self.results[0]["text"], "errors": self.errors}


def child(python: Path | str, engine: str, model: Path, prompt: Path, a: argparse.Namespace, **extra) -> list[str]:
    cmd = [str(python), str(CHILD), engine, str(model), str(prompt), "--n-gen", str(a.n_gen), "--threads",
           str(a.threads), "--n-ctx", str(a.n_ctx), "--reps", str(a.reps)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def venv_python(venv: Path, module: str) -> Path | None:
    py = venv / "bin" / "python"
    if not py.is_file():
        return None
    ok = subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0
    return py if ok else None


def build_groups(a: argparse.Namespace) -> list[tuple[str, str, list[Runner], list[str]]]:
    """[(title, file description, runners (ours first), notes)]"""
    from gpt4all_loader.engines.variants import built_variants
    from gpt4all_loader.testing import realfiles

    built = built_variants()
    prompt = prompt_file()
    ours_py = sys.executable
    groups = []
    notes: list[str]

    # 1: gguf-2026-10 vs llama-cpp-python 0.3.36 vs the bare C loop
    smol = Path(realfiles.smollm2_path())
    if "cpu" in built.get(NEW, []):
        runners = [Runner("ours (gguf-2026-10/cpu)", child(ours_py, "ours", smol, prompt, a, backend=NEW))]
        notes = []
        try:
            runners.append(Runner("bare C loop (same archives)", [str(bare_loop_exe()), str(smol), str(prompt),
                                  str(a.n_gen), str(a.threads), str(a.n_ctx), str(a.reps), "-1"]))
        except (FileNotFoundError, subprocess.CalledProcessError) as e:
            notes.append(f"bare C loop skipped: {e}")
        lcp = venv_python(a.lcp_venv, "llama_cpp")
        if lcp:
            runners.append(Runner("llama-cpp-python 0.3.36 (pip build), flash_attn=True",
                                  child(lcp, "llama-cpp-python-fa", smol, prompt, a)))
            runners.append(Runner("llama-cpp-python 0.3.36 (pip build), defaults: flash_attn=False",
                                  child(lcp, "llama-cpp-python", smol, prompt, a)))
        else:
            notes.append(f"llama-cpp-python (pip build) skipped: no venv with llama_cpp at {a.lcp_venv} (run --setup)")
        arch = venv_python(a.lcp_arch_venv, "llama_cpp")
        if arch:
            runners.append(Runner("llama-cpp-python 0.3.36 (our archives), flash_attn=True",
                                  child(arch, "llama-cpp-python-fa", smol, prompt, a)))
        else:
            notes.append(f"llama-cpp-python over our archives skipped: nothing at {a.lcp_arch_venv} (run --setup)")
        groups.append((f"{NEW} vs llama-cpp-python 0.3.36 (same sdist) vs bare C",
                       f"{smol.name} ({smol.stat().st_size / 1e6:.0f} MB)", runners, notes))

    # 2: gpt4all 2.8.2 (GGUF)
    g2 = venv_python(a.gpt4all2_venv, "gpt4all")
    if g2 and "cpu" in built.get(NEW, []):
        renamed = smollm2_renamed_pre(smol)
        n_prompt = _count_tokens(renamed, prompt)
        groups.append(("ours vs gpt4all 2.8.2", f"{renamed.name} (SmolLM2, tokenizer.ggml.pre renamed)", [
            Runner("ours (gguf-2026-10/cpu)", child(ours_py, "ours", renamed, prompt, a, backend=NEW)),
            Runner("gpt4all 2.8.2", child(g2, "gpt4all2", renamed, prompt, a, n_prompt_hint=n_prompt)),
        ], ["gpt4all has no tokenizer in its Python API: its prompt tokens/s uses our token count"]))

    # 3: gpt4all 1.0.8 on GPT-J (ggml era)
    g1 = venv_python(a.gpt4all1_venv, "gpt4all")
    if g1 and "cpu" in built.get("ggml-gpt4all-2023-05", []):
        path = tiny_gptj()
        n_prompt = _count_tokens(path, prompt)
        groups.append(("ours vs gpt4all 1.0.8: GPT-J ggml",
                       f"{path.name} ({path.stat().st_size / 1e6:.0f} MB, seeded weights)", [
            Runner("ours (ggml-gpt4all-2023-05/cpu)",
                   child(ours_py, "ours", path, prompt, a, backend="ggml-gpt4all-2023-05")),
            Runner("gpt4all 1.0.8", child(g1, "gpt4all1", path, prompt, a, n_prompt_hint=n_prompt)),
        ], ["gpt4all 1.0.8 always allocates a 2048-token context; ours uses --n-ctx"]))

    # 4: llama-2023-08 on a ggjt v3 LLaMA: llama-cpp-python 0.1.78 (same llama.cpp), gpt4all 1.0.8
    if "cpu" in built.get("llama-2023-08", []):
        path = tiny_llama_ggjt3()
        runners = [Runner("ours (llama-2023-08/cpu)", child(ours_py, "ours", path, prompt, a, backend="llama-2023-08"))]
        notes = []
        arch = venv_python(a.lcp_arch_venv, "numpy")
        if arch and (a.lcp_old_path / "llama_cpp" / "libllama.so").is_file():
            runners.append(Runner("llama-cpp-python 0.1.78 (our archives)",
                                  child(arch, "llama-cpp-python", path, prompt, a),
                                  env={"PYTHONPATH": str(a.lcp_old_path)}))
            notes.append("llama-cpp-python 0.1.78 tokenizes ' ' + prompt for create_completion: its output may differ")
        else:
            notes.append(f"llama-cpp-python 0.1.78 skipped: nothing at {a.lcp_old_path} (run --setup)")
        if g1:
            runners.append(Runner("gpt4all 1.0.8",
                                  child(g1, "gpt4all1", path, prompt, a, n_prompt_hint=_count_tokens(path, prompt))))
        groups.append(("llama-2023-08 vs llama-cpp-python 0.1.78 vs gpt4all 1.0.8: LLaMA ggjt v3",
                       f"{path.name} ({path.stat().st_size / 1e6:.0f} MB, seeded weights)", runners, notes))
    return groups


def _count_tokens(path: Path, prompt: Path) -> int:
    code = ("import sys, gpt4all_loader\n"
            "m = gpt4all_loader.load(sys.argv[1], device='cpu', n_ctx=64, n_threads=1)\n"
            "print(len(m.tokenize(open(sys.argv[2]).read())))\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(prompt)], capture_output=True, text=True)
    try:
        return int(out.stdout.split()[-1])
    except (IndexError, ValueError):
        return 0


# -- report -------------------------------------------------------------------------------------------------
def fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def ratio(a, b) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"


def render(groups_out: list[dict], a: argparse.Namespace, markdown: bool) -> str:
    lines: list[str] = []
    for g in groups_out:
        rows = g["rows"]
        if markdown:
            lines += [f"#### {g['title']}", "", f"File: `{g['file']}`", "",
                      "| engine | load s | TTFT s | peak RSS after load MB | prompt tok/s | gen tok/s "
                      "| output = ours |",
                      "|---|---:|---:|---:|---:|---:|---|"]
        else:
            lines += [f"== {g['title']}", f"   file: {g['file']}",
                      f"   {'engine':<52} {'load s':>7} {'TTFT s':>7} {'RSS MB':>7} {'pp tok/s':>9} "
                      f"{'tg tok/s':>9}  same"]
        ours = rows[0]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['label']} | failed: {r['error']} | | | | | |" if markdown
                             else f"   {r['label']:<52} failed: {r['error']}")
                continue
            same = "yes" if r["text"] == ours.get("text") else f"no ({r['text'][:24]!r})"
            cells = [fmt(r["load_s"], ".3f"), fmt(r["ttft_s"], ".3f"), fmt(r["hwm_after_load_mb"], ".0f"),
                     fmt(r["pp_tps"], ".1f"), fmt(r["tg_tps"], ".1f")]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {same} |" if markdown
                         else f"   {r['label']:<52} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, (7, 7, 7, 9, 9)))
                         + f"  {same}")
        lines.append("")
        for r in rows[1:]:
            if "error" in r or "error" in ours:
                continue
            txt = (f"ours / {r['label']}: prompt {ratio(ours['pp_tps'], r['pp_tps'])}, "
                   f"generation {ratio(ours['tg_tps'], r['tg_tps'])}, "
                   f"TTFT {ratio(r['ttft_s'], ours['ttft_s'])} (peer/ours, >1: ours faster), "
                   f"RSS after load {ratio(ours['hwm_after_load_mb'], r['hwm_after_load_mb'])}")
            lines.append(f"- {txt}" if markdown else f"   {txt}")
        for n in g["notes"]:
            lines.append(f"- note: {n}" if markdown else f"   note: {n}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="create the peer venvs, then exit")
    ap.add_argument("--jobs", type=int, default=2, help="--setup: parallel compile jobs")
    ap.add_argument("--procs", type=int, default=3, help="fresh processes per engine (interleaved)")
    ap.add_argument("--reps", type=int, default=3, help="prompt+generation repetitions inside each process")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--only", default="", help="substring of the group titles to run")
    ap.add_argument("--lcp-venv", type=Path, default=DEFAULT_VENVS["llama-cpp-python"])
    ap.add_argument("--gpt4all2-venv", type=Path, default=DEFAULT_VENVS["gpt4all2"])
    ap.add_argument("--gpt4all1-venv", type=Path, default=DEFAULT_VENVS["gpt4all1"])
    ap.add_argument("--lcp-arch-venv", type=Path,
                    default=Path(os.environ.get("BENCH_LCP_ARCH_VENV", "/tmp/bench-venv-arch")),
                    help="llama-cpp-python 0.3.36's Python package over a libllama.so linked from our archives")
    ap.add_argument("--lcp-old-path", type=Path, default=Path(os.environ.get("BENCH_LCP_OLD", "/tmp/lcp0178")),
                    help="llama-cpp-python 0.1.78's package over the llama-2023-08 archives (run with --lcp-arch-venv)")
    ap.add_argument("--setup-skip-pip-build", action="store_true",
                    help="--setup: skip llama-cpp-python's own (long) build, set up only the archive-linked peers")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", type=Path, help="also write the tables as Markdown to this file")
    a = ap.parse_args(argv)
    if a.setup:
        return setup(a)

    groups = [g for g in build_groups(a) if a.only.lower() in g[0].lower()]
    t0 = time.time()
    for i in range(a.procs):
        for _, _, runners, _ in groups:
            for r in runners:
                print(f"# round {i + 1}/{a.procs}: {r.label}", file=sys.stderr, flush=True)
                r.run(a.timeout)
    out = [{"title": t, "file": f, "rows": [r.summary() for r in rs], "notes": n} for t, f, rs, n in groups]
    header = (f"threads={a.threads} n_ctx={a.n_ctx} n_gen={a.n_gen} greedy; median of {a.procs} fresh processes "
              f"(load, TTFT, RSS) and {a.procs}x{a.reps} repetitions (tok/s); {time.time() - t0:.0f} s; "
              f"{platform.node()} {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if a.json:
        paths = {"lcp_venv": str(a.lcp_venv), "gpt4all2_venv": str(a.gpt4all2_venv),
                 "gpt4all1_venv": str(a.gpt4all1_venv), "markdown": str(a.markdown),
                 "lcp_arch_venv": str(a.lcp_arch_venv), "lcp_old_path": str(a.lcp_old_path)}
        print(json.dumps({"settings": vars(a) | paths, "groups": out}, indent=2, default=str))
    else:
        print(header)
        print(render(out, a, markdown=False))
    if a.markdown:
        a.markdown.write_text(header + "\n\n" + render(out, a, markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
