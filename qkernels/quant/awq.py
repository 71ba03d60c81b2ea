"""AWQ: activation-aware per-input-channel scaling, searched on calibration data, before
round-to-nearest (Lin et al. 2023, arXiv:2306.00978)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, NonFiniteError
from ..tensors import is_torch
from ._common import check_bits, check_count, check_group_size, float_array, rows_of
from .gptq import HessianAccumulator


class ActivationStatistics:
    """What AWQ needs of a layer's inputs x [..., K]: the mean |x| of each input channel (the
    salience that sets the scales) and the second moment H = 2/n·Σ xᵀx (HessianAccumulator), in
    which the layer's output error ‖X·Ŵᵀ − X·Wᵀ‖²/n is Σ_rows Δ·H·Δᵀ/2 with Δ = Ŵ − W: so the
    search needs no stored activations. Inputs are read as float32 (a model's activations already
    are: no copy), |x| summed in float64."""

    def __init__(self, K: int):
        self.K = K
        self._second_moment = HessianAccumulator(K)
        self._abs_sum = np.zeros(K)
        self.count = 0

    def update(self, x: Any) -> None:
        rows = rows_of(x, "x", self.K, dtype=np.float32)
        self._abs_sum += np.abs(rows).sum(axis=0, dtype=np.float64)
        self.count += rows.shape[0]
        self._second_moment.add_rows(rows, torch_blas=is_torch(x))

    def mean_abs(self) -> np.ndarray:
        """float64 [K]."""
        if not self.count:
            raise InvalidArgumentError("ActivationStatistics has seen no data: call update() first")
        return self._abs_sum / self.count

    def hessian(self) -> np.ndarray:
        """float64 [K, K]."""
        return self._second_moment.hessian()


@dataclass(frozen=True)
class AWQScales:
    scales: np.ndarray  # float32 [K]: multiply the weights' columns, divide the inputs
    alpha: float  # the exponent chosen
    losses: np.ndarray  # the output error of each alpha tried (alphas(grid) order)


def alphas(grid: int) -> np.ndarray:
    """The exponents searched: 0, 1/grid, ..., (grid − 1)/grid (as the paper's and AutoAWQ's grid)."""
    check_count(grid, "grid")
    return np.arange(grid) / grid


def awq_scales(weights: Sequence[Any], mean_abs: Any, hessian: Any, *, bits: int = 4, group_size: int | None = None,
               symmetric: bool = True, grid: int = 20,
               progress: Callable[[int, int], None] | None = None) -> AWQScales:
    """The AWQ scales of the layers `weights` (each [N_i, K]) that read one input, whose channels
    have mean |x| `mean_abs` [K] and second moment `hessian` [K, K] (ActivationStatistics).

    For each α in alphas(grid): s = max(mean_abs, 1e-4)^α, normalised to s / √(max s · min s);
    every weight becomes Ŵ = Q(W·diag(s))·diag(s)⁻¹, Q = §1's round to nearest (bits, group_size,
    symmetric); the error is Σ_layers Σ_rows (Ŵ − W)·H·(Ŵ − W)ᵀ, the layers' output error on the
    calibration inputs. The α of least error wins (the first among equals); α = 0 is s = 1, plain
    RTN, so the result is never worse than RTN on the calibration data. Then quantize each layer
    as rtn(smooth_weight(W, s), ...) and divide its inputs by s (folded into the operation before).
    """
    check_bits(bits)
    check_group_size(group_size)
    tried = alphas(grid)
    if len(weights) == 0:
        raise InvalidArgumentError("weights is empty: give the layers that read the input")
    # Wᵀ [K, N] (q, k, v stacked: one K): a quantization group is a block of consecutive rows, so
    # that NumPy's elementwise work and reductions run along long contiguous rows.
    wt = np.ascontiguousarray(
        np.concatenate([float_array(x, "weight", ndim=2, dtype=np.float32) for x in weights], axis=0).T)
    K = wt.shape[0]
    salience = float_array(mean_abs, "mean_abs", ndim=1)
    h = float_array(hessian, "hessian", ndim=2, dtype=np.float32)
    if salience.shape != (K,) or h.shape != (K, K):
        raise InvalidArgumentError(f"mean_abs {salience.shape} and hessian {h.shape} must be [{K}] and [{K}, {K}]")
    losses, candidates, delta = np.empty(len(tried)), [], np.empty_like(wt)
    for index, alpha in enumerate(tried):
        s = np.maximum(salience, 1e-4) ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        w_hat = _round_trip(wt * s[:, None], bits, group_size, symmetric)  # Q(W·diag(s))ᵀ, exact
        w_hat /= s[:, None]
        np.subtract(w_hat, wt, out=delta, casting="same_kind")  # Δᵀ = (Ŵ − W)ᵀ in float64, kept as float32
        # Σ_rows Δ·H·Δᵀ = Σ Δᵀ ⊙ (Hᵀ·Δᵀ): one float32 BLAS product, summed in float64
        losses[index] = float(np.einsum("kn,kn->", h.T @ delta, delta, dtype=np.float64))
        candidates.append(s)
        if progress:
            progress(index + 1, len(tried))
    best = int(np.argmin(losses))
    return AWQScales(candidates[best], float(tried[best]), losses)


def _round_trip(wt: np.ndarray, bits: int, group_size: int | None, symmetric: bool) -> np.ndarray:
    """Q(W)ᵀ dequantized, float64 [K, N], exact (a float32 scale times a small integer), from
    wt = Wᵀ (float32 [K, N]). Q is the quantizer of docs/numerics.md §2 (the integers and scales
    rtn gives), here in NumPy float32 over every group at once, without packing."""
    K, N = wt.shape
    G = K if group_size is None else min(group_size, K)
    groups = -(-K // G)
    if groups * G != K:  # a shorter last group: zeros change no range (absmax; the widened min/max)
        wt = np.concatenate([wt, np.zeros((groups * G - K, N), np.float32)])
    blocks = wt.reshape(groups, G, N)
    qmax = (1 << (bits - 1)) - 1
    if symmetric:
        scale = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(qmax)
    else:
        low = np.minimum(blocks.min(axis=1, keepdims=True), np.float32(0))
        with np.errstate(over="ignore"):
            scale = (np.maximum(blocks.max(axis=1, keepdims=True), np.float32(0)) - low) / np.float32(2 * qmax + 1)
    if not np.isfinite(scale).all():  # the quantizer refuses these too
        raise NonFiniteError("a weight times its AWQ scale, or a group's range, overflows float32")
    scale[scale == 0] = 1  # a zero range, or a scale that underflows (reading 1)
    q = np.rint(blocks / scale)
    if symmetric:
        np.clip(q, -qmax, qmax, out=q)
    else:  # rne(x / s) + zp clamped (reading 3), then less zp
        zero_point = np.clip(np.rint(np.float32(-qmax - 1) - low / scale), -qmax - 1, qmax)
        q += zero_point
        np.clip(q, -qmax - 1, qmax, out=q)
        q -= zero_point
    return np.multiply(q, scale, dtype=np.float64).reshape(-1, N)[:K]
