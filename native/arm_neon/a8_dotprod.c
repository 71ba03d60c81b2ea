/* A8 with SDOT (FEAT_DotProd, Armv8.2-A; built with +dotprod, run only where HWCAP says ASIMDDP).
 *
 * One SDOT (by element) adds, to each of 4 int32 lanes, a 4-long dot product of 4 k of one
 * activation row (a 32-bit lane of a 16-byte activation register) with 4 k of one of 4 columns:
 * 16 multiply-adds. The tile is 4 rows x 8 columns: per 16 k, 4 activation loads and 8 weight loads
 * (4 for 4-bit) feed 32 SDOTs — the same loads as the SMMLA kernel's 4 x 8 tile, twice the
 * arithmetic instructions.
 *
 * Accumulator lanes are 4 consecutive columns of one row. Groups are combined as in the SMMLA
 * kernel: exact int32 sums with zp * sum qx subtracted, offset * sum qx added, float32 runs folded
 * into float64. */
#include <string.h>

#include "arm_kernels.h"

static inline __attribute__((always_inline)) void tile_rows(const qk_arm_a8_problem* p, int32_t panel, int32_t row,
                                                           const int rows, const int bits,
                                                           double tile[][QK_ARM_PANEL]) {
    const qk_arm_packed* h = p->h;
    const int8_t* w = qk_arm_panel_weights(h, panel);
    const int8_t* x = p->qx + (size_t)row * h->k_padded;
    float32x4_t run[4][2];
    memset(tile, 0, (size_t)rows * sizeof tile[0]);
    for (int r = 0; r < rows; r++) run[r][0] = run[r][1] = vdupq_n_f32(0.0f);

    /* A single row would have 2 accumulators, each SDOT waiting for the last: its odd lanes add into
     * the spare accumulators of row 1 instead, summed per group. */
    const int slots = rows == 1 ? 2 : rows;
    for (int32_t g = 0; g < h->groups; g++) {
        int32x4_t acc[4][2];
        for (int r = 0; r < slots; r++) acc[r][0] = acc[r][1] = vdupq_n_s32(0);
        for (int32_t k = 0, end = qk_arm_group_padded(h, g); k < end; k += 16) {
            int8x16_t xv[4];
            for (int r = 0; r < rows; r++) xv[r] = vld1q_s8(x + (size_t)r * h->k_padded);
            x += 16;
            int8x16_t wv[2];
            /* 4 k of lane `lane` of each row's activations times the weights' 8 columns */
#define QK_SDOT_STEP(lane)                                                                                   \
    if (bits == 8) {                                                                                         \
        wv[0] = vld1q_s8(w);                                                                                 \
        wv[1] = vld1q_s8(w + 16);                                                                            \
        w += 32;                                                                                             \
    } else {                                                                                                 \
        qk_arm_unpack_int4_x16(vld1q_s8(w), &wv[0], &wv[1]);                                                 \
        w += 16;                                                                                             \
    }                                                                                                        \
    for (int r = 0; r < rows; r++) {                                                                         \
        int slot = rows == 1 ? (lane) % 2 : r;                                                               \
        acc[slot][0] = vdotq_laneq_s32(acc[slot][0], wv[0], xv[r], lane);                                    \
        acc[slot][1] = vdotq_laneq_s32(acc[slot][1], wv[1], xv[r], lane);                                    \
    }
            QK_SDOT_STEP(0)
            QK_SDOT_STEP(1)
            QK_SDOT_STEP(2)
            QK_SDOT_STEP(3)
#undef QK_SDOT_STEP
        }
        if (rows == 1) {
            acc[0][0] = vaddq_s32(acc[0][0], acc[1][0]);
            acc[0][1] = vaddq_s32(acc[0][1], acc[1][1]);
        }

        const float* sc = qk_arm_scales(h, panel, g);
        float32x4_t scales[2] = {vld1q_f32(sc), vld1q_f32(sc + 4)};
        if (h->has_zero_points) {
            int32x4_t zp[2];
            qk_arm_zero_points_s32(h, panel, g, bits, zp);
            for (int r = 0; r < rows; r++) {
                int32_t s = p->sums[(size_t)(row + r) * h->groups + g];
                acc[r][0] = vmlsq_n_s32(acc[r][0], zp[0], s);
                acc[r][1] = vmlsq_n_s32(acc[r][1], zp[1], s);
            }
        }
        for (int r = 0; r < rows; r++)
            for (int q = 0; q < 2; q++) run[r][q] = vfmaq_f32(run[r][q], qk_arm_sum_to_float(acc[r][q], bits), scales[q]);
        if (h->has_offsets) {
            const float* of = qk_arm_offsets(h, panel, g);
            float32x4_t offsets[2] = {vld1q_f32(of), vld1q_f32(of + 4)};
            for (int r = 0; r < rows; r++) {
                float xs = (float)p->sums[(size_t)(row + r) * h->groups + g]; /* exact: |xs| <= 127 G < 2^24 */
                for (int q = 0; q < 2; q++) run[r][q] = vfmaq_n_f32(run[r][q], offsets[q], xs);
            }
        }

        if ((g + 1) % qk_arm_fold_groups(h->has_offsets) == 0 || g + 1 == h->groups)
            for (int r = 0; r < rows; r++)
                for (int q = 0; q < 2; q++) {
                    qk_arm_fold(&tile[r][4 * q], vget_low_f32(run[r][q]));
                    qk_arm_fold(&tile[r][4 * q + 2], vget_high_f32(run[r][q]));
                    run[r][q] = vdupq_n_f32(0.0f);
                }
    }
}

static void tile(const qk_arm_a8_problem* p, int32_t panel, int32_t row, int32_t rows, double t[][QK_ARM_PANEL]) {
    switch (rows * 16 + p->h->bits) {
    case 16 + 4: tile_rows(p, panel, row, 1, 4, t); break;
    case 32 + 4: tile_rows(p, panel, row, 2, 4, t); break;
    case 48 + 4: tile_rows(p, panel, row, 3, 4, t); break;
    case 64 + 4: tile_rows(p, panel, row, 4, 4, t); break;
    case 16 + 8: tile_rows(p, panel, row, 1, 8, t); break;
    case 32 + 8: tile_rows(p, panel, row, 2, 8, t); break;
    case 48 + 8: tile_rows(p, panel, row, 3, 8, t); break;
    default: tile_rows(p, panel, row, 4, 8, t); break;
    }
}

qk_status qk_arm_dotprod_a8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    return qk_arm_a8_run(exec, w, a, tile);
}
