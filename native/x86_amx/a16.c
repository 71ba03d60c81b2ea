/* x86_amx_a16_w4w8_32x32: A16 (docs/numerics.md section 3) with AMX-BF16, for prefill.
 *
 * The contract's A16 tolerances (float16 2^-10, float32 2^-16 of sum |x * w|) are tighter than one
 * bfloat16 rounding of x (2^-9), so each activation is split into exact bfloat16 parts (reading 21):
 * the top 8 significant bits (its float32 value with the low 16 bits cleared), then the same of what
 * is left, exactly: one part for bfloat16 input, two for float16 (11 bits), three for float32 (24).
 * Weights u - zero are integers of at most 8 significant bits, exact in bfloat16, and so is every
 * product in float32; tdpbf16ps sums them in float32, like the AVX2 and AVX-512 kernels.
 *
 * Tiles as in a8.c (32 x 32 blocks: two A tiles of 16 rows x 32 bfloat16, two B tiles of 32 k x 16
 * columns in pairs, four float32 C tiles), one tdpbf16ps per tile pair and part. A task stages each
 * group's weights of its two panels once as bfloat16 B tiles (u - zero, zero-padded to whole tiles)
 * and reuses them for every 32-row block of its rows. The activations' parts are laid out per
 * group padded to whole 32-k steps with zeros, so a tile never reads another group's activations
 * (an Inf there times a zero weight would be NaN). C is added into float64, times the group's scale,
 * at the end of each group and after at most fold_steps steps, which bounds the float32 sums. */
#include <string.h>

#include "amx.h"

enum {
    STEP_K = 32,      /* k per bfloat16 tile step */
    FOLD_STEPS = 4,   /* float16 / bfloat16: at most 128 k (256 products) per float32 sum (reading 21) */
};

typedef struct {
    qk_avx512_problem p;
    int32_t padded_m;   /* M rounded up to QK_AMX_BLOCK_ROWS */
    int32_t parts;      /* bfloat16 parts per activation: 1 (bfloat16 input), 2 (float16), 3 (float32) */
    int32_t fold_steps; /* steps per float32 sum */
    int32_t steps;      /* 32-k steps per group */
    size_t a_row;       /* bfloat16 elements per row of a part: groups * steps * STEP_K */
    size_t a_stride;    /* elements from one row to the next: a_row and a cache line (see a8.c) */
    uint16_t* a;        /* [parts][padded_m][a_stride] */
    size_t scratch;
    uint8_t* scratch0;
} amx_problem;

static size_t layout(amx_problem* ap, const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads,
                     void* base) {
    ap->p = qk_avx512_problem_of(w, a);
    ap->padded_m = (a->M + QK_AMX_BLOCK_ROWS - 1) / QK_AMX_BLOCK_ROWS * QK_AMX_BLOCK_ROWS;
    ap->parts = a->input_dtype == QK_DTYPE_BF16 ? 1 : a->input_dtype == QK_DTYPE_F16 ? 2 : 3;
    ap->fold_steps = ap->parts == 3 ? 1 : FOLD_STEPS;
    ap->steps = (int32_t)((ap->p.group_stride + STEP_K - 1) / STEP_K);
    ap->a_row = (size_t)ap->p.l.groups * (size_t)ap->steps * STEP_K;
    ap->a_stride = ap->a_row + 32;
    size_t used = qk_avx512_buffers(&ap->p, 1, base); /* float32 rows of X, M of them */
    ap->a = qk_avx2_take(base, &used, (size_t)ap->parts * (size_t)ap->padded_m * ap->a_stride * sizeof(uint16_t));
    qk_amx_scratch s;
    /* A thread's scratch, then its task's float64 results [QK_AMX_CHUNK_ROWS][32]. */
    ap->scratch = qk_amx_carve_scratch(ap->steps, NULL, &s) + (size_t)QK_AMX_CHUNK_ROWS * QK_AVX512_TILE_COLUMNS * sizeof(double);
    ap->scratch0 = qk_avx2_take(base, &used, ap->scratch * (size_t)threads);
    return used;
}

/* Row m's activations as bfloat16 parts (zeros for rows past M and past each group's end). */
static void split_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const amx_problem* ap = arg;
    const qk_avx512_problem* p = &ap->p;
    size_t part_stride = (size_t)ap->padded_m * ap->a_stride, gs = p->group_stride;
    const __m512i high_half = _mm512_set1_epi32((int32_t)0xFFFF0000u), quiet = _mm512_set1_epi32(0x00400000);
    for (int32_t m = begin; m < end; m++) {
        uint16_t* hi = ap->a + (size_t)m * ap->a_stride;
        if (m >= p->a->M) {
            for (int32_t q = 0; q < ap->parts; q++) memset(hi + q * part_stride, 0, ap->a_row * sizeof *hi);
            continue;
        }
        for (int32_t g = 0; g < p->l.groups; g++) {
            const float* x = p->x + (size_t)m * p->row + (size_t)g * gs;
            uint16_t* out = hi + (size_t)g * (size_t)ap->steps * STEP_K;
            size_t k = 0;
            for (; k < gs; k += 16) { /* gs is a multiple of 4; the loader zero-pads x to the group's end */
                __mmask16 live = k + 16 <= gs ? 0xFFFF : (__mmask16)((1u << (gs - k)) - 1);
                __m512 rest = _mm512_maskz_loadu_ps(live, x + k);
                for (int32_t q = 0; q < ap->parts; q++) {
                    /* A NaN keeps its quiet bit, so that its top half is a NaN too. */
                    __m512i bits = _mm512_castps_si512(rest);
                    bits = _mm512_mask_or_epi32(bits, _mm512_cmp_ps_mask(rest, rest, _CMP_UNORD_Q), bits, quiet);
                    __m512i top = _mm512_and_si512(bits, high_half);
                    _mm256_mask_storeu_epi16(out + q * part_stride + k, live,
                                             _mm512_cvtepi32_epi16(_mm512_srli_epi32(top, 16)));
                    /* The rest, exact; NaN where x is not finite (Inf - Inf), where the top part alone is x. */
                    rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(top));
                    rest = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(rest, rest, _CMP_ORD_Q), rest);
                }
            }
            size_t tail = (size_t)ap->steps * STEP_K - gs;
            for (int32_t q = 0; q < ap->parts; q++) memset(out + q * part_stride + gs, 0, tail * sizeof *out);
        }
    }
}

/* One VNNI row of bytes (dword j: u of column j at 4 consecutive k) as two bfloat16 B rows of
 * (u - zero): k pairs (0, 1) and (2, 3). Integers of at most 8 significant bits: the float32 value's
 * top half is the bfloat16 value exactly. */
QK_AVX512_INLINE void bf16_rows(__m512i v, __m512i zero, uint8_t* out) {
    const __m512i byte = _mm512_set1_epi32(0xFF), high_half = _mm512_set1_epi32((int32_t)0xFFFF0000u);
    __m512i w[4];
    for (int i = 0; i < 4; i++)
        w[i] = _mm512_castps_si512(
            _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(v, 8 * i), byte), zero)));
    for (int r = 0; r < 2; r++)
        _mm512_store_si512((void*)(out + r * 64), _mm512_or_si512(_mm512_srli_epi32(w[2 * r], 16),
                                                                    _mm512_and_si512(w[2 * r + 1], high_half)));
}

/* Group g of `panel` as bfloat16 B tiles at out: steps * 16 rows of 64 bytes, zero past the group. */
static void stage_group(const amx_problem* ap, int32_t panel, int32_t g, uint8_t* out) {
    const qk_avx512_problem* p = &ap->p;
    const qk_vnni16_layout* l = &p->l;
    const uint8_t* group = qk_vnni16_group(p->packed, l, panel, g);
    const uint8_t* rows = group + l->header_bytes;
    __m512i zero = _mm512_load_si512((const void*)(group + 64));
    int32_t staged = 0; /* bfloat16 rows written */
    for (int32_t r = 0; r < l->rows; r++) {
        const uint8_t* row = rows + (size_t)r * QK_VNNI16_ROW_BYTES;
        _mm_prefetch((const char*)row + QK_AVX512_PREFETCH_BYTES, _MM_HINT_T0); /* as in a8.c */
        __m512i v = _mm512_load_si512((const void*)row);
        if (p->w->bits == 4) {
            const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
            bf16_rows(_mm512_and_si512(v, low_nibbles), zero, out + (size_t)staged * 64);
            bf16_rows(_mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles), zero, out + (size_t)(staged + 2) * 64);
            staged += 4;
        } else {
            bf16_rows(v, zero, out + (size_t)staged * 64);
            staged += 2;
        }
    }
    memset(out + (size_t)staged * 64, 0, ((size_t)ap->steps * QK_AMX_TILE_ROWS - (size_t)staged) * 64);
    /* gcc's _tile_loadd asm declares no memory read: keep these stores before the tile loads. */
    __asm__ volatile("" ::: "memory");
}

/* C tiles 0..3 += the products of steps [s0, s1) of one 32-row block, every part. */
static void block_products(const amx_problem* ap, const uint16_t* a, uint8_t* const b[2], int32_t s0, int32_t s1,
                           int panels) {
    size_t stride = ap->a_stride * sizeof *a, part_stride = (size_t)ap->padded_m * ap->a_stride;
    for (int32_t s = s0; s < s1; s++) {
        _tile_loadd(6, b[0] + (size_t)s * QK_AMX_TILE_BYTES, 64);
        if (panels == 2) _tile_loadd(7, b[1] + (size_t)s * QK_AMX_TILE_BYTES, 64);
        for (int32_t q = 0; q < ap->parts; q++) {
            const uint16_t* as = a + q * part_stride + (size_t)s * STEP_K;
            _tile_loadd(4, as, stride);
            _tile_loadd(5, as + QK_AMX_TILE_ROWS * ap->a_stride, stride);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            if (panels == 2) {
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(3, 5, 7);
            }
        }
    }
}

typedef struct {
    const amx_problem* ap;
    int32_t pairs;
} task_job;

static void task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const task_job* job = arg;
    const amx_problem* ap = job->ap;
    const qk_avx512_problem* p = &ap->p;
    const qk_vnni16_layout* l = &p->l;
    qk_amx_scratch s;
    uint8_t* mine = ap->scratch0 + (size_t)thread * ap->scratch;
    double* y = (double*)(mine + qk_amx_carve_scratch(ap->steps, mine, &s));
    float* c = s.c;
    _tile_loadconfig(&qk_amx_tile_config); /* per task: see a8.c */
    for (int32_t t = begin; t < end; t++) {
        qk_amx_task k = qk_amx_task_of(p, job->pairs, t);
        memset(y, 0, (size_t)(k.m1 - k.m0) * QK_AVX512_TILE_COLUMNS * sizeof(double));
        for (int32_t g = 0; g < l->groups; g++) {
            const uint8_t* header[2];
            for (int pi = 0; pi < k.panels; pi++) {
                stage_group(ap, k.panel + pi, g, s.b[pi]);
                header[pi] = qk_vnni16_group(p->packed, l, k.panel + pi, g);
            }
            for (int32_t m = k.m0; m < k.m1; m += QK_AMX_BLOCK_ROWS) {
                const uint16_t* a = ap->a + (size_t)m * ap->a_stride + (size_t)g * (size_t)ap->steps * STEP_K;
                int32_t rows = k.m1 - m < QK_AMX_BLOCK_ROWS ? k.m1 - m : QK_AMX_BLOCK_ROWS;
                for (int32_t s0 = 0; s0 < ap->steps; s0 += ap->fold_steps) {
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                    block_products(ap, a, s.b, s0, s0 + ap->fold_steps < ap->steps ? s0 + ap->fold_steps : ap->steps,
                                   k.panels);
                    _tile_stored(0, c, 64);
                    _tile_stored(1, c + 256, 64);
                    _tile_stored(2, c + 512, 64);
                    _tile_stored(3, c + 768, 64);
                    for (int pi = 0; pi < k.panels; pi++) {
                        __m512 scale = _mm512_load_ps((const float*)header[pi]);
                        for (int32_t r = 0; r < rows; r++) {
                            double* yr = y + (size_t)(m - k.m0 + r) * QK_AVX512_TILE_COLUMNS + pi * QK_VNNI16_PANEL;
                            const float* sums = c + (r / QK_AMX_TILE_ROWS * 2 + pi) * 256 + (r % QK_AMX_TILE_ROWS) * 16;
                            qk_avx512_fold_ps(yr, _mm512_loadu_ps(sums), scale);
                        }
                    }
                }
            }
        }
        qk_avx512_finish_rows(p, k.panel, k.panels, k.m0, k.m1 - k.m0, y);
    }
}

size_t qk_amx_a16_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    amx_problem ap;
    return layout(&ap, w, a, threads, NULL);
}

qk_status qk_amx_a16_32x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    amx_problem ap;
    layout(&ap, w, a, exec->threads, exec->workspace);
    qk_avx512_prepare_rows(exec, &ap.p);
    qk_parallel_for(exec, ap.padded_m, 1, split_task, &ap);
    task_job job = {&ap, (ap.p.l.panels + 1) / 2};
    int32_t chunks = (a->M + QK_AMX_CHUNK_ROWS - 1) / QK_AMX_CHUNK_ROWS;
    qk_parallel_for(exec, chunks * job.pairs, 1, task, &job);
    return QK_OK;
}
