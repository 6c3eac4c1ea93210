/*
 * Tests for the protocol framing (replica/proto.c): every message type
 * round-trips, a stream split at every byte boundary yields the same
 * frames, and bad input (oversize, flipped bits, unknown type or flags,
 * short or long payloads, fields over their limits) is refused with
 * KV_EPROTO before anything large is allocated. A frame at the payload
 * limit is buffered in one allocation of exactly its size, the encoder
 * refuses (KV_ETOOLARGE) what a receiver would, and a callback's error
 * fails the parser for good.
 */
#include "replica/proto.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>

static kv_slice S(const char *s) {
    return kv_slice_str(s);
}

static rep_msg sample(uint16_t type, uint64_t id) {
    rep_msg m = {.type = type, .id = id};
    switch (type) {
    case REP_HELLO:
        m.u64 = REP_PROTO_VERSION;
        m.flags = REP_ROLE_NODE;
        m.text = S("node-a");
        break;
    case REP_ERROR:
        m.status = KV_EPROTO;
        m.text = S("bad frame");
        break;
    case REP_PING:
    case REP_PONG:
        m.u64 = 0x1122334455667788u;
        break;
    case REP_GET:
        m.n = 3, m.r = 2, m.w = 2;
        m.timeout_ms = 1500;
        m.key = S("devices/7/state");
        break;
    case REP_PUT:
        m.n = 5, m.r = 1, m.w = 4;
        m.flags = REP_PUT_SYNC;
        m.timeout_ms = 99;
        m.key = S("carts/alice");
        m.ctx = S("\x01\x02\x03");
        m.value = S("three apples");
        break;
    case REP_RGET:
        m.key = S("k");
        break;
    case REP_RPUT:
        m.flags = REP_PUT_SYNC;
        m.key = S("k");
        m.value = S("");
        break;
    default: /* replies */
        m.status = type == REP_GET_REPLY ? 0 : KV_ENOTFOUND;
        if (type == REP_GET_REPLY || type == REP_RGET_REPLY)
            m.value = S("object bytes");
        break;
    }
    return m;
}

static const uint16_t all_types[] = {
    REP_HELLO, REP_ERROR,      REP_PING, REP_PONG,
    REP_GET,   REP_GET_REPLY,  REP_PUT,  REP_PUT_REPLY,
    REP_RGET,  REP_RGET_REPLY, REP_RPUT, REP_RPUT_REPLY,
};
#define NTYPES (sizeof all_types / sizeof all_types[0])

static void same(const rep_msg *a, const rep_msg *b) {
    cr_assert_eq(a->type, b->type);
    cr_assert_eq(a->id, b->id);
    cr_assert_eq(a->status, b->status);
    cr_assert_eq(a->n, b->n);
    cr_assert_eq(a->r, b->r);
    cr_assert_eq(a->w, b->w);
    cr_assert_eq(a->flags, b->flags);
    cr_assert_eq(a->timeout_ms, b->timeout_ms);
    cr_assert_eq(a->u64, b->u64);
    cr_assert(kv_slice_eq(a->key, b->key));
    cr_assert(kv_slice_eq(a->ctx, b->ctx));
    cr_assert(kv_slice_eq(a->value, b->value));
    cr_assert(kv_slice_eq(a->text, b->text));
}

typedef struct got {
    rep_msg m[32];
    kv_buf bytes[32]; /* copies of the slices' payload, per message */
    int n;
} got;

/* Keep a copy of each message (its slices die with the callback). */
static int collect(void *arg, const rep_msg *m) {
    got *g = arg;
    cr_assert_lt(g->n, 32);
    kv_buf *b = &g->bytes[g->n];
    kv_buf_init(b);
    const kv_slice *src[4] = {&m->key, &m->ctx, &m->value, &m->text};
    size_t total = 0;
    for (int i = 0; i < 4; i++) total += src[i]->len;
    OK(kv_buf_reserve(b, total + 1));
    rep_msg c = *m;
    kv_slice *dst[4] = {&c.key, &c.ctx, &c.value, &c.text};
    for (int i = 0; i < 4; i++) {
        uint8_t *at = b->ptr + b->len;
        if (src[i]->len) memcpy(at, src[i]->ptr, src[i]->len);
        *dst[i] = kv_slice_make(at, src[i]->len);
        b->len += src[i]->len;
    }
    g->m[g->n++] = c;
    return 0;
}

static void got_release(got *g) {
    for (int i = 0; i < g->n; i++) kv_buf_release(&g->bytes[i]);
    g->n = 0;
}

Test(proto, every_type_round_trips_through_a_stream_cut_anywhere) {
    kv_buf stream = KV_BUF_INIT;
    rep_msg want[NTYPES];
    for (size_t i = 0; i < NTYPES; i++) {
        want[i] = sample(all_types[i], 1000 + i);
        OK(rep_msg_encode(&want[i], &stream));
    }
    /* Whole stream at once, then every split into two pieces, then one
     * byte at a time. */
    for (size_t cut = 0; cut <= stream.len; cut += (cut < 64 ? 1 : 7)) {
        rep_parser p;
        rep_parser_init(&p, REP_MAX_PAYLOAD);
        got g = {.n = 0};
        OK(rep_parser_feed(&p, stream.ptr, cut, collect, &g));
        OK(rep_parser_feed(&p, stream.ptr + cut, stream.len - cut, collect,
                           &g));
        cr_assert_eq(g.n, (int)NTYPES, "cut %zu", cut);
        for (size_t i = 0; i < NTYPES; i++) same(&g.m[i], &want[i]);
        got_release(&g);
        rep_parser_release(&p);
    }
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    got g = {.n = 0};
    for (size_t i = 0; i < stream.len; i++)
        OK(rep_parser_feed(&p, stream.ptr + i, 1, collect, &g));
    cr_assert_eq(g.n, (int)NTYPES);
    for (size_t i = 0; i < NTYPES; i++) same(&g.m[i], &want[i]);
    got_release(&g);
    rep_parser_release(&p);
    kv_buf_release(&stream);
}

/* Every bit of a frame is covered by its checksum or checked. */
Test(proto, any_flipped_bit_is_refused) {
    rep_msg m = sample(REP_PUT, 7);
    kv_buf f = KV_BUF_INIT;
    OK(rep_msg_encode(&m, &f));
    for (size_t bit = 0; bit < f.len * 8; bit++) {
        f.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        rep_parser p;
        rep_parser_init(&p, REP_MAX_PAYLOAD);
        got g = {.n = 0};
        int rc = rep_parser_feed(&p, f.ptr, f.len, collect, &g);
        /* A flipped length bit may leave the frame incomplete (waiting for
         * more bytes): then nothing was delivered either. */
        cr_assert(rc == KV_EPROTO || (rc == 0 && g.n == 0), "bit %zu: rc %d",
                  bit, rc);
        cr_assert_eq(g.n, 0, "bit %zu delivered a frame", bit);
        got_release(&g);
        rep_parser_release(&p);
        f.ptr[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    kv_buf_release(&f);
}

/* Reseal a frame after editing it, to reach the checks behind the
 * checksum. */
static void reseal(kv_buf *f) {
    uint32_t plen = kv_get_u32(f->ptr);
    kv_put_u64(f->ptr + 16, kv_checksum2(f->ptr, 16, f->ptr + 24, plen));
}

static int feed_one(kv_buf *f, const char **why) {
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    got g = {.n = 0};
    int rc = rep_parser_feed(&p, f->ptr, f->len, collect, &g);
    *why = rep_parser_why(&p);
    /* The error is sticky. */
    if (rc) cr_assert_eq(rep_parser_feed(&p, "x", 1, collect, &g), rc);
    got_release(&g);
    rep_parser_release(&p);
    return rc;
}

Test(proto, malformed_frames_are_refused_with_a_reason) {
    const char *why;
    kv_buf f = KV_BUF_INIT;
    rep_msg m = sample(REP_GET, 1);

    OK(rep_msg_encode(&m, &f));
    kv_put_u16(f.ptr + 4, 77); /* unknown type */
    reseal(&f);
    EXPECT_RC(feed_one(&f, &why), KV_EPROTO);
    cr_assert_str_eq(why, "unknown frame type");

    kv_buf_reset(&f);
    OK(rep_msg_encode(&m, &f));
    kv_put_u16(f.ptr + 6, 1); /* unknown frame flags */
    reseal(&f);
    EXPECT_RC(feed_one(&f, &why), KV_EPROTO);
    cr_assert_str_eq(why, "unknown frame flags");

    /* A payload one byte short of its fields, and one byte long. */
    kv_buf_reset(&f);
    OK(rep_msg_encode(&m, &f));
    kv_put_u32(f.ptr, kv_get_u32(f.ptr) - 1);
    f.len--;
    reseal(&f);
    EXPECT_RC(feed_one(&f, &why), KV_EPROTO);
    cr_assert_str_eq(why, "malformed payload");
    kv_buf_reset(&f);
    OK(rep_msg_encode(&m, &f));
    kv_put_u32(f.ptr, kv_get_u32(f.ptr) + 1);
    OK(kv_buf_append(&f, "!", 1));
    reseal(&f);
    EXPECT_RC(feed_one(&f, &why), KV_EPROTO);

    /* PUT flags outside the ones PUT defines. */
    rep_msg put = sample(REP_PUT, 2);
    kv_buf_reset(&f);
    OK(rep_msg_encode(&put, &f));
    kv_put_u32(f.ptr + 24 + 3, 0x80); /* flags follow n, r, w */
    reseal(&f);
    EXPECT_RC(feed_one(&f, &why), KV_EPROTO);

    /* A frame claiming 2 GiB: refused from the header alone, with
     * allocation made to fail to prove nothing that size is attempted. */
    uint8_t h[24] = {0};
    kv_put_u32(h, 0x80000000u);
    kv_put_u16(h + 4, REP_PUT);
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    OK(kv_buf_reserve(&p.buf, 64)); /* the header's own small buffer */
    kv_alloc_fail_after(0);
    int rc = rep_parser_feed(&p, h, sizeof h, collect, NULL);
    kv_alloc_fail_after(-1);
    EXPECT_RC(rc, KV_EPROTO);
    cr_assert_str_eq(rep_parser_why(&p), "frame larger than the limit");
    rep_parser_release(&p);
    /* A smaller per-connection limit is enforced the same way. */
    rep_parser_init(&p, 16);
    kv_buf_reset(&f);
    OK(rep_msg_encode(&put, &f));
    EXPECT_RC(rep_parser_feed(&p, f.ptr, f.len, collect, NULL), KV_EPROTO);
    rep_parser_release(&p);
    kv_buf_release(&f);
}

Test(proto, encoder_refuses_what_a_decoder_would) {
    kv_buf f = KV_BUF_INIT;
    rep_msg m = sample(REP_GET, 1);
    m.type = 99;
    EXPECT_RC(rep_msg_encode(&m, &f), -EINVAL);
    m = sample(REP_GET, 1);
    m.flags = REP_PUT_SYNC; /* GET carries no flags */
    EXPECT_RC(rep_msg_encode(&m, &f), -EINVAL);
    static uint8_t big[REP_MAX_KEY + 1];
    m = sample(REP_GET, 1);
    m.key = kv_slice_make(big, sizeof big);
    EXPECT_RC(rep_msg_encode(&m, &f), KV_ETOOLARGE);
    cr_assert_eq(f.len, 0, "nothing appended");
    /* A key at the limit is fine, and decodes. */
    m.key = kv_slice_make(big, REP_MAX_KEY);
    OK(rep_msg_encode(&m, &f));
    rep_msg d;
    OK(rep_msg_decode(REP_GET, 1, kv_slice_make(f.ptr + 24, f.len - 24), &d));
    cr_assert_eq(d.key.len, REP_MAX_KEY);
    /* A decoder meeting an over-limit key length refuses it. */
    kv_buf p = KV_BUF_INIT;
    uint8_t nrw_timeout[7] = {3, 2, 2, 0, 0, 0, 0};
    OK(kv_buf_append(&p, nrw_timeout, sizeof nrw_timeout));
    OK(kv_buf_put_varint(&p, REP_MAX_KEY + 1));
    OK(kv_buf_append(&p, big, REP_MAX_KEY + 1));
    EXPECT_RC(rep_msg_decode(REP_GET, 1, kv_buf_slice(&p), &d), KV_EPROTO);
    kv_buf_release(&p);
    kv_buf_release(&f);
}

/* A callback's error stops the feed and comes back unchanged. */
static int stop_at_second(void *arg, const rep_msg *m) {
    int *seen = arg;
    (void)m;
    return ++*seen == 2 ? -ECANCELED : 0;
}

Test(proto, callback_error_stops_the_feed) {
    kv_buf s = KV_BUF_INIT;
    for (int i = 0; i < 3; i++) {
        rep_msg m = sample(REP_PING, (uint64_t)i);
        OK(rep_msg_encode(&m, &s));
    }
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    int seen = 0;
    EXPECT_RC(rep_parser_feed(&p, s.ptr, s.len, stop_at_second, &seen),
              -ECANCELED);
    cr_assert_eq(seen, 2);
    rep_parser_release(&p);
    kv_buf_release(&s);
}

/* The callback's error makes the parser fail like a bad frame: a later
 * feed returns it and delivers nothing more. */
Test(proto, callback_error_is_sticky) {
    kv_buf s = KV_BUF_INIT;
    for (int i = 0; i < 4; i++) {
        rep_msg m = sample(REP_PING, (uint64_t)i);
        OK(rep_msg_encode(&m, &s));
    }
    size_t one = s.len / 4;
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    int seen = 0;
    EXPECT_RC(rep_parser_feed(&p, s.ptr, 2 * one, stop_at_second, &seen),
              -ECANCELED);
    EXPECT_RC(
        rep_parser_feed(&p, s.ptr + 2 * one, 2 * one, stop_at_second, &seen),
        -ECANCELED);
    cr_assert_eq(seen, 2, "%d frames delivered", seen);
    rep_parser_release(&p);
    kv_buf_release(&s);
}

/* A PUT frame whose payload is exactly plen bytes (key "k", a value of
 * REP_MAX_VALUE bytes, the context of *ctx_len bytes filling the rest),
 * encoded into f; its fields borrow zeros (the caller frees *zeros). */
static int encode_put_of(size_t plen, kv_buf *f, uint8_t **zeros,
                         size_t *ctx_len) {
    size_t vlen = REP_MAX_VALUE;
    size_t fixed = 3 + 4 + 4 + 2 + kv_varint_len(vlen) + vlen, clen = 0;
    for (size_t k = 1; k <= KV_VARINT_MAX; k++)
        if (kv_varint_len(clen = plen - fixed - k) == k) break;
    cr_assert_eq(kv_varint_len(clen) + clen + fixed, plen);
    *ctx_len = clen;
    *zeros = kv_calloc(1, KV_MAX(vlen, clen));
    cr_assert_not_null(*zeros);
    rep_msg m = sample(REP_PUT, 5);
    m.ctx = kv_slice_make(*zeros, clen);
    m.value = kv_slice_make(*zeros, vlen);
    m.key = S("k");
    return rep_msg_encode(&m, f);
}

/* Each field within its limit, but together over REP_MAX_PAYLOAD: no
 * receiver would take the frame, so the encoder refuses it. */
Test(proto, encoder_refuses_a_payload_over_the_limit) {
    kv_buf f = KV_BUF_INIT;
    uint8_t *zeros;
    size_t clen;
    EXPECT_RC(encode_put_of(REP_MAX_PAYLOAD + 1u, &f, &zeros, &clen),
              KV_ETOOLARGE);
    cr_assert_eq(f.len, 0, "nothing appended");
    kv_free(zeros);
    OK(encode_put_of(REP_MAX_PAYLOAD, &f, &zeros, &clen));
    cr_assert_eq(kv_get_u32(f.ptr), REP_MAX_PAYLOAD);
    cr_assert_eq(f.len, REP_FRAME_HEADER + REP_MAX_PAYLOAD);
    kv_free(zeros);
    kv_buf_release(&f);
}

typedef struct big_seen {
    int n;
    size_t ctx, value;
} big_seen;

/* Allocates nothing, so it runs under allocation failure injection. */
static int note_sizes(void *arg, const rep_msg *m) {
    big_seen *b = arg;
    b->n++;
    b->ctx = m->ctx.len;
    b->value = m->value.len;
    return 0;
}

/* A frame at the payload limit, fed 1 MiB at a time: once its header is
 * in, the parser makes room for exactly that frame with one allocation
 * (growing by doubling took up to twice the limit, in many steps). */
Test(proto, frame_at_the_limit_is_buffered_in_one_exact_allocation) {
    kv_buf f = KV_BUF_INIT;
    uint8_t *zeros;
    size_t clen;
    OK(encode_put_of(REP_MAX_PAYLOAD, &f, &zeros, &clen));
    kv_free(zeros);
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    big_seen seen = {0};
    OK(rep_parser_feed(&p, f.ptr, REP_FRAME_HEADER, note_sizes, &seen));
    kv_alloc_fail_after(1); /* one allocation from here on, no more */
    size_t off = REP_FRAME_HEADER, chunk = 1u << 20;
    int rc = 0;
    while (rc == 0 && off < f.len - 1) {
        size_t n = KV_MIN(chunk, f.len - 1 - off);
        rc = rep_parser_feed(&p, f.ptr + off, n, note_sizes, &seen);
        off += n;
    }
    kv_alloc_fail_after(-1);
    OK(rc);
    cr_assert_eq(p.buf.cap, REP_FRAME_HEADER + REP_MAX_PAYLOAD);
    cr_assert_eq(seen.n, 0);
    OK(rep_parser_feed(&p, f.ptr + off, 1, note_sizes, &seen));
    cr_assert_eq(seen.n, 1);
    cr_assert_eq(seen.value, REP_MAX_VALUE);
    cr_assert_eq(seen.ctx, clen);
    rep_parser_release(&p);
    kv_buf_release(&f);
}
