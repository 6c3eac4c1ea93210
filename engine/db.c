/*
 * The store: open and recovery, the write path, point reads, snapshots,
 * flushes and stats.
 *
 * Writes use a writer queue (group commit): each writer enqueues itself
 * under db->mu; the head of the queue becomes the leader, merges the batches
 * queued behind it (never a sync write into a non-sync group, never an
 * ENG_SYNC_ALWAYS write with anyone), assigns sequence numbers, and with
 * db->mu released appends one WAL record, fsyncs it once if needed and
 * inserts into the memtable. Only then is last_seq advanced, which is what
 * makes the writes visible, so a reader never sees part of a batch.
 *
 * When the memtable is full it becomes the immutable memtable and a new WAL
 * starts; the flush thread writes it to a level-0 table and logs the edit
 * that retires the old WAL. Recovery steps are in docs/engine-format.md.
 */
#include "engine/db_int.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct eng_writer {
    kv_slice rep;
    int sync;     /* ENG_SYNC_* */
    bool barrier; /* eng_db_flush waiting to lead alone; joins no group */
    bool done;
    int rc;
    pthread_cond_t cv;
    eng_writer *next;
};

/* Merged groups stop growing past this many bytes (a large leader may
 * exceed it alone). */
#define GROUP_MAX_BYTES (1u << 20)

void eng_options_init(eng_options *o) {
    memset(o, 0, sizeof *o);
    o->create_if_missing = true;
    o->sync = ENG_SYNC_GROUP;
    o->style = ENG_COMPACT_LEVELED;
    o->memtable_bytes = 32u << 20;
    o->cache_bytes = 64u << 20;
    o->block_bytes = 4096;
    o->block_restart_interval = 16;
    o->bloom_bits_per_key = 10;
    o->compression_level = 1;
    o->max_open_tables = 1000;
    o->mmap_reads = true;
    o->recycle_wal = true;
    o->flush_pace_max_ms = 2000;
    o->table_bytes = 32u << 20;
    o->l0_compaction_trigger = 4;
    o->l0_slowdown_trigger = 8;
    o->l0_stop_trigger = 12;
    o->level1_bytes = 128u << 20;
    o->level_multiplier = 10;
    o->tier_min = 4;
    o->tier_max = 32;
    o->debt_slowdown_bytes = 1ull << 30;
    o->debt_stop_bytes = 4ull << 30;
}

static int check_options(const eng_options *o) {
    if (o->sync > ENG_SYNC_ALWAYS || o->style > ENG_COMPACT_TIERED ||
        o->memtable_bytes < 4096 || o->block_bytes < 64 ||
        o->block_bytes > (16u << 20) || o->block_restart_interval < 1 ||
        o->bloom_bits_per_key < 0 || o->bloom_bits_per_key > 64 ||
        o->compression_level < 0 || o->compression_level > 22 ||
        o->table_bytes < 4096 || o->l0_compaction_trigger < 1 ||
        o->l0_slowdown_trigger < o->l0_compaction_trigger ||
        o->l0_stop_trigger < o->l0_slowdown_trigger || o->level1_bytes < 4096 ||
        o->level_multiplier < 2 || o->tier_min < 2 ||
        o->tier_max < o->tier_min ||
        o->debt_stop_bytes < o->debt_slowdown_bytes)
        return -EINVAL;
    return 0;
}

/* ---- directory housekeeping ---- */

/* Parse "<digits>.<suffix>"; true and *number on a match. */
static bool parse_name(const char *name, const char *suffix, uint64_t *number) {
    uint64_t n = 0;
    const char *p = name;
    if (*p < '0' || *p > '9') return false;
    for (; *p >= '0' && *p <= '9'; p++) n = n * 10 + (uint64_t)(*p - '0');
    if (*p != '.' || strcmp(p + 1, suffix) != 0) return false;
    *number = n;
    return true;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Numbers of dir's files ending in .suffix, sorted. Caller frees *out. */
static int list_files(const char *dir, const char *suffix, uint64_t **out,
                      size_t *n) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return -errno;
    size_t cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t num;
        if (!parse_name(de->d_name, suffix, &num)) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *p = kv_realloc(*out, cap * sizeof *p);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            *out = p;
        }
        (*out)[(*n)++] = num;
    }
    closedir(d);
    if (rc) {
        kv_free(*out);
        *out = NULL;
        *n = 0;
        return rc;
    }
    if (*n > 1) qsort(*out, *n, sizeof **out, cmp_u64);
    return 0;
}

/* The highest file number any file in dir carries (0 if none). */
static uint64_t highest_number(const char *dir) {
    uint64_t top = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *p = de->d_name;
        if (strncmp(p, "MANIFEST-", 9) == 0) p += 9;
        uint64_t n = 0;
        for (; *p >= '0' && *p <= '9'; p++) n = n * 10 + (uint64_t)(*p - '0');
        if (p != de->d_name && n > top) top = n;
    }
    closedir(d);
    return top;
}

static bool table_is_live(eng_version *v, uint64_t number) {
    for (int l = 0; l < ENG_MAX_LEVELS; l++)
        for (int i = 0; i < v->nfiles[l]; i++)
            if (v->files[l][i]->number == number) return true;
    return false;
}

static void unlink_numbered(eng_db *db, uint64_t number, const char *suffix) {
    char *p = eng__path(db, number, suffix);
    if (!p) return;
    kv_info(ENG_MOD, "removing obsolete file '%s'", p);
    eng__env_unlink(p);
    kv_free(p);
}

/* WALs below min_log are covered by tables. With all_tables (only at open,
 * when no compaction can be writing), also tables no version names. */
static void delete_obsolete(eng_db *db, bool all_tables) {
    uint64_t *nums;
    size_t n;
    pthread_mutex_lock(&db->mu);
    uint64_t min_log = db->min_log;
    pthread_mutex_unlock(&db->mu);
    if (list_files(db->dir, "log", &nums, &n) == 0) {
        size_t nold = 0;
        while (nold < n && nums[nold] < min_log) nold++;
        /* The newest obsolete WAL is kept for new_log to reuse (it is also
         * the largest: a full memtable's worth). new_log may take the one
         * kept before while this runs; it is then renamed, not unlinked. */
        pthread_mutex_lock(&db->mu);
        if (db->opt.recycle_wal && db->recycle_log == 0 && nold > 0)
            db->recycle_log = nums[nold - 1];
        uint64_t keep = db->recycle_log;
        pthread_mutex_unlock(&db->mu);
        for (size_t i = 0; i < nold; i++)
            if (nums[i] != keep) unlink_numbered(db, nums[i], "log");
        kv_free(nums);
    }
    if (all_tables && list_files(db->dir, "sst", &nums, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            if (!table_is_live(db->current, nums[i]))
                unlink_numbered(db, nums[i], "sst");
        kv_free(nums);
    }
    if (all_tables && list_files(db->dir, "dbtmp", &nums, &n) == 0) {
        for (size_t i = 0; i < n; i++) unlink_numbered(db, nums[i], "dbtmp");
        kv_free(nums);
    }
    if (!all_tables) return;
    DIR *d = opendir(db->dir);
    if (!d) return;
    struct dirent *de;
    char cur[32];
    snprintf(cur, sizeof cur, "MANIFEST-%06llu",
             (unsigned long long)db->manifest_number);
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "MANIFEST-", 9) != 0 ||
            strcmp(de->d_name, cur) == 0)
            continue;
        size_t len = strlen(db->dir) + strlen(de->d_name) + 2;
        char *p = kv_malloc(len);
        if (!p) break;
        snprintf(p, len, "%s/%s", db->dir, de->d_name);
        kv_info(ENG_MOD, "removing obsolete file '%s'", p);
        eng__env_unlink(p);
        kv_free(p);
    }
    closedir(d);
}

/* ---- recovery ---- */

typedef struct replay_ctx {
    eng_db *db;
    eng_memtable *mem;
} replay_ctx;

static int replay_op(void *arg, uint64_t seq, int type, kv_slice key,
                     kv_slice value) {
    replay_ctx *c = arg;
    if (seq > c->db->last_seq) c->db->last_seq = seq;
    return eng__mem_add(c->mem, seq, type, key, value);
}

static int replay_log(eng_db *db, uint64_t number, eng_memtable *mem) {
    char *path = eng__path(db, number, "log");
    eng_logr *r = NULL;
    if (!path) return -ENOMEM;
    int rc = eng__logr_open(db->fault, path, &r);
    if (rc == KV_ENOTFOUND) {
        /* Created but its header never reached the disk: it cannot hold an
         * acknowledged write. */
        kv_warn(ENG_MOD, "wal '%s' is empty or has no header; skipped", path);
        rc = 0;
        goto out;
    }
    if (rc) {
        kv_error(ENG_MOD, "cannot open wal '%s': %s", path, kv_strerror(rc));
        goto out;
    }
    /* A WAL is renamed to its number only after its header is synced, so
     * the header names the file's own number; anything else is a file
     * that does not belong here, and replaying it could bring back writes
     * that tables already hold in newer versions. */
    if (eng__logr_lognum(r) != number) {
        kv_error(ENG_MOD, "wal '%s': header says log %06llu", path,
                 (unsigned long long)eng__logr_lognum(r));
        rc = KV_ECORRUPT;
        goto out;
    }
    replay_ctx ctx = {db, mem};
    kv_slice rec;
    uint64_t records = 0;
    while ((rc = eng__logr_next(r, &rec)) == 0) {
        rc = eng__batch_iterate(rec, replay_op, &ctx);
        if (rc == KV_ECORRUPT)
            kv_error(ENG_MOD, "wal '%s': malformed batch in record %llu", path,
                     (unsigned long long)records);
        if (rc) goto out;
        records++;
    }
    if (rc == KV_ENOTFOUND) rc = 0;
    kv_info(ENG_MOD, "replayed %llu records from '%s'",
            (unsigned long long)records, path);
out:
    eng__logr_close(r);
    kv_free(path);
    return rc;
}

/* The new WAL number, in an obsolete WAL reused in place when one is kept,
 * else in a new file. mu held. */
static int new_log(eng_db *db, uint64_t number, eng_logw **out) {
    char *path = eng__path(db, number, "log");
    if (!path) return -ENOMEM;
    int rc = 1;
    if (db->recycle_log) {
        char *old = eng__path(db, db->recycle_log, "log");
        db->recycle_log = 0;
        rc = old ? eng__logw_recycle(db->fault, old, path, number, out)
                 : -ENOMEM;
        if (rc == 0) eng__ctr_add(&db->c.wals_reused, 1);
        if (rc) {
            kv_warn(ENG_MOD, "cannot reuse wal '%s' as '%s': %s; creating it",
                    old ? old : "?", path, kv_strerror(rc));
            if (old) eng__env_unlink(old);
        }
        kv_free(old);
    }
    if (rc) rc = eng__logw_create(db->fault, path, number, out);
    /* The new file's directory entry must be durable before a synced write
     * in it is acknowledged. */
    if (rc == 0 && (rc = eng__env_sync_dir(db->fault, db->dir)) != 0) {
        eng__logw_close(*out);
        *out = NULL;
        eng__env_unlink(path);
    }
    if (rc)
        kv_error(ENG_MOD, "cannot create wal '%s': %s", path, kv_strerror(rc));
    kv_free(path);
    return rc;
}

static size_t next_mem_limit(eng_db *db) {
    if (!db->jitter_state)
        db->jitter_state =
            kv_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)db;
    uint64_t x = db->jitter_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    db->jitter_state = x;
    size_t span = db->opt.memtable_bytes / 4;
    return db->opt.memtable_bytes - (span ? (size_t)(x % span) : 0);
}

static int recover(eng_db *db, bool exists) {
    eng_memtable *mem = NULL;
    uint64_t *logs = NULL;
    size_t nlogs = 0;
    eng_vedit e;
    eng__vedit_init(&e);
    int rc;
    if (exists) {
        if ((rc = eng__manifest_recover(db))) goto out;
    } else {
        /* A new store starts with its WAL, so that every manifest names an
         * existing WAL as the oldest live one (the check below). */
        if (!(db->current = eng__version_new())) return -ENOMEM;
        db->next_file = 2;
        if ((rc = new_log(db, 1, &db->log))) goto out;
        db->log_number = db->min_log = 1;
    }
    uint64_t old_manifest = exists ? db->manifest_number : 0;
    /* Never hand out a number a file already has: a manifest that lost
     * edits (or a crash before a new table's edit) leaves files numbered at
     * or past its next_file, and creating one truncates it. */
    uint64_t top = highest_number(db->dir);
    if (top >= db->next_file) db->next_file = top + 1;
    if ((rc = eng__mem_new(&mem))) goto out;
    if ((rc = list_files(db->dir, "log", &logs, &nlogs))) goto out;
    /* The WAL the manifest calls oldest live was created before that edit
     * was logged and is removed only after a later edit: if it is gone, the
     * manifest lost edits (cut short) or the WAL was deleted. */
    if (exists && db->min_log > 0) {
        bool found = false;
        for (size_t i = 0; i < nlogs && !found; i++)
            found = logs[i] == db->min_log;
        if (!found) {
            kv_error(ENG_MOD,
                     "store '%s': wal %06llu.log, live per the manifest, is "
                     "missing (manifest cut short or wal deleted)",
                     db->dir, (unsigned long long)db->min_log);
            rc = KV_ECORRUPT;
            goto out;
        }
    }
    for (size_t i = 0; i < nlogs; i++) {
        if (logs[i] < db->min_log) continue;
        if ((rc = replay_log(db, logs[i], mem))) goto out;
    }
    /* A fresh MANIFEST first, so the edit below has somewhere to go. */
    if ((rc = eng__manifest_rewrite(db))) goto out;
    if (old_manifest) {
        char *p = eng__path(db, old_manifest, "MANIFEST");
        if (p) eng__env_unlink(p);
        kv_free(p);
    }
    if (eng__mem_count(mem) > 0 && (rc = eng__write_level0(db, mem, 0, &e)))
        goto out;
    uint64_t lognum = db->log_number;
    if (!db->log) {
        lognum = db->next_file++;
        if ((rc = new_log(db, lognum, &db->log))) goto out;
        db->log_number = lognum;
    }
    e.has_log_number = true;
    e.log_number = lognum;
    if ((rc = eng__log_and_apply(db, &e))) goto out;
    eng__mem_unref(mem);
    mem = NULL;
    if ((rc = eng__mem_new(&db->mem))) goto out;
    db->mem_limit = next_mem_limit(db);
    db->mem_born_ns = kv_now_ns();
    delete_obsolete(db, true);
out:
    for (int i = 0; rc && !e.uncertain && i < e.nadded; i++)
        atomic_store(&e.added[i].f->obsolete, true);
    eng__vedit_release(&e);
    eng__mem_unref(mem);
    kv_free(logs);
    return rc;
}

/* ---- open / close ---- */

static void *flush_thread(void *arg);

static int lock_dir(eng_db *db) {
    size_t n = strlen(db->dir) + 8;
    char *p = kv_malloc(n);
    if (!p) return -ENOMEM;
    snprintf(p, n, "%s/LOCK", db->dir);
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : 0;
    if (rc == 0 && flock(fd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? KV_EBUSY : -errno;
        close(fd);
    }
    if (rc == KV_EBUSY)
        kv_error(ENG_MOD, "store '%s' is in use by another process", db->dir);
    kv_free(p);
    if (rc == 0) db->lock_fd = fd;
    return rc;
}

int eng_db_open(const char *dir, const eng_options *opt, eng_db **out) {
    eng_options defaults;
    *out = NULL;
    if (!opt) {
        eng_options_init(&defaults);
        opt = &defaults;
    }
    /* max_open_tables is checked here, beside the table cache it sizes. */
    if (!dir || !*dir || check_options(opt) || opt->max_open_tables < 1)
        return -EINVAL;
    eng_db *db = kv_calloc(1, sizeof *db);
    if (!db) return -ENOMEM;
    db->opt = *opt;
    db->fault = opt->fault;
    db->lock_fd = -1;
    db->topts.block_bytes = opt->block_bytes;
    db->topts.restart_interval = opt->block_restart_interval;
    db->topts.bloom_bits_per_key = opt->bloom_bits_per_key;
    db->topts.compression_level = opt->compression_level;
    db->snaps.prev = db->snaps.next = &db->snaps;
    pthread_mutex_init(&db->mu, NULL);
    pthread_mutex_init(&db->manifest_mu, NULL);
    pthread_mutex_init(&db->compact_mu, NULL);
    /* Index and filter blocks charged to the block cache may fill it, not
     * more: beyond that the least recently used tables are closed. */
    eng__tcache_init(&db->tcache, opt->max_open_tables, opt->cache_bytes);
    pthread_cond_init(&db->bg_cv, NULL);
    pthread_cond_init(&db->work_cv, NULL);
    int rc = -ENOMEM;
    if (!(db->dir = kv_strdup(dir))) goto fail;
    size_t n = strlen(dir) + 16;
    char *cur = kv_malloc(n);
    if (!cur) goto fail;
    snprintf(cur, n, "%s/CURRENT", dir);
    bool exists = access(cur, F_OK) == 0;
    rc = 0;
    /* A missing store is reported before anything is created. */
    if (!exists && !opt->create_if_missing)
        rc = -ENOENT;
    else if (exists && opt->error_if_exists)
        rc = -EEXIST;
    else if (!exists && mkdir(dir, 0755) < 0 && errno != EEXIST)
        rc = -errno;
    if (rc) {
        kv_free(cur);
        goto fail;
    }
    rc = lock_dir(db);
    /* Look again under the lock: another process may have created it. */
    if (rc == 0 && !exists && (exists = access(cur, F_OK) == 0) &&
        opt->error_if_exists)
        rc = -EEXIST;
    kv_free(cur);
    cur = NULL;
    if (rc) goto fail;
    if ((rc = eng__cache_new(opt->cache_bytes, &db->cache))) goto fail;
    if ((rc = recover(db, exists))) goto fail;
    if (pthread_create(&db->flush_thread, NULL, flush_thread, db) != 0) {
        rc = -EAGAIN;
        goto fail;
    }
    if (pthread_create(&db->compact_thread, NULL, eng__compact_thread, db) !=
        0) {
        pthread_mutex_lock(&db->mu);
        db->shutting_down = true;
        pthread_cond_broadcast(&db->work_cv);
        pthread_mutex_unlock(&db->mu);
        pthread_join(db->flush_thread, NULL);
        rc = -EAGAIN;
        goto fail;
    }
    db->threads_started = true;
    *out = db;
    return 0;
fail:
    eng_db_close(db);
    return rc;
}

int eng_db_close(eng_db *db) {
    if (!db) return 0;
    pthread_mutex_lock(&db->mu);
    db->shutting_down = true;
    atomic_store(&db->flush_hurry, true);
    pthread_cond_broadcast(&db->work_cv);
    pthread_cond_broadcast(&db->bg_cv);
    pthread_mutex_unlock(&db->mu);
    if (db->threads_started) {
        pthread_join(db->flush_thread, NULL);
        pthread_join(db->compact_thread, NULL);
    }
    int rc = db->write_error ? db->write_error : db->flush_error;
    if (db->log) {
        int r2 = eng__logw_sync(db->log);
        if (r2 && !rc) rc = r2;
        eng__logw_close(db->log);
    }
    if (db->manifest) eng__logw_close(db->manifest);
    eng__mem_unref(db->mem);
    eng__mem_unref(db->imm);
    eng__version_unref(db->current);
    eng__tcache_release(&db->tcache); /* after the last file is freed */
    if (db->cache) eng__cache_free(db->cache);
    if (db->lock_fd >= 0) close(db->lock_fd);
    for (int l = 0; l < ENG_MAX_LEVELS; l++)
        kv_buf_release(&db->compact_ptr[l]);
    kv_buf_release(&db->group);
    pthread_mutex_destroy(&db->mu);
    pthread_mutex_destroy(&db->manifest_mu);
    pthread_mutex_destroy(&db->compact_mu);
    pthread_cond_destroy(&db->bg_cv);
    pthread_cond_destroy(&db->work_cv);
    kv_free(db->dir);
    kv_free(db);
    return rc;
}

/* ---- write path ---- */

static void timed_wait(eng_db *db, pthread_cond_t *cv, uint64_t ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    ts.tv_sec += (time_t)(ms / 1000) + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, &db->mu, &ts);
}

/* Make room in the memtable for the leader's group; mu held, may be
 * released while waiting. Slows a write by 1 ms once when background work
 * falls behind, and stops writes while it is too far behind. */
static int make_room(eng_db *db) {
    bool slowed = false;
    bool leveled = db->opt.style == ENG_COMPACT_LEVELED;
    for (;;) {
        if (db->write_error) return db->write_error;
        if (db->shutting_down) return KV_ECLOSED;
        int nl0 = db->current->nfiles[0];
        uint64_t debt = eng__compaction_debt(db);
        if (!slowed && ((leveled && nl0 >= db->opt.l0_slowdown_trigger) ||
                        debt >= db->opt.debt_slowdown_bytes)) {
            pthread_mutex_unlock(&db->mu);
            usleep(1000);
            eng__ctr_add(&db->c.slowdown_us, 1000);
            pthread_mutex_lock(&db->mu);
            slowed = true;
            continue;
        }
        if (eng__mem_bytes(db->mem) < db->mem_limit) return 0;
        bool stop = (leveled && nl0 >= db->opt.l0_stop_trigger) ||
                    debt >= db->opt.debt_stop_bytes;
        if (db->imm || stop) {
            /* A failing flush must not leave writers waiting forever: they
             * get its error until a retry succeeds. */
            if (db->imm && db->flush_error) return db->flush_error;
            if (stop && db->bg_error) return db->bg_error;
            if (db->imm) atomic_store(&db->flush_hurry, true);
            uint64_t t0 = kv_now_ns();
            pthread_cond_broadcast(&db->work_cv);
            timed_wait(db, &db->bg_cv, 100);
            eng__ctr_add(&db->c.stall_us, (kv_now_ns() - t0) / 1000);
            continue;
        }
        eng_memtable *m;
        eng_logw *w;
        int rc = eng__mem_new(&m);
        if (rc) return rc;
        uint64_t number = db->next_file++;
        if ((rc = new_log(db, number, &w))) {
            eng__mem_unref(m);
            return rc;
        }
        eng__logw_close(db->log);
        db->log = w;
        db->log_number = number;
        db->imm = db->mem;
        db->mem = m;
        db->mem_limit = next_mem_limit(db);
        /* The next memtable fills about as fast as this one did: imm's
         * flush may take a quarter of that, so it runs as a trickle
         * beside the foreground work instead of a burst that takes the
         * CPU and the disk from it. */
        uint64_t now = kv_now_ns();
        db->flush_pace_ns = KV_MIN((now - db->mem_born_ns) / 4,
                                   db->opt.flush_pace_max_ms * 1000000ull);
        db->mem_born_ns = now;
        atomic_store(&db->flush_hurry, false);
        pthread_cond_broadcast(&db->work_cv);
    }
}

static bool can_join(const eng_writer *leader, const eng_writer *w) {
    if (w->barrier || leader->sync == ENG_SYNC_ALWAYS ||
        w->sync == ENG_SYNC_ALWAYS)
        return false;
    return w->sync <= leader->sync;
}

typedef struct insert_ctx {
    eng_memtable *mem;
    uint64_t user_bytes; /* key + value bytes applied */
} insert_ctx;

static int insert_op(void *arg, uint64_t seq, int type, kv_slice key,
                     kv_slice value) {
    insert_ctx *c = arg;
    c->user_bytes += key.len + value.len;
    return eng__mem_add(c->mem, seq, type, key, value);
}

static int write_rep(eng_db *db, kv_slice rep, int wflags) {
    if (eng__batch_rep_count(rep) == 0) return 0;
    if (wflags < 0 || wflags > ENG_WF_SYNC_ALWAYS) return -EINVAL;
    eng_writer w = {.rep = rep, .sync = db->opt.sync};
    if (wflags != ENG_WF_DEFAULT) w.sync = wflags - 1;
    pthread_cond_init(&w.cv, NULL);
    pthread_mutex_lock(&db->mu);
    if (db->wq_tail)
        db->wq_tail->next = &w;
    else
        db->wq_head = &w;
    db->wq_tail = &w;
    while (!w.done && db->wq_head != &w) pthread_cond_wait(&w.cv, &db->mu);
    if (w.done) {
        pthread_mutex_unlock(&db->mu);
        pthread_cond_destroy(&w.cv);
        return w.rc;
    }
    /* This writer leads a group. */
    int rc = make_room(db);
    eng_writer *last = &w;
    if (rc == 0) {
        kv_buf *g = &db->group;
        kv_buf_reset(g);
        size_t bytes = rep.len;
        rc = kv_buf_append(g, rep.ptr, rep.len);
        for (eng_writer *x = w.next; rc == 0 && x; x = x->next) {
            if (!can_join(&w, x) || bytes + x->rep.len > GROUP_MAX_BYTES ||
                bytes + x->rep.len > ENG_MAX_BATCH)
                break;
            if ((rc = eng__batch_append(g, x->rep))) break;
            bytes += x->rep.len;
            last = x;
        }
        if (rc) last = &w;
    }
    if (rc == 0) {
        uint64_t seq = db->last_seq + 1;
        uint32_t count = eng__batch_rep_count(kv_buf_slice(&db->group));
        eng__batch_set_seq(&db->group, seq);
        eng_logw *log = db->log;
        eng_memtable *mem = db->mem;
        pthread_mutex_unlock(&db->mu);
        /* Only the leader touches the log and inserts into mem. */
        kv_slice g = kv_buf_slice(&db->group);
        rc = eng__logw_add(log, g);
        /* A failed append was cut back: the record is not in the WAL. */
        bool appended = rc == 0;
        if (appended) eng__ctr_add(&db->c.wal_bytes, g.len);
        if (rc == 0 && w.sync != ENG_SYNC_NONE) {
            rc = eng__logw_sync(log);
            eng__ctr_add(&db->c.syncs, 1);
        }
        insert_ctx ins = {mem, 0};
        if (rc == 0) rc = eng__batch_iterate(g, insert_op, &ins);
        pthread_mutex_lock(&db->mu);
        if (rc == 0) {
            db->last_seq = seq + count - 1;
            eng__ctr_add(&db->c.user_bytes, ins.user_bytes);
        } else if (appended) {
            /* The record may be in the WAL (a failed fsync leaves it
             * unknown; a failed insert leaves it logged but not applied):
             * taking further writes would let sequence numbers or the
             * memtable disagree with the log. Reopen replays the WAL. */
            db->write_error = rc;
            kv_error(ENG_MOD,
                     "wal '%06llu.log': %s; writes are refused until the "
                     "store is reopened",
                     (unsigned long long)db->log_number, kv_strerror(rc));
        }
    }
    /* Wake the group, hand leadership to the next writer. */
    for (;;) {
        eng_writer *x = db->wq_head;
        db->wq_head = x->next;
        if (!db->wq_head) db->wq_tail = NULL;
        if (x != &w) {
            x->rc = rc;
            x->done = true;
            pthread_cond_signal(&x->cv);
        }
        if (x == last) break;
    }
    if (db->wq_head) pthread_cond_signal(&db->wq_head->cv);
    pthread_mutex_unlock(&db->mu);
    pthread_cond_destroy(&w.cv);
    return rc;
}

int eng_db_write(eng_db *db, const eng_batch *b, int wflags) {
    if (!db || !b) return -EINVAL;
    return write_rep(db, kv_buf_slice(&b->rep), wflags);
}

static int write_one(eng_db *db, int type, kv_slice key, kv_slice value,
                     int wflags) {
    if (!db) return -EINVAL;
    if (key.len > ENG_MAX_KEY || value.len > ENG_MAX_VALUE) return KV_ETOOLARGE;
    /* Encode on the stack for small writes: no allocation on the hot path. */
    uint8_t stackbuf[512];
    size_t need =
        ENG_BATCH_HEADER + 1 + 2 * KV_VARINT_MAX + key.len + value.len;
    uint8_t *p = need <= sizeof stackbuf ? stackbuf : kv_malloc(need);
    if (!p) return -ENOMEM;
    memset(p, 0, ENG_BATCH_HEADER);
    kv_put_u32(p + 8, 1);
    size_t n = ENG_BATCH_HEADER;
    p[n++] = (uint8_t)type;
    n += kv_varint_encode(p + n, key.len);
    if (key.len) memcpy(p + n, key.ptr, key.len);
    n += key.len;
    if (type == ENG_TYPE_PUT) {
        n += kv_varint_encode(p + n, value.len);
        if (value.len) memcpy(p + n, value.ptr, value.len);
        n += value.len;
    }
    int rc = write_rep(db, kv_slice_make(p, n), wflags);
    if (p != stackbuf) kv_free(p);
    return rc;
}

int eng_db_put(eng_db *db, kv_slice key, kv_slice value, int wflags) {
    return write_one(db, ENG_TYPE_PUT, key, value, wflags);
}

int eng_db_delete(eng_db *db, kv_slice key, int wflags) {
    return write_one(db, ENG_TYPE_DEL, key, kv_slice_make(NULL, 0), wflags);
}

/* ---- reads ---- */

static bool in_range(const eng_fmeta *f, kv_slice ukey) {
    return kv_slice_cmp(ukey, eng__ikey_user(kv_buf_slice(&f->smallest))) >=
               0 &&
           kv_slice_cmp(ukey, eng__ikey_user(kv_buf_slice(&f->largest))) <= 0;
}

static int probe(eng_db *db, eng_fmeta *f, kv_slice ukey, uint64_t seq,
                 int *type, kv_buf *val, uint64_t *found_seq) {
    bool probed = false;
    eng_table *t;
    /* Pinned so the table cache cannot close it during the lookup. */
    int rc = eng__table_acquire(db, f, &t);
    if (rc) return rc;
    eng__ctr_add(&db->c.bloom_checked, 1);
    rc = eng__table_get(t, ukey, seq, type, val, &probed, found_seq);
    eng__table_release(db, f);
    if (!probed) {
        eng__ctr_add(&db->c.bloom_negative, 1);
        return rc;
    }
    eng__ctr_add(&db->c.tables_probed, 1);
    if (rc == 0)
        eng__ctr_add(&db->c.bloom_tp, 1);
    else if (rc == KV_ENOTFOUND)
        eng__ctr_add(&db->c.bloom_fp, 1);
    return rc;
}

int eng__version_get(eng_db *db, eng_version *v, kv_slice ukey, uint64_t seq,
                     int *type, kv_buf *val) {
    /* Level 0 (every table when tiered): tables may overlap, sorted by
     * newest entry first. Keep the newest version found; stop once no
     * remaining table can hold a newer one. */
    uint64_t best = 0;
    bool found = false;
    kv_buf tmp = KV_BUF_INIT;
    int rc = 0;
    for (int i = 0; i < v->nfiles[0]; i++) {
        eng_fmeta *f = v->files[0][i];
        if (found && f->max_seq <= best) break;
        if (f->min_seq > seq || !in_range(f, ukey)) continue;
        int t;
        uint64_t s;
        rc = probe(db, f, ukey, seq, &t, &tmp, &s);
        if (rc == KV_ENOTFOUND) continue;
        if (rc) goto out;
        if (!found || s > best) {
            found = true;
            best = s;
            *type = t;
            if ((rc = kv_buf_set(val, tmp.ptr, tmp.len))) goto out;
        }
    }
    if (found) {
        rc = 0;
        goto out;
    }
    for (int l = 1; l < ENG_MAX_LEVELS; l++) {
        int lo = 0, hi = v->nfiles[l];
        /* First table whose largest user key >= ukey. */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            kv_slice lg =
                eng__ikey_user(kv_buf_slice(&v->files[l][mid]->largest));
            if (kv_slice_cmp(lg, ukey) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == v->nfiles[l] || !in_range(v->files[l][lo], ukey)) continue;
        uint64_t s;
        rc = probe(db, v->files[l][lo], ukey, seq, type, val, &s);
        if (rc != KV_ENOTFOUND) goto out;
    }
    rc = KV_ENOTFOUND;
out:
    kv_buf_release(&tmp);
    return rc;
}

/* What a read sees: a sequence number and references on the memtables and
 * version that hold everything up to it. */
typedef struct read_view {
    uint64_t seq;
    eng_memtable *mem, *imm;
    eng_version *v;
} read_view;

static read_view pin_view(eng_db *db, const eng_snapshot *snap) {
    pthread_mutex_lock(&db->mu);
    read_view r = {snap ? snap->seq : db->last_seq, db->mem, db->imm,
                   db->current};
    eng__mem_ref(r.mem);
    if (r.imm) eng__mem_ref(r.imm);
    eng__version_ref(r.v);
    pthread_mutex_unlock(&db->mu);
    return r;
}

int eng_db_get(eng_db *db, const eng_snapshot *snap, kv_slice key,
               kv_buf *val) {
    if (!db || !val) return -EINVAL;
    if (key.len > ENG_MAX_KEY) return KV_ENOTFOUND;
    read_view r = pin_view(db, snap);
    uint64_t seq = r.seq;
    eng_memtable *mem = r.mem, *imm = r.imm;
    eng_version *v = r.v;
    eng__ctr_add(&db->c.gets, 1);
    int type = ENG_TYPE_DEL;
    int rc = eng__mem_get(mem, key, seq, &type, val);
    if (rc == KV_ENOTFOUND && imm) rc = eng__mem_get(imm, key, seq, &type, val);
    if (rc == KV_ENOTFOUND) rc = eng__version_get(db, v, key, seq, &type, val);
    if (rc == 0 && type == ENG_TYPE_DEL) rc = KV_ENOTFOUND;
    eng__mem_unref(mem);
    eng__mem_unref(imm);
    eng__version_unref(v);
    return rc;
}

/* ---- snapshots and iterators ---- */

int eng_db_snapshot(eng_db *db, eng_snapshot **out) {
    *out = NULL;
    eng_snapshot *s = kv_calloc(1, sizeof *s);
    if (!s) return -ENOMEM;
    pthread_mutex_lock(&db->mu);
    s->seq = db->last_seq;
    s->next = &db->snaps;
    s->prev = db->snaps.prev;
    s->prev->next = s;
    db->snaps.prev = s;
    pthread_mutex_unlock(&db->mu);
    *out = s;
    return 0;
}

void eng_db_snapshot_release(eng_db *db, eng_snapshot *s) {
    if (!s) return;
    pthread_mutex_lock(&db->mu);
    s->prev->next = s->next;
    s->next->prev = s->prev;
    pthread_mutex_unlock(&db->mu);
    kv_free(s);
}

uint64_t eng__smallest_snapshot(eng_db *db) {
    return db->snaps.next != &db->snaps ? db->snaps.next->seq : db->last_seq;
}

int eng_iter_new(eng_db *db, const eng_snapshot *snap, eng_iter **out) {
    *out = NULL;
    if (!db) return -EINVAL;
    read_view r = pin_view(db, snap);
    /* The iterator takes over the references, also on failure. */
    return eng__db_iter_new(db, r.seq, r.mem, r.imm, r.v, out);
}

/* ---- flush ---- */

/* Write db->imm to a level-0 table and retire its WAL. mu held on entry and
 * exit, released while writing. */
static int flush_imm(eng_db *db) {
    eng_memtable *m = db->imm;
    uint64_t keep_log = db->log_number;
    uint64_t pace_ns = db->flush_pace_ns;
    eng__mem_ref(m);
    pthread_mutex_unlock(&db->mu);
    eng_vedit e;
    eng__vedit_init(&e);
    int rc = eng__write_level0(db, m, pace_ns, &e);
    if (rc == 0) {
        e.has_log_number = true;
        e.log_number = keep_log;
        rc = eng__log_and_apply(db, &e);
    }
    for (int i = 0; rc && !e.uncertain && i < e.nadded; i++)
        atomic_store(&e.added[i].f->obsolete, true);
    eng__vedit_release(&e);
    eng__mem_unref(m);
    if (rc == 0) delete_obsolete(db, false);
    pthread_mutex_lock(&db->mu);
    if (rc == 0) {
        eng__mem_unref(db->imm);
        db->imm = NULL;
        db->flush_error = 0;
        eng__ctr_add(&db->c.flushes, 1);
    } else {
        db->flush_error = rc;
        db->bg_error = rc;
        kv_error(ENG_MOD, "flush of '%s' failed: %s; retrying", db->dir,
                 kv_strerror(rc));
    }
    pthread_cond_broadcast(&db->bg_cv);
    pthread_cond_broadcast(&db->work_cv);
    return rc;
}

static void *flush_thread(void *arg) {
    eng_db *db = arg;
    pthread_setname_np(pthread_self(), "qfs-flush");
    pthread_mutex_lock(&db->mu);
    while (!db->shutting_down) {
        if (!db->imm) {
            pthread_cond_wait(&db->work_cv, &db->mu);
            continue;
        }
        if (flush_imm(db) != 0 && !db->shutting_down)
            timed_wait(db, &db->work_cv, 1000); /* back off, then retry */
    }
    pthread_mutex_unlock(&db->mu);
    return NULL;
}

int eng_db_flush(eng_db *db) {
    if (!db) return -EINVAL;
    pthread_mutex_lock(&db->mu);
    int rc = 0;
    /* Wait out a previous immutable memtable, then switch this one. */
    while (db->imm && !db->shutting_down) {
        if (db->flush_error) {
            rc = db->flush_error;
            goto out;
        }
        timed_wait(db, &db->bg_cv, 100);
    }
    if (eng__mem_count(db->mem) == 0) goto out;
    /* Become the leader of an empty group so no write races the switch. */
    eng_writer w = {.sync = ENG_SYNC_NONE, .barrier = true};
    pthread_cond_init(&w.cv, NULL);
    if (db->wq_tail)
        db->wq_tail->next = &w;
    else
        db->wq_head = &w;
    db->wq_tail = &w;
    while (db->wq_head != &w) pthread_cond_wait(&w.cv, &db->mu);
    eng_memtable *m;
    eng_logw *log;
    uint64_t number = db->next_file++;
    if ((rc = db->write_error) == 0 && (rc = eng__mem_new(&m)) == 0) {
        if ((rc = new_log(db, number, &log)) == 0) {
            eng__logw_close(db->log);
            db->log = log;
            db->log_number = number;
            db->imm = db->mem;
            db->mem = m;
            db->mem_limit = next_mem_limit(db);
            db->mem_born_ns = kv_now_ns();
            db->flush_pace_ns = 0; /* the caller waits for it */
        } else {
            eng__mem_unref(m);
        }
    }
    db->wq_head = w.next;
    if (!db->wq_head) db->wq_tail = NULL;
    if (db->wq_head) pthread_cond_signal(&db->wq_head->cv);
    pthread_cond_destroy(&w.cv);
    if (rc) goto out;
    pthread_cond_broadcast(&db->work_cv);
    while (db->imm && !db->shutting_down) {
        if (db->flush_error) {
            rc = db->flush_error;
            break;
        }
        timed_wait(db, &db->bg_cv, 100);
    }
out:
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int eng_db_compact_range(eng_db *db, const kv_slice *begin,
                         const kv_slice *end) {
    if (!db) return -EINVAL;
    int rc = eng_db_flush(db);
    if (rc) return rc;
    return eng__compact_manual(db, begin, end);
}

/* ---- stats ---- */

int eng_db_stats(eng_db *db, eng_stats *s) {
    if (!db || !s) return -EINVAL;
    memset(s, 0, sizeof *s);
    eng_counters *c = &db->c;
    s->user_bytes_written = atomic_load(&c->user_bytes);
    s->wal_bytes_written = atomic_load(&c->wal_bytes);
    s->flush_bytes_written = atomic_load(&c->flush_bytes);
    s->compact_bytes_read = atomic_load(&c->compact_read);
    s->compact_bytes_written = atomic_load(&c->compact_written);
    s->gets = atomic_load(&c->gets);
    s->tables_probed = atomic_load(&c->tables_probed);
    s->bloom_checked = atomic_load(&c->bloom_checked);
    s->bloom_negative = atomic_load(&c->bloom_negative);
    s->bloom_false_positive = atomic_load(&c->bloom_fp);
    s->bloom_true_positive = atomic_load(&c->bloom_tp);
    s->stall_us = atomic_load(&c->stall_us);
    s->slowdown_us = atomic_load(&c->slowdown_us);
    s->flush_paced_us = atomic_load(&c->flush_paced_us);
    s->flushes = atomic_load(&c->flushes);
    s->compactions = atomic_load(&c->compactions);
    s->syncs = atomic_load(&c->syncs);
    s->wals_reused = atomic_load(&c->wals_reused);
    if (s->user_bytes_written)
        s->write_amp =
            (double)(s->flush_bytes_written + s->compact_bytes_written) /
            (double)s->user_bytes_written;
    if (s->gets) s->read_amp = (double)s->tables_probed / (double)s->gets;
    pthread_mutex_lock(&db->mu);
    eng_version *v = db->current;
    uint64_t largest_run = 0;
    for (int l = 0; l < ENG_MAX_LEVELS; l++) {
        s->level_tables[l] = v->nfiles[l];
        s->level_bytes[l] = v->level_bytes[l];
        s->live_tables += (uint64_t)v->nfiles[l];
        s->live_table_bytes += v->level_bytes[l];
        if (l > 0 && v->level_bytes[l] > 0) largest_run = v->level_bytes[l];
    }
    bool bottom_empty = largest_run == 0;
    /* Space amplification is estimated as RocksDB does: all table bytes
     * over the bytes of the largest sorted run: the bottom level when
     * leveled, else (tiered, or all data still in L0) the largest table. */
    for (int i = 0; bottom_empty && i < v->nfiles[0]; i++)
        if (v->files[0][i]->size > largest_run)
            largest_run = v->files[0][i]->size;
    if (largest_run)
        s->space_amp = (double)s->live_table_bytes / (double)largest_run;
    s->compaction_debt_bytes = eng__compaction_debt(db);
    s->memtable_bytes =
        eng__mem_bytes(db->mem) + (db->imm ? eng__mem_bytes(db->imm) : 0);
    s->last_sequence = db->last_seq;
    s->bg_error = db->bg_error;
    pthread_mutex_unlock(&db->mu);
    s->cache_bytes = eng__cache_usage(db->cache);
    /* Only open tables hold index and filter blocks in memory; those of
     * tables read with pread are charged to the cache (cache_bytes holds
     * them), the rest of an open table's memory is outside it. */
    uint64_t meta, charged;
    eng__tcache_bytes(&db->tcache, &meta, &charged);
    s->index_filter_bytes = charged;
    s->table_meta_bytes = meta - charged;
    s->mem_bytes = s->memtable_bytes + s->cache_bytes + s->table_meta_bytes;
    return 0;
}

int eng_db_stats_format(eng_db *db, kv_buf *out) {
    eng_stats s;
    int rc = eng_db_stats(db, &s);
    if (rc) return rc;
    char line[256];
    int n;
#define EMIT(...)                                                              \
    do {                                                                       \
        n = snprintf(line, sizeof line, __VA_ARGS__);                          \
        if ((rc = kv_buf_append(out, line, (size_t)n))) return rc;             \
    } while (0)
    EMIT("style              %s\n",
         db->opt.style == ENG_COMPACT_TIERED ? "size-tiered" : "leveled");
    EMIT("last sequence      %llu\n", (unsigned long long)s.last_sequence);
    for (int l = 0; l < ENG_MAX_LEVELS; l++)
        if (s.level_tables[l])
            EMIT("level %d            %d tables, %.1f MiB\n", l,
                 s.level_tables[l], (double)s.level_bytes[l] / 1048576.0);
    EMIT("write amplification %.2f (user %.1f MiB, wal %.1f MiB, flush %.1f "
         "MiB, compaction %.1f MiB)\n",
         s.write_amp, (double)s.user_bytes_written / 1048576.0,
         (double)s.wal_bytes_written / 1048576.0,
         (double)s.flush_bytes_written / 1048576.0,
         (double)s.compact_bytes_written / 1048576.0);
    EMIT("read amplification %.2f tables per get (%llu gets)\n", s.read_amp,
         (unsigned long long)s.gets);
    EMIT("space amplification %.2f\n", s.space_amp);
    uint64_t probes = s.bloom_false_positive + s.bloom_negative;
    EMIT("bloom              %llu negative, %llu true positive, %llu false "
         "positive (%.3f%%)\n",
         (unsigned long long)s.bloom_negative,
         (unsigned long long)s.bloom_true_positive,
         (unsigned long long)s.bloom_false_positive,
         probes ? 100.0 * (double)s.bloom_false_positive / (double)probes
                : 0.0);
    EMIT("compaction debt    %.1f MiB\n",
         (double)s.compaction_debt_bytes / 1048576.0);
    EMIT("memory             %.1f MiB (memtables %.1f, cache %.1f of which "
         "index/filter %.1f, open tables %.1f)\n",
         (double)s.mem_bytes / 1048576.0, (double)s.memtable_bytes / 1048576.0,
         (double)s.cache_bytes / 1048576.0,
         (double)s.index_filter_bytes / 1048576.0,
         (double)s.table_meta_bytes / 1048576.0);
    EMIT("flushes %llu, compactions %llu, wal syncs %llu, wals reused %llu, "
         "stalled %.3f s, slowed %.3f s, flushes paced %.3f s\n",
         (unsigned long long)s.flushes, (unsigned long long)s.compactions,
         (unsigned long long)s.syncs, (unsigned long long)s.wals_reused,
         (double)s.stall_us / 1e6, (double)s.slowdown_us / 1e6,
         (double)s.flush_paced_us / 1e6);
    if (s.bg_error) EMIT("background error   %s\n", kv_strerror(s.bg_error));
#undef EMIT
    return 0;
}
