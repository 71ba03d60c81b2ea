/* What every C test program shares: counted checks with the case's context, command-line set-up,
 * a seeded random generator, guard-banded buffers, status expectations, and the registry as the
 * library reports it.
 *
 * Each program prints "<passed> passed, <failed> failed" as its last line and exits with 1 when
 * anything failed. Options common to all: --seed S (also env QK_TEST_SEED) and -v. */
#ifndef QK_TEST_SUPPORT_H
#define QK_TEST_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#include "qkernels.h"

/* ---- results ---- */

extern int test_verbose;

int check_at(int ok, const char* file, int line, const char* fmt, ...) __attribute__((format(printf, 4, 5)));
#define CHECK(cond, ...) check_at((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)
/* The case being run, printed with every failure. */
void set_context(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
/* Whether failures are still printed (after many, they are only counted): gates detail lines. */
int test_printing(void);

/* Parses the common options and a program's own: option(argc, argv, &i) consumes argv[i] (and
 * the arguments after it, advancing i) and returns 1, or returns 0 for an unknown option. */
typedef int test_option_fn(int argc, char** argv, int* i);
void test_begin(const char* program, int argc, char** argv, const char* usage, test_option_fn* option);
/* Prints the summary line; returns the exit status. */
int test_end(void);
double test_seconds(void);

/* ---- random numbers: splitmix64, reseeded per section or case from the seed and a stream ---- */

void reseed(uint64_t stream);
uint64_t rnd(void);
int rnd_int(int lo, int hi);         /* [lo, hi] */
int rnd_percent(int p);              /* true with probability p% */
double rnd_unit(void);               /* [0, 1) */
float rnd_signed(int lo_exp, int hi_exp); /* +-[0, 2^e) with e in [lo_exp, hi_exp] */
#define PICK(array) ((array)[rnd() % (sizeof(array) / sizeof((array)[0]))])

/* ---- memory ---- */

void* xmalloc(size_t n);             /* exits on failure */
void* xdup(const void* src, size_t n); /* NULL for NULL */

/* A buffer between guard bands, in an exactly sized allocation (valgrind and ASan see overruns). */
enum { GUARD = 64, GUARD_BYTE = 0xA5 };
typedef struct {
    unsigned char* base;
    void* p; /* base + GUARD: aligned as malloc's result, for any dtype */
    size_t n;
} gbuf;
gbuf gbuf_new(size_t n, int fill);
void gbuf_fill(gbuf* b, int fill);
void gbuf_free(gbuf* b);
int gbuf_guards_ok(const gbuf* b);
/* The guards and every byte are as gbuf_new / gbuf_fill left them. */
int gbuf_untouched(const gbuf* b, int fill);
int same_bytes(const gbuf* a, const gbuf* b);
/* Poison for outputs: 0x7E.. (float16 NaN, float32 / bfloat16 8.4e37) or 0xFF.. (NaN). */
int poison_byte(void);

/* ---- statuses ---- */

/* A successful call: qk_last_status() QK_OK, qk_last_error() "". */
void reset_status(void);
/* got == want, qk_last_status() == want, and a message when it is a failure. */
void expect_status_at(qk_status got, qk_status want, const char* file, int line, const char* what);
#define EXPECT_STATUS(got, want, what) expect_status_at((got), (want), __FILE__, __LINE__, (what))

/* ---- the registry ---- */

enum { MAX_KERNELS = 128 };
extern int32_t n_kernels;
extern qk_kernel_info kernels[MAX_KERNELS]; /* dispatch order */
/* Reads every registered kernel (after any registration the program does itself). */
void load_kernels(void);
int find_kernel(const char* name);   /* index in kernels, or -1 */
qk_backend backend_id(const char* name); /* QK_BACKEND_AUTO when none is registered */
const char* backend_name(qk_backend b);
/* A kernel that reads the canonical arrays in a backend with its own layout: stateless calls
 * only, packed weights cannot run it. */
int is_canonical_variant(const qk_kernel_info* k);
/* Saves QKERNELS_BACKEND, or restores what was saved. */
void save_backend_variable(void);
void restore_backend_variable(void);

#endif
