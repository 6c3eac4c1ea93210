/*
 * The system calls on a real mount of an embedded store, called directly
 * with their results and errno checked: what programs rely on below the
 * shell tools (tests/fs/test_shell.c). Each test mounts a fresh store and
 * unmounts it at the end, pass or fail.
 *
 * File contents are checked through the descriptor that wrote them, then
 * again after a reopen (the kernel drops a file's page cache at open, so
 * the reads reach the filesystem) and, where the layout on the store
 * matters, after a remount. Bytes are a pattern derived from (seed,
 * offset), so any range can be checked without a stored copy; seed 0
 * means zeros (a hole).
 */
#include "tests/fs/fsutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <grp.h>
#include <limits.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#define KIB 1024ull
#define MIB (1024ull * 1024ull)
#define INLINE_MAX (64 * KIB) /* FS_INLINE_MAX: larger files are chunked */
#define CHUNK MIB             /* FS_CHUNK_SIZE */
#define NOBODY 65534

static qmount g_m;

static void setup(void) {
    umask(022);
    qmount_dirs(&g_m, "qfs-sys");
    qmount_start(&g_m, NULL, NULL);
}

static void teardown(void) {
    qmount_cleanup(&g_m);
}

TestSuite(sys, .init = setup, .fini = teardown, .timeout = 300);

/* ---- helpers ---- */

/* A path in the mount, printf-style, relative to its root. Eight buffers
 * in rotation, so one call can take several paths. */
static const char *mp(const char *fmt, ...) {
    static char bufs[8][PATH_MAX];
    static unsigned next;
    char *b = bufs[next++ % 8];
    int n = snprintf(b, PATH_MAX, "%s/", g_m.dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, PATH_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    return b;
}

static int g_err; /* errno right after the call SYS() checks */

static long keep_errno(long r) {
    g_err = errno;
    return r;
}

static long sys_check(long r, const char *what, int line) {
    cr_assert(r != -1, "line %d: %s failed: %s", line, what, strerror(g_err));
    return r;
}

/* expr (a system call) must succeed; its result. */
#define SYS(expr) sys_check(keep_errno((long)(expr)), #expr, __LINE__)

/* expr must fail with errno want. */
#define SYS_ERR(expr, want)                                                    \
    do {                                                                       \
        errno = 0;                                                             \
        long r_ = (long)(expr);                                                \
        int e_ = errno;                                                        \
        cr_assert(r_ == -1 && e_ == (want),                                    \
                  "%s gave %ld, errno %d (%s); expected -1 with %s", #expr,    \
                  r_, e_, strerror(e_), #want);                                \
    } while (0)

static void remount(void) {
    cr_assert_eq(qmount_stop(&g_m), 0, "unmount of %s failed", g_m.dir);
    qmount_start(&g_m, NULL, NULL);
}

static uint8_t pat(uint64_t seed, uint64_t off) {
    return (uint8_t)(mix64(seed * 0x100000001b3ull + off / 8) >> (off % 8 * 8));
}

/* Write len bytes of pattern seed at off through fd. */
static void put_pattern(int fd, uint64_t off, uint64_t len, uint64_t seed) {
    static uint8_t buf[256 * 1024];
    for (uint64_t done = 0; done < len;) {
        size_t n = (size_t)KV_MIN(len - done, sizeof buf);
        for (size_t i = 0; i < n; i++) buf[i] = pat(seed, off + done + i);
        ssize_t w = pwrite(fd, buf, n, (off_t)(off + done));
        cr_assert_eq(w, (ssize_t)n, "pwrite of %zu at %llu gave %zd (%s)", n,
                     (unsigned long long)(off + done), w,
                     w < 0 ? strerror(errno) : "short");
        done += n;
    }
}

/* fd must read, at [off, off + len), pattern seed (zeros for seed 0). */
static void expect_range(int fd, uint64_t off, uint64_t len, uint64_t seed,
                         const char *what) {
    static uint8_t buf[256 * 1024];
    for (uint64_t done = 0; done < len;) {
        size_t want = (size_t)KV_MIN(len - done, sizeof buf);
        uint64_t at = off + done;
        ssize_t n = pread(fd, buf, want, (off_t)at);
        cr_assert(n > 0, "%s: pread of %zu at %llu gave %zd (%s)", what, want,
                  (unsigned long long)at, n,
                  n < 0 ? strerror(errno) : "end of file");
        for (ssize_t i = 0; i < n; i++) {
            uint8_t w = seed ? pat(seed, at + (uint64_t)i) : 0;
            if (buf[i] != w)
                cr_assert_fail("%s: byte %llu is 0x%02x, expected 0x%02x (%s)",
                               what, (unsigned long long)(at + (uint64_t)i),
                               buf[i], w, seed ? "data" : "a hole: zero");
        }
        done += (uint64_t)n;
    }
}

/* fd must read the literal bytes want at off. */
static void expect_bytes(int fd, uint64_t off, const char *want, size_t len,
                         const char *what) {
    char buf[4096];
    cr_assert_leq(len, sizeof buf);
    ssize_t n = pread(fd, buf, len, (off_t)off);
    cr_assert_eq(n, (ssize_t)len, "%s: pread of %zu at %llu gave %zd (%s)",
                 what, len, (unsigned long long)off, n,
                 n < 0 ? strerror(errno) : "short");
    cr_assert(memcmp(buf, want, len) == 0, "%s: read '%.*s', expected '%.*s'",
              what, (int)len, buf, (int)len, want);
}

/* A range of a file: pattern seed, or zeros (seed 0). */
typedef struct region {
    uint64_t off, len, seed;
} region;

/* fd must be size bytes long, made of the regions (which must cover it),
 * and read nothing at its end. */
static void expect_regions(int fd, const region *r, size_t n, uint64_t size,
                           const char *what) {
    struct stat st;
    SYS(fstat(fd, &st));
    cr_assert_eq((uint64_t)st.st_size, size, "%s: size %lld, expected %llu",
                 what, (long long)st.st_size, (unsigned long long)size);
    uint64_t covered = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(r[i].off, covered, "test bug: regions have a gap");
        expect_range(fd, r[i].off, r[i].len, r[i].seed, what);
        covered += r[i].len;
    }
    cr_assert_eq(covered, size, "test bug: regions do not cover the file");
    char c;
    cr_assert_eq(pread(fd, &c, 1, (off_t)size), 0,
                 "%s: a read at the end gave data", what);
}

/* Open path read-only and check it as expect_regions does. */
static void expect_file_regions(const char *path, const region *r, size_t n,
                                uint64_t size, const char *what) {
    int fd = (int)SYS(open(path, O_RDONLY));
    expect_regions(fd, r, n, size, what);
    SYS(close(fd));
}

static void write_file(const char *path, const char *s) {
    int fd = (int)SYS(open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644));
    size_t len = strlen(s);
    cr_assert_eq(SYS(write(fd, s, len)), (long)len, "short write to %s", path);
    SYS(close(fd));
}

/* path must hold exactly the string want. */
static void expect_file(const char *path, const char *want) {
    char buf[4096];
    int fd = (int)SYS(open(path, O_RDONLY));
    ssize_t n = read(fd, buf, sizeof buf);
    int e = errno;
    SYS(close(fd));
    cr_assert_geq(n, 0, "read of %s: %s", path, strerror(e));
    cr_assert(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0,
              "%s holds '%.*s', expected '%s'", path, (int)n, buf, want);
}

static struct stat stat_of(const char *path) {
    struct stat st;
    SYS(lstat(path, &st));
    return st;
}

/* How many times name appears in a listing of directory path. */
static int count_in_dir(const char *path, const char *name) {
    DIR *d = opendir(path);
    cr_assert_not_null(d, "opendir %s: %s", path, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += strcmp(e->d_name, name) == 0;
    closedir(d);
    return n;
}

static int64_t ts_ns(struct timespec t) {
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return ts_ns(t);
}

/* ---- names: lookup, create, mkdir, rmdir, unlink ---- */

Test(sys, lookup_and_stat_of_missing_names_give_enoent) {
    struct stat st = stat_of(g_m.dir);
    cr_assert(S_ISDIR(st.st_mode), "the root is not a directory");
    cr_assert_eq(st.st_mode & 07777, 0755);
    SYS_ERR(stat(mp("missing"), &st), ENOENT);
    SYS_ERR(lstat(mp("missing"), &st), ENOENT);
    SYS_ERR(access(mp("missing"), F_OK), ENOENT);
    SYS_ERR(open(mp("missing"), O_RDONLY), ENOENT);
    SYS_ERR(open(mp("nodir/x"), O_CREAT | O_WRONLY, 0644), ENOENT);
    SYS_ERR(mkdir(mp("nodir/x"), 0755), ENOENT);

    write_file(mp("f"), "abc");
    st = stat_of(mp("f"));
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0644);
    cr_assert_eq(st.st_size, 3);
    cr_assert_eq(st.st_uid, 0);
    cr_assert_eq(st.st_gid, 0);
    cr_assert_eq(st.st_nlink, 1);
    SYS_ERR(stat(mp("f/x"), &st), ENOTDIR);
    SYS_ERR(open(mp("f/x"), O_CREAT | O_WRONLY, 0644), ENOTDIR);
    SYS_ERR(stat(mp("F"), &st), ENOENT); /* names are case-sensitive */
    SYS_ERR(stat(mp("f.conflict-1"), &st), ENOENT);

    SYS(unlink(mp("f")));
    SYS_ERR(stat(mp("f"), &st), ENOENT);
    SYS_ERR(open(mp("f"), O_RDONLY), ENOENT);
    remount();
    SYS_ERR(stat(mp("f"), &st), ENOENT);
}

Test(sys, open_o_creat_o_excl_on_an_existing_name_gives_eexist) {
    int fd = (int)SYS(open(mp("a"), O_CREAT | O_EXCL | O_WRONLY, 0640));
    SYS(write(fd, "1234", 4));
    SYS(close(fd));
    SYS_ERR(open(mp("a"), O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
    SYS(mkdir(mp("d"), 0755));
    SYS_ERR(open(mp("d"), O_CREAT | O_EXCL | O_RDONLY, 0644), EEXIST);
    /* Without O_EXCL the existing file opens, untouched. */
    fd = (int)SYS(open(mp("a"), O_CREAT | O_RDWR, 0600));
    struct stat st;
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_size, 4);
    cr_assert_eq(st.st_mode & 07777, 0640);
    SYS(close(fd));
    expect_file(mp("a"), "1234");
    remount();
    SYS_ERR(open(mp("a"), O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
    expect_file(mp("a"), "1234");
}

Test(sys, mkdir_and_rmdir_and_their_errors) {
    SYS(mkdir(mp("d"), 0750));
    struct stat st = stat_of(mp("d"));
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0750);
    SYS_ERR(mkdir(mp("d"), 0755), EEXIST);
    write_file(mp("f"), "x");
    SYS_ERR(mkdir(mp("f"), 0755), EEXIST);
    SYS_ERR(mkdir(mp("f/sub"), 0755), ENOTDIR);
    SYS_ERR(open(mp("d"), O_WRONLY), EISDIR);
    SYS_ERR(open(mp("d"), O_RDWR | O_CREAT, 0644), EISDIR);

    SYS(mkdir(mp("d/sub"), 0755));
    write_file(mp("d/sub/file"), "y");
    SYS_ERR(rmdir(mp("d")), ENOTEMPTY);
    SYS_ERR(rmdir(mp("d/sub")), ENOTEMPTY);
    SYS_ERR(rmdir(mp("f")), ENOTDIR);
    SYS_ERR(rmdir(mp("d/sub/file")), ENOTDIR);
    SYS_ERR(rmdir(mp("missing")), ENOENT);
    SYS_ERR(rmdir(mp("missing/x")), ENOENT);
    expect_file(mp("d/sub/file"), "y"); /* the failures changed nothing */

    SYS(unlink(mp("d/sub/file")));
    SYS(rmdir(mp("d/sub")));
    SYS_ERR(stat(mp("d/sub"), &st), ENOENT);
    SYS(rmdir(mp("d")));
    SYS_ERR(stat(mp("d"), &st), ENOENT);
    SYS_ERR(rmdir(mp("d")), ENOENT);
    /* The name is free again, for a file as for a directory. */
    write_file(mp("d"), "now a file");
    expect_file(mp("d"), "now a file");
    remount();
    cr_assert(S_ISREG(stat_of(mp("d")).st_mode));
    SYS_ERR(stat(mp("d/sub"), &st), ENOTDIR);
}

Test(sys, unlink_and_its_errors) {
    SYS(mkdir(mp("d"), 0755));
    SYS_ERR(unlink(mp("d")), EISDIR);
    cr_assert(S_ISDIR(stat_of(mp("d")).st_mode), "unlink removed a directory");
    SYS_ERR(unlink(mp("missing")), ENOENT);
    SYS_ERR(unlink(mp("missing/x")), ENOENT);
    write_file(mp("d/f"), "x");
    write_file(mp("g"), "y");
    SYS(unlink(mp("d/f")));
    struct stat st;
    SYS_ERR(stat(mp("d/f"), &st), ENOENT);
    SYS_ERR(unlink(mp("d/f")), ENOENT);
    cr_assert_eq(count_in_dir(mp("d"), "f"), 0);
    SYS(rmdir(mp("d"))); /* empty now */
    expect_file(mp("g"), "y");
    /* A new file under an unlinked name starts empty. */
    SYS(unlink(mp("g")));
    int fd = (int)SYS(open(mp("g"), O_CREAT | O_RDWR, 0644));
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_size, 0, "a new file has the old file's size");
    SYS(close(fd));
}

/* ---- files: open flags, reads and writes ---- */

Test(sys, open_o_trunc_empties_the_file) {
    write_file(mp("a"), "hello world");
    int fd = (int)SYS(open(mp("a"), O_WRONLY | O_TRUNC));
    struct stat st;
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_size, 0);
    SYS(write(fd, "hi", 2));
    SYS(close(fd));
    expect_file(mp("a"), "hi");
    cr_assert_eq(stat_of(mp("a")).st_size, 2);

    /* A chunked file: none of its old chunks may come back. */
    fd = (int)SYS(open(mp("b"), O_CREAT | O_WRONLY, 0644));
    put_pattern(fd, 0, 2 * MIB + 4321, 11);
    SYS(close(fd));
    fd = (int)SYS(open(mp("b"), O_RDWR | O_TRUNC));
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_size, 0);
    SYS(write(fd, "xyz", 3));
    SYS(ftruncate(fd, (off_t)(3 * MIB)));
    SYS(close(fd));
    fd = (int)SYS(open(mp("b"), O_RDONLY));
    expect_bytes(fd, 0, "xyz", 3, "b after O_TRUNC");
    expect_range(fd, 3, 3 * MIB - 3, 0, "b after O_TRUNC and growth");
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_size, (off_t)(3 * MIB));
    SYS(close(fd));
    remount();
    fd = (int)SYS(open(mp("b"), O_RDONLY));
    expect_bytes(fd, 0, "xyz", 3, "b after remount");
    expect_range(fd, 3, 3 * MIB - 3, 0, "b after remount");
    SYS(close(fd));
}

Test(sys, o_append_writes_land_at_the_end) {
    write_file(mp("a"), "abc");
    int fd = (int)SYS(open(mp("a"), O_WRONLY | O_APPEND));
    SYS(lseek(fd, 0, SEEK_SET));
    cr_assert_eq(SYS(write(fd, "12", 2)), 2);
    cr_assert_eq(SYS(lseek(fd, 0, SEEK_CUR)), 5, "offset after append");
    SYS(lseek(fd, 1, SEEK_SET));
    cr_assert_eq(SYS(write(fd, "345", 3)), 3);
    cr_assert_eq(SYS(lseek(fd, 0, SEEK_CUR)), 8);
    /* A second appender: each write goes after the other's. */
    int g = (int)SYS(open(mp("a"), O_WRONLY | O_APPEND));
    SYS(write(g, "X", 1));
    SYS(write(fd, "Y", 1));
    SYS(write(g, "Z", 1));
    SYS(close(g));
    SYS(close(fd));
    expect_file(mp("a"), "abc12345XYZ");

    /* Appends that cross the inline limit into a chunked file. */
    fd = (int)SYS(open(mp("c"), O_CREAT | O_WRONLY, 0644));
    put_pattern(fd, 0, INLINE_MAX - 2, 5);
    SYS(close(fd));
    fd = (int)SYS(open(mp("c"), O_WRONLY | O_APPEND));
    SYS(write(fd, "01234", 5));
    SYS(write(fd, "56789", 5));
    SYS(close(fd));
    fd = (int)SYS(open(mp("c"), O_RDONLY));
    expect_range(fd, 0, INLINE_MAX - 2, 5, "c before the appends");
    expect_bytes(fd, INLINE_MAX - 2, "0123456789", 10, "c's appends");
    struct stat st;
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_size, (off_t)(INLINE_MAX + 8));
    SYS(close(fd));
}

Test(sys, read_write_pread_pwrite_at_offsets) {
    char want[203];
    for (int i = 0; i < 100; i++) want[i] = (char)('a' + i % 26);
    int fd = (int)SYS(open(mp("a"), O_CREAT | O_RDWR, 0644));
    cr_assert_eq(SYS(write(fd, want, 100)), 100);
    cr_assert_eq(SYS(lseek(fd, 10, SEEK_SET)), 10);
    cr_assert_eq(SYS(write(fd, "ABCD", 4)), 4);
    memcpy(want + 10, "ABCD", 4);
    cr_assert_eq(SYS(lseek(fd, 0, SEEK_CUR)), 14);
    char got[64];
    cr_assert_eq(SYS(read(fd, got, 6)), 6);
    cr_assert(memcmp(got, want + 14, 6) == 0, "read after a write");
    cr_assert_eq(SYS(lseek(fd, 0, SEEK_END)), 100);
    cr_assert_eq(SYS(read(fd, got, 10)), 0, "a read at the end gave data");
    /* A write past the end leaves a hole. */
    cr_assert_eq(SYS(lseek(fd, 200, SEEK_SET)), 200);
    cr_assert_eq(SYS(write(fd, "END", 3)), 3);
    memset(want + 100, 0, 100);
    memcpy(want + 200, "END", 3);
    /* pread and pwrite do not move the offset. */
    cr_assert_eq(SYS(pwrite(fd, "xyz", 3, 50)), 3);
    memcpy(want + 50, "xyz", 3);
    cr_assert_eq(SYS(lseek(fd, 0, SEEK_CUR)), 203);
    cr_assert_eq(SYS(pread(fd, got, 5, 49)), 5);
    cr_assert(memcmp(got, want + 49, 5) == 0, "pread after a pwrite");
    cr_assert_eq(SYS(pread(fd, got, 10, 198)), 5, "a pread over the end");
    cr_assert(memcmp(got, want + 198, 5) == 0);
    cr_assert_eq(SYS(pread(fd, got, 10, 203)), 0);
    cr_assert_eq(SYS(pread(fd, got, 10, 100000)), 0);
    cr_assert_eq(SYS(lseek(fd, 0, SEEK_CUR)), 203);
    SYS(close(fd));

    fd = (int)SYS(open(mp("a"), O_RDONLY));
    char all[300];
    cr_assert_eq(SYS(read(fd, all, sizeof all)), 203);
    cr_assert(memcmp(all, want, 203) == 0, "the file after a reopen");
    SYS(close(fd));
}

Test(sys, sparse_writes_read_zeros_in_the_holes) {
    /* 4 bytes at 0 (inline), then 5 bytes at 3 MiB + 5: the file becomes
     * chunked, with chunks 1 and 2 holes and chunks 0 and 3 partial. */
    int fd = (int)SYS(open(mp("s"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, 0, 4, 1);
    put_pattern(fd, 3 * MIB + 5, 5, 2);
    const region r[] = {{0, 4, 1}, {4, 3 * MIB + 1, 0}, {3 * MIB + 5, 5, 2}};
    expect_regions(fd, r, 3, 3 * MIB + 10, "s as written");
    SYS(close(fd));
    expect_file_regions(mp("s"), r, 3, 3 * MIB + 10, "s reopened");

    /* Writes straddling the inline limit and a chunk boundary. */
    fd = (int)SYS(open(mp("t"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, INLINE_MAX - 8, 16, 3);
    const region t1[] = {{0, INLINE_MAX - 8, 0}, {INLINE_MAX - 8, 16, 3}};
    expect_regions(fd, t1, 2, INLINE_MAX + 8, "t after the first write");
    put_pattern(fd, CHUNK - 2048, 4096, 4);
    SYS(close(fd));
    const region t2[] = {{0, INLINE_MAX - 8, 0},
                         {INLINE_MAX - 8, 16, 3},
                         {INLINE_MAX + 8, CHUNK - 2048 - INLINE_MAX - 8, 0},
                         {CHUNK - 2048, 4096, 4}};
    expect_file_regions(mp("t"), t2, 4, CHUNK + 2048, "t reopened");

    remount();
    expect_file_regions(mp("s"), r, 3, 3 * MIB + 10, "s after remount");
    expect_file_regions(mp("t"), t2, 4, CHUNK + 2048, "t after remount");

    /* Filling part of a hole later, across the 2 MiB chunk boundary. */
    fd = (int)SYS(open(mp("s"), O_RDWR));
    put_pattern(fd, 2 * MIB - 1, 2, 5);
    SYS(close(fd));
    const region r2[] = {{0, 4, 1},
                         {4, 2 * MIB - 5, 0},
                         {2 * MIB - 1, 2, 5},
                         {2 * MIB + 1, MIB + 4, 0},
                         {3 * MIB + 5, 5, 2}};
    expect_file_regions(mp("s"), r2, 5, 3 * MIB + 10, "s with a hole filled");
    remount();
    expect_file_regions(mp("s"), r2, 5, 3 * MIB + 10,
                        "s with a hole filled, after remount");
}

Test(sys, ftruncate_of_a_small_file_grows_with_zeros_and_shrinks) {
    int fd = (int)SYS(open(mp("a"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, 0, 1000, 1);
    SYS(ftruncate(fd, 10));
    const region r1[] = {{0, 10, 1}};
    expect_regions(fd, r1, 1, 10, "a cut to 10");
    SYS(ftruncate(fd, 5000));
    const region r2[] = {{0, 10, 1}, {10, 4990, 0}};
    expect_regions(fd, r2, 2, 5000, "a grown to 5000");
    SYS(close(fd));
    expect_file_regions(mp("a"), r2, 2, 5000, "a reopened");

    /* Growing past the inline limit makes it chunked; the tail is zeros. */
    SYS(truncate(mp("a"), (off_t)(200 * KIB)));
    const region r3[] = {{0, 10, 1}, {10, 200 * KIB - 10, 0}};
    expect_file_regions(mp("a"), r3, 2, 200 * KIB, "a grown to 200 KiB");
    SYS(truncate(mp("a"), 3));
    const region r4[] = {{0, 3, 1}};
    expect_file_regions(mp("a"), r4, 1, 3, "a cut to 3");
    cr_assert_eq(stat_of(mp("a")).st_size, 3);
    remount();
    expect_file_regions(mp("a"), r4, 1, 3, "a after remount");
}

Test(sys, ftruncate_of_a_chunked_file_to_mid_chunk_then_growth_reads_zeros) {
    const uint64_t size0 = 2 * MIB + 300 * KIB;
    const uint64_t cut = MIB + 100000; /* in the middle of chunk 1 */
    int fd = (int)SYS(open(mp("a"), O_CREAT | O_WRONLY, 0644));
    put_pattern(fd, 0, size0, 7);
    SYS(close(fd)); /* stored */

    fd = (int)SYS(open(mp("a"), O_RDWR));
    SYS(ftruncate(fd, (off_t)cut));
    const region r1[] = {{0, cut, 7}};
    expect_regions(fd, r1, 1, cut, "a cut mid-chunk");
    SYS(ftruncate(fd, (off_t)(3 * MIB)));
    const region r2[] = {{0, cut, 7}, {cut, 3 * MIB - cut, 0}};
    expect_regions(fd, r2, 2, 3 * MIB, "a cut then grown");
    SYS(close(fd));
    expect_file_regions(mp("a"), r2, 2, 3 * MIB, "a cut then grown, reopened");
    remount();
    expect_file_regions(mp("a"), r2, 2, 3 * MIB,
                        "a cut then grown, after remount");
}

Test(sys, ftruncate_of_dirty_chunks_then_growth_and_writes_read_zeros) {
    /* Everything through one descriptor: the chunks are still dirty in the
     * filesystem's memory when they are cut. */
    const uint64_t cut = MIB + 100000;
    int fd = (int)SYS(open(mp("a"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, 0, 2 * MIB + 300 * KIB, 8);
    SYS(ftruncate(fd, (off_t)cut));
    /* A write past the cut, inside the same chunk, then growth. */
    put_pattern(fd, cut + 400000, 4, 9);
    SYS(ftruncate(fd, (off_t)(3 * MIB)));
    const region r[] = {{0, cut, 8},
                        {cut, 400000, 0},
                        {cut + 400000, 4, 9},
                        {cut + 400004, 3 * MIB - cut - 400004, 0}};
    expect_regions(fd, r, 4, 3 * MIB, "a as written");
    SYS(close(fd));
    expect_file_regions(mp("a"), r, 4, 3 * MIB, "a reopened");

    /* Cut to a chunk boundary, to below the inline limit, to nothing;
     * each time grown again. */
    fd = (int)SYS(open(mp("b"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, 0, 2 * MIB + 1000, 10);
    SYS(ftruncate(fd, (off_t)MIB));
    SYS(ftruncate(fd, (off_t)(2 * MIB + 512 * KIB)));
    const region b1[] = {{0, MIB, 10}, {MIB, MIB + 512 * KIB, 0}};
    expect_regions(fd, b1, 2, 2 * MIB + 512 * KIB, "b cut at 1 MiB, grown");
    SYS(ftruncate(fd, 100));
    SYS(ftruncate(fd, (off_t)(200 * KIB)));
    const region b2[] = {{0, 100, 10}, {100, 200 * KIB - 100, 0}};
    expect_regions(fd, b2, 2, 200 * KIB, "b cut to 100, grown");
    SYS(close(fd));
    expect_file_regions(mp("b"), b2, 2, 200 * KIB, "b reopened");
    SYS(truncate(mp("b"), 0));
    SYS(truncate(mp("b"), (off_t)(2 * MIB)));
    const region b3[] = {{0, 2 * MIB, 0}};
    expect_file_regions(mp("b"), b3, 1, 2 * MIB, "b cut to 0, grown");

    /* More chunks than are kept dirty (16): the first ones are stored
     * while the write goes on; the cut falls in a stored one. */
    const uint64_t cut2 = 5 * MIB + 777;
    fd = (int)SYS(open(mp("c"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, 0, 18 * MIB + 5, 12);
    SYS(ftruncate(fd, (off_t)cut2));
    SYS(ftruncate(fd, (off_t)(18 * MIB)));
    const region c1[] = {{0, cut2, 12}, {cut2, 18 * MIB - cut2, 0}};
    expect_regions(fd, c1, 2, 18 * MIB, "c cut in chunk 5, grown");
    SYS(close(fd));

    remount();
    expect_file_regions(mp("a"), r, 4, 3 * MIB, "a after remount");
    expect_file_regions(mp("b"), b3, 1, 2 * MIB, "b after remount");
    expect_file_regions(mp("c"), c1, 2, 18 * MIB, "c after remount");
}

Test(sys, fsync_makes_open_files_survive_a_crash_and_close_returns_0) {
    int a = (int)SYS(open(mp("a"), O_CREAT | O_RDWR, 0644));
    SYS(write(a, "synced", 6));
    cr_assert_eq(SYS(fsync(a)), 0);
    int b = (int)SYS(open(mp("b"), O_CREAT | O_RDWR, 0644));
    put_pattern(b, 0, 2 * MIB + 12345, 5);
    cr_assert_eq(SYS(fdatasync(b)), 0);
    int d = (int)SYS(open(g_m.dir, O_RDONLY | O_DIRECTORY));
    cr_assert_eq(SYS(fsync(d)), 0);
    SYS(close(d));

    /* SIGKILL the mount with a and b still open: what they hold must come
     * from the fsyncs, not from a write-back at close. */
    kill(g_m.pid, SIGKILL);
    waitpid(g_m.pid, NULL, 0);
    g_m.pid = 0;
    close(a); /* fails on the dead mount; nothing to check */
    close(b);
    cr_assert_eq(sh("/", "fusermount3 -u %s", g_m.dir), 0,
                 "fusermount3 -u of the dead mount failed");
    qmount_start(&g_m, NULL, NULL);
    expect_file(mp("a"), "synced");
    const region r[] = {{0, 2 * MIB + 12345, 5}};
    expect_file_regions(mp("b"), r, 1, 2 * MIB + 12345, "b after the crash");

    int fd = (int)SYS(open(mp("a"), O_RDONLY));
    cr_assert_eq(close(fd), 0);
    SYS_ERR(close(fd), EBADF);
}

Test(sys, an_unlinked_open_file_stays_usable_until_close) {
    int fd = (int)SYS(open(mp("u"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, 0, 100, 1);
    SYS(unlink(mp("u")));
    struct stat st;
    SYS_ERR(stat(mp("u"), &st), ENOENT);
    cr_assert_eq(count_in_dir(g_m.dir, "u"), 0, "the unlinked name is listed");
    /* Readable and writable through the descriptor, chunked and all. */
    expect_range(fd, 0, 100, 1, "u after unlink");
    put_pattern(fd, 100, 2 * MIB, 2);
    const region r[] = {{0, 100, 1}, {100, 2 * MIB, 2}};
    expect_regions(fd, r, 2, 2 * MIB + 100, "u written after unlink");
    cr_assert_eq(SYS(fsync(fd)), 0);
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_size, (off_t)(2 * MIB + 100));

    /* The name is free: a new file there is a different file. */
    write_file(mp("u"), "new");
    expect_file(mp("u"), "new");
    expect_regions(fd, r, 2, 2 * MIB + 100, "old u beside a new u");
    cr_assert_eq(SYS(close(fd)), 0);
    expect_file(mp("u"), "new");
    cr_assert_eq(count_in_dir(g_m.dir, "u"), 1);
    remount();
    expect_file(mp("u"), "new");
    cr_assert_eq(count_in_dir(g_m.dir, "u"), 1);
}

Test(sys, an_unlinked_open_file_reopens_through_proc_fd) {
    /* Linux reopens an unlinked file through /proc/self/fd; that open
     * drops the page cache, so the reads below reach the filesystem. The
     * first reopen comes right after the unlink, with nothing written
     * since: the file's bytes must still be stored then. */
    int fd = (int)SYS(open(mp("u"), O_CREAT | O_RDWR, 0644));
    put_pattern(fd, 0, 300 * KIB, 3);
    SYS(fsync(fd));
    SYS(unlink(mp("u")));
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int g = (int)SYS(open(proc, O_RDONLY));
    const region r1[] = {{0, 300 * KIB, 3}};
    expect_regions(g, r1, 1, 300 * KIB, "u reopened after unlink");
    SYS(close(g));
    put_pattern(fd, 300 * KIB, 1000, 4);
    SYS(fsync(fd));
    g = (int)SYS(open(proc, O_RDONLY));
    const region r2[] = {{0, 300 * KIB, 3}, {300 * KIB, 1000, 4}};
    expect_regions(g, r2, 2, 300 * KIB + 1000, "u written, reopened again");
    SYS(close(g));
    expect_regions(fd, r2, 2, 300 * KIB + 1000, "u after the reopens closed");
    SYS(close(fd));
    struct stat st;
    SYS_ERR(stat(mp("u"), &st), ENOENT);
    cr_assert_eq(count_in_dir(g_m.dir, "u"), 0);
}

/* ---- rename ---- */

Test(sys, rename_of_files_replaces_an_existing_target) {
    write_file(mp("a"), "aaa");
    ino_t ino_a = stat_of(mp("a")).st_ino;
    SYS(rename(mp("a"), mp("b")));
    struct stat st;
    SYS_ERR(stat(mp("a"), &st), ENOENT);
    expect_file(mp("b"), "aaa");
    cr_assert_eq(stat_of(mp("b")).st_ino, ino_a, "rename changed st_ino");

    write_file(mp("c"), "ccccc");
    ino_t ino_c = stat_of(mp("c")).st_ino;
    cr_assert_neq(ino_c, ino_a, "two files with one st_ino");
    /* The replaced file stays readable through a descriptor opened
     * before (POSIX), while its name now shows the renamed file. */
    int old = (int)SYS(open(mp("b"), O_RDONLY));
    SYS(rename(mp("c"), mp("b")));
    SYS_ERR(stat(mp("c"), &st), ENOENT);
    expect_file(mp("b"), "ccccc");
    cr_assert_eq(stat_of(mp("b")).st_size, 5);
    expect_bytes(old, 0, "aaa", 3, "the replaced file's descriptor");
    SYS(close(old));
    expect_file(mp("b"), "ccccc");
    cr_assert_eq(count_in_dir(g_m.dir, "b"), 1);
    cr_assert_eq(count_in_dir(g_m.dir, "c"), 0);
    /* Renaming a file to its own name changes nothing. */
    SYS(rename(mp("b"), mp("b")));
    expect_file(mp("b"), "ccccc");
    SYS_ERR(rename(mp("missing"), mp("x")), ENOENT);
    cr_assert_eq(stat_of(mp("b")).st_ino, ino_c);
    remount();
    expect_file(mp("b"), "ccccc");
    cr_assert_eq(stat_of(mp("b")).st_ino, ino_c, "st_ino changed at remount");
    SYS_ERR(stat(mp("a"), &st), ENOENT);
    SYS_ERR(stat(mp("c"), &st), ENOENT);
}

Test(sys, rename_into_another_directory) {
    SYS(mkdir(mp("p"), 0755));
    SYS(mkdir(mp("q"), 0755));
    write_file(mp("p/f"), "file");
    SYS(rename(mp("p/f"), mp("q/g")));
    struct stat st;
    SYS_ERR(stat(mp("p/f"), &st), ENOENT);
    expect_file(mp("q/g"), "file");
    cr_assert_eq(count_in_dir(mp("p"), "f"), 0);
    cr_assert_eq(count_in_dir(mp("q"), "g"), 1);
    /* Over an existing file in the other directory. */
    write_file(mp("p/h"), "hhh");
    SYS(rename(mp("q/g"), mp("p/h")));
    expect_file(mp("p/h"), "file");
    SYS_ERR(stat(mp("q/g"), &st), ENOENT);
    /* A directory with contents moves with them. */
    SYS(mkdir(mp("p/d"), 0700));
    SYS(mkdir(mp("p/d/e"), 0755));
    write_file(mp("p/d/e/x"), "deep");
    SYS(rename(mp("p/d"), mp("q/d2")));
    SYS_ERR(stat(mp("p/d"), &st), ENOENT);
    expect_file(mp("q/d2/e/x"), "deep");
    cr_assert_eq(stat_of(mp("q/d2")).st_mode & 07777, 0700);
    remount();
    expect_file(mp("q/d2/e/x"), "deep");
    expect_file(mp("p/h"), "file");
}

Test(sys, rename_errors_for_directories_and_files) {
    SYS(mkdir(mp("full"), 0755));
    write_file(mp("full/x"), "x");
    SYS(mkdir(mp("dir"), 0755));
    SYS(mkdir(mp("empty"), 0755));
    write_file(mp("file"), "f");
    SYS_ERR(rename(mp("dir"), mp("full")), ENOTEMPTY);
    SYS_ERR(rename(mp("dir"), mp("file")), ENOTDIR);
    SYS_ERR(rename(mp("file"), mp("empty")), EISDIR);
    SYS_ERR(rename(mp("file"), mp("full")), EISDIR);
    /* The failures changed nothing. */
    expect_file(mp("full/x"), "x");
    expect_file(mp("file"), "f");
    cr_assert(S_ISDIR(stat_of(mp("dir")).st_mode));
    cr_assert(S_ISDIR(stat_of(mp("empty")).st_mode));
    /* A directory over an empty one replaces it. */
    write_file(mp("dir/inside"), "in");
    SYS(rename(mp("dir"), mp("empty")));
    struct stat st;
    SYS_ERR(stat(mp("dir"), &st), ENOENT);
    expect_file(mp("empty/inside"), "in");
    cr_assert_eq(count_in_dir(g_m.dir, "empty"), 1);
    remount();
    expect_file(mp("empty/inside"), "in");
    SYS_ERR(stat(mp("dir"), &st), ENOENT);
}

Test(sys, renameat2_noreplace_and_exchange) {
    write_file(mp("a"), "A");
    write_file(mp("b"), "B");
    SYS_ERR(renameat2(AT_FDCWD, mp("a"), AT_FDCWD, mp("b"), RENAME_NOREPLACE),
            EEXIST);
    expect_file(mp("a"), "A");
    expect_file(mp("b"), "B");
    SYS(renameat2(AT_FDCWD, mp("a"), AT_FDCWD, mp("c"), RENAME_NOREPLACE));
    struct stat st;
    SYS_ERR(stat(mp("a"), &st), ENOENT);
    expect_file(mp("c"), "A");
    SYS(mkdir(mp("d"), 0755));
    SYS(mkdir(mp("e"), 0755));
    SYS_ERR(renameat2(AT_FDCWD, mp("d"), AT_FDCWD, mp("e"), RENAME_NOREPLACE),
            EEXIST);
    SYS(renameat2(AT_FDCWD, mp("d"), AT_FDCWD, mp("e/d"), RENAME_NOREPLACE));
    cr_assert(S_ISDIR(stat_of(mp("e/d")).st_mode));
    /* Exchange is not supported: EINVAL, and both names unchanged. */
    SYS_ERR(renameat2(AT_FDCWD, mp("b"), AT_FDCWD, mp("c"), RENAME_EXCHANGE),
            EINVAL);
    expect_file(mp("b"), "B");
    expect_file(mp("c"), "A");
}

/* ---- symlinks, hard links, special files ---- */

Test(sys, symlink_readlink_and_lstat) {
    SYS(symlink("target/x", mp("l")));
    struct stat st = stat_of(mp("l"));
    cr_assert(S_ISLNK(st.st_mode), "lstat of a symlink: mode 0%o", st.st_mode);
    cr_assert_eq(st.st_size, 8);
    char buf[256];
    ssize_t n = SYS(readlink(mp("l"), buf, sizeof buf));
    cr_assert(n == 8 && memcmp(buf, "target/x", 8) == 0, "readlink gave '%.*s'",
              (int)(n > 0 ? n : 0), buf);
    cr_assert_eq(SYS(readlink(mp("l"), buf, 3)), 3, "a short readlink buffer");
    cr_assert(memcmp(buf, "tar", 3) == 0);
    SYS_ERR(stat(mp("l"), &st), ENOENT); /* dangling */
    SYS_ERR(symlink("other", mp("l")), EEXIST);

    write_file(mp("f"), "through");
    SYS(symlink("f", mp("lf")));
    cr_assert(S_ISREG(stat_of(mp("f")).st_mode));
    SYS(stat(mp("lf"), &st));
    cr_assert(S_ISREG(st.st_mode), "stat does not follow the symlink");
    cr_assert_eq(st.st_size, 7);
    expect_file(mp("lf"), "through");
    SYS_ERR(readlink(mp("f"), buf, sizeof buf), EINVAL);
    SYS_ERR(open(mp("lf"), O_RDONLY | O_NOFOLLOW), ELOOP);

    /* A symlink to a directory is followed in paths. */
    SYS(mkdir(mp("d"), 0755));
    write_file(mp("d/in"), "in d");
    SYS(symlink(g_m.dir, mp("d/up")));
    SYS(symlink("d", mp("ld")));
    expect_file(mp("ld/in"), "in d");
    expect_file(mp("ld/up/ld/in"), "in d");
    remount();
    n = SYS(readlink(mp("l"), buf, sizeof buf));
    cr_assert(n == 8 && memcmp(buf, "target/x", 8) == 0,
              "readlink after remount gave '%.*s'", (int)(n > 0 ? n : 0), buf);
    expect_file(mp("ld/in"), "in d");
    SYS(unlink(mp("lf")));
    expect_file(mp("f"), "through"); /* unlinking a symlink keeps its target */
}

Test(sys, link_gives_eperm) {
    write_file(mp("a"), "x");
    SYS_ERR(link(mp("a"), mp("b")), EPERM);
    struct stat st;
    SYS_ERR(stat(mp("b"), &st), ENOENT);
    expect_file(mp("a"), "x");
}

Test(sys, mknod_of_a_fifo_gives_eperm_and_of_a_regular_file_works) {
    SYS_ERR(mkfifo(mp("fifo"), 0644), EPERM);
    SYS_ERR(mknod(mp("chr"), S_IFCHR | 0644, makedev(1, 3)), EPERM);
    struct stat st;
    SYS_ERR(stat(mp("fifo"), &st), ENOENT);
    SYS_ERR(stat(mp("chr"), &st), ENOENT);
    SYS(mknod(mp("reg"), S_IFREG | 0600, 0));
    st = stat_of(mp("reg"));
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0600);
    cr_assert_eq(st.st_size, 0);
}

/* ---- attributes ---- */

Test(sys, chmod_chown_and_utimensat_show_in_stat) {
    write_file(mp("f"), "data");
    int64_t before = now_ns();
    SYS(chmod(mp("f"), 0640));
    struct stat st = stat_of(mp("f"));
    cr_assert_eq(st.st_mode, S_IFREG | 0640);
    cr_assert_geq(ts_ns(st.st_ctim), before - 1000000000,
                  "ctime not updated by chmod");
    int fd = (int)SYS(open(mp("f"), O_RDWR));
    SYS(fchmod(fd, 0600));
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_mode, S_IFREG | 0600);
    SYS(mkdir(mp("d"), 0755));
    SYS(chmod(mp("d"), 01770));
    cr_assert_eq(stat_of(mp("d")).st_mode, S_IFDIR | 01770);

    SYS(chown(mp("f"), 1234, 5678));
    st = stat_of(mp("f"));
    cr_assert_eq(st.st_uid, 1234);
    cr_assert_eq(st.st_gid, 5678);
    SYS(fchown(fd, (uid_t)-1, 42));
    SYS(fstat(fd, &st));
    cr_assert_eq(st.st_uid, 1234, "chown of the group alone changed the owner");
    cr_assert_eq(st.st_gid, 42);
    SYS(chown(mp("d"), 7, 8));
    st = stat_of(mp("d"));
    cr_assert(st.st_uid == 7 && st.st_gid == 8);
    SYS(symlink("f", mp("l")));
    SYS(lchown(mp("l"), 77, 88));
    st = stat_of(mp("l"));
    cr_assert(st.st_uid == 77 && st.st_gid == 88, "lchown of a symlink");
    st = stat_of(mp("f"));
    cr_assert(st.st_uid == 1234 && st.st_gid == 42,
              "lchown changed the symlink's target");

    struct timespec ts[2] = {{1000000000, 123456789}, {1200000000, 987654321}};
    SYS(utimensat(AT_FDCWD, mp("f"), ts, 0));
    st = stat_of(mp("f"));
    cr_assert(st.st_atim.tv_sec == ts[0].tv_sec &&
                  st.st_atim.tv_nsec == ts[0].tv_nsec,
              "atime %lld.%09ld", (long long)st.st_atim.tv_sec,
              st.st_atim.tv_nsec);
    cr_assert(st.st_mtim.tv_sec == ts[1].tv_sec &&
                  st.st_mtim.tv_nsec == ts[1].tv_nsec,
              "mtime %lld.%09ld", (long long)st.st_mtim.tv_sec,
              st.st_mtim.tv_nsec);
    /* UTIME_OMIT keeps atime; UTIME_NOW sets mtime to now. */
    struct timespec now_mtime[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
    before = now_ns();
    SYS(futimens(fd, now_mtime));
    int64_t after = now_ns();
    SYS(fstat(fd, &st));
    cr_assert_eq(ts_ns(st.st_atim), ts_ns(ts[0]), "UTIME_OMIT changed atime");
    cr_assert(ts_ns(st.st_mtim) >= before - 1000000000 &&
                  ts_ns(st.st_mtim) <= after + 1000000000,
              "UTIME_NOW set mtime %lld, now is %lld", ts_ns(st.st_mtim),
              after);
    SYS(utimensat(AT_FDCWD, mp("d"), ts, 0));
    st = stat_of(mp("d"));
    cr_assert_eq(ts_ns(st.st_mtim), ts_ns(ts[1]), "a directory's mtime");
    SYS(utimensat(AT_FDCWD, mp("f"), ts, 0));
    SYS(close(fd));

    remount();
    st = stat_of(mp("f"));
    cr_assert_eq(st.st_mode, S_IFREG | 0600);
    cr_assert(st.st_uid == 1234 && st.st_gid == 42);
    cr_assert_eq(ts_ns(st.st_mtim), ts_ns(ts[1]), "mtime after remount");
    cr_assert_eq(ts_ns(st.st_atim), ts_ns(ts[0]), "atime after remount");
    st = stat_of(mp("d"));
    cr_assert_eq(st.st_mode, S_IFDIR | 01770);
    cr_assert(st.st_uid == 7 && st.st_gid == 8);
    expect_file(mp("f"), "data");
}

/* path's mtime and ctime must have been set at or after since_ns (less
 * a second of clock slack): a change marked them for update. */
static void expect_touched(const char *path, int64_t since_ns,
                           const char *what) {
    struct stat st = stat_of(path);
    cr_assert_geq(ts_ns(st.st_mtim), since_ns - 1000000000,
                  "%s: mtime %lld not updated", what,
                  (long long)st.st_mtim.tv_sec);
    cr_assert_geq(ts_ns(st.st_ctim), since_ns - 1000000000,
                  "%s: ctime %lld not updated", what,
                  (long long)st.st_ctim.tv_sec);
}

/* Set path's atime and mtime to 1000 s after the epoch. */
static void age(const char *path) {
    struct timespec old[2] = {{1000, 0}, {1000, 0}};
    SYS(utimensat(AT_FDCWD, path, old, AT_SYMLINK_NOFOLLOW));
    cr_assert_eq(stat_of(path).st_mtime, 1000);
}

Test(sys, writes_truncates_and_name_changes_update_mtime_and_ctime) {
    write_file(mp("f"), "x");
    SYS(mkdir(mp("d"), 0755));
    int64_t t0 = now_ns();

    age(mp("f"));
    int fd = (int)SYS(open(mp("f"), O_WRONLY));
    SYS(write(fd, "y", 1));
    SYS(close(fd));
    expect_touched(mp("f"), t0, "f after a write");
    age(mp("f"));
    SYS(truncate(mp("f"), 0));
    expect_touched(mp("f"), t0, "f after truncate");
    write_file(mp("g"), "data");
    age(mp("g"));
    fd = (int)SYS(open(mp("g"), O_WRONLY | O_TRUNC));
    SYS(close(fd));
    expect_touched(mp("g"), t0, "g after O_TRUNC");

    age(mp("d"));
    write_file(mp("d/x"), "x");
    expect_touched(mp("d"), t0, "d after a create in it");
    age(mp("d"));
    SYS(mkdir(mp("d/sub"), 0755));
    expect_touched(mp("d"), t0, "d after a mkdir in it");
    age(mp("d"));
    SYS(rename(mp("d/x"), mp("d/y")));
    expect_touched(mp("d"), t0, "d after a rename in it");
    age(mp("d"));
    SYS(rename(mp("f"), mp("d/f")));
    expect_touched(mp("d"), t0, "d after a rename into it");
    age(mp("d"));
    SYS(unlink(mp("d/y")));
    expect_touched(mp("d"), t0, "d after an unlink in it");
    age(mp("d"));
    SYS(rmdir(mp("d/sub")));
    expect_touched(mp("d"), t0, "d after an rmdir in it");

    /* Reading changes neither, and the times survive a remount. */
    age(mp("g"));
    age(mp("d"));
    expect_file(mp("g"), "");
    cr_assert_eq(count_in_dir(mp("d"), "f"), 1);
    remount();
    cr_assert_eq(stat_of(mp("g")).st_mtime, 1000);
    cr_assert_eq(stat_of(mp("d")).st_mtime, 1000);
}

Test(sys, open_o_trunc_of_an_empty_file_updates_mtime_and_ctime) {
    /* POSIX open(): "If O_TRUNC is set and the file did previously exist,
     * upon successful completion, open() shall mark for update the last
     * data modification and last file status change timestamps" (ext4
     * and tmpfs do, for an empty file too). */
    write_file(mp("f"), "");
    int64_t t0 = now_ns();
    age(mp("f"));
    int fd = (int)SYS(open(mp("f"), O_WRONLY | O_TRUNC));
    SYS(close(fd));
    expect_touched(mp("f"), t0, "empty f after O_TRUNC");
}

Test(sys, a_setgid_directory_passes_its_group_on) {
    SYS(mkdir(mp("sg"), 0775));
    SYS(chown(mp("sg"), 0, 4242));
    SYS(chmod(mp("sg"), 02775));
    cr_assert_eq(stat_of(mp("sg")).st_mode, S_IFDIR | 02775);
    write_file(mp("sg/f"), "x");
    struct stat st = stat_of(mp("sg/f"));
    cr_assert_eq(st.st_gid, 4242, "a file in a setgid dir has gid %u",
                 st.st_gid);
    cr_assert_eq(st.st_uid, 0);
    SYS(mkdir(mp("sg/sub"), 0755));
    st = stat_of(mp("sg/sub"));
    cr_assert_eq(st.st_gid, 4242);
    cr_assert(st.st_mode & S_ISGID, "a subdirectory lost the setgid bit");
    write_file(mp("plain"), "y");
    cr_assert_eq(stat_of(mp("plain")).st_gid, 0);
}

/* The names listxattr gives for path, as one string "a,b," sorted. */
static void xattr_names(const char *path, char *out, size_t cap) {
    char list[1024];
    ssize_t need = listxattr(path, NULL, 0);
    cr_assert_geq(need, 0, "listxattr size: %s", strerror(errno));
    ssize_t n = listxattr(path, list, sizeof list);
    cr_assert_eq(n, need, "listxattr gave %zd, its size query %zd", n, need);
    const char *names[32];
    size_t k = 0;
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(list + i) + 1) {
        cr_assert_lt(k, 32);
        names[k++] = list + i;
    }
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    out[0] = 0;
    for (size_t i = 0; i < k; i++) {
        strncat(out, names[i], cap - strlen(out) - 1);
        strncat(out, ",", cap - strlen(out) - 1);
    }
}

static void expect_xattr(const char *path, const char *name, const char *want) {
    char v[256];
    ssize_t need = getxattr(path, name, NULL, 0);
    cr_assert_eq(need, (ssize_t)strlen(want), "getxattr %s size: %zd (%s)",
                 name, need, need < 0 ? strerror(errno) : "");
    ssize_t n = getxattr(path, name, v, sizeof v);
    cr_assert(n == (ssize_t)strlen(want) && memcmp(v, want, (size_t)n) == 0,
              "getxattr %s gave '%.*s', expected '%s'", name,
              (int)(n > 0 ? n : 0), v, want);
}

Test(sys, user_xattrs_set_get_list_remove) {
    write_file(mp("f"), "data");
    const char *f = mp("f");
    char names[512], v[64];
    xattr_names(f, names, sizeof names);
    cr_assert_str_eq(names, "");
    SYS(setxattr(f, "user.a", "one", 3, 0));
    expect_xattr(f, "user.a", "one");
    SYS_ERR(getxattr(f, "user.a", v, 1), ERANGE);
    SYS_ERR(setxattr(f, "user.a", "two", 3, XATTR_CREATE), EEXIST);
    expect_xattr(f, "user.a", "one");
    SYS_ERR(setxattr(f, "user.b", "x", 1, XATTR_REPLACE), ENODATA);
    SYS_ERR(getxattr(f, "user.b", v, sizeof v), ENODATA);
    SYS(setxattr(f, "user.a", "three", 5, XATTR_REPLACE));
    expect_xattr(f, "user.a", "three");
    SYS(setxattr(f, "user.b", "", 0, XATTR_CREATE));
    expect_xattr(f, "user.b", "");
    xattr_names(f, names, sizeof names);
    cr_assert_str_eq(names, "user.a,user.b,");
    SYS_ERR(getxattr(f, "user.missing", v, sizeof v), ENODATA);
    SYS_ERR(removexattr(f, "user.missing"), ENODATA);
    SYS(removexattr(f, "user.a"));
    SYS_ERR(getxattr(f, "user.a", v, sizeof v), ENODATA);
    SYS_ERR(removexattr(f, "user.a"), ENODATA);
    xattr_names(f, names, sizeof names);
    cr_assert_str_eq(names, "user.b,");

    char big[4000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)pat(6, i);
    SYS(setxattr(f, "user.big", big, sizeof big, 0));
    char bigv[5000];
    cr_assert_eq(SYS(getxattr(f, "user.big", bigv, sizeof bigv)),
                 (long)sizeof big);
    cr_assert(memcmp(big, bigv, sizeof big) == 0, "user.big read back wrong");
    SYS_ERR(listxattr(f, v, 5), ERANGE);
    SYS(removexattr(f, "user.big"));

    /* Other namespaces are not stored. */
    errno = 0;
    int r = setxattr(f, "trusted.x", "1", 1, 0);
    int e = errno;
    cr_assert(r == -1 && (e == ENOTSUP || e == EOPNOTSUPP),
              "setxattr trusted.x gave %d, errno %d (%s)", r, e, strerror(e));
    xattr_names(f, names, sizeof names);
    cr_assert_str_eq(names, "user.b,");

    /* On a directory, and on a file open with unwritten data. */
    SYS(mkdir(mp("d"), 0755));
    SYS(setxattr(mp("d"), "user.d", "dv", 2, 0));
    expect_xattr(mp("d"), "user.d", "dv");
    int fd = (int)SYS(open(f, O_RDWR));
    SYS(pwrite(fd, "DATA", 4, 0));
    SYS(fsetxattr(fd, "user.c", "c", 1, 0));
    char fv[8];
    cr_assert_eq(SYS(fgetxattr(fd, "user.c", fv, sizeof fv)), 1);
    SYS(close(fd));
    expect_file(f, "DATA");

    remount();
    f = mp("f");
    expect_file(f, "DATA");
    xattr_names(f, names, sizeof names);
    cr_assert_str_eq(names, "user.b,user.c,");
    expect_xattr(f, "user.c", "c");
    expect_xattr(f, "user.b", "");
    expect_xattr(mp("d"), "user.d", "dv");
}

/* ---- the filesystem as a whole ---- */

Test(sys, statfs_works_and_names_are_255_bytes_at_most) {
    struct statvfs sv;
    SYS(statvfs(g_m.dir, &sv));
    cr_assert_eq(sv.f_namemax, 255);
    cr_assert_gt(sv.f_bsize, 0);
    cr_assert_gt(sv.f_blocks, 0);
    cr_assert(sv.f_bavail <= sv.f_bfree && sv.f_bfree <= sv.f_blocks,
              "blocks %llu, free %llu, available %llu",
              (unsigned long long)sv.f_blocks, (unsigned long long)sv.f_bfree,
              (unsigned long long)sv.f_bavail);
    cr_assert_gt(sv.f_files, 0);
    struct statfs sf;
    SYS(statfs(g_m.dir, &sf));
    cr_assert_eq(sf.f_type, FUSE_SUPER_MAGIC);
    cr_assert_eq(sf.f_namelen, 255);
    write_file(mp("f"), "x");
    int fd = (int)SYS(open(mp("f"), O_RDONLY));
    SYS(fstatvfs(fd, &sv));
    cr_assert_eq(sv.f_namemax, 255);
    SYS(close(fd));
}

Test(sys, names_of_256_bytes_give_enametoolong_and_255_work) {
    char n255[256], c255[256], d255[256], n256[257];
    memset(n255, 'a', 255);
    memset(c255, 'c', 255);
    memset(d255, 'd', 255);
    memset(n256, 'b', 256);
    n255[255] = c255[255] = d255[255] = n256[256] = 0;

    int fd = (int)SYS(open(mp("%s", n255), O_CREAT | O_EXCL | O_WRONLY, 0644));
    SYS(write(fd, "long", 4));
    SYS(close(fd));
    expect_file(mp("%s", n255), "long");
    SYS(mkdir(mp("%s", d255), 0755));
    cr_assert(S_ISDIR(stat_of(mp("%s", d255)).st_mode));
    SYS(rename(mp("%s", n255), mp("%s/%s", d255, c255)));
    expect_file(mp("%s/%s", d255, c255), "long");
    cr_assert_eq(count_in_dir(mp("%s", d255), c255), 1);

    SYS_ERR(open(mp("%s", n256), O_CREAT | O_WRONLY, 0644), ENAMETOOLONG);
    SYS_ERR(creat(mp("%s", n256), 0644), ENAMETOOLONG);
    SYS_ERR(mkdir(mp("%s", n256), 0755), ENAMETOOLONG);
    SYS_ERR(rename(mp("%s/%s", d255, c255), mp("%s", n256)), ENAMETOOLONG);
    SYS_ERR(symlink("x", mp("%s", n256)), ENAMETOOLONG);
    struct stat st;
    SYS_ERR(stat(mp("%s", n256), &st), ENAMETOOLONG);
    expect_file(mp("%s/%s", d255, c255), "long"); /* the rename did nothing */
    remount();
    expect_file(mp("%s/%s", d255, c255), "long");
}

/* One listing of directory path through readdir: each of the n entries
 * e%04d (a directory when i % 10 == 0) that `present` marks must appear
 * exactly once, with "." and ".." once each, and nothing else; where
 * inos[i] is not 0 (inos may be NULL), with that d_ino. */
static void expect_listing(const char *path, const bool *present,
                           const ino_t *inos, int n) {
    int *seen = calloc((size_t)n, sizeof *seen);
    cr_assert_not_null(seen);
    int dots = 0, dotdots = 0;
    DIR *d = opendir(path);
    cr_assert_not_null(d, "opendir: %s", strerror(errno));
    struct dirent *e;
    while ((errno = 0, e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0) {
            dots++;
            continue;
        }
        if (strcmp(e->d_name, "..") == 0) {
            dotdots++;
            continue;
        }
        int i;
        char extra;
        cr_assert(sscanf(e->d_name, "e%4d%c", &i, &extra) == 1 && i >= 0 &&
                      i < n && present[i],
                  "readdir gave an unexpected entry '%s'", e->d_name);
        seen[i]++;
        unsigned char want = i % 10 == 0 ? DT_DIR : DT_REG;
        cr_assert_eq(e->d_type, want, "%s has d_type %d", e->d_name, e->d_type);
        if (inos && inos[i])
            cr_assert_eq((ino_t)e->d_ino, inos[i],
                         "%s: d_ino %llu, but stat gave st_ino %llu", e->d_name,
                         (unsigned long long)e->d_ino,
                         (unsigned long long)inos[i]);
    }
    cr_assert_eq(errno, 0, "readdir: %s", strerror(errno));
    closedir(d);
    cr_assert_eq(dots, 1, "'.' listed %d times", dots);
    cr_assert_eq(dotdots, 1, "'..' listed %d times", dotdots);
    for (int i = 0; i < n; i++)
        cr_assert_eq(seen[i], present[i] ? 1 : 0, "e%04d listed %d times", i,
                     seen[i]);
    free(seen);
}

/* The same through getdents64 with a small buffer: many calls, each
 * continuing at the offset the last one ended. Returns entries seen. */
static int count_getdents(const char *path, int n) {
    struct dent {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[];
    };
    int fd = (int)SYS(open(path, O_RDONLY | O_DIRECTORY));
    int *seen = calloc((size_t)n, sizeof *seen);
    cr_assert_not_null(seen);
    char buf[600];
    int total = 0, calls = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, fd, buf, sizeof buf);
        cr_assert_geq(got, 0, "getdents64: %s", strerror(errno));
        if (got == 0) break;
        calls++;
        for (long at = 0; at < got;) {
            struct dent *de = (struct dent *)(buf + at);
            int i;
            if (sscanf(de->name, "e%4d", &i) == 1 && i >= 0 && i < n) {
                seen[i]++;
                cr_assert_eq(seen[i], 1, "getdents64 gave %s twice", de->name);
            }
            total++;
            at += de->reclen;
        }
    }
    cr_assert_gt(calls, 10, "test bug: the buffer is not small enough");
    SYS(close(fd));
    free(seen);
    return total;
}

/* n entries e0000... in dir, every tenth a directory, the rest empty
 * files; present[i] set for each. */
static void make_entries(const char *dir, bool *present, int n) {
    char path[PATH_MAX];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/e%04d", dir, i);
        if (i % 10 == 0) {
            SYS(mkdir(path, 0755));
        } else {
            int fd = (int)SYS(open(path, O_CREAT | O_EXCL, 0644));
            SYS(close(fd));
        }
        present[i] = true;
    }
}

Test(sys, readdir_of_1000_entries_gives_each_once) {
    enum { N = 1000 };
    static bool present[N];
    SYS(mkdir(mp("big"), 0755));
    make_entries(mp("big"), present, N);
    /* st_ino from stat before any listing: a listing that hands the
     * kernel attributes (readdirplus) would otherwise answer the stat. */
    static ino_t inos[N];
    for (int i = 0; i < N; i += 97)
        inos[i] = stat_of(mp("big/e%04d", i)).st_ino;
    expect_listing(mp("big"), present, inos, N);
    cr_assert_eq(count_getdents(mp("big"), N), N + 2);

    /* rewinddir in the middle starts over, without duplicates after. */
    DIR *d = opendir(mp("big"));
    cr_assert_not_null(d);
    for (int i = 0; i < 10; i++) cr_assert_not_null(readdir(d));
    rewinddir(d);
    int count = 0;
    while (readdir(d)) count++;
    closedir(d);
    cr_assert_eq(count, N + 2, "after rewinddir: %d entries", count);

    for (int i = 0; i < N; i += 2) {
        if (i % 10 == 0)
            SYS(rmdir(mp("big/e%04d", i)));
        else
            SYS(unlink(mp("big/e%04d", i)));
        present[i] = false;
    }
    expect_listing(mp("big"), present, NULL, N);
    cr_assert_eq(count_getdents(mp("big"), N), N / 2 + 2);
    remount();
    expect_listing(mp("big"), present, inos, N); /* st_ino kept, too */
}

/* Entries readdir gives for path, "." and ".." included. */
static int count_entries(const char *path) {
    DIR *d = opendir(path);
    cr_assert_not_null(d, "opendir %s: %s", path, strerror(errno));
    int n = 0;
    while (readdir(d) != NULL) n++;
    closedir(d);
    return n;
}

/* A directory past FS_SHARD_SPLIT entries spreads over shard objects,
 * two levels down at 5000 (more than 256 + 16 * 256): every name is
 * found, renames move entries between shards and directories, rmdir
 * waits for the last entry, and the directory's times follow changes
 * made below level 0. */
Test(sys, a_directory_of_5000_entries_spread_over_shards) {
    enum { N = 5000 };
    static bool present[N];
    SYS(mkdir(mp("big"), 0755));
    SYS(mkdir(mp("other"), 0755));
    make_entries(mp("big"), present, N);
    expect_listing(mp("big"), present, NULL, N);
    /* fsyncdir: every shard the first time, then the ones written since. */
    int dfd = (int)SYS(open(mp("big"), O_RDONLY | O_DIRECTORY));
    cr_assert_eq(SYS(fsync(dfd)), 0);
    write_file(mp("big/synced"), "s");
    cr_assert_eq(SYS(fsync(dfd)), 0);
    SYS(close(dfd));
    SYS(unlink(mp("big/synced")));
    for (int i = 0; i < N; i += 7) {
        struct stat st = stat_of(mp("big/e%04d", i));
        cr_assert_eq(S_ISDIR(st.st_mode), i % 10 == 0, "e%04d: mode %o", i,
                     st.st_mode);
    }
    SYS_ERR(open(mp("big/e0001"), O_CREAT | O_EXCL, 0644), EEXIST);

    /* Renames to new names in the same directory and into another one,
     * then back. */
    for (int i = 1; i < N; i += 50) {
        SYS(rename(mp("big/e%04d", i), mp("big/r%04d", i)));
        SYS(rename(mp("big/e%04d", i + 2), mp("other/e%04d", i + 2)));
    }
    DIR *d = opendir(mp("big"));
    cr_assert_not_null(d);
    int total = 0, renamed = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        total++;
        int i;
        if (sscanf(de->d_name, "e%4d", &i) == 1)
            cr_assert(i % 50 != 1 && i % 50 != 3, "%s is still listed",
                      de->d_name);
        renamed += de->d_name[0] == 'r';
    }
    closedir(d);
    cr_assert_eq(renamed, N / 50, "%d renamed names listed", renamed);
    cr_assert_eq(total, N - N / 50 + 2);
    cr_assert_eq(count_entries(mp("other")), N / 50 + 2);
    for (int i = 1; i < N; i += 50) {
        SYS_ERR(stat(mp("big/e%04d", i), &(struct stat){0}), ENOENT);
        SYS_ERR(stat(mp("big/e%04d", i + 2), &(struct stat){0}), ENOENT);
        SYS(rename(mp("big/r%04d", i), mp("big/e%04d", i)));
        SYS(rename(mp("other/e%04d", i + 2), mp("big/e%04d", i + 2)));
    }
    expect_listing(mp("big"), present, NULL, N);
    cr_assert_eq(count_entries(mp("other")), 2);

    /* The times: a create below level 0 still marks the directory. */
    int64_t t0 = now_ns();
    age(mp("big"));
    write_file(mp("big/new"), "n");
    expect_touched(mp("big"), t0, "big after a create in a shard");
    SYS(unlink(mp("big/new")));

    /* rmdir gives ENOTEMPTY until the last entry is gone. */
    for (int i = 0; i < N - 1; i++) {
        if (i % 10 == 0)
            SYS(rmdir(mp("big/e%04d", i)));
        else
            SYS(unlink(mp("big/e%04d", i)));
    }
    SYS_ERR(rmdir(mp("big")), ENOTEMPTY);
    SYS(unlink(mp("big/e%04d", N - 1)));
    SYS(rmdir(mp("big")));
    SYS_ERR(stat(mp("big"), &(struct stat){0}), ENOENT);
    remount();
    SYS_ERR(stat(mp("big"), &(struct stat){0}), ENOENT);
    cr_assert_eq(count_entries(mp("other")), 2);
    SYS(mkdir(mp("big"), 0755)); /* the name is free, the new one empty */
    cr_assert_eq(count_entries(mp("big")), 2);
}

/* Threads of one mount creating in one directory while others look names
 * up in it: lookups read the directory while creates change it, and a
 * create must never build on a read that lacks this mount's own last add
 * (its dot would be reused, and a merge would drop both entries). */
typedef struct maker {
    int from, n;
    volatile bool *stop;
    int err, failed_at; /* the first failed create's errno and index */
} maker;

static void *make_files(void *arg) {
    maker *m = arg;
    for (int i = m->from; i < m->from + m->n; i++) {
        char path[PATH_MAX]; /* not mp(): its buffers are not per thread */
        snprintf(path, sizeof path, "%s/crowd/e%04d", g_m.dir, i);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0 && !m->err) {
            m->err = errno;
            m->failed_at = i;
        }
        if (fd >= 0) close(fd);
    }
    return NULL;
}

static void *look_up(void *arg) {
    maker *m = arg;
    struct stat st;
    char path[PATH_MAX];
    for (unsigned i = 0; !*m->stop; i++) {
        snprintf(path, sizeof path, "%s/crowd/e%04d", g_m.dir,
                 (int)(i * 7919u % 1200u));
        stat(path, &st);
    }
    return NULL;
}

Test(sys, creates_and_lookups_in_one_directory_from_many_threads_lose_nothing) {
    enum { N = 1200, MAKERS = 4 };
    SYS(mkdir(mp("crowd"), 0755));
    volatile bool stop = false;
    maker m[MAKERS + 2];
    pthread_t th[MAKERS + 2];
    for (int i = 0; i < MAKERS + 2; i++) {
        m[i] = (maker){i * (N / MAKERS), N / MAKERS, &stop, 0, 0};
        cr_assert_eq(pthread_create(&th[i], NULL,
                                    i < MAKERS ? make_files : look_up, &m[i]),
                     0);
    }
    for (int i = 0; i < MAKERS; i++) pthread_join(th[i], NULL);
    stop = true;
    for (int i = MAKERS; i < MAKERS + 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < MAKERS; i++)
        cr_assert_eq(m[i].err, 0, "create e%04d: %s", m[i].failed_at,
                     strerror(m[i].err));
    DIR *d = opendir(mp("crowd"));
    cr_assert_not_null(d);
    static int seen[N];
    int other = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int i;
        char extra;
        if (sscanf(e->d_name, "e%4d%c", &i, &extra) == 1 && i >= 0 && i < N)
            seen[i]++;
        else if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            other++;
    }
    closedir(d);
    cr_assert_eq(other, 0, "%d unexpected names", other);
    for (int i = 0; i < N; i++)
        cr_assert_eq(seen[i], 1, "e%04d listed %d times", i, seen[i]);
    remount();
    for (int i = 0; i < N; i += 13) stat_of(mp("crowd/e%04d", i));
}

/* ---- permissions ---- */

/* Checks run as uid and gid nobody; each returns its number on failure
 * with a message in msg. */
#define CHILD_ERR(num, expr, want)                                             \
    do {                                                                       \
        errno = 0;                                                             \
        long r_ = (long)(expr);                                                \
        int e_ = errno;                                                        \
        if (r_ != -1 || e_ != (want)) {                                        \
            snprintf(msg, cap,                                                 \
                     "check %d: %s gave %ld, errno %d (%s); "                  \
                     "expected -1 with %s",                                    \
                     num, #expr, r_, e_, strerror(e_), #want);                 \
            return num;                                                        \
        }                                                                      \
    } while (0)

#define CHILD_OK(num, expr)                                                    \
    do {                                                                       \
        errno = 0;                                                             \
        long r_ = (long)(expr);                                                \
        int e_ = errno;                                                        \
        if (r_ == -1) {                                                        \
            snprintf(msg, cap, "check %d: %s failed: %s", num, #expr,          \
                     strerror(e_));                                            \
            return num;                                                        \
        }                                                                      \
    } while (0)

static int nobody_checks(char *msg, size_t cap) {
    struct stat st;
    if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0 ||
        geteuid() != NOBODY) {
        snprintf(msg, cap, "cannot become nobody: %s", strerror(errno));
        return 1;
    }
    CHILD_ERR(2, open(mp("ro/new"), O_CREAT | O_WRONLY, 0644), EACCES);
    CHILD_ERR(3, mkdir(mp("ro/newdir"), 0755), EACCES);
    CHILD_ERR(4, open(mp("ro/secret"), O_RDONLY), EACCES);
    CHILD_ERR(5, open(mp("ro/pub"), O_WRONLY), EACCES);
    CHILD_ERR(6, open(mp("ro/pub"), O_RDWR), EACCES);
    CHILD_ERR(7, truncate(mp("ro/pub"), 0), EACCES);
    CHILD_ERR(8, unlink(mp("ro/pub")), EACCES);
    CHILD_ERR(9, rename(mp("ro/pub"), mp("ro/pub2")), EACCES);
    CHILD_ERR(10, setxattr(mp("ro/pub"), "user.x", "1", 1, 0), EACCES);
    CHILD_ERR(11, chmod(mp("ro/pub"), 0666), EPERM);
    CHILD_ERR(12, symlink("x", mp("ro/link")), EACCES);
    CHILD_ERR(13, access(mp("ro/pub"), W_OK), EACCES);
    CHILD_ERR(14, stat(mp("priv/x"), &st), EACCES);
    CHILD_ERR(15, open(mp("priv"), O_RDONLY | O_DIRECTORY), EACCES);
    struct timespec old[2] = {{1000, 0}, {1000, 0}};
    CHILD_ERR(16, utimensat(AT_FDCWD, mp("ro/pub"), old, 0), EPERM);
    CHILD_ERR(17, utimensat(AT_FDCWD, mp("ro/pub"), NULL, 0), EACCES);
    /* What others may do, they can: so the denials above come from the
     * modes, not from the mount refusing this user altogether. */
    CHILD_OK(18, stat(mp("ro/secret"), &st));
    if (st.st_uid != 0 || (st.st_mode & 07777) != 0600) {
        snprintf(msg, cap, "check 18: ro/secret has uid %u mode 0%o",
                 (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        return 18;
    }
    int fd;
    char buf[16];
    CHILD_OK(19, fd = open(mp("ro/pub"), O_RDONLY));
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n != 3 || memcmp(buf, "pub", 3) != 0) {
        snprintf(msg, cap, "check 19: read of ro/pub gave %zd", n);
        return 19;
    }
    CHILD_OK(20, fd = open(mp("rw/mine"), O_CREAT | O_EXCL | O_WRONLY, 0644));
    CHILD_OK(21, write(fd, "mine", 4));
    CHILD_OK(22, close(fd));
    CHILD_OK(23, mkdir(mp("rw/mydir"), 0755));
    CHILD_OK(24, fd = open(mp("rw/mydir/deep"), O_CREAT | O_WRONLY, 0600));
    CHILD_OK(25, close(fd));
    CHILD_OK(26, chmod(mp("rw/mine"), 0640));         /* the owner may */
    CHILD_ERR(27, chown(mp("rw/mine"), 0, 0), EPERM); /* but not give away */
    CHILD_ERR(28, open(mp("rw/mydir/../../ro/secret"), O_RDONLY), EACCES);
    return 0;
}

Test(sys, other_users_get_eacces_from_the_modes_and_own_what_they_make) {
    SYS(mkdir(mp("ro"), 0755));
    write_file(mp("ro/secret"), "s");
    SYS(chmod(mp("ro/secret"), 0600));
    write_file(mp("ro/pub"), "pub");
    SYS(chmod(mp("ro/pub"), 0644));
    SYS(mkdir(mp("rw"), 0777));
    SYS(chmod(mp("rw"), 0777));
    SYS(mkdir(mp("priv"), 0700));
    write_file(mp("priv/x"), "x");

    int p[2];
    SYS(pipe(p));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(p[0]);
        char msg[512] = "";
        int rc = nobody_checks(msg, sizeof msg);
        ssize_t w = write(p[1], msg, strlen(msg));
        (void)w;
        _exit(rc);
    }
    close(p[1]);
    char msg[512];
    ssize_t n = read(p[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = 0;
    close(p[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child as nobody died (status %d)",
              status);
    cr_assert_eq(WEXITSTATUS(status), 0, "as nobody: %s", msg);

    struct stat st = stat_of(mp("rw/mine"));
    cr_assert_eq(st.st_uid, NOBODY, "rw/mine owned by uid %u", st.st_uid);
    cr_assert_eq(st.st_gid, NOBODY, "rw/mine owned by gid %u", st.st_gid);
    cr_assert_eq(st.st_mode, S_IFREG | 0640);
    cr_assert_eq(st.st_size, 4);
    st = stat_of(mp("rw/mydir"));
    cr_assert(S_ISDIR(st.st_mode) && st.st_uid == NOBODY && st.st_gid == NOBODY,
              "rw/mydir: uid %u gid %u", st.st_uid, st.st_gid);
    cr_assert_eq(stat_of(mp("rw/mydir/deep")).st_uid, NOBODY);
    /* The denied calls left nothing behind. */
    SYS_ERR(stat(mp("ro/new"), &st), ENOENT);
    SYS_ERR(stat(mp("ro/newdir"), &st), ENOENT);
    SYS_ERR(stat(mp("ro/pub2"), &st), ENOENT);
    SYS_ERR(lstat(mp("ro/link"), &st), ENOENT);
    expect_file(mp("ro/pub"), "pub");
    cr_assert_eq(stat_of(mp("ro/pub")).st_mode, S_IFREG | 0644);
    SYS_ERR(getxattr(mp("ro/pub"), "user.x", NULL, 0), ENODATA);
    cr_assert_neq(stat_of(mp("ro/pub")).st_mtime, 1000); /* utimensat */
    remount();
    st = stat_of(mp("rw/mine"));
    cr_assert(st.st_uid == NOBODY && st.st_gid == NOBODY,
              "after remount rw/mine is uid %u gid %u", st.st_uid, st.st_gid);
    expect_file(mp("rw/mine"), "mine");
}
