/*
 * The FUSE low-level operations. Each runs on a FUSE worker thread, reads
 * and writes objects through store.c (every call bounded by the request
 * deadline) and replies once the store answered. Changes to one object
 * are serialised by its node's lock; a change to a directory is a read of
 * its object, the change, and a put with the context of that read.
 *
 * Names: a directory entry may have several targets (two mounts created
 * one name at once); the entry with the highest dot is `name`, the others
 * `name.conflict-1`, ... in dot order. (Conflicting versions of one file
 * are shown the same way in a later change.)
 */
#include "fs/fs_int.h"

#include "replica/dvv.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

static qfs_fs *fs_of(fuse_req_t req) {
    return fuse_req_userdata(req);
}

/* The node of ino, or NULL after replying ESTALE (a node id the kernel
 * should not have any more). */
static fs_node *node_of(fuse_req_t req, fuse_ino_t ino) {
    fs_node *nd = fs__node_by_ino(fuse_req_userdata(req), ino);
    if (!nd) fuse_reply_err(req, ESTALE);
    return nd;
}

static mode_t type_bits(uint8_t t) {
    return t == FS_DIR ? S_IFDIR : t == FS_SYMLINK ? S_IFLNK : S_IFREG;
}

/* st_ino: from the id, so it is the same on every mount and across
 * remounts; a conflict version's differs from its file's (tools compare
 * inode numbers: mv refuses to move a file onto itself). */
static uint64_t stable_ino(const fs_id *id, uint64_t ver) {
    if (fs_id_is_root(id) && !ver) return FUSE_ROOT_ID;
    uint64_t x;
    memcpy(&x, id->b, sizeof x);
    x ^= ver * 0x9e3779b97f4a7c15ull;
    return x < 2 ? x + 2 : x;
}

static void fill_stat(const fs_id *id, uint64_t ver, const fs_inode *ino,
                      struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = stable_ino(id, ver);
    st->st_mode = (ino->mode & 07777) | type_bits(ino->type);
    st->st_nlink = 1; /* directories too: "count unknown", as btrfs */
    st->st_uid = ino->uid;
    st->st_gid = ino->gid;
    st->st_size = (off_t)ino->size;
    st->st_blksize = 128 * 1024;
    st->st_blocks = (blkcnt_t)((ino->size + 511) / 512);
    st->st_atim.tv_sec = ino->atime_ns / 1000000000;
    st->st_atim.tv_nsec = ino->atime_ns % 1000000000;
    st->st_mtim.tv_sec = ino->mtime_ns / 1000000000;
    st->st_mtim.tv_nsec = ino->mtime_ns % 1000000000;
    st->st_ctim.tv_sec = ino->ctime_ns / 1000000000;
    st->st_ctim.tv_nsec = ino->ctime_ns % 1000000000;
}

static bool name_ok(const char *name, int *err) {
    size_t n = strlen(name);
    if (n > FS_NAME_MAX) {
        *err = ENAMETOOLONG;
        return false;
    }
    if (n == 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        *err = EINVAL;
        return false;
    }
    return true;
}

/* ---- names in a directory ---- */

/* Directory objects that hold a name's entries: the objects of its path
 * (fs__dview_path_of), or one listing of them all. */
typedef struct dset {
    const fs_inode *d[FS_SHARD_LEVELS + 1];
    size_t n;
} dset;

static void path_set(fs_dview *v, const char *name, dset *ds) {
    ds->n = fs__dview_path_of(v, name, ds->d, FS_SHARD_LEVELS + 1);
}

/* Rivals rank by their dots: the higher counter, then the higher actor,
 * then the lower id (dots of different shards may be equal). */
static bool ranks_first(const fs_dirent *a, const fs_dirent *b) {
    if (a->dot.counter != b->dot.counter)
        return a->dot.counter > b->dot.counter;
    if (a->dot.actor != b->dot.actor) return a->dot.actor > b->dot.actor;
    return memcmp(a->id.b, b->id.b, FS_ID_LEN) < 0;
}

/* The entries named name, best first. */
static size_t entries_of(const dset *ds, const char *name,
                         const fs_dirent **out, size_t cap) {
    size_t n = 0;
    for (size_t d = 0; d < ds->n; d++) {
        size_t pos = 0;
        ssize_t i;
        while ((i = fs_dir_find(ds->d[d], name, &pos)) >= 0) {
            const fs_dirent *e = &ds->d[d]->entries[i];
            if (strcmp(e->name, name) != 0) break;
            /* Keep the best cap entries, best first (a full array drops
             * its last when a better one comes). */
            size_t j = n < cap ? n++ : cap;
            while (j > 0 && ranks_first(e, out[j - 1])) {
                if (j < cap) out[j] = out[j - 1];
                j--;
            }
            if (j < cap) out[j] = e;
        }
    }
    return n;
}

#define MAX_SAME_NAME 64
#define MAX_SHOWN 256 /* names shown for one name: x and its conflicts */

/* What a shown name refers to: an entry's object, or (ver != 0) one of
 * the other versions of a file with siblings. */
typedef struct shown {
    fs_id id;
    uint8_t type;
    uint64_t ver;
    const char *name; /* the entry's own name (points into the dir) */
    bool have_st;     /* st holds its attributes (shown_of) */
    struct stat st;
} shown;

static void fill_stat(const fs_id *id, uint64_t ver, const fs_inode *ino,
                      struct stat *st);

/* Everything shown for the entries of name, in order: the best entry's
 * object is `name`, then its other versions, then the next entry's
 * object and its versions, ...: `name.conflict-1`, `-2`, ... Reads the
 * objects of file entries that have rivals or might have versions. */
static int shown_of(qfs_fs *fs, const dset *ds, const char *name, shown *out,
                    size_t cap, size_t *count) {
    const fs_dirent *es[MAX_SAME_NAME];
    size_t n = entries_of(ds, name, es, MAX_SAME_NAME), k = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n && k < cap; i++) {
        shown *first = &out[k++];
        *first = (shown){es[i]->id, es[i]->type, 0, es[i]->name, false, {0}};
        fs_obj o;
        fs__obj_init(&o);
        rc = fs__obj_get(fs, &es[i]->id, &o);
        if (rc == KV_ENOTFOUND) {
            rc = 0; /* a dangling name shows as one, without attributes */
        } else if (rc == 0) {
            fs_inode mine;
            fs_inode_init(&mine, FS_FILE);
            if (fs__node_open_inode(fs, &es[i]->id, &mine))
                fill_stat(&es[i]->id, 0, &mine, &first->st);
            else
                fill_stat(&es[i]->id, 0, &o.ino, &first->st);
            fs_inode_release(&mine);
            first->have_st = true;
        }
        for (size_t v = 0; rc == 0 && v < o.nsib && k < cap; v++) {
            out[k] = (shown){es[i]->id,   FS_FILE, o.sib_vers[v],
                             es[i]->name, true,    {0}};
            fill_stat(&es[i]->id, o.sib_vers[v], &o.sibs[v], &out[k].st);
            k++;
        }
        fs__obj_release(&o);
    }
    *count = k;
    return rc;
}

/* Resolve a shown name in directory v (reading the paths it needs): "x"
 * (the best entry of x) or "x.conflict-N". KV_ENOTFOUND if nothing is
 * shown under it. */
static int resolve(qfs_fs *fs, fs_dview *v, const char *name, shown *out) {
    const fs_dirent *es[1];
    dset ds;
    int rc = fs__dview_path(fs, v, name);
    if (rc) return rc;
    path_set(v, name, &ds);
    if (entries_of(&ds, name, es, 1) > 0) {
        *out = (shown){es[0]->id, es[0]->type, 0, es[0]->name, false, {0}};
        return 0;
    }
    const char *suffix = NULL;
    for (const char *p = strstr(name, ".conflict-"); p;
         p = strstr(p + 1, ".conflict-"))
        suffix = p;
    if (!suffix) return KV_ENOTFOUND;
    char *end;
    errno = 0;
    long k = strtol(suffix + 10, &end, 10);
    if (errno || *end || k < 1 || suffix[10] == '0' || suffix[10] == '+' ||
        k >= MAX_SHOWN)
        return KV_ENOTFOUND;
    char base[FS_NAME_MAX + 1];
    size_t blen = (size_t)(suffix - name);
    if (blen == 0 || blen > FS_NAME_MAX) return KV_ENOTFOUND;
    memcpy(base, name, blen);
    base[blen] = 0;
    if ((rc = fs__dview_path(fs, v, base))) return rc;
    path_set(v, base, &ds);
    shown *all = kv_calloc(MAX_SHOWN, sizeof *all);
    if (!all) return -ENOMEM;
    size_t n;
    rc = shown_of(fs, &ds, base, all, MAX_SHOWN, &n);
    if (rc == 0 && (size_t)k >= n) rc = KV_ENOTFOUND;
    if (rc == 0) *out = all[k];
    kv_free(all);
    return rc;
}

/* resolve on a view that may hold recent copies: a name they lack is
 * looked for again in the store (another mount may have added it since
 * they were read). Any shown name from v before this call is invalid
 * after it. */
static int resolve_recent(qfs_fs *fs, fs_dview *v, const char *name,
                          shown *out) {
    int rc = resolve(fs, v, name, out);
    if (rc != KV_ENOTFOUND || v->n == 0) return rc;
    bool top = v->top_split;
    fs_id id = v->id;
    fs__dview_release(v);
    fs__dview_init(v, &id);
    v->top_split = top;
    return resolve(fs, v, name, out);
}

/* The version ver of o (0: the winner), or NULL. */
static const fs_inode *version_in(const fs_obj *o, uint64_t ver) {
    if (ver == 0 || ver == o->ver) return &o->ino;
    for (size_t i = 0; i < o->nsib; i++)
        if (o->sib_vers[i] == ver) return &o->sibs[i];
    return NULL;
}

/* ---- objects of nodes ---- */

/* The current inode of nd: its open state if open here (a mount sees its
 * own writes), else a fresh read. */
static int node_inode(qfs_fs *fs, fs_node *nd, fs_obj *o) {
    if (nd->file) return fs_inode_copy(&o->ino, &nd->file->obj.ino);
    int rc = fs__obj_get(fs, &nd->id, o);
    if (rc == 0 && nd->ver) {
        /* A conflict version: shown while it exists. */
        const fs_inode *v = version_in(o, nd->ver);
        fs_inode copy;
        if (!v) return KV_ENOTFOUND;
        if ((rc = fs_inode_copy(&copy, v))) return rc;
        fs_inode_release(&o->ino);
        o->ino = copy;
    }
    return rc;
}

static void reply_entry(fuse_req_t req, qfs_fs *fs, const fs_id *id,
                        uint64_t ver, const fs_inode *ino) {
    fs_node *nd = fs__node_get(fs, id, ver, ino->type, 1);
    if (!nd) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = nd->ino;
    e.attr_timeout = fs->o.attr_timeout;
    e.entry_timeout = fs->o.entry_timeout;
    fill_stat(id, ver, ino, &e.attr);
    if (fuse_reply_entry(req, &e) != 0) fs__node_forget(fs, nd, 1);
}

/* ---- recent shards ----
 *
 * A directory node keeps the objects of the directory this mount read or
 * wrote lately (dn->dcache, dn->lock held), each with its context. A
 * create, remove or rename uses the ones younger than entry_timeout
 * instead of reading them again: the kernel looked the names up (fresh)
 * just before, and a change on a slightly older copy is a concurrent
 * change, which the add-wins set merges (a name another mount added
 * meanwhile shows as a rival). getattr uses level 0 for attr_timeout, as
 * the kernel would its cached attributes. Lookups and listings always
 * read the store. */

static void recent_drop(fs_node *dn) {
    if (!dn->dcache) return;
    fs__dview_release(dn->dcache);
    kv_free(dn->dcache);
    dn->dcache = NULL;
}

/* The recent view of dn (or a new empty one) for a change; NULL on
 * -ENOMEM. Give it back with recent_keep. */
static fs_dview *recent_take(qfs_fs *fs, fs_node *dn) {
    if (__atomic_exchange_n(&dn->recent_old, false, __ATOMIC_RELAXED))
        recent_drop(dn);
    fs_dview *v = dn->dcache;
    dn->dcache = NULL;
    if (!v) {
        v = kv_malloc(sizeof *v);
        if (v) fs__dview_init(v, &dn->id);
        if (v) v->top_split = __atomic_load_n(&dn->split0, __ATOMIC_RELAXED);
        return v;
    }
    uint64_t now = kv_now_ns(), age = (uint64_t)(fs->o.entry_timeout * 1e9);
    fs__dview_expire(v, now > age ? now - age : 0);
    v->top_split = __atomic_load_n(&dn->split0, __ATOMIC_RELAXED);
    return v;
}

/* Keep v's fresh objects as dn's recent ones, and note what it wrote
 * unsynced (v is consumed). */
/* A directory seen split stays split: later path reads of it read level
 * 0 and the next object at once. */
static void note_split(fs_node *dn, fs_dview *v) {
    fs_shard *s = fs__dview_find(v, 0, 0);
    if (s && s->obj.ino.split)
        __atomic_store_n(&dn->split0, true, __ATOMIC_RELAXED);
}

static void recent_keep(fs_node *dn, fs_dview *v) {
    if (!v) return;
    note_split(dn, v);
    fs__dview_wrote(dn, v); /* for fsyncdir */
    if (!dn->dcache) {
        fs_dview *d = kv_malloc(sizeof *d);
        if (d) {
            fs__dview_init(d, &dn->id);
            fs__dview_absorb(d, v);
            dn->dcache = d;
        }
    } else {
        fs__dview_absorb(dn->dcache, v);
    }
    fs__dview_release(v);
    kv_free(v);
}

/* A fresh view read outside dn->lock joins the recent ones if the lock is
 * free (v is released either way, not freed). */
static void recent_offer(fs_node *dn, fs_dview *v) {
    note_split(dn, v);
    if (pthread_mutex_trylock(&dn->lock) == 0) {
        if (!dn->dcache) {
            fs_dview *d = kv_malloc(sizeof *d);
            if (d) fs__dview_init(d, &dn->id);
            dn->dcache = d;
        }
        if (dn->dcache) fs__dview_absorb(dn->dcache, v);
        pthread_mutex_unlock(&dn->lock);
    } else {
        /* Busy: the recent copies may now be older than what this read
         * saw; the next change reads afresh. */
        __atomic_store_n(&dn->recent_old, true, __ATOMIC_RELAXED);
    }
    fs__dview_release(v);
}

/* Directory id changed other than through its node (removed): whatever
 * its node keeps is read again. No lock taken but the table's. */
static void recent_forget(qfs_fs *fs, const fs_id *id) {
    fs_node *nd = fs__node_get(fs, id, 0, FS_DIR, 0);
    if (!nd) return;
    __atomic_store_n(&nd->recent_old, true, __ATOMIC_RELAXED);
    fs__node_put(fs, nd);
}

/* Level 0 of dn if read or written in the last max_age seconds (dn->lock
 * held). */
static const fs_inode *recent_attrs(fs_node *dn, double max_age) {
    if (!dn->dcache) return NULL;
    fs_shard *s = fs__dview_find(dn->dcache, 0, 0);
    if (!s || (double)(kv_now_ns() - s->at_ns) > max_age * 1e9) return NULL;
    return &s->obj.ino;
}

/* ---- lookup, getattr, setattr ---- */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    qfs_fs *fs = fs_of(req);
    int err = 0;
    if (strlen(name) > FS_NAME_MAX) {
        fuse_reply_err(req, ENAMETOOLONG);
        return;
    }
    fs_node *dn = node_of(req, parent);
    if (!dn) return;
    fs_obj child;
    fs__obj_init(&child);
    fs_dview v;
    fs__dview_init(&v, &dn->id);
    v.top_split = __atomic_load_n(&dn->split0, __ATOMIC_RELAXED);
    shown e;
    int rc = resolve(fs, &v, name, &e);
    if (rc == 0) {
        /* Attributes as this mount sees them: its open state if open. */
        fs_node *cn = fs__node_get(fs, &e.id, e.ver, e.type, 0);
        if (!cn) {
            rc = -ENOMEM;
        } else {
            pthread_mutex_lock(&cn->lock);
            rc = node_inode(fs, cn, &child);
            pthread_mutex_unlock(&cn->lock);
            fs__node_put(fs, cn);
        }
    }
    if (rc == -ENOTDIR || rc == -ENOMEM)
        err = -rc;
    else if (rc)
        err = fs__errno(fs, rc, "lookup", rc == KV_ENOTFOUND ? NULL : &dn->id);
    /* Offered before the reply: the kernel's next call for this name
     * (a create, an unlink, a rename) then works on what this read saw. */
    recent_offer(dn, &v);
    if (err) {
        fuse_reply_err(req, err);
    } else {
        reply_entry(req, fs, &e.id, e.ver, &child.ino);
    }
    fs__obj_release(&child);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi) {
    (void)fi;
    qfs_fs *fs = fs_of(req);
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    fs_obj o;
    fs__obj_init(&o);
    pthread_mutex_lock(&nd->lock);
    const fs_inode *c = recent_attrs(nd, fs->o.attr_timeout);
    int rc = c ? fs_inode_copy(&o.ino, c) : node_inode(fs, nd, &o);
    pthread_mutex_unlock(&nd->lock);
    if (rc) {
        fuse_reply_err(req, fs__errno(fs, rc, "getattr", &nd->id));
    } else {
        struct stat st;
        fill_stat(&nd->id, nd->ver, &o.ino, &st);
        fuse_reply_attr(req, &st, fs->o.attr_timeout);
    }
    fs__obj_release(&o);
}

/* Load nd's file state (nd->lock held). */
static int file_acquire(qfs_fs *fs, fs_node *nd) {
    if (nd->file) return 0;
    fs_file *f = kv_calloc(1, sizeof *f);
    if (!f) return -ENOMEM;
    fs__obj_init(&f->obj);
    kv_buf_init(&f->cached);
    int rc = fs__obj_get(fs, &nd->id, &f->obj);
    if (rc == 0 && nd->ver) {
        /* A conflict version, read-only: its bytes only. */
        const fs_inode *v = version_in(&f->obj, nd->ver);
        fs_inode copy;
        rc = v ? fs_inode_copy(&copy, v) : KV_ENOTFOUND;
        if (rc == 0) {
            fs_inode_release(&f->obj.ino);
            f->obj.ino = copy;
        }
    }
    if (rc) {
        fs__file_free(f);
        return rc;
    }
    nd->file = f;
    return 0;
}

/* Drop nd's file state if nothing has it open (nd->lock held). */
static void file_unload(fs_node *nd) {
    if (nd->opens == 0 && nd->file && !nd->file->dirty) {
        fs__file_free(nd->file);
        nd->file = NULL;
    }
}

static void apply_attrs(fs_inode *ino, const struct stat *attr, int to_set) {
    int64_t now = kv_wall_ns();
    if (to_set & FUSE_SET_ATTR_MODE) ino->mode = attr->st_mode & 07777;
    if (to_set & FUSE_SET_ATTR_UID) ino->uid = attr->st_uid;
    if (to_set & FUSE_SET_ATTR_GID) ino->gid = attr->st_gid;
    if (to_set & FUSE_SET_ATTR_ATIME)
        ino->atime_ns =
            (int64_t)attr->st_atim.tv_sec * 1000000000 + attr->st_atim.tv_nsec;
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) ino->atime_ns = now;
    if (to_set & FUSE_SET_ATTR_MTIME)
        ino->mtime_ns =
            (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec;
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) ino->mtime_ns = now;
    ino->ctime_ns = now;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
                       int to_set, struct fuse_file_info *fi) {
    (void)fi;
    qfs_fs *fs = fs_of(req);
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    int rc = 0;
    struct stat st;
    if (nd->ver) {
        fuse_reply_err(req, EROFS);
        return;
    }
    pthread_mutex_lock(&nd->lock);
    if (nd->type == FS_FILE) {
        rc = file_acquire(fs, nd);
        fs_file *f = nd->file;
        if (rc == 0 && (to_set & FUSE_SET_ATTR_SIZE))
            rc = fs__file_truncate(fs, f, (uint64_t)attr->st_size);
        if (rc == 0) {
            apply_attrs(&f->obj.ino, attr, to_set);
            f->dirty = true;
            /* An open file's change goes out with its data at flush (one
             * version per close, not one per ftruncate or fchmod); a
             * closed file's now. */
            if (nd->opens == 0) rc = fs__file_writeback(fs, &nd->id, f, false);
        }
        if (rc == 0) fill_stat(&nd->id, 0, &f->obj.ino, &st);
        if (nd->file) file_unload(nd);
    } else if (to_set & FUSE_SET_ATTR_SIZE) {
        rc = nd->type == FS_DIR ? -EISDIR : -EINVAL;
    } else {
        fs_obj o;
        fs__obj_init(&o);
        recent_drop(nd);
        rc = fs__obj_get(fs, &nd->id, &o);
        if (rc == 0) {
            apply_attrs(&o.ino, attr, to_set);
            rc = fs__obj_put(fs, &nd->id, &o.ino, kv_buf_slice(&o.ctx), false,
                             NULL);
        }
        if (rc == 0) fill_stat(&nd->id, 0, &o.ino, &st);
        fs__obj_release(&o);
    }
    pthread_mutex_unlock(&nd->lock);
    if (rc == -EISDIR || rc == -EINVAL || rc == -EFBIG)
        fuse_reply_err(req, -rc);
    else if (rc)
        fuse_reply_err(req, fs__errno(fs, rc, "setattr", &nd->id));
    else
        fuse_reply_attr(req, &st, fs->o.attr_timeout);
}

/* ---- creating and removing names ---- */

static void lock_two(fs_node *a, fs_node *b) {
    if (a == b) {
        pthread_mutex_lock(&a->lock);
    } else if (a->ino < b->ino) {
        pthread_mutex_lock(&a->lock);
        pthread_mutex_lock(&b->lock);
    } else {
        pthread_mutex_lock(&b->lock);
        pthread_mutex_lock(&a->lock);
    }
}

static void unlock_two(fs_node *a, fs_node *b) {
    pthread_mutex_unlock(&a->lock);
    if (a != b) pthread_mutex_unlock(&b->lock);
}

/* rmdir's half, and a rename's over a directory: if directory id is
 * empty (read into v), mark it removed, before its name goes: a mount
 * still holding it (a cwd, a cached name) can then add nothing to it,
 * which would go with it. -ENOTEMPTY otherwise. A directory already
 * deleted counts as empty (its name dangles). */
static int remove_empty_dir(qfs_fs *fs, fs_dview *v, const fs_id *id) {
    v->id = *id;
    int rc = fs__dview_all(fs, v);
    if (rc == 0 && fs__dview_count(v) > 0) rc = -ENOTEMPTY;
    if (rc == KV_ENOTFOUND) rc = 0;
    if (rc == 0) rc = fs__dview_remove_dir(fs, v);
    if (rc == 0) recent_forget(fs, id);
    return rc;
}

/* Errors of name operations: plain errnos pass, store errors map. */
static int name_err(qfs_fs *fs, int rc, const char *what, const fs_id *id) {
    if (rc < 0 && rc > -4096) return -rc;
    return fs__errno(fs, rc, what, id);
}

/* Make a new object of type t named name in parent, reply with its entry
 * (and, for create, open it). */
static void make_object(fuse_req_t req, fuse_ino_t parent, const char *name,
                        uint8_t t, mode_t mode, const char *target,
                        struct fuse_file_info *fi) {
    qfs_fs *fs = fs_of(req);
    int err;
    if (!name_ok(name, &err)) {
        fuse_reply_err(req, err);
        return;
    }
    fs_node *dn = node_of(req, parent);
    if (!dn) return;
    const struct fuse_ctx *cx = fuse_req_ctx(req);
    fs_inode ino;
    fs_inode_init(&ino, (fs_type)t);
    int64_t now = kv_wall_ns();
    ino.mode = t == FS_SYMLINK ? 0777 : (mode & 07777 & ~cx->umask);
    ino.uid = cx->uid;
    ino.gid = cx->gid;
    ino.atime_ns = ino.mtime_ns = ino.ctime_ns = now;
    int rc = 0;
    if (t == FS_SYMLINK) {
        size_t len = strlen(target);
        if (len > FS_SYMLINK_MAX) rc = -ENAMETOOLONG;
        if (rc == 0) rc = kv_buf_set(&ino.data, target, len);
        ino.size = len;
    }
    fs_id id;
    fs_id_random(&id);
    pthread_mutex_lock(&dn->lock);
    fs_dview *v = rc == 0 ? recent_take(fs, dn) : NULL;
    if (rc == 0 && !v) rc = -ENOMEM;
    shown old;
    if (rc == 0) {
        rc = resolve(fs, v, name, &old);
        rc = rc == 0 ? -EEXIST : rc == KV_ENOTFOUND ? 0 : rc;
    }
    const fs_inode *attrs = rc == 0 ? fs__dview_attrs(v) : NULL;
    if (attrs && (attrs->mode & S_ISGID)) {
        ino.gid = attrs->gid; /* BSD group semantics under setgid */
        if (t == FS_DIR) ino.mode |= S_ISGID;
    }
    /* The object first, then its name: a crash between leaves an object
     * nothing names (reclaimable), never a name without an object. */
    kv_buf newctx = KV_BUF_INIT;
    uint64_t put_ver = 0;
    if (rc == 0)
        rc = fs__obj_put_ver(fs, &id, &ino, kv_slice_make(NULL, 0), false,
                             &newctx, &put_ver);
    if (rc == 0) rc = fs__dview_add(fs, v, name, &id, t, NULL);
    if (rc == 0) rc = fs__dview_put(fs, v, false);
    recent_keep(dn, v);
    pthread_mutex_unlock(&dn->lock);
    if (rc) {
        kv_buf_release(&newctx);
        fuse_reply_err(req, name_err(fs, rc, "create", &dn->id));
        fs_inode_release(&ino);
        return;
    }
    fs_node *nd = fs__node_get(fs, &id, 0, t, 1);
    if (!nd) {
        fuse_reply_err(req, ENOMEM);
        fs_inode_release(&ino);
        kv_buf_release(&newctx);
        return;
    }
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = nd->ino;
    e.attr_timeout = fs->o.attr_timeout;
    e.entry_timeout = fs->o.entry_timeout;
    fill_stat(&id, 0, &ino, &e.attr);
    fs_file *f = fi ? kv_calloc(1, sizeof *f) : NULL;
    if (!f) {
        if (!fi && fuse_reply_entry(req, &e) != 0) fs__node_forget(fs, nd, 1);
        if (fi) {
            fuse_reply_err(req, ENOMEM);
            fs__node_forget(fs, nd, 1);
        }
        fs_inode_release(&ino);
        kv_buf_release(&newctx);
        return;
    }
    /* create: the new file is open; its state is what was just written,
     * with the context that put returned. */
    fs__obj_init(&f->obj);
    kv_buf_init(&f->cached);
    fs_inode_release(&f->obj.ino);
    f->put_ver = put_ver;
    f->obj.ino = ino; /* moved */
    kv_buf_release(&f->obj.ctx);
    f->obj.ctx = newctx; /* moved */
    f->ctx_stale = newctx.len == 0;
    pthread_mutex_lock(&nd->lock);
    if (nd->file) {
        fs__file_free(f); /* cannot happen: the id is new */
    } else {
        nd->file = f;
    }
    nd->opens++;
    pthread_mutex_unlock(&nd->lock);
    fs__node_hold(fs, nd); /* until release */
    fi->fh = 0;
    if (fuse_reply_create(req, &e, fi) != 0) {
        pthread_mutex_lock(&nd->lock);
        nd->opens--;
        file_unload(nd);
        pthread_mutex_unlock(&nd->lock);
        fs__node_put(fs, nd);
        fs__node_forget(fs, nd, 1);
    }
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
                     mode_t mode) {
    make_object(req, parent, name, FS_DIR, mode, NULL, NULL);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
                      mode_t mode, struct fuse_file_info *fi) {
    make_object(req, parent, name, FS_FILE, mode, NULL, fi);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
                     mode_t mode, dev_t rdev) {
    (void)rdev;
    if (!S_ISREG(mode)) {
        /* Device nodes, FIFOs and sockets are not stored (docs). */
        fuse_reply_err(req, EPERM);
        return;
    }
    make_object(req, parent, name, FS_FILE, mode, NULL, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
                       const char *name) {
    make_object(req, parent, name, FS_SYMLINK, 0777, link, NULL);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
                    const char *newname) {
    (void)ino;
    (void)newparent;
    (void)newname;
    fuse_reply_err(req, EPERM); /* no hard links (docs) */
}

/* A name of id is gone. Its object stays for the sweep to reclaim once
 * nothing names it (another name may: two mounts renaming one file at
 * once); if it is open here, its last release writes nothing back. */
static void name_gone(qfs_fs *fs, const fs_id *id) {
    fs_node *nd = fs__node_get(fs, id, 0, FS_FILE, 0);
    if (!nd) return;
    pthread_mutex_lock(&nd->lock);
    if (nd->opens > 0) nd->unlinked = true;
    pthread_mutex_unlock(&nd->lock);
    fs__node_put(fs, nd);
}

/* Resolve a file's versions: keep = the version that stays (0: every one
 * but `drop`). The first kept version is written with the context of
 * everything read, so it supersedes all; any other kept version is
 * written again without a context, so it stays a sibling (its mtime, and
 * so its rank, unchanged). */
static int settle_versions(qfs_fs *fs, const fs_id *id, uint64_t keep,
                           uint64_t drop) {
    fs_node *nd = fs__node_get(fs, id, 0, FS_FILE, 0);
    if (!nd) return -ENOMEM;
    pthread_mutex_lock(&nd->lock);
    fs_obj o;
    fs__obj_init(&o);
    int rc = fs__obj_get(fs, id, &o);
    const fs_inode *first = NULL;
    if (rc == 0) {
        first = keep ? version_in(&o, keep)
                     : (o.ver != drop ? &o.ino
                        : o.nsib > 0  ? &o.sibs[0]
                                      : NULL);
        if (!first || (!keep && !version_in(&o, drop))) rc = KV_ENOTFOUND;
    }
    /* The versions that stay go out again first, each as a new sibling;
     * only then the one with the full context (read before them, so it
     * does not cover them). A failure half-way loses nothing. */
    for (size_t i = 0; rc == 0 && !keep && i <= o.nsib; i++) {
        const fs_inode *v = i == 0 ? &o.ino : &o.sibs[i - 1];
        uint64_t ver = i == 0 ? o.ver : o.sib_vers[i - 1];
        if (v == first || ver == drop) continue;
        rc = fs__obj_put(fs, id, v, kv_slice_make(NULL, 0), false, NULL);
    }
    if (rc == 0)
        rc = fs__obj_put(fs, id, first, kv_buf_slice(&o.ctx), false, NULL);
    if (rc == 0 && nd->file && !nd->file->dirty && nd->opens == 0) {
        fs__file_free(nd->file); /* re-read at the next open */
        nd->file = NULL;
    }
    pthread_mutex_unlock(&nd->lock);
    fs__obj_release(&o);
    fs__node_put(fs, nd);
    return rc;
}

static void remove_name(fuse_req_t req, fuse_ino_t parent, const char *name,
                        bool rmdir) {
    qfs_fs *fs = fs_of(req);
    int err;
    if (!name_ok(name, &err)) {
        fuse_reply_err(req, err);
        return;
    }
    fs_node *dn = node_of(req, parent);
    if (!dn) return;
    fs_id cid;
    fs_dview child;
    fs__dview_init(&child, &dn->id);
    pthread_mutex_lock(&dn->lock);
    fs_dview *v = recent_take(fs, dn);
    int rc = v ? 0 : -ENOMEM;
    shown e;
    if (rc == 0) rc = resolve_recent(fs, v, name, &e);
    if (rc == 0) {
        cid = e.id;
        if (rmdir && e.type != FS_DIR) rc = -ENOTDIR;
        if (!rmdir && e.type == FS_DIR) rc = -EISDIR;
    }
    if (rc == 0 && e.ver) {
        /* name.conflict-N of a file's version: discard that version. */
        recent_keep(dn, v);
        pthread_mutex_unlock(&dn->lock);
        rc = settle_versions(fs, &cid, 0, e.ver);
        fuse_reply_err(req, rc ? name_err(fs, rc, "remove", &cid) : 0);
        return;
    }
    if (rc == 0 && rmdir) rc = remove_empty_dir(fs, &child, &cid);
    if (rc == 0) {
        /* Remove exactly the entry shown under this name. */
        char ename[FS_NAME_MAX + 1];
        snprintf(ename, sizeof ename, "%s", e.name);
        fs__dview_remove(v, ename, &cid);
        rc = fs__dview_put(fs, v, false);
    }
    recent_keep(dn, v);
    pthread_mutex_unlock(&dn->lock);
    if (rc == 0) name_gone(fs, &cid);
    fuse_reply_err(req, rc ? name_err(fs, rc, "remove", &dn->id) : 0);
    fs__dview_release(&child);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
    remove_name(req, parent, name, false);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
    remove_name(req, parent, name, true);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                      fuse_ino_t newparent, const char *newname,
                      unsigned int flags) {
    qfs_fs *fs = fs_of(req);
    int err;
    if (!name_ok(name, &err) || !name_ok(newname, &err)) {
        fuse_reply_err(req, err);
        return;
    }
    if (flags & ~RENAME_NOREPLACE) {
        fuse_reply_err(req, EINVAL); /* RENAME_EXCHANGE, WHITEOUT */
        return;
    }
    fs_node *sn = fs__node_by_ino(fs, parent);
    fs_node *tn = fs__node_by_ino(fs, newparent);
    if (!sn || !tn) {
        fuse_reply_err(req, ESTALE);
        return;
    }
    fs_dview victim;
    fs__dview_init(&victim, &sn->id);
    bool replaced = false;
    fs_id vid, id;
    lock_two(sn, tn);
    fs_dview *sv = recent_take(fs, sn);
    fs_dview *tv = sn == tn ? sv : recent_take(fs, tn);
    int rc = sv && tv ? 0 : -ENOMEM;
    shown se, te;
    if (rc == 0) rc = resolve_recent(fs, sv, name, &se);
    int trc = rc == 0 ? resolve(fs, tv, newname, &te) : rc;
    if (rc == 0 && trc != 0 && trc != KV_ENOTFOUND) rc = trc;
    bool target = rc == 0 && trc == 0;
    uint8_t stype = 0;
    char sname[FS_NAME_MAX + 1];
    if (rc == 0 && (se.ver || (target && te.ver))) {
        /* A file's conflict version: `mv x.conflict-N x` makes it the
         * value; anything else with versions is not a rename here (EXDEV:
         * mv copies it instead). */
        bool promote = se.ver && target && !te.ver &&
                       memcmp(se.id.b, te.id.b, FS_ID_LEN) == 0;
        if (tv != sv) recent_keep(tn, tv);
        recent_keep(sn, sv);
        unlock_two(sn, tn);
        rc = promote ? settle_versions(fs, &se.id, se.ver, 0) : -EXDEV;
        fuse_reply_err(req, rc ? name_err(fs, rc, "rename", &se.id) : 0);
        return;
    }
    if (rc == 0) {
        id = se.id;
        stype = se.type;
        snprintf(sname, sizeof sname, "%s", se.name);
        if (target && memcmp(te.id.b, id.b, FS_ID_LEN) == 0) {
            rc = 1; /* same object: nothing to do */
        } else if (target) {
            vid = te.id;
            if (flags & RENAME_NOREPLACE)
                rc = -EEXIST;
            else if (te.type == FS_DIR && stype != FS_DIR)
                rc = -EISDIR;
            else if (te.type != FS_DIR && stype == FS_DIR)
                rc = -ENOTDIR;
            else if (te.type == FS_DIR)
                rc = remove_empty_dir(fs, &victim, &vid);
            replaced = rc == 0;
        }
    }
    /* The new name first, then the old one goes: a failure between leaves
     * two names for the object, never none. The entry shown under newname
     * is replaced; its rivals (other objects created under that name
     * elsewhere at the same time) stay. */
    if (rc == 0)
        rc = fs__dview_add(fs, tv, newname, &id, stype, replaced ? &vid : NULL);
    if (rc == 0 && sn != tn) rc = fs__dview_put(fs, tv, false);
    if (rc == 0) {
        /* Within one directory under the same name (a rival made the
         * value), the add above already took the old entry's place. */
        if (sn != tn || strcmp(sname, newname) != 0)
            fs__dview_remove(sv, sname, &id);
        rc = fs__dview_put(fs, sv, false);
    }
    if (tv != sv) recent_keep(tn, tv);
    recent_keep(sn, sv);
    unlock_two(sn, tn);
    if (rc == 1) rc = 0;
    if (rc == 0 && replaced) name_gone(fs, &vid);
    fuse_reply_err(req, rc ? name_err(fs, rc, "rename", &sn->id) : 0);
    fs__dview_release(&victim);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
    qfs_fs *fs = fs_of(req);
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    fs_obj o;
    fs__obj_init(&o);
    int rc = fs__obj_get(fs, &nd->id, &o);
    if (rc == 0 && o.ino.type != FS_SYMLINK) rc = -EINVAL;
    if (rc == 0) rc = kv_buf_append(&o.ino.data, "", 1);
    if (rc)
        fuse_reply_err(req, name_err(fs, rc, "readlink", &nd->id));
    else
        fuse_reply_readlink(req, (const char *)o.ino.data.ptr);
    fs__obj_release(&o);
}

/* ---- directories ---- */

/* A directory listing as of opendir, shown names and all. */
typedef struct fs_lentry {
    char *name; /* as shown: x or x.conflict-N */
    fs_id id;
    uint64_t ver;
    uint8_t type;
    bool have_st;
    struct stat st;
} fs_lentry;

typedef struct fs_listing {
    size_t n;
    fs_lentry *e;
} fs_listing;

static void listing_free(fs_listing *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) kv_free(l->e[i].name);
    kv_free(l->e);
    kv_free(l);
}

static int listing_add(fs_listing *l, size_t *cap, const char *name,
                       const shown *sh) {
    if (l->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        void *e = kv_realloc(l->e, ncap * sizeof *l->e);
        if (!e) return -ENOMEM;
        l->e = e;
        *cap = ncap;
    }
    char *copy = kv_strdup(name);
    if (!copy) return -ENOMEM;
    l->e[l->n].name = copy;
    l->e[l->n].id = sh->id;
    l->e[l->n].ver = sh->ver;
    l->e[l->n].type = sh->type;
    l->e[l->n].have_st = sh->have_st;
    l->e[l->n].st = sh->st;
    l->n++;
    return 0;
}

static int listing_make(qfs_fs *fs, const fs_inode *dir, fs_listing **out) {
    fs_listing *l = kv_calloc(1, sizeof *l);
    shown *all = kv_calloc(MAX_SHOWN, sizeof *all);
    size_t cap = 0;
    dset ds = {{dir}, 1};
    int rc = l && all ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < dir->nentries;) {
        const char *name = dir->entries[i].name;
        size_t same = 1;
        while (i + same < dir->nentries &&
               strcmp(dir->entries[i + same].name, name) == 0)
            same++;
        size_t n = 1;
        rc = shown_of(fs, &ds, name, all, MAX_SHOWN, &n);
        for (size_t k = 0; rc == 0 && k < n; k++) {
            char buf[FS_NAME_MAX + 32];
            if (k == 0)
                snprintf(buf, sizeof buf, "%s", name);
            else
                snprintf(buf, sizeof buf, "%s.conflict-%zu", name, k);
            rc = listing_add(l, &cap, buf, &all[k]);
        }
        i += same;
    }
    kv_free(all);
    if (rc) {
        listing_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi) {
    qfs_fs *fs = fs_of(req);
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    fs_dview v;
    fs__dview_init(&v, &nd->id);
    fs_listing *l = NULL;
    int rc = fs__dview_all(fs, &v);
    const fs_inode *all = rc == 0 ? fs__dview_entries(&v) : NULL;
    if (rc == 0 && !all) rc = -ENOMEM;
    if (rc == 0) rc = listing_make(fs, all, &l);
    recent_offer(nd, &v);
    if (rc) {
        fuse_reply_err(req, name_err(fs, rc, "opendir", &nd->id));
        return;
    }
    fi->fh = (uint64_t)(uintptr_t)l;
    if (fuse_reply_open(req, fi) != 0) listing_free(l);
}

/* readdir and readdirplus (each entry with its attributes, so ls -l
 * needs no lookup and getattr per name; every entry handed over that way
 * counts as a lookup of its node). Offsets: 1 ".", 2 "..", 3 + i the i-th
 * entry of the listing. */
static void list_entries(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                         struct fuse_file_info *fi, bool plus) {
    qfs_fs *fs = fs_of(req);
    fs_listing *l = (fs_listing *)(uintptr_t)fi->fh;
    char *buf = kv_malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0;
    for (off_t i = off; (size_t)i < l->n + 2; i++) {
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        const char *name = i == 0 ? "." : "..";
        fs_node *nd = NULL;
        if (i < 2) {
            e.attr.st_ino = i == 0 ? ino : 1;
            e.attr.st_mode = S_IFDIR;
        } else {
            const fs_lentry *le = &l->e[i - 2];
            name = le->name;
            e.attr.st_ino = stable_ino(&le->id, le->ver);
            e.attr.st_mode = type_bits(le->type);
            /* Without attributes (a dangling name) an entry goes as a
             * plain one; the kernel looks it up if it needs to. */
            if (plus && le->have_st) {
                nd = fs__node_get(fs, &le->id, le->ver, le->type, 1);
                if (!nd) break;
                e.ino = nd->ino;
                e.attr = le->st;
                e.attr_timeout = fs->o.attr_timeout;
                e.entry_timeout = fs->o.entry_timeout;
            }
        }
        size_t need = plus ? fuse_add_direntry_plus(
                                 req, buf + used, size - used, name, &e, i + 1)
                           : fuse_add_direntry(req, buf + used, size - used,
                                               name, &e.attr, i + 1);
        if (need > size - used) {
            if (nd) fs__node_forget(fs, nd, 1);
            break;
        }
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    kv_free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
    list_entries(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
                           off_t off, struct fuse_file_info *fi) {
    list_entries(req, ino, size, off, fi, true);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
                        struct fuse_file_info *fi) {
    (void)datasync;
    (void)fi;
    qfs_fs *fs = fs_of(req);
    fs_node *dn = node_of(req, ino);
    if (!dn) return;
    /* Directory changes went out unsynced; the objects they wrote, written
     * again synced, make them durable on W replicas. */
    pthread_mutex_lock(&dn->lock);
    recent_drop(dn);
    int rc = fs__dir_sync(fs, dn);
    pthread_mutex_unlock(&dn->lock);
    fuse_reply_err(req, rc ? name_err(fs, rc, "fsyncdir", &dn->id) : 0);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
                          struct fuse_file_info *fi) {
    (void)ino;
    listing_free((fs_listing *)(uintptr_t)fi->fh);
    fuse_reply_err(req, 0);
}

/* ---- files ---- */

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    qfs_fs *fs = fs_of(req);
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    int rc = 0;
    if (nd->ver &&
        ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))) {
        fuse_reply_err(req, EROFS); /* a conflict version is read-only */
        return;
    }
    pthread_mutex_lock(&nd->lock);
    if (nd->file && !nd->file->dirty && nd->opens == 0) {
        /* Close-to-open: a clean state nobody has open is re-read, to see
         * what other mounts wrote and closed since. (While a handle has
         * it open, its state stays: another open shares it.) */
        fs__file_free(nd->file);
        nd->file = NULL;
    }
    rc = file_acquire(fs, nd);
    if (rc == 0 && nd->file->obj.ino.type == FS_DIR) rc = -EISDIR;
    /* O_TRUNC marks mtime and ctime even when the file is already empty
     * (POSIX, and what ext4 does). */
    if (rc == 0 && (fi->flags & O_TRUNC))
        rc = fs__file_truncate(fs, nd->file, 0);
    if (rc == 0) nd->opens++;
    if (rc) file_unload(nd);
    pthread_mutex_unlock(&nd->lock);
    if (rc) {
        fuse_reply_err(req, name_err(fs, rc, "open", &nd->id));
        return;
    }
    fs__node_hold(fs, nd); /* until release */
    fi->fh = 0;
    if (fuse_reply_open(req, fi) != 0) {
        pthread_mutex_lock(&nd->lock);
        nd->opens--;
        file_unload(nd);
        pthread_mutex_unlock(&nd->lock);
        fs__node_put(fs, nd);
    }
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
    (void)fi;
    qfs_fs *fs = fs_of(req);
    fs_node *nd = fs__node_by_ino(fs, ino);
    if (!nd || !nd->file) {
        fuse_reply_err(req, EBADF);
        return;
    }
    kv_buf out = KV_BUF_INIT;
    pthread_mutex_lock(&nd->lock);
    int rc = nd->file ? fs__file_read(fs, nd->file, (uint64_t)off, size, &out)
                      : -EBADF;
    pthread_mutex_unlock(&nd->lock);
    if (rc)
        fuse_reply_err(req, name_err(fs, rc, "read", &nd->id));
    else
        fuse_reply_buf(req, (const char *)out.ptr, out.len);
    kv_buf_release(&out);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
                     size_t size, off_t off, struct fuse_file_info *fi) {
    qfs_fs *fs = fs_of(req);
    fs_node *nd = fs__node_by_ino(fs, ino);
    if (!nd) {
        fuse_reply_err(req, EBADF);
        return;
    }
    pthread_mutex_lock(&nd->lock);
    int rc = -EBADF;
    if (nd->file) {
        uint64_t at =
            (fi->flags & O_APPEND) ? nd->file->obj.ino.size : (uint64_t)off;
        rc = fs__file_write(fs, nd->file, at, buf, size);
        /* Chunks stored for a long write get their inode written now and
         * then, so a sweep sees them referred to (sweep.c). */
        if (rc == 0 && fs__file_due(fs, nd->file, kv_wall_ns()))
            rc = fs__file_writeback(fs, &nd->id, nd->file, false);
        fs__pending_note(nd);
    }
    pthread_mutex_unlock(&nd->lock);
    if (rc)
        fuse_reply_err(req, name_err(fs, rc, "write", &nd->id));
    else
        fuse_reply_write(req, size);
}

static int writeback(qfs_fs *fs, fs_node *nd, bool sync) {
    if (nd->ver) return 0; /* a conflict version: read-only, nothing to do */
    pthread_mutex_lock(&nd->lock);
    int rc = nd->file ? fs__file_writeback(fs, &nd->id, nd->file, sync) : 0;
    fs__pending_note(nd);
    pthread_mutex_unlock(&nd->lock);
    return rc;
}

static void op_flush(fuse_req_t req, fuse_ino_t ino,
                     struct fuse_file_info *fi) {
    (void)fi;
    qfs_fs *fs = fs_of(req);
    fs_node *nd = fs__node_by_ino(fs, ino);
    int rc = nd ? writeback(fs, nd, false) : 0;
    fuse_reply_err(req, rc ? name_err(fs, rc, "flush", &nd->id) : 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
                     struct fuse_file_info *fi) {
    (void)datasync;
    (void)fi;
    qfs_fs *fs = fs_of(req);
    fs_node *nd = fs__node_by_ino(fs, ino);
    int rc = nd ? writeback(fs, nd, true) : 0;
    fuse_reply_err(req, rc ? name_err(fs, rc, "fsync", &nd->id) : 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
                       struct fuse_file_info *fi) {
    (void)fi;
    qfs_fs *fs = fs_of(req);
    fs_node *nd = fs__node_by_ino(fs, ino);
    if (!nd) {
        fuse_reply_err(req, 0);
        return;
    }
    pthread_mutex_lock(&nd->lock);
    int rc = 0;
    if (nd->opens > 0) nd->opens--;
    if (nd->opens == 0 && nd->file) {
        if (!nd->unlinked)
            rc = fs__file_writeback(fs, &nd->id, nd->file, false);
        if (rc) fs__errno(fs, rc, "write-back at release", &nd->id);
        nd->file->dirty = false; /* release cannot report; logged above */
        file_unload(nd);
        fs__pending_note(nd);
        nd->unlinked = false;
    }
    pthread_mutex_unlock(&nd->lock);
    fs__node_put(fs, nd); /* the open's hold */
    fuse_reply_err(req, 0);
}

/* ---- the rest ---- */

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    qfs_fs *fs = fs_of(req);
    fs_node *nd = fs__node_by_ino(fs, ino);
    if (nd) fs__node_forget(fs, nd, nlookup);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
                            struct fuse_forget_data *forgets) {
    qfs_fs *fs = fs_of(req);
    for (size_t i = 0; i < count; i++) {
        fs_node *nd = fs__node_by_ino(fs, forgets[i].ino);
        if (nd) fs__node_forget(fs, nd, forgets[i].nlookup);
    }
    fuse_reply_none(req);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
    (void)ino;
    /* The cluster's capacity is not known here; report a large, fixed
     * amount so tools that check free space proceed (docs). */
    struct statvfs sv;
    memset(&sv, 0, sizeof sv);
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    sv.f_blocks = 1ull << 32;
    sv.f_bfree = 1ull << 31;
    sv.f_bavail = 1ull << 31;
    sv.f_files = 1ull << 32;
    sv.f_ffree = 1ull << 31;
    sv.f_favail = 1ull << 31;
    sv.f_namemax = FS_NAME_MAX;
    fuse_reply_statfs(req, &sv);
}

#define QFS_XATTR "user.quorumfs."
#define QFS_XATTR_VCLOCK "user.quorumfs.vclock"
#define QFS_XATTR_SIBLINGS "user.quorumfs.siblings"
#define QFS_XATTR_SWEEP "user.quorumfs.sweep" /* the root's: sweep.c */

/* The read-only xattrs that show a file's causal state: its context as
 * "actor:counter" pairs (actors in hex), and how many versions it has. */
static int qfs_xattr(qfs_fs *fs, fs_node *nd, const char *name, kv_buf *out) {
    fs_obj o;
    fs__obj_init(&o);
    dvv_ctx *ctx = NULL;
    int rc = fs__obj_get(fs, &nd->id, &o);
    if (rc == 0 && strcmp(name, QFS_XATTR_SIBLINGS) == 0) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%zu", o.nsib + 1);
        rc = kv_buf_set(out, buf, (size_t)n);
    } else if (rc == 0) {
        rc = dvv_ctx_decode(kv_buf_slice(&o.ctx), &ctx);
        kv_buf_reset(out);
        for (size_t i = 0; rc == 0 && i < dvv_ctx_actors(ctx); i++) {
            char buf[64];
            uint64_t a = dvv_ctx_actor(ctx, i);
            int n = snprintf(buf, sizeof buf, "%s%016llx:%llu", i ? "," : "",
                             (unsigned long long)a,
                             (unsigned long long)dvv_ctx_counter(ctx, a));
            rc = kv_buf_append(out, buf, (size_t)n);
        }
    }
    dvv_ctx_free(ctx);
    fs__obj_release(&o);
    return rc;
}

static bool xattr_name_ok(const char *name, int *err) {
    if (strncmp(name, "user.", 5) != 0) {
        *err = ENOTSUP;
        return false;
    }
    if (strlen(name) > FS_XATTR_NAME_MAX) {
        *err = ERANGE;
        return false;
    }
    return true;
}

static ssize_t xattr_find(const fs_inode *ino, const char *name) {
    for (size_t i = 0; i < ino->nxattrs; i++)
        if (strcmp(ino->xattrs[i].name, name) == 0) return (ssize_t)i;
    return -1;
}

/* Change an object's xattrs: set value (remove when value is NULL). */
static int xattr_change(qfs_fs *fs, fs_node *nd, const char *name,
                        const char *value, size_t size, int flags) {
    if (strncmp(name, QFS_XATTR, strlen(QFS_XATTR)) == 0) return -EPERM;
    if (nd->ver) return -EROFS;
    fs_obj tmp;
    fs__obj_init(&tmp);
    pthread_mutex_lock(&nd->lock);
    int rc = 0;
    fs_inode *ino;
    if (nd->type == FS_FILE) {
        rc = file_acquire(fs, nd);
        ino = rc == 0 ? &nd->file->obj.ino : NULL;
    } else {
        recent_drop(nd);
        rc = fs__obj_get(fs, &nd->id, &tmp);
        ino = &tmp.ino;
    }
    ssize_t at = rc == 0 ? xattr_find(ino, name) : -1;
    if (rc == 0) {
        if (!value && at < 0)
            rc = -ENODATA;
        else if (value && at >= 0 && (flags & XATTR_CREATE))
            rc = -EEXIST;
        else if (value && at < 0 && (flags & XATTR_REPLACE))
            rc = -ENODATA;
    }
    if (rc == 0 && value) {
        size_t total = size + strlen(name);
        for (size_t i = 0; i < ino->nxattrs; i++)
            if ((ssize_t)i != at)
                total += ino->xattrs[i].value.len + strlen(ino->xattrs[i].name);
        if (size > FS_XATTR_VALUE_MAX || total > FS_XATTR_TOTAL_MAX)
            rc = -ENOSPC;
    }
    if (rc == 0 && value && at < 0) {
        fs_xattr *x = kv_realloc(ino->xattrs, (ino->nxattrs + 1) * sizeof *x);
        char *copy = kv_strdup(name);
        if (!x || !copy) {
            if (x) ino->xattrs = x;
            kv_free(copy);
            rc = -ENOMEM;
        } else {
            ino->xattrs = x;
            x[ino->nxattrs].name = copy;
            kv_buf_init(&x[ino->nxattrs].value);
            at = (ssize_t)ino->nxattrs++;
        }
    }
    if (rc == 0 && value) rc = kv_buf_set(&ino->xattrs[at].value, value, size);
    if (rc == 0 && !value) {
        kv_free(ino->xattrs[at].name);
        kv_buf_release(&ino->xattrs[at].value);
        memmove(&ino->xattrs[at], &ino->xattrs[at + 1],
                (ino->nxattrs - (size_t)at - 1) * sizeof *ino->xattrs);
        ino->nxattrs--;
    }
    if (rc == 0) {
        ino->ctime_ns = kv_wall_ns();
        if (nd->type == FS_FILE) {
            nd->file->dirty = true;
            rc = fs__file_writeback(fs, &nd->id, nd->file, false);
            file_unload(nd);
        } else {
            rc = fs__obj_put(fs, &nd->id, ino, kv_buf_slice(&tmp.ctx), false,
                             NULL);
        }
    } else if (nd->file) {
        file_unload(nd);
    }
    pthread_mutex_unlock(&nd->lock);
    fs__obj_release(&tmp);
    return rc;
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                        const char *value, size_t size, int flags) {
    qfs_fs *fs = fs_of(req);
    int err;
    if (!xattr_name_ok(name, &err)) {
        fuse_reply_err(req, err);
        return;
    }
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    int rc = xattr_change(fs, nd, name, value ? value : "", size, flags);
    fuse_reply_err(req, rc ? name_err(fs, rc, "setxattr", &nd->id) : 0);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
    qfs_fs *fs = fs_of(req);
    int err;
    if (!xattr_name_ok(name, &err)) {
        fuse_reply_err(req, err);
        return;
    }
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    int rc = xattr_change(fs, nd, name, NULL, 0, 0);
    fuse_reply_err(req, rc ? name_err(fs, rc, "removexattr", &nd->id) : 0);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
                        size_t size) {
    qfs_fs *fs = fs_of(req);
    int err;
    if (!xattr_name_ok(name, &err)) {
        fuse_reply_err(req, err == ENOTSUP ? ENODATA : err);
        return;
    }
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    bool sweep = !strcmp(name, QFS_XATTR_SWEEP) && fs_id_is_root(&nd->id);
    if (sweep || !strcmp(name, QFS_XATTR_VCLOCK) ||
        !strcmp(name, QFS_XATTR_SIBLINGS)) {
        kv_buf v = KV_BUF_INIT;
        int rc = sweep ? fs__sweep_text(fs, &v) : qfs_xattr(fs, nd, name, &v);
        if (rc)
            fuse_reply_err(req, name_err(fs, rc, "getxattr", &nd->id));
        else if (size == 0)
            fuse_reply_xattr(req, v.len);
        else if (size < v.len)
            fuse_reply_err(req, ERANGE);
        else
            fuse_reply_buf(req, (const char *)v.ptr, v.len);
        kv_buf_release(&v);
        return;
    }
    fs_obj o;
    fs__obj_init(&o);
    pthread_mutex_lock(&nd->lock);
    int rc = node_inode(fs, nd, &o);
    pthread_mutex_unlock(&nd->lock);
    ssize_t at = rc == 0 ? xattr_find(&o.ino, name) : -1;
    if (rc)
        fuse_reply_err(req, name_err(fs, rc, "getxattr", &nd->id));
    else if (at < 0)
        fuse_reply_err(req, ENODATA);
    else if (size == 0)
        fuse_reply_xattr(req, o.ino.xattrs[at].value.len);
    else if (size < o.ino.xattrs[at].value.len)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, (const char *)o.ino.xattrs[at].value.ptr,
                       o.ino.xattrs[at].value.len);
    fs__obj_release(&o);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    qfs_fs *fs = fs_of(req);
    fs_node *nd = node_of(req, ino);
    if (!nd) return;
    fs_obj o;
    fs__obj_init(&o);
    kv_buf list = KV_BUF_INIT;
    pthread_mutex_lock(&nd->lock);
    int rc = node_inode(fs, nd, &o);
    pthread_mutex_unlock(&nd->lock);
    for (size_t i = 0; rc == 0 && i < o.ino.nxattrs; i++)
        rc = kv_buf_append(&list, o.ino.xattrs[i].name,
                           strlen(o.ino.xattrs[i].name) + 1);
    if (rc)
        fuse_reply_err(req, name_err(fs, rc, "listxattr", &nd->id));
    else if (size == 0)
        fuse_reply_xattr(req, list.len);
    else if (size < list.len)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, (const char *)list.ptr, list.len);
    kv_buf_release(&list);
    fs__obj_release(&o);
}

static void op_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
        conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
    conn->max_write = 1024 * 1024;
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readlink = op_readlink,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .fsyncdir = op_fsyncdir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .create = op_create,
};

const struct fuse_lowlevel_ops *qfs_fs_ops(void) {
    return &ops;
}

/* ---- open and close ---- */

void qfs_fs_opts_init(qfs_fs_opts *o) {
    memset(o, 0, sizeof *o);
    o->volume = "qfs";
    o->timeout_ms = 5000;
    o->attr_timeout = 1.0;
    o->entry_timeout = 1.0;
    o->sweep_s = 3600;
    o->sweep_grace_s = 900;
}

int qfs_fs_open(const qfs_fs_opts *o, qfs_fs **out) {
    *out = NULL;
    if (!o->connect || !o->volume || !*o->volume ||
        strlen(o->volume) >= sizeof((qfs_fs *)0)->volume ||
        strchr(o->volume, '/') || o->sweep_s < 0 || o->sweep_grace_s < 1)
        return -EINVAL;
    qfs_fs *fs = kv_calloc(1, sizeof *fs);
    if (!fs) return -ENOMEM;
    fs->o = *o;
    snprintf(fs->volume, sizeof fs->volume, "%s", o->volume);
    fs->o.volume = fs->volume;
    pthread_mutex_init(&fs->pool_mu, NULL);
    pthread_mutex_init(&fs->mu, NULL);
    fs->next_ino = 2;
    pthread_mutex_init(&fs->bg_mu, NULL);
    pthread_cond_init(&fs->bg_cv, NULL);
    pthread_mutex_init(&fs->actor_mu, NULL);
    fs->actors = kv_calloc(FS_ACTORS, sizeof *fs->actors);
    if (!fs->actors) {
        pthread_mutex_destroy(&fs->bg_mu);
        pthread_cond_destroy(&fs->bg_cv);
        pthread_mutex_destroy(&fs->actor_mu);
        pthread_mutex_destroy(&fs->mu);
        pthread_mutex_destroy(&fs->pool_mu);
        kv_free(fs);
        return -ENOMEM;
    }
    /* The root directory: made by the first mount of a volume. Two first
     * mounts at once make two siblings, which merge. */
    fs_id root;
    memset(&root, 0, sizeof root);
    fs_obj r;
    fs__obj_init(&r);
    int rc = fs__obj_get(fs, &root, &r);
    if (rc == KV_ENOTFOUND) {
        fs_inode ino;
        fs_inode_init(&ino, FS_DIR);
        ino.mode = 0755;
        ino.uid = getuid();
        ino.gid = getgid();
        ino.atime_ns = ino.mtime_ns = ino.ctime_ns = kv_wall_ns();
        rc = fs__obj_put(fs, &root, &ino, kv_slice_make(NULL, 0), true, NULL);
        fs_inode_release(&ino);
    } else if (rc == 0 && r.ino.type != FS_DIR) {
        kv_error(FS_MOD, "volume '%s': the root object is not a directory",
                 fs->volume);
        rc = KV_ECORRUPT;
    }
    fs__obj_release(&r);
    if (rc == 0 && !fs__node_get(fs, &root, 0, FS_DIR, 1)) rc = -ENOMEM;
    if (rc) {
        kv_error(FS_MOD, "volume '%s': cannot read or make the root: %s",
                 fs->volume, kv_strerror(rc));
        qfs_fs_close(fs);
        return rc;
    }
    if ((rc = fs__bg_start(fs))) {
        qfs_fs_close(fs);
        return rc;
    }
    *out = fs;
    return 0;
}

int qfs_fs_close(qfs_fs *fs) {
    if (!fs) return 0;
    fs__bg_stop(fs);
    int first = 0;
    for (size_t h = 0; h < FS_NODE_BUCKETS; h++) {
        for (fs_node *nd = fs->by_id[h]; nd; nd = nd->next_id) {
            if (!nd->file) continue;
            /* Open and nameless: nothing to write (the sweep takes it). */
            int rc = nd->unlinked
                         ? 0
                         : fs__file_writeback(fs, &nd->id, nd->file, true);
            if (rc && !first) first = rc;
            fs__file_free(nd->file);
            nd->file = NULL;
        }
    }
    fs__nodes_free(fs);
    fs__pool_close(fs);
    pthread_mutex_destroy(&fs->mu);
    pthread_mutex_destroy(&fs->pool_mu);
    pthread_mutex_destroy(&fs->actor_mu);
    pthread_mutex_destroy(&fs->bg_mu);
    pthread_cond_destroy(&fs->bg_cv);
    kv_free(fs->actors);
    kv_free(fs);
    return first;
}
