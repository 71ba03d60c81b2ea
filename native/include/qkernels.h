/*
 * qkernels: quantized matrix multiplication for LLM inference.
 *
 * The numeric contract (formats, quantizers, both matmul modes, tolerances, errors) is
 * docs/numerics.md. Every function here computes exactly what that document defines.
 *
 * Two layers:
 *   quantizedMatMul  the planned entry point: fp16 in, fp16 out, A16 mode, canonical weights,
 *                    automatic backend. It returns void; read qk_last_status() afterwards.
 *   qk_*             the versioned API: every call returns a qk_status and, on failure, leaves a
 *                    message naming the argument in qk_last_error() (thread-local). A call that
 *                    fails writes nothing to its outputs.
 *
 * The region between the QK_CDEF markers is plain C on purpose: the Python layer hands it to
 * cffi's parser as it is, so it holds no macros, no includes and no attributes.
 */
#ifndef QKERNELS_H
#define QKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

/* QK_CDEF_BEGIN */

/* Bumped when a declaration below changes incompatibly. */
enum { QK_ABI_VERSION = 1 };

typedef enum qk_status {
    QK_OK = 0,
    QK_ERR_NULL_POINTER = 1,      /* a required pointer is NULL */
    QK_ERR_INVALID_SIZE = 2,      /* M, N or K is <= 0 */
    QK_ERR_INVALID_GROUP = 3,     /* group size <= 0 or not a divisor of K */
    QK_ERR_ODD_K = 4,             /* 4-bit weights need an even K */
    QK_ERR_INVALID_BITS = 5,      /* bits is not 4 or 8 */
    QK_ERR_INVALID_DTYPE = 6,     /* dtype not accepted for this argument */
    QK_ERR_INVALID_ARGUMENT = 7,  /* any other out-of-range enum or value */
    QK_ERR_BACKEND_UNAVAILABLE = 8, /* forced backend or kernel not compiled in or not detected */
    QK_ERR_UNSUPPORTED = 9,       /* the backend or kernel cannot run this problem */
    QK_ERR_MISALIGNED = 10,       /* a pointer is not aligned to its element size */
    QK_ERR_BUFFER_TOO_SMALL = 11, /* a caller-sized buffer is too small */
    QK_ERR_NON_FINITE = 12,       /* NaN or Inf given to a quantizer */
    QK_ERR_OUT_OF_MEMORY = 13,
    QK_ERR_STATUS_COUNT = 14
} qk_status;

typedef enum qk_dtype {
    QK_DTYPE_F32 = 0,
    QK_DTYPE_F16 = 1,  /* IEEE binary16, passed as raw 16-bit patterns */
    QK_DTYPE_BF16 = 2  /* bfloat16, passed as raw 16-bit patterns */
} qk_dtype;

typedef enum qk_mode {
    QK_MODE_A16 = 0,   /* weight-only: float activations times dequantized weights */
    QK_MODE_A8 = 1     /* dynamic per-row int8 activations, exact integer products */
} qk_mode;

typedef enum qk_granularity {
    QK_PER_TENSOR = 0,
    QK_PER_CHANNEL = 1, /* one scale per output row: group size K */
    QK_PER_GROUP = 2    /* group_size consecutive elements of a row */
} qk_granularity;

/* Backends. The values are stable identifiers, not priorities: automatic dispatch follows the
 * kernel registry's order (best first), which qk_kernel_get enumerates. */
typedef enum qk_backend {
    QK_BACKEND_AUTO = 0,
    QK_BACKEND_CUDA = 1,            /* separate library, libqkernels_cuda */
    QK_BACKEND_X86_AMX = 2,
    QK_BACKEND_X86_AVX512_VNNI = 3,
    QK_BACKEND_X86_AVX2 = 4,
    QK_BACKEND_ARM_NEON_I8MM = 5,
    QK_BACKEND_ARM_NEON_DOTPROD = 6,
    QK_BACKEND_REF = 7,
    QK_BACKEND_COUNT = 8
} qk_backend;

/* CPU features, as bits of qk_cpu_features(). A bit is set only when the CPU has the feature
 * and the operating system has enabled its register state (and, for AMX, granted it). */
typedef enum qk_cpu_feature {
    QK_CPU_AVX2 = 1,
    QK_CPU_FMA = 2,
    QK_CPU_F16C = 4,
    QK_CPU_AVX_VNNI = 8,
    QK_CPU_AVX512F = 16,
    QK_CPU_AVX512BW = 32,
    QK_CPU_AVX512VL = 64,
    QK_CPU_AVX512_VNNI = 128,
    QK_CPU_AVX512_BF16 = 256,
    QK_CPU_AVX512_FP16 = 512,
    QK_CPU_AMX_TILE = 1024,
    QK_CPU_AMX_INT8 = 2048,
    QK_CPU_AMX_BF16 = 4096,
    QK_CPU_NEON = 8192,
    QK_CPU_NEON_FP16 = 16384,   /* FEAT_FP16: half-precision arithmetic */
    QK_CPU_NEON_DOTPROD = 32768,
    QK_CPU_NEON_I8MM = 65536,
    QK_CPU_FEATURE_BITS = 17
} qk_cpu_feature;

/* Weights in the canonical format (docs/numerics.md, section 1). */
typedef struct qk_weights {
    const int8_t* data;        /* [N, K*bits/8] row-major; 4-bit: low nibble first */
    const float* scales;       /* [N, K/group_size] */
    const int8_t* zero_points; /* [N, K/group_size], or NULL for symmetric */
    int32_t N;
    int32_t K;
    int32_t group_size;
    int32_t bits;
} qk_weights;

/* Opaque weights in a backend's own layout, made by qk_pack_weights. */
typedef struct qk_packed_weights qk_packed_weights;

/* One matrix multiplication Y[M,N] = X[M,K] . W^T (+ bias). */
typedef struct qk_matmul_args {
    const void* input;    /* X: [M, K] row-major, of input_dtype */
    void* output;         /* Y: [M, N] row-major, of input_dtype */
    const float* bias;    /* [N] float32, or NULL */
    int32_t M;
    qk_dtype input_dtype;
    qk_mode mode;
    qk_backend backend;   /* QK_BACKEND_AUTO: QKERNELS_BACKEND if set, else the best available */
    const char* kernel;   /* NULL, or the name of one registered kernel to force */
    void* stream;         /* reserved for the CUDA backend (a cudaStream_t); must be NULL here */
} qk_matmul_args;

typedef struct qk_kernel_info {
    const char* name;         /* encodes mode, types, tile and ISA */
    qk_backend backend;
    qk_mode mode;
    uint32_t bits_mask;       /* bit b set: b-bit weights supported (16 for 4-bit, 256 for 8-bit) */
    uint32_t dtype_mask;      /* bit d set: input dtype d supported */
    int32_t group_multiple;   /* group size must be a multiple of this (1: any) */
    int32_t max_group_size;   /* largest group size it runs exactly, e.g. an int32 accumulator's; 0: any */
    int32_t max_m;            /* preferred for M <= max_m; 0: any M */
    int32_t available;        /* compiled in (always, being listed) and detected on this CPU */
} qk_kernel_info;

typedef struct qk_backend_info {
    const char* name;
    int32_t compiled;         /* built into this library */
    int32_t detected;         /* the CPU has what it needs */
    int32_t available;        /* compiled and detected */
    int32_t own_layout;       /* packs weights into its own layout (else it reads the canonical one) */
    const char* reason;       /* why not available; "" when available. Valid until the next
                                 qk_backend_get on this thread. */
} qk_backend_info;

/* The planned entry point: fp16 X[M,K], canonical weights, fp16 Y[M,N], A16, automatic
 * backend. zeroPoints may be NULL. Errors: qk_last_status() / qk_last_error(). */
void quantizedMatMul(const void* input, const int8_t* weights, const float* scales,
                     const int8_t* zeroPoints, void* output, int M, int N, int K,
                     int groupSize, int bits);

/* Version and errors. */
int qk_abi_version(void);
const char* qk_version(void);               /* "MAJOR.MINOR.PATCH" */
const char* qk_status_string(qk_status status);
/* The status of the last call on this thread that returns a qk_status, or of quantizedMatMul. */
qk_status qk_last_status(void);
const char* qk_last_error(void);            /* its message; "" after success */

/* Quantize float X[N, K] (input_dtype) to the canonical format. q: N*K*bits/8 bytes; scales and
 * zero_points: N * (K / group) entries, with group = K unless granularity is QK_PER_GROUP.
 * zero_points must be NULL when symmetric and non-NULL otherwise. */
qk_status qk_quantize(const void* input, qk_dtype input_dtype, int32_t N, int32_t K,
                      int32_t bits, qk_granularity granularity, int32_t group_size,
                      int32_t symmetric, int8_t* q, float* scales, int8_t* zero_points);

/* Dequantize canonical weights to float W[N, K] of output_dtype. */
qk_status qk_dequantize(const qk_weights* weights, qk_dtype output_dtype, void* output);

/* Matmul on canonical weights (packed internally where the chosen backend needs it). */
qk_status qk_matmul(const qk_weights* weights, const qk_matmul_args* args);

/* Pack once for one backend, then multiply many times. QK_BACKEND_AUTO: QKERNELS_BACKEND if set,
 * else the backend of the first registry line that is available and runs these weights in both
 * modes.
 * The handle copies what it needs; the canonical arrays may be freed after packing. */
qk_status qk_pack_weights(const qk_weights* weights, qk_backend backend, qk_packed_weights** out);
qk_status qk_matmul_packed(const qk_packed_weights* packed, const qk_matmul_args* args);
qk_backend qk_packed_backend(const qk_packed_weights* packed);
size_t qk_packed_size(const qk_packed_weights* packed);   /* bytes of packed data */
void qk_packed_weights_free(qk_packed_weights* packed);

/* Dispatch as qk_matmul would: which backend and kernel run this problem. */
qk_status qk_select_kernel(const qk_weights* weights, const qk_matmul_args* args,
                           qk_kernel_info* out);

/* Threads of the multithreaded CPU kernels (OpenMP). 0 restores the default: OMP_NUM_THREADS if
 * set, else every core. Applies to calls that start after it, from any thread. A build without
 * OpenMP runs single-threaded and qk_get_num_threads returns 1. */
qk_status qk_set_num_threads(int32_t threads);
int32_t qk_get_num_threads(void);

/* What is compiled in and detected. */
int32_t qk_kernel_count(void);
qk_status qk_kernel_get(int32_t index, qk_kernel_info* out);
qk_status qk_backend_get(qk_backend backend, qk_backend_info* out);
uint64_t qk_cpu_features(void);
const char* qk_cpu_feature_name(uint64_t feature);  /* one bit; NULL if not a feature bit */

/* QK_CDEF_END */

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif /* QKERNELS_H */
