/* x86_avx2_a16_w4w8_6x16: A16 for many rows (prefill): dequantize once, then a float32 GEMM.
 *
 * With many rows, dequantizing every weight for every 4-row tile costs more than the FMAs. This
 * kernel dequantizes a 16-column block (two panels) of W once per chunk of k into a float32 buffer
 * that stays in L1, then runs a 6 x 16 register tile (12 accumulators) over a block of rows. Float32
 * sums run over RUN k and are folded into float64 per output, as in the other kernels; rows of
 * |x| >= 2^88 come scaled down (avx2.h, QK_AVX2_LARGE_X). A task is one row block by one column
 * block; each thread dequantizes into its own buffer. */
#include "avx2.h"

enum {
    ROWS = 6,
    COLS = 2 * QK_AVX2_PANEL,
    CHUNK_BLOCKS = 32,  /* k blocks dequantized at a time: 16 KiB of float32 */
    RUN = 64,
    BLOCK_ROWS = 192,   /* rows per task: the dequantization is shared by this many rows */
};

/* W's block columns [2 * block, 2 * block + 2) at blocks [t0, t1) of the padded k axis, dequantized:
 * out[k][16], zero for a panel beyond N. */
static void dequantize_chunk(const qk_avx2_problem* p, int32_t block, int32_t t0, int32_t t1, float* out) {
    const qk_avx2_layout* l = &p->l;
    int bits = p->w->bits;
    const __m256 unit = _mm256_set1_ps(qk_avx2_weight_unit(bits)), inverse_unit = _mm256_set1_ps(1.0f / qk_avx2_weight_unit(bits));
    for (int32_t half = 0; half < 2; half++) {
        int32_t panel = 2 * block + half;
        for (int32_t t = t0; t < t1; t++) {
            float* w = out + (size_t)(t - t0) * QK_AVX2_BLOCK_K * COLS + half * QK_AVX2_PANEL;
            if (panel >= l->panels) {
                for (int i = 0; i < QK_AVX2_BLOCK_K; i++) _mm256_store_ps(w + i * COLS, _mm256_setzero_ps());
                continue;
            }
            const uint8_t* group = p->packed + (size_t)panel * l->panel_bytes + (size_t)(t / l->blocks) * l->group_bytes;
            const uint8_t* data = group + l->header + (size_t)(t % l->blocks) * l->block_bytes;
            __m256 scale = _mm256_load_ps((const float*)group);
            __m256 offset = p->offsets ? _mm256_load_ps((const float*)(group + l->offsets_at)) : _mm256_setzero_ps();
            __m256 zero = _mm256_mul_ps(_mm256_cvtepi32_ps(qk_avx2_zero_points(group, l)), unit);
            __m256i v0, v1;
            qk_avx2_block_bytes(data, bits, &v0, &v1);
#pragma GCC unroll 8
            for (int i = 0; i < QK_AVX2_BLOCK_K; i++) {
                __m256 q = _mm256_sub_ps(_mm256_cvtepi32_ps(qk_avx2_byte_to_top(i < 4 ? v0 : v1, i % 4)), zero);
                /* (q - zp) * unit / unit exactly, then times scale (plus offset): w rounded once, and never
                 * overflowing where w does not */
                q = _mm256_mul_ps(q, inverse_unit);
                _mm256_store_ps(w + i * COLS, p->offsets ? _mm256_fmadd_ps(q, scale, offset) : _mm256_mul_ps(q, scale));
            }
        }
    }
}

/* Rows [0, rows) of x (stride row) times the dequantized chunk w[k][16], k in [0, kc), into
 * y0 (columns 0..7) and y1 (columns 8..15). */
QK_AVX2_INLINE void gemm_tile(const float* x, size_t row, const float* w, int32_t kc, int rows, __m256d (*y0)[2],
                              __m256d (*y1)[2]) {
    const __m256d one = _mm256_set1_pd(1.0);
    for (int32_t k0 = 0; k0 < kc; k0 += RUN) {
        int32_t k1 = kc - k0 < RUN ? kc : k0 + RUN;
        __m256 acc[ROWS][2];
        for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int32_t k = k0; k < k1; k++) {
            __m256 w0 = _mm256_load_ps(w + (size_t)k * COLS), w1 = _mm256_load_ps(w + (size_t)k * COLS + 8);
            for (int r = 0; r < rows; r++) {
                __m256 xv = _mm256_broadcast_ss(x + r * row + k);
                acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            }
        }
        for (int r = 0; r < rows; r++) {
            qk_avx2_fold_ps(y0[r], acc[r][0], one, one);
            qk_avx2_fold_ps(y1[r], acc[r][1], one, one);
        }
    }
}

static void gemm_rows(const float* x, size_t row, const float* w, int32_t kc, int rows, __m256d (*y0)[2],
                      __m256d (*y1)[2]) {
    switch (rows) {
    case 1: gemm_tile(x, row, w, kc, 1, y0, y1); break;
    case 2: gemm_tile(x, row, w, kc, 2, y0, y1); break;
    case 3: gemm_tile(x, row, w, kc, 3, y0, y1); break;
    case 4: gemm_tile(x, row, w, kc, 4, y0, y1); break;
    case 5: gemm_tile(x, row, w, kc, 5, y0, y1); break;
    default: gemm_tile(x, row, w, kc, 6, y0, y1); break;
    }
}

/* The workspace: float32 rows of X and the row scales, then per thread a chunk of dequantized
 * weights and the float64 sums of a row block's 16 columns. */
typedef struct {
    qk_avx2_problem p;
    float* w;        /* [threads][CHUNK_BLOCKS * 8 * COLS] */
    __m256d* y;      /* [threads][2 * BLOCK_ROWS][2] */
    int32_t column_blocks;
} job;

enum { W_FLOATS = CHUNK_BLOCKS * QK_AVX2_BLOCK_K * COLS, Y_VECTORS = 4 * BLOCK_ROWS };

static size_t buffers(job* j, int32_t threads, void* base) {
    size_t used = 0, M = (size_t)j->p.a->M;
    j->p.x = qk_avx2_take(base, &used, M * j->p.row * sizeof *j->p.x);
    j->p.row_scale = qk_avx2_take(base, &used, M * sizeof *j->p.row_scale);
    j->w = qk_avx2_take(base, &used, (size_t)threads * W_FLOATS * sizeof *j->w);
    j->y = qk_avx2_take(base, &used, (size_t)threads * Y_VECTORS * sizeof *j->y);
    return used;
}

/* Task t: column block t % column_blocks of row block t / column_blocks. */
static void task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const job* j = arg;
    const qk_avx2_problem* p = &j->p;
    int32_t M = p->a->M, N = p->w->N, total_blocks = p->l.groups * p->l.blocks;
    float* w = j->w + (size_t)thread * W_FLOATS;
    __m256d(*y0)[2] = (__m256d(*)[2])(j->y + (size_t)thread * Y_VECTORS), (*y1)[2] = y0 + BLOCK_ROWS;
    for (int32_t t = begin; t < end; t++) {
        int32_t block = t % j->column_blocks, m0 = t / j->column_blocks * BLOCK_ROWS;
        int32_t rows = M - m0 < BLOCK_ROWS ? M - m0 : BLOCK_ROWS;
        const float* x = p->x + (size_t)m0 * p->row;
        for (int32_t m = 0; m < rows; m++) y0[m][0] = y0[m][1] = y1[m][0] = y1[m][1] = _mm256_setzero_pd();
        for (int32_t t0 = 0; t0 < total_blocks; t0 += CHUNK_BLOCKS) {
            int32_t t1 = total_blocks - t0 < CHUNK_BLOCKS ? total_blocks : t0 + CHUNK_BLOCKS;
            dequantize_chunk(p, block, t0, t1, w);
            for (int32_t m = 0; m < rows; m += ROWS)
                gemm_rows(x + (size_t)m * p->row + (size_t)t0 * QK_AVX2_BLOCK_K, p->row, w, (t1 - t0) * QK_AVX2_BLOCK_K,
                          rows - m < ROWS ? rows - m : ROWS, y0 + m, y1 + m);
        }
        for (int32_t m = 0; m < rows; m++)
            for (int half = 0; half < 2; half++) {
                int32_t n = (2 * block + half) * QK_AVX2_PANEL;
                if (n >= N) break;
                double out[QK_AVX2_PANEL];
                __m256d* y = half ? y1[m] : y0[m];
                _mm256_storeu_pd(out, y[0]);
                _mm256_storeu_pd(out + 4, y[1]);
                qk_avx2_finish(p->a, N, p->row_scale, m0 + m, n, N - n < QK_AVX2_PANEL ? N - n : QK_AVX2_PANEL, out);
            }
    }
}

size_t qk_avx2_a16_6x16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    job j = {.p = qk_avx2_problem_of(w, a)};
    return buffers(&j, threads, NULL);
}

qk_status qk_avx2_a16_6x16(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    job j = {.p = qk_avx2_problem_of(w, a)};
    buffers(&j, exec->threads, exec->workspace);
    qk_avx2_prepare_rows(exec, &j.p, (size_t)j.p.l.blocks * QK_AVX2_BLOCK_K, j.p.row);
    j.column_blocks = (j.p.l.panels + 1) / 2;
    int32_t M = a->M, row_blocks = (M + BLOCK_ROWS - 1) / BLOCK_ROWS;
    double task_macs = (double)(M < BLOCK_ROWS ? M : BLOCK_ROWS) * COLS * w->format.K;
    qk_parallel_for(exec, row_blocks * j.column_blocks, qk_avx2_grain(task_macs), task, &j);
    return QK_OK;
}
