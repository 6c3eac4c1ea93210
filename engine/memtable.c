/*
 * The memtable: a skiplist of internal keys whose nodes live in an arena.
 *
 * Node layout (memory only, never written to disk): a small header (internal
 * key length, height), height forward links, then the entry bytes
 *   internal key (klen bytes) | varint value length | value.
 * Nodes are never removed or changed once linked, so a reader holding a node
 * may follow it for as long as it holds a reference on the memtable.
 *
 * Threading: one writer (the caller serialises eng__mem_add), any number of
 * lock-free readers. A node is filled in completely, then linked bottom-up
 * with release stores; readers load links with acquire, so a node they reach
 * is always fully written. The list height may be read stale: a reader that
 * sees the new height before its head link only finds NULL there and drops a
 * level. The arena, PRNG and height are touched by the writer alone.
 */
#include "engine/engine_int.h"

#include <stdalign.h>

#define MAX_HEIGHT 12
#define BLOCK_BYTES (256u * 1024u)
/* Entries bigger than this get a block of their own, so a large value does
 * not waste the rest of the current block. */
#define BIG_ENTRY (BLOCK_BYTES / 4)

typedef struct node node;
struct node {
    uint32_t klen;  /* internal key bytes after the links */
    uint8_t height; /* number of links, 1..MAX_HEIGHT */
    _Atomic(node *) next[];
};

typedef struct block block;
struct block {
    block *next; /* older blocks; all freed with the memtable */
    size_t size; /* bytes allocated for this block, header included */
};
_Static_assert(sizeof(block) % alignof(node) == 0, "block data alignment");

struct eng_memtable {
    atomic_int refs;
    atomic_int height;   /* levels in use, 1..MAX_HEIGHT */
    atomic_size_t bytes; /* arena bytes handed to nodes and entries */
    atomic_uint_least64_t count;
    _Atomic(node *) head[MAX_HEIGHT]; /* links of the (keyless) head node */
    /* writer only */
    uint64_t rng; /* xorshift64 state, never zero */
    uint8_t *cur; /* free bytes of the current block */
    size_t left;  /* how many */
    block *blocks;
};

/* A search target: an internal key split into user key and trailer, so a
 * lookup by user key and snapshot needs no buffer. */
typedef struct target {
    kv_slice ukey;
    uint64_t trailer;
} target;

static const uint8_t *node_key(const node *n) {
    return (const uint8_t *)&n->next[n->height];
}

static kv_slice node_ikey(const node *n) {
    return kv_slice_make(node_key(n), n->klen);
}

static kv_slice node_value(const node *n) {
    /* The value length was encoded by us in eng__mem_add; it is well formed
     * and the bytes follow it in the same allocation. */
    const uint8_t *p = node_key(n) + n->klen;
    uint64_t vlen = 0;
    for (int shift = 0;; shift += 7) {
        uint8_t b = *p++;
        vlen |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
    }
    return kv_slice_make(p, (size_t)vlen);
}

/* Same order as eng__ikey_cmp, of node n against target t. */
static int node_cmp(const node *n, const target *t) {
    kv_slice ik = node_ikey(n);
    int c = kv_slice_cmp(eng__ikey_user(ik), t->ukey);
    if (c) return c;
    uint64_t tr = eng__ikey_trailer(ik);
    return tr > t->trailer ? -1 : (tr < t->trailer ? 1 : 0);
}

/* First node >= t, or NULL. If prev is given, prev[i] is set to the links
 * array (of a node or the head) whose level-i link must point at a node
 * inserted as t: the writer's splice points. */
static node *find_ge(eng_memtable *m, const target *t,
                     _Atomic(node *) *prev[MAX_HEIGHT]) {
    _Atomic(node *) *links = m->head;
    int level = atomic_load_explicit(&m->height, memory_order_relaxed) - 1;
    node *bigger = NULL; /* last node found >= t: no need to compare again */
    for (;;) {
        node *nx = atomic_load_explicit(&links[level], memory_order_acquire);
        /* Fetch the node after nx while nx is compared: the search is a
         * chain of cache misses, and this overlaps two of them. */
        if (nx)
            __builtin_prefetch(
                atomic_load_explicit(&nx->next[level], memory_order_relaxed));
        if (nx && nx != bigger && node_cmp(nx, t) < 0) {
            links = nx->next;
            continue;
        }
        bigger = nx;
        if (prev) prev[level] = links;
        if (level == 0) return nx;
        level--;
    }
}

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Height with P(h > k) = 4^-k, from the state in *s. */
static int random_height(uint64_t *s) {
    uint64_t r = xorshift(s) >> 32;
    int h = 1;
    while (h < MAX_HEIGHT && (r & 3) == 0) {
        h++;
        r >>= 2;
    }
    return h;
}

/* n bytes aligned for a node, or NULL with the arena unchanged. */
static void *arena_alloc(eng_memtable *m, size_t n) {
    n = (n + alignof(node) - 1) & ~(size_t)(alignof(node) - 1);
    if (n <= m->left) {
        void *p = m->cur;
        m->cur += n;
        m->left -= n;
        atomic_fetch_add_explicit(&m->bytes, n, memory_order_relaxed);
        return p;
    }
    bool big = n > BIG_ENTRY;
    size_t size = sizeof(block) + (big ? n : BLOCK_BYTES);
    block *b = kv_map_alloc(size);
    if (!b) return NULL;
    b->size = size;
    b->next = m->blocks;
    m->blocks = b;
    /* Count what entries use, not the block: a memtable smaller than one
     * block must still fill up by its content. */
    atomic_fetch_add_explicit(&m->bytes, n, memory_order_relaxed);
    uint8_t *p = (uint8_t *)(b + 1);
    /* A big entry keeps the current block for the small ones after it; a
     * new regular block replaces the current one, whose tail is too small. */
    if (!big) {
        m->cur = p + n;
        m->left = BLOCK_BYTES - n;
    }
    return p;
}

int eng__mem_new(eng_memtable **out) {
    *out = NULL;
    eng_memtable *m = kv_calloc(1, sizeof(*m));
    if (!m) return -ENOMEM;
    atomic_init(&m->refs, 1);
    atomic_init(&m->height, 1);
    atomic_init(&m->bytes, 0);
    atomic_init(&m->count, 0);
    for (int i = 0; i < MAX_HEIGHT; i++) atomic_init(&m->head[i], NULL);
    m->rng = UINT64_C(0x9e3779b97f4a7c15);
    *out = m;
    return 0;
}

void eng__mem_ref(eng_memtable *m) {
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
}

void eng__mem_unref(eng_memtable *m) {
    if (!m) return;
    /* acq_rel: the last owner must see every other owner's use finished
     * before it frees the arena. */
    int prev = atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel);
    KV_ASSERT(prev > 0);
    if (prev != 1) return;
    block *b = m->blocks;
    while (b) {
        block *nx = b->next;
        kv_map_free(b, b->size);
        b = nx;
    }
    kv_free(m);
}

/* Besides -ENOMEM: -EINVAL for a bad type or seq or an internal key that is
 * already present, KV_ETOOLARGE past ENG_MAX_KEY / ENG_MAX_VALUE. Every
 * failure leaves the memtable as it was. */
int eng__mem_add(eng_memtable *m, uint64_t seq, int type, kv_slice key,
                 kv_slice value) {
    if (seq > ENG_MAX_SEQ || (type != ENG_TYPE_PUT && type != ENG_TYPE_DEL))
        return -EINVAL;
    if (key.len > ENG_MAX_KEY || value.len > ENG_MAX_VALUE) return KV_ETOOLARGE;

    target t = {key, eng__trailer(seq, type)};
    _Atomic(node *) *prev[MAX_HEIGHT];
    node *ge = find_ge(m, &t, prev);
    if (ge && node_cmp(ge, &t) == 0) return -EINVAL; /* seq reused */

    /* Draw the height from a copy so a failed allocation leaves the PRNG,
     * like everything else, as it was. */
    uint64_t rng = m->rng;
    int h = random_height(&rng);
    size_t klen = key.len + 8;
    size_t size = sizeof(node) + (size_t)h * sizeof(_Atomic(node *)) + klen +
                  kv_varint_len(value.len) + value.len;
    node *n = arena_alloc(m, size);
    if (!n) return -ENOMEM;
    m->rng = rng;

    n->klen = (uint32_t)klen;
    n->height = (uint8_t)h;
    uint8_t *p = (uint8_t *)node_key(n);
    if (key.len) memcpy(p, key.ptr, key.len);
    kv_put_u64(p + key.len, t.trailer);
    p += klen;
    p += kv_varint_encode(p, value.len);
    if (value.len) memcpy(p, value.ptr, value.len);

    int cur = atomic_load_explicit(&m->height, memory_order_relaxed);
    for (int i = cur; i < h; i++) prev[i] = m->head;
    if (h > cur) atomic_store_explicit(&m->height, h, memory_order_relaxed);
    for (int i = 0; i < h; i++) {
        /* n is not reachable yet: a relaxed store of its own link suffices;
         * the release store publishing n orders it (and the entry bytes). */
        node *nx = atomic_load_explicit(&prev[i][i], memory_order_relaxed);
        atomic_store_explicit(&n->next[i], nx, memory_order_relaxed);
        atomic_store_explicit(&prev[i][i], n, memory_order_release);
    }
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
    return 0;
}

int eng__mem_get(eng_memtable *m, kv_slice key, uint64_t snap_seq, int *type,
                 kv_buf *val) {
    if (snap_seq > ENG_MAX_SEQ) snap_seq = ENG_MAX_SEQ;
    target t = {key, eng__trailer(snap_seq, ENG_TYPE_SEEK)};
    node *n = find_ge(m, &t, NULL);
    if (!n) return KV_ENOTFOUND;
    kv_slice ik = node_ikey(n);
    if (!kv_slice_eq(eng__ikey_user(ik), key)) return KV_ENOTFOUND;
    *type = eng__ikey_type(ik);
    if (*type == ENG_TYPE_DEL) {
        kv_buf_reset(val);
        return 0;
    }
    kv_slice v = node_value(n);
    return kv_buf_set(val, v.ptr, v.len);
}

size_t eng__mem_bytes(const eng_memtable *m) {
    return atomic_load_explicit(&m->bytes, memory_order_relaxed);
}

uint64_t eng__mem_count(const eng_memtable *m) {
    return atomic_load_explicit(&m->count, memory_order_relaxed);
}

/* ---- iterator ------------------------------------------------------------ */

typedef struct mem_iter {
    eng_iiter base;
    eng_memtable *m; /* referenced until the iterator is freed */
    node *cur;       /* NULL: not valid */
    int status;      /* sticky error (bad seek target) */
} mem_iter;

static bool it_valid(eng_iiter *it) {
    return ((mem_iter *)it)->cur != NULL;
}

static void it_seek_first(eng_iiter *it) {
    mem_iter *mi = (mem_iter *)it;
    if (mi->status) return;
    mi->cur = atomic_load_explicit(&mi->m->head[0], memory_order_acquire);
}

static void it_seek(eng_iiter *it, kv_slice ikey) {
    mem_iter *mi = (mem_iter *)it;
    if (mi->status) return;
    if (ikey.len < 8) {
        /* Not an internal key: a caller bug, reported through status(). */
        mi->status = -EINVAL;
        mi->cur = NULL;
        return;
    }
    target t = {eng__ikey_user(ikey), eng__ikey_trailer(ikey)};
    mi->cur = find_ge(mi->m, &t, NULL);
}

static void it_next(eng_iiter *it) {
    mem_iter *mi = (mem_iter *)it;
    KV_ASSERT(mi->cur);
    node *n = atomic_load_explicit(&mi->cur->next[0], memory_order_acquire);
    mi->cur = n;
    /* Nodes lie in the arena in insertion order, not key order, so a scan
     * is a chain of cache misses: start fetching the next node while the
     * caller works on this one (which the previous step fetched). */
    if (n) {
        node *nx = atomic_load_explicit(&n->next[0], memory_order_relaxed);
        if (nx) __builtin_prefetch(nx);
    }
}

static kv_slice it_key(eng_iiter *it) {
    mem_iter *mi = (mem_iter *)it;
    KV_ASSERT(mi->cur);
    return node_ikey(mi->cur);
}

static kv_slice it_value(eng_iiter *it) {
    mem_iter *mi = (mem_iter *)it;
    KV_ASSERT(mi->cur);
    return node_value(mi->cur);
}

static int it_status(eng_iiter *it) {
    return ((mem_iter *)it)->status;
}

static void it_free(eng_iiter *it) {
    mem_iter *mi = (mem_iter *)it;
    if (!mi) return;
    eng__mem_unref(mi->m);
    kv_free(mi);
}

static const eng_iiter_ops mem_iter_ops = {
    .valid = it_valid,
    .seek_first = it_seek_first,
    .seek = it_seek,
    .next = it_next,
    .key = it_key,
    .value = it_value,
    .status = it_status,
    .free = it_free,
};

eng_iiter *eng__mem_iter(eng_memtable *m) {
    mem_iter *mi = kv_malloc(sizeof(*mi));
    if (!mi) return NULL;
    mi->base.ops = &mem_iter_ops;
    mi->m = m;
    mi->cur = NULL;
    mi->status = 0;
    eng__mem_ref(m);
    return &mi->base;
}
