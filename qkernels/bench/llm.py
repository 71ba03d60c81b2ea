"""`qkernels bench --llm`: issue 16's figures in one run. Two LLM layers, N x K = 4096 x 14336 (the
MLP down-projection of LLaMA-3-8B and Mistral-7B) and 4096 x 4096 (attention), float16
activations, M = 1 (decode), 16 and 512 (prefill), on the machine's cores: qkernels with automatic
dispatch (A8 4-bit g128, A8 8-bit per channel, A16 4-bit g128) against PyTorch F.linear in
bfloat16 (oneDNN) and dynamic int8 (fbgemm), and at M = 1 against the memory floor: the weight
bytes a call reads over the read bandwidth, measured by a sum timed in turns with the decode rows.
The rows of one layer and M are timed in turns; the ratios of one layer come from those turns."""

from __future__ import annotations

import os
import statistics
import time
from functools import partial

import numpy as np

import qkernels

from .baselines import BASELINES, Baseline, make_baselines
from .layers import Candidate, Layer, group_size_for
from .report import print_table
from .sweep import check_row
from .timing import MIN_REPEATS, measure_together

SHAPES = ((4096, 14336), (4096, 4096))
QUICK_SHAPES = ((4096, 4096),)
MS = (1, 16, 512)  # timed in this order: a row too slow at a small M is skipped at the larger ones
ROWS = (("a8", 4), ("a8", 8), ("a16", 4))  # qkernels: mode and weight bits; a row's key: "a8 w4"
BF16, INT8 = BASELINES[2], BASELINES[3]
FLOOR = "memory floor"
MEMORY_MIB, QUICK_MEMORY_MIB = 768, 256
# A layer's input comes fresh from the layer before it, in cache: two copies, not rotated past the LLC.
ACTIVATION_COPIES = 2
CHECK_ROWS = 8  # of a qkernels result, checked against the oracle (slow on these layers)
PREFILL = "prefill"  # the largest M timed, if over 16
# (M, qkernels row, what it is compared with, target): a baseline's time / the row's >= target, or
# the row's time / the memory floor <= target; issue 16's targets.
RATIOS = (
    (PREFILL, "a8 w4", BF16, 2.0),
    (PREFILL, "a8 w8", BF16, 2.0),
    (PREFILL, "a8 w4", INT8, 4.0),
    (PREFILL, "a8 w8", INT8, 4.0),
    (PREFILL, "a16 w4", BF16, 1.0),
    (1, "a8 w4", FLOOR, 1.2),
    (1, "a16 w4", FLOOR, 1.2),
    (16, "a8 w4", INT8, 2.0),
)
COLUMNS = {"layer": ("layer", 10, None), "M": ("M", 4, 0), "row": ("label", 11, None),
           "kernel / baseline (automatic dispatch)": ("name", 38, None), "ms": ("median_ms", 9, 3),
           "GB/s": ("gbps", 6, 1), "GOP/s": ("gops", 7, 0), "floor ms": ("floor_ms", 8, 3),
           "vs floor": ("vs_floor", 8, 2), "check": ("check", 5, None)}


def read_bandwidth(nbytes: int) -> Candidate:
    """Sums of a float64 buffer of nbytes, on torch's threads (NumPy's one where torch is missing):
    a plain read stream with little arithmetic per byte (float32 sums are bound by their adds)."""
    try:
        import torch

        buffer, how = torch.ones(nbytes // 8, dtype=torch.float64), "torch float64 sum"
    except ImportError:
        buffer, how = np.ones(nbytes // 8), "NumPy float64 sum (one thread)"
    return Candidate(f"read bandwidth: {how}, {nbytes >> 20} MiB", "-", buffer.nbytes, 0, [buffer.sum])


def packs_own_layout(dtype: str) -> bool:
    """Whether the kernels automatic dispatch picks for ROWS run on a pack of their backend's own
    layout (the pack of qkernels.matmul's plan is that of its M = 1 choice): then a call reads
    only its pack, and weight copies need not copy the canonical arrays."""
    own_layout = {b.name: b.own_layout for b in qkernels.backends()}
    qw = qkernels.quantize_weights(np.zeros((64, 512), np.float32), bits=4, group_size=128)
    return all(own_layout[qkernels.select(np.zeros((1, 512), dtype), qw, mode).backend] for mode, _ in ROWS)


def _ratio_title(M: int, row: str, other: str, target: float) -> str:
    if other == FLOOR:
        return f"M = {M}: {row} time / memory floor (<= {target:g})"
    return f"M = {M}: {row} vs {'torch bf16' if other == BF16 else 'torch dynamic int8'} (>= {target:g})"


def ratios(rows: list[dict], layers: list[str], prefill: int | None) -> list[dict]:
    """The RATIOS of each layer, from its rows: one row per ratio, a column per layer."""
    table = []
    for M, row, other, target in RATIOS:
        M = prefill if M == PREFILL else M
        if M not in {r["M"] for r in rows}:
            continue
        result = {"measurement": "llm-ratio", "ratio": _ratio_title(M, row, other, target), "M": M,
                  "row": row, "compared_with": other, "target": target}
        for layer in layers:
            found = {r["key"]: r for r in rows if r["layer"] == layer and r["M"] == M and "median_ms" in r}
            mine = found.get(row, {})
            if other == FLOOR and "vs_floor" in mine:
                value, met = mine["vs_floor"], mine["vs_floor"] <= target
            elif other != FLOOR and mine and other in found:
                value = found[other]["median_ms"] / mine["median_ms"]
                met = value >= target
            else:
                continue
            result[layer] = value
            result.setdefault("met", {})[layer] = met
        table.append(result)
    return table


def _candidates(layer: Layer, M: int, xs: list, configs, baselines: dict, bandwidth_bytes: int) -> dict:
    """Key -> candidate: the qkernels rows, the baselines, and at M = 1 the read bandwidth."""
    candidates = {f"{mode} w{bits}": layer.auto_candidate(mode, bits, G, xs, CHECK_ROWS) for mode, bits, G in configs}
    candidates |= {name: layer.baseline_candidate(name, b, xs) for name, b in baselines.items()
                   if isinstance(b, Baseline)}
    if M == 1:
        candidates[FLOOR] = read_bandwidth(bandwidth_bytes)
    return candidates


def _floors(group: list[dict]) -> None:
    """At M = 1: each qkernels row's memory floor, its weight bytes over the best read bandwidth."""
    bandwidth = next((r for r in group if r["key"] == FLOOR and "best_s" in r), None)
    if bandwidth is None:
        return
    bandwidth["gbps"] = bandwidth["weight_bytes"] / bandwidth["best_s"] / 1e9
    for row in group:
        if row["backend"] != "baseline" and "median_ms" in row:
            row["floor_ms"] = row["weight_bytes"] / bandwidth["gbps"] / 1e6
            row["vs_floor"] = row["median_ms"] / row["floor_ms"]


def _time_group(layer: Layer, M: int, candidates: dict, budget: float, max_call: float, last: dict) -> list[dict]:
    """Checks, then times the candidates of one layer and M in turns; their rows. last: key ->
    (M, seconds) of the key's last timed row, from which a row's time at a larger M is estimated."""
    group = []
    for key, cand in candidates.items():
        estimate = last[key][1] * M / last[key][0] if key in last else None  # time grows at most ~M
        checked, output_bytes, times = check_row(cand, estimate, max_call)
        row = {"measurement": "llm", "layer": f"{layer.N}x{layer.K}", "N": layer.N, "K": layer.K, "M": M,
               "key": key, "label": cand.label, "name": cand.name, "backend": cand.backend,
               "weight_bytes": cand.weight_bytes, "copies": len(cand.calls)} | checked
        if key != FLOOR and cand.weight_bytes * len(cand.calls) <= layer.llc:  # MAX_COPIES reached
            note = "weights NOT rotated past the LLC: too few copies of so small a layer"
            row["note"] = f"{row['note']}; {note}" if row.get("note") else note  # after check_row's
        group.append((row, cand, output_bytes, times))
    # The candidates without times take turns, each from its second copy (the check ran the first).
    measured = iter(measure_together(
        [cand.calls[1:] + cand.calls[:1] for _, cand, _, times in group if times is None], budget))
    rows = []
    for row, cand, output_bytes, times in group:
        times = next(measured) if times is None else times
        if times:
            median = statistics.median(times)
            last[row["key"]] = (M, median)
            row |= {"median_ms": median * 1e3, "best_s": min(times), "repeats": len(times),
                    "gbps": (cand.weight_bytes + cand.input_bytes + output_bytes) / median / 1e9}
            if row["key"] != FLOOR:
                row["gops"] = 2 * M * layer.N * layer.K / median / 1e9
        rows.append(row)
    _floors(rows)
    return rows


def run(args, llc: int, memory: int) -> list[dict]:
    """Prints and returns the rows and the ratios; memory caps weight copies and the bandwidth buffer."""
    started = time.perf_counter()
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    ms = sorted(args.m or MS)
    prefill = ms[-1] if ms[-1] > 16 else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    rotate_bytes, bandwidth_bytes = min(2 * llc, memory), min(4 * llc, memory)
    share_arrays = packs_own_layout(args.dtype)
    print(f"LLM layers: activations {args.dtype}, M = {', '.join(map(str, ms))}; {threads} threads for qkernels and "
          f"torch ({cores} usable cores); qkernels with automatic dispatch; every qkernels result checked "
          f"against the reference ({CHECK_ROWS} rows at most)")
    print(f"weights rotated past the LLC ({llc >> 20} MiB): each row cycles through weight copies of "
          f"{rotate_bytes >> 20} MiB or more (2x LLC = {2 * llc >> 20} MiB, capped at {memory >> 20} MiB, --memory-mib)"
          + ("; qkernels' copies are of the packs it reads (the canonical arrays shared)" if share_arrays else "")
          + ("" if rotate_bytes > llc else ": NOT past the LLC, raise --memory-mib"))
    print(f"activations: {ACTIVATION_COPIES} copies (a layer's input is fresh from the layer before)")
    print(f"memory floor (M = 1): the weights' bytes (the canonical format's: data and float32 scales, "
          f"zero points, offsets; not a pack's overhead) / read bandwidth, the best of "
          f"plain sums over {bandwidth_bytes >> 20} MiB (4x LLC, capped) timed in turns with the decode rows; "
          "its row's GB/s: the best sum's")
    print(f"time: median of >= {MIN_REPEATS} calls, {args.budget:g} s per row, the rows of one layer and M in turns\n")
    restore_torch_threads = _torch_threads(threads)
    previous = qkernels.get_num_threads()
    qkernels.set_num_threads(threads)
    rows: list[dict] = []
    try:
        print_table(COLUMNS, [])
        for N, K in shapes:
            layer = Layer(N, K, llc, rotate_bytes=rotate_bytes, share_arrays=share_arrays)
            configs = [(mode, bits, group_size_for(bits, K, args.group_size)) for mode, bits in ROWS]
            baselines = make_baselines(layer, args.dtype, (BF16, INT8))
            for name, why in baselines.items():
                if isinstance(why, str):
                    print(f"note: {N}x{K}: {name} skipped: {why}", flush=True)
            last: dict = {}
            for M in ms:
                xs = layer.activations(M, args.dtype, ACTIVATION_COPIES)
                candidates = _candidates(layer, M, xs, configs, baselines, bandwidth_bytes)
                group = _time_group(layer, M, candidates, args.budget, args.max_call, last)
                del candidates  # the bandwidth buffer goes before the next M
                print_table(COLUMNS, group, header=False)
                for row in group:
                    row["threads"] = threads  # the JSON's machine description has the default count
                    if row.get("note"):
                        print(f"    {row['name']}: {row['note']}", flush=True)
                rows += group
            del layer, baselines
    finally:
        qkernels.set_num_threads(previous)
        restore_torch_threads()
    layers = [f"{N}x{K}" for N, K in shapes]
    table = ratios(rows, layers, prefill)
    print("\nratios, from the rows above (issue 16's targets); speed-up = the baseline's time / qkernels'")
    columns = {"": ("ratio", 46, None)} | {layer: (layer, 14, None) for layer in layers}
    print_table(columns, [{"ratio": r["ratio"]} | {layer: f"{r[layer]:.2f} {'met' if r['met'][layer] else 'NOT met'}"
                                                    for layer in layers if layer in r} for r in table])
    kernels = {k.name: k for k in qkernels.kernels()}
    used = sorted({r["name"] for r in rows if r["name"] in kernels})
    print("qkernels kernels used (their names say their instruction sets): "
          + (", ".join(f"{name}" + "".join(f" +{f}" for f in kernels[name].cpu_features) for name in used) or "none")
          + f"; CPU features detected: {' '.join(qkernels.cpu_features()) or 'none'}")
    print(f"took {time.perf_counter() - started:.0f} s")
    return rows + table


def _torch_threads(threads: int):
    """Sets torch's threads; returns what restores them (nothing to do without torch)."""
    try:
        import torch
    except ImportError:
        return lambda: None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return partial(torch.set_num_threads, previous)
