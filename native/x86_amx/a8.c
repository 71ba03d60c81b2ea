/* x86_amx_a8_w4w8_32x32: A8 (docs/numerics.md section 3) with AMX-INT8, for prefill.
 *
 * Tiles (palette 1, every tile 16 rows x 64 bytes): A = 16 rows of qx x 64 k (signed bytes),
 * B = 64 k x 16 columns of u = q + bias in VNNI order (unsigned bytes: one vnni16 row of 8-bit
 * weights is one B row), C = 16 x 16 int32; tdpbsud adds A . B to C. A block is 32 rows x 32
 * columns: two A tiles, two B tiles, four C tiles, so each tile loaded feeds two products.
 *
 * A task is one pair of panels (32 columns) for a chunk of up to QK_AMX_CHUNK_ROWS rows. For each
 * group it stages the group's weights of both panels once into the thread's workspace as B tiles:
 * 8-bit rows copied, 4-bit rows widened to bytes (a packed row's low nibbles are the VNNI row of
 * k 8r..8r+3, its high nibbles that of 8r+4..8r+7), both zero-padded to a multiple of 16 rows. The
 * staged tiles then serve every 32-row block of the chunk. The zero padding is what lets the A tiles
 * always be 64 k wide: where a group ends inside a tile, A reads on into the next group's
 * activations (or the workspace after them), and multiplies them by zero weights. 8-bit groups of
 * whole tiles (G a multiple of 64) need neither: their packed rows are loaded as B tiles directly.
 *
 * Per group, C holds sum qx * u exactly (int32; G <= QK_A8_INT32_EXACT_GROUP); stored, it becomes
 * (C - zero * xs) * scale (+ offset * xs) added in float64, as in x86_avx512's kernel, so the result
 * is the same bit for bit. Rows of X are quantized by the shared A8 quantizer into a buffer padded
 * to a multiple of 32 rows (zeros), so A tiles never read past it.
 *
 * The tile configuration is loaded at the start of every task, not once per thread: another library
 * in the process (oneDNN in PyTorch, say) may configure the tiles of the same thread in between. */
#include <string.h>

#include "amx.h"

typedef struct {
    qk_avx512_problem p;
    int32_t padded_m;   /* M rounded up to QK_AMX_BLOCK_ROWS */
    int32_t steps;      /* 64-k tile steps per group */
    int direct;         /* B tiles loaded from the packed weights (8-bit groups of whole tiles) */
    size_t scratch;     /* bytes of one thread's scratch */
    uint8_t* scratch0;  /* thread t's scratch at scratch0 + t * scratch */
} amx_problem;

/* Lays out the workspace (base NULL: measures it); returns its size. */
static size_t layout(amx_problem* ap, const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads,
                     void* base) {
    ap->p = qk_avx512_problem_of(w, a);
    /* One cache line between rows: rows a multiple of 4 KiB apart (K = 4096) would put an A tile's
     * 16 rows in one set of the 12-way L1 cache. */
    ap->p.row += 64;
    ap->padded_m = (a->M + QK_AMX_BLOCK_ROWS - 1) / QK_AMX_BLOCK_ROWS * QK_AMX_BLOCK_ROWS;
    ap->steps = (int32_t)((ap->p.group_stride + 63) / 64);
    ap->direct = ap->p.w->bits == 8 && ap->p.l.rows == ap->steps * QK_AMX_TILE_ROWS;
    qk_matmul_args padded = *a; /* the activation buffers, for padded_m rows */
    padded.M = ap->padded_m;
    ap->p.a = &padded;
    size_t used = qk_avx512_buffers(&ap->p, 0, base);
    ap->p.a = a;
    qk_amx_scratch s;
    ap->scratch = qk_amx_carve_scratch(ap->steps, NULL, &s);
    ap->scratch0 = qk_avx2_take(base, &used, ap->scratch * (size_t)threads);
    return used;
}

/* Group g of `panel` as B tiles at out: steps * 16 rows of 64 bytes, zero past the group's rows. */
static void stage_group(const qk_avx512_problem* p, int32_t panel, int32_t g, int32_t steps, uint8_t* out) {
    const qk_vnni16_layout* l = &p->l;
    const uint8_t* rows = qk_vnni16_group(p->packed, l, panel, g) + l->header_bytes;
    int32_t staged = p->w->bits == 4 ? 2 * l->rows : l->rows;
    if (p->w->bits == 4) {
        const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
        for (int32_t r = 0; r < l->rows; r++) {
            const uint8_t* row = rows + (size_t)r * QK_VNNI16_ROW_BYTES;
            /* The panel's groups are contiguous: a stream the hardware prefetcher does not run far
             * enough ahead of when each group's rows are followed by its tile products and fold. */
            _mm_prefetch((const char*)row + QK_AVX512_PREFETCH_BYTES, _MM_HINT_T0);
            __m512i v = _mm512_load_si512((const void*)row);
            _mm512_store_si512((void*)(out + (size_t)(2 * r) * 64), _mm512_and_si512(v, low_nibbles));
            _mm512_store_si512((void*)(out + (size_t)(2 * r + 1) * 64),
                               _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles));
        }
    } else {
        memcpy(out, rows, (size_t)l->rows * QK_VNNI16_ROW_BYTES);
    }
    memset(out + (size_t)staged * 64, 0, ((size_t)steps * QK_AMX_TILE_ROWS - (size_t)staged) * 64);
    /* gcc's _tile_loadd asm declares no memory read: keep these stores before the tile loads. */
    __asm__ volatile("" ::: "memory");
}

/* The products of one 32-row block over one group: C tiles 0, 1 (rows 0..15, panels 0, 1) and 2, 3
 * (rows 16..31), the latter only where the block has more than 16 rows (M = 9..16 and ragged last
 * blocks would otherwise spend half the tile products on padding). Tile numbers are instruction
 * immediates, hence the spelled-out cases. */
static void block_products(const int8_t* a, size_t a_stride, const uint8_t* const b[2], int32_t steps, int panels,
                           int32_t rows, int32_t* c) {
    int lower = rows > QK_AMX_TILE_ROWS;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int32_t s = 0; s < steps; s++) {
        const int8_t* as = a + (size_t)s * 64;
        _tile_loadd(4, as, a_stride);
        _tile_loadd(6, b[0] + (size_t)s * QK_AMX_TILE_BYTES, 64);
        _tile_dpbsud(0, 4, 6);
        if (lower) {
            _tile_loadd(5, as + QK_AMX_TILE_ROWS * a_stride, a_stride);
            _tile_dpbsud(2, 5, 6);
        }
        if (panels == 2) {
            _tile_loadd(7, b[1] + (size_t)s * QK_AMX_TILE_BYTES, 64);
            _tile_dpbsud(1, 4, 7);
            if (lower) _tile_dpbsud(3, 5, 7);
        }
    }
    /* C tile t (rows 16 (t / 2).., panel t % 2) stored as 16 rows of 16 int32 at c + t * 256. */
    _tile_stored(0, c, 64);
    _tile_stored(1, c + 256, 64);
    if (lower) {
        _tile_stored(2, c + 512, 64);
        _tile_stored(3, c + 768, 64);
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
    qk_amx_carve_scratch(ap->steps, ap->scratch0 + (size_t)thread * ap->scratch, &s);
    int32_t* c = s.c;
    _tile_loadconfig(&qk_amx_tile_config);
    for (int32_t t = begin; t < end; t++) {
        qk_amx_task k = qk_amx_task_of(p, job->pairs, t);
        memset(s.y, 0, (size_t)(k.m1 - k.m0) * QK_AVX512_TILE_COLUMNS * sizeof(double));
        for (int32_t g = 0; g < l->groups; g++) {
            const uint8_t* header[2] = {qk_vnni16_group(p->packed, l, k.panel, g),
                                        qk_vnni16_group(p->packed, l, k.panel + k.panels - 1, g)};
            const uint8_t* b[2] = {s.b[0], s.b[1]};
            for (int pi = 0; pi < k.panels; pi++) {
                if (ap->direct) /* the packed rows are the B tiles: no copy */
                    b[pi] = header[pi] + l->header_bytes;
                else
                    stage_group(p, k.panel + pi, g, ap->steps, s.b[pi]);
            }
            for (int32_t m = k.m0; m < k.m1; m += QK_AMX_BLOCK_ROWS) {
                int32_t rows = k.m1 - m < QK_AMX_BLOCK_ROWS ? k.m1 - m : QK_AMX_BLOCK_ROWS;
                block_products(p->qx + (size_t)m * p->row + (size_t)g * p->group_stride, p->row, b, ap->steps,
                               k.panels, rows, c);
                for (int pi = 0; pi < k.panels; pi++) {
                    __m512 scale = _mm512_load_ps((const float*)header[pi]);
                    __m512i zero = _mm512_load_si512((const void*)(header[pi] + 64));
                    for (int32_t r = 0; r < rows; r++) {
                        int32_t xs = p->sums[(size_t)(m + r) * l->groups + g];
                        __m512i acc = _mm512_loadu_si512((const void*)(c + (r / QK_AMX_TILE_ROWS * 2 + pi) * 256 +
                                                                       (r % QK_AMX_TILE_ROWS) * 16));
                        double* y = s.y + (size_t)(m - k.m0 + r) * QK_AVX512_TILE_COLUMNS + pi * QK_VNNI16_PANEL;
                        qk_avx512_fold_epi32(y, _mm512_sub_epi32(acc, _mm512_mullo_epi32(zero, _mm512_set1_epi32(xs))),
                                             scale);
                        if (p->has_offsets) /* offset * xs: exact in float64 */
                            qk_avx512_fold_epi32(y, _mm512_set1_epi32(xs),
                                                 _mm512_load_ps((const float*)(header[pi] + QK_VNNI16_HEADER)));
                    }
                }
            }
        }
        qk_avx512_finish_rows(p, k.panel, k.panels, k.m0, k.m1 - k.m0, s.y);
    }
}

size_t qk_amx_a8_workspace(const qk_kernel_weights* w, const qk_matmul_args* a, int32_t threads) {
    amx_problem ap;
    return layout(&ap, w, a, threads, NULL);
}

qk_status qk_amx_a8_32x32(const qk_exec* exec, const qk_kernel_weights* w, const qk_matmul_args* a) {
    amx_problem ap;
    layout(&ap, w, a, exec->threads, exec->workspace);
    qk_avx512_prepare_rows(exec, &ap.p);
    /* The padding rows: zeros, so that the A tiles past M read zeros. */
    size_t pad = (size_t)(ap.padded_m - a->M);
    memset(ap.p.qx + (size_t)a->M * ap.p.row, 0, pad * ap.p.row);
    memset(ap.p.sums + (size_t)a->M * ap.p.l.groups, 0, pad * (size_t)ap.p.l.groups * sizeof *ap.p.sums);
    task_job job = {&ap, (ap.p.l.panels + 1) / 2};
    int32_t chunks = (a->M + QK_AMX_CHUNK_ROWS - 1) / QK_AMX_CHUNK_ROWS;
    qk_parallel_for(exec, chunks * job.pairs, 1, task, &job);
    return QK_OK;
}
