/*
 * outbuf: coalesced output of a connection (served ones in node.c, the
 * ones this node opens in peer.c; declared in node_int.h).
 *
 * A frame sent is encoded onto the connection's pending buffer, and the
 * connection is linked into the node's dirty list. The node's prepare
 * handle runs once per loop turn right before the loop polls, after the
 * timers, the I/O and the thread pool's completions of the turn, and gives
 * each dirty connection one uv_write of everything it queued: one system
 * call for a turn's worth of pipelined replies or calls instead of one per
 * frame. Frames keep their order (one buffer, and libuv writes its queue
 * in order). Invariants: a connection is in the dirty list if and only if
 * dirty is set; pending is non-empty or error is set only while dirty; a
 * released outbuf is in no list, holds no bytes and is never called back.
 * A buffer passes REP_OUTBUF_FLUSH_AT only by one frame: it is written at
 * once when it does, so a burst cannot grow it without bound.
 */
#include "replica/node_int.h"

#define SPARE_MAX (64u << 10) /* keep written buffers up to this size */

typedef struct wreq {
    uv_write_t uv;
    kv_buf buf;
} wreq;

static void on_flush(uv_prepare_t *h);

static void link_dirty(rep_outbuf *o) {
    rep_node *n = o->node;
    if (o->dirty) return;
    o->dirty = true;
    o->prev = NULL;
    o->next = n->dirty;
    if (n->dirty) n->dirty->prev = o;
    n->dirty = o;
    /* A no-op when active. Closed only once the loop ended, when no
     * connection is left to send on. */
    if (!uv_is_closing((uv_handle_t *)&n->flusher))
        uv_prepare_start(&n->flusher, on_flush);
}

static void unlink_dirty(rep_outbuf *o) {
    if (!o->dirty) return;
    rep_node *n = o->node;
    if (o->prev)
        o->prev->next = o->next;
    else
        n->dirty = o->next;
    if (o->next) o->next->prev = o->prev;
    o->prev = o->next = NULL;
    o->dirty = false;
}

static void on_written(uv_write_t *w, int status) {
    wreq *r = (wreq *)w;
    rep_outbuf *o = w->data;
    /* Keep a small buffer for the next turn: no regrowing it every turn. */
    if (o->stream && status == 0 && !o->spare.ptr && r->buf.cap <= SPARE_MAX) {
        o->spare = r->buf;
        kv_buf_reset(&o->spare);
    } else {
        kv_buf_release(&r->buf);
    }
    kv_free(r);
    if (o->stream) o->cb(o, status);
}

/* One uv_write of everything pending; 0 or why it could not start (the
 * pending bytes are then dropped). */
static int write_pending(rep_outbuf *o) {
    if (o->pending.len == 0) return 0;
    wreq *r = kv_malloc(sizeof *r);
    if (!r) {
        kv_buf_reset(&o->pending);
        return -ENOMEM;
    }
    r->buf = o->pending;
    o->pending = o->spare;
    kv_buf_init(&o->spare);
    r->uv.data = o;
    uv_buf_t b = uv_buf_init((char *)r->buf.ptr, (unsigned)r->buf.len);
    int rc = uv_write(&r->uv, o->stream, &b, 1, on_written);
    if (rc) {
        kv_buf_release(&r->buf);
        kv_free(r);
        return rc;
    }
    atomic_fetch_add_explicit(&o->node->writes_out, 1, memory_order_relaxed);
    return 0;
}

/* Once a frame is queued: write now if the buffer is full, else at the end
 * of the turn. */
static int queued(rep_outbuf *o) {
    atomic_fetch_add_explicit(&o->node->frames_out, 1, memory_order_relaxed);
    if (o->pending.len < REP_OUTBUF_FLUSH_AT) {
        link_dirty(o);
        return 0;
    }
    int rc = write_pending(o);
    if (rc) {
        /* Report it from the flusher, not from inside the caller's send:
         * the owner's reaction (closing, failing calls) must not run
         * under its caller. */
        o->error = rc;
        link_dirty(o);
        return KV_ECLOSED;
    }
    return 0;
}

void rep__outbuf_init(rep_outbuf *o, rep_node *n, uv_stream_t *s,
                      rep__outbuf_cb cb, void *data) {
    memset(o, 0, sizeof *o);
    o->node = n;
    o->stream = s;
    o->cb = cb;
    o->data = data;
}

int rep__outbuf_send(rep_outbuf *o, const rep_msg *m) {
    if (!o->stream) return KV_ECLOSED;
    if (o->error) return KV_ECLOSED;
    int rc = rep_msg_encode(m, &o->pending);
    return rc ? rc : queued(o);
}

int rep__outbuf_append(rep_outbuf *o, kv_slice bytes) {
    if (!o->stream) return KV_ECLOSED;
    if (o->error) return KV_ECLOSED;
    int rc = kv_buf_append(&o->pending, bytes.ptr, bytes.len);
    return rc ? rc : queued(o);
}

int rep__outbuf_flush(rep_outbuf *o) {
    if (!o->stream) return KV_ECLOSED;
    int rc = o->error ? o->error : write_pending(o);
    unlink_dirty(o);
    o->error = 0;
    return rc;
}

void rep__outbuf_release(rep_outbuf *o) {
    unlink_dirty(o);
    kv_buf_release(&o->pending);
    kv_buf_release(&o->spare);
    o->stream = NULL;
    o->error = 0;
}

size_t rep__outbuf_queued(const rep_outbuf *o) {
    return o->pending.len + (o->stream ? o->stream->write_queue_size : 0);
}

/* Right before the loop polls: write what every connection queued. A
 * failure goes to the owner, which may close the connection or send on
 * others (those are written in this same pass). */
static void on_flush(uv_prepare_t *h) {
    rep_node *n = h->data;
    rep_outbuf *o;
    while ((o = n->dirty) != NULL) {
        unlink_dirty(o);
        int rc = o->error ? o->error : write_pending(o);
        o->error = 0;
        if (rc) o->cb(o, rc);
    }
    uv_prepare_stop(h);
}

void rep__outbuf_loop_init(rep_node *n) {
    uv_prepare_init(&n->loop, &n->flusher);
    n->flusher.data = n;
}
