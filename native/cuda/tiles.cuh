/*
 * What the A16 and A8 kernels share: the shared-memory stage of one k tile (activations, weights,
 * group metadata), its cp.async loads from the device pack (layout.h, pack.c), and the host-side
 * choice of split-K slices. Included by a16.cu and a8.cu after ptx.cuh.
 */
#ifndef QK_CUDA_TILES_CUH
#define QK_CUDA_TILES_CUH

#include <stdint.h>
#include <stdio.h>

#include "kernels.h"
#include "layout.h"

#ifndef QK_DYNAMIC_SHARED /* nvcc: the emulator defines its own (emu/warp_emulator.h) */
#define QK_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

namespace qk_cuda {

constexpr int kWarpsN = QK_CUDA_BLOCK_N / QK_CUDA_WARP_N; /* 4 warps side by side along N */
/* Room for the three metadata regions of one group (scales, zeros, offsets) in every stage. */
constexpr int kMetaBytes = 3 * QK_CUDA_BLOCK_N * (int)sizeof(float);

/* The device pack as the kernels read it. */
struct pack_view {
    const uint8_t* weights;
    const float* meta;
    int n_blocks, k_tiles, groups, group_tiles, regions;
    int tile_bytes;
};

inline pack_view view_of(const qk_cuda_layout& l, const void* packed) {
    const uint8_t* base = static_cast<const uint8_t*>(packed);
    return pack_view{base, reinterpret_cast<const float*>(base + l.meta_offset), l.n_blocks, l.k_tiles, l.groups,
                     l.group_tiles, l.meta_regions, (int)l.tile_bytes};
}

/* The output tiles of a grid are numbered along x alone, n blocks fastest: the order in which a
 * (n blocks, m blocks) grid runs, without grid y's limit of 65,535 m blocks (2.1 million rows of
 * A8). Grid x takes 2^31 - 1 blocks: `tiles` sets it, or fails naming the kernel beyond that. */
inline qk_status tiles(int n_blocks, int m_blocks, const char* name, unsigned* grid_x) {
    const long long count = (long long)n_blocks * m_blocks;
    if (count > 0x7FFFFFFF)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "%s: %lld output tiles, more than a grid holds (2^31 - 1)", name, count);
    *grid_x = (unsigned)count;
    return QK_OK;
}
__device__ __forceinline__ int tile_n(const pack_view& p) { return (int)(blockIdx.x % (unsigned)p.n_blocks); }
__device__ __forceinline__ int tile_m(const pack_view& p) { return (int)(blockIdx.x / (unsigned)p.n_blocks); }

/* Tile kt starts a group's metadata for a slice that starts at tile `first`. */
__device__ __forceinline__ bool starts_group(const pack_view& p, int kt, int first) {
    return kt == first || kt % p.group_tiles == 0;
}

/* Stage the weights of block nb, k tile kt: one contiguous run of the pack, 16 bytes a thread. */
__device__ __forceinline__ void load_weights(uint8_t* smem, const pack_view& p, int nb, int kt, int tid, int threads) {
    const uint8_t* src = p.weights + ((size_t)nb * p.k_tiles + kt) * (size_t)p.tile_bytes;
    for (int c = tid; c < p.tile_bytes / 16; c += threads) qk_cp_async_16(smem + c * 16, src + c * 16);
}

/* Stage the metadata (every region) of the group holding k tile kt of block nb. */
__device__ __forceinline__ void load_meta(float* smem, const pack_view& p, int nb, int kt, int tid, int threads) {
    const float* src = p.meta + ((size_t)nb * p.groups + kt / p.group_tiles) * p.regions * QK_CUDA_BLOCK_N;
    for (int c = tid; c < p.regions * QK_CUDA_BLOCK_N / 4; c += threads) qk_cp_async_16(smem + c * 4, src + c * 4);
}

/* The 16-byte chunk where chunk c (of `chunks` per row) of activation row r is stored. Rows of 32
 * k are 64 bytes (16-bit) or 32 bytes (int8): the 8 rows one ldmatrix matrix reads would share
 * banks; XOR-ing the chunk with bits of the row spreads them over all 32 banks (conflict-free). */
__device__ __forceinline__ int swizzle(int r, int c, int chunks) {
    return chunks == 4 ? c ^ ((r >> 1) & 3) : c ^ ((r >> 2) & 1);
}

/* The scratch released after the launches that used it (qk_cuda_scratch_release), whatever `launched`
 * (their status) is. When a launch failed, its failure is the one reported: a release that fails
 * too (a sticky device error fails both) does not replace the message. */
inline qk_status release_scratch(void* stream, void* scratch, qk_status launched) {
    if (launched == QK_OK) return qk_cuda_scratch_release(stream, scratch);
    char why[512];
    snprintf(why, sizeof why, "%s", qk_last_error());
    if (qk_cuda_scratch_release(stream, scratch) != QK_OK) qk_fail(launched, "%s", why);
    return launched;
}

/* Streaming multiprocessors of the current device (the emulator: a small made-up count, so that
 * the emulated tests run split-K). */
inline int multiprocessors() {
#ifdef QK_CUDA_EMULATE
    return 2;
#else
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count < 1)
        return 1;
    return count;
#endif
}

/* Split-K: slices of at least 4 k tiles each, enough of them for `blocks` output tiles to give
 * every multiprocessor about two thread blocks. Sets tiles per slice; returns the slice count. */
inline int split_k(int blocks, int k_tiles, int* tiles_per_slice) {
    int want = (int)((2LL * multiprocessors() + blocks - 1) / blocks), most = k_tiles / 4;
    int slices = want < most ? want : most;
    if (slices < 1) slices = 1;
    *tiles_per_slice = (k_tiles + slices - 1) / slices;
    return (k_tiles + *tiles_per_slice - 1) / *tiles_per_slice; /* none empty */
}

}  // namespace qk_cuda

#endif /* QK_CUDA_TILES_CUH */
