/*
 * Tests for the record log (engine/log.c): round trips, a torn tail cut at
 * every offset, a bit flip at every bit, zeroed and recycled tails, crafted
 * oversize lengths, write, read and allocation failures. Each record's
 * payload is generated from (seed, index, size), so a reader's output is
 * checked byte for byte without keeping copies.
 */
#include "engine/engine_int.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

/* Log lines are captured, both to keep thousands of expected warnings off
 * stderr and to check what corruption reports say. */
static char last_error[1024], last_warn[1024];
static int nerrors, nwarns;

static void capture(kv_log_level lvl, const char *line, void *arg) {
    (void)arg;
    if (lvl == KV_LOG_ERROR) {
        snprintf(last_error, sizeof last_error, "%s", line);
        nerrors++;
    } else if (lvl == KV_LOG_WARN) {
        snprintf(last_warn, sizeof last_warn, "%s", line);
        nwarns++;
    }
}

static void setup(void) {
    char t[64];
    make_tmpdir(t, sizeof t, "qfs-test-log");
    char real[PATH_MAX];
    cr_assert_not_null(realpath(t, real));
    cr_assert_lt(strlen(real), sizeof tmpdir);
    strcpy(tmpdir, real);
    kv_log_set_sink(capture, NULL);
}

static void teardown(void) {
    kv_alloc_fail_after(-1);
    rm_tree(tmpdir);
}

TestSuite(log, .init = setup, .fini = teardown);

static void mkpath(char *out, const char *name) {
    snprintf(out, PATH_MAX, "%s/%s", tmpdir, name);
}

static uint8_t gen_byte(uint64_t seed, int i, size_t j) {
    return (uint8_t)(seed * 131 + (uint64_t)i * 31 + j * 7 + (j >> 8));
}

static uint8_t *gen(uint64_t seed, int i, size_t len) {
    uint8_t *p = malloc(len ? len : 1);
    cr_assert_not_null(p);
    for (size_t j = 0; j < len; j++) p[j] = gen_byte(seed, i, j);
    return p;
}

static int add_gen(eng_logw *w, uint64_t seed, int i, size_t len) {
    uint8_t *p = gen(seed, i, len);
    int rc = eng__logw_add(w, kv_slice_make(p, len));
    free(p);
    return rc;
}

/* Write a log of n generated records (seed = lognum); ends[i] receives the
 * end offset of record i when ends is not NULL. */
static void write_log(const char *path, uint64_t lognum, const size_t *sizes,
                      int n, uint64_t *ends) {
    eng_logw *w;
    cr_assert_eq(eng__logw_create(NULL, path, lognum, &w), 0);
    cr_assert_eq(eng__logw_size(w), 32);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(add_gen(w, lognum, i, sizes[i]), 0);
        if (ends) ends[i] = eng__logw_size(w);
    }
    cr_assert_eq(eng__logw_sync(w), 0);
    eng__logw_close(w);
}

typedef struct readout {
    int open_rc;
    int n;      /* records returned */
    int end_rc; /* what ended the reading */
    int64_t torn;
    uint64_t valid_end;
    uint64_t lognum;
} readout;

/* Read all of path; record i must equal gen(seed, i, sizes[i]). */
static readout read_log(const char *path, uint64_t seed, const size_t *sizes,
                        int nsizes) {
    readout o = {0};
    eng_logr *r;
    o.open_rc = eng__logr_open(NULL, path, &r);
    if (o.open_rc) {
        cr_assert_null(r);
        return o;
    }
    o.lognum = eng__logr_lognum(r);
    kv_slice rec;
    int rc;
    while ((rc = eng__logr_next(r, &rec)) == 0) {
        cr_assert_lt(o.n, nsizes, "more records than were written");
        cr_assert_eq(rec.len, sizes[o.n], "record %d: %zu bytes, want %zu", o.n,
                     rec.len, sizes[o.n]);
        for (size_t j = 0; j < rec.len; j++)
            cr_assert_eq(rec.ptr[j], gen_byte(seed, o.n, j),
                         "record %d byte %zu differs", o.n, j);
        o.n++;
    }
    o.end_rc = rc;
    /* The end is sticky. */
    cr_assert_eq(eng__logr_next(r, &rec), rc);
    cr_assert_eq(rec.len, 0);
    o.torn = eng__logr_torn_at(r);
    o.valid_end = eng__logr_valid_end(r);
    eng__logr_close(r);
    return o;
}

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n ? (size_t)n : 1);
    cr_assert_not_null(p);
    cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Replace path's contents. Not fopen("wb"): ext4 flushes a file truncated
 * to zero on close, which makes thousands of rewrites slow. */
static void spit(const char *path, const void *p, size_t len) {
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, p, len, 0), (ssize_t)len);
    cr_assert_eq(ftruncate(fd, (off_t)len), 0);
    cr_assert_eq(close(fd), 0);
}

/* Write n bytes at off of path, in place. */
static void put(const char *path, size_t off, const void *p, size_t n) {
    int fd = open(path, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, p, n, (off_t)off), (ssize_t)n);
    cr_assert_eq(close(fd), 0);
}

/* Flip one bit of path in place. */
static void flip_bit(const char *path, size_t off, int bit) {
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, (off_t)off), 1);
    b ^= (uint8_t)(1u << bit);
    cr_assert_eq(pwrite(fd, &b, 1, (off_t)off), 1);
    cr_assert_eq(close(fd), 0);
}

static uint64_t file_size(const char *path) {
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

/* A record header as the format doc defines it, for crafting records. */
static void craft_header(uint8_t h[32], uint32_t len, uint32_t type,
                         uint64_t lognum, uint64_t payload_sum) {
    kv_put_u32(h + 8, len);
    kv_put_u32(h + 12, type);
    kv_put_u64(h + 16, lognum);
    kv_put_u64(h + 24, payload_sum);
    kv_put_u64(h, kv_checksum(h + 8, 24));
}

/* The small log used by the exhaustive cut and flip tests. */
static const size_t small_sizes[] = {5, 0, 17, 40, 3, 64, 1, 33};
#define NSMALL ((int)KV_ARRAY_LEN(small_sizes))

static uint64_t rec_start(const uint64_t *ends, int i) {
    return i == 0 ? 32 : ends[i - 1];
}

/* ---- happy paths ----------------------------------------------------------
 */

Test(log, round_trip_of_all_sizes) {
    char path[PATH_MAX];
    mkpath(path, "000042.log");
    /* Edge sizes, a 5 MiB record larger than the reader's 1 MiB chunk, and
     * 64 KiB records whose boundaries fall at many chunk offsets. */
    enum { N = 260 };
    size_t sizes[N];
    const size_t edge[] = {0, 1, 100, 64 * 1024, 5u << 20, 0, 1, 100};
    int n = 0;
    for (size_t i = 0; i < KV_ARRAY_LEN(edge); i++) sizes[n++] = edge[i];
    for (int i = 0; i < 40; i++) sizes[n++] = 64 * 1024 + (size_t)i;
    for (; n < N; n++) sizes[n] = (size_t)(n * 13 % 300);

    uint64_t ends[N];
    write_log(path, 42, sizes, N, ends);
    cr_assert_eq(file_size(path), ends[N - 1]);

    readout o = read_log(path, 42, sizes, N);
    cr_assert_eq(o.open_rc, 0);
    cr_assert_eq(o.lognum, 42);
    cr_assert_eq(o.n, N);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
    cr_assert_eq(o.torn, -1, "a clean end is not torn");
    cr_assert_eq(o.valid_end, ends[N - 1]);
    cr_assert_eq(nwarns + nerrors, 0, "a clean log logs nothing");
}

Test(log, header_only_log_is_empty) {
    char path[PATH_MAX];
    mkpath(path, "empty.log");
    write_log(path, 0, NULL, 0, NULL);
    cr_assert_eq(file_size(path), 32);
    readout o = read_log(path, 0, NULL, 0);
    cr_assert_eq(o.open_rc, 0);
    cr_assert_eq(o.n, 0);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
    cr_assert_eq(o.torn, -1);
    cr_assert_eq(o.valid_end, 32);
}

/* A reader sees the file as it was at open; records appended later are seen
 * by the next reader, after the writer's earlier records. */
Test(log, reopen_reader_after_more_appends) {
    char path[PATH_MAX];
    mkpath(path, "7.log");
    size_t sizes[15];
    for (int i = 0; i < 15; i++) sizes[i] = (size_t)(i * 37 % 200);

    eng_logw *w;
    cr_assert_eq(eng__logw_create(NULL, path, 7, &w), 0);
    for (int i = 0; i < 10; i++) cr_assert_eq(add_gen(w, 7, i, sizes[i]), 0);
    cr_assert_eq(eng__logw_sync(w), 0);

    eng_logr *early;
    cr_assert_eq(eng__logr_open(NULL, path, &early), 0);
    readout o = read_log(path, 7, sizes, 15);
    cr_assert_eq(o.n, 10);
    cr_assert_eq(o.torn, -1);

    for (int i = 10; i < 15; i++) cr_assert_eq(add_gen(w, 7, i, sizes[i]), 0);
    o = read_log(path, 7, sizes, 15);
    cr_assert_eq(o.n, 15);
    cr_assert_eq(o.valid_end, eng__logw_size(w));

    /* The reader opened before the appends stops at its own end, cleanly. */
    kv_slice rec;
    int n = 0;
    while (eng__logr_next(early, &rec) == 0) n++;
    cr_assert_eq(n, 10);
    cr_assert_eq(eng__logr_torn_at(early), -1);
    eng__logr_close(early);

    eng__logw_close(w);
    o = read_log(path, 7, sizes, 15);
    cr_assert_eq(o.n, 15);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
}

Test(log, sync_reports_failure_and_writer_stays_usable) {
    char path[PATH_MAX];
    mkpath(path, "s.log");
    eng_fault *f;
    cr_assert_eq(eng_fault_new(&f), 0);
    eng_logw *w;
    cr_assert_eq(eng__logw_create(f, path, 3, &w), 0);
    const size_t sizes[] = {10, 20, 30};
    cr_assert_eq(add_gen(w, 3, 0, 10), 0);
    cr_assert_eq(eng__logw_sync(w), 0);

    eng_fault_arm(f, ENG_FAULT_SYNC, 0, EIO, false);
    cr_assert_eq(add_gen(w, 3, 1, 20), 0, "only syncs are failing");
    cr_assert_eq(eng__logw_sync(w), -EIO);
    cr_assert_eq(eng_fault_hits(f), 1);
    cr_assert_eq(add_gen(w, 3, 2, 30), 0);
    cr_assert_eq(eng__logw_sync(w), 0);
    eng__logw_close(w);
    eng_fault_free(f);

    readout o = read_log(path, 3, sizes, 3);
    cr_assert_eq(o.n, 3);
    cr_assert_eq(o.torn, -1);
}

/* ---- torn tails -----------------------------------------------------------
 */

/* Cut the file at every offset (the last two records included): the reader
 * returns exactly the records that end at or before the cut. */
Test(log, torn_tail_at_every_cut) {
    char path[PATH_MAX], cut_path[PATH_MAX];
    mkpath(path, "full.log");
    mkpath(cut_path, "cut.log");
    uint64_t ends[NSMALL];
    write_log(path, 9, small_sizes, NSMALL, ends);
    size_t len;
    uint8_t *bytes = slurp(path, &len);
    cr_assert_eq(len, ends[NSMALL - 1]);

    for (size_t cut = 0; cut <= len; cut++) {
        spit(cut_path, bytes, cut);
        readout o = read_log(cut_path, 9, small_sizes, NSMALL);
        if (cut < 32) {
            cr_assert_eq(o.open_rc, KV_ENOTFOUND,
                         "cut %zu inside the file header", cut);
            continue;
        }
        cr_assert_eq(o.open_rc, 0);
        int whole = 0;
        while (whole < NSMALL && ends[whole] <= cut) whole++;
        uint64_t good = whole ? ends[whole - 1] : 32;
        cr_assert_eq(o.n, whole, "cut %zu: %d records, want %d", cut, o.n,
                     whole);
        cr_assert_eq(o.end_rc, KV_ENOTFOUND, "cut %zu: rc %d", cut, o.end_rc);
        cr_assert_eq(o.valid_end, good);
        cr_assert_eq(o.torn, cut == good ? -1 : (int64_t)good,
                     "cut %zu: torn at %lld", cut, (long long)o.torn);
    }
    cr_assert_eq(nerrors, 0, "a torn tail is not reported as corruption");
    free(bytes);
}

/* Flip every bit of the file once: damage in the last record is a torn tail
 * (valid records end before it), damage in any earlier record is corruption
 * (valid records follow), damage in the file header fails the open. */
Test(log, bit_flip_at_every_bit) {
    char path[PATH_MAX];
    mkpath(path, "flip.log");
    uint64_t ends[NSMALL];
    write_log(path, 11, small_sizes, NSMALL, ends);
    size_t len = ends[NSMALL - 1];

    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            flip_bit(path, i, bit);
            readout o = read_log(path, 11, small_sizes, NSMALL);
            flip_bit(path, i, bit);
            if (i < 32) {
                cr_assert(o.open_rc == KV_ECORRUPT || o.open_rc == KV_EVERSION,
                          "flip in file header byte %zu: rc %d", i, o.open_rc);
                continue;
            }
            cr_assert_eq(o.open_rc, 0);
            int k = 0;
            while (ends[k] <= i) k++;
            cr_assert_eq(o.n, k, "flip at %zu bit %d: %d records, want %d", i,
                         bit, o.n, k);
            cr_assert_eq(o.valid_end, rec_start(ends, k));
            if (k == NSMALL - 1) {
                cr_assert_eq(o.end_rc, KV_ENOTFOUND);
                cr_assert_eq(o.torn, (int64_t)rec_start(ends, k));
            } else {
                cr_assert_eq(o.end_rc, KV_ECORRUPT,
                             "flip at %zu bit %d in record %d: rc %d", i, bit,
                             k, o.end_rc);
                cr_assert_eq(o.torn, -1);
            }
        }
    }
}

/* A preallocated or zero-extended file: the zeros are a tail, not damage. */
Test(log, zero_filled_tail_returns_every_record) {
    char path[PATH_MAX];
    mkpath(path, "zero.log");
    uint64_t ends[NSMALL];
    const size_t tails[] = {7, 32, 100000};
    for (size_t t = 0; t < KV_ARRAY_LEN(tails); t++) {
        write_log(path, 4, small_sizes, NSMALL, ends);
        int fd = open(path, O_WRONLY);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, (off_t)(ends[NSMALL - 1] + tails[t])), 0);
        close(fd);

        readout o = read_log(path, 4, small_sizes, NSMALL);
        cr_assert_eq(o.n, NSMALL, "tail of %zu zero bytes", tails[t]);
        cr_assert_eq(o.end_rc, KV_ENOTFOUND);
        cr_assert_eq(o.torn, (int64_t)ends[NSMALL - 1]);
        cr_assert_eq(o.valid_end, ends[NSMALL - 1]);
    }
    cr_assert_eq(nerrors, 0);
}

/* Zeros where a record should be, with records after them, are damage. */
Test(log, zeroed_record_in_the_middle_is_corruption) {
    char path[PATH_MAX];
    mkpath(path, "hole.log");
    uint64_t ends[NSMALL];
    write_log(path, 4, small_sizes, NSMALL, ends);
    size_t len;
    uint8_t *bytes = slurp(path, &len);
    memset(bytes + ends[2], 0, ends[3] - ends[2]); /* record 3 */
    spit(path, bytes, len);
    free(bytes);

    readout o = read_log(path, 4, small_sizes, NSMALL);
    cr_assert_eq(o.n, 3);
    cr_assert_eq(o.end_rc, KV_ECORRUPT);
    cr_assert_eq(o.valid_end, ends[2]);
    cr_assert_not_null(strstr(last_error, "zeroed header"), "%s", last_error);
}

/* A recycled file: log 7 written over the start of log 5's file. The log 5
 * records after log 7's end are stale, not corruption. Both with log 7
 * ending on a log 5 record boundary and inside a log 5 record. */
Test(log, recycled_file_stops_at_older_log_number) {
    char old_path[PATH_MAX], new_path[PATH_MAX];
    mkpath(old_path, "000005.log");
    mkpath(new_path, "000007.log");
    size_t old_sizes[100], new_sizes[2][10];
    for (int i = 0; i < 100; i++) old_sizes[i] = 50;
    for (int i = 0; i < 10; i++) {
        new_sizes[0][i] = 50;                        /* aligned */
        new_sizes[1][i] = (size_t)(i * 11 % 70 + 1); /* misaligned */
    }
    for (int v = 0; v < 2; v++) {
        uint64_t ends[10];
        write_log(old_path, 5, old_sizes, 100, NULL);
        write_log(new_path, 7, new_sizes[v], 10, ends);
        size_t len;
        uint8_t *fresh = slurp(new_path, &len);
        int fd = open(old_path, O_WRONLY);
        cr_assert_geq(fd, 0);
        cr_assert_eq(pwrite(fd, fresh, len, 0), (ssize_t)len);
        close(fd);
        free(fresh);
        cr_assert_gt(file_size(old_path), len);

        readout o = read_log(old_path, 7, new_sizes[v], 10);
        cr_assert_eq(o.lognum, 7);
        cr_assert_eq(o.n, 10, "variant %d: %d records", v, o.n);
        cr_assert_eq(o.end_rc, KV_ENOTFOUND, "variant %d: rc %d", v, o.end_rc);
        cr_assert_eq(o.torn, (int64_t)ends[9]);
        cr_assert_eq(o.valid_end, ends[9]);
    }
    cr_assert_eq(nerrors, 0, "stale records are not reported as corruption");
}

/* eng__logw_recycle: the old file becomes the new log under its new name,
 * reads back exactly the new records, and its older tail is an expected
 * end (no warning), not a torn tail. */
Test(log, recycle_reuses_the_file_and_ends_quietly) {
    char old_path[PATH_MAX], new_path[PATH_MAX];
    mkpath(old_path, "000005.log");
    mkpath(new_path, "000007.log");
    size_t old_sizes[100], new_sizes[10];
    for (int i = 0; i < 100; i++) old_sizes[i] = 60;
    for (int i = 0; i < 10; i++) new_sizes[i] = (size_t)(i * 11 % 70 + 1);
    write_log(old_path, 5, old_sizes, 100, NULL);
    uint64_t old_len = file_size(old_path);
    struct stat st_old, st_new;
    cr_assert_eq(stat(old_path, &st_old), 0);

    eng_logw *w;
    OK(eng__logw_recycle(NULL, old_path, new_path, 7, &w));
    cr_assert_eq(eng__logw_size(w), 32, "appends restart after the header");
    for (int i = 0; i < 10; i++) OK(add_gen(w, 7, i, new_sizes[i]));
    OK(eng__logw_sync(w));
    uint64_t end = eng__logw_size(w);
    eng__logw_close(w);

    cr_assert_eq(access(old_path, F_OK), -1, "renamed away");
    cr_assert_eq(stat(new_path, &st_new), 0);
    cr_assert_eq(st_new.st_ino, st_old.st_ino, "the same file, reused");
    cr_assert_eq(file_size(new_path), old_len, "overwritten, not truncated");
    nwarns = nerrors = 0;
    readout o = read_log(new_path, 7, new_sizes, 10);
    cr_assert_eq(o.open_rc, 0);
    cr_assert_eq(o.lognum, 7);
    cr_assert_eq(o.n, 10);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
    cr_assert_eq(o.valid_end, end);
    cr_assert_eq(nwarns + nerrors, 0, "last: %s %s", last_warn, last_error);

    /* Damage inside the new records is still corruption. */
    int fd = open(new_path, O_WRONLY);
    cr_assert_geq(fd, 0);
    uint8_t junk = 0xA5;
    cr_assert_eq(pwrite(fd, &junk, 1, 40), 1); /* record 0's header */
    close(fd);
    o = read_log(new_path, 7, new_sizes, 10);
    cr_assert_eq(o.end_rc, KV_ECORRUPT);
}

/* A recycle that fails before the rename leaves the old file under its old
 * (obsolete) name and no new log. */
Test(log, failed_recycle_renames_nothing) {
    char old_path[PATH_MAX], new_path[PATH_MAX];
    mkpath(old_path, "000005.log");
    mkpath(new_path, "000007.log");
    size_t sizes[3] = {10, 20, 30};
    int masks[3] = {ENG_FAULT_WRITE, ENG_FAULT_SYNC, ENG_FAULT_RENAME};
    eng_fault *f;
    OK(eng_fault_new(&f));
    for (int k = 0; k < 3; k++) {
        write_log(old_path, 5, sizes, 3, NULL);
        eng_fault_arm(f, masks[k], 0, EIO, false);
        eng_logw *w = (eng_logw *)1;
        cr_assert_eq(eng__logw_recycle(f, old_path, new_path, 7, &w), -EIO);
        cr_assert_null(w);
        cr_assert_eq(access(new_path, F_OK), -1, "fault %d", k);
        cr_assert_eq(access(old_path, F_OK), 0, "fault %d", k);
        eng_fault_disarm(f);
    }
    eng_fault_free(f);
}

/* A torn record whose payload carries bytes that form a valid record of the
 * same log: the payload is user data, so the tail is still torn. */
Test(log, record_inside_a_torn_payload_is_not_a_record) {
    char path[PATH_MAX], inner_path[PATH_MAX];
    mkpath(path, "outer.log");
    mkpath(inner_path, "inner.log");
    const size_t inner_sizes[] = {20};
    write_log(inner_path, 8, inner_sizes, 1, NULL);
    size_t inner_len;
    uint8_t *inner = slurp(inner_path, &inner_len);

    /* payload = 10 bytes, the inner record (header + 20 bytes), 200 bytes */
    size_t plen = 10 + (inner_len - 32) + 200;
    uint8_t *payload = calloc(1, plen);
    cr_assert_not_null(payload);
    memcpy(payload + 10, inner + 32, inner_len - 32);
    eng_logw *w;
    cr_assert_eq(eng__logw_create(NULL, path, 8, &w), 0);
    cr_assert_eq(add_gen(w, 8, 0, 30), 0);
    uint64_t outer_start = eng__logw_size(w);
    cr_assert_eq(eng__logw_add(w, kv_slice_make(payload, plen)), 0);
    eng__logw_close(w);
    /* Cut after the inner record, inside the outer payload. */
    cr_assert_eq(truncate(path, (off_t)(outer_start + 32 + 10 + inner_len)), 0);

    const size_t sizes[] = {30};
    readout o = read_log(path, 8, sizes, 1);
    cr_assert_eq(o.n, 1);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
    cr_assert_eq(o.torn, (int64_t)outer_start);

    /* The same with the outer record whole but its payload damaged after
     * the inner record (torn by lost pages rather than a short file). */
    cr_assert_eq(eng__logw_create(NULL, path, 8, &w), 0);
    cr_assert_eq(add_gen(w, 8, 0, 30), 0);
    payload[plen - 1] ^= 0x40;
    cr_assert_eq(eng__logw_add(w, kv_slice_make(payload, plen)), 0);
    eng__logw_close(w);
    size_t len;
    uint8_t *bytes = slurp(path, &len);
    bytes[len - 1] ^= 0x40;
    spit(path, bytes, len);
    free(bytes);
    o = read_log(path, 8, sizes, 1);
    cr_assert_eq(o.n, 1);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
    cr_assert_eq(o.torn, (int64_t)outer_start);
    cr_assert_eq(nerrors, 0);
    free(payload);
    free(inner);
}

/* Garbage after a good record, then a good record whose header starts at
 * each offset around the reader's 1 MiB chunk boundary: the scan that tells
 * corruption from a torn tail finds it wherever it lies. */
Test(log, scan_finds_record_across_chunk_boundaries) {
    char path[PATH_MAX];
    mkpath(path, "scan.log");
    const size_t sizes[] = {40, 60};
    uint64_t ends[2];
    write_log(path, 21, sizes, 2, ends);
    size_t len;
    uint8_t *orig = slurp(path, &len);
    const size_t chunk = 1u << 20, first = chunk - 40, last = chunk + 8;
    size_t rec_b = ends[1] - ends[0];

    /* header, record 0, then garbage with some partial log numbers */
    uint8_t *out = malloc(last + rec_b);
    cr_assert_not_null(out);
    memcpy(out, orig, ends[0]);
    for (size_t i = ends[0]; i < last + rec_b; i++)
        out[i] = i % 997 == 0 ? 21 : 0xee;
    spit(path, out, first);

    for (size_t b = first; b <= last; b++) {
        /* record 1 at b */
        put(path, b, orig + ends[0], rec_b);
        cr_assert_eq(truncate(path, (off_t)(b + rec_b)), 0);
        readout o = read_log(path, 21, sizes, 2);
        cr_assert_eq(o.n, 1);
        cr_assert_eq(o.end_rc, KV_ECORRUPT, "record 1 at %zu: rc %d", b,
                     o.end_rc);
        char want[64];
        snprintf(want, sizeof want, "valid records follow at offset %zu", b);
        cr_assert_not_null(strstr(last_error, want), "%s", last_error);

        /* Without its last byte, record 1 is no record: a torn tail. */
        cr_assert_eq(truncate(path, (off_t)(b + rec_b - 1)), 0);
        o = read_log(path, 21, sizes, 2);
        cr_assert_eq(o.n, 1);
        cr_assert_eq(o.end_rc, KV_ENOTFOUND);
        cr_assert_eq(o.torn, (int64_t)ends[0]);
        put(path, b, out + b, rec_b); /* garbage again */
    }
    free(out);
    free(orig);
}

/* ---- crafted and rejected input --------------------------------------------
 */

/* A header with a correct checksum but a 4 GiB length is rejected before any
 * allocation (allocations are made to fail, and ASan would abort on one). */
Test(log, oversize_length_is_rejected_without_allocating) {
    char path[PATH_MAX];
    mkpath(path, "big.log");
    const size_t sizes[] = {10, 20, 30};
    uint64_t ends[3];
    for (int where = 0; where < 2; where++) {
        write_log(path, 6, sizes, 3, ends);
        size_t len;
        uint8_t *bytes = slurp(path, &len);
        uint8_t bad[32 + 64];
        memset(bad, 0xab, sizeof bad);
        craft_header(bad, 0xFFFFFFF0u, 1, 6, 0);
        /* where 0: after the last record; 1: between records 1 and 2 */
        size_t at = where == 0 ? len : ends[1];
        uint8_t *out = malloc(len + sizeof bad);
        cr_assert_not_null(out);
        memcpy(out, bytes, at);
        memcpy(out + at, bad, sizeof bad);
        memcpy(out + at + sizeof bad, bytes + at, len - at);
        spit(path, out, len + sizeof bad);
        free(out);
        free(bytes);

        eng_logr *r;
        cr_assert_eq(eng__logr_open(NULL, path, &r), 0);
        kv_slice rec;
        int want = where == 0 ? 3 : 2;
        for (int i = 0; i < want; i++) cr_assert_eq(eng__logr_next(r, &rec), 0);
        kv_alloc_fail_after(0);
        int rc = eng__logr_next(r, &rec);
        kv_alloc_fail_after(-1);
        cr_assert_eq(rc, where == 0 ? KV_ENOTFOUND : KV_ECORRUPT, "rc %d", rc);
        cr_assert_eq(eng__logr_valid_end(r), at);
        cr_assert_eq(eng__logr_torn_at(r), where == 0 ? (int64_t)at : -1);
        eng__logr_close(r);
    }
    cr_assert_not_null(strstr(last_error, "length above limit"), "%s",
                       last_error);
}

Test(log, writer_rejects_record_above_limit) {
    char path[PATH_MAX];
    mkpath(path, "limit.log");
    eng_logw *w;
    cr_assert_eq(eng__logw_create(NULL, path, 1, &w), 0);
    /* The length is checked before the bytes are touched. */
    uint8_t tiny[1] = {0};
    cr_assert_eq(eng__logw_add(w, kv_slice_make(tiny, ENG_LOG_MAX_RECORD + 1u)),
                 KV_ETOOLARGE);
    cr_assert_eq(eng__logw_size(w), 32);
    eng__logw_close(w);
    cr_assert_eq(file_size(path), 32);
}

Test(log, unknown_record_type_is_invalid) {
    char path[PATH_MAX];
    mkpath(path, "type.log");
    const size_t sizes[] = {10, 20};
    write_log(path, 2, sizes, 2, NULL);
    /* Append a record of type 2 with correct checksums. */
    uint8_t rec[32 + 4] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                           0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                           0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    craft_header(rec, 4, 2, 2, kv_checksum(rec + 32, 4));
    FILE *f = fopen(path, "ab");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(rec, 1, sizeof rec, f), sizeof rec);
    fclose(f);
    readout o = read_log(path, 2, sizes, 2);
    cr_assert_eq(o.n, 2);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
    cr_assert_not_null(strstr(last_warn, "unknown record type"), "%s",
                       last_warn);
}

static void write_file_header(const char *path, const char *magic,
                              uint32_t version, uint32_t flags, bool good_sum) {
    uint8_t h[32];
    memcpy(h, magic, 8);
    kv_put_u32(h + 8, version);
    kv_put_u32(h + 12, flags);
    kv_put_u64(h + 16, 1);
    kv_put_u64(h + 24, kv_checksum(h, 24) + (good_sum ? 0 : 1));
    spit(path, h, sizeof h);
}

Test(log, file_header_checks) {
    char path[PATH_MAX];
    mkpath(path, "hdr.log");
    eng_logr *r = (eng_logr *)1;

    cr_assert_eq(eng__logr_open(NULL, path, &r), -ENOENT);
    cr_assert_null(r);

    write_file_header(path, "QFSLOG\r\n", 1, 0, true);
    readout o = read_log(path, 1, NULL, 0);
    cr_assert_eq(o.open_rc, 0, "the reference header is valid");
    cr_assert_eq(o.lognum, 1);

    write_file_header(path, "QFSLOG\r\n", 2, 0, true);
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, KV_EVERSION);
    write_file_header(path, "QFSLOG\r\n", 1, 1, true); /* recycled */
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, 0);
    write_file_header(path, "QFSLOG\r\n", 1, 2, true); /* unknown flag */
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, KV_EVERSION);
    write_file_header(path, "QFSLOG\r\n", 1, 0, false);
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, KV_ECORRUPT);
    write_file_header(path, "QFSLOG\n\n", 1, 0, true);
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, KV_ECORRUPT);

    /* Created but never (fully) written: no log, not corruption. */
    spit(path, "", 0);
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, KV_ENOTFOUND);
    uint8_t zeros[4096] = {0};
    spit(path, zeros, sizeof zeros);
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, KV_ENOTFOUND);

    /* A zeroed header in front of records is damage. */
    const size_t sizes[] = {10};
    write_log(path, 1, sizes, 1, NULL);
    size_t len;
    uint8_t *bytes = slurp(path, &len);
    memset(bytes, 0, 32);
    spit(path, bytes, len);
    free(bytes);
    cr_assert_eq(read_log(path, 1, NULL, 0).open_rc, KV_ECORRUPT);
}

/* What an operator reads: file, offset, the failed check, where good data
 * resumes. */
Test(log, reports_name_file_offset_and_check) {
    char path[PATH_MAX];
    mkpath(path, "msg.log");
    const size_t sizes[] = {10, 20, 30};
    uint64_t ends[3];
    write_log(path, 3, sizes, 3, ends);
    size_t len;
    uint8_t *bytes = slurp(path, &len);
    bytes[ends[0] + 32 + 5] ^= 1; /* payload of record 1 */
    spit(path, bytes, len);

    readout o = read_log(path, 3, sizes, 3);
    cr_assert_eq(o.end_rc, KV_ECORRUPT);
    char want[PATH_MAX + 256];
    snprintf(want, sizeof want,
             "log '%s': corrupt record at offset %llu (payload checksum "
             "mismatch), valid records follow at offset %llu",
             path, (unsigned long long)ends[0], (unsigned long long)ends[1]);
    cr_assert_not_null(strstr(last_error, want), "got: %s", last_error);

    bytes[ends[0] + 32 + 5] ^= 1;
    spit(path, bytes, len - 3);
    o = read_log(path, 3, sizes, 3);
    cr_assert_eq(o.end_rc, KV_ENOTFOUND);
    snprintf(want, sizeof want,
             "log '%s': torn tail at offset %llu (payload past end of file), "
             "dropping %llu bytes",
             path, (unsigned long long)ends[1],
             (unsigned long long)(len - 3 - ends[1]));
    cr_assert_not_null(strstr(last_warn, want), "got: %s", last_warn);
    free(bytes);
}

/* ---- I/O and allocation failures ------------------------------------------
 */

Test(log, failed_append_is_cut_back_and_later_appends_work) {
    char path[PATH_MAX];
    mkpath(path, "wf.log");
    eng_fault *f;
    cr_assert_eq(eng_fault_new(&f), 0);
    eng_logw *w;
    cr_assert_eq(eng__logw_create(f, path, 12, &w), 0);
    size_t sizes[8];
    for (int i = 0; i < 8; i++) sizes[i] = (size_t)(100 + i);
    for (int i = 0; i < 5; i++) cr_assert_eq(add_gen(w, 12, i, sizes[i]), 0);
    uint64_t before = eng__logw_size(w);

    eng_fault_arm(f, ENG_FAULT_WRITE, 0, EIO, false);
    cr_assert_eq(add_gen(w, 12, 99, 500), -EIO);
    cr_assert_eq(eng_fault_hits(f), 1);
    cr_assert_eq(eng__logw_size(w), before);
    cr_assert_eq(file_size(path), before);
    readout o = read_log(path, 12, sizes, 8);
    cr_assert_eq(o.n, 5);
    cr_assert_eq(o.torn, -1, "the file holds whole records only");

    for (int i = 5; i < 8; i++) cr_assert_eq(add_gen(w, 12, i, sizes[i]), 0);
    eng__logw_close(w);
    eng_fault_free(f);
    o = read_log(path, 12, sizes, 8);
    cr_assert_eq(o.n, 8);
    cr_assert_eq(o.torn, -1);
}

/* A real short write (file size limit): part of the record reaches the file
 * before the error, and is cut off again. */
Test(log, partial_write_is_cut_back) {
    char path[PATH_MAX];
    mkpath(path, "partial.log");
    signal(SIGXFSZ, SIG_IGN);
    eng_logw *w;
    cr_assert_eq(eng__logw_create(NULL, path, 13, &w), 0);
    const size_t sizes[] = {100, 2000};
    cr_assert_eq(add_gen(w, 13, 0, 100), 0);
    uint64_t before = eng__logw_size(w);

    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)(before + 100);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    cr_assert_eq(add_gen(w, 13, 1, 2000), -EFBIG);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_assert_eq(file_size(path), before);
    cr_assert_eq(eng__logw_size(w), before);

    cr_assert_eq(add_gen(w, 13, 1, 2000), 0);
    eng__logw_close(w);
    readout o = read_log(path, 13, sizes, 2);
    cr_assert_eq(o.n, 2);
    cr_assert_eq(o.torn, -1);
}

static int fd_of(const char *path) {
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int fd = -1;
    struct dirent *e;
    while (fd < 0 && (e = readdir(d)) != NULL) {
        char link[PATH_MAX + 32], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0) continue;
        target[n] = '\0';
        if (strcmp(target, path) == 0) fd = atoi(e->d_name);
    }
    closedir(d);
    return fd;
}

/* When the cut-back itself fails, the writer refuses everything after, with
 * the error that started it, even once the file works again. */
Test(log, writer_breaks_when_cut_back_fails) {
    char path[PATH_MAX];
    mkpath(path, "broken.log");
    eng_logw *w;
    cr_assert_eq(eng__logw_create(NULL, path, 14, &w), 0);
    const size_t sizes[] = {50};
    cr_assert_eq(add_gen(w, 14, 0, 50), 0);

    /* Swap the writer's descriptor for /dev/full: writes fail with ENOSPC
     * and ftruncate fails (a character device). */
    int fd = fd_of(path);
    cr_assert_geq(fd, 0);
    int saved = dup(fd);
    int full = open("/dev/full", O_WRONLY);
    cr_assert_geq(full, 0);
    cr_assert_eq(dup2(full, fd), fd);
    close(full);
    cr_assert_eq(add_gen(w, 14, 1, 50), -ENOSPC);

    cr_assert_eq(dup2(saved, fd), fd);
    close(saved);
    cr_assert_eq(add_gen(w, 14, 1, 50), -ENOSPC);
    cr_assert_eq(eng__logw_sync(w), -ENOSPC);
    eng__logw_close(w);
    cr_assert_not_null(strstr(last_error, "writer unusable"), "%s", last_error);

    readout o = read_log(path, 14, sizes, 1);
    cr_assert_eq(o.n, 1);
    cr_assert_eq(o.torn, -1);
}

Test(log, create_failures_leave_no_file) {
    char path[PATH_MAX];
    mkpath(path, "cf.log");
    eng_fault *f;
    cr_assert_eq(eng_fault_new(&f), 0);
    eng_logw *w = (eng_logw *)1;
    eng_fault_arm(f, ENG_FAULT_OPEN, 0, EACCES, false);
    cr_assert_eq(eng__logw_create(f, path, 1, &w), -EACCES);
    cr_assert_null(w);
    eng_fault_arm(f, ENG_FAULT_WRITE, 0, ENOSPC, false);
    cr_assert_eq(eng__logw_create(f, path, 1, &w), -ENOSPC);
    cr_assert_null(w);
    cr_assert_eq(access(path, F_OK), -1, "no headerless file is left");
    eng_fault_free(f);
}

/* Reads fail at the open and in the middle; after a failed next the reader
 * continues where it was once reads work again. */
Test(log, read_failures_are_returned_and_retryable) {
    char path[PATH_MAX];
    mkpath(path, "rf.log");
    size_t sizes[40];
    for (int i = 0; i < 40; i++) sizes[i] = 100 * 1024; /* 4 MB: 4 chunks */
    write_log(path, 15, sizes, 40, NULL);
    eng_fault *f;
    cr_assert_eq(eng_fault_new(&f), 0);
    eng_logr *r = (eng_logr *)1;
    eng_fault_arm(f, ENG_FAULT_READ, 0, EIO, false);
    cr_assert_eq(eng__logr_open(f, path, &r), -EIO);
    cr_assert_null(r);

    eng_fault_arm(f, ENG_FAULT_READ, 1, EIO, true); /* the first chunk only */
    cr_assert_eq(eng__logr_open(f, path, &r), 0);
    kv_slice rec;
    int n = 0, rc;
    while ((rc = eng__logr_next(r, &rec)) == 0) n++;
    cr_assert_eq(rc, -EIO);
    cr_assert_gt(n, 0);
    cr_assert_lt(n, 40);
    eng_fault_disarm(f);
    while ((rc = eng__logr_next(r, &rec)) == 0) {
        cr_assert_eq(rec.len, sizes[n]);
        cr_assert_eq(rec.ptr[rec.len - 1], gen_byte(15, n, rec.len - 1));
        n++;
    }
    cr_assert_eq(rc, KV_ENOTFOUND);
    cr_assert_eq(n, 40);
    cr_assert_eq(eng__logr_torn_at(r), -1);
    eng__logr_close(r);
    eng_fault_free(f);
}

/* Fail the k-th allocation for every k of a writer's life: each step returns
 * -ENOMEM or works, and the file always holds exactly the added records. */
Test(log, writer_allocation_failures) {
    char path[PATH_MAX];
    mkpath(path, "am.log");
    const size_t sizes[] = {10, 2u << 20, 0, 300};
    long k;
    for (k = 0;; k++) {
        unlink(path);
        kv_alloc_fail_after(k);
        eng_logw *w;
        int rc = eng__logw_create(NULL, path, 16, &w);
        int added = 0;
        if (rc == 0) {
            for (; added < 4; added++) {
                rc = add_gen(w, 16, added, sizes[added]);
                if (rc) break;
            }
            eng__logw_close(w);
        }
        kv_alloc_fail_after(-1);
        cr_assert(rc == 0 || rc == -ENOMEM, "k %ld: rc %d", k, rc);
        readout o = {.open_rc = -ENOENT};
        if (access(path, F_OK) == 0) o = read_log(path, 16, sizes, 4);
        if (o.open_rc == 0) {
            cr_assert_eq(o.n, added, "k %ld", k);
            cr_assert_eq(o.torn, -1);
        } else {
            /* No file, or an empty one (the file layer's own allocation
             * failed after open): no record was added. */
            cr_assert(o.open_rc == -ENOENT || o.open_rc == KV_ENOTFOUND);
            cr_assert_neq(rc, 0);
            cr_assert_eq(added, 0);
        }
        if (rc == 0) break;
    }
    cr_assert_gt(k, 2, "the writer allocates and was made to fail");
}

Test(log, reader_allocation_failures) {
    char path[PATH_MAX];
    mkpath(path, "ar.log");
    const size_t sizes[] = {10, 3u << 20, 0, 300, 2u << 20};
    write_log(path, 17, sizes, 5, NULL);
    long k;
    for (k = 0;; k++) {
        kv_alloc_fail_after(k);
        eng_logr *r;
        int rc = eng__logr_open(NULL, path, &r);
        if (rc) {
            kv_alloc_fail_after(-1);
            cr_assert_eq(rc, -ENOMEM, "k %ld: rc %d", k, rc);
            cr_assert_null(r);
            continue;
        }
        kv_slice rec;
        int n = 0, failed = 0;
        for (;;) {
            rc = eng__logr_next(r, &rec);
            if (rc == -ENOMEM) {
                /* Nothing was consumed: retry without injection. */
                kv_alloc_fail_after(-1);
                failed = 1;
                continue;
            }
            if (rc) break;
            cr_assert_eq(rec.len, sizes[n]);
            if (rec.len)
                cr_assert_eq(rec.ptr[rec.len / 2],
                             gen_byte(17, n, rec.len / 2));
            n++;
        }
        kv_alloc_fail_after(-1);
        cr_assert_eq(rc, KV_ENOTFOUND);
        cr_assert_eq(n, 5, "k %ld", k);
        cr_assert_eq(eng__logr_torn_at(r), -1);
        eng__logr_close(r);
        if (!failed) break;
    }
    cr_assert_gt(k, 2);
}
