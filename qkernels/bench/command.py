"""The `qkernels bench` command: its arguments, and a run of the measurements they choose."""

from __future__ import annotations

import argparse
import sys

import qkernels

from . import contended, llm, overhead, stateless, sweep
from .layers import BITS, MODES, llc_bytes
from .report import print_system, system_info, write_json
from .timing import MIN_REPEATS


def _ints(text: str, separator: str = ",") -> list[int]:
    try:
        values = [int(n) for n in text.lower().split(separator)]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by {separator!r}")
    return values


def _shapes(text: str) -> list[tuple[int, int]]:
    shapes = [tuple(_ints(item, "x")) for item in text.split(",")]
    if any(len(shape) != 2 for shape in shapes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NxK[,NxK...], e.g. 4096x4096,11008x4096")
    return shapes


def _subset(choices):
    def parse(text: str) -> list:
        items = [type(choices[0])(item) for item in text.split(",")]
        if not set(items) <= set(choices):
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(map(str, choices))}")
        return items

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="4096x4096 at M=1,16 only, 0.3 s per row: about a minute on 2 cores, even on the ref backend")
    parser.add_argument("--shapes", type=_shapes,
                        help="layers as NxK = output x input features, comma-separated "
                        "(default 4096x4096,11008x4096,4096x11008; --stateless, --contended: 4096x4096)")
    parser.add_argument("--m", type=_ints, help="activation rows M, comma-separated (default 1,16,256)")
    parser.add_argument("--modes", type=_subset(MODES), help="a16,a8 (default both)")
    parser.add_argument("--bits", type=_subset(BITS), help="weight bits 4,8 (default both)")
    parser.add_argument("--group-size", type=int,
                        help="weight group size for every bit width (default: 4-bit 128, 8-bit per channel)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="activation and output dtype (default float16)")
    parser.add_argument("--backend", help="time only this backend's kernels (the baselines still run; "
                        "--llm: automatic dispatch within it)")
    parser.add_argument("--budget", type=float,
                        help=f"seconds of timed calls per row, at least {MIN_REPEATS} calls (default 2, --quick 0.3)")
    parser.add_argument("--max-call", type=float,
                        help="skip a row whose single call is estimated to take longer (default 5 s, --quick 1 s)")
    parser.add_argument("--threads", type=int,
                        help="--llm: threads for qkernels and torch (default: the cores this process may use)")
    parser.add_argument("--memory-mib", type=int,
                        help=f"cap on the memory bandwidth buffers (4x LLC) and on the weight copies of one --llm "
                        f"row (2x LLC), in MiB (default {llm.MEMORY_MIB}, --quick {llm.QUICK_MEMORY_MIB})")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the command, the machine description and every row as JSON")
    focused = parser.add_argument_group(
        "focused measurements", "any of these runs instead of the table of every kernel and baseline")
    focused.add_argument("--overhead", action="store_true",
                         help="per-call cost at 64x64, M=1: qkernels.matmul and quantized_matmul against "
                         "the C calls they make (goal: matmul <= 5 us)")
    focused.add_argument("--stateless", action="store_true",
                         help="decode, 4-bit g128: the stateless path (quantized_matmul, quantizedMatMul) "
                         "against the prepared one (target: <= 1.3x)")
    focused.add_argument("--contended", action="store_true",
                         help="decode, 4-bit g128, on 1 and 2 threads, quiet and with a process spinning on "
                         "one core (target: contended 2 threads / 1 <= 1.3)")
    focused.add_argument("--llm", action="store_true",
                         help="issue 16's figures: 4096x14336 and 4096x4096 at M=1,16,512, qkernels A8 4-bit g128, "
                         "A8 8-bit per channel and A16 4-bit g128 (automatic dispatch) against torch bf16 "
                         "F.linear, torch dynamic int8 and, at M=1, the memory floor, with their ratios "
                         "(--quick: 4096x4096 only, shorter rows, 256 MiB of copies)")


# The options each measurement reads besides the common ones (--quick, --dtype, --budget, --max-call,
# --memory-mib, --json): one given to a measurement that would ignore it is refused.
_READS = {"table": {"shapes", "m", "modes", "bits", "group_size", "backend"}, "overhead": {"modes"},
          "stateless": {"shapes", "modes", "group_size"}, "contended": {"shapes", "modes", "group_size"},
          "llm": {"shapes", "m", "group_size", "threads", "backend"}}


def _ignored(args: argparse.Namespace) -> list[str]:
    """The options given that none of the chosen measurements reads, as --names."""
    chosen = [name for name in ("overhead", "stateless", "contended", "llm") if getattr(args, name)] or ["table"]
    read = set().union(*(_READS[name] for name in chosen))
    given = {name for name in set().union(*_READS.values()) if getattr(args, name) is not None}
    return ["--" + name.replace("_", "-") for name in sorted(given - read)]


def run(args: argparse.Namespace) -> int:
    ignored = _ignored(args)
    if ignored:
        print(f"qkernels bench: {', '.join(ignored)}: not read by the measurement chosen (see --help)", file=sys.stderr)
        return 2
    args.modes, args.bits = args.modes or list(MODES), args.bits or list(BITS)
    args.budget = args.budget or (0.3 if args.quick else 2.0)
    args.max_call = args.max_call or (1.0 if args.quick else 5.0)
    kernels = [k for k in qkernels.kernels() if k.available and k.mode in args.modes and args.dtype in k.dtypes]
    if args.backend:
        info = {b.name: b for b in qkernels.backends()}.get(args.backend)
        if info is None or not info.available:
            names = ", ".join(b.name for b in qkernels.backends())
            why = info.reason if info else f"unknown backend; choose from {names}"
            print(f"qkernels bench: --backend {args.backend}: {why}", file=sys.stderr)
            return 2
        kernels = [k for k in kernels if k.backend == args.backend]

    llc = llc_bytes()
    memory = (args.memory_mib or (llm.QUICK_MEMORY_MIB if args.quick else llm.MEMORY_MIB)) << 20
    system = system_info(llc, min(max(4 * llc, 64 << 20), memory))
    print_system(system)
    focused = [(args.overhead, lambda: overhead.run(args)), (args.stateless, lambda: stateless.run(args, llc)),
               (args.contended, lambda: contended.run(args, llc)), (args.llm, lambda: _llm(args, llc, memory))]
    measurements = [measure for chosen, measure in focused if chosen] or [lambda: sweep.run(args, kernels, llc)]
    rows: list[dict] = []
    try:
        for measurement in measurements:
            print()
            rows += measurement()
    except qkernels.QKernelsError as error:  # a layer these weights cannot have, e.g. an odd K at 4 bits
        print(f"qkernels bench: {error}", file=sys.stderr)
        return 2

    if args.json:
        write_json(args.json, args.command_line, system, rows)
    failed = [r for r in rows if r.get("check") in ("FAIL", "ERROR")]
    if failed:
        print(f"{len(failed)} qkernels result(s) out of tolerance or in error", file=sys.stderr)
    return 1 if failed else 0


def _llm(args: argparse.Namespace, llc: int, memory: int) -> list[dict]:
    """--llm, within --backend when given (automatic dispatch among its kernels)."""
    if not args.backend:
        return llm.run(args, llc, memory)
    with qkernels.use_backend(args.backend):
        return llm.run(args, llc, memory)
