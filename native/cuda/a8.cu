/*
 * A8 kernels: dynamic per-row int8 activations times 4- or 8-bit weights from the device pack
 * (pack.c), exact in integers per group, folded as docs/numerics.md section 3 and the CPU backends
 * do, so that results equal the reference backend's bit for bit:
 *   1. quantize_rows (one block a row): amax, inv = 127 / amax, qx = clamp(rne(x * inv), -127, 127)
 *      (NaN from 0 * Inf is 0: reading 4), sx = amax / 127, each a single float32 step; a row
 *      holding NaN or Inf is marked and gives NaN outputs. Also xs[m, g] = sum of qx over group g.
 *   2. a8_kernel: mma.sync m16n8k32 s8 with int32 accumulators per group; at each group's end
 *      acc = sum qx * q - zp * xs (exact: reading 5, int32 arithmetic that wraps only in
 *      intermediates), then in float64, group after group in k order: y += scale * acc (two
 *      roundings, never fused), y += offset * xs (an exact product); last y = sx * y + (bias or 0)
 *      with two float64 roundings and one rounding to the output dtype: the reference's order,
 *      operation for operation.
 * No split-K here: partial float64 sums added in another order would not be bit-equal.
 *
 * The order of k. The pack holds each lane's weights as m16n8k16 B fragments: of a k16 block,
 * lane (g, t) has k = 2t, 2t + 1, 2t + 8, 2t + 9. An m16n8k32 s8 fragment gives the lane k =
 * 4t..4t+3 (and 16 more). A dot product does not depend on the order of k, only on both operands
 * using the same one: so the quantizer stores qx with "logical" position 4t + i (and 16 + 4t + i)
 * holding physical k = 2t + (i & 1) + 8 (i >> 1) of its k16 block. ldmatrix then delivers the A
 * fragment in exactly the pack's order of k, and the weights need only a byte shuffle.
 */
#include "ptx.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <string.h>

#include "tiles.cuh"

namespace qk_cuda {
namespace {

constexpr int kQuantizeThreads = 128;

/* Where physical k of a row goes in the stored qx row (see above): within its 32-block, k16 half h,
 * r = k % 16 = 2t + e + 8b lands at 16h + 4t + e + 2b. */
__device__ __forceinline__ int stored_position(int k) {
    const int h = (k % 32) / 16, r = k % 16, e = r & 1, t = (r % 8) / 2, b = r / 8;
    return k - k % 32 + 16 * h + 4 * t + e + 2 * b;
}

template <class T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

/* One correctly rounded conversion from float64, as qk_store_f64 does. */
template <class T> __device__ __forceinline__ T from_double(double v);
template <> __device__ __forceinline__ __half from_double(double v) { return __double2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_double(double v) { return __double2bfloat16(v); }

/* The quiet NaN the CPU backends write for a row without a finite amax (qk_store_f64): 0x7E00 in
 * float16, 0x7FC0 in bfloat16 (a conversion of a float64 NaN could leave another payload). */
template <class T> __device__ __forceinline__ T quiet_nan() {
    const uint16_t bits = __is_same(T, __half) ? 0x7E00 : 0x7FC0;
    T v;
    memcpy(&v, &bits, 2);
    return v;
}

/* a * b + c with both float64 roundings, never one fused multiply-add (the reference's order). */
__device__ __forceinline__ double mul_then_add(double a, double b, double c) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(__dmul_rn(a, b), c);
#else
    return a * b + c; /* the emulated build compiles with -ffp-contract=off */
#endif
}

struct a8_scratch {
    int8_t* qx;     /* [M, padded_k], stored order, zeros past K */
    int32_t* xs;    /* [M, groups] */
    float* sx;      /* [M] */
    int32_t* finite; /* [M] */
};

template <class T>
__global__ void __launch_bounds__(kQuantizeThreads) quantize_rows(const T* x, int K, int padded_k, int group_width,
                                                                   int groups, a8_scratch s) {
    __shared__ float warp_amax[kQuantizeThreads / 32];
    __shared__ int warp_bad[kQuantizeThreads / 32];
    const int m = blockIdx.x, tid = threadIdx.x;
    const T* row = x + (size_t)m * K;
    float amax = 0.0f;
    int bad = 0;
    for (int k = tid; k < K; k += kQuantizeThreads) {
        const float v = to_float(row[k]);
        bad |= !isfinite(v);
        amax = fmaxf(amax, fabsf(v));
    }
    for (int mask = 16; mask > 0; mask /= 2) {
        amax = fmaxf(amax, qk_shfl_xor(amax, mask));
        bad |= qk_shfl_xor(bad, mask);
    }
    if (tid % 32 == 0) {
        warp_amax[tid / 32] = amax;
        warp_bad[tid / 32] = bad;
    }
    __syncthreads();
    for (int w = 0; w < kQuantizeThreads / 32; w++) {
        amax = fmaxf(amax, warp_amax[w]);
        bad |= warp_bad[w];
    }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f; /* +Inf for a tiny amax: reading 4 */
    int8_t* q = s.qx + (size_t)m * padded_k;
    for (int k = tid; k < padded_k; k += kQuantizeThreads) {
        int8_t v = 0;
        if (!bad && k < K) {
            const float product = to_float(row[k]) * inv;
            v = isnan(product) ? 0 : (int8_t)fminf(fmaxf(rintf(product), -127.0f), 127.0f);
        }
        q[stored_position(k)] = v;
    }
    __syncthreads(); /* this block's qx writes are visible to the whole block */
    for (int g = tid; g < groups; g += kQuantizeThreads) {
        const int end = (g + 1) * group_width < padded_k ? (g + 1) * group_width : padded_k;
        int32_t sum = 0;
        for (int k = g * group_width; k < end; k++) sum += q[k]; /* stored order: the same set of k */
        s.xs[(size_t)m * groups + g] = sum;
    }
    if (tid == 0) {
        s.sx[m] = amax / 127.0f;
        s.finite[m] = !bad;
    }
}

struct a8_params {
    a8_scratch s;
    void* y;
    const float* bias;
    pack_view pack;
    int M, N, padded_k, asymmetric, has_offsets;
};

/* The signed bytes q = u - 8 of four nibbles u (0..15) held one per byte: with bit 7 of each byte
 * set first, subtracting 8 borrows inside the byte only; clearing bit 7 back (XOR) then leaves
 * (u - 8) mod 256, the two's complement byte. */
__device__ __forceinline__ uint32_t nibbles_to_s8(uint32_t u) {
    return ((u | 0x80808080u) - 0x08080808u) ^ 0x80808080u;
}

template <class T, int BITS, int STAGES>
__global__ void __launch_bounds__(256) a8_kernel(a8_params p) {
    constexpr int WARPS_M = 2, THREADS = 32 * kWarpsN * WARPS_M, BM = 16 * WARPS_M;
    constexpr int A_BYTES = BM * QK_CUDA_TILE_K, B_BYTES = QK_CUDA_TILE_BYTES_PER_BIT * BITS;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES + kMetaBytes;
    QK_DYNAMIC_SHARED(uint8_t, smem);

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
    const int g = lane / 4, t = lane % 4;
    const int nb = tile_n(p.pack), m0 = tile_m(p.pack) * BM, count = p.pack.k_tiles;

    auto load_stage = [&](int kt) {
        uint8_t* stage = smem + (kt % STAGES) * STAGE_BYTES;
        for (int c = tid; c < BM * 2; c += THREADS) { /* 2 chunks of 16 int8 per row */
            const int row = c / 2, chunk = c % 2, m = m0 + row;
            const bool valid = m < p.M;
            qk_cp_async_16_zfill(stage + row * 32 + swizzle(row, chunk, 2) * 16,
                                 p.s.qx + (valid ? (size_t)m * p.padded_k + kt * QK_CUDA_TILE_K + chunk * 16 : 0),
                                 valid ? 16 : 0);
        }
        load_weights(stage + A_BYTES, p.pack, nb, kt, tid, THREADS);
        if (starts_group(p.pack, kt, 0))
            load_meta(reinterpret_cast<float*>(stage + A_BYTES + B_BYTES), p.pack, nb, kt, tid, THREADS);
    };

    int32_t acc[8][4];
    double y[8][4];
    float scale[8][2], offset[8][2]; /* per accumulator column 8j + 2t + e */
    int32_t zp[8][2];
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            acc[j][i] = 0;
            y[j][i] = 0.0;
        }
    const int rows[2] = {m0 + wm * 16 + g, m0 + wm * 16 + g + 8}; /* this lane's accumulator rows */

    for (int i = 0; i < STAGES - 1; i++) {
        if (i < count) load_stage(i);
        qk_cp_async_commit();
    }
    for (int kt = 0; kt < count; kt++) {
        qk_cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (kt + STAGES - 1 < count) load_stage(kt + STAGES - 1);
        qk_cp_async_commit();

        const uint8_t* stage = smem + (kt % STAGES) * STAGE_BYTES;
        if (starts_group(p.pack, kt, 0)) {
            /* Scales apply to the accumulators, whose columns are 8j + 2t + e (not the lane's B
             * column 8j + g as in A16): column 64 wn + c is float 64 wn + 8 (c % 8) + c / 8. */
            const float* at = reinterpret_cast<const float*>(stage + A_BYTES + B_BYTES) + wn * QK_CUDA_WARP_N;
            const int offset_region = p.asymmetric ? 2 : 1;
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int i = 8 * (2 * t + e) + j;
                    scale[j][e] = at[i];
                    zp[j][e] = p.asymmetric ? (int32_t)at[QK_CUDA_BLOCK_N + i] - (BITS == 8 ? 128 : 8) : 0; /* z - bias */
                    offset[j][e] = p.has_offsets ? at[offset_region * QK_CUDA_BLOCK_N + i] : 0.0f;
                }
        }
        uint32_t a[4];
        {
            const int row = wm * 16 + lane % 16, chunk = lane / 16;
            qk_ldmatrix_x4(a, stage + row * 32 + swizzle(row, chunk, 2) * 16);
        }
        uint32_t b[8][2];
#pragma unroll
        for (int ks = 0; ks < 2; ks++) { /* the pack's two k16 units make one k32 step */
            const uint8_t* unit = stage + A_BYTES + (ks * kWarpsN + wn) * 128 * BITS + lane * 16;
            if (BITS == 8) {
#pragma unroll
                for (int piece = 0; piece < 2; piece++) {
                    uint32_t words[4];
                    memcpy(words, unit + piece * 512, 16);
#pragma unroll
                    for (int w = 0; w < 4; w++) /* bytes (k 2t, 2t+8, 2t+1, 2t+9) into k order; u - 128 = u ^ 0x80 */
                        b[4 * piece + w][ks] = qk_prmt(words[w], 0u, 0x3120) ^ 0x80808080u;
                }
            } else {
                uint32_t words[4];
                memcpy(words, unit, 16);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    /* n8 block j's nibbles: register 0 at bits 8(j%2) and +16, register 1 four higher. */
                    const uint32_t word = words[j / 2] >> (8 * (j % 2));
                    const uint32_t lo = word & 0x000F000Fu, hi = (word >> 4) & 0x000F000Fu;
                    b[j][ks] = nibbles_to_s8(qk_prmt(lo, hi, 0x6420)); /* bytes lo0 lo2 hi0 hi2 */
                }
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) qk_mma_m16n8k32_s8(acc[j], a, b[j], acc[j]);

        if (kt == count - 1 || (kt + 1) % p.pack.group_tiles == 0) { /* the group's last tile: fold */
            const int group = kt / p.pack.group_tiles;
            int32_t xs[2];
#pragma unroll
            for (int h = 0; h < 2; h++) xs[h] = rows[h] < p.M ? p.s.xs[(size_t)rows[h] * p.pack.groups + group] : 0;
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int32_t row_xs = xs[i / 2], e = i % 2;
                    /* sum qx (q - zp) = sum qx q - zp xs: exact in int32 (wrapping unsigned arithmetic) */
                    const int32_t exact = (int32_t)((uint32_t)acc[j][i] - (uint32_t)zp[j][e] * (uint32_t)row_xs);
                    /* scale (24 bits) times exact (up to 31) can round: never fused, as the reference */
                    y[j][i] = mul_then_add((double)scale[j][e], (double)exact, y[j][i]);
                    if (p.has_offsets) y[j][i] += (double)offset[j][e] * (double)row_xs; /* exact: 24 + 23 bits */
                    acc[j][i] = 0;
                }
        }
    }
    qk_cp_async_wait<0>();

    T* out = static_cast<T*>(p.y);
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = rows[i / 2], n = nb * QK_CUDA_BLOCK_N + wn * QK_CUDA_WARP_N + j * 8 + 2 * t + i % 2;
            if (row >= p.M || n >= p.N) continue;
            out[(size_t)row * p.N + n] =
                p.s.finite[row] ? from_double<T>(mul_then_add((double)p.s.sx[row], y[j][i], p.bias ? (double)p.bias[n] : 0.0))
                                : quiet_nan<T>();
        }
}

template <class T, int BITS>
qk_status run(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a, const char* name) {
    constexpr int STAGES = 3, BM = 32;
    constexpr int SHARED = STAGES * (BM * QK_CUDA_TILE_K + QK_CUDA_TILE_BYTES_PER_BIT * BITS + kMetaBytes);
    static_assert(SHARED <= 48 * 1024, "stays within the default dynamic shared memory");
    qk_cuda_layout l;
    if (!qk_cuda_layout_of(&w->format, w->asymmetric, w->has_offsets, &l))
        return qk_fail(QK_ERR_UNSUPPORTED, "%s: group size %d", name, w->format.group_size);
    const int M = a->M, K = w->format.K, padded_k = l.k_tiles * QK_CUDA_TILE_K;
    const size_t qx_bytes = (size_t)M * padded_k, xs_bytes = (size_t)M * l.groups * sizeof(int32_t);
    unsigned grid = 0;
    qk_status st = tiles(l.n_blocks, (M + BM - 1) / BM, name, &grid);
    if (st != QK_OK) return st;
    uint8_t* scratch = static_cast<uint8_t*>(qk_cuda_scratch_acquire(exec->stream, qx_bytes + xs_bytes + 2 * (size_t)M * 4));
    if (!scratch) return qk_last_status(); /* the scratch has failed: its status, and why */
    a8_scratch s = {reinterpret_cast<int8_t*>(scratch), reinterpret_cast<int32_t*>(scratch + qx_bytes),
                    reinterpret_cast<float*>(scratch + qx_bytes + xs_bytes),
                    reinterpret_cast<int32_t*>(scratch + qx_bytes + xs_bytes + (size_t)M * 4)};
    QK_CUDA_LAUNCH(quantize_rows<T>, M, kQuantizeThreads, 0, exec->stream, static_cast<const T*>(a->input), K,
                   padded_k, l.group_tiles * QK_CUDA_TILE_K, l.groups, s);
    st = qk_cuda_check_launch(name);
    if (st == QK_OK) {
        a8_params p = {s, a->output, a->bias, view_of(l, w->packed), M, w->format.N, padded_k, w->asymmetric,
                       w->has_offsets};
        void (*kernel)(a8_params) = a8_kernel<T, BITS, STAGES>;
        QK_CUDA_LAUNCH(kernel, grid, 256, SHARED, exec->stream, p);
        st = qk_cuda_check_launch(name);
    }
    return release_scratch(exec->stream, scratch, st);
}

}  // namespace
}  // namespace qk_cuda

extern "C" qk_status qk_cuda_a8(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    static const char name[] = "cuda_a8_w4w8_32x256";
    const bool f16 = a->input_dtype == QK_DTYPE_F16;
    if (w->format.bits == 4)
        return f16 ? qk_cuda::run<__half, 4>(exec, w, a, name) : qk_cuda::run<__nv_bfloat16, 4>(exec, w, a, name);
    return f16 ? qk_cuda::run<__half, 8>(exec, w, a, name) : qk_cuda::run<__nv_bfloat16, 8>(exec, w, a, name);
}
