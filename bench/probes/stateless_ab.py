"""Stateless calls on canonical arrays, the canonical-layout kernels of one mode forced, against the
prepared (packed) call, interleaved call by call, medians over 3 s per M; the weights stay hot in
the cache.

    QKERNELS_LIBRARY=$PWD/build/dev/libqkernels.so python bench/probes/stateless_ab.py a16 sym 1,2,4,8,16,32 \\
        [--dtype bfloat16] [--group 32] [--bits 8]

N = K = 4096, 4-bit weights (or --bits 8) in groups of 128 (or --group G; sym: symmetric,
asym: with zero points), float16 activations (--dtype as kernel_ab.py's). The x86_avx512 kernels
are the canonical variants that take G (c2x4 / c2x8 for multiples of 128, g32_c2x4 / g32_c2x8 for
32 and 64; A16 float32: bf16x3_c2x4, bf16x3_g32_c2x4) and, for A16 4-bit, the FMA variant c4x16
(any G and input dtype). A quick A/B
probe: `qkernels bench --stateless` is the measurement of record.
"""

import sys

import numpy as np

import qkernels
from kernel_ab import activation_dtype, interleaved_medians, take_option

A16_FMA = "x86_avx512_a16_w4_c4x16"  # 4-bit, any input dtype and G
KERNELS = {
    "a16": ("x86_avx512_a16_w4_bf16_c2x4", "x86_avx2_a16_w4w8_c4x8"),
    "a8": ("x86_avx512_a8_w4w8_vnni_c2x8", "x86_avx2_a8_w4w8_c4x8"),
}
SMALL_GROUPS = {  # G = 32, 64
    "x86_avx512_a16_w4_bf16_c2x4": "x86_avx512_a16_w4_bf16_g32_c2x4",
    "x86_avx512_a8_w4w8_vnni_c2x8": "x86_avx512_a8_w4w8_vnni_g32_c2x8",
}


def kernels_for(mode: str, dtype, group: int, bits: int) -> list[str]:
    """The variants to time: x86_avx2's and x86_avx512's that take G; for A16 x86_avx512's FMA one
    (4-bit) and its AVX512-BF16 one (4-bit; for float32 input its three-part lines, bf16x3)."""
    names = [SMALL_GROUPS.get(k, k) if group < 128 else k for k in KERNELS[mode]]
    if mode == "a8":
        return names
    bf16 = names[0].replace("_bf16_", "_bf16x3_") if np.dtype(dtype) == np.float32 else names[0]
    bf16_runs = bits == 4 and (group % 128 == 0 or group in (32, 64))
    return ([bf16] if bf16_runs else []) + ([A16_FMA] if bits == 4 else []) + [names[1]]


def main(mode: str, symmetry: str, ms: str, dtype=np.float16, group: int = 128, bits: int = 4) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    qw = qkernels.quantize_weights(w, bits=bits, group_size=group, symmetric=symmetry == "sym")

    def stateless(kernel):
        return lambda x: qkernels.quantized_matmul(
            x, qw.data, qw.scales, qw.zero_points, bits=bits, group_size=group, mode=mode, kernel=kernel
        )

    if group % 128 and group not in (32, 64) and mode == "a8":
        sys.exit(f"--group {group}: the x86_avx512 A8 variants run groups of a multiple of 128, or 32 or 64")
    kernels = kernels_for(mode, dtype, group, bits)
    paths = {k: stateless(k) for k in kernels} | {"prepared": lambda x: qkernels.matmul(x, qw, mode)}
    for m in map(int, ms.split(",")):
        x = rng.standard_normal((m, 4096)).astype(dtype)
        med = interleaved_medians({k: (lambda f: lambda: f(x))(f) for k, f in paths.items()}, 3)
        rows = ", ".join(f"{k} {t:.3f} ms ({t / med['prepared']:.2f})" for k, t in med.items())
        print(f"{mode} {symmetry} {bits}-bit {np.dtype(dtype).name} G={group} M={m}: {rows}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    dtype = activation_dtype(args)
    group = int(take_option(args, "--group", "128"))
    bits = int(take_option(args, "--bits", "4"))
    main(args[0], args[1], args[2], dtype, group, bits)
