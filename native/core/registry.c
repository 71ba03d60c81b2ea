/* The registry: every backend and every kernel qkernels has, in one place. Dispatch, the C tests
 * (native/tests), the Python tests and the benchmarks all enumerate these tables, so adding a
 * kernel means one source file and one line below.
 *
 * Kernel names read  <backend>_<mode>_<weight bits>_<tile MxN>  with the tile the kernel computes
 * per step. Kernels are listed best first: automatic dispatch takes the first line whose backend
 * is available and which supports the problem (mode, bits, dtype, group size, preferred M).
 * A kernel whose integer accumulator is exact only up to some group size states it as max G
 * (int32 over int8 x (q - zp) products: 66311, docs/numerics.md reading 5). */
#include <stdio.h>

#include "internal.h"

/* CMake defines QK_HAVE_<BACKEND>=1 for each backend whose sources it compiles (CMakeLists.txt);
 * a backend's kernels and its registry lines exist only then. */
#ifndef QK_HAVE_X86_AMX
#define QK_HAVE_X86_AMX 0
#endif
#ifndef QK_HAVE_X86_AVX512_VNNI
#define QK_HAVE_X86_AVX512_VNNI 0
#endif
#ifndef QK_HAVE_X86_AVX2
#define QK_HAVE_X86_AVX2 0
#endif
#ifndef QK_HAVE_ARM_NEON
#define QK_HAVE_ARM_NEON 0
#endif

#if QK_HAVE_X86_AVX2
#include "../x86_avx2/avx2.h"
#define QK_AVX2_PACK qk_avx2_pack
#else
#define QK_AVX2_PACK NULL
#endif
#if QK_HAVE_ARM_NEON
#include "../arm_neon/arm_kernels.h"
#define QK_ARM_PACK_I8MM qk_arm_pack_i8mm
#define QK_ARM_PACK_DOTPROD qk_arm_pack_dotprod
#else
#define QK_ARM_PACK_I8MM NULL
#define QK_ARM_PACK_DOTPROD NULL
#endif

/* name, compiled, required CPU features, pack (NULL: the kernels read the canonical format) */
static const qk_backend_impl backends[QK_BACKEND_COUNT] = {
    [QK_BACKEND_CUDA] = {"cuda", 0, 0, NULL},
    [QK_BACKEND_X86_AMX] = {"x86_amx", QK_HAVE_X86_AMX, QK_CPU_AMX_TILE | QK_CPU_AMX_INT8 | QK_CPU_AMX_BF16, NULL},
    [QK_BACKEND_X86_AVX512_VNNI] = {"x86_avx512_vnni", QK_HAVE_X86_AVX512_VNNI,
                                    QK_CPU_AVX512F | QK_CPU_AVX512BW | QK_CPU_AVX512VL | QK_CPU_AVX512_VNNI,
                                    NULL},
    [QK_BACKEND_X86_AVX2] = {"x86_avx2", QK_HAVE_X86_AVX2, QK_CPU_AVX2 | QK_CPU_FMA | QK_CPU_F16C, QK_AVX2_PACK},
    [QK_BACKEND_ARM_NEON_I8MM] = {"arm_neon_i8mm", QK_HAVE_ARM_NEON, QK_CPU_NEON | QK_CPU_NEON_I8MM, QK_ARM_PACK_I8MM},
    [QK_BACKEND_ARM_NEON_DOTPROD] = {"arm_neon_dotprod", QK_HAVE_ARM_NEON, QK_CPU_NEON | QK_CPU_NEON_DOTPROD, QK_ARM_PACK_DOTPROD},
    [QK_BACKEND_REF] = {"ref", 1, 0, NULL},
};

static const qk_kernel kernels[] = {
    /* name             backend         mode         bits                   dtypes        G multiple, max G, max M, run */
#if QK_HAVE_X86_AVX2
    {"x86_avx2_a16_w4w8_4x8", QK_BACKEND_X86_AVX2, QK_MODE_A16, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 0, 16, qk_avx2_matmul_a16},
    {"x86_avx2_a16_w4w8_6x16", QK_BACKEND_X86_AVX2, QK_MODE_A16, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 0, 0, qk_avx2_matmul_a16_gemm},
    {"x86_avx2_a8_w4w8_4x8", QK_BACKEND_X86_AVX2, QK_MODE_A8, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 66311, 0, qk_avx2_matmul_a8},
#endif
#if QK_HAVE_ARM_NEON
    /* Any group size (groups are padded to 16 k at pack time); A8 sums are exact int32 up to G = 66311. */
    {"arm_neon_i8mm_a8_w4w8_4x8", QK_BACKEND_ARM_NEON_I8MM, QK_MODE_A8, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 66311, 0, qk_arm_i8mm_a8},
    {"arm_neon_i8mm_a16_w4w8_8x8", QK_BACKEND_ARM_NEON_I8MM, QK_MODE_A16, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 0, 0, qk_arm_a16},
    {"arm_neon_dotprod_a8_w4w8_4x8", QK_BACKEND_ARM_NEON_DOTPROD, QK_MODE_A8, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 66311, 0, qk_arm_dotprod_a8},
    {"arm_neon_dotprod_a16_w4w8_8x8", QK_BACKEND_ARM_NEON_DOTPROD, QK_MODE_A16, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 0, 0, qk_arm_a16},
#endif
    {"ref_a16_w4w8_1x1", QK_BACKEND_REF, QK_MODE_A16, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 0, 0, qk_ref_matmul_a16},
    {"ref_a8_w4w8_1x1", QK_BACKEND_REF, QK_MODE_A8, QK_BITS_4 | QK_BITS_8, QK_DTYPES_FLOAT, 1, 0, 0, qk_ref_matmul_a8},
};

const qk_backend_impl* qk_backend_impl_get(qk_backend backend) {
    if (backend <= QK_BACKEND_AUTO || backend >= QK_BACKEND_COUNT) return NULL;
    return &backends[backend];
}

int32_t qk_registry_size(void) { return (int32_t)(sizeof kernels / sizeof kernels[0]); }

const qk_kernel* qk_registry_get(int32_t index) {
    return index >= 0 && index < qk_registry_size() ? &kernels[index] : NULL;
}

int qk_backend_detected(qk_backend backend) {
    const qk_backend_impl* b = qk_backend_impl_get(backend);
    if (!b || backend == QK_BACKEND_CUDA) return 0; /* a GPU is libqkernels_cuda's to detect */
    return b->required_cpu == 0 || (qk_cpu_features() & b->required_cpu) == b->required_cpu;
}

const char* qk_backend_unavailable_reason(qk_backend backend) {
    const qk_backend_impl* b = qk_backend_impl_get(backend);
    if (!b) return "no such backend";
    if (backend == QK_BACKEND_CUDA) return "lives in libqkernels_cuda, not in this library";
    if (!b->compiled) return "not compiled into this build of libqkernels";
    if (qk_backend_detected(backend)) return "";
    uint64_t missing = b->required_cpu & ~qk_cpu_features();
    static _Thread_local char reason[256];
    int used = snprintf(reason, sizeof reason, "this CPU or its operating system lacks");
    for (int i = 0; i < QK_CPU_FEATURE_BITS && used < (int)sizeof reason; i++)
        if (missing & (1ull << i))
            used += snprintf(reason + used, sizeof reason - (size_t)used, " %s",
                             qk_cpu_feature_name(1ull << i));
    return reason;
}
