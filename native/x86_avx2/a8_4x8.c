/* x86_avx2_a8_w4w8_4x8: A8 (docs/numerics.md section 3) on the packed layout, for every M.
 *
 * Each group's integer sum is exact in int32 (G <= 66311, reading 5) and is scaled and summed over
 * groups in float64 (reading 14). The weights are the unsigned operand of vpmaddubsw and the
 * activations the signed one:
 *   4 bits  u = q + 8 in [0, 15] (q xor 8, one vpxor per block); u * qx pairs reach
 *           2 * 15 * 127 = 3810, so four blocks (eight vpmaddubsw) sum in int16 (30480 < 32767)
 *           before one vpmaddwd widens them; then sum qx * (q - zp) = sum qx * u - (zp + 8) * sum qx,
 *           with sum qx per group from the quantizer.
 *   8 bits  q in [-128, 127] is not unsigned, and q + 128 would saturate vpmaddubsw's pairs
 *           (2 * 255 * 127 > 32767). Instead |q| is the unsigned operand (|-128| = 128 is exact as
 *           a byte) and sign(qx, q) the signed one: |q| * sign(qx, q) = q * qx, pairs reach
 *           2 * 128 * 127 = 32512, and qx in [-127, 127] never hits the -128 that vpsignb cannot
 *           negate. Then sum qx * (q - zp) = sum qx * q - zp * sum qx. */
#include <string.h>

#include "avx2.h"

enum {
    TILE_ROWS = 4,
    INT16_BLOCKS = 4, /* 4 bits: int16 sums over four blocks, see above */
};

/* Four activation bytes, x[0..3], in every dword. */
QK_AVX2_INLINE __m256i broadcast4(const int8_t* x) {
    int32_t v;
    memcpy(&v, x, sizeof v);
    return _mm256_set1_epi32(v);
}

/* acc holds sum qx * (q + acc_offset) (the 4-bit tile sums u = q + 8); minus (zp + acc_offset) * sum qx,
 * that is sum qx * (q - zp), times the scale; plus offset * sum qx when there are offsets. */
QK_AVX2_INLINE void group_end(const qk_avx2_problem* p, const uint8_t* group, int32_t acc_offset, const int32_t* sums,
                              int rows, const __m256i* acc, __m256d* const* y) {
    __m256i zero = _mm256_add_epi32(qk_avx2_zero_points(group, &p->l), _mm256_set1_epi32(acc_offset));
    __m256 scale = _mm256_load_ps((const float*)group);
    __m256d scale_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(scale));
    __m256d scale_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(scale, 1));
    for (int r = 0; r < rows; r++) {
        int32_t sum = sums[(size_t)r * p->l.groups];
        __m256i exact = _mm256_sub_epi32(acc[r], _mm256_mullo_epi32(zero, _mm256_set1_epi32(sum)));
        qk_avx2_fold_epi32(y[r], exact, scale_lo, scale_hi);
        if (p->offsets) qk_avx2_fold_offsets(y[r], (const float*)(group + p->l.offsets_at), sum);
    }
}

/* y[r]: row r's two float64 vectors for this panel. */
QK_AVX2_INLINE void tile_w4(const qk_avx2_problem* p, const uint8_t* panel, const int8_t* qx, const int32_t* sums,
                            int rows, __m256d* const* y) {
    const __m256i low_nibbles = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), eights = _mm256_set1_epi8((char)0x88);
    const qk_avx2_layout* l = &p->l;
    for (int32_t g = 0; g < l->groups; g++) {
        const uint8_t* group = panel + (size_t)g * l->group_bytes;
        const int8_t* xg = qx + (size_t)g * l->blocks * QK_AVX2_BLOCK_K;
        __m256i acc[TILE_ROWS];
        for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_si256();
        for (int32_t b0 = 0; b0 < l->blocks; b0 += INT16_BLOCKS) {
            int32_t b_end = b0 + INT16_BLOCKS < l->blocks ? b0 + INT16_BLOCKS : l->blocks;
            __m256i s16[TILE_ROWS];
            for (int r = 0; r < rows; r++) s16[r] = _mm256_setzero_si256();
            /* A constant trip count that gcc unrolls, with an exit only a short chunk takes (the
             * last of a group whose G is not a multiple of 32): 5-20% faster than a loop to b_end.
             * In this form only: exiting at b == b_end instead made it 20% slower than the loop. */
            int32_t count = b_end - b0;
#pragma GCC unroll 4
            for (int32_t j = 0; j < INT16_BLOCKS; j++) {
                if (count != INT16_BLOCKS && j == count) break;
                int32_t b = b0 + j;
                const uint8_t* block = group + l->header + (size_t)b * 32;
                _mm_prefetch((const char*)block + QK_AVX2_PREFETCH_BYTES, _MM_HINT_T0);
                __m256i v = _mm256_xor_si256(_mm256_load_si256((const __m256i*)block), eights); /* q + 8 */
                __m256i lo = _mm256_and_si256(v, low_nibbles);                         /* k 0..3 */
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);  /* k 4..7 */
                for (int r = 0; r < rows; r++) {
                    const int8_t* x = xg + r * p->row + (size_t)b * QK_AVX2_BLOCK_K;
                    __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, broadcast4(x)),
                                                 _mm256_maddubs_epi16(hi, broadcast4(x + 4)));
                    s16[r] = _mm256_add_epi16(s16[r], s);
                }
            }
            for (int r = 0; r < rows; r++) acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s16[r], ones));
        }
        group_end(p, group, 8, sums + g, rows, acc, y);
    }
}

QK_AVX2_INLINE void tile_w8(const qk_avx2_problem* p, const uint8_t* panel, const int8_t* qx, const int32_t* sums,
                            int rows, __m256d* const* y) {
    const __m256i ones = _mm256_set1_epi16(1);
    const qk_avx2_layout* l = &p->l;
    for (int32_t g = 0; g < l->groups; g++) {
        const uint8_t* group = panel + (size_t)g * l->group_bytes;
        const int8_t* xg = qx + (size_t)g * l->blocks * QK_AVX2_BLOCK_K;
        __m256i acc[TILE_ROWS];
        for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_si256();
        for (int32_t b = 0; b < l->blocks; b++) {
            const uint8_t* block = group + l->header + (size_t)b * 64;
            _mm_prefetch((const char*)block + QK_AVX2_PREFETCH_BYTES, _MM_HINT_T0);
            __m256i v0 = _mm256_load_si256((const __m256i*)block);        /* k 0..3 */
            __m256i v1 = _mm256_load_si256((const __m256i*)(block + 32)); /* k 4..7 */
            __m256i a0 = _mm256_abs_epi8(v0), a1 = _mm256_abs_epi8(v1);
            for (int r = 0; r < rows; r++) {
                const int8_t* x = xg + r * p->row + (size_t)b * QK_AVX2_BLOCK_K;
                __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(broadcast4(x), v0));
                __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(broadcast4(x + 4), v1));
                acc[r] = _mm256_add_epi32(acc[r], _mm256_add_epi32(_mm256_madd_epi16(p0, ones),
                                                                   _mm256_madd_epi16(p1, ones)));
            }
        }
        group_end(p, group, 0, sums + g, rows, acc, y);
    }
}

/* A constant row count per call lets the compiler unroll the row loops and keep sums in registers. */
static void tile(const qk_avx2_problem* p, const uint8_t* panel, int panels, int32_t m, int rows, __m256d* const* y) {
    const int8_t* qx = p->qx + (size_t)m * p->row;
    const int32_t* sums = p->sums + (size_t)m * p->l.groups;
    for (int pi = 0; pi < panels; pi++, panel += p->l.panel_bytes) {
        __m256d* yp[TILE_ROWS];
        for (int r = 0; r < rows; r++) yp[r] = y[r] + 2 * pi;
        switch (rows * 10 + p->w->bits / 4) {
        case 11: tile_w4(p, panel, qx, sums, 1, yp); break;
        case 21: tile_w4(p, panel, qx, sums, 2, yp); break;
        case 31: tile_w4(p, panel, qx, sums, 3, yp); break;
        case 41: tile_w4(p, panel, qx, sums, 4, yp); break;
        case 12: tile_w8(p, panel, qx, sums, 1, yp); break;
        case 22: tile_w8(p, panel, qx, sums, 2, yp); break;
        case 32: tile_w8(p, panel, qx, sums, 3, yp); break;
        default: tile_w8(p, panel, qx, sums, 4, yp); break;
        }
    }
}

/* The workspace: quantized rows of X, their group sums, then the row scales. */
static size_t buffers(qk_avx2_problem* p, void* base) {
    size_t used = 0, M = (size_t)p->a->M;
    p->qx = qk_avx2_take(base, &used, M * p->row);
    p->sums = qk_avx2_take(base, &used, M * (size_t)p->l.groups * sizeof *p->sums);
    p->row_scale = qk_avx2_take(base, &used, M * sizeof *p->row_scale);
    return used;
}

size_t qk_avx2_a8_4x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    qk_avx2_problem p = qk_avx2_problem_of(w, a);
    return buffers(&p, NULL);
}

qk_status qk_avx2_a8_4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx2_problem p = qk_avx2_problem_of(w, a);
    buffers(&p, exec->workspace);
    qk_avx2_prepare_rows(exec, &p, (size_t)p.l.blocks * QK_AVX2_BLOCK_K, p.row);
    qk_avx2_run_tiles(exec, &p, tile);
    return QK_OK;
}
