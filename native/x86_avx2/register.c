/* The x86_avx2 backend: AVX2, FMA and F16C; its packed layout (avx2.h) and its kernels. */
#include "avx2.h"

static const qk_kernel_desc kernels[] = {
    /* name                     mode         bits        dtypes          G multiple, max G, max M, format, canonical, workspace, run, CPU features beyond the backend's */
    {"x86_avx2_a16_w4w8_4x8", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 16, QK_FORMAT_V2, 0, qk_avx2_a16_4x8_workspace, qk_avx2_a16_4x8, 0},
    {"x86_avx2_a16_w4w8_6x16", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_V2, 0, qk_avx2_a16_6x16_workspace, qk_avx2_a16_6x16, 0},
    {"x86_avx2_a8_w4w8_4x8", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, QK_A8_INT32_EXACT_GROUP, 0, QK_FORMAT_V2, 0, qk_avx2_a8_4x8_workspace, qk_avx2_a8_4x8, 0},
    /* Canonical variants: stateless calls (qk_matmul, quantizedMatMul) without packing, up to the M
     * where packing for the call pays (4096 x 4096, 4-bit g128, one thread: A16 ~40, A8 ~64). */
    {"x86_avx2_a16_w4w8_c4x8", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 32, QK_FORMAT_V2, 1, qk_avx2_canonical_a16_workspace, qk_avx2_a16_c4x8, 0},
    {"x86_avx2_a8_w4w8_c4x8", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, QK_A8_INT32_EXACT_GROUP, 48, QK_FORMAT_V2, 1, qk_avx2_a8_c4x8_workspace, qk_avx2_a8_c4x8, 0},
};

static const qk_backend_desc backend = {
    .size = sizeof backend,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "x86_avx2",
    .priority = 20,
    .required_cpu = (1ull << QK_CPU_AVX2) | (1ull << QK_CPU_FMA) | (1ull << QK_CPU_F16C),
    .pack = qk_avx2_pack,
    .free_packed = qk_aligned_free,
    .kernels = kernels,
    .kernel_count = sizeof kernels / sizeof kernels[0],
};

qk_status qk_register_x86_avx2(void) { return qk_register_backend(&backend, NULL); }
