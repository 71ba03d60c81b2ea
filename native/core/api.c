/* The public API: argument checks, dispatch, packing. Every check runs before anything is written,
 * so a failed call leaves its outputs untouched. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int qk_abi_version(void) { return QK_ABI_VERSION; }

const char* qk_version(void) { return QK_VERSION_STRING; }

static int misaligned(const void* p, size_t alignment) { return ((uintptr_t)p % alignment) != 0; }

static int valid_dtype(qk_dtype d) { return d == QK_DTYPE_F32 || d == QK_DTYPE_F16 || d == QK_DTYPE_BF16; }

static qk_status check_format(int32_t N, int32_t K, int32_t bits, int32_t group_size) {
    if (N <= 0) return qk_fail(QK_ERR_INVALID_SIZE, "N=%d must be positive", N);
    if (K <= 0) return qk_fail(QK_ERR_INVALID_SIZE, "K=%d must be positive", K);
    if (bits != 4 && bits != 8) return qk_fail(QK_ERR_INVALID_BITS, "bits=%d must be 4 or 8", bits);
    if (group_size <= 0 || K % group_size != 0)
        return qk_fail(QK_ERR_INVALID_GROUP, "group_size=%d must be a positive divisor of K=%d",
                       group_size, K);
    if (bits == 4 && K % 2 != 0)
        return qk_fail(QK_ERR_ODD_K, "K=%d must be even for 4-bit weights (two per byte)", K);
    return QK_OK;
}

/* Checks the format; with zero_points set, also the range of 4-bit zero points (a pass over them,
 * done where weights are consumed: matmul and pack, not kernel selection). */
static qk_status check_weights(const qk_weights* w, int zero_points) {
    if (!w) return qk_fail(QK_ERR_NULL_POINTER, "weights is NULL");
    if (!w->data) return qk_fail(QK_ERR_NULL_POINTER, "weights->data is NULL");
    if (!w->scales) return qk_fail(QK_ERR_NULL_POINTER, "weights->scales is NULL");
    qk_status s = check_format(w->N, w->K, w->bits, w->group_size);
    if (s != QK_OK) return s;
    if (misaligned(w->scales, sizeof(float)))
        return qk_fail(QK_ERR_MISALIGNED, "weights->scales is not 4-byte aligned");
    if (zero_points && w->bits == 4 && w->zero_points) {
        size_t count = (size_t)w->N * (size_t)qk_groups_per_row(w);
        for (size_t i = 0; i < count; i++)
            if (w->zero_points[i] < -8 || w->zero_points[i] > 7)
                return qk_fail(QK_ERR_INVALID_ARGUMENT,
                               "weights->zero_points[%zu]=%d is outside [-8, 7] for 4-bit weights",
                               i, w->zero_points[i]);
    }
    return QK_OK;
}

static qk_status check_args(const qk_matmul_args* a) {
    if (!a) return qk_fail(QK_ERR_NULL_POINTER, "args is NULL");
    if (!a->input) return qk_fail(QK_ERR_NULL_POINTER, "args->input is NULL");
    if (!a->output) return qk_fail(QK_ERR_NULL_POINTER, "args->output is NULL");
    if (a->M <= 0) return qk_fail(QK_ERR_INVALID_SIZE, "M=%d must be positive", a->M);
    if (!valid_dtype(a->input_dtype))
        return qk_fail(QK_ERR_INVALID_DTYPE, "input_dtype=%d is not float32, float16 or bfloat16",
                       (int)a->input_dtype);
    if (a->mode != QK_MODE_A16 && a->mode != QK_MODE_A8)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "mode=%d is not QK_MODE_A16 or QK_MODE_A8", (int)a->mode);
    if (a->backend < QK_BACKEND_AUTO || a->backend >= QK_BACKEND_COUNT)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend=%d is not a qk_backend", (int)a->backend);
    size_t element = qk_dtype_size(a->input_dtype);
    if (misaligned(a->input, element))
        return qk_fail(QK_ERR_MISALIGNED, "args->input is not %zu-byte aligned", element);
    if (misaligned(a->output, element))
        return qk_fail(QK_ERR_MISALIGNED, "args->output is not %zu-byte aligned", element);
    if (a->bias && misaligned(a->bias, sizeof(float)))
        return qk_fail(QK_ERR_MISALIGNED, "args->bias is not 4-byte aligned");
    if (a->stream)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "args->stream must be NULL: libqkernels runs on the CPU");
    return QK_OK;
}

/* ---- dispatch ---- */

static const char* mode_name(qk_mode m) { return m == QK_MODE_A8 ? "A8" : "A16"; }

static const char* dtype_name(qk_dtype d) {
    return d == QK_DTYPE_F16 ? "float16" : d == QK_DTYPE_BF16 ? "bfloat16" : "float32";
}

static int backend_available(qk_backend b) { return qk_backend_unavailable_reason(b)[0] == '\0'; }

static qk_status backend_unavailable(qk_backend b, const char* what) {
    return qk_fail(QK_ERR_BACKEND_UNAVAILABLE, "%s '%s' is not available: %s", what,
                   qk_backend_impl_get(b)->name, qk_backend_unavailable_reason(b));
}

static int kernel_fits_format(const qk_kernel* k, const qk_weights* w) {
    return (k->bits_mask & (1u << w->bits)) && w->group_size % k->group_multiple == 0 &&
           (k->max_group_size == 0 || w->group_size <= k->max_group_size);
}

static int kernel_fits(const qk_kernel* k, const qk_weights* w, const qk_matmul_args* a) {
    return k->mode == a->mode && (k->dtype_mask & (1u << a->input_dtype)) && kernel_fits_format(k, w);
}

/* QKERNELS_BACKEND names a backend that automatic dispatch must use ("auto" or unset: none). */
static qk_status backend_from_environment(qk_backend* out) {
    *out = QK_BACKEND_AUTO;
    const char* name = getenv("QKERNELS_BACKEND");
    if (!name || !*name || strcmp(name, "auto") == 0) return QK_OK;
    for (int b = QK_BACKEND_AUTO + 1; b < QK_BACKEND_COUNT; b++)
        if (strcmp(name, qk_backend_impl_get((qk_backend)b)->name) == 0) {
            *out = (qk_backend)b;
            return QK_OK;
        }
    return qk_fail(QK_ERR_INVALID_ARGUMENT, "QKERNELS_BACKEND='%s' names no backend", name);
}

/* Picks the kernel for a problem. `fixed` is the backend of packed weights, or AUTO.
 * Precedence: a forced kernel, then a forced backend (argument, else QKERNELS_BACKEND when
 * nothing is fixed), then the first available kernel in registry order. Forced choices that
 * cannot run fail; they never fall back. */
static qk_status select_kernel(const qk_weights* w, const qk_matmul_args* a, qk_backend fixed,
                               const qk_kernel** out) {
    qk_backend wanted = a->backend;
    if (fixed != QK_BACKEND_AUTO) {
        if (wanted != QK_BACKEND_AUTO && wanted != fixed)
            return qk_fail(QK_ERR_INVALID_ARGUMENT, "args->backend '%s' differs from the packed weights' '%s'",
                           qk_backend_impl_get(wanted)->name, qk_backend_impl_get(fixed)->name);
        wanted = fixed;
    }
    if (a->kernel) {
        for (int32_t i = 0; i < qk_registry_size(); i++) {
            const qk_kernel* k = qk_registry_get(i);
            if (strcmp(k->name, a->kernel) != 0) continue;
            if (wanted != QK_BACKEND_AUTO && k->backend != wanted)
                return qk_fail(QK_ERR_INVALID_ARGUMENT, "kernel '%s' belongs to backend '%s', not '%s'",
                               k->name, qk_backend_impl_get(k->backend)->name,
                               qk_backend_impl_get(wanted)->name);
            if (!backend_available(k->backend)) return backend_unavailable(k->backend, "kernel's backend");
            if (!kernel_fits(k, w, a))
                return qk_fail(QK_ERR_UNSUPPORTED,
                               "kernel '%s' does not run %s on %s input, %d-bit weights, group size %d",
                               k->name, mode_name(a->mode), dtype_name(a->input_dtype), w->bits, w->group_size);
            *out = k;
            return QK_OK;
        }
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "args->kernel '%s' is not a registered kernel", a->kernel);
    }
    if (wanted == QK_BACKEND_AUTO) {
        qk_status s = backend_from_environment(&wanted);
        if (s != QK_OK) return s;
    }
    if (wanted != QK_BACKEND_AUTO && !backend_available(wanted)) return backend_unavailable(wanted, "backend");

    const qk_kernel* any_m = NULL; /* the best kernel that fits, ignoring its preferred M */
    for (int32_t i = 0; i < qk_registry_size(); i++) {
        const qk_kernel* k = qk_registry_get(i);
        if (wanted != QK_BACKEND_AUTO ? k->backend != wanted : !backend_available(k->backend)) continue;
        if (!kernel_fits(k, w, a)) continue;
        if (k->max_m == 0 || a->M <= k->max_m) {
            *out = k;
            return QK_OK;
        }
        if (!any_m) any_m = k;
    }
    if (any_m) {
        *out = any_m;
        return QK_OK;
    }
    return qk_fail(QK_ERR_UNSUPPORTED, "backend '%s' has no kernel for %s on %s input, %d-bit weights, group size %d",
                   qk_backend_impl_get(wanted == QK_BACKEND_AUTO ? QK_BACKEND_REF : wanted)->name,
                   mode_name(a->mode), dtype_name(a->input_dtype), w->bits, w->group_size);
}

static void fill_kernel_info(const qk_kernel* k, qk_kernel_info* out) {
    out->name = k->name;
    out->backend = k->backend;
    out->mode = k->mode;
    out->bits_mask = k->bits_mask;
    out->dtype_mask = k->dtype_mask;
    out->group_multiple = k->group_multiple;
    out->max_group_size = k->max_group_size;
    out->max_m = k->max_m;
    out->available = backend_available(k->backend);
}

qk_status qk_select_kernel(const qk_weights* weights, const qk_matmul_args* args, qk_kernel_info* out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_status s = check_weights(weights, 0);
    if (s == QK_OK) s = check_args(args);
    const qk_kernel* k = NULL;
    if (s == QK_OK) s = select_kernel(weights, args, QK_BACKEND_AUTO, &k);
    if (s != QK_OK) return s;
    fill_kernel_info(k, out);
    return qk_succeed();
}

/* ---- packing ---- */

/* The canonical layout copied into one 64-byte-aligned block: data, then scales, then zero points.
 * With block NULL it only measures; otherwise it copies w in and points p->canonical at the copy. */
static size_t canonical_block(const qk_weights* w, uint8_t* block, qk_packed_weights* p) {
    size_t q_bytes = (size_t)w->N * qk_row_bytes(w->K, w->bits);
    size_t groups = (size_t)w->N * (size_t)qk_groups_per_row(w);
    size_t scales_at = (q_bytes + 63) & ~(size_t)63, zp_at = scales_at + groups * sizeof(float);
    if (block) {
        memcpy(block, w->data, q_bytes);
        memcpy(block + scales_at, w->scales, groups * sizeof(float));
        if (w->zero_points) memcpy(block + zp_at, w->zero_points, groups);
        p->canonical.data = (const int8_t*)block;
        p->canonical.scales = (const float*)(block + scales_at);
        p->canonical.zero_points = w->zero_points ? (const int8_t*)(block + zp_at) : NULL;
    }
    return zp_at + (w->zero_points ? groups : 0);
}

static qk_status pack(const qk_weights* w, qk_backend backend, qk_packed_weights* p) {
    const qk_backend_impl* impl = qk_backend_impl_get(backend);
    p->backend = backend;
    p->canonical = *w;
    p->has_zero_points = w->zero_points != NULL;
    if (impl->pack) {
        /* Only the shape stays: the caller may free the canonical arrays after packing. */
        p->canonical.data = NULL;
        p->canonical.scales = NULL;
        p->canonical.zero_points = NULL;
        return impl->pack(w, &p->data, &p->size);
    }
    p->size = canonical_block(w, NULL, p);
    p->data = qk_aligned_alloc(p->size);
    if (!p->data) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of packed weights", p->size);
    canonical_block(w, p->data, p);
    return QK_OK;
}

/* The backend automatic packing picks: that of the first registry line (best first) whose backend
 * is available and runs these weights in both modes. */
static qk_backend best_backend_for(const qk_weights* w) {
    for (int32_t i = 0; i < qk_registry_size(); i++) {
        qk_backend b = qk_registry_get(i)->backend;
        if (!backend_available(b)) continue;
        int modes = 0;
        for (int32_t j = 0; j < qk_registry_size(); j++) {
            const qk_kernel* k = qk_registry_get(j);
            if (k->backend == b && kernel_fits_format(k, w)) modes |= 1 << k->mode;
        }
        if (modes == ((1 << QK_MODE_A16) | (1 << QK_MODE_A8))) return b;
    }
    return QK_BACKEND_REF;
}

qk_status qk_pack_weights(const qk_weights* weights, qk_backend backend, qk_packed_weights** out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_status s = check_weights(weights, 1);
    if (s != QK_OK) return s;
    if (backend < QK_BACKEND_AUTO || backend >= QK_BACKEND_COUNT)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend=%d is not a qk_backend", (int)backend);
    if (backend == QK_BACKEND_AUTO) {
        s = backend_from_environment(&backend);
        if (s != QK_OK) return s;
        if (backend == QK_BACKEND_AUTO) backend = best_backend_for(weights);
    }
    if (!backend_available(backend)) return backend_unavailable(backend, "backend");
    qk_packed_weights* p = calloc(1, sizeof *p);
    if (!p) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate a packed-weights handle");
    s = pack(weights, backend, p);
    if (s != QK_OK) {
        free(p);
        return s;
    }
    *out = p;
    return qk_succeed();
}

qk_backend qk_packed_backend(const qk_packed_weights* packed) { return packed ? packed->backend : QK_BACKEND_AUTO; }

size_t qk_packed_size(const qk_packed_weights* packed) { return packed ? packed->size : 0; }

void qk_packed_weights_free(qk_packed_weights* packed) {
    if (!packed) return;
    qk_aligned_free(packed->data);
    free(packed);
}

/* ---- matmul ---- */

qk_status qk_matmul(const qk_weights* weights, const qk_matmul_args* args) {
    qk_status s = check_weights(weights, 1);
    if (s == QK_OK) s = check_args(args);
    const qk_kernel* k = NULL;
    if (s == QK_OK) s = select_kernel(weights, args, QK_BACKEND_AUTO, &k);
    if (s != QK_OK) return s;

    qk_packed_weights p = {.backend = k->backend, .canonical = *weights, .has_zero_points = weights->zero_points != NULL};
    if (qk_backend_impl_get(k->backend)->pack) {
        s = pack(weights, k->backend, &p); /* a backend with its own layout: pack for this call */
        if (s != QK_OK) return s;
    }
    s = k->run(&p, args);
    qk_aligned_free(p.data);
    return s == QK_OK ? qk_succeed() : s;
}

qk_status qk_matmul_packed(const qk_packed_weights* packed, const qk_matmul_args* args) {
    if (!packed) return qk_fail(QK_ERR_NULL_POINTER, "packed is NULL");
    qk_status s = check_args(args);
    const qk_kernel* k = NULL;
    if (s == QK_OK) s = select_kernel(&packed->canonical, args, packed->backend, &k);
    if (s != QK_OK) return s;
    s = k->run(packed, args);
    return s == QK_OK ? qk_succeed() : s;
}

void quantizedMatMul(const void* input, const int8_t* weights, const float* scales,
                     const int8_t* zeroPoints, void* output, int M, int N, int K, int groupSize,
                     int bits) {
    qk_weights w = {weights, scales, zeroPoints, N, K, groupSize, bits};
    qk_matmul_args a = {.input = input, .output = output, .M = M, .input_dtype = QK_DTYPE_F16,
                        .mode = QK_MODE_A16, .backend = QK_BACKEND_AUTO};
    qk_matmul(&w, &a);
}

/* ---- quantize / dequantize ---- */

qk_status qk_quantize(const void* input, qk_dtype input_dtype, int32_t N, int32_t K, int32_t bits,
                      qk_granularity granularity, int32_t group_size, int32_t symmetric, int8_t* q,
                      float* scales, int8_t* zero_points) {
    if (!input) return qk_fail(QK_ERR_NULL_POINTER, "input is NULL");
    if (!q) return qk_fail(QK_ERR_NULL_POINTER, "q is NULL");
    if (!scales) return qk_fail(QK_ERR_NULL_POINTER, "scales is NULL");
    if (!symmetric && !zero_points)
        return qk_fail(QK_ERR_NULL_POINTER, "zero_points is NULL but symmetric is 0");
    if (symmetric && zero_points)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "zero_points must be NULL when symmetric is 1");
    if (!valid_dtype(input_dtype))
        return qk_fail(QK_ERR_INVALID_DTYPE, "input_dtype=%d is not float32, float16 or bfloat16", (int)input_dtype);
    if (granularity != QK_PER_TENSOR && granularity != QK_PER_CHANNEL && granularity != QK_PER_GROUP)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "granularity=%d is not a qk_granularity", (int)granularity);
    int32_t group = granularity == QK_PER_GROUP ? group_size : K;
    qk_status s = check_format(N, K, bits, group);
    if (s != QK_OK) return s;
    if (misaligned(input, qk_dtype_size(input_dtype)))
        return qk_fail(QK_ERR_MISALIGNED, "input is not %zu-byte aligned", qk_dtype_size(input_dtype));
    if (misaligned(scales, sizeof(float))) return qk_fail(QK_ERR_MISALIGNED, "scales is not 4-byte aligned");
    s = qk_ref_quantize(input, input_dtype, N, K, bits, granularity, group, symmetric, q, scales, zero_points);
    return s == QK_OK ? qk_succeed() : s;
}

qk_status qk_dequantize(const qk_weights* weights, qk_dtype output_dtype, void* output) {
    qk_status s = check_weights(weights, 1);
    if (s != QK_OK) return s;
    if (!output) return qk_fail(QK_ERR_NULL_POINTER, "output is NULL");
    if (!valid_dtype(output_dtype))
        return qk_fail(QK_ERR_INVALID_DTYPE, "output_dtype=%d is not float32, float16 or bfloat16", (int)output_dtype);
    if (misaligned(output, qk_dtype_size(output_dtype)))
        return qk_fail(QK_ERR_MISALIGNED, "output is not %zu-byte aligned", qk_dtype_size(output_dtype));
    qk_ref_dequantize(weights, output_dtype, output);
    return qk_succeed();
}

/* ---- what is compiled and detected ---- */

int32_t qk_kernel_count(void) { return qk_registry_size(); }

qk_status qk_kernel_get(int32_t index, qk_kernel_info* out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    const qk_kernel* k = qk_registry_get(index);
    if (!k) return qk_fail(QK_ERR_INVALID_ARGUMENT, "kernel index %d is outside [0, %d)", index, qk_registry_size());
    fill_kernel_info(k, out);
    return qk_succeed();
}

qk_status qk_backend_get(qk_backend backend, qk_backend_info* out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    const qk_backend_impl* b = qk_backend_impl_get(backend);
    if (!b) return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend=%d is not a qk_backend", (int)backend);
    out->name = b->name;
    out->compiled = b->compiled;
    out->detected = qk_backend_detected(backend);
    out->own_layout = b->pack != NULL;
    out->reason = qk_backend_unavailable_reason(backend);
    out->available = out->reason[0] == '\0';
    return qk_succeed();
}
