/* Argument checks. Every check of a call runs before anything is written, so a failed call leaves
 * its outputs untouched, and every message names the argument at fault. */
#include <stddef.h>
#include <string.h>

#include "dispatch.h"

static int misaligned(const void* p, size_t alignment) { return ((uintptr_t)p % alignment) != 0; }

qk_status qk_check_struct_size(uint32_t size, size_t base, size_t full, const char* type) {
    if (size < base || size > full)
        return qk_fail(QK_ERR_INVALID_ARGUMENT,
                       "%s size=%u: set it to sizeof(%s); this library accepts %zu to %zu bytes", type,
                       size, type, base, full);
    return QK_OK;
}

qk_status qk_read_weights(const qk_weights* in, qk_weights* out) {
    if (!in) return qk_fail(QK_ERR_NULL_POINTER, "weights is NULL");
    qk_status s = qk_check_struct_size(in->size, offsetof(qk_weights, offsets), sizeof *in, "qk_weights");
    if (s != QK_OK) return s;
    /* Whole fields only: offsets, the one field past ABI 2's, is NULL unless the size holds all of it. */
    memset(out, 0, sizeof *out);
    memcpy(out, in, in->size == sizeof *in ? sizeof *in : offsetof(qk_weights, offsets));
    out->size = sizeof *out;
    return QK_OK;
}

qk_status qk_read_args(const qk_matmul_args* in, qk_matmul_args* out) {
    if (!in) return qk_fail(QK_ERR_NULL_POINTER, "args is NULL");
    qk_status s = qk_check_struct_size(in->size, sizeof *in, sizeof *in, "qk_matmul_args");
    if (s != QK_OK) return s;
    *out = *in;
    return QK_OK;
}

qk_status qk_check_format(int32_t N, int32_t K, int32_t bits, int32_t group_size) {
    if (N <= 0) return qk_fail(QK_ERR_INVALID_SIZE, "N=%d must be positive", N);
    if (K <= 0) return qk_fail(QK_ERR_INVALID_SIZE, "K=%d must be positive", K);
    if (bits != 4 && bits != 8) return qk_fail(QK_ERR_INVALID_BITS, "bits=%d must be 4 or 8", bits);
    if (group_size <= 0) return qk_fail(QK_ERR_INVALID_GROUP, "group_size=%d must be positive", group_size);
    if (bits == 4 && K % 2 != 0)
        return qk_fail(QK_ERR_ODD_K, "K=%d must be even for 4-bit weights (two per byte)", K);
    return QK_OK;
}

qk_status qk_check_weights(const qk_weights* w, int values) {
    if (!w->data) return qk_fail(QK_ERR_NULL_POINTER, "weights->data is NULL");
    if (!w->scales) return qk_fail(QK_ERR_NULL_POINTER, "weights->scales is NULL");
    qk_status s = qk_check_format(w->N, w->K, w->bits, w->group_size);
    if (s != QK_OK) return s;
    if (misaligned(w->scales, sizeof(float)))
        return qk_fail(QK_ERR_MISALIGNED, "weights->scales is not 4-byte aligned");
    if (w->offsets && misaligned(w->offsets, sizeof(float)))
        return qk_fail(QK_ERR_MISALIGNED, "weights->offsets is not 4-byte aligned");
    if (values && w->bits == 4 && w->zero_points) {
        size_t count = (size_t)w->N * (size_t)qk_groups_per_row(w);
        for (size_t i = 0; i < count; i++)
            if (w->zero_points[i] < -8 || w->zero_points[i] > 7)
                return qk_fail(QK_ERR_INVALID_ARGUMENT,
                               "weights->zero_points[%zu]=%d is outside [-8, 7] for 4-bit weights",
                               i, w->zero_points[i]);
    }
    return QK_OK;
}

qk_status qk_check_dtype(qk_dtype d, const char* argument) {
    if (d == QK_DTYPE_F32 || d == QK_DTYPE_F16 || d == QK_DTYPE_BF16) return QK_OK;
    return qk_fail(QK_ERR_INVALID_DTYPE, "%s=%d is not float32, float16 or bfloat16", argument, (int)d);
}

qk_status qk_check_run(const char* prefix, const void* input, void* output, const float* bias, int32_t M,
                       qk_dtype dtype) {
    if (!input) return qk_fail(QK_ERR_NULL_POINTER, "%sinput is NULL", prefix);
    if (!output) return qk_fail(QK_ERR_NULL_POINTER, "%soutput is NULL", prefix);
    if (M <= 0) return qk_fail(QK_ERR_INVALID_SIZE, "M=%d must be positive", M);
    size_t element = qk_dtype_size(dtype);
    if (misaligned(input, element))
        return qk_fail(QK_ERR_MISALIGNED, "%sinput is not %zu-byte aligned", prefix, element);
    if (misaligned(output, element))
        return qk_fail(QK_ERR_MISALIGNED, "%soutput is not %zu-byte aligned", prefix, element);
    if (bias && misaligned(bias, sizeof(float)))
        return qk_fail(QK_ERR_MISALIGNED, "%sbias is not 4-byte aligned", prefix);
    return QK_OK;
}

qk_status qk_check_args(const qk_matmul_args* a) {
    qk_status s = qk_check_dtype(a->input_dtype, "args->input_dtype");
    if (s != QK_OK) return s;
    s = qk_check_run("args->", a->input, a->output, a->bias, a->M, a->input_dtype);
    if (s != QK_OK) return s;
    if (a->mode != QK_MODE_A16 && a->mode != QK_MODE_A8)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "args->mode=%d is not QK_MODE_A16 or QK_MODE_A8", (int)a->mode);
    if (a->backend != QK_BACKEND_AUTO && !qk_backend_entry_get(a->backend))
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "args->backend=%d is not a registered backend id", (int)a->backend);
    return QK_OK;
}
