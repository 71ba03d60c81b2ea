"""The C quantizer and dequantizer against the NumPy reference: exact agreement (section 2 of
docs/numerics.md: every implementation produces the same integers and scales), round-trip error,
zero points, the int4 packing order, and dequantize's single rounding (reading 7)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import qkernels
from qkernels import reference
from qk_support import (
    DTYPES,
    MAX,
    MIN_SUBNORMAL,
    USABLE_DTYPES,
    as_int8,
    bits_of,
    decode,
    encode,
    even_for_4_bit,
    examples,
    kinds_for,
    pack4,
    raw_offsets,
    raw_weights,
    shapes,
    to_kind,
    to_rep,
)

PATTERNS = ("normal", "positive", "negative", "subnormal", "mixed_subnormal", "zeros", "zero_groups", "constant",
            "huge", "f16_extremes", "ties", "outlier", "integers", "sparse")


@st.composite
def quant_cases(draw):
    dtype = draw(st.sampled_from(USABLE_DTYPES))
    bits = draw(st.sampled_from([4, 8]))
    symmetric = draw(st.booleans())
    granularity = draw(st.sampled_from(["group", "channel", "tensor"]))
    N = draw(st.one_of(st.integers(1, 8), st.sampled_from([16, 33])))
    K, G = draw(shapes(bits))
    if granularity != "group":
        G = K
    pattern = draw(st.sampled_from(PATTERNS))
    mags = [1e-4, 1.0, 100.0, 3e4] if dtype == "float16" else [1e-37, 1e-20, 1e-3, 1.0, 1e3, 1e20, 1e37]
    mag = draw(st.sampled_from(mags))
    kind = draw(st.sampled_from(kinds_for(dtype)))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(dtype=dtype, bits=bits, symmetric=symmetric, granularity=granularity, N=N, K=K, G=G,
                pattern=pattern, mag=mag, kind=kind, seed=seed)


def _values(c) -> np.ndarray:
    """Float values for a case, as the reference representation of its dtype (all finite)."""
    rng = np.random.default_rng(c["seed"])
    N, K, G, dtype, mag = c["N"], c["K"], c["G"], c["dtype"], c["mag"]
    dmax = MAX[dtype]
    pattern = c["pattern"]
    qmax = (1 << (c["bits"] - 1)) - 1
    if pattern == "positive":
        x = rng.uniform(0, 1, (N, K)) * mag
    elif pattern == "negative":
        x = -rng.uniform(0, 1, (N, K)) * mag
    elif pattern == "subnormal":
        x = rng.integers(-1000, 1001, (N, K)) * MIN_SUBNORMAL[dtype]
    elif pattern == "mixed_subnormal":
        x = rng.standard_normal((N, K)) * mag
        x[:, ::3] = rng.integers(-5, 6, x[:, ::3].shape) * MIN_SUBNORMAL[dtype]
    elif pattern == "zeros":
        x = np.where(rng.random((N, K)) < 0.5, 0.0, -0.0)
    elif pattern == "zero_groups":
        x = rng.standard_normal((N, K)) * mag
        x[np.repeat(rng.random((N, -(-K // G))) < 0.5, G, axis=1)[:, :K]] = 0.0  # the last group may be shorter
    elif pattern == "constant":
        x = np.repeat(rng.choice([-1.0, 1.0], (N, 1)) * rng.uniform(0.1, 1, (N, 1)) * mag, K, axis=1)
    elif pattern == "huge":  # near the format's largest number (float32 max for float32 / bfloat16)
        x = rng.choice([-1.0, 1.0], (N, K)) * rng.uniform(0.5, 1.0, (N, K)) * dmax
        if rng.random() < 0.5:
            x = np.abs(x)  # one-signed: an asymmetric range that does not overflow
    elif pattern == "f16_extremes":
        x = rng.choice([65504.0, 2.0**-24, 2.0**-14, 0.0, 1.0], (N, K)) * rng.choice([-1.0, 1.0], (N, K))
        x = np.clip(x, -dmax, dmax)
    elif pattern == "ties":  # halves that round half to even once the scale is exactly 1
        x = (rng.integers(-qmax, qmax, (N, K)) + 0.5).astype(np.float64)
        x[:, 0] = qmax
        if not c["symmetric"]:
            x[:, 0], x[:, -1] = -qmax - 1, qmax
    elif pattern == "outlier":
        x = rng.standard_normal((N, K)) * mag
        x[rng.integers(N), rng.integers(K)] *= 1e4
    elif pattern == "integers":
        x = rng.integers(-20, 21, (N, K)).astype(np.float64)
    elif pattern == "sparse":
        x = rng.standard_normal((N, K)) * mag * (rng.random((N, K)) < 0.1)
    else:
        x = rng.standard_normal((N, K)) * mag
    x = np.clip(x, -dmax, dmax)
    rep = encode(x, dtype)
    assert np.isfinite(decode(rep, dtype)).all()
    return rep


def _both(c, rep):
    """(reference result or its ValueError, qkernels QuantizedWeight or its error)."""
    group = c["G"] if c["granularity"] == "group" else None
    try:
        ref = reference.quantize(rep, c["bits"], group_size=group, symmetric=c["symmetric"],
                                 granularity=c["granularity"], dtype=c["dtype"])
    except ValueError as error:
        ref = error
    try:
        got = qkernels.quantize_weights(to_kind(rep, c["dtype"], c["kind"]), bits=c["bits"], group_size=group,
                                        symmetric=c["symmetric"], granularity=c["granularity"])
    except qkernels.QKernelsError as error:
        got = error
    return ref, got


def _range_overflows(c, rep) -> bool:
    """Reading 2: asymmetric max − min (widened to hold 0) overflows float32 in some group."""
    if c["symmetric"]:
        return False
    x = decode(rep, c["dtype"]).astype(np.float32)
    if c["granularity"] == "tensor":
        groups = [x.reshape(1, -1)]
    else:
        G = c["K"] if c["granularity"] != "group" else c["G"]
        groups = [x[:, start:start + G] for start in range(0, c["K"], G)]  # the last may be shorter
    with np.errstate(over="ignore"):
        width = [np.maximum(b.max(axis=1), 0).astype(np.float32) - np.minimum(b.min(axis=1), 0).astype(np.float32)
                 for b in groups]
    return bool(np.isinf(np.concatenate([np.ravel(w) for w in width])).any())


@settings(max_examples=examples(150))
@given(c=quant_cases())
def test_quantizer_equals_reference_exactly(c):
    rep = _values(c)
    ref, got = _both(c, rep)
    if _range_overflows(c, rep):
        assert isinstance(got, qkernels.NonFiniteError), f"expected NonFiniteError, got {got!r}"
        assert isinstance(ref, ValueError)
        return
    assert not isinstance(ref, Exception), ref
    assert not isinstance(got, Exception), got
    data, scales, zero_points = ref
    assert got.bits == c["bits"] and got.group_size == c["G"] and got.shape == (c["N"], c["K"])
    assert got.dtype == c["dtype"] and got.kind == c["kind"]
    np.testing.assert_array_equal(got.data.view(np.uint8), as_int8(data).view(np.uint8), err_msg="data bytes")
    assert got.scales.dtype == np.float32
    np.testing.assert_array_equal(bits_of(got.scales), bits_of(np.asarray(scales, dtype=np.float32)),
                                  err_msg=f"scale bits: got {got.scales.ravel()[:4]}, ref {np.ravel(scales)[:4]}")
    if c["symmetric"]:
        assert got.zero_points is None
        assert zero_points is None or not np.any(zero_points)
    else:
        np.testing.assert_array_equal(got.zero_points, as_int8(zero_points), err_msg="zero points")


@settings(max_examples=examples(80))
@given(c=quant_cases())
def test_quantizer_output_properties(c):
    """Round trip within half a scale, zero exact, ranges of q and zero points, positive scales."""
    rep = _values(c)
    if _range_overflows(c, rep):
        return
    bits, G, N, K = c["bits"], c["G"], c["N"], c["K"]
    qw = qkernels.quantize_weights(to_kind(rep, c["dtype"], c["kind"]), bits=bits,
                                   group_size=G if c["granularity"] == "group" else None,
                                   symmetric=c["symmetric"], granularity=c["granularity"])
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = reference.unpack(qw.data, bits, K).astype(np.int64)
    s = np.repeat(qw.scales, G, axis=1)[:, :K]  # the last group may be shorter
    zp = np.zeros((N, K), np.int64) if qw.zero_points is None else np.repeat(qw.zero_points, G, axis=1)[:, :K]
    zp = zp.astype(np.int64)
    assert np.isfinite(qw.scales).all() and (qw.scales > 0).all()
    if c["granularity"] == "tensor":
        assert (qw.scales == qw.scales.flat[0]).all()
        if qw.zero_points is not None:
            assert (qw.zero_points == qw.zero_points.flat[0]).all()
    if c["symmetric"]:
        assert q.min() >= -qmax and q.max() <= qmax  # symmetric never uses qmin
    else:
        assert qw.zero_points.min() >= qmin and qw.zero_points.max() <= qmax
    assert q.min() >= qmin and q.max() <= qmax

    x = decode(rep, c["dtype"])
    # Zero quantizes to the zero point exactly, and dequantizes to exactly 0.
    zero = x == 0
    np.testing.assert_array_equal(q[zero], zp[zero])

    # Elements the clamp did not touch are within half a scale, plus the float32 rounding of x / s.
    with np.errstate(over="ignore", under="ignore"):
        t = np.rint(x.astype(np.float32) / s).astype(np.float64)
    lo = -qmax if c["symmetric"] else qmin
    unclipped = (t + zp >= lo) & (t + zp <= qmax)
    exact = reference.dequantize(qw.data, qw.scales, qw.zero_points, bits, G)
    s64 = s.astype(np.float64)
    bound = s64 / 2 + np.abs(x) * 2.0**-24 + s64 * 2.0**-149
    err = np.abs(exact - x)
    bad = unclipped & ~(err <= bound)
    assert not bad.any(), f"round trip: x={x[bad][:3]}, dequantized={exact[bad][:3]}, scale={s64[bad][:3]}"
    note(f"{int(unclipped.sum())} of {unclipped.size} elements unclipped")

    for dtype in USABLE_DTYPES:
        kind = "numpy" if "numpy" in kinds_for(dtype) else "torch"
        view = qkernels.QuantizedWeight(qw.data, qw.scales, qw.zero_points, bits, G, (N, K), dtype, kind)
        out = decode(to_rep(qkernels.dequantize(view), dtype), dtype)
        np.testing.assert_array_equal(out[zero], 0.0)
        fits = unclipped & (np.abs(exact) <= MAX[dtype])
        out_bound = bound + reference.ulp(exact, dtype) / 2
        bad = fits & ~(np.abs(out - x) <= out_bound)
        assert not bad.any(), f"{dtype} round trip: x={x[bad][:3]}, got={out[bad][:3]}"


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=examples(40))
@given(
    bits=st.sampled_from([4, 8]),
    symmetric=st.booleans(),
    shape=st.tuples(st.integers(1, 9), st.sampled_from([1, 2, 3, 4, 8])),
    G=st.sampled_from([1, 2, 3, 4, 8, 16]),
    short=st.integers(0, 15),
    with_offsets=st.booleans(),
    s0=st.sampled_from([1e-42, 1e-30, 1e-8, 2.0**-20, 1e-3, 1.0, 300.0, 1e30, 1e36, 3e37]),
    negative=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_dequantize_is_one_rounding_of_the_exact_value(dtype, bits, symmetric, shape, G, short, with_offsets, s0,
                                                       negative, seed):
    """qkernels.dequantize == round_to(reference.dequantize(...)) bit for bit, including values that
    overflow the output format, subnormal results, (unvalidated) negative scales, and format v2:
    offsets and a last group shorter by `short` columns."""
    if dtype not in USABLE_DTYPES:
        pytest.skip("no bfloat16 container (torch or ml_dtypes)")
    rng = np.random.default_rng(seed)
    N, groups = shape
    K = even_for_4_bit(G * groups + short % G, G, bits)  # 4-bit rows hold an even number of elements
    data, scales, zp = raw_weights(rng, N, K, G, bits, symmetric, s0)
    if negative:
        scales = -scales
    offsets = raw_offsets(rng, scales, bits) if with_offsets else None
    kind = "numpy" if "numpy" in kinds_for(dtype) else "torch"
    qw = qkernels.QuantizedWeight(data, scales, zp, bits, G, (N, K), "float32", kind, offsets)
    got = to_rep(qkernels.dequantize(qw, dtype), dtype)
    expected = reference.round_to(reference.dequantize(data, scales, zp, bits, G, offsets), dtype)
    np.testing.assert_array_equal(bits_of(got), bits_of(np.asarray(expected)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_dequantize_exact_across_the_exponent_range(dtype, bits):
    """Scales from float32's smallest subnormal to its largest normal numbers, times every integer
    q − zp: every subnormal, normal, overflowing and halfway case of the output format, rounded once."""
    if dtype not in USABLE_DTYPES:
        pytest.skip("no bfloat16 container (torch or ml_dtypes)")
    rng = np.random.default_rng(bits)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    exponents = np.arange(-149, 128)
    scales = np.ldexp(rng.uniform(1, 2, exponents.size), exponents).astype(np.float32)
    scales = np.concatenate([scales, np.ldexp(1.0, exponents).astype(np.float32),  # exact powers of two
                             np.ldexp(1.5, exponents[:-1]).astype(np.float32)])  # halfway cases after scaling
    q = np.tile(np.arange(qmin, qmax + 1), (scales.size, 1))
    data = q.astype(np.int8) if bits == 8 else pack4(q)
    for zp in (None, np.full((scales.size, 1), qmax, np.int8), np.full((scales.size, 1), qmin, np.int8)):
        kind = "numpy" if "numpy" in kinds_for(dtype) else "torch"
        K = q.shape[1]
        qw = qkernels.QuantizedWeight(data, scales[:, None].copy(), zp, bits, K, (scales.size, K), "float32", kind)
        got = to_rep(qkernels.dequantize(qw, dtype), dtype)
        expected = np.asarray(reference.round_to(reference.dequantize(data, qw.scales, zp, bits, K), dtype))
        mismatch = bits_of(got) != bits_of(expected)
        assert not mismatch.any(), (
            f"{int(mismatch.sum())} mismatches, e.g. scale {qw.scales[np.argwhere(mismatch)[0][0], 0]!r}: "
            f"got {decode(got[mismatch], dtype)[:3]}, expected {decode(expected[mismatch], dtype)[:3]}")


# ---------------------------------------------------------------- hand examples


def test_int4_packing_order_hand_example():
    """Row [1, -2, 7, -8]: element 2j in the low nibble of byte j → bytes 0xE1, 0x87."""
    q = np.array([[1, -2, 7, -8]])
    np.testing.assert_array_equal(as_int8(reference.pack_int4(q)).view(np.uint8), [[0xE1, 0x87]])
    np.testing.assert_array_equal(reference.unpack_int4(np.array([[0xE1, 0x87]], np.uint8).view(np.int8), 4), q)
    # The C quantizer: asymmetric 4-bit over [-8, 7] has scale 1 and zero point 0, so q = x.
    qw = qkernels.quantize_weights(np.array([[1, -2, 7, -8]], np.float32), bits=4, group_size=None, symmetric=False)
    np.testing.assert_array_equal(qw.data.view(np.uint8), [[0xE1, 0x87]])
    np.testing.assert_array_equal(qw.scales, [[1.0]])
    np.testing.assert_array_equal(qw.zero_points, [[0]])
    # Symmetric 4-bit [1, -2, 7, -7]: scale 7 / 7 = 1; -7 is nibble 0x9.
    qw = qkernels.quantize_weights(np.array([[1, -2, 7, -7]], np.float32), bits=4, group_size=None)
    np.testing.assert_array_equal(qw.data.view(np.uint8), [[0xE1, 0x97]])
    # The C dequantizer and the C matmul read the bytes in the same order.
    raw = qkernels.QuantizedWeight(np.array([[0xE1, 0x87]], np.uint8).view(np.int8), np.ones((1, 1), np.float32),
                                   None, 4, 4, (1, 4))
    np.testing.assert_array_equal(qkernels.dequantize(raw), [[1, -2, 7, -8]])
    y = qkernels.matmul(np.eye(4, dtype=np.float32), raw)
    np.testing.assert_array_equal(y[:, 0], [1, -2, 7, -8])


def test_round_half_to_even_hand_example():
    x = np.array([[127, -127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5]], np.float32)
    qw = qkernels.quantize_weights(x, bits=8, group_size=None)
    assert qw.scales[0, 0] == 1.0
    np.testing.assert_array_equal(qw.data, [[127, -127, 0, 2, 2, 0, -2, -2, 4, 126]])
    data, scales, _ = reference.quantize(x, 8, granularity="channel")
    np.testing.assert_array_equal(qw.data, as_int8(data))


def test_scale_underflow_reading_1():
    """A non-zero range whose scale underflows to 0 is a zero range: s = 1 (reading 1)."""
    tiny = np.float32(2.0**-149)
    x = np.array([[tiny, 0, -tiny, tiny]], np.float32)
    sym = qkernels.quantize_weights(x, bits=8, group_size=None, symmetric=True)
    assert sym.scales[0, 0] == 1.0 and not sym.data.any()
    asym = qkernels.quantize_weights(x, bits=8, group_size=None, symmetric=False)
    # s = 1: zp = clamp(rne(-128 - min)) = -128, q = rne(x) + zp = -128 everywhere: dequantizes to 0.
    assert asym.scales[0, 0] == 1.0 and asym.zero_points[0, 0] == -128
    np.testing.assert_array_equal(asym.data, [[-128] * 4])
    for symmetric, got in ((True, sym), (False, asym)):
        data, scales, zp = reference.quantize(x, 8, granularity="channel", symmetric=symmetric)
        np.testing.assert_array_equal(got.data, as_int8(data))
        np.testing.assert_array_equal(bits_of(got.scales), bits_of(scales))
    np.testing.assert_array_equal(qkernels.dequantize(asym), np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("bits", [4, 8])
def test_a_group_longer_than_k_is_one_group_of_k(bits):
    """G > K (any G up to the int32 limit) is per channel: the reference does not pad rows to G."""
    x = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    data, scales, zp = reference.quantize(x, bits, group_size=2**31 - 1, symmetric=False)
    for got, want in zip((data, scales, zp), reference.quantize(x, bits, granularity="channel", symmetric=False)):
        np.testing.assert_array_equal(got, want)
    qw = qkernels.quantize_weights(x, bits=bits, group_size=2**31 - 1, symmetric=False)
    np.testing.assert_array_equal(qw.data, as_int8(data))
    np.testing.assert_array_equal(bits_of(qw.scales), bits_of(scales))
    np.testing.assert_array_equal(qw.zero_points, as_int8(zp))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_per_tensor_uses_one_range(granularity):
    x = np.array([[1, 2, 3, 4], [10, -20, 30, -40]], np.float32)
    qw = qkernels.quantize_weights(x, bits=8, group_size=2, granularity=granularity, symmetric=False)
    data, scales, zp = reference.quantize(x, 8, group_size=2 if granularity == "group" else None,
                                          granularity=granularity, symmetric=False)
    np.testing.assert_array_equal(qw.data, as_int8(data))
    np.testing.assert_array_equal(bits_of(qw.scales), bits_of(scales))
    np.testing.assert_array_equal(qw.zero_points, as_int8(zp))
    expected_groups = {"tensor": 1, "channel": 1, "group": 2}[granularity]
    assert qw.scales.shape == (2, expected_groups)
    if granularity == "tensor":
        assert qw.scales[0, 0] == qw.scales[1, 0] == np.float32(70) / np.float32(255)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dequantize_defaults_to_the_weights_dtype_and_container(dtype):
    if dtype not in USABLE_DTYPES:
        pytest.skip("no bfloat16 container (torch or ml_dtypes)")
    rng = np.random.default_rng(2)
    for kind in kinds_for(dtype):
        rep = encode(rng.standard_normal((3, 32)), dtype)
        qw = qkernels.quantize_weights(to_kind(rep, dtype, kind), bits=8, group_size=16)
        w = qkernels.dequantize(qw)
        assert qw.dtype == dtype and qw.kind == kind
        expected = reference.round_to(reference.dequantize(qw.data, qw.scales, None, 8, 16), dtype)
        np.testing.assert_array_equal(bits_of(to_rep(w, dtype)), bits_of(np.asarray(expected)))
        if kind == "torch":
            import torch

            assert isinstance(w, torch.Tensor) and w.dtype == getattr(torch, dtype)
        else:
            assert isinstance(w, np.ndarray) and w.dtype.name == dtype


def test_quantized_weights_pickle_and_copy():
    """Pickles and copies keep every field and give the same results; packs and plans (native
    pointers) are made afresh, not shared."""
    import copy
    import pickle

    rng = np.random.default_rng(5)
    qw = qkernels.quantize_weights(rng.standard_normal((9, 96)).astype(np.float32), bits=4, group_size=32,
                                   symmetric=False)
    qw = qkernels.QuantizedWeight(qw.data, qw.scales, qw.zero_points, 4, 32, (9, 96), "float16", "numpy",
                                  rng.standard_normal(qw.scales.shape).astype(np.float32))
    x = rng.standard_normal((2, 96)).astype(np.float16)
    y = qkernels.matmul(x, qw)
    for other in (pickle.loads(pickle.dumps(qw)), copy.deepcopy(qw), copy.copy(qw)):
        assert other is not qw and not other._packs and not other._plans
        for name in ("bits", "group_size", "shape", "dtype", "kind"):
            assert getattr(other, name) == getattr(qw, name)
        for name in ("data", "scales", "zero_points", "offsets"):
            np.testing.assert_array_equal(getattr(other, name), getattr(qw, name))
        np.testing.assert_array_equal(qkernels.matmul(x, other).view(np.uint16), y.view(np.uint16))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_quantizer_reads_non_native_byte_order_and_strides(dtype):
    rng = np.random.default_rng(4)
    base = rng.standard_normal((8, 64)).astype(dtype)
    expected = reference.quantize(base[:, ::2].copy(), 4, group_size=16, symmetric=False)
    for name, x in {"strided": base[:, ::2], "big-endian": base[:, ::2].astype(np.dtype(dtype).newbyteorder(">"))}.items():
        qw = qkernels.quantize_weights(x, bits=4, group_size=16, symmetric=False)
        assert (qw.data == as_int8(expected[0])).all() and (qw.scales == expected[1]).all(), name
