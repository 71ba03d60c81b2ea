/* Tests of native/core/threads.c alone: qk_parallel_for and the thread count.
 *
 *   gcc -O2 -Wall -Wextra -pthread -Inative/include -Inative/core native/tests/test_threads.c \
 *       native/core/threads.c native/core/status.c -o test_threads && ./test_threads
 *
 * Also worth running with -fsanitize=thread and with -fsanitize=address,undefined: each call's
 * state is freed as soon as the call returns, so a worker that touched a finished job would show.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static atomic_int failures;
static atomic_long worker_tasks;  /* tasks run by participants other than the caller */

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            flockfile(stderr);                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            funlockfile(stderr);                                           \
            atomic_fetch_add(&failures, 1);                                \
        }                                                                  \
    } while (0)

/* ---- thread set-up: counted per OS thread ---- */

static _Thread_local int runs_a, runs_b;
static atomic_int setup_reruns;

static void setup_a(void) { if (runs_a++) atomic_fetch_add(&setup_reruns, 1); }
static void setup_b(void) { if (runs_b++) atomic_fetch_add(&setup_reruns, 1); }

/* ---- one checked call ---- */

typedef struct call {
    int32_t count, grain, threads;
    void (*setup)(void);
    atomic_int* hits;                    /* per task */
    atomic_long owner[QK_MAX_THREADS];   /* the OS thread that used each index (0: none) */
    atomic_int inside[QK_MAX_THREADS];   /* participants running with each index now */
    atomic_int errors;
} call;

static void checked_task(void* p, int32_t begin, int32_t end, int32_t thread) {
    call* c = p;
    if (thread < 0 || thread >= c->threads) {
        atomic_fetch_add(&c->errors, 1);
        return;
    }
    int32_t expected_end = begin + c->grain < c->count ? begin + c->grain : c->count;
    if (begin < 0 || begin >= c->count || begin % c->grain != 0 || end != expected_end)
        atomic_fetch_add(&c->errors, 1);
    long tid = gettid(), none = 0;
    if (!atomic_compare_exchange_strong(&c->owner[thread], &none, tid) && none != tid)
        atomic_fetch_add(&c->errors, 1);  /* two OS threads with one index */
    if (atomic_fetch_add(&c->inside[thread], 1) != 0) atomic_fetch_add(&c->errors, 1);
    if ((c->setup == setup_a && runs_a != 1) || (c->setup == setup_b && runs_b != 1))
        atomic_fetch_add(&c->errors, 1);  /* set-up missing on this thread */
    for (int32_t i = begin; i < end && i < c->count; i++) atomic_fetch_add(&c->hits[i], 1);
    if (thread != 0) atomic_fetch_add(&worker_tasks, end - begin);
    atomic_fetch_sub(&c->inside[thread], 1);
}

static void run_checked(int32_t count, int32_t grain, int32_t threads, void (*setup)(void)) {
    call* c = calloc(1, sizeof *c);
    c->hits = calloc((size_t)count + 1, sizeof *c->hits);
    c->count = count, c->grain = grain, c->threads = threads, c->setup = setup;
    qk_exec exec = {sizeof exec, threads, NULL, 0, NULL, setup};
    qk_parallel_for(&exec, count, grain, checked_task, c);
    int wrong = 0;
    for (int32_t i = 0; i < count; i++) wrong += atomic_load(&c->hits[i]) != 1;
    CHECK(wrong == 0, "count=%d grain=%d threads=%d: %d tasks did not run exactly once", count, grain,
          threads, wrong);
    CHECK(atomic_load(&c->errors) == 0, "count=%d grain=%d threads=%d: %d bad ranges, indices or set-ups",
          count, grain, threads, atomic_load(&c->errors));
    free(c->hits);
    free(c);  /* right away: a late worker touching it would be a use after free */
}

static void test_combinations(void) {
    static const int32_t counts[] = {0, 1, 2, 3, 5, 16, 64, 257, 1000};
    static const int32_t grains[] = {1, 2, 3, 7, 64, 300, 5000};
    static const int32_t threads[] = {1, 2, 3, 4, 8, 17, QK_MAX_THREADS};
    void (*setups[])(void) = {NULL, setup_a, setup_b};
    int n = 0;
    for (int rep = 0; rep < 3; rep++)
        for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++)
            for (size_t gi = 0; gi < sizeof grains / sizeof *grains; gi++)
                for (size_t ti = 0; ti < sizeof threads / sizeof *threads; ti++, n++)
                    run_checked(counts[ci], grains[gi], threads[ti], setups[n % 3]);
    CHECK(atomic_load(&worker_tasks) > 0, "the workers ran no task");
    printf("combinations: %d calls, %ld tasks run by workers\n", n, atomic_load(&worker_tasks));
}

/* ---- concurrent callers ---- */

static void* caller_main(void* p) {
    unsigned seed = (unsigned)(uintptr_t)p;
    for (int i = 0; i < 3000; i++)
        run_checked(rand_r(&seed) % 300, 1 + rand_r(&seed) % 20, 1 + rand_r(&seed) % 5,
                    (i & 1) ? setup_a : setup_b);
    return NULL;
}

static void test_concurrent_callers(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, caller_main, (void*)(uintptr_t)(i + 1));
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("concurrent callers: 4 x 3000 calls\n");
}

/* ---- nested calls: serial on the calling thread ---- */

typedef struct nested {
    long tid;         /* the outer task's OS thread */
    atomic_int hits;
    atomic_int errors;
} nested;

static void inner_task(void* p, int32_t begin, int32_t end, int32_t thread) {
    nested* n = p;
    if (gettid() != n->tid || thread != 0) atomic_fetch_add(&n->errors, 1);
    atomic_fetch_add(&n->hits, end - begin);
}

static atomic_int nested_errors;

static void outer_task(void* p, int32_t begin, int32_t end, int32_t thread) {
    (void)p, (void)thread;
    for (int32_t i = begin; i < end; i++) {
        nested n = {.tid = gettid()};
        qk_exec exec = {sizeof exec, 4, NULL, 0, NULL, setup_a};
        qk_parallel_for(&exec, 100, 3, inner_task, &n);
        if (atomic_load(&n.hits) != 100 || atomic_load(&n.errors) != 0) atomic_fetch_add(&nested_errors, 1);
    }
}

static void test_nested(void) {
    for (int32_t threads = 1; threads <= 4; threads++) {
        qk_exec exec = {sizeof exec, threads, NULL, 0, NULL, NULL};
        qk_parallel_for(&exec, 64, 1, outer_task, NULL);
    }
    CHECK(atomic_load(&nested_errors) == 0, "%d nested calls not serial on their thread or incomplete",
          atomic_load(&nested_errors));
    printf("nested calls\n");
}

/* ---- many tiny calls: no hang, no touching a finished call ---- */

static void tiny_task(void* p, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    atomic_fetch_add((atomic_int*)p, end - begin);
}

static void test_many_calls(void) {
    int wrong = 0;
    for (int i = 0; i < 100000; i++) {
        atomic_int* sum = calloc(1, sizeof *sum);
        qk_exec exec = {sizeof exec, 2 + i % 2, NULL, 0, NULL, NULL};
        qk_parallel_for(&exec, 2 + i % 3, 1, tiny_task, sum);
        wrong += atomic_load(sum) != 2 + i % 3;
        free(sum);
        if (i % 100 == 0) usleep(300); /* past threads.c's POLL_NS (200 us): workers sleep, the futex path */
        if (i % 100 == 50) usleep(50);  /* within it: workers poll, yielding their cores */
    }
    CHECK(wrong == 0, "%d of 100000 tiny calls incomplete", wrong);
    printf("many calls: 100000\n");
}

/* ---- the thread count ---- */

static int32_t affinity_cpus(void) {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : -1;
}

static void test_thread_count(void) {
    CHECK(qk_set_num_threads(-1) == QK_ERR_INVALID_ARGUMENT && strstr(qk_last_error(), "threads"),
          "threads=-1: %s", qk_last_error());
    CHECK(qk_set_num_threads(QK_MAX_THREADS + 1) == QK_ERR_INVALID_ARGUMENT &&
              strstr(qk_last_error(), "threads"), "threads=QK_MAX_THREADS+1: %s", qk_last_error());
    CHECK(qk_set_num_threads(3) == QK_OK && qk_last_status() == QK_OK && qk_get_num_threads() == 3,
          "threads=3");
    CHECK(qk_set_num_threads(-5) != QK_OK && qk_get_num_threads() == 3, "a refused value changed it");
    CHECK(qk_set_num_threads(QK_MAX_THREADS) == QK_OK && qk_get_num_threads() == QK_MAX_THREADS,
          "threads=QK_MAX_THREADS");

    CHECK(qk_set_num_threads(8) == QK_OK, "threads=8");
    CHECK(qk_threads_for(1, 1, 1) == 1, "tiny matmul: %d threads", qk_threads_for(1, 1, 1));
    CHECK(qk_threads_for(1, 1 << 20, 3) == 3, "3 * 2^20 MACs: %d threads", qk_threads_for(1, 1 << 20, 3));
    CHECK(qk_threads_for(4096, 4096, 4096) == 8, "large matmul: %d threads",
          qk_threads_for(4096, 4096, 4096));

    static const struct { const char* env; int32_t expected; } cases[] = {
        {"5", 5}, {"1", 1}, {"100000", QK_MAX_THREADS}, {"0", 0}, {"-2", 0}, {"abc", 0},
        {"4x", 0}, {"", 0}, {"99999999999999999999", 0}, {NULL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        if (cases[i].env) setenv("QKERNELS_NUM_THREADS", cases[i].env, 1);
        else unsetenv("QKERNELS_NUM_THREADS");
        int32_t expected = cases[i].expected ? cases[i].expected : affinity_cpus();
        CHECK(qk_set_num_threads(0) == QK_OK && qk_get_num_threads() == expected,
              "QKERNELS_NUM_THREADS=%s: %d threads, expected %d", cases[i].env ? cases[i].env : "(unset)",
              qk_get_num_threads(), expected);
    }
    printf("thread count\n");
}

int main(void) {
    alarm(600);  /* a hang fails the test */
    test_thread_count();
    test_combinations();
    test_concurrent_callers();
    test_nested();
    test_many_calls();
    CHECK(atomic_load(&setup_reruns) == 0, "a thread set-up ran twice on one thread (%d times)",
          atomic_load(&setup_reruns));
    int f = atomic_load(&failures);
    printf("test_threads: %s (%d failures)\n", f ? "FAILED" : "passed", f);
    return f != 0;
}
