/*
 * The CUDA backend's kernels as the backend library (backend.c) and the warp-emulator tests see
 * them. Two builds compile the kernel sources:
 *   - nvcc, into libqkernels_cuda.so: pointers below are device pointers, launches go on the
 *     caller's stream (qk_exec.stream, a cudaStream_t);
 *   - the warp emulator (QK_CUDA_EMULATE, host C++): the same kernel source runs on host threads,
 *     "device" pointers are host pointers and the stream is ignored.
 * Each kernel is an ordinary qk_kernel_desc (qkernels_backend.h), so the emulator tests call the
 * very run function that production dispatch calls.
 */
#ifndef QK_CUDA_KERNELS_H
#define QK_CUDA_KERNELS_H

#include <stddef.h>

#include "qkernels_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every CUDA kernel, best first: the backend registers this table as it is. A kernel's
 * workspace_size is NULL (no host workspace); device scratch comes from qk_cuda_scratch_acquire. */
extern const qk_kernel_desc qk_cuda_kernels[];
extern const int32_t qk_cuda_kernel_count;

/* The device pack (layout documented where it is written): bytes it needs, and writing it into a
 * host buffer of that size, which the caller then copies to the device. */
size_t qk_cuda_packed_bytes(const qk_weights* weights);
qk_status qk_cuda_pack_host(const qk_weights* weights, void* host_out);

/* Device scratch of at least `bytes` for work on `stream` (split-K partial sums, quantized
 * activations), stream-ordered: work queued on `stream` after this call may use it until
 * qk_cuda_scratch_release(stream, memory), which the caller queues after that work, on every path
 * (a failed launch too). Each call gets memory of its own, so calls from several host threads, on
 * one stream or on many, never share it. NULL after qk_fail on failure. Provided by backend.cpp
 * in the library and by the emulator harness in the test build. */
void* qk_cuda_scratch_acquire(void* stream, size_t bytes);
qk_status qk_cuda_scratch_release(void* stream, void* memory);

/* After a launch: QK_OK, or qk_fail with the launch error naming `kernel`. Provided as
 * the scratch is. */
qk_status qk_cuda_check_launch(const char* kernel);

#ifdef __cplusplus
}
#endif

#endif /* QK_CUDA_KERNELS_H */
