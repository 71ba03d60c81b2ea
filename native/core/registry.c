/* The registry: every backend that registered, in dispatch order. Dispatch, the C tests, the
 * Python tests and the benchmarks all enumerate it, so adding a kernel means one source file and
 * one line in its backend's kernel table.
 *
 * Backends come from three places, in this order: the built-in ones (CMake lists them in
 * builtin_backends.h, generated: the core includes no backend header), the backend libraries found
 * beside libqkernels and in QKERNELS_BACKEND_PATH, and any a program registers itself. An id is a
 * backend's position in registration order, from 1; dispatch order is decreasing priority, ties in
 * registration order.
 *
 * Readers never lock: an entry is complete before the count that makes it visible is published,
 * and the dispatch order is an immutable snapshot replaced whole on registration. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"

#define QK_BUILTIN(name) qk_status qk_register_##name(void);
#include "builtin_backends.h"
#undef QK_BUILTIN

enum { MAX_BACKENDS = 64, REASON_BYTES = 256 };

static qk_backend_entry entries[MAX_BACKENDS + 1]; /* [id]; 0 is QK_BACKEND_AUTO */
static char reasons[MAX_BACKENDS + 1][REASON_BYTES];
static atomic_int registered;                        /* ids 1..registered are complete */
static pthread_mutex_t writers = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local const char* loading_library;    /* set while a backend library initialises */
static _Thread_local int initializing;               /* this thread runs init(): no re-entry */

/* Dispatch order: all ids registered when it was made, by decreasing priority. A snapshot that a
 * registration replaces may still be read, so it is kept, and kept reachable through `previous`
 * (a leak checker would otherwise report it). */
typedef struct order_snapshot {
    const struct order_snapshot* previous;
    int32_t count;
    qk_backend ids[];
} order_snapshot;
static const order_snapshot no_backends = {NULL, 0};
static _Atomic(const order_snapshot*) order = &no_backends;

int qk_lacks_cpu(uint64_t required, char* out, size_t size) {
    uint64_t missing = qk_missing_cpu(required);
    if (!missing) return 0;
    int used = snprintf(out, size, "this CPU or its operating system lacks");
    for (int f = 0; f < QK_CPU_FEATURE_COUNT && used < (int)size; f++)
        if (missing >> f & 1) used += snprintf(out + used, size - (size_t)used, " %s", qk_cpu_feature_name(f));
    return 1;
}

/* Why the backend cannot run here, or "": missing CPU features first, then the backend's probe. */
static void set_reason(int id, const qk_backend_desc* d) {
    char* out = reasons[id];
    out[0] = '\0';
    if (qk_lacks_cpu(d->required_cpu, out, REASON_BYTES)) return;
    const char* why = d->probe ? d->probe() : NULL;
    if (why) snprintf(out, REASON_BYTES, "%s", why);
}

static int kernels_valid(const qk_backend_desc* d) {
    if (d->kernel_count < 0 || (d->kernel_count > 0 && !d->kernels)) return 0;
    for (int32_t i = 0; i < d->kernel_count; i++)
        if (!d->kernels[i].name || !d->kernels[i].run || d->kernels[i].group_multiple < 1) return 0;
    return 1;
}

/* A new dispatch-order snapshot with `id` inserted after every backend of equal or higher priority,
 * or NULL when out of memory. */
static order_snapshot* order_with(int id) {
    const order_snapshot* old = atomic_load(&order);
    order_snapshot* next = malloc(sizeof *next + (size_t)id * sizeof next->ids[0]);
    if (!next) return NULL;
    int32_t n = 0, placed = 0;
    for (int32_t i = 0; i < old->count; i++) {
        if (!placed && entries[old->ids[i]].desc->priority < entries[id].desc->priority) {
            next->ids[n++] = id;
            placed = 1;
        }
        next->ids[n++] = old->ids[i];
    }
    if (!placed) next->ids[n++] = id;
    next->count = n;
    next->previous = old;
    return next;
}

static qk_status register_locked(const qk_backend_desc* d, qk_backend* id_out) {
    if (!d) return qk_fail(QK_ERR_NULL_POINTER, "desc is NULL");
    if (d->size < sizeof *d)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "desc->size=%u is smaller than qk_backend_desc (%zu)", d->size, sizeof *d);
    if (d->abi_version != QK_BACKEND_ABI_VERSION)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend '%s' was built for backend ABI %u; this library has %d",
                       d->name ? d->name : "?", d->abi_version, QK_BACKEND_ABI_VERSION);
    if (!d->name || !d->name[0] || strcmp(d->name, "auto") == 0)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "desc->name must be a non-empty name other than 'auto'");
    if (!kernels_valid(d))
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend '%s' has a kernel without a name or run function, or a group multiple below 1",
                       d->name);
    if ((d->pack == NULL) != (d->free_packed == NULL))
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "backend '%s' must give both pack and free_packed, or neither", d->name);
    int id = atomic_load(&registered) + 1;
    for (int i = 1; i < id; i++)
        if (strcmp(entries[i].desc->name, d->name) == 0)
            return qk_fail(QK_ERR_INVALID_ARGUMENT, "a backend named '%s' is already registered", d->name);
    if (id > MAX_BACKENDS) return qk_fail(QK_ERR_INVALID_ARGUMENT, "the registry is full (%d backends)", MAX_BACKENDS);
    set_reason(id, d);
    entries[id] = (qk_backend_entry){d, loading_library ? loading_library : "", reasons[id]};
    order_snapshot* next = order_with(id);
    if (!next) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cannot grow the backend registry");
    atomic_store(&registered, id); /* the entry visible before an order that lists it */
    atomic_store(&order, next);
    if (id_out) *id_out = id;
    return qk_succeed();
}

qk_status qk_register_backend(const qk_backend_desc* desc, qk_backend* id) {
    if (!initializing) qk_registry_init(); /* built-ins first, whoever registers first */
    pthread_mutex_lock(&writers);
    qk_status s = register_locked(desc, id);
    pthread_mutex_unlock(&writers);
    return s;
}

/* ---- backend libraries ---- */

/* Loads one backend library and runs its qk_backend_library_init. A library that cannot be loaded
 * or lacks the function is reported on stderr when QKERNELS_VERBOSE is set, and otherwise skipped:
 * an optional backend never stops the core from working. */
static void load_library(const char* path) {
    int verbose = getenv("QKERNELS_VERBOSE") != NULL;
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        if (verbose) fprintf(stderr, "qkernels: cannot load backend library %s: %s\n", path, dlerror());
        return;
    }
    qk_status (*init)(void) = (qk_status(*)(void))dlsym(handle, "qk_backend_library_init");
    if (!init) {
        if (verbose) fprintf(stderr, "qkernels: %s has no qk_backend_library_init\n", path);
        dlclose(handle);
        return;
    }
    loading_library = strdup(path); /* kept: entries point at it for the life of the process */
    qk_status s = loading_library ? init() : QK_ERR_OUT_OF_MEMORY;
    loading_library = NULL;
    if (s != QK_OK && verbose)
        fprintf(stderr, "qkernels: backend library %s failed to register: %s\n", path, qk_last_error());
}

static int is_backend_library(const char* name) {
    size_t n = strlen(name);
    return strncmp(name, "libqkernels_", 12) == 0 && n > 15 && strcmp(name + n - 3, ".so") == 0;
}

/* Every libqkernels_*.so in a directory, in name order so that ids do not depend on the file system. */
static void load_directory(const char* dir) {
    struct dirent** names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        if (is_backend_library(names[i]->d_name)) {
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name) < (int)sizeof path) load_library(path);
        }
        free(names[i]);
    }
    free(names);
}

static void load_path_entry(const char* entry) {
    DIR* d = opendir(entry);
    if (d) {
        closedir(d);
        load_directory(entry);
    } else {
        load_library(entry);
    }
}

static void load_backend_libraries(void) {
    Dl_info self;
    if (dladdr((void*)&qk_registry_init, &self) && self.dli_fname) {
        char* dir = strdup(self.dli_fname);
        char* slash = dir ? strrchr(dir, '/') : NULL;
        if (slash) {
            *slash = '\0';
            load_directory(dir);
        }
        free(dir);
    }
    const char* path = getenv("QKERNELS_BACKEND_PATH");
    if (!path) return;
    char* copy = strdup(path);
    for (char *save = NULL, *entry = copy ? strtok_r(copy, ":", &save) : NULL; entry; entry = strtok_r(NULL, ":", &save))
        load_path_entry(entry);
    free(copy);
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* A built-in backend that fails to register is a bug in this build: say so, and go on without it. */
static void register_builtin(qk_status (*reg)(void), const char* name) {
    if (reg() != QK_OK) fprintf(stderr, "qkernels: built-in backend %s did not register: %s\n", name, qk_last_error());
}

/* Runs once, inside whichever call first needs the registry: that call's thread keeps the status
 * it had (the registrations set theirs), as a call returning no status must not change it. */
static void init(void) {
    qk_saved_status saved;
    qk_save_status(&saved);
    initializing = 1;
#define QK_BUILTIN(name) register_builtin(qk_register_##name, #name);
#include "builtin_backends.h"
#undef QK_BUILTIN
    load_backend_libraries();
    initializing = 0;
    qk_restore_status(&saved);
}

void qk_registry_init(void) {
    if (!initializing) pthread_once(&init_once, init);
}

const qk_backend_entry* qk_backend_entry_get(qk_backend id) {
    qk_registry_init();
    return id >= 1 && id <= atomic_load(&registered) ? &entries[id] : NULL;
}

const qk_backend* qk_backend_order(int32_t* count) {
    qk_registry_init();
    const order_snapshot* o = atomic_load(&order);
    *count = o->count;
    return o->ids;
}

int32_t qk_backend_count(void) {
    qk_registry_init();
    return atomic_load(&registered);
}
