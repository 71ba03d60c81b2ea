/* test_errors: every status path of the API (docs/numerics.md section 4). A failing call returns
 * its status, leaves it in qk_last_status() with a message in qk_last_error(), and writes nothing:
 * outputs keep their fill, *out pointers their value. Also the struct size fields (a struct may be
 * an older, shorter one; not shorter than ABI 2's, nor longer than this library's), the registry's
 * checks of a backend that registers, and backends that are registered but unavailable.
 *
 * Usage: test_errors [--seed S] [-v]
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "qkernels_backend.h"
#include "support.h"

enum { EM = 2, EN = 4, EK = 32, EG = 16, FILL = 0x3C };

/* Valid arguments with room around them (for misaligned copies and larger group counts). */
typedef struct {
    int8_t q[EN * EK / 2 + 64];
    float scales[EN * EK]; /* room for any group size */
    int8_t zp[EN * EK];
    float offsets[EN * EK];
    float bias[EN + 16];
    uint16_t x16[EM * EK + 16];
    float x32[EM * EK + 16];
    qk_weights w;
    qk_matmul_args a;
    gbuf out; /* EM * EN float32, or float16 */
} fixture;

static fixture f;
static char scales_copy[sizeof f.scales + 8]; /* for misaligned scales */
static int sentinel;                          /* *out of a failing call keeps pointing here */

static void fixture_init(void) {
    for (size_t i = 0; i < sizeof f.q; i++) f.q[i] = (int8_t)(uint8_t)rnd();
    for (size_t i = 0; i < sizeof f.scales / sizeof f.scales[0]; i++) f.scales[i] = 0.01f;
    for (size_t i = 0; i < sizeof f.zp; i++) f.zp[i] = (int8_t)rnd_int(-8, 7);
    for (size_t i = 0; i < sizeof f.offsets / sizeof f.offsets[0]; i++) f.offsets[i] = 0.005f;
    for (size_t i = 0; i < sizeof f.bias / sizeof f.bias[0]; i++) f.bias[i] = 0.5f;
    for (size_t i = 0; i < sizeof f.x16 / sizeof f.x16[0]; i++) {
        f.x32[i] = rnd_signed(0, 0);
        f.x16[i] = f32_to_f16(f.x32[i]);
    }
    f.out = gbuf_new(EM * EN * 4, FILL);
    memcpy(scales_copy + 1, f.scales, sizeof f.scales);
}

/* Valid arguments: 4-bit asymmetric, group 16, float16 in and out, A16, bias; a success before. */
static void fixture_reset(void) {
    f.w = (qk_weights){.size = sizeof f.w, .data = f.q, .scales = f.scales, .zero_points = f.zp, .N = EN, .K = EK,
                       .group_size = EG, .bits = 4};
    f.a = (qk_matmul_args){.size = sizeof f.a, .input = f.x16, .output = f.out.p, .bias = f.bias, .M = EM,
                           .input_dtype = QK_DTYPE_F16, .mode = QK_MODE_A16, .backend = QK_BACKEND_AUTO};
    gbuf_fill(&f.out, FILL);
    reset_status();
}

/* The call returns want; a failure leaves the fixture's output as it was, a success writes
 * within it. */
#define EXPECT(call, want, what)                                                                            \
    do {                                                                                                     \
        qk_status got_ = (call);                                                                             \
        expect_status_at(got_, (want), __FILE__, __LINE__, (what));                                          \
        if ((want) != QK_OK)                                                                                 \
            check_at(gbuf_untouched(&f.out, FILL), __FILE__, __LINE__, "%s: the output buffer changed", (what)); \
        else                                                                                                 \
            check_at(gbuf_guards_ok(&f.out), __FILE__, __LINE__, "%s: wrote outside the output", (what));    \
    } while (0)

/* qk_matmul on the fixture after the statements in ..., expecting want. */
/* One of qkernels's own backends that no build for this architecture has: forcing it is
 * QK_ERR_BACKEND_UNAVAILABLE, not an unknown name. */
#if defined(__x86_64__)
#define UNBUILT_BACKEND "arm_neon_i8mm"
#else
#define UNBUILT_BACKEND "x86_amx"
#endif

#define MATMUL_ERROR(want, what, ...)                                 \
    do {                                                              \
        fixture_reset();                                              \
        __VA_ARGS__;                                                  \
        EXPECT(qk_matmul(&f.w, &f.a), (want), "qk_matmul: " what);    \
    } while (0)

#define PACKED_ERROR(packed, want, what, ...)                                      \
    do {                                                                           \
        fixture_reset();                                                           \
        __VA_ARGS__;                                                               \
        EXPECT(qk_matmul_packed((packed), &f.a), (want), "qk_matmul_packed: " what); \
    } while (0)

/* Both packing entry points, copying and borrowing, check the same way. */
#define PACK_ERROR(want, what, backend, ...)                                                                 \
    do {                                                                                                      \
        qk_status (*const pack_[2])(const qk_weights*, qk_backend, qk_packed_weights**) = {                   \
            qk_pack_weights, qk_pack_weights_borrowing};                                                      \
        for (int borrow_ = 0; borrow_ < 2; borrow_++) {                                                       \
            fixture_reset();                                                                                  \
            __VA_ARGS__;                                                                                      \
            qk_packed_weights* out_ = (qk_packed_weights*)&sentinel;                                          \
            EXPECT(pack_[borrow_](&f.w, (backend), &out_), (want),                                            \
                   borrow_ ? "qk_pack_weights_borrowing: " what : "qk_pack_weights: " what);                  \
            check_at(out_ == (qk_packed_weights*)&sentinel, __FILE__, __LINE__, "packing: " what ": *out changed"); \
        }                                                                                                     \
    } while (0)

/* quantizedMatMul(input, weights, scales, zp, output, M, N, K, group, bits) after a success; its
 * message names the parameter (`word`), not a field of the structs it fills for qk_matmul. */
#define QMM_ERROR(want, word, what, ...)                                                               \
    do {                                                                                               \
        fixture_reset();                                                                               \
        quantizedMatMul(__VA_ARGS__);                                                                  \
        EXPECT(qk_last_status(), (want), "quantizedMatMul: " what);                                    \
        CHECK(strstr(qk_last_error(), word) && !strstr(qk_last_error(), "->"),                         \
              "quantizedMatMul: " what ": message '%s' does not name %s", qk_last_error(), word);      \
    } while (0)

/* The kernel of `mode` of the ref backend. */
static const char* ref_kernel(qk_mode mode) {
    qk_backend ref = backend_id("ref");
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].backend == ref && kernels[i].mode == mode) return kernels[i].name;
    return "?";
}

static void test_matmul_errors(void) {
    set_context("qk_matmul");
    char* odd = (char*)f.out.p + 1;  /* misaligned for every dtype */
    char* odd2 = (char*)f.out.p + 2; /* aligned for 16-bit, not for float32 */
    fixture_reset();
    EXPECT(qk_matmul(&f.w, &f.a), QK_OK, "the error fixture");
    CHECK(!gbuf_untouched(&f.out, FILL), "the error fixture wrote nothing");
    fixture_reset();
    EXPECT(qk_matmul(NULL, &f.a), QK_ERR_NULL_POINTER, "qk_matmul: weights NULL");
    fixture_reset();
    EXPECT(qk_matmul(&f.w, NULL), QK_ERR_NULL_POINTER, "qk_matmul: args NULL");
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "weights->data NULL", f.w.data = NULL);
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "weights->scales NULL", f.w.scales = NULL);
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "args->input NULL", f.a.input = NULL);
    MATMUL_ERROR(QK_ERR_NULL_POINTER, "args->output NULL", f.a.output = NULL);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "N = 0", f.w.N = 0);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "N < 0", f.w.N = -4);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "K = 0", f.w.K = 0);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "K < 0", f.w.K = -32);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "M = 0", f.a.M = 0);
    MATMUL_ERROR(QK_ERR_INVALID_SIZE, "M < 0", f.a.M = -1);
    MATMUL_ERROR(QK_ERR_INVALID_GROUP, "group 0", f.w.group_size = 0);
    MATMUL_ERROR(QK_ERR_INVALID_GROUP, "group < 0", f.w.group_size = -16);
    MATMUL_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", f.w.K = 31; f.w.group_size = 31);
    MATMUL_ERROR(QK_ERR_ODD_K, "odd K, 4-bit, group 1", f.w.K = 15; f.w.group_size = 1);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 0", f.w.bits = 0);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 2", f.w.bits = 2);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 3", f.w.bits = 3);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits 16", f.w.bits = 16);
    MATMUL_ERROR(QK_ERR_INVALID_BITS, "bits -4", f.w.bits = -4);
    MATMUL_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3", f.a.input_dtype = (qk_dtype)3);
    MATMUL_ERROR(QK_ERR_INVALID_DTYPE, "dtype -1", f.a.input_dtype = (qk_dtype)-1);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "mode 2", f.a.mode = (qk_mode)2);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "mode -1", f.a.mode = (qk_mode)-1);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "backend past the last id", f.a.backend = qk_backend_count() + 1);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "backend -1", f.a.backend = -1);
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "unknown kernel", f.a.kernel = "no_such_kernel_1x1");
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "unknown kernel of a registered backend", f.a.kernel = "ref_no_such_1x1");
    MATMUL_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "a kernel of one of qkernels's backends this build lacks",
                 f.a.kernel = UNBUILT_BACKEND "_a8_w4w8_4x8");
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "empty kernel name", f.a.kernel = "");
    MATMUL_ERROR(QK_ERR_UNSUPPORTED, "A8 kernel forced on A16", f.a.kernel = ref_kernel(QK_MODE_A8));
    /* A stream would mean device pointers: a CPU backend refuses one. */
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "a stream for a CPU backend", f.a.stream = &sentinel);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float16 input at an odd address", f.a.input = (char*)f.x16 + 1);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float32 input at 2 mod 4", f.a.input = (char*)f.x32 + 2;
                 f.a.input_dtype = QK_DTYPE_F32);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float16 output at an odd address", f.a.output = odd);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "float32 output at 2 mod 4", f.a.output = odd2; f.a.input = f.x32;
                 f.a.input_dtype = QK_DTYPE_F32);
    MATMUL_ERROR(QK_ERR_MISALIGNED, "bias at an odd address", f.a.bias = (const float*)((const char*)f.bias + 1));
    MATMUL_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", f.w.scales = (const float*)(scales_copy + 1));
    MATMUL_ERROR(QK_ERR_MISALIGNED, "offsets at an odd address", f.w.offsets = (const float*)(scales_copy + 1));
    f.zp[3] = 8;
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point 8", (void)0);
    f.zp[3] = -9;
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point -9", (void)0);
    f.zp[3] = 0;

    /* Format v2: a group that does not divide K, or is longer than K, is valid here. */
    MATMUL_ERROR(QK_OK, "group not dividing K", f.w.group_size = 5);
    MATMUL_ERROR(QK_OK, "group > K", f.w.group_size = 2 * EK);
    MATMUL_ERROR(QK_OK, "offsets", f.w.offsets = f.offsets);
    /* 8-bit zero points span the whole int8 range. */
    {
        int8_t zp8[EN * EK / 8], q8[EN * EK];
        float s8[EN * EK / 8];
        for (size_t i = 0; i < sizeof zp8; i++) {
            zp8[i] = (int8_t)(i % 2 ? 127 : -128);
            s8[i] = 0x1p-12f;
        }
        memset(q8, 0x80, sizeof q8);
        MATMUL_ERROR(QK_OK, "8-bit zero points -128 / 127", f.w.bits = 8; f.w.group_size = 8; f.w.zero_points = zp8;
                     f.w.data = q8; f.w.scales = s8);
    }
}

static void test_packed_errors(void) {
    set_context("qk_matmul_packed and qk_pack_weights");
    char* odd = (char*)f.out.p + 1;
    char* odd2 = (char*)f.out.p + 2;
    fixture_reset();
    qk_packed_weights* packed = NULL;
    qk_status ps = qk_pack_weights(&f.w, QK_BACKEND_AUTO, &packed);
    if (CHECK(ps == QK_OK && packed, "qk_pack_weights(fixture): %s", qk_last_error())) {
        fixture_reset();
        EXPECT(qk_matmul_packed(NULL, &f.a), QK_ERR_NULL_POINTER, "qk_matmul_packed: packed NULL");
        fixture_reset();
        EXPECT(qk_matmul_packed(packed, NULL), QK_ERR_NULL_POINTER, "qk_matmul_packed: args NULL");
        PACKED_ERROR(packed, QK_ERR_NULL_POINTER, "input NULL", f.a.input = NULL);
        PACKED_ERROR(packed, QK_ERR_NULL_POINTER, "output NULL", f.a.output = NULL);
        PACKED_ERROR(packed, QK_ERR_INVALID_SIZE, "M = 0", f.a.M = 0);
        PACKED_ERROR(packed, QK_ERR_INVALID_SIZE, "M < 0", f.a.M = -7);
        PACKED_ERROR(packed, QK_ERR_INVALID_DTYPE, "dtype 3", f.a.input_dtype = (qk_dtype)3);
        PACKED_ERROR(packed, QK_ERR_INVALID_ARGUMENT, "mode 2", f.a.mode = (qk_mode)2);
        PACKED_ERROR(packed, QK_ERR_INVALID_ARGUMENT, "backend past the last id", f.a.backend = qk_backend_count() + 1);
        PACKED_ERROR(packed, QK_ERR_INVALID_ARGUMENT, "unknown kernel", f.a.kernel = "no_such_kernel_1x1");
        PACKED_ERROR(packed, QK_ERR_MISALIGNED, "float16 input at an odd address", f.a.input = (char*)f.x16 + 1);
        PACKED_ERROR(packed, QK_ERR_MISALIGNED, "float16 output at an odd address", f.a.output = odd);
        PACKED_ERROR(packed, QK_ERR_MISALIGNED, "float32 output at 2 mod 4", f.a.output = odd2; f.a.input = f.x32;
                     f.a.input_dtype = QK_DTYPE_F32);
        PACKED_ERROR(packed, QK_ERR_MISALIGNED, "bias at an odd address",
                     f.a.bias = (const float*)((const char*)f.bias + 1));
        for (int i = 0; i < n_kernels; i++) {
            if (kernels[i].mode != QK_MODE_A8 || !kernels[i].available || kernels[i].backend != qk_packed_backend(packed))
                continue;
            PACKED_ERROR(packed, QK_ERR_UNSUPPORTED, "A8 kernel forced on A16", f.a.kernel = kernels[i].name);
            break;
        }
        for (qk_backend b = 1; b <= qk_backend_count(); b++)
            if (b != qk_packed_backend(packed))
                PACKED_ERROR(packed, QK_ERR_INVALID_ARGUMENT, "a backend other than the packed one", f.a.backend = b);
        PACKED_ERROR(packed, QK_ERR_INVALID_ARGUMENT, "a stream for a CPU backend", f.a.stream = &sentinel);
        PACKED_ERROR(packed, QK_OK, "the fixture", (void)0);
        qk_packed_weights_free(packed);
    }

    fixture_reset();
    EXPECT(qk_pack_weights(&f.w, QK_BACKEND_AUTO, NULL), QK_ERR_NULL_POINTER, "qk_pack_weights: out NULL");
    fixture_reset();
    EXPECT(qk_pack_weights_borrowing(&f.w, QK_BACKEND_AUTO, NULL), QK_ERR_NULL_POINTER,
           "qk_pack_weights_borrowing: out NULL");
    {
        fixture_reset();
        qk_packed_weights* out = (qk_packed_weights*)&sentinel;
        EXPECT(qk_pack_weights(NULL, QK_BACKEND_AUTO, &out), QK_ERR_NULL_POINTER, "qk_pack_weights: weights NULL");
        fixture_reset();
        EXPECT(qk_pack_weights_borrowing(NULL, QK_BACKEND_AUTO, &out), QK_ERR_NULL_POINTER,
               "qk_pack_weights_borrowing: weights NULL");
        CHECK(out == (qk_packed_weights*)&sentinel, "packing: weights NULL: *out changed");
    }
    PACK_ERROR(QK_ERR_NULL_POINTER, "data NULL", QK_BACKEND_AUTO, f.w.data = NULL);
    PACK_ERROR(QK_ERR_NULL_POINTER, "scales NULL", QK_BACKEND_AUTO, f.w.scales = NULL);
    PACK_ERROR(QK_ERR_INVALID_SIZE, "N = 0", QK_BACKEND_AUTO, f.w.N = 0);
    PACK_ERROR(QK_ERR_INVALID_SIZE, "K < 0", QK_BACKEND_AUTO, f.w.K = -2);
    PACK_ERROR(QK_ERR_INVALID_GROUP, "group 0", QK_BACKEND_AUTO, f.w.group_size = 0);
    PACK_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", QK_BACKEND_AUTO, f.w.K = 17; f.w.group_size = 17);
    PACK_ERROR(QK_ERR_INVALID_BITS, "bits 5", QK_BACKEND_AUTO, f.w.bits = 5);
    PACK_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", QK_BACKEND_AUTO,
               f.w.scales = (const float*)(scales_copy + 1));
    PACK_ERROR(QK_ERR_MISALIGNED, "offsets at an odd address", QK_BACKEND_AUTO,
               f.w.offsets = (const float*)(scales_copy + 1));
    f.zp[0] = 8;
    PACK_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point 8", QK_BACKEND_AUTO, (void)0);
    f.zp[0] = 0;
    PACK_ERROR(QK_ERR_INVALID_ARGUMENT, "backend past the last id", qk_backend_count() + 1, (void)0);
    PACK_ERROR(QK_ERR_INVALID_ARGUMENT, "backend -1", -1, (void)0);
}

static void test_quantize_errors(void) {
    set_context("qk_quantize");
    enum { QN = 4, QK = 32 };
    float W[QN * QK + 8];
    uint16_t W16[QN * QK + 8];
    for (int i = 0; i < QN * QK + 8; i++) {
        W[i] = rnd_signed(0, 0);
        W16[i] = f32_to_f16(W[i]);
    }
    gbuf gq = gbuf_new(QN * QK, FILL), gs = gbuf_new(QN * QK * sizeof(float), FILL), gz = gbuf_new(QN * QK, FILL);
    char wcopy[sizeof W + 8];
    memcpy(wcopy + 2, W, sizeof W);
#define QUANTIZE_ERROR(want, what, input, dtype, N, K, bits, gran, G, sym, q, s, z)                                \
    do {                                                                                                             \
        gbuf_fill(&gq, FILL);                                                                                        \
        gbuf_fill(&gs, FILL);                                                                                        \
        gbuf_fill(&gz, FILL);                                                                                        \
        reset_status();                                                                                              \
        qk_status got_ = qk_quantize((input), (dtype), (N), (K), (bits), (gran), (G), (sym), (q), (s), (z));         \
        EXPECT_STATUS(got_, (want), "qk_quantize: " what);                                                           \
        CHECK(gbuf_untouched(&gq, FILL) && gbuf_untouched(&gs, FILL) && gbuf_untouched(&gz, FILL),                  \
              "qk_quantize: %s: an output buffer changed", what);                                                    \
    } while (0)
    int8_t* q = gq.p;
    float* s = gs.p;
    int8_t* z = gz.p;
    const qk_granularity G = QK_PER_GROUP;
    QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "input NULL", NULL, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "q NULL", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, NULL, s, z);
    QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "scales NULL", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q, NULL, z);
    QUANTIZE_ERROR(QK_ERR_NULL_POINTER, "zero_points NULL, asymmetric", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q, s,
                   NULL);
    QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "zero_points given, symmetric", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 1, q, s,
                   z);
    QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "symmetric 5", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 5, q, s, NULL);
    QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "symmetric -1", W, QK_DTYPE_F32, QN, QK, 4, G, 8, -1, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3", W, (qk_dtype)3, QN, QK, 4, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype -1", W, (qk_dtype)-1, QN, QK, 4, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "granularity 3", W, QK_DTYPE_F32, QN, QK, 4, (qk_granularity)3, 8, 0, q, s,
                   z);
    QUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "granularity -1", W, QK_DTYPE_F32, QN, QK, 4, (qk_granularity)-1, 8, 0, q,
                   s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "N = 0", W, QK_DTYPE_F32, 0, QK, 4, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "N < 0", W, QK_DTYPE_F32, -1, QK, 4, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "K = 0", W, QK_DTYPE_F32, QN, 0, 4, QK_PER_CHANNEL, 0, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_BITS, "bits 2", W, QK_DTYPE_F32, QN, QK, 2, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_BITS, "bits 16", W, QK_DTYPE_F32, QN, QK, 16, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group 0", W, QK_DTYPE_F32, QN, QK, 4, G, 0, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group < 0", W, QK_DTYPE_F32, QN, QK, 4, G, -8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", W, QK_DTYPE_F32, QN, 31, 4, QK_PER_CHANNEL, 0, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_MISALIGNED, "float32 input at 2 mod 4", wcopy + 2, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_MISALIGNED, "float16 input at an odd address", (char*)W16 + 1, QK_DTYPE_F16, QN, QK, 4, G, 8,
                   0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", W, QK_DTYPE_F32, QN, QK, 4, G, 8, 0, q,
                   (float*)((char*)s + 1), z);
    /* Non-finite input, in every dtype and at the last element: nothing is written. */
    for (int di = 0; di < 3; di++) {
        qk_dtype dt = all_dtypes[di];
        const float bad[3] = {NAN, INFINITY, -INFINITY};
        void* in = xmalloc(QN * QK * 4);
        for (int b = 0; b < 3; b++) {
            for (int i = 0; i < QN * QK; i++) store_el(in, dt, i, W[i]);
            store_el(in, dt, QN * QK - 1, bad[b]);
            QUANTIZE_ERROR(QK_ERR_NON_FINITE, "NaN / Inf input", in, dt, QN, QK, 8, G, 8, 0, q, s, z);
            QUANTIZE_ERROR(QK_ERR_NON_FINITE, "NaN / Inf input, ragged groups", in, dt, QN, QK, 8, G, 7, 0, q, s, z);
            QUANTIZE_ERROR(QK_ERR_NON_FINITE, "NaN / Inf input, symmetric", in, dt, QN, QK, 4, QK_PER_TENSOR, 0, 1, q,
                           s, NULL);
        }
        free(in);
    }
    /* An asymmetric range that overflows float32 (reading 2). */
    float Wbig[QN * QK];
    memcpy(Wbig, W, sizeof Wbig);
    Wbig[QN * QK - 2] = -3.0e38f;
    Wbig[QN * QK - 1] = 3.0e38f;
    QUANTIZE_ERROR(QK_ERR_NON_FINITE, "range overflows float32", Wbig, QK_DTYPE_F32, QN, QK, 8, G, 8, 0, q, s, z);
    QUANTIZE_ERROR(QK_ERR_NON_FINITE, "range overflows float32, per tensor", Wbig, QK_DTYPE_F32, QN, QK, 4,
                   QK_PER_TENSOR, 0, 0, q, s, z);
#undef QUANTIZE_ERROR
    gbuf_free(&gq);
    gbuf_free(&gs);
    gbuf_free(&gz);
}

static void test_dequantize_errors(void) {
    set_context("qk_dequantize");
    gbuf gd = gbuf_new(EN * EK * 4 + 8, FILL);
    char* d = gd.p;
#define DEQUANTIZE_ERROR(want, what, dtype, output, ...)                                               \
    do {                                                                                                 \
        fixture_reset();                                                                                 \
        gbuf_fill(&gd, FILL);                                                                            \
        __VA_ARGS__;                                                                                     \
        qk_status got_ = qk_dequantize(&f.w, (dtype), (output));                                         \
        EXPECT_STATUS(got_, (want), "qk_dequantize: " what);                                             \
        CHECK(gbuf_untouched(&gd, FILL), "qk_dequantize: %s: the output buffer changed", what);          \
    } while (0)
    fixture_reset();
    EXPECT_STATUS(qk_dequantize(NULL, QK_DTYPE_F32, d), QK_ERR_NULL_POINTER, "qk_dequantize: weights NULL");
    DEQUANTIZE_ERROR(QK_ERR_NULL_POINTER, "data NULL", QK_DTYPE_F32, d, f.w.data = NULL);
    DEQUANTIZE_ERROR(QK_ERR_NULL_POINTER, "scales NULL", QK_DTYPE_F32, d, f.w.scales = NULL);
    DEQUANTIZE_ERROR(QK_ERR_NULL_POINTER, "output NULL", QK_DTYPE_F32, NULL, (void)0);
    DEQUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "N = 0", QK_DTYPE_F32, d, f.w.N = 0);
    DEQUANTIZE_ERROR(QK_ERR_INVALID_SIZE, "K < 0", QK_DTYPE_F32, d, f.w.K = -32);
    DEQUANTIZE_ERROR(QK_ERR_INVALID_GROUP, "group 0", QK_DTYPE_F32, d, f.w.group_size = 0);
    DEQUANTIZE_ERROR(QK_ERR_ODD_K, "odd K, 4-bit", QK_DTYPE_F32, d, f.w.K = 9; f.w.group_size = 3);
    DEQUANTIZE_ERROR(QK_ERR_INVALID_BITS, "bits 1", QK_DTYPE_F32, d, f.w.bits = 1);
    DEQUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3", (qk_dtype)3, d, (void)0);
    DEQUANTIZE_ERROR(QK_ERR_INVALID_DTYPE, "dtype -1", (qk_dtype)-1, d, (void)0);
    DEQUANTIZE_ERROR(QK_ERR_MISALIGNED, "float16 output at an odd address", QK_DTYPE_F16, d + 1, (void)0);
    DEQUANTIZE_ERROR(QK_ERR_MISALIGNED, "float32 output at 2 mod 4", QK_DTYPE_F32, d + 2, (void)0);
    DEQUANTIZE_ERROR(QK_ERR_MISALIGNED, "scales at an odd address", QK_DTYPE_F32, d,
                     f.w.scales = (const float*)(scales_copy + 1));
    DEQUANTIZE_ERROR(QK_ERR_MISALIGNED, "offsets at an odd address", QK_DTYPE_F32, d,
                     f.w.offsets = (const float*)(scales_copy + 1));
    f.zp[5] = 100;
    DEQUANTIZE_ERROR(QK_ERR_INVALID_ARGUMENT, "4-bit zero point 100", QK_DTYPE_F32, d, (void)0);
    f.zp[5] = 0;
#undef DEQUANTIZE_ERROR
    gbuf_free(&gd);
}

static void test_quantized_matmul_errors(void) {
    set_context("quantizedMatMul");
    const void* x = f.x16;
    void* y = f.out.p;
    const int8_t* q = f.q;
    const float* s = f.scales;
    const int8_t* z = f.zp;
    QMM_ERROR(QK_ERR_NULL_POINTER, "input", "input NULL", NULL, q, s, z, y, EM, EN, EK, EG, 4);
    QMM_ERROR(QK_ERR_NULL_POINTER, "weights", "weights NULL", x, NULL, s, z, y, EM, EN, EK, EG, 4);
    QMM_ERROR(QK_ERR_NULL_POINTER, "scales", "scales NULL", x, q, NULL, z, y, EM, EN, EK, EG, 4);
    QMM_ERROR(QK_ERR_NULL_POINTER, "output", "output NULL", x, q, s, z, NULL, EM, EN, EK, EG, 4);
    QMM_ERROR(QK_ERR_INVALID_SIZE, "M=", "M = 0", x, q, s, z, y, 0, EN, EK, EG, 4);
    QMM_ERROR(QK_ERR_INVALID_SIZE, "N=", "N < 0", x, q, s, z, y, EM, -1, EK, EG, 4);
    QMM_ERROR(QK_ERR_INVALID_SIZE, "K=", "K = 0", x, q, s, z, y, EM, EN, 0, EG, 4);
    QMM_ERROR(QK_ERR_INVALID_GROUP, "groupSize", "group 0", x, q, s, z, y, EM, EN, EK, 0, 4);
    /* The planned entry point keeps format v1: the group size divides K. */
    QMM_ERROR(QK_ERR_INVALID_GROUP, "groupSize", "group not dividing K", x, q, s, z, y, EM, EN, EK, 7, 4);
    QMM_ERROR(QK_ERR_INVALID_GROUP, "groupSize", "group > K", x, q, s, z, y, EM, EN, EK, 2 * EK, 4);
    QMM_ERROR(QK_ERR_ODD_K, "K=", "odd K, 4-bit", x, q, s, z, y, EM, EN, 15, 5, 4);
    QMM_ERROR(QK_ERR_INVALID_BITS, "bits", "bits 3", x, q, s, z, y, EM, EN, EK, EG, 3);
    QMM_ERROR(QK_ERR_MISALIGNED, "input", "input at an odd address", (const char*)x + 1, q, s, z, y, EM, EN, EK, EG, 4);
    QMM_ERROR(QK_ERR_MISALIGNED, "output", "output at an odd address", x, q, s, z, (char*)y + 1, EM, EN, EK, EG, 4);
    QMM_ERROR(QK_ERR_MISALIGNED, "scales", "scales at an odd address", x, q, (const float*)(scales_copy + 1), z, y, EM, EN, EK,
              EG, 4);
    f.zp[1] = -100;
    QMM_ERROR(QK_ERR_INVALID_ARGUMENT, "zeroPoints", "4-bit zero point -100", x, q, s, z, y, EM, EN, EK, EG, 4);
    f.zp[1] = 0;
    /* and a success clears an earlier failure */
    fixture_reset();
    qk_kernel_get(-1, NULL);
    quantizedMatMul(x, q, s, z, y, EM, EN, EK, EG, 4);
    CHECK(qk_last_status() == QK_OK && qk_last_error()[0] == '\0', "quantizedMatMul after a failure: status %d",
          (int)qk_last_status());
}

static void test_registry_errors(void) {
    set_context("qk_select_kernel, qk_kernel_get, qk_backend_get, qk_backend_find");
    qk_kernel_info info = {.size = sizeof info};
    fixture_reset();
    EXPECT(qk_select_kernel(&f.w, &f.a, NULL), QK_ERR_NULL_POINTER, "qk_select_kernel: out NULL");
    fixture_reset();
    EXPECT(qk_select_kernel(NULL, &f.a, &info), QK_ERR_NULL_POINTER, "qk_select_kernel: weights NULL");
    fixture_reset();
    EXPECT(qk_select_kernel(&f.w, NULL, &info), QK_ERR_NULL_POINTER, "qk_select_kernel: args NULL");
    fixture_reset();
    f.a.kernel = "no_such_kernel_1x1";
    EXPECT(qk_select_kernel(&f.w, &f.a, &info), QK_ERR_INVALID_ARGUMENT, "qk_select_kernel: unknown kernel");
    fixture_reset();
    f.a.backend = qk_backend_count() + 1;
    EXPECT(qk_select_kernel(&f.w, &f.a, &info), QK_ERR_INVALID_ARGUMENT, "qk_select_kernel: backend past the last id");
    /* Forcing each available kernel on a problem it runs selects it. */
    for (int i = 0; i < n_kernels; i++) {
        if (!kernels[i].available) continue;
        fixture_reset();
        f.a.kernel = kernels[i].name;
        f.a.mode = kernels[i].mode;
        f.w.bits = kernels[i].bits_mask & (1u << 4) ? 4 : 8;
        if (f.w.bits == 8) f.w.zero_points = NULL;
        int32_t multiple = kernels[i].group_multiple; /* else one group longer than K (a shorter last group) */
        f.w.group_size = EK % multiple == 0 ? multiple : (EK / multiple + 1) * multiple;
        for (int d = 0; d < 3; d++)
            if (kernels[i].dtype_mask & (1u << d)) {
                f.a.input_dtype = (qk_dtype)d;
                f.a.input = d == QK_DTYPE_F32 ? (const void*)f.x32 : (const void*)f.x16;
                break;
            }
        qk_status s = qk_select_kernel(&f.w, &f.a, &info);
        CHECK(s == QK_OK && strcmp(info.name, kernels[i].name) == 0,
              "qk_select_kernel with kernel %s forced: status %d, got %s", kernels[i].name, (int)s,
              s == QK_OK ? info.name : "-");
    }
    fixture_reset();
    EXPECT(qk_kernel_get(-1, &info), QK_ERR_INVALID_ARGUMENT, "qk_kernel_get(-1)");
    fixture_reset();
    EXPECT(qk_kernel_get(qk_kernel_count(), &info), QK_ERR_INVALID_ARGUMENT, "qk_kernel_get(count)");
    fixture_reset();
    EXPECT(qk_kernel_get(0, NULL), QK_ERR_NULL_POINTER, "qk_kernel_get(0, NULL)");
    qk_backend_info binfo = {.size = sizeof binfo};
    fixture_reset();
    EXPECT(qk_backend_get(QK_BACKEND_AUTO, &binfo), QK_ERR_INVALID_ARGUMENT, "qk_backend_get(AUTO)");
    fixture_reset();
    EXPECT(qk_backend_get(qk_backend_count() + 1, &binfo), QK_ERR_INVALID_ARGUMENT, "qk_backend_get(count + 1)");
    fixture_reset();
    EXPECT(qk_backend_get(-1, &binfo), QK_ERR_INVALID_ARGUMENT, "qk_backend_get(-1)");
    fixture_reset();
    EXPECT(qk_backend_get(1, NULL), QK_ERR_NULL_POINTER, "qk_backend_get(1, NULL)");
    qk_backend id = -7;
    fixture_reset();
    EXPECT(qk_backend_find(NULL, &id), QK_ERR_NULL_POINTER, "qk_backend_find(NULL)");
    fixture_reset();
    EXPECT(qk_backend_find("ref", NULL), QK_ERR_NULL_POINTER, "qk_backend_find(ref, NULL)");
    fixture_reset();
    EXPECT(qk_backend_find("no_such_backend", &id), QK_ERR_INVALID_ARGUMENT, "qk_backend_find(no_such_backend)");
    fixture_reset();
    EXPECT(qk_backend_find(UNBUILT_BACKEND, &id), QK_ERR_BACKEND_UNAVAILABLE, "qk_backend_find(" UNBUILT_BACKEND ")");
    fixture_reset();
    EXPECT(qk_backend_find("auto", &id), QK_ERR_INVALID_ARGUMENT, "qk_backend_find(auto)");
    CHECK(id == -7, "qk_backend_find: a failure wrote *out");
    /* qk_project_backend: every registered built-in is there, without a reason; the other
     * architecture's is there, with one; past the end, NULL. */
    int saw_ref = 0, saw_unbuilt = 0;
    int32_t known = 0;
    for (const char *name, *why; (name = qk_project_backend(known, &why)) != NULL; known++) {
        int is_registered = qk_backend_find(name, &id) == QK_OK;
        CHECK(is_registered == (why == NULL), "qk_project_backend(%s): a reason iff not registered", name);
        CHECK(why == NULL || strncmp(why, "not built: ", 11) == 0, "qk_project_backend(%s): reason '%s'", name, why);
        saw_ref |= strcmp(name, "ref") == 0 && why == NULL;
        saw_unbuilt |= strcmp(name, UNBUILT_BACKEND) == 0 && why != NULL;
    }
    CHECK(saw_ref && saw_unbuilt, "qk_project_backend: ref (registered) and " UNBUILT_BACKEND " (not built) listed");
    CHECK(qk_project_backend(-1, NULL) == NULL && qk_project_backend(known, NULL) == NULL,
          "qk_project_backend: out of range is NULL");
}

/* Struct sizes: callers set size to sizeof the struct they were compiled with. An older, shorter
 * struct is read up to its size (the fields after it take their defaults); below the ABI 2 fields,
 * or above this library's struct, it is refused. Output structs are filled up to the caller's size. */
static void test_struct_sizes(void) {
    set_context("struct sizes");
    const uint32_t bad_weights[] = {0, 4, offsetof(qk_weights, offsets) - 1, sizeof(qk_weights) + 1,
                                    sizeof(qk_weights) + 64};
    const uint32_t bad_args[] = {0, 4, sizeof(qk_matmul_args) - 1, sizeof(qk_matmul_args) + 8};
    qk_kernel_info info = {.size = sizeof info};
    for (size_t i = 0; i < sizeof bad_weights / sizeof bad_weights[0]; i++) {
        set_context("struct sizes: qk_weights of %u bytes", bad_weights[i]);
        MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "weights->size", f.w.size = bad_weights[i]);
        PACK_ERROR(QK_ERR_INVALID_ARGUMENT, "weights->size", QK_BACKEND_AUTO, f.w.size = bad_weights[i]);
        fixture_reset();
        f.w.size = bad_weights[i];
        EXPECT(qk_select_kernel(&f.w, &f.a, &info), QK_ERR_INVALID_ARGUMENT, "qk_select_kernel: weights->size");
        EXPECT(qk_dequantize(&f.w, QK_DTYPE_F16, f.out.p), QK_ERR_INVALID_ARGUMENT, "qk_dequantize: weights->size");
    }
    for (size_t i = 0; i < sizeof bad_args / sizeof bad_args[0]; i++) {
        set_context("struct sizes: qk_matmul_args of %u bytes", bad_args[i]);
        MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "args->size", f.a.size = bad_args[i]);
        fixture_reset();
        f.a.size = bad_args[i];
        EXPECT(qk_select_kernel(&f.w, &f.a, &info), QK_ERR_INVALID_ARGUMENT, "qk_select_kernel: args->size");
    }
    set_context("struct sizes: qk_matmul_args and qk_plan_desc with packed weights");
    qk_packed_weights* packed = NULL;
    fixture_reset();
    if (CHECK(qk_pack_weights(&f.w, QK_BACKEND_AUTO, &packed) == QK_OK, "qk_pack_weights: %s", qk_last_error())) {
        for (size_t i = 0; i < sizeof bad_args / sizeof bad_args[0]; i++)
            PACKED_ERROR(packed, QK_ERR_INVALID_ARGUMENT, "args->size", f.a.size = bad_args[i]);
        const uint32_t bad_desc[] = {0, 4, sizeof(qk_plan_desc) - 1, sizeof(qk_plan_desc) + 4};
        for (size_t i = 0; i < sizeof bad_desc / sizeof bad_desc[0]; i++) {
            qk_plan_desc desc = {.size = bad_desc[i], .mode = QK_MODE_A16, .input_dtype = QK_DTYPE_F16};
            qk_plan* plan = (qk_plan*)&sentinel;
            fixture_reset();
            EXPECT(qk_plan_create(packed, &desc, &plan), QK_ERR_INVALID_ARGUMENT, "qk_plan_create: desc->size");
            CHECK(plan == (qk_plan*)&sentinel, "qk_plan_create: desc->size %u: *out changed", bad_desc[i]);
        }
        qk_packed_weights_free(packed);
    }

    set_context("struct sizes: older and output structs");
    /* A qk_weights of before offsets, or a size that ends inside the field: the field is not read
     * (here it would be misaligned), and the result is the one without offsets. */
    {
        gbuf without = gbuf_new(f.out.n, FILL);
        fixture_reset();
        f.a.output = without.p;
        CHECK(qk_matmul(&f.w, &f.a) == QK_OK, "qk_matmul without offsets: %s", qk_last_error());
        for (uint32_t cut = 0; cut < sizeof(void*); cut += 4) {
            MATMUL_ERROR(QK_OK, "a qk_weights without the offsets field", f.w.size = offsetof(qk_weights, offsets) + cut;
                         f.w.offsets = (const float*)(scales_copy + 1));
            CHECK(memcmp(f.out.p, without.p, f.out.n) == 0,
                  "a qk_weights of %u bytes (no offsets) differs from offsets NULL",
                  (unsigned)(offsetof(qk_weights, offsets) + cut));
        }
        fixture_reset();
        f.w.size = offsetof(qk_weights, offsets);
        f.w.offsets = (const float*)(scales_copy + 1);
        packed = NULL;
        CHECK(qk_pack_weights(&f.w, QK_BACKEND_AUTO, &packed) == QK_OK, "qk_pack_weights, older qk_weights: %s",
              qk_last_error());
        qk_packed_weights_free(packed);
        gbuf_free(&without);
    }

    /* Output structs: refused below their ABI 2 part or above this library's; filled up to the
     * caller's size, the rest untouched. */
    struct {
        qk_kernel_info info;
        unsigned char after[16];
    } ki;
    const uint32_t kernel_sizes[] = {0, 4, offsetof(qk_kernel_info, format_flags) - 1, sizeof(qk_kernel_info) + 4};
    for (size_t i = 0; i < sizeof kernel_sizes / sizeof kernel_sizes[0]; i++) {
        memset(&ki, FILL, sizeof ki);
        ki.info.size = kernel_sizes[i];
        fixture_reset();
        EXPECT(qk_kernel_get(0, &ki.info), QK_ERR_INVALID_ARGUMENT, "qk_kernel_get: out->size");
        EXPECT(qk_select_kernel(&f.w, &f.a, &ki.info), QK_ERR_INVALID_ARGUMENT, "qk_select_kernel: out->size");
        CHECK(ki.info.size == kernel_sizes[i] && ki.after[0] == FILL, "a refused qk_kernel_info was written");
    }
    memset(&ki, FILL, sizeof ki);
    ki.info.size = offsetof(qk_kernel_info, format_flags);
    fixture_reset();
    EXPECT(qk_kernel_get(0, &ki.info), QK_OK, "qk_kernel_get: an older qk_kernel_info");
    const unsigned char* tail = (const unsigned char*)&ki.info + offsetof(qk_kernel_info, format_flags);
    int untouched = 1;
    for (size_t i = 0; i < sizeof ki - offsetof(qk_kernel_info, format_flags); i++) untouched &= tail[i] == FILL;
    CHECK(untouched && ki.info.size == offsetof(qk_kernel_info, format_flags) && ki.info.name &&
              strcmp(ki.info.name, kernels[0].name) == 0,
          "qk_kernel_get into an older qk_kernel_info: wrong fields, or written past its size");

    struct {
        qk_backend_info info;
        unsigned char after[16];
    } bi;
    const uint32_t backend_sizes[] = {0, offsetof(qk_backend_info, library) - 1, sizeof(qk_backend_info) + 8};
    for (size_t i = 0; i < sizeof backend_sizes / sizeof backend_sizes[0]; i++) {
        memset(&bi, FILL, sizeof bi);
        bi.info.size = backend_sizes[i];
        fixture_reset();
        EXPECT(qk_backend_get(1, &bi.info), QK_ERR_INVALID_ARGUMENT, "qk_backend_get: out->size");
        CHECK(bi.info.size == backend_sizes[i] && bi.after[0] == FILL, "a refused qk_backend_info was written");
    }
    memset(&bi, FILL, sizeof bi);
    bi.info.size = offsetof(qk_backend_info, library);
    fixture_reset();
    EXPECT(qk_backend_get(1, &bi.info), QK_OK, "qk_backend_get: an older qk_backend_info");
    tail = (const unsigned char*)&bi.info + offsetof(qk_backend_info, library);
    untouched = 1;
    for (size_t i = 0; i < sizeof bi - offsetof(qk_backend_info, library); i++) untouched &= tail[i] == FILL;
    CHECK(untouched && bi.info.name && strcmp(bi.info.name, backend_name(1)) == 0,
          "qk_backend_get into an older qk_backend_info: wrong fields, or written past its size");
}

static void test_plan_errors(void) {
    set_context("plans");
    qk_packed_weights* packed = NULL;
    fixture_reset();
    if (!CHECK(qk_pack_weights(&f.w, QK_BACKEND_AUTO, &packed) == QK_OK, "qk_pack_weights: %s", qk_last_error()))
        return;
    qk_plan_desc desc = {.size = sizeof desc, .mode = QK_MODE_A16, .input_dtype = QK_DTYPE_F16};
    qk_plan* plan = (qk_plan*)&sentinel;
#define CREATE_ERROR(want, what, packed_, desc_)                                                            \
    do {                                                                                                     \
        fixture_reset();                                                                                     \
        plan = (qk_plan*)&sentinel;                                                                          \
        qk_plan_desc d_ = (desc_);                                                                           \
        EXPECT(qk_plan_create((packed_), &d_, &plan), (want), "qk_plan_create: " what);                      \
        CHECK(plan == (qk_plan*)&sentinel, "qk_plan_create: %s: *out changed", what);                        \
    } while (0)
    fixture_reset();
    EXPECT(qk_plan_create(packed, NULL, &plan), QK_ERR_NULL_POINTER, "qk_plan_create: desc NULL");
    fixture_reset();
    EXPECT(qk_plan_create(packed, &desc, NULL), QK_ERR_NULL_POINTER, "qk_plan_create: out NULL");
    CREATE_ERROR(QK_ERR_NULL_POINTER, "packed NULL", NULL, desc);
    CREATE_ERROR(QK_ERR_INVALID_ARGUMENT, "mode 2",
                 packed, ((qk_plan_desc){.size = sizeof desc, .mode = (qk_mode)2, .input_dtype = QK_DTYPE_F16}));
    CREATE_ERROR(QK_ERR_INVALID_DTYPE, "dtype 3",
                 packed, ((qk_plan_desc){.size = sizeof desc, .mode = QK_MODE_A16, .input_dtype = (qk_dtype)3}));
    CREATE_ERROR(QK_ERR_INVALID_SIZE, "max_m -1",
                 packed, ((qk_plan_desc){.size = sizeof desc, .mode = QK_MODE_A16, .input_dtype = QK_DTYPE_F16, .max_m = -1}));
    CREATE_ERROR(QK_ERR_INVALID_ARGUMENT, "unknown kernel",
                 packed, ((qk_plan_desc){.size = sizeof desc, .mode = QK_MODE_A16, .input_dtype = QK_DTYPE_F16,
                                         .kernel = "no_such_kernel_1x1"}));
    for (int i = 0; i < n_kernels; i++)
        if (kernels[i].backend == qk_packed_backend(packed) && kernels[i].mode == QK_MODE_A8 && kernels[i].available) {
            CREATE_ERROR(QK_ERR_UNSUPPORTED, "an A8 kernel forced on an A16 plan",
                         packed, ((qk_plan_desc){.size = sizeof desc, .mode = QK_MODE_A16, .input_dtype = QK_DTYPE_F16,
                                                 .kernel = kernels[i].name}));
            break;
        }
#undef CREATE_ERROR
    fixture_reset();
    plan = NULL;
    if (CHECK(qk_plan_create(packed, &desc, &plan) == QK_OK, "qk_plan_create: %s", qk_last_error())) {
        fixture_reset();
        EXPECT(qk_plan_run(NULL, f.x16, f.out.p, NULL, EM, NULL), QK_ERR_NULL_POINTER, "qk_plan_run: plan NULL");
        fixture_reset();
        EXPECT(qk_plan_run(plan, NULL, f.out.p, NULL, EM, NULL), QK_ERR_NULL_POINTER, "qk_plan_run: input NULL");
        fixture_reset();
        EXPECT(qk_plan_run(plan, f.x16, NULL, NULL, EM, NULL), QK_ERR_NULL_POINTER, "qk_plan_run: output NULL");
        fixture_reset();
        EXPECT(qk_plan_run(plan, f.x16, f.out.p, NULL, 0, NULL), QK_ERR_INVALID_SIZE, "qk_plan_run: M = 0");
        fixture_reset();
        EXPECT(qk_plan_run(plan, f.x16, f.out.p, NULL, -3, NULL), QK_ERR_INVALID_SIZE, "qk_plan_run: M < 0");
        fixture_reset();
        EXPECT(qk_plan_run(plan, (const char*)f.x16 + 1, f.out.p, NULL, EM, NULL), QK_ERR_MISALIGNED,
               "qk_plan_run: input at an odd address");
        fixture_reset();
        EXPECT(qk_plan_run(plan, f.x16, (char*)f.out.p + 1, NULL, EM, NULL), QK_ERR_MISALIGNED,
               "qk_plan_run: output at an odd address");
        fixture_reset();
        EXPECT(qk_plan_run(plan, f.x16, f.out.p, (const float*)((const char*)f.bias + 2), EM, NULL), QK_ERR_MISALIGNED,
               "qk_plan_run: bias at 2 mod 4");
        qk_kernel_info info = {.size = sizeof info};
        fixture_reset();
        EXPECT(qk_plan_kernel(NULL, 1, &info), QK_ERR_NULL_POINTER, "qk_plan_kernel: plan NULL");
        fixture_reset();
        EXPECT(qk_plan_kernel(plan, 1, NULL), QK_ERR_NULL_POINTER, "qk_plan_kernel: out NULL");
        fixture_reset();
        EXPECT(qk_plan_kernel(plan, 0, &info), QK_ERR_INVALID_SIZE, "qk_plan_kernel: M = 0");
        info.size = 4;
        fixture_reset();
        EXPECT(qk_plan_kernel(plan, 1, &info), QK_ERR_INVALID_ARGUMENT, "qk_plan_kernel: out->size 4");
        fixture_reset();
        EXPECT(qk_plan_run(plan, f.x16, f.out.p, f.bias, EM, &sentinel), QK_ERR_INVALID_ARGUMENT,
               "qk_plan_run: a stream for a CPU backend");
        fixture_reset();
        EXPECT(qk_plan_run(plan, f.x16, f.out.p, f.bias, EM, NULL), QK_OK, "qk_plan_run: the fixture");
        qk_plan_free(plan);
    }
    qk_packed_weights_free(packed);
}

static void test_threads_errors(void) {
    set_context("qk_set_num_threads");
    fixture_reset();
    EXPECT(qk_set_num_threads(-1), QK_ERR_INVALID_ARGUMENT, "qk_set_num_threads(-1)");
    fixture_reset();
    EXPECT(qk_set_num_threads(QK_MAX_THREADS + 1), QK_ERR_INVALID_ARGUMENT, "qk_set_num_threads(QK_MAX_THREADS + 1)");
    fixture_reset();
    EXPECT(qk_set_num_threads(100000), QK_ERR_INVALID_ARGUMENT, "qk_set_num_threads(100000)");
    fixture_reset();
    EXPECT(qk_set_num_threads(QK_MAX_THREADS), QK_OK, "qk_set_num_threads(QK_MAX_THREADS)");
    fixture_reset();
    EXPECT(qk_set_num_threads(0), QK_OK, "qk_set_num_threads(0)");
}

/* ---- backends registered by this program ---- */

static const char* no_device(void) { return "the test's imaginary device is not attached"; }

static qk_status never_runs(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    (void)exec;
    (void)w;
    (void)a;
    return qk_fail(QK_ERR_UNSUPPORTED, "an unavailable backend's kernel ran");
}

static const qk_kernel_desc unavailable_kernels[] = {
    {.name = "test_errors_unavailable_a16_w4w8_1x1", .mode = QK_MODE_A16, .bits_mask = (1u << 4) | (1u << 8),
     .dtype_mask = 7u, .group_multiple = 1, .canonical = 1, .run = never_runs},
};

static const qk_backend_desc unavailable = {
    .size = sizeof unavailable, .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_unavailable",
    .priority = 1000, .probe = no_device, .kernels = unavailable_kernels, .kernel_count = 1,
};

/* qk_register_backend refuses a malformed backend, and assigns the next id to a good one. */
static void test_registration(void) {
    set_context("qk_register_backend");
    int32_t count = qk_backend_count();
    const qk_kernel_desc no_run[] = {{.name = "test_errors_bad_a16", .group_multiple = 1}};
    const qk_kernel_desc no_name[] = {{.group_multiple = 1, .run = never_runs}};
    const qk_kernel_desc zero_multiple[] = {{.name = "test_errors_bad_a16", .run = never_runs}};
    struct {
        qk_backend_desc desc;
        qk_status want;
        const char* what;
    } bad[] = {
        {{.size = 8, .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_bad"}, QK_ERR_INVALID_ARGUMENT, "size 8"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION + 1, .name = "test_errors_bad"},
         QK_ERR_INVALID_ARGUMENT, "a later backend ABI"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION}, QK_ERR_INVALID_ARGUMENT, "name NULL"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = ""}, QK_ERR_INVALID_ARGUMENT,
         "empty name"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "auto"},
         QK_ERR_INVALID_ARGUMENT, "name auto"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "ref"}, QK_ERR_INVALID_ARGUMENT,
         "a name already registered"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_bad",
          .kernels = no_run, .kernel_count = 1},
         QK_ERR_INVALID_ARGUMENT, "a kernel without run"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_bad",
          .kernels = no_name, .kernel_count = 1},
         QK_ERR_INVALID_ARGUMENT, "a kernel without a name"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_bad",
          .kernels = zero_multiple, .kernel_count = 1},
         QK_ERR_INVALID_ARGUMENT, "group_multiple 0"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_bad",
          .kernel_count = 2},
         QK_ERR_INVALID_ARGUMENT, "kernel_count 2, kernels NULL"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_bad",
          .kernel_count = -1},
         QK_ERR_INVALID_ARGUMENT, "kernel_count -1"},
        {{.size = sizeof(qk_backend_desc), .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_bad",
          .free_packed = free},
         QK_ERR_INVALID_ARGUMENT, "free_packed without pack"},
    };
    qk_backend id = -7;
    reset_status();
    EXPECT_STATUS(qk_register_backend(NULL, &id), QK_ERR_NULL_POINTER, "qk_register_backend(NULL)");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "qk_register_backend: %s", bad[i].what);
        reset_status();
        EXPECT_STATUS(qk_register_backend(&bad[i].desc, &id), bad[i].want, what);
    }
    CHECK(id == -7 && qk_backend_count() == count, "a refused registration wrote *id or took an id");

    reset_status();
    EXPECT_STATUS(qk_register_backend(&unavailable, &id), QK_OK, "qk_register_backend(test_errors_unavailable)");
    CHECK(id == count + 1 && qk_backend_count() == count + 1 && backend_id("test_errors_unavailable") == id,
          "the new backend has id %d, count %d (was %d)", (int)id, (int)qk_backend_count(), (int)count);
    qk_backend_info info = {.size = sizeof info, .reason = "", .library = ""};
    CHECK(qk_backend_get(id, &info) == QK_OK && !info.available && !info.detected && info.compiled &&
              strcmp(info.reason, no_device()) == 0 && info.library[0] == '\0' && info.priority == 1000,
          "test_errors_unavailable: available %d, detected %d, reason '%s', library '%s'", info.available,
          info.detected, info.reason, info.library);
    reset_status();
    EXPECT_STATUS(qk_register_backend(&unavailable, NULL), QK_ERR_INVALID_ARGUMENT, "qk_register_backend twice");

    /* A CPU feature this machine lacks makes the reason name it. */
    for (int feature = 0; feature < QK_CPU_FEATURE_COUNT; feature++) {
        if (qk_cpu_has((qk_cpu_feature)feature)) continue;
        static qk_backend_desc needs_feature = {
            .size = sizeof needs_feature, .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_missing_feature",
            .priority = -1000};
        needs_feature.required_cpu = 1ull << feature;
        reset_status();
        EXPECT_STATUS(qk_register_backend(&needs_feature, &id), QK_OK, "qk_register_backend(test_errors_missing_feature)");
        CHECK(qk_backend_get(id, &info) == QK_OK && !info.available && !info.detected &&
                  strstr(info.reason, qk_cpu_feature_name((qk_cpu_feature)feature)),
              "a backend needing %s: available %d, reason '%s'", qk_cpu_feature_name((qk_cpu_feature)feature),
              info.available, info.reason);
        break;
    }
}

/* An unavailable backend, and its kernels, are refused wherever they are forced, with its reason;
 * automatic dispatch passes over it though its priority is the highest. */
static void test_unavailable(void) {
    set_context("an unavailable backend");
    load_kernels();
    qk_backend id = backend_id("test_errors_unavailable");
    const char* kernel = unavailable_kernels[0].name;
    int ki = find_kernel(kernel);
    CHECK(ki >= 0 && !kernels[ki].available && kernels[ki].backend == id, "kernel %s: enumerated %d", kernel, ki);
    CHECK(ki == 0, "the backend of the highest priority comes first in dispatch order, its kernel is at %d", ki);
    MATMUL_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "unavailable backend forced", f.a.backend = id);
    CHECK(strstr(qk_last_error(), "test_errors_unavailable") && strstr(qk_last_error(), no_device()),
          "the message '%s' does not name the backend and its reason", qk_last_error());
    MATMUL_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "unavailable kernel forced", f.a.kernel = kernel);
    CHECK(strstr(qk_last_error(), no_device()), "the message '%s' does not give the reason", qk_last_error());
    PACK_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "unavailable backend", id, (void)0);
    qk_kernel_info info = {.size = sizeof info};
    fixture_reset();
    f.a.backend = id;
    EXPECT(qk_select_kernel(&f.w, &f.a, &info), QK_ERR_BACKEND_UNAVAILABLE, "qk_select_kernel: unavailable backend");
    /* A kernel forced together with a backend it does not belong to. */
    MATMUL_ERROR(QK_ERR_INVALID_ARGUMENT, "a ref kernel forced with another backend", f.a.backend = id;
                 f.a.kernel = ref_kernel(QK_MODE_A16));
    fixture_reset();
    CHECK(qk_select_kernel(&f.w, &f.a, &info) == QK_OK && info.backend != id && info.available,
          "automatic dispatch chose %s", info.name);
}

/* A kernel that needs a CPU feature this machine lacks, in an available backend: listed with what it
 * needs but unavailable, refused when forced with the feature named, passed over by automatic
 * dispatch though its backend comes first. */
static void test_kernel_needing_a_feature(void) {
    set_context("a kernel needing a missing CPU feature");
    int feature = 0;
    while (feature < QK_CPU_FEATURE_COUNT && qk_cpu_has((qk_cpu_feature)feature)) feature++;
    if (feature == QK_CPU_FEATURE_COUNT) return; /* a CPU with every feature: nothing to lack */
    static qk_kernel_desc needs[] = {
        {.name = "test_errors_needs_feature_a16_w4w8_1x1", .mode = QK_MODE_A16, .bits_mask = (1u << 4) | (1u << 8),
         .dtype_mask = 7u, .group_multiple = 1, .canonical = 1, .run = never_runs},
    };
    needs[0].required_cpu = 1ull << feature;
    static const qk_backend_desc backend = {
        .size = sizeof backend, .abi_version = QK_BACKEND_ABI_VERSION, .name = "test_errors_kernel_needs_feature",
        .priority = 2000, .kernels = needs, .kernel_count = 1,
    };
    qk_backend id = 0;
    reset_status();
    EXPECT_STATUS(qk_register_backend(&backend, &id), QK_OK, "qk_register_backend(test_errors_kernel_needs_feature)");
    load_kernels();
    int ki = find_kernel(needs[0].name);
    CHECK(ki == 0 && !kernels[ki].available && kernels[ki].required_cpu == 1ull << feature,
          "kernel %s: at %d, available %d", needs[0].name, ki, ki >= 0 ? kernels[ki].available : -1);
    MATMUL_ERROR(QK_ERR_BACKEND_UNAVAILABLE, "a kernel needing a missing feature forced", f.a.kernel = needs[0].name);
    CHECK(strstr(qk_last_error(), qk_cpu_feature_name((qk_cpu_feature)feature)),
          "the message '%s' does not name the missing feature", qk_last_error());
    MATMUL_ERROR(QK_ERR_UNSUPPORTED, "its backend forced, which has no other kernel", f.a.backend = id);
    qk_kernel_info info = {.size = sizeof info};
    fixture_reset();
    CHECK(qk_select_kernel(&f.w, &f.a, &info) == QK_OK && info.backend != id && info.available,
          "automatic dispatch chose %s", info.name);
}

int main(int argc, char** argv) {
    test_begin("test_errors", argc, argv, NULL, NULL);
    reseed(2);
    load_kernels();
    fixture_init();
    test_matmul_errors();
    test_packed_errors();
    test_quantize_errors();
    test_dequantize_errors();
    test_quantized_matmul_errors();
    test_registry_errors();
    test_struct_sizes();
    test_plan_errors();
    test_threads_errors();
    test_registration();
    test_unavailable();
    test_kernel_needing_a_feature();
    gbuf_free(&f.out);
    return test_end();
}
