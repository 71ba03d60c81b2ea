/* Canonical weights into the vnni16 layout (layout.h), for the x86_avx512 and x86_amx backends.
 * Runs once per weight matrix: plain C, its panels on the thread pool. */
#include <string.h>

#include "layout.h"

/* Column n's u = q + bias at group-relative k of group g, as stored (a byte or a nibble); padding
 * is 0 past N and the group's zero (q = zp) past its end (layout.h). */
static uint32_t stored(const qk_weights* w, int32_t bias, int32_t n, int32_t g, int32_t k) {
    if (n >= w->N) return 0;
    int32_t first = g * w->group_size;
    return (uint32_t)((k < qk_group_length(w, g) ? qk_weight_q(w, n, first + k) : qk_weight_zp(w, n, first)) + bias);
}

/* Column n's dword of row r of group g. */
static uint32_t row_dword(const qk_weights* w, const qk_vnni16_layout* l, int32_t n, int32_t g, int32_t r) {
    int32_t k = r * l->k_per_row;
    /* A row wholly inside the group is read straight from the canonical row (what decides packing
     * speed); a 4-bit one must start on a whole byte. */
    if (n < w->N && k + l->k_per_row <= qk_group_length(w, g) && (w->bits == 8 || w->group_size % 2 == 0)) {
        const uint8_t* row = (const uint8_t*)w->data + (size_t)n * qk_row_bytes(w->K, w->bits);
        size_t first = (size_t)g * w->group_size + (size_t)k;
        uint32_t c;
        if (w->bits == 8) {
            memcpy(&c, row + first, 4);
            return c ^ 0x80808080u; /* q + 128 in each byte */
        }
        memcpy(&c, row + first / 2, 4);
        return qk_int4_dword_halves(c) ^ 0x88888888u; /* q + 8 in each nibble */
    }
    uint32_t dword = 0;
    for (int32_t i = 0; i < 4; i++) {
        uint32_t byte = w->bits == 8 ? stored(w, l->bias, n, g, k + i)
                                     : stored(w, l->bias, n, g, k + i) | stored(w, l->bias, n, g, k + 4 + i) << 4;
        dword |= byte << 8 * i;
    }
    return dword;
}

static void pack_header(const qk_weights* w, const qk_vnni16_layout* l, int32_t panel, int32_t g, uint8_t* out) {
    float* scale = (float*)out;
    int32_t* zero = (int32_t*)(out + l->zeros_at);
    float* offset = (float*)(out + l->offsets_at);
    for (int32_t j = 0; j < QK_VNNI16_PANEL; j++) {
        int32_t n = panel * QK_VNNI16_PANEL + j, k = g * w->group_size;
        int valid = n < w->N;
        scale[j] = valid ? qk_weight_scale(w, n, k) : 0.0f;
        if (l->zeros_at) zero[j] = valid ? qk_weight_zp(w, n, k) + l->bias : 0;
        if (l->offsets_at) offset[j] = valid ? qk_weight_offset(w, n, k) : 0.0f;
    }
}

typedef struct {
    const qk_weights* w;
    qk_vnni16_layout l;
    uint8_t* out;
} pack_job;

/* Panels [begin, end): independent, so any thread packs any of them. Each column's row of W is read
 * front to back (rows of W are often exactly 4 KiB apart: reading 16 of them in step would make
 * every load alias in the L1 cache). */
static void pack_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const pack_job* job = arg;
    const qk_vnni16_layout* l = &job->l;
    for (int32_t p = begin; p < end; p++) {
        uint8_t* panel = job->out + (size_t)p * l->panel_bytes;
        for (int32_t g = 0; g < l->groups; g++) pack_header(job->w, l, p, g, panel + (size_t)g * l->group_bytes);
        for (int32_t j = 0; j < QK_VNNI16_PANEL; j++) {
            int32_t n = p * QK_VNNI16_PANEL + j;
            for (int32_t g = 0; g < l->groups; g++) {
                uint8_t* rows = panel + (size_t)g * l->group_bytes + l->header_bytes;
                for (int32_t r = 0; r < l->rows; r++) {
                    uint32_t dword = row_dword(job->w, l, n, g, r);
                    memcpy(rows + (size_t)r * QK_VNNI16_ROW_BYTES + 4 * j, &dword, 4);
                }
            }
        }
    }
}

qk_status qk_vnni16_pack(const qk_weights* w, void** data, size_t* size) {
    pack_job job = {w, qk_vnni16_layout_of(w, w->zero_points != NULL, w->offsets != NULL), NULL};
    *size = (size_t)job.l.panels * job.l.panel_bytes;
    job.out = qk_aligned_alloc(*size + QK_VNNI16_PREFETCH_BYTES);
    if (!job.out) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of packed weights", *size);
    qk_exec exec = {.size = sizeof exec, .threads = qk_threads_for(1, w->N, w->K)};
    /* Chunks of about 2^15 weights (tens of microseconds: packing is scalar code). */
    int32_t grain = (1 << 15) / (QK_VNNI16_PANEL * w->K);
    qk_parallel_for(&exec, job.l.panels, grain > 1 ? grain : 1, pack_task, &job);
    *data = job.out;
    return QK_OK;
}
