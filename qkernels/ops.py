"""Quantized matrix multiplication: Y = X · Wᵀ (+ bias), in A16 or A8 mode (docs/numerics.md §3)."""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from . import _checks, _device, dispatch
from ._native import FLOAT_ARRAY, FLOAT_POINTER, VOID_POINTER, check, ffi, lib, new_struct
from ._tensors import (
    dtype_code, empty_like_kind, float_buffer, host_view, is_plain_container, is_torch, pointer_of, torch_module,
)
from .errors import InvalidArgumentError
from .weights import QuantizedWeight, environment_backend


def _bias_pointer(bias: Any, N: int):
    """The checked bias as float32 (or None) and a float * to it (NULL for none)."""
    if bias is None:
        return None, ffi.NULL
    _checks.float_array(bias, "bias")  # an integer, complex or string bias is refused, never cast
    if isinstance(bias, np.ndarray):
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        pointer = ffi.from_buffer(FLOAT_ARRAY, bias)
    else:
        bias = host_view(bias, "bias").float().contiguous()  # only its pointer is taken: no need to detach it
        pointer = ffi.cast(FLOAT_POINTER, bias.data_ptr())  # pointer_of and a cast would take 0.3 us more
    if bias.shape != (N,):
        raise InvalidArgumentError(f"bias has shape {tuple(bias.shape)}; expected ({N},)")
    return bias, pointer


def _check(x: Any, qw: QuantizedWeight, mode: str, backend: str | None, kernel: str | None):
    """The checked input buffer, M and the backend id of one call."""
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
    # A use_backend block yields to an explicit kernel= argument (arguments outrank it).
    name = backend or (None if kernel else dispatch.forced_backend()) or "auto"
    backend_id = lib.QK_BACKEND_AUTO if name == "auto" else dispatch.backend_code(name)  # "auto": no C call
    named = name if name != "auto" else _kernel_backend(kernel) if kernel else os.environ.get("QKERNELS_BACKEND")
    device = _device_backends().get(named)
    if device is not None and device.available:  # an unavailable one: the C library says why
        raise InvalidArgumentError(
            f"x is in host memory, but backend '{named}' runs on a device and takes device arrays: "
            "qkernels never copies x to the GPU; move it there first (x.cuda())"
        )
    return buf, M, backend_id


@functools.cache
def _kernels_of(count: int) -> dict[str, tuple[str, bool]]:
    """Per registered kernel name: its backend, and whether it is a canonical variant (reads the
    canonical arrays although its backend packs). Cached per registry size, since a program may
    register more: reading the registry takes 0.13 ms, which forced kernels paid on every call."""
    own_layout = {b.name: b.own_layout for b in dispatch.backends()}
    return {k.name: (k.backend, k.canonical and own_layout[k.backend]) for k in dispatch.kernels()}


def _kernel_backend(kernel: str) -> str | None:
    """The backend of a registered kernel, or None for an unknown name (the C library says so)."""
    entry = _kernels_of(lib.qk_kernel_count()).get(kernel)
    return entry[0] if entry else None


@functools.cache
def _device_backends_of(count: int) -> dict[str, dispatch.BackendInfo]:
    return {b.name: b for b in dispatch.device_backends()}


def _device_backends() -> dict[str, dispatch.BackendInfo]:
    """The device backends by name, best first (a program may register more at any time)."""
    return _device_backends_of(lib.qk_backend_count())


def _device_backend_id(backend: str | None, kernel: str | None) -> int:
    """The id of the device backend a call on device arrays runs: the one named (by backend=, a
    use_backend block or the forced kernel's backend), else the best available device backend."""
    name = backend or (None if kernel else dispatch.forced_backend())
    if kernel is not None and name is None:
        name = _kernel_backend(kernel)
    devices = _device_backends()
    if name is None or name == "auto":
        best = next(iter(devices.values()), None)
        if best is None:
            raise _device.device_backend_unavailable(None, "")
        chosen = next((b for b in devices.values() if b.available), best)
    elif name in devices:
        chosen = devices[name]
    else:
        dispatch.backend_code(name)  # an unknown name: the usual error
        raise InvalidArgumentError(
            f"x is in device memory, but backend '{name}' runs on the CPU: qkernels never copies x to the host"
        )
    if not chosen.available:
        raise _device.device_backend_unavailable(chosen.name, chosen.reason)
    return chosen.code


def _device_arrays(x: Any, qw: QuantizedWeight, mode: str, backend: str | None, kernel: str | None, bias: Any,
                   out: Any):
    """The checked device arrays of a call on device arrays: x, bias (or None), out (or None: to be
    allocated), M and the backend id. Host arrays among them raise InvalidArgumentError."""
    _checks.instance(qw, QuantizedWeight, "qw")
    if mode not in dispatch.MODES:
        raise InvalidArgumentError(f"mode={mode!r} must be 'a16' or 'a8'")
    backend = _checks.optional_name(backend, "backend", automatic=("auto",))
    kernel = _checks.optional_name(kernel, "kernel")
    if not _device.is_device_array(x):
        raise InvalidArgumentError("x is in host memory: out= is only for calls on device arrays")
    dx = _device.device_array(x, "x")
    if len(dx.shape) < 1 or dx.shape[-1] != qw.K:
        raise InvalidArgumentError(f"x has shape {dx.shape}: its last dimension does not match K={qw.K} of the weights")
    M = math.prod(dx.shape[:-1])
    if M <= 0:
        raise InvalidArgumentError(f"x has shape {dx.shape}: M={M} rows; at least one is needed")
    _checks.size(M, "M")
    out_shape = dx.shape[:-1] + (qw.N,)
    dbias = dout = None
    if bias is not None:
        if is_torch(bias):
            _checks.float_array(bias, "bias")  # an integer bias is refused, never cast
        if not _device.is_device_array(bias):
            raise InvalidArgumentError("bias is in host memory, but x is in device memory: move bias to x's device")
        dbias = _device.device_array(bias.float() if is_torch(bias) else bias, "bias", ("float32",))
        if dbias.shape != (qw.N,):
            raise InvalidArgumentError(f"bias has shape {dbias.shape}; expected ({qw.N},)")
    if out is not None:
        if not _device.is_device_array(out):
            raise InvalidArgumentError("out is in host memory, but x is in device memory: give a device array")
        if is_torch(out) and not out.is_contiguous():
            raise InvalidArgumentError("out is not contiguous")
        dout = _device.device_array(out, "out", (dx.dtype,))
        if dout.readonly:
            raise InvalidArgumentError("out is read-only (its __cuda_array_interface__ says so)")
        if dout.shape != out_shape:
            raise InvalidArgumentError(f"out has shape {dout.shape}; expected {out_shape}")
    return dx, dbias, dout, M, _device_backend_id(backend, kernel)


def _device_plan(qw: QuantizedWeight, dx, mode: str, backend_id: int, kernel: str | None):
    """qw's plan for a device backend on dx's device (packing there on first use)."""
    with _device.current_device(dx):
        return qw.plan(dispatch.MODES[mode], dtype_code(dx.dtype), backend_id, kernel, device=dx.device)


def _device_matmul(x: Any, qw: QuantizedWeight, mode: str, backend: str | None, kernel: str | None, bias: Any,
                   out: Any):
    """matmul on device arrays: a device backend, on x's stream, the result in out or a new tensor."""
    dx, dbias, dout, M, backend_id = _device_arrays(x, qw, mode, backend, kernel, bias, out)
    plan = _device_plan(qw, dx, mode, backend_id, kernel)
    with _device.current_device(dx):
        if dout is None:
            dout = _device.new_output(dx, dx.shape[:-1] + (qw.N,))
        bias_pointer = ffi.NULL if dbias is None else ffi.cast(FLOAT_POINTER, dbias.pointer)
        check(lib.qk_plan_run(plan, ffi.cast(VOID_POINTER, dx.pointer), ffi.cast(VOID_POINTER, dout.pointer),
                              bias_pointer, M, ffi.cast(VOID_POINTER, dx.stream)))
    return out if out is not None else dout.owner


def _args(x: Any, qw: QuantizedWeight, mode: str, backend: str | None, kernel: str | None, bias: Any):
    """The output and the filled qk_matmul_args (plus what must stay alive with them)."""
    buf, M, backend_id = _check(x, qw, mode, backend, kernel)
    out = empty_like_kind(buf.kind, buf.shape[:-1] + (qw.N,), buf.dtype)
    args = new_struct("qk_matmul_args")
    bias, args.bias = _bias_pointer(bias, qw.N)
    kernel_name = ffi.new("char[]", kernel.encode()) if kernel else ffi.NULL
    args.input, args.output = buf.pointer, pointer_of(out)
    args.M, args.input_dtype, args.mode = M, dtype_code(buf.dtype), dispatch.MODES[mode]
    args.backend, args.kernel = backend_id, kernel_name
    return out, args, (buf, bias, kernel_name)


def _canonical_variant(kernel: str | None) -> bool:
    """Whether a forced kernel reads the canonical arrays although its backend packs (a canonical
    variant, made for stateless calls). Plans run packed weights, so such a kernel runs on the
    QuantizedWeight's own arrays through qk_matmul instead."""
    return bool(kernel) and _kernels_of(lib.qk_kernel_count()).get(kernel, (None, False))[1]


def select(x: Any, qw: QuantizedWeight, mode: str = "a16", *, backend: str | None = None, kernel: str | None = None):
    """The kernel that matmul would run for these arguments (a KernelInfo); runs nothing (for
    device arrays it packs the weights for the device, as matmul's first call would)."""
    if _device.is_device_array(x):
        dx, _bias, _out, M, backend_id = _device_arrays(x, qw, mode, backend, kernel, None, None)
        info = new_struct("qk_kernel_info")
        check(lib.qk_plan_kernel(_device_plan(qw, dx, mode, backend_id, kernel), M, info))
        return dispatch.kernel_info_from_c(info)
    _, args, _alive = _args(x, qw, mode, backend, kernel, None)
    if _canonical_variant(kernel):
        info = new_struct("qk_kernel_info")
        check(lib.qk_select_kernel(qw.c_weights, args, info))
        return dispatch.kernel_info_from_c(info)
    plan = qw.plan(args.mode, args.input_dtype, args.backend, kernel)
    info = new_struct("qk_kernel_info")
    check(lib.qk_plan_kernel(plan, args.M, info))
    return dispatch.kernel_info_from_c(info)


class _PlannedCall:
    """What the checks of a first call established for every call of the same form: the same weights,
    mode, backend and kernel arguments, QKERNELS_BACKEND and use_backend block, and an input of the
    same type (exactly np.ndarray or torch.Tensor), dtype (in native byte order), shape and place (a
    dense tensor in host memory, not a negated view). Such a call is one qk_plan_run: its plan, M and output shape are known.
    What the form does not fix is checked on every call: the input's contiguity, the bias."""

    __slots__ = ("plan", "M", "N", "out_shape")

    def __init__(self, plan, M: int, N: int, out_shape: tuple[int, ...]):
        self.plan, self.M, self.N, self.out_shape = plan, M, N, out_shape

    def run(self, x: Any, bias: Any):
        bias, bias_pointer = _bias_pointer(bias, self.N)
        if type(x) is np.ndarray:
            x = np.ascontiguousarray(x)  # a copy only if x is not contiguous; its dtype is native already
            out = np.empty(self.out_shape, x.dtype)
            check(lib.qk_plan_run(self.plan, ffi.from_buffer(x), ffi.from_buffer(out), bias_pointer, self.M, ffi.NULL))
            return out
        x = x.contiguous()  # in host memory: the form's key says so (_form)
        # On the CPU whatever the default device; the shape unpacked, as torch parses that 0.4 us faster.
        out = torch_module().empty(*self.out_shape, dtype=x.dtype, device="cpu")
        x_pointer, out_pointer = ffi.cast(VOID_POINTER, x.data_ptr()), ffi.cast(VOID_POINTER, out.data_ptr())
        check(lib.qk_plan_run(self.plan, x_pointer, out_pointer, bias_pointer, self.M, ffi.NULL))
        return out


_FORMS_KEPT = 32  # call forms remembered per weight; more are forgotten (prefill shapes vary with the prompt)


def _form(x: Any, mode: str, backend: str | None, kernel: str | None):
    """The key of a call's form (see _PlannedCall). QKERNELS_BACKEND is read the cheap way: a call
    after the variable changed has another form."""
    # What run() reads as it is: a host array, or a dense host tensor that is not a negated view.
    host = type(x) is np.ndarray or (x.is_cpu and x.layout is torch_module().strided and not x.is_neg())
    return (type(x), x.dtype, x.shape, mode, backend, kernel, environment_backend(), dispatch.forced_backend(), host)


def _planned_call(x: Any, qw: QuantizedWeight, mode: str, backend: str | None, kernel: str | None):
    """A first call of its form: every check, the plan made or found; remembered for its form.
    Returns the call and x as it runs it (contiguous, in native byte order)."""
    buf, M, backend_id = _check(x, qw, mode, backend, kernel)
    plan = qw.plan(dispatch.MODES[mode], dtype_code(buf.dtype), backend_id, kernel)
    call = _PlannedCall(plan, M, qw.N, buf.shape[:-1] + (qw.N,))
    if is_plain_container(x) and buf.owner.dtype == x.dtype:  # no conversion...
        form = _form(x, mode, backend, kernel)
        if form[-1]:  # ...and run() reads x as it is
            if len(qw._forms) >= _FORMS_KEPT:
                qw._forms.clear()
            qw._forms[form] = call
    return call, buf.owner


def matmul(
    x: Any, qw: QuantizedWeight, mode: str = "a16", *, backend: str | None = None, kernel: str | None = None,
    bias: Any = None, out: Any = None,
):
    """Y[..., N] = X[..., K] · Wᵀ (+ bias) with quantized weights.

    mode: "a16" (weight-only: float activations) or "a8" (dynamic per-row int8 activations).
    x: float32 / float16 / bfloat16 NumPy array or CPU torch tensor; Y has its kind and dtype. Or x
    in device memory: a torch CUDA tensor, an object with __cuda_array_interface__ or a DLPack CUDA
    tensor; then a device backend (cuda) runs it on x's stream (torch's current stream), bias must be
    on the device too, and Y is `out` (a device array of shape [..., N], x's dtype) or else a new
    torch tensor on x's device. Host and device arrays never mix: nothing is copied between them
    but the weights' pack, once per device.
    backend, kernel: force a backend or one registered kernel (see qkernels.dispatch);
    bias: [N], applied in float32 before the single rounding to Y's dtype.
    The first call for a mode and dtype makes a plan, cached in `qw`: the kernels selected once
    and the weights packed once per backend. `qw` also remembers the form of each checked call
    (see _PlannedCall): a later call of the same form is one C call after the few checks its form
    does not settle (about 2.5 us in all at 64x64, M = 1). A forced canonical variant (a kernel for
    stateless calls) runs on qw's arrays, unpacked.
    """
    try:
        if out is not None:
            raise KeyError  # out= is for device arrays, which have no cached form
        call = qw._forms[_form(x, mode, backend, kernel)]
    except (AttributeError, KeyError, TypeError):  # a first call of its form, or one the checks refuse
        if out is not None or _device.is_device_array(x):
            return _device_matmul(x, qw, mode, backend, kernel, bias, out)
        if _canonical_variant(kernel):
            out, args, _alive = _args(x, qw, mode, backend, kernel, bias)
            check(lib.qk_matmul(qw.c_weights, args))
            return out
        call, x = _planned_call(x, qw, mode, backend, kernel)
    return call.run(x, bias)


def _shape_of(value: Any) -> tuple[int, ...]:
    """The shape of an array, a tensor or whatever NumPy reads as an array (np.shape takes 0.3 us)."""
    return tuple(value.shape) if isinstance(value, np.ndarray) or is_torch(value) else np.shape(value)


def quantized_matmul(
    x: Any, weights: Any, scales: Any, zero_points: Any = None, *, bits: int, group_size: int, mode: str = "a16",
    backend: str | None = None, kernel: str | None = None, bias: Any = None,
):
    """The Python mirror of the C entry point quantizedMatMul, on canonical arrays, nothing cached.

    weights: int8 [N, K*bits/8]; scales: float32 [N, K/group_size]; zero_points: int8 or None.
    """
    bits = _checks.bits(bits)
    on_device = _device.is_device_array(x)
    buf_shape = _device.device_array(x, "x").shape if on_device else _shape_of(x)
    weights_shape = _shape_of(weights)
    K = buf_shape[-1] if len(buf_shape) else 0
    N = weights_shape[0] if weights_shape else 0
    if len(weights_shape) == 2 and len(buf_shape):
        K_weights = weights_shape[1] * 8 // bits
        if K != K_weights:  # the weights' shape is checked against K below; first, x against the weights
            raise InvalidArgumentError(
                f"x has shape {tuple(buf_shape)}: its last dimension does not match K={K_weights} of the weights "
                f"(shape {tuple(weights_shape)}, {bits}-bit)"
            )
    qw = QuantizedWeight(weights, scales, zero_points, bits, group_size, (N, K))
    if on_device:  # packed for the device for this call only
        return _device_matmul(x, qw, mode, backend, kernel, bias, None)
    out, args, _alive = _args(x, qw, mode, backend, kernel, bias)
    check(lib.qk_matmul(qw.c_weights, args))
    return out
