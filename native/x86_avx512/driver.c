/* The driver of the x86_avx512 kernels: rows of X prepared, tiles run, results finished, each step
 * as tasks on the thread pool.
 *
 * Work is split into tasks of one pair of panels (32 columns) by one chunk of rows, whose
 * activations stay in the L2 cache while the panels stream past them (CHUNK_BYTES). Tasks write
 * disjoint outputs and read only what the preparation wrote, so they run in any order, on any
 * thread; each output is computed by one tile in one order, whatever the thread count. */
#include <string.h>

#include "avx512.h"

enum {
    CHUNK_BYTES = 256 * 1024,  /* activations of a row chunk: an eighth of a 2 MiB L2 cache */
    ROW_TASK_ELEMENTS = 16384, /* activations loaded or quantized per preparation task: a few microseconds */
};

qk_avx512_problem qk_avx512_problem_of(const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx512_problem p = {
        .a = a, .w = &w->format, .packed = w->packed, .l = qk_vnni16_layout_of(&w->format, w->has_offsets),
        .asymmetric = w->asymmetric, .has_offsets = w->has_offsets,
    };
    p.group_stride = (size_t)p.l.rows * p.l.k_per_row;
    p.row = (size_t)p.l.groups * p.group_stride;
    return p;
}

size_t qk_avx512_buffers(qk_avx512_problem* p, int a16, void* base) {
    size_t used = 0, M = (size_t)p->a->M;
    if (a16) {
        p->x = qk_avx2_take(base, &used, M * p->row * sizeof *p->x);
    } else {
        p->qx = qk_avx2_take(base, &used, M * p->row);
        p->sums = qk_avx2_take(base, &used, M * (size_t)p->l.groups * sizeof *p->sums);
    }
    p->row_scale = qk_avx2_take(base, &used, M * sizeof *p->row_scale);
    return used;
}

void qk_avx512_finish_rows(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int32_t rows,
                           double* y) {
    int32_t N = p->w->N;
    for (int32_t r = 0; r < rows; r++)
        for (int32_t c = 0; c < panels * QK_VNNI16_PANEL; c += 8) { /* qk_avx2_finish rounds 8 at a time */
            int32_t n = panel * QK_VNNI16_PANEL + c;
            if (n < N)
                qk_avx2_finish(p->a, N, p->row_scale, m + r, n, N - n < 8 ? N - n : 8,
                               y + (size_t)r * QK_AVX512_TILE_COLUMNS + c);
        }
}

static void prepare_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const qk_avx512_problem* p = arg;
    for (int32_t m = begin; m < end; m++)
        p->row_scale[m] = p->x ? qk_avx2_load_row(p->a, p->w, m, p->group_stride, p->x + (size_t)m * p->row)
                               : qk_avx2_quantize_row(p->a, p->w, m, p->group_stride, p->qx + (size_t)m * p->row,
                                                      p->sums + (size_t)m * p->l.groups);
}

void qk_avx512_prepare_rows(const qk_exec* exec, const qk_avx512_problem* p) {
    int32_t grain = ROW_TASK_ELEMENTS / p->w->K;
    qk_parallel_for(exec, p->a->M, grain > 1 ? grain : 1, prepare_task, (void*)p);
}

typedef struct {
    const qk_avx512_problem* p;
    qk_avx512_tile_fn* tile;
    int32_t pairs, chunk_rows, tile_rows;
} tiles_job;

/* Task t: the pair of panels t % pairs, for the rows of chunk t / pairs. */
static void tiles_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const tiles_job* j = arg;
    const qk_avx512_problem* p = j->p;
    int32_t M = p->a->M;
    for (int32_t t = begin; t < end; t++) {
        int32_t panel = 2 * (t % j->pairs), m0 = t / j->pairs * j->chunk_rows;
        int32_t m1 = M - m0 < j->chunk_rows ? M : m0 + j->chunk_rows;
        int panels = p->l.panels - panel < 2 ? 1 : 2;
        for (int32_t m = m0; m < m1; m += j->tile_rows) {
            int rows = m1 - m < j->tile_rows ? m1 - m : j->tile_rows;
            double y[QK_AVX512_MAX_TILE_ROWS * QK_AVX512_TILE_COLUMNS];
            memset(y, 0, sizeof y);
            j->tile(p, panel, panels, m, rows, y);
            qk_avx512_finish_rows(p, panel, panels, m, rows, y);
        }
    }
}

void qk_avx512_run_tiles(const qk_exec* exec, const qk_avx512_problem* p, int tile_rows, qk_avx512_tile_fn* tile) {
    int32_t M = p->a->M;
    size_t row_bytes = p->row * (p->x ? sizeof(float) : 1);
    size_t tiles = CHUNK_BYTES / (row_bytes * (size_t)tile_rows); /* whole tiles per chunk, at least one */
    int32_t chunk_rows = (int32_t)(tiles > 0 ? tiles * (size_t)tile_rows : (size_t)tile_rows);
    if (chunk_rows > M) chunk_rows = M;
    tiles_job job = {p, tile, (p->l.panels + 1) / 2, chunk_rows, tile_rows};
    int32_t chunks = (M + chunk_rows - 1) / chunk_rows;
    double task_macs = (double)chunk_rows * QK_AVX512_TILE_COLUMNS * p->w->K;
    qk_parallel_for(exec, chunks * job.pairs, qk_avx2_grain(task_macs), tiles_task, &job);
}
