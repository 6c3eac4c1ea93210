/*
 * Block cache: a sharded LRU map from (file number, offset) to a value the
 * caller allocated, bounded by the sum of the entries' charges. The key is
 * hashed once with kv_hash64; the top 4 bits pick one of 16 shards, the low
 * bits a bucket in that shard's chained hash table (doubled when it holds
 * more entries than buckets). Each shard has its own mutex.
 *
 * Invariants, all under the shard's lock:
 *  - an entry is either in the table (in_cache) or detached because it was
 *    replaced or erased while a handle was out; only in_cache entries count
 *    towards usage;
 *  - an entry is on the LRU list if and only if in_cache && refs == 0;
 *  - an entry that is neither in the table nor referenced is freed at once;
 *    deleters run after the lock is dropped, so a slow deleter never blocks
 *    other users of the shard.
 * Capacity is split across shards so the shares add up to exactly capacity.
 * Pinned entries are never evicted, so when a shard's entries are all in use
 * its usage may exceed its share; releasing a handle trims the shard back,
 * which keeps usage <= capacity whenever no handle is outstanding.
 *
 * Reservations charge the cache for memory that lives outside it (the index
 * and filter blocks an open table holds): the reserved bytes are taken from
 * every shard's share in equal parts, so a reservation evicts entries of all
 * shards, and usage + reserved <= capacity whenever no handle is out and
 * reserved <= capacity. Reserved bytes are never evicted; their owner gives
 * them back.
 */
#include "engine/engine_int.h"

#define SHARD_BITS 4
#define NSHARDS (1 << SHARD_BITS)
#define MIN_BUCKETS 16

struct eng_cache_handle {
    uint64_t file, off;
    uint64_t hash; /* key_hash(file, off), kept to avoid rehashing on grow */
    void *value;
    size_t charge;
    eng_cache_deleter del;
    eng_cache_handle *chain;       /* next in bucket, or in a to-free list */
    eng_cache_handle *prev, *next; /* LRU neighbours while unused */
    uint32_t refs;                 /* handles not yet released */
    bool in_cache;                 /* reachable from the shard's table */
};

typedef struct shard {
    pthread_mutex_t mu;
    eng_cache_handle **buckets; /* nbuckets chains (mu) */
    size_t nbuckets;            /* a power of two (mu) */
    size_t count;               /* entries in the table (mu) */
    size_t usage;               /* sum of their charges (mu) */
    size_t capacity;            /* this shard's share; fixed */
    size_t pinned;              /* entries with refs > 0, detached too (mu) */
    eng_cache_handle lru;       /* sentinel; lru.next is the oldest (mu) */
} shard;

struct eng_cache {
    shard shards[NSHARDS];
    size_t capacity;
    _Atomic size_t reserved; /* eng__cache_reserve'd, not yet given back */
};

static uint64_t key_hash(uint64_t file, uint64_t off) {
    uint8_t b[16];
    kv_put_u64(b, file);
    kv_put_u64(b + 8, off);
    return kv_hash64(b, sizeof b, 0);
}

static shard *shard_of(eng_cache *c, uint64_t hash) {
    return &c->shards[hash >> (64 - SHARD_BITS)];
}

/* The link that points at the entry for the key, or at the chain's NULL. */
static eng_cache_handle **find(shard *s, uint64_t hash, uint64_t file,
                               uint64_t off) {
    eng_cache_handle **p = &s->buckets[hash & (s->nbuckets - 1)];
    while (*p && ((*p)->hash != hash || (*p)->file != file || (*p)->off != off))
        p = &(*p)->chain;
    return p;
}

static void grow(shard *s) {
    size_t nb = s->nbuckets * 2;
    eng_cache_handle **b = kv_calloc(nb, sizeof *b);
    /* Without a bigger table lookups walk longer chains; still correct. */
    if (!b) return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        eng_cache_handle *e = s->buckets[i];
        while (e) {
            eng_cache_handle *next = e->chain;
            eng_cache_handle **slot = &b[e->hash & (nb - 1)];
            e->chain = *slot;
            *slot = e;
            e = next;
        }
    }
    kv_free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

static void lru_remove(eng_cache_handle *e) {
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = NULL;
}

static void lru_append(shard *s, eng_cache_handle *e) {
    e->next = &s->lru;
    e->prev = s->lru.prev;
    e->prev->next = e;
    s->lru.prev = e;
}

/* Take the entry at *slot out of the table. If nobody holds it, push it on
 * *dead for freeing once the lock is dropped; otherwise the last release
 * frees it. */
static void unlink_entry(shard *s, eng_cache_handle **slot,
                         eng_cache_handle **dead) {
    eng_cache_handle *e = *slot;
    *slot = e->chain;
    e->chain = NULL;
    e->in_cache = false;
    s->count--;
    s->usage -= e->charge;
    if (e->refs == 0) {
        lru_remove(e);
        e->chain = *dead;
        *dead = e;
    }
}

/* Shard i's part of the reserved bytes: equal parts, the remainder going
 * to the first shards, so the parts add up to exactly what is reserved. */
static size_t reserved_part(eng_cache *c, const shard *s) {
    size_t r = atomic_load_explicit(&c->reserved, memory_order_relaxed);
    size_t i = (size_t)(s - c->shards);
    return r / NSHARDS + (i < r % NSHARDS ? 1 : 0);
}

/* Evict the least recently used unpinned entries until the shard fits in
 * its share less its part of the reservations. */
static void evict(eng_cache *c, shard *s, eng_cache_handle **dead) {
    size_t part = reserved_part(c, s);
    size_t room = s->capacity > part ? s->capacity - part : 0;
    while (s->usage > room && s->lru.next != &s->lru) {
        eng_cache_handle *e = s->lru.next;
        eng_cache_handle **slot = find(s, e->hash, e->file, e->off);
        KV_ASSERT(*slot == e);
        unlink_entry(s, slot, dead);
    }
}

/* Run the deleters in the order the entries were unlinked (the list is a
 * stack), so eviction order is observable through them. */
static void free_list(eng_cache_handle *e) {
    eng_cache_handle *rev = NULL;
    while (e) {
        eng_cache_handle *next = e->chain;
        e->chain = rev;
        rev = e;
        e = next;
    }
    e = rev;
    while (e) {
        eng_cache_handle *next = e->chain;
        if (e->del) e->del(e->value);
        kv_free(e);
        e = next;
    }
}

static void shard_destroy(shard *s) {
    eng_cache_handle *dead = NULL;
    /* A handle still out would point into freed memory: caller's bug. */
    KV_ASSERT(s->pinned == 0);
    for (size_t i = 0; i < s->nbuckets; i++) {
        while (s->buckets[i]) unlink_entry(s, &s->buckets[i], &dead);
    }
    free_list(dead);
    kv_free(s->buckets);
    pthread_mutex_destroy(&s->mu);
}

int eng__cache_new(size_t capacity, eng_cache **out) {
    int rc = 0, ninit = 0;
    eng_cache *c = NULL;
    *out = NULL;
    c = kv_calloc(1, sizeof *c);
    if (!c) {
        rc = -ENOMEM;
        goto out;
    }
    for (; ninit < NSHARDS; ninit++) {
        shard *s = &c->shards[ninit];
        s->buckets = kv_calloc(MIN_BUCKETS, sizeof *s->buckets);
        if (!s->buckets) {
            rc = -ENOMEM;
            goto out;
        }
        int prc = pthread_mutex_init(&s->mu, NULL);
        if (prc) {
            kv_free(s->buckets);
            rc = -prc;
            goto out;
        }
        s->nbuckets = MIN_BUCKETS;
        /* The remainder goes to the first shards so the shares sum up to
         * exactly capacity. */
        s->capacity =
            capacity / NSHARDS + ((size_t)ninit < capacity % NSHARDS ? 1 : 0);
        s->lru.next = s->lru.prev = &s->lru;
    }
    c->capacity = capacity;
    *out = c;
    c = NULL;
out:
    if (c) {
        for (int i = 0; i < ninit; i++) shard_destroy(&c->shards[i]);
        kv_free(c);
    }
    return rc;
}

void eng__cache_free(eng_cache *c) {
    if (!c) return;
    /* A reservation still held would be given back to freed memory. */
    KV_ASSERT(atomic_load(&c->reserved) == 0);
    for (int i = 0; i < NSHARDS; i++) shard_destroy(&c->shards[i]);
    kv_free(c);
}

eng_cache_handle *eng__cache_lookup(eng_cache *c, uint64_t file, uint64_t off) {
    uint64_t h = key_hash(file, off);
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    eng_cache_handle *e = *find(s, h, file, off);
    if (e) {
        if (e->refs == 0) {
            lru_remove(e);
            s->pinned++;
        }
        e->refs++;
    }
    pthread_mutex_unlock(&s->mu);
    return e;
}

eng_cache_handle *eng__cache_insert(eng_cache *c, uint64_t file, uint64_t off,
                                    void *value, size_t charge,
                                    eng_cache_deleter del) {
    eng_cache_handle *e = kv_malloc(sizeof *e), *dead = NULL;
    if (!e) {
        if (del) del(value);
        return NULL;
    }
    uint64_t h = key_hash(file, off);
    *e = (eng_cache_handle){.file = file,
                            .off = off,
                            .hash = h,
                            .value = value,
                            .charge = charge,
                            .del = del,
                            .refs = 1,
                            .in_cache = true};
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    eng_cache_handle **slot = find(s, h, file, off);
    /* Unlinking leaves slot pointing at the old entry's successor, which
     * is as good a place for the new entry as any in the chain. */
    if (*slot) unlink_entry(s, slot, &dead);
    e->chain = *slot;
    *slot = e;
    s->count++;
    s->usage += charge;
    s->pinned++;
    if (s->count > s->nbuckets) grow(s);
    evict(c, s, &dead);
    pthread_mutex_unlock(&s->mu);
    free_list(dead);
    return e;
}

void *eng__cache_value(eng_cache_handle *h) {
    /* The value never changes while a handle is out: no lock needed. */
    return h->value;
}

void eng__cache_release(eng_cache *c, eng_cache_handle *h) {
    eng_cache_handle *dead = NULL;
    shard *s = shard_of(c, h->hash);
    pthread_mutex_lock(&s->mu);
    KV_ASSERT(h->refs > 0);
    if (--h->refs == 0) {
        s->pinned--;
        if (h->in_cache) {
            lru_append(s, h);
            /* The shard may have grown past its share while everything
             * was pinned; shrink it now that something can go. */
            evict(c, s, &dead);
        } else {
            dead = h;
        }
    }
    pthread_mutex_unlock(&s->mu);
    free_list(dead);
}

void eng__cache_erase_file(eng_cache *c, uint64_t file) {
    for (int i = 0; i < NSHARDS; i++) {
        shard *s = &c->shards[i];
        eng_cache_handle *dead = NULL;
        pthread_mutex_lock(&s->mu);
        for (size_t b = 0; b < s->nbuckets; b++) {
            eng_cache_handle **p = &s->buckets[b];
            while (*p) {
                if ((*p)->file == file)
                    unlink_entry(s, p, &dead);
                else
                    p = &(*p)->chain;
            }
        }
        pthread_mutex_unlock(&s->mu);
        free_list(dead);
    }
}

size_t eng__cache_usage(eng_cache *c) {
    size_t total = atomic_load(&c->reserved);
    for (int i = 0; i < NSHARDS; i++) {
        shard *s = &c->shards[i];
        pthread_mutex_lock(&s->mu);
        total += s->usage;
        pthread_mutex_unlock(&s->mu);
    }
    return total;
}

size_t eng__cache_capacity(const eng_cache *c) {
    return c->capacity;
}

void eng__cache_reserve(eng_cache *c, size_t bytes) {
    if (bytes == 0) return;
    atomic_fetch_add(&c->reserved, bytes);
    /* Make room now rather than at the shards' next inserts: the memory
     * the reservation stands for is already allocated. */
    for (int i = 0; i < NSHARDS; i++) {
        shard *s = &c->shards[i];
        eng_cache_handle *dead = NULL;
        pthread_mutex_lock(&s->mu);
        evict(c, s, &dead);
        pthread_mutex_unlock(&s->mu);
        free_list(dead);
    }
}

void eng__cache_unreserve(eng_cache *c, size_t bytes) {
    size_t was = atomic_fetch_sub(&c->reserved, bytes);
    KV_ASSERT(was >= bytes);
}

size_t eng__cache_reserved(eng_cache *c) {
    return atomic_load(&c->reserved);
}
