"""`qkernels bench --overhead`: what a call costs beyond its kernel, on a layer so small (64x64,
M = 1) that the kernel takes next to nothing. Each Python path is timed against the bare C call it
makes, through cffi on preallocated buffers: qkernels.matmul against qk_plan_run on its plan (issue
15's goal: qkernels.matmul <= 5 us per call), and the stateless quantized_matmul against qk_matmul.
"""

from __future__ import annotations

import importlib.util
import statistics
from functools import partial

import numpy as np

import qkernels
from qkernels._native import check, ffi, lib, new_struct
from qkernels._tensors import dtype_code

from .layers import group_size_for, prepare, prepared_call, stateless_call
from .report import print_table
from .timing import measure_together

N = K = 64
DTYPES = ("float32", "float16")
BATCH = 100  # calls per timed sample: in a sample of one call of a few microseconds, reading the clock would weigh
GOAL_US = 5.0
COLUMNS = {"dtype": ("dtype", 8, None), "mode": ("mode", 4, None), "path": ("path", 30, None),
           "us/call": ("median_us", 8, 2), "over C (us)": ("over_c_us", 11, 2)}


def _paths(qw: qkernels.QuantizedWeight, x: np.ndarray, mode: str) -> dict:
    """path -> (a call of it, the C path it wraps or None)."""
    prepare([qw], x, mode)
    y = np.empty((1, N), dtype=x.dtype)
    code, mode_code = dtype_code(x.dtype.name), qkernels.dispatch.MODES[mode]
    xp, yp = ffi.from_buffer(x), ffi.from_buffer(y)  # held by c_run's partial: they keep x and y alive for args too
    c_run = partial(lib.qk_plan_run, qw.plan(mode_code, code, lib.QK_BACKEND_AUTO, None), xp, yp, ffi.NULL, 1, ffi.NULL)
    args = new_struct("qk_matmul_args")  # what quantized_matmul fills on every call, filled once
    args.input, args.output, args.M, args.input_dtype, args.mode = xp, yp, 1, code, mode_code
    c_stateless = partial(lib.qk_matmul, qw.c_weights, args)
    check(c_run())  # the bare C calls report a failure only by their status
    check(c_stateless())
    paths = {
        "qkernels.matmul (prepared)": (partial(prepared_call, x, qw, mode), "qk_plan_run (C, cffi)"),
        "qk_plan_run (C, cffi)": (c_run, None),
        "quantized_matmul (stateless)": (partial(stateless_call, x, qw, mode), "qk_matmul (C, cffi)"),
        "qk_matmul (C, cffi)": (c_stateless, None),
    }
    if importlib.util.find_spec("torch"):  # the same call on a torch tensor (a torch output)
        import torch

        tensor = torch.from_numpy(x)
        prepare([qw], tensor, mode)
        paths["qkernels.matmul (torch tensor)"] = (partial(prepared_call, tensor, qw, mode), "qk_plan_run (C, cffi)")
    return paths


def _batch(call):
    def run():
        for _ in range(BATCH):
            call()

    return run


def run(args) -> list[dict]:
    print(f"per-call overhead: {N}x{K}, M = 1, 4-bit weights in cache; median of samples of {BATCH} calls, "
          f"the paths of one dtype and mode timed in turns; over C: the Python layer's share; "
          f"goal: qkernels.matmul <= {GOAL_US:g} us\n")
    print_table(COLUMNS, [])
    w = np.random.default_rng(0).standard_normal((N, K), dtype=np.float32)
    qw = qkernels.quantize_weights(w, bits=4, group_size=group_size_for(4, K))
    rows = []
    for dtype in DTYPES:
        x = np.random.default_rng(1).standard_normal((1, K), dtype=np.float32).astype(dtype)
        for mode in args.modes:
            paths = _paths(qw, x, mode)
            times = measure_together([[_batch(call)] for call, _ in paths.values()], args.budget)
            us = {path: statistics.median(t) / BATCH * 1e6 for path, t in zip(paths, times)}
            group = [{"measurement": "overhead", "dtype": dtype, "mode": mode, "N": N, "K": K, "M": 1, "path": path,
                      "median_us": us[path], "over_c_us": c_path and us[path] - us[c_path]}
                     for path, (_, c_path) in paths.items()]
            print_table(COLUMNS, group, header=False)
            rows += group
    return rows
