/*
 * store: a node's replicas of objects, kept in its engine. An object is a
 * key's dotted version vector set (replica/dvv.h): every sibling with its
 * causal history. The store applies the two replica-side operations of the
 * coordinator's protocol atomically per key:
 *
 *   update (the coordinating replica of a put): the new value replaces
 *   what the client's context covers and gets a new dot of this node;
 *   merge (every other replica): the incoming object is merged with the
 *   stored one (least upper bound), so replicas converge in any order.
 *
 * Engine keys are "o" + the key's 8-byte placement hash (big-endian) + the
 * key: other record kinds (hints, membership) can share the engine under
 * other first bytes, and each ring partition is one contiguous key range.
 * Format of the stored value: docs/object-format.md.
 *
 * Threading: every function may be called from any thread (libuv's pool
 * calls them); read-modify-writes of one key are serialised by a striped
 * lock, different keys run in parallel. Calls block on the disk.
 */
#ifndef QFS_REPLICA_STORE_H
#define QFS_REPLICA_STORE_H

#include "engine/engine.h"

typedef struct rep_store rep_store;

/* Wrap db (not owned; must outlive the store). */
int rep_store_new(eng_db *db, rep_store **out);
void rep_store_free(rep_store *s);

/* The encoded object of key into out (its contents replaced), decoded
 * first so that only a valid object is returned. KV_ENOTFOUND;
 * KV_ECORRUPT for stored bytes that are not an object and KV_EVERSION
 * for an object of a newer format (both logged with the key, the bytes
 * left in place); engine errors, -ENOMEM. out is empty on error. */
int rep_store_get(rep_store *s, kv_slice key, kv_buf *out);

/* Flags of update and merge. */
enum {
    REP_STORE_TOMBSTONE = 1, /* update: write a delete, not value */
    REP_STORE_SYNC = 2,      /* fsync the WAL before returning */
    /* Last writer wins (the key's bucket says so): update replaces every
     * sibling, or is dropped when the stored winner has a later
     * timestamp (ties: the higher actor); merge keeps the set whose
     * winner is later. The winner: dvv_set_lww. */
    REP_STORE_LWW = 4,
    /* Write the WAL without waiting for its fsync (when every op of the
     * engine batch says so; one op that does not makes the batch wait). */
    REP_STORE_NOSYNC = 8,
};

/* Coordinating put: stored object + (ctx, value or tombstone) at actor,
 * timestamp now_us. The new object is written and returned in out (under
 * LWW, a write that loses returns the stored object unchanged).
 * KV_ECORRUPT for a bad ctx or stored object, KV_ETOOLARGE, engine
 * errors; nothing is written on error. */
int rep_store_update(rep_store *s, kv_slice key, kv_slice ctx, kv_slice value,
                     int flags, uint64_t actor, uint64_t now_us, kv_buf *out);

/* Replica merge: stored object joined with obj (flags SYNC, LWW), written
 * if it changed. self is this node's actor, which pruning never drops. */
int rep_store_merge(rep_store *s, kv_slice key, kv_slice obj, int flags,
                    uint64_t self);

/* Updates and merges applied together: as few engine writes (and, when
 * any op has REP_STORE_SYNC, fsyncs) as their keys allow. Ops on distinct
 * keys share one write; an op whose key an earlier op already has starts
 * the next write, so it sees that op's result, as if the ops ran one
 * after another. Each op's result is its rc (what rep_store_update or
 * rep_store_merge would return); an op that fails writes nothing, and a
 * failed engine write fails every op it carried. */
enum { REP_STORE_OP_UPDATE = 1, REP_STORE_OP_MERGE = 2 };
#define REP_STORE_MAX_GROUP 256 /* ops in one engine write, at most */

typedef struct rep_store_op {
    int kind;       /* REP_STORE_OP_* */
    kv_slice key;   /* the object's key */
    kv_slice ctx;   /* update: the client's context (may be empty) */
    kv_slice value; /* update: the value; merge: the incoming object */
    int flags;      /* REP_STORE_* */
    uint64_t actor; /* update: the coordinator; merge: this node (self) */
    uint64_t now_us;
    kv_buf *out; /* update: the new object (required); merge: unused */
    /* update, optional: the new object's context when the write left it
     * one sibling (the writer saw everything else); else emptied. A
     * context with other siblings in it would let the writer's next put
     * supersede versions it never saw. */
    kv_buf *ctx_out;
    int rc; /* out: the op's result */
} rep_store_op;

/* Apply ops[0..n) in order; every op's rc is set. Returns -ENOMEM when
 * nothing could start (every rc is then -ENOMEM), else 0. */
int rep_store_apply(rep_store *s, rep_store_op *ops, size_t n);

/* Two encoded objects merged into out (a coordinator merging replies):
 * their least upper bound, or under lww the one whose winner is later.
 * KV_ECORRUPT for a bad encoding, -ENOMEM, KV_ETOOLARGE. */
int rep_obj_merge(kv_slice a, kv_slice b, bool lww, kv_buf *out);

/* Objects whose placement hash is in [lo, hi], in engine order, after the
 * engine key in cursor (empty: from lo): fn(arg, key, object) for each,
 * at most max_items of them or until max_bytes were passed, the cursor
 * advanced past each one fn accepted. *more says whether the range has
 * more. Engine errors, or the first error fn returns. */
typedef int (*rep_scan_fn)(void *arg, kv_slice key, kv_slice obj);
int rep_store_scan(rep_store *s, uint64_t lo, uint64_t hi, kv_buf *cursor,
                   size_t max_items, size_t max_bytes, rep_scan_fn fn,
                   void *arg, bool *more);
/* Delete every object whose placement hash is in [lo, hi] (ownership
 * moved away), adding the count to *dropped. */
int rep_store_drop(rep_store *s, uint64_t lo, uint64_t hi, uint64_t *dropped);
/* Purge key's tombstone: delete the object if it is still exactly tomb
 * (its encoding byte for byte; anything written since keeps it). *reaped
 * says whether it was deleted. Engine errors. */
int rep_store_reap(rep_store *s, kv_slice key, kv_slice tomb, bool *reaped);

#endif
