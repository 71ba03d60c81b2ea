"""Stateless calls on canonical arrays, the canonical-layout kernels of one mode forced, against the
prepared (packed) call, interleaved call by call, medians over 3 s per M; the weights stay hot in
the cache.

    QKERNELS_LIBRARY=$PWD/build/dev/libqkernels.so python bench/probes/stateless_ab.py a16 sym 1,2,4,8,16,32 \\
        [--dtype bfloat16] [--group 32] [--bits 8]

N = K = 4096, 4-bit weights (or --bits 8, A8) in groups of 128 (or --group G; sym: symmetric,
asym: with zero points), float16 activations (--dtype as kernel_ab.py's). The x86_avx512 kernel is
the canonical variant that takes G (c2x4 / c2x8 for multiples of 128, g32_c2x4 / g32_c2x8 for 32
and 64). A quick A/B probe: `qkernels bench --stateless` is the measurement of record.
"""

import sys

import numpy as np

import qkernels
from kernel_ab import activation_dtype, interleaved_medians, take_option

KERNELS = {
    "a16": ("x86_avx512_a16_w4_bf16_c2x4", "x86_avx2_a16_w4w8_c4x8"),
    "a8": ("x86_avx512_a8_w4w8_vnni_c2x8", "x86_avx2_a8_w4w8_c4x8"),
}
SMALL_GROUPS = {  # G = 32, 64
    "x86_avx512_a16_w4_bf16_c2x4": "x86_avx512_a16_w4_bf16_g32_c2x4",
    "x86_avx512_a8_w4w8_vnni_c2x8": "x86_avx512_a8_w4w8_vnni_g32_c2x8",
}


def main(mode: str, symmetry: str, ms: str, dtype=np.float16, group: int = 128, bits: int = 4) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    qw = qkernels.quantize_weights(w, bits=bits, group_size=group, symmetric=symmetry == "sym")

    def stateless(kernel):
        return lambda x: qkernels.quantized_matmul(
            x, qw.data, qw.scales, qw.zero_points, bits=bits, group_size=group, mode=mode, kernel=kernel
        )

    if bits == 8 and mode == "a16":
        sys.exit("--bits 8: the x86_avx512 A16 variants take 4-bit weights")
    if group % 128 and group not in (32, 64):
        sys.exit(f"--group {group}: the x86_avx512 variants run groups of a multiple of 128, or 32 or 64")
    kernels = [SMALL_GROUPS.get(k, k) if group < 128 else k for k in KERNELS[mode]]
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
