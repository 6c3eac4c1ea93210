/*
 * Bloom filters: one per table over its distinct user keys. Each key is
 * hashed once with 64-bit xxh3; k probe positions come from double hashing
 * (h1 + i*h2 mod m, 64-bit arithmetic, h2 odd), so a key costs one hash
 * however many probes it takes.
 *
 * Filter bytes: the bit array (m = 8 * its length bits), then k (u8), then a
 * format byte (1). Readers take k and m from the bytes, so the bits per key a
 * table was written with can change freely. A filter that is too short, has
 * an unknown format byte or an impossible k answers "may match": a bad filter
 * costs a block read, never a missed key. Layout and the false-positive
 * budget are in docs/engine-format.md, "Sorted tables".
 */
#include "engine/engine_int.h"

#define BLOOM_FORMAT 1
#define BLOOM_TRAILER 2
#define BLOOM_SEED 0
#define BLOOM_MAX_K 30

void eng__bloom_init(eng_bloom_builder *b, int bits_per_key) {
    b->hashes = NULL;
    b->n = b->cap = 0;
    b->bits_per_key = bits_per_key > 0 ? bits_per_key : 10;
}

void eng__bloom_release(eng_bloom_builder *b) {
    kv_free(b->hashes);
    b->hashes = NULL;
    b->n = b->cap = 0;
}

int eng__bloom_add(eng_bloom_builder *b, kv_slice ukey) {
    uint64_t h = kv_hash64(ukey.ptr, ukey.len, BLOOM_SEED);
    /* Versions of one user key arrive together; store the key once. */
    if (b->n > 0 && b->hashes[b->n - 1] == h) return 0;
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 256;
        uint64_t *p = kv_realloc(b->hashes, cap * sizeof *p);
        if (!p) return -ENOMEM;
        b->hashes = p;
        b->cap = cap;
    }
    b->hashes[b->n++] = h;
    return 0;
}

static int probes_for(int bits_per_key) {
    /* round(bits_per_key * ln 2) in integers, so no libm is needed */
    int64_t k = ((int64_t)bits_per_key * 693147 + 500000) / 1000000;
    return k < 1 ? 1 : (k > BLOOM_MAX_K ? BLOOM_MAX_K : (int)k);
}

/* The second hash is the first rotated by half a word, forced odd so the
 * probe sequence does not collapse when m is even. */
static inline uint64_t second_hash(uint64_t h) {
    return ((h >> 32) | (h << 32)) | 1;
}

int eng__bloom_finish(eng_bloom_builder *b, kv_buf *out) {
    uint64_t bits = (uint64_t)b->n * (uint64_t)b->bits_per_key;
    /* Small sets get a floor so the rate stays sane for tiny tables. */
    if (bits < 64) bits = 64;
    uint64_t bytes = (bits + 7) / 8;
    if (bytes > SIZE_MAX - BLOOM_TRAILER) return -ENOMEM;
    int k = probes_for(b->bits_per_key);
    int rc = kv_buf_reserve(out, (size_t)bytes + BLOOM_TRAILER);
    if (rc) return rc;
    uint8_t *array = out->ptr + out->len;
    memset(array, 0, (size_t)bytes);
    uint64_t m = bytes * 8;
    for (size_t i = 0; i < b->n; i++) {
        uint64_t h = b->hashes[i], delta = second_hash(h);
        for (int j = 0; j < k; j++) {
            uint64_t pos = h % m;
            array[pos >> 3] |= (uint8_t)(1u << (pos & 7));
            h += delta;
        }
    }
    array[bytes] = (uint8_t)k;
    array[bytes + 1] = BLOOM_FORMAT;
    out->len += (size_t)bytes + BLOOM_TRAILER;
    b->n = 0;
    return 0;
}

bool eng__bloom_may_match(kv_slice filter, kv_slice ukey) {
    if (filter.len < BLOOM_TRAILER + 1) return true;
    size_t bytes = filter.len - BLOOM_TRAILER;
    int k = filter.ptr[bytes];
    if (filter.ptr[bytes + 1] != BLOOM_FORMAT || k < 1 || k > BLOOM_MAX_K)
        return true;
    uint64_t m = (uint64_t)bytes * 8;
    uint64_t h = kv_hash64(ukey.ptr, ukey.len, BLOOM_SEED);
    uint64_t delta = second_hash(h);
    for (int j = 0; j < k; j++) {
        uint64_t pos = h % m;
        if (!(filter.ptr[pos >> 3] & (1u << (pos & 7)))) return false;
        h += delta;
    }
    return true;
}
