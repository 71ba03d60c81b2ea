/* The CUDA kernels as the backend registers them (kernels.h), best first. The decode kernel takes
 * M <= 16 (one m16 block, split-K so that a GEMV fills the GPU); the prefill kernel every larger M.
 * Both read the device pack (pack.c), never the canonical arrays; group sizes are multiples of 32
 * (per-channel: G >= K, then a multiple of 32 too, as dispatch checks group_multiple); a shorter
 * last group and offsets are run. The A8 kernel (M of any size, no split-K: its float64 group sums
 * must be added in the reference's order) equals the reference backend bit for bit. Scratch comes from qk_cuda_scratch_acquire, so workspace_size is NULL. */
#include "kernels.h"
#include "layout.h"

qk_status qk_cuda_a16_decode(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
qk_status qk_cuda_a16_prefill(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
qk_status qk_cuda_a8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);

/* The A8 kernel accumulates a group in int32: exact while G <= 2^31 / (127 * 255) = 66311
 * (docs/numerics.md, reading 5); as a multiple of the group multiple (the registry's rule), 66304. */
#define A8_INT32_EXACT_GROUP (66311 / QK_CUDA_GROUP_MULTIPLE * QK_CUDA_GROUP_MULTIPLE)

#define BITS_4_8 ((1u << 4) | (1u << 8))
#define DTYPES_16 ((1u << QK_DTYPE_F16) | (1u << QK_DTYPE_BF16))
#define FORMAT_V2 (QK_FORMAT_OFFSETS | QK_FORMAT_RAGGED_GROUPS)

const qk_kernel_desc qk_cuda_kernels[] = {
    /* name                  mode         bits      dtypes     G multiple               max G  max M  format     canonical workspace run  CPU beyond the backend's */
    {"cuda_a16_w4w8_16x256", QK_MODE_A16, BITS_4_8, DTYPES_16, QK_CUDA_GROUP_MULTIPLE, 0, 16, FORMAT_V2, 0, NULL, qk_cuda_a16_decode, 0},
    {"cuda_a16_w4w8_64x256", QK_MODE_A16, BITS_4_8, DTYPES_16, QK_CUDA_GROUP_MULTIPLE, 0, 0, FORMAT_V2, 0, NULL, qk_cuda_a16_prefill, 0},
    {"cuda_a8_w4w8_32x256", QK_MODE_A8, BITS_4_8, DTYPES_16, QK_CUDA_GROUP_MULTIPLE, A8_INT32_EXACT_GROUP, 0, FORMAT_V2, 0, NULL, qk_cuda_a8, 0},
};
const int32_t qk_cuda_kernel_count = sizeof qk_cuda_kernels / sizeof qk_cuda_kernels[0];
