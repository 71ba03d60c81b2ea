"""`qkernels bench --llm`, the command that produces issue 16's figures, run end to end.

    qkernels bench --llm                                        # the figures (a few minutes)
    QKERNELS_BENCH_SMOKE=1 pytest bench --benchmark-disable     # its --quick form, 1 ms per row

It prints its own table and ratios (no pytest-benchmark fixture: --benchmark-only skips it); this
checks that the run completes, every qkernels result is right and every ratio is computed.
"""

from __future__ import annotations

import importlib.util
import json

from qkernels import cli


def test_llm_command(tmp_path, capsys, smoke):
    path = tmp_path / "llm.json"
    argv = ["bench", "--llm", "--quick", "--json", str(path)]
    assert cli.main(argv + (["--budget", "0.001", "--memory-mib", "64"] if smoke else [])) == 0
    print(capsys.readouterr().out)  # shown with pytest -s
    rows = json.loads(path.read_text())["rows"]
    assert all(r["check"] == "ok" for r in rows if r["measurement"] == "llm" and r["backend"] != "baseline")
    ratios = [r for r in rows if r["measurement"] == "llm-ratio"]
    with_torch = importlib.util.find_spec("torch") is not None  # else only the memory floor's ratios
    assert len(ratios) == 8 and sum("4096x4096" in r for r in ratios) == (8 if with_torch else 2)
