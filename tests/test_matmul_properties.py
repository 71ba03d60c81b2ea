"""Property tests of every registered kernel and of automatic dispatch against the NumPy reference
(qkernels.reference), with the tolerances of docs/numerics.md §3.

Shapes are biased to tile edges (M = 1, small M, odd N, K = G, K = 2G, per-channel, group sizes
32/64/128 and small odd divisors); weights come both from qkernels.quantize_weights and from raw
random canonical arrays; values include large magnitudes, exact-zero rows, single outliers, ties
for A8 rounding and amax values small enough that 127/amax overflows.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import qkernels
from qkernels import ffi, lib, reference
from qkernels._native import new_struct
from qk_support import (
    BACKENDS,
    HAVE_TORCH,
    KERNELS,
    MAX,
    USABLE_DTYPES,
    Built,
    assert_container,
    bits_of,
    build,
    decode,
    encode,
    examples,
    kernel_params,
    kinds_for,
    pack4,
    problems,
    to_kind,
    to_rep,
)

CODES = {b.name: b.code for b in qkernels.backends()}


def _run(built: Built, kernel, **kwargs):
    p = built.problem
    return qkernels.matmul(built.x, built.qw, p.mode, kernel=None if kernel is None else kernel.name,
                           bias=built.bias, **kwargs)


# ---------------------------------------------------------------- every kernel, forced


@pytest.mark.parametrize("kernel", kernel_params())
@settings(max_examples=examples(100))
@given(data=st.data())
def test_kernel_matches_reference(kernel, data):
    p = data.draw(problems(kernel), label="problem")
    built = build(p)
    chosen = qkernels.select(built.x, built.qw, p.mode, kernel=kernel.name)
    assert chosen.name == kernel.name
    y = _run(built, kernel)
    assert_container(y, p.kind, p.dtype, (p.M, p.N))
    built.check(y)


# ---------------------------------------------------------------- automatic dispatch


@settings(max_examples=examples(150))
@given(p=problems())
def test_auto_dispatch_matches_reference(p):
    built = build(p)
    chosen = qkernels.select(built.x, built.qw, p.mode)
    note(f"dispatch chose {chosen}")
    assert chosen.available and chosen.mode == p.mode
    assert p.bits in chosen.bits and p.dtype in chosen.dtypes and p.G % chosen.group_multiple == 0
    assert chosen.offsets or not p.offsets, "dispatch chose a kernel that ignores offsets"
    assert chosen.ragged_groups or not p.ragged, "dispatch chose a kernel without shorter last groups"
    y = _run(built, None)
    assert_container(y, p.kind, p.dtype, (p.M, p.N))
    built.check(y)
    # matmul packed the weights for the backend select() reported, copying nothing for a backend
    # that reads the canonical arrays.
    own_layout = next(b.own_layout for b in qkernels.backends() if b.name == chosen.backend)
    assert (lib.qk_packed_size(built.qw._packs[CODES[chosen.backend]]) > 0) == own_layout


# ---------------------------------------------------------------- format v2 a kernel cannot run


def _format_v2_refusals():
    """(kernel, feature) for every feature of format v2 a registered kernel does not run."""
    params = [pytest.param(k, feature, id=f"{k.name}-{feature}", marks=param.marks)
              for k, param in zip(KERNELS, kernel_params()) for feature in ("offsets", "ragged_groups")
              if not getattr(k, feature)]
    return params or [pytest.param(None, None, marks=pytest.mark.skip(reason="every kernel here runs format v2"))]


@pytest.mark.parametrize("kernel, feature", _format_v2_refusals())
@settings(max_examples=examples(10))
@given(data=st.data())
def test_kernel_refuses_format_v2_it_cannot_run(kernel, feature, data):
    """Docs/numerics.md reading 17: a forced kernel without the feature raises UnsupportedError
    (never runs and ignores it); automatic dispatch passes it over for one that has it."""
    v2 = {"offsets": True, "ragged": None} if feature == "offsets" else {"offsets": None, "ragged": True}
    p = data.draw(problems(kernel, **v2), label="problem")
    built = build(p)
    with pytest.raises(qkernels.UnsupportedError):
        qkernels.select(built.x, built.qw, p.mode, kernel=kernel.name)
    with pytest.raises(qkernels.UnsupportedError):
        _run(built, kernel)
    chosen = qkernels.select(built.x, built.qw, p.mode)
    assert getattr(chosen, feature), f"dispatch chose {chosen.name}, which lacks {feature}"
    built.check(_run(built, None))


# ---------------------------------------------------------------- integer overflow at large K


def _large_k_params():
    targets = [(k, k.mode) for k in KERNELS] + [(None, "a16"), (None, "a8")]
    params = []
    for kernel, mode in targets:
        name = kernel.name if kernel else f"auto-{mode}"
        marks = []
        if kernel is not None and not kernel.available:
            marks = [pytest.mark.skip(reason=f"{kernel.name}: backend {kernel.backend}: {BACKENDS[kernel.backend].reason}")]
        for dtype in USABLE_DTYPES:
            if kernel is not None and dtype not in kernel.dtypes:
                continue
            for bits in kernel.bits if kernel is not None else (4, 8):
                # 70002 · 127 · 255 > 2^31: a per-channel int32 accumulator overflows. G = 16: many
                # same-sign groups, which a float32 running sum over groups cannot add within the
                # A8 bound (docs/numerics.md reading 14).
                for K, G in ((8192, 8192), (70002, 70002), (8192, 16)):
                    if kernel is not None and G % kernel.group_multiple:
                        continue
                    for zp in ("extreme", "none"):
                        params.append(pytest.param(kernel, mode, dtype, bits, K, G, zp, marks=marks,
                                                   id=f"{name}-{dtype}-w{bits}-K{K}-G{G}-zp_{zp}"))
    return params


@pytest.mark.parametrize("kernel, mode, dtype, bits, K, G, zp_style", _large_k_params())
def test_large_k_extreme_values(kernel, mode, dtype, bits, K, G, zp_style):
    """Large K, activations at ±max, weights at the ends of the integer range and zero points at
    the other end: |q − zp| = 255 (8-bit) or 15 (4-bit) in every product."""
    rng = np.random.default_rng(K + bits)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    N = 6
    q = np.empty((N, K), dtype=np.int64)
    q[0], q[1] = qmin, qmax
    q[2] = np.where(np.arange(K) % 2, qmax, qmin)
    q[3] = rng.choice([qmin, qmax], K)
    q[4] = qmax
    q[5] = rng.integers(qmin, qmax + 1, K)
    data = q.astype(np.int8) if bits == 8 else pack4(q)
    zp = None
    R = 1 << (bits - 1)  # max |q − zp| for symmetric weights
    if zp_style == "extreme":
        zp = np.array([[qmax], [qmin], [qmax], [rng.choice([qmin, qmax])], [qmax], [qmin]], dtype=np.int8)
        zp = np.ascontiguousarray(np.repeat(zp, K // G, axis=1))
        R = qmax - qmin
    # Keep outputs below a quarter of the format's range; for A16 in float16, keep the dequantized
    # weights in float16's normal range (a kernel may round them to the activation dtype).
    dmax = MAX[dtype]
    s = 0.25 / (R * K)
    if mode == "a16" and dtype == "float16":
        s = max(s, 2.0**-14)
    xmag = min(dmax, 0.25 * dmax / (K * s * R))
    scales = np.full((N, K // G), s, dtype=np.float32)
    x = np.empty((4, K))
    x[0], x[1] = xmag, -xmag
    x[2] = np.where(np.arange(K) % 2, xmag, -xmag)
    x[3] = rng.choice([-xmag, xmag], K)
    x_rep = encode(x, dtype)
    x_obj = to_kind(x_rep, dtype, kinds_for(dtype)[0])
    qw = qkernels.QuantizedWeight(data, scales, zp, bits, G, (N, K))
    if kernel is not None and kernel.max_group_size and G > kernel.max_group_size:
        # A kernel exact only up to its stated group size (reading 5) refuses larger groups.
        with pytest.raises(qkernels.UnsupportedError):
            qkernels.matmul(x_obj, qw, mode, kernel=kernel.name)
        return
    y = qkernels.matmul(x_obj, qw, mode, kernel=kernel.name if kernel else None)
    reference.assert_matmul_close(to_rep(y, dtype), x_rep, dtype, data, scales, zp, bits, G, mode)


# ---------------------------------------------------------------- non-finite activations


def _inject_nonfinite(rng, x_rep, dtype, rows):
    x = decode(x_rep, dtype)
    for m in rows:
        for k in rng.choice(x.shape[1], size=min(x.shape[1], rng.integers(1, 4)), replace=False):
            x[m, k] = rng.choice([np.nan, np.inf, -np.inf])
    return encode(x, dtype)


def _a16_kernels():
    return [p for p in kernel_params(with_auto=True) if p.values[0] is None or p.values[0].mode == "a16"]


def _a8_kernels():
    return [p for p in kernel_params(with_auto=True) if p.values[0] is None or p.values[0].mode == "a8"]


@pytest.mark.parametrize("kernel", [p for p in kernel_params() if p.values[0].max_group_size])
@pytest.mark.parametrize("bits", [4, 8])
def test_group_size_beyond_k_is_one_group_of_k(kernel, bits):
    """A group size past K is one group of K elements: a kernel's max_group_size bounds that length,
    not the number (such weights fell back to the reference kernel, or a forced kernel refused them)."""
    if not kernel.ragged_groups or bits not in kernel.bits:
        pytest.skip(f"{kernel.name} runs no shorter last group or no {bits}-bit weights")
    rng = np.random.default_rng(bits)
    K, G = 64, (kernel.max_group_size // kernel.group_multiple + 1) * kernel.group_multiple  # past the limit
    qw = qkernels.quantize_weights(rng.standard_normal((40, K)).astype(np.float32), bits=bits, group_size=G,
                                   symmetric=False)
    dtype = kernel.dtypes[0]
    x_rep = encode(rng.standard_normal((5, K)), dtype)
    x = to_kind(x_rep, dtype, "numpy")
    assert qkernels.select(x, qw, kernel.mode).backend != "ref"
    y = qkernels.matmul(x, qw, kernel.mode, kernel=kernel.name)
    reference.assert_matmul_close(to_rep(y, dtype), x_rep, dtype, qw.data, qw.scales, qw.zero_points, bits, G,
                                  kernel.mode)


@pytest.mark.parametrize("kernel", _a16_kernels())
@settings(max_examples=examples(40))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_a16_nonfinite_propagates_as_ieee(kernel, data, seed):
    p = data.draw(problems(kernel, modes=("a16",)), label="problem")
    built = build(p)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(rng.random(p.M) < 0.5)
    x_rep = _inject_nonfinite(rng, built.x_rep, p.dtype, rows if rows.size else [0])
    x_obj = to_kind(x_rep, p.dtype, p.kind)
    y = qkernels.matmul(x_obj, built.qw, "a16", kernel=kernel.name if kernel else None, bias=built.bias)
    y64 = decode(to_rep(y, p.dtype), p.dtype)
    ref, err = reference.matmul(x_rep, p.dtype, built.qw.data, built.qw.scales, built.qw.zero_points, p.bits, p.G,
                                "a16", built.bias, built.qw.offsets)
    ref = np.asarray(ref, dtype=np.float64)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(y64), nan, err_msg="NaN positions differ from the reference")
    inf = np.isinf(ref)
    np.testing.assert_array_equal(y64[inf], ref[inf], err_msg="±Inf outputs differ from the reference")
    finite = ~nan & ~inf
    tol = reference.tolerance(ref[finite], np.asarray(err)[finite], p.dtype, "a16")
    assert (np.abs(y64[finite] - ref[finite]) <= tol).all()
    # Rows without NaN / Inf are the reference's finite values, within tolerance, as before.
    clean = np.isfinite(decode(x_rep, p.dtype)).all(axis=1)
    if clean.any():
        reference.assert_matmul_close(to_rep(y, p.dtype)[clean], x_rep[clean], p.dtype, built.qw.data,
                                      built.qw.scales, built.qw.zero_points, p.bits, p.G, "a16", built.bias,
                                      built.qw.offsets)


@pytest.mark.parametrize("kernel", _a8_kernels())
@settings(max_examples=examples(40))
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_a8_nonfinite_rows_are_nan(kernel, data, seed):
    p = data.draw(problems(kernel, modes=("a8",)), label="problem")
    built = build(p)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(rng.random(p.M) < 0.5)
    rows = rows if rows.size else np.array([p.M - 1])
    x_rep = _inject_nonfinite(rng, built.x_rep, p.dtype, rows)
    x_obj = to_kind(x_rep, p.dtype, p.kind)
    y = qkernels.matmul(x_obj, built.qw, "a8", kernel=kernel.name if kernel else None, bias=built.bias)
    y_rep = to_rep(y, p.dtype)
    y64 = decode(y_rep, p.dtype)
    assert np.isnan(y64[rows]).all(), "a row holding NaN or Inf must give NaN outputs"
    ref, _ = reference.matmul(x_rep, p.dtype, built.qw.data, built.qw.scales, built.qw.zero_points, p.bits, p.G,
                              "a8", built.bias, built.qw.offsets)
    assert np.isnan(np.asarray(ref)[rows]).all()
    other = np.setdiff1d(np.arange(p.M), rows)
    if other.size:
        assert not np.isnan(y64[other]).any()
        reference.assert_matmul_close(y_rep[other], x_rep[other], p.dtype, built.qw.data, built.qw.scales,
                                      built.qw.zero_points, p.bits, p.G, "a8", built.bias, built.qw.offsets)
        # The finite rows are exactly what they are without the non-finite rows in the batch.
        alone = qkernels.matmul(to_kind(x_rep[other], p.dtype, p.kind), built.qw, "a8",
                                kernel=kernel.name if kernel else None, bias=built.bias)
        np.testing.assert_array_equal(bits_of(to_rep(alone, p.dtype)), bits_of(y_rep[other]))


# ---------------------------------------------------------------- containers in, containers out


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("mode", ["a16", "a8"])
def test_output_kind_dtype_and_batch_shape(kind, dtype, mode):
    if kind == "torch":
        pytest.importorskip("torch")
    if kind == "numpy" and dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(7)
    B, T, K, N = 2, 3, 64, 5
    w = rng.standard_normal((N, K)).astype(np.float32)
    qw = qkernels.quantize_weights(w, bits=4, group_size=32, symmetric=False)
    x_rep = encode(rng.standard_normal((B, T, K)), dtype)
    bias = rng.standard_normal(N).astype(np.float32)

    y3 = qkernels.matmul(to_kind(x_rep, dtype, kind), qw, mode, bias=bias)
    assert_container(y3, kind, dtype, (B, T, N))
    y2 = qkernels.matmul(to_kind(x_rep.reshape(B * T, K), dtype, kind), qw, mode, bias=bias)
    assert_container(y2, kind, dtype, (B * T, N))
    y1 = qkernels.matmul(to_kind(x_rep[0, 0], dtype, kind), qw, mode, bias=bias)
    assert_container(y1, kind, dtype, (N,))
    # Leading dimensions are rows: the same numbers as the flattened call (a vector: as one row; M
    # picks the kernel, so a row of M = 1 may differ in its last bits from the same row in M = 6).
    np.testing.assert_array_equal(bits_of(to_rep(y3, dtype)).reshape(B * T, N), bits_of(to_rep(y2, dtype)))
    y_row = qkernels.matmul(to_kind(x_rep[0, :1], dtype, kind), qw, mode, bias=bias)
    np.testing.assert_array_equal(bits_of(to_rep(y1, dtype)), bits_of(to_rep(y_row, dtype))[0])
    for y, x in ((y2, x_rep.reshape(B * T, K)), (y_row, x_rep[0, :1])):
        reference.assert_matmul_close(to_rep(y, dtype), x, dtype, qw.data, qw.scales, qw.zero_points, 4, 32, mode, bias)


def test_torch_inputs_for_everything():
    """Weights, bias and activations as torch tensors; dequantize returns torch in the weights' dtype."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(7, 96, generator=gen, dtype=torch.float32).to(torch.bfloat16)
    qw = qkernels.quantize_weights(w, bits=8, group_size=32, symmetric=True)
    assert qw.kind == "torch" and qw.dtype == "bfloat16"
    w_hat = qkernels.dequantize(qw)
    assert isinstance(w_hat, torch.Tensor) and w_hat.dtype == torch.bfloat16 and tuple(w_hat.shape) == (7, 96)
    x = torch.randn(4, 96, generator=gen).to(torch.float16)
    bias = torch.randn(7, generator=gen)
    y = qkernels.matmul(x, qw, "a16", bias=bias)
    assert_container(y, "torch", "float16", (4, 7))
    reference.assert_matmul_close(to_rep(y, "float16"), x.numpy(), "float16", qw.data, qw.scales, None, 8, 32, "a16",
                                  bias.numpy())


@pytest.mark.parametrize("mode", ["a16", "a8"])
def test_non_contiguous_and_non_native_byte_order_inputs(mode):
    """Any strided or byte-swapped float32/float16 array means its values, as NumPy reads them."""
    rng = np.random.default_rng(11)
    K, N = 32, 9
    qw = qkernels.quantize_weights(rng.standard_normal((N, K)).astype(np.float32), bits=8, group_size=16)
    base = rng.standard_normal((6, 2 * K)).astype(np.float32)
    cases = {
        "strided columns": base[:, ::2],
        "transposed": np.ascontiguousarray(base[:, :K].T).T,
        "reversed rows": base[::-1, :K],
        "big-endian float32": base[:, :K].astype(">f4"),
        "big-endian float16": base[:, :K].astype(">f2"),
    }
    for name, x in cases.items():
        dtype = x.dtype.name
        x_rep = np.ascontiguousarray(x, dtype=np.dtype(dtype))
        y = qkernels.matmul(x, qw, mode)
        assert y.dtype == np.dtype(dtype), name
        try:
            reference.assert_matmul_close(y, x_rep, dtype, qw.data, qw.scales, None, 8, 16, mode)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    # Canonical arrays in the other byte order and strided mean their values too.
    swapped = qkernels.QuantizedWeight(qw.data[:, ::1], qw.scales.astype(">f4"), None, 8, 16, (N, K))
    y = qkernels.matmul(base[:, :K], swapped, mode)
    reference.assert_matmul_close(y, base[:, :K].copy(), "float32", qw.data, qw.scales, None, 8, 16, mode)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_non_contiguous_torch_inputs(dtype):
    pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    K, N = 48, 7
    qw = qkernels.quantize_weights(rng.standard_normal((N, K)).astype(np.float32), bits=4, group_size=16,
                                   symmetric=False)
    full = to_kind(encode(rng.standard_normal((2 * K, 6)), dtype), dtype, "torch")
    for name, x in {"transposed": full[:K].t(), "sliced": full.t()[1:5, K:], "strided": full.t()[:, ::2]}.items():
        assert not x.is_contiguous()
        x_rep = to_rep(x.contiguous(), dtype)
        for mode in ("a16", "a8"):
            y = qkernels.matmul(x, qw, mode)
            assert_container(y, "torch", dtype, (x.shape[0], N))
            try:
                reference.assert_matmul_close(to_rep(y, dtype), x_rep, dtype, qw.data, qw.scales, qw.zero_points,
                                              4, 16, mode)
            except AssertionError as error:
                raise AssertionError(f"{name} {mode}: {error}") from None


def test_bfloat16_numpy_arrays_through_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(5)
    x_rep = encode(rng.standard_normal((3, 64)), "bfloat16")
    qw = qkernels.quantize_weights(rng.standard_normal((4, 64)).astype(ml_dtypes.bfloat16), bits=4, group_size=64)
    y = qkernels.matmul(x_rep.view(ml_dtypes.bfloat16), qw)
    assert_container(y, "numpy", "bfloat16", (3, 4))
    reference.assert_matmul_close(to_rep(y, "bfloat16"), x_rep, "bfloat16", qw.data, qw.scales, None, 4, 64, "a16")


def test_bfloat16_is_exercised():
    """The property tests draw bfloat16 only where a container exists: torch (expected in CI)."""
    if not HAVE_TORCH:
        pytest.skip("torch is not installed: bfloat16 activations are not covered by this run")
    assert "bfloat16" in USABLE_DTYPES


# ---------------------------------------------------------------- two C paths, bit for bit


def _stateless_kernel(qw, p) -> str:
    """The kernel a stateless call (qk_matmul) runs: the backend's canonical variant where one fits
    and covers M, else (automatic selection) another backend's, else the kernel a plan runs.
    Selection reads no data: placeholder pointers."""
    placeholder = np.zeros(16, dtype=np.float32)
    args = new_struct("qk_matmul_args")
    args.input = args.output = ffi.from_buffer(placeholder)
    args.M = p.M
    args.input_dtype = {"float32": lib.QK_DTYPE_F32, "float16": lib.QK_DTYPE_F16, "bfloat16": lib.QK_DTYPE_BF16}[p.dtype]
    args.mode = lib.QK_MODE_A16 if p.mode == "a16" else lib.QK_MODE_A8
    info = new_struct("qk_kernel_info")
    assert lib.qk_select_kernel(qw.c_weights, args, info) == lib.QK_OK
    return ffi.string(info.name).decode()


@settings(max_examples=examples(40))
@given(p=problems(weights=("raw",), offsets=False))  # quantized_matmul takes no offsets
def test_quantized_matmul_equals_matmul_bit_for_bit(p):
    """quantized_matmul (stateless) gives matmul's bits when both run the same kernel; a canonical
    variant (stateless, unpacked) may sum in another order, within the contract's tolerance."""
    built = build(p)
    qw = built.qw
    y = qkernels.matmul(built.x, qw, p.mode, bias=built.bias)
    z = qkernels.quantized_matmul(built.x, qw.data, qw.scales, qw.zero_points, bits=p.bits, group_size=p.G,
                                  mode=p.mode, bias=built.bias)
    assert_container(z, p.kind, p.dtype, (p.M, p.N))
    if _stateless_kernel(qw, p) == qkernels.select(built.x, qw, p.mode).name:
        np.testing.assert_array_equal(bits_of(to_rep(z, p.dtype)), bits_of(to_rep(y, p.dtype)))
    built.check(z)


@settings(max_examples=examples(25))
@given(p=problems(modes=("a16",), dtypes=("float16",), bias=("none",), offsets=False, ragged=False))
def test_c_entry_point_quantizedMatMul(p):
    """The planned C entry point: fp16 in, fp16 out, A16, automatic backend; format v1 only."""
    built = build(p)
    qw = built.qw
    x = np.ascontiguousarray(built.x_rep, dtype=np.float16)
    out = np.full((p.M, p.N), np.nan, dtype=np.float16)
    zp = ffi.NULL if qw.zero_points is None else ffi.cast("int8_t *", qw.zero_points.ctypes.data)
    lib.quantizedMatMul(ffi.cast("void *", x.ctypes.data), ffi.cast("int8_t *", qw.data.ctypes.data),
                        ffi.cast("float *", qw.scales.ctypes.data), zp, ffi.cast("void *", out.ctypes.data),
                        p.M, p.N, p.K, p.G, p.bits)
    assert lib.qk_last_status() == lib.QK_OK, ffi.string(lib.qk_last_error()).decode()
    assert ffi.string(lib.qk_last_error()) == b""
    reference.assert_matmul_close(out, x, "float16", qw.data, qw.scales, qw.zero_points, p.bits, p.G, "a16")
    z = qkernels.quantized_matmul(x, qw.data, qw.scales, qw.zero_points, bits=p.bits, group_size=p.G)
    np.testing.assert_array_equal(bits_of(out), bits_of(z))


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("backend", [b.name for b in qkernels.backends()])
@pytest.mark.parametrize("mode", ["a16", "a8"])
def test_packed_weights_are_cached_and_reused(backend, mode):
    info = BACKENDS[backend]
    if not info.available:
        pytest.skip(f"backend {backend}: {info.reason}")
    rng = np.random.default_rng(13)
    K, N = 256, 33
    qw = qkernels.quantize_weights(rng.standard_normal((N, K)).astype(np.float32), bits=4, group_size=64,
                                   symmetric=False)
    x = rng.standard_normal((5, K)).astype(np.float16)
    try:
        y1 = qkernels.matmul(x, qw, mode, backend=backend)
    except qkernels.UnsupportedError as error:
        pytest.skip(f"backend {backend} has no kernel for this problem: {error}")
    # One handle, made once; a backend without its own layout borrows the canonical arrays (no copy).
    packs = {info.code}
    assert set(qw._packs) == packs
    handle = qw._packs.get(info.code)
    assert (lib.qk_packed_size(handle) > 0) == info.own_layout
    y2 = qkernels.matmul(x, qw, mode, backend=backend)
    y3 = qkernels.matmul(x, qw, mode, backend=backend)
    assert qw._packs.get(info.code) is handle and set(qw._packs) == packs
    np.testing.assert_array_equal(bits_of(y1), bits_of(y2))
    np.testing.assert_array_equal(bits_of(y1), bits_of(y3))
    # A fresh pack and the unpacked entry point agree bit for bit with the cached pack.
    fresh = qkernels.QuantizedWeight(qw.data.copy(), qw.scales.copy(), qw.zero_points.copy(), 4, 64, (N, K))
    np.testing.assert_array_equal(bits_of(qkernels.matmul(x, fresh, mode, backend=backend)), bits_of(y1))
    z = qkernels.quantized_matmul(x, qw.data, qw.scales, qw.zero_points, bits=4, group_size=64, mode=mode,
                                  backend=backend)
    np.testing.assert_array_equal(bits_of(z), bits_of(y1))
    reference.assert_matmul_close(y1, x, "float16", qw.data, qw.scales, qw.zero_points, 4, 64, mode)


@pytest.mark.parametrize("bits", [4, 8])
def test_packed_handle_owns_a_copy(bits):
    """qk_pack_weights copies what it needs: the canonical arrays may change or go afterwards."""
    rng = np.random.default_rng(17)
    N, K, G = 9, 128, 32
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(qmin, qmax + 1, (N, K))
    data = q.astype(np.int8) if bits == 8 else pack4(q)
    scales = rng.uniform(0.01, 0.1, (N, K // G)).astype(np.float32)
    zp = rng.integers(qmin, qmax + 1, (N, K // G)).astype(np.int8)
    original = (data.copy(), scales.copy(), zp.copy())
    w = new_struct("qk_weights")
    w.data, w.scales = ffi.cast("int8_t *", data.ctypes.data), ffi.cast("float *", scales.ctypes.data)
    w.zero_points = ffi.cast("int8_t *", zp.ctypes.data)
    w.N, w.K, w.group_size, w.bits = N, K, G, bits
    handle = ffi.new("qk_packed_weights **")
    assert lib.qk_pack_weights(w, lib.QK_BACKEND_AUTO, handle) == lib.QK_OK
    try:
        assert lib.qk_packed_backend(handle[0]) in {b.code for b in qkernels.backends() if b.available}
        data[:] = 0x55
        scales[:] = np.nan
        zp[:] = 3
        x = rng.standard_normal((4, K)).astype(np.float32)
        for mode_name, mode in (("a16", lib.QK_MODE_A16), ("a8", lib.QK_MODE_A8)):
            out = np.zeros((4, N), dtype=np.float32)
            args = new_struct("qk_matmul_args")
            args.input, args.output = ffi.cast("void *", x.ctypes.data), ffi.cast("void *", out.ctypes.data)
            args.M, args.input_dtype, args.mode, args.backend = 4, lib.QK_DTYPE_F32, mode, lib.QK_BACKEND_AUTO
            assert lib.qk_matmul_packed(handle[0], args) == lib.QK_OK, ffi.string(lib.qk_last_error())
            reference.assert_matmul_close(out, x, "float32", *original, bits, G, mode_name)
    finally:
        lib.qk_packed_weights_free(handle[0])


def test_dispatch_for_each_m_runs_the_kernel_select_reports():
    """For M at and around every kernel's preferred maximum, the kernel select() reports runs:
    forcing it by name gives the automatic result bit for bit."""
    rng = np.random.default_rng(19)
    K, N = 128, 16
    limits = sorted({k.max_m for k in KERNELS if k.max_m} | {1})
    qw = qkernels.quantize_weights(rng.standard_normal((N, K)).astype(np.float32), bits=8, group_size=128)
    for M in sorted({m + d for m in limits for d in (-1, 0, 1) if m + d >= 1} | {64}):
        x = rng.standard_normal((M, K)).astype(np.float32)
        for mode in ("a16", "a8"):
            chosen = qkernels.select(x, qw, mode)
            auto = qkernels.matmul(x, qw, mode)
            forced = qkernels.matmul(x, qw, mode, kernel=chosen.name)
            np.testing.assert_array_equal(bits_of(auto), bits_of(forced), err_msg=f"M={M} {mode} {chosen.name}")
            reference.assert_matmul_close(auto, x, "float32", qw.data, qw.scales, None, 8, 128, mode)


def test_a8_zero_and_tiny_rows_exact_cases():
    """Hand-checked A8 corner cases: a zero row gives exactly the bias; a row whose amax is
    subnormal quantizes every non-zero element to ±127 and zeros to 0 (reading 4)."""
    K, N = 8, 3
    data = np.array([[1] * K, [-1] * K, [2, 0, 0, 0, 0, 0, 0, -2]], dtype=np.int8)
    scales = np.ones((N, 1), dtype=np.float32)
    bias = np.array([0.5, -0.25, 0.0], dtype=np.float32)
    tiny = np.float32(1e-40)  # subnormal: 127 / tiny overflows to +Inf
    x = np.array([[0.0] * K, [tiny, -tiny, 0, 0, tiny, 0, 0, tiny]], dtype=np.float32)
    for k in [None] + [k for k in KERNELS if k.available and k.mode == "a8"]:
        # one group of K, or one longer than K for a kernel whose group sizes are multiples of more
        G = K if k is None or K % k.group_multiple == 0 else k.group_multiple
        qw = qkernels.QuantizedWeight(data, scales, None, 8, G, (N, K))
        y = qkernels.matmul(x, qw, "a8", bias=bias, kernel=k and k.name)
        np.testing.assert_array_equal(y[0], bias)
        sx = np.float64(np.float32(tiny / np.float32(127)))
        expected = sx * np.array([127 * 2, -127 * 2, 127 * 2 - 127 * 2], dtype=np.float64) + bias
        np.testing.assert_array_equal(y[1], expected.astype(np.float32))
        reference.assert_matmul_close(y, x, "float32", data, scales, None, 8, G, "a8", bias)


@pytest.mark.parametrize("backend", [b.name for b in qkernels.backends() if b.available])
@pytest.mark.parametrize("mode", ["a16", "a8"])
def test_explicit_pack_equals_matmul(backend, mode):
    """A handle packed explicitly (as a framework would keep one) gives matmul's bits, even for a
    backend that matmul runs on the canonical arrays, and keeps its own copy of the weights."""
    info = BACKENDS[backend]
    rng = np.random.default_rng(17)
    K, N = 192, 21
    w = rng.standard_normal((N, K)).astype(np.float32)
    qw = qkernels.quantize_weights(w, bits=8, group_size=64, symmetric=False)
    x = rng.standard_normal((3, K)).astype(np.float32)
    try:
        y = qkernels.matmul(x, qw, mode, backend=backend)
    except qkernels.UnsupportedError as error:
        pytest.skip(f"backend {backend} has no kernel for this problem: {error}")
    copy = qkernels.QuantizedWeight(qw.data.copy(), qw.scales.copy(), qw.zero_points.copy(), 8, 64, (N, K))
    out_handle = ffi.new("qk_packed_weights **")
    assert lib.qk_pack_weights(copy.c_weights, info.code, out_handle) == lib.QK_OK
    handle = ffi.gc(out_handle[0], lib.qk_packed_weights_free)
    copy.data[...] = 0  # qk_pack_weights copies: the handle must not read the canonical arrays after packing
    out = np.full_like(y, np.nan)
    args = new_struct("qk_matmul_args")
    args.input, args.output = ffi.cast("void *", x.ctypes.data), ffi.cast("void *", out.ctypes.data)
    args.M, args.input_dtype, args.mode = 3, lib.QK_DTYPE_F32, qkernels.dispatch.MODES[mode]
    assert lib.qk_matmul_packed(handle, args) == lib.QK_OK
    np.testing.assert_array_equal(out.view(np.uint32), y.view(np.uint32))


def test_quantized_weight_is_frozen():
    qw = qkernels.quantize_weights(np.ones((4, 64), np.float32), bits=4, group_size=32)
    with pytest.raises(AttributeError):
        qw.data = qw.data.copy()  # would leave the native view pointing at a freed array
