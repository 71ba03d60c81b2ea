"""The numeric contract of docs/numerics.md, implemented again in NumPy: the test-suite's oracle.

Independent of the C code on purpose. Everything the contract defines in float64 or exact integers
is computed in float64 or exact integers here; the quantizers run in float32, one correctly rounded
NumPy float32 operation per step of the contract, so they produce the very integers and scales every
backend must produce.

dtype strings are "float32", "float16" and "bfloat16". NumPy has no bfloat16: bfloat16 data are
np.uint16 arrays of raw bit patterns everywhere in this module.

Canonical weights (section 1): ``data`` int8 [N, K*bits/8] (4-bit: low nibble first), ``scales``
float32 [N, NG], ``zero_points`` int8 [N, NG] or None for symmetric weights, ``offsets`` float32
[N, NG] or None (format v2), with NG = ceil(K/G) groups per row: G need not divide K, the last group
then holds the remaining K - (NG-1)·G columns.
"""

from __future__ import annotations

import numpy as np

# Storage dtype, precision p and minimum normal exponent of each output format (reading 9).
_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_PRECISION = {"float32": 24, "float16": 11, "bfloat16": 8}
_MIN_EXPONENT = {"float32": -126, "float16": -14, "bfloat16": -126}

# A16 tolerance factor per output dtype (section 3); A8 uses 2^-20 whatever the dtype.
_TAU_A16 = {"float32": 2.0**-16, "float16": 2.0**-10, "bfloat16": 2.0**-7}
_TAU_A8 = 2.0**-20


# --- number formats --------------------------------------------------------------------------


def _check_dtype(dtype):
    if dtype not in _STORAGE:
        raise ValueError(f"dtype must be one of {sorted(_STORAGE)}, got {dtype!r}")


def _to_float32(x, dtype):
    """Exact conversion to float32: float16 and bfloat16 are subsets of float32."""
    _check_dtype(dtype)
    x = np.asarray(x)
    if x.dtype != _STORAGE[dtype]:
        raise ValueError(f"x must be a {np.dtype(_STORAGE[dtype]).name} array for dtype {dtype!r}, got {x.dtype}")
    if dtype == "bfloat16":
        # A bfloat16 is the upper half of the float32 with the same bits.
        return (x.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(invalid="ignore"):  # a signaling NaN is quieted, and stays NaN
        return x.astype(np.float32)


def to_float64(x, dtype):
    """Exact float64 value of ``x``, an array of ``dtype`` (np.uint16 bits for bfloat16). Section 3."""
    with np.errstate(invalid="ignore"):  # a signaling NaN is quieted, and stays NaN
        return _to_float32(x, dtype).astype(np.float64)


def round_to(y, dtype):
    """float64 -> ``dtype`` with one correct rounding (reading 8): round half to even, overflow to
    ±Inf, subnormals kept, NaN stays NaN. bfloat16 is returned as np.uint16 bits.

    NumPy's float64 -> float16 and float64 -> float32 casts round once, directly from the double
    (the tests check this at halfway points); bfloat16 is rounded here, never through float32.
    """
    _check_dtype(dtype)
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        if dtype != "bfloat16":
            return y.astype(_STORAGE[dtype])
        # Round to the bfloat16 grid in float64: the spacing at |y| is 2^(e - 7) for 2^e <= |y|, and
        # 2^-133 below the smallest normal 2^-126. Scaling by powers of two is exact and np.rint
        # rounds half to even; a value that rounds up to 2^128 becomes Inf in the float32 cast.
        _, exponent = np.frexp(y)  # |y| = f * 2^exponent with 0.5 <= f < 1
        step = np.maximum(exponent - 1, _MIN_EXPONENT["bfloat16"]) - (_PRECISION["bfloat16"] - 1)
        grid = np.ldexp(np.rint(np.ldexp(y, -step)), step)
        # Every value on the grid is a float32 whose low 16 bits are zero: the cast is exact.
        bits = (grid.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return np.where(np.isnan(y), np.uint16(0x7FC0), bits)


def ulp(y, dtype):
    """Spacing of ``dtype`` at |y| as float64 (reading 9): 2^(e - p + 1) for 2^e <= |y| < 2^(e+1),
    the subnormal spacing below the smallest normal. Finite y beyond the format's range follow the
    same formula; NaN or ±Inf y give NaN (they have no spacing).
    """
    _check_dtype(dtype)
    y = np.asarray(y, dtype=np.float64)
    _, exponent = np.frexp(y)
    # frexp gives exponent 0 for y = 0, which must take the subnormal spacing too.
    e = np.where(y == 0, _MIN_EXPONENT[dtype], np.maximum(exponent - 1, _MIN_EXPONENT[dtype]))
    spacing = np.ldexp(1.0, e - (_PRECISION[dtype] - 1))
    return np.where(np.isfinite(y), spacing, np.nan)


# --- canonical weight format -----------------------------------------------------------------


def _check_bits(bits):
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")


def _check_group(K, group_size, bits):
    """Returns NG = ceil(K / G), the groups per row (format v2: the last one may be shorter)."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if bits == 4 and K % 2:
        raise ValueError(f"K must be even with 4 bits, got K = {K}")
    return -(-K // int(group_size))


def _per_column(a, K, group_size):
    """[N, NG] per-group values -> [N, K], column k taking those of its group k div G."""
    return a[:, np.arange(K) // group_size]


def pack_int4(q):
    """int4 values [N, K] (any integer dtype, in [-8, 7], K even) -> int8 bytes [N, K/2], element
    2j in bits 0-3 of byte j and element 2j+1 in bits 4-7. Section 1."""
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] % 2 or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"q must be a 2-D integer array with an even number of columns, got {q.dtype} {q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("q holds values outside the int4 range [-8, 7]")
    nibbles = q.astype(np.int64) & 0x0F  # two's complement nibble
    return (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8).view(np.int8)


def unpack_int4(data, K):
    """int8 bytes [N, K/2] -> int4 values as int8 [N, K] (low nibble first). Section 1."""
    data = np.asarray(data)
    if data.dtype != np.int8 or data.ndim != 2 or data.shape[1] * 2 != K:
        raise ValueError(f"data must be int8 [N, K/2] for K = {K}, got {data.dtype} {data.shape}")
    u = data.view(np.uint8).astype(np.int16)
    q = np.empty((data.shape[0], K), dtype=np.int8)
    # (n ^ 8) - 8 sign-extends a 4-bit two's complement nibble.
    q[:, 0::2] = ((u & 0x0F) ^ 8) - 8
    q[:, 1::2] = ((u >> 4) ^ 8) - 8
    return q


def unpack(data, bits, K):
    """Canonical ``data`` of either width -> int8 values [N, K]. Section 1."""
    _check_bits(bits)
    if bits == 4:
        return unpack_int4(data, K)
    data = np.asarray(data)
    if data.dtype != np.int8 or data.ndim != 2 or data.shape[1] != K:
        raise ValueError(f"data must be int8 [N, K] for K = {K}, got {data.dtype} {data.shape}")
    return data.copy()


def _centered(data, scales, zero_points, bits, group_size, offsets=None):
    """Checks canonical weights; returns q - zp as int16 [N, K] (it lies in [-255, 255]), and the
    scales and offsets (None when not given) as float64 [N, NG]."""
    _check_bits(bits)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        raise ValueError(f"data must be a non-empty 2-D array, got shape {data.shape}")
    N, K = data.shape[0], data.shape[1] * 8 // bits
    groups = _check_group(K, group_size, bits)
    scales = np.asarray(scales)
    if scales.dtype != np.float32 or scales.shape != (N, groups):
        raise ValueError(f"scales must be float32 [{N}, {groups}], got {scales.dtype} {scales.shape}")
    if offsets is not None:
        offsets = np.asarray(offsets)
        if offsets.dtype != np.float32 or offsets.shape != (N, groups):
            raise ValueError(f"offsets must be float32 [{N}, {groups}] or None, got {offsets.dtype} {offsets.shape}")
        offsets = offsets.astype(np.float64)
    q = unpack(data, bits, K).astype(np.int16)
    if zero_points is not None:
        zero_points = np.asarray(zero_points)
        if zero_points.dtype != np.int8 or zero_points.shape != (N, groups):
            raise ValueError(
                f"zero_points must be int8 [{N}, {groups}] or None, got {zero_points.dtype} {zero_points.shape}"
            )
        if bits == 4 and (zero_points.min() < -8 or zero_points.max() > 7):
            raise ValueError("zero_points must lie in [-8, 7] with 4 bits (reading 11)")
        q = q - _per_column(zero_points.astype(np.int16), K, group_size)
    return q, scales.astype(np.float64), offsets


def _scaled(centered, scales64, offsets64, group_size):
    """scales · (q - zp) + offsets as float64 [N, K]: the product is exact (a float32 scale times an
    integer of at most 9 bits fits float64's 53 bits), the sum one float64 rounding (reading 7).
    The offset is added only where given, so that a product of -0.0 stays -0.0 without one."""
    K = centered.shape[1]
    w = centered * _per_column(scales64, K, group_size)
    if offsets64 is not None:
        w += _per_column(offsets64, K, group_size)
    return w


def dequantize(data, scales, zero_points, bits, group_size, offsets=None):
    """Exact float64 weights ``scales * (q - zp) + offsets`` [N, K]: section 1, reading 7."""
    return _scaled(*_centered(data, scales, zero_points, bits, group_size, offsets), group_size)


# --- quantizers ------------------------------------------------------------------------------


def quantize(x, bits, group_size=None, symmetric=True, granularity="group", dtype=None):
    """Quantize float weights ``x`` [N, K] to the canonical format: section 2, readings 1, 2, 3, 10.

    ``x`` is float32, float16, or np.uint16 bits with ``dtype="bfloat16"`` (dtype None infers float32
    or float16 from x.dtype). ``granularity`` is "tensor", "channel" (G = K for both) or "group"
    (``group_size`` required; it need not divide K: the last group's range is that of its own
    K - (NG-1)·G columns, reading 18). Every step is one correctly rounded float32 operation.
    Returns (data int8 [N, K*bits/8], scales float32 [N, NG], zero_points int8 [N, NG] or None).
    """
    _check_bits(bits)
    x = np.asarray(x)
    if dtype is None:
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(x.dtype)
        if dtype is None:
            raise ValueError(f"dtype must be given for x of dtype {x.dtype} (bfloat16 bits are uint16)")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be a non-empty 2-D array [N, K], got shape {x.shape}")
    N, K = x.shape
    if granularity == "group":
        if group_size is None:
            raise ValueError("group_size is required with granularity='group'")
    elif granularity in ("tensor", "channel"):
        if group_size not in (None, K):
            raise ValueError(f"group_size must be None or K = {K} with granularity={granularity!r}, got {group_size!r}")
        group_size = K
    else:
        raise ValueError(f"granularity must be 'tensor', 'channel' or 'group', got {granularity!r}")
    groups = _check_group(K, group_size, bits)

    xf = _to_float32(x, dtype)
    if not np.isfinite(xf).all():
        raise ValueError("x holds NaN or Inf: the quantizer needs finite input")
    # A shorter last group is padded with zeros, which change no range: absmax ignores them, and
    # the asymmetric range is widened to hold zero anyway. G > K is one group of K, not padded to G.
    span = min(int(group_size), K)
    padded = np.zeros((N, groups * span), np.float32)
    padded[:, :K] = xf
    blocks = padded.reshape(N, groups, span)
    # One range over the whole matrix for per-tensor (reading 10), else one per row or group.
    axes = (0, 1, 2) if granularity == "tensor" else (2,)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    if symmetric:
        amax = np.abs(blocks).max(axis=axes, keepdims=True)
        s = amax / np.float32(qmax)
        # A zero range, or a scale that underflows to 0 (reading 1), takes s = 1.
        s = np.where(s == 0, np.float32(1), s)
        q = np.clip(np.rint(blocks / s), -qmax, qmax).astype(np.int64)
        zp = None
    else:
        # Widen the range to hold zero, so zero is exact and the zero point fits its type.
        lo = np.minimum(blocks.min(axis=axes, keepdims=True), np.float32(0))
        hi = np.maximum(blocks.max(axis=axes, keepdims=True), np.float32(0))
        with np.errstate(over="ignore"):
            span = hi - lo
        if np.isinf(span).any():
            raise ValueError("x: max - min overflows float32, no finite scale exists (reading 2)")
        s = span / np.float32(qmax - qmin)
        s = np.where(s == 0, np.float32(1), s)  # reading 1
        zp = np.clip(np.rint(np.float32(qmin) - lo / s), qmin, qmax).astype(np.int64)
        # rne(x / s) and zp are integers: their sum is exact before the clamp (reading 3).
        q = np.clip(np.rint(blocks / s).astype(np.int64) + zp, qmin, qmax)

    shape = (N, groups)
    scales = np.broadcast_to(s, shape + (1,)).reshape(shape).astype(np.float32)
    zero_points = None if zp is None else np.broadcast_to(zp, shape + (1,)).reshape(shape).astype(np.int8)
    q = q.reshape(N, -1)[:, :K].astype(np.int8)
    return (pack_int4(q) if bits == 4 else q), scales, zero_points


def quantize_activations(x, dtype):
    """Section 3's A8 activation quantizer, per row in float32 steps, with reading 4.

    Returns (qx int8 [M, K], sx float32 [M], finite bool [M]). A row holding NaN or ±Inf has
    finite False and qx = 0, sx = 0 (its outputs are NaN whatever they are). A zero row gives
    qx = 0, sx = 0.
    """
    xf = _to_float32(x, dtype)
    if xf.ndim != 2 or xf.shape[0] < 1 or xf.shape[1] < 1:
        raise ValueError(f"x must be a non-empty 2-D array [M, K], got shape {xf.shape}")
    finite = np.isfinite(xf).all(axis=1)
    xf = np.where(finite[:, None], xf, np.float32(0))
    amax = np.abs(xf).max(axis=1)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        # 127 / amax is +Inf for a zero row and whenever it overflows float32 (reading 4):
        # non-zero X then scale to ±Inf (clamped to ±127), and zero X to 0 * Inf = NaN, which is 0.
        inv = np.float32(127) / amax
        scaled = xf * inv[:, None]
    scaled = np.where(np.isnan(scaled), np.float32(0), scaled)
    qx = np.clip(np.rint(scaled), -127, 127).astype(np.int8)
    sx = amax / np.float32(127)
    return qx, sx, finite


# --- matmul ----------------------------------------------------------------------------------


def _matmul_nt(a, b):
    """a @ b.T in float64 for a [M, K], b [N, K], with IEEE propagation of NaN and ±Inf.

    BLAS is used for the rows and columns that are all finite; any row of ``a`` or ``b`` holding a
    non-finite value is summed with np.einsum's plain loops instead, because a BLAS may skip zero
    operands and so lose the NaN of Inf * 0.
    """
    row_ok = np.isfinite(a).all(axis=1)
    col_ok = np.isfinite(b).all(axis=1)
    out = np.empty((a.shape[0], b.shape[0]))
    out[np.ix_(row_ok, col_ok)] = a[row_ok] @ b[col_ok].T
    with np.errstate(invalid="ignore"):
        for m in np.flatnonzero(~row_ok):
            out[m] = np.einsum("k,nk->n", a[m], b)
        for n in np.flatnonzero(~col_ok):
            out[:, n] = np.einsum("mk,k->m", a, b[n])
    return out


def _check_mode(mode):
    if mode not in ("a16", "a8"):
        raise ValueError(f"mode must be 'a16' or 'a8', got {mode!r}")


def matmul(x, dtype, data, scales, zero_points, bits, group_size, mode, bias=None, offsets=None):
    """Reference ``Y = X · Wᵀ`` before its rounding to ``dtype``: section 3, readings 4, 5, 6, 7, 11.

    Returns (ref, err_scale), both float64 [M, N]; err_scale is the sum the tolerance multiplies.
    A16: ref = Σ_k X·w with the float64 dequantized w (reading 7), as one float64 matmul. Its
    rounding error, about K·2^-53·err_scale, is far below the tolerance; NaN and ±Inf in X propagate
    by IEEE rules. err_scale = Σ_k |X·w|.
    A8: ref = sx[m] · Σ_g (scales[n,g] · acc[m,n,g] + offsets[n,g] · xs[m,g]) over exact per-group
    integer sums acc = Σ qx·(q - zp) and xs = Σ qx, and err_scale = sx[m] · Σ_g (|scales · acc| +
    |offsets · xs|); rows of X holding NaN or ±Inf give NaN.
    ``bias`` (float32 [N] or None) is added to ref, and its magnitude to err_scale (reading 6).
    ``offsets`` (float32 [N, NG] or None) as in section 1; a group size need not divide K.
    """
    _check_mode(mode)
    _check_dtype(dtype)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be a non-empty 2-D array [M, K], got shape {x.shape}")
    centered, scales64, offsets64 = _centered(data, scales, zero_points, bits, group_size, offsets)
    N, K = centered.shape
    if x.shape[1] != K:
        raise ValueError(f"x has K = {x.shape[1]} columns, the weights K = {K}")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.float32 or bias.shape != (N,):
            raise ValueError(f"bias must be float32 [{N}] or None, got {bias.dtype} {bias.shape}")

    if mode == "a16":
        X = to_float64(x, dtype)
        w = _scaled(centered, scales64, offsets64, group_size)
        ref = _matmul_nt(X, w)
        err_scale = _matmul_nt(np.abs(X), np.abs(w))
    else:
        qx, sx, finite = quantize_activations(x, dtype)
        # The accumulators are integers computed exactly by a float64 BLAS: every product and every
        # partial sum is an integer of magnitude at most G·127·255, far below 2^53 (an int64 matmul
        # gives the same numbers, twenty times slower).
        qx64, centered64 = qx.astype(np.float64), centered.astype(np.float64)
        total = np.zeros((x.shape[0], N))
        magnitude = np.zeros((x.shape[0], N))
        for g, start in enumerate(range(0, K, group_size)):
            cols = slice(start, start + group_size)  # the last group may be shorter
            terms = [(qx64[:, cols] @ centered64[:, cols].T) * scales64[:, g]]
            if offsets64 is not None:
                terms.append(qx64[:, cols].sum(axis=1, keepdims=True) * offsets64[:, g])
            for term in terms:
                total += term
                magnitude += np.abs(term)
        sx64 = sx.astype(np.float64)[:, None]
        ref = sx64 * total
        err_scale = sx64 * magnitude
        ref[~finite] = np.nan

    if bias is not None:
        ref = ref + bias.astype(np.float64)
        err_scale = err_scale + np.abs(bias.astype(np.float64))
    return ref, err_scale


def tolerance(ref, err_scale, dtype, mode):
    """Per-element bound on |Y - ref| (section 3): 2·ulp_out(ref) + tau·err_scale, tau = 2^-10,
    2^-7, 2^-16 for float16, bfloat16, float32 in A16 and 2^-20 in A8. NaN where ref is not finite."""
    _check_mode(mode)
    _check_dtype(dtype)
    tau = _TAU_A16[dtype] if mode == "a16" else _TAU_A8
    return 2 * ulp(ref, dtype) + tau * np.asarray(err_scale, dtype=np.float64)


def assert_matmul_close(y, x, dtype, data, scales, zero_points, bits, group_size, mode, bias=None, offsets=None):
    """Raise AssertionError unless the kernel output ``y`` (an array of ``dtype``, np.uint16 bits for
    bfloat16) meets section 3's tolerance against :func:`matmul` everywhere.

    NaN must match NaN and ±Inf the same Inf. A finite ref may come out as ±Inf when a value within
    its bound rounds to that Inf in ``dtype`` (the kernel's own value may lie there: near the
    format's largest number, the tolerance band reaches past the overflow threshold).
    """
    ref, err_scale = matmul(x, dtype, data, scales, zero_points, bits, group_size, mode, bias, offsets)
    bound = tolerance(ref, err_scale, dtype, mode)
    got = to_float64(y, dtype)
    if got.shape != ref.shape:
        raise AssertionError(f"y has shape {got.shape}, expected {ref.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(got - ref)
        same = (got == ref) | (np.isnan(got) & np.isnan(ref))
        within = diff <= bound  # False wherever ref or y is NaN or Inf
        band_edge = to_float64(round_to(ref + np.sign(got) * bound, dtype), dtype)
        overflowed = np.isinf(got) & np.isfinite(ref) & (band_edge == got)
        bad = ~(same | within | overflowed)
        if not bad.any():
            return
        # Worst violation: the largest |y - ref| / bound, a NaN or Inf mismatch counting as infinite.
        ratio = np.where(bad, np.nan_to_num(diff / bound, nan=np.inf), -1.0)
    m, n = np.unravel_index(np.argmax(ratio), ratio.shape)
    raise AssertionError(
        f"{int(bad.sum())} of {bad.size} outputs out of tolerance ({mode}, {dtype}, {bits}-bit, "
        f"group {group_size}{'' if offsets is None else ', offsets'}); "
        f"worst at [{m}, {n}]: y = {got[m, n]!r}, ref = {ref[m, n]!r}, "
        f"bound = {bound[m, n]!r}, |y - ref| = {diff[m, n]!r}"
    )
