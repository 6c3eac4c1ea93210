/*
 * ring: where each key lives. The 64-bit xxh3 hash space is cut into Q
 * equal partitions (a power of two, default 8192); a partition is the top
 * log2(Q) bits of a key's hash. Each partition has one owner, a member
 * named by the ring. A key's preference list is the owners met walking the
 * partitions clockwise from the key's own, skipping owners already listed,
 * so its N replicas are on N distinct members.
 *
 * A ring is changed only by ring_join and ring_leave, which return a new
 * ring one epoch later: a deterministic claim that moves as little as it can
 * (a join takes partitions from the most loaded members and nothing else
 * moves; a leave gives only the leaver's partitions away) and keeps every
 * member within one partition of every other. Everything is a pure function
 * of the ring and the change, so every node that applies the same change to
 * the same ring gets the same bytes. Why partitions and not random tokens:
 * docs/ARCHITECTURE.md. Encoding: docs/ring-format.md.
 *
 * Threading: a ring is immutable after it is made; any number of threads
 * may read one at once. Nothing here does I/O or keeps global state.
 */
#ifndef QFS_RING_H
#define QFS_RING_H

#include "base/base.h"

#define RING_DEFAULT_PARTITIONS 8192u
#define RING_MIN_PARTITIONS 8u
#define RING_MAX_PARTITIONS 65536u
#define RING_MAX_MEMBERS 1024u
#define RING_MAX_NAME 63u /* bytes in a member name */
/* Claims try to keep a member's partitions at least this far apart, so the
 * first RING_SPREAD partitions after any key have distinct owners and
 * replica load follows partition load. Best effort, never a guarantee. */
#define RING_SPREAD 4u

typedef struct ring ring;

/* A member name is 1..RING_MAX_NAME bytes of [A-Za-z0-9._:-]. */
bool ring_name_valid(kv_slice name);

/* A ring of `partitions` (a power of two in [RING_MIN_PARTITIONS,
 * RING_MAX_PARTITIONS]) all owned by `first`, at epoch 1. The caller owns
 * *out (ring_free). -EINVAL for a bad count or name, -ENOMEM. */
int ring_new(uint32_t partitions, kv_slice first, ring **out);
void ring_free(ring *r);

/* A new ring (epoch + 1) with `name` added as the last member. It takes
 * floor(Q / (n + 1)) partitions, one at a time from the member that owns
 * the most (ties: the earliest member), preferring partitions far from the
 * ones it already has. -EEXIST if already a member, KV_ETOOLARGE at
 * RING_MAX_MEMBERS, -EINVAL for a bad name, -ENOMEM. r is unchanged. */
int ring_join(const ring *r, kv_slice name, ring **out);
/* A new ring (epoch + 1) without `name`: each of its partitions, in order,
 * goes to the member that owns the fewest (ties: one with no partition
 * near it, then the earliest member). KV_ENOTFOUND if not a member,
 * -EINVAL for the last member, -ENOMEM. r is unchanged. */
int ring_leave(const ring *r, kv_slice name, ring **out);

uint32_t ring_partitions(const ring *r);
uint32_t ring_members(const ring *r);
uint64_t ring_epoch(const ring *r);
/* Member i's name (0 <= i < ring_members), valid while r lives. */
kv_slice ring_member(const ring *r, uint32_t i);
/* Index of the member called name, or -1. */
int ring_find(const ring *r, kv_slice name);
/* Owner (member index) of partition p < ring_partitions(r). */
uint32_t ring_owner(const ring *r, uint32_t p);
/* Partitions member i owns. */
uint32_t ring_owned(const ring *r, uint32_t i);

/* The placement hash of a key: xxh3-64 with a fixed seed. Never changes. */
uint64_t ring_hash(kv_slice key);
/* The partition holding hash h: its top log2(Q) bits. */
uint32_t ring_partition(const ring *r, uint64_t h);
/* The preference list of hash h: up to n distinct member indexes into
 * out[0..n), the first being the owner of h's partition. Returns how many
 * (fewer than n only when the ring has fewer members). */
int ring_preflist(const ring *r, uint64_t h, int n, uint32_t *out);

/* Append the ring's encoding (versioned, checksummed) to out. 0 or
 * -ENOMEM. */
int ring_encode(const ring *r, kv_buf *out);
/* Decode a ring from exactly the bytes of in. KV_ECORRUPT for bad bytes
 * (a checksum, a bound or an owner out of range), KV_EVERSION for an
 * unknown version, -ENOMEM. Nothing is allocated before the sizes in the
 * header are checked against RING_MAX_* and the input length. */
int ring_decode(kv_slice in, ring **out);
/* A copy of r, or NULL when out of memory. */
ring *ring_dup(const ring *r);
/* true when a and b are the same ring (epoch, members, owners). */
bool ring_equal(const ring *a, const ring *b);

/* ---- cluster state ---------------------------------------------------------
 * What every node gossips: the members and the ring. The state is a
 * join-semilattice, so nodes that exchange states in any order, any number
 * of times, end with the same one (ring_cluster_merge):
 *
 * - Each member has one entry that only that member changes (its address,
 *   incarnation, "leave" request, and how far its transfers got), with a
 *   version the member bumps on every change; the higher version wins.
 * - The ring part (the serving ring, the next ring while ownership moves,
 *   and their version) changes only at the claimant, the first member by
 *   name of the serving ring that the claimant itself sees up; the higher
 *   version wins, and two claimants that raced are ordered by checksum.
 *
 * A change of membership is two steps. The claimant computes the next ring
 * (joins and leaves applied with ring_join/ring_leave, names in order);
 * every member of either ring moves the data it holds to the next ring's
 * owners and then reports done for that version; once all have, the
 * claimant makes the next ring the serving ring. Until then the serving
 * ring places every request. docs/ring-format.md (encoding) and
 * docs/ARCHITECTURE.md (why).
 *
 * A ring_cluster is immutable and reference counted: any number of threads
 * may read one; every change returns a new one.
 */
#define RING_MAX_ADDR 63u /* bytes in a member's "HOST:PORT" */
/* Entries a state holds, removed members included. */
#define RING_MAX_ENTRIES (2u * RING_MAX_MEMBERS)

typedef struct ring_cluster ring_cluster;

typedef enum ring_status {
    RING_JOINING, /* known, in neither ring yet */
    RING_VALID,   /* in the serving or the next ring */
    RING_LEAVING, /* asked to leave, still in a ring */
    RING_REMOVED, /* asked to leave and in no ring: gone for good */
} ring_status;

typedef struct ring_member_info {
    kv_slice name, addr;  /* valid while the state lives */
    uint64_t incarnation; /* drawn when the member's data directory began */
    uint64_t version;     /* of this entry, bumped by the member */
    uint64_t done;        /* the last next-ring version it moved data for */
    bool leave;
    ring_status status;
} ring_member_info;

/* A state with one member, `name` at `addr`. With partitions > 0 it founds a
 * cluster: a new ring owned by name, version 1. With 0 it knows no ring
 * yet (a node joining through seeds, which learns the ring by gossip).
 * -EINVAL for a bad name, address or partition count, -ENOMEM. */
int ring_cluster_new(uint32_t partitions, kv_slice name, kv_slice addr,
                     uint64_t incarnation, ring_cluster **out);
ring_cluster *ring_cluster_ref(ring_cluster *c);
void ring_cluster_unref(ring_cluster *c);

/* The version of the ring part, the version at which the next ring was
 * set (0 when none), the serving ring (NULL before a joining node learned
 * one) and the next ring (NULL when ownership is not moving). */
uint64_t ring_cluster_version(const ring_cluster *c);
uint64_t ring_cluster_next_version(const ring_cluster *c);
const ring *ring_cluster_ring(const ring_cluster *c);
const ring *ring_cluster_next(const ring_cluster *c);
/* Entries (by name ascending), entry i, and the index of name or -1. */
uint32_t ring_cluster_members(const ring_cluster *c);
ring_member_info ring_cluster_member(const ring_cluster *c, uint32_t i);
int ring_cluster_find(const ring_cluster *c, kv_slice name);

/* c with name's own entry set to addr, incarnation, leave and done, at a
 * version above any this state holds for name (a member restarted with a
 * new incarnation thereby overrides what others remember of its old one).
 * -EINVAL for bad input, KV_ETOOLARGE past RING_MAX_ENTRIES, -ENOMEM. */
int ring_cluster_set_self(const ring_cluster *c, kv_slice name, kv_slice addr,
                          uint64_t incarnation, bool leave, uint64_t done,
                          ring_cluster **out);
/* c with member name removed on its behalf (it is gone for good and
 * cannot leave itself): its entry marked leaving and done with every
 * move, at a version above the one c holds, so no move waits for it.
 * KV_ENOTFOUND if c has no such member, -ENOMEM. */
int ring_cluster_force_leave(const ring_cluster *c, kv_slice name,
                             ring_cluster **out);
/* The least upper bound of a and b. Commutative, associative, idempotent.
 * -EINVAL when their rings have different partition counts (two clusters),
 * KV_ETOOLARGE past RING_MAX_ENTRIES, -ENOMEM. */
int ring_cluster_merge(const ring_cluster *a, const ring_cluster *b,
                       ring_cluster **out);
/* true when a and b hold the same ring part and the same entries. */
bool ring_cluster_equal(const ring_cluster *a, const ring_cluster *b);

/* The claimant: the first member of the serving ring, by name, for which
 * up(arg, name) is true; -1 when there is none (or no ring). */
int ring_cluster_claimant(const ring_cluster *c,
                          bool (*up)(void *arg, kv_slice name), void *arg);
/* One step of the claimant: with no move in progress, a next ring with
 * every joining member added and every leaving member removed; with one in
 * progress and every member of either ring done with it, the next ring
 * becomes the serving ring. *out = the new state and 1, or NULL and 0 when
 * there is nothing to do; -ENOMEM, or ring_join's errors. */
int ring_cluster_claim(const ring_cluster *c, ring_cluster **out);

/* Buckets: the part of a key before its first '/' names its bucket (keys
 * without one are in the default bucket, which has no settings). A bucket
 * setting is a register: set at any node with a version above the one that
 * node knows, the higher version winning the merge (ties: the higher
 * flags). RING_BUCKET_LWW: last writer wins instead of siblings. */
#define RING_BUCKET_LWW 1u
#define RING_MAX_BUCKETS 1024u
uint32_t ring_cluster_bucket_flags(const ring_cluster *c, kv_slice name);
uint32_t ring_cluster_buckets(const ring_cluster *c);
kv_slice ring_cluster_bucket(const ring_cluster *c, uint32_t i,
                             uint32_t *flags);
/* c with bucket name set to flags. -EINVAL for a bad name (as a member
 * name) or unknown flags, KV_ETOOLARGE past RING_MAX_BUCKETS, -ENOMEM. */
int ring_cluster_set_bucket(const ring_cluster *c, kv_slice name,
                            uint32_t flags, ring_cluster **out);

/* Encoding (versioned, checksummed): docs/ring-format.md. Decode checks
 * every bound before allocating: KV_ECORRUPT, KV_EVERSION, -ENOMEM. */
int ring_cluster_encode(const ring_cluster *c, kv_buf *out);
int ring_cluster_decode(kv_slice in, ring_cluster **out);

#endif
