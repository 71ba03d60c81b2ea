/* Running one selected kernel: its execution context, then the kernel. */
#include "dispatch.h"

qk_status qk_run(qk_kernel_ref k, const qk_kernel_weights* w, const qk_matmul_args* a) {
    const qk_backend_desc* d = qk_backend_entry_get(k.backend)->desc;
    if (a->stream && !d->uses_stream)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "stream must be NULL: backend '%s' runs on the CPU", d->name);
    qk_exec exec = {
        .size = sizeof exec,
        .threads = qk_threads_for(a->M, w->format.N, w->format.K),
        .stream = a->stream,
        .thread_setup = d->thread_setup,
    };
    if (k.desc->workspace_size) {
        exec.workspace_size = k.desc->workspace_size(w, a, exec.threads);
        if (exec.workspace_size) {
            exec.workspace = qk_thread_workspace(exec.workspace_size);
            if (!exec.workspace)
                return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of workspace for kernel '%s'",
                               exec.workspace_size, k.desc->name);
        }
    }
    return k.desc->run(&exec, w, a);
}
