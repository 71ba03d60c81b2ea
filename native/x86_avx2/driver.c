/* The driver of the x86_avx2 kernels on the packed layout: rows of X prepared, tiles run, results
 * finished, each step as tasks on the thread pool.
 *
 * Work is split into tasks of one pair of panels (16 columns) by one chunk of rows, whose
 * activations stay in the L2 cache while the panels stream past them (CHUNK_BYTES). Tasks write
 * disjoint outputs and read only what the preparation wrote, so they run in any order, on any
 * thread. */
#include <math.h>
#include <string.h>

#include "avx2.h"

enum {
    TILE_ROWS = 4,
    CHUNK_BYTES = 256 * 1024, /* activations of a row chunk: about half an L2 cache */
    ROW_TASK_ELEMENTS = 16384, /* activations loaded or quantized per preparation task: a few microseconds */
};

qk_avx2_problem qk_avx2_problem_of(const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx2_problem p = {
        .a = a, .w = &w->format, .packed = w->packed, .l = qk_avx2_layout_of(&w->format, w->asymmetric, w->has_offsets),
        .asymmetric = w->asymmetric, .offsets = w->has_offsets,
    };
    p.row = (size_t)p.l.groups * (size_t)p.l.blocks * QK_AVX2_BLOCK_K;
    return p;
}

typedef struct {
    const qk_avx2_problem* p;
    size_t group_stride, row;
} rows_job;

static void prepare_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const rows_job* j = arg;
    const qk_avx2_problem* p = j->p;
    for (int32_t m = begin; m < end; m++)
        p->row_scale[m] = p->x ? qk_avx2_load_row(p->a, p->w, m, j->group_stride, p->x + (size_t)m * j->row)
                               : qk_avx2_quantize_row(p->a, p->w, m, j->group_stride, p->qx + (size_t)m * j->row,
                                                      p->sums + (size_t)m * p->l.groups);
}

void qk_avx2_prepare_rows(const qk_exec* exec, const qk_avx2_problem* p, size_t group_stride, size_t row) {
    rows_job job = {p, group_stride, row};
    int32_t grain = ROW_TASK_ELEMENTS / p->w->K;
    qk_parallel_for(exec, p->a->M, grain > 1 ? grain : 1, prepare_task, &job);
}

void qk_avx2_finish(const qk_matmul_args* a, int32_t N, const double* row_scale, int32_t m, int32_t n, int32_t count,
                    double* y) {
    for (int32_t j = 0; j < count; j++) {
        y[j] *= row_scale[m];
        if (a->bias) y[j] += a->bias[n + j];
    }
    qk_avx2_store(a, N, m, n, count, y);
}

typedef struct {
    const qk_avx2_problem* p;
    qk_avx2_tile_fn* tile;
    int32_t pairs, chunk_rows;
} tiles_job;

/* Task t: the pair of panels t % pairs, for the rows of chunk t / pairs. */
static void tiles_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const tiles_job* j = arg;
    const qk_avx2_problem* p = j->p;
    int32_t M = p->a->M, N = p->w->N;
    for (int32_t t = begin; t < end; t++) {
        int32_t pair = t % j->pairs, m0 = t / j->pairs * j->chunk_rows;
        int32_t m1 = M - m0 < j->chunk_rows ? M : m0 + j->chunk_rows;
        const uint8_t* panel = p->packed + (size_t)2 * pair * p->l.panel_bytes;
        int panels = p->l.panels - 2 * pair < 2 ? 1 : 2;
        for (int32_t m = m0; m < m1; m += TILE_ROWS) {
            int rows = m1 - m < TILE_ROWS ? m1 - m : TILE_ROWS;
            __m256d y[TILE_ROWS][4], *yr[TILE_ROWS];
            for (int r = 0; r < rows; r++) {
                for (int v = 0; v < 4; v++) y[r][v] = _mm256_setzero_pd();
                yr[r] = y[r];
            }
            j->tile(p, panel, panels, m, rows, yr);
            for (int pi = 0; pi < panels; pi++) {
                int32_t n = (2 * pair + pi) * QK_AVX2_PANEL, count = N - n < QK_AVX2_PANEL ? N - n : QK_AVX2_PANEL;
                for (int r = 0; r < rows; r++) {
                    double out[QK_AVX2_PANEL];
                    _mm256_storeu_pd(out, y[r][2 * pi]);
                    _mm256_storeu_pd(out + 4, y[r][2 * pi + 1]);
                    qk_avx2_finish(p->a, N, p->row_scale, m + r, n, count, out);
                }
            }
        }
    }
}

void qk_avx2_run_tiles(const qk_exec* exec, const qk_avx2_problem* p, qk_avx2_tile_fn* tile) {
    int32_t M = p->a->M;
    size_t row_bytes = p->row * (p->x ? sizeof(float) : 1);
    size_t tiles = CHUNK_BYTES / (row_bytes * TILE_ROWS); /* whole tiles per chunk, at least one */
    int32_t chunk_rows = (int32_t)(tiles > 0 ? tiles * TILE_ROWS : TILE_ROWS);
    if (chunk_rows > M) chunk_rows = M;
    tiles_job job = {p, tile, (p->l.panels + 1) / 2, chunk_rows};
    int32_t chunks = (M + chunk_rows - 1) / chunk_rows;
    double task_macs = (double)chunk_rows * 2 * QK_AVX2_PANEL * p->w->K;
    qk_parallel_for(exec, chunks * job.pairs, qk_avx2_grain(task_macs), tiles_task, &job);
}

/* Eight rows of eight values (row i at rows[i]) transposed into out[8 * c + i]. */
static inline void transpose8(const __m256 r[8], float* out) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; h++) {
            u[i + 2 * h] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], _MM_SHUFFLE(1, 0, 1, 0));
            u[i + 2 * h + 1] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], _MM_SHUFFLE(3, 2, 3, 2));
        }
    for (int c = 0; c < 4; c++) { /* u[c] holds columns c and c + 4 of rows 0..3, u[c + 4] of rows 4..7 */
        _mm256_storeu_ps(out + 8 * c, _mm256_permute2f128_ps(u[c], u[c + 4], 0x20));
        _mm256_storeu_ps(out + 8 * (c + 4), _mm256_permute2f128_ps(u[c], u[c + 4], 0x31));
    }
}

void qk_avx2_block_params(const qk_weights* w, int32_t n0, float* scale, float* offset, int32_t* zp, int32_t zp_offset) {
    int32_t groups = qk_groups_per_row(w), g = 0;
    size_t first[QK_AVX2_PANEL];
    for (int i = 0; i < QK_AVX2_PANEL; i++) first[i] = (size_t)(n0 + i < w->N ? n0 + i : w->N - 1) * groups;
    for (; g + 8 <= groups; g += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(w->scales + first[i] + g);
        transpose8(r, scale + 8 * g);
        if (offset) {
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(w->offsets + first[i] + g);
            transpose8(r, offset + 8 * g);
        }
        if (!zp) continue;
        for (int i = 0; i < 8; i++) {
            int64_t bytes;
            memcpy(&bytes, w->zero_points + first[i] + g, sizeof bytes);
            __m256i v = _mm256_add_epi32(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes)), _mm256_set1_epi32(zp_offset));
            r[i] = _mm256_castsi256_ps(v);
        }
        transpose8(r, (float*)(zp + 8 * g));
    }
    for (; g < groups; g++)
        for (int i = 0; i < 8; i++) {
            scale[8 * g + i] = w->scales[first[i] + g];
            if (offset) offset[8 * g + i] = w->offsets[first[i] + g];
            if (zp) zp[8 * g + i] = w->zero_points[first[i] + g] + zp_offset;
        }
}

size_t qk_avx2_canonical_a8_buffers(qk_avx2_canonical_a8* j, int32_t threads, size_t unit, void* base) {
    size_t used = 0, M = (size_t)j->a->M, groups = (size_t)qk_groups_per_row(j->w);
    size_t params = (size_t)threads * groups * QK_AVX2_PANEL;
    j->stride = (size_t)(j->w->group_size < j->w->K ? j->w->group_size : j->w->K);
    j->padded = (groups * j->stride + unit - 1) / unit * unit; /* K, or more with a shorter last group */
    j->qx = qk_avx2_take(base, &used, M * j->padded);
    j->sums = qk_avx2_take(base, &used, M * groups * sizeof *j->sums);
    j->row_scale = qk_avx2_take(base, &used, M * sizeof *j->row_scale);
    j->scale = qk_avx2_take(base, &used, params * sizeof *j->scale);
    j->offset = qk_avx2_take(base, &used, j->offsets ? params * sizeof *j->offset : 0);
    j->zp = qk_avx2_take(base, &used, j->asymmetric ? params * sizeof *j->zp : 0);
    return used;
}

/* Task t: rows [8t, 8t + 8) of W for every row of X. */
static void canonical_a8_block_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const qk_avx2_canonical_a8* j = arg;
    enum { BLOCK_N = QK_AVX2_PANEL };
    int32_t M = j->a->M, N = j->w->N, groups = qk_groups_per_row(j->w);
    float* scales = j->scale + (size_t)thread * groups * BLOCK_N;
    int32_t* zps = j->asymmetric ? j->zp + (size_t)thread * groups * BLOCK_N : NULL;
    float* offsets = j->offsets ? j->offset + (size_t)thread * groups * BLOCK_N : NULL;
    for (int32_t t = begin; t < end; t++) {
        int32_t n0 = t * BLOCK_N, count = N - n0 < BLOCK_N ? N - n0 : BLOCK_N;
        qk_avx2_block_params(j->w, n0, scales, offsets, zps, j->zp_offset);
        for (int32_t m = 0; m < M; m += j->tile_rows) {
            int rows = M - m < j->tile_rows ? M - m : j->tile_rows;
            __m256d y[4][2];
            for (int r = 0; r < rows; r++) y[r][0] = y[r][1] = _mm256_setzero_pd();
            j->tiles[rows - 1](j, j->qx + (size_t)m * j->padded, j->sums + (size_t)m * groups, n0, scales, offsets, zps, y);
            for (int r = 0; r < rows; r++) {
                double out[BLOCK_N];
                _mm256_storeu_pd(out, y[r][0]);
                _mm256_storeu_pd(out + 4, y[r][1]);
                qk_avx2_finish(j->a, N, j->row_scale, m + r, n0, count, out);
            }
        }
    }
}

void qk_avx2_canonical_a8_run(const qk_exec* exec, const qk_avx2_canonical_a8* j, qk_task_fn* stage) {
    int32_t M = j->a->M, K = j->w->K, grain = (1 << 14) / K;
    qk_parallel_for(exec, M, grain > 1 ? grain : 1, stage, (void*)j);
    qk_parallel_for(exec, (j->w->N + QK_AVX2_PANEL - 1) / QK_AVX2_PANEL, qk_avx2_grain((double)M * QK_AVX2_PANEL * K),
                    canonical_a8_block_task, (void*)j);
}
