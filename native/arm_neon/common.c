/* The ARM backends' packing, A8 activation quantizer and A8 driver (baseline Armv8-A NEON). */
#include <math.h>
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
        memcpy(row + (size_t)g * h->group_padded, q + (size_t)g * w->group_size, (size_t)qk_arm_group_length(h, g));
}

/* One pack: the header, and the panels that the tasks fill. */
typedef struct {
    const qk_weights* w;
    const qk_arm_packed* h;
    uint8_t* block;
    int8_t* rows;       /* per thread: a panel's rows at the padded k positions, then K bytes */
    size_t rows_bytes;  /* of one thread's part */
} pack_job;

/* Panels [begin, end): their weight registers, scales, offsets and zero points (disjoint parts of
 * the block). */
static void pack_panels(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const pack_job* job = arg;
    const qk_weights* w = job->w;
    const qk_arm_packed* h = job->h;
    int8_t* rows = job->rows + (size_t)thread * job->rows_bytes;
    int32_t k_per_register = h->k_per_register, columns_per_register = 16 / k_per_register;
    int32_t registers_per_step = QK_ARM_PANEL / columns_per_register;
    int32_t registers = h->k_padded / k_per_register * registers_per_step;
    for (int32_t panel = begin; panel < end; panel++) {
        for (int32_t c = 0; c < QK_ARM_PANEL; c++)
            padded_row(w, h, panel * QK_ARM_PANEL + c, rows + (size_t)c * h->k_padded,
                       rows + (size_t)QK_ARM_PANEL * h->k_padded);
        uint8_t* out = job->block + QK_ARM_HEADER + (size_t)panel * h->panel_bytes;
        uint8_t reg[16], low[16];
        for (int32_t r = 0; r < registers; r++) {
            int32_t step = r / registers_per_step, first_column = r % registers_per_step * columns_per_register;
            for (int32_t c = 0; c < columns_per_register; c++)
                memcpy(reg + c * k_per_register,
                       rows + (size_t)(first_column + c) * h->k_padded + (size_t)step * k_per_register,
                       (size_t)k_per_register);
            if (w->bits == 8)
                memcpy(out + (size_t)r * 16, reg, 16);
            else if (r % 2 == 0)
                memcpy(low, reg, 16);
            else /* registers 2i, 2i+1: low and high nibbles of the same 16 bytes */
                for (int b = 0; b < 16; b++) out[(size_t)r / 2 * 16 + b] = (uint8_t)((low[b] & 0xF) | (reg[b] << 4));
        }
        for (int32_t g = 0; g < h->groups; g++)
            for (int32_t c = 0; c < QK_ARM_PANEL; c++) {
                int32_t n = panel * QK_ARM_PANEL + c;
                if (n >= w->N) continue;
                size_t at = ((size_t)panel * h->groups + g) * QK_ARM_PANEL + c;
                ((float*)(job->block + h->scales_at))[at] = w->scales[(size_t)n * h->groups + g];
                if (h->has_offsets) ((float*)(job->block + h->offsets_at))[at] = w->offsets[(size_t)n * h->groups + g];
                if (h->has_zero_points) ((int8_t*)(job->block + h->zero_points_at))[at] = w->zero_points[(size_t)n * h->groups + g];
            }
    }
}

/* Packs every valid format: offsets when given, and a shorter last group padded to its own length. */
static qk_status pack(const qk_weights* w, int32_t k_per_register, void** packed, size_t* bytes) {
    qk_arm_packed h = {.N = w->N, .K = w->K, .group_size = w->group_size, .bits = w->bits,
                       .groups = qk_groups_per_row(w), .k_per_register = k_per_register,
                       .has_zero_points = w->zero_points != NULL, .has_offsets = w->offsets != NULL};
    int64_t longest = w->group_size < w->K ? w->group_size : w->K; /* a group size beyond K pads nothing */
    int64_t last = w->K - (int64_t)(h.groups - 1) * w->group_size;
    int64_t group_padded = (longest + QK_ARM_GROUP_STEP - 1) / QK_ARM_GROUP_STEP * QK_ARM_GROUP_STEP;
    int64_t last_padded = (last + QK_ARM_GROUP_STEP - 1) / QK_ARM_GROUP_STEP * QK_ARM_GROUP_STEP;
    int64_t k_padded = (h.groups - 1) * group_padded + last_padded;
    if (k_padded > INT32_MAX / QK_ARM_PANEL) /* int32 k and register counts */
        return qk_fail(QK_ERR_UNSUPPORTED, "K=%d with group size %d is too long for the ARM layout (K padded to %lld)",
                       w->K, w->group_size, (long long)k_padded);
    h.group_padded = (int32_t)group_padded;
    h.last_padded = (int32_t)last_padded;
    h.k_padded = (int32_t)k_padded;
    h.panels = (w->N + QK_ARM_PANEL - 1) / QK_ARM_PANEL;
    h.panel_bytes = (size_t)h.k_padded * QK_ARM_PANEL * (size_t)w->bits / 8;
    size_t group_entries = (size_t)h.panels * h.groups * QK_ARM_PANEL;
    h.scales_at = align64(QK_ARM_HEADER + (size_t)h.panels * h.panel_bytes);
    h.offsets_at = align64(h.scales_at + group_entries * sizeof(float));
    h.zero_points_at = align64(h.offsets_at + (h.has_offsets ? group_entries * sizeof(float) : 0));
    size_t total = h.zero_points_at + (h.has_zero_points ? group_entries : 0);

    qk_exec exec = {.size = sizeof exec, .threads = qk_threads_for(1, w->N, w->K)};
    pack_job job = {w, &h, qk_aligned_alloc(total), NULL, align64((size_t)QK_ARM_PANEL * h.k_padded + (size_t)w->K)};
    job.rows = qk_aligned_alloc((size_t)exec.threads * job.rows_bytes);
    if (!job.block || !job.rows) {
        qk_aligned_free(job.block);
        qk_aligned_free(job.rows);
        return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of packed weights", total);
    }
    memset(job.block, 0, total); /* the scales of padding columns, and the gaps between sections */
    memcpy(job.block, &h, sizeof h);
    qk_parallel_for(&exec, h.panels, qk_arm_grain((int64_t)h.k_padded * QK_ARM_PANEL), pack_panels, &job);
    qk_aligned_free(job.rows);
    *packed = job.block;
    *bytes = total;
    return QK_OK;
}

qk_status qk_arm_pack_i8mm(const qk_weights* w, void** packed, size_t* bytes) { return pack(w, 8, packed, bytes); }
qk_status qk_arm_pack_dotprod(const qk_weights* w, void** packed, size_t* bytes) { return pack(w, 4, packed, bytes); }

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
    float32x4_t inv = vdupq_n_f32(finite && amax > 0.0f ? 127.0f / amax : 0.0f); /* +Inf: reading 4 */
    for (int32_t g = 0; g < h->groups; g++) {
        int32_t sum = 0, length = qk_arm_group_length(h, g), chunks = qk_arm_group_padded(h, g) / 8;
        int8_t* chunk = dst + (size_t)g * (h->group_padded / 8) * chunk_stride;
        for (int32_t j = 0; j < chunks; j++, chunk += chunk_stride) {
            int32_t count = length - 8 * j;
            count = count > 8 ? 8 : count < 0 ? 0 : count;
            int8x8_t q = vdup_n_s8(0);
            if (count > 0 && finite) {
                float32x4_t v[2];
                load8(a->input, a->input_dtype, first + (size_t)g * h->group_size + 8 * j, count, v);
                q = quantize8(v, inv);
            }
            vst1_s8(chunk, q);
            sum += vaddlv_s8(q);
        }
        sums[g] = sum;
    }
    *sx = amax / 127.0f;
    return finite;
}

/* ---- the A8 driver ---- */

/* The driver's buffers in the workspace: quantized rows (M rounded up to pairs: SMMLA reads rows in
 * pairs), their group sums, row scales and finiteness. With workspace NULL it only measures. */
typedef struct {
    int8_t* qx;
    int32_t* sums;
    float* sx;
    int* finite;
} a8_buffers;

static size_t a8_layout(const qk_arm_packed* h, int32_t M, void* workspace, a8_buffers* b) {
    size_t rows = (size_t)(M + 1) / 2 * 2;
    size_t sums_at = align64(rows * h->k_padded);
    size_t sx_at = align64(sums_at + rows * h->groups * sizeof(int32_t));
    size_t finite_at = align64(sx_at + (size_t)M * sizeof(float));
    if (workspace) {
        uint8_t* base = workspace;
        *b = (a8_buffers){(int8_t*)base, (int32_t*)(base + sums_at), (float*)(base + sx_at),
                          (int*)(base + finite_at)};
    }
    return finite_at + (size_t)M * sizeof(int);
}

size_t qk_arm_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads; /* the buffers are shared: tasks write disjoint rows, then read them all */
    return a8_layout(qk_arm_header(w), a->M, NULL, NULL);
}

typedef struct {
    const qk_matmul_args* a;
    qk_arm_a8_problem p;
    a8_buffers b;
    qk_arm_a8_tile_fn tile;
} a8_call;

/* Rows [begin, end) of X: quantized to their places in qx (a pair's two rows fill alternate 8-byte
 * halves of its 16-byte chunks, so tasks never write the same byte). */
static void quantize_rows(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const a8_call* c = arg;
    const qk_arm_packed* h = c->p.h;
    int paired = h->k_per_register == 8;
    for (int32_t m = begin; m < end; m++) {
        int8_t* dst = paired ? c->b.qx + (size_t)(m / 2) * 2 * h->k_padded + (m % 2) * 8 : c->b.qx + (size_t)m * h->k_padded;
        c->b.finite[m] = quantize_row(c->a, h, m, dst, paired ? 16 : 8, c->b.sums + (size_t)m * h->groups, &c->b.sx[m]);
    }
}

/* Panels [begin, end): every row tile, scaled by its row and stored. */
static void a8_panels(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const a8_call* c = arg;
    const qk_matmul_args* a = c->a;
    int32_t M = a->M, N = c->p.h->N;
    for (int32_t panel = begin; panel < end; panel++) {
        double t[QK_ARM_A8_ROWS][QK_ARM_PANEL];
        int32_t n0 = panel * QK_ARM_PANEL, columns = N - n0 < QK_ARM_PANEL ? N - n0 : QK_ARM_PANEL;
        for (int32_t row = 0; row < M; row += QK_ARM_A8_ROWS) {
            int32_t count = M - row < QK_ARM_A8_ROWS ? M - row : QK_ARM_A8_ROWS;
            c->tile(&c->p, panel, row, count, t);
            for (int32_t r = 0; r < count; r++)
                for (int32_t col = 0; col < columns; col++) {
                    int32_t m = row + r, n = n0 + col;
                    double y = c->b.finite[m] ? (double)c->b.sx[m] * t[r][col] + (a->bias ? a->bias[n] : 0.0) : NAN;
                    qk_store_f64(a->output, a->input_dtype, (size_t)m * N + n, y);
                }
        }
    }
}

qk_status qk_arm_a8_run(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a,
                        qk_arm_a8_tile_fn tile) {
    const qk_arm_packed* h = qk_arm_header(w);
    int32_t M = a->M;
    a8_call c = {.a = a, .tile = tile};
    a8_layout(h, M, exec->workspace, &c.b);
    c.p = (qk_arm_a8_problem){h, c.b.qx, c.b.sums};
    if (M % 2) { /* an odd M: SMMLA pairs the last row with a zero row (interleaved with it) */
        memset(c.b.qx + (size_t)(M - 1) * h->k_padded, 0, 2 * (size_t)h->k_padded);
        memset(c.b.sums + (size_t)M * h->groups, 0, (size_t)h->groups * sizeof *c.b.sums);
    }
    qk_parallel_for(exec, M, qk_arm_grain(h->K), quantize_rows, &c);
    qk_parallel_for(exec, h->panels, qk_arm_grain((int64_t)M * h->K * QK_ARM_PANEL), a8_panels, &c);
    return QK_OK;
}
