"""`qkernels bench`: every available kernel on LLM-shaped layers, against float and int8 baselines.

A layer is (N, K) = (output, input) features, the torch.nn.Linear layout. The defaults are the
LLaMA-7B shapes 4096x4096 (attention projections), 11008x4096 (MLP up-projection) and 4096x11008
(MLP down-projection), at M = 1, 16 and 256 rows of float16 activations, with 4-bit weights in
groups of 128 and 8-bit weights per channel, in both modes (a16, a8). Every qkernels result is
checked against qkernels.reference on the very input it is timed with.

Timing: the median of repeated calls that cycle through copies of the weights and activations
which together exceed twice the last-level cache, so that every call streams its weights from
memory, as in LLM inference, where a layer's weights have long left the cache when the next token
reaches it. The bench/ pytest-benchmark suite reuses Layer and the candidates defined here.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

import qkernels
from qkernels import reference

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
MS = (1, 16, 256)
MODES = ("a16", "a8")
BITS = (4, 8)
BASELINES = (
    "numpy f32 x @ w.T",
    "torch linear f32",
    "torch linear bf16",
    "torch dynamic int8 (fbgemm)",
    "torch _weight_int8pack_mm",
)
MIN_REPEATS, MAX_REPEATS = 3, 200
SLICE = 0.05  # seconds of calls per candidate per turn (measure_together)
MAX_COPIES = 256  # tiny layers: more copies would time Python overhead, not memory


def group_size_for(bits: int, K: int, group_size: int | None = None) -> int:
    """The benchmark's quantization unless one is given: 4-bit in groups of 128, 8-bit per channel."""
    return group_size or (128 if bits == 4 else K)


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
    weight_bytes: int  # read per call, as the kernel stores them (packed)
    input_bytes: int
    calls: list[Callable[[], Any]]
    check: Callable[[Any], None] | None = None  # raises AssertionError unless calls[0]'s output is right
    backend: str = "baseline"
    auto: bool = False  # the kernel automatic dispatch picks for this problem


@dataclass
class Baseline:
    """A non-qkernels implementation of the layer, its weight copies made once per layer."""

    label: str
    weight_bytes: int  # of one copy
    weights: list
    run: Callable[[Any, Any], Any]  # (input, weights) -> output
    convert: Callable[[np.ndarray], Any]  # the benchmark's NumPy activations -> this input


def _rotation(run, inputs: list, weights: list) -> list[Callable[[], Any]]:
    n = max(len(inputs), len(weights))
    return [partial(run, inputs[i % len(inputs)], weights[i % len(weights)]) for i in range(n)]


class Layer:
    """One (N, K) layer: random float32 weights, and their quantized copies and baseline forms,
    made on first use. rotate=False keeps one copy of everything (for single untimed calls)."""

    def __init__(self, N: int, K: int, llc: int | None = None, rotate: bool = True):
        self.N, self.K = N, K
        self.llc = llc or llc_bytes()
        self.rotate = rotate
        self.rng = np.random.default_rng(0)
        self.w = self.rng.standard_normal((N, K), dtype=np.float32)
        self._quantized: dict[tuple[int, int], list[qkernels.QuantizedWeight]] = {}
        self._baselines: dict[str, dict[str, Baseline | str]] = {}

    def count(self, nbytes: int) -> int:
        """How many copies of an operand of nbytes calls cycle through: together, over twice the LLC."""
        return max(1, min(MAX_COPIES, math.ceil(2 * self.llc / nbytes))) if self.rotate else 1

    def copies(self, array: Any) -> list:
        """A NumPy array or torch tensor and enough copies of it to rotate past the cache."""
        duplicate = array.clone if hasattr(array, "clone") else array.copy
        return [array] + [duplicate() for _ in range(self.count(array.nbytes) - 1)]

    def quantized(self, bits: int, group_size: int) -> list[qkernels.QuantizedWeight]:
        """Separate QuantizedWeight objects, each with its own arrays (read directly by backends
        without a layout of their own) and its own cached pack (kernel_candidate packs up front)."""
        key = (bits, group_size)
        if key not in self._quantized:
            qw = qkernels.quantize_weights(self.w, bits=bits, group_size=group_size)
            self._quantized[key] = [qw] + [
                qkernels.QuantizedWeight(qw.data.copy(), qw.scales.copy(), qw.zero_points, bits, group_size, qw.shape)
                for _ in range(self.count(qw.nbytes) - 1)
            ]
        return self._quantized[key]

    def activations(self, M: int, dtype: str) -> list[np.ndarray]:
        return self.copies(self.rng.standard_normal((M, self.K), dtype=np.float32).astype(dtype))

    def kernel_candidate(self, kernel: qkernels.dispatch.KernelInfo, bits: int, group_size: int, xs: list) -> Candidate:
        """One registered kernel, forced with kernel=, on every copy packed before any timing."""
        qws = self.quantized(bits, group_size)
        backend = qkernels.dispatch.backend_code(kernel.backend)
        own_layout = next(b.own_layout for b in qkernels.backends() if b.code == backend)
        for qw in qws if own_layout else ():
            qw.packed(backend)
        qw, x, dtype = qws[0], xs[0], xs[0].dtype.name

        def check(y):
            reference.assert_matmul_close(
                y, x, dtype, qw.data, qw.scales, qw.zero_points, bits, group_size, kernel.mode
            )

        return Candidate(
            kernel.name, f"{kernel.mode} {weights_label(bits, group_size, self.K)}",
            qkernels.lib.qk_packed_size(qw.packed(backend)) if own_layout else qw.nbytes, x.nbytes,
            _rotation(partial(_run_kernel, kernel), xs, qws), check, kernel.backend,
        )

    def baselines(self, dtype: str) -> dict[str, Baseline | str]:
        """Each of BASELINES, or why it cannot run here."""
        if dtype not in self._baselines:
            self._baselines[dtype] = _make_baselines(self, dtype)
        return self._baselines[dtype]

    def baseline_candidate(self, name: str, baseline: Baseline, xs: list) -> Candidate:
        inputs = [baseline.convert(x) for x in xs]
        calls = _rotation(baseline.run, inputs, baseline.weights)
        return Candidate(name, baseline.label, baseline.weight_bytes, inputs[0].nbytes, calls)


def _run_kernel(kernel, x, qw):
    return qkernels.matmul(x, qw, kernel.mode, kernel=kernel.name)


def _make_baselines(layer: Layer, dtype: str) -> dict[str, Baseline | str]:
    w32 = layer.copies(layer.w)
    N, K = layer.N, layer.K
    result: dict[str, Baseline | str] = {
        BASELINES[0]: Baseline("f32", layer.w.nbytes, w32, lambda x, w: x @ w.T, lambda x: x.astype(np.float32))
    }
    try:
        import torch
    except ImportError:
        return result | {name: "torch is not installed" for name in BASELINES[1:]}
    F = torch.nn.functional

    def f32(x):
        return torch.from_numpy(x.astype(np.float32))

    def linear_bf16():
        w = torch.from_numpy(layer.w).to(torch.bfloat16)
        return Baseline("bf16", w.nbytes, layer.copies(w), F.linear, lambda x: torch.from_numpy(x).to(w.dtype))

    def dynamic_int8():
        # skip_init: the weights are replaced at once, so random initialization would be wasted time.
        linear = torch.nn.utils.skip_init(torch.nn.Linear, K, N, bias=False)
        linear.weight.data = torch.from_numpy(layer.w)
        spec = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        module = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), spec, dtype=torch.qint8)
        copies = [module] + [copy.deepcopy(module) for _ in range(layer.count(N * K) - 1)]
        return Baseline("a8 w8/ch", N * K, copies, lambda x, m: m(x), f32)

    def int8pack():
        act = getattr(torch, dtype)
        weights = [
            (torch.from_numpy(qw.data), torch.from_numpy(qw.scales[:, 0].copy()).to(act))
            for qw in layer.quantized(8, K)
        ]
        run = lambda x, w: torch.ops.aten._weight_int8pack_mm(x, *w)  # noqa: E731
        return Baseline("a16 w8/ch", N * K + N * act.itemsize, weights, run, torch.from_numpy)

    builders = {
        BASELINES[1]: lambda: Baseline("f32", layer.w.nbytes, [torch.from_numpy(w) for w in w32], F.linear, f32),
        BASELINES[2]: linear_bf16,
        BASELINES[3]: dynamic_int8,
        BASELINES[4]: int8pack,
    }
    for name, build in builders.items():
        try:
            with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
                warnings.simplefilter("ignore")
                result[name] = build()
        except Exception as error:  # a torch build without this operator or engine
            result[name] = f"{type(error).__name__}: {error}"
    return result


def measure(calls: list[Callable[[], Any]], budget: float, min_repeats: int = MIN_REPEATS) -> list[float]:
    """Seconds per call, cycling through calls, until `budget` seconds are spent (within the repeat limits)."""
    return measure_together([calls], budget, min_repeats)[0]


def measure_together(candidates: list[list[Callable[[], Any]]], budget: float,
                     min_repeats: int = MIN_REPEATS) -> list[list[float]]:
    """Seconds per call of several candidates (each a list of calls to cycle through), timed in turns
    of about SLICE seconds each until each has had `budget` seconds (within the repeat limits).

    Taking turns puts every candidate in the same minutes, so their ratios hold on a shared machine
    whose speed drifts from minute to minute, where timing one after the other would not."""
    times: list[list[float]] = [[] for _ in candidates]
    spent = [0.0] * len(candidates)  # sum(times[i]), kept as it grows

    def wanted(i: int) -> bool:
        n = len(times[i])
        return n < min_repeats or (n < MAX_REPEATS and spent[i] < budget)

    while any(wanted(i) for i in range(len(candidates))):
        for i, calls in enumerate(candidates):
            turn_start, turn_end = len(times[i]), spent[i] + SLICE  # a turn: at least one call
            while wanted(i) and (len(times[i]) == turn_start or spent[i] < turn_end):
                call = calls[len(times[i]) % len(calls)]
                t0 = time.perf_counter()
                call()
                times[i].append(time.perf_counter() - t0)
                spent[i] += times[i][-1]
    return times


# --- the command -------------------------------------------------------------------------------


def _ints(text: str, separator: str = ",") -> list[int]:
    try:
        values = [int(n) for n in text.lower().split(separator)]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by {separator!r}")
    return values


def _shapes(text: str) -> list[tuple[int, int]]:
    shapes = [tuple(_ints(item, "x")) for item in text.split(",")]
    if any(len(shape) != 2 for shape in shapes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NxK[,NxK...], e.g. 4096x4096,11008x4096")
    return shapes


def _subset(choices):
    def parse(text: str) -> list:
        items = [type(choices[0])(item) for item in text.split(",")]
        if not set(items) <= set(choices):
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(map(str, choices))}")
        return items

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="4096x4096 at M=1,16 only, 0.3 s per row: well under a minute, even on the ref backend")
    parser.add_argument("--shapes", type=_shapes,
                        help="layers as NxK = output x input features, comma-separated "
                        "(default 4096x4096,11008x4096,4096x11008)")
    parser.add_argument("--m", type=_ints, help="activation rows M, comma-separated (default 1,16,256)")
    parser.add_argument("--modes", type=_subset(MODES), default=list(MODES), help="a16,a8 (default both)")
    parser.add_argument("--bits", type=_subset(BITS), default=list(BITS), help="weight bits 4,8 (default both)")
    parser.add_argument("--group-size", type=int,
                        help="weight group size for every bit width (default: 4-bit 128, 8-bit per channel)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="activation and output dtype (default float16)")
    parser.add_argument("--backend", help="time only this backend's kernels (the baselines still run)")
    parser.add_argument("--budget", type=float,
                        help=f"seconds of timed calls per row, at least {MIN_REPEATS} calls (default 2, --quick 0.3)")
    parser.add_argument("--max-call", type=float,
                        help="skip a row whose single call is estimated to take longer (default 5 s, --quick 1 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the machine description and every row as JSON")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except (TypeError, KeyError):  # NumPy before 1.26 prints its configuration only
        return "unknown BLAS"


def copy_bandwidth(nbytes: int) -> float:
    """GB/s of np.copyto (one thread; bytes read plus bytes written), median of 5."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # the first copy takes the page faults: untimed
    times = measure([partial(np.copyto, dst, src)], 0.0, 5)
    return 2 * src.nbytes / statistics.median(times) / 1e9


def system_info(llc: int) -> dict:
    try:
        import torch

        torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "not installed"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_features": qkernels.cpu_features(),
        "llc_bytes": llc,
        "qkernels": qkernels.__version__,
        "library": str(qkernels.library_path),
        "backends_available": [b.name for b in qkernels.backends() if b.available],
        "numpy": f"{np.__version__} ({_blas()})",
        "torch": torch_version,
        "copy_gbps": copy_bandwidth(max(4 * llc, 64 << 20)),
    }


_HEADER = (f"{'layer':<11} {'M':>4}  {'mode/weights':<12} {'kernel / baseline':<30} "
           f"{'ms':>9} {'GB/s':>7} {'GOP/s':>7} {'vs np':>7}  check")


def _print_row(row: dict) -> None:
    name = row["name"] + (" *" if row["auto"] else "")
    start = f"{row['layer']:<11} {row['M']:>4}  {row['label']:<12} {name:<30}"
    if "median_ms" not in row:
        print(f"{start} {row['note']}", flush=True)
        return
    speedup = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
    numbers = f"{row['median_ms']:9.3f} {row['gbps']:7.2f} {row['gops']:7.2f} {speedup:>7}"
    print(f"{start} {numbers}  {row['check']}", flush=True)
    if row.get("note"):
        print(f"    {row['note']}", flush=True)


def _check_row(cand: Candidate, estimate: float | None, max_call: float) -> tuple[dict, int, list[float] | None]:
    """Run a candidate once (its warm-up) and check the result: the row so far, the output's bytes
    (0 when there is none), and its times: [] if it is not timed, [one call] if that call is all it
    gets, None if it is to be timed with the others."""
    if estimate is not None and estimate > max_call:
        return {"note": f"skipped: too slow (est. {estimate:.1f} s)"}, 0, []
    try:
        t0 = time.perf_counter()
        y = cand.calls[0]()
        first = time.perf_counter() - t0
    except Exception as error:  # a baseline whose operator this torch build lacks, or a kernel error
        if cand.check is None:
            return {"note": f"skipped: {type(error).__name__}: {error}"}, 0, []
        return {"check": "ERROR", "note": f"error: {type(error).__name__}: {error}"}, 0, []
    row: dict = {"check": "-"}
    if cand.check:
        try:
            cand.check(y)
            row["check"] = "ok"
        except AssertionError as error:
            row.update(check="FAIL", note=str(error))
    # One call past the limit (no estimate yet at the smallest M) is its own single measurement.
    if first > max_call:
        row.setdefault("note", "timed once: one call takes longer than --max-call")
        return row, y.nbytes, [first]
    return row, y.nbytes, None


def _timed(row: dict, cand: Candidate, output_bytes: int, times: list[float]) -> dict:
    median = statistics.median(times)
    return row | {
        "median_ms": median * 1e3,
        "gbps": (cand.weight_bytes + cand.input_bytes + output_bytes) / median / 1e9,
        "repeats": len(times),
        "copies": len(cand.calls),
    }


def run(args: argparse.Namespace) -> int:
    shapes = args.shapes or (SHAPES[:1] if args.quick else SHAPES)
    ms = sorted(args.m or ((1, 16) if args.quick else MS))
    budget = args.budget or (0.3 if args.quick else 2.0)
    max_call = args.max_call or (1.0 if args.quick else 5.0)
    kernels = [k for k in qkernels.kernels() if k.available and k.mode in args.modes and args.dtype in k.dtypes]
    if args.backend:
        info = {b.name: b for b in qkernels.backends()}.get(args.backend)
        if info is None or not info.available:
            names = ", ".join(b.name for b in qkernels.backends())
            why = info.reason if info else f"unknown backend; choose from {names}"
            print(f"qkernels bench: --backend {args.backend}: {why}", file=sys.stderr)
            return 2
        kernels = [k for k in kernels if k.backend == args.backend]

    llc = llc_bytes()
    system = system_info(llc)
    print(f"qkernels {system['qkernels']} ({system['library']}); "
          f"backends available: {', '.join(system['backends_available'])}")
    print(f"CPU: {system['cpu']}, {system['cores']} cores ({system['usable_cores']} usable), "
          f"features: {' '.join(system['cpu_features']) or 'none'}, LLC {llc >> 20} MiB")
    print(f"NumPy {system['numpy']}; torch {system['torch']}")
    print(f"memory copy bandwidth: {system['copy_gbps']:.1f} GB/s (np.copyto, one thread, read + write)")
    print(f"activations {args.dtype}; time: median of >= {MIN_REPEATS} calls over weight copies > 2x LLC, "
          f"{budget:g} s per row, the rows of one layer and M timed in turns; GB/s: weights (packed) + activations + output; "
          f"GOP/s: 2*M*N*K; vs np: speed-up over numpy f32\n")
    print(_HEADER, flush=True)

    rows: list[dict] = []
    last: dict[tuple, tuple[int, float]] = {}  # (layer, name, label) -> (M, seconds) of its last row
    for N, K in shapes:
        try:
            layer = Layer(N, K, llc)
            configs = [(bits, group_size_for(bits, K, args.group_size)) for bits in args.bits]
            for bits, G in configs:
                layer.quantized(bits, G)
        except qkernels.QKernelsError as error:
            print(f"{N}x{K}: {error}", file=sys.stderr)
            return 2
        unavailable: dict[str, list[str]] = {}  # why -> the baselines it stops
        for name, why in layer.baselines(args.dtype).items():
            if isinstance(why, str):
                unavailable.setdefault(why, []).append(name)
        for why, names in unavailable.items():
            print(f"note: {N}x{K}: {', '.join(names)} skipped: {why}", flush=True)
        for M in ms:
            xs = layer.activations(M, args.dtype)
            candidates = [layer.baseline_candidate(name, b, xs)
                          for name, b in layer.baselines(args.dtype).items() if isinstance(b, Baseline)]
            for bits, G in configs:
                for mode in args.modes:
                    picked = qkernels.select(xs[0], layer.quantized(bits, G)[0], mode).name
                    for k in kernels:
                        runs = G % k.group_multiple == 0 and (K % G == 0 or k.ragged_groups)  # format v2
                        if k.mode == mode and bits in k.bits and runs:
                            candidates.append(layer.kernel_candidate(k, bits, G, xs))
                            candidates[-1].auto = k.name == picked
            group = []  # (key, row, candidate, output bytes, times or None) of this layer and M
            for cand in candidates:
                key = (N, K, cand.name, cand.label)
                estimate = last[key][1] * M / last[key][0] if key in last else None  # time grows at most ~M
                row = {"layer": f"{N}x{K}", "N": N, "K": K, "M": M, "label": cand.label, "name": cand.name,
                       "backend": cand.backend, "auto": cand.auto}
                checked, output_bytes, times = _check_row(cand, estimate, max_call)
                group.append((key, row | checked, cand, output_bytes, times))
            # The candidates without times take turns, each from its second copy (the check ran the first).
            measured = iter(measure_together(
                [cand.calls[1:] + cand.calls[:1] for _, _, cand, _, times in group if times is None], budget))
            numpy_ms = None
            for key, row, cand, output_bytes, times in group:
                if times is None:
                    times = next(measured)
                if times:
                    row = _timed(row, cand, output_bytes, times)
                    last[key] = (M, row["median_ms"] / 1e3)
                    if cand.name == BASELINES[0]:
                        numpy_ms = row["median_ms"]
                    row["gops"] = 2 * M * N * K / row["median_ms"] / 1e6
                    row["speedup"] = numpy_ms and numpy_ms / row["median_ms"]
                rows.append(row)
                _print_row(row)
    print("\n* = the kernel automatic dispatch picks for that problem")

    if args.json:
        Path(args.json).write_text(json.dumps({"system": system, "rows": rows}, indent=1) + "\n")
        print(f"rows written to {args.json}")
    failed = [r for r in rows if r.get("check") in ("FAIL", "ERROR")]
    if failed:
        print(f"{len(failed)} qkernels result(s) out of tolerance or in error", file=sys.stderr)
    return 1 if failed else 0
