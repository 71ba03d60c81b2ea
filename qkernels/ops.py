"""Quantized matrix multiplication: Y = X · Wᵀ (+ bias), in A16 or A8 mode (docs/numerics.md §3)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _checks, dispatch
from ._native import check, ffi, lib, new_struct
from ._tensors import dtype_code, empty_like_kind, float_buffer, host_tensor, is_torch, pointer_of
from .errors import InvalidArgumentError
from .weights import QuantizedWeight


def _bias_array(bias: Any, N: int):
    if bias is None:
        return None
    _checks.float_array(bias, "bias")  # an integer, complex or string bias is refused, never cast
    if is_torch(bias):
        bias = host_tensor(bias, "bias").float().contiguous()
    else:
        bias = np.ascontiguousarray(bias, dtype=np.float32)
    if tuple(bias.shape) != (N,):
        raise InvalidArgumentError(f"bias has shape {tuple(bias.shape)}; expected ({N},)")
    return bias


def _prepare(x: Any, qw: QuantizedWeight, mode: str, backend: str | None, kernel: str | None, bias: Any):
    """The checked input buffer, M, a new output, the bias array and the backend id of one call."""
    _checks.instance(qw, QuantizedWeight, "qw")
    if mode not in dispatch.MODES:
        raise InvalidArgumentError(f"mode={mode!r} must be 'a16' or 'a8'")
    backend = _checks.optional_name(backend, "backend", automatic=("auto",))
    kernel = _checks.optional_name(kernel, "kernel")
    buf = float_buffer(x, "x")
    if len(buf.shape) < 1 or buf.shape[-1] != qw.K:
        raise InvalidArgumentError(
            f"x has shape {buf.shape}: its last dimension does not match K={qw.K} of the weights"
        )
    M = math.prod(buf.shape[:-1])
    if M <= 0:
        raise InvalidArgumentError(f"x has shape {buf.shape}: M={M} rows; at least one is needed")
    _checks.size(M, "M")
    out = empty_like_kind(buf.kind, buf.shape[:-1] + (qw.N,), buf.dtype)
    # A use_backend block yields to an explicit kernel= argument (arguments outrank it).
    name = backend or (None if kernel else dispatch.forced_backend()) or "auto"
    backend_id = lib.QK_BACKEND_AUTO if name == "auto" else dispatch.backend_code(name)  # "auto": no C call
    return buf, M, out, _bias_array(bias, qw.N), backend_id


def _args(x: Any, qw: QuantizedWeight, mode: str, backend: str | None, kernel: str | None, bias: Any):
    """The output and the filled qk_matmul_args (plus what must stay alive with them)."""
    buf, M, out, bias, backend_id = _prepare(x, qw, mode, backend, kernel, bias)
    kernel_name = ffi.new("char[]", kernel.encode()) if kernel else ffi.NULL
    args = new_struct("qk_matmul_args")
    args.input, args.output = buf.pointer, pointer_of(out)
    args.bias = ffi.NULL if bias is None else ffi.cast("float *", pointer_of(bias))
    args.M, args.input_dtype, args.mode = M, dtype_code(buf.dtype), dispatch.MODES[mode]
    args.backend, args.kernel = backend_id, kernel_name
    return out, args, (buf, bias, kernel_name)


def _canonical_variant(kernel: str | None) -> bool:
    """Whether a forced kernel reads the canonical arrays although its backend packs (a canonical
    variant, made for stateless calls). Plans run packed weights, so such a kernel runs on the
    QuantizedWeight's own arrays through qk_matmul instead."""
    info = next((k for k in dispatch.kernels() if k.name == kernel), None) if kernel else None
    return bool(info and info.canonical and next(b.own_layout for b in dispatch.backends() if b.name == info.backend))


def select(x: Any, qw: QuantizedWeight, mode: str = "a16", *, backend: str | None = None, kernel: str | None = None):
    """The kernel that matmul would run for these arguments (a KernelInfo); runs nothing."""
    _, args, _alive = _args(x, qw, mode, backend, kernel, None)
    if _canonical_variant(kernel):
        info = new_struct("qk_kernel_info")
        check(lib.qk_select_kernel(qw.c_weights, args, info))
        return dispatch.kernel_info_from_c(info)
    plan = qw.plan(args.mode, args.input_dtype, args.backend, kernel)
    info = new_struct("qk_kernel_info")
    check(lib.qk_plan_kernel(plan, args.M, info))
    return dispatch.kernel_info_from_c(info)


def matmul(
    x: Any, qw: QuantizedWeight, mode: str = "a16", *, backend: str | None = None, kernel: str | None = None,
    bias: Any = None,
):
    """Y[..., N] = X[..., K] · Wᵀ (+ bias) with quantized weights.

    mode: "a16" (weight-only: float activations) or "a8" (dynamic per-row int8 activations).
    x: float32 / float16 / bfloat16 NumPy array or CPU torch tensor; Y has its kind and dtype.
    backend, kernel: force a backend or one registered kernel (see qkernels.dispatch);
    bias: [N], applied in float32 before the single rounding to Y's dtype.
    The first call for a mode and dtype makes a plan, cached in `qw`: the kernels selected once
    and the weights packed once per backend; every call after that is one C call. A forced
    canonical variant (a kernel for stateless calls) runs on qw's arrays, unpacked.
    """
    if _canonical_variant(kernel):
        out, args, _alive = _args(x, qw, mode, backend, kernel, bias)
        check(lib.qk_matmul(qw.c_weights, args))
        return out
    buf, M, out, bias, backend_id = _prepare(x, qw, mode, backend, kernel, bias)
    plan = qw.plan(dispatch.MODES[mode], dtype_code(buf.dtype), backend_id, kernel)
    bias_pointer = ffi.NULL if bias is None else ffi.cast("float *", pointer_of(bias))
    check(lib.qk_plan_run(plan, buf.pointer, pointer_of(out), bias_pointer, M, ffi.NULL))
    return out


def quantized_matmul(
    x: Any, weights: Any, scales: Any, zero_points: Any = None, *, bits: int, group_size: int, mode: str = "a16",
    backend: str | None = None, kernel: str | None = None, bias: Any = None,
):
    """The Python mirror of the C entry point quantizedMatMul, on canonical arrays, nothing cached.

    weights: int8 [N, K*bits/8]; scales: float32 [N, K/group_size]; zero_points: int8 or None.
    """
    bits = _checks.bits(bits)
    buf_shape = np.shape(x) if not is_torch(x) else tuple(x.shape)
    K = buf_shape[-1] if len(buf_shape) else 0
    weights_shape = np.shape(weights) if not is_torch(weights) else tuple(weights.shape)
    N = weights_shape[0] if weights_shape else 0
    if len(weights_shape) == 2 and len(buf_shape):
        K_weights = weights_shape[1] * 8 // bits
        if K != K_weights:  # the weights' shape is checked against K below; first, x against the weights
            raise InvalidArgumentError(
                f"x has shape {tuple(buf_shape)}: its last dimension does not match K={K_weights} of the weights "
                f"(shape {tuple(weights_shape)}, {bits}-bit)"
            )
    qw = QuantizedWeight(weights, scales, zero_points, bits, group_size, (N, K))
    out, args, _alive = _args(x, qw, mode, backend, kernel, bias)
    check(lib.qk_matmul(qw.c_weights, args))
    return out
