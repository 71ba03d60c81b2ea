"""KV-cache quantization (qkernels.quant): layout of the scales, the integer ranges, and the
documented round-trip bound |x − x̂| ≤ scale · (1/2 + 2^-16) + 2^-24 · |x̂|."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qkernels
from qkernels import quant
from qk_support import examples


@settings(max_examples=examples(40))
@given(bits=st.sampled_from([4, 8]), symmetric=st.booleans(), T=st.integers(1, 9), D=st.integers(1, 8),
       heads=st.integers(1, 3), magnitude=st.sampled_from([1e-30, 1e-3, 1.0, 1e4, 1e30]),
       offset=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_kv_round_trip_within_its_bound(bits, symmetric, T, D, heads, magnitude, offset, seed):
    rng = np.random.default_rng(seed)
    shape = (2, heads, T, D)
    keys = rng.standard_normal(shape) * magnitude
    if offset:  # per-channel key offsets, as real keys have
        keys += rng.standard_normal((1, 1, 1, D)) * 5 * magnitude
    keys = keys.astype(np.float32)
    values = (rng.standard_normal(shape) * magnitude).astype(np.float32)
    kv = quant.quantize_kv(keys, values, bits=bits, symmetric=symmetric)

    assert kv.keys.shape == kv.values.shape == shape and kv.keys.dtype == kv.values.dtype == np.int8
    assert kv.key_scales.shape == (2, heads, 1, D) and kv.value_scales.shape == (2, heads, T, 1)
    qmin = -(1 << (bits - 1)) + (1 if symmetric else 0)
    for q in (kv.keys, kv.values):
        assert q.min() >= qmin and q.max() <= (1 << (bits - 1)) - 1
    assert (kv.key_zero_points is None) == (kv.value_zero_points is None) == symmetric

    for x, x_hat, scales in ((keys, quant.dequantize_keys(kv), kv.key_scales),
                             (values, quant.dequantize_values(kv), kv.value_scales)):
        assert x_hat.dtype == np.float32 and x_hat.shape == shape
        bound = scales.astype(np.float64) * (0.5 + 2.0**-16) + 2.0**-24 * np.abs(x_hat.astype(np.float64))
        assert (np.abs(x.astype(np.float64) - x_hat) <= bound).all()


def test_kv_scales_follow_channels_and_tokens():
    keys = np.ones((1, 1, 4, 3), np.float32) * np.array([1.0, 10.0, 100.0], np.float32)  # channel magnitudes
    values = np.ones((1, 1, 4, 3), np.float32) * np.array([1.0, 2.0, 3.0, 4.0], np.float32)[:, None]
    kv = quant.quantize_kv(keys, values, bits=8, symmetric=True)
    np.testing.assert_allclose(kv.key_scales.ravel(), np.array([1, 10, 100]) / 127, rtol=1e-6)
    np.testing.assert_allclose(kv.value_scales.ravel(), np.array([1, 2, 3, 4]) / 127, rtol=1e-6)
    np.testing.assert_array_equal(quant.dequantize_keys(kv), keys)


def test_kv_errors():
    k = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(qkernels.InvalidArgumentError, match="same"):
        quant.quantize_kv(k, np.zeros((2, 3, 5), np.float32))
    with pytest.raises(qkernels.InvalidArgumentError, match="bits"):
        quant.quantize_kv(k, k, bits=2)
    with pytest.raises(qkernels.NonFiniteError):
        quant.quantize_kv(k + np.inf, k)
