/* The real AMX instructions, for test_amx_emulation to compare its emulator with (amx_native.c,
 * compiled for AMX: call only where the CPU has AMX and Linux granted the tile data). */
#ifndef QK_TEST_AMX_NATIVE_H
#define QK_TEST_AMX_NATIVE_H

#include <stdint.h>

typedef enum { AMX_DPBSSD, AMX_DPBSUD, AMX_DPBUSD, AMX_DPBUUD, AMX_DPBF16PS, AMX_OPS } amx_op;

/* With tiles 0 = dst, 1 = src1, 2 = src2 shaped by the 64-byte config: loads dst from c, src1
 * from a, src2 from b (each with its stride in bytes), runs op, stores dst back to c. */
void amx_native_run(amx_op op, const uint8_t config[64], const void* a, long a_stride, const void* b, long b_stride,
                    void* c, long c_stride);

#endif /* QK_TEST_AMX_NATIVE_H */
