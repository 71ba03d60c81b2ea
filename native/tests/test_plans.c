/* test_plans: prepared plans on packed weights.
 *
 * For problems of every mode, dtype and weight format (offsets and a shorter last group included)
 * and every backend that packs them (a backend may refuse weights none of its kernels runs): a
 * plan's kernel at each M (qk_plan_kernel) is the one automatic dispatch picks for packed weights
 * (qk_select_kernel, less its canonical-layout variants), and running the plan gives the bytes of
 * qk_matmul_packed, automatic and with that kernel forced, within the contract's tolerance of the
 * oracle. A plan is refused where no kernel of the backend runs the problem. Also: max_m is
 * enforced, a forced kernel holds for every M, four threads running one plan at once get the
 * single-threaded bytes, the pack lives on after qk_packed_weights_free while a plan holds it, and
 * a borrowing pack gives what a copying one does.
 *
 * Usage: test_plans [--seed S] [-v]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "problems.h"
#include "support.h"

enum { MAX_M = 40 };

/* p with its first M rows of activations (a shallow copy: the arrays are p's). */
static problem rows_of(const problem* p, int32_t M) {
    problem r = *p;
    r.M = M;
    return r;
}

/* Whether some kernel of backend b runs p on packed weights. */
static int backend_runs(qk_backend b, const problem* p) {
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].backend == b && kernels[i].available && !is_canonical_variant(&kernels[i]) && fits(&kernels[i], p))
            return 1;
    return 0;
}

/* Whether some kernel of backend b runs p's weights, in either mode. A backend may refuse to pack
 * weights that none of its kernels runs: its layout need not hold them. */
static int backend_runs_weights(qk_backend b, const problem* p) {
    problem other = *p;
    other.mode = p->mode == QK_MODE_A16 ? QK_MODE_A8 : QK_MODE_A16;
    return backend_runs(b, p) || backend_runs(b, &other);
}

/* The M at which kernel choice may change for backend b: 1, each max_m and max_m + 1, MAX_M. */
static int m_values(qk_backend b, int32_t* out) {
    int n = 0;
    out[n++] = 1;
    out[n++] = 2;
    for (int i = 0; i < n_kernels && n < 2 * MAX_KERNELS; i++)
        if (kernels[i].backend == b && kernels[i].max_m > 0 && kernels[i].max_m < MAX_M) {
            out[n++] = kernels[i].max_m;
            out[n++] = kernels[i].max_m + 1;
        }
    out[n++] = MAX_M;
    return n;
}

/* qk_plan_kernel at M against automatic selection for packed weights of the plan's backend; then
 * the plan's bytes against qk_matmul_packed (automatic and forced) and the oracle. */
static void check_plan_at(const problem* full, const expectation* e, qk_packed_weights* packed, const qk_plan* plan,
                          int32_t M) {
    problem p = rows_of(full, M);
    qk_backend b = qk_packed_backend(packed);
    qk_kernel_info planned = {.size = sizeof planned}, selected = {.size = sizeof selected};
    if (!CHECK(qk_plan_kernel(plan, M, &planned) == QK_OK, "M=%d: qk_plan_kernel: %s", M, qk_last_error())) return;
    /* The outputs start poisoned: every byte is the kernel's. */
    gbuf y_plan = gbuf_new(y_bytes(&p), poison_byte()), y_auto = gbuf_new(y_bytes(&p), poison_byte());
    gbuf y_forced = gbuf_new(y_bytes(&p), poison_byte());
    qk_weights w = weights_of(&p);
    qk_matmul_args a = args_of(&p, y_auto.p);
    a.backend = b;
    if (CHECK(qk_select_kernel(&w, &a, &selected) == QK_OK, "M=%d: qk_select_kernel: %s", M, qk_last_error())) {
        if (is_canonical_variant(&selected)) /* stateless calls only: the plan runs the packed choice */
            CHECK(selected.backend == planned.backend, "M=%d: selected %s, planned %s", M, selected.name, planned.name);
        else
            CHECK(strcmp(selected.name, planned.name) == 0, "M=%d: qk_plan_kernel %s, qk_select_kernel %s", M,
                  planned.name, selected.name);
    }
    CHECK(planned.backend == b && fits(&planned, &p) && !is_canonical_variant(&planned),
          "M=%d: the plan's kernel %s does not run packed weights of %s", M, planned.name, backend_name(b));
    qk_status s = qk_plan_run(plan, p.x, y_plan.p, p.bias, M, NULL);
    a.output = y_auto.p;
    a.backend = QK_BACKEND_AUTO;
    qk_status s_auto = qk_matmul_packed(packed, &a);
    a.output = y_forced.p;
    a.kernel = planned.name;
    qk_status s_forced = qk_matmul_packed(packed, &a);
    if (CHECK(s == QK_OK && s_auto == QK_OK && s_forced == QK_OK, "M=%d: qk_plan_run %d, qk_matmul_packed %d / %d: %s",
              M, (int)s, (int)s_auto, (int)s_forced, qk_last_error())) {
        CHECK(gbuf_guards_ok(&y_plan), "M=%d: qk_plan_run wrote outside its output", M);
        CHECK(same_bytes(&y_plan, &y_auto) && same_bytes(&y_plan, &y_forced),
              "M=%d: qk_plan_run differs from qk_matmul_packed (automatic, or %s forced)", M, planned.name);
        if (!p.ref_only || b == backend_id("ref")) compare_output(&p, y_plan.p, e->val, e->err, "qk_plan_run vs oracle", NULL);
    }
    gbuf_free(&y_plan);
    gbuf_free(&y_auto);
    gbuf_free(&y_forced);
}

/* max_m: M above it is refused by qk_plan_run (nothing written) and qk_plan_kernel. */
static void check_max_m(const problem* p, qk_packed_weights* packed) {
    qk_plan_desc desc = {.size = sizeof desc, .mode = p->mode, .input_dtype = p->dtype, .max_m = 5};
    qk_plan* plan = NULL;
    if (!CHECK(qk_plan_create(packed, &desc, &plan) == QK_OK, "max_m 5: qk_plan_create: %s", qk_last_error())) return;
    int fill = poison_byte();
    gbuf y = gbuf_new(y_bytes(p), fill);
    qk_kernel_info info = {.size = sizeof info};
    EXPECT_STATUS(qk_plan_run(plan, p->x, y.p, p->bias, 6, NULL), QK_ERR_INVALID_SIZE, "max_m 5: qk_plan_run(M = 6)");
    CHECK(gbuf_untouched(&y, fill), "max_m 5: a refused qk_plan_run wrote its output");
    EXPECT_STATUS(qk_plan_kernel(plan, 6, &info), QK_ERR_INVALID_SIZE, "max_m 5: qk_plan_kernel(M = 6)");
    EXPECT_STATUS(qk_plan_run(plan, p->x, y.p, p->bias, 5, NULL), QK_OK, "max_m 5: qk_plan_run(M = 5)");
    EXPECT_STATUS(qk_plan_kernel(plan, 5, &info), QK_OK, "max_m 5: qk_plan_kernel(M = 5)");
    gbuf_free(&y);
    qk_plan_free(plan);
}

/* A forced kernel is the plan's kernel at every M. */
static void check_forced(const problem* p, qk_packed_weights* packed) {
    for (int i = 0; i < n_kernels; i++) {
        const qk_kernel_info* k = &kernels[i];
        if (k->backend != qk_packed_backend(packed) || !k->available || is_canonical_variant(k) || !fits(k, p)) continue;
        qk_plan_desc desc = {.size = sizeof desc, .mode = p->mode, .input_dtype = p->dtype, .kernel = k->name};
        qk_plan* plan = NULL;
        if (!CHECK(qk_plan_create(packed, &desc, &plan) == QK_OK, "%s forced: qk_plan_create: %s", k->name,
                   qk_last_error()))
            continue;
        int32_t ms[2 * MAX_KERNELS + 3];
        int n = m_values(k->backend, ms);
        for (int j = 0; j < n; j++) {
            qk_kernel_info info = {.size = sizeof info};
            CHECK(qk_plan_kernel(plan, ms[j], &info) == QK_OK && strcmp(info.name, k->name) == 0,
                  "%s forced: qk_plan_kernel(M = %d) is %s", k->name, ms[j], info.name ? info.name : "-");
        }
        qk_plan_free(plan);
    }
}

/* A pack borrowing p's arrays (qk_pack_weights_borrowing): a plan on it runs the same kernel and
 * bytes as one on the copying pack; a backend without its own layout then owns no bytes of it. */
static void check_borrowing(const problem* p, qk_backend b, const qk_plan* copied) {
    qk_packed_weights* packed = NULL;
    qk_plan* plan = NULL;
    qk_weights w = weights_of(p);
    qk_plan_desc desc = {.size = sizeof desc, .mode = p->mode, .input_dtype = p->dtype};
    if (!CHECK(qk_pack_weights_borrowing(&w, b, &packed) == QK_OK && qk_plan_create(packed, &desc, &plan) == QK_OK,
               "borrowing pack and plan: %s", qk_last_error())) {
        qk_packed_weights_free(packed);
        return;
    }
    qk_backend_info info = {.size = sizeof info};
    qk_backend_get(qk_packed_backend(packed), &info);
    CHECK(info.own_layout ? qk_packed_size(packed) > 0 : qk_packed_size(packed) == 0,
          "a borrowing pack for %s owns %zu bytes", info.name, qk_packed_size(packed));
    qk_kernel_info k1 = {.size = sizeof k1, .name = "-"}, k2 = {.size = sizeof k2, .name = "-"};
    gbuf y1 = gbuf_new(y_bytes(p), poison_byte()), y2 = gbuf_new(y_bytes(p), poison_byte());
    CHECK(qk_plan_kernel(copied, p->M, &k1) == QK_OK && qk_plan_kernel(plan, p->M, &k2) == QK_OK &&
              strcmp(k1.name, k2.name) == 0,
          "borrowing: kernel %s, copying: %s", k2.name, k1.name);
    CHECK(qk_plan_run(copied, p->x, y1.p, p->bias, p->M, NULL) == QK_OK &&
              qk_plan_run(plan, p->x, y2.p, p->bias, p->M, NULL) == QK_OK && same_bytes(&y1, &y2),
          "a plan on a borrowing pack differs from one on a copying pack: %s", qk_last_error());
    gbuf_free(&y1);
    gbuf_free(&y2);
    qk_plan_free(plan);
    qk_packed_weights_free(packed);
}

static void test_problem(problem* p) {
    expectation e = expect(p);
    for (qk_backend b = QK_BACKEND_AUTO; b <= qk_backend_count(); b++) {
        qk_backend_info info = {.size = sizeof info};
        if (b != QK_BACKEND_AUTO && (qk_backend_get(b, &info) != QK_OK || !info.available)) continue;
        qk_packed_weights* packed = NULL;
        qk_status s = pack_copy(p, b, &packed);
        if (s != QK_OK) {
            CHECK(s == QK_ERR_UNSUPPORTED && b != QK_BACKEND_AUTO && !backend_runs_weights(b, p),
                  "qk_pack_weights(%s): status %d: %s", b ? info.name : "auto", (int)s, qk_last_error());
            continue;
        }
        qk_backend packed_for = qk_packed_backend(packed);
        qk_plan_desc desc = {.size = sizeof desc, .mode = p->mode, .input_dtype = p->dtype};
        qk_plan* plan = NULL;
        int runs = backend_runs(packed_for, p); /* before the call: it calls the library (qk_last_status) */
        s = qk_plan_create(packed, &desc, &plan);
        if (!runs) {
            EXPECT_STATUS(s, QK_ERR_UNSUPPORTED, "qk_plan_create on a backend without a kernel for the problem");
            CHECK(plan == NULL, "a refused qk_plan_create wrote *out");
        } else if (CHECK(s == QK_OK, "qk_plan_create(%s): %s", backend_name(packed_for), qk_last_error())) {
            int32_t ms[2 * MAX_KERNELS + 3];
            int n = m_values(packed_for, ms);
            for (int j = 0; j < n; j++) check_plan_at(p, &e, packed, plan, ms[j]);
            check_max_m(p, packed);
            check_borrowing(p, b, plan);
            check_forced(p, packed);
            qk_plan_free(plan);
        }
        qk_packed_weights_free(packed);
    }
    expectation_free(&e);
}

static void test_problems(void) {
    for (int di = 0; di < 3; di++)
        for (int mode = 0; mode < 2; mode++)
            for (int format = 0; format < 4; format++) {
                /* format: 0 v1 per group, 1 offsets, 2 a shorter last group, 3 both */
                problem p = {.M = MAX_M, .N = 19, .K = format >= 2 ? 100 : 96, .G = 32, .bits = format % 2 ? 4 : 8,
                             .dtype = all_dtypes[di], .mode = (qk_mode)mode};
                fill_activations(&p, X_UNIFORM);
                fill_raw_weights(&p, format == 2);
                if (format % 2) fill_offsets(&p);
                if (di == 1) fill_bias(&p);
                set_context("plans: %s", describe(&p));
                test_problem(&p);
                problem_free(&p);
            }
}

/* ---- four threads running one plan at once ---- */

enum { N_THREADS = 4, THREAD_REPEATS = 25 };

typedef struct {
    const problem* p;
    const qk_plan* plan;
    const gbuf* expected; /* [MAX_M]: the single-threaded output for M = 1 + index */
    pthread_barrier_t* barrier;
    int id;
    long failed;
} thread_job;

static void* thread_main(void* arg) {
    thread_job* job = arg;
    pthread_barrier_wait(job->barrier);
    for (int r = 0; r < THREAD_REPEATS; r++) {
        int32_t M = 1 + (job->id * 7 + r * 3) % MAX_M; /* the threads run different M at once */
        gbuf y = gbuf_new(job->expected[M - 1].n, 0xFF);
        if (qk_plan_run(job->plan, job->p->x, y.p, job->p->bias, M, NULL) != QK_OK || !gbuf_guards_ok(&y) ||
            !same_bytes(&y, &job->expected[M - 1]))
            job->failed++;
        gbuf_free(&y);
    }
    return NULL;
}

static void test_concurrent_runs(void) {
    for (int mode = 0; mode < 2; mode++) {
        problem p = {.M = MAX_M, .N = 33, .K = 130, .G = 32, .bits = 4, .dtype = QK_DTYPE_F32, .mode = (qk_mode)mode};
        fill_activations(&p, X_UNIFORM);
        fill_raw_weights(&p, 0);
        fill_offsets(&p);
        fill_bias(&p);
        set_context("one plan, %d threads: %s", N_THREADS, describe(&p));
        qk_packed_weights* packed = NULL;
        qk_plan* plan = NULL;
        qk_plan_desc desc = {.size = sizeof desc, .mode = p.mode, .input_dtype = p.dtype};
        if (!CHECK(pack_copy(&p, QK_BACKEND_AUTO, &packed) == QK_OK && qk_plan_create(packed, &desc, &plan) == QK_OK,
                   "pack and plan: %s", qk_last_error())) {
            qk_packed_weights_free(packed);
            problem_free(&p);
            continue;
        }
        gbuf expected[MAX_M];
        for (int32_t M = 1; M <= MAX_M; M++) {
            expected[M - 1] = gbuf_new((size_t)M * p.N * formats[p.dtype].size, 0xFF);
            CHECK(qk_plan_run(plan, p.x, expected[M - 1].p, p.bias, M, NULL) == QK_OK, "M=%d: %s", M, qk_last_error());
        }
        pthread_barrier_t barrier;
        pthread_barrier_init(&barrier, NULL, N_THREADS);
        pthread_t threads[N_THREADS];
        thread_job jobs[N_THREADS];
        for (int t = 0; t < N_THREADS; t++) {
            jobs[t] = (thread_job){&p, plan, expected, &barrier, t, 0};
            if (pthread_create(&threads[t], NULL, thread_main, &jobs[t]) != 0) {
                fprintf(stderr, "pthread_create failed\n");
                exit(2);
            }
        }
        long failed = 0;
        for (int t = 0; t < N_THREADS; t++) {
            pthread_join(threads[t], NULL);
            failed += jobs[t].failed;
        }
        CHECK(failed == 0, "%ld of %d concurrent plan runs differ from single-threaded ones", failed,
              N_THREADS * THREAD_REPEATS);
        pthread_barrier_destroy(&barrier);
        for (int32_t M = 1; M <= MAX_M; M++) gbuf_free(&expected[M - 1]);
        qk_plan_free(plan);
        qk_packed_weights_free(packed);
        problem_free(&p);
    }
}

/* The plans made from a pack hold it: it outlives qk_packed_weights_free until the last plan is
 * freed (a use after free here is what valgrind and the sanitizer build look for). */
static void test_pack_lifetime(void) {
    problem p = {.M = 7, .N = 12, .K = 64, .G = 16, .bits = 4, .dtype = QK_DTYPE_BF16, .mode = QK_MODE_A16};
    fill_activations(&p, X_UNIFORM);
    fill_raw_weights(&p, 0);
    fill_offsets(&p);
    set_context("pack lifetime: %s", describe(&p));
    expectation e = expect(&p);
    for (qk_backend b = 1; b <= qk_backend_count(); b++) {
        qk_backend_info info = {.size = sizeof info};
        if (qk_backend_get(b, &info) != QK_OK || !info.available || !backend_runs(b, &p)) continue;
        qk_packed_weights* packed = NULL;
        qk_plan *first = NULL, *second = NULL;
        qk_plan_desc desc = {.size = sizeof desc, .mode = p.mode, .input_dtype = p.dtype};
        if (!CHECK(pack_copy(&p, b, &packed) == QK_OK && qk_plan_create(packed, &desc, &first) == QK_OK &&
                       qk_plan_create(packed, &desc, &second) == QK_OK,
                   "%s: pack and plans: %s", info.name, qk_last_error()))
            continue;
        gbuf before = gbuf_new(y_bytes(&p), 0xFF), after = gbuf_new(y_bytes(&p), 0xFF);
        CHECK(qk_plan_run(first, p.x, before.p, NULL, p.M, NULL) == QK_OK, "%s: %s", info.name, qk_last_error());
        qk_packed_weights_free(packed);
        CHECK(qk_plan_run(first, p.x, after.p, NULL, p.M, NULL) == QK_OK && same_bytes(&before, &after),
              "%s: a plan after qk_packed_weights_free: %s", info.name, qk_last_error());
        qk_plan_free(first);
        gbuf_fill(&after, 0xFF);
        CHECK(qk_plan_run(second, p.x, after.p, NULL, p.M, NULL) == QK_OK && same_bytes(&before, &after),
              "%s: the second plan after the first is freed: %s", info.name, qk_last_error());
        if (!p.ref_only) compare_output(&p, after.p, e.val, e.err, "the last plan vs oracle", NULL);
        qk_plan_free(second);
        gbuf_free(&before);
        gbuf_free(&after);
    }
    expectation_free(&e);
    problem_free(&p);
}

/* ---- stateless selection (qk_select_kernel): never a pack at small M ---- */

static int covers(const qk_kernel_info* k, int32_t M) { return k->max_m == 0 || M <= k->max_m; }

/* Automatic selection for packed weights, written out: the first available kernel in dispatch
 * order that runs p and covers M, else the first that runs p; -1 if none. */
static int packed_choice(const problem* p) {
    int any_m = -1;
    for (int i = 0; i < n_kernels; i++) {
        if (!kernels[i].available || is_canonical_variant(&kernels[i]) || !fits(&kernels[i], p)) continue;
        if (covers(&kernels[i], p->M)) return i;
        if (any_m < 0) any_m = i;
    }
    return any_m;
}

/* The first canonical variant that runs p and covers M, of backend b (or of any available backend
 * for QK_BACKEND_AUTO); -1 if none. */
static int canonical_choice(qk_backend b, const problem* p) {
    for (int i = 0; i < n_kernels; i++)
        if ((b == QK_BACKEND_AUTO ? kernels[i].available : kernels[i].backend == b) &&
            is_canonical_variant(&kernels[i]) && fits(&kernels[i], p) && covers(&kernels[i], p->M))
            return i;
    return -1;
}

/* A stateless call takes the packed choice's backend's canonical variant covering M, else the first
 * available backend's (a backend without canonical variants, such as x86_avx512, must not make
 * every call pack), else the packed choice. With a backend forced, only that backend's kernels. */
static void test_stateless_selection(void) {
    save_backend_variable();
    unsetenv("QKERNELS_BACKEND");
    int fallbacks = 0;
    for (int di = 0; di < 3; di++)
        for (int mode = 0; mode < 2; mode++)
            for (int format = 0; format < 4; format++) { /* as in test_problems */
                problem p = {.M = 1, .N = 19, .K = format >= 2 ? 100 : 96, .G = 32, .bits = format % 2 ? 4 : 8,
                             .dtype = all_dtypes[di], .mode = (qk_mode)mode};
                fill_activations(&p, X_UNIFORM);
                fill_raw_weights(&p, format == 2);
                if (format % 2) fill_offsets(&p);
                int32_t ms[2 * MAX_KERNELS + 3] = {1, 2, 1000}; /* and every kernel's max_m and max_m + 1 */
                int n = 3;
                for (int i = 0; i < n_kernels; i++)
                    if (kernels[i].max_m > 0) {
                        ms[n++] = kernels[i].max_m;
                        ms[n++] = kernels[i].max_m + 1;
                    }
                for (int j = 0; j < n; j++) {
                    p.M = ms[j];
                    set_context("stateless selection: %s", describe(&p));
                    int packed = packed_choice(&p);
                    if (!CHECK(packed >= 0, "no kernel runs the problem")) continue;
                    int own = canonical_choice(kernels[packed].backend, &p), any = canonical_choice(QK_BACKEND_AUTO, &p);
                    int want = own >= 0 ? own : any >= 0 ? any : packed;
                    fallbacks += own < 0 && any >= 0;
                    qk_weights w = weights_of(&p);
                    qk_matmul_args a = args_of(&p, p.x); /* selection reads and writes neither array */
                    qk_kernel_info got = {.size = sizeof got};
                    if (CHECK(qk_select_kernel(&w, &a, &got) == QK_OK, "qk_select_kernel: %s", qk_last_error()))
                        CHECK(strcmp(got.name, kernels[want].name) == 0, "qk_select_kernel chose %s, not %s", got.name,
                              kernels[want].name);
                    if (CHECK(qk_select_packed_kernel(&w, &a, &got) == QK_OK, "qk_select_packed_kernel: %s", qk_last_error()))
                        CHECK(strcmp(got.name, kernels[packed].name) == 0, "qk_select_packed_kernel chose %s, not %s",
                              got.name, kernels[packed].name);
                    /* forced to the packed choice's backend: its own kernels only */
                    a.backend = kernels[packed].backend;
                    want = own >= 0 ? own : packed;
                    if (CHECK(qk_select_kernel(&w, &a, &got) == QK_OK, "qk_select_kernel: %s", qk_last_error()))
                        CHECK(strcmp(got.name, kernels[want].name) == 0, "%s forced: qk_select_kernel chose %s, not %s",
                              backend_name(a.backend), got.name, kernels[want].name);
                }
                problem_free(&p);
            }
    if (test_verbose) printf("stateless selection: %d choices fell back to another backend's canonical variant\n", fallbacks);
    restore_backend_variable();
}

int main(int argc, char** argv) {
    test_begin("test_plans", argc, argv, NULL, NULL);
    load_kernels();
    reseed(3);
    test_problems();
    reseed(4);
    test_concurrent_runs();
    reseed(5);
    test_pack_lifetime();
    reseed(6);
    test_stateless_selection();
    return test_end();
}
