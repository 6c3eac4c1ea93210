/*
 * Fixed equal partitions and their deterministic claim (see ring.h).
 *
 * Invariants of every ring this file makes: q is a power of two; 1 <= n <=
 * RING_MAX_MEMBERS; names are valid and distinct; owner[p] < n for every p;
 * owned[i] is the number of p with owner[p] == i; and the owned counts of
 * any two members differ by at most one. ring_decode checks all but the
 * last (a ring from the wire may come from a different claim, and is
 * still a usable placement).
 * Encoding: docs/ring-format.md.
 */
#include "ring/ring.h"

#include <stdlib.h>

#define RING_MAGIC "QFSRING\n"
#define RING_VERSION 1u
#define HDR_BYTES 32u
#define HASH_SEED UINT64_C(0x71666e72696e6731) /* part of the placement */

struct ring {
    uint32_t q;     /* partitions */
    uint32_t shift; /* 64 - log2(q): partition = hash >> shift */
    uint32_t n;     /* members */
    uint64_t epoch;
    char (*names)[RING_MAX_NAME + 1]; /* [n], NUL-terminated */
    uint32_t *owned;                  /* [n] partitions each owns */
    uint16_t *owner;                  /* [q] member index per partition */
};

bool ring_name_valid(kv_slice name) {
    if (name.len == 0 || name.len > RING_MAX_NAME) return false;
    for (size_t i = 0; i < name.len; i++) {
        uint8_t c = name.ptr[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
                  c == '-';
        if (!ok) return false;
    }
    return true;
}

static bool valid_partitions(uint32_t q) {
    return q >= RING_MIN_PARTITIONS && q <= RING_MAX_PARTITIONS &&
           (q & (q - 1)) == 0;
}

static uint32_t log2u(uint32_t q) {
    uint32_t b = 0;
    while ((1u << b) < q) b++;
    return b;
}

void ring_free(ring *r) {
    if (!r) return;
    kv_free(r->names);
    kv_free(r->owned);
    kv_free(r->owner);
    kv_free(r);
}

/* An empty ring with room for n members and q partitions (owners zero). */
static ring *alloc_ring(uint32_t q, uint32_t n) {
    ring *r = kv_calloc(1, sizeof *r);
    if (!r) return NULL;
    r->q = q;
    r->shift = 64 - log2u(q);
    r->n = n;
    r->names = kv_calloc(n, sizeof *r->names);
    r->owned = kv_calloc(n, sizeof *r->owned);
    r->owner = kv_calloc(q, sizeof *r->owner);
    if (!r->names || !r->owned || !r->owner) {
        ring_free(r);
        return NULL;
    }
    return r;
}

static void set_name(ring *r, uint32_t i, kv_slice name) {
    memcpy(r->names[i], name.ptr, name.len);
    r->names[i][name.len] = '\0';
}

int ring_new(uint32_t partitions, kv_slice first, ring **out) {
    *out = NULL;
    if (!valid_partitions(partitions) || !ring_name_valid(first))
        return -EINVAL;
    ring *r = alloc_ring(partitions, 1);
    if (!r) return -ENOMEM;
    set_name(r, 0, first);
    r->owned[0] = partitions;
    r->epoch = 1;
    *out = r;
    return 0;
}

uint32_t ring_partitions(const ring *r) {
    return r->q;
}

uint32_t ring_members(const ring *r) {
    return r->n;
}

uint64_t ring_epoch(const ring *r) {
    return r->epoch;
}

kv_slice ring_member(const ring *r, uint32_t i) {
    KV_ASSERT(i < r->n);
    return kv_slice_str(r->names[i]);
}

int ring_find(const ring *r, kv_slice name) {
    for (uint32_t i = 0; i < r->n; i++)
        if (kv_slice_eq(kv_slice_str(r->names[i]), name)) return (int)i;
    return -1;
}

uint32_t ring_owner(const ring *r, uint32_t p) {
    KV_ASSERT(p < r->q);
    return r->owner[p];
}

uint32_t ring_owned(const ring *r, uint32_t i) {
    KV_ASSERT(i < r->n);
    return r->owned[i];
}

uint64_t ring_hash(kv_slice key) {
    return kv_hash64(key.ptr, key.len, HASH_SEED);
}

uint32_t ring_partition(const ring *r, uint64_t h) {
    return (uint32_t)(h >> r->shift);
}

int ring_preflist(const ring *r, uint64_t h, int n, uint32_t *out) {
    int got = 0;
    uint32_t p = ring_partition(r, h);
    /* Stop at n, or once every member is listed (small rings would walk
     * the whole ring otherwise). */
    if (n > (int)r->n) n = (int)r->n;
    for (uint32_t step = 0; step < r->q && got < n; step++) {
        uint32_t o = r->owner[p];
        bool seen = false;
        for (int i = 0; i < got && !seen; i++) seen = out[i] == o;
        if (!seen) out[got++] = o;
        p = (p + 1) & (r->q - 1);
    }
    return got;
}

/* A copy of r with room for `extra` more members, one epoch later. */
static ring *next_ring(const ring *r, uint32_t extra) {
    ring *c = alloc_ring(r->q, r->n + extra);
    if (!c) return NULL;
    memcpy(c->names, r->names, r->n * sizeof *r->names);
    memcpy(c->owned, r->owned, r->n * sizeof *r->owned);
    memcpy(c->owner, r->owner, r->q * sizeof *r->owner);
    c->n = r->n + extra;
    c->epoch = r->epoch + 1;
    return c;
}

/* Circular distance between partitions a and b of q. */
static uint32_t dist(uint32_t a, uint32_t b, uint32_t q) {
    uint32_t d = (a - b) & (q - 1);
    return KV_MIN(d, q - d);
}

int ring_join(const ring *r, kv_slice name, ring **out) {
    *out = NULL;
    if (!ring_name_valid(name)) return -EINVAL;
    if (ring_find(r, name) >= 0) return -EEXIST;
    if (r->n >= RING_MAX_MEMBERS) return KV_ETOOLARGE;
    uint32_t q = r->q, n = r->n, take = q / (n + 1);
    ring *c = next_ring(r, 1);
    /* Each member's partitions, grouped: member i's are
     * byown[start[i] .. start[i] + len[i]). */
    uint32_t *byown = kv_malloc(q * sizeof *byown);
    uint32_t *start = kv_calloc(n + 1, sizeof *start);
    uint32_t *len = kv_calloc(n, sizeof *len);
    uint32_t *near = kv_malloc(q * sizeof *near);
    int rc = -ENOMEM;
    if (!c || !byown || !start || !len || !near) goto out;
    set_name(c, n, name);
    for (uint32_t i = 0; i < n; i++) start[i + 1] = start[i] + r->owned[i];
    for (uint32_t p = 0; p < q; p++) {
        uint32_t o = r->owner[p];
        byown[start[o] + len[o]++] = p;
    }
    /* near[p]: distance from p to the nearest partition the newcomer
     * has taken so far (q while it has none), kept up to date as it
     * takes one, so each step costs O(q) instead of a search per
     * candidate. */
    for (uint32_t p = 0; p < q; p++) near[p] = q;
    for (uint32_t k = 0; k < take; k++) {
        uint32_t v = 0;
        for (uint32_t i = 1; i < n; i++)
            if (c->owned[i] > c->owned[v]) v = i;
        /* The victim's partition farthest from the newcomer's others
         * (ties: the lowest), so the newcomer's share spreads round the
         * ring instead of bunching. */
        uint32_t *cand = byown + start[v], best = 0, best_d = 0;
        for (uint32_t j = 0; j < len[v]; j++) {
            uint32_t d = near[cand[j]];
            if (d > best_d || (d == best_d && cand[j] < cand[best])) {
                best = j;
                best_d = d;
            }
        }
        uint32_t p = cand[best];
        cand[best] = cand[--len[v]];
        c->owner[p] = (uint16_t)n;
        c->owned[v]--;
        c->owned[n]++;
        for (uint32_t x = 0; x < q; x++) {
            uint32_t d = dist(x, p, q);
            if (d < near[x]) near[x] = d;
        }
    }
    *out = c;
    c = NULL;
    rc = 0;
out:
    ring_free(c);
    kv_free(byown);
    kv_free(start);
    kv_free(len);
    kv_free(near);
    return rc;
}

/* Whether member m owns a partition within RING_SPREAD - 1 of p. */
static bool owns_near(const ring *r, uint32_t m, uint32_t p) {
    for (uint32_t d = 1; d < RING_SPREAD; d++) {
        if (r->owner[(p + d) & (r->q - 1)] == m) return true;
        if (r->owner[(p - d) & (r->q - 1)] == m) return true;
    }
    return false;
}

int ring_leave(const ring *r, kv_slice name, ring **out) {
    *out = NULL;
    int x = ring_find(r, name);
    if (x < 0) return KV_ENOTFOUND;
    if (r->n == 1) return -EINVAL;
    ring *c = next_ring(r, 0);
    if (!c) return -ENOMEM;
    uint32_t n = r->n;
    for (uint32_t p = 0; p < r->q; p++) {
        if (c->owner[p] != (uint32_t)x) continue;
        uint32_t least = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++)
            if (i != (uint32_t)x) least = KV_MIN(least, c->owned[i]);
        int pick = -1, fallback = -1;
        for (uint32_t i = 0; i < n && pick < 0; i++) {
            if (i == (uint32_t)x || c->owned[i] != least) continue;
            if (fallback < 0) fallback = (int)i;
            if (!owns_near(c, i, p)) pick = (int)i;
        }
        if (pick < 0) pick = fallback;
        c->owner[p] = (uint16_t)pick;
        c->owned[pick]++;
        c->owned[x]--;
    }
    /* Close the gap in the member list. */
    for (uint32_t i = (uint32_t)x; i + 1 < n; i++) {
        memcpy(c->names[i], c->names[i + 1], sizeof c->names[i]);
        c->owned[i] = c->owned[i + 1];
    }
    c->n = n - 1;
    for (uint32_t p = 0; p < c->q; p++)
        if (c->owner[p] > (uint32_t)x) c->owner[p]--;
    *out = c;
    return 0;
}

/* ---- encoding ---- */

int ring_encode(const ring *r, kv_buf *out) {
    size_t need = HDR_BYTES + 8 + (size_t)r->q * 2;
    for (uint32_t i = 0; i < r->n; i++) need += 1 + strlen(r->names[i]);
    size_t base = out->len;
    int rc = kv_buf_reserve(out, need);
    if (rc) return rc;
    uint8_t *p = out->ptr + base;
    memcpy(p, RING_MAGIC, 8);
    kv_put_u32(p + 8, RING_VERSION);
    kv_put_u32(p + 12, r->q);
    kv_put_u64(p + 16, r->epoch);
    kv_put_u32(p + 24, r->n);
    kv_put_u32(p + 28, 0);
    p += HDR_BYTES;
    for (uint32_t i = 0; i < r->n; i++) {
        size_t l = strlen(r->names[i]);
        *p++ = (uint8_t)l;
        memcpy(p, r->names[i], l);
        p += l;
    }
    for (uint32_t i = 0; i < r->q; i++, p += 2) kv_put_u16(p, r->owner[i]);
    kv_put_u64(p, kv_checksum(out->ptr + base, need - 8));
    out->len = base + need;
    return 0;
}

int ring_decode(kv_slice in, ring **out) {
    *out = NULL;
    if (in.len < HDR_BYTES + 8 || memcmp(in.ptr, RING_MAGIC, 8) != 0)
        return KV_ECORRUPT;
    if (kv_get_u64(in.ptr + in.len - 8) != kv_checksum(in.ptr, in.len - 8))
        return KV_ECORRUPT;
    if (kv_get_u32(in.ptr + 8) != RING_VERSION) return KV_EVERSION;
    uint32_t q = kv_get_u32(in.ptr + 12), n = kv_get_u32(in.ptr + 24);
    uint64_t epoch = kv_get_u64(in.ptr + 16);
    if (!valid_partitions(q) || n < 1 || n > RING_MAX_MEMBERS ||
        kv_get_u32(in.ptr + 28) != 0)
        return KV_ECORRUPT;
    /* Every member takes at least one byte, the owners two per partition. */
    if (in.len < HDR_BYTES + 8 + (size_t)n + (size_t)q * 2) return KV_ECORRUPT;
    ring *r = alloc_ring(q, n);
    if (!r) return -ENOMEM;
    r->epoch = epoch;
    const uint8_t *p = in.ptr + HDR_BYTES, *end = in.ptr + in.len - 8;
    int rc = KV_ECORRUPT;
    for (uint32_t i = 0; i < n; i++) {
        if (p >= end || (size_t)(end - p) < 1u + *p) goto out;
        kv_slice name = kv_slice_make(p + 1, *p);
        if (!ring_name_valid(name)) goto out;
        for (uint32_t j = 0; j < i; j++)
            if (kv_slice_eq(kv_slice_str(r->names[j]), name)) goto out;
        set_name(r, i, name);
        p += 1 + name.len;
    }
    if ((size_t)(end - p) != (size_t)q * 2) goto out;
    for (uint32_t i = 0; i < q; i++, p += 2) {
        uint16_t o = kv_get_u16(p);
        if (o >= n) goto out;
        r->owner[i] = o;
        r->owned[o]++;
    }
    *out = r;
    r = NULL;
    rc = 0;
out:
    ring_free(r);
    return rc;
}

bool ring_equal(const ring *a, const ring *b) {
    if (a->q != b->q || a->n != b->n || a->epoch != b->epoch) return false;
    for (uint32_t i = 0; i < a->n; i++)
        if (strcmp(a->names[i], b->names[i]) != 0) return false;
    return memcmp(a->owner, b->owner, a->q * sizeof *a->owner) == 0;
}

ring *ring_dup(const ring *r) {
    ring *c = alloc_ring(r->q, r->n);
    if (!c) return NULL;
    c->epoch = r->epoch;
    memcpy(c->names, r->names, r->n * sizeof *r->names);
    memcpy(c->owned, r->owned, r->n * sizeof *r->owned);
    memcpy(c->owner, r->owner, r->q * sizeof *r->owner);
    return c;
}
