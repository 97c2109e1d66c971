"""Build the pinned llama.cpp backends into isolated shared libraries.

For each backend of backends/manifest.toml (shipped inside the package) and each variant:
    pip download the sdist by name==version -> verify its sha256 -> extract vendor/llama.cpp
    -> CMake + Ninja (static, PIC, native flags off, the variant's CPU/GPU flags)
    -> compile our shim against that tree's llama.h -> link shim + static archives into ONE .so
       (unique SONAME, version script exporting only g4a_*, -Bsymbolic, --no-undefined)
    -> cache: <cache>/lib/libg4a-<backend>-<variant>.so and a .json record of how it was made.

A build whose inputs (manifest entry, shim sources, patches, compiler) are unchanged is skipped.
The cache is platformdirs' user cache dir, or $GPT4ALL_LOADER_CACHE.

The command line is :mod:`gpt4all_loader.cli.build` (``gpt4all-build``, its usage is there).
The inputs are files shipped inside the package (manifest.package_data), named by their path
relative to it, so a checkout and an installed wheel with the same inputs share one cache entry.

CUDA variants (``gpu = "cuda"`` in the manifest) are built only on request.  They need nvcc (CUDA 13:
$CUDACXX, $CUDA_HOME/bin, /usr/local/cuda/bin or PATH) and cuBLAS: the toolkit's own, else the
pinned nvidia-cublas wheel of the manifest's [cuda] table (sha256 checked, extracted into the
cache).  cudart is linked statically; the library needs libcublas.so.13 (and libcublasLt.so.13) at
run time, found through RUNPATH $ORIGIN/cuda (links the build makes beside the libraries) or
preloaded by gpt4all_loader from an installed wheel or the system.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import IO, Any, Callable

from ..errors import BuildError
from . import cache, sdist
from .manifest import BackendSpec, cuda_settings, package_data, pinned

SHIM_DIR = "backends/shim"   # package data: every file in it is an input of every backend
BUILD_RECIPE_VERSION = "1"   # bump when this script changes how a library is made
CUDA_MAJOR = "13"            # the pinned cuBLAS wheels (nvidia/cu13) are for CUDA 13 toolkits
PROGRESS_INTERVAL_S = 5.0    # outside a terminal: at most one progress line per this many seconds
#: measured: every CPU variant of every backend from nothing, 2 cores (most of it the 2024 and 2026 trees)
COLD_BUILD = "about 14 minutes on 2 cores, the 2026 tree about 2-3 minutes per variant"


def stamp(msg: str) -> str:
    return f"[build {time.strftime('%H:%M:%S')}] {msg}"


def log(msg: str) -> None:
    print(stamp(msg), flush=True)


def tool(name: str) -> str:
    """cmake/ninja from the Python environment (the PyPI packages) first, then PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise BuildError(f"'{name}' not found: it is a dependency of gpt4all-loader (pip install {name})")
    return found


def compiler_id() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()
        return out[0] if out else cxx
    except OSError:
        raise BuildError(f"C++ compiler '{cxx}' not found")


def inputs_key(spec: BackendSpec, variant: str, cuda: "CudaToolchain | None" = None) -> str:
    """Hash of everything that decides the bytes of one library."""
    h = hashlib.sha256()
    h.update(BUILD_RECIPE_VERSION.encode())
    var = spec.variants[variant]
    build_facts = [spec.name, spec.sdist, spec.sha256, spec.llama_cpp, spec.api, spec.api_defines, spec.archives,
                   spec.cmake, spec.layout, spec.shim_sources, spec.patches, variant, var.cmake, var.gpu]
    if cuda is not None:
        build_facts += [spec.cuda.key_facts() if spec.cuda else {}, cuda.key_facts()]
    h.update(json.dumps(build_facts).encode())  # only what shapes the bytes: catalog rules are not here
    # files by their path relative to the package: the same key wherever the package lives; every file
    # in the folder of a shim source too (the headers its sources include)
    folders = {SHIM_DIR, *(rel.rsplit("/", 1)[0] for rel in spec.shim_sources if "/" in rel)}
    shim_files = [f"{d}/{p.name}" for d in folders if package_data(d).is_dir()
                  for p in package_data(d).iterdir() if p.is_file()]
    for rel in sorted({*spec.shim_sources, *shim_files, *spec.patches}):
        p = package_data(rel)
        h.update(rel.encode())
        h.update(p.read_bytes() if p.exists() else b"<missing>")
    h.update(compiler_id().encode())
    return h.hexdigest()[:16]


def run(cmd: list[str], logfile: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a build step; on failure show the tail of its own output and raise."""
    with open(logfile, "a") as f:
        f.write("\n$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-40:]
        raise BuildError(f"step failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n"
                         f"--- last lines of {logfile} ---\n" + "\n".join(tail))


_STEP = re.compile(r"^\[(\d+)/(\d+)\] ")   # ninja's status line: "[n/N] Building C object ..."


class Progress:
    """Ninja's ``[n/N]`` steps of one compile, summarised: a long tree compiles for minutes, silently.

    On a terminal one line is rewritten in place at every step; elsewhere (CI logs, pipes) a line
    is printed at the first step and then at most every ``interval`` seconds, and the last step
    always, so a log shows the build moving without one line per source file.
    """

    def __init__(self, label: str, out: IO[str], *, tty: bool, interval: float = PROGRESS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.out, self.tty, self.interval, self.clock = label, out, tty, interval, clock
        self.last: float | None = None
        self.width = 0
        self.step: tuple[int, int] | None = None

    def feed(self, line: str) -> None:
        m = _STEP.match(line)
        if not m:
            return
        done, total = int(m.group(1)), int(m.group(2))
        self.step = (done, total)
        now = self.clock()
        if not self.tty and done < total and self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        text = stamp(f"{self.label}: compiling [{done}/{total}] {100 * done // max(total, 1)}%")
        if self.tty:
            self.out.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.width:
            self.out.write("\n")
            self.out.flush()


def run_with_progress(cmd: list[str], logfile: Path, label: str) -> None:
    """:func:`run` for the compile step: its output goes to the log and, summarised, to stdout."""
    progress = Progress(label, sys.stdout, tty=sys.stdout.isatty())
    with open(logfile, "a") as f:
        f.write("\n$ " + " ".join(cmd) + "\n")
        f.flush()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                progress.feed(line)
    progress.close()
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-40:]
        raise BuildError(f"step failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n"
                         f"--- last lines of {logfile} ---\n" + "\n".join(tail))


# ------------------------------------------------------------------------------------------------
# CUDA: nvcc, cuBLAS and the static runtime

class CudaToolchain:
    """Where nvcc, the cuBLAS headers/libraries and the static CUDA runtime of one build come from."""

    def __init__(self, nvcc: Path, version: str, root: Path, architectures: str, cublas_include: Path,
                 cublas_lib_dir: Path, cublas_origin: str, cudart_static: Path):
        self.nvcc, self.version, self.root, self.architectures = nvcc, version, root, architectures
        self.cublas_include, self.cublas_lib_dir, self.cublas_origin = cublas_include, cublas_lib_dir, cublas_origin
        self.cudart_static = cudart_static

    def key_facts(self) -> list[str]:
        return [self.version, self.architectures, self.cublas_origin, str(self.cudart_static.name)]

    def cmake_args(self) -> list[str]:
        args = [f"-DCMAKE_CUDA_COMPILER={self.nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={self.architectures}",
                f"-DCMAKE_CUDA_FLAGS=-I{self.cublas_include}"]
        if self.cublas_lib_dir != self.root / "lib64" and self.cublas_lib_dir != self.root / "lib":
            # cuBLAS outside the toolkit (the wheel): tell FindCUDAToolkit where it is
            args += [f"-DCUDA_cublas_LIBRARY={self.cublas_lib_dir / 'libcublas.so.13'}",
                     f"-DCUDA_cublasLt_LIBRARY={self.cublas_lib_dir / 'libcublasLt.so.13'}"]
        return args

    def link_args(self) -> list[str]:
        d = self.cublas_lib_dir
        return [str(self.cudart_static), f"-L{d}", "-l:libcublas.so.13", f"-Wl,-rpath-link,{d}",
                "-Wl,-rpath,$ORIGIN/cuda", "-lrt"]


def find_nvcc() -> tuple[Path, Path]:
    """(nvcc, toolkit root).  A wrapper script on PATH is resolved to the real nvcc (nvcc -dryrun says _HERE_)."""
    cands = [os.environ.get("CUDACXX")]
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "bin", "nvcc"))
    cands += ["/usr/local/cuda/bin/nvcc", shutil.which("nvcc")]
    for c in cands:
        if not c or not os.access(c, os.X_OK):
            continue
        probe = subprocess.run([c, "-dryrun", "--version"], capture_output=True, text=True)
        here = next((line.split("=", 1)[1].strip() for line in (probe.stdout + probe.stderr).splitlines()
                     if line.startswith("#$ _HERE_=")), None)
        real = Path(here) / "nvcc" if here and (Path(here) / "nvcc").exists() else Path(c).resolve()
        root = real.parent.parent
        if (root / "include" / "cuda_runtime.h").exists() or glob.glob(str(root / "targets/*/include/cuda_runtime.h")):
            return real, root
    raise BuildError("CUDA variant requested but nvcc was not found (looked at $CUDACXX, $CUDA_HOME/bin, "
                     "/usr/local/cuda/bin and PATH): install the CUDA 13 toolkit, or build the CPU variants only")


def _lib_dirs(root: Path) -> list[Path]:
    return [p for p in (root / "lib64", root / "lib", *map(Path, glob.glob(str(root / "targets/*/lib"))))
            if p.is_dir()]


def _wheel_dir(requirement: str, sha: str) -> Path:
    """Fetch (sha256-checked) and extract one pinned wheel into the cache; return the extraction root."""
    import zipfile

    name, version = pinned(requirement)
    dest = cache.cache_root() / "cuda" / f"{name.replace('-', '_')}-{version}"
    marker = dest / ".extracted"
    if marker.exists() and marker.read_text() == sha:
        return dest
    try:
        whl = sdist.fetch(requirement, sha, binary=True)
    except BuildError as e:
        raise BuildError(f"{requirement} (pinned in [cuda] of backends/manifest.toml) is needed and could not "
                         f"be fetched: {e}\nPut the wheel into {cache.sdist_dir()} or install a CUDA toolkit "
                         f"with cuBLAS") from None
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with zipfile.ZipFile(whl) as z:
        z.extractall(dest)
    marker.write_text(sha)
    return dest


def cuda_toolchain(arch_override: str | None = None) -> CudaToolchain:
    nvcc, root = find_nvcc()
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    version = m.group(1) if m else ""
    if version.split(".")[0] != CUDA_MAJOR:
        raise BuildError(f"{nvcc} is CUDA {version or '?'}; the CUDA variants are pinned to CUDA {CUDA_MAJOR} "
                         f"(cuBLAS wheels nvidia/cu{CUDA_MAJOR}, sm_75+)")
    settings = cuda_settings()
    archs = arch_override or os.environ.get("G4A_CUDA_ARCHITECTURES") or settings.architectures
    if not archs:
        raise BuildError("backends/manifest.toml [cuda] has no architectures")
    wheels = {pinned(w.requirement)[0]: w for w in settings.wheels}

    # cuBLAS: the toolkit's own, else the pinned wheel
    inc: Path | None = None
    lib: Path | None = None
    origin = ""
    for d in _lib_dirs(root):
        if (d / "libcublas.so.13").exists() and (d / "libcublasLt.so.13").exists():
            heads = [Path(p).parent for p in (str(root / "include/cublas_v2.h"),
                                              *glob.glob(str(root / "targets/*/include/cublas_v2.h")))
                     if Path(p).exists()]
            if heads:
                inc, lib, origin = heads[0], d, f"system {d}"
                break
    if lib is None or inc is None:  # found together or not at all
        w = wheels.get("nvidia-cublas")
        if w is None:
            raise BuildError(f"the CUDA toolkit at {root} has no cuBLAS and [cuda] of backends/manifest.toml pins "
                             f"no nvidia-cublas wheel")
        base = _wheel_dir(w.requirement, w.sha256) / "nvidia" / f"cu{CUDA_MAJOR}"
        inc, lib, origin = base / "include", base / "lib", w.requirement
        if not (lib / "libcublas.so.13").exists() or not (inc / "cublas_v2.h").exists():
            raise BuildError(f"{w.requirement} extracted into {base} lacks libcublas.so.13 or cublas_v2.h")

    # the static CUDA runtime: the toolkit's, else the pinned nvidia-cuda-runtime wheel
    cudart = next((d / "libcudart_static.a" for d in _lib_dirs(root) if (d / "libcudart_static.a").exists()), None)
    if cudart is None:
        w = wheels.get("nvidia-cuda-runtime")
        if w is None:
            raise BuildError(f"the CUDA toolkit at {root} has no libcudart_static.a and no runtime wheel is pinned")
        cudart = _wheel_dir(w.requirement, w.sha256) / "nvidia" / f"cu{CUDA_MAJOR}" / "lib" / "libcudart_static.a"
        if not cudart.exists():
            raise BuildError(f"{w.requirement} lacks libcudart_static.a")
    return CudaToolchain(nvcc, version, root, archs, inc, lib, origin, cudart)


def link_cuda_runtime(tc: CudaToolchain) -> None:
    """<lib dir>/cuda/: links to the cuBLAS libraries the variants were linked with (their RUNPATH)."""
    d = cache.lib_dir() / "cuda"
    d.mkdir(parents=True, exist_ok=True)
    for name in cuda_settings().runtime_libraries:
        src = tc.cublas_lib_dir / name
        if not src.exists():
            raise BuildError(f"{src} does not exist: the CUDA variants need {name} at run time")
        link = d / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)


# ------------------------------------------------------------------------------------------------
def extract(spec: BackendSpec, archive: Path) -> Path:
    """Extract the sdist (or only its vendor/llama.cpp) once; return the llama.cpp source dir."""
    root = cache.build_dir() / spec.name / "src"
    marker = root / ".extracted"
    # the tree is the sdist plus our patches: a changed patch means a fresh extraction
    patches = b"".join(package_data(p).read_bytes() for p in spec.patches)
    stamp = hashlib.sha256(spec.sha256.encode() + patches).hexdigest()
    if marker.exists() and marker.read_text() == stamp:
        return _llama_dir(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        if spec.layout != "whole-sdist":
            members = [m for m in members if "/vendor/llama.cpp/" in m.name + "/"]
        if hasattr(tarfile, "data_filter"):
            tf.extractall(root, members=members, filter="data")
        else:  # Python 3.11.0-3.11.3 (Debian 12's 3.11.2): no extraction filters yet
            tf.extractall(root, members=_data_members(members, root, archive))
    for patch in spec.patches:
        run(["patch", "-p1", "-d", str(_llama_dir(root)), "-i", str(package_data(patch))], root / "patch.log")
    marker.write_text(stamp)
    return _llama_dir(root)


def _data_members(members: list[tarfile.TarInfo], root: Path, archive: Path) -> list[tarfile.TarInfo]:
    """The members, once none is refused for what tarfile's "data" filter refuses: a name or link that
    leads outside ``root``, a device or FIFO; modes lose their setuid/setgid/sticky and group/other
    write bits."""
    base = os.path.abspath(root)

    def inside(path: str) -> bool:
        return os.path.commonpath([base, os.path.normpath(path)]) == base

    for m in members:
        dest = os.path.join(base, m.name)
        ok = (m.isfile() or m.isdir() or m.issym() or m.islnk()) and not os.path.isabs(m.name) and inside(dest)
        if m.issym():
            ok = ok and not os.path.isabs(m.linkname) and inside(os.path.join(os.path.dirname(dest), m.linkname))
        elif m.islnk():
            ok = ok and not os.path.isabs(m.linkname) and inside(os.path.join(base, m.linkname))
        if not ok:
            raise BuildError(f"{archive}: member {m.name!r} would be written outside {root} or is not a plain "
                             "file, folder or link; refusing to extract it")
        m.mode &= 0o755
    return members


def _llama_dir(root: Path) -> Path:
    found = sorted(root.glob("*/vendor/llama.cpp"))
    if not found:
        raise BuildError(f"{root}: the sdist has no vendor/llama.cpp")
    return found[0]


def toolchain(spec: BackendSpec, variant: str, cuda_arch: str | None) -> CudaToolchain | None:
    gpu = spec.variants[variant].gpu
    if gpu == "cuda":
        return cuda_toolchain(cuda_arch)
    if gpu:
        raise BuildError(f"{spec.name}/{variant}: gpu = {gpu!r} is not a kind gpt4all-build builds")
    return None


def is_current(spec: BackendSpec, variant: str, key: str) -> bool:
    """The cached library was built from exactly these inputs: building it again is a no-op."""
    rec = cache.record_path(spec.name, variant)
    if not (cache.library_path(spec.name, variant).exists() and rec.exists()):
        return False
    try:
        return bool(json.loads(rec.read_text()).get("inputs") == key)
    except ValueError:
        return False


def needs_build(spec: BackendSpec, variant: str, cuda_arch: str | None = None) -> bool:
    try:
        return not is_current(spec, variant, inputs_key(spec, variant, toolchain(spec, variant, cuda_arch)))
    except BuildError:
        return True  # build_one says why


def build_one(spec: BackendSpec, variant: str, jobs: int, cuda_arch: str | None = None) -> dict[str, Any]:
    var = spec.variants[variant]
    out = cache.library_path(spec.name, variant)
    rec = cache.record_path(spec.name, variant)
    tc = toolchain(spec, variant, cuda_arch)
    key = inputs_key(spec, variant, tc)
    if is_current(spec, variant, key):
        return {"backend": spec.name, "variant": variant, "status": "cached", "seconds": 0.0,
                "size": out.stat().st_size}
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
                 *spec.cmake, *var.cmake, *(tc.cmake_args() if tc else ())]
    if tc:
        log(f"{spec.name}/{variant}: CUDA {tc.version} ({tc.nvcc}), architectures {tc.architectures}, "
            f"cuBLAS from {tc.cublas_origin}")
    run(cmake_cmd, logfile)
    log(f"{spec.name}/{variant}: compiling (ninja -j{jobs})")
    run_with_progress([tool("cmake"), "--build", str(bdir / "cmake"), "--target", "llama", "-j", str(jobs)], logfile,
                      f"{spec.name}/{variant}")

    archives = []
    for rel in (*spec.archives, *(spec.cuda.archives if tc and spec.cuda else ())):
        p = bdir / "cmake" / rel
        if not p.exists():
            raise BuildError(f"{spec.name}/{variant}: expected archive {rel} was not built (see {logfile})")
        archives.append(str(p))

    log(f"{spec.name}/{variant}: compiling the shim and linking {out.name}")
    cxx = os.environ.get("CXX", "c++")
    includes = [f"-I{d}" for d in (src, src / "include", src / "ggml" / "include", package_data(SHIM_DIR))
                if d.is_dir()]
    defines = [f"-DG4A_API_GEN={spec.api}", f'-DG4A_BACKEND_NAME="{spec.name}"', f'-DG4A_VARIANT="{variant}"',
               f'-DG4A_LLAMA_COMMIT="{spec.llama_cpp.split()[0]}"', f"-DG4A_GPU={1 if var.gpu else 0}",
               *(f"-D{d}" for d in spec.api_defines)]
    objs = []
    for i, rel in enumerate(spec.shim_sources):
        obj = bdir / f"shim{i}.o"
        run([cxx, "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", *includes, *defines,
             "-c", str(package_data(rel)), "-o", str(obj)], logfile)
        objs.append(str(obj))
    vscript = bdir / "exports.map"
    vscript.write_text("{\n  global: g4a_*;\n  local: *;\n};\n")
    cache.lib_dir().mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".so.tmp")
    run([cxx, "-shared", "-o", str(tmp_out), *objs, "-Wl,--start-group", *archives, "-Wl,--end-group",
         f"-Wl,-soname,{out.name}", f"-Wl,--version-script={vscript}", "-Wl,-Bsymbolic",
         "-Wl,--no-undefined", "-Wl,--gc-sections", *(tc.link_args() if tc else ()),
         "-pthread", "-lm", "-ldl"], logfile)
    check_exports(tmp_out)
    if tc:
        link_cuda_runtime(tc)
    tmp_out.replace(out)
    seconds = time.monotonic() - t0
    record = {
        "name": spec.name, "variant": variant, "path": str(out), "sdist": spec.sdist, "sha256": spec.sha256,
        "llama_cpp": spec.llama_cpp, "api": spec.api, "era": spec.era, "gpu": var.gpu,
        "cpu_features": list(var.cpu_features), "inputs": key, "build_seconds": round(seconds, 1),
        "size": out.stat().st_size, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "compiler": compiler_id(),
    }
    if tc:
        record["cuda"] = {"nvcc": str(tc.nvcc), "version": tc.version, "architectures": tc.architectures,
                          "cublas": tc.cublas_origin, "cudart": "static",
                          "needs": list(cuda_settings().runtime_libraries)}
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
def listing(specs: dict[str, BackendSpec]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs.values():
        for vname, var in spec.variants.items():
            path = cache.library_path(spec.name, vname)
            rec = {}
            if cache.record_path(spec.name, vname).exists():
                try:
                    rec = json.loads(cache.record_path(spec.name, vname).read_text())
                except ValueError:
                    rec = {}
            rows.append({
                "name": spec.name, "variant": vname, "built": path.exists(), "path": str(path),
                "sdist": spec.sdist, "sha256": spec.sha256, "era": spec.era, "llama_cpp": spec.llama_cpp,
                "api": spec.api, "gpu": var.gpu, "cpu_features": list(var.cpu_features),
                "size": path.stat().st_size if path.exists() else None,
                "build_seconds": rec.get("build_seconds"),
                "cuda_architectures": (rec.get("cuda") or {}).get("architectures"),
            })
    return rows
