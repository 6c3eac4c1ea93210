/*
 * Tests of sorted tables (engine/table.c): a 100k-entry table with
 * deletions, several versions per key and values from 0 bytes to 5 MiB,
 * read back by point lookups at many snapshots and by full and seeking
 * iteration, with and without compression and the block cache; properties;
 * versions of one key spread over many blocks; corruption (a bit flip in
 * every 13th byte of a small table must either read correctly or report
 * KV_ECORRUPT, never a wrong answer), truncation, bad magic, unknown
 * version; write, sync, open, read and allocation failures; abandon.
 *
 * Entries come from a model: user key i has 1 to 4 versions whose sequence
 * numbers interleave with other keys', and values are regenerated from
 * (seed, length) when checked, so no copy of the data is kept. Every test
 * works in its own mkdtemp directory, removed by the fixture.
 * Format: docs/engine-format.md, "Sorted tables" (the tests that patch bytes
 * rely on its footer layout).
 */
#include "engine/engine_int.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- fixture: temporary directory and a log sink ---- */

static char g_dir[PATH_MAX];
static char g_last_log[1024];
static long g_log_lines;

static void capture(kv_log_level lvl, const char *line, void *arg) {
    (void)lvl;
    (void)arg;
    snprintf(g_last_log, sizeof g_last_log, "%s", line);
    g_log_lines++;
}

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-tabletest");
    g_last_log[0] = '\0';
    g_log_lines = 0;
    kv_log_set_sink(capture, NULL);
}

static void teardown(void) {
    kv_alloc_fail_after(-1);
    kv_log_set_sink(NULL, NULL);
    if (g_dir[0]) rm_tree(g_dir);
    g_dir[0] = '\0';
}

TestSuite(table, .init = setup, .fini = teardown);

/* A path in the test directory; the result stays valid for the next seven
 * calls, so a test can hold a few paths at once. */
static const char *path_of(const char *name) {
    static char p[8][PATH_MAX + 64];
    static int next;
    char *r = p[next++ % 8];
    snprintf(r, sizeof p[0], "%s/%s", g_dir, name);
    return r;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static uint64_t file_size(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static void read_file(const char *path, kv_buf *out) {
    kv_buf_reset(out);
    OK(eng__env_read_all(NULL, path, 1u << 30, out));
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* ---- the model ---- */

typedef struct entry {
    size_t koff, klen; /* internal key in model.keys */
    uint64_t seq;
    int type;
    uint32_t vseed;
    size_t vlen;
} entry;

typedef struct model {
    kv_buf keys;
    entry *e;
    size_t n;
    uint32_t *first; /* first entry of user key i (newest version) */
    uint32_t *nver;
    int nuser;
} model;

/* Value bytes from (seed, len): odd seeds give a repeating (compressible)
 * pattern, even seeds pseudo-random bytes. */
static void fill_value(uint8_t *p, uint32_t seed, size_t len) {
    uint64_t x = seed * UINT64_C(0x9e3779b97f4a7c15) + 1;
    for (size_t i = 0; i < len; i++) {
        if (seed & 1) {
            p[i] = (uint8_t)("quorumfs-"[i % 9] + seed % 7);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p[i] = (uint8_t)x;
        }
    }
}

static size_t ukey_of(char *buf, int i) {
    return (size_t)snprintf(buf, 40, "k%07d-%.*s", i, i % 11, "abcdefghijk");
}

static kv_slice ekey(const model *m, size_t i) {
    return kv_slice_make(m->keys.ptr + m->e[i].koff, m->e[i].klen);
}

/* big: value lengths up to 100 KiB now and then, and one 5 MiB value. */
static void gen_model(model *m, int nuser, bool big) {
    memset(m, 0, sizeof *m);
    m->nuser = nuser;
    m->first = calloc((size_t)nuser, sizeof *m->first);
    m->nver = calloc((size_t)nuser, sizeof *m->nver);
    size_t cap = (size_t)nuser * 4;
    m->e = calloc(cap, sizeof *m->e);
    char k[40];
    for (int i = 0; i < nuser; i++) {
        size_t kl = ukey_of(k, i);
        int nver = 1 + (i * 7) % 4;
        m->first[i] = (uint32_t)m->n;
        m->nver[i] = (uint32_t)nver;
        for (int j = nver - 1; j >= 0; j--) {
            entry *e = &m->e[m->n];
            e->koff = m->keys.len;
            e->klen = kl + 8;
            e->seq = (uint64_t)j * (uint64_t)nuser + (uint64_t)i + 1;
            e->type = (i + j) % 11 == 0 ? ENG_TYPE_DEL : ENG_TYPE_PUT;
            e->vseed = (uint32_t)(m->n * 2654435761u);
            if (e->type == ENG_TYPE_PUT) {
                e->vlen = (size_t)(i * 31 + j * 17) % 64;
                if (big && m->n % 997 == 0)
                    e->vlen = (m->n * 7919) % (100 * 1024 + 1);
                if (big && i == nuser / 2 && j == nver - 1) e->vlen = 5u << 20;
            }
            OK(eng__ikey_append(&m->keys, kv_slice_make(k, kl), e->seq,
                                e->type));
            m->n++;
        }
    }
}

static void free_model(model *m) {
    kv_buf_release(&m->keys);
    free(m->e);
    free(m->first);
    free(m->nver);
}

static eng_table_opts topts(size_t block_bytes, int level, int bits) {
    eng_table_opts o = {.block_bytes = block_bytes,
                        .restart_interval = 16,
                        .bloom_bits_per_key = bits,
                        .compression_level = level};
    return o;
}

/* Build the model's table at path; 0 or the first error (builder abandoned
 * then). */
static int try_build(eng_fault *f, const char *path, const eng_table_opts *o,
                     const model *m, eng_table_props *props) {
    eng_tbuilder *b;
    int rc = eng__tb_new(f, path, o, &b);
    if (rc) return rc;
    size_t cap = 0;
    uint8_t *v = NULL;
    for (size_t i = 0; i < m->n && rc == 0; i++) {
        if (m->e[i].vlen > cap) {
            cap = m->e[i].vlen;
            v = realloc(v, cap);
        }
        fill_value(v, m->e[i].vseed, m->e[i].vlen);
        rc = eng__tb_add(b, ekey(m, i), kv_slice_make(v, m->e[i].vlen));
    }
    free(v);
    if (rc == 0) cr_assert_eq(eng__tb_entries(b), m->n);
    if (rc == 0) rc = eng__tb_finish(b, props);
    if (rc) {
        eng__tb_abandon(b);
        return rc;
    }
    eng__tb_free(b);
    return 0;
}

static void build(const char *path, const eng_table_opts *o, const model *m) {
    eng_table_props p;
    OK(try_build(NULL, path, o, m, &p));
    cr_assert_eq(p.entries, m->n);
    cr_assert_eq(p.file_size, file_size(path));
    eng__props_release(&p);
}

/* A model of nuser keys without big values, built into the test directory
 * as name (compression level 1, 10 bloom bits per key); returns its path
 * (from path_of). */
static const char *build_small(model *m, int nuser, const char *name,
                               size_t block_bytes) {
    gen_model(m, nuser, false);
    const char *p = path_of(name);
    eng_table_opts o = topts(block_bytes, 1, 10);
    build(p, &o, m);
    return p;
}

static bool value_is(kv_slice got, const entry *e) {
    static kv_buf want; /* scratch, kept for the process's lifetime */
    if (got.len != e->vlen) return false;
    kv_buf_reset(&want);
    OK(kv_buf_reserve(&want, e->vlen));
    fill_value(want.ptr, e->vseed, e->vlen);
    return e->vlen == 0 || memcmp(got.ptr, want.ptr, e->vlen) == 0;
}

/* The entry a lookup of user key i at snap must find, or NULL. */
static const entry *expected(const model *m, int i, uint64_t snap) {
    for (uint32_t j = 0; j < m->nver[i]; j++) {
        const entry *e = &m->e[m->first[i] + j];
        if (e->seq <= snap) return e;
    }
    return NULL;
}

/* Look up user key i at snap. With tolerate_corrupt, KV_ECORRUPT is an
 * acceptable answer; a wrong one never is. Returns the rc. */
static int check_get(eng_table *t, const model *m, int i, uint64_t snap,
                     bool tolerate_corrupt) {
    char k[40];
    size_t kl = ukey_of(k, i);
    kv_buf val = KV_BUF_INIT;
    int type = -1;
    bool probed;
    uint64_t seq = 0;
    int rc = eng__table_get(t, kv_slice_make(k, kl), snap, &type, &val, &probed,
                            &seq);
    const entry *e = expected(m, i, snap);
    if (tolerate_corrupt && rc == KV_ECORRUPT) goto out;
    if (!e) {
        cr_assert_eq(rc, KV_ENOTFOUND, "key %d snap %llu: rc %d, want none", i,
                     (unsigned long long)snap, rc);
        goto out;
    }
    cr_assert_eq(rc, 0, "key %d snap %llu: rc %d (%s)", i,
                 (unsigned long long)snap, rc, kv_strerror(rc));
    cr_assert(probed);
    cr_assert_eq(type, e->type, "key %d snap %llu: type", i,
                 (unsigned long long)snap);
    cr_assert_eq(seq, e->seq, "key %d snap %llu: seq %llu want %llu", i,
                 (unsigned long long)snap, (unsigned long long)seq,
                 (unsigned long long)e->seq);
    if (type == ENG_TYPE_PUT)
        cr_assert(value_is(kv_buf_slice(&val), e), "key %d snap %llu: value", i,
                  (unsigned long long)snap);
out:
    kv_buf_release(&val);
    return rc;
}

/* Keys that sort between (or around) the model's keys are absent. */
static int check_absent(eng_table *t, const char *k, bool tolerate_corrupt) {
    kv_buf val = KV_BUF_INIT;
    int type;
    bool probed;
    int rc = eng__table_get(t, kv_slice_str(k), ENG_MAX_SEQ, &type, &val,
                            &probed, NULL);
    if (!(tolerate_corrupt && rc == KV_ECORRUPT))
        cr_assert_eq(rc, KV_ENOTFOUND, "absent key '%s': rc %d", k, rc);
    kv_buf_release(&val);
    return rc;
}

/* Every key at the newest snapshot; every stride-th key also at each
 * version's seq and just below it; keys in between are absent. */
static void check_gets(eng_table *t, const model *m, int stride) {
    char k[48];
    for (int i = 0; i < m->nuser; i++) {
        check_get(t, m, i, ENG_MAX_SEQ, false);
        if (i % stride) continue;
        for (uint32_t j = 0; j < m->nver[i]; j++) {
            uint64_t s = m->e[m->first[i] + j].seq;
            check_get(t, m, i, s, false);
            check_get(t, m, i, s - 1, false);
        }
        size_t kl = ukey_of(k, i);
        k[kl] = '!';
        k[kl + 1] = '\0';
        check_absent(t, k, false);
    }
    check_absent(t, "a", false);
    check_absent(t, "z", false);
    check_absent(t, "", false);
}

/* Full scan equals the model; then seeks at every stride-th entry. */
static void check_iter(eng_table *t, const model *m, bool fill_cache,
                       int stride) {
    eng_iiter *it = eng__table_iter(t, fill_cache);
    cr_assert_not_null(it);
    size_t i = 0;
    for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it), i++) {
        cr_assert_lt(i, m->n);
        cr_assert(kv_slice_eq(it->ops->key(it), ekey(m, i)), "key at %zu", i);
        cr_assert(value_is(it->ops->value(it), &m->e[i]), "value at %zu", i);
    }
    OK(it->ops->status(it));
    cr_assert_eq(i, m->n);
    kv_buf tk = KV_BUF_INIT;
    for (i = 0; i < m->n; i += (size_t)stride) {
        it->ops->seek(it, ekey(m, i));
        cr_assert(it->ops->valid(it));
        cr_assert(kv_slice_eq(it->ops->key(it), ekey(m, i)));
        /* Just below this entry's seq: the next entry. */
        kv_slice ik = ekey(m, i);
        kv_buf_reset(&tk);
        OK(eng__ikey_append(&tk, eng__ikey_user(ik), m->e[i].seq - 1,
                            ENG_TYPE_SEEK));
        it->ops->seek(it, kv_buf_slice(&tk));
        if (i + 1 < m->n) {
            cr_assert(it->ops->valid(it));
            cr_assert(kv_slice_eq(it->ops->key(it), ekey(m, i + 1)));
        } else {
            cr_assert(!it->ops->valid(it));
        }
    }
    OK(it->ops->status(it));
    kv_buf_release(&tk);
    it->ops->free(it);
}

/* ---- round trips ---- */

static void big_round_trip(int level, size_t cache_bytes, int stride,
                           bool map) {
    model m;
    gen_model(&m, 40000, true);
    cr_assert_gt(m.n, 99000);
    const char *p = path_of("000007.sst");
    eng_table_opts o = topts(4096, level, 10);
    build(p, &o, &m);

    eng_cache *c = NULL;
    if (cache_bytes) OK(eng__cache_new(cache_bytes, &c));
    eng_table *t;
    OK(eng__table_open(NULL, p, 7, c, map, &t));
    /* The filter (~10 bits a key) and the index stay in the mapping of a
     * mapped table; read with pread, the table holds copies, charged to
     * the cache while it is open. */
    if (map) {
        cr_assert_lt(eng__table_mem(t), 4096);
        cr_assert_eq(eng__table_charge(t), 0);
    } else {
        cr_assert_gt(eng__table_mem(t), 40000 * 10 / 8);
        if (c) {
            /* Everything but the small reader and its properties. */
            cr_assert_gt(eng__table_charge(t), 40000 * 10 / 8);
            cr_assert_gt(eng__table_charge(t), eng__table_mem(t) - 1024);
        } else {
            cr_assert_eq(eng__table_charge(t), 0);
        }
    }
    if (c) cr_assert_eq(eng__cache_usage(c), eng__table_charge(t));
    check_gets(t, &m, stride);
    /* Uncompressed blocks of a mapped table are read in place, never
     * copied into the cache; everything else goes through it. */
    if (c && map && level == 0)
        cr_assert_eq(eng__cache_usage(c), 0);
    else if (c)
        cr_assert_gt(eng__cache_usage(c), eng__table_charge(t));
    check_iter(t, &m, true, 97);
    eng__table_close(t);
    if (c) cr_assert_eq(eng__cache_reserved(c), 0);
    eng__cache_free(c);
    free_model(&m);
}

/* Lookups without a cache are covered by the smaller tables below (the
 * 5 MiB value too, in write_and_sync_failures_during_build). */
Test(table, big_compressed_with_cache) {
    big_round_trip(1, 64u << 20, 1, false);
}

Test(table, big_uncompressed_with_small_cache) {
    big_round_trip(0, 1u << 20, 7, false);
}

Test(table, big_mapped_compressed_and_uncompressed) {
    big_round_trip(1, 8u << 20, 3, true);
    big_round_trip(0, 8u << 20, 3, true);
}

Test(table, compression_shrinks_compressible_tables) {
    model m;
    gen_model(&m, 3000, false);
    for (size_t i = 0; i < m.n; i++) m.e[i].vseed |= 1; /* repeating */
    const char *pz = path_of("z.sst"), *pr = path_of("r.sst");
    eng_table_opts oz = topts(4096, 3, 10), orw = topts(4096, 0, 10);
    build(pz, &oz, &m);
    build(pr, &orw, &m);
    uint64_t sz = file_size(pz), sr = file_size(pr);
    cr_assert_lt(sz * 2, sr, "compressed %llu, raw %llu",
                 (unsigned long long)sz, (unsigned long long)sr);
    eng_table *t;
    OK(eng__table_open(NULL, pz, 1, NULL, false, &t));
    check_gets(t, &m, 1);
    check_iter(t, &m, false, 7);
    eng__table_close(t);
    free_model(&m);
}

Test(table, props_describe_the_table) {
    model m;
    gen_model(&m, 500, false);
    const char *p = path_of("p.sst");
    eng_table_opts o = topts(1024, 1, 10);
    eng_table_props props;
    OK(try_build(NULL, p, &o, &m, &props));
    uint64_t dels = 0, kb = 0, vb = 0, minseq = UINT64_MAX, maxseq = 0;
    for (size_t i = 0; i < m.n; i++) {
        dels += m.e[i].type == ENG_TYPE_DEL;
        kb += m.e[i].klen;
        vb += m.e[i].vlen;
        minseq = KV_MIN(minseq, m.e[i].seq);
        maxseq = KV_MAX(maxseq, m.e[i].seq);
    }
    cr_assert_eq(props.entries, m.n);
    cr_assert_eq(props.deletions, dels);
    cr_assert_gt(dels, 0);
    cr_assert_eq(props.min_seq, minseq);
    cr_assert_eq(props.max_seq, maxseq);
    cr_assert_eq(props.raw_key_bytes, kb);
    cr_assert_eq(props.raw_value_bytes, vb);
    cr_assert(kv_slice_eq(kv_buf_slice(&props.smallest), ekey(&m, 0)));
    cr_assert(kv_slice_eq(kv_buf_slice(&props.largest), ekey(&m, m.n - 1)));
    cr_assert_eq(props.file_size, file_size(p));
    eng__props_release(&props);
    free_model(&m);
}

Test(table, versions_spanning_many_blocks) {
    /* One user key with 300 versions in 64-byte blocks: a lookup must walk
     * from the block the index names into the following ones. */
    const char *p = path_of("v.sst");
    eng_table_opts o = topts(64, 1, 10);
    eng_tbuilder *b;
    OK(eng__tb_new(NULL, p, &o, &b));
    kv_buf ik = KV_BUF_INIT;
    char v[32];
    OK(eng__ikey_append(&ik, kv_slice_str("a"), 1000, ENG_TYPE_PUT));
    OK(eng__tb_add(b, kv_buf_slice(&ik), kv_slice_str("a-value")));
    for (int s = 600; s >= 2; s -= 2) { /* even seqs 600..2 */
        kv_buf_reset(&ik);
        OK(eng__ikey_append(&ik, kv_slice_str("key"), (uint64_t)s,
                            s % 10 == 0 ? ENG_TYPE_DEL : ENG_TYPE_PUT));
        int n = snprintf(v, sizeof v, "v%d", s);
        OK(eng__tb_add(b, kv_buf_slice(&ik), kv_slice_make(v, (size_t)n)));
    }
    kv_buf_reset(&ik);
    OK(eng__ikey_append(&ik, kv_slice_str("kez"), 1, ENG_TYPE_PUT));
    OK(eng__tb_add(b, kv_buf_slice(&ik), kv_slice_str("z")));
    eng_table_props props;
    OK(eng__tb_finish(b, &props));
    eng__tb_free(b);
    eng__props_release(&props);

    eng_table *t;
    OK(eng__table_open(NULL, p, 3, NULL, false, &t));
    kv_buf val = KV_BUF_INIT;
    int type;
    bool probed;
    uint64_t seq;
    for (uint64_t snap = 0; snap <= 700; snap++) {
        int rc = eng__table_get(t, kv_slice_str("key"), snap, &type, &val,
                                &probed, &seq);
        if (snap < 2) {
            cr_assert_eq(rc, KV_ENOTFOUND, "snap %llu",
                         (unsigned long long)snap);
            continue;
        }
        uint64_t want = KV_MIN(snap & ~UINT64_C(1), 600);
        cr_assert_eq(rc, 0, "snap %llu: %d", (unsigned long long)snap, rc);
        cr_assert_eq(seq, want);
        cr_assert_eq(type, want % 10 == 0 ? ENG_TYPE_DEL : ENG_TYPE_PUT);
        if (type == ENG_TYPE_PUT) {
            int n = snprintf(v, sizeof v, "v%llu", (unsigned long long)want);
            cr_assert(
                kv_slice_eq(kv_buf_slice(&val), kv_slice_make(v, (size_t)n)));
        }
    }
    OK(eng__table_get(t, kv_slice_str("kez"), 5, &type, &val, &probed, &seq));
    cr_assert(kv_slice_eq(kv_buf_slice(&val), kv_slice_str("z")));
    EXPECT_RC(
        eng__table_get(t, kv_slice_str("kez"), 0, &type, &val, &probed, &seq),
        KV_ENOTFOUND);
    EXPECT_RC(
        eng__table_get(t, kv_slice_str("kex"), 9, &type, &val, &probed, &seq),
        KV_ENOTFOUND);
    kv_buf_release(&val);
    kv_buf_release(&ik);
    eng__table_close(t);
}

Test(table, empty_table) {
    const char *p = path_of("e.sst");
    eng_table_opts o = topts(4096, 1, 10);
    eng_tbuilder *b;
    OK(eng__tb_new(NULL, p, &o, &b));
    eng_table_props props;
    OK(eng__tb_finish(b, &props));
    eng__tb_free(b);
    cr_assert_eq(props.entries, 0);
    cr_assert_eq(props.smallest.len, 0);
    eng__props_release(&props);
    eng_table *t;
    OK(eng__table_open(NULL, p, 1, NULL, false, &t));
    check_absent(t, "x", false);
    eng_iiter *it = eng__table_iter(t, true);
    it->ops->seek_first(it);
    cr_assert(!it->ops->valid(it));
    it->ops->seek(it, kv_slice_str("xxxxxxxxxxx"));
    cr_assert(!it->ops->valid(it));
    OK(it->ops->status(it));
    it->ops->free(it);
    eng__table_close(t);
}

Test(table, bloom_filter_skips_absent_keys) {
    model m;
    gen_model(&m, 2000, false);
    const char *pf = path_of("f.sst"), *pn = path_of("n.sst");
    eng_table_opts of = topts(4096, 1, 10), on = topts(4096, 1, 0);
    build(pf, &of, &m);
    build(pn, &on, &m);
    eng_table *tf, *tn;
    OK(eng__table_open(NULL, pf, 1, NULL, false, &tf));
    OK(eng__table_open(NULL, pn, 2, NULL, false, &tn));
    int negatives = 0;
    kv_buf val = KV_BUF_INIT;
    char k[40];
    for (int i = 0; i < 2000; i++) {
        int type;
        bool probed;
        snprintf(k, sizeof k, "absent-%d", i);
        EXPECT_RC(eng__table_get(tf, kv_slice_str(k), ENG_MAX_SEQ, &type, &val,
                                 &probed, NULL),
                  KV_ENOTFOUND);
        negatives += !probed;
        EXPECT_RC(eng__table_get(tn, kv_slice_str(k), ENG_MAX_SEQ, &type, &val,
                                 &probed, NULL),
                  KV_ENOTFOUND);
        cr_assert(probed, "without a filter every lookup probes");
    }
    cr_assert_gt(negatives, 1940, "only %d of 2000 filtered", negatives);
    check_gets(tn, &m, 3);
    kv_buf_release(&val);
    eng__table_close(tf);
    eng__table_close(tn);
    free_model(&m);
}

Test(table, misuse_is_rejected_without_damage) {
    const char *p = path_of("m.sst");
    eng_table_opts o = topts(4096, 1, 10);
    eng_tbuilder *b;
    OK(eng__tb_new(NULL, p, &o, &b));
    kv_buf a = KV_BUF_INIT, z = KV_BUF_INIT;
    OK(eng__ikey_append(&a, kv_slice_str("a"), 5, ENG_TYPE_PUT));
    OK(eng__ikey_append(&z, kv_slice_str("z"), 5, ENG_TYPE_PUT));
    OK(eng__tb_add(b, kv_buf_slice(&z), kv_slice_str("1")));
    EXPECT_RC(eng__tb_add(b, kv_buf_slice(&a), kv_slice_str("2")), -EINVAL);
    EXPECT_RC(eng__tb_add(b, kv_buf_slice(&z), kv_slice_str("2")), -EINVAL);
    EXPECT_RC(eng__tb_add(b, kv_slice_str("short"), kv_slice_str("2")),
              -EINVAL);
    static const uint8_t byte;
    kv_buf zz = KV_BUF_INIT;
    OK(eng__ikey_append(&zz, kv_slice_str("zz"), 5, ENG_TYPE_PUT));
    /* Rejected on its length alone: the bytes are never read. */
    EXPECT_RC(eng__tb_add(b, kv_buf_slice(&zz),
                          kv_slice_make(&byte, ENG_MAX_VALUE + 1)),
              KV_ETOOLARGE);
    OK(eng__tb_add(b, kv_buf_slice(&zz), kv_slice_str("3")));
    eng_table_props props;
    OK(eng__tb_finish(b, &props));
    cr_assert_eq(props.entries, 2);
    eng_table_props again;
    EXPECT_RC(eng__tb_finish(b, &again), -EINVAL);
    eng__tb_free(b);
    eng__props_release(&props);

    eng_table *t;
    OK(eng__table_open(NULL, p, 1, NULL, false, &t));
    kv_buf val = KV_BUF_INIT;
    int type;
    bool probed;
    OK(eng__table_get(t, kv_slice_str("zz"), 9, &type, &val, &probed, NULL));
    cr_assert(kv_slice_eq(kv_buf_slice(&val), kv_slice_str("3")));
    OK(eng__table_get(t, kv_slice_str("z"), 9, &type, &val, &probed, NULL));
    cr_assert(kv_slice_eq(kv_buf_slice(&val), kv_slice_str("1")));
    eng__table_close(t);
    kv_buf_release(&val);
    kv_buf_release(&a);
    kv_buf_release(&z);
    kv_buf_release(&zz);
}

/* ---- the block cache ---- */

Test(table, cache_is_filled_by_gets_and_not_by_compaction_reads) {
    model m;
    const char *p = build_small(&m, 3000, "c.sst", 1024);
    eng_cache *c;
    OK(eng__cache_new(64u << 20, &c));
    eng_table *t;
    OK(eng__table_open(NULL, p, 42, c, false, &t));
    /* The table's index and filter are charged to the cache. */
    size_t charge = eng__table_charge(t);
    cr_assert_gt(charge, 0);
    cr_assert_eq(eng__cache_usage(c), charge);
    check_iter(t, &m, false, 1000);
    cr_assert_eq(eng__cache_usage(c), charge,
                 "fill_cache=false inserted blocks");
    check_gets(t, &m, 1);
    size_t used = eng__cache_usage(c);
    cr_assert_gt(used, charge);
    /* Everything is cached now: a second pass adds nothing. */
    check_gets(t, &m, 1);
    check_iter(t, &m, true, 1000);
    cr_assert_eq(eng__cache_usage(c), used);
    eng__table_close(t);
    /* Closing gives the charge back; blocks belong to the cache, not the
     * table, and dropping the file's entries empties it. */
    cr_assert_eq(eng__cache_usage(c), used - charge);
    eng__cache_erase_file(c, 42);
    cr_assert_eq(eng__cache_usage(c), 0);
    eng__cache_free(c);
    free_model(&m);
}

Test(table, tiny_cache_and_shared_cache) {
    /* A cache far smaller than the table evicts constantly; two tables with
     * different file numbers share it without mixing blocks. */
    model m1, m2;
    gen_model(&m1, 3000, false);
    gen_model(&m2, 2000, false);
    for (size_t i = 0; i < m2.n; i++) m2.e[i].vseed += 12345;
    const char *p1 = path_of("1.sst");
    char p2[PATH_MAX + 64];
    snprintf(p2, sizeof p2, "%s", path_of("2.sst"));
    eng_table_opts o = topts(1024, 1, 10);
    build(p1, &o, &m1);
    build(p2, &o, &m2);
    eng_cache *c;
    OK(eng__cache_new(16u << 10, &c));
    eng_table *t1, *t2;
    OK(eng__table_open(NULL, p1, 1, c, false, &t1));
    OK(eng__table_open(NULL, p2, 2, c, false, &t2));
    for (int round = 0; round < 2; round++) {
        check_gets(t1, &m1, 2);
        check_gets(t2, &m2, 2);
        check_iter(t1, &m1, true, 500);
        check_iter(t2, &m2, true, 500);
    }
    /* Data blocks get what the two tables' index and filter copies
     * (charged to the cache) leave of it, which may be nothing. */
    size_t charges = eng__table_charge(t1) + eng__table_charge(t2);
    cr_assert_gt(charges, 0);
    cr_assert_leq(eng__cache_usage(c), KV_MAX(16u << 10, charges));
    eng__table_close(t1);
    eng__table_close(t2);
    cr_assert_leq(eng__cache_usage(c), 16u << 10);
    eng__cache_free(c);
    free_model(&m1);
    free_model(&m2);
}

/* Readers on several threads share one table and one cache; each thread
 * decompresses with its own context. Helper threads never assert (only the
 * main thread may); they count wrong answers. */
typedef struct reader_arg {
    eng_table *t;
    const model *m;
    int start;
    long wrong;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    kv_buf val = KV_BUF_INIT;
    char k[40];
    for (int n = 0; n < a->m->nuser; n++) {
        int i = (a->start + n) % a->m->nuser;
        size_t kl = ukey_of(k, i);
        int type = -1;
        bool probed;
        uint64_t seq = 0;
        int rc = eng__table_get(a->t, kv_slice_make(k, kl), ENG_MAX_SEQ, &type,
                                &val, &probed, &seq);
        const entry *e = expected(a->m, i, ENG_MAX_SEQ);
        if (rc != 0 || seq != e->seq || type != e->type ||
            (type == ENG_TYPE_PUT && val.len != e->vlen))
            a->wrong++;
    }
    kv_buf_release(&val);
    return NULL;
}

static void concurrent_readers(bool map) {
    model m;
    const char *p = build_small(&m, 3000, "cc.sst", 1024);
    eng_cache *c;
    OK(eng__cache_new(32u << 10, &c)); /* small: constant eviction */
    eng_table *t;
    OK(eng__table_open(NULL, p, 5, c, map, &t));
    pthread_t th[3];
    reader_arg args[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (reader_arg){t, &m, i * 1000, 0};
        cr_assert_eq(pthread_create(&th[i], NULL, reader, &args[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(args[i].wrong, 0, "thread %d: %ld wrong answers", i,
                     args[i].wrong);
    }
    eng__table_close(t);
    eng__cache_free(c);
    free_model(&m);
}

Test(table, concurrent_readers_share_table_and_cache) {
    concurrent_readers(false);
    concurrent_readers(true);
}

/* ---- corruption ---- */

/* Open the table at path and read everything back; any answer must be
 * right or KV_ECORRUPT. Returns whether corruption was reported. */
static bool read_back_tolerant(const char *path, const model *m, bool map) {
    eng_table *t;
    int rc = eng__table_open(NULL, path, 1, NULL, map, &t);
    if (rc) {
        cr_assert_eq(rc, KV_ECORRUPT, "open: %d (%s)", rc, kv_strerror(rc));
        return true;
    }
    bool corrupt = false;
    for (int i = 0; i < m->nuser; i++) {
        corrupt |= check_get(t, m, i, ENG_MAX_SEQ, true) == KV_ECORRUPT;
        corrupt |=
            check_get(t, m, i, m->e[m->first[i]].seq - 1, true) == KV_ECORRUPT;
    }
    corrupt |= check_absent(t, "k0000003-x", true) == KV_ECORRUPT;
    eng_iiter *it = eng__table_iter(t, false);
    size_t i = 0;
    for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it), i++) {
        cr_assert_lt(i, m->n);
        cr_assert(kv_slice_eq(it->ops->key(it), ekey(m, i)), "key at %zu", i);
        cr_assert(value_is(it->ops->value(it), &m->e[i]), "value at %zu", i);
    }
    rc = it->ops->status(it);
    if (rc == 0) {
        cr_assert_eq(i, m->n, "iteration ended early without an error");
    } else {
        cr_assert_eq(rc, KV_ECORRUPT);
        corrupt = true;
    }
    it->ops->free(it);
    eng__table_close(t);
    return corrupt;
}

Test(table, every_13th_byte_flipped_reads_right_or_reports_corruption) {
    model m;
    const char *p = build_small(&m, 80, "src.sst", 256);
    kv_buf img = KV_BUF_INIT;
    read_file(p, &img);
    char q[PATH_MAX + 64];
    snprintf(q, sizeof q, "%s", path_of("flipped.sst"));
    int detected = 0, tried = 0;
    for (size_t off = 0; off < img.len; off += 13) {
        uint8_t bit = (uint8_t)(1u << (off % 8));
        img.ptr[off] ^= bit;
        write_file(q, img.ptr, img.len);
        img.ptr[off] ^= bit;
        /* Through pread and through a mapping alike. */
        detected += read_back_tolerant(q, &m, false);
        detected += read_back_tolerant(q, &m, true);
        tried += 2;
    }
    /* Every stored byte is under a checksum, so every flip is noticed by
     * some read (block bytes only when that block is read). */
    cr_log_info("%d flips in a %zu-byte table", tried, img.len);
    cr_assert_eq(detected, tried, "%d of %d flips detected", detected, tried);
    kv_buf_release(&img);
    free_model(&m);
}

static void checksum_mismatch(bool map) {
    model m;
    const char *p = build_small(&m, 200, "000009.sst", 512);
    kv_buf img = KV_BUF_INIT;
    read_file(p, &img);
    img.ptr[3] ^= 0x10; /* inside the first data block */
    write_file(p, img.ptr, img.len);
    eng_table *t;
    OK(eng__table_open(NULL, p, 9, NULL, map, &t));
    kv_buf val = KV_BUF_INIT;
    int type;
    bool probed;
    EXPECT_RC(eng__table_get(t, kv_slice_str("k0000000-"), ENG_MAX_SEQ, &type,
                             &val, &probed, NULL),
              KV_ECORRUPT);
    char want[PATH_MAX + 128];
    snprintf(want, sizeof want,
             "sstable '%s': checksum mismatch in block at offset 0", p);
    cr_assert_not_null(strstr(g_last_log, want), "log: %s", g_last_log);
    /* Iteration stops at the same block with the same error. */
    eng_iiter *it = eng__table_iter(t, true);
    it->ops->seek_first(it);
    cr_assert(!it->ops->valid(it));
    EXPECT_RC(it->ops->status(it), KV_ECORRUPT);
    it->ops->free(it);
    /* Keys in other blocks still read. */
    check_get(t, &m, 199, ENG_MAX_SEQ, false);
    eng__table_close(t);
    kv_buf_release(&val);
    kv_buf_release(&img);
    free_model(&m);
}

Test(table, checksum_mismatch_is_logged_with_path_and_offset) {
    checksum_mismatch(false);
    checksum_mismatch(true);
}

Test(table, truncated_table_fails_to_open) {
    model m;
    const char *p = build_small(&m, 300, "t.sst", 512);
    kv_buf img = KV_BUF_INIT;
    read_file(p, &img);
    char q[PATH_MAX + 64];
    snprintf(q, sizeof q, "%s", path_of("short.sst"));
    size_t cuts[] = {0,           1,          71, 72, img.len / 2, img.len - 72,
                     img.len - 8, img.len - 1};
    for (size_t i = 0; i < KV_ARRAY_LEN(cuts); i++) {
        write_file(q, img.ptr, cuts[i]);
        eng_table *t = (eng_table *)&img; /* must come back NULL */
        EXPECT_RC(eng__table_open(NULL, q, 1, NULL, false, &t), KV_ECORRUPT);
        cr_assert_null(t);
        cr_assert_not_null(strstr(g_last_log, "sstable '"), "%s", g_last_log);
    }
    EXPECT_RC(eng__table_open(NULL, path_of("missing.sst"), 1, NULL, false,
                              &(eng_table *){NULL}),
              -ENOENT);
    kv_buf_release(&img);
    free_model(&m);
}

/* Rewrite the footer's version and reseal it with a valid checksum. */
static void set_version(kv_buf *img, uint32_t v) {
    uint8_t *ft = img->ptr + img->len - 72;
    kv_put_u32(ft + 48, v);
    kv_put_u64(ft + 56, kv_checksum(ft, 56));
}

Test(table, unknown_version_and_bad_magic) {
    model m;
    const char *p = build_small(&m, 50, "x.sst", 512);
    kv_buf img = KV_BUF_INIT;
    read_file(p, &img);
    eng_table *t;

    set_version(&img, 2);
    write_file(p, img.ptr, img.len);
    EXPECT_RC(eng__table_open(NULL, p, 1, NULL, false, &t), KV_EVERSION);
    cr_assert_not_null(strstr(g_last_log, "unknown format version 2"), "%s",
                       g_last_log);

    set_version(&img, 1);
    write_file(p, img.ptr, img.len);
    OK(eng__table_open(NULL, p, 1, NULL, false, &t));
    eng__table_close(t);

    /* The version field alone changed, checksum not resealed: corruption. */
    img.ptr[img.len - 72 + 48] = 3;
    write_file(p, img.ptr, img.len);
    EXPECT_RC(eng__table_open(NULL, p, 1, NULL, false, &t), KV_ECORRUPT);
    cr_assert_not_null(strstr(g_last_log, "checksum mismatch in footer"), "%s",
                       g_last_log);
    set_version(&img, 1);

    img.ptr[img.len - 1] ^= 1;
    write_file(p, img.ptr, img.len);
    EXPECT_RC(eng__table_open(NULL, p, 1, NULL, false, &t), KV_ECORRUPT);
    cr_assert_not_null(strstr(g_last_log, "bad magic"), "%s", g_last_log);
    kv_buf_release(&img);
    free_model(&m);
}

/* ---- I/O and allocation failures ---- */

Test(table, write_and_sync_failures_during_build) {
    model m;
    gen_model(&m, 4000, true); /* includes the 5 MiB value */
    const char *p = path_of("w.sst");
    eng_table_opts o = topts(4096, 1, 10);
    eng_fault *f;
    OK(eng_fault_new(&f));
    int failures = 0;
    for (long k = 0;; k++) {
        eng_fault_arm(f, ENG_FAULT_WRITE | ENG_FAULT_SYNC, k, EIO, true);
        eng_table_props props;
        int rc = try_build(f, p, &o, &m, &props);
        eng_fault_disarm(f);
        if (rc == 0) {
            eng__props_release(&props);
            break;
        }
        cr_assert_eq(rc, -EIO, "k=%ld: %d (%s)", k, rc, kv_strerror(rc));
        cr_assert(!exists(p), "k=%ld: abandoned table left behind", k);
        failures++;
        cr_assert_lt(k, 1000);
    }
    cr_assert_gt(failures, 2, "the build made too few writes to test");
    eng_table *t;
    OK(eng__table_open(NULL, p, 1, NULL, false, &t));
    check_gets(t, &m, 10);
    eng__table_close(t);

    /* ENOSPC reaches the caller as it is. */
    eng_fault_arm(f, ENG_FAULT_WRITE, 0, ENOSPC, true);
    eng_table_props props;
    EXPECT_RC(try_build(f, p, &o, &m, &props), -ENOSPC);
    cr_assert(!exists(p));
    /* A failed create leaves nothing either. */
    eng_fault_arm(f, ENG_FAULT_OPEN, 0, EIO, true);
    EXPECT_RC(try_build(f, p, &o, &m, &props), -EIO);
    cr_assert(!exists(p));
    eng_fault_free(f);
    free_model(&m);
}

Test(table, read_failures_are_io_errors_not_corruption) {
    model m;
    const char *p = build_small(&m, 500, "r.sst", 1024);
    eng_fault *f;
    OK(eng_fault_new(&f));
    eng_table *t;
    for (long k = 0; k < 4; k++) { /* footer, index, filter, props */
        eng_fault_arm(f, ENG_FAULT_READ, k, EIO, true);
        EXPECT_RC(eng__table_open(f, p, 1, NULL, false, &t), -EIO);
        eng_fault_disarm(f);
    }
    OK(eng__table_open(f, p, 1, NULL, false, &t));
    eng_fault_arm(f, ENG_FAULT_READ, 0, EIO, false);
    kv_buf val = KV_BUF_INIT;
    int type;
    bool probed;
    char k[40];
    size_t kl = ukey_of(k, 17);
    EXPECT_RC(eng__table_get(t, kv_slice_make(k, kl), ENG_MAX_SEQ, &type, &val,
                             &probed, NULL),
              -EIO);
    /* Non-sticky: the next read works. */
    check_get(t, &m, 17, ENG_MAX_SEQ, false);
    eng_fault_arm(f, ENG_FAULT_READ, 2, EIO, false);
    eng_iiter *it = eng__table_iter(t, true);
    size_t n = 0;
    for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it)) n++;
    EXPECT_RC(it->ops->status(it), -EIO);
    cr_assert_gt(n, 0);
    cr_assert_lt(n, m.n);
    it->ops->free(it);
    eng__table_close(t);
    kv_buf_release(&val);
    eng_fault_free(f);
    free_model(&m);
}

/* A scan from the first block reads its table in windows, not a block per
 * read: once a scan has read two blocks that follow each other, the next
 * pread fetches 16 KiB, doubling to 128 KiB. A scan starting at offset 0
 * once kept a window of 0 bytes and read every block with a pread of its
 * own, which is what compactions do (and made them slow). */
Test(table, scans_from_the_first_block_read_windows) {
    model m;
    const char *p = build_small(&m, 3000, "w.sst", 1024);
    eng_fault *f;
    OK(eng_fault_new(&f));
    eng_table *t;
    OK(eng__table_open(f, p, 1, NULL, false, &t));
    uint64_t size = file_size(p);
    cr_assert_gt(size / 1024, 150);        /* blocks, about */
    for (int fill = 0; fill < 2; fill++) { /* compaction, then user scan */
        /* Two single blocks, then windows of 16, 32, 64, 128, 128... KiB
         * (and a spare read or two): about 8 reads, where a read per
         * block takes over 150. */
        eng_fault_arm(f, ENG_FAULT_READ, 8 + (long)(size / (128u << 10)), EIO,
                      true);
        eng_iiter *it = eng__table_iter(t, fill == 1);
        size_t i = 0;
        for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it))
            cr_assert(kv_slice_eq(it->ops->key(it), ekey(&m, i++)));
        OK(it->ops->status(it));
        cr_assert_eq(i, m.n);
        cr_assert_eq(eng_fault_hits(f), 0);
        it->ops->free(it);
        eng_fault_disarm(f);
    }
    eng__table_close(t);
    eng_fault_free(f);
    free_model(&m);
}

/* A user scan of a mapped table reads windows until point lookups have
 * read about twice the table through its mapping, and then the mapping in
 * place (its pages are faulted in by then); a reopened table has a new,
 * cold mapping. A table read with pread always reads windows. Both ways
 * the scan returns the same entries. */
Test(table, scans_read_the_mapping_once_lookups_have_touched_it) {
    model m;
    const char *p = build_small(&m, 3000, "m.sst", 1024);
    eng_table *t;
    OK(eng__table_open(NULL, p, 1, NULL, true, &t));
    cr_assert(eng__table_scan_windows(t));
    check_iter(t, &m, true, 1000);
    cr_assert(eng__table_scan_windows(t), "a scan warmed the mapping");
    check_gets(t, &m, 1); /* reads every block several times */
    cr_assert(!eng__table_scan_windows(t));
    check_iter(t, &m, true, 1000);
    eng__table_close(t);
    OK(eng__table_open(NULL, p, 1, NULL, true, &t));
    cr_assert(eng__table_scan_windows(t));
    eng__table_close(t);
    OK(eng__table_open(NULL, p, 1, NULL, false, &t));
    check_gets(t, &m, 1);
    cr_assert(eng__table_scan_windows(t));
    eng__table_close(t);
    free_model(&m);
}

Test(table, allocation_failures_build_open_get_iterate) {
    model m;
    gen_model(&m, 300, false);
    const char *p = path_of("a.sst");
    eng_table_opts o = topts(512, 1, 10);
    /* Build: every injected failure is -ENOMEM and leaves no file. */
    for (long n = 0;; n++) {
        eng_table_props props;
        long before = kv_alloc_injected_failures();
        kv_alloc_fail_after(n);
        int rc = try_build(NULL, p, &o, &m, &props);
        kv_alloc_fail_after(-1);
        if (rc == 0 && kv_alloc_injected_failures() == before) {
            eng__props_release(&props);
            break;
        }
        if (rc == 0) { /* a failure that did not matter (none expected) */
            eng__props_release(&props);
            continue;
        }
        cr_assert_eq(rc, -ENOMEM, "n=%ld: %d", n, rc);
        cr_assert(!exists(p), "n=%ld: file left behind", n);
    }
    /* Open, get, iterate. */
    for (long n = 0;; n++) {
        long before = kv_alloc_injected_failures();
        kv_alloc_fail_after(n);
        eng_table *t = NULL;
        int rc = eng__table_open(NULL, p, 1, NULL, false, &t);
        kv_buf val = KV_BUF_INIT;
        int type;
        bool probed;
        char k[40];
        size_t kl = ukey_of(k, 150);
        if (rc == 0)
            rc = eng__table_get(t, kv_slice_make(k, kl), ENG_MAX_SEQ, &type,
                                &val, &probed, NULL);
        size_t seen = 0;
        if (rc == 0) {
            eng_iiter *it = eng__table_iter(t, true);
            if (!it) {
                rc = -ENOMEM;
            } else {
                for (it->ops->seek_first(it); it->ops->valid(it);
                     it->ops->next(it))
                    seen++;
                rc = it->ops->status(it);
                it->ops->free(it);
            }
        }
        kv_alloc_fail_after(-1);
        bool injected = kv_alloc_injected_failures() != before;
        if (rc == 0) {
            cr_assert_eq(seen, m.n);
            cr_assert(value_is(kv_buf_slice(&val), &m.e[m.first[150]]));
        } else {
            cr_assert_eq(rc, -ENOMEM, "n=%ld: %d (%s)", n, rc, kv_strerror(rc));
        }
        kv_buf_release(&val);
        eng__table_close(t);
        if (!injected) break;
    }
    free_model(&m);
}

Test(table, abandon_and_unfinished_free_leave_no_file) {
    model m;
    gen_model(&m, 3000, false);
    const char *p = path_of("ab.sst");
    eng_table_opts o = topts(1024, 1, 10);
    eng_tbuilder *b;
    OK(eng__tb_new(NULL, p, &o, &b));
    for (size_t i = 0; i < m.n; i++)
        OK(eng__tb_add(b, ekey(&m, i), kv_slice_str("v")));
    cr_assert_gt(eng__tb_size(b), 0, "blocks were written");
    cr_assert(exists(p));
    eng__tb_abandon(b);
    cr_assert(!exists(p));

    OK(eng__tb_new(NULL, p, &o, &b));
    OK(eng__tb_add(b, ekey(&m, 0), kv_slice_str("v")));
    eng__tb_free(b); /* never finished: same as abandon */
    cr_assert(!exists(p));
    free_model(&m);
}
