/*
 * The chunk sweep on real mounts (fs/sweep.c), with a one-second interval
 * and a two-second grace: chunks nothing refers to any more are reclaimed,
 * files stay byte-identical, a file written slowly keeps the chunks it
 * stored before its inode was written, and a sweep that cannot list every
 * member of a cluster reclaims nothing.
 */
#include "tests/fs/fsutil.h"

#include <fcntl.h>
#include <sys/xattr.h>

#define SWEEP_OPTS "sweep=1,sweep_grace=2"

static qmount g_m;
static qcluster g_c;
static qmount g_b; /* a second mount of the cluster, not sweeping */

static void setup_embedded(void) {
    qmount_dirs(&g_m, "qfs-sw");
    qmount_start(&g_m, NULL, SWEEP_OPTS);
}

static void teardown(void) {
    qmount_cleanup(&g_m);
    if (g_b.dir[0]) qmount_cleanup(&g_b);
    qcluster_stop(&g_c);
}

TestSuite(sweep, .init = setup_embedded, .fini = teardown, .timeout = 300);

static void setup_cluster(void) {
    kv_log_set_level(KV_LOG_ERROR);
    qcluster_start(&g_c, 3);
    qmount_dirs(&g_m, "qfs-swa");
    qmount_dirs(&g_b, "qfs-swb");
    qmount_start(&g_m, g_c.join, "n=3,r=2,w=2," SWEEP_OPTS);
    qmount_start(&g_b, g_c.join, "n=3,r=2,w=2,sweep=0");
}

TestSuite(sweepcl, .init = setup_cluster, .fini = teardown, .timeout = 300);

#define SH_OK(dir, ...) cr_assert_eq(sh(dir, __VA_ARGS__), 0, __VA_ARGS__)

/* A field of user.quorumfs.sweep on the mount's root. */
static long long stat_of(const char *field) {
    char v[512];
    ssize_t n = getxattr(g_m.dir, "user.quorumfs.sweep", v, sizeof v - 1);
    cr_assert_gt(n, 0, "getxattr user.quorumfs.sweep: %s", strerror(errno));
    v[n] = 0;
    char key[32];
    snprintf(key, sizeof key, "%s=", field);
    for (const char *p = v; (p = strstr(p, key)) != NULL; p++)
        if (p == v || p[-1] == ' ') return atoll(p + strlen(key));
    cr_assert_fail("no %s in '%s'", field, v);
    return -1;
}

/* Wait until field reaches at least want (30 s at most). */
static void wait_for(const char *field, long long want) {
    for (int i = 0; i < 600 && stat_of(field) < want; i++) sleep_ms(50);
    cr_assert_geq(stat_of(field), want, "%s stayed at %lld, below %lld", field,
                  stat_of(field), want);
}

/* Wait for k more sweeps to end (finished or given up). */
static void wait_sweeps(int k) {
    long long want = stat_of("runs") + stat_of("failed") + k;
    for (int i = 0; i < 600; i++) {
        if (stat_of("runs") + stat_of("failed") >= want) return;
        sleep_ms(50);
    }
    cr_assert_fail("no sweep ended in 30 s");
}

Test(sweep, chunks_nothing_refers_to_are_reclaimed_and_files_stay_intact) {
    /* 6 + 3 chunks, then 6 more: a is rewritten (its first 6 go) and b
     * removed (its 3 go). */
    SH_OK(g_m.dir, "head -c 6M /dev/urandom > a && head -c 3M /dev/urandom > b"
                   " && head -c 6M /dev/urandom > /tmp/qfs-sw-a.$PPID && "
                   "cp /tmp/qfs-sw-a.$PPID a && rm b");
    /* And a directory of 300 files (split into shards), removed. */
    SH_OK(g_m.dir, "mkdir d && for i in $(seq 300); do : > d/f$i; done && "
                   "mkdir keep && : > keep/x && rm -r d");
    sleep_ms(2500); /* past the grace of everything written */
    /* Objects nothing names (b, d and its files) go at the second sweep
     * that finds them unnamed, the chunks only b referred to at the next. */
    wait_for("inodes_reclaimed_total", 302);
    wait_for("reclaimed_total", 9);
    wait_sweeps(1);
    cr_assert_eq(stat_of("failed"), 0);
    cr_assert_eq(stat_of("reclaimed_total"), 9, "reclaimed %lld of 9",
                 stat_of("reclaimed_total"));
    cr_assert_eq(stat_of("inodes_reclaimed_total"), 302,
                 "reclaimed %lld of 302 inodes",
                 stat_of("inodes_reclaimed_total"));
    wait_sweeps(1);
    cr_assert_eq(stat_of("chunks"), 6, "live chunks: %lld", stat_of("chunks"));
    cr_assert_eq(stat_of("kept"), 6);
    SH_OK(g_m.dir, "cmp a /tmp/qfs-sw-a.$PPID && rm /tmp/qfs-sw-a.$PPID");
    /* And across a remount, from the store alone. */
    cr_assert_eq(qmount_stop(&g_m), 0);
    qmount_start(&g_m, NULL, SWEEP_OPTS);
    SH_OK(g_m.dir,
          "test $(stat -c %%s a) = 6291456 && test ! -e b && "
          "test -e keep/x && test \"$(ls)\" = \"$(printf 'a\\nkeep')\"");
}

/* Chunks a long write stores before its inode is written (more than 16
 * dirty ones) are referred to by the inode within a fraction of the grace,
 * also while the writer sits idle with the file open, so sweeps running
 * meanwhile leave them alone. One descriptor, never closed or duplicated
 * until the end: no flush writes the inode. */
static uint8_t pat(uint64_t off) {
    uint64_t x = (off / 8) * 0x9e3779b97f4a7c15ull;
    return (uint8_t)((x ^ (x >> 29)) >> (8 * (off % 8)));
}

static void put_range(int fd, uint64_t from, uint64_t to) {
    static uint8_t buf[1 << 20];
    for (uint64_t off = from; off < to; off += sizeof buf) {
        size_t n = (size_t)KV_MIN((uint64_t)sizeof buf, to - off);
        for (size_t i = 0; i < n; i++) buf[i] = pat(off + i);
        cr_assert_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
    }
}

static void expect_pattern(const char *path, uint64_t size) {
    static uint8_t buf[1 << 20];
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    for (uint64_t off = 0; off < size;) {
        ssize_t n = pread(fd, buf, sizeof buf, (off_t)off);
        cr_assert_gt(n, 0, "read at %llu: %s", (unsigned long long)off,
                     n < 0 ? strerror(errno) : "end of file");
        for (ssize_t i = 0; i < n; i++)
            cr_assert_eq(buf[i], pat(off + (uint64_t)i), "byte %llu differs",
                         (unsigned long long)(off + (uint64_t)i));
        off += (uint64_t)n;
    }
    close(fd);
}

Test(sweep, a_file_written_slowly_keeps_its_chunks_through_sweeps) {
    char path[256];
    snprintf(path, sizeof path, "%s/slow", g_m.dir);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    cr_assert_geq(fd, 0);
    long long runs = stat_of("runs");
    put_range(fd, 0, 20 << 20);
    sleep_ms(3500); /* idle, the file open, its stored chunks pending */
    put_range(fd, 20 << 20, 40 << 20);
    sleep_ms(3500);
    cr_assert_eq(close(fd), 0);
    cr_assert_geq(stat_of("runs"), runs + 3, "sweeps ran meanwhile");
    cr_assert_eq(stat_of("failed"), 0);
    cr_assert_eq(stat_of("reclaimed_total"), 0, "a live chunk was reclaimed");
    wait_sweeps(1);
    expect_pattern(path, 40 << 20);
}

Test(sweepcl, one_mount_sweeps_what_another_wrote_and_a_dead_node_stops_it) {
    SH_OK(g_b.dir, "head -c 4M /dev/urandom > /tmp/qfs-swc.$PPID && "
                   "cp /tmp/qfs-swc.$PPID keep && head -c 2M /dev/urandom > "
                   "gone && rm gone");
    wait_for("reclaimed_total", 2);
    wait_sweeps(1);
    cr_assert_eq(stat_of("failed"), 0, "a sweep gave up");
    cr_assert_eq(stat_of("reclaimed_total"), 2);
    SH_OK(g_b.dir, "cmp keep /tmp/qfs-swc.$PPID");
    SH_OK(g_m.dir, "cmp keep /tmp/qfs-swc.$PPID");

    /* With a member down a sweep cannot see every copy: it gives up
     * before reclaiming anything, and the files stay. */
    SH_OK(g_b.dir, "head -c 2M /dev/urandom > gone2 && rm gone2");
    qnode_kill(&g_c.n[2]);
    long long failed = stat_of("failed");
    sleep_ms(2500);
    for (int i = 0; i < 600 && stat_of("failed") == failed; i++) sleep_ms(50);
    cr_assert_gt(stat_of("failed"), failed, "no sweep gave up");
    cr_assert_eq(stat_of("reclaimed_total"), 2);
    SH_OK(g_m.dir, "cmp keep /tmp/qfs-swc.$PPID && rm /tmp/qfs-swc.$PPID");
}

/* A mount's version overtaken by another mount's: B rewrites a file A
 * has open with a change, and a sweep takes the chunks A's version took
 * from its read (nothing stored refers to them any more). A's close must
 * fail with EIO rather than write a version that points at nothing. No
 * process is forked while A's descriptor is open: a child's copy of it,
 * closed, would flush A's version early. */
static void write_random(const char *path, size_t n) {
    static uint8_t buf[1 << 20];
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    uint64_t x = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull | 1;
    for (size_t off = 0; off < n; off += sizeof buf) {
        for (size_t i = 0; i < sizeof buf; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = (uint8_t)x;
        }
        cr_assert_eq(write(fd, buf, sizeof buf), (ssize_t)sizeof buf);
    }
    cr_assert_eq(close(fd), 0);
}

Test(sweepcl, a_version_whose_chunks_were_reclaimed_fails_at_close) {
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/f", g_m.dir);
    snprintf(b, sizeof b, "%s/f", g_b.dir);
    write_random(b, 3 << 20);
    sleep_ms(2500); /* its chunks are older than the grace */
    int fd = open(a, O_WRONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open: %s", strerror(errno));
    cr_assert_eq(pwrite(fd, "changed", 7, 1 << 20), 7); /* chunk 1 */
    long long before = stat_of("reclaimed_total");
    write_random(b, 3 << 20); /* the same object, rewritten */
    wait_for("reclaimed_total", before + 3);
    errno = 0;
    int rc = close(fd);
    cr_assert_eq(rc, -1, "close wrote a version whose chunks are gone");
    cr_assert_eq(errno, EIO, "close: %s", strerror(errno));
}
