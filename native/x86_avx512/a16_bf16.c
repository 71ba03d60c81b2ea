/* x86_avx512_a16_w4_bf16_2x32: A16 for float16 and bfloat16 input and 4-bit weights without offsets,
 * on vdpbf16ps (AVX512-BF16), the vnni16 pack; x86_avx512_a16_w4_bf16x3_2x32, the same function on
 * float32 input in three parts (at M = 1: from M = 2 the FMA kernel is as fast). Built with
 * -mavx512bf16 (as is its canonical variant, a16_bf16_c2x4.c): the kernel is listed with that
 * feature as its own requirement, so the rest of the backend runs without it.
 *
 * Why: at M = 1 the FMA kernel (a16.c) spends three zmm operations per 16 weights (shift, vpermps,
 * FMA) and runs slower than memory delivers 4-bit weights (AMD EPYC Zen 4, 2 threads, 4096 x 4096
 * g128, weights in cache: 0.32-0.35 ms against a floor of 0.27 ms with them in memory). Here 32
 * weights cost a shift, a vpermw and two vdpbf16ps for float16 x (one for bfloat16): each 32-bit
 * lane holds two k of one column as a pair of bfloat16 weights, and each vdpbf16ps adds both
 * products of a pair. Measured there (README, x86_avx512): float16 1.54x the FMA kernel at M = 1,
 * 1.25x from M = 4 to 256; bfloat16 2.0-2.2x at M = 1 to 64.
 *
 * Exactness (docs/numerics.md reading 24):
 *   weights  q - zp (symmetric: u - 8, an integer in [-8, 7]; else u - zero in [-15, 15]) is exact in
 *            bfloat16. vpermw looks it up in a table of 32 bfloat16 values by the low 5 bits of each
 *            16-bit lane: symmetric, index = the nibble plus 16 times the next nibble's low bit (the
 *            table repeats every 16); else index = nibble - zero + 16, in [1, 31].
 *   x        a float16 value has 11 significant bits: x = hi + lo with hi its float32 bits truncated
 *            to bfloat16 (8 significant bits) and lo = x - hi (at most 3 significant bits, so exact in
 *            bfloat16 too). Infinities have lo = 0 (x - hi would be NaN); NaN stays NaN. A bfloat16
 *            value is its own hi (lo = 0; the row loader's scaling by a power of two keeps that
 *            but where it makes x a float32 subnormal, which vdpbf16ps reads as zero either way),
 *            so bfloat16 rows take one part: one vdpbf16ps per pair of weights. A float32 value
 *            takes three (hi, mid, lo: qk_avx512_bf16_part), which can be subnormal where x is not
 *            (lo below about 2^-103): reading 21's flushing, and reading 16's known deviation.
 *   products hi * w and lo * w are exact in float32 (8 + 4 significant bits). Float16: none is
 *            subnormal, nor any nonzero sum of them (every nonzero part is a multiple of 2^-24, or
 *            of 2^-64 in a row that qk_avx2_load_row scaled by 2^-40 for an infinity: far above
 *            2^-126), so vdpbf16ps's flushing of denormals never applies. Bfloat16: x below 2^-126
 *            reads as zero and a sum that cancels below 2^-126 is flushed, at most 16 * 2^-126 of
 *            t lost per k; the loader scales rows whose elements are all below 2^-32 up to
 *            [2^-32, 2^-31), so a row with any loss holds an |x| >= 2^-32 whose product bounds it
 *            (reading 24). Sums round to nearest even, in float32.
 * Sums run over chunks of at most 128 k in four chains (k pairs by shift), each at most 32
 * vdpbf16ps (16 for bfloat16) of at most two roundings: an error of at most 2^-18 of sum |x * w| (plus 2^-7 for lo's
 * share), a 256th of the float16 tolerance; float32, over chunks of 64 k, 24 vdpbf16ps (2^-18.4, a
 * quarter of its tolerance with the run's share below). Each chunk's sum times its group's scale is
 * added to a float32 run of at most 16 chunks (avx512.h, qk_avx512_chunk), and each run to the float64 sums:
 * 16 more roundings, at most 2^-20 of the run's sum of |scale * t|. (A float64 fold per chunk, as
 * a16.c had too, cost group size 32 1.2-1.4x the time of 128.) A row's sums never depend on the
 * other rows of its tile. */
#include "avx512.h"

enum {
    TILE_ROWS = 2,
    CHAINS = 4, /* one per shift of the packed dword: vdpbf16ps's latency (6 cycles) hidden at M = 1 */
};

/* vpermt2w's index from two vectors of parts a and b (16 float32 lanes, the part in each upper half,
 * word 2 t + 1) to split_row's order: per 8 k, the dwords (a x0, a x2), (a x4, a x6), (a x1,
 * a x3), (a x5, a x7), then the same of b (+ 32). Dword j pairs the k whose nibbles a shift by 4 j
 * brings to the bottom of a packed dword's two 16-bit halves (layout.h: k 8 r + t sits at bit
 * 8 (t % 4) + 4 (t / 4)). */
static const uint16_t split_order[32] = {1,  5,  9,  13, 3,  7,  11, 15, 33, 37, 41, 45, 35, 39, 43, 47,
                                         17, 21, 25, 29, 19, 23, 27, 31, 49, 53, 57, 61, 51, 55, 59, 63};

/* Each x of the row (n floats, a multiple of 8) as its bfloat16 parts (qk_avx512_bf16_part), in
 * place: per 8 k split_order's dwords of the first two parts (hi, lo for float16; bfloat16's lo is
 * 0, left unread), then with three parts (float32: hi, mid, lo) those of the third: 8 or 12 dwords,
 * so that three parts grow the row to 1.5 n (x_row). From the last 8 k back: no 8 k is overwritten
 * before it is read. */
static void split_row(float* row, size_t n, int parts) {
    const __m512i words = _mm512_loadu_si512((const void*)split_order); /* its first 8 k */
    uint32_t* out = (uint32_t*)row;
    for (size_t i = n; i > 0; i -= 8) {
        __m512 rest = _mm512_maskz_loadu_ps(0x00FF, row + i - 8);
        __m512i hi = qk_avx512_bf16_part(&rest), next = qk_avx512_bf16_part(&rest);
        uint32_t* at = out + (i - 8) / 8 * (parts == 3 ? 12 : 8);
        _mm256_storeu_si256((__m256i*)at, _mm512_castsi512_si256(_mm512_permutex2var_epi16(hi, words, next)));
        if (parts == 3)
            _mm_storeu_si128((__m128i*)(at + 8),
                             _mm512_castsi512_si128(_mm512_permutexvar_epi16(words, qk_avx512_bf16_part(&rest))));
    }
}

static void split_row_2(float* row, size_t n) { split_row(row, n, 2); }
static void split_row_3(float* row, size_t n) { split_row(row, n, 3); }

/* The 32-entry bfloat16 table vpermw reads: symmetric, entry i = (i % 16) - 8; else i - 16. */
static __m512i weight_table(int asymmetric) {
    uint16_t t[32];
    for (int i = 0; i < 32; i++) t[i] = qk_avx512_bf16_of_int(asymmetric ? i - 16 : i % 16 - 8);
    return _mm512_loadu_si512((const void*)t);
}

QK_AVX512_INLINE __m512 dot(__m512 acc, __m512i w, __m512i x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
}

/* Rows x panels of the tile, for one call with constant arguments; parts: of each x (1 for bfloat16
 * input, 2 for float16, 3 for float32). */
QK_AVX512_INLINE void bf16_tile(const qk_avx512_problem* p, int parts, int asymmetric, int panels, int rows,
                                int32_t panel, int32_t m, double* y) {
    const qk_vnni16_layout* l = &p->l;
    const uint32_t* x = (const uint32_t*)(p->x + (size_t)m * p->x_row); /* pairs of bfloat16 parts */
    const size_t words = parts == 3 ? 12 : 8; /* dwords per 8 k, as split_row lays them out */
    const __m512i table = weight_table(asymmetric), nibbles = _mm512_set1_epi32(0x000F000F);
    const int32_t chunk_k = parts == 3 ? 64 : QK_AVX512_CHUNK_K; /* a chain's roundings: reading 24 */
    qk_avx512_chunk c = qk_avx512_chunk_at(l, chunk_k, 0, 0);
    while (c.g < l->groups) {
        __m512 run[TILE_ROWS][2];
        for (int r = 0; r < rows; r++)
            for (int pi = 0; pi < panels; pi++) run[r][pi] = _mm512_setzero_ps();
        for (int term = 0; term < QK_AVX512_RUN_CHUNKS && c.g < l->groups; term++, c = qk_avx512_next_chunk(l, chunk_k, c)) {
            const uint8_t* group[2];
            __m512 scale[2];
            __m512i index_bias[2]; /* asymmetric: 16 - zero in both 16-bit halves of each column's lane */
            for (int pi = 0; pi < panels; pi++) {
                group[pi] = qk_vnni16_group(p->packed, l, panel + pi, c.g);
                scale[pi] = _mm512_load_ps((const float*)group[pi]);
                __m512i bias = _mm512_sub_epi32(_mm512_set1_epi32(16), qk_avx512_zero(group[pi], l));
                index_bias[pi] = _mm512_or_si512(bias, _mm512_slli_epi32(bias, 16));
            }
            const uint32_t* xg = x + (size_t)c.g * (parts == 3 ? p->group_stride / 8 * 12 : p->group_stride);
            __m512 sum[TILE_ROWS][2][CHAINS];
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++)
                    for (int j = 0; j < CHAINS; j++) sum[r][pi][j] = _mm512_setzero_ps();
            for (ptrdiff_t i = c.i0; i < c.i1; i++) {
                __m512i v[2];
                for (int pi = 0; pi < panels; pi++) v[pi] = qk_avx512_load_row(group[pi], l, i);
#pragma GCC unroll 4
                for (int j = 0; j < CHAINS; j++) {
                    __m512i w[2];
                    for (int pi = 0; pi < panels; pi++) {
                        __m512i index = j ? _mm512_srli_epi32(v[pi], 4 * j) : v[pi];
                        if (asymmetric) index = _mm512_add_epi16(_mm512_and_si512(index, nibbles), index_bias[pi]);
                        w[pi] = _mm512_permutexvar_epi16(index, table);
                    }
                    for (int r = 0; r < rows; r++) {
                        const uint32_t* xr = xg + (size_t)r * p->x_row + i * words;
                        for (int part = 0; part < parts; part++) { /* a bfloat16 x is its hi part (lo = 0) */
                            __m512i xs = _mm512_set1_epi32((int)xr[4 * part + j]);
                            for (int pi = 0; pi < panels; pi++) sum[r][pi][j] = dot(sum[r][pi][j], w[pi], xs);
                        }
                    }
                }
            }
            for (int r = 0; r < rows; r++)
                for (int pi = 0; pi < panels; pi++)
                    run[r][pi] = _mm512_fmadd_ps(_mm512_add_ps(_mm512_add_ps(sum[r][pi][0], sum[r][pi][1]),
                                                               _mm512_add_ps(sum[r][pi][2], sum[r][pi][3])),
                                                 scale[pi], run[r][pi]);
        }
        qk_avx512_add_runs(y, run, rows, panels);
    }
}

/* Each tile shape as its own function with constant arguments: [parts 1/2/3][asymmetric][panels 1/2][rows 1/2]. */
#define BF16_FN(parts, asym, panels, rows)                                                                        \
    static void bf16_##parts##_##asym##_##panels##_##rows(const qk_avx512_problem* p, int32_t panel, int32_t m,   \
                                                          double* y) {                                          \
        bf16_tile(p, parts, asym, panels, rows, panel, m, y);                                                   \
    }
#define BF16_FNS(parts) \
    BF16_FN(parts, 0, 1, 1) BF16_FN(parts, 0, 1, 2) BF16_FN(parts, 0, 2, 1) BF16_FN(parts, 0, 2, 2) \
    BF16_FN(parts, 1, 1, 1) BF16_FN(parts, 1, 1, 2) BF16_FN(parts, 1, 2, 1) BF16_FN(parts, 1, 2, 2)
BF16_FNS(1)
BF16_FNS(2)
BF16_FNS(3)

typedef void bf16_fn(const qk_avx512_problem* p, int32_t panel, int32_t m, double* y);
#define BF16_SHAPES(parts)                                                                                   \
    {{{bf16_##parts##_0_1_1, bf16_##parts##_0_1_2}, {bf16_##parts##_0_2_1, bf16_##parts##_0_2_2}},           \
     {{bf16_##parts##_1_1_1, bf16_##parts##_1_1_2}, {bf16_##parts##_1_2_1, bf16_##parts##_1_2_2}}}
static bf16_fn* const shapes[3][2][2][TILE_ROWS] = {BF16_SHAPES(1), BF16_SHAPES(2), BF16_SHAPES(3)};

static void tile(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int rows, double* y) {
    shapes[qk_avx512_bf16_parts(p->a->input_dtype) - 1][p->asymmetric][panels - 1][rows - 1](p, panel, m, y);
}

/* The problem, its rows of X 1.5 times as long for three parts. */
static qk_avx512_problem problem_of(const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx512_problem p = qk_avx512_problem_of(w, a);
    if (qk_avx512_bf16_parts(a->input_dtype) == 3) p.x_row = p.row / 2 * 3;
    return p;
}

size_t qk_avx512_a16_bf16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    qk_avx512_problem p = problem_of(w, a);
    return qk_avx512_buffers(&p, 1, NULL);
}

qk_status qk_avx512_a16_w4_bf16_2x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    qk_avx512_problem p = problem_of(w, a);
    qk_avx512_buffers(&p, 1, exec->workspace);
    p.rewrite_row = qk_avx512_bf16_parts(a->input_dtype) == 3 ? split_row_3 : split_row_2;
    qk_avx512_prepare_rows(exec, &p);
    qk_avx512_run_tiles(exec, &p, TILE_ROWS, tile);
    return QK_OK;
}
