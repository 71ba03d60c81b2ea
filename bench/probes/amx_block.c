/* What one block of x86_amx_a8_w4w8_32x32 costs, piece by piece, on one core (AMX machines only).
 *
 *   gcc -O2 -mamx-tile -mamx-int8 -mavx512f bench/probes/amx_block.c -o /tmp/amx_block && /tmp/amx_block
 *
 * Part 1, one 32-row x 32-column block over a 128-k group (8 tdpbsud, 16 cycles each at peak), with
 * operands in L1: the tile products alone; then + storing the four C tiles; then + loading them back
 * as 64 zmm rows (the start of the kernel's fold), from the buffer just stored or from a ring of 2,
 * 4 or 8 buffers (a load long after its tile store). Part 2, the products of one block over a long
 * k with A and B beyond L1 (the per-channel case): the share of the tile unit's peak they reach.
 * Part 3, whether the fold can hide behind the products: a block's products and C stores, the
 * float32 fold of a stored block (64 rows: convert, FMA into a run, store), and both, the fold
 * reading the block stored one iteration earlier. Times are ns per block (parts 1, 3) or per 64-k
 * step of four tdpbsud (part 2). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} config = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int8_t a_tiles[32 * 128] __attribute__((aligned(64)));
static uint8_t b_tiles[2 * 2 * 1024] __attribute__((aligned(64)));
static int32_t c_ring[8][1024] __attribute__((aligned(64)));

/* One block's products over a 128-k group (two 64-k steps), operands in L1, into C tiles 0..3. */
static inline void group_products(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int s = 0; s < 2; s++) {
        _tile_loadd(4, a_tiles + s * 64, 128);
        _tile_loadd(5, a_tiles + 16 * 128 + s * 64, 128);
        _tile_loadd(6, b_tiles + s * 2048, 64);
        _tile_loadd(7, b_tiles + s * 2048 + 1024, 64);
        _tile_dpbsud(0, 4, 6);
        _tile_dpbsud(2, 5, 6);
        _tile_dpbsud(1, 4, 7);
        _tile_dpbsud(3, 5, 7);
    }
}

/* 0: products; 1: + C stores; 2: + C loads of this block; 3..5: + C loads from a ring of 2, 4, 8. */
static double block_ns(int variant, int iterations) {
    int ring = variant < 3 ? 1 : 1 << (variant - 2);
    __m512i sum = _mm512_setzero_si512();
    double start = seconds();
    for (int i = 0; i < iterations; i++) {
        int32_t* c = c_ring[i % ring];
        group_products();
        if (variant == 0) continue;
        _tile_stored(0, c, 64);
        _tile_stored(1, c + 256, 64);
        _tile_stored(2, c + 512, 64);
        _tile_stored(3, c + 768, 64);
        if (variant == 1) continue;
        const int32_t* folded = c_ring[(i + 1) % ring]; /* the oldest block in the ring */
        __asm__ volatile("" ::: "memory");              /* _tile_stored's asm names no memory */
        for (int r = 0; r < 64; r++) sum = _mm512_add_epi32(sum, _mm512_load_si512((const void*)(folded + 16 * r)));
    }
    double ns = (seconds() - start) / iterations * 1e9;
    volatile int32_t keep = _mm512_reduce_add_epi32(sum);
    (void)keep;
    return ns;
}

static double step_ns(int32_t K) {
    size_t stride = (size_t)K + 64; /* as the kernel pads activation rows */
    int8_t* a = aligned_alloc(64, 32 * stride);
    uint8_t* b = aligned_alloc(64, (size_t)K * 32);
    memset(a, 1, 32 * stride);
    memset(b, 1, (size_t)K * 32);
    int32_t steps = K / 64, repeats = (1 << 24) / K;
    double start = seconds();
    for (int i = 0; i < repeats; i++) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int32_t s = 0; s < steps; s++) {
            _tile_loadd(4, a + s * 64, stride);
            _tile_loadd(5, a + 16 * stride + s * 64, stride);
            _tile_loadd(6, b + (size_t)s * 1024, 64);
            _tile_loadd(7, b + (size_t)K * 16 + (size_t)s * 1024, 64);
            _tile_dpbsud(0, 4, 6);
            _tile_dpbsud(2, 5, 6);
            _tile_dpbsud(1, 4, 7);
            _tile_dpbsud(3, 5, 7);
        }
    }
    double ns = (seconds() - start) / ((double)repeats * steps) * 1e9;
    free(a);
    free(b);
    return ns;
}

static float runs[64 * 16] __attribute__((aligned(64)));

/* 0: products + C stores (two buffers in turn); 1: the fold alone; 2: both. */
static double overlap_ns(int variant, int iterations) {
    const __m512 scale = _mm512_set1_ps(1.0f / 1024);
    double start = seconds();
    for (int i = 0; i < iterations; i++) {
        int32_t *c = c_ring[i & 1], *previous = c_ring[(i + 1) & 1];
        if (variant != 1) group_products();
        if (variant != 0) {
            __asm__ volatile("" ::: "memory");
            for (int r = 0; r < 64; r++) {
                __m512 acc = _mm512_cvtepi32_ps(_mm512_load_si512((const void*)(previous + 16 * r)));
                _mm512_store_ps(runs + 16 * r, _mm512_fmadd_ps(acc, scale, _mm512_load_ps(runs + 16 * r)));
            }
        }
        if (variant != 1) {
            _tile_stored(0, c, 64);
            _tile_stored(1, c + 256, 64);
            _tile_stored(2, c + 512, 64);
            _tile_stored(3, c + 768, 64);
        }
    }
    return (seconds() - start) / iterations * 1e9;
}

int main(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) {
        fprintf(stderr, "no AMX tile data permission\n");
        return 1;
    }
    _tile_loadconfig(&config);
    memset(a_tiles, 1, sizeof a_tiles);
    memset(b_tiles, 1, sizeof b_tiles);
    static const char* names[] = {"tile products", "+ C tile stores", "+ C loads, same block",
                                  "+ C loads, ring of 2", "+ C loads, ring of 4", "+ C loads, ring of 8"};
    block_ns(0, 200000); /* warm-up: the first run is slower */
    double products = block_ns(0, 200000);
    printf("32x32 block, 128-k group (A, B in L1); clock implied by 8 tdpbsud = 128 cycles: %.2f GHz\n",
           128 / products);
    for (int v = 0; v < 6; v++) printf("  %-24s %6.1f ns\n", names[v], block_ns(v, 200000));
    printf("32x32 block over long k, per 64-k step (4 tdpbsud = 64 cycles):\n");
    for (int32_t K = 256; K <= 16384; K *= 4)
        printf("  K = %5d (A %4d KiB, B %4d KiB) %6.2f ns = %3.0f%% of the tile unit's peak\n", K,
               (int)(32 * ((size_t)K + 64) / 1024), 32 * K / 1024, step_ns(K), 64 / (128 / products) / step_ns(K) * 100);
    printf("the fold beside the products, per 32x32 block and 128-k group:\n");
    static const char* overlap[] = {"products + C stores", "float32 fold", "both"};
    for (int v = 0; v < 3; v++) printf("  %-24s %6.1f ns\n", overlap[v], overlap_ns(v, 200000));
    return 0;
}
