/*
 * Internals of fs/: the store calls (store.c), the table of objects the
 * kernel knows (node.c) and the operations (fs.c).
 */
#ifndef QFS_FS_FS_INT_H
#define QFS_FS_FS_INT_H

#include "fs/fs.h"
#include "fs/obj.h"

#include <pthread.h>

#define FS_MOD "fs"
#define FS_POOL_MAX 64         /* idle connections kept */
#define FS_NODE_BUCKETS 4096   /* hash buckets of the node table */
#define FS_DIRTY_CHUNKS_MAX 16 /* dirty chunks of a file before write-back */

/* An object as read: the winning version decoded (directories: every
 * sibling merged), the context of the read, and for files the losing
 * siblings (conflict versions), newest first. */
typedef struct fs_obj {
    fs_inode ino;
    kv_buf ctx;
    uint64_t ver;   /* the winner's version hash (see fs__obj_get) */
    fs_inode *sibs; /* files: the other versions, best first */
    uint64_t *sib_vers;
    size_t nsib;
} fs_obj;

/* One object of a directory's hash trie (obj.h, "shards"), as read. */
typedef struct fs_shard {
    unsigned level;
    uint64_t index;
    fs_obj obj;     /* a directory inode (level 0: the directory's own) */
    bool absent;    /* not stored: empty and not split */
    bool changed;   /* to be written (fs__dview_put) */
    bool stale;     /* obj.ctx predates our own put: read before a change */
    bool wrote;     /* written unsynced (fs__dview_put); see fs__dview_wrote */
    uint64_t at_ns; /* when read or written (kv_now_ns) */
} fs_shard;

/* The objects of one directory read so far, and their entries as one
 * set. */
typedef struct fs_dview {
    fs_id id;
    fs_shard *sh;
    size_t n, cap;
    fs_inode all; /* fs__dview_entries: names borrowed from the shards */
    bool all_ok;
    int add_at;     /* the shard that got the last add, or -1 */
    bool top_split; /* level 0 is known to be split: read it and the next
                     * object of a path at once */
} fs_dview;

#define FS_DVIEW_CACHE_MAX 64 /* shards a directory node keeps */
#define FS_UNSYNCED_MAX 64    /* shards a node tracks for fsyncdir */

/* A shard by position. */
typedef struct fs_shard_ref {
    unsigned level;
    uint64_t index;
} fs_shard_ref;

/* A chunk being written: its bytes until written back. */
typedef struct fs_dchunk {
    uint64_t index;
    kv_buf bytes;
    struct fs_dchunk *next;
} fs_dchunk;

/* The state of a file some handle has open, shared by its handles. */
typedef struct fs_file {
    fs_obj obj;         /* attributes, data or manifest, context */
    bool dirty;         /* obj.ino changed since it was read or written */
    bool ctx_stale;     /* obj.ctx predates our own last put (its reply
                         * had no context: other versions remained) */
    uint64_t put_ver;   /* version hash of our last put */
    fs_dchunk *dchunks; /* dirty chunks */
    size_t ndchunks;
    uint64_t cached_index; /* one clean chunk kept for reads */
    kv_buf cached;
    bool have_cached;
    /* Chunks stored for this file that no written inode refers to yet
     * (see sweep.c): their oldest write time; written back (the inode)
     * once FS_PENDING_MAX are pending or the oldest is fs__pending_age
     * old, and stored again first if the sweep's grace may have run out. */
    fs_chunk *pending;
    size_t npending, pending_cap;
    int64_t pending_oldest_ns;
} fs_file;

#define FS_PENDING_MAX 64

/* An object the kernel holds a reference to (lookup count > 0) or that is
 * open. ino is the FUSE node id. */
typedef struct fs_node {
    uint64_t ino;
    fs_id id;
    uint64_t ver; /* 0, or a conflict version of the file (read-only) */
    uint8_t type;
    uint64_t nlookup;     /* [fs->mu] the kernel's references */
    uint32_t holds;       /* [fs->mu] open handles and callers' claims */
    bool dead;            /* [fs->mu] unchained, being freed */
    uint32_t opens;       /* [lock] */
    bool has_pending;     /* [atomic] file->npending > 0 (sweep.c) */
    bool split0;          /* [atomic] directories: level 0 was seen split */
    bool recent_old;      /* [atomic] a fresh read could not join dcache */
    bool unlinked;        /* [lock] its last name is gone: delete on release */
    pthread_mutex_t lock; /* serialises changes to the object */
    fs_file *file;        /* [lock] while open */
    fs_dview *dcache;     /* [lock] directories: shards this mount read or
                           * wrote lately, with their contexts (see fs.c,
                           * "recent shards") */
    fs_shard_ref *unsynced; /* [lock] directories: shards written unsynced
                             * since the last fsyncdir ... */
    uint32_t nunsynced;
    bool sync_all; /* [lock] ... or, when unknown, every shard */
    struct fs_node *next_ino, *next_id; /* [fs->mu] hash chains */
} fs_node;

/* The actor this mount adds to one directory object with, and the
 * counter of its last add there (see dir.c, "actors"). */
typedef struct fs_actor {
    fs_id dir;
    uint64_t index; /* the shard's */
    unsigned level;
    bool used;
    uint64_t actor, counter;
} fs_actor;

#define FS_ACTORS 16384 /* objects whose actor a mount remembers */

/* What the sweeps did, for user.quorumfs.sweep on the root. */
typedef struct fs_sweep_stats {
    uint64_t runs, failed;           /* sweeps finished, and given up */
    uint64_t inodes, chunks;         /* the last one's inode and chunk keys */
    uint64_t kept, reclaimed;        /* its chunks referred to, and reclaimed */
    uint64_t reclaimed_total;        /* by every sweep of this mount */
    uint64_t inodes_reclaimed_total; /* inodes nothing named, likewise */
    char last_error[256];            /* why the last one gave up, or "" */
} fs_sweep_stats;

struct qfs_fs {
    qfs_fs_opts o;
    char volume[64];
    /* The background thread (sweep.c): pending write-backs and sweeps. */
    pthread_t bg;
    bool bg_started, bg_stop; /* [bg_mu] */
    pthread_mutex_t bg_mu;
    pthread_cond_t bg_cv;
    fs_sweep_stats sweep; /* [bg_mu] */
    void *sweep_unnamed;  /* sweep.c: inodes the last sweep found unnamed */
    pthread_mutex_t actor_mu;
    fs_actor *actors; /* [actor_mu] FS_ACTORS slots, by hash */
    pthread_mutex_t pool_mu;
    rep_client *idle[FS_POOL_MAX];
    int nidle;
    pthread_mutex_t mu; /* the node table */
    fs_node *by_ino[FS_NODE_BUCKETS];
    fs_node *by_id[FS_NODE_BUCKETS];
    uint64_t next_ino;
};

/* store.c */
void fs__pool_close(qfs_fs *fs);
void fs__obj_init(fs_obj *o);
void fs__obj_release(fs_obj *o);
/* Read the object of id (o is reset first). KV_ENOTFOUND when absent or
 * deleted. A file's versions (siblings) are ranked: the latest mtime
 * first, then the higher actor and counter of the write; each has a
 * version hash (xxh3 of its bytes, never 0) that names it while it
 * exists. */
int fs__obj_get(qfs_fs *fs, const fs_id *id, fs_obj *o);
/* The same for any object key (directory shards). */
int fs__key_get(qfs_fs *fs, kv_slice key, fs_obj *o);
/* fs__key_get of n keys at once, up to FS_KEYS_MAX in flight (each on a
 * pooled connection): out[i] and rcs[i] as it would give them. */
#define FS_KEYS_MAX 16
void fs__keys_get(qfs_fs *fs, const kv_slice *keys, size_t n, fs_obj *out,
                  int *rcs);
/* Write ino as the object of id with context ctx (empty: a new object).
 * newctx (may be NULL): the context of the result, empty when other
 * versions remain (rep_client_put_ctx). */
int fs__obj_put(qfs_fs *fs, const fs_id *id, const fs_inode *ino, kv_slice ctx,
                bool sync, kv_buf *newctx);
/* fs__obj_put, also giving the version hash the write has (*ver). */
int fs__obj_put_ver(qfs_fs *fs, const fs_id *id, const fs_inode *ino,
                    kv_slice ctx, bool sync, kv_buf *newctx, uint64_t *ver);
int fs__key_put(qfs_fs *fs, kv_slice key, const fs_inode *ino, kv_slice ctx,
                bool sync, kv_buf *newctx);
/* A chunk's bytes, checked against its hash and length. */
int fs__chunk_get(qfs_fs *fs, const fs_chunk *c, kv_buf *out);
/* Store bytes as a chunk; sets c's hash and len, and *stored_ns to the
 * chunk's write time. A chunk stored already is not written again unless
 * its last write is older than half the sweep's grace (then it is, so a
 * sweep cannot take it before the inode that refers to it is written).
 * Always in synced WALs: a chunk found stored is not written again, so a
 * later fsync could not sync it; a 1 MiB chunk pays little for its
 * fsync. */
int fs__chunk_put(qfs_fs *fs, kv_slice bytes, fs_chunk *c, int64_t *stored_ns);
/* Write chunk c again (read, checked, stored: a fresh write time) if its
 * last write is older than half the sweep's grace (one read otherwise).
 * KV_ENOTFOUND if it is gone. */
int fs__chunk_keep(qfs_fs *fs, const fs_chunk *c);
/* Half the sweep's grace, and how old a pending chunk may get before its
 * file is written back (nanoseconds). */
int64_t fs__grace_half_ns(const qfs_fs *fs);
int64_t fs__pending_age_ns(const qfs_fs *fs);
/* A write time from the wire (microseconds) in nanoseconds, saturating:
 * a bad value must not wrap into an old one. */
int64_t fs__us_ns(uint64_t us);
/* fn with a pooled connection (a new one if the first is dead). */
int fs__with_client(qfs_fs *fs, int (*fn)(void *arg, rep_client *c), void *arg);
/* Delete key (empty: chunk hash's key) if it has a live version and none
 * written at or after cutoff_ns (*gone says whether it was). */
int fs__reclaim(qfs_fs *fs, kv_slice key, const uint8_t hash[FS_HASH_LEN],
                int64_t cutoff_ns, bool *gone);
/* A store error as an errno for the kernel; logs the ones that are not
 * plain answers (EIO). */
int fs__errno(qfs_fs *fs, int rc, const char *what, const fs_id *id);
void fs__id_hex(const fs_id *id, char out[2 * FS_ID_LEN + 1]);

/* sweep.c */
int fs__bg_start(qfs_fs *fs);
void fs__bg_stop(qfs_fs *fs);
/* The text of user.quorumfs.sweep. */
int fs__sweep_text(qfs_fs *fs, kv_buf *out);
/* Set nd->has_pending from its file (nd->lock held). */
void fs__pending_note(fs_node *nd);

/* dir.c: a directory's objects (obj.h, "shards"). A view starts empty;
 * reads add objects to it; changes are made in it and written with
 * fs__dview_put. */
void fs__dview_init(fs_dview *v, const fs_id *id);
void fs__dview_release(fs_dview *v);
/* Read (unless v has them) the objects on name's path, from level 0 down
 * to the first one not split. -ENOTDIR if level 0 is not a directory,
 * KV_ENOTFOUND if it is gone, store errors. */
int fs__dview_path(qfs_fs *fs, fs_dview *v, const char *name);
/* Read every object of the directory. */
int fs__dview_all(qfs_fs *fs, fs_dview *v);
/* The objects of v on name's path, level 0 first (at most cap). */
size_t fs__dview_path_of(fs_dview *v, const char *name, const fs_inode **out,
                         size_t cap);
fs_shard *fs__dview_find(fs_dview *v, unsigned level, uint64_t index);
/* Level 0's inode (the directory's attributes), or NULL if not read. */
const fs_inode *fs__dview_attrs(const fs_dview *v);
/* Every entry of v's objects as one directory inode, sorted by name, id
 * and dot (names borrowed: valid until v changes), or NULL (-ENOMEM). */
const fs_inode *fs__dview_entries(fs_dview *v);
/* Add name -> id in the last object of name's path (read first),
 * splitting it at FS_SHARD_SPLIT entries. Entries of name for id or
 * *replace go (from every object of the path); other entries of name
 * (rivals) stay. */
int fs__dview_add(qfs_fs *fs, fs_dview *v, const char *name, const fs_id *id,
                  uint8_t type, const fs_id *replace);
/* Remove name's entries of id from every object of v; the count. */
size_t fs__dview_remove(fs_dview *v, const char *name, const fs_id *id);
/* Write the changed objects (the add's first; level 0 too, with new
 * times, if it changed or its mtime lags by a second). On failure the
 * objects not written get new actors for their next add. */
int fs__dview_put(qfs_fs *fs, fs_dview *v, bool sync);
/* Move the shards v wrote unsynced into dn's fsyncdir set (dn->lock
 * held). */
void fs__dview_wrote(fs_node *dn, fs_dview *v);
/* fsyncdir: write dn's level 0 and every shard it wrote unsynced (all
 * of them if unknown) again, synced (dn->lock held). */
int fs__dir_sync(qfs_fs *fs, fs_node *dn);
/* Mark the directory of v (level 0 read) removed, so no name can be
 * added to it any more, and write it. */
int fs__dview_remove_dir(qfs_fs *fs, fs_dview *v);
/* Entries in all of v's objects. */
size_t fs__dview_count(const fs_dview *v);
/* Drop objects read before older_than_ns, changed or stale. */
void fs__dview_expire(fs_dview *v, uint64_t older_than_ns);
/* Move src's unchanged, fresh objects into dst (newer ones win; dst
 * keeps at most FS_DVIEW_CACHE_MAX). src is left for release. */
void fs__dview_absorb(fs_dview *dst, fs_dview *src);

/* file.c */
/* Write n bytes at off into f (memory; full chunks may be stored). */
int fs__file_write(qfs_fs *fs, fs_file *f, uint64_t off, const void *buf,
                   size_t n);
/* Up to n bytes at off into out (short at the end of the file). */
int fs__file_read(qfs_fs *fs, fs_file *f, uint64_t off, size_t n, kv_buf *out);
int fs__file_truncate(qfs_fs *fs, fs_file *f, uint64_t size);
/* Store what f has dirty: its chunks, then its inode object with the
 * context f read (sync: acknowledged from synced WALs). */
int fs__file_writeback(qfs_fs *fs, const fs_id *id, fs_file *f, bool sync);
/* Whether f's pending chunks call for a write-back now. */
bool fs__file_due(const qfs_fs *fs, const fs_file *f, int64_t now_ns);
void fs__file_free(fs_file *f);

/* node.c */
/* The node of (id, ver), made if unknown; its lookup count grows by
 * `lookups`, or with 0 the caller holds it until fs__node_put. NULL on
 * -ENOMEM. */
fs_node *fs__node_get(qfs_fs *fs, const fs_id *id, uint64_t ver, uint8_t type,
                      uint64_t lookups);
/* If id's file is open here, a copy of its current inode (what this
 * mount wrote, flushed or not) into out (overwritten): true. */
bool fs__node_open_inode(qfs_fs *fs, const fs_id *id, fs_inode *out);
/* The node of a FUSE node id, or NULL. */
fs_node *fs__node_by_ino(qfs_fs *fs, uint64_t ino);
/* Drop n lookups; the node is freed once none remain and nothing has it
 * open. */
void fs__node_forget(qfs_fs *fs, fs_node *nd, uint64_t n);
/* Hold nd (an open handle), and let go of a hold. A node goes once the
 * kernel forgot it and nothing holds it. */
void fs__node_hold(qfs_fs *fs, fs_node *nd);
/* Up to cap nodes whose files have pending chunks, each held (put them
 * with fs__node_put); the count. */
size_t fs__nodes_pending(qfs_fs *fs, fs_node **out, size_t cap);
void fs__node_put(qfs_fs *fs, fs_node *nd);
void fs__nodes_free(qfs_fs *fs);

#endif
