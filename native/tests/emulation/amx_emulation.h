/* AMX tile intrinsics emulated in plain C, for the emulated test build (QK_EMULATE_X86) on CPUs
 * without AMX. Active only where __AMX_TILE__ is not defined: a build for real AMX gets the
 * compiler's intrinsics from <immintrin.h> instead.
 *
 * It does what the hardware does with palette 1 (the Intel SDM's pseudocode): 8 tiles of at most
 * 16 rows x 64 bytes, shaped by _tile_loadconfig; loads zero the bytes beyond a tile's shape; the
 * products check their shapes (src1.colsb / 4 == src2.rows, src1.rows == dst.rows, src2.colsb ==
 * dst.colsb, three distinct tiles) and abort with a message where the hardware would fault; int32
 * accumulation wraps (computed in uint32); _tile_dpbf16ps treats subnormal bfloat16 inputs and
 * float32 accumulators as zero and flushes subnormal results to zero. B operands are VNNI-packed:
 * row k of src2 holds, for each dword column n, the 4 bytes (or 2 bfloat16) of k 4k .. 4k+3 (2k ..
 * 2k+1). _tile_dpbf16ps adds each pair in order here; the hardware's order of additions differs,
 * so its float32 results match these within rounding, not bit for bit.
 *
 * The tile state is per thread, shared by every file that includes this header (a weak definition). */
#ifndef QK_EMULATION_AMX_H
#define QK_EMULATION_AMX_H

#ifndef __AMX_TILE__

#include <immintrin.h> /* first: GCC declares the real intrinsics there, which the names below replace */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { QK_AMX_TILES = 8, QK_AMX_MAX_ROWS = 16, QK_AMX_MAX_COLSB = 64 };

typedef struct {
    int configured;                 /* palette 1 loaded */
    int rows[QK_AMX_TILES];
    int colsb[QK_AMX_TILES];
    uint8_t data[QK_AMX_TILES][QK_AMX_MAX_ROWS][QK_AMX_MAX_COLSB];
} qk_amx_emulated_state;

__attribute__((weak)) _Thread_local qk_amx_emulated_state qk_amx_emulated;

static inline void qk_amx_fault(const char* what) {
    fprintf(stderr, "emulated AMX fault: %s\n", what);
    abort();
}

/* The 64-byte configuration: palette, start_row, 14 reserved bytes, colsb[16] (uint16), rows[16]. */
static inline void qk_amx_loadconfig(const void* config) {
    const uint8_t* c = config;
    qk_amx_emulated_state* s = &qk_amx_emulated;
    if (c[0] == 0) { /* palette 0: the initial state, as _tile_release */
        memset(s, 0, sizeof *s);
        return;
    }
    if (c[0] != 1) qk_amx_fault("ldtilecfg: palette other than 0 or 1");
    for (int i = 2; i < 16; i++)
        if (c[i]) qk_amx_fault("ldtilecfg: reserved bytes not zero");
    for (int t = 0; t < 16; t++) {
        int colsb = c[16 + 2 * t] | c[17 + 2 * t] << 8, rows = c[48 + t];
        if (t >= QK_AMX_TILES ? colsb || rows
                              : rows > QK_AMX_MAX_ROWS || colsb > QK_AMX_MAX_COLSB || (rows == 0) != (colsb == 0))
            qk_amx_fault("ldtilecfg: a tile shape beyond palette 1");
        if (t < QK_AMX_TILES) {
            s->rows[t] = rows;
            s->colsb[t] = colsb;
        }
    }
    memset(s->data, 0, sizeof s->data);
    s->configured = 1;
}

static inline void qk_amx_release(void) { memset(&qk_amx_emulated, 0, sizeof qk_amx_emulated); }

static inline qk_amx_emulated_state* qk_amx_tile_state(int t, const char* what) {
    qk_amx_emulated_state* s = &qk_amx_emulated;
    if (!s->configured) qk_amx_fault(what); /* #UD without a configuration */
    if (t < 0 || t >= QK_AMX_TILES || s->rows[t] == 0) qk_amx_fault(what);
    return s;
}

static inline void qk_amx_loadd(int t, const void* base, long stride) {
    qk_amx_emulated_state* s = qk_amx_tile_state(t, "tileloadd: tile not configured");
    memset(s->data[t], 0, sizeof s->data[t]);
    for (int r = 0; r < s->rows[t]; r++) memcpy(s->data[t][r], (const uint8_t*)base + r * stride, (size_t)s->colsb[t]);
}

static inline void qk_amx_stored(int t, void* base, long stride) {
    qk_amx_emulated_state* s = qk_amx_tile_state(t, "tilestored: tile not configured");
    for (int r = 0; r < s->rows[t]; r++) memcpy((uint8_t*)base + r * stride, s->data[t][r], (size_t)s->colsb[t]);
}

static inline void qk_amx_zero(int t) {
    qk_amx_emulated_state* s = qk_amx_tile_state(t, "tilezero: tile not configured");
    memset(s->data[t], 0, sizeof s->data[t]);
}

/* The shape rules of the tile products; returns the state. */
static inline qk_amx_emulated_state* qk_amx_check_product(int dst, int src1, int src2, const char* name) {
    qk_amx_emulated_state* s = qk_amx_tile_state(dst, name);
    qk_amx_tile_state(src1, name);
    qk_amx_tile_state(src2, name);
    if (dst == src1 || dst == src2 || src1 == src2) {
        fprintf(stderr, "emulated AMX fault: %s: tiles %d, %d, %d are not distinct\n", name, dst, src1, src2);
        abort();
    }
    if (s->colsb[src1] % 4 || s->colsb[src1] / 4 != s->rows[src2] || s->rows[src1] != s->rows[dst] ||
        s->colsb[src2] != s->colsb[dst] || s->colsb[dst] % 4) {
        fprintf(stderr,
                "emulated AMX fault: %s: shapes dst %dx%d, src1 %dx%d, src2 %dx%d break src1.colsb/4 == src2.rows, "
                "src1.rows == dst.rows, src2.colsb == dst.colsb\n",
                name, s->rows[dst], s->colsb[dst], s->rows[src1], s->colsb[src1], s->rows[src2], s->colsb[src2]);
        abort();
    }
    return s;
}

/* dst (int32) += src1 (bytes) . src2 (bytes, VNNI), signed or unsigned as the flags say. */
static inline void qk_amx_dp_bytes(int dst, int src1, int src2, int src1_signed, int src2_signed, const char* name) {
    qk_amx_emulated_state* s = qk_amx_check_product(dst, src1, src2, name);
    int rows = s->rows[dst], columns = s->colsb[dst] / 4, depth = s->colsb[src1] / 4;
    for (int m = 0; m < rows; m++)
        for (int n = 0; n < columns; n++) {
            uint32_t acc;
            memcpy(&acc, &s->data[dst][m][4 * n], 4);
            for (int k = 0; k < depth; k++)
                for (int i = 0; i < 4; i++) {
                    uint8_t a = s->data[src1][m][4 * k + i], b = s->data[src2][k][4 * n + i];
                    int32_t x = src1_signed ? (int8_t)a : a, y = src2_signed ? (int8_t)b : b;
                    acc += (uint32_t)(x * y); /* wraps like the hardware's int32 */
                }
            memcpy(&s->data[dst][m][4 * n], &acc, 4);
        }
}

#undef _tile_loadd
#undef _tile_stream_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbssd
#undef _tile_dpbsud
#undef _tile_dpbusd
#undef _tile_dpbuud
#undef _tile_dpbf16ps
#define _tile_loadconfig(config) qk_amx_loadconfig(config)
#define _tile_release() qk_amx_release()
#define _tile_loadd(dst, base, stride) qk_amx_loadd((dst), (base), (long)(stride))
#define _tile_stream_loadd(dst, base, stride) qk_amx_loadd((dst), (base), (long)(stride))
#define _tile_stored(src, base, stride) qk_amx_stored((src), (base), (long)(stride))
#define _tile_zero(dst) qk_amx_zero(dst)
#define _tile_dpbssd(dst, src1, src2) qk_amx_dp_bytes((dst), (src1), (src2), 1, 1, "tdpbssd")
#define _tile_dpbsud(dst, src1, src2) qk_amx_dp_bytes((dst), (src1), (src2), 1, 0, "tdpbsud")
#define _tile_dpbusd(dst, src1, src2) qk_amx_dp_bytes((dst), (src1), (src2), 0, 1, "tdpbusd")
#define _tile_dpbuud(dst, src1, src2) qk_amx_dp_bytes((dst), (src1), (src2), 0, 0, "tdpbuud")

/* A float32 with a subnormal value read as zero (of its sign). */
static inline float qk_amx_daz(uint32_t bits) {
    if ((bits & 0x7F800000u) == 0) bits &= 0x80000000u;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float qk_amx_bf16(const uint8_t* p) { return qk_amx_daz((uint32_t)(p[0] | p[1] << 8) << 16); }

static inline void qk_amx_dpbf16ps(int dst, int src1, int src2) {
    qk_amx_emulated_state* s = qk_amx_check_product(dst, src1, src2, "tdpbf16ps");
    int rows = s->rows[dst], columns = s->colsb[dst] / 4, depth = s->colsb[src1] / 4;
    for (int m = 0; m < rows; m++)
        for (int n = 0; n < columns; n++) {
            uint32_t bits;
            memcpy(&bits, &s->data[dst][m][4 * n], 4);
            float acc = qk_amx_daz(bits);
            for (int k = 0; k < depth; k++)
                for (int i = 0; i < 2; i++) {
                    /* The product of two bfloat16 values is exact in float32; the sum rounds. */
                    acc += qk_amx_bf16(&s->data[src1][m][4 * k + 2 * i]) * qk_amx_bf16(&s->data[src2][k][4 * n + 2 * i]);
                }
            memcpy(&bits, &acc, 4);
            acc = qk_amx_daz(bits); /* results flushed to zero */
            memcpy(&s->data[dst][m][4 * n], &acc, 4);
        }
}

#define _tile_dpbf16ps(dst, src1, src2) qk_amx_dpbf16ps((dst), (src1), (src2))

#endif /* !__AMX_TILE__ */

#endif /* QK_EMULATION_AMX_H */
