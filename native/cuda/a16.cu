/*
 * A16 (weight-only) kernels: Y = X . W^T with float16 / bfloat16 activations and 4- or 8-bit
 * weights from the device pack (pack.c), on mma.sync m16n8k16 with float32 accumulation.
 *
 * One thread block computes BM rows x 256 columns over a slice of K: 4 warps side by side along N
 * (64 columns each), WARPS_M of them along M, each warp MB m16 blocks. K runs in tiles of 32
 * through a STAGES-deep cp.async pipeline: activations, the pack's weights and (at a group's first
 * tile) its scales / zeros / offsets land in shared memory while earlier stages compute.
 *   - decode (M <= 16): BM = 16, and split-K: slices of K in grid.z write float32 partial sums to
 *     device scratch, and a second kernel adds them in slice order (deterministic) with the bias,
 *     so that a GEMV still fills the GPU;
 *   - prefill: BM = 64 (2 x 4 warps, 2 m16 blocks each), split-K only while there are fewer tiles
 *     than multiprocessors.
 * Weights: each lane's B fragments come from one 16-byte shared load per k16 (two for 8-bit), are
 * turned into float16 values 1024 + u by lop3 / prmt (the magic-number trick, pack.c), then into
 * the exact integer u - z = q - zp, and scaled in float32: w = (q - zp) * scale (+ offset, one fma)
 * rounded once to the activation dtype, as docs/numerics.md allows. Accumulation is float32, in two
 * levels: the mma accumulators over FOLD_TILES tiles (128 k), then added to a second float32 sum,
 * so that the rounding error grows with K / 128, not K (reading 22; one float32 sum over K = 16384
 * could already miss the float16 tolerance).
 * Activations: read in place when 16-byte aligned with K % 8 == 0 (cp.async zero-fills past K and
 * M), else first copied into scratch with K padded.
 */
#include "ptx.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <string.h>

#include "tiles.cuh"

namespace qk_cuda {
namespace {

constexpr int FOLD_TILES = 4; /* tiles of 32 k per float32 mma sum before it joins the outer sum */

struct a16_params {
    const void* x;       /* [M, x_stride] of T */
    void* y;             /* [M, N] of T */
    float* partial;      /* [slices, M, n_blocks * 256] float32, or NULL: write y directly */
    const float* bias;   /* [N] or NULL */
    pack_view pack;
    int M, N, x_stride, x_cols; /* k < x_cols is data; beyond it cp.async fills zeros */
    int tiles_per_slice, asymmetric, has_offsets;
};

template <class T> struct dtype;
template <> struct dtype<__half> {
    static __device__ __forceinline__ uint32_t pack2(float a, float b) {
        __half2 h = __floats2half2_rn(a, b);
        uint32_t u;
        memcpy(&u, &h, 4);
        return u;
    }
    static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
        qk_mma_m16n8k16_f16(d, a, b, d);
    }
    static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <> struct dtype<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack2(float a, float b) {
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        uint32_t u;
        memcpy(&u, &h, 4);
        return u;
    }
    static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
        qk_mma_m16n8k16_bf16(d, a, b, d);
    }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

/* A lane's per-column group parameters for its eight n8 blocks. */
struct group_params {
    float scale[8], offset[8];
    uint32_t magic_zero[8]; /* float16 pair 1024 + z, 1024 + z */
};

__device__ __forceinline__ void read_group(group_params& gp, const float* meta, const a16_params& p, int wn, int g,
                                           int bits) {
    const float* at = meta + wn * QK_CUDA_WARP_N + g * 8; /* column 64 wn + 8 j + g is float 64 wn + 8 g + j */
    int region = 1;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        gp.scale[j] = at[j];
        float zero = p.asymmetric ? at[QK_CUDA_BLOCK_N + j] : (bits == 8 ? 128.0f : 8.0f);
        __half h = __float2half_rn(1024.0f + zero); /* exact: an integer below 2048 */
        uint16_t hb;
        memcpy(&hb, &h, 2);
        gp.magic_zero[j] = (uint32_t)hb * 0x10001u;
    }
    if (p.asymmetric) region++;
#pragma unroll
    for (int j = 0; j < 8; j++) gp.offset[j] = p.has_offsets ? at[region * QK_CUDA_BLOCK_N + j] : 0.0f;
}

/* Register r of n8 block j from float16 pair `magic` = (1024 + u, 1024 + u'): subtracting 1024 + z
 * is exact (integers below 2048), giving q - zp; then w = (q - zp) * scale [+ offset] in float32,
 * rounded once to T. */
template <class T>
__device__ __forceinline__ uint32_t dequantize(uint32_t magic, const group_params& gp, int j, bool has_offsets) {
    __half2 raw, zero;
    memcpy(&raw, &magic, 4);
    memcpy(&zero, &gp.magic_zero[j], 4);
    float2 d = __half22float2(__hsub2(raw, zero));
    if (has_offsets) return dtype<T>::pack2(fmaf(d.x, gp.scale[j], gp.offset[j]), fmaf(d.y, gp.scale[j], gp.offset[j]));
    return dtype<T>::pack2(d.x * gp.scale[j], d.y * gp.scale[j]);
}

template <class T, int BITS, int WARPS_M, int MB, int STAGES>
__global__ void __launch_bounds__(128 * WARPS_M) a16_kernel(a16_params p) {
    constexpr int THREADS = 32 * kWarpsN * WARPS_M, BM = 16 * MB * WARPS_M;
    constexpr int A_BYTES = BM * QK_CUDA_TILE_K * 2, B_BYTES = QK_CUDA_TILE_BYTES_PER_BIT * BITS;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES + kMetaBytes;
    QK_DYNAMIC_SHARED(uint8_t, smem);

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
    const int g = lane / 4, t = lane % 4;
    const int nb = tile_n(p.pack), m0 = tile_m(p.pack) * BM, slice = blockIdx.z;
    const int first = slice * p.tiles_per_slice;
    const int count = p.pack.k_tiles - first < p.tiles_per_slice ? p.pack.k_tiles - first : p.tiles_per_slice;
    const T* x = static_cast<const T*>(p.x);

    auto load_stage = [&](int i) {
        uint8_t* stage = smem + (i % STAGES) * STAGE_BYTES;
        const int kt = first + i;
        for (int c = tid; c < BM * 4; c += THREADS) { /* 4 chunks of 8 elements per row */
            const int row = c / 4, chunk = c % 4, m = m0 + row, k = kt * QK_CUDA_TILE_K + chunk * 8;
            const bool valid = m < p.M && k < p.x_cols;
            qk_cp_async_16_zfill(stage + row * 64 + swizzle(row, chunk, 4) * 16,
                                 valid ? x + (size_t)m * p.x_stride + k : x, valid ? 16 : 0);
        }
        load_weights(stage + A_BYTES, p.pack, nb, kt, tid, THREADS);
        if (starts_group(p.pack, kt, first))
            load_meta(reinterpret_cast<float*>(stage + A_BYTES + B_BYTES), p.pack, nb, kt, tid, THREADS);
    };

    float acc[MB][8][4], sum[MB][8][4]; /* the mma's sum of this fold; the sum of the folds */
    #pragma unroll
    for (int mb = 0; mb < MB; mb++)
        #pragma unroll
        for (int j = 0; j < 8; j++)
            #pragma unroll
            for (int i = 0; i < 4; i++) acc[mb][j][i] = sum[mb][j][i] = 0.0f;
    group_params gp;

    for (int i = 0; i < STAGES - 1; i++) {
        if (i < count) load_stage(i);
        qk_cp_async_commit(); /* empty groups keep the wait count below uniform */
    }
    for (int i = 0; i < count; i++) {
        qk_cp_async_wait<STAGES - 2>(); /* stage i has landed (this thread's copies) */
        __syncthreads();                /* ... and everyone's; stage i - 1's slot is free */
        if (i + STAGES - 1 < count) load_stage(i + STAGES - 1);
        qk_cp_async_commit();

        const uint8_t* stage = smem + (i % STAGES) * STAGE_BYTES;
        if (starts_group(p.pack, first + i, first))
            read_group(gp, reinterpret_cast<const float*>(stage + A_BYTES + B_BYTES), p, wn, g, BITS);
        #pragma unroll
        for (int ks = 0; ks < 2; ks++) { /* two k16 steps per tile */
            uint32_t a[MB][4];
            #pragma unroll
            for (int mb = 0; mb < MB; mb++) {
                /* ldmatrix.x4: lanes 0-15 give rows 0-15 at k 0-7 of this k16, lanes 16-31 at k 8-15:
                 * registers a[0..3] come out as the m16n8k16 A fragment. */
                const int row = (wm * MB + mb) * 16 + lane % 16, chunk = ks * 2 + lane / 16;
                qk_ldmatrix_x4(a[mb], stage + row * 64 + swizzle(row, chunk, 4) * 16);
            }
            uint32_t b[8][2];
            const uint8_t* unit = stage + A_BYTES + (ks * kWarpsN + wn) * 128 * BITS + lane * 16;
            if (BITS == 4) {
                uint32_t words[4];
                memcpy(words, unit, 16);
                #pragma unroll
                for (int w = 0; w < 4; w++)
                    #pragma unroll
                    for (int o = 0; o < 4; o++) {
                        /* (word >> 4o) & 0x000F000F | 0x64006400 in one lop3 (LUT 0xEA = (a & b) | c):
                         * the two nibbles of output o become float16 1024 + u. */
                        const uint32_t magic = qk_lop3<0xEA>(words[w] >> (4 * o), 0x000F000Fu, 0x64006400u);
                        const int j = 2 * w + o / 2;
                        b[j][o % 2] = dequantize<T>(magic, gp, j, p.has_offsets);
                    }
            } else {
                #pragma unroll
                for (int piece = 0; piece < 2; piece++) {
                    uint32_t words[4];
                    memcpy(words, unit + piece * 512, 16);
                    #pragma unroll
                    for (int w = 0; w < 4; w++) {
                        const int j = 4 * piece + w;
                        /* prmt picks bytes r and r + 2 of the word under 0x64 bytes: float16 1024 + u. */
                        b[j][0] = dequantize<T>(qk_prmt(words[w], 0x64646464u, 0x5250), gp, j, p.has_offsets);
                        b[j][1] = dequantize<T>(qk_prmt(words[w], 0x64646464u, 0x5351), gp, j, p.has_offsets);
                    }
                }
            }
            #pragma unroll
            for (int mb = 0; mb < MB; mb++)
                #pragma unroll
                for (int j = 0; j < 8; j++) dtype<T>::mma(acc[mb][j], a[mb], b[j]);
        }
        if ((i + 1) % FOLD_TILES == 0 || i + 1 == count) {
            #pragma unroll
            for (int mb = 0; mb < MB; mb++)
                #pragma unroll
                for (int j = 0; j < 8; j++)
                    #pragma unroll
                    for (int e = 0; e < 4; e++) {
                        sum[mb][j][e] += acc[mb][j][e];
                        acc[mb][j][e] = 0.0f;
                    }
        }
    }
    qk_cp_async_wait<0>(); /* no copy outlives the block */

    const size_t padded_n = (size_t)p.pack.n_blocks * QK_CUDA_BLOCK_N;
    #pragma unroll
    for (int mb = 0; mb < MB; mb++)
        #pragma unroll
        for (int j = 0; j < 8; j++)
            #pragma unroll
            for (int h = 0; h < 2; h++) { /* accumulator rows g and g + 8 */
                const int row = m0 + (wm * MB + mb) * 16 + g + 8 * h;
                const int n = nb * QK_CUDA_BLOCK_N + wn * QK_CUDA_WARP_N + j * 8 + 2 * t;
                if (row >= p.M) continue;
                #pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float v = sum[mb][j][2 * h + e];
                    if (p.partial)
                        p.partial[((size_t)slice * p.M + row) * padded_n + n + e] = v;
                    else if (n + e < p.N)
                        static_cast<T*>(p.y)[(size_t)row * p.N + n + e] =
                            dtype<T>::from_float(p.bias ? v + p.bias[n + e] : v);
                }
            }
}

/* Y = the sum of the slices' partials, in slice order and float64 (finite where the result is),
 * plus the bias: one thread an element. */
template <class T>
__global__ void a16_reduce(const float* partial, int slices, int M, int N, int padded_n, const float* bias, T* y) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)M * N) return;
    const int m = (int)(i / N), n = (int)(i % N);
    double sum = 0.0;
    for (int s = 0; s < slices; s++) sum += partial[((size_t)s * M + m) * padded_n + n];
    y[i] = dtype<T>::from_float((float)(bias ? sum + bias[n] : sum));
}

/* X [M, K] copied to [M, stride] with zeros past K, for activations cp.async cannot read in place. */
template <class T>
__global__ void a16_stage_x(const T* x, int M, int K, int stride, T* out) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)M * stride) return;
    const int m = (int)(i / stride), k = (int)(i % stride);
    out[i] = k < K ? x[(size_t)m * K + k] : dtype<T>::from_float(0.0f);
}

template <class T, int BITS, int WARPS_M, int MB, int STAGES>
qk_status run(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a, const char* name) {
    constexpr int BM = 16 * MB * WARPS_M, THREADS = 128 * WARPS_M;
    constexpr int SHARED = STAGES * (BM * QK_CUDA_TILE_K * 2 + QK_CUDA_TILE_BYTES_PER_BIT * BITS + kMetaBytes);
    static_assert(SHARED <= 48 * 1024, "stays within the default dynamic shared memory");
    qk_cuda_layout l;
    if (!qk_cuda_layout_of(&w->format, w->asymmetric, w->has_offsets, &l))
        return qk_fail(QK_ERR_UNSUPPORTED, "%s: group size %d", name, w->format.group_size);
    const int M = a->M, N = w->format.N, K = w->format.K, m_blocks = (M + BM - 1) / BM;
    a16_params p = {a->input, a->output, nullptr, a->bias, view_of(l, w->packed), M, N, K, K, 0,
                    w->asymmetric, w->has_offsets};
    unsigned grid = 0;
    qk_status s = tiles(l.n_blocks, m_blocks, name, &grid);
    if (s != QK_OK) return s;
    const int slices = split_k((int)grid, l.k_tiles, &p.tiles_per_slice);
    const int padded_k = l.k_tiles * QK_CUDA_TILE_K;
    const bool in_place = K % 8 == 0 && (uintptr_t)a->input % 16 == 0;
    const size_t partial_bytes = slices > 1 ? (size_t)slices * M * l.n_blocks * QK_CUDA_BLOCK_N * sizeof(float) : 0;
    const size_t x_bytes = in_place ? 0 : (size_t)M * padded_k * sizeof(T);
    uint8_t* scratch = nullptr;
    if (partial_bytes + x_bytes > 0) {
        scratch = static_cast<uint8_t*>(qk_cuda_scratch_acquire(exec->stream, partial_bytes + x_bytes));
        if (!scratch) return qk_last_status(); /* the scratch has failed: its status, and why */
        if (slices > 1) p.partial = reinterpret_cast<float*>(scratch);
        if (!in_place) {
            T* staged = reinterpret_cast<T*>(scratch + partial_bytes); /* 16-byte aligned: partials are 1 KiB rows */
            const size_t elements = (size_t)M * padded_k;
            QK_CUDA_LAUNCH(a16_stage_x<T>, (unsigned)((elements + 255) / 256), 256, 0, exec->stream,
                           static_cast<const T*>(a->input), M, K, padded_k, staged);
            s = qk_cuda_check_launch(name);
            p.x = staged;
            p.x_stride = p.x_cols = padded_k;
        }
    }
    if (s == QK_OK) {
        void (*kernel)(a16_params) = a16_kernel<T, BITS, WARPS_M, MB, STAGES>;
        QK_CUDA_LAUNCH(kernel, dim3(grid, 1, slices), THREADS, SHARED, exec->stream, p);
        s = qk_cuda_check_launch(name);
    }
    if (s == QK_OK && slices > 1) {
        const size_t elements = (size_t)M * N;
        QK_CUDA_LAUNCH(a16_reduce<T>, (unsigned)((elements + 255) / 256), 256, 0, exec->stream, p.partial, slices, M,
                       N, l.n_blocks * QK_CUDA_BLOCK_N, a->bias, static_cast<T*>(a->output));
        s = qk_cuda_check_launch(name);
    }
    return scratch ? release_scratch(exec->stream, scratch, s) : s;
}

template <int WARPS_M, int MB, int STAGES>
qk_status run_any(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a, const char* name) {
    const bool f16 = a->input_dtype == QK_DTYPE_F16;
    if (w->format.bits == 4)
        return f16 ? run<__half, 4, WARPS_M, MB, STAGES>(exec, w, a, name)
                   : run<__nv_bfloat16, 4, WARPS_M, MB, STAGES>(exec, w, a, name);
    return f16 ? run<__half, 8, WARPS_M, MB, STAGES>(exec, w, a, name)
               : run<__nv_bfloat16, 8, WARPS_M, MB, STAGES>(exec, w, a, name);
}

}  // namespace
}  // namespace qk_cuda

extern "C" qk_status qk_cuda_a16_decode(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    return qk_cuda::run_any<1, 1, 4>(exec, w, a, "cuda_a16_w4w8_16x256");
}

extern "C" qk_status qk_cuda_a16_prefill(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    return qk_cuda::run_any<2, 2, 3>(exec, w, a, "cuda_a16_w4w8_64x256");
}
