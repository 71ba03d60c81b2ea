/* test_amx_emulation: the AMX emulator of the emulated test build (emulation/amx_emulation.h) against a
 * scalar model of each instruction, its faults, and, where this CPU has AMX, the real instructions.
 *
 * Each case draws tile shapes (rows, depth, columns within palette 1), strides wider than the
 * rows, and random data: bytes over their whole range, int32 accumulators near the wrap-around,
 * bfloat16 values with subnormals, zeros and both signs. The byte products must match the model and
 * the hardware exactly; tdpbf16ps within the rounding of its float32 additions (the hardware adds
 * in another order). Stores must leave the bytes between rows alone. Bad shapes, a missing
 * configuration and shared tiles must abort (checked in a child process). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amx_emulation.h"
#include "amx_native.h"
#include "support.h"

enum { CASES = 400, STRIDE_PAD = 24 };

static const char* const op_names[AMX_OPS] = {"tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud", "tdpbf16ps"};

typedef struct {
    int rows, depth, columns; /* dst rows x columns dwords; src1 depth dwords per row */
    long a_stride, b_stride, c_stride;
    uint8_t config[64];
    uint8_t *a, *b, *c;       /* src1 rows x a_stride, src2 depth x b_stride, dst rows x c_stride */
} tile_case;

static void set_tile(uint8_t config[64], int t, int rows, int colsb) {
    config[16 + 2 * t] = (uint8_t)colsb;
    config[17 + 2 * t] = (uint8_t)(colsb >> 8);
    config[48 + t] = (uint8_t)rows;
}

static void make_config(tile_case* tc) {
    memset(tc->config, 0, 64);
    tc->config[0] = 1;
    set_tile(tc->config, 0, tc->rows, 4 * tc->columns);
    set_tile(tc->config, 1, tc->rows, 4 * tc->depth);
    set_tile(tc->config, 2, tc->depth, 4 * tc->columns);
}

static uint16_t random_bf16(void) {
    int kind = rnd_int(0, 9);
    uint16_t sign = (uint16_t)(rnd() & 1) << 15;
    if (kind == 0) return sign;                                   /* zero */
    if (kind == 1) return sign | (uint16_t)rnd_int(1, 0x7F);      /* subnormal */
    return sign | (uint16_t)rnd_int(100, 154) << 7 | (uint16_t)(rnd() & 0x7F); /* normal, 2^-27 .. 2^27 */
}

static uint32_t random_accumulator(amx_op op) {
    if (op != AMX_DPBF16PS) return rnd_percent(30) ? 0x7FFFFF00u + (uint32_t)rnd_int(0, 0x1FF) : (uint32_t)rnd();
    float f = rnd_percent(10) ? ldexpf((float)rnd_int(1, 1000), -140) : rnd_signed(-20, 20); /* some subnormal */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits;
}

static void fill_case(tile_case* tc, amx_op op) {
    for (long i = 0; i < tc->rows * tc->a_stride; i++) tc->a[i] = (uint8_t)rnd();
    for (long i = 0; i < tc->depth * tc->b_stride; i++) tc->b[i] = (uint8_t)rnd();
    for (long i = 0; i < tc->rows * tc->c_stride; i++) tc->c[i] = (uint8_t)rnd();
    if (op == AMX_DPBF16PS) {
        for (int m = 0; m < tc->rows; m++)
            for (int i = 0; i < 2 * tc->depth; i++) {
                uint16_t v = random_bf16();
                memcpy(tc->a + m * tc->a_stride + 2 * i, &v, 2);
            }
        for (int k = 0; k < tc->depth; k++)
            for (int i = 0; i < 2 * tc->columns; i++) {
                uint16_t v = random_bf16();
                memcpy(tc->b + k * tc->b_stride + 2 * i, &v, 2);
            }
    }
    for (int m = 0; m < tc->rows; m++)
        for (int n = 0; n < tc->columns; n++) {
            uint32_t v = random_accumulator(op);
            memcpy(tc->c + m * tc->c_stride + 4 * n, &v, 4);
        }
}

/* ---- the scalar model, written from the instructions' definitions ---- */

static double model_bf16(const uint8_t* p) { /* subnormal inputs read as zero */
    uint16_t v;
    memcpy(&v, p, 2);
    int exponent = v >> 7 & 0xFF;
    if (exponent == 0) return 0.0;
    double magnitude = ldexp(1.0 + (v & 0x7F) / 128.0, exponent - 127);
    return v >> 15 ? -magnitude : magnitude;
}

/* The exact int32 result (modulo 2^32) of a byte product; for tdpbf16ps, the exact sum in double
 * and the sum of magnitudes (for the tolerance). */
static void model_element(const tile_case* tc, amx_op op, int m, int n, uint32_t* exact_int, double* exact,
                          double* magnitude) {
    const uint8_t* c = tc->c + m * tc->c_stride + 4 * n;
    if (op == AMX_DPBF16PS) {
        float acc;
        memcpy(&acc, c, 4);
        double sum = fpclassify(acc) == FP_SUBNORMAL ? 0.0 : acc, size = fabs(sum);
        for (int k = 0; k < 2 * tc->depth; k++) {
            double t = model_bf16(tc->a + m * tc->a_stride + 2 * k) * model_bf16(tc->b + (k / 2) * tc->b_stride + 4 * n + 2 * (k % 2));
            sum += t; /* exact: the terms span far fewer than 53 bits here */
            size += fabs(t);
        }
        *exact = sum;
        *magnitude = size;
        return;
    }
    int a_signed = op == AMX_DPBSSD || op == AMX_DPBSUD, b_signed = op == AMX_DPBSSD || op == AMX_DPBUSD;
    uint32_t start;
    memcpy(&start, c, 4);
    int64_t sum = 0;
    for (int k = 0; k < 4 * tc->depth; k++) {
        uint8_t x = tc->a[m * tc->a_stride + k], y = tc->b[(k / 4) * tc->b_stride + 4 * n + k % 4];
        sum += (int64_t)(a_signed ? (int8_t)x : x) * (b_signed ? (int8_t)y : y);
    }
    *exact_int = start + (uint32_t)sum;
}

/* Checks result (dst as stored, c_stride apart) against the model; `who` names the implementation. */
static void check_result(const tile_case* tc, amx_op op, const uint8_t* result, const char* who) {
    int bad = 0;
    for (int m = 0; m < tc->rows; m++)
        for (int n = 0; n < tc->columns; n++) {
            uint32_t want_int = 0;
            double exact = 0, magnitude = 0;
            model_element(tc, op, m, n, &want_int, &exact, &magnitude);
            const uint8_t* r = result + m * tc->c_stride + 4 * n;
            if (op != AMX_DPBF16PS) {
                uint32_t got;
                memcpy(&got, r, 4);
                bad += got != want_int;
                continue;
            }
            float got;
            memcpy(&got, r, 4);
            /* Each of 2 * depth float32 additions rounds by at most 2^-24 of a partial sum, and a
             * flushed result loses less than 2^-126. */
            double bound = (2 * tc->depth + 1) * 0x1p-24 * magnitude + 0x1p-126;
            bad += !(fabs(got - exact) <= bound);
        }
    for (int m = 0; m + 1 < tc->rows; m++) /* the bytes between rows are not the tile's */
        for (long i = 4 * tc->columns; i < tc->c_stride; i++) bad += result[m * tc->c_stride + i] != tc->c[m * tc->c_stride + i];
    CHECK(bad == 0, "%s: %d wrong elements", who, bad);
}

static void run_emulated(const tile_case* tc, amx_op op, uint8_t* c) {
    _tile_loadconfig(tc->config);
    _tile_loadd(0, c, tc->c_stride);
    _tile_loadd(1, tc->a, tc->a_stride);
    _tile_loadd(2, tc->b, tc->b_stride);
    switch (op) {
    case AMX_DPBSSD: _tile_dpbssd(0, 1, 2); break;
    case AMX_DPBSUD: _tile_dpbsud(0, 1, 2); break;
    case AMX_DPBUSD: _tile_dpbusd(0, 1, 2); break;
    case AMX_DPBUUD: _tile_dpbuud(0, 1, 2); break;
    default: _tile_dpbf16ps(0, 1, 2); break;
    }
    _tile_stored(0, c, tc->c_stride);
    _tile_release();
}

/* ---- faults: each in a child, which must die of SIGABRT ---- */

typedef enum { FAULT_DEPTH, FAULT_ROWS, FAULT_COLUMNS, FAULT_UNCONFIGURED, FAULT_SHARED_TILE, FAULT_PALETTE, FAULTS } fault;

static const char* const fault_names[FAULTS] = {
    "src1.colsb / 4 != src2.rows", "src1.rows != dst.rows", "src2.colsb != dst.colsb",
    "no configuration", "dst == src1", "palette 2",
};

static void provoke(fault f) {
    uint8_t config[64] = {1};
    static uint8_t data[16 * 64];
    set_tile(config, 0, 16, 64);
    set_tile(config, 1, 16, 64);
    set_tile(config, 2, 16, 64);
    if (f == FAULT_DEPTH) set_tile(config, 2, 15, 64);
    if (f == FAULT_ROWS) set_tile(config, 1, 8, 64);
    if (f == FAULT_COLUMNS) set_tile(config, 2, 16, 32);
    if (f == FAULT_PALETTE) config[0] = 2;
    if (f != FAULT_UNCONFIGURED) _tile_loadconfig(config);
    if (f == FAULT_SHARED_TILE) {
        _tile_dpbssd(0, 0, 2);
        return;
    }
    _tile_dpbsud(0, 1, 2);
    _tile_dpbf16ps(0, 1, 2);
    _tile_stored(0, data, 64);
}

static void check_faults(void) {
    for (int f = 0; f < FAULTS; f++) {
        fflush(NULL);
        pid_t child = fork();
        if (child == 0) {
            freopen("/dev/null", "w", stderr); /* the expected message */
            provoke((fault)f);
            _exit(0);
        }
        int status = 0;
        CHECK(child > 0 && waitpid(child, &status, 0) == child, "fork / wait");
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "%s: the emulator did not abort", fault_names[f]);
    }
}

int main(int argc, char** argv) {
    test_begin("test_amx_emulation", argc, argv, "", NULL);
    int native = qk_cpu_has(QK_CPU_AMX_TILE) && qk_cpu_has(QK_CPU_AMX_INT8) && qk_cpu_has(QK_CPU_AMX_BF16);
    if (!native)
        printf("test_amx_emulation: no comparison with the hardware: this CPU or its OS lacks AMX-TILE/INT8/BF16 "
               "(or Linux refused the tile data)\n");
    long native_checks = 0;
    for (int i = 0; i < CASES; i++) {
        reseed((uint64_t)i);
        amx_op op = (amx_op)(i % AMX_OPS);
        tile_case tc = {.rows = rnd_int(1, 16), .depth = rnd_int(1, 16), .columns = rnd_int(1, 16)};
        if (i < 2 * AMX_OPS) tc.rows = tc.depth = tc.columns = 16; /* full tiles first */
        tc.a_stride = 4 * tc.depth + rnd_int(0, STRIDE_PAD);
        tc.b_stride = 4 * tc.columns + rnd_int(0, STRIDE_PAD);
        tc.c_stride = 4 * tc.columns + rnd_int(0, STRIDE_PAD);
        make_config(&tc);
        tc.a = xmalloc((size_t)(tc.rows * tc.a_stride));
        tc.b = xmalloc((size_t)(tc.depth * tc.b_stride));
        tc.c = xmalloc((size_t)(tc.rows * tc.c_stride));
        fill_case(&tc, op);
        set_context("case %d: %s, dst %dx%d dwords, depth %d", i, op_names[op], tc.rows, tc.columns, tc.depth);
        uint8_t* emulated = xdup(tc.c, (size_t)(tc.rows * tc.c_stride));
        run_emulated(&tc, op, emulated);
        check_result(&tc, op, emulated, "emulator");
        if (native) {
            uint8_t* real = xdup(tc.c, (size_t)(tc.rows * tc.c_stride));
            amx_native_run(op, tc.config, tc.a, tc.a_stride, tc.b, tc.b_stride, real, tc.c_stride);
            check_result(&tc, op, real, "hardware");
            if (op != AMX_DPBF16PS) CHECK(!memcmp(real, emulated, (size_t)(tc.rows * tc.c_stride)), "emulator != hardware");
            native_checks++;
            free(real);
        }
        free(emulated);
        free(tc.a);
        free(tc.b);
        free(tc.c);
    }
    set_context("faults");
    check_faults();
    printf("test_amx_emulation: %d cases, %ld compared with the hardware\n", CASES, native_checks);
    return test_end();
}
