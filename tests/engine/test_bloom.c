/*
 * Tests of bloom filters (engine/bloom.c): no false negatives, a measured
 * false-positive rate below 1% at 10 bits per key over a million keys, the
 * stored probe count and size, the "may match" answer for every malformed
 * filter, and allocation failure. Layout: docs/engine-format.md, "Sorted
 * tables".
 */
#include "engine/engine_int.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>

static void teardown(void) {
    kv_alloc_fail_after(-1);
}

TestSuite(bloom, .fini = teardown);

/* Present keys are "user:<i>", absent probes "miss:<i>": disjoint sets. */
static kv_slice key(char *buf, const char *prefix, uint32_t i) {
    int n = snprintf(buf, 32, "%s:%u", prefix, i);
    return kv_slice_make(buf, (size_t)n);
}

static void build(int bits_per_key, uint32_t n, kv_buf *out) {
    eng_bloom_builder b;
    eng__bloom_init(&b, bits_per_key);
    char k[32];
    for (uint32_t i = 0; i < n; i++) OK(eng__bloom_add(&b, key(k, "user", i)));
    kv_buf_reset(out);
    OK(eng__bloom_finish(&b, out));
    eng__bloom_release(&b);
}

Test(bloom, million_keys_no_false_negatives_and_fp_below_one_percent) {
    const uint32_t n = 1000000;
    kv_buf f = KV_BUF_INIT;
    build(10, n, &f);
    cr_assert_eq(f.len, (size_t)n * 10 / 8 + 2);
    kv_slice filter = kv_buf_slice(&f);
    char k[32];
    for (uint32_t i = 0; i < n; i++)
        cr_assert(eng__bloom_may_match(filter, key(k, "user", i)),
                  "false negative for key %u", i);
    uint32_t fp = 0;
    for (uint32_t i = 0; i < n; i++)
        fp += eng__bloom_may_match(filter, key(k, "miss", i));
    double rate = (double)fp / n;
    /* Theory for m/n = 10, k = 7: (1 - e^-0.7)^7 = 0.82%. */
    cr_log_info("bloom: %u false positives in %u probes (%.3f%%)", fp, n,
                100 * rate);
    cr_assert_lt(rate, 0.010, "false-positive rate %.3f%% >= 1%%", 100 * rate);
    cr_assert_gt(rate, 0.004, "rate %.3f%% is implausibly low", 100 * rate);
    kv_buf_release(&f);
}

Test(bloom, more_bits_per_key_means_fewer_false_positives) {
    kv_buf f10 = KV_BUF_INIT, f20 = KV_BUF_INIT;
    build(10, 20000, &f10);
    build(20, 20000, &f20);
    char k[32];
    uint32_t fp10 = 0, fp20 = 0;
    for (uint32_t i = 0; i < 200000; i++) {
        kv_slice m = key(k, "miss", i);
        fp10 += eng__bloom_may_match(kv_buf_slice(&f10), m);
        fp20 += eng__bloom_may_match(kv_buf_slice(&f20), m);
    }
    /* 20 bits, k = 14: theory 0.0067%; 10 bits: 0.82%. */
    cr_assert_lt(fp20 * 10, fp10, "fp10 %u fp20 %u", fp10, fp20);
    for (uint32_t i = 0; i < 20000; i++)
        cr_assert(eng__bloom_may_match(kv_buf_slice(&f20), key(k, "user", i)));
    kv_buf_release(&f10);
    kv_buf_release(&f20);
}

Test(bloom, trailer_records_probe_count_and_format) {
    struct {
        int bpk, k;
    } cases[] = {{1, 1}, {2, 1}, {3, 2}, {10, 7}, {16, 11}, {50, 30}, {0, 7}};
    for (size_t i = 0; i < KV_ARRAY_LEN(cases); i++) {
        kv_buf f = KV_BUF_INIT;
        build(cases[i].bpk, 1000, &f);
        cr_assert_eq(f.ptr[f.len - 2], cases[i].k, "bits %d: k %u, want %d",
                     cases[i].bpk, f.ptr[f.len - 2], cases[i].k);
        cr_assert_eq(f.ptr[f.len - 1], 1, "format byte");
        char k[32];
        for (uint32_t j = 0; j < 1000; j++)
            cr_assert(
                eng__bloom_may_match(kv_buf_slice(&f), key(k, "user", j)));
        kv_buf_release(&f);
    }
}

Test(bloom, finish_appends_and_resets_the_builder) {
    eng_bloom_builder b;
    eng__bloom_init(&b, 10);
    OK(eng__bloom_add(&b, kv_slice_str("a")));
    kv_buf out = KV_BUF_INIT;
    OK(kv_buf_append(&out, "xyz", 3));
    OK(eng__bloom_finish(&b, &out));
    cr_assert_eq(memcmp(out.ptr, "xyz", 3), 0, "existing bytes kept");
    kv_slice f1 = kv_slice_make(out.ptr + 3, out.len - 3);
    cr_assert(eng__bloom_may_match(f1, kv_slice_str("a")));
    cr_assert_eq(b.n, 0);
    /* The builder is reusable: a second filter does not contain "a". */
    kv_buf out2 = KV_BUF_INIT;
    OK(eng__bloom_add(&b, kv_slice_str("b")));
    OK(eng__bloom_finish(&b, &out2));
    cr_assert(eng__bloom_may_match(kv_buf_slice(&out2), kv_slice_str("b")));
    eng__bloom_release(&b);
    kv_buf_release(&out);
    kv_buf_release(&out2);
}

Test(bloom, repeated_key_is_stored_once) {
    eng_bloom_builder b;
    eng__bloom_init(&b, 10);
    for (int i = 0; i < 100; i++) OK(eng__bloom_add(&b, kv_slice_str("same")));
    cr_assert_eq(b.n, 1, "versions of one key must count once");
    eng__bloom_release(&b);
}

Test(bloom, empty_filter_matches_nothing) {
    kv_buf f = KV_BUF_INIT;
    build(10, 0, &f);
    cr_assert_eq(f.len, 8 + 2, "a 64-bit floor plus the trailer");
    char k[32];
    for (uint32_t i = 0; i < 1000; i++)
        cr_assert(!eng__bloom_may_match(kv_buf_slice(&f), key(k, "user", i)));
    kv_buf_release(&f);
}

Test(bloom, malformed_filters_answer_may_match) {
    kv_buf f = KV_BUF_INIT;
    build(10, 0, &f); /* matches nothing while well-formed */
    kv_slice probe = kv_slice_str("user:1");
    cr_assert(!eng__bloom_may_match(kv_buf_slice(&f), probe));
    cr_assert(eng__bloom_may_match(kv_slice_make(NULL, 0), probe));
    cr_assert(eng__bloom_may_match(kv_slice_make(f.ptr + 8, 2), probe),
              "trailer without bits");
    cr_assert(eng__bloom_may_match(kv_slice_make(f.ptr, 1), probe));
    f.ptr[f.len - 1] = 2; /* unknown format */
    cr_assert(eng__bloom_may_match(kv_buf_slice(&f), probe));
    f.ptr[f.len - 1] = 1;
    f.ptr[f.len - 2] = 0; /* no probes */
    cr_assert(eng__bloom_may_match(kv_buf_slice(&f), probe));
    f.ptr[f.len - 2] = 31; /* more probes than any writer uses */
    cr_assert(eng__bloom_may_match(kv_buf_slice(&f), probe));
    f.ptr[f.len - 2] = 7;
    cr_assert(!eng__bloom_may_match(kv_buf_slice(&f), probe));
    kv_buf_release(&f);
}

Test(bloom, allocation_failure_is_reported) {
    eng_bloom_builder b;
    eng__bloom_init(&b, 10);
    kv_alloc_fail_after(0);
    cr_assert_eq(eng__bloom_add(&b, kv_slice_str("a")), -ENOMEM);
    kv_alloc_fail_after(-1);
    cr_assert_eq(b.n, 0);
    OK(eng__bloom_add(&b, kv_slice_str("a")));
    kv_buf out = KV_BUF_INIT;
    kv_alloc_fail_after(0);
    cr_assert_eq(eng__bloom_finish(&b, &out), -ENOMEM);
    kv_alloc_fail_after(-1);
    OK(eng__bloom_finish(&b, &out));
    cr_assert(eng__bloom_may_match(kv_buf_slice(&out), kv_slice_str("a")));
    eng__bloom_release(&b);
    kv_buf_release(&out);
}
