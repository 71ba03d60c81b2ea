/* The core's own internals: argument checks, kernel selection, packs and runs. The entry points
 * (api.c, plan.c) are compositions of these. */
#ifndef QK_DISPATCH_H
#define QK_DISPATCH_H

#include <stdatomic.h>

#include "internal.h"

/* ---- checks (validate.c): each fails with a message naming the argument ---- */

/* Copies the caller's struct into *out, reading only the fields its size covers (the rest take
 * their defaults), after checking the size. */
qk_status qk_read_weights(const qk_weights* in, qk_weights* out);
qk_status qk_read_args(const qk_matmul_args* in, qk_matmul_args* out);
/* The format and pointers of canonical weights; with values set, also the range of 4-bit zero points
 * (a pass over them, done where weights are consumed, not where a kernel is only selected). */
qk_status qk_check_weights(const qk_weights* w, int values);
qk_status qk_check_format(int32_t N, int32_t K, int32_t bits, int32_t group_size);
qk_status qk_check_dtype(qk_dtype dtype, const char* argument);
qk_status qk_check_args(const qk_matmul_args* a);
/* The checks of one run: pointers, M and alignment (plans run only these). prefix: "args->" or "". */
qk_status qk_check_run(const char* prefix, const void* input, void* output, const float* bias, int32_t M,
                       qk_dtype dtype);
qk_status qk_check_struct_size(uint32_t size, size_t base, size_t full, const char* type);

/* ---- selection (select.c) ---- */

typedef struct qk_kernel_ref {
    qk_backend backend;
    const qk_kernel_desc* desc;
} qk_kernel_ref;

/* What a kernel must be able to run. */
typedef struct qk_problem {
    const qk_weights* weights;
    int32_t has_offsets;  /* packed weights' format keeps no array pointers, offsets included */
    qk_mode mode;
    qk_dtype dtype;
    int32_t M;
} qk_problem;

/* Where the weights are. A backend with its own layout may also have canonical variants: kernels
 * that read the canonical arrays (for stateless calls at small M, where packing would cost more
 * than the multiplication). Packed weights cannot run them; stateless calls prefer them. */
enum qk_layout_need {
    QK_FOR_PACKED,      /* packed weights: every kernel but the canonical variants */
    QK_FOR_STATELESS,   /* canonical arrays: the choice for packed weights, then that backend's
                           canonical variant instead where one fits and covers M, else (automatic
                           selection only) the first available backend's */
};

int qk_backend_available(qk_backend b);
qk_status qk_backend_unavailable(qk_backend b, const char* what);
/* The backend of qkernels's own that `name` is, or whose kernel it names ("<backend>_..."), when
 * this library does not register it (another architecture's, left out of this build, or cuda
 * without its library), and *why (if why is not NULL) the reason ("not built: ..."); else NULL.
 * Forcing such a name is QK_ERR_BACKEND_UNAVAILABLE, not an unknown name. */
const char* qk_unbuilt_backend(const char* name, int kernel, const char** why);
/* The features of `required` that qk_cpu_features() lacks. */
static inline uint64_t qk_missing_cpu(uint64_t required) { return required & ~qk_cpu_features(); }
/* Whether qk_missing_cpu(required) is not empty; if so, says which in out ("this CPU or its
 * operating system lacks ..."). */
int qk_lacks_cpu(uint64_t required, char* out, size_t size);
/* A kernel's backend is available and the CPU has what the kernel needs beyond it. */
int qk_kernel_available(qk_kernel_ref k);
const char* qk_backend_name(qk_backend b);
int qk_kernel_fits_format(const qk_kernel_desc* k, const qk_weights* w);
int qk_kernel_fits(const qk_kernel_desc* k, const qk_problem* p);
/* QKERNELS_BACKEND: the backend automatic dispatch must use (QK_BACKEND_AUTO when unset or "auto"). */
qk_status qk_backend_from_environment(qk_backend* out);
/* A kernel by name, checked against `wanted` (QK_BACKEND_AUTO: any backend) and the problem. */
qk_status qk_find_kernel(const char* name, qk_backend wanted, const qk_problem* p, qk_kernel_ref* out);
/* Picks the kernel for a problem. Precedence: a forced kernel, then a forced backend (argument,
 * else QKERNELS_BACKEND), then the first fitting kernel of the available backends in dispatch
 * order, preferring one whose max_m covers M. Automatic selection passes over device backends
 * (uses_stream): they take device pointers and run only when forced. Forced choices that cannot
 * run fail, never fall back. */
int qk_is_canonical_variant(qk_backend b, const qk_kernel_desc* k);
qk_status qk_select(const qk_problem* p, qk_backend wanted, const char* kernel, enum qk_layout_need need,
                    qk_kernel_ref* out);
/* The best available backend, not a device one, that runs these weights in both modes (automatic packing). */
qk_backend qk_best_backend_for(const qk_weights* w);
void qk_fill_kernel_info(qk_kernel_ref k, qk_kernel_info* out);

/* ---- packs (pack.c) ---- */

struct qk_packed_weights {
    atomic_int references;    /* the caller's handle and each plan made from it */
    qk_backend backend;
    qk_kernel_weights view;   /* what kernels get */
    void* canonical_copy;     /* a backend without its own layout: the arrays, copied (one block),
                                 or NULL when they are borrowed */
    size_t size;
};

/* Packs for one backend (available, checked weights) into a new handle with one reference. With
 * borrow set, a backend without its own layout points at the caller's arrays instead of a copy. */
qk_status qk_pack(const qk_weights* w, qk_backend backend, int borrow, qk_packed_weights** out);
void qk_packed_retain(qk_packed_weights* p);
void qk_packed_release(qk_packed_weights* p);

/* ---- running (run.c) ---- */

/* Runs a selected kernel: an execution context with threads for this size and the calling
 * thread's workspace, then the kernel. */
qk_status qk_run(qk_kernel_ref k, const qk_kernel_weights* w, const qk_matmul_args* a);

#endif /* QK_DISPATCH_H */
