/* The real instructions behind amx_native.h; compiled with -mamx-tile -mamx-int8 -mamx-bf16. */
#include <immintrin.h>

#include "amx_native.h"

void amx_native_run(amx_op op, const uint8_t config[64], const void* a, long a_stride, const void* b, long b_stride,
                    void* c, long c_stride) {
    /* GCC's _tile_loadconfig tells the compiler it reads 8 bytes: make the caller's stores visible. */
    __asm__ volatile("" ::: "memory");
    _tile_loadconfig(config);
    _tile_loadd(0, c, c_stride);
    _tile_loadd(1, a, a_stride);
    _tile_loadd(2, b, b_stride);
    switch (op) {
    case AMX_DPBSSD: _tile_dpbssd(0, 1, 2); break;
    case AMX_DPBSUD: _tile_dpbsud(0, 1, 2); break;
    case AMX_DPBUSD: _tile_dpbusd(0, 1, 2); break;
    case AMX_DPBUUD: _tile_dpbuud(0, 1, 2); break;
    default: _tile_dpbf16ps(0, 1, 2); break;
    }
    _tile_stored(0, c, c_stride);
    _tile_release();
}
