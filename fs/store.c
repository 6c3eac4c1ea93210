/*
 * The filesystem's view of the store: a pool of client connections, and
 * objects read and written whole with their causal context. Siblings are
 * resolved here the way the filesystem shows them: a directory's siblings
 * merge (add-wins set), a file's siblings are ranked, the newest write
 * first (the winner), the others shown as conflict files.
 */
#include "fs/fs_int.h"

#include "replica/client.h"
#include "replica/dvv.h"

#include <errno.h>
#include <string.h>

/* ---- connection pool ---- */

static bool retryable(int rc) {
    /* The connection died or the node went away: another connection, or
     * another node, may do. Quorum and deadline errors are answers. */
    return rc == KV_EPROTO || rc == KV_ECLOSED || rc == -ECONNRESET ||
           rc == -EPIPE || rc == -ECONNREFUSED || rc == -ENOTCONN ||
           rc == -ECONNABORTED;
}

static int pool_take(qfs_fs *fs, unsigned attempt, rep_client **out) {
    pthread_mutex_lock(&fs->pool_mu);
    if (attempt == 0 && fs->nidle > 0) {
        *out = fs->idle[--fs->nidle];
        pthread_mutex_unlock(&fs->pool_mu);
        return 0;
    }
    pthread_mutex_unlock(&fs->pool_mu);
    return fs->o.connect(fs->o.connect_arg, attempt, out);
}

static void pool_give(qfs_fs *fs, rep_client *c) {
    if (rep_client_broken(c)) {
        rep_client_close(c);
        return;
    }
    pthread_mutex_lock(&fs->pool_mu);
    if (fs->nidle < FS_POOL_MAX) {
        fs->idle[fs->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&fs->pool_mu);
    if (c) rep_client_close(c);
}

void fs__pool_close(qfs_fs *fs) {
    pthread_mutex_lock(&fs->pool_mu);
    while (fs->nidle > 0) rep_client_close(fs->idle[--fs->nidle]);
    pthread_mutex_unlock(&fs->pool_mu);
}

enum { OP_GET, OP_PUT, OP_DEL };

/* One store call, on a pooled connection; a dead connection is replaced
 * (and the call retried, up to three times) within the deadline. A put
 * retried after its connection died may have been applied once already:
 * its retry then adds a sibling equal to it, which readers fold away. */
static int call(qfs_fs *fs, int op, kv_slice key, kv_slice ctx, kv_slice value,
                bool sync, kv_buf *out) {
    rep_opts ro = {.n = fs->o.n,
                   .r = fs->o.r,
                   .w = fs->o.w,
                   .timeout_ms = fs->o.timeout_ms,
                   .sync = sync,
                   /* Metadata goes out when W replicas have it in their
                    * WALs (close's promise); fsync asks for synced WALs. */
                   .nosync = !sync && op != OP_GET};
    int rc = -EIO;
    uint64_t deadline = kv_now_ns() / 1000000u + fs->o.timeout_ms;
    for (unsigned attempt = 0; attempt < 4; attempt++) {
        rep_client *c;
        rc = pool_take(fs, attempt, &c);
        if (rc == 0) {
            if (op == OP_GET)
                rc = rep_client_get(c, key, &ro, out);
            else if (op == OP_PUT)
                rc = rep_client_put_ctx(c, key, ctx, value, &ro, out);
            else
                rc = rep_client_del(c, key, ctx, &ro);
            pool_give(fs, c);
        }
        if (!retryable(rc) || kv_now_ns() / 1000000u >= deadline) break;
    }
    return rc;
}

int fs__with_client(qfs_fs *fs, int (*fn)(void *arg, rep_client *c),
                    void *arg) {
    int rc = -EIO;
    for (unsigned attempt = 0; attempt < 2; attempt++) {
        rep_client *c;
        rc = pool_take(fs, attempt, &c);
        if (rc == 0) {
            rc = fn(arg, c);
            pool_give(fs, c);
        }
        if (!retryable(rc)) break;
    }
    return rc;
}

int fs__errno(qfs_fs *fs, int rc, const char *what, const fs_id *id) {
    (void)fs;
    switch (rc) {
    case 0:
        return 0;
    case KV_ENOTFOUND:
        return ENOENT;
    case -ENOMEM:
        return ENOMEM;
    case KV_ETOOLARGE:
        return EFBIG;
    case -EINVAL:
        return EINVAL;
    default:
        break;
    }
    char hex[2 * FS_ID_LEN + 1] = "-";
    if (id) fs__id_hex(id, hex);
    kv_error(FS_MOD, "%s %s: %s", what, hex, kv_strerror(rc));
    return EIO;
}

void fs__id_hex(const fs_id *id, char out[2 * FS_ID_LEN + 1]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < FS_ID_LEN; i++) {
        out[2 * i] = digits[id->b[i] >> 4];
        out[2 * i + 1] = digits[id->b[i] & 15];
    }
    out[2 * FS_ID_LEN] = 0;
}

/* ---- objects ---- */

void fs__obj_init(fs_obj *o) {
    memset(o, 0, sizeof *o);
    fs_inode_init(&o->ino, FS_FILE);
    kv_buf_init(&o->ctx);
}

void fs__obj_release(fs_obj *o) {
    fs_inode_release(&o->ino);
    kv_buf_release(&o->ctx);
    for (size_t i = 0; i < o->nsib; i++) fs_inode_release(&o->sibs[i]);
    kv_free(o->sibs);
    kv_free(o->sib_vers);
    o->sibs = NULL;
    o->sib_vers = NULL;
    o->nsib = 0;
}

/* A live sibling, decoded. */
typedef struct version {
    dvv_sibling s;
    fs_inode ino;
    uint64_t ver;
} version;

/* Rank of versions: the latest write time (mtime) first, then the higher
 * actor, then the higher counter of the write (dots are unique: the order
 * is total and the same on every mount). mtime, not the store's
 * timestamp, so a version written back unchanged keeps its rank. */
static bool ranks_before(const version *a, const version *b) {
    if (a->ino.mtime_ns != b->ino.mtime_ns)
        return a->ino.mtime_ns > b->ino.mtime_ns;
    if (a->s.actor != b->s.actor) return a->s.actor > b->s.actor;
    return a->s.counter > b->s.counter;
}

static uint64_t version_hash(kv_slice bytes) {
    uint64_t h = kv_hash64(bytes.ptr, bytes.len, 0x7166737665727331ull);
    return h ? h : 1;
}

int fs__obj_get(qfs_fs *fs, const fs_id *id, fs_obj *o) {
    kv_buf key = KV_BUF_INIT;
    int rc = fs_key_inode(fs->o.volume, id, &key);
    if (rc == 0) {
        rc = fs__key_get(fs, kv_buf_slice(&key), o);
    } else {
        fs__obj_release(o);
        fs__obj_init(o);
    }
    kv_buf_release(&key);
    return rc;
}

static int obj_decode(kv_slice raw, fs_obj *o);

int fs__key_get(qfs_fs *fs, kv_slice key, fs_obj *o) {
    kv_buf raw = KV_BUF_INIT;
    fs__obj_release(o);
    fs__obj_init(o);
    int rc = call(fs, OP_GET, key, kv_slice_make(NULL, 0),
                  kv_slice_make(NULL, 0), false, &raw);
    if (rc == 0) rc = obj_decode(kv_buf_slice(&raw), o);
    kv_buf_release(&raw);
    return rc;
}

void fs__keys_get(qfs_fs *fs, const kv_slice *keys, size_t n, fs_obj *out,
                  int *rcs) {
    rep_opts ro = {.n = fs->o.n,
                   .r = fs->o.r,
                   .w = fs->o.w,
                   .timeout_ms = fs->o.timeout_ms};
    rep_client *cs[FS_KEYS_MAX];
    kv_buf raw = KV_BUF_INIT;
    for (size_t at = 0; at < n; at += FS_KEYS_MAX) {
        size_t m = KV_MIN(n - at, (size_t)FS_KEYS_MAX);
        for (size_t i = 0; i < m; i++) {
            fs__obj_release(&out[at + i]);
            fs__obj_init(&out[at + i]);
            rcs[at + i] = pool_take(fs, 0, &cs[i]);
            if (rcs[at + i] == 0)
                rcs[at + i] = rep_client_get_start(cs[i], keys[at + i], &ro);
            else
                cs[i] = NULL;
        }
        for (size_t i = 0; i < m; i++) {
            int *rc = &rcs[at + i];
            if (*rc == 0) *rc = rep_client_get_finish(cs[i], &raw);
            if (cs[i]) pool_give(fs, cs[i]);
            if (*rc == 0) {
                *rc = obj_decode(kv_buf_slice(&raw), &out[at + i]);
            } else if (retryable(*rc)) {
                /* A dead connection: the one-call path replaces it. */
                *rc = fs__key_get(fs, keys[at + i], &out[at + i]);
            }
            kv_buf_reset(&raw);
        }
    }
    kv_buf_release(&raw);
}

/* A stored object's bytes as the filesystem reads it (see fs__obj_get). */
static int obj_decode(kv_slice raw, fs_obj *o) {
    dvv_set *set = NULL;
    dvv_ctx *ctx = NULL;
    version *live = NULL;
    size_t nlive = 0;
    int rc = dvv_set_decode(raw, &set);
    if (rc == 0) rc = dvv_set_join(set, &ctx);
    if (rc == 0) rc = dvv_ctx_encode(ctx, &o->ctx);
    if (rc) goto out;
    size_t n = dvv_set_siblings(set);
    live = kv_calloc(n ? n : 1, sizeof *live);
    if (!live) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        version v = {.s = dvv_set_sibling(set, i)};
        if (v.s.value.flags & DVV_TOMBSTONE) continue;
        /* Byte-equal siblings (a retried put, one content written back
         * twice) are one version. */
        v.ver = version_hash(v.s.value.bytes);
        bool dup = false;
        for (size_t j = 0; j < nlive && !dup; j++)
            dup = live[j].ver == v.ver &&
                  kv_slice_eq(live[j].s.value.bytes, v.s.value.bytes);
        if (dup) continue;
        if ((rc = fs_inode_decode(v.s.value.bytes, &v.ino))) {
            fs_inode_release(&v.ino);
            break;
        }
        size_t j = nlive++;
        while (j > 0 && ranks_before(&v, &live[j - 1])) {
            live[j] = live[j - 1];
            j--;
        }
        live[j] = v;
    }
    if (rc) goto out;
    if (nlive == 0) {
        rc = KV_ENOTFOUND; /* deleted: every sibling a tombstone */
        goto out;
    }
    /* The winner moves into o; directories merge every other sibling,
     * files keep them as versions. */
    fs_inode_release(&o->ino);
    o->ino = live[0].ino;
    o->ver = live[0].ver;
    fs_inode_init(&live[0].ino, FS_FILE);
    if (nlive > 1 && o->ino.type == FS_DIR) {
        for (size_t i = 1; rc == 0 && i < nlive; i++)
            if (live[i].ino.type == FS_DIR)
                rc = fs_dir_merge(&o->ino, &live[i].ino);
    } else if (nlive > 1) {
        o->sibs = kv_calloc(nlive - 1, sizeof *o->sibs);
        o->sib_vers = kv_calloc(nlive - 1, sizeof *o->sib_vers);
        if (!o->sibs || !o->sib_vers) {
            rc = -ENOMEM;
            goto out;
        }
        for (size_t i = 1; i < nlive; i++) {
            o->sibs[i - 1] = live[i].ino;
            o->sib_vers[i - 1] = live[i].ver;
            fs_inode_init(&live[i].ino, FS_FILE);
        }
        o->nsib = nlive - 1;
    }
out:
    for (size_t i = 0; live && i < nlive; i++) fs_inode_release(&live[i].ino);
    kv_free(live);
    dvv_ctx_free(ctx);
    dvv_set_free(set);
    return rc;
}

int fs__obj_put(qfs_fs *fs, const fs_id *id, const fs_inode *ino, kv_slice ctx,
                bool sync, kv_buf *newctx) {
    return fs__obj_put_ver(fs, id, ino, ctx, sync, newctx, NULL);
}

int fs__obj_put_ver(qfs_fs *fs, const fs_id *id, const fs_inode *ino,
                    kv_slice ctx, bool sync, kv_buf *newctx, uint64_t *ver) {
    kv_buf key = KV_BUF_INIT, val = KV_BUF_INIT;
    int rc = fs_key_inode(fs->o.volume, id, &key);
    if (rc == 0) rc = fs_inode_encode(ino, &val);
    if (rc == 0 && ver) *ver = version_hash(kv_buf_slice(&val));
    if (rc == 0)
        rc = call(fs, OP_PUT, kv_buf_slice(&key), ctx, kv_buf_slice(&val), sync,
                  newctx);
    kv_buf_release(&val);
    kv_buf_release(&key);
    return rc;
}

int fs__key_put(qfs_fs *fs, kv_slice key, const fs_inode *ino, kv_slice ctx,
                bool sync, kv_buf *newctx) {
    kv_buf val = KV_BUF_INIT;
    int rc = fs_inode_encode(ino, &val);
    if (rc == 0)
        rc = call(fs, OP_PUT, key, ctx, kv_buf_slice(&val), sync, newctx);
    kv_buf_release(&val);
    return rc;
}

int fs__chunk_get(qfs_fs *fs, const fs_chunk *c, kv_buf *out) {
    kv_buf key = KV_BUF_INIT, raw = KV_BUF_INIT;
    dvv_set *set = NULL;
    int rc = fs_key_chunk(fs->o.volume, c->hash, &key);
    if (rc == 0)
        rc = call(fs, OP_GET, kv_buf_slice(&key), kv_slice_make(NULL, 0),
                  kv_slice_make(NULL, 0), false, &raw);
    if (rc == 0) rc = dvv_set_decode(kv_buf_slice(&raw), &set);
    if (rc == 0) {
        /* Any live sibling with the right hash is the chunk. */
        rc = KV_ENOTFOUND;
        for (size_t i = 0; i < dvv_set_siblings(set); i++) {
            dvv_sibling s = dvv_set_sibling(set, i);
            uint8_t h[FS_HASH_LEN];
            if (s.value.flags & DVV_TOMBSTONE) continue;
            fs_chunk_hash(s.value.bytes, h);
            if (s.value.bytes.len != c->len || memcmp(h, c->hash, sizeof h)) {
                rc = KV_ECORRUPT;
                continue;
            }
            rc = kv_buf_set(out, s.value.bytes.ptr, s.value.bytes.len);
            break;
        }
    }
    dvv_set_free(set);
    kv_buf_release(&raw);
    kv_buf_release(&key);
    return rc;
}

int64_t fs__grace_half_ns(const qfs_fs *fs) {
    return (int64_t)(fs->o.sweep_grace_s * 1e9 / 2);
}

int64_t fs__pending_age_ns(const qfs_fs *fs) {
    return KV_MIN((int64_t)10 * 1000000000, fs__grace_half_ns(fs) / 4);
}

int64_t fs__us_ns(uint64_t us) {
    return us > (uint64_t)INT64_MAX / 1000 ? INT64_MAX : (int64_t)us * 1000;
}

/* A key's stored object, read for a change: its siblings (set is NULL
 * when nothing is stored) and the context that covers them. */
typedef struct chunk_obj {
    kv_buf key, raw, ctx;
    dvv_set *set;
} chunk_obj;

static void chunk_obj_release(chunk_obj *o) {
    dvv_set_free(o->set);
    kv_buf_release(&o->ctx);
    kv_buf_release(&o->raw);
    kv_buf_release(&o->key);
}

/* Read key (or, with key empty, chunk hash's key) into o. */
static int chunk_obj_read(qfs_fs *fs, kv_slice key,
                          const uint8_t hash[FS_HASH_LEN], chunk_obj *o) {
    memset(o, 0, sizeof *o);
    kv_buf_init(&o->key);
    kv_buf_init(&o->raw);
    kv_buf_init(&o->ctx);
    dvv_ctx *cx = NULL;
    int rc = key.len ? kv_buf_set(&o->key, key.ptr, key.len)
                     : fs_key_chunk(fs->o.volume, hash, &o->key);
    if (rc == 0)
        rc = call(fs, OP_GET, kv_buf_slice(&o->key), kv_slice_make(NULL, 0),
                  kv_slice_make(NULL, 0), false, &o->raw);
    if (rc == KV_ENOTFOUND) return 0;
    if (rc == 0) rc = dvv_set_decode(kv_buf_slice(&o->raw), &o->set);
    if (rc == 0 && (rc = dvv_set_join(o->set, &cx)) == 0)
        rc = dvv_ctx_encode(cx, &o->ctx);
    dvv_ctx_free(cx);
    return rc;
}

/* The newest live sibling of o that is chunk c (its hash and length
 * checked) into *best: its write time, or -1 when there is none. */
static int64_t good_copy(const chunk_obj *o, const fs_chunk *c,
                         dvv_sibling *best) {
    int64_t good = -1;
    for (size_t i = 0; o->set && i < dvv_set_siblings(o->set); i++) {
        dvv_sibling s = dvv_set_sibling(o->set, i);
        uint8_t h[FS_HASH_LEN];
        if (s.value.flags & DVV_TOMBSTONE) continue;
        fs_chunk_hash(s.value.bytes, h);
        if (s.value.bytes.len != c->len || memcmp(h, c->hash, sizeof h))
            continue;
        if (fs__us_ns(s.value.timestamp) > good) {
            good = fs__us_ns(s.value.timestamp);
            *best = s;
        }
    }
    return good;
}

/* Store bytes under c's key: skipped when a good copy was written within
 * half the grace, else written with the context of what
 * is there (superseding it: an old copy, a damaged one, a sweep's
 * tombstone). */
int fs__chunk_put(qfs_fs *fs, kv_slice bytes, fs_chunk *c, int64_t *stored_ns) {
    fs_chunk_hash(bytes, c->hash);
    c->len = (uint32_t)bytes.len;
    chunk_obj o;
    dvv_sibling best;
    int rc = chunk_obj_read(fs, kv_slice_make(NULL, 0), c->hash, &o);
    int64_t good = rc == 0 ? good_copy(&o, c, &best) : -1;
    if (rc == 0 && good >= kv_wall_ns() - fs__grace_half_ns(fs)) {
        *stored_ns = good;
    } else if (rc == 0) {
        *stored_ns = kv_wall_ns();
        rc = call(fs, OP_PUT, kv_buf_slice(&o.key), kv_buf_slice(&o.ctx), bytes,
                  true, NULL); /* see fs__chunk_put's comment */
    }
    chunk_obj_release(&o);
    return rc;
}

int fs__chunk_keep(qfs_fs *fs, const fs_chunk *c) {
    chunk_obj o;
    dvv_sibling best = {0};
    int rc = chunk_obj_read(fs, kv_slice_make(NULL, 0), c->hash, &o);
    int64_t good = rc == 0 ? good_copy(&o, c, &best) : -1;
    if (rc == 0 && good < 0) rc = KV_ENOTFOUND;
    if (rc == 0 && good < kv_wall_ns() - fs__grace_half_ns(fs))
        rc = call(fs, OP_PUT, kv_buf_slice(&o.key), kv_buf_slice(&o.ctx),
                  best.value.bytes, true, NULL);
    chunk_obj_release(&o);
    return rc;
}

int fs__reclaim(qfs_fs *fs, kv_slice key, const uint8_t hash[FS_HASH_LEN],
                int64_t cutoff_ns, bool *gone) {
    chunk_obj o;
    *gone = false;
    int rc = chunk_obj_read(fs, key, hash, &o);
    bool live = false, young = false;
    for (size_t i = 0; rc == 0 && o.set && i < dvv_set_siblings(o.set); i++) {
        dvv_sibling s = dvv_set_sibling(o.set, i);
        if (s.value.flags & DVV_TOMBSTONE) continue;
        live = true;
        young |= fs__us_ns(s.value.timestamp) >= cutoff_ns;
    }
    /* Written again since it was listed (a writer storing the same
     * bytes): it stays. */
    if (rc == 0 && live && !young) {
        rc = call(fs, OP_DEL, kv_buf_slice(&o.key), kv_buf_slice(&o.ctx),
                  kv_slice_make(NULL, 0), false, NULL);
        *gone = rc == 0;
    }
    chunk_obj_release(&o);
    return rc == KV_ENOTFOUND ? 0 : rc;
}
