"""KV-cache quantization: keys per channel, values per token (KVQuant / KIVI style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ._common import check_bits, float_array, quantize_rows


@dataclass(frozen=True, eq=False)
class QuantizedKV:
    """A quantized KV cache for keys and values [..., T, D] (e.g. [batch, heads, tokens, head_dim]).

    keys, values:  int8 [..., T, D], one value per byte (4-bit values in [-8, 7], unpacked).
    key_scales:    float32 [..., 1, D]: one scale per channel (over the T tokens) of each head.
    value_scales:  float32 [..., T, 1]: one scale per token.
    *_zero_points: int8, shaped as the scales, or None (symmetric).
    Element error: |x − x̂| ≤ scale · (1/2 + 2^-16) in exact arithmetic (no value is clipped: the
    ranges are the data's own), plus the float32 rounding of x̂ (2^-24 · |x̂|).
    """

    keys: np.ndarray
    key_scales: np.ndarray
    key_zero_points: np.ndarray | None
    values: np.ndarray
    value_scales: np.ndarray
    value_zero_points: np.ndarray | None
    bits: int

    @property
    def nbytes(self) -> int:
        """Bytes as stored here (4-bit values take a byte each; packed they would take half)."""
        arrays = (self.keys, self.key_scales, self.key_zero_points, self.values, self.value_scales,
                  self.value_zero_points)
        return sum(a.nbytes for a in arrays if a is not None)


def quantize_kv(keys: Any, values: Any, *, bits: int = 8, symmetric: bool = False) -> QuantizedKV:
    """Quantize a KV cache: keys per channel, values per token (the "SimQuant" of LLMEasyQuant,
    following KVQuant: Hooper et al. 2024, arXiv:2401.18079, §3.1, and KIVI: Liu et al. 2024,
    arXiv:2402.02750, whose analysis motivates the split: key outliers sit in fixed channels,
    values have none and are consumed per token by attention).

    keys, values: float [..., T, D], same shape. Each key channel (one per head and batch element)
    gets its own range over the T tokens, each value token its own range over the D channels, by
    the contract's quantizer (docs/numerics.md §2): absmax (symmetric) or zero point (default,
    asymmetric: keys have per-channel offsets). bits: 8 or 4.

    Simplifications: uniform grids (KVQuant's are non-uniform), no dense-and-sparse outlier split,
    keys quantized as given (KVQuant quantizes them before RoPE), and the ranges are those of the T
    tokens given: appending tokens means quantizing the new block on its own (or re-quantizing).
    """
    check_bits(bits)
    k = float_array(keys, "keys", dtype=np.float32)
    v = float_array(values, "values", dtype=np.float32)
    if k.ndim < 2 or k.shape != v.shape or 0 in k.shape:
        raise InvalidArgumentError(f"keys {k.shape} and values {v.shape} must have the same non-empty shape [..., T, D]")
    T, D = k.shape[-2:]
    channels = np.swapaxes(k, -1, -2)  # [..., D, T]: one row per key channel
    qk, sk, zk = quantize_rows(channels.reshape(-1, T), bits, symmetric)
    qv, sv, zv = quantize_rows(v.reshape(-1, D), bits, symmetric)
    key_shape, value_shape = k.shape[:-2] + (1, D), k.shape[:-1] + (1,)
    return QuantizedKV(
        keys=np.ascontiguousarray(np.swapaxes(qk.reshape(channels.shape), -1, -2)),
        key_scales=sk.reshape(key_shape),
        key_zero_points=None if zk is None else zk.reshape(key_shape),
        values=qv.reshape(v.shape),
        value_scales=sv.reshape(value_shape),
        value_zero_points=None if zv is None else zv.reshape(value_shape),
        bits=bits,
    )


def _dequantize(q, scales, zero_points) -> np.ndarray:
    centered = q.astype(np.float64) - (0 if zero_points is None else zero_points.astype(np.float64))
    return (centered * scales.astype(np.float64)).astype(np.float32)


def dequantize_keys(kv: QuantizedKV) -> np.ndarray:
    """Keys [..., T, D] as float32: key_scales · (keys − key_zero_points), rounded once. What an
    attention implementation calls before Q·Kᵀ."""
    return _dequantize(kv.keys, kv.key_scales, kv.key_zero_points)


def dequantize_values(kv: QuantizedKV) -> np.ndarray:
    """Values [..., T, D] as float32: value_scales · (values − value_zero_points), rounded once.
    What an attention implementation calls before softmax(Q·Kᵀ)·V."""
    return _dequantize(kv.values, kv.value_scales, kv.value_zero_points)
