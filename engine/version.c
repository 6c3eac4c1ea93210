/*
 * Versions and the MANIFEST. A version is an immutable set of live tables
 * per level; readers pin one with a reference, so a compaction can install a
 * new version while old readers finish on the old one. Every change is a
 * version edit, appended to the MANIFEST and fsynced before it is installed.
 * At open, the MANIFEST named by CURRENT is replayed, then a fresh MANIFEST
 * holding the whole state is written and CURRENT is switched to it (write a
 * temporary file, fsync it, rename it over CURRENT, fsync the directory).
 * A table file is unlinked only when no version references it any more and
 * an edit has removed it. Format: docs/engine-format.md, "MANIFEST".
 */
#include "engine/db_int.h"

#include <stdio.h>
#include <stdlib.h>

enum {
    TAG_LOG_NUMBER = 1,
    TAG_NEXT_FILE = 2,
    TAG_LAST_SEQ = 3,
    TAG_DELETE = 4,
    TAG_ADD = 5,
    TAG_STYLE = 6,
};

char *eng__path(const eng_db *db, uint64_t number, const char *suffix) {
    size_t n = strlen(db->dir) + 48;
    char *p = kv_malloc(n);
    if (!p) return NULL;
    if (strcmp(suffix, "MANIFEST") == 0)
        snprintf(p, n, "%s/MANIFEST-%06llu", db->dir,
                 (unsigned long long)number);
    else
        snprintf(p, n, "%s/%06llu.%s", db->dir, (unsigned long long)number,
                 suffix);
    return p;
}

/* ---- files ---- */

eng_fmeta *eng__fmeta_new(void) {
    eng_fmeta *f = kv_calloc(1, sizeof *f);
    if (!f) return NULL;
    atomic_init(&f->refs, 1);
    kv_buf_init(&f->smallest);
    kv_buf_init(&f->largest);
    return f;
}

void eng__fmeta_ref(eng_fmeta *f) {
    atomic_fetch_add(&f->refs, 1);
}

void eng__fmeta_unref(eng_fmeta *f) {
    if (!f || atomic_fetch_sub(&f->refs, 1) != 1) return;
    eng__tcache_forget(f);
    if (f->cache) eng__cache_erase_file(f->cache, f->number);
    if (atomic_load(&f->obsolete) && f->path) {
        int rc = eng__env_unlink(f->path);
        if (rc && rc != -ENOENT)
            kv_warn(ENG_MOD, "cannot remove obsolete table '%s': %s", f->path,
                    kv_strerror(rc));
    }
    kv_buf_release(&f->smallest);
    kv_buf_release(&f->largest);
    kv_free(f->path);
    kv_free(f);
}

int eng__fmeta_from_props(eng_fmeta *f, uint64_t number,
                          const eng_table_props *p) {
    f->number = number;
    f->size = p->file_size;
    f->min_seq = p->min_seq;
    f->max_seq = p->max_seq;
    f->entries = p->entries;
    f->deletions = p->deletions;
    int rc = kv_buf_set(&f->smallest, p->smallest.ptr, p->smallest.len);
    if (rc == 0) rc = kv_buf_set(&f->largest, p->largest.ptr, p->largest.len);
    return rc;
}

int eng__fmeta_open(eng_db *db, eng_fmeta *f) {
    if (!f->path && !(f->path = eng__path(db, f->number, "sst")))
        return -ENOMEM;
    f->cache = db->cache;
    f->tc = &db->tcache;
    /* Opening reads and checks the footer, index and filter: a damaged
     * table is caught here, before a version names it (outputs) or the
     * store opens (recovery). It then stays in the table cache until
     * evicted. */
    eng_table *t;
    int rc = eng__table_acquire(db, f, &t);
    if (rc) {
        f->cache = NULL;
        return rc;
    }
    eng__table_release(db, f);
    return 0;
}

/* ---- edits ---- */

void eng__vedit_init(eng_vedit *e) {
    memset(e, 0, sizeof *e);
}

void eng__vedit_release(eng_vedit *e) {
    for (int i = 0; i < e->nadded; i++) eng__fmeta_unref(e->added[i].f);
    kv_free(e->added);
    kv_free(e->deleted);
    eng__vedit_init(e);
}

int eng__vedit_delete(eng_vedit *e, int level, uint64_t number) {
    if (e->ndeleted == e->cap_deleted) {
        int cap = e->cap_deleted ? e->cap_deleted * 2 : 8;
        void *p = kv_realloc(e->deleted, (size_t)cap * sizeof *e->deleted);
        if (!p) return -ENOMEM;
        e->deleted = p;
        e->cap_deleted = cap;
    }
    e->deleted[e->ndeleted].level = level;
    e->deleted[e->ndeleted].number = number;
    e->ndeleted++;
    return 0;
}

int eng__vedit_add(eng_vedit *e, int level, eng_fmeta *f) {
    if (e->nadded == e->cap_added) {
        int cap = e->cap_added ? e->cap_added * 2 : 8;
        void *p = kv_realloc(e->added, (size_t)cap * sizeof *e->added);
        if (!p) return -ENOMEM;
        e->added = p;
        e->cap_added = cap;
    }
    eng__fmeta_ref(f);
    e->added[e->nadded].level = level;
    e->added[e->nadded].f = f;
    e->nadded++;
    return 0;
}

static int put_tagged(kv_buf *b, int tag, uint64_t v) {
    int rc = kv_buf_put_varint(b, (uint64_t)tag);
    return rc ? rc : kv_buf_put_varint(b, v);
}

int eng__vedit_encode(const eng_vedit *e, kv_buf *out) {
    int rc = 0;
    kv_buf_reset(out);
    if (e->has_style && (rc = put_tagged(out, TAG_STYLE, (uint64_t)e->style)))
        return rc;
    if (e->has_log_number &&
        (rc = put_tagged(out, TAG_LOG_NUMBER, e->log_number)))
        return rc;
    if (e->has_next_file && (rc = put_tagged(out, TAG_NEXT_FILE, e->next_file)))
        return rc;
    if (e->has_last_seq && (rc = put_tagged(out, TAG_LAST_SEQ, e->last_seq)))
        return rc;
    for (int i = 0; i < e->ndeleted; i++) {
        if ((rc = put_tagged(out, TAG_DELETE, (uint64_t)e->deleted[i].level)) ||
            (rc = kv_buf_put_varint(out, e->deleted[i].number)))
            return rc;
    }
    for (int i = 0; i < e->nadded; i++) {
        const eng_fmeta *f = e->added[i].f;
        if ((rc = put_tagged(out, TAG_ADD, (uint64_t)e->added[i].level)) ||
            (rc = kv_buf_put_varint(out, f->number)) ||
            (rc = kv_buf_put_varint(out, f->size)) ||
            (rc = kv_buf_put_lenslice(out, kv_buf_slice(&f->smallest))) ||
            (rc = kv_buf_put_lenslice(out, kv_buf_slice(&f->largest))) ||
            (rc = kv_buf_put_varint(out, f->min_seq)) ||
            (rc = kv_buf_put_varint(out, f->max_seq)) ||
            (rc = kv_buf_put_varint(out, f->entries)) ||
            (rc = kv_buf_put_varint(out, f->deletions)))
            return rc;
    }
    return 0;
}

static int decode_add(kv_reader *r, eng_vedit *e) {
    uint64_t level, number, size, min_seq, max_seq, entries, deletions;
    kv_slice smallest, largest;
    if (kv_get_varint(r, &level) || level >= ENG_MAX_LEVELS ||
        kv_get_varint(r, &number) || kv_get_varint(r, &size) ||
        kv_get_lenslice(r, ENG_MAX_KEY + 8, &smallest) ||
        kv_get_lenslice(r, ENG_MAX_KEY + 8, &largest) ||
        kv_get_varint(r, &min_seq) || kv_get_varint(r, &max_seq) ||
        kv_get_varint(r, &entries) || kv_get_varint(r, &deletions))
        return KV_ECORRUPT;
    if (!eng__ikey_valid(smallest) || !eng__ikey_valid(largest) ||
        eng__ikey_cmp(smallest, largest) > 0 || min_seq > max_seq)
        return KV_ECORRUPT;
    eng_fmeta *f = eng__fmeta_new();
    if (!f) return -ENOMEM;
    f->number = number;
    f->size = size;
    f->min_seq = min_seq;
    f->max_seq = max_seq;
    f->entries = entries;
    f->deletions = deletions;
    int rc = kv_buf_set(&f->smallest, smallest.ptr, smallest.len);
    if (rc == 0) rc = kv_buf_set(&f->largest, largest.ptr, largest.len);
    if (rc == 0) rc = eng__vedit_add(e, (int)level, f);
    eng__fmeta_unref(f); /* the edit holds it now, or it is freed */
    return rc;
}

int eng__vedit_decode(kv_slice rec, eng_vedit *e) {
    kv_reader r = kv_reader_make(rec);
    int rc = 0;
    while (kv_reader_left(&r) > 0 && rc == 0) {
        uint64_t tag, v, level;
        if (kv_get_varint(&r, &tag)) return KV_ECORRUPT;
        switch (tag) {
        case TAG_STYLE:
            if (kv_get_varint(&r, &v) || v > ENG_COMPACT_TIERED)
                return KV_ECORRUPT;
            e->has_style = true;
            e->style = (int)v;
            break;
        case TAG_LOG_NUMBER:
            if (kv_get_varint(&r, &e->log_number)) return KV_ECORRUPT;
            e->has_log_number = true;
            break;
        case TAG_NEXT_FILE:
            if (kv_get_varint(&r, &e->next_file)) return KV_ECORRUPT;
            e->has_next_file = true;
            break;
        case TAG_LAST_SEQ:
            if (kv_get_varint(&r, &e->last_seq) || e->last_seq > ENG_MAX_SEQ)
                return KV_ECORRUPT;
            e->has_last_seq = true;
            break;
        case TAG_DELETE:
            if (kv_get_varint(&r, &level) || level >= ENG_MAX_LEVELS ||
                kv_get_varint(&r, &v))
                return KV_ECORRUPT;
            rc = eng__vedit_delete(e, (int)level, v);
            break;
        case TAG_ADD:
            rc = decode_add(&r, e);
            break;
        default:
            /* Unknown tags cannot be skipped safely: their length is
             * unknown. A newer writer must bump the format version. */
            return KV_ECORRUPT;
        }
    }
    return rc;
}

/* ---- versions ---- */

eng_version *eng__version_new(void) {
    eng_version *v = kv_calloc(1, sizeof *v);
    if (v) atomic_init(&v->refs, 1);
    return v;
}

void eng__version_ref(eng_version *v) {
    atomic_fetch_add(&v->refs, 1);
}

void eng__version_unref(eng_version *v) {
    if (!v || atomic_fetch_sub(&v->refs, 1) != 1) return;
    for (int l = 0; l < ENG_MAX_LEVELS; l++) {
        for (int i = 0; i < v->nfiles[l]; i++) eng__fmeta_unref(v->files[l][i]);
        kv_free(v->files[l]);
    }
    kv_free(v);
}

static int cmp_l0(const void *a, const void *b) {
    const eng_fmeta *x = *(eng_fmeta *const *)a, *y = *(eng_fmeta *const *)b;
    if (x->max_seq != y->max_seq) return x->max_seq > y->max_seq ? -1 : 1;
    return x->number > y->number ? -1 : (x->number < y->number);
}

static int cmp_level(const void *a, const void *b) {
    const eng_fmeta *x = *(eng_fmeta *const *)a, *y = *(eng_fmeta *const *)b;
    return eng__ikey_cmp(kv_buf_slice(&x->smallest),
                         kv_buf_slice(&y->smallest));
}

static bool is_deleted(const eng_vedit *e, int level, uint64_t number) {
    for (int i = 0; i < e->ndeleted; i++)
        if (e->deleted[i].level == level && e->deleted[i].number == number)
            return true;
    return false;
}

static bool is_added(const eng_vedit *e, uint64_t number) {
    for (int i = 0; i < e->nadded; i++)
        if (e->added[i].f->number == number) return true;
    return false;
}

int eng__version_apply(eng_db *db, const eng_version *base, const eng_vedit *e,
                       eng_version **out) {
    *out = NULL;
    eng_version *v = eng__version_new();
    if (!v) return -ENOMEM;
    for (int l = 0; l < ENG_MAX_LEVELS; l++) {
        int n = base ? base->nfiles[l] : 0;
        for (int i = 0; i < e->nadded; i++) n += e->added[i].level == l;
        if (n == 0) continue;
        v->files[l] = kv_malloc((size_t)n * sizeof(eng_fmeta *));
        if (!v->files[l]) {
            eng__version_unref(v);
            return -ENOMEM;
        }
        for (int i = 0; base && i < base->nfiles[l]; i++) {
            eng_fmeta *f = base->files[l][i];
            if (is_deleted(e, l, f->number)) continue;
            eng__fmeta_ref(f);
            v->files[l][v->nfiles[l]++] = f;
        }
        for (int i = 0; i < e->nadded; i++) {
            if (e->added[i].level != l) continue;
            eng__fmeta_ref(e->added[i].f);
            v->files[l][v->nfiles[l]++] = e->added[i].f;
        }
        qsort(v->files[l], (size_t)v->nfiles[l], sizeof(eng_fmeta *),
              l == 0 ? cmp_l0 : cmp_level);
        for (int i = 0; i < v->nfiles[l]; i++)
            v->level_bytes[l] += v->files[l][i]->size;
        /* Levels below L0 must not overlap: check our own invariant. */
        for (int i = 1; l > 0 && i < v->nfiles[l]; i++) {
            kv_slice prev = kv_buf_slice(&v->files[l][i - 1]->largest);
            kv_slice cur = kv_buf_slice(&v->files[l][i]->smallest);
            if (kv_slice_cmp(eng__ikey_user(prev), eng__ikey_user(cur)) >= 0) {
                kv_error(ENG_MOD,
                         "version: tables %llu and %llu overlap in level %d",
                         (unsigned long long)v->files[l][i - 1]->number,
                         (unsigned long long)v->files[l][i]->number, l);
                eng__version_unref(v);
                return KV_ECORRUPT;
            }
        }
    }
    (void)db;
    *out = v;
    return 0;
}

/* Mark tables that e removes for good (not moved to another level). */
static void mark_obsolete(const eng_version *base, const eng_vedit *e) {
    for (int i = 0; i < e->ndeleted; i++) {
        if (is_added(e, e->deleted[i].number)) continue;
        int l = e->deleted[i].level;
        for (int j = 0; j < base->nfiles[l]; j++)
            if (base->files[l][j]->number == e->deleted[i].number)
                atomic_store(&base->files[l][j]->obsolete, true);
    }
}

uint64_t eng__level_target(const eng_db *db, int level) {
    uint64_t t = db->opt.level1_bytes;
    for (int l = 1; l < level; l++) t *= (uint64_t)db->opt.level_multiplier;
    return t;
}

/* ---- MANIFEST ---- */

/* Point CURRENT at the manifest. *renamed tells whether the rename took
 * place: after it, CURRENT may name the new manifest even if the directory
 * sync then failed. */
static int write_current(eng_db *db, uint64_t manifest_number, bool *renamed) {
    char name[64], *tmp = eng__path(db, manifest_number, "dbtmp");
    char *cur = kv_malloc(strlen(db->dir) + 16);
    eng_file *f = NULL;
    int rc = -ENOMEM;
    if (!tmp || !cur) goto out;
    sprintf(cur, "%s/CURRENT", db->dir);
    int n = snprintf(name, sizeof name, "MANIFEST-%06llu\n",
                     (unsigned long long)manifest_number);
    if ((rc = eng__file_create(db->fault, tmp, &f)) ||
        (rc = eng__file_append(f, name, (size_t)n)) || (rc = eng__file_sync(f)))
        goto out;
    eng__file_close(f);
    f = NULL;
    if ((rc = eng__env_rename(db->fault, tmp, cur))) goto out;
    *renamed = true;
    rc = eng__env_sync_dir(db->fault, db->dir);
out:
    if (f) eng__file_close(f);
    if (rc && tmp) eng__env_unlink(tmp);
    kv_free(tmp);
    kv_free(cur);
    return rc;
}

/* A snapshot edit holding everything needed to rebuild db's state. */
static int snapshot_edit(eng_db *db, eng_vedit *e) {
    e->has_style = true;
    e->style = db->opt.style;
    e->has_log_number = true;
    e->log_number = db->min_log;
    e->has_next_file = true;
    e->next_file = db->next_file;
    e->has_last_seq = true;
    e->last_seq = db->last_seq;
    for (int l = 0; l < ENG_MAX_LEVELS; l++)
        for (int i = 0; i < db->current->nfiles[l]; i++) {
            int rc = eng__vedit_add(e, l, db->current->files[l][i]);
            if (rc) return rc;
        }
    return 0;
}

int eng__manifest_rewrite(eng_db *db) {
    eng_vedit e;
    kv_buf rec = KV_BUF_INIT;
    eng_logw *w = NULL;
    char *path = NULL;
    eng__vedit_init(&e);
    pthread_mutex_lock(&db->mu);
    uint64_t number = db->next_file++;
    int rc = snapshot_edit(db, &e);
    pthread_mutex_unlock(&db->mu);
    if (rc || (rc = eng__vedit_encode(&e, &rec))) goto out;
    if (!(path = eng__path(db, number, "MANIFEST"))) {
        rc = -ENOMEM;
        goto out;
    }
    bool renamed = false;
    if ((rc = eng__logw_create(db->fault, path, number, &w)) ||
        (rc = eng__logw_add(w, kv_buf_slice(&rec))) || (rc = eng__logw_sync(w)))
        goto out;
    if ((rc = write_current(db, number, &renamed)) && renamed) {
        /* CURRENT may name either manifest after a crash; both describe
         * this state. Keep both files, write to the new one, and take no
         * further edit until a reopen settles which one is live. */
        kv_error(ENG_MOD,
                 "cannot sync directory '%s' after switching "
                 "CURRENT: %s",
                 db->dir, kv_strerror(rc));
        eng__logw_close(db->manifest);
        db->manifest = w;
        db->manifest_number = number;
        db->manifest_error = rc;
        w = NULL;
        goto out;
    }
    if (rc) goto out;
    if (db->manifest) {
        char *old = eng__path(db, db->manifest_number, "MANIFEST");
        eng__logw_close(db->manifest);
        if (old) eng__env_unlink(old);
        kv_free(old);
    }
    db->manifest = w;
    db->manifest_number = number;
    w = NULL;
out:
    if (w) {
        eng__logw_close(w);
        eng__env_unlink(path);
    }
    kv_free(path);
    kv_buf_release(&rec);
    eng__vedit_release(&e);
    return rc;
}

/* A MANIFEST that grew past this is rewritten as one snapshot record. */
#define MANIFEST_ROLL_BYTES (64u << 20)

/* A MANIFEST append or sync failed: the edit may or may not be on disk.
 * Start a fresh MANIFEST from the installed state, which settles it (the
 * edit is then certainly not live). If even that fails, refuse every later
 * edit until the store is reopened, and keep the edit's tables. */
static int manifest_failed(eng_db *db, eng_vedit *e, int rc, bool appended) {
    kv_error(ENG_MOD, "cannot log version edit to MANIFEST-%06llu: %s",
             (unsigned long long)db->manifest_number, kv_strerror(rc));
    int r2 = eng__manifest_rewrite(db);
    if (r2 == 0) return rc;
    e->uncertain = appended;
    db->manifest_error = r2;
    kv_error(ENG_MOD,
             "cannot start a new MANIFEST in '%s': %s; flushes and "
             "compactions stop until the store is reopened",
             db->dir, kv_strerror(r2));
    return rc;
}

int eng__log_and_apply(eng_db *db, eng_vedit *e) {
    kv_buf rec = KV_BUF_INIT;
    eng_version *v = NULL;
    pthread_mutex_lock(&db->manifest_mu);
    if (db->manifest_error) {
        pthread_mutex_unlock(&db->manifest_mu);
        return db->manifest_error;
    }
    pthread_mutex_lock(&db->mu);
    e->has_next_file = true;
    e->next_file = db->next_file;
    e->has_last_seq = true;
    e->last_seq = db->last_seq;
    if (!e->has_log_number) {
        e->has_log_number = true;
        e->log_number = db->min_log;
    }
    int rc = eng__version_apply(db, db->current, e, &v);
    pthread_mutex_unlock(&db->mu);
    if (rc || (rc = eng__vedit_encode(e, &rec))) goto out;
    if ((rc = eng__logw_add(db->manifest, kv_buf_slice(&rec)))) {
        /* The writer cut the file back: the edit is not there. */
        rc = manifest_failed(db, e, rc, false);
        goto out;
    }
    if ((rc = eng__logw_sync(db->manifest))) {
        rc = manifest_failed(db, e, rc, true);
        goto out;
    }
    pthread_mutex_lock(&db->mu);
    mark_obsolete(db->current, e);
    eng_version *old = db->current;
    db->current = v;
    v = NULL;
    db->min_log = e->log_number;
    pthread_cond_broadcast(&db->bg_cv);
    pthread_mutex_unlock(&db->mu);
    eng__version_unref(old);
    if (eng__logw_size(db->manifest) > MANIFEST_ROLL_BYTES) {
        int r2 = eng__manifest_rewrite(db);
        if (r2)
            kv_warn(ENG_MOD, "cannot roll MANIFEST over: %s", kv_strerror(r2));
    }
out:
    eng__version_unref(v);
    kv_buf_release(&rec);
    pthread_mutex_unlock(&db->manifest_mu);
    return rc;
}

int eng__manifest_recover(eng_db *db) {
    kv_buf cur = KV_BUF_INIT;
    char *cpath = kv_malloc(strlen(db->dir) + 16), *mpath = NULL;
    eng_logr *r = NULL;
    eng_version *v = NULL;
    int rc = -ENOMEM;
    bool have_log = false, have_next = false, have_seq = false;
    if (!cpath) goto out;
    sprintf(cpath, "%s/CURRENT", db->dir);
    if ((rc = eng__env_read_all(db->fault, cpath, 256, &cur))) goto out;
    /* CURRENT is "MANIFEST-<digits>\n" and nothing else. */
    unsigned long long number = 0;
    size_t i = 9;
    if (cur.len < 11 || memcmp(cur.ptr, "MANIFEST-", 9) != 0 ||
        cur.ptr[cur.len - 1] != '\n') {
        rc = KV_ECORRUPT;
    } else {
        for (; i < cur.len - 1 && cur.ptr[i] >= '0' && cur.ptr[i] <= '9'; i++)
            number = number * 10 + (cur.ptr[i] - '0');
        if (i != cur.len - 1 || i == 9 || i > 29) rc = KV_ECORRUPT;
    }
    if (rc) {
        kv_error(ENG_MOD, "CURRENT in '%s' is malformed", db->dir);
        goto out;
    }
    if (!(mpath = eng__path(db, number, "MANIFEST"))) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = eng__logr_open(db->fault, mpath, &r))) {
        kv_error(ENG_MOD, "cannot open manifest '%s': %s", mpath,
                 kv_strerror(rc));
        /* CURRENT names a manifest that is missing or empty: it was synced
         * before CURRENT pointed at it, so this is damage. */
        if (rc == -ENOENT || rc == KV_ENOTFOUND) rc = KV_ECORRUPT;
        goto out;
    }
    if (!(v = eng__version_new())) {
        rc = -ENOMEM;
        goto out;
    }
    kv_slice rec;
    int style = -1;
    while ((rc = eng__logr_next(r, &rec)) == 0) {
        eng_vedit e;
        eng_version *nv;
        eng__vedit_init(&e);
        rc = eng__vedit_decode(rec, &e);
        if (rc == 0) rc = eng__version_apply(db, v, &e, &nv);
        if (rc) {
            if (rc == KV_ECORRUPT)
                kv_error(ENG_MOD, "manifest '%s': malformed version edit",
                         mpath);
            eng__vedit_release(&e);
            goto out;
        }
        eng__version_unref(v);
        v = nv;
        if (e.has_style) style = e.style;
        if (e.has_log_number) {
            db->min_log = e.log_number;
            have_log = true;
        }
        if (e.has_next_file) {
            db->next_file = e.next_file;
            have_next = true;
        }
        if (e.has_last_seq) {
            db->last_seq = e.last_seq;
            have_seq = true;
        }
        eng__vedit_release(&e);
    }
    if (rc != KV_ENOTFOUND) goto out;
    rc = 0;
    /* A torn tail is an edit whose fsync never returned: it was never
     * installed, so nothing depended on it (the log reader warned). */
    if (!have_log || !have_next || !have_seq || style < 0) {
        kv_error(ENG_MOD, "manifest '%s': missing required fields", mpath);
        rc = KV_ECORRUPT;
        goto out;
    }
    if (style != (int)db->opt.style) {
        kv_error(ENG_MOD,
                 "store '%s' uses %s compaction; it cannot be opened as %s",
                 db->dir, style ? "size-tiered" : "leveled",
                 db->opt.style ? "size-tiered" : "leveled");
        rc = -EINVAL;
        goto out;
    }
    db->manifest_number = number;
    for (int l = 0; l < ENG_MAX_LEVELS && rc == 0; l++)
        for (int j = 0; j < v->nfiles[l] && rc == 0; j++) {
            eng_fmeta *f = v->files[l][j];
            if (f->number >= db->next_file) {
                kv_error(ENG_MOD,
                         "manifest '%s': table %llu beyond next "
                         "file number",
                         mpath, (unsigned long long)f->number);
                rc = KV_ECORRUPT;
            } else if ((rc = eng__fmeta_open(db, f)) == -ENOENT) {
                rc = KV_ECORRUPT; /* a live table is missing */
            }
        }
    if (rc) goto out;
    db->current = v;
    v = NULL;
out:
    eng__version_unref(v);
    eng__logr_close(r);
    kv_buf_release(&cur);
    kv_free(cpath);
    kv_free(mpath);
    return rc;
}
