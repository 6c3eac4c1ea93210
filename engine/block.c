/*
 * Blocks: sorted key/value entries with prefix-compressed keys, the unit a
 * table stores its data, index and properties in. Each entry is
 * "varint shared | varint unshared | varint value_len | key suffix | value";
 * every restart_interval-th entry is a restart point that stores its whole
 * key (shared = 0), and the block ends with the restart offsets (u32 each)
 * and their count (u32), little-endian.
 *
 * Invariants: a parsed block's restart offsets are strictly increasing, the
 * first is 0 and all lie inside the entry area. The iterator trusts nothing
 * else: every varint, length and shared-prefix count is checked against the
 * block's end before use, and any failure leaves the iterator invalid with
 * KV_ECORRUPT. With eng__ikey_cmp as the order every key must also be a
 * well-formed internal key, so comparisons never read outside a key.
 * The format is documented in docs/engine-format.md, "Sorted tables".
 */
#include "engine/engine_int.h"

void eng__bb_init(eng_block_builder *b, int restart_interval) {
    memset(b, 0, sizeof *b);
    kv_buf_init(&b->buf);
    kv_buf_init(&b->last_key);
    b->interval = restart_interval > 0 ? restart_interval : 16;
}

void eng__bb_release(eng_block_builder *b) {
    kv_buf_release(&b->buf);
    kv_buf_release(&b->last_key);
    kv_free(b->restarts);
    b->restarts = NULL;
    b->nrestarts = b->cap_restarts = 0;
    b->counter = 0;
    b->count = 0;
}

void eng__bb_reset(eng_block_builder *b) {
    kv_buf_reset(&b->buf);
    kv_buf_reset(&b->last_key);
    b->nrestarts = 0;
    b->counter = 0;
    b->count = 0;
}

static size_t shared_prefix(kv_slice a, kv_slice b) {
    size_t n = KV_MIN(a.len, b.len), i = 0;
    while (i < n && a.ptr[i] == b.ptr[i]) i++;
    return i;
}

/* Everything that can fail (growth of the three buffers) happens before the
 * first byte is written, so a failed add leaves the builder unchanged. */
int eng__bb_add(eng_block_builder *b, kv_slice key, kv_slice value) {
    bool restart = b->count == 0 || b->counter >= b->interval;
    size_t shared =
        restart ? 0 : shared_prefix(kv_buf_slice(&b->last_key), key);
    size_t unshared = key.len - shared;
    size_t need = 3 * KV_VARINT_MAX + unshared + value.len;
    /* Offsets in the restart array are u32: keep the whole block below 4 GiB
     * (tables cut blocks far earlier; this guards the format itself). */
    if (value.len > UINT32_MAX || key.len > UINT32_MAX ||
        b->buf.len + need + 4 * (b->nrestarts + 2) > UINT32_MAX)
        return KV_ETOOLARGE;
    int rc = kv_buf_reserve(&b->buf, need);
    if (rc) return rc;
    if (key.len > b->last_key.len) {
        rc = kv_buf_reserve(&b->last_key, key.len - b->last_key.len);
        if (rc) return rc;
    }
    if (restart && b->nrestarts == b->cap_restarts) {
        size_t cap = b->cap_restarts ? 2 * b->cap_restarts : 16;
        uint32_t *r = kv_realloc(b->restarts, cap * sizeof *r);
        if (!r) return -ENOMEM;
        b->restarts = r;
        b->cap_restarts = cap;
    }

    if (restart) {
        b->restarts[b->nrestarts++] = (uint32_t)b->buf.len;
        b->counter = 0;
    }
    uint8_t *p = b->buf.ptr + b->buf.len;
    p += kv_varint_encode(p, shared);
    p += kv_varint_encode(p, unshared);
    p += kv_varint_encode(p, value.len);
    if (unshared) memcpy(p, key.ptr + shared, unshared);
    p += unshared;
    if (value.len) memcpy(p, value.ptr, value.len);
    p += value.len;
    b->buf.len = (size_t)(p - b->buf.ptr);

    if (unshared) memcpy(b->last_key.ptr + shared, key.ptr + shared, unshared);
    b->last_key.len = key.len;
    b->counter++;
    b->count++;
    return 0;
}

size_t eng__bb_size(const eng_block_builder *b) {
    return b->buf.len + 4 * b->nrestarts + 4;
}

int eng__bb_finish(eng_block_builder *b, kv_slice *out) {
    int rc = kv_buf_reserve(&b->buf, 4 * b->nrestarts + 4);
    if (rc) return rc;
    for (size_t i = 0; i < b->nrestarts; i++)
        kv_buf_put_u32(&b->buf, b->restarts[i]); /* reserved: cannot fail */
    kv_buf_put_u32(&b->buf, (uint32_t)b->nrestarts);
    *out = kv_buf_slice(&b->buf);
    return 0;
}

/* ---- parsed blocks ---- */

/* On failure the caller keeps ownership of data, even when own is true. */
int eng__block_parse(const uint8_t *data, size_t len, bool own,
                     eng_block **out) {
    *out = NULL;
    if (len < 4) return KV_ECORRUPT;
    uint32_t n = kv_get_u32(data + len - 4);
    if (n > (len - 4) / 4) return KV_ECORRUPT;
    size_t size = len - 4 - 4 * (size_t)n;
    const uint8_t *restarts = data + size;
    /* An empty block has no restarts; otherwise the first entry must be a
     * restart point and the offsets must ascend inside the entry area, which
     * is what the binary search in seek relies on. */
    if (n == 0 && size != 0) return KV_ECORRUPT;
    uint32_t prev = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t off = kv_get_u32(restarts + 4 * (size_t)i);
        if (off >= size || (i == 0 && off != 0) || (i > 0 && off <= prev))
            return KV_ECORRUPT;
        prev = off;
    }
    eng_block *b = kv_malloc(sizeof *b);
    if (!b) return -ENOMEM;
    b->data = data;
    b->size = size;
    b->nrestarts = n;
    b->restarts = restarts;
    b->own = own;
    *out = b;
    return 0;
}

void eng__block_free(eng_block *b) {
    if (!b) return;
    if (b->own) kv_free((void *)b->data);
    kv_free(b);
}

size_t eng__block_charge(const eng_block *b) {
    return sizeof *b + (b->own ? b->size + 4 * (size_t)b->nrestarts + 4 : 0);
}

/* ---- iterator ---- */

typedef struct block_iter {
    eng_iiter base;
    const eng_block *b;
    eng_cmp_fn cmp;
    bool ikeys; /* keys must be well-formed internal keys */
    void (*release_fn)(void *);
    void *release_arg;
    size_t cur;  /* offset of the current entry; b->size when invalid */
    size_t next; /* offset just past the current entry */
    kv_buf key;
    kv_slice value;
    int status;
} block_iter;

static void set_invalid(block_iter *it, int rc) {
    it->cur = it->next = it->b->size;
    it->key.len = 0;
    it->value = kv_slice_make(NULL, 0);
    if (rc && it->status == 0) it->status = rc;
}

/* Decode the entry at off, whose key shares a prefix with it->key (empty at a
 * restart point). 0, or an error with the iterator made invalid. */
static int decode_at(block_iter *it, size_t off) {
    const eng_block *b = it->b;
    if (off >= b->size) {
        set_invalid(it, KV_ECORRUPT);
        return KV_ECORRUPT;
    }
    kv_reader r = kv_reader_make(kv_slice_make(b->data + off, b->size - off));
    uint64_t shared, unshared, vlen;
    kv_slice suffix, value;
    int rc = KV_ECORRUPT;
    if (kv_get_varint(&r, &shared) || kv_get_varint(&r, &unshared) ||
        kv_get_varint(&r, &vlen))
        goto fail;
    if (shared > it->key.len) goto fail;
    if (unshared > kv_reader_left(&r)) goto fail;
    if (kv_get_bytes(&r, (size_t)unshared, &suffix)) goto fail;
    if (vlen > kv_reader_left(&r)) goto fail;
    if (kv_get_bytes(&r, (size_t)vlen, &value)) goto fail;
    it->key.len = (size_t)shared;
    rc = kv_buf_append(&it->key, suffix.ptr, suffix.len);
    if (rc) goto fail;
    if (it->ikeys && !eng__ikey_valid(kv_buf_slice(&it->key))) {
        rc = KV_ECORRUPT;
        goto fail;
    }
    it->value = value;
    it->cur = off;
    it->next = (size_t)(r.p - b->data);
    return 0;
fail:
    set_invalid(it, rc);
    return rc;
}

static size_t restart_off(const eng_block *b, uint32_t i) {
    return kv_get_u32(b->restarts + 4 * (size_t)i);
}

static bool bi_valid(eng_iiter *base) {
    block_iter *it = (block_iter *)base;
    return it->status == 0 && it->cur < it->b->size;
}

static void bi_seek_first(eng_iiter *base) {
    block_iter *it = (block_iter *)base;
    if (it->status) return;
    it->key.len = 0;
    if (it->b->nrestarts == 0) {
        set_invalid(it, 0);
        return;
    }
    decode_at(it, 0);
}

static void bi_next(eng_iiter *base) {
    block_iter *it = (block_iter *)base;
    if (!bi_valid(base)) return;
    if (it->next >= it->b->size) {
        set_invalid(it, 0);
        return;
    }
    decode_at(it, it->next);
}

static void bi_seek(eng_iiter *base, kv_slice target) {
    block_iter *it = (block_iter *)base;
    const eng_block *b = it->b;
    if (it->status) return;
    if (b->nrestarts == 0) {
        set_invalid(it, 0);
        return;
    }
    /* Find the last restart point whose key is < target; the answer is at
     * or after it. Restart keys are stored whole, so each probe decodes one
     * entry with an empty previous key. */
    uint32_t lo = 0, hi = b->nrestarts - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        it->key.len = 0;
        if (decode_at(it, restart_off(b, mid))) return;
        if (it->cmp(kv_buf_slice(&it->key), target) < 0)
            lo = mid;
        else
            hi = mid - 1;
    }
    it->key.len = 0;
    if (decode_at(it, restart_off(b, lo))) return;
    while (it->cmp(kv_buf_slice(&it->key), target) < 0) {
        if (it->next >= b->size) {
            set_invalid(it, 0);
            return;
        }
        if (decode_at(it, it->next)) return;
    }
}

static kv_slice bi_key(eng_iiter *base) {
    block_iter *it = (block_iter *)base;
    return kv_buf_slice(&it->key);
}

static kv_slice bi_value(eng_iiter *base) {
    return ((block_iter *)base)->value;
}

static int bi_status(eng_iiter *base) {
    return ((block_iter *)base)->status;
}

static void bi_free(eng_iiter *base) {
    block_iter *it = (block_iter *)base;
    if (!it) return;
    kv_buf_release(&it->key);
    if (it->release_fn) it->release_fn(it->release_arg);
    kv_free(it);
}

static const eng_iiter_ops block_iter_ops = {
    .valid = bi_valid,
    .seek_first = bi_seek_first,
    .seek = bi_seek,
    .next = bi_next,
    .key = bi_key,
    .value = bi_value,
    .status = bi_status,
    .free = bi_free,
};

/* NULL on -ENOMEM; release_fn has not run then (the caller still holds what
 * it would have released). */
eng_iiter *eng__block_iter(const eng_block *b, eng_cmp_fn cmp,
                           void (*release_fn)(void *), void *release_arg) {
    block_iter *it = kv_calloc(1, sizeof *it);
    if (!it) return NULL;
    it->base.ops = &block_iter_ops;
    it->b = b;
    it->cmp = cmp;
    it->ikeys = cmp == eng__ikey_cmp;
    it->release_fn = release_fn;
    it->release_arg = release_arg;
    kv_buf_init(&it->key);
    it->cur = it->next = b->size;
    return &it->base;
}
