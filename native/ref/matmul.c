/* The reference matmul kernels: docs/numerics.md section 3 computed as it is written, in double
 * and in exact 64-bit integers. They run every shape, group size, dtype and mode, serve as the
 * fallback backend, and are the C-level oracle the faster kernels are tested against. */
#include <math.h>
#include <stdlib.h>

#include "../core/internal.h"

/* Row n of W, dequantized exactly: float32 scale times (q - zp), an integer below 2^9. */
static void dequantize_row(const qk_weights* w, int32_t n, double* row) {
    for (int32_t k = 0; k < w->K; k++)
        row[k] = (double)qk_weight_scale(w, n, k) * (qk_weight_q(w, n, k) - qk_weight_zp(w, n, k));
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

qk_status qk_ref_matmul_a16(const qk_packed_weights* weights, const qk_matmul_args* a) {
    const qk_weights* w = &weights->canonical;
    int32_t M = a->M, N = w->N, K = w->K;
    double* x = malloc((size_t)M * K * sizeof *x);
    double* row = malloc((size_t)K * sizeof *row);
    if (!x || !row) {
        free(x);
        free(row);
        return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate the reference kernel's buffers");
    }
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = qk_load_f32(a->input, a->input_dtype, i);
    for (int32_t n = 0; n < N; n++) {
        dequantize_row(w, n, row);
        for (int32_t m = 0; m < M; m++) {
            double sum = dot(x + (size_t)m * K, row, K) + (a->bias ? a->bias[n] : 0.0);
            qk_store_f64(a->output, a->input_dtype, (size_t)m * N + n, sum);
        }
    }
    free(x);
    free(row);
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

/* |qx · (q − zp)| <= 127 · 255, so this many products sum exactly in int32 (reading 5). */
enum { INT32_EXACT_RUN = 66311 };

/* Σ x[k] · w[k] over [begin, end), exactly: int32 runs folded into int64. The operands are int16
 * so that compilers can use 16-bit multiply-add instructions. */
static int64_t exact_dot(const int16_t* x, const int16_t* w, int32_t begin, int32_t end) {
    int64_t sum = 0;
    for (int32_t run = begin; run < end;) {
        int32_t stop = end - run < INT32_EXACT_RUN ? end : run + INT32_EXACT_RUN, part = 0;
        for (int32_t k = run; k < stop; k++) part += x[k] * w[k];
        sum += part;
        run = stop; /* never past end: no signed overflow near INT32_MAX */
    }
    return sum;
}

qk_status qk_ref_matmul_a8(const qk_packed_weights* weights, const qk_matmul_args* a) {
    const qk_weights* w = &weights->canonical;
    int32_t M = a->M, N = w->N, K = w->K, G = w->group_size, groups = qk_groups_per_row(w);
    int16_t* qx = malloc((size_t)M * K * sizeof *qx);
    float* sx = malloc((size_t)M * sizeof *sx);
    int* finite = malloc((size_t)M * sizeof *finite);
    int16_t* row = malloc((size_t)K * sizeof *row);
    if (!qx || !sx || !finite || !row) {
        free(qx);
        free(sx);
        free(finite);
        free(row);
        return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate the reference kernel's buffers");
    }
    for (int32_t m = 0; m < M; m++) finite[m] = quantize_activation_row(a, m, K, qx + (size_t)m * K, &sx[m]);

    for (int32_t n = 0; n < N; n++) {
        const float* scales = w->scales + (size_t)n * groups;
        for (int32_t k = 0; k < K; k++) /* q - zp: the integer the products use */
            row[k] = (int16_t)(qk_weight_q(w, n, k) - qk_weight_zp(w, n, k));
        for (int32_t m = 0; m < M; m++) {
            double y = NAN;
            if (finite[m]) {
                const int16_t* xm = qx + (size_t)m * K;
                double sum = 0.0;
                for (int32_t g = 0; g < groups; g++)
                    sum += (double)scales[g] * (double)exact_dot(xm, row, g * G, (g + 1) * G);
                y = (double)sx[m] * sum + (a->bias ? a->bias[n] : 0.0);
            }
            qk_store_f64(a->output, a->input_dtype, (size_t)m * N + n, y);
        }
    }
    free(qx);
    free(sx);
    free(finite);
    free(row);
    return QK_OK;
}
