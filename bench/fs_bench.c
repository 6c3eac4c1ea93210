/*
 * fs_bench: file system workloads on quorumfs mounts, next to ext4.
 *
 * By default one run measures three targets: ext4 (a fresh directory under
 * /var/tmp), quorumfs-embedded (`quorumfs mount -f --data D MNT`, a mount
 * with its own single-node store) and quorumfs-cluster (three `quorumfs
 * node` processes on loopback and `quorumfs mount -f --join` of them, N=3
 * R=2 W=2). --dir measures any directory. ext4 runs first, so each later
 * row can show its ratio to ext4's.
 *
 * Workloads run one after the other on each target: small files (create
 * with 1 and 4 threads, stat, read, unlink), a large directory (readdir,
 * ls -l), a big file (sequential write and read, random 4 KiB reads and
 * writes) and cp -r of a source tree. Everything written is cut from a
 * pool of random bytes, so a compressing store gains nothing, and
 * everything read back is compared with what was written.
 *
 * Every process it starts has a process group of its own and is killed by
 * the kernel if this program dies (PR_SET_PDEATHSIG). At the end of each
 * target, on errors and on SIGINT/SIGTERM, each mount is unmounted
 * (fusermount3 -u) and its processes are stopped. A workload is stopped at
 * --workload-timeout; if a call on the filesystem is still stuck 30 s
 * later, a watchdog thread kills the target's processes, which fails the
 * call (ENOTCONN) and ends the target.
 *
 * Options, workloads and results: docs/PERFORMANCE.md, "Filesystem
 * benchmark".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/benchutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define MAX_RESULTS 96
#define CLUSTER_NODES 3
#define SMALL_SIZE 4096u         /* bytes per small file */
#define BIG_IO (1u << 20)        /* sequential I/O size */
#define RAND_IO 4096u            /* random I/O size */
#define POOL_SIZE (16u << 20)    /* random bytes that file contents come from */
#define GIVE_UP 100              /* a workload stops at this many errors */
#define HARD_GRACE_S 30          /* past the deadline: kill the filesystem */
#define SETUP_TIMEOUT_S 30       /* a mount, or the cluster, becomes usable */
#define FUSE_MAGIC 0x65735546    /* statfs f_type of a FUSE mount */
#define EXT4_MAGIC 0xEF53        /* ext2, ext3 and ext4 */
#define LISTING_PASSES 3         /* readdir and ls -l: the median of these */
#define PATH_BUF (PATH_MAX + 32) /* a directory's path and a name in it */
#define HIST_SUB_BITS 5          /* percentiles within about 1.5% */

/* Error codes besides errno values (which are positive here). */
#define ERR_SHORT (-1) /* a read or write moved fewer bytes than asked */
#define ERR_DATA (-2)  /* a read returned other bytes than were written */
#define ERR_COUNT (-3) /* a listing or copy holds other entries */
#define ERR_EXIT (-4)  /* a program exited with a failure status */

/* ---- configuration ------------------------------------------------------- */

enum { T_EXT4, T_EMBEDDED, T_CLUSTER, T_DIR, T_COUNT };
static const char *const tgt_names[T_COUNT] = {"ext4", "quorumfs-embedded",
                                               "quorumfs-cluster", "dir"};

enum {
    W_CREATE,
    W_STAT,
    W_READ,
    W_UNLINK,
    W_READDIR,
    W_LSL,
    W_SEQWRITE,
    W_SEQREAD,
    W_RANDREAD,
    W_RANDWRITE,
    W_CPR,
    W_COUNT
};
static const char *const wl_names[W_COUNT] = {
    "create",   "stat",    "read",     "unlink",    "readdir", "ls-l",
    "seqwrite", "seqread", "randread", "randwrite", "cp-r"};

typedef struct cfg {
    bool run_tgt[T_COUNT];
    bool run_wl[W_COUNT];
    int files;           /* small files per create thread */
    int entries;         /* entries of the readdir and ls -l directory */
    int big_mb;          /* MiB of the big file */
    double rand_secs;    /* length of randread and randwrite */
    double wl_timeout;   /* seconds before a workload is stopped */
    char qbin[PATH_MAX]; /* the quorumfs binary */
    char ls[PATH_MAX], cp[PATH_MAX];
    char work[PATH_MAX];     /* the run directory is made in here */
    char ext4_dir[PATH_MAX]; /* "" : the run directory */
    char dir[PATH_MAX];      /* --dir */
    char dir_name[64];       /* target name of --dir */
    char cp_src[PATH_MAX];
    bool json, keep;
} cfg;

/* ---- small helpers ------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    if (n == 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Is path (absolute, no symlinks) a mount point? From /proc/self/mounts,
 * whose fields escape space, tab, newline and backslash as \ooo. */
static bool is_mounted(const char *path) {
    FILE *f = fopen("/proc/self/mounts", "r");
    if (!f) return false;
    char line[PATH_MAX * 2 + 256];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char *mp = strchr(line, ' ');
        if (!mp) continue;
        mp++;
        char *end = strchr(mp, ' ');
        if (!end) continue;
        *end = '\0';
        char *w = mp;
        for (char *r = mp; *r; r++) {
            if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] && r[3]) {
                *w++ =
                    (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
                r += 3;
            } else {
                *w++ = *r;
            }
        }
        *w = '\0';
        found = strcmp(mp, path) == 0;
    }
    fclose(f);
    return found;
}

/* What file system holds path: the type of its mount in
 * /proc/self/mounts (the longest mount point above it), else the statfs
 * magic. *magic is the statfs f_type (0 if statfs failed). */
static void fs_type(const char *path, char *out, size_t len, long *magic) {
    struct statfs sf;
    *magic = 0;
    if (statfs(path, &sf) != 0) {
        snprintf(out, len, "unknown (%s)", strerror(errno));
        return;
    }
    *magic = (long)sf.f_type;
    snprintf(out, len, "f_type 0x%lx", (unsigned long)sf.f_type);
    char real[PATH_MAX];
    FILE *f = realpath(path, real) ? fopen("/proc/self/mounts", "r") : NULL;
    if (!f) return;
    char line[PATH_MAX * 2 + 256], dev[256], mp[PATH_MAX], type[64];
    size_t best = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%255s %4095s %63s", dev, mp, type) != 3) continue;
        size_t l = strlen(mp);
        bool under =
            strcmp(mp, "/") == 0 ||
            (strncmp(real, mp, l) == 0 && (real[l] == '/' || real[l] == '\0'));
        if (under && l >= best) {
            best = l;
            snprintf(out, len, "%s", type);
        }
    }
    fclose(f);
}

/* ---- errors ----------------------------------------------------------------
 * Errors are counted in a bu_tally by the call that failed and its code
 * (errno, or ERR_*); a workload goes on after an error and stops at
 * GIVE_UP of them.
 */

static void errs_add(bu_tally *t, const char *op, int code) {
    bu_tally_add(t, op, code, 1, NULL);
}

/* Short name of a code: "EIO", "short", ... */
static const char *code_short(int code) {
    switch (code) {
    case ERR_SHORT:
        return "short";
    case ERR_DATA:
        return "wrong-data";
    case ERR_COUNT:
        return "wrong-count";
    case ERR_EXIT:
        return "exit-status";
    }
    const char *s = strerrorname_np(code);
    return s ? s : "errno?";
}

static const char *code_text(int code) {
    switch (code) {
    case ERR_SHORT:
        return "fewer bytes than asked";
    case ERR_DATA:
        return "other bytes than were written";
    case ERR_COUNT:
        return "other entries than expected";
    case ERR_EXIT:
        return "failure exit status";
    }
    return strerror(code);
}

/* A kind of error in JSON: "open EIO" (bu_tally_name_fn). */
static void kind_name(const bu_tally *t, int i, char *buf, size_t len) {
    snprintf(buf, len, "%s %s", t->e[i].op, code_short(t->e[i].code));
}

/* A kind of error in a note: "open EIO (Input/output error)". */
static void kind_text(const bu_tally *t, int i, char *buf, size_t len) {
    snprintf(buf, len, "%s %s (%s)", t->e[i].op, code_short(t->e[i].code),
             code_text(t->e[i].code));
}

/* ---- child processes -------------------------------------------------------
 * The signal handler, the watchdog thread and the atexit hook must reach
 * every child, so the table is process-wide: the program's edge. A
 * child's group is its target (-1 for none) and its kind says what it is.
 */

enum { K_FS, K_JOB, K_UTIL }; /* a filesystem's; ls or cp; fusermount */

static bu_procs g_procs = BU_PROCS_INIT;

static void on_signal(int sig) {
    bu_procs_signal(&g_procs, sig);
}

static bool stopping(void) {
    return bu_procs_stopping(&g_procs);
}

/* The first line of a file into out ("" if none). */
static void first_line(const char *path, char *out, size_t len) {
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(out, (int)len, f)) out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

/* ---- watchdog --------------------------------------------------------------
 * Armed for each workload with its deadline. At the deadline it kills the
 * workload's ls or cp; HARD_GRACE_S later, if the workload has still not
 * returned (a call stuck in the filesystem), it kills the target's
 * filesystem processes, which fails the stuck call.
 */

/* Guards the watchdog's state below but g_deadline, which is atomic.
 * Taken before g_procs.lock where both are held. */
static pthread_mutex_t g_watch_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t g_deadline = UINT64_MAX; /* ns; workloads poll it */
static uint64_t g_hard_ns;                       /* 0: disarmed */
static int g_watch_tgt;
static bool g_jobs_killed, g_fs_killed, g_watch_quit;
static pthread_t g_watchdog;
static bool g_watchdog_on;

static void *watchdog_main(void *arg) {
    for (;;) {
        pthread_mutex_lock(&g_watch_lock);
        if (g_watch_quit) {
            pthread_mutex_unlock(&g_watch_lock);
            return NULL;
        }
        uint64_t t = bu_now_ns();
        if (g_hard_ns && t >= atomic_load(&g_deadline) && !g_jobs_killed) {
            bu_procs_kill(&g_procs, K_JOB, -1);
            g_jobs_killed = true;
        }
        if (g_hard_ns && t >= g_hard_ns && !g_fs_killed) {
            bu_procs_kill(&g_procs, K_FS, g_watch_tgt);
            bu_procs_kill(&g_procs, K_JOB, -1);
            g_fs_killed = true;
        }
        pthread_mutex_unlock(&g_watch_lock);
        bu_sleep_ms(50);
    }
}

static void watch_arm(int tgt, double secs) {
    pthread_mutex_lock(&g_watch_lock);
    uint64_t t = bu_now_ns(), d = t + (uint64_t)(secs * 1e9);
    atomic_store(&g_deadline, d);
    g_hard_ns = d + (uint64_t)HARD_GRACE_S * 1000000000u;
    g_watch_tgt = tgt;
    g_jobs_killed = g_fs_killed = false;
    pthread_mutex_unlock(&g_watch_lock);
}

/* Disarm; true if the filesystem's processes were killed. */
static bool watch_disarm(void) {
    pthread_mutex_lock(&g_watch_lock);
    atomic_store(&g_deadline, UINT64_MAX);
    g_hard_ns = 0;
    bool fired = g_fs_killed;
    pthread_mutex_unlock(&g_watch_lock);
    return fired;
}

/* Should a workload loop stop: a signal, or the deadline (*timed_out). */
static bool halt(bool *timed_out) {
    if (stopping()) return true;
    if (bu_now_ns() >=
        atomic_load_explicit(&g_deadline, memory_order_relaxed)) {
        *timed_out = true;
        return true;
    }
    return false;
}

/* ---- file contents ---------------------------------------------------------
 * Every byte written comes from g_pool (random, so incompressible). Small
 * file i of set s holds SMALL_SIZE bytes from small_src(s, i); byte off of
 * the big file is big_src(off)[0], each 1 MiB block cut from its own place.
 */

static uint8_t *g_pool;

static const uint8_t *small_src(int set, int i) {
    uint64_t x = (uint64_t)set * 1000003u + (uint64_t)i;
    return g_pool + (x * 2654435761u) % (POOL_SIZE - SMALL_SIZE);
}

static const uint8_t *big_src(uint64_t off) {
    uint64_t block = off / BIG_IO;
    return g_pool +
           (block * 40503u * 4096u) % (POOL_SIZE - BIG_IO + 1) / 64 * 64 +
           off % BIG_IO;
}

/* Write all of p: 0, an errno value, or ERR_SHORT. */
static int write_all(int fd, const uint8_t *p, size_t len) {
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno;
        if (w == 0) return ERR_SHORT;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Read up to len bytes (fewer only at end of file): the count, or
 * -errno. */
static ssize_t read_all(int fd, uint8_t *p, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, p + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* ---- results ------------------------------------------------------------- */

typedef struct result {
    char target[64];
    int tgt, wl, threads;
    uint64_t ops;       /* operations (or entries, files) counted */
    uint64_t bytes;     /* bytes moved, for MB/s */
    double secs;        /* measured wall time */
    double ops_per_sec; /* NAN where it does not apply */
    double mb_per_sec;  /* 10^6 bytes per second; NAN where it does not apply */
    double p50, p99;    /* microseconds per operation; NAN if not per-op */
    double vs_ext4;     /* throughput over ext4's; NAN without ext4 */
    bu_tally errs;
    bool stopped; /* reached the workload timeout */
    bool failed;  /* nothing could be measured */
    char note[768];
} result;

typedef struct results {
    result r[MAX_RESULTS];
    int n;
} results;

static void note_add(result *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note_add(result *r, const char *fmt, ...) {
    size_t used = strlen(r->note);
    if (used && used + 2 < sizeof r->note) {
        memcpy(r->note + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note + used, sizeof r->note - used, fmt, ap);
    va_end(ap);
}

static const result *find_row(const results *rs, const char *target, int wl,
                              int threads) {
    for (int i = 0; i < rs->n; i++)
        if (!strcmp(rs->r[i].target, target) && rs->r[i].wl == wl &&
            rs->r[i].threads == threads)
            return &rs->r[i];
    return NULL;
}

/* The throughput a ratio compares: MB/s where there is one, else ops/s. */
static double rate_of(const result *r) {
    return !isnan(r->mb_per_sec) ? r->mb_per_sec : r->ops_per_sec;
}

static void print_json(const result *r) {
    printf("{\"target\":");
    bu_json_str(stdout, r->target);
    printf(",\"workload\":\"%s\",\"threads\":%d,\"ops\":%" PRIu64
           ",\"bytes\":%" PRIu64,
           wl_names[r->wl], r->threads, r->ops, r->bytes);
    bu_json_num(stdout, "seconds", r->secs);
    bu_json_num(stdout, "ops_per_sec", r->ops_per_sec);
    bu_json_num(stdout, "mb_per_sec", r->mb_per_sec);
    bu_json_num(stdout, "p50_us", r->p50);
    bu_json_num(stdout, "p99_us", r->p99);
    bu_json_num(stdout, "vs_ext4", r->vs_ext4);
    printf(",\"errors\":%" PRIu64 ",\"error_kinds\":", r->errs.total);
    bu_tally_json(stdout, &r->errs, kind_name);
    printf(",\"stopped\":%s,\"failed\":%s,\"note\":",
           r->stopped ? "true" : "false", r->failed ? "true" : "false");
    bu_json_str(stdout, r->note);
    printf("}\n");
}

static const char *const row_fmt =
    "%-17s %-9s %3s %11s %9s %9s %9s %10s %8s  %s\n";

static void print_row_header(void) {
    printf(row_fmt, "target", "workload", "thr", "ops/s", "MB/s", "seconds",
           "p50_us", "p99_us", "vs_ext4", "errors");
}

static void print_row(const result *r) {
    char thr[8], ops[24], mb[24], secs[24], p50[24], p99[24], ratio[24],
        err[48];
    snprintf(thr, sizeof thr, "%d", r->threads);
    bu_fmt_num(ops, sizeof ops, r->ops_per_sec, "%.0f");
    bu_fmt_num(mb, sizeof mb, r->mb_per_sec, "%.1f");
    bu_fmt_num(secs, sizeof secs, r->secs, "%.4g");
    bu_fmt_num(p50, sizeof p50, r->p50, "%.1f");
    bu_fmt_num(p99, sizeof p99, r->p99, "%.1f");
    bu_fmt_num(ratio, sizeof ratio, r->vs_ext4,
               r->vs_ext4 >= 1 ? "%.2fx" : "%.2gx");
    if (r->errs.total)
        snprintf(err, sizeof err, "%" PRIu64 " %s", r->errs.total,
                 code_short(r->errs.e[0].code));
    else
        snprintf(err, sizeof err, "%s", r->failed ? "failed" : "0");
    if (r->failed) snprintf(ops, sizeof ops, "FAILED");
    printf(row_fmt, r->target, wl_names[r->wl], thr, ops, mb, secs, p50, p99,
           ratio, err);
}

/* Errors and notes under a row; on stderr in --json mode, where each line
 * names its row. */
static void print_row_notes(FILE *f, const result *r, bool label) {
    char who[96] = "";
    if (label)
        snprintf(who, sizeof who, "%s %s %d: ", r->target, wl_names[r->wl],
                 r->threads);
    if (r->errs.total) {
        fprintf(f, "    %serrors:", who);
        bu_tally_print(f, &r->errs, kind_text);
        fprintf(f, "\n");
    }
    if (r->stopped) fprintf(f, "    %sSTOPPED at the workload timeout\n", who);
    if (r->note[0]) fprintf(f, "    %snote: %s\n", who, r->note);
}

static void emit(const cfg *c, results *rs, result *r) {
    r->vs_ext4 = NAN;
    const result *e = find_row(rs, tgt_names[T_EXT4], r->wl, r->threads);
    if (e && r->tgt != T_EXT4 && !e->failed && !r->failed && !e->errs.total &&
        rate_of(e) > 0)
        r->vs_ext4 = rate_of(r) / rate_of(e);
    if (c->json) {
        print_json(r);
        print_row_notes(stderr, r, true);
    } else {
        print_row(r);
        print_row_notes(stdout, r, false);
    }
    fflush(stdout);
    if (rs->n < MAX_RESULTS) rs->r[rs->n++] = *r;
}

/* ---- targets ------------------------------------------------------------- */

typedef struct target {
    int id;
    char name[64];
    char home[PATH_MAX]; /* under the run directory: logs, data, mount point */
    char root[PATH_MAX]; /* the directory measured in */
    char mnt[PATH_MAX];  /* the FUSE mount point, "" if none */
    bool root_ours;      /* root was made here and is removed at the end */
    int mount_slot;      /* -1: none */
    int node_slots[CLUSTER_NODES];
    int nnodes;
    bool dead; /* its processes died or were killed: skip the rest */
    int seq;   /* numbers the fresh directories */
    /* The small files of the last 1-thread create, for stat/read/unlink. */
    char small_dir[PATH_MAX];
    int small_set;
    uint8_t *small_made;
    bool small_ready;
    /* The directory of --entries entries for readdir and ls -l. */
    char entries_dir[PATH_MAX];
    int entries_made;
    bool entries_ready;
    /* The big file. */
    char big[PATH_MAX];
    bool big_ready;
} target;

static char g_run[PATH_MAX];        /* the run directory */
static char g_fusermount[PATH_MAX]; /* fusermount3 (or fusermount); "" none */
static char g_mounts[4][PATH_MAX];  /* unmounted at exit if still mounted */
static bool g_keep;

static FILE *info_out(const cfg *c) {
    return c->json ? stderr : stdout;
}

static void mount_register(const char *mnt) {
    for (size_t i = 0; i < ARRAY_LEN(g_mounts); i++)
        if (!strcmp(g_mounts[i], mnt)) return;
    for (size_t i = 0; i < ARRAY_LEN(g_mounts); i++)
        if (!g_mounts[i][0]) {
            snprintf(g_mounts[i], PATH_MAX, "%s", mnt);
            return;
        }
}

static void mount_forget(const char *mnt) {
    for (size_t i = 0; i < ARRAY_LEN(g_mounts); i++)
        if (!strcmp(g_mounts[i], mnt)) g_mounts[i][0] = '\0';
}

/* Run fusermount3 -u [-z] on mnt and wait for it (30 s at most); without
 * fusermount3, umount2. Its output goes to log (NULL: nowhere). */
static void fusermount_u(const char *mnt, bool lazy, const char *log) {
    if (!g_fusermount[0]) {
        if (umount2(mnt, lazy ? MNT_DETACH : 0) != 0)
            fprintf(stderr, "fs_bench: cannot unmount '%s': %s\n", mnt,
                    strerror(errno));
        return;
    }
    char *argv[5];
    int n = 0;
    argv[n++] = g_fusermount;
    argv[n++] = "-u";
    if (lazy) argv[n++] = "-z";
    argv[n++] = (char *)mnt;
    argv[n] = NULL;
    int slot = bu_spawn(&g_procs, -1, K_UTIL, "fusermount3", argv, log, log);
    if (slot < 0) return;
    bool killed;
    if (!bu_child_wait(&g_procs, slot, 30000))
        fprintf(stderr, "fs_bench: fusermount3 -u '%s' hangs; killing it\n",
                mnt);
    bu_child_stop(&g_procs, slot, 1000, &killed);
}

/* Unmount mnt if mounted: fusermount3 -u (three tries), then -u -z.
 * true if it is no longer mounted. */
static bool unmount(const char *mnt, const char *log) {
    for (int i = 0; i < 3 && is_mounted(mnt); i++) {
        if (i) bu_sleep_ms(1000);
        fusermount_u(mnt, false, log);
    }
    if (is_mounted(mnt)) {
        fprintf(stderr, "fs_bench: '%s' is still mounted; lazy unmount\n", mnt);
        if (log) bu_print_log_tail(stderr, log, "    ", 4);
        fusermount_u(mnt, true, log);
    }
    bool gone = !is_mounted(mnt);
    if (gone) mount_forget(mnt);
    return gone;
}

/* Is the filesystem process (or node) in slot still running? If not,
 * report it with its log. */
static bool fs_alive(const cfg *c, target *t, int slot, const char *when) {
    if (slot < 0 || !bu_child_exited(&g_procs, slot)) return true;
    char how[64], log[PATH_MAX], name[32];
    snprintf(log, sizeof log, "%s", g_procs.c[slot].log);
    snprintf(name, sizeof name, "%s", g_procs.c[slot].name);
    bu_describe_status(bu_child_reap(&g_procs, slot), how, sizeof how);
    fprintf(info_out(c), "%s: '%s' exited (%s) %s\n", t->name, name, how, when);
    bu_print_log_tail(info_out(c), log, "    ", 12);
    if (slot == t->mount_slot) t->mount_slot = -1;
    for (int i = 0; i < t->nnodes; i++)
        if (t->node_slots[i] == slot) t->node_slots[i] = -1;
    return false;
}

/* Are all of t's processes running? */
static bool target_alive(const cfg *c, target *t, const char *when) {
    bool ok = fs_alive(c, t, t->mount_slot, when);
    for (int i = 0; i < t->nnodes; i++)
        ok = fs_alive(c, t, t->node_slots[i], when) && ok;
    return ok;
}

/* Create, write and close a probe file in root, then remove it: 0 or the
 * errno value of the call that failed (named in *op). */
static int probe(const char *root, const char **op) {
    char path[PATH_MAX];
    if (bu_path_fmt(path, sizeof path, "%s/.fs_bench_probe", root)) {
        *op = "path";
        return ENAMETOOLONG;
    }
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        *op = "open";
        return errno;
    }
    int rc = write_all(fd, g_pool, SMALL_SIZE);
    if (close(fd) != 0 && rc == 0) rc = errno;
    if (rc) {
        *op = rc == ERR_SHORT ? "write (short)" : "write or close";
        return rc == ERR_SHORT ? EIO : rc;
    }
    if (unlink(path) != 0) {
        *op = "unlink";
        return errno;
    }
    return 0;
}

/* Start `quorumfs mount -f ...` on t->mnt and wait until it is a FUSE
 * mount where a file can be created, restarting a mount process that
 * exits (a cluster's ring may still be settling), for SETUP_TIMEOUT_S. */
static int mount_start(const cfg *c, target *t, char *const argv[]) {
    char log[PATH_MAX];
    if (bu_path_fmt(log, sizeof log, "%s/mount.log", t->home)) return -1;
    uint64_t t0 = bu_now_ns(),
             deadline = t0 + (uint64_t)SETUP_TIMEOUT_S * 1000000000u;
    int starts = 0, last_err = 0;
    const char *last_op = "";
    bool mounted = false;
    while (!stopping() && bu_now_ns() < deadline) {
        if (t->mount_slot < 0) {
            if (starts++) bu_sleep_ms(1000);
            t->mount_slot =
                bu_spawn(&g_procs, t->id, K_FS, "mount", argv, log, log);
            if (t->mount_slot < 0) return -1;
            mount_register(t->mnt);
        }
        if (!fs_alive(c, t, t->mount_slot, "while mounting")) {
            unmount(t->mnt, log);
            mounted = false;
            continue;
        }
        struct statfs sf;
        if (!mounted) {
            mounted = statfs(t->mnt, &sf) == 0 && sf.f_type == FUSE_MAGIC;
            if (mounted)
                fprintf(info_out(c), "%s: mounted %s after %.1f s\n", t->name,
                        t->mnt, bu_secs_since(t0));
            if (!mounted) {
                bu_sleep_ms(20);
                continue;
            }
        }
        last_err = probe(t->mnt, &last_op);
        if (last_err == 0) {
            fprintf(info_out(c),
                    "%s: a file could be created after %.1f s (%d mount "
                    "process%s started)\n",
                    t->name, bu_secs_since(t0), starts, starts > 1 ? "es" : "");
            return 0;
        }
        bu_sleep_ms(200);
    }
    if (!stopping()) {
        fprintf(info_out(c), "%s: not usable after %d s: %s\n", t->name,
                SETUP_TIMEOUT_S,
                !mounted ? "never became a FUSE mount"
                         : "creating a file kept failing");
        if (mounted && last_err)
            fprintf(info_out(c), "    last error: %s: %s (%s)\n", last_op,
                    code_short(last_err), strerror(last_err));
        bu_print_log_tail(info_out(c), log, "    ", 12);
    }
    return -1;
}

static int make_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "fs_bench: cannot create '%s': %s\n", path,
                strerror(errno));
        return -1;
    }
    return 0;
}

static int start_embedded(const cfg *c, target *t) {
    char data[PATH_MAX];
    if (bu_path_fmt(data, sizeof data, "%s/data", t->home) ||
        bu_path_fmt(t->mnt, sizeof t->mnt, "%s/mnt", t->home) ||
        make_dir(data) || make_dir(t->mnt))
        return -1;
    char *argv[] = {(char *)c->qbin, "--log-level", "warn", "mount", "-f",
                    "--data",        data,          t->mnt, NULL};
    fprintf(info_out(c), "%s: quorumfs mount -f --data %s %s\n", t->name, data,
            t->mnt);
    if (mount_start(c, t, argv)) return -1;
    snprintf(t->root, sizeof t->root, "%s", t->mnt);
    return 0;
}

/* Wait for "serving on ADDR" in a node's log. */
static int node_addr(const cfg *c, target *t, int slot, const char *log,
                     char *addr, size_t len) {
    uint64_t deadline = bu_now_ns() + 15000000000u;
    while (!stopping() && bu_now_ns() < deadline) {
        FILE *f = fopen(log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "serving on ");
            if (at) {
                at += strlen("serving on ");
                size_t l = strcspn(at, " \t\n");
                if (l > 0 && l < len) {
                    snprintf(addr, len, "%.*s", (int)l, at);
                    fclose(f);
                    return 0;
                }
            }
        }
        if (f) fclose(f);
        if (!fs_alive(c, t, slot, "while starting")) return -1;
        bu_sleep_ms(20);
    }
    if (!stopping()) {
        fprintf(info_out(c), "%s: no \"serving on\" line in '%s'\n", t->name,
                log);
        bu_print_log_tail(info_out(c), log, "    ", 12);
    }
    return -1;
}

static int start_cluster(const cfg *c, target *t) {
    char addrs[CLUSTER_NODES][64], join[CLUSTER_NODES * 64 + 8] = "";
    uint64_t t0 = bu_now_ns();
    for (int k = 0; k < CLUSTER_NODES; k++) {
        char data[PATH_MAX], log[PATH_MAX], name[8];
        snprintf(name, sizeof name, "n%d", k);
        if (bu_path_fmt(data, sizeof data, "%s/%s", t->home, name) ||
            bu_path_fmt(log, sizeof log, "%s/%s.log", t->home, name) ||
            make_dir(data))
            return -1;
        char *argv[16] = {(char *)c->qbin,
                          "--log-level",
                          "warn",
                          "node",
                          "--data",
                          data,
                          "--listen",
                          "127.0.0.1:0",
                          "--name",
                          name,
                          "--gossip-ms",
                          "100",
                          NULL};
        if (k > 0) {
            argv[12] = "--join";
            argv[13] = addrs[0];
            argv[14] = NULL;
        }
        int slot = bu_spawn(&g_procs, t->id, K_FS, name, argv, log, log);
        if (slot < 0) return -1;
        t->node_slots[t->nnodes++] = slot;
        if (node_addr(c, t, slot, log, addrs[k], sizeof addrs[k])) return -1;
        size_t used = strlen(join);
        snprintf(join + used, sizeof join - used, "%s%s", k ? "," : "",
                 addrs[k]);
    }
    fprintf(info_out(c), "%s: nodes %s started in %.1f s (gossip 100 ms)\n",
            t->name, join, bu_secs_since(t0));
    if (bu_path_fmt(t->mnt, sizeof t->mnt, "%s/mnt", t->home) ||
        make_dir(t->mnt))
        return -1;
    char *argv[] = {(char *)c->qbin,
                    "--log-level",
                    "warn",
                    "mount",
                    "-f",
                    "--join",
                    join,
                    "-o",
                    "n=3,r=2,w=2",
                    t->mnt,
                    NULL};
    fprintf(info_out(c), "%s: quorumfs mount -f --join %s -o n=3,r=2,w=2 %s\n",
            t->name, join, t->mnt);
    if (mount_start(c, t, argv)) return -1;
    snprintf(t->root, sizeof t->root, "%s", t->mnt);
    return 0;
}

/* A fresh directory for a local file system target: under parent. */
static int start_local(const cfg *c, target *t, const char *parent) {
    if (bu_path_fmt(t->root, sizeof t->root, "%s/fs_bench-%s.XXXXXX", parent,
                    t->id == T_EXT4 ? "ext4" : "dir") ||
        !mkdtemp(t->root)) {
        fprintf(stderr, "fs_bench: cannot create a directory in '%s': %s\n",
                parent, strerror(errno));
        return -1;
    }
    t->root_ours = true;
    char type[96];
    long magic;
    fs_type(t->root, type, sizeof type, &magic);
    fprintf(info_out(c), "%s: %s (%s)\n", t->name, t->root, type);
    if (t->id == T_EXT4 && (magic != EXT4_MAGIC || strcmp(type, "ext4")))
        fprintf(info_out(c),
                "%s: NOTE: '%s' is %s (statfs f_type 0x%lx), not ext4; the "
                "rows named ext4 measure %s\n",
                t->name, t->root, type, (unsigned long)magic, type);
    return 0;
}

static int target_start(const cfg *c, target *t) {
    if (bu_path_fmt(t->home, sizeof t->home, "%s/%s", g_run,
                    tgt_names[t->id]) ||
        make_dir(t->home))
        return -1;
    switch (t->id) {
    case T_EXT4:
        return start_local(c, t, c->ext4_dir[0] ? c->ext4_dir : t->home);
    case T_DIR:
        return start_local(c, t, c->dir);
    case T_EMBEDDED:
        return start_embedded(c, t);
    default:
        return start_cluster(c, t);
    }
}

/* Unmount, stop every process of t, remove what it made (unless --keep).
 * Reports a mount process that did not exit cleanly: a failed write-back
 * at unmount is an error of the filesystem. Returns -1 if something went
 * wrong. */
static int target_stop(const cfg *c, target *t) {
    int rc = 0;
    char log[PATH_MAX] = "";
    bool gone = true;
    if (t->mnt[0]) {
        bu_path_fmt(log, sizeof log, "%s/mount.log", t->home);
        gone = unmount(t->mnt, log);
        if (!gone) rc = -1;
    }
    if (t->mount_slot >= 0) {
        /* After the unmount it writes back what is dirty and exits. */
        bool killed = false;
        int st;
        if (bu_child_wait(&g_procs, t->mount_slot, 60000))
            st = bu_child_reap(&g_procs, t->mount_slot);
        else
            st = bu_child_stop(&g_procs, t->mount_slot, 10000, &killed);
        t->mount_slot = -1;
        /* On our SIGTERM (an interrupted run) its status says nothing. */
        if (!stopping() && (killed || !WIFEXITED(st) || WEXITSTATUS(st) != 0)) {
            char how[64];
            bu_describe_status(st, how, sizeof how);
            fprintf(info_out(c), "%s: the mount process %s (%s)\n", t->name,
                    killed ? "did not exit after the unmount; killed"
                           : "ended badly",
                    how);
            bu_print_log_tail(info_out(c), log, "    ", 12);
            rc = -1;
        }
    }
    for (int i = 0; i < t->nnodes; i++) {
        if (t->node_slots[i] < 0) continue;
        bool killed;
        char nlog[PATH_MAX];
        snprintf(nlog, sizeof nlog, "%s", g_procs.c[t->node_slots[i]].log);
        int st = bu_child_stop(&g_procs, t->node_slots[i], 15000, &killed);
        t->node_slots[i] = -1;
        if (killed) {
            fprintf(info_out(c), "%s: node n%d did not stop; killed\n", t->name,
                    i);
            bu_print_log_tail(info_out(c), nlog, "    ", 6);
        }
        (void)st;
    }
    if (!c->keep && gone) {
        if (t->root_ours) bu_rm_rf(t->root);
        bu_rm_rf(t->home);
    }
    free(t->small_made);
    t->small_made = NULL;
    sync(); /* the next target starts without this one's dirty pages */
    return rc;
}

/* ---- workloads ----------------------------------------------------------- */

/* A fresh directory root/<base>-<seq> into out. */
static int fresh_dir(target *t, const char *base, char *out, size_t len,
                     result *r) {
    if (bu_path_fmt(out, len, "%s/%s-%d", t->root, base, ++t->seq)) {
        errs_add(&r->errs, "mkdir", ENAMETOOLONG);
        return -1;
    }
    if (mkdir(out, 0755) != 0) {
        errs_add(&r->errs, "mkdir", errno);
        note_add(r, "cannot create '%s': %s", out, strerror(errno));
        return -1;
    }
    return 0;
}

/* Should a workload's loop stop: a signal, the deadline (r->stopped) or
 * GIVE_UP errors (noted in r)? */
static bool must_stop(result *r) {
    if (halt(&r->stopped)) return true;
    if (r->errs.total >= GIVE_UP) {
        note_add(r, "gave up after %d errors", GIVE_UP);
        return true;
    }
    return false;
}

/* Fill in a workload of ops measured calls over secs, their latencies in
 * h. No call at all fails it. */
static void finish_ops(result *r, const bu_hist *h, uint64_t ops, double secs) {
    r->ops = ops;
    r->secs = secs;
    r->ops_per_sec = secs > 0 ? (double)ops / secs : NAN;
    r->p50 = bu_hist_midpoint_us(h, 0.50);
    r->p99 = bu_hist_midpoint_us(h, 0.99);
    if (ops == 0) r->failed = true;
}

/* One thread's share of a create: n files in dir. */
typedef struct cjob {
    char dir[PATH_MAX];
    int n, set;
    bool prep; /* unmeasured preparation: op names say so */
    uint8_t *made;
    bu_hist h;
    bu_tally e;
    uint64_t ok;
    bool timed_out, gave_up;
    pthread_t th;
} cjob;

static void *create_main(void *arg) {
    cjob *j = arg;
    char path[PATH_BUF];
    for (int i = 0; i < j->n; i++) {
        if (halt(&j->timed_out)) break;
        if (j->e.total >= GIVE_UP) {
            j->gave_up = true;
            break;
        }
        snprintf(path, sizeof path, "%s/f%07d", j->dir, i);
        uint64_t t0 = bu_now_ns();
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0) {
            errs_add(&j->e, j->prep ? "prep open" : "open", errno);
            continue;
        }
        int rc = write_all(fd, small_src(j->set, i), SMALL_SIZE);
        if (rc) errs_add(&j->e, j->prep ? "prep write" : "write", rc);
        if (close(fd) != 0) {
            errs_add(&j->e, j->prep ? "prep close" : "close", errno);
            rc = -1;
        }
        if (rc) continue;
        bu_hist_add(&j->h, bu_now_ns() - t0);
        j->made[i] = 1;
        j->ok++;
    }
    return NULL;
}

/* Run the jobs, one thread each, with signals blocked in the threads. */
static int run_jobs(cjob *jobs, int n, result *r) {
    sigset_t old;
    bu_signals_block(&old);
    int started = 0;
    for (; started < n; started++)
        if (pthread_create(&jobs[started].th, NULL, create_main,
                           &jobs[started]))
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    for (int i = 0; i < started; i++) pthread_join(jobs[i].th, NULL);
    if (started < n) {
        note_add(r, "cannot start a thread");
        r->failed = true;
        return -1;
    }
    return 0;
}

/* Free n jobs from create_files, and the files-made maps they still own;
 * NULL is ignored. */
static void jobs_free(cjob *jobs, int n) {
    if (!jobs) return;
    for (int i = 0; i < n; i++) free(jobs[i].made);
    free(jobs);
}

/* Create c->files small files from each of n threads in a fresh directory
 * named after base (with n > 1, each thread in a subdirectory of its own);
 * prep names the calls as unmeasured preparation in errors. Returns the
 * jobs run, with their counts, latencies and files made (the caller frees
 * them with jobs_free), and *secs the time they took; NULL, with r failed,
 * if they could not run. */
static cjob *create_files(const cfg *c, target *t, result *r, int n,
                          const char *base, bool prep, double *secs) {
    cjob *jobs = calloc((size_t)n, sizeof *jobs);
    char top[PATH_MAX];
    if (!jobs) {
        note_add(r, "out of memory");
        goto fail;
    }
    if (fresh_dir(t, base, top, sizeof top, r)) goto fail;
    for (int i = 0; i < n; i++) {
        cjob *j = &jobs[i];
        if (n == 1) {
            snprintf(j->dir, sizeof j->dir, "%s", top);
        } else if (bu_path_fmt(j->dir, sizeof j->dir, "%s/t%d", top, i) ||
                   mkdir(j->dir, 0755) != 0) {
            errs_add(&r->errs, "mkdir", errno);
            goto fail;
        }
        j->n = c->files;
        j->set = t->seq * 16 + i;
        j->prep = prep;
        bu_hist_init(&j->h, HIST_SUB_BITS);
        j->made = calloc((size_t)c->files, 1);
        if (!j->made) {
            note_add(r, "out of memory");
            goto fail;
        }
    }
    uint64_t t0 = bu_now_ns();
    if (run_jobs(jobs, n, r)) goto fail;
    *secs = bu_secs_since(t0);
    return jobs;
fail:
    r->failed = true;
    jobs_free(jobs, n);
    return NULL;
}

/* Make the files job j created the ones stat, read and unlink work on;
 * the target takes over j->made. */
static void small_adopt(target *t, cjob *j) {
    snprintf(t->small_dir, sizeof t->small_dir, "%s", j->dir);
    t->small_set = j->set;
    free(t->small_made);
    t->small_made = j->made;
    j->made = NULL;
    t->small_ready = true;
}

/* Make the small files stat, read and unlink work on, unless the last
 * create left them. 0, or -1 with r failed. */
static int ensure_small(const cfg *c, target *t, result *r) {
    if (t->small_ready) return 0;
    double secs;
    cjob *j = create_files(c, t, r, 1, "files", true, &secs);
    if (!j) return -1;
    bu_tally_merge(&r->errs, &j->e);
    r->stopped |= j->timed_out;
    int rc = -1;
    if (j->ok == 0) {
        note_add(r, "could not make any file to work on");
        r->failed = true;
    } else {
        note_add(r, "made %" PRIu64 " files first (unmeasured, %.1f s)", j->ok,
                 secs);
        small_adopt(t, j);
        rc = 0;
    }
    jobs_free(j, 1);
    return rc;
}

static void wl_create(const cfg *c, target *t, result *r) {
    int n = r->threads;
    double secs;
    cjob *jobs =
        create_files(c, t, r, n, n == 1 ? "create1" : "create4", false, &secs);
    if (!jobs) return;
    uint64_t ok = 0;
    for (int i = 0; i < n; i++) {
        if (i) bu_hist_merge(&jobs[0].h, &jobs[i].h); /* all in the first */
        bu_tally_merge(&r->errs, &jobs[i].e);
        ok += jobs[i].ok;
        r->stopped |= jobs[i].timed_out;
        if (jobs[i].gave_up)
            note_add(r, "thread %d gave up after %d errors", i, GIVE_UP);
    }
    finish_ops(r, &jobs[0].h, ok, secs);
    /* stat, read and unlink work on these */
    if (n == 1 && ok > 0) small_adopt(t, &jobs[0]);
    jobs_free(jobs, n);
}

/* One measured call on small file i (at path): 0 with its latency in *ns,
 * or -1 after counting its error in r. */
typedef int (*small_fn)(target *t, result *r, int i, const char *path,
                        uint64_t *ns);

/* The measured loop of stat, read and unlink: fn on each small file made,
 * in order, until the deadline or GIVE_UP errors. -1 (r failed) if the
 * files could not be made, else 0. */
static int small_pass(const cfg *c, target *t, result *r, small_fn fn) {
    bu_hist *h = bu_hist_new(HIST_SUB_BITS);
    if (!h || ensure_small(c, t, r)) {
        r->failed = true;
        bu_hist_free(h);
        return -1;
    }
    char path[PATH_BUF];
    uint64_t ok = 0, t0 = bu_now_ns();
    for (int i = 0; i < c->files; i++) {
        if (!t->small_made[i]) continue;
        if (must_stop(r)) break;
        snprintf(path, sizeof path, "%s/f%07d", t->small_dir, i);
        uint64_t ns;
        if (fn(t, r, i, path, &ns)) continue;
        bu_hist_add(h, ns);
        ok++;
    }
    finish_ops(r, h, ok, bu_secs_since(t0));
    bu_hist_free(h);
    return 0;
}

static int stat_one(target *t, result *r, int i, const char *path,
                    uint64_t *ns) {
    struct stat st;
    uint64_t a = bu_now_ns();
    if (stat(path, &st) != 0) {
        errs_add(&r->errs, "stat", errno);
        return -1;
    }
    *ns = bu_now_ns() - a;
    if (st.st_size != SMALL_SIZE) errs_add(&r->errs, "stat size", ERR_DATA);
    return 0;
}

static void wl_stat(const cfg *c, target *t, result *r) {
    if (ensure_small(c, t, r)) return;
    /* An unmeasured pass first: the measured one is of warm stats. */
    char path[PATH_BUF];
    struct stat st;
    for (int i = 0; i < c->files && !halt(&r->stopped); i++) {
        if (!t->small_made[i]) continue;
        snprintf(path, sizeof path, "%s/f%07d", t->small_dir, i);
        if (stat(path, &st) != 0) errs_add(&r->errs, "stat (warm-up)", errno);
    }
    small_pass(c, t, r, stat_one);
}

/* Open, read and close small file i; the bytes must be those written. */
static int read_one(target *t, result *r, int i, const char *path,
                    uint64_t *ns) {
    uint8_t buf[SMALL_SIZE];
    uint64_t a = bu_now_ns();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errs_add(&r->errs, "open", errno);
        return -1;
    }
    ssize_t got = read_all(fd, buf, SMALL_SIZE);
    int cerr = close(fd) != 0 ? errno : 0;
    *ns = bu_now_ns() - a;
    if (got < 0)
        errs_add(&r->errs, "read", (int)-got);
    else if (got != SMALL_SIZE)
        errs_add(&r->errs, "read", ERR_SHORT);
    else if (memcmp(buf, small_src(t->small_set, i), SMALL_SIZE))
        errs_add(&r->errs, "read", ERR_DATA);
    else if (cerr)
        errs_add(&r->errs, "close", cerr);
    else
        return 0;
    return -1;
}

static void wl_read(const cfg *c, target *t, result *r) {
    small_pass(c, t, r, read_one);
}

static int unlink_one(target *t, result *r, int i, const char *path,
                      uint64_t *ns) {
    uint64_t a = bu_now_ns();
    if (unlink(path) != 0) {
        errs_add(&r->errs, "unlink", errno);
        return -1;
    }
    *ns = bu_now_ns() - a;
    t->small_made[i] = 0;
    return 0;
}

static void wl_unlink(const cfg *c, target *t, result *r) {
    if (small_pass(c, t, r, unlink_one)) return;
    t->small_ready = false;
    /* The directory should now be empty: a check, not measured. */
    if (r->errs.total == 0 && !r->stopped && rmdir(t->small_dir) != 0)
        errs_add(&r->errs, "rmdir (emptied dir)", errno);
}

/* Make the directory of c->entries empty files, unless made already. */
static int ensure_entries(const cfg *c, target *t, result *r) {
    if (t->entries_ready) return 0;
    if (fresh_dir(t, "entries", t->entries_dir, sizeof t->entries_dir, r)) {
        r->failed = true;
        return -1;
    }
    char path[PATH_BUF];
    int made = 0;
    uint64_t t0 = bu_now_ns();
    for (int i = 0; i < c->entries; i++) {
        if (halt(&r->stopped)) break;
        if (r->errs.total >= GIVE_UP) break;
        snprintf(path, sizeof path, "%s/entry-%07d", t->entries_dir, i);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0) {
            errs_add(&r->errs, "prep create", errno);
            continue;
        }
        if (close(fd) != 0) {
            errs_add(&r->errs, "prep close", errno);
            continue;
        }
        made++;
    }
    note_add(r, "made %d entries first (unmeasured, %.1f s)", made,
             bu_secs_since(t0));
    if (made < c->entries) {
        note_add(r, "only %d of %d entries could be made", made, c->entries);
        r->failed = true;
        return -1;
    }
    t->entries_made = made;
    t->entries_ready = true;
    return 0;
}

static void note_passes(result *r, const double *v, int n) {
    char buf[128] = "";
    for (int i = 0; i < n; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, sizeof buf - used, "%s%.3g", i ? ", " : "", v[i]);
    }
    note_add(r, "passes %s s, the median reported", buf);
}

/* Pass number p of a listing of t's entries: 0 with its time in *secs; 1
 * if it failed (counted in r), so it does not count; -1 if the workload
 * cannot go on (r failed). arg is the workload's own. */
typedef int (*pass_fn)(target *t, result *r, int p, void *arg, double *secs);

/* readdir and ls -l: LISTING_PASSES passes of fn (fewer at the deadline),
 * the median of those that succeeded reported, in entries per second. */
static void listing_passes(target *t, result *r, pass_fn fn, void *arg) {
    double pass[LISTING_PASSES], sorted[LISTING_PASSES];
    int np = 0;
    for (int p = 0; p < LISTING_PASSES && !halt(&r->stopped); p++) {
        double secs;
        int rc = fn(t, r, p, arg, &secs);
        if (rc < 0) return;
        if (rc == 0) pass[np++] = secs;
    }
    memcpy(sorted, pass, (size_t)np * sizeof *pass);
    r->secs = median(sorted, np);
    r->ops = (uint64_t)t->entries_made;
    r->ops_per_sec = np ? t->entries_made / r->secs : NAN;
    r->p50 = r->p99 = NAN;
    if (np)
        note_passes(r, pass, np);
    else
        r->failed = true;
}

/* opendir, readdir to the end and closedir; every entry must be listed. */
static int readdir_pass(target *t, result *r, int p, void *arg, double *secs) {
    uint64_t t0 = bu_now_ns();
    DIR *d = opendir(t->entries_dir);
    if (!d) {
        errs_add(&r->errs, "opendir", errno);
        return 1;
    }
    int n = 0;
    struct dirent *de;
    for (;;) {
        errno = 0;
        if (!(de = readdir(d))) break;
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    }
    int rerr = errno;
    closedir(d);
    *secs = bu_secs_since(t0);
    if (rerr) {
        errs_add(&r->errs, "readdir", rerr);
        return 1;
    }
    if (n != t->entries_made) {
        errs_add(&r->errs, "readdir", ERR_COUNT);
        note_add(r, "pass %d listed %d of %d entries", p + 1, n,
                 t->entries_made);
        return 1;
    }
    return 0;
}

static void wl_readdir(const cfg *c, target *t, result *r) {
    if (ensure_entries(c, t, r)) return;
    listing_passes(t, r, readdir_pass, NULL);
}

/* Run argv as a job of t: *secs from fork to exit, *status. The watchdog
 * kills it at the workload's deadline. 0, or -1 if it could not start. */
static int job_run(target *t, const char *name, char *const argv[],
                   const char *err_log, double *secs, int *status) {
    uint64_t t0 = bu_now_ns();
    int slot = bu_spawn(&g_procs, t->id, K_JOB, name, argv, NULL, err_log);
    if (slot < 0) return -1;
    siginfo_t si;
    while (waitid(P_PID, (id_t)g_procs.c[slot].pid, &si, WEXITED | WNOWAIT) !=
               0 &&
           errno == EINTR) {
    }
    *secs = bu_secs_since(t0);
    *status = bu_child_reap(&g_procs, slot);
    return 0;
}

static void job_failed(result *r, const char *what, int status,
                       const char *log) {
    char how[64], line[200];
    bu_describe_status(status, how, sizeof how);
    first_line(log, line, sizeof line);
    errs_add(&r->errs, what, ERR_EXIT);
    note_add(r, "%s: %s%s%s", what, how, line[0] ? ": " : "", line);
}

/* ls -l of the entries: its command line and the log of its stderr. */
typedef struct lsl_job {
    char log[PATH_MAX];
    char *argv[4];
} lsl_job;

static int lsl_pass(target *t, result *r, int p, void *arg, double *secs) {
    lsl_job *j = arg;
    int st;
    unlink(j->log);
    if (job_run(t, "ls", j->argv, j->log, secs, &st)) {
        r->failed = true;
        return -1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (!halt(&r->stopped)) job_failed(r, "ls -l", st, j->log);
        return 1;
    }
    return 0;
}

static void wl_lsl(const cfg *c, target *t, result *r) {
    if (ensure_entries(c, t, r)) return;
    lsl_job j = {.argv = {(char *)c->ls, "-l", t->entries_dir, NULL}};
    if (bu_path_fmt(j.log, sizeof j.log, "%s/ls.log", t->home)) {
        r->failed = true;
        return;
    }
    listing_passes(t, r, lsl_pass, &j);
}

/* Write the big file: *secs including the close, per-write latencies in
 * h (may be NULL). Returns the bytes written in full. */
static uint64_t write_big(const cfg *c, target *t, result *r, bu_hist *h,
                          const char *pfx, double *secs, double *close_secs) {
    uint64_t blocks = (uint64_t)c->big_mb, done = 0;
    uint64_t t0 = bu_now_ns();
    int fd = open(t->big, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        errs_add(&r->errs, pfx[0] ? "prep open" : "open", errno);
        return 0;
    }
    for (uint64_t b = 0; b < blocks; b++) {
        if (must_stop(r)) break;
        uint64_t a = bu_now_ns();
        int rc = write_all(fd, big_src(b * BIG_IO), BIG_IO);
        if (rc) {
            errs_add(&r->errs, pfx[0] ? "prep write" : "write", rc);
            continue;
        }
        if (h) bu_hist_add(h, bu_now_ns() - a);
        done += BIG_IO;
    }
    uint64_t tc = bu_now_ns();
    if (close(fd) != 0) {
        errs_add(&r->errs, pfx[0] ? "prep close" : "close", errno);
        done = 0;
    }
    *close_secs = bu_secs_since(tc);
    *secs = bu_secs_since(t0);
    return done;
}

static int ensure_big(const cfg *c, target *t, result *r) {
    if (t->big_ready) return 0;
    if (bu_path_fmt(t->big, sizeof t->big, "%s/big", t->root)) {
        r->failed = true;
        return -1;
    }
    double secs, close_secs;
    uint64_t bytes = write_big(c, t, r, NULL, "prep", &secs, &close_secs);
    if (bytes != (uint64_t)c->big_mb * BIG_IO) {
        note_add(r, "could not write the %d MiB file first", c->big_mb);
        r->failed = true;
        return -1;
    }
    note_add(r, "wrote the %d MiB file first (unmeasured, %.1f s)", c->big_mb,
             secs);
    t->big_ready = true;
    return 0;
}

static void wl_seqwrite(const cfg *c, target *t, result *r) {
    bu_hist *h = bu_hist_new(HIST_SUB_BITS);
    if (!h || bu_path_fmt(t->big, sizeof t->big, "%s/big", t->root)) {
        r->failed = true;
        bu_hist_free(h);
        return;
    }
    t->big_ready = false;
    double secs, close_secs;
    uint64_t bytes = write_big(c, t, r, h, "", &secs, &close_secs);
    finish_ops(r, h, bytes / BIG_IO, secs);
    r->ops_per_sec = NAN;
    r->bytes = bytes;
    r->mb_per_sec = bytes ? (double)bytes / secs / 1e6 : NAN;
    note_add(r, "close %.3f s of it", close_secs);
    t->big_ready = bytes == (uint64_t)c->big_mb * BIG_IO && !r->stopped;
    bu_hist_free(h);
}

/* Drop the big file's pages from the page cache (unmeasured): fdatasync,
 * so none is dirty, then POSIX_FADV_DONTNEED. */
static void drop_cache(target *t, result *r) {
    int fd = open(t->big, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errs_add(&r->errs, "prep open", errno);
        return;
    }
    if (fdatasync(fd) != 0) errs_add(&r->errs, "prep fdatasync", errno);
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (rc) errs_add(&r->errs, "prep fadvise", rc);
    close(fd);
}

/* A measured run of calls on the big file: seqread, randread, randwrite. */
typedef struct big_run {
    bu_hist *h;         /* latency per call */
    uint8_t *buf;       /* what a read reads into */
    int fd;             /* the big file */
    uint64_t t0;        /* just before the open: the run's start */
    uint64_t verify_ns; /* spent checking bytes read: not measured */
} big_run;

/* Start a run on the big file: write it first unless it is there, drop
 * its pages from the page cache for a read, then open it with flags, the
 * time just before the open in b->t0. The histogram and a 4096-aligned
 * buffer of len bytes are allocated into b; big_end frees them, also
 * after a failure. 0, or -1 with r failed. */
static int big_start(const cfg *c, target *t, result *r, big_run *b, size_t len,
                     int flags) {
    memset(b, 0, sizeof *b);
    b->h = bu_hist_new(HIST_SUB_BITS);
    b->buf = aligned_alloc(4096, len);
    if (!b->h || !b->buf || ensure_big(c, t, r)) {
        r->failed = true;
        return -1;
    }
    if ((flags & O_ACCMODE) == O_RDONLY) drop_cache(t, r);
    b->t0 = bu_now_ns();
    b->fd = open(t->big, flags | O_CLOEXEC);
    if (b->fd < 0) {
        errs_add(&r->errs, "open", errno);
        r->failed = true;
        return -1;
    }
    return 0;
}

/* Compare the n bytes in b->buf, read at offset off of the big file, with
 * what was written there (a difference is op's ERR_DATA). The time from
 * since to the end of the check goes to b->verify_ns. */
static void big_verify(big_run *b, result *r, const char *op, uint64_t off,
                       size_t n, uint64_t since) {
    if (memcmp(b->buf, big_src(off), n)) errs_add(&r->errs, op, ERR_DATA);
    b->verify_ns += bu_now_ns() - since;
}

/* The measured time of a run: since b->t0, less the checking. */
static double big_secs(const big_run *b) {
    return bu_secs_since(b->t0) - (double)b->verify_ns / 1e9;
}

static void big_end(big_run *b) {
    bu_hist_free(b->h);
    free(b->buf);
}

static void wl_seqread(const cfg *c, target *t, result *r) {
    big_run b;
    if (big_start(c, t, r, &b, BIG_IO, O_RDONLY)) goto out;
    uint64_t want = (uint64_t)c->big_mb * BIG_IO, off = 0;
    while (off < want) {
        if (halt(&r->stopped)) break;
        uint64_t a = bu_now_ns();
        ssize_t got = read_all(b.fd, b.buf, BIG_IO);
        uint64_t z = bu_now_ns();
        if (got < 0) {
            errs_add(&r->errs, "read", (int)-got);
            break;
        }
        if (got == 0) break;
        bu_hist_add(b.h, z - a);
        big_verify(&b, r, "read", off, (size_t)got, z);
        off += (uint64_t)got;
    }
    if (close(b.fd) != 0) errs_add(&r->errs, "close", errno);
    double secs = big_secs(&b);
    if (off < want && !r->stopped && !stopping()) {
        errs_add(&r->errs, "read", ERR_SHORT);
        note_add(r, "read %" PRIu64 " of %" PRIu64 " bytes", off, want);
    }
    finish_ops(r, b.h, b.h->count, secs);
    r->ops_per_sec = NAN;
    r->bytes = off;
    r->mb_per_sec = off ? (double)off / secs / 1e6 : NAN;
out:
    big_end(&b);
}

/* randread and randwrite: random RAND_IO-aligned I/O on the big file for
 * c->rand_secs; the writes put back the bytes that are there, so later
 * reads can still check them. */
static void wl_rand(const cfg *c, target *t, result *r, bool writes) {
    big_run b;
    const char *op = writes ? "pwrite" : "pread";
    if (big_start(c, t, r, &b, RAND_IO, writes ? O_WRONLY : O_RDONLY)) goto out;
    uint64_t slots = (uint64_t)c->big_mb * BIG_IO / RAND_IO;
    uint64_t seed = 42 + (uint64_t)writes, ok = 0;
    uint64_t end = b.t0 + (uint64_t)(c->rand_secs * 1e9);
    for (;;) {
        uint64_t a = bu_now_ns();
        if (a >= end || must_stop(r)) break;
        uint64_t off = bu_rnd_next(&seed) % slots * RAND_IO;
        ssize_t n = writes ? pwrite(b.fd, big_src(off), RAND_IO, (off_t)off)
                           : pread(b.fd, b.buf, RAND_IO, (off_t)off);
        uint64_t z = bu_now_ns();
        if (n < 0) {
            errs_add(&r->errs, op, errno);
            continue;
        }
        if (n != (ssize_t)RAND_IO) {
            errs_add(&r->errs, op, ERR_SHORT);
            continue;
        }
        bu_hist_add(b.h, z - a);
        ok++;
        if (!writes) big_verify(&b, r, op, off, RAND_IO, z);
    }
    uint64_t tc = bu_now_ns();
    if (close(b.fd) != 0) errs_add(&r->errs, "close", errno);
    double close_secs = bu_secs_since(tc);
    finish_ops(r, b.h, ok, big_secs(&b));
    r->bytes = ok * RAND_IO;
    if (writes) note_add(r, "close %.3f s of it", close_secs);
out:
    big_end(&b);
}

/* The regular files, symlinks and bytes under a tree. */
typedef struct tree_sum {
    uint64_t files, links, bytes;
} tree_sum;

static tree_sum g_walk; /* nftw has no argument for its callback */

static int sum_entry(const char *path, const struct stat *sb, int flag,
                     struct FTW *ftw) {
    if (flag == FTW_F && S_ISREG(sb->st_mode)) {
        g_walk.files++;
        g_walk.bytes += (uint64_t)sb->st_size;
    } else if (flag == FTW_SL) {
        g_walk.links++;
    }
    return 0;
}

static int tree_walk(const char *path, tree_sum *out) {
    memset(&g_walk, 0, sizeof g_walk);
    int rc = nftw(path, sum_entry, 32, FTW_PHYS);
    *out = g_walk;
    return rc;
}

static tree_sum g_cp_src; /* of c->cp_src, counted once */

static void wl_cpr(const cfg *c, target *t, result *r) {
    char dest[PATH_MAX], log[PATH_MAX];
    if (g_cp_src.files == 0) {
        note_add(r, "no files under '%s'", c->cp_src);
        r->failed = true;
        return;
    }
    if (bu_path_fmt(dest, sizeof dest, "%s/cp-r-%d", t->root, ++t->seq) ||
        bu_path_fmt(log, sizeof log, "%s/cp.log", t->home)) {
        r->failed = true;
        return;
    }
    unlink(log);
    char *argv[] = {(char *)c->cp, "-r", (char *)c->cp_src, dest, NULL};
    double secs;
    int st;
    if (job_run(t, "cp", argv, log, &secs, &st)) {
        r->failed = true;
        return;
    }
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok && !halt(&r->stopped)) job_failed(r, "cp -r", st, log);
    r->secs = secs;
    r->p50 = r->p99 = NAN;
    tree_sum got;
    if (tree_walk(dest, &got) != 0) {
        errs_add(&r->errs, "walk copy", errno);
        memset(&got, 0, sizeof got);
    }
    if (got.files != g_cp_src.files || got.bytes != g_cp_src.bytes ||
        got.links != g_cp_src.links) {
        if (ok) errs_add(&r->errs, "cp -r", ERR_COUNT);
        note_add(r,
                 "copy holds %" PRIu64 " files, %" PRIu64 " symlinks, %" PRIu64
                 " bytes of %" PRIu64 ", %" PRIu64 ", %" PRIu64,
                 got.files, got.links, got.bytes, g_cp_src.files,
                 g_cp_src.links, g_cp_src.bytes);
    }
    r->ops = got.files;
    r->bytes = got.bytes;
    if (!ok || r->stopped) {
        r->failed = got.files == 0;
        r->ops_per_sec = r->mb_per_sec = NAN;
        return;
    }
    r->ops_per_sec = (double)got.files / secs;
    r->mb_per_sec = (double)got.bytes / secs / 1e6;
    note_add(r, "%" PRIu64 " files, %.1f MB; ops/s are files/s", got.files,
             (double)got.bytes / 1e6);
}

static void wl_randread(const cfg *c, target *t, result *r) {
    wl_rand(c, t, r, false);
}

static void wl_randwrite(const cfg *c, target *t, result *r) {
    wl_rand(c, t, r, true);
}

/* Each workload's run, in the order of wl_names. */
static void (*const wl_fns[W_COUNT])(const cfg *, target *, result *) = {
    wl_create,   wl_stat,    wl_read,     wl_unlink,    wl_readdir, wl_lsl,
    wl_seqwrite, wl_seqread, wl_randread, wl_randwrite, wl_cpr};

/* ---- runs ---------------------------------------------------------------- */

static void run_one(const cfg *c, target *t, int wl, int threads, results *rs) {
    static result r; /* large; one at a time */
    memset(&r, 0, sizeof r);
    snprintf(r.target, sizeof r.target, "%s", t->name);
    r.tgt = t->id;
    r.wl = wl;
    r.threads = threads;
    r.secs = r.ops_per_sec = r.mb_per_sec = r.p50 = r.p99 = NAN;
    watch_arm(t->id, c->wl_timeout);
    wl_fns[wl](c, t, &r);
    if (watch_disarm()) {
        note_add(&r,
                 "a call was still stuck %d s after the %.0f s timeout: "
                 "the filesystem's processes were killed",
                 HARD_GRACE_S, c->wl_timeout);
        t->dead = true;
    }
    if (stopping()) return; /* an interrupted row is no measurement */
    emit(c, rs, &r);
    if (!t->dead && !target_alive(c, t, "during the workload")) t->dead = true;
}

static int run_target(const cfg *c, int id, results *rs) {
    static target t;
    memset(&t, 0, sizeof t);
    t.id = id;
    t.mount_slot = -1;
    snprintf(t.name, sizeof t.name, "%s",
             id == T_DIR ? c->dir_name : tgt_names[id]);
    fprintf(info_out(c), "\n");
    int rc = target_start(c, &t);
    if (rc) {
        if (!stopping())
            fprintf(info_out(c), "%s: could not be set up; skipped\n", t.name);
    } else {
        if (!c->json) print_row_header();
        for (int wl = 0; wl < W_COUNT && !stopping() && !t.dead; wl++) {
            if (!c->run_wl[wl]) continue;
            run_one(c, &t, wl, 1, rs);
            if (wl == W_CREATE && !stopping() && !t.dead)
                run_one(c, &t, wl, 4, rs);
        }
        if (t.dead && !stopping())
            fprintf(info_out(c),
                    "%s: its processes are gone; the rest of its workloads "
                    "are skipped\n",
                    t.name);
    }
    if (target_stop(c, &t)) rc = -1;
    return t.dead ? -1 : rc;
}

/* The targets, checked against this run's rows. */
typedef struct goal {
    int tgt, wl, threads;
    const char *what;
    char metric; /* 'o' ops/s >=, 'm' MB/s >=, 's' seconds < */
    double value;
} goal;

static const goal goals[] = {
    {T_EMBEDDED, W_CREATE, 1, "creates/s, 1 thread", 'o', 2000},
    {T_EMBEDDED, W_CREATE, 4, "creates/s, 4 threads", 'o', 5000},
    {T_EMBEDDED, W_STAT, 1, "stat/s, warm", 'o', 50000},
    {T_EMBEDDED, W_SEQWRITE, 1, "seqwrite MB/s", 'm', 150},
    {T_EMBEDDED, W_SEQREAD, 1, "seqread MB/s", 'm', 400},
    {T_EMBEDDED, W_LSL, 1, "ls -l of 10,000 entries, s", 's', 1.0},
    {T_CLUSTER, W_CREATE, 1, "creates/s, 1 thread", 'o', 1000},
};

static void print_goals(FILE *f, const cfg *c, const results *rs) {
    int last = -1;
    for (size_t i = 0; i < ARRAY_LEN(goals); i++) {
        const goal *g = &goals[i];
        const result *r = find_row(rs, tgt_names[g->tgt], g->wl, g->threads);
        if (!r) continue;
        if (g->tgt != last) {
            fprintf(f, "\ntargets for %s:\n", tgt_names[g->tgt]);
            last = g->tgt;
        }
        double v = g->metric == 'o'   ? r->ops_per_sec
                   : g->metric == 'm' ? r->mb_per_sec
                                      : r->secs;
        bool met =
            !isnan(v) && (g->metric == 's' ? v < g->value : v >= g->value);
        char val[32], why[96] = "";
        bu_fmt_num(val, sizeof val, v, g->metric == 's' ? "%.3f" : "%.0f");
        if (r->failed)
            snprintf(why, sizeof why, " (the workload failed)");
        else if (r->errs.total)
            snprintf(why, sizeof why, " (%" PRIu64 " errors)", r->errs.total);
        else if (r->stopped)
            snprintf(why, sizeof why, " (stopped at the timeout)");
        if (why[0]) met = false;
        if (g->wl == W_LSL && c->entries != 10000 && !why[0])
            snprintf(why, sizeof why, " (measured with %d entries)",
                     c->entries);
        fprintf(f, "  %-28s %10s, target %s %g: %s%s\n", g->what, val,
                g->metric == 's' ? "<" : ">=", g->value,
                met ? "met" : "NOT MET", why);
    }
}

/* ---- command line -------------------------------------------------------- */

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: fs_bench [options]\n"
        "File system workloads on a quorumfs mount with an embedded store, a\n"
        "mount of a local 3-node quorumfs cluster, and ext4 for comparison.\n"
        "\n"
        "targets:\n"
        "  --targets LIST       ext4,quorumfs-embedded,quorumfs-cluster\n"
        "                       (default: all three; ext4 always runs first,\n"
        "                       so the others show their ratio to it); with\n"
        "                       --dir, \"dir\" names that directory\n"
        "  --dir DIR            measure DIR (files go in a fresh directory\n"
        "                       inside it); alone, only DIR is measured\n"
        "  --name NAME          the target name of --dir (default \"dir\")\n"
        "  --ext4-dir DIR       the ext4 target works in a fresh directory\n"
        "                       inside DIR (default: the run directory)\n"
        "  --quorumfs PATH      the quorumfs binary (default: next to or one\n"
        "                       level above this program, else on PATH)\n"
        "  --work-dir DIR       the run directory (data, mounts, logs) is\n"
        "                       made in DIR (default /var/tmp)\n"
        "\n"
        "workloads:\n"
        "  --workloads LIST     create,stat,read,unlink,readdir,ls-l,\n"
        "                       seqwrite,seqread,randread,randwrite,cp-r\n"
        "                       (default: all, always in this order)\n"
        "  --files N            4 KiB files per create thread (default 2000)\n"
        "  --entries N          entries of the readdir and ls -l directory\n"
        "                       (default 10000)\n"
        "  --big-mb N           MiB of the sequential/random file (default "
        "1024)\n"
        "  --rand-seconds S     length of randread and randwrite (default 5)\n"
        "  --cp-src DIR         the tree cp -r copies (default /usr/include)\n"
        "  --workload-timeout S stop a workload after S s (default 300)\n"
        "\n"
        "output:\n"
        "  --json               one JSON object per result on stdout; the\n"
        "                       header, notes and targets go to stderr\n"
        "  --keep               keep the run directory and files (processes\n"
        "                       are stopped and mounts unmounted anyway)\n"
        "  -h, --help           this text\n"
        "\n"
        "Each row: target, workload, threads, ops/s or MB/s (10^6 bytes/s),\n"
        "the measured seconds, p50/p99 latency per call in microseconds where\n"
        "a workload is made of calls, the ratio to ext4's throughput and the\n"
        "errors. Exit status 0 if every row ran without errors, 1 if not, 2\n"
        "for a usage error. See docs/PERFORMANCE.md.\n");
}

/* Call fn on each item of a comma list: 0, fn's first failure (-2,
 * reported), or -1 for an empty or overlong list. */
static int each_item(const char *list, int (*fn)(cfg *, const char *), cfg *c) {
    char buf[1024];
    if (!*list || snprintf(buf, sizeof buf, "%s", list) >= (int)sizeof buf)
        return -1;
    int n = 0;
    for (char *save = NULL, *it = strtok_r(buf, ",", &save); it;
         it = strtok_r(NULL, ",", &save), n++) {
        int rc = fn(c, it);
        if (rc) return rc;
    }
    return n ? 0 : -1;
}

static int add_target(cfg *c, const char *name) {
    static const char *const alias[T_COUNT] = {NULL, "embedded", "cluster",
                                               NULL};
    for (int i = 0; i < T_COUNT; i++)
        if (!strcmp(name, tgt_names[i]) ||
            (alias[i] && !strcmp(name, alias[i]))) {
            c->run_tgt[i] = true;
            return 0;
        }
    bu_usage_error(
        "unknown target '%s' (ext4, quorumfs-embedded, quorumfs-cluster, "
        "dir)",
        name);
    return -2;
}

static int add_workload(cfg *c, const char *name) {
    if (!strcmp(name, "all")) {
        for (int i = 0; i < W_COUNT; i++) c->run_wl[i] = true;
        return 0;
    }
    for (int i = 0; i < W_COUNT; i++)
        if (!strcmp(name, wl_names[i])) {
            c->run_wl[i] = true;
            return 0;
        }
    bu_usage_error(
        "unknown workload '%s' (create, stat, read, unlink, readdir, ls-l, "
        "seqwrite, seqread, randread, randwrite, cp-r, all)",
        name);
    return -2;
}

static int set_path(char *dst, const char *v) {
    if (!*v || strlen(v) >= PATH_MAX - 64) return -1;
    snprintf(dst, PATH_MAX, "%s", v);
    return 0;
}

/* An existing directory, made absolute and free of symlinks. */
static int real_dir(char *path, const char *opt) {
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(path, real) || stat(real, &st) != 0 || !S_ISDIR(st.st_mode))
        return bu_usage_error("%s '%s' is not a directory", opt, path);
    snprintf(path, PATH_MAX, "%s", real);
    return 0;
}

static int parse_args(int argc, char **argv, cfg *c) {
    memset(c, 0, sizeof *c);
    c->files = 2000;
    c->entries = 10000;
    c->big_mb = 1024;
    c->rand_secs = 5;
    c->wl_timeout = 300;
    snprintf(c->work, sizeof c->work, "/var/tmp");
    snprintf(c->cp_src, sizeof c->cp_src, "/usr/include");
    snprintf(c->dir_name, sizeof c->dir_name, "dir");
    bool targets_set = false, wls_set = false, qbin_set = false;
    static const char *const flags[] = {"--json", "--keep", NULL};
    static const char *const with_value[] = {
        "--targets",          "--dir",      "--name",         "--ext4-dir",
        "--quorumfs",         "--work-dir", "--workloads",    "--files",
        "--entries",          "--big-mb",   "--rand-seconds", "--cp-src",
        "--workload-timeout", NULL};

    static const bu_opt_spec spec = {flags, with_value, usage};

    for (int i = 1; i < argc; i++) {
        bu_opt o;
        if (bu_opt_next(&spec, argc, argv, &i, &o)) return -1;
        const char *a = o.name, *v = o.value;
        if (!v) { /* --json or --keep */
            *(a[2] == 'j' ? &c->json : &c->keep) = true;
            continue;
        }
        int rc = 0;
        if (!strcmp(a, "--targets")) {
            memset(c->run_tgt, 0, sizeof c->run_tgt);
            rc = each_item(v, add_target, c);
            targets_set = true;
        } else if (!strcmp(a, "--workloads")) {
            memset(c->run_wl, 0, sizeof c->run_wl);
            rc = each_item(v, add_workload, c);
            wls_set = true;
        } else if (!strcmp(a, "--dir")) {
            rc = set_path(c->dir, v);
        } else if (!strcmp(a, "--name")) {
            if (!*v || strlen(v) >= sizeof c->dir_name || strchr(v, '/'))
                return bu_usage_error(
                    "bad --name '%s' (1..63 characters, no '/')", v);
            snprintf(c->dir_name, sizeof c->dir_name, "%s", v);
        } else if (!strcmp(a, "--ext4-dir")) {
            rc = set_path(c->ext4_dir, v);
        } else if (!strcmp(a, "--quorumfs")) {
            rc = set_path(c->qbin, v);
            qbin_set = true;
        } else if (!strcmp(a, "--work-dir")) {
            rc = set_path(c->work, v);
        } else if (!strcmp(a, "--cp-src")) {
            rc = set_path(c->cp_src, v);
        } else if (!strcmp(a, "--files")) {
            if (bu_parse_int(v, 1, 1000000, &c->files))
                return bu_usage_error("--files wants 1..1000000, not '%s'", v);
        } else if (!strcmp(a, "--entries")) {
            if (bu_parse_int(v, 1, 1000000, &c->entries))
                return bu_usage_error("--entries wants 1..1000000, not '%s'",
                                      v);
        } else if (!strcmp(a, "--big-mb")) {
            if (bu_parse_int(v, 1, 1 << 20, &c->big_mb))
                return bu_usage_error("--big-mb wants 1..1048576, not '%s'", v);
        } else if (!strcmp(a, "--rand-seconds")) {
            if (bu_parse_secs(v, 0.1, 3600, &c->rand_secs))
                return bu_usage_error(
                    "--rand-seconds wants 0.1..3600, not '%s'", v);
        } else if (!strcmp(a, "--workload-timeout")) {
            if (bu_parse_secs(v, 1, 86400, &c->wl_timeout))
                return bu_usage_error(
                    "--workload-timeout wants 1..86400, not '%s'", v);
        }
        if (rc == -1) return bu_usage_error("bad %s '%s'", a, v);
        if (rc) return -1;
    }

    if (!wls_set)
        for (int i = 0; i < W_COUNT; i++) c->run_wl[i] = true;
    if (c->dir[0]) {
        if (!targets_set) c->run_tgt[T_DIR] = true;
        if (!c->run_tgt[T_DIR])
            return bu_usage_error("%s",
                                  "--targets must name \"dir\" when --dir is "
                                  "given");
        if (real_dir(c->dir, "--dir")) return -1;
    } else if (c->run_tgt[T_DIR]) {
        return bu_usage_error("%s", "target \"dir\" needs --dir DIR");
    } else if (!targets_set) {
        c->run_tgt[T_EXT4] = c->run_tgt[T_EMBEDDED] = c->run_tgt[T_CLUSTER] =
            true;
    }
    if (real_dir(c->work, "--work-dir")) return -1;
    if (c->ext4_dir[0] && real_dir(c->ext4_dir, "--ext4-dir")) return -1;
    if (c->run_tgt[T_EMBEDDED] || c->run_tgt[T_CLUSTER]) {
        if (qbin_set ? !bu_executable(c->qbin)
                     : !bu_find_quorumfs(c->qbin, sizeof c->qbin))
            return bu_usage_error(
                "no quorumfs binary%s (build the 'quorumfs' target or "
                "give --quorumfs PATH)",
                qbin_set ? " at the --quorumfs path" : "");
        if (!bu_find_on_path("fusermount3", g_fusermount, sizeof g_fusermount))
            bu_find_on_path("fusermount", g_fusermount, sizeof g_fusermount);
    }
    if (c->run_wl[W_LSL] && !bu_executable(strcpy(c->ls, "/bin/ls")) &&
        !bu_find_on_path("ls", c->ls, sizeof c->ls))
        return bu_usage_error("%s", "no ls program for ls-l");
    if (c->run_wl[W_CPR]) {
        if (!bu_executable(strcpy(c->cp, "/bin/cp")) &&
            !bu_find_on_path("cp", c->cp, sizeof c->cp))
            return bu_usage_error("%s", "no cp program for cp-r");
        if (real_dir(c->cp_src, "--cp-src")) return -1;
    }
    return 0;
}

static void print_header(FILE *f, const cfg *c) {
    fprintf(f,
            "fs_bench: %d files of 4 KiB per create thread; a directory of %d "
            "entries; a %d MiB file (1 MiB I/O); random 4 KiB I/O for %.1f s; "
            "workload timeout %.0f s; MB = 10^6 bytes\n",
            c->files, c->entries, c->big_mb, c->rand_secs, c->wl_timeout);
    fprintf(f, "  targets:");
    for (int i = 0; i < T_COUNT; i++)
        if (c->run_tgt[i])
            fprintf(f, " %s", i == T_DIR ? c->dir_name : tgt_names[i]);
    fprintf(f, "; workloads:");
    for (int i = 0; i < W_COUNT; i++)
        if (c->run_wl[i]) fprintf(f, " %s", wl_names[i]);
    fprintf(f, "\n  run directory %s%s\n", g_run, c->keep ? " (kept)" : "");
    if (c->run_tgt[T_EMBEDDED] || c->run_tgt[T_CLUSTER])
        fprintf(f, "  quorumfs %s\n", c->qbin);
    if (c->run_wl[W_CPR])
        fprintf(f,
                "  cp -r source %s: %" PRIu64 " files, %" PRIu64
                " symlinks, %.1f MB\n",
                c->cp_src, g_cp_src.files, g_cp_src.links,
                (double)g_cp_src.bytes / 1e6);
}

/* atexit: nothing started here outlives the program, whatever path led to
 * the exit. */
static void cleanup(void) {
    if (g_watchdog_on) {
        pthread_mutex_lock(&g_watch_lock);
        g_watch_quit = true;
        pthread_mutex_unlock(&g_watch_lock);
        pthread_join(g_watchdog, NULL);
        g_watchdog_on = false;
    }
    for (size_t i = 0; i < ARRAY_LEN(g_mounts); i++)
        if (g_mounts[i][0]) unmount(g_mounts[i], NULL);
    for (int i = 0; i < BU_MAX_CHILDREN; i++) {
        if (g_procs.c[i].pid <= 0) continue;
        bool killed;
        bu_child_stop(&g_procs, i, 10000, &killed);
    }
    if (g_run[0] && !g_keep) bu_rm_rf(g_run);
    g_run[0] = '\0';
}

int main(int argc, char **argv) {
    static cfg c;
    static results rs;
    bu_prog_set("fs_bench");
    if (parse_args(argc, argv, &c) < 0) return 2;
    g_keep = c.keep;
    bu_signals_catch(on_signal);

    g_pool = malloc(POOL_SIZE);
    if (!g_pool) {
        fprintf(stderr, "fs_bench: out of memory\n");
        return 1;
    }
    uint64_t seed = 1;
    for (size_t i = 0; i < POOL_SIZE; i += 8) {
        uint64_t x = bu_rnd_next(&seed);
        memcpy(g_pool + i, &x, 8);
    }
    if (c.run_wl[W_CPR]) tree_walk(c.cp_src, &g_cp_src);

    if (bu_path_fmt(g_run, sizeof g_run, "%s/fs_bench.XXXXXX", c.work) ||
        !mkdtemp(g_run)) {
        fprintf(stderr, "fs_bench: cannot create a directory in '%s': %s\n",
                c.work, strerror(errno));
        g_run[0] = '\0';
        return 1;
    }
    atexit(cleanup);
    sigset_t old;
    bu_signals_block(&old);
    g_watchdog_on = pthread_create(&g_watchdog, NULL, watchdog_main, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!g_watchdog_on)
        fprintf(stderr, "fs_bench: no watchdog thread; a stuck call will "
                        "not be broken\n");

    print_header(info_out(&c), &c);
    int status = 0;
    static const int order[] = {T_EXT4, T_DIR, T_EMBEDDED, T_CLUSTER};
    for (size_t i = 0; i < ARRAY_LEN(order) && !stopping(); i++) {
        if (!c.run_tgt[order[i]]) continue;
        if (run_target(&c, order[i], &rs)) status = 1;
    }
    for (int i = 0; i < rs.n; i++)
        if (rs.r[i].failed || rs.r[i].errs.total || rs.r[i].stopped) status = 1;
    if (!stopping()) {
        print_goals(info_out(&c), &c, &rs);
    } else {
        fprintf(stderr, "fs_bench: interrupted\n");
        status = 128 + atomic_load(&g_procs.stop);
    }
    fflush(stdout);
    cleanup();
    free(g_pool);
    return status;
}
