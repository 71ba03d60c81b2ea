"""Argument checks shared by the Python entry points, run before anything is allocated or handed
to C: each raises the typed error of qkernels.errors, naming the argument.

The C API takes sizes, bit widths, group sizes and thread counts as int32_t; a Python int beyond
that range would otherwise surface as cffi's OverflowError, and a bool or a float would be taken
for an integer.
"""

from __future__ import annotations

import numbers
import sys
from typing import Any

import numpy as np

from .errors import DtypeError, InvalidArgumentError

INT32_MAX = 2**31 - 1


def integer(value: Any, argument: str) -> int:
    """`value` as a Python int: any integer (NumPy's too) except a bool; beyond int32 is refused."""
    if type(value) is not int:  # a plain int needs no more: isinstance against the ABC takes 0.4 us per matmul
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidArgumentError(f"{argument}={value!r} must be an integer, not {type(value).__name__}")
        value = int(value)
    if not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise InvalidArgumentError(f"{argument}={value} does not fit a 32-bit int (at most {INT32_MAX})")
    return value


def size(value: Any, argument: str) -> int:
    """A dimension: an integer in [0, 2^31 - 1]."""
    value = integer(value, argument)
    if value < 0:
        raise InvalidArgumentError(f"{argument}={value} must not be negative")
    return value


def bits(value: Any) -> int:
    """A weight bit width: 4 or 8 (an integer, not a bool or a float)."""
    if type(value) is int and value in (4, 8):  # as in integer(): the ABC's isinstance is slow
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) not in (4, 8):
        raise InvalidArgumentError(f"bits={value!r} must be 4 or 8 (an int)")
    return int(value)


def group_size(value: Any) -> int:
    """A group size: a positive int32 integer (not a bool or a float). It need not divide K: the
    last group of a row may be shorter (format v2)."""
    if (type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral))) or value <= 0:
        raise InvalidArgumentError(f"group_size={value!r} must be a positive integer")
    return size(value, "group_size")


def shape(value: Any) -> tuple[int, int]:
    """A weight shape (N, K) of sizes."""
    try:
        N, K = value
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"shape={value!r} must be a pair (N, K)") from None
    return size(N, "N"), size(K, "K")


def optional_name(value: Any, argument: str, automatic: tuple[str, ...] = ()) -> str | None:
    """A backend or kernel name: None, or a non-empty string (an empty one is not 'automatic')."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{argument}={value!r} must be a string or None, not {type(value).__name__}")
    if not value:
        spelled = " or ".join(["None"] + [repr(a) for a in automatic])
        raise InvalidArgumentError(f"{argument}='' is empty: give a name, or {spelled} for the automatic choice")
    return value


def instance(value: Any, cls: type, argument: str) -> None:
    """`value` must be a `cls` (a QuantizedWeight where one is expected, say)."""
    if not isinstance(value, cls):
        raise DtypeError(f"{argument} must be a qkernels.{cls.__name__}, not {type(value).__name__}")


FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
_DTYPE_NAMES: dict = {}  # every NumPy or torch dtype seen -> its name: str() of a NumPy dtype takes 2 us


def _dtype_name(dtype) -> str:
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
        return name


def float_array(value: Any, argument: str) -> None:
    """`value` must be a NumPy array or a torch tensor of a float dtype (float16/32/64, bfloat16):
    nothing else is converted to one (an integer, complex, string or list argument is refused)."""
    torch = sys.modules.get("torch")
    is_array = isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))
    dtype = _dtype_name(value.dtype) if is_array else ""
    if dtype not in FLOAT_DTYPES:
        got = f"dtype {dtype}" if is_array else type(value).__name__
        raise DtypeError(f"{argument} must be a float array or tensor ({', '.join(FLOAT_DTYPES)}), not {got}")
