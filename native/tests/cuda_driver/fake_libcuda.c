/* A stand-in for the NVIDIA driver (libcuda.so.1) with the five driver API functions the CUDA
 * backend's probe calls, for test_cuda_probe on machines without a GPU. What it reports comes
 * from the environment:
 *   FAKE_CUDA_DRIVER_VERSION  cuDriverGetVersion's answer (default 13000: CUDA 13.0)
 *   FAKE_CUDA_DEVICES         "" or unset: cuInit fails with CUDA_ERROR_NO_DEVICE; else a comma-
 *                             separated compute capability per device, e.g. "9.0" or "8.6,7.5"
 *   FAKE_CUDA_MEMORY_POOLS    "0": no device supports memory pools (default: all do)
 * It has nothing else: the CUDA runtime, which needs much more of the driver, fails cleanly on it,
 * which is what the test checks of a backend that passed the probe on a broken driver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

enum { SUCCESS = 0, ERROR_INVALID_VALUE = 1, ERROR_NO_DEVICE = 100 };
enum { MAX_DEVICES = 8, ATTRIBUTE_MAJOR = 75, ATTRIBUTE_MINOR = 76, ATTRIBUTE_MEMORY_POOLS = 115 };

static int capabilities[MAX_DEVICES][2];

static int devices(void) {
    const char* list = getenv("FAKE_CUDA_DEVICES");
    int n = 0;
    for (const char* at = list ? list : ""; *at && n < MAX_DEVICES; n++) {
        if (sscanf(at, "%d.%d", &capabilities[n][0], &capabilities[n][1]) != 2) break;
        at += strcspn(at, ",");
        at += *at == ',';
    }
    return n;
}

EXPORT int cuInit(unsigned flags) { return flags == 0 && devices() > 0 ? SUCCESS : ERROR_NO_DEVICE; }

EXPORT int cuDriverGetVersion(int* version) {
    const char* v = getenv("FAKE_CUDA_DRIVER_VERSION");
    *version = v ? atoi(v) : 13000;
    return SUCCESS;
}

EXPORT int cuDeviceGetCount(int* count) {
    *count = devices();
    return SUCCESS;
}

EXPORT int cuDeviceGetAttribute(int* value, int attribute, int device) {
    if (device < 0 || device >= devices()) return ERROR_INVALID_VALUE;
    if (attribute == ATTRIBUTE_MEMORY_POOLS) {
        const char* pools = getenv("FAKE_CUDA_MEMORY_POOLS");
        *value = !pools || strcmp(pools, "0") != 0;
        return SUCCESS;
    }
    if (attribute != ATTRIBUTE_MAJOR && attribute != ATTRIBUTE_MINOR) return ERROR_INVALID_VALUE;
    *value = capabilities[device][attribute == ATTRIBUTE_MINOR];
    return SUCCESS;
}

EXPORT int cuGetErrorName(int error, const char** name) {
    *name = error == ERROR_NO_DEVICE ? "CUDA_ERROR_NO_DEVICE" : error == ERROR_INVALID_VALUE ? "CUDA_ERROR_INVALID_VALUE" : "?";
    return SUCCESS;
}
