/* Every wrapper of ptx.cuh in one kernel, compiled by nvcc for each target architecture (ptxas
 * must accept the inline PTX) and as host C++ under the warp emulator. Compiled, not run. */
#include "ptx.cuh"
__global__ void every_wrapper(const uint4* g, float* f, int32_t* i, uint32_t* u) {
  __shared__ __align__(16) uint4 s[64];
  qk_cp_async_16(&s[threadIdx.x], &g[threadIdx.x]);
  qk_cp_async_16_zfill(&s[threadIdx.x + 32], &g[threadIdx.x], 8);
  qk_cp_async_commit();
  qk_cp_async_wait<0>();
  __syncthreads();
  uint32_t a[4], b[4], t[4];
  qk_ldmatrix_x4(a, &s[threadIdx.x]);
  qk_ldmatrix_x2(b, &s[threadIdx.x % 16]);
  qk_ldmatrix_x1(b + 2, &s[threadIdx.x % 8]);
  qk_ldmatrix_x2_trans(t, &s[threadIdx.x % 16]);
  qk_ldmatrix_x4_trans(t, &s[threadIdx.x]);
  float c[4] = {0, 0, 0, 0}, d[4];
  qk_mma_m16n8k16_f16(d, a, b, c);
  qk_mma_m16n8k16_bf16(d, t, b, d);
  int32_t ci[4] = {0, 0, 0, 0}, di[4];
  qk_mma_m16n8k32_s8(di, a, b + 2, ci);
  uint32_t x = qk_lop3<0xEA>(a[0], b[0], t[0]) + qk_prmt(a[1], b[1], 0x5410);
  x += qk_shfl_xor(x, 1) + qk_shfl(x, 3);
  f[threadIdx.x] = qk_shfl_xor(d[0], 2) + d[1] + d[2] + d[3];
  i[threadIdx.x] = qk_shfl(di[0], 0) + di[1] + di[2] + di[3];
  u[threadIdx.x] = x;
}
void launch(const uint4* g, float* f, int32_t* i, uint32_t* u, void* stream) {
  QK_CUDA_LAUNCH(every_wrapper, 1, 32, 0, stream, g, f, i, u);
}
