/* float16 / bfloat16 conversions, written out so that every rounding is the one
 * docs/numerics.md asks for (one correct rounding, half to even). */
#include <math.h>
#include <string.h>

#include "internal.h"

float qk_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exponent = (h >> 10) & 0x1F;
    uint32_t mantissa = h & 0x3FF;
    float magnitude;
    if (exponent == 0x1F) {
        magnitude = mantissa ? NAN : INFINITY;
    } else if (exponent == 0) {
        magnitude = ldexpf((float)mantissa, -24); /* subnormal: mantissa * 2^-24, exact */
    } else {
        magnitude = ldexpf((float)(mantissa | 0x400), (int)exponent - 25);
    }
    uint32_t bits;
    memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float qk_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16; /* bfloat16 is the top half of a float32 */
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

size_t qk_dtype_size(qk_dtype dtype) { return dtype == QK_DTYPE_F32 ? 4 : 2; }

float qk_load_f32(const void* data, qk_dtype dtype, size_t i) {
    switch (dtype) {
    case QK_DTYPE_F16: return qk_f16_to_f32(((const uint16_t*)data)[i]);
    case QK_DTYPE_BF16: return qk_bf16_to_f32(((const uint16_t*)data)[i]);
    default: return ((const float*)data)[i];
    }
}

/* Rounds x to a binary format with p significant bits, smallest normal exponent emin, and largest
 * finite value max_finite. The result is a double holding the rounded value exactly. */
static double round_to_format(double x, int p, int emin, double max_finite) {
    if (x == 0.0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e); /* |x| = f * 2^e with 0.5 <= f < 1, so the leading bit is 2^(e-1) */
    int lead = e - 1 < emin ? emin : e - 1; /* below emin the spacing stops shrinking */
    double spacing = ldexp(1.0, lead - (p - 1));
    double r = nearbyint(x / spacing) * spacing; /* both scalings are exact powers of two */
    return fabs(r) > max_finite ? copysign(INFINITY, x) : r;
}

static uint16_t f16_bits_of_exact(double r) {
    uint16_t sign = signbit(r) ? 0x8000 : 0;
    if (isnan(r)) return sign | 0x7E00;
    if (isinf(r)) return sign | 0x7C00;
    double a = fabs(r);
    if (a == 0.0) return sign;
    if (a < 0x1p-14) return sign | (uint16_t)(a * 0x1p24); /* subnormal: count of 2^-24 steps */
    int e;
    double f = frexp(a, &e);                      /* a = f * 2^e, f in [0.5, 1) */
    uint16_t mantissa = (uint16_t)(f * 2048.0 - 1024.0); /* the 10 bits after the leading one */
    return sign | (uint16_t)((e - 1 + 15) << 10) | mantissa;
}

void qk_store_f64(void* data, qk_dtype dtype, size_t i, double x) {
    switch (dtype) {
    case QK_DTYPE_F16:
        ((uint16_t*)data)[i] = f16_bits_of_exact(round_to_format(x, 11, -14, 65504.0));
        break;
    case QK_DTYPE_BF16: {
        float f = (float)round_to_format(x, 8, -126, 0x1.FEp127); /* exact: fits float32 */
        uint32_t bits;
        memcpy(&bits, &f, sizeof bits);
        if (isnan(f)) bits = (bits & 0x80000000u) | 0x7FC00000u; /* keep a quiet NaN in 16 bits */
        ((uint16_t*)data)[i] = (uint16_t)(bits >> 16);
        break;
    }
    default:
        ((float*)data)[i] = (float)x; /* the hardware conversion rounds once, to nearest even */
        break;
    }
}
