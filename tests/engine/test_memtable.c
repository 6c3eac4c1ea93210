/*
 * Memtable tests: order against a sorted reference, snapshot visibility,
 * deletes, empty and large entries, seek, lock-free readers racing one
 * writer, reference counting, and allocation failure at every point.
 */
#include "engine/engine_int.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rnd(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void fill_random(uint8_t *p, size_t n, uint64_t *s) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(rnd(s) >> 24);
}

/* Internal key into b (reset first). */
static kv_slice ikey(kv_buf *b, kv_slice ukey, uint64_t seq, int type) {
    kv_buf_reset(b);
    cr_assert_eq(eng__ikey_append(b, ukey, seq, type), 0);
    return kv_buf_slice(b);
}

static eng_memtable *mem_new(void) {
    eng_memtable *m = (eng_memtable *)1;
    cr_assert_eq(eng__mem_new(&m), 0);
    cr_assert_not_null(m);
    return m;
}

static void add(eng_memtable *m, uint64_t seq, int type, const char *k,
                const char *v) {
    cr_assert_eq(eng__mem_add(m, seq, type, kv_slice_str(k), kv_slice_str(v)),
                 0, "add %s@%llu", k, (unsigned long long)seq);
}

/* Asserts get(k, snap) finds a PUT with value want, or a DEL when want is
 * NULL and del is true, or nothing when both are unset. */
static void expect_get(eng_memtable *m, const char *k, uint64_t snap,
                       const char *want, bool del) {
    kv_buf v = KV_BUF_INIT;
    int type = -1;
    int rc = eng__mem_get(m, kv_slice_str(k), snap, &type, &v);
    if (want) {
        cr_assert_eq(rc, 0, "get %s@%llu: %d", k, (unsigned long long)snap, rc);
        cr_assert_eq(type, ENG_TYPE_PUT);
        cr_assert(kv_slice_eq(kv_buf_slice(&v), kv_slice_str(want)),
                  "get %s@%llu: wrong value", k, (unsigned long long)snap);
    } else if (del) {
        cr_assert_eq(rc, 0);
        cr_assert_eq(type, ENG_TYPE_DEL, "get %s@%llu", k,
                     (unsigned long long)snap);
    } else {
        cr_assert_eq(rc, KV_ENOTFOUND, "get %s@%llu: %d", k,
                     (unsigned long long)snap, rc);
    }
    kv_buf_release(&v);
}

/* Asserts the iterator is at (ukey, seq, type) with value v. */
static void expect_at(eng_iiter *it, const char *k, uint64_t seq, int type,
                      const char *v) {
    cr_assert(it->ops->valid(it), "expected %s@%llu, got end", k,
              (unsigned long long)seq);
    kv_slice key = it->ops->key(it);
    cr_assert_eq(key.len, strlen(k) + 8);
    cr_assert(kv_slice_eq(eng__ikey_user(key), kv_slice_str(k)),
              "expected user key %s", k);
    cr_assert_eq(eng__ikey_seq(key), seq);
    cr_assert_eq(eng__ikey_type(key), type);
    cr_assert(kv_slice_eq(it->ops->value(it), kv_slice_str(v)));
}

/* An entry of the sorted reference. */
typedef struct ref {
    kv_buf ik;
    kv_buf val;
} ref;

static int ref_cmp(const void *a, const void *b) {
    return eng__ikey_cmp(kv_buf_slice(&((const ref *)a)->ik),
                         kv_buf_slice(&((const ref *)b)->ik));
}

/* Asserts that iterating m yields exactly refs[0..n) (sorted). */
static void expect_all(eng_memtable *m, const ref *refs, size_t n) {
    eng_iiter *it = eng__mem_iter(m);
    cr_assert_not_null(it);
    it->ops->seek_first(it);
    for (size_t i = 0; i < n; i++) {
        cr_assert(it->ops->valid(it), "iteration ended at %zu of %zu", i, n);
        cr_assert(kv_slice_eq(it->ops->key(it), kv_buf_slice(&refs[i].ik)),
                  "key %zu differs", i);
        cr_assert(kv_slice_eq(it->ops->value(it), kv_buf_slice(&refs[i].val)),
                  "value %zu differs", i);
        it->ops->next(it);
    }
    cr_assert(!it->ops->valid(it), "more than %zu entries", n);
    cr_assert_eq(it->ops->status(it), 0);
    it->ops->free(it);
    cr_assert_eq(eng__mem_count(m), n);
}

/* ---- basic behaviour ---------------------------------------------------- */

Test(memtable, empty) {
    eng_memtable *m = mem_new();
    cr_assert_eq(eng__mem_count(m), 0);
    cr_assert_eq(eng__mem_bytes(m), 0);
    expect_get(m, "", ENG_MAX_SEQ, NULL, false);
    expect_get(m, "a", ENG_MAX_SEQ, NULL, false);
    eng_iiter *it = eng__mem_iter(m);
    cr_assert_not_null(it);
    it->ops->seek_first(it);
    cr_assert(!it->ops->valid(it));
    kv_buf b = KV_BUF_INIT;
    it->ops->seek(it, ikey(&b, kv_slice_str("a"), 1, ENG_TYPE_PUT));
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), 0);
    it->ops->free(it);
    kv_buf_release(&b);
    eng__mem_unref(m);
}

Test(memtable, random_keys_iterate_in_sorted_order) {
    enum { N = 20000 };
    uint64_t s = 42;
    /* Few distinct bytes and short keys: many shared prefixes, many
     * versions of the same user key, and the empty key. */
    static const uint8_t alpha[] = {0x00, 'a', 'b', 0xff};
    uint64_t *seqs = malloc(N * sizeof(*seqs));
    ref *refs = calloc(N, sizeof(*refs));
    cr_assert(seqs && refs);
    for (size_t i = 0; i < N; i++) seqs[i] = i + 1;
    for (size_t i = N - 1; i > 0; i--) {
        size_t j = rnd(&s) % (i + 1);
        uint64_t t = seqs[i];
        seqs[i] = seqs[j];
        seqs[j] = t;
    }

    eng_memtable *m = mem_new();
    size_t raw = 0;
    for (size_t i = 0; i < N; i++) {
        uint8_t k[6], v[64];
        size_t kl = rnd(&s) % 7, vl = rnd(&s) % 65;
        for (size_t j = 0; j < kl; j++) k[j] = alpha[rnd(&s) % 4];
        fill_random(v, vl, &s);
        int type = (rnd(&s) % 5 == 0) ? ENG_TYPE_DEL : ENG_TYPE_PUT;
        if (type == ENG_TYPE_DEL) vl = 0;
        cr_assert_eq(eng__mem_add(m, seqs[i], type, kv_slice_make(k, kl),
                                  kv_slice_make(v, vl)),
                     0);
        ikey(&refs[i].ik, kv_slice_make(k, kl), seqs[i], type);
        cr_assert_eq(kv_buf_set(&refs[i].val, v, vl), 0);
        raw += kl + 8 + vl;
    }
    cr_assert_geq(eng__mem_bytes(m), raw);
    qsort(refs, N, sizeof(*refs), ref_cmp);
    expect_all(m, refs, N);

    /* Point lookups at random snapshots agree with the reference: the
     * first entry of the user key whose seq is <= snap. */
    kv_buf v = KV_BUF_INIT;
    for (int q = 0; q < 2000; q++) {
        const ref *r = &refs[rnd(&s) % N];
        kv_slice uk = eng__ikey_user(kv_buf_slice(&r->ik));
        uint64_t snap = rnd(&s) % (N + 2);
        const ref *want = NULL;
        /* refs is sorted: walk back to the first version of uk. */
        const ref *p = r;
        while (p > refs &&
               kv_slice_eq(eng__ikey_user(kv_buf_slice(&p[-1].ik)), uk))
            p--;
        for (; p < refs + N &&
               kv_slice_eq(eng__ikey_user(kv_buf_slice(&p->ik)), uk);
             p++) {
            if (eng__ikey_seq(kv_buf_slice(&p->ik)) <= snap) {
                want = p;
                break;
            }
        }
        int type = -1;
        kv_buf_set(&v, "junk", 4);
        int rc = eng__mem_get(m, uk, snap, &type, &v);
        if (!want) {
            cr_assert_eq(rc, KV_ENOTFOUND);
            continue;
        }
        cr_assert_eq(rc, 0);
        cr_assert_eq(type, eng__ikey_type(kv_buf_slice(&want->ik)));
        if (type == ENG_TYPE_PUT)
            cr_assert(kv_slice_eq(kv_buf_slice(&v), kv_buf_slice(&want->val)));
    }
    kv_buf_release(&v);

    for (size_t i = 0; i < N; i++) {
        kv_buf_release(&refs[i].ik);
        kv_buf_release(&refs[i].val);
    }
    free(refs);
    free(seqs);
    eng__mem_unref(m);
}

Test(memtable, versions_visible_by_snapshot) {
    eng_memtable *m = mem_new();
    add(m, 10, ENG_TYPE_PUT, "k", "v10");
    add(m, 40, ENG_TYPE_PUT, "k", "v40");
    add(m, 30, ENG_TYPE_DEL, "k", "");
    add(m, 20, ENG_TYPE_PUT, "k", "v20");
    /* Neighbours that share a prefix must not leak into "k". */
    add(m, 25, ENG_TYPE_PUT, "ka", "ka25");
    add(m, 35, ENG_TYPE_PUT, "j", "j35");
    cr_assert_eq(eng__mem_count(m), 6);

    expect_get(m, "k", 0, NULL, false);
    expect_get(m, "k", 9, NULL, false);
    expect_get(m, "k", 10, "v10", false);
    expect_get(m, "k", 19, "v10", false);
    expect_get(m, "k", 20, "v20", false);
    expect_get(m, "k", 29, "v20", false);
    expect_get(m, "k", 30, NULL, true);
    expect_get(m, "k", 39, NULL, true);
    expect_get(m, "k", 40, "v40", false);
    expect_get(m, "k", ENG_MAX_SEQ, "v40", false);
    expect_get(m, "k", UINT64_MAX, "v40", false); /* clamped, not wrapped */
    expect_get(m, "ka", 24, NULL, false);
    expect_get(m, "ka", 25, "ka25", false);
    expect_get(m, "j", 34, NULL, false);
    expect_get(m, "j", 100, "j35", false);
    expect_get(m, "", 100, NULL, false);
    expect_get(m, "kb", 100, NULL, false);
    expect_get(m, "i", 100, NULL, false);
    eng__mem_unref(m);
}

Test(memtable, deletes_iterate_and_get_as_tombstones) {
    eng_memtable *m = mem_new();
    add(m, 1, ENG_TYPE_PUT, "a", "one");
    add(m, 2, ENG_TYPE_DEL, "a", "");
    add(m, 3, ENG_TYPE_DEL, "b", ""); /* tombstone with no older value */

    kv_buf v = KV_BUF_INIT;
    kv_buf_set(&v, "stale", 5);
    int type = -1;
    cr_assert_eq(eng__mem_get(m, kv_slice_str("a"), 5, &type, &v), 0);
    cr_assert_eq(type, ENG_TYPE_DEL);
    cr_assert_eq(v.len, 0, "a tombstone leaves no stale value behind");
    type = -1;
    cr_assert_eq(eng__mem_get(m, kv_slice_str("b"), 3, &type, &v), 0);
    cr_assert_eq(type, ENG_TYPE_DEL);
    cr_assert_eq(eng__mem_get(m, kv_slice_str("b"), 2, &type, &v),
                 KV_ENOTFOUND);
    expect_get(m, "a", 1, "one", false);
    kv_buf_release(&v);

    eng_iiter *it = eng__mem_iter(m);
    cr_assert_not_null(it);
    it->ops->seek_first(it);
    expect_at(it, "a", 2, ENG_TYPE_DEL, "");
    it->ops->next(it);
    expect_at(it, "a", 1, ENG_TYPE_PUT, "one");
    it->ops->next(it);
    expect_at(it, "b", 3, ENG_TYPE_DEL, "");
    it->ops->next(it);
    cr_assert(!it->ops->valid(it));
    it->ops->free(it);
    eng__mem_unref(m);
}

Test(memtable, empty_keys_and_values) {
    eng_memtable *m = mem_new();
    cr_assert_eq(eng__mem_add(m, 1, ENG_TYPE_PUT, kv_slice_make(NULL, 0),
                              kv_slice_make(NULL, 0)),
                 0);
    add(m, 2, ENG_TYPE_PUT, "a", "");
    add(m, 3, ENG_TYPE_DEL, "", "");
    cr_assert_eq(eng__mem_add(m, 4, ENG_TYPE_PUT, kv_slice_make("\0", 1),
                              kv_slice_str("nul")),
                 0);

    kv_buf v = KV_BUF_INIT;
    kv_buf_set(&v, "junk", 4);
    int type = -1;
    cr_assert_eq(eng__mem_get(m, kv_slice_make(NULL, 0), 2, &type, &v), 0);
    cr_assert_eq(type, ENG_TYPE_PUT);
    cr_assert_eq(v.len, 0, "empty value, not the old buffer contents");
    expect_get(m, "", 3, NULL, true);
    expect_get(m, "", 0, NULL, false);
    kv_buf_set(&v, "junk", 4);
    cr_assert_eq(eng__mem_get(m, kv_slice_str("a"), 9, &type, &v), 0);
    cr_assert_eq(type, ENG_TYPE_PUT);
    cr_assert_eq(v.len, 0);
    cr_assert_eq(eng__mem_get(m, kv_slice_make("\x00", 1), 9, &type, &v), 0);
    cr_assert(kv_slice_eq(kv_buf_slice(&v), kv_slice_str("nul")));
    kv_buf_release(&v);

    /* The empty key sorts first, newest version first; "\0" after it. */
    eng_iiter *it = eng__mem_iter(m);
    it->ops->seek_first(it);
    expect_at(it, "", 3, ENG_TYPE_DEL, "");
    it->ops->next(it);
    expect_at(it, "", 1, ENG_TYPE_PUT, "");
    it->ops->next(it);
    cr_assert(it->ops->valid(it));
    kv_slice k = it->ops->key(it);
    cr_assert_eq(k.len, 9);
    cr_assert_eq(k.ptr[0], 0);
    cr_assert_eq(eng__ikey_seq(k), 4);
    it->ops->next(it);
    expect_at(it, "a", 2, ENG_TYPE_PUT, "");
    it->ops->next(it);
    cr_assert(!it->ops->valid(it));
    it->ops->free(it);
    eng__mem_unref(m);
}

Test(memtable, large_values) {
    enum { BIG = 1 << 20, NBIG = 3 };
    uint64_t s = 7;
    uint8_t *big[NBIG];
    eng_memtable *m = mem_new();
    add(m, 1, ENG_TYPE_PUT, "small0", "x");
    for (int i = 0; i < NBIG; i++) {
        big[i] = malloc(BIG);
        cr_assert_not_null(big[i]);
        fill_random(big[i], BIG, &s);
        char k[16];
        snprintf(k, sizeof(k), "big%d", i);
        size_t before = eng__mem_bytes(m);
        cr_assert_eq(eng__mem_add(m, 10 + i, ENG_TYPE_PUT, kv_slice_str(k),
                                  kv_slice_make(big[i], BIG)),
                     0);
        size_t grew = eng__mem_bytes(m) - before;
        cr_assert_geq(grew, BIG, "bytes must account for the value");
        cr_assert_lt(grew, BIG + 4096, "a big entry gets a block its size");
        /* A small entry counts only its own bytes (memtable fullness is
         * measured by content, so a memtable smaller than one arena block
         * still fills up gradually). */
        before = eng__mem_bytes(m);
        snprintf(k, sizeof(k), "small%d", i + 1);
        add(m, 20 + i, ENG_TYPE_PUT, k, "y");
        cr_assert_gt(eng__mem_bytes(m), before);
        cr_assert_lt(eng__mem_bytes(m) - before, 128);
    }
    kv_buf v = KV_BUF_INIT;
    for (int i = 0; i < NBIG; i++) {
        char k[16];
        snprintf(k, sizeof(k), "big%d", i);
        int type = -1;
        cr_assert_eq(eng__mem_get(m, kv_slice_str(k), ENG_MAX_SEQ, &type, &v),
                     0);
        cr_assert_eq(type, ENG_TYPE_PUT);
        cr_assert_eq(v.len, BIG);
        cr_assert(memcmp(v.ptr, big[i], BIG) == 0, "big%d corrupted", i);
    }
    expect_get(m, "small0", 1, "x", false);
    expect_get(m, "small3", 99, "y", false);

    eng_iiter *it = eng__mem_iter(m);
    it->ops->seek_first(it);
    for (int i = 0; i < NBIG; i++) {
        cr_assert(it->ops->valid(it));
        cr_assert_eq(it->ops->value(it).len, BIG);
        cr_assert(memcmp(it->ops->value(it).ptr, big[i], BIG) == 0);
        it->ops->next(it);
    }
    it->ops->free(it);
    kv_buf_release(&v);
    for (int i = 0; i < NBIG; i++) free(big[i]);
    eng__mem_unref(m);
}

Test(memtable, seek_semantics) {
    eng_memtable *m = mem_new();
    add(m, 1, ENG_TYPE_PUT, "a", "a1");
    add(m, 5, ENG_TYPE_PUT, "b", "b5");
    add(m, 4, ENG_TYPE_DEL, "b", "");
    add(m, 2, ENG_TYPE_PUT, "b", "b2");
    add(m, 3, ENG_TYPE_PUT, "d", "d3");
    /* Order: a@1, b@5, b@4(del), b@2, d@3. */
    eng_iiter *it = eng__mem_iter(m);
    kv_buf t = KV_BUF_INIT;
    cr_assert(!it->ops->valid(it), "a new iterator is not positioned");

    it->ops->seek(it, ikey(&t, kv_slice_str("b"), ENG_MAX_SEQ, ENG_TYPE_SEEK));
    expect_at(it, "b", 5, ENG_TYPE_PUT, "b5");
    it->ops->seek(it, ikey(&t, kv_slice_str("b"), 4, ENG_TYPE_SEEK));
    expect_at(it, "b", 4, ENG_TYPE_DEL, "");
    it->ops->seek(it, ikey(&t, kv_slice_str("b"), 3, ENG_TYPE_SEEK));
    expect_at(it, "b", 2, ENG_TYPE_PUT, "b2");
    it->ops->seek(it, ikey(&t, kv_slice_str("b"), 2, ENG_TYPE_PUT));
    expect_at(it, "b", 2, ENG_TYPE_PUT, "b2"); /* exact match */
    it->ops->seek(it, ikey(&t, kv_slice_str("b"), 2, ENG_TYPE_DEL));
    expect_at(it, "d", 3, ENG_TYPE_PUT, "d3"); /* just past b@2 */
    it->ops->seek(it, ikey(&t, kv_slice_str("b"), 1, ENG_TYPE_SEEK));
    expect_at(it, "d", 3, ENG_TYPE_PUT, "d3");
    it->ops->seek(it, ikey(&t, kv_slice_str("c"), ENG_MAX_SEQ, ENG_TYPE_SEEK));
    expect_at(it, "d", 3, ENG_TYPE_PUT, "d3");
    it->ops->seek(it, ikey(&t, kv_slice_str(""), ENG_MAX_SEQ, ENG_TYPE_SEEK));
    expect_at(it, "a", 1, ENG_TYPE_PUT, "a1");
    it->ops->seek(it, ikey(&t, kv_slice_str("a"), 0, ENG_TYPE_DEL));
    expect_at(it, "b", 5, ENG_TYPE_PUT, "b5");
    it->ops->seek(it, ikey(&t, kv_slice_str("d"), 2, ENG_TYPE_SEEK));
    cr_assert(!it->ops->valid(it), "past the last entry");
    cr_assert_eq(it->ops->status(it), 0);
    it->ops->seek(it, ikey(&t, kv_slice_str("e"), ENG_MAX_SEQ, ENG_TYPE_SEEK));
    cr_assert(!it->ops->valid(it));

    /* Walk from a seek to the end. */
    it->ops->seek(it, ikey(&t, kv_slice_str("b"), 5, ENG_TYPE_DEL));
    expect_at(it, "b", 4, ENG_TYPE_DEL, "");
    it->ops->next(it);
    expect_at(it, "b", 2, ENG_TYPE_PUT, "b2");
    it->ops->next(it);
    expect_at(it, "d", 3, ENG_TYPE_PUT, "d3");
    it->ops->next(it);
    cr_assert(!it->ops->valid(it));
    it->ops->seek_first(it);
    expect_at(it, "a", 1, ENG_TYPE_PUT, "a1");

    /* Not an internal key: the iterator reports it and stays invalid. */
    it->ops->seek(it, kv_slice_str("abc"));
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), -EINVAL);
    it->ops->seek_first(it);
    cr_assert(!it->ops->valid(it));
    cr_assert_eq(it->ops->status(it), -EINVAL);
    it->ops->free(it);
    kv_buf_release(&t);
    eng__mem_unref(m);
}

Test(memtable, misuse_is_rejected_and_changes_nothing) {
    eng_memtable *m = mem_new();
    add(m, 7, ENG_TYPE_PUT, "k", "v");
    size_t bytes = eng__mem_bytes(m);
    kv_slice k = kv_slice_str("k"), v = kv_slice_str("w");
    cr_assert_eq(eng__mem_add(m, 7, ENG_TYPE_PUT, k, v), -EINVAL,
                 "the same internal key twice");
    cr_assert_eq(eng__mem_add(m, 8, 2, k, v), -EINVAL);
    cr_assert_eq(eng__mem_add(m, ENG_MAX_SEQ + 1, ENG_TYPE_PUT, k, v), -EINVAL);
    uint8_t *huge = calloc(1, ENG_MAX_KEY + 1);
    cr_assert_not_null(huge);
    cr_assert_eq(eng__mem_add(m, 9, ENG_TYPE_PUT,
                              kv_slice_make(huge, ENG_MAX_KEY + 1), v),
                 KV_ETOOLARGE);
    free(huge);
    cr_assert_eq(eng__mem_count(m), 1);
    cr_assert_eq(eng__mem_bytes(m), bytes);
    expect_get(m, "k", ENG_MAX_SEQ, "v", false);
    /* The same seq for a different key, and the largest seq, are fine. */
    add(m, 7, ENG_TYPE_PUT, "k2", "v2");
    add(m, ENG_MAX_SEQ, ENG_TYPE_DEL, "k", "");
    expect_get(m, "k", ENG_MAX_SEQ, NULL, true);
    expect_get(m, "k", ENG_MAX_SEQ - 1, "v", false);
    eng__mem_unref(m);
}

/* ---- lifetime ----------------------------------------------------------- */

Test(memtable, iterator_keeps_memtable_alive) {
    eng_memtable *m = mem_new();
    char k[16], v[32];
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof(k), "key%04d", i);
        snprintf(v, sizeof(v), "value-%d", i * 3);
        add(m, (uint64_t)i + 1, ENG_TYPE_PUT, k, v);
    }
    eng__mem_ref(m);
    eng__mem_unref(m); /* a balanced ref/unref frees nothing */
    eng_iiter *a = eng__mem_iter(m);
    eng_iiter *b = eng__mem_iter(m);
    cr_assert(a && b);
    eng__mem_unref(m); /* last external reference */

    /* Under ASan, any read of a freed arena here fails the test. */
    for (eng_iiter *it = a; it; it = (it == a ? b : NULL)) {
        int i = 0;
        for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it)) {
            snprintf(k, sizeof(k), "key%04d", i);
            snprintf(v, sizeof(v), "value-%d", i * 3);
            expect_at(it, k, (uint64_t)i + 1, ENG_TYPE_PUT, v);
            i++;
        }
        cr_assert_eq(i, 500);
        if (it == a) a->ops->free(a); /* b still holds m */
    }
    b->ops->free(b); /* frees m; LeakSanitizer checks nothing is left */
}

/* ---- allocation failure ------------------------------------------------- */

enum { AF_N = 24 };

static size_t af_vlen(int i) {
    /* Mostly 30 KiB so the arena needs several blocks; one entry big enough
     * for a block of its own; a few tiny ones. */
    if (i == 5) return 100 * 1024;
    return i % 4 == 3 ? 3 : 30 * 1024;
}

static void af_entry(int i, char *k, size_t kcap, uint8_t *v) {
    snprintf(k, kcap, "key%03d", (i * 7) % AF_N); /* not in key order */
    memset(v, 'a' + i, af_vlen(i));
}

/* Checks m holds exactly the first n workload entries. */
static void af_check(eng_memtable *m, int n) {
    static uint8_t v[100 * 1024];
    ref refs[AF_N];
    memset(refs, 0, sizeof(refs));
    char k[16];
    for (int i = 0; i < n; i++) {
        af_entry(i, k, sizeof(k), v);
        ikey(&refs[i].ik, kv_slice_str(k), (uint64_t)i + 1, ENG_TYPE_PUT);
        cr_assert_eq(kv_buf_set(&refs[i].val, v, af_vlen(i)), 0);
    }
    qsort(refs, (size_t)n, sizeof(refs[0]), ref_cmp);
    expect_all(m, refs, (size_t)n);
    for (int i = 0; i < n; i++) {
        kv_buf_release(&refs[i].ik);
        kv_buf_release(&refs[i].val);
    }
}

Test(memtable, allocation_failure_at_every_point) {
    uint8_t *v = malloc(100 * 1024);
    cr_assert_not_null(v);
    char k[16];
    long k_fail;
    for (k_fail = 0; k_fail < 1000; k_fail++) {
        bool failed = false;
        eng_memtable *m = NULL;
        kv_alloc_fail_after(k_fail);
        int rc = eng__mem_new(&m);
        if (rc) {
            kv_alloc_fail_after(-1);
            cr_assert_eq(rc, -ENOMEM);
            cr_assert_null(m);
            failed = true;
            m = mem_new();
        }
        for (int i = 0; i < AF_N; i++) {
            af_entry(i, k, sizeof(k), v);
            uint64_t count = eng__mem_count(m);
            size_t bytes = eng__mem_bytes(m);
            kv_slice val = kv_slice_make(v, af_vlen(i));
            rc = eng__mem_add(m, (uint64_t)i + 1, ENG_TYPE_PUT, kv_slice_str(k),
                              val);
            if (rc) {
                kv_alloc_fail_after(-1);
                cr_assert_eq(rc, -ENOMEM, "k=%ld op %d: %d", k_fail, i, rc);
                failed = true;
                cr_assert_eq(eng__mem_count(m), count);
                cr_assert_eq(eng__mem_bytes(m), bytes);
                af_check(m, i);
                cr_assert_eq(eng__mem_add(m, (uint64_t)i + 1, ENG_TYPE_PUT,
                                          kv_slice_str(k), val),
                             0, "the memtable stays usable");
            }
            if (i % 6 == 0) {
                kv_buf got = KV_BUF_INIT;
                int type = -1;
                rc = eng__mem_get(m, kv_slice_str(k), ENG_MAX_SEQ, &type, &got);
                if (rc) {
                    kv_alloc_fail_after(-1);
                    cr_assert_eq(rc, -ENOMEM);
                    failed = true;
                    rc = eng__mem_get(m, kv_slice_str(k), ENG_MAX_SEQ, &type,
                                      &got);
                }
                cr_assert_eq(rc, 0);
                cr_assert(kv_slice_eq(kv_buf_slice(&got), val));
                kv_buf_release(&got);
                eng_iiter *it = eng__mem_iter(m);
                if (!it) {
                    kv_alloc_fail_after(-1);
                    failed = true;
                } else {
                    it->ops->free(it);
                }
            }
        }
        kv_alloc_fail_after(-1);
        af_check(m, AF_N);
        eng__mem_unref(m);
        if (!failed) break; /* every allocation point has been covered */
    }
    cr_assert_gt(k_fail, 10, "the workload allocates at several points");
    cr_assert_lt(k_fail, 1000);
    free(v);
}

/* ---- concurrency -------------------------------------------------------- */

/* Threads other than the test's own do not call cr_assert: they record the
 * first failure here and stop, and the test thread asserts on it. */
enum { CW_N = 200000 };

typedef struct conc {
    eng_memtable *m;
    atomic_uint done;   /* entries the writer has added (release) */
    atomic_bool stop;   /* writer finished */
    atomic_bool failed; /* some thread saw something wrong; err says what */
    atomic_long scans;  /* full iterations completed by readers */
    pthread_mutex_t mu; /* guards err */
    char err[160];
} conc;

#define CW_CHECK(c, cond, ...)                                                 \
    do {                                                                       \
        if (!(cond)) {                                                         \
            cw_fail((c), __VA_ARGS__);                                         \
            goto out;                                                          \
        }                                                                      \
    } while (0)

static void cw_fail(conc *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cw_fail(conc *c, const char *fmt, ...) {
    pthread_mutex_lock(&c->mu);
    if (!atomic_load(&c->failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, sizeof(c->err), fmt, ap);
        va_end(ap);
        atomic_store(&c->failed, true);
    }
    pthread_mutex_unlock(&c->mu);
}

/* Entry i: a scrambled key (a bijection on 32 bits, so unique), seq i + 1,
 * and a value naming i and padded by a length and pattern derived from i. */
static void cw_key(uint32_t i, char *k) {
    snprintf(k, 16, "k%08x", i * 2654435761u);
}
static size_t cw_value(uint32_t i, uint8_t *v) {
    size_t n = 4 + i % 29;
    kv_put_u32(v, i);
    for (size_t j = 4; j < n; j++) v[j] = (uint8_t)(i + j);
    return n;
}

/* Whether (key, value) is exactly entry i for the i the value names. */
static bool cw_good(kv_slice ik, kv_slice val) {
    if (val.len < 4 || ik.len < 8) return false;
    uint32_t i = kv_get_u32(val.ptr);
    if (i >= CW_N) return false;
    char k[16];
    uint8_t v[40];
    cw_key(i, k);
    size_t vn = cw_value(i, v);
    return kv_slice_eq(eng__ikey_user(ik), kv_slice_str(k)) &&
           eng__ikey_seq(ik) == (uint64_t)i + 1 &&
           eng__ikey_type(ik) == ENG_TYPE_PUT &&
           kv_slice_eq(val, kv_slice_make(v, vn));
}

static void *cw_writer(void *arg) {
    conc *c = arg;
    char k[16];
    uint8_t v[40];
    for (uint32_t i = 0; i < CW_N && !atomic_load(&c->failed); i++) {
        cw_key(i, k);
        size_t vn = cw_value(i, v);
        int rc = eng__mem_add(c->m, (uint64_t)i + 1, ENG_TYPE_PUT,
                              kv_slice_str(k), kv_slice_make(v, vn));
        CW_CHECK(c, rc == 0, "add %u: %d", i, rc);
        atomic_store_explicit(&c->done, i + 1, memory_order_release);
    }
out:
    atomic_store(&c->stop, true);
    return NULL;
}

static void *cw_reader(void *arg) {
    conc *c = arg;
    uint64_t s = (uint64_t)(uintptr_t)&s | 1;
    kv_buf got = KV_BUF_INIT, prev = KV_BUF_INIT, t = KV_BUF_INIT;
    eng_iiter *it = eng__mem_iter(c->m);
    CW_CHECK(c, it, "no iterator");
    bool last = false;
    while (!last && !atomic_load(&c->failed)) {
        last = atomic_load(&c->stop);
        /* Every add that finished before the scan starts must be seen. */
        uint32_t before = atomic_load_explicit(&c->done, memory_order_acquire);
        uint32_t seen = 0;
        for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it)) {
            kv_slice ik = it->ops->key(it);
            CW_CHECK(c, !seen || eng__ikey_cmp(kv_buf_slice(&prev), ik) < 0,
                     "scan out of order at %u", seen);
            CW_CHECK(c, cw_good(ik, it->ops->value(it)), "wrong entry at %u",
                     seen);
            CW_CHECK(c, kv_buf_set(&prev, ik.ptr, ik.len) == 0, "oom");
            seen++;
        }
        CW_CHECK(c, seen >= before, "scan saw %u of %u added", seen, before);
        CW_CHECK(c, !last || seen == CW_N, "final scan saw %u", seen);

        /* Point lookups and seeks of entries known to be in. */
        uint32_t done = atomic_load_explicit(&c->done, memory_order_acquire);
        for (int q = 0; done && q < 200; q++) {
            uint32_t i = (uint32_t)(rnd(&s) % done);
            char k[16];
            cw_key(i, k);
            int type = -1;
            int rc =
                eng__mem_get(c->m, kv_slice_str(k), ENG_MAX_SEQ, &type, &got);
            CW_CHECK(c, rc == 0 && type == ENG_TYPE_PUT,
                     "get of added entry %u: %d", i, rc);
            uint8_t v[40];
            size_t vn = cw_value(i, v);
            CW_CHECK(c, kv_slice_eq(kv_buf_slice(&got), kv_slice_make(v, vn)),
                     "get %u: wrong value", i);
            kv_buf_reset(&t);
            rc = eng__ikey_append(&t, kv_slice_str(k), ENG_MAX_SEQ,
                                  ENG_TYPE_SEEK);
            CW_CHECK(c, rc == 0, "oom");
            it->ops->seek(it, kv_buf_slice(&t));
            CW_CHECK(c, it->ops->valid(it), "seek %u: end", i);
            CW_CHECK(c,
                     cw_good(it->ops->key(it), it->ops->value(it)) &&
                         eng__ikey_seq(it->ops->key(it)) == (uint64_t)i + 1,
                     "seek %u: wrong entry", i);
        }
        atomic_fetch_add(&c->scans, 1);
    }
out:
    if (it) it->ops->free(it);
    kv_buf_release(&got);
    kv_buf_release(&prev);
    kv_buf_release(&t);
    return NULL;
}

Test(memtable, readers_race_one_writer, .timeout = 120) {
    conc c = {.m = mem_new()};
    atomic_init(&c.done, 0);
    atomic_init(&c.stop, false);
    atomic_init(&c.failed, false);
    atomic_init(&c.scans, 0);
    pthread_mutex_init(&c.mu, NULL);
    pthread_t w, r[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&r[i], NULL, cw_reader, &c), 0);
    cr_assert_eq(pthread_create(&w, NULL, cw_writer, &c), 0);
    pthread_join(w, NULL);
    for (int i = 0; i < 2; i++) pthread_join(r[i], NULL);
    cr_assert(!atomic_load(&c.failed), "%s", c.err);
    cr_assert_eq(eng__mem_count(c.m), CW_N);
    cr_assert_geq(atomic_load(&c.scans), 2, "each reader finished a scan");
    pthread_mutex_destroy(&c.mu);
    eng__mem_unref(c.m);
}

/* ---- micro-check -------------------------------------------------------- */

Test(memtable, million_inserts, .timeout = 120) {
    enum { N = 1000000 };
    eng_memtable *m = mem_new();
    uint64_t s = 99;
    uint8_t k[16], v[100];
    fill_random(v, sizeof(v), &s);
    uint64_t t0 = kv_now_ns();
    for (uint32_t i = 0; i < N; i++) {
        kv_put_u64(k, rnd(&s));
        kv_put_u64(k + 8, i);
        v[0] = (uint8_t)i;
        cr_assert_eq(eng__mem_add(m, (uint64_t)i + 1, ENG_TYPE_PUT,
                                  kv_slice_make(k, 16),
                                  kv_slice_make(v, sizeof(v))),
                     0);
    }
    uint64_t ns = kv_now_ns() - t0;
    cr_assert_eq(eng__mem_count(m), N);
    cr_assert_geq(eng__mem_bytes(m), (size_t)N * (16 + 8 + 100));
    fprintf(stderr,
            "memtable: %d inserts (16 B keys, 100 B values) in %.2f s: "
            "%.0f/s, %zu arena bytes\n",
            N, ns / 1e9, N / (ns / 1e9), eng__mem_bytes(m));
    eng__mem_unref(m);
}
