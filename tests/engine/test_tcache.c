/*
 * Tests of the table cache (eng_options.max_open_tables) through the public
 * API: a store with many more tables than the cache holds still answers
 * gets, iterators and compactions correctly; the descriptors the process
 * holds stay bounded by the cache size (counted in /proc/self/fd); a table
 * damaged while it is closed is reported as corrupt when it is next opened;
 * a table that failed to open is retried.
 *
 * Each test makes its store in its own mkdtemp directory, removed by the
 * fixture. Values are derived from (key, version), so the expected state
 * is an array of versions (0: absent). Helper threads never assert; they
 * count failures for the main thread to check.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[PATH_MAX];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-tcache");
}

static void teardown(void) {
    if (g_dir[0]) rm_tree(g_dir);
    g_dir[0] = '\0';
}

TestSuite(tcache, .init = setup, .fini = teardown, .timeout = 120);

/* Descriptors besides open tables that a quiet store may hold: the WAL,
 * the MANIFEST and the LOCK file, plus one spare. */
#define STORE_FDS 4

enum { NKEYS = 2000, VALUE_LEN = 100 };

/* Descriptors the process has open now. */
static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d, "cannot list /proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

/* Many small tables, all left in level 1 by a full compaction (the level
 * target is far above the data, so nothing compacts on its own after). */
static void tc_opts(eng_options *o, int max_open_tables) {
    eng_options_init(o);
    o->sync = ENG_SYNC_NONE;
    o->memtable_bytes = 8 * 1024;
    o->table_bytes = 4096;
    o->block_bytes = 512;
    o->compression_level = 0;
    o->cache_bytes = 64 * 1024;
    o->l0_compaction_trigger = 4;
    o->level1_bytes = 64u << 20;
    o->max_open_tables = max_open_tables;
}

static kv_slice key_of(char *buf, int i) {
    int n = snprintf(buf, 16, "k%06d", i);
    return kv_slice_make(buf, (size_t)n);
}

/* Printable bytes so a failure message can show them. */
static kv_slice value_of(char *buf, int i, int version) {
    uint64_t s = mix64((uint64_t)i * 1000003u + (uint64_t)version);
    for (int j = 0; j < VALUE_LEN; j++) {
        if (j % 8 == 0) s = mix64(s + (uint64_t)j);
        buf[j] = (char)('a' + (s >> (8 * (j % 8))) % 26);
    }
    return kv_slice_make(buf, VALUE_LEN);
}

static eng_db *open_db(const eng_options *o) {
    eng_db *db = NULL;
    OK(eng_db_open(g_dir, o, &db));
    return db;
}

static void put(eng_db *db, int i, int version) {
    char k[16], v[VALUE_LEN];
    OK(eng_db_put(db, key_of(k, i), value_of(v, i, version), ENG_WF_DEFAULT));
}

/* Get key i: 0 with the value checked against version (0: must be
 * absent), or the error the get returned (KV_ENOTFOUND never escapes for
 * an absent key that was expected). */
static int get_check(eng_db *db, const eng_snapshot *snap, int i, int version) {
    char k[16], v[VALUE_LEN];
    kv_buf got = KV_BUF_INIT;
    int rc = eng_db_get(db, snap, key_of(k, i), &got);
    if (version == 0 && rc == KV_ENOTFOUND)
        rc = 0;
    else if (rc == 0) {
        cr_assert_neq(version, 0, "key %d: found, expected absent", i);
        cr_assert(kv_slice_eq(kv_buf_slice(&got), value_of(v, i, version)),
                  "key %d: wrong value (expected version %d)", i, version);
    }
    kv_buf_release(&got);
    return rc;
}

/* Write NKEYS keys at version 1 and compact them into level 1. */
static void fill_and_compact(eng_db *db) {
    for (int i = 0; i < NKEYS; i++) put(db, i, 1);
    OK(eng_db_compact_range(db, NULL, NULL));
}

static eng_stats stats_of(eng_db *db) {
    eng_stats s;
    OK(eng_db_stats(db, &s));
    return s;
}

/* Check every key with gets and one full iteration against ver. */
static void check_all(eng_db *db, const int *ver) {
    for (int i = 0; i < NKEYS; i++) {
        int rc = get_check(db, NULL, i, ver[i]);
        cr_assert_eq(rc, 0, "get key %d: %s", i, kv_strerror(rc));
    }
    eng_iter *it = NULL;
    OK(eng_iter_new(db, NULL, &it));
    eng_iter_seek_first(it);
    char k[16], v[VALUE_LEN];
    for (int i = 0; i < NKEYS; i++) {
        if (!ver[i]) continue;
        cr_assert(eng_iter_valid(it), "iterator ended before key %d: %s", i,
                  kv_strerror(eng_iter_status(it)));
        cr_assert(kv_slice_eq(eng_iter_key(it), key_of(k, i)),
                  "iterator: key '%.*s', expected key %d",
                  (int)eng_iter_key(it).len, (const char *)eng_iter_key(it).ptr,
                  i);
        cr_assert(kv_slice_eq(eng_iter_value(it), value_of(v, i, ver[i])),
                  "iterator: key %d has the wrong value", i);
        eng_iter_next(it);
    }
    cr_assert(!eng_iter_valid(it), "iterator has extra keys");
    OK(eng_iter_status(it));
    eng_iter_free(it);
}

/* ---- options ---- */

Test(tcache, zero_max_open_tables_is_rejected) {
    eng_options o;
    tc_opts(&o, 0);
    eng_db *db = (eng_db *)1;
    cr_assert_eq(eng_db_open(g_dir, &o, &db), -EINVAL);
    cr_assert_null(db);
    char cur[PATH_MAX + 16];
    snprintf(cur, sizeof cur, "%s/CURRENT", g_dir);
    cr_assert_neq(access(cur, F_OK), 0, "a store was created");
}

/* ---- gets ---- */

Test(tcache, gets_are_correct_and_descriptors_bounded) {
    int base = count_fds();
    eng_options o;
    tc_opts(&o, 3);
    eng_db *db = open_db(&o);
    fill_and_compact(db);
    eng_stats s = stats_of(db);
    cr_assert_geq(s.live_tables, 20, "only %llu tables",
                  (unsigned long long)s.live_tables);
    eng_db_close(db);

    /* Reopening verifies every table, one at a time through the cache. */
    db = open_db(&o);
    cr_assert_leq(count_fds() - base, 3 + STORE_FDS);
    int most = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NKEYS; i++) {
            /* Keys from both ends so every get may need another table. */
            int k = i % 2 ? i : NKEYS - 1 - i;
            int rc = get_check(db, NULL, k, 1);
            cr_assert_eq(rc, 0, "get key %d: %s", k, kv_strerror(rc));
            if (i % 25 == 0) most = KV_MAX(most, count_fds() - base);
        }
    cr_assert_eq(get_check(db, NULL, NKEYS + 5, 0), 0);
    cr_assert_leq(most, 3 + STORE_FDS, "%d descriptors open for 3 tables",
                  most);
    uint64_t meta3 = stats_of(db).table_meta_bytes;
    cr_assert_gt(meta3, 0);
    eng_db_close(db);
    cr_assert_eq(count_fds(), base, "descriptors leaked by close");

    /* The same reads with a cache holding every table: the count above
     * really measures open tables, and so does table_meta_bytes. */
    tc_opts(&o, 1000);
    db = open_db(&o);
    for (int i = 0; i < NKEYS; i++) cr_assert_eq(get_check(db, NULL, i, 1), 0);
    cr_assert_geq(count_fds() - base, (int)s.live_tables);
    uint64_t meta_all = stats_of(db).table_meta_bytes;
    cr_assert_lt(meta3 * 4, meta_all,
                 "meta bytes %llu with 3 tables open, %llu with all",
                 (unsigned long long)meta3, (unsigned long long)meta_all);
    eng_db_close(db);
}

typedef struct reader_arg {
    eng_db *db;
    int seed;
    atomic_int *failures;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    char k[16], v[VALUE_LEN];
    kv_buf got = KV_BUF_INIT;
    uint64_t s = (uint64_t)a->seed;
    for (int n = 0; n < 3000; n++) {
        s = mix64(s + 1);
        int i = (int)(s % NKEYS);
        int rc = eng_db_get(a->db, NULL, key_of(k, i), &got);
        if (rc != 0 || !kv_slice_eq(kv_buf_slice(&got), value_of(v, i, 1)))
            atomic_fetch_add(a->failures, 1);
    }
    kv_buf_release(&got);
    return NULL;
}

/* Readers racing each other (same tables opened, evicted and reopened)
 * and a writer whose flushes and compactions add and remove tables. */
Test(tcache, concurrent_gets_while_compacting) {
    eng_options o;
    tc_opts(&o, 3);
    eng_db *db = open_db(&o);
    fill_and_compact(db);
    atomic_int failures = 0;
    reader_arg a[2] = {{db, 1, &failures}, {db, 2, &failures}};
    pthread_t th[2];
    for (int t = 0; t < 2; t++)
        cr_assert_eq(pthread_create(&th[t], NULL, reader, &a[t]), 0);
    /* Keys above NKEYS: the readers' keys keep version 1. */
    for (int i = 0; i < 1500; i++) put(db, NKEYS + i, 1);
    OK(eng_db_compact_range(db, NULL, NULL));
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    cr_assert_eq(atomic_load(&failures), 0, "%d gets failed or were wrong",
                 atomic_load(&failures));
    for (int i = 0; i < 1500; i++)
        cr_assert_eq(get_check(db, NULL, NKEYS + i, 1), 0);
    eng_db_close(db);
}

/* ---- iterators ---- */

/* Expect it at key i with version ver (the key's current entry). */
static void expect_at(eng_iter *it, int i, int ver, const char *who) {
    char k[16], v[VALUE_LEN];
    cr_assert(eng_iter_valid(it), "%s: ended before key %d: %s", who, i,
              kv_strerror(eng_iter_status(it)));
    cr_assert(kv_slice_eq(eng_iter_key(it), key_of(k, i)),
              "%s: key '%.*s', expected key %d", who, (int)eng_iter_key(it).len,
              (const char *)eng_iter_key(it).ptr, i);
    cr_assert(kv_slice_eq(eng_iter_value(it), value_of(v, i, ver)),
              "%s: key %d has the wrong value", who, i);
}

/* Advance it to the next key present in ver after position *pos. */
static void step(eng_iter *it, const int *ver, int *pos, const char *who) {
    eng_iter_next(it);
    do (*pos)++;
    while (*pos < NKEYS && !ver[*pos]);
    if (*pos < NKEYS)
        expect_at(it, *pos, ver[*pos], who);
    else {
        cr_assert(!eng_iter_valid(it), "%s: extra keys", who);
        OK(eng_iter_status(it));
    }
}

Test(tcache, several_iterators_open_at_once) {
    static int v1[NKEYS], v2[NKEYS];
    int base = count_fds();
    eng_options o;
    tc_opts(&o, 3);
    eng_db *db = open_db(&o);
    fill_and_compact(db);
    int tables_before = (int)stats_of(db).live_tables;
    for (int i = 0; i < NKEYS; i++) v1[i] = v2[i] = 1;

    eng_snapshot *snap = NULL;
    OK(eng_db_snapshot(db, &snap));
    eng_iter *a = NULL, *b = NULL, *c = NULL;
    OK(eng_iter_new(db, NULL, &a));
    eng_iter_seek_first(a);
    expect_at(a, 0, 1, "a");

    /* Overwrite every third key, delete every seventh, and flush: b and
     * c are created on the newer version, b on the older snapshot. */
    for (int i = 0; i < NKEYS; i++) {
        char k[16];
        if (i % 7 == 0) {
            OK(eng_db_delete(db, key_of(k, i), ENG_WF_DEFAULT));
            v2[i] = 0;
        } else if (i % 3 == 0) {
            put(db, i, 2);
            v2[i] = 2;
        }
    }
    OK(eng_db_flush(db));
    OK(eng_iter_new(db, snap, &b));
    OK(eng_iter_new(db, NULL, &c));
    eng_iter_seek_first(b);
    expect_at(b, 0, 1, "b");
    eng_iter_seek_first(c);
    expect_at(c, 1, 1, "c");

    /* Walk the three in lock step; halfway, compact everything, which
     * replaces the tables the iterators are reading. */
    int pa = 0, pb = 0, pc = 1;
    for (int n = 0; pa < NKEYS || pb < NKEYS || pc < NKEYS; n++) {
        if (pa < NKEYS) step(a, v1, &pa, "a");
        if (pb < NKEYS) step(b, v1, &pb, "b");
        if (pc < NKEYS) step(c, v2, &pc, "c");
        if (n == NKEYS / 2) OK(eng_db_compact_range(db, NULL, NULL));
    }
    /* Iterators pin the tables they read, so the cache holds more than 3
     * open now, but each table once however many iterators read it. */
    int tables_after = (int)stats_of(db).live_tables;
    int open_now = count_fds() - base;
    cr_assert_leq(open_now, tables_before + 1 + tables_after + STORE_FDS,
                  "%d descriptors for %d + %d tables", open_now, tables_before,
                  tables_after);

    /* A seek repositions within pinned tables. */
    char k[16];
    eng_iter_seek(a, key_of(k, 777));
    expect_at(a, 777, 1, "a after seek");
    eng_iter_seek(c, key_of(k, 777)); /* 777 = 7 * 111: deleted */
    expect_at(c, 778, 1, "c after seek");

    eng_iter_free(a);
    eng_iter_free(b);
    eng_iter_free(c);
    eng_db_snapshot_release(db, snap);
    /* The pins are gone: back within the cache's bound. */
    cr_assert_leq(count_fds() - base, 3 + STORE_FDS);
    check_all(db, v2);
    cr_assert_leq(count_fds() - base, 3 + STORE_FDS);
    eng_db_close(db);
    cr_assert_eq(count_fds(), base);
}

/* ---- compactions ---- */

/* Rounds of overwrites and deletes with background compactions, checked
 * after each; the store must at some point hold at least min_tables. */
static void rounds_of_changes(eng_compaction_style style, int min_tables) {
    static int ver[NKEYS];
    int base = count_fds();
    eng_options o;
    tc_opts(&o, 3);
    o.style = style;
    o.tier_min = 6;
    eng_db *db = open_db(&o);
    for (int i = 0; i < NKEYS; i++) put(db, i, ver[i] = 1);
    uint64_t s = 42;
    int most_tables = 0;
    for (int r = 2; r <= 5; r++) {
        /* Background compactions run while these land. */
        for (int n = 0; n < NKEYS / 2; n++) {
            s = mix64(s + 1);
            int i = (int)(s % NKEYS);
            char k[16];
            if (s % 5 == 0) {
                OK(eng_db_delete(db, key_of(k, i), ENG_WF_DEFAULT));
                ver[i] = 0;
            } else {
                put(db, i, ver[i] = r);
            }
        }
        check_all(db, ver);
        most_tables = KV_MAX(most_tables, (int)stats_of(db).live_tables);
    }
    OK(eng_db_compact_range(db, NULL, NULL));
    eng_stats st = stats_of(db);
    cr_assert_gt(st.compactions, 0);
    /* Many more tables than the cache holds were read by compactions. */
    cr_assert_geq(most_tables, min_tables, "only %d tables", most_tables);
    check_all(db, ver);
    eng_db_close(db);

    db = open_db(&o);
    check_all(db, ver);
    cr_assert_leq(count_fds() - base, 3 + STORE_FDS);
    eng_db_close(db);
}

Test(tcache, compactions_leveled_keep_data) {
    rounds_of_changes(ENG_COMPACT_LEVELED, 20);
}

/* Tiered keeps few tables (a handful of runs), still twice the cache. */
Test(tcache, compactions_tiered_keep_data) {
    rounds_of_changes(ENG_COMPACT_TIERED, 6);
}

/* ---- memory ---- */

/* Regression: the index and filter blocks of open tables were held outside
 * the block cache, so a store with many tables open went past its memtable
 * + cache budget (120 MiB against 96 MiB at 4 KiB values in the benchmark).
 * Read with pread, a table's copies are now charged to the cache: the
 * tables kept open are those whose index and filter fit in it, and a
 * table's charge goes when it closes. A mapped table reads them in place
 * and charges nothing. */
Test(tcache, index_and_filter_blocks_are_charged_to_the_cache) {
    static int ver[NKEYS];
    for (int i = 0; i < NKEYS; i++) ver[i] = 1;
    int base = count_fds();
    eng_options o;
    tc_opts(&o, 1000);
    o.mmap_reads = false;
    o.cache_bytes = 1u << 20;
    eng_db *db = open_db(&o);
    fill_and_compact(db);
    eng_db_close(db);

    /* A cache that holds them all: every table stays open after the
     * open-time check, and the cache holds their index and filter. */
    db = open_db(&o);
    check_all(db, ver);
    eng_stats s = stats_of(db);
    cr_assert_geq(s.live_tables, 20);
    cr_assert_gt(s.index_filter_bytes, s.live_tables * 64);
    cr_assert_geq(s.cache_bytes, s.index_filter_bytes);
    cr_assert_leq(s.cache_bytes, o.cache_bytes);
    cr_assert_geq(count_fds() - base, (int)s.live_tables);
    cr_assert_eq(s.mem_bytes,
                 s.memtable_bytes + s.cache_bytes + s.table_meta_bytes);
    uint64_t all = s.index_filter_bytes;
    eng_db_close(db);
    cr_assert_eq(count_fds(), base);

    /* Room for about a quarter of them: fewer tables open, and the charges
     * of those closed were given back, or the cache would be over. */
    o.cache_bytes = (size_t)(all / 4);
    db = open_db(&o);
    for (int pass = 0; pass < 2; pass++) check_all(db, ver);
    s = stats_of(db);
    cr_assert_gt(s.index_filter_bytes, 0);
    cr_assert_leq(s.index_filter_bytes, o.cache_bytes);
    cr_assert_leq(s.cache_bytes, o.cache_bytes, "cache %llu of %zu bytes",
                  (unsigned long long)s.cache_bytes, o.cache_bytes);
    int open_now = count_fds() - base - STORE_FDS;
    cr_assert_lt(open_now, (int)s.live_tables / 2, "%d of %llu tables open",
                 open_now, (unsigned long long)s.live_tables);
    eng_db_close(db);

    /* Mapped: nothing charged, only the small readers outside the cache. */
    o.mmap_reads = true;
    o.cache_bytes = 64 * 1024;
    db = open_db(&o);
    check_all(db, ver);
    s = stats_of(db);
    cr_assert_eq(s.index_filter_bytes, 0);
    cr_assert_gt(s.table_meta_bytes, 0);
    cr_assert_geq(count_fds() - base, (int)s.live_tables);
    eng_db_close(db);
}

/* ---- damage and failures ---- */

/* The .sst file names in g_dir, sorted, into names (at most max). */
static int list_tables(char names[][64], int max) {
    DIR *d = opendir(g_dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        size_t len = strlen(e->d_name);
        if (len > 4 && len < 64 && strcmp(e->d_name + len - 4, ".sst") == 0)
            memcpy(names[n++], e->d_name, len + 1);
    }
    closedir(d);
    qsort(names, (size_t)n, 64, (int (*)(const void *, const void *))strcmp);
    return n;
}

static void flip_byte(const char *name, off_t from_end) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "cannot open '%s'", path);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    off_t off = st.st_size - from_end;
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, off), 1);
    c ^= 0x5a;
    cr_assert_eq(pwrite(fd, &c, 1, off), 1);
    close(fd);
}

Test(tcache, damaged_closed_table_reads_as_corrupt) {
    eng_options o;
    tc_opts(&o, 1);
    eng_db *db = open_db(&o);
    fill_and_compact(db);
    eng_db_close(db);
    db = open_db(&o);

    /* Damage a table in the middle of the key range while the store is
     * open: the footer is the last 72 bytes, so this is inside it. With a
     * one-table cache it is closed after the gets of other tables below. */
    char names[128][64];
    int n = list_tables(names, 128);
    cr_assert_geq(n, 20);
    flip_byte(names[n / 2], 30);

    int first = -1, last = -1, corrupt = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NKEYS; i++) {
            int rc = get_check(db, NULL, i, 1); /* wrong values assert */
            cr_assert(rc == 0 || rc == KV_ECORRUPT, "get key %d: %s", i,
                      kv_strerror(rc));
            if (pass == 0 || rc == 0) continue;
            corrupt++;
            if (first < 0) first = i;
            last = i;
        }
    /* One table of level 1 holds one contiguous run of keys. */
    cr_assert_gt(corrupt, 0, "the damage went unnoticed");
    cr_assert_eq(last - first + 1, corrupt, "corrupt keys are not one run");
    cr_assert_lt(corrupt, NKEYS / 4, "%d keys unreadable", corrupt);

    /* An iterator and a compaction report the damage, and keep the data
     * of the other tables. */
    eng_iter *it = NULL;
    OK(eng_iter_new(db, NULL, &it));
    eng_iter_seek_first(it);
    while (eng_iter_valid(it)) eng_iter_next(it);
    cr_assert_eq(eng_iter_status(it), KV_ECORRUPT);
    eng_iter_free(it);
    /* A flushed table over the damaged one's range makes a compaction
     * read it. */
    int mid = (first + last) / 2;
    put(db, mid, 2);
    OK(eng_db_flush(db));
    cr_assert_eq(eng_db_compact_range(db, NULL, NULL), KV_ECORRUPT);
    cr_assert_eq(get_check(db, NULL, mid, 2), 0);
    cr_assert_eq(get_check(db, NULL, first - 1, 1), 0);
    cr_assert_eq(get_check(db, NULL, last + 1, 1), 0);
    cr_assert_eq(get_check(db, NULL, first, 1), KV_ECORRUPT);
    eng_db_close(db);
}

Test(tcache, failed_open_is_reported_then_retried) {
    eng_fault *fault = NULL;
    OK(eng_fault_new(&fault));
    eng_options o;
    tc_opts(&o, 1);
    o.fault = fault;
    eng_db *db = open_db(&o);
    fill_and_compact(db);
    /* Key 0's table is the one open; the last key's is closed. */
    cr_assert_eq(get_check(db, NULL, 0, 1), 0);
    eng_fault_arm(fault, ENG_FAULT_OPEN, 0, EIO, true);
    cr_assert_eq(get_check(db, NULL, 0, 1), 0);
    cr_assert_eq(get_check(db, NULL, NKEYS - 1, 1), -EIO);
    /* A scan opens a level's tables as it reaches them: it yields what
     * comes before the table that cannot be opened, then stops there with
     * the error instead of skipping its keys. */
    eng_iter *it = NULL;
    OK(eng_iter_new(db, NULL, &it));
    int seen = 0;
    for (eng_iter_seek_first(it); eng_iter_valid(it); eng_iter_next(it)) seen++;
    cr_assert_eq(eng_iter_status(it), -EIO);
    cr_assert_lt(seen, NKEYS);
    eng_iter_free(it);
    cr_assert_gt(eng_fault_hits(fault), 0);

    /* Nothing was remembered from the failure. */
    eng_fault_disarm(fault);
    cr_assert_eq(get_check(db, NULL, NKEYS - 1, 1), 0);
    int ver[NKEYS];
    for (int i = 0; i < NKEYS; i++) ver[i] = 1;
    check_all(db, ver);
    OK(eng_db_close(db));
    eng_fault_free(fault);
}
