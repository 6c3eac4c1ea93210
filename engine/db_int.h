/*
 * db_int.h: the store's own structures (db.c, version.c, compact.c,
 * dbiter.c, batch.c). Components below them are in engine_int.h.
 *
 * Locks: db->manifest_mu (held while a version edit is logged and installed)
 * is taken before db->mu. db->compact_mu serialises compactions (background
 * and manual) and is taken before both. db->mu guards every field marked
 * [mu]. Version and file refcounts are changed under db->mu. The table
 * cache's lock (db->tcache.mu, fields marked [tc]) is a leaf: it may be
 * taken with any of the others held, and nothing else is locked, and no
 * I/O done, while it is held.
 */
#ifndef QFS_ENGINE_DB_INT_H
#define QFS_ENGINE_DB_INT_H

#include "engine/engine_int.h"

/* ---- batches (batch.c) -----------------------------------------------------
 * rep = sequence u64 | count u32 | ops; op = type u8 | varint klen | key
 * [| varint vlen | value] (value only for ENG_TYPE_PUT). The same bytes are
 * the WAL record payload. */
#define ENG_BATCH_HEADER 12
struct eng_batch {
    kv_buf rep;
};
typedef int (*eng_batch_fn)(void *arg, uint64_t seq, int type, kv_slice key,
                            kv_slice value);
/* Validate rep and call fn for each op with its sequence number. Returns
 * KV_ECORRUPT for malformed bytes (nothing is called then), or fn's error. */
int eng__batch_iterate(kv_slice rep, eng_batch_fn fn, void *arg);
uint32_t eng__batch_rep_count(kv_slice rep);
void eng__batch_set_seq(kv_buf *rep, uint64_t seq);
/* Append b's ops to the rep dst (headers adjusted). */
int eng__batch_append(kv_buf *dst, kv_slice src);

/* ---- files and versions (version.c) ----------------------------------------
 */
typedef struct eng_fmeta {
    uint64_t number;
    uint64_t size;
    kv_buf smallest, largest; /* internal keys */
    uint64_t min_seq, max_seq;
    uint64_t entries, deletions;
    atomic_int refs;      /* versions and edits holding this file */
    atomic_bool obsolete; /* unlink the file when refs reach zero */
    char *path;           /* owned */
    eng_cache *cache;     /* blocks to drop when freed (may be NULL) */
    /* Table cache (tcache.c). Read the table only through
     * eng__table_acquire, which pins it. */
    struct eng_tcache *tc;   /* set by eng__fmeta_open; NULL: never opened */
    eng_table *table;        /* [tc] open reader (owned), or NULL */
    int pins;                /* [tc] users of table; it stays open while > 0 */
    struct eng_fmeta *older; /* [tc] LRU list of open tables */
    struct eng_fmeta *newer; /* [tc] */
} eng_fmeta;

typedef struct eng_version {
    atomic_int refs;
    /* Leveled: L0 tables overlap and are sorted by max_seq descending; L1+
     * are disjoint, sorted by smallest key. Tiered: every table is in L0. */
    eng_fmeta **files[ENG_MAX_LEVELS];
    int nfiles[ENG_MAX_LEVELS];
    uint64_t level_bytes[ENG_MAX_LEVELS];
    bool debt_known; /* [mu] debt computed (memoised per version) */
    uint64_t debt;   /* [mu] */
} eng_version;

/* A change to the set of live tables and counters, logged to the MANIFEST. */
typedef struct eng_vedit {
    bool has_log_number, has_next_file, has_last_seq, has_style;
    uint64_t log_number; /* WALs below this number are no longer needed */
    uint64_t next_file;
    uint64_t last_seq;
    int style;
    struct {
        int level;
        uint64_t number;
    } * deleted;
    int ndeleted, cap_deleted;
    struct {
        int level;
        eng_fmeta *f; /* reference held by the edit */
    } * added;
    int nadded, cap_added;
    /* Set by eng__log_and_apply when it failed but the edit may still be in
     * the MANIFEST: the tables it adds must then not be deleted. */
    bool uncertain;
} eng_vedit;

void eng__vedit_init(eng_vedit *e);
void eng__vedit_release(eng_vedit *e);
int eng__vedit_delete(eng_vedit *e, int level, uint64_t number);
/* Add f (the edit takes one reference). */
int eng__vedit_add(eng_vedit *e, int level, eng_fmeta *f);
int eng__vedit_encode(const eng_vedit *e, kv_buf *out);
/* Decode; added files are new eng_fmeta without open tables. */
int eng__vedit_decode(kv_slice rec, eng_vedit *e);

eng_fmeta *eng__fmeta_new(void);
int eng__fmeta_from_props(eng_fmeta *f, uint64_t number,
                          const eng_table_props *p);

/* ---- table cache (tcache.c) ------------------------------------------------
 * At most capacity tables open per store, and at most max_charged bytes of
 * index and filter blocks charged by them to the block cache; least
 * recently used closed first. A pinned table is never closed, so the bounds
 * may be exceeded while the pinned tables alone exceed them. */
typedef struct eng_tcache {
    pthread_mutex_t mu;
    int capacity;         /* max_open_tables */
    uint64_t max_charged; /* the block cache's capacity */
    int nopen;            /* [tc] tables open, pinned or not */
    uint64_t meta_bytes;  /* [tc] eng__table_mem of the open tables */
    uint64_t charged;     /* [tc] eng__table_charge of the open tables */
    eng_fmeta *lru, *mru; /* [tc] ends of the list of open tables */
} eng_tcache;

void eng__tcache_init(eng_tcache *tc, int capacity, uint64_t max_charged);
/* At db close, after the last file was freed (a table still open then
 * means a leaked reference: it is closed with a warning). */
void eng__tcache_release(eng_tcache *tc);
/* Pin f's table, opening it first if it is not open (f must have been
 * through eng__fmeta_open). *out stays valid until the matching
 * eng__table_release. 0, or the open's error (KV_ECORRUPT, -EIO, -EMFILE,
 * -ENOMEM; logged) with *out NULL. */
int eng__table_acquire(eng_db *db, eng_fmeta *f, eng_table **out);
void eng__table_release(eng_db *db, eng_fmeta *f);
/* f is being freed (last reference): close its table. Not pinned. */
void eng__tcache_forget(eng_fmeta *f);
/* eng__table_mem and eng__table_charge summed over the open tables. */
void eng__tcache_bytes(eng_tcache *tc, uint64_t *meta, uint64_t *charged);

/* ---- the store -------------------------------------------------------------
 */
typedef struct eng_writer eng_writer;

struct eng_snapshot {
    uint64_t seq;
    struct eng_snapshot *prev, *next; /* [mu] list, oldest first */
};

typedef struct eng_counters {
    _Atomic uint64_t user_bytes, wal_bytes, flush_bytes, compact_read,
        compact_written, gets, tables_probed, bloom_checked, bloom_negative,
        bloom_fp, bloom_tp, stall_us, slowdown_us, flushes, compactions, syncs,
        wals_reused, flush_paced_us;
} eng_counters;

struct eng_db {
    char *dir;
    eng_options opt;
    eng_table_opts topts;
    eng_fault *fault;
    int lock_fd;
    eng_cache *cache;
    eng_tcache tcache; /* open tables */

    pthread_mutex_t mu;
    pthread_mutex_t manifest_mu;
    pthread_mutex_t compact_mu;
    pthread_cond_t bg_cv;   /* background progress (writers, flush waits) */
    pthread_cond_t work_cv; /* wakes the background threads */
    pthread_t flush_thread, compact_thread;
    bool threads_started;

    eng_memtable *mem, *imm;  /* [mu] */
    size_t mem_limit;         /* [mu] mem is full at this size */
    uint64_t jitter_state;    /* [mu] picks mem_limit */
    uint64_t mem_born_ns;     /* [mu] when mem became the active memtable */
    uint64_t flush_pace_ns;   /* [mu] imm's flush may take this long */
    atomic_bool flush_hurry;  /* someone waits for imm's flush: no pacing */
    eng_logw *log;            /* [mu] active WAL, written by the leader */
    uint64_t log_number;      /* [mu] number of the active WAL */
    eng_version *current;     /* [mu] */
    uint64_t next_file;       /* [mu] */
    uint64_t last_seq;        /* [mu] newest visible sequence */
    uint64_t min_log;         /* [mu] logged: WALs below are obsolete */
    uint64_t recycle_log;     /* [mu] an obsolete WAL kept for reuse, or 0 */
    eng_logw *manifest;       /* [manifest_mu] */
    int manifest_error;       /* [manifest_mu] sticky: edits are refused */
    uint64_t manifest_number; /* [manifest_mu] */
    eng_writer *wq_head, *wq_tail; /* [mu] group-commit queue */
    eng_snapshot snaps;            /* [mu] sentinel of the snapshot list */
    bool shutting_down;            /* [mu] */
    int write_error;               /* [mu] sticky: the WAL cannot be trusted */
    int flush_error;        /* [mu] last flush failure, 0 after success */
    int bg_error;           /* [mu] last background error (stats) */
    bool manual_compaction; /* [mu] a caller waits in compact_range */
    kv_buf compact_ptr[ENG_MAX_LEVELS]; /* [compact_mu] round-robin cursor */
    kv_buf group; /* leader's scratch for merged batches */
    eng_counters c;
};

static inline uint64_t eng__ctr_add(_Atomic uint64_t *c, uint64_t n) {
    return atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* Paths: dir/NNNNNN.sst, dir/NNNNNN.log, dir/MANIFEST-NNNNNN. Caller frees. */
char *eng__path(const eng_db *db, uint64_t number, const char *suffix);

/* version.c */
eng_version *eng__version_new(void);
void eng__version_ref(eng_version *v);
void eng__version_unref(eng_version *v);
/* New version = base + edit (files sorted per the style). */
int eng__version_apply(eng_db *db, const eng_version *base, const eng_vedit *e,
                       eng_version **out);
void eng__fmeta_ref(eng_fmeta *f);
/* Last reference: close the table, drop its cached blocks, unlink the file
 * if it was marked obsolete. */
void eng__fmeta_unref(eng_fmeta *f);
/* Attach f to db's table cache and verify its table by opening it (it is
 * left in the cache as most recently used); used at recovery and for new
 * outputs. KV_ECORRUPT / KV_EVERSION / -errno (logged). */
int eng__fmeta_open(eng_db *db, eng_fmeta *f);
/* Log e to the MANIFEST (synced) and install base+e as current. Takes
 * manifest_mu and mu itself; call with neither held. */
int eng__log_and_apply(eng_db *db, eng_vedit *e);
/* Start a new MANIFEST holding the whole current state and point CURRENT at
 * it. manifest_mu held, mu not. */
int eng__manifest_rewrite(eng_db *db);
/* Read CURRENT and replay the MANIFEST into db->current etc. */
int eng__manifest_recover(eng_db *db);
uint64_t eng__level_target(const eng_db *db, int level);

/* compact.c */
void *eng__compact_thread(void *arg);
int eng__compact_manual(eng_db *db, const kv_slice *begin, const kv_slice *end);
/* Write the iterator's entries to new table(s) at level; used by flush. */
/* Write m as a level-0 table, adding it to e. Spread over about pace_ns
 * (0: as fast as it can) unless db->flush_hurry is set meanwhile. */
int eng__write_level0(eng_db *db, eng_memtable *m, uint64_t pace_ns,
                      eng_vedit *e);
#define FLUSH_PACE_STEP                                                        \
    (256u * 1024u)                         /* at most this many bytes between  \
                                            * a paced flush's checks */
uint64_t eng__compaction_debt(eng_db *db); /* [mu] */
uint64_t eng__smallest_snapshot(eng_db *db); /* [mu] */

/* db.c */
/* Point lookup in a version: 0 with *type/val, KV_ENOTFOUND, or an error. */
int eng__version_get(eng_db *db, eng_version *v, kv_slice ukey, uint64_t seq,
                     int *type, kv_buf *val);

/* dbiter.c */
int eng__db_iter_new(eng_db *db, uint64_t seq, eng_memtable *mem,
                     eng_memtable *imm, eng_version *v, eng_iter **out);

#endif
