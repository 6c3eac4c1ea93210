/*
 * Block cache tests: hits and misses, exact LRU eviction order within one
 * shard, the capacity bound, pinned entries, replacement, erase_file,
 * reservations, allocation failure and a multi-threaded stress run that
 * checks every deleter ran exactly once.
 */
#include "engine/engine_int.h"

#include <criterion/criterion.h>
#include <stdlib.h>

/* A cached value: remembers its key so a hit can be checked. */
typedef struct val {
    uint64_t file, off;
    int id;
} val;

/* Deleter log (each Criterion test runs in its own process). */
static int deleted_ids[4096];
static int ndeleted;

static void del_logged(void *p) {
    val *v = p;
    cr_assert_lt(ndeleted, (int)KV_ARRAY_LEN(deleted_ids));
    deleted_ids[ndeleted++] = v->id;
    free(v);
}

static val *mkval(uint64_t file, uint64_t off, int id) {
    val *v = malloc(sizeof *v);
    cr_assert_not_null(v);
    v->file = file;
    v->off = off;
    v->id = id;
    return v;
}

static eng_cache *mkcache(size_t cap) {
    eng_cache *c = NULL;
    cr_assert_eq(eng__cache_new(cap, &c), 0);
    cr_assert_not_null(c);
    return c;
}

/* Insert and release at once; returns the value inserted. */
static val *put(eng_cache *c, uint64_t file, uint64_t off, int id,
                size_t charge) {
    val *v = mkval(file, off, id);
    eng_cache_handle *h =
        eng__cache_insert(c, file, off, v, charge, del_logged);
    cr_assert_not_null(h);
    cr_assert_eq(eng__cache_value(h), v);
    eng__cache_release(c, h);
    return v;
}

/* The id cached under (file, off), or -1 if absent. */
static int get(eng_cache *c, uint64_t file, uint64_t off) {
    eng_cache_handle *h = eng__cache_lookup(c, file, off);
    if (!h) return -1;
    val *v = eng__cache_value(h);
    cr_assert_eq(v->file, file);
    cr_assert_eq(v->off, off);
    int id = v->id;
    eng__cache_release(c, h);
    return id;
}

static void noop_del(void *p) {}

/* Offsets o (file 7) whose keys share a shard with (7, 0), found from the
 * outside: with capacity 16 every shard holds one unit of charge, so a
 * second entry evicts the first exactly when both land in the same shard. */
static int same_shard_offsets(uint64_t *offs, int want) {
    int n = 0;
    offs[n++] = 0;
    for (uint64_t o = 1; n < want && o < 10000; o++) {
        eng_cache *c = mkcache(16);
        int one = 1;
        eng__cache_release(c, eng__cache_insert(c, 7, 0, &one, 1, noop_del));
        eng__cache_release(c, eng__cache_insert(c, 7, o, &one, 1, noop_del));
        eng_cache_handle *h = eng__cache_lookup(c, 7, 0);
        if (h)
            eng__cache_release(c, h);
        else
            offs[n++] = o;
        eng__cache_free(c);
    }
    return n;
}

Test(cache, hit_and_miss) {
    eng_cache *c = mkcache(1000);
    cr_assert_null(eng__cache_lookup(c, 1, 0));
    cr_assert_eq(eng__cache_usage(c), 0);
    put(c, 1, 0, 10, 30);
    put(c, 1, 4096, 11, 20);
    put(c, 2, 0, 12, 5);
    cr_assert_eq(get(c, 1, 0), 10);
    cr_assert_eq(get(c, 1, 4096), 11);
    cr_assert_eq(get(c, 2, 0), 12);
    cr_assert_eq(get(c, 1, 1), -1);
    cr_assert_eq(get(c, 2, 4096), -1);
    cr_assert_eq(get(c, 3, 0), -1);
    cr_assert_eq(eng__cache_usage(c), 55);

    /* Two handles on one entry: both see the value, both must release. */
    eng_cache_handle *a = eng__cache_lookup(c, 1, 0);
    eng_cache_handle *b = eng__cache_lookup(c, 1, 0);
    cr_assert_not_null(a);
    cr_assert_eq(a, b);
    eng__cache_release(c, a);
    cr_assert_eq(((val *)eng__cache_value(b))->id, 10);
    eng__cache_release(c, b);
    cr_assert_eq(ndeleted, 0);

    eng__cache_free(c);
    cr_assert_eq(ndeleted, 3);
}

Test(cache, lru_eviction_order) {
    uint64_t o[6];
    cr_assert_eq(same_shard_offsets(o, 6), 6);
    /* 48 over 16 shards: the shard holds three units. */
    eng_cache *c = mkcache(48);
    put(c, 7, o[0], 0, 1);
    put(c, 7, o[1], 1, 1);
    put(c, 7, o[2], 2, 1);
    cr_assert_eq(ndeleted, 0);
    cr_assert_eq(get(c, 7, o[0]), 0); /* order now 1, 2, 0 */

    put(c, 7, o[3], 3, 1);
    cr_assert_eq(ndeleted, 1);
    cr_assert_eq(deleted_ids[0], 1);
    put(c, 7, o[4], 4, 1); /* order was 2, 0, 3 */
    cr_assert_eq(ndeleted, 2);
    cr_assert_eq(deleted_ids[1], 2);
    cr_assert_eq(get(c, 7, o[1]), -1);
    cr_assert_eq(get(c, 7, o[2]), -1);
    cr_assert_eq(get(c, 7, o[0]), 0);
    cr_assert_eq(get(c, 7, o[3]), 3);
    cr_assert_eq(get(c, 7, o[4]), 4); /* order 0, 3, 4 */
    cr_assert_eq(ndeleted, 2);
    cr_assert_eq(eng__cache_usage(c), 3);

    /* A charge of two pushes out the two oldest. */
    put(c, 7, o[5], 5, 2);
    cr_assert_eq(ndeleted, 4);
    cr_assert_eq(deleted_ids[2], 0);
    cr_assert_eq(deleted_ids[3], 3);
    cr_assert_eq(get(c, 7, o[4]), 4);
    cr_assert_eq(get(c, 7, o[5]), 5);
    cr_assert_eq(eng__cache_usage(c), 3);

    eng__cache_free(c);
    cr_assert_eq(ndeleted, 6);
}

Test(cache, capacity_bound) {
    const size_t cap = 10000;
    eng_cache *c = mkcache(cap);
    srand(42);
    for (int i = 0; i < 3000; i++) {
        size_t charge = 1 + (size_t)(rand() % 100);
        put(c, (uint64_t)(rand() % 8), (uint64_t)rand(), i, charge);
        cr_assert_leq(eng__cache_usage(c), cap, "insert %d", i);
    }
    /* Every shard is full to within one entry's charge. */
    cr_assert_geq(eng__cache_usage(c), cap - 16 * 99);
    int evicted = ndeleted;
    cr_assert_gt(evicted, 0);

    /* An entry larger than a shard's share is usable while held and goes
     * as soon as it is released. */
    val *big = mkval(9, 0, 9999);
    eng_cache_handle *h = eng__cache_insert(c, 9, 0, big, cap, del_logged);
    cr_assert_not_null(h);
    cr_assert_eq(eng__cache_value(h), big);
    cr_assert_eq(get(c, 9, 0), 9999);
    eng__cache_release(c, h);
    cr_assert_eq(get(c, 9, 0), -1);
    cr_assert_leq(eng__cache_usage(c), cap);
    cr_assert_eq(deleted_ids[ndeleted - 1], 9999);

    eng__cache_free(c);
    cr_assert_eq(ndeleted, 3001);
}

Test(cache, zero_capacity_caches_nothing) {
    eng_cache *c = mkcache(0);
    val *v = mkval(1, 0, 1);
    eng_cache_handle *h = eng__cache_insert(c, 1, 0, v, 10, del_logged);
    cr_assert_not_null(h);
    cr_assert_eq(get(c, 1, 0), 1); /* in use, so still found */
    cr_assert_eq(ndeleted, 0);
    eng__cache_release(c, h);
    cr_assert_eq(ndeleted, 1);
    cr_assert_eq(get(c, 1, 0), -1);
    cr_assert_eq(eng__cache_usage(c), 0);
    eng__cache_free(c);
}

Test(cache, pinned_entries_survive_pressure) {
    enum { N = 64 };
    eng_cache *c = mkcache(16);
    eng_cache_handle *hs[N];
    for (int i = 0; i < N; i++) {
        hs[i] =
            eng__cache_insert(c, 3, (uint64_t)i * 4096,
                              mkval(3, (uint64_t)i * 4096, i), 1, del_logged);
        cr_assert_not_null(hs[i]);
    }
    /* Everything is pinned: usage exceeds capacity, nothing is freed. */
    cr_assert_eq(ndeleted, 0);
    cr_assert_eq(eng__cache_usage(c), N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(((val *)eng__cache_value(hs[i]))->id, i);
        cr_assert_eq(get(c, 3, (uint64_t)i * 4096), i);
    }
    for (int i = 0; i < N; i++) eng__cache_release(c, hs[i]);
    cr_assert_leq(eng__cache_usage(c), 16);
    int present = 0;
    for (int i = 0; i < N; i++) present += get(c, 3, (uint64_t)i * 4096) >= 0;
    cr_assert_eq((size_t)present, eng__cache_usage(c));
    cr_assert_eq(ndeleted, N - present);
    eng__cache_free(c);
    cr_assert_eq(ndeleted, N);
}

Test(cache, replace_key) {
    eng_cache *c = mkcache(1000);
    put(c, 1, 0, 1, 10);
    put(c, 1, 0, 2, 20);
    cr_assert_eq(ndeleted, 1);
    cr_assert_eq(deleted_ids[0], 1);
    cr_assert_eq(get(c, 1, 0), 2);
    cr_assert_eq(eng__cache_usage(c), 20);

    /* Replaced while in use: the old value stays readable through its
     * handle, stops counting, and is freed on release. */
    eng_cache_handle *old = eng__cache_lookup(c, 1, 0);
    cr_assert_not_null(old);
    put(c, 1, 0, 3, 30);
    cr_assert_eq(ndeleted, 1);
    cr_assert_eq(((val *)eng__cache_value(old))->id, 2);
    cr_assert_eq(get(c, 1, 0), 3);
    cr_assert_eq(eng__cache_usage(c), 30);
    eng__cache_release(c, old);
    cr_assert_eq(ndeleted, 2);
    cr_assert_eq(deleted_ids[1], 2);
    cr_assert_eq(get(c, 1, 0), 3);

    eng__cache_free(c);
    cr_assert_eq(ndeleted, 3);
    cr_assert_eq(deleted_ids[2], 3);
}

Test(cache, erase_file) {
    eng_cache *c = mkcache(100000);
    /* Enough entries that every shard's table has grown. */
    for (int i = 0; i < 300; i++) {
        put(c, 1, (uint64_t)i, i, 1);
        put(c, 2, (uint64_t)i, 1000 + i, 1);
    }
    eng_cache_handle *pinned = eng__cache_lookup(c, 1, 7);
    cr_assert_not_null(pinned);
    eng__cache_erase_file(c, 1);
    cr_assert_eq(ndeleted, 299);
    for (int i = 0; i < ndeleted; i++) cr_assert_lt(deleted_ids[i], 1000);
    cr_assert_eq(eng__cache_usage(c), 300);
    for (int i = 0; i < 300; i++) {
        cr_assert_eq(get(c, 1, (uint64_t)i), -1);
        cr_assert_eq(get(c, 2, (uint64_t)i), 1000 + i);
    }
    /* The erased entry held by a reader is still intact, freed on release. */
    cr_assert_eq(((val *)eng__cache_value(pinned))->id, 7);
    eng__cache_release(c, pinned);
    cr_assert_eq(ndeleted, 300);
    cr_assert_eq(deleted_ids[299], 7);

    eng__cache_erase_file(c, 5); /* no entries: a no-op */
    cr_assert_eq(eng__cache_usage(c), 300);
    eng__cache_free(c);
    cr_assert_eq(ndeleted, 600);
}

/* Reserved bytes (an open table's index and filter copies) count in the
 * usage, push unpinned entries out of every shard, are never evicted
 * themselves, and stop counting once given back. */
Test(cache, reservations_evict_entries_and_count_until_given_back) {
    const size_t cap = 16000;
    eng_cache *c = mkcache(cap);
    for (int i = 0; i < 1000; i++) put(c, 1, (uint64_t)i, i, 20);
    size_t full = eng__cache_usage(c);
    cr_assert_geq(full, cap - 16 * 20);
    cr_assert_leq(full, cap);
    int present = 0;
    for (int i = 0; i < 1000; i++) present += get(c, 1, (uint64_t)i) >= 0;

    /* Half the capacity: about half the entries go, from every shard. */
    eng__cache_reserve(c, cap / 2);
    cr_assert_eq(eng__cache_capacity(c), cap);
    cr_assert_eq(eng__cache_reserved(c), cap / 2);
    size_t usage = eng__cache_usage(c);
    cr_assert_leq(usage, cap, "usage %zu", usage);
    cr_assert_geq(usage, cap - 16 * 20);
    int left = 0;
    for (int i = 0; i < 1000; i++) left += get(c, 1, (uint64_t)i) >= 0;
    cr_assert_eq((size_t)left * 20, usage - cap / 2);
    cr_assert_lt(left, present * 6 / 10, "%d of %d entries left", left,
                 present);
    cr_assert_eq(ndeleted, 1000 - left);

    /* New entries only get what the reservation leaves. */
    for (int i = 0; i < 1000; i++) {
        put(c, 2, (uint64_t)i, 10000 + i, 20);
        cr_assert_leq(eng__cache_usage(c), cap, "insert %d", i);
    }

    /* Beyond the capacity nothing unpinned stays, and a pinned entry lives
     * until it is released. */
    eng__cache_reserve(c, cap);
    cr_assert_eq(eng__cache_usage(c), cap / 2 + cap);
    cr_assert_eq(ndeleted, 2000);
    val *v = mkval(3, 0, 99999);
    eng_cache_handle *h = eng__cache_insert(c, 3, 0, v, 20, del_logged);
    cr_assert_not_null(h);
    cr_assert_eq(get(c, 3, 0), 99999);
    eng__cache_release(c, h);
    cr_assert_eq(get(c, 3, 0), -1);
    cr_assert_eq(ndeleted, 2001);

    /* Given back, the room is there again. */
    eng__cache_unreserve(c, cap);
    eng__cache_unreserve(c, cap / 2);
    cr_assert_eq(eng__cache_reserved(c), 0);
    cr_assert_eq(eng__cache_usage(c), 0);
    for (int i = 0; i < 100; i++) put(c, 4, (uint64_t)i, i, 20);
    cr_assert_eq(eng__cache_usage(c), 2000);
    eng__cache_free(c);
    cr_assert_eq(ndeleted, 2101);
}

Test(cache, insert_allocation_failure_calls_deleter) {
    eng_cache *c = mkcache(1000);
    put(c, 1, 0, 1, 10);
    kv_alloc_fail_after(0);
    eng_cache_handle *h =
        eng__cache_insert(c, 1, 8, mkval(1, 8, 2), 10, del_logged);
    kv_alloc_fail_after(-1);
    cr_assert_null(h);
    cr_assert_eq(ndeleted, 1);
    cr_assert_eq(deleted_ids[0], 2);
    cr_assert_eq(get(c, 1, 8), -1);
    cr_assert_eq(get(c, 1, 0), 1);
    cr_assert_eq(eng__cache_usage(c), 10);
    eng__cache_free(c);
    cr_assert_eq(ndeleted, 2);
}

Test(cache, table_growth_failure_is_harmless) {
    eng_cache *c = mkcache(1 << 20);
    long before = kv_alloc_injected_failures();
    for (int i = 0; i < 1000; i++) {
        /* The entry allocation succeeds, any table growth fails. */
        kv_alloc_fail_after(1);
        eng_cache_handle *h =
            eng__cache_insert(c, 4, (uint64_t)i, mkval(4, i, i), 1, del_logged);
        kv_alloc_fail_after(-1);
        cr_assert_not_null(h);
        eng__cache_release(c, h);
    }
    cr_assert_gt(kv_alloc_injected_failures(), before);
    for (int i = 0; i < 1000; i++) cr_assert_eq(get(c, 4, (uint64_t)i), i);
    cr_assert_eq(eng__cache_usage(c), 1000);
    cr_assert_eq(ndeleted, 0);
    eng__cache_free(c);
    cr_assert_eq(ndeleted, 1000);
}

Test(cache, new_allocation_failure) {
    eng_cache *c = NULL;
    int k = 0;
    for (;; k++) {
        kv_alloc_fail_after(k);
        int rc = eng__cache_new(100, &c);
        kv_alloc_fail_after(-1);
        if (rc == 0) break;
        cr_assert_eq(rc, -ENOMEM);
        cr_assert_null(c);
    }
    cr_assert_gt(k, 1); /* the cache and its shards' tables all allocate */
    cr_assert_not_null(c);
    put(c, 1, 1, 1, 1);
    cr_assert_eq(get(c, 1, 1), 1);
    eng__cache_free(c);
}

/* ---- stress ---- */

enum { STRESS_THREADS = 4, STRESS_MAX_OPS = 100000 };
enum { STRESS_IDS = STRESS_THREADS * STRESS_MAX_OPS };
static atomic_int stress_freed[STRESS_IDS];
static atomic_int stress_next_id;
static atomic_int stress_bad;

static void stress_del(void *p) {
    val *v = p;
    atomic_fetch_add(&stress_freed[v->id], 1);
    free(v);
}

typedef struct stress_arg {
    eng_cache *c;
    uint64_t seed;
    uint64_t deadline;
    long ops;
} stress_arg;

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *stress_run(void *p) {
    stress_arg *a = p;
    eng_cache_handle *held[4] = {NULL};
    for (long i = 0; i < STRESS_MAX_OPS; i++) {
        if ((i & 255) == 0 && kv_now_ns() > a->deadline) break;
        uint64_t r = xorshift(&a->seed);
        uint64_t file = r % 4, off = (r >> 8) % 512;
        int slot = (int)((r >> 20) % 4);
        eng_cache_handle *h;
        if (held[slot]) {
            eng__cache_release(a->c, held[slot]);
            held[slot] = NULL;
        }
        switch ((r >> 24) % 8) {
        case 0:
        case 1:
        case 2:
        case 3:
            h = eng__cache_lookup(a->c, file, off);
            break;
        case 7:
            if ((r >> 32) % 64 == 0) {
                eng__cache_erase_file(a->c, file);
                continue;
            }
            /* fall through */
        default: {
            int id = atomic_fetch_add(&stress_next_id, 1);
            h = eng__cache_insert(a->c, file, off, mkval(file, off, id),
                                  1 + (r >> 40) % 16, stress_del);
            if (!h) atomic_fetch_add(&stress_bad, 1);
        }
        }
        if (!h) continue;
        val *v = eng__cache_value(h);
        if (v->file != file || v->off != off) atomic_fetch_add(&stress_bad, 1);
        /* Hold some handles across other threads' operations. */
        if ((r >> 48) % 2)
            held[slot] = h;
        else
            eng__cache_release(a->c, h);
        a->ops++;
    }
    for (int s = 0; s < 4; s++) {
        if (held[s]) eng__cache_release(a->c, held[s]);
    }
    return NULL;
}

Test(cache, threads_stress) {
    const size_t cap = 16 * 200;
    eng_cache *c = mkcache(cap);
    pthread_t th[STRESS_THREADS];
    stress_arg args[STRESS_THREADS];
    uint64_t deadline = kv_now_ns() + 1000000000ull;
    for (int i = 0; i < STRESS_THREADS; i++) {
        args[i] = (stress_arg){c, 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1),
                               deadline, 0};
        cr_assert_eq(pthread_create(&th[i], NULL, stress_run, &args[i]), 0);
    }
    long ops = 0;
    for (int i = 0; i < STRESS_THREADS; i++) {
        pthread_join(th[i], NULL);
        ops += args[i].ops;
    }
    cr_assert_gt(ops, 1000);
    cr_assert_eq(atomic_load(&stress_bad), 0);
    /* Nothing is pinned any more, so the bound holds again. */
    cr_assert_leq(eng__cache_usage(c), cap);

    int n = atomic_load(&stress_next_id);
    int live = 0;
    for (int i = 0; i < n; i++) {
        int f = atomic_load(&stress_freed[i]);
        cr_assert_leq(f, 1, "value %d freed %d times", i, f);
        live += f == 0;
    }
    cr_assert_gt(live, 0);
    eng__cache_free(c);
    for (int i = 0; i < n; i++)
        cr_assert_eq(atomic_load(&stress_freed[i]), 1, "value %d", i);
}
