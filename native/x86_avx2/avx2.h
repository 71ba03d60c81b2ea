/* The x86 AVX2 backend: its weight layout and what its kernels share.
 *
 * Files: pack.c makes the layout below; activations.c loads and quantizes rows of X and rounds
 * results to the output dtype; driver.c runs the row preparation and the tiles of the packed
 * kernels on the thread pool; a16_4x8.c, a16_6x16.c and a8_4x8.c are the kernels on the packed
 * layout, a16_c4x8.c and a8_c4x8.c those on the canonical one (stateless calls at small M);
 * register.c is the kernel table.
 *
 * Output features (rows n of W) are cut into panels of 8, one 256-bit register of int32 or float32
 * lanes; the last panel is padded with zero columns. A panel stores its groups one after the other,
 * each group as a header followed by ceil(min(G, K) / 8) blocks of 8 columns x 8 k (every group,
 * a shorter last one included, has the same size; k beyond the group holds q = zero_point, whose
 * A16 weight is the offset, finite where q = 0 could form one past float32's range):
 *
 *   header   float scale[8]; then int32_t zero_point[8] only when the weights have zero points
 *            (else 0: a line of zeros would be 6% of a 4-bit g128 pack, read on every call); then
 *            float offset[8] only when they have offsets (format v2). Per column:
 *            w = scale * (q - zero_point) + offset
 *   8 bits   64 bytes, two vectors: in vector h, dword j holds column j's q at k 4h .. 4h+3, a byte each
 *   4 bits   32 bytes, one vector: dword j holds column j's eight q, byte b = k b (low nibble) and
 *            k b+4 (high nibble)
 * Weights keep the canonical two's complement.
 *
 * One dword per column is what the instructions want: vpmaddubsw + vpmaddwd turn a vector of
 * weights and four broadcast activation bytes into eight column sums (A8), and one vpshufb moves
 * one k of all eight columns to the top byte of its dword, where it is q * 2^24 (or q * 2^28 for a
 * nibble) as an int32, which one vcvtdq2ps makes a float exactly (A16).
 * Scales sit next to their data so that a panel is read front to back, once. */
#ifndef QK_AVX2_H
#define QK_AVX2_H

#include <immintrin.h>

#include "../core/internal.h"

#define QK_AVX2_INLINE static inline __attribute__((always_inline))

enum {
    QK_AVX2_PANEL = 8,      /* columns per panel */
    QK_AVX2_BLOCK_K = 8,    /* k per block */
    QK_AVX2_LINE = 32,      /* one header line: scale[8], zero_point[8] or offset[8] */
    /* Multiply-adds per chunk of qk_parallel_for: a few microseconds (at M = 1, 4096 x 4096,
     * 4 bits: 128 chunks), so that a thread the machine does not run delays a call by little. */
    QK_AVX2_CHUNK_MACS = 1 << 17,
    /* Ahead of the weight stream (the hardware prefetcher alone reaches about half the bandwidth);
     * a pack's allocation extends this far past its end, so that the address stays inside it. */
    QK_AVX2_PREFETCH_BYTES = 2048,
};

typedef struct {
    int32_t panels, groups;
    int32_t blocks;      /* blocks per group: ceil(min(G, K) / 8) */
    size_t zeros_at;     /* where a header's zero_point[8] is, or 0: none (symmetric weights) */
    size_t offsets_at;   /* where its offset[8] is, or 0: none */
    size_t header;       /* 32 to 96: the lines above */
    size_t block_bytes;  /* 32 (4 bits) or 64 (8 bits) */
    size_t group_bytes;  /* header + blocks */
    size_t panel_bytes;
} qk_avx2_layout;

/* The layout of w's pack, with or without zero points and offsets (w's pointers are NULL where the
 * kernels see it). */
static inline qk_avx2_layout qk_avx2_layout_of(const qk_weights* w, int zero_points, int offsets) {
    qk_avx2_layout l;
    l.panels = (w->N + QK_AVX2_PANEL - 1) / QK_AVX2_PANEL;
    l.groups = qk_groups_per_row(w);
    l.blocks = ((w->group_size < w->K ? w->group_size : w->K) - 1) / QK_AVX2_BLOCK_K + 1; /* G > K: padded to K */
    l.block_bytes = w->bits == 4 ? 32 : 64;
    l.zeros_at = zero_points ? QK_AVX2_LINE : 0;
    l.offsets_at = offsets ? QK_AVX2_LINE * (zero_points ? 2 : 1) : 0;
    l.header = QK_AVX2_LINE * (1 + (zero_points ? 1 : 0) + (offsets ? 1 : 0));
    l.group_bytes = l.header + (size_t)l.blocks * l.block_bytes;
    l.panel_bytes = (size_t)l.groups * l.group_bytes;
    return l;
}

/* Packs weights into that layout, on the thread pool; *data (*size bytes, allocated with
 * QK_AVX2_PREFETCH_BYTES more) is freed with qk_aligned_free. */
qk_status qk_avx2_pack(const qk_weights* weights, void** data, size_t* size);

/* How far past a row of W the canonical-layout variants prefetch, a tile of `block` rows from row n0
 * at a time: the same bytes of the next tile's rows, or 0 (their own, already read) where those
 * would run past row N - 1, so that the address stays inside W. */
static inline size_t qk_avx2_prefetch_rows(int32_t n0, int32_t block, int32_t N, size_t row_bytes) {
    return N - n0 >= 2 * block ? (size_t)block * row_bytes : 0;
}

/* A group header's zero_point[8] as int32 lanes (0 without zero points). */
QK_AVX2_INLINE __m256i qk_avx2_zero_points(const uint8_t* group, const qk_avx2_layout* l) {
    return l->zeros_at ? _mm256_load_si256((const __m256i*)(group + l->zeros_at)) : _mm256_setzero_si256();
}

/* Tasks per qk_parallel_for chunk when one task is `task_macs` multiply-adds. */
static inline int32_t qk_avx2_grain(double task_macs) {
    double grain = QK_AVX2_CHUNK_MACS / task_macs;
    return grain < 1.0 ? 1 : (int32_t)grain;
}

/* Workspace carving: the next `bytes` at *used, 64-byte aligned; with base NULL it only measures,
 * so that one function both sizes a kernel's workspace and lays it out. */
static inline void* qk_avx2_take(void* base, size_t* used, size_t bytes) {
    void* p = base ? (uint8_t*)base + *used : NULL;
    *used += (bytes + 63) & ~(size_t)63;
    return p;
}

/* ---- activations (activations.c) ---- */

/* Rows of |x| >= 2^88 are scaled down by a power of two before the float32 sums: the A16 kernels
 * sum x * (q - zp) * 2^28 (up to 2^32 |x| per term, below 2^127 over 128 terms: two chains of 64)
 * or x * w (with offsets, and in a16_6x16.c) over 128 or 64 terms (finite while |x| |w| T < 2^128:
 * docs/numerics.md reading 16, with the bounds of the other backends' longer runs). The factor is
 * applied again to the float64 result, exactly. */
#define QK_AVX2_LARGE_X 0x1p88f
/* Rows whose largest magnitude is below 2^-32 (float32 or bfloat16 input; never float16) are scaled
 * up, to a largest magnitude in [2^-32, 2^-31), as if they were the smallest rows left unscaled:
 * what the kernels form from x (x86_amx's bfloat16 parts of it, x * (q - zp)) is then never
 * subnormal where x is within 2^-71 of its row's largest, so bfloat16 products that read
 * subnormals as zero, and float32 ones that round them coarsely, lose nothing the tolerance counts
 * (docs/numerics.md reading 16), and no float32 sum grows beyond those of unscaled rows. */
#define QK_AVX2_SMALL_X 0x1p-32f

/* Loads X's row m as float32 into out, group g at g * group_stride (group_stride >= G), zero padded
 * to the next group. A row with a magnitude of QK_AVX2_LARGE_X or more (Inf included), or a nonzero
 * row whose magnitudes are all below QK_AVX2_SMALL_X, is stored times 2^-s; returns 2^s, what the
 * row's sums must be multiplied by (1 for every other row). */
double qk_avx2_load_row(const qk_matmul_args* a, const qk_weights* w, int32_t m, size_t group_stride, float* out);

/* The A8 activation quantizer (docs/numerics.md section 3) for row m, groups laid out as above:
 * qx (zero padded) and the per-group sums of qx. Returns sx, or NaN when the row holds NaN or Inf
 * (its outputs are NaN; its qx and sums are zeros). */
double qk_avx2_quantize_row(const qk_matmul_args* a, const qk_weights* w, int32_t m, size_t group_stride,
                            int8_t* qx, int32_t* group_sums);

/* The output row's columns [n, n + count) from float64 results (one rounding to the dtype). */
void qk_avx2_store(const qk_matmul_args* a, int32_t N, int32_t m, int32_t n, int32_t count, const double* y);

/* ---- the driver (driver.c) ---- */

/* y (eight float64 columns as two vectors) += t (eight int32 or float32 lanes) * scale. */
QK_AVX2_INLINE void qk_avx2_fold_epi32(__m256d y[2], __m256i t, __m256d scale_lo, __m256d scale_hi) {
    y[0] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(t)), scale_lo, y[0]);
    y[1] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(t, 1)), scale_hi, y[1]);
}

QK_AVX2_INLINE void qk_avx2_fold_ps(__m256d y[2], __m256 t, __m256d scale_lo, __m256d scale_hi) {
    y[0] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(t)), scale_lo, y[0]);
    y[1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)), scale_hi, y[1]);
}

/* How the A16 kernels form weights, one variant each: q (times the scale after the sums), q - zp
 * (the same), or w = fma(q - zp, scale, offset) per weight before the sums (with offsets: products
 * x * w as the reference's, so that Inf and NaN propagate the same; x * (q - zp) times the scale
 * plus offset * sum x would give Inf - Inf = NaN where the reference gives +-Inf). */
enum { QK_AVX2_SYMMETRIC, QK_AVX2_ASYMMETRIC, QK_AVX2_OFFSETS, QK_AVX2_FORMS };

static inline int qk_avx2_form(int asymmetric, int offsets) {
    return offsets ? QK_AVX2_OFFSETS : asymmetric ? QK_AVX2_ASYMMETRIC : QK_AVX2_SYMMETRIC;
}

/* A8 with offsets: y (eight float64 columns as two vectors) += offset[0..8) * sum, where sum is a
 * group's exact integer sum of qx (one FMA, one float64 rounding, per column). */
QK_AVX2_INLINE void qk_avx2_fold_offsets(__m256d y[2], const float* offset, int32_t sum) {
    __m256 o = _mm256_loadu_ps(offset);
    __m256d s = _mm256_set1_pd((double)sum);
    y[0] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(o)), s, y[0]);
    y[1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(o, 1)), s, y[1]);
}

/* Byte i of every dword moved to the top byte of that dword, the other bytes cleared: a signed
 * byte q becomes the int32 q * 2^24 (a nibble kept in the high half of its byte, q * 2^28), which
 * vcvtdq2ps converts exactly. vpshufb indexes within 128-bit lanes, so dword j of a lane reads byte
 * 4 * j + i; control bytes with bit 7 set write 0. Byte 3 is already on top and only needs the
 * others cleared: a vpand, which any of Zen 3's four vector pipes runs, where vpshufb competes for
 * two of them with the FMAs and conversions (the A16 inner loop alone: 18.6 -> 17.9 cycles). */
QK_AVX2_INLINE __m256i qk_avx2_byte_to_top(__m256i v, int i) {
    if (i == 3) return _mm256_and_si256(v, _mm256_set1_epi32((int32_t)0xFF000000u));
    const __m256i control = _mm256_or_si256(_mm256_setr_epi32(0 << 24, 4 << 24, 8 << 24, 12 << 24, 0 << 24, 4 << 24,
                                                              8 << 24, 12 << 24),
                                            _mm256_set1_epi32((int32_t)(0x00808080u | (uint32_t)i << 24)));
    return _mm256_shuffle_epi8(v, control);
}

/* The power of two qk_avx2_byte_to_top scales weights by: 2^24, or 2^28 for nibbles. */
QK_AVX2_INLINE float qk_avx2_weight_unit(int bits) { return bits == 4 ? 0x1p28f : 0x1p24f; }

/* One packed block's weights as bytes of q (8 bits) or of q * 16 (4 bits): v0 holds k 0..3, v1 k 4..7. */
QK_AVX2_INLINE void qk_avx2_block_bytes(const uint8_t* block, int bits, __m256i* v0, __m256i* v1) {
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

/* What the packed kernels' tiles read. */
typedef struct {
    const qk_matmul_args* a;
    const qk_weights* w;   /* shape only */
    const uint8_t* packed;
    qk_avx2_layout l;
    size_t row;            /* padded activation row length, in elements: groups * blocks * 8 */
    int asymmetric;        /* whether the weights have zero points */
    int offsets;           /* whether they have offsets (in the group headers) */
    float* x;              /* A16: float32 rows */
    int8_t* qx;            /* A8: quantized rows */
    int32_t* sums;         /* A8: [M][groups] sums of qx */
    double* row_scale;     /* [M]: each row's float64 sums are multiplied by it (A16: 1 or 2^s; A8: sx or NaN) */
} qk_avx2_problem;

qk_avx2_problem qk_avx2_problem_of(const qk_kernel_weights* w, const qk_matmul_args* a);

/* A tile: rows [m, m + rows) of X (rows <= 4) times `panels` (1 or 2) panels from `panel` into y:
 * per row, four float64 vectors (columns 0..7 of the first panel, then of the second). */
typedef void qk_avx2_tile_fn(const qk_avx2_problem* p, const uint8_t* panel, int panels, int32_t m, int rows,
                             __m256d* const* y);

/* Fills p->x (A16, when x is set) or p->qx and p->sums (A8), and p->row_scale, on the pool. */
void qk_avx2_prepare_rows(const qk_exec* exec, const qk_avx2_problem* p, size_t group_stride, size_t row);

/* Every tile of the packed weights on the pool, then each result rounded to the output. */
void qk_avx2_run_tiles(const qk_exec* exec, const qk_avx2_problem* p, qk_avx2_tile_fn* tile);

/* Row m's columns [n, n + count) from y: times the row's scale, plus bias, rounded once. */
void qk_avx2_finish(const qk_matmul_args* a, int32_t N, const double* row_scale, int32_t m, int32_t n, int32_t count,
                    double* y);

/* The canonical-layout kernels' per-group parameters of rows [n0, n0 + 8) of W (row N - 1 past N),
 * transposed so that a group's eight are one vector: scale[g * 8 + i], offset[g * 8 + i] unless
 * offset is NULL, and zp[g * 8 + i] (its zero point plus zp_offset) unless zp is NULL. */
void qk_avx2_block_params(const qk_weights* w, int32_t n0, float* scale, float* offset, int32_t* zp, int32_t zp_offset);

/* What the canonical-layout A8 variants share (x86_avx2's a8_c4x8.c, x86_avx512's a8_c2x8.c): a
 * call's staged quantized rows of X, per-thread parameters of a block of 8 rows of W, and the loop
 * that runs a kernel's tiles over the blocks. */
typedef struct qk_avx2_canonical_a8 qk_avx2_canonical_a8;

/* Rows [0, rows) of X (staged, from qx; group sums from sums) times rows [n0, n0 + 8) of W into y[r]
 * (eight float64 columns as two vectors, zero on entry), before the row scale; rows of W past N
 * read row N - 1. scales, offsets and zps: the block's qk_avx2_block_params. */
typedef void qk_avx2_canonical_a8_tile(const qk_avx2_canonical_a8* j, const int8_t* qx, const int32_t* sums,
                                       int32_t n0, const float* scales, const float* offsets, const int32_t* zps,
                                       __m256d (*y)[2]);

struct qk_avx2_canonical_a8 {
    const qk_matmul_args* a;
    const qk_weights* w;
    int asymmetric, offsets;
    int32_t zp_offset;  /* added to the zero points in zp */
    int tile_rows;      /* rows of X per tile (at most 4) */
    qk_avx2_canonical_a8_tile* const* tiles; /* [rows - 1] */
    size_t stride;      /* of groups in a staged row: min(G, K) */
    size_t padded;      /* staged row length: its groups rounded up to the kernel's unit */
    int8_t* qx;         /* [M][padded] staged quantized activations (the kernel's order) */
    int32_t* sums;      /* [M][groups] sums of qx per group */
    double* row_scale;  /* [M]: sx, or NaN for a row holding NaN or Inf */
    float* scale;       /* per thread: [groups][8] a block's scales */
    float* offset;      /* per thread: [groups][8] its offsets, when there are some */
    int32_t* zp;        /* per thread: [groups][8] its zero points + zp_offset, when there are some */
};

/* The workspace of j (staged rows padded to `unit` k, then the per-thread parameters), laid out in
 * base, or only measured with base NULL. Returns its size. */
size_t qk_avx2_canonical_a8_buffers(qk_avx2_canonical_a8* j, int32_t threads, size_t unit, void* base);

/* The call: `stage` (tasks: rows of X) fills qx, sums and row_scale, then every block of 8 rows of W
 * runs j->tiles for every row of X, and each result is rounded to the output. */
void qk_avx2_canonical_a8_run(const qk_exec* exec, const qk_avx2_canonical_a8* j, qk_task_fn* stage);

/* What the canonical-layout A16 variants share (x86_avx2's a16_c4x8.c, x86_avx512's a16_c4x16.c): a
 * call's rows of X staged in a16_c4x8.c's order (units of 32 k at 4 bits, 16 at 8, each as quads
 * of four activations that one broadcast pairs with a unit of W's rows), the float64 sums of the k
 * outside whole units, and the loop over blocks of rows of W with the rounding of their results.
 * Both kernels sum the same terms in the same order: the same bytes (test_matmul's twins). */
typedef struct qk_avx2_canonical_a16 qk_avx2_canonical_a16;

enum { QK_AVX2_A16_MAX_TILE_ROWS = 4, QK_AVX2_A16_MAX_BLOCK = 16 };

/* Rows [0, rows) of X (staged, from x, stride j->padded) times rows [n0, n0 + block_n) of W into
 * y[r][i] (row n0 + i of W), float64 sums in units of 2^-28 (4 bits) or 2^-24 (8 bits): the
 * weights are formed as q * 2^28 or q * 2^24. Rows of W past N read row N - 1. */
typedef void qk_avx2_canonical_a16_tile(const qk_avx2_canonical_a16* j, const float* x, int32_t n0,
                                        double (*y)[QK_AVX2_A16_MAX_BLOCK]);

struct qk_avx2_canonical_a16 {
    const qk_matmul_args* a;
    const qk_weights* w;
    int form;           /* QK_AVX2_SYMMETRIC, _ASYMMETRIC or _OFFSETS */
    int32_t block_n;    /* rows of W per tile (at most QK_AVX2_A16_MAX_BLOCK) */
    int tile_rows;      /* rows of X per tile (at most QK_AVX2_A16_MAX_TILE_ROWS) */
    qk_avx2_canonical_a16_tile* const* tiles; /* [rows - 1], for this call's bits and form */
    size_t stride;      /* of groups in a staged row: min(G, K) */
    size_t padded;      /* staged row length: its groups rounded up to a unit */
    float* x;           /* [M][padded] staged activations */
    double* row_scale;  /* [M] */
};

QK_AVX2_INLINE int32_t qk_avx2_a16_unit_k(int bits) { return bits == 4 ? 32 : 16; }

/* Group g's k [k0, k1): the whole units [u0, u1) and the k before and after them, [k0, head_end)
 * and [tail_start, k1). */
typedef struct {
    int32_t g, k0, k1, u0, u1, head_end, tail_start;
} qk_avx2_a16_group;

QK_AVX2_INLINE qk_avx2_a16_group qk_avx2_a16_group_of(const qk_weights* w, int32_t g) {
    int32_t U = qk_avx2_a16_unit_k(w->bits), k0 = g * w->group_size;
    qk_avx2_a16_group s = {.g = g, .k0 = k0, .k1 = w->K - k0 < w->group_size ? w->K : k0 + w->group_size};
    s.u0 = (s.k0 + U - 1) / U;
    s.u1 = s.k1 / U;
    s.head_end = s.u0 < s.u1 ? s.u0 * U : s.k1;
    s.tail_start = s.u0 < s.u1 ? s.u1 * U : s.k1;
    return s;
}

/* The sum over group s's k outside whole units of staged row x times row n of W, in float64 and
 * in the kernels' units: times scale * unit (times unit with offsets, whose weights hold the scale). */
double qk_avx2_canonical_a16_edge(const qk_avx2_canonical_a16* j, qk_avx2_a16_group s, const float* x, int32_t n);

/* The workspace of both variants (staged rows, then row scales). */
size_t qk_avx2_canonical_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);

/* The call: the rows of X staged (tasks: rows), then every block of block_n rows of W runs
 * tiles[rows - 1] (tile_rows rows of X at a time; tiles: the kernel's, for the weights' bits and
 * form) for every row of X (tasks: blocks), and each result is rounded to the output. */
qk_status qk_avx2_canonical_a16_run(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a,
                                    int32_t block_n, int tile_rows, qk_avx2_canonical_a16_tile* const* tiles);

/* ---- the kernels (one file each; register.c lists them) ---- */

size_t qk_avx2_a16_4x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx2_a16_4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
size_t qk_avx2_a16_6x16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx2_a16_6x16(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
size_t qk_avx2_a8_4x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx2_a8_4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
qk_status qk_avx2_a16_c4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
size_t qk_avx2_a8_c4x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx2_a8_c4x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);

#endif /* QK_AVX2_H */
