/* The x86 AVX2 backend: its weight layout, made by qk_avx2_pack and read by both kernels.
 *
 * Output features (rows n of W) are cut into panels of 8, one 256-bit register of int32 or float32
 * lanes; the last panel is padded with zero columns. A panel stores its groups one after the other,
 * each group as a 64-byte header followed by ceil(G / 8) blocks of 8 columns x 8 k (k beyond G is
 * zero padding):
 *
 *   header   float scale[8]; int32_t zero_point[8];      per column: w = scale * (q - zero_point)
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

#include "../core/internal.h"

enum {
    QK_AVX2_PANEL = 8,      /* columns per panel */
    QK_AVX2_BLOCK_K = 8,    /* k per block */
    QK_AVX2_HEADER = 64, /* bytes of a group header */
};

typedef struct {
    int32_t panels, groups;
    int32_t blocks;      /* blocks per group: ceil(G / 8) */
    size_t block_bytes;  /* 32 (4 bits) or 64 (8 bits) */
    size_t group_bytes;  /* header + blocks */
    size_t panel_bytes;
} qk_avx2_layout;

static inline qk_avx2_layout qk_avx2_layout_of(const qk_weights* w) {
    qk_avx2_layout l;
    l.panels = (w->N + QK_AVX2_PANEL - 1) / QK_AVX2_PANEL;
    l.groups = qk_groups_per_row(w);
    l.blocks = (w->group_size - 1) / QK_AVX2_BLOCK_K + 1;
    l.block_bytes = w->bits == 4 ? 32 : 64;
    l.group_bytes = QK_AVX2_HEADER + (size_t)l.blocks * l.block_bytes;
    l.panel_bytes = (size_t)l.groups * l.group_bytes;
    return l;
}

/* The k-padded activations both kernels read: row m, group g starts at m * row + g * blocks * 8. */
static inline size_t qk_avx2_padded_row(const qk_avx2_layout* l) {
    return (size_t)l->groups * (size_t)l->blocks * QK_AVX2_BLOCK_K;
}

qk_status qk_avx2_pack(const qk_weights* weights, void** data, size_t* size);

/* Loads X's row m as float32 into out, each group padded with zeros to a whole number of blocks.
 * Returns the largest |X[m, k]| that is not NaN. */
float qk_avx2_load_row(const qk_matmul_args* a, const qk_weights* w, int32_t m, float* out);

/* The A8 activation quantizer (docs/numerics.md section 3) for row m into the padded layout: qx
 * (zero padded), the per-group sums of qx, and sx. Returns 0 when the row holds NaN or Inf: its
 * outputs are NaN, and its qx and sums are zeros. */
int qk_avx2_quantize_row(const qk_matmul_args* a, const qk_weights* w, int32_t m, int8_t* qx,
                         int32_t* group_sums, float* sx);

/* The output row's columns [n, n + count) from float64 results (one rounding to the dtype). */
void qk_avx2_store(const qk_matmul_args* a, int32_t N, int32_t m, int32_t n, int32_t count, const double* y);

qk_status qk_avx2_matmul_a8(const qk_packed_weights* weights, const qk_matmul_args* args);
qk_status qk_avx2_matmul_a16(const qk_packed_weights* weights, const qk_matmul_args* args);
qk_status qk_avx2_matmul_a16_gemm(const qk_packed_weights* weights, const qk_matmul_args* args);

#endif /* QK_AVX2_H */
