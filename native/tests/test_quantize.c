/* test_quantize: qk_quantize against the oracle's weight quantizer, bit for bit (section 2 of the
 * contract: every step in float32, so that all implementations agree), and qk_dequantize against
 * scales (q - zp) + offsets rounded once. Random matrices of every kind the quantizer must survive,
 * every granularity, group sizes that leave the last group shorter (format v2) or exceed K, and
 * the quantizer's edges (huge and subnormal ranges). Outputs are fenced by guard bytes, and a
 * symmetric call leaves the zero-point buffer alone.
 *
 * Usage: test_quantize [--seed S] [--cases N] [-v]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "oracle.h"
#include "problems.h"
#include "support.h"

static const char* const granularity_names[3] = {"per tensor", "per channel", "per group"};

/* Quantizes W[N, K] (float32 values, stored as wdt) with qk_quantize and checks it against the
 * oracle, then checks qk_dequantize of the result, with offsets when asked, in a random dtype. */
static void quantize_checked(const float* W, int32_t N, int32_t K, int32_t bits, qk_dtype wdt,
                             qk_granularity granularity, int32_t group_arg, int symmetric, int offsets) {
    int32_t group = granularity == QK_PER_GROUP ? group_arg : K;
    size_t total = (size_t)N * K, groups = (size_t)N * oracle_groups(K, group), q_bytes = total * bits / 8;
    set_context("N=%d K=%d %d-bit %s (group %d%s) %s, %s input%s", N, K, bits, granularity_names[granularity],
                group, K % group ? ", ragged" : "", symmetric ? "symmetric" : "asymmetric", formats[wdt].name,
                offsets ? ", dequantized with offsets" : "");
    void* win = xmalloc(total * formats[wdt].size);
    float* wexact = xmalloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++) {
        store_el(win, wdt, i, W[i]);
        wexact[i] = load_el(win, wdt, i);
    }
    int fill = poison_byte();
    gbuf gq = gbuf_new(q_bytes, fill), gs = gbuf_new(groups * sizeof(float), fill), gz = gbuf_new(groups, fill);
    qk_status s = qk_quantize(win, wdt, N, K, bits, granularity, group_arg, symmetric, gq.p, gs.p, symmetric ? NULL : gz.p);
    int8_t* oq = xmalloc(q_bytes);
    float* os = xmalloc(groups * sizeof(float));
    int8_t* oz = xmalloc(groups);
    CHECK(oracle_quantize_weights(wexact, N, K, bits, granularity, group, symmetric, oq, os, oz),
          "test bug: the oracle quantizer refused a generated matrix");
    if (!CHECK(s == QK_OK, "qk_quantize: status %d: %s", (int)s, qk_last_error())) goto done;
    CHECK(gbuf_guards_ok(&gq) && gbuf_guards_ok(&gs) && gbuf_guards_ok(&gz),
          "qk_quantize wrote outside q / scales / zero_points");
    if (symmetric) CHECK(gbuf_untouched(&gz, fill), "qk_quantize (symmetric) wrote to an unused zero-point buffer");
    size_t bad_q = 0, bad_s = 0, bad_z = 0, first_bad_s = groups;
    for (size_t i = 0; i < q_bytes; i++) bad_q += ((int8_t*)gq.p)[i] != oq[i];
    for (size_t g = 0; g < groups; g++) {
        if (f32_bits(((float*)gs.p)[g]) != f32_bits(os[g]) && bad_s++ == 0) first_bad_s = g;
        bad_z += !symmetric && ((int8_t*)gz.p)[g] != oz[g];
    }
    if (bad_s && test_printing())
        printf("  scale[%zu] = %.9g, oracle %.9g\n", first_bad_s, (double)((float*)gs.p)[first_bad_s],
               (double)os[first_bad_s]);
    CHECK(!bad_q && !bad_s && !bad_z, "qk_quantize differs from the oracle: %zu q bytes, %zu scales, %zu zero points",
          bad_q, bad_s, bad_z);

    /* qk_dequantize: scales (q - zp) + offsets, in double, rounded once to a random dtype; the
     * sign of a zero too (without offsets a negative scale times 0 stays -0). */
    float* off = NULL;
    if (offsets) {
        off = xmalloc(groups * sizeof(float));
        for (size_t g = 0; g < groups; g++) off[g] = rnd_signed(-4, 4);
    }
    qk_weights w = {.size = sizeof w, .data = gq.p, .scales = gs.p, .zero_points = symmetric ? NULL : gz.p, .N = N,
                    .K = K, .group_size = group, .bits = bits, .offsets = off};
    qk_dtype odt = PICK(all_dtypes);
    gbuf gd = gbuf_new(total * formats[odt].size, poison_byte());
    s = qk_dequantize(&w, odt, gd.p);
    if (CHECK(s == QK_OK, "qk_dequantize(%s): status %d: %s", formats[odt].name, (int)s, qk_last_error())) {
        CHECK(gbuf_guards_ok(&gd), "qk_dequantize wrote outside its output");
        size_t bad = 0;
        for (int32_t n = 0; n < N; n++)
            for (int32_t k = 0; k < K; k++) {
                double want = round_to(oracle_weight(&w, n, k), &formats[odt]);
                double got = load_el(gd.p, odt, (size_t)n * K + k);
                bad += !((got == want && !signbit(got) == !signbit(want)) || (isnan(got) && isnan(want)));
            }
        CHECK(!bad, "qk_dequantize(%s): %zu elements differ from scales (q - zp) + offsets", formats[odt].name, bad);
    }
    gbuf_free(&gd);
    free(off);
done:
    gbuf_free(&gq);
    gbuf_free(&gs);
    gbuf_free(&gz);
    free(oq);
    free(os);
    free(oz);
    free(win);
    free(wexact);
}

static void random_case(void) {
    static const int32_t Ks[] = {1, 2, 8, 15, 30, 32, 33, 64, 96, 100, 128, 256, 384};
    int32_t N = rnd_int(1, 9), K = PICK(Ks), bits = K % 2 ? 8 : rnd_percent(50) ? 4 : 8;
    qk_dtype wdt = PICK(all_dtypes);
    float* W = xmalloc((size_t)N * K * sizeof *W);
    /* Inside float16's range when the input is float16 (no subnormal rows: float16 has none there). */
    int f16 = wdt == QK_DTYPE_F16;
    random_weight_values(W, N, K, f16 ? -10 : -20, f16 ? 8 : 20, !f16 && rnd_percent(15));
    qk_granularity granularity = (qk_granularity)rnd_int(0, 2);
    /* A group argument that only QK_PER_GROUP reads: anything, 0 included, for the others. */
    int32_t group = granularity == QK_PER_GROUP ? pick_group(K, rnd_percent(40)) : rnd_percent(50) ? 0 : K;
    quantize_checked(W, N, K, bits, wdt, granularity, group, rnd_percent(50), rnd_percent(40));
    free(W);
}

/* Quantizer edges beyond the random cases: huge and subnormal ranges, short last groups. */
static void test_edges(void) {
    for (int bits = 4; bits <= 8; bits += 4)
        for (int symmetric = 0; symmetric < 2; symmetric++) {
            float W[48];
            for (int i = 0; i < 48; i++) W[i] = rnd_signed(0, 0);
            W[0] = 3.0e38f; /* row 0: near FLT_MAX, both signs (symmetric only: the range overflows) */
            W[1] = symmetric ? -3.0e38f : 1.0f;
            for (int k = 0; k < 16; k++) W[16 + k] = (float)ldexp((double)(k % 5 - 2), -149); /* subnormals */
            for (int k = 0; k < 16; k++) W[32 + k] = -2.5f; /* constant negative row */
            quantize_checked(W, 3, 16, bits, QK_DTYPE_F32, QK_PER_CHANNEL, 0, symmetric, 0);
            quantize_checked(W, 3, 16, bits, QK_DTYPE_F32, QK_PER_TENSOR, 16, symmetric, 1);
            quantize_checked(W, 3, 16, bits, QK_DTYPE_BF16, QK_PER_GROUP, 4, symmetric, 0);
            quantize_checked(W, 3, 16, bits, QK_DTYPE_F32, QK_PER_GROUP, 5, symmetric, 1);  /* last group: 1 */
            quantize_checked(W, 3, 16, bits, QK_DTYPE_F32, QK_PER_GROUP, 15, symmetric, 0); /* last group: 1 */
            quantize_checked(W, 3, 16, bits, QK_DTYPE_BF16, QK_PER_GROUP, 40, symmetric, 1); /* G > K */
        }
}

/* Per-channel is per-group with G = K, and with any G > K (one group, shorter than G). */
static void test_per_channel_is_one_group(void) {
    set_context("per channel = one group");
    float W[64];
    for (int i = 0; i < 64; i++) W[i] = rnd_signed(-3, 3);
    int8_t q1[64], q2[64], q3[64], z1[4], z2[4], z3[4];
    float s1[4], s2[4], s3[4];
    qk_status a = qk_quantize(W, QK_DTYPE_F32, 4, 16, 8, QK_PER_CHANNEL, 0, 0, q1, s1, z1);
    qk_status b = qk_quantize(W, QK_DTYPE_F32, 4, 16, 8, QK_PER_GROUP, 16, 0, q2, s2, z2);
    qk_status c = qk_quantize(W, QK_DTYPE_F32, 4, 16, 8, QK_PER_GROUP, 23, 0, q3, s3, z3);
    CHECK(a == QK_OK && b == QK_OK && c == QK_OK && !memcmp(q1, q2, 64) && !memcmp(s1, s2, sizeof s1) &&
              !memcmp(z1, z2, 4) && !memcmp(q1, q3, 64) && !memcmp(s1, s3, sizeof s1) && !memcmp(z1, z3, 4),
          "qk_quantize: per-channel differs from per-group with group_size K or 23 > K");
}

/* Without offsets w = s (q - zp) exactly: a negative scale times 0 is -0; offsets add to it (+0). */
static void test_dequantize_signed_zero(void) {
    set_context("qk_dequantize: the sign of zero");
    int8_t q[8] = {0};
    float scales[2] = {-0.5f, 0.25f}, offsets[2] = {0.0f, 0.0f};
    qk_weights w = {.size = sizeof w, .data = q, .scales = scales, .N = 2, .K = 4, .group_size = 4, .bits = 8};
    for (int with_offsets = 0; with_offsets < 2; with_offsets++) {
        w.offsets = with_offsets ? offsets : NULL;
        for (int di = 0; di < 3; di++) {
            qk_dtype dt = all_dtypes[di];
            gbuf out = gbuf_new(8 * formats[dt].size, poison_byte());
            int ok = qk_dequantize(&w, dt, out.p) == QK_OK;
            for (int i = 0; i < 8 && ok; i++) {
                float v = load_el(out.p, dt, (size_t)i);
                ok = v == 0.0f && (signbit(v) != 0) == (i < 4 && !with_offsets);
            }
            CHECK(ok, "qk_dequantize(%s)%s: zeros of the wrong sign", formats[dt].name, with_offsets ? " with offsets" : "");
            gbuf_free(&out);
        }
    }
}

static long cases = 600;

static int option(int argc, char** argv, int* i) {
    if (strcmp(argv[*i], "--cases") != 0 || *i + 1 >= argc) return 0;
    cases = strtol(argv[++*i], NULL, 0);
    return 1;
}

int main(int argc, char** argv) {
    test_begin("test_quantize", argc, argv, "[--cases N]", option);
    reseed(6);
    test_edges();
    test_per_channel_is_one_group();
    test_dequantize_signed_zero();
    for (long i = 0; i < cases; i++) {
        reseed(1000 + (uint64_t)i);
        random_case();
    }
    return test_end();
}
