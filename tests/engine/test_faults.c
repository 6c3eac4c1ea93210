/*
 * Fault tests of the engine through its public API: damaged files on disk
 * and failing I/O or allocation at run time.
 *
 * Damage is applied to a copy of a store built by the test; the tests rely
 * only on the directory layout (CURRENT naming the manifest, MANIFEST-N,
 * N.log for the WAL, N.sst for tables) and never on the byte format. The
 * rules checked: a torn WAL tail recovers a prefix of the writes; damage
 * anywhere else is reported as KV_ECORRUPT (or -ENOENT for a missing file),
 * never as a wrong value or a silently missing key, and never a crash.
 * Failing writes, syncs, opens, renames, reads (eng_fault) and allocations
 * (kv_alloc_fail_after) are looped over every k: each call succeeds or
 * returns an error, and the store reopens with every acknowledged write.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[PATH_MAX];

static void setup(void) {
    quiet_log();
    make_tmpdir(g_dir, sizeof g_dir, "qfs-faults");
}

static void teardown(void) {
    kv_alloc_fail_after(-1);
    if (g_dir[0]) rm_tree(g_dir);
    g_dir[0] = '\0';
}

/* A failed test leaks its fault object on purpose: the engine's background
 * threads may still hold it. */
static eng_fault *new_fault(void) {
    eng_fault *f = NULL;
    cr_assert_eq(eng_fault_new(&f), 0);
    return f;
}

TestSuite(faults, .init = setup, .fini = teardown, .timeout = 300);

/* ---- files ---- */

static void in_dir(char *out, const char *dir, const char *name) {
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    cr_assert(n > 0 && n < PATH_MAX, "path too long");
}

static void sub(char *out, const char *name) {
    in_dir(out, g_dir, name);
}

static uint64_t file_size(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return (uint64_t)st.st_size;
}

static void read_whole(const char *path, kv_buf *out) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    kv_buf_reset(out);
    uint8_t chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        cr_assert_eq(kv_buf_append(out, chunk, n), 0);
    fclose(f);
}

static void write_whole(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "create %s", path);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* Replace dst by a copy of the flat directory src. */
static void copy_tree(const char *src, const char *dst) {
    rm_tree(dst);
    cr_assert_eq(mkdir(dst, 0755), 0, "mkdir %s", dst);
    DIR *d = opendir(src);
    cr_assert_not_null(d);
    struct dirent *e;
    kv_buf b = KV_BUF_INIT;
    char from[PATH_MAX], to[PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        in_dir(from, src, e->d_name);
        in_dir(to, dst, e->d_name);
        struct stat st;
        if (stat(from, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        read_whole(from, &b);
        write_whole(to, b.ptr, b.len);
    }
    closedir(d);
    kv_buf_release(&b);
}

/* The highest-numbered "NNNNNN<suffix>" file in dir into name; false if
 * there is none. */
static bool newest_numbered(const char *dir, const char *suffix, char *name,
                            size_t cap) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    unsigned long long best = 0;
    bool found = false;
    size_t sl = strlen(suffix);
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n <= sl || strcmp(e->d_name + n - sl, suffix) != 0) continue;
        size_t digits = strspn(e->d_name, "0123456789");
        if (digits != n - sl) continue;
        unsigned long long num = strtoull(e->d_name, NULL, 10);
        if (!found || num > best) {
            best = num;
            found = true;
            snprintf(name, cap, "%s", e->d_name);
        }
    }
    closedir(d);
    return found;
}

static int count_numbered(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    int count = 0;
    size_t sl = strlen(suffix);
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n > sl && strcmp(e->d_name + n - sl, suffix) == 0 &&
            strspn(e->d_name, "0123456789") == n - sl)
            count++;
    }
    closedir(d);
    return count;
}

/* The manifest CURRENT names, as a path. */
static void current_manifest(const char *dir, char *path) {
    char cur[PATH_MAX];
    kv_buf b = KV_BUF_INIT;
    in_dir(cur, dir, "CURRENT");
    read_whole(cur, &b);
    cr_assert(b.len > 1 && b.ptr[b.len - 1] == '\n', "CURRENT malformed");
    char name[256];
    cr_assert_lt(b.len, sizeof name);
    memcpy(name, b.ptr, b.len - 1);
    name[b.len - 1] = '\0';
    kv_buf_release(&b);
    in_dir(path, dir, name);
}

static void flip_bit(const char *path, uint64_t off, int bit) {
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "open %s", path);
    uint8_t c;
    cr_assert_eq(pread(fd, &c, 1, (off_t)off), 1);
    c ^= (uint8_t)(1u << bit);
    cr_assert_eq(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

static void cut(const char *path, uint64_t len) {
    cr_assert_eq(truncate(path, (off_t)len), 0, "truncate %s", path);
}

/* Replace trial by a copy of src, then flip one bit of the copy's file
 * name. */
static void copy_and_flip(const char *src, const char *trial, const char *name,
                          uint64_t off, int bit) {
    char p[PATH_MAX];
    copy_tree(src, trial);
    in_dir(p, trial, name);
    flip_bit(p, off, bit);
}

/* Replace trial by a copy of src, then cut the copy's file name to len
 * bytes. */
static void copy_and_cut(const char *src, const char *trial, const char *name,
                         uint64_t len) {
    char p[PATH_MAX];
    copy_tree(src, trial);
    in_dir(p, trial, name);
    cut(p, len);
}

/* ---- data ---- */

static kv_slice key_of(char *buf, unsigned i) {
    return kv_slice_make(buf, (size_t)snprintf(buf, 32, "f%06u", i));
}

/* Value of key i, version ver, n bytes. */
static kv_slice val_of(uint8_t *buf, unsigned i, unsigned ver, size_t n) {
    uint64_t s = mix64(((uint64_t)i << 20) ^ ver ^ 0x5eed);
    for (size_t j = 0; j < n; j++) {
        if (j % 8 == 0) s = mix64(s + j);
        buf[j] = (uint8_t)(s >> (8 * (j % 8)));
    }
    return kv_slice_make(buf, n);
}

/* Outcome of reading key i expecting (ver, n): 0 match, KV_ENOTFOUND,
 * another error code, or 1 for a wrong value (always a failure). */
static int probe(eng_db *db, unsigned i, unsigned ver, size_t n, kv_buf *got) {
    char kb[32];
    uint8_t vb[4096];
    int rc = eng_db_get(db, NULL, key_of(kb, i), got);
    if (rc != 0) return rc;
    return kv_slice_eq(kv_buf_slice(got), val_of(vb, i, ver, n)) ? 0 : 1;
}

static int open_at(const char *dir, const eng_options *o, eng_db **db) {
    *db = NULL;
    return eng_db_open(dir, o, db);
}

/* ---- (a), (b): the WAL ---- */

enum { WAL_KEYS = 200, WAL_VLEN = 24 };

/* Write WAL_KEYS small puts in a child that exits without closing, so the
 * data exists only in the WAL. */
static void build_wal_only_store(const char *dir) {
    cr_assert_eq(mkdir(dir, 0755), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        eng_options o;
        eng_options_init(&o);
        o.sync = ENG_SYNC_NONE;
        eng_db *db = NULL;
        if (eng_db_open(dir, &o, &db) != 0) _exit(2);
        char kb[32];
        uint8_t vb[64];
        for (unsigned i = 0; i < WAL_KEYS; i++)
            if (eng_db_put(db, key_of(kb, i), val_of(vb, i, 0, WAL_VLEN), 0))
                _exit(3);
        _exit(0);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "writer child failed (status %#x)", st);
}

/* Open a damaged WAL store: -1 if open failed (rc in *rc), else the length
 * n of the prefix of keys present (and asserts that no key after it is). */
static int wal_prefix(const char *dir, int *rc_out, const char *what) {
    eng_options o;
    eng_options_init(&o);
    o.create_if_missing = false;
    eng_db *db;
    int rc = open_at(dir, &o, &db);
    *rc_out = rc;
    if (rc != 0) {
        cr_assert_null(db);
        return -1;
    }
    kv_buf got = KV_BUF_INIT;
    int n = 0;
    while (n < WAL_KEYS) {
        int r = probe(db, (unsigned)n, 0, WAL_VLEN, &got);
        if (r == KV_ENOTFOUND) break;
        cr_assert_eq(r, 0, "%s: key %d: %s", what, n,
                     r == 1 ? "wrong value" : kv_strerror(r));
        n++;
    }
    for (int i = n; i < WAL_KEYS; i++) {
        int r = probe(db, (unsigned)i, 0, WAL_VLEN, &got);
        cr_assert_eq(r, KV_ENOTFOUND,
                     "%s: key %d missing but key %d present (%s): not a "
                     "prefix",
                     what, n, i, r == 0 ? "ok" : kv_strerror(r));
    }
    /* The store keeps working after recovery: a new write survives the
     * next reopen along with the recovered prefix. */
    char kb[32];
    OK(eng_db_put(db, key_of(kb, 999999), kv_slice_str("after"), 0));
    OK(eng_db_close(db));
    OK(open_at(dir, &o, &db));
    for (int i = 0; i < WAL_KEYS; i++) {
        int r = probe(db, (unsigned)i, 0, WAL_VLEN, &got);
        cr_assert_eq(r, i < n ? 0 : KV_ENOTFOUND,
                     "%s: after a second reopen key %d: %s", what, i,
                     r == 1 ? "wrong value" : kv_strerror(r));
    }
    OK(eng_db_get(db, NULL, key_of(kb, 999999), &got));
    cr_assert(kv_slice_eq(kv_buf_slice(&got), kv_slice_str("after")),
              "%s: the write after recovery was lost", what);
    OK(eng_db_close(db));
    kv_buf_release(&got);
    return n;
}

Test(faults, wal_truncated_anywhere_recovers_a_prefix) {
    char src[PATH_MAX], trial[PATH_MAX], logname[64], logpath[PATH_MAX];
    sub(src, "src");
    sub(trial, "trial");
    build_wal_only_store(src);
    cr_assert(newest_numbered(src, ".log", logname, sizeof logname),
              "no .log file in the store");
    in_dir(logpath, src, logname);
    uint64_t size = file_size(logpath);
    cr_assert_gt(size, WAL_KEYS * WAL_VLEN, "WAL of %" PRIu64 " bytes", size);

    /* Offsets: the empty file, inside and at the end of the header, many
     * points through the records, and one byte short of the end. */
    uint64_t offs[80];
    int noffs = 0;
    const uint64_t fixed[] = {0, 1, 7, 16, 31, 32, 33, 40};
    for (size_t i = 0; i < KV_ARRAY_LEN(fixed); i++) offs[noffs++] = fixed[i];
    for (int i = 1; i <= 60; i++) offs[noffs++] = 40 + (size - 41) * i / 61;
    offs[noffs++] = size - 2;
    offs[noffs++] = size - 1;
    offs[noffs++] = size;

    int last = 0;
    char what[96];
    for (int t = 0; t < noffs; t++) {
        copy_and_cut(src, trial, logname, offs[t]);
        snprintf(what, sizeof what, "WAL cut at %" PRIu64 " of %" PRIu64,
                 offs[t], size);
        int rc;
        int n = wal_prefix(trial, &rc, what);
        cr_assert_geq(n, 0, "%s: open failed: %s", what, kv_strerror(rc));
        cr_assert_geq(n, last, "%s: prefix %d shorter than %d at a shorter cut",
                      what, n, last);
        last = n;
        if (offs[t] <= 32)
            cr_assert_eq(n, 0, "%s: %d keys from the header", what, n);
        if (offs[t] == size - 1)
            cr_assert_eq(n, WAL_KEYS - 1,
                         "%s: cutting the last byte kept %d keys", what, n);
        if (offs[t] == size)
            cr_assert_eq(n, WAL_KEYS, "%s: intact WAL gave %d keys", what, n);
    }
}

Test(faults, wal_bit_flip_before_valid_records_is_corruption) {
    char src[PATH_MAX], trial[PATH_MAX], logname[64];
    sub(src, "src");
    sub(trial, "trial");
    build_wal_only_store(src);
    cr_assert(newest_numbered(src, ".log", logname, sizeof logname));
    char lp[PATH_MAX];
    in_dir(lp, src, logname);
    uint64_t size = file_size(lp);
    cr_assert_gt(size, 1000);

    /* Flips in the records, each followed by at least ~20 valid records. */
    for (int t = 0; t < 24; t++) {
        uint64_t off = 32 + (size - 32 - 700) * (uint64_t)t / 23;
        int bit = (t * 3) % 8;
        copy_and_flip(src, trial, logname, off, bit);
        eng_options o;
        eng_options_init(&o);
        eng_db *db;
        int rc = open_at(trial, &o, &db);
        if (rc == 0) eng_db_close(db);
        cr_assert_eq(rc, KV_ECORRUPT,
                     "bit %d flipped at WAL offset %" PRIu64 " of %" PRIu64
                     ": open returned %d (%s), expected corruption",
                     bit, off, size, rc, kv_strerror(rc));
    }

    /* The header: refused, or (an unchecked byte) everything intact. */
    for (uint64_t off = 0; off < 32; off += 3) {
        copy_and_flip(src, trial, logname, off, (int)(off % 8));
        eng_options o;
        eng_options_init(&o);
        eng_db *db;
        int rc = open_at(trial, &o, &db);
        if (rc == 0) {
            kv_buf got = KV_BUF_INIT;
            for (unsigned i = 0; i < WAL_KEYS; i++) {
                int r = probe(db, i, 0, WAL_VLEN, &got);
                cr_assert_eq(r, 0,
                             "header bit flipped at %" PRIu64
                             ": open accepted it but key %u: %s",
                             off, i, r == 1 ? "wrong value" : kv_strerror(r));
            }
            kv_buf_release(&got);
            eng_db_close(db);
        } else {
            cr_assert(rc == KV_ECORRUPT || rc == KV_EVERSION,
                      "header bit flipped at %" PRIu64 ": open returned %s",
                      off, kv_strerror(rc));
        }
    }
}

/* ---- (c): tables ---- */

enum { SST_KEYS = 2000, SST_VLEN = 100 };

static void build_table_store(const char *dir, int compression) {
    eng_options o;
    eng_options_init(&o);
    o.compression_level = compression;
    eng_db *db;
    OK(open_at(dir, &o, &db));
    char kb[32];
    uint8_t vb[256];
    for (unsigned i = 0; i < SST_KEYS; i++)
        OK(eng_db_put(db, key_of(kb, i * 2), val_of(vb, i * 2, 0, SST_VLEN),
                      ENG_WF_SYNC_NONE));
    OK(eng_db_flush(db));
    OK(eng_db_close(db));
    cr_assert_eq(count_numbered(dir, ".sst"), 1, "expected a single table");
}

/* Read everything from a store with a damaged table. Values must be right
 * or reported as KV_ECORRUPT (-EIO tolerated); absent keys stay absent.
 * Returns how many reads reported corruption, or -1 if open did. */
static int read_damaged(const char *dir, const char *what, bool allow_enoent) {
    eng_options o;
    eng_options_init(&o);
    o.create_if_missing = false;
    eng_db *db;
    int rc = open_at(dir, &o, &db);
    if (rc != 0) {
        cr_assert(rc == KV_ECORRUPT || (allow_enoent && rc == -ENOENT),
                  "%s: open returned %d (%s)", what, rc, kv_strerror(rc));
        return -1;
    }
    kv_buf got = KV_BUF_INIT;
    int corrupt = 0;
    for (unsigned i = 0; i < SST_KEYS * 2; i++) {
        int r = probe(db, i, 0, SST_VLEN, &got);
        if (r == KV_ECORRUPT || r == -EIO || (allow_enoent && r == -ENOENT)) {
            corrupt++;
            continue;
        }
        if (i % 2) {
            cr_assert_eq(r, KV_ENOTFOUND, "%s: absent key %u: %s", what, i,
                         r == 1 || r == 0 ? "a value appeared"
                                          : kv_strerror(r));
        } else {
            cr_assert_eq(r, 0, "%s: key %u: %s", what, i,
                         r == 1              ? "WRONG VALUE"
                         : r == KV_ENOTFOUND ? "silently missing"
                                             : kv_strerror(r));
        }
    }
    /* A scan returns the right entries in order, skips none, and a stop
     * before the end carries an error. */
    eng_iter *it = NULL;
    rc = eng_iter_new(db, NULL, &it);
    if (rc == 0) {
        char kb[32];
        uint8_t vb[256];
        unsigned next = 0;
        for (eng_iter_seek_first(it); eng_iter_valid(it); eng_iter_next(it)) {
            cr_assert_lt(next, SST_KEYS * 2, "%s: scan found extra keys", what);
            cr_assert(kv_slice_eq(eng_iter_key(it), key_of(kb, next)),
                      "%s: scan skipped or invented keys at key %u", what,
                      next);
            cr_assert(
                kv_slice_eq(eng_iter_value(it), val_of(vb, next, 0, SST_VLEN)),
                "%s: scan: wrong value for key %u", what, next);
            next += 2;
        }
        rc = eng_iter_status(it);
        if (next < SST_KEYS * 2) {
            cr_assert(rc == KV_ECORRUPT || rc == -EIO ||
                          (allow_enoent && rc == -ENOENT),
                      "%s: scan stopped at key %u with status %d (%s)", what,
                      next, rc, kv_strerror(rc));
            corrupt++;
        } else {
            cr_assert_eq(rc, 0, "%s: complete scan with status %s", what,
                         kv_strerror(rc));
        }
        eng_iter_free(it);
    } else {
        cr_assert(rc == KV_ECORRUPT || rc == -EIO ||
                      (allow_enoent && rc == -ENOENT),
                  "%s: iter_new: %s", what, kv_strerror(rc));
        corrupt++;
    }
    kv_buf_release(&got);
    eng_db_close(db);
    return corrupt;
}

static void sst_bit_flips(int compression) {
    char src[PATH_MAX], trial[PATH_MAX], name[64], what[128];
    sub(src, "src");
    sub(trial, "trial");
    build_table_store(src, compression);
    cr_assert(newest_numbered(src, ".sst", name, sizeof name));
    char sp[PATH_MAX];
    in_dir(sp, src, name);
    uint64_t size = file_size(sp);
    cr_assert_gt(size, 4096);
    /* The data blocks take the front of the file (filter, index and footer
     * are small and at the end); flip bits across the first 70%. */
    for (int t = 0; t < 12; t++) {
        uint64_t off = 1 + size * 7 / 10 * (uint64_t)t / 12;
        copy_and_flip(src, trial, name, off, t % 8);
        snprintf(what, sizeof what,
                 "sst bit %d flipped at %" PRIu64 "/%" PRIu64, t % 8, off,
                 size);
        int corrupt = read_damaged(trial, what, false);
        cr_assert_neq(corrupt, 0, "%s: damage went unnoticed", what);
    }
    /* The tail: index, filter and footer. A flip there must not hide keys
     * (a damaged filter answering "absent") or change values; it need not
     * be noticed if it hits bytes no lookup depends on. */
    int noticed = 0;
    for (int t = 0; t < 24; t++) {
        uint64_t off = size * 7 / 10 + (size * 3 / 10 - 1) * (uint64_t)t / 23;
        copy_and_flip(src, trial, name, off, (t * 5) % 8);
        snprintf(what, sizeof what,
                 "sst bit %d flipped at %" PRIu64 "/%" PRIu64, (t * 5) % 8, off,
                 size);
        noticed += read_damaged(trial, what, false) != 0;
    }
    fprintf(stderr, "faults: %d of 24 flips in the sst tail were noticed\n",
            noticed);
}

Test(faults, sst_bit_flip_is_reported_never_wrong) {
    sst_bit_flips(1);
}
Test(faults, sst_bit_flip_uncompressed) {
    sst_bit_flips(0);
}

Test(faults, sst_truncated_or_missing) {
    char src[PATH_MAX], trial[PATH_MAX], name[64], what[128];
    sub(src, "src");
    sub(trial, "trial");
    build_table_store(src, 1);
    cr_assert(newest_numbered(src, ".sst", name, sizeof name));
    char sp[PATH_MAX];
    in_dir(sp, src, name);
    uint64_t size = file_size(sp);
    const uint64_t lens[] = {0, 1, 20, size / 2, size - 60, size - 8, size - 1};
    for (size_t t = 0; t < KV_ARRAY_LEN(lens); t++) {
        copy_and_cut(src, trial, name, lens[t]);
        snprintf(what, sizeof what, "sst cut to %" PRIu64 "/%" PRIu64, lens[t],
                 size);
        int corrupt = read_damaged(trial, what, false);
        cr_assert_neq(corrupt, 0, "%s: damage went unnoticed", what);
    }
    /* A table the manifest names but the directory lacks. */
    copy_tree(src, trial);
    char tp[PATH_MAX];
    in_dir(tp, trial, name);
    cr_assert_eq(unlink(tp), 0);
    int corrupt = read_damaged(trial, "sst deleted", true);
    cr_assert_neq(corrupt, 0, "a deleted table went unnoticed");
}

/* ---- (d): MANIFEST and CURRENT ---- */

enum { MF_ROUNDS = 8, MF_PER_ROUND = 100 };

/* One session with many flushes, so the manifest holds many records. */
static void build_manifest_store(const char *dir) {
    eng_options o;
    eng_options_init(&o);
    o.l0_compaction_trigger = 100; /* keep the edits uniform: flushes only */
    o.l0_slowdown_trigger = 200;
    o.l0_stop_trigger = 300;
    eng_db *db;
    OK(open_at(dir, &o, &db));
    char kb[32];
    uint8_t vb[256];
    for (unsigned r = 0; r < MF_ROUNDS; r++) {
        for (unsigned i = 0; i < MF_PER_ROUND; i++) {
            unsigned id = r * MF_PER_ROUND + i;
            OK(eng_db_put(db, key_of(kb, id), val_of(vb, id, 0, 50), 0));
        }
        OK(eng_db_flush(db));
    }
    OK(eng_db_close(db));
}

/* Open a store with a damaged manifest: refused with one of the allowed
 * codes, or (allow_open) opened with no wrong value. */
static void manifest_damage(const char *dir, const char *what,
                            bool allow_open) {
    eng_options o;
    eng_options_init(&o);
    o.create_if_missing = false;
    eng_db *db;
    int rc = open_at(dir, &o, &db);
    if (rc == 0) {
        cr_assert(allow_open, "%s: open succeeded, expected corruption", what);
        kv_buf got = KV_BUF_INIT;
        int lost = 0;
        for (unsigned id = 0; id < MF_ROUNDS * MF_PER_ROUND; id++) {
            int r = probe(db, id, 0, 50, &got);
            cr_assert(r != 1, "%s: wrong value for key %u", what, id);
            lost += r != 0;
        }
        kv_buf_release(&got);
        eng_db_close(db);
        if (lost)
            fprintf(stderr,
                    "faults: %s: opened with %d of %d keys unreadable\n", what,
                    lost, MF_ROUNDS * MF_PER_ROUND);
        return;
    }
    cr_assert_null(db);
    cr_assert(rc == KV_ECORRUPT || rc == -ENOENT,
              "%s: open returned %d (%s), expected corruption or -ENOENT", what,
              rc, kv_strerror(rc));
}

Test(faults, manifest_and_current_damage) {
    char src[PATH_MAX], trial[PATH_MAX], mp[PATH_MAX], what[128];
    sub(src, "src");
    sub(trial, "trial");
    build_manifest_store(src);
    current_manifest(src, mp);
    const char *mname = strrchr(mp, '/') + 1;
    uint64_t size = file_size(mp);
    cr_assert_gt(size, 64, "manifest of %" PRIu64 " bytes", size);

    /* Sanity: an undamaged copy opens with everything. */
    copy_tree(src, trial);
    {
        eng_options o;
        eng_options_init(&o);
        eng_db *db;
        OK(open_at(trial, &o, &db));
        kv_buf got = KV_BUF_INIT;
        for (unsigned id = 0; id < MF_ROUNDS * MF_PER_ROUND; id++)
            cr_assert_eq(probe(db, id, 0, 50, &got), 0, "copy: key %u", id);
        kv_buf_release(&got);
        OK(eng_db_close(db));
    }

    /* Bit flips inside the first record and mid-file (a valid record
     * follows either way): corruption. */
    const uint64_t flips[] = {32 + 2,
                              32 + 9,
                              32 + 13,
                              32 + 20,
                              32 + (size - 32) / 3,
                              32 + (size - 32) / 2};
    for (size_t t = 0; t < KV_ARRAY_LEN(flips); t++) {
        copy_and_flip(src, trial, mname, flips[t], (int)(t % 8));
        snprintf(what, sizeof what,
                 "manifest bit flipped at %" PRIu64 "/%" PRIu64, flips[t],
                 size);
        manifest_damage(trial, what, false);
    }
    /* The header. */
    for (uint64_t off = 0; off < 32; off += 5) {
        copy_and_flip(src, trial, mname, off, 1);
        snprintf(what, sizeof what, "manifest header bit flipped at %" PRIu64,
                 off);
        eng_options o;
        eng_options_init(&o);
        eng_db *db;
        int rc = open_at(trial, &o, &db);
        if (rc == 0) {
            /* an unchecked header byte: then nothing may be lost */
            kv_buf got = KV_BUF_INIT;
            for (unsigned id = 0; id < MF_ROUNDS * MF_PER_ROUND; id++)
                cr_assert_eq(probe(db, id, 0, 50, &got), 0, "%s: key %u", what,
                             id);
            kv_buf_release(&got);
            eng_db_close(db);
        } else {
            cr_assert(rc == KV_ECORRUPT || rc == KV_EVERSION, "%s: %s", what,
                      kv_strerror(rc));
        }
    }

    /* Truncation: CURRENT only ever names a complete, synced manifest, so
     * one without a whole first record is corrupt. A cut later may look
     * like a torn last edit: then no wrong values. */
    const uint64_t cuts[] = {0, 16, 31, 32, 40};
    for (size_t t = 0; t < KV_ARRAY_LEN(cuts); t++) {
        copy_and_cut(src, trial, mname, cuts[t]);
        snprintf(what, sizeof what, "manifest cut to %" PRIu64 "/%" PRIu64,
                 cuts[t], size);
        manifest_damage(trial, what, false);
    }
    const uint64_t late_cuts[] = {size / 2, size - 1};
    for (size_t t = 0; t < KV_ARRAY_LEN(late_cuts); t++) {
        copy_and_cut(src, trial, mname, late_cuts[t]);
        snprintf(what, sizeof what, "manifest cut to %" PRIu64 "/%" PRIu64,
                 late_cuts[t], size);
        manifest_damage(trial, what, true);
    }

    /* The manifest CURRENT names is gone. */
    copy_tree(src, trial);
    char tm[PATH_MAX];
    in_dir(tm, trial, mname);
    cr_assert_eq(unlink(tm), 0);
    manifest_damage(trial, "manifest deleted", false);

    /* CURRENT naming a manifest that does not exist, or garbage. */
    static const struct {
        const char *bytes;
        size_t len;
    } currents[] = {
        {"MANIFEST-999999\n", 16},
        {"MANIFEST-999999999999\n", 22},
        {"", 0},
        {"\n", 1},
        {"garbage\n", 8},
        {"\x00\xff\x13\x37garbage", 11},
        {"MANIFEST-\n", 10},
        {"../../../etc/passwd\n", 20},
        {"CURRENT\n", 8},
    };
    for (size_t t = 0; t < KV_ARRAY_LEN(currents); t++) {
        copy_tree(src, trial);
        char cp[PATH_MAX];
        in_dir(cp, trial, "CURRENT");
        write_whole(cp, currents[t].bytes, currents[t].len);
        snprintf(what, sizeof what, "CURRENT garbage #%zu", t);
        manifest_damage(trial, what, false);
    }
}

/* ---- (e): failing I/O ---- */

enum { IO_KEYS = 40, IO_VLEN = 900 };

/* Reopen without faults: acked keys exact, failed puts absent or exact. */
static void check_after_faults(const char *dir, const int *put_rc, int n,
                               const char *what, long k) {
    eng_options o;
    eng_options_init(&o);
    o.create_if_missing = false;
    eng_db *db;
    int rc = open_at(dir, &o, &db);
    cr_assert_eq(rc, 0, "%s k=%ld: reopen without faults: %s", what, k,
                 kv_strerror(rc));
    kv_buf got = KV_BUF_INIT;
    for (int i = 0; i < n; i++) {
        int r = probe(db, (unsigned)i, 0, IO_VLEN, &got);
        if (put_rc[i] == 0)
            cr_assert_eq(r, 0, "%s k=%ld: acknowledged key %d: %s", what, k, i,
                         r == 1 ? "wrong value" : kv_strerror(r));
        else
            cr_assert(r == 0 || r == KV_ENOTFOUND,
                      "%s k=%ld: key %d (put failed: %s): %s", what, k, i,
                      kv_strerror(put_rc[i]),
                      r == 1 ? "wrong value" : kv_strerror(r));
    }
    kv_buf_release(&got);
    OK(eng_db_close(db));
}

/* Puts with a flush every 15, under a fault armed after k operations.
 * Returns the number of faults injected. */
static long faulty_workload(const char *dir, eng_fault *f, int mask, long k,
                            bool sticky, int err, const char *what) {
    rm_tree(dir);
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_ALWAYS;
    o.memtable_bytes = 16 * 1024; /* background flushes too */
    o.fault = f;
    eng_db *db;
    eng_fault_disarm(f);
    OK(open_at(dir, &o, &db));
    long hits0 = eng_fault_hits(f);
    eng_fault_arm(f, mask, k, err, sticky);
    int put_rc[IO_KEYS];
    char kb[32];
    uint8_t vb[IO_VLEN];
    kv_buf got = KV_BUF_INIT;
    for (int i = 0; i < IO_KEYS; i++) {
        put_rc[i] = eng_db_put(db, key_of(kb, (unsigned)i),
                               val_of(vb, (unsigned)i, 0, IO_VLEN), 0);
        cr_assert_leq(put_rc[i], 0);
        int r = probe(db, (unsigned)i, 0, IO_VLEN, &got);
        if (put_rc[i] == 0)
            cr_assert_eq(r, 0,
                         "%s k=%ld: key %d not readable after its put: "
                         "%s",
                         what, k, i, r == 1 ? "wrong value" : kv_strerror(r));
        else
            cr_assert_eq(r, KV_ENOTFOUND,
                         "%s k=%ld: put %d failed (%s) but get says %s", what,
                         k, i, kv_strerror(put_rc[i]),
                         r == 0 ? "present" : kv_strerror(r));
        if (i % 15 == 14) {
            int rc = eng_db_flush(db);
            cr_assert_leq(rc, 0);
            /* A failed flush loses nothing that was acknowledged. */
            for (int j = 0; j <= i; j++) {
                if (put_rc[j] != 0) continue;
                r = probe(db, (unsigned)j, 0, IO_VLEN, &got);
                cr_assert_eq(r, 0, "%s k=%ld: after flush (%s) key %d: %s",
                             what, k, kv_strerror(rc), j,
                             r == 1 ? "wrong value" : kv_strerror(r));
            }
        }
    }
    long hits = eng_fault_hits(f) - hits0;
    eng_fault_disarm(f);
    kv_buf_release(&got);
    eng_db_close(db); /* may report the background error */
    check_after_faults(dir, put_rc, IO_KEYS, what, k);
    return hits;
}

static void write_fault_loop(int mask, bool sticky, int err, const char *what) {
    char dir[PATH_MAX];
    sub(dir, "io");
    eng_fault *f = new_fault();
    long k;
    for (k = 0; k < 2000; k++)
        if (faulty_workload(dir, f, mask, k, sticky, err, what) == 0) break;
    cr_assert_lt(k, 2000, "%s: the workload never ran clean", what);
    cr_assert_gt(k, 0, "%s: no operation was ever failed", what);
    fprintf(stderr, "faults: %s: %ld fault points\n", what, k);
    eng_fault_free(f);
}

Test(faults, write_and_sync_failures_sticky) {
    write_fault_loop(ENG_FAULT_WRITE | ENG_FAULT_SYNC, true, ENOSPC,
                     "write|sync sticky");
}

Test(faults, write_and_sync_failures_once) {
    write_fault_loop(ENG_FAULT_WRITE | ENG_FAULT_SYNC, false, EIO,
                     "write|sync once");
}

Test(faults, open_and_rename_failures) {
    write_fault_loop(ENG_FAULT_OPEN | ENG_FAULT_RENAME, false, ENOSPC,
                     "open|rename once");
}

/* A store of four overlapping tables, for compaction and read faults. */
enum { CF_KEYS = 600 };

static void build_compaction_store(const char *dir, eng_options *o) {
    eng_options_init(o);
    o->l0_compaction_trigger = 100; /* only the compactions we ask for */
    o->l0_slowdown_trigger = 200;
    o->l0_stop_trigger = 300;
    o->table_bytes = 32 * 1024; /* several output tables */
    eng_db *db;
    OK(open_at(dir, o, &db));
    char kb[32];
    uint8_t vb[256];
    for (unsigned r = 0; r < 4; r++) {
        for (unsigned i = r; i < CF_KEYS; i += 2)
            OK(eng_db_put(db, key_of(kb, i), val_of(vb, i, r, 120),
                          ENG_WF_SYNC_NONE));
        OK(eng_db_flush(db));
    }
    OK(eng_db_close(db));
}

/* Key i was last written in round r = the largest r <= 3 with r%2 == i%2
 * and r <= i. */
static unsigned cf_ver(unsigned i) {
    unsigned r = i % 2 ? 3 : 2;
    while (r > i) r -= 2;
    return r;
}

static void check_cf(eng_db *db, const char *what, long k) {
    kv_buf got = KV_BUF_INIT;
    for (unsigned i = 0; i < CF_KEYS; i++) {
        int r = probe(db, i, cf_ver(i), 120, &got);
        cr_assert_eq(r, 0, "%s k=%ld: key %u: %s", what, k, i,
                     r == 1 ? "wrong value" : kv_strerror(r));
    }
    kv_buf_release(&got);
}

Test(faults, compaction_failures_keep_data) {
    char src[PATH_MAX], trial[PATH_MAX];
    sub(src, "src");
    sub(trial, "trial");
    eng_options o;
    build_compaction_store(src, &o);
    eng_fault *f = new_fault();
    const int masks[] = {ENG_FAULT_WRITE | ENG_FAULT_SYNC,
                         ENG_FAULT_OPEN | ENG_FAULT_RENAME, ENG_FAULT_READ};
    for (size_t m = 0; m < KV_ARRAY_LEN(masks); m++) {
        long k;
        int failures = 0;
        for (k = 0; k < 3000; k++) {
            copy_tree(src, trial);
            eng_options fo = o;
            fo.fault = f;
            eng_fault_disarm(f);
            eng_db *db;
            OK(open_at(trial, &fo, &db));
            long hits0 = eng_fault_hits(f);
            eng_fault_arm(f, masks[m], k, EIO, m != 0);
            int rc = eng_db_compact_range(db, NULL, NULL);
            long hits = eng_fault_hits(f) - hits0;
            eng_fault_disarm(f);
            cr_assert_leq(rc, 0);
            failures += rc != 0;
            check_cf(db, "after a failed compaction", k);
            eng_db_close(db);
            rc = open_at(trial, &o, &db);
            cr_assert_eq(rc, 0,
                         "mask %#x k=%ld: reopen after a failed compaction: "
                         "%s",
                         masks[m], k, kv_strerror(rc));
            check_cf(db, "reopened after a failed compaction", k);
            OK(eng_db_close(db));
            if (hits == 0) {
                cr_assert_eq(rc, 0, "compaction failed without a fault");
                break;
            }
        }
        cr_assert_lt(k, 3000);
        cr_assert_gt(failures, 0, "mask %#x: no compaction ever failed",
                     masks[m]);
        fprintf(stderr, "faults: compaction mask %#x: %ld fault points\n",
                masks[m], k);
    }
    eng_fault_free(f);
}

Test(faults, read_failures_are_errors_not_wrong_answers) {
    char src[PATH_MAX];
    sub(src, "src");
    eng_options o;
    build_compaction_store(src, &o);
    eng_fault *f = new_fault();
    o.fault = f;
    o.cache_bytes = 8192; /* re-read blocks often */
    eng_db *db;
    OK(open_at(src, &o, &db));
    kv_buf got = KV_BUF_INIT;
    int errors = 0;
    for (long k = 0; k < 60; k++) {
        eng_fault_arm(f, ENG_FAULT_READ, k % 7, EIO, k % 2);
        for (unsigned i = (unsigned)k; i < CF_KEYS; i += 13) {
            int r = probe(db, i, cf_ver(i), 120, &got);
            cr_assert(r == 0 || r == -EIO,
                      "read fault: key %u: %s (expected the value or -EIO)", i,
                      r == 1 ? "wrong value" : kv_strerror(r));
            errors += r != 0;
        }
        eng_fault_disarm(f);
    }
    cr_assert_gt(errors, 0, "no read ever failed");
    kv_buf_release(&got);
    /* Nothing sticks once reads work again. */
    check_cf(db, "after read faults", 0);
    OK(eng_db_close(db));
    eng_fault_free(f);
}

Test(faults, open_failures_leave_store_recoverable) {
    /* A store with tables and WAL-only data, left by a killed writer. */
    char src[PATH_MAX], trial[PATH_MAX];
    sub(src, "src");
    sub(trial, "trial");
    build_wal_only_store(src);
    eng_fault *f = new_fault();
    const int mask = ENG_FAULT_WRITE | ENG_FAULT_SYNC | ENG_FAULT_OPEN |
                     ENG_FAULT_RENAME | ENG_FAULT_READ;
    long k;
    int failed_opens = 0;
    for (k = 0; k < 3000; k++) {
        copy_tree(src, trial);
        eng_options o;
        eng_options_init(&o);
        o.fault = f;
        eng_fault_disarm(f);
        long hits0 = eng_fault_hits(f);
        eng_fault_arm(f, mask, k, k % 2 ? EIO : ENOSPC, true);
        eng_db *db;
        int rc = open_at(trial, &o, &db);
        long hits = eng_fault_hits(f) - hits0;
        eng_fault_disarm(f);
        if (rc == 0) {
            eng_db_close(db);
        } else {
            cr_assert_null(db);
            cr_assert(rc < 0 && rc != KV_ECORRUPT,
                      "k=%ld: injected I/O error reported as %s", k,
                      kv_strerror(rc));
            failed_opens++;
        }
        int n;
        int prc;
        n = wal_prefix(trial, &prc, "reopen after a failed open");
        cr_assert_eq(n, WAL_KEYS,
                     "k=%ld: open failure (%s) lost data: %d "
                     "keys left (reopen rc %s)",
                     k, kv_strerror(rc), n, kv_strerror(prc));
        if (hits == 0) break;
    }
    cr_assert_lt(k, 3000);
    cr_assert_gt(failed_opens, 0);
    fprintf(stderr, "faults: open: %ld fault points, %d failed opens\n", k,
            failed_opens);
    eng_fault_free(f);
}

/* ---- (f): failing allocation ---- */

static void fill(eng_db *db, unsigned from, unsigned to, unsigned ver) {
    char kb[32];
    uint8_t vb[256];
    for (unsigned i = from; i < to; i++)
        OK(eng_db_put(db, key_of(kb, i), val_of(vb, i, ver, 100), 0));
}

static void check_range(eng_db *db, unsigned from, unsigned to, unsigned ver,
                        const char *what, long k) {
    kv_buf got = KV_BUF_INIT;
    for (unsigned i = from; i < to; i++) {
        int r = probe(db, i, ver, 100, &got);
        cr_assert_eq(r, 0, "%s k=%ld: key %u: %s", what, k, i,
                     r == 1 ? "wrong value" : kv_strerror(r));
    }
    kv_buf_release(&got);
}

Test(faults, enomem_during_open) {
    char dir[PATH_MAX];
    sub(dir, "db");
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    eng_db *db;
    OK(open_at(dir, &o, &db));
    fill(db, 0, 300, 0);
    OK(eng_db_flush(db));
    fill(db, 300, 400, 0); /* these stay in the WAL (or a flush at close) */
    OK(eng_db_close(db));

    long k;
    int failures = 0;
    for (k = 0; k < 5000; k++) {
        long inj0 = kv_alloc_injected_failures();
        kv_alloc_fail_after(k);
        int rc = open_at(dir, &o, &db);
        kv_alloc_fail_after(-1);
        long inj = kv_alloc_injected_failures() - inj0;
        if (rc == 0) {
            int crc = eng_db_close(db);
            cr_assert(crc == 0 || crc == -ENOMEM, "k=%ld: close: %s", k,
                      kv_strerror(crc));
        } else {
            cr_assert_eq(rc, -ENOMEM, "k=%ld: open under ENOMEM returned %s", k,
                         kv_strerror(rc));
            cr_assert_null(db);
            failures++;
        }
        OK(open_at(dir, &o, &db));
        check_range(db, 0, 400, 0, "reopen after ENOMEM in open", k);
        OK(eng_db_close(db));
        if (inj == 0) break;
    }
    cr_assert_lt(k, 5000);
    cr_assert_gt(failures, 0);
}

Test(faults, enomem_during_put_get_iter) {
    char dir[PATH_MAX];
    sub(dir, "db");
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    o.cache_bytes = 16 * 1024;
    eng_db *db;
    OK(open_at(dir, &o, &db));
    fill(db, 0, 500, 0);
    OK(eng_db_flush(db));

    /* Puts of fresh keys 1000+k. */
    enum { MAXK = 400 };
    int put_rc[MAXK];
    char kb[32];
    uint8_t vb[256];
    kv_buf got = KV_BUF_INIT;
    long k;
    for (k = 0; k < MAXK; k++) {
        unsigned id = 1000 + (unsigned)k;
        long inj0 = kv_alloc_injected_failures();
        kv_alloc_fail_after(k % 40);
        int rc = eng_db_put(db, key_of(kb, id), val_of(vb, id, 0, 100), 0);
        kv_alloc_fail_after(-1);
        long inj = kv_alloc_injected_failures() - inj0;
        cr_assert(rc == 0 || rc == -ENOMEM, "k=%ld: put returned %s", k,
                  kv_strerror(rc));
        put_rc[k] = rc;
        int r = probe(db, id, 0, 100, &got);
        cr_assert_eq(r, rc == 0 ? 0 : KV_ENOTFOUND,
                     "k=%ld: put returned %s, then get: %s", k, kv_strerror(rc),
                     r == 1 ? "wrong value" : kv_strerror(r));
        if (inj == 0 && k >= 40) break;
    }
    long nputs = KV_MIN(k + 1, MAXK);

    /* Gets from tables (block reads, cache inserts) and the memtable. */
    int get_fail = 0;
    for (k = 0; k < 300; k++) {
        unsigned id = (unsigned)(k * 7 % 500);
        kv_alloc_fail_after(k % 30);
        int r = probe(db, id, 0, 100, &got);
        kv_alloc_fail_after(-1);
        cr_assert(r == 0 || r == -ENOMEM, "k=%ld: get key %u: %s", k, id,
                  r == 1 ? "wrong value" : kv_strerror(r));
        get_fail += r != 0;
    }
    cr_assert_gt(get_fail, 0);

    /* Iterators: creation or the scan may fail with -ENOMEM; entries seen
     * before that are right. */
    for (k = 0; k < 200; k++) {
        eng_iter *it = NULL;
        kv_alloc_fail_after(k);
        int rc = eng_iter_new(db, NULL, &it);
        unsigned seen = 0;
        if (rc == 0) {
            for (eng_iter_seek_first(it); eng_iter_valid(it) && seen < 500;
                 eng_iter_next(it)) {
                cr_assert(kv_slice_eq(eng_iter_key(it), key_of(kb, seen)),
                          "k=%ld: scan entry %u wrong key", k, seen);
                cr_assert(
                    kv_slice_eq(eng_iter_value(it), val_of(vb, seen, 0, 100)),
                    "k=%ld: scan entry %u wrong value", k, seen);
                seen++;
            }
            int st = eng_iter_status(it);
            kv_alloc_fail_after(-1);
            cr_assert(st == 0 || st == -ENOMEM, "k=%ld: scan status %s", k,
                      kv_strerror(st));
            cr_assert(st != 0 || seen == 500,
                      "k=%ld: scan ended at %u of 500 "
                      "without an error",
                      k, seen);
            eng_iter_free(it);
        } else {
            kv_alloc_fail_after(-1);
            cr_assert_eq(rc, -ENOMEM, "k=%ld: iter_new: %s", k,
                         kv_strerror(rc));
            cr_assert_null(it);
        }
        if (rc == 0 && seen == 500) break;
    }

    kv_buf_release(&got);
    int crc = eng_db_close(db);
    cr_assert(crc == 0 || crc == -ENOMEM, "close: %s", kv_strerror(crc));
    OK(open_at(dir, &o, &db));
    check_range(db, 0, 500, 0, "reopen after ENOMEM", 0);
    for (long i = 0; i < nputs; i++) {
        unsigned id = 1000 + (unsigned)i;
        kv_buf g = KV_BUF_INIT;
        int r = probe(db, id, 0, 100, &g);
        kv_buf_release(&g);
        if (put_rc[i] == 0)
            cr_assert_eq(r, 0, "reopen: acknowledged put %u: %s", id,
                         r == 1 ? "wrong value" : kv_strerror(r));
        else
            cr_assert(r == 0 || r == KV_ENOTFOUND, "reopen: failed put %u: %s",
                      id, r == 1 ? "wrong value" : kv_strerror(r));
    }
    OK(eng_db_close(db));
}

Test(faults, enomem_during_flush) {
    char dir[PATH_MAX];
    sub(dir, "db");
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    long k;
    int failures = 0;
    for (k = 0; k < 5000; k++) {
        rm_tree(dir);
        eng_db *db;
        OK(open_at(dir, &o, &db));
        fill(db, 0, 200, 0);
        OK(eng_db_flush(db));
        fill(db, 100, 300, 1);
        long inj0 = kv_alloc_injected_failures();
        kv_alloc_fail_after(k);
        int rc = eng_db_flush(db);
        kv_alloc_fail_after(-1);
        long inj = kv_alloc_injected_failures() - inj0;
        cr_assert(rc == 0 || rc == -ENOMEM, "k=%ld: flush returned %s", k,
                  kv_strerror(rc));
        failures += rc != 0;
        check_range(db, 0, 100, 0, "after a failed flush", k);
        check_range(db, 100, 300, 1, "after a failed flush", k);
        int crc = eng_db_close(db);
        cr_assert(crc == 0 || crc == -ENOMEM, "k=%ld: close: %s", k,
                  kv_strerror(crc));
        OK(open_at(dir, &o, &db));
        check_range(db, 0, 100, 0, "reopen after a failed flush", k);
        check_range(db, 100, 300, 1, "reopen after a failed flush", k);
        OK(eng_db_close(db));
        if (inj == 0) break;
    }
    cr_assert_lt(k, 5000);
    cr_assert_gt(failures, 0);
}
