"""How `qkernels bench` times: repeated calls, cycling through copies, candidates taking turns."""

from __future__ import annotations

import time
from typing import Any, Callable

MIN_REPEATS, MAX_REPEATS = 3, 200
SLICE = 0.05  # seconds of calls per candidate per turn (measure_together)


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
