/*
 * The coordinator: a client's get or put, from preference list to answer
 * (docs/protocol.md, "The coordinator").
 *
 * get: every replica of the key reads its object (the local one on the
 * thread pool, the others with replica-get); the objects are merged and
 * the answer goes out at R good replies.
 * put: the put must be coordinated by a replica, which makes the new
 * version with a dot of its own. A node that is not one of the key's
 * replicas forwards the put, unchanged, to the first replica it sees up.
 * The coordinating replica updates its copy, then sends the new object to
 * the others with replica-put; W good replies answer. While ownership
 * moves, the object also goes to the next ring's owners (not counted: they
 * are not replicas yet, and the move brings them everything older).
 *
 * A request ends exactly once: at R or W good replies, when the rest can
 * no longer make R or W (KV_EQUORUM), at its deadline (KV_ETIMEDOUT) or
 * when the node stops (KV_ECLOSED). It is freed once it has ended, its
 * timer is closed and no call it made is still out.
 */
#include "replica/dvv.h"
#include "replica/node_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct req {
    rep_node *node;
    req *prev, *next;
    conn *client;
    uint64_t client_id;
    uint16_t type; /* REP_GET or REP_PUT */
    uint8_t n, need;
    int nrep, oks, fails, inflight;
    int first_error;
    int forward_from; /* put forwarded: next preflist index to try */
    uint32_t timeout_ms;
    bool done, sync, nosync, tombstone, have_obj;
    bool lww;     /* the key's bucket is last-writer-wins */
    bool merging; /* get: objects are being merged on the pool */
    struct pend *pending, *pending_tail; /* replies waiting for the merge */
    kv_buf key, ctx, value;
    kv_buf obj;    /* get: objects merged so far; put: the new object */
    kv_buf newctx; /* put: the new object's context, when it has one
                    * sibling (the put reply hands it back) */
    uint64_t started;
    uv_timer_t timer; /* the deadline; for a get first the hedge */
    bool timer_open;
    uint64_t asked[REP_MAX_N]; /* get: replicas asked, by name hash */
    int nasked;
};

/* The coordinator's own copy: a job on the engine threads. */
typedef struct lwork {
    rep_job job;
    req *rq;
    kv_buf ctx; /* update: the new context (rep_store_op.ctx_out) */
} lwork;

static const char *op_name(const req *rq) {
    return rq->type == REP_GET ? "get" : rq->tombstone ? "delete" : "put";
}

/* ---- lifetime ---- */

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
    kv_buf_release(&rq->obj);
    kv_buf_release(&rq->newctx);
    if (rq->client) rep__conn_unref(rq->client);
    kv_free(rq);
}

static void on_timer_closed(uv_handle_t *h) {
    req *rq = h->data;
    rq->timer_open = false;
    if (rq->done && rq->inflight == 0) req_free_now(rq);
}

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
    rep_msg m = {.id = rq->client_id, .status = code};
    if (rq->type == REP_GET) {
        m.type = REP_GET_REPLY;
        if (code == 0) m.value = kv_buf_slice(&rq->obj);
    } else {
        m.type = REP_PUT_REPLY;
        if (code == 0) m.ctx = kv_buf_slice(&rq->newctx);
    }
    rep__conn_send(rq->client, &m);
    req_maybe_free(rq);
}

static void reap_later(req *rq);

/* One replica's answer: finish when enough were good, or when the rest
 * can no longer make enough. */
static void req_count(req *rq, int rc) {
    if (rc == 0 || (rq->type == REP_GET && rc == KV_ENOTFOUND)) {
        rq->oks++;
        if (rq->tombstone && rq->oks == rq->nrep) reap_later(rq);
    } else {
        rq->fails++;
        if (!rq->first_error) rq->first_error = rc;
    }
    if (rq->done) return;
    if (rq->oks >= rq->need) {
        req_finish(rq, rq->type == REP_GET && !rq->have_obj ? KV_ENOTFOUND : 0);
    } else if (rq->nrep - rq->fails < rq->need) {
        kv_warn(MOD, "%s of '%.*s': %d of %d replicas failed (first: %s)",
                op_name(rq), (int)KV_MIN(rq->key.len, 200),
                (const char *)rq->key.ptr, rq->fails, rq->nrep,
                kv_strerror(rq->first_error));
        req_finish(rq, KV_EQUORUM);
    }
}

static void on_deadline(uv_timer_t *t) {
    req *rq = t->data;
    kv_warn(MOD,
            "%s of '%.*s': deadline of %u ms passed with %d of %d "
            "replies good",
            op_name(rq), (int)KV_MIN(rq->key.len, 200),
            (const char *)rq->key.ptr, rq->timeout_ms, rq->oks, rq->need);
    req_finish(rq, KV_ETIMEDOUT);
}

void rep__coord_stop_all(rep_node *n) {
    while (n->reqs) req_finish(n->reqs, KV_ECLOSED);
}

/* ---- get ---- */

/* Merge one replica's object into the answer, here on the loop. */
static int take_object(req *rq, kv_slice obj) {
    if (!rq->have_obj) {
        int rc = kv_buf_set(&rq->obj, obj.ptr, obj.len);
        rq->have_obj = rc == 0;
        return rc;
    }
    /* Replicas that agree send the same bytes: nothing to merge. */
    if (obj.len == rq->obj.len && memcmp(obj.ptr, rq->obj.ptr, obj.len) == 0)
        return 0;
    kv_buf m = KV_BUF_INIT;
    int rc = rep_obj_merge(kv_buf_slice(&rq->obj), obj, rq->lww, &m);
    if (rc == 0) {
        kv_buf_release(&rq->obj);
        rq->obj = m;
    } else {
        kv_buf_release(&m);
        kv_warn(MOD, "get of '%.*s': a replica's object: %s",
                (int)KV_MIN(rq->key.len, 200), (const char *)rq->key.ptr,
                kv_strerror(rc));
    }
    return rc;
}

/* Objects up to this size are merged on the loop; larger ones (decoding
 * and re-encoding up to 64 MiB) on the pool, one merge at a time per
 * request, with the replies that arrive meanwhile waiting their turn (and
 * counted only once merged, so the answer never misses one). */
#define MERGE_ON_LOOP (256u << 10)

typedef struct pend {
    struct pend *next;
    int rc; /* 0: obj to merge; KV_ENOTFOUND: nothing */
    kv_buf obj;
} pend;

typedef struct mwork {
    req *rq;
    kv_buf acc;
    pend *list;
    int rc;
} mwork;

static void merge_run(void *arg) {
    mwork *w = arg;
    for (pend *p = w->list; p && w->rc == 0; p = p->next) {
        if (p->rc) continue;
        if (w->acc.len == 0) {
            w->acc = p->obj;
            kv_buf_init(&p->obj);
            continue;
        }
        kv_buf m = KV_BUF_INIT;
        w->rc = rep_obj_merge(kv_buf_slice(&w->acc), kv_buf_slice(&p->obj),
                              w->rq->lww, &m);
        if (w->rc == 0) {
            kv_buf_release(&w->acc);
            w->acc = m;
        } else {
            kv_buf_release(&m);
        }
    }
}

static void start_merge(req *rq);

static void merge_done(void *arg, int status) {
    mwork *w = arg;
    req *rq = w->rq;
    int rc = status ? KV_ECLOSED : w->rc;
    rq->merging = false;
    if (rc)
        kv_warn(MOD, "get of '%.*s': merging replicas' objects: %s",
                (int)KV_MIN(rq->key.len, 200), (const char *)rq->key.ptr,
                kv_strerror(rc));
    kv_buf_release(&rq->obj);
    rq->obj = w->acc;
    rq->have_obj = rq->obj.len > 0;
    while (w->list) {
        pend *p = w->list;
        w->list = p->next;
        rq->inflight--;
        req_count(rq, p->rc ? p->rc : rc);
        kv_buf_release(&p->obj);
        kv_free(p);
    }
    kv_free(w);
    if (rq->pending) start_merge(rq);
    req_maybe_free(rq);
}

/* Merge rq's object and its pending replies on the pool. */
static void start_merge(req *rq) {
    mwork *w = kv_calloc(1, sizeof *w);
    if (w) {
        w->rq = rq;
        w->acc = rq->obj;
        w->list = rq->pending;
        kv_buf_init(&rq->newctx);
        kv_buf_init(&rq->obj);
        rq->pending = rq->pending_tail = NULL;
        rq->merging = true;
        if (rep__work(rq->node, merge_run, merge_done, w) == 0) return;
        /* No pool: merge here after all. */
        rq->merging = false;
        rq->obj = w->acc;
        rq->pending = w->list;
        kv_free(w);
    }
    while (rq->pending) {
        pend *p = rq->pending;
        rq->pending = p->next;
        rq->inflight--;
        req_count(rq, p->rc ? p->rc : take_object(rq, kv_buf_slice(&p->obj)));
        kv_buf_release(&p->obj);
        kv_free(p);
    }
    rq->pending_tail = NULL;
}

static bool ask_replica(req *rq);

/* A replica's answer to a get: rc, and its object when rc is 0. */
static void got_reply(req *rq, int rc, kv_slice obj) {
    bool good = rc == 0 || rc == KV_ENOTFOUND;
    bool big =
        rc == 0 && (obj.len > MERGE_ON_LOOP || rq->obj.len > MERGE_ON_LOOP);
    if (rq->done || !good || (!rq->merging && !big)) {
        if (rc == 0 && !rq->done) rc = take_object(rq, obj);
        req_count(rq, rc);
        if (!good && !rq->done) ask_replica(rq); /* one more instead */
        return;
    }
    pend *p = kv_calloc(1, sizeof *p);
    if (!p || (rc == 0 && kv_buf_set(&p->obj, obj.ptr, obj.len))) {
        kv_free(p);
        req_count(rq, -ENOMEM);
        return;
    }
    p->rc = rc;
    *(rq->pending ? &rq->pending_tail->next : &rq->pending) = p;
    rq->pending_tail = p;
    rq->inflight++;
    if (!rq->merging) start_merge(rq);
}

static void local_get_done(rep_job *j) {
    lwork *w = (lwork *)j;
    req *rq = w->rq;
    rq->inflight--;
    got_reply(rq, j->op.rc, kv_buf_slice(&j->out));
    kv_buf_release(&j->out);
    kv_free(w);
    req_maybe_free(rq);
}

static void on_rget(void *arg, int status, const rep_msg *reply) {
    req *rq = arg;
    rq->inflight--;
    got_reply(rq, status ? status : reply->status,
              status ? kv_slice_make("", 0) : reply->value);
    req_maybe_free(rq);
}

/* ---- put ---- */

static void on_rput(void *arg, int status, const rep_msg *reply) {
    req *rq = arg;
    rq->inflight--;
    req_count(rq, status ? status : reply->status);
    req_maybe_free(rq);
}

/* A next owner's answer: not counted (see the top of the file). */
static void on_rput_next(void *arg, int status, const rep_msg *reply) {
    req *rq = arg;
    rq->inflight--;
    int rc = status ? status : reply->status;
    if (rc)
        kv_info(MOD, "put of '%.*s' to a next owner: %s",
                (int)KV_MIN(rq->key.len, 200), (const char *)rq->key.ptr,
                kv_strerror(rc));
    req_maybe_free(rq);
}

static void send_rput(req *rq, kv_slice name, kv_slice addr, rep__peer_cb cb) {
    rep_msg m = {.type = REP_RPUT,
                 .flags = (rq->sync ? REP_PUT_SYNC : 0) |
                          (rq->nosync ? REP_PUT_NOSYNC : 0) |
                          (rq->lww ? REP_PUT_LWW : 0),
                 .key = kv_buf_slice(&rq->key),
                 .value = kv_buf_slice(&rq->obj)};
    rq->inflight++;
    int rc = rep__peer_call(rq->node, name, addr, &m, cb, rq);
    if (rc) {
        rq->inflight--;
        if (cb == on_rput) req_count(rq, rc);
    }
}

static void local_update_done(rep_job *j) {
    lwork *w = (lwork *)j;
    req *rq = w->rq;
    rep_node *n = rq->node;
    rq->inflight--;
    int rc = j->op.rc;
    kv_buf_release(&rq->obj);
    rq->obj = j->out;
    kv_buf_release(&rq->newctx);
    rq->newctx = w->ctx;
    kv_free(w);
    if (rc) {
        /* Without the new object no other replica can be written. */
        kv_warn(MOD, "%s of '%.*s': local update: %s", op_name(rq),
                (int)KV_MIN(rq->key.len, 200), (const char *)rq->key.ptr,
                kv_strerror(rc));
        if (!rq->done) req_finish(rq, rc == KV_ECORRUPT ? rc : KV_EQUORUM);
        req_maybe_free(rq);
        return;
    }
    req_count(rq, 0);
    if (!n->stopping) {
        kv_slice names[REP_MAX_N], addrs[REP_MAX_N];
        kv_slice nnames[REP_MAX_N], naddrs[REP_MAX_N];
        int nnext = 0;
        int got =
            rep__member_preflist(n, ring_hash(kv_buf_slice(&rq->key)), rq->n,
                                 names, addrs, &nnext, nnames, naddrs);
        kv_slice self = kv_slice_str(n->name);
        for (int i = 0; i < got; i++) {
            if (kv_slice_eq(names[i], self)) continue;
            if (!rep__peer_up(n, names[i]))
                req_count(rq, KV_EQUORUM);
            else
                send_rput(rq, names[i], addrs[i], on_rput);
        }
        for (int i = 0; i < nnext; i++)
            if (!kv_slice_eq(nnames[i], self) && rep__peer_up(n, nnames[i]))
                send_rput(rq, nnames[i], naddrs[i], on_rput_next);
    }
    req_maybe_free(rq);
}

static void on_forwarded(void *arg, int status, const rep_msg *reply);

/* Forward a put to the first replica from rq->forward_from on that is up
 * and takes the call. */
static void forward_put(req *rq) {
    rep_node *n = rq->node;
    kv_slice names[REP_MAX_N], addrs[REP_MAX_N], nn[REP_MAX_N], na[REP_MAX_N];
    int nnext;
    int got = rep__member_preflist(n, ring_hash(kv_buf_slice(&rq->key)), rq->n,
                                   names, addrs, &nnext, nn, na);
    uint64_t spent = (uv_now(&n->loop) - rq->started);
    uint32_t left =
        spent < rq->timeout_ms ? rq->timeout_ms - (uint32_t)spent : 1;
    for (; rq->forward_from < got; rq->forward_from++) {
        int i = rq->forward_from;
        if (!rep__peer_up(n, names[i])) continue;
        rep_msg m = {.type = REP_PUT,
                     .n = rq->n,
                     .w = rq->need,
                     .r = 1,
                     .flags = REP_PUT_FORWARDED |
                              (rq->sync ? REP_PUT_SYNC : 0) |
                              (rq->nosync ? REP_PUT_NOSYNC : 0) |
                              (rq->tombstone ? REP_PUT_DELETE : 0),
                     .timeout_ms = left,
                     .key = kv_buf_slice(&rq->key),
                     .ctx = kv_buf_slice(&rq->ctx),
                     .value = kv_buf_slice(&rq->value)};
        rq->inflight++;
        if (rep__peer_call(n, names[i], addrs[i], &m, on_forwarded, rq) == 0) {
            rq->forward_from++;
            return;
        }
        rq->inflight--;
    }
    kv_warn(MOD, "%s of '%.*s': no replica to forward to is up", op_name(rq),
            (int)KV_MIN(rq->key.len, 200), (const char *)rq->key.ptr);
    req_finish(rq, KV_EQUORUM);
}

static void on_forwarded(void *arg, int status, const rep_msg *reply) {
    req *rq = arg;
    rq->inflight--;
    if (!rq->done) {
        if (status == 0 && reply->status == 0 &&
            kv_buf_set(&rq->newctx, reply->ctx.ptr, reply->ctx.len) != 0)
            kv_buf_reset(&rq->newctx); /* no context: the client reads */
        if (status == 0)
            req_finish(rq, reply->status);
        else if (!rq->node->stopping)
            forward_put(rq); /* that replica failed: the next one */
        else
            req_finish(rq, KV_ECLOSED);
    }
    req_maybe_free(rq);
}

/* ---- purging tombstones ----
 *
 * A delete leaves a tombstone, which a read merges over any older copy of
 * the key; purged too early, an older copy on some replica that missed
 * the delete would bring the key back. So a tombstone is purged (reaped)
 * only when all N replicas acknowledged it, after a grace period
 * (tombstone_grace_ms), if the ring is still the one the delete was
 * placed by (no move since, none in progress), and on each replica only if
 * what it stores is still exactly that tombstone (rep_store_reap): a write
 * since then keeps it. A delete that some replica missed keeps its
 * tombstone (repair, in a later issue, completes it). */

typedef struct reap {
    struct reap *next;
    uint64_t due, ring_version;
    uint8_t n;
    kv_buf key, obj;
} reap;

#define MAX_REAPS 65536

/* Whether every sibling of the encoded object is a tombstone. */
static bool all_tombstones(kv_slice obj) {
    dvv_set *s;
    if (dvv_set_decode(obj, &s)) return false;
    bool all = dvv_set_siblings(s) > 0;
    for (size_t i = 0; all && i < dvv_set_siblings(s); i++)
        all = dvv_set_sibling(s, i).value.flags & DVV_TOMBSTONE;
    dvv_set_free(s);
    return all;
}

static void reap_later(req *rq) {
    rep_node *n = rq->node;
    /* A delete with N below n_val leaves copies it never reached: keep its
     * tombstone (purging it could bring those copies back). */
    if (n->stopping || n->nreaps >= MAX_REAPS || !rq->obj.len ||
        rq->n != n->opt.n_val || !all_tombstones(kv_buf_slice(&rq->obj)))
        return;
    reap *r = kv_calloc(1, sizeof *r);
    if (!r) return;
    kv_buf_init(&r->key);
    kv_buf_init(&r->obj);
    if (kv_buf_set(&r->key, rq->key.ptr, rq->key.len) ||
        kv_buf_set(&r->obj, rq->obj.ptr, rq->obj.len)) {
        kv_buf_release(&r->key);
        kv_buf_release(&r->obj);
        kv_free(r);
        return;
    }
    r->n = rq->n;
    r->ring_version = ring_cluster_version(n->state);
    r->due = uv_now(&n->loop) + n->opt.tombstone_grace_ms;
    /* Due times only grow: append. */
    *(n->reaps ? &n->reaps_tail->next : &n->reaps) = r;
    n->reaps_tail = r;
    n->nreaps++;
}

static void reap_free(reap *r) {
    kv_buf_release(&r->key);
    kv_buf_release(&r->obj);
    kv_free(r);
}

typedef struct reapwork {
    rep_node *node;
    reap *r;
    bool reaped;
    int rc;
} reapwork;

static void reap_run(void *arg) {
    reapwork *w = arg;
    w->rc = rep_store_reap(w->node->store, kv_buf_slice(&w->r->key),
                           kv_buf_slice(&w->r->obj), &w->reaped);
}

static void reap_done(void *arg, int status) {
    reapwork *w = arg;
    if (status == 0 && w->rc)
        kv_warn(MOD, "purging the tombstone of '%.*s': %s",
                (int)KV_MIN(w->r->key.len, 200), (const char *)w->r->key.ptr,
                kv_strerror(w->rc));
    reap_free(w->r);
    kv_free(w);
}

static void on_reaped(void *arg, int status, const rep_msg *reply) {
    (void)arg;
    int rc = status ? status : reply->status;
    if (rc)
        kv_info(MOD, "a replica did not purge a tombstone: %s",
                kv_strerror(rc));
}

/* Send the purge of r to its replicas; r is consumed. */
static void reap_now(rep_node *n, reap *r) {
    const ring_cluster *s = n->state;
    if (ring_cluster_version(s) != r->ring_version || ring_cluster_next(s)) {
        reap_free(r); /* placement moved: keep the tombstone */
        return;
    }
    kv_slice names[REP_MAX_N], addrs[REP_MAX_N], nn[REP_MAX_N], na[REP_MAX_N];
    int nnext;
    int got = rep__member_preflist(n, ring_hash(kv_buf_slice(&r->key)), r->n,
                                   names, addrs, &nnext, nn, na);
    bool local = false;
    for (int i = 0; i < got; i++) {
        if (kv_slice_eq(names[i], kv_slice_str(n->name))) {
            local = true;
            continue;
        }
        rep_msg m = {.type = REP_REAP,
                     .key = kv_buf_slice(&r->key),
                     .value = kv_buf_slice(&r->obj)};
        rep__peer_call(n, names[i], addrs[i], &m, on_reaped, NULL);
    }
    reapwork *w = local ? kv_calloc(1, sizeof *w) : NULL;
    if (w) {
        w->node = n;
        w->r = r;
        if (rep__work(n, reap_run, reap_done, w) == 0) return;
        kv_free(w);
    }
    reap_free(r);
}

void rep__coord_tick(rep_node *n) {
    uint64_t now = uv_now(&n->loop);
    while (n->reaps && n->reaps->due <= now && !n->stopping) {
        reap *r = n->reaps;
        n->reaps = r->next;
        if (!n->reaps) n->reaps_tail = NULL;
        n->nreaps--;
        reap_now(n, r);
    }
}

void rep__coord_free(rep_node *n) {
    while (n->reaps) {
        reap *r = n->reaps;
        n->reaps = r->next;
        reap_free(r);
    }
    n->reaps_tail = NULL;
    n->nreaps = 0;
}

/* ---- which replicas a get asks ---- */

static void local_call(req *rq);

/* Ask one more replica of rq's key for its copy, the coordinator's own
 * first, then in preference-list order; a replica the failure detector
 * calls down counts as failed and the next one is asked. false when
 * every replica was asked (or the request ended). */
static bool ask_replica_of(req *rq, const kv_slice *names,
                           const kv_slice *addrs, int got) {
    rep_node *n = rq->node;
    kv_slice self = kv_slice_str(n->name);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < got && !rq->done; i++) {
            bool mine = kv_slice_eq(names[i], self);
            if (mine != (pass == 0)) continue;
            uint64_t h = kv_hash64(names[i].ptr, names[i].len, 0);
            bool seen = false;
            for (int k = 0; k < rq->nasked; k++) seen |= rq->asked[k] == h;
            if (seen || rq->nasked == REP_MAX_N) continue;
            rq->asked[rq->nasked++] = h;
            if (mine) {
                local_call(rq);
                return true;
            }
            if (!rep__peer_up(n, names[i])) {
                req_count(rq, KV_EQUORUM);
                continue;
            }
            rep_msg g = {.type = REP_RGET, .key = kv_buf_slice(&rq->key)};
            rq->inflight++;
            int rc = rep__peer_call(n, names[i], addrs[i], &g, on_rget, rq);
            if (rc == 0) return true;
            rq->inflight--;
            req_count(rq, rc);
        }
    }
    return false;
}

/* ask_replica_of with the key's preference list as the ring has it now
 * (a failure or the hedge: the ring may have changed since the start). */
static bool ask_replica(req *rq) {
    kv_slice names[REP_MAX_N], addrs[REP_MAX_N], nn[REP_MAX_N], na[REP_MAX_N];
    int nnext;
    int got = rep__member_preflist(rq->node, ring_hash(kv_buf_slice(&rq->key)),
                                   rq->n, names, addrs, &nnext, nn, na);
    return ask_replica_of(rq, names, addrs, got);
}

/* The hedge delay passed without R answers: ask every other replica, and
 * wait for the rest of the deadline. */
static void on_hedge(uv_timer_t *t) {
    req *rq = t->data;
    while (!rq->done && ask_replica(rq)) {
    }
    if (rq->done) return;
    uint64_t spent = uv_now(&rq->node->loop) - rq->started;
    uint64_t left = spent < rq->timeout_ms ? rq->timeout_ms - spent : 0;
    uv_timer_start(&rq->timer, on_deadline, left, 0);
}

/* ---- start ---- */

static void reply_now(conn *c, const rep_msg *m, int code) {
    rep_msg e = {.type = m->type == REP_GET ? REP_GET_REPLY : REP_PUT_REPLY,
                 .id = m->id,
                 .status = code};
    rep__conn_send(c, &e);
}

/* Read (get) or update (put) the coordinator's own copy of rq's key. */
static void local_call(req *rq) {
    rep_node *n = rq->node;
    lwork *w = kv_calloc(1, sizeof *w);
    if (!w) {
        if (rq->type == REP_PUT)
            req_finish(rq, -ENOMEM);
        else
            req_count(rq, -ENOMEM);
        return;
    }
    w->rq = rq;
    kv_buf_init(&w->job.out);
    rep_store_op *op = &w->job.op;
    op->key = kv_buf_slice(&rq->key);
    if (rq->type == REP_GET) {
        op->kind = REP_JOB_GET;
        w->job.done = local_get_done;
    } else {
        op->kind = REP_STORE_OP_UPDATE;
        kv_buf_init(&w->ctx);
        op->ctx_out = &w->ctx;
        op->ctx = kv_buf_slice(&rq->ctx);
        op->value = kv_buf_slice(&rq->value);
        op->flags = (rq->tombstone ? REP_STORE_TOMBSTONE : 0) |
                    (rq->sync ? REP_STORE_SYNC : 0) |
                    (rq->nosync ? REP_STORE_NOSYNC : 0) |
                    (rq->lww ? REP_STORE_LWW : 0);
        op->actor = n->actor;
        op->now_us = rep__now_us(n);
        w->job.done = local_update_done;
    }
    rq->inflight++;
    int rc = rep__exec(n, &w->job);
    if (rc) {
        rq->inflight--;
        kv_free(w);
        /* A put without its new object cannot write any other replica. */
        if (rq->type == REP_PUT)
            req_finish(rq, rc);
        else
            req_count(rq, rc);
    }
}

void rep__coord_start(conn *c, const rep_msg *m) {
    rep_node *n = c->node;
    /* Defaults: N = n_val, R and W a majority of N. */
    uint8_t nrep = m->n ? m->n : n->opt.n_val;
    uint8_t r = m->r ? m->r : (uint8_t)(nrep / 2 + 1);
    uint8_t w = m->w ? m->w : (uint8_t)(nrep / 2 + 1);
    if (nrep > n->opt.n_val || r > nrep || w > nrep || m->key.len == 0) {
        reply_now(c, m, -EINVAL);
        return;
    }
    if (!ring_cluster_ring(n->state)) {
        /* A joining node that has not heard from its cluster yet. */
        reply_now(c, m, -EAGAIN);
        return;
    }
    /* A context that does not decode is the client's error, answered
     * before any replica is asked. */
    if (m->type == REP_PUT && m->ctx.len) {
        dvv_ctx *cx;
        int rc = dvv_ctx_decode(m->ctx, &cx);
        dvv_ctx_free(cx);
        if (rc) {
            reply_now(c, m, rc == -ENOMEM ? rc : KV_EPROTO);
            return;
        }
    }
    req *rq = kv_calloc(1, sizeof *rq);
    if (!rq) {
        reply_now(c, m, -ENOMEM);
        return;
    }
    rq->node = n;
    rq->client = c;
    rep__conn_ref(c);
    rq->client_id = m->id;
    rq->type = m->type;
    rq->n = nrep;
    rq->sync = (m->flags & REP_PUT_SYNC) != 0;
    rq->nosync = !rq->sync && (m->flags & REP_PUT_NOSYNC) != 0;
    rq->tombstone = (m->flags & REP_PUT_DELETE) != 0;
    rq->lww = rep__bucket_lww(n, m->key);
    rq->timeout_ms = m->timeout_ms ? m->timeout_ms : n->opt.timeout_ms;
    rq->started = uv_now(&n->loop);
    kv_buf_init(&rq->key);
    kv_buf_init(&rq->ctx);
    kv_buf_init(&rq->value);
    kv_buf_init(&rq->obj);
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
    uv_timer_start(&rq->timer, on_deadline, rq->timeout_ms, 0);
    /* The preference list, cut to the members the ring has: a cluster
     * smaller than N stores fewer copies and says so in its quorum. */
    kv_slice names[REP_MAX_N], addrs[REP_MAX_N], nn[REP_MAX_N], na[REP_MAX_N];
    int nnext;
    rq->nrep = rep__member_preflist(n, ring_hash(m->key), nrep, names, addrs,
                                    &nnext, nn, na);
    rq->need = (uint8_t)KV_MIN((int)(m->type == REP_GET ? r : w), rq->nrep);
    kv_slice self = kv_slice_str(n->name);
    int me = -1;
    for (int i = 0; i < rq->nrep; i++)
        if (kv_slice_eq(names[i], self)) me = i;
    if (m->type == REP_PUT) {
        if (me < 0 && (m->flags & REP_PUT_FORWARDED)) {
            /* Forwarded by a node whose ring says this one is a replica
             * while this one's ring says not: their views differ (a move
             * just ended); never forward twice. */
            req_finish(rq, -EAGAIN);
            return;
        }
        if (me < 0) {
            forward_put(rq);
            return;
        }
        local_call(rq);
        return;
    }
    /* A get asks R replicas, and the rest only when one fails or the
     * hedge delay passes (docs/protocol.md, "The coordinator"). */
    uint32_t hedge = n->opt.read_hedge_ms;
    int ask = hedge && hedge < rq->timeout_ms ? rq->need : rq->nrep;
    for (int i = 0; i < ask && !rq->done; i++)
        if (!ask_replica_of(rq, names, addrs, rq->nrep)) break;
    if (!rq->done && ask < rq->nrep) {
        uv_timer_stop(&rq->timer);
        uv_timer_start(&rq->timer, on_hedge, hedge, 0);
    }
}
