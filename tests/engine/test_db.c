/*
 * Integration tests of the engine through its public API (engine/engine.h)
 * only: point reads and writes, limits, batches, snapshots, iterators,
 * persistence across reopen in every sync mode, write flags, flush and
 * compaction in both styles, tombstones, stats and concurrent writers.
 *
 * Every test runs on a fresh store in its own mkdtemp directory, removed by
 * the fixture. Values are derived from (key, version) so a check needs no
 * stored copy. Helper threads never assert (Criterion aborts only the main
 * thread); they count errors that the main thread then checks.
 * The on-disk format is in docs/engine-format.md; these tests do not rely
 * on it.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- fixture and helpers ---- */

static char g_dir[PATH_MAX];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-dbtest");
}

static void teardown(void) {
    kv_alloc_fail_after(-1);
    if (g_dir[0]) rm_tree(g_dir);
    g_dir[0] = '\0';
}

static eng_db *open_db(const eng_options *o) {
    eng_db *db = NULL;
    OK(eng_db_open(g_dir, o, &db));
    cr_assert_not_null(db);
    return db;
}

static eng_db *open_default(void) {
    eng_options o;
    eng_options_init(&o);
    return open_db(&o);
}

/* Options that make flushes and compactions frequent. */
static void small_opts(eng_options *o, eng_compaction_style style) {
    eng_options_init(o);
    o->style = style;
    o->sync = ENG_SYNC_NONE;
    o->memtable_bytes = 64 * 1024;
    o->table_bytes = 64 * 1024;
    o->block_bytes = 1024;
    o->level1_bytes = 256 * 1024;
    o->level_multiplier = 4;
    o->l0_compaction_trigger = 2;
    o->tier_min = 2;
    o->tier_max = 8;
    o->cache_bytes = 256 * 1024;
}

/* Deterministic value bytes for (id, version); length from the same seed
 * unless len is given (>= 0). */
static size_t gen_value(uint8_t *out, size_t cap, uint64_t id, uint64_t version,
                        long len) {
    uint64_t s = mix64(id * 1000003u + version + 1);
    size_t n = len >= 0 ? (size_t)len : (size_t)(s % 600);
    cr_assert_leq(n, cap);
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0) s = mix64(s + i);
        out[i] = (uint8_t)(s >> (8 * (i % 8)));
    }
    return n;
}

static kv_slice key_of(char *buf, size_t cap, const char *prefix, unsigned i) {
    int n = snprintf(buf, cap, "%s%06u", prefix, i);
    return kv_slice_make(buf, (size_t)n);
}

static void expect_value(eng_db *db, const eng_snapshot *snap, kv_slice key,
                         const void *want, size_t want_len) {
    kv_buf v = KV_BUF_INIT;
    int rc = eng_db_get(db, snap, key, &v);
    cr_assert_eq(rc, 0, "get '%.*s': %s", (int)KV_MIN(key.len, 60),
                 (const char *)key.ptr, kv_strerror(rc));
    cr_assert_eq(v.len, want_len, "get '%.*s': length %zu, expected %zu",
                 (int)KV_MIN(key.len, 60), (const char *)key.ptr, v.len,
                 want_len);
    cr_assert(want_len == 0 || memcmp(v.ptr, want, want_len) == 0,
              "get '%.*s': wrong value bytes", (int)KV_MIN(key.len, 60),
              (const char *)key.ptr);
    kv_buf_release(&v);
}

static void expect_str(eng_db *db, const eng_snapshot *snap, const char *key,
                       const char *want) {
    expect_value(db, snap, kv_slice_str(key), want, strlen(want));
}

static void expect_absent(eng_db *db, const eng_snapshot *snap, kv_slice key) {
    kv_buf v = KV_BUF_INIT;
    int rc = eng_db_get(db, snap, key, &v);
    cr_assert_eq(rc, KV_ENOTFOUND, "get '%.*s': %d (%s), expected not found",
                 (int)KV_MIN(key.len, 60), (const char *)key.ptr, rc,
                 kv_strerror(rc));
    kv_buf_release(&v);
}

static int put_str(eng_db *db, const char *k, const char *v) {
    return eng_db_put(db, kv_slice_str(k), kv_slice_str(v), ENG_WF_DEFAULT);
}

/* Check that an iterator (from seek_first) yields exactly the n pairs given
 * as alternating key/value strings. */
static void expect_iter(eng_db *db, const eng_snapshot *snap,
                        const char *const *kv, size_t n) {
    eng_iter *it = NULL;
    OK(eng_iter_new(db, snap, &it));
    eng_iter_seek_first(it);
    for (size_t i = 0; i < n; i++) {
        cr_assert(eng_iter_valid(it), "iterator ended after %zu of %zu", i, n);
        cr_assert(kv_slice_eq(eng_iter_key(it), kv_slice_str(kv[2 * i])),
                  "entry %zu: key '%.*s', expected '%s'", i,
                  (int)eng_iter_key(it).len, (const char *)eng_iter_key(it).ptr,
                  kv[2 * i]);
        cr_assert(kv_slice_eq(eng_iter_value(it), kv_slice_str(kv[2 * i + 1])),
                  "entry %zu ('%s'): wrong value", i, kv[2 * i]);
        eng_iter_next(it);
    }
    cr_assert(!eng_iter_valid(it), "iterator has more than %zu entries", n);
    OK(eng_iter_status(it));
    eng_iter_free(it);
}

TestSuite(db, .init = setup, .fini = teardown, .timeout = 120);

/* ---- basic operations ---- */

Test(db, put_get_overwrite_delete) {
    eng_db *db = open_default();
    expect_absent(db, NULL, kv_slice_str("a"));
    OK(put_str(db, "a", "one"));
    expect_str(db, NULL, "a", "one");
    OK(put_str(db, "a", "two-longer"));
    expect_str(db, NULL, "a", "two-longer");
    OK(put_str(db, "b", "bee"));
    OK(eng_db_delete(db, kv_slice_str("a"), ENG_WF_DEFAULT));
    expect_absent(db, NULL, kv_slice_str("a"));
    expect_str(db, NULL, "b", "bee");
    /* Deleting an absent key is not an error. */
    OK(eng_db_delete(db, kv_slice_str("never"), ENG_WF_DEFAULT));
    /* A put after a delete makes the key visible again. */
    OK(put_str(db, "a", "three"));
    expect_str(db, NULL, "a", "three");

    /* The value replaces whatever val held before. */
    kv_buf v = KV_BUF_INIT;
    OK(kv_buf_set(&v, "stale-bytes-that-must-go", 24));
    OK(eng_db_get(db, NULL, kv_slice_str("b"), &v));
    cr_assert(kv_slice_eq(kv_buf_slice(&v), kv_slice_str("bee")));
    kv_buf_release(&v);

    /* Keys are bytes: embedded NULs and prefixes are distinct keys. */
    OK(eng_db_put(db, kv_slice_make("k\0x", 3), kv_slice_str("nul"), 0));
    OK(eng_db_put(db, kv_slice_make("k", 1), kv_slice_str("plain"), 0));
    expect_value(db, NULL, kv_slice_make("k\0x", 3), "nul", 3);
    expect_value(db, NULL, kv_slice_make("k", 1), "plain", 5);
    expect_absent(db, NULL, kv_slice_make("k\0", 2));

    OK(eng_db_flush(db));
    expect_str(db, NULL, "a", "three");
    expect_value(db, NULL, kv_slice_make("k\0x", 3), "nul", 3);
    OK(eng_db_close(db));

    db = open_default();
    expect_str(db, NULL, "a", "three");
    expect_str(db, NULL, "b", "bee");
    expect_value(db, NULL, kv_slice_make("k", 1), "plain", 5);
    expect_value(db, NULL, kv_slice_make("k\0x", 3), "nul", 3);
    OK(eng_db_close(db));
}

Test(db, empty_value_is_not_absent) {
    eng_db *db = open_default();
    OK(eng_db_put(db, kv_slice_str("e"), kv_slice_make(NULL, 0), 0));
    expect_value(db, NULL, kv_slice_str("e"), "", 0);
    OK(eng_db_flush(db));
    expect_value(db, NULL, kv_slice_str("e"), "", 0);
    OK(eng_db_put(db, kv_slice_str("f"), kv_slice_str(""), 0));
    OK(eng_db_close(db));
    db = open_default();
    expect_value(db, NULL, kv_slice_str("e"), "", 0);
    expect_value(db, NULL, kv_slice_str("f"), "", 0);
    const char *want[] = {"e", "", "f", ""};
    expect_iter(db, NULL, want, 2);
    OK(eng_db_close(db));
}

Test(db, key_and_value_limits) {
    eng_db *db = open_default();
    size_t klen = ENG_MAX_KEY + 1;
    uint8_t *big = malloc(klen);
    cr_assert_not_null(big);
    memset(big, 'K', klen);

    /* A key of exactly the limit works, through flush and reopen. */
    OK(eng_db_put(db, kv_slice_make(big, ENG_MAX_KEY), kv_slice_str("max"), 0));
    expect_value(db, NULL, kv_slice_make(big, ENG_MAX_KEY), "max", 3);

    eng_stats before, after;
    OK(eng_db_stats(db, &before));
    EXPECT_RC(eng_db_put(db, kv_slice_make(big, klen), kv_slice_str("x"), 0),
              KV_ETOOLARGE);
    EXPECT_RC(eng_db_delete(db, kv_slice_make(big, klen), 0), KV_ETOOLARGE);
    OK(eng_db_stats(db, &after));
    cr_assert_eq(after.last_sequence, before.last_sequence,
                 "a rejected write consumed a sequence number");
    cr_assert_eq(after.user_bytes_written, before.user_bytes_written);

    /* A batch holding an oversized key is rejected as a whole. */
    eng_batch *b = NULL;
    OK(eng_batch_new(&b));
    OK(eng_batch_put(b, kv_slice_str("batch-ok"), kv_slice_str("v")));
    int rc = eng_batch_put(b, kv_slice_make(big, klen), kv_slice_str("v"));
    if (rc == 0) {
        EXPECT_RC(eng_db_write(db, b, 0), KV_ETOOLARGE);
    } else {
        cr_assert_eq(rc, KV_ETOOLARGE, "batch put: %s", kv_strerror(rc));
        cr_assert_eq(eng_batch_count(b), 1, "a rejected batch put was kept");
    }
    eng_batch_free(b);
    if (rc == 0) expect_absent(db, NULL, kv_slice_str("batch-ok"));

    /* Values: one byte over the limit is rejected, the limit works. */
    size_t vlen = (size_t)ENG_MAX_VALUE + 1;
    uint8_t *val = malloc(vlen);
    cr_assert_not_null(val);
    for (size_t i = 0; i < vlen; i++) val[i] = (uint8_t)(i * 131 + (i >> 12));
    EXPECT_RC(eng_db_put(db, kv_slice_str("bigv"), kv_slice_make(val, vlen), 0),
              KV_ETOOLARGE);
    expect_absent(db, NULL, kv_slice_str("bigv"));
    OK(eng_db_put(db, kv_slice_str("bigv"), kv_slice_make(val, ENG_MAX_VALUE),
                  0));
    expect_value(db, NULL, kv_slice_str("bigv"), val, ENG_MAX_VALUE);
    OK(eng_db_flush(db));
    expect_value(db, NULL, kv_slice_str("bigv"), val, ENG_MAX_VALUE);
    OK(eng_db_close(db));

    db = open_default();
    expect_value(db, NULL, kv_slice_make(big, ENG_MAX_KEY), "max", 3);
    expect_value(db, NULL, kv_slice_str("bigv"), val, ENG_MAX_VALUE);
    expect_absent(db, NULL, kv_slice_str("batch-ok"));
    OK(eng_db_close(db));
    free(val);
    free(big);
}

/* ---- batches ---- */

Test(db, batch_applies_all_together) {
    eng_db *db = open_default();
    OK(put_str(db, "del-me", "old"));
    OK(put_str(db, "keep", "old"));

    eng_batch *b = NULL;
    OK(eng_batch_new(&b));
    cr_assert_eq(eng_batch_count(b), 0);
    OK(eng_batch_put(b, kv_slice_str("x"), kv_slice_str("1")));
    OK(eng_batch_put(b, kv_slice_str("y"), kv_slice_str("2")));
    OK(eng_batch_delete(b, kv_slice_str("del-me")));
    OK(eng_batch_put(b, kv_slice_str("z"), kv_slice_str("first")));
    OK(eng_batch_put(b, kv_slice_str("z"), kv_slice_str("second")));
    OK(eng_batch_put(b, kv_slice_str("gone"), kv_slice_str("v")));
    OK(eng_batch_delete(b, kv_slice_str("gone")));
    cr_assert_eq(eng_batch_count(b), 7);

    /* Nothing is visible before the write. */
    expect_absent(db, NULL, kv_slice_str("x"));
    expect_str(db, NULL, "del-me", "old");

    eng_snapshot *before = NULL;
    OK(eng_db_snapshot(db, &before));
    OK(eng_db_write(db, b, ENG_WF_DEFAULT));
    /* Later operations in a batch win over earlier ones on the same key. */
    const char *want[] = {"keep", "old", "x", "1", "y", "2", "z", "second"};
    expect_iter(db, NULL, want, 4);
    const char *old[] = {"del-me", "old", "keep", "old"};
    expect_iter(db, before, old, 2);
    eng_db_snapshot_release(db, before);

    /* A cleared batch is empty and may be reused. */
    eng_batch_clear(b);
    cr_assert_eq(eng_batch_count(b), 0);
    OK(eng_db_write(db, b, ENG_WF_DEFAULT)); /* an empty batch is a no-op */
    OK(eng_batch_delete(b, kv_slice_str("x")));
    OK(eng_batch_put(b, kv_slice_str("w"), kv_slice_str("3")));
    OK(eng_db_write(db, b, ENG_WF_SYNC_ALWAYS));
    eng_batch_free(b);
    OK(eng_db_close(db));

    db = open_default();
    const char *after[] = {"keep", "old", "w", "3", "y", "2", "z", "second"};
    expect_iter(db, NULL, after, 4);
    OK(eng_db_close(db));
}

/* A reader must never see half of a batch, neither through a snapshot get
 * nor through an iterator, while flushes move data into tables. */
struct batch_race {
    eng_db *db;
    atomic_bool stop;
    atomic_int errors;
    atomic_long checks;
};

static void *batch_reader(void *arg) {
    struct batch_race *r = arg;
    kv_buf a = KV_BUF_INIT, c = KV_BUF_INIT;
    while (!atomic_load(&r->stop)) {
        eng_snapshot *s = NULL;
        if (eng_db_snapshot(r->db, &s) != 0) {
            atomic_fetch_add(&r->errors, 1);
            break;
        }
        int ra = eng_db_get(r->db, s, kv_slice_str("pair-a"), &a);
        int rc = eng_db_get(r->db, s, kv_slice_str("pair-c"), &c);
        if (ra != rc ||
            (ra == 0 && !kv_slice_eq(kv_buf_slice(&a), kv_buf_slice(&c))))
            atomic_fetch_add(&r->errors, 1);
        eng_iter *it = NULL;
        if (eng_iter_new(r->db, NULL, &it) == 0) {
            kv_buf first = KV_BUF_INIT;
            int seen = 0;
            for (eng_iter_seek_first(it); eng_iter_valid(it);
                 eng_iter_next(it)) {
                kv_slice v = eng_iter_value(it);
                if (seen++ == 0)
                    kv_buf_set(&first, v.ptr, v.len);
                else if (!kv_slice_eq(v, kv_buf_slice(&first)))
                    atomic_fetch_add(&r->errors, 1);
            }
            if (eng_iter_status(it) != 0 || (seen != 0 && seen != 3))
                atomic_fetch_add(&r->errors, 1);
            kv_buf_release(&first);
            eng_iter_free(it);
        } else {
            atomic_fetch_add(&r->errors, 1);
        }
        eng_db_snapshot_release(r->db, s);
        atomic_fetch_add(&r->checks, 1);
    }
    kv_buf_release(&a);
    kv_buf_release(&c);
    return NULL;
}

Test(db, batch_atomic_under_concurrent_readers) {
    eng_options o;
    small_opts(&o, ENG_COMPACT_LEVELED);
    eng_db *db = open_db(&o);
    struct batch_race r = {.db = db};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, batch_reader, &r), 0);
    eng_batch *b = NULL;
    OK(eng_batch_new(&b));
    char val[700];
    int failed = 0;
    for (int i = 0; i < 3000 && !failed; i++) {
        /* ~600-byte values so the 64 KiB memtable flushes every ~35 batches */
        int n = snprintf(val, sizeof val, "%08d-%0590d", i, i);
        kv_slice v = kv_slice_make(val, (size_t)n);
        eng_batch_clear(b);
        if (eng_batch_put(b, kv_slice_str("pair-a"), v) ||
            eng_batch_put(b, kv_slice_str("pair-b"), v) ||
            eng_batch_put(b, kv_slice_str("pair-c"), v) ||
            eng_db_write(db, b, ENG_WF_DEFAULT))
            failed = 1;
    }
    atomic_store(&r.stop, true);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    eng_batch_free(b);
    cr_assert_eq(failed, 0, "a batch write failed");
    cr_assert_eq(atomic_load(&r.errors), 0,
                 "readers saw a partial batch %d times in %ld checks",
                 atomic_load(&r.errors), atomic_load(&r.checks));
    cr_assert_gt(atomic_load(&r.checks), 0);
    OK(eng_db_close(db));
}

/* ---- snapshots ---- */

Test(db, snapshot_ignores_later_writes_through_flush_and_compaction) {
    eng_db *db = open_default();
    OK(put_str(db, "a", "a1"));
    OK(put_str(db, "b", "b1"));
    OK(put_str(db, "d", "d1"));
    OK(eng_db_flush(db)); /* part of the snapshot's state lives in a table */
    OK(put_str(db, "c", "c1"));

    eng_snapshot *s = NULL;
    OK(eng_db_snapshot(db, &s));
    OK(put_str(db, "a", "a2"));
    OK(eng_db_delete(db, kv_slice_str("b"), 0));
    OK(eng_db_delete(db, kv_slice_str("c"), 0));
    OK(put_str(db, "e", "e1"));

    const char *at_snap[] = {"a", "a1", "b", "b1", "c", "c1", "d", "d1"};
    const char *latest[] = {"a", "a2", "d", "d1", "e", "e1"};
    for (int round = 0; round < 3; round++) {
        if (round == 1) OK(eng_db_flush(db));
        if (round == 2) {
            OK(put_str(db, "a", "a3"));
            OK(eng_db_delete(db, kv_slice_str("d"), 0));
            OK(eng_db_flush(db));
            OK(eng_db_compact_range(db, NULL, NULL));
            latest[1] = "a3";
            latest[2] = "e";
            latest[3] = "e1";
        }
        expect_str(db, s, "a", "a1");
        expect_str(db, s, "b", "b1");
        expect_str(db, s, "c", "c1");
        expect_str(db, s, "d", "d1");
        expect_absent(db, s, kv_slice_str("e"));
        expect_iter(db, s, at_snap, 4);
        expect_iter(db, NULL, latest, round == 2 ? 2 : 3);
    }

    /* A seek on a snapshot iterator lands on the snapshot's keys only. */
    eng_iter *it = NULL;
    OK(eng_iter_new(db, s, &it));
    eng_iter_seek(it, kv_slice_str("bb"));
    cr_assert(eng_iter_valid(it));
    cr_assert(kv_slice_eq(eng_iter_key(it), kv_slice_str("c")));
    cr_assert(kv_slice_eq(eng_iter_value(it), kv_slice_str("c1")));
    eng_iter_free(it);
    eng_db_snapshot_release(db, s);

    /* With the snapshot gone a compaction may drop old versions; the latest
     * state stays. */
    OK(eng_db_compact_range(db, NULL, NULL));
    expect_iter(db, NULL, latest, 2);
    OK(eng_db_close(db));
}

Test(db, many_snapshots_each_see_their_own_version) {
    eng_options o;
    small_opts(&o, ENG_COMPACT_LEVELED);
    eng_db *db = open_db(&o);
    enum { NSNAP = 20, NKEY = 200 };
    eng_snapshot *snaps[NSNAP];
    char kb[32];
    uint8_t vb[1024];
    for (int s = 0; s < NSNAP; s++) {
        for (unsigned k = 0; k < NKEY; k++) {
            size_t n = gen_value(vb, sizeof vb, k, (uint64_t)s, 300);
            OK(eng_db_put(db, key_of(kb, sizeof kb, "k", k),
                          kv_slice_make(vb, n), 0));
        }
        OK(eng_db_snapshot(db, &snaps[s]));
    }
    OK(eng_db_compact_range(db, NULL, NULL));
    for (int s = 0; s < NSNAP; s++) {
        for (unsigned k = 0; k < NKEY; k += 7) {
            size_t n = gen_value(vb, sizeof vb, k, (uint64_t)s, 300);
            expect_value(db, snaps[s], key_of(kb, sizeof kb, "k", k), vb, n);
        }
    }
    for (int s = 0; s < NSNAP; s++) eng_db_snapshot_release(db, snaps[s]);
    OK(eng_db_close(db));
}

/* ---- iterators ---- */

Test(db, iterator_merges_memtable_and_tables) {
    eng_options o;
    eng_options_init(&o);
    o.block_bytes = 512;
    o.sync = ENG_SYNC_NONE; /* durability is not the subject here */
    eng_db *db = open_db(&o);
    enum { N = 3000 };
    static int8_t ver[N]; /* -1 absent, else version of the value */
    char kb[32];
    uint8_t vb[1024];
    memset(ver, -1, sizeof ver);

    /* Three tables and a memtable, each changing a different subset. */
    for (unsigned i = 0; i < N; i += 2) {
        size_t n = gen_value(vb, sizeof vb, i, 0, -1);
        OK(eng_db_put(db, key_of(kb, sizeof kb, "it", i), kv_slice_make(vb, n),
                      0));
        ver[i] = 0;
    }
    OK(eng_db_flush(db));
    for (unsigned i = 1; i < N; i += 3) {
        size_t n = gen_value(vb, sizeof vb, i, 1, -1);
        OK(eng_db_put(db, key_of(kb, sizeof kb, "it", i), kv_slice_make(vb, n),
                      0));
        ver[i] = 1;
    }
    OK(eng_db_flush(db));
    for (unsigned i = 0; i < N; i += 5) {
        OK(eng_db_delete(db, key_of(kb, sizeof kb, "it", i), 0));
        ver[i] = -1;
    }
    OK(eng_db_flush(db));
    for (unsigned i = 0; i < N; i += 7) {
        size_t n = gen_value(vb, sizeof vb, i, 2, -1);
        OK(eng_db_put(db, key_of(kb, sizeof kb, "it", i), kv_slice_make(vb, n),
                      0));
        ver[i] = 2;
    }
    for (unsigned i = 3; i < N; i += 11) {
        OK(eng_db_delete(db, key_of(kb, sizeof kb, "it", i), 0));
        ver[i] = -1;
    }

    eng_iter *it = NULL;
    OK(eng_iter_new(db, NULL, &it));
    /* Writes after the iterator was created are not seen by it. */
    OK(eng_db_put(db, kv_slice_str("it000000a"), kv_slice_str("late"), 0));
    OK(eng_db_delete(db, key_of(kb, sizeof kb, "it", 2), 0));

    /* Full scan. */
    unsigned next = 0;
    for (eng_iter_seek_first(it); eng_iter_valid(it); eng_iter_next(it)) {
        while (next < N && ver[next] < 0) next++;
        cr_assert_lt(next, N, "iterator returned extra key '%.*s'",
                     (int)eng_iter_key(it).len,
                     (const char *)eng_iter_key(it).ptr);
        kv_slice want = key_of(kb, sizeof kb, "it", next);
        cr_assert(kv_slice_eq(eng_iter_key(it), want),
                  "expected key %s, got '%.*s'", kb, (int)eng_iter_key(it).len,
                  (const char *)eng_iter_key(it).ptr);
        size_t n = gen_value(vb, sizeof vb, next, (uint64_t)ver[next], -1);
        cr_assert(kv_slice_eq(eng_iter_value(it), kv_slice_make(vb, n)),
                  "wrong value for %s", kb);
        next++;
    }
    OK(eng_iter_status(it));
    while (next < N && ver[next] < 0) next++;
    cr_assert_eq(next, N, "iterator stopped early before key %u", next);

    /* Seeks: exact keys, between keys, before the first, past the last. */
    for (unsigned t = 0; t < N; t += 37) {
        char target[40];
        snprintf(target, sizeof target, "it%06u%s", t, t % 2 ? "" : "\x01");
        eng_iter_seek(it, kv_slice_str(target));
        unsigned want = t % 2 ? t : t + 1;
        while (want < N && ver[want] < 0) want++;
        for (int steps = 0; steps < 5 && want < N; steps++) {
            cr_assert(eng_iter_valid(it), "seek %s: invalid", target);
            cr_assert(kv_slice_eq(eng_iter_key(it),
                                  key_of(kb, sizeof kb, "it", want)),
                      "seek %s step %d: expected %s, got '%.*s'", target, steps,
                      kb, (int)eng_iter_key(it).len,
                      (const char *)eng_iter_key(it).ptr);
            eng_iter_next(it);
            want++;
            while (want < N && ver[want] < 0) want++;
        }
    }
    eng_iter_seek(it, kv_slice_str("a"));
    cr_assert(eng_iter_valid(it));
    unsigned first = 0;
    while (ver[first] < 0) first++;
    cr_assert(
        kv_slice_eq(eng_iter_key(it), key_of(kb, sizeof kb, "it", first)));
    eng_iter_seek(it, kv_slice_str("iu"));
    cr_assert(!eng_iter_valid(it), "seek past the last key is valid");
    OK(eng_iter_status(it));
    eng_iter_free(it);

    /* A new iterator sees the later writes. */
    OK(eng_iter_new(db, NULL, &it));
    eng_iter_seek(it, kv_slice_str("it000000\x01"));
    cr_assert(eng_iter_valid(it));
    cr_assert(kv_slice_eq(eng_iter_key(it), kv_slice_str("it000000a")));
    cr_assert(kv_slice_eq(eng_iter_value(it), kv_slice_str("late")));
    eng_iter_free(it);
    OK(eng_db_close(db));
}

/* An iterator keeps reading the tables it started on after a compaction
 * has replaced them (and the table cache is too small to hold them). */
Test(db, iterator_outlives_compaction_of_its_tables) {
    eng_options o;
    small_opts(&o, ENG_COMPACT_LEVELED);
    o.max_open_tables = 2;
    eng_db *db = open_db(&o);
    enum { N = 2000 };
    char kb[32];
    uint8_t vb[1024];
    for (unsigned i = 0; i < N; i++) {
        size_t n = gen_value(vb, sizeof vb, i, 0, 100);
        OK(eng_db_put(db, key_of(kb, sizeof kb, "pin", i), kv_slice_make(vb, n),
                      0));
    }
    OK(eng_db_flush(db));
    eng_iter *it = NULL;
    OK(eng_iter_new(db, NULL, &it));
    eng_iter_seek_first(it); /* positioned before the tables go away */
    for (unsigned i = 0; i < N; i++) {
        kv_slice k = key_of(kb, sizeof kb, "pin", i);
        if (i % 2) {
            OK(eng_db_delete(db, k, 0));
        } else {
            size_t n = gen_value(vb, sizeof vb, i, 1, 100);
            OK(eng_db_put(db, k, kv_slice_make(vb, n), 0));
        }
    }
    OK(eng_db_flush(db));
    OK(eng_db_compact_range(db, NULL, NULL));
    OK(eng_db_compact_range(db, NULL, NULL));

    unsigned i = 0;
    for (; eng_iter_valid(it); eng_iter_next(it), i++) {
        cr_assert_lt(i, N, "old iterator has extra entries");
        cr_assert(
            kv_slice_eq(eng_iter_key(it), key_of(kb, sizeof kb, "pin", i)),
            "old iterator: entry %u is '%.*s'", i, (int)eng_iter_key(it).len,
            (const char *)eng_iter_key(it).ptr);
        size_t n = gen_value(vb, sizeof vb, i, 0, 100);
        cr_assert(kv_slice_eq(eng_iter_value(it), kv_slice_make(vb, n)),
                  "old iterator: wrong value at entry %u", i);
    }
    OK(eng_iter_status(it));
    cr_assert_eq(i, N, "old iterator saw %u of %u entries", i, N);
    eng_iter_free(it);

    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            OK(eng_db_close(db));
            db = open_db(&o);
        }
        for (unsigned j = 0; j < N; j++) {
            kv_slice k = key_of(kb, sizeof kb, "pin", j);
            if (j % 2) {
                expect_absent(db, NULL, k);
            } else {
                size_t n = gen_value(vb, sizeof vb, j, 1, 100);
                expect_value(db, NULL, k, vb, n);
            }
        }
    }
    OK(eng_db_close(db));
}

Test(db, iterator_on_empty_store) {
    eng_db *db = open_default();
    eng_iter *it = NULL;
    OK(eng_iter_new(db, NULL, &it));
    eng_iter_seek_first(it);
    cr_assert(!eng_iter_valid(it));
    eng_iter_seek(it, kv_slice_str("x"));
    cr_assert(!eng_iter_valid(it));
    OK(eng_iter_status(it));
    eng_iter_free(it);
    /* Only deleted keys: still empty. */
    OK(put_str(db, "x", "1"));
    OK(eng_db_flush(db));
    OK(eng_db_delete(db, kv_slice_str("x"), 0));
    expect_iter(db, NULL, NULL, 0);
    OK(eng_db_close(db));
}

/* ---- persistence ---- */

static void reopen_keeps_everything(eng_sync_mode mode) {
    eng_options o;
    eng_options_init(&o);
    o.sync = mode;
    char kb[32];
    uint8_t vb[1024];
    eng_db *db = open_db(&o);
    enum { N = 600 };
    for (unsigned i = 0; i < N; i++) {
        size_t n = gen_value(vb, sizeof vb, i, mode, -1);
        OK(eng_db_put(db, key_of(kb, sizeof kb, "p", i), kv_slice_make(vb, n),
                      ENG_WF_DEFAULT));
        if (i == N / 2) OK(eng_db_flush(db));
    }
    for (unsigned i = 0; i < N; i += 10)
        OK(eng_db_delete(db, key_of(kb, sizeof kb, "p", i), ENG_WF_DEFAULT));
    OK(eng_db_close(db));

    for (int round = 0; round < 2; round++) {
        db = open_db(&o);
        for (unsigned i = 0; i < N; i++) {
            kv_slice k = key_of(kb, sizeof kb, "p", i);
            if (i % 10 == 0) {
                expect_absent(db, NULL, k);
            } else {
                size_t n = gen_value(vb, sizeof vb, i, mode, -1);
                expect_value(db, NULL, k, vb, n);
            }
        }
        OK(eng_db_close(db));
    }
}

Test(db, reopen_sync_none) {
    reopen_keeps_everything(ENG_SYNC_NONE);
}
Test(db, reopen_sync_group) {
    reopen_keeps_everything(ENG_SYNC_GROUP);
}
Test(db, reopen_sync_always) {
    reopen_keeps_everything(ENG_SYNC_ALWAYS);
}

Test(db, write_flags_override_sync_mode) {
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    eng_db *db = open_db(&o);
    eng_stats s0, s1, s2, s3;
    char kb[32];
    OK(eng_db_stats(db, &s0));
    for (unsigned i = 0; i < 20; i++)
        OK(eng_db_put(db, key_of(kb, sizeof kb, "f", i), kv_slice_str("v"),
                      ENG_WF_DEFAULT));
    OK(eng_db_stats(db, &s1));
    cr_assert_lt(s1.syncs - s0.syncs, 20,
                 "sync NONE store fsynced every write (%llu syncs)",
                 (unsigned long long)(s1.syncs - s0.syncs));
    for (unsigned i = 0; i < 20; i++)
        OK(eng_db_put(db, key_of(kb, sizeof kb, "g", i), kv_slice_str("v"),
                      ENG_WF_SYNC_ALWAYS));
    OK(eng_db_delete(db, kv_slice_str("f000000"), ENG_WF_SYNC_ALWAYS));
    OK(eng_db_stats(db, &s2));
    cr_assert_geq(s2.syncs - s1.syncs, 21,
                  "SYNC_ALWAYS writes: %llu syncs for 21 writes",
                  (unsigned long long)(s2.syncs - s1.syncs));
    OK(eng_db_put(db, kv_slice_str("h"), kv_slice_str("v"), ENG_WF_SYNC_GROUP));
    OK(eng_db_stats(db, &s3));
    cr_assert_geq(s3.syncs - s2.syncs, 1, "SYNC_GROUP write not synced");

    /* An unknown flag is a misuse: -EINVAL and nothing written. */
    EXPECT_RC(eng_db_put(db, kv_slice_str("bad"), kv_slice_str("v"), 99),
              -EINVAL);
    expect_absent(db, NULL, kv_slice_str("bad"));
    OK(eng_db_close(db));

    /* A store in GROUP mode honours SYNC_NONE for one write. */
    o.sync = ENG_SYNC_GROUP;
    db = open_db(&o);
    OK(eng_db_stats(db, &s0));
    for (unsigned i = 0; i < 20; i++)
        OK(eng_db_put(db, key_of(kb, sizeof kb, "n", i), kv_slice_str("v"),
                      ENG_WF_SYNC_NONE));
    OK(eng_db_stats(db, &s1));
    cr_assert_lt(s1.syncs - s0.syncs, 20);
    expect_str(db, NULL, "g000019", "v");
    expect_absent(db, NULL, kv_slice_str("f000000"));
    expect_str(db, NULL, "f000001", "v");
    OK(eng_db_close(db));
}

/* ---- open options and locking ---- */

Test(db, create_if_missing_and_error_if_exists) {
    eng_options o;
    eng_options_init(&o);
    eng_db *db = NULL;
    char sub[PATH_MAX + 8];
    snprintf(sub, sizeof sub, "%s/new", g_dir);

    o.create_if_missing = false;
    EXPECT_RC(eng_db_open(sub, &o, &db), -ENOENT);
    cr_assert_null(db);
    EXPECT_RC(eng_db_open(g_dir, &o, &db), -ENOENT); /* empty directory */
    cr_assert_null(db);

    /* create_if_missing makes the directory as well as the store. */
    o.create_if_missing = true;
    OK(eng_db_open(sub, &o, &db));
    OK(eng_db_put(db, kv_slice_str("k"), kv_slice_str("v"), 0));
    OK(eng_db_close(db));
    db = NULL;

    o.error_if_exists = true;
    EXPECT_RC(eng_db_open(sub, &o, &db), -EEXIST);
    cr_assert_null(db);
    o.error_if_exists = false;
    o.create_if_missing = false;
    OK(eng_db_open(sub, &o, &db));
    expect_str(db, NULL, "k", "v");
    OK(eng_db_close(db));
}

Test(db, second_open_is_busy) {
    eng_db *db = open_default();
    OK(put_str(db, "k", "v"));
    eng_options o;
    eng_options_init(&o);
    eng_db *db2 = NULL;
    EXPECT_RC(eng_db_open(g_dir, &o, &db2), KV_EBUSY);
    cr_assert_null(db2);
    /* Another process is refused as well. */
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        eng_db *db3 = NULL;
        _exit(eng_db_open(g_dir, &o, &db3) == KV_EBUSY ? 0 : 1);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "a second process could open a store that is in use");
    /* The failed open disturbed nothing. */
    expect_str(db, NULL, "k", "v");
    OK(put_str(db, "k2", "v2"));
    OK(eng_db_close(db));
    db = open_default();
    expect_str(db, NULL, "k", "v");
    expect_str(db, NULL, "k2", "v2");
    OK(eng_db_close(db));
}

/* ---- flush, compaction, stats ---- */

static void check_level_sum(const eng_stats *s) {
    uint64_t sum = 0, bytes = 0;
    for (int l = 0; l < ENG_MAX_LEVELS; l++) {
        cr_assert_geq(s->level_tables[l], 0);
        sum += (uint64_t)s->level_tables[l];
        bytes += s->level_bytes[l];
    }
    cr_assert_eq(sum, s->live_tables, "level tables %llu != live tables %llu",
                 (unsigned long long)sum, (unsigned long long)s->live_tables);
    cr_assert_eq(
        bytes, s->live_table_bytes, "level bytes %llu != live table bytes %llu",
        (unsigned long long)bytes, (unsigned long long)s->live_table_bytes);
}

Test(db, stats_track_writes_flushes_and_bloom) {
    eng_db *db = open_default();
    eng_stats s;
    OK(eng_db_stats(db, &s));
    cr_assert_eq(s.user_bytes_written, 0);
    cr_assert_eq(s.live_tables, 0);
    cr_assert_eq(s.bg_error, 0);

    char kb[32];
    uint8_t vb[1024];
    uint64_t user = 0;
    for (unsigned i = 0; i < 1000; i++) {
        kv_slice k = key_of(kb, sizeof kb, "s", i * 2);
        size_t n = gen_value(vb, sizeof vb, i, 0, 100);
        OK(eng_db_put(db, k, kv_slice_make(vb, n), 0));
        user += k.len + n;
    }
    OK(eng_db_stats(db, &s));
    cr_assert_eq(s.user_bytes_written, user, "user bytes %llu, wrote %llu",
                 (unsigned long long)s.user_bytes_written,
                 (unsigned long long)user);
    cr_assert_geq(s.wal_bytes_written, user);
    cr_assert_geq(s.last_sequence, 1000);
    cr_assert_gt(s.memtable_bytes, 0);
    cr_assert_eq(s.flush_bytes_written, 0);
    uint64_t flushes0 = s.flushes;

    OK(eng_db_flush(db));
    OK(eng_db_stats(db, &s));
    cr_assert_gt(s.flush_bytes_written, 0);
    cr_assert_gt(s.flushes, flushes0);
    cr_assert_geq(s.live_tables, 1);
    cr_assert_gt(s.live_table_bytes, 0);
    cr_assert_gt(s.write_amp, 0.0);
    check_level_sum(&s);

    /* Absent keys within the table's range are mostly answered by the
     * filter without reading a block. */
    uint64_t gets0 = s.gets, neg0 = s.bloom_negative;
    for (unsigned i = 0; i < 500; i++)
        expect_absent(db, NULL, key_of(kb, sizeof kb, "s", i * 4 + 1));
    OK(eng_db_stats(db, &s));
    cr_assert_geq(s.gets - gets0, 500);
    cr_assert_gt(s.bloom_negative - neg0, 400,
                 "only %llu of 500 absent keys were filter-negative",
                 (unsigned long long)(s.bloom_negative - neg0));
    cr_assert_geq(s.bloom_checked, s.bloom_negative);

    kv_buf text = KV_BUF_INIT;
    OK(eng_db_stats_format(db, &text));
    cr_assert_gt(text.len, 0);
    kv_buf_release(&text);
    OK(eng_db_close(db));
}

Test(db, flush_and_compact_range) {
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    eng_db *db = open_db(&o);
    char kb[32];
    uint8_t vb[1024];
    /* Four overlapping tables. */
    for (int t = 0; t < 4; t++) {
        for (unsigned i = 0; i < 500; i++) {
            size_t n = gen_value(vb, sizeof vb, i, (uint64_t)t, -1);
            OK(eng_db_put(db, key_of(kb, sizeof kb, "c", i * 4 + (unsigned)t),
                          kv_slice_make(vb, n), 0));
            if (t == 3 && i % 3 == 0) {
                OK(eng_db_put(db, key_of(kb, sizeof kb, "c", i * 4),
                              kv_slice_make(vb, n), 0));
            }
        }
        OK(eng_db_flush(db));
    }
    eng_stats s;
    OK(eng_db_stats(db, &s));
    check_level_sum(&s);
    uint64_t comp0 = s.compactions;

    kv_slice lo = kv_slice_str("c000400"), hi = kv_slice_str("c000800");
    OK(eng_db_compact_range(db, &lo, &hi));
    OK(eng_db_compact_range(db, NULL, NULL));
    OK(eng_db_stats(db, &s));
    check_level_sum(&s);
    cr_assert_gt(s.compactions, comp0);
    cr_assert_gt(s.compact_bytes_written, 0);
    cr_assert_gt(s.compact_bytes_read, 0);
    /* Leveled: a full compaction leaves every table in one level below L0. */
    cr_assert_eq(s.level_tables[0], 0);
    int levels = 0;
    for (int l = 0; l < ENG_MAX_LEVELS; l++) levels += s.level_tables[l] > 0;
    cr_assert_eq(levels, 1, "tables in %d levels after a full compaction",
                 levels);

    for (int t = 0; t < 4; t++) {
        for (unsigned i = 0; i < 500; i++) {
            unsigned id = i * 4 + (unsigned)t;
            uint64_t ver = (uint64_t)t;
            unsigned src = i;
            if (t == 0 && i % 3 == 0) ver = 3; /* overwritten in round 3 */
            size_t n = gen_value(vb, sizeof vb, src, ver, -1);
            expect_value(db, NULL, key_of(kb, sizeof kb, "c", id), vb, n);
        }
    }
    OK(eng_db_close(db));
}

/* Write a few MB with overwrites and deletes through a tiny memtable so that
 * dozens of flushes and compactions run, then check every key, compact
 * fully, reopen, and check again. */
static void churn(eng_compaction_style style) {
    eng_options o;
    small_opts(&o, style);
    eng_db *db = open_db(&o);
    enum { N = 2000, WRITES = 9000 };
    static int16_t ver[N];
    memset(ver, -1, sizeof ver);
    char kb[32];
    uint8_t vb[1024];
    uint64_t rng = 88172645463325252ull;
    for (int w = 0; w < WRITES; w++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        unsigned id = (unsigned)(rng % N);
        kv_slice k = key_of(kb, sizeof kb, "ch", id);
        if (rng % 10 == 0) {
            OK(eng_db_delete(db, k, 0));
            ver[id] = -1;
        } else {
            size_t n = gen_value(vb, sizeof vb, id, (uint64_t)w, -1);
            OK(eng_db_put(db, k, kv_slice_make(vb, n), 0));
            ver[id] = (int16_t)w;
        }
    }
    eng_stats s;
    OK(eng_db_stats(db, &s));
    check_level_sum(&s);
    cr_assert_geq(s.flushes, 10, "only %llu flushes",
                  (unsigned long long)s.flushes);
    cr_assert_geq(s.compactions, 1, "no compaction ran");
    cr_assert_eq(s.bg_error, 0, "background error %d", s.bg_error);

    for (int pass = 0; pass < 3; pass++) {
        if (pass == 1) OK(eng_db_compact_range(db, NULL, NULL));
        if (pass == 2) {
            OK(eng_db_close(db));
            db = open_db(&o);
        }
        for (unsigned id = 0; id < N; id++) {
            kv_slice k = key_of(kb, sizeof kb, "ch", id);
            if (ver[id] < 0) {
                expect_absent(db, NULL, k);
            } else {
                size_t n = gen_value(vb, sizeof vb, id, (uint64_t)ver[id], -1);
                expect_value(db, NULL, k, vb, n);
            }
        }
        OK(eng_db_stats(db, &s));
        check_level_sum(&s);
    }
    OK(eng_db_close(db));
}

Test(db, leveled_compaction_churn) {
    churn(ENG_COMPACT_LEVELED);
}
Test(db, tiered_compaction_churn) {
    churn(ENG_COMPACT_TIERED);
}

Test(db, tombstones_survive_compaction_and_reopen) {
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    eng_db *db = open_db(&o);
    char kb[32];
    uint8_t vb[1024];
    enum { N = 2000 };
    for (unsigned i = 0; i < N; i++) {
        size_t n = gen_value(vb, sizeof vb, i, 0, 200);
        OK(eng_db_put(db, key_of(kb, sizeof kb, "t", i), kv_slice_make(vb, n),
                      0));
    }
    OK(eng_db_flush(db));
    OK(eng_db_compact_range(db, NULL, NULL)); /* the puts sit in a low level */
    for (unsigned i = 1; i < N; i += 2)
        OK(eng_db_delete(db, key_of(kb, sizeof kb, "t", i), 0));
    OK(eng_db_flush(db));
    OK(eng_db_compact_range(db, NULL, NULL));
    /* Deleted, then written again: the new value must not be shadowed. */
    size_t n7 = gen_value(vb, sizeof vb, 7, 1, 50);
    OK(eng_db_put(db, key_of(kb, sizeof kb, "t", 7), kv_slice_make(vb, n7), 0));

    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            OK(eng_db_close(db));
            db = open_db(&o);
            OK(eng_db_compact_range(db, NULL, NULL));
        }
        unsigned count = 0;
        eng_iter *it = NULL;
        OK(eng_iter_new(db, NULL, &it));
        for (eng_iter_seek_first(it); eng_iter_valid(it); eng_iter_next(it))
            count++;
        OK(eng_iter_status(it));
        eng_iter_free(it);
        cr_assert_eq(count, N / 2 + 1, "pass %d: %u keys, expected %u", pass,
                     count, N / 2 + 1);
        for (unsigned i = 0; i < N; i++) {
            kv_slice k = key_of(kb, sizeof kb, "t", i);
            if (i == 7) {
                size_t n = gen_value(vb, sizeof vb, 7, 1, 50);
                expect_value(db, NULL, k, vb, n);
            } else if (i % 2) {
                expect_absent(db, NULL, k);
            } else {
                size_t n = gen_value(vb, sizeof vb, i, 0, 200);
                expect_value(db, NULL, k, vb, n);
            }
        }
    }
    OK(eng_db_close(db));
}

/* ---- concurrency ---- */

enum { WR_THREADS = 8, WR_PUTS = 5000 };

struct writer_arg {
    eng_db *db;
    unsigned id;
    atomic_int *errors;
};

static void *writer(void *p) {
    struct writer_arg *a = p;
    char prefix[8], kb[32];
    uint8_t vb[128];
    snprintf(prefix, sizeof prefix, "w%u-", a->id);
    for (unsigned i = 0; i < WR_PUTS; i++) {
        size_t n = gen_value(vb, sizeof vb, a->id * WR_PUTS + i, 0, 40);
        if (eng_db_put(a->db, key_of(kb, sizeof kb, prefix, i),
                       kv_slice_make(vb, n), ENG_WF_SYNC_GROUP) != 0)
            atomic_fetch_add(a->errors, 1);
    }
    return NULL;
}

static void check_writers(eng_db *db) {
    char prefix[8], kb[32];
    uint8_t vb[128];
    for (unsigned t = 0; t < WR_THREADS; t++) {
        snprintf(prefix, sizeof prefix, "w%u-", t);
        for (unsigned i = 0; i < WR_PUTS; i++) {
            size_t n = gen_value(vb, sizeof vb, t * WR_PUTS + i, 0, 40);
            expect_value(db, NULL, key_of(kb, sizeof kb, prefix, i), vb, n);
        }
    }
}

Test(db, concurrent_group_commit_writers) {
    eng_options o;
    eng_options_init(&o);
    o.memtable_bytes = 512 * 1024; /* flushes happen under the writers */
    eng_db *db = open_db(&o);
    atomic_int errors = 0;
    pthread_t th[WR_THREADS];
    struct writer_arg args[WR_THREADS];
    for (unsigned t = 0; t < WR_THREADS; t++) {
        args[t] = (struct writer_arg){db, t, &errors};
        cr_assert_eq(pthread_create(&th[t], NULL, writer, &args[t]), 0);
    }
    for (unsigned t = 0; t < WR_THREADS; t++) pthread_join(th[t], NULL);
    cr_assert_eq(atomic_load(&errors), 0, "%d puts failed",
                 atomic_load(&errors));
    eng_stats s;
    OK(eng_db_stats(db, &s));
    cr_assert_geq(s.last_sequence, WR_THREADS * WR_PUTS);
    cr_assert_gt(s.syncs, 0);
    cr_log_info("%u group-committed puts took %llu fsyncs",
                WR_THREADS * WR_PUTS, (unsigned long long)s.syncs);
    check_writers(db);
    OK(eng_db_close(db));
    db = open_db(&o);
    check_writers(db);
    OK(eng_db_close(db));
}
