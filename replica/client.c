/*
 * The blocking TCP client (see client.h). Each call writes one request
 * frame and reads frames until the reply with the same id. The deadline
 * is checked on every pass of the send and receive loops, not only before
 * poll() blocks, so a dead or silent node, one that trickles its reply or
 * one that floods frames answering nothing, gives KV_ETIMEDOUT, never a
 * hang. A connection error or a bad frame breaks the client: later calls
 * return the same error. A request too large to send is refused before
 * anything is written, and the client stays usable.
 */
#include "replica/client.h"
#include "replica/node_int.h"
#include "replica/proto.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct rep_client {
    int fd;
    uint32_t timeout_ms;
    uint64_t next_id;
    int broken; /* sticky connection error */
    rep_parser parser;
    kv_buf out;
    char node[64];
    /* the reply being waited for, copied out of the parser's callback */
    uint64_t want_id;
    bool got;
    rep_msg reply;
    kv_buf reply_bytes;
    /* Local mode (rep_node_connect_local): gets and puts call the node
     * directly; the rest goes over wire, an in-process connection. */
    rep_node *local;
    rep_client *wire;
    /* A get started (rep_client_get_start), not yet finished: its
     * deadline, or (local mode) its result. */
    bool started;
    uint64_t started_deadline;
    int started_rc;
};

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Wait until fd is ready for events or the deadline passes. */
static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline) return KV_ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)KV_MIN(deadline - now, (uint64_t)INT32_MAX));
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -errno;
    }
}

static int break_with(rep_client *c, int rc) {
    if (!c->broken) c->broken = rc;
    return rc;
}

static int send_all(rep_client *c, uint64_t deadline) {
    size_t off = 0;
    while (off < c->out.len) {
        if (mono_ms() >= deadline) return break_with(c, KV_ETIMEDOUT);
        ssize_t w =
            send(c->fd, c->out.ptr + off, c->out.len - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(c->fd, POLLOUT, deadline);
            if (rc) return break_with(c, rc);
            continue;
        }
        return break_with(c, -errno);
    }
    kv_buf_reset(&c->out);
    return 0;
}

/* Keep the awaited reply (its slices die with the callback). */
static int on_frame(void *arg, const rep_msg *m) {
    rep_client *c = arg;
    if (m->id != c->want_id) return 0; /* a late reply to a timed-out call */
    kv_buf_reset(&c->reply_bytes);
    const kv_slice *src[4] = {&m->key, &m->ctx, &m->value, &m->text};
    size_t total = 0;
    for (int i = 0; i < 4; i++) total += src[i]->len;
    int rc = kv_buf_reserve(&c->reply_bytes, total);
    if (rc) return rc;
    c->reply = *m;
    kv_slice *dst[4] = {&c->reply.key, &c->reply.ctx, &c->reply.value,
                        &c->reply.text};
    for (int i = 0; i < 4; i++) {
        uint8_t *at = c->reply_bytes.ptr + c->reply_bytes.len;
        if (src[i]->len) memcpy(at, src[i]->ptr, src[i]->len);
        *dst[i] = kv_slice_make(at, src[i]->len);
        c->reply_bytes.len += src[i]->len;
    }
    c->got = true;
    return 0;
}

/* Send m; its answer is for call_finish. */
static int call_start(rep_client *c, rep_msg *m, uint64_t deadline) {
    if (c->broken) return c->broken;
    m->id = ++c->next_id;
    c->want_id = m->id;
    c->got = false;
    /* Refused here (KV_ETOOLARGE), nothing is sent and the connection
     * stays usable. */
    int rc = rep_msg_encode(m, &c->out);
    if (rc) return rc;
    return send_all(c, deadline);
}

/* Wait for the frame answering the request sent last, into c->reply. */
static int call_finish(rep_client *c, uint64_t deadline) {
    int rc;
    uint8_t buf[64 * 1024];
    while (!c->got) {
        /* Every pass: a peer that keeps the socket readable never makes
         * this block in poll(), where the deadline is checked too. */
        if (mono_ms() >= deadline) return break_with(c, KV_ETIMEDOUT);
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r > 0) {
            rc = rep_parser_feed(&c->parser, buf, (size_t)r, on_frame, c);
            if (rc) return break_with(c, rc);
            continue;
        }
        if (r == 0) return break_with(c, -ECONNRESET);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return break_with(c, -errno);
        if ((rc = wait_fd(c->fd, POLLIN, deadline))) return break_with(c, rc);
    }
    if (c->reply.type == REP_ERROR) {
        /* The node refuses the connection from here on. */
        return break_with(c, c->reply.status ? c->reply.status : KV_EPROTO);
    }
    return 0;
}

/* Send m and wait for the frame answering it, into c->reply. */
static int call(rep_client *c, rep_msg *m, uint64_t deadline) {
    int rc = call_start(c, m, deadline);
    return rc ? rc : call_finish(c, deadline);
}

/* Exchange HELLOs on c's connected socket. */
static int hello(rep_client *c, uint64_t deadline) {
    int rc;
    rep_msg h = {.type = REP_HELLO, .u64 = REP_PROTO_VERSION};
    h.flags = REP_ROLE_CLIENT;
    h.text = kv_slice_str("client");
    if ((rc = call(c, &h, deadline))) return rc;
    if (c->reply.type != REP_HELLO || c->reply.u64 != REP_PROTO_VERSION) {
        rc = c->reply.type == REP_HELLO ? KV_EVERSION : KV_EPROTO;
        return rc;
    }
    snprintf(c->node, sizeof c->node, "%.*s",
             (int)KV_MIN(c->reply.text.len, sizeof c->node - 1),
             (const char *)c->reply.text.ptr);
    return 0;
}

static rep_client *client_new(uint32_t timeout_ms) {
    rep_client *c = kv_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = -1;
    c->timeout_ms = timeout_ms ? timeout_ms : 10000;
    rep_parser_init(&c->parser, REP_MAX_PAYLOAD);
    kv_buf_init(&c->out);
    kv_buf_init(&c->reply_bytes);
    return c;
}

int rep_client_open_fd(int fd, uint32_t timeout_ms, rep_client **out) {
    *out = NULL;
    rep_client *c = client_new(timeout_ms);
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->fd = fd;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int rc = -errno;
        rep_client_close(c);
        return rc;
    }
    int rc = hello(c, mono_ms() + c->timeout_ms);
    if (rc) {
        rep_client_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int rep_client_connect(const char *hostport, uint32_t timeout_ms,
                       rep_client **out) {
    *out = NULL;
    struct sockaddr_in sa;
    if (!hostport || rep_parse_addr(hostport, &sa)) return -EINVAL;
    rep_client *c = client_new(timeout_ms);
    if (!c) return -ENOMEM;
    uint64_t deadline = mono_ms() + c->timeout_ms;
    int rc;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        rc = -errno;
        goto fail;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINPROGRESS) {
            rc = -errno;
            goto fail;
        }
        if ((rc = wait_fd(c->fd, POLLOUT, deadline))) goto fail;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            rc = -err;
            goto fail;
        }
    }
    if ((rc = hello(c, deadline))) goto fail;
    *out = c;
    return 0;
fail:
    rep_client_close(c);
    return rc;
}

void rep_client_close(rep_client *c) {
    if (!c) return;
    rep_client_close(c->wire);
    if (c->fd >= 0) close(c->fd);
    rep_parser_release(&c->parser);
    kv_buf_release(&c->out);
    kv_buf_release(&c->reply_bytes);
    kv_free(c);
}

bool rep_client_broken(const rep_client *c) {
    return c->broken != 0 || (c->wire && c->wire->broken != 0);
}

int rep__client_local(rep_node *n, uint32_t timeout_ms, rep_client **out) {
    rep_client *c = client_new(timeout_ms);
    if (!c) return -ENOMEM;
    c->local = n;
    snprintf(c->node, sizeof c->node, "%s", rep_node_name(n));
    *out = c;
    return 0;
}

/* The client calls other than get and put go to: c itself, or in local
 * mode its in-process connection (made on first use). */
static int wire_of(rep_client *c, rep_client **out) {
    *out = c;
    if (!c->local) return 0;
    if (!c->wire) {
        int rc = rep_node_connect(c->local, c->timeout_ms, &c->wire);
        if (rc) return rc;
    }
    *out = c->wire;
    return 0;
}

const char *rep_client_node(const rep_client *c) {
    return c->node;
}

static int check_opts(const rep_opts *o, rep_msg *m) {
    rep_opts d = {0};
    if (!o) o = &d;
    /* Zero fields go out as zero: the node fills in its defaults (N =
     * its n_val, R and W a majority of N). */
    m->n = o->n;
    m->r = o->r;
    m->w = o->w;
    m->timeout_ms = o->timeout_ms;
    if (o->n && (o->r > o->n || o->w > o->n)) return -EINVAL;
    return 0;
}

/* The client waits a little longer than the coordinator's deadline, so
 * the coordinator's own timeout answer arrives first. */
static uint64_t deadline_for(const rep_client *c, const rep_msg *m) {
    uint32_t t = m->timeout_ms ? m->timeout_ms + 1000 : c->timeout_ms;
    return mono_ms() + KV_MAX(t, c->timeout_ms);
}

int rep_client_get(rep_client *c, kv_slice key, const rep_opts *o,
                   kv_buf *obj) {
    if (c->local && !c->started) return rep__local_get(c->local, key, o, obj);
    int rc = rep_client_get_start(c, key, o);
    return rc ? rc : rep_client_get_finish(c, obj);
}

int rep_client_get_start(rep_client *c, kv_slice key, const rep_opts *o) {
    if (c->started) return -EINVAL; /* one call at a time */
    if (c->local) {
        /* Nothing to wait for: the answer is kept for finish. */
        kv_buf_reset(&c->reply_bytes);
        c->started_rc = rep__local_get(c->local, key, o, &c->reply_bytes);
        c->started = true;
        return 0;
    }
    rep_msg m = {.type = REP_GET, .key = key};
    int rc = check_opts(o, &m);
    if (rc || key.len == 0) return rc ? rc : -EINVAL;
    c->started_deadline = deadline_for(c, &m);
    if ((rc = call_start(c, &m, c->started_deadline))) return rc;
    c->started = true;
    return 0;
}

int rep_client_get_finish(rep_client *c, kv_buf *obj) {
    if (!c->started) return -EINVAL;
    c->started = false;
    if (c->local)
        return c->started_rc
                   ? c->started_rc
                   : kv_buf_set(obj, c->reply_bytes.ptr, c->reply_bytes.len);
    int rc = call_finish(c, c->started_deadline);
    if (rc) return rc;
    if (c->reply.type != REP_GET_REPLY) return break_with(c, KV_EPROTO);
    if (c->reply.status) return c->reply.status;
    return kv_buf_set(obj, c->reply.value.ptr, c->reply.value.len);
}

static int put(rep_client *c, kv_slice key, kv_slice ctx, kv_slice value,
               const rep_opts *o, uint32_t flags, kv_buf *newctx) {
    if (c->local && flags == 0)
        return rep__local_put(c->local, key, ctx, value, o, newctx);
    int rc = wire_of(c, &c);
    if (rc) return rc;
    rep_msg m = {.type = REP_PUT, .key = key, .ctx = ctx, .value = value};
    rc = check_opts(o, &m);
    if (rc || key.len == 0) return rc ? rc : -EINVAL;
    /* Sizes (each field, and the frame as a whole) are the encoder's to
     * check, in call(): KV_ETOOLARGE before anything is sent. */
    if (o && o->sync && o->nosync) return -EINVAL;
    m.flags = flags | (o && o->sync ? REP_PUT_SYNC : 0) |
              (o && o->nosync ? REP_PUT_NOSYNC : 0);
    if ((rc = call(c, &m, deadline_for(c, &m)))) return rc;
    if (c->reply.type != REP_PUT_REPLY) return break_with(c, KV_EPROTO);
    if (c->reply.status == 0 && newctx)
        return kv_buf_set(newctx, c->reply.ctx.ptr, c->reply.ctx.len);
    return c->reply.status;
}

int rep_client_put(rep_client *c, kv_slice key, kv_slice ctx, kv_slice value,
                   const rep_opts *o) {
    return put(c, key, ctx, value, o, 0, NULL);
}

int rep_client_put_ctx(rep_client *c, kv_slice key, kv_slice ctx,
                       kv_slice value, const rep_opts *o, kv_buf *newctx) {
    return put(c, key, ctx, value, o, 0, newctx);
}

int rep_client_del(rep_client *c, kv_slice key, kv_slice ctx,
                   const rep_opts *o) {
    return put(c, key, ctx, kv_slice_make(NULL, 0), o, REP_PUT_DELETE, NULL);
}

int rep_client_state(rep_client *c, kv_buf *out) {
    rep_msg m = {.type = REP_GOSSIP};
    int rc = wire_of(c, &c);
    if (rc == 0) rc = call(c, &m, mono_ms() + c->timeout_ms);
    if (rc) return rc;
    if (c->reply.type != REP_GOSSIP_REPLY) return break_with(c, KV_EPROTO);
    if (c->reply.status) return c->reply.status;
    return kv_buf_set(out, c->reply.value.ptr, c->reply.value.len);
}

int rep_client_remove(rep_client *c, kv_slice member) {
    rep_msg m = {.type = REP_LEAVE, .text = member, .flags = REP_LEAVE_FORCE};
    int rc = wire_of(c, &c);
    if (rc == 0) rc = call(c, &m, mono_ms() + c->timeout_ms);
    if (rc) return rc;
    if (c->reply.type != REP_LEAVE_REPLY) return break_with(c, KV_EPROTO);
    return c->reply.status;
}

int rep_client_leave(rep_client *c) {
    int rc = wire_of(c, &c);
    if (rc) return rc;
    rep_msg m = {.type = REP_LEAVE, .text = kv_slice_str(c->node)};
    rc = call(c, &m, mono_ms() + c->timeout_ms);
    if (rc) return rc;
    if (c->reply.type != REP_LEAVE_REPLY) return break_with(c, KV_EPROTO);
    return c->reply.status;
}

int rep_client_bucket(rep_client *c, kv_slice bucket, uint32_t flags) {
    rep_msg m = {.type = REP_BUCKET, .text = bucket, .flags = flags};
    /* Local puts do not read bucket modes (rep_node_connect_local). */
    if (c->local) return -ENOTSUP;
    int rc = call(c, &m, mono_ms() + c->timeout_ms);
    if (rc) return rc;
    if (c->reply.type != REP_BUCKET_REPLY) return break_with(c, KV_EPROTO);
    return c->reply.status;
}

/* Check a batch's items (at most max, each well-formed), then hand them
 * to cb: a bad batch makes no call of cb. */
static int deliver(kv_slice items, uint32_t max, rep_scan_cb cb, void *arg,
                   bool *bad) {
    *bad = true;
    kv_reader r = kv_reader_make(items);
    rep_scan_item it;
    uint32_t count = 0;
    while (kv_reader_left(&r)) {
        if (count == max ||
            rep_scan_item_get(&r, &it.key, &it.newest_us, &it.tombstone))
            return KV_EPROTO;
        count++;
    }
    *bad = false;
    r = kv_reader_make(items);
    while (kv_reader_left(&r)) {
        rep_scan_item_get(&r, &it.key, &it.newest_us, &it.tombstone);
        int rc = cb(arg, &it);
        if (rc) return rc;
    }
    return 0;
}

int rep_client_scan(rep_client *c, kv_slice prefix, kv_buf *cursor,
                    uint32_t max_items, rep_scan_cb cb, void *arg, bool *more) {
    if (more) *more = false;
    if (!c || !cursor || !cb || !more || max_items > REP_SCAN_MAX_ITEMS ||
        prefix.len > REP_MAX_KEY || (prefix.len && !prefix.ptr))
        return -EINVAL;
    /* Longer than any engine key: no node could use it. */
    if (cursor->len > REP_SCAN_MAX_CURSOR) return KV_EPROTO;
    uint32_t max = max_items ? max_items : REP_SCAN_MAX_ITEMS;
    /* The batch is copied out of the reply before cb runs, so that cb may
     * call c (whose next reply replaces this one). */
    kv_buf items = KV_BUF_INIT, next = KV_BUF_INIT;
    bool m = false, bad;
    int rc;
    if (c->local) {
        rc = kv_buf_set(&next, cursor->ptr, cursor->len);
        if (rc == 0)
            rc = rep__local_scan(c->local, prefix, &next, max, &items, &m);
        if (rc) goto out;
    } else {
        rep_msg q = {.type = REP_SCAN,
                     .u64 = max,
                     .key = prefix,
                     .ctx = kv_buf_slice(cursor)};
        if ((rc = call(c, &q, mono_ms() + c->timeout_ms))) goto out;
        const rep_msg *a = &c->reply;
        if (a->type != REP_SCAN_REPLY) {
            rc = break_with(c, KV_EPROTO);
            goto out;
        }
        if ((rc = a->status)) goto out;
        m = (a->flags & REP_SCAN_MORE) != 0;
        /* More to come from an empty cursor would start over, forever. */
        if (a->ctx.len > REP_SCAN_MAX_CURSOR || (m && a->ctx.len == 0)) {
            rc = break_with(c, KV_EPROTO);
            goto out;
        }
        rc = kv_buf_set(&next, a->ctx.ptr, a->ctx.len);
        if (rc == 0) rc = kv_buf_set(&items, a->value.ptr, a->value.len);
        if (rc) goto out;
    }
    rc = deliver(kv_buf_slice(&items), max, cb, arg, &bad);
    if (rc && bad) {
        /* From a local node it would be a bug here, not the peer's: no
         * connection to break. */
        if (!c->local) break_with(c, KV_EPROTO);
        goto out;
    }
    if (rc) {
        *more = true; /* cb stopped: this batch is still to be taken */
        goto out;
    }
    kv_buf_release(cursor);
    *cursor = next;
    kv_buf_init(&next);
    *more = m;
out:
    kv_buf_release(&items);
    kv_buf_release(&next);
    return rc;
}

int rep_client_call(rep_client *c, rep_msg *m, const rep_msg **reply) {
    *reply = NULL;
    int rc = wire_of(c, &c);
    if (rc == 0) rc = call(c, m, mono_ms() + c->timeout_ms);
    if (rc == 0) *reply = &c->reply;
    return rc;
}
