/* x86_avx512_a16_w4_c4x16: A16 on the canonical layout, for stateless calls at small M: x86_avx2's
 * a16_c4x8.c with four rows of W per 512-bit register (one per 128-bit lane) where that file holds
 * two, for the 4-bit calls the AVX512-BF16 variants do not take (float32 input, offsets, any G).
 *
 * The same terms in the same order, so the same bytes (test_matmul's twins): a unit is 16 bytes of
 * a row of W (32 k); lane l of a register holds row 4c + l's unit, and dword j of a lane gives
 * k = 8j + 2i + h (nibble h of byte i) as the weight q * 2^28 in float32; the activations are
 * x86_avx2's staged quads, one 128-bit broadcast per quad and row of X; two chains per lane over
 * runs of 128 k, then the four lanes of a row added as vhaddps adds them ((a0 + a1) + (a2 + a3)),
 * and folded into float64 with the row's scale. The k outside whole units, the staging and the
 * rounding are x86_avx2's (qk_avx2_canonical_a16).
 *
 * What differs is how a weight is formed: a shift brings the nibble to the bottom of its dword and
 * vpermps looks up q * 2^28 in a 16-entry table (vpermps reads only the index's low 4 bits: no
 * mask). A task is a block of 16 rows of W for every row of X.
 *
 * Not for 8-bit weights: four rows' units take three vinserti32x4 per 16 k there (per 32 k at 4
 * bits), and at M = 1 this form took 1.31x x86_avx2's time (4096², float32; README). */
#include "avx512.h"

enum {
    TILE_ROWS = 4,  /* rows of X per tile */
    LANE_ROWS = 4,  /* rows of W per register */
    SETS = 4,       /* registers per block: 16 rows of W */
    BLOCK_N = SETS * LANE_ROWS,
    UNIT_BYTES = 16,
    CHAINS = 2,
};

_Static_assert((int)BLOCK_N <= (int)QK_AVX2_A16_MAX_BLOCK && (int)TILE_ROWS <= (int)QK_AVX2_A16_MAX_TILE_ROWS,
               "the shared block loop's tile");

typedef qk_avx2_canonical_a16 job; /* x86_avx2's: staging, edges, the block loop and rounding are shared */

/* The 16 two's complement nibbles' q * 2^28 (what x86_avx2's vpshufb and vcvtdq2ps make), by code. */
QK_AVX512_INLINE __m512 nibble_values(void) {
    return _mm512_mul_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1), _mm512_set1_ps(0x1p28f));
}

/* Four values, one per 128-bit lane, each broadcast across its lane. */
QK_AVX512_INLINE __m512 per_lane(float v0, float v1, float v2, float v3) {
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_setr_ps(v0, v1, v2, v3)));
}

/* A register's row sums: lane l's four floats added as two rounds of vhaddps add them, the sum of
 * row 4c + l left in float 4l. */
QK_AVX512_INLINE __m512 lane_sums(__m512 t) {
    t = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, 0xB1)); /* a0 + a1, a1 + a0, a2 + a3, a3 + a2 */
    return _mm512_add_ps(t, _mm512_shuffle_ps(t, t, 0x4E)); /* (a0 + a1) + (a2 + a3), ... */
}

/* A tile (qk_avx2_canonical_a16_tile, avx2.h) of 16 rows of W, summed in y[r][h] (rows n0 + 8h ..
 * n0 + 8h + 7) and stored in out at the end. One or two rows of X take the four registers of rows
 * of W at a time, more take two: 8 to 16 independent FMA chains. */
QK_AVX512_INLINE void tile(const job* j, int form, int rows, const float* x, int32_t n0,
                           double (*out)[QK_AVX2_A16_MAX_BLOCK]) {
    enum { U = 32 }; /* k per unit */
    __m512d y[TILE_ROWS][2];
    for (int r = 0; r < rows; r++) y[r][0] = y[r][1] = _mm512_setzero_pd();
    const int sets = rows <= 2 ? SETS : SETS / 2;
    const qk_weights* w = j->w;
    int32_t groups = qk_groups_per_row(w), N = w->N;
    const float unit = qk_avx2_weight_unit(4);
    const __m512 inverse_unit = _mm512_set1_ps(1.0f / unit), values = nibble_values();
    const int8_t* row[BLOCK_N];
    const float *scales[BLOCK_N], *offsets[BLOCK_N];
    for (int i = 0; i < BLOCK_N; i++) {
        int32_t n = n0 + i < N ? n0 + i : N - 1;
        row[i] = w->data + (size_t)n * qk_row_bytes(w->K, 4);
        scales[i] = w->scales + (size_t)n * groups;
        offsets[i] = w->offsets ? w->offsets + (size_t)n * groups : NULL;
    }
    const size_t ahead = qk_avx2_prefetch_rows(n0, BLOCK_N, N, qk_row_bytes(w->K, 4));
    for (int32_t g = 0; g < groups; g++) {
        qk_avx2_a16_group s = qk_avx2_a16_group_of(w, g);
        __m512d scale[2];
        for (int h = 0; h < 2; h++) {
            const float* const* sc = scales + 8 * h;
            scale[h] = _mm512_cvtps_pd(_mm256_setr_ps(sc[0][g], sc[1][g], sc[2][g], sc[3][g], sc[4][g], sc[5][g],
                                                      sc[6][g], sc[7][g]));
        }
        /* Per register, row 4c + l in lane l: zp * unit, or with offsets -zp, and the scale and
         * offset that form the weights. */
        __m512 zero[SETS], lane_scale[SETS], lane_offset[SETS];
        if (form != QK_AVX2_SYMMETRIC)
            for (int c = 0; c < SETS; c++) {
                float zp[LANE_ROWS];
                for (int l = 0; l < LANE_ROWS; l++) {
                    int32_t n = n0 + 4 * c + l < N ? n0 + 4 * c + l : N - 1;
                    zp[l] = (float)qk_weight_zp(w, n, s.k0);
                    zp[l] = form == QK_AVX2_OFFSETS ? -zp[l] : zp[l] * unit;
                }
                zero[c] = per_lane(zp[0], zp[1], zp[2], zp[3]);
            }
        if (form == QK_AVX2_OFFSETS) {
            for (int c = 0; c < SETS; c++) {
                const float* const* sc = scales + 4 * c;
                const float* const* of = offsets + 4 * c;
                lane_scale[c] = per_lane(sc[0][g], sc[1][g], sc[2][g], sc[3][g]);
                lane_offset[c] = per_lane(of[0][g], of[1][g], of[2][g], of[3][g]);
            }
            scale[0] = scale[1] = _mm512_set1_pd(unit); /* the sums are of x * w; the caller divides by unit */
        }
        const int32_t run = 128 / U; /* float32 runs of 128 k, as x86_avx2's */
        for (int32_t ub = s.u0; ub < s.u1; ub += run) {
            int32_t ue = s.u1 - ub < run ? s.u1 : ub + run;
            __m512 t[TILE_ROWS][SETS]; /* each register's float32 sums */
            for (int c0 = 0; c0 < SETS; c0 += sets) {
                __m512 acc[TILE_ROWS][SETS][CHAINS];
#pragma GCC unroll 4
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < sets; c++) acc[r][c][0] = acc[r][c][1] = _mm512_setzero_ps();
                for (int i = LANE_ROWS * c0; i < LANE_ROWS * (c0 + sets); i++)
                    for (ptrdiff_t u = ub; u < ue; u += 64 / UNIT_BYTES)
                        _mm_prefetch((const char*)row[i] + ahead + u * UNIT_BYTES, _MM_HINT_T0);
                for (ptrdiff_t u = ub; u < ue; u++) {
                    __m512i v[SETS];
                    for (int c = 0; c < sets; c++) {
                        const int8_t* const* rc = row + LANE_ROWS * (c0 + c);
                        __m512i both = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(rc[0] + u * UNIT_BYTES)));
                        both = _mm512_inserti32x4(both, _mm_loadu_si128((const __m128i*)(rc[1] + u * UNIT_BYTES)), 1);
                        both = _mm512_inserti32x4(both, _mm_loadu_si128((const __m128i*)(rc[2] + u * UNIT_BYTES)), 2);
                        v[c] = _mm512_inserti32x4(both, _mm_loadu_si128((const __m128i*)(rc[3] + u * UNIT_BYTES)), 3);
                    }
                    const float* xu = x + u * U;
#pragma GCC unroll 8
                    for (int q = 0; q < U / 4; q++) {
                        int cq = 2 * (q % 4) + q / 4, p = 2 * (cq % 4) + cq / 4; /* the staged quad of k = 8j + cq */
                        __m512 wq[SETS];
                        for (int c = 0; c < sets; c++) {
                            /* quad q: nibble q / 4 of byte q % 4, as the packed kernels' k q of a data row */
                            wq[c] = qk_avx512_a16_weight(4, 0, v[c], q, values, _mm512_setzero_ps()); /* q * unit */
                            if (form == QK_AVX2_ASYMMETRIC) wq[c] = _mm512_sub_ps(wq[c], zero[c0 + c]); /* exact */
                            if (form == QK_AVX2_OFFSETS) /* q - zp exactly, then w rounded once */
                                wq[c] = _mm512_fmadd_ps(_mm512_fmadd_ps(wq[c], inverse_unit, zero[c0 + c]),
                                                        lane_scale[c0 + c], lane_offset[c0 + c]);
                        }
#pragma GCC unroll 4
                        for (int r = 0; r < rows; r++) {
                            __m512 xq = _mm512_broadcast_f32x4(_mm_loadu_ps(xu + (size_t)r * j->padded + 4 * p));
                            for (int c = 0; c < sets; c++)
                                acc[r][c][q % CHAINS] = _mm512_fmadd_ps(xq, wq[c], acc[r][c][q % CHAINS]);
                        }
                    }
                }
#pragma GCC unroll 4
                for (int r = 0; r < rows; r++)
                    for (int c = 0; c < sets; c++) t[r][c0 + c] = _mm512_add_ps(acc[r][c][0], acc[r][c][1]);
            }
            /* rows 4c + l at float 4l of register c: rows 0 .. 7 from registers 0 and 1, 8 .. 15 from 2 and 3 */
            const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
            for (int r = 0; r < rows; r++)
                for (int h = 0; h < 2; h++) {
                    __m512 sums = _mm512_permutex2var_ps(lane_sums(t[r][2 * h]), firsts, lane_sums(t[r][2 * h + 1]));
                    y[r][h] = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(sums)), scale[h], y[r][h]);
                }
        }
        if (s.head_end == s.k0 && s.tail_start == s.k1) continue; /* no k outside whole units */
        for (int r = 0; r < rows; r++) {
            double edge[BLOCK_N];
            for (int i = 0; i < BLOCK_N; i++)
                edge[i] = qk_avx2_canonical_a16_edge(j, s, x + (size_t)r * j->padded, n0 + i < N ? n0 + i : N - 1);
            y[r][0] = _mm512_add_pd(y[r][0], _mm512_loadu_pd(edge));
            y[r][1] = _mm512_add_pd(y[r][1], _mm512_loadu_pd(edge + 8));
        }
    }
    for (int r = 0; r < rows; r++) {
        _mm512_storeu_pd(out[r], y[r][0]);
        _mm512_storeu_pd(out[r] + 8, y[r][1]);
    }
}

/* Every tile variant with constant parameters (unrolled loops, sums in registers). */
#define TILE_FN(form, rows)                                                                                  \
    static void tile_##form##_##rows(const job* j, const float* x, int32_t n0,                                \
                                     double (*out)[QK_AVX2_A16_MAX_BLOCK]) {                                  \
        tile(j, form, rows, x, n0, out);                                                                     \
    }
#define TILE_ROWS_FNS(form) TILE_FN(form, 1) TILE_FN(form, 2) TILE_FN(form, 3) TILE_FN(form, 4)
#define TILE_TABLE(form) {tile_##form##_1, tile_##form##_2, tile_##form##_3, tile_##form##_4}
TILE_ROWS_FNS(0) TILE_ROWS_FNS(1) TILE_ROWS_FNS(2)
static qk_avx2_canonical_a16_tile* const variants[QK_AVX2_FORMS][TILE_ROWS] = { /* [form][rows - 1] */
    TILE_TABLE(0), TILE_TABLE(1), TILE_TABLE(2),
};

qk_status qk_avx512_a16_w4_c4x16(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    int form = qk_avx2_form(w->asymmetric, w->has_offsets);
    return qk_avx2_canonical_a16_run(exec, w, a, BLOCK_N, TILE_ROWS, variants[form]);
}
