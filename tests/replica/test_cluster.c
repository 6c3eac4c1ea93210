/*
 * Clusters of real node processes on 127.0.0.1: quorum reads see the last
 * acknowledged write through any node; with one node killed, W=2 writes
 * and R=2 reads still succeed and W=3 fails at once; a killed node comes
 * back with its identity; concurrent writes through different nodes become
 * siblings and a write with the merged context resolves them, and writers
 * with stale contexts never make more siblings than there are writers;
 * join and leave move data so that every acknowledged key is readable
 * afterwards, stored on exactly its owners; with one clock 5 s ahead, a
 * later write is silently lost under last-writer-wins and kept as a
 * sibling under vector clocks; a scan of each node lists every key it
 * holds. Every process a test starts is stopped by the fixture, also when
 * an assertion fails.
 */
#include "engine/engine.h"
#include "replica/client.h"
#include "replica/dvv.h"
#include "replica/proto.h"
#include "replica/store.h"
#include "ring/ring.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXN 5

typedef struct node {
    pid_t pid;
    char name[16];
    char data[256];
    char log[256];
    char addr[64];
} node;

static char g_dir[64];
static char g_bin[512];
static node g_nodes[MAXN];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-cluster");
    const char *b = getenv("QFS_BUILD_DIR");
    cr_assert_not_null(b, "QFS_BUILD_DIR is set by ctest");
    snprintf(g_bin, sizeof g_bin, "%s/quorumfs", b);
    kv_log_set_level(KV_LOG_ERROR);
}

static void stop(node *n, int sig) {
    if (n->pid <= 0) return;
    kill(n->pid, sig);
    waitpid(n->pid, NULL, 0);
    n->pid = -1;
}

static void teardown(void) {
    for (int i = 0; i < MAXN; i++) stop(&g_nodes[i], SIGKILL);
    if (!getenv("QFS_KEEP_TEST_DIRS")) rm_tree(g_dir);
}

TestSuite(cluster, .init = setup, .fini = teardown, .timeout = 180);

static void nap(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Start node i (its directory kept across restarts), joining through
 * seed (NULL: found a cluster), its clock off by skew_ms, and wait for its
 * address. */
static void start_skewed(int i, const char *seed, const char *skew_ms) {
    node *n = &g_nodes[i];
    snprintf(n->name, sizeof n->name, "n%d", i);
    snprintf(n->data, sizeof n->data, "%s/n%d", g_dir, i);
    snprintf(n->log, sizeof n->log, "%s/n%d.log", g_dir, i);
    unlink(n->log);
    n->pid = fork();
    cr_assert_geq(n->pid, 0);
    if (n->pid == 0) {
        if (!freopen(n->log, "w", stderr)) _exit(127);
        const char *argv[24] = {"quorumfs",
                                "--log-level",
                                "info",
                                "node",
                                "--data",
                                n->data,
                                "--listen",
                                "127.0.0.1:0",
                                "--name",
                                n->name,
                                "--gossip-ms",
                                "100",
                                "--failure-timeout-ms",
                                "1000",
                                "--tombstone-grace-ms",
                                "300"};
        int a = 16;
        if (seed) {
            argv[a++] = "--join";
            argv[a++] = seed;
        }
        if (skew_ms) {
            argv[a++] = "--clock-offset-ms";
            argv[a++] = skew_ms;
        }
        argv[a] = NULL;
        execv(g_bin, (char *const *)argv);
        _exit(127);
    }
    for (int t = 0; t < 500; t++) {
        FILE *f = fopen(n->log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "serving on ");
            if (at && sscanf(at, "serving on %63s", n->addr) == 1) {
                fclose(f);
                return;
            }
        }
        if (f) fclose(f);
        nap(10);
    }
    cr_assert_fail("node %d did not start (see %s)", i, n->log);
}

static void start(int i, const char *seed) {
    start_skewed(i, seed, NULL);
}

static rep_client *connect_to(int i) {
    rep_client *c;
    OK(rep_client_connect(g_nodes[i].addr, 2000, &c));
    return c;
}

/* The cluster state node i holds. */
static ring_cluster *state_of(int i) {
    rep_client *c = connect_to(i);
    kv_buf b = KV_BUF_INIT;
    OK(rep_client_state(c, &b));
    ring_cluster *s;
    OK(ring_cluster_decode(kv_buf_slice(&b), &s));
    kv_buf_release(&b);
    rep_client_close(c);
    return s;
}

/* Wait until every listed node serves a ring of `members` members with no
 * move in progress. */
static void wait_stable(const int *nodes, int count, uint32_t members) {
    for (int t = 0; t < 600; t++) {
        int ok = 0;
        for (int k = 0; k < count; k++) {
            ring_cluster *s = state_of(nodes[k]);
            const ring *r = ring_cluster_ring(s);
            if (r && !ring_cluster_next(s) && ring_members(r) == members) ok++;
            ring_cluster_unref(s);
        }
        if (ok == count) return;
        nap(50);
    }
    cr_assert_fail("the ring did not settle at %u members", members);
}

static void start_cluster(int count) {
    start(0, NULL);
    for (int i = 1; i < count; i++) start(i, g_nodes[0].addr);
    int all[MAXN] = {0, 1, 2, 3, 4};
    wait_stable(all, count, (uint32_t)count);
}

static void key_name(char *buf, int k) {
    snprintf(buf, 32, "key-%05d", k);
}

static void val_name(char *buf, int k, int gen) {
    snprintf(buf, 64, "value-%d-of-key-%05d", gen, k);
}

/* Put key k (after a get for its context) through node i. */
static int put_through(rep_client *c, int k, int gen, uint8_t w) {
    char key[32], val[64];
    key_name(key, k);
    val_name(val, k, gen);
    rep_opts o = {.n = 3, .r = 2, .w = w};
    kv_buf obj = KV_BUF_INIT, ctx = KV_BUF_INIT;
    int rc = rep_client_get(c, kv_slice_str(key), &o, &obj);
    if (rc == 0) {
        dvv_set *s;
        dvv_ctx *cx;
        OK(dvv_set_decode(kv_buf_slice(&obj), &s));
        OK(dvv_set_join(s, &cx));
        OK(dvv_ctx_encode(cx, &ctx));
        dvv_ctx_free(cx);
        dvv_set_free(s);
    } else if (rc != KV_ENOTFOUND) {
        kv_buf_release(&obj);
        return rc;
    }
    rc = rep_client_put(c, kv_slice_str(key), kv_buf_slice(&ctx),
                        kv_slice_str(val), &o);
    kv_buf_release(&obj);
    kv_buf_release(&ctx);
    return rc;
}

/* Get key k through c and check it holds exactly generation gen. */
static void expect_value(rep_client *c, int k, int gen, uint8_t r) {
    char key[32], val[64];
    key_name(key, k);
    val_name(val, k, gen);
    rep_opts o = {.n = 3, .r = r, .w = 2};
    kv_buf obj = KV_BUF_INIT;
    int rc = rep_client_get(c, kv_slice_str(key), &o, &obj);
    cr_assert_eq(rc, 0, "get %s: %s", key, kv_strerror(rc));
    dvv_set *s;
    OK(dvv_set_decode(kv_buf_slice(&obj), &s));
    cr_assert_eq(dvv_set_siblings(s), 1, "%s has %zu siblings", key,
                 dvv_set_siblings(s));
    dvv_sibling sb = dvv_set_sibling(s, 0);
    cr_assert(kv_slice_eq(sb.value.bytes, kv_slice_str(val)),
              "%s holds '%.*s', want '%s'", key, (int)sb.value.bytes.len,
              (const char *)sb.value.bytes.ptr, val);
    dvv_set_free(s);
    kv_buf_release(&obj);
}

Test(cluster, quorum_reads_see_acknowledged_writes) {
    start_cluster(3);
    rep_client *c[3];
    for (int i = 0; i < 3; i++) c[i] = connect_to(i);
    for (int gen = 1; gen <= 3; gen++) {
        for (int k = 0; k < 150; k++) OK(put_through(c[k % 3], k, gen, 2));
        /* Read through another node than the one that wrote. */
        for (int k = 0; k < 150; k++) expect_value(c[(k + 1) % 3], k, gen, 2);
    }
    for (int i = 0; i < 3; i++) rep_client_close(c[i]);
}

Test(cluster, one_node_down_quorums_of_two_still_work) {
    start_cluster(3);
    ring_cluster *before = state_of(2);
    int at = ring_cluster_find(before, kv_slice_str("n2"));
    uint64_t inc = ring_cluster_member(before, (uint32_t)at).incarnation;
    ring_cluster_unref(before);
    stop(&g_nodes[2], SIGKILL);
    rep_client *c[2] = {connect_to(0), connect_to(1)};
    for (int k = 0; k < 100; k++) OK(put_through(c[k % 2], k, 1, 2));
    for (int k = 0; k < 100; k++) expect_value(c[(k + 1) % 2], k, 1, 2);
    /* W=3 cannot be met by two nodes: a quick KV_EQUORUM, not a hang. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    EXPECT_RC(put_through(c[0], 1000, 1, 3), KV_EQUORUM);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_lt(t1.tv_sec - t0.tv_sec, 3, "W=3 failed, but slowly");
    /* The node comes back with its identity, and is served again. */
    start(2, NULL);
    int all[] = {0, 1, 2};
    wait_stable(all, 3, 3); /* its saved state may be older: it catches up */
    ring_cluster *after = state_of(2);
    at = ring_cluster_find(after, kv_slice_str("n2"));
    cr_assert_geq(at, 0);
    cr_assert_eq(ring_cluster_member(after, (uint32_t)at).incarnation, inc);
    cr_assert_eq(ring_members(ring_cluster_ring(after)), 3);
    ring_cluster_unref(after);
    rep_client *c2 = connect_to(2);
    for (int k = 0; k < 100; k++) expect_value(c2, k, 1, 2);
    for (int k = 0; k < 20; k++) OK(put_through(c2, k, 2, 3));
    rep_client_close(c2);
    for (int i = 0; i < 2; i++) rep_client_close(c[i]);
}

/* The context of the object behind key (through c) into ctx; siblings. */
static size_t read_ctx(rep_client *c, const char *key, kv_buf *ctx) {
    rep_opts o = {.n = 3, .r = 2, .w = 2};
    kv_buf obj = KV_BUF_INIT;
    kv_buf_reset(ctx);
    int rc = rep_client_get(c, kv_slice_str(key), &o, &obj);
    if (rc == KV_ENOTFOUND) return 0;
    OK(rc);
    dvv_set *s;
    dvv_ctx *cx;
    OK(dvv_set_decode(kv_buf_slice(&obj), &s));
    OK(dvv_set_join(s, &cx));
    OK(dvv_ctx_encode(cx, ctx));
    size_t n = dvv_set_siblings(s);
    dvv_ctx_free(cx);
    dvv_set_free(s);
    kv_buf_release(&obj);
    return n;
}

Test(cluster, concurrent_writes_become_siblings_and_resolve) {
    start_cluster(3);
    rep_client *a = connect_to(0), *b = connect_to(1);
    rep_opts o = {.n = 3, .r = 2, .w = 2};
    kv_buf ca = KV_BUF_INIT, cb = KV_BUF_INIT;
    const char *key = "cart/42";
    /* Both read nothing, both write: two siblings. */
    OK(rep_client_put(a, kv_slice_str(key), kv_slice_make("", 0),
                      kv_slice_str("apple"), &o));
    OK(rep_client_put(b, kv_slice_str(key), kv_slice_make("", 0),
                      kv_slice_str("pear"), &o));
    cr_assert_eq(read_ctx(a, key, &ca), 2);
    cr_assert_eq(read_ctx(b, key, &cb), 2);
    /* A write with the merged context resolves them. */
    OK(rep_client_put(a, kv_slice_str(key), kv_buf_slice(&ca),
                      kv_slice_str("apple+pear"), &o));
    cr_assert_eq(read_ctx(b, key, &cb), 1);
    /* Two writers, each writing with the context of its own last read,
     * which the other's write has made stale: never more than two. */
    for (int round = 0; round < 25; round++) {
        read_ctx(a, key, &ca);
        read_ctx(b, key, &cb);
        char v[32];
        snprintf(v, sizeof v, "a%d", round);
        OK(rep_client_put(a, kv_slice_str(key), kv_buf_slice(&ca),
                          kv_slice_str(v), &o));
        snprintf(v, sizeof v, "b%d", round);
        OK(rep_client_put(b, kv_slice_str(key), kv_buf_slice(&cb),
                          kv_slice_str(v), &o));
        size_t n = read_ctx(a, key, &ca);
        cr_assert_leq(n, 2, "round %d: %zu siblings from two writers", round,
                      n);
    }
    kv_buf_release(&ca);
    kv_buf_release(&cb);
    rep_client_close(a);
    rep_client_close(b);
}

typedef struct keyset {
    bool has[2000];
} keyset;

static int note_key(void *arg, kv_slice key, kv_slice obj) {
    (void)obj;
    keyset *ks = arg;
    int k;
    char buf[40];
    cr_assert_lt(key.len, sizeof buf);
    memcpy(buf, key.ptr, key.len);
    buf[key.len] = '\0';
    cr_assert_eq(sscanf(buf, "key-%d", &k), 1, "unexpected key %s", buf);
    ks->has[k] = true;
    return 0;
}

/* The keys node i's engine holds (the node is stopped). */
static void keys_of(int i, keyset *ks) {
    memset(ks, 0, sizeof *ks);
    char dir[300];
    snprintf(dir, sizeof dir, "%s/engine", g_nodes[i].data);
    eng_options eo;
    eng_options_init(&eo);
    eng_db *db;
    OK(eng_db_open(dir, &eo, &db));
    rep_store *s;
    OK(rep_store_new(db, &s));
    kv_buf cursor = KV_BUF_INIT;
    bool more = true;
    while (more)
        OK(rep_store_scan(s, 0, UINT64_MAX, &cursor, 1000, 1u << 30, note_key,
                          ks, &more));
    kv_buf_release(&cursor);
    rep_store_free(s);
    OK(eng_db_close(db));
}

/* Wait until node i's log says it dropped what ring version v took away. */
static void wait_dropped(int i, uint64_t v) {
    char want[64];
    snprintf(want, sizeof want, "ring version %llu: dropped",
             (unsigned long long)v);
    for (int t = 0; t < 600; t++) {
        FILE *f = fopen(g_nodes[i].log, "r");
        char line[512];
        bool seen = false;
        while (f && !seen && fgets(line, sizeof line, f))
            seen = strstr(line, want) != NULL;
        if (f) fclose(f);
        if (seen) return;
        nap(50);
    }
    cr_assert_fail("node %d did not drop for ring version %llu", i,
                   (unsigned long long)v);
}

/* Every key is stored on exactly its three owners under the ring. */
static void check_placement(const ring *r, const int *nodes, int count,
                            int keys) {
    keyset *ks = kv_calloc((size_t)count, sizeof *ks);
    for (int i = 0; i < count; i++) keys_of(nodes[i], &ks[i]);
    for (int k = 0; k < keys; k++) {
        char key[32];
        key_name(key, k);
        uint32_t own[3];
        int got = ring_preflist(r, ring_hash(kv_slice_str(key)), 3, own);
        cr_assert_eq(got, 3);
        for (int i = 0; i < count; i++) {
            bool owner = false;
            for (int j = 0; j < 3; j++)
                owner |= kv_slice_eq(ring_member(r, own[j]),
                                     kv_slice_str(g_nodes[nodes[i]].name));
            cr_assert_eq(ks[i].has[k], owner, "%s: on %s: %d, owner: %d", key,
                         g_nodes[nodes[i]].name, ks[i].has[k], owner);
        }
    }
    kv_free(ks);
}

Test(cluster, join_and_leave_move_data_nothing_lost) {
    enum { KEYS = 400 };
    start_cluster(3);
    rep_client *c = connect_to(0);
    for (int k = 0; k < KEYS; k++) OK(put_through(c, k, 1, 2));
    rep_client_close(c);
    /* A fourth node joins through another seed than the founder. */
    start(3, g_nodes[1].addr);
    int four[] = {0, 1, 2, 3};
    wait_stable(four, 4, 4);
    c = connect_to(3);
    for (int k = 0; k < KEYS; k++) expect_value(c, k, 1, 2);
    /* Writes keep working and land on the new owners. */
    for (int k = 0; k < KEYS; k += 4) OK(put_through(c, k, 2, 3));
    rep_client_close(c);
    /* n1 leaves: it hands everything over, then stops by itself. */
    c = connect_to(1);
    OK(rep_client_leave(c));
    rep_client_close(c);
    int st = 0;
    for (int t = 0; t < 600 && waitpid(g_nodes[1].pid, &st, WNOHANG) == 0; t++)
        nap(50);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the leaver did not stop cleanly");
    g_nodes[1].pid = -1;
    int three[] = {0, 2, 3};
    wait_stable(three, 3, 3);
    c = connect_to(2);
    for (int k = 0; k < KEYS; k++) expect_value(c, k, k % 4 == 0 ? 2 : 1, 3);
    rep_client_close(c);
    /* On disk: every key on exactly its owners (moved, then dropped). */
    ring_cluster *s = state_of(0);
    const ring *r = ring_cluster_ring(s);
    for (int i = 0; i < 3; i++) wait_dropped(three[i], ring_cluster_version(s));
    for (int i = 0; i < 3; i++) stop(&g_nodes[three[i]], SIGTERM);
    check_placement(r, three, 3, KEYS);
    ring_cluster_unref(s);
}

/* Whether node i knows bucket b's setting as flags. */
static bool bucket_is(int i, const char *b, uint32_t flags) {
    ring_cluster *s = state_of(i);
    bool is = ring_cluster_bucket_flags(s, kv_slice_str(b)) == flags &&
              ring_cluster_buckets(s) > 0;
    ring_cluster_unref(s);
    return is;
}

/* The known failure of last-writer-wins: with n0's clock 5 s ahead, a
 * write made later through n1 is acknowledged and silently lost, because
 * n0's earlier write carries the later timestamp. The same two writes in
 * a bucket with vector clocks both survive, as siblings. */
Test(cluster, clock_skew_loses_a_write_under_lww_not_under_vector_clocks) {
    start_skewed(0, NULL, "5000");
    start(1, g_nodes[0].addr);
    start(2, g_nodes[0].addr);
    int all[] = {0, 1, 2};
    wait_stable(all, 3, 3);
    rep_client *c0 = connect_to(0), *c1 = connect_to(1), *c2 = connect_to(2);
    OK(rep_client_bucket(c1, kv_slice_str("lww"), RING_BUCKET_LWW));
    for (int t = 0; t < 200 && !(bucket_is(0, "lww", RING_BUCKET_LWW) &&
                                 bucket_is(2, "lww", RING_BUCKET_LWW));
         t++)
        nap(50);
    cr_assert(bucket_is(0, "lww", RING_BUCKET_LWW), "the setting spread");
    rep_opts o = {.n = 3, .r = 2, .w = 2};
    const char *keys[2] = {"lww/device-7", "vclock/device-7"};
    for (int k = 0; k < 2; k++) {
        kv_slice key = kv_slice_str(keys[k]), none = kv_slice_make("", 0);
        /* Both writers write without reading, as LWW clients do. */
        OK(rep_client_put(c0, key, none, kv_slice_str("early-skewed"), &o));
        nap(100);
        OK(rep_client_put(c1, key, none, kv_slice_str("later-true"), &o));
        kv_buf obj = KV_BUF_INIT;
        OK(rep_client_get(c2, key, &(rep_opts){.n = 3, .r = 3, .w = 2}, &obj));
        dvv_set *s;
        OK(dvv_set_decode(kv_buf_slice(&obj), &s));
        if (k == 0) {
            cr_assert_eq(dvv_set_siblings(s), 1);
            dvv_sibling w = dvv_set_sibling(s, 0);
            cr_assert(kv_slice_eq(w.value.bytes, kv_slice_str("early-skewed")),
                      "LWW kept '%.*s': the later write was not lost?",
                      (int)w.value.bytes.len, (const char *)w.value.bytes.ptr);
        } else {
            cr_assert_eq(dvv_set_siblings(s), 2, "vector clocks keep both");
            bool early = false, later = false;
            for (size_t i = 0; i < 2; i++) {
                kv_slice v = dvv_set_sibling(s, i).value.bytes;
                early |= kv_slice_eq(v, kv_slice_str("early-skewed"));
                later |= kv_slice_eq(v, kv_slice_str("later-true"));
            }
            cr_assert(early && later);
        }
        dvv_set_free(s);
        kv_buf_release(&obj);
    }
    rep_client_close(c0);
    rep_client_close(c1);
    rep_client_close(c2);
}

/* Delete key k through c (reading its context first). */
static int del_through(rep_client *c, int k, uint8_t w) {
    char key[32];
    key_name(key, k);
    kv_buf ctx = KV_BUF_INIT;
    read_ctx(c, key, &ctx);
    int rc = rep_client_del(c, kv_slice_str(key), kv_buf_slice(&ctx),
                            &(rep_opts){.n = 3, .r = 2, .w = w});
    kv_buf_release(&ctx);
    return rc;
}

/* Whether key k reads as deleted through c with R=3: absent, or only
 * tombstones. */
static bool reads_deleted(rep_client *c, int k) {
    char key[32];
    key_name(key, k);
    kv_buf obj = KV_BUF_INIT;
    int rc = KV_EQUORUM;
    /* A restarted replica counts as down until its first heartbeat. */
    for (int t = 0; t < 100 && rc == KV_EQUORUM; t++) {
        rc = rep_client_get(c, kv_slice_str(key),
                            &(rep_opts){.n = 3, .r = 3, .w = 2}, &obj);
        if (rc == KV_EQUORUM) nap(50);
    }
    if (rc == KV_ENOTFOUND) return true;
    OK(rc);
    dvv_set *s;
    OK(dvv_set_decode(kv_buf_slice(&obj), &s));
    bool dead = true;
    for (size_t i = 0; i < dvv_set_siblings(s); i++)
        dead &= (dvv_set_sibling(s, i).value.flags & DVV_TOMBSTONE) != 0;
    dvv_set_free(s);
    kv_buf_release(&obj);
    return dead;
}

/* A tombstone every replica acknowledged is purged after the grace
 * period; one a replica missed (it was down) stays, and when that replica
 * comes back with the old value the key still reads as deleted. */
Test(cluster, tombstones_purged_only_when_every_replica_has_them) {
    start_cluster(3);
    rep_client *c = connect_to(0);
    for (int k = 0; k < 30; k++) OK(put_through(c, k, 1, 3));
    for (int k = 0; k < 10; k++) OK(del_through(c, k, 2));
    nap(1200); /* grace 300 ms, ticks of 100 ms */
    for (int k = 0; k < 10; k++) {
        char key[32];
        key_name(key, k);
        kv_buf obj = KV_BUF_INIT;
        EXPECT_RC(rep_client_get(c, kv_slice_str(key),
                                 &(rep_opts){.n = 3, .r = 3, .w = 2}, &obj),
                  KV_ENOTFOUND);
        kv_buf_release(&obj);
    }
    /* n2 misses the next deletes. */
    stop(&g_nodes[2], SIGKILL);
    for (int k = 10; k < 15; k++) OK(del_through(c, k, 2));
    nap(1200);
    start(2, NULL);
    int all[] = {0, 1, 2};
    wait_stable(all, 3, 3);
    for (int k = 10; k < 15; k++)
        cr_assert(reads_deleted(c, k), "key %d came back", k);
    rep_client_close(c);
    for (int i = 0; i < 3; i++) stop(&g_nodes[i], SIGTERM);
    for (int i = 0; i < 3; i++) {
        keyset ks;
        keys_of(i, &ks);
        for (int k = 0; k < 10; k++)
            cr_assert_not(ks.has[k], "n%d still holds purged key %d", i, k);
        for (int k = 10; k < 30; k++)
            cr_assert(ks.has[k], "n%d lost key %d (or its tombstone)", i, k);
    }
}

/* A member asked for a key it does not own (by a coordinator whose ring
 * is out of date, say) refuses with KV_ESTALE instead of answering
 * "not found", which a coordinator would count as a good read. */
Test(cluster, a_member_refuses_keys_it_does_not_own) {
    start_cluster(4);
    ring_cluster *s = state_of(0);
    const ring *r = ring_cluster_ring(s);
    char key[32];
    int k = 0, owned_by_n3 = -1, not_by_n3 = -1;
    for (; k < 1000 && (owned_by_n3 < 0 || not_by_n3 < 0); k++) {
        key_name(key, k);
        uint32_t own[3];
        ring_preflist(r, ring_hash(kv_slice_str(key)), 3, own);
        bool n3 = false;
        for (int j = 0; j < 3; j++)
            n3 |= kv_slice_eq(ring_member(r, own[j]), kv_slice_str("n3"));
        *(n3 ? &owned_by_n3 : &not_by_n3) = k;
    }
    ring_cluster_unref(s);
    cr_assert(owned_by_n3 >= 0 && not_by_n3 >= 0);
    rep_client *c = connect_to(3);
    const rep_msg *reply;
    key_name(key, not_by_n3);
    rep_msg g = {.type = REP_RGET, .key = kv_slice_str(key)};
    OK(rep_client_call(c, &g, &reply));
    cr_assert_eq(reply->type, REP_RGET_REPLY);
    EXPECT_RC(reply->status, KV_ESTALE);
    key_name(key, owned_by_n3);
    rep_msg g2 = {.type = REP_RGET, .key = kv_slice_str(key)};
    OK(rep_client_call(c, &g2, &reply));
    EXPECT_RC(reply->status, KV_ENOTFOUND);
    rep_client_close(c);
}

/* Objects too big to merge on the loop (over 256 KiB) are merged on the
 * pool: a get of two concurrent 300 KiB writes returns both, whole. */
Test(cluster, big_siblings_are_merged_whole) {
    start_cluster(3);
    rep_client *a = connect_to(0), *b = connect_to(1), *c = connect_to(2);
    size_t len = 300u << 10;
    char *va = kv_malloc(len), *vb = kv_malloc(len);
    memset(va, 'a', len);
    memset(vb, 'b', len);
    rep_opts o = {.n = 3, .r = 3, .w = 3};
    kv_slice key = kv_slice_str("big/one"), none = kv_slice_make("", 0);
    OK(rep_client_put(a, key, none, kv_slice_make(va, len), &o));
    OK(rep_client_put(b, key, none, kv_slice_make(vb, len), &o));
    for (int round = 0; round < 5; round++) {
        kv_buf obj = KV_BUF_INIT;
        OK(rep_client_get(c, key, &o, &obj));
        dvv_set *s;
        OK(dvv_set_decode(kv_buf_slice(&obj), &s));
        cr_assert_eq(dvv_set_siblings(s), 2);
        for (size_t i = 0; i < 2; i++) {
            kv_slice v = dvv_set_sibling(s, i).value.bytes;
            cr_assert_eq(v.len, len);
            cr_assert(kv_slice_eq(v, kv_slice_make(va, len)) ||
                      kv_slice_eq(v, kv_slice_make(vb, len)));
        }
        cr_assert_neq(dvv_set_sibling(s, 0).value.bytes.ptr[0],
                      dvv_set_sibling(s, 1).value.bytes.ptr[0]);
        dvv_set_free(s);
        kv_buf_release(&obj);
    }
    kv_free(va);
    kv_free(vb);
    rep_client_close(a);
    rep_client_close(b);
    rep_client_close(c);
}

/* A member that dies for good is removed on its behalf: the ring moves on
 * without it, and its keys are copied from the replicas that remain, so
 * every key is on three live members again. Removing a member that is up
 * is refused. */
Test(cluster, a_dead_member_is_removed_and_its_keys_re_replicated) {
    enum { KEYS = 200 };
    start_cluster(4);
    rep_client *c = connect_to(0);
    for (int k = 0; k < KEYS; k++) OK(put_through(c, k, 1, 3));
    EXPECT_RC(rep_client_remove(c, kv_slice_str("n3")), -EBUSY);
    stop(&g_nodes[3], SIGKILL);
    int rc = -EBUSY;
    for (int t = 0; t < 100 && rc == -EBUSY; t++) {
        rc = rep_client_remove(c, kv_slice_str("n3"));
        if (rc == -EBUSY) nap(100); /* until n0 sees it down */
    }
    OK(rc);
    int three[] = {0, 1, 2};
    wait_stable(three, 3, 3);
    for (int k = 0; k < KEYS; k++) expect_value(c, k, 1, 3);
    rep_client_close(c);
    ring_cluster *s = state_of(0);
    int at = ring_cluster_find(s, kv_slice_str("n3"));
    cr_assert_eq(ring_cluster_member(s, (uint32_t)at).status, RING_REMOVED);
    /* On disk: every key on exactly its three live owners. */
    for (int i = 0; i < 3; i++) wait_dropped(i, ring_cluster_version(s));
    for (int i = 0; i < 3; i++) stop(&g_nodes[i], SIGTERM);
    check_placement(ring_cluster_ring(s), three, 3, KEYS);
    ring_cluster_unref(s);
}

typedef struct scanned {
    int n;
    uint64_t newest[2000];
    int times[2000]; /* how often each key-NNNNN was listed */
} scanned;

static int note_scanned(void *arg, const rep_scan_item *it) {
    scanned *s = arg;
    char buf[40];
    int k = -1;
    cr_assert_lt(it->key.len, sizeof buf);
    memcpy(buf, it->key.ptr, it->key.len);
    buf[it->key.len] = '\0';
    cr_assert(sscanf(buf, "key-%d", &k) == 1 && k >= 0 && k < 2000,
              "'%s' listed under 'key-'", buf);
    cr_assert_not(it->tombstone, "'%s' listed as deleted", buf);
    s->times[k]++;
    s->newest[k] = it->newest_us;
    s->n++;
    return 0;
}

/* A scan lists what the node it asks stores: with N = 3 on three nodes,
 * every key written through one node is listed by each, once, with the
 * same newest write time (one object, replicated), and nothing outside
 * the prefix. */
Test(cluster, every_node_lists_the_keys_it_holds) {
    enum { KEYS = 200 };
    start_cluster(3);
    rep_client *c[3];
    for (int i = 0; i < 3; i++) c[i] = connect_to(i);
    uint64_t t0 = kv_wall_us();
    /* W = 3: every copy is written once the put returns. */
    for (int k = 0; k < KEYS; k++) OK(put_through(c[0], k, 1, 3));
    uint64_t t1 = kv_wall_us();
    for (int k = 0; k < 20; k++) {
        char key[32];
        snprintf(key, sizeof key, "other-%d", k);
        OK(rep_client_put(c[0], kv_slice_str(key), kv_slice_str(""),
                          kv_slice_str("v"), &(rep_opts){.w = 3}));
    }
    scanned *s[3];
    for (int i = 0; i < 3; i++) {
        s[i] = calloc(1, sizeof *s[i]);
        cr_assert_not_null(s[i]);
        kv_buf cur = KV_BUF_INIT;
        bool more = true;
        int batches = 0;
        while (more) {
            OK(rep_client_scan(c[i], kv_slice_str("key-"), &cur, 64,
                               note_scanned, s[i], &more));
            cr_assert_lt(++batches, 1000);
        }
        kv_buf_release(&cur);
        cr_assert_eq(s[i]->n, KEYS, "node %d listed %d keys", i, s[i]->n);
        for (int k = 0; k < KEYS; k++) {
            cr_assert_eq(s[i]->times[k], 1, "node %d listed key-%05d %d times",
                         i, k, s[i]->times[k]);
            cr_assert(s[i]->newest[k] >= t0 && s[i]->newest[k] <= t1);
            cr_assert_eq(s[i]->newest[k], s[0]->newest[k]);
        }
    }
    for (int i = 0; i < 3; i++) {
        free(s[i]);
        rep_client_close(c[i]);
    }
}
