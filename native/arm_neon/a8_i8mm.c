/* A8 with SMMLA (FEAT_I8MM, Armv8.6-A; built with +i8mm, run only where HWCAP2 says I8MM).
 *
 * One SMMLA multiplies a 2x8 int8 block of activations (two rows, 8 k) by an 8x2 block of weights
 * (8 k, two columns) into a 2x2 int32 tile: 32 multiply-adds. The tile is 4 rows x 8 columns: per
 * 8 k, 2 activation loads and 4 weight loads (2 for 4-bit) feed 8 SMMLAs. A tile of 1 or 2 rows
 * uses one row pair; an odd row count pairs its last row with a zero row of the activation buffer
 * (so at M = 1 half of each SMMLA is padding: 16 useful multiply-adds, as many as an SDOT).
 *
 * Accumulator lanes are [r0c0, r0c1, r1c0, r1c1] for rows 2p, 2p+1 and columns 2c, 2c+1. Per
 * group, the int32 sums become exact integers sum qx * (q - zp) = sum qx * q - zp * sum qx, then
 * float32 terms scale * acc + offset * sum qx, summed in float32 over runs of qk_arm_fold_groups
 * groups and folded into float64 (docs/numerics.md readings 5 and 14). */
#include <string.h>

#include "arm_kernels.h"

/* [a0, a1, a0, a1] from the low or high half of a: a per-column value for both rows of a pair. */
static inline float32x4_t pair_f32(float32x4_t v, int high) {
    float32x2_t half = high ? vget_high_f32(v) : vget_low_f32(v);
    return vcombine_f32(half, half);
}
static inline int32x4_t pair_s32(int32x4_t v, int high) {
    int32x2_t half = high ? vget_high_s32(v) : vget_low_s32(v);
    return vcombine_s32(half, half);
}

static inline __attribute__((always_inline)) void tile_pairs(const qk_arm_a8_problem* p, int32_t panel, int32_t row,
                                                            const int pairs, const int bits,
                                                            double tile[][QK_ARM_PANEL]) {
    const qk_arm_packed* h = p->h;
    const int8_t* w = qk_arm_panel_weights(h, panel);
    const int8_t* x[2];
    for (int i = 0; i < pairs; i++) x[i] = p->qx + (size_t)(row / 2 + i) * 2 * h->k_padded;
    float32x4_t run[2][4];
    memset(tile, 0, (size_t)2 * pairs * sizeof tile[0]);
    for (int i = 0; i < pairs; i++)
        for (int c = 0; c < 4; c++) run[i][c] = vdupq_n_f32(0.0f);

    for (int32_t g = 0; g < h->groups; g++) {
        int32x4_t acc[2][4];
        for (int i = 0; i < pairs; i++)
            for (int c = 0; c < 4; c++) acc[i][c] = vdupq_n_s32(0);
#pragma GCC unroll 2 /* a group's padded length / 8 is even */
        for (int32_t k = 0, end = qk_arm_group_padded(h, g); k < end; k += 8) {
            int8x16_t wv[4];
            if (bits == 8) {
                for (int c = 0; c < 4; c++) wv[c] = vld1q_s8(w + 16 * c);
                w += 64;
            } else {
                qk_arm_unpack_int4_x16(vld1q_s8(w), &wv[0], &wv[1]);
                qk_arm_unpack_int4_x16(vld1q_s8(w + 16), &wv[2], &wv[3]);
                w += 32;
            }
            for (int i = 0; i < pairs; i++) {
                int8x16_t xv = vld1q_s8(x[i]);
                x[i] += 16;
                for (int c = 0; c < 4; c++) acc[i][c] = vmmlaq_s32(acc[i][c], xv, wv[c]);
            }
        }

        const float* sc = qk_arm_scales(h, panel, g);
        float32x4_t scales[2] = {vld1q_f32(sc), vld1q_f32(sc + 4)};
        if (h->has_zero_points) {
            int32x4_t zp[2];
            qk_arm_zero_points_s32(h, panel, g, bits, zp);
            for (int i = 0; i < pairs; i++) {
                const int32_t* s = p->sums + (size_t)(row + 2 * i) * h->groups + g;
                int32x4_t rows_sum = vcombine_s32(vdup_n_s32(s[0]), vdup_n_s32(s[h->groups]));
                for (int c = 0; c < 4; c++) acc[i][c] = vmlsq_s32(acc[i][c], pair_s32(zp[c / 2], c % 2), rows_sum);
            }
        }
        for (int i = 0; i < pairs; i++)
            for (int c = 0; c < 4; c++)
                run[i][c] = vfmaq_f32(run[i][c], qk_arm_sum_to_float(acc[i][c], bits), pair_f32(scales[c / 2], c % 2));
        if (h->has_offsets) {
            const float* of = qk_arm_offsets(h, panel, g);
            float32x4_t offsets[2] = {vld1q_f32(of), vld1q_f32(of + 4)};
            for (int i = 0; i < pairs; i++) {
                const int32_t* s = p->sums + (size_t)(row + 2 * i) * h->groups + g;
                /* exact: |sum qx| <= 127 G < 2^24 */
                float32x4_t rows_sum = vcvtq_f32_s32(vcombine_s32(vdup_n_s32(s[0]), vdup_n_s32(s[h->groups])));
                for (int c = 0; c < 4; c++) run[i][c] = vfmaq_f32(run[i][c], rows_sum, pair_f32(offsets[c / 2], c % 2));
            }
        }

        if ((g + 1) % qk_arm_fold_groups(h->has_offsets) == 0 || g + 1 == h->groups)
            for (int i = 0; i < pairs; i++)
                for (int c = 0; c < 4; c++) {
                    qk_arm_fold(&tile[2 * i][2 * c], vget_low_f32(run[i][c]));
                    qk_arm_fold(&tile[2 * i + 1][2 * c], vget_high_f32(run[i][c]));
                    run[i][c] = vdupq_n_f32(0.0f);
                }
    }
}

static void tile(const qk_arm_a8_problem* p, int32_t panel, int32_t row, int32_t rows, double t[][QK_ARM_PANEL]) {
    if (p->h->bits == 8) {
        if (rows > 2) tile_pairs(p, panel, row, 2, 8, t);
        else tile_pairs(p, panel, row, 1, 8, t);
    } else {
        if (rows > 2) tile_pairs(p, panel, row, 2, 4, t);
        else tile_pairs(p, panel, row, 1, 4, t);
    }
}

qk_status qk_arm_i8mm_a8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    return qk_arm_a8_run(exec, w, a, tile);
}
