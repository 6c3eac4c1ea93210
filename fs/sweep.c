/*
 * The sweep, and the write-backs that make it safe. A sweep reclaims
 * what nothing refers to: chunks no inode version refers to, inodes no
 * directory entry names (removing a name never deletes an object: two
 * mounts renaming one file at once leave it two names), and the shards of
 * directories that are gone; each only if its last write is older than
 * the grace G (sweep_grace_s).
 *
 * A chunk is stored before the inode that refers to it, so for a while a
 * chunk is referred to by nothing but a writer's memory. The sweep may
 * reclaim a chunk only when no stored inode version refers to it and its
 * last write is older than the grace G (sweep_grace_s):
 *
 *   - a writer writes its file's inode within fs__pending_age_ns (at most
 *     10 s, G/8) of storing a chunk: after FS_PENDING_MAX stored chunks,
 *     or from this thread for a file that went quiet;
 *   - a chunk found already stored (content-addressed) is written again
 *     when its last write is older than G/2, so a writer that is about to
 *     refer to it always holds a chunk written within G/2;
 *   - an inode about to refer to chunks stored longer than G/2 ago (the
 *     mount stalled, or write-backs failed) stores them again first, and
 *     fails with EIO if one is gone.
 *
 * So a chunk older than G at the start of a sweep that some writer will
 * still refer to is referred to by an inode written before the sweep
 * started, which the sweep reads. The sweep: note t0; list every inode
 * and shard key on every member and read each (a quorum read, every
 * version), noting chunks referred to and ids named; list and read again
 * what was written since t0 (a rename that moved an entry into an object
 * read before it); list every chunk key; reclaim (delete, with the
 * context of a fresh read) what nothing refers to and was last written
 * before t0 - G, checked again on that fresh read. An object unnamed for
 * longer than G cannot be named again (a name is only ever added for a
 * new object or moved from an old name). A member that cannot
 * be listed, or an inode that cannot be read, stops the sweep before it
 * deletes anything. Deleting is safe against a writer that stores the
 * same bytes at the same time: its put supersedes or sits beside the
 * tombstone, and a live sibling is the chunk.
 *
 * A version written back by a mount that another mount overtook (fs/file.c,
 * keep_if_overtaken) stores again first the chunks it took from the
 * version it read. What it does not cover (docs/ARCHITECTURE.md): a file
 * another mount removed, held open here for longer than about 2G after
 * its last write.
 */
#include "fs/fs_int.h"

#include "replica/client.h"
#include "replica/dvv.h"
#include "ring/ring.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static bool stopping(qfs_fs *fs) {
    return __atomic_load_n(&fs->bg_stop, __ATOMIC_RELAXED);
}

void fs__pending_note(fs_node *nd) {
    bool p = nd->file && nd->file->npending > 0;
    __atomic_store_n(&nd->has_pending, p, __ATOMIC_RELAXED);
}

/* ---- sets of 16-byte keys (ids, chunk hashes) ---- */

typedef struct set16 {
    uint8_t (*k)[16];
    uint8_t *used;
    size_t cap, n;
} set16;

static size_t slot_of(const uint8_t key[16], size_t cap) {
    return (size_t)(kv_get_u64(key) ^ kv_get_u64(key + 8)) & (cap - 1);
}

static bool set_has(const set16 *s, const uint8_t key[16]) {
    if (s->cap == 0) return false;
    for (size_t i = slot_of(key, s->cap);; i = (i + 1) & (s->cap - 1)) {
        if (!s->used[i]) return false;
        if (memcmp(s->k[i], key, 16) == 0) return true;
    }
}

static int set_add(set16 *s, const uint8_t key[16]) {
    if (set_has(s, key)) return 0;
    if (2 * (s->n + 1) > s->cap) {
        size_t ncap = s->cap ? 2 * s->cap : 1024;
        set16 t = {kv_malloc(ncap * 16), kv_calloc(ncap, 1), ncap, 0};
        if (!t.k || !t.used) {
            kv_free(t.k);
            kv_free(t.used);
            return -ENOMEM;
        }
        for (size_t i = 0; i < s->cap; i++)
            if (s->used[i]) set_add(&t, s->k[i]);
        kv_free(s->k);
        kv_free(s->used);
        *s = t;
    }
    size_t i = slot_of(key, s->cap);
    while (s->used[i]) i = (i + 1) & (s->cap - 1);
    memcpy(s->k[i], key, 16);
    s->used[i] = 1;
    s->n++;
    return 0;
}

static void set_free(set16 *s) {
    kv_free(s->k);
    kv_free(s->used);
    memset(s, 0, sizeof *s);
}

static void write_back_due(qfs_fs *fs);

#define RELIST_SLACK_NS (10 * (int64_t)1000000000)

/* ---- lists of keys ---- */

typedef struct keyv {
    char **k;
    bool *old; /* last written before the cutoff */
    size_t n, cap;
} keyv;

static int keyv_add(keyv *v, kv_slice key, bool old) {
    if (v->n == v->cap) {
        size_t ncap = v->cap ? 2 * v->cap : 64;
        char **k = kv_realloc(v->k, ncap * sizeof *k);
        if (!k) return -ENOMEM;
        v->k = k;
        bool *o = kv_realloc(v->old, ncap * sizeof *o);
        if (!o) return -ENOMEM;
        v->old = o;
        v->cap = ncap;
    }
    char *c = kv_malloc(key.len + 1);
    if (!c) return -ENOMEM;
    memcpy(c, key.ptr, key.len);
    c[key.len] = 0;
    v->old[v->n] = old;
    v->k[v->n++] = c;
    return 0;
}

static void keyv_free(keyv *v) {
    for (size_t i = 0; i < v->n; i++) kv_free(v->k[i]);
    kv_free(v->k);
    kv_free(v->old);
    memset(v, 0, sizeof *v);
}

/* ---- one sweep ---- */

typedef struct sweep {
    qfs_fs *fs;
    kv_buf prefix_i, prefix_c, prefix_s;
    set16 ids;     /* live inode objects listed */
    set16 old;     /* ... of them, last written before the cutoff */
    set16 named;   /* ids a directory entry names */
    set16 refs;    /* chunks some inode version refers to */
    set16 seen;    /* live chunks listed */
    set16 doomed;  /* ... of them, unreferenced and old */
    set16 keyset;  /* shard and re-read keys listed (their hashes) */
    set16 removed; /* directories rmdir removed: their entries name nothing */
    keyv shards;   /* shard keys */
    keyv again;    /* keys written since the sweep began, to read again */
    bool relisting;
    int64_t t0_ns, cutoff_ns;
    int64_t last_tick_ns; /* write-backs go on while a sweep runs */
    char why[256];
} sweep;

static int hex16(const uint8_t *p, size_t len, uint8_t out[16]) {
    if (len < 32) return -1;
    for (size_t i = 0; i < 32; i++) {
        uint8_t c = p[i], v;
        if (c >= '0' && c <= '9')
            v = (uint8_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = (uint8_t)(c - 'a' + 10);
        else
            return -1;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= v;
    }
    return 0;
}

/* The 16-byte id or hash after prefix in key (exactly 32 hex digits, or
 * followed by '/' when tail is true). */
static int id_of(kv_slice key, const kv_buf *prefix, bool tail,
                 uint8_t out[16]) {
    if (key.len < prefix->len + 32) return -1;
    size_t rest = key.len - prefix->len - 32;
    if (tail ? rest == 0 || key.ptr[prefix->len + 32] != '/' : rest != 0)
        return -1;
    return hex16(key.ptr + prefix->len, 32, out);
}

/* Keys listed a second time, after the marks: the ones written since the
 * sweep began (a rename that moved an entry into an object already
 * read), each once. */
static int relist(sweep *w, const rep_scan_item *it) {
    /* Slack for the clocks of the nodes that stamped the writes. */
    if (fs__us_ns(it->newest_us) < w->t0_ns - RELIST_SLACK_NS) return 0;
    uint8_t h[16];
    fs_chunk_hash(it->key, h);
    if (set_has(&w->keyset, h)) return 0;
    int rc = set_add(&w->keyset, h);
    return rc ? rc : keyv_add(&w->again, it->key, false);
}

static int on_inode(void *arg, const rep_scan_item *it) {
    sweep *w = arg;
    uint8_t id[16];
    if (it->tombstone || id_of(it->key, &w->prefix_i, false, id)) return 0;
    if (w->relisting) return relist(w, it);
    int rc = set_add(&w->ids, id);
    if (rc == 0 && fs__us_ns(it->newest_us) < w->cutoff_ns)
        rc = set_add(&w->old, id);
    return rc;
}

static int on_shard(void *arg, const rep_scan_item *it) {
    sweep *w = arg;
    uint8_t id[16], h[16];
    if (it->tombstone || id_of(it->key, &w->prefix_s, true, id)) return 0;
    if (w->relisting) return relist(w, it);
    fs_chunk_hash(it->key, h);
    if (set_has(&w->keyset, h)) return 0; /* another copy */
    int rc = set_add(&w->keyset, h);
    if (rc == 0)
        rc = keyv_add(&w->shards, it->key,
                      fs__us_ns(it->newest_us) < w->cutoff_ns);
    return rc;
}

static int on_chunk(void *arg, const rep_scan_item *it) {
    sweep *w = arg;
    uint8_t h[16];
    if (it->tombstone || id_of(it->key, &w->prefix_c, false, h)) return 0;
    int rc = set_add(&w->seen, h); /* each copy is listed: count one */
    if (rc || fs__us_ns(it->newest_us) >= w->cutoff_ns || set_has(&w->refs, h))
        return rc;
    return set_add(&w->doomed, h);
}

/* A long sweep must not hold up the write-backs that keep writers'
 * stored chunks referred to (rule 1): do them between its steps. */
static void tick(sweep *w) {
    int64_t now = kv_wall_ns();
    if (now - w->last_tick_ns < fs__pending_age_ns(w->fs) / 2) return;
    w->last_tick_ns = now;
    write_back_due(w->fs);
}

/* Every key under prefix on the node c is connected to. */
static int scan_node(sweep *w, rep_client *c, const kv_buf *prefix,
                     rep_scan_cb cb) {
    kv_buf cursor = KV_BUF_INIT;
    bool more = true;
    int rc = 0;
    while (rc == 0 && more) {
        if (stopping(w->fs)) {
            rc = KV_ECLOSED;
            break;
        }
        tick(w);
        rc = rep_client_scan(c, kv_buf_slice(prefix), &cursor, 0, cb, w, &more);
    }
    kv_buf_release(&cursor);
    return rc;
}

/* Scan prefix on every member: a member with an address over its own
 * connection, one without (the embedded node) over c. */
static int scan_members(sweep *w, rep_client *c, const kv_buf *prefix,
                        rep_scan_cb cb) {
    kv_buf raw = KV_BUF_INIT;
    ring_cluster *st = NULL;
    int rc = rep_client_state(c, &raw);
    if (rc == 0) rc = ring_cluster_decode(kv_buf_slice(&raw), &st);
    bool local_done = false;
    for (uint32_t i = 0; rc == 0 && st && i < ring_cluster_members(st); i++) {
        ring_member_info m = ring_cluster_member(st, i);
        if (m.status == RING_REMOVED) continue;
        if (m.addr.len == 0) {
            if (!local_done) rc = scan_node(w, c, prefix, cb);
            local_done = true;
            continue;
        }
        char addr[128];
        snprintf(addr, sizeof addr, "%.*s", (int)KV_MIN(m.addr.len, 127),
                 (const char *)m.addr.ptr);
        rep_client *mc;
        rc = rep_client_connect(addr, w->fs->o.timeout_ms, &mc);
        if (rc == 0) {
            rc = scan_node(w, mc, prefix, cb);
            rep_client_close(mc);
        }
        if (rc)
            snprintf(w->why, sizeof w->why, "cannot list member %s: %s", addr,
                     kv_strerror(rc));
    }
    if (rc && !w->why[0])
        snprintf(w->why, sizeof w->why, "cannot list the members: %s",
                 kv_strerror(rc));
    ring_cluster_unref(st);
    kv_buf_release(&raw);
    return rc;
}

/* Note what an object read refers to: a file's chunks (every version), a
 * directory's or shard's names (none for a removed directory; dir: the
 * directory of a shard, else NULL). */
static int note(sweep *w, const fs_obj *o, const uint8_t *dir) {
    int rc = 0;
    bool gone = o->ino.removed || (dir && set_has(&w->removed, dir));
    for (size_t v = 0; rc == 0 && v <= o->nsib; v++) {
        const fs_inode *ino = v == 0 ? &o->ino : &o->sibs[v - 1];
        for (size_t k = 0; rc == 0 && ino->chunked && k < ino->nchunks; k++)
            rc = set_add(&w->refs, ino->chunks[k].hash);
        for (size_t k = 0; rc == 0 && !gone && k < ino->nentries; k++)
            rc = set_add(&w->named, ino->entries[k].id.b);
    }
    return rc;
}

/* Note what key's read gave (o, rc); a key gone since it was listed is
 * nothing. */
static int note_read(sweep *w, kv_slice key, const fs_obj *o, int rc) {
    uint8_t dir[16];
    bool shard = id_of(key, &w->prefix_s, true, dir) == 0;
    if (rc == 0 && !shard && o->ino.type == FS_DIR && o->ino.removed &&
        id_of(key, &w->prefix_i, false, dir) == 0)
        rc = set_add(&w->removed, dir);
    if (rc == 0) rc = note(w, o, shard ? dir : NULL);
    if (rc == KV_ENOTFOUND) rc = 0;
    if (rc)
        snprintf(w->why, sizeof w->why, "cannot read %.*s: %s",
                 (int)KV_MIN(key.len, 120), (const char *)key.ptr,
                 kv_strerror(rc));
    return rc;
}

/* Read keys[0..n) by quorum, FS_KEYS_MAX at once, and note them. Inodes
 * before shards: a shard's notes depend on whether its directory was
 * removed. */
static int read_notes(sweep *w, char *const *keys, size_t n) {
    kv_slice ks[FS_KEYS_MAX];
    fs_obj os[FS_KEYS_MAX];
    int rcs[FS_KEYS_MAX];
    int rc = 0;
    for (size_t i = 0; i < FS_KEYS_MAX; i++) fs__obj_init(&os[i]);
    for (size_t at = 0; rc == 0 && at < n; at += FS_KEYS_MAX) {
        if (stopping(w->fs)) {
            rc = KV_ECLOSED;
            break;
        }
        tick(w);
        size_t m = KV_MIN(n - at, (size_t)FS_KEYS_MAX);
        for (size_t i = 0; i < m; i++) ks[i] = kv_slice_str(keys[at + i]);
        fs__keys_get(w->fs, ks, m, os, rcs);
        for (size_t i = 0; rc == 0 && i < m; i++)
            rc = note_read(w, ks[i], &os[i], rcs[i]);
    }
    for (size_t i = 0; i < FS_KEYS_MAX; i++) fs__obj_release(&os[i]);
    return rc;
}

/* Every listed inode and shard, read by quorum. */
static int mark(sweep *w) {
    keyv inodes = {0};
    kv_buf key = KV_BUF_INIT;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < w->ids.cap; i++) {
        if (!w->ids.used[i]) continue;
        fs_id id;
        memcpy(id.b, w->ids.k[i], FS_ID_LEN);
        rc = fs_key_inode(w->fs->o.volume, &id, &key);
        if (rc == 0) rc = keyv_add(&inodes, kv_buf_slice(&key), false);
    }
    if (rc == 0) rc = read_notes(w, inodes.k, inodes.n);
    if (rc == 0) rc = read_notes(w, w->shards.k, w->shards.n);
    keyv_free(&inodes);
    kv_buf_release(&key);
    return rc;
}

static int prefix_of(const char *volume, char kind, kv_buf *out) {
    char p[80];
    int n = snprintf(p, sizeof p, "%s/%c/", volume, kind);
    return kv_buf_set(out, p, (size_t)n);
}

static int run(sweep *w, rep_client *c) {
    w->relisting = false; /* a retry starts over */
    int rc = prefix_of(w->fs->o.volume, 'i', &w->prefix_i);
    if (rc == 0) rc = prefix_of(w->fs->o.volume, 'c', &w->prefix_c);
    if (rc == 0) rc = prefix_of(w->fs->o.volume, 's', &w->prefix_s);
    if (rc == 0) rc = scan_members(w, c, &w->prefix_i, on_inode);
    if (rc == 0) rc = scan_members(w, c, &w->prefix_s, on_shard);
    if (rc == 0) rc = mark(w);
    /* Objects written since the start, read again: an entry a rename
     * moved into an object read before it is named there. */
    w->relisting = true;
    if (w->keyset.cap) memset(w->keyset.used, 0, w->keyset.cap);
    w->keyset.n = 0;
    if (rc == 0) rc = scan_members(w, c, &w->prefix_i, on_inode);
    if (rc == 0) rc = scan_members(w, c, &w->prefix_s, on_shard);
    if (rc == 0) rc = read_notes(w, w->again.k, w->again.n);
    if (rc == 0) rc = scan_members(w, c, &w->prefix_c, on_chunk);
    return rc;
}

static int with_client(void *arg, rep_client *c) {
    return run(arg, c);
}

/* Delete what nothing refers to: chunks, then inodes nothing names (not
 * the root), then the shards of directories that are gone. Counts. */
static int reclaim(sweep *w, uint64_t *chunks, uint64_t *inodes) {
    qfs_fs *fs = w->fs;
    set16 gone = {0}; /* directories reclaimed now */
    kv_buf key = KV_BUF_INIT;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < w->doomed.cap; i++) {
        if (!w->doomed.used[i]) continue;
        if (stopping(fs)) {
            rc = KV_ECLOSED;
            break;
        }
        bool g = false;
        int r = fs__reclaim(fs, kv_slice_make(NULL, 0), w->doomed.k[i],
                            w->cutoff_ns, &g);
        if (r) fs__errno(fs, r, "sweep: reclaim a chunk", NULL);
        *chunks += g;
    }
    /* An inode goes only when two sweeps in a row found it unnamed: a
     * name moved twice while one sweep read the directories (once past
     * its first reading of them, once past its second) can hide it from
     * one sweep, not from two. */
    set16 *prev = fs->sweep_unnamed, *now = kv_calloc(1, sizeof *now);
    if (!now) rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < w->old.cap; i++) {
        if (!w->old.used[i] || set_has(&w->named, w->old.k[i])) continue;
        if ((rc = set_add(now, w->old.k[i]))) break;
        if (!prev || !set_has(prev, w->old.k[i])) continue;
        fs_id id;
        memcpy(id.b, w->old.k[i], FS_ID_LEN);
        if (fs_id_is_root(&id)) continue;
        if (stopping(fs)) {
            rc = KV_ECLOSED;
            break;
        }
        bool g = false;
        int r = fs_key_inode(fs->o.volume, &id, &key);
        if (r == 0)
            r = fs__reclaim(fs, kv_buf_slice(&key), NULL, w->cutoff_ns, &g);
        if (r) fs__errno(fs, r, "sweep: reclaim an inode", &id);
        if (g) rc = set_add(&gone, id.b);
        *inodes += g;
    }
    if (rc == 0) {
        if (prev) set_free(prev);
        kv_free(prev);
        fs->sweep_unnamed = now;
        now = NULL;
    }
    if (now) set_free(now);
    kv_free(now);
    for (size_t i = 0; rc == 0 && i < w->shards.n; i++) {
        uint8_t id[16];
        kv_slice k = kv_slice_str(w->shards.k[i]);
        if (!w->shards.old[i] || id_of(k, &w->prefix_s, true, id) ||
            (set_has(&w->ids, id) && !set_has(&gone, id)))
            continue;
        if (stopping(fs)) {
            rc = KV_ECLOSED;
            break;
        }
        bool g = false;
        int r = fs__reclaim(fs, k, NULL, w->cutoff_ns, &g);
        if (r) fs__errno(fs, r, "sweep: reclaim a shard", NULL);
    }
    set_free(&gone);
    kv_buf_release(&key);
    return rc;
}

/* One sweep (the background thread's). */
static int sweep_once(qfs_fs *fs) {
    sweep w = {.fs = fs};
    kv_buf_init(&w.prefix_i);
    kv_buf_init(&w.prefix_c);
    kv_buf_init(&w.prefix_s);
    w.t0_ns = kv_wall_ns();
    w.cutoff_ns = w.t0_ns - (int64_t)(fs->o.sweep_grace_s * 1e9);
    int rc = fs__with_client(fs, with_client, &w);
    uint64_t chunks = 0, inodes = 0;
    if (rc == 0) rc = reclaim(&w, &chunks, &inodes);
    pthread_mutex_lock(&fs->bg_mu);
    if (rc) {
        fs->sweep.failed++;
        snprintf(fs->sweep.last_error, sizeof fs->sweep.last_error, "%s",
                 w.why[0] ? w.why : kv_strerror(rc));
    } else {
        fs->sweep.runs++;
        fs->sweep.inodes = w.ids.n;
        fs->sweep.chunks = w.seen.n;
        fs->sweep.kept = w.seen.n - w.doomed.n;
        fs->sweep.reclaimed = chunks;
        fs->sweep.reclaimed_total += chunks;
        fs->sweep.inodes_reclaimed_total += inodes;
        fs->sweep.last_error[0] = 0;
    }
    pthread_mutex_unlock(&fs->bg_mu);
    if (rc && rc != KV_ECLOSED)
        kv_warn(FS_MOD, "sweep gave up, nothing reclaimed: %s",
                w.why[0] ? w.why : kv_strerror(rc));
    else if (rc == 0 && (chunks || inodes))
        kv_info(FS_MOD,
                "sweep: %llu inodes and %llu chunks listed; reclaimed %llu "
                "chunks and %llu inodes",
                (unsigned long long)w.ids.n, (unsigned long long)w.seen.n,
                (unsigned long long)chunks, (unsigned long long)inodes);
    set16 *sets[] = {&w.ids,  &w.old,    &w.named,  &w.refs,
                     &w.seen, &w.doomed, &w.keyset, &w.removed};
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) set_free(sets[i]);
    keyv_free(&w.shards);
    keyv_free(&w.again);
    kv_buf_release(&w.prefix_i);
    kv_buf_release(&w.prefix_c);
    kv_buf_release(&w.prefix_s);
    return rc;
}

int fs__sweep_text(qfs_fs *fs, kv_buf *out) {
    char t[640];
    pthread_mutex_lock(&fs->bg_mu);
    fs_sweep_stats s = fs->sweep;
    pthread_mutex_unlock(&fs->bg_mu);
    int n =
        snprintf(t, sizeof t,
                 "runs=%llu failed=%llu inodes=%llu chunks=%llu kept=%llu "
                 "reclaimed=%llu reclaimed_total=%llu "
                 "inodes_reclaimed_total=%llu error=%s",
                 (unsigned long long)s.runs, (unsigned long long)s.failed,
                 (unsigned long long)s.inodes, (unsigned long long)s.chunks,
                 (unsigned long long)s.kept, (unsigned long long)s.reclaimed,
                 (unsigned long long)s.reclaimed_total,
                 (unsigned long long)s.inodes_reclaimed_total,
                 s.last_error[0] ? s.last_error : "-");
    return kv_buf_set(out, t, (size_t)KV_MIN(n, (int)sizeof t - 1));
}

/* ---- the background thread ---- */

/* Write back the files whose pending chunks are due. */
static void write_back_due(qfs_fs *fs) {
    fs_node *nds[256];
    size_t n = fs__nodes_pending(fs, nds, 256);
    int64_t now = kv_wall_ns();
    for (size_t i = 0; i < n; i++) {
        fs_node *nd = nds[i];
        pthread_mutex_lock(&nd->lock);
        if (nd->file && fs__file_due(fs, nd->file, now)) {
            int rc = fs__file_writeback(fs, &nd->id, nd->file, false);
            if (rc) fs__errno(fs, rc, "background write-back", &nd->id);
        }
        fs__pending_note(nd);
        pthread_mutex_unlock(&nd->lock);
        fs__node_put(fs, nd);
    }
}

static void *bg_main(void *arg) {
    qfs_fs *fs = arg;
    pthread_setname_np(pthread_self(), "qfs-sweep");
    int64_t tick = KV_MAX(fs__pending_age_ns(fs) / 2, (int64_t)50000000);
    int64_t next_sweep = fs->o.sweep_s > 0
                             ? kv_wall_ns() + (int64_t)(fs->o.sweep_s * 1e9)
                             : INT64_MAX;
    pthread_mutex_lock(&fs->bg_mu);
    while (!fs->bg_stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        int64_t at = (int64_t)until.tv_sec * 1000000000 + until.tv_nsec + tick;
        until.tv_sec = at / 1000000000;
        until.tv_nsec = at % 1000000000;
        pthread_cond_timedwait(&fs->bg_cv, &fs->bg_mu, &until);
        if (fs->bg_stop) break;
        pthread_mutex_unlock(&fs->bg_mu);
        write_back_due(fs);
        if (kv_wall_ns() >= next_sweep) {
            sweep_once(fs);
            next_sweep = kv_wall_ns() + (int64_t)(fs->o.sweep_s * 1e9);
        }
        pthread_mutex_lock(&fs->bg_mu);
    }
    pthread_mutex_unlock(&fs->bg_mu);
    return NULL;
}

int fs__bg_start(qfs_fs *fs) {
    int rc = pthread_create(&fs->bg, NULL, bg_main, fs);
    if (rc) return -rc;
    fs->bg_started = true;
    return 0;
}

void fs__bg_stop(qfs_fs *fs) {
    if (!fs->bg_started) return;
    pthread_mutex_lock(&fs->bg_mu);
    __atomic_store_n(&fs->bg_stop, true, __ATOMIC_RELAXED);
    pthread_cond_signal(&fs->bg_cv);
    pthread_mutex_unlock(&fs->bg_mu);
    pthread_join(fs->bg, NULL);
    fs->bg_started = false;
    if (fs->sweep_unnamed) set_free(fs->sweep_unnamed);
    kv_free(fs->sweep_unnamed);
    fs->sweep_unnamed = NULL;
}
