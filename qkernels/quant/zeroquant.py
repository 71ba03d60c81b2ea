"""ZeroQuant: group-wise weights, token-wise dynamic int8 activations, optional layer-wise distillation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .. import activations
from ..errors import InvalidArgumentError
from ..ops import matmul
from ..weights import QuantizedWeight, dequantize
from ._common import check_bits, float_array, rows_of, source_format
from .rtn import rtn


def zeroquant(weight: Any, *, bits: int = 8, group_size: int = 128, symmetric: bool = True) -> QuantizedWeight:
    """ZeroQuant's weight quantization (Yao, Yazdani Aminabadi, Zhang, Wu, Li, He 2022, "ZeroQuant:
    Efficient and Affordable Post-Training Quantization for Large-Scale Transformers",
    arXiv:2206.01861, §4.1): group-wise RTN of W[N, K], ``group_size`` inputs per scale.

    Its activations are quantized token-wise and dynamically: one int8 scale per row (token),
    computed at run time. That is exactly ``qkernels.matmul(x, qw, mode="a8")``.
    """
    return rtn(weight, bits=bits, group_size=group_size, symmetric=symmetric)


def zeroquant_lkd(weight: Any, inputs: Any, *, bits: int, group_size: int, symmetric: bool = True,
                  steps: int = 200, lr: float | None = None, quantize_activations: bool = True) -> QuantizedWeight:
    """ZeroQuant's layer-by-layer knowledge distillation (LKD, arXiv:2206.01861 §4.2), for one
    linear layer: trains the float weights W' of a quantized student to minimise
    ``mean (Q_a(X)·Q_w(W')ᵀ − X·Wᵀ)²`` on the calibration inputs X [..., K] (the float layer is
    the teacher), then returns ``zeroquant(W')``.

    Q_w is the group-wise RTN quantizer, differentiated straight through (∂Q_w(W')/∂W' = I); Q_a
    is token-wise int8 (``quantize_activations``, as in mode "a8") or the identity. Adam, full batch,
    ``steps`` steps of size about ``lr`` (default: the mean RTN scale of W / 1000: larger steps flip
    many roundings at once and the loss rises). The weights of the step with the lowest loss are
    kept (the first step's are the RTN weights), and the deployed error (``qkernels.matmul`` in
    mode "a8" or "a16") of the result is compared with RTN's: the better is returned, so the result
    is never worse than RTN on the calibration inputs.

    Simplifications: the paper distils a whole transformer block at a time (its input taken from
    the quantized previous block); this distils one linear layer, on the inputs given. Needs torch.
    """
    try:
        import torch
    except ImportError:
        raise ImportError("zeroquant_lkd needs torch (pip install torch)") from None
    check_bits(bits)
    if steps < 0:
        raise InvalidArgumentError(f"steps={steps} must not be negative")
    w0 = float_array(weight, "weight", ndim=2, dtype=np.float32)
    x = rows_of(inputs, "inputs", w0.shape[1]).astype(np.float32)
    if not len(x):  # the loss would be a mean over nothing: NaN
        raise InvalidArgumentError(f"inputs has shape {tuple(np.shape(inputs))}: no rows to distil on")
    baseline = zeroquant(w0, bits=bits, group_size=group_size, symmetric=symmetric)
    if lr is None:
        lr = float(np.mean(baseline.scales)) / 1000
    mode = "a8" if quantize_activations else "a16"

    teacher_w = torch.from_numpy(w0)
    x_t = torch.from_numpy(x)
    teacher = x_t @ teacher_w.T
    student_x = torch.from_numpy(_token_int8(x)) if quantize_activations else x_t
    student_w = teacher_w.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([student_w], lr=lr)
    best_loss, best_w = float("inf"), w0
    for step in range(steps + 1):  # the last pass only scores the weights of the last step
        optimizer.zero_grad()
        loss = torch.mean((student_x @ _fake_quantize(student_w, bits, group_size, symmetric).T - teacher) ** 2)
        if loss.item() < best_loss:  # the loss of the weights before this step
            best_loss, best_w = loss.item(), student_w.detach().numpy().copy()
        if step < steps:
            loss.backward()
            optimizer.step()
    trained = zeroquant(best_w, bits=bits, group_size=group_size, symmetric=symmetric)

    exact = x.astype(np.float64) @ w0.T.astype(np.float64)

    def deployed_error(qw):
        return float(np.sum((matmul(x, qw, mode=mode).astype(np.float64) - exact) ** 2))

    best = trained if deployed_error(trained) <= deployed_error(baseline) else baseline
    dtype, kind = source_format(weight)  # both were made from float32 NumPy copies of the weights
    return replace(best, dtype=dtype, kind=kind)


def _fake_quantize(w, bits: int, group_size: int, symmetric: bool):
    """Q_w(w) forward (the deployed quantizer: ``zeroquant`` then ``dequantize``), with a
    straight-through gradient."""
    deployed = dequantize(zeroquant(w.detach(), bits=bits, group_size=group_size, symmetric=symmetric), "float32")
    return w + (deployed - w).detach()


def _token_int8(x: np.ndarray) -> np.ndarray:
    """Token-wise dynamic int8, dequantized: qx · sx of the A8 quantizer (docs/numerics.md §3)."""
    qx, sx, _ = activations.quantize_activations(x)
    return qx.astype(np.float32) * sx[:, None]
