/* Internal interfaces shared by the core and the backends. Not installed. */
#ifndef QK_INTERNAL_H
#define QK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "qkernels_backend.h"

/* ---- status: every public qk_ call ends in qk_succeed or qk_fail (qkernels_backend.h) ---- */

/* Records success for qk_last_status() and returns QK_OK. */
qk_status qk_succeed(void);

/* The calling thread's last status and message, kept across work that must not change them. */
enum { QK_ERROR_BYTES = 512 };
typedef struct {
    qk_status status;
    char message[QK_ERROR_BYTES];
} qk_saved_status;
void qk_save_status(qk_saved_status* saved);
void qk_restore_status(const qk_saved_status* saved);

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

/* Groups per row, the last one possibly shorter (format v2). */
static inline int32_t qk_groups_per_row(const qk_weights* w) {
    return (int32_t)(((int64_t)w->K + w->group_size - 1) / w->group_size);
}
static inline size_t qk_row_bytes(int32_t K, int32_t bits) { return (size_t)K * (size_t)bits / 8; }
static inline size_t qk_group_index(const qk_weights* w, int32_t n, int32_t k) {
    return (size_t)n * qk_groups_per_row(w) + (size_t)(k / w->group_size);
}

/* Group g's length: G, or less for the last group of a row (format v2). */
static inline int32_t qk_group_length(const qk_weights* w, int32_t g) {
    int64_t left = (int64_t)w->K - (int64_t)g * w->group_size;
    return left < w->group_size ? (int32_t)left : w->group_size;
}

/* Four canonical int4 bytes (k 0..7 from an even k, low nibble first) reordered so that byte i
 * holds k i in its low nibble and k i + 4 in its high one: the dword order of the x86 packs. */
static inline uint32_t qk_int4_dword_halves(uint32_t canonical) {
    uint32_t even = canonical & 0x0F0F0F0Fu, odd = (canonical >> 4) & 0x0F0F0F0Fu; /* q0 q2 q4 q6, q1 q3 q5 q7 */
    uint32_t first = (even & 0xFF) | (odd & 0xFF) << 8 | (even & 0xFF00) << 8 | (odd & 0xFF00) << 16;
    uint32_t second = (even >> 16 & 0xFF) | (odd >> 16 & 0xFF) << 8 | (even >> 8 & 0xFF0000) | (odd & 0xFF000000);
    return first | second << 4;
}

/* The zero point of element k of row n (0 when symmetric). */
static inline int32_t qk_weight_zp(const qk_weights* w, int32_t n, int32_t k) {
    return w->zero_points ? w->zero_points[qk_group_index(w, n, k)] : 0;
}

/* The scale of element k of row n. */
static inline float qk_weight_scale(const qk_weights* w, int32_t n, int32_t k) {
    return w->scales[qk_group_index(w, n, k)];
}

/* The offset of element k of row n (0 without offsets). */
static inline float qk_weight_offset(const qk_weights* w, int32_t n, int32_t k) {
    return w->offsets ? w->offsets[qk_group_index(w, n, k)] : 0.0f;
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

/* ---- quantize.c: the quantizers of docs/numerics.md section 2, on checked arguments ---- */

qk_status qk_quantize_unchecked(const void* input, qk_dtype dtype, int32_t N, int32_t K, int32_t bits,
                                qk_granularity granularity, int32_t group_size, int symmetric,
                                int8_t* q, float* scales, int8_t* zero_points);
void qk_dequantize_unchecked(const qk_weights* w, qk_dtype dtype, void* output);

/* ---- threads (threads.c) ---- */

/* Threads for an M x N x K matmul: at most qk_get_num_threads(), and few enough that each gets
 * about 2^20 multiply-adds or more, since waking a worker costs microseconds. */
int32_t qk_threads_for(int32_t M, int32_t N, int32_t K);

/* ---- workspace (memory.c) ---- */

/* This thread's workspace of at least `size` bytes, 64-byte aligned, grown (never shrunk) as
 * needed and freed when the thread exits; NULL when it cannot grow. Valid until the next call on
 * this thread. */
void* qk_thread_workspace(size_t size);

/* ---- the registry (registry.c) ---- */

/* Kernel table shorthands. */
#define QK_BITS_4_8 ((1u << 4) | (1u << 8))
#define QK_DTYPES_FLOAT ((1u << QK_DTYPE_F32) | (1u << QK_DTYPE_F16) | (1u << QK_DTYPE_BF16))
#define QK_FORMAT_V2 (QK_FORMAT_OFFSETS | QK_FORMAT_RAGGED_GROUPS)
/* A8 kernels with int32 group sums: |qx * (q - zp)| <= 127 * 255, so the sums are exact up to this
 * group size (reading 5). */
#define QK_A8_INT32_EXACT_GROUP 66311

typedef struct qk_backend_entry {
    const qk_backend_desc* desc;
    const char* library;  /* "" when built in */
    const char* reason;   /* "" when available, else why not (fixed at registration) */
} qk_backend_entry;

/* Registers the built-in backends and loads the backend libraries, once. */
void qk_registry_init(void);
/* The backend with this id, or NULL. */
const qk_backend_entry* qk_backend_entry_get(qk_backend id);
/* Backend ids in dispatch order (decreasing priority); *count gets their number. The array is an
 * immutable snapshot. */
const qk_backend* qk_backend_order(int32_t* count);

#endif /* QK_INTERNAL_H */
