/* test_cuda_device: every CUDA kernel on the GPU, on device memory, against the oracle. Needs a GPU:
 * where the cuda backend (from QKERNELS_BACKEND_PATH) is not available it prints why and exits 77
 * (ctest: skipped). bench/device/cuda_check.sh runs it, also under compute-sanitizer.
 *
 * Each available cuda kernel, forced, runs problems of every dtype and mode it takes on shapes that
 * leave partial tiles (M from 1 to past a prefill tile; N and K not multiples of 64; groups of 32 to
 * 128, per-channel, asymmetric, offsets and shorter last groups where the kernel runs them), on a
 * stream of its own, weights packed once for the device. The output sits between guard bands in
 * device memory, poisoned first. A16 must land within the contract's tolerance of the oracle; A8
 * must equal the reference backend's result byte for byte (exact integer sums, one rounding). Host
 * pointers given to the backend are refused with nothing written.
 *
 * --quick: two shapes and three M (for the runs under compute-sanitizer, many times slower).
 *
 * Usage: test_cuda_device [--quick] [--seed S] [-v]
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "problems.h"
#include "support.h"

#define CUDA_OK(call) cuda_ok((call), #call, __FILE__, __LINE__)

static int cuda_ok(cudaError_t e, const char* call, const char* file, int line) {
    if (e == cudaSuccess) return 1;
    check_at(0, file, line, "%s: %s", call, cudaGetErrorString(e));
    exit(test_end());
}

enum { GUARD_BYTES = 256, POISON = 0xA7 };

static int quick;

static int option(int argc, char** argv, int* i) {
    (void)argc;
    if (strcmp(argv[*i], "--quick") != 0) return 0;
    quick = 1;
    return 1;
}

/* A copy of a host array in device memory (NULL for NULL). */
static void* to_device(const void* host, size_t bytes) {
    if (!host) return NULL;
    void* d = NULL;
    CUDA_OK(cudaMalloc(&d, bytes));
    CUDA_OK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* Runs kernel k on p on the device: the output (host copy) in y, whether the guards held. */
static qk_status run_on_device(const problem* p, qk_packed_weights* packed, const char* kernel, cudaStream_t stream,
                               void* y, int* guards_ok) {
    size_t yb = y_bytes(p);
    void* dx = to_device(p->x, x_bytes(p));
    void* dbias = to_device(p->bias, (size_t)p->N * sizeof(float));
    unsigned char* dy = NULL;
    CUDA_OK(cudaMalloc((void**)&dy, yb + 2 * GUARD_BYTES));
    CUDA_OK(cudaMemset(dy, POISON, yb + 2 * GUARD_BYTES));
    qk_matmul_args a = args_of(p, dy + GUARD_BYTES);
    a.input = dx;
    a.bias = dbias;
    a.kernel = kernel;
    a.stream = stream;
    qk_status s = qk_matmul_packed(packed, &a);
    CUDA_OK(cudaStreamSynchronize(stream));
    unsigned char* back = xmalloc(yb + 2 * GUARD_BYTES);
    CUDA_OK(cudaMemcpy(back, dy, yb + 2 * GUARD_BYTES, cudaMemcpyDeviceToHost));
    memcpy(y, back + GUARD_BYTES, yb);
    *guards_ok = 1;
    for (size_t i = 0; i < GUARD_BYTES; i++)
        *guards_ok &= back[i] == POISON && back[GUARD_BYTES + yb + i] == POISON;
    free(back);
    cudaFree(dx);
    cudaFree(dbias);
    cudaFree(dy);
    return s;
}

/* The reference backend's output for p (host). */
static void reference_output(const problem* p, void* y) {
    qk_weights w = weights_of(p);
    qk_matmul_args a = args_of(p, y);
    a.backend = backend_id("ref");
    CHECK(qk_matmul(&w, &a) == QK_OK, "ref: %s", qk_last_error());
}

static void run_kernel(const qk_kernel_info* k, qk_backend cuda, cudaStream_t stream) {
    static const int32_t Ms[] = {1, 3, 16, 17, 64, 130};
    static const struct { int32_t N, K, G; int offsets; } shapes[] = {
        {64, 256, 128, 0}, {72, 192, 32, 0}, {136, 320, 64, 1}, {64, 200, 64, 1}, {80, 128, 128, 0}};
    size_t n_shapes = quick ? 2 : sizeof shapes / sizeof shapes[0];
    for (size_t si = 0; si < n_shapes; si++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int dtype = 0; dtype < 3; dtype++)
                for (int symmetric = 0; symmetric < 2; symmetric++) {
                    problem base = {.M = 1, .N = shapes[si].N, .K = shapes[si].K, .G = shapes[si].G, .bits = bits,
                                    .dtype = (qk_dtype)dtype, .mode = k->mode};
                    if (!fits(k, &base)) continue;
                    fill_raw_weights(&base, symmetric);
                    if (shapes[si].offsets) fill_offsets(&base);
                    if (!fits(k, &base)) {
                        problem_free(&base);
                        continue;
                    }
                    qk_packed_weights* packed = NULL;
                    set_context("%s: pack %s", k->name, describe(&base));
                    if (!CHECK(pack_copy(&base, cuda, &packed) == QK_OK, "pack: %s", qk_last_error())) {
                        problem_free(&base);
                        continue;
                    }
                    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
                        if (quick && mi % 2 == 0) continue; /* M = 3, 17, 130 */
                        problem p = base;
                        p.M = Ms[mi];
                        p.x = NULL;
                        p.bias = NULL;
                        fill_activations(&p, (int)(mi % X_STYLES));
                        if (mi % 2) fill_bias(&p);
                        set_context("%s: %s", k->name, describe(&p));
                        void* y = xmalloc(y_bytes(&p));
                        int guards = 0;
                        qk_status s = run_on_device(&p, packed, k->name, stream, y, &guards);
                        if (CHECK(s == QK_OK, "status %d: %s", (int)s, qk_last_error())) {
                            CHECK(guards, "wrote outside its output");
                            expectation e = expect(&p);
                            if (!p.ref_only) compare_output(&p, y, e.val, e.err, "vs oracle", NULL);
                            if (k->mode == QK_MODE_A8) {
                                void* ref = xmalloc(y_bytes(&p));
                                reference_output(&p, ref);
                                CHECK(memcmp(y, ref, y_bytes(&p)) == 0, "A8 differs from the ref backend's bytes");
                                free(ref);
                            }
                            expectation_free(&e);
                        }
                        free(y);
                        free(p.x);
                        free(p.bias);
                    }
                    qk_packed_weights_free(packed);
                    problem_free(&base);
                }
}

/* Host pointers forced on the backend: refused, before anything is written. */
static void test_host_pointers_refused(qk_backend cuda) {
    problem p = {.M = 2, .N = 64, .K = 128, .G = 32, .bits = 4, .dtype = QK_DTYPE_F16, .mode = QK_MODE_A16};
    fill_activations(&p, X_UNIFORM);
    fill_raw_weights(&p, 1);
    set_context("host pointers: %s", describe(&p));
    gbuf y = gbuf_new(y_bytes(&p), POISON);
    qk_weights w = weights_of(&p);
    qk_matmul_args a = args_of(&p, y.p);
    a.backend = cuda;
    qk_status s = qk_matmul(&w, &a);
    CHECK(s == QK_ERR_INVALID_ARGUMENT && strstr(qk_last_error(), "host memory"), "status %d: %s", (int)s,
          qk_last_error());
    CHECK(gbuf_untouched(&y, POISON), "a refused call wrote its output");
    gbuf_free(&y);
    problem_free(&p);
}

int main(int argc, char** argv) {
    test_begin("test_cuda_device", argc, argv, "[--quick] [--seed S] [-v]", option);
    qk_backend cuda = backend_id("cuda");
    qk_backend_info info = {.size = sizeof info};
    if (cuda == QK_BACKEND_AUTO || qk_backend_get(cuda, &info) != QK_OK || !info.available) {
        printf("skipped: the cuda backend is %s\n", cuda == QK_BACKEND_AUTO ? "not registered" : info.reason);
        return 77;
    }
    load_kernels();
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    test_host_pointers_refused(cuda);
    int ran = 0;
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].backend == cuda) {
            run_kernel(&kernels[i], cuda, stream);
            ran++;
        }
    CHECK(ran > 0, "the cuda backend has no kernels");
    cudaStreamDestroy(stream);
    return test_end();
}
