/* Kernel selection: compiled (registered) and detected (available), best first, overridable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"

static const char* mode_name(qk_mode m) { return m == QK_MODE_A8 ? "A8" : "A16"; }

static const char* dtype_name(qk_dtype d) {
    return d == QK_DTYPE_F16 ? "float16" : d == QK_DTYPE_BF16 ? "bfloat16" : "float32";
}

const char* qk_backend_name(qk_backend b) {
    const qk_backend_entry* e = qk_backend_entry_get(b);
    return e ? e->desc->name : "auto";
}

int qk_backend_available(qk_backend b) {
    const qk_backend_entry* e = qk_backend_entry_get(b);
    return e && e->reason[0] == '\0';
}

int qk_kernel_available(qk_kernel_ref k) {
    return qk_backend_available(k.backend) && !qk_missing_cpu(k.desc->required_cpu);
}

/* Whether automatic selection may pick backend b: available, and not on a device. A device backend
 * (uses_stream) takes device pointers, which a caller that asked for no backend has not given. */
static int automatic_candidate(qk_backend b) {
    return qk_backend_available(b) && !qk_backend_entry_get(b)->desc->uses_stream;
}

qk_status qk_backend_unavailable(qk_backend b, const char* what) {
    return qk_fail(QK_ERR_BACKEND_UNAVAILABLE, "%s '%s' is not available: %s", what, qk_backend_name(b),
                   qk_backend_entry_get(b)->reason);
}

/* Format v2 features the weights use, as QK_FORMAT_* bits. Whether there are offsets is passed
 * apart: packed weights keep the shape of their format, not its pointers. */
static uint32_t format_needs(const qk_weights* w, int has_offsets) {
    return (has_offsets ? QK_FORMAT_OFFSETS : 0u) | (w->K % w->group_size ? QK_FORMAT_RAGGED_GROUPS : 0u);
}

static int fits_format(const qk_kernel_desc* k, const qk_weights* w, int has_offsets) {
    return (k->bits_mask & (1u << w->bits)) && w->group_size % k->group_multiple == 0 &&
           /* a group size beyond K is one group of K: its length is what a limit bounds */
           (k->max_group_size == 0 || (w->group_size < w->K ? w->group_size : w->K) <= k->max_group_size) &&
           (format_needs(w, has_offsets) & ~k->format_flags) == 0;
}

int qk_kernel_fits_format(const qk_kernel_desc* k, const qk_weights* w) { return fits_format(k, w, w->offsets != NULL); }

int qk_kernel_fits(const qk_kernel_desc* k, const qk_problem* p) {
    return k->mode == p->mode && (k->dtype_mask & (1u << p->dtype)) && fits_format(k, p->weights, p->has_offsets);
}

/* "<who> does not run A8 on float16 input, 4-bit weights, ..." */
static qk_status does_not_fit(const char* who, const qk_problem* p) {
    const qk_weights* w = p->weights;
    return qk_fail(QK_ERR_UNSUPPORTED, "%s does not run %s on %s input, %d-bit weights, group size %d%s%s", who,
                   mode_name(p->mode), dtype_name(p->dtype), w->bits, w->group_size,
                   p->has_offsets ? ", offsets" : "", w->K % w->group_size ? ", a shorter last group" : "");
}

qk_status qk_backend_from_environment(qk_backend* out) {
    *out = QK_BACKEND_AUTO;
    const char* name = getenv("QKERNELS_BACKEND");
    if (!name || !*name || strcmp(name, "auto") == 0) return QK_OK;
    qk_status s = qk_backend_find(name, out);
    if (s == QK_OK) return QK_OK;
    const char* why = NULL;
    if (qk_unbuilt_backend(name, 0, &why)) /* one of qkernels's own, not in this build */
        return qk_fail(QK_ERR_BACKEND_UNAVAILABLE, "QKERNELS_BACKEND='%s' is %s", name, why);
    return qk_fail(QK_ERR_INVALID_ARGUMENT, "QKERNELS_BACKEND='%s' names no registered backend", name);
}

int qk_is_canonical_variant(qk_backend b, const qk_kernel_desc* k) {
    return k->canonical && qk_backend_entry_get(b)->desc->pack != NULL;
}

qk_status qk_find_kernel(const char* name, qk_backend wanted, const qk_problem* p, qk_kernel_ref* out) {
    int32_t count = 0;
    const qk_backend* ids = qk_backend_order(&count);
    for (int32_t i = 0; i < count; i++) {
        const qk_backend_desc* d = qk_backend_entry_get(ids[i])->desc;
        for (int32_t j = 0; j < d->kernel_count; j++) {
            const qk_kernel_desc* k = &d->kernels[j];
            if (strcmp(k->name, name) != 0) continue;
            if (wanted != QK_BACKEND_AUTO && ids[i] != wanted)
                return qk_fail(QK_ERR_INVALID_ARGUMENT, "kernel '%s' belongs to backend '%s', not '%s'", k->name,
                               d->name, qk_backend_name(wanted));
            if (!qk_backend_available(ids[i])) return qk_backend_unavailable(ids[i], "kernel's backend");
            char lacks[256];
            if (qk_lacks_cpu(k->required_cpu, lacks, sizeof lacks))
                return qk_fail(QK_ERR_BACKEND_UNAVAILABLE, "kernel '%s' is not available: %s", k->name, lacks);
            if (!qk_kernel_fits(k, p)) {
                char who[160];
                snprintf(who, sizeof who, "kernel '%s'", k->name);
                return does_not_fit(who, p);
            }
            *out = (qk_kernel_ref){ids[i], k};
            return QK_OK;
        }
    }
    const char* why = NULL;
    const char* unbuilt = qk_unbuilt_backend(name, 1, &why);
    if (unbuilt)
        return qk_fail(QK_ERR_BACKEND_UNAVAILABLE, "kernel '%s' is not registered: its backend '%s' is %s", name,
                       unbuilt, why);
    return qk_fail(QK_ERR_INVALID_ARGUMENT, "kernel '%s' is not a registered kernel", name);
}

/* The first canonical variant of backend b that fits p and covers its M. */
static int canonical_variant(qk_backend b, const qk_problem* p, qk_kernel_ref* out) {
    const qk_backend_desc* d = qk_backend_entry_get(b)->desc;
    for (int32_t j = 0; j < d->kernel_count; j++) {
        const qk_kernel_desc* k = &d->kernels[j];
        if (k->canonical && qk_kernel_fits(k, p) && qk_kernel_available((qk_kernel_ref){b, k}) &&
            (k->max_m == 0 || p->M <= k->max_m)) {
            *out = (qk_kernel_ref){b, k};
            return 1;
        }
    }
    return 0;
}

/* A stateless call's kernel when automatic selection chose backend `chosen`: its canonical variant
 * covering M, else the first canonical variant covering M of an available backend with its own
 * layout (in dispatch order), so that a call at small M never packs when a fast kernel can read the
 * caller's arrays (x86_amx has no canonical variant; x86_avx512 and x86_avx2 have). Backends
 * without a layout (ref) read the canonical arrays in every kernel: no fast path to fall back to. A
 * forced backend (`automatic` 0) keeps its own kernels. */
static int stateless_variant(qk_backend chosen, int automatic, const qk_problem* p, qk_kernel_ref* out) {
    if (canonical_variant(chosen, p, out)) return 1;
    if (!automatic) return 0;
    int32_t count = 0;
    const qk_backend* ids = qk_backend_order(&count);
    for (int32_t i = 0; i < count; i++)
        if (automatic_candidate(ids[i]) && qk_backend_entry_get(ids[i])->desc->pack && canonical_variant(ids[i], p, out))
            return 1;
    return 0;
}

qk_status qk_select(const qk_problem* p, qk_backend wanted, const char* kernel, enum qk_layout_need need,
                    qk_kernel_ref* out) {
    if (kernel) {
        qk_status s = qk_find_kernel(kernel, wanted, p, out);
        if (s == QK_OK && need == QK_FOR_PACKED && qk_is_canonical_variant(out->backend, out->desc))
            return qk_fail(QK_ERR_UNSUPPORTED, "kernel '%s' reads the canonical layout, not packed weights: run it on canonical weights (qk_matmul)",
                           kernel);
        return s;
    }
    if (wanted == QK_BACKEND_AUTO) {
        qk_status s = qk_backend_from_environment(&wanted);
        if (s != QK_OK) return s;
    }
    if (wanted != QK_BACKEND_AUTO && !qk_backend_available(wanted)) return qk_backend_unavailable(wanted, "backend");
    int automatic = wanted == QK_BACKEND_AUTO;

    int32_t count = 0;
    const qk_backend* ids = qk_backend_order(&count);
    qk_kernel_ref any_m = {0, NULL}; /* the best kernel that fits, ignoring its preferred M */
    for (int32_t i = 0; i < count; i++) {
        if (wanted != QK_BACKEND_AUTO ? ids[i] != wanted : !automatic_candidate(ids[i])) continue;
        const qk_backend_desc* d = qk_backend_entry_get(ids[i])->desc;
        for (int32_t j = 0; j < d->kernel_count; j++) {
            const qk_kernel_desc* k = &d->kernels[j];
            if (!qk_kernel_fits(k, p) || qk_is_canonical_variant(ids[i], k) || !qk_kernel_available((qk_kernel_ref){ids[i], k}))
                continue;
            if (k->max_m == 0 || p->M <= k->max_m) {
                if (need == QK_FOR_PACKED || !stateless_variant(ids[i], automatic, p, out))
                    *out = (qk_kernel_ref){ids[i], k};
                return QK_OK;
            }
            if (!any_m.desc) any_m = (qk_kernel_ref){ids[i], k};
        }
    }
    if (any_m.desc) {
        if (need == QK_FOR_PACKED || !stateless_variant(any_m.backend, automatic, p, out)) *out = any_m;
        return QK_OK;
    }
    char who[160];
    if (wanted == QK_BACKEND_AUTO)
        snprintf(who, sizeof who, "no available backend");
    else
        snprintf(who, sizeof who, "backend '%s'", qk_backend_name(wanted));
    return does_not_fit(who, p);
}

qk_backend qk_best_backend_for(const qk_weights* w) {
    int32_t count = 0;
    const qk_backend* ids = qk_backend_order(&count);
    for (int32_t i = 0; i < count; i++) {
        if (!automatic_candidate(ids[i])) continue;
        const qk_backend_desc* d = qk_backend_entry_get(ids[i])->desc;
        int modes = 0;
        for (int32_t j = 0; j < d->kernel_count; j++)
            if (qk_kernel_fits_format(&d->kernels[j], w) && qk_kernel_available((qk_kernel_ref){ids[i], &d->kernels[j]}))
                modes |= 1 << d->kernels[j].mode;
        if (modes == ((1 << QK_MODE_A16) | (1 << QK_MODE_A8))) return ids[i];
    }
    return QK_BACKEND_AUTO;
}

void qk_fill_kernel_info(qk_kernel_ref k, qk_kernel_info* out) {
    qk_kernel_info info = {
        .size = sizeof info,
        .name = k.desc->name,
        .backend = k.backend,
        .mode = k.desc->mode,
        .bits_mask = k.desc->bits_mask,
        .dtype_mask = k.desc->dtype_mask,
        .group_multiple = k.desc->group_multiple,
        .max_group_size = k.desc->max_group_size,
        .max_m = k.desc->max_m,
        .available = qk_kernel_available(k),
        .format_flags = k.desc->format_flags,
        .canonical = k.desc->canonical || !qk_backend_entry_get(k.backend)->desc->pack,
        .required_cpu = k.desc->required_cpu,
    };
    uint32_t size = out->size;
    memcpy(out, &info, size < sizeof info ? size : sizeof info);
    out->size = size;
}
