/*
 * benchutil: the helpers engine_bench, cluster_bench and fs_bench share.
 * The contract of each function is in benchutil.h.
 *
 * Invariants: a bu_procs slot holds a pid only while that process is
 * unreaped, so the pid cannot name another process: bu_child_reap clears
 * the slot under p->lock before it calls waitpid, and every kill but the
 * signal handler's is made under p->lock (the handler cannot take a lock;
 * it reads each pid once). The code between fork and exec in bu_spawn
 * makes only async-signal-safe calls.
 */
#include "bench/benchutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- the program's name -------------------------------------------------- */

static const char *g_prog = "bench"; /* set once, before any thread */

void bu_prog_set(const char *name) {
    g_prog = name;
}

const char *bu_prog(void) {
    return g_prog;
}

/* ---- time ---------------------------------------------------------------- */

double bu_secs_since(uint64_t t0) {
    return (double)(bu_now_ns() - t0) / 1e9;
}

void bu_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- latency histogram --------------------------------------------------- */

/* Buckets a histogram of sub_bits uses. */
static int hist_buckets(int sub_bits) {
    return (2 << sub_bits) + (BU_HIST_MAX_EXP - sub_bits - 1) * (1 << sub_bits);
}

/* The values bucket idx holds: [*lo, *hi). */
static void hist_bounds(int sub_bits, int idx, double *lo, double *hi) {
    int linear = 2 << sub_bits, sub_n = 1 << sub_bits;
    if (idx < linear) {
        *lo = idx;
        *hi = idx + 1;
        return;
    }
    int e = (idx - linear) / sub_n + sub_bits + 1;
    int sub = (idx - linear) % sub_n;
    *lo = (double)((uint64_t)(sub_n + sub) << (e - sub_bits));
    *hi = (double)((uint64_t)(sub_n + sub + 1) << (e - sub_bits));
}

void bu_hist_init(bu_hist *h, int sub_bits) {
    memset(h, 0, sizeof *h);
    h->sub_bits = sub_bits;
}

bu_hist *bu_hist_new(int sub_bits) {
    bu_hist *h = malloc(sizeof *h);
    if (h) bu_hist_init(h, sub_bits);
    return h;
}

void bu_hist_free(bu_hist *h) {
    free(h);
}

void bu_hist_reset(bu_hist *h) {
    bu_hist_init(h, h->sub_bits);
}

void bu_hist_merge(bu_hist *into, const bu_hist *h) {
    into->count += h->count;
    for (int i = 0, n = hist_buckets(h->sub_bits); i < n; i++)
        into->b[i] += h->b[i];
}

double bu_hist_quantile_us(const bu_hist *h, double q) {
    if (h->count == 0) return NAN;
    double want = q * (double)h->count, seen = 0;
    for (int i = 0, n = hist_buckets(h->sub_bits); i < n; i++) {
        if (h->b[i] == 0) continue;
        if (seen + (double)h->b[i] >= want) {
            double lo, hi;
            hist_bounds(h->sub_bits, i, &lo, &hi);
            double frac = (want - seen) / (double)h->b[i];
            return (lo + (hi - lo) * frac) / 1000.0;
        }
        seen += (double)h->b[i];
    }
    return NAN;
}

double bu_hist_midpoint_us(const bu_hist *h, double q) {
    if (h->count == 0) return NAN;
    uint64_t want = (uint64_t)ceil(q * (double)h->count), seen = 0;
    if (want < 1) want = 1;
    for (int i = 0, n = hist_buckets(h->sub_bits); i < n; i++) {
        seen += h->b[i];
        if (seen < want) continue;
        if (i < (2 << h->sub_bits)) return i / 1000.0;
        double lo, hi;
        hist_bounds(h->sub_bits, i, &lo, &hi);
        return (lo + (hi - lo) / 2) / 1000.0;
    }
    return NAN;
}

/* ---- error tally --------------------------------------------------------- */

void bu_tally_add(bu_tally *t, const char *op, int code, uint64_t count,
                  const char *sample) {
    t->total += count;
    for (int i = 0; i < t->n; i++) {
        if (t->e[i].code == code && strcmp(t->e[i].op, op) == 0) {
            t->e[i].count += count;
            return;
        }
    }
    if (t->n == BU_TALLY_MAX) {
        t->other += count;
        return;
    }
    t->e[t->n].op = op;
    t->e[t->n].code = code;
    t->e[t->n].count = count;
    snprintf(t->e[t->n].sample, sizeof t->e[t->n].sample, "%s",
             sample ? sample : "");
    t->n++;
}

void bu_tally_merge(bu_tally *into, const bu_tally *t) {
    for (int i = 0; i < t->n; i++)
        bu_tally_add(into, t->e[i].op, t->e[i].code, t->e[i].count,
                     t->e[i].sample);
    into->other += t->other;
    into->total += t->other;
}

void bu_tally_json(FILE *f, const bu_tally *t, bu_tally_name_fn name) {
    fputc('{', f);
    for (int i = 0; i < t->n; i++) {
        char kind[128];
        name(t, i, kind, sizeof kind);
        fprintf(f, "%s", i ? "," : "");
        bu_json_str(f, kind);
        fprintf(f, ":%" PRIu64, t->e[i].count);
    }
    if (t->other) fprintf(f, "%s\"other\":%" PRIu64, t->n ? "," : "", t->other);
    fputc('}', f);
}

void bu_tally_print(FILE *f, const bu_tally *t, bu_tally_name_fn name) {
    for (int i = 0; i < t->n; i++) {
        char kind[256];
        name(t, i, kind, sizeof kind);
        fprintf(f, "%s %" PRIu64 " x %s", i ? "," : "", t->e[i].count, kind);
    }
    if (t->other) fprintf(f, ", %" PRIu64 " x other", t->other);
}

/* ---- output -------------------------------------------------------------- */

void bu_json_num(FILE *f, const char *name, double v) {
    if (isnan(v) || isinf(v))
        fprintf(f, ",\"%s\":null", name);
    else
        fprintf(f, ",\"%s\":%.6g", name, v);
}

void bu_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

void bu_fmt_num(char *b, size_t n, double v, const char *fmt) {
    if (isnan(v))
        snprintf(b, n, "-");
    else
        snprintf(b, n, fmt, v);
}

void bu_print_log_tail(FILE *f, const char *path, const char *indent,
                       int max_lines) {
    FILE *in = path && *path ? fopen(path, "r") : NULL;
    if (!in) return;
    char buf[2048];
    long size = fseek(in, 0, SEEK_END) == 0 ? ftell(in) : 0;
    long from = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    fseek(in, from, SEEK_SET);
    size_t got = fread(buf, 1, sizeof buf - 1, in);
    fclose(in);
    buf[got] = '\0';
    char *lines[64];
    int n = 0;
    char *p = buf;
    if (from > 0 && (p = strchr(buf, '\n'))) p++; /* a partial first line */
    if (!p) p = buf;
    for (char *save = NULL, *l = strtok_r(p, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        if (n == (int)ARRAY_LEN(lines)) {
            memmove(lines, lines + 1, sizeof lines - sizeof lines[0]);
            n--;
        }
        lines[n++] = l;
    }
    if (n == 0) return;
    fprintf(f, "%slast lines of '%s':\n", indent, path);
    for (int i = n > max_lines ? n - max_lines : 0; i < n; i++)
        fprintf(f, "%s| %s\n", indent, lines[i]);
}

void bu_describe_status(int status, char *buf, size_t len) {
    if (WIFEXITED(status))
        snprintf(buf, len, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "status %d", status);
}

/* ---- command line -------------------------------------------------------- */

int bu_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", g_prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\ntry '%s --help'\n", g_prog);
    va_end(ap);
    return -1;
}

static bool listed(const char *const *names, const char *name) {
    for (; names && *names; names++)
        if (!strcmp(*names, name)) return true;
    return false;
}

int bu_opt_next(const bu_opt_spec *spec, int argc, char **argv, int *i,
                bu_opt *o) {
    const char *a = argv[*i];
    const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
    o->name = a;
    o->value = NULL;
    if (eq) {
        snprintf(o->buf, sizeof o->buf, "%.*s", (int)(eq - a), a);
        o->name = o->buf;
        o->value = eq + 1;
    }
    if (!strcmp(o->name, "-h") || !strcmp(o->name, "--help")) {
        spec->usage(stdout);
        exit(0);
    }
    if (listed(spec->flags, o->name)) {
        if (o->value)
            return bu_usage_error("option '%s' takes no value", o->name);
        return 0;
    }
    if (!listed(spec->with_value, o->name))
        return bu_usage_error("unknown option '%s'", o->name);
    if (!o->value) {
        if (*i + 1 >= argc)
            return bu_usage_error("option '%s' needs a value", o->name);
        o->value = argv[++*i];
    }
    return 0;
}

int bu_parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || !*s || s[0] == '-') return -1;
    *out = v;
    return 0;
}

int bu_parse_int(const char *s, int lo, int hi, int *out) {
    uint64_t v;
    if (bu_parse_u64(s, &v) || v < (uint64_t)lo || v > (uint64_t)hi) return -1;
    *out = (int)v;
    return 0;
}

int bu_parse_secs(const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo) || v > hi) return -1;
    *out = v;
    return 0;
}

/* ---- files and programs -------------------------------------------------- */

int bu_path_fmt(char *out, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, len, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

bool bu_executable(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
           access(path, X_OK) == 0;
}

bool bu_find_on_path(const char *name, char *out, size_t len) {
    const char *p = getenv("PATH");
    if (!p || !*p) p = "/usr/local/bin:/usr/bin:/bin";
    while (*p) {
        size_t l = strcspn(p, ":");
        if (l && bu_path_fmt(out, len, "%.*s/%s", (int)l, p, name) == 0 &&
            bu_executable(out))
            return true;
        p += l + (p[l] == ':');
    }
    out[0] = '\0';
    return false;
}

bool bu_find_quorumfs(char *out, size_t len) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            static const char *const rel[] = {"quorumfs", "../quorumfs"};
            for (size_t i = 0; i < ARRAY_LEN(rel); i++) {
                char cand[PATH_MAX];
                if (bu_path_fmt(cand, sizeof cand, "%s/%s", self, rel[i]) ==
                        0 &&
                    bu_executable(cand) && realpath(cand, out))
                    return true;
            }
        }
    }
    return bu_find_on_path("quorumfs", out, len);
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw) {
    if (remove(path) != 0 && errno != ENOENT)
        fprintf(stderr, "%s: cannot remove '%s': %s\n", g_prog, path,
                strerror(errno));
    return 0;
}

void bu_rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

int bu_work_dir(char *dir, size_t len, bool *made) {
    if (dir[0] == '\0') {
        if (bu_path_fmt(dir, len, "/tmp/%s.XXXXXX", g_prog) || !mkdtemp(dir)) {
            fprintf(stderr, "%s: cannot create a directory in '/tmp': %s\n",
                    g_prog, strerror(errno));
            return -1;
        }
        *made = true;
    } else if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create '%s': %s\n", g_prog, dir,
                strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- signals ------------------------------------------------------------- */

void bu_signals_catch(void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

void bu_signals_block(sigset_t *old) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, old);
}

/* ---- child processes ----------------------------------------------------- */

void bu_procs_signal(bu_procs *p, int sig) {
    int expected = 0;
    bool first = atomic_compare_exchange_strong(&p->stop, &expected, sig);
    for (int i = 0; i < BU_MAX_CHILDREN; i++) {
        pid_t pid = p->c[i].pid;
        if (pid > 0) kill(-pid, first ? SIGTERM : SIGKILL);
    }
    if (!first) _exit(128 + sig);
}

bool bu_procs_stopping(bu_procs *p) {
    return atomic_load_explicit(&p->stop, memory_order_relaxed) != 0;
}

void bu_procs_request_stop(bu_procs *p, int sig) {
    int expected = 0;
    atomic_compare_exchange_strong(&p->stop, &expected, sig);
}

static int open_out(const char *path) {
    return open(path && *path ? path : "/dev/null",
                O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static void exec_child(pid_t parent, const sigset_t *old, int ofd, int efd,
                       char *const argv[]) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, old, NULL);
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) dup2(nul, 0);
    dup2(ofd, 1);
    dup2(efd, 2);
    execv(argv[0], argv);
    static const char msg[] = ": exec failed\n";
    if (write(2, g_prog, strlen(g_prog)) < 0 ||
        write(2, msg, sizeof msg - 1) < 0)
        _exit(127);
    _exit(127);
}

int bu_spawn(bu_procs *p, int group, int kind, const char *name,
             char *const argv[], const char *out, const char *err) {
    int ofd = open_out(out), efd = open_out(err);
    if (ofd < 0 || efd < 0) {
        fprintf(stderr, "%s: cannot open '%s': %s\n", g_prog,
                ofd < 0 ? out : err, strerror(errno));
        if (ofd >= 0) close(ofd);
        if (efd >= 0) close(efd);
        return -1;
    }
    sigset_t old;
    bu_signals_block(&old);
    pthread_mutex_lock(&p->lock);
    int slot = -1;
    for (int i = 0; i < BU_MAX_CHILDREN && slot < 0; i++)
        if (p->c[i].pid == 0) slot = i;
    pid_t parent = getpid(), pid = -1;
    if (slot >= 0) pid = fork();
    if (pid == 0) exec_child(parent, &old, ofd, efd, argv);
    int fork_errno = errno;
    if (pid > 0) {
        setpgid(pid, pid); /* also here, so no kill can precede it */
        bu_child *ch = &p->c[slot];
        ch->group = group;
        ch->kind = kind;
        snprintf(ch->name, sizeof ch->name, "%s", name);
        snprintf(ch->log, sizeof ch->log, "%s", err ? err : "");
        ch->pid = pid;
    }
    pthread_mutex_unlock(&p->lock);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(ofd);
    close(efd);
    if (slot < 0) {
        fprintf(stderr, "%s: too many child processes\n", g_prog);
        return -1;
    }
    if (pid < 0) {
        fprintf(stderr, "%s: cannot fork: %s\n", g_prog, strerror(fork_errno));
        return -1;
    }
    return slot;
}

bool bu_child_exited(bu_procs *p, int slot) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)p->c[slot].pid, &si, WEXITED | WNOHANG | WNOWAIT) !=
        0)
        return errno == ECHILD;
    return si.si_pid != 0;
}

bool bu_child_wait(bu_procs *p, int slot, int ms) {
    uint64_t deadline = bu_now_ns() + (uint64_t)ms * 1000000u;
    while (!bu_child_exited(p, slot)) {
        if (bu_now_ns() >= deadline) return false;
        bu_sleep_ms(10);
    }
    return true;
}

int bu_child_reap(bu_procs *p, int slot) {
    sigset_t old;
    bu_signals_block(&old);
    pthread_mutex_lock(&p->lock);
    pid_t pid = p->c[slot].pid;
    p->c[slot].pid = 0;
    pthread_mutex_unlock(&p->lock);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return st;
}

/* Send sig to the process group of the child in slot, under the lock. */
static void child_kill(bu_procs *p, int slot, int sig) {
    pthread_mutex_lock(&p->lock);
    if (p->c[slot].pid > 0) kill(-p->c[slot].pid, sig);
    pthread_mutex_unlock(&p->lock);
}

int bu_child_stop(bu_procs *p, int slot, int grace_ms, bool *killed) {
    *killed = false;
    if (!bu_child_exited(p, slot)) {
        child_kill(p, slot, SIGTERM);
        if (!bu_child_wait(p, slot, grace_ms)) {
            child_kill(p, slot, SIGKILL);
            *killed = true;
            bu_child_wait(p, slot, 10000);
        }
    }
    return bu_child_reap(p, slot);
}

static bool in_group(const bu_child *ch, int group) {
    return ch->pid > 0 && (group < 0 || ch->group == group);
}

int bu_procs_terminate(bu_procs *p, int group, int grace_ms) {
    bool any = false;
    for (int i = 0; i < BU_MAX_CHILDREN; i++) {
        if (in_group(&p->c[i], group)) {
            child_kill(p, i, SIGTERM);
            any = true;
        }
    }
    if (!any) return 0;
    uint64_t deadline = bu_now_ns() + (uint64_t)grace_ms * 1000000u;
    for (;;) {
        int left = 0;
        for (int i = 0; i < BU_MAX_CHILDREN; i++) {
            if (!in_group(&p->c[i], group)) continue;
            if (bu_child_exited(p, i))
                bu_child_reap(p, i);
            else
                left++;
        }
        if (left == 0 || bu_now_ns() >= deadline) return left;
        bu_sleep_ms(20);
    }
}

void bu_procs_kill(bu_procs *p, int kind, int group) {
    pthread_mutex_lock(&p->lock);
    for (int i = 0; i < BU_MAX_CHILDREN; i++) {
        bu_child *ch = &p->c[i];
        if (ch->kind == kind && in_group(ch, group)) kill(-ch->pid, SIGKILL);
    }
    pthread_mutex_unlock(&p->lock);
}
