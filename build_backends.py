#!/usr/bin/env python3
"""Build the pinned llama.cpp backends into isolated shared libraries.

For each backend of backends/manifest.toml and each variant:
    pip download the sdist by name==version -> verify its sha256 -> extract vendor/llama.cpp
    -> CMake + Ninja (static, PIC, native flags off, the variant's CPU/GPU flags)
    -> compile our shim against that tree's llama.h -> link shim + static archives into ONE .so
       (unique SONAME, version script exporting only g4a_*, -Bsymbolic, --no-undefined)
    -> cache: <cache>/lib/libg4a-<backend>-<variant>.so and a .json record of how it was made.

A build whose inputs (manifest entry, shim sources, patches, compiler) are unchanged is skipped.
The cache is platformdirs' user cache dir, or $GPT4ALL_LOADER_CACHE.

    python build_backends.py                     # every CPU variant of every backend
    python build_backends.py --only gguf-2026-10 --variant cpu
    python build_backends.py --list [--json]     # what is declared, and what is built
    python build_backends.py --clean [--only X]  # remove build trees and libraries
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run from a checkout without installing: use ./loader as the package

try:
    from gpt4all_loader import cache, sdist
    from gpt4all_loader.errors import BuildError
    from gpt4all_loader.manifest import BackendSpec, load_manifest
except ImportError:  # not installed yet: import the package from its source folder
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpt4all_loader", HERE / "loader" / "__init__.py",
                                                  submodule_search_locations=[str(HERE / "loader")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpt4all_loader"] = mod
    spec.loader.exec_module(mod)
    from gpt4all_loader import cache, sdist
    from gpt4all_loader.errors import BuildError
    from gpt4all_loader.manifest import BackendSpec, load_manifest

SHIM_HEADER = HERE / "backends" / "shim" / "g4a_shim.h"
BUILD_RECIPE_VERSION = "1"   # bump when this script changes how a library is made


def lib_name(backend: str, variant: str) -> str:
    return f"libg4a-{backend}-{variant}.so"


def lib_path(backend: str, variant: str) -> Path:
    return cache.lib_dir() / lib_name(backend, variant)


def record_path(backend: str, variant: str) -> Path:
    return lib_path(backend, variant).with_suffix(".json")


def log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tool(name: str) -> str:
    """cmake/ninja from the Python environment (the PyPI packages) first, then PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise BuildError(f"'{name}' not found: install the project (pip install -e .) which brings it from PyPI")
    return found


def compiler_id() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()
        return out[0] if out else cxx
    except OSError:
        raise BuildError(f"C++ compiler '{cxx}' not found")


def inputs_key(spec: BackendSpec, variant: str) -> str:
    """Hash of everything that decides the bytes of one library."""
    h = hashlib.sha256()
    h.update(BUILD_RECIPE_VERSION.encode())
    var = spec.variants[variant]
    build_facts = [spec.name, spec.sdist, spec.sha256, spec.llama_cpp, spec.api, spec.api_defines, spec.archives,
                   spec.cmake, spec.layout, spec.shim_sources, spec.patches, variant, var.cmake, var.gpu]
    h.update(json.dumps(build_facts).encode())  # only what shapes the bytes: catalog rules are not here
    shim_files = sorted(str(p.relative_to(HERE)) for p in (HERE / "backends" / "shim").iterdir() if p.is_file())
    for rel in sorted({*spec.shim_sources, *shim_files, *spec.patches}):
        p = HERE / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.exists() else b"<missing>")
    h.update(compiler_id().encode())
    return h.hexdigest()[:16]


def run(cmd: list[str], logfile: Path, cwd: Path | None = None, env: dict | None = None) -> None:
    """Run a build step; on failure show the tail of its own output and raise."""
    with open(logfile, "a") as f:
        f.write("\n$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-40:]
        raise BuildError(f"step failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n"
                         f"--- last lines of {logfile} ---\n" + "\n".join(tail))


# ------------------------------------------------------------------------------------------------
def extract(spec: BackendSpec, archive: Path) -> Path:
    """Extract the sdist (or only its vendor/llama.cpp) once; return the llama.cpp source dir."""
    root = cache.build_dir() / spec.name / "src"
    marker = root / ".extracted"
    # the tree is the sdist plus our patches: a changed patch means a fresh extraction
    stamp = hashlib.sha256(spec.sha256.encode() + b"".join((HERE / p).read_bytes() for p in spec.patches)).hexdigest()
    if marker.exists() and marker.read_text() == stamp:
        return _llama_dir(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        if spec.layout != "whole-sdist":
            members = [m for m in members if "/vendor/llama.cpp/" in m.name + "/"]
        tf.extractall(root, members=members, filter="data")
    for patch in spec.patches:
        run(["patch", "-p1", "-d", str(_llama_dir(root)), "-i", str(HERE / patch)], root / "patch.log")
    marker.write_text(stamp)
    return _llama_dir(root)


def _llama_dir(root: Path) -> Path:
    found = sorted(root.glob("*/vendor/llama.cpp"))
    if not found:
        raise BuildError(f"{root}: the sdist has no vendor/llama.cpp")
    return found[0]


def build_one(spec: BackendSpec, variant: str, jobs: int) -> dict:
    var = spec.variants[variant]
    out = lib_path(spec.name, variant)
    rec = record_path(spec.name, variant)
    key = inputs_key(spec, variant)
    if out.exists() and rec.exists():
        try:
            if json.loads(rec.read_text()).get("inputs") == key:
                return {"backend": spec.name, "variant": variant, "status": "cached", "seconds": 0.0,
                        "size": out.stat().st_size}
        except ValueError:
            pass
    t0 = time.monotonic()
    log(f"{spec.name}/{variant}: fetching {spec.sdist}")
    archive = sdist.fetch(spec.sdist, spec.sha256)
    src = extract(spec, archive)
    bdir = cache.build_dir() / spec.name / variant
    bdir.mkdir(parents=True, exist_ok=True)
    logfile = bdir / "build.log"
    logfile.write_text(f"{spec.name}/{variant} from {archive.name} (sha256 {spec.sha256})\n")

    log(f"{spec.name}/{variant}: configuring llama.cpp {spec.llama_cpp}")
    cmake_cmd = [tool("cmake"), "-S", str(src), "-B", str(bdir / "cmake"), "-G", "Ninja",
                 f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}", "-DCMAKE_BUILD_TYPE=Release",
                 "-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_POSITION_INDEPENDENT_CODE=ON",
                 *spec.cmake, *var.cmake]
    run(cmake_cmd, logfile)
    log(f"{spec.name}/{variant}: compiling (ninja -j{jobs})")
    run([tool("cmake"), "--build", str(bdir / "cmake"), "--target", "llama", "-j", str(jobs)], logfile)

    archives = []
    for rel in spec.archives:
        p = bdir / "cmake" / rel
        if not p.exists():
            raise BuildError(f"{spec.name}/{variant}: expected archive {rel} was not built (see {logfile})")
        archives.append(str(p))

    log(f"{spec.name}/{variant}: compiling the shim and linking {out.name}")
    cxx = os.environ.get("CXX", "c++")
    includes = [f"-I{d}" for d in (src, src / "include", src / "ggml" / "include", HERE / "backends" / "shim")
                if d.is_dir()]
    defines = [f"-DG4A_API_GEN={spec.api}", f'-DG4A_BACKEND_NAME="{spec.name}"', f'-DG4A_VARIANT="{variant}"',
               f'-DG4A_LLAMA_COMMIT="{spec.llama_cpp.split()[0]}"', f"-DG4A_GPU={1 if var.gpu else 0}",
               *(f"-D{d}" for d in spec.api_defines)]
    objs = []
    for i, rel in enumerate(spec.shim_sources):
        obj = bdir / f"shim{i}.o"
        run([cxx, "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", *includes, *defines,
             "-c", str(HERE / rel), "-o", str(obj)], logfile)
        objs.append(str(obj))
    vscript = bdir / "exports.map"
    vscript.write_text("{\n  global: g4a_*;\n  local: *;\n};\n")
    cache.lib_dir().mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".so.tmp")
    run([cxx, "-shared", "-o", str(tmp_out), *objs, "-Wl,--start-group", *archives, "-Wl,--end-group",
         f"-Wl,-soname,{out.name}", f"-Wl,--version-script={vscript}", "-Wl,-Bsymbolic",
         "-Wl,--no-undefined", "-Wl,--gc-sections", "-pthread", "-lm", "-ldl"], logfile)
    check_exports(tmp_out)
    tmp_out.replace(out)
    shutil.copy2(SHIM_HEADER, cache.lib_dir() / SHIM_HEADER.name)
    seconds = time.monotonic() - t0
    record = {
        "name": spec.name, "variant": variant, "path": str(out), "sdist": spec.sdist, "sha256": spec.sha256,
        "llama_cpp": spec.llama_cpp, "api": spec.api, "era": spec.era, "gpu": var.gpu,
        "cpu_features": list(var.cpu_features), "inputs": key, "build_seconds": round(seconds, 1),
        "size": out.stat().st_size, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "compiler": compiler_id(),
    }
    rec.write_text(json.dumps(record, indent=2) + "\n")
    log(f"{spec.name}/{variant}: done in {seconds:.0f} s, {out.stat().st_size / 1e6:.1f} MB")
    return {"backend": spec.name, "variant": variant, "status": "built", "seconds": seconds,
            "size": out.stat().st_size}


def check_exports(so: Path) -> None:
    """The isolation promise: the library exports our shim's functions and nothing else."""
    proc = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"nm failed on {so}: {proc.stderr}")
    names = [line.split()[-1] for line in proc.stdout.splitlines() if line.strip()]
    foreign = [n for n in names if not n.startswith("g4a_")]
    if foreign:
        raise BuildError(f"{so} exports symbols other than the shim's: {foreign[:10]}")


# ------------------------------------------------------------------------------------------------
def listing(specs: dict[str, BackendSpec]) -> list[dict]:
    rows = []
    for spec in specs.values():
        for vname, var in spec.variants.items():
            path = lib_path(spec.name, vname)
            rec = {}
            if record_path(spec.name, vname).exists():
                try:
                    rec = json.loads(record_path(spec.name, vname).read_text())
                except ValueError:
                    rec = {}
            rows.append({
                "name": spec.name, "variant": vname, "built": path.exists(), "path": str(path),
                "sdist": spec.sdist, "sha256": spec.sha256, "era": spec.era, "llama_cpp": spec.llama_cpp,
                "api": spec.api, "gpu": var.gpu, "cpu_features": list(var.cpu_features),
                "size": path.stat().st_size if path.exists() else None,
                "build_seconds": rec.get("build_seconds"),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="build only this backend (repeatable, or comma-separated)")
    ap.add_argument("--variant", action="append", default=[], metavar="VARIANT",
                    help="build only this variant (repeatable); default: every CPU variant")
    ap.add_argument("--list", action="store_true", help="list every declared backend variant, built or not")
    ap.add_argument("--json", action="store_true", help="with --list: print a JSON list")
    ap.add_argument("--clean", action="store_true", help="remove the build trees and libraries of the selection")
    ap.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)

    try:
        specs = load_manifest()
    except (BuildError, OSError, ValueError, KeyError) as e:
        print(f"error: cannot read the backend manifest: {e}", file=sys.stderr)
        return 2
    only = [n for item in args.only for n in item.split(",") if n]
    unknown = [n for n in only if n not in specs]
    if unknown:
        print(f"error: unknown backend(s) {unknown}; declared: {', '.join(specs)}", file=sys.stderr)
        return 2
    selected = {n: s for n, s in specs.items() if not only or n in only}

    if args.list:
        rows = [r for r in listing(selected) if not args.variant or r["variant"] in args.variant]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'backend':<16} {'variant':<12} {'built':<6} {'sdist':<28} path")
            for r in rows:
                print(f"{r['name']:<16} {r['variant']:<12} {'yes' if r['built'] else 'no':<6} {r['sdist']:<28} {r['path']}")
        return 0

    if args.clean:
        for spec in selected.values():
            for vname in spec.variants:
                if args.variant and vname not in args.variant:
                    continue
                for p in (lib_path(spec.name, vname), record_path(spec.name, vname)):
                    p.unlink(missing_ok=True)
                shutil.rmtree(cache.build_dir() / spec.name / vname, ignore_errors=True)
            if not args.variant:
                shutil.rmtree(cache.build_dir() / spec.name, ignore_errors=True)
        log(f"cleaned {', '.join(selected)}")
        return 0

    jobs = []
    for spec in selected.values():
        for vname, var in spec.variants.items():
            if args.variant:
                if vname in args.variant:
                    jobs.append((spec, vname))
            elif var.gpu is None:
                jobs.append((spec, vname))
    if not jobs:
        print("error: nothing selected to build", file=sys.stderr)
        return 2

    results, failed = [], False
    for i, (spec, vname) in enumerate(jobs, 1):
        log(f"({i}/{len(jobs)}) {spec.name}/{vname}")
        try:
            results.append(build_one(spec, vname, args.jobs))
        except (BuildError, OSError) as e:
            failed = True
            print(f"\nerror: {spec.name}/{vname} failed:\n{e}\n", file=sys.stderr)
            results.append({"backend": spec.name, "variant": vname, "status": "FAILED", "seconds": 0.0,
                            "size": None})
    print(f"\n{'backend':<16} {'variant':<12} {'status':<7} {'time':>8} {'size':>9}")
    for r in results:
        size = f"{r['size'] / 1e6:.1f} MB" if r["size"] else "-"
        print(f"{r['backend']:<16} {r['variant']:<12} {r['status']:<7} {r['seconds']:>7.0f}s {size:>9}")
    print(f"cache: {cache.cache_root()}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
