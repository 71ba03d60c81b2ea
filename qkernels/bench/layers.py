"""The layers `qkernels bench` times, and the candidates that run on them.

A layer is (N, K) = (output, input) features, the torch.nn.Linear layout. The defaults are the
LLaMA-7B shapes 4096x4096 (attention projections), 11008x4096 (MLP up-projection) and 4096x11008
(MLP down-projection), at M = 1, 16 and 256 rows, with 4-bit weights in groups of 128 and 8-bit
weights per channel. A candidate cycles through copies of the weights and activations which
together exceed twice the last-level cache, so that every call streams its weights from memory,
as in LLM inference, where a layer's weights have long left the cache when the next token reaches
it. The bench/ pytest-benchmark suite reuses Layer and its candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

import qkernels
from qkernels import reference

from .baselines import Baseline, make_baselines

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
MS = (1, 16, 256)
MODES = ("a16", "a8")
BITS = (4, 8)
MAX_COPIES = 256  # tiny layers: more copies would time Python overhead, not memory


def group_size_for(bits: int, K: int, group_size: int | None = None) -> int:
    """The benchmark's quantization unless one is given: 4-bit in groups of 128 (of K if shorter), 8-bit per channel."""
    return group_size or (min(128, K) if bits == 4 else K)


def weights_label(bits: int, group_size: int, K: int) -> str:
    return f"w{bits}/" + ("ch" if group_size == K else f"g{group_size}")


def llc_bytes() -> int:
    """Size of the last-level cache (cpu0's L3), or 32 MiB where sysfs does not say."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1], 0)
    except (OSError, ValueError):
        return 32 << 20


@dataclass
class Candidate:
    """One thing to time on one layer at one M: calls[i] runs it on the i-th weight/input copy."""

    name: str
    label: str  # mode and weight format
    # the weights' bytes in their format (qkernels': the canonical arrays, data, scales, zero points,
    # offsets; a pack's own overhead, such as its padding, is the kernel's cost, not the floor's)
    weight_bytes: int
    input_bytes: int
    calls: list[Callable[[], Any]]
    check: Callable[[Any], None] | None = None  # raises AssertionError unless calls[0]'s output is right
    backend: str = "baseline"
    auto: bool = False  # the kernel automatic dispatch picks for this problem


def rotation(run, inputs: list, weights: list) -> list[Callable[[], Any]]:
    """run(input, weights) on every copy of the longer list, the shorter one repeating."""
    n = max(len(inputs), len(weights))
    return [partial(run, inputs[i % len(inputs)], weights[i % len(weights)]) for i in range(n)]


class Layer:
    """One (N, K) layer: random float32 weights, and their quantized copies and baseline forms,
    made on first use. rotate=False keeps one copy of everything (for single untimed calls)."""

    def __init__(self, N: int, K: int, llc: int | None = None, rotate: bool = True, rotate_bytes: int | None = None,
                 share_arrays: bool = False):
        self.N, self.K = N, K
        self.llc = llc or llc_bytes()
        self.rotate = rotate
        self.rotate_bytes = rotate_bytes or 2 * self.llc  # what the copies of one operand add up to
        self.share_arrays = share_arrays  # quantized copies share one set of canonical arrays
        self.rng = np.random.default_rng(0)
        self.w = self.rng.standard_normal((N, K), dtype=np.float32)
        self._quantized: dict[tuple[int, int], list[qkernels.QuantizedWeight]] = {}
        self._baselines: dict[str, dict[str, Baseline | str]] = {}

    def count(self, nbytes: int) -> int:
        """How many copies of an operand of nbytes calls cycle through: together, rotate_bytes or more
        (by default twice the LLC)."""
        return max(1, min(MAX_COPIES, math.ceil(self.rotate_bytes / nbytes))) if self.rotate else 1

    def copies(self, array: Any) -> list:
        """A NumPy array or torch tensor and enough copies of it to rotate past the cache."""
        duplicate = array.clone if hasattr(array, "clone") else array.copy
        return [array] + [duplicate() for _ in range(self.count(array.nbytes) - 1)]

    def quantized(self, bits: int, group_size: int) -> list[qkernels.QuantizedWeight]:
        """Separate QuantizedWeight objects, each with its own arrays (read by the stateless path, and
        by packs that borrow them) and its own cached packs and plans (prepare() makes them before timing).
        With share_arrays, the objects share the arrays: half the memory where every timed call runs on
        a pack of a backend's own layout, and no rotation anywhere else."""
        key = (bits, group_size)
        if key not in self._quantized:
            qw = qkernels.quantize_weights(self.w, bits=bits, group_size=group_size)
            copy = (lambda a: a) if self.share_arrays else np.copy
            self._quantized[key] = [qw] + [
                qkernels.QuantizedWeight(copy(qw.data), copy(qw.scales), qw.zero_points, bits, group_size, qw.shape)
                for _ in range(self.count(qw.nbytes) - 1)
            ]
        return self._quantized[key]

    def activations(self, M: int, dtype: str, copies: int | None = None) -> list[np.ndarray]:
        """Random activations and copies of them: `copies` in all, or enough to rotate past the cache."""
        x = self.rng.standard_normal((M, self.K), dtype=np.float32).astype(dtype)
        return [x] + [x.copy() for _ in range(copies - 1)] if copies else self.copies(x)

    def kernel_candidate(self, kernel: qkernels.dispatch.KernelInfo, bits: int, group_size: int, xs: list) -> Candidate:
        """One registered kernel, forced with kernel=, on the path that runs it: qkernels.matmul on
        a plan (packed weights), or, for a canonical variant of a backend with its own layout, which
        cannot run on packed weights, the stateless quantized_matmul, named "(stateless)"."""
        qws = self.quantized(bits, group_size)
        qw = qws[0]
        own_layout = next(b.own_layout for b in qkernels.backends() if b.name == kernel.backend)
        if kernel.canonical and own_layout:
            name, run = f"{kernel.name} (stateless)", stateless_call
        else:
            prepare(qws, xs[0], kernel.mode, kernel.name)
            name, run = kernel.name, prepared_call
        calls = rotation(partial(run, mode=kernel.mode, kernel=kernel.name), xs, qws)
        label = f"{kernel.mode} {weights_label(bits, group_size, self.K)}"
        return Candidate(name, label, qw.nbytes, xs[0].nbytes, calls, checker(qw, xs[0], kernel.mode),
                         kernel.backend)

    def auto_candidate(self, mode: str, bits: int, group_size: int, xs: list,
                       check_rows: int | None = None) -> Candidate:
        """qkernels.matmul with automatic dispatch, on plans made before timing, named by the kernel
        it picks for these activations. check_rows: check that many rows (from both ends) only."""
        qws = self.quantized(bits, group_size)
        prepare(qws, xs[0], mode)
        kernel = qkernels.select(xs[0], qws[0], mode)
        calls = rotation(partial(prepared_call, mode=mode), xs, qws)
        label = f"{mode} {weights_label(bits, group_size, self.K)}"
        return Candidate(kernel.name, label, qws[0].nbytes, xs[0].nbytes, calls,
                         checker(qws[0], xs[0], mode, check_rows), kernel.backend, auto=True)

    def baselines(self, dtype: str) -> dict[str, Baseline | str]:
        """Each of BASELINES, or why it cannot run here."""
        if dtype not in self._baselines:
            self._baselines[dtype] = make_baselines(self, dtype)
        return self._baselines[dtype]

    def baseline_candidate(self, name: str, baseline: Baseline, xs: list) -> Candidate:
        inputs = [baseline.convert(x) for x in xs]
        calls = rotation(baseline.run, inputs, baseline.weights)
        return Candidate(name, baseline.label, baseline.weight_bytes, inputs[0].nbytes, calls)


def checker(qw: qkernels.QuantizedWeight, x: np.ndarray, mode: str, rows: int | None = None) -> Callable[[Any], None]:
    """Raises AssertionError unless an output of x on qw is right; rows: checks only the first and
    last rows/2 rows (the oracle is slow on large layers)."""
    picked = slice(None) if rows is None or rows >= len(x) else np.r_[:rows // 2, len(x) - (rows - rows // 2):len(x)]

    def check(y):
        reference.assert_matmul_close(y[picked], x[picked], x.dtype.name, qw.data, qw.scales,
                                      qw.zero_points, qw.bits, qw.group_size, mode)

    return check


def prepare(qws: list[qkernels.QuantizedWeight], x: Any, mode: str, kernel: str | None = None) -> None:
    """Makes the plan qkernels.matmul(x, qw, mode, kernel=kernel) runs for every copy: the packing
    and selection of a first call stay out of the timing. select() makes it and runs nothing."""
    for qw in qws:
        qkernels.select(x, qw, mode, kernel=kernel)


def prepared_call(x, qw, mode: str, kernel: str | None = None):
    """The prepared path: one qk_plan_run on the plan cached in qw."""
    return qkernels.matmul(x, qw, mode, kernel=kernel)


def stateless_call(x, qw, mode: str, kernel: str | None = None):
    """The stateless path (quantizedMatMul's) on qw's canonical arrays: selection and checks on every call."""
    return qkernels.quantized_matmul(x, qw.data, qw.scales, qw.zero_points, bits=qw.bits, group_size=qw.group_size,
                                     mode=mode, kernel=kernel)
