/*
 * Compaction choices that reads depend on. Regression: a range compaction
 * once moved only the level-0 tables touching the range down to level 1,
 * leaving an older level-0 table with a version of the same key above the
 * newer one, so a get returned the old value.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>

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
