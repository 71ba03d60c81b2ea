/* Using qkernels from C: quantize weights, then multiply, two ways.
 *
 *   1. quantizedMatMul: float16 activations, 4-bit weights in groups of 32, weight-only (A16).
 *   2. The versioned API: pack the weights once, plan once (the kernels chosen for every M up to
 *      a maximum), then run the plan: float32 activations with dynamic int8 activation
 *      quantization (A8). Structs that callers fill begin with a size field: set it to sizeof.
 *
 * Both results are compared with a plain float32 matmul on the dequantized weights.
 *
 * Build against an installed qkernels (PREFIX is where it was installed):
 *   cc -std=c11 example.c -I PREFIX/include -L PREFIX/lib -lqkernels -Wl,-rpath,PREFIX/lib -lm
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qkernels.h>

enum { M = 3, N = 8, K = 64, GROUP = 32, BITS = 4 };

/* float32 -> IEEE float16 bits, round to nearest even (NaN not handled: none here). */
static uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7FFFFFFFu;
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* too large: Inf */
    if (a < 0x38800000u) /* below 2^-14: subnormal, a whole number of 2^-24 (exact scaling) */
        return sign | (uint16_t)nearbyintf(fabsf(f) * 16777216.0f);
    uint32_t h = ((a >> 23) - 112) << 10 | ((a >> 13) & 0x3FFu), rest = a & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

static float f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    float v = e == 0x1F ? (m ? NAN : INFINITY) : e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000u) ? -v : v;
}

/* A small deterministic generator, uniform in [-1, 1). */
static float random_float(void) {
    static uint32_t state = 12345;
    state = state * 1664525u + 1013904223u;
    return (float)(state >> 8) / 8388608.0f - 1.0f;
}

/* Y[m, n] = sum_k X[m, k] * W[n, k], in float32. */
static void matmul_f32(const float* X, const float* W, float* Y) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float sum = 0.0f;
            for (int k = 0; k < K; k++) sum += X[m * K + k] * W[n * K + k];
            Y[m * N + n] = sum;
        }
}

static int fail(const char* what) {
    fprintf(stderr, "%s failed: %s (%s)\n", what, qk_last_error(), qk_status_string(qk_last_status()));
    return 1;
}

int main(void) {
    printf("qkernels %s (ABI %d)\n", qk_version(), qk_abi_version());

    /* ---- Quantize a float32 weight matrix W[N, K]: 4-bit, groups of 32, with zero points. ---- */
    float W[N * K], X[M * K];
    for (int i = 0; i < N * K; i++) W[i] = 0.1f * random_float();
    for (int i = 0; i < M * K; i++) X[i] = random_float();

    int8_t q[N * K * BITS / 8];         /* two 4-bit values per byte, low nibble first */
    float scales[N * (K / GROUP)];      /* one per group */
    int8_t zero_points[N * (K / GROUP)];
    if (qk_quantize(W, QK_DTYPE_F32, N, K, BITS, QK_PER_GROUP, GROUP, /*symmetric=*/0, q, scales,
                    zero_points) != QK_OK)
        return fail("qk_quantize");

    /* The float32 baseline multiplies by the weights the kernels see: dequantized. */
    qk_weights weights = {
        .size = sizeof weights,
        .data = q,
        .scales = scales,
        .zero_points = zero_points,
        .N = N,
        .K = K,
        .group_size = GROUP,
        .bits = BITS,
        .offsets = NULL, /* none: quantized as above, w = scale * (q - zero point) */
    };
    float Wq[N * K];
    if (qk_dequantize(&weights, QK_DTYPE_F32, Wq) != QK_OK) return fail("qk_dequantize");

    /* ---- 1. quantizedMatMul: float16 in, float16 out. ---- */
    uint16_t X16[M * K], Y16[M * N];
    float X16f[M * K], expected16[M * N];
    for (int i = 0; i < M * K; i++) {
        X16[i] = f32_to_f16(X[i]);
        X16f[i] = f16_to_f32(X16[i]); /* the activations as float16 holds them */
    }
    quantizedMatMul(X16, q, scales, zero_points, Y16, M, N, K, GROUP, BITS);
    if (qk_last_status() != QK_OK) return fail("quantizedMatMul");

    matmul_f32(X16f, Wq, expected16);
    float max_diff16 = 0.0f, max_abs16 = 0.0f;
    printf("quantizedMatMul (float16, A16), row 0:");
    for (int i = 0; i < M * N; i++) {
        float y = f16_to_f32(Y16[i]);
        if (i < N) printf(" %8.4f", y);
        max_diff16 = fmaxf(max_diff16, fabsf(y - expected16[i]));
        max_abs16 = fmaxf(max_abs16, fabsf(expected16[i]));
    }
    printf("\n  max |difference| vs float32 matmul on dequantized weights: %.3g (max |Y| %.3g)\n",
           (double)max_diff16, (double)max_abs16);

    /* ---- 2. Pack once, plan once, run: float32 in and out, int8 activations (A8). ---- */
    qk_packed_weights* packed = NULL;
    if (qk_pack_weights(&weights, QK_BACKEND_AUTO, &packed) != QK_OK) return fail("qk_pack_weights");
    qk_backend_info backend = {.size = sizeof backend};
    qk_backend_get(qk_packed_backend(packed), &backend);

    qk_plan_desc desc = {
        .size = sizeof desc,
        .mode = QK_MODE_A8,
        .input_dtype = QK_DTYPE_F32,
        .max_m = M,     /* the largest batch it will run */
        .kernel = NULL, /* automatic kernel choice, per M */
    };
    qk_plan* plan = NULL;
    qk_status planned = qk_plan_create(packed, &desc, &plan);
    qk_packed_weights_free(packed); /* the plan holds the packed weights as long as it needs them */
    if (planned != QK_OK) return fail("qk_plan_create");
    qk_kernel_info kernel = {.size = sizeof kernel};
    qk_plan_kernel(plan, M, &kernel);

    /* Each run is one call with only the cheap checks; several threads may run one plan at once. */
    float Y32[M * N], expected32[M * N];
    if (qk_plan_run(plan, X, Y32, /*bias=*/NULL, M, /*stream=*/NULL) != QK_OK) {
        qk_plan_free(plan);
        return fail("qk_plan_run");
    }
    qk_plan_free(plan);

    matmul_f32(X, Wq, expected32);
    float max_diff32 = 0.0f, max_abs32 = 0.0f;
    printf("qk_plan_run (float32, A8, backend %s, kernel %s), row 0:", backend.name, kernel.name);
    for (int i = 0; i < M * N; i++) {
        if (i < N) printf(" %8.4f", Y32[i]);
        max_diff32 = fmaxf(max_diff32, fabsf(Y32[i] - expected32[i]));
        max_abs32 = fmaxf(max_abs32, fabsf(expected32[i]));
    }
    printf("\n  max |difference| vs float32 matmul on dequantized weights: %.3g (max |Y| %.3g)\n",
           (double)max_diff32, (double)max_abs32);

    /* float16 outputs hold about 3 decimal digits; int8 activations about 2. */
    if (!(max_diff16 <= 2e-3f * max_abs16 + 1e-3f) || !(max_diff32 <= 3e-2f * max_abs32)) {
        fprintf(stderr, "the results are further from the float32 matmul than expected\n");
        return 1;
    }
    printf("ok\n");
    return 0;
}
