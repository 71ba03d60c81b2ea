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
        .a = a, .w = &w->format, .packed = w->packed, .l = qk_vnni16_layout_of(&w->format, w->asymmetric, w->has_offsets),
        .asymmetric = w->asymmetric, .has_offsets = w->has_offsets,
    };
    p.group_stride = (size_t)p.l.rows * p.l.k_per_row;
    p.row = (size_t)p.l.groups * p.group_stride;
    p.x_row = p.row;
    return p;
}

size_t qk_avx512_buffers(qk_avx512_problem* p, int a16, void* base) {
    size_t used = 0, M = (size_t)p->a->M;
    if (a16) {
        p->x = qk_avx2_take(base, &used, M * p->x_row * sizeof *p->x);
    } else {
        p->qx = qk_avx2_take(base, &used, M * p->row);
        p->sums = qk_avx2_take(base, &used, M * (size_t)p->l.groups * sizeof *p->sums);
    }
    p->row_scale = qk_avx2_take(base, &used, M * sizeof *p->row_scale);
    return used;
}

/* Eight float64 results rounded once to the output dtype and stored where `live`, bit for bit as
 * qk_avx2_store rounds them: float32 directly; float16 and bfloat16 through float32 rounded to odd
 * (truncated, the last bit set when inexact), which the final rounding to nearest even then makes
 * one correct rounding (reading 8). */
QK_AVX512_INLINE void store8(const qk_matmul_args* a, size_t first, __mmask8 live, __m512d y) {
    __m256 f = _mm512_cvtpd_ps(y);
    if (a->input_dtype == QK_DTYPE_F32) {
        _mm256_mask_storeu_ps((float*)a->output + first, live, f);
        return;
    }
    __m512d back = _mm512_cvtps_pd(f);
    __mmask8 inexact = _mm512_cmp_pd_mask(back, y, _CMP_NEQ_OQ); /* never for NaN */
    __mmask8 away = _mm512_cmp_pd_mask(_mm512_abs_pd(back), _mm512_abs_pd(y), _CMP_GT_OQ);
    const __m256i one = _mm256_set1_epi32(1);
    __m256i bits = _mm256_castps_si256(f);
    bits = _mm256_mask_sub_epi32(bits, away, bits, one); /* rounded away from zero: one step back */
    bits = _mm256_mask_or_epi32(bits, inexact, bits, one);
    __m128i out;
    if (a->input_dtype == QK_DTYPE_BF16) { /* to nearest even; NaN stays a quiet NaN */
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), one);
        __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), odd), 16);
        __m256i quiet = _mm256_srli_epi32(_mm256_or_si256(bits, _mm256_set1_epi32(0x00400000)), 16);
        __mmask8 nan = _mm256_cmp_ps_mask(_mm256_castsi256_ps(bits), _mm256_castsi256_ps(bits), _CMP_UNORD_Q);
        out = _mm256_cvtepi32_epi16(_mm256_mask_mov_epi32(rounded, nan, quiet));
    } else {
        out = _mm256_cvtps_ph(_mm256_castsi256_ps(bits), _MM_FROUND_TO_NEAREST_INT);
    }
    _mm_mask_storeu_epi16((uint16_t*)a->output + first, live, out);
}

void qk_avx512_finish_rows(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int32_t rows,
                           double* y) {
    const qk_matmul_args* a = p->a;
    int32_t N = p->w->N, n0 = panel * QK_VNNI16_PANEL;
    int32_t count = N - n0 < panels * QK_VNNI16_PANEL ? N - n0 : panels * QK_VNNI16_PANEL;
    for (int32_t r = 0; r < rows; r++) {
        __m512d scale = _mm512_set1_pd(p->row_scale[m + r]);
        for (int32_t c = 0; c < count; c += 8) {
            __mmask8 live = count - c >= 8 ? 0xFF : (__mmask8)((1u << (count - c)) - 1);
            __m512d v = _mm512_mul_pd(_mm512_loadu_pd(y + (size_t)r * QK_AVX512_TILE_COLUMNS + c), scale);
            if (a->bias) v = _mm512_add_pd(v, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(live, a->bias + n0 + c)));
            store8(a, (size_t)(m + r) * (size_t)N + (size_t)(n0 + c), live, v);
        }
    }
}

static void prepare_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const qk_avx512_problem* p = arg;
    for (int32_t m = begin; m < end; m++) {
        if (p->x) {
            float* row = p->x + (size_t)m * p->x_row;
            p->row_scale[m] = qk_avx2_load_row(p->a, p->w, m, p->group_stride, row);
            if (p->rewrite_row) p->rewrite_row(row, p->row);
        } else {
            p->row_scale[m] = qk_avx2_quantize_row(p->a, p->w, m, p->group_stride, p->qx + (size_t)m * p->row,
                                                   p->sums + (size_t)m * p->l.groups);
        }
    }
}

void qk_avx512_prepare_rows(const qk_exec* exec, const qk_avx512_problem* p) {
    int32_t grain = ROW_TASK_ELEMENTS / p->w->K;
    qk_parallel_for(exec, p->a->M, grain > 1 ? grain : 1, prepare_task, (void*)p);
}

void qk_avx512_run_tasks(const qk_exec* exec, const qk_avx512_problem* p, int32_t chunk_rows, qk_task_fn* fn,
                         void* arg) {
    int32_t pairs = (p->l.panels + 1) / 2, chunks = (p->a->M + chunk_rows - 1) / chunk_rows;
    double task_macs = (double)chunk_rows * QK_AVX512_TILE_COLUMNS * p->w->K;
    qk_parallel_for(exec, chunks * pairs, qk_avx2_grain(task_macs), fn, arg);
}

typedef struct {
    const qk_avx512_problem* p;
    qk_avx512_tile_fn* tile;
    int32_t chunk_rows, tile_rows;
} tiles_job;

static void tiles_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const tiles_job* j = arg;
    for (int32_t t = begin; t < end; t++) {
        qk_avx512_task k = qk_avx512_task_of(j->p, j->chunk_rows, t);
        for (int32_t m = k.m0; m < k.m1; m += j->tile_rows) {
            int rows = k.m1 - m < j->tile_rows ? k.m1 - m : j->tile_rows;
            double y[QK_AVX512_MAX_TILE_ROWS * QK_AVX512_TILE_COLUMNS];
            memset(y, 0, sizeof y);
            j->tile(j->p, k.panel, k.panels, m, rows, y);
            qk_avx512_finish_rows(j->p, k.panel, k.panels, m, rows, y);
        }
    }
}

void qk_avx512_run_tiles(const qk_exec* exec, const qk_avx512_problem* p, int tile_rows, qk_avx512_tile_fn* tile) {
    size_t row_bytes = p->x ? p->x_row * sizeof(float) : p->row;
    size_t tiles = CHUNK_BYTES / (row_bytes * (size_t)tile_rows); /* whole tiles per chunk, at least one */
    int32_t chunk_rows = (int32_t)(tiles > 0 ? tiles * (size_t)tile_rows : (size_t)tile_rows);
    if (chunk_rows > p->a->M) chunk_rows = p->a->M;
    tiles_job job = {p, tile, chunk_rows, tile_rows};
    qk_avx512_run_tasks(exec, p, chunk_rows, tiles_task, &job);
}
