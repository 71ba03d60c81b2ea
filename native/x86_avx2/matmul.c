/* The x86_avx2 matmul kernels, A8 and A16, on the layout of avx2.h.
 *
 * The 4x8 kernels compute tiles of up to 4 rows of X by 8-column panels of W, walking a panel's
 * groups front to back. Work is split across threads by pairs of panels; rows are taken in chunks
 * whose activations stay in the L2 cache while every panel streams past them once per chunk. The
 * 6x16 A16 kernel, for many rows, is at the end of the file.
 *
 * A8 (docs/numerics.md section 3): each group's integer sum is exact in int32 and is scaled and
 * summed over groups in float64 (reading 14). The weights are the unsigned operand of vpmaddubsw
 * and the activations the signed one:
 *   4 bits  u = q + 8 in [0, 15] (q xor 8, one vpxor per block); u * qx pairs reach
 *           2 * 15 * 127 = 3810, so four blocks (eight vpmaddubsw) sum in int16 (30480 < 32767)
 *           before one vpmaddwd widens them; then sum qx * (q - zp) = sum qx * u - (zp + 8) * sum qx,
 *           with sum qx per group from the quantizer.
 *   8 bits  q in [-128, 127] is not unsigned, and q + 128 would saturate vpmaddubsw's pairs
 *           (2 * 255 * 127 > 32767). Instead |q| is the unsigned operand (|-128| = 128 is exact as
 *           a byte) and sign(qx, q) the signed one: |q| * sign(qx, q) = q * qx, pairs reach
 *           2 * 128 * 127 = 32512, and qx in [-127, 127] never hits the -128 that vpsignb cannot
 *           negate. Then sum qx * (q - zp) = sum qx * q - zp * sum qx.
 * A16: each k's eight weights become float32 q * 2^24 (or 2^28) in two operations, minus the zero
 * point when there is one. Products x * (q - zp) * 2^24 are exact inside the FMA; their float32 sums
 * run over 128 k as two chains of 64 terms, whose rounding error is at most 64 * 2^-24 = 2^-18 of
 * sum |x * (q - zp)|, a quarter of the float32 tolerance; then each sum is scaled (times
 * scale * 2^-24 or 2^-28, exact in float64) and folded into float64, so the error does not grow
 * with K. */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "avx2.h"

enum {
    TILE_ROWS = 4,
    CHUNK_BYTES = 256 * 1024, /* activations of a row chunk: about half an L2 cache */
    A16_RUN_BLOCKS = 16,      /* float32 sums over 128 k, then float64 (64 k: 5% slower) */
    A8_INT16_BLOCKS = 4,      /* 4-bit: int16 sums over four blocks, see above */
    PREFETCH_BYTES = 2048, /* ahead of the weight stream: the hardware prefetcher alone reaches about half the bandwidth */
};

#define INLINE static inline __attribute__((always_inline))

/* y (eight float64 columns as two vectors) += t (eight int32 or float32 lanes) * scale. */
INLINE void fold_epi32(__m256d y[2], __m256i t, __m256d scale_lo, __m256d scale_hi) {
    y[0] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(t)), scale_lo, y[0]);
    y[1] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(t, 1)), scale_hi, y[1]);
}

INLINE void fold_ps(__m256d y[2], __m256 t, __m256d scale_lo, __m256d scale_hi) {
    y[0] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(t)), scale_lo, y[0]);
    y[1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)), scale_hi, y[1]);
}

/* Four activation bytes, x[0..3], in every dword. */
INLINE __m256i broadcast4(const int8_t* x) {
    int32_t v;
    memcpy(&v, x, sizeof v);
    return _mm256_set1_epi32(v);
}

typedef struct {
    const qk_weights* w;
    qk_avx2_layout l;
    size_t row;            /* padded activation row length, in elements */
    const int8_t* qx;      /* A8: quantized rows */
    const int32_t* sums;   /* A8: [M][groups] sums of qx */
    const float* x;        /* A16: float32 rows */
    const unsigned char* large; /* A16: [M] whether a row's magnitude reaches A16_LARGE_X (Inf does) */
    int asymmetric;             /* whether the weights have zero points */
} problem;

/* ---- A8 tiles ---- */

/* acc holds sum qx * (q + acc_offset) (the 4-bit tile sums u = q + 8); minus (zp + acc_offset) * sum qx,
 * that is sum qx * (q - zp). */
INLINE void a8_group_end(const uint8_t* group, int32_t acc_offset, const int32_t* sums, int32_t groups, int rows,
                         const __m256i* acc, __m256d* const* y) {
    __m256i zero = _mm256_add_epi32(_mm256_load_si256((const __m256i*)(group + 32)), _mm256_set1_epi32(acc_offset));
    __m256 scale = _mm256_load_ps((const float*)group);
    __m256d scale_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(scale));
    __m256d scale_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(scale, 1));
    for (int r = 0; r < rows; r++) {
        __m256i exact = _mm256_sub_epi32(acc[r], _mm256_mullo_epi32(zero, _mm256_set1_epi32(sums[(size_t)r * groups])));
        fold_epi32(y[r], exact, scale_lo, scale_hi);
    }
}

/* y[r]: row r's two float64 vectors for this panel. */
INLINE void a8_tile_w4(const problem* p, const uint8_t* panel, const int8_t* qx, const int32_t* sums,
                       int rows, __m256d* const* y) {
    const __m256i low_nibbles = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), eights = _mm256_set1_epi8((char)0x88);
    const qk_avx2_layout* l = &p->l;
    for (int32_t g = 0; g < l->groups; g++) {
        const uint8_t* group = panel + (size_t)g * l->group_bytes;
        const int8_t* xg = qx + (size_t)g * l->blocks * QK_AVX2_BLOCK_K;
        __m256i acc[TILE_ROWS];
        for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_si256();
        for (int32_t b0 = 0; b0 < l->blocks; b0 += A8_INT16_BLOCKS) {
            int32_t b_end = b0 + A8_INT16_BLOCKS < l->blocks ? b0 + A8_INT16_BLOCKS : l->blocks;
            __m256i s16[TILE_ROWS];
            for (int r = 0; r < rows; r++) s16[r] = _mm256_setzero_si256();
            /* A constant trip count that gcc unrolls, with an exit only a short chunk takes (the
             * last of a group whose G is not a multiple of 32): 5-20% faster than a loop to b_end.
             * In this form only: exiting at b == b_end instead made it 20% slower than the loop. */
            int32_t count = b_end - b0;
#pragma GCC unroll 4
            for (int32_t j = 0; j < A8_INT16_BLOCKS; j++) {
                if (count != A8_INT16_BLOCKS && j == count) break;
                int32_t b = b0 + j;
                const uint8_t* block = group + QK_AVX2_HEADER + (size_t)b * 32;
                _mm_prefetch((const char*)block + PREFETCH_BYTES, _MM_HINT_T0);
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
        a8_group_end(group, 8, sums + g, l->groups, rows, acc, y);
    }
}

INLINE void a8_tile_w8(const problem* p, const uint8_t* panel, const int8_t* qx, const int32_t* sums,
                       int rows, __m256d* const* y) {
    const __m256i ones = _mm256_set1_epi16(1);
    const qk_avx2_layout* l = &p->l;
    for (int32_t g = 0; g < l->groups; g++) {
        const uint8_t* group = panel + (size_t)g * l->group_bytes;
        const int8_t* xg = qx + (size_t)g * l->blocks * QK_AVX2_BLOCK_K;
        __m256i acc[TILE_ROWS];
        for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_si256();
        for (int32_t b = 0; b < l->blocks; b++) {
            const uint8_t* block = group + QK_AVX2_HEADER + (size_t)b * 64;
            _mm_prefetch((const char*)block + PREFETCH_BYTES, _MM_HINT_T0);
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
        a8_group_end(group, 0, sums + g, l->groups, rows, acc, y);
    }
}

/* ---- A16 tile ---- */

/* Byte i of every dword moved to the top byte of that dword, the other bytes cleared: a signed
 * byte q becomes the int32 q * 2^24 (a nibble kept in the high half of its byte, q * 2^28), which
 * vcvtdq2ps converts exactly. vpshufb indexes within 128-bit lanes, so dword j of a lane reads byte
 * 4 * j + i; control bytes with bit 7 set write 0. Byte 3 is already on top and only needs the
 * others cleared: a vpand, which any of Zen 3's four vector pipes runs, where vpshufb competes for
 * two of them with the FMAs and conversions (the A16 inner loop alone: 18.6 -> 17.9 cycles). */
INLINE __m256i byte_to_top(__m256i v, int i) {
    if (i == 3) return _mm256_and_si256(v, _mm256_set1_epi32((int32_t)0xFF000000u));
    const __m256i control = _mm256_or_si256(_mm256_setr_epi32(0 << 24, 4 << 24, 8 << 24, 12 << 24, 0 << 24, 4 << 24,
                                                              8 << 24, 12 << 24),
                                            _mm256_set1_epi32((int32_t)(0x00808080u | (uint32_t)i << 24)));
    return _mm256_shuffle_epi8(v, control);
}

/* One block's weights as bytes of q (8 bits) or of q * 16 (4 bits): v0 holds k 0..3, v1 k 4..7. */
INLINE void block_bytes(const uint8_t* block, int bits, __m256i* v0, __m256i* v1) {
    const __m256i high_nibbles = _mm256_set1_epi8((char)0xF0);
    __m256i v = _mm256_load_si256((const __m256i*)block);
    if (bits == 4) {
        *v0 = _mm256_and_si256(_mm256_slli_epi16(v, 4), high_nibbles); /* low nibbles, moved up */
        *v1 = _mm256_and_si256(v, high_nibbles);
    } else {
        *v0 = v;
        *v1 = _mm256_load_si256((const __m256i*)(block + 32));
    }
}

/* The power of two byte_to_top scales weights by: 2^24, or 2^28 for nibbles. */
INLINE float weight_unit(int bits) { return bits == 4 ? 0x1p28f : 0x1p24f; }

/* Rows whose magnitude reaches this take the dequantize-first form: x * (q - zp) * 2^28 must not
 * overflow float32 where x * w would not (|q - zp| * 2^28 < 2^32, and a chain sums 64 terms). */
#define A16_LARGE_X 0x1p88f

/* A row sums x * (q - zp) * unit and applies scale / unit once per run (fewer operations per
 * weight), unless it is large: then it dequantizes each weight first, w = scale * (q - zp), as the
 * contract writes it. `mixed` says whether the tile has large rows: only then are both forms
 * computed. `asymmetric`: whether zero points are subtracted (an operation per weight).
 * The tile is rows x 1 panel, or 1 or 2 rows x 2 panels (`panels`): fewer than three rows need the
 * second panel's independent sums to keep the FMA units busy, and share its activation loads. (A
 * chain's next FMA waits 4 cycles and two FMAs can start per cycle, so eight chains fill both
 * units; one row's four suffice for its loop, which conversions, not FMAs, limit.)
 * Each float32 sum is two chains of dependent FMAs (even and odd k) whatever the tile, so a row's
 * result never depends on the other rows or panels of its tile. */
INLINE void a16_tile(const problem* p, int bits, int asymmetric, int mixed, int panels, const uint8_t* panel0,
                     const float* x, const unsigned char* large, int rows, __m256d* const* y) {
    enum { CHAINS = 2, SLOTS = TILE_ROWS }; /* slots: rows x panels <= 4 */
    const qk_avx2_layout* l = &p->l;
    const __m256 unit = _mm256_set1_ps(weight_unit(bits)), inverse_unit = _mm256_set1_ps(1.0f / weight_unit(bits));
    for (int32_t g = 0; g < l->groups; g++) {
        const uint8_t* group[2];
        __m256 scale[2], zero[2];
        for (int pi = 0; pi < panels; pi++) {
            group[pi] = panel0 + pi * l->panel_bytes + (size_t)g * l->group_bytes;
            scale[pi] = _mm256_load_ps((const float*)group[pi]);
            zero[pi] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_load_si256((const __m256i*)(group[pi] + 32))), unit);
        }
        const float* xg[TILE_ROWS];
        for (int r = 0; r < rows; r++) xg[r] = x + r * p->row + (size_t)g * l->blocks * QK_AVX2_BLOCK_K;
        for (int32_t b0 = 0; b0 < l->blocks; b0 += A16_RUN_BLOCKS) {
            int32_t b_end = b0 + A16_RUN_BLOCKS < l->blocks ? b0 + A16_RUN_BLOCKS : l->blocks;
            __m256 sum[SLOTS][CHAINS]; /* slot r * panels + pi */
            for (int slot = 0; slot < rows * panels; slot++) sum[slot][0] = sum[slot][1] = _mm256_setzero_ps();
            /* 4 bits: each block is loaded and split an iteration ahead, so that its shuffles do not
             * wait on the load, shift and mask (4% faster in cache, 2% from memory); 8 bits has no
             * split, and the registers this takes would spill there (4% slower). */
            const int ahead = bits == 4;
            __m256i next0[2], next1[2];
            if (ahead)
                for (int pi = 0; pi < panels; pi++)
                    block_bytes(group[pi] + QK_AVX2_HEADER + (size_t)b0 * 32, bits, &next0[pi], &next1[pi]);
            /* b is pointer-sized: as an int32_t, gcc gave every row and k its own index register (M = 4: 14% slower) */
            for (ptrdiff_t b = b0; b < b_end; b++) {
                __m256i v0[2], v1[2];
                /* ahead, the run's last block loads itself again: never past the panel's end */
                ptrdiff_t b_load = ahead && b + 1 < b_end ? b + 1 : b;
                for (int pi = 0; pi < panels; pi++) {
                    if (ahead) v0[pi] = next0[pi], v1[pi] = next1[pi];
                    const uint8_t* block = group[pi] + QK_AVX2_HEADER + (size_t)b_load * (bits == 4 ? 32 : 64); /* constant: no multiply */
                    _mm_prefetch((const char*)block + PREFETCH_BYTES, _MM_HINT_T0);
                    block_bytes(block, bits, ahead ? &next0[pi] : &v0[pi], ahead ? &next1[pi] : &v1[pi]);
                }
#pragma GCC unroll 8 /* constant shuffle controls and chain indices */
                for (int i = 0; i < QK_AVX2_BLOCK_K; i++) {
                    __m256 w[2], w_scaled[2];
                    for (int pi = 0; pi < panels; pi++) {
                        w[pi] = _mm256_cvtepi32_ps(byte_to_top(i < 4 ? v0[pi] : v1[pi], i % 4)); /* q * unit */
                        if (asymmetric) w[pi] = _mm256_sub_ps(w[pi], zero[pi]);                    /* exact */
                        if (mixed) w_scaled[pi] = _mm256_mul_ps(_mm256_mul_ps(w[pi], inverse_unit), scale[pi]);
                    }
                    for (int r = 0; r < rows; r++) {
                        __m256 xv = _mm256_broadcast_ss(xg[r] + b * QK_AVX2_BLOCK_K + i);
                        for (int pi = 0; pi < panels; pi++) {
                            __m256* acc = &sum[r * panels + pi][i % CHAINS];
                            *acc = _mm256_fmadd_ps(xv, mixed && large[r] ? w_scaled[pi] : w[pi], *acc);
                        }
                    }
                }
            }
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++) {
                    __m256 t = _mm256_add_ps(sum[r * panels + pi][0], sum[r * panels + pi][1]);
                    __m256d one = _mm256_set1_pd(1.0), unit_scale = _mm256_set1_pd(1.0 / weight_unit(bits));
                    if (mixed && large[r])
                        fold_ps(y[r] + 2 * pi, t, one, one);
                    else /* scale / unit: exact in float64 */
                        fold_ps(y[r] + 2 * pi, t,
                                _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(scale[pi])), unit_scale),
                                _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(scale[pi], 1)), unit_scale));
                }
        }
    }
}

/* ---- the driver ----
 * Work is split by pairs of panels; a tile computes up to TILE_ROWS rows of one pair into y: per
 * row, four float64 vectors (columns 0..7 of the first panel, then of the second). */

typedef void tile_fn(const problem* p, const uint8_t* panel, int panels, int32_t m, int rows, __m256d* const* y);

/* A constant row count per call lets the compiler unroll the row loops and keep sums in registers. */
static void a8_tile(const problem* p, const uint8_t* panel, int panels, int32_t m, int rows, __m256d* const* y) {
    const int8_t* qx = p->qx + (size_t)m * p->row;
    const int32_t* sums = p->sums + (size_t)m * p->l.groups;
    for (int pi = 0; pi < panels; pi++, panel += p->l.panel_bytes) {
        __m256d* yp[TILE_ROWS];
        for (int r = 0; r < rows; r++) yp[r] = y[r] + 2 * pi;
        switch (rows * 10 + p->w->bits / 4) {
        case 11: a8_tile_w4(p, panel, qx, sums, 1, yp); break;
        case 21: a8_tile_w4(p, panel, qx, sums, 2, yp); break;
        case 31: a8_tile_w4(p, panel, qx, sums, 3, yp); break;
        case 41: a8_tile_w4(p, panel, qx, sums, 4, yp); break;
        case 12: a8_tile_w8(p, panel, qx, sums, 1, yp); break;
        case 22: a8_tile_w8(p, panel, qx, sums, 2, yp); break;
        case 32: a8_tile_w8(p, panel, qx, sums, 3, yp); break;
        default: a8_tile_w8(p, panel, qx, sums, 4, yp); break;
        }
    }
}

/* Every a16_tile variant as a function with constant parameters, so that each is compiled with its
 * loops unrolled and its sums in registers: [bits 4/8][asymmetric][mixed][shape], shapes named
 * panels x rows: 2x1 and 2x2 (shape rows - 1), then 1x1 .. 1x4 (shape rows + 1). */
typedef void a16_fn(const problem* p, const uint8_t* panel, const float* x, const unsigned char* large,
                    __m256d* const* y);
#define A16_FN(bits, asym, mixed, panels, rows)                                                              \
    static void a16_##bits##_##asym##_##mixed##_##panels##x##rows(const problem* p, const uint8_t* panel,    \
                                                                  const float* x, const unsigned char* large, \
                                                                  __m256d* const* y) {                        \
        a16_tile(p, bits, asym, mixed, panels, panel, x, large, rows, y);                                     \
    }
#define A16_SHAPES(bits, asym, mixed)                                                                         \
    A16_FN(bits, asym, mixed, 2, 1) A16_FN(bits, asym, mixed, 2, 2) A16_FN(bits, asym, mixed, 1, 1)           \
    A16_FN(bits, asym, mixed, 1, 2) A16_FN(bits, asym, mixed, 1, 3) A16_FN(bits, asym, mixed, 1, 4)
#define A16_SHAPE_TABLE(bits, asym, mixed)                                                                    \
    {a16_##bits##_##asym##_##mixed##_2x1, a16_##bits##_##asym##_##mixed##_2x2, a16_##bits##_##asym##_##mixed##_1x1, \
     a16_##bits##_##asym##_##mixed##_1x2, a16_##bits##_##asym##_##mixed##_1x3, a16_##bits##_##asym##_##mixed##_1x4}
A16_SHAPES(4, 0, 0) A16_SHAPES(4, 0, 1) A16_SHAPES(4, 1, 0) A16_SHAPES(4, 1, 1)
A16_SHAPES(8, 0, 0) A16_SHAPES(8, 0, 1) A16_SHAPES(8, 1, 0) A16_SHAPES(8, 1, 1)
static a16_fn* const a16_variants[2][2][2][6] = {
    {{A16_SHAPE_TABLE(4, 0, 0), A16_SHAPE_TABLE(4, 0, 1)}, {A16_SHAPE_TABLE(4, 1, 0), A16_SHAPE_TABLE(4, 1, 1)}},
    {{A16_SHAPE_TABLE(8, 0, 0), A16_SHAPE_TABLE(8, 0, 1)}, {A16_SHAPE_TABLE(8, 1, 0), A16_SHAPE_TABLE(8, 1, 1)}},
};

static void a16_tile_rows(const problem* p, const uint8_t* panel, int panels, int32_t m, int rows,
                          __m256d* const* y) {
    const float* x = p->x + (size_t)m * p->row;
    const unsigned char* large = p->large + m;
    int mixed = 0;
    for (int r = 0; r < rows; r++) mixed |= large[r];
    a16_fn* const* shapes = a16_variants[p->w->bits == 8][p->asymmetric][mixed];
    if (rows <= 2 && panels == 2) { /* few rows: both panels at once */
        shapes[rows - 1](p, panel, x, large, y);
        return;
    }
    for (int pi = 0; pi < panels; pi++, panel += p->l.panel_bytes) { /* else a panel at a time */
        __m256d* yp[TILE_ROWS];
        for (int r = 0; r < rows; r++) yp[r] = y[r] + 2 * pi;
        shapes[rows + 1](p, panel, x, large, yp);
    }
}

/* Row m's outputs for one panel from y (two float64 vectors): A8 times sx (NaN for a non-finite
 * row), plus bias, rounded once to the output dtype. */
static void finish_row(const problem* p, const qk_matmul_args* a, const float* sx, const unsigned char* finite,
                       int32_t panel, int32_t m, const __m256d* y) {
    int32_t N = p->w->N, n = panel * QK_AVX2_PANEL, count = N - n < QK_AVX2_PANEL ? N - n : QK_AVX2_PANEL;
    double out[QK_AVX2_PANEL];
    _mm256_storeu_pd(out, y[0]);
    _mm256_storeu_pd(out + 4, y[1]);
    for (int32_t j = 0; j < count; j++) {
        if (sx) out[j] = finite[m] ? (double)sx[m] * out[j] : NAN;
        if (a->bias) out[j] += a->bias[n + j];
    }
    qk_avx2_store(a, N, m, n, count, out);
}

/* Every tile of rows [m0, m1), the panel pairs split over the threads of the enclosing parallel
 * region. sx and finite: A8's row scales and flags; NULL for A16. */
static void run_rows(const problem* p, const qk_packed_weights* pw, const qk_matmul_args* a, tile_fn* tile,
                     const float* sx, const unsigned char* finite, int32_t m0, int32_t m1) {
    int32_t pairs = (p->l.panels + 1) / 2;
#pragma omp for schedule(static)
    for (int32_t pair = 0; pair < pairs; pair++) {
        const uint8_t* weights = (const uint8_t*)pw->data + (size_t)2 * pair * p->l.panel_bytes;
        int panels = p->l.panels - 2 * pair < 2 ? 1 : 2;
        for (int32_t m = m0; m < m1; m += TILE_ROWS) {
            int rows = m1 - m < TILE_ROWS ? m1 - m : TILE_ROWS;
            __m256d y[TILE_ROWS][4], *yr[TILE_ROWS];
            for (int r = 0; r < rows; r++) {
                for (int v = 0; v < 4; v++) y[r][v] = _mm256_setzero_pd();
                yr[r] = y[r];
            }
            tile(p, weights, panels, m, rows, yr);
            for (int pi = 0; pi < panels; pi++)
                for (int r = 0; r < rows; r++) finish_row(p, a, sx, finite, 2 * pair + pi, m + r, y[r] + 2 * pi);
        }
    }
}

static problem problem_of(const qk_packed_weights* pw) {
    problem p = {.w = &pw->canonical, .l = qk_avx2_layout_of(&pw->canonical), .asymmetric = pw->has_zero_points};
    p.row = qk_avx2_padded_row(&p.l);
    return p;
}

/* Rows per chunk: as many whole tiles as keep a chunk's activations within CHUNK_BYTES. */
static int32_t chunk_rows(size_t row_bytes) {
    size_t tiles = CHUNK_BYTES / (row_bytes * TILE_ROWS);
    return (int32_t)(tiles > 0 ? tiles * TILE_ROWS : TILE_ROWS);
}

qk_status qk_avx2_matmul_a8(const qk_packed_weights* pw, const qk_matmul_args* a) {
    problem p = problem_of(pw);
    int32_t M = a->M;
    int8_t* qx = qk_aligned_alloc((size_t)M * p.row);
    int32_t* sums = malloc((size_t)M * p.l.groups * sizeof *sums);
    float* sx = malloc((size_t)M * sizeof *sx);
    unsigned char* finite = malloc((size_t)M);
    qk_status status = QK_OK;
    if (!qx || !sums || !sx || !finite) {
        status = qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate the A8 kernel's activation buffers");
        goto done;
    }
    p.qx = qx;
    p.sums = sums;
    int32_t chunk = chunk_rows(p.row);
#pragma omp parallel num_threads(qk_threads_for(M, p.w->N, p.w->K))
    {
#pragma omp for schedule(static)
        for (int32_t m = 0; m < M; m++)
            finite[m] = (unsigned char)qk_avx2_quantize_row(a, p.w, m, qx + (size_t)m * p.row,
                                                            sums + (size_t)m * p.l.groups, &sx[m]);
        for (int32_t m0 = 0; m0 < M; m0 += chunk)
            run_rows(&p, pw, a, a8_tile, sx, finite, m0, M - m0 < chunk ? M : m0 + chunk);
    }
done:
    qk_aligned_free(qx);
    free(sums);
    free(sx);
    free(finite);
    return status;
}

qk_status qk_avx2_matmul_a16(const qk_packed_weights* pw, const qk_matmul_args* a) {
    problem p = problem_of(pw);
    int32_t M = a->M;
    float* x = qk_aligned_alloc((size_t)M * p.row * sizeof *x);
    unsigned char* large = malloc((size_t)M);
    if (!x || !large) {
        qk_aligned_free(x);
        free(large);
        return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate the A16 kernel's activation buffers");
    }
    p.x = x;
    p.large = large;
    int32_t chunk = chunk_rows(p.row * sizeof *x);
#pragma omp parallel num_threads(qk_threads_for(M, p.w->N, p.w->K))
    {
#pragma omp for schedule(static)
        for (int32_t m = 0; m < M; m++)
            large[m] = !(qk_avx2_load_row(a, p.w, m, x + (size_t)m * p.row) < A16_LARGE_X);
        for (int32_t m0 = 0; m0 < M; m0 += chunk)
            run_rows(&p, pw, a, a16_tile_rows, NULL, NULL, m0, M - m0 < chunk ? M : m0 + chunk);
    }
    qk_aligned_free(x);
    free(large);
    return QK_OK;
}

/* ---- A16 for many rows: dequantize once, then a float32 GEMM ----
 *
 * With many rows, dequantizing every weight for every 4-row tile costs more than the FMAs. This
 * kernel dequantizes a 16-column block (two panels) of W once per chunk of k into a float32 buffer
 * that stays in L1, then runs a 6 x 16 register tile (12 accumulators) over every row. Float32 sums
 * run over GEMM_RUN k and are folded into float64 per output, as in the other kernels. */
enum { GEMM_ROWS = 6, GEMM_COLS = 2 * QK_AVX2_PANEL, GEMM_CHUNK_BLOCKS = 32, GEMM_RUN = 64 };

/* W's block columns [2 * block, 2 * block + 2) at blocks [t0, t1) of the padded k axis, dequantized:
 * out[k][16], zero for a panel beyond N. */
static void dequantize_chunk(const problem* p, const qk_packed_weights* pw, int32_t block, int32_t t0,
                             int32_t t1, float* out) {
    const qk_avx2_layout* l = &p->l;
    int bits = p->w->bits;
    const __m256 unit = _mm256_set1_ps(weight_unit(bits)), inverse_unit = _mm256_set1_ps(1.0f / weight_unit(bits));
    for (int32_t half = 0; half < 2; half++) {
        int32_t panel = 2 * block + half;
        for (int32_t t = t0; t < t1; t++) {
            float* w = out + (size_t)(t - t0) * QK_AVX2_BLOCK_K * GEMM_COLS + half * QK_AVX2_PANEL;
            if (panel >= l->panels) {
                for (int i = 0; i < QK_AVX2_BLOCK_K; i++) _mm256_store_ps(w + i * GEMM_COLS, _mm256_setzero_ps());
                continue;
            }
            const uint8_t* group = (const uint8_t*)pw->data + (size_t)panel * l->panel_bytes +
                                   (size_t)(t / l->blocks) * l->group_bytes;
            const uint8_t* data = group + QK_AVX2_HEADER + (size_t)(t % l->blocks) * l->block_bytes;
            __m256 scale = _mm256_load_ps((const float*)group);
            __m256 zero = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_load_si256((const __m256i*)(group + 32))), unit);
            __m256i v0, v1;
            block_bytes(data, bits, &v0, &v1);
#pragma GCC unroll 8
            for (int i = 0; i < QK_AVX2_BLOCK_K; i++) {
                __m256 q = _mm256_sub_ps(_mm256_cvtepi32_ps(byte_to_top(i < 4 ? v0 : v1, i % 4)), zero);
                /* (q - zp) * unit / unit exactly, then times scale: w rounded once, and never overflowing
                 * where w does not */
                _mm256_store_ps(w + i * GEMM_COLS, _mm256_mul_ps(_mm256_mul_ps(q, inverse_unit), scale));
            }
        }
    }
}

/* Rows [0, rows) of x (stride row) times the dequantized chunk w[k][16], k in [0, kc), into
 * y0 (columns 0..7) and y1 (columns 8..15). */
INLINE void gemm_tile(const float* x, size_t row, const float* w, int32_t kc, int rows, __m256d (*y0)[2],
                      __m256d (*y1)[2]) {
    const __m256d one = _mm256_set1_pd(1.0);
    for (int32_t k0 = 0; k0 < kc; k0 += GEMM_RUN) {
        int32_t k1 = kc - k0 < GEMM_RUN ? kc : k0 + GEMM_RUN;
        __m256 acc[GEMM_ROWS][2];
        for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int32_t k = k0; k < k1; k++) {
            __m256 w0 = _mm256_load_ps(w + (size_t)k * GEMM_COLS), w1 = _mm256_load_ps(w + (size_t)k * GEMM_COLS + 8);
            for (int r = 0; r < rows; r++) {
                __m256 xv = _mm256_broadcast_ss(x + r * row + k);
                acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
            }
        }
        for (int r = 0; r < rows; r++) {
            fold_ps(y0[r], acc[r][0], one, one);
            fold_ps(y1[r], acc[r][1], one, one);
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

qk_status qk_avx2_matmul_a16_gemm(const qk_packed_weights* pw, const qk_matmul_args* a) {
    problem p = problem_of(pw);
    int32_t M = a->M, threads = qk_threads_for(M, p.w->N, p.w->K);
    int32_t column_blocks = (p.l.panels + 1) / 2, total_blocks = p.l.groups * p.l.blocks;
    size_t w_floats = (size_t)GEMM_CHUNK_BLOCKS * QK_AVX2_BLOCK_K * GEMM_COLS, y_vectors = (size_t)4 * M;
    /* Every buffer is allocated before anything is written: per thread, a chunk of dequantized
     * weights and the float64 sums of its 16-column block. */
    float* x = qk_aligned_alloc((size_t)M * p.row * sizeof *x);
    float* w = qk_aligned_alloc((size_t)threads * w_floats * sizeof *w);
    __m256d* y = qk_aligned_alloc((size_t)threads * y_vectors * sizeof *y);
    if (!x || !w || !y) {
        qk_aligned_free(x);
        qk_aligned_free(w);
        qk_aligned_free(y);
        return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate the A16 GEMM kernel's buffers");
    }
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int32_t m = 0; m < M; m++) qk_avx2_load_row(a, p.w, m, x + (size_t)m * p.row);
        float* my_w = w + (size_t)qk_thread_index() * w_floats;
        __m256d(*y0)[2] = (__m256d(*)[2])(y + (size_t)qk_thread_index() * y_vectors), (*y1)[2] = y0 + M;
#pragma omp for schedule(static)
        for (int32_t block = 0; block < column_blocks; block++) {
            for (int32_t m = 0; m < M; m++) y0[m][0] = y0[m][1] = y1[m][0] = y1[m][1] = _mm256_setzero_pd();
            for (int32_t t0 = 0; t0 < total_blocks; t0 += GEMM_CHUNK_BLOCKS) {
                int32_t t1 = total_blocks - t0 < GEMM_CHUNK_BLOCKS ? total_blocks : t0 + GEMM_CHUNK_BLOCKS;
                dequantize_chunk(&p, pw, block, t0, t1, my_w);
                for (int32_t m = 0; m < M; m += GEMM_ROWS)
                    gemm_rows(x + (size_t)m * p.row + (size_t)t0 * QK_AVX2_BLOCK_K, p.row, my_w,
                              (t1 - t0) * QK_AVX2_BLOCK_K, M - m < GEMM_ROWS ? M - m : GEMM_ROWS, y0 + m, y1 + m);
            }
            for (int32_t m = 0; m < M; m++) {
                finish_row(&p, a, NULL, NULL, 2 * block, m, y0[m]);
                if (2 * block + 1 < p.l.panels) finish_row(&p, a, NULL, NULL, 2 * block + 1, m, y1[m]);
            }
        }
    }
    qk_aligned_free(x);
    qk_aligned_free(w);
    qk_aligned_free(y);
    return QK_OK;
}
