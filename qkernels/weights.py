"""Quantized weights in the canonical format (docs/numerics.md section 1), and their quantizer."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _checks
from ._native import FLOAT_ARRAY, INT8_ARRAY, check, ffi, lib, new_struct
from ._tensors import DTYPE_NAMES, dtype_code, empty_like_kind, float_buffer, int_array, pointer_of
from .errors import InvalidArgumentError

# QKERNELS_BACKEND as os.environ has it, read from os.environ's own dict (which every write through
# os.environ updates): os.environ.get takes 0.7 us when the variable is unset, as it raises and
# catches a KeyError. The raw value (bytes on POSIX) serves as a cache key.
environment_backend = functools.partial(os.environ._data.get, os.environ.encodekey("QKERNELS_BACKEND"))

INT8, FLOAT32 = np.dtype(np.int8), np.dtype(np.float32)  # the canonical arrays' dtypes

_GRANULARITIES = {"tensor": lib.QK_PER_TENSOR, "channel": lib.QK_PER_CHANNEL, "group": lib.QK_PER_GROUP}


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """Weights W[N, K] (torch.nn.Linear layout) as q, scales and zero points.

    data:        int8 [N, K*bits/8]; 4-bit values two per byte, low nibble first.
    scales:      float32 [N, NG] with NG = ceil(K / group_size): the last group of a row may be
                 shorter (format v2).
    zero_points: int8 [N, NG], or None (symmetric).
    dtype, kind: the float dtype and container ("numpy" or "torch") the weights came from;
                 dequantize() returns the same.
    offsets:     float32 [N, NG] added after scaling (format v2: llama.cpp's "min"), or None.
    Frozen: the native view of the arrays, the packs cached per backend, the plans cached per
    (mode, dtype, backend, kernel) and the forms of matmul calls cached with their plan (qkernels.ops),
    all made on first use, stay valid only while the arrays are the ones given; treat their contents
    as read-only too.
    """

    data: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    group_size: int
    shape: tuple[int, int]
    dtype: str = "float32"
    kind: str = "numpy"
    offsets: np.ndarray | None = None
    _packs: dict = field(default_factory=dict, init=False, repr=False)
    _plans: dict = field(default_factory=dict, init=False, repr=False)
    _forms: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        set_field = functools.partial(object.__setattr__, self)  # frozen: only construction sets fields
        N, K = _checks.shape(self.shape)  # int32 sizes, as C takes them; bools and floats refused
        set_field("shape", (N, K))
        set_field("bits", _checks.bits(self.bits))
        set_field("group_size", _checks.group_size(self.group_size))
        if self.bits == 4 and K % 2:
            raise InvalidArgumentError(f"K={K} must be even for 4-bit weights")
        if self.dtype not in DTYPE_NAMES:
            raise InvalidArgumentError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
        if self.kind not in ("numpy", "torch"):
            raise InvalidArgumentError(f"kind={self.kind!r} is not 'numpy' or 'torch'")
        set_field("data", int_array(self.data, "weights", INT8))
        set_field("scales", int_array(self.scales, "scales", FLOAT32))
        groups = (N, -(-K // self.group_size))
        if self.data.shape != (N, K * self.bits // 8):
            raise InvalidArgumentError(f"weights has shape {self.data.shape}; expected {(N, K * self.bits // 8)}")
        if self.scales.shape != groups:
            raise InvalidArgumentError(f"scales has shape {self.scales.shape}; expected {groups}")
        if self.zero_points is not None:
            set_field("zero_points", int_array(self.zero_points, "zero_points", INT8))
            if self.zero_points.shape != groups:
                raise InvalidArgumentError(f"zero_points has shape {self.zero_points.shape}; expected {groups}")
        if self.offsets is not None:
            set_field("offsets", int_array(self.offsets, "offsets", FLOAT32))
            if self.offsets.shape != groups:
                raise InvalidArgumentError(f"offsets has shape {self.offsets.shape}; expected {groups}")
        c = new_struct("qk_weights")
        c.data = ffi.from_buffer(INT8_ARRAY, self.data)
        c.scales = ffi.from_buffer(FLOAT_ARRAY, self.scales)
        c.zero_points = ffi.NULL if self.zero_points is None else ffi.from_buffer(INT8_ARRAY, self.zero_points)
        c.offsets = ffi.NULL if self.offsets is None else ffi.from_buffer(FLOAT_ARRAY, self.offsets)
        c.N, c.K, c.group_size, c.bits = N, K, self.group_size, self.bits
        set_field("_c", c)

    def __reduce__(self):
        """Pickles and copies carry the arrays and make their own native view, packs and plans
        (which hold native pointers) on first use."""
        return (QuantizedWeight, (self.data, self.scales, self.zero_points, self.bits, self.group_size, self.shape,
                                  self.dtype, self.kind, self.offsets))

    @property
    def N(self) -> int:
        return self.shape[0]

    @property
    def K(self) -> int:
        return self.shape[1]

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    @property
    def nbytes(self) -> int:
        """Bytes of the canonical format: data, scales and zero points."""
        extra = (self.zero_points, self.offsets)
        return self.data.nbytes + self.scales.nbytes + sum(a.nbytes for a in extra if a is not None)

    @property
    def c_weights(self):
        """The qk_weights struct viewing these arrays (valid while this object lives)."""
        return self._c

    def packed(self, backend: int, device: int | None = None):
        """The qk_packed_weights handle for a backend id, packed on first use. A backend without a
        layout of its own borrows this object's arrays (no copy): it lives as long as they do. A
        device backend packs into the memory of the current device, once per `device` (its index)."""
        key = backend if device is None else (backend, device)
        if key not in self._packs:
            out = ffi.new("qk_packed_weights **")
            check(lib.qk_pack_weights_borrowing(self._c, backend, out))
            self._packs[key] = ffi.gc(out[0], lib.qk_packed_weights_free)
        return self._packs[key]

    def plan(self, mode: int, dtype: int, backend: int, kernel: str | None, device: int | None = None):
        """The qk_plan for a mode, input dtype, backend id (0: automatic) and kernel name (None:
        automatic), made on first use: selected once, on weights packed once per backend (and per
        device index, for a device backend). QKERNELS_BACKEND is part of the key, so that setting
        it takes effect as it does in C."""
        key = (mode, dtype, backend, kernel, environment_backend(), device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(mode, dtype, backend, kernel, device)
        return plan

    def _make_plan(self, mode: int, dtype: int, backend: int, kernel: str | None, device: int | None):
        # The backend is that of the kernel automatic selection picks for one row of packed weights
        # (a stateless call may take another backend's canonical-layout kernel). Selection reads
        # no data, so the activation and output pointers are a placeholder buffer.
        placeholder = _PLACEHOLDER
        args = new_struct("qk_matmul_args")
        args.input = args.output = ffi.from_buffer(placeholder)
        args.M, args.input_dtype, args.mode, args.backend = 1, dtype, mode, backend
        kernel_name = ffi.new("char[]", kernel.encode()) if kernel is not None else ffi.NULL
        args.kernel = kernel_name
        info = new_struct("qk_kernel_info")
        check(lib.qk_select_packed_kernel(self._c, args, info))
        desc = new_struct("qk_plan_desc")
        desc.mode, desc.input_dtype, desc.kernel = mode, dtype, kernel_name
        out = ffi.new("qk_plan **")
        check(lib.qk_plan_create(self.packed(info.backend, device), desc, out))
        return ffi.gc(out[0], lib.qk_plan_free)


_PLACEHOLDER = np.zeros(16, dtype=np.float32)  # 64 bytes: aligned for every dtype


def quantize_weights(
    w: Any, bits: int = 4, group_size: int | None = 128, symmetric: bool = True, granularity: str | None = None
) -> QuantizedWeight:
    """Round-to-nearest quantization of float weights W[N, K] (docs/numerics.md section 2).

    granularity: "group" (group_size elements share a scale), "channel" (one scale per row) or
    "tensor" (one scale for all, stored per row). Default: "group", or "channel" when group_size
    is None. NumPy float32/float16 (or ml_dtypes bfloat16) arrays and CPU torch tensors are accepted.
    """
    bits = _checks.bits(bits)  # before anything is allocated from it
    buf = float_buffer(w, "w")
    if len(buf.shape) != 2:
        raise InvalidArgumentError(f"w must be 2-D [N, K]; it has shape {buf.shape}")
    N, K = _checks.size(buf.shape[0], "N"), _checks.size(buf.shape[1], "K")
    if N == 0 or K == 0:  # else C would see an empty array's NULL pointer
        raise InvalidArgumentError(f"w has shape {buf.shape}: N and K must be positive")
    granularity = granularity or ("channel" if group_size is None else "group")
    if granularity not in _GRANULARITIES:
        raise InvalidArgumentError(f"granularity={granularity!r} is not one of {sorted(_GRANULARITIES)}")
    G = _checks.group_size(group_size) if granularity == "group" else K  # the output shapes need it now
    groups = (N, -(-K // G))  # the last group of a row may be shorter (format v2)
    data = np.empty((N, K * bits // 8), dtype=np.int8)
    scales = np.empty(groups, dtype=np.float32)
    zero_points = None if symmetric else np.empty(groups, dtype=np.int8)
    check(
        lib.qk_quantize(
            buf.pointer, dtype_code(buf.dtype), N, K, bits, _GRANULARITIES[granularity], int(G), int(bool(symmetric)),
            ffi.cast("int8_t *", pointer_of(data)), ffi.cast("float *", pointer_of(scales)),
            ffi.NULL if zero_points is None else ffi.cast("int8_t *", pointer_of(zero_points)),
        )
    )
    return QuantizedWeight(data, scales, zero_points, bits, int(G), (N, K), buf.dtype, buf.kind)


def dequantize(qw: QuantizedWeight, dtype: str | None = None):
    """W[N, K] = scales · (q − zero_point) + offsets, rounded once to `dtype` (default: the weights' own),
    returned as the kind of container the weights were quantized from."""
    _checks.instance(qw, QuantizedWeight, "qw")
    dtype = dtype or qw.dtype
    if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:  # a name, not a NumPy or torch dtype
        raise InvalidArgumentError(f"dtype={dtype!r} is not 'float32', 'float16' or 'bfloat16' (a name)")
    out = empty_like_kind(qw.kind, qw.shape, dtype)
    check(lib.qk_dequantize(qw.c_weights, dtype_code(dtype), pointer_of(out)))
    return out
