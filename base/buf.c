/*
 * Slices, owned buffers, varint coding and the decoding cursor. Decoders
 * never read past the cursor's end and never change it on failure.
 */
#include "base/base.h"

void kv_buf_init(kv_buf *b) {
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
}

void kv_buf_release(kv_buf *b) {
    kv_free(b->ptr);
    kv_buf_init(b);
}

int kv_buf_reserve(kv_buf *b, size_t n) {
    if (n > SIZE_MAX - b->len) return -ENOMEM;
    size_t need = b->len + n;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = kv_realloc(b->ptr, cap);
    if (!p) return -ENOMEM;
    b->ptr = p;
    b->cap = cap;
    return 0;
}

int kv_buf_append(kv_buf *b, const void *p, size_t n) {
    int rc = kv_buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->ptr + b->len, p, n);
    b->len += n;
    return 0;
}

int kv_buf_set(kv_buf *b, const void *p, size_t n) {
    /* Grow first so a failure leaves the old contents in place. */
    if (n > b->cap) {
        size_t len = b->len;
        b->len = 0;
        int rc = kv_buf_reserve(b, n);
        b->len = len;
        if (rc) return rc;
    }
    if (n) memmove(b->ptr, p, n);
    b->len = n;
    return 0;
}

uint8_t *kv_buf_detach(kv_buf *b, size_t *len) {
    uint8_t *p = b->ptr;
    if (len) *len = b->len;
    kv_buf_init(b);
    return p;
}

size_t kv_varint_encode(uint8_t *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

size_t kv_varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

int kv_buf_put_u32(kv_buf *b, uint32_t v) {
    uint8_t t[4];
    kv_put_u32(t, v);
    return kv_buf_append(b, t, 4);
}

int kv_buf_put_u64(kv_buf *b, uint64_t v) {
    uint8_t t[8];
    kv_put_u64(t, v);
    return kv_buf_append(b, t, 8);
}

int kv_buf_put_varint(kv_buf *b, uint64_t v) {
    uint8_t t[KV_VARINT_MAX];
    return kv_buf_append(b, t, kv_varint_encode(t, v));
}

int kv_buf_put_lenslice(kv_buf *b, kv_slice s) {
    int rc = kv_buf_reserve(b, kv_varint_len(s.len) + s.len);
    if (rc) return rc;
    rc = kv_buf_put_varint(b, s.len);
    if (rc) return rc;
    return kv_buf_append(b, s.ptr, s.len);
}

int kv__get_varint_slow(kv_reader *r, uint64_t *v) {
    uint64_t x = 0;
    const uint8_t *p = r->p;
    for (int shift = 0; shift < 64 && p < r->end; shift += 7) {
        uint8_t c = *p++;
        /* The tenth byte may only carry the top bit of a 64-bit value. */
        if (shift == 63 && c > 1) return KV_ECORRUPT;
        x |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *v = x;
            r->p = p;
            return 0;
        }
    }
    return KV_ECORRUPT;
}

int kv_get_varint32(kv_reader *r, uint32_t *v) {
    kv_reader save = *r;
    uint64_t x;
    int rc = kv_get_varint(r, &x);
    if (rc) return rc;
    if (x > UINT32_MAX) {
        *r = save;
        return KV_ECORRUPT;
    }
    *v = (uint32_t)x;
    return 0;
}

int kv_get_fixed32(kv_reader *r, uint32_t *v) {
    if (kv_reader_left(r) < 4) return KV_ECORRUPT;
    *v = kv_get_u32(r->p);
    r->p += 4;
    return 0;
}

int kv_get_fixed64(kv_reader *r, uint64_t *v) {
    if (kv_reader_left(r) < 8) return KV_ECORRUPT;
    *v = kv_get_u64(r->p);
    r->p += 8;
    return 0;
}

int kv_get_bytes(kv_reader *r, size_t n, kv_slice *out) {
    if (kv_reader_left(r) < n) return KV_ECORRUPT;
    *out = kv_slice_make(r->p, n);
    r->p += n;
    return 0;
}

int kv_get_lenslice(kv_reader *r, size_t max, kv_slice *out) {
    kv_reader save = *r;
    uint64_t n;
    int rc = kv_get_varint(r, &n);
    if (rc) return rc;
    if (n > max || n > kv_reader_left(r)) {
        *r = save;
        return KV_ECORRUPT;
    }
    return kv_get_bytes(r, (size_t)n, out);
}
