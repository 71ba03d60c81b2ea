/* x86_avx512_a16_w4w8_8x32: A16 on the vnni16 pack with AVX-512 FMA, above M = 16: a task forms
 * each weight of its pair of panels once, as float32, into a buffer that every 8-row tile of its
 * rows then reads, so that the inner loop is FMAs only (one per 16 products).
 *
 * Why: the 4x32 kernel (a16.c) forms the weights again for each 4-row tile, a shift, a vpermps and,
 * with zero points or offsets, a subtraction and an FMA per 16 weights beside the 4 FMAs they feed.
 * Prefill on weights the AVX512-BF16 kernel does not run (float32 input, offsets such as GGUF
 * Q4_1's, 8-bit) ran at 0.66-0.70x PyTorch's float32 GEMM on SmolLM2's layers (README, x86_avx512).
 *
 * A task is a pair of panels (32 columns) for a chunk of rows. It walks K a slice at a time: the
 * next SLICE_CHUNKS chunks (qk_avx512_chunk: at most CHUNK_K k, each within one group; a slice may
 * span groups), which fill the thread's buffer (32 KiB). Their weights are formed into it as a16.c
 * forms them (q - zp exactly, or fma(q - zp, scale, offset) with offsets), [k][32 columns]; then
 * each 8-row tile of the task's rows sums every chunk of the slice in one float32 chain per output
 * (at most 64 products: at most 2^-18 of sum |x * w|, as a16.c's two chains of 64 in 128 k), times
 * the group's scale (with offsets the weights hold it) into a float32 run of QK_AVX512_RUN_CHUNKS
 * chunks, kept in the thread's buffers from one slice to the next, and added to the float64 sums
 * where it ends: the bounds of docs/numerics.md reading 19 (test_matmul's 8x32 runs case holds the
 * runs to 16 chunks). A row's sums never depend on the other rows of its tile,
 * nor on M. Slices of 16 chunks (128 KiB, read back from L2) were slower at small M (README). */
#include "avx512.h"

enum {
    TILE_ROWS = 8,    /* 16 accumulators: FMA latency hidden, registers to spare */
    CHUNK_K = 64,     /* products per chain */
    SLICE_CHUNKS = 4, /* a run's chunks are whole slices */
    SLICE_K = SLICE_CHUNKS * CHUNK_K,
    CHUNK_ROWS = 256, /* rows of X per task: the weights formed once serve up to 32 tiles */
};
_Static_assert(QK_AVX512_RUN_CHUNKS % SLICE_CHUNKS == 0, "a float32 run must end where a slice does");

typedef struct {
    qk_avx512_problem* p;
    int32_t chunk_rows;
    float* weights; /* per thread: [SLICE_K][32], one slice of a pair of panels */
    float* runs;    /* per thread: [chunk_rows][32], a task's float32 runs */
    double* sums;   /* per thread: [chunk_rows][32], its float64 sums */
} job;

/* The weights of a slice's n chunks, `panels` panels from `panel`, into w[k * 32 + column]. */
QK_AVX512_INLINE void form_slice(const qk_avx512_problem* p, int bits, int asymmetric, int offsets, int32_t panel,
                                 int panels, const qk_avx512_chunk* chunks, int n, float* w) {
    const qk_vnni16_layout* l = &p->l;
    const __m512 values = qk_avx512_a16_values(asymmetric);
    for (int ci = 0; ci < n; ci++) {
        qk_avx512_chunk c = chunks[ci];
        for (int pi = 0; pi < panels; pi++) {
            const uint8_t* group = qk_vnni16_group(p->packed, l, panel + pi, c.g);
            __m512 zero = qk_avx512_a16_zero(group, l, bits), scale = _mm512_load_ps((const float*)group);
            __m512 offset = qk_avx512_offset(group, l);
            for (ptrdiff_t i = c.i0; i < c.i1; i++) {
                __m512i v = qk_avx512_a16_row(group, l, i, bits);
                float* out = w + (i - c.i0) * l->k_per_row * QK_AVX512_TILE_COLUMNS + pi * QK_VNNI16_PANEL;
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) {
                    if (bits == 8 && t == 4) break;
                    __m512 q = qk_avx512_a16_weight(bits, asymmetric, v, t, values, zero);
                    _mm512_store_ps(out + t * QK_AVX512_TILE_COLUMNS, offsets ? _mm512_fmadd_ps(q, scale, offset) : q);
                }
            }
        }
        w += (c.i1 - c.i0) * l->k_per_row * QK_AVX512_TILE_COLUMNS;
    }
}

#define FORM_FN(bits, asym, offs)                                                                           \
    static void form_##bits##_##asym##_##offs(const qk_avx512_problem* p, int32_t panel, int panels,          \
                                              const qk_avx512_chunk* chunks, int n, float* w) {             \
        form_slice(p, bits, asym, offs, panel, panels, chunks, n, w);                                       \
    }
FORM_FN(4, 0, 0) FORM_FN(4, 0, 1) FORM_FN(4, 1, 0) FORM_FN(4, 1, 1)
FORM_FN(8, 0, 0) FORM_FN(8, 0, 1) FORM_FN(8, 1, 0) FORM_FN(8, 1, 1)
typedef void form_fn(const qk_avx512_problem* p, int32_t panel, int panels, const qk_avx512_chunk* chunks, int n,
                     float* w);
static form_fn* const forms[2][2][2] = { /* [bits 4/8][asymmetric][offsets] */
    {{form_4_0_0, form_4_0_1}, {form_4_1_0, form_4_1_1}},
    {{form_8_0_0, form_8_0_1}, {form_8_1_0, form_8_1_1}},
};

/* Rows [m, m + rows) of X times a slice's n chunks of formed weights w, `panels` panels from `panel`:
 * the rows' runs run[r * 32 + column] go on (s.first: they start here) and are stored, or, where
 * they end (s.last), added to their float64 sums y. */
QK_AVX512_INLINE void tile(const qk_avx512_problem* p, int offsets, int panels, int rows, int32_t panel, int32_t m,
                           const qk_avx512_chunk* chunks, int n, qk_run_step s, const float* w, float* run, double* y) {
    const qk_vnni16_layout* l = &p->l;
    const float* x = p->x + (size_t)m * p->x_row;
    __m512 acc[TILE_ROWS][2]; /* the runs */
    for (int r = 0; r < rows; r++)
        for (int pi = 0; pi < panels; pi++)
            acc[r][pi] = s.first ? _mm512_setzero_ps() : _mm512_load_ps(run + r * QK_AVX512_TILE_COLUMNS + pi * QK_VNNI16_PANEL);
    for (int ci = 0; ci < n; ci++) {
        const float* xc = x + (size_t)chunks[ci].g * p->group_stride + chunks[ci].i0 * l->k_per_row;
        ptrdiff_t count = (chunks[ci].i1 - chunks[ci].i0) * l->k_per_row;
        __m512 sum[TILE_ROWS][2];
        for (int r = 0; r < rows; r++)
            for (int pi = 0; pi < panels; pi++) sum[r][pi] = _mm512_setzero_ps();
#pragma GCC unroll 4
        for (ptrdiff_t k = 0; k < count; k++) {
            __m512 wk[2];
            for (int pi = 0; pi < panels; pi++) wk[pi] = _mm512_load_ps(w + k * QK_AVX512_TILE_COLUMNS + pi * QK_VNNI16_PANEL);
            for (int r = 0; r < rows; r++) {
                __m512 xv = _mm512_set1_ps(xc[r * p->x_row + k]);
                for (int pi = 0; pi < panels; pi++) sum[r][pi] = _mm512_fmadd_ps(xv, wk[pi], sum[r][pi]);
            }
        }
        w += count * QK_AVX512_TILE_COLUMNS;
        for (int pi = 0; pi < panels; pi++) {
            if (offsets) { /* the weights were formed whole: the sums are already scaled */
                for (int r = 0; r < rows; r++) acc[r][pi] = _mm512_add_ps(acc[r][pi], sum[r][pi]);
            } else {
                __m512 scale = _mm512_load_ps((const float*)qk_vnni16_group(p->packed, l, panel + pi, chunks[ci].g));
                for (int r = 0; r < rows; r++) acc[r][pi] = _mm512_fmadd_ps(sum[r][pi], scale, acc[r][pi]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int pi = 0; pi < panels; pi++) {
            size_t at = (size_t)r * QK_AVX512_TILE_COLUMNS + (size_t)pi * QK_VNNI16_PANEL;
            qk_avx512_run_end(s, acc[r][pi], run + at, y + at);
        }
}

#define TILE_FN(offs, panels, rows)                                                                         \
    static void tile_##offs##_##panels##_##rows(const qk_avx512_problem* p, int32_t panel, int32_t m,         \
                                                const qk_avx512_chunk* chunks, int n, qk_run_step s,        \
                                                const float* w, float* run, double* y) {                    \
        tile(p, offs, panels, rows, panel, m, chunks, n, s, w, run, y);                                     \
    }
#define TILE_ROWS_FNS(offs, panels)                                                                         \
    TILE_FN(offs, panels, 1) TILE_FN(offs, panels, 2) TILE_FN(offs, panels, 3) TILE_FN(offs, panels, 4)     \
    TILE_FN(offs, panels, 5) TILE_FN(offs, panels, 6) TILE_FN(offs, panels, 7) TILE_FN(offs, panels, 8)
TILE_ROWS_FNS(0, 1) TILE_ROWS_FNS(0, 2) TILE_ROWS_FNS(1, 1) TILE_ROWS_FNS(1, 2)
typedef void tile_fn(const qk_avx512_problem* p, int32_t panel, int32_t m, const qk_avx512_chunk* chunks, int n,
                     qk_run_step s, const float* w, float* run, double* y);
#define TILE_TABLE(offs, panels)                                                                            \
    {tile_##offs##_##panels##_1, tile_##offs##_##panels##_2, tile_##offs##_##panels##_3, tile_##offs##_##panels##_4, \
     tile_##offs##_##panels##_5, tile_##offs##_##panels##_6, tile_##offs##_##panels##_7, tile_##offs##_##panels##_8}
static tile_fn* const tiles[2][2][TILE_ROWS] = { /* [offsets][panels - 1][rows - 1] */
    {TILE_TABLE(0, 1), TILE_TABLE(0, 2)},
    {TILE_TABLE(1, 1), TILE_TABLE(1, 2)},
};

static void task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const job* j = arg;
    const qk_avx512_problem* p = j->p;
    const qk_vnni16_layout* l = &p->l;
    size_t rows_floats = (size_t)j->chunk_rows * QK_AVX512_TILE_COLUMNS;
    float* w = j->weights + (size_t)thread * SLICE_K * QK_AVX512_TILE_COLUMNS;
    float* run = j->runs + (size_t)thread * rows_floats;
    double* y = j->sums + (size_t)thread * rows_floats;
    form_fn* form = forms[p->w->bits == 8][p->asymmetric != 0][p->has_offsets != 0];
    int32_t per_group = (int32_t)((l->rows * l->k_per_row + CHUNK_K - 1) / CHUNK_K);
    int32_t slices = (l->groups * per_group + SLICE_CHUNKS - 1) / SLICE_CHUNKS;
    for (int32_t t = begin; t < end; t++) {
        qk_avx512_task k = qk_avx512_task_of(p, j->chunk_rows, t);
        tile_fn* const* shape = tiles[p->has_offsets != 0][k.panels - 1];
        memset(y, 0, (size_t)(k.m1 - k.m0) * QK_AVX512_TILE_COLUMNS * sizeof *y);
        qk_avx512_chunk chunks[SLICE_CHUNKS], c = qk_avx512_chunk_at(l, CHUNK_K, 0, 0);
        for (int32_t slice = 0; slice < slices; slice++) {
            int n = 0;
            for (; n < SLICE_CHUNKS && c.g < l->groups; n++, c = qk_avx512_next_chunk(l, CHUNK_K, c)) chunks[n] = c;
            qk_run_step s = qk_run_step_of(slice, slices, QK_AVX512_RUN_CHUNKS / SLICE_CHUNKS);
            form(p, k.panel, k.panels, chunks, n, w);
            for (int32_t m = k.m0; m < k.m1; m += TILE_ROWS) {
                size_t at = (size_t)(m - k.m0) * QK_AVX512_TILE_COLUMNS;
                shape[(k.m1 - m < TILE_ROWS ? k.m1 - m : TILE_ROWS) - 1](p, k.panel, m, chunks, n, s, w, run + at, y + at);
            }
        }
        qk_avx512_finish_rows(p, k.panel, k.panels, k.m0, k.m1 - k.m0, y);
    }
}

/* The problem's buffers (qk_avx512_buffers'), then the threads' weights, runs and sums, in base (or
 * only measured with base NULL). Returns the size. */
static size_t buffers(job* j, int32_t threads, void* base) {
    size_t used = qk_avx512_buffers(j->p, 1, base);
    j->chunk_rows = j->p->a->M < CHUNK_ROWS ? j->p->a->M : CHUNK_ROWS;
    size_t rows_floats = (size_t)threads * (size_t)j->chunk_rows * QK_AVX512_TILE_COLUMNS;
    j->weights = qk_avx2_take(base, &used, (size_t)threads * SLICE_K * QK_AVX512_TILE_COLUMNS * sizeof *j->weights);
    j->runs = qk_avx2_take(base, &used, rows_floats * sizeof *j->runs);
    j->sums = qk_avx2_take(base, &used, rows_floats * sizeof *j->sums);
    return used;
}

size_t qk_avx512_a16_8x32_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    qk_avx512_problem p = qk_avx512_problem_of(w, a);
    job j = {.p = &p};
    return buffers(&j, threads, NULL);
}

qk_status qk_avx512_a16_8x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx512_problem p = qk_avx512_problem_of(w, a);
    job j = {.p = &p};
    buffers(&j, exec->threads, exec->workspace);
    qk_avx512_prepare_rows(exec, &p);
    qk_avx512_run_tasks(exec, &p, j.chunk_rows, task, &j);
    return QK_OK;
}
