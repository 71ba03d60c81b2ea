"""Arrays in GPU memory: torch CUDA tensors, objects with ``__cuda_array_interface__`` (CuPy, Numba,
...) and DLPack CUDA tensors, as the device backends (cuda) take them.

Nothing here moves data between host and device: a host array stays on the host and a device array
on its device, and a call that mixes them fails with InvalidArgumentError naming the argument. The
one transfer qkernels makes is the weights' pack, once per weight and device (QuantizedWeight).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from ._tensors import dense_values, is_torch, torch_module
from .errors import BackendUnavailableError, DtypeError, InvalidArgumentError

# __cuda_array_interface__ typestrs of the float dtypes (bfloat16 has none: pass a torch tensor).
_TYPESTRS = {"<f4": "float32", "<f2": "float16"}
_ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_DLPACK_CUDA = 2  # DLDeviceType kDLCUDA
# __cuda_array_interface__ stream values with a meaning of their own (version 3): the legacy and the
# per-thread default stream; any other integer is a cudaStream_t.
_LEGACY_DEFAULT_STREAM, _PER_THREAD_DEFAULT_STREAM = 1, 2


@dataclass
class DeviceArray:
    """A C-contiguous array in device memory, kept alive by `owner` while this object lives."""

    owner: Any
    pointer: int
    dtype: str  # float32, float16 or bfloat16
    shape: tuple[int, ...]
    device: int | None  # the CUDA device index; None when neither the array nor torch says (the current one)
    stream: int  # the cudaStream_t to run on (0: the legacy default stream)
    kind: str  # "torch" or "cuda_array_interface"
    readonly: bool = False  # the exporter says so (__cuda_array_interface__'s data flag): never an output


def is_device_array(x: Any) -> bool:
    """Whether x lives in device memory: a torch tensor not on the CPU, or an object exporting
    __cuda_array_interface__ or a DLPack CUDA tensor."""
    if is_torch(x):
        return not x.is_cpu
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dlpack_device = getattr(x, "__dlpack_device__", None)
    return dlpack_device is not None and dlpack_device()[0] == _DLPACK_CUDA


def _torch_array(x: Any, argument: str, dtypes: tuple[str, ...]) -> DeviceArray:
    if not x.is_cuda:
        raise InvalidArgumentError(f"{argument} is on {x.device}; qkernels runs on the CPU and on CUDA devices")
    dtype = str(x.dtype).removeprefix("torch.")
    if dtype not in dtypes:
        raise DtypeError(f"{argument} has dtype {x.dtype}; expected {' or '.join(dtypes)}")
    x = dense_values(x.detach(), argument).contiguous()  # a copy on the device only for a negated or non-contiguous x
    stream = torch_module().cuda.current_stream(x.device).cuda_stream
    return DeviceArray(x, x.data_ptr(), dtype, tuple(x.shape), x.device.index, stream, "torch")


def _interface_array(x: Any, argument: str, dtypes: tuple[str, ...]) -> DeviceArray:
    interface = x.__cuda_array_interface__
    try:
        shape, typestr, (pointer, readonly) = tuple(interface["shape"]), interface["typestr"], interface["data"]
    except (KeyError, TypeError, ValueError):
        raise InvalidArgumentError(f"{argument}.__cuda_array_interface__ lacks shape, typestr or data") from None
    dtype = _TYPESTRS.get(typestr)
    if dtype not in dtypes:
        raise DtypeError(f"{argument} has typestr {typestr!r}; expected {', '.join(k for k, v in _TYPESTRS.items() if v in dtypes)}")
    if interface.get("mask") is not None:
        raise InvalidArgumentError(f"{argument} is a masked array")
    strides = interface.get("strides")
    contiguous = [_ITEM_BYTES[dtype] * math.prod(shape[i + 1 :]) for i in range(len(shape))]
    if strides is not None and any(s != c for s, c, n in zip(strides, contiguous, shape) if n > 1):
        raise InvalidArgumentError(f"{argument} is not C-contiguous (strides {tuple(strides)})")
    if pointer == 0 and math.prod(shape) > 0:
        raise InvalidArgumentError(f"{argument}.__cuda_array_interface__ has a NULL data pointer")
    stream = interface.get("stream")
    if stream == 0:
        raise InvalidArgumentError(f"{argument}.__cuda_array_interface__ has stream 0, which version 3 forbids")
    # Work goes on the producer's stream, so it is ordered after whatever the producer queued.
    if stream is None or stream == _LEGACY_DEFAULT_STREAM:
        stream = 0
    return DeviceArray(x, int(pointer), dtype, shape, _current_device_index(), int(stream), "cuda_array_interface",
                       bool(readonly))


def _current_device_index() -> int | None:
    """The current CUDA device by torch, when torch (imported) has CUDA: the interface names no device,
    and the weights' pack is cached per device index. Without torch it is None, one pack for every
    device: the cuda backend then refuses (InvalidArgumentError naming both devices) a call whose
    current device is not the one the weights were packed on, rather than read another GPU's memory."""
    torch = torch_module()
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.current_device()


def device_array(x: Any, argument: str, dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")) -> DeviceArray:
    """x (a device array: see is_device_array) as a checked DeviceArray of one of `dtypes`."""
    if is_torch(x):
        return _torch_array(x, argument, dtypes)
    if hasattr(x, "__cuda_array_interface__"):
        return _interface_array(x, argument, dtypes)
    return _torch_array(_cuda_torch(argument).from_dlpack(x), argument, dtypes)  # torch reads the capsule


def _cuda_torch(argument: str):
    """torch, for reading a DLPack CUDA tensor; InvalidArgumentError without a torch that has CUDA."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"{argument} is a DLPack CUDA tensor, which qkernels reads through torch: this needs torch with CUDA"
        )
    return torch


def new_output(x: DeviceArray, shape: tuple[int, ...]) -> DeviceArray:
    """An uninitialised torch tensor of x's dtype on x's device (allocated on x's stream when x is a
    torch tensor: torch's current stream)."""
    torch = torch_module()
    if torch is None or not torch.cuda.is_available():
        raise InvalidArgumentError(
            "x is not a torch tensor and torch cannot allocate on the GPU here: pass out=, a device array for the result"
        )
    device = torch.device("cuda", x.device) if x.device is not None else torch.device("cuda", torch.cuda.current_device())
    out = torch.empty(shape, dtype=getattr(torch, x.dtype), device=device)
    return _torch_array(out, "out", (x.dtype,))


def current_device(x: DeviceArray):
    """A context in which x's device is the current CUDA device (where the backend packs and runs)."""
    torch = torch_module()
    if x.device is None or torch is None:
        return contextlib.nullcontext()
    return torch.cuda.device(x.device)


def device_backend_unavailable(backend: str | None, reason: str) -> BackendUnavailableError:
    if backend is None:
        return BackendUnavailableError(
            "x is in device memory, but this qkernels has no device backend (the CUDA library is built only "
            "where CMake finds nvcc)"
        )
    return BackendUnavailableError(f"x is in device memory, but backend '{backend}' is not available: {reason}")
