/*
 * Every PTX-level operation the CUDA kernels use, one small inline wrapper each.
 *   - nvcc, device pass (__CUDA_ARCH__): the PTX instruction as inline asm;
 *   - the warp emulator (QK_CUDA_EMULATE, host C++, see emu/warp_emulator.h): an emulation that
 *     follows the fragment layouts of the PTX ISA; warp collectives (mma, ldmatrix, shfl) meet all
 *     32 lanes of the warp and compute from every lane's registers at once;
 *   - nvcc's host pass: never called; the bodies are empty there.
 * A kernel file includes this header first; it also provides QK_CUDA_LAUNCH for both builds.
 *
 * Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" and "...m16n8k32"), with
 * g = lane / 4 and t = lane % 4:
 *   f16/bf16 m16n8k16  A (16x16, row-major): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1],
 *                         a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9] (low half first);
 *                      B (16x8, K x N): b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g];
 *                      C, D (16x8 float): c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1].
 *   s8 m16n8k32        A: a[0] = A[g][4t..4t+3], a[1] = A[g+8][4t..], a[2] = A[g][4t+16..],
 *                         a[3] = A[g+8][4t+16..] (lowest byte first); B: b[0] = B[4t..4t+3][g],
 *                         b[1] = B[4t+16..4t+19][g]; C, D (int32) as for f16.
 *   ldmatrix .m8n8 .b16: matrix j's row r is at the address lane 8j + r passes; lane l receives
 *                         M_j[l/4][2(l%4)..+1] in r[j] (.trans: M_j[2(l%4)..+1][l/4]).
 */
#ifndef QK_CUDA_PTX_CUH
#define QK_CUDA_PTX_CUH

#include <stdint.h>

#if defined(QK_CUDA_EMULATE)
#include "emu/warp_emulator.h"
#define QK_CUDA_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                         \
  ((void)(stream), ::qk_emu::launch(dim3(grid), dim3(block), (shared_bytes),                   \
                                    [&]() { kernel(__VA_ARGS__); }))
#else
#include <cuda_runtime.h>
#define QK_CUDA_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)                         \
  kernel<<<(grid), (block), (shared_bytes), (cudaStream_t)(stream)>>>(__VA_ARGS__)
#endif

#if defined(__CUDA_ARCH__)
/* The 32-bit shared-state-space address that ldmatrix and cp.async take. */
__device__ __forceinline__ uint32_t qk_smem_addr(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
#endif

/* ---- mma.sync ---------------------------------------------------------------------------- */

/* d = a·b + c, m16n8k16, float16 inputs, float32 accumulation. */
__device__ __forceinline__ void qk_mma_m16n8k16_f16(float d[4], const uint32_t a[4],
                                                    const uint32_t b[2], const float c[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::mma_m16n8k16_float(qk_emu::Float16, d, a, b, c);
#endif
}

/* As qk_mma_m16n8k16_f16 with bfloat16 inputs. */
__device__ __forceinline__ void qk_mma_m16n8k16_bf16(float d[4], const uint32_t a[4],
                                                     const uint32_t b[2], const float c[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::mma_m16n8k16_float(qk_emu::BFloat16, d, a, b, c);
#endif
}

/* d = a·b + c, m16n8k32, int8 inputs, int32 accumulation (wraps modulo 2^32, no saturation). */
__device__ __forceinline__ void qk_mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4],
                                                   const uint32_t b[2], const int32_t c[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3]));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::mma_m16n8k32_s8(d, a, b, c);
#endif
}

/* ---- ldmatrix (shared memory, 8x8 matrices of 16-bit elements, rows of 16 bytes) ---------- */

__device__ __forceinline__ void qk_ldmatrix_x1(uint32_t* r, const void* smem_row) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(qk_smem_addr(smem_row)));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::ldmatrix(r, smem_row, 1, false);
#endif
}

__device__ __forceinline__ void qk_ldmatrix_x2(uint32_t* r, const void* smem_row) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(qk_smem_addr(smem_row)));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::ldmatrix(r, smem_row, 2, false);
#endif
}

__device__ __forceinline__ void qk_ldmatrix_x4(uint32_t* r, const void* smem_row) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(qk_smem_addr(smem_row)));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::ldmatrix(r, smem_row, 4, false);
#endif
}

__device__ __forceinline__ void qk_ldmatrix_x2_trans(uint32_t* r, const void* smem_row) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(qk_smem_addr(smem_row)));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::ldmatrix(r, smem_row, 2, true);
#endif
}

__device__ __forceinline__ void qk_ldmatrix_x4_trans(uint32_t* r, const void* smem_row) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(qk_smem_addr(smem_row)));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::ldmatrix(r, smem_row, 4, true);
#endif
}

/* ---- cp.async (16 bytes, global -> shared, bypassing L1: .cg) ----------------------------- */

__device__ __forceinline__ void qk_cp_async_16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(qk_smem_addr(smem)),
               "l"(gmem));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::cp_async(smem, gmem, 16);
#endif
}

/* Copies the first src_bytes (0..16) of gmem and zero-fills the rest of the 16 bytes; with
 * src_bytes 0 nothing is read, so gmem may point past the end of a tensor. */
__device__ __forceinline__ void qk_cp_async_16_zfill(void* smem, const void* gmem,
                                                     int src_bytes) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(qk_smem_addr(smem)),
               "l"(gmem), "r"(src_bytes));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::cp_async(smem, gmem, src_bytes);
#endif
}

/* Closes the group of this thread's cp.async issued since the last commit. */
__device__ __forceinline__ void qk_cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#elif defined(QK_CUDA_EMULATE)
  qk_emu::cp_async_commit();
#endif
}

/* Waits until at most N of this thread's committed groups are still in flight. Other threads
 * see the data only after a barrier that follows their writers' waits. */
template <int N>
__device__ __forceinline__ void qk_cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif defined(QK_CUDA_EMULATE)
  qk_emu::cp_async_wait(N);
#endif
}

/* ---- bit operations (pure, so the host emulation is the same function) -------------------- */

/* Any function of three inputs, bit by bit: LUT is f(0xF0, 0xCC, 0xAA), i.e. bit (4a + 2b + c)
 * of LUT is the result for input bits a, b, c. */
template <uint32_t LUT>
__device__ __forceinline__ uint32_t qk_lop3(uint32_t a, uint32_t b, uint32_t c) {
  static_assert(LUT <= 0xFF, "lop3's table has 8 bits");
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c), "n"(LUT));
  return d;
#else
  uint32_t d = 0;
  for (int i = 0; i < 8; ++i) {
    if (LUT >> i & 1) {  // the bits where (a, b, c) equals the bits of i
      d |= ((i & 4) ? a : ~a) & ((i & 2) ? b : ~b) & ((i & 1) ? c : ~c);
    }
  }
  return d;
#endif
}

/* Byte permute, default mode: the bytes of {b, a} are numbered 0..7 (a's lowest byte is 0);
 * result byte i is the byte that selector nibble i names with its low 3 bits, or, where the
 * nibble's bit 3 is set, that byte's sign bit replicated over 8 bits. */
__device__ __forceinline__ uint32_t qk_prmt(uint32_t a, uint32_t b, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
  return d;
#else
  const uint64_t bytes = (uint64_t)b << 32 | a;
  uint32_t d = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t nibble = selector >> (4 * i) & 0xF;
    uint32_t byte = (uint32_t)(bytes >> (8 * (nibble & 7))) & 0xFF;
    if (nibble & 8) byte = (byte & 0x80) ? 0xFF : 0x00;
    d |= byte << (8 * i);
  }
  return d;
#endif
}

/* ---- shuffles (every lane of the warp takes part) ----------------------------------------- */

/* The value of lane (this lane XOR lane_mask). */
template <typename T>
__device__ __forceinline__ T qk_shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) == 4, "shuffles move 32-bit values");
#if defined(__CUDA_ARCH__)
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#elif defined(QK_CUDA_EMULATE)
  return qk_emu::shfl(v, lane_mask, true);
#else
  return v;
#endif
}

/* The value of lane src_lane (modulo 32). */
template <typename T>
__device__ __forceinline__ T qk_shfl(T v, int src_lane) {
  static_assert(sizeof(T) == 4, "shuffles move 32-bit values");
#if defined(__CUDA_ARCH__)
  return __shfl_sync(0xffffffffu, v, src_lane);
#elif defined(QK_CUDA_EMULATE)
  return qk_emu::shfl(v, src_lane, false);
#else
  return v;
#endif
}

#endif /* QK_CUDA_PTX_CUH */
