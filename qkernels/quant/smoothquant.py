"""SmoothQuant: migrate activation outliers into the weights with per-channel smoothing factors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..activations import quantize_activations
from ..errors import InvalidArgumentError
from ..weights import QuantizedWeight, dequantize
from ._common import check_alpha, float_array
from .rtn import rtn


def smoothquant_scales(act_absmax: Any, weight: Any, alpha: float = 0.5) -> np.ndarray:
    """SmoothQuant's smoothing factors (Xiao, Lin, Seznec, Wu, Demouth, Han 2022, "SmoothQuant:
    Accurate and Efficient Post-Training Quantization for Large Language Models", arXiv:2211.10438,
    eq. 4): ``s_j = max|X_j|^α / max|W_j|^(1−α)`` for each input channel j.

    act_absmax: [K], the per-channel max|X_j| over calibration data (``AbsMaxObserver``).
    weight: W[N, K], or a sequence of weights that all read the same input (e.g. the q, k and v
    projections after one LayerNorm): max|W_j| is then taken over all their rows.
    alpha: the migration strength in [0, 1]. A channel whose activation or weight maximum is 0 gets
    s_j = 1 (nothing to balance). Returns float32 [K].
    """
    check_alpha(alpha)
    act = float_array(act_absmax, "act_absmax", ndim=1)
    weights = list(weight) if isinstance(weight, Sequence) else [weight]
    if not weights:
        raise InvalidArgumentError("weight is an empty sequence")
    arrays = [float_array(w, "weight", ndim=2) for w in weights]
    if any(w.shape[1] != act.shape[0] for w in arrays):
        raise InvalidArgumentError(f"every weight must have K={act.shape[0]} columns (act_absmax has {act.shape[0]})")
    if (act < 0).any():
        raise InvalidArgumentError("act_absmax holds negative values")
    w_absmax = np.max([np.abs(w).max(axis=0) for w in arrays], axis=0)
    usable = (act > 0) & (w_absmax > 0)
    s = np.ones_like(act)
    s[usable] = act[usable] ** alpha / w_absmax[usable] ** (1 - alpha)
    return s.astype(np.float32)


def smooth_weight(weight: Any, s: Any) -> np.ndarray:
    """W·diag(s): column j of W[N, K] times s_j, float32 [N, K]. Paired with X·diag(s)⁻¹ it leaves
    the product unchanged: (X·diag(s)⁻¹)·(W·diag(s))ᵀ = X·Wᵀ."""
    w = float_array(weight, "weight", ndim=2)
    return (w * _scales(s, w.shape[1])).astype(np.float32)


def smooth_activations(x: Any, s: Any) -> np.ndarray:
    """X·diag(s)⁻¹: x [..., K] with channel j divided by s_j, float32 (the run-time alternative to
    folding s into the previous operation)."""
    a = float_array(x, "x")
    return (a / _scales(s, a.shape[-1])).astype(np.float32)


def fold_into_norm(norm_weight: Any, norm_bias: Any, s: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Fold diag(s)⁻¹ into the LayerNorm (or RMSNorm, bias None) that produces X: its output
    γ ⊙ x̂ + β becomes (γ ⊙ x̂ + β) / s, i.e. γ/s and β/s. Returns float32 (γ/s, β/s or None)."""
    gamma = float_array(norm_weight, "norm_weight", ndim=1)
    s = _scales(s, gamma.shape[0])
    beta = None if norm_bias is None else (float_array(norm_bias, "norm_bias", ndim=1) / s).astype(np.float32)
    return (gamma / s).astype(np.float32), beta


def smoothquant(weight: Any, act_absmax: Any, *, alpha: float = 0.5, bits: int = 8,
                per_tensor: bool = False) -> tuple[QuantizedWeight, np.ndarray]:
    """W8A8 SmoothQuant for one linear layer: s from ``smoothquant_scales``, then RTN of W·diag(s),
    per output channel (default: the kernels take per-channel scales at no cost) or per tensor (the
    paper's weights). Returns (quantized smoothed weight, s). Run it with inputs divided by s (folded
    into the previous operation, or ``smooth_activations``) and ``qkernels.matmul(..., mode="a8")``:
    dynamic per-token int8 activations (the paper's per-token setting; the A8 kernels have no static
    activation scales)."""
    s = smoothquant_scales(act_absmax, weight, alpha)
    return rtn(smooth_weight(weight, s), bits=bits, per_tensor=per_tensor), s


def search_smoothing(rows: Any, act_absmax: Any, weights: Any, alphas: Sequence[float], *,
                     activation: str = "token", per_tensor: bool = False, symmetric: bool = True,
                     bits: int = 8) -> tuple[np.ndarray, float | None]:
    """The smoothing that quantizes best on calibration data: for each candidate (no smoothing,
    s = 1, and ``smoothquant_scales(act_absmax, weights, α)`` for each α in `alphas`), the layers
    reading the input are quantized as deployed and scored by their output error on the calibration
    rows, Σ_layers ‖Q(X·diag(s)⁻¹)·Q(W·diag(s))ᵀ − X·Wᵀ‖²; the candidate with the least error wins.
    This is SmoothQuant's per-model choice of the migration strength (arXiv:2211.10438 §4: α = 0.5
    for OPT and BLOOM, 0.75–0.85 for GLM-130B and Llama) made per input by search, as AWQ searches
    its scales (arXiv:2306.00978 §3.2).

    rows: calibration inputs [R, K] (e.g. ``AbsMaxSampleObserver.rows()``); act_absmax: [K], over
    all calibration inputs; weights: W [N, K] or a sequence of them (q, k, v after one norm).
    activation: "token" (dynamic per-row int8, the A8 kernels' quantizer) or "tensor" (static per
    tensor, the clip max|X·diag(s)⁻¹| over calibration data); weights by ``rtn`` (per channel, or
    per tensor; symmetric, or with zero points for symmetric=False: as they will be deployed).
    Returns (s float32 [K], the winning α, or None for no smoothing)."""
    if activation not in ("token", "tensor"):
        raise InvalidArgumentError(f"activation={activation!r} must be 'token' or 'tensor'")
    if not alphas:
        raise InvalidArgumentError("alphas is empty")
    act = float_array(act_absmax, "act_absmax", ndim=1)
    x = float_array(rows, "rows", ndim=2, dtype=np.float32)
    arrays = [float_array(w, "weight", ndim=2, dtype=np.float32)
              for w in (list(weights) if isinstance(weights, Sequence) else [weights])]
    if x.shape[1] != act.shape[0]:
        raise InvalidArgumentError(f"rows have {x.shape[1]} columns; act_absmax has {act.shape[0]}")
    exact = [x @ w.T for w in arrays]
    candidates = [(np.ones_like(act, dtype=np.float32), None)]
    candidates += [(smoothquant_scales(act, arrays, alpha), alpha) for alpha in alphas]

    def error(s: np.ndarray) -> float:
        xs = x / s
        if activation == "token":
            q, step, _ = quantize_activations(xs)
            xq = q.astype(np.float32) * step[:, None]
        else:
            step = np.float32((act / s).max() / 127) or np.float32(1)  # a zero range: step 1 (§2)
            xq = np.clip(np.rint(xs / step), -127, 127).astype(np.float32) * step
        return sum(float(np.sum((xq @ dequantize(rtn(smooth_weight(w, s), bits=bits, per_tensor=per_tensor,
                                                     symmetric=symmetric), "float32").T - y) ** 2))
                   for w, y in zip(arrays, exact))

    return min(candidates, key=lambda candidate: error(candidate[0]))


def _scales(s: Any, K: int) -> np.ndarray:
    s = float_array(s, "s", ndim=1)
    if s.shape[0] != K:
        raise InvalidArgumentError(f"s has {s.shape[0]} factors; expected K={K}")
    if (s <= 0).any():
        raise InvalidArgumentError("s must be positive")
    return s
