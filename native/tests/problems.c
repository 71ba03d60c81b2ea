/* Problems, random problems and the oracle's results for them; see problems.h. */
#include "problems.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "oracle.h"
#include "support.h"

size_t x_bytes(const problem* p) { return (size_t)p->M * p->K * formats[p->dtype].size; }
size_t y_bytes(const problem* p) { return (size_t)p->M * p->N * formats[p->dtype].size; }
size_t q_bytes(const problem* p) { return (size_t)p->N * p->K * p->bits / 8; }
size_t n_groups(const problem* p) { return (size_t)p->N * oracle_groups(p->K, p->G); }

void problem_free(problem* p) {
    free(p->x);
    free(p->q);
    free(p->scales);
    free(p->zp);
    free(p->offsets);
    free(p->bias);
    memset(p, 0, sizeof *p);
}

qk_weights weights_of(const problem* p) {
    return (qk_weights){.size = sizeof(qk_weights), .data = p->q, .scales = p->scales, .zero_points = p->zp,
                        .N = p->N, .K = p->K, .group_size = p->G, .bits = p->bits, .offsets = p->offsets};
}

qk_matmul_args args_of(const problem* p, void* output) {
    return (qk_matmul_args){.size = sizeof(qk_matmul_args), .input = p->x, .output = output, .bias = p->bias,
                            .M = p->M, .input_dtype = p->dtype, .mode = p->mode, .backend = QK_BACKEND_AUTO};
}

int fits(const qk_kernel_info* k, const problem* p) {
    uint32_t needs = (p->offsets ? QK_FORMAT_OFFSETS : 0u) | (p->K % p->G ? QK_FORMAT_RAGGED_GROUPS : 0u);
    return k->mode == p->mode && (k->bits_mask & (1u << p->bits)) && (k->dtype_mask & (1u << p->dtype)) &&
           k->group_multiple > 0 && p->G % k->group_multiple == 0 &&
           (k->max_group_size == 0 || (p->G < p->K ? p->G : p->K) <= k->max_group_size) &&
           (needs & ~k->format_flags) == 0;
}

/* Packs copies of p's canonical arrays for backend b and frees the copies (poisoned first): the
 * pack must hold what it needs. */
qk_status pack_copy(const problem* p, qk_backend b, qk_packed_weights** out) {
    qk_weights w = weights_of(p);
    size_t groups = n_groups(p);
    int8_t* q = xdup(p->q, q_bytes(p));
    float* scales = xdup(p->scales, groups * sizeof(float));
    int8_t* zp = xdup(p->zp, groups);
    float* offsets = xdup(p->offsets, groups * sizeof(float));
    w.data = q;
    w.scales = scales;
    w.zero_points = zp;
    w.offsets = offsets;
    qk_status s = qk_pack_weights(&w, b, out);
    memset(q, 0x5C, q_bytes(p));
    memset(scales, 0x5C, groups * sizeof(float));
    if (zp) memset(zp, 0x5C, groups);
    if (offsets) memset(offsets, 0x5C, groups * sizeof(float));
    free(q);
    free(scales);
    free(zp);
    free(offsets);
    return s;
}

const char* describe(const problem* p) {
    static char text[160];
    snprintf(text, sizeof text, "M=%d N=%d K=%d G=%d%s %d-bit %s %s %s%s%s", p->M, p->N, p->K, p->G,
             p->K % p->G ? " (ragged)" : "", p->bits, p->zp ? "asymmetric" : "symmetric", formats[p->dtype].name,
             p->mode == QK_MODE_A16 ? "A16" : "A8", p->offsets ? " +offsets" : "", p->bias ? " +bias" : "");
    return text;
}

/* ---- random problems ---- */

const char* const x_style_names[X_STYLES] = {"uniform", "halves", "outliers", "zeros", "tiny"};

void fill_activations(problem* p, int style) {
    int f16 = p->dtype == QK_DTYPE_F16;
    int lo = f16 ? -4 : -20, hi = f16 ? 2 : 20;
    p->x = xmalloc(x_bytes(p));
    for (int32_t m = 0; m < p->M; m++) {
        int e = rnd_int(lo, hi);
        int zero_row = style == X_ZEROS && rnd_percent(30);
        int tiny_row = style == X_TINY && rnd_percent(50);
        if (tiny_row && !f16) p->ref_only = 1;
        for (int32_t k = 0; k < p->K; k++) {
            float v = rnd_signed(e, e);
            switch (style) {
            case X_HALVES: v = (float)rnd_int(-254, 254) / 2.0f; break; /* ties for rne(x * 1.0f) */
            case X_OUTLIERS:
                if (rnd_percent(6)) v *= f16 ? 16.0f : 4096.0f;
                break;
            case X_ZEROS:
                if (zero_row || rnd_percent(30)) v = 0.0f;
                break;
            case X_TINY: /* float16 subnormals; float32 / bfloat16 subnormals: amax subnormal, inv = +Inf */
                if (tiny_row) v = f16 ? rnd_signed(-24, -15) : rnd_signed(-149, -127);
                break;
            default: break;
            }
            store_el(p->x, p->dtype, (size_t)m * p->K + k, v);
        }
        if (style == X_HALVES) /* amax = 127 exactly: inv = 1 */
            store_el(p->x, p->dtype, (size_t)m * p->K + rnd_int(0, p->K - 1), rnd_percent(50) ? 127.0f : -127.0f);
    }
}

void fill_raw_weights(problem* p, int symmetric) {
    int f16 = p->dtype == QK_DTYPE_F16;
    size_t groups = n_groups(p);
    p->q = xmalloc(q_bytes(p));
    for (size_t i = 0; i < q_bytes(p); i++) p->q[i] = (int8_t)(uint8_t)rnd();
    p->scales = xmalloc(groups * sizeof(float));
    for (size_t g = 0; g < groups; g++) {
        float s = (float)ldexp(0.5 + 0.5 * rnd_unit(), f16 ? rnd_int(-12, -6) : rnd_int(-30, 10));
        if (rnd_percent(6)) s = -s; /* the format allows any float32 scale */
        if (rnd_percent(2)) s = 0.0f;
        p->scales[g] = s;
    }
    p->zp = NULL;
    if (!symmetric) {
        p->zp = xmalloc(groups);
        for (size_t g = 0; g < groups; g++) p->zp[g] = (int8_t)(p->bits == 4 ? rnd_int(-8, 7) : rnd_int(-128, 127));
    }
}

int random_weight_values(float* W, int32_t N, int32_t K, int lo_exp, int hi_exp, int subnormal_rows) {
    int subnormal = 0;
    for (int32_t n = 0; n < N; n++) {
        int kind = rnd_int(0, 9);
        if (kind == 6 && !subnormal_rows) kind = 9;
        int e = rnd_int(lo_exp, hi_exp);
        for (int32_t k = 0; k < K; k++) {
            float v = rnd_signed(e, e);
            switch (kind) {
            case 0: v = (float)rnd_int(-30, 30) / 2.0f; break; /* ties in rne(x / s) */
            case 1: v = 0.0f; break;                           /* zero range: s = 1 */
            case 2: v = (float)ldexp(1.0, e); break;           /* constant row */
            case 3: v = fabsf(v); break;                       /* all positive: zp at qmin */
            case 4: v = -fabsf(v); break;                      /* all negative */
            case 5:                                            /* outliers */
                if (rnd_percent(5)) v *= 64.0f;
                break;
            case 6: /* float32 subnormal ranges: a scale that may underflow (reading 1) */
                v = (float)ldexp((double)rnd_int(-6, 6), -149);
                subnormal = 1;
                break;
            default: break;
            }
            W[(size_t)n * K + k] = v;
        }
    }
    return subnormal;
}

void fill_quantized_weights(problem* p, int symmetric) {
    int f16 = p->dtype == QK_DTYPE_F16;
    float* W = xmalloc((size_t)p->N * p->K * sizeof *W);
    /* float16: dequantized weights stay normal float16 numbers (a kernel may round them). */
    if (random_weight_values(W, p->N, p->K, f16 ? -6 : -20, f16 ? 0 : 20, !f16 && rnd_percent(15))) p->ref_only = 1;
    qk_granularity granularity = QK_PER_GROUP;
    if (p->G == p->K) {
        static const qk_granularity choices[3] = {QK_PER_TENSOR, QK_PER_CHANNEL, QK_PER_GROUP};
        granularity = PICK(choices);
    }
    size_t groups = n_groups(p);
    p->q = xmalloc(q_bytes(p));
    p->scales = xmalloc(groups * sizeof(float));
    p->zp = symmetric ? NULL : xmalloc(groups);
    CHECK(oracle_quantize_weights(W, p->N, p->K, p->bits, granularity, p->G, symmetric, p->q, p->scales, p->zp),
          "test bug: the oracle quantizer refused a generated matrix");
    free(W);
}

void fill_offsets(problem* p) {
    size_t groups = n_groups(p);
    p->offsets = xmalloc(groups * sizeof(float));
    for (size_t g = 0; g < groups; g++) p->offsets[g] = p->scales[g] * ((float)rnd_int(-16, 15) + 0.5f);
}

void fill_bias(problem* p) {
    int f16 = p->dtype == QK_DTYPE_F16;
    p->bias = xmalloc((size_t)p->N * sizeof(float));
    int e = f16 ? rnd_int(-6, 3) : rnd_int(-20, 20);
    for (int32_t n = 0; n < p->N; n++) p->bias[n] = rnd_percent(5) ? 0.0f : rnd_signed(e, e);
}

int32_t pick_group(int32_t K, int ragged) {
    static const int32_t candidates[] = {32, 64, 128, 256, 2, 10, 15, 5, 3, 1, 6, 16, 8, 4};
    int32_t options[32], n = 0;
    if (ragged) {
        for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
            if (candidates[i] < K && K % candidates[i] != 0) options[n++] = candidates[i];
        if (K > 2) options[n++] = rnd_int(K / 2 + 1, K - 1); /* two groups, the second shorter */
        options[n++] = K + rnd_int(1, K);                  /* one group, shorter than G */
        return options[rnd() % (uint64_t)n];
    }
    if (rnd_percent(35)) return K; /* per-channel */
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        if (candidates[i] < K && K % candidates[i] == 0) options[n++] = candidates[i];
    if (K % 2 == 0 && K / 2 > 0) options[n++] = K / 2; /* K = 2G */
    return n ? options[rnd() % (uint64_t)n] : K;
}

/* ---- the oracle's results ---- */

expectation expect(const problem* p) {
    const format* f = &formats[p->dtype];
    int32_t M = p->M, N = p->N, K = p->K;
    size_t count = (size_t)M * N;
    expectation e = {xmalloc(count * sizeof(double)), xmalloc(count * sizeof(double)),
                     xmalloc(count * sizeof(double)), xmalloc(count * sizeof(double))};
    qk_weights w = weights_of(p);
    double* x = xmalloc((size_t)K * sizeof *x);
    int8_t* qx = xmalloc((size_t)K);
    for (int32_t m = 0; m < M; m++) {
        float sx = 0;
        int finite = 1;
        if (p->mode == QK_MODE_A16)
            for (int32_t k = 0; k < K; k++) x[k] = load_el(p->x, p->dtype, (size_t)m * K + k);
        else
            finite = oracle_quantize_activations(p->x, p->dtype, (size_t)m * K, K, qx, &sx);
        for (int32_t n = 0; n < N; n++) {
            size_t i = (size_t)m * N + n;
            double b = p->bias ? p->bias[n] : 0, mag = 0;
            if (!finite) { /* A8: a row holding NaN or Inf gives NaN */
                e.val[i] = e.raw[i] = NAN;
                e.err[i] = e.mag[i] = 0;
                continue;
            }
            if (p->mode == QK_MODE_A16) {
                e.raw[i] = oracle_a16_dot(&w, n, x, &mag) + b;
                e.mag[i] = mag + fabs(b);
                e.err[i] = f->tau * e.mag[i];
            } else {
                e.raw[i] = (double)sx * oracle_a8_dot(&w, n, qx, &mag) + b;
                e.mag[i] = (double)sx * mag + fabs(b);
                e.err[i] = 0x1p-20 * e.mag[i];
            }
            e.val[i] = round_to(e.raw[i], f);
        }
    }
    free(x);
    free(qx);
    return e;
}

void expectation_free(expectation* e) {
    free(e->val);
    free(e->err);
    free(e->raw);
    free(e->mag);
}

int compare_exact(const problem* p, const void* Y, const expectation* e, const char* what) {
    const format* f = &formats[p->dtype];
    int bad = 0;
    for (size_t i = 0; i < (size_t)p->M * p->N; i++) {
        double y = load_el(Y, p->dtype, i), r = e->val[i], v = e->raw[i];
        if (isnan(r)) {
            bad += !isnan(y);
            continue;
        }
        if (y == r) continue;
        /* Both double sums are within about (K + 4) 2^-53 mag of exact: skip results that close to a tie. */
        double spacing = ulp_out(isfinite(r) ? r : v, f);
        double to_tie = fabs(fabs(v - round_to(v, f)) - spacing / 2);
        if (isfinite(v) && to_tie <= (double)(p->K + 4) * ldexp(e->mag[i], -50)) continue;
        if (bad++ < 3 && test_printing())
            printf("  %s: Y[%zu] = %.9g, correctly rounded %.9g (exact ~ %.17g)\n", what, i, y, r, v);
    }
    return CHECK(!bad, "%s: %d elements not the correctly rounded result", what, bad);
}

int compare_output(const problem* p, const void* Y, const double* val, const double* err, const char* what,
                   double* worst) {
    const format* f = &formats[p->dtype];
    int bad = 0;
    double ratio_max = 0;
    for (int32_t m = 0; m < p->M; m++)
        for (int32_t n = 0; n < p->N; n++) {
            size_t i = (size_t)m * p->N + n;
            double y = load_el(Y, p->dtype, i), r = val[i], tol = 0;
            int ok;
            if (isnan(r)) {
                ok = isnan(y);
            } else if (isinf(r)) {
                ok = y == r;
            } else {
                tol = 2 * ulp_out(r, f) + err[i];
                double d = fabs(y - r);
                ok = isfinite(y) && d <= tol;
                if (ok && d / tol > ratio_max) ratio_max = d / tol;
            }
            if (!ok && bad++ < 4 && test_printing())
                printf("  %s: Y[%d,%d] = %.9g, want %.9g +- %.3g\n", what, m, n, y, r, tol);
        }
    if (worst && ratio_max > *worst) *worst = ratio_max;
    return CHECK(!bad, "%s: %d of %d elements outside the tolerance", what, bad, p->M * p->N);
}
