/* x86_amx_a8_w4w8_32x32: A8 (docs/numerics.md section 3) with AMX-INT8, for prefill.
 *
 * Tiles (palette 1, every tile 16 rows x 64 bytes): A = 16 rows of qx x 64 k (signed bytes),
 * B = 64 k x 16 columns in VNNI order, C = 16 x 16 int32. B holds q - zp for 4-bit weights
 * (signed bytes, tdpbssd: C is the group's acc itself) and u = q + bias for 8-bit ones (unsigned,
 * tdpbsud: one vnni16 row is one B row; acc = C - zero * xs). A block is 32 rows x 32 columns: two
 * A tiles, two B tiles, four C tiles, so each tile loaded feeds two products.
 *
 * A task is one pair of panels (32 columns) for a chunk of up to QK_AMX_CHUNK_ROWS rows and one
 * slice of K (A_SLICE_BYTES). For each group (or the part of it in the slice) it stages the weights
 * of both panels once into the thread's workspace as B tiles (stage_group), zero-padded to a
 * multiple of 16 rows; 8-bit groups of whole tiles (G a multiple of 64) need no staging: their
 * packed rows are loaded as B tiles directly. The staged tiles then serve every 32-row block of the
 * chunk.
 *
 * Rows of X are quantized by the shared A8 quantizer, each group zero-padded to whole 64-k steps,
 * and laid out as A tiles (prepare_task): for each 32-row block, its 64-k pieces one after the
 * other, each the block's 32 rows of 64 bytes. A tile is then 1 KiB contiguous, and a block's
 * activations are one stream; rows past M are zeros.
 *
 * Per group, acc is exact in int32 (G <= QK_A8_INT32_EXACT_GROUP). The fold (fold_block) adds
 * scale * acc (+ offset * xs) in float32 over runs of groups, each run then added to float64 sums,
 * with x86_avx512's operations in x86_avx512's order (qk_avx512_a8_fold, which x86_avx512's a8.c
 * also computes through qk_avx512_a8_add, looping over runs; reading 20), so the two kernels'
 * results are equal bit for bit. (Folding one block while the tile unit computed the next, over two
 * C buffers, measured no faster: at 4096^2, M = 512, 4-bit g128, the products alone took 2.6 ms,
 * the fold alone 2.8 ms, and both 6.6 ms either way.)
 *
 * The tile configuration is loaded at the start of every task, not once per thread: another library
 * in the process (oneDNN in PyTorch, say) may configure the tiles of the same thread in between. */
#include <string.h>

#include "amx.h"

enum {
    /* Activations of one slice of K for a chunk of rows: they stay in the L2 cache while every panel
     * pair's weights stream past them. Without slices, at K = 14336 each task read the chunk's
     * 3.5 MiB of activations from the LLC again (see qk_amx_a8_32x32). */
    A_SLICE_BYTES = 1024 * 1024,
};

typedef struct {
    qk_avx512_problem p;
    int32_t padded_m;     /* M rounded up to QK_AMX_BLOCK_ROWS */
    int32_t chunk_rows;   /* rows per chunk: QK_AMX_CHUNK_ROWS, or fewer for a smaller M */
    int32_t steps;        /* 64-k tile steps per group */
    int32_t slice_steps;  /* tile steps per slice of K: whole groups, or a part of one */
    int32_t pairs;        /* panel pairs: tasks per chunk and slice */
    int direct;           /* B tiles loaded from the packed weights (8-bit groups of whole tiles) */
    int signed_b;         /* B tiles hold q - zp (4 bits), else u (8 bits) */
    size_t row_bytes;     /* a quantized row: groups * steps * 64 */
    int8_t* a;            /* the quantized rows as A tiles: [padded_m / 32][groups * steps][32][64] */
    uint8_t* rows0;       /* thread t's row buffer at rows0 + t * row_bytes */
    /* A task's results, per panel pair where K has slices (kept from one to the next), else per
     * thread: */
    int per_pair;
    double* y;            /* float64 sums, [pairs or threads][chunk_rows][32] */
    float* y32;           /* float32 runs, the same (reading 20) */
    int32_t* kept;        /* C tiles of a group that goes on in the next slice, [pairs][chunk_rows / 32][4 * 256] */
    size_t scratch;       /* bytes of one thread's scratch */
    uint8_t* scratch0;    /* thread t's scratch at scratch0 + t * scratch */
} amx_problem;

/* Lays out the workspace (base NULL: measures it); returns its size. */
static size_t layout(amx_problem* ap, const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads,
                     void* base) {
    ap->p = qk_avx512_problem_of(w, a);
    ap->padded_m = (a->M + QK_AMX_BLOCK_ROWS - 1) / QK_AMX_BLOCK_ROWS * QK_AMX_BLOCK_ROWS;
    ap->chunk_rows = ap->padded_m < QK_AMX_CHUNK_ROWS ? ap->padded_m : QK_AMX_CHUNK_ROWS;
    ap->steps = (int32_t)((ap->p.group_stride + 63) / 64);
    int32_t budget = (int32_t)(A_SLICE_BYTES / ((size_t)ap->chunk_rows * 64));
    budget = budget > 0 ? budget : 1;
    ap->slice_steps = ap->steps <= budget ? budget / ap->steps * ap->steps : budget;
    ap->pairs = (ap->p.l.panels + 1) / 2;
    ap->direct = ap->p.w->bits == 8 && ap->p.l.rows == ap->steps * QK_AMX_TILE_ROWS;
    ap->signed_b = ap->p.w->bits == 4;
    ap->row_bytes = (size_t)ap->p.l.groups * (size_t)ap->steps * 64;
    ap->per_pair = ap->slice_steps < ap->p.l.groups * ap->steps;
    size_t used = 0, chunk = (size_t)(ap->per_pair ? ap->pairs : threads) * (size_t)ap->chunk_rows * QK_AVX512_TILE_COLUMNS;
    ap->p.sums = qk_avx2_take(base, &used, (size_t)ap->padded_m * (size_t)ap->p.l.groups * sizeof *ap->p.sums);
    ap->p.row_scale = qk_avx2_take(base, &used, (size_t)a->M * sizeof *ap->p.row_scale);
    ap->a = qk_avx2_take(base, &used, (size_t)ap->padded_m * ap->row_bytes);
    ap->rows0 = qk_avx2_take(base, &used, ap->row_bytes * (size_t)threads);
    ap->y = qk_avx2_take(base, &used, chunk * sizeof *ap->y);
    ap->y32 = qk_avx2_take(base, &used, chunk * sizeof *ap->y32);
    ap->kept = ap->slice_steps < ap->steps ? qk_avx2_take(base, &used, chunk * sizeof *ap->kept) : NULL;
    qk_amx_scratch s;
    ap->scratch = qk_amx_carve_scratch(ap->steps < ap->slice_steps ? ap->steps : ap->slice_steps, NULL, &s);
    ap->scratch0 = qk_avx2_take(base, &used, ap->scratch * (size_t)threads);
    return used;
}

/* Rows [begin, end) of X quantized into the thread's row buffer (each group zero-padded to whole
 * 64-k steps), then copied piece by piece into the A tile layout. Rows past M are zeros. */
static void prepare_task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const amx_problem* ap = arg;
    const qk_avx512_problem* p = &ap->p;
    int8_t* row = (int8_t*)ap->rows0 + (size_t)thread * ap->row_bytes;
    size_t pieces = ap->row_bytes / 64;
    for (int32_t m = begin; m < end; m++) {
        int32_t* sums = p->sums + (size_t)m * p->l.groups;
        if (m < p->a->M) {
            p->row_scale[m] = qk_avx2_quantize_row(p->a, p->w, m, (size_t)ap->steps * 64, row, sums);
        } else {
            memset(row, 0, ap->row_bytes);
            memset(sums, 0, (size_t)p->l.groups * sizeof *sums);
        }
        for (size_t j = 0; j < pieces; j++)
            _mm512_store_si512((void*)(ap->a + ((size_t)(m / QK_AMX_BLOCK_ROWS) * pieces + j) * 2 * QK_AMX_TILE_BYTES +
                                       (size_t)(m % QK_AMX_BLOCK_ROWS) * 64),
                               _mm512_load_si512((const void*)(row + j * 64)));
    }
}

/* Steps [s0, s1) of group g of `panel` as B tiles at out: (s1 - s0) * 16 rows of 64 bytes, zero
 * past the group's rows. 4-bit weights are staged signed, as q - zp = u - zero (at most 15 in
 * magnitude), so that the tile products are the group's acc itself (tdpbssd) and the fold needs no
 * zero * xs; the byte of column j in a VNNI row is byte j / 4 of the row, so zero * 0x01010101 is
 * zero's VNNI row. k past the group's end hold u = zero and become 0 (the activations there are
 * zeros too). 8-bit
 * weights stay u (tdpbsud). */
static void stage_group(const qk_avx512_problem* p, int32_t panel, int32_t g, int32_t s0, int32_t s1, uint8_t* out) {
    const qk_vnni16_layout* l = &p->l;
    const uint8_t* group = qk_vnni16_group(p->packed, l, panel, g);
    int32_t staged; /* rows written */
    if (p->w->bits == 4) { /* packed row r: staged rows 2r, 2r + 1 */
        int32_t first = s0 * QK_AMX_TILE_ROWS / 2;
        int32_t end = l->rows < s1 * QK_AMX_TILE_ROWS / 2 ? l->rows : s1 * QK_AMX_TILE_ROWS / 2;
        int32_t n = end - first;
        const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
        __m512i zero = _mm512_mullo_epi32(qk_avx512_zero(group, l), _mm512_set1_epi32(0x01010101));
        for (int32_t r = 0; r < n; r++) {
            /* Prefetched: the panel's groups are contiguous, a stream the hardware prefetcher does
             * not run far enough ahead of when each group's rows are followed by its tile products
             * and fold. */
            __m512i v = qk_avx512_load_row(group, l, first + r);
            _mm512_store_si512((void*)(out + (size_t)(2 * r) * 64), _mm512_sub_epi8(_mm512_and_si512(v, low_nibbles), zero));
            _mm512_store_si512((void*)(out + (size_t)(2 * r + 1) * 64),
                               _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles), zero));
        }
        staged = 2 * n;
    } else {
        int32_t end = l->rows < s1 * QK_AMX_TILE_ROWS ? l->rows : s1 * QK_AMX_TILE_ROWS;
        staged = end - s0 * QK_AMX_TILE_ROWS;
        memcpy(out, group + l->header_bytes + (size_t)s0 * QK_AMX_TILE_BYTES, (size_t)staged * QK_VNNI16_ROW_BYTES);
    }
    memset(out + (size_t)staged * 64, 0, ((size_t)(s1 - s0) * QK_AMX_TILE_ROWS - (size_t)staged) * 64);
    /* gcc's _tile_loadd asm declares no memory read: keep these stores before the tile loads. */
    __asm__ volatile("" ::: "memory");
}

/* One block: 32 rows (16 where `lower` is 0) from row m, in group g. */
typedef struct {
    int32_t g, m, rows;
} block;

/* C tile c += A tile a . B tile b: signed B (4 bits, as staged) or unsigned (8 bits). Tile numbers
 * are instruction immediates, hence a macro. */
#define PRODUCT(signed_b, c, a, b)    \
    do {                              \
        if (signed_b)                 \
            _tile_dpbssd(c, a, b);    \
        else                          \
            _tile_dpbsud(c, a, b);    \
    } while (0)

/* The products of one block over `steps` tile steps into C tiles 0, 1 (rows 0..15, panels 0, 1) and
 * 2, 3 (rows 16..31), the latter only where the block has more than 16 rows (M = 9..16 and ragged
 * last blocks would otherwise spend half the tile products on padding); the C tiles start from
 * zero, or from `kept` where the group began in an earlier slice. */
static void block_products(const int8_t* a, const uint8_t* const b[2], int32_t steps, int panels, int lower,
                           int signed_b, const int32_t* kept) {
    if (kept) {
        _tile_loadd(0, kept, 64);
        _tile_loadd(1, kept + 256, 64);
        _tile_loadd(2, kept + 512, 64);
        _tile_loadd(3, kept + 768, 64);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int32_t s = 0; s < steps; s++) {
        const int8_t* as = a + (size_t)s * 2 * QK_AMX_TILE_BYTES;
        _tile_loadd(4, as, 64);
        _tile_loadd(6, b[0] + (size_t)s * QK_AMX_TILE_BYTES, 64);
        PRODUCT(signed_b, 0, 4, 6);
        if (lower) {
            _tile_loadd(5, as + QK_AMX_TILE_BYTES, 64);
            PRODUCT(signed_b, 2, 5, 6);
        }
        if (panels == 2) {
            _tile_loadd(7, b[1] + (size_t)s * QK_AMX_TILE_BYTES, 64);
            PRODUCT(signed_b, 1, 4, 7);
            if (lower) PRODUCT(signed_b, 3, 5, 7);
        }
    }
}

/* C tile t (rows 16 (t / 2).., panel t % 2) stored as 16 rows of 16 int32 at c + t * 256. */
static void store_block(int32_t* c, int lower) {
    _tile_stored(0, c, 64);
    _tile_stored(1, c + 256, 64);
    if (lower) {
        _tile_stored(2, c + 512, 64);
        _tile_stored(3, c + 768, 64);
    }
}

/* One slice of K, steps [k0, k1) of the groups one after the other, for the rows [m0, m1) of a
 * chunk: a task per panel pair. */
typedef struct {
    const amx_problem* ap;
    int32_t m0, m1, k0, k1;
} task_job;

/* Folds a stored block's acc (C, less zero * xs for 8 bits) into the task's float32 runs y32 and
 * float64 sums y (qk_avx512_a8_fold), [chunk rows][32] from row m0. */
QK_AVX512_INLINE void fold_block(const amx_problem* ap, int32_t panel, int panels, int32_t m0, block bk,
                                 const int32_t* c, float* y32, double* y) {
    const qk_avx512_problem* p = &ap->p;
    const int32_t groups = p->l.groups, rows = bk.rows;
    const qk_run_step step = qk_a8_run_step_of(bk.g, groups, p->has_offsets);
    const int correct = !ap->signed_b, offsets = p->has_offsets; /* locals: vector stores may alias *p */
    const int32_t* xs = p->sums + (size_t)bk.m * (size_t)groups + bk.g; /* row r's: xs[r * groups] */
    for (int pi = 0; pi < panels; pi++) {
        const uint8_t* header = qk_vnni16_group(p->packed, &p->l, panel + pi, bk.g);
        const __m512 scale = _mm512_load_ps((const float*)header);
        const __m512i zero = qk_avx512_zero(header, &p->l);
        const __m512 offset = qk_avx512_offset(header, &p->l);
        size_t at = (size_t)(bk.m - m0) * QK_AVX512_TILE_COLUMNS + (size_t)pi * QK_VNNI16_PANEL;
        const int32_t* xr = xs;
        for (int32_t r0 = 0; r0 < rows; r0 += QK_AMX_TILE_ROWS) { /* C tiles pi (rows 0..15), 2 + pi (16..31) */
            const int32_t* ct = c + (r0 / QK_AMX_TILE_ROWS * 2 + pi) * 256;
            int32_t n = rows - r0 < QK_AMX_TILE_ROWS ? rows - r0 : QK_AMX_TILE_ROWS;
            for (int32_t r = 0; r < n; r++, xr += groups, at += QK_AVX512_TILE_COLUMNS) {
                __m512i acc = _mm512_load_si512((const void*)(ct + r * 16));
                if (correct) acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zero, _mm512_set1_epi32(*xr)));
                qk_avx512_a8_fold(step, offsets, acc, scale, offset, *xr, y32 + at, y + at);
            }
        }
    }
}

static void task(void* arg, int32_t begin, int32_t end, int32_t thread) {
    const task_job* job = arg;
    const amx_problem* ap = job->ap;
    const qk_avx512_problem* p = &ap->p;
    const qk_vnni16_layout* l = &p->l;
    qk_amx_scratch s;
    qk_amx_carve_scratch(ap->steps < ap->slice_steps ? ap->steps : ap->slice_steps,
                         ap->scratch0 + (size_t)thread * ap->scratch, &s);
    _tile_loadconfig(&qk_amx_tile_config);
    size_t pieces = ap->row_bytes / 64, chunk = (size_t)ap->chunk_rows * QK_AVX512_TILE_COLUMNS;
    int32_t rows = job->m1 - job->m0, blocks = (rows + QK_AMX_BLOCK_ROWS - 1) / QK_AMX_BLOCK_ROWS;
    for (int32_t pair = begin; pair < end; pair++) {
        int32_t panel = 2 * pair;
        int panels = qk_avx512_pair_panels(l, panel);
        double* y = ap->y + (size_t)(ap->per_pair ? pair : thread) * chunk;
        float* y32 = ap->y32 + (size_t)(ap->per_pair ? pair : thread) * chunk;
        int32_t* kept = ap->kept ? ap->kept + (size_t)pair * (size_t)blocks * 4 * 256 : NULL;
        if (job->k0 == 0) memset(y, 0, (size_t)rows * QK_AVX512_TILE_COLUMNS * sizeof *y);
        for (int32_t g = job->k0 / ap->steps; g * ap->steps < job->k1; g++) {
            /* This slice's steps of group g: [s0, s1); the group ends in it when s1 is its last. */
            int32_t s0 = job->k0 - g * ap->steps > 0 ? job->k0 - g * ap->steps : 0;
            int32_t s1 = job->k1 - g * ap->steps < ap->steps ? job->k1 - g * ap->steps : ap->steps;
            const uint8_t* b[2] = {s.b[0], s.b[1]};
            for (int pi = 0; pi < panels; pi++) {
                if (ap->direct) /* the packed rows are the B tiles: no copy */
                    b[pi] = qk_vnni16_group(p->packed, l, panel + pi, g) + l->header_bytes + (size_t)s0 * QK_AMX_TILE_BYTES;
                else
                    stage_group(p, panel + pi, g, s0, s1, s.b[pi]);
            }
            for (int32_t m = job->m0; m < job->m1; m += QK_AMX_BLOCK_ROWS) {
                block bk = {g, m, job->m1 - m < QK_AMX_BLOCK_ROWS ? job->m1 - m : QK_AMX_BLOCK_ROWS};
                int lower = bk.rows > QK_AMX_TILE_ROWS;
                int32_t* keep = kept ? kept + (size_t)((m - job->m0) / QK_AMX_BLOCK_ROWS) * 4 * 256 : NULL;
                block_products(ap->a + ((size_t)(m / QK_AMX_BLOCK_ROWS) * pieces + (size_t)g * (size_t)ap->steps + (size_t)s0) *
                                           2 * QK_AMX_TILE_BYTES,
                               b, s1 - s0, panels, lower, ap->signed_b, s0 > 0 ? keep : NULL);
                if (s1 == ap->steps) {
                    store_block(s.c, lower);
                    fold_block(ap, panel, panels, job->m0, bk, s.c, y32, y);
                } else { /* the group goes on in the next slice */
                    store_block(keep, lower);
                }
            }
        }
        if (job->k1 == l->groups * ap->steps) qk_avx512_finish_rows(p, panel, panels, job->m0, rows, y);
    }
}

size_t qk_amx_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    amx_problem ap;
    return layout(&ap, w, a, threads, NULL);
}

qk_status qk_amx_a8_32x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    amx_problem ap;
    layout(&ap, w, a, exec->threads, exec->workspace);
    int32_t grain = 16384 / w->format.K; /* a few microseconds per task, as qk_avx512_prepare_rows */
    qk_parallel_for(exec, ap.padded_m, grain > 1 ? grain : 1, prepare_task, &ap);
    /* Chunk by chunk, slice by slice, the panel pairs in parallel: every thread's tasks then share
     * the slice's activations (A_SLICE_BYTES, in each core's L2 cache), and the weights stream from
     * memory once per chunk. */
    int32_t k_steps = ap.p.l.groups * ap.steps;
    for (int32_t m0 = 0; m0 < a->M; m0 += ap.chunk_rows)
        for (int32_t k0 = 0; k0 < k_steps; k0 += ap.slice_steps) {
            task_job job = {&ap, m0, a->M - m0 < ap.chunk_rows ? a->M : m0 + ap.chunk_rows, k0,
                            k_steps - k0 < ap.slice_steps ? k_steps : k0 + ap.slice_steps};
            qk_parallel_for(exec, ap.pairs, 1, task, &job);
        }
    return QK_OK;
}
