/*
 * The user-facing iterator: a merge of the memtables and every live table,
 * read as of one sequence number. For each user key it yields the newest
 * entry with seq <= the iterator's sequence, and skips the key when that
 * entry is a tombstone. It holds references on the memtables and the
 * version it reads, so flushes and compactions cannot free them under it,
 * and pins every table of that version in the table cache until it is
 * freed (while more tables than max_open_tables are pinned, the cache holds
 * more open).
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
    kv_buf key;   /* current user key */
    kv_buf value; /* current value (copied: the source may move on) */
    bool valid;
    int rc;
};

/* From the merged iterator's position, find the next visible live key:
 * skip entries newer than seq, versions of the key just yielded (skip), and
 * keys whose newest visible entry is a tombstone. */
static void settle(eng_iter *it, const kv_slice *skip) {
    eng_iiter *in = it->it;
    kv_buf skipbuf = KV_BUF_INIT;
    bool skipping = skip != NULL;
    if (skip && kv_buf_set(&skipbuf, skip->ptr, skip->len)) {
        it->rc = -ENOMEM;
        goto done;
    }
    it->valid = false;
    for (; in->ops->valid(in); in->ops->next(in)) {
        kv_slice ik = in->ops->key(in);
        if (!eng__ikey_valid(ik)) {
            kv_error(ENG_MOD, "iterator: malformed internal key");
            it->rc = KV_ECORRUPT;
            goto done;
        }
        if (eng__ikey_seq(ik) > it->seq) continue;
        kv_slice uk = eng__ikey_user(ik);
        if (skipping && kv_slice_eq(uk, kv_buf_slice(&skipbuf))) continue;
        if (eng__ikey_type(ik) == ENG_TYPE_DEL) {
            /* Hide every older version of this key too. */
            if (kv_buf_set(&skipbuf, uk.ptr, uk.len)) {
                it->rc = -ENOMEM;
                goto done;
            }
            skipping = true;
            continue;
        }
        kv_slice val = in->ops->value(in);
        if (kv_buf_set(&it->key, uk.ptr, uk.len) ||
            kv_buf_set(&it->value, val.ptr, val.len)) {
            it->rc = -ENOMEM;
            goto done;
        }
        it->valid = true;
        goto done;
    }
    it->rc = in->ops->status(in);
done:
    if (it->rc) it->valid = false;
    kv_buf_release(&skipbuf);
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
    int ntables = 0;
    for (int l = 0; l < ENG_MAX_LEVELS; l++) ntables += v->nfiles[l];
    int n = 1 + (imm != NULL) + ntables, k = 0;
    eng_iiter **kids = kv_calloc((size_t)n, sizeof *kids);
    it->pinned = kv_calloc((size_t)ntables + 1, sizeof *it->pinned);
    if (!kids || !it->pinned) {
        kv_free(kids);
        eng_iter_free(it);
        return -ENOMEM;
    }
    kids[k++] = eng__mem_iter(mem);
    if (imm) kids[k++] = eng__mem_iter(imm);
    for (int l = 0; l < ENG_MAX_LEVELS; l++)
        for (int i = 0; i < v->nfiles[l]; i++) {
            eng_fmeta *f = v->files[l][i];
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
    settle(it, NULL);
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
    settle(it, NULL);
}

bool eng_iter_valid(const eng_iter *it) {
    return it->valid;
}

void eng_iter_next(eng_iter *it) {
    if (!it->valid) return;
    kv_slice cur = kv_buf_slice(&it->key);
    it->it->ops->next(it->it);
    settle(it, &cur);
}

kv_slice eng_iter_key(const eng_iter *it) {
    return kv_buf_slice(&it->key);
}

kv_slice eng_iter_value(const eng_iter *it) {
    return kv_buf_slice(&it->value);
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
    kv_buf_release(&it->value);
    kv_free(it);
}
