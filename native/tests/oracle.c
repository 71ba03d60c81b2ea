/* The contract, independently of the library; see oracle.h. */
#include "oracle.h"

#include <math.h>
#include <string.h>

#include "formats.h"

int32_t oracle_groups(int32_t K, int32_t G) { return (int32_t)(((int64_t)K + G - 1) / G); }

int32_t oracle_group_end(int32_t K, int32_t G, int32_t g) {
    return (int64_t)(g + 1) * G < K ? (g + 1) * G : K;
}

int oracle_q(const int8_t* data, int32_t K, int32_t bits, int32_t n, int32_t k) {
    const int8_t* row = data + (size_t)n * K * bits / 8;
    if (bits == 8) return row[k];
    unsigned byte = (uint8_t)row[k / 2];
    int nibble = (int)((k % 2) ? byte >> 4 : byte & 0xFu);
    return nibble >= 8 ? nibble - 16 : nibble;
}

double oracle_weight(const qk_weights* w, int32_t n, int32_t k) {
    size_t g = (size_t)n * oracle_groups(w->K, w->group_size) + (size_t)(k / w->group_size);
    int zp = w->zero_points ? w->zero_points[g] : 0;
    double v = (double)w->scales[g] * (oracle_q(w->data, w->K, w->bits, n, k) - zp);
    return w->offsets ? v + w->offsets[g] : v; /* no offsets: a -0 stays -0 */
}

double oracle_a16_dot(const qk_weights* w, int32_t n, const double* x, double* mag) {
    double sum = 0, abs_sum = 0;
    for (int32_t k = 0; k < w->K; k++) {
        double t = x[k] * oracle_weight(w, n, k);
        sum += t;
        abs_sum += fabs(t);
    }
    *mag = abs_sum;
    return sum;
}

static float clamp_f(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

int oracle_quantize_activations(const void* x, qk_dtype dt, size_t first, int32_t K, int8_t* qx, float* sx) {
    float amax = 0.0f;
    for (int32_t k = 0; k < K; k++) {
        float v = load_el(x, dt, first + k);
        if (isnan(v) || isinf(v)) return 0;
        float a = v < 0 ? -v : v;
        if (a > amax) amax = a;
    }
    float inv = 127.0f / amax; /* +Inf for amax 0 or subnormal: x * inv is then +-Inf or NaN */
    for (int32_t k = 0; k < K; k++) {
        float product = load_el(x, dt, first + k) * inv;
        qx[k] = isnan(product) ? 0 : (int8_t)clamp_f(rintf(product), -127.0f, 127.0f);
    }
    *sx = amax / 127.0f;
    return 1;
}

double oracle_a8_dot(const qk_weights* w, int32_t n, const int8_t* qx, double* mag) {
    int32_t K = w->K, G = w->group_size, groups = oracle_groups(K, G);
    double sum = 0, abs_sum = 0;
    for (int32_t g = 0; g < groups; g++) {
        size_t at = (size_t)n * groups + g;
        int zp = w->zero_points ? w->zero_points[at] : 0;
        int64_t acc = 0, xs = 0; /* exact */
        for (int32_t k = g * G; k < oracle_group_end(K, G, g); k++) {
            acc += (int64_t)qx[k] * (oracle_q(w->data, K, w->bits, n, k) - zp);
            xs += qx[k];
        }
        double t = (double)w->scales[at] * (double)acc;
        double u = w->offsets ? (double)w->offsets[at] * (double)xs : 0.0;
        sum += t + u;
        abs_sum += fabs(t) + fabs(u);
    }
    *mag = abs_sum;
    return sum;
}

int oracle_quantize_weights(const float* x, int32_t N, int32_t K, int32_t bits, qk_granularity granularity,
                            int32_t group, int symmetric, int8_t* q, float* scales, int8_t* zp) {
    float qmax = (float)((1 << (bits - 1)) - 1), qmin = -qmax - 1.0f;
    int32_t per_row = oracle_groups(K, group);
    size_t total = (size_t)N * K;
    float tlo = 0, thi = 0; /* the whole tensor's range, widened to hold zero */
    for (size_t i = 0; i < total; i++) {
        if (x[i] < tlo) tlo = x[i];
        if (x[i] > thi) thi = x[i];
    }
    memset(q, 0, total * (size_t)bits / 8);
    for (int32_t n = 0; n < N; n++)
        for (int32_t g = 0; g < per_row; g++) {
            size_t begin = (size_t)n * K + (size_t)g * group, end = (size_t)n * K + oracle_group_end(K, group, g);
            float lo = 0, hi = 0;
            if (granularity == QK_PER_TENSOR) {
                lo = tlo;
                hi = thi;
            } else {
                for (size_t i = begin; i < end; i++) {
                    if (x[i] < lo) lo = x[i];
                    if (x[i] > hi) hi = x[i];
                }
            }
            float s, z = 0;
            if (symmetric) {
                float amax = -lo > hi ? -lo : hi;
                s = amax / qmax;
            } else {
                float width = hi - lo;
                if (isinf(width)) return 0;
                s = width / (qmax - qmin);
                if (s != 0.0f) z = clamp_f(rintf(qmin - lo / s), qmin, qmax);
            }
            if (s == 0.0f) { /* zero range or an underflowing scale: reading 1 */
                s = 1.0f;
                z = symmetric ? 0.0f : clamp_f(rintf(qmin - lo), qmin, qmax);
            }
            for (size_t i = begin; i < end; i++) {
                double v = (double)rintf(x[i] / s) + z; /* exact: reading 3 */
                double lowest = symmetric ? -qmax : qmin;
                v = v < lowest ? lowest : v > qmax ? qmax : v;
                int iv = (int)v;
                if (bits == 8)
                    q[i] = (int8_t)iv;
                else
                    q[i / 2] = (int8_t)((uint8_t)q[i / 2] | (uint8_t)((iv & 0xF) << (4 * (i % 2))));
            }
            size_t at = (size_t)n * per_row + g;
            scales[at] = s;
            if (!symmetric) zp[at] = (int8_t)z;
        }
    return 1;
}
