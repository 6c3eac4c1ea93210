/*
 * quorumfs mount [--join HOST:PORT,...] [--data DIR] [-o OPTS] [-f]
 *                [--log FILE] MOUNTPOINT
 *
 * Without --join: an embedded single-node store (N = R = W = 1) in DIR
 * (default: $QFS_DATA, else /var/lib/quorumfs for root, else
 * ~/.local/share/quorumfs). With --join: a client of those nodes, trying
 * the next one when a connection fails.
 *
 * Unless -f, the command returns once the mount is ready (or failed, with
 * the reason): it forks first, before any thread exists, and the child
 * reports through a pipe. SIGTERM, SIGINT, SIGHUP and an unmount
 * (fusermount3 -u, umount) write back what is dirty and stop.
 */
#include "cli/cli.h"
#include "fs/fs.h"
#include "replica/client.h"
#include "replica/node.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ENDPOINTS 16

typedef struct mount_cfg {
    const char *join;
    char *endpoints[MAX_ENDPOINTS];
    int nendpoints;
    char data[PATH_MAX];
    const char *log;
    const char *mountpoint;
    bool foreground;
    qfs_fs_opts fo;
    char fuse_opts[1024]; /* options passed on to FUSE */
    rep_node *node;
    unsigned next; /* endpoint of the next connection */
} mount_cfg;

static int connect_embedded(void *arg, unsigned attempt, rep_client **out) {
    (void)attempt;
    mount_cfg *m = arg;
    return rep_node_connect_local(m->node, m->fo.timeout_ms, out);
}

static int connect_cluster(void *arg, unsigned attempt, rep_client **out) {
    mount_cfg *m = arg;
    /* Spread connections over the nodes; a retry goes to the next one. */
    unsigned i = __atomic_fetch_add(&m->next, 1, __ATOMIC_RELAXED);
    (void)attempt;
    int rc = -ECONNREFUSED;
    for (int k = 0; k < m->nendpoints; k++) {
        const char *ep =
            m->endpoints[(i + (unsigned)k) % (unsigned)m->nendpoints];
        /* A dead node must not take a call's whole deadline per try. */
        rc = rep_client_connect(ep, KV_MIN(m->fo.timeout_ms, 2000u), out);
        if (rc == 0) return 0;
    }
    return rc;
}

static bool parse_num(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* -o a=b,c,...: ours are taken, the rest go to FUSE. */
static int parse_o(mount_cfg *m, char *opts) {
    for (char *save = NULL, *o = strtok_r(opts, ",", &save); o;
         o = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(o, '=');
        const char *v = eq ? eq + 1 : "";
        long n;
        size_t klen = eq ? (size_t)(eq - o) : strlen(o);
#define KEY(k) (klen == strlen(k) && strncmp(o, k, klen) == 0)
        if (KEY("n") || KEY("r") || KEY("w")) {
            if (!parse_num(v, 1, 16, &n)) {
                fprintf(stderr, "quorumfs mount: -o %s wants 1..16\n", o);
                return 2;
            }
            uint8_t *dst = KEY("n") ? &m->fo.n : KEY("r") ? &m->fo.r : &m->fo.w;
            *dst = (uint8_t)n;
        } else if (KEY("timeout_ms")) {
            if (!parse_num(v, 1, 600000, &n)) {
                fprintf(stderr, "quorumfs mount: -o %s wants 1..600000\n", o);
                return 2;
            }
            m->fo.timeout_ms = (uint32_t)n;
        } else if (KEY("attr_timeout") || KEY("entry_timeout")) {
            char *end;
            double d = strtod(v, &end);
            if (end == v || *end || !(d >= 0 && d <= 3600)) {
                fprintf(stderr, "quorumfs mount: -o %s wants 0..3600 s\n", o);
                return 2;
            }
            if (KEY("attr_timeout"))
                m->fo.attr_timeout = d;
            else
                m->fo.entry_timeout = d;
        } else if (KEY("sweep") || KEY("sweep_grace")) {
            char *end;
            double d = strtod(v, &end);
            double lo = KEY("sweep") ? 0 : 1;
            if (end == v || *end || !(d >= lo && d <= 30 * 86400.0)) {
                fprintf(stderr, "quorumfs mount: -o %s wants %g..2592000 s\n",
                        o, lo);
                return 2;
            }
            if (KEY("sweep"))
                m->fo.sweep_s = d;
            else
                m->fo.sweep_grace_s = d;
        } else if (KEY("volume")) {
            if (!*v || strchr(v, '/') || strlen(v) > 60) {
                fprintf(stderr, "quorumfs mount: bad volume name '%s'\n", v);
                return 2;
            }
            m->fo.volume = v;
        } else {
            size_t used = strlen(m->fuse_opts);
            int w = snprintf(m->fuse_opts + used, sizeof m->fuse_opts - used,
                             ",%s", o);
            if (w < 0 || (size_t)w >= sizeof m->fuse_opts - used) {
                fprintf(stderr, "quorumfs mount: -o: too many options\n");
                return 2;
            }
        }
#undef KEY
    }
    if ((m->fo.r && m->fo.n && m->fo.r > m->fo.n) ||
        (m->fo.w && m->fo.n && m->fo.w > m->fo.n)) {
        fprintf(stderr, "quorumfs mount: r and w must be <= n\n");
        return 2;
    }
    if (m->fo.n && m->fo.r && m->fo.w && m->fo.r + m->fo.w <= m->fo.n)
        fprintf(stderr, "quorumfs mount: warning: r + w <= n: reads may "
                        "miss the last write\n");
    return 0;
}

static void default_data(mount_cfg *m) {
    const char *env = getenv("QFS_DATA");
    const char *home = getenv("HOME");
    if (env && *env)
        snprintf(m->data, sizeof m->data, "%s", env);
    else if (geteuid() == 0 || !home)
        snprintf(m->data, sizeof m->data, "/var/lib/quorumfs");
    else
        snprintf(m->data, sizeof m->data, "%s/.local/share/quorumfs", home);
}

static int mkdirs(const char *path) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -errno;
    return 0;
}

/* Run the mount; report readiness (0) or failure (its message) on
 * ready_fd when >= 0. Returns the exit code. */
static int run(mount_cfg *m, int ready_fd) {
    int rc = 0, code = 1;
    qfs_fs *fs = NULL;
    struct fuse_session *se = NULL;
    struct fuse_loop_config *lc = NULL;
    char msg[PATH_MAX + 2048] = "";
    if (!m->join) {
        rep_node_opts no;
        rep_node_opts_init(&no);
        no.data_dir = m->data;
        no.listen = NULL;
        no.name = "embedded";
        no.n_val = 1;
        if ((rc = mkdirs(m->data)) != 0 ||
            (rc = rep_node_open(&no, &m->node)) != 0 ||
            (rc = rep_node_start(m->node)) != 0) {
            snprintf(msg, sizeof msg, "cannot start the store in %s: %s",
                     m->data, kv_strerror(rc));
            goto out;
        }
        m->fo.n = m->fo.r = m->fo.w = 1;
        m->fo.connect = connect_embedded;
    } else {
        m->fo.connect = connect_cluster;
    }
    m->fo.connect_arg = m;
    if ((rc = qfs_fs_open(&m->fo, &fs)) != 0) {
        snprintf(msg, sizeof msg, "cannot open the filesystem: %s",
                 kv_strerror(rc));
        goto out;
    }
    char optbuf[1200];
    /* The kernel checks permissions from the attributes (POSIX); as root
     * the mount is for every user, as any other filesystem. */
    snprintf(optbuf, sizeof optbuf,
             "-ofsname=quorumfs,subtype=quorumfs,"
             "default_permissions%s%s",
             geteuid() == 0 ? ",allow_other" : "", m->fuse_opts);
    char *fargv[] = {"quorumfs", optbuf, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(2, fargv);
    se = fuse_session_new(&args, qfs_fs_ops(), sizeof(struct fuse_lowlevel_ops),
                          fs);
    fuse_opt_free_args(&args);
    if (!se) {
        snprintf(msg, sizeof msg, "bad FUSE options '%s'", optbuf + 2);
        goto out;
    }
    if (fuse_set_signal_handlers(se) != 0) {
        snprintf(msg, sizeof msg, "cannot set signal handlers");
        goto out;
    }
    if (fuse_session_mount(se, m->mountpoint) != 0) {
        snprintf(msg, sizeof msg, "cannot mount on %s (see above)",
                 m->mountpoint);
        fuse_remove_signal_handlers(se);
        goto out;
    }
    if (ready_fd >= 0) {
        /* Ready: the parent returns; our output goes to the log. */
        ssize_t w = write(ready_fd, "", 1);
        (void)w;
        close(ready_fd);
        ready_fd = -1;
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            dup2(null, STDOUT_FILENO);
            if (!m->log) dup2(null, STDERR_FILENO);
            close(null);
        }
    }
    kv_info("mount", "volume '%s' mounted on %s", m->fo.volume, m->mountpoint);
    lc = fuse_loop_cfg_create();
    if (lc) fuse_loop_cfg_set_max_threads(lc, 16);
    rc = fuse_session_loop_mt(se, lc);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    /* libfuse reports a stop by signal as the signal's number: a clean
     * stop, like an unmount. */
    code = rc == 0 || rc == SIGTERM || rc == SIGINT || rc == SIGHUP ? 0 : 1;
    if (code) kv_error("mount", "the FUSE loop failed: %d", rc);
out:
    if (lc) fuse_loop_cfg_destroy(lc);
    if (se) fuse_session_destroy(se);
    if (fs && (rc = qfs_fs_close(fs)) != 0) {
        kv_error("mount", "write-back at unmount failed: %s", kv_strerror(rc));
        code = 1;
    }
    if (m->node) {
        rep_node_stop(m->node);
        rep_node_close(m->node);
    }
    if (*msg) {
        fprintf(stderr, "quorumfs mount: %s\n", msg);
        if (ready_fd >= 0) {
            ssize_t w = write(ready_fd, msg, strlen(msg));
            (void)w;
        }
    }
    if (ready_fd >= 0) close(ready_fd);
    return code;
}

int cli_mount(int argc, char **argv) {
    mount_cfg m;
    memset(&m, 0, sizeof m);
    int log_fd = -1;
    qfs_fs_opts_init(&m.fo);
    bool data_set = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-f")) {
            m.foreground = true;
            continue;
        }
        if (a[0] != '-') {
            if (m.mountpoint) {
                fprintf(stderr, "quorumfs mount: one mount point only\n");
                return 2;
            }
            m.mountpoint = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "quorumfs mount: option '%s' needs a value\n", a);
            return 2;
        }
        char *v = argv[++i];
        if (!strcmp(a, "--join")) {
            m.join = v;
        } else if (!strcmp(a, "--data")) {
            snprintf(m.data, sizeof m.data, "%s", v);
            data_set = true;
        } else if (!strcmp(a, "--log")) {
            m.log = v;
        } else if (!strcmp(a, "-o")) {
            int rc = parse_o(&m, v);
            if (rc) return rc;
        } else {
            fprintf(stderr, "quorumfs mount: unknown option '%s'\n", a);
            return 2;
        }
    }
    if (!m.mountpoint) {
        fprintf(stderr,
                "usage: quorumfs mount [--join HOST:PORT,...] [--data DIR] "
                "[-o n=N,r=R,w=W,...] [-f] [--log FILE] MOUNTPOINT\n");
        return 2;
    }
    struct stat st;
    if (stat(m.mountpoint, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "quorumfs mount: %s is not a directory\n",
                m.mountpoint);
        return 2;
    }
    if (m.join) {
        if (data_set) {
            fprintf(stderr, "quorumfs mount: --data is for the embedded "
                            "store; with --join the nodes hold the data\n");
            return 2;
        }
        static char list[MAX_ENDPOINTS * 64];
        if (strlen(m.join) >= sizeof list) {
            fprintf(stderr, "quorumfs mount: --join list too long\n");
            return 2;
        }
        snprintf(list, sizeof list, "%s", m.join);
        for (char *save = NULL, *e = strtok_r(list, ",", &save); e;
             e = strtok_r(NULL, ",", &save)) {
            if (m.nendpoints == MAX_ENDPOINTS) {
                fprintf(stderr, "quorumfs mount: at most %d nodes in --join\n",
                        MAX_ENDPOINTS);
                return 2;
            }
            m.endpoints[m.nendpoints++] = e;
        }
        if (m.nendpoints == 0) {
            fprintf(stderr, "quorumfs mount: --join wants HOST:PORT,...\n");
            return 2;
        }
    } else if (!data_set) {
        default_data(&m);
    }
    if (m.log) {
        int fd = open(m.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "quorumfs mount: cannot open log %s: %s\n", m.log,
                    strerror(errno));
            return 2;
        }
        log_fd = fd;
    }
    /* Absolute paths: the daemon leaves the working directory. */
    char mp[PATH_MAX];
    if (!realpath(m.mountpoint, mp)) {
        fprintf(stderr, "quorumfs mount: %s: %s\n", m.mountpoint,
                strerror(errno));
        return 2;
    }
    m.mountpoint = mp;
    if (!m.join && m.data[0] != '/') {
        char cwd[PATH_MAX], abs[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd) || snprintf(abs, sizeof abs, "%s/%s", cwd,
                                                 m.data) >= (int)sizeof abs) {
            fprintf(stderr, "quorumfs mount: data path too long\n");
            return 2;
        }
        snprintf(m.data, sizeof m.data, "%s", abs);
    }
    if (m.foreground) {
        if (log_fd >= 0) {
            dup2(log_fd, STDERR_FILENO);
            close(log_fd);
        }
        return run(&m, -1);
    }
    int p[2];
    if (pipe(p) != 0) {
        perror("quorumfs mount: pipe");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("quorumfs mount: fork");
        return 1;
    }
    if (pid == 0) {
        close(p[0]);
        if (log_fd >= 0) { /* the daemon's lines go to the log */
            dup2(log_fd, STDERR_FILENO);
            close(log_fd);
        }
        setsid();
        if (chdir("/") != 0) _exit(1);
        _exit(run(&m, p[1]));
    }
    close(p[1]);
    if (log_fd >= 0) close(log_fd);
    char msg[PATH_MAX + 2048];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof msg - 1 &&
           (n = read(p[0], msg + got, sizeof msg - 1 - got)) > 0)
        got += (size_t)n;
    close(p[0]);
    if (got == 1 && msg[0] == 0) return 0; /* mounted */
    msg[got] = 0;
    /* The reason, from the child (which logged it too, with --log). */
    if (m.log || got == 0)
        fprintf(stderr, "quorumfs mount: %s\n",
                got ? msg : "the mount process exited before mounting");
    return 1;
}
