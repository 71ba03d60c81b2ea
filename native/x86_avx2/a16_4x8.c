/* x86_avx2_a16_w4w8_4x8: A16 for few rows (decode), on the packed layout.
 *
 * Each k's eight weights become float32 q * 2^24 (or 2^28) in two operations, minus the zero point
 * when there is one. Products x * (q - zp) * 2^24 are exact inside the FMA; their float32 sums run
 * over 128 k as two chains of 64 terms, whose rounding error is at most 64 * 2^-24 = 2^-18 of
 * sum |x * (q - zp)|, a quarter of the float32 tolerance; then each sum is scaled (times
 * scale * 2^-24 or 2^-28, exact in float64) and folded into float64, so the error does not grow
 * with K. Rows of |x| >= 2^88 come scaled down (avx2.h, QK_AVX2_LARGE_X), so the sums stay finite
 * (with offsets, sums of x * w, while |x| |w| < 2^122: docs/numerics.md reading 16).
 * With offsets the weights are formed first (avx2.h, QK_AVX2_OFFSETS): two FMAs per k and panel
 * where asymmetric weights take one subtraction. */
#include <stddef.h>

#include "avx2.h"

enum {
    TILE_ROWS = 4,
    RUN_BLOCKS = 16, /* float32 sums over 128 k, then float64 (64 k: 5% slower) */
};

/* The tile is rows x 1 panel, or 1 or 2 rows x 2 panels (`panels`): fewer than three rows need the
 * second panel's independent sums to keep the FMA units busy, and share its activation loads. (A
 * chain's next FMA waits 4 cycles and two FMAs can start per cycle, so eight chains fill both
 * units; one row's four suffice for its loop, which conversions, not FMAs, limit.)
 * `form`: how weights are formed (avx2.h: QK_AVX2_SYMMETRIC, _ASYMMETRIC, _OFFSETS).
 * Each float32 sum is two chains of dependent FMAs (even and odd k) whatever the tile, so a row's
 * result never depends on the other rows or panels of its tile. */
QK_AVX2_INLINE void a16_tile(const qk_avx2_problem* p, int bits, int form, int panels, const uint8_t* panel0,
                             const float* x, int rows, __m256d* const* y) {
    enum { CHAINS = 2, SLOTS = TILE_ROWS }; /* slots: rows x panels <= 4 */
    const qk_avx2_layout* l = &p->l;
    const __m256 unit = _mm256_set1_ps(qk_avx2_weight_unit(bits));
    const __m256 inverse_unit = _mm256_set1_ps(1.0f / qk_avx2_weight_unit(bits));
    /* the float32 sums are times scale / unit, exact in float64, or w itself (OFFSETS) */
    const __m256d unit_scale = _mm256_set1_pd(form == QK_AVX2_OFFSETS ? 1.0 : 1.0 / qk_avx2_weight_unit(bits));
    for (int32_t g = 0; g < l->groups; g++) {
        const uint8_t* group[2];
        __m256 scale[2], zero[2], offset[2];
        for (int pi = 0; pi < panels; pi++) {
            group[pi] = panel0 + pi * l->panel_bytes + (size_t)g * l->group_bytes;
            scale[pi] = _mm256_load_ps((const float*)group[pi]);
            zero[pi] = _mm256_cvtepi32_ps(qk_avx2_zero_points(group[pi], l));
            /* zp * unit, or -zp for OFFSETS */
            zero[pi] = form == QK_AVX2_OFFSETS ? _mm256_sub_ps(_mm256_setzero_ps(), zero[pi]) : _mm256_mul_ps(zero[pi], unit);
            if (form == QK_AVX2_OFFSETS) offset[pi] = _mm256_load_ps((const float*)(group[pi] + l->offsets_at));
        }
        const float* xg[TILE_ROWS];
        for (int r = 0; r < rows; r++) xg[r] = x + r * p->row + (size_t)g * l->blocks * QK_AVX2_BLOCK_K;
        for (int32_t b0 = 0; b0 < l->blocks; b0 += RUN_BLOCKS) {
            int32_t b_end = b0 + RUN_BLOCKS < l->blocks ? b0 + RUN_BLOCKS : l->blocks;
            __m256 sum[SLOTS][CHAINS]; /* slot r * panels + pi */
            for (int slot = 0; slot < rows * panels; slot++) sum[slot][0] = sum[slot][1] = _mm256_setzero_ps();
            /* 4 bits: each block is loaded and split an iteration ahead, so that its shuffles do not
             * wait on the load, shift and mask (4% faster in cache, 2% from memory); 8 bits has no
             * split, and the registers this takes would spill there (4% slower). */
            const int ahead = bits == 4;
            __m256i next0[2], next1[2];
            if (ahead)
                for (int pi = 0; pi < panels; pi++)
                    qk_avx2_block_bytes(group[pi] + l->header + (size_t)b0 * 32, bits, &next0[pi], &next1[pi]);
            /* b is pointer-sized: as an int32_t, gcc gave every row and k its own index register (M = 4: 14% slower) */
            for (ptrdiff_t b = b0; b < b_end; b++) {
                __m256i v0[2], v1[2];
                /* ahead, the run's last block loads itself again: never past the panel's end */
                ptrdiff_t b_load = ahead && b + 1 < b_end ? b + 1 : b;
                for (int pi = 0; pi < panels; pi++) {
                    if (ahead) v0[pi] = next0[pi], v1[pi] = next1[pi];
                    const uint8_t* block = group[pi] + l->header + (size_t)b_load * (bits == 4 ? 32 : 64); /* constant: no multiply */
                    _mm_prefetch((const char*)block + QK_AVX2_PREFETCH_BYTES, _MM_HINT_T0);
                    qk_avx2_block_bytes(block, bits, ahead ? &next0[pi] : &v0[pi], ahead ? &next1[pi] : &v1[pi]);
                }
#pragma GCC unroll 8 /* constant shuffle controls and chain indices */
                for (int i = 0; i < QK_AVX2_BLOCK_K; i++) {
                    __m256 w[2];
                    for (int pi = 0; pi < panels; pi++) {
                        w[pi] = _mm256_cvtepi32_ps(qk_avx2_byte_to_top(i < 4 ? v0[pi] : v1[pi], i % 4)); /* q * unit */
                        if (form == QK_AVX2_ASYMMETRIC) w[pi] = _mm256_sub_ps(w[pi], zero[pi]);                    /* exact */
                        if (form == QK_AVX2_OFFSETS) /* q - zp exactly, then w rounded once */
                            w[pi] = _mm256_fmadd_ps(_mm256_fmadd_ps(w[pi], inverse_unit, zero[pi]), scale[pi], offset[pi]);
                    }
                    for (int r = 0; r < rows; r++) {
                        __m256 xv = _mm256_broadcast_ss(xg[r] + b * QK_AVX2_BLOCK_K + i);
                        for (int pi = 0; pi < panels; pi++) {
                            __m256* acc = &sum[r * panels + pi][i % CHAINS];
                            *acc = _mm256_fmadd_ps(xv, w[pi], *acc);
                        }
                    }
                }
            }
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++) {
                    __m256 s = form == QK_AVX2_OFFSETS ? _mm256_set1_ps(1.0f) : scale[pi];
                    qk_avx2_fold_ps(y[r] + 2 * pi, _mm256_add_ps(sum[r * panels + pi][0], sum[r * panels + pi][1]),
                                    _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(s)), unit_scale),
                                    _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)), unit_scale));
                }
        }
    }
}

/* Every a16_tile variant as a function with constant parameters, so that each is compiled with its
 * loops unrolled and its sums in registers: [bits 4/8][form][shape], shapes named
 * panels x rows: 2x1 and 2x2 (shape rows - 1), then 1x1 .. 1x4 (shape rows + 1). */
typedef void a16_fn(const qk_avx2_problem* p, const uint8_t* panel, const float* x, __m256d* const* y);
#define A16_FN(bits, form, panels, rows)                                                                      \
    static void a16_##bits##_##form##_##panels##x##rows(const qk_avx2_problem* p, const uint8_t* panel,       \
                                                        const float* x, __m256d* const* y) {                  \
        a16_tile(p, bits, form, panels, panel, x, rows, y);                                                   \
    }
#define A16_SHAPES(bits, form)                                                                                \
    A16_FN(bits, form, 2, 1) A16_FN(bits, form, 2, 2) A16_FN(bits, form, 1, 1) A16_FN(bits, form, 1, 2)      \
    A16_FN(bits, form, 1, 3) A16_FN(bits, form, 1, 4)
#define A16_SHAPE_TABLE(bits, form)                                                                           \
    {a16_##bits##_##form##_2x1, a16_##bits##_##form##_2x2, a16_##bits##_##form##_1x1,                         \
     a16_##bits##_##form##_1x2, a16_##bits##_##form##_1x3, a16_##bits##_##form##_1x4}
A16_SHAPES(4, 0) A16_SHAPES(4, 1) A16_SHAPES(4, 2) A16_SHAPES(8, 0) A16_SHAPES(8, 1) A16_SHAPES(8, 2)
static a16_fn* const a16_variants[2][QK_AVX2_FORMS][6] = {
    {A16_SHAPE_TABLE(4, 0), A16_SHAPE_TABLE(4, 1), A16_SHAPE_TABLE(4, 2)},
    {A16_SHAPE_TABLE(8, 0), A16_SHAPE_TABLE(8, 1), A16_SHAPE_TABLE(8, 2)},
};

static void tile(const qk_avx2_problem* p, const uint8_t* panel, int panels, int32_t m, int rows, __m256d* const* y) {
    const float* x = p->x + (size_t)m * p->row;
    a16_fn* const* shapes = a16_variants[p->w->bits == 8][qk_avx2_form(p->asymmetric, p->offsets)];
    if (rows <= 2 && panels == 2) { /* few rows: both panels at once */
        shapes[rows - 1](p, panel, x, y);
        return;
    }
    for (int pi = 0; pi < panels; pi++, panel += p->l.panel_bytes) { /* else a panel at a time */
        __m256d* yp[TILE_ROWS];
        for (int r = 0; r < rows; r++) yp[r] = y[r] + 2 * pi;
        shapes[rows + 1](p, panel, x, yp);
    }
}

/* The workspace: float32 rows of X, then the row scales. */
static size_t buffers(qk_avx2_problem* p, void* base) {
    size_t used = 0;
    p->x = qk_avx2_take(base, &used, (size_t)p->a->M * p->row * sizeof *p->x);
    p->row_scale = qk_avx2_take(base, &used, (size_t)p->a->M * sizeof *p->row_scale);
    return used;
}

size_t qk_avx2_a16_4x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    qk_avx2_problem p = qk_avx2_problem_of(w, a);
    return buffers(&p, NULL);
}

qk_status qk_avx2_a16_4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx2_problem p = qk_avx2_problem_of(w, a);
    buffers(&p, exec->workspace);
    qk_avx2_prepare_rows(exec, &p, (size_t)p.l.blocks * QK_AVX2_BLOCK_K, p.row);
    qk_avx2_run_tiles(exec, &p, tile);
    return QK_OK;
}
