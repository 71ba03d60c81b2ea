"""Every available qkernels kernel and the baselines of `qkernels bench`, under pytest-benchmark.

    pytest bench/ --benchmark-only                              # 3 layers x M = 1, 16, 256
    QKERNELS_BENCH_SMOKE=1 pytest bench --benchmark-disable     # 4096x4096 at M=1, each run once

Each kernel's result is checked against qkernels.reference on the benchmark's own input first.
Rounds cycle through copies of the weights and activations larger than twice the last-level cache
(see qkernels.bench); benchmarks are grouped by layer and M for comparison.
"""

from __future__ import annotations

import itertools
import time

import pytest

import qkernels
from qkernels import bench

DTYPE = "float16"
BUDGET = 2.0  # seconds of rounds per benchmark, at least bench.MIN_REPEATS rounds

KERNELS = [
    pytest.param(kernel, bits, id=f"{kernel.name}-w{bits}")
    for bits in bench.BITS
    for kernel in qkernels.kernels()
    if kernel.available and bits in kernel.bits and DTYPE in kernel.dtypes
]


def _benchmark(benchmark, candidate: bench.Candidate, layer: bench.Layer, M: int) -> None:
    t0 = time.perf_counter()
    y = candidate.calls[0]()
    first = time.perf_counter() - t0
    if candidate.check:
        candidate.check(y)
    benchmark.group = f"{layer.N}x{layer.K} M={M}"
    moved = candidate.weight_bytes + candidate.input_bytes + y.nbytes
    benchmark.extra_info.update(label=candidate.label, bytes=moved, ops=2 * M * layer.N * layer.K)
    rotation = itertools.cycle(candidate.calls[1:] + candidate.calls[:1])
    rounds = max(bench.MIN_REPEATS, min(bench.MAX_REPEATS, int(BUDGET / first)))
    benchmark.pedantic(lambda call: call(), setup=lambda: ((next(rotation),), {}), rounds=rounds)
    if not benchmark.disabled:
        median = benchmark.stats.stats.median
        benchmark.extra_info.update(gbps=moved / median / 1e9, gops=2 * M * layer.N * layer.K / median / 1e9)


@pytest.mark.parametrize("kernel, bits", KERNELS)
def test_kernel(benchmark, layer, M, kernel, bits):
    group_size = bench.group_size_for(bits, layer.K)
    if not kernel.runs(kernel.mode, bits, group_size, layer.K, DTYPE):  # a kernel of small groups: its own
        group_size = kernel.group_multiple
    if not kernel.runs(kernel.mode, bits, group_size, layer.K, DTYPE):
        pytest.skip(f"{kernel.name} runs neither the benchmark's groups nor groups of {group_size}")
    xs = layer.activations(M, DTYPE)
    _benchmark(benchmark, layer.kernel_candidate(kernel, bits, group_size, xs), layer, M)


@pytest.mark.parametrize("name", bench.BASELINES)
def test_baseline(benchmark, layer, M, name):
    baseline = layer.baselines(DTYPE)[name]
    if isinstance(baseline, str):
        pytest.skip(baseline)
    xs = layer.activations(M, DTYPE)
    _benchmark(benchmark, layer.baseline_candidate(name, baseline, xs), layer, M)
