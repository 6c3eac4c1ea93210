/*
 * Write batches. A batch's bytes (rep) are exactly the payload of its WAL
 * record: sequence u64 | count u32 | ops, where op = type u8 | varint klen |
 * key [| varint vlen | value]. The group-commit leader concatenates the reps
 * of queued writers into one record; recovery replays them with
 * eng__batch_iterate, which validates everything before applying anything.
 * Format: docs/engine-format.md, "WAL payload".
 */
#include "engine/db_int.h"

int eng_batch_new(eng_batch **out) {
    eng_batch *b = kv_calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    kv_buf_init(&b->rep);
    *out = b;
    return 0;
}

void eng_batch_free(eng_batch *b) {
    if (!b) return;
    kv_buf_release(&b->rep);
    kv_free(b);
}

void eng_batch_clear(eng_batch *b) {
    kv_buf_reset(&b->rep);
}

static int ensure_header(eng_batch *b) {
    if (b->rep.len >= ENG_BATCH_HEADER) return 0;
    uint8_t h[ENG_BATCH_HEADER] = {0};
    return kv_buf_set(&b->rep, h, sizeof h);
}

static int add_op(eng_batch *b, int type, kv_slice key, kv_slice value) {
    if (key.len > ENG_MAX_KEY || value.len > ENG_MAX_VALUE) return KV_ETOOLARGE;
    size_t need = 1 + KV_VARINT_MAX * 2 + key.len + value.len;
    size_t have = b->rep.len < ENG_BATCH_HEADER ? ENG_BATCH_HEADER : b->rep.len;
    if (have + need > ENG_MAX_BATCH) return KV_ETOOLARGE;
    int rc = ensure_header(b);
    if (rc) return rc;
    size_t old = b->rep.len;
    uint8_t t = (uint8_t)type;
    if ((rc = kv_buf_append(&b->rep, &t, 1)) ||
        (rc = kv_buf_put_lenslice(&b->rep, key)) ||
        (type == ENG_TYPE_PUT && (rc = kv_buf_put_lenslice(&b->rep, value)))) {
        b->rep.len = old; /* leave the batch as it was */
        return rc;
    }
    kv_put_u32(b->rep.ptr + 8, kv_get_u32(b->rep.ptr + 8) + 1);
    return 0;
}

int eng_batch_put(eng_batch *b, kv_slice key, kv_slice value) {
    return add_op(b, ENG_TYPE_PUT, key, value);
}

int eng_batch_delete(eng_batch *b, kv_slice key) {
    return add_op(b, ENG_TYPE_DEL, key, kv_slice_make(NULL, 0));
}

uint32_t eng_batch_count(const eng_batch *b) {
    return eng__batch_rep_count(kv_buf_slice(&b->rep));
}

uint32_t eng__batch_rep_count(kv_slice rep) {
    return rep.len < ENG_BATCH_HEADER ? 0 : kv_get_u32(rep.ptr + 8);
}

void eng__batch_set_seq(kv_buf *rep, uint64_t seq) {
    KV_ASSERT(rep->len >= ENG_BATCH_HEADER);
    kv_put_u64(rep->ptr, seq);
}

int eng__batch_append(kv_buf *dst, kv_slice src) {
    if (src.len <= ENG_BATCH_HEADER) return 0;
    int rc;
    if (dst->len < ENG_BATCH_HEADER) {
        uint8_t h[ENG_BATCH_HEADER] = {0};
        if ((rc = kv_buf_set(dst, h, sizeof h))) return rc;
    }
    rc = kv_buf_append(dst, src.ptr + ENG_BATCH_HEADER,
                       src.len - ENG_BATCH_HEADER);
    if (rc) return rc;
    kv_put_u32(dst->ptr + 8,
               kv_get_u32(dst->ptr + 8) + eng__batch_rep_count(src));
    return 0;
}

/* One pass that only checks, so a malformed record applies nothing. */
static int walk(kv_slice rep, eng_batch_fn fn, void *arg) {
    if (rep.len < ENG_BATCH_HEADER) return KV_ECORRUPT;
    uint64_t seq = kv_get_u64(rep.ptr);
    uint32_t count = kv_get_u32(rep.ptr + 8);
    kv_reader r = kv_reader_make(
        kv_slice_make(rep.ptr + ENG_BATCH_HEADER, rep.len - ENG_BATCH_HEADER));
    uint32_t n = 0;
    while (kv_reader_left(&r) > 0) {
        kv_slice t, key, value = kv_slice_make(NULL, 0);
        if (kv_get_bytes(&r, 1, &t)) return KV_ECORRUPT;
        if (t.ptr[0] != ENG_TYPE_PUT && t.ptr[0] != ENG_TYPE_DEL)
            return KV_ECORRUPT;
        if (kv_get_lenslice(&r, ENG_MAX_KEY, &key)) return KV_ECORRUPT;
        if (t.ptr[0] == ENG_TYPE_PUT &&
            kv_get_lenslice(&r, ENG_MAX_VALUE, &value))
            return KV_ECORRUPT;
        if (fn) {
            int rc = fn(arg, seq + n, t.ptr[0], key, value);
            if (rc) return rc;
        }
        n++;
    }
    if (n != count || seq == 0 || seq + count > ENG_MAX_SEQ) return KV_ECORRUPT;
    return 0;
}

int eng__batch_iterate(kv_slice rep, eng_batch_fn fn, void *arg) {
    int rc = walk(rep, NULL, NULL);
    if (rc) return rc;
    return walk(rep, fn, arg);
}
