/*
 * A node's objects in its engine (see store.h).
 *
 * Invariants: a stored value is always a valid encoded dvv set (it is
 * decoded before anything is derived from it or it is handed out, and a
 * bad one is reported as corruption, never overwritten blindly); a
 * read-modify-write of a key holds that key's stripe lock from the read
 * to the write, so two writes of one key cannot both start from the same
 * old object and lose one. Format of the stored value:
 * docs/object-format.md.
 */
#include "replica/store.h"
#include "replica/dvv.h"
#include "ring/ring.h"

#include <pthread.h>

#define MOD "store"
#define STRIPES 256 /* key locks; a power of two */

struct rep_store {
    eng_db *db;
    pthread_mutex_t locks[STRIPES];
};

int rep_store_new(eng_db *db, rep_store **out) {
    *out = NULL;
    rep_store *s = kv_calloc(1, sizeof *s);
    if (!s) return -ENOMEM;
    s->db = db;
    for (int i = 0; i < STRIPES; i++) pthread_mutex_init(&s->locks[i], NULL);
    *out = s;
    return 0;
}

void rep_store_free(rep_store *s) {
    if (!s) return;
    for (int i = 0; i < STRIPES; i++) pthread_mutex_destroy(&s->locks[i]);
    kv_free(s);
}

/* The engine key of an object: "o", the key's placement hash big-endian,
 * the key; on the stack for usual keys. Sorting by hash first makes every
 * partition (a range of hash prefixes, whatever the ring's size) one
 * contiguous range of engine keys, which handoff and Merkle trees scan. */
typedef struct okey {
    uint8_t small[256];
    uint8_t *p;
    size_t len;
} okey;

static int okey_make(okey *k, kv_slice key) {
    k->len = 1 + 8 + key.len;
    k->p = k->len <= sizeof k->small ? k->small : kv_malloc(k->len);
    if (!k->p) return -ENOMEM;
    k->p[0] = 'o';
    uint64_t h = ring_hash(key);
    for (int i = 0; i < 8; i++) k->p[1 + i] = (uint8_t)(h >> (56 - 8 * i));
    if (key.len) memcpy(k->p + 9, key.ptr, key.len);
    return 0;
}

static void okey_release(okey *k) {
    if (k->p != k->small) kv_free(k->p);
}

static pthread_mutex_t *lock_of(rep_store *s, kv_slice key) {
    return &s->locks[kv_hash64(key.ptr, key.len, 0) & (STRIPES - 1)];
}

/* Decode the stored value v of key into *out, logging, with the key, a
 * value that is not an object (KV_ECORRUPT) or is one of a newer format
 * (KV_EVERSION). */
static int decode(kv_slice key, kv_slice v, dvv_set **out) {
    int rc = dvv_set_decode(v, out);
    if (rc && rc != -ENOMEM)
        kv_error(MOD, "object '%.*s': stored value is not an object: %s",
                 (int)KV_MIN(key.len, 200), (const char *)key.ptr,
                 kv_strerror(rc));
    return rc;
}

/* The stored set of key into *out (NULL if there is none). */
static int load(rep_store *s, const okey *k, kv_slice key, dvv_set **out) {
    *out = NULL;
    kv_buf v = KV_BUF_INIT;
    int rc = eng_db_get(s->db, NULL, kv_slice_make(k->p, k->len), &v);
    if (rc == KV_ENOTFOUND)
        rc = 0;
    else if (rc == 0)
        rc = decode(key, kv_buf_slice(&v), out);
    kv_buf_release(&v);
    return rc;
}

int rep_store_get(rep_store *s, kv_slice key, kv_buf *out) {
    okey k;
    int rc = okey_make(&k, key);
    if (rc == 0) {
        rc = eng_db_get(s->db, NULL, kv_slice_make(k.p, k.len), out);
        okey_release(&k);
    }
    /* Only a valid object leaves the store: coordinators merge the bytes
     * and clients decode them. dvv.h has no check short of a decode, so
     * this copies the values once more. */
    if (rc == 0) {
        dvv_set *set;
        rc = decode(key, kv_buf_slice(out), &set);
        dvv_set_free(set);
    }
    if (rc) kv_buf_reset(out);
    return rc;
}

/* The order of two last-writer-wins candidates: timestamp, then actor,
 * then counter (dots are unique, so two sets' winners differ unless they
 * are the same write). */
static int lww_cmp(const dvv_sibling *a, const dvv_sibling *b) {
    if (a->value.timestamp != b->value.timestamp)
        return a->value.timestamp > b->value.timestamp ? 1 : -1;
    if (a->actor != b->actor) return a->actor > b->actor ? 1 : -1;
    if (a->counter != b->counter) return a->counter > b->counter ? 1 : -1;
    return 0;
}

/* Under last-writer-wins, whether set a's winner beats set b's (a set
 * without siblings loses to any). */
static bool lww_beats(const dvv_set *a, const dvv_set *b) {
    dvv_sibling wa, wb;
    if (dvv_set_lww(a, &wa) != 0) return false;
    if (dvv_set_lww(b, &wb) != 0) return true;
    return lww_cmp(&wa, &wb) > 0;
}

/* ---- writes: update and merge, applied in batches ---- */

/* The object an update makes from old (NULL: none) into op->out; *write
 * says whether it is to be stored (under LWW a write that loses is not,
 * and out holds the stored object unchanged). */
static int prep_update(rep_store_op *op, dvv_set *old, bool *write) {
    dvv_ctx *c = NULL;
    dvv_set *set = NULL;
    bool tomb = op->flags & REP_STORE_TOMBSTONE;
    dvv_value v = {.flags = tomb ? DVV_TOMBSTONE : 0,
                   .timestamp = op->now_us,
                   .bytes = tomb ? kv_slice_make(NULL, 0) : op->value};
    int rc = op->ctx.len ? dvv_ctx_decode(op->ctx, &c) : 0;
    *write = false;
    if (rc == 0 && (op->flags & REP_STORE_LWW)) {
        /* Last writer wins: the write replaces everything stored, unless
         * what is stored carries a later timestamp; then the write is
         * dropped, and nobody is told (that is the mode's contract, and
         * its failure under clock skew: docs/consistency.md). */
        dvv_sibling w;
        if (old && dvv_set_lww(old, &w) == 0 &&
            (w.value.timestamp > op->now_us ||
             (w.value.timestamp == op->now_us && w.actor > op->actor))) {
            rc = dvv_set_encode(old, op->out);
            goto out;
        }
        dvv_ctx_free(c);
        c = NULL;
        if (old) rc = dvv_set_join(old, &c);
    }
    if (rc == 0) rc = dvv_set_update(old, c, op->actor, &v, &set);
    if (rc == 0) {
        dvv_set_prune(set, op->actor);
        rc = dvv_set_encode(set, op->out);
        *write = rc == 0;
    }
    if (rc == 0 && op->ctx_out && dvv_set_siblings(set) == 1) {
        dvv_ctx *nc = NULL;
        rc = dvv_set_join(set, &nc);
        if (rc == 0) rc = dvv_ctx_encode(nc, op->ctx_out);
        dvv_ctx_free(nc);
    }
out:
    dvv_ctx_free(c);
    dvv_set_free(set);
    return rc;
}

/* The object a merge of op->value into old makes, into enc; *write says
 * whether it differs from what is stored. */
static int prep_merge(rep_store_op *op, dvv_set *old, kv_buf *enc,
                      bool *write) {
    dvv_set *in = NULL, *set = NULL;
    int rc = dvv_set_decode(op->value, &in);
    *write = false;
    if (rc) goto out;
    dvv_order o = dvv_set_compare(in, old);
    if (old && (op->flags & REP_STORE_LWW)) {
        /* Last writer wins: keep whichever set holds the later write. */
        if (lww_beats(in, old)) {
            rc = dvv_set_encode(in, enc);
            *write = rc == 0;
        }
    } else if (old && (o == DVV_EQUAL || o == DVV_PRECEDES)) {
        /* Nothing new: the stored object already holds all of it. */
    } else {
        rc = old && o == DVV_CONCURRENT ? dvv_set_merge(in, old, &set) : 0;
        if (rc == 0) {
            dvv_set_prune(set ? set : in, op->actor);
            rc = dvv_set_encode(set ? set : in, enc);
            *write = rc == 0;
        }
    }
out:
    dvv_set_free(in);
    dvv_set_free(set);
    return rc;
}

static unsigned stripe_of(kv_slice key) {
    return (unsigned)(kv_hash64(key.ptr, key.len, 0) & (STRIPES - 1));
}

/* Whether ops[0..n) has key. */
static bool has_key(const rep_store_op *ops, size_t n, kv_slice key) {
    for (size_t i = 0; i < n; i++)
        if (kv_slice_eq(ops[i].key, key)) return true;
    return false;
}

/* Apply ops[0..n), whose keys are distinct, as one engine write while
 * holding their stripes' locks (taken in ascending order, so two groups
 * cannot deadlock). */
static void apply_group(rep_store *s, rep_store_op *ops, size_t n, eng_batch *b,
                        kv_buf *enc) {
    uint64_t want[STRIPES / 64] = {0};
    bool sync = false, nosync = true;
    for (size_t i = 0; i < n; i++) {
        unsigned st = stripe_of(ops[i].key);
        want[st / 64] |= 1ull << (st % 64);
        sync |= (ops[i].flags & REP_STORE_SYNC) != 0;
        nosync &= (ops[i].flags & REP_STORE_NOSYNC) != 0;
    }
    for (unsigned st = 0; st < STRIPES; st++)
        if (want[st / 64] >> (st % 64) & 1) pthread_mutex_lock(&s->locks[st]);
    eng_batch_clear(b);
    bool added[REP_STORE_MAX_GROUP];
    for (size_t i = 0; i < n; i++) {
        rep_store_op *op = &ops[i];
        dvv_set *old = NULL;
        bool write = false;
        okey k;
        added[i] = false;
        if (op->out) kv_buf_reset(op->out);
        if (op->ctx_out) kv_buf_reset(op->ctx_out);
        kv_buf_reset(enc);
        op->rc = okey_make(&k, op->key);
        if (op->rc) continue;
        op->rc = load(s, &k, op->key, &old);
        if (op->rc == 0)
            op->rc = op->kind == REP_STORE_OP_UPDATE
                         ? prep_update(op, old, &write)
                         : prep_merge(op, old, enc, &write);
        if (op->rc == 0 && write) {
            kv_buf *v = op->kind == REP_STORE_OP_UPDATE ? op->out : enc;
            op->rc =
                eng_batch_put(b, kv_slice_make(k.p, k.len), kv_buf_slice(v));
            added[i] = op->rc == 0;
        }
        if (op->rc && op->out) kv_buf_reset(op->out);
        if (op->rc && op->ctx_out) kv_buf_reset(op->ctx_out);
        dvv_set_free(old);
        okey_release(&k);
    }
    int rc = eng_batch_count(b) == 0 ? 0
                                     : eng_db_write(s->db, b,
                                                    sync     ? ENG_WF_SYNC_GROUP
                                                    : nosync ? ENG_WF_SYNC_NONE
                                                             : ENG_WF_DEFAULT);
    for (unsigned st = 0; st < STRIPES; st++)
        if (want[st / 64] >> (st % 64) & 1) pthread_mutex_unlock(&s->locks[st]);
    for (size_t i = 0; rc && i < n; i++) {
        if (!added[i]) continue;
        ops[i].rc = rc;
        if (ops[i].out) kv_buf_reset(ops[i].out);
    }
}

int rep_store_apply(rep_store *s, rep_store_op *ops, size_t n) {
    eng_batch *b;
    kv_buf enc = KV_BUF_INIT;
    int rc = eng_batch_new(&b);
    for (size_t i = 0; i < n; i++) ops[i].rc = rc;
    if (rc) return rc;
    /* Groups of distinct keys, in order: an op whose key an earlier op of
     * the group has starts the next group, so it sees that op's write. */
    size_t from = 0;
    while (from < n) {
        size_t to = from + 1;
        while (to < n && to - from < REP_STORE_MAX_GROUP &&
               !has_key(ops + from, to - from, ops[to].key))
            to++;
        apply_group(s, ops + from, to - from, b, &enc);
        from = to;
    }
    kv_buf_release(&enc);
    eng_batch_free(b);
    return 0;
}

int rep_store_update(rep_store *s, kv_slice key, kv_slice ctx, kv_slice value,
                     int flags, uint64_t actor, uint64_t now_us, kv_buf *out) {
    rep_store_op op = {.kind = REP_STORE_OP_UPDATE,
                       .key = key,
                       .ctx = ctx,
                       .value = value,
                       .flags = flags,
                       .actor = actor,
                       .now_us = now_us,
                       .out = out};
    rep_store_apply(s, &op, 1);
    return op.rc;
}

int rep_store_merge(rep_store *s, kv_slice key, kv_slice obj, int flags,
                    uint64_t self) {
    rep_store_op op = {.kind = REP_STORE_OP_MERGE,
                       .key = key,
                       .value = obj,
                       .flags = flags,
                       .actor = self};
    rep_store_apply(s, &op, 1);
    return op.rc;
}

int rep_obj_merge(kv_slice a, kv_slice b, bool lww, kv_buf *out) {
    dvv_set *sa = NULL, *sb = NULL, *m = NULL;
    int rc = dvv_set_decode(a, &sa);
    if (rc == 0) rc = dvv_set_decode(b, &sb);
    if (rc == 0 && lww) {
        rc = kv_buf_append(out, lww_beats(sb, sa) ? b.ptr : a.ptr,
                           lww_beats(sb, sa) ? b.len : a.len);
        goto done;
    }
    if (rc == 0) rc = dvv_set_merge(sa, sb, &m);
    if (rc == 0) rc = dvv_set_encode(m, out);
done:
    dvv_set_free(sa);
    dvv_set_free(sb);
    dvv_set_free(m);
    return rc;
}

/* ---- ranges of placement hashes (moves, drops) ---- */

static void hash_key(uint8_t out[9], uint64_t h) {
    out[0] = 'o';
    for (int i = 0; i < 8; i++) out[1 + i] = (uint8_t)(h >> (56 - 8 * i));
}

/* The placement hash of engine key k, or false if k is not an object's. */
static bool key_hash(kv_slice k, uint64_t *h) {
    if (k.len < 9 || k.ptr[0] != 'o') return false;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | k.ptr[1 + i];
    *h = v;
    return true;
}

int rep_store_scan(rep_store *s, uint64_t lo, uint64_t hi, kv_buf *cursor,
                   size_t max_items, size_t max_bytes, rep_scan_fn fn,
                   void *arg, bool *more) {
    *more = false;
    eng_iter *it;
    int rc = eng_iter_new(s->db, NULL, &it);
    if (rc) return rc;
    uint8_t start[9];
    hash_key(start, lo);
    if (cursor->len)
        eng_iter_seek(it, kv_buf_slice(cursor));
    else
        eng_iter_seek(it, kv_slice_make(start, sizeof start));
    size_t items = 0, bytes = 0;
    for (; eng_iter_valid(it); eng_iter_next(it)) {
        kv_slice k = eng_iter_key(it), v = eng_iter_value(it);
        uint64_t h;
        if (!key_hash(k, &h) || h > hi) break;
        if (cursor->len && kv_slice_eq(k, kv_buf_slice(cursor))) continue;
        if (items >= max_items || bytes >= max_bytes) {
            *more = true;
            break;
        }
        rc = fn(arg, kv_slice_make(k.ptr + 9, k.len - 9), v);
        if (rc == 0) rc = kv_buf_set(cursor, k.ptr, k.len);
        if (rc) break;
        items++;
        bytes += k.len + v.len;
    }
    if (rc == 0) rc = eng_iter_status(it);
    eng_iter_free(it);
    return rc;
}

int rep_store_drop(rep_store *s, uint64_t lo, uint64_t hi, uint64_t *dropped) {
    eng_iter *it;
    eng_batch *b;
    int rc = eng_iter_new(s->db, NULL, &it);
    if (rc) return rc;
    if ((rc = eng_batch_new(&b))) {
        eng_iter_free(it);
        return rc;
    }
    uint8_t start[9];
    hash_key(start, lo);
    for (eng_iter_seek(it, kv_slice_make(start, sizeof start));
         eng_iter_valid(it) && rc == 0; eng_iter_next(it)) {
        kv_slice k = eng_iter_key(it);
        uint64_t h;
        if (!key_hash(k, &h) || h > hi) break;
        /* Under the key's lock: a replica-put racing the drop either
         * lands before (and is dropped) or after (and stays). */
        pthread_mutex_t *l = lock_of(s, kv_slice_make(k.ptr + 9, k.len - 9));
        pthread_mutex_lock(l);
        eng_batch_clear(b);
        rc = eng_batch_delete(b, k);
        if (rc == 0) rc = eng_db_write(s->db, b, 0);
        pthread_mutex_unlock(l);
        if (rc == 0) (*dropped)++;
    }
    if (rc == 0) rc = eng_iter_status(it);
    eng_batch_free(b);
    eng_iter_free(it);
    return rc;
}

int rep_store_reap(rep_store *s, kv_slice key, kv_slice tomb, bool *reaped) {
    *reaped = false;
    okey k;
    int rc = okey_make(&k, key);
    if (rc) return rc;
    kv_buf cur = KV_BUF_INIT;
    pthread_mutex_t *mu = lock_of(s, key);
    pthread_mutex_lock(mu);
    rc = eng_db_get(s->db, NULL, kv_slice_make(k.p, k.len), &cur);
    if (rc == 0 && kv_slice_eq(kv_buf_slice(&cur), tomb)) {
        rc = eng_db_delete(s->db, kv_slice_make(k.p, k.len), 0);
        *reaped = rc == 0;
    } else if (rc == KV_ENOTFOUND) {
        rc = 0; /* reaped before, or never here */
    }
    pthread_mutex_unlock(mu);
    kv_buf_release(&cur);
    okey_release(&k);
    return rc;
}
