"""The NumPy reference against hand-computed cases and known properties of docs/numerics.md.

Every kernel is tested against qkernels.reference, so the reference itself is checked here against
values worked out by hand, exhaustive round trips and brute-force Python-integer loops.
"""

from __future__ import annotations

import numpy as np
import pytest

from qkernels import reference as ref

F32 = np.float32


def bf16_bits(values):
    """float32-representable values with zero low halves -> bfloat16 bit patterns."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


# --- number formats --------------------------------------------------------------------------


def test_to_float64_bfloat16_is_the_upper_half_of_a_float32():
    bits = np.array([0x3F80, 0xC000, 0x7F7F, 0x0001, 0x7F80, 0x8000], dtype=np.uint16)
    expected = [1.0, -2.0, 3.3895313892515355e38, 2.0**-133, np.inf, -0.0]
    got = ref.to_float64(bits, "bfloat16")
    np.testing.assert_array_equal(got, expected)
    assert np.signbit(got[-1])


@pytest.mark.parametrize(
    "value, bits",
    [
        (1 + 2**-8, 0x3F80),  # halfway between 0x3F80 and 0x3F81: to even, down
        (1 + 3 * 2**-8, 0x3F82),  # halfway between 0x3F81 and 0x3F82: to even, up
        (1 + 2**-8 + 2**-40, 0x3F81),  # just above halfway; through float32 it would be 0x3F80
        (-(1 + 2**-8 + 2**-40), 0xBF81),
        (3.3895313892515355e38, 0x7F7F),  # the largest bfloat16
        ((2 - 2**-8) * 2.0**127 * (1 - 2**-52), 0x7F7F),  # just below halfway to 2^128
        ((2 - 2**-8) * 2.0**127, 0x7F80),  # halfway to 2^128: to even, which overflows
        (1e39, 0x7F80),
        (-1e39, 0xFF80),
        (2.0**-133, 0x0001),  # the smallest subnormal
        (2.0**-134, 0x0000),  # halfway to zero: to even
        (3 * 2.0**-134, 0x0002),  # halfway between 1 and 2 subnormal steps: to even
        (2.0**-126 * (1 - 2**-9), 0x0080),  # rounds up to the smallest normal
        (-0.0, 0x8000),
        (np.inf, 0x7F80),
    ],
)
def test_round_to_bfloat16(value, bits):
    assert int(ref.round_to(value, "bfloat16")) == bits


def test_round_to_bfloat16_nan_stays_nan():
    assert np.isnan(ref.to_float64(ref.round_to(np.nan, "bfloat16"), "bfloat16"))


@pytest.mark.parametrize("dtype, storage", [("bfloat16", np.uint16), ("float16", np.float16)])
def test_round_to_is_exact_on_every_16_bit_value(dtype, storage):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = ref.to_float64(bits.view(storage), dtype)
    back = ref.round_to(values, dtype).view(np.uint16)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(back[finite], bits[finite])
    assert np.isnan(ref.to_float64(back[~finite].view(storage), dtype)).all()


def test_round_to_float16_rounds_once_from_float64():
    # 1 + 2^-11 is halfway between the halves 1 and 1 + 2^-10; 2^-40 above it a direct rounding goes
    # up, while float32 first drops the 2^-40 and the tie then goes to even, down (reading 8).
    y = 1 + 2**-11 + 2**-40
    assert ref.round_to(y, "float16").view(np.uint16) == 0x3C01
    assert np.float32(y).astype(np.float16).view(np.uint16) == 0x3C00


@pytest.mark.parametrize(
    "value, bits",
    [
        (1 + 2**-11, 0x3C00),  # tie to even, down
        (1 + 3 * 2**-11, 0x3C02),  # tie to even, up
        (65504.0, 0x7BFF),
        (65520.0 * (1 - 2**-52), 0x7BFF),
        (65520.0, 0x7C00),  # halfway to 2^16: to even, which overflows
        (2.0**-24, 0x0001),
        (2.0**-25, 0x0000),
        (3 * 2.0**-25, 0x0002),
        (-0.0, 0x8000),
    ],
)
def test_round_to_float16(value, bits):
    assert int(ref.round_to(value, "float16").view(np.uint16)) == bits


def test_round_to_float32_rounds_once():
    y = 1 + 2**-24 + 2**-50  # just above halfway between 1 and 1 + 2^-23
    assert ref.round_to(y, "float32") == np.float32(1 + 2**-23)
    assert ref.round_to(2.0**-150 * 3, "float32") == np.float32(2.0**-148)  # subnormals kept
    assert np.isinf(ref.round_to(3.5e38, "float32"))


@pytest.mark.parametrize(
    "y, dtype, spacing",
    [
        (1.0, "float32", 2.0**-23),
        (1.999, "float32", 2.0**-23),
        (-3.0, "bfloat16", 2.0**-6),
        (1.0, "bfloat16", 2.0**-7),
        (1.5, "float16", 2.0**-10),
        (65504.0, "float16", 32.0),
        (70000.0, "float16", 64.0),  # beyond the range: the same formula
        (0.0, "float16", 2.0**-24),
        (1e-6, "float16", 2.0**-24),  # subnormal range
        (1e-40, "float32", 2.0**-149),
        (0.0, "bfloat16", 2.0**-133),
    ],
)
def test_ulp(y, dtype, spacing):
    assert ref.ulp(y, dtype) == spacing


def test_ulp_of_non_finite_is_nan():
    assert np.isnan(ref.ulp([np.inf, -np.inf, np.nan], "float32")).all()


# --- canonical weights -----------------------------------------------------------------------


def test_int4_packing_order_on_a_byte():
    # Element 0 = 1 in bits 0-3, element 1 = -2 (0b1110) in bits 4-7: 0xE1.
    data = ref.pack_int4(np.array([[1, -2, -8, 7]]))
    np.testing.assert_array_equal(data.view(np.uint8), [[0xE1, 0x78]])
    assert data.dtype == np.int8
    np.testing.assert_array_equal(ref.unpack_int4(data, 4), [[1, -2, -8, 7]])


def test_int4_round_trip_every_pair():
    pairs = np.array([[a, b] for a in range(-8, 8) for b in range(-8, 8)], dtype=np.int8).reshape(1, -1)
    np.testing.assert_array_equal(ref.unpack(ref.pack_int4(pairs), 4, pairs.shape[1]), pairs)


def test_pack_int4_rejects_out_of_range_and_odd_k():
    with pytest.raises(ValueError, match="q"):
        ref.pack_int4(np.array([[8, 0]]))
    with pytest.raises(ValueError, match="q"):
        ref.pack_int4(np.array([[1, 2, 3]]))


def test_dequantize_is_exact():
    data = np.array([[-128, 127, 5, -3]], dtype=np.int8)
    scales = np.array([[0.1, 1e-3]], dtype=np.float32)
    zero_points = np.array([[127, -128]], dtype=np.int8)
    w = ref.dequantize(data, scales, zero_points, 8, 2)
    expected = [float(F32(0.1)) * -255, 0.0, float(F32(1e-3)) * 133, float(F32(1e-3)) * 125]
    np.testing.assert_array_equal(w, [expected])


def test_dequantize_adds_offsets_with_one_rounding_and_only_where_given():
    data = np.array([[0, 1, 3, 0, 2]], dtype=np.int8)  # K = 5, G = 2: groups of 2, 2 and 1
    scales = np.array([[-1.0, 0.1, 3.0]], dtype=np.float32)
    offsets = np.array([[0.0, 1e-20, -6.0]], dtype=np.float32)
    w = ref.dequantize(data, scales, None, 8, 2, offsets=offsets)
    s1, o1 = float(F32(0.1)), float(F32(1e-20))
    np.testing.assert_array_equal(w, [[0.0, -1.0, s1 * 3 + o1, o1, 0.0]])
    assert not np.signbit(w[0, 0])  # -0.0 + 0.0 is +0.0 ...
    assert np.signbit(ref.dequantize(data, scales, None, 8, 2)[0, 0])  # ... and without offsets -0.0 stays


# --- quantizers: hand-computed cases ---------------------------------------------------------


def test_symmetric_4_bit_by_hand():
    x = np.array([[-1, 0, 0.5, 2]], dtype=np.float32)
    data, scales, zero_points = ref.quantize(x, 4, group_size=4)
    s = F32(2) / F32(7)  # amax / 7 in float32: 0.2857143
    assert scales.dtype == np.float32 and scales[0, 0] == s and zero_points is None
    # -1 / s is -3.4999998 in float32, not the real -3.5: it rounds to -3, not to even -4.
    # 0.5 / s = 1.75 -> 2; 2 / s = 7 exactly.
    np.testing.assert_array_equal(ref.unpack(data, 4, 4), [[-3, 0, 2, 7]])
    np.testing.assert_array_equal(data.view(np.uint8), [[0x0D, 0x72]])


def test_asymmetric_4_bit_by_hand():
    x = np.array([[-1, 0, 0.5, 2]], dtype=np.float32)
    data, scales, zero_points = ref.quantize(x, 4, group_size=4, symmetric=False)
    s = F32(3) / F32(15)  # (max - min) / 15 = 0.2 in float32
    assert scales[0, 0] == s
    # zp = rne(-8 - (-1 / s)) = rne(-8 + 4.9999999) = -3.
    assert zero_points.dtype == np.int8 and zero_points[0, 0] == -3
    # rne(x / s) + zp: -5 - 3 = -8; 0 - 3 = -3; rne(2.5) = 2 (to even), 2 - 3 = -1; 10 - 3 = 7.
    np.testing.assert_array_equal(ref.unpack(data, 4, 4), [[-8, -3, -1, 7]])


def test_symmetric_8_bit_groups_by_hand():
    x = np.array([[127, -63.5, 0, 0], [-254, 254, 5, 254]], dtype=np.float32)
    data, scales, _ = ref.quantize(x, 8, group_size=2)
    np.testing.assert_array_equal(scales, [[1, 1], [2, 2]])  # the zero group takes s = 1
    # -63.5 and 5 / 2 = 2.5 are ties: to even, -64 and 2.
    np.testing.assert_array_equal(data, [[127, -64, 0, 0], [-127, 127, 2, 127]])


def test_per_tensor_uses_one_range_stored_per_channel():
    x = np.array([[1, -2], [0.5, 0.25], [127, 3]], dtype=np.float32)
    data, scales, _ = ref.quantize(x, 8, granularity="tensor")
    assert scales.shape == (3, 1) and (scales == 1).all()
    np.testing.assert_array_equal(data, [[1, -2], [0, 0], [127, 3]])  # 0.5 ties to 0
    _, scales_asym, zero_points = ref.quantize(x, 8, granularity="tensor", symmetric=False)
    assert (scales_asym == F32(129) / F32(255)).all() and (zero_points == zero_points[0, 0]).all()


def test_per_channel_is_one_group_per_row():
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    by_channel = ref.quantize(x, 4, granularity="channel", symmetric=False)
    by_group = ref.quantize(x, 4, group_size=8, symmetric=False)
    for a, b in zip(by_channel, by_group):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_shorter_last_group_is_quantized_over_its_own_columns(bits, symmetric):
    """Reading 18: with G not dividing K, each group, the last one too, is quantized as a row of its
    own columns would be per channel."""
    rng = np.random.default_rng(9)
    K, G = 10, 4  # groups of 4, 4 and 2
    x = (rng.standard_normal((3, K)) * [[1], [50], [1e-3]]).astype(np.float32)
    x[:, -2:] += 7  # the last group alone: all positive, so its asymmetric range differs from the others'
    data, scales, zero_points = ref.quantize(x, bits, group_size=G, symmetric=symmetric)
    assert scales.shape == (3, 3) and (zero_points is None) == symmetric
    q = ref.unpack(data, bits, K)
    for g, start in enumerate(range(0, K, G)):
        cols = slice(start, start + G)
        part, part_scales, part_zp = ref.quantize(x[:, cols], bits, granularity="channel", symmetric=symmetric)
        np.testing.assert_array_equal(q[:, cols], ref.unpack(part, bits, x[:, cols].shape[1]))
        np.testing.assert_array_equal(scales[:, g], part_scales[:, 0])
        if not symmetric:
            np.testing.assert_array_equal(zero_points[:, g], part_zp[:, 0])


def test_scale_underflow_is_a_zero_range():
    tiny = 2.0**-149  # the smallest float32 subnormal: tiny / 7 and tiny / 15 round to 0 (reading 1)
    data, scales, _ = ref.quantize(np.array([[tiny, -tiny]], dtype=np.float32), 4, group_size=2)
    assert scales[0, 0] == 1
    np.testing.assert_array_equal(ref.unpack(data, 4, 2), [[0, 0]])
    data, scales, zero_points = ref.quantize(np.array([[tiny, 0]], dtype=np.float32), 4, 2, symmetric=False)
    # s = 1, zp = rne(-8 - 0 / 1) = -8, q = rne(tiny) - 8 = -8.
    assert scales[0, 0] == 1 and zero_points[0, 0] == -8
    np.testing.assert_array_equal(ref.unpack(data, 4, 2), [[-8, -8]])


def test_float16_and_bfloat16_inputs_quantize_like_their_float32_values():
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    x16 = x.astype(np.float16)
    xbf = ref.round_to(x.astype(np.float64), "bfloat16")
    for raw, dtype in ((x16, None), (xbf, "bfloat16")):
        as_f32 = ref.to_float64(raw, dtype or "float16").astype(np.float32)
        for a, b in zip(ref.quantize(raw, 4, 8, False, dtype=dtype), ref.quantize(as_f32, 4, 8, False)):
            np.testing.assert_array_equal(a, b)


# --- quantizers: properties ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_zero_maps_exactly_to_the_zero_point(bits):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 64)) + rng.uniform(-3, 3, (8, 1))).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0
    data, scales, zero_points = ref.quantize(x, bits, group_size=16, symmetric=False)
    q = ref.unpack(data, bits, 64)
    zp = np.repeat(zero_points, 16, axis=1)
    np.testing.assert_array_equal(q[x == 0], zp[x == 0])
    np.testing.assert_array_equal(ref.dequantize(data, scales, zero_points, bits, 16)[x == 0], 0)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((16, 128)) * rng.uniform(0.01, 100, (16, 1)) + rng.uniform(-1, 1, (16, 1)))
    x = x.astype(np.float32)
    data, scales, zero_points = ref.quantize(x, bits, group_size=32, symmetric=symmetric)
    q = ref.unpack(data, bits, 128)
    s = np.repeat(scales.astype(np.float64), 32, axis=1)
    error = np.abs(ref.dequantize(data, scales, zero_points, bits, 32) - x)
    unclipped = (q > -(1 << (bits - 1))) & (q < (1 << (bits - 1)) - 1)
    # x / s is itself rounded to float32, which may move the result by |x|·2^-24 beyond s/2.
    assert (error[unclipped] <= s[unclipped] / 2 + np.abs(x[unclipped]) * 2.0**-23).all()
    assert unclipped.mean() > 0.9


# --- quantizers: errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bits=3, group_size=4), "bits"),
        (dict(bits=8, group_size=2.0), "group_size"),
        (dict(bits=8, group_size=0), "group_size"),
        (dict(bits=8), "group_size"),
        (dict(bits=8, group_size=2, granularity="channel"), "group_size"),
        (dict(bits=8, granularity="row"), "granularity"),
    ],
)
def test_quantize_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ref.quantize(np.ones((2, 4), dtype=np.float32), **kwargs)


def test_quantize_rejects_odd_k_with_4_bits():
    with pytest.raises(ValueError, match="K"):
        ref.quantize(np.ones((2, 3), dtype=np.float32), 4, granularity="channel")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_rejects_non_finite_input(bad):
    x = np.ones((2, 4), dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="x"):
        ref.quantize(x, 8, group_size=4)


def test_quantize_rejects_a_range_overflowing_float32():
    x = np.array([[-3e38, 3e38]], dtype=np.float32)
    with pytest.raises(ValueError, match="max - min"):
        ref.quantize(x, 8, group_size=2, symmetric=False)
    ref.quantize(x, 8, group_size=2)  # symmetric has no range to overflow


# --- A8 activation quantizer -----------------------------------------------------------------


def test_quantize_activations_by_hand():
    tiny = 2.0**-149
    x = np.array(
        [
            [1, -2, 0.5, 4],  # inv = 127 / 4 = 31.75: 31.75, -63.5, 15.875, 127
            [0, 0, 0, 0],
            [1, np.nan, 0, 0],
            [1, 2, -np.inf, 0],
            [tiny, 0, -tiny, 0],  # inv = +Inf (reading 4); 0 * Inf = NaN quantizes to 0
            [1e-37, 0, -5e-38, 1e-45],  # a normal amax below 127 / FLT_MAX: inv overflows to +Inf too
        ],
        dtype=np.float32,
    )
    qx, sx, finite = ref.quantize_activations(x, "float32")
    assert qx.dtype == np.int8 and sx.dtype == np.float32
    np.testing.assert_array_equal(
        qx, [[32, -64, 16, 127], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [127, 0, -127, 0], [127, 0, -127, 127]]
    )
    # tiny / 127 rounds to 0.
    np.testing.assert_array_equal(sx, [F32(4) / F32(127), 0, 0, 0, 0, F32(1e-37) / F32(127)])
    np.testing.assert_array_equal(finite, [True, True, False, False, True, True])


def test_quantize_activations_bfloat16_input():
    x = bf16_bits([[1, -2, 0.5, 4]])
    qx, sx, finite = ref.quantize_activations(x, "bfloat16")
    np.testing.assert_array_equal(qx, [[32, -64, 16, 127]])
    assert sx[0] == F32(4) / F32(127) and finite.all()


# --- matmul ----------------------------------------------------------------------------------


def random_case(rng, M, N, K, bits, group_size, symmetric):
    w = rng.standard_normal((N, K)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    return x, ref.quantize(w, bits, group_size=group_size, symmetric=symmetric)


@pytest.mark.parametrize("bits, symmetric", [(4, False), (8, True), (8, False)])
@pytest.mark.parametrize("G, with_offsets", [(4, False), (5, True), (4, True)])
def test_a8_matmul_equals_a_brute_force_loop(bits, symmetric, G, with_offsets):
    rng = np.random.default_rng(5)
    M, N, K = 3, 4, 12  # G = 5: groups of 5, 5 and 2
    x, (data, scales, zero_points) = random_case(rng, M, N, K, bits, G, symmetric)
    x[1] = 0
    bias = rng.standard_normal(N).astype(np.float32)
    offsets = rng.standard_normal(scales.shape).astype(np.float32) if with_offsets else None
    got, err_scale = ref.matmul(x, "float32", data, scales, zero_points, bits, G, "a8", bias, offsets)

    qx, sx, _ = ref.quantize_activations(x, "float32")
    q = ref.unpack(data, bits, K)
    for m in range(M):
        for n in range(N):
            total = magnitude = 0.0
            for g in range(scales.shape[1]):
                zp = 0 if zero_points is None else int(zero_points[n, g])
                group = range(g * G, min((g + 1) * G, K))
                acc = sum(int(qx[m, k]) * (int(q[n, k]) - zp) for k in group)
                xs = sum(int(qx[m, k]) for k in group)
                off = 0.0 if offsets is None else float(offsets[n, g])
                total += float(scales[n, g]) * acc + off * xs
                magnitude += abs(float(scales[n, g]) * acc) + abs(off * xs)
            assert got[m, n] == pytest.approx(float(sx[m]) * total + float(bias[n]), rel=1e-14, abs=1e-14)
            assert err_scale[m, n] == pytest.approx(float(sx[m]) * magnitude + abs(float(bias[n])), rel=1e-14)
    np.testing.assert_array_equal(got[1], bias)


def test_a8_non_finite_row_is_nan_and_leaves_other_rows():
    rng = np.random.default_rng(6)
    x, weights = random_case(rng, 3, 5, 8, 4, 4, True)
    clean, _ = ref.matmul(x, "float32", *weights, 4, 4, "a8")
    x[1, 3] = np.inf
    got, _ = ref.matmul(x, "float32", *weights, 4, 4, "a8")
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("G, with_offsets", [(8, False), (6, True)])
def test_a16_matmul_is_the_float64_sum(G, with_offsets):
    rng = np.random.default_rng(7)
    x, (data, scales, zero_points) = random_case(rng, 2, 3, 16, 4, G, False)
    offsets = rng.standard_normal(scales.shape).astype(np.float32) if with_offsets else None
    x16 = x.astype(np.float16)
    got, err_scale = ref.matmul(x16, "float16", data, scales, zero_points, 4, G, "a16", offsets=offsets)
    X = x16.astype(np.float64)
    w = ref.dequantize(data, scales, zero_points, 4, G, offsets)
    for m in range(2):
        for n in range(3):
            assert got[m, n] == pytest.approx(sum(X[m] * w[n]), rel=1e-15, abs=1e-15)
            assert err_scale[m, n] == pytest.approx(sum(abs(X[m] * w[n])), rel=1e-15)


def test_a16_non_finite_follows_ieee():
    data = np.array([[0, 1], [1, 1], [-1, 1]], dtype=np.int8)
    scales = np.ones((3, 1), dtype=np.float32)
    x = np.array([[np.inf, 1], [np.nan, 1], [1, 2]], dtype=np.float32)
    got, _ = ref.matmul(x, "float32", data, scales, None, 8, 2, "a16")
    np.testing.assert_array_equal(got[0], [np.nan, np.inf, -np.inf])  # Inf·0 is NaN
    assert np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[2], [2, 3, 1])


def test_matmul_rejects_bad_arguments():
    x = np.ones((1, 4), dtype=np.float32)
    data, scales, zero_points = ref.quantize(np.ones((2, 4), dtype=np.float32), 4, 2, symmetric=False)
    with pytest.raises(ValueError, match="mode"):
        ref.matmul(x, "float32", data, scales, zero_points, 4, 2, "a4")
    with pytest.raises(ValueError, match="group_size"):
        ref.matmul(x, "float32", data, scales, zero_points, 4, 0, "a16")
    with pytest.raises(ValueError, match="scales"):  # G = 3: two groups, as here, but not G = 1
        ref.matmul(x, "float32", data, scales, zero_points, 4, 1, "a16")
    with pytest.raises(ValueError, match="offsets"):
        ref.matmul(x, "float32", data, scales, zero_points, 4, 2, "a16", offsets=np.ones((2, 2)))
    with pytest.raises(ValueError, match="zero_points"):
        ref.matmul(x, "float32", data, scales, np.full((2, 2), 8, np.int8), 4, 2, "a16")
    with pytest.raises(ValueError, match="bias"):
        ref.matmul(x, "float32", data, scales, zero_points, 4, 2, "a16", bias=np.ones(2))
    with pytest.raises(ValueError, match="x"):
        ref.matmul(x.astype(np.float16), "float32", data, scales, zero_points, 4, 2, "a16")


def test_tolerance():
    ref_values = np.array([[1.0, 0.0]])
    err_scale = np.array([[1024.0, 2.0**20]])
    a16 = ref.tolerance(ref_values, err_scale, "float16", "a16")
    np.testing.assert_array_equal(a16, [[2 * 2**-10 + 2**-10 * 1024, 2 * 2**-24 + 2**-10 * 2**20]])
    a8 = ref.tolerance(ref_values, err_scale, "float32", "a8")
    np.testing.assert_array_equal(a8, [[2 * 2**-23 + 2**-20 * 1024, 2 * 2**-149 + 2**-20 * 2**20]])


# --- assert_matmul_close ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["a16", "a8"])
def test_assert_matmul_close_accepts_the_rounded_reference_and_rejects_a_wrong_one(dtype, mode):
    rng = np.random.default_rng(8)
    x, weights = random_case(rng, 4, 6, 64, 4, 32, False)
    xd = ref.round_to(x.astype(np.float64), dtype)
    expected, err_scale = ref.matmul(xd, dtype, *weights, 4, 32, mode)
    y = ref.round_to(expected, dtype)
    ref.assert_matmul_close(y, xd, dtype, *weights, 4, 32, mode)

    wrong = ref.to_float64(y, dtype)
    wrong[2, 3] += 4 * ref.tolerance(expected, err_scale, dtype, mode)[2, 3]
    with pytest.raises(AssertionError, match=r"1 of 24 outputs.*worst at \[2, 3\]"):
        ref.assert_matmul_close(ref.round_to(wrong, dtype), xd, dtype, *weights, 4, 32, mode)


def test_assert_matmul_close_non_finite():
    data = np.ones((2, 2), dtype=np.int8)
    scales = np.ones((2, 1), dtype=np.float32)
    x = np.array([[np.nan, 1], [1, 1]], dtype=np.float16)
    ok = np.array([[np.nan, np.nan], [2, 2]], dtype=np.float16)
    ref.assert_matmul_close(ok, x, "float16", data, scales, None, 8, 2, "a16")
    for bad in ([[np.nan, 0], [2, 2]], [[np.nan, np.nan], [2, np.nan]], [[np.nan, np.nan], [np.inf, 2]]):
        with pytest.raises(AssertionError):
            ref.assert_matmul_close(np.array(bad, np.float16), x, "float16", data, scales, None, 8, 2, "a16")


def test_assert_matmul_close_near_float16_overflow():
    data = np.ones((1, 2), dtype=np.int8)
    scales = np.ones((1, 1), dtype=np.float32)

    def check(x0, y):
        x = np.array([[x0, x0]], dtype=np.float16)
        ref.assert_matmul_close(np.array([[y]], np.float16), x, "float16", data, scales, None, 8, 2, "a16")

    check(32768, np.inf)  # ref 65536 rounds to Inf
    check(32768, 65504)  # ... and 65504 is within its bound
    check(32752, np.inf)  # ref 65504, but ref + bound rounds to Inf
    with pytest.raises(AssertionError):
        check(32768, -np.inf)
    with pytest.raises(AssertionError):
        check(500, np.inf)
