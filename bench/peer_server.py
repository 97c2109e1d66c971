"""The peer of ``bench_serve.py``: llama-server from the same pinned llama-cpp-python sdist as our newest backend.

    python bench/peer_server.py [--jobs N] [--native]     # build (or find) it and print its path

The sdist is fetched and sha256-checked by ``gpt4all_loader.engines.sdist`` (the file our own build
verified; nothing unpinned is downloaded), its ``vendor/llama.cpp`` is extracted as published (without
our patches: the peer is upstream's server) into ``<cache>/peers/llama-server-<version>/src`` and only
the ``llama-server`` target is built with the PyPI cmake and ninja, into ``build-<flavour>/``.  A build
whose options are unchanged is reused.

The CMake options are those of our build of that backend (``backends/manifest.toml``: its common options
and those of the CPU variant our loader picks on this machine, static and position-independent like our
libraries), so both servers run the same compiled kernels; only what the server itself needs is switched
on (common, tools, server; no web UI, no curl, no OpenSSL).  ``--native`` builds with ``GGML_NATIVE=ON``
instead (every instruction this CPU has, e.g. AVX-512, which our CPU variants do not use).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

BACKEND = "gguf-2026-10"
#: switched on for the peer: what llama-server is built from (the manifest switches them off for our library)
SERVER_ON = ("LLAMA_BUILD_COMMON", "LLAMA_BUILD_TOOLS", "LLAMA_BUILD_SERVER")
#: the server's web UI is never fetched (it would be downloaded unpinned) nor built with npm
SERVER_EXTRA = ("-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_APP=OFF",
                "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF")


def peer_dir() -> Path:
    from gpt4all_loader.engines import cache
    from gpt4all_loader.engines.manifest import load_manifest

    return cache.cache_root() / "peers" / f"llama-server-{load_manifest()[BACKEND].version}"


def peer_source() -> Path:
    """The sdist's vendor/llama.cpp, unpatched, extracted once beside the peer's builds."""
    from gpt4all_loader.engines import sdist
    from gpt4all_loader.engines.manifest import load_manifest

    spec = load_manifest()[BACKEND]
    root = peer_dir() / "src"
    marker = root / ".extracted"
    if marker.exists() and marker.read_text() == spec.sha256:
        return _llama_dir(root)
    archive = sdist.fetch(spec.sdist, spec.sha256)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with tarfile.open(archive) as tf:
        members = [m for m in tf.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if hasattr(tarfile, "data_filter"):
            tf.extractall(root, members=members, filter="data")
        else:  # Python 3.11.0-3.11.3: the same checks, as our build makes them
            from gpt4all_loader.engines.build import _data_members

            tf.extractall(root, members=_data_members(members, root, archive))
    marker.write_text(spec.sha256)
    return _llama_dir(root)


def _llama_dir(root: Path) -> Path:
    found = sorted(root.glob("*/vendor/llama.cpp"))
    if not found:
        raise SystemExit(f"{root}: the sdist has no vendor/llama.cpp")
    return found[0]


def cmake_options(native: bool = False) -> tuple[str, list[str]]:
    """(flavour, options): our backend's options with the server switched on."""
    from gpt4all_loader.engines.manifest import load_manifest
    from gpt4all_loader.engines.variants import choose_variant

    spec = load_manifest()[BACKEND]
    if native:
        flavour, variant_opts = "native", ["-DGGML_NATIVE=ON"]
    else:
        flavour = choose_variant(BACKEND, device="cpu").variant or "cpu"
        variant_opts = list(spec.variants[flavour].cmake)
    # later options win: ours, then what the server needs, then the variant's (or native) CPU options
    merged: dict[str, str] = {}
    for opt in (*spec.cmake, *(f"-D{name}=ON" for name in SERVER_ON), *SERVER_EXTRA, *variant_opts):
        merged[opt.split("=", 1)[0]] = opt
    return flavour, list(merged.values())


def build_peer(jobs: int = 2, native: bool = False) -> Path:
    """Path of the llama-server binary, built now unless a build with the same options exists."""
    from gpt4all_loader.engines.build import log, run, run_with_progress, tool

    flavour, opts = cmake_options(native)
    bdir = peer_dir() / f"build-{flavour}"
    binary = bdir / "bin" / "llama-server"
    record = bdir / "peer.json"
    cmake_cmd_tail = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                      "-DCMAKE_POSITION_INDEPENDENT_CODE=ON", *opts]
    try:
        if binary.is_file() and json.loads(record.read_text())["cmake"] == cmake_cmd_tail:
            return binary
    except (OSError, ValueError, KeyError):
        pass
    src = peer_source()
    bdir.mkdir(parents=True, exist_ok=True)
    logfile = bdir / "build.log"
    logfile.write_text(f"llama-server from {src}\n")
    t0 = time.monotonic()
    log(f"peer llama-server ({flavour}): configuring {src}")
    run([tool("cmake"), "-S", str(src), "-B", str(bdir), f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}", *cmake_cmd_tail],
        logfile)
    log(f"peer llama-server ({flavour}): compiling (-j{jobs}), log in {logfile}")
    run_with_progress([tool("cmake"), "--build", str(bdir), "--target", "llama-server", "-j", str(jobs)], logfile,
                      f"llama-server/{flavour}")
    if not binary.is_file():
        raise SystemExit(f"{binary} was not built (see {logfile})")
    seconds = time.monotonic() - t0
    record.write_text(json.dumps({"cmake": cmake_cmd_tail, "seconds": round(seconds, 1),
                                  "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    log(f"peer llama-server ({flavour}): built in {seconds / 60:.1f} min: {binary}")
    return binary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--native", action="store_true", help="GGML_NATIVE=ON instead of our CPU variant's options")
    args = ap.parse_args()
    print(build_peer(args.jobs, args.native))


if __name__ == "__main__":
    main()
