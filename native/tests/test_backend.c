/* libqkernels_testbackend.so: a backend library, built as a third party would build one (against
 * qkernels_backend.h), for test_plugin. The core loads it from QKERNELS_BACKEND_PATH and calls its
 * qk_backend_library_init, which registers two backends:
 *
 *   test_plugin              available, priority -10 (below every built-in backend). Its own pack
 *                            copies the canonical arrays into one malloc'd block; its free_packed
 *                            counts calls, read with qk_test_backend_frees(). Its kernels compute
 *                            the contract with the tests' oracle: A16 with offsets and shorter last
 *                            groups, A8 without (so that dispatch must pass it over for those).
 *   test_plugin_unavailable  its probe says why it cannot run.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "oracle.h"
#include "qkernels_backend.h"

#define EXPORT __attribute__((visibility("default")))

enum { MAX_ROWS = 4096 }; /* a limit of this backend's pack, so that a backend's refusal can be tested */

static atomic_int frees;

EXPORT int qk_test_backend_frees(void) { return atomic_load(&frees); }

/* The pack: the weights' description, then copies of scales, offsets, q and zero points. */
static qk_status pack(const qk_weights* w, void** packed, size_t* bytes) {
    if (w->N > MAX_ROWS) return qk_fail(QK_ERR_UNSUPPORTED, "test_plugin packs at most %d rows, not N=%d", MAX_ROWS, w->N);
    size_t groups = (size_t)w->N * oracle_groups(w->K, w->group_size), q_bytes = (size_t)w->N * w->K * w->bits / 8;
    size_t floats = groups * sizeof(float) * (w->offsets ? 2 : 1);
    size_t total = sizeof(qk_weights) + floats + q_bytes + (w->zero_points ? groups : 0);
    qk_weights* copy = malloc(total);
    if (!copy) return qk_fail(QK_ERR_OUT_OF_MEMORY, "test_plugin cannot allocate %zu bytes", total);
    *copy = *w;
    float* scales = (float*)(copy + 1);
    float* offsets = w->offsets ? scales + groups : NULL;
    int8_t* q = (int8_t*)((char*)scales + floats);
    int8_t* zp = w->zero_points ? q + q_bytes : NULL;
    memcpy(scales, w->scales, groups * sizeof(float));
    if (offsets) memcpy(offsets, w->offsets, groups * sizeof(float));
    memcpy(q, w->data, q_bytes);
    if (zp) memcpy(zp, w->zero_points, groups);
    copy->scales = scales;
    copy->offsets = offsets;
    copy->data = q;
    copy->zero_points = zp;
    *packed = copy;
    *bytes = total;
    return QK_OK;
}

static void free_packed(void* packed) {
    free(packed);
    atomic_fetch_add(&frees, 1);
}

static size_t a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)a;
    (void)threads;
    return (size_t)w->format.K * sizeof(double);
}

static qk_status a16(const qk_exec* exec, const qk_kernel_weights* weights, const qk_matmul_args* a) {
    const qk_weights* w = weights->packed;
    double* x = exec->workspace;
    for (int32_t m = 0; m < a->M; m++) {
        for (int32_t k = 0; k < w->K; k++) x[k] = load_el(a->input, a->input_dtype, (size_t)m * w->K + k);
        for (int32_t n = 0; n < w->N; n++) {
            double mag;
            double y = oracle_a16_dot(w, n, x, &mag) + (a->bias ? a->bias[n] : 0.0);
            store_rounded(a->output, a->input_dtype, (size_t)m * w->N + n, y);
        }
    }
    return QK_OK;
}

static size_t a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)a;
    (void)threads;
    return (size_t)w->format.K;
}

static qk_status a8(const qk_exec* exec, const qk_kernel_weights* weights, const qk_matmul_args* a) {
    const qk_weights* w = weights->packed;
    int8_t* qx = exec->workspace;
    for (int32_t m = 0; m < a->M; m++) {
        float sx = 0;
        int finite = oracle_quantize_activations(a->input, a->input_dtype, (size_t)m * w->K, w->K, qx, &sx);
        for (int32_t n = 0; n < w->N; n++) {
            double mag, y = NAN;
            if (finite) y = (double)sx * oracle_a8_dot(w, n, qx, &mag) + (a->bias ? a->bias[n] : 0.0);
            store_rounded(a->output, a->input_dtype, (size_t)m * w->N + n, y);
        }
    }
    return QK_OK;
}

#define BITS_4_8 ((1u << 4) | (1u << 8))
#define ALL_DTYPES ((1u << QK_DTYPE_F32) | (1u << QK_DTYPE_F16) | (1u << QK_DTYPE_BF16))

static const qk_kernel_desc kernels[] = {
    {.name = "test_plugin_a16_w4w8_1x1", .mode = QK_MODE_A16, .bits_mask = BITS_4_8, .dtype_mask = ALL_DTYPES,
     .group_multiple = 1, .format_flags = QK_FORMAT_OFFSETS | QK_FORMAT_RAGGED_GROUPS, .workspace_size = a16_workspace,
     .run = a16},
    {.name = "test_plugin_a8_w4w8_1x1", .mode = QK_MODE_A8, .bits_mask = BITS_4_8, .dtype_mask = ALL_DTYPES,
     .group_multiple = 1, .workspace_size = a8_workspace, .run = a8},
};

static const qk_backend_desc plugin = {
    .size = sizeof plugin,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "test_plugin",
    .priority = -10,
    .pack = pack,
    .free_packed = free_packed,
    .kernels = kernels,
    .kernel_count = sizeof kernels / sizeof kernels[0],
};

static const char* no_device(void) { return "the test plugin's imaginary device is not attached"; }

static const qk_backend_desc unavailable = {
    .size = sizeof unavailable,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "test_plugin_unavailable",
    .priority = 100,
    .probe = no_device,
    .kernels = (const qk_kernel_desc[]){{.name = "test_plugin_unavailable_a16_w4w8_1x1", .mode = QK_MODE_A16,
                                         .bits_mask = BITS_4_8, .dtype_mask = ALL_DTYPES, .group_multiple = 1,
                                         .canonical = 1, .workspace_size = a16_workspace, .run = a16}},
    .kernel_count = 1,
};

EXPORT qk_status qk_backend_library_init(void) {
    qk_status s = qk_register_backend(&plugin, NULL);
    return s == QK_OK ? qk_register_backend(&unavailable, NULL) : s;
}
