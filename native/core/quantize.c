/* Weight quantizers and the dequantizer of docs/numerics.md, section 2, in plain C.
 * Every step is float32 arithmetic, correctly rounded (the build uses -ffp-contract=off so no step
 * is fused), so that all implementations produce the same integers and scales. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct {
    float min, max; /* the range, widened to hold zero */
} range;

typedef struct {
    float scale;
    int32_t zero_point;
} params;

static range range_of(const void* x, qk_dtype dtype, size_t first, size_t count) {
    range r = {0.0f, 0.0f};
    for (size_t i = first; i < first + count; i++) {
        float v = qk_load_f32(x, dtype, i);
        r.min = v < r.min ? v : r.min;
        r.max = v > r.max ? v : r.max;
    }
    return r;
}

/* Returns 0 when no finite scale exists: max - min overflows float32 (docs/numerics.md reading 2). */
static int params_of(range r, int bits, int symmetric, params* p) {
    float qmax = (float)((1 << (bits - 1)) - 1), qmin = -qmax - 1.0f;
    if (symmetric) {
        float amax = fmaxf(-r.min, r.max);
        p->scale = amax / qmax;
        p->zero_point = 0;
    } else {
        float width = r.max - r.min;
        if (isinf(width)) return 0;
        p->scale = width / (qmax - qmin);
        if (p->scale != 0.0f)
            p->zero_point = (int32_t)qk_clampf(nearbyintf(qmin - r.min / p->scale), qmin, qmax);
    }
    if (p->scale == 0.0f) { /* a zero range, or one whose scale underflows (reading 1) */
        p->scale = 1.0f;
        p->zero_point = symmetric ? 0 : (int32_t)qk_clampf(nearbyintf(qmin - r.min), qmin, qmax);
    }
    return 1;
}

static int32_t quantize_value(float v, params p, int bits, int symmetric) {
    float qmax = (float)((1 << (bits - 1)) - 1);
    float lo = symmetric ? -qmax : -qmax - 1.0f;
    /* rne(v / s) is an integer-valued float of at most ~2^8 magnitude, so adding zp is exact. */
    return (int32_t)qk_clampf(nearbyintf(v / p.scale) + (float)p.zero_point, lo, qmax);
}

qk_status qk_quantize_unchecked(const void* input, qk_dtype dtype, int32_t N, int32_t K, int32_t bits,
                                qk_granularity granularity, int32_t group_size, int symmetric,
                                int8_t* q, float* scales, int8_t* zero_points) {
    size_t total = (size_t)N * (size_t)K;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(qk_load_f32(input, dtype, i)))
            return qk_fail(QK_ERR_NON_FINITE, "input[%zu] is NaN or Inf", i);

    /* Every scale is computed before anything is written, so a failure writes nothing. Group g of
     * a row holds k in [g G, min(K, (g + 1) G)): the last one may be shorter (format v2). */
    size_t per_row = (size_t)(((int64_t)K + group_size - 1) / group_size), groups = (size_t)N * per_row;
    params* p = malloc(groups * sizeof *p);
    if (!p) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu group parameters", groups);
    range whole = granularity == QK_PER_TENSOR ? range_of(input, dtype, 0, total) : (range){0, 0};
    for (size_t g = 0; g < groups; g++) {
        size_t first = g / per_row * (size_t)K + g % per_row * (size_t)group_size;
        size_t count = g % per_row == per_row - 1 ? (size_t)K - g % per_row * (size_t)group_size : (size_t)group_size;
        range r = granularity == QK_PER_TENSOR ? whole : range_of(input, dtype, first, count);
        if (!params_of(r, bits, symmetric, &p[g])) {
            free(p);
            return qk_fail(QK_ERR_NON_FINITE, "the range of group %zu (%g to %g) overflows float32",
                           g, (double)r.min, (double)r.max);
        }
    }

    memset(q, 0, total * (size_t)bits / 8); /* 4-bit bytes are assembled with OR below */
    for (size_t i = 0; i < total; i++) {
        size_t g = i / (size_t)K * per_row + i % (size_t)K / (size_t)group_size;
        int32_t v = quantize_value(qk_load_f32(input, dtype, i), p[g], bits, symmetric);
        if (bits == 8)
            q[i] = (int8_t)v;
        else /* element 2j in the low nibble of byte j, 2j+1 in the high nibble */
            q[i / 2] = (int8_t)((uint8_t)q[i / 2] | (uint8_t)((v & 0xF) << (4 * (i % 2))));
    }
    for (size_t g = 0; g < groups; g++) {
        scales[g] = p[g].scale;
        if (zero_points) zero_points[g] = (int8_t)p[g].zero_point;
    }
    free(p);
    return QK_OK;
}

void qk_dequantize_unchecked(const qk_weights* w, qk_dtype dtype, void* output) {
    for (int32_t n = 0; n < w->N; n++)
        for (int32_t k = 0; k < w->K; k++) {
            /* float32 times an integer below 2^9 is exact in double; the offset adds the one
             * rounding of double, then the store rounds once to dtype. */
            double v = (double)qk_weight_scale(w, n, k) * (qk_weight_q(w, n, k) - qk_weight_zp(w, n, k));
            if (w->offsets) v += (double)qk_weight_offset(w, n, k); /* not without: -0 + 0 would be +0 */
            qk_store_f64(output, dtype, (size_t)n * w->K + k, v);
        }
}
