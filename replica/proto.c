/*
 * Frames and messages of the quorumfs protocol (see proto.h).
 *
 * A frame is a 24-byte header and a payload. The header's checksum covers
 * its first 16 bytes and the payload, so a frame is used only if every
 * byte is as sent. The payload length is checked against the parser's
 * limit from the header alone, before a byte of payload is buffered, and
 * the frame's buffer is then allocated once at exactly its size, so a
 * parser never holds more than a header and its limit. The encoder
 * refuses what the limits would make a receiver refuse. A payload is the
 * fields its type carries, in one fixed order, and must be consumed
 * exactly. Format: docs/protocol.md.
 */
#include "replica/proto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>

/* Fields, in their order on the wire. */
enum {
    F_STATUS = 1 << 0,  /* u32 (a signed code) */
    F_NRW = 1 << 1,     /* three u8 */
    F_FLAGS = 1 << 2,   /* u32 */
    F_TIMEOUT = 1 << 3, /* u32 milliseconds */
    F_U64 = 1 << 4,     /* u64 */
    F_KEY = 1 << 5,     /* varint length + bytes */
    F_CTX = 1 << 6,
    F_VALUE = 1 << 7,
    F_TEXT = 1 << 8,
};

typedef struct msg_kind {
    const char *name;
    unsigned fields;
    uint32_t flags; /* the flag bits this type may carry */
} msg_kind;

static const msg_kind kinds[] = {
    [REP_HELLO] = {"hello", F_FLAGS | F_U64 | F_TEXT, 1},
    [REP_ERROR] = {"error", F_STATUS | F_TEXT, 0},
    [REP_PING] = {"ping", F_U64, 0},
    [REP_PONG] = {"pong", F_U64, 0},
    [REP_GET] = {"get", F_NRW | F_TIMEOUT | F_KEY, 0},
    [REP_GET_REPLY] = {"get-reply", F_STATUS | F_VALUE, 0},
    [REP_PUT] = {"put", F_NRW | F_FLAGS | F_TIMEOUT | F_KEY | F_CTX | F_VALUE,
                 REP_PUT_DELETE | REP_PUT_SYNC | REP_PUT_FORWARDED |
                     REP_PUT_NOSYNC},
    [REP_PUT_REPLY] = {"put-reply", F_STATUS | F_CTX, 0},
    [REP_RGET] = {"replica-get", F_KEY, 0},
    [REP_RGET_REPLY] = {"replica-get-reply", F_STATUS | F_VALUE, 0},
    [REP_RPUT] = {"replica-put", F_FLAGS | F_KEY | F_VALUE,
                  REP_PUT_SYNC | REP_PUT_LWW | REP_PUT_NOSYNC},
    [REP_RPUT_REPLY] = {"replica-put-reply", F_STATUS, 0},
    [REP_REAP] = {"reap", F_KEY | F_VALUE, 0},
    [REP_REAP_REPLY] = {"reap-reply", F_STATUS, 0},
    [REP_GOSSIP] = {"gossip", F_VALUE, 0},
    [REP_GOSSIP_REPLY] = {"gossip-reply", F_STATUS | F_VALUE, 0},
    [REP_LEAVE] = {"leave", F_FLAGS | F_TEXT, REP_LEAVE_FORCE},
    [REP_LEAVE_REPLY] = {"leave-reply", F_STATUS, 0},
    [REP_BUCKET] = {"bucket", F_FLAGS | F_TEXT, 1},
    [REP_BUCKET_REPLY] = {"bucket-reply", F_STATUS, 0},
    [REP_SCAN] = {"scan", F_U64 | F_KEY | F_CTX, 0},
    [REP_SCAN_REPLY] = {"scan-reply", F_STATUS | F_FLAGS | F_CTX | F_VALUE,
                        REP_SCAN_MORE},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

static const msg_kind *kind_of(uint16_t type) {
    return type < NKINDS && kinds[type].name ? &kinds[type] : NULL;
}

const char *rep_msg_type_name(uint16_t type) {
    const msg_kind *k = kind_of(type);
    return k ? k->name : "unknown";
}

/* The bytes of m's payload under kind k, or SIZE_MAX when a field it
 * carries is over its own limit. */
static size_t payload_len(const msg_kind *k, const rep_msg *m) {
    static const size_t fixed[] = {4, 3, 4, 4, 8}; /* F_STATUS .. F_U64 */
    const kv_slice *s[4] = {&m->key, &m->ctx, &m->value, &m->text};
    const size_t max[4] = {REP_MAX_KEY, REP_MAX_VALUE, REP_MAX_VALUE,
                           REP_MAX_KEY};
    size_t n = 0;
    for (int i = 0; i < 5; i++)
        if (k->fields & (F_STATUS << i)) n += fixed[i];
    for (int i = 0; i < 4; i++) {
        if (!(k->fields & (F_KEY << i))) continue;
        if (s[i]->len > max[i]) return SIZE_MAX;
        n += kv_varint_len(s[i]->len) + s[i]->len;
    }
    return n;
}

int rep_msg_encode(const rep_msg *m, kv_buf *out) {
    const msg_kind *k = kind_of(m->type);
    if (!k || (m->flags & ~k->flags)) return -EINVAL;
    /* Refused here, an oversize frame never reaches a receiver, which
     * would refuse it and close the connection. */
    size_t plen = payload_len(k, m);
    if (plen > REP_MAX_PAYLOAD) return KV_ETOOLARGE;
    unsigned f = k->fields;
    int rc = kv_buf_reserve(out, REP_FRAME_HEADER + plen);
    if (rc) return rc;
    size_t base = out->len;
    uint8_t *h = out->ptr + base, *p = h + REP_FRAME_HEADER;
    if (f & F_STATUS) {
        kv_put_u32(p, (uint32_t)m->status);
        p += 4;
    }
    if (f & F_NRW) {
        *p++ = m->n;
        *p++ = m->r;
        *p++ = m->w;
    }
    if (f & F_FLAGS) {
        kv_put_u32(p, m->flags);
        p += 4;
    }
    if (f & F_TIMEOUT) {
        kv_put_u32(p, m->timeout_ms);
        p += 4;
    }
    if (f & F_U64) {
        kv_put_u64(p, m->u64);
        p += 8;
    }
    const kv_slice *s[4] = {&m->key, &m->ctx, &m->value, &m->text};
    for (int i = 0; i < 4; i++) {
        if (!(f & (F_KEY << i))) continue;
        p += kv_varint_encode(p, s[i]->len);
        if (s[i]->len) memcpy(p, s[i]->ptr, s[i]->len);
        p += s[i]->len;
    }
    KV_ASSERT((size_t)(p - h) == REP_FRAME_HEADER + plen);
    kv_put_u32(h, (uint32_t)plen);
    kv_put_u16(h + 4, m->type);
    kv_put_u16(h + 6, 0);
    kv_put_u64(h + 8, m->id);
    kv_put_u64(h + 16, kv_checksum2(h, 16, h + REP_FRAME_HEADER, plen));
    out->len = base + REP_FRAME_HEADER + plen;
    return 0;
}

int rep_msg_decode(uint16_t type, uint64_t id, kv_slice payload, rep_msg *m) {
    memset(m, 0, sizeof *m);
    const msg_kind *k = kind_of(type);
    if (!k) return KV_EPROTO;
    m->type = type;
    m->id = id;
    unsigned f = k->fields;
    kv_reader r = kv_reader_make(payload);
    kv_slice b;
    if (f & F_STATUS) {
        uint32_t v;
        if (kv_get_fixed32(&r, &v)) return KV_EPROTO;
        m->status = (int32_t)v;
    }
    if (f & F_NRW) {
        if (kv_get_bytes(&r, 3, &b)) return KV_EPROTO;
        m->n = b.ptr[0];
        m->r = b.ptr[1];
        m->w = b.ptr[2];
    }
    if ((f & F_FLAGS) && kv_get_fixed32(&r, &m->flags)) return KV_EPROTO;
    if (m->flags & ~k->flags) return KV_EPROTO;
    if ((f & F_TIMEOUT) && kv_get_fixed32(&r, &m->timeout_ms)) return KV_EPROTO;
    if ((f & F_U64) && kv_get_fixed64(&r, &m->u64)) return KV_EPROTO;
    kv_slice *s[4] = {&m->key, &m->ctx, &m->value, &m->text};
    const size_t max[4] = {REP_MAX_KEY, REP_MAX_VALUE, REP_MAX_VALUE,
                           REP_MAX_KEY};
    for (int i = 0; i < 4; i++)
        if ((f & (F_KEY << i)) && kv_get_lenslice(&r, max[i], s[i]))
            return KV_EPROTO;
    return kv_reader_left(&r) ? KV_EPROTO : 0;
}

/* ---- the items of a scan-reply ---- */

/* Item flags on the wire. */
#define ITEM_TOMBSTONE 1u

int rep_scan_item_put(kv_buf *items, kv_slice key, uint64_t newest_us,
                      bool tombstone) {
    if (key.len == 0 || key.len > REP_MAX_KEY) return -EINVAL;
    int rc = kv_buf_reserve(items, kv_varint_len(key.len) + key.len + 9);
    if (rc) return rc;
    uint8_t *p = items->ptr + items->len;
    p += kv_varint_encode(p, key.len);
    memcpy(p, key.ptr, key.len);
    p += key.len;
    kv_put_u64(p, newest_us);
    p[8] = tombstone ? ITEM_TOMBSTONE : 0;
    items->len = (size_t)(p + 9 - items->ptr);
    return 0;
}

int rep_scan_item_get(kv_reader *r, kv_slice *key, uint64_t *newest_us,
                      bool *tombstone) {
    kv_reader save = *r;
    kv_slice k, f;
    uint64_t t;
    /* kv_get_lenslice checks the length against the bytes left before it
     * takes them. */
    if (kv_get_lenslice(r, REP_MAX_KEY, &k) || k.len == 0 ||
        kv_get_fixed64(r, &t) || kv_get_bytes(r, 1, &f) ||
        (f.ptr[0] & ~ITEM_TOMBSTONE)) {
        *r = save;
        return KV_EPROTO;
    }
    *key = k;
    *newest_us = t;
    *tombstone = f.ptr[0] & ITEM_TOMBSTONE;
    return 0;
}

/* ---- stream parser ---- */

void rep_parser_init(rep_parser *p, uint32_t max_payload) {
    memset(p, 0, sizeof *p);
    kv_buf_init(&p->buf);
    p->max_payload = max_payload;
    p->why = "";
}

void rep_parser_release(rep_parser *p) {
    kv_buf_release(&p->buf);
}

const char *rep_parser_why(const rep_parser *p) {
    return p->why;
}

/* Make b's capacity exactly total bytes, unless it already holds them. */
static int reserve_exact(kv_buf *b, size_t total) {
    if (b->cap >= total) return 0;
    uint8_t *q = kv_realloc(b->ptr, total);
    if (!q) return -ENOMEM;
    b->ptr = q;
    b->cap = total;
    return 0;
}

/* From now on every feed returns rc; why names the check for the log
 * line, or is "" when fn stopped the feed (the caller knows its code). */
static int fail(rep_parser *p, int rc, const char *why) {
    p->error = rc;
    p->why = why;
    return rc;
}

int rep_parser_feed(rep_parser *p, const void *data, size_t n, rep_frame_fn fn,
                    void *arg) {
    if (p->error) return p->error;
    /* Drop consumed bytes before growing the buffer. */
    if (p->start > 0) {
        memmove(p->buf.ptr, p->buf.ptr + p->start, p->buf.len - p->start);
        p->buf.len -= p->start;
        p->start = 0;
    }
    const uint8_t *in = data;
    while (n > 0 || p->buf.len - p->start >= REP_FRAME_HEADER) {
        /* Take only what completes the next header or frame, so an
         * oversize frame is refused before its payload is buffered. */
        size_t have = p->buf.len - p->start, want = REP_FRAME_HEADER;
        if (have >= 4) { /* the length is checked as soon as it is in */
            uint32_t plen = kv_get_u32(p->buf.ptr + p->start);
            if (plen > p->max_payload)
                return fail(p, KV_EPROTO, "frame larger than the limit");
            if (have >= REP_FRAME_HEADER) want = REP_FRAME_HEADER + plen;
        }
        if (have < want) {
            if (n == 0) break;
            /* Once the header is in, the frame's length is known and
             * checked: room for all of it is made at once and exactly,
             * where growing by doubling would take up to twice the limit
             * for a frame near it. */
            if (want > REP_FRAME_HEADER) {
                int rc = reserve_exact(&p->buf, p->start + want);
                if (rc) return fail(p, rc, "out of memory");
            }
            /* Up to the length field first, so it is checked before the
             * rest of the header is taken. */
            size_t take = KV_MIN(n, (have < 4 ? 4 : want) - have);
            int rc = kv_buf_append(&p->buf, in, take);
            if (rc) return fail(p, rc, "out of memory");
            in += take;
            n -= take;
            continue;
        }
        const uint8_t *h = p->buf.ptr + p->start;
        kv_slice payload =
            kv_slice_make(h + REP_FRAME_HEADER, want - REP_FRAME_HEADER);
        if (kv_checksum2(h, 16, payload.ptr, payload.len) != kv_get_u64(h + 16))
            return fail(p, KV_EPROTO, "frame checksum mismatch");
        if (kv_get_u16(h + 6) != 0)
            return fail(p, KV_EPROTO, "unknown frame flags");
        rep_msg m;
        if (rep_msg_decode(kv_get_u16(h + 4), kv_get_u64(h + 8), payload, &m))
            return fail(p, KV_EPROTO,
                        kind_of(kv_get_u16(h + 4)) ? "malformed payload"
                                                   : "unknown frame type");
        p->start += want;
        int rc = fn(arg, &m);
        if (rc) return fail(p, rc, "");
        if (p->start == p->buf.len) {
            p->buf.len = p->start = 0;
            /* A large frame's buffer is not kept for the connection's
             * life. */
            if (p->buf.cap > (1u << 20)) kv_buf_release(&p->buf);
        }
    }
    return 0;
}

int rep_parse_addr(const char *spec, struct sockaddr_in *sa) {
    char host[64];
    const char *colon = spec ? strrchr(spec, ':') : NULL;
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof host)
        return -EINVAL;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535) return -EINVAL;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}
