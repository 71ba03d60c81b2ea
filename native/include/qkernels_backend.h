/*
 * qkernels backend interface: what a backend gives the core, and what the core gives its kernels.
 *
 * A backend is one qk_backend_desc: a name, whether it can run here, its kernels (best first), and
 * its own pack and free. The built-in backends register themselves when the library first needs
 * them; a backend in another shared library registers from that library's qk_backend_library_init,
 * which the core calls after loading it (see qk_register_backend). The core owns argument checks,
 * kernel selection, plans, threads and workspace; a kernel owns only its arithmetic.
 *
 * A kernel's run function gets an execution context (qk_exec): how many threads it may use, a
 * workspace of the size it asked for, the caller's stream, and qk_parallel_for, which runs the
 * backend's per-thread set-up once on each thread before its first task there. Kernels allocate
 * nothing.
 */
#ifndef QKERNELS_BACKEND_H
#define QKERNELS_BACKEND_H

#include "qkernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

/* Bumped when a declaration below changes incompatibly; a backend states the version it was built
 * with and the core refuses others. */
enum { QK_BACKEND_ABI_VERSION = 2 }; /* 2: qk_kernel_desc.required_cpu */

/* Weights as a kernel sees them. */
typedef struct qk_kernel_weights {
    qk_weights format;     /* shape and format; the array pointers are valid only for a backend
                              without its own layout (else NULL: the caller may have freed them) */
    int32_t asymmetric;    /* zero points were given */
    int32_t has_offsets;   /* offsets were given */
    const void* packed;    /* the backend's pack; NULL for a backend without its own layout */
} qk_kernel_weights;

typedef struct qk_exec qk_exec;

/* Runs tasks [begin, end) on participant `thread` (below exec->threads; one participant at a time
 * per index, so per-thread workspace can be indexed by it). */
typedef void qk_task_fn(void* arg, int32_t begin, int32_t end, int32_t thread);

struct qk_exec {
    uint32_t size;           /* sizeof(qk_exec) */
    int32_t threads;         /* participants qk_parallel_for may use (>= 1) */
    void* workspace;         /* 64-byte aligned, of the size the kernel's workspace_size asked */
    size_t workspace_size;
    void* stream;            /* qk_matmul_args.stream, for backends on a device queue */
    void (*thread_setup)(void); /* the backend's, or NULL */
};

/* Runs fn over tasks [0, count) in chunks of `grain`, on up to exec->threads threads: the calling
 * thread and pooled workers, which claim chunks as they arrive. A worker that the machine has not
 * scheduled yet gets no chunk: the others take its share, so a busy core delays a call by at most
 * one chunk, never by a whole time slice of another process. Returns when every task has run. */
void qk_parallel_for(const qk_exec* exec, int32_t count, int32_t grain, qk_task_fn* fn, void* arg);

typedef struct qk_kernel_desc {
    const char* name;         /* <backend>_<mode>_<weight bits>_<tile MxN>, unique */
    qk_mode mode;
    uint32_t bits_mask;       /* 1 << bits for each supported width */
    uint32_t dtype_mask;      /* 1 << qk_dtype for each supported input dtype */
    int32_t group_multiple;   /* group size must be a multiple of this (1: any) */
    int32_t max_group_size;   /* 0: any */
    int32_t max_m;            /* preferred for M <= max_m; 0: any */
    uint32_t format_flags;    /* QK_FORMAT_* it supports */
    int32_t canonical;        /* reads the canonical arrays (format pointers), not the pack */
    /* Bytes of workspace one call needs (0: none); NULL: none. */
    size_t (*workspace_size)(const qk_kernel_weights* weights, const qk_matmul_args* args, int32_t threads);
    /* Runs one validated matmul. May fail only before writing the output. */
    qk_status (*run)(const qk_exec* exec, const qk_kernel_weights* weights, const qk_matmul_args* args);
    uint64_t required_cpu;    /* bits of qk_cpu_features() it needs beyond its backend's (0: none); a
                                 kernel without them is listed but unavailable, and never selected */
} qk_kernel_desc;

typedef struct qk_backend_desc {
    uint32_t size;            /* sizeof(qk_backend_desc) */
    uint32_t abi_version;     /* QK_BACKEND_ABI_VERSION */
    const char* name;
    int32_t priority;         /* automatic dispatch tries higher first (ref: 0, AVX2: 20, ...) */
    uint64_t required_cpu;    /* bits of qk_cpu_features() it needs, all of them */
    /* Why it cannot run here beyond required_cpu (no GPU, no driver, a refused permission), or NULL
     * or "" when it can. NULL function: nothing beyond required_cpu. Called once, at registration. */
    const char* (*probe)(void);
    /* Packs canonical weights into the backend's layout; NULL: the kernels read the canonical
     * format. *packed stays owned by the backend and is released with free_packed. */
    qk_status (*pack)(const qk_weights* weights, void** packed, size_t* bytes);
    void (*free_packed)(void* packed);
    void (*thread_setup)(void);   /* run once per thread before its first kernel task; or NULL */
    const qk_kernel_desc* kernels;
    int32_t kernel_count;
    int32_t uses_stream;      /* runs on a device queue: args->stream is its stream, and input,
                                 output and bias are device pointers, so automatic dispatch never
                                 picks it (it runs when forced: by id, QKERNELS_BACKEND or kernel
                                 name). A CPU backend (0) is refused a stream, which would mean
                                 device pointers. */
} qk_backend_desc;

/* Registers a backend; the core keeps the pointer (the desc and its kernels must live as long as
 * the process). *id (may be NULL) gets its id. Fails on a wrong size or ABI version, a name already
 * registered, or a full registry. A backend library exports
 *     qk_status qk_backend_library_init(void);
 * which registers its backends; the core loads every libqkernels_*.so beside libqkernels and every
 * library named in QKERNELS_BACKEND_PATH (colon-separated files or directories) the first time it
 * needs the registry. */
qk_status qk_register_backend(const qk_backend_desc* desc, qk_backend* id);

/* For kernels: records a failure message (printf-style) for qk_last_error and returns status. */
qk_status qk_fail(qk_status status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#endif /* QKERNELS_BACKEND_H */
