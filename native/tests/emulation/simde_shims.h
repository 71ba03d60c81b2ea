/* Shims for AVX-512 names that SIMDe 0.8.2 lacks, for the emulated test build only
 * (QK_EMULATE_X86): portable C on SIMDe's types, element by element as the instructions define
 * them. A missing name fails at compile time (the compiler's own declaration cannot be inlined
 * without AVX-512), so add its shim here. */
#ifndef QK_SIMDE_SHIMS_H
#define QK_SIMDE_SHIMS_H

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

#endif
