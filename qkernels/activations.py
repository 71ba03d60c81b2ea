"""The A8 activation quantizer of docs/numerics.md §3 (mode "a8"), in NumPy: what the kernels do
to each row of X before their integer products, for code that needs the same integers (a
quantization-aware student, say).

    qx, sx, finite = qkernels.activations.quantize_activations(x)   # x ≈ qx · sx[..., None]

(qkernels.reference, the test-suite's oracle, has its own implementation on purpose.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .tensors import float_format, host_tensor, is_torch

__all__ = ["quantize_activations"]


def quantize_activations(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dynamic per-row int8 quantization of x [..., K] (float32, float16 or bfloat16; NumPy array
    or CPU torch tensor), in float32 steps, each correctly rounded:
    ``amax = max|x|``, ``inv = 127 / amax``, ``qx = clamp(rne(x · inv), ±127)``, ``sx = amax / 127``.

    Returns NumPy (qx int8 [..., K], sx float32 [...], finite bool [...]). A zero row gives qx = 0,
    sx = 0; so does a row holding NaN or ±Inf, which has finite False (its matmul outputs are NaN).
    A row whose amax is so small that 127 / amax overflows has every non-zero element at ±127
    (reading 4).
    """
    _, _, shape = float_format(x, "x")
    if len(shape) < 1 or shape[-1] < 1:
        raise InvalidArgumentError(f"x has shape {shape}: it needs a last dimension K of at least 1")
    if is_torch(x):
        x = host_tensor(x, "x").float().numpy()
    xf = np.asarray(x, dtype=np.float32)  # exact: float16 and bfloat16 are subsets of float32
    rows = xf.reshape(-1, shape[-1])
    finite = np.isfinite(rows).all(axis=1)
    rows = np.where(finite[:, None], rows, np.float32(0))  # a non-finite row is quantized as zeros
    amax = np.max(np.abs(rows), axis=1)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = np.divide(np.float32(127), amax, dtype=np.float32)  # +Inf for a zero or tiny amax
        scaled = np.multiply(rows, inv[:, None], dtype=np.float32)  # 0 · Inf = NaN: quantized to 0
    qx = np.clip(np.rint(np.nan_to_num(scaled, nan=0.0, posinf=127.0, neginf=-127.0)), -127, 127).astype(np.int8)
    sx = np.divide(amax, np.float32(127), dtype=np.float32)
    return qx.reshape(shape), sx.reshape(shape[:-1]), finite.reshape(shape[:-1])
