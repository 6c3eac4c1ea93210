/*
 * Tests for a node's object store (replica/store.c): the coordinating
 * update and the replica merge on a real engine, replicas converging
 * whatever order writes reach them in, concurrent read-modify-writes of
 * one key losing nothing, a damaged stored object reported and never
 * overwritten nor handed out by a get, and the engine key layout (each
 * partition one range).
 */
#include "engine/engine.h"
#include "replica/dvv.h"
#include "replica/store.h"
#include "ring/ring.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <pthread.h>

static char g_dir[64];
static eng_db *g_db[2];
static rep_store *g_st[2];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-store");
    quiet_log();
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    for (int i = 0; i < 2; i++) {
        char d[128];
        snprintf(d, sizeof d, "%s/r%d", g_dir, i);
        OK(eng_db_open(d, &o, &g_db[i]));
        OK(rep_store_new(g_db[i], &g_st[i]));
    }
}

static void teardown(void) {
    for (int i = 0; i < 2; i++) {
        rep_store_free(g_st[i]);
        if (g_db[i]) eng_db_close(g_db[i]);
    }
    rm_tree(g_dir);
}

TestSuite(store, .init = setup, .fini = teardown, .timeout = 60);

static kv_slice S(const char *s) {
    return kv_slice_str(s);
}

static dvv_set *load(int r, const char *key) {
    kv_buf b = KV_BUF_INIT;
    int rc = rep_store_get(g_st[r], S(key), &b);
    if (rc == KV_ENOTFOUND) return NULL;
    OK(rc);
    dvv_set *s;
    OK(dvv_set_decode(kv_buf_slice(&b), &s));
    kv_buf_release(&b);
    return s;
}

static bool holds(const dvv_set *s, const char *v) {
    for (size_t i = 0; s && i < dvv_set_siblings(s); i++)
        if (kv_slice_eq(dvv_set_sibling(s, i).value.bytes, S(v))) return true;
    return false;
}

/* Two coordinators write concurrently; each replica receives the other's
 * object; both end with both siblings and the same bytes. */
Test(store, replicas_converge_in_any_order) {
    kv_buf a = KV_BUF_INIT, b = KV_BUF_INIT, ea = KV_BUF_INIT, eb = KV_BUF_INIT;
    OK(rep_store_update(g_st[0], S("k"), S(""), S("from-0"), 0, 11, 1000, &a));
    OK(rep_store_update(g_st[1], S("k"), S(""), S("from-1"), 0, 22, 2000, &b));
    OK(rep_store_merge(g_st[0], S("k"), kv_buf_slice(&b), 0, 11));
    OK(rep_store_merge(g_st[1], S("k"), kv_buf_slice(&a), 0, 22));
    /* Merging again changes nothing (idempotent). */
    OK(rep_store_merge(g_st[1], S("k"), kv_buf_slice(&a), 0, 22));
    OK(rep_store_get(g_st[0], S("k"), &ea));
    OK(rep_store_get(g_st[1], S("k"), &eb));
    cr_assert_eq(ea.len, eb.len);
    cr_assert_eq(memcmp(ea.ptr, eb.ptr, ea.len), 0, "replicas differ");
    dvv_set *s = load(0, "k");
    cr_assert_eq(dvv_set_siblings(s), 2);
    cr_assert(holds(s, "from-0") && holds(s, "from-1"));
    /* An older object arriving late is absorbed: nothing goes back. */
    OK(rep_store_merge(g_st[0], S("k"), kv_buf_slice(&a), 0, 11));
    dvv_set_free(s);
    s = load(0, "k");
    cr_assert_eq(dvv_set_siblings(s), 2);
    dvv_set_free(s);
    kv_buf_release(&a);
    kv_buf_release(&b);
    kv_buf_release(&ea);
    kv_buf_release(&eb);
}

/* Last writer wins: a write with an older timestamp than the stored one
 * is dropped (and says nothing), a newer one replaces every sibling; two
 * replicas that receive each other's objects keep the later write. */
Test(store, lww_keeps_the_latest_timestamp_only) {
    kv_buf a = KV_BUF_INIT, b = KV_BUF_INIT, ea = KV_BUF_INIT, eb = KV_BUF_INIT;
    OK(rep_store_update(g_st[0], S("k"), S(""), S("at-2000"), REP_STORE_LWW, 11,
                        2000, &a));
    OK(rep_store_update(g_st[0], S("k"), S(""), S("at-1000"), REP_STORE_LWW, 22,
                        1000, &b));
    dvv_set *s = load(0, "k");
    cr_assert_eq(dvv_set_siblings(s), 1);
    cr_assert(holds(s, "at-2000"), "the older write must lose");
    dvv_set_free(s);
    kv_buf_reset(&a);
    OK(rep_store_update(g_st[0], S("k"), S(""), S("at-3000"), REP_STORE_LWW, 22,
                        3000, &a));
    s = load(0, "k");
    cr_assert_eq(dvv_set_siblings(s), 1);
    cr_assert(holds(s, "at-3000"));
    dvv_set_free(s);
    /* Replica 1 wrote concurrently at 2500: merging either way keeps the
     * write at 3000 on both, as one sibling. */
    kv_buf_reset(&b);
    OK(rep_store_update(g_st[1], S("k"), S(""), S("at-2500"), REP_STORE_LWW, 33,
                        2500, &b));
    OK(rep_store_merge(g_st[0], S("k"), kv_buf_slice(&b), REP_STORE_LWW, 11));
    OK(rep_store_merge(g_st[1], S("k"), kv_buf_slice(&a), REP_STORE_LWW, 33));
    OK(rep_store_get(g_st[0], S("k"), &ea));
    OK(rep_store_get(g_st[1], S("k"), &eb));
    cr_assert_eq(ea.len, eb.len);
    cr_assert_eq(memcmp(ea.ptr, eb.ptr, ea.len), 0, "replicas differ");
    s = load(1, "k");
    cr_assert_eq(dvv_set_siblings(s), 1);
    cr_assert(holds(s, "at-3000"));
    dvv_set_free(s);
    /* The coordinator's merge of replies picks the same. */
    kv_buf m = KV_BUF_INIT;
    OK(rep_obj_merge(kv_buf_slice(&b), kv_buf_slice(&a), true, &m));
    cr_assert_eq(m.len, a.len);
    cr_assert_eq(memcmp(m.ptr, a.ptr, a.len), 0);
    kv_buf_release(&m);
    kv_buf_release(&a);
    kv_buf_release(&b);
    kv_buf_release(&ea);
    kv_buf_release(&eb);
}

typedef struct writer_arg {
    int id;
} writer_arg;

static void *writer(void *p) {
    writer_arg *w = p;
    char v[32];
    kv_buf out = KV_BUF_INIT;
    for (int i = 0; i < 200; i++) {
        snprintf(v, sizeof v, "w%d-%d", w->id, i);
        /* Blind writes from one coordinator: each must stay a sibling
         * until a later write of the same writer... none here: all
         * concurrent, so the count only grows by one per writer. */
        int rc = rep_store_update(g_st[0], S("hot"), S(""), S(v), 0, 7,
                                  (uint64_t)i, &out);
        cr_assert_eq(rc, 0);
    }
    kv_buf_release(&out);
    return NULL;
}

/* Blind writes from 4 threads to one key: the stripe lock serialises the
 * read-modify-writes, so every one of the 800 writes is a sibling (none
 * overwrote another it never saw). */
Test(store, concurrent_updates_of_one_key_lose_nothing) {
    pthread_t th[4];
    writer_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].id = i;
        cr_assert_eq(pthread_create(&th[i], NULL, writer, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    dvv_set *s = load(0, "hot");
    cr_assert_eq(dvv_set_siblings(s), 800);
    cr_assert_eq(dvv_set_counter(s, 7), 800);
    dvv_set_free(s);
}

/* A stored value that is not an object is reported, and neither an
 * update nor a merge replaces it (it may be a newer format or the only
 * copy of the data). */
Test(store, damaged_object_is_reported_not_overwritten) {
    kv_buf out = KV_BUF_INIT;
    OK(rep_store_update(g_st[0], S("k"), S(""), S("v"), 0, 1, 1, &out));
    /* Find the engine key (the only one) and damage its value. */
    eng_iter *it;
    OK(eng_iter_new(g_db[0], NULL, &it));
    eng_iter_seek_first(it);
    cr_assert(eng_iter_valid(it));
    kv_buf k = KV_BUF_INIT;
    OK(kv_buf_set(&k, eng_iter_key(it).ptr, eng_iter_key(it).len));
    eng_iter_free(it);
    OK(eng_db_put(g_db[0], kv_buf_slice(&k), S("garbage"), ENG_WF_DEFAULT));
    EXPECT_RC(rep_store_update(g_st[0], S("k"), S(""), S("v2"), 0, 1, 2, &out),
              KV_ECORRUPT);
    kv_buf obj = KV_BUF_INIT;
    OK(rep_store_update(g_st[1], S("k"), S(""), S("other"), 0, 2, 3, &obj));
    EXPECT_RC(rep_store_merge(g_st[0], S("k"), kv_buf_slice(&obj), 0, 1),
              KV_ECORRUPT);
    kv_buf raw = KV_BUF_INIT;
    OK(eng_db_get(g_db[0], NULL, kv_buf_slice(&k), &raw));
    cr_assert(kv_slice_eq(kv_buf_slice(&raw), S("garbage")));
    /* A merge of bytes that are not an object is refused too. */
    EXPECT_RC(rep_store_merge(g_st[1], S("k"), S("junk"), 0, 2), KV_ECORRUPT);
    kv_buf_release(&raw);
    kv_buf_release(&obj);
    kv_buf_release(&k);
    kv_buf_release(&out);
}

/* Engine keys sort by placement hash, so one ring partition is one
 * contiguous range of the engine. */
Test(store, partitions_are_contiguous_engine_ranges) {
    kv_buf out = KV_BUF_INIT;
    char key[32];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        OK(rep_store_update(g_st[0], S(key), S(""), S("v"), 0, 1, 1, &out));
    }
    ring *r;
    OK(ring_new(64, S("n"), &r));
    eng_iter *it;
    OK(eng_iter_new(g_db[0], NULL, &it));
    uint32_t last = 0;
    int seen = 0;
    for (eng_iter_seek_first(it); eng_iter_valid(it); eng_iter_next(it)) {
        kv_slice k = eng_iter_key(it);
        cr_assert_gt(k.len, 9);
        cr_assert_eq(k.ptr[0], 'o');
        kv_slice user = kv_slice_make(k.ptr + 9, k.len - 9);
        uint32_t p = ring_partition(r, ring_hash(user));
        cr_assert_geq(p, last, "partition %u after %u", p, last);
        last = p;
        seen++;
    }
    cr_assert_eq(seen, 300);
    eng_iter_free(it);
    ring_free(r);
    kv_buf_release(&out);
}

/* The engine key rep_store uses for key: "o", ring_hash(key) big-endian,
 * the key (store.h). Built here independently, to plant bytes under it. */
static void engine_key(const char *key, kv_buf *out) {
    uint8_t k[9] = {'o'};
    uint64_t h = ring_hash(S(key));
    for (int i = 0; i < 8; i++) k[1 + i] = (uint8_t)(h >> (56 - 8 * i));
    OK(kv_buf_set(out, k, sizeof k));
    OK(kv_buf_append(out, key, strlen(key)));
}

typedef struct lines {
    char text[8][256];
    int n;
} lines;

static void keep_line(kv_log_level lvl, const char *line, void *arg) {
    lines *l = arg;
    (void)lvl;
    if (l->n < 8) snprintf(l->text[l->n++], sizeof l->text[0], "%s", line);
}

static bool logged(const lines *l, const char *needle) {
    for (int i = 0; i < l->n; i++)
        if (strstr(l->text[i], needle)) return true;
    return false;
}

/* A get hands out only valid objects: bytes that do not decode are
 * KV_ECORRUPT, logged with the key, and the caller receives none of them
 * (they were returned as if they were an object). */
Test(store, get_of_a_damaged_object_is_corrupt) {
    kv_buf ek = KV_BUF_INIT, out = KV_BUF_INIT;
    engine_key("carts/alice", &ek);
    OK(eng_db_put(g_db[0], kv_buf_slice(&ek), S("garbage, not an object"),
                  ENG_WF_DEFAULT));
    lines l = {.n = 0};
    kv_log_set_sink(keep_line, &l);
    OK(kv_buf_set(&out, "stale", 5));
    EXPECT_RC(rep_store_get(g_st[0], S("carts/alice"), &out), KV_ECORRUPT);
    quiet_log();
    cr_assert_eq(out.len, 0, "%zu bytes returned", out.len);
    cr_assert(logged(&l, "'carts/alice'"), "no log line names the key");
    /* The stored bytes are left alone, and other keys are unaffected. */
    kv_buf raw = KV_BUF_INIT;
    OK(eng_db_get(g_db[0], NULL, kv_buf_slice(&ek), &raw));
    cr_assert(kv_slice_eq(kv_buf_slice(&raw), S("garbage, not an object")));
    EXPECT_RC(rep_store_get(g_st[0], S("carts/bob"), &out), KV_ENOTFOUND);
    kv_buf_release(&raw);
    kv_buf_release(&ek);
    kv_buf_release(&out);
}

/* A whole object of a newer format version is not corrupt: the get
 * returns KV_EVERSION (see docs/object-format.md, recovery step 4). */
Test(store, get_of_a_newer_version_is_eversion) {
    kv_buf obj = KV_BUF_INIT, ek = KV_BUF_INIT, out = KV_BUF_INIT;
    OK(rep_store_update(g_st[0], S("k"), S(""), S("v"), 0, 1, 1, &obj));
    OK(rep_store_get(g_st[0], S("k"), &out));
    cr_assert(kv_slice_eq(kv_buf_slice(&out), kv_buf_slice(&obj)));
    /* Version 2 at offset 4, checksum (the last 8 bytes) made to match. */
    kv_put_u32(obj.ptr + 4, 2);
    kv_put_u64(obj.ptr + obj.len - 8, kv_checksum(obj.ptr, obj.len - 8));
    engine_key("k", &ek);
    OK(eng_db_put(g_db[0], kv_buf_slice(&ek), kv_buf_slice(&obj),
                  ENG_WF_DEFAULT));
    EXPECT_RC(rep_store_get(g_st[0], S("k"), &out), KV_EVERSION);
    cr_assert_eq(out.len, 0);
    kv_buf_release(&obj);
    kv_buf_release(&ek);
    kv_buf_release(&out);
}

/* Writes applied together behave as if applied one after another: a
 * second update of a key in the batch supersedes the first (it sees the
 * first's result, so no sibling), a bad context fails only its own op,
 * and ops on distinct keys share one synced engine write (one fsync). */
Test(store, batched_writes_act_in_order_and_share_one_sync) {
    kv_buf out[5];
    for (int i = 0; i < 5; i++) kv_buf_init(&out[i]);
    kv_buf other = KV_BUF_INIT;
    OK(rep_store_update(g_st[1], S("m"), S(""), S("from-1"), 0, 22, 5, &other));
    eng_stats before, after;
    OK(eng_db_stats(g_db[0], &before));
    rep_store_op ops[5] = {
        {.kind = REP_STORE_OP_UPDATE,
         .key = S("a"),
         .value = S("a1"),
         .flags = REP_STORE_SYNC,
         .actor = 11,
         .now_us = 1,
         .out = &out[0]},
        {.kind = REP_STORE_OP_UPDATE,
         .key = S("b"),
         .ctx = S("junk"),
         .value = S("b1"),
         .actor = 11,
         .now_us = 2,
         .out = &out[1]},
        {.kind = REP_STORE_OP_MERGE,
         .key = S("m"),
         .value = kv_buf_slice(&other),
         .actor = 11},
        {.kind = REP_STORE_OP_UPDATE,
         .key = S("c"),
         .value = S("c1"),
         .actor = 11,
         .now_us = 3,
         .out = &out[3]},
        {.kind = REP_STORE_OP_UPDATE,
         .key = S("a"),
         .value = S("a2"),
         .flags = REP_STORE_SYNC,
         .actor = 11,
         .now_us = 4,
         .out = &out[4]},
    };
    /* The second update of "a" passes the first one's new object as its
     * context, as a client that read it would: it must see that object. */
    OK(rep_store_apply(g_st[0], ops, 3));
    OK(ops[0].rc);
    cr_assert_neq(ops[1].rc, 0);
    cr_assert_eq(out[1].len, 0);
    OK(ops[2].rc);
    OK(eng_db_stats(g_db[0], &after));
    cr_assert_eq(after.syncs - before.syncs, 1, "one fsync for the batch");
    dvv_ctx *cx;
    dvv_set *s;
    OK(dvv_set_decode(kv_buf_slice(&out[0]), &s));
    OK(dvv_set_join(s, &cx));
    kv_buf ctx = KV_BUF_INIT;
    OK(dvv_ctx_encode(cx, &ctx));
    dvv_ctx_free(cx);
    dvv_set_free(s);
    ops[4].ctx = kv_buf_slice(&ctx);
    OK(rep_store_apply(g_st[0], ops + 3, 2));
    OK(ops[3].rc);
    OK(ops[4].rc);
    s = load(0, "a");
    cr_assert_eq(dvv_set_siblings(s), 1);
    cr_assert(holds(s, "a2"));
    dvv_set_free(s);
    cr_assert_null(load(0, "b"));
    s = load(0, "m");
    cr_assert(holds(s, "from-1"));
    dvv_set_free(s);
    /* An update and a merge of one key in one call: the merge must start
     * from the update's object (had both read the old state, the merge's
     * write would have replaced the update's: a lost write). */
    rep_store_op twice[2] = {
        {.kind = REP_STORE_OP_UPDATE,
         .key = S("t"),
         .value = S("t1"),
         .actor = 11,
         .now_us = 5,
         .out = &out[0]},
        {.kind = REP_STORE_OP_MERGE,
         .key = S("t"),
         .value = kv_buf_slice(&other),
         .actor = 11},
    };
    OK(rep_store_apply(g_st[0], twice, 2));
    OK(twice[0].rc);
    OK(twice[1].rc);
    s = load(0, "t");
    cr_assert(holds(s, "t1") && holds(s, "from-1"),
              "the merge saw the update made before it in the same call");
    dvv_set_free(s);
    kv_buf_release(&ctx);
    kv_buf_release(&other);
    for (int i = 0; i < 5; i++) kv_buf_release(&out[i]);
}
