"""The default measurement of `qkernels bench`: every available kernel and the baselines on each
layer and M. Every qkernels result is checked against qkernels.reference on the very input it is
timed with; the candidates of one layer and M are timed in turns (measure_together).

It also checks the selection policy (for each M and mode the fastest available kernel wins): for
each layer, M and weight format, the kernel automatic dispatch picks against the fastest kernel
timed beside it on the same path (prepared; the stateless variants are another call)."""

from __future__ import annotations

import statistics
import time

import qkernels

from .baselines import BASELINES, Baseline
from .layers import MS, SHAPES, Candidate, Layer, group_size_for
from .timing import MIN_REPEATS, measure_together

# The picked kernel counts as the fastest within this factor of it: rows timed in turns on a shared
# machine still move by a few per cent.
DISPATCH_SLACK = 1.10

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


def check_row(cand: Candidate, estimate: float | None, max_call: float) -> tuple[dict, int, list[float] | None]:
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


def dispatch_check(rows: list[dict]) -> list[dict]:
    """Per mode and weight format of one layer and M: the kernel automatic dispatch picks against the
    fastest prepared kernel timed beside it (picked / fastest; the rows get "vs_fastest")."""
    checks = []
    for label in dict.fromkeys(r["label"] for r in rows if r["backend"] != "baseline"):
        timed = [r for r in rows if r["label"] == label and r["backend"] != "baseline" and "median_ms" in r
                 and not r["name"].endswith("(stateless)")]
        picked = next((r for r in timed if r["auto"]), None)
        if picked is None:
            continue
        fastest = min(timed, key=lambda r: r["median_ms"])
        picked["vs_fastest"] = picked["median_ms"] / fastest["median_ms"]
        checks.append({"layer": picked["layer"], "M": picked["M"], "label": label, "picked": picked["name"],
                       "fastest": fastest["name"], "vs_fastest": picked["vs_fastest"], "kernels": len(timed)})
    return checks


def print_dispatch_checks(checks: list[dict]) -> None:
    compared = [c for c in checks if c["kernels"] > 1]
    slow = [c for c in compared if c["vs_fastest"] > DISPATCH_SLACK]
    if not compared:
        print(f"automatic dispatch: not checked, no case timed more than one kernel ({len(checks)} cases)")
        return
    alone = f" ({len(checks) - len(compared)} more with one kernel timed)" if len(compared) < len(checks) else ""
    print(f"automatic dispatch picked the fastest kernel timed (or one within {DISPATCH_SLACK - 1:.0%} of it) "
          f"in {len(compared) - len(slow)} of {len(compared)} cases{alone}" + (":" if slow else ""))
    for c in slow:
        print(f"    slower: {c['layer']} M={c['M']} {c['label']}: picked {c['picked']}, "
              f"{c['vs_fastest']:.2f}x the time of {c['fastest']}")


def run(args, kernels: list[qkernels.dispatch.KernelInfo], llc: int) -> list[dict]:
    """Prints and returns the rows of every layer and M of the command's arguments."""
    shapes = args.shapes or (SHAPES[:1] if args.quick else SHAPES)
    ms = sorted(args.m or ((1, 16) if args.quick else MS))
    dtype, budget = args.dtype, args.budget
    print(f"activations {dtype}; time: median of >= {MIN_REPEATS} calls over weight copies > 2x LLC, "
          f"{budget:g} s per row, the rows of one layer and M timed in turns; GB/s: weights (packed) + activations + output; "
          f"GOP/s: 2*M*N*K; vs np: speed-up over numpy f32\n")
    print(_HEADER, flush=True)
    rows: list[dict] = []
    checks: list[dict] = []
    last: dict[tuple, tuple[int, float]] = {}  # (layer, name, label) -> (M, seconds) of its last row
    for N, K in shapes:
        layer = Layer(N, K, llc)
        configs = [(bits, group_size_for(bits, K, args.group_size)) for bits in args.bits]
        for bits, G in configs:
            layer.quantized(bits, G)
        unavailable: dict[str, list[str]] = {}  # why -> the baselines it stops
        for name, why in layer.baselines(dtype).items():
            if isinstance(why, str):
                unavailable.setdefault(why, []).append(name)
        for why, names in unavailable.items():
            print(f"note: {N}x{K}: {', '.join(names)} skipped: {why}", flush=True)
        for M in ms:
            xs = layer.activations(M, dtype)
            candidates = [layer.baseline_candidate(name, b, xs)
                          for name, b in layer.baselines(dtype).items() if isinstance(b, Baseline)]
            for bits, G in configs:
                for mode in args.modes:
                    picked = qkernels.select(xs[0], layer.quantized(bits, G)[0], mode).name
                    for k in kernels:
                        if k.runs(mode, bits, G, K, dtype):
                            candidates.append(layer.kernel_candidate(k, bits, G, xs))
                            candidates[-1].auto = k.name == picked
            group = []  # (key, row, candidate, output bytes, times or None) of this layer and M
            for cand in candidates:
                key = (N, K, cand.name, cand.label)
                estimate = last[key][1] * M / last[key][0] if key in last else None  # time grows at most ~M
                row = {"measurement": "layers", "layer": f"{N}x{K}", "N": N, "K": K, "M": M, "label": cand.label,
                       "name": cand.name, "backend": cand.backend, "auto": cand.auto}
                checked, output_bytes, times = check_row(cand, estimate, args.max_call)
                group.append((key, row | checked, cand, output_bytes, times))
            # The candidates without times take turns, each from its second copy (the check ran the first).
            measured = iter(measure_together(
                [cand.calls[1:] + cand.calls[:1] for _, _, cand, _, times in group if times is None], budget))
            numpy_ms = None
            timed = []
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
                timed.append(row)
            checks += dispatch_check(timed)
            for row in timed:
                _print_row(row)
            rows += timed
    print("\n* = the kernel automatic dispatch picks for that problem (qkernels.matmul)")
    print_dispatch_checks(checks)
    return rows + [{"measurement": "dispatch"} | c for c in checks]
