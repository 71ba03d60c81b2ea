/* Packed weights: a backend's own layout, made and freed by the backend, or for a backend that
 * reads the canonical layout a copy of the arrays, so that the caller may free them after packing.
 * A handle is shared by the caller and the plans made from it, and freed by the last of them. */
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"

/* The canonical arrays copied into one 64-byte-aligned block: data, scales, zero points, offsets.
 * With block NULL it only measures; otherwise it copies w in and points view->format at the copy. */
static size_t canonical_block(const qk_weights* w, uint8_t* block, qk_kernel_weights* view) {
    size_t q_bytes = (size_t)w->N * qk_row_bytes(w->K, w->bits);
    size_t groups = (size_t)w->N * (size_t)qk_groups_per_row(w);
    size_t scales_at = (q_bytes + 63) & ~(size_t)63, offsets_at = scales_at + groups * sizeof(float);
    size_t zp_at = offsets_at + (w->offsets ? groups * sizeof(float) : 0);
    if (block) {
        memcpy(block, w->data, q_bytes);
        memcpy(block + scales_at, w->scales, groups * sizeof(float));
        if (w->offsets) memcpy(block + offsets_at, w->offsets, groups * sizeof(float));
        if (w->zero_points) memcpy(block + zp_at, w->zero_points, groups);
        view->format.data = (const int8_t*)block;
        view->format.scales = (const float*)(block + scales_at);
        view->format.offsets = w->offsets ? (const float*)(block + offsets_at) : NULL;
        view->format.zero_points = w->zero_points ? (const int8_t*)(block + zp_at) : NULL;
    }
    return zp_at + (w->zero_points ? groups : 0);
}

qk_status qk_pack(const qk_weights* w, qk_backend backend, int borrow, qk_packed_weights** out) {
    const qk_backend_desc* d = qk_backend_entry_get(backend)->desc;
    qk_packed_weights* p = calloc(1, sizeof *p);
    if (!p) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate a packed-weights handle");
    atomic_init(&p->references, 1);
    p->backend = backend;
    p->view.format = *w;
    p->view.asymmetric = w->zero_points != NULL;
    p->view.has_offsets = w->offsets != NULL;
    qk_status s = QK_OK;
    if (d->pack) {
        /* Only the shape stays: the caller may free the canonical arrays after packing. */
        p->view.format.data = NULL;
        p->view.format.scales = NULL;
        p->view.format.zero_points = NULL;
        p->view.format.offsets = NULL;
        void* packed = NULL;
        s = d->pack(w, &packed, &p->size);
        p->view.packed = packed;
    } else if (!borrow) {
        p->size = canonical_block(w, NULL, &p->view);
        p->canonical_copy = qk_aligned_alloc(p->size);
        if (p->canonical_copy)
            canonical_block(w, p->canonical_copy, &p->view);
        else
            s = qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of packed weights", p->size);
    }
    if (s != QK_OK) {
        free(p);
        return s;
    }
    *out = p;
    return QK_OK;
}

void qk_packed_retain(qk_packed_weights* p) { atomic_fetch_add(&p->references, 1); }

void qk_packed_release(qk_packed_weights* p) {
    if (!p || atomic_fetch_sub(&p->references, 1) != 1) return;
    const qk_backend_desc* d = qk_backend_entry_get(p->backend)->desc;
    if (p->view.packed) d->free_packed((void*)p->view.packed);
    qk_aligned_free(p->canonical_copy);
    free(p);
}

static qk_status pack_weights(const qk_weights* weights, qk_backend backend, int borrow, qk_packed_weights** out) {
    if (!out) return qk_fail(QK_ERR_NULL_POINTER, "out is NULL");
    qk_weights w;
    qk_status s = qk_read_weights(weights, &w);
    if (s == QK_OK) s = qk_check_weights(&w, 1);
    if (s != QK_OK) return s;
    if (backend != QK_BACKEND_AUTO && !qk_backend_entry_get(backend))
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend=%d is not a registered backend id", (int)backend);
    if (backend == QK_BACKEND_AUTO) {
        s = qk_backend_from_environment(&backend);
        if (s != QK_OK) return s;
        if (backend == QK_BACKEND_AUTO) backend = qk_best_backend_for(&w);
        if (backend == QK_BACKEND_AUTO)
            return qk_fail(QK_ERR_UNSUPPORTED, "no available backend runs these weights (%d-bit, group size %d%s%s) in both modes",
                           w.bits, w.group_size, w.offsets ? ", offsets" : "",
                           w.K % w.group_size ? ", a shorter last group" : "");
    }
    if (!qk_backend_available(backend)) return qk_backend_unavailable(backend, "backend");
    s = qk_pack(&w, backend, borrow, out);
    return s == QK_OK ? qk_succeed() : s;
}

qk_status qk_pack_weights(const qk_weights* weights, qk_backend backend, qk_packed_weights** out) {
    return pack_weights(weights, backend, 0, out);
}

qk_status qk_pack_weights_borrowing(const qk_weights* weights, qk_backend backend, qk_packed_weights** out) {
    return pack_weights(weights, backend, 1, out);
}

qk_backend qk_packed_backend(const qk_packed_weights* packed) { return packed ? packed->backend : QK_BACKEND_AUTO; }

size_t qk_packed_size(const qk_packed_weights* packed) { return packed ? packed->size : 0; }

void qk_packed_weights_free(qk_packed_weights* packed) { qk_packed_release(packed); }
