/* Internal interfaces shared by the core and the backends. Not installed. */
#ifndef QK_INTERNAL_H
#define QK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "qkernels.h"

/* ---- status: every public qk_ call ends in one of these two ---- */

/* Records success for qk_last_status() and returns QK_OK. */
qk_status qk_succeed(void);
/* Records a failure with a printf-style message naming the argument; returns status. */
qk_status qk_fail(qk_status status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- number formats (number_formats.c) ---- */

float qk_f16_to_f32(uint16_t h);
float qk_bf16_to_f32(uint16_t b);
size_t qk_dtype_size(qk_dtype dtype);
/* Element i of a float32 / float16 / bfloat16 array, exactly, as float32. */
float qk_load_f32(const void* data, qk_dtype dtype, size_t i);
/* Rounds x once, to nearest even, to dtype and stores it as element i (docs/numerics.md, reading 8). */
void qk_store_f64(void* data, qk_dtype dtype, size_t i, double x);

/* ---- memory ---- */

void* qk_aligned_alloc(size_t size);  /* 64-byte aligned (2 MiB huge pages from 2 MiB on Linux); NULL on failure or size 0 */
void qk_aligned_free(void* p);

/* ---- canonical weights ---- */

static inline int32_t qk_groups_per_row(const qk_weights* w) { return w->K / w->group_size; }
static inline size_t qk_row_bytes(int32_t K, int32_t bits) { return (size_t)K * (size_t)bits / 8; }

/* The zero point of element k of row n (0 when symmetric). */
static inline int32_t qk_weight_zp(const qk_weights* w, int32_t n, int32_t k) {
    return w->zero_points ? w->zero_points[(size_t)n * qk_groups_per_row(w) + k / w->group_size] : 0;
}

/* The scale of element k of row n. */
static inline float qk_weight_scale(const qk_weights* w, int32_t n, int32_t k) {
    return w->scales[(size_t)n * qk_groups_per_row(w) + k / w->group_size];
}

static inline float qk_clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Element k of row n as a signed integer (either width). */
static inline int32_t qk_weight_q(const qk_weights* w, int32_t n, int32_t k) {
    const int8_t* row = w->data + (size_t)n * qk_row_bytes(w->K, w->bits);
    if (w->bits == 8) return row[k];
    uint8_t byte = (uint8_t)row[k >> 1];
    int32_t nibble = (k & 1) ? (byte >> 4) : (byte & 0xF);
    return nibble >= 8 ? nibble - 16 : nibble;  /* two's complement int4 */
}

/* ---- threads (threads.c) ---- */

/* This thread's index in the enclosing OpenMP team, below the num_threads the region was started
 * with (size per-thread buffers by that number); 0 outside a team. */
int32_t qk_thread_index(void);

/* Threads for an M x N x K matmul: at most qk_get_num_threads(), and few enough that each gets
 * about 2^20 multiply-adds or more, since starting and joining a team costs microseconds (and much
 * more when the cores are busy with other work). */
int32_t qk_threads_for(int32_t M, int32_t N, int32_t K);

/* ---- backends and kernels (registry.c) ---- */

typedef struct qk_kernel qk_kernel;

struct qk_packed_weights {
    qk_backend backend;
    qk_weights canonical; /* shape and format; its pointers point into data when the layout is
                             canonical, and are NULL when the backend has its own layout */
    int has_zero_points;  /* whether canonical.zero_points was given (asymmetric weights) */
    void* data;           /* the backend's layout, one qk_aligned_alloc block (NULL for a view) */
    size_t size;
};

/* Runs one matmul. args and weights are validated; the kernel may fail only before writing. */
typedef qk_status (*qk_kernel_fn)(const qk_packed_weights* weights, const qk_matmul_args* args);

/* Packs canonical weights into the backend's layout: one qk_aligned_alloc block. */
typedef qk_status (*qk_pack_fn)(const qk_weights* weights, void** data, size_t* size);

typedef struct qk_backend_impl {
    const char* name;
    int compiled;
    uint64_t required_cpu;  /* every bit must be in qk_cpu_features() */
    qk_pack_fn pack;        /* NULL: the kernels read the canonical format */
} qk_backend_impl;

struct qk_kernel {
    const char* name;
    qk_backend backend;
    qk_mode mode;
    uint32_t bits_mask;
    uint32_t dtype_mask;
    int32_t group_multiple;
    int32_t max_group_size; /* 0: any */
    int32_t max_m;
    qk_kernel_fn run;
};

#define QK_BITS_4 (1u << 4)
#define QK_BITS_8 (1u << 8)
#define QK_DTYPES_FLOAT ((1u << QK_DTYPE_F32) | (1u << QK_DTYPE_F16) | (1u << QK_DTYPE_BF16))

const qk_backend_impl* qk_backend_impl_get(qk_backend backend);
int32_t qk_registry_size(void);
const qk_kernel* qk_registry_get(int32_t index);
/* Whether this CPU has what the backend needs (detection runs only for backends that need some). */
int qk_backend_detected(qk_backend backend);
/* Empty string when the backend can run here, else why not (valid until the next call on this thread). */
const char* qk_backend_unavailable_reason(qk_backend backend);

/* ---- the reference backend (native/ref) ---- */

qk_status qk_ref_quantize(const void* input, qk_dtype dtype, int32_t N, int32_t K, int32_t bits,
                          qk_granularity granularity, int32_t group_size, int symmetric,
                          int8_t* q, float* scales, int8_t* zero_points);
void qk_ref_dequantize(const qk_weights* w, qk_dtype dtype, void* output);
qk_status qk_ref_matmul_a16(const qk_packed_weights* weights, const qk_matmul_args* args);
qk_status qk_ref_matmul_a8(const qk_packed_weights* weights, const qk_matmul_args* args);

#endif /* QK_INTERNAL_H */
