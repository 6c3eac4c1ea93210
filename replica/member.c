/*
 * Membership on a node: the cluster state (ring/ring.h, "cluster state")
 * kept, persisted and gossiped; the claimant's steps when this node is the
 * claimant; moving data when ownership moves, and dropping it once the
 * move is over. See node_int.h; the protocol side is docs/protocol.md,
 * the reasoning docs/ARCHITECTURE.md ("Membership").
 *
 * Every tick (gossip_ms): heartbeats (peer.c); one push-pull gossip
 * exchange with a random member (or a seed, while this node knows no
 * ring); this node's own entry put right if the state has it wrong; the
 * claimant's step; the move, if one is in progress and this node has not
 * finished its part; the drop of data this node no longer owns, once per
 * serving ring.
 *
 * Moving: for every partition whose owners (the first n_val members of
 * its preference list) change from the serving ring to the next one, and
 * which this node holds a copy of, the node sends each of its objects of
 * that partition to every owner that is new, as a synced replica-put. A
 * partition is done when every object was acknowledged; the whole move is
 * done when every partition is, and only then does the node report done
 * for the move's version. Old owners drop their copies only after the
 * claimant switched rings, which needs every member's done: so a copy is
 * dropped only after its new owners confirmed they hold it.
 */
#include "replica/node_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOVE_ITEMS 256        /* objects per scan */
#define MOVE_BYTES (4u << 20) /* bytes per scan */
#define STATE_FILE "CLUSTER"

struct mover {
    rep_node *node;
    ring_cluster *state; /* the state whose move this is (a ref) */
    uint64_t version;    /* its next_version */
    uint32_t part;       /* partition being moved */
    int ntargets;
    char targets[REP_MAX_N][RING_MAX_NAME + 1];
    char addrs[REP_MAX_N][RING_MAX_ADDR + 1];
    kv_buf cursor; /* last engine key sent of this partition */
    bool more;     /* the partition has more after the cursor */
    kv_buf batch;  /* scanned objects: (key, object) length-prefixed */
    int rc;        /* of the scan */
    int inflight, failed;
    bool busy;         /* a scan or calls are out */
    bool sending;      /* scan_done is making the calls */
    bool finished;     /* the scan found nothing more to move */
    uint64_t moved;    /* objects sent and acknowledged */
    uint64_t retry_at; /* uv_now after which a failed move resumes */
};

/* ---- state ---- */

static void persist(rep_node *n);

static void log_change(rep_node *n, const ring_cluster *old,
                       const ring_cluster *s) {
    const ring *r = ring_cluster_ring(s), *nx = ring_cluster_next(s);
    if (!r) return;
    bool ring_changed =
        !old || ring_cluster_version(old) != ring_cluster_version(s);
    if (!ring_changed) return;
    if (nx)
        kv_info(MOD,
                "'%s': ring version %" PRIu64 ": %u members serving, "
                "moving to %u",
                n->name, ring_cluster_version(s), ring_members(r),
                ring_members(nx));
    else
        kv_info(MOD, "'%s': ring version %" PRIu64 ": %u members", n->name,
                ring_cluster_version(s), ring_members(r));
}

/* Make s (owned) the node's state if it differs. */
static void set_state(rep_node *n, ring_cluster *s) {
    if (ring_cluster_equal(s, n->state)) {
        ring_cluster_unref(s);
        return;
    }
    ring_cluster *old = n->state;
    n->state = s;
    log_change(n, old, s);
    ring_cluster_unref(old);
    persist(n);
}

static int merge_in(rep_node *n, const ring_cluster *o) {
    ring_cluster *m;
    int rc = ring_cluster_merge(n->state, o, &m);
    if (rc == 0) set_state(n, m);
    return rc;
}

typedef struct pwork {
    rep_node *node;
    kv_buf bytes;
    int rc;
} pwork;

static void persist_run(void *arg) {
    pwork *w = arg;
    w->rc =
        rep__write_atomic(w->node->dir, STATE_FILE, w->bytes.ptr, w->bytes.len);
}

static void persist_done(void *arg, int status) {
    pwork *w = arg;
    rep_node *n = w->node;
    if (status == 0 && w->rc)
        kv_error(MOD, "cannot save '%s/%s': %s", n->dir, STATE_FILE,
                 kv_strerror(w->rc));
    kv_buf_release(&w->bytes);
    kv_free(w);
    n->persisting = false;
    if (n->persist_again && !n->stopping) {
        n->persist_again = false;
        persist(n);
    }
}

/* Save the state on the pool; one write at a time, the latest last. */
static void persist(rep_node *n) {
    if (n->persisting) {
        n->persist_again = true;
        return;
    }
    pwork *w = kv_calloc(1, sizeof *w);
    if (!w) return;
    w->node = n;
    kv_buf_init(&w->bytes);
    if (ring_cluster_encode(n->state, &w->bytes) ||
        rep__work(n, persist_run, persist_done, w)) {
        kv_buf_release(&w->bytes);
        kv_free(w);
        kv_error(MOD, "cannot save the cluster state: out of memory");
        return;
    }
    n->persisting = true;
}

static int read_file(const char *path, size_t max, kv_buf *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? KV_ENOTFOUND : -errno;
    int rc = kv_buf_reserve(out, max + 1);
    size_t got = rc ? 0 : fread(out->ptr, 1, max + 1, f);
    if (rc == 0 && ferror(f)) rc = -EIO;
    fclose(f);
    if (rc) return rc;
    if (got > max) return KV_ETOOLARGE;
    out->len = got;
    return 0;
}

static int split_seeds(rep_node *n) {
    const char *p = n->opt.join;
    if (!p || !*p) return 0;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        struct sockaddr_in sa;
        char one[RING_MAX_ADDR + 1];
        if (len == 0 || len > RING_MAX_ADDR) goto bad;
        memcpy(one, p, len);
        one[len] = '\0';
        if (rep_parse_addr(one, &sa)) goto bad;
        char **s = kv_realloc(n->seeds, (size_t)(n->nseeds + 1) * sizeof *s);
        if (!s) return -ENOMEM;
        n->seeds = s;
        if (!(s[n->nseeds] = kv_strdup(one))) return -ENOMEM;
        n->nseeds++;
        p += len;
        if (*p == ',') p++;
    }
    return 0;
bad:
    kv_error(MOD, "bad --join address in '%s' (want HOST:PORT,...)",
             n->opt.join);
    return -EINVAL;
}

int rep__member_open(rep_node *n) {
    int rc = split_seeds(n);
    if (rc) return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", n->dir, STATE_FILE);
    kv_buf b = KV_BUF_INIT;
    rc = read_file(path, 64u << 20, &b);
    if (rc == 0) {
        rc = ring_cluster_decode(kv_buf_slice(&b), &n->state);
        if (rc) kv_error(MOD, "'%s': %s", path, kv_strerror(rc));
        if (rc == 0 && ring_cluster_find(n->state, kv_slice_str(n->name)) < 0) {
            kv_error(MOD, "'%s' does not name this node ('%s')", path, n->name);
            rc = KV_ECORRUPT;
        }
    } else if (rc == KV_ENOTFOUND) {
        /* A new node: it founds a cluster, or joins one through seeds. */
        rc = ring_cluster_new(n->nseeds ? 0 : n->opt.partitions,
                              kv_slice_str(n->name), kv_slice_str(n->addr),
                              n->incarnation, &n->state);
        kv_buf_reset(&b);
        if (rc == 0) rc = ring_cluster_encode(n->state, &b);
        if (rc == 0) rc = rep__write_atomic(n->dir, STATE_FILE, b.ptr, b.len);
    } else {
        kv_error(MOD, "cannot read '%s': %s", path, kv_strerror(rc));
    }
    kv_buf_release(&b);
    if (rc == 0 && !ring_cluster_ring(n->state) && !n->nseeds) {
        kv_error(MOD,
                 "'%s' has not joined its cluster yet: start it with "
                 "--join HOST:PORT",
                 n->dir);
        rc = -EINVAL;
    }
    return rc;
}

int rep__member_preflist(rep_node *n, uint64_t h, int want, kv_slice *names,
                         kv_slice *addrs, int *next_count, kv_slice *next_names,
                         kv_slice *next_addrs) {
    *next_count = 0;
    const ring_cluster *s = n->state;
    const ring *r = ring_cluster_ring(s), *nx = ring_cluster_next(s);
    if (!r) return 0;
    uint32_t idx[REP_MAX_N];
    want = KV_MIN(want, REP_MAX_N);
    int got = ring_preflist(r, h, want, idx);
    for (int i = 0; i < got; i++) {
        names[i] = ring_member(r, idx[i]);
        int at = ring_cluster_find(s, names[i]);
        addrs[i] = at >= 0 ? ring_cluster_member(s, (uint32_t)at).addr
                           : kv_slice_make("", 0);
    }
    if (!nx) return got;
    int ngot = ring_preflist(nx, h, want, idx);
    for (int i = 0; i < ngot; i++) {
        kv_slice name = ring_member(nx, idx[i]);
        bool serving = false;
        for (int j = 0; j < got && !serving; j++)
            serving = kv_slice_eq(names[j], name);
        if (serving) continue;
        int at = ring_cluster_find(s, name);
        if (at < 0) continue;
        next_names[*next_count] = name;
        next_addrs[*next_count] = ring_cluster_member(s, (uint32_t)at).addr;
        (*next_count)++;
    }
    return got;
}

bool rep__member_owns(rep_node *n, uint64_t h) {
    const ring *rings[2] = {ring_cluster_ring(n->state),
                            ring_cluster_next(n->state)};
    kv_slice self = kv_slice_str(n->name);
    for (int k = 0; k < 2; k++) {
        if (!rings[k]) continue;
        uint32_t idx[REP_MAX_N];
        int got =
            ring_preflist(rings[k], h, KV_MIN(n->opt.n_val, REP_MAX_N), idx);
        for (int i = 0; i < got; i++)
            if (kv_slice_eq(ring_member(rings[k], idx[i]), self)) return true;
    }
    return false;
}

/* ---- gossip ---- */

static void on_gossip_reply(void *arg, int status, const rep_msg *reply) {
    rep_node *n = arg;
    if (status || n->stopping) return;
    if (reply->status) {
        kv_warn(MOD, "gossip refused: %s", kv_strerror(reply->status));
        return;
    }
    ring_cluster *o;
    int rc = ring_cluster_decode(reply->value, &o);
    if (rc == 0) {
        rc = merge_in(n, o);
        ring_cluster_unref(o);
    }
    if (rc) kv_warn(MOD, "gossip reply: %s", kv_strerror(rc));
}

static void gossip_to(rep_node *n, kv_slice name, kv_slice addr) {
    kv_buf b = KV_BUF_INIT;
    if (ring_cluster_encode(n->state, &b) == 0) {
        rep_msg m = {.type = REP_GOSSIP, .value = kv_buf_slice(&b)};
        rep__peer_call(n, name, addr, &m, on_gossip_reply, n);
    }
    kv_buf_release(&b);
}

static uint64_t rnd(rep_node *n) {
    n->rand = n->rand * 6364136223846793005ull + 1442695040888963407ull;
    return n->rand >> 33;
}

static void gossip_round(rep_node *n) {
    const ring_cluster *s = n->state;
    if (!ring_cluster_ring(s) && n->nseeds) {
        /* A seed is known only by address: the peer layer takes a name
         * that no member can have ("@" is not a name character) and does
         * not check it against the seed's HELLO. */
        const char *seed = n->seeds[rnd(n) % (uint64_t)n->nseeds];
        char name[RING_MAX_ADDR + 2];
        snprintf(name, sizeof name, "@%s", seed);
        gossip_to(n, kv_slice_str(name), kv_slice_str(seed));
        return;
    }
    /* One member at random among all (reservoir sampling), preferring one
     * the failure detector sees up; a down one is picked only when no
     * member is up, so a member coming back is noticed. */
    uint32_t pick_up = UINT32_MAX, pick_any = UINT32_MAX, nup = 0, nany = 0;
    for (uint32_t i = 0; i < ring_cluster_members(s); i++) {
        ring_member_info m = ring_cluster_member(s, i);
        if (m.status == RING_REMOVED || m.addr.len == 0 ||
            kv_slice_eq(m.name, kv_slice_str(n->name)))
            continue;
        if (rnd(n) % ++nany == 0) pick_any = i;
        if (rep__peer_up(n, m.name) && rnd(n) % ++nup == 0) pick_up = i;
    }
    uint32_t pick = pick_up != UINT32_MAX ? pick_up : pick_any;
    if (pick == UINT32_MAX) return;
    ring_member_info m = ring_cluster_member(s, pick);
    gossip_to(n, m.name, m.addr);
}

void rep__member_gossip_in(conn *c, const rep_msg *m) {
    rep_node *n = c->node;
    int rc = 0;
    if (m->value.len) {
        ring_cluster *o;
        rc = ring_cluster_decode(m->value, &o);
        if (rc == 0) {
            rc = merge_in(n, o);
            if (rc == -EINVAL)
                kv_warn(MOD,
                        "gossip from '%s' is of another cluster "
                        "(another partition count)",
                        c->peer);
            ring_cluster_unref(o);
        }
    }
    rep_msg r = {.type = REP_GOSSIP_REPLY, .id = m->id, .status = rc};
    kv_buf b = KV_BUF_INIT;
    if (rc == 0 && (rc = ring_cluster_encode(n->state, &b)) != 0) r.status = rc;
    r.value = kv_buf_slice(&b);
    rep__conn_send(c, &r);
    kv_buf_release(&b);
}

/* ---- this node's entry ---- */

static ring_member_info self_info(rep_node *n) {
    int at = ring_cluster_find(n->state, kv_slice_str(n->name));
    KV_ASSERT(at >= 0);
    return ring_cluster_member(n->state, (uint32_t)at);
}

static int set_self(rep_node *n, bool leave, uint64_t done) {
    ring_cluster *s;
    int rc = ring_cluster_set_self(n->state, kv_slice_str(n->name),
                                   kv_slice_str(n->addr), n->incarnation, leave,
                                   done, &s);
    if (rc == 0) set_state(n, s);
    return rc;
}

/* Put this node's entry right: a restarted node may find its old address,
 * or (its directory wiped) another incarnation, in what it learned. */
static void check_self(rep_node *n) {
    ring_member_info me = self_info(n);
    if (me.incarnation != n->incarnation ||
        !kv_slice_eq(me.addr, kv_slice_str(n->addr)))
        set_self(n, me.incarnation == n->incarnation && me.leave,
                 me.incarnation == n->incarnation ? me.done : 0);
}

void rep__member_leave_in(conn *c, const rep_msg *m) {
    rep_node *n = c->node;
    int rc = 0;
    const ring *r = ring_cluster_ring(n->state);
    bool other = m->text.len && !kv_slice_eq(m->text, kv_slice_str(n->name));
    if (other && (m->flags & REP_LEAVE_FORCE)) {
        /* A member gone for good: removed on its behalf. */
        ring_cluster *s;
        rc = r && ring_members(r) > 1 && rep__peer_up(n, m->text)
                 ? -EBUSY /* it is alive: ask it to leave itself */
                 : ring_cluster_force_leave(n->state, m->text, &s);
        if (rc == 0) {
            kv_warn(MOD, "'%.*s' removed from the cluster on its behalf",
                    (int)m->text.len, (const char *)m->text.ptr);
            set_state(n, s);
        }
    } else if (other) {
        rc = -EINVAL; /* leave is asked of the leaving node itself */
    } else if (!r || (ring_members(r) == 1 &&
                      ring_find(r, kv_slice_str(n->name)) >= 0)) {
        rc = -EINVAL; /* the last member has nobody to give its data to */
    } else {
        ring_member_info me = self_info(n);
        if (!me.leave) {
            kv_info(MOD, "'%s' asked to leave the cluster", n->name);
            rc = set_self(n, true, me.done);
        }
    }
    rep_msg rep = {.type = REP_LEAVE_REPLY, .id = m->id, .status = rc};
    rep__conn_send(c, &rep);
}

/* ---- buckets ---- */

bool rep__bucket_lww(rep_node *n, kv_slice key) {
    const uint8_t *slash = memchr(key.ptr, '/', key.len);
    if (!slash) return false; /* the default bucket */
    kv_slice b = kv_slice_make(key.ptr, (size_t)(slash - key.ptr));
    return ring_cluster_bucket_flags(n->state, b) & RING_BUCKET_LWW;
}

void rep__member_bucket_in(conn *c, const rep_msg *m) {
    rep_node *n = c->node;
    ring_cluster *s;
    int rc = ring_cluster_set_bucket(n->state, m->text, m->flags, &s);
    if (rc == 0) {
        kv_info(MOD, "bucket '%.*s' set to %s", (int)m->text.len,
                (const char *)m->text.ptr,
                m->flags & RING_BUCKET_LWW ? "last-writer-wins" : "siblings");
        set_state(n, s);
    }
    rep_msg r = {.type = REP_BUCKET_REPLY, .id = m->id, .status = rc};
    rep__conn_send(c, &r);
}

/* ---- moving data ---- */

static void mover_free(mover *mv) {
    if (!mv) return;
    ring_cluster_unref(mv->state);
    kv_buf_release(&mv->cursor);
    kv_buf_release(&mv->batch);
    kv_free(mv);
}

/* Owners of partition p in r: the first n_val of its preference list. */
static int owners(const rep_node *n, const ring *r, uint32_t p, uint32_t *out) {
    uint64_t h = (uint64_t)p << (64 - __builtin_ctz(ring_partitions(r)));
    return ring_preflist(r, h, KV_MIN(n->opt.n_val, REP_MAX_N), out);
}

static bool has(const ring *r, const uint32_t *set, int k, kv_slice name) {
    for (int i = 0; i < k; i++)
        if (kv_slice_eq(ring_member(r, set[i]), name)) return true;
    return false;
}

/* From mv->part on, the next partition this node must move: sets its
 * targets and returns true, or false when none is left. */
static bool next_partition(mover *mv) {
    rep_node *n = mv->node;
    const ring *r = ring_cluster_ring(mv->state);
    const ring *nx = ring_cluster_next(mv->state);
    kv_slice self = kv_slice_str(n->name);
    for (; mv->part < ring_partitions(r); mv->part++) {
        uint32_t a[REP_MAX_N], b[REP_MAX_N];
        int na = owners(n, r, mv->part, a), nb = owners(n, nx, mv->part, b);
        if (!has(r, a, na, self)) continue;
        mv->ntargets = 0;
        for (int i = 0; i < nb; i++) {
            kv_slice t = ring_member(nx, b[i]);
            int at = ring_cluster_find(mv->state, t);
            if (has(r, a, na, t) || kv_slice_eq(t, self) || at < 0) continue;
            kv_slice addr = ring_cluster_member(mv->state, (uint32_t)at).addr;
            memcpy(mv->targets[mv->ntargets], t.ptr, t.len);
            mv->targets[mv->ntargets][t.len] = '\0';
            memcpy(mv->addrs[mv->ntargets], addr.ptr, addr.len);
            mv->addrs[mv->ntargets][addr.len] = '\0';
            mv->ntargets++;
        }
        if (mv->ntargets) return true;
    }
    return false;
}

static int collect(void *arg, kv_slice key, kv_slice obj) {
    mover *mv = arg;
    int rc = kv_buf_put_lenslice(&mv->batch, key);
    return rc ? rc : kv_buf_put_lenslice(&mv->batch, obj);
}

/* On the pool: from the cursor on, the next batch of objects to move;
 * partitions with nothing to move are passed over here, not one loop
 * round trip each. Only this function touches mv while it runs. */
static void scan_run(void *arg) {
    mover *mv = arg;
    const ring *r = ring_cluster_ring(mv->state);
    int shift = 64 - __builtin_ctz(ring_partitions(r));
    kv_buf_reset(&mv->batch);
    mv->rc = 0;
    mv->more = false;
    for (;;) {
        if (mv->cursor.len == 0 && !next_partition(mv)) {
            mv->finished = true;
            return;
        }
        uint64_t lo = (uint64_t)mv->part << shift;
        uint64_t hi = lo + ((UINT64_C(1) << shift) - 1);
        mv->rc = rep_store_scan(mv->node->store, lo, hi, &mv->cursor,
                                MOVE_ITEMS, MOVE_BYTES, collect, mv, &mv->more);
        if (mv->rc || mv->batch.len || mv->more) return;
        mv->part++; /* an empty partition */
        kv_buf_reset(&mv->cursor);
    }
}

static void move_step(mover *mv);
static void move_finish(mover *mv);

/* Every object of a batch was answered. */
static void batch_done(mover *mv) {
    mv->busy = false;
    if (mv->failed) {
        /* Resume this partition from its start on a later tick:
         * replica-put merges, so sending twice is harmless. */
        kv_buf_reset(&mv->cursor);
        mv->retry_at = uv_now(&mv->node->loop) + 1000;
        return;
    }
    if (!mv->more) {
        mv->part++;
        kv_buf_reset(&mv->cursor);
    }
    move_step(mv);
}

static void on_moved(void *arg, int status, const rep_msg *reply) {
    mover *mv = arg;
    int rc = status ? status : reply->status;
    mv->inflight--;
    if (rc) {
        if (!mv->failed)
            kv_warn(MOD, "moving partition %u: %s", mv->part, kv_strerror(rc));
        mv->failed++;
    } else {
        mv->moved++;
    }
    if (mv->inflight == 0 && !mv->sending) batch_done(mv);
}

static void scan_done(void *arg, int status) {
    mover *mv = arg;
    rep_node *n = mv->node;
    mv->busy = false;
    if (status || n->stopping) return;
    if (mv->rc) {
        kv_error(MOD, "moving partition %u: reading: %s", mv->part,
                 kv_strerror(mv->rc));
        kv_buf_reset(&mv->cursor);
        mv->retry_at = uv_now(&n->loop) + 1000;
        return;
    }
    if (mv->finished) {
        move_finish(mv);
        return;
    }
    mv->failed = 0;
    kv_reader rd = kv_reader_make(kv_buf_slice(&mv->batch));
    kv_slice key, obj;
    mv->busy = true;
    mv->sending = true; /* replies cannot end the batch while it goes out */
    while (kv_reader_left(&rd) &&
           kv_get_lenslice(&rd, REP_MAX_KEY, &key) == 0 &&
           kv_get_lenslice(&rd, REP_MAX_VALUE, &obj) == 0) {
        for (int t = 0; t < mv->ntargets; t++) {
            rep_msg m = {.type = REP_RPUT,
                         .flags = REP_PUT_SYNC |
                                  (rep__bucket_lww(n, key) ? REP_PUT_LWW : 0),
                         .key = key,
                         .value = obj};
            mv->inflight++;
            int rc =
                rep__peer_call(n, kv_slice_str(mv->targets[t]),
                               kv_slice_str(mv->addrs[t]), &m, on_moved, mv);
            if (rc) on_moved(mv, rc, NULL);
        }
    }
    mv->sending = false;
    if (mv->inflight == 0) batch_done(mv);
}

static void move_finish(mover *mv) {
    rep_node *n = mv->node;
    kv_info(MOD, "'%s': moved %" PRIu64 " objects for ring version %" PRIu64,
            n->name, mv->moved, mv->version);
    ring_member_info me = self_info(n);
    if (ring_cluster_next_version(n->state) == mv->version)
        set_self(n, me.leave, mv->version);
    n->mover = NULL;
    mover_free(mv);
}

/* Scan the next batch (scan_done sends it, or finishes the move). */
static void move_step(mover *mv) {
    rep_node *n = mv->node;
    if (n->stopping || mv->busy) return;
    mv->busy = true;
    if (rep__work(n, scan_run, scan_done, mv)) {
        mv->busy = false;
        mv->retry_at = uv_now(&n->loop) + 1000;
    }
}

static void move_tick(rep_node *n) {
    const ring_cluster *s = n->state;
    uint64_t v = ring_cluster_next_version(s);
    mover *mv = n->mover;
    if (mv && mv->version != v && !mv->busy) {
        /* The move this one was for is over or replaced. */
        n->mover = NULL;
        mover_free(mv);
        mv = NULL;
    }
    if (!v || self_info(n).done >= v) return;
    if (!mv) {
        if (!(mv = kv_calloc(1, sizeof *mv))) return;
        mv->node = n;
        mv->state = ring_cluster_ref(n->state);
        mv->version = v;
        kv_buf_init(&mv->cursor);
        kv_buf_init(&mv->batch);
        n->mover = mv;
        kv_info(MOD, "'%s': moving data for ring version %" PRIu64, n->name, v);
        /* The new owners refuse objects of a ring they have not heard of
         * (KV_ESTALE): tell every member now rather than wait for gossip. */
        for (uint32_t i = 0; i < ring_cluster_members(n->state); i++) {
            ring_member_info m = ring_cluster_member(n->state, i);
            if (m.status != RING_REMOVED && m.addr.len &&
                !kv_slice_eq(m.name, kv_slice_str(n->name)))
                gossip_to(n, m.name, m.addr);
        }
    }
    if (!mv->busy && uv_now(&n->loop) >= mv->retry_at) move_step(mv);
}

/* ---- dropping what this node no longer owns ---- */

typedef struct dwork {
    rep_node *node;
    ring_cluster *state;
    uint64_t dropped;
    int rc;
} dwork;

static void drop_run(void *arg) {
    dwork *w = arg;
    rep_node *n = w->node;
    const ring *r = ring_cluster_ring(w->state);
    int shift = 64 - __builtin_ctz(ring_partitions(r));
    kv_slice self = kv_slice_str(n->name);
    for (uint32_t p = 0; p < ring_partitions(r) && w->rc == 0; p++) {
        uint32_t a[REP_MAX_N];
        int na = owners(n, r, p, a);
        if (has(r, a, na, self)) continue;
        uint64_t lo = (uint64_t)p << shift;
        w->rc = rep_store_drop(n->store, lo, lo + ((UINT64_C(1) << shift) - 1),
                               &w->dropped);
    }
}

static void drop_done(void *arg, int status) {
    dwork *w = arg;
    rep_node *n = w->node;
    n->cleaning = false;
    if (status == 0 && w->rc == 0) {
        n->cleaned_version = ring_cluster_version(w->state);
        kv_info(MOD,
                "'%s': ring version %" PRIu64 ": dropped %" PRIu64
                " objects it no longer owns",
                n->name, n->cleaned_version, w->dropped);
    } else if (status == 0) {
        kv_error(MOD, "dropping moved objects: %s", kv_strerror(w->rc));
    }
    ring_cluster_unref(w->state);
    kv_free(w);
}

static void drop_tick(rep_node *n) {
    const ring_cluster *s = n->state;
    if (n->cleaning || !ring_cluster_ring(s) || ring_cluster_next(s) ||
        ring_cluster_version(s) == n->cleaned_version)
        return;
    dwork *w = kv_calloc(1, sizeof *w);
    if (!w) return;
    w->node = n;
    w->state = ring_cluster_ref(n->state);
    n->cleaning = true;
    if (rep__work(n, drop_run, drop_done, w)) {
        n->cleaning = false;
        ring_cluster_unref(w->state);
        kv_free(w);
    }
}

/* ---- the claimant ---- */

typedef struct cwork {
    rep_node *node;
    ring_cluster *state, *result;
    int rc;
} cwork;

static void claim_run(void *arg) {
    cwork *w = arg;
    w->rc = ring_cluster_claim(w->state, &w->result);
}

static void claim_done(void *arg, int status) {
    cwork *w = arg;
    rep_node *n = w->node;
    n->claiming = false;
    if (status == 0 && w->rc < 0)
        kv_error(MOD, "claimant step: %s", kv_strerror(w->rc));
    /* Merged, not set: the state may have moved on meanwhile, and the
     * step's higher ring version wins wherever it still applies. */
    if (status == 0 && w->result && !n->stopping) merge_in(n, w->result);
    ring_cluster_unref(w->result);
    ring_cluster_unref(w->state);
    kv_free(w);
}

static bool up(void *arg, kv_slice name) {
    return rep__peer_up(arg, name);
}

/* If this node is the claimant, take its step on the pool (a join
 * recomputes placement, which is too much work for the loop). */
static void claim_tick(rep_node *n) {
    int c = ring_cluster_claimant(n->state, up, n);
    if (n->claiming || c < 0 ||
        !kv_slice_eq(ring_cluster_member(n->state, (uint32_t)c).name,
                     kv_slice_str(n->name)))
        return;
    cwork *w = kv_calloc(1, sizeof *w);
    if (!w) return;
    w->node = n;
    w->state = ring_cluster_ref(n->state);
    n->claiming = true;
    if (rep__work(n, claim_run, claim_done, w)) {
        n->claiming = false;
        ring_cluster_unref(w->state);
        kv_free(w);
    }
}

/* ---- the tick ---- */

static void on_tick(uv_timer_t *t) {
    rep_node *n = t->data;
    if (n->stopping) return;
    check_self(n);
    rep__peer_tick(n);
    gossip_round(n);
    claim_tick(n);
    move_tick(n);
    drop_tick(n);
    rep__coord_tick(n);
    if (self_info(n).status == RING_REMOVED) {
        kv_info(MOD,
                "'%s' has left the cluster; stopping (its data "
                "directory can be removed)",
                n->name);
        rep_node_stop(n);
    }
}

void rep__member_start(rep_node *n) {
    n->rand = n->incarnation | 1;
    uv_timer_init(&n->loop, &n->tick);
    n->tick.data = n;
    n->ticking = true;
    uv_timer_start(&n->tick, on_tick, 1, n->opt.gossip_ms);
}

void rep__member_stop(rep_node *n) {
    if (n->ticking && !uv_is_closing((uv_handle_t *)&n->tick))
        uv_close((uv_handle_t *)&n->tick, NULL);
    if (n->mover && !n->mover->busy) {
        mover_free(n->mover);
        n->mover = NULL;
    }
}

/* After the loop ended. */
void rep__member_free(rep_node *n) {
    mover_free(n->mover);
    n->mover = NULL;
    ring_cluster_unref(n->state);
    n->state = NULL;
    for (int i = 0; i < n->nseeds; i++) kv_free(n->seeds[i]);
    kv_free(n->seeds);
    n->seeds = NULL;
    n->nseeds = 0;
}
