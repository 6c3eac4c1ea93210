/*
 * The node: lifecycle, identity, served connections, the replica side
 * of the protocol (see node.h and node_int.h) and scans of its store.
 *
 * A served connection is freed only when its handles are closed and no answer
 * is still to come on it (refs: coordinated requests, replica jobs on the
 * engine threads, reaps and scans on the pool). Replies are coalesced
 * (outbuf.c): those of one loop turn go out in one write. Backpressure: a
 * connection stops being read while it has MAX_REFS answers outstanding or
 * max_queued bytes not yet written (queued for the turn's write or in libuv),
 * and is read again once both fell to half; so a client that sends faster than
 * it reads costs bounded memory. Idle connections (nothing read, no answer
 * outstanding, nothing to write) close after idle_ms. Protocol and state
 * machines: docs/protocol.md.
 */
#include "replica/node_int.h"
#include "replica/client.h"
#include "replica/dvv.h"

#include <fcntl.h>
#include <signal.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_REFS 1024
#define MAX_QUEUED (64u << 20)
#define DRAIN_MS 1000 /* a stopping node's wait for replies to go out */

void rep__member_free(rep_node *n);

uint64_t rep__now_us(rep_node *n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    return (uint64_t)(us + n->opt.clock_offset_us);
}

void rep_node_opts_init(rep_node_opts *o) {
    memset(o, 0, sizeof *o);
    o->partitions = RING_DEFAULT_PARTITIONS;
    o->n_val = 3;
    o->timeout_ms = 5000;
    o->idle_ms = 60000;
    o->max_queued = MAX_QUEUED;
    o->gossip_ms = 500;
    o->fd_timeout_ms = 3000;
    o->tombstone_grace_ms = 10000;
    o->read_hedge_ms = 20;
    eng_options_init(&o->engine);
}

/* ---- the thread pool ---- */

typedef struct gwork {
    uv_work_t uv;
    void (*fn)(void *);
    void (*done)(void *, int);
    void *arg;
} gwork;

static void gwork_run(uv_work_t *u) {
    gwork *g = (gwork *)u;
    g->fn(g->arg);
}

static void gwork_done(uv_work_t *u, int status) {
    gwork *g = (gwork *)u;
    void (*done)(void *, int) = g->done;
    void *arg = g->arg;
    kv_free(g);
    done(arg, status == UV_ECANCELED ? KV_ECLOSED : status);
}

int rep__work(rep_node *n, void (*fn)(void *), void (*done)(void *, int),
              void *arg) {
    gwork *g = kv_calloc(1, sizeof *g);
    if (!g) return -ENOMEM;
    g->fn = fn;
    g->done = done;
    g->arg = arg;
    if (uv_queue_work(&n->loop, &g->uv, gwork_run, gwork_done)) {
        kv_free(g);
        return -ENOMEM;
    }
    return 0;
}

/* ---- connections ---- */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

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
    c->prev = c->next = NULL;
    /* What was sent before the close goes out first (an error frame that
     * explains it, say), as far as the socket takes it right away. */
    rep__outbuf_flush(&c->out);
    rep__outbuf_release(&c->out);
    uv_close(&c->io.handle, on_handle_closed);
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
}

/* Read again once the backlog fell to half of its bounds. */
static void conn_maybe_resume(conn *c) {
    if (!c->paused || c->closing || c->draining) return;
    if (c->refs > MAX_REFS / 2 ||
        rep__outbuf_queued(&c->out) > c->node->opt.max_queued / 2)
        return;
    c->paused = false;
    uv_read_start(CONN_STREAM(c), rep__read_buf, on_read);
}

void rep__conn_ref(conn *c) {
    c->refs++;
}

void rep__conn_unref(conn *c) {
    c->refs--;
    conn_maybe_resume(c);
    conn_maybe_free(c);
}

static void on_written(rep_outbuf *o, int status) {
    conn *c = o->data;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c, uv_strerror(status));
    } else if (c->draining && rep__outbuf_queued(&c->out) == 0) {
        conn_close(c, NULL);
    } else {
        conn_maybe_resume(c);
    }
}

/* Send m on c; a connection that cannot take it is closed. */
void rep__conn_send(conn *c, const rep_msg *m) {
    if (c->closing) return;
    int rc = rep__outbuf_send(&c->out, m);
    if (rc) conn_close(c, kv_strerror(rc));
}

static void send_error(conn *c, uint64_t id, int code, const char *text) {
    rep_msg m = {.type = REP_ERROR, .id = id, .status = code};
    m.text = kv_slice_str(text);
    rep__conn_send(c, &m);
}

/* ---- the replica side: replica-get, replica-put, reap ---- */

typedef struct rwork {
    rep_job job; /* replica-get and -put on the engine threads */
    conn *c;
    uint64_t id;
    uint16_t type;
    kv_buf key, obj;
} rwork;

static void rwork_free(rwork *w) {
    kv_buf_release(&w->key);
    kv_buf_release(&w->obj);
    kv_buf_release(&w->job.out);
    kv_free(w);
}

static void replica_answer(rwork *w, int rc) {
    rep_msg m = {.id = w->id, .status = rc};
    m.type = w->type + 1; /* the reply type */
    if (w->type == REP_RGET && rc == 0) m.value = kv_buf_slice(&w->job.out);
    rep__conn_send(w->c, &m);
    rep__conn_unref(w->c);
    rwork_free(w);
}

static void replica_done(rep_job *j) {
    rwork *w = (rwork *)j;
    replica_answer(w, j->op.rc);
}

/* A reap is rare: it runs on the pool. */
static void reap_run(void *arg) {
    rwork *w = arg;
    bool reaped;
    w->job.op.rc = rep_store_reap(w->c->node->store, kv_buf_slice(&w->key),
                                  kv_buf_slice(&w->obj), &reaped);
}

static void reap_done(void *arg, int status) {
    rwork *w = arg;
    replica_answer(w, status ? KV_ECLOSED : w->job.op.rc);
}

static void serve_replica(conn *c, const rep_msg *m) {
    /* A coordinator whose ring is older than ours may ask a member that no
     * longer owns the key (and may have dropped it): its not-found would
     * count as a good read, its write as a durable copy. Refuse instead;
     * the coordinator counts a failure and learns the ring by gossip. */
    if (!rep__member_owns(c->node, ring_hash(m->key))) {
        rep_msg e = {.type = m->type + 1, .id = m->id, .status = KV_ESTALE};
        rep__conn_send(c, &e);
        return;
    }
    rwork *w = kv_calloc(1, sizeof *w);
    if (!w) {
        rep_msg e = {.type = m->type + 1, .id = m->id, .status = -ENOMEM};
        rep__conn_send(c, &e);
        return;
    }
    rep_node *n = c->node;
    w->c = c;
    w->id = m->id;
    w->type = m->type;
    kv_buf_init(&w->key);
    kv_buf_init(&w->obj);
    kv_buf_init(&w->job.out);
    rep__conn_ref(c);
    int rc = kv_buf_set(&w->key, m->key.ptr, m->key.len);
    if (rc == 0) rc = kv_buf_set(&w->obj, m->value.ptr, m->value.len);
    w->job.op.key = kv_buf_slice(&w->key);
    w->job.op.value = kv_buf_slice(&w->obj);
    w->job.op.flags = (m->flags & REP_PUT_SYNC ? REP_STORE_SYNC : 0) |
                      (m->flags & REP_PUT_NOSYNC ? REP_STORE_NOSYNC : 0) |
                      (m->flags & REP_PUT_LWW ? REP_STORE_LWW : 0);
    w->job.op.actor = n->actor;
    w->job.done = replica_done;
    if (rc == 0 && m->type == REP_REAP) {
        rc = rep__work(n, reap_run, reap_done, w);
    } else if (rc == 0) {
        w->job.op.kind = m->type == REP_RGET ? REP_JOB_GET : REP_STORE_OP_MERGE;
        rc = rep__exec(n, &w->job);
    }
    if (rc) replica_answer(w, rc);
}

/* ---- scans ----
 *
 * A scan reads up to 64 MiB of the store (scan.c): it runs on the pool,
 * not on the engine threads, where it would hold up the gets and writes
 * queued behind it. Scans in flight are listed on the node, so that a
 * stopping node answers them with KV_ECLOSED, as it does the requests it
 * coordinates; the pool job then only frees its work. */

struct scan_work {
    scan_work *prev, *next; /* in node->scans until answered */
    conn *c;
    uint64_t id;
    uint32_t max;
    bool more;
    bool answered; /* scan_answer ran: the pool job only frees */
    int rc;
    kv_buf prefix, cursor, items;
};

static void scan_answer(scan_work *w, int rc) {
    rep_node *n = w->c->node;
    rep_msg m = {.type = REP_SCAN_REPLY, .id = w->id, .status = rc};
    if (rc == 0) {
        m.flags = w->more ? REP_SCAN_MORE : 0;
        m.ctx = kv_buf_slice(&w->cursor);
        m.value = kv_buf_slice(&w->items);
    }
    rep__conn_send(w->c, &m);
    if (w->prev)
        w->prev->next = w->next;
    else
        n->scans = w->next;
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
    w->answered = true;
}

static void scan_free(scan_work *w) {
    rep__conn_unref(w->c);
    kv_buf_release(&w->prefix);
    kv_buf_release(&w->cursor);
    kv_buf_release(&w->items);
    kv_free(w);
}

static void scan_run(void *arg) {
    scan_work *w = arg;
    w->rc = rep__scan(w->c->node, kv_buf_slice(&w->prefix), &w->cursor, w->max,
                      &w->items, &w->more);
}

static void scan_done(void *arg, int status) {
    scan_work *w = arg;
    if (!w->answered) scan_answer(w, status ? KV_ECLOSED : w->rc);
    scan_free(w);
}

/* On shut_down: answer every scan in flight. */
static void scan_stop_all(rep_node *n) {
    while (n->scans) scan_answer(n->scans, KV_ECLOSED);
}

static void serve_scan(conn *c, const rep_msg *m) {
    rep_node *n = c->node;
    rep_msg e = {.type = REP_SCAN_REPLY, .id = m->id};
    if (m->u64 > REP_SCAN_MAX_ITEMS) {
        e.status = -EINVAL;
    } else if (!rep__scan_cursor_ok(m->ctx)) {
        e.status = KV_EPROTO;
    } else {
        scan_work *w = kv_calloc(1, sizeof *w);
        if (!w) {
            e.status = -ENOMEM;
        } else {
            w->c = c;
            w->id = m->id;
            w->max = m->u64 ? (uint32_t)m->u64 : REP_SCAN_MAX_ITEMS;
            kv_buf_init(&w->prefix);
            kv_buf_init(&w->cursor);
            kv_buf_init(&w->items);
            rep__conn_ref(c);
            w->next = n->scans;
            if (n->scans) n->scans->prev = w;
            n->scans = w;
            int rc = kv_buf_set(&w->prefix, m->key.ptr, m->key.len);
            if (rc == 0) rc = kv_buf_set(&w->cursor, m->ctx.ptr, m->ctx.len);
            if (rc == 0) rc = rep__work(n, scan_run, scan_done, w);
            if (rc == 0) return;
            scan_answer(w, rc);
            scan_free(w);
            return;
        }
    }
    rep__conn_send(c, &e);
}

/* ---- reading frames ---- */

static int on_hello(conn *c, const rep_msg *m) {
    rep_node *n = c->node;
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
    if (m->flags == REP_ROLE_NODE && ring_name_valid(m->text)) {
        memcpy(c->member, m->text.ptr, m->text.len);
        c->member[m->text.len] = '\0';
    }
    size_t at = strlen(c->peer);
    snprintf(c->peer + at, sizeof c->peer - at, " (%.*s)",
             (int)KV_MIN(m->text.len, 40), (const char *)m->text.ptr);
    rep_msg h = {.type = REP_HELLO, .id = m->id, .u64 = REP_PROTO_VERSION};
    h.flags = REP_ROLE_NODE;
    h.text = kv_slice_str(n->name);
    rep__conn_send(c, &h);
    return 0;
}

static int on_frame(void *arg, const rep_msg *m) {
    conn *c = arg;
    rep_node *n = c->node;
    if (!c->hello) return on_hello(c, m);
    if (c->member[0]) rep__peer_heard(n, kv_slice_str(c->member));
    if (n->stopping && m->type != REP_PING) {
        send_error(c, m->id, KV_ECLOSED, "node is stopping");
        return KV_ECLOSED;
    }
    switch (m->type) {
    case REP_PING: {
        rep_msg p = {.type = REP_PONG, .id = m->id, .u64 = m->u64};
        rep__conn_send(c, &p);
        return 0;
    }
    case REP_GET:
    case REP_PUT:
        rep__coord_start(c, m);
        return 0;
    case REP_RGET:
    case REP_RPUT:
    case REP_REAP:
        serve_replica(c, m);
        return 0;
    case REP_GOSSIP:
        rep__member_gossip_in(c, m);
        return 0;
    case REP_LEAVE:
        rep__member_leave_in(c, m);
        return 0;
    case REP_BUCKET:
        rep__member_bucket_in(c, m);
        return 0;
    case REP_SCAN:
        serve_scan(c, m);
        return 0;
    default:
        send_error(c, m->id, KV_EPROTO, "unexpected frame type");
        return KV_EPROTO;
    }
}

void rep__read_buf(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
    (void)h;
    (void)suggested;
    static __thread char buf[64 * 1024];
    *b = uv_buf_init(buf, sizeof buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    conn *c = s->data;
    if (nread == 0 || c->closing) return;
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
        return;
    }
    if (!c->closing && !c->paused &&
        (c->refs >= MAX_REFS ||
         rep__outbuf_queued(&c->out) >= c->node->opt.max_queued)) {
        c->paused = true;
        uv_read_stop(CONN_STREAM(c));
    }
}

static void on_idle(uv_timer_t *t) {
    conn *c = t->data;
    if (c->draining) {
        conn_close(c, "replies not taken before the node stopped");
        return;
    }
    /* Busy is not idle: wait while answers are due or unwritten. */
    if (c->refs > 0 || rep__outbuf_queued(&c->out) > 0) return;
    conn_close(c, "idle timeout");
}

static void on_refused_closed(uv_handle_t *h) {
    kv_free(h);
}

/* A served connection on stream handle io (tcp or pipe, initialised by
 * the caller), linked into the node; its reading starts with conn_start. */
static conn *conn_new(rep_node *n) {
    conn *c = kv_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->node = n;
    rep_parser_init(&c->parser, REP_HELLO_MAX_PAYLOAD);
    uv_timer_init(&n->loop, &c->idle);
    c->idle.data = c;
    c->next = n->conns;
    if (n->conns) n->conns->prev = c;
    n->conns = c;
    return c;
}

/* After the caller initialised c->io: both handles are c's to close. */
static void conn_attach(conn *c) {
    c->io.handle.data = c;
    rep__outbuf_init(&c->out, c->node, CONN_STREAM(c), on_written, c);
    c->handles = 2;
}

/* Once the stream is connected: read, and time out when idle. */
static void conn_start(conn *c) {
    uv_timer_start(&c->idle, on_idle, c->node->opt.idle_ms,
                   c->node->opt.idle_ms);
    uv_read_start(CONN_STREAM(c), rep__read_buf, on_read);
}

static void on_connection(uv_stream_t *server, int status) {
    rep_node *n = server->data;
    if (status < 0) {
        kv_warn(MOD, "accept failed: %s", uv_strerror(status));
        return;
    }
    conn *c = conn_new(n);
    if (!c) {
        /* Take the connection off the backlog and close it, or the
         * listener would report it again and again. */
        uv_tcp_t *t = malloc(sizeof *t);
        if (t && uv_tcp_init(&n->loop, t) == 0) {
            uv_accept(server, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, on_refused_closed);
        } else {
            free(t);
        }
        kv_warn(MOD, "refused a connection: out of memory");
        return;
    }
    uv_tcp_init(&n->loop, &c->io.tcp);
    conn_attach(c);
    snprintf(c->peer, sizeof c->peer, "?");
    if (uv_accept(server, CONN_STREAM(c)) != 0) {
        conn_close(c, "accept failed");
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->io.tcp, (struct sockaddr *)&ss, &len) == 0 &&
        ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        char ip[32];
        uv_ip4_name(in, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(in->sin_port));
    }
    uv_tcp_nodelay(&c->io.tcp, 1);
    uv_tcp_keepalive(&c->io.tcp, 1, 30);
    conn_start(c);
}

/* ---- in-process connections ---- */

/* On the loop: serve the socketpair ends rep_node_connect queued. */
static void take_local(rep_node *n) {
    pthread_mutex_lock(&n->local_mu);
    int *fds = n->local_fds, nfds = n->nlocal;
    n->local_fds = NULL;
    n->nlocal = 0;
    pthread_mutex_unlock(&n->local_mu);
    for (int i = 0; i < nfds; i++) {
        conn *c = n->stopping ? NULL : conn_new(n);
        if (!c) {
            close(fds[i]);
            continue;
        }
        uv_pipe_init(&n->loop, &c->io.pipe, 0);
        conn_attach(c);
        snprintf(c->peer, sizeof c->peer, "in-process");
        int rc = uv_pipe_open(&c->io.pipe, fds[i]);
        if (rc) {
            close(fds[i]);
            conn_close(c, uv_strerror(rc));
        } else {
            conn_start(c);
        }
    }
    kv_free(fds);
}

/* ---- the local client ---- */

static int local_check(rep_node *n, kv_slice key, const rep_opts *o) {
    if (atomic_load(&n->stop_asked)) return KV_ECLOSED;
    if (key.len == 0 || key.len > REP_MAX_KEY) return -EINVAL;
    /* The coordinator's checks, for a ring of one. */
    if (o && (o->n > n->opt.n_val || o->r > (o->n ? o->n : n->opt.n_val) ||
              o->w > (o->n ? o->n : n->opt.n_val) || (o->sync && o->nosync)))
        return -EINVAL;
    return 0;
}

int rep__local_get(rep_node *n, kv_slice key, const rep_opts *o, kv_buf *obj) {
    int rc = local_check(n, key, o);
    if (rc) return rc;
    kv_buf raw = KV_BUF_INIT;
    rc = rep_store_get(n->store, key, &raw);
    if (rc == 0) rc = kv_buf_set(obj, raw.ptr, raw.len);
    kv_buf_release(&raw);
    return rc;
}

int rep__local_scan(rep_node *n, kv_slice prefix, kv_buf *cursor,
                    uint32_t max_items, kv_buf *items, bool *more) {
    *more = false;
    if (atomic_load(&n->stop_asked)) return KV_ECLOSED;
    return rep__scan(n, prefix, cursor, max_items, items, more);
}

int rep__local_put(rep_node *n, kv_slice key, kv_slice ctx, kv_slice value,
                   const rep_opts *o, kv_buf *newctx) {
    int rc = local_check(n, key, o);
    if (rc) return rc;
    /* The bounds the wire puts on a request, checked here instead. */
    if (value.len > REP_MAX_VALUE || ctx.len > REP_MAX_VALUE)
        return KV_ETOOLARGE;
    if (ctx.len) {
        dvv_ctx *cx;
        rc = dvv_ctx_decode(ctx, &cx);
        dvv_ctx_free(cx);
        if (rc) return rc == -ENOMEM ? rc : KV_EPROTO;
    }
    kv_buf obj = KV_BUF_INIT, nc = KV_BUF_INIT;
    rep_store_op op = {.kind = REP_STORE_OP_UPDATE,
                       .key = key,
                       .ctx = ctx,
                       .value = value,
                       .flags = (o && o->sync ? REP_STORE_SYNC : 0) |
                                (o && o->nosync ? REP_STORE_NOSYNC : 0),
                       .actor = n->actor,
                       .now_us = rep__now_us(n),
                       .out = &obj,
                       .ctx_out = &nc};
    rep_store_apply(n->store, &op, 1);
    rc = op.rc;
    if (rc == 0 && newctx) rc = kv_buf_set(newctx, nc.ptr, nc.len);
    kv_buf_release(&nc);
    kv_buf_release(&obj);
    return rc;
}

int rep_node_connect_local(rep_node *n, uint32_t timeout_ms, rep_client **out) {
    *out = NULL;
    if (n->opt.listen || (n->opt.join && *n->opt.join)) return -ENOTSUP;
    return rep__client_local(n, timeout_ms, out);
}

int rep_node_connect(rep_node *n, uint32_t timeout_ms, rep_client **out) {
    *out = NULL;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    pthread_mutex_lock(&n->local_mu);
    int *fds = kv_realloc(n->local_fds, (size_t)(n->nlocal + 1) * sizeof *fds);
    if (fds) {
        n->local_fds = fds;
        fds[n->nlocal++] = sv[0];
    }
    pthread_mutex_unlock(&n->local_mu);
    if (!fds) {
        close(sv[0]);
        close(sv[1]);
        return -ENOMEM;
    }
    uv_async_send(&n->wake);
    return rep_client_open_fd(sv[1], timeout_ms, out);
}

/* ---- identity and lifecycle ---- */

/* Write bytes to dir/name atomically: temp file, fsync, rename, fsync of
 * the directory. */
int rep__write_atomic(const char *dir, const char *name, const void *p,
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
        if (!got) inc = rep__now_us(n) ^ ((uint64_t)getpid() << 40);
        char line[RING_MAX_NAME + 20];
        if (!n->name) {
            rc = -ENOMEM;
        } else {
            int len = snprintf(line, sizeof line, "%s\n%016" PRIx64 "\n",
                               n->name, inc);
            rc = rep__write_atomic(n->dir, "NODE", line, (size_t)len);
        }
    }
    kv_buf_release(&b);
    if (rc == 0) {
        uint8_t id[8];
        n->incarnation = inc;
        kv_put_u64(id, inc);
        n->actor = kv_hash64(n->name, strlen(n->name), kv_hash64(id, 8, 0));
    }
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
    /* A write to a connection the other side closed must be an error
     * (EPIPE) on that connection, not a signal that ends the process;
     * libuv writes without MSG_NOSIGNAL. Process-wide, like the above. */
    signal(SIGPIPE, SIG_IGN);
    rep_node *n = kv_calloc(1, sizeof *n);
    if (!n) return -ENOMEM;
    n->opt = *o;
    pthread_mutex_init(&n->local_mu, NULL);
    int rc = -ENOMEM;
    n->dir = kv_strdup(o->data_dir);
    if (o->name) n->name = kv_strdup(o->name);
    if (!n->dir || (o->name && !n->name)) goto fail;
    if (mkdir(n->dir, 0755) < 0 && errno != EEXIST) {
        rc = -errno;
        kv_error(MOD, "cannot create '%s': %s", n->dir, strerror(errno));
        goto fail;
    }
    if ((rc = load_identity(n))) goto fail;
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
    if ((rc = rep__exec_open(n))) goto fail;
    rep__outbuf_loop_init(n);
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
    if ((rc = rep__member_open(n))) goto fail;
    rep__member_start(n);
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
    rep__coord_stop_all(n);
    scan_stop_all(n);
    rep__member_stop(n);
    rep__peer_close_all(n);
    /* Connections close once their last reply is written (bounded by
     * DRAIN_MS), so the KV_ECLOSED answers above reach their clients. */
    for (conn *c = n->conns, *next; c; c = next) {
        next = c->next;
        uv_read_stop(CONN_STREAM(c));
        if (rep__outbuf_queued(&c->out) == 0) {
            conn_close(c, NULL);
        } else {
            c->draining = true;
            uv_timer_start(&c->idle, on_idle, DRAIN_MS, DRAIN_MS);
        }
    }
    if (n->signals) {
        close_if_open((uv_handle_t *)&n->sigint);
        close_if_open((uv_handle_t *)&n->sigterm);
    }
    close_if_open((uv_handle_t *)&n->wake);
    rep__exec_stop(n);
}

static void on_wake(uv_async_t *a) {
    rep_node *n = a->data;
    take_local(n);
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
    if (n->wake.loop) {
        /* The loop ended, so nothing is left to write: the flusher is the
         * last handle. */
        uv_close((uv_handle_t *)&n->flusher, NULL);
        uv_run(&n->loop, UV_RUN_DEFAULT);
    }
    rep__peer_free_all(n);
    rep__exec_free(n);
    if (n->wake.loop) uv_loop_close(&n->loop);
    rep__member_free(n);
    rep__coord_free(n);
    for (int i = 0; i < n->nlocal; i++) close(n->local_fds[i]);
    kv_free(n->local_fds);
    pthread_mutex_destroy(&n->local_mu);
    rep_store_free(n->store);
    int rc = n->db ? eng_db_close(n->db) : 0;
    kv_free(n->dir);
    kv_free(n->name);
    kv_free(n);
    return rc;
}
