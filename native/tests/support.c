/* Shared test machinery; see support.h. */
#include "support.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- results ---- */

int test_verbose;
static long n_passed, n_failed;
static char context[320];
static long failures_printed;
enum { MAX_FAILURE_PRINTS = 80 };

int check_at(int ok, const char* file, int line, const char* fmt, ...) {
    if (ok) {
        n_passed++;
        return 1;
    }
    n_failed++;
    if (failures_printed < MAX_FAILURE_PRINTS) {
        const char* base = strrchr(file, '/');
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL (%s:%d) [%s] ", base ? base + 1 : file, line, context);
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

void set_context(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
    if (test_verbose) {
        printf("%s\n", context);
        fflush(stdout);
    }
}

int test_printing(void) { return failures_printed <= MAX_FAILURE_PRINTS; }

static uint64_t seed = 0x71CE2024ull;

void test_begin(const char* program, int argc, char** argv, const char* usage, test_option_fn* option) {
    if (getenv("QK_TEST_SEED")) seed = strtoull(getenv("QK_TEST_SEED"), NULL, 0);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "-v")) {
            test_verbose = 1;
        } else if (!option || !option(argc, argv, &i)) {
            fprintf(stderr, "usage: %s [--seed S] [-v]%s%s\n", program, usage ? " " : "", usage ? usage : "");
            exit(2);
        }
    }
    printf("%s: qkernels %s, seed %#" PRIx64 " (rerun with --seed %#" PRIx64 ")\n", program, qk_version(), seed, seed);
    fflush(stdout);
}

int test_end(void) {
    set_context("summary");
    printf("%ld passed, %ld failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}

double test_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- random numbers ---- */

static uint64_t rng_state;

uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void reseed(uint64_t stream) {
    rng_state = seed ^ (stream * 0xD1B54A32D192ED03ull);
    (void)rnd();
}

int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }
int rnd_percent(int p) { return (int)(rnd() % 100) < p; }
double rnd_unit(void) { return (double)(rnd() >> 11) * 0x1p-53; }
float rnd_signed(int lo_exp, int hi_exp) { return (float)((2.0 * rnd_unit() - 1.0) * ldexp(1.0, rnd_int(lo_exp, hi_exp))); }

/* ---- memory ---- */

void* xmalloc(size_t n) {
    void* p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

void* xdup(const void* src, size_t n) { return src ? memcpy(xmalloc(n), src, n) : NULL; }

gbuf gbuf_new(size_t n, int fill) {
    gbuf b = {xmalloc(n + 2 * GUARD), NULL, n};
    memset(b.base, GUARD_BYTE, GUARD);
    memset(b.base + GUARD, fill, n);
    memset(b.base + GUARD + n, GUARD_BYTE, GUARD);
    b.p = b.base + GUARD;
    return b;
}

void gbuf_fill(gbuf* b, int fill) { memset(b->p, fill, b->n); }

void gbuf_free(gbuf* b) {
    free(b->base);
    b->base = NULL;
    b->p = NULL;
}

int gbuf_guards_ok(const gbuf* b) {
    for (size_t i = 0; i < GUARD; i++)
        if (b->base[i] != GUARD_BYTE || b->base[GUARD + b->n + i] != GUARD_BYTE) return 0;
    return 1;
}

int gbuf_untouched(const gbuf* b, int fill) {
    if (!gbuf_guards_ok(b)) return 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->base[GUARD + i] != (unsigned char)fill) return 0;
    return 1;
}

int same_bytes(const gbuf* a, const gbuf* b) { return a->n == b->n && memcmp(a->p, b->p, a->n) == 0; }

int poison_byte(void) { return (rnd() & 1) ? 0x7E : 0xFF; }

/* ---- statuses ---- */

void reset_status(void) {
    qk_kernel_info unused = {.size = sizeof unused};
    qk_kernel_get(0, &unused);
}

void expect_status_at(qk_status got, qk_status want, const char* file, int line, const char* what) {
    check_at(got == want, file, line, "%s: status %d (%s), want %d (%s): %s", what, (int)got, qk_status_string(got),
             (int)want, qk_status_string(want), qk_last_error());
    check_at(qk_last_status() == want, file, line, "%s: qk_last_status() %d, want %d", what, (int)qk_last_status(),
             (int)want);
    const char* message = qk_last_error();
    check_at(want == QK_OK ? message[0] == '\0' : message[0] != '\0', file, line, "%s: qk_last_error() is '%s'", what,
             message);
}

/* ---- the registry ---- */

int32_t n_kernels;
qk_kernel_info kernels[MAX_KERNELS];

void load_kernels(void) {
    n_kernels = qk_kernel_count();
    CHECK(n_kernels >= 2 && n_kernels <= MAX_KERNELS, "qk_kernel_count() = %d", n_kernels);
    if (n_kernels > MAX_KERNELS) n_kernels = MAX_KERNELS;
    if (n_kernels < 0) n_kernels = 0;
    for (int i = 0; i < n_kernels; i++) {
        kernels[i] = (qk_kernel_info){.size = sizeof kernels[i]};
        if (!CHECK(qk_kernel_get(i, &kernels[i]) == QK_OK && kernels[i].name, "qk_kernel_get(%d): %s", i,
                   qk_last_error()))
            kernels[i] = (qk_kernel_info){.size = sizeof kernels[i], .name = "?"};
    }
}

int find_kernel(const char* name) {
    for (int i = 0; i < n_kernels; i++)
        if (strcmp(kernels[i].name, name) == 0) return i;
    return -1;
}

qk_backend backend_id(const char* name) {
    qk_backend id = QK_BACKEND_AUTO;
    return qk_backend_find(name, &id) == QK_OK ? id : QK_BACKEND_AUTO;
}

const char* backend_name(qk_backend b) {
    qk_backend_info info = {.size = sizeof info};
    return qk_backend_get(b, &info) == QK_OK ? info.name : "?";
}

int is_canonical_variant(const qk_kernel_info* k) {
    qk_backend_info info = {.size = sizeof info};
    return k->canonical && qk_backend_get(k->backend, &info) == QK_OK && info.own_layout;
}

static char* saved_backend;
static int saved_backend_set;

void save_backend_variable(void) {
    const char* value = getenv("QKERNELS_BACKEND");
    saved_backend_set = value != NULL;
    saved_backend = value ? strdup(value) : NULL;
}

void restore_backend_variable(void) {
    if (saved_backend_set)
        setenv("QKERNELS_BACKEND", saved_backend, 1);
    else
        unsetenv("QKERNELS_BACKEND");
    free(saved_backend);
    saved_backend = NULL;
}
