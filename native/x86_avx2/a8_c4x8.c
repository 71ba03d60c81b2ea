/* x86_avx2_a8_w4w8_c4x8: A8 (docs/numerics.md section 3) on the canonical layout, for stateless
 * calls at small M (nothing is packed).
 *
 * 4 bits: 32 bytes of a row of W (64 k) split into low and high nibbles are the even and odd k of
 * two 32-k halves, one per 128-bit lane, each u = q + 8 in [0, 15] after one vpxor (as in the packed
 * kernel). The activations are staged to match, per 64 k: the even k of each half, then the odd k.
 * Two vpmaddubsw multiply 64 k of a row of W by 64 k of a row of X; four such chunks sum in int16
 * (4 * 2 * 2 * 15 * 127 = 30480 < 32767) before vpmaddwd widens them. That needs groups of a
 * multiple of 64 k; other groups go 32 k at a time (a unit): its 16 bytes broadcast to both lanes
 * and shifted by 0 or 4 (vpsrlvd) give its even k in the low lane and its odd k in the high one.
 * 8 bits: 32 k at a time, |q| and sign(qx, q) the operands as in the packed kernel, widened every
 * unit. Each group's sum is exact in int32 (G <= 66311), then
 * sum qx * (q - zp) = sum qx * (q + off) - (zp + off) * sum qx, times the scale, in float64.
 *
 * Units that cross a group boundary, or run past K, are summed one k at a time (none when G and K
 * are multiples of 32). A task is a block of 8 rows of W for every row of X. */
#include <string.h>

#include "avx2.h"

enum { TILE_ROWS = 4, BLOCK_N = 8, U = 32, CHUNK = 64, INT16_UNITS = 8 };

/* Where natural k sits in a staged row: 4 bits, per 64 k, the even k of each 32-k half, then the
 * odd k of each half. */
static size_t staged(int32_t k, int bits) {
    int32_t r = k % CHUNK;
    return bits == 8 ? (size_t)k : (size_t)(k - r) + (size_t)(r % 2 * (CHUNK / 2) + r / U * (U / 2) + r % U / 2);
}

typedef struct {
    const qk_matmul_args* a;
    const qk_weights* w;
    int asymmetric, offsets;
    size_t stride;      /* of groups in a staged row: min(G, K) */
    size_t padded;      /* staged row length: its groups rounded up to 64 */
    int8_t* qx;         /* [M][padded] staged quantized activations */
    int32_t* sums;      /* [M][groups] sums of qx per group */
    double* row_scale;  /* [M]: sx, or NaN for a row holding NaN or Inf */
    float* scale;       /* per thread: [groups][8] the block's scales (qk_avx2_block_params) */
    float* offset;      /* per thread: [groups][8] its offsets, when there are some */
    int32_t* zp;        /* per thread: [groups][8] its zero points + off */
} job;

static void stage_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const job* j = arg;
    /* Per 128-bit lane (a 16-k quarter): even bytes, then odd bytes; vpermq then gathers the even
     * halves of both lanes, then the odd ones, and vperm2i128 the two 32-k halves of 64 k. */
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10,
                                           12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int32_t m = begin; m < end; m++) {
        int8_t* qx = j->qx + (size_t)m * j->padded;
        /* dense: groups at their k */
        j->row_scale[m] = qk_avx2_quantize_row(j->a, j->w, m, j->stride, qx,
                                               j->sums + (size_t)m * qk_groups_per_row(j->w));
        memset(qx + j->w->K, 0, j->padded - (size_t)j->w->K);
        if (j->w->bits == 4)
            for (size_t c = 0; c < j->padded; c += CHUNK) {
                __m256i a = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(qx + c)), split);
                __m256i b = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(qx + c + U)), split);
                a = _mm256_permute4x64_epi64(a, _MM_SHUFFLE(3, 1, 2, 0)); /* even | odd of k 0..31 */
                b = _mm256_permute4x64_epi64(b, _MM_SHUFFLE(3, 1, 2, 0)); /* even | odd of k 32..63 */
                _mm256_storeu_si256((__m256i*)(qx + c), _mm256_permute2x128_si256(a, b, 0x20));
                _mm256_storeu_si256((__m256i*)(qx + c + U), _mm256_permute2x128_si256(a, b, 0x31));
            }
    }
}

/* P vectors of eight int32 lanes to their P sums, in out[0 .. P). */
QK_AVX2_INLINE void lane_sums(const __m256i* v, int P, int32_t* out) {
    if (P == 8) {
        __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        _mm256_storeu_si256((__m256i*)out, _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                                                             _mm256_permute2x128_si256(a, b, 0x31)));
        return;
    }
    __m256i h = P == 4 ? _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]))
                       : _mm256_hadd_epi32(v[0], v[1]);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    if (P == 4) {
        _mm_storeu_si128((__m128i*)out, s);
    } else {
        s = _mm_hadd_epi32(s, s);
        _mm_storel_epi64((__m128i*)out, s);
    }
}

/* Rows [0, rows) of X (from qx, stride padded; their group sums from sums) times rows
 * [n0, n0 + 8) of W into y[r] (eight float64 columns as two vectors). One row of X takes the eight
 * rows of W at once, two rows four, more rows two at a time: eight sums in registers. Rows of W past
 * N read row N - 1, and their results are not stored. */
QK_AVX2_INLINE void tile(const job* j, int bits, int asymmetric, int rows, const int8_t* qx, const int32_t* sums,
                         int32_t n0, const float* scales, const float* offsets, const int32_t* zps, __m256d (*y)[2]) {
    const int P = rows == 1 ? 8 : rows == 2 ? 4 : 2;
    const qk_weights* w = j->w;
    int32_t G = w->group_size, groups = qk_groups_per_row(w), N = w->N, off = bits == 4 ? 8 : 0;
    size_t row_bytes = qk_row_bytes(w->K, bits), unit_bytes = bits == 4 ? 16 : 32;
    const int8_t* row[BLOCK_N];
    for (int i = 0; i < BLOCK_N; i++) row[i] = w->data + (size_t)(n0 + i < N ? n0 + i : N - 1) * row_bytes;
    const __m256i ones = _mm256_set1_epi16(1), eights = _mm256_set1_epi8((char)0x88), low_nibbles = _mm256_set1_epi8(0x0F);
    const __m256i lane_shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    const int chunks = bits == 4 && G % CHUNK == 0; /* 64 k at a time (a shorter last group: 32 k last) */
    for (int32_t g = 0; g < groups; g++) {
        int32_t k0 = g * G, k1 = w->K - k0 < G ? w->K : k0 + G;
        int32_t u0 = (k0 + U - 1) / U, u1 = k1 / U;
        int32_t group_sum[TILE_ROWS][BLOCK_N]; /* sum qx * (q + off) */
        for (int n = 0; n < BLOCK_N; n += P) {
            __m256i acc[TILE_ROWS][8]; /* int32 sums of the group so far */
            for (int r = 0; r < rows; r++)
                for (int p = 0; p < P; p++) acc[r][p] = _mm256_setzero_si256();
            /* 4 bits: int16 sums over 256 k, then widened; 8 bits: widened every unit */
            int32_t run = bits == 4 ? INT16_UNITS : u1 - u0;
            for (int32_t ub = u0; ub < u1; ub += run) {
                int32_t ue = u1 - ub < run ? u1 : ub + run;
                __m256i part[TILE_ROWS][8];
                for (int r = 0; r < rows; r++)
                    for (int p = 0; p < P; p++) part[r][p] = _mm256_setzero_si256();
                for (ptrdiff_t u = ub; u < ue;) {
                    const int chunk = bits == 4 && chunks && u + 1 < ue;
#pragma GCC unroll 8
                    for (int p = 0; p < P; p++) {
                        const int8_t* data = row[n + p] + u * unit_bytes;
                        if (chunk) { /* 64 k: u is even */
                            __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)data), eights); /* q + 8 */
                            __m256i even = _mm256_and_si256(v, low_nibbles), odd = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);
#pragma GCC unroll 4
                            for (int r = 0; r < rows; r++) {
                                const int8_t* x = qx + r * j->padded + u * U;
                                __m256i both = _mm256_add_epi16(_mm256_maddubs_epi16(even, _mm256_loadu_si256((const __m256i*)x)),
                                                                _mm256_maddubs_epi16(odd, _mm256_loadu_si256((const __m256i*)(x + U))));
                                part[r][p] = _mm256_add_epi16(part[r][p], both);
                            }
                        } else if (bits == 4) { /* 32 k: its even k, then its odd k, from the staged halves */
                            __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)data));
                            __m256i uq = _mm256_and_si256(_mm256_srlv_epi32(_mm256_xor_si256(b, eights), lane_shift),
                                                          low_nibbles); /* q + 8: even k | odd k */
#pragma GCC unroll 4
                            for (int r = 0; r < rows; r++) {
                                const int8_t* x = qx + r * j->padded + u / 2 * CHUNK + u % 2 * (U / 2);
                                __m256i xu = _mm256_loadu2_m128i((const __m128i*)(x + U), (const __m128i*)x);
                                part[r][p] = _mm256_add_epi16(part[r][p], _mm256_maddubs_epi16(uq, xu));
                            }
                        } else {
                            __m256i v = _mm256_loadu_si256((const __m256i*)data), magnitude = _mm256_abs_epi8(v);
#pragma GCC unroll 4
                            for (int r = 0; r < rows; r++) {
                                __m256i x = _mm256_loadu_si256((const __m256i*)(qx + r * j->padded + u * U));
                                __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, v));
                                part[r][p] = _mm256_add_epi32(part[r][p], _mm256_madd_epi16(pairs, ones));
                            }
                        }
                    }
                    u += chunk ? 2 : 1;
                }
                for (int r = 0; r < rows; r++)
                    for (int p = 0; p < P; p++)
                        acc[r][p] = _mm256_add_epi32(acc[r][p], bits == 4 ? _mm256_madd_epi16(part[r][p], ones) : part[r][p]);
            }
            for (int r = 0; r < rows; r++) lane_sums(acc[r], P, &group_sum[r][n]);
        }
        /* The k outside whole units, one at a time. */
        int32_t head_end = u0 < u1 ? u0 * U : k1, tail_start = u0 < u1 ? u1 * U : k1;
        if (head_end != k0 || tail_start != k1)
            for (int r = 0; r < rows; r++)
                for (int i = 0; i < BLOCK_N; i++) {
                    int32_t n = n0 + i < N ? n0 + i : N - 1;
                    const int8_t* xr = qx + r * j->padded;
                    for (int32_t k = k0; k < head_end; k++) group_sum[r][i] += xr[staged(k, bits)] * (qk_weight_q(w, n, k) + off);
                    for (int32_t k = tail_start; k < k1; k++) group_sum[r][i] += xr[staged(k, bits)] * (qk_weight_q(w, n, k) + off);
                }
        /* Minus (zp + off) * sum qx, exact in int32; times the scale in float64. */
        __m256i zero = asymmetric ? _mm256_loadu_si256((const __m256i*)(zps + 8 * g)) : _mm256_set1_epi32(off);
        __m256 s = _mm256_loadu_ps(scales + 8 * g);
        __m256d s_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s)), s_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1));
        for (int r = 0; r < rows; r++) {
            __m256i exact = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i*)group_sum[r]),
                                             _mm256_mullo_epi32(zero, _mm256_set1_epi32(sums[(size_t)r * groups + g])));
            qk_avx2_fold_epi32(y[r], exact, s_lo, s_hi);
            if (offsets) qk_avx2_fold_offsets(y[r], offsets + 8 * g, sums[(size_t)r * groups + g]);
        }
    }
}

/* Every tile variant with constant parameters (unrolled loops, sums in registers). */
typedef void tile_fn(const job* j, const int8_t* qx, const int32_t* sums, int32_t n0, const float* scales,
                     const float* offsets, const int32_t* zps, __m256d (*y)[2]);
#define TILE_FN(bits, asym, rows)                                                                        \
    static void tile_##bits##_##asym##_##rows(const job* j, const int8_t* qx, const int32_t* sums, int32_t n0, \
                                              const float* scales, const float* offsets, const int32_t* zps, \
                                              __m256d (*y)[2]) {                                          \
        tile(j, bits, asym, rows, qx, sums, n0, scales, offsets, zps, y);                                 \
    }
#define TILE_ROWS_FNS(bits, asym) TILE_FN(bits, asym, 1) TILE_FN(bits, asym, 2) TILE_FN(bits, asym, 3) TILE_FN(bits, asym, 4)
#define TILE_TABLE(bits, asym) {tile_##bits##_##asym##_1, tile_##bits##_##asym##_2, tile_##bits##_##asym##_3, tile_##bits##_##asym##_4}
TILE_ROWS_FNS(4, 0) TILE_ROWS_FNS(4, 1) TILE_ROWS_FNS(8, 0) TILE_ROWS_FNS(8, 1)
static tile_fn* const variants[2][2][TILE_ROWS] = {
    {TILE_TABLE(4, 0), TILE_TABLE(4, 1)},
    {TILE_TABLE(8, 0), TILE_TABLE(8, 1)},
};

/* Task t: rows [8t, 8t + 8) of W for every row of X. */
static void block_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const job* j = arg;
    int32_t M = j->a->M, N = j->w->N, groups = qk_groups_per_row(j->w);
    tile_fn* const* by_rows = variants[j->w->bits == 8][j->asymmetric];
    float* scales = j->scale + (size_t)thread * groups * BLOCK_N;
    int32_t* zps = j->asymmetric ? j->zp + (size_t)thread * groups * BLOCK_N : NULL;
    float* offsets = j->offsets ? j->offset + (size_t)thread * groups * BLOCK_N : NULL;
    for (int32_t t = begin; t < end; t++) {
        int32_t n0 = t * BLOCK_N, count = N - n0 < BLOCK_N ? N - n0 : BLOCK_N;
        qk_avx2_block_params(j->w, n0, scales, offsets, zps, j->w->bits == 4 ? 8 : 0);
        for (int32_t m = 0; m < M; m += TILE_ROWS) {
            int rows = M - m < TILE_ROWS ? M - m : TILE_ROWS;
            __m256d y[TILE_ROWS][2];
            for (int r = 0; r < rows; r++) y[r][0] = y[r][1] = _mm256_setzero_pd();
            by_rows[rows - 1](j, j->qx + (size_t)m * j->padded, j->sums + (size_t)m * groups, n0, scales, offsets, zps, y);
            for (int r = 0; r < rows; r++) {
                double out[BLOCK_N];
                _mm256_storeu_pd(out, y[r][0]);
                _mm256_storeu_pd(out + 4, y[r][1]);
                qk_avx2_finish(j->a, N, j->row_scale, m + r, n0, count, out);
            }
        }
    }
}

/* The workspace: staged quantized rows of X, their group sums, the row scales, then per thread a
 * block's scales, offsets and zero points. */
static size_t buffers(job* j, int32_t threads, void* base) {
    size_t used = 0, M = (size_t)j->a->M, params = (size_t)threads * qk_groups_per_row(j->w) * BLOCK_N;
    j->stride = (size_t)(j->w->group_size < j->w->K ? j->w->group_size : j->w->K);
    j->padded = ((size_t)qk_groups_per_row(j->w) * j->stride + CHUNK - 1) / CHUNK * CHUNK; /* K, or more with a shorter last group */
    j->qx = qk_avx2_take(base, &used, M * j->padded);
    j->sums = qk_avx2_take(base, &used, M * (size_t)qk_groups_per_row(j->w) * sizeof *j->sums);
    j->row_scale = qk_avx2_take(base, &used, M * sizeof *j->row_scale);
    j->scale = qk_avx2_take(base, &used, params * sizeof *j->scale);
    j->offset = qk_avx2_take(base, &used, j->offsets ? params * sizeof *j->offset : 0);
    j->zp = qk_avx2_take(base, &used, j->asymmetric ? params * sizeof *j->zp : 0);
    return used;
}

size_t qk_avx2_a8_c4x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    job j = {.a = a, .w = &w->format, .asymmetric = w->asymmetric, .offsets = w->has_offsets};
    return buffers(&j, threads, NULL);
}

qk_status qk_avx2_a8_c4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    job j = {.a = a, .w = &w->format, .asymmetric = w->asymmetric, .offsets = w->has_offsets};
    buffers(&j, exec->threads, exec->workspace);
    int32_t M = a->M, K = w->format.K, grain = (1 << 14) / K;
    qk_parallel_for(exec, M, grain > 1 ? grain : 1, stage_task, &j);
    qk_parallel_for(exec, (w->format.N + BLOCK_N - 1) / BLOCK_N, qk_avx2_grain((double)M * BLOCK_N * K), block_task, &j);
    return QK_OK;
}
