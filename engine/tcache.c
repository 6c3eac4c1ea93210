/*
 * Table cache: bounds the tables a store keeps open (each holds a file
 * descriptor and its index and filter blocks) to eng_options.max_open_tables,
 * and the index and filter bytes they charge to the block cache (tables read
 * with pread; a mapped table charges nothing) to the block cache's capacity,
 * closing the least recently used first. A table is opened on first use and
 * opened again after an eviction; its data blocks stay in the block cache
 * meanwhile (keyed by file number).
 *
 * Invariants, all under tc->mu:
 * - f->table != NULL exactly when f is on the LRU list; nopen counts those
 *   fmetas, meta_bytes sums eng__table_mem of their tables and charged
 *   eng__table_charge.
 * - f->pins > 0 implies f->table != NULL: a pinned table is never closed. A
 *   pin holds no reference on f; the pinner holds one (through a version or
 *   a compaction's inputs) for as long as it holds the pin.
 * - nopen <= capacity and charged <= max_charged, except while the pinned
 *   tables alone exceed them; the surplus is closed as soon as its pins drop
 *   (every release and every open trims the cache).
 * - The lock is a leaf and no I/O runs under it: tables are opened and
 *   closed outside it, so a slow open never delays a reader of an open
 *   table. Two threads may open the same table at once; the later one to
 *   take the lock closes its copy.
 */
#include "engine/db_int.h"

void eng__tcache_init(eng_tcache *tc, int capacity, uint64_t max_charged) {
    memset(tc, 0, sizeof *tc);
    pthread_mutex_init(&tc->mu, NULL);
    tc->capacity = capacity;
    tc->max_charged = max_charged;
}

/* More tables open, or more bytes charged, than the bounds allow. */
static bool over(const eng_tcache *tc) {
    return tc->nopen > tc->capacity || tc->charged > tc->max_charged;
}

/* ---- the LRU list (mu held) ---- */

static void unlink_f(eng_tcache *tc, eng_fmeta *f) {
    if (f->older)
        f->older->newer = f->newer;
    else
        tc->lru = f->newer;
    if (f->newer)
        f->newer->older = f->older;
    else
        tc->mru = f->older;
    f->older = f->newer = NULL;
}

static void push_mru(eng_tcache *tc, eng_fmeta *f) {
    f->older = tc->mru;
    f->newer = NULL;
    if (tc->mru)
        tc->mru->newer = f;
    else
        tc->lru = f;
    tc->mru = f;
}

static void touch(eng_tcache *tc, eng_fmeta *f) {
    if (tc->mru == f) return;
    unlink_f(tc, f);
    push_mru(tc, f);
}

/* Take f's open table off the cache; the caller closes it. */
static eng_table *detach(eng_tcache *tc, eng_fmeta *f) {
    eng_table *t = f->table;
    unlink_f(tc, f);
    f->table = NULL;
    tc->nopen--;
    tc->meta_bytes -= eng__table_mem(t);
    tc->charged -= eng__table_charge(t);
    return t;
}

/* Over a bound: detach the least recently used unpinned table. NULL when
 * within the bounds or when every open table is pinned. */
static eng_table *evict_one(eng_tcache *tc) {
    if (!over(tc)) return NULL;
    for (eng_fmeta *f = tc->lru; f; f = f->newer)
        if (f->pins == 0) return detach(tc, f);
    return NULL;
}

/* Close unpinned tables until the cache is within capacity (mu not held). */
static void trim(eng_tcache *tc) {
    for (;;) {
        pthread_mutex_lock(&tc->mu);
        eng_table *t = evict_one(tc);
        pthread_mutex_unlock(&tc->mu);
        if (!t) return;
        eng__table_close(t);
    }
}

/* ---- interface ---- */

int eng__table_acquire(eng_db *db, eng_fmeta *f, eng_table **out) {
    eng_tcache *tc = &db->tcache;
    *out = NULL;
    KV_ASSERT(f->tc == tc && f->path);
    pthread_mutex_lock(&tc->mu);
    if (f->table) {
        f->pins++;
        touch(tc, f);
        *out = f->table;
        pthread_mutex_unlock(&tc->mu);
        return 0;
    }
    pthread_mutex_unlock(&tc->mu);

    eng_table *t = NULL;
    int rc = eng__table_open(db->fault, f->path, f->number, db->cache,
                             db->opt.mmap_reads, &t);
    if (rc) {
        kv_error(ENG_MOD, "cannot open table '%s': %s", f->path,
                 kv_strerror(rc));
        return rc;
    }
    pthread_mutex_lock(&tc->mu);
    eng_table *dup = NULL;
    if (f->table) {
        dup = t; /* opened by another thread meanwhile */
        touch(tc, f);
    } else {
        f->table = t;
        push_mru(tc, f);
        tc->nopen++;
        tc->meta_bytes += eng__table_mem(t);
        tc->charged += eng__table_charge(t);
    }
    f->pins++;
    *out = f->table;
    bool trim_now = over(tc);
    pthread_mutex_unlock(&tc->mu);
    eng__table_close(dup);
    if (trim_now) trim(tc);
    return 0;
}

void eng__table_release(eng_db *db, eng_fmeta *f) {
    eng_tcache *tc = &db->tcache;
    pthread_mutex_lock(&tc->mu);
    KV_ASSERT(f->tc == tc && f->pins > 0 && f->table);
    f->pins--;
    bool trim_now = f->pins == 0 && over(tc);
    pthread_mutex_unlock(&tc->mu);
    if (trim_now) trim(tc);
}

void eng__tcache_forget(eng_fmeta *f) {
    eng_tcache *tc = f->tc;
    if (!tc) return;
    pthread_mutex_lock(&tc->mu);
    /* Pinners hold a reference, so the last one cannot still be pinning. */
    KV_ASSERT(f->pins == 0);
    eng_table *t = f->table ? detach(tc, f) : NULL;
    pthread_mutex_unlock(&tc->mu);
    eng__table_close(t);
    f->tc = NULL;
}

void eng__tcache_bytes(eng_tcache *tc, uint64_t *meta, uint64_t *charged) {
    pthread_mutex_lock(&tc->mu);
    *meta = tc->meta_bytes;
    *charged = tc->charged;
    pthread_mutex_unlock(&tc->mu);
}

void eng__tcache_release(eng_tcache *tc) {
    /* Every file is freed by now (db close releases the last version), so
     * the list is empty; a table still open would mean a leaked reference,
     * and is closed here rather than left holding its descriptor. */
    if (tc->nopen)
        kv_warn(ENG_MOD, "table cache: %d tables still open at close",
                tc->nopen);
    while (tc->lru) {
        eng_fmeta *f = tc->lru;
        eng__table_close(detach(tc, f));
        f->tc = NULL;
    }
    pthread_mutex_destroy(&tc->mu);
}
