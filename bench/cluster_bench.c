/*
 * cluster_bench: YCSB-style workloads against a quorumfs cluster, with a
 * 3-member etcd cluster on loopback as the peer.
 *
 * For each system it starts a local cluster (quorumfs nodes or etcd members
 * as child processes, each in a process group of its own, stopped at the
 * end, on SIGINT/SIGTERM, on errors, and killed by the kernel if this
 * program dies: PR_SET_PDEATHSIG) or uses one already running, loads
 * --records keys with blind puts, then runs each workload (A 50/50
 * read/update, B 95/5, C read-only; YCSB's scrambled zipfian keys,
 * 1000-byte values) open loop at several offered rates.
 *
 * Open loop without coordinated omission: the workers share one schedule
 * of intended start times (uniform interarrival at the offered rate); a
 * worker takes the next slot, sleeps until it and records latency from the
 * intended start to completion, so time queued behind a slow system
 * counts. Slots the schedule held that no worker had started by the end
 * enter the histogram with the time they had waited then, a lower bound,
 * and are reported as "unsent". Histograms are log-linear with 64
 * sub-buckets per power of two (within about 1%), merged across threads.
 *
 * An update is what a real client does: read the key, then put with that
 * read's causal context (etcd: read, then put), unless --update blind.
 * Options and output: docs/PERFORMANCE.md, "Cluster benchmark".
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "bench/benchutil.h"
#include "replica/client.h"
#include "replica/dvv.h"
#include "ring/ring.h"

#define MAX_NODES 16 /* a quorumfs request names at most 16 replicas */
#define MAX_LIST 16
#define MAX_THREADS 1024
#define MAX_RESULTS 256
#define KEY_LEN 16                /* "user" + 12 digits */
#define MAX_VALUE (1u << 20)      /* etcd refuses requests over 1.5 MiB */
#define VALUE_POOL (1u << 20)     /* random bytes values are cut from */
#define HTTP_ERR_BASE (-20000)    /* HTTP status s is the code BASE - s */
#define HTTP_MAX_BODY (64u << 20) /* a longer reply is a protocol error */
#define READY_KEY "cluster_bench.ready"
#define HIST_SUB_BITS 6 /* 64 sub-buckets per power of two: within ~1% */

/* ---- configuration --------------------------------------------------------
 */

typedef struct workload {
    const char *name;
    double read_frac; /* the rest are updates */
} workload;

static const workload all_workloads[] = {
    {"a", 0.50}, /* YCSB A: update heavy */
    {"b", 0.95}, /* YCSB B: read mostly */
    {"c", 1.00}, /* YCSB C: read only */
};

enum sys_id { SYS_QUORUMFS, SYS_ETCD, SYS_COUNT };
static const char *const sys_names[SYS_COUNT] = {"quorumfs", "etcd"};

typedef struct cfg {
    bool run_sys[SYS_COUNT];
    int nodes; /* quorumfs nodes started (or listed) */
    bool nodes_set;
    char *cluster[MAX_NODES]; /* --cluster endpoints; none: start nodes */
    int ncluster;
    char qbin[PATH_MAX]; /* the quorumfs binary */
    char ebin[PATH_MAX]; /* etcd; "" when not installed */
    bool ebin_set;
    int etcd_nodes;
    char *etcd_eps[MAX_NODES]; /* --etcd-endpoints; none: start members */
    int netcd_eps;
    char dir[PATH_MAX];
    bool dir_made, keep;
    int base_port; /* 0: free ports from the kernel */
    bool rates_auto;
    double rates[MAX_LIST];
    int nrates;
    int pcts[MAX_LIST]; /* --auto-points */
    int npcts;
    double duration, warmup; /* seconds */
    int threads;
    uint64_t records;
    size_t value_size;
    const workload *wls[MAX_LIST];
    int nwls;
    int n, r, w; /* 0 until defaulted from the node count */
    bool sync, blind, uniform, load, json;
    uint32_t timeout_ms;
    double ready_timeout; /* seconds */
    uint64_t seed;
    const char *node_args[8]; /* --node-arg: passed to every node started */
    int nnode_args;
    char *to_free[8]; /* copies the endpoint lists point into */
    int nto_free;
} cfg;

/* ---- small helpers --------------------------------------------------------
 */

/* Uniform in [0, 1), from the worker's stream *s. */
static inline double rnd_unit(uint64_t *s) {
    return (double)(bu_rnd_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* "user" and the 12 zero-padded decimal digits of n. */
static void key_format(char *k, uint64_t n) {
    memcpy(k, "user", 4);
    for (int i = KEY_LEN - 1; i >= 4; i--) {
        k[i] = (char)('0' + n % 10);
        n /= 10;
    }
    k[KEY_LEN] = '\0';
}

/* YCSB's Utils.fnvhash64: FNV-1 over the 8 bytes, low first, made
 * non-negative as Java's Math.abs does. */
static uint64_t fnv64(uint64_t v) {
    uint64_t h = 0xCBF29CE484222325ULL;
    for (int i = 0; i < 8; i++) {
        h ^= v & 0xff;
        v >>= 8;
        h *= 1099511628211ULL;
    }
    return (h >> 63) ? ~h + 1 : h;
}

/*
 * YCSB's ScrambledZipfianGenerator: a zipfian (Gray et al., theta 0.99)
 * over 10^10 items with YCSB's precomputed zeta, each draw hashed (FNV)
 * onto the records, so the popular keys are scattered over the key space
 * (and so over the ring) instead of being the first few records.
 */
#define ZIPF_ITEMS 10000000000.0
#define ZIPF_THETA 0.99
#define ZIPF_ZETAN 26.46902820178302

typedef struct zipf {
    double alpha, eta, half_pow;
    uint64_t records;
} zipf;

static void zipf_init(zipf *z, uint64_t records) {
    double zeta2 = 1.0 + pow(0.5, ZIPF_THETA);
    z->alpha = 1.0 / (1.0 - ZIPF_THETA);
    z->eta = (1.0 - pow(2.0 / ZIPF_ITEMS, 1.0 - ZIPF_THETA)) /
             (1.0 - zeta2 / ZIPF_ZETAN);
    z->half_pow = pow(0.5, ZIPF_THETA);
    z->records = records;
}

static uint64_t zipf_next(const zipf *z, uint64_t *rng) {
    double u = rnd_unit(rng), uz = u * ZIPF_ZETAN;
    uint64_t item;
    if (uz < 1.0)
        item = 0;
    else if (uz < 1.0 + z->half_pow)
        item = 1;
    else
        item = (uint64_t)(ZIPF_ITEMS * pow(z->eta * u - z->eta + 1, z->alpha));
    return fnv64(item) % z->records;
}

/* ---- errors ----------------------------------------------------------------
 * Errors are counted by code in a bu_tally (op ""), not fatal. etcd's HTTP
 * errors keep a sample of the body, which names the cause.
 */

static void err_name(int rc, char *buf, size_t len) {
    if (rc <= HTTP_ERR_BASE && rc > HTTP_ERR_BASE - 1000)
        snprintf(buf, len, "HTTP %d", HTTP_ERR_BASE - rc);
    else
        snprintf(buf, len, "%s", kv_strerror(rc));
}

/* A kind of error in JSON: its code's name (bu_tally_name_fn). */
static void kind_name(const bu_tally *t, int i, char *buf, size_t len) {
    err_name(t->e[i].code, buf, len);
}

/* A kind of error in a note: its code's name and its sample, if any. */
static void kind_text(const bu_tally *t, int i, char *buf, size_t len) {
    char name[64];
    err_name(t->e[i].code, name, sizeof name);
    if (t->e[i].sample[0])
        snprintf(buf, len, "%s (%s)", name, t->e[i].sample);
    else
        snprintf(buf, len, "%s", name);
}

/* ---- child processes ------------------------------------------------------
 * The signal handler and the atexit hook must reach every child, so the
 * table is process-wide: the program's edge, not a library. A child's
 * group is the system it belongs to. Only the main thread starts and
 * reaps children.
 */

static bu_procs g_procs = BU_PROCS_INIT;
static char g_rm_dirs[4][PATH_MAX]; /* removed at exit unless --keep */
static int g_nrm_dirs;

static void on_signal(int sig) {
    bu_procs_signal(&g_procs, sig);
}

static bool stopping(void) {
    return bu_procs_stopping(&g_procs);
}

/* If the child in slot has exited, reap it, report it (with the end of its
 * log) and return true. */
static bool child_exited(int slot, const char *when) {
    const bu_child *ch = &g_procs.c[slot];
    if (ch->pid <= 0 || !bu_child_exited(&g_procs, slot)) return false;
    char how[64], name[32], log[PATH_MAX];
    snprintf(name, sizeof name, "%s", ch->name);
    snprintf(log, sizeof log, "%s", ch->log);
    int sys = ch->group;
    bu_describe_status(bu_child_reap(&g_procs, slot), how, sizeof how);
    fprintf(stderr, "cluster_bench: %s '%s' exited (%s) %s\n", sys_names[sys],
            name, how, when);
    bu_print_log_tail(stderr, log, "  ", 64);
    return true;
}

/* true if every child of sys still runs; reports those that do not. */
static bool children_alive(int sys, const char *when) {
    bool ok = true;
    for (int i = 0; i < BU_MAX_CHILDREN; i++)
        if (g_procs.c[i].pid > 0 && g_procs.c[i].group == sys &&
            child_exited(i, when))
            ok = false;
    return ok;
}

/* Stop the children of sys (every child for sys < 0): SIGTERM to each
 * process group, up to grace_ms for them to exit, then SIGKILL. */
static void stop_children(int sys, int grace_ms) {
    if (bu_procs_terminate(&g_procs, sys, grace_ms) == 0) return;
    for (int i = 0; i < BU_MAX_CHILDREN; i++) {
        const bu_child *ch = &g_procs.c[i];
        if (ch->pid <= 0 || (sys >= 0 && ch->group != sys)) continue;
        fprintf(stderr, "cluster_bench: %s '%s' did not stop; killing it\n",
                sys_names[ch->group], ch->name);
        bool killed;
        bu_child_stop(&g_procs, i, 0, &killed);
    }
}

static bool g_keep;

/* atexit: nothing we started outlives us, whatever path led here. */
static void cleanup(void) {
    stop_children(-1, 5000);
    if (!g_keep)
        for (int i = 0; i < g_nrm_dirs; i++) bu_rm_rf(g_rm_dirs[i]);
    g_nrm_dirs = 0;
}

static void remove_at_exit(const char *path) {
    if (g_nrm_dirs < (int)KV_ARRAY_LEN(g_rm_dirs))
        snprintf(g_rm_dirs[g_nrm_dirs++], PATH_MAX, "%s", path);
}

/* ---- ports ----------------------------------------------------------------
 */

static int g_ports[4 * MAX_NODES];
static int g_nports;

/* A free loopback port: --base-port and up, else one the kernel picks for
 * a bound socket (then released, so another process could take it first:
 * the child then fails to listen and says so). */
static int port_alloc(const cfg *c) {
    for (int tries = 0; tries < 100; tries++) {
        int p = 0;
        if (c->base_port) {
            p = c->base_port + g_nports + tries;
        } else {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            struct sockaddr_in sa = {.sin_family = AF_INET};
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            socklen_t len = sizeof sa;
            if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
                getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
                p = ntohs(sa.sin_port);
            if (fd >= 0) close(fd);
        }
        bool taken = p <= 0 || p > 65535;
        for (int i = 0; i < g_nports && !taken; i++) taken = g_ports[i] == p;
        if (!taken && g_nports < (int)KV_ARRAY_LEN(g_ports)) {
            g_ports[g_nports++] = p;
            return p;
        }
    }
    fprintf(stderr, "cluster_bench: cannot find a free port\n");
    return -1;
}

/* Report a path that bu_path_fmt cut short (out holds its start). -1. */
static int too_long(const char *out) {
    fprintf(stderr, "cluster_bench: path too long: '%s...'\n", out);
    return -1;
}

/* ---- systems --------------------------------------------------------------
 * Each system is a set of endpoints and five calls on a per-worker
 * connection. A connection reconnects by itself after an error.
 */

typedef struct endpoints {
    int n;
    char addr[MAX_NODES][64]; /* "HOST:PORT" */
} endpoints;

typedef struct sysctx sysctx;

typedef struct sys_ops {
    /* A connection to endpoint idx % endpoints (connected now). */
    int (*open)(const sysctx *s, int idx, void **out);
    void (*close)(void *conn);
    /* Read key: 0 or KV_ENOTFOUND, *siblings the values found; with ctx
     * non-NULL the context to pass to a following write. */
    int (*read)(void *conn, const char *key, int *siblings, kv_buf *ctx);
    /* Write value under key with context ctx (empty: blind). */
    int (*write)(void *conn, const char *key, kv_slice ctx, kv_slice value);
    /* Text of the last error if the system sent one, else NULL. */
    const char *(*errtext)(void *conn);
} sys_ops;

struct sysctx {
    int id;
    const sys_ops *ops;
    const cfg *c;
    endpoints ep;
    rep_opts o;           /* quorumfs */
    int slots[MAX_NODES]; /* child slots of the members we started */
    int nslots;
};

static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        uint64_t t = bu_now_ns();
        if (t >= deadline) return KV_ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int ms = (int)KV_MIN((deadline - t) / 1000000u + 1, 60000u);
        int r = poll(&p, 1, ms);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -errno;
    }
}

/* ---- quorumfs -------------------------------------------------------------
 */

typedef struct q_conn {
    rep_client *cl;
    const char *addr;
    rep_opts o;
    uint32_t timeout_ms;
    kv_buf obj;
} q_conn;

static void q_close(void *p) {
    q_conn *q = p;
    if (!q) return;
    rep_client_close(q->cl);
    kv_buf_release(&q->obj);
    free(q);
}

static int q_ensure(q_conn *q) {
    if (q->cl) return 0;
    return rep_client_connect(q->addr, q->timeout_ms, &q->cl);
}

/* A quorum or validation failure leaves the connection usable; anything
 * else may have broken it, so reconnect on the next call. */
static int q_fail(q_conn *q, int rc) {
    if (rc != KV_ENOTFOUND && rc != KV_EQUORUM && rc != -EINVAL) {
        rep_client_close(q->cl);
        q->cl = NULL;
    }
    return rc;
}

static int q_open(const sysctx *s, int idx, void **out) {
    q_conn *q = calloc(1, sizeof *q);
    if (!q) return -ENOMEM;
    q->addr = s->ep.addr[idx % s->ep.n];
    q->o = s->o;
    q->timeout_ms = s->c->timeout_ms;
    kv_buf_init(&q->obj);
    int rc = q_ensure(q);
    if (rc) {
        q_close(q);
        return rc;
    }
    *out = q;
    return 0;
}

static int q_read(void *p, const char *key, int *siblings, kv_buf *ctx) {
    q_conn *q = p;
    *siblings = 0;
    if (ctx) kv_buf_reset(ctx);
    int rc = q_ensure(q);
    if (rc) return rc;
    rc = rep_client_get(q->cl, kv_slice_str(key), &q->o, &q->obj);
    if (rc) return q_fail(q, rc);
    /* A real client decodes the object: the siblings, and the context. */
    dvv_set *set = NULL;
    dvv_ctx *cx = NULL;
    rc = dvv_set_decode(kv_buf_slice(&q->obj), &set);
    if (rc) return KV_EPROTO;
    *siblings = (int)dvv_set_siblings(set);
    if (ctx) {
        rc = dvv_set_join(set, &cx);
        if (rc == 0) rc = dvv_ctx_encode(cx, ctx);
    }
    dvv_ctx_free(cx);
    dvv_set_free(set);
    return rc;
}

static int q_write(void *p, const char *key, kv_slice ctx, kv_slice value) {
    q_conn *q = p;
    int rc = q_ensure(q);
    if (rc) return rc;
    rc = rep_client_put(q->cl, kv_slice_str(key), ctx, value, &q->o);
    return rc ? q_fail(q, rc) : 0;
}

static const char *q_errtext(void *p) {
    return NULL;
}

static const sys_ops quorumfs_ops = {q_open, q_close, q_read, q_write,
                                     q_errtext};

/* ---- HTTP/1.1 over a raw socket (for etcd's JSON gateway) ----------------
 * Keep-alive, one request in flight, Content-Length or chunked replies.
 */

typedef struct http_conn {
    int fd;
    char host[64];
    char port[8];
    uint32_t timeout_ms;
    kv_buf out; /* the request being sent */
    kv_buf in;  /* received bytes, consumed from in_off */
    size_t in_off;
    kv_buf body; /* the last reply's body, NUL-terminated */
    int status;  /* the last reply's HTTP status */
} http_conn;

/* Split "HOST:PORT" or "http://HOST:PORT" into host and port. */
static int parse_hostport(const char *spec, char *host, size_t hlen, char *port,
                          size_t plen) {
    if (!strncmp(spec, "http://", 7)) spec += 7;
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || (size_t)(colon - spec) >= hlen) return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if ((*end && strcmp(end, "/")) || p < 1 || p > 65535) return -1;
    snprintf(host, hlen, "%.*s", (int)(colon - spec), spec);
    snprintf(port, plen, "%ld", p);
    return 0;
}

static void http_init(http_conn *h, const char *hostport, uint32_t tmo) {
    memset(h, 0, sizeof *h);
    h->fd = -1;
    h->timeout_ms = tmo;
    if (parse_hostport(hostport, h->host, sizeof h->host, h->port,
                       sizeof h->port))
        h->host[0] = '\0';
    kv_buf_init(&h->out);
    kv_buf_init(&h->in);
    kv_buf_init(&h->body);
}

static void http_disconnect(http_conn *h) {
    if (h->fd >= 0) close(h->fd);
    h->fd = -1;
    kv_buf_reset(&h->in);
    h->in_off = 0;
}

static void http_release(http_conn *h) {
    http_disconnect(h);
    kv_buf_release(&h->out);
    kv_buf_release(&h->in);
    kv_buf_release(&h->body);
}

static int http_connect(http_conn *h, uint64_t deadline) {
    if (!h->host[0]) return -EINVAL;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM},
                    *ai = NULL;
    if (getaddrinfo(h->host, h->port, &hints, &ai) != 0 || !ai)
        return -EHOSTUNREACH;
    int rc = 0;
    h->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (h->fd < 0) {
        rc = -errno;
    } else if (connect(h->fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS) {
            rc = -errno;
        } else if ((rc = wait_fd(h->fd, POLLOUT, deadline)) == 0) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            rc = -err;
        }
    }
    freeaddrinfo(ai);
    if (rc == 0) {
        int one = 1;
        setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    } else {
        http_disconnect(h);
    }
    return rc;
}

/* Receive more bytes into h->in. */
static int http_fill(http_conn *h, uint64_t deadline) {
    if (kv_buf_reserve(&h->in, 16384)) return -ENOMEM;
    for (;;) {
        ssize_t r =
            recv(h->fd, h->in.ptr + h->in.len, h->in.cap - h->in.len, 0);
        if (r > 0) {
            h->in.len += (size_t)r;
            return 0;
        }
        if (r == 0) return -ECONNRESET;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
        int rc = wait_fd(h->fd, POLLIN, deadline);
        if (rc) return rc;
    }
}

/* Decode a whole chunked body from p[0..n) into out: 1 and *used when
 * complete, 0 when more bytes are needed, KV_EPROTO. */
static int chunked_decode(const uint8_t *p, size_t n, kv_buf *out,
                          size_t *used) {
    size_t i = 0;
    kv_buf_reset(out);
    for (;;) {
        const uint8_t *eol = memmem(p + i, n - i, "\r\n", 2);
        if (!eol) return 0;
        size_t size = 0, digits = 0;
        for (const uint8_t *q = p + i; q < eol; q++, digits++) {
            int d = *q >= '0' && *q <= '9'   ? *q - '0'
                    : *q >= 'a' && *q <= 'f' ? *q - 'a' + 10
                    : *q >= 'A' && *q <= 'F' ? *q - 'A' + 10
                                             : -1;
            if (d < 0) break; /* a chunk extension */
            size = size * 16 + (size_t)d;
            if (size > HTTP_MAX_BODY) return KV_EPROTO;
        }
        if (digits == 0) return KV_EPROTO;
        i = (size_t)(eol - p) + 2;
        if (size == 0) { /* trailers, then an empty line */
            for (;;) {
                eol = memmem(p + i, n - i, "\r\n", 2);
                if (!eol) return 0;
                size_t l = (size_t)(eol - (p + i));
                i += l + 2;
                if (l == 0) {
                    *used = i;
                    return 1;
                }
            }
        }
        if (n - i < size + 2) return 0;
        if (kv_buf_append(out, p + i, size)) return -ENOMEM;
        i += size;
        if (p[i] != '\r' || p[i + 1] != '\n') return KV_EPROTO;
        i += 2;
    }
}

/* Read one reply into h->status and h->body. */
static int http_read_reply(http_conn *h, uint64_t deadline, bool *close_after) {
    if (h->in_off) { /* keep only what is not consumed */
        memmove(h->in.ptr, h->in.ptr + h->in_off, h->in.len - h->in_off);
        h->in.len -= h->in_off;
        h->in_off = 0;
    }
    const uint8_t *hend;
    int rc;
    while (!(hend = memmem(h->in.ptr ? h->in.ptr : (const uint8_t *)"",
                           h->in.len, "\r\n\r\n", 4))) {
        if (h->in.len > 65536) return KV_EPROTO;
        if ((rc = http_fill(h, deadline))) return rc;
    }
    size_t hlen = (size_t)(hend - h->in.ptr) + 4;
    const char *p = (const char *)h->in.ptr, *end = (const char *)hend;
    if (hlen < 12 || strncmp(p, "HTTP/1.", 7)) return KV_EPROTO;
    h->status = atoi(p + 9);
    long clen = -1;
    bool chunked = false;
    *close_after = p[7] == '0'; /* HTTP/1.0 */
    for (const char *line = memchr(p, '\n', (size_t)(end - p));
         line && line < end; line = memchr(line, '\n', (size_t)(end - line))) {
        line++;
        if (!strncasecmp(line, "content-length:", 15))
            clen = strtol(line + 15, NULL, 10);
        else if (!strncasecmp(line, "transfer-encoding:", 18))
            chunked = strncasecmp(line + 18, " chunked", 8) == 0;
        else if (!strncasecmp(line, "connection:", 11))
            *close_after = strncasecmp(line + 11, " close", 6) == 0;
    }
    h->in_off = hlen;
    if (chunked) {
        size_t used = 0;
        while ((rc = chunked_decode(h->in.ptr + h->in_off,
                                    h->in.len - h->in_off, &h->body, &used)) ==
               0)
            if ((rc = http_fill(h, deadline))) return rc;
        if (rc < 0) return rc;
        h->in_off += used;
    } else if (clen >= 0) {
        if (clen > (long)HTTP_MAX_BODY) return KV_EPROTO;
        while (h->in.len - h->in_off < (size_t)clen)
            if ((rc = http_fill(h, deadline))) return rc;
        if (kv_buf_set(&h->body, h->in.ptr + h->in_off, (size_t)clen))
            return -ENOMEM;
        h->in_off += (size_t)clen;
    } else { /* the body runs to the end of the connection */
        while ((rc = http_fill(h, deadline)) == 0)
            if (h->in.len > HTTP_MAX_BODY) return KV_EPROTO;
        if (rc != -ECONNRESET) return rc;
        if (kv_buf_set(&h->body, h->in.ptr + h->in_off, h->in.len - h->in_off))
            return -ENOMEM;
        h->in_off = h->in.len;
        *close_after = true;
    }
    if (kv_buf_append(&h->body, "", 1)) return -ENOMEM;
    h->body.len--; /* NUL-terminated for strstr, not counted */
    return 0;
}

/* One request and its reply: 0 with h->status and h->body set, or a
 * connection error (the connection is then closed; the next call opens a
 * new one). */
static int http_call(http_conn *h, const char *method, const char *path,
                     const char *body, size_t blen) {
    uint64_t deadline = bu_now_ns() + (uint64_t)h->timeout_ms * 1000000u;
    int rc = 0;
    if (h->fd < 0 && (rc = http_connect(h, deadline))) return rc;
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s:%s\r\n"
                      "Content-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, h->host, h->port, blen);
    kv_buf_reset(&h->out);
    if (kv_buf_append(&h->out, head, (size_t)hl) ||
        (blen && kv_buf_append(&h->out, body, blen)))
        return -ENOMEM;
    size_t off = 0;
    while (off < h->out.len && rc == 0) {
        ssize_t w =
            send(h->fd, h->out.ptr + off, h->out.len - off, MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno == EINTR)
            continue;
        else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            rc = wait_fd(h->fd, POLLOUT, deadline);
        else
            rc = w < 0 ? -errno : -EIO;
    }
    bool close_after = false;
    if (rc == 0) rc = http_read_reply(h, deadline, &close_after);
    if (rc || close_after) http_disconnect(h);
    return rc;
}

/* ---- etcd (v3 JSON gateway) -----------------------------------------------
 * POST /v3/kv/range and /v3/kv/put with base64 keys and values. Reads are
 * linearizable (etcd's default: serializable is false).
 */

static void b64_append(kv_buf *b, const uint8_t *p, size_t n) {
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (kv_buf_reserve(b, (n + 2) / 3 * 4)) return;
    char *o = (char *)b->ptr + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = '=';
    }
    b->len = (size_t)(o - (char *)b->ptr);
}

typedef struct e_conn {
    http_conn h;
    kv_buf req;
    char err[120];
} e_conn;

static void e_close(void *p) {
    e_conn *e = p;
    if (!e) return;
    http_release(&e->h);
    kv_buf_release(&e->req);
    free(e);
}

/* A non-200 reply: keep gRPC-gateway's message, return the status code. */
static int e_http_error(e_conn *e) {
    const char *m = strstr((const char *)e->h.body.ptr, "\"message\":\"");
    if (m) {
        m += 11;
        const char *q = strchr(m, '"');
        snprintf(e->err, sizeof e->err, "%.*s",
                 (int)KV_MIN((size_t)(q ? q - m : 100), sizeof e->err - 1), m);
    } else {
        snprintf(e->err, sizeof e->err, "%.100s",
                 e->h.body.ptr ? (const char *)e->h.body.ptr : "");
    }
    return HTTP_ERR_BASE - e->h.status;
}

static int e_post(e_conn *e, const char *path) {
    int rc =
        http_call(&e->h, "POST", path, (const char *)e->req.ptr, e->req.len);
    if (rc) return rc;
    return e->h.status == 200 ? 0 : e_http_error(e);
}

static int e_open(const sysctx *s, int idx, void **out) {
    e_conn *e = calloc(1, sizeof *e);
    if (!e) return -ENOMEM;
    http_init(&e->h, s->ep.addr[idx % s->ep.n], s->c->timeout_ms);
    kv_buf_init(&e->req);
    uint64_t deadline = bu_now_ns() + (uint64_t)s->c->timeout_ms * 1000000u;
    int rc = http_connect(&e->h, deadline);
    if (rc) {
        e_close(e);
        return rc;
    }
    *out = e;
    return 0;
}

static int e_read(void *p, const char *key, int *siblings, kv_buf *ctx) {
    e_conn *e = p;
    *siblings = 0;
    if (ctx) kv_buf_reset(ctx); /* etcd needs no context to overwrite */
    kv_buf_reset(&e->req);
    kv_buf_append(&e->req, "{\"key\":\"", 8);
    b64_append(&e->req, (const uint8_t *)key, strlen(key));
    if (kv_buf_append(&e->req, "\"}", 2)) return -ENOMEM;
    int rc = e_post(e, "/v3/kv/range");
    if (rc) return rc;
    if (!strstr((const char *)e->h.body.ptr, "\"kvs\"")) return KV_ENOTFOUND;
    *siblings = 1;
    return 0;
}

static int e_write(void *p, const char *key, kv_slice ctx, kv_slice value) {
    e_conn *e = p;
    kv_buf_reset(&e->req);
    kv_buf_append(&e->req, "{\"key\":\"", 8);
    b64_append(&e->req, (const uint8_t *)key, strlen(key));
    kv_buf_append(&e->req, "\",\"value\":\"", 11);
    b64_append(&e->req, value.ptr, value.len);
    if (kv_buf_append(&e->req, "\"}", 2)) return -ENOMEM;
    return e_post(e, "/v3/kv/put");
}

static const char *e_errtext(void *p) {
    e_conn *e = p;
    return e->err[0] ? e->err : NULL;
}

static const sys_ops etcd_ops = {e_open, e_close, e_read, e_write, e_errtext};

/* ---- starting clusters ----------------------------------------------------
 */

static bool members_alive(sysctx *s, const char *when) {
    bool ok = children_alive(s->id, when);
    int live = 0;
    for (int i = 0; i < s->nslots; i++)
        if (g_procs.c[s->slots[i]].pid > 0) live++;
    return ok && live == s->nslots;
}

/* Use the running cluster at list (n endpoints, from the command line):
 * copy its endpoints into s and say so. */
static void use_running(sysctx *s, char *const *list, int n) {
    s->ep.n = n;
    for (int i = 0; i < n; i++)
        snprintf(s->ep.addr[i], sizeof s->ep.addr[i], "%s", list[i]);
    fprintf(stderr, "%s: using the running cluster %s", sys_names[s->id],
            list[0]);
    for (int i = 1; i < n; i++) fprintf(stderr, ",%s", list[i]);
    fprintf(stderr, "\n");
}

/* Make base (PATH_MAX bytes) the fresh directory <--dir>/<system> for the
 * members' data and logs, removed at exit unless --keep. 0, or -1 after
 * reporting. */
static int make_base(const sysctx *s, char *base) {
    if (bu_path_fmt(base, PATH_MAX, "%s/%s", s->c->dir, sys_names[s->id]))
        return too_long(base);
    bu_rm_rf(base);
    if (mkdir(base, 0755) != 0) {
        fprintf(stderr, "cluster_bench: cannot create '%s': %s\n", base,
                strerror(errno));
        return -1;
    }
    remove_at_exit(base);
    return 0;
}

/* The data directory and the log of member name under base, into data and
 * logpath (PATH_MAX bytes each). 0, or -1 after reporting. */
static int member_paths(const char *base, const char *name, char *data,
                        char *logpath) {
    if (bu_path_fmt(data, PATH_MAX, "%s/%s", base, name)) return too_long(data);
    if (bu_path_fmt(logpath, PATH_MAX, "%s/%s.log", base, name))
        return too_long(logpath);
    return 0;
}

/* Wait until addr accepts a quorumfs client, or its process exits. */
static int q_wait_listening(sysctx *s, const char *addr, uint64_t deadline) {
    int rc = KV_ETIMEDOUT;
    while (!stopping()) {
        if (!members_alive(s, "before the cluster was ready")) return -1;
        rep_client *cl;
        rc = rep_client_connect(addr, 500, &cl);
        if (rc == 0) {
            rep_client_close(cl);
            return 0;
        }
        if (bu_now_ns() >= deadline) break;
        bu_sleep_ms(50);
    }
    fprintf(stderr, "cluster_bench: quorumfs node at %s not answering: %s\n",
            addr, kv_strerror(rc));
    return -1;
}

/* Ask the node at addr for its cluster state. 1 when it serves a ring of
 * `want` members (at least `want` with at_least) and has no next ring, 0
 * when not yet, else the error of the connection or of decoding the
 * state. why gets what the node holds (or the error), *version the
 * version of its ring part. */
static int q_node_settled(const char *addr, uint32_t want, bool at_least,
                          uint64_t *version, char *why, size_t wlen) {
    rep_client *cl = NULL;
    ring_cluster *st = NULL;
    kv_buf b = KV_BUF_INIT;
    int rc = rep_client_connect(addr, 1000, &cl);
    if (rc == 0) rc = rep_client_state(cl, &b);
    if (rc == 0) rc = ring_cluster_decode(kv_buf_slice(&b), &st);
    if (rc) {
        snprintf(why, wlen, "%s", kv_strerror(rc));
        goto out;
    }
    const ring *r = ring_cluster_ring(st), *next = ring_cluster_next(st);
    uint32_t m = r ? ring_members(r) : 0;
    *version = ring_cluster_version(st);
    if (!r)
        snprintf(why, wlen, "no ring yet (joining)");
    else if (next)
        snprintf(why, wlen, "%u members serving, moving to %u", m,
                 ring_members(next));
    else
        snprintf(why, wlen, "%u member%s serving", m, m == 1 ? "" : "s");
    rc = r && !next && (at_least ? m >= want : m == want);
out:
    ring_cluster_unref(st);
    kv_buf_release(&b);
    rep_client_close(cl);
    return rc;
}

/* The cluster is ready when every node's cluster state (rep_client_state)
 * shows a serving ring of K members and no next ring, all at the same
 * ring version: the joins are done and no ownership is moving. K is the
 * node count; for --cluster, which may name a subset, at least K. */
static int q_wait_ready(sysctx *s, uint64_t deadline) {
    int k = s->ep.n, at = 0;
    bool at_least = s->c->ncluster > 0;
    uint64_t first = 0;
    char why[96] = "";
    while (at < k && !stopping()) {
        if (s->nslots && !members_alive(s, "before the cluster was ready"))
            return -1;
        uint64_t v = 0;
        int rc = q_node_settled(s->ep.addr[at], (uint32_t)k, at_least, &v, why,
                                sizeof why);
        if (rc == 1 && (at == 0 || v == first)) {
            if (at == 0) first = v;
            at++;
            continue;
        }
        if (rc == 1) /* settled on another version: start over */
            snprintf(why, sizeof why,
                     "ring version %" PRIu64 ", %s has %" PRIu64, v,
                     s->ep.addr[0], first);
        if (bu_now_ns() >= deadline) {
            fprintf(stderr,
                    "cluster_bench: quorumfs cluster not ready after %.0f s: "
                    "%s wants %s%d members serving and no move, has: %s\n",
                    s->c->ready_timeout, s->ep.addr[at],
                    at_least ? "at least " : "", k, why);
            return -1;
        }
        at = 0;
        bu_sleep_ms(100);
    }
    return at == k ? 0 : -1;
}

static int q_start(sysctx *s) {
    const cfg *c = s->c;
    uint64_t t0 = bu_now_ns();
    uint64_t deadline = t0 + (uint64_t)(c->ready_timeout * 1e9);
    if (c->ncluster) {
        use_running(s, c->cluster, c->ncluster);
        return q_wait_ready(s, deadline);
    }
    char base[PATH_MAX];
    if (make_base(s, base)) return -1;
    fprintf(stderr, "quorumfs: starting %d node%s (%s) in %s\n", c->nodes,
            c->nodes > 1 ? "s" : "", c->qbin, base);
    for (int i = 0; i < c->nodes; i++) {
        int port = port_alloc(c);
        if (port < 0) return -1;
        char name[16], data[PATH_MAX], logpath[PATH_MAX];
        snprintf(name, sizeof name, "n%d", i + 1);
        snprintf(s->ep.addr[i], sizeof s->ep.addr[i], "127.0.0.1:%d", port);
        if (member_paths(base, name, data, logpath)) return -1;
        char *argv[14 + KV_ARRAY_LEN(c->node_args)];
        int a = 0;
        argv[a++] = (char *)c->qbin;
        argv[a++] = "node";
        argv[a++] = "--data";
        argv[a++] = data;
        argv[a++] = "--listen";
        argv[a++] = s->ep.addr[i];
        argv[a++] = "--name";
        argv[a++] = name;
        /* Gossip (and heartbeats) every 100 ms instead of 500, so joins
         * settle in a second or two; costs each node 10 small frames a
         * second per peer. */
        argv[a++] = "--gossip-ms";
        argv[a++] = "100";
        if (i > 0) {
            argv[a++] = "--join";
            argv[a++] = s->ep.addr[0];
        }
        for (int k = 0; k < c->nnode_args; k++)
            argv[a++] = (char *)c->node_args[k];
        argv[a] = NULL;
        int slot = bu_spawn(&g_procs, s->id, 0, name, argv, logpath, logpath);
        if (slot < 0) return -1;
        s->slots[s->nslots++] = slot;
        s->ep.n = i + 1;
        /* A joining node needs the first one up; the others wait too, so
         * a node that fails says so before the next one starts. */
        if (q_wait_listening(s, s->ep.addr[i], deadline)) return -1;
    }
    if (q_wait_ready(s, deadline)) return -1;
    fprintf(stderr, "quorumfs: %d node%s ready in %.1f s\n", c->nodes,
            c->nodes > 1 ? "s" : "", bu_secs_since(t0));
    return 0;
}

/* GET /health on one etcd member: 0 when it says {"health":"true"}. */
static int e_health(const char *addr, uint32_t tmo, char *why, size_t wlen) {
    http_conn h;
    http_init(&h, addr, tmo);
    int rc = http_call(&h, "GET", "/health", NULL, 0);
    if (rc == 0 && (h.status != 200 ||
                    !strstr((const char *)h.body.ptr, "\"health\":\"true\""))) {
        snprintf(why, wlen, "HTTP %d %.80s", h.status,
                 (const char *)h.body.ptr);
        rc = -1;
    } else if (rc) {
        snprintf(why, wlen, "%s", kv_strerror(rc));
    }
    http_release(&h);
    return rc;
}

static int e_wait_ready(sysctx *s, uint64_t deadline) {
    char why[160] = "";
    for (int i = 0; i < s->ep.n && !stopping();) {
        if (s->nslots && !members_alive(s, "before the cluster was ready"))
            return -1;
        if (e_health(s->ep.addr[i], 1000, why, sizeof why) == 0) {
            i++;
            continue;
        }
        if (bu_now_ns() >= deadline) {
            fprintf(stderr,
                    "cluster_bench: etcd member %s not healthy after %.0f s: "
                    "%s\n",
                    s->ep.addr[i], s->c->ready_timeout, why);
            return -1;
        }
        bu_sleep_ms(100);
    }
    if (stopping()) return -1;
    /* One write through the gateway proves the path the workers use. */
    void *conn = NULL;
    int rc = etcd_ops.open(s, 0, &conn);
    uint8_t v = 'x';
    if (rc == 0)
        rc = etcd_ops.write(conn, READY_KEY, kv_slice_make(NULL, 0),
                            kv_slice_make(&v, 1));
    if (rc) {
        char name[32];
        err_name(rc, name, sizeof name);
        fprintf(stderr, "cluster_bench: etcd put through %s failed: %s %s\n",
                s->ep.addr[0], name,
                conn && etcd_ops.errtext(conn) ? etcd_ops.errtext(conn) : "");
    }
    etcd_ops.close(conn);
    return rc ? -1 : 0;
}

static int e_start(sysctx *s) {
    const cfg *c = s->c;
    uint64_t t0 = bu_now_ns();
    uint64_t deadline = t0 + (uint64_t)(c->ready_timeout * 1e9);
    if (c->netcd_eps) {
        use_running(s, c->etcd_eps, c->netcd_eps);
        return e_wait_ready(s, deadline);
    }
    char base[PATH_MAX];
    if (make_base(s, base)) return -1;
    int k = c->etcd_nodes, peer[MAX_NODES];
    char initial[MAX_NODES * 48] = "";
    for (int i = 0; i < k; i++) {
        int cp = port_alloc(c), pp = port_alloc(c);
        if (cp < 0 || pp < 0) return -1;
        peer[i] = pp;
        snprintf(s->ep.addr[i], sizeof s->ep.addr[i], "127.0.0.1:%d", cp);
        size_t l = strlen(initial);
        snprintf(initial + l, sizeof initial - l, "%se%d=http://127.0.0.1:%d",
                 i ? "," : "", i + 1, pp);
    }
    s->ep.n = k;
    fprintf(stderr, "etcd: starting %d member%s (%s) in %s\n", k,
            k > 1 ? "s" : "", c->ebin, base);
    for (int i = 0; i < k; i++) {
        char name[16], data[PATH_MAX], logpath[PATH_MAX], curl[64], purl[64];
        snprintf(name, sizeof name, "e%d", i + 1);
        if (member_paths(base, name, data, logpath)) return -1;
        snprintf(curl, sizeof curl, "http://%s", s->ep.addr[i]);
        snprintf(purl, sizeof purl, "http://127.0.0.1:%d", peer[i]);
        char *argv[] = {
            (char *)c->ebin, "--name", name, "--data-dir", data,
            "--listen-client-urls", curl, "--advertise-client-urls", curl,
            "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", "cluster-bench",
            /* Keep the revision history from filling the
             * backend quota during long runs, as any real
             * deployment does (Kubernetes compacts every
             * 5 minutes); the quota stays at its default. */
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention",
            "1m", "--logger", "zap", "--log-level", "warn", NULL};
        int slot = bu_spawn(&g_procs, s->id, 0, name, argv, logpath, logpath);
        if (slot < 0) return -1;
        s->slots[s->nslots++] = slot;
    }
    if (e_wait_ready(s, deadline)) return -1;
    fprintf(stderr, "etcd: %d member%s ready in %.1f s\n", k, k > 1 ? "s" : "",
            bu_secs_since(t0));
    return 0;
}

/* ---- workers --------------------------------------------------------------
 */

typedef enum run_mode { RUN_LOAD, RUN_CLOSED, RUN_OPEN } run_mode;

/* One measured run, shared by its workers (read-only but for next). */
typedef struct run_spec {
    run_mode mode;
    const workload *wl;
    double rate, interval_ns; /* open loop */
    uint64_t t0, measure_start, end;
    _Atomic uint64_t next; /* open: next schedule slot; load: next record */
} run_spec;

typedef struct worker {
    int idx;
    pthread_t thread;
    const cfg *c;
    const sysctx *sys;
    const zipf *z;
    const uint8_t *values; /* VALUE_POOL + value_size random bytes */
    run_spec *run;
    void *conn;
    uint64_t rng;
    kv_buf ctx;
    bu_hist *all, *rd, *up;
    bu_tally errs;
    uint64_t ok, reads, updates, errors, not_found, sib_reads, max_sib;
    uint64_t unsent;
} worker;

static void worker_reset(worker *w) {
    bu_hist_reset(w->all);
    bu_hist_reset(w->rd);
    bu_hist_reset(w->up);
    memset(&w->errs, 0, sizeof w->errs);
    w->ok = w->reads = w->updates = w->errors = w->not_found = 0;
    w->sib_reads = w->max_sib = w->unsent = 0;
}

static kv_slice value_pick(worker *w) {
    size_t off = (size_t)(bu_rnd_next(&w->rng) % VALUE_POOL);
    return kv_slice_make(w->values + off, w->c->value_size);
}

static uint64_t key_pick(worker *w) {
    if (w->c->uniform) return bu_rnd_next(&w->rng) % w->c->records;
    return zipf_next(w->z, &w->rng);
}

typedef struct op_res {
    int rc;
    bool read, not_found;
    int siblings;
} op_res;

/* One operation of workload wl. An update reads first and writes with the
 * read's context unless --update blind. */
static op_res do_op(worker *w, const workload *wl) {
    const sys_ops *ops = w->sys->ops;
    char key[KEY_LEN + 1];
    key_format(key, key_pick(w));
    op_res r = {0};
    r.read = wl->read_frac >= 1.0 || rnd_unit(&w->rng) < wl->read_frac;
    if (r.read) {
        r.rc = ops->read(w->conn, key, &r.siblings, NULL);
    } else if (w->c->blind) {
        r.rc = ops->write(w->conn, key, kv_slice_make(NULL, 0), value_pick(w));
    } else {
        r.rc = ops->read(w->conn, key, &r.siblings, &w->ctx);
        if (r.rc == 0 || r.rc == KV_ENOTFOUND) {
            r.not_found = r.rc == KV_ENOTFOUND;
            r.rc =
                ops->write(w->conn, key, kv_buf_slice(&w->ctx), value_pick(w));
        }
    }
    if (r.read && r.rc == KV_ENOTFOUND) {
        r.not_found = true;
        r.rc = 0;
    }
    return r;
}

static void account(worker *w, const op_res *r, uint64_t lat_ns) {
    if (r->rc) {
        w->errors++;
        bu_tally_add(&w->errs, "", r->rc, 1, w->sys->ops->errtext(w->conn));
        return;
    }
    w->ok++;
    bu_hist_add(w->all, lat_ns);
    if (r->read) {
        w->reads++;
        bu_hist_add(w->rd, lat_ns);
    } else {
        w->updates++;
        bu_hist_add(w->up, lat_ns);
    }
    w->not_found += r->not_found;
    if (r->siblings > 1) w->sib_reads++;
    if ((uint64_t)r->siblings > w->max_sib) w->max_sib = (uint64_t)r->siblings;
}

/* Sleep until monotonic time t (or a stop request). */
static void sleep_until(uint64_t t) {
    while (!stopping()) {
        uint64_t n = bu_now_ns();
        if (n >= t) return;
        uint64_t until = KV_MIN(t, n + 100000000u); /* check stop each 0.1 s */
        struct timespec ts = {(time_t)(until / 1000000000u),
                              (long)(until % 1000000000u)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    run_spec *r = w->run;
    const cfg *c = w->c;
    if (r->mode == RUN_LOAD) {
        char key[KEY_LEN + 1];
        while (!stopping()) {
            uint64_t i = atomic_fetch_add(&r->next, 1);
            if (i >= c->records) break;
            key_format(key, i);
            uint64_t t = bu_now_ns();
            op_res res = {0};
            res.rc = w->sys->ops->write(w->conn, key, kv_slice_make(NULL, 0),
                                        value_pick(w));
            account(w, &res, bu_now_ns() - t);
        }
    } else if (r->mode == RUN_CLOSED) {
        sleep_until(r->t0);
        while (!stopping()) {
            uint64_t t = bu_now_ns();
            if (t >= r->end) break;
            op_res res = do_op(w, r->wl);
            if (t >= r->measure_start) account(w, &res, bu_now_ns() - t);
        }
    } else {
        while (!stopping()) {
            uint64_t i = atomic_fetch_add(&r->next, 1);
            uint64_t t = r->t0 + (uint64_t)((double)i * r->interval_ns);
            if (t >= r->end) break;
            if (bu_now_ns() >= r->end) {
                /* Due before the end, never started: it waited at least
                 * until the end. */
                if (t >= r->measure_start) {
                    bu_hist_add(w->all, r->end - t);
                    w->unsent++;
                }
                break;
            }
            sleep_until(t);
            op_res res = do_op(w, r->wl);
            if (t >= r->measure_start) account(w, &res, bu_now_ns() - t);
        }
    }
    return NULL;
}

/* ---- results --------------------------------------------------------------
 */

typedef struct result {
    int sys;
    char workload[8]; /* "load", "a", ... */
    run_mode mode;
    double offered; /* open loop: ops/s */
    int pct;        /* --rates auto: percent of the peak, else 0 */
    double secs, ops_per_sec;
    uint64_t ops, reads, updates, errors, not_found, sib_reads, max_sib;
    uint64_t unsent;
    double p50, p99, p999, rp50, rp99, up50, up99;
    bu_tally errs;
    int nodes;
} result;

typedef struct results {
    result r[MAX_RESULTS];
    int n;
} results;

static const char *durability(const cfg *c, int sys) {
    if (sys == SYS_ETCD) return "etcd wal fsync per raft batch";
    return c->sync ? "group commit fsync, REP_PUT_SYNC"
                   : "group commit fsync (node default)";
}

static void print_json(const cfg *c, const result *r) {
    printf("{\"system\":\"%s\",\"workload\":\"%s\",\"loop\":\"%s\"",
           sys_names[r->sys], r->workload,
           r->mode == RUN_OPEN ? "open" : "closed");
    bu_json_num(stdout, "offered_rate", r->mode == RUN_OPEN ? r->offered : NAN);
    bu_json_num(stdout, "peak_fraction", r->pct ? r->pct / 100.0 : NAN);
    printf(",\"ops\":%" PRIu64, r->ops);
    bu_json_num(stdout, "seconds", r->secs);
    bu_json_num(stdout, "ops_per_sec", r->ops_per_sec);
    bu_json_num(stdout, "p50_us", r->p50);
    bu_json_num(stdout, "p99_us", r->p99);
    bu_json_num(stdout, "p999_us", r->p999);
    printf(",\"read_ops\":%" PRIu64, r->reads);
    bu_json_num(stdout, "read_p50_us", r->rp50);
    bu_json_num(stdout, "read_p99_us", r->rp99);
    printf(",\"update_ops\":%" PRIu64, r->updates);
    bu_json_num(stdout, "update_p50_us", r->up50);
    bu_json_num(stdout, "update_p99_us", r->up99);
    printf(",\"errors\":%" PRIu64 ",\"error_kinds\":", r->errors);
    bu_tally_json(stdout, &r->errs, kind_name);
    printf(",\"not_found\":%" PRIu64, r->not_found);
    if (r->sys == SYS_QUORUMFS)
        printf(",\"siblings\":%" PRIu64 ",\"max_siblings\":%" PRIu64,
               r->sib_reads, r->max_sib);
    else
        printf(",\"siblings\":null,\"max_siblings\":null");
    printf(",\"unsent\":%" PRIu64 ",\"threads\":%d,\"nodes\":%d", r->unsent,
           c->threads, r->nodes);
    if (r->sys == SYS_QUORUMFS)
        printf(",\"n\":%d,\"r\":%d,\"w\":%d,\"update\":\"%s\"", c->n, c->r,
               c->w, c->blind ? "blind" : "rmw");
    else
        printf(",\"n\":null,\"r\":null,\"w\":null,\"update\":\"%s\"",
               c->blind ? "blind" : "read+put");
    printf(",\"durability\":\"%s\",\"distribution\":\"%s\",\"value_size\":%zu,"
           "\"records\":%" PRIu64,
           durability(c, r->sys), c->uniform ? "uniform" : "zipfian",
           c->value_size, c->records);
    bu_json_num(stdout, "duration",
                r->mode == RUN_LOAD ? r->secs : c->duration);
    bu_json_num(stdout, "warmup", r->mode == RUN_LOAD ? 0 : c->warmup);
    printf("}\n");
}

static const char *row_fmt = "%-9s %-8s %13s %10s %10s %10s %10s %7s %8s %8s\n";

static void print_row_header(void) {
    printf(row_fmt, "system", "workload", "offered_rate", "ops/s", "p50_us",
           "p99_us", "p99.9_us", "errors", "siblings", "unsent");
}

static void print_row(const result *r) {
    char off[32], ops[24], p50[24], p99[24], p999[24], err[24], sib[24],
        uns[24];
    if (r->mode == RUN_LOAD)
        snprintf(off, sizeof off, "closed");
    else if (r->mode == RUN_CLOSED)
        snprintf(off, sizeof off, "peak");
    else if (r->pct)
        snprintf(off, sizeof off, "%.0f(%d%%)", r->offered, r->pct);
    else
        snprintf(off, sizeof off, "%.0f", r->offered);
    snprintf(ops, sizeof ops, "%.0f", r->ops_per_sec);
    bu_fmt_num(p50, sizeof p50, r->p50, "%.1f");
    bu_fmt_num(p99, sizeof p99, r->p99, "%.1f");
    bu_fmt_num(p999, sizeof p999, r->p999, "%.1f");
    snprintf(err, sizeof err, "%" PRIu64, r->errors);
    if (r->sys == SYS_QUORUMFS)
        snprintf(sib, sizeof sib, "%" PRIu64, r->sib_reads);
    else
        snprintf(sib, sizeof sib, "-");
    snprintf(uns, sizeof uns, "%" PRIu64, r->unsent);
    printf(row_fmt, sys_names[r->sys], r->workload, off, ops, p50, p99, p999,
           err, sib, uns);
}

/* Errors and other notes under a row (stderr in --json mode). */
static void print_row_notes(FILE *f, const result *r) {
    if (r->errors) {
        fprintf(f, "    errors:");
        bu_tally_print(f, &r->errs, kind_text);
        fprintf(f, "\n");
    }
    if (r->not_found)
        fprintf(f, "    NOT-FOUND %" PRIu64 " reads found no value\n",
                r->not_found);
    if (r->sib_reads)
        fprintf(f,
                "    siblings: %" PRIu64 " reads saw more than one value "
                "(at most %" PRIu64 ")\n",
                r->sib_reads, r->max_sib);
    if (r->mode == RUN_OPEN && r->ops_per_sec < 0.95 * r->offered)
        fprintf(f,
                "    saturated: %.0f ops/s of %.0f offered; %" PRIu64
                " scheduled ops never started (counted at their wait so "
                "far)\n",
                r->ops_per_sec, r->offered, r->unsent);
}

static void emit(const cfg *c, results *rs, const result *r) {
    if (c->json) {
        print_json(c, r);
        print_row_notes(stderr, r);
    } else {
        print_row(r);
        print_row_notes(stdout, r);
    }
    fflush(stdout);
    if (rs->n < MAX_RESULTS) rs->r[rs->n++] = *r;
}

/* ---- runs -----------------------------------------------------------------
 */

typedef struct bench {
    const cfg *c;
    sysctx *sys;
    worker *ws;
    bu_hist *all, *rd, *up; /* merged */
} bench;

/* Run r on every worker and fill res. */
static int run_workers(bench *b, run_spec *r, result *res) {
    const cfg *c = b->c;
    int started = 0, rc = 0;
    for (int i = 0; i < c->threads; i++) {
        worker *w = &b->ws[i];
        worker_reset(w);
        w->run = r;
    }
    uint64_t t_start = bu_now_ns();
    for (int i = 0; i < c->threads; i++) {
        if (pthread_create(&b->ws[i].thread, NULL, worker_main, &b->ws[i])) {
            fprintf(stderr, "cluster_bench: cannot start a thread\n");
            bu_procs_request_stop(&g_procs, SIGTERM);
            rc = -1;
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(b->ws[i].thread, NULL);
    uint64_t t_end = bu_now_ns();

    bu_hist_reset(b->all);
    bu_hist_reset(b->rd);
    bu_hist_reset(b->up);
    memset(res, 0, sizeof *res);
    for (int i = 0; i < c->threads; i++) {
        worker *w = &b->ws[i];
        bu_hist_merge(b->all, w->all);
        bu_hist_merge(b->rd, w->rd);
        bu_hist_merge(b->up, w->up);
        bu_tally_merge(&res->errs, &w->errs);
        res->ops += w->ok;
        res->reads += w->reads;
        res->updates += w->updates;
        res->errors += w->errors;
        res->not_found += w->not_found;
        res->sib_reads += w->sib_reads;
        res->max_sib = KV_MAX(res->max_sib, w->max_sib);
        res->unsent += w->unsent;
    }
    if (r->mode == RUN_OPEN) {
        /* Slots due before the end that no worker claimed. */
        uint64_t claimed = atomic_load(&r->next);
        for (uint64_t j = claimed;; j++) {
            uint64_t t = r->t0 + (uint64_t)((double)j * r->interval_ns);
            if (t >= r->end) break;
            if (t >= r->measure_start) {
                bu_hist_add(b->all, r->end - t);
                res->unsent++;
            }
        }
    }
    res->sys = b->sys->id;
    res->mode = r->mode;
    res->offered = r->rate;
    res->nodes = b->sys->ep.n;
    res->secs = r->mode == RUN_LOAD ? (double)(t_end - t_start) / 1e9
                                    : (double)(r->end - r->measure_start) / 1e9;
    res->ops_per_sec = res->secs > 0 ? (double)res->ops / res->secs : 0;
    res->p50 = bu_hist_quantile_us(b->all, 0.50);
    res->p99 = bu_hist_quantile_us(b->all, 0.99);
    res->p999 = bu_hist_quantile_us(b->all, 0.999);
    res->rp50 = bu_hist_quantile_us(b->rd, 0.50);
    res->rp99 = bu_hist_quantile_us(b->rd, 0.99);
    res->up50 = bu_hist_quantile_us(b->up, 0.50);
    res->up99 = bu_hist_quantile_us(b->up, 0.99);
    return rc;
}

static void run_times(const cfg *c, run_spec *r) {
    /* Start a little ahead, so every thread is up before the first slot. */
    r->t0 = bu_now_ns() + 50000000u;
    r->measure_start = r->t0 + (uint64_t)(c->warmup * 1e9);
    r->end = r->measure_start + (uint64_t)(c->duration * 1e9);
}

/* Start the system, load it, run every workload at every rate, stop it.
 * Results go to rs as they are made. 0, or -1 after reporting. */
static int bench_system(const cfg *c, int id, results *rs) {
    sysctx s = {.id = id, .c = c};
    s.ops = id == SYS_QUORUMFS ? &quorumfs_ops : &etcd_ops;
    s.o.n = (uint8_t)c->n;
    s.o.r = (uint8_t)c->r;
    s.o.w = (uint8_t)c->w;
    s.o.timeout_ms = c->timeout_ms;
    s.o.sync = c->sync;
    bench b = {.c = c, .sys = &s};
    zipf z;
    zipf_init(&z, c->records);
    uint8_t *values = NULL;
    int status = -1;

    if ((id == SYS_QUORUMFS ? q_start(&s) : e_start(&s)) != 0) goto out;
    values = malloc(VALUE_POOL + c->value_size);
    b.ws = calloc((size_t)c->threads, sizeof *b.ws);
    b.all = bu_hist_new(HIST_SUB_BITS);
    b.rd = bu_hist_new(HIST_SUB_BITS);
    b.up = bu_hist_new(HIST_SUB_BITS);
    if (!values || !b.ws || !b.all || !b.rd || !b.up) {
        fprintf(stderr, "cluster_bench: out of memory\n");
        goto out;
    }
    uint64_t vs = c->seed ^ 0x5eed;
    for (size_t i = 0; i < VALUE_POOL + c->value_size; i++)
        values[i] = (uint8_t)bu_rnd_next(&vs);
    for (int i = 0; i < c->threads; i++) {
        worker *w = &b.ws[i];
        w->idx = i;
        w->c = c;
        w->sys = &s;
        w->z = &z;
        w->values = values;
        w->rng = bu_mix64(c->seed * 1000003u + (uint64_t)i + 1);
        kv_buf_init(&w->ctx);
        w->all = bu_hist_new(HIST_SUB_BITS);
        w->rd = bu_hist_new(HIST_SUB_BITS);
        w->up = bu_hist_new(HIST_SUB_BITS);
        if (!w->all || !w->rd || !w->up) {
            fprintf(stderr, "cluster_bench: out of memory\n");
            goto out;
        }
        int rc = s.ops->open(&s, i, &w->conn);
        if (rc) {
            fprintf(stderr, "cluster_bench: %s: cannot connect to %s: %s\n",
                    sys_names[id], s.ep.addr[i % s.ep.n], kv_strerror(rc));
            goto out;
        }
    }
    if (!c->json) {
        printf("\n");
        print_row_header();
    }
    result res;
    if (c->load) {
        fprintf(stderr, "%s: loading %" PRIu64 " records of %zu bytes\n",
                sys_names[id], c->records, c->value_size);
        run_spec r = {.mode = RUN_LOAD};
        if (run_workers(&b, &r, &res)) goto out;
        if (stopping()) goto out;
        snprintf(res.workload, sizeof res.workload, "load");
        emit(c, rs, &res);
        if (!members_alive(&s, "during the load")) goto out;
    }
    for (int wi = 0; wi < c->nwls; wi++) {
        const workload *wl = c->wls[wi];
        double rates[MAX_LIST];
        int pcts[MAX_LIST] = {0}, nrates = 0;
        if (c->rates_auto) {
            fprintf(stderr, "%s: workload %s: closed-loop peak, %d threads\n",
                    sys_names[id], wl->name, c->threads);
            run_spec r = {.mode = RUN_CLOSED, .wl = wl};
            run_times(c, &r);
            if (run_workers(&b, &r, &res) || stopping()) goto out;
            snprintf(res.workload, sizeof res.workload, "%s", wl->name);
            emit(c, rs, &res);
            if (!members_alive(&s, "during the peak run")) goto out;
            for (int i = 0; i < c->npcts; i++) {
                double rate = round(res.ops_per_sec * c->pcts[i] / 100.0);
                if (rate < 1) continue;
                rates[nrates] = rate;
                pcts[nrates++] = c->pcts[i];
            }
        } else {
            for (int i = 0; i < c->nrates; i++) rates[nrates++] = c->rates[i];
        }
        for (int i = 0; i < nrates; i++) {
            fprintf(stderr, "%s: workload %s: %.0f ops/s offered\n",
                    sys_names[id], wl->name, rates[i]);
            run_spec r = {.mode = RUN_OPEN, .wl = wl, .rate = rates[i]};
            r.interval_ns = 1e9 / rates[i];
            run_times(c, &r);
            if (run_workers(&b, &r, &res) || stopping()) goto out;
            snprintf(res.workload, sizeof res.workload, "%s", wl->name);
            res.pct = pcts[i];
            emit(c, rs, &res);
            if (!members_alive(&s, "during a run")) goto out;
        }
    }
    status = 0;
out:
    if (b.ws) {
        for (int i = 0; i < c->threads; i++) {
            worker *w = &b.ws[i];
            if (w->conn) s.ops->close(w->conn);
            kv_buf_release(&w->ctx);
            bu_hist_free(w->all);
            bu_hist_free(w->rd);
            bu_hist_free(w->up);
        }
    }
    free(b.ws);
    bu_hist_free(b.all);
    bu_hist_free(b.rd);
    bu_hist_free(b.up);
    free(values);
    if (s.nslots) {
        fprintf(stderr, "%s: stopping\n", sys_names[id]);
        stop_children(id, 10000);
    }
    return status;
}

/* ---- summary --------------------------------------------------------------
 */

static const result *find_row(const results *rs, int sys, const char *wl,
                              run_mode mode, int pct, double offered) {
    for (int i = 0; i < rs->n; i++) {
        const result *r = &rs->r[i];
        if (r->sys == sys && !strcmp(r->workload, wl) && r->mode == mode &&
            (mode != RUN_OPEN ||
             (pct ? r->pct == pct : r->pct == 0 && r->offered == offered)))
            return r;
    }
    return NULL;
}

/* Peak throughput: the closed-loop run, else the best open-loop one. */
static const result *peak_row(const results *rs, int sys, const char *wl) {
    const result *best = find_row(rs, sys, wl, RUN_CLOSED, 0, 0);
    if (!best) best = find_row(rs, sys, wl, RUN_LOAD, 0, 0);
    if (best) return best;
    for (int i = 0; i < rs->n; i++) {
        const result *r = &rs->r[i];
        if (r->sys == sys && !strcmp(r->workload, wl) && r->mode == RUN_OPEN &&
            (!best || r->ops_per_sec > best->ops_per_sec))
            best = r;
    }
    return best;
}

static void ratio(char *b, size_t n, double a, double d) {
    if (isnan(a) || isnan(d) || d <= 0)
        snprintf(b, n, "-");
    else
        snprintf(b, n, "%.2f", a / d);
}

static void print_ratios(FILE *f, const cfg *c, const results *rs) {
    static const char *const names[] = {"load", "a", "b", "c"};
    bool header = false;
    for (size_t i = 0; i < KV_ARRAY_LEN(names); i++) {
        const result *q = peak_row(rs, SYS_QUORUMFS, names[i]);
        const result *e = peak_row(rs, SYS_ETCD, names[i]);
        if (!q || !e) continue;
        if (!header) {
            fprintf(f, "\nquorumfs / etcd (throughput: >1 quorumfs faster; "
                       "p99: <1 quorumfs lower)\n");
            fprintf(f, "%-9s %-28s %12s %12s %8s\n", "workload", "measure",
                    "quorumfs", "etcd", "ratio");
            header = true;
        }
        char rt[24], lq[40], le[40];
        ratio(rt, sizeof rt, q->ops_per_sec, e->ops_per_sec);
        fprintf(f, "%-9s %-28s %12.0f %12.0f %8s\n", names[i],
                i == 0                  ? "ops/s (blind puts)"
                : q->mode == RUN_CLOSED ? "peak ops/s"
                                        : "best ops/s (open loop)",
                q->ops_per_sec, e->ops_per_sec, rt);
        const result *qh =
            find_row(rs, SYS_QUORUMFS, names[i], RUN_OPEN, 50, 0);
        const result *eh = find_row(rs, SYS_ETCD, names[i], RUN_OPEN, 50, 0);
        if (qh && eh) {
            ratio(rt, sizeof rt, qh->p99, eh->p99);
            snprintf(lq, sizeof lq, "%.1f", qh->p99);
            snprintf(le, sizeof le, "%.1f", eh->p99);
            char what[64];
            snprintf(what, sizeof what, "p99_us at half peak (%.0f/%.0f)",
                     qh->offered, eh->offered);
            fprintf(f, "%-9s %-28s %12s %12s %8s\n", names[i], what, lq, le,
                    rt);
        }
        /* Explicit --rates: compare at each rate both were offered. */
        for (int k = 0; k < rs->n; k++) {
            const result *qr = &rs->r[k];
            if (qr->sys != SYS_QUORUMFS || qr->mode != RUN_OPEN || qr->pct ||
                strcmp(qr->workload, names[i]))
                continue;
            const result *er =
                find_row(rs, SYS_ETCD, names[i], RUN_OPEN, 0, qr->offered);
            if (!er) continue;
            char what[64];
            snprintf(what, sizeof what, "ops/s at %.0f offered", qr->offered);
            ratio(rt, sizeof rt, qr->ops_per_sec, er->ops_per_sec);
            fprintf(f, "%-9s %-28s %12.0f %12.0f %8s\n", names[i], what,
                    qr->ops_per_sec, er->ops_per_sec, rt);
            snprintf(what, sizeof what, "p99_us at %.0f offered", qr->offered);
            ratio(rt, sizeof rt, qr->p99, er->p99);
            snprintf(lq, sizeof lq, "%.1f", qr->p99);
            snprintf(le, sizeof le, "%.1f", er->p99);
            fprintf(f, "%-9s %-28s %12s %12s %8s\n", names[i], what, lq, le,
                    rt);
        }
    }
    (void)c;
}

/* The targets, for the quorumfs rows of this run. */
static void print_targets(FILE *f, const cfg *c, const results *rs) {
    bool any = false;
    for (int i = 0; i < rs->n; i++) any |= rs->r[i].sys == SYS_QUORUMFS;
    if (!any) return;
    fprintf(f,
            "\ntargets (3 nodes, N=3 W=2 R=2, group commit); this run: "
            "%d node%s, N=%d R=%d W=%d%s\n",
            c->ncluster ? c->ncluster : c->nodes,
            (c->ncluster ? c->ncluster : c->nodes) > 1 ? "s" : "", c->n, c->r,
            c->w,
            (c->ncluster ? c->ncluster : c->nodes) == 3 && c->n == 3 &&
                    c->r == 2 && c->w == 2
                ? ""
                : " (not the target configuration)");
    const result *l = find_row(rs, SYS_QUORUMFS, "load", RUN_LOAD, 0, 0);
    if (l)
        fprintf(f,
                "  quorum writes/s (load, blind puts): %.0f, target >= "
                "10000: %s\n",
                l->ops_per_sec, l->ops_per_sec >= 10000 ? "met" : "NOT MET");
    const result *pc = find_row(rs, SYS_QUORUMFS, "c", RUN_CLOSED, 0, 0);
    if (pc)
        fprintf(f,
                "  quorum reads/s (c, closed-loop peak): %.0f, target >= "
                "30000: %s\n",
                pc->ops_per_sec, pc->ops_per_sec >= 30000 ? "met" : "NOT MET");
    for (int i = 0; i < c->nwls; i++) {
        const result *h =
            find_row(rs, SYS_QUORUMFS, c->wls[i]->name, RUN_OPEN, 50, 0);
        if (h)
            fprintf(f,
                    "  p99 at half peak (%s, %.0f ops/s): %.1f us, target "
                    "< 20000: %s\n",
                    c->wls[i]->name, h->offered, h->p99,
                    h->p99 < 20000 ? "met" : "NOT MET");
    }
}

/* ---- command line ---------------------------------------------------------
 */

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: cluster_bench [options]\n"
        "YCSB-style workloads against a local quorumfs cluster and a local\n"
        "etcd cluster (the peer), open loop at several offered rates.\n"
        "\n"
        "systems:\n"
        "  --systems LIST         quorumfs,etcd (default: both, in that "
        "order)\n"
        "  --nodes K              quorumfs nodes to start, 1..16 (default 3);\n"
        "                         node 1 alone, 2..K with --join <node 1>\n"
        "  --cluster H:P,...      measure these running quorumfs nodes "
        "instead\n"
        "  --quorumfs PATH        the quorumfs binary (default: quorumfs next\n"
        "                         to or one level above this program, else "
        "PATH)\n"
        "  --node-arg ARG         pass ARG to every node started (repeat for\n"
        "                         more: --node-arg=--read-hedge-ms\n"
        "                         --node-arg=5)\n"
        "  -n N -r R -w W         quorum of every request (default 3/2/2;\n"
        "                         --nodes 1: 1/1/1; --nodes 2: 2/2/2)\n"
        "  --sync                 set REP_PUT_SYNC on every put (the node's\n"
        "                         default is already a group-commit fsync)\n"
        "  --update rmw|blind     rmw (default): an update reads the key and\n"
        "                         puts with that read's context; blind: put\n"
        "                         without a context (adds a sibling each "
        "time)\n"
        "  --etcd PATH            the etcd binary (default: etcd on PATH;\n"
        "                         absent: \"skipping etcd: not installed\")\n"
        "  --etcd-nodes K         etcd members to start, 1..9 (default 3)\n"
        "  --etcd-endpoints H:P,..  measure this running etcd instead\n"
        "\n"
        "workload:\n"
        "  --workloads LIST       a (50%% reads, 50%% updates), b (95/5), c\n"
        "                         (reads only); default a,b,c\n"
        "  --rates LIST|auto      offered rates in ops/s (e.g. "
        "2000,5000,10000),\n"
        "                         or auto (default): measure the closed-loop "
        "peak,\n"
        "                         then offer --auto-points percent of it\n"
        "  --auto-points LIST     percentages of the peak (default "
        "25,50,75,100)\n"
        "  --duration S           measured seconds per rate (default 10)\n"
        "  --warmup S             unmeasured seconds before each (default 2)\n"
        "  --threads T            workers per system, one connection each,\n"
        "                         spread over the members (default 64)\n"
        "  --records N            keys loaded before the workloads "
        "(default 100000)\n"
        "  --value-size B         bytes per value (default 1000)\n"
        "  --distribution D       zipfian (default; YCSB's scrambled, theta\n"
        "                         0.99) or uniform\n"
        "  --no-load              skip the load phase (a cluster already "
        "loaded)\n"
        "  --timeout-ms MS        deadline of each request (default 5000)\n"
        "  --seed N               random seed (default 1)\n"
        "\n"
        "running:\n"
        "  --dir DIR              data directories and logs (default: a new\n"
        "                         /tmp/cluster_bench.XXXXXX)\n"
        "  --keep                 keep them afterwards (default: removed)\n"
        "  --base-port P          use ports P, P+1, ... (default: free ports\n"
        "                         from the kernel)\n"
        "  --ready-timeout S      wait at most S seconds for a cluster "
        "(default 30)\n"
        "  --json                 one JSON object per result line on stdout;\n"
        "                         the header and notes go to stderr\n"
        "  -h, --help             this text\n"
        "\n"
        "Output: one row per run (system, workload, offered rate, ops/s,\n"
        "p50/p99/p99.9 latency in microseconds from the intended start,\n"
        "errors, reads that saw siblings, scheduled ops never started), then\n"
        "quorumfs/etcd ratios and the issue's targets. See "
        "docs/PERFORMANCE.md.\n");
}

/* Split a comma list (a copy the cfg owns) into up to max items. */
static int split_list(cfg *c, const char *s, char **items, int max) {
    if (c->nto_free == (int)KV_ARRAY_LEN(c->to_free)) return -1;
    char *copy = strdup(s), *save = NULL;
    if (!copy) return -1;
    c->to_free[c->nto_free++] = copy;
    int n = 0;
    for (char *t = strtok_r(copy, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        if (n == max) return -1;
        items[n++] = t;
    }
    return n > 0 ? n : -1;
}

static int parse_args(int argc, char **argv, cfg *c) {
    memset(c, 0, sizeof *c);
    c->run_sys[SYS_QUORUMFS] = c->run_sys[SYS_ETCD] = true;
    c->nodes = 3;
    c->etcd_nodes = 3;
    c->rates_auto = true;
    static const int dflt_pcts[] = {25, 50, 75, 100};
    for (size_t i = 0; i < KV_ARRAY_LEN(dflt_pcts); i++)
        c->pcts[c->npcts++] = dflt_pcts[i];
    c->duration = 10;
    c->warmup = 2;
    c->threads = 64;
    c->records = 100000;
    c->value_size = 1000;
    for (size_t i = 0; i < KV_ARRAY_LEN(all_workloads); i++)
        c->wls[c->nwls++] = &all_workloads[i];
    c->load = true;
    c->timeout_ms = 5000;
    c->ready_timeout = 30;
    c->seed = 1;
    bool qbin_set = false;
    static const char *const flags[] = {"--sync", "--keep", "--json",
                                        "--no-load", NULL};
    static const char *const with_value[] = {"--systems",
                                             "--nodes",
                                             "--cluster",
                                             "--quorumfs",
                                             "--node-arg",
                                             "-n",
                                             "-r",
                                             "-w",
                                             "--update",
                                             "--etcd",
                                             "--etcd-nodes",
                                             "--etcd-endpoints",
                                             "--workloads",
                                             "--rates",
                                             "--auto-points",
                                             "--duration",
                                             "--warmup",
                                             "--threads",
                                             "--records",
                                             "--value-size",
                                             "--distribution",
                                             "--timeout-ms",
                                             "--ready-timeout",
                                             "--dir",
                                             "--base-port",
                                             "--seed",
                                             NULL};

    static const bu_opt_spec spec = {flags, with_value, usage};

    for (int i = 1; i < argc; i++) {
        bu_opt o;
        if (bu_opt_next(&spec, argc, argv, &i, &o)) return -1;
        const char *a = o.name, *v = o.value;
        /* Flags without a value. */
        bool *flag = !strcmp(a, "--sync")      ? &c->sync
                     : !strcmp(a, "--keep")    ? &c->keep
                     : !strcmp(a, "--json")    ? &c->json
                     : !strcmp(a, "--no-load") ? &c->load
                                               : NULL;
        if (flag) {
            *flag = strcmp(a, "--no-load") != 0;
            continue;
        }
        int n;
        if (!strcmp(a, "--systems")) {
            char *items[MAX_LIST];
            int k = split_list(c, v, items, MAX_LIST);
            if (k < 0) return bu_usage_error("bad --systems '%s'", v);
            c->run_sys[SYS_QUORUMFS] = c->run_sys[SYS_ETCD] = false;
            for (int j = 0; j < k; j++) {
                if (!strcmp(items[j], "quorumfs"))
                    c->run_sys[SYS_QUORUMFS] = true;
                else if (!strcmp(items[j], "etcd"))
                    c->run_sys[SYS_ETCD] = true;
                else
                    return bu_usage_error(
                        "unknown system '%s' (quorumfs, etcd)", items[j]);
            }
        } else if (!strcmp(a, "--nodes")) {
            if (bu_parse_int(v, 1, MAX_NODES, &c->nodes))
                return bu_usage_error("--nodes wants 1..16, not '%s'", v);
            c->nodes_set = true;
        } else if (!strcmp(a, "--cluster")) {
            c->ncluster = split_list(c, v, c->cluster, MAX_NODES);
            if (c->ncluster < 0)
                return bu_usage_error("bad --cluster list '%s'", v);
        } else if (!strcmp(a, "--quorumfs")) {
            snprintf(c->qbin, sizeof c->qbin, "%s", v);
            qbin_set = true;
        } else if (!strcmp(a, "-n") || !strcmp(a, "-r") || !strcmp(a, "-w")) {
            int *q = a[1] == 'n' ? &c->n : a[1] == 'r' ? &c->r : &c->w;
            if (bu_parse_int(v, 1, MAX_NODES, q))
                return bu_usage_error("-n, -r and -w want 1..16, not '%s'", v);
        } else if (!strcmp(a, "--update")) {
            if (strcmp(v, "rmw") && strcmp(v, "blind"))
                return bu_usage_error("--update wants rmw or blind, not '%s'",
                                      v);
            c->blind = !strcmp(v, "blind");
        } else if (!strcmp(a, "--etcd")) {
            snprintf(c->ebin, sizeof c->ebin, "%s", v);
            c->ebin_set = true;
        } else if (!strcmp(a, "--etcd-nodes")) {
            if (bu_parse_int(v, 1, 9, &c->etcd_nodes))
                return bu_usage_error("--etcd-nodes wants 1..9, not '%s'", v);
        } else if (!strcmp(a, "--etcd-endpoints")) {
            c->netcd_eps = split_list(c, v, c->etcd_eps, MAX_NODES);
            if (c->netcd_eps < 0)
                return bu_usage_error("bad --etcd-endpoints '%s'", v);
        } else if (!strcmp(a, "--workloads")) {
            char *items[MAX_LIST];
            int k = split_list(c, v, items, MAX_LIST);
            if (k < 0) return bu_usage_error("bad --workloads '%s'", v);
            c->nwls = 0;
            for (int j = 0; j < k; j++) {
                const workload *wl = NULL;
                for (size_t x = 0; x < KV_ARRAY_LEN(all_workloads); x++)
                    if (!strcasecmp(items[j], all_workloads[x].name))
                        wl = &all_workloads[x];
                if (!wl)
                    return bu_usage_error("unknown workload '%s' (a, b, c)",
                                          items[j]);
                c->wls[c->nwls++] = wl;
            }
        } else if (!strcmp(a, "--rates")) {
            if (!strcmp(v, "auto")) {
                c->rates_auto = true;
                continue;
            }
            char *items[MAX_LIST];
            int k = split_list(c, v, items, MAX_LIST);
            if (k < 0)
                return bu_usage_error("bad --rates '%s' (ops/s list or auto)",
                                      v);
            c->rates_auto = false;
            c->nrates = 0;
            for (int j = 0; j < k; j++) {
                char *end;
                double r = strtod(items[j], &end);
                if (*end || end == items[j] || !(r >= 1) || r > 1e8)
                    return bu_usage_error("bad rate '%s' (1..1e8 ops/s)",
                                          items[j]);
                c->rates[c->nrates++] = r;
            }
        } else if (!strcmp(a, "--auto-points")) {
            char *items[MAX_LIST];
            int k = split_list(c, v, items, MAX_LIST);
            if (k < 0) return bu_usage_error("bad --auto-points '%s'", v);
            c->npcts = 0;
            for (int j = 0; j < k; j++)
                if (bu_parse_int(items[j], 1, 1000, &c->pcts[c->npcts++]))
                    return bu_usage_error("bad percentage '%s' (1..1000)",
                                          items[j]);
        } else if (!strcmp(a, "--duration")) {
            if (bu_parse_secs(v, 0.1, 86400, &c->duration))
                return bu_usage_error("bad --duration '%s' (seconds, >= 0.1)",
                                      v);
        } else if (!strcmp(a, "--warmup")) {
            if (bu_parse_secs(v, 0, 86400, &c->warmup))
                return bu_usage_error("bad --warmup '%s' (seconds)", v);
        } else if (!strcmp(a, "--threads")) {
            if (bu_parse_int(v, 1, MAX_THREADS, &c->threads))
                return bu_usage_error("--threads wants 1..1024, not '%s'", v);
        } else if (!strcmp(a, "--records")) {
            if (bu_parse_u64(v, &c->records) || c->records < 1 ||
                c->records > 999999999999ULL)
                return bu_usage_error(
                    "--records wants 1..999999999999, not '%s'", v);
        } else if (!strcmp(a, "--value-size")) {
            if (bu_parse_int(v, 1, MAX_VALUE, &n))
                return bu_usage_error("--value-size wants 1..1048576, not '%s'",
                                      v);
            c->value_size = (size_t)n;
        } else if (!strcmp(a, "--distribution")) {
            if (strcmp(v, "zipfian") && strcmp(v, "uniform"))
                return bu_usage_error(
                    "--distribution wants zipfian or uniform, not '%s'", v);
            c->uniform = !strcmp(v, "uniform");
        } else if (!strcmp(a, "--node-arg")) {
            if (c->nnode_args == (int)KV_ARRAY_LEN(c->node_args))
                return bu_usage_error("at most %d --node-arg options",
                                      (int)KV_ARRAY_LEN(c->node_args));
            c->node_args[c->nnode_args++] = v;
        } else if (!strcmp(a, "--timeout-ms")) {
            if (bu_parse_int(v, 1, 600000, &n))
                return bu_usage_error("--timeout-ms wants 1..600000, not '%s'",
                                      v);
            c->timeout_ms = (uint32_t)n;
        } else if (!strcmp(a, "--ready-timeout")) {
            if (bu_parse_secs(v, 1, 86400, &c->ready_timeout))
                return bu_usage_error(
                    "bad --ready-timeout '%s' (seconds, >= 1)", v);
        } else if (!strcmp(a, "--dir")) {
            if (!*v || strlen(v) > PATH_MAX - 64)
                return bu_usage_error("bad --dir '%s'", v);
            snprintf(c->dir, sizeof c->dir, "%s", v);
        } else if (!strcmp(a, "--base-port")) {
            if (bu_parse_int(v, 1024, 65535 - 4 * MAX_NODES - 100,
                             &c->base_port))
                return bu_usage_error("--base-port wants 1024..65371, not '%s'",
                                      v);
        } else if (!strcmp(a, "--seed")) {
            if (bu_parse_u64(v, &c->seed))
                return bu_usage_error("bad --seed '%s'", v);
        }
    }

    char h[64], pt[8];
    for (int i = 0; i < c->ncluster; i++)
        if (parse_hostport(c->cluster[i], h, sizeof h, pt, sizeof pt))
            return bu_usage_error("bad --cluster address '%s' (HOST:PORT)",
                                  c->cluster[i]);
    for (int i = 0; i < c->netcd_eps; i++)
        if (parse_hostport(c->etcd_eps[i], h, sizeof h, pt, sizeof pt))
            return bu_usage_error(
                "bad --etcd-endpoints address '%s' (HOST:PORT)",
                c->etcd_eps[i]);
    if (c->ncluster && c->nodes_set)
        return bu_usage_error("%s", "--nodes and --cluster exclude each other");
    if (c->ncluster) c->nodes = c->ncluster;
    /* Quorum defaults follow the cluster: 3/2/2, or all of a smaller one. */
    int dn = KV_MIN(3, c->nodes), dq = dn / 2 + 1;
    if (!c->n) c->n = dn;
    if (!c->r) c->r = KV_MIN(dq, c->n);
    if (!c->w) c->w = KV_MIN(dq, c->n);
    if (c->r > c->n || c->w > c->n) {
        char msg[64];
        snprintf(msg, sizeof msg, "N %d, R %d, W %d", c->n, c->r, c->w);
        return bu_usage_error("need 1 <= R, W <= N (%s)", msg);
    }
    if (c->run_sys[SYS_QUORUMFS] && !c->ncluster) {
        if (qbin_set ? !bu_executable(c->qbin)
                     : !bu_find_quorumfs(c->qbin, sizeof c->qbin))
            return bu_usage_error(
                "no quorumfs binary%s (build the 'quorumfs' target or "
                "give --quorumfs PATH)",
                qbin_set ? " at the --quorumfs path" : "");
    }
    if (c->run_sys[SYS_ETCD] && !c->netcd_eps) {
        if (c->ebin_set && !bu_executable(c->ebin))
            return bu_usage_error("--etcd '%s' is not an executable file",
                                  c->ebin);
        if (!c->ebin_set) bu_find_on_path("etcd", c->ebin, sizeof c->ebin);
    }
    if (c->rates_auto && c->npcts == 0)
        return bu_usage_error("%s", "no --auto-points");
    return 0;
}

static void print_header(FILE *f, const cfg *c) {
    fprintf(f,
            "cluster_bench: records %" PRIu64 ", values %zu bytes, keys "
            "\"user\" + 12 digits, %s",
            c->records, c->value_size,
            c->uniform ? "uniform" : "scrambled zipfian (theta 0.99)");
    fprintf(f, "\n  workloads ");
    for (int i = 0; i < c->nwls; i++)
        fprintf(f, "%s%s (%.0f%% reads)", i ? ", " : "", c->wls[i]->name,
                c->wls[i]->read_frac * 100);
    fprintf(f, "; %d threads per system, one connection each; ", c->threads);
    if (c->rates_auto) {
        fprintf(f, "rates auto: closed-loop peak, then ");
        for (int i = 0; i < c->npcts; i++)
            fprintf(f, "%s%d", i ? "," : "", c->pcts[i]);
        fprintf(f, "%% of it");
    } else {
        fprintf(f, "rates ");
        for (int i = 0; i < c->nrates; i++)
            fprintf(f, "%s%.0f", i ? "," : "", c->rates[i]);
        fprintf(f, " ops/s");
    }
    fprintf(f,
            "\n  each run %.1f s measured after %.1f s warmup; latency "
            "from the intended start (open loop); timeout %u ms\n",
            c->duration, c->warmup, c->timeout_ms);
    if (c->run_sys[SYS_QUORUMFS])
        fprintf(f,
                "  quorumfs: %d node%s, N=%d R=%d W=%d, update %s, puts: "
                "%s\n",
                c->nodes, c->nodes > 1 ? "s" : "", c->n, c->r, c->w,
                c->blind ? "blind (no context)"
                         : "read, then put with its context",
                durability(c, SYS_QUORUMFS));
    if (c->run_sys[SYS_ETCD])
        fprintf(f,
                "  etcd: %d member%s, v3 JSON gateway over HTTP/1.1, "
                "linearizable reads, update %s, %s\n",
                c->netcd_eps ? c->netcd_eps : c->etcd_nodes,
                (c->netcd_eps ? c->netcd_eps : c->etcd_nodes) > 1 ? "s" : "",
                c->blind ? "put" : "range then put", durability(c, SYS_ETCD));
    fprintf(f, "  dir %s%s\n", c->dir, c->keep ? " (kept)" : "");
}

int main(int argc, char **argv) {
    static cfg c;
    static results rs;
    bu_prog_set("cluster_bench");
    if (parse_args(argc, argv, &c) < 0) return 2;
    g_keep = c.keep;
    kv_log_set_level(KV_LOG_WARN);

    bu_signals_catch(on_signal);
    atexit(cleanup);
    if (bu_work_dir(c.dir, sizeof c.dir, &c.dir_made)) return 1;
    print_header(c.json ? stderr : stdout, &c);

    int status = 0;
    for (int id = 0; id < SYS_COUNT && !stopping(); id++) {
        if (!c.run_sys[id]) continue;
        if (id == SYS_ETCD && !c.netcd_eps && !c.ebin[0]) {
            fprintf(c.json ? stderr : stdout, "skipping etcd: not installed\n");
            continue;
        }
        if (bench_system(&c, id, &rs) != 0) {
            if (!stopping())
                fprintf(stderr, "cluster_bench: %s run failed\n",
                        sys_names[id]);
            status = 1;
        }
    }
    if (!stopping()) {
        print_ratios(c.json ? stderr : stdout, &c, &rs);
        print_targets(c.json ? stderr : stdout, &c, &rs);
    } else {
        fprintf(stderr, "cluster_bench: interrupted\n");
        status = 128 + atomic_load(&g_procs.stop);
    }
    fflush(stdout);
    cleanup();
    if (c.dir_made && !c.keep) bu_rm_rf(c.dir);
    for (int i = 0; i < c.nto_free; i++) free(c.to_free[i]);
    return status;
}
