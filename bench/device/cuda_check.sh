#!/usr/bin/env bash
# The CUDA backend on a GPU machine (the lent device machine: nvcc, CMake, ninja, PyTorch with CUDA
# and compute-sanitizer are installed there), from a fresh copy of the repository, in about 8 minutes:
#   1. builds the library and the CUDA backend for this GPU's architecture only (the compile gates
#      cover the others);
#   2. runs the C tests (ctest: test_cuda_device runs every CUDA kernel on the GPU against the oracle;
#      the probe's and the warp emulator's tests) and the Python tests of the CUDA backend
#      (tests/test_cuda.py);
#   3. runs test_cuda_device under compute-sanitizer memcheck and racecheck, and the Python GPU tests
#      under memcheck;
#   4. prints the benchmark table (bench/device/cuda_bench.py).
# No GPU has run it yet (README, "The CUDA backend").
#
# Usage: bench/device/cuda_check.sh [build directory, default build/gpu]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/gpu}
python=${PYTHON:-python3}
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)"; }

step "GPU"
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
[[ $arch == 90 ]] && arch=90a # Hopper: the library's sm_90a code

step "build (sm_$arch)"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DQK_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch-real" >/dev/null
ninja -C "$build" >/dev/null
export QKERNELS_LIBRARY=$PWD/$build/libqkernels.so
export QKERNELS_BACKEND_PATH=$PWD/$build/cuda/libqkernels_cuda.so
export QK_EXPECT_CUDA_BACKEND=1
"$python" -m qkernels info | grep -E "^(cuda|backend)"

step "C tests (ctest)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 300

# The rest of the Python suite runs host arrays, which a device kernel never takes (and refuses):
# CI runs it, with the library loaded and not detected.
step "Python tests of the CUDA backend, on the GPU"
"$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py

for tool in memcheck racecheck; do
  step "compute-sanitizer --tool $tool: test_cuda_device --quick (every CUDA kernel)"
  compute-sanitizer --tool "$tool" --error-exitcode 1 "$build/native/tests/test_cuda_device" --quick
done
step "compute-sanitizer --tool memcheck: the Python GPU tests"
compute-sanitizer --tool memcheck --error-exitcode 1 --target-processes all \
  "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py -k gpu

step "benchmark"
"$python" bench/device/cuda_bench.py
step "done"
