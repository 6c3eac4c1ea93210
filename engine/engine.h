/*
 * engine: the node-local LSM storage engine of quorumfs.
 *
 * Keys and values are opaque bytes ordered by memcmp. A store lives in one
 * directory: a write-ahead log, a memtable, sorted tables (SSTables) in levels
 * or tiers, and a manifest naming the live tables. Formats and recovery are in
 * docs/engine-format.md.
 *
 * Threading: an eng_db is safe to use from any number of threads at once
 * (puts from many threads share one fsync: group commit). Iterators and
 * batches belong to one thread at a time. Flushes and compactions run on the
 * engine's own two background threads. eng_db_close must not race with other
 * calls on the same db; iterators and snapshots must be released first.
 */
#ifndef QFS_ENGINE_H
#define QFS_ENGINE_H

#include "base/base.h"

/* Limits. Larger input returns KV_ETOOLARGE and writes nothing. */
#define ENG_MAX_KEY (64u * 1024u - 1u)       /* bytes in a key */
#define ENG_MAX_VALUE (64u * 1024u * 1024u)  /* bytes in a value */
#define ENG_MAX_BATCH (256u * 1024u * 1024u) /* encoded bytes in a batch */

typedef struct eng_db eng_db;
typedef struct eng_batch eng_batch;
typedef struct eng_iter eng_iter;
typedef struct eng_snapshot eng_snapshot;
typedef struct eng_fault eng_fault;

/* When a write returns relative to its WAL record reaching the disk. */
typedef enum eng_sync_mode {
    ENG_SYNC_NONE = 0, /* written to the OS; lost on power failure */
    ENG_SYNC_GROUP,    /* fsynced; concurrent writers share one fsync */
    ENG_SYNC_ALWAYS    /* fsynced by a sync of its own (no sharing) */
} eng_sync_mode;

typedef enum eng_compaction_style {
    ENG_COMPACT_LEVELED = 0, /* L0, then levels growing by level_multiplier */
    ENG_COMPACT_TIERED       /* merge runs of similar size, at least tier_min */
} eng_compaction_style;

typedef struct eng_options {
    bool create_if_missing;       /* default true */
    bool error_if_exists;         /* default false */
    eng_sync_mode sync;           /* default ENG_SYNC_GROUP */
    eng_compaction_style style;   /* default ENG_COMPACT_LEVELED */
    size_t memtable_bytes;        /* default 32 MiB; each memtable is full
                                   * at a random 75-100% of it, so replicas
                                   * taking the same writes do not all
                                   * flush at the same moment */
    uint32_t flush_pace_max_ms;   /* a flush is spread over a quarter of the
                                   * time its memtable took to fill, at most
                                   * this long (default 2000; 0: flush at
                                   * full speed); a writer waiting for it
                                   * ends the pacing */
    size_t cache_bytes;           /* block cache, default 64 MiB */
    size_t block_bytes;           /* target data block size, default 4 KiB */
    int block_restart_interval;   /* keys between restart points, default 16 */
    int bloom_bits_per_key;       /* default 10; 0 disables filters */
    int compression_level;        /* zstd level, default 1; 0 disables */
    int max_open_tables;          /* table cache size, default 1000 */
    bool mmap_reads;              /* read tables through mmap, default true;
                                   * see docs/ARCHITECTURE.md for the risk */
    bool recycle_wal;             /* reuse an obsolete WAL file in place,
                                   * default true (faster fdatasync) */
    uint64_t table_bytes;         /* target table size, default 32 MiB */
    int l0_compaction_trigger;    /* default 4 tables */
    int l0_slowdown_trigger;      /* default 8 tables */
    int l0_stop_trigger;          /* default 12 tables */
    uint64_t level1_bytes;        /* default 128 MiB */
    int level_multiplier;         /* default 10 */
    int tier_min;                 /* tables merged at once, default 4 */
    int tier_max;                 /* default 32 */
    uint64_t debt_slowdown_bytes; /* compaction debt, default 1 GiB */
    uint64_t debt_stop_bytes;     /* default 4 GiB */
    eng_fault *fault;             /* fault injection for tests; NULL */
} eng_options;

/* Fill o with the defaults above. */
void eng_options_init(eng_options *o);

/* Open (or create) the store in dir, replaying its WAL. The store is locked
 * against a second opener (KV_EBUSY). Returns 0 and *out, or an error:
 * -ENOENT (no store, !create_if_missing), -EEXIST (error_if_exists),
 * KV_ECORRUPT (logged with file and offset), KV_EVERSION, -ENOMEM, -errno. */
int eng_db_open(const char *dir, const eng_options *opt, eng_db **out);

/* Wait for running background work, sync the WAL, release everything.
 * Returns the first background error seen, if any; db is freed regardless. */
int eng_db_close(eng_db *db);

/* Write flags: ENG_WF_DEFAULT uses the store's sync mode; the others override
 * it for this write only (the replica layer maps a file's fsync to them). */
enum {
    ENG_WF_DEFAULT = 0,
    ENG_WF_SYNC_NONE = 1,
    ENG_WF_SYNC_GROUP = 2,
    ENG_WF_SYNC_ALWAYS = 3
};

/* Writes return 0 once the record is durable per the sync mode, or
 * KV_ETOOLARGE, -EINVAL, -ENOMEM, -ENOSPC, -EIO (nothing of the write is
 * visible then, and the store stays consistent). A write may block while
 * background work catches up (see "write stalls" in docs). */
int eng_db_put(eng_db *db, kv_slice key, kv_slice value, int wflags);
int eng_db_delete(eng_db *db, kv_slice key, int wflags);
/* Apply every operation of b atomically: after a crash all or none. */
int eng_db_write(eng_db *db, const eng_batch *b, int wflags);

/* Read key as of snap (NULL: latest). The value replaces val's contents.
 * Returns 0, KV_ENOTFOUND, KV_ECORRUPT, -EIO, -ENOMEM. */
int eng_db_get(eng_db *db, const eng_snapshot *snap, kv_slice key, kv_buf *val);

/* A snapshot pins the store's state as of now for gets and iterators. */
int eng_db_snapshot(eng_db *db, eng_snapshot **out);
void eng_db_snapshot_release(eng_db *db, eng_snapshot *snap);

/* Write the memtable to a table and wait until it is on disk. */
int eng_db_flush(eng_db *db);
/* Compact every table overlapping [begin, end] (NULL: unbounded) down to the
 * bottom level (leveled) or into one run (tiered), and wait. */
int eng_db_compact_range(eng_db *db, const kv_slice *begin,
                         const kv_slice *end);

/* ---- batches ---- */
int eng_batch_new(eng_batch **out);
void eng_batch_free(eng_batch *b);
void eng_batch_clear(eng_batch *b);
int eng_batch_put(eng_batch *b, kv_slice key, kv_slice value);
int eng_batch_delete(eng_batch *b, kv_slice key);
uint32_t eng_batch_count(const eng_batch *b);

/* ---- iterators ----
 * An iterator sees one consistent state: snap's, or the latest at creation.
 * key/value slices stay valid until the next seek/next or eng_iter_free. */
int eng_iter_new(eng_db *db, const eng_snapshot *snap, eng_iter **out);
void eng_iter_seek_first(eng_iter *it);
void eng_iter_seek(eng_iter *it, kv_slice key); /* first key >= key */
bool eng_iter_valid(const eng_iter *it);
void eng_iter_next(eng_iter *it);
kv_slice eng_iter_key(const eng_iter *it);
kv_slice eng_iter_value(const eng_iter *it);
/* 0, or the error that ended iteration early (KV_ECORRUPT, -EIO, ...). */
int eng_iter_status(const eng_iter *it);
void eng_iter_free(eng_iter *it);

/* ---- stats ---- */
#define ENG_MAX_LEVELS 7
typedef struct eng_stats {
    uint64_t user_bytes_written; /* key + value bytes accepted */
    uint64_t wal_bytes_written;
    uint64_t flush_bytes_written;
    uint64_t compact_bytes_read;
    uint64_t compact_bytes_written;
    double write_amp; /* (flush + compaction writes) / user bytes */
    double read_amp;  /* tables probed per get (bloom-negative excluded) */
    double space_amp; /* live table bytes / largest sorted run (estimate) */
    uint64_t gets, tables_probed, bloom_checked, bloom_negative;
    uint64_t bloom_false_positive; /* passed the filter, key absent */
    uint64_t bloom_true_positive;
    uint64_t compaction_debt_bytes;
    uint64_t mem_bytes;          /* memtable + cache + table_meta bytes */
    uint64_t memtable_bytes;     /* active + immutable */
    uint64_t cache_bytes;        /* block cache in use (<= cache_bytes option
                                  * unless pinned), index_filter_bytes included */
    uint64_t index_filter_bytes; /* index and filter blocks of open tables
                                  * read with pread, charged to the cache
                                  * (mapped tables read theirs in place) */
    uint64_t table_meta_bytes;   /* rest of the open tables' memory (readers,
                                  * properties): bounded by max_open_tables */
    uint64_t live_table_bytes;
    uint64_t live_tables;
    int level_tables[ENG_MAX_LEVELS];
    uint64_t level_bytes[ENG_MAX_LEVELS];
    uint64_t stall_us, slowdown_us; /* time writers waited on background work */
    uint64_t flush_paced_us; /* time flushes slept to spread their work */
    uint64_t flushes, compactions;
    uint64_t syncs;       /* WAL fsyncs (group commit shares them) */
    uint64_t wals_reused; /* new WALs written over an obsolete one */
    uint64_t last_sequence;
    int bg_error; /* last background error, 0 if none */
} eng_stats;

int eng_db_stats(eng_db *db, eng_stats *out);
/* Multi-line human-readable stats into out (appended). */
int eng_db_stats_format(eng_db *db, kv_buf *out);

/* ---- fault injection (tests) ----
 * Counts I/O operations of the kinds in mask and makes the one after `after`
 * more of them fail with err, and every later one while `sticky` is set. */
enum {
    ENG_FAULT_WRITE = 1,
    ENG_FAULT_SYNC = 2,
    ENG_FAULT_OPEN = 4,
    ENG_FAULT_RENAME = 8,
    ENG_FAULT_READ = 16
};
int eng_fault_new(eng_fault **out);
void eng_fault_free(eng_fault *f);
void eng_fault_arm(eng_fault *f, int mask, long after, int err, bool sticky);
void eng_fault_disarm(eng_fault *f);
long eng_fault_hits(const eng_fault *f); /* failures injected so far */

#endif
