/* The ARM backends' packing, A8 activation quantizer and A8 driver (baseline Armv8-A NEON). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arm_kernels.h"

_Static_assert(sizeof(qk_arm_packed) <= QK_ARM_HEADER, "the header outgrew its space");

/* ---- packing ---- */

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Row n of the weights as int8 at the padded k positions: zeros in the group padding, and all
 * zeros for the rows that pad the last panel. `unpacked` holds K bytes (for 4-bit weights). */
static void padded_row(const qk_weights* w, const qk_arm_packed* h, int32_t n, int8_t* row, int8_t* unpacked) {
    memset(row, 0, (size_t)h->k_padded);
    if (n >= w->N) return;
    const int8_t* q = w->data + (size_t)n * qk_row_bytes(w->K, w->bits);
    if (w->bits == 4) {
        for (int32_t k = 0; k < w->K; k++) unpacked[k] = (int8_t)qk_weight_q(w, n, k);
        q = unpacked;
    }
    for (int32_t g = 0; g < h->groups; g++)
        memcpy(row + (size_t)g * h->group_padded, q + (size_t)g * w->group_size, (size_t)w->group_size);
}

static qk_status pack(const qk_weights* w, int32_t k_per_register, void** data, size_t* size) {
    qk_arm_packed h = {.N = w->N, .K = w->K, .group_size = w->group_size, .bits = w->bits,
                       .groups = qk_groups_per_row(w), .k_per_register = k_per_register,
                       .has_zero_points = w->zero_points != NULL};
    int64_t group_padded = ((int64_t)w->group_size + QK_ARM_GROUP_STEP - 1) / QK_ARM_GROUP_STEP * QK_ARM_GROUP_STEP;
    if (h.groups * group_padded > INT32_MAX / QK_ARM_PANEL) /* int32 k and register counts */
        return qk_fail(QK_ERR_UNSUPPORTED, "K=%d with group size %d is too long for the ARM layout (K padded to %lld)",
                       w->K, w->group_size, (long long)(h.groups * group_padded));
    h.group_padded = (int32_t)group_padded;
    h.k_padded = h.groups * h.group_padded;
    h.panels = (w->N + QK_ARM_PANEL - 1) / QK_ARM_PANEL;
    h.panel_bytes = (size_t)h.k_padded * QK_ARM_PANEL * (size_t)w->bits / 8;
    size_t group_entries = (size_t)h.panels * h.groups * QK_ARM_PANEL;
    h.scales_at = align64(QK_ARM_HEADER + (size_t)h.panels * h.panel_bytes);
    h.zero_points_at = align64(h.scales_at + group_entries * sizeof(float));
    size_t total = h.zero_points_at + (h.has_zero_points ? group_entries : 0);

    uint8_t* block = qk_aligned_alloc(total);
    int8_t* rows = malloc((size_t)QK_ARM_PANEL * h.k_padded + (size_t)w->K); /* a panel's rows, one unpacked */
    if (!block || !rows) {
        qk_aligned_free(block);
        free(rows);
        return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of packed weights", total);
    }
    memset(block, 0, total);
    memcpy(block, &h, sizeof h);

    int32_t columns_per_register = 16 / k_per_register;
    int32_t registers_per_step = QK_ARM_PANEL / columns_per_register;
    int32_t registers = h.k_padded / k_per_register * registers_per_step;
    for (int32_t panel = 0; panel < h.panels; panel++) {
        for (int32_t c = 0; c < QK_ARM_PANEL; c++)
            padded_row(w, &h, panel * QK_ARM_PANEL + c, rows + (size_t)c * h.k_padded,
                       rows + (size_t)QK_ARM_PANEL * h.k_padded);
        uint8_t* out = block + QK_ARM_HEADER + (size_t)panel * h.panel_bytes;
        uint8_t reg[16], low[16];
        for (int32_t r = 0; r < registers; r++) {
            int32_t step = r / registers_per_step, first_column = r % registers_per_step * columns_per_register;
            for (int32_t c = 0; c < columns_per_register; c++)
                memcpy(reg + c * k_per_register,
                       rows + (size_t)(first_column + c) * h.k_padded + (size_t)step * k_per_register,
                       (size_t)k_per_register);
            if (w->bits == 8)
                memcpy(out + (size_t)r * 16, reg, 16);
            else if (r % 2 == 0)
                memcpy(low, reg, 16);
            else /* registers 2i, 2i+1: low and high nibbles of the same 16 bytes */
                for (int b = 0; b < 16; b++) out[(size_t)r / 2 * 16 + b] = (uint8_t)((low[b] & 0xF) | (reg[b] << 4));
        }
        for (int32_t g = 0; g < h.groups; g++)
            for (int32_t c = 0; c < QK_ARM_PANEL; c++) {
                int32_t n = panel * QK_ARM_PANEL + c;
                if (n >= w->N) continue;
                size_t at = ((size_t)panel * h.groups + g) * QK_ARM_PANEL + c;
                ((float*)(block + h.scales_at))[at] = w->scales[(size_t)n * h.groups + g];
                if (h.has_zero_points) ((int8_t*)(block + h.zero_points_at))[at] = w->zero_points[(size_t)n * h.groups + g];
            }
    }
    free(rows);
    *data = block;
    *size = total;
    return QK_OK;
}

qk_status qk_arm_pack_i8mm(const qk_weights* w, void** data, size_t* size) { return pack(w, 8, data, size); }
qk_status qk_arm_pack_dotprod(const qk_weights* w, void** data, size_t* size) { return pack(w, 4, data, size); }

/* ---- the A8 activation quantizer (docs/numerics.md section 3, A8; reading 4) ---- */

/* Four elements of X from index i, exactly, as float32. */
static float32x4_t load4(const void* x, qk_dtype dtype, size_t i) {
    switch (dtype) {
    case QK_DTYPE_F16: return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t*)x + i)));
    case QK_DTYPE_BF16: return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t*)x + i), 16));
    default: return vld1q_f32((const float*)x + i);
    }
}

/* Eight elements from index i, of which only `count` exist (the rest read as 0). */
static void load8(const void* x, qk_dtype dtype, size_t i, int32_t count, float32x4_t v[2]) {
    if (count == 8) {
        v[0] = load4(x, dtype, i);
        v[1] = load4(x, dtype, i + 4);
        return;
    }
    float part[8] = {0};
    for (int32_t j = 0; j < count; j++) part[j] = qk_load_f32(x, dtype, i + (size_t)j);
    v[0] = vld1q_f32(part);
    v[1] = vld1q_f32(part + 4);
}

/* rne(x * inv) clamped to [-127, 127]. FCVTNS rounds to nearest even, turns the NaN of 0 * Inf
 * into 0 and saturates +-Inf, exactly as the contract's float32 steps. */
static int8x8_t quantize8(const float32x4_t v[2], float32x4_t inv) {
    int32x4_t limit = vdupq_n_s32(127);
    int32x4_t lo = vcvtnq_s32_f32(vmulq_f32(v[0], inv)), hi = vcvtnq_s32_f32(vmulq_f32(v[1], inv));
    lo = vmaxq_s32(vminq_s32(lo, limit), vnegq_s32(limit));
    hi = vmaxq_s32(vminq_s32(hi, limit), vnegq_s32(limit));
    return vmovn_s16(vcombine_s16(vmovn_s32(lo), vmovn_s32(hi)));
}

/* Quantizes row m of X to the padded positions of the layout: the 8 k of padded chunk j go to
 * dst + j * chunk_stride (pads 0). Also writes the group sums of qx and the row scale; returns 0,
 * with the row zeroed, when the row holds NaN or Inf. */
static int quantize_row(const qk_matmul_args* a, const qk_arm_packed* h, int32_t m, int8_t* dst,
                        size_t chunk_stride, int32_t* sums, float* sx) {
    size_t first = (size_t)m * h->K;
    float32x4_t amax4 = vdupq_n_f32(0.0f);
    int32_t k = 0;
    for (; k + 4 <= h->K; k += 4) amax4 = vmaxq_f32(amax4, vabsq_f32(load4(a->input, a->input_dtype, first + k)));
    float amax = vmaxvq_f32(amax4); /* FMAX and FMAXV propagate NaN */
    int finite = isfinite(amax);
    for (; k < h->K; k++) {
        float v = fabsf(qk_load_f32(a->input, a->input_dtype, first + k));
        finite &= isfinite(v);
        amax = v > amax ? v : amax;
    }
    int32_t chunks = h->group_padded / 8;
    float32x4_t inv = vdupq_n_f32(finite && amax > 0.0f ? 127.0f / amax : 0.0f); /* +Inf: reading 4 */
    for (int32_t g = 0; g < h->groups; g++) {
        int32_t sum = 0;
        for (int32_t j = 0; j < chunks; j++) {
            int32_t count = h->group_size - 8 * j;
            count = count > 8 ? 8 : count < 0 ? 0 : count;
            int8x8_t q = vdup_n_s8(0);
            if (count > 0 && finite) {
                float32x4_t v[2];
                load8(a->input, a->input_dtype, first + (size_t)g * h->group_size + 8 * j, count, v);
                q = quantize8(v, inv);
            }
            vst1_s8(dst + ((size_t)g * chunks + j) * chunk_stride, q);
            sum += vaddlv_s8(q);
        }
        sums[g] = sum;
    }
    *sx = amax / 127.0f;
    return finite;
}

/* ---- the A8 driver ---- */

qk_status qk_arm_a8_run(const qk_packed_weights* w, const qk_matmul_args* a, qk_arm_a8_tile_fn tile) {
    const qk_arm_packed* h = qk_arm_header(w);
    int32_t M = a->M, N = h->N, rows = (M + 1) / 2 * 2; /* SMMLA reads rows in pairs */
    int paired = h->k_per_register == 8;
    int8_t* qx = qk_aligned_alloc((size_t)rows * h->k_padded);
    int32_t* sums = qk_aligned_alloc((size_t)rows * h->groups * sizeof *sums);
    float* sx = qk_aligned_alloc((size_t)M * sizeof *sx);
    int* finite = qk_aligned_alloc((size_t)M * sizeof *finite);
    if (!qx || !sums || !sx || !finite) {
        qk_aligned_free(qx);
        qk_aligned_free(sums);
        qk_aligned_free(sx);
        qk_aligned_free(finite);
        return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate the quantized activations");
    }
    if (rows > M) { /* an odd M: SMMLA pairs the last row with a zero row (interleaved with it) */
        memset(qx + (size_t)(rows - 2) * h->k_padded, 0, 2 * (size_t)h->k_padded);
        memset(sums + (size_t)M * h->groups, 0, (size_t)h->groups * sizeof *sums);
    }
    qk_arm_a8_problem p = {h, qx, sums};
#pragma omp parallel num_threads(qk_threads_for(M, N, h->K))
    {
#pragma omp for schedule(static)
        for (int32_t m = 0; m < M; m++) {
            int8_t* dst = paired ? qx + (size_t)(m / 2) * 2 * h->k_padded + (m % 2) * 8 : qx + (size_t)m * h->k_padded;
            finite[m] = quantize_row(a, h, m, dst, paired ? 16 : 8, sums + (size_t)m * h->groups, &sx[m]);
        }
#pragma omp for schedule(static) /* panels are independent */
        for (int32_t panel = 0; panel < h->panels; panel++) {
            double t[QK_ARM_A8_ROWS][QK_ARM_PANEL];
            int32_t n0 = panel * QK_ARM_PANEL, columns = N - n0 < QK_ARM_PANEL ? N - n0 : QK_ARM_PANEL;
            for (int32_t row = 0; row < M; row += QK_ARM_A8_ROWS) {
                int32_t count = M - row < QK_ARM_A8_ROWS ? M - row : QK_ARM_A8_ROWS;
                tile(&p, panel, row, count, t);
                for (int32_t r = 0; r < count; r++)
                    for (int32_t c = 0; c < columns; c++) {
                        int32_t m = row + r, n = n0 + c;
                        double y = finite[m] ? (double)sx[m] * t[r][c] + (a->bias ? a->bias[n] : 0.0) : NAN;
                        qk_store_f64(a->output, a->input_dtype, (size_t)m * N + n, y);
                    }
            }
        }
    }
    qk_aligned_free(qx);
    qk_aligned_free(sums);
    qk_aligned_free(sx);
    qk_aligned_free(finite);
    return QK_OK;
}
