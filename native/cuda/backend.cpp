/*
 * libqkernels_cuda.so: the CUDA backend as a backend library (qkernels_backend.h). The core loads it
 * from beside libqkernels (or QKERNELS_BACKEND_PATH) and calls qk_backend_library_init, which
 * registers the backend "cuda" with the kernels of kernels.h.
 *
 * Nothing here touches the CUDA runtime before the probe has found a usable driver and GPU: the
 * probe dlopen()s libcuda.so.1 itself and asks the driver API, so that a machine without a driver
 * or GPU gets a backend that says why it cannot run, never a crash or a hang. The runtime is linked
 * statically (CMakeLists.txt): the library loads without the toolkit installed.
 *
 * What the backend takes (the rule for a device backend, see README "The CUDA backend"):
 *   - weights are canonical host arrays; pack writes the device layout on the host
 *     (qk_cuda_pack_host) and copies it to the current device once;
 *   - input, output and bias are device pointers, and the work goes on the caller's stream
 *     (qk_matmul_args.stream; NULL: the legacy default stream). Every run checks that the pack, the
 *     input, output and bias, and the stream are on the current device, and refuses host memory
 *     before anything launches;
 *   - automatic dispatch never picks it (select.c): it runs only when asked for by id, by name
 *     (QKERNELS_BACKEND) or by kernel name, so host data never reaches it by default.
 */
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <array>
#include <atomic>
#include <utility>

#include "kernels.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- probe: the driver, through dlopen, before any runtime call ---- */

namespace {

/* The driver API functions the probe needs, by their unversioned names (cuda.h maps some names to
 * _v2 symbols; these five have only the one). CUresult is an int; 0 is CUDA_SUCCESS. */
typedef int (*cu_init_fn)(unsigned flags);
typedef int (*cu_driver_get_version_fn)(int* version);
typedef int (*cu_device_get_count_fn)(int* count);
typedef int (*cu_device_get_attribute_fn)(int* value, int attribute, int device);
typedef int (*cu_get_error_name_fn)(int error, const char** name);

enum {
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED = 115, /* the scratch is stream-ordered (cudaMallocFromPoolAsync) */
    MIN_COMPUTE_CAPABILITY = 80, /* mma.sync, ldmatrix and cp.async: Ampere and later */
};

char reason[256];

const char* driver_error(cu_get_error_name_fn get_name, int error) {
    const char* name = NULL;
    if (!get_name || get_name(error, &name) != 0 || !name) return "an unknown error";
    return name;
}

/* Why the backend cannot run here, or NULL. Every visible GPU must have compute capability 8.0 or
 * later and support memory pools: the kernels run on whichever device is current, and an older one
 * has no code for them. */
const char* probe() {
    void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!driver) {
        snprintf(reason, sizeof reason, "libcuda.so.1 not found (no NVIDIA driver): %s", dlerror());
        return reason;
    }
    /* The driver stays loaded: the runtime loads it again when the backend runs. */
    auto init = (cu_init_fn)dlsym(driver, "cuInit");
    auto driver_version = (cu_driver_get_version_fn)dlsym(driver, "cuDriverGetVersion");
    auto device_count = (cu_device_get_count_fn)dlsym(driver, "cuDeviceGetCount");
    auto attribute = (cu_device_get_attribute_fn)dlsym(driver, "cuDeviceGetAttribute");
    auto error_name = (cu_get_error_name_fn)dlsym(driver, "cuGetErrorName");
    if (!init || !driver_version || !device_count || !attribute) {
        snprintf(reason, sizeof reason, "libcuda.so.1 lacks the driver API functions cuInit, cuDriverGetVersion, "
                                        "cuDeviceGetCount or cuDeviceGetAttribute");
        return reason;
    }
    int version = 0, count = 0;
    if (driver_version(&version) != 0) version = 0;
    /* The statically linked runtime needs a driver of its major version or later (minor version
     * compatibility covers the rest). */
    int needed = CUDART_VERSION / 1000 * 1000;
    if (version < needed) {
        snprintf(reason, sizeof reason, "the NVIDIA driver supports CUDA %d.%d; this library needs %d.0 or later",
                 version / 1000, version % 1000 / 10, needed / 1000);
        return reason;
    }
    int status = init(0);
    if (status != 0) {
        snprintf(reason, sizeof reason, "cuInit failed: %s", driver_error(error_name, status));
        return reason;
    }
    status = device_count(&count);
    if (status != 0 || count == 0) {
        snprintf(reason, sizeof reason, "no CUDA device (%s)",
                 status ? driver_error(error_name, status) : "the driver reports none");
        return reason;
    }
    for (int d = 0; d < count; d++) {
        int major = 0, minor = 0;
        if (attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d) != 0 ||
            attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d) != 0) {
            snprintf(reason, sizeof reason, "cannot read the compute capability of CUDA device %d", d);
            return reason;
        }
        if (major * 10 + minor < MIN_COMPUTE_CAPABILITY) {
            snprintf(reason, sizeof reason,
                     "CUDA device %d has compute capability %d.%d; the kernels need 8.0 or later "
                     "(CUDA_VISIBLE_DEVICES can hide it)",
                     d, major, minor);
            return reason;
        }
        int pools = 0;
        if (attribute(&pools, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, d) != 0 || !pools) {
            snprintf(reason, sizeof reason,
                     "CUDA device %d does not support memory pools (cudaMallocAsync), which the backend's scratch "
                     "needs (CUDA_VISIBLE_DEVICES can hide it)",
                     d);
            return reason;
        }
    }
    return NULL;
}

/* ---- device errors as qk_fail ---- */

qk_status status_of(cudaError_t e) {
    switch (e) {
    case cudaErrorMemoryAllocation:
        return QK_ERR_OUT_OF_MEMORY;
    case cudaErrorNoKernelImageForDevice: /* the device or the driver cannot run this library */
    case cudaErrorInsufficientDriver:
    case cudaErrorCallRequiresNewerDriver:
    case cudaErrorStubLibrary:
    case cudaErrorInitializationError:
    case cudaErrorNoDevice:
        return QK_ERR_BACKEND_UNAVAILABLE;
    default:
        return QK_ERR_INVALID_ARGUMENT;
    }
}

qk_status fail_cuda(cudaError_t e, const char* what) {
    return qk_fail(status_of(e), "cuda: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* ---- scratch: stream-ordered, from a pool per device ---- */

/* Each run takes its scratch with cudaMallocFromPoolAsync on its stream and gives it back with
 * cudaFreeAsync after its last launch (kernels.h). So runs on one stream from several host threads,
 * on the per-thread default streams, or on a new stream per request never share a buffer nor keep
 * one per stream (a table of buffers per stream did both until 2026-12-07), and a stream can be
 * captured into a CUDA graph at any call after the pack: there the allocation and the free become
 * memory nodes of the graph, which owns that memory (not the pool). The pool is the backend's own, not the device's default one, whose release threshold other
 * code in the process may rely on: it keeps up to kKeptScratch bytes of freed memory for the next
 * runs (beyond that, freed memory goes back to the driver at the next synchronization). */
constexpr uint64_t kKeptScratch = 256ull << 20;
enum { MAX_DEVICES = 64 };
std::atomic<cudaMemPool_t> pools[MAX_DEVICES]; /* read without the lock once made */
pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;

/* The current device's pool; NULL after qk_fail. It is made by the first pack on the device (runs
 * need a pack there), so that no run, which may be captured into a CUDA graph, creates it. */
cudaMemPool_t current_pool() {
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e != cudaSuccess) return fail_cuda(e, "the current device"), nullptr;
    if (device >= MAX_DEVICES) {
        qk_fail(QK_ERR_UNSUPPORTED, "cuda: device %d: the backend keeps scratch pools for %d devices", device,
                (int)MAX_DEVICES);
        return nullptr;
    }
    cudaMemPool_t made = pools[device].load(std::memory_order_acquire);
    if (made) return made;
    pthread_mutex_lock(&pools_lock);
    if (!pools[device].load(std::memory_order_relaxed)) {
        cudaMemPoolProps props = {};
        props.allocType = cudaMemAllocationTypePinned;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = device;
        cudaMemPool_t pool = nullptr;
        uint64_t kept = kKeptScratch;
        e = cudaMemPoolCreate(&pool, &props);
        if (e == cudaSuccess) e = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &kept);
        if (e == cudaSuccess)
            pools[device].store(pool, std::memory_order_release);
        else {
            if (pool) cudaMemPoolDestroy(pool);
            fail_cuda(e, "creating the scratch memory pool");
        }
    }
    cudaMemPool_t pool = pools[device].load(std::memory_order_relaxed);
    pthread_mutex_unlock(&pools_lock);
    return pool;
}

/* ---- pack: the device layout written on the host, then copied to the current device ---- */

qk_status pack(const qk_weights* w, void** packed, size_t* bytes) {
    if (!current_pool()) return qk_last_status(); /* the device's scratch pool, before any run there */
    size_t size = qk_cuda_packed_bytes(w);
    void* host = malloc(size);
    if (!host) return qk_fail(QK_ERR_OUT_OF_MEMORY, "cuda: cannot allocate %zu bytes to pack on the host", size);
    qk_status s = qk_cuda_pack_host(w, host);
    void* device = NULL;
    if (s == QK_OK) {
        cudaError_t e = cudaMalloc(&device, size);
        if (e == cudaSuccess) e = cudaMemcpy(device, host, size, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            s = fail_cuda(e, "packing the weights into device memory");
            cudaFree(device);
            device = NULL;
        }
    }
    free(host);
    if (s != QK_OK) return s;
    *packed = device;
    *bytes = size;
    return QK_OK;
}

/* cudaFree waits for the device's work in flight, so a kernel still reading the pack finishes first. */
void free_packed(void* packed) { cudaFree(packed); }

/* ---- host pointers never reach a kernel ---- */

/* QK_OK when the current device can read `pointer` (its own memory, managed memory, or mapped
 * host memory), else a failure naming the argument. Plain host memory (malloc, NumPy, a CPU tensor)
 * is refused, and so is memory of another GPU: the kernels run on the current device, which reads
 * another's memory only with peer access, and a pack or an array on the wrong device is a mistake
 * of the caller's, better named than served slowly or faulting. */
qk_status check_reachable(const void* pointer, int device, const char* argument, const char* kernel) {
    cudaPointerAttributes attributes;
    cudaError_t e = cudaPointerGetAttributes(&attributes, pointer);
    if (e != cudaSuccess) return fail_cuda(e, argument);
    if (attributes.type == cudaMemoryTypeUnregistered || !attributes.devicePointer)
        return qk_fail(QK_ERR_INVALID_ARGUMENT,
                       "%s is host memory, which kernel '%s' cannot read: the cuda backend takes device pointers",
                       argument, kernel);
    if (attributes.type == cudaMemoryTypeDevice && attributes.device != device)
        return qk_fail(QK_ERR_INVALID_ARGUMENT,
                       "%s is memory of CUDA device %d, and kernel '%s' runs on the current device, %d: make the "
                       "device of the data current (the weights are packed on the device current when packing)",
                       argument, attributes.device, kernel, device);
    return QK_OK;
}

/* QK_OK when `stream` is the current device's: a launch on another device's stream fails, and
 * would say only that. The legacy and per-thread default streams are every device's.
 * cudaStreamGetDevice is CUDA 12.8's: built with an older toolkit, the launch's error stands. */
qk_status check_stream(void* stream, int device, const char* kernel) {
#if CUDART_VERSION >= 12080
    int of = device;
    cudaError_t e = cudaStreamGetDevice((cudaStream_t)stream, &of);
    if (e != cudaSuccess) return fail_cuda(e, "the stream's device");
    if (of != device)
        return qk_fail(QK_ERR_INVALID_ARGUMENT,
                       "the stream belongs to CUDA device %d, and kernel '%s' runs on the current device, %d: make "
                       "the stream's device current",
                       of, kernel, device);
#else
    (void)stream, (void)device, (void)kernel;
#endif
    return QK_OK;
}

/* kernels.h's table as registered: each run checks its pointers, then calls the kernel's own run.
 * A run function does not learn which table entry it is, so each entry gets its own instance of
 * checked_run (a fixed number of them: registration fails if the table outgrows them). */
enum { MAX_KERNELS = 64 };
qk_kernel_desc registered[MAX_KERNELS];

template <int I>
qk_status checked_run(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    const char* name = qk_cuda_kernels[I].name;
    /* Clear an error an earlier runtime call left on this thread (a failed cudaMalloc in a pack),
     * which qk_cuda_check_launch would otherwise report for this run, after its kernel wrote Y. */
    (void)cudaGetLastError();
    int device = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e != cudaSuccess) return fail_cuda(e, "the current device");
    qk_status s = check_stream(exec->stream, device, name);
    if (s == QK_OK) s = check_reachable(w->packed, device, "the weights' pack", name);
    if (s == QK_OK) s = check_reachable(a->input, device, "args->input", name);
    if (s == QK_OK) s = check_reachable(a->output, device, "args->output", name);
    if (s == QK_OK && a->bias) s = check_reachable(a->bias, device, "args->bias", name);
    return s == QK_OK ? qk_cuda_kernels[I].run(exec, w, a) : s;
}

template <int... I>
constexpr auto checked_runs(std::integer_sequence<int, I...>) {
    return std::array<decltype(&checked_run<0>), sizeof...(I)>{&checked_run<I>...};
}

} // namespace

extern "C" void* qk_cuda_scratch_acquire(void* stream, size_t bytes) {
    cudaMemPool_t pool = current_pool();
    if (!pool) return nullptr;
    void* memory = nullptr;
    cudaError_t e = cudaMallocFromPoolAsync(&memory, bytes, pool, (cudaStream_t)stream);
    if (e != cudaSuccess) return fail_cuda(e, "allocating scratch on the stream"), nullptr;
    return memory;
}

extern "C" qk_status qk_cuda_scratch_release(void* stream, void* memory) {
    cudaError_t e = cudaFreeAsync(memory, (cudaStream_t)stream);
    return e == cudaSuccess ? QK_OK : fail_cuda(e, "releasing scratch on the stream");
}

extern "C" qk_status qk_cuda_check_launch(const char* kernel) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return QK_OK;
    char what[160];
    snprintf(what, sizeof what, "launching kernel '%s'", kernel);
    return fail_cuda(e, what);
}

extern "C" EXPORT qk_status qk_backend_library_init(void) {
    static const auto runs = checked_runs(std::make_integer_sequence<int, MAX_KERNELS>{});
    if (qk_cuda_kernel_count > MAX_KERNELS)
        return qk_fail(QK_ERR_INVALID_ARGUMENT, "cuda: %d kernels, more than backend.cpp's %d checked runs",
                       (int)qk_cuda_kernel_count, (int)MAX_KERNELS);
    for (int32_t i = 0; i < qk_cuda_kernel_count; i++) {
        registered[i] = qk_cuda_kernels[i];
        registered[i].run = runs[i];
    }
    static qk_backend_desc backend = {};
    backend.size = sizeof backend;
    backend.abi_version = QK_BACKEND_ABI_VERSION;
    backend.name = "cuda";
    backend.priority = 50; /* shown above the CPU backends; automatic dispatch skips device backends anyway */
    backend.probe = probe;
    backend.pack = pack;
    backend.free_packed = free_packed;
    backend.kernels = registered;
    backend.kernel_count = qk_cuda_kernel_count;
    backend.uses_stream = 1;
    return qk_register_backend(&backend, NULL);
}
