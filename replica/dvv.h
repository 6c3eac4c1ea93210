/*
 * dvv: the causality of one object. A dotted version vector set (DVVSet,
 * Almeida et al., as in Riak 2.x) holds an object's siblings, the values
 * written concurrently, each tagged with the dot (actor, counter) of the
 * write that made it, together with the causal history of the object: one
 * entry per actor (a node that coordinated a write) with its last counter.
 * A context (dvv_ctx) is that history alone, a version vector (with the
 * time of each actor's last write, which only pruning uses): clients get
 * one with a read and send it back with a write, and the write then
 * replaces exactly the siblings the client saw.
 *
 * Actors are server-side (the coordinating node), so a history has at most
 * one entry per node that ever coordinated a write of the object, and the
 * number of siblings is bounded by the number of concurrent writers, never
 * by the number of writes (the Riak 1.x sibling explosion cannot happen).
 *
 * Threading: pure data structures, no locks and no global state. A set or
 * a context has one owner at a time; functions taking a const pointer only
 * read, so several threads may read one object while nobody changes it.
 *
 * Format of the encodings and the algebra, with a worked example:
 * docs/object-format.md.
 */
#ifndef QFS_REPLICA_DVV_H
#define QFS_REPLICA_DVV_H

#include "base/base.h"

/* dvv_set_prune keeps a history to this many actors where it can. */
#define DVV_MAX_ACTORS 64u
/* A suggested sibling count above which the replica layer should log a
 * warning (Riak 2.x warns at 25). Nothing here refuses siblings. */
#define DVV_WARN_SIBLINGS 25u
/* The largest encoding of a set or a context, so that an encoded set is
 * always one engine value (ENG_MAX_VALUE). */
#define DVV_MAX_ENCODED (64u * 1024u * 1024u)

/* Value flags. A tombstone (a delete) is a sibling like any other. */
#define DVV_TOMBSTONE 0x01u
#define DVV_FLAGS_KNOWN DVV_TOMBSTONE

typedef struct dvv_set dvv_set;
typedef struct dvv_ctx dvv_ctx;

/* One value as the caller passes it in or reads it out. */
typedef struct dvv_value {
    uint8_t flags;      /* DVV_TOMBSTONE; other bits must be zero */
    uint64_t timestamp; /* microseconds since the epoch, by the coordinator */
    kv_slice bytes;     /* opaque; borrowed (see each function) */
} dvv_value;

/* A sibling: a value and the dot of the write that made it. */
typedef struct dvv_sibling {
    uint64_t actor;   /* the coordinator of the write */
    uint64_t counter; /* its event number at that actor, from 1 */
    dvv_value value;  /* bytes valid until the set is freed */
} dvv_sibling;

/* How the history of a relates to that of b. */
typedef enum dvv_order {
    DVV_EQUAL,      /* the same history */
    DVV_DESCENDS,   /* a has seen all of b and more: a replaces b */
    DVV_PRECEDES,   /* b has seen all of a and more: b replaces a */
    DVV_CONCURRENT, /* each has seen something the other has not: merge */
} dvv_order;

/* Everywhere below, a NULL `const dvv_set *` is the empty set and a NULL
 * `const dvv_ctx *` the empty context. No function changes its const
 * arguments; on failure an out-parameter is set to NULL. */

/* ---- sets ---------------------------------------------------------------- */

/* A first write: a set holding v alone, at dot (actor, 1). v's bytes are
 * copied. The caller owns *out (dvv_set_free). -EINVAL for a NULL v,
 * unknown flags or NULL bytes with a length, KV_ETOOLARGE for bytes over
 * DVV_MAX_ENCODED, -ENOMEM. */
int dvv_set_new(uint64_t actor, const dvv_value *v, dvv_set **out);
void dvv_set_free(dvv_set *s);

/* A write coordinated by `actor`: s is the coordinator's stored set, c the
 * context the client sent (what it read). The result keeps every sibling
 * of s that c does not cover, drops those it covers, and adds v at the
 * dot (actor, max(counter of actor in s and c) + 1); its history is the
 * union of s's, c's and the new dot. v's bytes are copied. Errors as
 * dvv_set_new, and -EOVERFLOW if actor's counter is at UINT64_MAX. */
int dvv_set_update(const dvv_set *s, const dvv_ctx *c, uint64_t actor,
                   const dvv_value *v, dvv_set **out);

/* The least upper bound of two replicas' sets (a replica receiving a
 * coordinated write, read repair, anti-entropy): the union of the
 * histories, and every sibling of either side that the other side's
 * history does not cover (or that the other side still holds).
 * Idempotent, commutative and associative. 0 or -ENOMEM. */
int dvv_set_merge(const dvv_set *a, const dvv_set *b, dvv_set **out);

/* Bound s's history to DVV_MAX_ACTORS entries where it can: while above
 * it, drop the entry with the oldest timestamp (then the lowest actor)
 * among those that hold no sibling and are not `keep`. Entries holding a
 * sibling are never dropped, so the bound is exceeded when more than
 * DVV_MAX_ACTORS actors hold siblings. `keep` must be the local node's
 * actor: a coordinator that lost its own entry would reuse its dots.
 * Forgetting history can only add siblings, never lose one (see the doc).
 * Returns the number of entries dropped. */
size_t dvv_set_prune(dvv_set *s, uint64_t keep);

/* Compare the histories of two sets (the join of each). A replica holding
 * b that receives a keeps b on DVV_EQUAL or DVV_PRECEDES, stores a on
 * DVV_DESCENDS and stores dvv_set_merge(a, b) on DVV_CONCURRENT; merging
 * always is correct too, the comparison only saves the work. */
dvv_order dvv_set_compare(const dvv_set *a, const dvv_set *b);
/* true when a and b hold the same history, timestamps and siblings. */
bool dvv_set_equal(const dvv_set *a, const dvv_set *b);

/* The context of s: its history without the values, to hand to a client
 * with the siblings. The caller owns *out (dvv_ctx_free). 0 or -ENOMEM. */
int dvv_set_join(const dvv_set *s, dvv_ctx **out);

/* The number of siblings. Never capped: a write is never refused or
 * dropped for having too many; the caller warns past DVV_WARN_SIBLINGS. */
size_t dvv_set_siblings(const dvv_set *s);
/* Sibling i < dvv_set_siblings(s): by actor ascending, and within one
 * actor the newest (highest counter) first. Bytes valid until s is
 * freed. */
dvv_sibling dvv_set_sibling(const dvv_set *s, size_t i);
/* Last-writer-wins: the sibling with the highest timestamp, ties broken by
 * the higher actor, then the higher counter. Dots are unique, so the
 * winner is the same on every replica holding the same siblings. 0, or
 * KV_ENOTFOUND for a set with no sibling. */
int dvv_set_lww(const dvv_set *s, dvv_sibling *out);

/* Actors in s's history, and actor's counter there (0 if absent). */
size_t dvv_set_actors(const dvv_set *s);
uint64_t dvv_set_counter(const dvv_set *s, uint64_t actor);

/* Append s's encoding (versioned, checksummed) to out. KV_ETOOLARGE if it
 * would exceed DVV_MAX_ENCODED, -ENOMEM; out is unchanged on failure. */
int dvv_set_encode(const dvv_set *s, kv_buf *out);
/* Decode a set from exactly the bytes of in. KV_EVERSION for an unknown
 * version, KV_ECORRUPT for any other failed check (logged with its
 * offset; a caller reading from the network may report KV_EPROTO
 * instead), -ENOMEM. Every count and length is checked against the
 * remaining input before anything is allocated. */
int dvv_set_decode(kv_slice in, dvv_set **out);

/* ---- contexts ------------------------------------------------------------ */

void dvv_ctx_free(dvv_ctx *c);
/* As dvv_set_compare, for two contexts. */
dvv_order dvv_ctx_compare(const dvv_ctx *a, const dvv_ctx *b);
size_t dvv_ctx_actors(const dvv_ctx *c);
/* The i-th actor of c (ascending), 0 past the end. */
uint64_t dvv_ctx_actor(const dvv_ctx *c, size_t i);
uint64_t dvv_ctx_counter(const dvv_ctx *c, uint64_t actor);
/* Append c's encoding (versioned, checksummed) to out. KV_ETOOLARGE if it
 * would exceed DVV_MAX_ENCODED, -ENOMEM; out is unchanged on failure. */
int dvv_ctx_encode(const dvv_ctx *c, kv_buf *out);
/* Decode a context from exactly the bytes of in; errors as
 * dvv_set_decode. */
int dvv_ctx_decode(kv_slice in, dvv_ctx **out);

#endif
