/* x86_avx2_a8_w4w8_c4x8: A8 (docs/numerics.md section 3) on the canonical layout, for stateless
 * calls at small M (nothing is packed).
 *
 * A unit is 16 bytes of a row of W: 32 k at 4 bits, 16 at 8. One 256-bit register holds a unit of
 * two rows of W ("a pair"), n in the low 128-bit lane and n + 1 in the high one, and the unit's
 * activations are broadcast to both lanes, so that each lane sums its own row. Four pairs' int32
 * lanes reduce to the eight rows' sums in three vphaddd and one vpermd, once per group: the
 * reduction, not the multiplication, is what a layout with k along the register pays for (with one
 * row per register, eight vectors took six vphaddd, two vperm2i128 and a store per group).
 *   4 bits  the low nibbles are a unit's even k and the high nibbles its odd k, each u = q + 8 in
 *           [0, 15] after one vpxor (as in the packed kernel); the activations are staged to match,
 *           per 32 k its 16 even k, then its 16 odd k. Two vpmaddubsw per unit and pair; four units
 *           sum in int16 (4 * 2 * 2 * 15 * 127 = 30480 < 32767) before vpmaddwd widens them.
 *   8 bits  |q| and sign(qx, q) the operands as in the packed kernel, widened every unit.
 * Each group's sum is exact in int32 (G <= 66311), then
 * sum qx * (q - zp) = sum qx * (q + off) - (zp + off) * sum qx, times the scale, in float64.
 *
 * The rows of W are read side by side, eight streams of a few KiB each, which the hardware
 * prefetcher follows poorly: each unit run also prefetches the same bytes of the next block of rows.
 * Units that cross a group boundary, or run past K, are summed one k at a time (none when G and K
 * are multiples of 32). A task is a block of 8 rows of W for every row of X. */
#include <string.h>

#include "avx2.h"

enum { TILE_ROWS = 4, BLOCK_N = 8, PAIRS = BLOCK_N / 2, UNIT_BYTES = 16, STAGE = 32, RUN_UNITS = 4 };

static int32_t unit_k(int bits) { return bits == 4 ? 32 : 16; }

/* Where natural k sits in a staged row: 4 bits, per 32 k, the even k, then the odd k. */
static size_t staged(int32_t k, int bits) {
    int32_t r = k % STAGE;
    return bits == 8 ? (size_t)k : (size_t)(k - r) + (size_t)(r % 2 * (STAGE / 2) + r / 2);
}

typedef qk_avx2_canonical_a8 job;

static void stage_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const job* j = arg;
    /* Per 128-bit lane (16 k): even bytes, then odd bytes; vpermq then gathers the even halves of
     * both lanes, then the odd ones. */
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10,
                                           12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int32_t m = begin; m < end; m++) {
        int8_t* qx = j->qx + (size_t)m * j->padded;
        /* dense: groups at their k */
        j->row_scale[m] = qk_avx2_quantize_row(j->a, j->w, m, j->stride, qx,
                                               j->sums + (size_t)m * qk_groups_per_row(j->w));
        memset(qx + j->w->K, 0, j->padded - (size_t)j->w->K);
        if (j->w->bits == 4)
            for (size_t c = 0; c < j->padded; c += STAGE) {
                __m256i v = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(qx + c)), split);
                _mm256_storeu_si256((__m256i*)(qx + c), _mm256_permute4x64_epi64(v, _MM_SHUFFLE(3, 1, 2, 0)));
            }
    }
}

/* Rows [0, rows) of X (from qx, stride padded; their group sums from sums) times rows
 * [n0, n0 + 8) of W into y[r] (eight float64 columns as two vectors). One row of X takes the four
 * pairs at once, two rows two, more rows one at a time. Rows of W past N read row N - 1, and their
 * results are not stored. */
QK_AVX2_INLINE void tile(const job* j, int bits, int asymmetric, int rows, const int8_t* qx, const int32_t* sums,
                         int32_t n0, const float* scales, const float* offsets, const int32_t* zps, __m256d (*y)[2]) {
    const int P = rows == 1 ? 4 : rows == 2 ? 2 : 1;
    const qk_weights* w = j->w;
    int32_t U = unit_k(bits), G = w->group_size, groups = qk_groups_per_row(w), N = w->N, off = bits == 4 ? 8 : 0;
    size_t row_bytes = qk_row_bytes(w->K, bits);
    const int8_t* row[BLOCK_N];
    for (int i = 0; i < BLOCK_N; i++) row[i] = w->data + (size_t)(n0 + i < N ? n0 + i : N - 1) * row_bytes;
    const size_t ahead = qk_avx2_prefetch_rows(n0, BLOCK_N, N, row_bytes);
    const __m256i ones = _mm256_set1_epi16(1), eights = _mm256_set1_epi8((char)0x88), low_nibbles = _mm256_set1_epi8(0x0F);
    const __m256i natural = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* rows 0 2 4 6 | 1 3 5 7 to 0 .. 7 */
    __m256d out[TILE_ROWS][2]; /* y, in registers (y may alias anything) */
    for (int r = 0; r < rows; r++) out[r][0] = y[r][0], out[r][1] = y[r][1];
    for (int32_t g = 0; g < groups; g++) {
        int32_t k0 = g * G, k1 = w->K - k0 < G ? w->K : k0 + G;
        int32_t u0 = (k0 + U - 1) / U, u1 = k1 / U;
        __m256i pair_sum[TILE_ROWS][PAIRS]; /* int32 lanes: row 2 p in the low lane, 2 p + 1 in the high one */
        for (int p0 = 0; p0 < PAIRS; p0 += P) {
            __m256i acc[TILE_ROWS][PAIRS];
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < P; pi++) acc[r][pi] = _mm256_setzero_si256();
            for (ptrdiff_t ub = u0; ub < u1; ub += RUN_UNITS) {
                ptrdiff_t ue = u1 - ub < RUN_UNITS ? u1 : ub + RUN_UNITS;
                __m256i part[TILE_ROWS][PAIRS]; /* 4 bits: int16 sums; 8 bits: int32 */
                for (int r = 0; r < rows; r++)
                    for (int pi = 0; pi < P; pi++) part[r][pi] = _mm256_setzero_si256();
                for (int i = 2 * p0; i < 2 * (p0 + P); i++)
                    _mm_prefetch((const char*)row[i] + ahead + ub * UNIT_BYTES, _MM_HINT_T0);
                for (ptrdiff_t u = ub; u < ue; u++) {
#pragma GCC unroll 4
                    for (int pi = 0; pi < P; pi++) {
                        __m256i both = _mm256_loadu2_m128i((const __m128i*)(row[2 * (p0 + pi) + 1] + u * UNIT_BYTES),
                                                           (const __m128i*)(row[2 * (p0 + pi)] + u * UNIT_BYTES));
                        if (bits == 4) {
                            __m256i v = _mm256_xor_si256(both, eights); /* q + 8 */
                            __m256i even = _mm256_and_si256(v, low_nibbles);
                            __m256i odd = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);
#pragma GCC unroll 4
                            for (int r = 0; r < rows; r++) {
                                const int8_t* x = qx + r * j->padded + u * U;
                                __m256i xe = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)x));
                                __m256i xo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(x + U / 2)));
                                part[r][pi] = _mm256_add_epi16(part[r][pi], _mm256_add_epi16(_mm256_maddubs_epi16(even, xe),
                                                                                              _mm256_maddubs_epi16(odd, xo)));
                            }
                        } else {
                            __m256i magnitude = _mm256_abs_epi8(both);
#pragma GCC unroll 4
                            for (int r = 0; r < rows; r++) {
                                __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(qx + r * j->padded + u * U)));
                                __m256i products = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, both));
                                part[r][pi] = _mm256_add_epi32(part[r][pi], _mm256_madd_epi16(products, ones));
                            }
                        }
                    }
                }
                for (int r = 0; r < rows; r++)
                    for (int pi = 0; pi < P; pi++)
                        acc[r][pi] = _mm256_add_epi32(acc[r][pi], bits == 4 ? _mm256_madd_epi16(part[r][pi], ones) : part[r][pi]);
            }
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < P; pi++) pair_sum[r][p0 + pi] = acc[r][pi];
        }
        /* Sum qx * (q + off) per row of W, plus the k outside whole units, one at a time; minus
         * (zp + off) * sum qx, exact in int32; times the scale in float64. */
        __m256i exact[TILE_ROWS];
        for (int r = 0; r < rows; r++)
            exact[r] = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(_mm256_hadd_epi32(pair_sum[r][0], pair_sum[r][1]),
                                                                     _mm256_hadd_epi32(pair_sum[r][2], pair_sum[r][3])),
                                                   natural);
        int32_t head_end = u0 < u1 ? u0 * U : k1, tail_start = u0 < u1 ? u1 * U : k1;
        if (head_end != k0 || tail_start != k1)
            for (int r = 0; r < rows; r++) {
                const int8_t* xr = qx + r * j->padded;
                int32_t edge[BLOCK_N];
                for (int i = 0; i < BLOCK_N; i++) {
                    int32_t n = n0 + i < N ? n0 + i : N - 1;
                    edge[i] = 0;
                    for (int32_t k = k0; k < head_end; k++) edge[i] += xr[staged(k, bits)] * (qk_weight_q(w, n, k) + off);
                    for (int32_t k = tail_start; k < k1; k++) edge[i] += xr[staged(k, bits)] * (qk_weight_q(w, n, k) + off);
                }
                exact[r] = _mm256_add_epi32(exact[r], _mm256_loadu_si256((const __m256i*)edge));
            }
        __m256 s = _mm256_loadu_ps(scales + 8 * g);
        __m256d s_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s)), s_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1));
        for (int r = 0; r < rows; r++) {
            int32_t sum = sums[(size_t)r * groups + g];
            exact[r] = _mm256_sub_epi32(exact[r], asymmetric ? _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i*)(zps + 8 * g)),
                                                                                  _mm256_set1_epi32(sum))
                                                             : _mm256_set1_epi32(off * sum));
            qk_avx2_fold_epi32(out[r], exact[r], s_lo, s_hi);
            if (offsets) qk_avx2_fold_offsets(out[r], offsets + 8 * g, sum);
        }
    }
    for (int r = 0; r < rows; r++) y[r][0] = out[r][0], y[r][1] = out[r][1];
}

/* Every tile variant with constant parameters (unrolled loops, sums in registers). */
#define TILE_FN(bits, asym, rows)                                                                        \
    static void tile_##bits##_##asym##_##rows(const job* j, const int8_t* qx, const int32_t* sums, int32_t n0, \
                                              const float* scales, const float* offsets, const int32_t* zps, \
                                              __m256d (*y)[2]) {                                          \
        tile(j, bits, asym, rows, qx, sums, n0, scales, offsets, zps, y);                                 \
    }
#define TILE_ROWS_FNS(bits, asym) TILE_FN(bits, asym, 1) TILE_FN(bits, asym, 2) TILE_FN(bits, asym, 3) TILE_FN(bits, asym, 4)
#define TILE_TABLE(bits, asym) {tile_##bits##_##asym##_1, tile_##bits##_##asym##_2, tile_##bits##_##asym##_3, tile_##bits##_##asym##_4}
TILE_ROWS_FNS(4, 0) TILE_ROWS_FNS(4, 1) TILE_ROWS_FNS(8, 0) TILE_ROWS_FNS(8, 1)
static qk_avx2_canonical_a8_tile* const variants[2][2][TILE_ROWS] = {
    {TILE_TABLE(4, 0), TILE_TABLE(4, 1)},
    {TILE_TABLE(8, 0), TILE_TABLE(8, 1)},
};

static job job_of(const qk_kernel_weights* w, const qk_matmul_args* a) {
    int bits = w->format.bits;
    job j = {.a = a, .w = &w->format, .asymmetric = w->asymmetric, .offsets = w->has_offsets,
             .zp_offset = bits == 4 ? 8 : 0, .tile_rows = TILE_ROWS, .tiles = variants[bits == 8][w->asymmetric != 0]};
    return j;
}

size_t qk_avx2_a8_c4x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    job j = job_of(w, a);
    return qk_avx2_canonical_a8_buffers(&j, threads, STAGE, NULL);
}

qk_status qk_avx2_a8_c4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    job j = job_of(w, a);
    qk_avx2_canonical_a8_buffers(&j, exec->threads, STAGE, exec->workspace);
    qk_avx2_canonical_a8_run(exec, &j, stage_task);
    return QK_OK;
}
