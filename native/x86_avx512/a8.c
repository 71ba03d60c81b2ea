/* x86_avx512_a8_w4w8_8x32: A8 (docs/numerics.md section 3) on the vnni16 pack, with vpdpbusd, for
 * every M.
 *
 * The pack stores u = q + bias (layout.h), the unsigned operand of vpdpbusd; four activation bytes
 * broadcast to every dword are the signed one. One vpdpbusd adds the four products of a k-quad to
 * each of 16 columns; 4-bit rows are split into their two nibble vectors (k 8r..8r+3 and
 * 8r+4..8r+7) by a mask and a shift. Per group, sum qx * (q - zp) = sum qx * u - zero * xs with
 * xs = sum qx from the quantizer, each sum started at -zero * xs: exact in int32 (vpdpbusd wraps,
 * and the final value fits for G <= QK_A8_INT32_EXACT_GROUP). Then scaled and summed over groups
 * in float32 runs added to float64 sums (reading 20), with the offset term offset * xs when the
 * weights have offsets: qk_avx512_a8_add, as in x86_amx's fold, so that both give the same bits.
 * Activations past a group's end are zero, as are the pack's weights there, so padding adds
 * nothing.
 *
 * One tile of up to 8 rows x 32 columns serves every M: 16 accumulators, the weights' nibble split
 * shared by 8 rows. Measured at 4096 x 4096 (weights in cache, shared machine), a 4-row tile took
 * 1.12x (4 bits) and 1.13-1.18x (8 bits) its time at M = 16 and 512, a 12-row tile (which spills)
 * 1.14-1.53x; up to M = 4 all are the same single tile.
 *
 * The fold of a group's sums into the runs costs as much as a few rows of products (about 100
 * cycles per tile and group on Zen 4 when it was written with a branch per run start and end for
 * each sum, GCC 12 keeping part of the tile on the stack): runs are therefore loops of their own.
 * On Zen 4 (bench/probes/matmul_loop.py, M = 512, 4096^2, 4 bits) that took group size 32 from
 * 34.8-35.9 to 29.0 ms and 128 from 23.8-24.2 to 22.1-22.8 ms (per channel: 20.0). */
#include <string.h>

#include "avx512.h"

/* Four activation bytes, x[0..3], in every dword. */
QK_AVX512_INLINE __m512i broadcast4(const int8_t* x) {
    int32_t v;
    memcpy(&v, x, sizeof v);
    return _mm512_set1_epi32(v);
}

/* Rows x panels of the tile, for one call with constant arguments (unrolled, sums in registers). */
QK_AVX512_INLINE void a8_tile(const qk_avx512_problem* p, int bits, int panels, int rows, int32_t panel, int32_t m,
                              double* y) {
    const qk_vnni16_layout* l = &p->l;
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
    const int8_t* qx = p->qx + (size_t)m * p->row;
    const int32_t* sums = p->sums + (size_t)m * l->groups;
    const int offsets = p->has_offsets; /* a local: vector stores may alias *p */
    const int32_t groups = l->groups, run_groups = qk_a8_run_groups(offsets);
    for (int32_t g0 = 0; g0 < groups; g0 += run_groups) {
        int32_t g1 = groups - g0 < run_groups ? groups : g0 + run_groups;
        float run[QK_AVX512_MAX_TILE_ROWS * QK_AVX512_TILE_COLUMNS] __attribute__((aligned(64))) = {0};
        for (int32_t g = g0; g < g1; g++) {
            const uint8_t* group[2];
            for (int pi = 0; pi < panels; pi++) group[pi] = qk_vnni16_group(p->packed, l, panel + pi, g);
            const int8_t* xg = qx + (size_t)g * p->group_stride;
            __m512i acc[QK_AVX512_MAX_TILE_ROWS][2];
            for (int r = 0; r < rows; r++) {
                __m512i minus_xs = _mm512_set1_epi32((int32_t)(0u - (uint32_t)sums[(size_t)r * groups + g]));
                for (int pi = 0; pi < panels; pi++)
                    acc[r][pi] = _mm512_mullo_epi32(qk_avx512_zero(group[pi], l), minus_xs);
            }
            for (ptrdiff_t i = 0; i < l->rows; i++) {
                __m512i lo[2], hi[2];
                for (int pi = 0; pi < panels; pi++) {
                    __m512i v = qk_avx512_load_row(group[pi], l, i);
                    if (bits == 4) {
                        lo[pi] = _mm512_and_si512(v, low_nibbles);
                        hi[pi] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles);
                    } else {
                        lo[pi] = v;
                    }
                }
                for (int r = 0; r < rows; r++) {
                    const int8_t* x = xg + r * p->row + i * l->k_per_row;
                    __m512i x0 = broadcast4(x);
                    for (int pi = 0; pi < panels; pi++) acc[r][pi] = _mm512_dpbusd_epi32(acc[r][pi], lo[pi], x0);
                    if (bits == 4) {
                        __m512i x1 = broadcast4(x + 4);
                        for (int pi = 0; pi < panels; pi++) acc[r][pi] = _mm512_dpbusd_epi32(acc[r][pi], hi[pi], x1);
                    }
                }
            }
            for (int pi = 0; pi < panels; pi++) {
                __m512 scale = _mm512_load_ps((const float*)group[pi]);
                __m512 offset = qk_avx512_offset(group[pi], l);
                for (int r = 0; r < rows; r++) {
                    float* at = run + (size_t)r * QK_AVX512_TILE_COLUMNS + (size_t)pi * QK_VNNI16_PANEL;
                    _mm512_store_ps(at, qk_avx512_a8_add(_mm512_load_ps(at), offsets, acc[r][pi], scale, offset,
                                                         sums[(size_t)r * groups + g]));
                }
            }
        }
        for (int i = 0; i < rows * QK_AVX512_TILE_COLUMNS; i += 16) qk_avx512_add_f64(y + i, _mm512_load_ps(run + i));
    }
}

/* Each tile shape as its own function with constant arguments: [bits 4/8][panels 1/2][rows]. */
#define A8_FN(bits, panels, rows)                                                                             \
    static void a8_##bits##_##panels##_##rows(const qk_avx512_problem* p, int32_t panel, int32_t m, double* y) { \
        a8_tile(p, bits, panels, rows, panel, m, y);                                                          \
    }
#define A8_ROWS(bits, panels)                                                                                 \
    A8_FN(bits, panels, 1) A8_FN(bits, panels, 2) A8_FN(bits, panels, 3) A8_FN(bits, panels, 4)              \
    A8_FN(bits, panels, 5) A8_FN(bits, panels, 6) A8_FN(bits, panels, 7) A8_FN(bits, panels, 8)
A8_ROWS(4, 1)
A8_ROWS(4, 2)
A8_ROWS(8, 1)
A8_ROWS(8, 2)

typedef void a8_fn(const qk_avx512_problem* p, int32_t panel, int32_t m, double* y);
#define A8_TABLE(bits, panels)                                                                                \
    {a8_##bits##_##panels##_1, a8_##bits##_##panels##_2, a8_##bits##_##panels##_3, a8_##bits##_##panels##_4,  \
     a8_##bits##_##panels##_5, a8_##bits##_##panels##_6, a8_##bits##_##panels##_7, a8_##bits##_##panels##_8}
static a8_fn* const shapes[2][2][QK_AVX512_MAX_TILE_ROWS] = {
    {A8_TABLE(4, 1), A8_TABLE(4, 2)},
    {A8_TABLE(8, 1), A8_TABLE(8, 2)},
};

static void tile(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int rows, double* y) {
    shapes[p->w->bits == 8][panels - 1][rows - 1](p, panel, m, y);
}

size_t qk_avx512_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    qk_avx512_problem p = qk_avx512_problem_of(w, a);
    return qk_avx512_buffers(&p, 0, NULL);
}

qk_status qk_avx512_a8_8x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx512_problem p = qk_avx512_problem_of(w, a);
    qk_avx512_buffers(&p, 0, exec->workspace);
    qk_avx512_prepare_rows(exec, &p);
    qk_avx512_run_tiles(exec, &p, QK_AVX512_MAX_TILE_ROWS, tile);
    return QK_OK;
}
