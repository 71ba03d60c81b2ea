/* One allocator for every buffer a backend hands to the core, so one free fits all. */
#include <pthread.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "internal.h"

void* qk_aligned_alloc(size_t size) {
    enum { HUGE_PAGE = 2 << 20 };
    if (size == 0) return NULL;
    void* p = NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    /* Weights are streamed front to back. With 4 KiB pages every page costs a TLB miss that the
     * hardware prefetchers stop at; 2 MiB pages made 4096 x 4096 decode 4-6% (A16) and 7-12% (A8)
     * faster here. madvise is only advice: without transparent huge pages nothing changes. */
    if (size >= HUGE_PAGE) {
        if (posix_memalign(&p, HUGE_PAGE, size) != 0) return NULL;
        madvise(p, size / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);
        return p;
    }
#endif
    return posix_memalign(&p, 64, size) == 0 ? p : NULL;
}

void qk_aligned_free(void* p) { free(p); }

/* ---- per-thread workspace ---- */

static pthread_key_t workspace_key;
static pthread_once_t workspace_once = PTHREAD_ONCE_INIT;
static _Thread_local struct {
    void* p;
    size_t size;
} workspace;

static void free_workspace(void* p) { qk_aligned_free(p); }

static void create_workspace_key(void) { pthread_key_create(&workspace_key, free_workspace); }

void* qk_thread_workspace(size_t size) {
    if (size <= workspace.size) return workspace.p;
    pthread_once(&workspace_once, create_workspace_key);
    size_t grown = size + size / 2; /* room to grow without reallocating on every larger call */
    void* p = qk_aligned_alloc(grown);
    if (!p) return NULL;
    qk_aligned_free(workspace.p);
    workspace.p = p;
    workspace.size = grown;
    pthread_setspecific(workspace_key, p); /* freed when the thread exits */
    return p;
}
