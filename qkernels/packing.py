"""The 4-bit nibble layout of the canonical weight format (docs/numerics.md §1), in NumPy.

QuantizedWeight.data holds 4-bit values two per byte: element 2j of a row in bits 0-3 of byte j,
element 2j+1 in bits 4-7 ("low nibble first"), each a two's complement int4 in [-8, 7]. 8-bit
data are the int8 values themselves.

    q = qkernels.packing.unpack(qw.data, qw.bits, qw.K)       # int8 [N, K]
    data = qkernels.packing.pack_int4(q)                      # int8 [N, K/2]

(qkernels.reference, the test-suite's oracle, has its own implementation on purpose.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _checks
from .errors import DtypeError, InvalidArgumentError

__all__ = ["pack_int4", "unpack", "unpack_int4"]


def pack_int4(q: Any) -> np.ndarray:
    """int4 values q [N, K] (any integer dtype, every value in [-8, 7], K even) as canonical int8
    bytes [N, K/2], low nibble first."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise DtypeError(f"q has dtype {q.dtype}; expected an integer dtype")
    if q.ndim != 2 or q.shape[1] % 2:
        raise InvalidArgumentError(f"q must be 2-D [N, K] with K even; it has shape {q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise InvalidArgumentError("q holds values outside the int4 range [-8, 7]")
    q8 = q.astype(np.int8)
    # The high element shifted into bits 4-7 (its own sign bits fall off), the low one's four bits below.
    return ((q8[:, 1::2] << 4) | (q8[:, 0::2] & np.int8(0x0F))).astype(np.int8)


def unpack_int4(data: Any, K: int) -> np.ndarray:
    """Canonical 4-bit bytes data [N, K/2] (int8) as the int4 values int8 [N, K]."""
    data = np.asarray(data)
    if data.dtype != np.int8:
        raise DtypeError(f"data has dtype {data.dtype}; expected int8")
    if data.ndim != 2 or 2 * data.shape[1] != K:
        raise InvalidArgumentError(f"data must be [N, K/2] for K={K}; it has shape {data.shape}")
    q = np.empty((data.shape[0], K), np.int8)
    q[:, 0::2] = (data << 4) >> 4  # arithmetic shifts of int8 sign-extend the low nibble...
    q[:, 1::2] = data >> 4  # ...and the high one
    return q


def unpack(data: Any, bits: int, K: int) -> np.ndarray:
    """Canonical data of either width (QuantizedWeight.data) as int8 values [N, K] (a new array)."""
    if _checks.bits(bits) == 4:
        return unpack_int4(data, K)
    data = np.asarray(data)
    if data.dtype != np.int8:
        raise DtypeError(f"data has dtype {data.dtype}; expected int8")
    if data.ndim != 2 or data.shape[1] != K:
        raise InvalidArgumentError(f"data must be [N, K] for K={K}; it has shape {data.shape}")
    return data.copy()
