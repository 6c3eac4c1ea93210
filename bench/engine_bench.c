/*
 * engine_bench: a db_bench-style comparison of the quorumfs engine with
 * LevelDB and RocksDB, each driven through its C API with matching options.
 *
 * Each engine runs in a forked child, so its peak RSS (VmHWM) is its own and
 * one engine's caches cannot help another; the child sends a fixed-size
 * result record per run over a pipe and the parent prints the summary and
 * ratio tables. Keys are 16 bytes: the zero-padded decimal of 2*i for key
 * number i, so the odd numbers between them are keys never written
 * (readmissing) that still fall inside every table's key range, where only a
 * bloom filter can reject them. Values are cut from a buffer in which each
 * 100-byte run is 50 random bytes written twice, so they compress to about
 * half. Latencies go into a log-linear histogram (32 sub-buckets per power of
 * two, so a percentile is within ~3%). Usage and workload definitions are in
 * docs/PERFORMANCE.md.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <malloc.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/benchutil.h"
#ifndef QFS_BENCH_NO_ENGINE
#include "engine/engine.h"
#endif
#ifdef QFS_HAVE_LEVELDB
#include <leveldb/c.h>
#endif
#ifdef QFS_HAVE_ROCKSDB
#include <rocksdb/c.h>
#endif

#define KEY_LEN 16
#define MAX_LIST 16
#define MAX_THREADS 256
#define VALUE_BUF_BYTES (1u << 20)
#define MIB (1024.0 * 1024.0)
#define HIST_SUB_BITS 5 /* 32 sub-buckets per power of two: within ~3% */

/* ---- configuration --------------------------------------------------------
 */

enum wl {
    W_FILLSEQ,
    W_FILLRANDOM,
    W_OVERWRITE,
    W_READRANDOM,
    W_READSEQ,
    W_READMISSING,
    W_DURABLE,
    W_WRITEAMP,
    W_COUNT
};
static const char *const wl_names[W_COUNT] = {
    "fillseq", "fillrandom",  "overwrite", "readrandom",
    "readseq", "readmissing", "durable",   "writeamp"};

typedef struct cfg {
    const char *engines[MAX_LIST];
    int nengines;
    enum wl workloads[MAX_LIST];
    int nworkloads;
    uint64_t num, durable_num;
    int threads[MAX_LIST];
    int nthreads;
    bool threads_set;
    int vsizes[MAX_LIST];
    int nvsizes;
    char dir[PATH_MAX];
    bool dir_made; /* we created dir, so we remove it */
    bool keep, json;
    size_t cache_mb, memtable_mb;
    int bloom_bits;
    bool zstd;
    bool pread;      /* quorumfs: mmap_reads off */
    double duration; /* seconds per run, 0: no cap */
    size_t wa_memtable_mb, wa_mb, wa_live_mb;
    uint64_t seed;
} cfg;

/* What every adapter is told; identical for all three engines. */
typedef struct store_opts {
    size_t memtable_bytes, cache_bytes;
    int bloom_bits;
    bool zstd;
    bool tiered; /* quorumfs ENG_COMPACT_TIERED, rocksdb universal */
    bool pread;  /* quorumfs only: mmap_reads off */
} store_opts;

/* Per-thread scratch an adapter may use for reads. */
typedef struct scratch {
    kv_buf val;
} scratch;

/* Disk and memory figures an adapter can report; NAN or 0 when unknown. */
typedef struct disk_stats {
    uint64_t written_bytes; /* flush + compaction output */
    uint64_t table_bytes;   /* live sorted tables */
    uint64_t mem_bytes;
    bool have_eng; /* the fields below come from eng_db_stats */
    double write_amp, space_amp;
    uint64_t gets, tables_probed, bloom_negative, bloom_false_positive;
    uint64_t debt_bytes, stall_us, syncs, live_tables;
} disk_stats;

typedef struct adapter {
    const char *name;
    const char *tiered_name; /* NULL: one compaction style only */
    int (*open)(const char *dir, const store_opts *o, void **out);
    void (*close)(void *db);
    int (*put)(void *db, const char *k, const char *v, size_t vlen, bool sync);
    /* 1 found (*vlen set), 0 missing, -1 error (already reported) */
    int (*get)(void *db, scratch *s, const char *k, size_t *vlen);
    int (*iter_new)(void *db, void **out);
    void (*iter_seek)(void *it, const char *k);
    bool (*iter_valid)(void *it);
    void (*iter_next)(void *it);
    const char *(*iter_key)(void *it, size_t *klen);
    size_t (*iter_vlen)(void *it);
    int (*iter_status)(void *it); /* 0 or -1 (reported) */
    void (*iter_free)(void *it);
    void (*stats)(void *db, disk_stats *out);
} adapter;

/* ---- small helpers --------------------------------------------------------
 */

/* Uniform in [0, n) from the stream *s; 0 for n == 0. */
static inline uint64_t rnd_below(uint64_t *s, uint64_t n) {
    return n ? bu_rnd_next(s) % n : 0;
}

/* 16 zero-padded decimal digits of n. */
static inline void key_format(char *k, uint64_t n) {
    for (int i = KEY_LEN - 1; i >= 0; i--) {
        k[i] = (char)('0' + n % 10);
        n /= 10;
    }
}
static inline void key_written(char *k, uint64_t i) {
    key_format(k, 2 * i);
}
static inline void key_missing(char *k, uint64_t i) {
    key_format(k, 2 * i + 1);
}

/*
 * A bijection on [0, n): a 4-round Feistel network over the smallest even
 * bit width covering n, walking the cycle until the value lands below n.
 * It lets fillrandom write every key exactly once in a random order without
 * a table of n entries.
 */
typedef struct perm {
    uint64_t n, mask;
    int half;
    uint64_t rk[4];
} perm;

static void perm_init(perm *p, uint64_t n, uint64_t seed) {
    int bits = 2;
    while (bits < 62 && (UINT64_C(1) << bits) < n) bits += 2;
    p->n = n;
    p->half = bits / 2;
    p->mask = (UINT64_C(1) << p->half) - 1;
    for (int i = 0; i < 4; i++)
        p->rk[i] = bu_mix64(seed + 0x1234567u * (i + 1));
}

static uint64_t perm_apply(const perm *p, uint64_t x) {
    do {
        uint64_t l = x >> p->half, r = x & p->mask;
        for (int i = 0; i < 4; i++) {
            uint64_t t = l ^ (bu_mix64(r ^ p->rk[i]) & p->mask);
            l = r;
            r = t;
        }
        x = (l << p->half) | r;
    } while (x >= p->n);
    return x;
}

/* ---- latency ---------------------------------------------------------------
 */

/* The q-quantile of h in microseconds (bu_hist_quantile_us), 0 for an
 * empty histogram. */
static double quantile_us(const bu_hist *h, double q) {
    double v = bu_hist_quantile_us(h, q);
    return isnan(v) ? 0 : v;
}

/* ---- process helpers ------------------------------------------------------
 */

/* VmHWM of this process in KiB, 0 if unreadable. */
static uint64_t peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kb = 0;
    if (!f) return 0;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "VmHWM: %" SCNu64, &kb) == 1) break;
    }
    fclose(f);
    return kb;
}

/* Resident pages that are not file-backed or shared, in KiB: the heap,
 * memtables and caches, without table pages an engine maps (which the
 * kernel can drop at any time and VmHWM counts). 0 if unreadable. */
static uint64_t anon_rss_kb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size, resident, shared;
    uint64_t kb = 0;
    if (!f) return 0;
    if (fscanf(f, "%llu %llu %llu", &size, &resident, &shared) == 3 &&
        resident >= shared)
        kb = (uint64_t)(resident - shared) * (uint64_t)sysconf(_SC_PAGESIZE) /
             1024;
    fclose(f);
    return kb;
}

/* Start a new VmHWM window (Linux >= 4.0); harmless where refused. */
static bool reset_peak_rss(void) {
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd < 0) return false;
    bool ok = write(fd, "5", 1) == 1;
    close(fd);
    return ok;
}

/* ---- quorumfs adapter -----------------------------------------------------
 */

#ifndef QFS_BENCH_NO_ENGINE
static int q_open(const char *dir, const store_opts *o, void **out) {
    eng_options opt;
    eng_db *db = NULL;
    eng_options_init(&opt);
    opt.create_if_missing = true;
    opt.sync = ENG_SYNC_NONE; /* durable asks for group commit per write */
    opt.style = o->tiered ? ENG_COMPACT_TIERED : ENG_COMPACT_LEVELED;
    opt.memtable_bytes = o->memtable_bytes;
    opt.cache_bytes = o->cache_bytes;
    opt.bloom_bits_per_key = o->bloom_bits;
    opt.compression_level = o->zstd ? 1 : 0;
    opt.mmap_reads = !o->pread;
    int rc = eng_db_open(dir, &opt, &db);
    if (rc < 0) {
        fprintf(stderr, "quorumfs: cannot open '%s': %s\n", dir,
                kv_strerror(rc));
        return -1;
    }
    *out = db;
    return 0;
}

static void q_close(void *db) {
    int rc = eng_db_close(db);
    if (rc < 0) fprintf(stderr, "quorumfs: close: %s\n", kv_strerror(rc));
}

static int q_put(void *db, const char *k, const char *v, size_t vlen,
                 bool sync) {
    int rc = eng_db_put(db, kv_slice_make(k, KEY_LEN), kv_slice_make(v, vlen),
                        sync ? ENG_WF_SYNC_GROUP : ENG_WF_SYNC_NONE);
    if (rc < 0) {
        fprintf(stderr, "quorumfs: put: %s\n", kv_strerror(rc));
        return -1;
    }
    return 0;
}

static int q_get(void *db, scratch *s, const char *k, size_t *vlen) {
    int rc = eng_db_get(db, NULL, kv_slice_make(k, KEY_LEN), &s->val);
    if (rc == KV_ENOTFOUND) return 0;
    if (rc < 0) {
        fprintf(stderr, "quorumfs: get: %s\n", kv_strerror(rc));
        return -1;
    }
    *vlen = s->val.len;
    return 1;
}

static int q_iter_new(void *db, void **out) {
    eng_iter *it = NULL;
    int rc = eng_iter_new(db, NULL, &it);
    if (rc < 0) {
        fprintf(stderr, "quorumfs: iter_new: %s\n", kv_strerror(rc));
        return -1;
    }
    *out = it;
    return 0;
}

static void q_iter_seek(void *it, const char *k) {
    eng_iter_seek(it, kv_slice_make(k, KEY_LEN));
}
static bool q_iter_valid(void *it) {
    return eng_iter_valid(it);
}
static void q_iter_next(void *it) {
    eng_iter_next(it);
}
static const char *q_iter_key(void *it, size_t *klen) {
    kv_slice k = eng_iter_key(it);
    *klen = k.len;
    return (const char *)k.ptr;
}
static size_t q_iter_vlen(void *it) {
    return eng_iter_value(it).len;
}
static int q_iter_status(void *it) {
    int rc = eng_iter_status(it);
    if (rc < 0) {
        fprintf(stderr, "quorumfs: iterator: %s\n", kv_strerror(rc));
        return -1;
    }
    return 0;
}
static void q_iter_free(void *it) {
    eng_iter_free(it);
}

static void q_stats(void *db, disk_stats *out) {
    eng_stats st;
    memset(out, 0, sizeof(*out));
    if (eng_db_stats(db, &st) < 0) return;
    out->have_eng = true;
    out->written_bytes = st.flush_bytes_written + st.compact_bytes_written;
    out->table_bytes = st.live_table_bytes;
    out->mem_bytes = st.mem_bytes;
    out->write_amp = st.write_amp;
    out->space_amp = st.space_amp;
    out->gets = st.gets;
    out->tables_probed = st.tables_probed;
    out->bloom_negative = st.bloom_negative;
    out->bloom_false_positive = st.bloom_false_positive;
    out->debt_bytes = st.compaction_debt_bytes;
    out->stall_us = st.stall_us + st.slowdown_us;
    out->syncs = st.syncs;
    out->live_tables = st.live_tables;
}

static const adapter quorumfs_adapter = {
    .name = "quorumfs",
    .tiered_name = "tiered",
    .open = q_open,
    .close = q_close,
    .put = q_put,
    .get = q_get,
    .iter_new = q_iter_new,
    .iter_seek = q_iter_seek,
    .iter_valid = q_iter_valid,
    .iter_next = q_iter_next,
    .iter_key = q_iter_key,
    .iter_vlen = q_iter_vlen,
    .iter_status = q_iter_status,
    .iter_free = q_iter_free,
    .stats = q_stats,
};
#endif

/* ---- leveldb adapter ------------------------------------------------------
 */

#ifdef QFS_HAVE_LEVELDB
typedef struct ldb {
    leveldb_t *db;
    leveldb_options_t *opt;
    leveldb_cache_t *cache;
    leveldb_filterpolicy_t *filter;
    leveldb_writeoptions_t *wo, *wo_sync;
    leveldb_readoptions_t *ro;
} ldb;

static void l_close(void *p) {
    ldb *l = p;
    if (!l) return;
    if (l->db) leveldb_close(l->db);
    if (l->opt) leveldb_options_destroy(l->opt);
    if (l->cache) leveldb_cache_destroy(l->cache);
    if (l->filter) leveldb_filterpolicy_destroy(l->filter);
    if (l->wo) leveldb_writeoptions_destroy(l->wo);
    if (l->wo_sync) leveldb_writeoptions_destroy(l->wo_sync);
    if (l->ro) leveldb_readoptions_destroy(l->ro);
    free(l);
}

static int l_open(const char *dir, const store_opts *o, void **out) {
    ldb *l = calloc(1, sizeof(*l));
    char *err = NULL;
    if (!l) return -1;
    l->opt = leveldb_options_create();
    l->cache = leveldb_cache_create_lru(o->cache_bytes);
    l->filter = leveldb_filterpolicy_create_bloom(o->bloom_bits);
    leveldb_options_set_create_if_missing(l->opt, 1);
    leveldb_options_set_write_buffer_size(l->opt, o->memtable_bytes);
    leveldb_options_set_cache(l->opt, l->cache);
    leveldb_options_set_block_size(l->opt, 4096);
    if (o->bloom_bits > 0) leveldb_options_set_filter_policy(l->opt, l->filter);
    /* LevelDB 1.23 has no zstd; snappy is the nearest it has. */
    leveldb_options_set_compression(l->opt, o->zstd ? leveldb_snappy_compression
                                                    : leveldb_no_compression);
    l->wo = leveldb_writeoptions_create();
    l->wo_sync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(l->wo_sync, 1);
    l->ro = leveldb_readoptions_create();
    /* RocksDB and quorumfs check every block read; make LevelDB do so too. */
    leveldb_readoptions_set_verify_checksums(l->ro, 1);
    l->db = leveldb_open(l->opt, dir, &err);
    if (err) {
        fprintf(stderr, "leveldb: cannot open '%s': %s\n", dir, err);
        leveldb_free(err);
        l_close(l);
        return -1;
    }
    *out = l;
    return 0;
}

static int l_put(void *p, const char *k, const char *v, size_t vlen,
                 bool sync) {
    ldb *l = p;
    char *err = NULL;
    leveldb_put(l->db, sync ? l->wo_sync : l->wo, k, KEY_LEN, v, vlen, &err);
    if (err) {
        fprintf(stderr, "leveldb: put: %s\n", err);
        leveldb_free(err);
        return -1;
    }
    return 0;
}

static int l_get(void *p, scratch *s, const char *k, size_t *vlen) {
    ldb *l = p;
    char *err = NULL;
    /* The C API can only return a malloc'd copy of the value. */
    char *v = leveldb_get(l->db, l->ro, k, KEY_LEN, vlen, &err);
    if (err) {
        fprintf(stderr, "leveldb: get: %s\n", err);
        leveldb_free(err);
        return -1;
    }
    if (!v) return 0;
    leveldb_free(v);
    return 1;
}

static int l_iter_new(void *p, void **out) {
    ldb *l = p;
    *out = leveldb_create_iterator(l->db, l->ro);
    return 0;
}
static void l_iter_seek(void *it, const char *k) {
    leveldb_iter_seek(it, k, KEY_LEN);
}
static bool l_iter_valid(void *it) {
    return leveldb_iter_valid(it);
}
static void l_iter_next(void *it) {
    leveldb_iter_next(it);
}
static const char *l_iter_key(void *it, size_t *klen) {
    return leveldb_iter_key(it, klen);
}
static size_t l_iter_vlen(void *it) {
    size_t n;
    leveldb_iter_value(it, &n);
    return n;
}
static int l_iter_status(void *it) {
    char *err = NULL;
    leveldb_iter_get_error(it, &err);
    if (err) {
        fprintf(stderr, "leveldb: iterator: %s\n", err);
        leveldb_free(err);
        return -1;
    }
    return 0;
}
static void l_iter_free(void *it) {
    leveldb_iter_destroy(it);
}

/* Flush and compaction output: the Write(MB) column of "leveldb.stats". */
static void l_stats(void *p, disk_stats *out) {
    ldb *l = p;
    memset(out, 0, sizeof(*out));
    char *s = leveldb_property_value(l->db, "leveldb.stats");
    if (s) {
        double written = 0, tables = 0;
        for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
            int level, files;
            double size, secs, rd, wr;
            if (sscanf(line, "%d %d %lf %lf %lf %lf", &level, &files, &size,
                       &secs, &rd, &wr) == 6) {
                written += wr;
                tables += size;
            }
        }
        out->written_bytes = (uint64_t)(written * MIB);
        out->table_bytes = (uint64_t)(tables * MIB);
        leveldb_free(s);
    }
    /* The Size(MB) column is rounded to whole MiB; ask for bytes. */
    const char *start = "", *limit = "\xff";
    size_t start_len = 0, limit_len = 1;
    uint64_t size = 0;
    leveldb_approximate_sizes(l->db, 1, &start, &start_len, &limit, &limit_len,
                              &size);
    if (size) out->table_bytes = size;
    s = leveldb_property_value(l->db, "leveldb.approximate-memory-usage");
    if (s) {
        out->mem_bytes = strtoull(s, NULL, 10);
        leveldb_free(s);
    }
}

static const adapter leveldb_adapter = {
    .name = "leveldb",
    .tiered_name = NULL,
    .open = l_open,
    .close = l_close,
    .put = l_put,
    .get = l_get,
    .iter_new = l_iter_new,
    .iter_seek = l_iter_seek,
    .iter_valid = l_iter_valid,
    .iter_next = l_iter_next,
    .iter_key = l_iter_key,
    .iter_vlen = l_iter_vlen,
    .iter_status = l_iter_status,
    .iter_free = l_iter_free,
    .stats = l_stats,
};
#endif

/* ---- rocksdb adapter ------------------------------------------------------
 */

#ifdef QFS_HAVE_ROCKSDB
typedef struct rdb {
    rocksdb_t *db;
    rocksdb_options_t *opt;
    rocksdb_block_based_table_options_t *bbto;
    rocksdb_cache_t *cache;
    rocksdb_writeoptions_t *wo, *wo_sync;
    rocksdb_readoptions_t *ro;
} rdb;

static void r_close(void *p) {
    rdb *r = p;
    if (!r) return;
    if (r->db) rocksdb_close(r->db);
    if (r->opt) rocksdb_options_destroy(r->opt);
    /* The table options own the filter policy. */
    if (r->bbto) rocksdb_block_based_options_destroy(r->bbto);
    if (r->cache) rocksdb_cache_destroy(r->cache);
    if (r->wo) rocksdb_writeoptions_destroy(r->wo);
    if (r->wo_sync) rocksdb_writeoptions_destroy(r->wo_sync);
    if (r->ro) rocksdb_readoptions_destroy(r->ro);
    free(r);
}

static int r_open(const char *dir, const store_opts *o, void **out) {
    rdb *r = calloc(1, sizeof(*r));
    char *err = NULL;
    if (!r) return -1;
    r->opt = rocksdb_options_create();
    r->bbto = rocksdb_block_based_options_create();
    r->cache = rocksdb_cache_create_lru(o->cache_bytes);
    rocksdb_block_based_options_set_block_cache(r->bbto, r->cache);
    rocksdb_block_based_options_set_block_size(r->bbto, 4096);
    if (o->bloom_bits > 0)
        rocksdb_block_based_options_set_filter_policy(
            r->bbto, rocksdb_filterpolicy_create_bloom_full(o->bloom_bits));
    rocksdb_options_set_block_based_table_factory(r->opt, r->bbto);
    rocksdb_options_set_create_if_missing(r->opt, 1);
    rocksdb_options_set_write_buffer_size(r->opt, o->memtable_bytes);
    rocksdb_options_set_max_background_jobs(r->opt, 2);
    rocksdb_options_set_compression(r->opt, o->zstd ? rocksdb_zstd_compression
                                                    : rocksdb_no_compression);
    /* zstd level 1, as the quorumfs default; window bits as RocksDB's. */
    if (o->zstd) rocksdb_options_set_compression_options(r->opt, -14, 1, 0, 0);
    rocksdb_options_set_compaction_style(
        r->opt,
        o->tiered ? rocksdb_universal_compaction : rocksdb_level_compaction);
    r->wo = rocksdb_writeoptions_create();
    r->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(r->wo_sync, 1);
    r->ro = rocksdb_readoptions_create();
    r->db = rocksdb_open(r->opt, dir, &err);
    if (err) {
        fprintf(stderr, "rocksdb: cannot open '%s': %s\n", dir, err);
        rocksdb_free(err);
        r_close(r);
        return -1;
    }
    *out = r;
    return 0;
}

static int r_put(void *p, const char *k, const char *v, size_t vlen,
                 bool sync) {
    rdb *r = p;
    char *err = NULL;
    rocksdb_put(r->db, sync ? r->wo_sync : r->wo, k, KEY_LEN, v, vlen, &err);
    if (err) {
        fprintf(stderr, "rocksdb: put: %s\n", err);
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

static int r_get(void *p, scratch *s, const char *k, size_t *vlen) {
    rdb *r = p;
    char *err = NULL;
    /* Pinned: the value is read in place, without the copy leveldb_get makes.
     */
    rocksdb_pinnableslice_t *ps =
        rocksdb_get_pinned(r->db, r->ro, k, KEY_LEN, &err);
    if (err) {
        fprintf(stderr, "rocksdb: get: %s\n", err);
        rocksdb_free(err);
        return -1;
    }
    if (!ps) return 0;
    rocksdb_pinnableslice_value(ps, vlen);
    rocksdb_pinnableslice_destroy(ps);
    return 1;
}

static int r_iter_new(void *p, void **out) {
    rdb *r = p;
    *out = rocksdb_create_iterator(r->db, r->ro);
    return 0;
}
static void r_iter_seek(void *it, const char *k) {
    rocksdb_iter_seek(it, k, KEY_LEN);
}
static bool r_iter_valid(void *it) {
    return rocksdb_iter_valid(it);
}
static void r_iter_next(void *it) {
    rocksdb_iter_next(it);
}
static const char *r_iter_key(void *it, size_t *klen) {
    return rocksdb_iter_key(it, klen);
}
static size_t r_iter_vlen(void *it) {
    size_t n;
    rocksdb_iter_value(it, &n);
    return n;
}
static int r_iter_status(void *it) {
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    if (err) {
        fprintf(stderr, "rocksdb: iterator: %s\n", err);
        rocksdb_free(err);
        return -1;
    }
    return 0;
}
static void r_iter_free(void *it) {
    rocksdb_iter_destroy(it);
}

/* Flush and compaction output: "Cumulative compaction: X GB write" of
 * "rocksdb.stats" counts L0 flushes and every compaction (to 10 MB; the
 * per-level table rounds to 100 MB). */
static void r_stats(void *p, disk_stats *out) {
    rdb *r = p;
    uint64_t v;
    memset(out, 0, sizeof(*out));
    char *s = rocksdb_property_value(r->db, "rocksdb.stats");
    if (s) {
        for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
            double gb;
            if (sscanf(line, "Cumulative compaction: %lf GB write", &gb) == 1) {
                out->written_bytes = (uint64_t)(gb * 1024.0 * MIB);
                break;
            }
        }
        rocksdb_free(s);
    }
    if (rocksdb_property_int(r->db, "rocksdb.live-sst-files-size", &v) == 0)
        out->table_bytes = v;
    if (rocksdb_property_int(r->db, "rocksdb.cur-size-all-mem-tables", &v) == 0)
        out->mem_bytes += v;
    if (rocksdb_property_int(r->db, "rocksdb.block-cache-usage", &v) == 0)
        out->mem_bytes += v;
    if (rocksdb_property_int(r->db, "rocksdb.estimate-table-readers-mem", &v) ==
        0)
        out->mem_bytes += v;
}

static const adapter rocksdb_adapter = {
    .name = "rocksdb",
    .tiered_name = "universal",
    .open = r_open,
    .close = r_close,
    .put = r_put,
    .get = r_get,
    .iter_new = r_iter_new,
    .iter_seek = r_iter_seek,
    .iter_valid = r_iter_valid,
    .iter_next = r_iter_next,
    .iter_key = r_iter_key,
    .iter_vlen = r_iter_vlen,
    .iter_status = r_iter_status,
    .iter_free = r_iter_free,
    .stats = r_stats,
};
#endif

static const struct {
    const char *name;
    const adapter *ad; /* NULL: not built in */
} all_engines[] = {
#ifndef QFS_BENCH_NO_ENGINE
    {"quorumfs", &quorumfs_adapter},
#else
    {"quorumfs", NULL},
#endif
#ifdef QFS_HAVE_LEVELDB
    {"leveldb", &leveldb_adapter},
#else
    {"leveldb", NULL},
#endif
#ifdef QFS_HAVE_ROCKSDB
    {"rocksdb", &rocksdb_adapter},
#else
    {"rocksdb", NULL},
#endif
};

/* ---- stores and runs ------------------------------------------------------
 */

/* Which keys the last fill wrote: thread t wrote key numbers perm(lo[t]) ..
 * perm(lo[t] + done[t] - 1) (identity for fillseq). A capped fill writes a
 * prefix of each range, so reads still pick only keys that exist. */
typedef struct fill_state {
    bool permuted;
    perm p;
    int n;
    uint64_t lo[MAX_THREADS], done[MAX_THREADS];
    uint64_t total;
} fill_state;

/* One store directory: an open engine, the options it was opened with and
 * what the bench wrote into it since it was created. */
typedef struct store {
    const adapter *ad;
    void *db;
    char path[PATH_MAX];
    store_opts o;
    const char *style; /* "leveled" or "tiered" */
    int vs;
    uint64_t keyspace;      /* key numbers 0 .. keyspace-1 */
    uint64_t user_bytes;    /* key + value bytes put since creation */
    _Atomic uint64_t *live; /* bit per key number ever written */
    fill_state fill;
} store;

typedef struct result {
    char engine[16], workload[16], style[16];
    int threads, value_size;
    uint64_t ops, found;
    double secs, ops_per_sec, mb_per_sec, p50, p99, p999;
    bool capped;
    double write_amp, read_amp, space_amp, space_amp_tables, bloom_fp;
    uint64_t peak_rss_kb, peak_anon_kb, mem_bytes, table_bytes;
} result;

typedef struct run {
    store *st;
    enum wl w;
    const char *vbuf;
    uint64_t deadline; /* bu_now_ns() value, 0: none */
    uint64_t seed;
    atomic_bool failed, capped, done;
    atomic_uint_least64_t peak_anon_kb; /* sampled while the run lasts */
    pthread_barrier_t bar;
} run;

/* Peak anonymous memory has no kernel counter: sample it every 10 ms. */
static void *anon_sampler(void *arg) {
    run *r = arg;
    while (!atomic_load(&r->done)) {
        uint64_t kb = anon_rss_kb();
        if (kb > atomic_load(&r->peak_anon_kb))
            atomic_store(&r->peak_anon_kb, kb);
        bu_sleep_ms(10);
    }
    return NULL;
}

typedef struct worker {
    run *r;
    int id;
    pthread_t th;
    uint64_t lo, n; /* this thread's share of the run's key numbers/ops */
    uint64_t done, found, bytes;
    bu_hist *h;
    scratch s;
} worker;

static uint64_t fill_pick(const fill_state *f, uint64_t j) {
    for (int t = 0; t < f->n; t++) {
        if (j < f->done[t]) {
            uint64_t idx = f->lo[t] + j;
            return f->permuted ? perm_apply(&f->p, idx) : idx;
        }
        j -= f->done[t];
    }
    return 0;
}

static bool is_write(enum wl w) {
    return w == W_FILLSEQ || w == W_FILLRANDOM || w == W_OVERWRITE ||
           w == W_DURABLE || w == W_WRITEAMP;
}

static void scan_range(worker *w) {
    run *r = w->r;
    store *st = r->st;
    const adapter *ad = st->ad;
    char key[KEY_LEN], end[KEY_LEN];
    bool has_end = w->lo + w->n < st->keyspace;
    void *it = NULL;

    if (ad->iter_new(st->db, &it) < 0) {
        atomic_store(&r->failed, true);
        return;
    }
    key_written(key, w->lo);
    key_written(end, w->lo + w->n);
    uint64_t t0 = bu_now_ns();
    /* The seek's cost lands in the first entry's latency. */
    for (ad->iter_seek(it, key); ad->iter_valid(it);) {
        size_t klen;
        const char *k = ad->iter_key(it, &klen);
        if (has_end && klen == KEY_LEN && memcmp(k, end, KEY_LEN) >= 0) break;
        size_t vlen = ad->iter_vlen(it);
        ad->iter_next(it);
        uint64_t t1 = bu_now_ns();
        bu_hist_add(w->h, t1 - t0);
        t0 = t1;
        w->done++;
        w->bytes += klen + vlen;
        if (r->deadline && t1 > r->deadline) {
            atomic_store(&r->capped, true);
            break;
        }
        if ((w->done & 1023) == 0 && atomic_load(&r->failed)) break;
    }
    if (ad->iter_status(it) < 0) atomic_store(&r->failed, true);
    ad->iter_free(it);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    run *r = w->r;
    store *st = r->st;
    const adapter *ad = st->ad;
    uint64_t rs = bu_mix64(r->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)w->id);
    size_t vpos = (size_t)(rnd_below(&rs, VALUE_BUF_BYTES / 100)) * 100;
    size_t vs = (size_t)st->vs;
    bool sync = r->w == W_DURABLE;
    char key[KEY_LEN];

    pthread_barrier_wait(&r->bar);
    if (r->w == W_READSEQ) {
        scan_range(w);
        return NULL;
    }
    for (uint64_t i = 0; i < w->n; i++) {
        uint64_t k = 0, t0, t1;
        switch (r->w) {
        case W_FILLSEQ:
            k = w->lo + i;
            break;
        case W_FILLRANDOM:
        case W_DURABLE:
            k = perm_apply(&st->fill.p, w->lo + i);
            break;
        case W_OVERWRITE:
        case W_READRANDOM:
            k = fill_pick(&st->fill, rnd_below(&rs, st->fill.total));
            break;
        case W_WRITEAMP:
        case W_READMISSING:
            k = rnd_below(&rs, st->keyspace);
            break;
        default:
            break;
        }
        if (is_write(r->w)) {
            key_written(key, k);
            t0 = bu_now_ns();
            int rc = ad->put(st->db, key, r->vbuf + vpos, vs, sync);
            t1 = bu_now_ns();
            if (rc < 0) {
                atomic_store(&r->failed, true);
                break;
            }
            vpos += vs;
            if (vpos >= VALUE_BUF_BYTES) vpos -= VALUE_BUF_BYTES;
            if (k < st->keyspace)
                atomic_fetch_or_explicit(&st->live[k / 64],
                                         UINT64_C(1) << (k % 64),
                                         memory_order_relaxed);
            w->bytes += KEY_LEN + vs;
        } else {
            size_t vlen = 0;
            if (r->w == W_READMISSING)
                key_missing(key, k);
            else
                key_written(key, k);
            t0 = bu_now_ns();
            int rc = ad->get(st->db, &w->s, key, &vlen);
            t1 = bu_now_ns();
            if (rc < 0) {
                atomic_store(&r->failed, true);
                break;
            }
            if (rc == 1) {
                w->found++;
                w->bytes += KEY_LEN + vlen;
            }
        }
        bu_hist_add(w->h, t1 - t0);
        w->done++;
        if (r->deadline && t1 > r->deadline) {
            atomic_store(&r->capped, true);
            break;
        }
        if (atomic_load_explicit(&r->failed, memory_order_relaxed)) break;
    }
    return NULL;
}

static void store_close(store *st) {
    if (st->db) st->ad->close(st->db);
    st->db = NULL;
}

static void store_release(store *st, bool keep) {
    store_close(st);
    free(st->live);
    st->live = NULL;
    if (!keep && st->path[0]) bu_rm_rf(st->path);
}

/* Remove whatever is at st->path and open a fresh, empty store there. */
static int store_create(store *st, uint64_t keyspace) {
    store_close(st);
    bu_rm_rf(st->path);
    if (mkdir(st->path, 0755) != 0) {
        fprintf(stderr, "cannot create '%s': %s\n", st->path, strerror(errno));
        return -1;
    }
    free(st->live);
    st->keyspace = keyspace;
    st->live = calloc(keyspace / 64 + 1, sizeof(uint64_t));
    if (!st->live) return -1;
    st->user_bytes = 0;
    memset(&st->fill, 0, sizeof(st->fill));
    return st->ad->open(st->path, &st->o, &st->db);
}

static uint64_t live_keys(const store *st) {
    uint64_t n = 0;
    for (uint64_t i = 0; i < st->keyspace / 64 + 1; i++)
        n += (uint64_t)__builtin_popcountll(atomic_load(&st->live[i]));
    return n;
}

typedef struct out_ctx {
    const cfg *c;
    int fd; /* results go to the parent through this pipe */
} out_ctx;

static void print_json(const store *st, const result *r) {
    printf("{\"engine\":\"%s\",\"workload\":\"%s\"", r->engine, r->workload);
    if (r->style[0]) printf(",\"style\":\"%s\"", r->style);
    printf(",\"threads\":%d,\"value_size\":%d,\"num\":%" PRIu64
           ",\"found\":%" PRIu64,
           r->threads, r->value_size, r->ops, r->found);
    bu_json_num(stdout, "seconds", r->secs);
    bu_json_num(stdout, "ops_per_sec", r->ops_per_sec);
    bu_json_num(stdout, "mb_per_sec", r->mb_per_sec);
    bu_json_num(stdout, "p50_us", r->p50);
    bu_json_num(stdout, "p99_us", r->p99);
    bu_json_num(stdout, "p999_us", r->p999);
    printf(",\"capped\":%s", r->capped ? "true" : "false");
    bu_json_num(stdout, "write_amp", r->write_amp);
    bu_json_num(stdout, "read_amp", r->read_amp);
    bu_json_num(stdout, "space_amp", r->space_amp);
    bu_json_num(stdout, "space_amp_tables", r->space_amp_tables);
    bu_json_num(stdout, "bloom_fp_rate", r->bloom_fp);
    printf(",\"peak_rss_kb\":%" PRIu64 ",\"peak_anon_kb\":%" PRIu64
           ",\"mem_bytes\":%" PRIu64 ",\"table_bytes\":%" PRIu64,
           r->peak_rss_kb, r->peak_anon_kb, r->mem_bytes, r->table_bytes);
    printf(",\"memtable_mb\":%zu,\"cache_mb\":%zu,\"bloom_bits\":%d,"
           "\"compression\":\"%s\"}\n",
           st->o.memtable_bytes >> 20, st->o.cache_bytes >> 20,
           st->o.bloom_bits, st->o.zstd ? "zstd" : "none");
}

static const char *row_fmt = "%-9s %-16s %7s %6s %10s %11s %8s %9s %9s %9s "
                             "%8s %8s\n";

static void print_row_header(void) {
    printf(row_fmt, "engine", "workload", "threads", "value", "num", "ops/s",
           "MB/s", "p50_us", "p99_us", "p99.9_us", "rss_MiB", "anon_MiB");
}

static void print_row(const result *r) {
    char wl[40], th[16], vs[16], num[24], ops[24], mb[24], p50[24], p99[24],
        p999[24], rss[24], anon[24];
    snprintf(wl, sizeof(wl), "%s%s%s%s", r->workload, r->style[0] ? ":" : "",
             r->style, r->capped ? "*" : "");
    snprintf(th, sizeof(th), "%d", r->threads);
    snprintf(vs, sizeof(vs), "%d", r->value_size);
    snprintf(num, sizeof(num), "%" PRIu64, r->ops);
    snprintf(ops, sizeof(ops), "%.0f", r->ops_per_sec);
    snprintf(mb, sizeof(mb), "%.1f", r->mb_per_sec);
    snprintf(p50, sizeof(p50), "%.2f", r->p50);
    snprintf(p99, sizeof(p99), "%.2f", r->p99);
    snprintf(p999, sizeof(p999), "%.2f", r->p999);
    snprintf(rss, sizeof(rss), "%.1f", (double)r->peak_rss_kb / 1024.0);
    snprintf(anon, sizeof(anon), "%.1f", (double)r->peak_anon_kb / 1024.0);
    printf(row_fmt, r->engine, wl, th, vs, num, ops, mb, p50, p99, p999, rss,
           anon);
}

static void print_stats_line(const result *r, const disk_stats *d) {
    printf("    %s stats:", r->engine);
    if (!isnan(r->write_amp)) printf(" write_amp %.2f", r->write_amp);
    if (!isnan(r->read_amp)) printf(" read_amp %.2f", r->read_amp);
    if (!isnan(r->space_amp)) printf(" space_amp %.2f", r->space_amp);
    if (!isnan(r->space_amp_tables))
        printf(" tables/logical %.2f", r->space_amp_tables);
    if (!isnan(r->bloom_fp)) printf(" bloom_fp_rate %.4f", r->bloom_fp);
    printf(" peak_rss %.1f MiB peak_anon %.1f MiB mem %.1f MiB tables %.1f MiB",
           (double)r->peak_rss_kb / 1024.0, (double)r->peak_anon_kb / 1024.0,
           (double)r->mem_bytes / MIB, (double)r->table_bytes / MIB);
    if (d->have_eng)
        printf(" live_tables %" PRIu64
               " debt %.1f MiB stall %.2f s syncs %" PRIu64,
               d->live_tables, (double)d->debt_bytes / MIB,
               (double)d->stall_us / 1e6, d->syncs);
    if (r->found != r->ops && (!strcmp(r->workload, "readrandom")))
        printf(" NOT-FOUND %" PRIu64, r->ops - r->found);
    if (!strcmp(r->workload, "readmissing") && r->found)
        printf(" FOUND-MISSING %" PRIu64, r->found);
    printf("\n");
}

/* Run workload w on st from nthreads threads over num key numbers (writes
 * and reads: ops; readseq: the key range is split). Reports unless quiet. */
static int run_one(const out_ctx *oc, store *st, enum wl w, int nthreads,
                   uint64_t num, const char *vbuf, bool quiet) {
    const cfg *c = oc->c;
    worker *ws = calloc((size_t)nthreads, sizeof(*ws));
    bu_hist *total = bu_hist_new(HIST_SUB_BITS);
    run r;
    disk_stats before, after;
    result res;
    int rc = -1, started = 0;
    uint64_t t0 = 0;
    pthread_t sampler;
    bool sampling = false;

    if (!ws || !total) goto out;
    memset(&r, 0, sizeof(r));
    r.st = st;
    r.w = w;
    r.vbuf = vbuf;
    r.seed = c->seed ^
             bu_mix64((uint64_t)w * 7919 + (uint64_t)nthreads + st->user_bytes);
    if (w == W_READSEQ) num = st->keyspace;
    if (w == W_FILLRANDOM || w == W_DURABLE)
        perm_init(&st->fill.p, st->keyspace, c->seed + (uint64_t)st->vs);
    st->ad->stats(st->db, &before);
    /* Free memory glibc still holds from earlier runs (stores closed, a
     * block cache emptied) would count as this run's anonymous memory. */
    malloc_trim(0);
    reset_peak_rss(); /* where refused, the peak is since the fork */
    pthread_barrier_init(&r.bar, NULL, (unsigned)nthreads + 1);
    for (int t = 0; t < nthreads; t++) {
        worker *wk = &ws[t];
        wk->r = &r;
        wk->id = t;
        wk->lo = num * (uint64_t)t / (uint64_t)nthreads;
        wk->n = num * (uint64_t)(t + 1) / (uint64_t)nthreads - wk->lo;
        wk->h = bu_hist_new(HIST_SUB_BITS);
        kv_buf_init(&wk->s.val);
        if (!wk->h) goto join;
    }
    if (c->duration > 0)
        r.deadline = bu_now_ns() + (uint64_t)(c->duration * 1e9);
    for (started = 0; started < nthreads; started++) {
        if (pthread_create(&ws[started].th, NULL, worker_main, &ws[started]) !=
            0) {
            fprintf(stderr, "cannot start thread %d\n", started);
            /* The barrier counts threads that will never come: fail hard. */
            exit(1);
        }
    }
    pthread_barrier_wait(&r.bar);
    t0 = bu_now_ns();
    sampling = pthread_create(&sampler, NULL, anon_sampler, &r) == 0;
join:
    for (int t = 0; t < started; t++) pthread_join(ws[t].th, NULL);
    uint64_t t1 = bu_now_ns();
    atomic_store(&r.done, true);
    if (sampling) pthread_join(sampler, NULL);
    pthread_barrier_destroy(&r.bar);
    if (started < nthreads || atomic_load(&r.failed)) goto out;

    memset(&res, 0, sizeof(res));
    snprintf(res.engine, sizeof(res.engine), "%s", st->ad->name);
    snprintf(res.workload, sizeof(res.workload), "%s", wl_names[w]);
    if (w == W_WRITEAMP)
        snprintf(res.style, sizeof(res.style), "%s", st->style);
    res.threads = nthreads;
    res.value_size = st->vs;
    uint64_t bytes = 0;
    for (int t = 0; t < nthreads; t++) {
        bu_hist_merge(total, ws[t].h);
        res.ops += ws[t].done;
        res.found += ws[t].found;
        bytes += ws[t].bytes;
    }
    res.secs = (double)(t1 - t0) / 1e9;
    res.ops_per_sec = res.secs > 0 ? (double)res.ops / res.secs : 0;
    res.mb_per_sec = res.secs > 0 ? (double)bytes / MIB / res.secs : 0;
    res.p50 = quantile_us(total, 0.50);
    res.p99 = quantile_us(total, 0.99);
    res.p999 = quantile_us(total, 0.999);
    res.capped = atomic_load(&r.capped);
    if (is_write(w)) st->user_bytes += bytes;
    if (w == W_FILLSEQ || w == W_FILLRANDOM || w == W_DURABLE) {
        st->fill.permuted = w != W_FILLSEQ;
        st->fill.n = nthreads;
        st->fill.total = 0;
        for (int t = 0; t < nthreads; t++) {
            st->fill.lo[t] = ws[t].lo;
            st->fill.done[t] = ws[t].done;
            st->fill.total += ws[t].done;
        }
    }

    st->ad->stats(st->db, &after);
    res.peak_rss_kb = peak_rss_kb();
    res.peak_anon_kb = KV_MAX(atomic_load(&r.peak_anon_kb), anon_rss_kb());
    res.mem_bytes = after.mem_bytes;
    res.table_bytes = after.table_bytes;
    res.write_amp = res.read_amp = res.space_amp = NAN;
    res.space_amp_tables = res.bloom_fp = NAN;
    uint64_t logical = live_keys(st) * (uint64_t)(KEY_LEN + st->vs);
    if (logical && after.table_bytes)
        res.space_amp_tables = (double)after.table_bytes / (double)logical;
    if (after.have_eng) {
        res.write_amp = after.write_amp;
        res.space_amp = after.space_amp;
        uint64_t gets = after.gets - before.gets;
        if (gets)
            res.read_amp =
                (double)(after.tables_probed - before.tables_probed) /
                (double)gets;
        uint64_t fp = after.bloom_false_positive - before.bloom_false_positive;
        uint64_t neg = after.bloom_negative - before.bloom_negative;
        if (w == W_READMISSING && fp + neg)
            res.bloom_fp = (double)fp / (double)(fp + neg);
    } else if (st->user_bytes && after.written_bytes) {
        res.write_amp = (double)after.written_bytes / (double)st->user_bytes;
    }

    if (!quiet) {
        if (c->json) {
            print_json(st, &res);
        } else {
            print_row(&res);
            print_stats_line(&res, &after);
        }
        fflush(stdout);
        if (write(oc->fd, &res, sizeof(res)) != (ssize_t)sizeof(res))
            perror("result pipe");
    }
    rc = 0;
out:
    if (ws) {
        for (int t = 0; t < nthreads; t++) {
            bu_hist_free(ws[t].h);
            kv_buf_release(&ws[t].s.val);
        }
    }
    free(ws);
    bu_hist_free(total);
    return rc;
}

/* ---- one engine, in its own process ---------------------------------------
 */

static char *make_values(uint64_t seed, size_t max_vs) {
    size_t n = VALUE_BUF_BYTES + max_vs + 100;
    char *b = malloc(n);
    uint64_t rs = seed;
    if (!b) return NULL;
    /* 50 random bytes, then the same 50 again: a 100-byte run compresses to
     * about half, like db_bench's default compression ratio of 0.5. */
    for (size_t off = 0; off + 100 <= n; off += 100) {
        for (size_t i = 0; i < 50; i += 8) {
            uint64_t v = bu_rnd_next(&rs);
            memcpy(b + off + i, &v, KV_MIN(8, 50 - i));
        }
        memcpy(b + off + 50, b + off, 50);
    }
    return b;
}

static void store_setup(store *st, const cfg *c, const adapter *ad, int vs,
                        const char *tag) {
    memset(st, 0, sizeof(*st));
    st->ad = ad;
    st->vs = vs;
    st->style = "leveled";
    st->o.memtable_bytes = c->memtable_mb << 20;
    st->o.cache_bytes = c->cache_mb << 20;
    st->o.bloom_bits = c->bloom_bits;
    st->o.zstd = c->zstd;
    st->o.pread = c->pread;
    int n = snprintf(st->path, sizeof(st->path), "%s/%s-v%d-%s", c->dir,
                     ad->name, vs, tag);
    KV_ASSERT(n > 0 && (size_t)n < sizeof(st->path)); /* --dir is bounded */
}

static int run_writeamp(const out_ctx *oc, const adapter *ad, int vs,
                        const char *vbuf) {
    const cfg *c = oc->c;
    int styles = ad->tiered_name ? 2 : 1;
    for (int s = 0; s < styles; s++) {
        store st;
        int rc;
        store_setup(&st, c, ad, vs, s ? "writeamp-tiered" : "writeamp-leveled");
        st.o.memtable_bytes = c->wa_memtable_mb << 20;
        st.o.tiered = s == 1;
        st.style = s ? "tiered" : "leveled";
        uint64_t keyspace = (c->wa_live_mb << 20) / (KEY_LEN + (uint64_t)vs);
        uint64_t ops = (c->wa_mb << 20) / (KEY_LEN + (uint64_t)vs);
        rc = store_create(&st, keyspace ? keyspace : 1);
        if (rc == 0) rc = run_one(oc, &st, W_WRITEAMP, 1, ops, vbuf, false);
        store_release(&st, c->keep);
        if (rc < 0) return rc;
    }
    return 0;
}

static int run_durable(const out_ctx *oc, const adapter *ad, int vs,
                       const char *vbuf) {
    static const int dflt[] = {1, 4, 16, 64};
    const cfg *c = oc->c;
    int n = c->threads_set ? c->nthreads : 4;
    for (int i = 0; i < n; i++) {
        int t = c->threads_set ? c->threads[i] : dflt[i];
        char tag[32];
        store st;
        snprintf(tag, sizeof(tag), "durable-t%d", t);
        store_setup(&st, c, ad, vs, tag);
        int rc = store_create(&st, c->durable_num);
        if (rc == 0)
            rc = run_one(oc, &st, W_DURABLE, t, c->durable_num, vbuf, false);
        store_release(&st, c->keep);
        if (rc < 0) return rc;
    }
    return 0;
}

/* Every run of one engine; returns the child's exit status. */
static int engine_child(const cfg *c, const adapter *ad, int fd) {
    out_ctx oc = {c, fd};
    int max_vs = 0, rc = 0;
    for (int i = 0; i < c->nvsizes; i++) max_vs = KV_MAX(max_vs, c->vsizes[i]);
    char *vbuf = make_values(c->seed, (size_t)max_vs);
    if (!vbuf) return 1;

    for (int v = 0; v < c->nvsizes && rc == 0; v++) {
        int vs = c->vsizes[v];
        store main_st;
        store_setup(&main_st, c, ad, vs, "main");
        for (int i = 0; i < c->nworkloads && rc == 0; i++) {
            enum wl w = c->workloads[i];
            if (w == W_WRITEAMP || w == W_DURABLE) {
                /* Closed, so its background work cannot disturb these
                 * runs; reopened by the next workload that needs it. */
                store_close(&main_st);
                if (w == W_WRITEAMP)
                    rc = run_writeamp(&oc, ad, vs, vbuf);
                else
                    rc = run_durable(&oc, ad, vs, vbuf);
                continue;
            }
            if (!main_st.db && main_st.fill.total > 0 && w != W_FILLSEQ &&
                w != W_FILLRANDOM)
                rc = ad->open(main_st.path, &main_st.o, &main_st.db);
            int nt = c->threads_set ? c->nthreads : 1;
            for (int j = 0; j < nt && rc == 0; j++) {
                int t = c->threads_set ? c->threads[j] : 1;
                if (w == W_FILLSEQ || w == W_FILLRANDOM) {
                    rc = store_create(&main_st, c->num);
                } else if (!main_st.db || main_st.fill.total == 0) {
                    /* Reads and overwrite need keys to find. */
                    if (!c->json)
                        printf("(%s: filling a store with fillrandom, 1 "
                               "thread, before %s)\n",
                               ad->name, wl_names[w]);
                    rc = store_create(&main_st, c->num);
                    if (rc == 0)
                        rc = run_one(&oc, &main_st, W_FILLRANDOM, 1, c->num,
                                     vbuf, true);
                }
                if (rc == 0)
                    rc = run_one(&oc, &main_st, w, t, c->num, vbuf, false);
            }
        }
        store_release(&main_st, c->keep);
    }
    free(vbuf);
    return rc == 0 ? 0 : 1;
}

/* ---- the parent: options, children, tables --------------------------------
 */

static int parse_list(const char *s, int *out, int max, int lo, int hi) {
    int n = 0;
    char *copy = strdup(s), *save = NULL;
    if (!copy) return -1;
    for (char *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *end;
        long v = strtol(tok, &end, 10);
        if (*end || v < lo || v > hi || n == max) {
            n = -1;
            break;
        }
        out[n++] = (int)v;
    }
    free(copy);
    return n > 0 ? n : -1;
}

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: engine_bench [options]\n"
        "  --engines LIST       quorumfs,leveldb,rocksdb (default: all three)\n"
        "  --workloads LIST     fillseq,fillrandom,overwrite,readrandom,\n"
        "                       readmissing,readseq,durable,writeamp\n"
        "                       (default: all but writeamp, in that order)\n"
        "  --num N              keys per fill and ops per run (default "
        "1000000)\n"
        "  --durable-num N      synced puts per durable run (default 20000)\n"
        "  --threads T[,T...]   thread counts (default: 1; durable 1,4,16,64)\n"
        "  --value-size B[,B..] value sizes (default 100,4096)\n"
        "  --dir DIR            where stores go (default: a new /tmp dir)\n"
        "  --keep               keep the stores afterwards\n"
        "  --json               one JSON object per result line on stdout\n"
        "  --cache-mb N         block cache, every engine (default 32)\n"
        "  --memtable-mb N      write buffer, every engine (default 32)\n"
        "  --bloom-bits N       bloom bits per key, every engine (default 10)\n"
        "  --compression C      none or zstd (default none)\n"
        "  --quorumfs-pread     quorumfs reads tables with pread, not mmap\n"
        "  --duration S         cap each run at S seconds, 0: none (default "
        "60)\n"
        "  --writeamp-memtable-mb N  memtable for writeamp (default 4)\n"
        "  --writeamp-mb N      bytes written by writeamp (default 256)\n"
        "  --writeamp-live-mb N key space of writeamp, as data (default 64)\n"
        "  --seed N             random seed (default 1)\n");
}

static int parse_args(int argc, char **argv, cfg *c) {
    static const char *const dflt_engines[] = {"quorumfs", "leveldb",
                                               "rocksdb"};
    static const enum wl dflt_wl[] = {W_FILLSEQ,    W_FILLRANDOM,  W_OVERWRITE,
                                      W_READRANDOM, W_READMISSING, W_READSEQ,
                                      W_DURABLE};
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < 3; i++) c->engines[c->nengines++] = dflt_engines[i];
    for (size_t i = 0; i < KV_ARRAY_LEN(dflt_wl); i++)
        c->workloads[c->nworkloads++] = dflt_wl[i];
    c->num = 1000000;
    c->durable_num = 20000;
    c->threads[0] = 1;
    c->nthreads = 1;
    c->vsizes[0] = 100;
    c->vsizes[1] = 4096;
    c->nvsizes = 2;
    c->cache_mb = 32;
    c->memtable_mb = 32;
    c->bloom_bits = 10;
    c->duration = 60;
    c->wa_memtable_mb = 4;
    c->wa_mb = 256;
    c->wa_live_mb = 64;
    c->seed = 1;

    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        char name[64];
        const char *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) != 0) goto bad;
        if (eq) {
            snprintf(name, sizeof(name), "%.*s", (int)(eq - a), a);
            v = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", a);
        }
        if (!strcmp(name, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(name, "--keep") || !strcmp(name, "--json") ||
            !strcmp(name, "--quorumfs-pread")) {
            if (v) goto bad;
            if (!strcmp(name, "--keep"))
                c->keep = true;
            else if (!strcmp(name, "--json"))
                c->json = true;
            else
                c->pread = true;
            continue;
        }
        if (!v) {
            if (i + 1 >= argc) goto bad;
            v = argv[++i];
        }
        uint64_t u;
        if (!strcmp(name, "--engines")) {
            char *copy = strdup(v), *save = NULL;
            c->nengines = 0;
            for (char *tok = strtok_r(copy, ",", &save); tok;
                 tok = strtok_r(NULL, ",", &save)) {
                int k;
                for (k = 0; k < 3; k++)
                    if (!strcmp(tok, all_engines[k].name)) break;
                if (k == 3 || c->nengines == MAX_LIST) {
                    fprintf(stderr, "unknown engine '%s'\n", tok);
                    free(copy);
                    return -1;
                }
                c->engines[c->nengines++] = all_engines[k].name;
            }
            free(copy);
            if (c->nengines == 0) goto bad;
        } else if (!strcmp(name, "--workloads")) {
            char *copy = strdup(v), *save = NULL;
            c->nworkloads = 0;
            for (char *tok = strtok_r(copy, ",", &save); tok;
                 tok = strtok_r(NULL, ",", &save)) {
                int k;
                for (k = 0; k < W_COUNT; k++)
                    if (!strcmp(tok, wl_names[k])) break;
                if (k == W_COUNT || c->nworkloads == MAX_LIST) {
                    fprintf(stderr, "unknown workload '%s'\n", tok);
                    free(copy);
                    return -1;
                }
                c->workloads[c->nworkloads++] = (enum wl)k;
            }
            free(copy);
            if (c->nworkloads == 0) goto bad;
        } else if (!strcmp(name, "--num")) {
            if (bu_parse_u64(v, &c->num) || c->num == 0 ||
                c->num > UINT64_C(100000000000000))
                goto bad;
        } else if (!strcmp(name, "--durable-num")) {
            if (bu_parse_u64(v, &c->durable_num) || c->durable_num == 0 ||
                c->durable_num > UINT64_C(100000000000000))
                goto bad;
        } else if (!strcmp(name, "--threads")) {
            c->nthreads = parse_list(v, c->threads, MAX_LIST, 1, MAX_THREADS);
            if (c->nthreads < 0) goto bad;
            c->threads_set = true;
        } else if (!strcmp(name, "--value-size")) {
            c->nvsizes = parse_list(v, c->vsizes, MAX_LIST, 1, 1 << 20);
            if (c->nvsizes < 0) goto bad;
        } else if (!strcmp(name, "--dir")) {
            if (strlen(v) > 2048) goto bad;
            snprintf(c->dir, sizeof(c->dir), "%s", v);
        } else if (!strcmp(name, "--cache-mb")) {
            if (bu_parse_u64(v, &u) || u == 0 || u > 1 << 20) goto bad;
            c->cache_mb = u;
        } else if (!strcmp(name, "--memtable-mb")) {
            if (bu_parse_u64(v, &u) || u == 0 || u > 1 << 16) goto bad;
            c->memtable_mb = u;
        } else if (!strcmp(name, "--bloom-bits")) {
            if (bu_parse_u64(v, &u) || u > 64) goto bad;
            c->bloom_bits = (int)u;
        } else if (!strcmp(name, "--compression")) {
            if (!strcmp(v, "zstd"))
                c->zstd = true;
            else if (!strcmp(v, "none"))
                c->zstd = false;
            else
                goto bad;
        } else if (!strcmp(name, "--duration")) {
            char *end;
            c->duration = strtod(v, &end);
            if (*end || c->duration < 0) goto bad;
        } else if (!strcmp(name, "--writeamp-memtable-mb")) {
            if (bu_parse_u64(v, &u) || u == 0 || u > 1 << 16) goto bad;
            c->wa_memtable_mb = u;
        } else if (!strcmp(name, "--writeamp-mb")) {
            if (bu_parse_u64(v, &u) || u == 0 || u > 1 << 24) goto bad;
            c->wa_mb = u;
        } else if (!strcmp(name, "--writeamp-live-mb")) {
            if (bu_parse_u64(v, &u) || u == 0 || u > 1 << 24) goto bad;
            c->wa_live_mb = u;
        } else if (!strcmp(name, "--seed")) {
            if (bu_parse_u64(v, &c->seed)) goto bad;
        } else {
            goto bad;
        }
    }
    return 0;
bad:
    fprintf(stderr, "engine_bench: bad argument '%s'\n",
            argv[i < argc ? i : argc - 1]);
    usage(stderr);
    return -1;
}

static void print_header(const cfg *c, FILE *f) {
    fprintf(f, "engine_bench: keys %d bytes, values ", KEY_LEN);
    for (int i = 0; i < c->nvsizes; i++)
        fprintf(f, "%s%d", i ? "," : "", c->vsizes[i]);
    fprintf(f,
            " bytes (half compressible), num %" PRIu64 ", durable-num %" PRIu64
            ", threads ",
            c->num, c->durable_num);
    if (c->threads_set)
        for (int i = 0; i < c->nthreads; i++)
            fprintf(f, "%s%d", i ? "," : "", c->threads[i]);
    else
        fprintf(f, "1 (durable 1,4,16,64)");
    fprintf(f,
            "\n  every engine: memtable %zu MiB, block cache %zu MiB, "
            "bloom %d bits/key, compression %s, 4 KiB blocks, "
            "non-durable writes unsynced\n",
            c->memtable_mb, c->cache_mb, c->bloom_bits,
            c->zstd ? "zstd level 1 (leveldb: snappy, it has no zstd)"
                    : "none");
    fprintf(f,
            "  quorumfs: leveled (writeamp: also tiered), sync none, "
            "durable puts ENG_WF_SYNC_GROUP, tables read with %s\n",
            c->pread ? "pread" : "mmap");
    fprintf(f, "  leveldb: sync=0, durable sync=1, other options default\n");
    fprintf(f,
            "  rocksdb: level compaction (writeamp: also universal), "
            "full bloom filters, 2 background jobs, sync=0, durable sync=1\n");
    fprintf(f, "  per run cap %.0f s (* after a workload: capped), dir %s\n",
            c->duration, c->dir);
    if (!c->json)
        fprintf(f, "  order per engine and value size: as listed; fills "
                   "start a fresh store, reads use the last fill's keys\n");
}

static const result *find_result(const result *rs, size_t n, const char *eng,
                                 const result *like) {
    for (size_t i = 0; i < n; i++) {
        const result *r = &rs[i];
        if (!strcmp(r->engine, eng) && !strcmp(r->workload, like->workload) &&
            !strcmp(r->style, like->style) && r->threads == like->threads &&
            r->value_size == like->value_size)
            return r;
    }
    return NULL;
}

static void print_tables(const cfg *c, const result *rs, size_t n) {
    printf("\nsummary (MB = MiB; latency per operation in microseconds; * = "
           "capped by --duration)\n");
    print_row_header();
    /* Group rows so the engines of one (value size, workload, threads) sit
     * together, in the order the workloads ran. */
    bool *done = calloc(n ? n : 1, sizeof(bool));
    if (!done) return;
    for (size_t i = 0; i < n; i++) {
        if (done[i]) continue;
        for (size_t j = i; j < n; j++) {
            if (done[j]) continue;
            if (!strcmp(rs[j].workload, rs[i].workload) &&
                !strcmp(rs[j].style, rs[i].style) &&
                rs[j].threads == rs[i].threads &&
                rs[j].value_size == rs[i].value_size) {
                print_row(&rs[j]);
                done[j] = true;
            }
        }
    }
    free(done);

    printf("\nquorumfs ops/s relative to the peers (>1: quorumfs faster)\n");
    printf("%-16s %7s %6s %12s %12s %12s\n", "workload", "threads", "value",
           "quorumfs", "/leveldb", "/rocksdb");
    int rows = 0;
    for (size_t i = 0; i < n; i++) {
        const result *q = &rs[i];
        if (strcmp(q->engine, "quorumfs")) continue;
        const result *l = find_result(rs, n, "leveldb", q);
        const result *r = find_result(rs, n, "rocksdb", q);
        char wl[40], lr[24] = "-", rr[24] = "-";
        snprintf(wl, sizeof(wl), "%s%s%s", q->workload, q->style[0] ? ":" : "",
                 q->style);
        if (l && l->ops_per_sec > 0)
            snprintf(lr, sizeof(lr), "%.2f", q->ops_per_sec / l->ops_per_sec);
        if (r && r->ops_per_sec > 0)
            snprintf(rr, sizeof(rr), "%.2f", q->ops_per_sec / r->ops_per_sec);
        printf("%-16s %7d %6d %12.0f %12s %12s\n", wl, q->threads,
               q->value_size, q->ops_per_sec, lr, rr);
        rows++;
    }
    if (!rows) printf("(no quorumfs results)\n");
    (void)c;
}

int main(int argc, char **argv) {
    cfg c;
    result *rs = NULL;
    size_t nres = 0, cap = 0;
    int status = 0;

    bu_prog_set("engine_bench");
    if (parse_args(argc, argv, &c) < 0) return 2;
    if (bu_work_dir(c.dir, sizeof(c.dir), &c.dir_made)) return 1;
    print_header(&c, c.json ? stderr : stdout);

    for (int e = 0; e < c.nengines; e++) {
        const adapter *ad = NULL;
        for (size_t k = 0; k < KV_ARRAY_LEN(all_engines); k++)
            if (!strcmp(all_engines[k].name, c.engines[e]))
                ad = all_engines[k].ad;
        if (!ad) {
            fprintf(c.json ? stderr : stdout, "skipping %s: not built in\n",
                    c.engines[e]);
            continue;
        }
        if (!c.json) {
            printf("\n");
            print_row_header();
        }
        fflush(stdout);
        fflush(stderr);
        int fds[2];
        if (pipe(fds) != 0) {
            perror("pipe");
            status = 1;
            break;
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            status = 1;
            break;
        }
        if (pid == 0) {
            close(fds[0]);
            free(rs); /* the parent's, copied by fork */
            int rc = engine_child(&c, ad, fds[1]);
            close(fds[1]);
            /* exit, not _exit: stdout is flushed and leak checkers run. */
            exit(rc);
        }
        close(fds[1]);
        result r;
        ssize_t got;
        while ((got = read(fds[0], &r, sizeof(r))) == (ssize_t)sizeof(r)) {
            if (nres == cap) {
                cap = cap ? cap * 2 : 64;
                result *grown = realloc(rs, cap * sizeof(*rs));
                if (!grown) {
                    perror("realloc");
                    exit(1);
                }
                rs = grown;
            }
            rs[nres++] = r;
        }
        close(fds[0]);
        int ws;
        if (waitpid(pid, &ws, 0) < 0 || !WIFEXITED(ws) ||
            WEXITSTATUS(ws) != 0) {
            fprintf(stderr, "engine_bench: %s run failed (%s %d)\n", ad->name,
                    WIFSIGNALED(ws) ? "signal" : "exit status",
                    WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
            status = 1;
        }
    }
    if (!c.json) print_tables(&c, rs, nres);
    if (c.dir_made && !c.keep) bu_rm_rf(c.dir);
    free(rs);
    return status;
}
