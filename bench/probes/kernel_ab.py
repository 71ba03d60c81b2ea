"""Two or more kernels forced on one A16 problem, interleaved call by call (so that a noisy machine
slows them alike), medians over 4 s per M; the weights stay hot in the cache.

    QKERNELS_LIBRARY=$PWD/build/dev/libqkernels.so python bench/probes/kernel_ab.py sym 1,16,256 \\
        x86_avx512_a16_w4_bf16_2x32 x86_avx512_a16_w4w8_4x32 [--dtype bfloat16]

N = K = 4096, 4-bit weights in groups of 128 (sym: symmetric, asym: with zero points), float16
activations (--dtype: float16, bfloat16 through ml_dtypes, or float32). A quick A/B probe:
`qkernels bench` is the measurement of record.
"""

import sys
import time

import numpy as np

import qkernels


def take_option(argv: list[str], option: str, default: str) -> str:
    """The value of `option` (e.g. --dtype) taken out of argv, or default without it."""
    if option not in argv:
        return default
    i = argv.index(option)
    value = argv[i + 1]
    del argv[i : i + 2]
    return value


def activation_dtype(argv: list[str]):
    """The --dtype D option taken out of argv (float16 without it), as a NumPy dtype."""
    name = take_option(argv, "--dtype", "float16")
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def main(symmetry: str, ms: str, kernels: list[str], dtype=np.float16) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    qw = qkernels.quantize_weights(w, bits=4, group_size=128, symmetric=symmetry == "sym")
    for m in map(int, ms.split(",")):
        x = rng.standard_normal((m, 4096)).astype(dtype)
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
        print(f"{symmetry} {np.dtype(dtype).name} M={m}: {rows}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    dtype = activation_dtype(args)
    main(args[0], args[1], args[2:], dtype)
