"""Helpers shared by the quantization methods: inputs as NumPy, exact dequantization, and the
contract's quantizer (docs/numerics.md §2) along any axis or onto given scales."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DtypeError, InvalidArgumentError, NonFiniteError
from ..packing import pack_int4, unpack, unpack_int4
from ..tensors import FLOAT_DTYPES, host_tensor, is_torch
from ..weights import QuantizedWeight, quantize_weights


def float_array(x: Any, argument: str, *, ndim: int | None = None, dtype=np.float64) -> np.ndarray:
    """A float NumPy array or CPU torch tensor as a finite NumPy array of `dtype` (a copy if converted)."""
    if is_torch(x):
        if not x.is_floating_point():
            raise DtypeError(f"{argument} has dtype {x.dtype}; expected a float tensor")
        x = host_tensor(x, argument)
        x = x.float().numpy() if str(x.dtype) == "torch.bfloat16" else x.numpy()  # NumPy has no bfloat16
    if not isinstance(x, np.ndarray):
        raise DtypeError(f"{argument} must be a NumPy array or a torch tensor, not {type(x).__name__}")
    if x.dtype.kind != "f" and x.dtype.name not in FLOAT_DTYPES:
        raise DtypeError(f"{argument} has dtype {x.dtype}; expected a float dtype")
    out = np.asarray(x, dtype=dtype)
    if ndim is not None and out.ndim != ndim:
        raise InvalidArgumentError(f"{argument} must be {ndim}-D; it has shape {out.shape}")
    if not np.isfinite(out).all():
        raise NonFiniteError(f"{argument} holds NaN or Inf")
    return out


def rows_of(x: Any, argument: str, K: int | None = None, dtype=np.float64) -> np.ndarray:
    """Layer inputs [..., K] as rows [M, K] of `dtype`."""
    a = float_array(x, argument, dtype=dtype)
    if a.ndim < 1 or (K is not None and a.shape[-1] != K):
        raise InvalidArgumentError(f"{argument} has shape {a.shape}; its last dimension must be K={K}")
    return a.reshape(-1, a.shape[-1])


def check_bits(bits: int) -> None:
    if bits not in (4, 8):
        raise InvalidArgumentError(f"bits={bits} must be 4 or 8")


def check_group_size(group_size: int | None) -> None:
    """None (one group per row) or a positive integer, as rtn takes it (a bool or a float is refused)."""
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer))
                                   or group_size <= 0):
        raise InvalidArgumentError(f"group_size={group_size!r} must be a positive integer")


def check_count(value: Any, argument: str) -> None:
    """A positive integer option (a grid size, a sampling step): a bool or a float is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{argument}={value!r} must be a positive integer")


def check_alpha(alpha: float) -> None:
    """SmoothQuant's migration strength."""
    if not 0 <= alpha <= 1:
        raise InvalidArgumentError(f"alpha={alpha} must lie in [0, 1]")


def check_threshold(threshold: float) -> None:
    """LLM.int8()'s outlier threshold."""
    if not threshold > 0:
        raise InvalidArgumentError(f"threshold={threshold} must be positive")


def source_format(x: Any) -> tuple[str, str]:
    """(dtype, kind) that a QuantizedWeight made from `x` records, as quantize_weights would."""
    if is_torch(x):
        name = str(x.dtype).removeprefix("torch.")
        return (name if name in FLOAT_DTYPES else "float32"), "torch"
    name = getattr(getattr(x, "dtype", None), "name", "float32")
    return (name if name in FLOAT_DTYPES else "float32"), "numpy"


def dequantize_exact(qw: QuantizedWeight, columns: np.ndarray) -> np.ndarray:
    """scales · (q − zp) + offsets of some columns as float64 [N, len(columns)]: the product exact,
    the offset (where the weights have them) one float64 rounding (docs/numerics.md reading 7)."""
    columns = np.asarray(columns)
    if qw.bits == 8:
        q = qw.data[:, columns].astype(np.float64)
    else:  # unpack only the bytes holding these columns, not the whole matrix
        pairs = columns // 2
        q = unpack_int4(qw.data[:, pairs], 2 * len(pairs))[:, 2 * np.arange(len(pairs)) + columns % 2]
        q = q.astype(np.float64)
    groups = columns // qw.group_size
    if qw.zero_points is not None:
        q -= qw.zero_points[:, groups]
    w = qw.scales[:, groups].astype(np.float64) * q
    if qw.offsets is not None:
        w += qw.offsets[:, groups]
    return w


def quantize_rows(x: np.ndarray, bits: int, symmetric: bool):
    """The contract's quantizer with one range per row of x [R, L], by the foundation's quantizer.

    Returns (q int8 [R, L] unpacked, scales float32 [R], zero_points int8 [R] or None).
    """
    R, L = x.shape
    x = np.asarray(x, dtype=np.float32)
    if bits == 4 and L % 2:
        # The canonical 4-bit format needs an even row. A zero column changes no range: absmax
        # ignores it and the asymmetric range is widened to hold zero anyway (§2).
        x = np.concatenate([x, np.zeros((R, 1), np.float32)], axis=1)
    qw = quantize_weights(x, bits=bits, group_size=None, symmetric=symmetric)
    q = unpack(qw.data, bits, x.shape[1])[:, :L]
    return q, qw.scales[:, 0], None if symmetric else qw.zero_points[:, 0]


def round_to_grid(x: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int) -> np.ndarray:
    """§2's second step with given scales and zero points (broadcast against x), in float32:
    q = clamp(rne(x / s), ±(2^(b−1) − 1)) symmetric, clamp(rne(x / s) + zp, qmin, qmax) otherwise."""
    qmax = (1 << (bits - 1)) - 1
    with np.errstate(over="ignore"):
        r = np.rint(np.asarray(x, dtype=np.float32) / np.asarray(scales, dtype=np.float32)).astype(np.float64)
    if zero_points is None:
        return np.clip(r, -qmax, qmax).astype(np.int8)
    return np.clip(r + zero_points, -qmax - 1, qmax).astype(np.int8)


def from_integers(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, group_size: int,
                  dtype: str = "float32", kind: str = "numpy") -> QuantizedWeight:
    """A QuantizedWeight in the canonical format from unpacked integers q [N, K]."""
    data = pack_int4(q) if bits == 4 else np.ascontiguousarray(q, dtype=np.int8)
    return QuantizedWeight(data, np.ascontiguousarray(scales, dtype=np.float32),
                           None if zero_points is None else np.ascontiguousarray(zero_points, dtype=np.int8),
                           bits, group_size, q.shape, dtype, kind)
