/* x86_avx512_a16_w4w8_4x32: A16 on the vnni16 pack, with AVX-512 FMA, for every M (tuned for
 * decode; the backend's A16 at any M).
 *
 * Each k's 16 weights become float32 u - zero = q - zp exactly (a shift and a mask take k's byte or
 * nibble out of each column's dword, one vcvtdq2ps and one subtraction). Sums of x * (q - zp) run in
 * float32 over runs of at most 128 k as two chains (even and odd k) of at most 64 terms, whose
 * rounding error is at most 2^-18 of sum |x * (q - zp)|, a quarter of the float32 tolerance; each
 * run's sum is scaled and folded into float64, so the error does not grow with K. Rows of
 * |x| >= 2^88 come scaled down by a power of two (qk_avx2_load_row), so that no float32 sum
 * overflows where the float64 result is finite. Activations past a group's end are zero. */
#include "avx512.h"

enum {
    TILE_ROWS = 4,
    RUN_K = 128, /* float32 sums over at most this many k, then float64 */
};

/* Rows x panels of the tile, for one call with constant arguments. Each float32 sum has two chains
 * whatever the tile, so a row's result never depends on the other rows of its tile. */
QK_AVX512_INLINE void a16_tile(const qk_avx512_problem* p, int bits, int panels, int rows, int32_t panel, int32_t m,
                               double* y) {
    enum { CHAINS = 2 };
    const qk_vnni16_layout* l = &p->l;
    const __m512i mask = _mm512_set1_epi32(bits == 4 ? 0xF : 0xFF);
    const float* x = p->x + (size_t)m * p->row;
    const ptrdiff_t run_rows = RUN_K / (bits == 4 ? 8 : 4);
    for (int32_t g = 0; g < l->groups; g++) {
        const uint8_t* group[2];
        __m512 scale[2], zero[2];
        for (int pi = 0; pi < panels; pi++) {
            group[pi] = qk_vnni16_group(p->packed, l, panel + pi, g);
            scale[pi] = _mm512_load_ps((const float*)group[pi]);
            zero[pi] = _mm512_cvtepi32_ps(_mm512_load_si512((const void*)(group[pi] + 64)));
        }
        const float* xg = x + (size_t)g * p->group_stride;
        for (ptrdiff_t i0 = 0; i0 < l->rows; i0 += run_rows) {
            ptrdiff_t i1 = l->rows - i0 < run_rows ? l->rows : i0 + run_rows;
            __m512 sum[TILE_ROWS][2][CHAINS];
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++) sum[r][pi][0] = sum[r][pi][1] = _mm512_setzero_ps();
            for (ptrdiff_t i = i0; i < i1; i++) {
                __m512i v[2];
                for (int pi = 0; pi < panels; pi++) {
                    const uint8_t* data = group[pi] + l->header_bytes + i * QK_VNNI16_ROW_BYTES;
                    _mm_prefetch((const char*)data + QK_AVX512_PREFETCH_BYTES, _MM_HINT_T0);
                    v[pi] = _mm512_load_si512((const void*)data);
                }
                for (int t = 0; t < (bits == 4 ? 8 : 4); t++) {
                    /* k 8i + t of a 4-bit row sits at bit 8 (t % 4) + 4 (t / 4) of its column's dword */
                    const unsigned shift = bits == 4 ? 8 * (t % 4) + 4 * (t / 4) : 8 * t;
                    __m512 w[2];
                    for (int pi = 0; pi < panels; pi++)
                        w[pi] = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(v[pi], shift), mask)),
                                              zero[pi]); /* q - zp, exact */
                    for (int r = 0; r < rows; r++) {
                        __m512 xv = _mm512_set1_ps(xg[r * p->row + i * l->k_per_row + t]);
                        for (int pi = 0; pi < panels; pi++)
                            sum[r][pi][t % CHAINS] = _mm512_fmadd_ps(xv, w[pi], sum[r][pi][t % CHAINS]);
                    }
                }
            }
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++)
                    qk_avx512_fold_ps(y + r * QK_AVX512_TILE_COLUMNS + pi * QK_VNNI16_PANEL,
                                      _mm512_add_ps(sum[r][pi][0], sum[r][pi][1]), scale[pi]);
        }
    }
}

#define A16_FN(bits, panels, rows)                                                                            \
    static void a16_##bits##_##panels##_##rows(const qk_avx512_problem* p, int32_t panel, int32_t m, double* y) { \
        a16_tile(p, bits, panels, rows, panel, m, y);                                                         \
    }
#define A16_ROWS(bits, panels) A16_FN(bits, panels, 1) A16_FN(bits, panels, 2) A16_FN(bits, panels, 3) A16_FN(bits, panels, 4)
A16_ROWS(4, 1)
A16_ROWS(4, 2)
A16_ROWS(8, 1)
A16_ROWS(8, 2)

typedef void a16_fn(const qk_avx512_problem* p, int32_t panel, int32_t m, double* y);
#define A16_TABLE(bits, panels)                                                                               \
    {a16_##bits##_##panels##_1, a16_##bits##_##panels##_2, a16_##bits##_##panels##_3, a16_##bits##_##panels##_4}
static a16_fn* const shapes[2][2][TILE_ROWS] = {
    {A16_TABLE(4, 1), A16_TABLE(4, 2)},
    {A16_TABLE(8, 1), A16_TABLE(8, 2)},
};

static void tile(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int rows, double* y) {
    shapes[p->w->bits == 8][panels - 1][rows - 1](p, panel, m, y);
}

size_t qk_avx512_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    qk_avx512_problem p = qk_avx512_problem_of(w, a);
    return qk_avx512_buffers(&p, 1, NULL);
}

qk_status qk_avx512_a16_4x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx512_problem p = qk_avx512_problem_of(w, a);
    qk_avx512_buffers(&p, 1, exec->workspace);
    qk_avx512_prepare_rows(exec, &p);
    qk_avx512_run_tiles(exec, &p, TILE_ROWS, tile);
    return QK_OK;
}
