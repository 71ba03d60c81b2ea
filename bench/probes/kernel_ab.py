"""Two or more kernels forced on one A16 problem, interleaved call by call (so that a noisy machine
slows them alike), medians over 4 s per M; the weights stay hot in the cache.

    QKERNELS_LIBRARY=$PWD/build/dev/libqkernels.so python bench/probes/kernel_ab.py sym 1,16,256 \\
        x86_avx512_a16_w4_bf16_2x32 x86_avx512_a16_w4w8_4x32 [--dtype bfloat16] [--shape 1536x576] [--torch]

N = K = 4096 (or --shape NxK), weights: sym, asym (4-bit in groups of 128, symmetric or with zero
points), q41 (GGUF Q4_1's form: 4-bit in groups of 32 with zero points and offsets) or w8ch (8-bit
per channel); float16 activations (--dtype: float16, bfloat16 through ml_dtypes, or float32).
--torch adds PyTorch's float32 F.linear on the dequantized weights (float32 x; 2 threads; run with
OMP_WAIT_POLICY=PASSIVE, or its threads spin between the calls and slow the kernels). A quick A/B
probe: `qkernels bench` is the measurement of record.
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


def interleaved_medians(calls: dict, seconds: float) -> dict:
    """Each call once, then all of them in turns for `seconds`: the median time of each, in ms."""
    times = {k: [] for k in calls}
    for f in calls.values():
        f()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for k, f in calls.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def weights(kind: str, w: np.ndarray, rng) -> qkernels.QuantizedWeight:
    if kind == "w8ch":
        return qkernels.quantize_weights(w, bits=8, group_size=None)
    if kind == "q41":
        qw = qkernels.quantize_weights(w, bits=4, group_size=32, symmetric=False)
        offsets = (rng.standard_normal(qw.scales.shape) * 0.01).astype(np.float32)
        return qkernels.QuantizedWeight(qw.data, qw.scales, qw.zero_points, 4, 32, qw.shape, offsets=offsets)
    return qkernels.quantize_weights(w, bits=4, group_size=128, symmetric=kind == "sym")


def main(kind: str, ms: str, kernels: list[str], dtype=np.float16, shape: str = "4096x4096", torch_too=False) -> None:
    rng = np.random.default_rng(0)
    N, K = map(int, shape.split("x"))
    qw = weights(kind, rng.standard_normal((N, K)).astype(np.float32), rng)
    if torch_too:
        import torch

        torch.set_num_threads(2)
        w32 = torch.from_numpy(qkernels.dequantize(qw).astype(np.float32))
    for m in map(int, ms.split(",")):
        x = rng.standard_normal((m, K)).astype(dtype)
        calls = {k: (lambda k: lambda: qkernels.matmul(x, qw, "a16", kernel=k))(k) for k in kernels}
        if torch_too:
            x32 = torch.from_numpy(x.astype(np.float32))
            calls["torch float32"] = lambda: torch.nn.functional.linear(x32, w32)
        medians = interleaved_medians(calls, 4)
        first = medians[kernels[0]]
        rows = ", ".join(f"{k} {t:.3f} ms ({t / first:.2f})" for k, t in medians.items())
        print(f"{kind} {N}x{K} {np.dtype(dtype).name} M={m}: {rows}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    dtype = activation_dtype(args)
    shape = take_option(args, "--shape", "4096x4096")
    torch_too = "--torch" in args
    if torch_too:
        args.remove("--torch")
    main(args[0], args[1], args[2:], dtype, shape, torch_too)
