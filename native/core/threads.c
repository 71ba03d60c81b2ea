/* The thread count of the multithreaded kernels: an API override, else OpenMP's default. */
#include <stdatomic.h>

#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static atomic_int requested; /* 0: OpenMP's default (OMP_NUM_THREADS, else every core) */

qk_status qk_set_num_threads(int32_t threads) {
    if (threads < 0) return qk_fail(QK_ERR_INVALID_ARGUMENT, "threads=%d is negative", (int)threads);
    atomic_store(&requested, threads);
    return qk_succeed();
}

int32_t qk_get_num_threads(void) {
#ifdef _OPENMP
    int n = atomic_load(&requested);
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

int32_t qk_thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int32_t qk_threads_for(int32_t M, int32_t N, int32_t K) {
    enum { MIN_THREAD_MACS = 1 << 20 };
    double work = (double)M * N * K / MIN_THREAD_MACS;
    int32_t threads = qk_get_num_threads();
    return work < threads ? (work < 1.0 ? 1 : (int32_t)work) : threads;
}

/* Temporary serial version until the pool lands. */
void qk_parallel_for(const qk_exec* exec, int32_t count, int32_t grain, qk_task_fn* fn, void* arg) {
    static _Thread_local void (*done)(void);
    if (exec->thread_setup && done != exec->thread_setup) {
        exec->thread_setup();
        done = exec->thread_setup;
    }
    (void)grain;
    if (count > 0) fn(arg, 0, count, 0);
}
