/* The ARM backends' registration: two backends over one A16 kernel and one A8 driver, differing in
 * the layout they pack (SMMLA or SDOT register order) and the A8 tile that reads it. i8mm CPUs also
 * have dotprod, so i8mm ranks first. */
#include "arm_kernels.h"

/* Any group size (groups are padded to 16 k at pack time), a shorter last group, and offsets
 * (format v2); A8 sums are exact int32 up to G = 66311 (docs/numerics.md reading 5). */
static const qk_kernel_desc i8mm_kernels[] = {
    /* name                      mode         bits        dtypes           G multiple, max G, max M, format, canonical, workspace, run, CPU features beyond the backend's */
    {"arm_neon_i8mm_a8_w4w8_4x8", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, QK_A8_INT32_EXACT_GROUP, 0, QK_FORMAT_V2, 0, qk_arm_a8_workspace, qk_arm_i8mm_a8, 0},
    {"arm_neon_i8mm_a16_w4w8_8x8", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_V2, 0, qk_arm_a16_workspace, qk_arm_a16, 0},
};

static const qk_kernel_desc dotprod_kernels[] = {
    {"arm_neon_dotprod_a8_w4w8_4x8", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, QK_A8_INT32_EXACT_GROUP, 0, QK_FORMAT_V2, 0, qk_arm_a8_workspace, qk_arm_dotprod_a8, 0},
    {"arm_neon_dotprod_a16_w4w8_8x8", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_V2, 0, qk_arm_a16_workspace, qk_arm_a16, 0},
};

static const qk_backend_desc i8mm = {
    .size = sizeof i8mm,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "arm_neon_i8mm",
    .priority = 32,
    .required_cpu = (1ull << QK_CPU_NEON) | (1ull << QK_CPU_NEON_I8MM),
    .pack = qk_arm_pack_i8mm,
    .free_packed = qk_aligned_free,
    .kernels = i8mm_kernels,
    .kernel_count = sizeof i8mm_kernels / sizeof i8mm_kernels[0],
};

static const qk_backend_desc dotprod = {
    .size = sizeof dotprod,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "arm_neon_dotprod",
    .priority = 31,
    .required_cpu = (1ull << QK_CPU_NEON) | (1ull << QK_CPU_NEON_DOTPROD),
    .pack = qk_arm_pack_dotprod,
    .free_packed = qk_aligned_free,
    .kernels = dotprod_kernels,
    .kernel_count = sizeof dotprod_kernels / sizeof dotprod_kernels[0],
};

qk_status qk_register_arm_neon(void) {
    qk_status s = qk_register_backend(&i8mm, NULL);
    return s == QK_OK ? qk_register_backend(&dotprod, NULL) : s;
}
