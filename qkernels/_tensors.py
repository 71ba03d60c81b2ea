"""NumPy arrays and CPU torch tensors in, the same kind out.

Everything native is handed over as a contiguous buffer plus a qk_dtype. NumPy has no bfloat16;
a NumPy array whose dtype is named "bfloat16" (ml_dtypes) is accepted as one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._native import VOID_POINTER, ffi, lib
from .errors import DtypeError, InvalidArgumentError

DTYPE_NAMES = ("float32", "float16", "bfloat16")
_CODES = {"float32": lib.QK_DTYPE_F32, "float16": lib.QK_DTYPE_F16, "bfloat16": lib.QK_DTYPE_BF16}


def dtype_code(name: str) -> int:
    return _CODES[name]


def torch_module():
    """torch if the caller could have passed a tensor (it is imported), else None."""
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def is_plain_container(x: Any) -> bool:
    """Whether x is exactly a NumPy array or a torch tensor, not an instance of a subclass."""
    torch = torch_module()
    return type(x) is np.ndarray or (torch is not None and type(x) is torch.Tensor)


@dataclass
class Buffer:
    """A contiguous host buffer that stays alive as long as this object does."""

    owner: Any  # the contiguous array or tensor
    dtype: str  # one of DTYPE_NAMES
    shape: tuple[int, ...]
    kind: str  # "numpy" or "torch"

    @property
    def pointer(self):
        return pointer_of(self.owner)


def check_host(x: Any, argument: str) -> None:
    """A torch tensor must be in host memory, as the call's other arrays are (a call on device arrays
    takes them all on the device: qkernels never copies between host and device)."""
    if not x.is_cpu:  # x.device would take 0.3 us
        raise InvalidArgumentError(
            f"{argument} is on {x.device}, but this call runs on host arrays: qkernels never copies between host "
            "and device"
        )


def dense_values(x: Any, argument: str):
    """A torch tensor, on whatever device, after checking it is dense (strided), with any lazy
    negation resolved: a negated view (such as `z.conj().imag` of a complex z) holds its values
    unnegated, and a pointer to it would read them so."""
    if x.layout is not torch_module().strided:
        raise InvalidArgumentError(f"{argument} is a {x.layout} tensor; qkernels takes dense (strided) tensors")
    return x.resolve_neg()


def host_view(x: Any, argument: str):
    """dense_values(x) after checking x is in host memory."""
    check_host(x, argument)
    return dense_values(x, argument)


def host_tensor(x: Any, argument: str):
    """host_view(x), detached."""
    return host_view(x, argument).detach()


_FLOAT_DTYPES: dict[np.dtype, tuple[str, np.dtype] | None] = {}  # every NumPy dtype seen: see _float_dtype


def _float_dtype(dtype: np.dtype) -> tuple[str, np.dtype] | None:
    """dtype's name and native-byte-order form if it is one of DTYPE_NAMES, else None; cached, as
    dtype.name and newbyteorder take a microsecond together, a fifth of a small matmul's budget."""
    try:
        return _FLOAT_DTYPES[dtype]
    except KeyError:
        found = _FLOAT_DTYPES[dtype] = (dtype.name, dtype.newbyteorder("=")) if dtype.name in DTYPE_NAMES else None
        return found


def torch_dtype_name(dtype: Any) -> str | None:
    """A torch dtype's name if it is one of DTYPE_NAMES, else None."""
    name = str(dtype).removeprefix("torch.")
    return name if name in DTYPE_NAMES else None


def float_buffer(x: Any, argument: str) -> Buffer:
    """A float32/float16/bfloat16 array or CPU tensor as a contiguous Buffer."""
    if isinstance(x, np.ndarray):  # first: the common case, and cheaper to recognise than a tensor
        found = _float_dtype(x.dtype)
        if found is None:
            raise DtypeError(f"{argument} has dtype {x.dtype}; expected float32, float16 or bfloat16")
        name, native = found
        return Buffer(np.ascontiguousarray(x, dtype=native), name, x.shape, "numpy")  # C reads native byte order
    if not is_torch(x):
        raise DtypeError(f"{argument} must be a NumPy array or a torch tensor, not {type(x).__name__}")
    name = torch_dtype_name(x.dtype)
    if name is None:
        raise DtypeError(f"{argument} has dtype {x.dtype}; expected float32, float16 or bfloat16")
    return Buffer(host_tensor(x, argument).contiguous(), name, tuple(x.shape), "torch")


def int_array(x: Any, argument: str, dtype: np.dtype) -> np.ndarray:
    """A NumPy (or torch) integer/float array as contiguous NumPy of exactly `dtype`, unconverted."""
    if not isinstance(x, np.ndarray):
        if not is_torch(x):
            raise DtypeError(f"{argument} must be a NumPy array or a torch tensor, not {type(x).__name__}")
        x = host_tensor(x, argument).numpy()
    if x.dtype != dtype and x.dtype.newbyteorder("=") != dtype:  # the first test alone is cheap (0.05 us)
        raise DtypeError(f"{argument} has dtype {x.dtype}; expected {dtype.name}")
    return np.ascontiguousarray(x, dtype=dtype)


def empty_like_kind(kind: str, shape: tuple[int, ...], dtype: str):
    """A new uninitialised output of the given kind ("numpy" or "torch")."""
    if kind == "torch":
        import torch  # the weights came from tensors; this call may be the first to need torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device="cpu")  # whatever the default device
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise DtypeError("a bfloat16 NumPy result needs the ml_dtypes package; use torch or float32") from None
        return np.empty(shape, dtype=ml_dtypes.bfloat16)
    return np.empty(shape, dtype=dtype)


def pointer_of(array) -> Any:
    """cffi pointer to the first element of a contiguous array or tensor."""
    if not isinstance(array, np.ndarray) and is_torch(array):  # an array is no tensor: no need to ask
        return ffi.cast(VOID_POINTER, array.data_ptr())
    return ffi.from_buffer(array)  # 0.4 us; array.ctypes.data takes 1.4 us
