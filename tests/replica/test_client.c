/*
 * Tests for the blocking client (replica/client.c) against a fake node: a
 * thread on 127.0.0.1 that answers the client's HELLO and then misbehaves
 * on purpose. A reply that trickles in or a flood of frames for other
 * requests must not keep a call alive past its deadline, and a put too
 * large for one frame is refused before a byte of it is sent.
 */
#include "replica/client.h"
#include "replica/proto.h"
#include "tests/testutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

TestSuite(client, .init = quiet_log, .timeout = 60);

typedef enum fake_mode {
    TRICKLE, /* the reply to the get, one byte every 50 ms */
    FLOOD,   /* frames answering no request, as fast as the socket takes */
    ANSWER,  /* read one request, answer it with KV_ENOTFOUND */
} fake_mode;

typedef struct fake {
    fake_mode mode;
    int lfd;
    char addr[32];
    pthread_t th;
    atomic_bool stop;
    uint16_t first_type; /* ANSWER: the first request after HELLO */
} fake;

typedef struct frame_in {
    bool got;
    uint16_t type;
    uint64_t id;
} frame_in;

static int keep_first(void *arg, const rep_msg *m) {
    frame_in *f = arg;
    if (!f->got) *f = (frame_in){true, m->type, m->id};
    return 0;
}

/* Read one whole frame (byte by byte, so nothing after it is consumed). */
static bool read_frame(int fd, frame_in *f) {
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    *f = (frame_in){0};
    uint8_t b;
    while (!f->got && recv(fd, &b, 1, 0) == 1)
        if (rep_parser_feed(&p, &b, 1, keep_first, f)) break;
    rep_parser_release(&p);
    return f->got;
}

static bool send_msg(int fd, const rep_msg *m) {
    kv_buf b = KV_BUF_INIT;
    bool ok = rep_msg_encode(m, &b) == 0 &&
              send(fd, b.ptr, b.len, MSG_NOSIGNAL) == (ssize_t)b.len;
    kv_buf_release(&b);
    return ok;
}

static uint64_t now_ms(void) {
    return kv_now_ns() / 1000000u;
}

static void *serve(void *arg) {
    fake *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    frame_in hello;
    rep_msg reply = {.type = REP_HELLO, .u64 = REP_PROTO_VERSION};
    reply.flags = REP_ROLE_NODE;
    reply.text = kv_slice_str("fake");
    if (!read_frame(fd, &hello) || hello.type != REP_HELLO) goto out;
    reply.id = hello.id;
    if (!send_msg(fd, &reply)) goto out;
    kv_buf b = KV_BUF_INIT;
    if (s->mode == TRICKLE) {
        /* A whole, valid reply to the get (the client's second request),
         * which would take minutes to arrive at this pace. */
        static uint8_t value[4096];
        rep_msg m = {.type = REP_GET_REPLY, .id = hello.id + 1};
        m.value = kv_slice_make(value, sizeof value);
        if (rep_msg_encode(&m, &b)) goto done;
        for (size_t i = 0; i < b.len && !atomic_load(&s->stop); i++) {
            if (send(fd, b.ptr + i, 1, MSG_NOSIGNAL) != 1) break;
            nanosleep(&(struct timespec){.tv_nsec = 50 * 1000000}, NULL);
        }
    } else if (s->mode == FLOOD) {
        /* Replies to a request the client never made: dropped, one after
         * another, with the socket never empty for long. Ten seconds at
         * most, so a client that ignores its deadline still ends. */
        rep_msg m = {.type = REP_GET_REPLY, .id = 0};
        int sndbuf = 4 << 20;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        while (b.len < 1024 * 1024)
            if (rep_msg_encode(&m, &b)) goto done;
        uint64_t end = now_ms() + 10000;
        while (!atomic_load(&s->stop) && now_ms() < end)
            if (send(fd, b.ptr, b.len, MSG_NOSIGNAL) < 0) break;
    } else {
        frame_in req;
        if (read_frame(fd, &req)) {
            s->first_type = req.type;
            rep_msg m = {.type = REP_GET_REPLY, .id = req.id};
            m.status = KV_ENOTFOUND;
            send_msg(fd, &m);
        }
    }
done:
    kv_buf_release(&b);
out:
    close(fd);
    return NULL;
}

static void fake_start(fake *s, fake_mode mode) {
    memset(s, 0, sizeof *s);
    s->mode = mode;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(s->lfd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(s->lfd, 1), 0);
    cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&sa, &len), 0);
    snprintf(s->addr, sizeof s->addr, "127.0.0.1:%u", ntohs(sa.sin_port));
    cr_assert_eq(pthread_create(&s->th, NULL, serve, s), 0);
}

static void fake_stop(fake *s) {
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    close(s->lfd);
}

/* A get that times out on a connection still receiving bytes, and how
 * long it took, in milliseconds. The client's own timeout (300 ms) is the
 * request's deadline, since the get asks for no coordinator timeout. */
static uint64_t get_times_out(fake_mode mode) {
    fake s;
    fake_start(&s, mode);
    rep_client *c;
    OK(rep_client_connect(s.addr, 300, &c));
    cr_assert_str_eq(rep_client_node(c), "fake");
    kv_buf obj = KV_BUF_INIT;
    uint64_t t0 = now_ms();
    EXPECT_RC(rep_client_get(c, kv_slice_str("k"), NULL, &obj), KV_ETIMEDOUT);
    uint64_t took = now_ms() - t0;
    /* The connection is broken from then on: the error is sticky. */
    EXPECT_RC(rep_client_get(c, kv_slice_str("k"), NULL, &obj), KV_ETIMEDOUT);
    rep_client_close(c);
    fake_stop(&s);
    kv_buf_release(&obj);
    return took;
}

/* The bounds are loose (a 300 ms deadline, 2 s allowed) so a loaded or
 * sanitized build cannot fail them; the broken client waited minutes
 * (trickle) or the flood's ten seconds. */
Test(client, get_deadline_holds_while_a_reply_trickles_in) {
    uint64_t took = get_times_out(TRICKLE);
    cr_assert_geq(took, 250, "timed out after %llu ms",
                  (unsigned long long)took);
    cr_assert_lt(took, 2000, "timed out after %llu ms",
                 (unsigned long long)took);
}

Test(client, get_deadline_holds_while_other_frames_flood_in) {
    uint64_t took = get_times_out(FLOOD);
    cr_assert_geq(took, 250, "timed out after %llu ms",
                  (unsigned long long)took);
    cr_assert_lt(took, 2000, "timed out after %llu ms",
                 (unsigned long long)took);
}

/* A put whose frame would exceed REP_MAX_PAYLOAD (each field within its
 * own limit, the sum over) is refused with KV_ETOOLARGE before anything is
 * sent; the connection stays usable, and the next request is the first
 * frame the node sees after HELLO. */
Test(client, put_over_the_payload_limit_is_refused_before_sending) {
    fake s;
    fake_start(&s, ANSWER);
    rep_client *c;
    OK(rep_client_connect(s.addr, 2000, &c));
    uint8_t *big = kv_calloc(1, REP_MAX_VALUE + 1u);
    cr_assert_not_null(big);
    kv_slice value = kv_slice_make(big, REP_MAX_VALUE);
    kv_slice ctx = kv_slice_make(big, REP_MAX_PAYLOAD - REP_MAX_VALUE);
    EXPECT_RC(rep_client_put(c, kv_slice_str("k"), ctx, value, NULL),
              KV_ETOOLARGE);
    /* Each field over its own limit is refused the same way. */
    EXPECT_RC(rep_client_put(c, kv_slice_make(big, REP_MAX_KEY + 1),
                             kv_slice_make(NULL, 0), kv_slice_str("v"), NULL),
              KV_ETOOLARGE);
    EXPECT_RC(rep_client_put(c, kv_slice_str("k"), kv_slice_make(NULL, 0),
                             kv_slice_make(big, REP_MAX_VALUE + 1u), NULL),
              KV_ETOOLARGE);
    kv_buf obj = KV_BUF_INIT;
    EXPECT_RC(rep_client_get(c, kv_slice_str("k"), NULL, &obj), KV_ENOTFOUND);
    rep_client_close(c);
    fake_stop(&s);
    cr_assert_eq(s.first_type, REP_GET, "the node saw a %s first",
                 rep_msg_type_name(s.first_type));
    kv_buf_release(&obj);
    kv_free(big);
}
