/* test_matmul: every registered kernel against the oracle of the contract and the reference
 * kernels, on every kind of problem.
 *
 * Every available kernel runs every case (forced through qk_matmul_args.kernel) and must land
 * within the contract's tolerance of the oracle (problems.h, oracle.h) and of the reference kernel
 * of its mode; the reference kernels must give the correctly rounded result. A kernel that does
 * not run a problem (mode, dtype, bits, group size, or format v2 features: offsets, a shorter last
 * group) must refuse it with QK_ERR_UNSUPPORTED, and automatic dispatch must then pick one that
 * runs it. The automatic, packed and quantizedMatMul paths must reproduce the forced kernel's
 * bytes. Outputs are poisoned and fenced by guard bytes; inputs must come back unchanged. Last,
 * four threads run kernels at once and must match the single-threaded bytes.
 *
 * Cases: a sweep of M x N x K edge shapes (partial tiles of every kernel), then random shapes
 * (small, and one in 128 of them a prefill problem with long K);
 * each case draws dtype, mode, bits, symmetry, bias and weight source in turn, and at random its
 * group size (a shorter last group in 30%), offsets (35%) and activation style.
 *
 * Usage: test_matmul [--seed S] [--cases N] [--no-sweep] [--case I] [-v]
 *   --cases N   random-shape cases after the sweep (also env QK_TEST_CASES), default 2304
 *   --no-sweep  skip the sweep (for slow runs such as valgrind)
 *   --case I    run only numbered case I (of the sweep + random cases), to reproduce a failure
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "problems.h"
#include "support.h"

static qk_backend ref_backend;
static long kernel_runs[MAX_KERNELS];
static double kernel_worst[MAX_KERNELS]; /* largest |Y - oracle| / tolerance seen */
static long matmul_runs, ref_only_skips;

static void run_problem(const problem* p) {
    size_t yb = y_bytes(p), groups = n_groups(p);
    expectation e = expect(p);
    qk_weights w = weights_of(p);
    qk_matmul_args a = args_of(p, NULL);
    /* Snapshots: no path may write to its inputs. */
    void *x0 = xdup(p->x, x_bytes(p)), *q0 = xdup(p->q, q_bytes(p));
    void *s0 = xdup(p->scales, groups * sizeof(float)), *z0 = xdup(p->zp, groups);
    void *o0 = xdup(p->offsets, groups * sizeof(float)), *b0 = xdup(p->bias, (size_t)p->N * sizeof(float));

    gbuf outs[MAX_KERNELS];
    memset(outs, 0, sizeof outs);
    int ref = -1;
    for (int i = 0; i < n_kernels && ref < 0; i++)
        if (kernels[i].backend == ref_backend && kernels[i].available && fits(&kernels[i], p)) ref = i;
    CHECK(ref >= 0, "no reference kernel runs this problem");
    double* ref_val = xmalloc((size_t)p->M * p->N * sizeof(double));

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
            if (p->ref_only && k->backend != ref_backend) {
                ref_only_skips++;
                continue;
            }
            char what[160];
            snprintf(what, sizeof what, "%s vs oracle", k->name);
            compare_output(p, outs[i].p, e.val, e.err, what, &kernel_worst[i]);
            if (k->backend == ref_backend) {
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

    /* Kernels that compute the same operations in the same order give the same bytes: x86_amx's A8
     * kernels are x86_avx512's below M = 9 and AMX above (docs/numerics.md reading 20); the
     * canonical-layout A8 variants fold the same exact group sums in float64 in group order; the A16
 * FMA ones sum the same float32 terms per lane (a16_c4x16.c). */
    static const char* const twins[][3] = {
        {"x86_avx512_a8_w4w8_8x32", "x86_amx_a8_w4w8_vnni_8x32", "x86_amx_a8_w4w8_32x32"},
        {"x86_avx2_a8_w4w8_c4x8", "x86_avx512_a8_w4w8_vnni_c2x8", "x86_avx512_a8_w4w8_vnni_g32_c2x8"},
        {"x86_avx2_a16_w4w8_c4x8", "x86_avx512_a16_w4_c4x16"},
    };
    for (size_t set = 0; set < sizeof twins / sizeof twins[0]; set++) {
        int first = -1;
        for (size_t j = 0; j < 3 && twins[set][j]; j++) {
            int i = find_kernel(twins[set][j]);
            if (i < 0 || !outs[i].p) continue;
            if (first < 0)
                first = i;
            else
                CHECK(same_bytes(&outs[i], &outs[first]), "%s differs from %s", kernels[i].name, kernels[first].name);
        }
    }

    /* Automatic dispatch: a kernel that runs the problem (format v2 features included), the one
     * qk_select_kernel names, byte for byte. */
    a.kernel = NULL;
    qk_kernel_info chosen = {.size = sizeof chosen};
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

    /* Packed, per backend whose kernels ran: each of them again on the pack, same bytes. Kernels
     * that read the canonical arrays of a backend with its own layout refuse packed weights. */
    for (qk_backend b = 1; b <= qk_backend_count(); b++) {
        int used = 0;
        for (int i = 0; i < n_kernels; i++) used |= outs[i].p && kernels[i].backend == b;
        if (!used) continue;
        qk_packed_weights* packed = NULL;
        s = pack_copy(p, b, &packed);
        if (!CHECK(s == QK_OK && packed, "qk_pack_weights(%s): status %d: %s", backend_name(b), (int)s, qk_last_error()))
            continue;
        CHECK(qk_packed_backend(packed) == b, "qk_packed_backend is %d, packed for %d", (int)qk_packed_backend(packed),
              (int)b);
        CHECK(qk_packed_size(packed) > 0, "qk_packed_size is 0");
        for (int i = 0; i < n_kernels; i++) {
            if (!outs[i].p || kernels[i].backend != b) continue;
            int fill = poison_byte();
            gbuf y = gbuf_new(yb, fill);
            a.kernel = kernels[i].name;
            a.output = y.p;
            s = qk_matmul_packed(packed, &a);
            matmul_runs++;
            if (is_canonical_variant(&kernels[i])) {
                CHECK(s == QK_ERR_UNSUPPORTED && gbuf_untouched(&y, fill),
                      "qk_matmul_packed(%s), a canonical-layout kernel on packed weights: status %d", kernels[i].name,
                      (int)s);
            } else if (CHECK(s == QK_OK, "qk_matmul_packed(%s): status %d: %s", kernels[i].name, (int)s,
                             qk_last_error())) {
                CHECK(gbuf_guards_ok(&y), "qk_matmul_packed(%s): wrote outside its output", kernels[i].name);
                CHECK(same_bytes(&y, &outs[i]), "qk_matmul_packed(%s) differs from qk_matmul with that kernel",
                      kernels[i].name);
            }
            gbuf_free(&y);
        }
        qk_packed_weights_free(packed);
    }

    /* Packed for the automatic backend, multiplied with automatic kernel choice. Where the
     * stateless choice is a kernel for packed weights of that backend, it is the same kernel. */
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
                if (!p->ref_only || qk_packed_backend(packed) == ref_backend)
                    compare_output(p, y.p, e.val, e.err, "qk_matmul_packed(auto) vs oracle", NULL);
                if (ci >= 0 && qk_packed_backend(packed) == chosen.backend && !is_canonical_variant(&chosen))
                    CHECK(same_bytes(&y, &yauto), "qk_matmul_packed(auto) differs from qk_matmul(auto), same backend");
            }
            gbuf_free(&y);
            qk_packed_weights_free(packed);
        }
    }

    /* quantizedMatMul is qk_matmul with float16, A16, no bias, automatic backend, format v1. */
    if (p->dtype == QK_DTYPE_F16 && p->mode == QK_MODE_A16 && !p->bias && !p->offsets && p->K % p->G == 0) {
        qk_kernel_info unused = {.size = sizeof unused};
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
              memcmp(s0, p->scales, groups * sizeof(float)) == 0 && (!p->zp || memcmp(z0, p->zp, groups) == 0) &&
              (!p->offsets || memcmp(o0, p->offsets, groups * sizeof(float)) == 0) &&
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
    free(o0);
    free(b0);
    expectation_free(&e);
}

/* ------------------------------------------------------------------------------------------ */
/* Cases                                                                                       */

typedef struct {
    qk_dtype dtype;
    qk_mode mode;
    int bits, symmetric, bias, raw;
} combo;

/* The 96 combinations of dtype x mode x bits x symmetry x bias x weight source. */
enum { N_COMBOS = 96 };
static combo combo_of(int i) {
    combo c;
    c.dtype = all_dtypes[i % 3];
    i /= 3;
    c.mode = (qk_mode)(i % 2);
    i /= 2;
    c.bits = i % 2 ? 8 : 4;
    i /= 2;
    c.symmetric = i % 2;
    i /= 2;
    c.bias = i % 2;
    i /= 2;
    c.raw = i % 2;
    return c;
}

/* G: a group size, or 0 for one of pick_group's. */
static void run_case(int index, int32_t M, int32_t N, int32_t K, int32_t G, combo c) {
    problem p = {.M = M, .N = N, .K = K, .bits = K % 2 ? 8 : c.bits, .dtype = c.dtype, .mode = c.mode};
    p.G = G ? G : pick_group(K, rnd_percent(30));
    int style = rnd_int(0, X_STYLES - 1);
    fill_activations(&p, style);
    if (c.raw)
        fill_raw_weights(&p, c.symmetric);
    else
        fill_quantized_weights(&p, c.symmetric);
    if (rnd_percent(35)) fill_offsets(&p);
    if (c.bias) fill_bias(&p);
    set_context("case %d: %s, %s weights, %s activations", index, describe(&p), c.raw ? "raw" : "quantized",
                x_style_names[style]);
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
                for (int symmetric = 0; symmetric < 2; symmetric++) {
                    problem p = {.M = 3, .N = 3, .K = 4096, .G = 4096, .bits = bits, .dtype = all_dtypes[di],
                                 .mode = (qk_mode)mode};
                    set_context("overflow stress: %s, %s", describe(&p), symmetric ? "symmetric" : "zp = qmax");
                    /* +max activations, scaled so the results stay finite in the output dtype
                     * (and, for float16, so the dequantized weights stay normal float16 numbers). */
                    float xmax = p.dtype == QK_DTYPE_F16 ? 60000.0f : p.dtype == QK_DTYPE_BF16 ? bf16_to_f32(0x7F7F) : FLT_MAX;
                    float s = p.dtype == QK_DTYPE_F16 ? (bits == 4 ? 0x1p-16f : 0x1p-20f) : 0x1p-120f;
                    p.x = xmalloc(x_bytes(&p));
                    for (int32_t k = 0; k < p.K; k++) {
                        store_el(p.x, p.dtype, k, xmax);                /* qx = 127 */
                        store_el(p.x, p.dtype, (size_t)p.K + k, -xmax); /* qx = -127 */
                        store_el(p.x, p.dtype, 2 * (size_t)p.K + k, k % 2 ? xmax : -xmax);
                    }
                    p.q = xmalloc(q_bytes(&p));
                    memset(p.q, bits == 4 ? 0x88 : 0x80, q_bytes(&p)); /* every q = -8 / -128 */
                    p.scales = xmalloc(n_groups(&p) * sizeof(float));
                    for (int32_t n = 0; n < p.N; n++) p.scales[n] = s / (float)(1 << n);
                    if (!symmetric) {
                        p.zp = xmalloc(n_groups(&p));
                        memset(p.zp, bits == 4 ? 7 : 127, n_groups(&p));
                    }
                    run_problem(&p);
                    problem_free(&p);
                }
}

/* Float32 partial sums at the edge of their documented range (docs/numerics.md reading 16): rows of
 * |x| just under 2^88 (the largest the x86 A16 kernels sum unscaled) times weights 127 * 2^20 < 2^27,
 * per channel, the first half of K positive and the second negative, so that the result is 0 and
 * each product is below 2^115. K = 32768: 16384 same-sign products, twice the longest float32 run
 * (8192 products, x86_amx A16 with bfloat16 input: just under 2^128); a kernel summing more of them
 * in float32 gives Inf or NaN. */
static void test_large_products(void) {
    static const qk_dtype dts[2] = {QK_DTYPE_F32, QK_DTYPE_BF16};
    for (int di = 0; di < 2; di++)
        for (int mode = 0; mode < 2; mode++) {
            problem p = {.M = 8, .N = 16, .K = 32768, .G = 32768, .bits = 8, .dtype = dts[di], .mode = (qk_mode)mode};
            set_context("large products: %s", describe(&p));
            float x = dts[di] == QK_DTYPE_BF16 ? bf16_to_f32(0x6B7F) : 0x1.fffffep87f; /* the largest below 2^88 */
            p.x = xmalloc(x_bytes(&p));
            for (int32_t m = 0; m < p.M; m++)
                for (int32_t k = 0; k < p.K; k++) store_el(p.x, p.dtype, (size_t)m * p.K + k, k < p.K / 2 ? x : -x);
            p.q = xmalloc(q_bytes(&p));
            memset(p.q, 127, q_bytes(&p));
            p.scales = xmalloc(n_groups(&p) * sizeof(float));
            for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = 0x1p20f;
            run_problem(&p);
            problem_free(&p);
        }
}

/* A16 rounding that accumulates: one per-channel group whose terms after the first are each 0.6 ulp
 * of the running sum, so that every float32 addition rounds the same way: per product (K = 4096),
 * and per 32-k block (K = 16384: the products of a block sum to 0.6 ulp, as AMX-BF16 tile sums of
 * float32 input do). A float32 sum over all of K misses the float32 tolerance; kernels must fold
 * partial sums into a wider one (the contract allows float32 accumulation, the tolerance does not
 * allow it unbounded). */
static void test_long_float32_sums(void) {
    static const struct { int32_t K; float term; } sums[] = {{4096, 0.6f * 0x1p-23f}, {16384, 0.6f * 0x1p-28f}};
    for (size_t si = 0; si < sizeof sums / sizeof sums[0]; si++) {
        problem p = {.M = 1, .N = 3, .K = sums[si].K, .G = sums[si].K, .bits = 8, .dtype = QK_DTYPE_F32, .mode = QK_MODE_A16};
        set_context("long float32 sums: %s, same-sign terms of %g", describe(&p), (double)sums[si].term);
        p.x = xmalloc(x_bytes(&p));
        store_el(p.x, p.dtype, 0, 1.0f);
        for (int32_t k = 1; k < p.K; k++) store_el(p.x, p.dtype, k, sums[si].term);
        p.q = xmalloc(q_bytes(&p));
        memset(p.q, 1, q_bytes(&p));
        p.scales = xmalloc(n_groups(&p) * sizeof(float));
        for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = 1.0f;
        run_problem(&p);
        problem_free(&p);
    }
}

/* Large K with many groups whose terms all have one sign, so that summation error grows with the
 * number of terms and nothing cancels: K = 4096 and 16384 at G = 32 (128 and 512 groups), and a
 * shorter last group with offsets; 8 and 4 bits (q > 0 > zp). (A plain float32 running sum across
 * groups uses about half the A8 tolerance at 128 groups and can exceed it, rarely, from about 500
 * groups on.) */
static void test_many_groups(void) {
    static const int32_t Ks[3] = {4096, 16384, 4096 + 16};
    for (int ki = 0; ki < 3; ki++)
        for (int bits = 8; bits >= 4; bits -= 4)
            for (int di = 0; di < 3; di++)
                for (int mode = 0; mode < 2; mode++) {
                    qk_dtype dt = all_dtypes[di];
                    problem p = {.M = 2, .N = 3, .K = Ks[ki], .G = 32, .bits = bits, .dtype = dt,
                                 .mode = (qk_mode)mode};
                    p.x = xmalloc(x_bytes(&p));
                    for (size_t i = 0; i < (size_t)p.M * p.K; i++)
                        store_el(p.x, dt, i, (float)(0.25 + rnd_unit()) * (dt == QK_DTYPE_F16 ? 0.5f : 1.0f));
                    p.q = xmalloc(q_bytes(&p));
                    for (size_t i = 0; i < q_bytes(&p); i++) /* 4 bits: two nibbles in [1, 7], low first */
                        p.q[i] = (int8_t)(bits == 8 ? rnd_int(1, 127) : rnd_int(1, 7) | rnd_int(1, 7) << 4);
                    p.scales = xmalloc(n_groups(&p) * sizeof(float));
                    for (size_t g = 0; g < n_groups(&p); g++)
                        p.scales[g] = (float)((1.0 + rnd_unit()) * (dt == QK_DTYPE_F16 ? 0x1p-20 : 0x1p-10));
                    p.zp = xmalloc(n_groups(&p));
                    for (size_t g = 0; g < n_groups(&p); g++) p.zp[g] = (int8_t)rnd_int(bits == 8 ? -128 : -8, 0);
                    if (p.K % p.G) { /* positive offsets keep every term of one sign */
                        p.offsets = xmalloc(n_groups(&p) * sizeof(float));
                        for (size_t g = 0; g < n_groups(&p); g++) p.offsets[g] = p.scales[g] * (float)rnd_int(1, 64);
                    }
                    set_context("many groups, one sign: %s (%zu groups)", describe(&p), n_groups(&p) / (size_t)p.N);
                    run_problem(&p);
                    problem_free(&p);
                }
}

/* Format v2 at its edges: a last group of one element (G = K - 1, and K = G + 1 at 8 bits), of 3,
 * 5 and 6 elements with K off the ARM kernels' 16-k steps, one group longer than K, and offsets
 * with zero scales (only the offsets term is left). */
static void test_format_v2_edges(void) {
    static const struct {
        int32_t K, G;
        int bits, zero_scales;
    } shapes[] = {{64, 63, 4, 0}, {33, 32, 8, 0}, {48, 50, 4, 0}, {40, 16, 8, 1}, {96, 96, 4, 1},
                  {37, 16, 8, 0}, {70, 32, 4, 0}, {19, 8, 8, 0}, {22, 40, 4, 0}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int di = 0; di < 3; di++)
            for (int mode = 0; mode < 2; mode++) {
                problem p = {.M = 5, .N = 9, .K = shapes[si].K, .G = shapes[si].G, .bits = shapes[si].bits,
                             .dtype = all_dtypes[di], .mode = (qk_mode)mode};
                fill_activations(&p, X_UNIFORM);
                fill_raw_weights(&p, mode);
                fill_offsets(&p);
                if (shapes[si].zero_scales)
                    for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = 0.0f;
                fill_bias(&p);
                set_context("format v2 edges: %s%s", describe(&p), shapes[si].zero_scales ? ", zero scales" : "");
                run_problem(&p);
                problem_free(&p);
            }
}

/* Shorter last groups of 1..7 elements (K not a multiple of 8, so every vector kernel takes its
 * tail path), and one group longer than K, at 4 and 8 bits, symmetric and asymmetric, with offsets,
 * at M on both sides of the kernels' tile sizes and M ranges (4, 6, 16, 32, 48). */
static void test_ragged_tails(void) {
    static const int32_t Ms[] = {1, 4, 5, 6, 7, 12, 13, 16, 17, 32, 33, 48, 49};
    for (int tail = 0; tail <= 7; tail++)
        for (int bits = 4; bits <= 8; bits += 4) {
            /* tail 0: G = 64 > K = 44; else G = 16, or 15 for odd tails at 4 bits (K stays even) */
            int32_t G = tail == 0 ? 64 : bits == 4 && tail % 2 ? 15 : 16;
            int32_t K = tail == 0 ? 44 : 3 * G + tail;
            if (bits == 4 && K % 2) continue;
            for (int mode = 0; mode < 2; mode++)
                for (int symmetric = 0; symmetric < 2; symmetric++)
                    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
                        problem p = {.M = Ms[mi], .N = 17 + 6 * symmetric, .K = K, .G = G, .bits = bits,
                                     .dtype = all_dtypes[mi % 3], .mode = (qk_mode)mode};
                        fill_activations(&p, X_UNIFORM);
                        fill_raw_weights(&p, symmetric);
                        fill_offsets(&p);
                        set_context("ragged tails: %s", describe(&p));
                        run_problem(&p);
                        problem_free(&p);
                    }
        }
}

/* Prefill shapes: M across the AMX kernel's 32-row blocks and 256-row chunks (and the x86
 * kernels' tiles), N of an odd number of 16-column panels, groups spanning several 64-k tile steps
 * or ending inside one, 4 and 8 bits, asymmetric with offsets, symmetric without. */
static void test_prefill_shapes(void) {
    static const int32_t Ms[] = {31, 32, 33, 127, 128, 129, 161, 260};
    static const struct { int32_t K, G; } shapes[] = {{256, 128}, {200, 64}, {96, 96}, {160, 40}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int mode = 0; mode < 2; mode++)
                for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
                    int symmetric = (int)(mi % 2);
                    problem p = {.M = Ms[mi], .N = 40 + 9 * symmetric, .K = shapes[si].K, .G = shapes[si].G,
                                 .bits = bits, .dtype = all_dtypes[mi % 3], .mode = (qk_mode)mode};
                    fill_activations(&p, X_UNIFORM);
                    fill_raw_weights(&p, symmetric);
                    if (!symmetric) fill_offsets(&p);
                    set_context("prefill shapes: %s", describe(&p));
                    run_problem(&p);
                    problem_free(&p);
                }
}

/* Groups of whole 128-k chunks, the unit of x86_avx512_a16_w4_bf16_c2x4 (canonical layout): one
 * chunk, two, a last group cut short (K % 128 = 44: a last chunk read past the row's end), one group
 * longer than K, 20 chunks (float32 runs of 16 chunks end inside a group and inside the row); float16,
 * bfloat16 and float32, every activation style, symmetric and asymmetric weights, offsets (refused)
 * in some; M across 2-row tiles and past its max_m, N across 4-row tasks. */
static void test_whole_chunk_groups(void) {
    static const struct { int32_t K, G; } shapes[] = {{128, 128}, {256, 128}, {384, 256}, {300, 128},
                                                      {200, 256}, {2560, 128}, {2560, 2560}};
    static const int32_t Ms[] = {1, 2, 3, 5, 33}, Ns[] = {1, 3, 4, 5, 9, 17};
    int index = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++, index++) {
            int symmetric = index % 2;
            problem p = {.M = Ms[mi], .N = Ns[index % 6], .K = shapes[si].K, .G = shapes[si].G,
                         .bits = index % 4 == 3 ? 8 : 4,
                         .dtype = index % 5 == 4 ? QK_DTYPE_F32 : index % 5 == 1 ? QK_DTYPE_BF16 : QK_DTYPE_F16,
                         .mode = index % 4 == 2 ? QK_MODE_A8 : QK_MODE_A16};
            int style = index % X_STYLES;
            fill_activations(&p, style);
            fill_quantized_weights(&p, symmetric);
            if (index % 7 == 6) fill_offsets(&p);
            set_context("whole-chunk groups: %s, %s activations", describe(&p), x_style_names[style]);
            run_problem(&p);
            problem_free(&p);
        }
    /* Random shapes of the same kind: K of 1 to 24 chunks (a last one cut short in a third), G of 1
     * to 4 chunks or longer than K; 4-bit A16 in half of them, float16, bfloat16 and float32 in turns. */
    for (int r = 0; r < 96; r++) {
        int32_t K = 128 * rnd_int(1, 24) - (rnd_percent(33) ? 2 * rnd_int(1, 63) : 0);
        int32_t G = rnd_percent(25) ? 128 * (K / 128 + rnd_int(1, 2)) : 128 * rnd_int(1, 4);
        int half = r % 2;
        problem p = {.M = rnd_int(1, 33), .N = rnd_int(1, 20), .K = K, .G = G, .bits = half || rnd_percent(50) ? 4 : 8,
                     .dtype = half ? all_dtypes[r / 2 % 3] : all_dtypes[rnd_int(0, 2)],
                     .mode = half ? QK_MODE_A16 : (qk_mode)rnd_int(0, 1)};
        int style = rnd_int(0, X_STYLES - 1);
        fill_activations(&p, style);
        if (rnd_percent(50))
            fill_quantized_weights(&p, rnd_percent(50));
        else
            fill_raw_weights(&p, rnd_percent(50));
        if (rnd_percent(15)) fill_offsets(&p);
        set_context("whole-chunk groups, random: %s, %s activations", describe(&p), x_style_names[style]);
        run_problem(&p);
        problem_free(&p);
    }
}

/* Groups of 32 and 64 k, several to a 64-byte chunk of a canonical row (x86_avx512's g32_c2x4 takes
 * a chunk's scales and zero points lane by lane, its g32_c2x8 reduces a chunk's lanes per group):
 * K of 1 to 24 chunks, ragged against G and against the chunk (a last chunk holding fewer groups), K
 * below G; zero points over their whole range, which g32_c2x4 subtracts as integers; runs of 16
 * chunks crossed; A16 (float32, float16 and bfloat16 in turns) and A8 in turns. */
static void test_small_groups(void) {
    for (int r = 0; r < 160; r++) {
        int32_t G = r % 2 ? 32 : 64, K = rnd_percent(15) ? 2 * rnd_int(1, G / 2 - 1) : 2 * rnd_int(1, 24 * 64);
        int a16 = r % 4 < 2;
        problem p = {.M = rnd_int(1, 64), .N = rnd_int(1, 20), .K = K, .G = G, .bits = a16 || rnd_percent(50) ? 4 : 8,
                     .dtype = all_dtypes[a16 ? r % 3 : rnd_int(0, 2)], .mode = a16 ? QK_MODE_A16 : QK_MODE_A8};
        int style = rnd_int(0, X_STYLES - 1);
        fill_activations(&p, style);
        if (rnd_percent(50))
            fill_quantized_weights(&p, r % 5 == 0);
        else
            fill_raw_weights(&p, r % 5 == 0);
        if (rnd_percent(10)) fill_offsets(&p);
        set_context("small groups: %s, %s activations", describe(&p), x_style_names[style]);
        run_problem(&p);
        problem_free(&p);
    }
}

/* The order of the A8 canonical variants' float64 folds (twins above): groups whose terms cancel,
 * scale * acc of +2^40, 2^-20, -2^40, 2^-20 times the same acc (every group the same activations,
 * weights and zero point), so that a sum in another group order, within a chunk of several groups
 * (x86_avx512's g32_c2x8: P = 4 at 4-bit G = 32, P = 2 at 4-bit G = 64 and 8-bit G = 32) or across
 * chunks, loses a different 2^-20 term: the bytes differ, though every result is within the
 * tolerance (which the cancelled terms make wide). With offsets, 2^-20 * xs in the third group of
 * four, right after the -2^40 term: kept only when a group's offset term follows its scale term. */
static void test_group_fold_order(void) {
    static const struct { int32_t G; int bits; } formats[] = {{32, 4}, {64, 4}, {32, 8}, {64, 8}, {128, 4}, {128, 8}};
    for (size_t fi = 0; fi < sizeof formats / sizeof formats[0]; fi++)
        for (int variant = 0; variant < 3; variant++) { /* symmetric, zero points, zero points and offsets */
            int symmetric = variant == 0;
            int32_t G = formats[fi].G;
            problem p = {.M = 3, .N = 9, .K = 3 * 4 * G, .G = G, .bits = formats[fi].bits, .dtype = QK_DTYPE_F32,
                         .mode = QK_MODE_A8};
            int32_t NG = p.K / G;
            p.x = xmalloc(x_bytes(&p));
            for (int32_t m = 0; m < p.M; m++)
                for (int32_t k = 0; k < G; k++) {
                    float v = (float)(rnd_unit() * 2.0 - 1.0);
                    for (int32_t g = 0; g < NG; g++) store_el(p.x, p.dtype, (size_t)m * p.K + (size_t)g * G + k, v);
                }
            p.q = xmalloc(q_bytes(&p));
            memset(p.q, 0, q_bytes(&p));
            int qmax = p.bits == 4 ? 7 : 127;
            for (int32_t n = 0; n < p.N; n++)
                for (int32_t k = 0; k < G; k++) {
                    int q = rnd_int(-qmax - 1, qmax);
                    for (int32_t g = 0; g < NG; g++) {
                        size_t at = (size_t)g * G + k;
                        if (p.bits == 8)
                            p.q[(size_t)n * p.K + at] = (int8_t)q;
                        else
                            p.q[(size_t)n * p.K / 2 + at / 2] |= (int8_t)((q & 15) << (4 * (at % 2)));
                    }
                }
            p.scales = xmalloc(n_groups(&p) * sizeof(float));
            static const float pattern[4] = {0x1p40f, 0x1p-20f, -0x1p40f, 0x1p-20f};
            for (int32_t n = 0; n < p.N; n++)
                for (int32_t g = 0; g < NG; g++) p.scales[(size_t)n * NG + g] = pattern[g % 4];
            if (!symmetric) {
                p.zp = xmalloc(n_groups(&p));
                for (int32_t n = 0; n < p.N; n++) {
                    int8_t z = (int8_t)rnd_int(-qmax - 1, qmax);
                    for (int32_t g = 0; g < NG; g++) p.zp[(size_t)n * NG + g] = z;
                }
            }
            if (variant == 2) {
                p.offsets = xmalloc(n_groups(&p) * sizeof(float));
                for (int32_t n = 0; n < p.N; n++)
                    for (int32_t g = 0; g < NG; g++) p.offsets[(size_t)n * NG + g] = g % 4 == 2 ? 0x1p-20f : 0.0f;
            }
            set_context("group fold order: %s", describe(&p));
            run_problem(&p);
            problem_free(&p);
        }
}

/* x86_avx512_a16_w4w8_8x32's float32 runs (docs/numerics.md reading 19): chains over chunks of
 * 64 k, 16 chunks to a run, runs added in float64. Per channel, q = 1, scale 1, float32 x of 1 at k = 0
 * and 2^-25 (a quarter ulp of 1) at the first k of each later chunk of 64, 40 chunks: the first run
 * stays 1 (each 2^-25 rounded away), the second holds 16 * 2^-25 and the third 8 * 2^-25, so every
 * output is 1 + 24 * 2^-25 exactly (the exact result, 1 + 39 * 2^-25, rounds to 1 + 40 * 2^-25;
 * runs of another length give another value; all of them are within the tolerance). M = 9 and
 * N = 33: a tile of 8 rows and one of 1, a pair of panels and a single one. */
static void test_a16_8x32_runs(void) {
    int ki = find_kernel("x86_avx512_a16_w4w8_8x32");
    if (ki < 0 || !kernels[ki].available) return;
    problem p = {.M = 9, .N = 33, .K = 40 * 64, .G = 40 * 64, .bits = 8, .dtype = QK_DTYPE_F32, .mode = QK_MODE_A16};
    set_context("8x32 runs: %s", describe(&p));
    p.x = xmalloc(x_bytes(&p));
    for (int32_t m = 0; m < p.M; m++)
        for (int32_t k = 0; k < p.K; k++)
            store_el(p.x, p.dtype, (size_t)m * p.K + k, k == 0 ? 1.0f : k % 64 == 0 ? 0x1p-25f : 0.0f);
    p.q = xmalloc(q_bytes(&p));
    memset(p.q, 1, q_bytes(&p));
    p.scales = xmalloc(n_groups(&p) * sizeof(float));
    for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = 1.0f;
    qk_weights w = weights_of(&p);
    float* y = xmalloc(y_bytes(&p));
    qk_matmul_args a = args_of(&p, y);
    a.kernel = kernels[ki].name;
    qk_status s = qk_matmul(&w, &a);
    if (CHECK(s == QK_OK, "x86_avx512_a16_w4w8_8x32: status %d: %s", (int)s, qk_last_error())) {
        long wrong = 0;
        for (size_t i = 0; i < (size_t)p.M * p.N; i++) wrong += y[i] != 1.0f + 24 * 0x1p-25f;
        CHECK(wrong == 0, "x86_avx512_a16_w4w8_8x32: %ld of %d outputs are not 1 + 24 * 2^-25 (first %a)", wrong,
              p.M * p.N, (double)y[0]);
    }
    free(y);
    run_problem(&p);
    problem_free(&p);
}

/* Long K at prefill M: the AMX kernels cut K into slices whose activations fit their L2 budget
 * (1 MiB per chunk of 256 rows: 64 tile steps of A8, 32 of A16 with float16's two parts). At
 * M = 257 and K = 4608 a group of the whole K goes on from one slice to the next (A8: its int32
 * tiles kept; A16: its float32 sums folded at the slice's end), and g128's float32 runs of groups
 * (A8) cross the slice boundaries; the last chunk has one row. G = 1184 (37 steps of 32 k) and 2080
 * (65) are groups longer than a slice whose steps are not whole tile sums of A16 (4 steps): a slice
 * must still end where a group's tile sum does. */
static void test_long_k_slices(void) {
    static const struct {
        int32_t G;
        int bits, symmetric;
        qk_dtype dtype;
    } formats[] = {{4608, 8, 1, QK_DTYPE_F16}, {4608, 4, 0, QK_DTYPE_BF16}, {128, 4, 0, QK_DTYPE_F32},
                   {128, 8, 1, QK_DTYPE_BF16}, {1184, 4, 1, QK_DTYPE_F16}, {2080, 8, 1, QK_DTYPE_BF16}};
    for (size_t fi = 0; fi < sizeof formats / sizeof formats[0]; fi++)
        for (int mode = 0; mode < 2; mode++) {
            problem p = {.M = 257, .N = 40, .K = 4608, .G = formats[fi].G, .bits = formats[fi].bits,
                         .dtype = formats[fi].dtype, .mode = (qk_mode)mode};
            fill_activations(&p, X_UNIFORM);
            fill_raw_weights(&p, formats[fi].symmetric);
            if (!formats[fi].symmetric) fill_offsets(&p);
            set_context("long K slices: %s", describe(&p));
            run_problem(&p);
            problem_free(&p);
        }
}

/* Padding past a group's end (K not a multiple of a block) holds q = zp, weight `offset`: 0.
 * Here q - zp = 1 with scales near 2^126, so that any other padding value (q = 0, or the lowest
 * code) formed a weight past float32's range: 0 * Inf, NaN outputs where the result is finite. */
static void test_padding_weights(void) {
    static const struct { int bits; int32_t K; int8_t zp; } cases[] = {
        {4, 2, -8}, {4, 22, -8}, {4, 22, 0}, {8, 2, -128}, {8, 9, -128}, {8, 9, 0}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int offsets = 0; offsets < 2; offsets++) {
            problem p = {.M = 2, .N = 3, .K = cases[ci].K, .G = cases[ci].K, .bits = cases[ci].bits,
                         .dtype = QK_DTYPE_F32, .mode = QK_MODE_A16};
            set_context("padding weights: %s, zp %d", describe(&p), cases[ci].zp);
            p.x = xmalloc(x_bytes(&p));
            for (size_t i = 0; i < (size_t)p.M * p.K; i++) store_el(p.x, p.dtype, i, 0x1p-10f);
            int8_t q = (int8_t)(cases[ci].zp + 1);
            p.q = xmalloc(q_bytes(&p));
            memset(p.q, p.bits == 4 ? (q & 0xF) * 0x11 : (uint8_t)q, q_bytes(&p));
            p.scales = xmalloc(n_groups(&p) * sizeof(float));
            for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = 0x1.08p126f;
            if (cases[ci].zp) { /* zp 0: symmetric weights, no zero points */
                p.zp = xmalloc(n_groups(&p));
                memset(p.zp, cases[ci].zp, n_groups(&p));
            }
            if (offsets) {
                p.offsets = xmalloc(n_groups(&p) * sizeof(float));
                memset(p.offsets, 0, n_groups(&p) * sizeof(float));
            }
            run_problem(&p);
            problem_free(&p);
        }
}

/* A group size past K, and past the longest group of the A8 kernels' int32 sums (66,311): one group
 * of K elements, which those kernels run (they refused it, or automatic dispatch skipped them). */
static void test_group_beyond_k(void) {
    for (int di = 0; di < 3; di++)
        for (int mode = 0; mode < 2; mode++)
            for (int bits = 4; bits <= 8; bits += 4) {
                problem p = {.M = 7, .N = 33, .K = 96, .G = 66336, .bits = bits, .dtype = all_dtypes[di],
                             .mode = (qk_mode)mode};
                fill_activations(&p, X_UNIFORM);
                fill_raw_weights(&p, bits == 8);
                set_context("group beyond K: %s", describe(&p));
                run_problem(&p);
                problem_free(&p);
            }
}

/* Rows of NaN / +Inf / -Inf: A8 gives NaN rows and leaves the other rows exactly as they are
 * with those rows zeroed; A16 follows IEEE arithmetic (the oracle computes what it gives). Two
 * shapes: groups of 32, and of 128 (what kernels with a group multiple of 128 run). */
static void nonfinite_rows(int32_t K, int32_t G) {
    static const int bad_rows[3] = {1, 3, 4};
    const float bad_values[3] = {NAN, INFINITY, -INFINITY};
    for (int di = 0; di < 3; di++)
        for (int mode = 0; mode < 2; mode++) {
            qk_dtype dt = all_dtypes[di];
            problem p = {.M = 6, .N = 9, .K = K, .G = G, .bits = 4, .dtype = dt, .mode = (qk_mode)mode};
            set_context("non-finite rows: %s", describe(&p));
            fill_activations(&p, X_UNIFORM);
            fill_raw_weights(&p, 0);
            for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = fabsf(p.scales[g]) + 0x1p-10f;
            void* clean = xdup(p.x, x_bytes(&p));
            for (int r = 0; r < 3; r++) {
                store_el(p.x, dt, (size_t)bad_rows[r] * p.K + rnd_int(0, p.K - 1), bad_values[r]);
                for (int32_t k = 0; k < p.K; k++) store_el(clean, dt, (size_t)bad_rows[r] * p.K + k, 0.0f);
            }
            run_problem(&p);

            qk_weights w = weights_of(&p);
            for (int i = 0; i < n_kernels; i++) {
                if (!kernels[i].available || !fits(&kernels[i], &p)) continue;
                gbuf y1 = gbuf_new(y_bytes(&p), poison_byte()), y2 = gbuf_new(y_bytes(&p), poison_byte());
                qk_matmul_args a = args_of(&p, y1.p);
                a.kernel = kernels[i].name;
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

static void test_nonfinite_rows(void) {
    nonfinite_rows(64, 32);
    nonfinite_rows(256, 128);
}

/* A8 rows whose amax is subnormal (float32, bfloat16): inv = 127 / amax is +Inf, so non-zero
 * values quantize to +-127 and zeros (0 * Inf = NaN) to 0 (reading 4). Scales are large enough
 * that every result is a normal float32 number, so every kernel is held to the tolerance. */
static void test_subnormal_amax(void) {
    for (int di = 0; di < 2; di++)
        for (int bits = 4; bits <= 8; bits += 4) {
            qk_dtype dt = di ? QK_DTYPE_BF16 : QK_DTYPE_F32;
            problem p = {.M = 5, .N = 7, .K = 64, .G = 16, .bits = bits, .dtype = dt, .mode = QK_MODE_A8};
            set_context("subnormal amax: %s", describe(&p));
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

/* A16 rows whose every element is tiny (float32 and bfloat16: normal numbers from 2^-90 down, and
 * subnormals), times scales of 2^100 to 2^110, so that every exact term x * w is a normal float32
 * number and every kernel is held to the tolerance (reading 13 exempts only subnormal terms). What
 * kernels form from such x (x86_amx's bfloat16 parts of it, x * (q - zp) in x86_avx512) can be
 * subnormal, which bfloat16 products read as zero and float32 ones round coarsely: unless the row
 * is scaled up first, the result misses the tolerance (docs/numerics.md reading 16). */
static void test_tiny_rows(void) {
    for (int di = 0; di < 2; di++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int symmetric = 0; symmetric < 2; symmetric++) {
                qk_dtype dt = di ? QK_DTYPE_BF16 : QK_DTYPE_F32;
                problem p = {.M = 9, .N = 33, .K = 192, .G = symmetric ? 64 : 192, .bits = bits, .dtype = dt,
                             .mode = QK_MODE_A16};
                p.x = xmalloc(x_bytes(&p));
                for (int32_t m = 0; m < p.M; m++) {
                    int e = rnd_int(-140, -90);
                    for (int32_t k = 0; k < p.K; k++) store_el(p.x, dt, (size_t)m * p.K + k, rnd_signed(e - 9, e));
                }
                fill_raw_weights(&p, symmetric);
                for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = (float)ldexp(1.0 + rnd_unit(), rnd_int(100, 110));
                set_context("tiny rows: %s", describe(&p));
                run_problem(&p);
                problem_free(&p);
            }
}

/* bfloat16 and float32 A16 rows where vdpbf16ps's flushing could show (x86_avx512_a16_w4_bf16_2x32 and
 * _c2x4 take bfloat16 x as one part, _c2x4 float32 x as three: docs/numerics.md readings 24, 26). It
 * reads subnormal bfloat16 inputs as zero and flushes subnormal results, partial sums included. Rows:
 * 0 and 8 normal; 1 bfloat16 subnormals (float32: elements of 2^-133 to 2^-104, whose smaller parts
 * or whole value are subnormal) beside two elements of 1 and 2 (different chunks); 2 all tiny (below 2^-32); 3 all subnormal
 * (below 2^-126); 4 pairs of products of 2^-126 to 2^-125 that cancel to a subnormal sum, both
 * within one vdpbf16ps of the packed kernel (k 8r, 8r + 2) and of the canonical one (8r + 1, 8r + 5),
 * beside elements of 1; 5 the same pairs alone (the row loader scales the row up: nothing is
 * flushed; unscaled, it misses the tolerance); 6 an infinity, 7 a NaN (float32: a signalling one).
 * Weights: q - zp in [1, 3], constant over each 8-k block so that the pairs cancel for every n; scales of 2^100 to 2^110, so
 * that every exact term is a normal float32 number (reading 13) and every kernel is held to the
 * tolerance. Rows 1 and 4 meet it because their large elements' products bound what is flushed
 * (reading 24); with those weights zero they would not (reading 16's known deviation). */
static void test_bf16_flushes(void) {
    static const int32_t Ks[] = {384, 300}; /* 300: a last group and chunk cut short */
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
        for (int variant = 0; variant < 4; variant++) {
            int symmetric = variant % 2, f32 = variant / 2;
            problem p = {.M = 9, .N = 9, .K = Ks[ki], .G = 128, .bits = 4, .dtype = f32 ? QK_DTYPE_F32 : QK_DTYPE_BF16,
                         .mode = QK_MODE_A16};
            int32_t NG = (p.K + p.G - 1) / p.G;
            p.scales = xmalloc(n_groups(&p) * sizeof(float));
            for (size_t g = 0; g < n_groups(&p); g++) p.scales[g] = (float)ldexp(1.0 + rnd_unit(), rnd_int(100, 110));
            if (!symmetric) {
                p.zp = xmalloc(n_groups(&p));
                for (size_t g = 0; g < n_groups(&p); g++) p.zp[g] = (int8_t)rnd_int(-8, 4);
            }
            p.q = xmalloc(q_bytes(&p));
            for (int32_t n = 0; n < p.N; n++)
                for (int32_t k = 0; k < p.K; k += 8) {
                    int q = (p.zp ? p.zp[n * NG + k / p.G] : 0) + rnd_int(1, 3);
                    for (int32_t b = k / 2; b < (k + 8) / 2 && b < p.K / 2; b++)
                        p.q[(size_t)n * p.K / 2 + b] = (int8_t)(uint8_t)((q & 15) * 17); /* both nibbles q */
                }
            p.x = xmalloc(x_bytes(&p));
            for (int32_t m = 0; m < p.M; m++)
                for (int32_t k = 0; k < p.K; k++) {
                    float v = rnd_signed(-2, 0);
                    if (m == 1) v = k == 3 ? 1.0f : k == 131 ? -2.0f : rnd_signed(-133, f32 ? -104 : -127);
                    if (m == 2) v = rnd_signed(-60, -40);
                    if (m == 3) v = rnd_signed(-133, -127);
                    if (m == 4 || m == 5) v = m == 4 && (k == 3 || k == 259) ? 1.0f : 0.0f; /* pairs below */
                    store_el(p.x, p.dtype, (size_t)m * p.K + k, v);
                }
            /* The pairs: 2^-126 (1 + i 2^-7), i in [64, 127], and -2^-126 (1 + j 2^-7), i - j in [24, 40]
             * (both bfloat16), whose products with one w sum to (i - j) 2^-133 w: subnormal (w <= 3),
             * and of one sign, about 5 times 2^-7 of the row's sum of |x w|: flushed, they miss the
             * tolerance. */
            for (int32_t m = 4; m <= 5; m++)
                for (int32_t k = 0; k + 5 < p.K; k += 8)
                    for (int pair = 0; pair < 2; pair++) {
                        int i = rnd_int(64, 127), j = i - rnd_int(24, 40);
                        size_t at = (size_t)m * p.K + k + pair; /* partner at k + 2 (packed), k + 5 (canonical) */
                        store_el(p.x, p.dtype, at, (float)ldexp(1.0 + i / 128.0, -126));
                        store_el(p.x, p.dtype, at + (pair ? 4 : 2), -(float)ldexp(1.0 + j / 128.0, -126));
                    }
            store_el(p.x, p.dtype, 6 * (size_t)p.K + 77, INFINITY);
            /* float32: a signalling NaN whose payload lies in the low 16 bits, whose top half alone
             * would read as an infinity */
            uint32_t nan_bits = f32 ? 0x7F800001u : 0x7FC00000u;
            float nan;
            memcpy(&nan, &nan_bits, sizeof nan);
            store_el(p.x, p.dtype, 7 * (size_t)p.K + 200, nan);
            set_context("bfloat16 part flushes: %s", describe(&p));
            run_problem(&p);
            problem_free(&p);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* Threads: the same bytes as from one thread, and each thread's own last status               */

enum { N_THREADS = 4, THREAD_PROBLEMS = 3 };

typedef struct {
    const problem* problems;
    gbuf (*expected)[MAX_KERNELS];
    pthread_barrier_t* barrier;
    int id;
    long passed, failed;
} thread_job;

static void* thread_main(void* arg) {
    thread_job* job = arg;
    qk_kernel_info unused = {.size = sizeof unused};
    /* Even threads fail, odd threads succeed; after the barrier each still sees its own status. */
    qk_kernel_get(job->id % 2 ? 0 : -1, &unused);
    pthread_barrier_wait(job->barrier);
    if ((qk_last_status() == QK_OK) == (job->id % 2 == 1))
        job->passed++;
    else
        job->failed++;
    for (int rep = 0; rep < 3; rep++)
        for (int pi = 0; pi < THREAD_PROBLEMS; pi++) {
            const problem* p = &job->problems[pi];
            qk_weights w = weights_of(p);
            for (int i = 0; i < n_kernels; i++) {
                if (!job->expected[pi][i].p) continue;
                gbuf y = gbuf_new(y_bytes(p), 0xFF);
                qk_matmul_args a = args_of(p, y.p);
                a.kernel = kernels[i].name;
                if (qk_matmul(&w, &a) == QK_OK && gbuf_guards_ok(&y) && same_bytes(&y, &job->expected[pi][i]))
                    job->passed++;
                else
                    job->failed++;
                gbuf_free(&y);
            }
        }
    return NULL;
}

static void test_threads(void) {
    set_context("threads");
    problem problems[THREAD_PROBLEMS] = {
        {.M = 5, .N = 17, .K = 64, .G = 32, .bits = 4, .dtype = QK_DTYPE_F16, .mode = QK_MODE_A16},
        {.M = 9, .N = 8, .K = 96, .G = 32, .bits = 8, .dtype = QK_DTYPE_F32, .mode = QK_MODE_A8},
        {.M = 33, .N = 40, .K = 100, .G = 24, .bits = 4, .dtype = QK_DTYPE_BF16, .mode = QK_MODE_A8},
    };
    static gbuf expected[THREAD_PROBLEMS][MAX_KERNELS];
    memset(expected, 0, sizeof expected);
    for (int pi = 0; pi < THREAD_PROBLEMS; pi++) {
        problem* p = &problems[pi];
        fill_activations(p, X_UNIFORM);
        fill_raw_weights(p, pi % 2);
        if (pi == 2) fill_offsets(p);
        fill_bias(p);
        qk_weights w = weights_of(p);
        for (int i = 0; i < n_kernels; i++) {
            if (!kernels[i].available || !fits(&kernels[i], p)) continue;
            expected[pi][i] = gbuf_new(y_bytes(p), 0xFF);
            qk_matmul_args a = args_of(p, expected[pi][i].p);
            a.kernel = kernels[i].name;
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
    long failed = 0, passed = 0;
    for (int t = 0; t < N_THREADS; t++) {
        pthread_join(threads[t], NULL);
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

static long random_cases = 2304, only = -1;
static int sweep = 1;

static int option(int argc, char** argv, int* i) {
    if (!strcmp(argv[*i], "--cases") && *i + 1 < argc)
        random_cases = strtol(argv[++*i], NULL, 0);
    else if (!strcmp(argv[*i], "--case") && *i + 1 < argc)
        only = strtol(argv[++*i], NULL, 0);
    else if (!strcmp(argv[*i], "--no-sweep"))
        sweep = 0;
    else
        return 0;
    return 1;
}

int main(int argc, char** argv) {
    if (getenv("QK_TEST_CASES")) random_cases = strtol(getenv("QK_TEST_CASES"), NULL, 0);
    test_begin("test_matmul", argc, argv, "[--cases N] [--no-sweep] [--case I]", option);
    double start = test_seconds();
    load_kernels();
    ref_backend = backend_id("ref");
    CHECK(ref_backend != QK_BACKEND_AUTO, "no backend named ref");

    if (only < 0) {
        reseed(0xFFFFFFFF05ull);
        test_nonfinite_rows();
        reseed(0xFFFFFFFF06ull);
        test_overflow_stress();
        reseed(0xFFFFFFFF08ull);
        test_subnormal_amax();
        test_tiny_rows();
        test_bf16_flushes();
        reseed(0xFFFFFFFF09ull);
        test_many_groups();
        test_long_float32_sums();
        test_large_products();
        reseed(0xFFFFFFFF0Aull);
        test_format_v2_edges();
        test_ragged_tails();
        test_prefill_shapes();
        test_whole_chunk_groups();
        test_small_groups();
        test_long_k_slices();
        test_group_beyond_k();
        test_padding_weights();
        reseed(0xFFFFFFFF0Bull);
        test_group_fold_order();
        test_a16_8x32_runs();
        reseed(0xFFFFFFFF07ull);
        test_threads();
    }

    /* The sweep: every M x N x K of the edge lists (odd K: 8-bit only), then random shapes. */
    static const int32_t Ms[] = {1, 2, 3, 7, 8, 9, 17};
    static const int32_t Ns[] = {1, 3, 8, 15, 17, 33};
    static const int32_t Ks[] = {2, 8, 30, 32, 64, 96, 128, 256, 512, 1, 15, 33};
    enum { N_SWEEP = sizeof Ms / sizeof Ms[0] * (sizeof Ns / sizeof Ns[0]) * (sizeof Ks / sizeof Ks[0]) };
    int index = 0;
    long cases = 0;
    if (sweep)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
            for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++)
                for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++, index++) {
                    if (only >= 0 && index != only) continue;
                    reseed((uint64_t)index);
                    run_case(index, Ms[mi], Ns[ni], Ks[ki], 0, combo_of(index % N_COMBOS));
                    cases++;
                }
    index = N_SWEEP;
    static const int32_t more_M[] = {1, 2, 3, 7, 8, 9, 17, 1, 4, 16, 33, 64, 5, 6}; /* 5, 6: 8-row tiles' tails */
    static const int32_t more_N[] = {1, 3, 8, 15, 17, 33, 2, 16, 64};
    static const int32_t more_K[] = {2, 8, 30, 32, 64, 96, 128, 256, 512, 1, 15, 33, 24, 160, 384, 1024};
    for (long r = 0; r < random_cases; r++, index++) {
        if (only >= 0 && index != only) continue;
        reseed((uint64_t)index);
        int32_t M = PICK(more_M), N = PICK(more_N), K = PICK(more_K);
        while ((long)M * N * K > 60000) K /= 2; /* keep the scalar reference quick (and QEMU runs) */
        run_case(index, M, N, K, 0, combo_of((int)(r % N_COMBOS)));
        cases++;
    }
    /* Random prefill problems, one per 128 random cases: a few hundred rows, K of 1026 to 4800 and
     * long groups (per channel, longer than K, 128, or any even length from 512 to K / 2), where the AMX
     * kernels cut K into slices and group sums and runs cross them (a slicing bug once showed only
     * at such shapes). */
    long prefill_cases = random_cases / 128 + (random_cases > 0);
    for (long r = 0; r < prefill_cases; r++, index++) {
        if (only >= 0 && index != only) continue;
        reseed((uint64_t)index);
        int32_t M = rnd_int(129, 300), N = rnd_int(1, 24), K = 2 * rnd_int(513, 2400);
        int32_t groups[] = {K, K + rnd_int(1, K), 128, 2 * rnd_int(256, K / 4)};
        run_case(index, M, N, K, groups[rnd_int(0, 3)], combo_of((int)(rnd() % N_COMBOS)));
        cases++;
    }

    printf("%ld cases, %ld matmul calls in %.2f s; %ld non-reference runs in the float32 subnormal range "
           "checked for status, guards and packing only\n",
           cases, matmul_runs, test_seconds() - start, ref_only_skips);
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].available)
            printf("kernel %-28s %6ld runs, worst |Y - oracle| / tolerance %.3g\n", kernels[i].name, kernel_runs[i],
                   kernel_worst[i]);
    return test_end();
}
