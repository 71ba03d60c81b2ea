"""`qkernels bench` end to end on tiny layers with the shortest budgets: every measurement prints
its rows and writes them, with the command, to the JSON file. No timing is asserted."""

from __future__ import annotations

import dataclasses
import json

import pytest

import qkernels
from qkernels import cli
from qkernels.bench import command, layers

from qk_support import HAVE_TORCH

QUICK = ["--quick", "--budget", "0.001"]


@pytest.fixture(autouse=True)
def small_cache(monkeypatch):
    """A 64 KiB last-level cache: a few weight copies, and a short copy-bandwidth measurement."""
    monkeypatch.setattr(command, "llc_bytes", lambda: 64 << 10)


def _bench(tmp_path, capsys, *options: str) -> tuple[str, dict]:
    path = tmp_path / "bench.json"
    argv = ["bench", *QUICK, *options, "--json", str(path)]
    assert cli.main(argv) == 0
    report = json.loads(path.read_text())
    assert report["command"] == "qkernels " + " ".join(argv)
    return capsys.readouterr().out, report


def test_layer_table(tmp_path, capsys):
    out, report = _bench(tmp_path, capsys, "--shapes", "64x128", "--m", "1", "--bits", "4")
    lines = out.splitlines()
    for k in qkernels.kernels():
        if k.available:
            assert any(line.startswith("64x128") and f"{k.mode} w4/ch" in line and k.name in line for line in lines)
    assert {r["measurement"] for r in report["rows"]} == {"layers"}
    assert all(r["check"] == "ok" for r in report["rows"] if r["backend"] != "baseline")


def test_overhead(tmp_path, capsys):
    out, report = _bench(tmp_path, capsys, "--overhead")
    paths = ["qkernels.matmul (prepared)", "qk_plan_run (C, cffi)", "quantized_matmul (stateless)",
             "qk_matmul (C, cffi)"] + ["qkernels.matmul (torch tensor)"] * HAVE_TORCH
    for dtype in ("float32", "float16"):
        for mode in ("a16", "a8"):
            for path in paths:
                assert f"{dtype:<8}  {mode:<4}  {path}" in out
    assert len(report["rows"]) == 4 * len(paths) and all(r["median_us"] > 0 for r in report["rows"])


def test_stateless(tmp_path, capsys):
    out, report = _bench(tmp_path, capsys, "--stateless", "--shapes", "32x256")
    assert "a16   quantizedMatMul (C, cffi)" in out and "a8    quantized_matmul (stateless)" in out
    assert [(r["mode"], r["path"]) for r in report["rows"]] == [
        ("a16", "qkernels.matmul (prepared)"), ("a16", "quantized_matmul (stateless)"),
        ("a16", "quantizedMatMul (C, cffi)"), ("a8", "qkernels.matmul (prepared)"),
        ("a8", "quantized_matmul (stateless)"),
    ]


def test_contended_restores_the_thread_count(tmp_path, capsys):
    qkernels.set_num_threads(1)  # not the count it measures last
    try:
        out, report = _bench(tmp_path, capsys, "--contended", "--shapes", "32x256", "--modes", "a8")
        assert qkernels.get_num_threads() == 1
    finally:
        qkernels.set_num_threads(0)
    assert [(r["mode"], r["threads"]) for r in report["rows"]] == [("a8", 1), ("a8", 2)]
    assert "contended_vs_1_thread" in report["rows"][1] and "32x256       a8          2" in out


def test_a_canonical_variant_is_timed_on_the_stateless_path(monkeypatch):
    """A kernel that reads the canonical layout, of a backend with a layout of its own, cannot run on
    packed weights: its candidate calls quantized_matmul and is named so."""
    kernel = next(k for k in qkernels.kernels() if k.available and k.canonical)
    backends = [dataclasses.replace(b, own_layout=b.own_layout or b.name == kernel.backend)
                for b in qkernels.backends()]
    monkeypatch.setattr(qkernels, "backends", lambda: backends)
    calls = []

    def quantized_matmul(*args, **kwargs):
        calls.append(kwargs)
        return qkernels.ops.quantized_matmul(*args, **kwargs)

    monkeypatch.setattr(qkernels, "quantized_matmul", quantized_matmul)
    layer = layers.Layer(8, 64, rotate=False)
    xs = layer.activations(1, "float32")
    candidate = layer.kernel_candidate(kernel, 4, 64, xs)
    assert candidate.name == f"{kernel.name} (stateless)"
    candidate.check(candidate.calls[0]())
    assert calls[0]["kernel"] == kernel.name
    assert candidate.weight_bytes == layer.quantized(4, 64)[0].nbytes
    assert not layer.quantized(4, 64)[0]._plans  # nothing prepared


def test_bench_package_keeps_its_public_names():
    from qkernels import bench

    assert bench.measure_together is bench.timing.measure_together and bench.Layer is layers.Layer
    assert bench.group_size_for(4, 4096) == 128 and bench.group_size_for(4, 64) == 64
