"""bench/device/cuda_bench.py without a GPU: it imports without torch, and its rows (the project's
bench table) carry each candidate's time, its speed-up over cuBLAS float16 in the same run, or why
it did not run."""

import importlib.util
from pathlib import Path

from qkernels.bench.report import print_table

_PATH = Path(__file__).resolve().parent.parent / "bench" / "device" / "cuda_bench.py"
_SPEC = importlib.util.spec_from_file_location("cuda_bench", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_rows_from_fake_timings(capsys):
    timings = {bench.BASELINE: 48.0, "qkernels cuda a16": 12.0, "torch _weight_int4pack_mm": "RuntimeError: no"}
    rows = bench.rows_for("W4A16 g128", 1, 8192, 8192, timings)
    assert [r.get("speedup") for r in rows] == [1.0, 4.0, None]
    assert rows[2]["note"] == "RuntimeError: no" and "us" not in rows[2]
    print_table(bench.COLUMNS, rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["case", "M", "N", "K", "candidate", "us"]
    assert lines[2].split()[-3:] == ["12.0", "4.00", "-"] and lines[3].endswith("RuntimeError: no")


def test_without_the_baseline_there_is_no_ratio():
    rows = bench.rows_for("W8A8", 4096, 8192, 8192, {bench.BASELINE: "no cuBLAS", "torch _int_mm": 600.0})
    assert rows[1]["us"] == 600.0 and "speedup" not in rows[1]


def test_cases_are_the_issues_shapes():
    assert {(c[3], c[4], c[5]) for c in bench.CASES} == {(1, 8192, 8192), (16, 8192, 8192), (64, 8192, 8192),
                                                        (4096, 8192, 8192)}
