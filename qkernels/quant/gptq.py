"""GPTQ: Hessian-based column-by-column weight quantization with error feedback."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..tensors import is_torch
from ..weights import QuantizedWeight, quantize_weights
from ._common import (
    check_bits, check_group_size, float_array, from_integers, quantize_rows, round_to_grid, rows_of, source_format,
)


class HessianAccumulator:
    """H = 2/n · Σ xᵀx over every input row x [K] of a linear layer (n rows in all): the Hessian of
    the layer's squared output error ‖X·Ŵᵀ − X·Wᵀ‖² / n in each weight row, as GPTQ (Frantar et al.
    2022, arXiv:2210.17323, §3) defines it. The sum Σ xᵀx is accumulated in float32 by BLAS (a
    symmetric rank-k update per batch, as the reference implementation does in float32 too);
    hessian() scales it in float64."""

    def __init__(self, K: int):
        if K < 1:
            raise InvalidArgumentError(f"K={K} must be positive")
        self.K, self.count = K, 0
        self._sum = np.zeros((K, K), np.float32)

    def update(self, x: Any) -> None:
        """Add a batch of layer inputs x [..., K]."""
        self.add_rows(rows_of(x, "x", self.K, dtype=np.float32), torch_blas=is_torch(x))

    def add_rows(self, rows: np.ndarray, *, torch_blas: bool) -> None:
        """Add rows already checked and read (float32 [M, K]); torch_blas: sum them with torch's BLAS
        (for inputs that came from torch)."""
        self.count += rows.shape[0]
        if torch_blas:
            # Torch's BLAS for torch's inputs: NumPy's OpenBLAS threads, woken between torch's own in
            # a model's calibration pass, made GPTQ on SmolLM2 take 66 s instead of 48 (2 cores).
            torch = _torch()
            torch.from_numpy(self._sum).addmm_(torch.from_numpy(rows).T, torch.from_numpy(rows))
        else:
            self._sum += rows.T @ rows

    def hessian(self) -> np.ndarray:
        """float64 [K, K]."""
        if not self.count:
            raise InvalidArgumentError("HessianAccumulator has seen no data: call update() first")
        return (2.0 / self.count) * self._sum.astype(np.float64)


def _torch():
    try:
        import torch
    except ImportError:
        raise InvalidArgumentError("gptq needs torch (for its LAPACK and BLAS): install torch") from None
    return torch


@contextlib.contextmanager
def _one_torch_thread(torch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U upper triangular with Uᵀ·U = H⁻¹ (H symmetric positive definite), in float64, from one
    Cholesky factorisation: with J the order-reversing permutation and J·H·J = L·Lᵀ,
    H⁻¹ = J·L⁻ᵀ·L⁻¹·J = (J·L⁻¹·J)ᵀ·(J·L⁻¹·J), and J·L⁻¹·J is upper triangular with a positive
    diagonal: the factor, unique. By torch's LAPACK: NumPy's (OpenBLAS) was 2 to 10 times slower
    here beside torch's threads."""
    torch = _torch()
    reversed_h = torch.from_numpy(np.ascontiguousarray(h[::-1, ::-1]))
    lower = torch.linalg.cholesky_ex(reversed_h)
    if lower.info:
        raise InvalidArgumentError("the damped Hessian is not positive definite: raise damp")
    identity = torch.eye(h.shape[0], dtype=reversed_h.dtype)
    inverse = torch.linalg.solve_triangular(lower.L, identity, upper=False)
    return np.ascontiguousarray(inverse.numpy()[::-1, ::-1])


def gptq(weight: Any, hessian: Any, *, bits: int, group_size: int | None = None, symmetric: bool = True,
         act_order: bool = False, block_size: int = 32, damp: float = 0.01,
         static_groups: bool | None = None) -> QuantizedWeight:
    """GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
    for Generative Pre-trained Transformers", arXiv:2210.17323), Algorithm 1.

    Quantizes W[N, K] column by column, each column onto the contract's grid (docs/numerics.md §2,
    the scales and zero points of RTN), and spreads each column's rounding error over the columns
    not yet quantized through the inverse Hessian's upper Cholesky factor U (Uᵀ·U = H⁻¹):
    ``W[:, j:] −= (w_j − ŵ_j) / U[j, j] · U[j, j:]``, which minimises ‖X·Ŵᵀ − X·Wᵀ‖² one column at a
    time (the Optimal Brain Quantizer update). Updates are applied lazily, ``block_size`` columns at
    a time (same result, fewer memory passes).

    hessian: [K, K], e.g. from ``HessianAccumulator``; ``damp · mean(diag H)`` is added to its
    diagonal; columns with H[j, j] = 0 (inputs always zero) are set to zero.
    group_size: None for per-channel scales (from the whole original row), or G: groups of G columns,
        the last one shorter where G does not divide K (format v2), its scale from its own columns.
    act_order: quantize columns in order of decreasing H[j, j] (the paper's "desc_act").
    static_groups: compute every group's scale and zero point from the original W, in the original
        column order, before quantizing (RTN's scales). The canonical format has no g_idx (a column
        → group map), so with act_order and groups this is what makes the result representable: it
        is the default then, and act_order with static_groups=False is refused. Without act_order the
        default is the paper's dynamic groups: each group's scale comes from the error-updated weights
        when its first column is reached.
    Returns a QuantizedWeight in the canonical format: every backend runs it.
    """
    check_bits(bits)
    W = float_array(weight, "weight", ndim=2).copy()
    N, K = W.shape
    H = float_array(hessian, "hessian", ndim=2).copy()
    if H.shape != (K, K):
        raise InvalidArgumentError(f"hessian has shape {H.shape}; expected {(K, K)}")
    check_group_size(group_size)
    G = K if group_size is None else group_size
    if bits == 4 and K % 2:
        raise InvalidArgumentError(f"K={K} must be even for 4-bit weights (two per byte)")
    if block_size < 1:
        raise InvalidArgumentError(f"block_size={block_size} must be positive")
    if damp < 0:
        raise InvalidArgumentError(f"damp={damp} must not be negative")
    if static_groups is None:
        static_groups = act_order or G >= K
    if act_order and not static_groups and G < K:
        raise InvalidArgumentError("act_order with groups needs static_groups: the canonical format has no g_idx")

    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if static_groups:
        qw = quantize_weights(W.astype(np.float32), bits=bits, group_size=G, symmetric=symmetric)
        scales = qw.scales.copy()
        zero_points = None if symmetric else qw.zero_points.copy()
    else:
        groups = (N, -(-K // G))  # the last group may be shorter
        scales = np.empty(groups, np.float32)
        zero_points = None if symmetric else np.empty(groups, np.int8)
        # A group must lie within one lazy block, so that its first column sees all earlier updates
        # (blocks start at multiples of G; the last, shorter group ends where the last block does).
        block_size = G * max(1, block_size // G)

    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    W, H = W[:, order], H[np.ix_(order, order)]
    H[np.diag_indices(K)] += damp * np.mean(np.diag(H))
    torch = _torch()
    U = _upper_cholesky_of_inverse(H)
    group_of = order // G  # the group (in original order) of each column, in quantization order

    # Column j of W is row j of Wt, group g's scales row g of St: contiguous rows for the column loop.
    Wt, St = np.ascontiguousarray(W.T), np.ascontiguousarray(scales.T)
    Zt = None if zero_points is None else np.ascontiguousarray(zero_points.T)
    # The deferred block updates run on torch views of the same memory: its BLAS (MKL) was 12 times
    # faster than NumPy's OpenBLAS here, beside torch's threads. On one thread: between two updates
    # the column loop runs for about a millisecond, long enough for idle threads to sleep, and waking
    # them cost up to 5 ms per update on a busy machine, ten times the update itself.
    Wt_view, U_view = torch.from_numpy(Wt), torch.from_numpy(U)
    Qt = np.empty((K, N), np.int8)
    with _one_torch_thread(torch):
        for start in range(0, K, block_size):
            end = min(start + block_size, K)
            errors = np.empty((end - start, N))
            for j in range(start, end):
                g = group_of[j]
                if not static_groups and j % G == 0:
                    _, St[g], zp = quantize_rows(Wt[j:j + G].T, bits, symmetric)  # the last: fewer columns
                    if Zt is not None:
                        Zt[g] = zp
                zp = None if Zt is None else Zt[g]
                Qt[j] = round_to_grid(Wt[j], St[g], zp, bits)
                dequantized = St[g].astype(np.float64) * (Qt[j] - (0 if zp is None else zp.astype(np.float64)))
                errors[j - start] = (Wt[j] - dequantized) / U[j, j]
                Wt[j + 1:end] -= np.outer(U[j, j + 1:end], errors[j - start])
            Wt_view[end:].addmm_(U_view[start:end, end:].T, torch.from_numpy(errors), alpha=-1)

    q = np.empty((N, K), np.int8)
    q[:, order] = Qt.T
    dtype, kind = source_format(weight)
    return from_integers(q, St.T, None if Zt is None else Zt.T, bits, G, dtype, kind)
