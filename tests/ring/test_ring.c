/*
 * Tests for ring placement (ring/ring.c): balance for every member count
 * from 3 to 500, how much a join or a leave moves and to whom, preference
 * lists, determinism, the encoding and its damage checks, bad arguments
 * and allocation failures, and the 10-million-key simulation of the seed
 * design (500 nodes), which prints its spread.
 */
#include "ring/ring.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>

#define Q RING_DEFAULT_PARTITIONS

static kv_slice S(const char *s) {
    return kv_slice_str(s);
}

static void node_name(char *buf, int i) {
    snprintf(buf, 32, "node-%03d", i);
}

/* Replace *r by the ring with node i joined. */
static void join(ring **r, int i) {
    char name[32];
    node_name(name, i);
    ring *next;
    OK(ring_join(*r, S(name), &next));
    ring_free(*r);
    *r = next;
}

static void leave(ring **r, const char *name) {
    ring *next;
    OK(ring_leave(*r, S(name), &next));
    ring_free(*r);
    *r = next;
}

static ring *ring_of(int members) {
    ring *r;
    OK(ring_new(Q, S("node-000"), &r));
    for (int i = 1; i < members; i++) join(&r, i);
    return r;
}

/* max/mean of partitions owned, after checking the counts match the table
 * and differ by at most one. */
static double spread(const ring *r) {
    uint32_t n = ring_members(r), q = ring_partitions(r);
    uint32_t *count = calloc(n, sizeof *count);
    for (uint32_t p = 0; p < q; p++) {
        uint32_t o = ring_owner(r, p);
        cr_assert_lt(o, n);
        count[o]++;
    }
    uint32_t lo = UINT32_MAX, hi = 0;
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_eq(count[i], ring_owned(r, i), "member %u", i);
        lo = KV_MIN(lo, count[i]);
        hi = KV_MAX(hi, count[i]);
    }
    free(count);
    cr_assert_leq(hi - lo, 1, "%u members: owned %u..%u", n, lo, hi);
    return (double)hi / ((double)q / n);
}

/* Joins from 1 to 500 members: balanced at every count, and each join
 * moves at most 1.1/(n+1) of the hash space, all of it to the newcomer.
 * Partitions are equal, so the share of partitions moved is the share of
 * the hash space (and of keys, up to sampling) moved. */
Test(ring, joins_keep_balance_and_move_only_to_the_newcomer) {
    ring *r;
    OK(ring_new(Q, S("node-000"), &r));
    double worst = 0;
    for (int n = 1; n < 500; n++) {
        ring *before = r;
        char name[32];
        node_name(name, n);
        OK(ring_join(before, S(name), &r));
        cr_assert_eq(ring_epoch(r), ring_epoch(before) + 1);
        cr_assert_eq(ring_members(r), (uint32_t)n + 1);
        cr_assert(kv_slice_eq(ring_member(r, (uint32_t)n), S(name)));
        uint32_t moved = 0;
        for (uint32_t p = 0; p < Q; p++) {
            if (ring_owner(r, p) == ring_owner(before, p)) continue;
            cr_assert_eq(ring_owner(r, p), (uint32_t)n,
                         "join %d: partition %u moved to an old member", n, p);
            moved++;
        }
        double share = (double)moved / Q, bound = 1.1 / (n + 1);
        cr_assert_leq(share, bound, "join %d moved %.5f > %.5f", n, share,
                      bound);
        cr_assert_gt(moved, 0);
        ring_free(before);
        double s = spread(r);
        if (n + 1 >= 3) {
            cr_assert_leq(s, 1.10, "%d members: max/mean %.4f", n + 1, s);
            worst = KV_MAX(worst, s);
        }
    }
    fprintf(stderr, "ring: worst max/mean over 3..500 members: %.4f\n", worst);
    ring_free(r);
}

/* Keys, not only partitions: sampled keys move in the same share. */
Test(ring, sampled_keys_move_by_the_same_bound) {
    enum { KEYS = 200000 };
    uint64_t *h = malloc(KEYS * sizeof *h);
    char k[32];
    for (int i = 0; i < KEYS; i++) {
        int len = snprintf(k, sizeof k, "user/%d/cart", i);
        h[i] = ring_hash(kv_slice_make((const uint8_t *)k, (size_t)len));
    }
    ring *r = ring_of(1);
    for (int n = 1; n < 40; n++) {
        ring *before = r;
        r = NULL;
        char name[32];
        node_name(name, n);
        OK(ring_join(before, S(name), &r));
        int moved = 0;
        for (int i = 0; i < KEYS; i++) {
            uint32_t a = ring_owner(before, ring_partition(before, h[i]));
            uint32_t b = ring_owner(r, ring_partition(r, h[i]));
            if (a == b) continue;
            cr_assert_eq(b, (uint32_t)n, "key %d moved between old members", i);
            moved++;
        }
        double share = (double)moved / KEYS;
        cr_assert_leq(share, 1.1 / (n + 1), "join %d moved %.4f of keys", n,
                      share);
        ring_free(before);
    }
    ring_free(r);
    free(h);
}

static int find_name(const ring *r, const char *name) {
    return ring_find(r, S(name));
}

/* Leaves: only the leaver's partitions move; every other partition keeps
 * its owner (by name), and balance holds down to 3 members. */
Test(ring, leaves_move_only_the_leavers_partitions) {
    ring *r = ring_of(120);
    uint64_t state = 12345;
    while (ring_members(r) > 3) {
        state = mix64(state + 1);
        uint32_t x = (uint32_t)(state % ring_members(r));
        char gone[RING_MAX_NAME + 1];
        kv_slice g = ring_member(r, x);
        memcpy(gone, g.ptr, g.len);
        gone[g.len] = '\0';
        ring *before = r;
        OK(ring_leave(before, S(gone), &r));
        cr_assert_eq(find_name(r, gone), -1);
        cr_assert_eq(ring_members(r), ring_members(before) - 1);
        for (uint32_t p = 0; p < Q; p++) {
            kv_slice was = ring_member(before, ring_owner(before, p));
            kv_slice now = ring_member(r, ring_owner(r, p));
            if (ring_owner(before, p) == x)
                cr_assert(!kv_slice_eq(now, S(gone)));
            else
                cr_assert(kv_slice_eq(was, now), "partition %u moved", p);
        }
        ring_free(before);
        double s = spread(r);
        cr_assert_leq(s, 1.10, "%u members: max/mean %.4f", ring_members(r), s);
    }
    ring_free(r);
}

/* Joins and leaves in a random order stay balanced and never list a
 * member twice. */
Test(ring, random_changes_stay_balanced) {
    ring *r = ring_of(3);
    int next = 3;
    uint64_t state = 99;
    for (int step = 0; step < 300; step++) {
        state = mix64(state + 7);
        if (ring_members(r) > 3 && state % 3 == 0) {
            kv_slice g =
                ring_member(r, (uint32_t)(state >> 8) % ring_members(r));
            char gone[RING_MAX_NAME + 1];
            memcpy(gone, g.ptr, g.len);
            gone[g.len] = '\0';
            leave(&r, gone);
        } else {
            join(&r, next++);
        }
        cr_assert_leq(spread(r), 1.10);
    }
    ring_free(r);
}

/* Preference lists: distinct members, the first is the partition's owner,
 * and as many as asked while the ring has them. */
Test(ring, preflists_are_distinct_and_start_at_the_owner) {
    for (int members = 1; members <= 7; members++) {
        ring *r = ring_of(members);
        for (uint32_t p = 0; p < Q; p++) {
            uint64_t h = (uint64_t)p << (64 - 13); /* Q = 2^13 */
            cr_assert_eq(ring_partition(r, h), p);
            cr_assert_eq(ring_partition(r, h | 0xffffu), p);
            uint32_t pl[8];
            int n = ring_preflist(r, h, 5, pl);
            cr_assert_eq(n, KV_MIN(5, members));
            cr_assert_eq(pl[0], ring_owner(r, p));
            for (int i = 0; i < n; i++)
                for (int j = 0; j < i; j++) cr_assert_neq(pl[i], pl[j]);
        }
        ring_free(r);
    }
}

/* Replica load (N = 3) follows partition load: the claim spreads each
 * member's partitions, so walking three distinct owners does not pile
 * secondary replicas on a few members. */
Test(ring, replica_load_is_balanced_too) {
    int sizes[] = {3, 5, 8, 20, 64, 200};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        ring *r = ring_of(sizes[s]);
        uint32_t *load = calloc((size_t)sizes[s], sizeof *load);
        for (uint32_t p = 0; p < Q; p++) {
            uint32_t pl[3];
            int n = ring_preflist(r, (uint64_t)p << 51, 3, pl);
            for (int i = 0; i < n; i++) load[pl[i]]++;
        }
        uint32_t hi = 0;
        for (int i = 0; i < sizes[s]; i++) hi = KV_MAX(hi, load[i]);
        double mean = 3.0 * Q / sizes[s];
        fprintf(stderr, "ring: %d members, N=3 replica load max/mean %.4f\n",
                sizes[s], hi / mean);
        cr_assert_leq(hi / mean, 1.25, "%d members: %.4f", sizes[s], hi / mean);
        free(load);
        ring_free(r);
    }
}

/* The placement hash is part of the data layout: pinned. */
Test(ring, placement_hash_never_changes) {
    cr_assert_eq(ring_hash(S("")), ring_hash(kv_slice_make(NULL, 0)));
    uint64_t h = ring_hash(S("devices/7/state"));
    cr_assert_eq(h, ring_hash(S("devices/7/state")));
    cr_assert_neq(h, ring_hash(S("devices/7/statf")));
    fprintf(stderr, "ring: hash of devices/7/state = 0x%016llx\n",
            (unsigned long long)h);
    cr_assert_eq(h, UINT64_C(0x81f94a0323e56577),
                 "placement hash changed: 0x%016llx", (unsigned long long)h);
}

/* Two nodes applying the same changes get the same ring, byte for byte,
 * and a ring survives its encoding. */
Test(ring, same_changes_give_the_same_ring_and_encoding) {
    ring *a = ring_of(9), *b = ring_of(9);
    leave(&a, "node-004");
    leave(&b, "node-004");
    join(&a, 40);
    join(&b, 40);
    cr_assert(ring_equal(a, b));
    kv_buf ea = KV_BUF_INIT, eb = KV_BUF_INIT;
    OK(ring_encode(a, &ea));
    OK(ring_encode(b, &eb));
    cr_assert_eq(ea.len, eb.len);
    cr_assert_eq(memcmp(ea.ptr, eb.ptr, ea.len), 0);
    ring *d;
    OK(ring_decode(kv_buf_slice(&ea), &d));
    cr_assert(ring_equal(a, d));
    for (uint32_t i = 0; i < ring_members(a); i++)
        cr_assert_eq(ring_owned(a, i), ring_owned(d, i));
    ring_free(d);
    /* A different change is a different ring. */
    join(&b, 41);
    cr_assert(!ring_equal(a, b));
    kv_buf_release(&ea);
    kv_buf_release(&eb);
    ring_free(a);
    ring_free(b);
}

/* Patch bytes of an encoding and fix its checksum, to reach the checks
 * behind it. */
static void reseal(kv_buf *e) {
    kv_put_u64(e->ptr + e->len - 8, kv_checksum(e->ptr, e->len - 8));
}

Test(ring, damaged_encodings_are_rejected) {
    ring *r = ring_of(5), *d = (ring *)1;
    kv_buf e = KV_BUF_INIT;
    OK(ring_encode(r, &e));
    /* Every truncation and every flipped bit. */
    for (size_t cut = 0; cut < e.len; cut++) {
        EXPECT_RC(ring_decode(kv_slice_make(e.ptr, cut), &d), KV_ECORRUPT);
        cr_assert_null(d);
    }
    for (size_t bit = 0; bit < e.len * 8; bit += 3) {
        e.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert_neq(ring_decode(kv_buf_slice(&e), &d), 0, "bit %zu", bit);
        e.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    kv_buf c = KV_BUF_INIT;
    /* A newer version, properly sealed: not corruption, a version. */
    kv_buf_set(&c, e.ptr, e.len);
    kv_put_u32(c.ptr + 8, 2);
    reseal(&c);
    EXPECT_RC(ring_decode(kv_buf_slice(&c), &d), KV_EVERSION);
    /* An owner out of range. */
    kv_buf_set(&c, e.ptr, e.len);
    kv_put_u16(c.ptr + c.len - 10, 5);
    reseal(&c);
    EXPECT_RC(ring_decode(kv_buf_slice(&c), &d), KV_ECORRUPT);
    /* Two members with one name ("node-000" twice). */
    kv_buf_set(&c, e.ptr, e.len);
    memcpy(c.ptr + 32 + 1 + 8 + 1, "node-000", 8);
    reseal(&c);
    EXPECT_RC(ring_decode(kv_buf_slice(&c), &d), KV_ECORRUPT);
    /* A header claiming the most members and partitions, on short input:
     * refused before anything that size is allocated. */
    kv_buf_set(&c, e.ptr, e.len);
    kv_put_u32(c.ptr + 12, RING_MAX_PARTITIONS);
    kv_put_u32(c.ptr + 24, RING_MAX_MEMBERS);
    reseal(&c);
    kv_alloc_fail_after(0); /* any allocation would fail the test */
    EXPECT_RC(ring_decode(kv_buf_slice(&c), &d), KV_ECORRUPT);
    kv_alloc_fail_after(-1);
    /* Partitions that are not a power of two, zero members. */
    kv_buf_set(&c, e.ptr, e.len);
    kv_put_u32(c.ptr + 12, Q - 1);
    reseal(&c);
    EXPECT_RC(ring_decode(kv_buf_slice(&c), &d), KV_ECORRUPT);
    kv_buf_set(&c, e.ptr, e.len);
    kv_put_u32(c.ptr + 24, 0);
    reseal(&c);
    EXPECT_RC(ring_decode(kv_buf_slice(&c), &d), KV_ECORRUPT);
    kv_buf_release(&c);
    kv_buf_release(&e);
    ring_free(r);
}

Test(ring, bad_arguments_change_nothing) {
    ring *r = (ring *)1, *x = (ring *)1;
    EXPECT_RC(ring_new(1000, S("a"), &r), -EINVAL); /* not a power of 2 */
    EXPECT_RC(ring_new(4, S("a"), &r), -EINVAL);
    EXPECT_RC(ring_new(RING_MAX_PARTITIONS * 2, S("a"), &r), -EINVAL);
    EXPECT_RC(ring_new(Q, S(""), &r), -EINVAL);
    EXPECT_RC(ring_new(Q, S("a b"), &r), -EINVAL);
    EXPECT_RC(ring_new(Q, S("a/b"), &r), -EINVAL);
    char longname[RING_MAX_NAME + 2];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    EXPECT_RC(ring_new(Q, S(longname), &r), -EINVAL);
    cr_assert_null(r);
    longname[RING_MAX_NAME] = '\0'; /* exactly the limit: fine */
    OK(ring_new(Q, S(longname), &r));
    ring_free(r);

    r = ring_of(3);
    kv_buf before = KV_BUF_INIT, after = KV_BUF_INIT;
    OK(ring_encode(r, &before));
    EXPECT_RC(ring_join(r, S("node-001"), &x), -EEXIST);
    EXPECT_RC(ring_join(r, S("bad name"), &x), -EINVAL);
    EXPECT_RC(ring_leave(r, S("node-077"), &x), KV_ENOTFOUND);
    cr_assert_null(x);
    OK(ring_encode(r, &after));
    cr_assert_eq(before.len, after.len);
    cr_assert_eq(memcmp(before.ptr, after.ptr, before.len), 0);
    ring_free(r);

    OK(ring_new(Q, S("solo"), &r));
    EXPECT_RC(ring_leave(r, S("solo"), &x), -EINVAL);
    ring_free(r);

    /* The member limit, on the smallest ring (later members own nothing
     * but are still members). */
    OK(ring_new(RING_MIN_PARTITIONS, S("node-000"), &r));
    for (int i = 1; i < (int)RING_MAX_MEMBERS; i++) join(&r, i);
    EXPECT_RC(ring_join(r, S("one-too-many"), &x), KV_ETOOLARGE);
    (void)spread(r); /* counts match the table and differ by at most 1 */
    ring_free(r);
    kv_buf_release(&before);
    kv_buf_release(&after);
}

Test(ring, allocation_failures_leave_the_ring_unchanged) {
    ring *r = ring_of(6);
    kv_buf e = KV_BUF_INIT;
    OK(ring_encode(r, &e));
    for (long k = 0;; k++) {
        ring *x = (ring *)1;
        kv_alloc_fail_after(k);
        int rc = ring_join(r, S("late"), &x);
        kv_alloc_fail_after(-1);
        if (rc == 0) {
            ring_free(x);
            break;
        }
        EXPECT_RC(rc, -ENOMEM);
        cr_assert_null(x);
    }
    for (long k = 0;; k++) {
        ring *x = (ring *)1;
        kv_alloc_fail_after(k);
        int rc = ring_leave(r, S("node-002"), &x);
        kv_alloc_fail_after(-1);
        if (rc == 0) {
            ring_free(x);
            break;
        }
        EXPECT_RC(rc, -ENOMEM);
        cr_assert_null(x);
    }
    for (long k = 0;; k++) {
        ring *x = (ring *)1;
        kv_alloc_fail_after(k);
        int rc = ring_decode(kv_buf_slice(&e), &x);
        kv_alloc_fail_after(-1);
        if (rc == 0) {
            cr_assert(ring_equal(r, x));
            ring_free(x);
            break;
        }
        EXPECT_RC(rc, -ENOMEM);
        cr_assert_null(x);
    }
    kv_buf after = KV_BUF_INIT;
    OK(ring_encode(r, &after));
    cr_assert_eq(memcmp(after.ptr, e.ptr, e.len), 0);
    kv_buf_release(&after);
    kv_buf_release(&e);
    ring_free(r);
}

/* The seed design is 100 billion keys on 500 nodes; 10 million sampled
 * keys show the spread per node, for primaries and for N = 3 replicas. */
Test(ring, simulation_10m_keys_on_500_nodes, .timeout = 600) {
    enum { NODES = 500, KEYS = 10000000 };
    ring *r = ring_of(NODES);
    uint64_t *prim = calloc(NODES, sizeof *prim), *repl = calloc(NODES, 8);
    char k[40];
    for (int i = 0; i < KEYS; i++) {
        int len = snprintf(k, sizeof k, "obj/%016llx",
                           (unsigned long long)mix64((uint64_t)i));
        uint64_t h = ring_hash(kv_slice_make((const uint8_t *)k, (size_t)len));
        uint32_t pl[3];
        int n = ring_preflist(r, h, 3, pl);
        cr_assert_eq(n, 3);
        prim[pl[0]]++;
        for (int j = 0; j < n; j++) repl[pl[j]]++;
    }
    uint64_t pmin = UINT64_MAX, pmax = 0, rmin = UINT64_MAX, rmax = 0;
    for (int i = 0; i < NODES; i++) {
        pmin = KV_MIN(pmin, prim[i]);
        pmax = KV_MAX(pmax, prim[i]);
        rmin = KV_MIN(rmin, repl[i]);
        rmax = KV_MAX(rmax, repl[i]);
    }
    double pmean = (double)KEYS / NODES, rmean = 3.0 * KEYS / NODES;
    fprintf(stderr,
            "ring simulation: %d keys, %d nodes, %u partitions\n"
            "  primary keys per node: min %llu mean %.0f max %llu "
            "(max/mean %.4f, min/mean %.4f)\n"
            "  N=3 replicas per node: min %llu mean %.0f max %llu "
            "(max/mean %.4f, min/mean %.4f)\n",
            KEYS, NODES, ring_partitions(r), (unsigned long long)pmin, pmean,
            (unsigned long long)pmax, pmax / pmean, pmin / pmean,
            (unsigned long long)rmin, rmean, (unsigned long long)rmax,
            rmax / rmean, rmin / rmean);
    cr_assert_leq(pmax / pmean, 1.10);
    cr_assert_leq(rmax / rmean, 1.15);
    free(prim);
    free(repl);
    ring_free(r);
}
