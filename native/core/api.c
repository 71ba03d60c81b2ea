/* The entry points that select per call (qk_matmul, qk_matmul_packed, quantizedMatMul), quantize
 * and dequantize, and what is registered. Plans are in plan.c, packs in pack.c. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "dispatch.h"

int qk_abi_version(void) { return QK_ABI_VERSION; }

const char* qk_version(void) { return QK_VERSION_STRING; }

/* ---- matmul ---- */

/* Reads and checks the caller's weights and args, and states the problem. */
static qk_status prepare(const qk_weights* weights, const qk_matmul_args* args, int values, qk_weights* w,
                         qk_matmul_args* a, qk_problem* p) {
    qk_status s = qk_read_weights(weights, w);
    if (s == QK_OK) s = qk_check_weights(w, values);
    if (s == QK_OK) s = qk_read_args(args, a);
    if (s == QK_OK) s = qk_check_args(a);
    *p = (qk_problem){w, w->offsets != NULL, a->mode, a->input_dtype, a->M};
    return s;
}

static qk_status select_kernel(const qk_weights* weights, const qk_matmul_args* args, enum qk_layout_need need,
                               qk_kernel_info* out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_status s = qk_check_struct_size(out->size, offsetof(qk_kernel_info, format_flags), sizeof *out, "qk_kernel_info");
    qk_weights w;
    qk_matmul_args a;
    qk_problem p;
    qk_kernel_ref k;
    if (s == QK_OK) s = prepare(weights, args, 0, &w, &a, &p);
    if (s == QK_OK) s = qk_select(&p, a.backend, a.kernel, need, &k);
    if (s != QK_OK) return s;
    qk_fill_kernel_info(k, out);
    return qk_succeed();
}

qk_status qk_select_kernel(const qk_weights* weights, const qk_matmul_args* args, qk_kernel_info* out) {
    return select_kernel(weights, args, QK_FOR_STATELESS, out);
}

qk_status qk_select_packed_kernel(const qk_weights* weights, const qk_matmul_args* args, qk_kernel_info* out) {
    return select_kernel(weights, args, QK_FOR_PACKED, out);
}

/* Stateless: a kernel that reads the canonical arrays where one fits this M; otherwise the best
 * kernel, its backend packing for this call only. Nothing outlives the call. */
qk_status qk_matmul(const qk_weights* weights, const qk_matmul_args* args) {
    qk_weights w;
    qk_matmul_args a;
    qk_problem p;
    qk_kernel_ref k;
    qk_status s = prepare(weights, args, 1, &w, &a, &p);
    if (s == QK_OK) s = qk_select(&p, a.backend, a.kernel, QK_FOR_STATELESS, &k);
    if (s != QK_OK) return s;
    if (!qk_backend_entry_get(k.backend)->desc->pack || k.desc->canonical) { /* no pack needed */
        qk_kernel_weights view = {w, w.zero_points != NULL, w.offsets != NULL, NULL};
        s = qk_run(k, &view, &a);
    } else {
        qk_packed_weights* packed = NULL;
        s = qk_pack(&w, k.backend, 0, &packed);
        if (s == QK_OK) s = qk_run(k, &packed->view, &a);
        qk_packed_release(packed);
    }
    return s == QK_OK ? qk_succeed() : s;
}

qk_status qk_matmul_packed(const qk_packed_weights* packed, const qk_matmul_args* args) {
    if (!packed) return qk_fail(QK_ERR_NULL_POINTER, "packed is NULL");
    qk_matmul_args a;
    qk_status s = qk_read_args(args, &a);
    if (s == QK_OK) s = qk_check_args(&a);
    if (s != QK_OK) return s;
    if (a.backend != QK_BACKEND_AUTO && a.backend != packed->backend)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "args->backend '%s' differs from the packed weights' '%s'",
                       qk_backend_name(a.backend), qk_backend_name(packed->backend));
    qk_problem p = {&packed->view.format, packed->view.has_offsets, a.mode, a.input_dtype, a.M};
    qk_kernel_ref k;
    s = qk_select(&p, packed->backend, a.kernel, QK_FOR_PACKED, &k);
    if (s == QK_OK) s = qk_run(k, &packed->view, &a);
    return s == QK_OK ? qk_succeed() : s;
}

/* quantizedMatMul's messages name its parameters, not the fields of the structs it fills for
 * qk_matmul: the last error, reworded. */
static void name_entry_point_parameters(void) {
    static const char* const names[][2] = {
        {"args->input", "input"},      {"args->output", "output"},          {"weights->data", "weights"},
        {"weights->scales", "scales"}, {"weights->zero_points", "zeroPoints"}, {"group_size", "groupSize"},
    };
    char message[QK_ERROR_BYTES];
    size_t used = 0;
    for (const char* at = qk_last_error(); *at && used + 1 < sizeof message;) {
        size_t i = 0, n = sizeof names / sizeof names[0];
        while (i < n && strncmp(at, names[i][0], strlen(names[i][0])) != 0) i++;
        if (i == n) {
            message[used++] = *at++;
            continue;
        }
        used += (size_t)snprintf(message + used, sizeof message - used, "%s", names[i][1]);
        if (used >= sizeof message) used = sizeof message - 1;
        at += strlen(names[i][0]);
    }
    message[used] = '\0';
    qk_fail(qk_last_status(), "%s", message);
}

void quantizedMatMul(const void* input, const int8_t* weights, const float* scales,
                     const int8_t* zeroPoints, void* output, int M, int N, int K, int groupSize,
                     int bits) {
    if (groupSize > 0 && K > 0 && K % groupSize != 0) {
        qk_fail(QK_ERR_INVALID_GROUP, "groupSize=%d must divide K=%d at quantizedMatMul", groupSize, K);
        return;
    }
    qk_weights w = {.size = sizeof w, .data = weights, .scales = scales, .zero_points = zeroPoints,
                    .N = N, .K = K, .group_size = groupSize, .bits = bits};
    qk_matmul_args a = {.size = sizeof a, .input = input, .output = output, .M = M,
                        .input_dtype = QK_DTYPE_F16, .mode = QK_MODE_A16, .backend = QK_BACKEND_AUTO};
    if (qk_matmul(&w, &a) != QK_OK) name_entry_point_parameters();
}

/* ---- quantize / dequantize ---- */

qk_status qk_quantize(const void* input, qk_dtype input_dtype, int32_t N, int32_t K, int32_t bits,
                      qk_granularity granularity, int32_t group_size, int32_t symmetric, int8_t* q,
                      float* scales, int8_t* zero_points) {
    if (!input) return qk_fail(QK_ERR_NULL_POINTER, "input is NULL");
    if (!q) return qk_fail(QK_ERR_NULL_POINTER, "q is NULL");
    if (!scales) return qk_fail(QK_ERR_NULL_POINTER, "scales is NULL");
    if (symmetric != 0 && symmetric != 1)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "symmetric=%d must be 0 or 1", (int)symmetric);
    if (!symmetric && !zero_points)
        return qk_fail(QK_ERR_NULL_POINTER, "zero_points is NULL but symmetric is 0");
    if (symmetric && zero_points)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "zero_points must be NULL when symmetric is 1");
    qk_status s = qk_check_dtype(input_dtype, "input_dtype");
    if (s != QK_OK) return s;
    if (granularity != QK_PER_TENSOR && granularity != QK_PER_CHANNEL && granularity != QK_PER_GROUP)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "granularity=%d is not a qk_granularity", (int)granularity);
    int32_t group = granularity == QK_PER_GROUP ? group_size : K;
    s = qk_check_format(N, K, bits, group);
    if (s != QK_OK) return s;
    if ((uintptr_t)input % qk_dtype_size(input_dtype))
        return qk_fail(QK_ERR_MISALIGNED, "input is not %zu-byte aligned", qk_dtype_size(input_dtype));
    if ((uintptr_t)scales % sizeof(float)) return qk_fail(QK_ERR_MISALIGNED, "scales is not 4-byte aligned");
    s = qk_quantize_unchecked(input, input_dtype, N, K, bits, granularity, group, symmetric, q, scales, zero_points);
    return s == QK_OK ? qk_succeed() : s;
}

qk_status qk_dequantize(const qk_weights* weights, qk_dtype output_dtype, void* output) {
    qk_weights w;
    qk_status s = qk_read_weights(weights, &w);
    if (s == QK_OK) s = qk_check_weights(&w, 1);
    if (s != QK_OK) return s;
    if (!output) return qk_fail(QK_ERR_NULL_POINTER, "output is NULL");
    s = qk_check_dtype(output_dtype, "output_dtype");
    if (s != QK_OK) return s;
    if ((uintptr_t)output % qk_dtype_size(output_dtype))
        return qk_fail(QK_ERR_MISALIGNED, "output is not %zu-byte aligned", qk_dtype_size(output_dtype));
    qk_dequantize_unchecked(&w, output_dtype, output);
    return qk_succeed();
}

/* ---- what is registered and detected ---- */

/* The kernel at a position of dispatch order (backends by priority, each one's kernels in order). */
static int kernel_at(int32_t index, qk_kernel_ref* out) {
    int32_t count = 0;
    const qk_backend* ids = qk_backend_order(&count);
    for (int32_t i = 0; i < count; i++) {
        const qk_backend_desc* d = qk_backend_entry_get(ids[i])->desc;
        if (index < d->kernel_count) {
            *out = (qk_kernel_ref){ids[i], &d->kernels[index]};
            return 1;
        }
        index -= d->kernel_count;
    }
    return 0;
}

int32_t qk_kernel_count(void) {
    int32_t count = 0, kernels = 0;
    const qk_backend* ids = qk_backend_order(&count);
    for (int32_t i = 0; i < count; i++) kernels += qk_backend_entry_get(ids[i])->desc->kernel_count;
    return kernels;
}

qk_status qk_kernel_get(int32_t index, qk_kernel_info* out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_status s = qk_check_struct_size(out->size, offsetof(qk_kernel_info, format_flags), sizeof *out, "qk_kernel_info");
    if (s != QK_OK) return s;
    qk_kernel_ref k;
    if (index < 0 || !kernel_at(index, &k))
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "kernel index %d is outside [0, %d)", index, qk_kernel_count());
    qk_fill_kernel_info(k, out);
    return qk_succeed();
}

qk_status qk_backend_get(qk_backend backend, qk_backend_info* out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_status s = qk_check_struct_size(out->size, offsetof(qk_backend_info, library), sizeof *out, "qk_backend_info");
    if (s != QK_OK) return s;
    const qk_backend_entry* e = qk_backend_entry_get(backend);
    if (!e) return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend=%d is not a registered backend id", (int)backend);
    uint64_t missing = qk_missing_cpu(e->desc->required_cpu);
    qk_backend_info info = {
        .size = sizeof info,
        .name = e->desc->name,
        .compiled = 1,
        .detected = missing == 0 && e->reason[0] == '\0',
        .available = e->reason[0] == '\0',
        .own_layout = e->desc->pack != NULL,
        .reason = e->reason,
        .library = e->library,
        .priority = e->desc->priority,
        .device = e->desc->uses_stream != 0,
    };
    uint32_t size = out->size;
    memcpy(out, &info, size);
    out->size = size;
    return qk_succeed();
}

static qk_backend registered(const char* name) {
    for (qk_backend id = 1; id <= qk_backend_count(); id++)
        if (strcmp(qk_backend_entry_get(id)->desc->name, name) == 0) return id;
    return QK_BACKEND_AUTO;
}

/* Why a backend of qkernels's own is missing from this library, by how CMakeLists.txt gates it:
 * the x86 ones are compiled only for x86-64 and the ARM ones only for aarch64 (QK_BACKENDS may
 * leave either out of a build for its own architecture), and libqkernels_cuda.so is a separate
 * library, built only where CMake finds nvcc and registered only when the core loads it. */
#if defined(__x86_64__) || defined(_M_X64)
#define QK_X86_NOT_BUILT "not built: left out of this build (CMake's QK_BACKENDS)"
#else
#define QK_X86_NOT_BUILT "not built: x86-64 builds only"
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define QK_ARM_NOT_BUILT "not built: left out of this build (CMake's QK_BACKENDS)"
#else
#define QK_ARM_NOT_BUILT "not built: aarch64 builds only"
#endif

/* Every built-in backend of every architecture (CMakeLists.txt), and the CUDA library's: the one
 * list of qkernels's own backends, which forcing (qk_unbuilt_backend) and qk_project_backend read. */
static const struct {
    const char* name;
    const char* not_built; /* the reason, where this library does not register it */
} project[] = {
    {"x86_amx", QK_X86_NOT_BUILT},
    {"x86_avx512", QK_X86_NOT_BUILT},
    {"x86_avx2", QK_X86_NOT_BUILT},
    {"arm_neon_i8mm", QK_ARM_NOT_BUILT},
    {"arm_neon_dotprod", QK_ARM_NOT_BUILT},
    {"cuda", "not built: libqkernels_cuda.so is built only where CMake finds nvcc (CUDA 12 or later); none was "
             "loaded from beside libqkernels.so or QKERNELS_BACKEND_PATH"},
    {"ref", "not built: every qkernels build has it"}, /* CMakeLists.txt refuses a QK_BACKENDS without ref */
};

const char* qk_unbuilt_backend(const char* name, int kernel, const char** why) {
    for (size_t i = 0; i < sizeof project / sizeof project[0]; i++) {
        const char* own = project[i].name;
        size_t n = strlen(own);
        int match = kernel ? strncmp(name, own, n) == 0 && name[n] == '_' : strcmp(name, own) == 0;
        if (match && registered(own) == QK_BACKEND_AUTO) {
            if (why) *why = project[i].not_built;
            return own;
        }
    }
    return NULL;
}

const char* qk_project_backend(int32_t index, const char** not_built) {
    if (index < 0 || (size_t)index >= sizeof project / sizeof project[0]) return NULL;
    if (not_built) *not_built = registered(project[index].name) == QK_BACKEND_AUTO ? project[index].not_built : NULL;
    return project[index].name;
}

qk_status qk_backend_find(const char* name, qk_backend* out) {
    if (!name) return qk_fail(QK_ERR_NULL_POINTER, "name is NULL");
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_backend id = registered(name);
    if (id != QK_BACKEND_AUTO) {
        *out = id;
        return qk_succeed();
    }
    const char* why = NULL;
    if (qk_unbuilt_backend(name, 0, &why)) return qk_fail(QK_ERR_BACKEND_UNAVAILABLE, "backend '%s' is %s", name, why);
    return qk_fail(QK_ERR_INVALID_ARGUMENT, "no backend named '%s' is registered", name);
}
