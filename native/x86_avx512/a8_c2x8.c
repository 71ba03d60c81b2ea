/* x86_avx512_a8_w4w8_vnni_c2x8 and _g32_c2x8: A8 (docs/numerics.md section 3) on the canonical
 * layout, for stateless calls at small M (nothing is packed), G a multiple of 128 (c2x8) or G = 32
 * or 64 (g32_c2x8: GGUF's Q4_0 and Q8_0 blocks): vpdpbusd on rows of W as they are stored.
 *
 * Why: x86_avx2_a8_w4w8_c4x8 ran a stateless M = 1 call at 1.6x the time of a prepared one on an
 * AMD EPYC Zen 4 (README, x86_avx512); here 128 4-bit weights of a row cost a load, a vpxor, a
 * shift, two vpand and two vpdpbusd.
 *
 * A chunk is 64 bytes of a row of W, one zmm: 128 k at 4 bits, 64 at 8.
 *   4 bits  byte j holds k 2j (low nibble) and 2j + 1 (high nibble), two's complement; after one
 *           vpxor with 0x88 each nibble is u = q + 8 in [0, 15], the unsigned operand of vpdpbusd.
 *           The quantized activations are staged to match, per chunk its 64 even k, then its 64
 *           odd k: one vpdpbusd for the low nibbles, one for the high.
 *   8 bits  u = q + 128 after a vpxor with 0x80; the activations stay in natural order.
 * Per group the 16 int32 lanes of each (row of X, row of W) sum (wrapping, exact at the end for
 * G <= 66311: reading 5) reduce to the eight rows' sums, Σ qx·u, minus zero·xs (zero = zp + 8 or
 * zp + 128, xs the group's Σ qx) in int32: the exact acc of the contract. Then as
 * x86_avx2_a8_w4w8_c4x8 folds it, times the scale (plus offset·xs) into float64 sums in group
 * order, so the two give the same bytes. A tile is 1 or 2 rows of X by 8 rows of W.
 *
 * Small groups: a chunk then holds P = 2 or 4 groups (4 bits, G = 64 or 32; 8 bits, G = 32; 8-bit
 * G = 64 is one chunk, as above). A vpdpbusd lane sums 4 bytes, 8 k at 4 bits and 4 at 8, so each
 * group is a whole run of 16 / P lanes: every chunk is summed from zero, its lanes reduced per
 * group (group_sums), and its groups folded in order; x86_avx2_a8_w4w8_c4x8 ran these calls at
 * 1.5-5.3x the prepared call's time (Zen 4, 4096 x 4096, M = 1 to 16: README, x86_avx512). */
#include <string.h>

#include "avx512.h"

enum {
    TILE_ROWS = 2,             /* rows of X */
    BLOCK_N = QK_AVX2_PANEL,   /* rows of W: one tile, one task of qk_avx2_canonical_a8_run */
    CHUNK_BYTES = 64,
};

typedef qk_avx2_canonical_a8 job; /* x86_avx2's: the workspace, the blocks and the rounding are shared */

static int32_t chunk_k(int bits) { return bits == 4 ? 128 : 64; }

static void stage_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const job* j = arg;
    for (int32_t m = begin; m < end; m++) {
        int8_t* qx = j->qx + (size_t)m * j->padded;
        j->row_scale[m] = qk_avx2_quantize_row(j->a, j->w, m, j->stride, qx, /* dense: groups at their k */
                                               j->sums + (size_t)m * qk_groups_per_row(j->w));
        memset(qx + j->w->K, 0, j->padded - (size_t)j->w->K);
        if (j->w->bits == 4)
            for (size_t c = 0; c < j->padded; c += 128) { /* even k (the low bytes of 16-bit pairs), odd k */
                __m512i v0 = _mm512_loadu_si512((const void*)(qx + c)), v1 = _mm512_loadu_si512((const void*)(qx + c + 64));
                __m256i even0 = _mm512_cvtepi16_epi8(v0), even1 = _mm512_cvtepi16_epi8(v1);
                __m256i odd0 = _mm512_cvtepi16_epi8(_mm512_srli_epi16(v0, 8)), odd1 = _mm512_cvtepi16_epi8(_mm512_srli_epi16(v1, 8));
                _mm256_storeu_si256((__m256i*)(qx + c), even0);
                _mm256_storeu_si256((__m256i*)(qx + c + 32), even1);
                _mm256_storeu_si256((__m256i*)(qx + c + 64), odd0);
                _mm256_storeu_si256((__m256i*)(qx + c + 96), odd1);
            }
    }
}

/* The eight rows' sums of acc[0..8) (16 int32 lanes each) as one vector, in row order. */
QK_AVX512_INLINE __m256i sum_rows(const __m512i* acc) {
    __m512i half[4], quarter[2];
    for (int i = 0; i < 4; i++) /* rows 2i and 2i + 1: 256-bit halves added, side by side */
        half[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(acc[2 * i], acc[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_i32x4(acc[2 * i], acc[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; i++) /* 128-bit lane l: row 4i + l, four partial sums */
        quarter[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(half[2 * i], half[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_i32x4(half[2 * i], half[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* lane l: (row l, row l) | (row 4 + l, row 4 + l) as pairs of partial sums, then added */
    __m512i pairs = _mm512_add_epi32(_mm512_unpacklo_epi64(quarter[0], quarter[1]), _mm512_unpackhi_epi64(quarter[0], quarter[1]));
    __m512i sums = _mm512_add_epi32(pairs, _mm512_shuffle_epi32(pairs, _MM_PERM_CDAB));
    /* row l sits at dword 4l, row 4 + l at 4l + 2 */
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0), sums));
}

/* A chunk of P = 2 or 4 groups (16 / P lanes each): per group i, the eight rows' sums of
 * acc[0..8) in row order, out[i]. */
QK_AVX512_INLINE void group_sums(int P, const __m512i* acc, __m256i* out) {
    __m512i quad[2]; /* quad[h], 128-bit lane l: rows 4h .. 4h + 3, each the sum of its lanes 4l .. 4l + 3 */
    for (int h = 0; h < 2; h++) {
        const __m512i* a = acc + 4 * h;
        /* per 128-bit lane: (a0 + a2, b0 + b2, a1 + a3, b1 + b3) and the same of rows c, d */
        __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
        __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
        quad[h] = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    }
    __m512i pairs[2]; /* groups 2i and 2i + 1, rows 0 .. 7 each, in 256-bit halves */
    if (P == 4) { /* group l is 128-bit lane l of both quads */
        pairs[0] = _mm512_permutex2var_epi32(quad[0], _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23), quad[1]);
        pairs[1] = _mm512_permutex2var_epi32(quad[0], _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31), quad[1]);
    } else { /* group h is 128-bit lanes 2h and 2h + 1: (g0 rows 0-3, g1 rows 0-3, g0 rows 4-7, g1 rows 4-7), reordered */
        __m512i both = _mm512_add_epi32(_mm512_shuffle_i32x4(quad[0], quad[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                        _mm512_shuffle_i32x4(quad[0], quad[1], _MM_SHUFFLE(3, 1, 3, 1)));
        pairs[0] = _mm512_shuffle_i32x4(both, both, _MM_SHUFFLE(3, 1, 2, 0));
    }
    for (int i = 0; i < P; i++)
        out[i] = i % 2 ? _mm512_extracti64x4_epi64(pairs[i / 2], 1) : _mm512_castsi512_si256(pairs[i / 2]);
}

/* Group g's eight sums Σ qx·u of rows [0, rows) of X, sum[r], minus zero·xs: the exact acc, in
 * int32 (wrapping as the sums do); times the scale in float64 (plus offset·xs) into y[r], eight
 * columns: x86_avx2's qk_avx2_fold_epi32 and _offsets in one zmm. */
QK_AVX512_INLINE void fold_group(const job* j, int rows, int32_t g, const __m256i* sum, const int32_t* sums,
                                 const float* scales, const float* offsets, const int32_t* zeros, __m512d* y) {
    const int32_t groups = qk_groups_per_row(j->w);
    __m512d s = _mm512_cvtps_pd(_mm256_loadu_ps(scales + 8 * g));
    for (int r = 0; r < rows; r++) {
        int32_t xs = sums[(size_t)r * groups + g];
        __m256i zx = zeros ? _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i*)(zeros + 8 * g)), _mm256_set1_epi32(xs))
                           : _mm256_set1_epi32((int32_t)((uint32_t)j->zp_offset * (uint32_t)xs));
        y[r] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm256_sub_epi32(sum[r], zx)), s, y[r]);
        if (offsets) y[r] = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_loadu_ps(offsets + 8 * g)), _mm512_set1_pd((double)xs), y[r]);
    }
}

/* One chunk of rows[0..8) (at its 64 bytes) into acc[r][c] for rows [0, rows) of X (xc, staged). */
QK_AVX512_INLINE void chunk(int bits, int rows, const uint8_t* const* at, const int8_t* xc, size_t padded,
                            __m512i (*acc)[BLOCK_N]) {
    const __m512i flip = _mm512_set1_epi8((char)(bits == 4 ? 0x88 : 0x80)), low_nibbles = _mm512_set1_epi8(0x0F);
    __m512i x[TILE_ROWS][2];
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < (bits == 4 ? 2 : 1); h++) x[r][h] = _mm512_loadu_si512((const void*)(xc + r * padded + 64 * h));
#pragma GCC unroll 8
    for (int c = 0; c < BLOCK_N; c++) {
        __m512i v = _mm512_xor_si512(_mm512_loadu_si512((const void*)at[c]), flip); /* u */
        if (bits == 4) {
            __m512i even = _mm512_and_si512(v, low_nibbles), odd = _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles);
            for (int r = 0; r < rows; r++)
                acc[r][c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[r][c], even, x[r][0]), odd, x[r][1]);
        } else {
            for (int r = 0; r < rows; r++) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], v, x[r][0]);
        }
    }
}

/* Rows [0, rows) of X (staged, from qx; group sums from sums) times rows [n0, n0 + 8) of W into y[r]
 * (eight float64 columns as two vectors), P groups to a chunk (1: a group is whole chunks). Rows of
 * W past N read row N - 1; their results are not stored. */
QK_AVX512_INLINE void tile(const job* j, int bits, int rows, int P, const int8_t* qx, const int32_t* sums, int32_t n0,
                           const float* scales, const float* offsets, const int32_t* zeros, __m256d (*y)[2]) {
    const qk_weights* w = j->w;
    const int32_t N = w->N, K = w->K, groups = qk_groups_per_row(w), CK = chunk_k(bits);
    const size_t row_bytes = qk_row_bytes(K, bits), ahead = qk_avx2_prefetch_rows(n0, BLOCK_N, N, row_bytes);
    const int32_t chunks = (K + CK - 1) / CK, whole = K / CK, group_chunks = (int32_t)((j->stride + CK - 1) / CK);
    const uint8_t* row[BLOCK_N];
    for (int c = 0; c < BLOCK_N; c++) row[c] = (const uint8_t*)w->data + (size_t)(n0 + c < N ? n0 + c : N - 1) * row_bytes;
    uint8_t last[BLOCK_N][CHUNK_BYTES]; /* a last chunk cut short by K: zero bytes (u = 8 or 128) times zero activations */
    qk_avx512_short_chunks(last, row, BLOCK_N, row_bytes);
    __m512d out[TILE_ROWS]; /* y[r] in one register */
    for (int r = 0; r < rows; r++) out[r] = _mm512_insertf64x4(_mm512_castpd256_pd512(y[r][0]), y[r][1], 1);
    for (int32_t g = 0, ch = 0; ch < chunks;) { /* group g starts at chunk ch */
        __m512i acc[TILE_ROWS][BLOCK_N];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < BLOCK_N; c++) acc[r][c] = _mm512_setzero_si512();
        for (int32_t end = P > 1 ? ch + 1 : ch + group_chunks < chunks ? ch + group_chunks : chunks; ch < end; ch++) {
            const uint8_t* at[BLOCK_N];
            for (int c = 0; c < BLOCK_N; c++) {
                at[c] = row[c] + (size_t)ch * CHUNK_BYTES;
                _mm_prefetch((const char*)at[c] + ahead, _MM_HINT_T1);
                if (ch == whole) at[c] = last[c];
            }
            chunk(bits, rows, at, qx + (size_t)ch * CK, j->padded, acc);
        }
        __m256i sum[4][TILE_ROWS]; /* [group of the chunk][row of X] */
        for (int r = 0; r < rows; r++) {
            if (P == 1) {
                sum[0][r] = sum_rows(acc[r]);
            } else {
                __m256i by_group[4];
                group_sums(P, acc[r], by_group);
                for (int i = 0; i < P; i++) sum[i][r] = by_group[i];
            }
        }
        for (int i = 0; i < P && g < groups; i++, g++) fold_group(j, rows, g, sum[i], sums, scales, offsets, zeros, out);
    }
    for (int r = 0; r < rows; r++) y[r][0] = _mm512_castpd512_pd256(out[r]), y[r][1] = _mm512_extractf64x4_pd(out[r], 1);
}

#define TILE_FN(bits, P, rows)                                                                               \
    static void tile_##bits##_##P##_##rows(const job* j, const int8_t* qx, const int32_t* sums, int32_t n0,      \
                                           const float* scales, const float* offsets, const int32_t* zeros,      \
                                           __m256d (*y)[2]) {                                                    \
        tile(j, bits, rows, P, qx, sums, n0, scales, offsets, zeros, y);                                        \
    }
#define TILE_ROWS_FNS(bits, P) TILE_FN(bits, P, 1) TILE_FN(bits, P, 2)
#define TILE_TABLE(bits, P) {tile_##bits##_##P##_1, tile_##bits##_##P##_2}
TILE_ROWS_FNS(4, 1) TILE_ROWS_FNS(4, 2) TILE_ROWS_FNS(4, 4) TILE_ROWS_FNS(8, 1) TILE_ROWS_FNS(8, 2)
static qk_avx2_canonical_a8_tile* const variants[2][3][TILE_ROWS] = { /* [bits 4/8][P 1/2/4][rows - 1] */
    {TILE_TABLE(4, 1), TILE_TABLE(4, 2), TILE_TABLE(4, 4)},
    {TILE_TABLE(8, 1), TILE_TABLE(8, 2), {NULL, NULL}}, /* 8 bits: G >= 32 is at least half a chunk */
};

static job job_of(const qk_kernel_weights* w, const qk_matmul_args* a) {
    int bits = w->format.bits;
    int32_t G = w->format.group_size, CK = chunk_k(bits), P = G < CK ? CK / G : 1; /* groups to a chunk */
    job j = {.a = a, .w = &w->format, .asymmetric = w->asymmetric, .offsets = w->has_offsets,
             .zp_offset = bits == 4 ? 8 : 128, .tile_rows = TILE_ROWS, .tiles = variants[bits == 8][P / 2]};
    return j;
}

size_t qk_avx512_a8_c2x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    job j = job_of(w, a);
    return qk_avx2_canonical_a8_buffers(&j, threads, (size_t)chunk_k(w->format.bits), NULL);
}

qk_status qk_avx512_a8_w4w8_vnni_c2x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    job j = job_of(w, a);
    qk_avx2_canonical_a8_buffers(&j, exec->threads, (size_t)chunk_k(w->format.bits), exec->workspace);
    qk_avx2_canonical_a8_run(exec, &j, stage_task);
    return QK_OK;
}
