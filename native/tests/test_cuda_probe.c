/* test_cuda_probe: the CUDA backend library (libqkernels_cuda.so, from QKERNELS_BACKEND_PATH) on a
 * machine without a usable GPU, as each kind of machine looks to its probe. ctest runs it once per
 * case, with the stand-in driver of cuda_driver/fake_libcuda.c on LD_LIBRARY_PATH where the case
 * needs one.
 *
 *   --expect-reason TEXT   the backend is registered, compiled, not detected, and its reason
 *                          contains TEXT; its kernels are listed as unavailable; forcing it fails
 *                          with QK_ERR_BACKEND_UNAVAILABLE and writes nothing.
 *   --expect-available     the probe passes (the stand-in reports a GPU of compute capability 8.0
 *                          or later) but the runtime has no real driver: automatic dispatch and
 *                          automatic packing still never pick the device backend; forcing it, or
 *                          packing for it, fails with QK_ERR_BACKEND_UNAVAILABLE (the runtime's
 *                          "requires a newer driver") and writes nothing.
 *
 * The case without a driver exits 77 (skipped) where libcuda.so.1 is installed.
 *
 * Usage: test_cuda_probe (--expect-reason TEXT | --expect-available) [-v]
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "problems.h"
#include "support.h"

static const char* expected_reason;
static int expect_available;

static int option(int argc, char** argv, int* i) {
    if (strcmp(argv[*i], "--expect-reason") == 0 && *i + 1 < argc) {
        expected_reason = argv[++*i];
        return 1;
    }
    if (strcmp(argv[*i], "--expect-available") == 0) {
        expect_available = 1;
        return 1;
    }
    return 0;
}

/* A small problem in both modes, with a poisoned output that must stay untouched. */
static problem make_problem(qk_mode mode) {
    problem p = {.M = 3, .N = 16, .K = 64, .G = 32, .bits = 4, .dtype = QK_DTYPE_F16, .mode = mode};
    fill_activations(&p, X_UNIFORM);
    fill_raw_weights(&p, 1);
    fill_bias(&p);
    return p;
}

/* The first kernel of backend b that runs p, or NULL. */
static const char* kernel_for(qk_backend b, const problem* p) {
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].backend == b && fits(&kernels[i], p)) return kernels[i].name;
    return NULL;
}

/* Forcing the backend (by id, and by the name of its kernel for the problem) fails with `status`
 * and leaves the output as it was. A mode none of its kernels runs is skipped where the backend is
 * available (forcing it would be refused as unsupported, which is not this test's business). */
static void check_forced_fails(qk_backend cuda, int available, qk_status status) {
    for (int mode = 0; mode < 2; mode++) {
        problem p = make_problem((qk_mode)mode);
        set_context("forcing cuda: %s", describe(&p));
        const char* kernel = kernel_for(cuda, &p);
        if (!kernel && available) {
            problem_free(&p);
            continue;
        }
        qk_weights w = weights_of(&p);
        gbuf y = gbuf_new(y_bytes(&p), 0xC3);
        qk_matmul_args a = args_of(&p, y.p);
        a.backend = cuda;
        qk_status s = qk_matmul(&w, &a);
        CHECK(s == status, "qk_matmul forced to cuda: status %d, expected %d (%s)", (int)s, (int)status, qk_last_error());
        CHECK(qk_last_error()[0] != '\0', "no message for status %d", (int)s);
        if (test_verbose) printf("  %s\n", qk_last_error());
        if (kernel) {
            a.backend = QK_BACKEND_AUTO;
            a.kernel = kernel;
            s = qk_matmul(&w, &a);
            CHECK(s == status, "qk_matmul forcing kernel %s: status %d, expected %d (%s)", kernel, (int)s, (int)status,
                  qk_last_error());
        }
        CHECK(gbuf_untouched(&y, 0xC3), "a failed call wrote its output");
        gbuf_free(&y);
        problem_free(&p);
    }
}

int main(int argc, char** argv) {
    test_begin("test_cuda_probe", argc, argv, "(--expect-reason TEXT | --expect-available) [-v]", option);
    if (!expected_reason == !expect_available) {
        fprintf(stderr, "test_cuda_probe: give exactly one of --expect-reason TEXT and --expect-available\n");
        return 2;
    }
    /* A machine with a driver cannot look like one without: that case is skipped there. */
    if (expected_reason && strstr(expected_reason, "libcuda.so.1 not found") && dlopen("libcuda.so.1", RTLD_LAZY)) {
        printf("skipped: libcuda.so.1 is installed here\n");
        return 77;
    }
    set_context("registration");
    qk_backend cuda = backend_id("cuda");
    if (!CHECK(cuda != QK_BACKEND_AUTO, "no backend 'cuda' (QKERNELS_BACKEND_PATH=%s)",
               getenv("QKERNELS_BACKEND_PATH") ? getenv("QKERNELS_BACKEND_PATH") : "unset"))
        return test_end();
    qk_backend_info info = {.size = sizeof info};
    if (!CHECK(qk_backend_get(cuda, &info) == QK_OK, "qk_backend_get(cuda): %s", qk_last_error())) return test_end();
    CHECK(info.compiled && info.own_layout && info.device && info.library[0],
          "cuda: compiled %d, own_layout %d, device %d, library '%s'", info.compiled, info.own_layout, info.device,
          info.library);
    printf("cuda: %s%s\n", info.available ? "available" : "unavailable: ", info.reason);
    load_kernels();
    int cuda_kernels = 0;
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].backend == cuda) {
            cuda_kernels++;
            CHECK(kernels[i].available == info.available && strncmp(kernels[i].name, "cuda_", 5) == 0,
                  "kernel %s: available %d, its backend %d", kernels[i].name, kernels[i].available, info.available);
        }
    CHECK(cuda_kernels > 0, "the cuda backend has no kernels");

    if (expected_reason) {
        CHECK(!info.available && !info.detected && strstr(info.reason, expected_reason) != NULL,
              "cuda: available %d, detected %d, reason '%s', expected one containing '%s'", info.available,
              info.detected, info.reason, expected_reason);
        check_forced_fails(cuda, 0, QK_ERR_BACKEND_UNAVAILABLE);
        return test_end();
    }

    CHECK(info.available && info.detected, "cuda: available %d, reason '%s'", info.available, info.reason);
    /* Automatic selection and automatic packing pass over the device backend, however high its priority. */
    for (int mode = 0; mode < 2; mode++) {
        problem p = make_problem((qk_mode)mode);
        set_context("automatic: %s", describe(&p));
        qk_weights w = weights_of(&p);
        gbuf y = gbuf_new(y_bytes(&p), 0);
        qk_matmul_args a = args_of(&p, y.p);
        qk_kernel_info chosen = {.size = sizeof chosen, .name = "-"};
        CHECK(qk_select_kernel(&w, &a, &chosen) == QK_OK && chosen.backend != cuda, "qk_select_kernel chose %s",
              chosen.name);
        CHECK(qk_select_packed_kernel(&w, &a, &chosen) == QK_OK && chosen.backend != cuda,
              "qk_select_packed_kernel chose %s", chosen.name);
        CHECK(qk_matmul(&w, &a) == QK_OK, "automatic qk_matmul: %s", qk_last_error());
        qk_packed_weights* packed = NULL;
        CHECK(qk_pack_weights(&w, QK_BACKEND_AUTO, &packed) == QK_OK && qk_packed_backend(packed) != cuda,
              "qk_pack_weights(auto) packed for %s", backend_name(qk_packed_backend(packed)));
        qk_packed_weights_free(packed);
        /* Packing for cuda needs the runtime, which the stand-in driver cannot serve. */
        packed = NULL;
        qk_status s = qk_pack_weights(&w, cuda, &packed);
        CHECK(s == QK_ERR_BACKEND_UNAVAILABLE && packed == NULL && strstr(qk_last_error(), "driver"),
              "qk_pack_weights(cuda): status %d, '%s'", (int)s, qk_last_error());
        if (test_verbose) printf("  pack: %s\n", qk_last_error());
        gbuf_free(&y);
        problem_free(&p);
    }
    /* Forced: the pack for the call fails on this driver, before anything launches. */
    check_forced_fails(cuda, 1, QK_ERR_BACKEND_UNAVAILABLE);
    return test_end();
}
