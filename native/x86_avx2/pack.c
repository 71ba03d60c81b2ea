/* Canonical weights into the x86_avx2 layout (avx2.h). Runs once per weight matrix, so it favours
 * plain code over speed, and runs its panels on the thread pool. */
#include <string.h>

#include "avx2.h"

/* Column n's weight at group-relative k of group g, as stored: a byte, or a nibble (padding: 0 past
 * N, the group's zero point past its end: avx2.h). */
static uint8_t stored(const qk_weights* w, int32_t n, int32_t g, int32_t k) {
    int32_t first = g * w->group_size;
    int32_t q = n >= w->N ? 0 : k < qk_group_length(w, g) ? qk_weight_q(w, n, first + k) : qk_weight_zp(w, n, first);
    return (uint8_t)(w->bits == 4 ? q & 0xF : q);
}

/* Column n's dword of block b of group g, as stored, when the block lies wholly inside the group:
 * read straight from the canonical row (the common case, and the one that decides packing speed). */
static uint32_t whole_dword(const qk_weights* w, int32_t n, int32_t g, int32_t b, int half) {
    const uint8_t* row = (const uint8_t*)w->data + (size_t)n * qk_row_bytes(w->K, w->bits);
    size_t k = (size_t)g * w->group_size + (size_t)b * QK_AVX2_BLOCK_K;
    uint32_t c;
    if (w->bits == 8) {
        memcpy(&c, row + k + 4 * half, 4);
        return c;
    }
    memcpy(&c, row + k / 2, 4); /* canonical bytes: q0 | q1 << 4, q2 | q3 << 4, ... (k even) */
    return qk_int4_dword_halves(c); /* byte i: k i low, k i + 4 high */
}

static void pack_header(const qk_weights* w, const qk_avx2_layout* l, int32_t panel, int32_t g, uint8_t* out) {
    float* scale = (float*)out;
    int32_t* zero_point = (int32_t*)(out + l->zeros_at);
    float* offset = (float*)(out + l->offsets_at);
    for (int32_t j = 0; j < QK_AVX2_PANEL; j++) {
        int32_t n = panel * QK_AVX2_PANEL + j, k = g * w->group_size;
        int valid = n < w->N;
        scale[j] = valid ? qk_weight_scale(w, n, k) : 0.0f;
        if (l->zeros_at) zero_point[j] = valid ? qk_weight_zp(w, n, k) : 0;
        if (l->offsets_at) offset[j] = valid ? qk_weight_offset(w, n, k) : 0.0f;
    }
}

/* Column j of a panel: its row of W read front to back (rows of W are often exactly 4 KiB apart,
 * so reading eight of them in step would make every load alias in the L1 cache). */
static void pack_column(const qk_weights* w, const qk_avx2_layout* l, int32_t panel, int32_t j, uint8_t* out) {
    int32_t n = panel * QK_AVX2_PANEL + j;
    for (int32_t g = 0; g < l->groups; g++) {
        uint8_t* block = out + (size_t)g * l->group_bytes + l->header;
        for (int32_t b = 0; b < l->blocks; b++, block += l->block_bytes) {
            int32_t k = b * QK_AVX2_BLOCK_K;
            int whole = n < w->N && k + QK_AVX2_BLOCK_K <= qk_group_length(w, g) && (w->bits == 8 || w->group_size % 2 == 0);
            for (int half = 0; half < (w->bits == 8 ? 2 : 1); half++) {
                uint32_t dword = 0;
                if (whole) {
                    dword = whole_dword(w, n, g, b, half);
                } else { /* padding or a partial block: element by element */
                    for (int32_t i = 0; i < 4; i++) {
                        uint32_t byte = w->bits == 4 ? stored(w, n, g, k + i) | stored(w, n, g, k + i + 4) << 4
                                                     : stored(w, n, g, k + 4 * half + i);
                        dword |= byte << 8 * i;
                    }
                }
                memcpy(block + 32 * half + 4 * j, &dword, 4);
            }
        }
    }
}

typedef struct {
    const qk_weights* w;
    qk_avx2_layout l;
    uint8_t* out;
} pack_job;

/* Panels [begin, end): independent, so any thread packs any of them. */
static void pack_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const pack_job* j = arg;
    for (int32_t p = begin; p < end; p++) {
        uint8_t* panel = j->out + (size_t)p * j->l.panel_bytes;
        for (int32_t g = 0; g < j->l.groups; g++) pack_header(j->w, &j->l, p, g, panel + (size_t)g * j->l.group_bytes);
        for (int32_t c = 0; c < QK_AVX2_PANEL; c++) pack_column(j->w, &j->l, p, c, panel);
    }
}

qk_status qk_avx2_pack(const qk_weights* w, void** data, size_t* size) {
    pack_job job = {w, qk_avx2_layout_of(w, w->zero_points != NULL, w->offsets != NULL), NULL};
    *size = (size_t)job.l.panels * job.l.panel_bytes;
    job.out = qk_aligned_alloc(*size + QK_AVX2_PREFETCH_BYTES);
    if (!job.out) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of packed weights", *size);
    qk_exec exec = {.size = sizeof exec, .threads = qk_threads_for(1, w->N, w->K)};
    /* Chunks of about 2^15 weights (tens of microseconds: packing is scalar code). */
    int32_t grain = (1 << 15) / (QK_AVX2_PANEL * w->K);
    qk_parallel_for(&exec, job.l.panels, grain > 1 ? grain : 1, pack_task, &job);
    *data = job.out;
    return QK_OK;
}
