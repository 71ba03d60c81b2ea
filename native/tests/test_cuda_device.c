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
 * The backend's host side (backend.cpp): several host threads calling at once on one stream, on
 * their per-thread default streams, and on a new stream per call (more streams than the table of
 * scratch buffers per stream that this replaced could hold), each output equal byte for byte to
 * the same call made alone; a call captured into a CUDA graph on its stream's first use, in both
 * capture modes; more rows than grid y would hold (65,535 tiles); and, with two GPUs, a pack, input
 * or output on another device than the current one refused.
 *
 * --quick: two shapes and three M, fewer concurrent calls, no huge M (for the runs under
 * compute-sanitizer, many times slower).
 *
 * Usage: test_cuda_device [--quick] [--seed S] [-v]
 */
#include <cuda_runtime_api.h>
#include <pthread.h>
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

/* ---- the host side: threads, streams, graphs, devices, grid size ---- */

/* A problem kernel k runs that uses scratch (A8 always; A16 through split-K at these sizes). */
static problem scratch_problem(const qk_kernel_info* k) {
    problem p = {.M = k->max_m > 0 ? 3 : 40, .N = 72, .K = 256, .G = 64, .bits = 4, .dtype = QK_DTYPE_F16,
                 .mode = k->mode};
    fill_raw_weights(&p, 0);
    CHECK(fits(k, &p), "%s runs %s", k->name, describe(&p)); /* every cuda kernel takes these */
    return p;
}

/* p (its activations on the device at dx) alone on a stream of its own: the output's bytes. */
static void* alone(const problem* p, qk_packed_weights* packed, const char* kernel, const void* dx) {
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    void* dy = NULL;
    CUDA_OK(cudaMalloc(&dy, y_bytes(p)));
    qk_matmul_args a = args_of(p, dy);
    a.input = dx;
    a.kernel = kernel;
    a.stream = stream;
    CHECK(qk_matmul_packed(packed, &a) == QK_OK, "alone: %s", qk_last_error());
    CUDA_OK(cudaStreamSynchronize(stream));
    void* y = xmalloc(y_bytes(p));
    CUDA_OK(cudaMemcpy(y, dy, y_bytes(p), cudaMemcpyDeviceToHost));
    cudaFree(dy);
    cudaStreamDestroy(stream);
    return y;
}

typedef enum { SHARED_STREAM, PER_THREAD_STREAM, NEW_STREAM_EACH_CALL } stream_use;
static const char* const stream_use_names[] = {"one stream", "per-thread default streams", "a new stream per call"};

typedef struct {
    const problem* p;
    qk_packed_weights* packed;
    const char* kernel;
    stream_use use;
    cudaStream_t shared;
    int calls;
    void* dx;           /* this caller's activations (its own values) */
    unsigned char* dy;  /* calls outputs, one after another */
    qk_status status;   /* the first failure */
    char error[256];
} caller;

/* New streams stay alive until the caller's last call, so that their handles are all distinct (the
 * per-stream table this replaced failed from the 257th). */
static void* call_repeatedly(void* argument) {
    caller* c = argument;
    cudaStream_t* made = calloc((size_t)c->calls, sizeof *made);
    for (int i = 0; i < c->calls && c->status == QK_OK; i++) {
        cudaStream_t stream = c->use == SHARED_STREAM ? c->shared : cudaStreamPerThread;
        if (c->use == NEW_STREAM_EACH_CALL && cudaStreamCreateWithFlags(&made[i], cudaStreamNonBlocking) != cudaSuccess) {
            c->status = QK_ERR_OUT_OF_MEMORY;
            snprintf(c->error, sizeof c->error, "cudaStreamCreateWithFlags failed");
            break;
        }
        if (c->use == NEW_STREAM_EACH_CALL) stream = made[i];
        qk_matmul_args a = args_of(c->p, c->dy + (size_t)i * y_bytes(c->p));
        a.input = c->dx;
        a.kernel = c->kernel;
        a.stream = stream;
        c->status = qk_matmul_packed(c->packed, &a);
        if (c->status != QK_OK) snprintf(c->error, sizeof c->error, "%s", qk_last_error());
    }
    if (c->use == PER_THREAD_STREAM) cudaStreamSynchronize(cudaStreamPerThread);
    for (int i = 0; i < c->calls; i++)
        if (made[i]) cudaStreamDestroy(made[i]); /* their work still completes */
    free(made);
    return NULL;
}

/* CALLERS host threads, each with activations of its own, call kernel k `calls` times at once, with
 * streams used as `use` says; every output must be the bytes of the same call made alone. A scratch
 * buffer shared between calls in flight (as per-stream buffers were) mixes callers' activations
 * when one caller's launches fall between another's: likely over these many calls, not certain. */
static void test_concurrent_calls(const qk_kernel_info* k, qk_backend cuda, stream_use use) {
    enum { CALLERS = 4 };
    const int calls = use == NEW_STREAM_EACH_CALL ? (quick ? 20 : 80) : (quick ? 8 : 64); /* 320 streams */
    problem p = scratch_problem(k);
    set_context("%s: %d threads x %d calls on %s, %s", k->name, CALLERS, calls, stream_use_names[use], describe(&p));
    qk_packed_weights* packed = NULL;
    if (!CHECK(pack_copy(&p, cuda, &packed) == QK_OK, "pack: %s", qk_last_error())) {
        problem_free(&p);
        return;
    }
    cudaStream_t shared;
    CUDA_OK(cudaStreamCreateWithFlags(&shared, cudaStreamNonBlocking));
    caller callers[CALLERS];
    void* expected[CALLERS];
    for (int t = 0; t < CALLERS; t++) {
        fill_activations(&p, t % X_STYLES);
        callers[t] = (caller){.p = &p, .packed = packed, .kernel = k->name, .use = use, .shared = shared,
                              .calls = calls, .dx = to_device(p.x, x_bytes(&p))};
        free(p.x);
        p.x = NULL;
        CUDA_OK(cudaMalloc((void**)&callers[t].dy, (size_t)calls * y_bytes(&p)));
        CUDA_OK(cudaMemset(callers[t].dy, POISON, (size_t)calls * y_bytes(&p)));
        expected[t] = alone(&p, packed, k->name, callers[t].dx);
    }
    pthread_t threads[CALLERS];
    for (int t = 0; t < CALLERS; t++) CHECK(pthread_create(&threads[t], NULL, call_repeatedly, &callers[t]) == 0, "thread");
    for (int t = 0; t < CALLERS; t++) pthread_join(threads[t], NULL);
    CUDA_OK(cudaDeviceSynchronize());
    unsigned char* got = xmalloc((size_t)calls * y_bytes(&p));
    for (int t = 0; t < CALLERS; t++) {
        CHECK(callers[t].status == QK_OK, "caller %d: status %d: %s", t, (int)callers[t].status, callers[t].error);
        CUDA_OK(cudaMemcpy(got, callers[t].dy, (size_t)calls * y_bytes(&p), cudaMemcpyDeviceToHost));
        int same = 0;
        for (int i = 0; i < calls; i++) same += memcmp(got + (size_t)i * y_bytes(&p), expected[t], y_bytes(&p)) == 0;
        CHECK(same == calls, "caller %d: %d of %d outputs differ from the call made alone", t, calls - same, calls);
        cudaFree(callers[t].dx);
        cudaFree(callers[t].dy);
        free(expected[t]);
    }
    free(got);
    cudaStreamDestroy(shared);
    qk_packed_weights_free(packed);
    problem_free(&p);
}

/* A call captured into a CUDA graph on a stream's first use (its scratch becomes memory nodes of
 * the graph), in the capture mode given, replayed twice: each replay's output is the call's alone. */
static void test_graph_capture(const qk_kernel_info* k, qk_backend cuda, enum cudaStreamCaptureMode mode) {
    problem p = scratch_problem(k);
    fill_activations(&p, X_UNIFORM);
    set_context("%s: captured into a graph (%s mode), %s", k->name,
                mode == cudaStreamCaptureModeGlobal ? "global" : "thread-local", describe(&p));
    qk_packed_weights* packed = NULL;
    if (!CHECK(pack_copy(&p, cuda, &packed) == QK_OK, "pack: %s", qk_last_error())) {
        problem_free(&p);
        return;
    }
    void* dx = to_device(p.x, x_bytes(&p));
    void* expected = alone(&p, packed, k->name, dx);
    void* dy = NULL;
    CUDA_OK(cudaMalloc(&dy, y_bytes(&p)));
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph = NULL;
    cudaGraphExec_t replay = NULL;
    CUDA_OK(cudaStreamBeginCapture(stream, mode));
    qk_matmul_args a = args_of(&p, dy);
    a.input = dx;
    a.kernel = k->name;
    a.stream = stream;
    qk_status s = qk_matmul_packed(packed, &a);
    cudaError_t ended = cudaStreamEndCapture(stream, &graph);
    if (CHECK(s == QK_OK, "captured call: status %d: %s", (int)s, qk_last_error()) &&
        CHECK(ended == cudaSuccess, "cudaStreamEndCapture: %s", cudaGetErrorString(ended))) {
        CUDA_OK(cudaGraphInstantiate(&replay, graph, 0));
        void* y = xmalloc(y_bytes(&p));
        for (int r = 0; r < 2; r++) {
            CUDA_OK(cudaMemsetAsync(dy, POISON, y_bytes(&p), stream));
            CUDA_OK(cudaGraphLaunch(replay, stream));
            CUDA_OK(cudaStreamSynchronize(stream));
            CUDA_OK(cudaMemcpy(y, dy, y_bytes(&p), cudaMemcpyDeviceToHost));
            CHECK(memcmp(y, expected, y_bytes(&p)) == 0, "replay %d differs from the call made alone", r);
        }
        free(y);
        cudaGraphExecDestroy(replay);
    }
    (void)cudaGetLastError(); /* a failed capture leaves its error here: the tests after this one go on */
    if (graph) cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
    cudaFree(dx);
    cudaFree(dy);
    free(expected);
    qk_packed_weights_free(packed);
    problem_free(&p);
}

/* More m tiles than grid y holds (65,535): M = 65,536 tiles + 5 rows, K = 32, N = 8 (the tile is
 * 32 rows for A8, 64 for A16 prefill). The first and last 40 rows are checked as problems of their
 * own (rows are independent). Kernels for small M only (max_m) are not run at such M. */
static void test_huge_m(const qk_kernel_info* k, qk_backend cuda) {
    if (k->max_m > 0) return;
    const int32_t tile = k->mode == QK_MODE_A8 ? 32 : 64, rows = 40;
    problem p = {.M = 65536 * tile + 5, .N = 8, .K = 32, .G = 32, .bits = 4, .dtype = QK_DTYPE_F16, .mode = k->mode};
    fill_raw_weights(&p, 1);
    fill_activations(&p, X_UNIFORM);
    set_context("%s: huge M, %s", k->name, describe(&p));
    qk_packed_weights* packed = NULL;
    if (!CHECK(pack_copy(&p, cuda, &packed) == QK_OK, "pack: %s", qk_last_error())) {
        problem_free(&p);
        return;
    }
    void* dx = to_device(p.x, x_bytes(&p));
    void* dy = NULL;
    CUDA_OK(cudaMalloc(&dy, y_bytes(&p)));
    qk_matmul_args a = args_of(&p, dy);
    a.input = dx;
    a.kernel = k->name;
    qk_status s = qk_matmul_packed(packed, &a);
    CUDA_OK(cudaDeviceSynchronize());
    if (CHECK(s == QK_OK, "status %d: %s", (int)s, qk_last_error())) {
        unsigned char* y = xmalloc(y_bytes(&p));
        CUDA_OK(cudaMemcpy(y, dy, y_bytes(&p), cudaMemcpyDeviceToHost));
        for (int end = 0; end < 2; end++) {
            problem part = p; /* rows [first, first + rows) */
            const int32_t first = end ? p.M - rows : 0;
            part.M = rows;
            part.x = (unsigned char*)p.x + (size_t)first * p.K * 2;
            const unsigned char* got = y + (size_t)first * p.N * 2;
            set_context("%s: huge M, rows %d to %d", k->name, first, first + rows - 1);
            if (k->mode == QK_MODE_A8) {
                void* ref = xmalloc(y_bytes(&part));
                reference_output(&part, ref);
                CHECK(memcmp(got, ref, y_bytes(&part)) == 0, "A8 differs from the ref backend's bytes");
                free(ref);
            } else {
                expectation e = expect(&part);
                compare_output(&part, got, e.val, e.err, "vs oracle", NULL);
                expectation_free(&e);
            }
        }
        free(y);
    }
    cudaFree(dx);
    cudaFree(dy);
    qk_packed_weights_free(packed);
    problem_free(&p);
}

/* With two GPUs: weights packed on device 0 run with device 1 current, and activations or an output
 * on device 0 given to a run on device 1, are refused naming the device, with nothing written. */
static void test_other_device(const qk_kernel_info* k, qk_backend cuda) {
    int count = 0;
    CUDA_OK(cudaGetDeviceCount(&count));
    if (count < 2) {
        printf("%s: one GPU: memory on another device not tested\n", k->name);
        return;
    }
    problem p = scratch_problem(k);
    fill_activations(&p, X_UNIFORM);
    set_context("%s: another device's memory, %s", k->name, describe(&p));
    CUDA_OK(cudaSetDevice(0));
    qk_packed_weights *on0 = NULL, *on1 = NULL;
    CHECK(pack_copy(&p, cuda, &on0) == QK_OK, "pack on device 0: %s", qk_last_error());
    void* x0 = to_device(p.x, x_bytes(&p));
    CUDA_OK(cudaSetDevice(1));
    CHECK(pack_copy(&p, cuda, &on1) == QK_OK, "pack on device 1: %s", qk_last_error());
    void* x1 = to_device(p.x, x_bytes(&p));
    unsigned char *y0 = NULL, *y1 = NULL;
    CUDA_OK(cudaMalloc((void**)&y1, y_bytes(&p)));
    CUDA_OK(cudaSetDevice(0));
    CUDA_OK(cudaMalloc((void**)&y0, y_bytes(&p)));
    CUDA_OK(cudaSetDevice(1));
    struct { qk_packed_weights* packed; void* x; unsigned char* y; const char* named; } cases[] = {
        {on0, x1, y1, "the weights' pack is memory of CUDA device 0"},
        {on1, x0, y1, "args->input is memory of CUDA device 0"},
        {on1, x1, y0, "args->output is memory of CUDA device 0"}};
    for (int c = 0; c < 3 && on0 && on1; c++) {
        CUDA_OK(cudaMemset(cases[c].y, POISON, y_bytes(&p)));
        qk_matmul_args a = args_of(&p, cases[c].y);
        a.input = cases[c].x;
        a.kernel = k->name;
        qk_status s = qk_matmul_packed(cases[c].packed, &a);
        CHECK(s == QK_ERR_INVALID_ARGUMENT && strstr(qk_last_error(), cases[c].named), "case %d: status %d: %s", c,
              (int)s, qk_last_error());
        unsigned char* back = xmalloc(y_bytes(&p));
        CUDA_OK(cudaMemcpy(back, cases[c].y, y_bytes(&p), cudaMemcpyDeviceToHost));
        size_t i = 0;
        while (i < y_bytes(&p) && back[i] == POISON) i++;
        CHECK(i == y_bytes(&p), "case %d: a refused call wrote its output", c);
        free(back);
    }
    cudaFree(x1);
    cudaFree(y1);
    qk_packed_weights_free(on1);
    CUDA_OK(cudaSetDevice(0));
    cudaFree(x0);
    cudaFree(y0);
    qk_packed_weights_free(on0);
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
            test_graph_capture(&kernels[i], cuda, cudaStreamCaptureModeThreadLocal);
            test_graph_capture(&kernels[i], cuda, cudaStreamCaptureModeGlobal); /* torch's default */
            run_kernel(&kernels[i], cuda, stream);
            for (int use = SHARED_STREAM; use <= NEW_STREAM_EACH_CALL; use++)
                test_concurrent_calls(&kernels[i], cuda, (stream_use)use);
            if (!quick) test_huge_m(&kernels[i], cuda);
            test_other_device(&kernels[i], cuda);
            ran++;
        }
    CHECK(ran > 0, "the cuda backend has no kernels");
    cudaStreamDestroy(stream);
    return test_end();
}
