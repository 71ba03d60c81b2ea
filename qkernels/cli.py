"""The qkernels command: `qkernels info`, `qkernels bench` and `qkernels eval` (also `python -m qkernels`)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import numpy as np

DISPATCH_MS = (1, 16, 512)  # decode, a short batch, prefill: the activation rows `qkernels info` shows


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
    # What automatic dispatch (qkernels.matmul's plan) picks for a typical LLM layer: 4-bit, group
    # 128, float16 activations, decode to prefill. Selection reads no data: zeros will do.
    qw = qkernels.quantize_weights(np.zeros((64, 512), dtype=np.float32), bits=4, group_size=128)
    chosen = {}  # (mode, M) -> KernelInfo
    for mode in ("a16", "a8"):
        for M in DISPATCH_MS:
            try:
                chosen[mode, M] = qkernels.select(np.zeros((M, 512), dtype=np.float16), qw, mode)
            except qkernels.QKernelsError as error:
                print(f"dispatch for mode {mode}, M = {M}: {error}")
    header = f"chosen (M = {','.join(map(str, DISPATCH_MS))})"
    print()
    print(f"{'backend':18} {'compiled':9} {'detected':9} {header:28} note")
    # Every backend of qkernels's, those this library lacks last: "compiled no", detection not
    # checked ("-"), and why it is not built.
    for b in dispatch.backends(not_built=True):
        if not b.compiled:
            print(f"{b.name:18} {'no':9} {'-':9} {'-':28} {b.reason}")
            continue
        picked = []  # e.g. "a8 M=1,16": the modes and M this backend runs
        for mode in ("a16", "a8"):
            ms = [str(M) for M in DISPATCH_MS if (mode, M) in chosen and chosen[mode, M].backend == b.name]
            picked += [f"{mode} M={','.join(ms)}"] if ms else []
        # A device backend runs calls on device arrays only; this table's calls are on host arrays.
        picked = "; ".join(picked) or ("device arrays only" if b.device else "-")
        yes = lambda flag: "yes" if flag else "no"  # noqa: E731
        print(f"{b.name:18} {yes(b.compiled):9} {yes(b.detected):9} {picked:28} {b.reason}".rstrip())
    print()
    print("automatic dispatch (qkernels.matmul), 4-bit weights in groups of 128, float16 activations:")
    print(f"{'mode':5} " + " ".join(f"{f'M = {M}':28}" for M in DISPATCH_MS).rstrip())
    for mode in ("a16", "a8"):
        print(f"{mode:5} " + " ".join(f"{chosen[mode, M].name if (mode, M) in chosen else '-':28}"
                                      for M in DISPATCH_MS).rstrip())
    print()
    print(f"{'kernel':28} {'backend':18} {'mode':5} {'bits':5} {'inputs':14} {'group size':14} {'best for M':10} "
          "available  needs beyond its backend")
    for k in dispatch.kernels():
        bits = "/".join(map(str, k.bits))
        inputs = "any float" if len(k.dtypes) == 3 else "/".join(k.dtypes)
        groups = ("any" if k.group_multiple == 1 else f"x{k.group_multiple}") + (
            f" <={k.max_group_size}" if k.max_group_size else ""
        )
        best_m = f"<={k.max_m}" if k.max_m else "any"
        needs = " ".join(k.cpu_features) or "-"
        print(f"{k.name:28} {k.backend:18} {k.mode:5} {bits:5} {inputs:14} {groups:14} {best_m:10} {str(k.available):10} {needs}")
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
    try:
        status = _run(args)
        sys.stdout.flush()  # here, so that a reader gone away shows below, not at the interpreter's exit
        return status
    except BrokenPipeError:
        # The reader stopped reading (qkernels info | head): stop quietly, as other commands do. The
        # interpreter flushes stdout again at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "bench":
        return bench(args)
    if args.command == "eval":
        from qkernels.evaluate.run import run as run_eval

        return run_eval(args)
    return info(args)


if __name__ == "__main__":
    sys.exit(main())
