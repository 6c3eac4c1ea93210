/*
 * The objects the kernel knows: FUSE node ids mapped to object ids and
 * back, with the kernel's lookup count. A node id is handed out the first
 * time the kernel looks an object up and stays the same while the kernel
 * remembers it; the root directory is node 1. The kernel never forgets a
 * node while an operation on it is in flight, so operations use nodes
 * without holding a reference of their own.
 */
#include "fs/fs_int.h"

#include <fuse_lowlevel.h>
#include <string.h>

static size_t hash_ino(uint64_t ino) {
    return (size_t)(ino * 0x9e3779b97f4a7c15ull >> 52) % FS_NODE_BUCKETS;
}

static size_t hash_id(const fs_id *id) {
    uint64_t x;
    memcpy(&x, id->b, sizeof x);
    return (size_t)(x % FS_NODE_BUCKETS);
}

fs_node *fs__node_by_ino(qfs_fs *fs, uint64_t ino) {
    pthread_mutex_lock(&fs->mu);
    fs_node *nd = fs->by_ino[hash_ino(ino)];
    while (nd && nd->ino != ino) nd = nd->next_ino;
    pthread_mutex_unlock(&fs->mu);
    return nd;
}

bool fs__node_open_inode(qfs_fs *fs, const fs_id *id, fs_inode *out) {
    pthread_mutex_lock(&fs->mu);
    fs_node *nd = fs->by_id[hash_id(id)];
    while (nd && (nd->ver || memcmp(nd->id.b, id->b, FS_ID_LEN) != 0))
        nd = nd->next_id;
    if (nd && nd->dead) nd = NULL;
    /* Lock order is nd->lock before fs->mu: only try it. */
    bool got = false;
    if (nd && pthread_mutex_trylock(&nd->lock) == 0) {
        got = nd->file && fs_inode_copy(out, &nd->file->obj.ino) == 0;
        pthread_mutex_unlock(&nd->lock);
    }
    pthread_mutex_unlock(&fs->mu);
    return got;
}

fs_node *fs__node_get(qfs_fs *fs, const fs_id *id, uint64_t ver, uint8_t type,
                      uint64_t lookups) {
    pthread_mutex_lock(&fs->mu);
    size_t h = hash_id(id);
    fs_node *nd = fs->by_id[h];
    while (nd && (nd->ver != ver || memcmp(nd->id.b, id->b, FS_ID_LEN) != 0))
        nd = nd->next_id;
    if (!nd && (nd = kv_calloc(1, sizeof *nd))) {
        nd->id = *id;
        nd->ver = ver;
        nd->type = type;
        nd->sync_all = true; /* what earlier nodes of id wrote is unknown */
        nd->ino = fs_id_is_root(id) && !ver ? FUSE_ROOT_ID : fs->next_ino++;
        pthread_mutex_init(&nd->lock, NULL);
        nd->next_id = fs->by_id[h];
        fs->by_id[h] = nd;
        size_t hi = hash_ino(nd->ino);
        nd->next_ino = fs->by_ino[hi];
        fs->by_ino[hi] = nd;
    }
    if (nd && lookups)
        nd->nlookup += lookups;
    else if (nd)
        nd->holds++; /* a claim of the caller's: fs__node_put */
    pthread_mutex_unlock(&fs->mu);
    return nd;
}

/* Unlink nd from both chains; fs->mu held. */
static void unchain(qfs_fs *fs, fs_node *nd) {
    fs_node **p = &fs->by_id[hash_id(&nd->id)];
    while (*p != nd) p = &(*p)->next_id;
    *p = nd->next_id;
    p = &fs->by_ino[hash_ino(nd->ino)];
    while (*p != nd) p = &(*p)->next_ino;
    *p = nd->next_ino;
}

static void node_free(fs_node *nd) {
    fs__file_free(nd->file); /* only a state whose write-back failed */
    kv_free(nd->unsynced);
    if (nd->dcache) {
        fs__dview_release(nd->dcache);
        kv_free(nd->dcache);
    }
    pthread_mutex_destroy(&nd->lock);
    kv_free(nd);
}

/* Whether nd can go: nothing refers to it (fs->mu held). */
static bool idle(const fs_node *nd) {
    return nd->ino != FUSE_ROOT_ID && !nd->dead && nd->nlookup == 0 &&
           nd->holds == 0;
}

/* Free nd if idle; fs->mu held, released here. The decision and the
 * unchaining happen under one hold of fs->mu, so two threads cannot
 * both free it, and nobody else can find it once it is decided. */
static void release_mu(qfs_fs *fs, fs_node *nd) {
    bool gone = idle(nd);
    if (gone) {
        nd->dead = true;
        unchain(fs, nd);
    }
    pthread_mutex_unlock(&fs->mu);
    if (gone) node_free(nd);
}

void fs__node_forget(qfs_fs *fs, fs_node *nd, uint64_t n) {
    pthread_mutex_lock(&fs->mu);
    nd->nlookup = n > nd->nlookup ? 0 : nd->nlookup - n;
    release_mu(fs, nd);
}

void fs__node_hold(qfs_fs *fs, fs_node *nd) {
    pthread_mutex_lock(&fs->mu);
    nd->holds++;
    pthread_mutex_unlock(&fs->mu);
}

void fs__node_put(qfs_fs *fs, fs_node *nd) {
    pthread_mutex_lock(&fs->mu);
    if (nd->holds > 0) nd->holds--;
    release_mu(fs, nd);
}

size_t fs__nodes_pending(qfs_fs *fs, fs_node **out, size_t cap) {
    size_t n = 0;
    pthread_mutex_lock(&fs->mu);
    for (size_t b = 0; b < FS_NODE_BUCKETS && n < cap; b++)
        for (fs_node *nd = fs->by_ino[b]; nd && n < cap; nd = nd->next_ino)
            if (!nd->dead &&
                __atomic_load_n(&nd->has_pending, __ATOMIC_RELAXED)) {
                nd->holds++;
                out[n++] = nd;
            }
    pthread_mutex_unlock(&fs->mu);
    return n;
}

void fs__nodes_free(qfs_fs *fs) {
    for (size_t h = 0; h < FS_NODE_BUCKETS; h++) {
        fs_node *nd = fs->by_id[h];
        while (nd) {
            fs_node *next = nd->next_id;
            node_free(nd);
            nd = next;
        }
        fs->by_id[h] = NULL;
        fs->by_ino[h] = NULL;
    }
}
