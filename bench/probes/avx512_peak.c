/* The compute peaks the x86_avx512 kernels are measured against, on one core (AVX-512 VNNI and BF16
 * machines only).
 *
 *   gcc -O2 -mavx512f -mavx512vnni -mavx512bf16 bench/probes/avx512_peak.c -o /tmp/avx512_peak && /tmp/avx512_peak
 *
 * The clock comes from a chain of dependent scalar adds (one cycle each on any x86-64 core), so it
 * is the clock this core runs at under load, whatever the TSC says (under KVM it says nothing).
 * Then the throughput of zmm vpdpbusd (64 int8 products each, the A8 kernels' work), vdpbf16ps (32
 * bfloat16 products, the A16 AVX512-BF16 kernel's) and vfmadd231ps (16, the FMA kernels'): twelve
 * independent accumulators each, more than latency x throughput on current cores. Peak MAC/s of n
 * cores = per cycle x GHz x n, if every core holds that clock. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

enum { STEPS = 100000000 };

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Twelve named accumulators: an array of them would be kept in memory. The empty asm makes the
 * compiler treat b as changed each step, so that no product is hoisted out of the loop. */
#define TWELVE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define DECLARE(i) T a##i = START(i); /* distinct, or the compiler merges the chains */
#define STEP(i) a##i = OP(a##i, b, c);
#define SUM(i) s = ADD(s, a##i);
#define THROUGHPUT(name, T, ZERO, OP, ADD, b0, c0)            \
    static double name(void) {                                 \
        TWELVE(DECLARE)                                        \
        T b = b0, c = c0, s = ZERO;                            \
        double start = seconds();                              \
        for (long n = 0; n < STEPS; n++) {                     \
            TWELVE(STEP)                                       \
            __asm__ volatile("" : "+v"(b));                    \
        }                                                      \
        double ns = (seconds() - start) * 1e9;                 \
        TWELVE(SUM)                                            \
        __asm__ volatile("" : : "v"(s)); /* keep the sums */   \
        return 12.0 * STEPS / ns;                              \
    }

#define T __m512i
#define ZERO _mm512_setzero_si512()
#define START(i) _mm512_set1_epi32(i)
#define OP(a, b, c) _mm512_dpbusd_epi32(a, b, c)
#define ADD _mm512_add_epi32
THROUGHPUT(vpdpbusd_per_ns, T, ZERO, OP, ADD, _mm512_set1_epi8(3), _mm512_set1_epi8(5))
#undef T
#undef ZERO
#undef START
#undef OP
#undef ADD

#define T __m512
#define ZERO _mm512_setzero_ps()
#define START(i) _mm512_set1_ps((float)(i))
#define OP(a, b, c) _mm512_dpbf16_ps(a, (__m512bh)b, (__m512bh)c)
#define ADD _mm512_add_ps
THROUGHPUT(vdpbf16ps_per_ns, T, ZERO, OP, ADD, _mm512_castsi512_ps(_mm512_set1_epi16(0x3F80)),
           _mm512_castsi512_ps(_mm512_set1_epi16(0x3F80)))
#undef OP
#define OP(a, b, c) _mm512_fmadd_ps(b, c, a)
THROUGHPUT(vfmadd_per_ns, T, ZERO, OP, ADD, _mm512_set1_ps(1.0f), _mm512_set1_ps(1e-9f))

static double ghz(void) {
    long x = 0;
    double start = seconds();
    for (long n = 0; n < STEPS; n++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    return 4.0 * STEPS / ((seconds() - start) * 1e9);
}

int main(void) {
    double clock = ghz();
    printf("clock: %.2f GHz (dependent scalar adds)\n", clock);
    struct {
        const char* name;
        double per_ns;
        int macs;
    } ops[] = {{"vpdpbusd zmm", vpdpbusd_per_ns(), 64}, {"vdpbf16ps zmm", vdpbf16ps_per_ns(), 32},
               {"vfmadd231ps zmm", vfmadd_per_ns(), 16}};
    for (int i = 0; i < 3; i++)
        printf("%-16s %.2f per cycle, %.0f GMAC/s per core (%d MACs each)\n", ops[i].name, ops[i].per_ns / clock,
               ops[i].per_ns * ops[i].macs, ops[i].macs);
    return 0;
}
