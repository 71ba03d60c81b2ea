"""The CUDA benchmark of issue 17, run by cuda_check.sh on a GPU machine: qkernels' cuda backend
against cuBLAS float16 (torch.matmul), torch._weight_int4pack_mm (4-bit, groups of 128) and
torch._int_mm (int8), on the issue's shapes. Each candidate is captured in a CUDA graph that runs
it once on each of several weight copies, together larger than twice the L2 cache, so that the
weights come from DRAM as in a model's forward pass; a time is the median over replays of the graph
divided by the copies. The table is the project's bench table (qkernels.bench.report.print_table);
ratios are each candidate's speed-up over cuBLAS float16 in the same run.

No GPU has run this yet: see README, "The CUDA backend".
"""

from __future__ import annotations

import math
import statistics
import sys

# (case, mode, bits, M, N, K): the targets of issue 17.
CASES = [
    ("W4A16 g128", "a16", 4, 1, 8192, 8192),
    ("W4A16 g128", "a16", 4, 16, 8192, 8192),
    ("W4A16 g128", "a16", 4, 64, 8192, 8192),
    ("W8A8", "a8", 8, 4096, 8192, 8192),
]
BASELINE = "cuBLAS fp16"
COLUMNS = {  # the bench table's columns: title -> (row key, width, decimals)
    "case": ("case", 11, None), "M": ("M", 5, 0), "N": ("N", 5, 0), "K": ("K", 5, 0),
    "candidate": ("candidate", 26, None), "us": ("us", 9, 1), f"x {BASELINE}": ("speedup", 14, 2),
    "note": ("note", 0, None),
}


def rows_for(case: str, M: int, N: int, K: int, timings: dict[str, float | str]) -> list[dict]:
    """Table rows of one shape: timings maps a candidate to its microseconds, or to why it did not
    run (a string). The speed-up is over the baseline's time in the same run, when it ran."""
    base = timings.get(BASELINE)
    rows = []
    for candidate, t in timings.items():
        row = {"case": case, "M": M, "N": N, "K": K, "candidate": candidate}
        if isinstance(t, str):
            row["note"] = t
        else:
            row["us"] = t
            if isinstance(base, float):
                row["speedup"] = base / t
        rows.append(row)
    return rows


def _time_graph(torch, steps, copies: int, replays: int = 20) -> float:
    """Microseconds per step: `steps(i)` runs on weight copy i; one graph runs every copy once."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):  # warm-up: packs, scratch and cuBLAS workspaces before the capture
            steps(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            steps(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / copies)
    return statistics.median(times)


def _candidates(torch, qkernels, mode: str, bits: int, M: int, N: int, K: int, copies: int):
    """candidate name -> steps(i) function, or the reason it cannot run here."""
    w = torch.randn(N, K, device="cuda", dtype=torch.float16)
    x = torch.randn(M, K, device="cuda", dtype=torch.float16)
    found: dict = {}
    dense = [w.clone() for _ in range(copies)]
    found[BASELINE] = lambda i: torch.matmul(x, dense[i].t())
    q = qkernels.quantize_weights(w.float().cpu().numpy(), bits=bits, group_size=128 if bits == 4 else None)
    out = torch.empty(M, N, device="cuda", dtype=torch.float16)
    try:  # one QuantizedWeight per copy: each packs its own device copy on the warm-up run
        packed = [qkernels.QuantizedWeight(q.data, q.scales, q.zero_points, q.bits, q.group_size, q.shape)
                  for _ in range(copies)]
        found[f"qkernels cuda {mode}"] = lambda i: qkernels.matmul(x, packed[i], mode, out=out)
    except Exception as error:  # noqa: BLE001 - reported in the table
        found[f"qkernels cuda {mode}"] = f"{type(error).__name__}: {error}"
    if mode == "a16":
        try:
            # torch's tinygemm layout from uint8 [N, K/2] (two 4-bit values a byte), 8 inner k-tiles.
            q = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device="cuda")
            packed4 = torch._convert_weight_to_int4pack(q, 8)
            sz = torch.ones(K // 128, N, 2, device="cuda", dtype=torch.bfloat16)
            xb = x.to(torch.bfloat16)
            weights4 = [packed4.clone() for _ in range(copies)]
            found["torch _weight_int4pack_mm"] = lambda i: torch._weight_int4pack_mm(xb, weights4[i], 128, sz)
        except Exception as error:  # noqa: BLE001
            found["torch _weight_int4pack_mm"] = f"{type(error).__name__}: {error}"
    else:
        xi = torch.randint(-127, 128, (M, K), dtype=torch.int8, device="cuda")
        # W^T as a column-major [K, N] view of the row-major [N, K] weights, as a linear layer holds them.
        weights8 = [torch.randint(-127, 128, (N, K), dtype=torch.int8, device="cuda").t() for _ in range(copies)]
        found["torch _int_mm"] = lambda i: torch._int_mm(xi, weights8[i])
    return found


def main() -> int:
    import torch

    import qkernels
    from qkernels.bench.report import print_table

    properties = torch.cuda.get_device_properties(0)
    l2 = getattr(properties, "L2_cache_size", 50 << 20)
    print(f"GPU: {properties.name}, {properties.multi_processor_count} SMs, L2 {l2 >> 20} MiB; torch {torch.__version__}; "
          f"qkernels {qkernels.__version__}")
    rows = []
    for case, mode, bits, M, N, K in CASES:
        copies = max(2, math.ceil(2 * l2 / (N * K * 2)) + 1)  # the float16 copies alone exceed 2x L2
        timings: dict[str, float | str] = {}
        for name, steps in _candidates(torch, qkernels, mode, bits, M, N, K, copies).items():
            if isinstance(steps, str):
                timings[name] = steps
                continue
            try:
                timings[name] = _time_graph(torch, steps, copies)
            except Exception as error:  # noqa: BLE001 - a failed candidate is a row, not the end of the run
                timings[name] = f"{type(error).__name__}: {error}"
        rows += rows_for(case, M, N, K, timings)
    print_table(COLUMNS, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
