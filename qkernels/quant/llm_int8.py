"""LLM.int8(): int8 matmul with a float path for outlier activation columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops import matmul
from ..tensors import float_format
from ..weights import QuantizedWeight
from ._common import check_threshold, dequantize_exact, rows_of


def outlier_columns(x: Any, threshold: float = 6.0) -> np.ndarray:
    """Indices (int64, ascending) of the input columns k of x [..., K] where any row has
    |x[..., k]| ≥ threshold: LLM.int8()'s outlier feature dimensions."""
    return _outliers(rows_of(x, "x"), threshold)


def _outliers(rows: np.ndarray, threshold: float) -> np.ndarray:
    check_threshold(threshold)
    return np.flatnonzero((np.abs(rows) >= threshold).any(axis=0))


def llm_int8_matmul(x: Any, qweight: QuantizedWeight, *, threshold: float = 6.0, bias: Any = None,
                    backend: str | None = None, kernel: str | None = None):
    """Y = X·Wᵀ (+ bias) by LLM.int8()'s mixed-precision decomposition (Dettmers, Lewis, Belkada,
    Zettlemoyer 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale",
    arXiv:2208.07339, §3.2): Y = X_O·W_Oᵀ + X_R·W_Rᵀ.

    O = ``outlier_columns(x, threshold)`` (columns with any |x| ≥ threshold, over the whole batch).
    X_R·W_Rᵀ: x with the O columns zeroed through ``qkernels.matmul(..., mode="a8")`` (per-row
    dynamic int8 activations — the paper's vector-wise quantization — and whatever backend runs
    it, with `bias`; given as float32, so that its output is float32 whatever x's dtype).
    X_O·W_Oᵀ: exactly, in float64, against the dequantized weight columns W_O = scales·(q − zp) (the
    paper keeps W_O in fp16; here W is stored once, quantized, and its O columns are dequantized, as
    bitsandbytes does). The sum is rounded to x's dtype.

    qweight: the paper's is 8-bit per-channel (``rtn(w, bits=8)``); any QuantizedWeight works.
    x: [..., K] float32/float16/bfloat16 NumPy array or CPU torch tensor; Y has its kind, dtype and
    leading shape. Without outlier columns this is ``matmul(x, qweight, mode="a8", bias=bias)``.
    """
    fmt = float_format(x, "x")  # the dtypes and containers matmul accepts
    rows = rows_of(x, "x", qweight.K)
    outliers = _outliers(rows, threshold)
    if outliers.size == 0:
        return matmul(x, qweight, mode="a8", backend=backend, kernel=kernel, bias=bias)
    regular = rows.astype(np.float32)  # exact: x's dtype is a subset of float32
    regular[:, outliers] = 0
    y = matmul(regular, qweight, mode="a8", backend=backend, kernel=kernel, bias=bias).astype(np.float64)
    y += rows[:, outliers] @ dequantize_exact(qweight, outliers).T
    y = y.reshape(fmt.shape[:-1] + (qweight.N,))
    if fmt.kind == "torch":
        return x.new_tensor(y)  # x.dtype, on the CPU
    return y.astype(x.dtype)
