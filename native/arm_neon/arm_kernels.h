/* The ARM NEON backends, arm_neon_i8mm (SMMLA) and arm_neon_dotprod (SDOT): their packed weight
 * layout and the parts both share. Only the files of the instruction they name are built with
 * that instruction enabled (CMakeLists.txt); everything else here is baseline Armv8-A NEON, so the
 * library still loads and runs the reference backend on a CPU without either.
 *
 * Kernels allocate nothing: each carves its buffers from the workspace the core gives it
 * (qk_exec), and runs its loops as qk_parallel_for tasks.
 *
 * Packed layout (one qk_aligned_alloc block, qk_arm_packed header first):
 *   - Output columns come in panels of QK_ARM_PANEL = 8; the last panel is padded with zero columns.
 *   - Each group of G weights is padded with zeros to group_padded = G rounded up to 16, so that
 *     every kernel loop runs whole steps; activations get zeros at the same positions. A shorter
 *     last group (G does not divide K) is padded to its own length rounded up to 16, last_padded.
 *   - Per panel, the int8 weights are a stream of 16-byte registers in the order the kernel reads
 *     them. One register holds 16 / k_per_register columns times k_per_register consecutive k:
 *       SMMLA (k_per_register 8): columns c, c+1, 8 k each: the 2x8 right operand of one SMMLA;
 *                                 4 registers (the panel's 4 column pairs) per 8 k.
 *       SDOT  (k_per_register 4): columns c..c+3, 4 k each: one SDOT feeds 4 columns;
 *                                 2 registers (the panel's 2 column quads) per 4 k.
 *     4-bit weights stay 4-bit: registers 2i and 2i+1 share 16 bytes, 2i in the low nibbles and
 *     2i+1 in the high nibbles, so one load and two or three instructions give both registers.
 *   - scales: float32 [panel][group][8]; offsets (only if given): float32 [panel][group][8];
 *     zero points (asymmetric only): int8 [panel][group][8].
 */
#ifndef QK_ARM_KERNELS_H
#define QK_ARM_KERNELS_H

#include <arm_neon.h>

#include "../core/internal.h"

enum {
    QK_ARM_PANEL = 8,        /* output columns per packed panel */
    QK_ARM_GROUP_STEP = 16,  /* groups are padded to a multiple of this many k */
    QK_ARM_HEADER = 128,     /* bytes before the packed weights (a multiple of 64) */
    QK_ARM_A8_ROWS = 4,      /* A8: rows per tile, both kernels */
};

/* A8: float32 runs of this many groups are folded into float64. A run of R groups rounds R times
 * (2R with offsets: two fmas a group) plus once where acc itself is not exact in float32, so its
 * error is at most (R + 1) or (2R + 1) times 2^-24 of its terms' magnitudes: 8 and 7 keep that
 * within the contract's 2^-20 (docs/numerics.md reading 14; x86 takes 14 and 7, reading 20). */
static inline int32_t qk_arm_fold_groups(int has_offsets) { return has_offsets ? 7 : 8; }

typedef struct {
    int32_t N, K, group_size, bits;
    int32_t groups, group_padded, last_padded, k_padded, panels;
    int32_t k_per_register; /* 8: SMMLA layout, 4: SDOT layout */
    int32_t has_zero_points, has_offsets;
    size_t panel_bytes;     /* packed weights of one panel */
    size_t scales_at, offsets_at, zero_points_at; /* byte offsets from the start of the block */
} qk_arm_packed;

static inline const qk_arm_packed* qk_arm_header(const qk_kernel_weights* w) { return w->packed; }
static inline const int8_t* qk_arm_panel_weights(const qk_arm_packed* h, int32_t panel) {
    return (const int8_t*)h + QK_ARM_HEADER + (size_t)panel * h->panel_bytes;
}
/* Weights in group g (the last may be shorter), and its padded length in the layout. */
static inline int32_t qk_arm_group_length(const qk_arm_packed* h, int32_t g) {
    int32_t first = g * h->group_size; /* below K: no overflow */
    return h->K - first < h->group_size ? h->K - first : h->group_size;
}
static inline int32_t qk_arm_group_padded(const qk_arm_packed* h, int32_t g) {
    return g + 1 == h->groups ? h->last_padded : h->group_padded;
}
/* The 8 scales (offsets, zero points) of one panel and group. */
static inline const float* qk_arm_scales(const qk_arm_packed* h, int32_t panel, int32_t g) {
    return (const float*)((const char*)h + h->scales_at) + ((size_t)panel * h->groups + g) * QK_ARM_PANEL;
}
static inline const float* qk_arm_offsets(const qk_arm_packed* h, int32_t panel, int32_t g) {
    return (const float*)((const char*)h + h->offsets_at) + ((size_t)panel * h->groups + g) * QK_ARM_PANEL;
}
static inline const int8_t* qk_arm_zero_points(const qk_arm_packed* h, int32_t panel, int32_t g) {
    return (const int8_t*)h + h->zero_points_at + ((size_t)panel * h->groups + g) * QK_ARM_PANEL;
}

/* 4-bit weights: the two int8 registers packed in 16 bytes (low nibbles first), sign-extended. */
static inline void qk_arm_unpack_int4(int8x16_t packed, int8x16_t* low, int8x16_t* high) {
    *low = vshrq_n_s8(vshlq_n_s8(packed, 4), 4);
    *high = vshrq_n_s8(packed, 4);
}

/* The same registers times 16, in two instructions instead of three: each nibble in the top half of
 * its byte is 16 q, exactly, in [-128, 112]. The A8 kernels' sums are then 16 times too large (still
 * exact in int32 for every group size they take: 16 * 127 * 15 * 66311 < 2^31) and are converted
 * with 4 fraction bits (SCVTF #4), which divides by 16 at no cost. */
static inline void qk_arm_unpack_int4_x16(int8x16_t packed, int8x16_t* low, int8x16_t* high) {
    *low = vshlq_n_s8(packed, 4);
    *high = vreinterpretq_s8_u8(vandq_u8(vreinterpretq_u8_s8(packed), vdupq_n_u8(0xF0)));
}

/* A panel's eight zero points of group g as int32 (columns 0-3, 4-7), scaled like the kernels' sums
 * (times 16 for 4 bits, whose sums are 16 sum qx * q). */
static inline void qk_arm_zero_points_s32(const qk_arm_packed* h, int32_t panel, int32_t g, int bits, int32x4_t zp[2]) {
    int16x8_t zp16 = vmovl_s8(vld1_s8(qk_arm_zero_points(h, panel, g)));
    if (bits == 4) zp16 = vshlq_n_s16(zp16, 4);
    zp[0] = vmovl_s16(vget_low_s16(zp16));
    zp[1] = vmovl_high_s16(zp16);
}

/* An exact int32 group sum to float32, one rounding; 4-bit sums (qk_arm_unpack_int4_x16) are 16
 * times the value. */
static inline float32x4_t qk_arm_sum_to_float(int32x4_t acc, const int bits) {
    return bits == 4 ? vcvtq_n_f32_s32(acc, 4) : vcvtq_f32_s32(acc);
}

/* d[0..1] += v, in float64 (exact conversion, one rounding per add). */
static inline void qk_arm_fold(double* d, float32x2_t v) { vst1q_f64(d, vaddq_f64(vld1q_f64(d), vcvt_f64_f32(v))); }

/* Tasks per qk_parallel_for chunk, for tasks of `work` multiply-adds (or elements converted) each:
 * about 2^17 per chunk, so a 4096 x 4096 decode runs as 128 chunks of 4 panels, enough for the
 * threads to balance, and claiming a chunk costs next to nothing against its work. */
static inline int32_t qk_arm_grain(int64_t work) {
    enum { CHUNK_WORK = 1 << 17 };
    return work >= CHUNK_WORK ? 1 : (int32_t)(CHUNK_WORK / (work > 0 ? work : 1));
}

qk_status qk_arm_pack_i8mm(const qk_weights* w, void** packed, size_t* bytes);
qk_status qk_arm_pack_dotprod(const qk_weights* w, void** packed, size_t* bytes);

/* ---- A8 ---- */

/* One A8 problem, activations already quantized. qx holds the rows at the padded k positions:
 * SMMLA layout: rows in pairs, 8 k of row 2p then 8 k of row 2p+1, per 16 bytes (a zero row pads
 * an odd M); SDOT layout: row after row. */
typedef struct {
    const qk_arm_packed* h;
    const int8_t* qx;
    const int32_t* sums; /* [rows][groups]: sum of qx over each group (for zero points and offsets) */
} qk_arm_a8_problem;

/* Computes rows [row, row + rows) of one panel before the row scale: tile[r][c] =
 * sum_g (scale[c,g] * acc[r,c,g] + offset[c,g] * xs[r,g]) in float64 (float32 over runs of
 * qk_arm_fold_groups groups), xs the group sums of qx. */
typedef void (*qk_arm_a8_tile_fn)(const qk_arm_a8_problem* p, int32_t panel, int32_t row, int32_t rows,
                                  double tile[][QK_ARM_PANEL]);

/* The A8 driver of both backends: quantizes the activations into the workspace, then runs `tile`
 * over every panel and tile of QK_ARM_A8_ROWS rows (fewer at the end). */
size_t qk_arm_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_arm_a8_run(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a,
                        qk_arm_a8_tile_fn tile);

qk_status qk_arm_i8mm_a8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
qk_status qk_arm_dotprod_a8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);

/* ---- A16 (baseline NEON, both layouts) ---- */

size_t qk_arm_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_arm_a16(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);

#endif /* QK_ARM_KERNELS_H */
