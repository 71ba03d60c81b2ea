"""NumPy arrays and CPU torch tensors in, the same kind out.

Everything native is handed over as a contiguous buffer plus a qk_dtype. NumPy has no bfloat16;
a NumPy array whose dtype is named "bfloat16" (ml_dtypes) is accepted as one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._native import ffi, lib
from .errors import DtypeError, InvalidArgumentError

DTYPE_NAMES = ("float32", "float16", "bfloat16")
_CODES = {"float32": lib.QK_DTYPE_F32, "float16": lib.QK_DTYPE_F16, "bfloat16": lib.QK_DTYPE_BF16}


def dtype_code(name: str) -> int:
    return _CODES[name]


def _torch():
    """torch if the caller could have passed a tensor (it is imported), else None."""
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


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


def host_tensor(x: Any, argument: str):
    """A torch tensor detached, after checking it is in host memory (this build has no GPU path)."""
    if x.device.type != "cpu":
        raise InvalidArgumentError(f"{argument} is on {x.device}; this build runs on the CPU only")
    return x.detach()


_FLOAT_DTYPE_NAMES: dict[np.dtype, str | None] = {}  # every NumPy dtype seen: its name in DTYPE_NAMES, or None


def _float_dtype_name(dtype: np.dtype) -> str | None:
    """dtype's name if it is one of DTYPE_NAMES; cached, as dtype.name takes microseconds per call."""
    try:
        return _FLOAT_DTYPE_NAMES[dtype]
    except KeyError:
        name = _FLOAT_DTYPE_NAMES[dtype] = dtype.name if dtype.name in DTYPE_NAMES else None
        return name


def float_buffer(x: Any, argument: str) -> Buffer:
    """A float32/float16/bfloat16 array or CPU tensor as a contiguous Buffer."""
    if is_torch(x):
        torch = _torch()
        names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
        if x.dtype not in names:
            raise DtypeError(f"{argument} has dtype {x.dtype}; expected float32, float16 or bfloat16")
        return Buffer(host_tensor(x, argument).contiguous(), names[x.dtype], tuple(x.shape), "torch")
    if not isinstance(x, np.ndarray):
        raise DtypeError(f"{argument} must be a NumPy array or a torch tensor, not {type(x).__name__}")
    name = _float_dtype_name(x.dtype)
    if name is None:
        raise DtypeError(f"{argument} has dtype {x.dtype}; expected float32, float16 or bfloat16")
    native = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))  # C reads native byte order
    return Buffer(native, name, x.shape, "numpy")


def int_array(x: Any, argument: str, dtype) -> np.ndarray:
    """A NumPy (or torch) integer/float array as contiguous NumPy of exactly `dtype`, unconverted."""
    if is_torch(x):
        x = host_tensor(x, argument).numpy()
    if not isinstance(x, np.ndarray):
        raise DtypeError(f"{argument} must be a NumPy array or a torch tensor, not {type(x).__name__}")
    if x.dtype.newbyteorder("=") != np.dtype(dtype):
        raise DtypeError(f"{argument} has dtype {x.dtype}; expected {np.dtype(dtype).name}")
    return np.ascontiguousarray(x, dtype=dtype)


def empty_like_kind(kind: str, shape: tuple[int, ...], dtype: str):
    """A new uninitialised output of the given kind ("numpy" or "torch")."""
    if kind == "torch":
        torch = _torch()
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
    if is_torch(array):
        return ffi.cast("void *", array.data_ptr())
    return ffi.from_buffer(array)  # 0.4 us; array.ctypes.data takes 1.4 us
