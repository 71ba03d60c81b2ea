"""Mixed precision: bits per layer from a sensitivity measure, under a size budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..ops import matmul
from ._common import float_array, rows_of
from .rtn import rtn


def layer_sensitivity(weight: Any, inputs: Any, *, bits_options: Sequence[int] = (4, 8), group_size: int | None = 128,
                      symmetric: bool = True, mode: str = "a16") -> dict[int, tuple[int, float]]:
    """How much one linear layer suffers from each bit width: for every b in ``bits_options``,
    (bytes of the canonical RTN weights, relative output error ‖Ŷ − Y‖²_F / ‖Y‖²_F) on the
    calibration inputs X [..., K], with Y = X·Wᵀ in float64 and Ŷ the kernel's output
    (``qkernels.matmul`` in ``mode``) with ``rtn(W, bits=b, group_size=group_size)``.

    The measure is the layer's own output error, as in the per-layer sensitivity of mixed-precision
    work such as HAWQ (Dong et al. 2019, arXiv:1905.03696), measured directly instead of estimated
    from the Hessian trace. The result is one entry of ``choose_bits``'s ``layers``.
    """
    w = float_array(weight, "weight", ndim=2, dtype=np.float32)
    x = rows_of(inputs, "inputs", w.shape[1]).astype(np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    norm = max(float(np.sum(exact**2)), np.finfo(np.float64).tiny)
    result = {}
    for bits in bits_options:
        qw = rtn(w, bits=bits, group_size=group_size, symmetric=symmetric)
        error = float(np.sum((matmul(x, qw, mode=mode).astype(np.float64) - exact) ** 2)) / norm
        result[bits] = (qw.nbytes, error)
    return result


def choose_bits(layers: Mapping[str, Mapping[int, tuple[int, float]]], budget_bytes: int) -> dict[str, int]:
    """Bits per layer minimising the total error under a size budget (a multiple-choice knapsack),
    solved greedily: start from every layer's smallest option, then repeatedly take the upgrade
    (one layer to a larger option with less error) that removes the most error per extra byte among
    those that still fit, until none fits.

    layers: name → {bits: (size_bytes, error)} (e.g. from ``layer_sensitivity``). Returns name → bits,
    never over the budget. The greedy choice is a heuristic (exact solutions are NP-hard): optimal
    when every layer has two options of equal sizes, but not in general, even on convex
    error-versus-size curves with the budget used up exactly — an upgrade that no longer fits is
    passed over for a less efficient one, and another set of upgrades can remove more error.
    Raises InvalidArgumentError when even the smallest options exceed the budget.
    """
    choice = {}
    for name, options in layers.items():
        if not options:
            raise InvalidArgumentError(f"layer {name!r} has no options")
        choice[name] = min(options, key=lambda b: (options[b][0], options[b][1]))
    used = sum(layers[name][b][0] for name, b in choice.items())
    if used > budget_bytes:
        raise InvalidArgumentError(f"the smallest options take {used} bytes, over budget_bytes={budget_bytes}")
    while True:
        best = None  # (error removed per byte, name, bits)
        for name, current in choice.items():
            size, error = layers[name][current]
            for bits, (new_size, new_error) in layers[name].items():
                extra = new_size - size
                if new_error < error and used + extra <= budget_bytes:
                    gain = (error - new_error) / extra if extra > 0 else np.inf
                    if best is None or gain > best[0]:
                        best = (gain, name, bits)
        if best is None:
            return choice
        _, name, bits = best
        used += layers[name][bits][0] - layers[name][choice[name]][0]
        choice[name] = bits
