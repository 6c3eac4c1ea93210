/*
 * Peers: the connection this node opens to each other member, the calls
 * made on it, and the failure detector (see node_int.h).
 *
 * One connection per member, opened on the first call and kept; calls are
 * pipelined on it and matched to replies by request id. Calls made while
 * it connects wait in its pending table and go out once the member's
 * HELLO came back. When the connection fails, every pending call fails
 * with the reason, and the next call connects again (at most one attempt
 * per RECONNECT_MS: calls in between fail at once, so a dead member costs
 * a coordinator nothing but a counted failure). Calls made in one loop
 * turn go out in one write (outbuf.c).
 *
 * Failure detector: a heartbeat timeout. Every tick pings each member;
 * anything that arrives from a member (a reply here, or a frame it sends
 * on a connection it opened) marks it heard. A member not heard for
 * fd_timeout_ms is down; a connection with calls waiting and nothing heard
 * for that long is closed, failing them (so a stuck member cannot pile up
 * calls).
 */
#include "replica/node_int.h"

#include <stdio.h>
#include <stdlib.h>

#define BUCKETS 256            /* pending-call table of a peer */
#define RECONNECT_MS 200       /* least time between two connect attempts */
#define CONNECT_MS 2000        /* connect + HELLO deadline */
#define MAX_QUEUED (64u << 20) /* bytes waiting to be written */

typedef struct call {
    struct call *next;
    uint64_t id;
    rep__peer_cb cb;
    void *arg;
    kv_buf frame; /* encoded, until sent */
} call;

typedef enum { P_IDLE, P_CONNECTING, P_READY, P_CLOSING } pstate;

struct peer {
    rep_node *node;
    peer *next;
    char name[RING_MAX_ADDR + 2]; /* a member, or "@" + a seed's address */
    char addr[RING_MAX_ADDR + 1];
    pstate state;
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_timer_t timer; /* connect deadline */
    rep_parser parser;
    rep_outbuf out; /* calls not yet written, on the current connection */
    int handles;    /* open handles of the current connection */
    uint64_t hello_id;
    call *pending[BUCKETS];
    uint32_t npending;
    uint64_t last_heard; /* uv_now, ms */
    uint64_t last_try;   /* last connect attempt */
    int last_error;      /* why the last connection failed */
    int refused;         /* the member's own reason (an error frame) */
    size_t queued;       /* bytes of calls waiting for the connection */
};

static peer *find_peer(rep_node *n, kv_slice name) {
    for (peer *p = n->peers; p; p = p->next)
        if (kv_slice_eq(kv_slice_str(p->name), name)) return p;
    return NULL;
}

bool rep__peer_up(rep_node *n, kv_slice name) {
    if (kv_slice_eq(name, kv_slice_str(n->name))) return true;
    peer *p = find_peer(n, name);
    return !p || uv_now(&n->loop) - p->last_heard <= n->opt.fd_timeout_ms;
}

static peer *new_peer(rep_node *n, kv_slice name) {
    peer *p = kv_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->node = n;
    memcpy(p->name, name.ptr, name.len);
    p->last_heard = uv_now(&n->loop);
    p->next = n->peers;
    n->peers = p;
    return p;
}

void rep__peer_heard(rep_node *n, kv_slice name) {
    peer *p = find_peer(n, name);
    if (!p && name.len <= RING_MAX_ADDR + 1) p = new_peer(n, name);
    if (p) p->last_heard = uv_now(&n->loop);
}

/* Take the call with id out of p's table. */
static call *take_call(peer *p, uint64_t id) {
    call **pp = &p->pending[id % BUCKETS];
    for (call *c = *pp; c; pp = &c->next, c = c->next) {
        if (c->id == id) {
            *pp = c->next;
            p->npending--;
            return c;
        }
    }
    return NULL;
}

static void free_call(call *c) {
    kv_buf_release(&c->frame);
    kv_free(c);
}

/* Fail every pending call of p with rc. Callbacks may make new calls on
 * p, which then start a new connection, so the table is emptied first. */
static void fail_all(peer *p, int rc) {
    call *list = NULL;
    for (int b = 0; b < BUCKETS; b++) {
        while (p->pending[b]) {
            call *c = p->pending[b];
            p->pending[b] = c->next;
            c->next = list;
            list = c;
        }
    }
    p->npending = 0;
    while (list) {
        call *c = list;
        list = c->next;
        c->cb(c->arg, rc, NULL);
        free_call(c);
    }
}

static void on_peer_closed(uv_handle_t *h) {
    peer *p = h->data;
    if (--p->handles > 0) return;
    rep_parser_release(&p->parser);
    p->state = P_IDLE;
    if (p->node->stopping && p->npending == 0) return;
    /* Calls cannot be made while it closes (rep__peer_call refuses them),
     * but fail any left so that none waits for a connection that is
     * gone. */
    if (p->npending) {
        int rc = p->last_error ? p->last_error : KV_ECLOSED;
        fail_all(p, rc);
    }
}

/* Close p's connection; its calls fail with rc. */
static void peer_drop(peer *p, int rc, const char *why) {
    if (p->state == P_IDLE || p->state == P_CLOSING) return;
    if (why)
        kv_info(MOD, "connection to '%s' (%s) closed: %s", p->name, p->addr,
                why);
    p->state = P_CLOSING;
    p->last_error = rc;
    /* Calls not yet written fail below with the others. */
    rep__outbuf_release(&p->out);
    uv_close((uv_handle_t *)&p->tcp, on_peer_closed);
    uv_close((uv_handle_t *)&p->timer, on_peer_closed);
    /* Fail now rather than when the handles are closed: the callers'
     * quorums should not wait a loop turn for a known failure. */
    fail_all(p, rc);
}

static void on_peer_written(rep_outbuf *o, int status) {
    peer *p = o->data;
    if (status < 0) peer_drop(p, KV_ECLOSED, uv_strerror(status));
}

static int on_peer_frame(void *arg, const rep_msg *m) {
    peer *p = arg;
    p->last_heard = uv_now(&p->node->loop);
    if (m->type == REP_ERROR) {
        /* The member refuses the connection (a version it does not speak,
         * or it is stopping): its reason fails the calls. */
        kv_warn(MOD, "'%s' refused: %s (%.*s)", p->name, kv_strerror(m->status),
                (int)KV_MIN(m->text.len, 200), (const char *)m->text.ptr);
        p->refused = m->status < -4095 || (m->status < 0 && m->status > -4096)
                         ? m->status
                         : KV_EPROTO;
        return p->refused;
    }
    if (p->state == P_CONNECTING) {
        if (m->type == REP_HELLO && m->u64 != REP_PROTO_VERSION) {
            kv_warn(MOD, "'%s' (%s) speaks protocol version %llu", p->name,
                    p->addr, (unsigned long long)m->u64);
            p->refused = KV_EVERSION;
            return KV_EVERSION;
        }
        if (m->type != REP_HELLO || m->id != p->hello_id) {
            kv_warn(MOD, "'%s' (%s) answered hello with %s", p->name, p->addr,
                    rep_msg_type_name(m->type));
            return KV_EPROTO;
        }
        if (p->name[0] != '@' && !kv_slice_eq(m->text, kv_slice_str(p->name))) {
            kv_warn(MOD, "'%s' expected at %s, but '%.*s' answered", p->name,
                    p->addr, (int)KV_MIN(m->text.len, 64),
                    (const char *)m->text.ptr);
            return KV_EPROTO;
        }
        uv_timer_stop(&p->timer);
        rep_parser_set_limit(&p->parser, REP_MAX_PAYLOAD);
        p->state = P_READY;
        p->queued = 0;
        /* Send what waited for the connection (in one write). */
        for (int b = 0; b < BUCKETS; b++)
            for (call *c = p->pending[b]; c; c = c->next)
                if (c->frame.len) {
                    int rc =
                        rep__outbuf_append(&p->out, kv_buf_slice(&c->frame));
                    kv_buf_release(&c->frame);
                    if (rc) return rc;
                }
        return 0;
    }
    call *c = take_call(p, m->id);
    if (!c) return 0; /* a call already failed by the stuck check */
    c->cb(c->arg, 0, m);
    free_call(c);
    return 0;
}

static void on_peer_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    peer *p = s->data;
    if (nread == 0 || p->state == P_CLOSING) return;
    if (nread < 0) {
        peer_drop(p, KV_ECLOSED,
                  nread == UV_EOF ? "closed by peer" : uv_strerror((int)nread));
        return;
    }
    int rc =
        rep_parser_feed(&p->parser, b->base, (size_t)nread, on_peer_frame, p);
    if (rc && p->state != P_CLOSING) {
        const char *why = rep_parser_why(&p->parser);
        peer_drop(p, p->refused ? p->refused : KV_EPROTO,
                  *why ? why : kv_strerror(rc));
    }
}

static void on_peer_connected(uv_connect_t *cr, int status) {
    peer *p = cr->data;
    if (p->state != P_CONNECTING) return;
    if (status < 0) {
        peer_drop(p, status == UV_ECANCELED ? KV_ECLOSED : status,
                  p->node->stopping ? NULL : uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&p->tcp, 1);
    uv_tcp_keepalive(&p->tcp, 1, 30);
    rep_msg h = {.type = REP_HELLO,
                 .id = p->hello_id,
                 .u64 = REP_PROTO_VERSION,
                 .flags = REP_ROLE_NODE};
    h.text = kv_slice_str(p->node->name);
    int rc = rep__outbuf_send(&p->out, &h);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&p->tcp, rep__read_buf, on_peer_read);
    if (rc) peer_drop(p, rc < 0 && rc > -4096 ? rc : KV_ECLOSED, "hello");
}

static void on_connect_timeout(uv_timer_t *t) {
    peer *p = t->data;
    peer_drop(p, KV_ETIMEDOUT, "connect timed out");
}

static int peer_connect(peer *p) {
    rep_node *n = p->node;
    struct sockaddr_in sa;
    if (rep_parse_addr(p->addr, &sa)) return -EINVAL;
    p->last_try = uv_now(&n->loop);
    uv_tcp_init(&n->loop, &p->tcp);
    uv_timer_init(&n->loop, &p->timer);
    p->tcp.data = p->timer.data = p->connect.data = p;
    rep__outbuf_init(&p->out, n, (uv_stream_t *)&p->tcp, on_peer_written, p);
    p->handles = 2;
    p->state = P_CONNECTING;
    p->last_error = 0;
    p->refused = 0;
    p->queued = 0;
    p->hello_id = ++n->next_call_id;
    rep_parser_init(&p->parser, REP_HELLO_MAX_PAYLOAD);
    uv_timer_start(&p->timer, on_connect_timeout, CONNECT_MS, 0);
    int rc = uv_tcp_connect(&p->connect, &p->tcp, (struct sockaddr *)&sa,
                            on_peer_connected);
    if (rc) {
        peer_drop(p, rc, uv_strerror(rc));
        return rc;
    }
    return 0;
}

int rep__peer_call(rep_node *n, kv_slice name, kv_slice addr, rep_msg *m,
                   rep__peer_cb cb, void *arg) {
    if (n->stopping) return KV_ECLOSED;
    if (name.len == 0 || name.len > RING_MAX_ADDR + 1 || addr.len == 0 ||
        addr.len > RING_MAX_ADDR)
        return -EINVAL;
    peer *p = find_peer(n, name);
    if (!p && !(p = new_peer(n, name))) return -ENOMEM;
    if (!kv_slice_eq(kv_slice_str(p->addr), addr)) {
        /* The member moved (restarted on another address). */
        peer_drop(p, KV_ECLOSED, "address changed");
        memcpy(p->addr, addr.ptr, addr.len);
        p->addr[addr.len] = '\0';
    }
    if (p->state == P_CLOSING)
        return p->last_error ? p->last_error : KV_ECLOSED;
    if (p->state == P_IDLE && uv_now(&n->loop) - p->last_try < RECONNECT_MS &&
        p->last_error)
        return p->last_error;
    if ((p->state == P_READY && rep__outbuf_queued(&p->out) > MAX_QUEUED) ||
        (p->state == P_CONNECTING && p->queued > MAX_QUEUED))
        return KV_EBUSY;
    call *c = kv_calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    kv_buf_init(&c->frame);
    m->id = ++n->next_call_id;
    /* Ready: straight onto the connection's output for this turn. Else
     * the frame waits in the call for the member's HELLO. */
    int rc = p->state == P_READY ? rep__outbuf_send(&p->out, m)
                                 : rep_msg_encode(m, &c->frame);
    if (rc) {
        free_call(c);
        return rc;
    }
    c->id = m->id;
    c->cb = cb;
    c->arg = arg;
    if (p->state == P_IDLE && (rc = peer_connect(p)) != 0) {
        free_call(c);
        return rc;
    }
    if (p->state == P_CONNECTING) p->queued += c->frame.len;
    c->next = p->pending[c->id % BUCKETS];
    p->pending[c->id % BUCKETS] = c;
    p->npending++;
    return 0;
}

static void on_pong(void *arg, int status, const rep_msg *reply) {
    (void)arg;
    (void)status;
    (void)reply; /* hearing it is the point (on_peer_frame) */
}

void rep__peer_tick(rep_node *n) {
    uint64_t now = uv_now(&n->loop);
    ring_cluster *s = n->state;
    for (uint32_t i = 0; s && i < ring_cluster_members(s); i++) {
        ring_member_info m = ring_cluster_member(s, i);
        if (m.status == RING_REMOVED || m.addr.len == 0 ||
            kv_slice_eq(m.name, kv_slice_str(n->name)))
            continue;
        rep_msg ping = {.type = REP_PING, .u64 = rep__now_us(n)};
        rep__peer_call(n, m.name, m.addr, &ping, on_pong, NULL);
    }
    for (peer *p = n->peers; p; p = p->next)
        if (p->state != P_IDLE && p->state != P_CLOSING && p->npending &&
            now - KV_MAX(p->last_heard, p->last_try) > n->opt.fd_timeout_ms)
            peer_drop(p, KV_ETIMEDOUT, "no answer within the failure timeout");
}

void rep__peer_close_all(rep_node *n) {
    for (peer *p = n->peers; p; p = p->next) {
        peer_drop(p, KV_ECLOSED, NULL);
        fail_all(p, KV_ECLOSED);
    }
}

/* After the loop has ended: free the peers. */
void rep__peer_free_all(rep_node *n) {
    while (n->peers) {
        peer *p = n->peers;
        n->peers = p->next;
        rep__outbuf_release(&p->out);
        fail_all(p, KV_ECLOSED);
        kv_free(p);
    }
}
