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
 * columns in pairs, four float32 C tiles), one tdpbf16ps per tile pair and part. Tasks as in a8.c:
 * one pair of panels for a chunk of rows and a slice of K (A_SLICE_BYTES); a task stages each
 * group's weights of its two panels once as bfloat16 B tiles (u - zero, zero-padded to whole tiles)
 * and reuses them for every 32-row block of its rows. The activations' parts are laid out as A
 * tiles like a8.c's (for each 32-row block, its 32-k pieces one after the other, each piece's parts
 * one after the other), each group padded to whole 32-k steps with zeros, so a tile never reads
 * another group's activations (an Inf there times a zero weight would be NaN). C is added into
 * float32 runs (qk_avx512_run_fma), times the group's scale, at the end of each group and after at
 * most fold_steps steps, which bounds the float32 tile sums; the runs of at most RUN_FOLDS such
 * sums are then added to float64 sums. Slices of K end where a tile sum does (a group longer than a
 * slice is padded to whole tile sums), so they change no result. */
#include <string.h>

#include "amx.h"

enum {
    STEP_K = 32,      /* k per bfloat16 tile step */
    FOLD_STEPS = 4,   /* float16 / bfloat16: at most 128 k (256 products) per float32 tile sum (reading 21) */
    RUN_FOLDS = 64,   /* tile sums per float32 run, before the float64 sum (reading 21) */
    A_SLICE_BYTES = 1024 * 1024, /* activation parts of a chunk's slice of K: in L2, as in a8.c */
};

typedef struct {
    qk_avx512_problem p;
    int32_t padded_m;    /* M rounded up to QK_AMX_BLOCK_ROWS */
    int32_t chunk_rows;  /* rows per chunk: QK_AMX_CHUNK_ROWS, or fewer for a smaller M */
    int32_t parts;       /* bfloat16 parts per activation: 1 (bfloat16 input), 2 (float16), 3 (float32) */
    int32_t fold_steps;  /* steps per float32 sum */
    int32_t steps;       /* 32-k steps per group (padded to whole tile sums where a group spans slices) */
    int32_t slice_steps; /* steps per slice of K: whole groups, or a multiple of fold_steps */
    int32_t pairs;       /* panel pairs: tasks per chunk and slice */
    size_t pieces;       /* 32-k pieces of a row: groups * steps */
    uint8_t* a;          /* the parts as A tiles: [padded_m / 32][pieces][parts][32][64 bytes] */
    int per_pair;        /* results per panel pair (K has slices: kept between them), else per thread */
    double* y;           /* float64 results, [pairs or threads][chunk_rows][32] */
    float* y32;          /* float32 runs, the same */
    size_t scratch;
    uint8_t* scratch0;
} amx_problem;

static size_t layout(amx_problem* ap, const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads,
                     void* base) {
    ap->p = qk_avx512_problem_of(w, a);
    ap->padded_m = (a->M + QK_AMX_BLOCK_ROWS - 1) / QK_AMX_BLOCK_ROWS * QK_AMX_BLOCK_ROWS;
    ap->chunk_rows = ap->padded_m < QK_AMX_CHUNK_ROWS ? ap->padded_m : QK_AMX_CHUNK_ROWS;
    ap->parts = qk_avx512_bf16_parts(a->input_dtype);
    ap->fold_steps = ap->parts == 3 ? 1 : FOLD_STEPS;
    ap->steps = (int32_t)((ap->p.group_stride + STEP_K - 1) / STEP_K);
    int32_t budget = (int32_t)(A_SLICE_BYTES / ((size_t)ap->chunk_rows * 64 * (size_t)ap->parts));
    /* A group longer than a slice goes on in the next one, and a slice must end where one of its
     * tile sums does: such a group is padded to whole tile sums (zero steps, which add nothing). */
    if (ap->steps > budget) ap->steps = (ap->steps + ap->fold_steps - 1) / ap->fold_steps * ap->fold_steps;
    ap->slice_steps = ap->steps <= budget ? budget / ap->steps * ap->steps
                                          : (budget > ap->fold_steps ? budget / ap->fold_steps * ap->fold_steps : ap->fold_steps);
    ap->pairs = (ap->p.l.panels + 1) / 2;
    ap->pieces = (size_t)ap->p.l.groups * (size_t)ap->steps;
    ap->per_pair = ap->slice_steps < ap->p.l.groups * ap->steps;
    size_t used = qk_avx512_buffers(&ap->p, 1, base); /* float32 rows of X, M of them */
    ap->a = qk_avx2_take(base, &used, (size_t)ap->padded_m * ap->pieces * (size_t)ap->parts * 64);
    size_t results = (size_t)(ap->per_pair ? ap->pairs : threads) * (size_t)ap->chunk_rows * QK_AVX512_TILE_COLUMNS;
    ap->y = qk_avx2_take(base, &used, results * sizeof *ap->y);
    ap->y32 = qk_avx2_take(base, &used, results * sizeof *ap->y32);
    qk_amx_scratch s;
    ap->scratch = qk_amx_carve_scratch(ap->steps < ap->slice_steps ? ap->steps : ap->slice_steps, NULL, &s);
    ap->scratch0 = qk_avx2_take(base, &used, ap->scratch * (size_t)threads);
    return used;
}

/* Row m's activations as bfloat16 parts in the A tile layout (zeros for rows past M and past each
 * group's end). */
static void split_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    (void)thread;
    const amx_problem* ap = arg;
    const qk_avx512_problem* p = &ap->p;
    size_t gs = p->group_stride, piece_bytes = (size_t)ap->parts * 2 * QK_AMX_TILE_BYTES;
    for (int32_t m = begin; m < end; m++) {
        /* Row m of piece j, part q: at row + j * piece_bytes + q * 2 KiB. */
        uint8_t* row = ap->a + (size_t)(m / QK_AMX_BLOCK_ROWS) * ap->pieces * piece_bytes + (size_t)(m % QK_AMX_BLOCK_ROWS) * 64;
        if (m >= p->a->M) {
            for (size_t j = 0; j < ap->pieces * (size_t)ap->parts; j++) memset(row + j * 2 * QK_AMX_TILE_BYTES, 0, 64);
            continue;
        }
        for (int32_t g = 0; g < p->l.groups; g++) {
            const float* x = p->x + (size_t)m * p->x_row + (size_t)g * gs;
            for (size_t k = 0; k < (size_t)ap->steps * STEP_K; k += 16) {
                /* gs is a multiple of 4; the loader zero-pads x to the group's end, zeros past it */
                __mmask16 live = k + 16 <= gs ? 0xFFFF : k < gs ? (__mmask16)((1u << (gs - k)) - 1) : 0;
                __m512 rest = _mm512_maskz_loadu_ps(live, x + k);
                uint8_t* out = row + ((size_t)g * (size_t)ap->steps + k / STEP_K) * piece_bytes + (k % STEP_K) * 2;
                for (int32_t q = 0; q < ap->parts; q++)
                    _mm256_storeu_si256((__m256i*)(out + (size_t)q * 2 * QK_AMX_TILE_BYTES),
                                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(qk_avx512_bf16_part(&rest), 16)));
            }
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

/* Steps [s0, s1) of group g of `panel` as bfloat16 B tiles at out: (s1 - s0) * 16 rows of 64 bytes,
 * zero past the group. A step is 32 k: 4 packed rows of 4-bit weights, 8 of 8-bit. */
static void stage_group(const amx_problem* ap, int32_t panel, int32_t g, int32_t s0, int32_t s1, uint8_t* out) {
    const qk_avx512_problem* p = &ap->p;
    const qk_vnni16_layout* l = &p->l;
    const uint8_t* group = qk_vnni16_group(p->packed, l, panel, g);
    int32_t per_step = STEP_K / l->k_per_row, first = s0 * per_step;
    int32_t last = l->rows < s1 * per_step ? l->rows : s1 * per_step;
    __m512i zero = qk_avx512_zero(group, l);
    int32_t staged = 0; /* bfloat16 rows written */
    for (int32_t r = first; r < last; r++) {
        __m512i v = qk_avx512_load_row(group, l, r); /* prefetched, as in a8.c */
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
    memset(out + (size_t)staged * 64, 0, ((size_t)(s1 - s0) * QK_AMX_TILE_ROWS - (size_t)staged) * 64);
    /* gcc's _tile_loadd asm declares no memory read: keep these stores before the tile loads. */
    __asm__ volatile("" ::: "memory");
}

/* C tiles 0..3 = the products of `steps` steps of one 32-row block, every part: a is the block's
 * first piece, b the staged B tiles of its first step. */
static void block_products(const amx_problem* ap, const uint8_t* a, const uint8_t* const b[2], int32_t steps,
                           int panels) {
    size_t piece_bytes = (size_t)ap->parts * 2 * QK_AMX_TILE_BYTES;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int32_t s = 0; s < steps; s++) {
        _tile_loadd(6, b[0] + (size_t)s * QK_AMX_TILE_BYTES, 64);
        if (panels == 2) _tile_loadd(7, b[1] + (size_t)s * QK_AMX_TILE_BYTES, 64);
        for (int32_t q = 0; q < ap->parts; q++) {
            const uint8_t* as = a + (size_t)s * piece_bytes + (size_t)q * 2 * QK_AMX_TILE_BYTES;
            _tile_loadd(4, as, 64);
            _tile_loadd(5, as + QK_AMX_TILE_BYTES, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            if (panels == 2) {
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(3, 5, 7);
            }
        }
    }
}

/* One slice of K, steps [k0, k1) of the groups one after the other, for the rows [m0, m1) of a
 * chunk: a task per panel pair. */
typedef struct {
    const amx_problem* ap;
    int32_t m0, m1, k0, k1;
} task_job;

static void task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const task_job* job = arg;
    const amx_problem* ap = job->ap;
    const qk_avx512_problem* p = &ap->p;
    const qk_vnni16_layout* l = &p->l;
    qk_amx_scratch s;
    qk_amx_carve_scratch(ap->steps < ap->slice_steps ? ap->steps : ap->slice_steps,
                         ap->scratch0 + (size_t)thread * ap->scratch, &s);
    float* c = s.c;
    _tile_loadconfig(&qk_amx_tile_config); /* per task: see a8.c */
    size_t piece_bytes = (size_t)ap->parts * 2 * QK_AMX_TILE_BYTES, chunk = (size_t)ap->chunk_rows * QK_AVX512_TILE_COLUMNS;
    int32_t rows_of_chunk = job->m1 - job->m0;
    int32_t folds = (ap->steps + ap->fold_steps - 1) / ap->fold_steps; /* tile sums per group */
    for (int32_t pair = begin; pair < end; pair++) {
        int32_t panel = 2 * pair;
        int panels = qk_avx512_pair_panels(l, panel);
        double* y = ap->y + (size_t)(ap->per_pair ? pair : thread) * chunk;
        float* y32 = ap->y32 + (size_t)(ap->per_pair ? pair : thread) * chunk;
        if (job->k0 == 0) memset(y, 0, (size_t)rows_of_chunk * QK_AVX512_TILE_COLUMNS * sizeof *y);
        for (int32_t g = job->k0 / ap->steps; g * ap->steps < job->k1; g++) {
            /* This slice's steps of group g: [s0, s1), s0 a multiple of fold_steps. */
            int32_t s0 = job->k0 - g * ap->steps > 0 ? job->k0 - g * ap->steps : 0;
            int32_t s1 = job->k1 - g * ap->steps < ap->steps ? job->k1 - g * ap->steps : ap->steps;
            const uint8_t* header[2];
            for (int pi = 0; pi < panels; pi++) {
                stage_group(ap, panel + pi, g, s0, s1, s.b[pi]);
                header[pi] = qk_vnni16_group(p->packed, l, panel + pi, g);
            }
            for (int32_t m = job->m0; m < job->m1; m += QK_AMX_BLOCK_ROWS) {
                const uint8_t* a = ap->a + ((size_t)(m / QK_AMX_BLOCK_ROWS) * ap->pieces + (size_t)g * (size_t)ap->steps) * piece_bytes;
                int32_t rows = job->m1 - m < QK_AMX_BLOCK_ROWS ? job->m1 - m : QK_AMX_BLOCK_ROWS;
                for (int32_t f0 = s0; f0 < s1; f0 += ap->fold_steps) {
                    int32_t f1 = f0 + ap->fold_steps < s1 ? f0 + ap->fold_steps : s1;
                    const uint8_t* b[2] = {s.b[0] + (size_t)(f0 - s0) * QK_AMX_TILE_BYTES,
                                           s.b[1] + (size_t)(f0 - s0) * QK_AMX_TILE_BYTES};
                    block_products(ap, a + (size_t)f0 * piece_bytes, b, f1 - f0, panels);
                    _tile_stored(0, c, 64);
                    _tile_stored(1, c + 256, 64);
                    _tile_stored(2, c + 512, 64);
                    _tile_stored(3, c + 768, 64);
                    qk_run_step step = qk_run_step_of(g * folds + f0 / ap->fold_steps, l->groups * folds, RUN_FOLDS);
                    for (int pi = 0; pi < panels; pi++) {
                        __m512 scale = _mm512_load_ps((const float*)header[pi]);
                        for (int32_t r = 0; r < rows; r++) {
                            size_t at = (size_t)(m - job->m0 + r) * QK_AVX512_TILE_COLUMNS + (size_t)pi * QK_VNNI16_PANEL;
                            const float* sums = c + (r / QK_AMX_TILE_ROWS * 2 + pi) * 256 + (r % QK_AMX_TILE_ROWS) * 16;
                            qk_avx512_run_end(step, qk_avx512_run_fma(step, _mm512_load_ps(sums), scale, y32 + at), y32 + at,
                                              y + at);
                        }
                    }
                }
            }
        }
        if (job->k1 == l->groups * ap->steps) qk_avx512_finish_rows(p, panel, panels, job->m0, rows_of_chunk, y);
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
    int32_t k_steps = ap.p.l.groups * ap.steps; /* chunk by chunk, slice by slice, as in a8.c */
    for (int32_t m0 = 0; m0 < a->M; m0 += ap.chunk_rows)
        for (int32_t k0 = 0; k0 < k_steps; k0 += ap.slice_steps) {
            task_job job = {&ap, m0, a->M - m0 < ap.chunk_rows ? a->M : m0 + ap.chunk_rows, k0,
                            k_steps - k0 < ap.slice_steps ? k_steps : k0 + ap.slice_steps};
            qk_parallel_for(exec, ap.pairs, 1, task, &job);
        }
    return QK_OK;
}
