/*
 * fs: the filesystem on top of the replica layer's client API, as libfuse
 * low-level operations. Every file and directory is an inode object
 * (fs/obj.h) under a random id; a directory's object holds its entries.
 * Operations read objects with quorum gets and write them with quorum puts
 * that carry the causal context of what they read, so concurrent writers
 * from different mounts become siblings instead of overwriting each other.
 *
 * FUSE worker threads call the replica layer directly, each call bounded
 * by the request deadline; a client connection is borrowed from a pool
 * for the length of one call. Nothing here touches a socket or a disk
 * itself.
 *
 * Within one mount, the changes to one object are serialised (a lock per
 * known object), so a mount does not race itself into siblings.
 */
#ifndef QFS_FS_FS_H
#define QFS_FS_FS_H

#include "base/base.h"

struct fuse_lowlevel_ops;
typedef struct rep_client rep_client;
typedef struct qfs_fs qfs_fs;

/* Make a new connection to the store; attempt counts from 0 for one call
 * (a connector with several endpoints tries the next one on a retry). */
typedef int (*qfs_connect_fn)(void *arg, unsigned attempt, rep_client **out);

typedef struct qfs_fs_opts {
    const char *volume;   /* bucket of every key, default "qfs" */
    uint8_t n, r, w;      /* 0: the node's defaults */
    uint32_t timeout_ms;  /* deadline of one store call, default 5000 */
    double attr_timeout;  /* seconds the kernel caches attributes, 1.0 */
    double entry_timeout; /* seconds the kernel caches names, 1.0 */
    /* The chunk sweep (fs/sweep.c): seconds between sweeps (0: none; the
     * default 3600) and the grace a chunk gets after its last write
     * before a sweep may reclaim it (900; at least 1). */
    double sweep_s;
    double sweep_grace_s;
    qfs_connect_fn connect;
    void *connect_arg;
} qfs_fs_opts;

void qfs_fs_opts_init(qfs_fs_opts *o);
/* A filesystem over the store o->connect reaches. Creates the root
 * directory object if the volume has none. -EINVAL, -ENOMEM, store
 * errors. */
int qfs_fs_open(const qfs_fs_opts *o, qfs_fs **out);
/* Write back what is still dirty and free everything. Returns the first
 * write-back error, 0 if none. */
int qfs_fs_close(qfs_fs *fs);
/* The operations, for fuse_session_new with fs as userdata. */
const struct fuse_lowlevel_ops *qfs_fs_ops(void);

#endif
