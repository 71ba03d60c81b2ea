/* The x86_avx512 backend: AVX-512 F/BW/VL/DQ and VNNI (with AVX2, FMA and F16C), on the vnni16
 * pack (layout.h); its kernels. */
#include "avx512.h"

static const qk_kernel_desc kernels[] = {
    /* name                       mode         bits        dtypes          G multiple, max G, max M, format, canonical, workspace, run, CPU features beyond the backend's */
    {"x86_avx512_a8_w4w8_8x32", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, QK_A8_INT32_EXACT_GROUP, 0, QK_FORMAT_V2, 0,
     qk_avx512_a8_workspace, qk_avx512_a8_8x32, 0},
    {"x86_avx512_a16_w4_bf16_2x32", QK_MODE_A16, 1u << 4, QK_AVX512_BF16_DTYPES, 1, 0, 0,
     QK_FORMAT_RAGGED_GROUPS, 0, qk_avx512_a16_bf16_workspace, qk_avx512_a16_w4_bf16_2x32, QK_AVX512_BF16_CPU},
    /* The same on float32 input in three bfloat16 parts: against x86_avx512_a16_w4w8_4x32 at M = 1
     * 1.15x (symmetric) and 1.26x (zero points) with the weights in cache, 1.01-1.14x from memory;
     * at M = 2 0.95x and 1.10x (Zen 4, 4096^2, README). */
    {"x86_avx512_a16_w4_bf16x3_2x32", QK_MODE_A16, 1u << 4, 1u << QK_DTYPE_F32, 1, 0, 1,
     QK_FORMAT_RAGGED_GROUPS, 0, qk_avx512_a16_bf16_workspace, qk_avx512_a16_w4_bf16_2x32, QK_AVX512_BF16_CPU},
    /* A16 FMA: weights formed per tile up to M = 16, once per task above (a16_8x32.c). Zen 4, 2
     * threads, float32 input, weights hot, 8x32 time / 4x32 time (README, x86_avx512): 4096 x 4096
     * 4-bit g128 1.26 at M = 8, 1.35 at 16, 0.97 at 32, 0.91 at 64, 0.89 at 512; SmolLM2's
     * 1536 x 576 Q4_1 (g32, zero points and offsets) 1.13 at 8, 0.93 at 16, 0.79 at 64, 0.69 at 512. */
    {"x86_avx512_a16_w4w8_4x32", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 16, QK_FORMAT_V2, 0,
     qk_avx512_a16_workspace, qk_avx512_a16_4x32, 0},
    {"x86_avx512_a16_w4w8_8x32", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_V2, 0,
     qk_avx512_a16_8x32_workspace, qk_avx512_a16_8x32, 0},
    /* Canonical variants: stateless calls (qk_matmul, quantizedMatMul) at small M without packing,
     * G a multiple of 128, or G = 32 or 64 (the g32 lines; A16: float16 or bfloat16 input, 4-bit
     * weights); the rest run x86_avx2's. Below the M where packing for the call pays (4096 x 4096,
     * 2 threads: about 96 for both at 4-bit g128; A8 g32 4-bit 64 or more, 8-bit 48). */
    {"x86_avx512_a8_w4w8_vnni_c2x8", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 128, QK_A8_INT32_EXACT_GROUP / 128 * 128, 64,
     QK_FORMAT_V2, 1, qk_avx512_a8_c2x8_workspace, qk_avx512_a8_w4w8_vnni_c2x8, 0},
    {"x86_avx512_a8_w4w8_vnni_g32_c2x8", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 32, 64, 48, QK_FORMAT_V2, 1,
     qk_avx512_a8_c2x8_workspace, qk_avx512_a8_w4w8_vnni_c2x8, 0},
    {"x86_avx512_a16_w4_bf16_c2x4", QK_MODE_A16, 1u << 4, QK_AVX512_BF16_DTYPES, 128, 0, 64, QK_FORMAT_RAGGED_GROUPS, 1,
     qk_avx512_a16_bf16_c2x4_workspace, qk_avx512_a16_w4_bf16_c2x4, QK_AVX512_BF16_CPU},
    {"x86_avx512_a16_w4_bf16_g32_c2x4", QK_MODE_A16, 1u << 4, QK_AVX512_BF16_DTYPES, 32, 64, 64, QK_FORMAT_RAGGED_GROUPS,
     1, qk_avx512_a16_bf16_c2x4_workspace, qk_avx512_a16_w4_bf16_c2x4, QK_AVX512_BF16_CPU},
    /* The same function on float32 input, each x as three bfloat16 parts: against the FMA variant
     * below (Zen 4, 4096^2, 2 threads, README) 1.42x at M = 1 with G a multiple of 128, 0.97x at 2;
     * with G = 32 1.3-2.1x up to M = 48; with G = 64 (zero points) 1.4x at M = 1, 0.97x at 4 and 16. */
    {"x86_avx512_a16_w4_bf16x3_c2x4", QK_MODE_A16, 1u << 4, 1u << QK_DTYPE_F32, 128, 0, 1, QK_FORMAT_RAGGED_GROUPS, 1,
     qk_avx512_a16_bf16_c2x4_workspace, qk_avx512_a16_w4_bf16_c2x4, QK_AVX512_BF16_CPU},
    {"x86_avx512_a16_w4_bf16x3_g32_c2x4", QK_MODE_A16, 1u << 4, 1u << QK_DTYPE_F32, 32, 64, 48, QK_FORMAT_RAGGED_GROUPS,
     1, qk_avx512_a16_bf16_c2x4_workspace, qk_avx512_a16_w4_bf16_c2x4, QK_AVX512_BF16_CPU},
    /* 4-bit calls the AVX512-BF16 variants do not take (offsets, other G, float32 input at M > 1 with
     * G a multiple of 128). */
    {"x86_avx512_a16_w4_c4x16", QK_MODE_A16, 1u << 4, QK_DTYPES_FLOAT, 1, 0, 48, QK_FORMAT_V2, 1,
     qk_avx2_canonical_a16_workspace, qk_avx512_a16_w4_c4x16, 0},
};

/* The emulated test build (QK_EMULATE_X86) runs the same kernels through SIMDe on any AVX2 machine. */
#ifdef QK_EMULATE_X86
#define AVX512_FEATURES 0
#else
#define AVX512_FEATURES                                                                                       \
    ((1ull << QK_CPU_AVX512F) | (1ull << QK_CPU_AVX512BW) | (1ull << QK_CPU_AVX512VL) | (1ull << QK_CPU_AVX512DQ) | \
     (1ull << QK_CPU_AVX512_VNNI))
#endif

static const qk_backend_desc backend = {
    .size = sizeof backend,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "x86_avx512",
    .priority = 30,
    .required_cpu = AVX512_FEATURES | (1ull << QK_CPU_AVX2) | (1ull << QK_CPU_FMA) | (1ull << QK_CPU_F16C),
    .pack = qk_vnni16_pack,
    .free_packed = qk_aligned_free,
    .kernels = kernels,
    .kernel_count = sizeof kernels / sizeof kernels[0],
};

qk_status qk_register_x86_avx512(void) { return qk_register_backend(&backend, NULL); }
