"""What `qkernels bench` reports besides its timings: the machine, tables of rows, the JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
from functools import partial
from pathlib import Path

import numpy as np

import qkernels

from .timing import measure


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


def system_info(llc: int, copy_bytes: int) -> dict:
    """The machine and the libraries; copy_bytes: the buffer copy_bandwidth copies (over the LLC)."""
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
        "threads": qkernels.get_num_threads(),
        "numpy": f"{np.__version__} ({_blas()})",
        "torch": torch_version,
        "copy_bytes": copy_bytes,
        "copy_gbps": copy_bandwidth(copy_bytes),
    }


def print_system(system: dict) -> None:
    print(f"qkernels {system['qkernels']} ({system['library']}); "
          f"backends available: {', '.join(system['backends_available'])}; {system['threads']} threads")
    print(f"CPU: {system['cpu']}, {system['cores']} cores ({system['usable_cores']} usable), "
          f"features: {' '.join(system['cpu_features']) or 'none'}, LLC {system['llc_bytes'] >> 20} MiB")
    print(f"NumPy {system['numpy']}; torch {system['torch']}")
    print(f"memory copy bandwidth: {system['copy_gbps']:.1f} GB/s (np.copyto of {system['copy_bytes'] >> 20} MiB, "
          "one thread, read + write)", flush=True)


def print_table(columns: dict[str, tuple[str, int, int | None]], rows: list[dict], header: bool = True) -> None:
    """rows under a header. columns: title -> (row key, width, decimals): text (decimals None) is
    left-aligned, numbers right-aligned; a row without the key shows "-". header=False: rows only,
    for a table printed as its rows come."""

    def cell(value, width: int, decimals: int | None) -> str:
        if decimals is None:
            return f"{'-' if value is None else value:<{width}}"
        return f"{'-' if value is None else format(value, f'.{decimals}f'):>{width}}"

    if header:
        print("  ".join(f"{t:<{w}}" if d is None else f"{t:>{w}}" for t, (_, w, d) in columns.items()).rstrip())
    for row in rows:
        print("  ".join(cell(row.get(k), w, d) for k, w, d in columns.values()).rstrip(), flush=True)


def write_json(path: str, command: str, system: dict, rows: list[dict]) -> None:
    Path(path).write_text(json.dumps({"command": command, "system": system, "rows": rows}, indent=1) + "\n")
    print(f"rows written to {path}")
