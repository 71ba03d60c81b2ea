"""Two or more kernels forced on one A16 problem, interleaved call by call (so that a noisy machine
slows them alike), medians over 4 s per M; the weights stay hot in the cache.

    QKERNELS_LIBRARY=$PWD/build/dev/libqkernels.so python bench/probes/kernel_ab.py sym 1,16,256 \\
        x86_avx512_a16_w4_bf16_2x32 x86_avx512_a16_w4w8_4x32

N = K = 4096, 4-bit weights in groups of 128 (sym: symmetric, asym: with zero points), float16
activations. A quick A/B probe: `qkernels bench` is the measurement of record.
"""

import sys
import time

import numpy as np

import qkernels


def main(symmetry: str, ms: str, kernels: list[str]) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    qw = qkernels.quantize_weights(w, bits=4, group_size=128, symmetric=symmetry == "sym")
    for m in map(int, ms.split(",")):
        x = rng.standard_normal((m, 4096)).astype(np.float16)
        times = {k: [] for k in kernels}
        for k in kernels:
            qkernels.matmul(x, qw, "a16", kernel=k)
        end = time.perf_counter() + 4
        while time.perf_counter() < end:
            for k in kernels:
                t = time.perf_counter()
                qkernels.matmul(x, qw, "a16", kernel=k)
                times[k].append(time.perf_counter() - t)
        medians = [np.median(times[k]) * 1e3 for k in kernels]
        rows = ", ".join(f"{k} {t:.3f} ms ({t / medians[0]:.2f})" for k, t in zip(kernels, medians))
        print(f"{symmetry} M={m}: {rows}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
