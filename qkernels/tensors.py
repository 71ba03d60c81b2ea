"""The containers qkernels takes and returns: NumPy arrays and CPU torch tensors.

The kernels take float32, float16 and bfloat16 (NumPy has no bfloat16: an ml_dtypes bfloat16
array is one); results come back in the container (the kind, "numpy" or "torch") they were given.
These helpers check an argument the way qkernels.matmul checks x, for code built on the kernels
(qkernels.quant, say); torch is never imported by them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _tensors
from .errors import DtypeError

FLOAT_DTYPES: tuple[str, ...] = _tensors.DTYPE_NAMES  # ("float32", "float16", "bfloat16")

__all__ = ["FLOAT_DTYPES", "FloatFormat", "float_format", "host_tensor", "is_torch"]


class FloatFormat(NamedTuple):
    dtype: str  # one of FLOAT_DTYPES
    kind: str  # "numpy" or "torch"
    shape: tuple[int, ...]


def is_torch(x: Any) -> bool:
    """Whether x is a torch tensor (False whenever torch has not been imported)."""
    return _tensors.is_torch(x)


def host_tensor(x: Any, argument: str):
    """The torch tensor x, detached and with any lazy negation resolved, after checking that it is a
    dense tensor in host memory (InvalidArgumentError naming `argument` otherwise: qkernels never
    copies between host and device)."""
    return _tensors.host_tensor(x, argument)


def float_format(x: Any, argument: str) -> FloatFormat:
    """(dtype, kind, shape) of a float32 / float16 / bfloat16 NumPy array or CPU torch tensor;
    DtypeError (or InvalidArgumentError for a tensor on another device) naming `argument` for
    anything qkernels.matmul would refuse as its x. Copies nothing."""
    if is_torch(x):
        dtype = str(x.dtype).removeprefix("torch.")
        if dtype not in FLOAT_DTYPES:
            raise DtypeError(f"{argument} has dtype {x.dtype}; expected float32, float16 or bfloat16")
        host_tensor(x, argument)
        return FloatFormat(dtype, "torch", tuple(x.shape))
    if not isinstance(x, np.ndarray):
        raise DtypeError(f"{argument} must be a NumPy array or a torch tensor, not {type(x).__name__}")
    found = _tensors._float_dtype(x.dtype)
    if found is None:
        raise DtypeError(f"{argument} has dtype {x.dtype}; expected float32, float16 or bfloat16")
    return FloatFormat(found[0], "numpy", tuple(x.shape))
