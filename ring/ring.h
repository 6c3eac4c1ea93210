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
/* true when a and b are the same ring (epoch, members, owners). */
bool ring_equal(const ring *a, const ring *b);

#endif
