"""pytest-benchmark suite configuration: which layers and M values run, and the shared layer.

Smoke mode (--bench-smoke, or QKERNELS_BENCH_SMOKE=1) keeps only the smallest layer at M=1, and
gives `qkernels bench --llm --quick` 1 ms per row and 64 MiB of weight copies.
"""

from __future__ import annotations

import math
import os

import pytest

from qkernels import bench


def pytest_addoption(parser):
    parser.addoption(
        "--bench-smoke", action="store_true",
        help="qkernels benchmarks: only the smallest layer at M=1 (also QKERNELS_BENCH_SMOKE=1)",
    )


def _smoke(config) -> bool:
    return config.getoption("--bench-smoke") or os.environ.get("QKERNELS_BENCH_SMOKE", "0") not in ("", "0")


@pytest.fixture(scope="session")
def smoke(pytestconfig) -> bool:
    return _smoke(pytestconfig)


def pytest_generate_tests(metafunc):
    smoke = _smoke(metafunc.config)
    if "shape" in metafunc.fixturenames:
        shapes = [min(bench.SHAPES, key=math.prod)] if smoke else list(bench.SHAPES)
        # Session scope groups the tests by layer, so that one layer's arrays live at a time.
        metafunc.parametrize("shape", shapes, ids=[f"{N}x{K}" for N, K in shapes], scope="session")
    if "M" in metafunc.fixturenames:
        metafunc.parametrize("M", [1] if smoke else list(bench.MS), ids=lambda M: f"M{M}")


@pytest.fixture(scope="session")
def layer(shape, pytestconfig):
    # Under --benchmark-disable every benchmark runs once, untimed: no copies to rotate through.
    return bench.Layer(*shape, rotate=not pytestconfig.getoption("benchmark_disable", False))
