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
 *     (qk_matmul_args.stream; NULL: the legacy default stream). Every run checks that the three
 *     pointers are memory the device can reach and refuses host memory before anything launches;
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
    MIN_COMPUTE_CAPABILITY = 80, /* mma.sync, ldmatrix and cp.async: Ampere and later */
};

char reason[256];

const char* driver_error(cu_get_error_name_fn get_name, int error) {
    const char* name = NULL;
    if (!get_name || get_name(error, &name) != 0 || !name) return "an unknown error";
    return name;
}

/* Why the backend cannot run here, or NULL. Every visible GPU must have compute capability 8.0 or
 * later: the kernels run on whichever device is current, and an older one has no code for them. */
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

/* ---- pack: the device layout written on the host, then copied to the current device ---- */

qk_status pack(const qk_weights* w, void** packed, size_t* bytes) {
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

/* QK_OK when the device can read `pointer` (device, managed, or mapped host memory), else a failure
 * naming the argument. Plain host memory (malloc, NumPy, a CPU tensor) is refused. */
qk_status check_reachable(const void* pointer, const char* argument, const char* kernel) {
    cudaPointerAttributes attributes;
    cudaError_t e = cudaPointerGetAttributes(&attributes, pointer);
    if (e != cudaSuccess) return fail_cuda(e, argument);
    if (attributes.type == cudaMemoryTypeUnregistered || !attributes.devicePointer)
        return qk_fail(QK_ERR_INVALID_ARGUMENT,
                       "%s is host memory, which kernel '%s' cannot read: the cuda backend takes device pointers",
                       argument, kernel);
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
    qk_status s = check_reachable(a->input, "args->input", name);
    if (s == QK_OK) s = check_reachable(a->output, "args->output", name);
    if (s == QK_OK && a->bias) s = check_reachable(a->bias, "args->bias", name);
    return s == QK_OK ? qk_cuda_kernels[I].run(exec, w, a) : s;
}

template <int... I>
constexpr auto checked_runs(std::integer_sequence<int, I...>) {
    return std::array<decltype(&checked_run<0>), sizeof...(I)>{&checked_run<I>...};
}

/* ---- per-stream scratch ---- */

struct scratch_entry {
    int device;
    void* stream;
    void* memory;
    size_t bytes;
};
enum { MAX_SCRATCH = 256 };
scratch_entry scratch_entries[MAX_SCRATCH];
int scratch_count;
pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;

/* Grows entry e to `bytes`. The old buffer may still be in use by work queued on its stream: wait
 * for that stream first. Growing allocates, which a stream being captured into a CUDA graph cannot
 * do: such a capture must come after a first run at its largest size. */
void* grow(scratch_entry* e, size_t bytes) {
    cudaStream_t stream = (cudaStream_t)e->stream;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    cudaError_t err = cudaStreamIsCapturing(stream, &capture);
    if (err != cudaSuccess) return fail_cuda(err, "scratch for a stream"), nullptr;
    if (capture != cudaStreamCaptureStatusNone) {
        qk_fail(QK_ERR_INVALID_ARGUMENT,
                "cuda: %zu bytes of scratch needed while the stream is captured into a CUDA graph: run the "
                "call once on this stream before capturing it",
                bytes);
        return nullptr;
    }
    if (e->memory) {
        err = cudaStreamSynchronize(stream);
        if (err != cudaSuccess) return fail_cuda(err, "waiting for the stream before its scratch grows"), nullptr;
        cudaFree(e->memory);
        e->memory = nullptr;
        e->bytes = 0;
    }
    err = cudaMalloc(&e->memory, bytes);
    if (err != cudaSuccess) {
        e->memory = nullptr;
        return fail_cuda(err, "allocating scratch"), nullptr;
    }
    e->bytes = bytes;
    return e->memory;
}

} // namespace

extern "C" void* qk_cuda_scratch(void* stream, size_t bytes) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return fail_cuda(err, "the current device"), nullptr;
    pthread_mutex_lock(&scratch_lock);
    scratch_entry* e = nullptr;
    for (int i = 0; i < scratch_count && !e; i++)
        if (scratch_entries[i].device == device && scratch_entries[i].stream == stream) e = &scratch_entries[i];
    if (!e && scratch_count < MAX_SCRATCH) {
        e = &scratch_entries[scratch_count++];
        *e = scratch_entry{device, stream, nullptr, 0};
    }
    void* memory = nullptr;
    if (!e)
        qk_fail(QK_ERR_OUT_OF_MEMORY, "cuda: scratch is kept for at most %d streams", (int)MAX_SCRATCH);
    else
        memory = e->bytes >= bytes ? e->memory : grow(e, bytes);
    pthread_mutex_unlock(&scratch_lock);
    return memory;
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
