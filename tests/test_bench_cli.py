"""`qkernels bench` end to end on tiny layers with the shortest budgets: every measurement prints
its rows and writes them, with the command, to the JSON file. No timing is asserted."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import qkernels
from qkernels import cli
from qkernels.bench import command, layers, llm, sweep

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
    for k in qkernels.kernels():  # every kernel that runs 4-bit per channel (G = K = 128), float16, has a row
        listed = any(line.startswith("64x128") and f"{k.mode} w4/ch" in line and k.name in line for line in lines)
        assert listed == (k.available and k.runs(k.mode, 4, 128, 128, "float16")), k.name
    rows = [r for r in report["rows"] if r["measurement"] == "layers"]
    assert all(r["check"] == "ok" for r in rows if r["backend"] != "baseline")
    # The selection check: one per mode, the picked kernel (the row marked *) against the fastest.
    checks = [r for r in report["rows"] if r["measurement"] == "dispatch"]
    assert len(rows) + len(checks) == len(report["rows"])
    assert sorted(c["label"] for c in checks) == ["a16 w4/ch", "a8 w4/ch"]
    for c in checks:
        picked = next(r for r in rows if r["label"] == c["label"] and r["auto"])
        assert c["picked"] == picked["name"] and c["vs_fastest"] == picked["vs_fastest"] >= 1
    compared = [c for c in checks if c["kernels"] > 1]
    slow = sum(c["vs_fastest"] > sweep.DISPATCH_SLACK for c in compared)
    assert f"in {len(compared) - slow} of {len(compared)} cases" in out


def test_dispatch_check_names_a_slower_pick(capsys):
    def row(name, ms, auto=False, label="a8 w4/g128"):
        return {"layer": "64x128", "M": 16, "label": label, "name": name, "backend": "x", "auto": auto,
                "median_ms": ms}

    rows = [row("numpy", 0.1) | {"backend": "baseline", "auto": False}, row("fast", 1.0), row("picked", 1.5, True),
            row("fast_c4x8 (stateless)", 0.5), row("alone", 2.0, True, "a16 w4/g128")]
    checks = sweep.dispatch_check(rows)
    assert [(c["label"], c["fastest"], c["vs_fastest"], c["kernels"]) for c in checks] == [
        ("a8 w4/g128", "fast", 1.5, 2), ("a16 w4/g128", "alone", 1.0, 1)]
    sweep.print_dispatch_checks(checks)
    out = capsys.readouterr().out
    assert "in 0 of 1 cases (1 more with one kernel timed):" in out
    assert "slower: 64x128 M=16 a8 w4/g128: picked picked, 1.50x the time of fast" in out


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
    kernel = next(k for k in qkernels.kernels()
                  if k.available and k.canonical and "float32" in k.dtypes and 64 % k.group_multiple == 0)
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


def _auto_kernel(N: int, K: int, M: int, mode: str, bits: int) -> str:
    """The kernel automatic dispatch picks for float16 activations on weights of the bench's format."""
    qw = qkernels.quantize_weights(np.zeros((N, K), np.float32), bits=bits, group_size=layers.group_size_for(bits, K))
    return qkernels.select(np.zeros((M, K), np.float16), qw, mode).name


def test_llm(tmp_path, capsys):
    """--llm: every row at each M, each qkernels row checked and named by the kernel dispatch picks,
    the memory floor at M = 1, and the ratios in a column per layer."""
    pytest.importorskip("torch")
    out, report = _bench(tmp_path, capsys, "--llm", "--shapes", "64x256,32x512", "--m", "1,16,32", "--threads", "1")
    rows = [r for r in report["rows"] if r["measurement"] == "llm"]
    for layer, (N, K) in (("64x256", (64, 256)), ("32x512", (32, 512))):
        for M in (1, 16, 32):
            found = {r["key"]: r for r in rows if r["layer"] == layer and r["M"] == M}
            qkernels_rows = {"a8 w4": ("a8", 4), "a8 w8": ("a8", 8), "a16 w4": ("a16", 4)}
            baselines = {"torch linear bf16", "torch dynamic int8 (fbgemm)"}
            assert set(found) == set(qkernels_rows) | baselines | ({"memory floor"} if M == 1 else set())
            for key, (mode, bits) in qkernels_rows.items():
                row = found[key]
                assert row["check"] == "ok" and row["name"] == _auto_kernel(N, K, M, mode, bits)
                assert row["median_ms"] > 0 and ("vs_floor" in row) == (M == 1)
                assert f"{layer:<10}  {M:>4}  {row['label']:<11}  {row['name']}" in out
    ratios = [r for r in report["rows"] if r["measurement"] == "llm-ratio"]
    assert [r["M"] for r in ratios] == [32] * 5 + [1, 1, 16]  # prefill: the largest M
    assert all(r["64x256"] > 0 and r["32x512"] > 0 for r in ratios)
    lines = out.splitlines()
    for ratio in ratios:
        line = next(line for line in lines if line.startswith(ratio["ratio"]))
        assert line.count("met") == 2  # "met" or "NOT met", for each layer
    assert "read bandwidth" in out and "qkernels kernels used" in out
    for row in rows:
        assert row["threads"] == 1  # the run's count, not the machine description's default
        if row["key"] != "memory floor" and row["backend"] != "baseline":
            assert "note" not in row  # rotated past the (64 KiB) LLC
            assert row["weight_bytes"] == qkernels.quantize_weights(
                np.zeros((row["N"], row["K"]), np.float32), bits=int(row["key"][-1]),
                group_size=128 if row["key"].endswith("4") else None).nbytes  # the format's bytes, no pack's


@pytest.mark.parametrize("options", [["--llm", "--bits", "4"], ["--llm", "--modes", "a8"],
                                     ["--stateless", "--backend", "ref"], ["--overhead", "--shapes", "64x64"],
                                     ["--threads", "1"]])
def test_options_a_measurement_would_ignore_are_refused(tmp_path, capsys, options):
    assert cli.main(["bench", *options]) == 2
    assert "not read by the measurement chosen" in capsys.readouterr().err


def test_llm_says_when_copies_cannot_reach_past_the_llc(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(layers, "MAX_COPIES", 1)
    _out, report = _bench(tmp_path, capsys, "--llm", "--shapes", "16x256", "--m", "1", "--threads", "1")
    rows = [r for r in report["rows"] if r["measurement"] == "llm" and r["backend"] not in ("baseline", "")]
    assert rows and all(r["note"].startswith("weights NOT rotated past the LLC") for r in rows)


def test_llm_within_a_backend(tmp_path, capsys):
    pytest.importorskip("torch")
    _out, report = _bench(tmp_path, capsys, "--llm", "--backend", "ref", "--shapes", "16x256", "--m", "1",
                          "--threads", "1")
    assert {r["backend"] for r in report["rows"] if r["measurement"] == "llm"} == {"ref", "baseline"}


def test_llm_restores_the_thread_counts(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    before = (qkernels.get_num_threads(), torch.get_num_threads())
    _bench(tmp_path, capsys, "--llm", "--shapes", "16x256", "--m", "1", "--threads", "1")
    assert (qkernels.get_num_threads(), torch.get_num_threads()) == before


def test_info_shows_dispatch_per_m(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    qw = qkernels.quantize_weights(np.zeros((64, 512), np.float32), bits=4, group_size=128)
    picks = {(mode, M): qkernels.select(np.zeros((M, 512), np.float16), qw, mode)
             for mode in ("a16", "a8") for M in cli.DISPATCH_MS}
    for mode in ("a16", "a8"):
        assert f"{mode:5} " + " ".join(f"{picks[mode, M].name:28}" for M in cli.DISPATCH_MS).rstrip() in out
    for b in qkernels.backends():
        row = next(line for line in out.splitlines() if line.startswith(f"{b.name} "))
        for mode in ("a16", "a8"):
            ms = [str(M) for M in cli.DISPATCH_MS if picks[mode, M].backend == b.name]
            assert (f"{mode} M={','.join(ms)}" in row) == bool(ms)


def test_llm_copies_share_the_canonical_arrays_only_for_packs(monkeypatch):
    """Where dispatch runs on packs of a backend's own layout, weight copies share the canonical
    arrays (each packs its own); where a backend borrows the arrays, each copy needs its own."""
    shared = layers.Layer(8, 256, llc=64 << 10, share_arrays=True).quantized(4, 128)
    assert len(shared) > 1 and all(qw.data is shared[0].data for qw in shared)
    copied = layers.Layer(8, 256, llc=64 << 10).quantized(4, 128)
    assert not any(np.shares_memory(qw.data, copied[0].data) for qw in copied[1:])
    own_layout = {b.name: b.own_layout for b in qkernels.backends()}
    monkeypatch.setenv("QKERNELS_BACKEND", "ref")
    assert llm.packs_own_layout("float16") == own_layout["ref"]


def test_llm_rotation_note_keeps_the_checks_note():
    """The rotation note replaced a failed check's message."""

    def wrong(_y):
        raise AssertionError("3 outputs out of tolerance")

    cand = layers.Candidate("bad", "a8 w4/g128", 1, 1, [lambda: np.zeros(4), lambda: np.zeros(4)], wrong, backend="ref")
    layer = type("L", (), {"N": 4, "K": 4, "llc": 1 << 20})()
    (row,) = llm._time_group(layer, 1, {"a8 w4": cand}, 0.01, 5.0, {})
    assert row["check"] == "FAIL" and row["note"].startswith("3 outputs out of tolerance; weights NOT rotated")
