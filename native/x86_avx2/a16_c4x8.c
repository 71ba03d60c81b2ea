/* x86_avx2_a16_w4w8_c4x8: A16 on the canonical layout, for stateless calls at small M (nothing is
 * packed: packing would cost more than the multiplication).
 *
 * A unit is 16 bytes of a row of W: 32 k at 4 bits, 16 at 8. One 256-bit register holds a unit of
 * two rows, n in the low 128-bit lane and n + 1 in the high one, and qk_avx2_byte_to_top turns byte
 * i of each dword into q * 2^28 (a nibble moved to the top of its byte) or q * 2^24, as in the
 * packed kernel: per lane, dword j gives k = 8j + 2i + h at 4 bits (h: low or high nibble) and
 * k = 4j + i at 8 bits. The activations are staged in that order, four floats per (i, h) ("quad"),
 * so that one 128-bit broadcast pairs them with both rows. Each lane thus sums a quarter of a row's
 * products in float32, over runs of 128 k (32 terms per lane, then two vhaddps: an error of at most
 * 2^-19 of sum |x * (q - zp)|), folded into float64 with the scale per row and group.
 *
 * Units that cross a group boundary, or run past K, are summed one k at a time in float64 (none
 * when G and K are multiples of the unit). A task is a block of 8 rows of W for every row of X;
 * rows of |x| >= 2^88 come scaled down (QK_AVX2_LARGE_X). With offsets the weights are formed first
 * (avx2.h, QK_AVX2_OFFSETS), each lane with its row's scale and offset.
 *
 * The staging, the edge sums and the block loop are shared with x86_avx512's a16_c4x16.c, which
 * holds four rows of W per register where this file holds two, and sums the same terms in the
 * same order (qk_avx2_canonical_a16, avx2.h). */
#include <stddef.h>

#include "avx2.h"

enum { TILE_ROWS = 4, BLOCK_N = 8, UNIT_BYTES = 16 };
_Static_assert((int)BLOCK_N <= (int)QK_AVX2_A16_MAX_BLOCK && (int)TILE_ROWS <= (int)QK_AVX2_A16_MAX_TILE_ROWS,
               "the block loop's tile");

typedef qk_avx2_canonical_a16 job;

/* Where natural k of a unit sits in the staged activations: quad p holds k = c, c + 8, c + 16,
 * c + 24 (4 bits, c = 2i + h) or k = i, i + 4, i + 8, i + 12 (8 bits), quads in the order that the
 * in-register transposes of stage_units produce. */
static size_t staged(int32_t k, int bits) {
    int32_t U = qk_avx2_a16_unit_k(bits), r = k % U, c = r % (U / 4), p = bits == 4 ? 2 * (c % 4) + c / 4 : 2 * (c % 2) + c / 2;
    return (size_t)(k - r) + 4 * (size_t)p + (size_t)(r / (U / 4));
}

/* The units of a dense, zero-padded row into the staged order, in place. */
static void stage_units(float* x, size_t padded, int bits) {
    if (bits == 4) {
        for (size_t u = 0; u < padded; u += 32) {
            __m256 r0 = _mm256_loadu_ps(x + u), r1 = _mm256_loadu_ps(x + u + 8);
            __m256 r2 = _mm256_loadu_ps(x + u + 16), r3 = _mm256_loadu_ps(x + u + 24);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            _mm256_storeu_ps(x + u, _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)));      /* c 0 | 4 */
            _mm256_storeu_ps(x + u + 8, _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)));  /* c 1 | 5 */
            _mm256_storeu_ps(x + u + 16, _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0))); /* c 2 | 6 */
            _mm256_storeu_ps(x + u + 24, _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))); /* c 3 | 7 */
        }
    } else {
        const __m256i pairs = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (size_t u = 0; u < padded; u += 16) {
            __m256d a = _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_loadu_ps(x + u), pairs));
            __m256d b = _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_loadu_ps(x + u + 8), pairs));
            _mm256_storeu_pd((double*)(x + u), _mm256_unpacklo_pd(a, b));     /* i 0 | 2 */
            _mm256_storeu_pd((double*)(x + u + 8), _mm256_unpackhi_pd(a, b)); /* i 1 | 3 */
        }
    }
}

static void stage_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const job* j = arg;
    for (int32_t m = begin; m < end; m++) {
        float* x = j->x + (size_t)m * j->padded;
        j->row_scale[m] = qk_avx2_load_row(j->a, j->w, m, j->stride, x); /* dense: groups at their k */
        for (size_t k = (size_t)j->w->K; k < j->padded; k++) x[k] = 0.0f;
        stage_units(x, j->padded, j->w->bits);
    }
}

/* Row n's weight at k, in float64 as the edge sums add it: q - zp, or with offsets
 * w = scale * (q - zp) + offset (the product exact, one rounding). */
static inline double edge_weight(const qk_weights* w, int form, int32_t n, int32_t k, int32_t zp, double scale,
                                 double offset) {
    double q = qk_weight_q(w, n, k) - zp;
    return form == QK_AVX2_OFFSETS ? scale * q + offset : q;
}

/* x * (q - zp) is exact in float64; the sum times the scale and the unit (with offsets: x * w, w
 * formed as the reference forms it, times the unit). */
double qk_avx2_canonical_a16_edge(const job* j, qk_avx2_a16_group s, const float* x, int32_t n) {
    const qk_weights* w = j->w;
    size_t at = (size_t)n * qk_groups_per_row(w) + s.g;
    int32_t zp = qk_weight_zp(w, n, s.k0), bits = w->bits;
    double scale = w->scales[at], offset = j->form == QK_AVX2_OFFSETS ? w->offsets[at] : 0.0, sum = 0.0;
    for (int32_t k = s.k0; k < s.head_end; k++) sum += (double)x[staged(k, bits)] * edge_weight(w, j->form, n, k, zp, scale, offset);
    for (int32_t k = s.tail_start; k < s.k1; k++) sum += (double)x[staged(k, bits)] * edge_weight(w, j->form, n, k, zp, scale, offset);
    double unit = qk_avx2_weight_unit(bits);
    return j->form == QK_AVX2_OFFSETS ? sum * unit : sum * scale * unit;
}

/* A tile (qk_avx2_canonical_a16_tile, avx2.h) of 8 rows of W, summed in y[r][0] (rows n0 + 0, 2,
 * 4, 6) and y[r][1] (rows n0 + 1, 3, 5, 7) and stored in out at the end.
 * A pair of rows of W is one register (see the top); one or two rows of X take two pairs at a time,
 * more rows one, each sum two chains (even and odd quads): four to eight independent FMA chains,
 * as in the packed kernel's tiles, with no sum spilled to memory. At the end of a float32 run, two
 * rounds of vhaddps turn each pair's lanes into row sums, in the order of y. */
QK_AVX2_INLINE void tile(const job* j, int bits, int form, int rows, const float* x, int32_t n0,
                         double (*out)[QK_AVX2_A16_MAX_BLOCK]) {
    enum { PAIRS = 4, CHAINS = 2 };
    __m256d y[TILE_ROWS][2];
    for (int r = 0; r < rows; r++) y[r][0] = y[r][1] = _mm256_setzero_pd();
    const int pairs = rows <= 2 ? 2 : 1;
    const qk_weights* w = j->w;
    int32_t U = qk_avx2_a16_unit_k(bits), groups = qk_groups_per_row(w), N = w->N;
    const float unit = qk_avx2_weight_unit(bits);
    const __m256 inverse_unit = _mm256_set1_ps(1.0f / unit);
    const int8_t* row[2 * PAIRS];
    for (int i = 0; i < 2 * PAIRS; i++)
        row[i] = w->data + (size_t)(n0 + i < N ? n0 + i : N - 1) * qk_row_bytes(w->K, bits);
    const size_t ahead = qk_avx2_prefetch_rows(n0, BLOCK_N, N, qk_row_bytes(w->K, bits));
    /* The scales of rows n0 + i (row N - 1 past N), read at each group. */
    const float *scales[2 * PAIRS], *offsets[2 * PAIRS];
    for (int i = 0; i < 2 * PAIRS; i++) {
        size_t first = (size_t)(n0 + i < N ? n0 + i : N - 1) * groups;
        scales[i] = w->scales + first;
        offsets[i] = w->offsets ? w->offsets + first : NULL;
    }
    for (int32_t g = 0; g < groups; g++) {
        qk_avx2_a16_group s = qk_avx2_a16_group_of(w, g);
        int32_t k0 = s.k0, u0 = s.u0, u1 = s.u1;
        /* Rows 0, 2, 4, 6 and 1, 3, 5, 7, as y. Loaded one by one: vgatherdps was slower here. */
        __m256d scale[2] = {
            _mm256_cvtps_pd(_mm_setr_ps(scales[0][g], scales[2][g], scales[4][g], scales[6][g])),
            _mm256_cvtps_pd(_mm_setr_ps(scales[1][g], scales[3][g], scales[5][g], scales[7][g])),
        };
        /* Per pair, row 2 pi in the low lane and row 2 pi + 1 in the high one: zp * unit, or with
         * offsets -zp, and the scale and offset that form the weights. */
        __m256 zero[PAIRS], lane_scale[PAIRS], lane_offset[PAIRS];
        if (form != QK_AVX2_SYMMETRIC)
            for (int pi = 0; pi < PAIRS; pi++) {
                float zp0 = (float)qk_weight_zp(w, n0 + 2 * pi < N ? n0 + 2 * pi : N - 1, k0);
                float zp1 = (float)qk_weight_zp(w, n0 + 2 * pi + 1 < N ? n0 + 2 * pi + 1 : N - 1, k0);
                zero[pi] = form == QK_AVX2_OFFSETS ? _mm256_setr_m128(_mm_set1_ps(-zp0), _mm_set1_ps(-zp1))
                                                   : _mm256_setr_m128(_mm_set1_ps(zp0 * unit), _mm_set1_ps(zp1 * unit));
            }
        if (form == QK_AVX2_OFFSETS) {
            for (int pi = 0; pi < PAIRS; pi++) {
                lane_scale[pi] = _mm256_setr_m128(_mm_set1_ps(scales[2 * pi][g]), _mm_set1_ps(scales[2 * pi + 1][g]));
                lane_offset[pi] = _mm256_setr_m128(_mm_set1_ps(offsets[2 * pi][g]), _mm_set1_ps(offsets[2 * pi + 1][g]));
            }
            scale[0] = scale[1] = _mm256_set1_pd(unit); /* the sums are of x * w; the caller divides by unit */
        }
        /* Float32 runs of 128 k: a row's sum stays below 2^127 (|x| < 2^88, |q - zp| * unit < 2^32),
         * and each lane sums 32 terms. */
        const int32_t run = 128 / U;
        for (int32_t ub = u0; ub < u1; ub += run) {
            int32_t ue = u1 - ub < run ? u1 : ub + run;
            __m256 t[TILE_ROWS][PAIRS]; /* each pair's float32 sums: row 2 pi in the low lane, 2 pi + 1 in the high one */
            for (int p0 = 0; p0 < PAIRS; p0 += pairs) {
                __m256 acc[TILE_ROWS][2][CHAINS];
#pragma GCC unroll 4
                for (int r = 0; r < rows; r++)
                    for (int pi = 0; pi < pairs; pi++) acc[r][pi][0] = acc[r][pi][1] = _mm256_setzero_ps();
                /* the same bytes of the next block's rows (see a8_c4x8.c) */
                for (int i = 2 * p0; i < 2 * (p0 + pairs); i++)
                    for (ptrdiff_t u = ub; u < ue; u += 64 / UNIT_BYTES)
                        _mm_prefetch((const char*)row[i] + ahead + u * UNIT_BYTES, _MM_HINT_T0);
                for (ptrdiff_t u = ub; u < ue; u++) {
                    __m256i v[2][2];
                    for (int pi = 0; pi < pairs; pi++) {
                        __m256i both = _mm256_loadu2_m128i((const __m128i*)(row[2 * (p0 + pi) + 1] + u * UNIT_BYTES),
                                                           (const __m128i*)(row[2 * (p0 + pi)] + u * UNIT_BYTES));
                        if (bits == 4) {
                            v[pi][0] = _mm256_and_si256(_mm256_slli_epi16(both, 4), _mm256_set1_epi8((char)0xF0)); /* even k */
                            v[pi][1] = _mm256_and_si256(both, _mm256_set1_epi8((char)0xF0));                         /* odd k */
                        } else {
                            v[pi][0] = both;
                        }
                    }
                    const float* xu = x + u * U;
#pragma GCC unroll 8
                    for (int q = 0; q < U / 4; q++) {
                        int h = bits == 4 ? q / 4 : 0, i = q % 4;
                        int c = bits == 4 ? 2 * i + h : i, p = bits == 4 ? 2 * (c % 4) + c / 4 : 2 * (c % 2) + c / 2;
                        __m256 wq[2];
                        for (int pi = 0; pi < pairs; pi++) {
                            wq[pi] = _mm256_cvtepi32_ps(qk_avx2_byte_to_top(v[pi][h], i)); /* q * unit */
                            if (form == QK_AVX2_ASYMMETRIC) wq[pi] = _mm256_sub_ps(wq[pi], zero[p0 + pi]); /* exact */
                            if (form == QK_AVX2_OFFSETS) /* q - zp exactly, then w rounded once */
                                wq[pi] = _mm256_fmadd_ps(_mm256_fmadd_ps(wq[pi], inverse_unit, zero[p0 + pi]),
                                                         lane_scale[p0 + pi], lane_offset[p0 + pi]);
                        }
#pragma GCC unroll 4
                        for (int r = 0; r < rows; r++) {
                            __m256 xq = _mm256_broadcast_ps((const __m128*)(xu + (size_t)r * j->padded + 4 * p));
                            for (int pi = 0; pi < pairs; pi++)
                                acc[r][pi][q % CHAINS] = _mm256_fmadd_ps(xq, wq[pi], acc[r][pi][q % CHAINS]);
                        }
                    }
                }
#pragma GCC unroll 4
                for (int r = 0; r < rows; r++)
                    for (int pi = 0; pi < pairs; pi++) t[r][p0 + pi] = _mm256_add_ps(acc[r][pi][0], acc[r][pi][1]);
            }
            for (int r = 0; r < rows; r++) { /* two rounds of vhaddps: rows 0, 2, 4, 6 | 1, 3, 5, 7 */
                __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(t[r][0], t[r][1]), _mm256_hadd_ps(t[r][2], t[r][3]));
                y[r][0] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(sums)), scale[0], y[r][0]);
                y[r][1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(sums, 1)), scale[1], y[r][1]);
            }
        }
        if (s.head_end == s.k0 && s.tail_start == s.k1) continue; /* no k outside whole units */
        for (int r = 0; r < rows; r++) {
            double edge[2][4];
            for (int i = 0; i < 2 * PAIRS; i++)
                edge[i % 2][i / 2] = qk_avx2_canonical_a16_edge(j, s, x + (size_t)r * j->padded, n0 + i < N ? n0 + i : N - 1);
            y[r][0] = _mm256_add_pd(y[r][0], _mm256_loadu_pd(edge[0]));
            y[r][1] = _mm256_add_pd(y[r][1], _mm256_loadu_pd(edge[1]));
        }
    }
    for (int r = 0; r < rows; r++) {
        double even[4], odd[4];
        _mm256_storeu_pd(even, y[r][0]);
        _mm256_storeu_pd(odd, y[r][1]);
        for (int i = 0; i < 4; i++) out[r][2 * i] = even[i], out[r][2 * i + 1] = odd[i];
    }
}

/* Every tile variant with constant parameters (unrolled loops, sums in registers). */
#define TILE_FN(bits, form, rows)                                                                        \
    static void tile_##bits##_##form##_##rows(const job* j, const float* x, int32_t n0,                  \
                                              double (*out)[QK_AVX2_A16_MAX_BLOCK]) {                    \
        tile(j, bits, form, rows, x, n0, out);                                                           \
    }
#define TILE_ROWS_FNS(bits, form) TILE_FN(bits, form, 1) TILE_FN(bits, form, 2) TILE_FN(bits, form, 3) TILE_FN(bits, form, 4)
#define TILE_TABLE(bits, form) {tile_##bits##_##form##_1, tile_##bits##_##form##_2, tile_##bits##_##form##_3, tile_##bits##_##form##_4}
TILE_ROWS_FNS(4, 0) TILE_ROWS_FNS(4, 1) TILE_ROWS_FNS(4, 2) TILE_ROWS_FNS(8, 0) TILE_ROWS_FNS(8, 1) TILE_ROWS_FNS(8, 2)
static qk_avx2_canonical_a16_tile* const variants[2][QK_AVX2_FORMS][TILE_ROWS] = { /* [bits 4/8][form][rows - 1] */
    {TILE_TABLE(4, 0), TILE_TABLE(4, 1), TILE_TABLE(4, 2)},
    {TILE_TABLE(8, 0), TILE_TABLE(8, 1), TILE_TABLE(8, 2)},
};

/* Task t: rows [t block_n, (t + 1) block_n) of W for every row of X, tile_rows at a time; each
 * result times 2^-24 or 2^-28 (exact), then rounded once. */
static void block_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const job* j = arg;
    int32_t M = j->a->M, N = j->w->N, B = j->block_n;
    const double inverse_unit = 1.0 / qk_avx2_weight_unit(j->w->bits);
    for (int32_t t = begin; t < end; t++) {
        int32_t n0 = t * B, count = N - n0 < B ? N - n0 : B;
        for (int32_t m = 0; m < M; m += j->tile_rows) {
            int rows = M - m < j->tile_rows ? M - m : j->tile_rows;
            double y[QK_AVX2_A16_MAX_TILE_ROWS][QK_AVX2_A16_MAX_BLOCK];
            j->tiles[rows - 1](j, j->x + (size_t)m * j->padded, n0, y);
            for (int r = 0; r < rows; r++) {
                for (int32_t i = 0; i < count; i++) y[r][i] *= inverse_unit;
                qk_avx2_finish(j->a, N, j->row_scale, m + r, n0, count, y[r]);
            }
        }
    }
}

/* The workspace (staged rows, then row scales), laid out in base, or only measured with base NULL.
 * Returns its size. */
static size_t buffers(job* j, void* base) {
    size_t used = 0, U = (size_t)qk_avx2_a16_unit_k(j->w->bits);
    j->stride = (size_t)(j->w->group_size < j->w->K ? j->w->group_size : j->w->K);
    j->padded = ((size_t)qk_groups_per_row(j->w) * j->stride + U - 1) / U * U; /* K, or more with a shorter last group */
    j->x = qk_avx2_take(base, &used, (size_t)j->a->M * j->padded * sizeof *j->x);
    j->row_scale = qk_avx2_take(base, &used, (size_t)j->a->M * sizeof *j->row_scale);
    return used;
}

size_t qk_avx2_canonical_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    job j = {.a = a, .w = &w->format};
    return buffers(&j, NULL);
}

qk_status qk_avx2_canonical_a16_run(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a,
                                    int32_t block_n, int tile_rows, qk_avx2_canonical_a16_tile* const* tiles) {
    job j = {.a = a, .w = &w->format, .form = qk_avx2_form(w->asymmetric, w->has_offsets), .block_n = block_n,
             .tile_rows = tile_rows, .tiles = tiles};
    buffers(&j, exec->workspace);
    int32_t grain = (1 << 14) / w->format.K;
    qk_parallel_for(exec, a->M, grain > 1 ? grain : 1, stage_task, &j);
    qk_parallel_for(exec, (w->format.N + block_n - 1) / block_n, qk_avx2_grain((double)a->M * block_n * w->format.K),
                    block_task, &j);
    return QK_OK;
}

qk_status qk_avx2_a16_c4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    int form = qk_avx2_form(w->asymmetric, w->has_offsets);
    return qk_avx2_canonical_a16_run(exec, w, a, BLOCK_N, TILE_ROWS, variants[w->format.bits == 8][form]);
}
