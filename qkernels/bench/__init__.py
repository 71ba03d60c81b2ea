"""`qkernels bench`: every available kernel on LLM-shaped layers, against float and int8 baselines,
and focused measurements of call overhead, the stateless path and decode under contention.

    layers     the layers timed, their weight copies, and the candidates that run on them
    baselines  NumPy and PyTorch implementations of a layer
    timing     repeated calls in turns (measure, measure_together)
    report     the machine description, tables, the JSON file
    sweep      the default table: every kernel and baseline on each layer and M
    overhead, stateless, contended   the focused measurements (--overhead, --stateless, --contended)
    command    the command's arguments and run

The bench/ pytest-benchmark suite reuses Layer and its candidates.
"""

from .baselines import BASELINES, Baseline
from .command import add_arguments, run
from .layers import BITS, MODES, MS, SHAPES, Candidate, Layer, group_size_for, llc_bytes, weights_label
from .timing import MAX_REPEATS, MIN_REPEATS, measure, measure_together

__all__ = [
    "BASELINES",
    "BITS",
    "Baseline",
    "Candidate",
    "Layer",
    "MAX_REPEATS",
    "MIN_REPEATS",
    "MODES",
    "MS",
    "SHAPES",
    "add_arguments",
    "group_size_for",
    "llc_bytes",
    "measure",
    "measure_together",
    "run",
    "weights_label",
]
