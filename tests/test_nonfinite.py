"""A16 activations near float32's range (docs/numerics.md §3, "Non-finite activations", and
reading 16): the float32 sums a kernel forms must not overflow where the float64 result does not.

Regression: the x86_avx2 A16 kernels returned NaN for rows of |x| ≈ 1e38, where the reference gives
±Inf or a finite value: their float32 sums overflowed to +Inf in one chain and -Inf in another.
"""

from __future__ import annotations

import numpy as np
import pytest

import qkernels
from qkernels import reference
from qk_support import KERNELS, USABLE_DTYPES, encode, kinds_for, to_kind, to_rep

DTYPES = [d for d in ("float32", "bfloat16") if d in USABLE_DTYPES]  # float16 cannot hold 1e38
# (kernel, dtype, bits): the available A16 kernels on what they run, and automatic dispatch
CASES = [
    (k.name, dtype, bits)
    for k in KERNELS
    if k.mode == "a16" and k.available
    for dtype in DTYPES
    if dtype in k.dtypes
    for bits in k.bits
] + [(None, dtype, bits) for dtype in DTYPES for bits in (4, 8)]


def _activations(rng, M: int, K: int) -> np.ndarray:
    """Rows of every kind of large: the issue's constant 1e38, random signs at 1e38..3e38, large
    values among ordinary ones, float32's largest, and a row that also holds an Inf."""
    x = rng.standard_normal((M, K))
    for m in range(M):
        kind = m % 6
        if kind == 0:
            x[m] = 1e38
        elif kind == 1:
            x[m] = rng.choice([-1.0, 1.0], K) * rng.uniform(1e38, 3e38, K)
        elif kind == 2:
            x[m, rng.choice(K, K // 8, replace=False)] = rng.choice([-3e38, 3e38], K // 8)
        elif kind == 3:
            x[m] = rng.choice([-1.0, 1.0], K) * float(np.finfo(np.float32).max)
        elif kind == 4:
            x[m] = rng.choice([-1.0, 1.0], K) * 2.0**100
            x[m, rng.integers(K)] = np.inf
        # kind 5: an ordinary row, which must not notice its neighbours
    return x


def _weights(rng, bits: int, G: int, symmetric: bool):
    w = rng.standard_normal((40, 256)).astype(np.float32)
    return qkernels.quantize_weights(w, bits=bits, group_size=G, symmetric=symmetric)


def _check(y, x_rep, dtype, qw, G):
    reference.assert_matmul_close(to_rep(y, dtype), x_rep, dtype, qw.data, qw.scales, qw.zero_points, qw.bits, G, "a16")


def test_issue_example():
    w = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    qw = qkernels.quantize_weights(w, bits=4, group_size=32)
    x = np.full((1, 256), 1e38, np.float32)
    y = qkernels.matmul(x, qw)
    ref = qkernels.matmul(x, qw, backend="ref")
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    _check(y, x, "float32", qw, 32)


@pytest.mark.parametrize("kernel, dtype, bits", CASES)
@pytest.mark.parametrize("G, symmetric", [(32, True), (64, False), (128, False), (256, True)])
@pytest.mark.parametrize("M", [1, 6, 20])
def test_large_activations_match_the_reference(kernel, dtype, bits, G, symmetric, M):
    info = next((k for k in KERNELS if k.name == kernel), None)
    if info is not None and not info.runs("a16", bits, G, 256, dtype):  # x86_avx512's c2x4 variants: their G
        pytest.skip(f"{kernel} does not run G = {G}")
    rng = np.random.default_rng([bits, G, M])
    qw = _weights(rng, bits, G, symmetric)
    x_rep = encode(_activations(rng, M, qw.K), dtype)
    x = to_kind(x_rep, dtype, kinds_for(dtype)[0])
    _check(qkernels.matmul(x, qw, "a16", kernel=kernel), x_rep, dtype, qw, G)
    # The stateless path: canonical variants where M allows.
    y = qkernels.quantized_matmul(x, qw.data, qw.scales, qw.zero_points, bits=bits, group_size=G, kernel=kernel)
    _check(y, x_rep, dtype, qw, G)
