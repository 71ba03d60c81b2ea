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

/* Bumped when a declaration below changes incompatibly. Structs that callers fill begin with a
 * `size` field (set it to sizeof the struct): a struct may grow at its end without a bump, and the
 * library reads a field only when it lies within the caller's size, else takes its documented
 * default (NULL or 0); it fills an output struct up to the caller's size. A size that stops before
 * the struct's ABI 2 fields end is an error (QK_ERR_INVALID_ARGUMENT). */
enum { QK_ABI_VERSION = 2 };

typedef enum qk_status {
    QK_OK = 0,
    QK_ERR_NULL_POINTER = 1,      /* a required pointer is NULL */
    QK_ERR_INVALID_SIZE = 2,      /* M, N or K is <= 0, or M is above a plan's max_m */
    QK_ERR_INVALID_GROUP = 3,     /* group size <= 0 (or, at quantizedMatMul, not a divisor of K) */
    QK_ERR_ODD_K = 4,             /* 4-bit weights need an even K */
    QK_ERR_INVALID_BITS = 5,      /* bits is not 4 or 8 */
    QK_ERR_INVALID_DTYPE = 6,     /* dtype not accepted for this argument */
    QK_ERR_INVALID_ARGUMENT = 7,  /* any other out-of-range enum or value, a name of no backend or kernel */
    QK_ERR_BACKEND_UNAVAILABLE = 8, /* forced backend or kernel not compiled in (one of qkernels's own,
                                       for another architecture or left out of this build) or not detected */
    QK_ERR_UNSUPPORTED = 9,       /* the backend or kernel cannot run this problem */
    QK_ERR_MISALIGNED = 10,       /* a pointer is not aligned to its element size */
    QK_ERR_BUFFER_TOO_SMALL = 11, /* reserved: no call returns it yet (none takes a buffer length) */
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

/* A backend is named by an id that the library assigns when the backend registers: the built-in
 * ones when the library first needs them, then those found in optional backend libraries (see
 * qk_register_backend), then any a program registers itself. Ids run from 1 to qk_backend_count();
 * enumerate them, or find one by name, rather than assume a number. */
typedef int32_t qk_backend;
enum { QK_BACKEND_AUTO = 0 };

/* CPU features, by index: bit (1 << index) of qk_cpu_features(). A feature is detected only when
 * the CPU has it and the operating system has enabled its register state (and, for AMX, granted
 * this process the tile data). Room for 64; new ones are appended. */
typedef enum qk_cpu_feature {
    QK_CPU_AVX2 = 0,
    QK_CPU_FMA = 1,
    QK_CPU_F16C = 2,
    QK_CPU_AVX_VNNI = 3,
    QK_CPU_AVX512F = 4,
    QK_CPU_AVX512BW = 5,
    QK_CPU_AVX512VL = 6,
    QK_CPU_AVX512DQ = 7,
    QK_CPU_AVX512_VNNI = 8,
    QK_CPU_AVX512_BF16 = 9,
    QK_CPU_AVX512_FP16 = 10,
    QK_CPU_AVX512_VBMI = 11,
    QK_CPU_AMX_TILE = 12,
    QK_CPU_AMX_INT8 = 13,
    QK_CPU_AMX_BF16 = 14,
    QK_CPU_AMX_FP16 = 15,
    QK_CPU_NEON = 16,
    QK_CPU_NEON_FP16 = 17,      /* FEAT_FP16: half-precision arithmetic */
    QK_CPU_NEON_DOTPROD = 18,
    QK_CPU_NEON_I8MM = 19,
    QK_CPU_NEON_BF16 = 20,
    QK_CPU_SVE = 21,
    QK_CPU_SVE2 = 22,
    QK_CPU_SME = 23,
    QK_CPU_FEATURE_COUNT = 24
} qk_cpu_feature;

/* Weights in the canonical format (docs/numerics.md, section 1). NG = ceil(K / group_size): the
 * last group of a row may be shorter (format v2). */
typedef struct qk_weights {
    uint32_t size;             /* sizeof(qk_weights) */
    const int8_t* data;        /* [N, K*bits/8] row-major; 4-bit: low nibble first */
    const float* scales;       /* [N, NG] */
    const int8_t* zero_points; /* [N, NG], or NULL for symmetric */
    int32_t N;
    int32_t K;
    int32_t group_size;
    int32_t bits;
    const float* offsets;      /* [N, NG] added after scaling (format v2), or NULL for none */
} qk_weights;

/* Opaque weights in one backend's layout, made by qk_pack_weights. */
typedef struct qk_packed_weights qk_packed_weights;

/* One matrix multiplication Y[M,N] = X[M,K] . W^T (+ bias). */
typedef struct qk_matmul_args {
    uint32_t size;        /* sizeof(qk_matmul_args) */
    const void* input;    /* X: [M, K] row-major, of input_dtype */
    void* output;         /* Y: [M, N] row-major, of input_dtype */
    const float* bias;    /* [N] float32, or NULL */
    int32_t M;
    qk_dtype input_dtype;
    qk_mode mode;
    qk_backend backend;   /* QK_BACKEND_AUTO: QKERNELS_BACKEND if set, else the best available
                             CPU backend (a device backend, such as cuda, runs only when named) */
    const char* kernel;   /* NULL, or the name of one registered kernel to force */
    void* stream;         /* for a backend that runs on a device queue (a cudaStream_t; NULL: the
                             default stream), whose input, output and bias are device pointers;
                             NULL on the CPU */
} qk_matmul_args;

typedef struct qk_kernel_info {
    uint32_t size;            /* sizeof(qk_kernel_info): the caller's, filled up to it */
    const char* name;         /* encodes mode, types, tile and ISA */
    qk_backend backend;
    qk_mode mode;
    uint32_t bits_mask;       /* bit b set: b-bit weights supported (16 for 4-bit, 256 for 8-bit) */
    uint32_t dtype_mask;      /* bit d set: input dtype d supported */
    int32_t group_multiple;   /* group size must be a multiple of this (1: any) */
    int32_t max_group_size;   /* longest group it runs exactly (min(group_size, K) elements); 0: any */
    int32_t max_m;            /* preferred for M <= max_m; 0: any M */
    int32_t available;        /* its backend is available here, and the CPU has required_cpu */
    uint32_t format_flags;    /* QK_FORMAT_* bits: the format v2 features it runs */
    int32_t canonical;        /* reads the canonical layout (runs on unpacked weights) */
    uint64_t required_cpu;    /* bits of qk_cpu_features() it needs beyond its backend's */
} qk_kernel_info;

/* Format features a kernel may support, beyond groups that divide K and no offsets. */
enum { QK_FORMAT_OFFSETS = 1, QK_FORMAT_RAGGED_GROUPS = 2 };

typedef struct qk_backend_info {
    uint32_t size;            /* sizeof(qk_backend_info): the caller's, filled up to it */
    const char* name;
    int32_t compiled;         /* built in, or registered from a backend library */
    int32_t detected;         /* the machine has what it needs */
    int32_t available;        /* compiled and detected */
    int32_t own_layout;       /* packs weights into its own layout (else it reads the canonical one) */
    const char* reason;       /* why not available; "" when available. Valid until the next
                                 qk_backend_get on this thread. */
    const char* library;      /* the shared library it came from ("" when built in) */
    int32_t priority;         /* automatic dispatch tries backends in decreasing priority */
    int32_t device;           /* runs on a device (cuda): input, output and bias are device pointers,
                                 work goes on qk_matmul_args.stream, and automatic dispatch never
                                 picks it */
} qk_backend_info;

/* The planned entry point: fp16 X[M,K], canonical weights, fp16 Y[M,N], A16, automatic
 * backend. zeroPoints may be NULL; groupSize must divide K. Errors: qk_last_status() /
 * qk_last_error(). Stateless: nothing is cached between calls, so the weights may change between
 * them; it runs kernels that read the canonical layout where one fits, never packing at small M. */
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
 * zero_points: N * ceil(K / group) entries, with group = K unless granularity is QK_PER_GROUP.
 * zero_points must be NULL when symmetric (1) and non-NULL when asymmetric (0). */
qk_status qk_quantize(const void* input, qk_dtype input_dtype, int32_t N, int32_t K,
                      int32_t bits, qk_granularity granularity, int32_t group_size,
                      int32_t symmetric, int8_t* q, float* scales, int8_t* zero_points);

/* Dequantize canonical weights to float W[N, K] of output_dtype. */
qk_status qk_dequantize(const qk_weights* weights, qk_dtype output_dtype, void* output);

/* Stateless matmul on canonical weights: selects a kernel for this call and packs nothing at
 * small M (kernels that read the canonical layout); for larger M, where a backend's own layout
 * pays for itself, it packs for the call and frees the pack. */
qk_status qk_matmul(const qk_weights* weights, const qk_matmul_args* args);

/* Pack once for one backend. QK_BACKEND_AUTO: QKERNELS_BACKEND if set, else the best available
 * backend that runs these weights in both modes. The handle copies what it needs; the canonical
 * arrays may be freed after packing. Automatic choice never packs for a device backend. */
qk_status qk_pack_weights(const qk_weights* weights, qk_backend backend, qk_packed_weights** out);
/* As qk_pack_weights, except that a backend without its own layout keeps pointers to the caller's
 * arrays instead of copying them: they must stay alive and unchanged while the handle or any plan
 * made from it lives. For language bindings whose weight objects own the arrays. */
qk_status qk_pack_weights_borrowing(const qk_weights* weights, qk_backend backend, qk_packed_weights** out);
/* Selects a kernel of the packed weights' backend on every call; a plan selects once. */
qk_status qk_matmul_packed(const qk_packed_weights* packed, const qk_matmul_args* args);
qk_backend qk_packed_backend(const qk_packed_weights* packed);
size_t qk_packed_size(const qk_packed_weights* packed);   /* bytes of packed data it owns */
/* Releases the caller's reference; the pack lives on while a plan made from it does. */
void qk_packed_weights_free(qk_packed_weights* packed);

/* A prepared plan: kernels selected once, for one mode and input dtype and every M up to max_m,
 * on packed weights. Running it is one call with only the cheap checks, and several threads may
 * run one plan at once. */
typedef struct qk_plan qk_plan;

typedef struct qk_plan_desc {
    uint32_t size;        /* sizeof(qk_plan_desc) */
    qk_mode mode;
    qk_dtype input_dtype;
    int32_t max_m;        /* the largest M it will run; 0: any */
    const char* kernel;   /* NULL, or one kernel of the packed weights' backend to force for every M */
} qk_plan_desc;

qk_status qk_plan_create(const qk_packed_weights* packed, const qk_plan_desc* desc, qk_plan** out);
/* Y[M, N] = X[M, K] . W^T (+ bias[N]); stream as in qk_matmul_args. */
qk_status qk_plan_run(const qk_plan* plan, const void* input, void* output, const float* bias,
                      int32_t M, void* stream);
/* The kernel the plan runs at M rows. */
qk_status qk_plan_kernel(const qk_plan* plan, int32_t M, qk_kernel_info* out);
void qk_plan_free(qk_plan* plan);

/* Dispatch as qk_matmul would: which backend and kernel run this problem. */
qk_status qk_select_kernel(const qk_weights* weights, const qk_matmul_args* args,
                           qk_kernel_info* out);
/* Dispatch as qk_matmul_packed would on these weights packed for args->backend: what a plan runs.
 * QK_BACKEND_AUTO: the best kernel for args->mode among all backends' kernels that run packed
 * weights; pack for its backend (out->backend) to run it. qk_pack_weights(QK_BACKEND_AUTO) takes
 * one backend for both modes, so it can pack for another where the best backend of this mode does
 * not run the other mode (e.g. a group past an A8 kernel's max_group_size). It differs from
 * qk_select_kernel where a stateless call takes a kernel that reads the canonical arrays. */
qk_status qk_select_packed_kernel(const qk_weights* weights, const qk_matmul_args* args,
                                  qk_kernel_info* out);

/* Threads of the CPU kernels, process-wide, for calls that start after it. 0 restores the default:
 * QKERNELS_NUM_THREADS if set, else the CPUs this process may run on. At most QK_MAX_THREADS. */
enum { QK_MAX_THREADS = 256 };
qk_status qk_set_num_threads(int32_t threads);
int32_t qk_get_num_threads(void);

/* What is registered and detected. Kernels are enumerated in dispatch order. */
int32_t qk_kernel_count(void);
qk_status qk_kernel_get(int32_t index, qk_kernel_info* out);
int32_t qk_backend_count(void);             /* ids run from 1 to this */
qk_status qk_backend_get(qk_backend backend, qk_backend_info* out);
qk_status qk_backend_find(const char* name, qk_backend* out);
/* qkernels's own backends, whether this library registers them or not: every built-in backend of
 * every architecture, and the CUDA library's. The name of the index-th (from 0), NULL past the last;
 * *not_built (if not_built is not NULL) is NULL where this library registers it, else why it does
 * not (static text beginning "not built: ", e.g. "not built: aarch64 builds only"). */
const char* qk_project_backend(int32_t index, const char** not_built);
uint64_t qk_cpu_features(void);
int32_t qk_cpu_has(qk_cpu_feature feature);
const char* qk_cpu_feature_name(qk_cpu_feature feature);  /* NULL if not a feature */

/* QK_CDEF_END */

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif /* QKERNELS_H */
