/* test_kernels: every registered kernel against the reference kernels and an in-test oracle.
 *
 * The oracle here is docs/numerics.md written out a second time, independently of native/ref:
 *   A16  ref = sum_k X[m,k] * scales[n,g] * (q[n,k] - zp[n,g]) (+ bias[n]) in double, rounded
 *        once to the output dtype by the test's own rounding;
 *   A8   the per-row activation quantizer in float32 steps, exact int64 group sums, the scale
 *        products in double, rounded once.
 * Every available kernel runs every case (forced through qk_matmul_args.kernel) and must land
 * within the contract's tolerance of the oracle and of the reference kernel of its mode. The
 * automatic, packed and quantizedMatMul paths must reproduce the forced kernel's bytes. Outputs
 * are poisoned and fenced by guard bytes; inputs must come back unchanged.
 *
 * Usage: test_kernels [--seed S] [--cases N] [--no-sweep] [--case I] [-v]
 *   --seed S    base seed (also env QK_TEST_SEED); every case reseeds from it and its index
 *   --cases N   random-shape cases after the shape sweep (also env QK_TEST_CASES), default 2304
 *   --no-sweep  skip the M x N x K sweep (for slow runs such as valgrind)
 *   --case I    run only numbered case I (of the sweep + random cases), to reproduce a failure
 *   -v          one line per case
 * Environment: QK_TEST_BACKENDS, when set, lists (comma-separated) exactly the backends that must be
 * available, e.g. "arm_neon_dotprod,ref" under QEMU's cortex-a76: a run checks it takes the paths
 * its CPU allows, not merely that whatever it found passed.
 * The last line of output is exactly "<passed> passed, <failed> failed"; the exit status is 1
 * when anything failed.
 */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qkernels.h"

/* ------------------------------------------------------------------------------------------ */
/* Results                                                                                      */

static long n_passed, n_failed;
static int verbose;
static char context[320]; /* the case being run, printed with every failure */
static int failures_printed;
enum { MAX_FAILURE_PRINTS = 80 };

static int check_at(int ok, int line, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static int check_at(int ok, int line, const char* fmt, ...) {
    if (ok) {
        n_passed++;
        return 1;
    }
    n_failed++;
    if (failures_printed < MAX_FAILURE_PRINTS) {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL (test_kernels.c:%d) [%s] ", line, context);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
    } else if (failures_printed == MAX_FAILURE_PRINTS) {
        printf("(further failures are counted, not printed)\n");
    }
    failures_printed++;
    fflush(stdout);
    return 0;
}
#define CHECK(cond, ...) check_at((cond) ? 1 : 0, __LINE__, __VA_ARGS__)

static void set_context(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_context(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------------------------ */
/* Random numbers: splitmix64, reseeded per case from the base seed and the case number.        */

static uint64_t rng_state;

static uint64_t splitmix64(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t rnd(void) { return splitmix64(&rng_state); }
static void reseed(uint64_t seed, uint64_t stream) {
    rng_state = seed ^ (stream * 0xD1B54A32D192ED03ull);
    (void)rnd();
}
static int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); } /* [lo, hi] */
static int rnd_percent(int p) { return (int)(rnd() % 100) < p; }
static double rnd_unit(void) { return (double)(rnd() >> 11) * 0x1p-53; } /* [0, 1) */
static float rnd_signed(int lo_exp, int hi_exp) {                         /* +-[0, 2^e) */
    return (float)((2.0 * rnd_unit() - 1.0) * ldexp(1.0, rnd_int(lo_exp, hi_exp)));
}
#define PICK(array) ((array)[rnd() % (sizeof(array) / sizeof((array)[0]))])

/* ------------------------------------------------------------------------------------------ */
/* Number formats, written here rather than borrowed from the library.                          */

/* The oracle computes in double (and exact int64). Not long double: valgrind runs x87 code at
 * double precision, and on aarch64 long double is slow software quad. Its sums are within
 * about K * 2^-53 * sum|terms| of exact, far inside every tolerance of the contract. */
typedef double real;
#define R_FABS fabs
#define R_FREXP frexp
#define R_LDEXP ldexp
#define R_RINT rint
#define R_COPYSIGN copysign
#define R_FMT "g"

typedef struct {
    const char* name;
    size_t size;
    int precision; /* significant bits */
    int emin;      /* exponent of the smallest normal number */
    real max_finite;
    real tau; /* the A16 tolerance factor */
} format;

static const format formats[3] = {
    [QK_DTYPE_F32] = {"float32", 4, 24, -126, (real)FLT_MAX, (real)0x1p-16},
    [QK_DTYPE_F16] = {"float16", 2, 11, -14, (real)65504.0, (real)0x1p-10},
    [QK_DTYPE_BF16] = {"bfloat16", 2, 8, -126, (real)0x1.FEp127, (real)0x1p-7},
};
static const qk_dtype all_dtypes[3] = {QK_DTYPE_F32, QK_DTYPE_F16, QK_DTYPE_BF16};

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float32 -> IEEE binary16, round to nearest even, on the bit patterns. */
static uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u;      /* NaN */
    if (a >= 0x477FF000u) return sign | 0x7C00u;     /* >= 65520 rounds to Inf */
    if (a >= 0x38800000u) {                          /* >= 2^-14: normal */
        uint32_t e = (a >> 23) - 127 + 15, m = a & 0x7FFFFFu;
        uint32_t h = (e << 10) | (m >> 13), rest = m & 0x1FFFu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* a carry bumps the exponent */
        return sign | (uint16_t)h;
    }
    if (a <= 0x33000000u) return sign; /* <= 2^-25: rounds to zero (2^-25 is a tie to even 0) */
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126 - e; /* value = m * 2^(e-150); in units of 2^-24 that is m >> shift */
    uint32_t h = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

static float f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    float v = e == 0x1F ? (m ? NAN : INFINITY)
              : e == 0  ? ldexpf((float)m, -24)
                        : ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000u) ? -v : v;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7FFFu + ((x >> 16) & 1u);                                          /* ties to even */
    return (uint16_t)(x >> 16);
}

static float bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

/* Element i of an array of dtype, exactly, as float32. */
static float load_el(const void* p, qk_dtype dt, size_t i) {
    switch (dt) {
    case QK_DTYPE_F16: return f16_to_f32(((const uint16_t*)p)[i]);
    case QK_DTYPE_BF16: return bf16_to_f32(((const uint16_t*)p)[i]);
    default: return ((const float*)p)[i];
    }
}

/* Stores float32 v as element i of dtype, rounded to nearest even. */
static void store_el(void* p, qk_dtype dt, size_t i, float v) {
    switch (dt) {
    case QK_DTYPE_F16: ((uint16_t*)p)[i] = f32_to_f16(v); break;
    case QK_DTYPE_BF16: ((uint16_t*)p)[i] = f32_to_bf16(v); break;
    default: ((float*)p)[i] = v; break;
    }
}

/* x rounded once, to nearest even, to the format (overflow to +-Inf, subnormals kept). */
static real round_to(real x, const format* f) {
    if (x == 0 || !isfinite(x)) return x;
    int e;
    R_FREXP(x, &e); /* |x| = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1) */
    int lead = e - 1 < f->emin ? f->emin : e - 1;
    real spacing = R_LDEXP((real)1, lead - (f->precision - 1));
    real r = R_RINT(x / spacing) * spacing;
    return R_FABS(r) > f->max_finite ? R_COPYSIGN((real)INFINITY, x) : r;
}

/* ulp_out(x): the spacing of the format at x (docs/numerics.md, reading 9). */
static real ulp_out(real x, const format* f) {
    real a = R_FABS(x);
    if (a < R_LDEXP((real)1, f->emin)) return R_LDEXP((real)1, f->emin - f->precision + 1);
    int e;
    R_FREXP(a, &e);
    return R_LDEXP((real)1, e - 1 - f->precision + 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Guarded, poisoned buffers                                                                   */

enum { GUARD = 64, GUARD_BYTE = 0xA5 };

typedef struct {
    unsigned char* base;
    void* p; /* base + GUARD: 64-byte offset from malloc's alignment, so aligned for any dtype */
    size_t n;
} gbuf;

static gbuf gbuf_new(size_t n, int fill) {
    gbuf b = {malloc(n + 2 * GUARD), NULL, n};
    if (!b.base) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memset(b.base, GUARD_BYTE, GUARD);
    memset(b.base + GUARD, fill, n);
    memset(b.base + GUARD + n, GUARD_BYTE, GUARD);
    b.p = b.base + GUARD;
    return b;
}
static void gbuf_fill(gbuf* b, int fill) { memset(b->p, fill, b->n); }
static void gbuf_free(gbuf* b) {
    free(b->base);
    b->base = NULL;
    b->p = NULL;
}
static int gbuf_guards_ok(const gbuf* b) {
    for (size_t i = 0; i < GUARD; i++)
        if (b->base[i] != GUARD_BYTE || b->base[GUARD + b->n + i] != GUARD_BYTE) return 0;
    return 1;
}
/* The guards and every byte of the buffer are as gbuf_new / gbuf_fill left them. */
static int gbuf_untouched(const gbuf* b, int fill) {
    if (!gbuf_guards_ok(b)) return 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->base[GUARD + i] != (unsigned char)fill) return 0;
    return 1;
}

/* Poison for outputs: 0x7E.. (float16 NaN, float32 8.4e37, bfloat16 8.4e37) or 0xFF.. (NaN). */
static int poison_byte(void) { return (rnd() & 1) ? 0x7E : 0xFF; }

static void* xmalloc(size_t n) {
    void* p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static void* xdup(const void* src, size_t n) {
    if (!src) return NULL;
    return memcpy(xmalloc(n), src, n);
}

/* ------------------------------------------------------------------------------------------ */
/* The kernels this library has                                                                */

enum { MAX_KERNELS = 128 };
static int32_t n_kernels;
static qk_kernel_info kernels[MAX_KERNELS];
static long kernel_runs[MAX_KERNELS];
static double kernel_worst[MAX_KERNELS]; /* largest |Y - oracle| / tolerance seen */

static const char* backend_name(qk_backend b) {
    qk_backend_info info;
    return qk_backend_get(b, &info) == QK_OK ? info.name : "?";
}

static int find_kernel(const char* name) {
    for (int i = 0; i < n_kernels; i++)
        if (strcmp(kernels[i].name, name) == 0) return i;
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* A problem: one matmul's inputs, in exactly sized allocations so valgrind sees over-reads.     */

typedef struct {
    int32_t M, N, K, G, bits;
    qk_dtype dtype;
    qk_mode mode;
    void* x;       /* [M, K] of dtype */
    int8_t* q;     /* [N, K*bits/8] */
    float* scales; /* [N, K/G] */
    int8_t* zp;    /* [N, K/G] or NULL */
    float* bias;   /* [N] or NULL */
    /* Products or results in the float32 subnormal range (subnormal float32 / bfloat16
     * activations, subnormal dequantized weights). There a kernel that multiplies and accumulates
     * in float32, as the contract allows, loses absolute precision the tolerance has no term for
     * (nor for float32 weights rounded to a 16-bit dtype): only the reference kernels are held to
     * the tolerance; every other kernel is still run and checked for status, guards and packing. */
    int ref_only;
} problem;

static size_t x_bytes(const problem* p) { return (size_t)p->M * p->K * formats[p->dtype].size; }
static size_t y_bytes(const problem* p) { return (size_t)p->M * p->N * formats[p->dtype].size; }
static size_t q_bytes(const problem* p) { return (size_t)p->N * p->K * p->bits / 8; }
static size_t n_groups(const problem* p) { return (size_t)p->N * (p->K / p->G); }

static void problem_free(problem* p) {
    free(p->x);
    free(p->q);
    free(p->scales);
    free(p->zp);
    free(p->bias);
    memset(p, 0, sizeof *p);
}

static qk_weights weights_of(const problem* p) {
    qk_weights w = {p->q, p->scales, p->zp, p->N, p->K, p->G, p->bits};
    return w;
}

/* q[n, k] of canonical weights, as a signed integer: low nibble first for 4 bits. */
static int q_at(const int8_t* data, int32_t K, int32_t bits, int32_t n, int32_t k) {
    const int8_t* row = data + (size_t)n * K * bits / 8;
    if (bits == 8) return row[k];
    unsigned byte = (uint8_t)row[k / 2];
    int nibble = (int)((k % 2) ? byte >> 4 : byte & 0xFu);
    return nibble >= 8 ? nibble - 16 : nibble;
}

static int fits(const qk_kernel_info* k, const problem* p) {
    return k->mode == p->mode && (k->bits_mask & (1u << p->bits)) && (k->dtype_mask & (1u << p->dtype)) &&
           k->group_multiple > 0 && p->G % k->group_multiple == 0 && (k->max_group_size == 0 || p->G <= k->max_group_size);
}

/* ------------------------------------------------------------------------------------------ */
/* The oracle                                                                                  */

/* val: the reference result rounded once to the output dtype (NaN / +-Inf where it is one);
 * err: the error-scale term of the tolerance, already multiplied by tau (A16) or 2^-20 (A8). */
typedef struct {
    real* val;
    real* err;
    real* raw; /* before the rounding */
    real* mag; /* sum of |terms| (+ |bias|): bounds the rounding error of a double sum */
} expectation;

static float clamp_f(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The A8 activation quantizer of row m, in float32 steps. Returns 0 for a row with NaN or Inf. */
static int oracle_quantize_row(const problem* p, int32_t m, int8_t* qx, float* sx) {
    float amax = 0.0f;
    for (int32_t k = 0; k < p->K; k++) {
        float v = load_el(p->x, p->dtype, (size_t)m * p->K + k);
        if (isnan(v) || isinf(v)) return 0;
        float a = v < 0 ? -v : v;
        if (a > amax) amax = a;
    }
    float inv = 127.0f / amax; /* +Inf for amax 0 or subnormal: x * inv is then +-Inf or NaN */
    for (int32_t k = 0; k < p->K; k++) {
        float product = load_el(p->x, p->dtype, (size_t)m * p->K + k) * inv;
        qx[k] = isnan(product) ? 0 : (int8_t)clamp_f(rintf(product), -127.0f, 127.0f);
    }
    *sx = amax / 127.0f;
    return 1;
}

static expectation oracle(const problem* p) {
    const format* f = &formats[p->dtype];
    int32_t M = p->M, N = p->N, K = p->K, G = p->G, groups = K / G;
    size_t count = (size_t)M * N;
    expectation e = {xmalloc(count * sizeof(real)), xmalloc(count * sizeof(real)), xmalloc(count * sizeof(real)),
                     xmalloc(count * sizeof(real))};
    int32_t* wi = xmalloc((size_t)N * K * sizeof *wi); /* q - zp */
    for (int32_t n = 0; n < N; n++)
        for (int32_t k = 0; k < K; k++)
            wi[(size_t)n * K + k] = q_at(p->q, K, p->bits, n, k) - (p->zp ? p->zp[(size_t)n * groups + k / G] : 0);

    if (p->mode == QK_MODE_A16) {
        real* x = xmalloc((size_t)M * K * sizeof *x);
        real* w = xmalloc((size_t)K * sizeof *w);
        for (size_t i = 0; i < (size_t)M * K; i++) x[i] = load_el(p->x, p->dtype, i);
        for (int32_t n = 0; n < N; n++) {
            for (int32_t k = 0; k < K; k++) w[k] = (real)p->scales[(size_t)n * groups + k / G] * wi[(size_t)n * K + k];
            real b = p->bias ? p->bias[n] : 0;
            for (int32_t m = 0; m < M; m++) {
                real sum = 0, mag = 0;
                for (int32_t k = 0; k < K; k++) {
                    real t = x[(size_t)m * K + k] * w[k];
                    sum += t;
                    mag += R_FABS(t);
                }
                e.raw[(size_t)m * N + n] = sum + b;
                e.val[(size_t)m * N + n] = round_to(sum + b, f);
                e.mag[(size_t)m * N + n] = mag + R_FABS(b);
                e.err[(size_t)m * N + n] = f->tau * (mag + R_FABS(b));
            }
        }
        free(x);
        free(w);
    } else {
        int8_t* qx = xmalloc((size_t)K);
        for (int32_t m = 0; m < M; m++) {
            float sx = 0;
            int finite = oracle_quantize_row(p, m, qx, &sx);
            for (int32_t n = 0; n < N; n++) {
                real b = p->bias ? p->bias[n] : 0;
                size_t i = (size_t)m * N + n;
                if (!finite) {
                    e.val[i] = e.raw[i] = (real)NAN;
                    e.err[i] = e.mag[i] = 0;
                    continue;
                }
                real sum = 0, mag = 0;
                for (int32_t g = 0; g < groups; g++) {
                    int64_t acc = 0; /* exact */
                    for (int32_t k = g * G; k < (g + 1) * G; k++) acc += (int64_t)qx[k] * wi[(size_t)n * K + k];
                    real t = (real)p->scales[(size_t)n * groups + g] * (real)acc;
                    sum += t;
                    mag += R_FABS(t);
                }
                e.raw[i] = (real)sx * sum + b;
                e.val[i] = round_to(e.raw[i], f);
                e.mag[i] = (real)sx * mag + R_FABS(b);
                e.err[i] = (real)0x1p-20 * ((real)sx * mag + R_FABS(b));
            }
        }
        free(qx);
    }
    free(wi);
    return e;
}

static void expectation_free(expectation* e) {
    free(e->val);
    free(e->err);
    free(e->raw);
    free(e->mag);
}

/* The reference kernels compute the contract's float64 result and round it once (reading 8), so
 * their outputs are the oracle's, bit for bit, except where the exact result may lie on the other
 * side of a rounding boundary than the oracle's double sum: both sums are within about
 * (K + 4) * 2^-53 * mag of exact, so results that close to a tie are skipped. */
static int compare_exact(const problem* p, const void* Y, const expectation* e, const char* what) {
    const format* f = &formats[p->dtype];
    int bad = 0;
    for (size_t i = 0; i < (size_t)p->M * p->N; i++) {
        real y = load_el(Y, p->dtype, i), r = e->val[i], v = e->raw[i];
        if (isnan(r)) {
            bad += !isnan(y);
            continue;
        }
        if (y == r) continue;
        real spacing = ulp_out(isfinite(r) ? r : v, f);
        real to_tie = R_FABS(R_FABS(v - round_to(v, f)) - spacing / 2);
        if (isfinite(v) && to_tie <= (real)(p->K + 4) * R_LDEXP(e->mag[i], -50)) continue;
        if (bad++ < 3)
            printf("  %s: Y[%zu] = %.9" R_FMT ", correctly rounded %.9" R_FMT " (exact ~ %.17" R_FMT ")\n", what, i, y,
                   r, v);
    }
    return CHECK(!bad, "%s: %d elements not the correctly rounded result", what, bad);
}

/* Checks every element of Y against val within 2*ulp_out(val) + err. One check per buffer.
 * worst, when given, receives the largest |Y - val| / tolerance. */
static int compare_output(const problem* p, const void* Y, const real* val, const real* err, const char* what,
                          double* worst) {
    const format* f = &formats[p->dtype];
    int bad = 0;
    double ratio_max = 0;
    for (int pass = 0; pass < 2; pass++) { /* count, then show the first few */
        int shown = 0;
        for (int32_t m = 0; m < p->M; m++)
            for (int32_t n = 0; n < p->N; n++) {
                size_t i = (size_t)m * p->N + n;
                real y = load_el(Y, p->dtype, i), r = val[i], tol = 0;
                int ok;
                if (isnan(r)) {
                    ok = isnan(y);
                } else if (isinf(r)) {
                    ok = y == r;
                } else {
                    tol = 2 * ulp_out(r, f) + err[i];
                    real d = R_FABS(y - r);
                    ok = isfinite(y) && d <= tol;
                    if (ok && (double)(d / tol) > ratio_max) ratio_max = (double)(d / tol);
                }
                if (pass == 0)
                    bad += !ok;
                else if (!ok && shown++ < 4)
                    printf("  Y[%d,%d] = %.9" R_FMT ", want %.9" R_FMT " +- %.3" R_FMT "\n", m, n, y, r, tol);
            }
        if (pass == 0) {
            int all_ok = CHECK(!bad, "%s: %d of %d elements outside the tolerance", what, bad, p->M * p->N);
            if (all_ok || failures_printed > MAX_FAILURE_PRINTS) break;
        }
    }
    if (worst && ratio_max > *worst) *worst = ratio_max;
    return !bad;
}

/* ------------------------------------------------------------------------------------------ */
/* Running one problem through every kernel and every path                                      */

static long matmul_runs, ref_only_skips;

static int same_bytes(const gbuf* a, const gbuf* b) { return a->n == b->n && memcmp(a->p, b->p, a->n) == 0; }

static void run_problem(const problem* p) {
    const format* f = &formats[p->dtype];
    size_t yb = y_bytes(p);
    expectation e = oracle(p);
    qk_weights w = weights_of(p);
    qk_matmul_args a = {.input = p->x, .bias = p->bias, .M = p->M, .input_dtype = p->dtype, .mode = p->mode,
                        .backend = QK_BACKEND_AUTO};
    /* Snapshots: no path may write to its inputs. */
    void *x0 = xdup(p->x, x_bytes(p)), *q0 = xdup(p->q, q_bytes(p));
    void *s0 = xdup(p->scales, n_groups(p) * sizeof(float)), *z0 = xdup(p->zp, n_groups(p));
    void* b0 = xdup(p->bias, p->bias ? (size_t)p->N * sizeof(float) : 0);

    gbuf outs[MAX_KERNELS];
    memset(outs, 0, sizeof outs);
    int ref = -1;
    for (int i = 0; i < n_kernels && ref < 0; i++)
        if (kernels[i].backend == QK_BACKEND_REF && kernels[i].available && fits(&kernels[i], p)) ref = i;
    CHECK(ref >= 0, "no reference kernel runs mode %d, dtype %s, %d-bit, G=%d", (int)p->mode, f->name, p->bits, p->G);
    real* ref_val = xmalloc((size_t)p->M * p->N * sizeof(real));

    /* Every kernel, forced: the reference kernel first, then the others against it. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n_kernels; i++) {
            const qk_kernel_info* k = &kernels[i];
            if (!k->available || (pass == 0) != (i == ref)) continue;
            int fill = poison_byte();
            outs[i] = gbuf_new(yb, fill);
            a.kernel = k->name;
            a.output = outs[i].p;
            qk_status s = qk_matmul(&w, &a);
            matmul_runs++;
            if (!fits(k, p)) {
                CHECK(s == QK_ERR_UNSUPPORTED, "%s forced on a problem it does not run: status %d, want %d", k->name,
                      (int)s, (int)QK_ERR_UNSUPPORTED);
                CHECK(gbuf_untouched(&outs[i], fill), "%s: failed call wrote its output", k->name);
                gbuf_free(&outs[i]);
                continue;
            }
            kernel_runs[i]++;
            if (!CHECK(s == QK_OK, "%s: status %d (%s): %s", k->name, (int)s, qk_status_string(s), qk_last_error())) {
                gbuf_free(&outs[i]);
                continue;
            }
            CHECK(gbuf_guards_ok(&outs[i]), "%s: wrote outside its output", k->name);
            if (p->ref_only && k->backend != QK_BACKEND_REF) {
                ref_only_skips++;
                continue;
            }
            char what[160];
            snprintf(what, sizeof what, "%s vs oracle", k->name);
            compare_output(p, outs[i].p, e.val, e.err, what, &kernel_worst[i]);
            if (k->backend == QK_BACKEND_REF) {
                snprintf(what, sizeof what, "%s rounding", k->name);
                compare_exact(p, outs[i].p, &e, what);
            }
            if (i == ref) {
                for (size_t j = 0; j < (size_t)p->M * p->N; j++) ref_val[j] = load_el(outs[i].p, p->dtype, j);
            } else if (ref >= 0 && outs[ref].p) {
                snprintf(what, sizeof what, "%s vs %s", k->name, kernels[ref].name);
                compare_output(p, outs[i].p, ref_val, e.err, what, NULL);
            }
        }

    /* Automatic dispatch: the kernel qk_select_kernel names, byte for byte. */
    a.kernel = NULL;
    qk_kernel_info chosen;
    qk_status s = qk_select_kernel(&w, &a, &chosen);
    int ci = s == QK_OK ? find_kernel(chosen.name) : -1;
    CHECK(s == QK_OK && ci >= 0 && chosen.available && fits(&chosen, p), "qk_select_kernel: status %d, kernel %s",
          (int)s, s == QK_OK ? chosen.name : "-");
    gbuf yauto = gbuf_new(yb, poison_byte());
    a.output = yauto.p;
    s = qk_matmul(&w, &a);
    matmul_runs++;
    CHECK(s == QK_OK, "qk_matmul (automatic): status %d: %s", (int)s, qk_last_error());
    CHECK(gbuf_guards_ok(&yauto), "qk_matmul (automatic): wrote outside its output");
    if (ci >= 0 && outs[ci].p)
        CHECK(same_bytes(&yauto, &outs[ci]), "qk_matmul (automatic) differs from %s forced", chosen.name);

    /* Packed, per backend, from copies of the canonical arrays freed right after packing. */
    for (int b = QK_BACKEND_AUTO + 1; b < QK_BACKEND_COUNT; b++) {
        int used = 0;
        for (int i = 0; i < n_kernels; i++) used |= outs[i].p && kernels[i].backend == (qk_backend)b;
        if (!used) continue;
        qk_weights wc = w;
        int8_t* qc = xdup(p->q, q_bytes(p));
        float* sc = xdup(p->scales, n_groups(p) * sizeof(float));
        int8_t* zc = xdup(p->zp, n_groups(p));
        wc.data = qc;
        wc.scales = sc;
        wc.zero_points = zc;
        qk_packed_weights* packed = NULL;
        s = qk_pack_weights(&wc, (qk_backend)b, &packed);
        memset(qc, 0x5C, q_bytes(p)); /* the handle must hold its own copy */
        memset(sc, 0x5C, n_groups(p) * sizeof(float));
        if (zc) memset(zc, 0x5C, n_groups(p));
        free(qc);
        free(sc);
        free(zc);
        if (!CHECK(s == QK_OK && packed, "qk_pack_weights(%s): status %d: %s", backend_name((qk_backend)b), (int)s,
                   qk_last_error()))
            continue;
        CHECK(qk_packed_backend(packed) == (qk_backend)b, "qk_packed_backend is %d, packed for %d",
              (int)qk_packed_backend(packed), b);
        CHECK(qk_packed_size(packed) > 0, "qk_packed_size is 0");
        for (int i = 0; i < n_kernels; i++) {
            if (!outs[i].p || kernels[i].backend != (qk_backend)b) continue;
            gbuf y = gbuf_new(yb, poison_byte());
            a.kernel = kernels[i].name;
            a.output = y.p;
            s = qk_matmul_packed(packed, &a);
            matmul_runs++;
            if (CHECK(s == QK_OK, "qk_matmul_packed(%s): status %d: %s", kernels[i].name, (int)s, qk_last_error())) {
                CHECK(gbuf_guards_ok(&y), "qk_matmul_packed(%s): wrote outside its output", kernels[i].name);
                CHECK(same_bytes(&y, &outs[i]), "qk_matmul_packed(%s) differs from qk_matmul with that kernel",
                      kernels[i].name);
            }
            gbuf_free(&y);
        }
        qk_packed_weights_free(packed);
    }

    /* Packed for the automatic backend, multiplied with automatic kernel choice. */
    {
        qk_packed_weights* packed = NULL;
        s = qk_pack_weights(&w, QK_BACKEND_AUTO, &packed);
        if (CHECK(s == QK_OK && packed, "qk_pack_weights(auto): status %d: %s", (int)s, qk_last_error())) {
            gbuf y = gbuf_new(yb, poison_byte());
            a.kernel = NULL;
            a.output = y.p;
            s = qk_matmul_packed(packed, &a);
            matmul_runs++;
            if (CHECK(s == QK_OK, "qk_matmul_packed(auto): status %d: %s", (int)s, qk_last_error())) {
                CHECK(gbuf_guards_ok(&y), "qk_matmul_packed(auto): wrote outside its output");
                if (!p->ref_only || qk_packed_backend(packed) == QK_BACKEND_REF)
                    compare_output(p, y.p, e.val, e.err, "qk_matmul_packed(auto) vs oracle", NULL);
                if (ci >= 0 && qk_packed_backend(packed) == chosen.backend)
                    CHECK(same_bytes(&y, &yauto), "qk_matmul_packed(auto) differs from qk_matmul(auto), same backend");
            }
            gbuf_free(&y);
            qk_packed_weights_free(packed);
        }
    }

    /* quantizedMatMul is qk_matmul with float16, A16, no bias, automatic backend. */
    if (p->dtype == QK_DTYPE_F16 && p->mode == QK_MODE_A16 && !p->bias) {
        qk_kernel_info unused;
        qk_kernel_get(-1, &unused); /* leave a failure behind: quantizedMatMul must replace it */
        gbuf y = gbuf_new(yb, poison_byte());
        quantizedMatMul(p->x, p->q, p->scales, p->zp, y.p, p->M, p->N, p->K, p->G, p->bits);
        matmul_runs++;
        s = qk_last_status();
        if (CHECK(s == QK_OK, "quantizedMatMul: qk_last_status %d: %s", (int)s, qk_last_error())) {
            CHECK(qk_last_error()[0] == '\0', "quantizedMatMul: qk_last_error not empty after success");
            CHECK(gbuf_guards_ok(&y), "quantizedMatMul: wrote outside its output");
            CHECK(same_bytes(&y, &yauto), "quantizedMatMul differs from qk_matmul(float16, A16)");
        }
        gbuf_free(&y);
    }

    CHECK(memcmp(x0, p->x, x_bytes(p)) == 0 && memcmp(q0, p->q, q_bytes(p)) == 0 &&
              memcmp(s0, p->scales, n_groups(p) * sizeof(float)) == 0 && (!p->zp || memcmp(z0, p->zp, n_groups(p)) == 0) &&
              (!p->bias || memcmp(b0, p->bias, (size_t)p->N * sizeof(float)) == 0),
          "an input array changed");

    gbuf_free(&yauto);
    for (int i = 0; i < n_kernels; i++)
        if (outs[i].p) gbuf_free(&outs[i]);
    free(ref_val);
    free(x0);
    free(q0);
    free(s0);
    free(z0);
    free(b0);
    expectation_free(&e);
}

/* ------------------------------------------------------------------------------------------ */
/* The weight quantizer and dequantizer, oracle and checks                                      */

/* docs/numerics.md section 2 with readings 1-3 and 10, in float32 steps. x: [N, K], exact floats.
 * Returns 0 when an asymmetric range overflows float32 (reading 2). */
static int oracle_quantize(const float* x, int32_t N, int32_t K, int32_t bits, qk_granularity gran, int32_t G,
                           int sym, int8_t* q, float* scales, int8_t* zp) {
    int32_t group = gran == QK_PER_GROUP ? G : K;
    float qmax = (float)((1 << (bits - 1)) - 1), qmin = -qmax - 1.0f;
    size_t total = (size_t)N * K, groups = total / (size_t)group;
    float tlo = 0, thi = 0; /* the whole tensor's range, widened to hold zero */
    for (size_t i = 0; i < total; i++) {
        if (x[i] < tlo) tlo = x[i];
        if (x[i] > thi) thi = x[i];
    }
    memset(q, 0, total * (size_t)bits / 8);
    for (size_t g = 0; g < groups; g++) {
        float lo = 0, hi = 0;
        if (gran == QK_PER_TENSOR) {
            lo = tlo;
            hi = thi;
        } else {
            for (size_t i = g * group; i < (g + 1) * group; i++) {
                if (x[i] < lo) lo = x[i];
                if (x[i] > hi) hi = x[i];
            }
        }
        float s, z = 0;
        if (sym) {
            float amax = -lo > hi ? -lo : hi;
            s = amax / qmax;
        } else {
            float width = hi - lo;
            if (isinf(width)) return 0;
            s = width / (qmax - qmin);
            if (s != 0.0f) z = clamp_f(rintf(qmin - lo / s), qmin, qmax);
        }
        if (s == 0.0f) { /* zero range or an underflowing scale: reading 1 */
            s = 1.0f;
            z = sym ? 0.0f : clamp_f(rintf(qmin - lo), qmin, qmax);
        }
        for (size_t i = g * group; i < (g + 1) * group; i++) {
            double v = (double)rintf(x[i] / s) + z; /* exact: reading 3 */
            v = v < (sym ? -qmax : qmin) ? (sym ? -qmax : qmin) : v > qmax ? qmax : v;
            int iv = (int)v;
            if (bits == 8)
                q[i] = (int8_t)iv;
            else
                q[i / 2] = (int8_t)((uint8_t)q[i / 2] | (uint8_t)((iv & 0xF) << (4 * (i % 2))));
        }
        scales[g] = s;
        if (!sym) zp[g] = (int8_t)z;
    }
    return 1;
}

/* Quantizes W (float32 values, stored as wdt) with qk_quantize, checks it against the oracle bit
 * for bit and its guards, and checks qk_dequantize against scales * (q - zp) rounded once.
 * On success the canonical arrays go to p (fresh, exactly sized). */
static void quantize_checked(problem* p, const float* W, qk_dtype wdt, qk_granularity gran, int32_t group_arg,
                             int sym) {
    size_t total = (size_t)p->N * p->K, groups = n_groups(p);
    void* win = xmalloc(total * formats[wdt].size);
    float* wexact = xmalloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++) {
        store_el(win, wdt, i, W[i]);
        wexact[i] = load_el(win, wdt, i);
    }
    int fill = poison_byte();
    gbuf gq = gbuf_new(q_bytes(p), fill), gs = gbuf_new(groups * sizeof(float), fill);
    gbuf gz = gbuf_new(groups, fill);
    qk_status s = qk_quantize(win, wdt, p->N, p->K, p->bits, gran, group_arg, sym, gq.p, gs.p, sym ? NULL : gz.p);
    int8_t* oq = xmalloc(q_bytes(p));
    float* os = xmalloc(groups * sizeof(float));
    int8_t* oz = xmalloc(groups);
    memset(oz, 0, groups);
    int ok = oracle_quantize(wexact, p->N, p->K, p->bits, gran, p->G, sym, oq, os, oz);
    CHECK(ok, "test bug: the oracle quantizer refused a generated matrix");
    if (CHECK(s == QK_OK, "qk_quantize(%s, granularity %d, group %d): status %d: %s", formats[wdt].name, (int)gran,
              group_arg, (int)s, qk_last_error())) {
        CHECK(gbuf_guards_ok(&gq) && gbuf_guards_ok(&gs) && gbuf_guards_ok(&gz),
              "qk_quantize wrote outside q / scales / zero_points");
        if (sym) CHECK(gbuf_untouched(&gz, fill), "qk_quantize (symmetric) wrote to an unused zero-point buffer");
        size_t bad_q = 0, bad_s = 0, bad_z = 0;
        for (size_t i = 0; i < q_bytes(p); i++) bad_q += ((int8_t*)gq.p)[i] != oq[i];
        for (size_t g = 0; g < groups; g++) {
            bad_s += f32_bits(((float*)gs.p)[g]) != f32_bits(os[g]);
            bad_z += !sym && ((int8_t*)gz.p)[g] != oz[g];
        }
        CHECK(!bad_q && !bad_s && !bad_z, "qk_quantize differs from the oracle: %zu q bytes, %zu scales, %zu zero points",
              bad_q, bad_s, bad_z);
        if (bad_s) {
            for (size_t g = 0; g < groups; g++)
                if (f32_bits(((float*)gs.p)[g]) != f32_bits(os[g])) {
                    printf("  scale[%zu] = %.9g, oracle %.9g\n", g, (double)((float*)gs.p)[g], (double)os[g]);
                    break;
                }
        }
    }
    free(p->q);
    free(p->scales);
    free(p->zp);
    p->q = xdup(gq.p, q_bytes(p));
    p->scales = xdup(gs.p, groups * sizeof(float));
    p->zp = sym ? NULL : xdup(gz.p, groups);

    /* qk_dequantize: scales * (q - zp), exact, rounded once to a random dtype. */
    qk_dtype odt = PICK(all_dtypes);
    qk_weights w = weights_of(p);
    gbuf gd = gbuf_new(total * formats[odt].size, poison_byte());
    s = qk_dequantize(&w, odt, gd.p);
    if (CHECK(s == QK_OK, "qk_dequantize(%s): status %d: %s", formats[odt].name, (int)s, qk_last_error())) {
        CHECK(gbuf_guards_ok(&gd), "qk_dequantize wrote outside its output");
        size_t bad = 0;
        int32_t gpr = p->K / p->G;
        for (int32_t n = 0; n < p->N; n++)
            for (int32_t k = 0; k < p->K; k++) {
                size_t g = (size_t)n * gpr + k / p->G;
                real want = round_to((real)p->scales[g] * (q_at(p->q, p->K, p->bits, n, k) - (p->zp ? p->zp[g] : 0)),
                                     &formats[odt]);
                real got = load_el(gd.p, odt, (size_t)n * p->K + k);
                bad += !(got == want || (isnan(got) && isnan(want)));
            }
        CHECK(!bad, "qk_dequantize(%s): %zu elements differ from scales * (q - zp)", formats[odt].name, bad);
    }
    gbuf_free(&gd);
    gbuf_free(&gq);
    gbuf_free(&gs);
    gbuf_free(&gz);
    free(oq);
    free(os);
    free(oz);
    free(win);
    free(wexact);
}

/* ------------------------------------------------------------------------------------------ */
/* Random problems                                                                             */

enum { X_UNIFORM, X_HALVES, X_OUTLIERS, X_ZEROS, X_TINY, X_STYLES };
static const char* const x_style_names[X_STYLES] = {"uniform", "halves", "outliers", "zeros", "tiny"};

static void fill_activations(problem* p, int style) {
    int f16 = p->dtype == QK_DTYPE_F16;
    int lo = f16 ? -4 : -20, hi = f16 ? 2 : 20;
    p->x = xmalloc(x_bytes(p));
    for (int32_t m = 0; m < p->M; m++) {
        int e = rnd_int(lo, hi);
        int zero_row = style == X_ZEROS && rnd_percent(30);
        int tiny_row = style == X_TINY && rnd_percent(50);
        if (tiny_row && !f16) p->ref_only = 1;
        for (int32_t k = 0; k < p->K; k++) {
            float v = rnd_signed(e, e);
            switch (style) {
            case X_HALVES: v = (float)rnd_int(-254, 254) / 2.0f; break; /* ties for rne(x * 1.0f) */
            case X_OUTLIERS:
                if (rnd_percent(6)) v *= f16 ? 16.0f : 4096.0f;
                break;
            case X_ZEROS:
                if (zero_row || rnd_percent(30)) v = 0.0f;
                break;
            case X_TINY: /* float16 subnormals; float32 / bfloat16 subnormals: amax subnormal, inv = +Inf */
                if (tiny_row) v = f16 ? rnd_signed(-24, -15) : rnd_signed(-149, -127);
                break;
            default: break;
            }
            store_el(p->x, p->dtype, (size_t)m * p->K + k, v);
        }
        if (style == X_HALVES) /* amax = 127 exactly: inv = 1 */
            store_el(p->x, p->dtype, (size_t)m * p->K + rnd_int(0, p->K - 1), rnd_percent(50) ? 127.0f : -127.0f);
    }
}

static void fill_raw_weights(problem* p, int sym) {
    int f16 = p->dtype == QK_DTYPE_F16;
    size_t groups = n_groups(p);
    p->q = xmalloc(q_bytes(p));
    for (size_t i = 0; i < q_bytes(p); i++) p->q[i] = (int8_t)(uint8_t)rnd();
    p->scales = xmalloc(groups * sizeof(float));
    for (size_t g = 0; g < groups; g++) {
        float s = (float)ldexp(0.5 + 0.5 * rnd_unit(), f16 ? rnd_int(-12, -6) : rnd_int(-30, 10));
        if (rnd_percent(6)) s = -s; /* the format allows any float32 scale */
        if (rnd_percent(2)) s = 0.0f;
        p->scales[g] = s;
    }
    p->zp = NULL;
    if (!sym) {
        p->zp = xmalloc(groups);
        for (size_t g = 0; g < groups; g++) p->zp[g] = (int8_t)(p->bits == 4 ? rnd_int(-8, 7) : rnd_int(-128, 127));
    }
}

static void fill_quantized_weights(problem* p, int sym) {
    int f16 = p->dtype == QK_DTYPE_F16;
    /* The quantizer's input dtype; float16 input keeps the weights inside float16's range. */
    qk_dtype wdt = f16 ? QK_DTYPE_F16 : PICK(all_dtypes);
    size_t total = (size_t)p->N * p->K;
    float* W = xmalloc(total * sizeof *W);
    int subnormal_rows = !f16 && wdt != QK_DTYPE_F16 && rnd_percent(15);
    for (int32_t n = 0; n < p->N; n++) {
        int kind = rnd_int(0, 9);
        if (kind == 6 && !subnormal_rows) kind = 9;
        /* float16: dequantized weights stay normal float16 numbers (a kernel may round them). */
        int e = f16 ? rnd_int(-6, 0) : wdt == QK_DTYPE_F16 ? rnd_int(-10, 8) : rnd_int(-20, 20);
        for (int32_t k = 0; k < p->K; k++) {
            float v = rnd_signed(e, e);
            switch (kind) {
            case 0: v = (float)rnd_int(-30, 30) / 2.0f; break; /* ties in rne(x / s) */
            case 1: v = 0.0f; break;                           /* zero range: s = 1 */
            case 2: v = (float)ldexp(1.0, e); break;           /* constant row */
            case 3: v = fabsf(v); break;                       /* all positive: zp at qmin */
            case 4: v = -fabsf(v); break;                      /* all negative */
            case 5:                                            /* outliers */
                if (rnd_percent(5)) v *= 64.0f;
                break;
            case 6: /* float32 subnormal ranges: a scale that may underflow (reading 1) */
                v = (float)ldexp((double)rnd_int(-6, 6), -149);
                p->ref_only = 1;
                break;
            default: break;
            }
            W[(size_t)n * p->K + k] = v;
        }
    }
    qk_granularity gran = QK_PER_GROUP;
    int32_t group_arg = p->G;
    if (p->G == p->K) {
        static const qk_granularity grans[3] = {QK_PER_TENSOR, QK_PER_CHANNEL, QK_PER_GROUP};
        gran = PICK(grans);
        if (gran != QK_PER_GROUP) group_arg = rnd_percent(50) ? 0 : p->K; /* ignored unless QK_PER_GROUP */
    }
    quantize_checked(p, W, wdt, gran, group_arg, sym);
    free(W);
}

static void fill_bias(problem* p) {
    int f16 = p->dtype == QK_DTYPE_F16;
    p->bias = xmalloc((size_t)p->N * sizeof(float));
    int e = f16 ? rnd_int(-6, 3) : rnd_int(-20, 20);
    for (int32_t n = 0; n < p->N; n++) p->bias[n] = rnd_percent(5) ? 0.0f : rnd_signed(e, e);
}

static int32_t pick_group(int32_t K) {
    if (rnd_percent(35)) return K; /* per-channel */
    static const int32_t candidates[] = {32, 64, 128, 256, 2, 10, 15, 5, 3, 1, 6, 16, 8, 4};
    int32_t options[32], n = 0;
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
        if (candidates[i] < K && K % candidates[i] == 0) options[n++] = candidates[i];
    if (K % 2 == 0 && K / 2 > 0) options[n++] = K / 2; /* K = 2G */
    return n ? options[rnd() % (uint64_t)n] : K;
}

typedef struct {
    qk_dtype dtype;
    qk_mode mode;
    int bits, sym, bias, raw;
} combo;

/* The 96 combinations of dtype x mode x bits x symmetric x bias x weight source. */
static combo combo_of(int i) {
    combo c;
    c.dtype = all_dtypes[i % 3];
    i /= 3;
    c.mode = (qk_mode)(i % 2);
    i /= 2;
    c.bits = i % 2 ? 8 : 4;
    i /= 2;
    c.sym = i % 2;
    i /= 2;
    c.bias = i % 2;
    i /= 2;
    c.raw = i % 2;
    return c;
}
enum { N_COMBOS = 96 };

static void run_case(int index, int32_t M, int32_t N, int32_t K, combo c) {
    problem p = {.M = M, .N = N, .K = K, .bits = c.bits, .dtype = c.dtype, .mode = c.mode};
    if (K % 2) p.bits = 8; /* 4-bit weights need an even K */
    p.G = pick_group(K);
    int style = rnd_int(0, X_STYLES - 1);
    set_context("case %d: M=%d N=%d K=%d G=%d %d-bit %s %s %s%s, %s weights, %s activations", index, M, N, K, p.G,
                p.bits, c.sym ? "symmetric" : "asymmetric", formats[p.dtype].name, p.mode == QK_MODE_A16 ? "A16" : "A8",
                c.bias ? " +bias" : "", c.raw ? "raw" : "qk_quantize'd", x_style_names[style]);
    if (verbose) printf("%s\n", context);
    fill_activations(&p, style);
    if (c.raw)
        fill_raw_weights(&p, c.sym);
    else
        fill_quantized_weights(&p, c.sym);
    if (c.bias) fill_bias(&p);
    run_problem(&p);
    problem_free(&p);
}

/* ------------------------------------------------------------------------------------------ */
/* Special problems                                                                            */

/* K = 4096, per-channel, every product at its extreme: qx = +-127, q - zp = -15 / -255. The group
 * sums reach 4096 * 127 * 255 = 132,648,960: large, but exact even in int32. */
static void test_overflow_stress(void) {
    for (int di = 0; di < 3; di++)
        for (int mode = 0; mode < 2; mode++)
            for (int bits = 4; bits <= 8; bits += 4)
                for (int sym = 0; sym < 2; sym++) {
                    problem p = {.M = 3, .N = 3, .K = 4096, .bits = bits, .dtype = all_dtypes[di], .mode = (qk_mode)mode};
                    p.G = p.K;
                    set_context("overflow stress: K=4096 %d-bit %s %s %s", bits, sym ? "symmetric" : "zp=qmax",
                                formats[p.dtype].name, mode == QK_MODE_A16 ? "A16" : "A8");
                    /* +max activations, scaled so the results stay finite in the output dtype
                     * (and, for float16, so the dequantized weights stay normal float16 numbers). */
                    float xmax = p.dtype == QK_DTYPE_F16 ? 60000.0f : p.dtype == QK_DTYPE_BF16 ? bf16_to_f32(0x7F7F) : FLT_MAX;
                    float s = p.dtype == QK_DTYPE_F16 ? (bits == 4 ? 0x1p-16f : 0x1p-20f) : 0x1p-120f;
                    p.x = xmalloc(x_bytes(&p));
                    for (int32_t k = 0; k < p.K; k++) {
                        store_el(p.x, p.dtype, k, xmax);                           /* qx = 127 */
                        store_el(p.x, p.dtype, (size_t)p.K + k, -xmax);            /* qx = -127 */
                        store_el(p.x, p.dtype, 2 * (size_t)p.K + k, k % 2 ? xmax : -xmax);
                    }
                    p.q = xmalloc(q_bytes(&p));
                    memset(p.q, bits == 4 ? 0x88 : 0x80, q_bytes(&p)); /* every q = -8 / -128 */
                    p.scales = xmalloc(n_groups(&p) * sizeof(float));
                    for (int32_t n = 0; n < p.N; n++) p.scales[n] = s / (float)(1 << n);
                    if (!sym) {
                        p.zp = xmalloc(n_groups(&p));
                        memset(p.zp, bits == 4 ? 7 : 127, n_groups(&p));
                    }
                    run_problem(&p);
                    problem_free(&p);
                }
}

/* Large K with many groups whose terms all have one sign, so that summation error grows with
 * the number of terms and nothing cancels: K = 4096 and 16384 at G = 32 (128 and 512 groups).
 * (A plain float32 running sum across groups uses about half the A8 tolerance at 128 groups and
 * can exceed it, rarely, from about 500 groups on.) */
/* A16 rounding that accumulates: one per-channel group of K = 4096 whose products after the first
 * are each 0.6 ulp of the running sum, so that every float32 addition rounds the same way. A
 * float32 sum over all of K misses the float32 tolerance; kernels must fold partial sums into a
 * wider one (docs/numerics.md section 3 allows float32 accumulation, the tolerance does not allow
 * it unbounded). */
static void test_long_float32_sums(void) {
    problem p = {.M = 1, .N = 3, .K = 4096, .G = 4096, .bits = 8, .dtype = QK_DTYPE_F32, .mode = QK_MODE_A16};
    set_context("long float32 sums: K=4096 per-channel, same-sign terms of 0.6 ulp, float32 A16");
    p.x = xmalloc(x_bytes(&p));
    store_el(p.x, p.dtype, 0, 1.0f);
    for (int32_t k = 1; k < p.K; k++) store_el(p.x, p.dtype, k, 0.6f * 0x1p-23f);
    p.q = xmalloc(q_bytes(&p));
    memset(p.q, 1, q_bytes(&p));
    p.scales = xmalloc(n_groups(&p) * sizeof(float));
    for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = 1.0f;
    run_problem(&p);
    problem_free(&p);
}

static void test_many_groups(void) {
    static const int32_t Ks[2] = {4096, 16384};
    for (int ki = 0; ki < 2; ki++)
        for (int di = 0; di < 3; di++)
            for (int mode = 0; mode < 2; mode++) {
                qk_dtype dt = all_dtypes[di];
                problem p = {.M = 2, .N = 3, .K = Ks[ki], .G = 32, .bits = 8, .dtype = dt, .mode = (qk_mode)mode};
                set_context("many groups, one sign: K=%d G=32 (%d groups) %s %s", p.K, p.K / p.G, formats[dt].name,
                            mode == QK_MODE_A16 ? "A16" : "A8");
                p.x = xmalloc(x_bytes(&p));
                for (size_t i = 0; i < (size_t)p.M * p.K; i++)
                    store_el(p.x, dt, i, (float)(0.25 + rnd_unit()) * (dt == QK_DTYPE_F16 ? 0.5f : 1.0f));
                p.q = xmalloc(q_bytes(&p));
                for (size_t i = 0; i < q_bytes(&p); i++) p.q[i] = (int8_t)rnd_int(1, 127);
                p.scales = xmalloc(n_groups(&p) * sizeof(float));
                for (size_t g = 0; g < n_groups(&p); g++)
                    p.scales[g] = (float)((1.0 + rnd_unit()) * (dt == QK_DTYPE_F16 ? 0x1p-20 : 0x1p-10));
                p.zp = xmalloc(n_groups(&p));
                for (size_t g = 0; g < n_groups(&p); g++) p.zp[g] = (int8_t)rnd_int(-128, 0);
                run_problem(&p);
                problem_free(&p);
            }
}

/* Rows of NaN / +Inf / -Inf: A8 gives NaN rows and leaves the other rows exactly as they are
 * with those rows zeroed; A16 follows IEEE arithmetic (the oracle computes what it gives). */
static void test_nonfinite_rows(void) {
    for (int di = 0; di < 3; di++)
        for (int mode = 0; mode < 2; mode++) {
            qk_dtype dt = all_dtypes[di];
            problem p = {.M = 6, .N = 9, .K = 64, .G = 32, .bits = 4, .dtype = dt, .mode = (qk_mode)mode};
            set_context("non-finite rows: %s %s", formats[dt].name, mode == QK_MODE_A16 ? "A16" : "A8");
            fill_activations(&p, X_UNIFORM);
            fill_raw_weights(&p, 0);
            for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = fabsf(p.scales[g]) + 0x1p-10f;
            static const int bad_rows[3] = {1, 3, 4};
            const float bad_values[3] = {NAN, INFINITY, -INFINITY};
            int bad_k[3];
            void* clean = xdup(p.x, x_bytes(&p));
            for (int r = 0; r < 3; r++) {
                bad_k[r] = rnd_int(0, p.K - 1);
                store_el(p.x, dt, (size_t)bad_rows[r] * p.K + bad_k[r], bad_values[r]);
                for (int32_t k = 0; k < p.K; k++) store_el(clean, dt, (size_t)bad_rows[r] * p.K + k, 0.0f);
            }
            run_problem(&p);

            expectation e = oracle(&p);
            if (mode == QK_MODE_A8)
                for (int r = 0; r < 3; r++)
                    for (int32_t n = 0; n < p.N; n++)
                        CHECK(isnan(e.val[(size_t)bad_rows[r] * p.N + n]), "test bug: oracle row %d not NaN", bad_rows[r]);
            expectation_free(&e);

            qk_weights w = weights_of(&p);
            for (int i = 0; i < n_kernels; i++) {
                if (!kernels[i].available || !fits(&kernels[i], &p)) continue;
                gbuf y1 = gbuf_new(y_bytes(&p), poison_byte()), y2 = gbuf_new(y_bytes(&p), poison_byte());
                qk_matmul_args a = {.input = p.x, .output = y1.p, .M = p.M, .input_dtype = dt, .mode = p.mode,
                                    .kernel = kernels[i].name};
                qk_status s1 = qk_matmul(&w, &a);
                a.input = clean;
                a.output = y2.p;
                qk_status s2 = qk_matmul(&w, &a);
                if (CHECK(s1 == QK_OK && s2 == QK_OK, "%s: status %d / %d", kernels[i].name, (int)s1, (int)s2)) {
                    size_t row = (size_t)p.N * formats[dt].size;
                    for (int32_t m = 0; m < p.M; m++) {
                        if (m == 1 || m == 3 || m == 4) continue;
                        CHECK(memcmp((char*)y1.p + m * row, (char*)y2.p + m * row, row) == 0,
                              "%s: row %d changed with non-finite values in other rows", kernels[i].name, m);
                    }
                    if (mode == QK_MODE_A8)
                        for (int r = 0; r < 3; r++) {
                            int all_nan = 1;
                            for (int32_t n = 0; n < p.N; n++)
                                all_nan &= isnan(load_el(y1.p, dt, (size_t)bad_rows[r] * p.N + n)) != 0;
                            CHECK(all_nan, "%s: A8 row %d holding %g is not all NaN", kernels[i].name, bad_rows[r],
                                  (double)bad_values[r]);
                        }
                }
                gbuf_free(&y1);
                gbuf_free(&y2);
            }
            free(clean);
            problem_free(&p);
        }
}

/* A8 rows whose amax is subnormal (float32, bfloat16): inv = 127 / amax is +Inf, so non-zero
 * values quantize to +-127 and zeros (0 * Inf = NaN) to 0 (reading 4). Scales are large enough
 * that every result is a normal float32 number, so every kernel is held to the tolerance. */
static void test_subnormal_amax(void) {
    for (int di = 0; di < 2; di++)
        for (int bits = 4; bits <= 8; bits += 4) {
            qk_dtype dt = di ? QK_DTYPE_BF16 : QK_DTYPE_F32;
            problem p = {.M = 5, .N = 7, .K = 64, .G = 16, .bits = bits, .dtype = dt, .mode = QK_MODE_A8};
            set_context("subnormal amax: %s %d-bit", formats[dt].name, bits);
            fill_activations(&p, X_UNIFORM); /* row 0 stays normal */
            for (int32_t m = 1; m < p.M; m++)
                for (int32_t k = 0; k < p.K; k++) {
                    float v = rnd_percent(25) ? 0.0f : rnd_signed(-133, -127);
                    if (m == 4 && k == 5) v = 0x1p-133f; /* the smallest bfloat16 subnormal: sx = 2^-133 / 127 is coarse */
                    if (m == 4 && k != 5) v = 0.0f;
                    store_el(p.x, dt, (size_t)m * p.K + k, v);
                }
            fill_raw_weights(&p, bits == 8);
            for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = (float)ldexp(1.0 + rnd_unit(), rnd_int(20, 28));
            fill_bias(&p);
            run_problem(&p);
            problem_free(&p);
        }
}

/* Quantizer edges beyond the random cases: huge and subnormal ranges, per-tensor. */
static void test_quantizer_edges(void) {
    set_context("quantizer edges");
    for (int bits = 4; bits <= 8; bits += 4)
        for (int sym = 0; sym < 2; sym++) {
            problem p = {.N = 3, .K = 16, .G = 16, .bits = bits};
            float W[48];
            for (int i = 0; i < 48; i++) W[i] = rnd_signed(0, 0);
            W[0] = 3.0e38f;  /* row 0: near FLT_MAX, both signs (symmetric only: the range overflows) */
            W[1] = sym ? -3.0e38f : 1.0f;
            for (int k = 0; k < 16; k++) W[16 + k] = (float)ldexp((double)(k % 5 - 2), -149); /* subnormals */
            for (int k = 0; k < 16; k++) W[32 + k] = -2.5f; /* constant negative row */
            quantize_checked(&p, W, QK_DTYPE_F32, QK_PER_CHANNEL, 0, sym);
            problem_free(&p);
            p = (problem){.N = 3, .K = 16, .G = 16, .bits = bits};
            quantize_checked(&p, W, QK_DTYPE_F32, QK_PER_TENSOR, 16, sym);
            problem_free(&p);
            p = (problem){.N = 3, .K = 16, .G = 4, .bits = bits};
            quantize_checked(&p, W, QK_DTYPE_BF16, QK_PER_GROUP, 4, sym);
            problem_free(&p);
        }
    /* Per-channel equals per-group with G = K. */
    {
        float W[64];
        for (int i = 0; i < 64; i++) W[i] = rnd_signed(-3, 3);
        int8_t q1[64], q2[64], z1[4], z2[4];
        float s1[4], s2[4];
        qk_status a = qk_quantize(W, QK_DTYPE_F32, 4, 16, 8, QK_PER_CHANNEL, 0, 0, q1, s1, z1);
        qk_status b = qk_quantize(W, QK_DTYPE_F32, 4, 16, 8, QK_PER_GROUP, 16, 0, q2, s2, z2);
        CHECK(a == QK_OK && b == QK_OK && !memcmp(q1, q2, 64) && !memcmp(s1, s2, sizeof s1) && !memcmp(z1, z2, 4),
              "qk_quantize: per-channel differs from per-group with group_size K");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Errors (docs/numerics.md section 4): status, qk_last_status, a message, nothing written       */

static void reset_status(void) {
    qk_kernel_info unused;
    qk_kernel_get(0, &unused); /* a success: status OK, message "" */
}

static void expect_status(qk_status got, qk_status want, int line, const char* what) {
    check_at(got == want, line, "%s: status %d (%s), want %d (%s)", what, (int)got, qk_status_string(got), (int)want,
             qk_status_string(want));
    check_at(qk_last_status() == want, line, "%s: qk_last_status() %d, want %d", what, (int)qk_last_status(), (int)want);
    const char* message = qk_last_error();
    check_at(message && message[0], line, "%s: qk_last_error() is empty", what);
}

enum { EM = 2, EN = 4, EK = 32, EG = 16, FILL = 0x3C };

typedef struct {
    int8_t q[EN * EK / 2 + 64];
    float scales[EN * EK / EG + 16];
    int8_t zp[EN * EK / EG + 16];
    float bias[EN + 16];
    uint16_t x16[EM * EK + 16];
    float x32[EM * EK + 16];
    qk_weights w;
    qk_matmul_args a;
    gbuf out; /* EM * EN float32, or float16 */
} fixture;

static void fixture_init(fixture* f) {
    memset(f, 0, sizeof *f);
    for (size_t i = 0; i < sizeof f->q; i++) f->q[i] = (int8_t)(uint8_t)rnd();
    for (size_t i = 0; i < sizeof f->scales / sizeof f->scales[0]; i++) f->scales[i] = 0.01f;
    for (size_t i = 0; i < sizeof f->zp; i++) f->zp[i] = (int8_t)rnd_int(-8, 7);
    for (size_t i = 0; i < sizeof f->bias / sizeof f->bias[0]; i++) f->bias[i] = 0.5f;
    for (size_t i = 0; i < sizeof f->x16 / sizeof f->x16[0]; i++) {
        f->x32[i] = rnd_signed(0, 0);
        f->x16[i] = f32_to_f16(f->x32[i]);
    }
    f->out = gbuf_new(EM * EN * 4, FILL);
}

/* Valid arguments: 4-bit asymmetric, group 16, float16 in and out, A16. */
static void fixture_reset(fixture* f) {
    f->w = (qk_weights){f->q, f->scales, f->zp, EN, EK, EG, 4};
    f->a = (qk_matmul_args){.input = f->x16, .output = f->out.p, .bias = f->bias, .M = EM, .input_dtype = QK_DTYPE_F16,
                            .mode = QK_MODE_A16, .backend = QK_BACKEND_AUTO};
    gbuf_fill(&f->out, FILL);
    reset_status();
}

#define EXPECT(call, want, what)                                                                              \
    do {                                                                                                       \
        qk_status got_ = (call);                                                                               \
        expect_status(got_, (want), __LINE__, (what));                                                         \
        check_at(gbuf_untouched(&f.out, FILL), __LINE__, "%s: the output buffer changed", (what));            \
    } while (0)

/* qk_matmul with the fixture after the statements in ..., expecting want. */
#define MATMUL_ERROR(want, what, ...)                            \
    do {                                                         \
        fixture_reset(&f);                                       \
        __VA_ARGS__;                                             \
        EXPECT(qk_matmul(&f.w, &f.a), (want), "qk_matmul: " what); \
    } while (0)

#define PACKED_ERROR(want, what, ...)                                         \
    do {                                                                      \
        fixture_reset(&f);                                                    \
        __VA_ARGS__;                                                          \
        EXPECT(qk_matmul_packed(packed, &f.a), (want), "qk_matmul_packed: " what); \
    } while (0)

#define PACK_ERROR(want, what, backend, ...)                                                         \
    do {                                                                                             \
        fixture_reset(&f);                                                                           \
        __VA_ARGS__;                                                                                 \
        qk_packed_weights* out_ = (qk_packed_weights*)&sentinel;                                     \
        EXPECT(qk_pack_weights(&f.w, (backend), &out_), (want), "qk_pack_weights: " what);           \
        check_at(out_ == (qk_packed_weights*)&sentinel, __LINE__, "qk_pack_weights: " what ": *out changed"); \
    } while (0)

/* quantizedMatMul(input, weights, scales, zp, output, M, N, K, group, bits) after a success. */
#define QMM_ERROR(want, what, ...)                                                \
    do {                                                                          \
        fixture_reset(&f);                                                        \
        quantizedMatMul(__VA_ARGS__);                                             \
        EXPECT(qk_last_status(), (want), "quantizedMatMul: " what);               \
    } while (0)

static void test_errors(void) {
    set_context("errors");
    static int sentinel;
    fixture f;
    fixture_init(&f);
    char* odd = (char*)f.out.p + 1; /* misaligned for every dtype */
    char* odd2 = (char*)f.out.p + 2; /* aligned for 16-bit, not for float32 */
    char scales_copy[sizeof f.scales + 8];

    /* The fixture itself runs. */
    fixture_reset(&f);
    CHECK(qk_matmul(&f.w, &f.a) == QK_OK, "error fixture: %s", qk_last_error());
    CHECK(qk_last_status() == QK_OK && qk_last_error()[0] == '\0', "after success: status %d, message '%s'",
          (int)qk_last_status(), qk_last_error());

    /* ---- qk_matmul ---- */
    fixture_reset(&f);
    EXPECT(qk_matmul(NULL, &f.a), QK_ERR_NULL_POINTER, "qk_matmul: weights NULL");
    fixture_reset(&f);
    EXPECT(qk_matmul(&f.w, NULL), QK_ERR_NULL_POINTER, "qk_matmul: args NULL");
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "weights->data NULL", f.w.data = NULL);
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "weights->scales NULL", f.w.scales = NULL);
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "args->input NULL", f.a.input = NULL);
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "args->output NULL", f.a.output = NULL);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "N = 0", f.w.N = 0);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "N < 0", f.w.N = -4);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "K = 0", f.w.K = 0);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "K < 0", f.w.K = -32);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "M = 0", f.a.M = 0);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "M < 0", f.a.M = -1);
    MATMUL_ERROR(QK_ERR_INVALID_GROUP, "group 0", f.w.group_size = 0);
    MATMUL_ERROR(QK_ERR_INVALID_GROUP, "group < 0", f.w.group_size = -16);
    MATMUL_ERROR(QK_ERR_INVALID_GROUP, "group not dividing K", f.w.group_size = 5);
    MATMUL_ERROR(QK_ERR_INVALID_GROUP, "group > K", f.w.group_size = 2 * EK);
    MATMUL_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", f.w.K = 31; f.w.group_size = 31);
    MATMUL_ERROR(QK_ERR_ODD_K, "odd K, 4-bit, group 1", f.w.K = 15; f.w.group_size = 1);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 0", f.w.bits = 0);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 2", f.w.bits = 2);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 3", f.w.bits = 3);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 16", f.w.bits = 16);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits -4", f.w.bits = -4);
    MATMUL_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3", f.a.input_dtype = (qk_dtype)3);
    MATMUL_ERROR(QK_ERR_INVALID_DTYPE, "dtype -1", f.a.input_dtype = (qk_dtype)-1);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "mode 2", f.a.mode = (qk_mode)2);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "mode -1", f.a.mode = (qk_mode)-1);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "backend QK_BACKEND_COUNT", f.a.backend = QK_BACKEND_COUNT);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "backend -1", f.a.backend = (qk_backend)-1);
    MATMUL_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "backend CUDA", f.a.backend = QK_BACKEND_CUDA);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "unknown kernel", f.a.kernel = "no_such_kernel_1x1");
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "empty kernel name", f.a.kernel = "");
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float16 input at an odd address", f.a.input = (char*)f.x16 + 1);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float32 input at 2 mod 4", f.a.input = (char*)f.x32 + 2;
                 f.a.input_dtype = QK_DTYPE_F32);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float16 output at an odd address", f.a.output = odd);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float32 output at 2 mod 4", f.a.output = odd2; f.a.input = f.x32;
                 f.a.input_dtype = QK_DTYPE_F32);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "bias at an odd address", f.a.bias = (const float*)((const char*)f.bias + 1));
    memcpy(scales_copy + 1, f.scales, sizeof f.scales);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", f.w.scales = (const float*)(scales_copy + 1));
    f.zp[3] = 8;
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point 8", (void)0);
    f.zp[3] = -9;
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point -9", (void)0);
    f.zp[3] = 0;
    for (int i = 0; i < n_kernels; i++) { /* a kernel of the other mode cannot run the problem */
        if (kernels[i].mode == QK_MODE_A16 || !kernels[i].available) continue;
        MATMUL_ERROR(QK_ERR_UNSUPPORTED, "A8 kernel forced on A16", f.a.kernel = kernels[i].name);
        break;
    }
    for (int b = QK_BACKEND_AUTO + 1; b < QK_BACKEND_COUNT; b++) {
        qk_backend_info info;
        if (qk_backend_get((qk_backend)b, &info) != QK_OK || info.available) continue;
        MATMUL_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "unavailable backend forced", f.a.backend = (qk_backend)b);
        if (!CHECK(strstr(qk_last_error(), info.name) != NULL, "the message '%s' does not name backend '%s'",
                   qk_last_error(), info.name))
            break;
    }
    for (int i = 0; i < n_kernels; i++) {
        if (kernels[i].available) continue;
        MATMUL_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "unavailable kernel forced", f.a.kernel = kernels[i].name);
    }
    /* A kernel forced together with a backend it does not belong to: the contract does not say
     * which error; it must be one, and write nothing. */
    {
        fixture_reset(&f);
        f.a.backend = QK_BACKEND_CUDA;
        f.a.kernel = kernels[0].name;
        qk_status s = qk_matmul(&f.w, &f.a);
        CHECK(s == QK_ERR_INVALID_ARGUMENT || s == QK_ERR_BACKEND_UNAVAILABLE,
              "qk_matmul: kernel %s with backend cuda: status %d", kernels[0].name, (int)s);
        CHECK(gbuf_untouched(&f.out, FILL) && qk_last_error()[0], "qk_matmul: kernel with a foreign backend");
    }
    /* 8-bit zero points span the whole int8 range. */
    {
        fixture_reset(&f);
        int8_t zp8[EN * EK / 8];
        for (size_t i = 0; i < sizeof zp8; i++) zp8[i] = (int8_t)(i % 2 ? 127 : -128);
        f.w.bits = 8;
        f.w.group_size = 8;
        f.w.zero_points = zp8;
        int8_t q8[EN * EK];
        memset(q8, 0x80, sizeof q8);
        f.w.data = q8;
        float s8[EN * EK / 8];
        for (size_t i = 0; i < sizeof s8 / sizeof s8[0]; i++) s8[i] = 0x1p-12f;
        f.w.scales = s8;
        CHECK(qk_matmul(&f.w, &f.a) == QK_OK, "qk_matmul: 8-bit zero points -128 / 127: %s", qk_last_error());
    }

    /* ---- qk_matmul_packed ---- */
    fixture_reset(&f);
    qk_packed_weights* packed = NULL;
    qk_status ps = qk_pack_weights(&f.w, QK_BACKEND_AUTO, &packed);
    if (CHECK(ps == QK_OK && packed, "qk_pack_weights(fixture): %s", qk_last_error())) {
        fixture_reset(&f);
        EXPECT(qk_matmul_packed(NULL, &f.a), QK_ERR_NULL_POINTER, "qk_matmul_packed: packed NULL");
        fixture_reset(&f);
        EXPECT(qk_matmul_packed(packed, NULL), QK_ERR_NULL_POINTER, "qk_matmul_packed: args NULL");
        PACKED_ERROR(QK_ERR_NULL_POINTER, "input NULL", f.a.input = NULL);
        PACKED_ERROR(QK_ERR_NULL_POINTER, "output NULL", f.a.output = NULL);
        PACKED_ERROR(QK_ERR_INVALID_SIZE, "M = 0", f.a.M = 0);
        PACKED_ERROR(QK_ERR_INVALID_SIZE, "M < 0", f.a.M = -7);
        PACKED_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3", f.a.input_dtype = (qk_dtype)3);
        PACKED_ERROR(QK_ERR_INVALID_ARGUMENT, "mode 2", f.a.mode = (qk_mode)2);
        PACKED_ERROR(QK_ERR_INVALID_ARGUMENT, "backend QK_BACKEND_COUNT", f.a.backend = QK_BACKEND_COUNT);
        PACKED_ERROR(QK_ERR_INVALID_ARGUMENT, "unknown kernel", f.a.kernel = "no_such_kernel_1x1");
        PACKED_ERROR(QK_ERR_MISALIGNED, "float16 input at an odd address", f.a.input = (char*)f.x16 + 1);
        PACKED_ERROR(QK_ERR_MISALIGNED, "float16 output at an odd address", f.a.output = odd);
        PACKED_ERROR(QK_ERR_MISALIGNED, "float32 output at 2 mod 4", f.a.output = odd2; f.a.input = f.x32;
                     f.a.input_dtype = QK_DTYPE_F32);
        PACKED_ERROR(QK_ERR_MISALIGNED, "bias at an odd address", f.a.bias = (const float*)((const char*)f.bias + 1));
        for (int i = 0; i < n_kernels; i++) {
            if (kernels[i].mode == QK_MODE_A16 || !kernels[i].available ||
                kernels[i].backend != qk_packed_backend(packed))
                continue;
            PACKED_ERROR(QK_ERR_UNSUPPORTED, "A8 kernel forced on A16", f.a.kernel = kernels[i].name);
            break;
        }
        {   /* a backend other than the packed one: either error, nothing written */
            fixture_reset(&f);
            f.a.backend = QK_BACKEND_CUDA;
            qk_status s = qk_matmul_packed(packed, &f.a);
            CHECK(gbuf_untouched(&f.out, FILL) && qk_last_error()[0], "qk_matmul_packed: foreign backend");
            CHECK(s == QK_ERR_INVALID_ARGUMENT || s == QK_ERR_BACKEND_UNAVAILABLE,
                  "qk_matmul_packed: backend cuda on weights packed for %s: status %d",
                  backend_name(qk_packed_backend(packed)), (int)s);
        }
        fixture_reset(&f);
        CHECK(qk_matmul_packed(packed, &f.a) == QK_OK, "qk_matmul_packed(fixture): %s", qk_last_error());
        qk_packed_weights_free(packed);
    }

    /* ---- qk_pack_weights ---- */
    fixture_reset(&f);
    EXPECT(qk_pack_weights(&f.w, QK_BACKEND_AUTO, NULL), QK_ERR_NULL_POINTER, "qk_pack_weights: out NULL");
    {
        fixture_reset(&f);
        qk_packed_weights* out = (qk_packed_weights*)&sentinel;
        EXPECT(qk_pack_weights(NULL, QK_BACKEND_AUTO, &out), QK_ERR_NULL_POINTER, "qk_pack_weights: weights NULL");
        CHECK(out == (qk_packed_weights*)&sentinel, "qk_pack_weights: weights NULL: *out changed");
    }
    PACK_ERROR(QK_ERR_NULL_POINTER, "data NULL", QK_BACKEND_AUTO, f.w.data = NULL);
    PACK_ERROR(QK_ERR_NULL_POINTER, "scales NULL", QK_BACKEND_AUTO, f.w.scales = NULL);
    PACK_ERROR(QK_ERR_INVALID_SIZE, "N = 0", QK_BACKEND_AUTO, f.w.N = 0);
    PACK_ERROR(QK_ERR_INVALID_SIZE, "K < 0", QK_BACKEND_AUTO, f.w.K = -2);
    PACK_ERROR(QK_ERR_INVALID_GROUP, "group not dividing K", QK_BACKEND_AUTO, f.w.group_size = 12);
    PACK_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", QK_BACKEND_AUTO, f.w.K = 17; f.w.group_size = 17);
    PACK_ERROR(QK_ERR_INVALID_BITS, "bits 5", QK_BACKEND_AUTO, f.w.bits = 5);
    PACK_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", QK_BACKEND_AUTO,
               f.w.scales = (const float*)(scales_copy + 1));
    f.zp[0] = 8;
    PACK_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point 8", QK_BACKEND_AUTO, (void)0);
    f.zp[0] = 0;
    PACK_ERROR(QK_ERR_INVALID_ARGUMENT, "backend QK_BACKEND_COUNT", QK_BACKEND_COUNT, (void)0);
    PACK_ERROR(QK_ERR_INVALID_ARGUMENT, "backend -1", (qk_backend)-1, (void)0);
    PACK_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "backend CUDA", QK_BACKEND_CUDA, (void)0);
    for (int b = QK_BACKEND_AUTO + 1; b < QK_BACKEND_COUNT; b++) {
        qk_backend_info info;
        if (qk_backend_get((qk_backend)b, &info) != QK_OK || info.available) continue;
        PACK_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "unavailable backend", (qk_backend)b, (void)0);
    }

    /* ---- qk_quantize ---- */
    {
        enum { QN = 4, QK = 32 };
        float W[QN * QK + 8];
        uint16_t W16[QN * QK + 8];
        for (int i = 0; i < QN * QK + 8; i++) {
            W[i] = rnd_signed(0, 0);
            W16[i] = f32_to_f16(W[i]);
        }
        gbuf gq = gbuf_new(QN * QK, FILL), gs = gbuf_new(QN * QK * sizeof(float), FILL), gz = gbuf_new(QN * QK, FILL);
        char wcopy[sizeof W + 8];
        memcpy(wcopy + 2, W, sizeof W);
        memcpy(scales_copy, f.scales, sizeof f.scales); /* reuse as a raw byte area */
#define QUANTIZE_ERROR(want, what, input, dtype, N, K, bits, gran, G, sym, q, s, z)                                \
    do {                                                                                                             \
        gbuf_fill(&gq, FILL);                                                                                        \
        gbuf_fill(&gs, FILL);                                                                                        \
        gbuf_fill(&gz, FILL);                                                                                        \
        reset_status();                                                                                              \
        qk_status got_ = qk_quantize((input), (dtype), (N), (K), (bits), (gran), (G), (sym), (q), (s), (z));         \
        expect_status(got_, (want), __LINE__, "qk_quantize: " what);                                                 \
        check_at(gbuf_untouched(&gq, FILL) && gbuf_untouched(&gs, FILL) && gbuf_untouched(&gz, FILL), __LINE__,    \
                 "qk_quantize: %s: an output buffer changed", what);                                                 \
    } while (0)
        int8_t* q = gq.p;
        float* s = gs.p;
        int8_t* z = gz.p;
        const qk_granularity G = QK_PER_GROUP;
        QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "input NULL", NULL, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "q NULL", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, NULL, s, z);
        QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "scales NULL", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q, NULL, z);
        QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "zero_points NULL, asymmetric", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q, s,
                       NULL);
        QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "zero_points given, symmetric", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 1, q,
                       s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3", W, (qk_dtype)3, QN, QK, 4, G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype -1", W, (qk_dtype)-1, QN, QK, 4, G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "granularity 3", W, QK_DTYPE_F32, QN, QK, 4, (qk_granularity)3, 8, 0, q,
                       s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "granularity -1", W, QK_DTYPE_F32, QN, QK, 4, (qk_granularity)-1, 8, 0,
                       q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "N = 0", W, QK_DTYPE_F32, 0, QK, 4, G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "N < 0", W, QK_DTYPE_F32, -1, QK, 4, G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "K = 0", W, QK_DTYPE_F32, QN, 0, 4, QK_PER_CHANNEL, 0, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_BITS, "bits 2", W, QK_DTYPE_F32, QN, QK, 2, G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_BITS, "bits 16", W, QK_DTYPE_F32, QN, QK, 16, G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group 0", W, QK_DTYPE_F32, QN, QK, 4, G, 0, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group < 0", W, QK_DTYPE_F32, QN, QK, 4, G, -8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group not dividing K", W, QK_DTYPE_F32, QN, QK, 4, G, 12, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", W, QK_DTYPE_F32, QN, 31, 4, QK_PER_CHANNEL, 0, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_MISALIGNED, "float32 input at 2 mod 4", wcopy + 2, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q,
                       s, z);
        QUANTIZE_ERROR(QK_ERR_MISALIGNED, "float16 input at an odd address", (char*)W16 + 1, QK_DTYPE_F16, QN, QK, 4,
                       G, 8, 0, q, s, z);
        QUANTIZE_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q,
                       (float*)((char*)s + 1), z);
        /* Non-finite input, in every dtype and at the last element: nothing is written. */
        for (int di = 0; di < 3; di++) {
            qk_dtype dt = all_dtypes[di];
            const float bad[3] = {NAN, INFINITY, -INFINITY};
            void* in = xmalloc(QN * QK * 4);
            for (int b = 0; b < 3; b++) {
                for (int i = 0; i < QN * QK; i++) store_el(in, dt, i, W[i]);
                store_el(in, dt, QN * QK - 1, bad[b]);
                QUANTIZE_ERROR(QK_ERR_NON_FINITE, "NaN / Inf input", in, dt, QN, QK, 8, G, 8, 0, q, s, z);
                QUANTIZE_ERROR(QK_ERR_NON_FINITE, "NaN / Inf input, symmetric", in, dt, QN, QK, 4, QK_PER_TENSOR, 0,
                               1, q, s, NULL);
            }
            free(in);
        }
        /* An asymmetric range that overflows float32 (reading 2). */
        {
            float Wbig[QN * QK];
            memcpy(Wbig, W, sizeof Wbig);
            Wbig[QN * QK - 2] = -3.0e38f;
            Wbig[QN * QK - 1] = 3.0e38f;
            QUANTIZE_ERROR(QK_ERR_NON_FINITE, "range overflows float32", Wbig, QK_DTYPE_F32, QN, QK, 8, G, 8, 0, q, s,
                           z);
            QUANTIZE_ERROR(QK_ERR_NON_FINITE, "range overflows float32, per tensor", Wbig, QK_DTYPE_F32, QN, QK, 4,
                           QK_PER_TENSOR, 0, 0, q, s, z);
        }
#undef QUANTIZE_ERROR
        gbuf_free(&gq);
        gbuf_free(&gs);
        gbuf_free(&gz);
    }

    /* ---- qk_dequantize ---- */
    {
        gbuf gd = gbuf_new(EN * EK * 4 + 8, FILL);
        char* d = gd.p;
#define DEQUANTIZE_ERROR(want, what, dtype, output, ...)                                                   \
    do {                                                                                                     \
        fixture_reset(&f);                                                                                   \
        gbuf_fill(&gd, FILL);                                                                                \
        __VA_ARGS__;                                                                                         \
        qk_status got_ = qk_dequantize(&f.w, (dtype), (output));                                             \
        expect_status(got_, (want), __LINE__, "qk_dequantize: " what);                                       \
        check_at(gbuf_untouched(&gd, FILL), __LINE__, "qk_dequantize: %s: the output buffer changed", what); \
    } while (0)
        fixture_reset(&f);
        CHECK(qk_dequantize(NULL, QK_DTYPE_F32, d) == QK_ERR_NULL_POINTER && qk_last_error()[0],
              "qk_dequantize: weights NULL");
        DEQUANTIZE_ERROR(QK_ERR_NULL_POINTER, "data NULL", QK_DTYPE_F32, d, f.w.data = NULL);
        DEQUANTIZE_ERROR(QK_ERR_NULL_POINTER, "scales NULL", QK_DTYPE_F32, d, f.w.scales = NULL);
        DEQUANTIZE_ERROR(QK_ERR_NULL_POINTER, "output NULL", QK_DTYPE_F32, NULL, (void)0);
        DEQUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "N = 0", QK_DTYPE_F32, d, f.w.N = 0);
        DEQUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "K < 0", QK_DTYPE_F32, d, f.w.K = -32);
        DEQUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group 0", QK_DTYPE_F32, d, f.w.group_size = 0);
        DEQUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group not dividing K", QK_DTYPE_F32, d, f.w.group_size = 3);
        DEQUANTIZE_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", QK_DTYPE_F32, d, f.w.K = 9; f.w.group_size = 3);
        DEQUANTIZE_ERROR(QK_ERR_INVALID_BITS, "bits 1", QK_DTYPE_F32, d, f.w.bits = 1);
        DEQUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3", (qk_dtype)3, d, (void)0);
        DEQUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype -1", (qk_dtype)-1, d, (void)0);
        DEQUANTIZE_ERROR(QK_ERR_MISALIGNED, "float16 output at an odd address", QK_DTYPE_F16, d + 1, (void)0);
        DEQUANTIZE_ERROR(QK_ERR_MISALIGNED, "float32 output at 2 mod 4", QK_DTYPE_F32, d + 2, (void)0);
        memcpy(scales_copy + 1, f.scales, sizeof f.scales);
        DEQUANTIZE_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", QK_DTYPE_F32, d,
                         f.w.scales = (const float*)(scales_copy + 1));
        f.zp[5] = 100;
        DEQUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point 100", QK_DTYPE_F32, d, (void)0);
        f.zp[5] = 0;
#undef DEQUANTIZE_ERROR
        gbuf_free(&gd);
    }

    /* ---- quantizedMatMul: errors through qk_last_status ---- */
    {
        const void* x = f.x16;
        void* y = f.out.p;
        const int8_t* q = f.q;
        const float* s = f.scales;
        const int8_t* z = f.zp;
        memcpy(scales_copy + 1, f.scales, sizeof f.scales);
        QMM_ERROR(QK_ERR_NULL_POINTER, "input NULL", NULL, q, s, z, y, EM, EN, EK, EG, 4);
        QMM_ERROR(QK_ERR_NULL_POINTER, "weights NULL", x, NULL, s, z, y, EM, EN, EK, EG, 4);
        QMM_ERROR(QK_ERR_NULL_POINTER, "scales NULL", x, q, NULL, z, y, EM, EN, EK, EG, 4);
        QMM_ERROR(QK_ERR_NULL_POINTER, "output NULL", x, q, s, z, NULL, EM, EN, EK, EG, 4);
        QMM_ERROR(QK_ERR_INVALID_SIZE, "M = 0", x, q, s, z, y, 0, EN, EK, EG, 4);
        QMM_ERROR(QK_ERR_INVALID_SIZE, "N < 0", x, q, s, z, y, EM, -1, EK, EG, 4);
        QMM_ERROR(QK_ERR_INVALID_SIZE, "K = 0", x, q, s, z, y, EM, EN, 0, EG, 4);
        QMM_ERROR(QK_ERR_INVALID_GROUP, "group 0", x, q, s, z, y, EM, EN, EK, 0, 4);
        QMM_ERROR(QK_ERR_INVALID_GROUP, "group not dividing K", x, q, s, z, y, EM, EN, EK, 7, 4);
        QMM_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", x, q, s, z, y, EM, EN, 15, 5, 4);
        QMM_ERROR(QK_ERR_INVALID_BITS, "bits 3", x, q, s, z, y, EM, EN, EK, EG, 3);
        QMM_ERROR(QK_ERR_MISALIGNED, "input at an odd address", (const char*)x + 1, q, s, z, y, EM, EN, EK, EG, 4);
        QMM_ERROR(QK_ERR_MISALIGNED, "output at an odd address", x, q, s, z, odd, EM, EN, EK, EG, 4);
        QMM_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", x, q, (const float*)(scales_copy + 1), z, y, EM, EN,
                  EK, EG, 4);
        f.zp[1] = -100;
        QMM_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point -100", x, q, s, z, y, EM, EN, EK, EG, 4);
        f.zp[1] = 0;
        /* and a success clears an earlier failure */
        fixture_reset(&f);
        qk_kernel_get(-1, NULL);
        quantizedMatMul(x, q, s, z, y, EM, EN, EK, EG, 4);
        CHECK(qk_last_status() == QK_OK && qk_last_error()[0] == '\0', "quantizedMatMul after a failure: status %d",
              (int)qk_last_status());
    }

    /* ---- qk_select_kernel, qk_kernel_get, qk_backend_get ---- */
    {
        fixture_reset(&f);
        EXPECT(qk_select_kernel(&f.w, &f.a, NULL), QK_ERR_NULL_POINTER, "qk_select_kernel: out NULL");
        qk_kernel_info info;
        fixture_reset(&f);
        f.a.backend = QK_BACKEND_CUDA;
        EXPECT(qk_select_kernel(&f.w, &f.a, &info), QK_ERR_BACKEND_UNAVAILABLE, "qk_select_kernel: backend CUDA");
        fixture_reset(&f);
        f.a.kernel = "no_such_kernel_1x1";
        EXPECT(qk_select_kernel(&f.w, &f.a, &info), QK_ERR_INVALID_ARGUMENT, "qk_select_kernel: unknown kernel");
        for (int i = 0; i < n_kernels; i++) {
            if (!kernels[i].available) continue;
            fixture_reset(&f);
            f.a.kernel = kernels[i].name;
            f.a.mode = kernels[i].mode;
            f.w.bits = kernels[i].bits_mask & (1u << 4) ? 4 : 8;
            if (f.w.bits == 8) f.w.zero_points = NULL;
            f.w.group_size = kernels[i].group_multiple <= EK && EK % kernels[i].group_multiple == 0
                                 ? kernels[i].group_multiple : EK;
            for (int d = 0; d < 3; d++)
                if (kernels[i].dtype_mask & (1u << d)) {
                    f.a.input_dtype = (qk_dtype)d;
                    f.a.input = d == QK_DTYPE_F32 ? (const void*)f.x32 : (const void*)f.x16;
                    break;
                }
            qk_status s = qk_select_kernel(&f.w, &f.a, &info);
            CHECK(s == QK_OK && strcmp(info.name, kernels[i].name) == 0,
                  "qk_select_kernel with kernel %s forced: status %d, got %s", kernels[i].name, (int)s,
                  s == QK_OK ? info.name : "-");
        }
        fixture_reset(&f);
        EXPECT(qk_kernel_get(-1, &info), QK_ERR_INVALID_ARGUMENT, "qk_kernel_get(-1)");
        fixture_reset(&f);
        EXPECT(qk_kernel_get(n_kernels, &info), QK_ERR_INVALID_ARGUMENT, "qk_kernel_get(count)");
        fixture_reset(&f);
        EXPECT(qk_kernel_get(0, NULL), QK_ERR_NULL_POINTER, "qk_kernel_get(0, NULL)");
        qk_backend_info binfo;
        fixture_reset(&f);
        EXPECT(qk_backend_get(QK_BACKEND_AUTO, &binfo), QK_ERR_INVALID_ARGUMENT, "qk_backend_get(AUTO)");
        fixture_reset(&f);
        EXPECT(qk_backend_get(QK_BACKEND_COUNT, &binfo), QK_ERR_INVALID_ARGUMENT, "qk_backend_get(COUNT)");
        fixture_reset(&f);
        EXPECT(qk_backend_get((qk_backend)-1, &binfo), QK_ERR_INVALID_ARGUMENT, "qk_backend_get(-1)");
        fixture_reset(&f);
        EXPECT(qk_backend_get(QK_BACKEND_REF, NULL), QK_ERR_NULL_POINTER, "qk_backend_get(REF, NULL)");
    }
    gbuf_free(&f.out);
}

/* ------------------------------------------------------------------------------------------ */
/* Registry, status strings, versions, CPU features                                            */

/* Whether name is one of the comma-separated names of list. */
static int listed(const char* name, const char* list) {
    size_t length = strlen(name);
    for (const char* at = list; *at;) {
        size_t item = strcspn(at, ",");
        if (item == length && strncmp(at, name, length) == 0) return 1;
        at += item + (at[item] == ',');
    }
    return 0;
}

static void test_registry(void) {
    set_context("registry");
    CHECK(qk_abi_version() == QK_ABI_VERSION, "qk_abi_version %d, header %d", qk_abi_version(), (int)QK_ABI_VERSION);
    const char* v = qk_version();
    int major = -1, minor = -1, patch = -1, used = 0;
    CHECK(v && sscanf(v, "%d.%d.%d%n", &major, &minor, &patch, &used) == 3 && v[used] == '\0' && major >= 0,
          "qk_version '%s' is not MAJOR.MINOR.PATCH", v ? v : "(null)");
    for (int s = 0; s < QK_ERR_STATUS_COUNT; s++) {
        const char* str = qk_status_string((qk_status)s);
        CHECK(str && str[0], "qk_status_string(%d) is empty", s);
        for (int t = 0; t < s; t++)
            CHECK(!str || strcmp(str, qk_status_string((qk_status)t)) != 0, "qk_status_string(%d) equals (%d)", s, t);
    }
    CHECK(qk_status_string(QK_ERR_STATUS_COUNT) != NULL && qk_status_string((qk_status)-1) != NULL &&
              qk_status_string((qk_status)1000) != NULL,
          "qk_status_string out of range returns NULL");

    for (int i = 0; i < QK_CPU_FEATURE_BITS; i++) {
        const char* name = qk_cpu_feature_name(1ull << i);
        CHECK(name && name[0], "qk_cpu_feature_name(1 << %d) is empty", i);
    }
    CHECK(qk_cpu_feature_name(0) == NULL && qk_cpu_feature_name(3) == NULL &&
              qk_cpu_feature_name(1ull << QK_CPU_FEATURE_BITS) == NULL,
          "qk_cpu_feature_name names a non-feature");
    uint64_t features = qk_cpu_features();
    CHECK((features >> QK_CPU_FEATURE_BITS) == 0, "qk_cpu_features has unknown bits: %#" PRIx64, features);
    printf("cpu features:");
    for (int i = 0; i < QK_CPU_FEATURE_BITS; i++)
        if (features & (1ull << i)) printf(" %s", qk_cpu_feature_name(1ull << i));
    printf("\n");

    for (int b = QK_BACKEND_AUTO + 1; b < QK_BACKEND_COUNT; b++) {
        qk_backend_info info;
        qk_status s = qk_backend_get((qk_backend)b, &info);
        if (!CHECK(s == QK_OK, "qk_backend_get(%d): status %d", b, (int)s)) continue;
        CHECK(info.name && info.name[0] && info.reason, "backend %d: empty name or NULL reason", b);
        CHECK(info.available == (info.compiled && info.detected), "backend %s: available %d, compiled %d, detected %d",
              info.name, info.available, info.compiled, info.detected);
        CHECK(info.available == (info.reason[0] == '\0'), "backend %s: available %d but reason '%s'", info.name,
              info.available, info.reason);
        printf("backend %-18s %s%s\n", info.name, info.available ? "available" : "unavailable: ",
               info.available ? "" : info.reason);
        const char* expected = getenv("QK_TEST_BACKENDS");
        if (expected)
            CHECK(info.available == listed(info.name, expected), "QK_TEST_BACKENDS=%s, but backend %s is %savailable",
                  expected, info.name, info.available ? "" : "not ");
    }
    qk_backend_info ref_info;
    CHECK(qk_backend_get(QK_BACKEND_REF, &ref_info) == QK_OK && ref_info.available, "the ref backend is unavailable");
    qk_backend_info cuda;
    CHECK(qk_backend_get(QK_BACKEND_CUDA, &cuda) == QK_OK && !cuda.available, "CUDA is available in the CPU library");

    n_kernels = qk_kernel_count();
    CHECK(n_kernels >= 2 && n_kernels <= MAX_KERNELS, "qk_kernel_count() = %d", n_kernels);
    if (n_kernels > MAX_KERNELS) n_kernels = MAX_KERNELS;
    if (n_kernels < 0) n_kernels = 0;
    int ref_modes = 0;
    for (int i = 0; i < n_kernels; i++) {
        qk_kernel_info* k = &kernels[i];
        if (!CHECK(qk_kernel_get(i, k) == QK_OK, "qk_kernel_get(%d): %s", i, qk_last_error())) {
            memset(k, 0, sizeof *k);
            k->name = "?";
            continue;
        }
        CHECK(k->name && k->name[0], "kernel %d has no name", i);
        if (!k->name) k->name = "?";
        for (int j = 0; j < i; j++) CHECK(strcmp(kernels[j].name, k->name) != 0, "kernel name %s twice", k->name);
        CHECK(k->backend > QK_BACKEND_AUTO && k->backend < QK_BACKEND_COUNT, "%s: backend %d", k->name, (int)k->backend);
        CHECK(k->mode == QK_MODE_A16 || k->mode == QK_MODE_A8, "%s: mode %d", k->name, (int)k->mode);
        CHECK(k->bits_mask && !(k->bits_mask & ~((1u << 4) | (1u << 8))), "%s: bits_mask %#x", k->name, k->bits_mask);
        CHECK(k->dtype_mask && !(k->dtype_mask & ~7u), "%s: dtype_mask %#x", k->name, k->dtype_mask);
        CHECK(k->group_multiple >= 1 && k->max_m >= 0, "%s: group_multiple %d, max_m %d", k->name, k->group_multiple,
              k->max_m);
        qk_backend_info b;
        if (qk_backend_get(k->backend, &b) == QK_OK) {
            CHECK(k->available == b.available, "%s: available %d, its backend %d", k->name, k->available, b.available);
            if (!k->available) printf("skip %s: %s\n", k->name, b.reason);
        }
        if (k->backend == QK_BACKEND_REF && k->available && k->bits_mask == ((1u << 4) | (1u << 8)) &&
            k->dtype_mask == 7u && k->group_multiple == 1)
            ref_modes |= 1 << k->mode;
    }
    CHECK(ref_modes == 3, "no reference kernel running everything for A16 and for A8 (modes %#x)", ref_modes);
    CHECK(qk_packed_backend(NULL) == QK_BACKEND_AUTO && qk_packed_size(NULL) == 0, "packed accessors on NULL");
    qk_packed_weights_free(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* QKERNELS_BACKEND                                                                            */

static void test_environment(void) {
    set_context("QKERNELS_BACKEND");
    const char* before = getenv("QKERNELS_BACKEND");
    char* saved = before ? strdup(before) : NULL;
    problem p = {.M = 3, .N = 5, .K = 32, .G = 16, .bits = 4, .dtype = QK_DTYPE_F16, .mode = QK_MODE_A16};
    fill_activations(&p, X_UNIFORM);
    fill_raw_weights(&p, 0);
    qk_weights w = weights_of(&p);
    qk_matmul_args a = {.input = p.x, .M = p.M, .input_dtype = p.dtype, .mode = p.mode};
    int fill = 0x3C;
    gbuf y = gbuf_new(y_bytes(&p), fill), yref = gbuf_new(y_bytes(&p), fill);

    a.output = yref.p;
    a.backend = QK_BACKEND_REF;
    CHECK(qk_matmul(&w, &a) == QK_OK, "backend ref: %s", qk_last_error());
    a.backend = QK_BACKEND_AUTO;

    static const char* const fine[] = {"ref", "auto", ""};
    for (int i = 0; i < 3; i++) {
        setenv("QKERNELS_BACKEND", fine[i], 1);
        gbuf_fill(&y, fill);
        a.output = y.p;
        qk_status s = qk_matmul(&w, &a);
        CHECK(s == QK_OK, "QKERNELS_BACKEND='%s': qk_matmul status %d: %s", fine[i], (int)s, qk_last_error());
        qk_kernel_info info;
        s = qk_select_kernel(&w, &a, &info);
        CHECK(s == QK_OK, "QKERNELS_BACKEND='%s': qk_select_kernel status %d", fine[i], (int)s);
        qk_packed_weights* packed = NULL;
        s = qk_pack_weights(&w, QK_BACKEND_AUTO, &packed);
        CHECK(s == QK_OK, "QKERNELS_BACKEND='%s': qk_pack_weights status %d", fine[i], (int)s);
        if (i == 0) {
            CHECK(same_bytes(&y, &yref), "QKERNELS_BACKEND=ref differs from backend ref");
            CHECK(s != QK_OK || info.backend == QK_BACKEND_REF, "QKERNELS_BACKEND=ref: qk_select_kernel chose %s",
                  info.name);
            CHECK(!packed || qk_packed_backend(packed) == QK_BACKEND_REF, "QKERNELS_BACKEND=ref: packed for %d",
                  packed ? (int)qk_packed_backend(packed) : -1);
        }
        qk_packed_weights_free(packed);
    }

    static const struct {
        const char* value;
        qk_status want;
    } wrong[] = {{"nonsense", QK_ERR_INVALID_ARGUMENT}, {"cuda", QK_ERR_BACKEND_UNAVAILABLE}};
    for (int i = 0; i < 2; i++) {
        setenv("QKERNELS_BACKEND", wrong[i].value, 1);
        char what[96];
        gbuf_fill(&y, fill);
        a.output = y.p;
        reset_status();
        snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: qk_matmul", wrong[i].value);
        expect_status(qk_matmul(&w, &a), wrong[i].want, __LINE__, what);
        CHECK(gbuf_untouched(&y, fill), "%s: wrote its output", what);

        reset_status();
        snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: quantizedMatMul", wrong[i].value);
        quantizedMatMul(p.x, p.q, p.scales, p.zp, y.p, p.M, p.N, p.K, p.G, p.bits);
        expect_status(qk_last_status(), wrong[i].want, __LINE__, what);
        CHECK(gbuf_untouched(&y, fill), "%s: wrote its output", what);

        reset_status();
        qk_packed_weights* packed = (qk_packed_weights*)&fill;
        snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: qk_pack_weights(auto)", wrong[i].value);
        expect_status(qk_pack_weights(&w, QK_BACKEND_AUTO, &packed), wrong[i].want, __LINE__, what);
        CHECK(packed == (qk_packed_weights*)&fill, "%s: *out changed", what);

        reset_status();
        qk_kernel_info info;
        snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: qk_select_kernel", wrong[i].value);
        expect_status(qk_select_kernel(&w, &a, &info), wrong[i].want, __LINE__, what);

        /* an explicit backend does not read the variable */
        a.backend = QK_BACKEND_REF;
        qk_status s = qk_matmul(&w, &a);
        CHECK(s == QK_OK && same_bytes(&y, &yref), "QKERNELS_BACKEND=%s with backend ref: status %d", wrong[i].value,
              (int)s);
        a.backend = QK_BACKEND_AUTO;
    }

    if (saved) {
        setenv("QKERNELS_BACKEND", saved, 1);
        free(saved);
    } else {
        unsetenv("QKERNELS_BACKEND");
    }
    gbuf_free(&y);
    gbuf_free(&yref);
    problem_free(&p);
}

/* ------------------------------------------------------------------------------------------ */
/* Threads: same bytes as a single thread, and a thread-local last status                       */

enum { N_THREADS = 4, THREAD_PROBLEMS = 2 };

typedef struct {
    const problem* problems;
    gbuf (*expected)[MAX_KERNELS];
    pthread_barrier_t* barrier;
    int id;
    long passed, failed;
} thread_job;

static void* thread_main(void* arg) {
    thread_job* job = arg;
    qk_kernel_info unused;
    /* Even threads fail, odd threads succeed; after the barrier each still sees its own status. */
    if (job->id % 2 == 0)
        qk_kernel_get(-1, &unused);
    else
        qk_kernel_get(0, &unused);
    pthread_barrier_wait(job->barrier);
    for (int rep = 0; rep < 3; rep++)
        for (int pi = 0; pi < THREAD_PROBLEMS; pi++) {
            const problem* p = &job->problems[pi];
            qk_weights w = weights_of(p);
            for (int i = 0; i < n_kernels; i++) {
                if (!job->expected[pi][i].p) continue;
                gbuf y = gbuf_new(y_bytes(p), 0xFF);
                qk_matmul_args a = {.input = p->x, .output = y.p, .bias = p->bias, .M = p->M, .input_dtype = p->dtype,
                                    .mode = p->mode, .kernel = kernels[i].name};
                if (qk_matmul(&w, &a) == QK_OK && gbuf_guards_ok(&y) && same_bytes(&y, &job->expected[pi][i]))
                    job->passed++;
                else
                    job->failed++;
                gbuf_free(&y);
            }
            pthread_barrier_wait(job->barrier);
            if (rep == 0 && pi == 0) { /* every thread's last call succeeded: all statuses OK */
                if (qk_last_status() == QK_OK) job->passed++; else job->failed++;
            }
        }
    return NULL;
}

static void test_threads(void) {
    set_context("threads");
    problem problems[THREAD_PROBLEMS] = {
        {.M = 5, .N = 17, .K = 64, .G = 32, .bits = 4, .dtype = QK_DTYPE_F16, .mode = QK_MODE_A16},
        {.M = 9, .N = 8, .K = 96, .G = 32, .bits = 8, .dtype = QK_DTYPE_F32, .mode = QK_MODE_A8},
    };
    static gbuf expected[THREAD_PROBLEMS][MAX_KERNELS];
    memset(expected, 0, sizeof expected);
    for (int pi = 0; pi < THREAD_PROBLEMS; pi++) {
        problem* p = &problems[pi];
        fill_activations(p, X_UNIFORM);
        fill_raw_weights(p, pi);
        fill_bias(p);
        qk_weights w = weights_of(p);
        for (int i = 0; i < n_kernels; i++) {
            if (!kernels[i].available || !fits(&kernels[i], p)) continue;
            expected[pi][i] = gbuf_new(y_bytes(p), 0xFF);
            qk_matmul_args a = {.input = p->x, .output = expected[pi][i].p, .bias = p->bias, .M = p->M,
                                .input_dtype = p->dtype, .mode = p->mode, .kernel = kernels[i].name};
            CHECK(qk_matmul(&w, &a) == QK_OK, "%s: %s", kernels[i].name, qk_last_error());
        }
    }
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N_THREADS);
    pthread_t threads[N_THREADS];
    thread_job jobs[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        jobs[t] = (thread_job){problems, expected, &barrier, t, 0, 0};
        if (pthread_create(&threads[t], NULL, thread_main, &jobs[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(2);
        }
    }
    for (int t = 0; t < N_THREADS; t++) pthread_join(threads[t], NULL);
    long failed = 0, passed = 0;
    for (int t = 0; t < N_THREADS; t++) {
        failed += jobs[t].failed;
        passed += jobs[t].passed;
    }
    CHECK(failed == 0, "%ld of %ld concurrent runs differ from single-threaded ones (or statuses leaked)", failed,
          failed + passed);
    pthread_barrier_destroy(&barrier);
    for (int pi = 0; pi < THREAD_PROBLEMS; pi++) {
        for (int i = 0; i < n_kernels; i++)
            if (expected[pi][i].p) gbuf_free(&expected[pi][i]);
        problem_free(&problems[pi]);
    }
}

/* ------------------------------------------------------------------------------------------ */

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char** argv) {
    uint64_t seed = 0x71CE2024ull;
    long random_cases = 2304, only = -1;
    int sweep = 1;
    if (getenv("QK_TEST_SEED")) seed = strtoull(getenv("QK_TEST_SEED"), NULL, 0);
    if (getenv("QK_TEST_CASES")) random_cases = strtol(getenv("QK_TEST_CASES"), NULL, 0);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--cases") && i + 1 < argc)
            random_cases = strtol(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--case") && i + 1 < argc)
            only = strtol(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--no-sweep"))
            sweep = 0;
        else if (!strcmp(argv[i], "-v"))
            verbose = 1;
        else {
            fprintf(stderr, "usage: %s [--seed S] [--cases N] [--no-sweep] [--case I] [-v]\n", argv[0]);
            return 2;
        }
    }
    double start = seconds();
    printf("test_kernels: qkernels %s, seed %#" PRIx64 " (rerun with --seed %#" PRIx64 ")\n", qk_version(), seed,
           seed);
    fflush(stdout);

    reseed(seed, 0xFFFFFFFF01ull);
    test_registry();
    if (only < 0) {
        reseed(seed, 0xFFFFFFFF02ull);
        test_errors();
        reseed(seed, 0xFFFFFFFF03ull);
        test_environment();
        reseed(seed, 0xFFFFFFFF04ull);
        test_quantizer_edges();
        reseed(seed, 0xFFFFFFFF05ull);
        test_nonfinite_rows();
        reseed(seed, 0xFFFFFFFF06ull);
        test_overflow_stress();
        reseed(seed, 0xFFFFFFFF08ull);
        test_subnormal_amax();
        reseed(seed, 0xFFFFFFFF09ull);
        test_many_groups();
        test_long_float32_sums();
        reseed(seed, 0xFFFFFFFF07ull);
        test_threads();
    }

    /* The sweep: every M x N x K of the edge lists (odd K: 8-bit only), then random shapes. */
    static const int32_t Ms[] = {1, 2, 3, 7, 8, 9, 17};
    static const int32_t Ns[] = {1, 3, 8, 15, 17, 33};
    static const int32_t Ks[] = {2, 8, 30, 32, 64, 96, 128, 256, 512, 1, 15, 33};
    const int n_sweep = (int)(sizeof Ms / sizeof Ms[0] * sizeof Ns / sizeof Ns[0] * sizeof Ks / sizeof Ks[0]);
    int index = 0;
    long cases = 0;
    if (sweep)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
            for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++)
                for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++, index++) {
                    if (only >= 0 && index != only) continue;
                    reseed(seed, (uint64_t)index);
                    run_case(index, Ms[mi], Ns[ni], Ks[ki], combo_of(index % N_COMBOS));
                    cases++;
                }
    index = n_sweep;
    static const int32_t more_M[] = {1, 2, 3, 7, 8, 9, 17, 1, 4, 16, 33, 64, 5, 6}; /* 5, 6: 8-row tiles' tails */
    static const int32_t more_N[] = {1, 3, 8, 15, 17, 33, 2, 16, 64};
    static const int32_t more_K[] = {2, 8, 30, 32, 64, 96, 128, 256, 512, 1, 15, 33, 24, 160, 384, 1024};
    for (long r = 0; r < random_cases; r++, index++) {
        if (only >= 0 && index != only) continue;
        reseed(seed, (uint64_t)index);
        int32_t M = PICK(more_M), N = PICK(more_N), K = PICK(more_K);
        while ((long)M * N * K > 60000) K /= 2; /* keep the scalar reference quick (and QEMU runs) */
        run_case(index, M, N, K, combo_of((int)(r % N_COMBOS)));
        cases++;
    }

    set_context("summary");
    printf("%ld cases, %ld matmul calls in %.2f s; %ld non-reference runs in the float32 subnormal range "
           "checked for status, guards and packing only\n",
           cases, matmul_runs, seconds() - start, ref_only_skips);
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].available)
            printf("kernel %-28s %6ld runs, worst |Y - oracle| / tolerance %.3g\n", kernels[i].name, kernel_runs[i],
                   kernel_worst[i]);
    printf("%ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
