/* x86_avx512_a16_w4w8_4x32: A16 on the vnni16 pack, with AVX-512 FMA, up to M = 16 (every M where
 * forced): the backend's A16 wherever a16_bf16.c's kernel does not run (8-bit weights, offsets,
 * float32 input, or a CPU without AVX512-BF16).
 *
 * Each k's 16 weights become float32 q - zp exactly, in two or three operations
 * (qk_avx512_a16_weight, avx512.h), for each tile again: a16_8x32.c forms them once per task,
 * which pays above M = 16 (register.c).
 * Sums of x * (q - zp) run in float32 over chunks of at most 128 k as two chains (even and odd k)
 * of at most 64 terms, whose rounding error is at most 2^-18 of sum |x * (q - zp)|, a quarter of the
 * float32 tolerance. Each chunk's sum times its group's scale is added to a float32 run of at most
 * 16 chunks (avx512.h, qk_avx512_chunk), and each run to the float64 sums: at most 2^-20 more, and
 * the error does not grow with K (docs/numerics.md reading 19; a float64 fold per chunk cost group
 * size 32 about 1.3x the time of per-channel weights, README). With offsets each weight is formed
 * first, w = fma(q - zp, scale, offset) (one float32 rounding), and the runs sum x * w: offset * sum
 * x apart would cancel against scale * sum x q where w is near zero, beyond the tolerance, which is
 * relative to sum |x * w| (as in x86_avx2). Rows of |x| >= 2^88 come scaled down by a power of two
 * (qk_avx2_load_row): a run of 2048 products then stays finite for weights below 2^29 in
 * magnitude (2^128 / (2^88 * 2048), docs/numerics.md reading 16).
 * Activations past a group's end are zero. */
#include "avx512.h"

enum { TILE_ROWS = 4 };

/* Rows x panels of the tile, for one call with constant arguments. Each float32 sum has two chains
 * whatever the tile, so a row's result never depends on the other rows of its tile. */
QK_AVX512_INLINE void a16_tile(const qk_avx512_problem* p, int bits, int asymmetric, int offsets, int panels,
                               int rows, int32_t panel, int32_t m, double* y) {
    enum { CHAINS = 2 };
    const qk_vnni16_layout* l = &p->l;
    const float* x = p->x + (size_t)m * p->x_row;
    const __m512 values = qk_avx512_a16_values(asymmetric);
    qk_avx512_chunk c = qk_avx512_chunk_at(l, QK_AVX512_CHUNK_K, 0, 0);
    while (c.g < l->groups) {
        __m512 run[TILE_ROWS][2];
        for (int r = 0; r < rows; r++)
            for (int pi = 0; pi < panels; pi++) run[r][pi] = _mm512_setzero_ps();
        for (int term = 0; term < QK_AVX512_RUN_CHUNKS && c.g < l->groups; term++, c = qk_avx512_next_chunk(l, QK_AVX512_CHUNK_K, c)) {
            const uint8_t* group[2];
            __m512 zero[2]; /* what is left to subtract, zp + 8 (4 bits) or zp (8 bits) */
            __m512 scale[2], offset[2];
            for (int pi = 0; pi < panels; pi++) {
                group[pi] = qk_vnni16_group(p->packed, l, panel + pi, c.g);
                scale[pi] = _mm512_load_ps((const float*)group[pi]);
                zero[pi] = qk_avx512_a16_zero(group[pi], l, bits);
                offset[pi] = qk_avx512_offset(group[pi], l);
            }
            const float* xg = x + (size_t)c.g * p->group_stride;
            __m512 sum[TILE_ROWS][2][CHAINS];
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++) sum[r][pi][0] = sum[r][pi][1] = _mm512_setzero_ps();
            for (ptrdiff_t i = c.i0; i < c.i1; i++) {
                __m512i v[2];
                for (int pi = 0; pi < panels; pi++) v[pi] = qk_avx512_a16_row(group[pi], l, i, bits);
                /* a constant trip count, unrolled, so that shifts and chain indices are constants and
                 * the sums stay in registers (as a loop to 4 or 8, gcc left it rolled: 4 bits was
                 * 1.4-1.6x slower at M >= 16) */
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) {
                    if (bits == 8 && t == 4) break;
                    __m512 w[2];
                    for (int pi = 0; pi < panels; pi++) {
                        w[pi] = qk_avx512_a16_weight(bits, asymmetric, v[pi], t, values, zero[pi]);
                        if (offsets) w[pi] = _mm512_fmadd_ps(w[pi], scale[pi], offset[pi]);
                    }
                    for (int r = 0; r < rows; r++) {
                        __m512 xv = _mm512_set1_ps(xg[r * p->x_row + i * l->k_per_row + t]);
                        for (int pi = 0; pi < panels; pi++)
                            sum[r][pi][t % CHAINS] = _mm512_fmadd_ps(xv, w[pi], sum[r][pi][t % CHAINS]);
                    }
                }
            }
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++) {
                    __m512 t = _mm512_add_ps(sum[r][pi][0], sum[r][pi][1]);
                    /* with offsets the weights were formed whole: t is already scaled */
                    run[r][pi] = offsets ? _mm512_add_ps(run[r][pi], t) : _mm512_fmadd_ps(t, scale[pi], run[r][pi]);
                }
        }
        qk_avx512_add_runs(y, run, rows, panels);
    }
}

/* Each tile shape as its own function with constant arguments:
 * [bits 4/8][asymmetric][offsets][panels 1/2][rows]. */
#define A16_FN(bits, asym, offs, panels, rows)                                                                 \
    static void a16_##bits##_##asym##_##offs##_##panels##_##rows(const qk_avx512_problem* p, int32_t panel,    \
                                                                 int32_t m, double* y) {                       \
        a16_tile(p, bits, asym, offs, panels, rows, panel, m, y);                                              \
    }
#define A16_ROWS(bits, asym, offs, panels)                                                                     \
    A16_FN(bits, asym, offs, panels, 1) A16_FN(bits, asym, offs, panels, 2) A16_FN(bits, asym, offs, panels, 3) \
    A16_FN(bits, asym, offs, panels, 4)
#define A16_PANELS(bits, asym, offs) A16_ROWS(bits, asym, offs, 1) A16_ROWS(bits, asym, offs, 2)
A16_PANELS(4, 0, 0)
A16_PANELS(4, 0, 1)
A16_PANELS(4, 1, 0)
A16_PANELS(4, 1, 1)
A16_PANELS(8, 0, 0)
A16_PANELS(8, 0, 1)
A16_PANELS(8, 1, 0)
A16_PANELS(8, 1, 1)

typedef void a16_fn(const qk_avx512_problem* p, int32_t panel, int32_t m, double* y);
#define A16_TABLE(bits, asym, offs, panels)                                                                    \
    {a16_##bits##_##asym##_##offs##_##panels##_1, a16_##bits##_##asym##_##offs##_##panels##_2,                 \
     a16_##bits##_##asym##_##offs##_##panels##_3, a16_##bits##_##asym##_##offs##_##panels##_4}
#define A16_BY_PANELS(bits, asym, offs) {A16_TABLE(bits, asym, offs, 1), A16_TABLE(bits, asym, offs, 2)}
static a16_fn* const shapes[2][2][2][2][TILE_ROWS] = {
    {{A16_BY_PANELS(4, 0, 0), A16_BY_PANELS(4, 0, 1)}, {A16_BY_PANELS(4, 1, 0), A16_BY_PANELS(4, 1, 1)}},
    {{A16_BY_PANELS(8, 0, 0), A16_BY_PANELS(8, 0, 1)}, {A16_BY_PANELS(8, 1, 0), A16_BY_PANELS(8, 1, 1)}},
};

static void tile(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int rows, double* y) {
    shapes[p->w->bits == 8][p->asymmetric][p->has_offsets][panels - 1][rows - 1](p, panel, m, y);
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
