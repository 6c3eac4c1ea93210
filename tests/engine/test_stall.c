/*
 * Write stalls: when flushes and compactions fall behind, writes slow down
 * and then wait, so level 0 (and compaction debt) stays bounded instead of
 * growing without limit; and nothing written is lost on the way.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char g_dir[64];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-stall");
}

static void teardown(void) {
    rm_tree(g_dir);
}

TestSuite(stall, .init = setup, .fini = teardown, .timeout = 120);

typedef struct watch {
    eng_db *db;
    volatile bool stop;
    int max_l0;
    uint64_t max_tables;
} watch;

static void *watcher(void *arg) {
    watch *w = arg;
    while (!w->stop) {
        eng_stats s;
        if (eng_db_stats(w->db, &s) == 0) {
            if (s.level_tables[0] > w->max_l0) w->max_l0 = s.level_tables[0];
            if (s.live_tables > w->max_tables) w->max_tables = s.live_tables;
        }
        usleep(200);
    }
    return NULL;
}

static void fill(eng_options *o, int n, watch *w) {
    eng_db *db;
    cr_assert_eq(eng_db_open(g_dir, o, &db), 0);
    w->db = db;
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, watcher, w), 0);
    char key[32], val[2048];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "k%07d", (i * 7919) % n);
        memset(val, 'a' + i % 26, sizeof val);
        snprintf(val, 16, "%d", i);
        cr_assert_eq(eng_db_put(db, kv_slice_str(key),
                                kv_slice_make(val, sizeof val),
                                ENG_WF_SYNC_NONE),
                     0, "put %d", i);
    }
    w->stop = true;
    pthread_join(th, NULL);
    eng_stats s;
    cr_assert_eq(eng_db_stats(db, &s), 0);
    fprintf(stderr,
            "stall/%s: max L0 %d, max tables %llu, slowed %.3f s, stalled "
            "%.3f s, %llu flushes, %llu compactions\n",
            o->style == ENG_COMPACT_TIERED ? "tiered" : "leveled", w->max_l0,
            (unsigned long long)w->max_tables, (double)s.slowdown_us / 1e6,
            (double)s.stall_us / 1e6, (unsigned long long)s.flushes,
            (unsigned long long)s.compactions);
    cr_assert_eq(s.bg_error, 0);
    /* Everything is readable, with the last value written for each key. */
    kv_buf v = KV_BUF_INIT;
    for (int i = n - 1000; i < n; i++) {
        snprintf(key, sizeof key, "k%07d", (i * 7919) % n);
        cr_assert_eq(eng_db_get(db, NULL, kv_slice_str(key), &v), 0);
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        cr_assert_str_eq((const char *)v.ptr, want);
    }
    kv_buf_release(&v);
    cr_assert_eq(eng_db_close(db), 0);
}

Test(stall, level0_stays_below_the_stop_trigger) {
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    o.memtable_bytes = 16 * 1024;
    o.table_bytes = 64 * 1024;
    o.level1_bytes = 64 * 1024;
    o.level_multiplier = 4;
    o.compression_level = 0;
    o.l0_compaction_trigger = 1;
    o.l0_slowdown_trigger = 2;
    o.l0_stop_trigger = 3;
    watch w = {0};
    fill(&o, 3000, &w);
    /* A flush may land while a stalled writer waits: stop trigger at most. */
    cr_assert_leq(w.max_l0, o.l0_stop_trigger, "level 0 grew to %d tables",
                  w.max_l0);
}

Test(stall, tiered_table_count_is_bounded) {
    eng_options o;
    eng_options_init(&o);
    o.style = ENG_COMPACT_TIERED;
    o.sync = ENG_SYNC_NONE;
    o.memtable_bytes = 16 * 1024;
    o.compression_level = 0;
    o.tier_min = 2;
    o.debt_slowdown_bytes = 64 * 1024;
    o.debt_stop_bytes = 128 * 1024;
    watch w = {0};
    fill(&o, 3000, &w);
    /* Writes wait while mergeable tables pile up, so the table count stays
     * near one per size tier (6 MiB in 16 KiB flushes: about 9 tiers). */
    cr_assert_leq(w.max_tables, 16, "%llu tables",
                  (unsigned long long)w.max_tables);
}

/* Regression: eng_db_flush queues behind writers like a writer does; a
 * leader once merged it into its group and the flush waited forever. */
typedef struct racer {
    eng_db *db;
    int id;
} racer;

static void *race_writer(void *arg) {
    racer *r = arg;
    char key[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof key, "r%d-%05d", r->id, i);
        if (eng_db_put(r->db, kv_slice_str(key), kv_slice_str("v"),
                       ENG_WF_SYNC_NONE) != 0)
            return (void *)1;
    }
    return NULL;
}

Test(stall, flush_races_writers_without_hanging, .timeout = 60) {
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    eng_db *db;
    cr_assert_eq(eng_db_open(g_dir, &o, &db), 0);
    racer r[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (racer){db, i};
        cr_assert_eq(pthread_create(&th[i], NULL, race_writer, &r[i]), 0);
    }
    for (int i = 0; i < 50; i++) cr_assert_eq(eng_db_flush(db), 0);
    for (int i = 0; i < 4; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        cr_assert_null(ret);
    }
    kv_buf v = KV_BUF_INIT;
    cr_assert_eq(eng_db_get(db, NULL, kv_slice_str("r3-02999"), &v), 0);
    kv_buf_release(&v);
    cr_assert_eq(eng_db_close(db), 0);
}

/* ---- paced flushes ----
 * A flush is spread over a quarter of the time its memtable took to fill,
 * so it does not take the CPU and the disk from the foreground in one
 * burst; but nobody may wait on a paced flush: a writer that needs room,
 * and close, end the pacing. */

#include <dirent.h>
#include <time.h>

static int count_logs(void) {
    DIR *d = opendir(g_dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        n += len > 4 && strcmp(e->d_name + len - 4, ".log") == 0;
    }
    closedir(d);
    return n;
}

static double secs_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void put_seq(eng_db *db, int i) {
    char key[32], val[1024];
    snprintf(key, sizeof key, "p%06d", i);
    memset(val, 'a' + i % 26, sizeof val);
    snprintf(val, 16, "%d", i);
    cr_assert_eq(
        eng_db_put(db, kv_slice_str(key), kv_slice_make(val, sizeof val), 0), 0,
        "put %d", i);
}

static void check_seq(eng_db *db, int n) {
    kv_buf v = KV_BUF_INIT;
    char key[32], want[16];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "p%06d", i);
        cr_assert_eq(eng_db_get(db, NULL, kv_slice_str(key), &v), 0, "%s", key);
        snprintf(want, sizeof want, "%d", i);
        cr_assert_str_eq((const char *)v.ptr, want);
    }
    kv_buf_release(&v);
}

/* Open a store with 64 KiB memtables and fill the first one slowly (about
 * 2.5 s), until it is switched out: its flush is then paced over about
 * 0.6 s. Returns the keys written; *fill is the seconds it took. */
static int slow_fill(eng_db **db, double *fill) {
    eng_options o;
    eng_options_init(&o);
    o.memtable_bytes = 64 * 1024;
    o.flush_pace_max_ms = 60000;
    cr_assert_eq(eng_db_open(g_dir, &o, db), 0);
    double t0 = secs_now();
    int n = 0;
    while (count_logs() < 2) {
        cr_assert_lt(n, 200, "no memtable switch after %d writes", n);
        put_seq(*db, n++);
        usleep(40000);
    }
    *fill = secs_now() - t0;
    return n;
}

Test(stall, paced_flush_gives_way_to_a_writer_that_needs_room) {
    eng_db *db;
    double fill;
    int n = slow_fill(&db, &fill);
    double pace = fill / 4;
    /* More than a memtable at full speed: the writer waits for the paced
     * flush, which must then finish at full speed, not on its schedule. */
    double t0 = secs_now();
    for (int i = 0; i < 160; i++) put_seq(db, n++);
    double fast = secs_now() - t0;
    eng_stats s;
    cr_assert_eq(eng_db_stats(db, &s), 0);
    fprintf(stderr,
            "stall/pace: filled in %.2f s (pace %.2f s), %d fast writes in "
            "%.3f s, paced %.3f s, stalled %.3f s\n",
            fill, pace, 160, fast, (double)s.flush_paced_us / 1e6,
            (double)s.stall_us / 1e6);
    cr_assert_geq(s.flushes, 1);
    cr_assert_lt(fast, pace / 2, "fast writes took %.3f s, pace %.3f s", fast,
                 pace);
    check_seq(db, n);
    cr_assert_eq(eng_db_close(db), 0);
}

Test(stall, paced_flush_does_not_delay_close) {
    eng_db *db;
    double fill;
    int n = slow_fill(&db, &fill);
    double t0 = secs_now();
    cr_assert_eq(eng_db_close(db), 0);
    double took = secs_now() - t0;
    cr_assert_lt(took, fill / 8, "close took %.3f s, pace %.3f s", took,
                 fill / 4);
    eng_options o;
    eng_options_init(&o);
    cr_assert_eq(eng_db_open(g_dir, &o, &db), 0);
    check_seq(db, n);
    cr_assert_eq(eng_db_close(db), 0);
}

Test(stall, slow_writes_get_a_paced_flush) {
    eng_db *db;
    double fill;
    int n = slow_fill(&db, &fill);
    /* Keep writing slowly until the paced flush is done. */
    eng_stats s;
    double t0 = secs_now();
    do {
        put_seq(db, n++);
        usleep(40000);
        cr_assert_eq(eng_db_stats(db, &s), 0);
        cr_assert_lt(secs_now() - t0, 10.0, "flush not done");
    } while (s.flushes == 0);
    /* It slept, and not past its schedule by much. */
    cr_assert_gt(s.flush_paced_us, 0);
    cr_assert_lt((double)s.flush_paced_us / 1e6, fill / 4 + 0.1);
    check_seq(db, n);
    cr_assert_eq(eng_db_close(db), 0);
}
