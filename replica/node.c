/*
 * The node: event loop, connections, and the coordinator (see node.h).
 *
 * Everything here runs on the loop's thread except the work functions,
 * which libuv's pool runs and which touch only their own work item and the
 * store. A connection and a request are freed only when nothing refers to
 * them: a connection when its handles are closed and no request answers
 * on it; a request when it has answered and no replica call is in flight.
 *
 * A request ends exactly once: with R (or W) good replies, with too many
 * failures to reach that, at its deadline (KV_ETIMEDOUT) or when the node
 * stops (KV_ECLOSED). Replies that arrive after the end are dropped.
 * Protocol and state machine: docs/protocol.md.
 */
#include "replica/node.h"
#include "replica/dvv.h"
#include "replica/proto.h"
#include "replica/store.h"
#include "ring/ring.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define MOD "node"
#define MAX_N 16 /* replicas per request */

typedef struct conn conn;
typedef struct req req;

struct rep_node {
    rep_node_opts opt;
    char *dir, *name, *listen_spec;
    char addr[96]; /* actual listen address */
    eng_db *db;
    rep_store *store;
    ring *ring;
    uint64_t actor; /* this node's id in object clocks */
    uv_loop_t loop;
    uv_tcp_t server;
    uv_async_t wake;
    uv_signal_t sigint, sigterm;
    bool listening, signals;
    atomic_bool stop_asked;
    bool stopping;
    pthread_t thread;
    bool started;
    conn *conns; /* open connections */
    req *reqs;   /* requests not yet answered */
};

struct conn {
    rep_node *node;
    conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t idle;
    rep_parser parser;
    int handles;   /* open uv handles (tcp, idle) */
    int refs;      /* requests that will answer on this connection */
    bool hello;    /* the peer's HELLO arrived */
    bool closing;  /* no more reads or writes */
    char peer[64]; /* for log lines: address, then HELLO name */
};

struct req {
    rep_node *node;
    req *prev, *next;
    conn *client;
    uint64_t client_id;
    uint16_t type; /* REP_GET or REP_PUT */
    uint8_t need;  /* good replies that answer the request */
    int nrep, oks, fails, inflight;
    int first_error;
    bool done, sync, tombstone;
    kv_buf key, ctx, value;
    kv_buf merged; /* get: objects merged so far */
    bool have_obj;
    uint32_t replicas[MAX_N];
    uv_timer_t timer;
    bool timer_open;
};

typedef enum work_op { W_GET, W_UPDATE } work_op;

typedef struct work {
    uv_work_t uv;
    req *rq;
    work_op op;
    int rc;
    kv_buf out;
} work;

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void rep_node_opts_init(rep_node_opts *o) {
    memset(o, 0, sizeof *o);
    o->partitions = RING_DEFAULT_PARTITIONS;
    o->timeout_ms = 5000;
    o->idle_ms = 60000;
    eng_options_init(&o->engine);
}

/* ---- connections ---- */

static void conn_maybe_free(conn *c) {
    if (c->handles > 0 || c->refs > 0) return;
    rep_parser_release(&c->parser);
    kv_free(c);
}

static void on_handle_closed(uv_handle_t *h) {
    conn *c = h->data;
    c->handles--;
    conn_maybe_free(c);
}

static void conn_close(conn *c, const char *why) {
    if (c->closing) return;
    c->closing = true;
    if (why) kv_info(MOD, "closing connection from '%s': %s", c->peer, why);
    rep_node *n = c->node;
    if (c->prev)
        c->prev->next = c->next;
    else
        n->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
}

typedef struct wreq {
    uv_write_t uv;
    kv_buf buf;
} wreq;

static void on_written(uv_write_t *w, int status) {
    wreq *r = (wreq *)w;
    conn *c = w->data;
    kv_buf_release(&r->buf);
    kv_free(r);
    if (status < 0 && !c->closing) conn_close(c, uv_strerror(status));
}

/* Send m on c; a connection that cannot take it is closed. */
static void conn_send(conn *c, const rep_msg *m) {
    if (c->closing) return;
    wreq *r = kv_calloc(1, sizeof *r);
    if (!r) {
        conn_close(c, "out of memory");
        return;
    }
    kv_buf_init(&r->buf);
    int rc = rep_msg_encode(m, &r->buf);
    if (rc) {
        kv_free(r);
        conn_close(c, kv_strerror(rc));
        return;
    }
    uv_buf_t b = uv_buf_init((char *)r->buf.ptr, (unsigned)r->buf.len);
    r->uv.data = c;
    rc = uv_write(&r->uv, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc) {
        kv_buf_release(&r->buf);
        kv_free(r);
        conn_close(c, uv_strerror(rc));
    }
}

static void send_error(conn *c, uint64_t id, int code, const char *text) {
    rep_msg m = {.type = REP_ERROR, .id = id, .status = code};
    m.text = kv_slice_str(text);
    conn_send(c, &m);
}

/* ---- requests ---- */

static void req_unlink(req *rq) {
    rep_node *n = rq->node;
    if (rq->prev)
        rq->prev->next = rq->next;
    else if (n->reqs == rq)
        n->reqs = rq->next;
    if (rq->next) rq->next->prev = rq->prev;
    rq->prev = rq->next = NULL;
}

static void req_free_now(req *rq) {
    kv_buf_release(&rq->key);
    kv_buf_release(&rq->ctx);
    kv_buf_release(&rq->value);
    kv_buf_release(&rq->merged);
    conn *c = rq->client;
    kv_free(rq);
    if (c) {
        c->refs--;
        conn_maybe_free(c);
    }
}

static void on_timer_closed(uv_handle_t *h) {
    req *rq = h->data;
    rq->timer_open = false;
    if (rq->done && rq->inflight == 0) req_free_now(rq);
}

/* Free rq once answered, its timer closed and no replica call pending. */
static void req_maybe_free(req *rq) {
    if (!rq->done || rq->inflight > 0) return;
    if (rq->timer_open) {
        if (!uv_is_closing((uv_handle_t *)&rq->timer))
            uv_close((uv_handle_t *)&rq->timer, on_timer_closed);
        return;
    }
    req_free_now(rq);
}

/* Answer rq with code (0: success) exactly once. */
static void req_finish(req *rq, int code) {
    if (rq->done) return;
    rq->done = true;
    req_unlink(rq);
    uv_timer_stop(&rq->timer);
    if (rq->client && !rq->client->closing) {
        rep_msg m = {.id = rq->client_id, .status = code};
        if (rq->type == REP_GET) {
            m.type = REP_GET_REPLY;
            if (code == 0) m.value = kv_buf_slice(&rq->merged);
        } else {
            m.type = REP_PUT_REPLY;
        }
        conn_send(rq->client, &m);
    }
    req_maybe_free(rq);
}

/* One replica's reply came in; answer when enough have, or when the rest
 * can no longer make enough. */
static void req_count(req *rq, int rc) {
    if (rc == 0 || (rq->type == REP_GET && rc == KV_ENOTFOUND)) {
        rq->oks++;
    } else {
        rq->fails++;
        if (!rq->first_error) rq->first_error = rc;
    }
    if (rq->done) return;
    if (rq->oks >= rq->need) {
        req_finish(rq, rq->type == REP_GET && !rq->have_obj ? KV_ENOTFOUND : 0);
    } else if (rq->nrep - rq->fails < rq->need) {
        kv_warn(MOD, "%s of '%.*s': %d of %d replicas failed (first: %s)",
                rq->type == REP_GET ? "get" : "put", (int)rq->key.len,
                (const char *)rq->key.ptr, rq->fails, rq->nrep,
                kv_strerror(rq->first_error));
        req_finish(rq, KV_EQUORUM);
    }
}

static void on_deadline(uv_timer_t *t) {
    req *rq = t->data;
    req_finish(rq, KV_ETIMEDOUT);
}

static void work_run(uv_work_t *u) {
    work *w = (work *)u;
    req *rq = w->rq;
    rep_store *s = rq->node->store;
    kv_slice key = kv_buf_slice(&rq->key);
    if (w->op == W_GET)
        w->rc = rep_store_get(s, key, &w->out);
    else
        w->rc = rep_store_update(s, key, kv_buf_slice(&rq->ctx),
                                 kv_buf_slice(&rq->value), rq->tombstone,
                                 rq->sync, rq->node->actor, now_us(), &w->out);
}

static void work_done(uv_work_t *u, int status) {
    work *w = (work *)u;
    req *rq = w->rq;
    rq->inflight--;
    int rc = status == UV_ECANCELED ? KV_ECLOSED : w->rc;
    if (rc == 0 && w->op == W_GET && !rq->done) {
        if (!rq->have_obj) {
            rc = kv_buf_set(&rq->merged, w->out.ptr, w->out.len);
            rq->have_obj = rc == 0;
        } else {
            kv_buf m = KV_BUF_INIT;
            rc = rep_obj_merge(kv_buf_slice(&rq->merged), kv_buf_slice(&w->out),
                               &m);
            if (rc == 0) {
                kv_buf_release(&rq->merged);
                rq->merged = m;
            } else {
                kv_buf_release(&m);
            }
        }
    }
    kv_buf_release(&w->out);
    kv_free(w);
    req_count(rq, rc);
    req_maybe_free(rq);
}

/* Run op for rq on the local replica, on the thread pool. */
static void local_call(req *rq, work_op op) {
    work *w = kv_calloc(1, sizeof *w);
    if (!w) {
        req_count(rq, -ENOMEM);
        return;
    }
    w->rq = rq;
    w->op = op;
    kv_buf_init(&w->out);
    rq->inflight++;
    int rc = uv_queue_work(&rq->node->loop, &w->uv, work_run, work_done);
    if (rc) {
        rq->inflight--;
        kv_free(w);
        req_count(rq, -ENOMEM);
    }
}

/* Start coordinating a client's GET or PUT. */
static void coordinate(conn *c, const rep_msg *m) {
    rep_node *n = c->node;
    uint8_t nrep = m->n ? m->n : 3, r = m->r ? m->r : 2, w = m->w ? m->w : 2;
    if (nrep > MAX_N || r > nrep || w > nrep || m->key.len == 0) {
        rep_msg e = {.type = m->type == REP_GET ? REP_GET_REPLY : REP_PUT_REPLY,
                     .id = m->id,
                     .status = -EINVAL};
        conn_send(c, &e);
        return;
    }
    /* A context that does not decode is the client's error, answered
     * before any replica is asked. */
    if (m->type == REP_PUT && m->ctx.len) {
        dvv_ctx *cx;
        int rc = dvv_ctx_decode(m->ctx, &cx);
        dvv_ctx_free(cx);
        if (rc) {
            rep_msg e = {.type = REP_PUT_REPLY,
                         .id = m->id,
                         .status = rc == -ENOMEM ? rc : KV_EPROTO};
            conn_send(c, &e);
            return;
        }
    }
    req *rq = kv_calloc(1, sizeof *rq);
    if (!rq) {
        send_error(c, m->id, -ENOMEM, "out of memory");
        return;
    }
    rq->node = n;
    rq->client = c;
    c->refs++;
    rq->client_id = m->id;
    rq->type = m->type;
    rq->sync = (m->flags & REP_PUT_SYNC) != 0;
    rq->tombstone = (m->flags & REP_PUT_DELETE) != 0;
    kv_buf_init(&rq->key);
    kv_buf_init(&rq->ctx);
    kv_buf_init(&rq->value);
    kv_buf_init(&rq->merged);
    rq->next = n->reqs;
    if (n->reqs) n->reqs->prev = rq;
    n->reqs = rq;
    uv_timer_init(&n->loop, &rq->timer);
    rq->timer.data = rq;
    rq->timer_open = true;
    if (kv_buf_set(&rq->key, m->key.ptr, m->key.len) ||
        kv_buf_set(&rq->ctx, m->ctx.ptr, m->ctx.len) ||
        kv_buf_set(&rq->value, m->value.ptr, m->value.len)) {
        req_finish(rq, -ENOMEM);
        return;
    }
    /* The preference list, cut to the members the ring has: a cluster
     * smaller than N stores fewer copies and says so in its quorum. */
    uint64_t h = ring_hash(m->key);
    rq->nrep = ring_preflist(n->ring, h, nrep, rq->replicas);
    uint8_t want = m->type == REP_GET ? r : w;
    rq->need = (uint8_t)KV_MIN((int)want, rq->nrep);
    uint32_t tmo = m->timeout_ms ? m->timeout_ms : n->opt.timeout_ms;
    uv_timer_start(&rq->timer, on_deadline, tmo, 0);
    for (int i = 0; i < rq->nrep; i++) {
        kv_slice member = ring_member(n->ring, rq->replicas[i]);
        if (kv_slice_eq(member, kv_slice_str(n->name))) {
            local_call(rq, m->type == REP_GET ? W_GET : W_UPDATE);
        } else {
            /* Other members are reached through the membership layer,
             * which this node does not run yet: such a replica counts as
             * unreachable. */
            req_count(rq, KV_EQUORUM);
        }
        if (rq->done) break;
    }
}

/* ---- reading frames ---- */

static int on_frame(void *arg, const rep_msg *m) {
    conn *c = arg;
    rep_node *n = c->node;
    if (!c->hello) {
        if (m->type != REP_HELLO) {
            send_error(c, m->id, KV_EPROTO, "expected hello");
            return KV_EPROTO;
        }
        if (m->u64 != REP_PROTO_VERSION) {
            send_error(c, m->id, KV_EVERSION, "protocol version not supported");
            return KV_EVERSION;
        }
        c->hello = true;
        rep_parser_set_limit(&c->parser, REP_MAX_PAYLOAD);
        snprintf(c->peer + strlen(c->peer), sizeof c->peer - strlen(c->peer),
                 " (%.*s)", (int)KV_MIN(m->text.len, 40),
                 (const char *)m->text.ptr);
        rep_msg h = {.type = REP_HELLO, .id = m->id, .u64 = REP_PROTO_VERSION};
        h.flags = REP_ROLE_NODE;
        h.text = kv_slice_str(n->name);
        conn_send(c, &h);
        return 0;
    }
    switch (m->type) {
    case REP_PING: {
        rep_msg p = {.type = REP_PONG, .id = m->id, .u64 = m->u64};
        conn_send(c, &p);
        return 0;
    }
    case REP_GET:
    case REP_PUT:
        if (n->stopping) {
            send_error(c, m->id, KV_ECLOSED, "node is stopping");
            return KV_ECLOSED;
        }
        coordinate(c, m);
        return 0;
    default:
        send_error(c, m->id, KV_EPROTO, "unexpected frame type");
        return KV_EPROTO;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    (void)h;
    (void)suggested;
    static __thread char buf[64 * 1024];
    *b = uv_buf_init(buf, sizeof buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    conn *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        conn_close(c, nread == UV_EOF ? NULL : uv_strerror((int)nread));
        return;
    }
    uv_timer_again(&c->idle);
    int rc = rep_parser_feed(&c->parser, b->base, (size_t)nread, on_frame, c);
    if (rc) {
        const char *why = rep_parser_why(&c->parser);
        kv_warn(MOD, "bad input from '%s': %s", c->peer,
                *why ? why : kv_strerror(rc));
        conn_close(c, NULL);
    }
}

static void on_idle(uv_timer_t *t) {
    conn_close(t->data, "idle timeout");
}

static void on_connection(uv_stream_t *server, int status) {
    rep_node *n = server->data;
    if (status < 0) {
        kv_warn(MOD, "accept failed: %s", uv_strerror(status));
        return;
    }
    conn *c = kv_calloc(1, sizeof *c);
    if (!c) return;
    c->node = n;
    rep_parser_init(&c->parser, REP_HELLO_MAX_PAYLOAD);
    uv_tcp_init(&n->loop, &c->tcp);
    uv_timer_init(&n->loop, &c->idle);
    c->handles = 2;
    c->tcp.data = c->idle.data = c;
    c->next = n->conns;
    if (n->conns) n->conns->prev = c;
    n->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c, "accept failed");
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(c->peer, sizeof c->peer, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0 &&
        ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        char ip[32];
        uv_ip4_name(in, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(in->sin_port));
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, 30);
    uv_timer_start(&c->idle, on_idle, n->opt.idle_ms, n->opt.idle_ms);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- identity and lifecycle ---- */

/* Write bytes to dir/name atomically: temp file, fsync, rename, fsync of
 * the directory. */
static int write_atomic(const char *dir, const char *name, const void *p,
                        size_t n) {
    char tmp[4096], dst[4096];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
    snprintf(dst, sizeof dst, "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    int rc = write(fd, p, n) == (ssize_t)n ? 0 : -EIO;
    if (rc == 0 && fsync(fd) < 0) rc = -errno;
    close(fd);
    if (rc == 0 && rename(tmp, dst) < 0) rc = -errno;
    if (rc == 0) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0) rc = -errno;
        if (dfd >= 0) close(dfd);
    }
    if (rc) unlink(tmp);
    return rc;
}

/* Read dir/name (at most max bytes) into out; KV_ENOTFOUND if absent. */
static int read_small(const char *dir, const char *name, size_t max,
                      kv_buf *out) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? KV_ENOTFOUND : -errno;
    int rc = kv_buf_reserve(out, max + 1);
    ssize_t got = rc ? -1 : read(fd, out->ptr, max + 1);
    close(fd);
    if (rc) return rc;
    if (got < 0) return -errno;
    if ((size_t)got > max) return KV_ETOOLARGE;
    out->len = (size_t)got;
    return 0;
}

/* The node's identity, in dir/NODE: "<name>\n<incarnation>\n", the
 * incarnation 16 hex digits drawn when the directory is first used. The
 * node's actor in object clocks hashes both, so a node whose data was
 * wiped comes back as a new actor and never reuses a dot of its former
 * self (which replicas would take for a write they already hold).
 * A new node is named by --name, else its listen address; a directory
 * that belongs to another name than the one asked for is refused. */
static int load_identity(rep_node *n) {
    kv_buf b = KV_BUF_INIT;
    uint64_t inc = 0;
    int rc = read_small(n->dir, "NODE", RING_MAX_NAME + 20, &b);
    if (rc == 0) {
        char name[RING_MAX_NAME + 2];
        int used = 0;
        b.ptr[b.len] = '\0'; /* read_small left room */
        if (sscanf((const char *)b.ptr, "%64[A-Za-z0-9._:-]\n%16" SCNx64 "\n%n",
                   name, &inc, &used) != 2 ||
            (size_t)used != b.len || !ring_name_valid(kv_slice_str(name))) {
            kv_error(MOD, "'%s/NODE' is not a node identity", n->dir);
            rc = KV_ECORRUPT;
        } else if (n->name && strcmp(name, n->name) != 0) {
            kv_error(MOD, "'%s' belongs to node '%s', not '%s'", n->dir, name,
                     n->name);
            rc = -EINVAL;
        } else if (!n->name && !(n->name = kv_strdup(name))) {
            rc = -ENOMEM;
        }
    } else if (rc == KV_ENOTFOUND) {
        const char *l = n->opt.listen;
        if (!n->name)
            n->name =
                kv_strdup(l && ring_name_valid(kv_slice_str(l)) ? l : "local");
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        bool got = fd >= 0 && read(fd, &inc, sizeof inc) == sizeof inc;
        if (fd >= 0) close(fd);
        if (!got) inc = now_us() ^ ((uint64_t)getpid() << 40);
        char line[RING_MAX_NAME + 20];
        if (!n->name) {
            rc = -ENOMEM;
        } else {
            int len = snprintf(line, sizeof line, "%s\n%016" PRIx64 "\n",
                               n->name, inc);
            rc = write_atomic(n->dir, "NODE", line, (size_t)len);
        }
    }
    kv_buf_release(&b);
    if (rc == 0) {
        uint8_t id[8];
        kv_put_u64(id, inc);
        n->actor = kv_hash64(n->name, strlen(n->name), kv_hash64(id, 8, 0));
    }
    return rc;
}

/* The ring the node last knew, or a new one-member ring. */
static int load_ring(rep_node *n) {
    kv_buf b = KV_BUF_INIT;
    int rc = read_small(n->dir, "RING", 2u << 20, &b);
    if (rc == 0) {
        rc = ring_decode(kv_buf_slice(&b), &n->ring);
        if (rc) kv_error(MOD, "'%s/RING': %s", n->dir, kv_strerror(rc));
    } else if (rc == KV_ENOTFOUND) {
        rc = ring_new(n->opt.partitions, kv_slice_str(n->name), &n->ring);
        kv_buf_reset(&b);
        if (rc == 0) rc = ring_encode(n->ring, &b);
        if (rc == 0) rc = write_atomic(n->dir, "RING", b.ptr, b.len);
    }
    if (rc == 0 && ring_find(n->ring, kv_slice_str(n->name)) < 0) {
        kv_error(MOD, "node '%s' is not a member of its ring", n->name);
        rc = KV_ECORRUPT;
    }
    kv_buf_release(&b);
    return rc;
}

static void on_wake(uv_async_t *a);
static void on_signal(uv_signal_t *s, int signum);

int rep_node_open(const rep_node_opts *o, rep_node **out) {
    *out = NULL;
    if (!o->data_dir || !*o->data_dir) return -EINVAL;
    if (o->name && !ring_name_valid(kv_slice_str(o->name))) {
        kv_error(MOD, "bad node name '%s' (1-%u of A-Z a-z 0-9 . _ : -)",
                 o->name, RING_MAX_NAME);
        return -EINVAL;
    }
    struct sockaddr_in sa;
    if (o->listen && rep_parse_addr(o->listen, &sa)) {
        kv_error(MOD, "bad listen address '%s' (want A.B.C.D:PORT)", o->listen);
        return -EINVAL;
    }
    /* Engine calls wait on fsync in the pool's threads: group commit
     * needs many of them in flight (libuv's default is 4). Process-wide,
     * and only read when the pool first starts. */
    setenv("UV_THREADPOOL_SIZE", "32", 0);
    rep_node *n = kv_calloc(1, sizeof *n);
    if (!n) return -ENOMEM;
    n->opt = *o;
    int rc = -ENOMEM;
    n->dir = kv_strdup(o->data_dir);
    if (o->name) n->name = kv_strdup(o->name);
    if (!n->dir || (o->name && !n->name)) goto fail;
    if (mkdir(n->dir, 0755) < 0 && errno != EEXIST) {
        rc = -errno;
        kv_error(MOD, "cannot create '%s': %s", n->dir, strerror(errno));
        goto fail;
    }
    if ((rc = load_identity(n)) || (rc = load_ring(n))) goto fail;
    char edir[4096];
    snprintf(edir, sizeof edir, "%s/engine", n->dir);
    if ((rc = eng_db_open(edir, &o->engine, &n->db))) {
        kv_error(MOD, "cannot open store '%s': %s", edir, kv_strerror(rc));
        goto fail;
    }
    if ((rc = rep_store_new(n->db, &n->store))) goto fail;
    if ((rc = uv_loop_init(&n->loop))) {
        rc = -ENOMEM;
        goto fail;
    }
    uv_async_init(&n->loop, &n->wake, on_wake);
    n->wake.data = n;
    if (o->listen) {
        uv_tcp_init(&n->loop, &n->server);
        n->server.data = n;
        n->listening = true;
        rc = uv_tcp_bind(&n->server, (const struct sockaddr *)&sa, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&n->server, 128, on_connection);
        if (rc) {
            kv_error(MOD, "cannot listen on '%s': %s", o->listen,
                     uv_strerror(rc));
            goto fail; /* libuv codes are -errno */
        }
        struct sockaddr_in bound;
        int len = sizeof bound;
        uv_tcp_getsockname(&n->server, (struct sockaddr *)&bound, &len);
        char ip[32];
        uv_ip4_name(&bound, ip, sizeof ip);
        snprintf(n->addr, sizeof n->addr, "%s:%u", ip, ntohs(bound.sin_port));
    }
    if (o->handle_signals) {
        uv_signal_init(&n->loop, &n->sigint);
        uv_signal_init(&n->loop, &n->sigterm);
        n->sigint.data = n->sigterm.data = n;
        uv_signal_start(&n->sigint, on_signal, SIGINT);
        uv_signal_start(&n->sigterm, on_signal, SIGTERM);
        n->signals = true;
    }
    kv_info(MOD, "node '%s' open: data '%s', listening on '%s'", n->name,
            n->dir, n->addr[0] ? n->addr : "(none)");
    *out = n;
    return 0;
fail:
    rep_node_close(n);
    return rc;
}

const char *rep_node_address(const rep_node *n) {
    return n->addr;
}

const char *rep_node_name(const rep_node *n) {
    return n->name;
}

static void close_if_open(uv_handle_t *h) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* On the loop: stop taking work, end every request, close everything so
 * uv_run returns once the thread pool has drained. */
static void shut_down(rep_node *n) {
    if (n->stopping) return;
    n->stopping = true;
    kv_info(MOD, "node '%s' stopping", n->name);
    if (n->listening) close_if_open((uv_handle_t *)&n->server);
    while (n->reqs) req_finish(n->reqs, KV_ECLOSED);
    while (n->conns) conn_close(n->conns, NULL);
    if (n->signals) {
        close_if_open((uv_handle_t *)&n->sigint);
        close_if_open((uv_handle_t *)&n->sigterm);
    }
    close_if_open((uv_handle_t *)&n->wake);
}

static void on_wake(uv_async_t *a) {
    rep_node *n = a->data;
    if (atomic_load(&n->stop_asked)) shut_down(n);
}

static void on_signal(uv_signal_t *s, int signum) {
    rep_node *n = s->data;
    kv_info(MOD, "signal %d: stopping", signum);
    shut_down(n);
}

int rep_node_run(rep_node *n) {
    if (atomic_load(&n->stop_asked)) shut_down(n);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    return 0;
}

static void *run_thread(void *arg) {
    rep_node_run(arg);
    return NULL;
}

int rep_node_start(rep_node *n) {
    if (n->started) return -EINVAL;
    int rc = pthread_create(&n->thread, NULL, run_thread, n);
    if (rc) return -rc;
    n->started = true;
    return 0;
}

void rep_node_stop(rep_node *n) {
    atomic_store(&n->stop_asked, true);
    uv_async_send(&n->wake);
}

int rep_node_close(rep_node *n) {
    if (!n) return 0;
    if (n->started) {
        rep_node_stop(n);
        pthread_join(n->thread, NULL);
        n->started = false;
    } else if (n->wake.loop) {
        /* Never ran (or ran and returned): close what is open and let the
         * loop release it. */
        shut_down(n);
        uv_run(&n->loop, UV_RUN_DEFAULT);
    }
    if (n->wake.loop) uv_loop_close(&n->loop);
    rep_store_free(n->store);
    int rc = n->db ? eng_db_close(n->db) : 0;
    ring_free(n->ring);
    kv_free(n->dir);
    kv_free(n->name);
    kv_free(n);
    return rc;
}
