"""`qkernels bench --stateless`: the quantizedMatMul case, decode (M = 1) of 4-bit weights in groups
of 128, on the stateless path (nothing cached: checks and selection on every call, kernels that
read the canonical arrays) against the prepared one (qkernels.matmul on its plan). The paths take
turns on weights rotated past the LLC; issue 15's target: stateless / prepared <= 1.3."""

from __future__ import annotations

import statistics
from functools import partial

import numpy as np

from qkernels._native import check, ffi, lib

from .layers import Layer, group_size_for, prepare, prepared_call, rotation, stateless_call
from .report import print_table
from .timing import measure_together

SHAPE = (4096, 4096)
TARGET = 1.3
COLUMNS = {"layer": ("layer", 11, None), "mode": ("mode", 4, None), "path": ("path", 30, None),
           "ms": ("median_ms", 9, 3), "vs prepared": ("vs_prepared", 11, 2)}


def _c_entry(y: np.ndarray, x: np.ndarray, qw):
    """quantizedMatMul on one copy, its pointers made once (fp16, A16: all the C entry runs)."""
    zero_points = ffi.NULL if qw.zero_points is None else ffi.from_buffer("int8_t[]", qw.zero_points)
    return partial(lib.quantizedMatMul, ffi.from_buffer(x), ffi.from_buffer("int8_t[]", qw.data),
                   ffi.from_buffer("float[]", qw.scales), zero_points, ffi.from_buffer(y), 1, qw.N, qw.K,
                   qw.group_size, qw.bits)


def run(args, llc: int) -> list[dict]:
    print(f"stateless against prepared: M = 1, 4-bit weights, activations {args.dtype}, weight copies > 2x LLC, "
          f"the paths timed in turns, {args.budget:g} s each; target: stateless / prepared <= {TARGET:g}\n")
    print_table(COLUMNS, [])
    rows = []
    for N, K in args.shapes or [SHAPE]:
        layer = Layer(N, K, llc)
        qws = layer.quantized(4, group_size_for(4, K, args.group_size))
        xs = layer.activations(1, args.dtype)
        for mode in args.modes:
            prepare(qws, xs[0], mode)
            paths = {
                "qkernels.matmul (prepared)": rotation(partial(prepared_call, mode=mode), xs, qws),
                "quantized_matmul (stateless)": rotation(partial(stateless_call, mode=mode), xs, qws),
            }
            if mode == "a16" and args.dtype == "float16" and K % qws[0].group_size == 0:
                c_calls = [make() for make in rotation(partial(_c_entry, np.empty((1, N), np.float16)), xs, qws)]
                c_calls[0]()
                check(lib.qk_last_status())  # quantizedMatMul returns nothing: its status says if it ran
                paths["quantizedMatMul (C, cffi)"] = c_calls
            for calls in paths.values():
                calls[0]()  # untimed: first-call costs stay out
            times = measure_together(list(paths.values()), args.budget)
            ms = {path: statistics.median(t) * 1e3 for path, t in zip(paths, times)}
            prepared = ms["qkernels.matmul (prepared)"]
            group = [{"measurement": "stateless", "layer": f"{N}x{K}", "N": N, "K": K, "M": 1, "mode": mode,
                      "dtype": args.dtype, "path": path, "median_ms": value, "vs_prepared": value / prepared,
                      "repeats": len(t)} for (path, value), t in zip(ms.items(), times)]
            print_table(COLUMNS, group, header=False)
            rows += group
    return rows
