/* Run-time CPU feature detection. A feature counts only when the CPU reports it AND the operating
 * system saves its register state (XCR0 on x86) AND, for AMX, Linux has granted this process the
 * tile data state. A kernel runs only when it is compiled in and its features are detected. */
#include <pthread.h>

#include "internal.h"

#define BIT(feature) (1ull << (feature))

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* XCR0 bits: which register state the OS saves and restores on context switches. */
enum {
    XCR0_SSE = 1u << 1,
    XCR0_AVX = 1u << 2,           /* upper halves of YMM */
    XCR0_OPMASK = 1u << 5,        /* AVX-512 k0-k7 */
    XCR0_ZMM_HI256 = 1u << 6,     /* upper halves of ZMM0-15 */
    XCR0_HI16_ZMM = 1u << 7,      /* ZMM16-31 */
    XCR0_XTILECFG = 1u << 17,     /* AMX tile configuration */
    XCR0_XTILEDATA = 1u << 18,    /* AMX tile data */
};

static uint64_t read_xcr0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

/* Linux (5.16+) keeps the 8 KiB AMX tile state off until a process asks for it. */
static int request_amx_permission(void) {
#if defined(__linux__)
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}

static uint64_t detect(void) {
    unsigned a, b, c, d;
    uint64_t f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int osxsave = (c >> 27) & 1;
    if (!osxsave) return 0; /* no XGETBV: the OS enables no AVX state */
    uint64_t xcr0 = read_xcr0();
    int avx_state = (xcr0 & (XCR0_SSE | XCR0_AVX)) == (XCR0_SSE | XCR0_AVX);
    uint64_t zmm = XCR0_OPMASK | XCR0_ZMM_HI256 | XCR0_HI16_ZMM;
    int avx512_state = avx_state && (xcr0 & zmm) == zmm;
    int tile_state = (xcr0 & (XCR0_XTILECFG | XCR0_XTILEDATA)) == (XCR0_XTILECFG | XCR0_XTILEDATA);
    if (!avx_state) return 0;
    if ((c >> 12) & 1) f |= BIT(QK_CPU_FMA);
    if ((c >> 29) & 1) f |= BIT(QK_CPU_F16C);

    unsigned max_leaf = __get_cpuid_max(0, NULL);
    if (max_leaf < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    if ((b >> 5) & 1) f |= BIT(QK_CPU_AVX2);
    if (avx512_state) {
        if ((b >> 16) & 1) f |= BIT(QK_CPU_AVX512F);
        if ((b >> 30) & 1) f |= BIT(QK_CPU_AVX512BW);
        if ((b >> 31) & 1) f |= BIT(QK_CPU_AVX512VL);
        if ((b >> 17) & 1) f |= BIT(QK_CPU_AVX512DQ);
        if ((c >> 1) & 1) f |= BIT(QK_CPU_AVX512_VBMI);
        if ((c >> 11) & 1) f |= BIT(QK_CPU_AVX512_VNNI);
        if ((d >> 23) & 1) f |= BIT(QK_CPU_AVX512_FP16);
    }
    uint64_t amx = 0;
    if ((d >> 24) & 1) amx |= BIT(QK_CPU_AMX_TILE);
    if ((d >> 25) & 1) amx |= BIT(QK_CPU_AMX_INT8);
    if ((d >> 22) & 1) amx |= BIT(QK_CPU_AMX_BF16);
    unsigned leaf7_subleaves = a;
    if (leaf7_subleaves >= 1) {
        __cpuid_count(7, 1, a, b, c, d);
        if ((a >> 4) & 1) f |= BIT(QK_CPU_AVX_VNNI);
        if (avx512_state && ((a >> 5) & 1)) f |= BIT(QK_CPU_AVX512_BF16);
        if ((a >> 21) & 1) amx |= BIT(QK_CPU_AMX_FP16);
    }
    if (amx && tile_state && request_amx_permission()) f |= amx;
    return f;
}

#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>

/* From the kernel's uapi asm/hwcap.h, spelled out for older C libraries. */
enum {
    HWCAP_ASIMD_BIT = 1 << 1,
    HWCAP_ASIMDHP_BIT = 1 << 10,  /* half-precision arithmetic */
    HWCAP_ASIMDDP_BIT = 1 << 20,  /* SDOT / UDOT */
    HWCAP_SVE_BIT = 1 << 22,
    HWCAP2_SVE2_BIT = 1 << 1,
    HWCAP2_I8MM_BIT = 1 << 13,    /* SMMLA / UMMLA / USMMLA */
    HWCAP2_BF16_BIT = 1 << 14,
    HWCAP2_SME_BIT = 1 << 23,
};

static uint64_t detect(void) {
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    uint64_t f = 0;
    if (hw & HWCAP_ASIMD_BIT) f |= BIT(QK_CPU_NEON);
    if (hw & HWCAP_ASIMDHP_BIT) f |= BIT(QK_CPU_NEON_FP16);
    if (hw & HWCAP_ASIMDDP_BIT) f |= BIT(QK_CPU_NEON_DOTPROD);
    if (hw2 & HWCAP2_I8MM_BIT) f |= BIT(QK_CPU_NEON_I8MM);
    if (hw2 & HWCAP2_BF16_BIT) f |= BIT(QK_CPU_NEON_BF16);
    if (hw & HWCAP_SVE_BIT) f |= BIT(QK_CPU_SVE);
    if (hw2 & HWCAP2_SVE2_BIT) f |= BIT(QK_CPU_SVE2);
    if (hw2 & HWCAP2_SME_BIT) f |= BIT(QK_CPU_SME);
    return f;
}

#else
static uint64_t detect(void) { return 0; }
#endif

static uint64_t features;
static pthread_once_t features_once = PTHREAD_ONCE_INIT;

static void detect_once(void) { features = detect(); }

uint64_t qk_cpu_features(void) {
    pthread_once(&features_once, detect_once);
    return features;
}

int32_t qk_cpu_has(qk_cpu_feature feature) {
    return feature >= 0 && feature < QK_CPU_FEATURE_COUNT && (qk_cpu_features() >> feature & 1);
}

static const char* const feature_names[QK_CPU_FEATURE_COUNT] = {
    "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512_vbmi", "amx_tile", "amx_int8", "amx_bf16",
    "amx_fp16", "neon", "neon_fp16", "neon_dotprod", "neon_i8mm", "neon_bf16", "sve", "sve2", "sme",
};

const char* qk_cpu_feature_name(qk_cpu_feature feature) {
    return feature >= 0 && feature < QK_CPU_FEATURE_COUNT ? feature_names[feature] : NULL;
}
