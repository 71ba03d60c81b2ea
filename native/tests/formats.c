/* Number formats for the C tests; see formats.h. */
#include "formats.h"

#include <float.h>
#include <math.h>
#include <string.h>

const format formats[3] = {
    [QK_DTYPE_F32] = {"float32", 4, 24, -126, FLT_MAX, 0x1p-16},
    [QK_DTYPE_F16] = {"float16", 2, 11, -14, 65504.0, 0x1p-10},
    [QK_DTYPE_BF16] = {"bfloat16", 2, 8, -126, 0x1.FEp127, 0x1p-7},
};
const qk_dtype all_dtypes[3] = {QK_DTYPE_F32, QK_DTYPE_F16, QK_DTYPE_BF16};

uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* On the bit patterns, so that the test does not share the library's (or the compiler's) rounding. */
uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u;      /* NaN */
    if (a >= 0x477FF000u) return sign | 0x7C00u;     /* >= 65520 rounds to Inf */
    if (a >= 0x38800000u) {                          /* >= 2^-14: normal */
        uint32_t e = (a >> 23) - 127 + 15, m = a & 0x7FFFFFu;
        uint32_t h = (e << 10) | (m >> 13), rest = m & 0x1FFFu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* a carry bumps the exponent */
        return sign | (uint16_t)h;
    }
    if (a <= 0x33000000u) return sign; /* <= 2^-25: rounds to zero (2^-25 is a tie to even 0) */
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - e; /* value = m * 2^(e-150); in units of 2^-24 that is m >> shift */
    uint32_t h = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

float f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    float v = e == 0x1F ? (m ? NAN : INFINITY)
              : e == 0  ? ldexpf((float)m, -24)
                        : ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000u) ? -v : v;
}

uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7FFFu + ((x >> 16) & 1u);                                          /* ties to even */
    return (uint16_t)(x >> 16);
}

float bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

float load_el(const void* p, qk_dtype dt, size_t i) {
    switch (dt) {
    case QK_DTYPE_F16: return f16_to_f32(((const uint16_t*)p)[i]);
    case QK_DTYPE_BF16: return bf16_to_f32(((const uint16_t*)p)[i]);
    default: return ((const float*)p)[i];
    }
}

void store_el(void* p, qk_dtype dt, size_t i, float v) {
    switch (dt) {
    case QK_DTYPE_F16: ((uint16_t*)p)[i] = f32_to_f16(v); break;
    case QK_DTYPE_BF16: ((uint16_t*)p)[i] = f32_to_bf16(v); break;
    default: ((float*)p)[i] = v; break;
    }
}

/* round_to gives a value the dtype holds exactly, so converting it on to float32 rounds nothing. */
void store_rounded(void* p, qk_dtype dt, size_t i, double x) { store_el(p, dt, i, (float)round_to(x, &formats[dt])); }

double round_to(double x, const format* f) {
    if (x == 0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e); /* |x| = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1) */
    int lead = e - 1 < f->emin ? f->emin : e - 1;
    double spacing = ldexp(1.0, lead - (f->precision - 1));
    double r = rint(x / spacing) * spacing;
    return fabs(r) > f->max_finite ? copysign(INFINITY, x) : r;
}

double ulp_out(double x, const format* f) {
    double a = fabs(x);
    if (a < ldexp(1.0, f->emin)) return ldexp(1.0, f->emin - f->precision + 1);
    int e;
    frexp(a, &e);
    return ldexp(1.0, e - 1 - f->precision + 1);
}
