/* One allocator for every buffer a backend hands to the core, so one free fits all. */
#include <stdlib.h>

#include "internal.h"

void* qk_aligned_alloc(size_t size) {
    if (size == 0) return NULL;
    void* p = NULL;
    return posix_memalign(&p, 64, size) == 0 ? p : NULL;
}

void qk_aligned_free(void* p) { free(p); }
