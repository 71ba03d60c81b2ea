"""`qkernels bench --contended`: decode (M = 1, 4-bit weights in groups of 128) on one and on two
threads, quiet and while another process keeps one core busy. Work split evenly over two threads
waits for the slower one, and on a machine with a core taken that one may be a thread the OS has
descheduled; issue 15's target: contended two-thread / contended one-thread <= 1.3."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
from functools import partial

import qkernels

from .layers import Layer, group_size_for, prepare, prepared_call, rotation
from .report import print_table
from .timing import measure_together

SHAPE = (4096, 4096)
THREADS = (1, 2)
TARGET = 1.3
# The competitor spins until it is killed, or until its parent is gone (a bench killed outright).
SPIN = "import os; parent = os.getppid(); print(flush=True)\nwhile os.getppid() == parent: pass"
COLUMNS = {"layer": ("layer", 11, None), "mode": ("mode", 4, None), "threads": ("threads", 7, 0),
           "quiet ms": ("quiet_ms", 9, 3), "contended ms": ("contended_ms", 12, 3),
           "contended/quiet": ("contended_vs_quiet", 15, 2), "quiet vs 1": ("quiet_vs_1_thread", 10, 2),
           "contended vs 1": ("contended_vs_1_thread", 14, 2)}


@contextlib.contextmanager
def busy_core():
    """A child process spinning on one core while the block runs; killed at its end, whatever ends it.
    Its own session keeps a Ctrl-C at the terminal from reaching it: the block's end kills it."""
    child = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, start_new_session=True)
    try:
        child.stdout.readline()  # it spins from here on
        yield
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def _on_threads(threads: int, call):
    # The thread count is process-wide and the candidates take turns: each call sets its own.
    qkernels.set_num_threads(threads)
    return call()


def run(args, llc: int) -> list[dict]:
    print(f"decode on {' and '.join(map(str, THREADS))} threads, quiet and with one core busy (a spinning "
          f"process): M = 1, 4-bit weights, activations {args.dtype}, weight copies > 2x LLC, the thread counts "
          f"timed in turns, {args.budget:g} s each; target: contended 2 threads / 1 <= {TARGET:g}\n")
    print_table(COLUMNS, [])
    rows = []
    previous = qkernels.get_num_threads()
    try:
        for N, K in args.shapes or [SHAPE]:
            layer = Layer(N, K, llc)
            qws = layer.quantized(4, group_size_for(4, K, args.group_size))
            xs = layer.activations(1, args.dtype)
            for mode in args.modes:
                prepare(qws, xs[0], mode)
                calls = rotation(partial(prepared_call, mode=mode), xs, qws)
                candidates = [[partial(_on_threads, t, call) for call in calls] for t in THREADS]
                for candidate in candidates:
                    candidate[0]()  # untimed: a first call on more threads may start them
                quiet = measure_together(candidates, args.budget)
                with busy_core():
                    contended = measure_together(candidates, args.budget)
                group = []
                for t, q, c in zip(THREADS, quiet, contended):
                    q_ms, c_ms = statistics.median(q) * 1e3, statistics.median(c) * 1e3
                    row = {"measurement": "contended", "layer": f"{N}x{K}", "N": N, "K": K, "M": 1, "mode": mode,
                           "dtype": args.dtype, "threads": t, "quiet_ms": q_ms, "contended_ms": c_ms,
                           "contended_vs_quiet": c_ms / q_ms}
                    if group:
                        row |= {"quiet_vs_1_thread": q_ms / group[0]["quiet_ms"],
                                "contended_vs_1_thread": c_ms / group[0]["contended_ms"]}
                    group.append(row)
                print_table(COLUMNS, group, header=False)
                rows += group
    finally:
        qkernels.set_num_threads(previous)
    return rows
