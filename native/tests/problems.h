/* One matmul's inputs (a "problem"), random problems of the kinds the contract must survive, the
 * oracle's expected results for a problem, and the comparisons of an output with them. */
#ifndef QK_TEST_PROBLEMS_H
#define QK_TEST_PROBLEMS_H

#include <stddef.h>
#include <stdint.h>

#include "qkernels.h"

/* Every array in its own, exactly sized allocation, so that valgrind and ASan see over-reads. */
typedef struct {
    int32_t M, N, K, G, bits;
    qk_dtype dtype;
    qk_mode mode;
    void* x;        /* [M, K] of dtype */
    int8_t* q;      /* [N, K*bits/8] */
    float* scales;  /* [N, NG], NG = ceil(K / G) */
    int8_t* zp;     /* [N, NG] or NULL */
    float* offsets; /* [N, NG] or NULL */
    float* bias;    /* [N] or NULL */
    /* Products or results in the float32 subnormal range (subnormal float32 / bfloat16
     * activations, subnormal dequantized weights). There a kernel that multiplies and accumulates
     * in float32, as the contract allows, loses absolute precision the tolerance has no term for
     * (nor for float32 weights rounded to a 16-bit dtype): only the reference kernels are held to
     * the tolerance; every other kernel is still run and checked for status, guards and packing. */
    int ref_only;
} problem;

size_t x_bytes(const problem* p);
size_t y_bytes(const problem* p);
size_t q_bytes(const problem* p);
size_t n_groups(const problem* p); /* N * NG */
void problem_free(problem* p);
/* The canonical weights of p, size field set. */
qk_weights weights_of(const problem* p);
/* Arguments for p with the output given: automatic backend and kernel. */
qk_matmul_args args_of(const problem* p, void* output);
/* Whether kernel k runs p: mode, dtype, bits, group size, and the format v2 features p uses. */
int fits(const qk_kernel_info* k, const problem* p);
/* qk_pack_weights for backend b (or QK_BACKEND_AUTO) from copies of p's canonical arrays, which it
 * poisons and frees before returning: the pack must hold what it needs. */
qk_status pack_copy(const problem* p, qk_backend b, qk_packed_weights** out);
/* "M=.. N=.. K=.. G=.. 4-bit float16 A8 +offsets" */
const char* describe(const problem* p);

/* ---- random problems ---- */

enum { X_UNIFORM, X_HALVES, X_OUTLIERS, X_ZEROS, X_TINY, X_STYLES };
extern const char* const x_style_names[X_STYLES];

void fill_activations(problem* p, int style);
/* Random q, scales (some negative, some zero) and, unless symmetric, zero points. */
void fill_raw_weights(problem* p, int symmetric);
/* Random float W[N, K], row by row of several kinds: ties in rne(x / s), zero and constant rows,
 * one-signed rows, outliers, and (where allowed) float32 subnormal rows; magnitudes 2^e with e in
 * [lo_exp, hi_exp] (outliers 64 times more). Returns whether it made subnormal rows. */
int random_weight_values(float* W, int32_t N, int32_t K, int lo_exp, int hi_exp, int subnormal_rows);
/* Weights from the oracle's quantizer on random_weight_values. */
void fill_quantized_weights(problem* p, int symmetric);
/* Offsets of about the scales' size: odd multiples of scale / 2 (so that no weight cancels to a
 * tiny remainder: float16 weights stay normal numbers), in float32. */
void fill_offsets(problem* p);
void fill_bias(problem* p);
/* A group size for K: per-channel, a divisor, or (when ragged) one that leaves the last group
 * shorter, larger than K included. */
int32_t pick_group(int32_t K, int ragged);

/* ---- the oracle's results ---- */

/* val: the contract's result rounded once to the output dtype (NaN / +-Inf where it is one);
 * err: the error-scale term of the tolerance, already multiplied by tau (A16) or 2^-20 (A8);
 * raw: before the rounding; mag: sum of |terms| (+ |bias|), bounding a double sum's error. */
typedef struct {
    double *val, *err, *raw, *mag;
} expectation;

expectation expect(const problem* p);
void expectation_free(expectation* e);

/* Every element of Y within 2 ulp_out(val) + err of val; one check per buffer. worst, when
 * given, receives the largest |Y - val| / tolerance seen. */
int compare_output(const problem* p, const void* Y, const double* val, const double* err, const char* what,
                   double* worst);
/* Y is the correctly rounded result (the reference kernels round the exact result once), except
 * where the exact result is too close to a rounding boundary for the oracle's double sum to tell. */
int compare_exact(const problem* p, const void* Y, const expectation* e, const char* what);

#endif
