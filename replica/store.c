/*
 * A node's objects in its engine (see store.h).
 *
 * Invariants: a stored value is always a valid encoded dvv set (it is
 * decoded before anything is derived from it, and a bad one is reported
 * as corruption, never overwritten blindly); a read-modify-write of a key
 * holds that key's stripe lock from the read to the write, so two writes
 * of one key cannot both start from the same old object and lose one.
 * Format of the stored value: docs/object-format.md.
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

/* The stored set of key into *out (NULL if there is none). */
static int load(rep_store *s, const okey *k, kv_slice key, dvv_set **out) {
    *out = NULL;
    kv_buf v = KV_BUF_INIT;
    int rc = eng_db_get(s->db, NULL, kv_slice_make(k->p, k->len), &v);
    if (rc == KV_ENOTFOUND) {
        rc = 0;
    } else if (rc == 0) {
        rc = dvv_set_decode(kv_buf_slice(&v), out);
        if (rc && rc != -ENOMEM)
            kv_error(MOD, "object '%.*s': stored value is not an object: %s",
                     (int)KV_MIN(key.len, 200), (const char *)key.ptr,
                     kv_strerror(rc));
    }
    kv_buf_release(&v);
    return rc;
}

static int store(rep_store *s, const okey *k, const dvv_set *set, bool sync,
                 kv_buf *enc) {
    kv_buf_reset(enc);
    int rc = dvv_set_encode(set, enc);
    if (rc) return rc;
    return eng_db_put(s->db, kv_slice_make(k->p, k->len), kv_buf_slice(enc),
                      sync ? ENG_WF_SYNC_GROUP : ENG_WF_DEFAULT);
}

int rep_store_get(rep_store *s, kv_slice key, kv_buf *out) {
    okey k;
    int rc = okey_make(&k, key);
    if (rc) return rc;
    rc = eng_db_get(s->db, NULL, kv_slice_make(k.p, k.len), out);
    okey_release(&k);
    return rc;
}

int rep_store_update(rep_store *s, kv_slice key, kv_slice ctx, kv_slice value,
                     bool tombstone, bool sync, uint64_t actor, uint64_t now_us,
                     kv_buf *out) {
    dvv_ctx *c = NULL;
    dvv_set *old = NULL, *set = NULL;
    okey k;
    int rc = okey_make(&k, key);
    if (rc) return rc;
    if (ctx.len && (rc = dvv_ctx_decode(ctx, &c))) goto out;
    dvv_value v = {.flags = tombstone ? DVV_TOMBSTONE : 0,
                   .timestamp = now_us,
                   .bytes = tombstone ? kv_slice_make(NULL, 0) : value};
    pthread_mutex_t *mu = lock_of(s, key);
    pthread_mutex_lock(mu);
    rc = load(s, &k, key, &old);
    if (rc == 0) rc = dvv_set_update(old, c, actor, &v, &set);
    if (rc == 0) {
        dvv_set_prune(set, actor);
        rc = store(s, &k, set, sync, out);
    }
    pthread_mutex_unlock(mu);
out:
    dvv_ctx_free(c);
    dvv_set_free(old);
    dvv_set_free(set);
    okey_release(&k);
    return rc;
}

int rep_store_merge(rep_store *s, kv_slice key, kv_slice obj, bool sync,
                    uint64_t self) {
    dvv_set *in = NULL, *old = NULL, *set = NULL;
    kv_buf enc = KV_BUF_INIT;
    okey k;
    int rc = okey_make(&k, key);
    if (rc) return rc;
    if ((rc = dvv_set_decode(obj, &in))) goto out;
    pthread_mutex_t *mu = lock_of(s, key);
    pthread_mutex_lock(mu);
    rc = load(s, &k, key, &old);
    dvv_order o = rc == 0 ? dvv_set_compare(in, old) : DVV_EQUAL;
    if (rc == 0 && old && (o == DVV_EQUAL || o == DVV_PRECEDES)) {
        /* Nothing new: the stored object already holds all of it. */
    } else if (rc == 0) {
        rc = old && o == DVV_CONCURRENT ? dvv_set_merge(in, old, &set) : 0;
        if (rc == 0) {
            dvv_set_prune(set ? set : in, self);
            rc = store(s, &k, set ? set : in, sync, &enc);
        }
    }
    pthread_mutex_unlock(mu);
out:
    dvv_set_free(in);
    dvv_set_free(old);
    dvv_set_free(set);
    kv_buf_release(&enc);
    okey_release(&k);
    return rc;
}

int rep_obj_merge(kv_slice a, kv_slice b, kv_buf *out) {
    dvv_set *sa = NULL, *sb = NULL, *m = NULL;
    int rc = dvv_set_decode(a, &sa);
    if (rc == 0) rc = dvv_set_decode(b, &sb);
    if (rc == 0) rc = dvv_set_merge(sa, sb, &m);
    if (rc == 0) rc = dvv_set_encode(m, out);
    dvv_set_free(sa);
    dvv_set_free(sb);
    dvv_set_free(m);
    return rc;
}
