/* Shims for AVX-512 names that SIMDe 0.8.2 lacks, for the emulated test build only
 * (QK_EMULATE_X86): portable C on SIMDe's types, element by element as the instructions define
 * them. A missing name fails at compile time (the compiler's own declaration cannot be inlined
 * without AVX-512), so add its shim here. */
#ifndef QK_SIMDE_SHIMS_H
#define QK_SIMDE_SHIMS_H

#include <math.h>
#include <string.h>

/* vcvtps2pd zmm, ymm: eight floats widened, exactly. */
static inline simde__m512d qk_shim_mm512_cvtps_pd(simde__m256 a) {
    float in[8];
    double out[8];
    simde__m512d r;
    memcpy(in, &a, sizeof in);
    for (int i = 0; i < 8; i++) out[i] = in[i];
    memcpy(&r, out, sizeof r);
    return r;
}
#define _mm512_cvtps_pd(a) qk_shim_mm512_cvtps_pd(a)

/* vcvtdq2pd zmm, ymm: eight int32 converted, exactly. */
static inline simde__m512d qk_shim_mm512_cvtepi32_pd(simde__m256i a) {
    int32_t in[8];
    double out[8];
    simde__m512d r;
    memcpy(in, &a, sizeof in);
    for (int i = 0; i < 8; i++) out[i] = in[i];
    memcpy(&r, out, sizeof r);
    return r;
}
#define _mm512_cvtepi32_pd(a) qk_shim_mm512_cvtepi32_pd(a)

/* vpmovdw ymm, zmm: sixteen int32 truncated to their low 16 bits. */
static inline simde__m256i qk_shim_mm512_cvtepi32_epi16(simde__m512i a) {
    int32_t in[16];
    int16_t out[16];
    simde__m256i r;
    memcpy(in, &a, sizeof in);
    for (int i = 0; i < 16; i++) out[i] = (int16_t)(uint16_t)(uint32_t)in[i];
    memcpy(&r, out, sizeof r);
    return r;
}
#define _mm512_cvtepi32_epi16(a) qk_shim_mm512_cvtepi32_epi16(a)

/* vcvtpd2ps ymm, zmm: eight doubles rounded to float in the current rounding mode. */
static inline simde__m256 qk_shim_mm512_cvtpd_ps(simde__m512d a) {
    double in[8];
    float out[8];
    simde__m256 r;
    memcpy(in, &a, sizeof in);
    for (int i = 0; i < 8; i++) out[i] = (float)in[i];
    memcpy(&r, out, sizeof r);
    return r;
}
#define _mm512_cvtpd_ps(a) qk_shim_mm512_cvtpd_ps(a)

/* vpsubd / vpord ymm{k}: lanes of k get a - b (wrapping) or a | b, the others keep w. */
static inline simde__m256i qk_shim_mm256_mask_op_epi32(simde__m256i w, simde__mmask8 k, simde__m256i a,
                                                       simde__m256i b, int is_or) {
    uint32_t wv[8], av[8], bv[8];
    simde__m256i r;
    memcpy(wv, &w, sizeof wv);
    memcpy(av, &a, sizeof av);
    memcpy(bv, &b, sizeof bv);
    for (int i = 0; i < 8; i++)
        if (k >> i & 1) wv[i] = is_or ? av[i] | bv[i] : av[i] - bv[i];
    memcpy(&r, wv, sizeof r);
    return r;
}
#define _mm256_mask_sub_epi32(w, k, a, b) qk_shim_mm256_mask_op_epi32((w), (k), (a), (b), 0)
#define _mm256_mask_or_epi32(w, k, a, b) qk_shim_mm256_mask_op_epi32((w), (k), (a), (b), 1)

/* vpmovdw xmm, ymm: eight int32 truncated to their low 16 bits. */
static inline simde__m128i qk_shim_mm256_cvtepi32_epi16(simde__m256i a) {
    int32_t in[8];
    int16_t out[8];
    simde__m128i r;
    memcpy(in, &a, sizeof in);
    for (int i = 0; i < 8; i++) out[i] = (int16_t)(uint16_t)(uint32_t)in[i];
    memcpy(&r, out, sizeof r);
    return r;
}
#define _mm256_cvtepi32_epi16(a) qk_shim_mm256_cvtepi32_epi16(a)

/* vmovups m512{k} / m256{k} / vmovdqu16 m128{k}: only the lanes of k are written (the others not
 * touched; SIMDe 0.8.2's 512-bit masked store writes zeros there). */
static inline void qk_shim_mask_store(void* p, uint32_t k, const void* a, int lanes, size_t lane) {
    for (int i = 0; i < lanes; i++)
        if (k >> i & 1) memcpy((char*)p + i * lane, (const char*)a + i * lane, lane);
}
static inline void qk_shim_mm512_mask_storeu_ps(void* p, simde__mmask16 k, simde__m512 a) {
    qk_shim_mask_store(p, k, &a, 16, 4);
}
static inline void qk_shim_mm256_mask_storeu_ps(void* p, simde__mmask8 k, simde__m256 a) {
    qk_shim_mask_store(p, k, &a, 8, 4);
}
static inline void qk_shim_mm_mask_storeu_epi16(void* p, simde__mmask8 k, simde__m128i a) {
    qk_shim_mask_store(p, k, &a, 8, 2);
}
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps(p, k, a) qk_shim_mm512_mask_storeu_ps((p), (k), (a))
#define _mm256_mask_storeu_ps(p, k, a) qk_shim_mm256_mask_storeu_ps((p), (k), (a))
#define _mm_mask_storeu_epi16(p, k, a) qk_shim_mm_mask_storeu_epi16((p), (k), (a))

/* vmovups zmm{k}{z}, m512: only the lanes of k are read, the others are zero (SIMDe 0.8.2 reads all
 * 64 bytes, past the end of a buffer). */
static inline simde__m512 qk_shim_mm512_maskz_loadu_ps(simde__mmask16 k, const void* p) {
    float v[16] = {0};
    simde__m512 r;
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) memcpy(&v[i], (const char*)p + 4 * i, 4);
    memcpy(&r, v, sizeof r);
    return r;
}
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps(k, p) qk_shim_mm512_maskz_loadu_ps((k), (p))

/* vdpbf16ps zmm, zmm, zmm as the instruction is defined (Intel SDM; so it behaves on Zen 4): per lane,
 * the products of the odd and then the even bfloat16 pair added in turn, each addition rounded to
 * nearest even in float32, with subnormal inputs read as zero and subnormal results flushed to
 * zero whatever MXCSR says. SIMDe 0.8.2 keeps subnormals, which would hide from the emulated tests
 * what the x86_avx512 BF16 kernels must bound (docs/numerics.md reading 24). */
static inline float qk_shim_daz(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7F800000u) == 0) bits &= 0x80000000u;
    memcpy(&f, &bits, 4);
    return f;
}
static inline simde__m512 qk_shim_mm512_dpbf16_ps(simde__m512 src, simde__m512bh a, simde__m512bh b) {
    float acc[16];
    uint16_t x[32], y[32];
    simde__m512 r;
    memcpy(acc, &src, sizeof acc);
    memcpy(x, &a, sizeof x);
    memcpy(y, &b, sizeof y);
    for (int i = 0; i < 16; i++) {
        float v = qk_shim_daz(acc[i]);
        for (int j = 1; j >= 0; j--) {
            uint32_t xb = (uint32_t)x[2 * i + j] << 16, yb = (uint32_t)y[2 * i + j] << 16;
            float xf, yf;
            memcpy(&xf, &xb, 4);
            memcpy(&yf, &yb, 4);
            v = qk_shim_daz(fmaf(qk_shim_daz(xf), qk_shim_daz(yf), v)); /* the product exact, one rounding */
        }
        acc[i] = v;
    }
    memcpy(&r, acc, sizeof r);
    return r;
}
#undef _mm512_dpbf16_ps
#define _mm512_dpbf16_ps(src, a, b) qk_shim_mm512_dpbf16_ps((src), (a), (b))

#endif
