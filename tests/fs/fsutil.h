/*
 * Real mounts for the filesystem tests: start `quorumfs mount -f` on a
 * fresh directory with a fresh embedded store (or a cluster's nodes), wait
 * until the mount is live, and unmount and stop it at the end of the test,
 * whether the test passed or not (Criterion runs .fini either way; a test
 * that crashes leaves its child to PR_SET_PDEATHSIG and a lazy unmount in
 * the next setup).
 */
#ifndef QFS_TESTS_FSUTIL_H
#define QFS_TESTS_FSUTIL_H

#include "replica/client.h"
#include "ring/ring.h"
#include "tests/testutil.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FUSE_SUPER_MAGIC 0x65735546

typedef struct qmount {
    char dir[128];  /* the mount point */
    char data[128]; /* the embedded store's directory */
    pid_t pid;
} qmount;

static inline const char *qfs_bin(void) {
    static char path[512];
    const char *b = getenv("QFS_BUILD_DIR");
    snprintf(path, sizeof path, "%s/quorumfs", b && *b ? b : ".");
    return path;
}

static inline bool is_fuse_mount(const char *dir) {
    struct statfs sf;
    return statfs(dir, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC;
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Start a mount of the store in m->data (or of the cluster `join`) on
 * m->dir with extra -o options opts (may be NULL); wait until it is live. */
static inline void qmount_start(qmount *m, const char *join, const char *opts) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        const char *argv[12];
        int a = 0;
        argv[a++] = qfs_bin();
        argv[a++] = "mount";
        argv[a++] = "-f";
        if (join) {
            argv[a++] = "--join";
            argv[a++] = join;
        } else {
            argv[a++] = "--data";
            argv[a++] = m->data;
        }
        if (opts) {
            argv[a++] = "-o";
            argv[a++] = opts;
        }
        argv[a++] = m->dir;
        argv[a] = NULL;
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    m->pid = pid;
    for (int i = 0; i < 500 && !is_fuse_mount(m->dir); i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            m->pid = 0;
            cr_assert_fail("quorumfs mount exited before mounting (%d)", st);
        }
        sleep_ms(20);
    }
    cr_assert(is_fuse_mount(m->dir), "%s did not become a mount", m->dir);
}

/* Unmount (as fusermount3 -u does) and wait for the process; returns its
 * exit status, or -1 if it had to be killed. */
static inline int qmount_stop(qmount *m) {
    if (m->pid <= 0) return -1;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "fusermount3 -u %s 2>/dev/null", m->dir);
    int rc = system(cmd);
    (void)rc;
    int status = -1;
    for (int i = 0; i < 1000; i++) {
        int st;
        if (waitpid(m->pid, &st, WNOHANG) == m->pid) {
            status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            m->pid = 0;
            return status;
        }
        if (i == 250) kill(m->pid, SIGTERM);
        sleep_ms(20);
    }
    kill(m->pid, SIGKILL);
    waitpid(m->pid, NULL, 0);
    m->pid = 0;
    snprintf(cmd, sizeof cmd, "fusermount3 -uz %s 2>/dev/null", m->dir);
    rc = system(cmd);
    return -1;
}

/* SIGKILL the mount process and clean up its dead mount the usual way. */
static inline void qmount_kill(qmount *m) {
    if (m->pid <= 0) return;
    kill(m->pid, SIGKILL);
    waitpid(m->pid, NULL, 0);
    m->pid = 0;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "fusermount3 -u %s", m->dir);
    int rc = system(cmd);
    cr_assert_eq(rc, 0, "fusermount3 -u of a dead mount failed");
}

/* Fresh mount point and data directory under /tmp. */
static inline void qmount_dirs(qmount *m, const char *prefix) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s-mnt", prefix);
    make_tmpdir(m->dir, sizeof m->dir, buf);
    snprintf(buf, sizeof buf, "%s-data", prefix);
    make_tmpdir(m->data, sizeof m->data, buf);
}

static inline void qmount_cleanup(qmount *m) {
    if (m->pid > 0) qmount_stop(m);
    rmdir(m->dir);
    rm_tree(m->data);
}

/* Run a shell command in dir; returns its exit status. */
static inline int sh(const char *dir, const char *fmt, ...) {
    char cmd[8192];
    int n = snprintf(cmd, sizeof cmd, "cd '%s' && ", dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- a cluster of node processes ---- */

#define QNODES_MAX 5

typedef struct qnode {
    pid_t pid;
    char data[160];
    char log[160];
    char addr[64];
} qnode;

typedef struct qcluster {
    char dir[64];
    qnode n[QNODES_MAX];
    int count;
    char join[QNODES_MAX * 64]; /* "addr,addr,..." for mount --join */
} qcluster;

/* Start node i (joining through node 0 unless it is node 0) and wait for
 * its address. */
static inline void qnode_start(qcluster *c, int i) {
    qnode *n = &c->n[i];
    char dir[sizeof c->dir];
    memcpy(dir, c->dir, sizeof dir);
    snprintf(n->data, sizeof n->data, "%s/n%d", dir, i);
    snprintf(n->log, sizeof n->log, "%s/n%d.log", dir, i);
    unlink(n->log);
    n->pid = fork();
    cr_assert_geq(n->pid, 0);
    if (n->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (!freopen(n->log, "w", stderr)) _exit(127);
        char name[16];
        snprintf(name, sizeof name, "n%d", i);
        const char *argv[24] = {"quorumfs",
                                "--log-level",
                                "info",
                                "node",
                                "--data",
                                n->data,
                                "--listen",
                                "127.0.0.1:0",
                                "--name",
                                name,
                                "--gossip-ms",
                                "100",
                                "--failure-timeout-ms",
                                "1000"};
        int a = 14;
        if (i > 0) {
            argv[a++] = "--join";
            argv[a++] = c->n[0].addr;
        }
        argv[a] = NULL;
        execv(qfs_bin(), (char *const *)argv);
        _exit(127);
    }
    for (int t = 0; t < 500; t++) {
        FILE *f = fopen(n->log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "serving on ");
            if (at && sscanf(at, "serving on %63s", n->addr) == 1) {
                fclose(f);
                return;
            }
        }
        if (f) fclose(f);
        sleep_ms(10);
    }
    cr_assert_fail("node %d did not start (see %s)", i, n->log);
}

static inline void qnode_kill(qnode *n) {
    if (n->pid <= 0) return;
    kill(n->pid, SIGKILL);
    waitpid(n->pid, NULL, 0);
    n->pid = 0;
}

/* Wait until every node serves a ring of all of them with no move. */
static inline void qcluster_wait_stable(qcluster *c) {
    for (int t = 0; t < 600; t++) {
        int ok = 0;
        for (int i = 0; i < c->count; i++) {
            rep_client *cl;
            if (rep_client_connect(c->n[i].addr, 2000, &cl) != 0) continue;
            kv_buf b = KV_BUF_INIT;
            ring_cluster *s = NULL;
            if (rep_client_state(cl, &b) == 0 &&
                ring_cluster_decode(kv_buf_slice(&b), &s) == 0) {
                const ring *r = ring_cluster_ring(s);
                if (r && !ring_cluster_next(s) &&
                    ring_members(r) == (uint32_t)c->count)
                    ok++;
                ring_cluster_unref(s);
            }
            kv_buf_release(&b);
            rep_client_close(cl);
        }
        if (ok == c->count) return;
        sleep_ms(50);
    }
    cr_assert_fail("the ring did not settle at %d members", c->count);
}

static inline void qcluster_start(qcluster *c, int count) {
    make_tmpdir(c->dir, sizeof c->dir, "qfs-fscl");
    c->count = count;
    c->join[0] = 0;
    for (int i = 0; i < count; i++) {
        qnode_start(c, i);
        if (i) strcat(c->join, ",");
        strcat(c->join, c->n[i].addr);
    }
    qcluster_wait_stable(c);
}

static inline void qcluster_stop(qcluster *c) {
    for (int i = 0; i < QNODES_MAX; i++) qnode_kill(&c->n[i]);
    if (c->dir[0] && !getenv("QFS_KEEP_TEST_DIRS")) rm_tree(c->dir);
}

#endif
