/* Prepared plans: the kernels for one mode and dtype, selected once for every M up to max_m, on
 * packed weights. A run is the cheap checks and one kernel call; a plan is never written after it
 * is made, so any number of threads may run it at once. */
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"

enum { MAX_STEPS = 8 };

/* Kernel `step[i]` runs M up to `up_to[i]` (0: any M). */
struct qk_plan {
    qk_packed_weights* packed;
    qk_mode mode;
    qk_dtype dtype;
    int32_t max_m;
    int32_t steps;
    int32_t up_to[MAX_STEPS];
    qk_kernel_ref kernel[MAX_STEPS];
};

/* The kernels that automatic selection would pick as M grows, one step per change. Selection
 * depends on M only through the kernels' max_m, so M = 1 and every max_m + 1 are the points where
 * it can change. */
static qk_status select_steps(qk_plan* plan, const char* kernel) {
    qk_problem problem = {&plan->packed->view.format, plan->packed->view.has_offsets, plan->mode, plan->dtype, 1};
    qk_backend backend = plan->packed->backend;
    for (;;) {
        qk_kernel_ref k;
        qk_status s = qk_select(&problem, backend, kernel, QK_FOR_PACKED, &k);
        if (s != QK_OK) return s;
        if (plan->steps > 0 && plan->kernel[plan->steps - 1].desc == k.desc) {
            plan->steps--; /* the same kernel as below: extend that step */
        } else if (plan->steps == MAX_STEPS) {
            return qk_fail(QK_ERR_UNSUPPORTED, "backend '%s' changes kernel more than %d times over M",
                           qk_backend_name(backend), MAX_STEPS);
        }
        plan->kernel[plan->steps] = k;
        /* The next M at which the choice may change: just past the smallest max_m above this M. */
        int32_t next = 0;
        const qk_backend_desc* d = qk_backend_entry_get(backend)->desc;
        for (int32_t i = 0; i < d->kernel_count && !kernel; i++) {
            int32_t m = d->kernels[i].max_m;
            if (m >= problem.M && (next == 0 || m + 1 < next)) next = m + 1;
        }
        int stop = next == 0 || (plan->max_m > 0 && next > plan->max_m);
        plan->up_to[plan->steps++] = stop ? 0 : next - 1;
        if (stop) return QK_OK;
        problem.M = next;
    }
}

qk_status qk_plan_create(const qk_packed_weights* packed, const qk_plan_desc* desc, qk_plan** out) {
    if (!packed) return qk_fail(QK_ERR_NULL_POINTER, "packed is NULL");
    if (!desc) return qk_fail(QK_ERR_NULL_POINTER, "desc is NULL");
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_status s = qk_check_struct_size(desc->size, sizeof *desc, sizeof *desc, "qk_plan_desc");
    if (s == QK_OK) s = qk_check_dtype(desc->input_dtype, "desc->input_dtype");
    if (s != QK_OK) return s;
    if (desc->mode != QK_MODE_A16 && desc->mode != QK_MODE_A8)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "desc->mode=%d is not QK_MODE_A16 or QK_MODE_A8", (int)desc->mode);
    if (desc->max_m < 0) return qk_fail(QK_ERR_INVALID_SIZE, "desc->max_m=%d must not be negative", desc->max_m);
    qk_plan* plan = calloc(1, sizeof *plan);
    if (!plan) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate a plan");
    plan->packed = (qk_packed_weights*)packed;
    plan->mode = desc->mode;
    plan->dtype = desc->input_dtype;
    plan->max_m = desc->max_m;
    s = select_steps(plan, desc->kernel);
    if (s != QK_OK) {
        free(plan);
        return s;
    }
    qk_packed_retain(plan->packed);
    *out = plan;
    return qk_succeed();
}

static const qk_kernel_ref* kernel_for(const qk_plan* plan, int32_t M) {
    for (int32_t i = 0; i < plan->steps; i++)
        if (plan->up_to[i] == 0 || M <= plan->up_to[i]) return &plan->kernel[i];
    return NULL;
}

static qk_status check_m(const qk_plan* plan, int32_t M) {
    if (M <= 0) return qk_fail(QK_ERR_INVALID_SIZE, "M=%d must be positive", M);
    if (plan->max_m > 0 && M > plan->max_m)
        return qk_fail(QK_ERR_INVALID_SIZE, "M=%d is above the plan's max_m=%d", M, plan->max_m);
    return QK_OK;
}

qk_status qk_plan_run(const qk_plan* plan, const void* input, void* output, const float* bias, int32_t M,
                      void* stream) {
    if (!plan) return qk_fail(QK_ERR_NULL_POINTER, "plan is NULL");
    qk_status s = qk_check_run("", input, output, bias, M, plan->dtype);
    if (s == QK_OK) s = check_m(plan, M);
    if (s != QK_OK) return s;
    qk_matmul_args args = {
        .size = sizeof args, .input = input, .output = output, .bias = bias, .M = M,
        .input_dtype = plan->dtype, .mode = plan->mode, .backend = plan->packed->backend, .stream = stream,
    };
    s = qk_run(*kernel_for(plan, M), &plan->packed->view, &args);
    return s == QK_OK ? qk_succeed() : s;
}

qk_status qk_plan_kernel(const qk_plan* plan, int32_t M, qk_kernel_info* out) {
    if (!plan) return qk_fail(QK_ERR_NULL_POINTER, "plan is NULL");
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_status s = qk_check_struct_size(out->size, offsetof(qk_kernel_info, format_flags), sizeof *out, "qk_kernel_info");
    if (s == QK_OK) s = check_m(plan, M);
    if (s != QK_OK) return s;
    qk_fill_kernel_info(*kernel_for(plan, M), out);
    return qk_succeed();
}

void qk_plan_free(qk_plan* plan) {
    if (!plan) return;
    qk_packed_release(plan->packed);
    free(plan);
}
