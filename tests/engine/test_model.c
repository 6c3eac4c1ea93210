/*
 * Randomized model test of the engine's public API (engine/engine.h).
 *
 * A seeded PRNG drives a long run of puts, deletes, atomic batches, gets,
 * full and seek-bounded scans, snapshots checked later, flushes, range
 * compactions and close/reopen against a tiny memtable, so flushes and
 * compactions run all the time. After every operation the engine must agree
 * with an in-memory model: one slot per key of a small key space (so
 * overwrites are common) holding "absent" or the (seed, length) the value
 * bytes are generated from. A snapshot keeps a copy of the model.
 *
 * The seed is printed; QFS_SEED=<n> replays a run and QFS_STEPS=<n> changes
 * its length. Every mismatch names the seed, the step and the key.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    NKEYS = 1200,     /* key space: small, so overwrites and deletes meet */
    MAX_SNAPS = 4,    /* snapshots alive at once */
    MAX_VALUE = 2000, /* values are 0..MAX_VALUE bytes */
    SCAN_MAX = 40     /* entries checked by a seek-bounded scan */
};

/* One key's state in the model. */
typedef struct mval {
    bool present;
    uint32_t len;
    uint64_t vseed; /* the value bytes are gen_bytes(vseed, len) */
} mval;

typedef struct msnap {
    eng_snapshot *snap;
    mval *m; /* the model as of the snapshot */
    long taken;
} msnap;

typedef struct ctx {
    uint64_t seed, rng;
    long step;
    const char *op; /* what the current step does, for messages */
    eng_options opt;
    eng_db *db;
    mval *m;
    msnap snaps[MAX_SNAPS];
    int nsnaps;
    uint8_t want[MAX_VALUE];
    kv_buf got;
    char kb[300], kb2[300];
    long reopens, flushes, compacts;
    uint64_t eng_flushes, eng_compactions; /* engine stats, summed over opens */
    eng_batch *batch;
} ctx;

static char g_dir[PATH_MAX];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-model");
}

static void free_model(void);

static void teardown(void) {
    free_model();
    if (g_dir[0]) rm_tree(g_dir);
    g_dir[0] = '\0';
}

/* Fail with the replay coordinates first. */
#define FAIL(c, fmt, ...)                                                      \
    cr_assert_fail("seed=%" PRIu64 " step=%ld op=%s: " fmt, (c)->seed,         \
                   (c)->step, (c)->op, __VA_ARGS__)

#define CHECK_RC(c, expr)                                                      \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        if (rc_ != 0)                                                          \
            FAIL(c, "%s returned %d (%s)", #expr, rc_, kv_strerror(rc_));      \
    } while (0)

static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint32_t rnd(ctx *c, uint32_t n) {
    return (uint32_t)(next_u64(&c->rng) % n);
}

static void gen_bytes(uint8_t *out, uint64_t vseed, uint32_t len) {
    uint64_t s = vseed;
    for (uint32_t i = 0; i < len; i += 8) {
        uint64_t r = next_u64(&s);
        for (uint32_t j = 0; j < 8 && i + j < len; j++)
            out[i + j] = (uint8_t)(r >> (8 * j));
    }
}

/* Key i: "m" + 5 digits (which fix the order) + a variable-length pad, so
 * keys differ in length and share prefixes. Anything built from key i's
 * digits plus a suffix sorts after key i-1 and before key i+1. */
static kv_slice key_at(char *buf, unsigned i) {
    int n = snprintf(buf, 16, "m%05u", i);
    unsigned pad = (i % 5) * 6 + (i % 97 == 0 ? 200 : 0);
    memset(buf + n, 'p', pad);
    return kv_slice_make(buf, (size_t)n + pad);
}

static const char *show(kv_slice k) {
    static char out[64];
    size_t n = KV_MIN(k.len, sizeof out - 1);
    for (size_t i = 0; i < n; i++)
        out[i] = (k.ptr[i] >= 32 && k.ptr[i] < 127) ? (char)k.ptr[i] : '?';
    out[n] = '\0';
    return out;
}

/* ---- checks ---- */

static void check_get(ctx *c, const eng_snapshot *snap, const mval *m,
                      unsigned i) {
    kv_slice k = key_at(c->kb, i);
    int rc = eng_db_get(c->db, snap, k, &c->got);
    if (!m[i].present) {
        if (rc != KV_ENOTFOUND)
            FAIL(c, "get %s%s: rc %d (%s) len %zu, expected not found", show(k),
                 snap ? " at snapshot" : "", rc, kv_strerror(rc),
                 rc == 0 ? c->got.len : 0);
        return;
    }
    if (rc != 0)
        FAIL(c, "get %s%s: rc %d (%s), expected a %u-byte value", show(k),
             snap ? " at snapshot" : "", rc, kv_strerror(rc), m[i].len);
    gen_bytes(c->want, m[i].vseed, m[i].len);
    if (c->got.len != m[i].len ||
        (m[i].len && memcmp(c->got.ptr, c->want, m[i].len) != 0))
        FAIL(c, "get %s%s: got %zu bytes, expected %u bytes (seed %" PRIu64 ")",
             show(k), snap ? " at snapshot" : "", c->got.len, m[i].len,
             m[i].vseed);
}

static unsigned next_present(const mval *m, unsigned from) {
    while (from < NKEYS && !m[from].present) from++;
    return from;
}

/* The iterator must be at model key `want` (NKEYS: exhausted). */
static void check_iter_at(ctx *c, eng_iter *it, const mval *m, unsigned want,
                          const char *what) {
    if (want >= NKEYS) {
        if (eng_iter_valid(it))
            FAIL(c, "%s: iterator at %s, expected the end", what,
                 show(eng_iter_key(it)));
        int rc = eng_iter_status(it);
        if (rc != 0) FAIL(c, "%s: iterator status %s", what, kv_strerror(rc));
        return;
    }
    kv_slice k = key_at(c->kb2, want);
    if (!eng_iter_valid(it)) {
        int rc = eng_iter_status(it);
        FAIL(c, "%s: iterator ended (status %s), expected key %s", what,
             kv_strerror(rc), show(k));
    }
    if (!kv_slice_eq(eng_iter_key(it), k)) {
        char got[64];
        snprintf(got, sizeof got, "%s", show(eng_iter_key(it)));
        FAIL(c, "%s: iterator at %s, expected key %s", what, got, show(k));
    }
    gen_bytes(c->want, m[want].vseed, m[want].len);
    if (!kv_slice_eq(eng_iter_value(it), kv_slice_make(c->want, m[want].len)))
        FAIL(c, "%s: key %s: iterator value of %zu bytes, expected %u", what,
             show(k), eng_iter_value(it).len, m[want].len);
}

static void check_full_scan(ctx *c, const eng_snapshot *snap, const mval *m) {
    eng_iter *it = NULL;
    CHECK_RC(c, eng_iter_new(c->db, snap, &it));
    eng_iter_seek_first(it);
    unsigned i = next_present(m, 0);
    for (;;) {
        check_iter_at(c, it, m, i, "full scan");
        if (i >= NKEYS) break;
        eng_iter_next(it);
        i = next_present(m, i + 1);
    }
    eng_iter_free(it);
}

/* Seek to a random target and compare up to SCAN_MAX entries. */
static void check_seek_scan(ctx *c, eng_iter *it, const mval *m) {
    unsigned j = rnd(c, NKEYS), first;
    char target[300];
    size_t tlen;
    switch (rnd(c, 5)) {
    case 0: /* an exact key */
        tlen = key_at(target, j).len;
        first = next_present(m, j);
        break;
    case 1: /* just after key j */
        tlen = key_at(target, j).len;
        target[tlen++] = '\xff';
        first = next_present(m, j + 1);
        break;
    case 2: /* a prefix of key j: after key j-1, at or before key j */
        tlen = (size_t)snprintf(target, sizeof target, "m%05u", j);
        first = next_present(m, j);
        break;
    case 3: /* before every key */
        tlen = (size_t)snprintf(target, sizeof target, "a");
        first = next_present(m, 0);
        break;
    default: /* past every key */
        tlen = (size_t)snprintf(target, sizeof target, "n");
        first = NKEYS;
        break;
    }
    eng_iter_seek(it, kv_slice_make(target, tlen));
    unsigned i = first;
    for (int n = 0; n < SCAN_MAX; n++) {
        check_iter_at(c, it, m, i, "seek scan");
        if (i >= NKEYS) break;
        eng_iter_next(it);
        i = next_present(m, i + 1);
    }
}

static void check_snapshot(ctx *c, msnap *s) {
    for (int n = 0; n < 20; n++) check_get(c, s->snap, s->m, rnd(c, NKEYS));
    eng_iter *it = NULL;
    CHECK_RC(c, eng_iter_new(c->db, s->snap, &it));
    check_seek_scan(c, it, s->m);
    eng_iter_free(it);
}

static void check_stats(ctx *c) {
    eng_stats st;
    CHECK_RC(c, eng_db_stats(c->db, &st));
    if (st.bg_error != 0)
        FAIL(c, "background error %d (%s)", st.bg_error,
             kv_strerror(st.bg_error));
    uint64_t sum = 0;
    for (int l = 0; l < ENG_MAX_LEVELS; l++)
        sum += (uint64_t)st.level_tables[l];
    if (sum != st.live_tables)
        FAIL(c, "level tables add up to %" PRIu64 ", live tables %" PRIu64, sum,
             st.live_tables);
}

/* ---- operations ---- */

static int pick_flags(ctx *c) {
    uint32_t r = rnd(c, 100);
    if (r < 2) return ENG_WF_SYNC_GROUP;
    if (r < 3) return ENG_WF_SYNC_ALWAYS;
    if (r < 50) return ENG_WF_SYNC_NONE;
    return ENG_WF_DEFAULT;
}

static mval new_value(ctx *c) {
    mval v = {true, 0, next_u64(&c->rng)};
    /* Mostly short values, some long, some empty. */
    uint32_t r = rnd(c, 10);
    v.len = r == 0 ? 0 : r < 7 ? rnd(c, 200) : rnd(c, MAX_VALUE + 1);
    return v;
}

static void do_put(ctx *c, mval *m, unsigned i) {
    mval v = new_value(c);
    gen_bytes(c->want, v.vseed, v.len);
    CHECK_RC(c, eng_db_put(c->db, key_at(c->kb, i),
                           kv_slice_make(c->want, v.len), pick_flags(c)));
    m[i] = v;
}

static void do_delete(ctx *c, mval *m, unsigned i) {
    CHECK_RC(c, eng_db_delete(c->db, key_at(c->kb, i), pick_flags(c)));
    m[i].present = false;
}

static void do_batch(ctx *c, eng_batch *b) {
    enum { MAXOPS = 24 };
    unsigned ids[MAXOPS];
    mval vals[MAXOPS];
    unsigned nops = 1 + rnd(c, MAXOPS);
    /* Batches cluster on nearby keys so the same key often repeats. */
    unsigned base = rnd(c, NKEYS);
    eng_batch_clear(b);
    for (unsigned n = 0; n < nops; n++) {
        ids[n] = (base + rnd(c, 16)) % NKEYS;
        kv_slice k = key_at(c->kb, ids[n]);
        if (rnd(c, 4) == 0) {
            vals[n].present = false;
            CHECK_RC(c, eng_batch_delete(b, k));
        } else {
            vals[n] = new_value(c);
            gen_bytes(c->want, vals[n].vseed, vals[n].len);
            CHECK_RC(c,
                     eng_batch_put(b, k, kv_slice_make(c->want, vals[n].len)));
        }
    }
    if (eng_batch_count(b) != nops)
        FAIL(c, "batch count %u, expected %u", eng_batch_count(b), nops);
    CHECK_RC(c, eng_db_write(c->db, b, pick_flags(c)));
    /* Later operations on a key win. */
    for (unsigned n = 0; n < nops; n++) c->m[ids[n]] = vals[n];
    /* Read back every key the batch touched. */
    for (unsigned n = 0; n < nops; n++) check_get(c, NULL, c->m, ids[n]);
}

static void snap_take(ctx *c) {
    if (c->nsnaps == MAX_SNAPS) return;
    msnap *s = &c->snaps[c->nsnaps];
    s->m = malloc(sizeof(mval) * NKEYS);
    cr_assert_not_null(s->m);
    CHECK_RC(c, eng_db_snapshot(c->db, &s->snap));
    memcpy(s->m, c->m, sizeof(mval) * NKEYS);
    s->taken = c->step;
    c->nsnaps++;
}

static void snap_release(ctx *c, int idx) {
    msnap *s = &c->snaps[idx];
    eng_db_snapshot_release(c->db, s->snap);
    free(s->m);
    c->snaps[idx] = c->snaps[--c->nsnaps];
}

static void scan_with_concurrent_writes(ctx *c, mval *scratch) {
    eng_iter *it = NULL;
    CHECK_RC(c, eng_iter_new(c->db, NULL, &it));
    memcpy(scratch, c->m, sizeof(mval) * NKEYS);
    /* Writes after creation must not show through the iterator. */
    unsigned nw = rnd(c, 4);
    for (unsigned n = 0; n < nw; n++) {
        unsigned i = rnd(c, NKEYS);
        if (rnd(c, 3) == 0)
            do_delete(c, c->m, i);
        else
            do_put(c, c->m, i);
    }
    check_seek_scan(c, it, scratch);
    /* A second seek on the same iterator works too. */
    check_seek_scan(c, it, scratch);
    eng_iter_free(it);
}

static void do_compact(ctx *c) {
    unsigned a = rnd(c, NKEYS), b = rnd(c, NKEYS);
    if (a > b) {
        unsigned t = a;
        a = b;
        b = t;
    }
    kv_slice lo = key_at(c->kb, a), hi = key_at(c->kb2, b);
    uint32_t shape = rnd(c, 4);
    CHECK_RC(c, eng_db_compact_range(c->db, shape == 1 ? NULL : &lo,
                                     shape == 2 ? NULL : &hi));
    c->compacts++;
}

static void add_engine_counts(ctx *c) {
    eng_stats st;
    CHECK_RC(c, eng_db_stats(c->db, &st));
    c->eng_flushes += st.flushes;
    c->eng_compactions += st.compactions;
}

static void reopen(ctx *c) {
    add_engine_counts(c);
    /* Snapshots must be released before close; check them one last time. */
    while (c->nsnaps > 0) {
        check_snapshot(c, &c->snaps[c->nsnaps - 1]);
        snap_release(c, c->nsnaps - 1);
    }
    int rc = eng_db_close(c->db);
    c->db = NULL;
    if (rc != 0) FAIL(c, "close returned %d (%s)", rc, kv_strerror(rc));
    rc = eng_db_open(g_dir, &c->opt, &c->db);
    if (rc != 0) FAIL(c, "reopen returned %d (%s)", rc, kv_strerror(rc));
    c->reopens++;
    check_full_scan(c, NULL, c->m);
}

static uint64_t pick_seed(void) {
    const char *e = getenv("QFS_SEED");
    if (e && *e) return strtoull(e, NULL, 0);
    return (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid() ^ kv_now_ns();
}

static long pick_steps(long dflt) {
    const char *e = getenv("QFS_STEPS");
    if (e && *e) return strtol(e, NULL, 0);
    return dflt;
}

/* Static, and freed by the fixture, so a failed run leaks nothing of ours
 * (the engine's objects stay reachable through g_ctx.db). */
static ctx g_ctx;
static mval *g_scratch;

static void free_model(void) {
    for (int i = 0; i < g_ctx.nsnaps; i++) free(g_ctx.snaps[i].m);
    free(g_ctx.m);
    free(g_scratch);
    kv_buf_release(&g_ctx.got);
    if (g_ctx.batch) eng_batch_free(g_ctx.batch);
    memset(&g_ctx, 0, sizeof g_ctx);
    g_scratch = NULL;
}

static void run_model(const char *name, const eng_options *opt, long steps) {
    ctx *c = &g_ctx;
    memset(c, 0, sizeof *c);
    mval *scratch = g_scratch = malloc(sizeof(mval) * NKEYS);
    c->m = calloc(NKEYS, sizeof(mval));
    cr_assert(c->m && scratch);
    c->seed = c->rng = pick_seed();
    c->opt = *opt;
    c->op = "open";
    steps = pick_steps(steps);
    fprintf(stderr,
            "model/%s: seed=%" PRIu64 " steps=%ld (QFS_SEED=%" PRIu64
            " replays)\n",
            name, c->seed, steps, c->seed);
    CHECK_RC(c, eng_db_open(g_dir, &c->opt, &c->db));
    CHECK_RC(c, eng_batch_new(&c->batch));
    kv_buf_init(&c->got);

    for (c->step = 0; c->step < steps; c->step++) {
        uint32_t r = rnd(c, 10000);
        if (r < 4000) {
            c->op = "put";
            do_put(c, c->m, rnd(c, NKEYS));
        } else if (r < 5000) {
            c->op = "delete";
            do_delete(c, c->m, rnd(c, NKEYS));
        } else if (r < 5500) {
            c->op = "batch";
            do_batch(c, c->batch);
        } else if (r < 8300) {
            c->op = "get";
            check_get(c, NULL, c->m, rnd(c, NKEYS));
        } else if (r < 8400) {
            c->op = "full scan";
            check_full_scan(c, NULL, c->m);
        } else if (r < 8800) {
            c->op = "seek scan";
            eng_iter *it = NULL;
            CHECK_RC(c, eng_iter_new(c->db, NULL, &it));
            check_seek_scan(c, it, c->m);
            eng_iter_free(it);
        } else if (r < 9000) {
            c->op = "scan with writes";
            scan_with_concurrent_writes(c, scratch);
        } else if (r < 9150) {
            c->op = "snapshot";
            snap_take(c);
        } else if (r < 9650) {
            c->op = "check snapshot";
            if (c->nsnaps)
                check_snapshot(c, &c->snaps[rnd(c, (uint32_t)c->nsnaps)]);
        } else if (r < 9700) {
            c->op = "full scan at snapshot";
            if (c->nsnaps) {
                msnap *s = &c->snaps[rnd(c, (uint32_t)c->nsnaps)];
                check_full_scan(c, s->snap, s->m);
            }
        } else if (r < 9800) {
            c->op = "release snapshot";
            if (c->nsnaps) {
                int idx = (int)rnd(c, (uint32_t)c->nsnaps);
                check_snapshot(c, &c->snaps[idx]);
                snap_release(c, idx);
            }
        } else if (r < 9870) {
            c->op = "flush";
            CHECK_RC(c, eng_db_flush(c->db));
            c->flushes++;
        } else if (r < 9920) {
            c->op = "compact range";
            do_compact(c);
        } else if (r < 9960) {
            c->op = "stats";
            check_stats(c);
        } else if (r < 9972) {
            c->op = "reopen";
            reopen(c);
        } else {
            c->op = "get absent-heavy";
            for (int n = 0; n < 10; n++)
                check_get(c, NULL, c->m, rnd(c, NKEYS));
        }
    }

    c->op = "final";
    check_full_scan(c, NULL, c->m);
    for (unsigned i = 0; i < NKEYS; i++) check_get(c, NULL, c->m, i);
    check_stats(c);
    c->op = "final reopen";
    reopen(c);
    for (unsigned i = 0; i < NKEYS; i++) check_get(c, NULL, c->m, i);
    add_engine_counts(c);
    fprintf(stderr,
            "model/%s: %ld reopens, %ld explicit flushes, %ld range "
            "compactions; engine ran %" PRIu64 " flushes, %" PRIu64
            " compactions\n",
            name, c->reopens, c->flushes, c->compacts, c->eng_flushes,
            c->eng_compactions);
    CHECK_RC(c, eng_db_close(c->db));
    free_model();
}

/* Small enough that the memtable flushes every ~100 writes and compactions
 * run throughout. */
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
    o->tier_max = 6;
    o->cache_bytes = 128 * 1024;
}

TestSuite(model, .init = setup, .fini = teardown, .timeout = 300);

Test(model, leveled) {
    eng_options o;
    small_opts(&o, ENG_COMPACT_LEVELED);
    run_model("leveled", &o, 20000);
}

Test(model, tiered) {
    eng_options o;
    small_opts(&o, ENG_COMPACT_TIERED);
    run_model("tiered", &o, 20000);
}

/* Tiny blocks, a restart point per key, no filters, no compression, and a
 * table cache smaller than the number of tables: other code paths. */
Test(model, leveled_tiny_blocks_no_filter) {
    eng_options o;
    small_opts(&o, ENG_COMPACT_LEVELED);
    o.block_bytes = 128;
    o.block_restart_interval = 1;
    o.bloom_bits_per_key = 0;
    o.compression_level = 0;
    o.max_open_tables = 4;
    o.cache_bytes = 4096;
    run_model("leveled-tiny", &o, 5000);
}

Test(model, tiered_small_table_cache) {
    eng_options o;
    small_opts(&o, ENG_COMPACT_TIERED);
    o.max_open_tables = 3;
    o.compression_level = 3;
    o.memtable_bytes = 32 * 1024;
    run_model("tiered-tcache", &o, 5000);
}
