/* Activations in and out of the x86_avx2 kernels: X rows as padded float32 (A16), the A8
 * activation quantizer, and the single rounding of results to the output dtype. */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "avx2.h"

/* Eight elements of X from flat index i, exactly, as float32. */
static inline __m256 load8(const void* x, qk_dtype dtype, size_t i) {
    switch (dtype) {
    case QK_DTYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + i)));
    case QK_DTYPE_BF16: /* bfloat16 is the top half of a float32 */
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + i))), 16));
    default:
        return _mm256_loadu_ps((const float*)x + i);
    }
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

double qk_avx2_load_row(const qk_matmul_args* a, const qk_weights* w, int32_t m, size_t group_stride, float* out) {
    int32_t G = w->group_size, groups = qk_groups_per_row(w);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 vmax = _mm256_setzero_ps();
    float amax = 0.0f;
    for (int32_t g = 0; g < groups; g++) {
        float* row = out + (size_t)g * group_stride;
        size_t first = (size_t)m * w->K + (size_t)g * G, j = 0, count = g == groups - 1 ? (size_t)(w->K - g * G) : (size_t)G;
        for (; j + 8 <= count; j += 8) {
            __m256 v = load8(a->input, a->input_dtype, first + j);
            _mm256_storeu_ps(row + j, v);
            vmax = _mm256_max_ps(_mm256_and_ps(v, abs_mask), vmax); /* a NaN lane keeps vmax's */
        }
        for (; j < count; j++) {
            row[j] = qk_load_f32(a->input, a->input_dtype, first + j);
            amax = fmaxf(fabsf(row[j]), amax); /* fmaxf ignores NaN */
        }
        for (; j < group_stride; j++) row[j] = 0.0f;
    }
    amax = fmaxf(amax, hmax8(vmax));
    if ((amax >= QK_AVX2_SMALL_X || amax == 0.0f) && amax < QK_AVX2_LARGE_X) return 1.0;
    /* 2^s (ilogbf(amax) = e for 2^e <= amax < 2^(e+1), subnormals included): large rows, the least
     * power of two that brings amax below 2^88, and for Inf the largest (40), which brings every
     * finite value below 2^88; small rows, 2^(e + 32), which brings amax to [2^-32, 2^-31) (2^-s up
     * to 2^117: in float64, exact). */
    int s = isinf(amax) ? 40 : amax < QK_AVX2_SMALL_X ? ilogbf(amax) + 32 : ilogbf(amax) - 87;
    double factor = ldexp(1.0, -s);
    for (size_t i = 0; i < (size_t)groups * group_stride; i++) out[i] = (float)(out[i] * factor); /* exact but for tiny values of large rows */
    return ldexp(1.0, s);
}

/* ---- the A8 activation quantizer (docs/numerics.md section 3, reading 4) ---- */

/* One element: x * inv rounded half to even, clamped to +-127; NaN (0 * Inf, reading 4) gives 0. */
static inline int32_t quantize1(float x, float inv) {
    float p = x * inv;
    return isnan(p) ? 0 : (int32_t)qk_clampf(nearbyintf(p), -127.0f, 127.0f);
}

/* The same for eight elements: vroundps rounds half to even like nearbyintf in the default
 * environment, and the NaN lanes are cleared after the clamp (vmaxps would return -127 for them). */
static inline __m256i quantize8(__m256 x, __m256 inv) {
    __m256 p = _mm256_mul_ps(x, inv);
    __m256 r = _mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    r = _mm256_andnot_ps(_mm256_cmp_ps(p, p, _CMP_UNORD_Q), r);
    return _mm256_cvtps_epi32(r);
}

static inline int32_t hsum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* max |X[m, :]|, or -1 when the row holds NaN or Inf. */
static float row_absmax(const qk_matmul_args* a, int32_t K, int32_t m) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    size_t first = (size_t)m * K;
    int32_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 v = _mm256_and_ps(load8(a->input, a->input_dtype, first + k), abs_mask);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, _mm256_set1_ps(FLT_MAX), _CMP_NLE_UQ)); /* Inf or NaN */
        vmax = _mm256_max_ps(vmax, v);
    }
    if (_mm256_movemask_ps(bad)) return -1.0f;
    float amax = hmax8(vmax);
    for (; k < K; k++) {
        float v = fabsf(qk_load_f32(a->input, a->input_dtype, first + k));
        if (!isfinite(v)) return -1.0f;
        amax = fmaxf(amax, v);
    }
    return amax;
}

double qk_avx2_quantize_row(const qk_matmul_args* a, const qk_weights* w, int32_t m, size_t group_stride,
                            int8_t* qx, int32_t* group_sums) {
    int32_t K = w->K, G = w->group_size, groups = qk_groups_per_row(w);
    float amax = row_absmax(a, K, m);
    if (amax < 0.0f) { /* no finite amax: zeros, so that the kernels never read unwritten memory */
        memset(qx, 0, group_stride * groups);
        memset(group_sums, 0, (size_t)groups * sizeof *group_sums);
        return NAN;
    }
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f; /* +Inf for a tiny amax: reading 4 */
    const __m256 vinv = _mm256_set1_ps(inv);
    /* vpackssdw / vpacksswb interleave 128-bit lanes; this dword order undoes it. */
    const __m256i unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int32_t g = 0; g < groups; g++, qx += group_stride) {
        size_t first = (size_t)m * K + (size_t)g * G, j = 0, count = g == groups - 1 ? (size_t)(K - g * G) : (size_t)G;
        __m256i sum = _mm256_setzero_si256();
        for (; j + 32 <= count; j += 32) {
            __m256i q[4];
            for (int i = 0; i < 4; i++) {
                q[i] = quantize8(load8(a->input, a->input_dtype, first + j + 8 * i), vinv);
                sum = _mm256_add_epi32(sum, q[i]);
            }
            __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256((__m256i*)(qx + j), _mm256_permutevar8x32_epi32(bytes, unshuffle));
        }
        int32_t total = hsum8_epi32(sum);
        for (; j < count; j++) {
            qx[j] = (int8_t)quantize1(qk_load_f32(a->input, a->input_dtype, first + j), inv);
            total += qx[j];
        }
        for (; j < group_stride; j++) qx[j] = 0;
        group_sums[g] = total;
    }
    return amax / 127.0f; /* sx, in float32 */
}

/* Four float64 values rounded to float32 "to odd": truncated, with the last bit set when inexact.
 * Rounding that once more, to nearest even, to a format at least two bits narrower (float16,
 * bfloat16) gives the correctly rounded result: one rounding, as reading 8 asks. */
static inline __m128i round_to_odd(__m256d y) {
    __m128 f = _mm256_cvtpd_ps(y); /* to nearest even */
    __m256d back = _mm256_cvtps_pd(f);
    const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFF));
    __m256d inexact = _mm256_cmp_pd(back, y, _CMP_NEQ_OQ); /* never for NaN */
    __m256d away = _mm256_cmp_pd(_mm256_and_pd(back, abs_mask), _mm256_and_pd(y, abs_mask), _CMP_GT_OQ);
    /* 64-bit lane masks to 32-bit ones: the low dword of each. */
    const __m256i low_dwords = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m128i inexact32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(inexact), low_dwords));
    __m128i away32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(away), low_dwords));
    __m128i bits = _mm_add_epi32(_mm_castps_si128(f), away32); /* rounded away from zero: one step back */
    return _mm_or_si128(bits, _mm_and_si128(inexact32, _mm_set1_epi32(1)));
}

/* float32 bits to bfloat16 bits, rounded to nearest even; NaN stays a quiet NaN. */
static inline __m128i bf16_bits(__m128i f) {
    __m128i odd = _mm_and_si128(_mm_srli_epi32(f, 16), _mm_set1_epi32(1));
    __m128i rounded = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(f, _mm_set1_epi32(0x7FFF)), odd), 16);
    __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(_mm_castsi128_ps(f), _mm_castsi128_ps(f)));
    __m128i quiet = _mm_srli_epi32(_mm_or_si128(f, _mm_set1_epi32(0x00400000)), 16);
    return _mm_blendv_epi8(rounded, quiet, nan);
}

static inline __m128i half_bits(__m256d y, qk_dtype dtype) { /* four 16-bit results in 32-bit lanes */
    __m128i odd = round_to_odd(y);
    if (dtype == QK_DTYPE_BF16) return bf16_bits(odd);
    return _mm_cvtepu16_epi32(_mm_cvtps_ph(_mm_castsi128_ps(odd), _MM_FROUND_TO_NEAREST_INT));
}

void qk_avx2_store(const qk_matmul_args* a, int32_t N, int32_t m, int32_t n, int32_t count, const double* y) {
    size_t first = (size_t)m * N + n;
    if (count == 8 && a->input_dtype == QK_DTYPE_F32) { /* vcvtpd2ps rounds once, half to even */
        __m128 lo = _mm256_cvtpd_ps(_mm256_loadu_pd(y)), hi = _mm256_cvtpd_ps(_mm256_loadu_pd(y + 4));
        _mm256_storeu_ps((float*)a->output + first, _mm256_set_m128(hi, lo));
    } else if (count == 8) {
        __m128i lo = half_bits(_mm256_loadu_pd(y), a->input_dtype), hi = half_bits(_mm256_loadu_pd(y + 4), a->input_dtype);
        _mm_storeu_si128((__m128i*)((uint16_t*)a->output + first), _mm_packus_epi32(lo, hi));
    } else {
        for (int32_t j = 0; j < count; j++) qk_store_f64(a->output, a->input_dtype, first + j, y[j]);
    }
}
