"""Median time of qkernels.matmul on one problem, repeated with the same weights (hot in the LLC).

    QKERNELS_LIBRARY=$PWD/build/dev/libqkernels.so python bench/probes/matmul_loop.py a8 512:4096:4:128 16:14336:8:ch
    ... matmul_loop.py a16 --kernel x86_avx512_a16_w4w8_4x32 1:4096:8:32

Each problem is M:K:bits:G (G a group size, or ch for per channel), N = 4096, float16 activations,
automatic dispatch unless --kernel names one; each runs for 3 s (at least 5 calls). A quick A/B
probe for kernel changes: `qkernels bench` is the measurement of record (weights rotated past the LLC, baselines beside).
"""

import sys
import time

import numpy as np

import qkernels


def main(mode: str, specs: list[str], kernel: str | None) -> None:
    rng = np.random.default_rng(0)
    for spec in specs:
        m, k, bits, group = spec.split(":")
        w = rng.standard_normal((4096, int(k))).astype(np.float32)
        qw = qkernels.quantize_weights(w, bits=int(bits), group_size=None if group == "ch" else int(group))
        x = rng.standard_normal((int(m), int(k))).astype(np.float16)
        qkernels.matmul(x, qw, mode=mode, kernel=kernel)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < 3 or len(times) < 5:
            t = time.perf_counter()
            qkernels.matmul(x, qw, mode=mode, kernel=kernel)
            times.append(time.perf_counter() - t)
        print(f"{mode} {spec}: {np.median(times) * 1e3:.2f} ms (min {min(times) * 1e3:.2f}, {len(times)} calls)", flush=True)


if __name__ == "__main__":
    args = sys.argv[2:]
    kernel = None
    if args[:1] == ["--kernel"]:
        kernel, args = args[1], args[2:]
    main(sys.argv[1], args, kernel)
