/* The x86_amx backend (AMX-TILE/INT8/BF16 with the AVX-512 set of x86_avx512): what its files share.
 *
 * Files: a8.c is the AMX-INT8 A8 prefill kernel, a16.c the AMX-BF16 A16 one; register.c is the
 * kernel table, which also lists x86_avx512's kernels for decode (AMX does not pay at small M) and
 * for float32 input. All of them run on the
 * vnni16 pack (x86_avx512/layout.h), so one packed weight serves every M.
 *
 * The emulated test build (CMake QK_EMULATE_X86) compiles these files without AVX-512 and AMX: the
 * tile intrinsics then come from native/tests/emulation/amx.h, the AVX-512 ones from SIMDe. */
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

size_t qk_amx_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_amx_a8_32x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);
size_t qk_amx_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads);
qk_status qk_amx_a16_32x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a);

#endif /* QK_AMX_H */
