/* The x86_amx backend: AMX-TILE/INT8/BF16 with x86_avx512's AVX-512 set, on the vnni16 pack.
 *
 * Selection takes, within a backend, the first kernel whose max_m covers M, so x86_avx512's
 * kernels (listed here under this backend's names, so that one pack serves every M) run small M,
 * where a 32 x 32 AMX block would be mostly padding, and AMX the rest. Measured at 4096 x 4096,
 * 2 threads, float16, AMX time / AVX-512 time (2026-12-06): A8 4-bit g128 1.58 at M = 2, 1.05 at
 * M = 6, 0.90 at M = 8, 0.62 at M = 12; 8-bit per-channel 0.99, 1.10, 1.04, 0.75; A16 4-bit g128
 * 1.74 at M = 4, 1.11 at M = 6, 0.89 at M = 8; 8-bit per-channel 1.51, 0.93, 0.84. For float16
 * and bfloat16 input and 4-bit weights without offsets the AVX512-BF16 kernel takes the FMA kernel's
 * range (it was faster on Zen 4: README, x86_avx512; the crossover above was measured with the FMA
 * kernel and is still to be re-taken with it on an AMX machine). */
#include "amx.h"

static const qk_kernel_desc kernels[] = {
    /* name                          mode         bits        dtypes          G multiple, max G, max M, format, canonical, workspace, run, CPU features beyond the backend's */
    {"x86_amx_a8_w4w8_vnni_8x32", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, QK_A8_INT32_EXACT_GROUP, 8, QK_FORMAT_V2, 0,
     qk_avx512_a8_workspace, qk_avx512_a8_8x32, 0},
    {"x86_amx_a8_w4w8_32x32", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, QK_A8_INT32_EXACT_GROUP, 0, QK_FORMAT_V2, 0,
     qk_amx_a8_workspace, qk_amx_a8_32x32, 0},
    {"x86_amx_a16_w4_bf16_2x32", QK_MODE_A16, 1u << 4, QK_AVX512_BF16_DTYPES, 1, 0, 6, QK_FORMAT_RAGGED_GROUPS, 0,
     qk_avx512_a16_bf16_workspace, qk_avx512_a16_w4_bf16_2x32, QK_AVX512_BF16_CPU},
    {"x86_amx_a16_w4w8_fma_4x32", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 6, QK_FORMAT_V2, 0,
     qk_avx512_a16_workspace, qk_avx512_a16_4x32, 0},
    {"x86_amx_a16_w4w8_32x32", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_RAGGED_GROUPS, 0,
     qk_amx_a16_workspace, qk_amx_a16_32x32, 0},
    /* weights with offsets, which the AMX kernel does not run, above M = 6 (not yet run on an AMX machine) */
    {"x86_amx_a16_w4w8_fma_8x32", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_V2, 0,
     qk_avx512_a16_8x32_workspace, qk_avx512_a16_8x32, 0},
};

/* The emulated test build (QK_EMULATE_X86) runs the same kernels through SIMDe and
 * native/tests/emulation/amx_emulation.h on any AVX2 machine. Natively, qk_cpu_has reports AMX only
 * where the OS saves the tile state (XCR0) and Linux granted this process the tile data
 * (arch_prctl, requested once when the features are first read: core/cpu_features.c). */
#ifdef QK_EMULATE_X86
#define AMX_FEATURES 0
#else
#define AMX_FEATURES                                                                                          \
    ((1ull << QK_CPU_AVX512F) | (1ull << QK_CPU_AVX512BW) | (1ull << QK_CPU_AVX512VL) | (1ull << QK_CPU_AVX512DQ) | \
     (1ull << QK_CPU_AVX512_VNNI) | (1ull << QK_CPU_AMX_TILE) | (1ull << QK_CPU_AMX_INT8) | (1ull << QK_CPU_AMX_BF16))
#endif

static const qk_backend_desc backend = {
    .size = sizeof backend,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "x86_amx",
    .priority = 40,
    .required_cpu = AMX_FEATURES | (1ull << QK_CPU_AVX2) | (1ull << QK_CPU_FMA) | (1ull << QK_CPU_F16C),
    .pack = qk_vnni16_pack,
    .free_packed = qk_aligned_free,
    .kernels = kernels,
    .kernel_count = sizeof kernels / sizeof kernels[0],
};

qk_status qk_register_x86_amx(void) { return qk_register_backend(&backend, NULL); }
