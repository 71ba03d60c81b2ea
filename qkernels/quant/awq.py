"""AWQ: activation-aware per-input-channel scaling, searched on calibration data, before
round-to-nearest (Lin et al. 2023, arXiv:2306.00978)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ._common import check_bits, dequantize_exact, float_array, rows_of
from .gptq import HessianAccumulator
from .rtn import rtn


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
        self._second_moment.update(rows)

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
    if grid < 1:
        raise InvalidArgumentError(f"grid={grid} must be at least 1")
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
    w = np.concatenate([float_array(x, "weight", ndim=2) for x in weights], axis=0)  # q, k, v stacked: same K
    K = w.shape[1]
    salience = float_array(mean_abs, "mean_abs", ndim=1)
    h = float_array(hessian, "hessian", ndim=2)
    if salience.shape != (K,) or h.shape != (K, K):
        raise InvalidArgumentError(f"mean_abs {salience.shape} and hessian {h.shape} must be [{K}] and [{K}, {K}]")
    h32 = h.astype(np.float32)
    tried = alphas(grid)
    losses, candidates = np.empty(len(tried)), []
    for index, alpha in enumerate(tried):
        s = np.maximum(salience, 1e-4) ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        delta = (_round_trip(w * s, bits, group_size, symmetric) / s - w).astype(np.float32)
        losses[index] = float(np.einsum("nk,nk->", delta @ h32, delta, dtype=np.float64))
        candidates.append(s)
        if progress:
            progress(index + 1, len(tried))
    best = int(np.argmin(losses))
    return AWQScales(candidates[best], float(tried[best]), losses)


def _round_trip(w: np.ndarray, bits: int, group_size: int | None, symmetric: bool) -> np.ndarray:
    """Q(w) dequantized, float64 [N, K]."""
    q = rtn(w.astype(np.float32), bits=bits, group_size=group_size, symmetric=symmetric)
    return dequantize_exact(q, np.arange(w.shape[1]))
