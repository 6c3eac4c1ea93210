/*
 * The user-facing iterator: a merge of the memtables and every live table,
 * read as of one sequence number. For each user key it yields the newest
 * entry with seq <= the iterator's sequence, and skips the key when that
 * entry is a tombstone. It holds references on the memtables and the
 * version it reads, so flushes and compactions cannot free them under it.
 *
 * The merge has one child per memtable, one per level-0 table (they
 * overlap), and one per deeper level: a level iterator that walks the
 * level's disjoint, sorted tables one at a time. So a step costs a heap of
 * about a dozen children, not one per table (a 4 GiB store has over a
 * hundred), and only the level-0 tables and each level's current table
 * are pinned in the table cache.
 */
#include "engine/db_int.h"

struct eng_iter {
    eng_db *db;
    uint64_t seq;
    eng_memtable *mem, *imm;
    eng_version *v;
    eng_iiter *it;
    eng_fmeta **pinned; /* files of v whose tables this iterator pins */
    int npinned;
    kv_buf key;     /* current user key, or the key being skipped */
    kv_slice value; /* current value: a view of the merged iterator's entry,
                     * which stays put until the next seek or next */
    bool valid;
    int rc;
};

/* From the merged iterator's position, find the next visible live key:
 * skip entries newer than seq, older versions of it->key when skip is set
 * (the key just yielded), and keys whose newest visible entry is a
 * tombstone. it->key doubles as the key being skipped, so a scan copies
 * each yielded key once into a buffer it reuses, and never copies a
 * value. */
static void settle(eng_iter *it, bool skip) {
    eng_iiter *in = it->it;
    it->valid = false;
    for (; in->ops->valid(in); in->ops->next(in)) {
        kv_slice ik = in->ops->key(in);
        if (!eng__ikey_valid(ik)) {
            kv_error(ENG_MOD, "iterator: malformed internal key");
            it->rc = KV_ECORRUPT;
            return;
        }
        if (eng__ikey_seq(ik) > it->seq) continue;
        kv_slice uk = eng__ikey_user(ik);
        if (skip && kv_slice_eq(uk, kv_buf_slice(&it->key))) continue;
        if (kv_buf_set(&it->key, uk.ptr, uk.len)) {
            it->rc = -ENOMEM;
            return;
        }
        if (eng__ikey_type(ik) == ENG_TYPE_DEL) {
            skip = true; /* hide every older version of this key too */
            continue;
        }
        it->value = in->ops->value(in);
        it->valid = true;
        return;
    }
    it->rc = in->ops->status(in);
}

/* ---- level iterator: the tables of one level >= 1, in key order ---- */

typedef struct level_iter {
    eng_iiter base;
    eng_db *db;
    eng_fmeta **files; /* the level's tables, sorted and disjoint */
    int n;
    int idx;         /* table in use; n: past the end */
    eng_fmeta *held; /* the pinned table behind cur, or NULL */
    eng_iiter *cur;  /* its iterator, or NULL */
    int status;      /* sticky: a table that cannot be read ends the scan */
} level_iter;

static void li_drop(level_iter *li) {
    if (li->cur) li->cur->ops->free(li->cur);
    if (li->held) eng__table_release(li->db, li->held);
    li->cur = NULL;
    li->held = NULL;
}

/* Open table i (or none, at the end). */
static void li_open(level_iter *li, int i) {
    li_drop(li);
    li->idx = i;
    if (li->status || i >= li->n) return;
    eng_table *t;
    int rc = eng__table_acquire(li->db, li->files[i], &t);
    if (rc == 0) {
        li->held = li->files[i];
        if (!(li->cur = eng__table_iter(t, true))) rc = -ENOMEM;
    }
    if (rc) {
        li->status = rc;
        li_drop(li);
    }
}

/* Past tables that are exhausted, to the next entry or the end. */
static void li_skip(level_iter *li) {
    while (li->cur && !li->cur->ops->valid(li->cur)) {
        int rc = li->cur->ops->status(li->cur);
        if (rc) {
            li->status = rc;
            li_drop(li);
            return;
        }
        li_open(li, li->idx + 1);
        if (li->cur) li->cur->ops->seek_first(li->cur);
    }
}

static bool li_valid(eng_iiter *base) {
    level_iter *li = (level_iter *)base;
    return li->status == 0 && li->cur && li->cur->ops->valid(li->cur);
}

static void li_seek_first(eng_iiter *base) {
    level_iter *li = (level_iter *)base;
    li_open(li, 0);
    if (li->cur) li->cur->ops->seek_first(li->cur);
    li_skip(li);
}

static void li_seek(eng_iiter *base, kv_slice target) {
    level_iter *li = (level_iter *)base;
    /* The first table whose largest key is >= target. */
    int lo = 0, hi = li->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (eng__ikey_cmp(kv_buf_slice(&li->files[mid]->largest), target) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    li_open(li, lo);
    if (li->cur) li->cur->ops->seek(li->cur, target);
    li_skip(li);
}

static void li_next(eng_iiter *base) {
    level_iter *li = (level_iter *)base;
    if (!li_valid(base)) return;
    li->cur->ops->next(li->cur);
    li_skip(li);
}

static kv_slice li_key(eng_iiter *base) {
    level_iter *li = (level_iter *)base;
    return li->cur->ops->key(li->cur);
}

static kv_slice li_value(eng_iiter *base) {
    level_iter *li = (level_iter *)base;
    return li->cur->ops->value(li->cur);
}

static int li_status(eng_iiter *base) {
    return ((level_iter *)base)->status;
}

static void li_free(eng_iiter *base) {
    level_iter *li = (level_iter *)base;
    li_drop(li);
    kv_free(li);
}

static const eng_iiter_ops level_iter_ops = {
    .valid = li_valid,
    .seek_first = li_seek_first,
    .seek = li_seek,
    .next = li_next,
    .key = li_key,
    .value = li_value,
    .status = li_status,
    .free = li_free,
};

/* An iterator over files[0..n), which the caller's version keeps alive.
 * NULL on -ENOMEM. */
static eng_iiter *level_iter_new(eng_db *db, eng_fmeta **files, int n) {
    level_iter *li = kv_calloc(1, sizeof *li);
    if (!li) return NULL;
    li->base.ops = &level_iter_ops;
    li->db = db;
    li->files = files;
    li->n = n;
    li->idx = n;
    return &li->base;
}

int eng__db_iter_new(eng_db *db, uint64_t seq, eng_memtable *mem,
                     eng_memtable *imm, eng_version *v, eng_iter **out) {
    *out = NULL;
    eng_iter *it = kv_calloc(1, sizeof *it);
    if (!it) {
        eng__mem_unref(mem);
        eng__mem_unref(imm);
        eng__version_unref(v);
        return -ENOMEM;
    }
    /* From here eng_iter_free releases whatever has been set up. */
    it->db = db;
    it->seq = seq;
    it->mem = mem;
    it->imm = imm;
    it->v = v;
    int ntables = v->nfiles[0], nlevels = 0;
    for (int l = 1; l < ENG_MAX_LEVELS; l++) nlevels += v->nfiles[l] > 0;
    int n = 1 + (imm != NULL) + ntables + nlevels, k = 0;
    eng_iiter **kids = kv_calloc((size_t)n, sizeof *kids);
    it->pinned = kv_calloc((size_t)ntables + 1, sizeof *it->pinned);
    if (!kids || !it->pinned) {
        kv_free(kids);
        eng_iter_free(it);
        return -ENOMEM;
    }
    kids[k++] = eng__mem_iter(mem);
    if (imm) kids[k++] = eng__mem_iter(imm);
    for (int i = 0; i < v->nfiles[0]; i++) {
        eng_fmeta *f = v->files[0][i];
        eng_table *t;
        int rc = eng__table_acquire(db, f, &t);
        if (rc) {
            /* A table that cannot be opened ends iteration with its
             * error (eng_iter_status) rather than hiding its keys. */
            kids[k++] = eng__iiter_empty(rc);
            continue;
        }
        it->pinned[it->npinned++] = f;
        kids[k++] = eng__table_iter(t, true);
    }
    for (int l = 1; l < ENG_MAX_LEVELS; l++)
        if (v->nfiles[l] > 0)
            kids[k++] = level_iter_new(db, v->files[l], v->nfiles[l]);
    /* eng__merge_iter frees every child, and treats a NULL one as -ENOMEM. */
    it->it = eng__merge_iter(kids, n);
    kv_free(kids);
    if (!it->it) {
        eng_iter_free(it);
        return -ENOMEM;
    }
    *out = it;
    return 0;
}

void eng_iter_seek_first(eng_iter *it) {
    it->rc = 0;
    it->it->ops->seek_first(it->it);
    settle(it, false);
}

void eng_iter_seek(eng_iter *it, kv_slice key) {
    kv_buf target = KV_BUF_INIT;
    it->rc = 0;
    if (eng__ikey_append(&target, key, ENG_MAX_SEQ, ENG_TYPE_SEEK)) {
        it->rc = -ENOMEM;
        it->valid = false;
        return;
    }
    it->it->ops->seek(it->it, kv_buf_slice(&target));
    kv_buf_release(&target);
    settle(it, false);
}

bool eng_iter_valid(const eng_iter *it) {
    return it->valid;
}

void eng_iter_next(eng_iter *it) {
    if (!it->valid) return;
    it->it->ops->next(it->it);
    settle(it, true);
}

kv_slice eng_iter_key(const eng_iter *it) {
    return kv_buf_slice(&it->key);
}

kv_slice eng_iter_value(const eng_iter *it) {
    return it->value;
}

int eng_iter_status(const eng_iter *it) {
    return it->rc;
}

void eng_iter_free(eng_iter *it) {
    if (!it) return;
    /* The table iterators go first: they read the pinned tables. */
    if (it->it) it->it->ops->free(it->it);
    for (int i = 0; i < it->npinned; i++)
        eng__table_release(it->db, it->pinned[i]);
    kv_free(it->pinned);
    eng__mem_unref(it->mem);
    eng__mem_unref(it->imm);
    eng__version_unref(it->v);
    kv_buf_release(&it->key);
    kv_free(it);
}
