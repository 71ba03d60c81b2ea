/* The x86_avx512 backend (AVX-512 F/BW/VL/DQ + VNNI): what its kernels share.
 *
 * Files: layout.h and pack.c are the vnni16 pack (shared with x86_amx); driver.c prepares rows of X
 * and runs tiles on the thread pool; a8.c is the A8 kernel (vpdpbusd; one tile for decode and prefill),
 * a8_c2x8.c its variant on the canonical layout (stateless calls at small M), a16.c the A16 kernel
 * (AVX-512 FMA) and a16_8x32.c its form above M = 16, a16_c4x16.c its variant on the canonical
 * layout, a16_bf16.c the A16 kernel for float16 and
 * bfloat16 input and 4-bit weights (AVX512-BF16 dot products) and a16_bf16_c2x4.c its canonical
 * variant (the two files built for AVX512-BF16); register.c is the kernel table. Rows of X
 * are read and quantized, and results rounded to the output dtype, by the x86_avx2 backend's
 * activation code (x86_avx2/activations.c): the same logic, and every machine with AVX-512 has AVX2.
 *
 * The emulated test build (CMake QK_EMULATE_X86) compiles these files without AVX-512: the
 * intrinsics then come from SIMDe, plus native/tests/emulation/simde_shims.h for names SIMDe lacks. */
#ifndef QK_AVX512_H
#define QK_AVX512_H

#ifdef QK_EMULATE_X86
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include "simde_shims.h"
#else
#include <immintrin.h>
#endif

#include <string.h>

#include "../x86_avx2/avx2.h"
#include "layout.h"

#define QK_AVX512_INLINE static inline __attribute__((always_inline))

enum {
    QK_AVX512_TILE_COLUMNS = 2 * QK_VNNI16_PANEL, /* a tile spans two panels */
    QK_AVX512_MAX_TILE_ROWS = 8,
};

/* Data row i of a group (from qk_vnni16_group), prefetching the panel's stream ahead. */
QK_AVX512_INLINE __m512i qk_avx512_load_row(const uint8_t* group, const qk_vnni16_layout* l, ptrdiff_t i) {
    const uint8_t* data = group + l->header_bytes + i * QK_VNNI16_ROW_BYTES;
    _mm_prefetch((const char*)data + QK_VNNI16_PREFETCH_BYTES, _MM_HINT_T0);
    return _mm512_load_si512((const void*)data);
}

/* A group's zero[16] (zp + bias) as int32 lanes: its header line, or the bias (no zero points). */
QK_AVX512_INLINE __m512i qk_avx512_zero(const uint8_t* group, const qk_vnni16_layout* l) {
    return l->zeros_at ? _mm512_load_si512((const void*)(group + l->zeros_at)) : _mm512_set1_epi32(l->bias);
}

/* A group's offset[16], or 0 (no offsets). */
QK_AVX512_INLINE __m512 qk_avx512_offset(const uint8_t* group, const qk_vnni16_layout* l) {
    return l->offsets_at ? _mm512_load_ps((const float*)(group + l->offsets_at)) : _mm512_setzero_ps();
}

/* The canonical-layout variants (a8_c2x8.c, a16_bf16_c2x4.c) read rows of W 64 bytes at a time. Where
 * K cuts a row's last chunk short, they read it from copies that are zero past the row's end: the
 * last chunks of `rows` rows of row_bytes each, into last[0 .. rows) (nothing to do without one). */
QK_AVX512_INLINE void qk_avx512_short_chunks(uint8_t (*last)[64], const uint8_t* const* row, int rows, size_t row_bytes) {
    size_t start = row_bytes / 64 * 64;
    if (start == row_bytes) return;
    for (int c = 0; c < rows; c++) {
        memset(last[c], 0, 64);
        memcpy(last[c], row[c] + start, row_bytes - start);
    }
}

/* A small integer as bfloat16 bits (exact up to 256 in magnitude): the weight tables of the AVX512-BF16
 * kernels (a16_bf16.c, a16_bf16_c2x4.c). */
static inline uint16_t qk_avx512_bf16_of_int(int integer) {
    float value = (float)integer;
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return (uint16_t)(bits >> 16);
}

/* The top bfloat16 part of each float32 lane of *rest: its bits with the low 16 cleared (a NaN gets
 * its quiet bit set first: a signalling NaN's payload may lie in the low 16 bits alone, and its top
 * half would read as an infinity); *rest becomes what is left, exactly, or 0 where it was not
 * finite. Taken once per part it splits x into exact bfloat16 parts (docs/numerics.md reading 21): one for a bfloat16 value, two for float16 (11 significant bits), three for float32
 * (24). The parts of x86_amx's A16 kernel and of the AVX512-BF16 kernels. */
QK_AVX512_INLINE __m512i qk_avx512_bf16_part(__m512* rest) {
    __m512i bits = _mm512_castps_si512(*rest);
    bits = _mm512_mask_or_epi32(bits, _mm512_cmp_ps_mask(*rest, *rest, _CMP_UNORD_Q), bits, _mm512_set1_epi32(0x00400000));
    __m512i top = _mm512_and_si512(bits, _mm512_set1_epi32((int)0xFFFF0000u));
    __m512 left = _mm512_sub_ps(*rest, _mm512_castsi512_ps(top));
    *rest = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(left, left, _CMP_ORD_Q), left);
    return top;
}

/* How many bfloat16 parts an activation of this dtype takes: 1 (bfloat16), 2 (float16), 3 (float32). */
static inline int qk_avx512_bf16_parts(qk_dtype dtype) {
    return dtype == QK_DTYPE_BF16 ? 1 : dtype == QK_DTYPE_F16 ? 2 : 3;
}

/* What the tiles read. */
typedef struct {
    const qk_matmul_args* a;
    const qk_weights* w;   /* shape only */
    const uint8_t* packed;
    qk_vnni16_layout l;
    size_t group_stride;   /* activations per group, padded: rows * k_per_row */
    size_t row;            /* padded activation row: groups * group_stride */
    int asymmetric;        /* the weights have zero points */
    int has_offsets;
    float* x;              /* A16: float32 rows (or their bfloat16 parts, a16_bf16.c), x_row apart */
    size_t x_row;          /* A16: row, or 1.5 row for three bfloat16 parts (set before qk_avx512_buffers) */
    int8_t* qx;            /* A8: quantized rows */
    int32_t* sums;         /* A8: [M][groups] sums of qx */
    double* row_scale;     /* [M]: each row's float64 sums are multiplied by it (A16: 1 or 2^s; A8: sx or NaN) */
    void (*rewrite_row)(float* row, size_t n); /* A16: applied to each float32 row (n = row) once loaded, or NULL */
} qk_avx512_problem;

qk_avx512_problem qk_avx512_problem_of(const qk_kernel_weights* w, const qk_matmul_args* a);

/* The workspace (rows of X as float32 for A16, else quantized with their group sums; the row
 * scales), measured with base NULL, else laid out in base. Returns its size. */
size_t qk_avx512_buffers(qk_avx512_problem* p, int a16, void* base);

/* Fills p->x (A16, when set; then p->rewrite_row) or p->qx and p->sums (A8), and p->row_scale, on the
 * pool. */
void qk_avx512_prepare_rows(const qk_exec* exec, const qk_avx512_problem* p);

/* A tile: rows [m, m + rows) of X times `panels` (1 or 2) panels from `panel`, added to y[r * 32 + c]
 * (float64, before the row scale). */
typedef void qk_avx512_tile_fn(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int rows, double* y);

/* Every tile on the pool, tile_rows (<= QK_AVX512_MAX_TILE_ROWS) rows at a time, then each result
 * rounded to the output. */
void qk_avx512_run_tiles(const qk_exec* exec, const qk_avx512_problem* p, int tile_rows, qk_avx512_tile_fn* tile);

/* Rows [m, m + rows) of the output, columns of `panels` panels from `panel`, from y[r * 32 + c]
 * (float64 sums before the row scale): times the row's scale, plus bias, rounded once. */
void qk_avx512_finish_rows(const qk_avx512_problem* p, int32_t panel, int panels, int32_t m, int32_t rows,
                           double* y);

/* The tasks of driver.c's tiles and a16_8x32.c: task t is one pair of panels, t % pairs, for the
 * rows [m0, m1) of chunk t / pairs (chunks of chunk_rows rows). A pair is two panels, or one where
 * N ends (qk_avx512_pair_panels, which x86_amx's tasks use too). */
typedef struct {
    int32_t panel, m0, m1;
    int panels;
} qk_avx512_task;

QK_AVX512_INLINE int qk_avx512_pair_panels(const qk_vnni16_layout* l, int32_t panel) {
    return l->panels - panel < 2 ? 1 : 2;
}

QK_AVX512_INLINE qk_avx512_task qk_avx512_task_of(const qk_avx512_problem* p, int32_t chunk_rows, int32_t t) {
    int32_t pairs = (p->l.panels + 1) / 2, M = p->a->M;
    qk_avx512_task k = {.panel = 2 * (t % pairs), .m0 = t / pairs * chunk_rows};
    k.m1 = M - k.m0 < chunk_rows ? M : k.m0 + chunk_rows;
    k.panels = qk_avx512_pair_panels(&p->l, k.panel);
    return k;
}

/* fn(arg, begin, end, thread) over every task, on the pool, in grains of a few tens of microseconds. */
void qk_avx512_run_tasks(const qk_exec* exec, const qk_avx512_problem* p, int32_t chunk_rows, qk_task_fn* fn,
                         void* arg);

/* Float32 runs (docs/numerics.md readings 20 and 21): terms summed in float32 over runs of at most
 * `length` consecutive terms, each run then added to a float64 sum. Where term i of n stands: */
typedef struct {
    int first, last;
} qk_run_step;

QK_AVX512_INLINE qk_run_step qk_run_step_of(int32_t i, int32_t n, int32_t length) {
    qk_run_step s = {i % length == 0, i % length == length - 1 || i == n - 1};
    return s;
}

/* The run's 16 sums plus a * b (just a * b where the run starts). */
QK_AVX512_INLINE __m512 qk_avx512_run_fma(qk_run_step s, __m512 a, __m512 b, const float* run) {
    return s.first ? _mm512_mul_ps(a, b) : _mm512_fmadd_ps(a, b, _mm512_load_ps(run));
}

/* y[0..15] += v, in float64. */
QK_AVX512_INLINE void qk_avx512_add_f64(double* y, __m512 v) {
    _mm512_storeu_pd(y, _mm512_add_pd(_mm512_loadu_pd(y), _mm512_cvtps_pd(_mm512_castps512_ps256(v))));
    _mm512_storeu_pd(y + 8, _mm512_add_pd(_mm512_loadu_pd(y + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
}

/* A16 across groups (docs/numerics.md readings 19 and 24): a panel's data rows, group by group,
 * in chunks of at most chunk_k k (QK_AVX512_CHUNK_K, or 64 in a16_8x32.c); each chunk's float32
 * chains are summed, times the group's scale, into a float32 run of at most QK_AVX512_RUN_CHUNKS
 * chunks, and each run into the float64 sums. A chunk is group g's data rows [i0, i1). */
enum { QK_AVX512_CHUNK_K = 128, QK_AVX512_RUN_CHUNKS = 16 };

typedef struct {
    int32_t g;
    ptrdiff_t i0, i1;
} qk_avx512_chunk;

QK_AVX512_INLINE qk_avx512_chunk qk_avx512_chunk_at(const qk_vnni16_layout* l, int32_t chunk_k, int32_t g, ptrdiff_t i0) {
    ptrdiff_t rows = chunk_k / l->k_per_row;
    qk_avx512_chunk c = {g, i0, l->rows - i0 < rows ? l->rows : i0 + rows};
    return c;
}

QK_AVX512_INLINE qk_avx512_chunk qk_avx512_next_chunk(const qk_vnni16_layout* l, int32_t chunk_k, qk_avx512_chunk c) {
    return c.i1 == l->rows ? qk_avx512_chunk_at(l, chunk_k, c.g + 1, 0) : qk_avx512_chunk_at(l, chunk_k, c.g, c.i1);
}

/* The A16 FMA kernels' weights (a16.c, a16_8x32.c), 16 columns of a data row at a time, as float32
 * q - zp exactly (a16_c4x16.c looks its canonical units' nibbles up the same way, in its own table):
 *   4 bits  a shift brings k's nibble to the bottom of each column's dword and vpermps looks it up
 *           in a 16-entry table (qk_avx512_a16_values), which reads only the index's low 4 bits (no
 *           mask, no conversion): u - 8 = q for symmetric weights, else u, minus zero (= zp + 8).
 *   8 bits  the row's bytes xor 0x80 are q (u = q + 128); a left and an arithmetic right shift
 *           sign-extend k's byte, one vcvtdq2ps, minus zp for asymmetric weights. */
QK_AVX512_INLINE __m512 qk_avx512_a16_values(int asymmetric) {
    return _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_ps(asymmetric ? 0.0f : 8.0f));
}

/* What is left to subtract from a group's weights: zp + 8 (4 bits) or zp (8 bits). */
QK_AVX512_INLINE __m512 qk_avx512_a16_zero(const uint8_t* group, const qk_vnni16_layout* l, int bits) {
    __m512 zero = _mm512_cvtepi32_ps(qk_avx512_zero(group, l));
    return bits == 8 ? _mm512_sub_ps(zero, _mm512_set1_ps(128.0f)) : zero;
}

/* A data row as the weight helper reads it: 8 bits, its bytes made q. */
QK_AVX512_INLINE __m512i qk_avx512_a16_row(const uint8_t* group, const qk_vnni16_layout* l, ptrdiff_t i, int bits) {
    __m512i v = qk_avx512_load_row(group, l, i);
    return bits == 8 ? _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80)) : v;
}

/* k 8i + t (4 bits; 4i + t at 8 bits) of data row i (v) as q - zp. */
QK_AVX512_INLINE __m512 qk_avx512_a16_weight(int bits, int asymmetric, __m512i v, int t, __m512 values, __m512 zero) {
    __m512 w;
    if (bits == 4) { /* k 8i + t sits at bit 8 (t % 4) + 4 (t / 4) of its column's dword */
        const unsigned shift = 8 * (t % 4) + 4 * (t / 4);
        w = _mm512_permutexvar_ps(shift ? _mm512_srli_epi32(v, shift) : v, values);
    } else {
        __m512i top = t == 3 ? v : _mm512_slli_epi32(v, 24 - 8 * t);
        w = _mm512_cvtepi32_ps(_mm512_srai_epi32(top, 24));
    }
    return asymmetric ? _mm512_sub_ps(w, zero) : w; /* q - zp, exact */
}

/* A tile's runs, run[r][pi], added to its float64 sums y[r * 32 + pi * 16 ...]. */
QK_AVX512_INLINE void qk_avx512_add_runs(double* y, __m512 (*run)[2], int rows, int panels) {
    for (int r = 0; r < rows; r++)
        for (int pi = 0; pi < panels; pi++)
            qk_avx512_add_f64(y + r * QK_AVX512_TILE_COLUMNS + pi * QK_VNNI16_PANEL, run[r][pi]);
}

/* v stored as run[0..15], or, where the run ends, added to y[0..15] (float64) instead. */
QK_AVX512_INLINE void qk_avx512_run_end(qk_run_step s, __m512 v, float* run, double* y) {
    if (s.last) {
        qk_avx512_add_f64(y, v);
    } else {
        _mm512_store_ps(run, v);
    }
}

/* A8 across groups, the same values in the x86_avx512 and x86_amx kernels (reading 20): acc * scale
 * (+ offset * xs) in runs of at most 14 groups, 7 with offsets. x86_avx512's tile loops over runs
 * (a8.c); x86_amx's fold takes a step at a time. */
QK_AVX512_INLINE int32_t qk_a8_run_groups(int has_offsets) { return has_offsets ? 7 : 14; }

QK_AVX512_INLINE qk_run_step qk_a8_run_step_of(int32_t g, int32_t groups, int has_offsets) {
    return qk_run_step_of(g, groups, qk_a8_run_groups(has_offsets));
}

/* A run's 16 values plus one group's, acc * scale (+ offset * xs): the operations of both A8 kernels. */
QK_AVX512_INLINE __m512 qk_avx512_a8_add(__m512 run, int has_offsets, __m512i acc, __m512 scale, __m512 offset,
                                         int32_t xs) {
    __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, run);
    return has_offsets ? _mm512_fmadd_ps(offset, _mm512_set1_ps((float)xs), v) : v;
}

/* Group g's 16 results of one row into its run and float64 sums (a run starts from +0: reading 20). */
QK_AVX512_INLINE void qk_avx512_a8_fold(qk_run_step s, int has_offsets, __m512i acc, __m512 scale, __m512 offset,
                                        int32_t xs, float* run, double* y) {
    __m512 v = qk_avx512_a8_add(s.first ? _mm512_setzero_ps() : _mm512_load_ps(run), has_offsets, acc, scale, offset, xs);
    qk_avx512_run_end(s, v, run, y);
}

/* ---- the kernels ---- */

size_t qk_avx512_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx512_a8_8x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
/* The canonical-layout A8 variants (a8_c2x8.c: c2x8 and g32_c2x8, one function), for stateless calls. */
size_t qk_avx512_a8_c2x8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx512_a8_w4w8_vnni_c2x8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
size_t qk_avx512_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx512_a16_4x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
/* A16 with each task's weights formed once (a16_8x32.c), above M = 16. */
size_t qk_avx512_a16_8x32_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx512_a16_8x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
/* The canonical-layout A16 FMA variant for 4-bit weights (a16_c4x16.c), for stateless calls: x86_avx2's
 * c4x8, twice as wide. */
qk_status qk_avx512_a16_w4_c4x16(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
/* AVX512-BF16 (a16_bf16.c): float16 and bfloat16 input (QK_AVX512_BF16_DTYPES; float32 in three
 * parts on its bf16x3 line), 4-bit weights without offsets; the CPU feature it needs beyond the
 * backend's (none in the emulated build, where SIMDe provides it). */
#define QK_AVX512_BF16_DTYPES ((1u << QK_DTYPE_F16) | (1u << QK_DTYPE_BF16))
#ifdef QK_EMULATE_X86
#define QK_AVX512_BF16_CPU 0
#else
#define QK_AVX512_BF16_CPU (1ull << QK_CPU_AVX512_BF16)
#endif
size_t qk_avx512_a16_bf16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx512_a16_w4_bf16_2x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
/* Its canonical-layout variant (a16_bf16_c2x4.c, also built with AVX512-BF16), for stateless calls. */
size_t qk_avx512_a16_bf16_c2x4_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_avx512_a16_w4_bf16_c2x4(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);

#endif /* QK_AVX512_H */
