/* test_cuda_kernels: every CUDA kernel (native/cuda, qk_cuda_kernels) run on the host through the
 * warp emulator (native/cuda/emu) against the test oracle of the contract (oracle.c, problems.c):
 * A16 within the contract's tolerance, A8 bit-equal to the reference backend.
 *
 * Shapes cover partial tiles of every kernel (M, N, K not multiples of 16 / 64 / 256 / 32), split-K
 * (the emulator reports 2 multiprocessors, so small grids are split), activations that cp.async
 * cannot read in place (K % 8 != 0, or a pointer 2 bytes off 16-byte alignment), group sizes 32,
 * 64, 128, per-channel and a shorter last group, symmetric and zero-point weights, offsets, bias,
 * float16 and bfloat16. Outputs are poisoned and fenced by guard bytes, the pack too; the kernels
 * get no canonical arrays (NULL), only the pack. Scratch comes poisoned and is poisoned when released.
 *
 * Usage: test_cuda_kernels [--seed S] [-v] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "kernels.h"
#include "problems.h"
#include "support.h"

/* ---- the services backend.c provides in the library, here on host memory ---- */

/* Scratch as backend.cpp gives it, one allocation per run, but poisoned when taken (kernels must not
 * read what they did not write) and when given back (nothing may use it after its release); every
 * run must give back what it took (run_problem checks). */
static int scratch_outstanding;

enum { SCRATCH_HEADER = 256 }; /* its size, ahead of the 256-byte aligned memory given out */

void* qk_cuda_scratch_acquire(void* stream, size_t bytes) {
    (void)stream;
    void* base = NULL;
    if (posix_memalign(&base, 256, SCRATCH_HEADER + bytes) != 0) {
        qk_fail(QK_ERR_OUT_OF_MEMORY, "test scratch of %zu bytes", bytes);
        return NULL;
    }
    memcpy(base, &bytes, sizeof bytes);
    memset((char*)base + SCRATCH_HEADER, 0xFF, bytes); /* NaN in every float type */
    scratch_outstanding++;
    return (char*)base + SCRATCH_HEADER;
}

qk_status qk_cuda_scratch_release(void* stream, void* memory) {
    (void)stream;
    char* base = (char*)memory - SCRATCH_HEADER;
    size_t bytes;
    memcpy(&bytes, base, sizeof bytes);
    memset(memory, 0xFF, bytes);
    free(base);
    scratch_outstanding--;
    return QK_OK;
}

qk_status qk_cuda_check_launch(const char* kernel) {
    (void)kernel;
    return QK_OK;
}

/* ---- cases ---- */

typedef struct {
    int32_t M, N, K, G, bits;
    qk_dtype dtype;
    int symmetric, offsets, bias, misalign;
} shape;

/* p through kernel k (pack, run, check), then freed; s: its symmetry, offsets and placement. */
static void run_problem(const qk_kernel_desc* k, problem* pp, const shape* s) {
    problem p = *pp;
    if (s->misalign) { /* X at 2 bytes past a 16-byte boundary: no cp.async in place */
        unsigned char* moved = xmalloc(x_bytes(&p) + 16);
        memcpy(moved + 2, p.x, x_bytes(&p));
        free(p.x);
        p.x = moved + 2;
    }

    qk_weights w = weights_of(&p);
    size_t bytes = qk_cuda_packed_bytes(&w);
    CHECK(bytes > 0, "the pack has a size");
    gbuf pack = gbuf_new(bytes, 0x5A);
    CHECK(qk_cuda_pack_host(&w, pack.p) == QK_OK, "pack");
    qk_kernel_weights kw = {.format = w, .asymmetric = !s->symmetric, .has_offsets = s->offsets, .packed = pack.p};
    kw.format.data = NULL; /* the kernels read the pack only */
    kw.format.scales = NULL;
    kw.format.zero_points = NULL;
    kw.format.offsets = NULL;

    gbuf y = gbuf_new(y_bytes(&p), poison_byte());
    qk_matmul_args a = args_of(&p, y.p);
    qk_exec exec = {.size = sizeof exec, .threads = 1};
    reset_status();
    qk_status st = k->run(&exec, &kw, &a);
    CHECK(st == QK_OK, "run: %s", qk_status_string(st));
    CHECK(scratch_outstanding == 0, "%d scratch allocations not released", scratch_outstanding);
    CHECK(gbuf_guards_ok(&y), "output guard bytes");
    CHECK(gbuf_guards_ok(&pack), "pack guard bytes");
    /* Products in the float32 subnormal range (problems.h, ref_only): no absolute term in the
     * tolerance covers float32 accumulation there (docs/numerics.md, reading 13). */
    if (st == QK_OK && k->mode == QK_MODE_A16 && !p.ref_only) {
        expectation e = expect(&p);
        compare_output(&p, y.p, e.val, e.err, k->name, NULL);
        expectation_free(&e);
    }
    if (st == QK_OK && k->mode == QK_MODE_A8) { /* the reference backend's bytes, exactly */
        gbuf ref = gbuf_new(y_bytes(&p), poison_byte());
        qk_matmul_args ra = args_of(&p, ref.p);
        ra.kernel = "ref_a8_w4w8_1x1";
        CHECK(qk_matmul(&w, &ra) == QK_OK, "reference run: %s", qk_last_error());
        CHECK(memcmp(ref.p, y.p, y_bytes(&p)) == 0, "bit-equal to the reference");
        if (memcmp(ref.p, y.p, y_bytes(&p)) != 0 && test_printing()) {
            const uint16_t *got = y.p, *want = ref.p;
            for (size_t i = 0, shown = 0; i < (size_t)p.M * p.N && shown < 4; i++)
                if (got[i] != want[i]) printf("  Y[%zu] = 0x%04x, reference 0x%04x\n", i, got[i], want[i]), shown++;
        }
        gbuf_free(&ref);
    }
    gbuf_free(&y);
    gbuf_free(&pack);
    if (s->misalign) {
        free((unsigned char*)p.x - 2);
        p.x = NULL;
    }
    problem_free(&p);
}

/* style: of fill_activations; a NaN in the last row when M > 1 (A8: that row's outputs are NaN,
 * the others unaffected; A16: it propagates). */
static void run_case(const qk_kernel_desc* k, const shape* s, int style) {
    problem p = {.M = s->M, .N = s->N, .K = s->K, .G = s->G, .bits = s->bits, .dtype = s->dtype, .mode = k->mode};
    fill_activations(&p, style);
    if (p.M > 1) store_el(p.x, p.dtype, (size_t)(p.M - 1) * p.K + (size_t)p.K / 2, NAN);
    fill_quantized_weights(&p, s->symmetric);
    if (s->offsets) fill_offsets(&p);
    if (s->bias) fill_bias(&p);
    set_context("%s %s, activations %s", k->name, describe(&p), x_style_names[style]);
    run_problem(k, &p, s);
}

/* A16 rounding that accumulates (as test_matmul's long float32 sums): one per-channel group, a first
 * term of 32768 and 65535 of 0.55 ulp of it in float32, weights 1: each float32 addition of a term
 * to that sum rounds up by 0.45 ulp, so one float32 sum over K misses the float16 tolerance;
 * sums of 128 k added to an outer sum (a16.cu) do not. N = 1024: four column blocks, more than
 * the emulator's two multiprocessors, so there is no split-K (whose slices would shorten the sums). */
static void long_sum_case(const qk_kernel_desc* k) {
    const shape s = {1, 1024, 65536, 65536, 8, QK_DTYPE_F16, 1, 0, 0, 0};
    problem p = {.M = s.M, .N = s.N, .K = s.K, .G = s.G, .bits = s.bits, .dtype = s.dtype, .mode = k->mode};
    p.x = xmalloc(x_bytes(&p));
    for (int32_t i = 0; i < p.K; i++) store_el(p.x, p.dtype, (size_t)i, i ? 0.55f * 0x1p-8f : 32768.0f);
    p.q = xmalloc(q_bytes(&p));
    memset(p.q, 1, q_bytes(&p));
    p.scales = xmalloc(n_groups(&p) * sizeof(float));
    for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = 1.0f;
    set_context("%s %s, long float32 sums", k->name, describe(&p));
    run_problem(k, &p, &s);
}

/* Problems of both modes: A16 against the oracle's tolerance, A8 bit-equal to the reference. */
static void mode_cases(const qk_kernel_desc* k) {
    static const shape shapes[] = {
        /* M    N    K    G    bits  dtype        sym off bias misalign */
        {1, 64, 256, 32, 4, QK_DTYPE_F16, 1, 0, 0, 0},     /* split-K over 8 tiles, one n block */
        {1, 300, 128, 128, 4, QK_DTYPE_BF16, 0, 0, 1, 0},  /* two n blocks, partial */
        {16, 70, 192, 64, 8, QK_DTYPE_F16, 0, 1, 0, 0},
        {17, 33, 96, 96, 8, QK_DTYPE_BF16, 1, 0, 1, 0},    /* per-channel, 3 tiles */
        {5, 40, 100, 100, 4, QK_DTYPE_F16, 0, 0, 0, 0},    /* per-channel, K % 32 != 0: staged X */
        {3, 20, 160, 64, 4, QK_DTYPE_BF16, 0, 1, 1, 1},    /* shorter last group, misaligned X */
        {2, 9, 72, 32, 8, QK_DTYPE_F16, 1, 0, 0, 0},       /* shorter last group, K % 32 = 8 */
        {130, 72, 64, 32, 4, QK_DTYPE_F16, 0, 0, 1, 0},    /* three 64-row blocks, partial */
        {130, 20, 64, 64, 8, QK_DTYPE_BF16, 1, 1, 0, 0},
        {40, 260, 128, 32, 4, QK_DTYPE_F16, 0, 1, 1, 0},   /* 4 groups, two n blocks */
        {33, 17, 512, 128, 8, QK_DTYPE_BF16, 0, 0, 1, 0},  /* 16 tiles: a deep pipeline */
        {70, 300, 64, 64, 4, QK_DTYPE_BF16, 1, 0, 0, 0},   /* 3 x 2 tiles (A8), 2 x 2 (A16 prefill) */
        {3, 300, 256, 64, 4, QK_DTYPE_F16, 0, 0, 1, 0},    /* 2 n blocks and split-K */
        {20, 64, 256, 64, 4, QK_DTYPE_F16, 0, 0, 1, 0},    /* decode: 2 m blocks and split-K (partials' rows) */
        {130, 300, 256, 64, 4, QK_DTYPE_F16, 0, 0, 1, 0},  /* 5 x 2 tiles (A8), 3 x 2 (A16 prefill) */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const shape* s = &shapes[i];
        if (k->max_m > 0 && s->M > 2 * k->max_m) continue; /* decode: M above its range only near it */
        if (s->misalign && k->mode == QK_MODE_A8) continue;   /* the quantizer reads X by element anyway */
        reseed(1000 + i);
        run_case(k, s, (int)(i % X_STYLES));
    }
}

int main(int argc, char** argv) {
    test_begin("test_cuda_kernels", argc, argv, "", NULL);
    for (int32_t i = 0; i < qk_cuda_kernel_count; i++) {
        const qk_kernel_desc* k = &qk_cuda_kernels[i];
        double t0 = test_seconds();
        mode_cases(k);
        if (k->mode == QK_MODE_A16) long_sum_case(k);
        if (test_verbose) printf("%s: %.1f s\n", k->name, test_seconds() - t0);
    }
    return test_end();
}
