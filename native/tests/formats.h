/* Number formats for the C tests, written here rather than borrowed from the library: float16 and
 * bfloat16 conversions, correct rounding of a double to a dtype, and the spacing of a dtype.
 * Independent of libqkernels (the test backend links it too). */
#ifndef QK_TEST_FORMATS_H
#define QK_TEST_FORMATS_H

#include <stddef.h>
#include <stdint.h>

#include "qkernels.h"

typedef struct {
    const char* name;
    size_t size;       /* bytes per element */
    int precision;     /* significant bits */
    int emin;          /* exponent of the smallest normal number */
    double max_finite;
    double tau;        /* the A16 tolerance factor of docs/numerics.md section 3 */
} format;

extern const format formats[3]; /* indexed by qk_dtype */
extern const qk_dtype all_dtypes[3];

uint32_t f32_bits(float f);
uint16_t f32_to_f16(float f);   /* round to nearest even */
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);  /* round to nearest even */
float bf16_to_f32(uint16_t b);

/* Element i of an array of dtype, exactly, as float32. */
float load_el(const void* p, qk_dtype dt, size_t i);
/* Stores float32 v as element i of dtype, rounded to nearest even. */
void store_el(void* p, qk_dtype dt, size_t i, float v);
/* Stores x as element i of dtype, rounded once (to nearest even) from double. */
void store_rounded(void* p, qk_dtype dt, size_t i, double x);

/* x rounded once, to nearest even, to the format (overflow to +-Inf, subnormals kept). */
double round_to(double x, const format* f);
/* ulp_out(x): the spacing of the format at x (docs/numerics.md, reading 9). */
double ulp_out(double x, const format* f);

#endif
