/*
 * The gossiped cluster state and its claimant (see ring.h, "cluster
 * state").
 *
 * Invariants of every state this file makes: entries are sorted by name,
 * names distinct and valid; n <= RING_MAX_ENTRIES; next != NULL only with
 * ring != NULL and the same partition count; next_version is 0 exactly
 * when next is NULL. Encoding: docs/ring-format.md.
 */
#include "ring/ring.h"

#include <stdatomic.h>
#include <stdlib.h>

#define CLUSTER_MAGIC "QFSCLUS\n"
#define CLUSTER_VERSION 1u
#define FLAG_LEAVE 1u

typedef struct entry {
    char name[RING_MAX_NAME + 1];
    char addr[RING_MAX_ADDR + 1];
    uint64_t incarnation, version, done;
    bool leave;
} entry;

typedef struct bucket {
    char name[RING_MAX_NAME + 1];
    uint64_t version;
    uint32_t flags; /* RING_BUCKET_* */
} bucket;

struct ring_cluster {
    atomic_int refs;
    uint64_t version, next_version;
    ring *ring, *next;
    uint32_t n;
    entry *e; /* [n], by name */
    uint32_t nb;
    bucket *b; /* [nb], by name */
};

static bool addr_valid(kv_slice a) {
    if (a.len > RING_MAX_ADDR) return false;
    for (size_t i = 0; i < a.len; i++) {
        uint8_t ch = a.ptr[i];
        if (ch <= ' ' || ch >= 0x7f) return false;
    }
    return true;
}

static ring_cluster *alloc_cluster(uint32_t n) {
    ring_cluster *c = kv_calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 1);
    c->n = n;
    if (n && !(c->e = kv_calloc(n, sizeof *c->e))) {
        kv_free(c);
        return NULL;
    }
    return c;
}

ring_cluster *ring_cluster_ref(ring_cluster *c) {
    if (c) atomic_fetch_add(&c->refs, 1);
    return c;
}

void ring_cluster_unref(ring_cluster *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    ring_free(c->ring);
    ring_free(c->next);
    kv_free(c->e);
    kv_free(c->b);
    kv_free(c);
}

static void set_entry(entry *e, kv_slice name, kv_slice addr) {
    memcpy(e->name, name.ptr, name.len);
    e->name[name.len] = '\0';
    memcpy(e->addr, addr.ptr, addr.len);
    e->addr[addr.len] = '\0';
}

int ring_cluster_new(uint32_t partitions, kv_slice name, kv_slice addr,
                     uint64_t incarnation, ring_cluster **out) {
    *out = NULL;
    if (!ring_name_valid(name) || !addr_valid(addr)) return -EINVAL;
    ring_cluster *c = alloc_cluster(1);
    if (!c) return -ENOMEM;
    set_entry(&c->e[0], name, addr);
    c->e[0].incarnation = incarnation;
    c->e[0].version = 1;
    if (partitions) {
        int rc = ring_new(partitions, name, &c->ring);
        if (rc) {
            ring_cluster_unref(c);
            return rc;
        }
        c->version = 1;
    }
    *out = c;
    return 0;
}

uint64_t ring_cluster_version(const ring_cluster *c) {
    return c->version;
}
uint64_t ring_cluster_next_version(const ring_cluster *c) {
    return c->next_version;
}
const ring *ring_cluster_ring(const ring_cluster *c) {
    return c->ring;
}
const ring *ring_cluster_next(const ring_cluster *c) {
    return c->next;
}
uint32_t ring_cluster_members(const ring_cluster *c) {
    return c->n;
}

int ring_cluster_find(const ring_cluster *c, kv_slice name) {
    uint32_t lo = 0, hi = c->n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        int cmp = kv_slice_cmp(kv_slice_str(c->e[mid].name), name);
        if (cmp == 0) return (int)mid;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static bool in_ring(const ring *r, const char *name) {
    return r && ring_find(r, kv_slice_str(name)) >= 0;
}

ring_member_info ring_cluster_member(const ring_cluster *c, uint32_t i) {
    const entry *e = &c->e[i];
    ring_member_info m = {.name = kv_slice_str(e->name),
                          .addr = kv_slice_str(e->addr),
                          .incarnation = e->incarnation,
                          .version = e->version,
                          .done = e->done,
                          .leave = e->leave};
    bool placed = in_ring(c->ring, e->name) || in_ring(c->next, e->name);
    if (e->leave)
        m.status = placed ? RING_LEAVING : RING_REMOVED;
    else
        m.status = placed ? RING_VALID : RING_JOINING;
    return m;
}

/* d's buckets: n of src, with room for extra more (nb stays n). */
static int copy_buckets(ring_cluster *d, const bucket *src, uint32_t n,
                        uint32_t extra) {
    if (n + extra == 0) return 0;
    if (!(d->b = kv_calloc(n + extra, sizeof *d->b))) return -ENOMEM;
    if (n) memcpy(d->b, src, n * sizeof *src);
    d->nb = n;
    return 0;
}

/* A copy of c's ring part and entries with room for `extra` more entries
 * (n stays c->n). */
static ring_cluster *copy_cluster(const ring_cluster *c, uint32_t extra) {
    ring_cluster *d = alloc_cluster(c->n + extra);
    if (!d) return NULL;
    d->n = c->n;
    if (c->n) memcpy(d->e, c->e, c->n * sizeof *c->e);
    d->version = c->version;
    d->next_version = c->next_version;
    if ((c->ring && !(d->ring = ring_dup(c->ring))) ||
        (c->next && !(d->next = ring_dup(c->next))) ||
        copy_buckets(d, c->b, c->nb, 0)) {
        ring_cluster_unref(d);
        return NULL;
    }
    return d;
}

int ring_cluster_set_self(const ring_cluster *c, kv_slice name, kv_slice addr,
                          uint64_t incarnation, bool leave, uint64_t done,
                          ring_cluster **out) {
    *out = NULL;
    if (!ring_name_valid(name) || !addr_valid(addr)) return -EINVAL;
    int at = ring_cluster_find(c, name);
    if (at < 0 && c->n >= RING_MAX_ENTRIES) return KV_ETOOLARGE;
    ring_cluster *d = copy_cluster(c, at < 0 ? 1 : 0);
    if (!d) return -ENOMEM;
    uint64_t version = 1;
    if (at < 0) {
        /* Insert in name order. */
        uint32_t i = 0;
        while (i < d->n && kv_slice_cmp(kv_slice_str(d->e[i].name), name) < 0)
            i++;
        memmove(&d->e[i + 1], &d->e[i], (d->n - i) * sizeof *d->e);
        memset(&d->e[i], 0, sizeof *d->e);
        d->n++;
        at = (int)i;
    } else {
        version = d->e[at].version + 1;
    }
    entry *e = &d->e[at];
    set_entry(e, name, addr);
    e->incarnation = incarnation;
    e->version = version;
    e->leave = leave;
    e->done = done;
    *out = d;
    return 0;
}

int ring_cluster_force_leave(const ring_cluster *c, kv_slice name,
                             ring_cluster **out) {
    *out = NULL;
    int at = ring_cluster_find(c, name);
    if (at < 0) return KV_ENOTFOUND;
    ring_cluster *d = copy_cluster(c, 0);
    if (!d) return -ENOMEM;
    d->e[at].version++;
    d->e[at].leave = true;
    d->e[at].done = UINT64_MAX;
    *out = d;
    return 0;
}

/* >0 when entry a wins over b (same name), <0 when b wins, 0 when equal. */
static int entry_order(const entry *a, const entry *b) {
    if (a->version != b->version) return a->version > b->version ? 1 : -1;
    if (a->incarnation != b->incarnation)
        return a->incarnation > b->incarnation ? 1 : -1;
    if (a->done != b->done) return a->done > b->done ? 1 : -1;
    if (a->leave != b->leave) return a->leave ? 1 : -1;
    return strcmp(a->addr, b->addr);
}

/* A checksum of a state's ring part, to order two that share a version. */
static uint64_t ring_part_sum(const ring_cluster *c) {
    kv_buf b = KV_BUF_INIT;
    uint64_t sum = 0;
    if ((!c->ring || ring_encode(c->ring, &b) == 0) &&
        (!c->next || ring_encode(c->next, &b) == 0))
        sum = kv_checksum(b.ptr, b.len) ^ c->next_version;
    kv_buf_release(&b);
    return sum;
}

static bool same_ring(const ring *a, const ring *b) {
    if (!a || !b) return a == b;
    return ring_equal(a, b);
}

static bool same_ring_part(const ring_cluster *a, const ring_cluster *b) {
    return a->version == b->version && a->next_version == b->next_version &&
           same_ring(a->ring, b->ring) && same_ring(a->next, b->next);
}

/* >0 when bucket setting a wins over b (same name), <0 when b, 0 equal. */
static int bucket_order(const bucket *a, const bucket *b) {
    if (a->version != b->version) return a->version > b->version ? 1 : -1;
    if (a->flags != b->flags) return a->flags > b->flags ? 1 : -1;
    return 0;
}

/* d's buckets: the union of a's and b's, the winning setting per name. */
static int merge_buckets(ring_cluster *d, const ring_cluster *a,
                         const ring_cluster *b) {
    if (a->nb + b->nb == 0) return 0;
    if (!(d->b = kv_calloc(a->nb + b->nb, sizeof *d->b))) return -ENOMEM;
    uint32_t i = 0, j = 0, n = 0;
    while (i < a->nb || j < b->nb) {
        int cmp = i == a->nb   ? 1
                  : j == b->nb ? -1
                               : strcmp(a->b[i].name, b->b[j].name);
        const bucket *pick;
        if (cmp < 0)
            pick = &a->b[i++];
        else if (cmp > 0)
            pick = &b->b[j++];
        else {
            pick = bucket_order(&a->b[i], &b->b[j]) >= 0 ? &a->b[i] : &b->b[j];
            i++;
            j++;
        }
        d->b[n++] = *pick;
    }
    if (n > RING_MAX_BUCKETS) return KV_ETOOLARGE;
    d->nb = n;
    return 0;
}

int ring_cluster_merge(const ring_cluster *a, const ring_cluster *b,
                       ring_cluster **out) {
    *out = NULL;
    if (a->ring && b->ring &&
        ring_partitions(a->ring) != ring_partitions(b->ring))
        return -EINVAL;
    /* The ring part: the higher version, else the higher checksum. */
    const ring_cluster *rp = a;
    if (b->version > a->version ||
        (b->version == a->version && !same_ring_part(a, b) &&
         ring_part_sum(b) > ring_part_sum(a)))
        rp = b;
    uint32_t i = 0, j = 0, n = 0;
    while (i < a->n || j < b->n) {
        int cmp = i == a->n   ? 1
                  : j == b->n ? -1
                              : strcmp(a->e[i].name, b->e[j].name);
        if (cmp <= 0) i++;
        if (cmp >= 0) j++;
        n++;
    }
    if (n > RING_MAX_ENTRIES) return KV_ETOOLARGE;
    ring_cluster *d = alloc_cluster(n);
    if (!d) return -ENOMEM;
    d->version = rp->version;
    d->next_version = rp->next_version;
    if ((rp->ring && !(d->ring = ring_dup(rp->ring))) ||
        (rp->next && !(d->next = ring_dup(rp->next)))) {
        ring_cluster_unref(d);
        return -ENOMEM;
    }
    i = j = n = 0;
    while (i < a->n || j < b->n) {
        int cmp = i == a->n   ? 1
                  : j == b->n ? -1
                              : strcmp(a->e[i].name, b->e[j].name);
        const entry *pick;
        if (cmp < 0)
            pick = &a->e[i++];
        else if (cmp > 0)
            pick = &b->e[j++];
        else {
            pick = entry_order(&a->e[i], &b->e[j]) >= 0 ? &a->e[i] : &b->e[j];
            i++;
            j++;
        }
        d->e[n++] = *pick;
    }
    int rc = merge_buckets(d, a, b);
    if (rc) {
        ring_cluster_unref(d);
        return rc;
    }
    *out = d;
    return 0;
}

bool ring_cluster_equal(const ring_cluster *a, const ring_cluster *b) {
    if (a->n != b->n || a->nb != b->nb || !same_ring_part(a, b)) return false;
    for (uint32_t i = 0; i < a->nb; i++)
        if (strcmp(a->b[i].name, b->b[i].name) != 0 ||
            bucket_order(&a->b[i], &b->b[i]) != 0)
            return false;
    for (uint32_t i = 0; i < a->n; i++)
        if (strcmp(a->e[i].name, b->e[i].name) != 0 ||
            entry_order(&a->e[i], &b->e[i]) != 0)
            return false;
    return true;
}

int ring_cluster_claimant(const ring_cluster *c,
                          bool (*up)(void *arg, kv_slice name), void *arg) {
    if (!c->ring) return -1;
    for (uint32_t i = 0; i < c->n; i++)
        if (in_ring(c->ring, c->e[i].name) &&
            up(arg, kv_slice_str(c->e[i].name)))
            return (int)i;
    return -1;
}

/* The next ring: c's ring with joiners added and leavers removed, in name
 * order; NULL in *out when nothing changes. A leave that would empty the
 * ring is not applied (the last member stays until another joins). */
static int plan_next(const ring_cluster *c, ring **out) {
    *out = NULL;
    ring *r = NULL;
    int rc = 0;
    for (uint32_t i = 0; i < c->n && rc == 0; i++) {
        const entry *e = &c->e[i];
        kv_slice name = kv_slice_str(e->name);
        const ring *cur = r ? r : c->ring;
        ring *nr = NULL;
        if (!e->leave && ring_find(cur, name) < 0)
            rc = ring_join(cur, name, &nr);
        else if (e->leave && ring_find(cur, name) >= 0 && ring_members(cur) > 1)
            rc = ring_leave(cur, name, &nr);
        if (nr) {
            ring_free(r);
            r = nr;
        }
    }
    if (rc) {
        ring_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

int ring_cluster_claim(const ring_cluster *c, ring_cluster **out) {
    *out = NULL;
    if (!c->ring) return 0;
    if (!c->next) {
        ring *next;
        int rc = plan_next(c, &next);
        if (rc || !next) return rc;
        ring_cluster *d = copy_cluster(c, 0);
        if (!d) {
            ring_free(next);
            return -ENOMEM;
        }
        d->next = next;
        d->version = c->version + 1;
        d->next_version = d->version;
        *out = d;
        return 1;
    }
    for (uint32_t i = 0; i < c->n; i++) {
        const entry *e = &c->e[i];
        if ((in_ring(c->ring, e->name) || in_ring(c->next, e->name)) &&
            e->done < c->next_version)
            return 0;
    }
    ring_cluster *d = copy_cluster(c, 0);
    if (!d) return -ENOMEM;
    ring_free(d->ring);
    d->ring = d->next;
    d->next = NULL;
    d->next_version = 0;
    d->version = c->version + 1;
    *out = d;
    return 1;
}

/* ---- encoding ---- */

int ring_cluster_encode(const ring_cluster *c, kv_buf *out) {
    size_t base = out->len;
    kv_buf rb = KV_BUF_INIT, nb = KV_BUF_INIT;
    int rc = 0;
    if (c->ring) rc = ring_encode(c->ring, &rb);
    if (rc == 0 && c->next) rc = ring_encode(c->next, &nb);
    if (rc == 0) rc = kv_buf_append(out, CLUSTER_MAGIC, 8);
    if (rc == 0) rc = kv_buf_put_u32(out, CLUSTER_VERSION);
    if (rc == 0) rc = kv_buf_put_u64(out, c->version);
    if (rc == 0) rc = kv_buf_put_u64(out, c->next_version);
    if (rc == 0) rc = kv_buf_put_lenslice(out, kv_buf_slice(&rb));
    if (rc == 0) rc = kv_buf_put_lenslice(out, kv_buf_slice(&nb));
    if (rc == 0) rc = kv_buf_put_varint(out, c->n);
    for (uint32_t i = 0; i < c->n && rc == 0; i++) {
        const entry *e = &c->e[i];
        rc = kv_buf_put_lenslice(out, kv_slice_str(e->name));
        if (rc == 0) rc = kv_buf_put_lenslice(out, kv_slice_str(e->addr));
        if (rc == 0) rc = kv_buf_put_u64(out, e->incarnation);
        if (rc == 0) rc = kv_buf_put_u64(out, e->version);
        if (rc == 0) rc = kv_buf_put_u64(out, e->done);
        if (rc == 0) rc = kv_buf_put_varint(out, e->leave ? FLAG_LEAVE : 0);
    }
    if (rc == 0) rc = kv_buf_put_varint(out, c->nb);
    for (uint32_t i = 0; i < c->nb && rc == 0; i++) {
        rc = kv_buf_put_lenslice(out, kv_slice_str(c->b[i].name));
        if (rc == 0) rc = kv_buf_put_u64(out, c->b[i].version);
        if (rc == 0) rc = kv_buf_put_varint(out, c->b[i].flags);
    }
    if (rc == 0)
        rc = kv_buf_put_u64(out, kv_checksum(out->ptr + base, out->len - base));
    kv_buf_release(&rb);
    kv_buf_release(&nb);
    if (rc) out->len = base;
    return rc;
}

int ring_cluster_decode(kv_slice in, ring_cluster **out) {
    *out = NULL;
    if (in.len < 8 + 4 + 8 || memcmp(in.ptr, CLUSTER_MAGIC, 8) != 0)
        return KV_ECORRUPT;
    if (kv_get_u64(in.ptr + in.len - 8) != kv_checksum(in.ptr, in.len - 8))
        return KV_ECORRUPT;
    if (kv_get_u32(in.ptr + 8) != CLUSTER_VERSION) return KV_EVERSION;
    kv_reader r = kv_reader_make(kv_slice_make(in.ptr + 12, in.len - 20));
    uint64_t version, next_version, n;
    kv_slice rs, ns;
    if (kv_get_fixed64(&r, &version) || kv_get_fixed64(&r, &next_version) ||
        kv_get_lenslice(&r, in.len, &rs) || kv_get_lenslice(&r, in.len, &ns) ||
        kv_get_varint(&r, &n) || n < 1 || n > RING_MAX_ENTRIES)
        return KV_ECORRUPT;
    /* Every entry takes at least 28 bytes. */
    if (kv_reader_left(&r) < n * 28) return KV_ECORRUPT;
    ring_cluster *c = alloc_cluster((uint32_t)n);
    if (!c) return -ENOMEM;
    int rc = 0;
    c->version = version;
    c->next_version = next_version;
    if (rs.len) rc = ring_decode(rs, &c->ring);
    if (rc == 0 && ns.len) rc = ring_decode(ns, &c->next);
    if (rc) goto out;
    rc = KV_ECORRUPT;
    if ((ns.len && !rs.len) || (ns.len != 0) != (next_version != 0) ||
        (c->next && ring_partitions(c->next) != ring_partitions(c->ring)) ||
        (!c->ring && version != 0))
        goto out;
    for (uint32_t i = 0; i < n; i++) {
        kv_slice name, addr;
        uint64_t flags;
        entry *e = &c->e[i];
        if (kv_get_lenslice(&r, RING_MAX_NAME, &name) ||
            kv_get_lenslice(&r, RING_MAX_ADDR, &addr) ||
            kv_get_fixed64(&r, &e->incarnation) ||
            kv_get_fixed64(&r, &e->version) || kv_get_fixed64(&r, &e->done) ||
            kv_get_varint(&r, &flags) || (flags & ~(uint64_t)FLAG_LEAVE) ||
            !ring_name_valid(name) || !addr_valid(addr))
            goto out;
        set_entry(e, name, addr);
        e->leave = flags & FLAG_LEAVE;
        if (i > 0 && strcmp(c->e[i - 1].name, e->name) >= 0) goto out;
    }
    uint64_t nb;
    if (kv_get_varint(&r, &nb) || nb > RING_MAX_BUCKETS ||
        kv_reader_left(&r) < nb * 10)
        goto out;
    if (nb && !(c->b = kv_calloc(nb, sizeof *c->b))) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < nb; i++) {
        kv_slice name;
        uint64_t flags;
        bucket *bk = &c->b[i];
        if (kv_get_lenslice(&r, RING_MAX_NAME, &name) ||
            !ring_name_valid(name) || kv_get_fixed64(&r, &bk->version) ||
            kv_get_varint(&r, &flags) || (flags & ~(uint64_t)RING_BUCKET_LWW))
            goto out;
        memcpy(bk->name, name.ptr, name.len);
        bk->flags = (uint32_t)flags;
        if (i > 0 && strcmp(c->b[i - 1].name, bk->name) >= 0) goto out;
        c->nb = i + 1;
    }
    if (kv_reader_left(&r) != 0) goto out;
    *out = c;
    c = NULL;
    rc = 0;
out:
    ring_cluster_unref(c);
    return rc;
}

/* ---- buckets ---- */

static int find_bucket(const ring_cluster *c, kv_slice name) {
    for (uint32_t i = 0; i < c->nb; i++)
        if (kv_slice_eq(kv_slice_str(c->b[i].name), name)) return (int)i;
    return -1;
}

uint32_t ring_cluster_bucket_flags(const ring_cluster *c, kv_slice name) {
    int at = find_bucket(c, name);
    return at < 0 ? 0 : c->b[at].flags;
}

uint32_t ring_cluster_buckets(const ring_cluster *c) {
    return c->nb;
}

kv_slice ring_cluster_bucket(const ring_cluster *c, uint32_t i,
                             uint32_t *flags) {
    *flags = c->b[i].flags;
    return kv_slice_str(c->b[i].name);
}

int ring_cluster_set_bucket(const ring_cluster *c, kv_slice name,
                            uint32_t flags, ring_cluster **out) {
    *out = NULL;
    if (!ring_name_valid(name) || (flags & ~(uint32_t)RING_BUCKET_LWW))
        return -EINVAL;
    int at = find_bucket(c, name);
    if (at < 0 && c->nb >= RING_MAX_BUCKETS) return KV_ETOOLARGE;
    ring_cluster *d = copy_cluster(c, 0);
    bucket *nb =
        d && at < 0 ? kv_realloc(d->b, (d->nb + 1) * sizeof *nb) : NULL;
    if (!d || (at < 0 && !nb)) {
        ring_cluster_unref(d);
        return -ENOMEM;
    }
    if (at < 0) {
        d->b = nb;
        uint32_t i = 0;
        while (i < d->nb && kv_slice_cmp(kv_slice_str(d->b[i].name), name) < 0)
            i++;
        memmove(&d->b[i + 1], &d->b[i], (d->nb - i) * sizeof *d->b);
        memset(&d->b[i], 0, sizeof *d->b);
        memcpy(d->b[i].name, name.ptr, name.len);
        d->nb++;
        at = (int)i;
    }
    d->b[at].version++;
    d->b[at].flags = flags;
    *out = d;
    return 0;
}
