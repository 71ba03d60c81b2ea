/*
 * The device pack's geometry, shared by the pack (pack.c, host C) and the kernels (a16.cu, a8.cu,
 * host and device code). The bytes themselves are described where they are written, in pack.c.
 *
 * Everything depends only on the canonical format's N, K, G, bits and whether zero points and
 * offsets are present: the host side of a kernel recomputes it from qk_kernel_weights, so the
 * pack carries no header the host would have to read back from the device.
 */
#ifndef QK_CUDA_LAYOUT_H
#define QK_CUDA_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "qkernels.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    QK_CUDA_BLOCK_N = 256,  /* columns of one block of the pack (and of one thread block): 4 warps of 64 */
    QK_CUDA_WARP_N = 64,    /* columns of one warp: eight n8 blocks of mma */
    QK_CUDA_TILE_K = 32,    /* k of one pipeline stage; group sizes are multiples of it */
    QK_CUDA_GROUP_MULTIPLE = QK_CUDA_TILE_K,
    /* Bytes of one stage of weights for one block: 256 columns x 32 k at 4 or 8 bits. */
    QK_CUDA_TILE_BYTES_PER_BIT = QK_CUDA_BLOCK_N * QK_CUDA_TILE_K / 8
};

/* Where each part of the pack lies. */
typedef struct qk_cuda_layout {
    int32_t n_blocks;       /* ceil(N / 256): N padded with columns of zero weight */
    int32_t k_tiles;        /* ceil(K / 32): K padded with zero weights (and zero activations) */
    int32_t groups;         /* scale groups per row: 1 for per-channel (G >= K), else ceil(K / G) */
    int32_t group_tiles;    /* k tiles per group (the last group may have fewer) */
    int32_t meta_regions;   /* 256-float regions per group: scales, then zeros, then offsets */
    size_t tile_bytes;      /* weights of one (block, k tile) */
    size_t meta_offset;     /* bytes of weights before the metadata */
    size_t bytes;           /* the whole pack */
} qk_cuda_layout;

/* The layout of weights in format f; returns 0 when the kernels cannot run them (a group size
 * below K that is not a multiple of 32, bits not 4 or 8). */
static inline int qk_cuda_layout_of(const qk_weights* f, int asymmetric, int has_offsets, qk_cuda_layout* l) {
    if ((f->bits != 4 && f->bits != 8) || f->N < 1 || f->K < 1 || f->group_size < 1) return 0;
    int per_channel = f->group_size >= f->K;
    if (!per_channel && f->group_size % QK_CUDA_TILE_K != 0) return 0;
    l->n_blocks = (f->N + QK_CUDA_BLOCK_N - 1) / QK_CUDA_BLOCK_N;
    l->k_tiles = (f->K + QK_CUDA_TILE_K - 1) / QK_CUDA_TILE_K;
    l->groups = per_channel ? 1 : (f->K + f->group_size - 1) / f->group_size;
    l->group_tiles = per_channel ? l->k_tiles : f->group_size / QK_CUDA_TILE_K;
    l->meta_regions = 1 + (asymmetric ? 1 : 0) + (has_offsets ? 1 : 0);
    l->tile_bytes = (size_t)QK_CUDA_TILE_BYTES_PER_BIT * (size_t)f->bits;
    l->meta_offset = (size_t)l->n_blocks * (size_t)l->k_tiles * l->tile_bytes;
    l->bytes = l->meta_offset +
               (size_t)l->n_blocks * (size_t)l->groups * (size_t)l->meta_regions * QK_CUDA_BLOCK_N * sizeof(float);
    return 1;
}

#ifdef __cplusplus
}
#endif

#endif /* QK_CUDA_LAYOUT_H */
