/* A16 for both ARM layouts, in baseline NEON float32.
 *
 * Per panel of 8 columns, the packed weights are dequantized once, w = float32(scale * (q - zp))
 * or, with offsets, float32(scale * (q - zp) + offset) by one FMA (q - zp in int16, exact; one
 * rounding either way), into a k-major scratch of two 4-column halves, then every row tile runs a
 * float32 FMA kernel on it: 8 rows x 8 columns, per k one FMLA by element per row and half, folded
 * into float64 every 64 k. float16 and bfloat16 inputs are converted to float32 once per call,
 * exactly (FCVTL / a shift); float16 arithmetic is not used: the contract wants float32
 * accumulation, and dequantizing in float16 would round twice. */
#include <string.h>

#include "arm_kernels.h"

enum { ROWS = 8, RUN_K = 64 };

/* The four float32 columns of `wide` (lanes: 4 consecutive k) to rows k..k+3 of one half. */
static inline void store_columns(float* half, int32_t k, float32x4x4_t wide) { vst4q_f32(half + (size_t)k * 4, wide); }

/* int16 q - zp (8 lanes) to two float32x4, times a scale each, plus an offset each when `offsets`:
 * with an FMA, so that the weight is rounded once either way. */
static inline void to_float(int16x8_t d, float s_low, float s_high, float o_low, float o_high, const int offsets,
                            float32x4_t* low, float32x4_t* high) {
    float32x4_t a = vcvtq_f32_s32(vmovl_s16(vget_low_s16(d))), b = vcvtq_f32_s32(vmovl_high_s16(d));
    if (offsets) {
        *low = vfmaq_n_f32(vdupq_n_f32(o_low), a, s_low);
        *high = vfmaq_n_f32(vdupq_n_f32(o_high), b, s_high);
    } else {
        *low = vmulq_n_f32(a, s_low);
        *high = vmulq_n_f32(b, s_high);
    }
}

/* Dequantizes group g of one panel into half[0] (columns 0-3) and half[1] (columns 4-7), [k][4]
 * each, from w (the group's packed weights), with the group padding set to exactly 0. */
static inline __attribute__((always_inline)) void dequantize_group(const qk_arm_packed* h, int32_t panel,
                                                                  int32_t g, const int8_t* w,
                                                                  float* const half[2], const int offsets) {
    int smmla = h->k_per_register == 8;
    const float* s = qk_arm_scales(h, panel, g);
    float o[QK_ARM_PANEL] = {0};
    if (offsets) memcpy(o, qk_arm_offsets(h, panel, g), sizeof o);
    int16_t zp[QK_ARM_PANEL] = {0};
    if (h->has_zero_points)
        for (int c = 0; c < QK_ARM_PANEL; c++) zp[c] = qk_arm_zero_points(h, panel, g)[c];
    int32_t begin = g * h->group_padded, end = begin + qk_arm_group_padded(h, g);
    for (int32_t k = begin; k < end; k += 8) {
        /* 8 k x 8 columns: 4 registers either way (SMMLA: one step; SDOT: two steps) */
        int8x16_t r[4];
        if (h->bits == 8) {
            for (int i = 0; i < 4; i++) r[i] = vld1q_s8(w + 16 * i);
            w += 64;
        } else {
            qk_arm_unpack_int4(vld1q_s8(w), &r[0], &r[1]);
            qk_arm_unpack_int4(vld1q_s8(w + 16), &r[2], &r[3]);
            w += 32;
        }
        float32x4x4_t lo[2], hi[2]; /* [half]: k..k+3 and k+4..k+7 of the half's 4 columns */
        for (int i = 0; i < 4; i++) {
            int16x8_t a = vmovl_s8(vget_low_s8(r[i])), b = vmovl_high_s8(r[i]);
            if (smmla) { /* register i: columns 2i (a) and 2i+1 (b), 8 k each */
                int c = 2 * i;
                a = vsubq_s16(a, vdupq_n_s16(zp[c]));
                b = vsubq_s16(b, vdupq_n_s16(zp[c + 1]));
                to_float(a, s[c], s[c], o[c], o[c], offsets, &lo[c / 4].val[c % 4], &hi[c / 4].val[c % 4]);
                to_float(b, s[c + 1], s[c + 1], o[c + 1], o[c + 1], offsets, &lo[c / 4].val[c % 4 + 1],
                         &hi[c / 4].val[c % 4 + 1]);
            } else { /* register i: 4 k (step i / 2) of columns 4 (i % 2) .. + 3: a holds 2, b 2 */
                int c = 4 * (i % 2);
                float32x4x4_t* dst = i < 2 ? &lo[i % 2] : &hi[i % 2];
                a = vsubq_s16(a, vcombine_s16(vdup_n_s16(zp[c]), vdup_n_s16(zp[c + 1])));
                b = vsubq_s16(b, vcombine_s16(vdup_n_s16(zp[c + 2]), vdup_n_s16(zp[c + 3])));
                to_float(a, s[c], s[c + 1], o[c], o[c + 1], offsets, &dst->val[0], &dst->val[1]);
                to_float(b, s[c + 2], s[c + 3], o[c + 2], o[c + 3], offsets, &dst->val[2], &dst->val[3]);
            }
        }
        for (int i = 0; i < 2; i++) {
            store_columns(half[i], k, lo[i]);
            store_columns(half[i], k + 4, hi[i]);
        }
    }
    size_t pad = (size_t)(end - begin - qk_arm_group_length(h, g)) * 4;
    for (int i = 0; i < 2; i++) memset(half[i] + ((size_t)end * 4 - pad), 0, pad * sizeof(float));
}

/* Dequantizes one panel, w = scale * (q - zp) (+ offset), into half[0] and half[1], [k_padded][4]
 * each. The offsets are a per-group choice between two copies of the loop, so weights without them
 * run the same instructions as before offsets existed. */
static void dequantize_panel(const qk_arm_packed* h, int32_t panel, float* const half[2]) {
    const int8_t* w = qk_arm_panel_weights(h, panel);
    size_t group_bytes = (size_t)h->group_padded * QK_ARM_PANEL * (size_t)h->bits / 8;
    for (int32_t g = 0; g < h->groups; g++, w += group_bytes) {
        if (h->has_offsets)
            dequantize_group(h, panel, g, w, half, 1);
        else
            dequantize_group(h, panel, g, w, half, 0);
    }
}

/* x: [rows][k_padded] float32. Sums in float32 over runs of RUN_K k and folds each run into
 * float64: one float32 sum over all of K could miss the contract's float32 tolerance (its error
 * grows with the number of terms). Then adds the bias and rounds once. */
static inline __attribute__((always_inline)) void tile_rows(const qk_matmul_args* a, const qk_arm_packed* h,
                                                           const float* x, float* const half[2], int32_t row,
                                                           int32_t panel, const int rows) {
    const float* xr[ROWS];
    double y[ROWS][QK_ARM_PANEL];
    for (int r = 0; r < rows; r++) {
        xr[r] = x + (size_t)r * h->k_padded;
        for (int c = 0; c < QK_ARM_PANEL; c++) y[r][c] = 0.0;
    }
    for (int32_t k0 = 0; k0 < h->k_padded; k0 += RUN_K) {
        int32_t k1 = h->k_padded - k0 < RUN_K ? h->k_padded : k0 + RUN_K;
        float32x4_t acc0[ROWS], acc1[ROWS]; /* columns 0-3 and 4-7 */
        for (int r = 0; r < rows; r++) acc0[r] = acc1[r] = vdupq_n_f32(0.0f);
        for (int32_t k = k0; k < k1; k += 4) {
            float32x4_t xv[ROWS];
            for (int r = 0; r < rows; r++) xv[r] = vld1q_f32(xr[r] + k);
#define QK_FMA_STEP(lane)                                                                          \
    {                                                                                              \
        float32x4_t w0 = vld1q_f32(half[0] + (size_t)(k + lane) * 4);                              \
        float32x4_t w1 = vld1q_f32(half[1] + (size_t)(k + lane) * 4);                              \
        for (int r = 0; r < rows; r++) {                                                           \
            acc0[r] = vfmaq_laneq_f32(acc0[r], w0, xv[r], lane);                                   \
            acc1[r] = vfmaq_laneq_f32(acc1[r], w1, xv[r], lane);                                   \
        }                                                                                          \
    }
            QK_FMA_STEP(0)
            QK_FMA_STEP(1)
            QK_FMA_STEP(2)
            QK_FMA_STEP(3)
#undef QK_FMA_STEP
        }
        for (int r = 0; r < rows; r++) {
            qk_arm_fold(&y[r][0], vget_low_f32(acc0[r]));
            qk_arm_fold(&y[r][2], vget_high_f32(acc0[r]));
            qk_arm_fold(&y[r][4], vget_low_f32(acc1[r]));
            qk_arm_fold(&y[r][6], vget_high_f32(acc1[r]));
        }
    }
    int32_t n0 = panel * QK_ARM_PANEL, columns = h->N - n0 < QK_ARM_PANEL ? h->N - n0 : QK_ARM_PANEL;
    for (int r = 0; r < rows; r++)
        for (int32_t c = 0; c < columns; c++)
            qk_store_f64(a->output, a->input_dtype, (size_t)(row + r) * h->N + n0 + c,
                         y[r][c] + (a->bias ? a->bias[n0 + c] : 0.0));
}

/* The kernel's buffers in the workspace: X as float32 at the padded positions [M][k_padded], then a
 * dequantized panel per thread [threads][k_padded * 8]. k_padded is a multiple of 16, so both
 * parts stay 64-byte aligned. With workspace NULL it only measures. */
static size_t layout(const qk_arm_packed* h, int32_t M, int32_t threads, void* workspace, float** x, float** panels) {
    size_t x_floats = (size_t)M * h->k_padded;
    if (workspace) {
        *x = workspace;
        *panels = *x + x_floats;
    }
    return (x_floats + (size_t)threads * h->k_padded * QK_ARM_PANEL) * sizeof(float);
}

size_t qk_arm_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    return layout(qk_arm_header(w), a->M, threads, NULL, NULL, NULL);
}

typedef struct {
    const qk_matmul_args* a;
    const qk_arm_packed* h;
    float* x;
    float* panels;
} a16_call;

/* Rows [begin, end) of X to float32 at the padded positions of the layout, zeros in the group padding. */
static void convert_rows(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const a16_call* c = arg;
    const qk_matmul_args* a = c->a;
    const qk_arm_packed* h = c->h;
    for (int32_t m = begin; m < end; m++)
        for (int32_t g = 0; g < h->groups; g++) {
            float* dst = c->x + (size_t)m * h->k_padded + (size_t)g * h->group_padded;
            size_t first = (size_t)m * h->K + (size_t)g * h->group_size;
            int32_t length = qk_arm_group_length(h, g), k = 0;
            if (a->input_dtype == QK_DTYPE_F32) {
                memcpy(dst, (const float*)a->input + first, (size_t)length * sizeof(float));
                k = length;
            }
            for (; k + 4 <= length; k += 4) {
                uint16x4_t v = vld1_u16((const uint16_t*)a->input + first + k);
                vst1q_f32(dst + k, a->input_dtype == QK_DTYPE_F16 ? vcvt_f32_f16(vreinterpret_f16_u16(v))
                                                                   : vreinterpretq_f32_u32(vshll_n_u16(v, 16)));
            }
            for (; k < length; k++) dst[k] = qk_load_f32(a->input, a->input_dtype, first + k);
            memset(dst + length, 0, (size_t)(qk_arm_group_padded(h, g) - length) * sizeof(float));
        }
}

/* Panels [begin, end), each dequantized into this thread's scratch panel, then every row tile. */
static void a16_panels(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const a16_call* c = arg;
    const qk_matmul_args* a = c->a;
    const qk_arm_packed* h = c->h;
    float* mine = c->panels + (size_t)thread * h->k_padded * QK_ARM_PANEL;
    float* const half[2] = {mine, mine + (size_t)h->k_padded * 4};
    for (int32_t panel = begin; panel < end; panel++) {
        dequantize_panel(h, panel, half);
        for (int32_t row = 0; row < a->M; row += ROWS) {
            const float* xr = c->x + (size_t)row * h->k_padded;
            switch (a->M - row < ROWS ? a->M - row : ROWS) {
            case 1: tile_rows(a, h, xr, half, row, panel, 1); break;
            case 2: tile_rows(a, h, xr, half, row, panel, 2); break;
            case 3: tile_rows(a, h, xr, half, row, panel, 3); break;
            case 4: tile_rows(a, h, xr, half, row, panel, 4); break;
            case 5: tile_rows(a, h, xr, half, row, panel, 5); break;
            case 6: tile_rows(a, h, xr, half, row, panel, 6); break;
            case 7: tile_rows(a, h, xr, half, row, panel, 7); break;
            default: tile_rows(a, h, xr, half, row, panel, 8); break;
            }
        }
    }
}

qk_status qk_arm_a16(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    a16_call c = {a, qk_arm_header(w), NULL, NULL};
    layout(c.h, a->M, exec->threads, exec->workspace, &c.x, &c.panels);
    qk_parallel_for(exec, a->M, qk_arm_grain(c.h->K), convert_rows, &c);
    qk_parallel_for(exec, c.h->panels, qk_arm_grain((int64_t)a->M * c.h->K * QK_ARM_PANEL), a16_panels, &c);
    return QK_OK;
}
