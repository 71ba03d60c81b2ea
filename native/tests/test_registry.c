/* test_registry: what the library says it has. Versions, status strings, CPU features by index,
 * the backends (ids 1..qk_backend_count(), found by name, consistent availability), the kernels in
 * dispatch order (decreasing backend priority), and QKERNELS_BACKEND, the variable that forces a
 * backend on automatic dispatch.
 *
 * Environment: QK_TEST_BACKENDS, when set, lists (comma-separated) exactly the built-in backends
 * that must be available, e.g. "x86_avx2,ref": a run checks it takes the paths its CPU allows, not
 * merely that whatever it found passed. Backends from backend libraries are not counted.
 *
 * Usage: test_registry [--seed S] [-v]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "problems.h"
#include "support.h"

/* Runs first, before anything sets the registry up: the call that does (here qk_kernel_count,
 * which returns no status) must leave the thread's last status as it was. */
static void test_registry_setup_keeps_the_status(void) {
    set_context("registry set-up");
    CHECK(qk_matmul(NULL, NULL) == QK_ERR_NULL_POINTER, "qk_matmul(NULL, NULL) did not fail");
    char message[512];
    snprintf(message, sizeof message, "%s", qk_last_error());
    CHECK(qk_kernel_count() > 0, "no kernels");
    CHECK(qk_last_status() == QK_ERR_NULL_POINTER && strcmp(qk_last_error(), message) == 0,
          "after qk_kernel_count: status %d '%s'; expected %d '%s'", (int)qk_last_status(), qk_last_error(),
          (int)QK_ERR_NULL_POINTER, message);
}

static void test_versions_and_statuses(void) {
    set_context("versions and statuses");
    CHECK(qk_abi_version() == QK_ABI_VERSION, "qk_abi_version %d, header %d", qk_abi_version(), (int)QK_ABI_VERSION);
    const char* v = qk_version();
    int major = -1, minor = -1, patch = -1, used = 0;
    CHECK(v && sscanf(v, "%d.%d.%d%n", &major, &minor, &patch, &used) == 3 && v[used] == '\0' && major >= 0,
          "qk_version '%s' is not MAJOR.MINOR.PATCH", v ? v : "(null)");
    for (int s = 0; s < QK_ERR_STATUS_COUNT; s++) {
        const char* str = qk_status_string((qk_status)s);
        CHECK(str && str[0], "qk_status_string(%d) is empty", s);
        for (int t = 0; t < s; t++)
            CHECK(!str || strcmp(str, qk_status_string((qk_status)t)) != 0, "qk_status_string(%d) equals (%d)", s, t);
    }
    CHECK(qk_status_string(QK_ERR_STATUS_COUNT) != NULL && qk_status_string((qk_status)-1) != NULL &&
              qk_status_string((qk_status)1000) != NULL,
          "qk_status_string out of range returns NULL");
}

static void test_cpu_features(void) {
    set_context("CPU features");
    uint64_t features = qk_cpu_features();
    CHECK((features >> QK_CPU_FEATURE_COUNT) == 0, "qk_cpu_features has unknown bits: %#" PRIx64, features);
    printf("cpu features:");
    for (int i = 0; i < QK_CPU_FEATURE_COUNT; i++) {
        const char* name = qk_cpu_feature_name((qk_cpu_feature)i);
        if (!CHECK(name && name[0], "qk_cpu_feature_name(%d) is empty", i)) continue;
        for (int j = 0; j < i; j++)
            CHECK(strcmp(name, qk_cpu_feature_name((qk_cpu_feature)j)) != 0, "features %d and %d are both %s", j, i, name);
        CHECK(qk_cpu_has((qk_cpu_feature)i) == (int32_t)(features >> i & 1), "qk_cpu_has(%s) disagrees with qk_cpu_features",
              name);
        if (features >> i & 1) printf(" %s", name);
    }
    printf("\n");
    CHECK(qk_cpu_feature_name(QK_CPU_FEATURE_COUNT) == NULL && qk_cpu_feature_name((qk_cpu_feature)-1) == NULL &&
              qk_cpu_feature_name((qk_cpu_feature)64) == NULL,
          "qk_cpu_feature_name names a non-feature");
    CHECK(!qk_cpu_has(QK_CPU_FEATURE_COUNT) && !qk_cpu_has((qk_cpu_feature)-1) && !qk_cpu_has((qk_cpu_feature)64),
          "qk_cpu_has is true for a non-feature");
}

/* Whether name is one of the comma-separated names of list. */
static int listed(const char* name, const char* list) {
    size_t length = strlen(name);
    for (const char* at = list; *at;) {
        size_t item = strcspn(at, ",");
        if (item == length && strncmp(at, name, length) == 0) return 1;
        at += item + (at[item] == ',');
    }
    return 0;
}

static void test_backends(void) {
    set_context("backends");
    const char* expected = getenv("QK_TEST_BACKENDS");
    int32_t count = qk_backend_count();
    CHECK(count >= 1, "qk_backend_count() = %d", count);
    for (qk_backend b = 1; b <= count; b++) {
        qk_backend_info info = {.size = sizeof info};
        qk_status s = qk_backend_get(b, &info);
        if (!CHECK(s == QK_OK, "qk_backend_get(%d): status %d", (int)b, (int)s)) continue;
        CHECK(info.size == sizeof info, "qk_backend_get changed size to %u", info.size);
        if (!CHECK(info.name && info.name[0] && info.reason && info.library, "backend %d: empty name, NULL reason or library",
                   (int)b))
            continue;
        for (qk_backend c = 1; c < b; c++)
            CHECK(strcmp(backend_name(c), info.name) != 0, "backends %d and %d are both %s", (int)c, (int)b, info.name);
        qk_backend found = QK_BACKEND_AUTO;
        CHECK(qk_backend_find(info.name, &found) == QK_OK && found == b, "qk_backend_find(%s) = %d, its id is %d",
              info.name, (int)found, (int)b);
        CHECK(info.available == (info.compiled && info.detected), "backend %s: available %d, compiled %d, detected %d",
              info.name, info.available, info.compiled, info.detected);
        CHECK(info.available == (info.reason[0] == '\0'), "backend %s: available %d but reason '%s'", info.name,
              info.available, info.reason);
        printf("backend %2d %-20s priority %3d %s%s%s%s\n", (int)b, info.name, info.priority,
               info.available ? "available" : "unavailable: ", info.available ? "" : info.reason,
               info.library[0] ? ", from " : "", info.library);
        CHECK(info.library[0] || !info.device, "built-in backend %s says it runs on a device", info.name);
        if (expected && !info.library[0])
            CHECK(info.available == listed(info.name, expected), "QK_TEST_BACKENDS=%s, but backend %s is %savailable",
                  expected, info.name, info.available ? "" : "not ");
    }
    /* Every name listed must be a backend: a misspelt one would make the check vacuous. */
    for (const char* at = expected ? expected : ""; *at;) {
        size_t item = strcspn(at, ",");
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)item, at);
        CHECK(backend_id(name) != QK_BACKEND_AUTO, "QK_TEST_BACKENDS names %s, which is not registered", name);
        at += item + (at[item] == ',');
    }
    qk_backend_info ref = {.size = sizeof ref};
    CHECK(qk_backend_get(backend_id("ref"), &ref) == QK_OK && ref.available && !ref.own_layout,
          "the ref backend is missing, unavailable or packs");
}

static void test_kernels(void) {
    set_context("kernels");
    load_kernels();
    int ref_modes = 0, last_priority = 0;
    for (int i = 0; i < n_kernels; i++) {
        const qk_kernel_info* k = &kernels[i];
        for (int j = 0; j < i; j++) CHECK(strcmp(kernels[j].name, k->name) != 0, "kernel name %s twice", k->name);
        qk_backend_info b = {.size = sizeof b};
        if (!CHECK(qk_backend_get(k->backend, &b) == QK_OK, "%s: backend %d", k->name, (int)k->backend)) continue;
        CHECK(strncmp(k->name, b.name, strlen(b.name)) == 0 && k->name[strlen(b.name)] == '_',
              "kernel %s does not begin with its backend's name %s", k->name, b.name);
        CHECK(k->mode == QK_MODE_A16 || k->mode == QK_MODE_A8, "%s: mode %d", k->name, (int)k->mode);
        CHECK(k->bits_mask && !(k->bits_mask & ~((1u << 4) | (1u << 8))), "%s: bits_mask %#x", k->name, k->bits_mask);
        CHECK(k->dtype_mask && !(k->dtype_mask & ~7u), "%s: dtype_mask %#x", k->name, k->dtype_mask);
        CHECK(k->group_multiple >= 1 && k->max_group_size >= 0 && k->max_m >= 0,
              "%s: group_multiple %d, max_group_size %d, max_m %d", k->name, k->group_multiple, k->max_group_size,
              k->max_m);
        CHECK(!(k->format_flags & ~(uint32_t)(QK_FORMAT_OFFSETS | QK_FORMAT_RAGGED_GROUPS)), "%s: format_flags %#x",
              k->name, k->format_flags);
        CHECK(k->canonical == 0 || k->canonical == 1, "%s: canonical %d", k->name, k->canonical);
        CHECK(b.own_layout || k->canonical, "%s: its backend has no layout of its own, yet it is not canonical", k->name);
        CHECK(k->available == b.available, "%s: available %d, its backend %d", k->name, k->available, b.available);
        /* Dispatch order: backends by decreasing priority, each one's kernels together. */
        if (i > 0 && k->backend != kernels[i - 1].backend) {
            CHECK(b.priority <= last_priority, "%s: backend priority %d after %d", k->name, b.priority, last_priority);
            for (int j = 0; j < i - 1; j++)
                CHECK(kernels[j].backend != k->backend, "backend %s's kernels are not together", b.name);
        }
        last_priority = b.priority;
        if (!k->available) printf("unavailable kernel %s: %s\n", k->name, b.reason);
        if (strcmp(b.name, "ref") == 0 && k->bits_mask == ((1u << 4) | (1u << 8)) && k->dtype_mask == 7u &&
            k->group_multiple == 1 && k->max_group_size == 0 &&
            k->format_flags == (QK_FORMAT_OFFSETS | QK_FORMAT_RAGGED_GROUPS))
            ref_modes |= 1 << k->mode;
    }
    CHECK(ref_modes == 3, "no reference kernel running everything for A16 and for A8 (modes %#x)", ref_modes);
    CHECK(qk_packed_backend(NULL) == QK_BACKEND_AUTO && qk_packed_size(NULL) == 0, "packed accessors on NULL");
    qk_packed_weights_free(NULL);
    qk_plan_free(NULL);
    int32_t threads = qk_get_num_threads();
    CHECK(threads >= 1 && threads <= QK_MAX_THREADS, "qk_get_num_threads() = %d", threads);
}

/* The fixture of the QKERNELS_BACKEND checks: a problem, its output buffer, and the ref result. */
typedef struct {
    problem p;
    gbuf y, yref;
    qk_backend ref;
} variable_fixture;

enum { FILL = 0x3C };

/* QKERNELS_BACKEND=value must make automatic dispatch (qk_matmul, quantizedMatMul, qk_pack_weights,
 * qk_select_kernel) fail with `want`, writing nothing; an explicit backend does not read it. */
static void check_refused(variable_fixture* f, const char* value, qk_status want) {
    setenv("QKERNELS_BACKEND", value, 1);
    const problem* p = &f->p;
    qk_weights w = weights_of(p);
    qk_matmul_args a = args_of(p, f->y.p);
    char what[128];
    gbuf_fill(&f->y, FILL);
    reset_status();
    snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: qk_matmul", value);
    EXPECT_STATUS(qk_matmul(&w, &a), want, what);
    CHECK(gbuf_untouched(&f->y, FILL), "%s: wrote its output", what);

    reset_status();
    snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: quantizedMatMul", value);
    quantizedMatMul(p->x, p->q, p->scales, p->zp, f->y.p, p->M, p->N, p->K, p->G, p->bits);
    EXPECT_STATUS(qk_last_status(), want, what);
    CHECK(gbuf_untouched(&f->y, FILL), "%s: wrote its output", what);

    reset_status();
    int sentinel;
    qk_packed_weights* packed = (qk_packed_weights*)&sentinel;
    snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: qk_pack_weights(auto)", value);
    EXPECT_STATUS(qk_pack_weights(&w, QK_BACKEND_AUTO, &packed), want, what);
    CHECK(packed == (qk_packed_weights*)&sentinel, "%s: *out changed", what);

    reset_status();
    qk_kernel_info info = {.size = sizeof info};
    snprintf(what, sizeof what, "QKERNELS_BACKEND=%s: qk_select_kernel", value);
    EXPECT_STATUS(qk_select_kernel(&w, &a, &info), want, what);

    a.backend = f->ref;
    qk_status s = qk_matmul(&w, &a);
    CHECK(s == QK_OK && same_bytes(&f->y, &f->yref), "QKERNELS_BACKEND=%s with backend ref: status %d", value, (int)s);
}

/* QKERNELS_BACKEND forces automatic dispatch onto one backend: a name, "auto" or "" (none). */
static void test_backend_variable(void) {
    set_context("QKERNELS_BACKEND");
    save_backend_variable();
    variable_fixture f = {.p = {.M = 3, .N = 5, .K = 32, .G = 16, .bits = 4, .dtype = QK_DTYPE_F16, .mode = QK_MODE_A16},
                          .ref = backend_id("ref")};
    problem* p = &f.p;
    fill_activations(p, X_UNIFORM);
    fill_raw_weights(p, 0);
    f.y = gbuf_new(y_bytes(p), FILL);
    f.yref = gbuf_new(y_bytes(p), FILL);
    qk_weights w = weights_of(p);
    qk_matmul_args a = args_of(p, f.yref.p);
    a.backend = f.ref;
    CHECK(qk_matmul(&w, &a) == QK_OK, "backend ref: %s", qk_last_error());
    a.backend = QK_BACKEND_AUTO;

    static const char* const fine[] = {"ref", "auto", ""};
    for (int i = 0; i < 3; i++) {
        setenv("QKERNELS_BACKEND", fine[i], 1);
        gbuf_fill(&f.y, FILL);
        a.output = f.y.p;
        qk_status s = qk_matmul(&w, &a);
        CHECK(s == QK_OK, "QKERNELS_BACKEND='%s': qk_matmul status %d: %s", fine[i], (int)s, qk_last_error());
        qk_kernel_info info = {.size = sizeof info};
        qk_status si = qk_select_kernel(&w, &a, &info);
        CHECK(si == QK_OK, "QKERNELS_BACKEND='%s': qk_select_kernel status %d", fine[i], (int)si);
        qk_packed_weights* packed = NULL;
        qk_status sp = qk_pack_weights(&w, QK_BACKEND_AUTO, &packed);
        CHECK(sp == QK_OK, "QKERNELS_BACKEND='%s': qk_pack_weights status %d", fine[i], (int)sp);
        if (i == 0) {
            CHECK(same_bytes(&f.y, &f.yref), "QKERNELS_BACKEND=ref differs from backend ref");
            CHECK(si != QK_OK || info.backend == f.ref, "QKERNELS_BACKEND=ref: qk_select_kernel chose %s", info.name);
            CHECK(!packed || qk_packed_backend(packed) == f.ref, "QKERNELS_BACKEND=ref: packed for %s",
                  backend_name(qk_packed_backend(packed)));
        }
        qk_packed_weights_free(packed);
    }

    check_refused(&f, "nonsense", QK_ERR_INVALID_ARGUMENT);
    for (qk_backend b = 1; b <= qk_backend_count(); b++) {
        qk_backend_info info = {.size = sizeof info};
        if (qk_backend_get(b, &info) == QK_OK && !info.available) check_refused(&f, info.name, QK_ERR_BACKEND_UNAVAILABLE);
    }
    restore_backend_variable();
    gbuf_free(&f.y);
    gbuf_free(&f.yref);
    problem_free(p);
}

int main(int argc, char** argv) {
    test_begin("test_registry", argc, argv, NULL, NULL);
    reseed(1);
    test_registry_setup_keeps_the_status();
    test_versions_and_statuses();
    test_cpu_features();
    test_backends();
    test_kernels();
    test_backend_variable();
    return test_end();
}
