/* The numeric contract (docs/numerics.md, /work/shared/SPEC.md) written out a second time, for
 * the tests, independently of the library: it reads the canonical format itself and computes in
 * double and exact int64, so that a shared misreading of the contract cannot hide in both.
 * It uses qkernels.h only for its types; the test backend links it for its arithmetic too. */
#ifndef QK_TEST_ORACLE_H
#define QK_TEST_ORACLE_H

#include <stddef.h>
#include <stdint.h>

#include "qkernels.h"

/* Groups per row, NG = ceil(K / G): the last one may be shorter (format v2). */
int32_t oracle_groups(int32_t K, int32_t G);
/* Where group g of a row ends: (g + 1) G, or K for the last group. */
int32_t oracle_group_end(int32_t K, int32_t G, int32_t g);

/* q[n, k] of canonical weights as a signed integer: low nibble first for 4 bits. */
int oracle_q(const int8_t* data, int32_t K, int32_t bits, int32_t n, int32_t k);
/* w[n, k] = scales[n,g] (q[n,k] - zp[n,g]) + offsets[n,g], in double (the product is exact); the
 * offset is added only when there are offsets. */
double oracle_weight(const qk_weights* w, int32_t n, int32_t k);

/* A16: sum_k x[k] w[n,k] in double; *mag gets sum_k |x[k] w[n,k]| (the tolerance's scale). */
double oracle_a16_dot(const qk_weights* w, int32_t n, const double* x, double* mag);

/* The A8 activation quantizer of one row of K elements starting at element `first` of x, in
 * float32 steps. Returns 0 for a row holding NaN or Inf (its outputs are NaN). */
int oracle_quantize_activations(const void* x, qk_dtype dt, size_t first, int32_t K, int8_t* qx, float* sx);
/* A8: sum_g (scales[n,g] acc[n,g] + offsets[n,g] xs[g]) in double with exact integer group sums;
 * *mag gets sum_g (|scales acc| + |offsets xs|). Multiply both by sx. */
double oracle_a8_dot(const qk_weights* w, int32_t n, const int8_t* qx, double* mag);

/* The weight quantizer of section 2 on float32 values x[N, K] (exact inputs), in float32 steps.
 * group: the group size (K for per-tensor and per-channel); the last group of a row may be
 * shorter. zp is written only when asymmetric. Returns 0 when an asymmetric range overflows
 * float32 (no finite scale: reading 2). */
int oracle_quantize_weights(const float* x, int32_t N, int32_t K, int32_t bits, qk_granularity granularity,
                            int32_t group, int symmetric, int8_t* q, float* scales, int8_t* zp);

#endif
