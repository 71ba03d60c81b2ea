/* The vnni16 pack: the weight layout shared by the x86_avx512 and x86_amx backends (issue 16: tiles
 * of 16 rows x 64 bytes, VNNI order), so that one packed weight serves the AVX-512 decode kernels
 * and the AMX prefill kernels. pack.c makes it (plain C: either backend links it).
 *
 * Output features (rows n of W) are cut into panels of 16 columns, one zmm of int32 or float32
 * lanes; the last panel is padded with zero columns. A panel stores its NG = ceil(K / G) groups one
 * after the other, each a header followed by its data rows:
 *
 *   header  float scale[16], 64 bytes; then int32_t zero[16] (64 more) only when the weights have
 *           zero points (without them zero = bias for every column: a line of constants would be
 *           6% of a 4-bit g128 pack, read on every call); then float offset[16] (64 more) only
 *           when they have offsets. w = scale * (u - zero) + offset, zero = zp + bias.
 *   rows    rows_per_group rows of 64 bytes, ceil(min(G, K) / 4) (8 bits) or ceil(min(G, K) / 8)
 *           (4 bits), for every group, the shorter last one included.
 *
 * Weights are stored unsigned, u = q + bias with bias 128 (8 bits) or 8 (4 bits), so that they are
 * the unsigned operand of vpdpbusd (AVX-512) and tdpbsud (AMX): per group,
 * sum qx * (q - zp) = sum qx * u - zero * sum qx.
 *   8 bits  row r holds k 4r .. 4r+3: byte 4j + i = u[column j][k 4r + i]. This is VNNI order
 *           [K/4][16][4]: one row is one zmm for vpdpbusd and one row of an AMX B tile.
 *   4 bits  row r holds k 8r .. 8r+7: byte 4j + i = u[j][8r + i] | u[j][8r + 4 + i] << 4, so that
 *           (row & 0x0F) is the VNNI row of k 8r .. 8r+3 and (row >> 4) & 0x0F that of 8r+4 .. 8r+7.
 * k beyond a group's end (the padding of its last row, or the rest of a shorter last group) holds
 * the group's zero (q = zp: its A16 weight is the offset, finite, where q = 0 or u = 0 could form
 * one past float32's range), padded columns u = 0 (scale 0); kernels pad activations with zeros
 * there, so padding adds nothing. Headers and rows are 64-byte aligned. */
#ifndef QK_VNNI16_LAYOUT_H
#define QK_VNNI16_LAYOUT_H

#include "../core/internal.h"

enum {
    QK_VNNI16_PANEL = 16,       /* columns per panel */
    QK_VNNI16_ROW_BYTES = 64,   /* bytes of a data row: 16 columns x 4 bytes */
    QK_VNNI16_LINE = 64,        /* one header line: scale[16], zero[16] or offset[16] */
    /* Kernels prefetch this far ahead of each panel's weight stream, and a pack's allocation
     * extends this far past its last panel, so that the address prefetched stays inside it (a
     * pointer past the end of an object is undefined in C, though a prefetch cannot fault). At
     * M = 1, 4096 x 14336, 4-bit, without the prefetch A8 took 1.07-1.15x and A16 2.1x the time;
     * 4096 bytes ahead changed nothing. */
    QK_VNNI16_PREFETCH_BYTES = 2048,
};

typedef struct {
    int32_t panels, groups;
    int32_t rows;           /* data rows per group */
    int32_t k_per_row;      /* 4 (8 bits) or 8 (4 bits) */
    int32_t bias;           /* u = q + bias: 128 or 8 */
    size_t zeros_at;        /* where a header's zero[16] is, or 0: symmetric weights, zero = bias */
    size_t offsets_at;      /* where its offset[16] is, or 0: no offsets */
    size_t header_bytes;    /* 64 to 192: the lines above */
    size_t group_bytes;     /* header + rows */
    size_t panel_bytes;
} qk_vnni16_layout;

/* has_zero_points, has_offsets: whether the weights have them (a kernel's qk_kernel_weights says so;
 * its format's array pointers are NULL). */
static inline qk_vnni16_layout qk_vnni16_layout_of(const qk_weights* w, int has_zero_points, int has_offsets) {
    qk_vnni16_layout l;
    int32_t span = w->group_size < w->K ? w->group_size : w->K; /* G > K: one group of K */
    l.panels = (w->N + QK_VNNI16_PANEL - 1) / QK_VNNI16_PANEL;
    l.groups = qk_groups_per_row(w);
    l.k_per_row = w->bits == 4 ? 8 : 4;
    l.rows = (span + l.k_per_row - 1) / l.k_per_row;
    l.bias = w->bits == 4 ? 8 : 128;
    l.zeros_at = has_zero_points ? QK_VNNI16_LINE : 0;
    l.offsets_at = has_offsets ? QK_VNNI16_LINE * (has_zero_points ? 2 : 1) : 0;
    l.header_bytes = QK_VNNI16_LINE * (1 + (has_zero_points ? 1 : 0) + (has_offsets ? 1 : 0));
    l.group_bytes = l.header_bytes + (size_t)l.rows * QK_VNNI16_ROW_BYTES;
    l.panel_bytes = (size_t)l.groups * l.group_bytes;
    return l;
}

/* Where group g of panel p starts; its rows start header_bytes later. */
static inline const uint8_t* qk_vnni16_group(const void* packed, const qk_vnni16_layout* l, int32_t p, int32_t g) {
    return (const uint8_t*)packed + (size_t)p * l->panel_bytes + (size_t)g * l->group_bytes;
}

/* Packs canonical weights (any valid format) into the layout above, on the thread pool; *data
 * (*size bytes, allocated with QK_VNNI16_PREFETCH_BYTES more) is freed with qk_aligned_free. The
 * backends' pack function. */
qk_status qk_vnni16_pack(const qk_weights* weights, void** data, size_t* size);

#endif /* QK_VNNI16_LAYOUT_H */
