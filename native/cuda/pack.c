/*
 * The CUDA backend's device pack: canonical weights rewritten so that each global load of the
 * kernels is 16 bytes, coalesced, and lands in a lane's registers as the mma.sync B fragments it
 * needs, with the integers stored so that the lop3 / prmt "magic number" conversions apply.
 *
 * Two parts, weights then metadata (sizes in layout.h):
 *
 * Weights: [n block (256 columns)][k tile (32)][k16 (2)][warp (4, 64 columns each)][unit]. One unit
 * is what one warp needs for one m16n8k16 step over its 64 columns: eight n8 blocks j, each a B
 * fragment of two registers r (k = 2t + 8r + e, e = 0, 1, at column n = 8j + g; lane = 4g + t, the
 * PTX ISA's fragment layout of mma.m16n8k16). A unit is 32 lanes x 16 bytes, lane after lane, so
 * that a warp reads it with one conflict-free 16-byte shared-memory load per lane (two for 8-bit),
 * and a stage (a k tile of a block) is one contiguous run of global memory that cp.async copies in
 * 16-byte pieces.
 *   4-bit: u = q + 8 (0..15). Lane word i (of 4) holds n8 blocks 2i and 2i + 1; output o = 2(j % 2)
 *     + r takes its element e from the nibble at bit 4o + 16e. Shifting the word right by 4o and
 *     masking with 0x000F000F leaves both elements of one register in the low bits of the two
 *     16-bit halves, where OR-ing 0x6400 (float16 1024.0, whose unit in the last place is 1) makes
 *     each half the float16 value 1024 + u exactly: one lop3, no integer-to-float conversion.
 *   8-bit: u = q + 128 (0..255). Two pieces of 32 lanes x 16 bytes; lane word i of piece p is n8
 *     block j = 4p + i, element (r, e) in byte r + 2e, so that prmt with 0x64 bytes builds
 *     1024 + u for register r from bytes r and r + 2.
 * The A8 kernel (a8.cu) reads the same units as its m16n8k32 B fragments: a dot product does not
 * depend on the order of k as long as the activations use the same order, and its quantizer stores
 * activations in that order (see a8.cu).
 *
 * Metadata: [n block][group][region][256 floats]: region 0 the scales, then (zero points given) the
 * zeros z = zp + 8 or zp + 128 (the same offset as u, so u - z = q - zp), then (offsets given)
 * the offsets. Within a region, float 64w + 8g + j is column 64w + 8j + g: lanes 4g..4g+3 of warp w
 * read their eight columns as two 16-byte loads.
 *
 * Columns past N and k past K are padding: u = z (weight 0), scale 0, offset 0. The activations
 * there are zero too (cp.async zero-fills them).
 */
#include <string.h>

#include "kernels.h"
#include "layout.h"

/* q[n, k] of canonical weights, signed; low nibble first for 4 bits. */
static int32_t canonical_q(const qk_weights* w, int32_t n, int32_t k) {
    const int8_t* row = w->data + (size_t)n * (size_t)(w->bits == 8 ? w->K : w->K / 2);
    if (w->bits == 8) return row[k];
    int32_t nibble = (k & 1) ? ((uint8_t)row[k >> 1] >> 4) : ((uint8_t)row[k >> 1] & 0xF);
    return nibble >= 8 ? nibble - 16 : nibble;
}

static int32_t canonical_groups(const qk_weights* w) { return (w->K + w->group_size - 1) / w->group_size; }

/* u = q + bias (8 or 128) of column n, element k; padding holds its zero: weight 0. */
static uint32_t stored_u(const qk_weights* w, int32_t n, int32_t k) {
    int32_t bias = w->bits == 8 ? 128 : 8;
    if (n >= w->N || k >= w->K) {
        int32_t g = n < w->N && w->zero_points ? (w->K - 1) / w->group_size : -1;
        return (uint32_t)(bias + (g >= 0 ? w->zero_points[(size_t)n * canonical_groups(w) + g] : 0));
    }
    return (uint32_t)(canonical_q(w, n, k) + bias);
}

size_t qk_cuda_packed_bytes(const qk_weights* weights) {
    qk_cuda_layout l;
    if (!qk_cuda_layout_of(weights, weights->zero_points != NULL, weights->offsets != NULL, &l)) return 0;
    return l.bytes;
}

/* One unit (see above) of n block b, k16 step s (global), warp w. */
static void write_unit(const qk_weights* w, int32_t b, int32_t s, int32_t warp, uint8_t* unit) {
    for (int32_t lane = 0; lane < 32; lane++) {
        int32_t g = lane / 4, t = lane % 4;
        int32_t n0 = b * QK_CUDA_BLOCK_N + warp * QK_CUDA_WARP_N + g, k0 = s * 16 + 2 * t;
        if (w->bits == 4) {
            uint32_t words[4] = {0, 0, 0, 0};
            for (int32_t j = 0; j < 8; j++)
                for (int32_t r = 0; r < 2; r++)
                    for (int32_t e = 0; e < 2; e++) {
                        int32_t o = 2 * (j % 2) + r;
                        words[j / 2] |= stored_u(w, n0 + 8 * j, k0 + 8 * r + e) << (4 * o + 16 * e);
                    }
            memcpy(unit + lane * 16, words, 16);
        } else {
            for (int32_t j = 0; j < 8; j++)
                for (int32_t r = 0; r < 2; r++)
                    for (int32_t e = 0; e < 2; e++)
                        unit[(j / 4) * 512 + lane * 16 + (j % 4) * 4 + r + 2 * e] =
                            (uint8_t)stored_u(w, n0 + 8 * j, k0 + 8 * r + e);
        }
    }
}

qk_status qk_cuda_pack_host(const qk_weights* w, void* host_out) {
    qk_cuda_layout l;
    if (!qk_cuda_layout_of(w, w->zero_points != NULL, w->offsets != NULL, &l))
        return qk_fail(QK_ERR_UNSUPPORTED,
                       "the CUDA pack needs a group size that is a multiple of %d or at least K (got %d, K=%d)",
                       QK_CUDA_GROUP_MULTIPLE, w->group_size, w->K);
    uint8_t* out = host_out;
    size_t unit_bytes = (size_t)128 * (size_t)w->bits; /* 32 lanes x 16 bytes x bits / 4 */
    for (int32_t b = 0; b < l.n_blocks; b++)
        for (int32_t s = 0; s < 2 * l.k_tiles; s++)
            for (int32_t warp = 0; warp < 4; warp++)
                write_unit(w, b, s, warp, out + (((size_t)b * 2 * l.k_tiles + s) * 4 + warp) * unit_bytes);

    float* meta = (float*)(out + l.meta_offset);
    int32_t NG = canonical_groups(w), bias = w->bits == 8 ? 128 : 8;
    for (int32_t b = 0; b < l.n_blocks; b++)
        for (int32_t g = 0; g < l.groups; g++) {
            float* region = meta + ((size_t)b * l.groups + g) * l.meta_regions * QK_CUDA_BLOCK_N;
            for (int32_t i = 0; i < QK_CUDA_BLOCK_N; i++) {
                int32_t warp = i / 64, lane_group = i % 64 / 8, j = i % 8;
                int32_t n = b * QK_CUDA_BLOCK_N + warp * QK_CUDA_WARP_N + 8 * j + lane_group;
                size_t at = (size_t)n * NG + g;
                int real = n < w->N, r = 1;
                region[i] = real ? w->scales[at] : 0.0f;
                if (w->zero_points) region[r++ * QK_CUDA_BLOCK_N + i] = (float)(bias + (real ? w->zero_points[at] : 0));
                if (w->offsets) region[r * QK_CUDA_BLOCK_N + i] = real ? w->offsets[at] : 0.0f;
            }
        }
    return QK_OK;
}
