/*
 * Tests for dotted version vector sets (replica/dvv.c): a write with a
 * read's context replaces what the read saw, concurrent writes become
 * siblings and a write with their merged context resolves them; clients
 * writing with stale contexts never make more siblings than there are
 * clients (the Riak 1.x explosion), while a per-object version vector
 * model, written here only for contrast, does explode in the same
 * scenario; the merge laws on random sets; tombstones; last-writer-wins;
 * pruning, which may add siblings but never lose one; the encodings and
 * their damage checks; bad arguments and allocation failures.
 */
#include "replica/dvv.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

enum { A = 11, B = 22, C = 33 }; /* actors */

/* ---- helpers ---- */

/* A value's bytes are its id (8 bytes, little-endian) and id % 23 bytes
 * derived from it, so every sibling names the write that made it and a
 * mix-up of bytes between siblings is caught. */
typedef struct vbuf {
    uint8_t b[32];
} vbuf;

static dvv_value mkval(vbuf *buf, uint64_t id, uint64_t ts, uint8_t flags) {
    size_t extra = id % 23;
    kv_put_u64(buf->b, id);
    for (size_t i = 0; i < extra; i++) buf->b[8 + i] = (uint8_t)mix64(id + i);
    dvv_value v = {flags, ts, kv_slice_make(buf->b, 8 + extra)};
    return v;
}

static uint64_t id_of(dvv_sibling s) {
    cr_assert_geq(s.value.bytes.len, 8);
    uint64_t id = kv_get_u64(s.value.bytes.ptr);
    vbuf vb;
    dvv_value v = mkval(&vb, id, 0, 0);
    cr_assert(kv_slice_eq(v.bytes, s.value.bytes), "bytes of value %llu",
              (unsigned long long)id);
    return id;
}

/* The set after writing value `id` at actor with context c. */
static dvv_set *put_ts(const dvv_set *s, const dvv_ctx *c, uint64_t actor,
                       uint64_t id, uint64_t ts, uint8_t flags) {
    vbuf vb;
    dvv_value v = mkval(&vb, id, ts, flags);
    dvv_set *out;
    OK(dvv_set_update(s, c, actor, &v, &out));
    return out;
}

static dvv_set *put(const dvv_set *s, const dvv_ctx *c, uint64_t actor,
                    uint64_t id) {
    return put_ts(s, c, actor, id, id, 0);
}

static dvv_ctx *join(const dvv_set *s) {
    dvv_ctx *c;
    OK(dvv_set_join(s, &c));
    return c;
}

static dvv_set *merge(const dvv_set *a, const dvv_set *b) {
    dvv_set *m;
    OK(dvv_set_merge(a, b, &m));
    return m;
}

static dvv_set *copy(const dvv_set *s) {
    return merge(s, NULL);
}

/* Write with the context of a read of s (what a client does). */
static dvv_set *put_read(const dvv_set *s, uint64_t actor, uint64_t id,
                         uint64_t ts, uint8_t flags) {
    dvv_ctx *c = join(s);
    dvv_set *out = put_ts(s, c, actor, id, ts, flags);
    dvv_ctx_free(c);
    return out;
}

static void replace(dvv_set **dst, dvv_set *src) {
    dvv_set_free(*dst);
    *dst = src;
}

/* The sibling of s with value id, checking its dot; false if none. */
static bool holds_dot(const dvv_set *s, uint64_t id, uint64_t actor,
                      uint64_t counter) {
    for (size_t i = 0; i < dvv_set_siblings(s); i++) {
        dvv_sibling x = dvv_set_sibling(s, i);
        if (id_of(x) != id) continue;
        cr_assert_eq(x.actor, actor, "value %llu", (unsigned long long)id);
        cr_assert_eq(x.counter, counter, "value %llu", (unsigned long long)id);
        return true;
    }
    return false;
}

static bool holds(const dvv_set *s, uint64_t id) {
    for (size_t i = 0; i < dvv_set_siblings(s); i++)
        if (id_of(dvv_set_sibling(s, i)) == id) return true;
    return false;
}

/* s's siblings are exactly the values ids[0..n), in any order. */
static void expect_ids(const dvv_set *s, const uint64_t *ids, size_t n) {
    cr_assert_eq(dvv_set_siblings(s), n, "%zu siblings, expected %zu",
                 dvv_set_siblings(s), n);
    for (size_t i = 0; i < n; i++)
        cr_assert(holds(s, ids[i]), "value %llu missing",
                  (unsigned long long)ids[i]);
}

static void encode(const dvv_set *s, kv_buf *out) {
    kv_buf_reset(out);
    OK(dvv_set_encode(s, out));
}

/* Equal by the canonical comparison and byte for byte when encoded. */
static void expect_same(const dvv_set *a, const dvv_set *b) {
    cr_assert(dvv_set_equal(a, b));
    kv_buf ea = KV_BUF_INIT, eb = KV_BUF_INIT;
    encode(a, &ea);
    encode(b, &eb);
    cr_assert_eq(ea.len, eb.len);
    cr_assert_eq(memcmp(ea.ptr, eb.ptr, ea.len), 0);
    kv_buf_release(&ea);
    kv_buf_release(&eb);
}

/* Fix the checksum of an encoding after patching it, to reach the checks
 * behind the checksum. */
static void reseal(kv_buf *e) {
    kv_put_u64(e->ptr + e->len - 8, kv_checksum(e->ptr, e->len - 8));
}

/* A context with the given (actor, counter) pairs and timestamps 0, made
 * through its encoding (docs/object-format.md), as a client's would
 * arrive. */
static dvv_ctx *ctx_of(const uint64_t (*dots)[2], size_t n) {
    kv_buf e = KV_BUF_INIT;
    uint8_t h[12];
    memcpy(h, "QDVC", 4);
    kv_put_u32(h + 4, 1);
    kv_put_u32(h + 8, (uint32_t)n);
    OK(kv_buf_append(&e, h, sizeof h));
    for (size_t i = 0; i < n; i++) {
        OK(kv_buf_put_u64(&e, dots[i][0]));
        OK(kv_buf_put_u64(&e, dots[i][1]));
        OK(kv_buf_put_u64(&e, 0));
    }
    OK(kv_buf_put_u64(&e, 0));
    reseal(&e);
    dvv_ctx *c;
    OK(dvv_ctx_decode(kv_buf_slice(&e), &c));
    kv_buf_release(&e);
    return c;
}

/* ---- the basic cycle ---- */

Test(dvv, read_context_replaces_and_concurrent_writes_become_siblings) {
    dvv_set *s1 = put(NULL, NULL, A, 1);
    cr_assert_eq(dvv_set_siblings(s1), 1);
    cr_assert(holds_dot(s1, 1, A, 1));
    /* A put with the get's context replaces: one sibling. */
    dvv_set *s2 = put_read(s1, A, 2, 2, 0);
    uint64_t want2[] = {2};
    expect_ids(s2, want2, 1);
    cr_assert(holds_dot(s2, 2, A, 2));
    cr_assert_eq(dvv_set_compare(s2, s1), DVV_DESCENDS);
    cr_assert_eq(dvv_set_compare(s1, s2), DVV_PRECEDES);

    /* Two clients read s2 and write through different coordinators. */
    dvv_ctx *c2 = join(s2);
    dvv_set *sa = put(s2, c2, A, 3), *sb = put(s2, c2, B, 4);
    cr_assert_eq(dvv_set_compare(sa, sb), DVV_CONCURRENT);
    dvv_set *m = merge(sa, sb);
    uint64_t want34[] = {3, 4};
    expect_ids(m, want34, 2);
    cr_assert_eq(dvv_set_compare(m, sa), DVV_DESCENDS);
    cr_assert_eq(dvv_set_compare(m, sb), DVV_DESCENDS);

    /* A put with the merged context resolves them. */
    dvv_set *r = put_read(m, C, 5, 5, 0);
    uint64_t want5[] = {5};
    expect_ids(r, want5, 1);
    /* A replica still holding sb takes r whole. */
    cr_assert_eq(dvv_set_compare(r, sb), DVV_DESCENDS);
    dvv_set *rb = merge(sb, r);
    expect_same(rb, r);

    /* A put without a context (a blind write) replaces nothing. */
    dvv_set *blind = put(r, NULL, A, 6);
    uint64_t want56[] = {5, 6};
    expect_ids(blind, want56, 2);
    cr_assert(holds_dot(blind, 6, A, 4));

    dvv_ctx_free(c2);
    dvv_set *all[] = {s1, s2, sa, sb, m, r, rb, blind};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) dvv_set_free(all[i]);
}

/* The example of Riak's dvvset tests: a write replaces exactly the
 * values its context covers, even ones the coordinator never stored. */
Test(dvv, a_write_replaces_only_what_its_context_saw) {
    dvv_set *a0 = put(NULL, NULL, A, 1);
    dvv_ctx *vv1 = join(a0);                 /* Peter reads v1 */
    dvv_set *a1 = put(a0, NULL, A, 2);       /* Mary writes v2 blind */
    dvv_set *a2 = put(a1, vv1, A, 3);        /* Peter writes v3 over v1 */
    cr_assert_eq(dvv_set_counter(a1, A), 2); /* A:2 [v2, v1] */
    cr_assert_eq(dvv_set_siblings(a1), 2);
    /* Siblings of one actor come newest first. */
    cr_assert_eq(id_of(dvv_set_sibling(a2, 0)), 3);
    cr_assert_eq(id_of(dvv_set_sibling(a2, 1)), 2);
    cr_assert(holds_dot(a2, 3, A, 3));
    cr_assert(holds_dot(a2, 2, A, 2));
    cr_assert_eq(dvv_set_siblings(a2), 2);

    /* A client read from coordinator B, which holds value 4 the stored set
     * at A has never seen. Its write at A still replaces value 4. */
    dvv_set *sb = put_read(a0, B, 4, 4, 0);
    dvv_ctx *cb = join(sb);
    cr_assert_eq(dvv_ctx_counter(cb, B), 1);
    dvv_set *w = put(a1, cb, A, 5);
    cr_assert_eq(dvv_set_counter(w, B), 1); /* learnt from the context */
    dvv_set *m = merge(w, sb);
    uint64_t want[] = {2, 5}; /* 1 and 4 were seen, 2 was not */
    expect_ids(m, want, 2);
    cr_assert(holds_dot(m, 5, A, 3));

    dvv_ctx_free(vv1);
    dvv_ctx_free(cb);
    dvv_set *all[] = {a0, a1, a2, sb, w, m};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) dvv_set_free(all[i]);
}

/* ---- the Riak 1.x failure: stale writers ---- */

typedef struct write_rec {
    uint64_t actor, counter, id; /* the dot and the value */
    dvv_ctx *ctx;                /* the context it was written with */
} write_rec;

/* The siblings of s are exactly the writes in s's history that no write
 * in s's history had seen (its context covered): nothing lost, nothing
 * extra. */
static void expect_exact(const dvv_set *s, const write_rec *w, size_t n) {
    size_t want = 0;
    for (size_t u = 0; u < n; u++) {
        if (dvv_set_counter(s, w[u].actor) < w[u].counter) continue;
        bool seen = false;
        for (size_t z = 0; z < n && !seen; z++)
            seen = dvv_set_counter(s, w[z].actor) >= w[z].counter &&
                   dvv_ctx_counter(w[z].ctx, w[u].actor) >= w[u].counter;
        if (seen) continue;
        want++;
        cr_assert(holds_dot(s, w[u].id, w[u].actor, w[u].counter),
                  "write %llu lost", (unsigned long long)w[u].id);
    }
    cr_assert_eq(dvv_set_siblings(s), want, "%zu siblings, expected %zu",
                 dvv_set_siblings(s), want);
}

static uint64_t pick(uint64_t seed, uint64_t t, uint64_t salt, uint64_t n) {
    return mix64(seed * 1000003u + t * 7919u + salt) % n;
}

#define MAX_COORDS 3
#define MAX_WRITERS 7

/* `writers` clients write `nwrites` times in a random order, each with the
 * context returned by its own previous write (so stale with respect to
 * the others), through `coords` coordinators with actors 101, 102, ...
 * Each coordinator holds its own replica; a write is copied to each other
 * replica with probability 1/2, and every 16 writes all replicas exchange
 * everything, so replicas lag and differ. Checks the sibling bound after
 * every write and the exact siblings every 25 writes and at the end.
 * Returns the most siblings any replica held. */
static size_t stale_writers(int writers, int coords, int nwrites,
                            uint64_t seed) {
    dvv_set *rep[MAX_COORDS] = {NULL};
    dvv_ctx *ctx[MAX_WRITERS] = {NULL};
    write_rec *w = calloc((size_t)nwrites, sizeof *w);
    size_t most = 0;
    for (int t = 0; t < nwrites; t++) {
        int wr = (int)pick(seed, t, 1, writers);
        int k = (int)pick(seed, t, 2, coords);
        uint64_t actor = 101 + (uint64_t)k, id = (uint64_t)t + 1;
        replace(&rep[k], put(rep[k], ctx[wr], actor, id));
        w[t] = (write_rec){actor, dvv_set_counter(rep[k], actor), id, ctx[wr]};
        ctx[wr] = join(rep[k]); /* the put's reply */
        for (int r = 0; r < coords; r++)
            if (r != k && pick(seed, t, 3 + r, 2))
                replace(&rep[r], merge(rep[r], rep[k]));
        if (t % 16 == 15) {
            dvv_set *all = NULL;
            for (int r = 0; r < coords; r++) replace(&all, merge(all, rep[r]));
            for (int r = 0; r < coords; r++) replace(&rep[r], copy(all));
            dvv_set_free(all);
        }
        for (int r = 0; r < coords; r++) {
            size_t n = dvv_set_siblings(rep[r]);
            cr_assert_leq(n, (size_t)writers,
                          "%d writers, %d coordinators, write %d: replica "
                          "%d holds %zu siblings",
                          writers, coords, t, r, n);
            most = KV_MAX(most, n);
            if (t % 25 == 0) expect_exact(rep[r], w, (size_t)t + 1);
        }
    }
    dvv_set *all = NULL;
    for (int r = 0; r < coords; r++) replace(&all, merge(all, rep[r]));
    expect_exact(all, w, (size_t)nwrites);
    dvv_set_free(all);
    for (int r = 0; r < coords; r++) dvv_set_free(rep[r]);
    for (int i = 0; i < writers; i++) dvv_ctx_free(ctx[i]);
    for (int t = 0; t < nwrites; t++) dvv_ctx_free(w[t].ctx);
    free(w);
    return most;
}

Test(dvv, stale_writers_through_one_coordinator_stay_within_one_sibling_each) {
    int ws[] = {2, 5, 7};
    for (size_t i = 0; i < KV_ARRAY_LEN(ws); i++) {
        size_t most = stale_writers(ws[i], 1, 400, 42 + i);
        fprintf(stderr,
                "dvv: %d stale writers, 1 coordinator: at most %zu "
                "siblings\n",
                ws[i], most);
        cr_assert_geq(most, 2); /* the writers did run concurrently */
    }
}

Test(dvv,
     stale_writers_through_three_coordinators_stay_within_one_sibling_each) {
    int ws[] = {2, 5, 7};
    for (size_t i = 0; i < KV_ARRAY_LEN(ws); i++) {
        size_t most = stale_writers(ws[i], 3, 400, 77 + i);
        fprintf(stderr,
                "dvv: %d stale writers, 3 coordinators: at most %zu "
                "siblings\n",
                ws[i], most);
        cr_assert_geq(most, 2);
    }
}

/* Contrast, only here: Riak 1.x with server-side (vnode) clocks and no
 * client ids keeps one version vector per object. A write whose context
 * descends the object's clock replaces every sibling; any other write is
 * added to them, since a single clock cannot say which siblings the
 * context saw. Replicas merge the same way. */
#define TOY_MAX 512

typedef struct toy {
    uint64_t vv[MAX_COORDS];
    size_t n;
    uint64_t sib[TOY_MAX];
} toy;

static bool toy_descends(const uint64_t *a, const uint64_t *b) {
    for (int i = 0; i < MAX_COORDS; i++)
        if (a[i] < b[i]) return false;
    return true;
}

static void toy_merge(toy *dst, const toy *src) {
    if (toy_descends(dst->vv, src->vv)) return;
    if (toy_descends(src->vv, dst->vv)) {
        *dst = *src;
        return;
    }
    for (size_t i = 0; i < src->n; i++) {
        bool have = false;
        for (size_t j = 0; j < dst->n && !have; j++)
            have = dst->sib[j] == src->sib[i];
        if (!have) dst->sib[dst->n++] = src->sib[i];
    }
    for (int i = 0; i < MAX_COORDS; i++)
        dst->vv[i] = KV_MAX(dst->vv[i], src->vv[i]);
}

/* The same scenario as stale_writers, on the toy model. */
static size_t toy_stale_writers(int writers, int coords, int nwrites,
                                uint64_t seed) {
    static toy rep[MAX_COORDS];
    uint64_t ctx[MAX_WRITERS][MAX_COORDS];
    memset(rep, 0, sizeof rep);
    memset(ctx, 0, sizeof ctx);
    size_t most = 0;
    for (int t = 0; t < nwrites; t++) {
        int wr = (int)pick(seed, t, 1, writers);
        int k = (int)pick(seed, t, 2, coords);
        toy *o = &rep[k];
        if (toy_descends(ctx[wr], o->vv)) o->n = 0;
        cr_assert_lt(o->n, TOY_MAX);
        o->sib[o->n++] = (uint64_t)t + 1;
        for (int i = 0; i < MAX_COORDS; i++)
            o->vv[i] = KV_MAX(o->vv[i], ctx[wr][i]);
        o->vv[k]++;
        memcpy(ctx[wr], o->vv, sizeof ctx[wr]);
        for (int r = 0; r < coords; r++)
            if (r != k && pick(seed, t, 3 + r, 2)) toy_merge(&rep[r], o);
        if (t % 16 == 15) {
            for (int r = 1; r < coords; r++) toy_merge(&rep[0], &rep[r]);
            for (int r = 1; r < coords; r++) rep[r] = rep[0];
        }
        for (int r = 0; r < coords; r++) most = KV_MAX(most, rep[r].n);
    }
    return most;
}

/* The bound checked above is one the checker can see broken: the same
 * writers on a per-object version vector make far more siblings than
 * there are writers. */
Test(dvv, a_version_vector_per_object_explodes_in_the_same_scenario) {
    int ws[] = {2, 5, 7};
    for (size_t i = 0; i < KV_ARRAY_LEN(ws); i++) {
        for (int coords = 1; coords <= 3; coords += 2) {
            uint64_t seed = (coords == 1 ? 42 : 77) + i;
            size_t toy_most = toy_stale_writers(ws[i], coords, 400, seed);
            size_t dvv_most = stale_writers(ws[i], coords, 400, seed);
            fprintf(stderr,
                    "dvv: %d stale writers, %d coordinator(s): version "
                    "vector per object %zu siblings, dvvset %zu\n",
                    ws[i], coords, toy_most, dvv_most);
            cr_assert_gt(toy_most, 2 * (size_t)ws[i]);
            cr_assert_leq(dvv_most, (size_t)ws[i]);
        }
    }
}

/* ---- random sets and the merge laws ---- */

#define POOL 160

/* Sets from one random history: 4 replicas (actors 1..4); writes at a
 * random replica with no context, the context of a read from a random
 * replica or a stale context saved earlier; one-way merges between
 * replicas. A copy of the changed replica goes into the pool after every
 * step, so the pool holds sets from every stage. They share one history,
 * as replicas of one key do: a dot always names the same value. */
static void make_pool(uint64_t seed, dvv_set **pool) {
    dvv_set *rep[4] = {NULL};
    dvv_ctx *stale[4] = {NULL};
    for (int t = 0; t < POOL; t++) {
        uint64_t r = mix64(seed * 31 + (uint64_t)t);
        int k = (int)(r % 4), j = (int)((r >> 8) % 4),
            op = (int)((r >> 16) % 5);
        if (op <= 2) {
            int src = (int)((r >> 24) % 3);
            dvv_ctx *c = src == 1 ? join(rep[j]) : NULL;
            const dvv_ctx *use = src == 2 ? stale[j] : c;
            uint8_t flags = (r >> 32) % 8 == 0 ? DVV_TOMBSTONE : 0;
            uint64_t ts = 1000 + (r >> 40) % 50; /* ties happen */
            replace(&rep[k], put_ts(rep[k], use, 1 + (uint64_t)k,
                                    (uint64_t)t + 1, ts, flags));
            dvv_ctx_free(c);
        } else if (op == 3) {
            replace(&rep[k], merge(rep[k], rep[j]));
        } else {
            dvv_ctx_free(stale[j]);
            stale[j] = join(rep[j]);
        }
        pool[t] = copy(rep[k]);
    }
    for (int i = 0; i < 4; i++) {
        dvv_set_free(rep[i]);
        dvv_ctx_free(stale[i]);
    }
}

static void free_pool(dvv_set **pool) {
    for (int i = 0; i < POOL; i++) dvv_set_free(pool[i]);
}

Test(dvv, merge_is_idempotent_commutative_and_associative) {
    dvv_set *pool[POOL];
    make_pool(7, pool);
    for (int i = 0; i < POOL; i++) {
        dvv_set *aa = merge(pool[i], pool[i]);
        expect_same(aa, pool[i]);
        dvv_set_free(aa);
    }
    size_t concurrent = 0, multi = 0;
    for (int t = 0; t < 1500; t++) {
        uint64_t r = mix64((uint64_t)t + 991);
        const dvv_set *a = pool[r % POOL], *b = pool[(r >> 16) % POOL],
                      *c = pool[(r >> 32) % POOL];
        dvv_set *ab = merge(a, b), *ba = merge(b, a);
        expect_same(ab, ba);
        dvv_set *bc = merge(b, c), *ab_c = merge(ab, c), *a_bc = merge(a, bc);
        expect_same(ab_c, a_bc);
        /* The merge is an upper bound of both, and the least one: when one
         * side has seen everything of the other, it is the result. */
        dvv_order o = dvv_set_compare(a, b);
        cr_assert(dvv_set_compare(ab, a) == DVV_EQUAL ||
                  dvv_set_compare(ab, a) == DVV_DESCENDS);
        cr_assert(dvv_set_compare(ab, b) == DVV_EQUAL ||
                  dvv_set_compare(ab, b) == DVV_DESCENDS);
        if (o == DVV_DESCENDS || o == DVV_EQUAL) expect_same(ab, a);
        if (o == DVV_PRECEDES) expect_same(ab, b);
        concurrent += o == DVV_CONCURRENT;
        multi += dvv_set_siblings(ab) >= 3;
        dvv_set *all[] = {ab, ba, bc, ab_c, a_bc};
        for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) dvv_set_free(all[i]);
    }
    /* The pool is varied enough for the laws to mean something. */
    cr_assert_gt(concurrent, 100);
    cr_assert_gt(multi, 50);
    free_pool(pool);

    /* A reused dot (a coordinator that lost its disk) makes two sets that
     * disagree on one event; merging them still does not depend on the
     * order. */
    dvv_set *x = put_ts(NULL, NULL, A, 1, 5, 0),
            *y = put_ts(NULL, NULL, A, 1, 9, 0);
    dvv_set *xy = merge(x, y), *yx = merge(y, x);
    expect_same(xy, yx);
    cr_assert_eq(dvv_set_sibling(xy, 0).value.timestamp, 9);
    dvv_set *all[] = {x, y, xy, yx};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) dvv_set_free(all[i]);
}

/* A merge keeps a sibling of one side exactly when the other side has not
 * seen its dot, or holds it too. */
Test(dvv, merge_keeps_every_sibling_the_other_side_has_not_seen) {
    dvv_set *pool[POOL];
    make_pool(8, pool);
    for (int i = 0; i < POOL; i += 3) {
        for (int j = 0; j < POOL; j += 5) {
            const dvv_set *side[2] = {pool[i], pool[j]};
            dvv_set *m = merge(side[0], side[1]);
            size_t want = 0;
            for (int s = 0; s < 2; s++) {
                const dvv_set *me = side[s], *other = side[1 - s];
                for (size_t k = 0; k < dvv_set_siblings(me); k++) {
                    dvv_sibling x = dvv_set_sibling(me, k);
                    bool other_holds =
                        holds_dot(other, id_of(x), x.actor, x.counter);
                    bool keep = dvv_set_counter(other, x.actor) < x.counter ||
                                other_holds;
                    cr_assert_eq(holds_dot(m, id_of(x), x.actor, x.counter),
                                 keep);
                    /* Count a sibling both sides hold once. */
                    want += keep && !(s == 1 && other_holds);
                }
            }
            cr_assert_eq(dvv_set_siblings(m), want);
            dvv_set_free(m);
        }
    }
    free_pool(pool);
}

/* An update keeps what the context did not cover, drops what it did, and
 * adds the new value at the next dot of the coordinator. */
Test(dvv, update_keeps_exactly_what_the_context_did_not_cover) {
    dvv_set *pool[POOL];
    make_pool(9, pool);
    for (int i = 0; i < POOL; i += 2) {
        const dvv_set *s = pool[i];
        dvv_ctx *c = join(pool[mix64((uint64_t)i) % POOL]);
        uint64_t actor = 1 + (uint64_t)i % 5; /* 5 is new to the history */
        uint64_t next =
            KV_MAX(dvv_set_counter(s, actor), dvv_ctx_counter(c, actor)) + 1;
        dvv_set *u = put(s, c, actor, 10000 + (uint64_t)i);
        size_t kept = 0;
        for (size_t k = 0; k < dvv_set_siblings(s); k++) {
            dvv_sibling x = dvv_set_sibling(s, k);
            bool covered = dvv_ctx_counter(c, x.actor) >= x.counter;
            cr_assert_eq(holds_dot(u, id_of(x), x.actor, x.counter), !covered);
            kept += !covered;
        }
        cr_assert(holds_dot(u, 10000 + (uint64_t)i, actor, next));
        cr_assert_eq(dvv_set_siblings(u), kept + 1);
        cr_assert_eq(dvv_set_compare(u, s), DVV_DESCENDS);
        dvv_ctx *cu = join(u);
        cr_assert_eq(dvv_ctx_compare(cu, c), DVV_DESCENDS);
        dvv_ctx_free(cu);
        dvv_ctx_free(c);
        dvv_set_free(u);
    }
    free_pool(pool);
}

/* Contexts compare as the sets they come from. */
Test(dvv, contexts_compare_like_their_sets) {
    dvv_set *pool[POOL];
    make_pool(10, pool);
    for (int i = 0; i < POOL; i += 3) {
        for (int j = 0; j < POOL; j += 7) {
            dvv_ctx *a = join(pool[i]), *b = join(pool[j]);
            cr_assert_eq(dvv_ctx_compare(a, b),
                         dvv_set_compare(pool[i], pool[j]));
            cr_assert_eq(dvv_ctx_actors(a), dvv_set_actors(pool[i]));
            dvv_ctx_free(a);
            dvv_ctx_free(b);
        }
    }
    cr_assert_eq(dvv_ctx_compare(NULL, NULL), DVV_EQUAL);
    cr_assert_eq(dvv_set_compare(pool[POOL - 1], NULL), DVV_DESCENDS);
    free_pool(pool);
}

/* ---- tombstones ---- */

Test(dvv, tombstones_are_siblings_like_any_value) {
    dvv_set *s = put(NULL, NULL, A, 1);
    /* A delete with the full context leaves one tombstone. */
    dvv_set *d = put_read(s, A, 2, 2, DVV_TOMBSTONE);
    cr_assert_eq(dvv_set_siblings(d), 1);
    dvv_sibling t = dvv_set_sibling(d, 0);
    cr_assert_eq(t.value.flags, DVV_TOMBSTONE);
    cr_assert_eq(id_of(t), 2);
    /* The tombstone survives the encoding. */
    kv_buf e = KV_BUF_INIT;
    encode(d, &e);
    dvv_set *dd;
    OK(dvv_set_decode(kv_buf_slice(&e), &dd));
    cr_assert_eq(dvv_set_sibling(dd, 0).value.flags, DVV_TOMBSTONE);
    /* A write after the tombstone, with its context, replaces it. */
    dvv_set *w = put_read(d, B, 3, 3, 0);
    uint64_t want3[] = {3};
    expect_ids(w, want3, 1);
    cr_assert_eq(dvv_set_sibling(w, 0).value.flags, 0);
    /* A write concurrent with the delete: both stay, a tombstone and a
     * value, until a write with both in its context. */
    dvv_set *x = put_read(s, B, 4, 4, 0);
    dvv_set *m = merge(d, x);
    uint64_t want24[] = {2, 4};
    expect_ids(m, want24, 2);
    size_t tombs = 0;
    for (size_t i = 0; i < 2; i++)
        tombs += dvv_set_sibling(m, i).value.flags == DVV_TOMBSTONE;
    cr_assert_eq(tombs, 1);
    dvv_set *r = put_read(m, C, 5, 5, DVV_TOMBSTONE);
    cr_assert_eq(dvv_set_siblings(r), 1);
    cr_assert_eq(dvv_set_sibling(r, 0).value.flags, DVV_TOMBSTONE);
    kv_buf_release(&e);
    dvv_set *all[] = {s, d, dd, w, x, m, r};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) dvv_set_free(all[i]);
}

/* ---- last writer wins ---- */

Test(dvv, lww_picks_the_newest_timestamp_and_is_deterministic_on_ties) {
    dvv_sibling w;
    EXPECT_RC(dvv_set_lww(NULL, &w), KV_ENOTFOUND);
    dvv_set *base = put(NULL, NULL, A, 1);
    dvv_ctx *c = join(base);
    /* Three concurrent writes; the middle actor has the newest clock. */
    dvv_set *x = put_ts(base, c, A, 2, 100, 0);
    dvv_set *y = put_ts(base, c, B, 3, 300, 0);
    dvv_set *z = put_ts(base, c, C, 4, 200, 0);
    dvv_set *xy = merge(x, y), *m = merge(xy, z);
    cr_assert_eq(dvv_set_siblings(m), 3);
    OK(dvv_set_lww(m, &w));
    cr_assert_eq(id_of(w), 3);
    cr_assert_eq(w.value.timestamp, 300);
    cr_assert_eq(w.actor, B);

    /* Equal timestamps: the higher actor, whatever the merge order. */
    dvv_set *p = put_ts(base, c, 9, 5, 500, 0);
    dvv_set *q = put_ts(base, c, 7, 6, 500, 0);
    dvv_set *pq = merge(p, q), *qp = merge(q, p);
    OK(dvv_set_lww(pq, &w));
    cr_assert_eq(id_of(w), 5);
    OK(dvv_set_lww(qp, &w));
    cr_assert_eq(id_of(w), 5);
    /* Equal timestamps at one actor: the later event. */
    dvv_set *s1 = put_ts(base, c, 7, 7, 500, 0);
    dvv_set *s2 = put_ts(s1, c, 7, 8, 500, 0);
    cr_assert_eq(dvv_set_siblings(s2), 2);
    OK(dvv_set_lww(s2, &w));
    cr_assert_eq(id_of(w), 8);
    cr_assert_eq(w.counter, 2);
    /* Resolving in LWW mode is a write of the winner with the full
     * context: one sibling left. */
    OK(dvv_set_lww(m, &w));
    dvv_ctx *cm = join(m);
    dvv_set *res;
    OK(dvv_set_update(m, cm, A, &w.value, &res));
    uint64_t want3[] = {3};
    expect_ids(res, want3, 1);
    dvv_ctx_free(cm);
    dvv_ctx_free(c);
    dvv_set *all[] = {base, x, y, z, xy, m, p, q, pq, qp, s1, s2, res};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) dvv_set_free(all[i]);
}

/* ---- pruning ---- */

/* A history of 103 actors: a chain of writes at actors 1000..1099, each
 * with the full context of the one before (timestamps 10, 20, ...), and
 * three writes at actors 2000..2002 branching off at chain steps 5, 17
 * and 40, which nobody has seen since: their entries are old but hold
 * siblings. snap[i] is the chain after step i. */
static dvv_set *wide_history(dvv_set **snap) {
    static const int at[3] = {5, 17, 40};
    dvv_set *s = NULL, *side[3] = {NULL};
    for (int i = 0; i < 100; i++) {
        replace(&s, put_read(s, 1000 + (uint64_t)i, (uint64_t)i + 1,
                             (uint64_t)(i + 1) * 10, 0));
        snap[i] = copy(s);
        for (int k = 0; k < 3; k++)
            if (at[k] == i)
                side[k] = put_read(s, 2000 + (uint64_t)k, 500 + (uint64_t)k,
                                   (uint64_t)(i + 1) * 10 + 5, 0);
    }
    for (int k = 0; k < 3; k++) {
        replace(&s, merge(s, side[k]));
        dvv_set_free(side[k]);
    }
    return s;
}

Test(dvv, prune_bounds_the_history_and_never_drops_a_sibling) {
    dvv_set *snap[100];
    dvv_set *m = wide_history(snap), *p = copy(m);
    cr_assert_eq(dvv_set_actors(m), 103);
    uint64_t want[] = {100, 500, 501, 502};
    expect_ids(m, want, 4);
    /* 1000 is the local actor: kept although it is the oldest. */
    cr_assert_eq(dvv_set_prune(p, 1000), 39);
    cr_assert_eq(dvv_set_actors(p), DVV_MAX_ACTORS);
    expect_ids(p, want, 4);
    cr_assert_eq(dvv_set_counter(p, 1000), 1);
    /* The oldest entries without a sibling went: 1001..1039. */
    for (int i = 1; i < 100; i++)
        cr_assert_eq(dvv_set_counter(p, 1000 + (uint64_t)i),
                     i < 40 ? 0 : (uint64_t)1, "actor %d", 1000 + i);
    for (int k = 0; k < 3; k++)
        cr_assert_eq(dvv_set_counter(p, 2000 + (uint64_t)k), 1);
    /* Within the bound, pruning does nothing. */
    cr_assert_eq(dvv_set_prune(p, 1000), 0);
    dvv_set *p2 = copy(p);
    cr_assert_eq(dvv_set_prune(p2, 1000), 0);
    expect_same(p, p2);

    /* 70 actors all holding a sibling: nothing can go, nothing goes. */
    dvv_set *wide = NULL;
    for (uint64_t a = 1; a <= 70; a++) {
        dvv_set *one = put(NULL, NULL, a, a);
        replace(&wide, merge(wide, one));
        dvv_set_free(one);
    }
    cr_assert_eq(dvv_set_prune(wide, 0), 0);
    cr_assert_eq(dvv_set_actors(wide), 70);
    cr_assert_eq(dvv_set_siblings(wide), 70);

    for (int i = 0; i < 100; i++) dvv_set_free(snap[i]);
    dvv_set_free(wide);
    dvv_set_free(p2);
    dvv_set_free(p);
    dvv_set_free(m);
}

/* A pruned set never claims to have seen more than the unpruned one: a
 * comparison can only move towards "knows less". */
static bool knows_no_more(dvv_order before, dvv_order after) {
    switch (after) {
    case DVV_DESCENDS:
        return before == DVV_DESCENDS;
    case DVV_EQUAL:
        return before == DVV_DESCENDS || before == DVV_EQUAL;
    case DVV_CONCURRENT:
        return before == DVV_DESCENDS || before == DVV_CONCURRENT;
    case DVV_PRECEDES:
        return true;
    }
    return false;
}

Test(dvv, pruning_can_only_add_siblings_never_lose_one) {
    dvv_set *snap[100];
    dvv_set *m = wide_history(snap), *p = copy(m);
    cr_assert_eq(dvv_set_prune(p, 1000), 39);
    /* Other replicas' sets from the same history: chain states, their
     * continuations at a new actor, and merges with the branches. */
    size_t moved = 0, extra = 0;
    for (int i = 0; i < 100; i++) {
        dvv_set *later =
            put_read(snap[i], 3000, 900 + (uint64_t)i, 5000 + (uint64_t)i, 0);
        dvv_set *mixed = merge(later, snap[(i * 37) % 100]);
        const dvv_set *others[] = {snap[i], later, mixed};
        for (size_t k = 0; k < KV_ARRAY_LEN(others); k++) {
            const dvv_set *t = others[k];
            dvv_order before = dvv_set_compare(m, t),
                      after = dvv_set_compare(p, t);
            cr_assert(knows_no_more(before, after), "before %d after %d",
                      before, after);
            moved += before != after;
            /* Every sibling of the true merge is in the pruned one. */
            dvv_set *truth = merge(m, t), *got = merge(p, t);
            for (size_t j = 0; j < dvv_set_siblings(truth); j++)
                cr_assert(holds(got, id_of(dvv_set_sibling(truth, j))));
            extra += dvv_set_siblings(got) - dvv_set_siblings(truth);
            dvv_set_free(truth);
            dvv_set_free(got);
        }
        dvv_set_free(later);
        dvv_set_free(mixed);
    }
    cr_assert_gt(moved, 0);
    cr_assert_gt(extra, 0);
    /* The documented case: the full set has seen chain step 30 replaced
     * and descends it; the pruned one forgot that, so the two are
     * concurrent and value 31 comes back as an extra sibling. */
    cr_assert_eq(dvv_set_compare(m, snap[30]), DVV_DESCENDS);
    cr_assert_eq(dvv_set_compare(p, snap[30]), DVV_CONCURRENT);
    dvv_set *back = merge(p, snap[30]);
    uint64_t want[] = {100, 500, 501, 502, 31};
    expect_ids(back, want, 5);
    dvv_set_free(back);
    for (int i = 0; i < 100; i++) dvv_set_free(snap[i]);
    dvv_set_free(p);
    dvv_set_free(m);
}

/* Why prune keeps the local actor: a coordinator that forgot its own
 * counter would hand out a dot it used before, and a replica that knows
 * the old dot would then drop the new write. */
Test(dvv, prune_keeps_the_local_actor_so_no_dot_is_reused) {
    enum { L = 7 };
    dvv_set *s = put(NULL, NULL, L, 1), *old = NULL;
    for (uint64_t i = 0; i < 70; i++) {
        replace(&s, put_read(s, 100 + i, 10 + i, 10 + i, 0));
        if (i == 0) old = copy(s); /* a replica that stops hearing */
    }
    cr_assert_eq(dvv_set_actors(s), 71);
    cr_assert_eq(dvv_set_counter(old, L), 1);

    dvv_set *kept = copy(s);
    cr_assert_eq(dvv_set_prune(kept, L), 7);
    cr_assert_eq(dvv_set_counter(kept, L), 1);
    dvv_set *w = put_read(kept, L, 999, 999, 0);
    cr_assert(holds_dot(w, 999, L, 2));
    dvv_set *mw = merge(w, old);
    cr_assert(holds(mw, 999));

    /* Pruned by a node that is not L, L's entry goes first (the oldest);
     * L coordinating from that copy reuses dot (L, 1) and the write is
     * lost on merge. */
    dvv_set *lost = copy(s);
    cr_assert_eq(dvv_set_prune(lost, 12345), 7);
    cr_assert_eq(dvv_set_counter(lost, L), 0);
    dvv_set *w2 = put_read(lost, L, 998, 998, 0);
    cr_assert(holds_dot(w2, 998, L, 1));
    dvv_set *mw2 = merge(w2, old);
    cr_assert(!holds(mw2, 998));

    dvv_set *all[] = {s, old, kept, w, mw, lost, w2, mw2};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) dvv_set_free(all[i]);
}

/* ---- encodings ---- */

Test(dvv, sets_and_contexts_survive_their_encodings) {
    dvv_set *pool[POOL];
    make_pool(11, pool);
    kv_buf e = KV_BUF_INIT, e2 = KV_BUF_INIT;
    for (int i = 0; i < POOL; i++) {
        encode(pool[i], &e);
        dvv_set *d;
        OK(dvv_set_decode(kv_buf_slice(&e), &d));
        expect_same(d, pool[i]);
        for (size_t k = 0; k < dvv_set_siblings(d); k++) {
            dvv_sibling x = dvv_set_sibling(d, k),
                        y = dvv_set_sibling(pool[i], k);
            cr_assert_eq(x.actor, y.actor);
            cr_assert_eq(x.counter, y.counter);
            cr_assert_eq(x.value.timestamp, y.value.timestamp);
            cr_assert_eq(x.value.flags, y.value.flags);
            cr_assert(kv_slice_eq(x.value.bytes, y.value.bytes));
        }
        dvv_set_free(d);

        dvv_ctx *c = join(pool[i]), *cd;
        kv_buf_reset(&e);
        OK(dvv_ctx_encode(c, &e));
        OK(dvv_ctx_decode(kv_buf_slice(&e), &cd));
        cr_assert_eq(dvv_ctx_compare(c, cd), DVV_EQUAL);
        kv_buf_reset(&e2);
        OK(dvv_ctx_encode(cd, &e2));
        cr_assert_eq(e.len, e2.len);
        cr_assert_eq(memcmp(e.ptr, e2.ptr, e.len), 0);
        dvv_ctx_free(c);
        dvv_ctx_free(cd);
    }
    /* Encoding appends. */
    kv_buf_set(&e, "xy", 2);
    OK(dvv_set_encode(pool[5], &e));
    cr_assert_eq(memcmp(e.ptr, "xyQDVS", 6), 0);
    kv_buf_release(&e);
    kv_buf_release(&e2);
    free_pool(pool);
}

static void expect_bytes(const kv_buf *e, const uint8_t *want, size_t n) {
    cr_assert_eq(e->len, n, "encoding is %zu bytes, expected %zu", e->len, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(e->ptr[i], want[i], "byte %zu is 0x%02x, expected 0x%02x",
                     i, e->ptr[i], want[i]);
}

/* The encodings are stored and sent: pinned, byte for byte. A wrote "hi"
 * at time 1000, then B deleted it blind at time 2000 (two siblings). */
Test(dvv, encodings_never_change) {
    dvv_value v1 = {0, 1000, kv_slice_str("hi")};
    dvv_value v2 = {DVV_TOMBSTONE, 2000, kv_slice_make(NULL, 0)};
    dvv_set *s, *t;
    OK(dvv_set_new(A, &v1, &s));
    OK(dvv_set_update(s, NULL, B, &v2, &t));
    kv_buf e = KV_BUF_INIT;
    encode(t, &e);
    static const uint8_t set_bytes[] = {
        0x51, 0x44, 0x56, 0x53, 0x01, 0x00, 0x00, 0x00, /* QDVS, 1 */
        0x02, 0x00, 0x00, 0x00,                         /* 2 entries */
        0x0b, 0,    0,    0,    0,    0,    0,    0,    /* actor 11 */
        0x01, 0,    0,    0,    0,    0,    0,    0,    /* counter 1 */
        0xe8, 0x03, 0,    0,    0,    0,    0,    0,    /* ts 1000 */
        0x01, 0,    0,    0,                            /* 1 value */
        0x00,                                           /* flags */
        0xe8, 0x03, 0,    0,    0,    0,    0,    0,    /* ts 1000 */
        0x02, 0,    0,    0,    'h',  'i',              /* 2 bytes */
        0x16, 0,    0,    0,    0,    0,    0,    0,    /* actor 22 */
        0x01, 0,    0,    0,    0,    0,    0,    0,    /* counter 1 */
        0xd0, 0x07, 0,    0,    0,    0,    0,    0,    /* ts 2000 */
        0x01, 0,    0,    0,                            /* 1 value */
        0x01,                                           /* tombstone */
        0xd0, 0x07, 0,    0,    0,    0,    0,    0,    /* ts 2000 */
        0x00, 0,    0,    0,                            /* no bytes */
        0x5d, 0x07, 0xec, 0xab, 0xe1, 0x45, 0x97, 0xed, /* checksum */
    };
    expect_bytes(&e, set_bytes, sizeof set_bytes);
    dvv_ctx *c = join(t);
    kv_buf_reset(&e);
    OK(dvv_ctx_encode(c, &e));
    static const uint8_t ctx_bytes[] = {
        0x51, 0x44, 0x56, 0x43, 0x01, 0x00, 0x00, 0x00, /* QDVC, 1 */
        0x02, 0x00, 0x00, 0x00,                         /* 2 actors */
        0x0b, 0,    0,    0,    0,    0,    0,    0,    /* actor 11 */
        0x01, 0,    0,    0,    0,    0,    0,    0,    /* counter 1 */
        0xe8, 0x03, 0,    0,    0,    0,    0,    0,    /* ts 1000 */
        0x16, 0,    0,    0,    0,    0,    0,    0,    /* actor 22 */
        0x01, 0,    0,    0,    0,    0,    0,    0,    /* counter 1 */
        0xd0, 0x07, 0,    0,    0,    0,    0,    0,    /* ts 2000 */
        0x75, 0xb9, 0x7d, 0x70, 0xd5, 0x35, 0x90, 0xe9, /* checksum */
    };
    expect_bytes(&e, ctx_bytes, sizeof ctx_bytes);
    kv_buf_release(&e);
    dvv_ctx_free(c);
    dvv_set_free(s);
    dvv_set_free(t);
}

/* The set of the encoding tests: A:1 [] then B:1 ["hi"], 91 bytes.
 * Offsets: entry A at 12, entry B at 40 (actor 40, counter 48, ts 56,
 * value count 64), its value at 68 (flags 68, ts 69, length 77, bytes
 * 81), checksum at 83. */
static void sample_encoding(kv_buf *e) {
    dvv_value v1 = {0, 1, kv_slice_str("yo")}, v2 = {0, 2, kv_slice_str("hi")};
    dvv_set *s, *t;
    OK(dvv_set_new(A, &v1, &s));
    dvv_ctx *c = join(s);
    OK(dvv_set_update(s, c, B, &v2, &t));
    encode(t, e);
    cr_assert_eq(e->len, 91);
    cr_assert_eq(memcmp(e->ptr + 81, "hi", 2), 0);
    dvv_ctx_free(c);
    dvv_set_free(s);
    dvv_set_free(t);
}

/* Patch a copy of e (width bytes at off, then resealed) and expect
 * the decode to return want. */
static void expect_patched(const kv_buf *e, size_t off, size_t width,
                           uint64_t v, int want) {
    kv_buf c = KV_BUF_INIT;
    OK(kv_buf_set(&c, e->ptr, e->len));
    if (width == 1) c.ptr[off] = (uint8_t)v;
    if (width == 4) kv_put_u32(c.ptr + off, (uint32_t)v);
    if (width == 8) kv_put_u64(c.ptr + off, v);
    reseal(&c);
    dvv_set *d = (dvv_set *)1;
    /* Any allocation would fail the decode: nothing is allocated before
     * the input is known good. */
    kv_alloc_fail_after(want == 0 ? -1 : 0);
    int rc = dvv_set_decode(kv_buf_slice(&c), &d);
    kv_alloc_fail_after(-1);
    cr_assert_eq(rc, want, "patch %zu bytes at %zu to %llu: %d (%s)", width,
                 off, (unsigned long long)v, rc, kv_strerror(rc));
    if (rc) cr_assert_null(d);
    dvv_set_free(rc ? NULL : d);
    kv_buf_release(&c);
}

Test(dvv, damaged_set_encodings_are_rejected, .init = quiet_log) {
    kv_buf e = KV_BUF_INIT;
    sample_encoding(&e);
    dvv_set *d = (dvv_set *)1;
    for (size_t cut = 0; cut < e.len; cut++) {
        EXPECT_RC(dvv_set_decode(kv_slice_make(e.ptr, cut), &d), KV_ECORRUPT);
        cr_assert_null(d);
    }
    for (size_t bit = 0; bit < e.len * 8; bit++) {
        e.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        EXPECT_RC(dvv_set_decode(kv_buf_slice(&e), &d), KV_ECORRUPT);
        e.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    expect_patched(&e, 0, 1, 'Q', 0);             /* the patcher itself */
    expect_patched(&e, 0, 1, 'X', KV_ECORRUPT);   /* magic */
    expect_patched(&e, 4, 4, 2, KV_EVERSION);     /* a newer version */
    expect_patched(&e, 40, 8, A, KV_ECORRUPT);    /* duplicate actor */
    expect_patched(&e, 40, 8, 5, KV_ECORRUPT);    /* actors out of order */
    expect_patched(&e, 20, 8, 0, KV_ECORRUPT);    /* zero counter */
    expect_patched(&e, 64, 4, 2, KV_ECORRUPT);    /* 2 values, counter 1 */
    expect_patched(&e, 68, 1, 0x02, KV_ECORRUPT); /* unknown flag */
    expect_patched(&e, 68, 1, 0x80, KV_ECORRUPT);
    expect_patched(&e, 68, 1, DVV_TOMBSTONE, 0); /* known flag */
    expect_patched(&e, 69, 8, 3, KV_ECORRUPT);   /* not the entry's time */
    expect_patched(&e, 77, 4, 3, KV_ECORRUPT);   /* length past the end */
    expect_patched(&e, 77, 4, 1, KV_ECORRUPT);   /* trailing bytes */
    expect_patched(&e, 8, 4, 1, KV_ECORRUPT);    /* count too small */
    expect_patched(&e, 8, 4, 3, KV_ECORRUPT);    /* count too large */
    /* Huge counts and lengths on short input, nothing allocated. */
    expect_patched(&e, 8, 4, UINT32_MAX, KV_ECORRUPT);
    expect_patched(&e, 77, 4, UINT32_MAX, KV_ECORRUPT);
    kv_buf h = KV_BUF_INIT;
    OK(kv_buf_set(&h, e.ptr, e.len));
    kv_put_u64(h.ptr + 48, UINT64_MAX); /* room for that many values */
    expect_patched(&h, 64, 4, UINT32_MAX, KV_ECORRUPT);
    /* A trailing byte after a good set, resealed. */
    OK(kv_buf_set(&h, e.ptr, e.len - 8));
    OK(kv_buf_append(&h, "\0", 1));
    OK(kv_buf_put_u64(&h, 0));
    reseal(&h);
    EXPECT_RC(dvv_set_decode(kv_buf_slice(&h), &d), KV_ECORRUPT);
    /* Longer than any encoding may be: refused before it is read. */
    EXPECT_RC(dvv_set_decode(kv_slice_make(e.ptr, DVV_MAX_ENCODED + 1u), &d),
              KV_ECORRUPT);
    /* A context is not a set. */
    kv_buf_reset(&h);
    OK(dvv_ctx_encode(NULL, &h));
    EXPECT_RC(dvv_set_decode(kv_buf_slice(&h), &d), KV_ECORRUPT);
    cr_assert_null(d);
    kv_buf_release(&h);
    kv_buf_release(&e);
}

Test(dvv, damaged_context_encodings_are_rejected, .init = quiet_log) {
    static const uint64_t dots[][2] = {{A, 3}, {B, 1}, {C, 7}};
    dvv_ctx *c = ctx_of(dots, 3), *d = (dvv_ctx *)1;
    cr_assert_eq(dvv_ctx_counter(c, C), 7);
    cr_assert_eq(dvv_ctx_counter(c, 5), 0);
    kv_buf e = KV_BUF_INIT, p = KV_BUF_INIT;
    OK(dvv_ctx_encode(c, &e));
    cr_assert_eq(e.len, 12 + 3 * 24 + 8);
    for (size_t cut = 0; cut < e.len; cut++) {
        EXPECT_RC(dvv_ctx_decode(kv_slice_make(e.ptr, cut), &d), KV_ECORRUPT);
        cr_assert_null(d);
    }
    for (size_t bit = 0; bit < e.len * 8; bit++) {
        e.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        EXPECT_RC(dvv_ctx_decode(kv_buf_slice(&e), &d), KV_ECORRUPT);
        e.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    struct {
        size_t off, width;
        uint64_t v;
        int want;
    } cases[] = {
        {4, 4, 2, KV_EVERSION},
        {36, 8, A, KV_ECORRUPT},         /* second actor duplicates the first */
        {36, 8, 1, KV_ECORRUPT},         /* actors out of order */
        {44, 8, 0, KV_ECORRUPT},         /* zero counter */
        {8, 4, 2, KV_ECORRUPT},          /* count too small */
        {8, 4, 4, KV_ECORRUPT},          /* count too large */
        {8, 4, UINT32_MAX, KV_ECORRUPT}, /* huge count, short input */
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(cases); i++) {
        OK(kv_buf_set(&p, e.ptr, e.len));
        if (cases[i].width == 4)
            kv_put_u32(p.ptr + cases[i].off, (uint32_t)cases[i].v);
        else
            kv_put_u64(p.ptr + cases[i].off, cases[i].v);
        reseal(&p);
        kv_alloc_fail_after(0); /* nothing may be allocated */
        int rc = dvv_ctx_decode(kv_buf_slice(&p), &d);
        kv_alloc_fail_after(-1);
        cr_assert_eq(rc, cases[i].want, "case %zu: %d (%s)", i, rc,
                     kv_strerror(rc));
        cr_assert_null(d);
    }
    /* A set is not a context. */
    dvv_set *s = put(NULL, NULL, A, 1);
    kv_buf_reset(&p);
    OK(dvv_set_encode(s, &p));
    EXPECT_RC(dvv_ctx_decode(kv_buf_slice(&p), &d), KV_ECORRUPT);
    dvv_set_free(s);
    dvv_ctx_free(c);
    kv_buf_release(&p);
    kv_buf_release(&e);
}

/* The limit is the engine's value limit: a set that encodes always fits
 * one engine value, and a bigger one is refused, not cut. */
Test(dvv, sets_larger_than_an_engine_value_are_refused) {
    size_t most = DVV_MAX_ENCODED - (12 + 8 + 28 + 13);
    uint8_t *big = malloc(most + 1);
    for (size_t i = 0; i <= most; i++) big[i] = (uint8_t)(i * 7);
    dvv_value v = {0, 1, kv_slice_make(big, most)};
    dvv_set *s, *t, *d;
    OK(dvv_set_new(A, &v, &s));
    kv_buf e = KV_BUF_INIT;
    OK(dvv_set_encode(s, &e));
    cr_assert_eq(e.len, DVV_MAX_ENCODED);
    OK(dvv_set_decode(kv_buf_slice(&e), &d));
    cr_assert(dvv_set_equal(s, d));
    dvv_set_free(d);
    kv_buf_release(&e);
    /* One byte more. */
    v.bytes.len = most + 1;
    OK(dvv_set_new(A, &v, &t));
    kv_buf_set(&e, "keep", 4);
    EXPECT_RC(dvv_set_encode(t, &e), KV_ETOOLARGE);
    cr_assert_eq(e.len, 4);
    /* A value that alone exceeds the limit is refused by the write. */
    v.bytes.len = DVV_MAX_ENCODED + 1u; /* not read: refused first */
    EXPECT_RC(dvv_set_update(s, NULL, A, &v, &d), KV_ETOOLARGE);
    cr_assert_null(d);
    kv_buf_release(&e);
    dvv_set_free(s);
    dvv_set_free(t);
    free(big);
}

/* ---- misuse and allocation failures ---- */

Test(dvv, bad_arguments_change_nothing) {
    dvv_set *s = put(NULL, NULL, A, 1), *out = (dvv_set *)1;
    kv_buf before = KV_BUF_INIT, after = KV_BUF_INIT;
    encode(s, &before);
    vbuf vb;
    dvv_value v = mkval(&vb, 2, 2, 0x02);
    EXPECT_RC(dvv_set_update(s, NULL, A, &v, &out), -EINVAL);
    cr_assert_null(out);
    EXPECT_RC(dvv_set_new(A, &v, &out), -EINVAL);
    EXPECT_RC(dvv_set_update(s, NULL, A, NULL, &out), -EINVAL);
    dvv_value nob = {0, 2, kv_slice_make(NULL, 3)};
    EXPECT_RC(dvv_set_update(s, NULL, A, &nob, &out), -EINVAL);
    cr_assert_null(out);
    /* A counter at its end (only a crafted context gets there). */
    static const uint64_t full[][2] = {{A, UINT64_MAX}};
    dvv_ctx *c = ctx_of(full, 1);
    v = mkval(&vb, 2, 2, 0);
    EXPECT_RC(dvv_set_update(s, c, A, &v, &out), -EOVERFLOW);
    cr_assert_null(out);
    OK(dvv_set_update(s, c, B, &v, &out)); /* another actor is fine */
    cr_assert_eq(dvv_set_counter(out, A), UINT64_MAX);
    cr_assert_eq(dvv_set_siblings(out), 1);
    dvv_set_free(out);
    encode(s, &after);
    cr_assert_eq(before.len, after.len);
    cr_assert_eq(memcmp(before.ptr, after.ptr, before.len), 0);
    /* NULL is the empty set and the empty context. */
    cr_assert_eq(dvv_set_siblings(NULL), 0);
    cr_assert_eq(dvv_set_actors(NULL), 0);
    cr_assert_eq(dvv_set_compare(NULL, NULL), DVV_EQUAL);
    cr_assert_eq(dvv_set_compare(NULL, s), DVV_PRECEDES);
    dvv_set *e;
    OK(dvv_set_merge(NULL, NULL, &e));
    cr_assert(dvv_set_equal(e, NULL));
    kv_buf_reset(&after);
    OK(dvv_set_encode(NULL, &after));
    dvv_set *de;
    OK(dvv_set_decode(kv_buf_slice(&after), &de));
    cr_assert_eq(dvv_set_siblings(de), 0);
    cr_assert_eq(dvv_set_prune(NULL, 0), 0);
    dvv_set_free(de);
    dvv_set_free(e);
    dvv_ctx_free(c);
    dvv_set_free(s);
    kv_buf_release(&before);
    kv_buf_release(&after);
}

/* Each operation with the k-th allocation failing, k = 0, 1, ... until it
 * succeeds: every failure is -ENOMEM with no result and unchanged inputs
 * (and, under the sanitizers, no leak). */
#define FAIL_LOOP(out, call, on_success)                                       \
    for (long k_ = 0;; k_++) {                                                 \
        out = (void *)1;                                                       \
        kv_alloc_fail_after(k_);                                               \
        int frc_ = (call);                                                     \
        kv_alloc_fail_after(-1);                                               \
        if (frc_ == 0) {                                                       \
            on_success;                                                        \
            break;                                                             \
        }                                                                      \
        EXPECT_RC(frc_, -ENOMEM);                                              \
        cr_assert_null(out);                                                   \
        cr_assert_lt(k_, 100);                                                 \
    }

Test(dvv, allocation_failures_change_nothing) {
    dvv_set *pool[POOL];
    make_pool(12, pool);
    const dvv_set *a = pool[POOL - 1], *b = pool[POOL - 7];
    cr_assert_gt(dvv_set_siblings(a) + dvv_set_siblings(b), 2);
    kv_buf ea = KV_BUF_INIT, eb = KV_BUF_INIT, chk = KV_BUF_INIT;
    encode(a, &ea);
    encode(b, &eb);
    dvv_ctx *cb = join(b);
    vbuf vb;
    dvv_value v = mkval(&vb, 77, 77, 0);
    dvv_set *s, *want;

    want = put(a, cb, 3, 77);
    FAIL_LOOP(s, dvv_set_update(a, cb, 3, &v, &s), {
        expect_same(s, want);
        dvv_set_free(s);
    });
    dvv_set_free(want);
    FAIL_LOOP(s, dvv_set_new(3, &v, &s), dvv_set_free(s));
    want = merge(a, b);
    FAIL_LOOP(s, dvv_set_merge(a, b, &s), {
        expect_same(s, want);
        dvv_set_free(s);
    });
    dvv_set_free(want);
    FAIL_LOOP(s, dvv_set_decode(kv_buf_slice(&ea), &s), {
        expect_same(s, a);
        dvv_set_free(s);
    });
    dvv_ctx *c;
    FAIL_LOOP(c, dvv_set_join(a, &c), {
        cr_assert_eq(dvv_ctx_actors(c), dvv_set_actors(a));
        dvv_ctx_free(c);
    });
    kv_buf ec = KV_BUF_INIT;
    OK(dvv_ctx_encode(cb, &ec));
    FAIL_LOOP(c, dvv_ctx_decode(kv_buf_slice(&ec), &c), {
        cr_assert_eq(dvv_ctx_compare(c, cb), DVV_EQUAL);
        dvv_ctx_free(c);
    });
    /* Encoders leave the buffer as it was. */
    for (int which = 0; which < 2; which++) {
        for (long k = 0;; k++) {
            kv_buf out = KV_BUF_INIT;
            OK(kv_buf_set(&out, "keep", 4));
            kv_alloc_fail_after(k);
            int rc =
                which == 0 ? dvv_set_encode(a, &out) : dvv_ctx_encode(cb, &out);
            kv_alloc_fail_after(-1);
            if (rc != 0) {
                EXPECT_RC(rc, -ENOMEM);
                cr_assert(out.len == 4 && memcmp(out.ptr, "keep", 4) == 0);
            }
            kv_buf_release(&out);
            if (rc == 0) break;
        }
    }
    /* The inputs are as they were. */
    encode(a, &chk);
    cr_assert(chk.len == ea.len && memcmp(chk.ptr, ea.ptr, ea.len) == 0);
    encode(b, &chk);
    cr_assert(chk.len == eb.len && memcmp(chk.ptr, eb.ptr, eb.len) == 0);
    dvv_ctx_free(cb);
    kv_buf_release(&ec);
    kv_buf_release(&ea);
    kv_buf_release(&eb);
    kv_buf_release(&chk);
    free_pool(pool);
}
