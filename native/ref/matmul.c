/* The reference matmul kernels: docs/numerics.md section 3 computed as it is written, in double
 * and in exact 64-bit integers. They run every shape, group size, dtype and mode, serve as the
 * fallback backend, and are the C-level oracle the faster kernels are tested against. */
#include <math.h>

#include "../core/internal.h"

/* Row n of W: float32 scale times (q - zp), an integer below 2^9, exact in double, plus the offset. */
static void dequantize_row(const qk_weights* w, int32_t n, double* row) {
    for (int32_t k = 0; k < w->K; k++)
        row[k] = (double)qk_weight_scale(w, n, k) * (qk_weight_q(w, n, k) - qk_weight_zp(w, n, k));
    if (w->offsets)
        for (int32_t k = 0; k < w->K; k++) row[k] += (double)qk_weight_offset(w, n, k);
}

/* Four partial sums: a single one is bound by the latency of each add. Any summation order
 * meets the contract, and IEEE NaN / Inf propagation does not depend on it. */
static double dot(const double* x, const double* w, int32_t K) {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    int32_t k = 0;
    for (; k + 4 <= K; k += 4)
        for (int j = 0; j < 4; j++) s[j] += x[k + j] * w[k + j];
    for (; k < K; k++) s[0] += x[k] * w[k];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* Rows of X are converted to float64 a block at a time, so the workspace stays small whatever M. */
enum { ROW_BLOCK = 64 };

static int32_t block_rows(int32_t M) { return M < ROW_BLOCK ? M : ROW_BLOCK; }

static size_t a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    return ((size_t)block_rows(a->M) + 1) * (size_t)w->format.K * sizeof(double);
}

static qk_status a16(const qk_exec* exec, const qk_kernel_weights* weights, const qk_matmul_args* a) {
    const qk_weights* w = &weights->format;
    int32_t M = a->M, N = w->N, K = w->K;
    double* row = exec->workspace;  /* [K]: row n of W */
    double* x = row + K;            /* [block_rows, K]: rows of X */
    for (int32_t m0 = 0; m0 < M; m0 += ROW_BLOCK) {
        int32_t rows = M - m0 < ROW_BLOCK ? M - m0 : ROW_BLOCK;
        for (size_t i = 0; i < (size_t)rows * K; i++) x[i] = qk_load_f32(a->input, a->input_dtype, (size_t)m0 * K + i);
        for (int32_t n = 0; n < N; n++) {
            dequantize_row(w, n, row);
            for (int32_t m = 0; m < rows; m++) {
                double sum = dot(x + (size_t)m * K, row, K) + (a->bias ? a->bias[n] : 0.0);
                qk_store_f64(a->output, a->input_dtype, (size_t)(m0 + m) * N + n, sum);
            }
        }
    }
    return QK_OK;
}

/* The A8 activation quantizer for row m: qx and the row scale sx, in float32 steps.
 * Returns 0 when the row holds NaN or Inf: it has no finite amax, and its outputs are NaN. */
static int quantize_activation_row(const qk_matmul_args* a, int32_t m, int32_t K, int16_t* qx, float* sx) {
    size_t first = (size_t)m * K;
    float amax = 0.0f;
    for (int32_t k = 0; k < K; k++) {
        float v = qk_load_f32(a->input, a->input_dtype, first + k);
        if (!isfinite(v)) return 0;
        amax = fmaxf(amax, fabsf(v));
    }
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f; /* +Inf for a subnormal amax: reading 4 */
    for (int32_t k = 0; k < K; k++) {
        float product = qk_load_f32(a->input, a->input_dtype, first + k) * inv;
        qx[k] = isnan(product) ? 0 : (int16_t)qk_clampf(nearbyintf(product), -127.0f, 127.0f);
    }
    *sx = amax / 127.0f;
    return 1;
}

/* Σ x[k] over [begin, end): at most 127 per term, exact in int64. */
static int64_t exact_sum(const int16_t* x, int32_t begin, int32_t end) {
    int64_t sum = 0;
    for (int32_t k = begin; k < end; k++) sum += x[k];
    return sum;
}

/* Σ x[k] · w[k] over [begin, end), exactly: int32 runs of at most QK_A8_INT32_EXACT_GROUP products
 * (exact: reading 5) folded into int64. The operands are int16 so that compilers can use 16-bit
 * multiply-add instructions. */
static int64_t exact_dot(const int16_t* x, const int16_t* w, int32_t begin, int32_t end) {
    int64_t sum = 0;
    for (int32_t run = begin; run < end;) {
        int32_t stop = end - run < QK_A8_INT32_EXACT_GROUP ? end : run + QK_A8_INT32_EXACT_GROUP, part = 0;
        for (int32_t k = run; k < stop; k++) part += x[k] * w[k];
        sum += part;
        run = stop; /* never past end: no signed overflow near INT32_MAX */
    }
    return sum;
}

static size_t a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    (void)threads;
    int32_t rows = block_rows(a->M);
    return ((size_t)rows + 1) * (size_t)w->format.K * sizeof(int16_t) + (size_t)rows * (sizeof(float) + sizeof(int));
}

static qk_status a8(const qk_exec* exec, const qk_kernel_weights* weights, const qk_matmul_args* a) {
    const qk_weights* w = &weights->format;
    int32_t M = a->M, N = w->N, K = w->K, G = w->group_size, groups = qk_groups_per_row(w);
    int32_t cap = block_rows(M);                 /* laid out as a8_workspace counts it */
    float* sx = exec->workspace;                 /* [cap] */
    int* finite = (int*)(sx + cap);              /* [cap] */
    int16_t* row = (int16_t*)(finite + cap);     /* [K]: q - zp of row n */
    int16_t* qx = row + K;                       /* [cap, K] */
    for (int32_t m0 = 0; m0 < M; m0 += ROW_BLOCK) {
        int32_t rows = M - m0 < ROW_BLOCK ? M - m0 : ROW_BLOCK;
        for (int32_t m = 0; m < rows; m++) finite[m] = quantize_activation_row(a, m0 + m, K, qx + (size_t)m * K, &sx[m]);
        for (int32_t n = 0; n < N; n++) {
            const float* scales = w->scales + (size_t)n * groups;
            const float* offsets = w->offsets ? w->offsets + (size_t)n * groups : NULL;
            for (int32_t k = 0; k < K; k++) /* q - zp: the integer the products use */
                row[k] = (int16_t)(qk_weight_q(w, n, k) - qk_weight_zp(w, n, k));
            for (int32_t m = 0; m < rows; m++) {
                double y = NAN;
                if (finite[m]) {
                    const int16_t* xm = qx + (size_t)m * K;
                    double sum = 0.0;
                    for (int32_t g = 0; g < groups; g++) {
                        int32_t end = g == groups - 1 ? K : (g + 1) * G; /* the last group may be shorter */
                        sum += (double)scales[g] * (double)exact_dot(xm, row, g * G, end);
                        if (offsets) sum += (double)offsets[g] * (double)exact_sum(xm, g * G, end);
                    }
                    y = (double)sx[m] * sum + (a->bias ? a->bias[n] : 0.0);
                }
                qk_store_f64(a->output, a->input_dtype, (size_t)(m0 + m) * N + n, y);
            }
        }
    }
    return QK_OK;
}

static const qk_kernel_desc kernels[] = {
    /* name           mode         bits        dtypes           G multiple, max G, max M, format, canonical, workspace, run, CPU features beyond the backend's */
    {"ref_a16_w4w8_1x1", QK_MODE_A16, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_V2, 1, a16_workspace, a16, 0},
    {"ref_a8_w4w8_1x1", QK_MODE_A8, QK_BITS_4_8, QK_DTYPES_FLOAT, 1, 0, 0, QK_FORMAT_V2, 1, a8_workspace, a8, 0},
};

static const qk_backend_desc backend = {
    .size = sizeof backend,
    .abi_version = QK_BACKEND_ABI_VERSION,
    .name = "ref",
    .priority = 0,
    .kernels = kernels,
    .kernel_count = sizeof kernels / sizeof kernels[0],
};

qk_status qk_register_ref(void) { return qk_register_backend(&backend, NULL); }
