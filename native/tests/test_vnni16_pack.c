/* The vnni16 pack (native/x86_avx512/pack.c, the layout of x86_avx512 and x86_amx) against the
 * canonical format: every byte of the pack is read back by this file's own reading of the layout
 * (native/x86_avx512/layout.h's comment) and compared with the canonical arrays as the oracle reads
 * them. Odd shapes: N not a multiple of 16, K not a multiple of 4 or 8, G not dividing K (a shorter
 * last group), G > K, odd G; 4 and 8 bits; zero points; offsets. The canonical arrays sit between
 * guard bands that must stay untouched (and, exactly sized, let AddressSanitizer see over-reads).
 *
 * Compiled with the pack and the core files it needs (as test_threads is), not against the
 * library, whose internal functions are hidden. Plain C: it runs on any machine. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../x86_avx512/layout.h"
#include "oracle.h"

static int failures, checks;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        checks++;                                                                \
        if (!(cond) && failures++ < 20) {                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                 \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
        }                                                                        \
    } while (0)

static uint64_t state = 0x9E3779B97F4A7C15u;
static uint32_t rnd(void) { /* splitmix64 */
    uint64_t z = (state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

enum { GUARD = 64, GUARD_BYTE = 0xA5 };

/* n bytes of random content between guard bands; the caller's pointer is base + GUARD. */
static uint8_t* guarded(size_t n) {
    uint8_t* base = malloc(n + 2 * GUARD);
    if (!base) abort();
    memset(base, GUARD_BYTE, GUARD);
    memset(base + GUARD + n, GUARD_BYTE, GUARD);
    for (size_t i = 0; i < n; i++) base[GUARD + i] = (uint8_t)rnd();
    return base + GUARD;
}

static int guards_ok(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < GUARD; i++)
        if (p[-1 - (ptrdiff_t)i] != GUARD_BYTE || p[n + i] != GUARD_BYTE) return 0;
    return 1;
}

static void release(uint8_t* p) { free(p ? p - GUARD : NULL); }

static uint32_t load32(const uint8_t* p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void check_pack(int32_t N, int32_t K, int32_t G, int32_t bits, int asymmetric, int offsets) {
    int32_t NG = oracle_groups(K, G), span = G < K ? G : K, bias = bits == 4 ? 8 : 128;
    int32_t k_per_row = bits == 4 ? 8 : 4, rows = (span + k_per_row - 1) / k_per_row;
    size_t q_bytes = (size_t)N * K * bits / 8, params = (size_t)N * NG;
    uint8_t* data = guarded(q_bytes);
    float* scales = (float*)guarded(params * 4);
    int8_t* zp = asymmetric ? (int8_t*)guarded(params) : NULL;
    float* offs = offsets ? (float*)guarded(params * 4) : NULL;
    for (size_t i = 0; i < params; i++) { /* finite values; zero points in range */
        scales[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
        if (offs) offs[i] = (float)(rnd() % 2001) / 100.0f - 10.0f;
        if (zp) zp[i] = (int8_t)(bits == 4 ? (int)(rnd() % 16) - 8 : (int)(rnd() % 256) - 128);
    }
    qk_weights w = {.size = sizeof w, .data = (const int8_t*)data, .scales = scales, .zero_points = zp,
                    .offsets = offs, .N = N, .K = K, .bits = bits, .group_size = G};
    void* packed = NULL;
    size_t size = 0;
    char what[128];
    snprintf(what, sizeof what, "N=%d K=%d G=%d bits=%d asymmetric=%d offsets=%d", N, K, G, bits, asymmetric, offsets);
    CHECK(qk_vnni16_pack(&w, &packed, &size) == QK_OK, "%s: pack failed", what);
    /* lines of 64 bytes: scales, zeros (with zero points), offsets (with offsets) */
    size_t zeros_at = asymmetric ? 64 : 0, offsets_at = offsets ? (asymmetric ? 128 : 64) : 0;
    size_t header = 64 + (asymmetric ? 64 : 0) + (offsets ? 64 : 0), group_bytes = header + (size_t)rows * 64;
    int32_t panels = (N + 15) / 16;
    CHECK(size == (size_t)panels * NG * group_bytes, "%s: %zu bytes", what, size);
    CHECK((uintptr_t)packed % 64 == 0, "%s: not 64-byte aligned", what);
    if (!packed || size != (size_t)panels * NG * group_bytes) goto done;
    const uint8_t* p = packed;
    for (int32_t panel = 0; panel < panels; panel++)
        for (int32_t g = 0; g < NG; g++, p += group_bytes)
            for (int32_t j = 0; j < 16; j++) {
                int32_t n = panel * 16 + j, valid = n < N, first = g * G, end = oracle_group_end(K, G, g);
                size_t param = (size_t)n * NG + g;
                float scale, offset;
                memcpy(&scale, p + 4 * j, 4);
                memcpy(&offset, p + offsets_at + 4 * j, 4);
                int32_t zero = zp ? (int32_t)load32(p + zeros_at + 4 * j) : valid ? bias : 0; /* symmetric: bias */
                CHECK(scale == (valid ? scales[param] : 0.0f), "%s: scale n=%d g=%d", what, n, g);
                CHECK(zero == (valid ? (zp ? zp[param] : 0) + bias : 0), "%s: zero n=%d g=%d: %d", what, n, g, zero);
                if (offsets) CHECK(offset == (valid ? offs[param] : 0.0f), "%s: offset n=%d g=%d", what, n, g);
                for (int32_t r = 0; r < rows; r++)
                    for (int32_t i = 0; i < 4; i++) {
                        uint8_t byte = p[header + (size_t)r * 64 + 4 * j + i];
                        /* the k each nibble or byte holds, group-relative */
                        int32_t ks[2] = {r * k_per_row + i, r * k_per_row + 4 + i};
                        for (int h = 0; h < (bits == 4 ? 2 : 1); h++) {
                            int32_t k = first + ks[h];
                            /* padding: the group's zero past its end, 0 past N */
                            int expected = !valid ? 0 : k < end ? oracle_q((const int8_t*)data, K, bits, n, k) + bias
                                                                : zero;
                            int got = bits == 8 ? byte : h == 0 ? byte & 0xF : byte >> 4;
                            CHECK(got == expected, "%s: n=%d k=%d: %d, not %d", what, n, k, got, expected);
                        }
                    }
            }
done:
    CHECK(guards_ok(data, q_bytes) && guards_ok((uint8_t*)scales, params * 4) &&
              (!zp || guards_ok((uint8_t*)zp, params)) && (!offs || guards_ok((uint8_t*)offs, params * 4)),
          "%s: guard bytes changed", what);
    qk_aligned_free(packed);
    release(data);
    release((uint8_t*)scales);
    release((uint8_t*)zp);
    release((uint8_t*)offs);
}

int main(void) {
    /* N, K, G: whole and ragged panels, rows and groups; K even (4-bit rows are whole bytes). */
    static const int32_t shapes[][3] = {
        {1, 2, 1},     {16, 8, 8},     {17, 64, 32},  {5, 6, 3},      {33, 100, 128}, {16, 130, 32},
        {31, 264, 128}, {3, 38, 5},    {20, 64, 64},  {45, 300, 7},   {7, 1000, 1000}, {64, 4096, 128},
        {48, 44, 16},  {9, 520, 256},  {1, 18, 18},   {130, 250, 120},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int variant = 0; variant < 4; variant++)
                check_pack(shapes[s][0], shapes[s][1], shapes[s][2], bits, variant & 1, variant >> 1);
    for (int c = 0; c < 200; c++) { /* random shapes */
        int32_t N = 1 + (int32_t)(rnd() % 70), K = 2 * (1 + (int32_t)(rnd() % 200)), G = 1 + (int32_t)(rnd() % 300);
        check_pack(N, K, G, rnd() % 2 ? 4 : 8, rnd() % 2, rnd() % 2);
    }
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
