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
} fs_file;

/* An object the kernel holds a reference to (lookup count > 0) or that is
 * open. ino is the FUSE node id. */
typedef struct fs_node {
    uint64_t ino;
    fs_id id;
    uint64_t ver; /* 0, or a conflict version of the file (read-only) */
    uint8_t type;
    uint64_t nlookup;      /* [fs->mu] the kernel's references */
    uint32_t holds;        /* [fs->mu] open handles and callers' claims */
    bool dead;             /* [fs->mu] unchained, being freed */
    uint32_t opens;        /* [lock] */
    bool unlinked;         /* [lock] its last name is gone: delete on release */
    pthread_mutex_t lock;  /* serialises changes to the object */
    fs_file *file;         /* [lock] while open */
    struct fs_obj *dcache; /* [lock] directories: this mount's last write
                            * of the object, with the context its put
                            * returned (see fs.c, dcache_take) */
    uint64_t dcache_ns;    /* [lock] when dcache was written */
    struct fs_node *next_ino, *next_id; /* [fs->mu] hash chains */
} fs_node;

struct qfs_fs {
    qfs_fs_opts o;
    char volume[64];
    uint64_t actor; /* this mount's actor in directory dots */
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
/* Write ino as the object of id with context ctx (empty: a new object).
 * newctx (may be NULL): the context of the result, empty when other
 * versions remain (rep_client_put_ctx). */
int fs__obj_put(qfs_fs *fs, const fs_id *id, const fs_inode *ino, kv_slice ctx,
                bool sync, kv_buf *newctx);
int fs__obj_del(qfs_fs *fs, const fs_id *id, kv_slice ctx);
/* The version hash ino gets when written (fs__obj_get's ver); 0 if it
 * cannot be encoded. */
uint64_t fs__inode_ver(const fs_inode *ino);
/* A chunk's bytes, checked against its hash and length. */
int fs__chunk_get(qfs_fs *fs, const fs_chunk *c, kv_buf *out);
/* Store bytes as a chunk (unless stored already); sets c's hash and len.
 * Always in synced WALs (whatever sync says): a chunk found already
 * stored is not written again, so a later fsync could not sync it; a
 * 1 MiB chunk pays little for its fsync. */
int fs__chunk_put(qfs_fs *fs, kv_slice bytes, bool sync, fs_chunk *c);
/* A store error as an errno for the kernel; logs the ones that are not
 * plain answers (EIO). */
int fs__errno(qfs_fs *fs, int rc, const char *what, const fs_id *id);
void fs__id_hex(const fs_id *id, char out[2 * FS_ID_LEN + 1]);

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
void fs__node_put(qfs_fs *fs, fs_node *nd);
void fs__nodes_free(qfs_fs *fs);

#endif
