/* The x86_amx backend (AMX-TILE/INT8/BF16 with the AVX-512 set of x86_avx512): what its files share.
 *
 * Files: a8.c is the AMX-INT8 A8 prefill kernel, a16.c the AMX-BF16 A16 one; register.c is the
 * kernel table, which also lists x86_avx512's kernels for small M (AMX does not pay there) and for
 * A16 weights with offsets (a16.c has none). All of them run on the vnni16 pack
 * (x86_avx512/layout.h), so one packed weight serves every M.
 *
 * The emulated test build (CMake QK_EMULATE_X86) compiles these files without AVX-512 and AMX: the
 * tile intrinsics then come from native/tests/emulation/amx_emulation.h, the AVX-512 ones from
 * SIMDe. */
#ifndef QK_AMX_H
#define QK_AMX_H

#include "../x86_avx512/avx512.h"

#ifdef QK_EMULATE_X86
#include "amx_emulation.h" /* native/tests/emulation/: on the include path of the emulated build only */
#endif

/* The kernels' tile configuration: palette 1, tiles 0..7 all 16 rows x 64 bytes. Static and
 * constant: no stores for the compiler to drop before ldtilecfg reads it (gcc 12 has dropped stores
 * to a local configuration). */
static const struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} qk_amx_tile_config = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

/* Both kernels work in blocks of 32 rows x 32 columns (two A tiles, two B tiles, four C tiles),
 * by tasks of one pair of panels for a chunk of rows and a slice of K. */
enum {
    QK_AMX_TILE_ROWS = 16,
    QK_AMX_TILE_BYTES = 16 * 64,
    QK_AMX_BLOCK_ROWS = 2 * QK_AMX_TILE_ROWS,
    /* Rows per chunk: each group of weights staged once serves them all (at 128, A8 at M = 512 with
     * 8-bit per-channel weights once took 1.45x the time; since the slices of K, 64 and 128 measure
     * the same and 512 slower with the weights cold). */
    QK_AMX_CHUNK_ROWS = 256,
};

/* One thread's scratch: the staged B tiles of two panels for `steps` tile steps, and the four C
 * tiles as stored (int32 or float32). */
typedef struct {
    uint8_t* b[2];
    void* c;
} qk_amx_scratch;

/* Lays out a scratch for `steps` tile steps at base (NULL: measures); returns its size. */
static inline size_t qk_amx_carve_scratch(int32_t steps, uint8_t* base, qk_amx_scratch* s) {
    size_t used = 0, b_bytes = (size_t)steps * QK_AMX_TILE_BYTES;
    s->b[0] = qk_avx2_take(base, &used, b_bytes);
    s->b[1] = qk_avx2_take(base, &used, b_bytes);
    s->c = qk_avx2_take(base, &used, 4 * QK_AMX_TILE_BYTES);
    return used;
}

size_t qk_amx_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_amx_a8_32x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
size_t qk_amx_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_amx_a16_32x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);

#endif /* QK_AMX_H */
