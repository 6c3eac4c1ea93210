/*
 * Merging iterator tests against a sorted reference. Children are tiny
 * array-backed iterators defined here, so nothing but ikey.c and merge.c is
 * under test; they can be told to fail with KV_ECORRUPT when they would move
 * onto a given position, to check that errors are never skipped.
 */
#include "engine/engine_int.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ent {
    kv_buf key; /* internal key */
    char val[24];
} ent;

static int ent_cmp(const void *a, const void *b) {
    const ent *x = a, *y = b;
    return eng__ikey_cmp(kv_buf_slice(&x->key), kv_buf_slice(&y->key));
}

static kv_slice ent_key(const ent *e) {
    return kv_buf_slice(&e->key);
}

/* ---- array iterator (plain malloc, so allocation faults miss it) ---- */

static int arr_freed;

typedef struct arr_iter {
    eng_iiter base;
    const ent **e; /* borrowed entries, sorted */
    int n, pos;
    int fail_at; /* moving to a position >= fail_at fails */
    int err;
} arr_iter;

static void arr_set(arr_iter *a, int p) {
    a->err = 0;
    if (p >= a->fail_at && p < a->n) {
        a->err = KV_ECORRUPT;
        p = a->n;
    }
    a->pos = p;
}
static bool arr_valid(eng_iiter *it) {
    arr_iter *a = (arr_iter *)it;
    return a->err == 0 && a->pos < a->n;
}
static void arr_seek_first(eng_iiter *it) {
    arr_set((arr_iter *)it, 0);
}
static void arr_seek(eng_iiter *it, kv_slice ikey) {
    arr_iter *a = (arr_iter *)it;
    int p = 0;
    while (p < a->n && eng__ikey_cmp(ent_key(a->e[p]), ikey) < 0) p++;
    arr_set(a, p);
}
static void arr_next(eng_iiter *it) {
    arr_iter *a = (arr_iter *)it;
    cr_assert(arr_valid(it), "next on an invalid child");
    arr_set(a, a->pos + 1);
}
static kv_slice arr_key(eng_iiter *it) {
    arr_iter *a = (arr_iter *)it;
    cr_assert(arr_valid(it));
    return ent_key(a->e[a->pos]);
}
static kv_slice arr_value(eng_iiter *it) {
    arr_iter *a = (arr_iter *)it;
    cr_assert(arr_valid(it));
    return kv_slice_str(a->e[a->pos]->val);
}
static int arr_status(eng_iiter *it) {
    return ((arr_iter *)it)->err;
}
static void arr_free(eng_iiter *it) {
    arr_iter *a = (arr_iter *)it;
    arr_freed++;
    free(a->e);
    free(a);
}
static const eng_iiter_ops arr_ops = {
    arr_valid, arr_seek_first, arr_seek,   arr_next,
    arr_key,   arr_value,      arr_status, arr_free,
};

static eng_iiter *arr_new(const ent **e, int n, int fail_at) {
    arr_iter *a = calloc(1, sizeof *a);
    cr_assert_not_null(a);
    a->e = malloc(sizeof *a->e * (size_t)(n ? n : 1));
    cr_assert_not_null(a->e);
    if (n) memcpy(a->e, e, sizeof *e * (size_t)n);
    a->n = n;
    a->pos = n;
    a->fail_at = fail_at;
    a->base.ops = &arr_ops;
    return &a->base;
}

/* ---- data sets ---- */

/* nent distinct internal keys over nuser user keys, sorted. */
static ent *make_entries(int nent, int nuser, unsigned seed) {
    ent *es = calloc((size_t)(nent ? nent : 1), sizeof *es);
    cr_assert_not_null(es);
    srand(seed);
    for (int i = 0; i < nent; i++) {
        char uk[16];
        snprintf(uk, sizeof uk, "k%04d", rand() % nuser);
        /* Sequences are unique, so internal keys are too. */
        cr_assert_eq(eng__ikey_append(&es[i].key, kv_slice_str(uk),
                                      (uint64_t)i + 1, rand() % 2),
                     0);
        snprintf(es[i].val, sizeof es[i].val, "v%d", i);
    }
    qsort(es, (size_t)nent, sizeof *es, ent_cmp);
    return es;
}

static void free_entries(ent *es, int nent) {
    for (int i = 0; i < nent; i++) kv_buf_release(&es[i].key);
    free(es);
}

/* Deal the sorted entries out to nkids children at random (each child's
 * share stays sorted); owner[i] is the child that got entry i. */
static void deal(const ent *es, int nent, int nkids, eng_iiter **kids,
                 int *owner, const int *fail_at) {
    const ent **lists =
        malloc(sizeof *lists * (size_t)(nent + 1) * (size_t)nkids);
    int *cnt = calloc((size_t)nkids, sizeof *cnt);
    cr_assert(lists && cnt);
    for (int i = 0; i < nent; i++) {
        int k = rand() % nkids;
        if (owner) owner[i] = k;
        lists[(size_t)k * (size_t)(nent + 1) + (size_t)cnt[k]++] = &es[i];
    }
    for (int k = 0; k < nkids; k++)
        kids[k] = arr_new(lists + (size_t)k * (size_t)(nent + 1), cnt[k],
                          fail_at ? fail_at[k] : INT32_MAX);
    free(lists);
    free(cnt);
}

/* Walk from the current position and compare with es[from..]. */
static void expect_from(eng_iiter *it, const ent *es, int nent, int from,
                        int steps) {
    for (int i = from; i < nent && i < from + steps; i++) {
        cr_assert(it->ops->valid(it), "ended early at %d of %d", i, nent);
        cr_assert(kv_slice_eq(it->ops->key(it), ent_key(&es[i])),
                  "wrong key at %d", i);
        cr_assert(kv_slice_eq(it->ops->value(it), kv_slice_str(es[i].val)));
        it->ops->next(it);
    }
    if (from + steps >= nent) {
        cr_assert_not(it->ops->valid(it));
        cr_assert_eq(it->ops->status(it), 0);
    }
}

/* First reference entry >= target. */
static int lower_bound(const ent *es, int nent, kv_slice target) {
    int lo = 0, hi = nent;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (eng__ikey_cmp(ent_key(&es[mid]), target) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void check_merge(int nkids, int nent, unsigned seed) {
    ent *es = make_entries(nent, 60, seed);
    eng_iiter **kids = calloc((size_t)(nkids ? nkids : 1), sizeof *kids);
    cr_assert_not_null(kids);
    deal(es, nent, nkids, kids, NULL, NULL);
    arr_freed = 0;
    eng_iiter *m = eng__merge_iter(kids, nkids);
    free(kids);
    cr_assert_not_null(m);
    cr_assert_not(m->ops->valid(m));

    m->ops->seek_first(m);
    expect_from(m, es, nent, 0, nent);

    /* Seek to every entry exactly, then to points between entries: other
     * user keys, and each user key with the newest possible sequence. */
    kv_buf t = KV_BUF_INIT;
    for (int i = 0; i < nent; i++) {
        m->ops->seek(m, ent_key(&es[i]));
        expect_from(m, es, nent, i, 3);
    }
    for (int i = 0; i < 200; i++) {
        char uk[16];
        snprintf(uk, sizeof uk, i % 2 ? "k%04d" : "k%04d~", rand() % 70);
        uint64_t seq = i % 3 ? ENG_MAX_SEQ : (uint64_t)(rand() % (nent + 2));
        kv_buf_reset(&t);
        cr_assert_eq(eng__ikey_append(&t, kv_slice_str(uk), seq, ENG_TYPE_SEEK),
                     0);
        m->ops->seek(m, kv_buf_slice(&t));
        expect_from(m, es, nent, lower_bound(es, nent, kv_buf_slice(&t)), 4);
    }
    /* Before everything and after everything. */
    kv_buf_reset(&t);
    cr_assert_eq(
        eng__ikey_append(&t, kv_slice_str(""), ENG_MAX_SEQ, ENG_TYPE_SEEK), 0);
    m->ops->seek(m, kv_buf_slice(&t));
    expect_from(m, es, nent, 0, nent);
    kv_buf_reset(&t);
    cr_assert_eq(
        eng__ikey_append(&t, kv_slice_str("l"), ENG_MAX_SEQ, ENG_TYPE_SEEK), 0);
    m->ops->seek(m, kv_buf_slice(&t));
    cr_assert_not(m->ops->valid(m));
    cr_assert_eq(m->ops->status(m), 0);
    kv_buf_release(&t);

    m->ops->free(m);
    cr_assert_eq(arr_freed, nkids, "every child freed with the merge");
    free_entries(es, nent);
}

Test(merge, zero_children) {
    eng_iiter *m = eng__merge_iter(NULL, 0);
    cr_assert_not_null(m);
    m->ops->seek_first(m);
    cr_assert_not(m->ops->valid(m));
    cr_assert_eq(m->ops->status(m), 0);
    m->ops->free(m);
}

Test(merge, one_child) {
    check_merge(1, 100, 1);
}

Test(merge, three_children) {
    check_merge(3, 300, 2);
}

Test(merge, three_children_sparse) {
    /* With few entries some children are empty. */
    check_merge(3, 2, 3);
}

Test(merge, fifty_children) {
    check_merge(50, 2000, 4);
}

Test(merge, many_seeds) {
    for (unsigned s = 10; s < 40; s++) check_merge(1 + (int)s % 9, 80, s);
}

Test(merge, nested_merges) {
    enum { NENT = 500 };
    ent *es = make_entries(NENT, 40, 5);
    eng_iiter *kids[20], *groups[4];
    deal(es, NENT, 20, kids, NULL, NULL);
    for (int g = 0; g < 4; g++) {
        groups[g] = eng__merge_iter(kids + 5 * g, 5);
        cr_assert_not_null(groups[g]);
    }
    arr_freed = 0;
    eng_iiter *m = eng__merge_iter(groups, 4);
    cr_assert_not_null(m);
    m->ops->seek_first(m);
    expect_from(m, es, NENT, 0, NENT);
    m->ops->seek(m, ent_key(&es[NENT / 2]));
    expect_from(m, es, NENT, NENT / 2, NENT);
    m->ops->free(m);
    cr_assert_eq(arr_freed, 20);
    free_entries(es, NENT);
}

Test(merge, equal_keys_across_children) {
    enum { NENT = 50 };
    ent *es = make_entries(NENT, 10, 6);
    const ent *ptrs[NENT];
    for (int i = 0; i < NENT; i++) ptrs[i] = &es[i];
    eng_iiter *kids[3] = {arr_new(ptrs, NENT, INT32_MAX),
                          arr_new(ptrs, NENT, INT32_MAX),
                          arr_new(ptrs + 10, 5, INT32_MAX)};
    eng_iiter *m = eng__merge_iter(kids, 3);
    cr_assert_not_null(m);
    m->ops->seek_first(m);
    int count[NENT] = {0}, n = 0, last = -1;
    for (; m->ops->valid(m); m->ops->next(m), n++) {
        int idx = lower_bound(es, NENT, m->ops->key(m));
        cr_assert_lt(idx, NENT);
        cr_assert(kv_slice_eq(ent_key(&es[idx]), m->ops->key(m)));
        cr_assert_geq(idx, last, "output not sorted");
        last = idx;
        count[idx]++;
    }
    cr_assert_eq(m->ops->status(m), 0);
    cr_assert_eq(n, 2 * NENT + 5);
    for (int i = 0; i < NENT; i++)
        cr_assert_eq(count[i], i >= 10 && i < 15 ? 3 : 2);
    m->ops->free(m);
    free_entries(es, NENT);
}

Test(merge, child_error_mid_stream) {
    enum { NENT = 300, NKIDS = 3 };
    ent *es = make_entries(NENT, 50, 7);
    int owner[NENT];
    int fail_at[NKIDS] = {INT32_MAX, 20, INT32_MAX};
    eng_iiter *kids[NKIDS];
    deal(es, NENT, NKIDS, kids, owner, fail_at);
    /* Child 1 fails when it moves past its 20th entry, so the merge must
     * yield exactly the entries up to that one and then stop. */
    int last_ok = -1, seen = 0;
    for (int i = 0; i < NENT; i++) {
        if (owner[i] == 1 && seen++ == 19) last_ok = i;
    }
    cr_assert_geq(last_ok, 0);

    eng_iiter *m = eng__merge_iter(kids, NKIDS);
    cr_assert_not_null(m);
    m->ops->seek_first(m);
    expect_from(m, es, NENT, 0, last_ok + 1);
    cr_assert_not(m->ops->valid(m));
    cr_assert_eq(m->ops->status(m), KV_ECORRUPT);
    /* The error sticks: no repositioning hides it. */
    m->ops->next(m);
    m->ops->seek_first(m);
    cr_assert_not(m->ops->valid(m));
    cr_assert_eq(m->ops->status(m), KV_ECORRUPT);
    m->ops->seek(m, ent_key(&es[0]));
    cr_assert_not(m->ops->valid(m));
    cr_assert_eq(m->ops->status(m), KV_ECORRUPT);
    m->ops->free(m);

    /* A seek that lands the failing child on its bad position fails at
     * once, even though other children have entries there. */
    deal(es, NENT, NKIDS, kids, owner, fail_at);
    int target = -1;
    seen = 0;
    for (int i = 0; i < NENT; i++) {
        if (owner[i] == 1 && seen++ == 20) target = i;
    }
    cr_assert_geq(target, 0);
    m = eng__merge_iter(kids, NKIDS);
    cr_assert_not_null(m);
    m->ops->seek(m, ent_key(&es[0]));
    cr_assert(m->ops->valid(m));
    m->ops->seek(m, ent_key(&es[target]));
    cr_assert_not(m->ops->valid(m));
    cr_assert_eq(m->ops->status(m), KV_ECORRUPT);
    m->ops->free(m);
    free_entries(es, NENT);
}

Test(merge, child_failing_from_start) {
    enum { NENT = 40 };
    ent *es = make_entries(NENT, 20, 8);
    eng_iiter *kids[3];
    deal(es, NENT, 2, kids, NULL, NULL);
    kids[2] = eng__iiter_empty(-EIO);
    cr_assert_not_null(kids[2]);
    eng_iiter *m = eng__merge_iter(kids, 3);
    cr_assert_not_null(m);
    m->ops->seek_first(m);
    cr_assert_not(m->ops->valid(m));
    cr_assert_eq(m->ops->status(m), -EIO);
    m->ops->free(m);
    free_entries(es, NENT);
}

Test(merge, empty_iterator) {
    eng_iiter *e = eng__iiter_empty(0);
    cr_assert_not_null(e);
    e->ops->seek_first(e);
    cr_assert_not(e->ops->valid(e));
    cr_assert_eq(e->ops->status(e), 0);
    e->ops->free(e);

    e = eng__iiter_empty(KV_ECORRUPT);
    cr_assert_not_null(e);
    e->ops->seek(e, kv_slice_str("12345678"));
    cr_assert_not(e->ops->valid(e));
    cr_assert_eq(e->ops->status(e), KV_ECORRUPT);
    e->ops->free(e);

    /* The plain empty iterator needs no memory; an error one does. */
    kv_alloc_fail_after(0);
    eng_iiter *ok = eng__iiter_empty(0);
    eng_iiter *bad = eng__iiter_empty(-EIO);
    kv_alloc_fail_after(-1);
    cr_assert_not_null(ok);
    cr_assert_null(bad);
    ok->ops->free(ok);
}

Test(merge, allocation_failure_frees_children) {
    enum { NENT = 60, NKIDS = 3 };
    ent *es = make_entries(NENT, 20, 9);
    eng_iiter *kids[NKIDS], *m = NULL;
    int k = 0;
    for (;; k++) {
        deal(es, NENT, NKIDS, kids, NULL, NULL);
        arr_freed = 0;
        kv_alloc_fail_after(k);
        m = eng__merge_iter(kids, NKIDS);
        kv_alloc_fail_after(-1);
        if (m) break;
        cr_assert_eq(arr_freed, NKIDS, "children freed on failure (k=%d)", k);
    }
    cr_assert_gt(k, 0);
    m->ops->seek_first(m);
    expect_from(m, es, NENT, 0, NENT);
    m->ops->free(m);
    cr_assert_eq(arr_freed, NKIDS);

    /* A child that could not be created counts as a failed allocation. */
    deal(es, NENT, NKIDS, kids, NULL, NULL);
    kids[1]->ops->free(kids[1]);
    kids[1] = NULL;
    arr_freed = 0;
    cr_assert_null(eng__merge_iter(kids, NKIDS));
    cr_assert_eq(arr_freed, NKIDS - 1);
    free_entries(es, NENT);
}
