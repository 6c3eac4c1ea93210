/*
 * Tests for the gossiped cluster state (ring/cluster.c): founding and
 * joining states, the two-step membership change run by the claimant (join,
 * leave, the last member's leave), a member that restarts with a new
 * incarnation, the lattice laws of merge over randomly evolved states,
 * the encoding and its damage checks.
 */
#include "ring/ring.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>

#define Q 64u

static kv_slice S(const char *s) {
    return kv_slice_str(s);
}

static ring_cluster *found(const char *name) {
    ring_cluster *c;
    OK(ring_cluster_new(Q, S(name), S("127.0.0.1:1"), 7, &c));
    return c;
}

static ring_cluster *joiner(const char *name) {
    ring_cluster *c;
    OK(ring_cluster_new(0, S(name), S("127.0.0.1:2"), 9, &c));
    return c;
}

/* Replace *c by merge(*c, o). */
static void merge_into(ring_cluster **c, const ring_cluster *o) {
    ring_cluster *m;
    OK(ring_cluster_merge(*c, o, &m));
    ring_cluster_unref(*c);
    *c = m;
}

/* Replace *c by its claimant step; returns whether it changed. */
static bool claim(ring_cluster **c) {
    ring_cluster *d;
    int rc = ring_cluster_claim(*c, &d);
    cr_assert(rc >= 0, "claim: %s", kv_strerror(rc));
    if (rc == 0) {
        cr_assert_null(d);
        return false;
    }
    ring_cluster_unref(*c);
    *c = d;
    return true;
}

/* name reports done (or leave) on *c, as that member would. */
static void set(ring_cluster **c, const char *name, bool leave, uint64_t done) {
    int i = ring_cluster_find(*c, S(name));
    cr_assert_geq(i, 0);
    ring_member_info m = ring_cluster_member(*c, (uint32_t)i);
    ring_cluster *d;
    OK(ring_cluster_set_self(*c, S(name), m.addr, m.incarnation, leave, done,
                             &d));
    ring_cluster_unref(*c);
    *c = d;
}

static ring_status status(const ring_cluster *c, const char *name) {
    int i = ring_cluster_find(c, S(name));
    cr_assert_geq(i, 0, "%s is not in the state", name);
    return ring_cluster_member(c, (uint32_t)i).status;
}

Test(cluster, founding_and_joining_states) {
    ring_cluster *a = found("a"), *b = joiner("b");
    cr_assert_eq(ring_cluster_version(a), 1);
    cr_assert_not_null(ring_cluster_ring(a));
    cr_assert_null(ring_cluster_next(a));
    cr_assert_eq(status(a, "a"), RING_VALID);
    cr_assert_null(ring_cluster_ring(b));
    cr_assert_eq(ring_cluster_version(b), 0);
    cr_assert_eq(status(b, "b"), RING_JOINING);
    /* A joiner learns the ring; the founder learns the joiner. */
    merge_into(&b, a);
    merge_into(&a, b);
    cr_assert(ring_cluster_equal(a, b));
    cr_assert_eq(status(a, "b"), RING_JOINING);
    cr_assert_not_null(ring_cluster_ring(b));
    ring_cluster_unref(a);
    ring_cluster_unref(b);
}

Test(cluster, join_is_two_steps_and_waits_for_every_transfer) {
    ring_cluster *a = found("a"), *b = joiner("b");
    merge_into(&a, b);
    cr_assert(claim(&a));
    const ring *next = ring_cluster_next(a);
    cr_assert_not_null(next);
    cr_assert_eq(ring_members(next), 2);
    cr_assert_eq(ring_members(ring_cluster_ring(a)), 1, "still serving old");
    uint64_t nv = ring_cluster_next_version(a);
    cr_assert_eq(nv, 2);
    cr_assert_eq(status(a, "b"), RING_VALID);
    cr_assert_not(claim(&a), "nobody is done yet");
    set(&a, "a", false, nv);
    cr_assert_not(claim(&a), "b is not done");
    set(&a, "b", false, nv);
    cr_assert(claim(&a));
    cr_assert_null(ring_cluster_next(a));
    cr_assert_eq(ring_members(ring_cluster_ring(a)), 2);
    cr_assert_eq(ring_cluster_version(a), 3);
    cr_assert_not(claim(&a), "stable");
    ring_cluster_unref(a);
    ring_cluster_unref(b);
}

/* Bring members names[1..] into a's cluster, to a stable ring. */
static void grow(ring_cluster **a, const char **names, int n) {
    for (int i = 1; i < n; i++) {
        ring_cluster *j = joiner(names[i]);
        merge_into(a, j);
        ring_cluster_unref(j);
    }
    cr_assert(claim(a));
    uint64_t nv = ring_cluster_next_version(*a);
    for (int i = 0; i < n; i++) set(a, names[i], false, nv);
    cr_assert(claim(a));
    cr_assert_eq(ring_members(ring_cluster_ring(*a)), (uint32_t)n);
}

Test(cluster, leave_removes_after_transfers) {
    const char *names[] = {"a", "b", "c"};
    ring_cluster *a = found("a");
    grow(&a, names, 3);
    set(&a, "c", true, 0);
    cr_assert_eq(status(a, "c"), RING_LEAVING);
    cr_assert(claim(&a));
    cr_assert_eq(ring_members(ring_cluster_next(a)), 2);
    cr_assert_geq(ring_find(ring_cluster_ring(a), S("c")), 0);
    uint64_t nv = ring_cluster_next_version(a);
    set(&a, "a", false, nv);
    set(&a, "b", false, nv);
    cr_assert_not(claim(&a), "the leaver must hand its data over first");
    set(&a, "c", true, nv);
    cr_assert(claim(&a));
    cr_assert_eq(status(a, "c"), RING_REMOVED);
    cr_assert_lt(ring_find(ring_cluster_ring(a), S("c")), 0);
    cr_assert_not(claim(&a));
    ring_cluster_unref(a);
}

Test(cluster, the_last_member_does_not_leave) {
    ring_cluster *a = found("a");
    set(&a, "a", true, 0);
    cr_assert_not(claim(&a));
    cr_assert_eq(status(a, "a"), RING_LEAVING);
    ring_cluster_unref(a);
}

Test(cluster, restart_with_new_incarnation_overrides_old_entry) {
    const char *names[] = {"a", "b"};
    ring_cluster *a = found("a");
    grow(&a, names, 2);
    for (int i = 0; i < 4; i++) set(&a, "b", false, 0); /* b at version 5+ */
    /* b's directory was wiped: it starts over at version 1. */
    ring_cluster *b;
    OK(ring_cluster_new(0, S("b"), S("127.0.0.1:9"), 1234, &b));
    merge_into(&b, a);
    int i = ring_cluster_find(b, S("b"));
    cr_assert_neq(ring_cluster_member(b, (uint32_t)i).incarnation, 1234,
                  "the older, higher version wins the merge");
    /* ... so the node sets its entry again, above what it learned. */
    ring_cluster *d;
    OK(ring_cluster_set_self(b, S("b"), S("127.0.0.1:9"), 1234, false, 0, &d));
    merge_into(&a, d);
    i = ring_cluster_find(a, S("b"));
    ring_member_info m = ring_cluster_member(a, (uint32_t)i);
    cr_assert_eq(m.incarnation, 1234);
    cr_assert(kv_slice_eq(m.addr, S("127.0.0.1:9")));
    ring_cluster_unref(a);
    ring_cluster_unref(b);
    ring_cluster_unref(d);
}

static bool up_unless_a(void *arg, kv_slice name) {
    (void)arg;
    return !kv_slice_eq(name, S("a"));
}
static bool all_up(void *arg, kv_slice name) {
    (void)arg;
    (void)name;
    return true;
}

Test(cluster, claimant_is_the_first_member_seen_up) {
    const char *names[] = {"a", "b", "c"};
    ring_cluster *a = found("a");
    grow(&a, names, 3);
    cr_assert_eq(ring_cluster_claimant(a, all_up, NULL),
                 ring_cluster_find(a, S("a")));
    cr_assert_eq(ring_cluster_claimant(a, up_unless_a, NULL),
                 ring_cluster_find(a, S("b")));
    ring_cluster *j = joiner("0-joiner"); /* sorts first, not in the ring */
    merge_into(&a, j);
    cr_assert_eq(ring_cluster_claimant(a, all_up, NULL),
                 ring_cluster_find(a, S("a")));
    ring_cluster_unref(j);
    ring_cluster_unref(a);
}

/* Random evolution: several nodes each apply local changes and merge
 * with random others; merge must be commutative, idempotent and
 * associative on whatever states come out, and everyone converges. */
Test(cluster, merge_is_a_lattice_join) {
    enum { NODES = 5, STEPS = 400 };
    const char *names[NODES] = {"n0", "n1", "n2", "n3", "n4"};
    ring_cluster *s[NODES];
    s[0] = found("n0");
    for (int i = 1; i < NODES; i++) s[i] = joiner(names[i]);
    uint64_t x = 42;
    for (int step = 0; step < STEPS; step++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int i = (int)((x >> 33) % NODES), j = (int)((x >> 45) % NODES);
        switch ((x >> 20) % 4) {
        case 0:
            merge_into(&s[i], s[j]);
            break;
        case 1: {
            int me = ring_cluster_find(s[i], S(names[i]));
            ring_member_info m = ring_cluster_member(s[i], (uint32_t)me);
            uint64_t nv = ring_cluster_next_version(s[i]);
            ring_cluster *d;
            OK(ring_cluster_set_self(s[i], S(names[i]), m.addr, m.incarnation,
                                     false, nv ? nv : m.done, &d));
            ring_cluster_unref(s[i]);
            s[i] = d;
            break;
        }
        case 2:
            if (ring_cluster_claimant(s[i], all_up, NULL) ==
                ring_cluster_find(s[i], S(names[i])))
                claim(&s[i]);
            break;
        default: {
            int k = (int)((x >> 50) % NODES);
            ring_cluster *ab, *ba, *aa, *ab_c, *bc, *a_bc;
            OK(ring_cluster_merge(s[i], s[j], &ab));
            OK(ring_cluster_merge(s[j], s[i], &ba));
            OK(ring_cluster_merge(s[i], s[i], &aa));
            OK(ring_cluster_merge(ab, s[k], &ab_c));
            OK(ring_cluster_merge(s[j], s[k], &bc));
            OK(ring_cluster_merge(s[i], bc, &a_bc));
            cr_assert(ring_cluster_equal(ab, ba), "commutative");
            cr_assert(ring_cluster_equal(aa, s[i]), "idempotent");
            cr_assert(ring_cluster_equal(ab_c, a_bc), "associative");
            ring_cluster *list[] = {ab, ba, aa, ab_c, bc, a_bc};
            for (size_t q = 0; q < 6; q++) ring_cluster_unref(list[q]);
        }
        }
    }
    /* Everyone gossips with everyone: one state. */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < NODES; i++)
            for (int j = 0; j < NODES; j++) merge_into(&s[i], s[j]);
    for (int i = 1; i < NODES; i++) cr_assert(ring_cluster_equal(s[0], s[i]));
    for (int i = 0; i < NODES; i++) ring_cluster_unref(s[i]);
}

Test(cluster, merge_refuses_another_cluster) {
    ring_cluster *a = found("a"), *b;
    OK(ring_cluster_new(128, S("b"), S(""), 1, &b));
    ring_cluster *m;
    EXPECT_RC(ring_cluster_merge(a, b, &m), -EINVAL);
    cr_assert_null(m);
    ring_cluster_unref(a);
    ring_cluster_unref(b);
}

Test(cluster, bad_names_and_addresses) {
    ring_cluster *c;
    EXPECT_RC(ring_cluster_new(Q, S("a b"), S(""), 1, &c), -EINVAL);
    EXPECT_RC(ring_cluster_new(Q, S("a"), S("has space:1"), 1, &c), -EINVAL);
    EXPECT_RC(ring_cluster_new(7, S("a"), S(""), 1, &c), -EINVAL);
    cr_assert_null(c);
}

Test(cluster, encoding_round_trip_and_damage) {
    const char *names[] = {"a", "b", "c"};
    ring_cluster *a = found("a");
    grow(&a, names, 3);
    set(&a, "b", true, 0);
    cr_assert(claim(&a)); /* a move in progress: both rings encoded */
    kv_buf b = KV_BUF_INIT;
    OK(ring_cluster_encode(a, &b));
    ring_cluster *d;
    OK(ring_cluster_decode(kv_buf_slice(&b), &d));
    cr_assert(ring_cluster_equal(a, d));
    ring_cluster_unref(d);
    for (size_t i = 0; i < b.len; i += 7) {
        b.ptr[i] ^= 0x10;
        int rc = ring_cluster_decode(kv_buf_slice(&b), &d);
        cr_assert(rc == KV_ECORRUPT || rc == KV_EVERSION, "flip at %zu: %d", i,
                  rc);
        cr_assert_null(d);
        b.ptr[i] ^= 0x10;
    }
    for (size_t len = 0; len < b.len; len += 13)
        EXPECT_RC(ring_cluster_decode(kv_slice_make(b.ptr, len), &d),
                  KV_ECORRUPT);
    kv_buf_release(&b);
    ring_cluster_unref(a);
}
