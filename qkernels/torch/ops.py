"""The kernels as torch.library custom ops, with fake (meta) implementations for torch.compile.

    torch.ops.qkernels.matmul(x, data, scales, zero_points, bias, bits, group_size, mode, offsets=None)
    torch.ops.qkernels.matmul_outliers(x, data, scales, zero_points, bias, bits, group_size, threshold, offsets=None)
    torch.ops.qkernels.dequantize(data, scales, zero_points, bits, group_size, offsets=None, dtype="float32")
        -> W [N, K], rounded once to dtype (float32, float16 or bfloat16)

Each takes a weight as the canonical arrays (docs/numerics.md section 1: int8 data, float32 scales,
int8 zero points or None, float32 offsets or None; the group size need not divide K), offsets last
so that calls made before format v2 keep working; the matmuls run qkernels.matmul, so automatic
dispatch picks the fastest backend for the tensors (the cuda backend for CUDA tensors, on torch's
current stream; matmul_outliers and dequantize run on the CPU only). To a compiler they are opaque: a quantized
model traces with no graph break. An empty batch (no rows) gives an empty output, as nn.Linear does.

The dispatcher costs about 60 us per call in eager mode, more than a decode step's small layers
take, so QuantLinear calls the implementations (matmul_impl, matmul_outliers_impl) directly when
the op would add nothing: see use_impl.

A backend with its own weight layout packs the weights on first use and caches the pack in a
QuantizedWeight. The ops receive tensors, not QuantizedWeights, so a module registers a WeightHandle
for its buffers (register_weight); the ops find it by the address of the weight data and reuse its
QuantizedWeight while the buffers are unchanged: the same tensors, with the same in-place version
counters. A change through `.data` (a tensor with a version counter of its own) or through a NumPy
view is not seen: change the buffers in place under torch.no_grad(), or with load_state_dict.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

from .. import ops as _ops
from ..errors import InvalidArgumentError
from ..quant import llm_int8_matmul
from ..weights import QuantizedWeight, dequantize


class WeightHandle:
    """A module's QuantizedWeight, kept alive by the module and rebuilt when its buffers change."""

    def __init__(self):
        self.key = None
        self.qweight = None
        self.tensors = ()  # weak references to the tensors of `key`

    def holds(self, key, tensors) -> bool:
        """Whether qweight is of these tensors: the same key, and the very tensors of it (an address
        freed and allocated again, as a device allocator does on model.cpu() then .cuda(), holds
        other data under the same key)."""
        return key == self.key and all(
            (ref is None and t is None) or (ref is not None and ref() is t) for ref, t in zip(self.tensors, tensors)
        )


_handles: weakref.WeakValueDictionary[int, WeightHandle] = weakref.WeakValueDictionary()


def register_weight(data: torch.Tensor, handle: WeightHandle) -> None:
    """Lets the ops reuse `handle`'s QuantizedWeight (and its packs) for weights stored in `data`."""
    _handles[data.data_ptr()] = handle


def _key(tensors, bits: int, group_size: int):
    try:
        return (bits, group_size) + tuple(
            (t.data_ptr(), tuple(t.shape), t._version) if t is not None else None for t in tensors
        )
    except RuntimeError:  # inference tensors have no version counter: never cached
        return None


def _canonical(data, scales, zero_points, bits: int, group_size: int, offsets) -> QuantizedWeight:
    """A QuantizedWeight of these tensors. A QuantizedWeight holds host arrays, which a device backend
    packs into device memory: weights on a GPU (a QuantLinear moved with .cuda()) are copied to the
    host for that, once per registered module and change of its buffers."""
    host = [None if t is None else t.cpu() for t in (data, scales, zero_points, offsets)]
    shape = (data.shape[0], data.shape[1] * 8 // bits)
    return QuantizedWeight(host[0], host[1], host[2], bits, group_size, shape, kind="torch", offsets=host[3])


def quantized_weight(data, scales, zero_points, bits: int, group_size: int, offsets=None) -> QuantizedWeight:
    """The QuantizedWeight viewing these tensors (of host copies, for tensors on a GPU): the registered
    one while it is current, else new."""
    tensors = (data, scales, zero_points, offsets)
    key = _key(tensors, bits, group_size)
    handle = _handles.get(data.data_ptr())
    if handle is not None and key is not None:
        if not handle.holds(key, tensors):
            handle.qweight = _canonical(data, scales, zero_points, bits, group_size, offsets)
            handle.key, handle.tensors = key, tuple(None if t is None else weakref.ref(t) for t in tensors)
        return handle.qweight
    return _canonical(data, scales, zero_points, bits, group_size, offsets)


def use_impl(*tensors: torch.Tensor | None) -> bool:
    """Whether calling an op's implementation directly does exactly what the op would, for these
    tensor arguments: all plain tensors (no fake, functional or traced subclass), autograd with
    nothing to record, and nothing watching the call: no compiler, no torch.jit tracer, no
    vmap/grad transform, no torch-function or dispatch mode (default devices, profilers,
    make_fx). Torch internals this needs but lacks count as watching."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    try:
        C = torch._C
        if (C._is_torch_function_mode_enabled() or C._len_torch_dispatch_stack()
                or C._are_functorch_transforms_active()):
            return False
    except AttributeError:
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is torch.Tensor and not (grad and t.requires_grad)) for t in tensors)


def matmul_impl(x, data, scales, zero_points, bias, bits, group_size, mode, offsets=None):
    """torch.ops.qkernels.matmul without the dispatcher."""
    if x.device != data.device:  # another GPU too: the weights' pack is made for the data's device
        raise InvalidArgumentError(
            f"x is on {x.device} but the weights are on {data.device}: qkernels never moves activations between "
            "host and device or between devices; move the input or the module"
        )
    if x.numel() == 0:
        return _empty_output(x, data, bits)
    return _ops.matmul(x, quantized_weight(data, scales, zero_points, bits, group_size, offsets), mode, bias=bias)


@torch.library.custom_op("qkernels::matmul", mutates_args=())
def matmul(
    x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_size: int, mode: str, offsets: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y[..., N] = x[..., K] · Wᵀ (+ bias) in mode "a16" or "a8" (qkernels.matmul)."""
    return matmul_impl(x, data, scales, zero_points, bias, bits, group_size, mode, offsets)


def _empty_output(x: torch.Tensor, data: torch.Tensor, bits: int) -> torch.Tensor:
    """The output of no rows, in eager mode: a wrong K is the InvalidArgumentError a call with rows
    would raise (torch._check's RuntimeError is for tracing)."""
    K = data.shape[1] * 8 // bits
    if x.shape[-1] != K:
        raise InvalidArgumentError(f"x has shape {tuple(x.shape)}: its last dimension does not match K={K} of the weights")
    return _output_like(x, data, bits)


def _output_like(x: torch.Tensor, data: torch.Tensor, bits: int) -> torch.Tensor:
    """An uninitialised y [..., N] for x [..., K], after checking that K matches the weights."""
    torch._check(x.shape[-1] == data.shape[1] * 8 // bits,
                 lambda: f"x has {x.shape[-1]} input features; the weights have {data.shape[1] * 8 // bits}")
    return x.new_empty(x.shape[:-1] + (data.shape[0],))


@matmul.register_fake
def _(x, data, scales, zero_points, bias, bits, group_size, mode, offsets=None):
    return _output_like(x, data, bits)


def matmul_outliers_impl(x, data, scales, zero_points, bias, bits, group_size, threshold, offsets=None):
    """torch.ops.qkernels.matmul_outliers without the dispatcher."""
    if x.numel() == 0:
        return _empty_output(x, data, bits)
    qweight = quantized_weight(data, scales, zero_points, bits, group_size, offsets)
    return llm_int8_matmul(x, qweight, threshold=threshold, bias=bias)


@torch.library.custom_op("qkernels::matmul_outliers", mutates_args=())
def matmul_outliers(
    x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_size: int, threshold: float,
    offsets: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """LLM.int8() (qkernels.quant.llm_int8_matmul): the input features where some |x| ≥ threshold
    in float, the others in mode "a8"."""
    return matmul_outliers_impl(x, data, scales, zero_points, bias, bits, group_size, threshold, offsets)


@matmul_outliers.register_fake
def _(x, data, scales, zero_points, bias, bits, group_size, threshold, offsets=None):
    return _output_like(x, data, bits)


@torch.library.custom_op("qkernels::dequantize", mutates_args=())
def dequantize_weight(data: torch.Tensor, scales: torch.Tensor, zero_points: Optional[torch.Tensor], bits: int,
                      group_size: int, offsets: Optional[torch.Tensor] = None, dtype: str = "float32") -> torch.Tensor:
    """W [N, K] = scales · (q − zero point) + offsets, rounded once to dtype (qkernels.dequantize),
    on data's device (dequantized on the host)."""
    return dequantize(quantized_weight(data, scales, zero_points, bits, group_size, offsets), dtype).to(data.device)


@dequantize_weight.register_fake
def _(data, scales, zero_points, bits, group_size, offsets=None, dtype="float32"):
    return data.new_empty((data.shape[0], data.shape[1] * 8 // bits), dtype=getattr(torch, dtype))


def _save_weight(ctx, inputs, output):
    _x, data, scales, zero_points, _bias, bits, group_size, _mode_or_threshold, offsets = inputs
    ctx.save_for_backward(data, scales, zero_points, offsets)
    ctx.bits, ctx.group_size = bits, group_size


def _input_gradient(ctx, grad):
    data, scales, zero_points, offsets = ctx.saved_tensors
    w = torch.ops.qkernels.dequantize(data, scales, zero_points, ctx.bits, ctx.group_size, offsets)
    return (grad @ w.to(grad.device, grad.dtype),) + (None,) * 8


matmul.register_autograd(_input_gradient, setup_context=_save_weight)
matmul_outliers.register_autograd(_input_gradient, setup_context=_save_weight)
