/*
 * Tests of blocks (engine/block.c): round trips at several restart
 * intervals with a seek to every key and between every two keys, the size
 * estimate, allocation failure in the builder, rejection of malformed
 * restart arrays, and robustness: every bit flip and every truncation of a
 * real block either iterates or ends with KV_ECORRUPT, never reading outside
 * the block (each fuzzed block lives in its own exact-size allocation, so
 * ASan sees any overrun). Format: docs/engine-format.md, "Sorted tables".
 */
#include "engine/engine_int.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

static void teardown(void) {
    kv_alloc_fail_after(-1);
}

TestSuite(block, .fini = teardown);

/* Key i: a shared prefix, the number, and a tail whose length varies so the
 * prefix compression sees every shape. Sorted by i. */
static kv_slice make_key(char *buf, size_t cap, int i) {
    int n = snprintf(buf, cap, "key/%08d/%.*s", i, i % 23,
                     "abcdefghijklmnopqrstuvw");
    return kv_slice_make(buf, (size_t)n);
}

/* Value i: 0 to 299 bytes derived from i. */
static kv_slice make_value(uint8_t *buf, int i) {
    size_t n = (size_t)((i * 37) % 300);
    for (size_t j = 0; j < n; j++) buf[j] = (uint8_t)(i * 7 + j);
    return kv_slice_make(buf, n);
}

static eng_block *build(int interval, int n, kv_buf *store) {
    eng_block_builder bb;
    eng__bb_init(&bb, interval);
    char k[64];
    uint8_t v[300];
    for (int i = 0; i < n; i++)
        OK(eng__bb_add(&bb, make_key(k, sizeof k, i), make_value(v, i)));
    size_t est = eng__bb_size(&bb);
    kv_slice out;
    OK(eng__bb_finish(&bb, &out));
    cr_assert_eq(out.len, est, "size estimate %zu, finished %zu", est, out.len);
    kv_buf_reset(store);
    OK(kv_buf_append(store, out.ptr, out.len));
    eng__bb_release(&bb);
    eng_block *b;
    OK(eng__block_parse(store->ptr, store->len, false, &b));
    return b;
}

static void check_entry(eng_iiter *it, int i) {
    char k[64];
    uint8_t v[300];
    cr_assert(it->ops->valid(it), "iterator ended before entry %d", i);
    kv_slice want_k = make_key(k, sizeof k, i), want_v = make_value(v, i);
    cr_assert(kv_slice_eq(it->ops->key(it), want_k), "wrong key at entry %d",
              i);
    cr_assert(kv_slice_eq(it->ops->value(it), want_v),
              "wrong value at entry %d", i);
}

static void round_trip(int interval, int n) {
    kv_buf store = KV_BUF_INIT;
    eng_block *b = build(interval, n, &store);
    cr_assert_eq(b->nrestarts, (uint32_t)((n + interval - 1) / interval));
    eng_iiter *it = eng__block_iter(b, kv_slice_cmp, NULL, NULL);
    cr_assert_not_null(it);

    int i = 0;
    for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it))
        check_entry(it, i++);
    cr_assert_eq(i, n);
    cr_assert_eq(it->ops->status(it), 0);

    char k[80];
    for (i = 0; i < n; i++) {
        /* Exactly at key i. */
        it->ops->seek(it, make_key(k, sizeof k, i));
        check_entry(it, i);
        /* Just after key i (a longer key with the same prefix): lands on
         * i + 1, or the end. */
        kv_slice after = make_key(k, sizeof k - 1, i);
        k[after.len] = '\0';
        after.len++;
        it->ops->seek(it, after);
        if (i + 1 < n)
            check_entry(it, i + 1);
        else
            cr_assert(!it->ops->valid(it) && it->ops->status(it) == 0);
    }
    it->ops->seek(it, kv_slice_str("a")); /* before everything */
    check_entry(it, 0);
    it->ops->seek(it, kv_slice_str("z")); /* after everything */
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), 0);
    /* A seek after reaching the end works again. */
    it->ops->seek_first(it);
    check_entry(it, 0);

    it->ops->free(it);
    eng__block_free(b);
    kv_buf_release(&store);
}

Test(block, round_trip_interval_1) {
    round_trip(1, 3000);
}
Test(block, round_trip_interval_16) {
    round_trip(16, 3000);
}
Test(block, round_trip_interval_7_many_keys) {
    round_trip(7, 20000);
}
Test(block, round_trip_single_entry) {
    round_trip(16, 1);
}

Test(block, empty_block_has_no_entries) {
    eng_block_builder bb;
    eng__bb_init(&bb, 16);
    cr_assert(eng__bb_empty(&bb));
    kv_slice out;
    OK(eng__bb_finish(&bb, &out));
    cr_assert_eq(out.len, 4);
    eng_block *b;
    OK(eng__block_parse(out.ptr, out.len, false, &b));
    eng_iiter *it = eng__block_iter(b, kv_slice_cmp, NULL, NULL);
    it->ops->seek_first(it);
    cr_assert(!it->ops->valid(it));
    it->ops->seek(it, kv_slice_str("x"));
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), 0);
    it->ops->free(it);
    eng__block_free(b);
    eng__bb_release(&bb);
}

Test(block, reset_starts_a_fresh_block) {
    eng_block_builder bb;
    eng__bb_init(&bb, 4);
    OK(eng__bb_add(&bb, kv_slice_str("zzz"), kv_slice_str("1")));
    kv_slice out;
    OK(eng__bb_finish(&bb, &out));
    eng__bb_reset(&bb);
    /* A smaller key than before is fine after reset. */
    OK(eng__bb_add(&bb, kv_slice_str("aaa"), kv_slice_str("2")));
    OK(eng__bb_add(&bb, kv_slice_str("aab"), kv_slice_str("3")));
    OK(eng__bb_finish(&bb, &out));
    eng_block *b;
    OK(eng__block_parse(out.ptr, out.len, false, &b));
    eng_iiter *it = eng__block_iter(b, kv_slice_cmp, NULL, NULL);
    it->ops->seek_first(it);
    cr_assert(kv_slice_eq(it->ops->key(it), kv_slice_str("aaa")));
    it->ops->next(it);
    cr_assert(kv_slice_eq(it->ops->key(it), kv_slice_str("aab")));
    cr_assert(kv_slice_eq(it->ops->value(it), kv_slice_str("3")));
    it->ops->next(it);
    cr_assert(!it->ops->valid(it));
    it->ops->free(it);
    eng__block_free(b);
    eng__bb_release(&bb);
}

Test(block, add_failure_leaves_builder_unchanged) {
    /* Fail each allocation in turn; the failed add must not have changed
     * the builder, so retrying it yields a block identical to one built
     * without failures. */
    kv_buf ref = KV_BUF_INIT;
    eng_block *rb = build(3, 200, &ref);
    eng__block_free(rb);

    eng_block_builder bb;
    eng__bb_init(&bb, 3);
    char k[64];
    uint8_t v[300];
    long failures = 0;
    for (int i = 0; i < 200; i++) {
        for (long n = 0;; n++) {
            kv_alloc_fail_after(n);
            int rc =
                eng__bb_add(&bb, make_key(k, sizeof k, i), make_value(v, i));
            kv_alloc_fail_after(-1);
            if (rc == 0) break;
            cr_assert_eq(rc, -ENOMEM);
            failures++;
        }
    }
    cr_assert_gt(failures, 0, "no allocation was ever made to fail");
    kv_slice out;
    OK(eng__bb_finish(&bb, &out));
    cr_assert(kv_slice_eq(out, kv_buf_slice(&ref)));
    eng__bb_release(&bb);
    kv_buf_release(&ref);
}

static int parse_bytes(const uint8_t *p, size_t n) {
    eng_block *b = NULL;
    int rc = eng__block_parse(p, n, false, &b);
    if (rc == 0)
        eng__block_free(b);
    else
        cr_assert_null(b);
    return rc;
}

Test(block, malformed_restart_arrays_are_rejected) {
    uint8_t b[32] = {0};
    cr_assert_eq(parse_bytes(b, 3), KV_ECORRUPT); /* no room for count */
    cr_assert_eq(parse_bytes(b, 4), 0);           /* empty block */
    /* count larger than the block can hold */
    kv_put_u32(b + 4, 5);
    cr_assert_eq(parse_bytes(b, 8), KV_ECORRUPT);
    kv_put_u32(b + 4, UINT32_MAX);
    cr_assert_eq(parse_bytes(b, 8), KV_ECORRUPT);
    /* entries but no restart */
    kv_put_u32(b + 8, 0);
    cr_assert_eq(parse_bytes(b, 12), KV_ECORRUPT);
    /* first restart not at 0 */
    kv_put_u32(b + 8, 4);
    kv_put_u32(b + 12, 1);
    cr_assert_eq(parse_bytes(b, 16), KV_ECORRUPT);
    /* restart outside the entry area */
    kv_put_u32(b + 8, 0);
    kv_put_u32(b + 12, 12);
    kv_put_u32(b + 16, 2);
    cr_assert_eq(parse_bytes(b, 20), KV_ECORRUPT);
    /* restarts not ascending */
    kv_put_u32(b + 12, 0);
    cr_assert_eq(parse_bytes(b, 20), KV_ECORRUPT);
    kv_put_u32(b + 12, 5);
    cr_assert_eq(parse_bytes(b, 20), 0);
}

/* Run an iterator over a block copy that ends exactly where its bytes end.
 * Returns the entries seen; every step must either produce an entry or end
 * with status 0 or KV_ECORRUPT. */
static long g_corrupt; /* iterations that ended with KV_ECORRUPT */

static int exercise(const uint8_t *src, size_t n, eng_cmp_fn cmp) {
    uint8_t *p = malloc(n ? n : 1);
    cr_assert_not_null(p);
    memcpy(p, src, n);
    eng_block *b;
    int seen = 0;
    if (eng__block_parse(p, n, false, &b) == 0) {
        eng_iiter *it = eng__block_iter(b, cmp, NULL, NULL);
        cr_assert_not_null(it);
        for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it)) {
            kv_slice k = it->ops->key(it), v = it->ops->value(it);
            /* Touch every byte so ASan checks the slices. */
            volatile uint8_t sink = 0;
            for (size_t j = 0; j < k.len; j++) sink ^= k.ptr[j];
            for (size_t j = 0; j < v.len; j++) sink ^= v.ptr[j];
            (void)sink;
            seen++;
        }
        int rc = it->ops->status(it);
        cr_assert(rc == 0 || rc == KV_ECORRUPT, "status %d", rc);
        if (rc == KV_ECORRUPT) g_corrupt++;
        /* Seeks reuse the iterator: each starts from a clean position. */
        const char *targets[] = {"", "key/00000050/", "key/00000090", "zz"};
        for (size_t t = 0; t < KV_ARRAY_LEN(targets); t++) {
            uint8_t tk[32];
            size_t tl = strlen(targets[t]);
            memcpy(tk, targets[t], tl);
            kv_put_u64(tk + tl, eng__trailer(5, ENG_TYPE_PUT));
            it->ops->seek(it, kv_slice_make(tk, tl + 8));
            if (it->ops->valid(it)) it->ops->next(it);
            rc = it->ops->status(it);
            cr_assert(rc == 0 || rc == KV_ECORRUPT, "status %d", rc);
        }
        it->ops->free(it);
        eng__block_free(b);
    }
    free(p);
    return seen;
}

/* A block of internal keys, as tables store them. */
static void build_ikey_block(kv_buf *store, int n, int interval) {
    eng_block_builder bb;
    eng__bb_init(&bb, interval);
    kv_buf ik = KV_BUF_INIT;
    char k[64];
    uint8_t v[300];
    for (int i = 0; i < n; i++) {
        kv_buf_reset(&ik);
        OK(eng__ikey_append(&ik, make_key(k, sizeof k, i), (uint64_t)i + 1,
                            ENG_TYPE_PUT));
        OK(eng__bb_add(&bb, kv_buf_slice(&ik), make_value(v, i % 3)));
    }
    kv_slice out;
    OK(eng__bb_finish(&bb, &out));
    kv_buf_reset(store);
    OK(kv_buf_append(store, out.ptr, out.len));
    eng__bb_release(&bb);
    kv_buf_release(&ik);
}

Test(block, every_bit_flip_is_survived) {
    kv_buf blk = KV_BUF_INIT;
    build_ikey_block(&blk, 100, 4);
    cr_assert_eq(exercise(blk.ptr, blk.len, eng__ikey_cmp), 100);
    uint8_t *p = malloc(blk.len);
    for (size_t i = 0; i < blk.len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(p, blk.ptr, blk.len);
            p[i] ^= (uint8_t)(1u << bit);
            exercise(p, blk.len, eng__ikey_cmp);
            exercise(p, blk.len, kv_slice_cmp);
        }
    }
    /* Most flips land in lengths and keys the decoder can check. */
    cr_assert_gt(g_corrupt, 1000, "only %ld flips detected", g_corrupt);
    free(p);
    kv_buf_release(&blk);
}

Test(block, every_truncation_is_survived) {
    kv_buf blk = KV_BUF_INIT;
    build_ikey_block(&blk, 100, 4);
    for (size_t n = 0; n < blk.len; n++) {
        exercise(blk.ptr, n, eng__ikey_cmp);
        /* The same prefix with the real restart array glued on: offsets
         * then point past the shortened entries. */
        kv_buf t = KV_BUF_INIT;
        uint32_t nr = kv_get_u32(blk.ptr + blk.len - 4);
        size_t tail = 4 * (size_t)nr + 4;
        OK(kv_buf_append(&t, blk.ptr, KV_MIN(n, blk.len - tail)));
        OK(kv_buf_append(&t, blk.ptr + blk.len - tail, tail));
        exercise(t.ptr, t.len, eng__ikey_cmp);
        kv_buf_release(&t);
    }
    kv_buf_release(&blk);
}

/* Hand-made entries that each break one decoding rule. */
static int first_error(const uint8_t *entries, size_t n, int want_ok) {
    uint8_t buf[64];
    memcpy(buf, entries, n);
    kv_put_u32(buf + n, 0);     /* one restart at 0 */
    kv_put_u32(buf + n + 4, 1); /* count */
    eng_block *b;
    OK(eng__block_parse(buf, n + 8, false, &b));
    eng_iiter *it = eng__block_iter(b, kv_slice_cmp, NULL, NULL);
    int ok = 0;
    for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it)) ok++;
    cr_assert_eq(ok, want_ok, "%d entries decoded, expected %d", ok, want_ok);
    int rc = it->ops->status(it);
    it->ops->free(it);
    eng__block_free(b);
    return rc;
}

Test(block, decoding_failures_report_corruption) {
    /* good: "ab"="x", then shared 1 + "c" = "ac"="y" */
    const uint8_t good[] = {0, 2, 1, 'a', 'b', 'x', 1, 1, 1, 'c', 'y'};
    cr_assert_eq(first_error(good, sizeof good, 2), 0);
    /* second entry shares 3 bytes of a 2-byte key */
    const uint8_t shared[] = {0, 2, 1, 'a', 'b', 'x', 3, 1, 1, 'c', 'y'};
    cr_assert_eq(first_error(shared, sizeof shared, 1), KV_ECORRUPT);
    /* value runs past the entry area */
    const uint8_t vlen[] = {0, 2, 1, 'a', 'b', 'x', 1, 1, 9, 'c', 'y'};
    cr_assert_eq(first_error(vlen, sizeof vlen, 1), KV_ECORRUPT);
    /* key suffix runs past the entry area */
    const uint8_t klen[] = {0, 2, 1, 'a', 'b', 'x', 1, 200, 1, 'c', 'y'};
    cr_assert_eq(first_error(klen, sizeof klen, 1), KV_ECORRUPT);
    /* varint that never ends */
    const uint8_t var[] = {0, 2, 1, 'a', 'b', 'x', 0x80, 0x80, 0x80};
    cr_assert_eq(first_error(var, sizeof var, 1), KV_ECORRUPT);
    /* the first entry of a restart shares bytes with nothing */
    const uint8_t first[] = {1, 2, 1, 'a', 'b', 'x'};
    cr_assert_eq(first_error(first, sizeof first, 0), KV_ECORRUPT);
}

Test(block, short_internal_key_is_corrupt) {
    /* With the internal-key order, a key without a whole trailer cannot be
     * compared safely: the iterator reports corruption instead. */
    eng_block_builder bb;
    eng__bb_init(&bb, 16);
    OK(eng__bb_add(&bb, kv_slice_str("abc"), kv_slice_str("v")));
    kv_slice out;
    OK(eng__bb_finish(&bb, &out));
    eng_block *b;
    OK(eng__block_parse(out.ptr, out.len, false, &b));
    eng_iiter *it = eng__block_iter(b, eng__ikey_cmp, NULL, NULL);
    it->ops->seek_first(it);
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), KV_ECORRUPT);
    /* The error is sticky. */
    it->ops->seek_first(it);
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), KV_ECORRUPT);
    it->ops->free(it);
    eng__block_free(b);
    eng__bb_release(&bb);
}

static void count_release(void *arg) {
    (*(int *)arg)++;
}

Test(block, release_runs_once_at_free_and_owned_bytes_are_freed) {
    eng_block_builder bb;
    eng__bb_init(&bb, 16);
    OK(eng__bb_add(&bb, kv_slice_str("k"), kv_slice_str("v")));
    kv_slice out;
    OK(eng__bb_finish(&bb, &out));
    uint8_t *own = kv_malloc(out.len);
    memcpy(own, out.ptr, out.len);
    eng__bb_release(&bb);
    eng_block *b;
    OK(eng__block_parse(own, out.len, true, &b)); /* ASan: freed with b */
    cr_assert_geq(eng__block_charge(b), out.len);
    int released = 0;
    eng_iiter *it = eng__block_iter(b, kv_slice_cmp, count_release, &released);
    it->ops->seek_first(it);
    cr_assert(kv_slice_eq(it->ops->value(it), kv_slice_str("v")));
    cr_assert_eq(released, 0);
    it->ops->free(it);
    cr_assert_eq(released, 1);
    eng__block_free(b);
}

Test(block, iterator_allocation_failure) {
    kv_buf store = KV_BUF_INIT;
    eng_block *b = build(16, 100, &store);
    kv_alloc_fail_after(0);
    cr_assert_null(eng__block_iter(b, kv_slice_cmp, NULL, NULL));
    kv_alloc_fail_after(-1);
    /* The key buffer is allocated on the first decode: failure there
     * invalidates the iterator with -ENOMEM. */
    eng_iiter *it = eng__block_iter(b, kv_slice_cmp, NULL, NULL);
    kv_alloc_fail_after(0);
    it->ops->seek_first(it);
    kv_alloc_fail_after(-1);
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), -ENOMEM);
    it->ops->free(it);
    eng__block_free(b);
    kv_buf_release(&store);
}
