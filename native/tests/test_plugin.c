/* test_plugin: backends from a backend library (libqkernels_testbackend.so, test_backend.c), loaded
 * by the core from QKERNELS_BACKEND_PATH (a file or a directory).
 *
 * With the library: test_plugin and test_plugin_unavailable are enumerated after the built-in
 * backends, with the library's path; found by name; test_plugin runs when forced (by id or by
 * QKERNELS_BACKEND) and gives the oracle's results, while automatic dispatch prefers the built-in
 * backends (test_plugin's priority is lower) and passes it over where its kernels lack a format
 * feature; test_plugin_unavailable is refused with its probe's reason; every pack the backend made
 * is freed by it exactly once, also when a plan held the pack past qk_packed_weights_free, and a
 * pack the backend refuses fails with its message.
 *
 * --absent: run without the library; nothing of it is registered and the library works as before.
 *
 * Usage: test_plugin [--seed S] [--absent] [-v]
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "problems.h"
#include "support.h"

static const char* const LIBRARY = "libqkernels_testbackend.so";
static const char* const REASON = "the test plugin's imaginary device is not attached";

static int (*backend_frees)(void); /* the library's qk_test_backend_frees */
static qk_backend plugin, unavailable;

/* Format v2 features of a problem, as bits. */
enum { OFFSETS = 1, RAGGED = 2 };

/* A problem of the given mode with the format v2 features asked for. */
static problem make_problem(qk_mode mode, qk_dtype dtype, int v2) {
    problem p = {.M = 5, .N = 11, .K = v2 & RAGGED ? 70 : 64, .G = 16, .bits = 4, .dtype = dtype, .mode = mode};
    fill_activations(&p, X_UNIFORM);
    fill_raw_weights(&p, 0);
    if (v2 & OFFSETS) fill_offsets(&p);
    fill_bias(&p);
    return p;
}

/* The path the core should record: QKERNELS_BACKEND_PATH itself, or the library in that directory. */
static int is_expected_path(const char* library) {
    const char* path = getenv("QKERNELS_BACKEND_PATH");
    if (!path || !path[0]) return 0;
    if (strcmp(library, path) == 0) return 1;
    size_t n = strlen(path);
    return strncmp(library, path, n) == 0 && library[n] == '/' && strcmp(library + n + 1, LIBRARY) == 0;
}

static void test_enumerated(void) {
    set_context("enumeration");
    plugin = backend_id("test_plugin");
    unavailable = backend_id("test_plugin_unavailable");
    if (!CHECK(plugin != QK_BACKEND_AUTO && unavailable != QK_BACKEND_AUTO,
               "the test backends are not registered (QKERNELS_BACKEND_PATH=%s)", getenv("QKERNELS_BACKEND_PATH")))
        exit(test_end());
    qk_backend_info info = {.size = sizeof info}, other = {.size = sizeof other};
    CHECK(qk_backend_get(plugin, &info) == QK_OK && info.available && info.compiled && info.detected &&
              info.own_layout && info.priority == -10 && info.reason[0] == '\0',
          "test_plugin: available %d, compiled %d, detected %d, own_layout %d, priority %d", info.available,
          info.compiled, info.detected, info.own_layout, info.priority);
    CHECK(is_expected_path(info.library), "test_plugin comes from '%s', QKERNELS_BACKEND_PATH=%s", info.library,
          getenv("QKERNELS_BACKEND_PATH"));
    CHECK(qk_backend_get(unavailable, &other) == QK_OK && !other.available && strcmp(other.reason, REASON) == 0 &&
              strcmp(other.library, info.library) == 0,
          "test_plugin_unavailable: available %d, reason '%s', library '%s'", other.available, other.reason,
          other.library);
    /* Built-in backends register first. */
    for (qk_backend b = 1; b <= qk_backend_count(); b++) {
        qk_backend_info bi = {.size = sizeof bi};
        if (qk_backend_get(b, &bi) == QK_OK && bi.library[0] == '\0')
            CHECK(b < plugin, "built-in backend %s has id %d, after test_plugin's %d", bi.name, (int)b, (int)plugin);
    }
    load_kernels();
    int a16 = find_kernel("test_plugin_a16_w4w8_1x1"), a8 = find_kernel("test_plugin_a8_w4w8_1x1");
    int u = find_kernel("test_plugin_unavailable_a16_w4w8_1x1");
    CHECK(a16 >= 0 && a8 >= 0 && u >= 0 && kernels[a16].backend == plugin && kernels[a16].available &&
              !kernels[u].available && kernels[u].backend == unavailable,
          "the test backends' kernels: %d %d %d", a16, a8, u);
    /* Dispatch order is by priority: the unavailable one (100) before the built-ins, test_plugin last. */
    CHECK(u == 0 && a16 >= 0 && a16 >= n_kernels - 2, "kernel order: unavailable at %d, test_plugin at %d of %d", u,
          a16, n_kernels);

    void* handle = dlopen(info.library, RTLD_NOW | RTLD_NOLOAD);
    backend_frees = handle ? (int (*)(void))dlsym(handle, "qk_test_backend_frees") : NULL;
    if (!CHECK(backend_frees != NULL, "%s is not loaded, or lacks qk_test_backend_frees", info.library))
        exit(test_end());
    dlclose(handle); /* the core's reference keeps it loaded */
}

/* Automatic dispatch prefers the built-in backends. */
static void test_priority(void) {
    set_context("priority");
    int frees = backend_frees();
    for (int mode = 0; mode < 2; mode++) {
        problem p = make_problem((qk_mode)mode, QK_DTYPE_F32, 0);
        qk_weights w = weights_of(&p);
        gbuf y = gbuf_new(y_bytes(&p), 0xFF);
        qk_matmul_args a = args_of(&p, y.p);
        qk_kernel_info chosen = {.size = sizeof chosen, .name = "-"};
        CHECK(qk_select_kernel(&w, &a, &chosen) == QK_OK && chosen.backend != plugin,
              "automatic dispatch chose %s over the built-in backends", chosen.name);
        CHECK(qk_matmul(&w, &a) == QK_OK, "qk_matmul: %s", qk_last_error());
        qk_packed_weights* packed = NULL;
        CHECK(qk_pack_weights(&w, QK_BACKEND_AUTO, &packed) == QK_OK && qk_packed_backend(packed) != plugin,
              "qk_pack_weights(auto) packed for %s", backend_name(qk_packed_backend(packed)));
        qk_packed_weights_free(packed);
        gbuf_free(&y);
        problem_free(&p);
    }
    CHECK(backend_frees() == frees, "automatic dispatch used test_plugin's pack");
}

/* test_plugin forced by id and by QKERNELS_BACKEND: the oracle's results; each stateless call
 * packs and frees once. Where its kernel lacks a format feature it is refused, never replaced. */
static void test_forced(void) {
    save_backend_variable();
    unsetenv("QKERNELS_BACKEND");
    for (int di = 0; di < 3; di++)
        for (int mode = 0; mode < 2; mode++)
            for (int v2 = 0; v2 <= (OFFSETS | RAGGED); v2++) {
                problem p = make_problem((qk_mode)mode, all_dtypes[di], v2);
                set_context("test_plugin forced: %s", describe(&p));
                int runs = mode == QK_MODE_A16 || !v2; /* its A8 kernel runs format v1 only */
                qk_weights w = weights_of(&p);
                expectation e = expect(&p);
                int fill = poison_byte(), frees = backend_frees();
                gbuf by_id = gbuf_new(y_bytes(&p), fill), by_name = gbuf_new(y_bytes(&p), fill);
                qk_matmul_args a = args_of(&p, by_id.p);
                a.backend = plugin;
                qk_kernel_info chosen = {.size = sizeof chosen};
                qk_status s = qk_matmul(&w, &a);
                qk_status si = qk_select_kernel(&w, &a, &chosen);
                setenv("QKERNELS_BACKEND", "test_plugin", 1);
                a.backend = QK_BACKEND_AUTO;
                a.output = by_name.p;
                qk_status sn = qk_matmul(&w, &a);
                unsetenv("QKERNELS_BACKEND");
                if (runs) {
                    CHECK(s == QK_OK && sn == QK_OK && si == QK_OK && chosen.backend == plugin,
                          "status %d / %d, select %d (%s): %s", (int)s, (int)sn, (int)si, si ? "-" : chosen.name,
                          qk_last_error());
                    compare_output(&p, by_id.p, e.val, e.err, "test_plugin vs oracle", NULL);
                    compare_exact(&p, by_id.p, &e, "test_plugin rounding");
                    CHECK(same_bytes(&by_id, &by_name), "QKERNELS_BACKEND=test_plugin differs from backend test_plugin");
                    CHECK(backend_frees() == frees + 2, "two stateless calls: %d frees", backend_frees() - frees);
                } else {
                    CHECK(s == QK_ERR_UNSUPPORTED && sn == QK_ERR_UNSUPPORTED && si == QK_ERR_UNSUPPORTED,
                          "A8 with format v2 features on test_plugin: status %d / %d / %d", (int)s, (int)sn, (int)si);
                    CHECK(gbuf_untouched(&by_id, fill) && gbuf_untouched(&by_name, fill), "a refused call wrote");
                    CHECK(backend_frees() == frees, "a refused call packed");
                    /* Automatic dispatch passes test_plugin over for a kernel that runs it. */
                    a.output = by_id.p;
                    CHECK(qk_select_kernel(&w, &a, &chosen) == QK_OK && chosen.backend != plugin && fits(&chosen, &p),
                          "automatic dispatch chose %s", chosen.name);
                }
                gbuf_free(&by_id);
                gbuf_free(&by_name);
                expectation_free(&e);
                problem_free(&p);
            }
    restore_backend_variable();
}

static void test_unavailable(void) {
    set_context("test_plugin_unavailable");
    save_backend_variable();
    problem p = make_problem(QK_MODE_A16, QK_DTYPE_F16, 0);
    qk_weights w = weights_of(&p);
    int fill = poison_byte();
    gbuf y = gbuf_new(y_bytes(&p), fill);
    qk_matmul_args a = args_of(&p, y.p);
    a.backend = unavailable;
    reset_status();
    EXPECT_STATUS(qk_matmul(&w, &a), QK_ERR_BACKEND_UNAVAILABLE, "qk_matmul, backend forced");
    CHECK(strstr(qk_last_error(), REASON) != NULL, "the message '%s' lacks the reason", qk_last_error());
    a.backend = QK_BACKEND_AUTO;
    a.kernel = "test_plugin_unavailable_a16_w4w8_1x1";
    reset_status();
    EXPECT_STATUS(qk_matmul(&w, &a), QK_ERR_BACKEND_UNAVAILABLE, "qk_matmul, kernel forced");
    CHECK(strstr(qk_last_error(), REASON) != NULL, "the message '%s' lacks the reason", qk_last_error());
    a.kernel = NULL;
    setenv("QKERNELS_BACKEND", "test_plugin_unavailable", 1);
    reset_status();
    EXPECT_STATUS(qk_matmul(&w, &a), QK_ERR_BACKEND_UNAVAILABLE, "qk_matmul, QKERNELS_BACKEND");
    CHECK(strstr(qk_last_error(), REASON) != NULL, "the message '%s' lacks the reason", qk_last_error());
    restore_backend_variable();
    int sentinel;
    qk_packed_weights* packed = (qk_packed_weights*)&sentinel;
    reset_status();
    EXPECT_STATUS(qk_pack_weights(&w, unavailable, &packed), QK_ERR_BACKEND_UNAVAILABLE, "qk_pack_weights");
    CHECK(packed == (qk_packed_weights*)&sentinel && strstr(qk_last_error(), REASON), "qk_pack_weights: *out or message");
    CHECK(gbuf_untouched(&y, fill), "a refused call wrote its output");
    gbuf_free(&y);
    problem_free(&p);
}

/* Every pack test_plugin makes is freed by its free_packed exactly once: when the handle is freed,
 * or when the last plan holding it is. */
static void test_pack_frees(void) {
    set_context("test_plugin's packs");
    problem p = make_problem(QK_MODE_A16, QK_DTYPE_BF16, OFFSETS | RAGGED);
    expectation e = expect(&p);
    gbuf y = gbuf_new(y_bytes(&p), 0xFF);
    qk_matmul_args a = args_of(&p, y.p);
    int frees = backend_frees();

    qk_packed_weights* packed = NULL;
    if (CHECK(pack_copy(&p, plugin, &packed) == QK_OK && qk_packed_backend(packed) == plugin, "pack: %s",
              qk_last_error())) {
        CHECK(qk_packed_size(packed) > 0, "qk_packed_size is 0");
        for (int i = 0; i < 3; i++)
            CHECK(qk_matmul_packed(packed, &a) == QK_OK, "qk_matmul_packed: %s", qk_last_error());
        compare_output(&p, y.p, e.val, e.err, "qk_matmul_packed on test_plugin vs oracle", NULL);
        CHECK(backend_frees() == frees, "runs on a pack freed it");
        qk_packed_weights_free(packed);
        CHECK(backend_frees() == frees + 1, "qk_packed_weights_free: %d frees, want 1", backend_frees() - frees);
    }

    /* Borrowing changes nothing for a backend with its own layout: it packs, and frees once. */
    frees = backend_frees();
    qk_weights w = weights_of(&p);
    packed = NULL;
    if (CHECK(qk_pack_weights_borrowing(&w, plugin, &packed) == QK_OK && qk_packed_size(packed) > 0,
              "qk_pack_weights_borrowing: %s", qk_last_error())) {
        qk_packed_weights_free(packed);
        CHECK(backend_frees() == frees + 1, "a borrowing pack freed: %d frees, want 1", backend_frees() - frees);
    }

    /* Plans hold the pack: freed with the last of them. */
    frees = backend_frees();
    qk_plan *first = NULL, *second = NULL;
    qk_plan_desc desc = {.size = sizeof desc, .mode = p.mode, .input_dtype = p.dtype};
    if (CHECK(pack_copy(&p, plugin, &packed) == QK_OK && qk_plan_create(packed, &desc, &first) == QK_OK &&
                  qk_plan_create(packed, &desc, &second) == QK_OK,
              "pack and plans: %s", qk_last_error())) {
        qk_packed_weights_free(packed);
        CHECK(backend_frees() == frees, "the pack was freed while plans held it");
        gbuf_fill(&y, 0xFF);
        CHECK(qk_plan_run(first, p.x, y.p, p.bias, p.M, NULL) == QK_OK, "qk_plan_run: %s", qk_last_error());
        compare_output(&p, y.p, e.val, e.err, "a plan on test_plugin vs oracle", NULL);
        qk_plan_free(first);
        CHECK(backend_frees() == frees, "the pack was freed while a plan held it");
        CHECK(qk_plan_run(second, p.x, y.p, p.bias, p.M, NULL) == QK_OK, "qk_plan_run: %s", qk_last_error());
        qk_plan_free(second);
        CHECK(backend_frees() == frees + 1, "the last plan freed: %d frees, want 1", backend_frees() - frees);
    }

    /* A8 on packed weights with offsets, or with a shorter last group, which test_plugin's A8
     * kernel lacks: plans and runs are refused (the pack no longer holds the canonical arrays, yet
     * what they need must still count); the pack is freed once. */
    for (int v2 = OFFSETS; v2 <= RAGGED; v2++) {
        problem q = make_problem(QK_MODE_A8, QK_DTYPE_F32, v2);
        set_context("test_plugin's packs: A8 refused on %s", describe(&q));
        frees = backend_frees();
        desc.mode = QK_MODE_A8;
        if (CHECK(pack_copy(&q, plugin, &packed) == QK_OK, "pack: %s", qk_last_error())) {
            qk_plan* plan = NULL;
            reset_status();
            EXPECT_STATUS(qk_plan_create(packed, &desc, &plan), QK_ERR_UNSUPPORTED, "qk_plan_create, A8");
            int fill = poison_byte();
            gbuf out = gbuf_new(y_bytes(&q), fill);
            qk_matmul_args qa = args_of(&q, out.p);
            reset_status();
            EXPECT_STATUS(qk_matmul_packed(packed, &qa), QK_ERR_UNSUPPORTED, "qk_matmul_packed, A8");
            CHECK(gbuf_untouched(&out, fill), "a refused qk_matmul_packed wrote its output");
            gbuf_free(&out);
            qk_packed_weights_free(packed);
            CHECK(plan == NULL && backend_frees() == frees + 1, "a refused plan: *out %p, %d frees", (void*)plan,
                  backend_frees() - frees);
        }
        problem_free(&q);
    }
    set_context("test_plugin's packs");

    /* A pack the backend refuses: its status and message, nothing to free. */
    frees = backend_frees();
    problem tall = {.M = 1, .N = 4097, .K = 8, .G = 8, .bits = 8, .dtype = QK_DTYPE_F32, .mode = QK_MODE_A16};
    fill_raw_weights(&tall, 1);
    qk_weights tw = weights_of(&tall);
    int sentinel;
    packed = (qk_packed_weights*)&sentinel;
    reset_status();
    EXPECT_STATUS(qk_pack_weights(&tw, plugin, &packed), QK_ERR_UNSUPPORTED, "qk_pack_weights, refused by the backend");
    CHECK(packed == (qk_packed_weights*)&sentinel && strstr(qk_last_error(), "test_plugin packs at most") &&
              backend_frees() == frees,
          "a refused pack: *out changed, message '%s', or %d frees", qk_last_error(), backend_frees() - frees);
    problem_free(&tall);

    gbuf_free(&y);
    expectation_free(&e);
    problem_free(&p);
}

/* Without the library: nothing of it is registered, and dispatch works on the built-in backends. */
static void test_absent(void) {
    set_context("no backend library");
    save_backend_variable();
    qk_backend id = QK_BACKEND_AUTO;
    reset_status();
    EXPECT_STATUS(qk_backend_find("test_plugin", &id), QK_ERR_INVALID_ARGUMENT, "qk_backend_find(test_plugin)");
    for (qk_backend b = 1; b <= qk_backend_count(); b++) {
        qk_backend_info info = {.size = sizeof info, .name = "-", .library = ""};
        CHECK(qk_backend_get(b, &info) == QK_OK && info.library[0] == '\0', "backend %s comes from '%s'", info.name,
              info.library);
    }
    load_kernels();
    for (int i = 0; i < n_kernels; i++)
        CHECK(strncmp(kernels[i].name, "test_plugin", 11) != 0, "kernel %s is registered", kernels[i].name);
    for (int mode = 0; mode < 2; mode++) {
        problem p = make_problem((qk_mode)mode, QK_DTYPE_F16, OFFSETS | RAGGED);
        qk_weights w = weights_of(&p);
        expectation e = expect(&p);
        int fill = poison_byte();
        gbuf y = gbuf_new(y_bytes(&p), fill);
        qk_matmul_args a = args_of(&p, y.p);
        CHECK(qk_matmul(&w, &a) == QK_OK, "qk_matmul: %s", qk_last_error());
        compare_output(&p, y.p, e.val, e.err, "automatic dispatch vs oracle", NULL);
        gbuf_fill(&y, fill);
        setenv("QKERNELS_BACKEND", "test_plugin", 1);
        reset_status();
        EXPECT_STATUS(qk_matmul(&w, &a), QK_ERR_INVALID_ARGUMENT, "QKERNELS_BACKEND=test_plugin without the library");
        CHECK(gbuf_untouched(&y, fill), "a refused call wrote its output");
        restore_backend_variable();
        save_backend_variable();
        gbuf_free(&y);
        expectation_free(&e);
        problem_free(&p);
    }
    restore_backend_variable();
}

static int absent;

static int option(int argc, char** argv, int* i) {
    (void)argc;
    if (strcmp(argv[*i], "--absent") != 0) return 0;
    absent = 1;
    return 1;
}

int main(int argc, char** argv) {
    test_begin("test_plugin", argc, argv, "[--absent]", option);
    reseed(7);
    if (absent) {
        test_absent();
        return test_end();
    }
    test_enumerated();
    test_priority();
    test_forced();
    test_unavailable();
    test_pack_frees();
    return test_end();
}
