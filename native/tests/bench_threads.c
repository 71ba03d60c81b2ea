/* Measures qk_parallel_for against an OpenMP loop on a short memory-bound job, on a quiet machine
 * and with another process spinning on one core. Not a test: it prints numbers.
 *
 *   gcc -O2 -Wall -Wextra -pthread -fopenmp -Inative/include -Inative/core \
 *       native/tests/bench_threads.c native/core/threads.c native/core/status.c -o bench_threads
 *   ./bench_threads pool; ./bench_threads omp
 *
 * The job sums a 9 MiB buffer in 256 chunks (one task each), about the memory traffic of a 0.3 ms
 * decode step. Each mode runs in its own process, so that OpenMP's threads do not spin beside the
 * pool's. Times are per call, over 2000 calls after 200 of warm-up.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

enum { CHUNKS = 256, CHUNK = 9 * 1024 * 1024 / 4 / CHUNKS, WARMUP = 200, CALLS = 2000 };

static int32_t* buffer;
static int64_t partial[CHUNKS];

static void sum_chunks(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)arg, (void)thread;
    for (int32_t c = begin; c < end; c++) {
        const int32_t* p = buffer + (size_t)c * CHUNK;
        int64_t s = 0;
        for (int32_t i = 0; i < CHUNK; i++) s += p[i];
        partial[c] = s;
    }
}

static void run_pool(int threads) {
    qk_exec exec = {sizeof exec, threads, NULL, 0, NULL, NULL};
    qk_parallel_for(&exec, CHUNKS, 1, sum_chunks, NULL);
}

static void run_omp(int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int c = 0; c < CHUNKS; c++) sum_chunks(NULL, c, c + 1, 0);
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static int by_value(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static void measure(const char* mode, const char* machine, void (*run)(int), int threads) {
    static double t[CALLS];
    for (int i = 0; i < WARMUP; i++) run(threads);
    double total = 0;
    for (int i = 0; i < CALLS; i++) {
        double t0 = now_ms();
        run(threads);
        t[i] = now_ms() - t0;
        total += t[i];
    }
    qsort(t, CALLS, sizeof *t, by_value);
    printf("%-4s  %-6s  threads=%d  median %.3f ms  mean %.3f  p90 %.3f  max %.3f\n", mode, machine,
           threads, t[CALLS / 2], total / CALLS, t[CALLS * 9 / 10], t[CALLS - 1]);
}

int main(int argc, char** argv) {
    int omp = argc > 1 && strcmp(argv[1], "omp") == 0;
    if (argc != 2 || (!omp && strcmp(argv[1], "pool") != 0)) {
        fprintf(stderr, "usage: %s pool|omp\n", argv[0]);
        return 2;
    }
#ifndef _OPENMP
    if (omp) {
        fprintf(stderr, "built without -fopenmp\n");
        return 2;
    }
#endif
    void (*run)(int) = omp ? run_omp : run_pool;
    buffer = malloc(sizeof *buffer * CHUNK * CHUNKS);
    for (size_t i = 0; i < (size_t)CHUNK * CHUNKS; i++) buffer[i] = (int32_t)(i & 0xff);

    measure(argv[1], "quiet", run, 1);
    measure(argv[1], "quiet", run, 2);

    pid_t spinner = fork();  /* a competing process, free to run on any core */
    if (spinner == 0)
        for (volatile int x = 0;; x++) {}
    usleep(100 * 1000);
    measure(argv[1], "1 busy", run, 1);
    measure(argv[1], "1 busy", run, 2);
    kill(spinner, SIGKILL);
    waitpid(spinner, NULL, 0);

    int64_t sum = 0;  /* read the results, or the compiler drops the loop */
    for (int c = 0; c < CHUNKS; c++) sum += partial[c];
    return sum == (int64_t)CHUNK * CHUNKS * 255 / 2 ? 0 : 1;
}
