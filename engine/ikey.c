/*
 * Internal keys: user key followed by an 8-byte little-endian trailer
 * (sequence << 8 | type). The order puts the newest version of a user key
 * first, which every lookup and merge relies on.
 */
#include "engine/engine_int.h"

int eng__ikey_cmp(kv_slice a, kv_slice b) {
    int c = kv_slice_cmp(eng__ikey_user(a), eng__ikey_user(b));
    if (c) return c;
    uint64_t ta = eng__ikey_trailer(a), tb = eng__ikey_trailer(b);
    return ta > tb ? -1 : (ta < tb ? 1 : 0);
}

int eng__ikey_append(kv_buf *b, kv_slice ukey, uint64_t seq, int type) {
    int rc = kv_buf_reserve(b, ukey.len + 8);
    if (rc) return rc;
    if (ukey.len) memcpy(b->ptr + b->len, ukey.ptr, ukey.len);
    kv_put_u64(b->ptr + b->len + ukey.len, eng__trailer(seq, type));
    b->len += ukey.len + 8;
    return 0;
}
