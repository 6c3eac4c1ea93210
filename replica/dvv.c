/*
 * Dotted version vector sets and their contexts (see dvv.h): update,
 * merge, prune, compare, last-writer-wins, and the two encodings.
 *
 * Invariants of every set made or accepted here: entries sorted by actor
 * with no duplicates, every counter at least 1; an entry's values are the
 * siblings written at its last nvals events, newest first, so value i of
 * entry (actor, n) has the dot (actor, n - i) and nvals <= n. Each entry
 * keeps the timestamp of its last event (that of its newest value when it
 * holds one), and contexts carry it too, so a set is a function of its
 * history: replicas with one history hold one set, byte for byte. There
 * is no anonymous (dotless) value list: every value enters through a
 * coordinator's update, which gives it its dot at once. Values are kept
 * grouped by entry in entry order, their bytes in one block; every
 * operation runs one plan twice, once to count and once to fill three
 * exact allocations, so a failure changes nothing.
 * Format and algebra: docs/object-format.md.
 */
#include "replica/dvv.h"

#include <stdlib.h>

#define SET_MAGIC "QDVS"
#define CTX_MAGIC "QDVC"
#define DVV_VERSION 1u
#define HDR_BYTES 12u /* magic, version, count */
#define SUM_BYTES 8u
#define ENT_BYTES 28u /* actor, counter, timestamp, value count */
#define VAL_BYTES 13u /* flags, timestamp, length (then the bytes) */
#define EV_BYTES 24u  /* actor, counter, timestamp */
#define MOD "replica"

/* An actor's last event: a context's entry, and the head of a set's. */
struct event {
    uint64_t actor;
    uint64_t counter; /* the history holds events 1 .. counter */
    uint64_t ts;      /* the timestamp of event `counter` */
};

struct ent {
    struct event ev; /* first, so a set's entries read as events */
    size_t first;    /* its values are vals[first .. first + nvals) */
    size_t nvals;
    bool pinned; /* prune scratch: holds a value or is the kept actor */
};

struct val {
    uint64_t actor, counter; /* the dot of the write that made it */
    uint64_t ts;
    size_t off, len; /* its bytes are data[off .. off + len) */
    uint8_t flags;
};

struct dvv_set {
    struct ent *ents;
    size_t nents;
    struct val *vals;
    size_t nvals;
    uint8_t *data;
    size_t ndata;
};

struct dvv_ctx {
    struct event *evs;
    size_t n;
};

static const dvv_set empty_set;
static const dvv_ctx empty_ctx;

static const dvv_set *set_or_empty(const dvv_set *s) {
    return s ? s : &empty_set;
}

static const dvv_ctx *ctx_or_empty(const dvv_ctx *c) {
    return c ? c : &empty_ctx;
}

static int corrupt(const char *what, const char *check, size_t off) {
    kv_error(MOD, "corrupt dvv %s: %s at offset %zu", what, check, off);
    return KV_ECORRUPT;
}

static int cmp_u64(uint64_t a, uint64_t b) {
    return a < b ? -1 : a > b;
}

/* Of two last events of one actor (either may be NULL), the later. Equal
 * counters name the same event; taking the larger timestamp then keeps
 * the choice independent of the order even for inconsistent inputs. */
static const struct event *later(const struct event *x, const struct event *y) {
    if (!x || !y) return x ? x : y;
    if (x->counter != y->counter) return x->counter > y->counter ? x : y;
    return x->ts >= y->ts ? x : y;
}

/* ---- building sets ---- */

/* A set under construction. A plan calls add_ent and add_val in order;
 * run() runs it once with s NULL to count and once to fill. */
typedef struct build {
    dvv_set *s;
    size_t nents, nvals, ndata;
} build;

static void add_ent(build *b, const struct event *ev) {
    if (b->s) {
        struct ent *e = &b->s->ents[b->nents];
        e->ev = *ev;
        e->first = b->nvals;
        e->nvals = 0;
        e->pinned = false;
    }
    b->nents++;
}

/* Append a value to the last entry added, as its next older event. */
static void add_val(build *b, uint8_t flags, uint64_t ts, const uint8_t *p,
                    size_t len) {
    if (b->s) {
        struct ent *e = &b->s->ents[b->nents - 1];
        struct val *v = &b->s->vals[b->nvals];
        v->actor = e->ev.actor;
        v->counter = e->ev.counter - e->nvals;
        v->ts = ts;
        v->off = b->ndata;
        v->len = len;
        v->flags = flags;
        if (len) memcpy(b->s->data + b->ndata, p, len);
        e->nvals++;
    }
    b->nvals++;
    b->ndata += len;
}

/* Append the k newest values of entry e of set s. */
static void add_vals(build *b, const dvv_set *s, const struct ent *e,
                     size_t k) {
    for (size_t i = 0; i < k; i++) {
        const struct val *v = &s->vals[e->first + i];
        add_val(b, v->flags, v->ts, s->data + v->off, v->len);
    }
}

typedef struct args {
    const dvv_set *a, *b;
    const dvv_ctx *c;
    uint64_t actor;
    const dvv_value *v;
    kv_slice in;
} args;

typedef int (*plan)(build *b, const args *x);

void dvv_set_free(dvv_set *s) {
    if (!s) return;
    kv_free(s->ents);
    kv_free(s->vals);
    kv_free(s->data);
    kv_free(s);
}

static int run(plan p, const args *x, dvv_set **out) {
    build count = {NULL, 0, 0, 0};
    int rc = p(&count, x);
    if (rc) return rc;
    dvv_set *s = kv_calloc(1, sizeof *s);
    if (!s) return -ENOMEM;
    s->ents = kv_malloc(count.nents * sizeof *s->ents);
    s->vals = kv_malloc(count.nvals * sizeof *s->vals);
    s->data = kv_malloc(count.ndata);
    if (!s->ents || !s->vals || !s->data) {
        dvv_set_free(s);
        return -ENOMEM;
    }
    build fill = {s, 0, 0, 0};
    rc = p(&fill, x);
    KV_ASSERT(rc == 0 && fill.nents == count.nents &&
              fill.nvals == count.nvals && fill.ndata == count.ndata);
    s->nents = fill.nents;
    s->nvals = fill.nvals;
    s->ndata = fill.ndata;
    *out = s;
    return 0;
}

/* ---- update ---- */

/* Make *id the smaller of itself and cand, when cand exists. */
static void lower(bool *any, uint64_t *id, bool has, uint64_t cand) {
    if (has && (!*any || cand < *id)) {
        *id = cand;
        *any = true;
    }
}

/* Walk the actors of s, c and the writer in order. Values of s the client
 * saw (at or below its counter in c) are replaced; newer ones stay. The
 * writer's entry gets the new event on top of what stays. */
static int plan_update(build *b, const args *x) {
    const dvv_set *s = x->a;
    const dvv_ctx *c = x->c;
    size_t i = 0, j = 0;
    bool written = false;
    for (;;) {
        const struct ent *e = i < s->nents ? &s->ents[i] : NULL;
        const struct event *d = j < c->n ? &c->evs[j] : NULL;
        bool any = false;
        uint64_t id = 0;
        lower(&any, &id, e != NULL, e ? e->ev.actor : 0);
        lower(&any, &id, d != NULL, d ? d->actor : 0);
        lower(&any, &id, !written, x->actor);
        if (!any) break;
        const struct ent *from = e && e->ev.actor == id ? e : NULL;
        const struct event *seen = d && d->actor == id ? d : NULL;
        i += from != NULL;
        j += seen != NULL;
        uint64_t n = from ? from->ev.counter : 0;
        uint64_t sc = seen ? seen->counter : 0;
        size_t keep = n > sc ? (size_t)KV_MIN(n - sc, from->nvals) : 0;
        const struct event *top = later(from ? &from->ev : NULL, seen);
        if (!written && id == x->actor) {
            written = true;
            const dvv_value *v = x->v;
            struct event ev = {id, (top ? top->counter : 0) + 1, v->timestamp};
            add_ent(b, &ev);
            add_val(b, v->flags, v->timestamp, v->bytes.ptr, v->bytes.len);
        } else {
            add_ent(b, top);
        }
        if (keep) add_vals(b, s, from, keep);
    }
    return 0;
}

static int check_value(const dvv_value *v) {
    if (!v || (v->flags & ~DVV_FLAGS_KNOWN) || (v->bytes.len && !v->bytes.ptr))
        return -EINVAL;
    if (v->bytes.len > DVV_MAX_ENCODED) return KV_ETOOLARGE;
    return 0;
}

int dvv_set_update(const dvv_set *s, const dvv_ctx *c, uint64_t actor,
                   const dvv_value *v, dvv_set **out) {
    *out = NULL;
    int rc = check_value(v);
    if (rc) return rc;
    if (dvv_set_counter(s, actor) == UINT64_MAX ||
        dvv_ctx_counter(c, actor) == UINT64_MAX)
        return -EOVERFLOW;
    args x = {
        .a = set_or_empty(s), .c = ctx_or_empty(c), .actor = actor, .v = v};
    return run(plan_update, &x, out);
}

int dvv_set_new(uint64_t actor, const dvv_value *v, dvv_set **out) {
    return dvv_set_update(NULL, NULL, actor, v, out);
}

/* ---- merge ---- */

/* Entries on one side only are copied. For an actor on both, the later
 * last event wins; of its side's values, those above the other side's
 * counter are news to the other side and stay, and those at or below it
 * stay only if the other side holds them too (its newest nvals), for
 * otherwise the other side has seen them replaced. */
static int plan_merge(build *b, const args *x) {
    const dvv_set *l = x->a, *r = x->b;
    size_t i = 0, j = 0;
    while (i < l->nents || j < r->nents) {
        const struct ent *e = i < l->nents ? &l->ents[i] : NULL;
        const struct ent *f = j < r->nents ? &r->ents[j] : NULL;
        const dvv_set *hs = l;
        const struct ent *hi = e, *lo = NULL;
        if (!f || (e && e->ev.actor < f->ev.actor)) {
            i++;
        } else if (!e || f->ev.actor < e->ev.actor) {
            hs = r;
            hi = f;
            j++;
        } else {
            lo = f;
            if (later(&e->ev, &f->ev) == &f->ev) {
                hs = r;
                hi = f;
                lo = e;
            }
            i++;
            j++;
        }
        size_t keep = hi->nvals;
        if (lo)
            keep = (size_t)KV_MIN(keep,
                                  hi->ev.counter - lo->ev.counter + lo->nvals);
        add_ent(b, &hi->ev);
        add_vals(b, hs, hi, keep);
    }
    return 0;
}

int dvv_set_merge(const dvv_set *a, const dvv_set *b, dvv_set **out) {
    *out = NULL;
    args x = {.a = set_or_empty(a), .b = set_or_empty(b)};
    return run(plan_merge, &x, out);
}

/* ---- prune ---- */

/* Droppable entries first, oldest first, then by actor. */
static int by_age(const void *x, const void *y) {
    const struct ent *a = x, *b = y;
    if (a->pinned != b->pinned) return a->pinned ? 1 : -1;
    if (a->ev.ts != b->ev.ts) return cmp_u64(a->ev.ts, b->ev.ts);
    return cmp_u64(a->ev.actor, b->ev.actor);
}

static int by_actor(const void *x, const void *y) {
    const struct ent *a = x, *b = y;
    return cmp_u64(a->ev.actor, b->ev.actor);
}

/* Dropped entries hold no values, so the values array and every kept
 * entry's `first` stay as they are; only the entries are reordered. */
size_t dvv_set_prune(dvv_set *s, uint64_t keep) {
    if (!s || s->nents <= DVV_MAX_ACTORS) return 0;
    size_t droppable = 0;
    for (size_t i = 0; i < s->nents; i++) {
        struct ent *e = &s->ents[i];
        e->pinned = e->nvals > 0 || e->ev.actor == keep;
        droppable += !e->pinned;
    }
    size_t drop = KV_MIN(droppable, s->nents - DVV_MAX_ACTORS);
    if (drop == 0) return 0;
    qsort(s->ents, s->nents, sizeof *s->ents, by_age);
    memmove(s->ents, s->ents + drop, (s->nents - drop) * sizeof *s->ents);
    s->nents -= drop;
    qsort(s->ents, s->nents, sizeof *s->ents, by_actor);
    return drop;
}

/* ---- comparing and reading ---- */

/* A sorted vector of events: a context's, or a set's entries read
 * through their first member. */
typedef struct vec {
    const unsigned char *p;
    size_t n, stride;
} vec;

static const struct event *at(vec v, size_t i) {
    return (const struct event *)(const void *)(v.p + i * v.stride);
}

static vec set_vec(const dvv_set *s) {
    s = set_or_empty(s);
    vec v = {(const unsigned char *)s->ents, s->nents, sizeof *s->ents};
    return v;
}

static vec ctx_vec(const dvv_ctx *c) {
    c = ctx_or_empty(c);
    vec v = {(const unsigned char *)c->evs, c->n, sizeof *c->evs};
    return v;
}

static dvv_order compare(vec a, vec b) {
    bool a_more = false, b_more = false;
    size_t i = 0, j = 0;
    while ((i < a.n || j < b.n) && !(a_more && b_more)) {
        const struct event *x = i < a.n ? at(a, i) : NULL;
        const struct event *y = j < b.n ? at(b, j) : NULL;
        if (!y || (x && x->actor < y->actor)) {
            a_more = true;
            i++;
        } else if (!x || y->actor < x->actor) {
            b_more = true;
            j++;
        } else {
            a_more |= x->counter > y->counter;
            b_more |= y->counter > x->counter;
            i++;
            j++;
        }
    }
    if (a_more && b_more) return DVV_CONCURRENT;
    if (a_more) return DVV_DESCENDS;
    return b_more ? DVV_PRECEDES : DVV_EQUAL;
}

static uint64_t counter_of(vec v, uint64_t actor) {
    size_t lo = 0, hi = v.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct event *d = at(v, mid);
        if (d->actor == actor) return d->counter;
        if (d->actor < actor)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

dvv_order dvv_set_compare(const dvv_set *a, const dvv_set *b) {
    return compare(set_vec(a), set_vec(b));
}

dvv_order dvv_ctx_compare(const dvv_ctx *a, const dvv_ctx *b) {
    return compare(ctx_vec(a), ctx_vec(b));
}

size_t dvv_set_actors(const dvv_set *s) {
    return set_or_empty(s)->nents;
}

uint64_t dvv_set_counter(const dvv_set *s, uint64_t actor) {
    return counter_of(set_vec(s), actor);
}

size_t dvv_ctx_actors(const dvv_ctx *c) {
    return ctx_or_empty(c)->n;
}

uint64_t dvv_ctx_actor(const dvv_ctx *c, size_t i) {
    const dvv_ctx *x = ctx_or_empty(c);
    return i < x->n ? x->evs[i].actor : 0;
}

uint64_t dvv_ctx_counter(const dvv_ctx *c, uint64_t actor) {
    return counter_of(ctx_vec(c), actor);
}

bool dvv_set_equal(const dvv_set *a, const dvv_set *b) {
    a = set_or_empty(a);
    b = set_or_empty(b);
    if (a->nents != b->nents || a->nvals != b->nvals) return false;
    for (size_t i = 0; i < a->nents; i++) {
        const struct ent *e = &a->ents[i], *f = &b->ents[i];
        if (e->ev.actor != f->ev.actor || e->ev.counter != f->ev.counter ||
            e->ev.ts != f->ev.ts || e->nvals != f->nvals)
            return false;
    }
    for (size_t i = 0; i < a->nvals; i++) {
        const struct val *v = &a->vals[i], *w = &b->vals[i];
        if (v->flags != w->flags || v->ts != w->ts ||
            !kv_slice_eq(kv_slice_make(a->data + v->off, v->len),
                         kv_slice_make(b->data + w->off, w->len)))
            return false;
    }
    return true;
}

size_t dvv_set_siblings(const dvv_set *s) {
    return set_or_empty(s)->nvals;
}

dvv_sibling dvv_set_sibling(const dvv_set *s, size_t i) {
    KV_ASSERT(s && i < s->nvals);
    const struct val *v = &s->vals[i];
    dvv_sibling out = {
        v->actor,
        v->counter,
        {v->flags, v->ts, kv_slice_make(s->data + v->off, v->len)}};
    return out;
}

int dvv_set_lww(const dvv_set *s, dvv_sibling *out) {
    s = set_or_empty(s);
    if (s->nvals == 0) return KV_ENOTFOUND;
    size_t best = 0;
    for (size_t i = 1; i < s->nvals; i++) {
        const struct val *v = &s->vals[i], *w = &s->vals[best];
        int c = cmp_u64(v->ts, w->ts);
        if (c == 0) c = cmp_u64(v->actor, w->actor);
        if (c == 0) c = cmp_u64(v->counter, w->counter);
        if (c > 0) best = i;
    }
    *out = dvv_set_sibling(s, best);
    return 0;
}

static dvv_ctx *alloc_ctx(size_t n) {
    dvv_ctx *c = kv_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->evs = kv_malloc(n * sizeof *c->evs);
    if (!c->evs) {
        kv_free(c);
        return NULL;
    }
    c->n = n;
    return c;
}

void dvv_ctx_free(dvv_ctx *c) {
    if (!c) return;
    kv_free(c->evs);
    kv_free(c);
}

int dvv_set_join(const dvv_set *s, dvv_ctx **out) {
    s = set_or_empty(s);
    *out = alloc_ctx(s->nents);
    if (!*out) return -ENOMEM;
    for (size_t i = 0; i < s->nents; i++) (*out)->evs[i] = s->ents[i].ev;
    return 0;
}

/* ---- encoding ---- */

static void put_header(uint8_t *p, const char *magic, size_t count) {
    memcpy(p, magic, 4);
    kv_put_u32(p + 4, DVV_VERSION);
    kv_put_u32(p + 8, (uint32_t)count);
}

static void put_event(uint8_t *p, const struct event *ev) {
    kv_put_u64(p, ev->actor);
    kv_put_u64(p + 8, ev->counter);
    kv_put_u64(p + 16, ev->ts);
}

int dvv_set_encode(const dvv_set *s, kv_buf *out) {
    s = set_or_empty(s);
    uint64_t need = (uint64_t)HDR_BYTES + SUM_BYTES +
                    (uint64_t)s->nents * ENT_BYTES +
                    (uint64_t)s->nvals * VAL_BYTES + s->ndata;
    if (need > DVV_MAX_ENCODED) return KV_ETOOLARGE;
    int rc = kv_buf_reserve(out, (size_t)need);
    if (rc) return rc;
    uint8_t *start = out->ptr + out->len, *p = start;
    put_header(p, SET_MAGIC, s->nents);
    p += HDR_BYTES;
    for (size_t i = 0; i < s->nents; i++) {
        const struct ent *e = &s->ents[i];
        put_event(p, &e->ev);
        kv_put_u32(p + 24, (uint32_t)e->nvals);
        p += ENT_BYTES;
        for (size_t k = 0; k < e->nvals; k++) {
            const struct val *v = &s->vals[e->first + k];
            p[0] = v->flags;
            kv_put_u64(p + 1, v->ts);
            kv_put_u32(p + 9, (uint32_t)v->len);
            p += VAL_BYTES;
            if (v->len) memcpy(p, s->data + v->off, v->len);
            p += v->len;
        }
    }
    kv_put_u64(p, kv_checksum(start, (size_t)(p - start)));
    out->len += (size_t)need;
    return 0;
}

/* The checks every encoding shares: length, magic, checksum, version. */
static int check_frame(kv_slice in, const char *magic, const char *what) {
    if (in.len < HDR_BYTES + SUM_BYTES || in.len > DVV_MAX_ENCODED)
        return corrupt(what, "bad length", 0);
    if (memcmp(in.ptr, magic, 4) != 0) return corrupt(what, "bad magic", 0);
    if (kv_get_u64(in.ptr + in.len - SUM_BYTES) !=
        kv_checksum(in.ptr, in.len - SUM_BYTES))
        return corrupt(what, "checksum mismatch", in.len - SUM_BYTES);
    uint32_t version = kv_get_u32(in.ptr + 4);
    if (version != DVV_VERSION) {
        kv_error(MOD, "dvv %s: unknown version %u", what, version);
        return KV_EVERSION;
    }
    return 0;
}

static struct event get_event(const uint8_t *p) {
    struct event ev = {kv_get_u64(p), kv_get_u64(p + 8), kv_get_u64(p + 16)};
    return ev;
}

/* Validates everything in the counting pass, before run() allocates; the
 * filling pass reads the same bytes and cannot fail. */
static int plan_decode(build *b, const args *x) {
    const uint8_t *base = x->in.ptr, *p = base + HDR_BYTES;
    const uint8_t *end = base + x->in.len - SUM_BYTES;
    uint32_t n = kv_get_u32(base + 8);
    if (n > (size_t)(end - p) / ENT_BYTES)
        return corrupt("set", "entry count exceeds the input", 8);
    uint64_t prev = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t off = (size_t)(p - base);
        if ((size_t)(end - p) < ENT_BYTES)
            return corrupt("set", "truncated entry", off);
        struct event ev = get_event(p);
        uint32_t nv = kv_get_u32(p + 24);
        if (i > 0 && ev.actor <= prev)
            return corrupt("set", "actors not strictly ascending", off);
        if (ev.counter == 0) return corrupt("set", "zero counter", off + 8);
        if (nv > ev.counter)
            return corrupt("set", "more values than events", off + 24);
        add_ent(b, &ev);
        p += ENT_BYTES;
        if (nv > (size_t)(end - p) / VAL_BYTES)
            return corrupt("set", "value count exceeds the input", off + 24);
        /* The newest value was written at the entry's last event. */
        if (nv > 0 && kv_get_u64(p + 1) != ev.ts)
            return corrupt("set", "entry and newest value times differ",
                           off + 16);
        for (uint32_t k = 0; k < nv; k++) {
            off = (size_t)(p - base);
            if ((size_t)(end - p) < VAL_BYTES)
                return corrupt("set", "truncated value", off);
            uint8_t flags = p[0];
            uint32_t len = kv_get_u32(p + 9);
            if (flags & ~DVV_FLAGS_KNOWN)
                return corrupt("set", "unknown value flags", off);
            if (len > (size_t)(end - p) - VAL_BYTES)
                return corrupt("set", "value length exceeds the input",
                               off + 9);
            add_val(b, flags, kv_get_u64(p + 1), p + VAL_BYTES, len);
            p += VAL_BYTES + len;
        }
        prev = ev.actor;
    }
    if (p != end) return corrupt("set", "trailing bytes", (size_t)(p - base));
    return 0;
}

int dvv_set_decode(kv_slice in, dvv_set **out) {
    *out = NULL;
    int rc = check_frame(in, SET_MAGIC, "set");
    if (rc) return rc;
    args x = {.in = in};
    return run(plan_decode, &x, out);
}

int dvv_ctx_encode(const dvv_ctx *c, kv_buf *out) {
    c = ctx_or_empty(c);
    uint64_t need = (uint64_t)HDR_BYTES + SUM_BYTES + (uint64_t)c->n * EV_BYTES;
    if (need > DVV_MAX_ENCODED) return KV_ETOOLARGE;
    int rc = kv_buf_reserve(out, (size_t)need);
    if (rc) return rc;
    uint8_t *start = out->ptr + out->len, *p = start;
    put_header(p, CTX_MAGIC, c->n);
    p += HDR_BYTES;
    for (size_t i = 0; i < c->n; i++, p += EV_BYTES) put_event(p, &c->evs[i]);
    kv_put_u64(p, kv_checksum(start, (size_t)(p - start)));
    out->len += (size_t)need;
    return 0;
}

int dvv_ctx_decode(kv_slice in, dvv_ctx **out) {
    *out = NULL;
    int rc = check_frame(in, CTX_MAGIC, "context");
    if (rc) return rc;
    uint32_t n = kv_get_u32(in.ptr + 8);
    if ((uint64_t)n * EV_BYTES != in.len - HDR_BYTES - SUM_BYTES)
        return corrupt("context", "count does not match the length", 8);
    const uint8_t *first = in.ptr + HDR_BYTES;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = first + (size_t)i * EV_BYTES;
        size_t off = (size_t)(p - in.ptr);
        if (i > 0 && kv_get_u64(p) <= kv_get_u64(p - EV_BYTES))
            return corrupt("context", "actors not strictly ascending", off);
        if (kv_get_u64(p + 8) == 0)
            return corrupt("context", "zero counter", off + 8);
    }
    dvv_ctx *c = alloc_ctx(n);
    if (!c) return -ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        c->evs[i] = get_event(first + (size_t)i * EV_BYTES);
    *out = c;
    return 0;
}
