/* Canonical weights into the x86_avx2 layout (avx2.h). Runs once per weight matrix, so it favours
 * plain code over speed. */
#include <string.h>

#include "avx2.h"

/* The offset that makes stored weights unsigned (offset binary): 8 for 4 bits, 128 for 8 bits. */
static int32_t offset(const qk_weights* w) { return w->bits == 4 ? 8 : 128; }

/* Column n's weight at group-relative k of group g, as stored: q + offset (padding: q = 0). */
static uint8_t stored(const qk_weights* w, int32_t n, int32_t g, int32_t k) {
    int32_t q = n < w->N && k < w->group_size ? qk_weight_q(w, n, g * w->group_size + k) : 0;
    return (uint8_t)(q + offset(w));
}

static void pack_group(const qk_weights* w, const qk_avx2_layout* l, int32_t panel, int32_t g, uint8_t* out) {
    float* scale = (float*)out;
    int32_t* zero = (int32_t*)(out + 32);
    for (int32_t j = 0; j < QK_AVX2_PANEL; j++) {
        int32_t n = panel * QK_AVX2_PANEL + j, k = g * w->group_size;
        int valid = n < w->N;
        scale[j] = valid ? qk_weight_scale(w, n, k) : 0.0f;
        zero[j] = (valid ? qk_weight_zp(w, n, k) : 0) + offset(w);
    }
    uint8_t* block = out + QK_AVX2_HEADER;
    for (int32_t b = 0; b < l->blocks; b++, block += l->block_bytes) {
        for (int32_t j = 0; j < QK_AVX2_PANEL; j++) {
            int32_t n = panel * QK_AVX2_PANEL + j, k = b * QK_AVX2_BLOCK_K;
            for (int32_t i = 0; i < 4; i++) {
                if (w->bits == 4) {
                    block[4 * j + i] = (uint8_t)(stored(w, n, g, k + i) | stored(w, n, g, k + i + 4) << 4);
                } else {
                    block[4 * j + i] = stored(w, n, g, k + i);
                    block[32 + 4 * j + i] = stored(w, n, g, k + 4 + i);
                }
            }
        }
    }
}

qk_status qk_avx2_pack(const qk_weights* w, void** data, size_t* size) {
    qk_avx2_layout l = qk_avx2_layout_of(w);
    *size = (size_t)l.panels * l.panel_bytes;
    uint8_t* out = qk_aligned_alloc(*size);
    if (!out) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of packed weights", *size);
    for (int32_t p = 0; p < l.panels; p++)
        for (int32_t g = 0; g < l.groups; g++)
            pack_group(w, &l, p, g, out + (size_t)p * l.panel_bytes + (size_t)g * l.group_bytes);
    *data = out;
    return QK_OK;
}
