/* x86_avx512_a16_w4_bf16_c2x4 and _g32_c2x4: A16 on the canonical layout, for stateless calls at
 * small M (nothing is packed), float16 and bfloat16 input and 4-bit weights without offsets, G a
 * multiple of 128 (c2x4) or G = 32 or 64 (g32_c2x4: groups of 32 k, the small groups GGUF's and
 * some GPTQ checkpoints use; also one group G >= K, as whole-chunk groups, which its registry line
 * lets through when K <= 64): vdpbf16ps (AVX512-BF16), as a16_bf16.c on the vnni16 pack; and
 * _bf16x3_c2x4 and _bf16x3_g32_c2x4, the same for float32 input, each x as three bfloat16 parts
 * (their registry lines take it at smaller M: a third more vdpbf16ps than float16's). One function
 * runs all four (a group size is described as a multiple and a maximum, an input dtype as a set).
 * Built with -mavx512bf16 and listed with that feature as its own requirement; elsewhere stateless
 * calls run the FMA variant (a16_c4x16.c) or x86_avx2's.
 *
 * Why: x86_avx2_a16_w4w8_c4x8 spends about 54 operations per 128 weights (an extraction, a
 * conversion and an FMA per 8) and ran a stateless M = 1 call at 2.35x the time of a prepared one on
 * an AMD EPYC Zen 4 (README, x86_avx512). Here 128 weights of one row cost a load, three shifts,
 * four vpermw and eight vdpbf16ps (four for bfloat16 input: one part, below; twelve for float32).
 *
 * A chunk is 128 k of a row of W: 64 bytes, one zmm. Its dword i holds k 8i .. 8i + 7, element 8i + t
 * in bits 4t .. 4t + 3 (low nibble first). A shift right by 4s (s = 0..3) brings k 8i + s to the bottom
 * of the dword's low 16-bit half and k 8i + 4 + s to the bottom of its high half; vpermw reads the
 * low 5 bits of each half as an index into a table of 32 bfloat16 values whose entry v is
 * q(v mod 16) - zp (q: the nibble's two's complement value; the table repeats every 16, so the bit
 * above the nibble does not matter; |q - zp| <= 15 is exact in bfloat16). The activations are
 * staged to match: per chunk, for the hi and then the lo bfloat16 part of each float16 value (split
 * as a16_bf16.c does), per s, 16 dwords (x[8i + s], x[8i + 4 + s]); one vdpbf16ps adds the two
 * products of each lane. A tile is 1 or 2 rows of X by 4 rows of W, one chain per part and pair. A
 * bfloat16 x is its own hi part: one part, one chain, half the vdpbf16ps; a float32 x is three
 * (qk_avx512_bf16_part: its top 8 significant bits, the next 8, the last 8), staged as hi, mid, lo.
 *
 * Small groups: lane i of a chunk holds k 8i .. 8i + 7, so with G = 32 or 64 each lane lies in one
 * group (lanes 4j .. 4j + 3, or 8j .. 8j + 7, are the chunk's group j): the scales multiply the
 * chunk's lanes as a vector of the groups' scales, and zero points, which differ between the lanes
 * of one vpermw, are subtracted as integers first: u - z = (q + 8) - (zp + 8) = q - zp in [-15, 15],
 * whose low 5 bits index a table of those integers in bfloat16 (a vpternlogd and a vpsubw more per
 * 32 weights; symmetric weights keep the table of zp = 0).
 *
 * Sums (docs/numerics.md reading 26): each lane of a chain adds 8 exact products of one chunk in 4
 * vdpbf16ps; a chunk's chains (one per part) are added, times the group's scale, into a
 * float32 run of at most 16 chunks (QK_AVX512_RUN_CHUNKS, as reading 24), and each run's 16 lanes
 * into float64 sums. Rows whose |x| reach 2^88 (Inf) come scaled down by the x86_avx2 row loader,
 * and nonzero rows whose |x| are all below 2^-32 scaled up (what vdpbf16ps flushes in bfloat16 rows
 * then stays within the tolerance: reading 24); it also zero-pads the last group; the bytes of a
 * last chunk past K are read as zeros, times zero activations. */
#include <string.h>

#include "avx512.h"

enum {
    TILE_ROWS = 2,    /* rows of X */
    TILE_W_ROWS = 4,  /* rows of W */
    BLOCK_N = 8,      /* rows of W per task */
    CHUNK_K = 128,
    CHUNK_BYTES = 64,
    TABLE_WORDS = 32, /* vpermw's index: 5 bits */
    ZERO_POINTS = 16, /* a table per 4-bit zero point, -8 .. 7 */
};

typedef struct {
    const qk_matmul_args* a;
    const qk_weights* w;
    int lane_shift;      /* small groups: lane i is in the chunk's group i >> lane_shift (2: G = 32, 3: 64) */
    size_t stride;       /* of groups in a staged row: min(G, K); G a multiple of 128: a whole number of chunks
                            unless one group; G = 32 or 64: 4 or 2 groups to a chunk */
    size_t padded;       /* staged row length in k: its groups rounded up to a chunk */
    int parts;           /* bfloat16 parts per x: 1 (bfloat16 input), 2 (float16), 3 (float32) */
    size_t row_words;    /* dwords of a row: padded / 2 per part, at least padded (the row as loaded) */
    uint32_t* x;         /* [M][row_words] staged pairs of bfloat16 parts */
    double* row_scale;   /* [M] */
    uint16_t* tables;    /* [ZERO_POINTS + 1][TABLE_WORDS]: table zp + 8, then the differences' (small groups) */
} job;

/* One chunk of float32 activations (128 k from `in`) as the staged order (above) of its `parts`
 * bfloat16 parts (64 dwords each, from `out`). Everything is read before anything is stored: out may
 * overlap in. */
static void stage_chunk(const float* in, uint32_t* out, int parts) {
    /* vpermt2w index: word 8s + 2j + h of a 32-k piece's output is element 8j + 4h + s, whose upper
     * (bfloat16) half is word 2 (8j + 4h + s) + 1 of the two float32 sources. */
    static const uint16_t order[32] = {1, 9,  17, 25, 33, 41, 49, 57, 3, 11, 19, 27, 35, 43, 51, 59,
                                       5, 13, 21, 29, 37, 45, 53, 61, 7, 15, 23, 31, 39, 47, 55, 63};
    const __m512i words = _mm512_loadu_si512((const void*)order);
    __m512i staged[3][4]; /* [part][32-k piece b]: per s, the dwords of lanes 4b .. 4b + 3 */
    for (int b = 0; b < 4; b++) {
        __m512 rest[2] = {_mm512_loadu_ps(in + 32 * b), _mm512_loadu_ps(in + 32 * b + 16)};
        for (int p = 0; p < parts; p++) {
            __m512i top0 = qk_avx512_bf16_part(&rest[0]), top1 = qk_avx512_bf16_part(&rest[1]);
            staged[p][b] = _mm512_permutex2var_epi16(top0, words, top1);
        }
    }
    for (int p = 0; p < parts; p++)
        for (int b = 0; b < 4; b++) {
            uint32_t* lanes = out + (4 * p) * 16 + 4 * b; /* + 16 s */
            _mm_storeu_si128((__m128i*)lanes, _mm512_extracti32x4_epi32(staged[p][b], 0));
            _mm_storeu_si128((__m128i*)(lanes + 16), _mm512_extracti32x4_epi32(staged[p][b], 1));
            _mm_storeu_si128((__m128i*)(lanes + 32), _mm512_extracti32x4_epi32(staged[p][b], 2));
            _mm_storeu_si128((__m128i*)(lanes + 48), _mm512_extracti32x4_epi32(staged[p][b], 3));
        }
}

static void stage_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const job* j = arg;
    size_t loaded = (size_t)qk_groups_per_row(j->w) * j->stride;
    const size_t chunks = j->padded / CHUNK_K, chunk_words = (size_t)j->parts * 64;
    for (int32_t m = begin; m < end; m++) {
        uint32_t* staged = j->x + (size_t)m * j->row_words;
        float* x = (float*)staged; /* loaded as float32, then staged in place */
        j->row_scale[m] = qk_avx2_load_row(j->a, j->w, m, j->stride, x); /* dense: groups at their k */
        for (size_t k = loaded; k < j->padded; k++) x[k] = 0.0f;
        /* A staged chunk longer than a loaded one (3 parts) overwrites the next chunk's: from the back. */
        for (size_t i = 0; i < chunks; i++) {
            size_t c = j->parts == 3 ? chunks - 1 - i : i;
            stage_chunk(x + c * CHUNK_K, staged + c * chunk_words, j->parts);
        }
    }
}

/* Entry v of table zp + 8: q(v mod 16) - zp in bfloat16 (exact: small integers). Entry e of the last
 * table (small groups): e read as a 5-bit two's complement integer, the difference q - zp. */
static void fill_tables(uint16_t* tables) {
    for (int zp = -8; zp < 8; zp++)
        for (int v = 0; v < TABLE_WORDS; v++) {
            int q = v % 16 < 8 ? v % 16 : v % 16 - 16;
            tables[(zp + 8) * TABLE_WORDS + v] = qk_avx512_bf16_of_int(q - zp);
        }
    for (int e = 0; e < TABLE_WORDS; e++) tables[ZERO_POINTS * TABLE_WORDS + e] = qk_avx512_bf16_of_int(e < 16 ? e : e - 32);
}

/* Small groups: the zero points zp[0 .. n) of a chunk's groups (n = 128 / G, fewer in the row's last
 * chunk: groups past the row get any z, times zero activations), as z = zp + 8 in both 16-bit halves
 * of each lane. Four bytes at once where the row has them (`four`): z = (zp & 15) ^ 8 for 4-bit zero
 * points, then vpshufb with `pick` (lane i: bytes [i >> shift, zero, i >> shift, zero]) spreads them. */
QK_AVX512_INLINE __m512i lane_zeros(const int8_t* zp, int n, int four, __m512i pick) {
    uint32_t bytes = 0;
    if (four)
        memcpy(&bytes, zp, 4);
    else
        for (int i = 0; i < n; i++) bytes |= (uint32_t)(uint8_t)zp[i] << (8 * i);
    return _mm512_shuffle_epi8(_mm512_set1_epi32((int)((bytes & 0x0F0F0F0Fu) ^ 0x08080808u)), pick);
}

/* How a tile reads groups: G a multiple of 128 (one scale and zero point per chunk), or G = 32 or
 * 64 (per lane) without or with zero points: tile's loop for each, none carrying another's work. */
enum { WHOLE_CHUNK_GROUPS, SMALL_GROUPS, SMALL_GROUPS_ZERO_POINTS };

/* Rows [0, rows) of X (staged, from x) times rows [n0, n0 + 4) of W, added to y[r][at + c] (float64,
 * before the row scale), with `parts` parts of each x (1: bfloat16 input, 2: float16, 3: float32),
 * groups read as `groups_kind` says. Rows of W past N read row N - 1; their results are
 * not stored. */
QK_AVX512_INLINE void tile(const job* j, int groups_kind, int parts, int rows, const uint32_t* x, int32_t n0,
                           double (*y)[BLOCK_N], int32_t at) {
    const int small = groups_kind != WHOLE_CHUNK_GROUPS, zeros = groups_kind == SMALL_GROUPS_ZERO_POINTS;
    const qk_weights* w = j->w;
    const int32_t N = w->N, K = w->K, groups = qk_groups_per_row(w);
    const size_t row_bytes = qk_row_bytes(K, 4), ahead = qk_avx2_prefetch_rows(n0, TILE_W_ROWS, N, row_bytes);
    const int32_t chunks = (K + CHUNK_K - 1) / CHUNK_K, whole = K / CHUNK_K;
    const int32_t group_chunks = (int32_t)((j->stride + CHUNK_K - 1) / CHUNK_K);
    const int chunk_groups = small ? 16 >> j->lane_shift : 1;
    const __m512i lane_group = _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                 small ? j->lane_shift : 0);
    /* For zero points per lane (the compiler drops them elsewhere): */
    const __m512i nibbles = _mm512_set1_epi32(0x000F000F), eight = _mm512_set1_epi32(0x00080008);
    const __m512i pick = _mm512_or_si512(_mm512_or_si512(lane_group, _mm512_slli_epi32(lane_group, 16)),
                                         _mm512_set1_epi32((int)0x80008000u)); /* vpshufb: 0x80 gives zero */
    const __m512i differences = _mm512_loadu_si512((const void*)(j->tables + ZERO_POINTS * TABLE_WORDS));
    const uint8_t* wrow[TILE_W_ROWS];
    const float* scales[TILE_W_ROWS];
    const int8_t* zps[TILE_W_ROWS];
    for (int c = 0; c < TILE_W_ROWS; c++) {
        size_t n = (size_t)(n0 + c < N ? n0 + c : N - 1);
        wrow[c] = (const uint8_t*)w->data + n * row_bytes;
        scales[c] = w->scales + n * groups;
        zps[c] = w->zero_points ? w->zero_points + n * groups : NULL;
    }
    uint8_t last[TILE_W_ROWS][CHUNK_BYTES]; /* a last chunk cut short by K: bytes past the row read as zeros */
    qk_avx512_short_chunks(last, wrow, TILE_W_ROWS, row_bytes);
    __m512 run[TILE_ROWS][TILE_W_ROWS]; /* a run starts from +0, as reading 20's */
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < TILE_W_ROWS; c++) run[r][c] = _mm512_setzero_ps();
    for (int32_t ch = 0, g = 0, in_group = 0, in_run = 0; ch < chunks; ch++) {
        if (small) /* the chunk's first group, and how many of its groups the row has */
            g = ch * chunk_groups;
        else if (++in_group > group_chunks)
            g++, in_group = 1;
        const int here = small && groups - g < chunk_groups ? groups - g : chunk_groups;
        const int run_ends = ++in_run == QK_AVX512_RUN_CHUNKS || ch == chunks - 1;
        /* Per row of W: the chunk, and its lookup table (zp = 0 for SMALL_GROUPS: symmetric) or, with
         * zero points per lane, the lanes' z to subtract before the table of differences. */
        __m512i v[TILE_W_ROWS], table[TILE_W_ROWS], z[TILE_W_ROWS];
        for (int c = 0; c < TILE_W_ROWS; c++) {
            const uint8_t* at = wrow[c] + (size_t)ch * CHUNK_BYTES;
            _mm_prefetch((const char*)at + ahead, _MM_HINT_T1);
            v[c] = _mm512_loadu_si512((const void*)(ch < whole ? at : last[c]));
            if (zeros)
                z[c] = lane_zeros(zps[c] + g, here, g + 4 <= groups, pick);
            else
                table[c] = _mm512_loadu_si512(
                    (const void*)(j->tables + (size_t)((zps[c] ? zps[c][g] : 0) + 8) * TABLE_WORDS));
        }
        __m512 acc[TILE_ROWS][TILE_W_ROWS][3];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < TILE_W_ROWS; c++)
                for (int part = 0; part < parts; part++) acc[r][c][part] = _mm512_setzero_ps();
        const uint32_t* xc = x + (size_t)ch * parts * 64;
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
            __m512i wv[TILE_W_ROWS];
            for (int c = 0; c < TILE_W_ROWS; c++) {
                __m512i shifted = s ? _mm512_srli_epi32(v[c], 4 * s) : v[c];
                if (zeros) { /* (nibble ^ 8) - z: vpternlogd 0x6A is (a & b) ^ c */
                    __m512i u = _mm512_ternarylogic_epi32(shifted, nibbles, eight, 0x6A);
                    wv[c] = _mm512_permutexvar_epi16(_mm512_sub_epi16(u, z[c]), differences);
                } else
                    wv[c] = _mm512_permutexvar_epi16(shifted, table[c]);
            }
            for (int r = 0; r < rows; r++)
                for (int part = 0; part < parts; part++) {
                    __m512bh xs = (__m512bh)_mm512_loadu_si512((const void*)(xc + (size_t)r * j->row_words + (4 * part + s) * 16));
                    for (int c = 0; c < TILE_W_ROWS; c++)
                        acc[r][c][part] = _mm512_dpbf16_ps(acc[r][c][part], (__m512bh)wv[c], xs);
                }
        }
        for (int c = 0; c < TILE_W_ROWS; c++) {
            const __m512 scale = small ? _mm512_permutexvar_ps(lane_group, _mm512_maskz_loadu_ps(
                                                                               (__mmask16)((1u << here) - 1), scales[c] + g))
                                       : _mm512_set1_ps(scales[c][g]);
            for (int r = 0; r < rows; r++) {
                __m512 t = acc[r][c][0]; /* hi, plus what the smaller parts add */
                if (parts > 1) t = _mm512_add_ps(t, parts == 3 ? _mm512_add_ps(acc[r][c][1], acc[r][c][2]) : acc[r][c][1]);
                run[r][c] = _mm512_fmadd_ps(t, scale, run[r][c]);
                if (run_ends) {
                    float lanes[16];
                    _mm512_storeu_ps(lanes, run[r][c]);
                    double sum = 0.0;
                    for (int i = 0; i < 16; i++) sum += lanes[i];
                    y[r][at + c] += sum;
                    run[r][c] = _mm512_setzero_ps();
                }
            }
        }
        if (run_ends) in_run = 0;
    }
}

/* Each tile shape as its own function with constant arguments: tiles[groups kind][parts 1/2/3][rows 1/2]. */
typedef void tile_fn(const job* j, const uint32_t* x, int32_t n0, double (*y)[BLOCK_N], int32_t at);
#define TILE_FN(kind, parts, rows)                                                                          \
    static void tile_##kind##_##parts##_##rows(const job* j, const uint32_t* x, int32_t n0, double (*y)[BLOCK_N], \
                                               int32_t at) {                                                \
        tile(j, kind, parts, rows, x, n0, y, at);                                                           \
    }
#define TILE_FNS(kind) \
    TILE_FN(kind, 1, 1) TILE_FN(kind, 1, 2) TILE_FN(kind, 2, 1) TILE_FN(kind, 2, 2) TILE_FN(kind, 3, 1) TILE_FN(kind, 3, 2)
TILE_FNS(0) TILE_FNS(1) TILE_FNS(2)
#define TILE_TABLE(kind) \
    {{tile_##kind##_1_1, tile_##kind##_1_2}, {tile_##kind##_2_1, tile_##kind##_2_2}, {tile_##kind##_3_1, tile_##kind##_3_2}}
static tile_fn* const tiles[3][3][TILE_ROWS] = {TILE_TABLE(0), TILE_TABLE(1), TILE_TABLE(2)};

/* Task t: rows [8t, 8t + 8) of W (two tiles: eight outputs are one vector store) for every row of X. */
static void block_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const job* j = arg;
    int32_t M = j->a->M, N = j->w->N;
    const int kind = !j->lane_shift ? WHOLE_CHUNK_GROUPS : j->w->zero_points ? SMALL_GROUPS_ZERO_POINTS : SMALL_GROUPS;
    tile_fn* const* shapes = tiles[kind][j->parts - 1];
    for (int32_t t = begin; t < end; t++) {
        int32_t n0 = t * BLOCK_N, count = N - n0 < BLOCK_N ? N - n0 : BLOCK_N;
        for (int32_t m = 0; m < M; m += TILE_ROWS) {
            int rows = M - m < TILE_ROWS ? M - m : TILE_ROWS;
            double y[TILE_ROWS][BLOCK_N] = {{0}};
            for (int32_t half = 0; half < count; half += TILE_W_ROWS)
                shapes[rows - 1](j, j->x + (size_t)m * j->row_words, n0 + half, y, half);
            for (int r = 0; r < rows; r++) qk_avx2_finish(j->a, N, j->row_scale, m + r, n0, count, y[r]);
        }
    }
}

/* The workspace: staged rows of X, the row scales, the weight tables. */
static size_t buffers(job* j, void* base) {
    size_t used = 0;
    j->stride = (size_t)(j->w->group_size < j->w->K ? j->w->group_size : j->w->K);
    /* The registry lines let through G a multiple of 128, G = 32 or 64, or one group (G >= K: as
     * whole-chunk groups); the run refuses anything else (a new registry line must come here). */
    j->lane_shift = j->w->group_size == 32 ? 2 : j->w->group_size == 64 ? 3 : 0;
    j->padded = ((size_t)qk_groups_per_row(j->w) * j->stride + CHUNK_K - 1) / CHUNK_K * CHUNK_K;
    j->parts = qk_avx512_bf16_parts(j->a->input_dtype);
    j->row_words = j->padded / 2 * (size_t)(j->parts > 2 ? j->parts : 2);
    j->x = qk_avx2_take(base, &used, (size_t)j->a->M * j->row_words * sizeof *j->x);
    j->row_scale = qk_avx2_take(base, &used, (size_t)j->a->M * sizeof *j->row_scale);
    j->tables = qk_avx2_take(base, &used, (ZERO_POINTS + 1) * TABLE_WORDS * sizeof *j->tables);
    return used;
}

size_t qk_avx512_a16_bf16_c2x4_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    job j = {.a = a, .w = &w->format};
    return buffers(&j, NULL);
}

qk_status qk_avx512_a16_w4_bf16_c2x4(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    const int32_t G = w->format.group_size;
    if (!(G == 32 || G == 64 || G % CHUNK_K == 0 || G >= w->format.K))
        return qk_fail(QK_ERR_UNSUPPORTED, "x86_avx512's canonical A16 variant: group size %d", G);
    job j = {.a = a, .w = &w->format};
    buffers(&j, exec->workspace);
    fill_tables(j.tables);
    int32_t M = a->M, K = w->format.K, grain = (1 << 14) / K;
    qk_parallel_for(exec, M, grain > 1 ? grain : 1, stage_task, &j);
    qk_parallel_for(exec, (w->format.N + BLOCK_N - 1) / BLOCK_N, qk_avx2_grain((double)M * BLOCK_N * K), block_task, &j);
    return QK_OK;
}
