/* Threads of the CPU kernels: the thread count, and qk_parallel_for on a pool of pthreads.
 *
 * Why not OpenMP: a parallel region ends with a join that waits for every thread of the team, so
 * one worker that another process keeps off its core delays the call by a whole time slice
 * (measured on two cores, one busy: a 0.3 ms decode took 15.7 ms). Here the participants claim
 * chunks one at a time from atomic counters and the caller waits only for chunks that were
 * claimed: a worker that wakes after every chunk is gone takes no part, and nobody waits for it.
 *
 * One job runs on the pool at a time; a caller that finds the pool busy, or calls from inside a
 * task, runs its tasks itself. The job lives in `pool`, and the high half of each chunk counter
 * is its generation. A worker that wakes late, after its job has finished and maybe after the
 * next one has been written, finds another generation there and claims nothing; so a caller
 * returns as soon as its chunks are done, and never waits for a worker that did not take one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* ---- the thread count ---- */

static atomic_int requested;       /* qk_set_num_threads; 0: the default */
static atomic_int default_threads; /* 0: not computed yet (again after qk_set_num_threads(0)) */

/* QKERNELS_NUM_THREADS if it is a positive integer, else the CPUs this process may run on; at most
 * QK_MAX_THREADS. The count is read where no status can be returned (the first parallel call), so
 * a value that is not used as given is reported on stderr, once per reading, not ignored silently. */
static int32_t compute_default(void) {
    const char* env = getenv("QKERNELS_NUM_THREADS");
    if (env && *env) {
        char* end;
        errno = 0;
        long n = strtol(env, &end, 10);
        if (*end == '\0' && errno == 0 && n > 0) {
            if (n <= QK_MAX_THREADS) return (int32_t)n;
            fprintf(stderr, "qkernels: QKERNELS_NUM_THREADS=%s is above QK_MAX_THREADS: using %d threads\n", env,
                    QK_MAX_THREADS);
            return QK_MAX_THREADS;
        }
    }
    cpu_set_t set;
    long n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                         : sysconf(_SC_NPROCESSORS_ONLN);
    n = n < 1 ? 1 : n < QK_MAX_THREADS ? n : QK_MAX_THREADS;
    if (env && *env)
        fprintf(stderr, "qkernels: QKERNELS_NUM_THREADS='%s' is not a positive integer: using %ld threads (the CPUs "
                        "this process may run on)\n", env, n);
    return (int32_t)n;
}

qk_status qk_set_num_threads(int32_t threads) {
    if (threads < 0 || threads > QK_MAX_THREADS)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "threads=%d is outside [0, QK_MAX_THREADS=%d]",
                       (int)threads, QK_MAX_THREADS);
    atomic_store(&requested, threads);
    if (threads == 0) atomic_store(&default_threads, 0); /* re-read the environment and affinity */
    return qk_succeed();
}

int32_t qk_get_num_threads(void) {
    int32_t n = atomic_load_explicit(&requested, memory_order_relaxed);
    if (n > 0) return n;
    n = atomic_load_explicit(&default_threads, memory_order_relaxed);
    if (n == 0) {
        n = compute_default();  /* racing threads compute the same value */
        atomic_store_explicit(&default_threads, n, memory_order_relaxed);
    }
    return n;
}

int32_t qk_threads_for(int32_t M, int32_t N, int32_t K) {
    enum { MIN_THREAD_MACS = 1 << 20 };
    double work = (double)M * N * K / MIN_THREAD_MACS;
    int32_t threads = qk_get_num_threads();
    return work < threads ? (work < 1.0 ? 1 : (int32_t)work) : threads;
}

/* ---- waiting ---- */

/* How long a caller spins for the last chunks before it yields its core (so that a worker
 * preempted on it can finish), and a worker spins for its next job. After its spin a worker polls,
 * yielding its core between looks, until POLL_NS, and only then sleeps: from Python, calls come
 * a few us apart back to back and a model's other ops take tens of us between layers, and a worker
 * woken from sleep came so late that the caller ran most of the call alone (README, Threads: 1.2x
 * at M = 1 back to back, 1.3-1.5x decode tokens/s on SmolLM2, Zen 4 under KVM). Yielding, not
 * spinning, leaves a shared core to the other thread: with a process spinning on the other core,
 * 2 threads stayed as fast as 1, where spinning all of POLL_NS took 1.07-1.22x as long. */
enum { CALLER_SPIN_NS = 5000, WORKER_SPIN_NS = 20000, POLL_NS = 200000 };

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void futex_wait(_Atomic uint32_t* word, uint32_t expected) {
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t* word) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* ---- the pool ---- */

typedef void setup_fn(void);

typedef struct job {
    qk_task_fn* fn;
    void* arg;
    int32_t count, grain;
    uint32_t chunks;
    int32_t parts;  /* participants invited, the caller included */
    setup_fn* setup;
} job;

/* Participant t of a job starts on chunks [t * chunks / parts, (t + 1) * chunks / parts), its
 * range, and then takes what is left of the others' ranges, one chunk at a time: each participant
 * mostly claims on its own cache line, and the range of a worker that is late or preempted is
 * run by the others. Worker i (1 <= i < QK_MAX_THREADS) is always participant i, so a call on T
 * threads invites workers 1 .. T-1 and thread indices are unique without any bookkeeping. */
typedef struct slot {
    _Alignas(64) _Atomic uint64_t claim; /* of range t: generation << 32 | next chunk */
    _Atomic uint32_t finished;           /* chunks its participant has run in this job */
    _Atomic uint32_t gen;                /* worker: the last job it was invited to (0: none); its futex */
    _Atomic uint32_t sleeping;           /* worker: it sleeps (or is about to) on gen */
} slot;

/* A range whose counter holds this, with any generation, is closed: nobody claims from it. */
#define CLOSED UINT32_MAX

static struct {
    /* The job: written by its caller before it opens the counters, read by the workers. Atomic
     * because a late worker may read them while the next caller writes them (it then claims
     * nothing, see run_chunks). */
    _Atomic(qk_task_fn*) fn;
    _Atomic(void*) arg;
    _Atomic int32_t count, grain;
    _Atomic uint32_t chunks;
    _Atomic int32_t parts;
    _Atomic(setup_fn*) setup;
    _Alignas(64) atomic_flag busy; /* a caller holds the pool */
    uint32_t generation;           /* of the last job; the holder's */
    int32_t parts_open;            /* ranges the last job opened; the holder's */
    int32_t workers;               /* started; the holder's */
    slot slot[QK_MAX_THREADS];     /* [0]: the caller's range */
} pool = {.busy = ATOMIC_FLAG_INIT};

/* Set on the pool's workers, and on a caller while it runs tasks: a call from there runs inline. */
static _Thread_local int in_task;

/* The set-up functions this thread has run (a backend's thread_setup). Backends are few; past the
 * list's end a set-up runs again on each call, which an idempotent set-up allows. (x86_amx has
 * none: it loads its tile configuration per task, since another library may change it.) */
static _Thread_local setup_fn* setups_run[16];
static _Thread_local int setups_count;

static void setup_thread(setup_fn* setup) {
    if (!setup) return;
    for (int i = 0; i < setups_count; i++)
        if (setups_run[i] == setup) return;
    setup();
    if (setups_count < (int)(sizeof setups_run / sizeof *setups_run)) setups_run[setups_count++] = setup;
}

static void run_chunk(const job* j, uint32_t chunk, int32_t thread) {
    int64_t begin = (int64_t)chunk * j->grain, end = begin + j->grain;
    j->fn(j->arg, (int32_t)begin, (int32_t)(end < j->count ? end : j->count), thread);
}

static void run_inline(const job* j) {
    int outer = in_task;
    in_task = 1;
    setup_thread(j->setup);
    for (uint32_t c = 0; c < j->chunks; c++) run_chunk(j, c, 0);
    in_task = outer;
}

static uint32_t range_begin(const job* j, int32_t t) {
    return (uint32_t)((uint64_t)j->chunks * (uint32_t)t / (uint32_t)j->parts);
}

/* Claims and runs chunks of job `gen` as participant `self`, its own range first, until none is
 * left; counts them in its slot's `finished`. A claim succeeds only while the counter holds
 * generation gen, which it does only until the job is over; so *j, which a worker read before
 * claiming, is that job's whenever a claim succeeds. */
static void run_chunks(const job* j, uint32_t gen, int32_t self) {
    uint32_t ran = 0;
    for (int32_t k = 0; k < j->parts; k++) {
        int32_t t = (self + k) % j->parts;
        _Atomic uint64_t* counter = &pool.slot[t].claim;
        uint32_t end = range_begin(j, t + 1);
        uint64_t c = atomic_load_explicit(counter, memory_order_acquire);
        for (;;) {
            if ((uint32_t)(c >> 32) != gen) return;  /* the job is over */
            if ((uint32_t)c >= end) break;
            if (!atomic_compare_exchange_weak_explicit(counter, &c, c + 1, memory_order_acq_rel,
                                                       memory_order_acquire))
                continue;  /* c now holds the counter's value */
            if (ran == 0) setup_thread(j->setup);
            run_chunk(j, (uint32_t)c, self);
            atomic_store_explicit(&pool.slot[self].finished, ++ran, memory_order_release);
            c++;  /* the likely next value: one exchange per claim when nobody claimed in between */
        }
    }
}

static uint32_t wait_for_job(slot* w, uint32_t seen) {
    uint32_t gen;
    uint64_t start = now_ns(), t;
    do {
        for (int i = 0; i < 16; i++) {
            if ((gen = atomic_load_explicit(&w->gen, memory_order_acquire)) != seen) return gen;
            cpu_relax();
        }
    } while ((t = now_ns()) < start + WORKER_SPIN_NS);
    for (; t < start + POLL_NS; t = now_ns()) {
        if ((gen = atomic_load_explicit(&w->gen, memory_order_acquire)) != seen) return gen;
        sched_yield();
    }
    /* Sequentially consistent, as in invite: either the caller sees sleeping and wakes us, or we
     * see its new generation here. */
    atomic_store(&w->sleeping, 1);
    while ((gen = atomic_load(&w->gen)) == seen) futex_wait(&w->gen, seen);
    atomic_store_explicit(&w->sleeping, 0, memory_order_relaxed);
    return gen;
}

static void* worker_main(void* p) {
    int32_t index = (int32_t)(intptr_t)p;
    slot* w = &pool.slot[index];
    in_task = 1;
    for (uint32_t seen = 0;;) {
        seen = wait_for_job(w, seen);
        /* Acquire: a worker that reads a later job's field also sees its counter closed. */
        job j = {atomic_load_explicit(&pool.fn, memory_order_acquire),
                 atomic_load_explicit(&pool.arg, memory_order_acquire),
                 atomic_load_explicit(&pool.count, memory_order_acquire),
                 atomic_load_explicit(&pool.grain, memory_order_acquire),
                 atomic_load_explicit(&pool.chunks, memory_order_acquire),
                 atomic_load_explicit(&pool.parts, memory_order_acquire),
                 atomic_load_explicit(&pool.setup, memory_order_acquire)};
        run_chunks(&j, seen, index);
    }
    return NULL;
}

/* A forked child has only the forking thread: it starts a pool of its own. */
static void forget_workers(void) {
    pool.workers = 0;
    atomic_flag_clear(&pool.busy);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_workers); }

/* Starts workers up to `helpers` (holder only); returns how many there are, up to that. */
static int32_t grow(int32_t helpers) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handler);
    while (pool.workers < helpers) {
        int32_t i = pool.workers + 1;
        atomic_store(&pool.slot[i].gen, 0);
        atomic_store(&pool.slot[i].sleeping, 0);
        /* Workers take no signals: they belong to the application's threads. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        int failed = pthread_create(&t, &attr, worker_main, (void*)(intptr_t)i);
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (failed) break;
        pool.workers = i;
    }
    return pool.workers < helpers ? pool.workers : helpers;
}

static void invite(slot* w, uint32_t gen) {
    atomic_store(&w->gen, gen); /* sequentially consistent before the load: see wait_for_job */
    if (atomic_load(&w->sleeping)) futex_wake(&w->gen);
}

/* Writes the job into the pool and invites its workers, 1 .. j->parts - 1 (holder only). */
static uint32_t publish(const job* j) {
    uint32_t gen = ++pool.generation;
    if (gen == 0) gen = pool.generation = 1;  /* 0 means "no job" to a new worker */
    /* Close the last job's ranges first: they are the only ones a late worker could claim from
     * (older jobs' were closed the same way), and one that reads any field below then also sees
     * them closed. */
    for (int32_t t = 0; t < pool.parts_open; t++)
        atomic_store_explicit(&pool.slot[t].claim, (uint64_t)gen << 32 | CLOSED, memory_order_relaxed);
    atomic_store_explicit(&pool.fn, j->fn, memory_order_release);
    atomic_store_explicit(&pool.arg, j->arg, memory_order_release);
    atomic_store_explicit(&pool.count, j->count, memory_order_release);
    atomic_store_explicit(&pool.grain, j->grain, memory_order_release);
    atomic_store_explicit(&pool.chunks, j->chunks, memory_order_release);
    atomic_store_explicit(&pool.parts, j->parts, memory_order_release);
    atomic_store_explicit(&pool.setup, j->setup, memory_order_release);
    /* No chunk of the last job is outstanding, and only this job's participants claim now. */
    for (int32_t t = 0; t < j->parts; t++) {
        atomic_store_explicit(&pool.slot[t].finished, 0, memory_order_relaxed);
        atomic_store_explicit(&pool.slot[t].claim, (uint64_t)gen << 32 | range_begin(j, t),
                              memory_order_release);
    }
    pool.parts_open = j->parts;
    for (int32_t t = 1; t < j->parts; t++) invite(&pool.slot[t], gen);
    return gen;
}

static uint32_t finished(int32_t parts) {
    uint32_t n = 0;
    for (int32_t t = 0; t < parts; t++)
        n += atomic_load_explicit(&pool.slot[t].finished, memory_order_acquire);
    return n;
}

/* Waits for the chunks that workers claimed: spins briefly, then yields the core, so that a
 * worker preempted on this core can finish its chunk. */
static void wait_for_workers(uint32_t chunks, int32_t parts) {
    uint64_t deadline = 0;
    while (finished(parts) != chunks) {
        if (deadline == 0) deadline = now_ns() + CALLER_SPIN_NS;
        if (now_ns() < deadline) cpu_relax();
        else sched_yield();
    }
}

void qk_parallel_for(const qk_exec* exec, int32_t count, int32_t grain, qk_task_fn* fn, void* arg) {
    if (count <= 0) return;
    if (grain < 1) grain = 1;
    job j = {fn, arg, count, grain, (uint32_t)((count - 1) / grain + 1), 1, exec->thread_setup};
    int32_t threads = exec->threads < QK_MAX_THREADS ? exec->threads : QK_MAX_THREADS;
    int32_t helpers = (threads < (int64_t)j.chunks ? threads : (int32_t)j.chunks) - 1;
    if (helpers <= 0 || in_task ||
        atomic_flag_test_and_set_explicit(&pool.busy, memory_order_acquire)) {
        run_inline(&j);
        return;
    }
    j.parts = grow(helpers) + 1;
    uint32_t gen = publish(&j);
    in_task = 1;
    run_chunks(&j, gen, 0);
    wait_for_workers(j.chunks, j.parts);
    in_task = 0;
    atomic_flag_clear_explicit(&pool.busy, memory_order_release);
}
