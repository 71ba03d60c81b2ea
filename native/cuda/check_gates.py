#!/usr/bin/env python3
"""Compile gates of the CUDA kernels, checked on every CI run without a GPU.

For each kernel source (native/cuda/*.cu) and each architecture of the library (sm_80, sm_86,
sm_89, sm_90a), it compiles a cubin with nvcc, as CMakeLists.txt compiles the library, and checks:
  1. ptxas -v reports no register spill (spill stores or loads) in any kernel, except those listed
     in ACCEPTED_SPILLS with the reason;
  2. the SASS (cuobjdump -sass, from PyPI's nvidia-cuda-cuobjdump, which runs the nvdisasm of
     nvidia-cuda-nvdisasm installed beside it: the toolkit here lacks both)
     contains the instructions the design relies on, per source file (REQUIRED_SASS): tensor-core
     MMAs (HMMA for float16/bfloat16, IMMA for int8), LDSM (ldmatrix) and LDGSTS (cp.async).
It prints one line per file and architecture and exits 1 if any gate fails.

Usage: check_gates.py [--nvcc PATH] [--cuobjdump PATH] [--jobs N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
INCLUDES = [HERE, HERE.parent / "include"]
ARCHITECTURES = ("sm_80", "sm_86", "sm_89", "sm_90a")

# Instructions each kernel file's SASS must contain on every architecture; every .cu file must be
# listed (an empty tuple for one that needs none of them).
REQUIRED_SASS = {
    "a16.cu": ("HMMA", "LDSM", "LDGSTS"),  # mma.sync f16/bf16, ldmatrix, cp.async
    "a8.cu": ("IMMA", "LDSM", "LDGSTS"),  # mma.sync s8, ldmatrix, cp.async
}

# (kernel name regex, architecture regex) -> why its spill is accepted. Empty: no spill is.
ACCEPTED_SPILLS: dict[tuple[str, str], str] = {}

_FUNCTION = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> list[dict]:
    """ptxas -v output as one record per kernel: name, arch, registers, spill store and load bytes."""
    kernels: list[dict] = []
    for line in log.splitlines():
        if m := _FUNCTION.search(line):
            kernels.append({"name": m[1], "arch": m[2], "registers": 0, "spill_stores": 0, "spill_loads": 0})
        elif kernels and (m := _SPILLS.search(line)):
            kernels[-1]["spill_stores"], kernels[-1]["spill_loads"] = int(m[1]), int(m[2])
        elif kernels and (m := _REGISTERS.search(line)):
            kernels[-1]["registers"] = int(m[1])
    return kernels


def accepted_spill(name: str, arch: str) -> str | None:
    return next((why for (k, a), why in ACCEPTED_SPILLS.items() if re.search(k, name) and re.fullmatch(a, arch)), None)


def sass_opcodes(sass: str) -> set[str]:
    """The opcodes (the mnemonic before the first '.') of cuobjdump -sass output."""
    opcodes = set()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            opcodes.add(m[1])
    return opcodes


def find_cuobjdump(given: str | None) -> str:
    if given:
        return given
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:  # PyPI's nvidia-cuda-cuobjdump installs it in the nvidia namespace package
        import nvidia

        for root in nvidia.__path__:
            for candidate in sorted(Path(root).glob("*/bin/cuobjdump")):
                return str(candidate)
    except ImportError:
        pass
    sys.exit("check_gates: cuobjdump not found: pip install nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.5.37, or pass --cuobjdump")


def gate(source: Path, arch: str, nvcc: str, cuobjdump: str, out_dir: Path) -> tuple[bool, str]:
    """Compiles one file for one architecture and checks both gates: (passed, report line)."""
    cubin = out_dir / f"{source.stem}.{arch}.cubin"
    command = [nvcc, "-cubin", f"-arch={arch}", "-O3", "-DNDEBUG", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas=-v",
               *(f"-I{d}" for d in INCLUDES), str(source), "-o", str(cubin)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        return False, f"{source.name} {arch}: nvcc failed\n{built.stderr}"
    problems = []
    kernels = parse_ptxas(built.stdout + built.stderr)
    if not kernels:
        problems.append("ptxas -v reported no kernel")
    for k in kernels:
        if (k["spill_stores"] or k["spill_loads"]) and not accepted_spill(k["name"], arch):
            problems.append(f"{k['name']} spills ({k['spill_stores']} bytes stored, {k['spill_loads']} loaded)")
    dumped = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True)
    if dumped.returncode != 0:
        return False, f"{source.name} {arch}: cuobjdump failed\n{dumped.stderr}"
    opcodes = sass_opcodes(dumped.stdout)
    required = REQUIRED_SASS.get(source.name, ())
    missing = [op for op in required if op not in opcodes]
    if missing:
        problems.append(f"SASS lacks {', '.join(missing)}")
    registers = max((k["registers"] for k in kernels), default=0)
    found = " ".join(op for op in required if op in opcodes) or "-"
    line = f"{source.name:12} {arch:7} kernels {len(kernels):2}  max registers {registers:3}  SASS {found}"
    return not problems, line + ("" if not problems else "  FAIL: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nvcc", default=os.environ.get("CUDACXX") or shutil.which("nvcc") or "nvcc")
    parser.add_argument("--cuobjdump")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", type=Path, help="write the cubins here instead of a temporary directory")
    args = parser.parse_args(argv)
    cuobjdump = find_cuobjdump(args.cuobjdump)
    sources = sorted(HERE.glob("*.cu"))
    if not sources:
        print("check_gates: no kernel sources in native/cuda")
        return 1
    unlisted = [s.name for s in sources if s.name not in REQUIRED_SASS]
    if unlisted:
        print(f"check_gates: {', '.join(unlisted)} not in REQUIRED_SASS: list what each needs (or an empty tuple)")
        return 1
    with tempfile.TemporaryDirectory() as temporary:
        out_dir = args.keep or Path(temporary)
        out_dir.mkdir(parents=True, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: gate(*job, args.nvcc, cuobjdump, out_dir),
                                    [(s, a) for s in sources for a in ARCHITECTURES]))
    for _, line in results:
        print(line)
    failed = sum(not ok for ok, _ in results)
    print(f"compile gates: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
