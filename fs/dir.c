/*
 * Directories as the mount reads and changes them: the objects of a
 * directory's hash trie (fs/obj.h, "shards"), read along one name's path
 * or all of them, changed in memory, and written back, the object that
 * got an add first.
 *
 * A directory's mtime and ctime live in its level-0 object. A change in a
 * deeper shard writes level 0 too only when its mtime is older than
 * FS_DIR_TIME_LAG_NS: creates in a large directory then write one small
 * object each, and the directory's times lag its last change by at most
 * that (docs/ARCHITECTURE.md, "Large directories").
 */
#include "fs/fs_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FS_DIR_TIME_LAG_NS 1000000000ll
#define FS_RIVALS_MAX 64 /* entries of one name an add keeps */

void fs__dview_init(fs_dview *v, const fs_id *id) {
    memset(v, 0, sizeof *v);
    v->id = *id;
    v->add_at = -1;
    fs_inode_init(&v->all, FS_DIR);
}

static void all_drop(fs_dview *v) {
    kv_free(v->all.entries); /* names are the shards' */
    fs_inode_init(&v->all, FS_DIR);
    v->all_ok = false;
}

void fs__dview_release(fs_dview *v) {
    if (!v) return;
    all_drop(v);
    for (size_t i = 0; i < v->n; i++) fs__obj_release(&v->sh[i].obj);
    kv_free(v->sh);
    v->sh = NULL;
    v->n = v->cap = 0;
}

fs_shard *fs__dview_find(fs_dview *v, unsigned level, uint64_t index) {
    for (size_t i = 0; i < v->n; i++)
        if (v->sh[i].level == level && v->sh[i].index == index)
            return &v->sh[i];
    return NULL;
}

const fs_inode *fs__dview_attrs(const fs_dview *v) {
    for (size_t i = 0; i < v->n; i++)
        if (v->sh[i].level == 0) return &v->sh[i].obj.ino;
    return NULL;
}

/* Add the result of reading shard r to v: o (moved) and the read's code;
 * started is when the read began (a copy is kept in place of a newer one
 * only if its read began after that one was written). */
static int shard_add(fs_dview *v, fs_shard_ref r, fs_obj *o, int rc,
                     uint64_t started) {
    bool absent = false;
    if (rc == KV_ENOTFOUND && r.level > 0) {
        /* Never written (or every version deleted): empty, not split. */
        fs__obj_release(o);
        fs__obj_init(o);
        fs_inode_init(&o->ino, FS_DIR);
        absent = true;
        rc = 0;
    } else if (rc == 0 && o->ino.type != FS_DIR) {
        rc = r.level == 0 ? -ENOTDIR : KV_ECORRUPT;
        if (r.level > 0)
            kv_error(FS_MOD, "a directory shard is not a directory");
    }
    if (rc == 0 && v->n == v->cap) {
        size_t ncap = v->cap ? v->cap * 2 : 4;
        fs_shard *sh = kv_realloc(v->sh, ncap * sizeof *sh);
        if (!sh) {
            rc = -ENOMEM;
        } else {
            v->sh = sh;
            v->cap = ncap;
        }
    }
    if (rc) return rc;
    fs_shard *s = &v->sh[v->n++];
    memset(s, 0, sizeof *s);
    s->level = r.level;
    s->index = r.index;
    s->obj = *o; /* moved */
    fs__obj_init(o);
    s->absent = absent;
    s->at_ns = started;
    all_drop(v);
    return 0;
}

/* Read the shards refs[] that v lacks, up to FS_KEYS_MAX at once. */
static int shards_read(qfs_fs *fs, fs_dview *v, const fs_shard_ref *refs,
                       size_t n) {
    kv_buf keys[FS_KEYS_MAX];
    kv_slice ks[FS_KEYS_MAX];
    fs_obj objs[FS_KEYS_MAX];
    int rcs[FS_KEYS_MAX];
    fs_shard_ref want[FS_KEYS_MAX];
    int rc = 0;
    for (size_t at = 0; rc == 0 && at < n; at += FS_KEYS_MAX) {
        size_t m = 0;
        for (size_t i = at; i < n && i < at + FS_KEYS_MAX; i++)
            if (!fs__dview_find(v, refs[i].level, refs[i].index))
                want[m++] = refs[i];
        for (size_t i = 0; i < m; i++) {
            kv_buf_init(&keys[i]);
            fs__obj_init(&objs[i]);
            int r = fs_key_shard(fs->o.volume, &v->id, want[i].level,
                                 want[i].index, &keys[i]);
            ks[i] = kv_buf_slice(&keys[i]);
            if (rc == 0) rc = r;
        }
        uint64_t started = kv_now_ns();
        if (rc == 0 && m) fs__keys_get(fs, ks, m, objs, rcs);
        for (size_t i = 0; i < m; i++) {
            if (rc == 0) rc = shard_add(v, want[i], &objs[i], rcs[i], started);
            fs__obj_release(&objs[i]);
            kv_buf_release(&keys[i]);
        }
    }
    return rc;
}

/* The shard (level, index), from v or read. */
static int shard_get(qfs_fs *fs, fs_dview *v, unsigned level, uint64_t index,
                     fs_shard **out) {
    fs_shard_ref r = {level, index};
    *out = fs__dview_find(v, level, index);
    if (*out) return 0;
    int rc = shards_read(fs, v, &r, 1);
    *out = rc == 0 ? fs__dview_find(v, level, index) : NULL;
    return rc;
}

int fs__dview_path(qfs_fs *fs, fs_dview *v, const char *name) {
    uint64_t h = fs_name_hash(&v->id, name);
    if (v->top_split && !fs__dview_find(v, 0, 0)) {
        /* Level 0 is known to be split (a split is never undone): it and
         * the next object of the path are read at once. */
        fs_shard_ref two[2] = {{0, 0}, {1, fs_shard_index(h, 1)}};
        int rc = shards_read(fs, v, two, 2);
        if (rc) return rc;
    }
    for (unsigned level = 0; level <= FS_SHARD_LEVELS; level++) {
        fs_shard *s;
        int rc = shard_get(fs, v, level, fs_shard_index(h, level), &s);
        if (rc) return rc;
        /* A removed directory (rmdir elsewhere) holds nothing. */
        if (level == 0 && s->obj.ino.removed) return KV_ENOTFOUND;
        if (!s->obj.ino.split) return 0;
    }
    return 0;
}

int fs__dview_all(qfs_fs *fs, fs_dview *v) {
    fs_shard *s;
    int rc = shard_get(fs, v, 0, 0, &s);
    /* Breadth first, each split object's children read at once: v grows
     * behind i as they come. */
    fs_shard_ref kids[FS_SHARD_FANOUT];
    for (size_t i = 0; rc == 0 && i < v->n; i++) {
        if (!v->sh[i].obj.ino.split || v->sh[i].level >= FS_SHARD_LEVELS)
            continue;
        for (uint64_t c = 0; c < FS_SHARD_FANOUT; c++)
            kids[c] = (fs_shard_ref){v->sh[i].level + 1,
                                     (v->sh[i].index << FS_SHARD_BITS) + c};
        rc = shards_read(fs, v, kids, FS_SHARD_FANOUT);
    }
    return rc;
}

size_t fs__dview_path_of(fs_dview *v, const char *name, const fs_inode **out,
                         size_t cap) {
    uint64_t h = fs_name_hash(&v->id, name);
    size_t n = 0;
    for (unsigned level = 0; level <= FS_SHARD_LEVELS && n < cap; level++) {
        fs_shard *s = fs__dview_find(v, level, fs_shard_index(h, level));
        if (!s) break;
        out[n++] = &s->obj.ino;
        if (!s->obj.ino.split) break;
    }
    return n;
}

static int entry_cmp(const void *pa, const void *pb) {
    const fs_dirent *a = pa, *b = pb;
    int c = strcmp(a->name, b->name);
    if (c == 0) c = memcmp(a->id.b, b->id.b, FS_ID_LEN);
    if (c == 0)
        c = a->dot.actor < b->dot.actor ? -1 : a->dot.actor > b->dot.actor;
    if (c == 0)
        c = a->dot.counter < b->dot.counter ? -1
                                            : a->dot.counter > b->dot.counter;
    return c;
}

const fs_inode *fs__dview_entries(fs_dview *v) {
    if (v->all_ok) return &v->all;
    all_drop(v);
    size_t total = 0;
    for (size_t i = 0; i < v->n; i++) total += v->sh[i].obj.ino.nentries;
    if (total && !(v->all.entries = kv_malloc(total * sizeof(fs_dirent))))
        return NULL;
    for (size_t i = 0; i < v->n; i++) {
        const fs_inode *d = &v->sh[i].obj.ino;
        if (d->nentries == 0) continue;
        memcpy(v->all.entries + v->all.nentries, d->entries,
               d->nentries * sizeof(fs_dirent));
        v->all.nentries += d->nentries;
    }
    if (v->n > 1 && total > 1)
        qsort(v->all.entries, total, sizeof(fs_dirent), entry_cmp);
    v->all.entries_cap = total;
    v->all_ok = true;
    return &v->all;
}

/* Remove name's entries of id from every object of v; mark them. */
size_t fs__dview_remove(fs_dview *v, const char *name, const fs_id *id) {
    size_t gone = 0;
    for (size_t i = 0; i < v->n; i++) {
        size_t k = fs_dir_remove(&v->sh[i].obj.ino, name, id);
        if (k) v->sh[i].changed = true;
        gone += k;
    }
    if (gone) all_drop(v);
    return gone;
}

/* ---- actors ----
 *
 * The add-wins set needs every add of one actor to an object to build on
 * all its earlier adds there: an add made from a copy that lacks the
 * actor's last one would reuse its dot, and a merge drops both entries
 * of a dot each side's clock covers but only one side holds. A read can
 * lack this mount's own last add (a lookup that raced it, a sloppy
 * quorum, a put that failed after landing somewhere), so the mount does
 * not trust reads for that: it remembers, per object, the actor it adds
 * with and the counter of its last add, and uses that actor again only
 * when the object as read shows exactly that counter. Otherwise (a stale
 * read, a failed put, or an object it does not remember) it takes a new
 * random actor for the object. Memory is FS_ACTORS slots; a forgotten
 * object costs one more actor in its clock. */

static fs_actor *actor_slot(qfs_fs *fs, const fs_id *dir, unsigned level,
                            uint64_t index) {
    uint64_t h = kv_get_u64(dir->b) ^ (index * 0x9e3779b97f4a7c15ull) ^ level;
    h ^= h >> 29;
    return &fs->actors[h % FS_ACTORS];
}

static bool slot_is(const fs_actor *a, const fs_id *dir, unsigned level,
                    uint64_t index) {
    return a->used && a->level == level && a->index == index &&
           memcmp(a->dir.b, dir->b, FS_ID_LEN) == 0;
}

static uint64_t clock_of(const fs_inode *d, uint64_t actor) {
    for (size_t i = 0; i < d->nclock; i++)
        if (d->clock[i].actor == actor) return d->clock[i].counter;
    return 0;
}

static uint64_t actor_for(qfs_fs *fs, const fs_id *dir, const fs_shard *s) {
    pthread_mutex_lock(&fs->actor_mu);
    fs_actor *a = actor_slot(fs, dir, s->level, s->index);
    uint64_t actor = 0;
    if (slot_is(a, dir, s->level, s->index) &&
        clock_of(&s->obj.ino, a->actor) == a->counter)
        actor = a->actor;
    pthread_mutex_unlock(&fs->actor_mu);
    while (actor == 0) {
        fs_id r;
        fs_id_random(&r); /* aborts if the kernel has no random bytes */
        actor = kv_get_u64(r.b);
    }
    return actor;
}

static void actor_note(qfs_fs *fs, const fs_id *dir, const fs_shard *s,
                       uint64_t actor) {
    pthread_mutex_lock(&fs->actor_mu);
    fs_actor *a = actor_slot(fs, dir, s->level, s->index);
    *a = (fs_actor){*dir, s->index, s->level,
                    true, actor,    clock_of(&s->obj.ino, actor)};
    pthread_mutex_unlock(&fs->actor_mu);
}

static void actor_forget(qfs_fs *fs, const fs_id *dir, const fs_shard *s) {
    pthread_mutex_lock(&fs->actor_mu);
    fs_actor *a = actor_slot(fs, dir, s->level, s->index);
    if (slot_is(a, dir, s->level, s->index)) a->used = false;
    pthread_mutex_unlock(&fs->actor_mu);
}

int fs__dview_add(qfs_fs *fs, fs_dview *v, const char *name, const fs_id *id,
                  uint8_t type, const fs_id *replace) {
    const fs_inode *path[FS_SHARD_LEVELS + 1];
    size_t n = fs__dview_path_of(v, name, path, FS_SHARD_LEVELS + 1);
    if (n == 0) return -EINVAL;           /* the caller read the path first */
    if (path[0]->removed) return -ENOENT; /* rmdir'd (elsewhere) */
    fs_shard *t = NULL;
    for (size_t i = 0; i < v->n && !t; i++)
        if (&v->sh[i].obj.ino == path[n - 1]) t = &v->sh[i];
    fs_inode *d = &t->obj.ino;
    /* The entries of name stay (rivals: objects made under this name
     * elsewhere at the same time) except the one replaced and the object
     * itself. fs_dir_add drops all of name in its object, so the ones to
     * keep there are put back with their dots. */
    fs_dirent keep[FS_RIVALS_MAX];
    size_t nkeep = 0, pos = 0;
    ssize_t k;
    int rc = 0;
    while ((k = fs_dir_find(d, name, &pos)) >= 0) {
        const fs_dirent *e = &d->entries[k];
        if (strcmp(e->name, name) != 0) break;
        if ((replace && !memcmp(e->id.b, replace->b, FS_ID_LEN)) ||
            !memcmp(e->id.b, id->b, FS_ID_LEN))
            continue;
        if (nkeep == FS_RIVALS_MAX) {
            rc = -EMLINK; /* never drop a rival: refuse instead */
            break;
        }
        keep[nkeep] = *e;
        if (!(keep[nkeep].name = kv_strdup(e->name))) {
            rc = -ENOMEM;
            break;
        }
        nkeep++;
    }
    uint64_t actor = actor_for(fs, &v->id, t);
    if (rc == 0) rc = fs_dir_add(d, name, id, type, actor);
    bool added = rc == 0;
    for (size_t i = 0; i < nkeep; i++) {
        if (rc == 0) rc = fs_dir_restore(d, &keep[i]);
        kv_free(keep[i].name);
    }
    if (rc) {
        /* Changed half-way: this copy is not what is stored, nor what
         * should be; it must not be kept or written. */
        if (added) t->stale = true;
        all_drop(v);
        return rc;
    }
    actor_note(fs, &v->id, t, actor);
    t->changed = true;
    v->add_at = (int)(t - v->sh);
    if (d->nentries >= FS_SHARD_SPLIT && t->level < FS_SHARD_LEVELS)
        d->split = true;
    /* The same entries in the objects above (an add there raced a split)
     * go too. */
    for (size_t i = 0; i + 1 < n; i++) {
        for (size_t j = 0; j < v->n; j++) {
            if (&v->sh[j].obj.ino != path[i]) continue;
            fs_inode *up = &v->sh[j].obj.ino;
            size_t gone = fs_dir_remove(up, name, id);
            if (replace) gone += fs_dir_remove(up, name, replace);
            if (gone) v->sh[j].changed = true;
        }
    }
    all_drop(v);
    return 0;
}

static int shard_put(qfs_fs *fs, fs_dview *v, fs_shard *s, bool sync) {
    kv_buf key = KV_BUF_INIT, newctx = KV_BUF_INIT;
    int rc = fs_key_shard(fs->o.volume, &v->id, s->level, s->index, &key);
    if (rc == 0)
        rc = fs__key_put(fs, kv_buf_slice(&key), &s->obj.ino,
                         kv_buf_slice(&s->obj.ctx), sync, &newctx);
    kv_buf_release(&key);
    if (rc) {
        kv_buf_release(&newctx);
        return rc;
    }
    /* The put's context covers what it wrote; without one (another
     * version remains) the shard must be read again before its next
     * change. */
    kv_buf_release(&s->obj.ctx);
    s->obj.ctx = newctx;
    s->stale = newctx.len == 0;
    s->wrote = !sync;
    s->changed = false;
    s->absent = false;
    s->at_ns = kv_now_ns();
    return 0;
}

int fs__dview_put(qfs_fs *fs, fs_dview *v, bool sync) {
    fs_shard *top = NULL;
    bool any = false;
    for (size_t i = 0; i < v->n; i++) {
        any |= v->sh[i].changed;
        if (v->sh[i].level == 0) top = &v->sh[i];
    }
    if (!any) return 0;
    int64_t now = kv_wall_ns();
    if (top &&
        (top->changed || now - top->obj.ino.mtime_ns >= FS_DIR_TIME_LAG_NS ||
         now < top->obj.ino.mtime_ns)) {
        top->obj.ino.mtime_ns = top->obj.ino.ctime_ns = now;
        top->changed = true;
    }
    int rc = 0;
    /* The object with the add first: a failure after it leaves a name
     * twice (an entry also in another object), never none. */
    if (v->add_at >= 0 && (size_t)v->add_at < v->n && v->sh[v->add_at].changed)
        rc = shard_put(fs, v, &v->sh[v->add_at], sync);
    for (size_t i = 0; rc == 0 && i < v->n; i++)
        if (v->sh[i].changed) rc = shard_put(fs, v, &v->sh[i], sync);
    v->add_at = -1;
    /* A put that failed may have landed somewhere after all: the objects
     * not written take new actors. */
    for (size_t i = 0; rc && i < v->n; i++)
        if (v->sh[i].changed) actor_forget(fs, &v->id, &v->sh[i]);
    return rc;
}

void fs__dview_wrote(fs_node *dn, fs_dview *v) {
    for (size_t i = 0; v && i < v->n; i++) {
        fs_shard *s = &v->sh[i];
        if (!s->wrote) continue;
        s->wrote = false;
        if (s->level == 0 || dn->sync_all) continue; /* level 0: always */
        bool have = false;
        for (uint32_t k = 0; k < dn->nunsynced && !have; k++)
            have = dn->unsynced[k].level == s->level &&
                   dn->unsynced[k].index == s->index;
        if (have) continue;
        if (dn->nunsynced == FS_UNSYNCED_MAX) {
            dn->sync_all = true; /* too many to track: all of them */
            continue;
        }
        if (!dn->unsynced && !(dn->unsynced = kv_malloc(
                                   FS_UNSYNCED_MAX * sizeof *dn->unsynced))) {
            dn->sync_all = true;
            continue;
        }
        dn->unsynced[dn->nunsynced++] = (fs_shard_ref){s->level, s->index};
    }
}

int fs__dir_sync(qfs_fs *fs, fs_node *dn) {
    fs_dview v;
    fs__dview_init(&v, &dn->id);
    fs_shard *s;
    int rc = dn->sync_all ? fs__dview_all(fs, &v) : shard_get(fs, &v, 0, 0, &s);
    for (uint32_t k = 0; rc == 0 && !dn->sync_all && k < dn->nunsynced; k++)
        rc =
            shard_get(fs, &v, dn->unsynced[k].level, dn->unsynced[k].index, &s);
    /* Written again, synced: the WAL sync of each replica covers the
     * earlier, unsynced writes of the key. */
    for (size_t i = 0; rc == 0 && i < v.n; i++)
        if (!v.sh[i].absent) rc = shard_put(fs, &v, &v.sh[i], true);
    if (rc == 0) {
        dn->sync_all = false;
        dn->nunsynced = 0;
    }
    fs__dview_release(&v);
    return rc;
}

int fs__dview_remove_dir(qfs_fs *fs, fs_dview *v) {
    fs_shard *top = fs__dview_find(v, 0, 0);
    if (!top || top->absent) return 0; /* gone already */
    top->obj.ino.removed = true;
    top->changed = true;
    return fs__dview_put(fs, v, false);
}

size_t fs__dview_count(const fs_dview *v) {
    size_t n = 0;
    for (size_t i = 0; i < v->n; i++) n += v->sh[i].obj.ino.nentries;
    return n;
}

void fs__dview_expire(fs_dview *v, uint64_t older_than_ns) {
    size_t k = 0;
    for (size_t i = 0; i < v->n; i++) {
        fs_shard *s = &v->sh[i];
        if (s->stale || s->changed || s->at_ns < older_than_ns) {
            fs__obj_release(&s->obj);
            continue;
        }
        v->sh[k++] = *s;
    }
    v->n = k;
    v->add_at = -1;
    all_drop(v);
}

void fs__dview_absorb(fs_dview *dst, fs_dview *src) {
    for (size_t i = 0; i < src->n; i++) {
        fs_shard *s = &src->sh[i];
        if (s->stale || s->changed) continue;
        fs_shard *d = fs__dview_find(dst, s->level, s->index);
        if (d) {
            if (d->at_ns > s->at_ns) continue;
            fs__obj_release(&d->obj);
        } else if (dst->n < FS_DVIEW_CACHE_MAX) {
            if (dst->n == dst->cap) {
                size_t ncap = dst->cap ? dst->cap * 2 : 4;
                fs_shard *sh = kv_realloc(dst->sh, ncap * sizeof *sh);
                if (!sh) continue;
                dst->sh = sh;
                dst->cap = ncap;
            }
            d = &dst->sh[dst->n++];
        } else {
            continue;
        }
        *d = *s; /* moved */
        fs__obj_init(&s->obj);
        s->stale = true; /* nothing left to move */
    }
    all_drop(dst);
    all_drop(src);
}
