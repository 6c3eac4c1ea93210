/*
 * Compaction choices that reads depend on. Regression: a range compaction
 * once moved only the level-0 tables touching the range down to level 1,
 * leaving an older level-0 table with a version of the same key above the
 * newer one, so a get returned the old value.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <unistd.h>

static char g_dir[128];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-compact");
    quiet_log();
}

static void teardown(void) {
    rm_tree(g_dir);
}

TestSuite(compact, .init = setup, .fini = teardown);

static void put(eng_db *db, const char *k, const char *v) {
    OK(eng_db_put(db, kv_slice_str(k), kv_slice_str(v), ENG_WF_SYNC_NONE));
}

static void expect(eng_db *db, const char *k, const char *want) {
    kv_buf v = KV_BUF_INIT;
    int rc = eng_db_get(db, NULL, kv_slice_str(k), &v);
    if (!want) {
        cr_assert_eq(rc, KV_ENOTFOUND, "%s: expected absent, rc %d", k, rc);
    } else {
        cr_assert_eq(rc, 0, "%s: %s", k, kv_strerror(rc));
        cr_assert(kv_slice_eq(kv_buf_slice(&v), kv_slice_str(want)),
                  "%s: got '%.*s', want '%s'", k, (int)v.len,
                  (const char *)v.ptr, want);
    }
    kv_buf_release(&v);
}

static void range_keeps_newest(int style) {
    eng_options o;
    eng_options_init(&o);
    o.style = style;
    /* No background compaction: only the manual one moves tables. */
    o.l0_compaction_trigger = 10;
    o.l0_slowdown_trigger = 20;
    o.l0_stop_trigger = 30;
    o.tier_min = 10;
    eng_db *db;
    OK(eng_db_open(g_dir, &o, &db));
    put(db, "w", "w1");
    put(db, "x", "old");
    put(db, "gone", "g1");
    OK(eng_db_flush(db)); /* older table: [gone .. x] */
    put(db, "x", "new");
    OK(eng_db_delete(db, kv_slice_str("gone"), ENG_WF_SYNC_NONE));
    put(db, "y", "y1");
    OK(eng_db_flush(db)); /* newer table: [gone .. y] */
    put(db, "z", "z1");
    OK(eng_db_flush(db));
    /* A range touching only the newer tables. */
    kv_slice lo = kv_slice_str("y"), hi = kv_slice_str("zz");
    OK(eng_db_compact_range(db, &lo, &hi));
    expect(db, "x", "new");
    expect(db, "gone", NULL);
    expect(db, "w", "w1");
    expect(db, "y", "y1");
    OK(eng_db_close(db));
    OK(eng_db_open(g_dir, &o, &db));
    expect(db, "x", "new");
    expect(db, "gone", NULL);
    OK(eng_db_close(db));
}

Test(compact, leveled_range_compaction_keeps_newest_version) {
    range_keeps_newest(ENG_COMPACT_LEVELED);
}

Test(compact, tiered_range_compaction_keeps_newest_version) {
    range_keeps_newest(ENG_COMPACT_TIERED);
}

/* A sequential load makes level-0 tables with disjoint key ranges: they
 * move down whole, so compaction writes (almost) nothing, and every key
 * still reads back after a reopen. */
Test(compact, disjoint_level0_tables_move_down_unchanged) {
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    o.memtable_bytes = 64 * 1024;
    o.level1_bytes = 64u << 20; /* keep everything in level 1 */
    eng_db *db;
    OK(eng_db_open(g_dir, &o, &db));
    char k[32], v[128];
    enum { N = 20000 };
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "k%08d", i);
        snprintf(v, sizeof v, "%0100d", i);
        put(db, k, v);
    }
    OK(eng_db_flush(db));
    /* Background compaction catches up (level 0 under its trigger). */
    eng_stats s;
    for (int waited = 0;; waited++) {
        OK(eng_db_stats(db, &s));
        if (s.level_tables[0] < o.l0_compaction_trigger) break;
        cr_assert_lt(waited, 1000, "level 0 still holds %d tables",
                     s.level_tables[0]);
        usleep(10000);
    }
    cr_assert_gt(s.level_tables[1], 0);
    cr_assert_eq(s.compact_bytes_written, 0,
                 "sequential load rewrote %llu bytes in compaction",
                 (unsigned long long)s.compact_bytes_written);
    cr_assert_eq(s.level_tables[0] + s.level_tables[1], (int)s.live_tables);
    /* Overlapping level-0 tables still merge. */
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "k%08d", i * 7);
        put(db, k, "again");
    }
    OK(eng_db_flush(db));
    for (int i = 0; i < 4; i++) {
        snprintf(k, sizeof k, "k%08d", i * 5000 + 1);
        put(db, k, "again");
        OK(eng_db_flush(db));
    }
    OK(eng_db_close(db));
    OK(eng_db_open(g_dir, &o, &db));
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "k%08d", i);
        snprintf(v, sizeof v, "%0100d", i);
        bool again = (i % 7 == 0 && i / 7 < 100) || (i % 5000 == 1);
        expect(db, k, again ? "again" : v);
    }
    OK(eng_db_close(db));
}
