/*
 * engine_int.h: interfaces shared by the engine's own files. Nothing outside
 * engine/ includes this (tests may, to test components alone).
 *
 * Lock order: db->mu, then a cache shard's lock, then table-cache lock. A
 * component documents its own threading contract below.
 */
#ifndef QFS_ENGINE_INT_H
#define QFS_ENGINE_INT_H

#include "engine/engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#define ENG_MOD "engine"

/* ---- file layer (file.c) ---------------------------------------------------
 * Every byte the engine reads or writes goes through these, so a test can
 * make the k-th write, sync, open, rename or read fail (eng_fault). A NULL
 * fault pointer means no injection. Positional reads are thread-safe;
 * appends/syncs on one file belong to one thread at a time.
 */
struct eng_fault {
    atomic_int mask;
    atomic_long countdown; /* operations still allowed before failing */
    atomic_int err;        /* positive errno to inject */
    atomic_bool sticky;
    atomic_bool armed;
    atomic_long hits;
};
/* 0, or -err when this operation must fail. */
int eng__fault_check(eng_fault *f, int kind);

typedef struct eng_file {
    int fd;
    eng_fault *fault;
    uint64_t size; /* bytes appended so far (writers) or file size (readers) */
    char *path;
} eng_file;

/* Open for appending (created, truncated) / for appending at the end of an
 * existing file / for positional reads. */
int eng__file_create(eng_fault *f, const char *path, eng_file **out);
int eng__file_open_append(eng_fault *f, const char *path, eng_file **out);
int eng__file_open_read(eng_fault *f, const char *path, eng_file **out);
/* Append all n bytes (loops on short writes). -errno on failure. */
int eng__file_append(eng_file *f, const void *p, size_t n);
/* Read exactly n bytes at off; short read is KV_ECORRUPT (logged). */
int eng__file_pread(eng_file *f, uint64_t off, void *buf, size_t n);
int eng__file_sync(eng_file *f); /* fdatasync */
/* Start writeback of [off, off + n) without waiting for it (no durability:
 * a later eng__file_sync still makes it durable). Spreads a big file's
 * disk writes over its writing instead of one burst at the final sync,
 * which would queue every WAL fdatasync of the store behind it. */
void eng__file_writeback(eng_file *f, uint64_t off, uint64_t n);
int eng__file_truncate(eng_file *f, uint64_t size);
void eng__file_close(eng_file *f);
int eng__env_rename(eng_fault *f, const char *from, const char *to);
int eng__env_sync_dir(eng_fault *f, const char *dir);
int eng__env_unlink(const char *path);
/* Read a whole small file (CURRENT) into out. */
int eng__env_read_all(eng_fault *f, const char *path, size_t max, kv_buf *out);

/* ---- internal keys ---------------------------------------------------------
 * internal key = user key | 8-byte little-endian trailer (seq << 8 | type).
 * Order: user key ascending (memcmp), then sequence descending, then type
 * descending, so the newest version of a key comes first.
 */
enum { ENG_TYPE_DEL = 0, ENG_TYPE_PUT = 1 };
#define ENG_MAX_SEQ ((UINT64_C(1) << 56) - 1)
/* Seek target type: with ENG_MAX_SEQ finds the newest entry of a key. */
#define ENG_TYPE_SEEK ENG_TYPE_PUT

static inline uint64_t eng__trailer(uint64_t seq, int type) {
    return (seq << 8) | (uint64_t)type;
}
static inline kv_slice eng__ikey_user(kv_slice ikey) {
    return kv_slice_make(ikey.ptr, ikey.len - 8);
}
static inline uint64_t eng__ikey_trailer(kv_slice ikey) {
    return kv_get_u64(ikey.ptr + ikey.len - 8);
}
static inline uint64_t eng__ikey_seq(kv_slice ikey) {
    return eng__ikey_trailer(ikey) >> 8;
}
static inline int eng__ikey_type(kv_slice ikey) {
    return (int)(eng__ikey_trailer(ikey) & 0xff);
}
int eng__ikey_cmp(kv_slice a, kv_slice b);
/* Append user key + trailer to b. */
int eng__ikey_append(kv_buf *b, kv_slice ukey, uint64_t seq, int type);
/* A well-formed internal key: at least 8 bytes, known type. */
static inline bool eng__ikey_valid(kv_slice ikey) {
    if (ikey.len < 8) return false;
    int t = ikey.ptr[ikey.len - 8]; /* low byte of the trailer */
    return t == ENG_TYPE_DEL || t == ENG_TYPE_PUT;
}

/* ---- internal iterators ----------------------------------------------------
 * Over internal keys in eng__ikey_cmp order. key/value stay valid until the
 * next positioning call or free. status() is 0 or the error that made the
 * iterator invalid early (it then stays invalid).
 */
typedef struct eng_iiter eng_iiter;
typedef struct eng_iiter_ops {
    bool (*valid)(eng_iiter *it);
    void (*seek_first)(eng_iiter *it);
    void (*seek)(eng_iiter *it, kv_slice ikey); /* first entry >= ikey */
    void (*next)(eng_iiter *it);
    kv_slice (*key)(eng_iiter *it);
    kv_slice (*value)(eng_iiter *it);
    int (*status)(eng_iiter *it);
    void (*free)(eng_iiter *it);
} eng_iiter_ops;
struct eng_iiter {
    const eng_iiter_ops *ops;
};

/* An iterator that is never valid and reports rc (0 for empty). */
eng_iiter *eng__iiter_empty(int rc);
/* Merge n children (ownership moves to the result, also on failure) into one
 * sorted stream. Equal internal keys cannot occur across children. NULL on
 * -ENOMEM (children freed). */
eng_iiter *eng__merge_iter(eng_iiter **children, int n);

/* ---- memtable (memtable.c) -------------------------------------------------
 * A skiplist of internal keys over an arena. One writer at a time (the write
 * leader, under the db's write queue), any number of concurrent readers
 * without locks: nodes are published with release stores. Refcounted because
 * readers and the flush thread hold it after it stops being active.
 */
typedef struct eng_memtable eng_memtable;
int eng__mem_new(eng_memtable **out);
void eng__mem_ref(eng_memtable *m);
void eng__mem_unref(eng_memtable *m);
/* Insert (seq, type, key, value); seq must be new. -ENOMEM on failure. */
int eng__mem_add(eng_memtable *m, uint64_t seq, int type, kv_slice key,
                 kv_slice value);
/* Newest entry of key with seq <= snap_seq: returns 0 with *type and the
 * value copied into val (for ENG_TYPE_PUT), or KV_ENOTFOUND, or -ENOMEM. */
int eng__mem_get(eng_memtable *m, kv_slice key, uint64_t snap_seq, int *type,
                 kv_buf *val);
size_t eng__mem_bytes(const eng_memtable *m); /* arena bytes in use */
uint64_t eng__mem_count(const eng_memtable *m);
/* Iterator over all entries; holds a reference on m. NULL on -ENOMEM. */
eng_iiter *eng__mem_iter(eng_memtable *m);

/* ---- record log (log.c): the framing of the WAL and the MANIFEST -----------
 * A log file is a 32-byte header (magic, version, log number) followed by
 * records; each record carries the log number, its length and checksums, so
 * a reader can tell a torn tail (no valid record after the bad bytes) from
 * corruption in the middle (a valid record follows). See
 * docs/engine-format.md. The writer belongs to one thread at a time.
 */
#define ENG_LOG_MAX_RECORD ((uint32_t)ENG_MAX_BATCH + 1024u)
typedef struct eng_logw eng_logw;
/* Create a new log file at path with number lognum (header written). */
int eng__logw_create(eng_fault *f, const char *path, uint64_t lognum,
                     eng_logw **out);
/* Reuse the obsolete log at old_path as log lognum at path: its header is
 * rewritten and synced, then it is renamed; later records overwrite the old
 * ones. On failure nothing is renamed and the old file may be unlinked. */
int eng__logw_recycle(eng_fault *f, const char *old_path, const char *path,
                      uint64_t lognum, eng_logw **out);
/* Append one record (written to the OS, not synced). On failure the file is
 * cut back to the end of the last whole record, so later appends stay valid;
 * if even that fails the writer is broken and every call returns the error. */
int eng__logw_add(eng_logw *w, kv_slice rec);
int eng__logw_sync(eng_logw *w);
uint64_t eng__logw_size(const eng_logw *w);
void eng__logw_close(eng_logw *w);

typedef struct eng_logr eng_logr;
int eng__logr_open(eng_fault *f, const char *path, eng_logr **out);
uint64_t eng__logr_lognum(const eng_logr *r);
/* Next record into *rec (valid until the next call): 0, or KV_ENOTFOUND at
 * the end. A torn tail also ends with KV_ENOTFOUND; then
 * eng__logr_torn_at() gives the offset where valid records end (else -1).
 * Corruption followed by a valid record returns KV_ECORRUPT (logged with the
 * file and offset). */
int eng__logr_next(eng_logr *r, kv_slice *rec);
int64_t eng__logr_torn_at(const eng_logr *r);
uint64_t eng__logr_valid_end(const eng_logr *r); /* end of last good record */
void eng__logr_close(eng_logr *r);

/* ---- bloom filter (bloom.c) ------------------------------------------------
 * One filter per table over user keys, 64-bit xxh3 hashing. */
typedef struct eng_bloom_builder {
    uint64_t *hashes;
    size_t n, cap;
    int bits_per_key;
} eng_bloom_builder;
void eng__bloom_init(eng_bloom_builder *b, int bits_per_key);
void eng__bloom_release(eng_bloom_builder *b);
int eng__bloom_add(eng_bloom_builder *b, kv_slice ukey);
/* Append the filter bytes to out; resets the builder's keys. */
int eng__bloom_finish(eng_bloom_builder *b, kv_buf *out);
/* true if key may be in the set; malformed filters answer true. */
bool eng__bloom_may_match(kv_slice filter, kv_slice ukey);

/* ---- block cache (cache.c) -------------------------------------------------
 * Sharded LRU keyed by (file number, offset), bounded by the sum of charges.
 * Entries in use (handles not yet released) are never freed. Thread-safe. */
typedef struct eng_cache eng_cache;
typedef struct eng_cache_handle eng_cache_handle;
typedef void (*eng_cache_deleter)(void *value);
int eng__cache_new(size_t capacity, eng_cache **out);
void eng__cache_free(eng_cache *c);
/* NULL if absent; else a handle the caller must release. */
eng_cache_handle *eng__cache_lookup(eng_cache *c, uint64_t file, uint64_t off);
/* Insert value (ownership moves to the cache; deleter frees it when evicted)
 * and return a handle, or NULL on -ENOMEM (value freed by the deleter). An
 * existing entry with the same key is replaced. */
eng_cache_handle *eng__cache_insert(eng_cache *c, uint64_t file, uint64_t off,
                                    void *value, size_t charge,
                                    eng_cache_deleter del);
void *eng__cache_value(eng_cache_handle *h);
void eng__cache_release(eng_cache *c, eng_cache_handle *h);
/* Drop every unused entry of a file (table deleted). */
void eng__cache_erase_file(eng_cache *c, uint64_t file);
/* Bytes in use: entries' charges plus reservations. */
size_t eng__cache_usage(eng_cache *c);
size_t eng__cache_capacity(const eng_cache *c);
/* Charge the cache for bytes held outside it (an open table's index and
 * filter blocks), evicting entries to make room; the caller gives exactly
 * the same bytes back with eng__cache_unreserve. Reserved bytes count in
 * usage and are never evicted. */
void eng__cache_reserve(eng_cache *c, size_t bytes);
void eng__cache_unreserve(eng_cache *c, size_t bytes);
size_t eng__cache_reserved(eng_cache *c);

/* ---- blocks (block.c) ------------------------------------------------------
 * Sorted entries with prefix-compressed keys and restart points. */
typedef struct eng_block_builder {
    kv_buf buf;
    kv_buf last_key;
    uint32_t *restarts;
    size_t nrestarts, cap_restarts;
    int interval, counter;
    uint32_t count;
} eng_block_builder;
void eng__bb_init(eng_block_builder *b, int restart_interval);
void eng__bb_release(eng_block_builder *b);
void eng__bb_reset(eng_block_builder *b);
/* Keys must be added in increasing order (the caller's comparator). */
int eng__bb_add(eng_block_builder *b, kv_slice key, kv_slice value);
/* Bytes the block would take if finished now. */
size_t eng__bb_size(const eng_block_builder *b);
/* Append the restart array; returns the finished block (valid until reset). */
int eng__bb_finish(eng_block_builder *b, kv_slice *out);
static inline bool eng__bb_empty(const eng_block_builder *b) {
    return b->count == 0;
}

/* A parsed block over bytes the caller keeps alive (or owns: own = true). */
typedef struct eng_block {
    const uint8_t *data;
    size_t size; /* bytes of entries (restart array excluded) */
    uint32_t nrestarts;
    const uint8_t *restarts;
    bool own; /* data is freed with the block */
} eng_block;
/* Validate the restart array; KV_ECORRUPT if malformed. */
int eng__block_parse(const uint8_t *data, size_t len, bool own,
                     eng_block **out);
void eng__block_free(eng_block *b);
size_t eng__block_charge(const eng_block *b);
/* Iterator over the block's entries with cmp as the key order (ikey or user
 * key). The block must outlive the iterator unless release_fn is given: then
 * release_fn(release_arg) runs when the iterator is freed (cache handle). */
typedef int (*eng_cmp_fn)(kv_slice a, kv_slice b);
eng_iiter *eng__block_iter(const eng_block *b, eng_cmp_fn cmp,
                           void (*release_fn)(void *), void *release_arg);

/* ---- tables (table.c) ------------------------------------------------------
 * Builder writes a whole table and fsyncs it; reader keeps the index and
 * filter blocks in memory (views of the mapping when the table is mapped,
 * else copies charged to the block cache while the table is open) and reads
 * data blocks through the block cache. */
typedef struct eng_table_opts {
    size_t block_bytes;
    int restart_interval;
    int bloom_bits_per_key;
    int compression_level; /* 0: no compression */
} eng_table_opts;

typedef struct eng_table_props {
    uint64_t file_size;
    uint64_t entries;
    uint64_t deletions;
    uint64_t min_seq, max_seq;
    kv_buf smallest; /* first internal key (owned by the props) */
    kv_buf largest;  /* last internal key */
    uint64_t raw_key_bytes, raw_value_bytes;
} eng_table_props;
void eng__props_release(eng_table_props *p);

typedef struct eng_tbuilder eng_tbuilder;
int eng__tb_new(eng_fault *f, const char *path, const eng_table_opts *o,
                eng_tbuilder **out);
/* Internal keys in strictly increasing eng__ikey_cmp order. */
int eng__tb_add(eng_tbuilder *b, kv_slice ikey, kv_slice value);
uint64_t eng__tb_size(const eng_tbuilder *b); /* bytes written so far */
uint64_t eng__tb_entries(const eng_tbuilder *b);
/* Write filter, index, footer; fsync; close. Fills props (caller releases). */
int eng__tb_finish(eng_tbuilder *b, eng_table_props *props);
/* Close and unlink the partial file. */
void eng__tb_abandon(eng_tbuilder *b);
void eng__tb_free(eng_tbuilder *b); /* after finish */

typedef struct eng_table eng_table;
/* Open a finished table: reads and verifies footer, index, filter.
 * cache may be NULL (no caching). With map (and no fault injector f) the
 * file is mapped and data blocks are read through the mapping; see
 * eng_options.mmap_reads. KV_ECORRUPT / KV_EVERSION logged. */
int eng__table_open(eng_fault *f, const char *path, uint64_t file_number,
                    eng_cache *cache, bool map, eng_table **out);
void eng__table_close(eng_table *t);
/* Point lookup of the newest entry with user key ukey and seq <= snap_seq.
 * 0 with *type, val and *found_seq (the entry's sequence; may be NULL)
 * filled, KV_ENOTFOUND, or an error. *probed is set to whether the filter
 * let the lookup reach a data block. (Lead's change: found_seq added so
 * overlapping tables can be compared.) */
int eng__table_get(eng_table *t, kv_slice ukey, uint64_t snap_seq, int *type,
                   kv_buf *val, bool *probed, uint64_t *found_seq);
/* Iterator over all entries; the table must outlive it. fill_cache false for
 * compaction reads (do not evict hot blocks). NULL on -ENOMEM. */
eng_iiter *eng__table_iter(eng_table *t, bool fill_cache);
/* Whether a user scan of t (fill_cache) reads ahead in windows with pread
 * rather than the mapping in place: always for a table read with pread,
 * and for a mapped one until point lookups have read about twice its size
 * through the mapping. */
bool eng__table_scan_windows(const eng_table *t);
/* Heap bytes the open table holds: the reader, its properties, and its
 * index and filter blocks unless they are views of the mapping. */
size_t eng__table_mem(const eng_table *t);
/* Of those, the index and filter bytes reserved in the block cache (0 when
 * mapped or opened without a cache); given back by eng__table_close. */
size_t eng__table_charge(const eng_table *t);

#endif
