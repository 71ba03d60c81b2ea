"""The qkernels command: `qkernels info`, `qkernels bench` and `qkernels eval` (also `python -m qkernels`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import numpy as np


def info(_args: argparse.Namespace) -> int:
    import qkernels
    from qkernels import dispatch

    print(f"qkernels {qkernels.__version__} (C ABI {qkernels.lib.qk_abi_version()})")
    print(f"library: {qkernels.library_path}")
    print(f"CPU features: {' '.join(dispatch.cpu_features()) or '(none detected)'}")
    print(f"threads: {dispatch.get_num_threads()} (QKERNELS_NUM_THREADS, or qkernels.set_num_threads)")
    env = os.environ.get("QKERNELS_BACKEND")
    if env:
        print(f"QKERNELS_BACKEND={env} (forces automatic dispatch)")
    # What automatic dispatch picks for a typical LLM layer: 4-bit, group 128, float16 activations.
    qw = qkernels.quantize_weights(np.zeros((8, 256), dtype=np.float32), bits=4, group_size=128)
    x = np.zeros((1, 256), dtype=np.float16)
    chosen = {}
    for mode in ("a16", "a8"):
        try:
            chosen[mode] = qkernels.select(x, qw, mode)
        except qkernels.QKernelsError as error:
            print(f"dispatch for mode {mode}: {error}")
    print()
    print(f"{'backend':18} {'compiled':9} {'detected':9} {'chosen':12} note")
    for b in dispatch.backends():
        picked = ",".join(mode for mode, k in chosen.items() if k.backend == b.name) or "-"
        yes = lambda flag: "yes" if flag else "no"  # noqa: E731
        print(f"{b.name:18} {yes(b.compiled):9} {yes(b.detected):9} {picked:12} {b.reason}")
    print()
    print(f"{'kernel':28} {'backend':18} {'mode':5} {'bits':5} {'group size':14} {'best for M':10} available")
    for k in dispatch.kernels():
        bits = "/".join(map(str, k.bits))
        groups = ("any" if k.group_multiple == 1 else f"x{k.group_multiple}") + (
            f" <={k.max_group_size}" if k.max_group_size else ""
        )
        best_m = f"<={k.max_m}" if k.max_m else "any"
        print(f"{k.name:28} {k.backend:18} {k.mode:5} {bits:5} {groups:14} {best_m:10} {k.available}")
    return 0


def bench(args: argparse.Namespace) -> int:
    from qkernels.bench import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qkernels", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("info", help="CPU features, backends (compiled / detected / chosen), kernels, version")
    bench_parser = commands.add_parser("bench", help="time every available backend against float baselines")
    from qkernels.bench import add_arguments

    add_arguments(bench_parser)
    eval_parser = commands.add_parser(
        "eval", help="quantize all-MiniLM-L6-v2 with each method: embedding quality, size, speed (eval extra)"
    )
    from qkernels.evaluate.run import add_arguments as add_eval_arguments

    add_eval_arguments(eval_parser)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["qkernels", *(sys.argv[1:] if argv is None else argv)])  # for bench's JSON
    if args.command == "bench":
        return bench(args)
    if args.command == "eval":
        from qkernels.evaluate.run import run as run_eval

        return run_eval(args)
    return info(args)


if __name__ == "__main__":
    sys.exit(main())
