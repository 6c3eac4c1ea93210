/*
 * A node serving real TCP clients in this process: writes and reads,
 * siblings and their resolution, deletes, a restart that keeps identity
 * and data, and bad input (garbage, oversize frames, frames before hello,
 * idle peers) that closes only the offending connection while the node
 * keeps serving everyone else; pipelined requests answered in few writes
 * (the node's counters in node_int.h), and a client gone with answers
 * still unwritten. Scans of the node's keys, over a connection and through
 * a local client, their bounds, and malformed scan replies.
 */
#include "replica/client.h"
#include "replica/dvv.h"
#include "replica/node.h"
#include "replica/node_int.h"
#include "replica/proto.h"
#include "tests/testutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

static char g_dir[64];
static rep_node *g_node;

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-node");
    quiet_log();
}

static void teardown(void) {
    if (g_node) rep_node_close(g_node);
    g_node = NULL;
    rm_tree(g_dir);
}

TestSuite(node, .init = setup, .fini = teardown, .timeout = 60);

static void start_node(uint32_t idle_ms) {
    rep_node_opts o;
    rep_node_opts_init(&o);
    o.data_dir = g_dir;
    o.listen = "127.0.0.1:0";
    o.name = "solo";
    o.idle_ms = idle_ms;
    o.engine.memtable_bytes = 1 << 20;
    OK(rep_node_open(&o, &g_node));
    OK(rep_node_start(g_node));
}

static rep_client *client(void) {
    rep_client *c;
    OK(rep_client_connect(rep_node_address(g_node), 5000, &c));
    cr_assert_str_eq(rep_client_node(c), "solo");
    return c;
}

static kv_slice S(const char *s) {
    return kv_slice_str(s);
}

/* Get key: its set (NULL if absent). */
static dvv_set *get(rep_client *c, const char *key) {
    kv_buf obj = KV_BUF_INIT;
    int rc = rep_client_get(c, S(key), NULL, &obj);
    dvv_set *s = NULL;
    if (rc == KV_ENOTFOUND) return NULL;
    OK(rc);
    OK(dvv_set_decode(kv_buf_slice(&obj), &s));
    kv_buf_release(&obj);
    return s;
}

static void ctx_of(const dvv_set *s, kv_buf *out) {
    kv_buf_reset(out);
    if (!s) return;
    dvv_ctx *c;
    OK(dvv_set_join(s, &c));
    OK(dvv_ctx_encode(c, out));
    dvv_ctx_free(c);
}

static void expect_values(const dvv_set *s, int n, const char **want) {
    cr_assert_not_null(s);
    cr_assert_eq(dvv_set_siblings(s), (size_t)n);
    for (int i = 0; i < n; i++) {
        bool found = false;
        for (size_t j = 0; j < dvv_set_siblings(s) && !found; j++)
            found = kv_slice_eq(dvv_set_sibling(s, j).value.bytes, S(want[i]));
        cr_assert(found, "sibling '%s' missing", want[i]);
    }
}

Test(node, put_get_siblings_resolve_delete) {
    start_node(60000);
    rep_client *a = client(), *b = client();
    kv_buf ctx = KV_BUF_INIT;
    cr_assert_null(get(a, "cart/alice"));
    OK(rep_client_put(a, S("cart/alice"), S(""), S("apples"), NULL));
    dvv_set *s = get(b, "cart/alice");
    expect_values(s, 1, (const char *[]){"apples"});
    /* Both clients write with the context they read: two siblings. */
    ctx_of(s, &ctx);
    OK(rep_client_put(a, S("cart/alice"), kv_buf_slice(&ctx), S("pears"),
                      NULL));
    OK(rep_client_put(b, S("cart/alice"), kv_buf_slice(&ctx), S("plums"),
                      NULL));
    dvv_set_free(s);
    s = get(a, "cart/alice");
    expect_values(s, 2, (const char *[]){"pears", "plums"});
    /* A write with the context of both resolves them. */
    ctx_of(s, &ctx);
    OK(rep_client_put(b, S("cart/alice"), kv_buf_slice(&ctx), S("pears+plums"),
                      &(rep_opts){.sync = true}));
    dvv_set_free(s);
    s = get(a, "cart/alice");
    expect_values(s, 1, (const char *[]){"pears+plums"});
    /* Delete with the context: one tombstone remains, and a later write
     * with the tombstone's context replaces it. */
    ctx_of(s, &ctx);
    OK(rep_client_del(a, S("cart/alice"), kv_buf_slice(&ctx), NULL));
    dvv_set_free(s);
    s = get(a, "cart/alice");
    cr_assert_eq(dvv_set_siblings(s), 1);
    cr_assert(dvv_set_sibling(s, 0).value.flags & DVV_TOMBSTONE);
    ctx_of(s, &ctx);
    OK(rep_client_put(a, S("cart/alice"), kv_buf_slice(&ctx), S("again"),
                      NULL));
    dvv_set_free(s);
    s = get(b, "cart/alice");
    expect_values(s, 1, (const char *[]){"again"});
    dvv_set_free(s);
    kv_buf_release(&ctx);
    rep_client_close(a);
    rep_client_close(b);
}

/* A put hands back the context of what it made, so the writer's next put
 * supersedes its own last one without a read; but only when nothing else
 * remains: a context covering a sibling the writer never saw would let
 * its next put hide that sibling. */
Test(node, put_returns_a_context_only_the_writer_has_seen) {
    start_node(60000);
    rep_client *a = client(), *b = client();
    kv_buf ca = KV_BUF_INIT, cb = KV_BUF_INIT;
    OK(rep_client_put_ctx(a, S("doc"), S(""), S("v1"), NULL, &ca));
    cr_assert_gt(ca.len, 0, "a lone version comes back with a context");
    OK(rep_client_put_ctx(a, S("doc"), kv_buf_slice(&ca), S("v2"), NULL, &ca));
    dvv_set *s = get(b, "doc");
    expect_values(s, 1, (const char *[]){"v2"}); /* v2 superseded v1 */
    dvv_set_free(s);
    /* b writes without having read: a sibling; a's reply has no context
     * now, and b's neither. */
    OK(rep_client_put_ctx(b, S("doc"), S(""), S("b1"), NULL, &cb));
    cr_assert_eq(cb.len, 0, "siblings remain: no context");
    OK(rep_client_put_ctx(a, S("doc"), kv_buf_slice(&ca), S("v3"), NULL, &ca));
    cr_assert_eq(ca.len, 0, "siblings remain: no context");
    s = get(b, "doc");
    expect_values(s, 2, (const char *[]){"v3", "b1"}); /* b1 not hidden */
    /* A write with the read's context resolves, and gets one back. */
    ctx_of(s, &cb);
    dvv_set_free(s);
    OK(rep_client_put_ctx(b, S("doc"), kv_buf_slice(&cb), S("merged"), NULL,
                          &cb));
    cr_assert_gt(cb.len, 0);
    kv_buf_release(&ca);
    kv_buf_release(&cb);
    rep_client_close(a);
    rep_client_close(b);
}

/* A nosync put is acknowledged from the WAL before its fsync (the
 * filesystem's close); asking for both sync and nosync is refused before
 * anything is sent. */
Test(node, nosync_puts_are_stored_and_exclusive_with_sync) {
    start_node(60000);
    rep_client *a = client();
    OK(rep_client_put(a, S("k"), S(""), S("quick"),
                      &(rep_opts){.nosync = true}));
    dvv_set *s = get(a, "k");
    expect_values(s, 1, (const char *[]){"quick"});
    dvv_set_free(s);
    EXPECT_RC(rep_client_put(a, S("k"), S(""), S("x"),
                             &(rep_opts){.sync = true, .nosync = true}),
              -EINVAL);
    /* The connection is still good. */
    OK(rep_client_put(a, S("k2"), S(""), S("v"), &(rep_opts){.sync = true}));
    rep_client_close(a);
}

Test(node, bad_requests_are_refused_and_the_client_stays_usable) {
    start_node(60000);
    rep_client *c = client();
    kv_buf obj = KV_BUF_INIT;
    EXPECT_RC(rep_client_get(c, S(""), NULL, &obj), -EINVAL);
    EXPECT_RC(rep_client_get(c, S("k"), &(rep_opts){.n = 2, .r = 3}, &obj),
              -EINVAL);
    /* A context that is not one: the put fails, nothing is written. */
    EXPECT_RC(rep_client_put(c, S("k"), S("not a context"), S("v"), NULL),
              KV_EPROTO);
    EXPECT_RC(rep_client_get(c, S("k"), NULL, &obj), KV_ENOTFOUND);
    OK(rep_client_put(c, S("k"), S(""), S("v"), NULL));
    OK(rep_client_get(c, S("k"), NULL, &obj));
    kv_buf_release(&obj);
    rep_client_close(c);
}

Test(node, restart_keeps_identity_and_data) {
    start_node(60000);
    rep_client *c = client();
    char k[32], v[32];
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        OK(rep_client_put(c, S(k), S(""), S(v), &(rep_opts){.sync = true}));
    }
    rep_client_close(c);
    OK(rep_node_close(g_node));
    g_node = NULL;
    /* Another name for the same directory is refused. */
    rep_node_opts o;
    rep_node_opts_init(&o);
    o.data_dir = g_dir;
    o.name = "impostor";
    EXPECT_RC(rep_node_open(&o, &g_node), -EINVAL);
    cr_assert_null(g_node);
    start_node(60000);
    c = client();
    for (int i = 0; i < 500; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        dvv_set *s = get(c, k);
        expect_values(s, 1, (const char *[]){v});
        dvv_set_free(s);
    }
    rep_client_close(c);
}

/* A raw TCP connection to the node. */
static int raw_connect(void) {
    struct sockaddr_in sa;
    OK(rep_parse_addr(rep_node_address(g_node), &sa));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* Whether the node closed fd within ms (reads until EOF, dropping any
 * error frame it sent first). */
static bool closed_by_node(int fd, int ms) {
    char buf[4096];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, ms) <= 0) return false;
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) return true;
    }
}

static void send_bytes(int fd, const void *p, size_t n) {
    cr_assert_eq(write(fd, p, n), (ssize_t)n);
}

static void send_hello(int fd) {
    kv_buf f = KV_BUF_INIT;
    rep_msg h = {.type = REP_HELLO, .id = 1, .u64 = REP_PROTO_VERSION};
    h.text = S("raw");
    OK(rep_msg_encode(&h, &f));
    send_bytes(fd, f.ptr, f.len);
    kv_buf_release(&f);
}

Test(node, bad_input_closes_only_that_connection) {
    start_node(60000);
    rep_client *good = client();
    OK(rep_client_put(good, S("k"), S(""), S("v"), NULL));

    /* Garbage instead of a hello. */
    int fd = raw_connect();
    send_bytes(fd, "GET / HTTP/1.1\r\n\r\n", 18);
    cr_assert(closed_by_node(fd, 3000));
    close(fd);

    /* A request before the hello. */
    fd = raw_connect();
    kv_buf f = KV_BUF_INIT;
    rep_msg g = {.type = REP_GET, .id = 5, .key = S("k")};
    OK(rep_msg_encode(&g, &f));
    send_bytes(fd, f.ptr, f.len);
    cr_assert(closed_by_node(fd, 3000));
    close(fd);

    /* A frame announcing 1 GiB after a good hello: refused at once, from
     * its header (no payload follows). */
    fd = raw_connect();
    send_hello(fd);
    uint8_t h[24] = {0};
    kv_put_u32(h, 1u << 30);
    kv_put_u16(h + 4, REP_PUT);
    send_bytes(fd, h, sizeof h);
    cr_assert(closed_by_node(fd, 3000));
    close(fd);

    /* A flipped bit in a request frame. */
    fd = raw_connect();
    send_hello(fd);
    kv_buf_reset(&f);
    OK(rep_msg_encode(&g, &f));
    f.ptr[f.len - 1] ^= 1;
    send_bytes(fd, f.ptr, f.len);
    cr_assert(closed_by_node(fd, 3000));
    close(fd);

    /* A hello of another protocol version. */
    fd = raw_connect();
    kv_buf_reset(&f);
    rep_msg hv = {.type = REP_HELLO, .id = 1, .u64 = 99};
    OK(rep_msg_encode(&hv, &f));
    send_bytes(fd, f.ptr, f.len);
    cr_assert(closed_by_node(fd, 3000));
    close(fd);
    kv_buf_release(&f);

    /* The well-behaved client was never disturbed. */
    kv_buf obj = KV_BUF_INIT;
    OK(rep_client_get(good, S("k"), NULL, &obj));
    kv_buf_release(&obj);
    rep_client_close(good);
}

Test(node, idle_connections_time_out) {
    start_node(300);
    int fd = raw_connect();
    send_hello(fd);
    cr_assert(closed_by_node(fd, 5000), "idle connection still open");
    close(fd);
    /* Half a connection: no hello at all. */
    fd = raw_connect();
    cr_assert(closed_by_node(fd, 5000));
    close(fd);
    /* An active client is not closed while it keeps talking. */
    rep_client *c = client();
    for (int i = 0; i < 6; i++) {
        OK(rep_client_put(c, S("k"), S(""), S("v"), NULL));
        usleep(100 * 1000);
    }
    rep_client_close(c);
}

Test(node, stop_ends_requests_and_closes_clients) {
    start_node(60000);
    rep_client *c = client();
    OK(rep_client_put(c, S("k"), S(""), S("v"), NULL));
    rep_node_stop(g_node);
    kv_buf obj = KV_BUF_INIT;
    int rc = 0;
    for (int i = 0; i < 100 && rc == 0; i++) {
        rc = rep_client_get(c, S("k"), NULL, &obj);
        usleep(10000);
    }
    cr_assert_neq(rc, 0, "a stopped node still answers");
    kv_buf_release(&obj);
    rep_client_close(c);
    /* A connection to a stopped node is refused. */
    rep_client *d = (rep_client *)1;
    cr_assert_neq(rep_client_connect(rep_node_address(g_node), 1000, &d), 0);
    cr_assert_null(d);
}

static uint64_t actor_of_write(const char *key, const char *value) {
    rep_client *c = client();
    OK(rep_client_put(c, S(key), S(""), S(value), NULL));
    dvv_set *s = get(c, key);
    cr_assert_eq(dvv_set_siblings(s), 1);
    uint64_t a = dvv_set_sibling(s, 0).actor;
    dvv_set_free(s);
    rep_client_close(c);
    return a;
}

/* A node keeps its actor across restarts, and a node whose directory was
 * wiped comes back as a new actor (same name), so it cannot reuse a dot
 * of its former self. A damaged identity file stops the node. */
Test(node, identity_survives_restarts_and_not_a_wipe) {
    start_node(60000);
    uint64_t first = actor_of_write("k1", "v1");
    OK(rep_node_close(g_node));
    g_node = NULL;
    start_node(60000);
    cr_assert_eq(actor_of_write("k2", "v2"), first);
    OK(rep_node_close(g_node));
    g_node = NULL;
    rm_tree(g_dir);
    start_node(60000);
    cr_assert_neq(actor_of_write("k3", "v3"), first);
    OK(rep_node_close(g_node));
    g_node = NULL;
    char p[128];
    snprintf(p, sizeof p, "%s/NODE", g_dir);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs("solo\nnot-hex\n", f);
    fclose(f);
    rep_node_opts o;
    rep_node_opts_init(&o);
    o.data_dir = g_dir;
    o.name = "solo";
    EXPECT_RC(rep_node_open(&o, &g_node), KV_ECORRUPT);
    cr_assert_null(g_node);
}

typedef struct local_arg {
    int id;
    int ok;
    bool direct; /* rep_node_connect_local, else rep_node_connect */
    int n;       /* puts to make: "<prefix>/<id>/<i>" = "v<i>" */
    const char *prefix;
} local_arg;

static void *local_writer(void *p) {
    local_arg *a = p;
    rep_client *c;
    if ((a->direct ? rep_node_connect_local : rep_node_connect)(g_node, 5000,
                                                                &c))
        return NULL;
    for (int i = 0; i < a->n; i++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "%s/%d/%d", a->prefix, a->id, i);
        snprintf(val, sizeof val, "v%d", i);
        if (rep_client_put(c, S(key), S(""), S(val),
                           &(rep_opts){.nosync = a->direct && i % 2 == 0}) == 0)
            a->ok++;
    }
    rep_client_close(c);
    return NULL;
}

/* Four writer threads of a kind, each its own client; joined. */
static void run_writers(local_arg *args, bool direct, int n,
                        const char *prefix) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (local_arg){i, 0, direct, n, prefix};
        pthread_create(&t[i], NULL, local_writer, &args[i]);
    }
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
}

/* The embedded mode's node: no listener, started. */
static void start_embedded(void) {
    rep_node_opts o;
    rep_node_opts_init(&o);
    o.data_dir = g_dir;
    o.name = "embedded";
    OK(rep_node_open(&o, &g_node));
    OK(rep_node_start(g_node));
}

/* The embedded mode: a node with no listener, served in-process over
 * socketpairs to clients in several threads; everything written is read
 * back, and a client of a stopped node gets an error, not a hang. */
Test(node, in_process_clients_without_tcp) {
    start_embedded();
    cr_assert_str_eq(rep_node_address(g_node), "", "no listener");
    local_arg args[4];
    run_writers(args, false, 50, "local");
    rep_client *c;
    OK(rep_node_connect(g_node, 5000, &c));
    cr_assert_str_eq(rep_client_node(c), "embedded");
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(args[i].ok, 50, "writer %d: %d of 50", i, args[i].ok);
        for (int k = 0; k < 50; k++) {
            char key[32], val[32];
            snprintf(key, sizeof key, "local/%d/%d", i, k);
            snprintf(val, sizeof val, "v%d", k);
            dvv_set *s = get(c, key);
            cr_assert_not_null(s, "%s is missing", key);
            cr_assert_eq(dvv_set_siblings(s), 1);
            cr_assert(kv_slice_eq(dvv_set_sibling(s, 0).value.bytes, S(val)));
            dvv_set_free(s);
        }
    }
    rep_node_stop(g_node);
    kv_buf obj = KV_BUF_INIT;
    int rc = rep_client_get(c, S("local/0/0"), NULL, &obj);
    cr_assert(rc != 0, "a stopped node answered");
    kv_buf_release(&obj);
    rep_client_close(c);
}

/* The embedded mount's client: gets and puts on the caller's thread,
 * answering as the node's coordinator does (what one writes the other
 * reads, contexts as in put_returns_a_context_only_the_writer_has_seen,
 * the same refusals); deletes go through the loop; a node that listens
 * refuses it; a stopped node gives an error. */
Test(node, local_clients_answer_as_the_coordinator_does) {
    start_embedded();
    rep_client *l, *w;
    OK(rep_node_connect_local(g_node, 5000, &l));
    OK(rep_node_connect(g_node, 5000, &w));
    cr_assert_str_eq(rep_client_node(l), "embedded");

    kv_buf ca = KV_BUF_INIT, cb = KV_BUF_INIT, obj = KV_BUF_INIT;
    OK(rep_client_put_ctx(l, S("doc"), S(""), S("v1"), NULL, &ca));
    cr_assert_gt(ca.len, 0, "a lone version comes back with a context");
    OK(rep_client_put_ctx(l, S("doc"), kv_buf_slice(&ca), S("v2"), NULL, &ca));
    dvv_set *s = get(w, "doc");
    expect_values(s, 1, (const char *[]){"v2"});
    dvv_set_free(s);
    OK(rep_client_put_ctx(w, S("doc"), S(""), S("b1"), NULL, &cb));
    OK(rep_client_put_ctx(l, S("doc"), kv_buf_slice(&ca), S("v3"), NULL, &ca));
    cr_assert_eq(ca.len, 0, "siblings remain: no context");
    s = get(l, "doc");
    expect_values(s, 2, (const char *[]){"v3", "b1"});
    ctx_of(s, &cb);
    dvv_set_free(s);
    /* The same bytes both ways. */
    kv_buf viaw = KV_BUF_INIT;
    OK(rep_client_get(l, S("doc"), NULL, &obj));
    OK(rep_client_get(w, S("doc"), NULL, &viaw));
    cr_assert(kv_slice_eq(kv_buf_slice(&obj), kv_buf_slice(&viaw)));
    kv_buf_release(&viaw);

    /* Refusals, and the client stays usable. */
    EXPECT_RC(rep_client_get(l, S(""), NULL, &obj), -EINVAL);
    EXPECT_RC(rep_client_get(l, S("k"), &(rep_opts){.n = 2, .r = 3}, &obj),
              -EINVAL);
    EXPECT_RC(rep_client_put(l, S("k"), S("not a context"), S("v"), NULL),
              KV_EPROTO);
    EXPECT_RC(rep_client_put(l, S("k"), S(""), S("x"),
                             &(rep_opts){.sync = true, .nosync = true}),
              -EINVAL);
    EXPECT_RC(rep_client_get(l, S("k"), NULL, &obj), KV_ENOTFOUND);
    EXPECT_RC(rep_client_bucket(l, S("b"), 1), -ENOTSUP);
    cr_assert_not(rep_client_broken(l));

    /* A delete (over the loop) with the read's context. */
    OK(rep_client_del(l, S("doc"), kv_buf_slice(&cb), NULL));
    for (int i = 0; i < 2; i++) {
        s = get(i ? w : l, "doc");
        cr_assert_eq(dvv_set_siblings(s), 1);
        cr_assert(dvv_set_sibling(s, 0).value.flags & DVV_TOMBSTONE);
        dvv_set_free(s);
    }

    /* Threads, each with its own local client, group-committing. */
    local_arg args[4];
    run_writers(args, true, 200, "direct");
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(args[i].ok, 200, "writer %d: %d of 200", i, args[i].ok);
        for (int k = 0; k < 200; k += 13) {
            char key[32];
            snprintf(key, sizeof key, "direct/%d/%d", i, k);
            s = get(w, key);
            cr_assert_not_null(s, "%s is missing", key);
            dvv_set_free(s);
        }
    }

    rep_node_stop(g_node);
    EXPECT_RC(rep_client_get(l, S("direct/0/0"), NULL, &obj), KV_ECLOSED);
    EXPECT_RC(rep_client_put(l, S("k"), S(""), S("v"), NULL), KV_ECLOSED);
    kv_buf_release(&obj);
    kv_buf_release(&ca);
    kv_buf_release(&cb);
    rep_client_close(w);
    rep_client_close(l);
}

Test(node, a_node_that_listens_refuses_local_clients) {
    start_node(60000);
    rep_client *c = (rep_client *)1;
    EXPECT_RC(rep_node_connect_local(g_node, 5000, &c), -ENOTSUP);
    cr_assert_null(c);
}

/* Gets in two steps: several in flight on several clients from one
 * thread answer as one-step gets do; a finish without a start, or a
 * second start, is refused and the client stays usable. */
Test(node, gets_started_together_finish_with_the_same_answers) {
    start_node(60000);
    enum { K = 6 };
    rep_client *cs[K];
    for (int i = 0; i < K; i++) {
        cs[i] = client();
        char key[16], val[16];
        snprintf(key, sizeof key, "split/%d", i);
        snprintf(val, sizeof val, "v%d", i);
        if (i != 3) OK(rep_client_put(cs[i], S(key), S(""), S(val), NULL));
    }
    for (int i = 0; i < K; i++) {
        char key[16];
        snprintf(key, sizeof key, "split/%d", i);
        OK(rep_client_get_start(cs[i], S(key), NULL));
    }
    for (int i = K - 1; i >= 0; i--) {
        kv_buf got = KV_BUF_INIT, one = KV_BUF_INIT;
        char key[16];
        snprintf(key, sizeof key, "split/%d", i);
        int rc = rep_client_get_finish(cs[i], &got);
        if (i == 3) {
            EXPECT_RC(rc, KV_ENOTFOUND);
        } else {
            OK(rc);
            OK(rep_client_get(cs[i], S(key), NULL, &one));
            cr_assert(kv_slice_eq(kv_buf_slice(&got), kv_buf_slice(&one)));
        }
        kv_buf_release(&got);
        kv_buf_release(&one);
    }
    kv_buf b = KV_BUF_INIT;
    EXPECT_RC(rep_client_get_finish(cs[0], &b), -EINVAL);
    OK(rep_client_get_start(cs[0], S("split/0"), NULL));
    EXPECT_RC(rep_client_get_start(cs[0], S("split/1"), NULL), -EINVAL);
    OK(rep_client_get_finish(cs[0], &b));
    dvv_set *s = NULL;
    OK(dvv_set_decode(kv_buf_slice(&b), &s));
    expect_values(s, 1, (const char *[]){"v0"});
    dvv_set_free(s);
    kv_buf_release(&b);
    for (int i = 0; i < K; i++) rep_client_close(cs[i]);
}

typedef struct replies {
    int got, hello;
} replies;

static int count_reply(void *arg, const rep_msg *m) {
    replies *r = arg;
    if (m->type == REP_HELLO)
        r->hello++;
    else if (m->type == REP_GET_REPLY && m->status == 0)
        r->got++;
    return 0;
}

/* Send up to len bytes of p on non-blocking fd for about ms; bytes taken. */
static size_t push(int fd, const uint8_t *p, size_t len, int ms) {
    size_t off = 0;
    for (int t = 0; t < ms / 5 && off < len; t++) {
        ssize_t w = write(fd, p + off, len - off);
        if (w > 0)
            off += (size_t)w;
        else
            usleep(5000);
    }
    return off;
}

/* n GETs of key, encoded back to back. */
static void gets(kv_buf *f, int n, const char *key) {
    for (int i = 0; i < n; i++) {
        rep_msg g = {.type = REP_GET, .id = (uint64_t)i + 2, .key = S(key)};
        OK(rep_msg_encode(&g, f));
    }
}

static int flood_connect(void) {
    int fd = raw_connect();
    send_hello(fd);
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    return fd;
}

/* A client that sends requests without reading the answers makes the node
 * stop reading it once 1 MiB of answers wait (max_queued), instead of
 * buffering without bound; other clients are still served; and a client
 * that does read gets every answer, through pauses and resumes. */
Test(node, a_client_that_does_not_read_is_held_back) {
    rep_node_opts o;
    rep_node_opts_init(&o);
    o.data_dir = g_dir;
    o.listen = "127.0.0.1:0";
    o.name = "solo";
    o.max_queued = 1u << 20;
    OK(rep_node_open(&o, &g_node));
    OK(rep_node_start(g_node));
    rep_client *good = client();
    char *big = kv_malloc(16384);
    memset(big, 'x', 16384);
    OK(rep_client_put(good, S("big"), S(""), kv_slice_make(big, 16384), NULL));
    /* 20 MB of requests would be 9 GB of answers: the node must stop
     * taking them long before. */
    kv_buf f = KV_BUF_INIT;
    gets(&f, 600000, "big");
    int fd = flood_connect();
    /* The first second fills the socket buffers both ways; in the next,
     * a node that stopped reading takes (next to) nothing more. */
    size_t took = push(fd, f.ptr, f.len, 1000);
    cr_assert_lt(took, f.len, "the node took all 20 MB in a second");
    size_t more = push(fd, f.ptr + took, f.len - took, 1000);
    cr_assert_lt(more, 64u << 10,
                 "the node kept reading a client that reads nothing (%zu "
                 "more bytes after %zu)",
                 more, took);
    dvv_set *s = get(good, "big");
    cr_assert_not_null(s, "another client is still served");
    dvv_set_free(s);
    close(fd);
    /* 3,000 answers (48 MB) to a client that reads them as it sends. */
    kv_buf_reset(&f);
    gets(&f, 3000, "big");
    fd = flood_connect();
    replies r = {0, 0};
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    char buf[65536];
    size_t off = 0;
    for (int idle = 0; idle < 400 && r.got < 3000;) {
        off += push(fd, f.ptr + off, f.len - off, 5);
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            OK(rep_parser_feed(&p, buf, (size_t)n, count_reply, &r));
            idle = 0;
        } else {
            usleep(5000);
            idle++;
        }
    }
    cr_assert_eq(r.got, 3000, "%d of 3000 answered", r.got);
    rep_parser_release(&p);
    kv_buf_release(&f);
    kv_free(big);
    close(fd);
    rep_client_close(good);
}

/* Frames read from a raw connection, in arrival order. */
typedef struct seen {
    int n, cap;
    rep_msg *m; /* type, id, status and u64 only */
    size_t value_bytes;
} seen;

static int keep_frame(void *arg, const rep_msg *m) {
    seen *s = arg;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->m = realloc(s->m, (size_t)s->cap * sizeof *s->m);
        cr_assert_not_null(s->m);
    }
    rep_msg k = {
        .type = m->type, .id = m->id, .status = m->status, .u64 = m->u64};
    s->m[s->n++] = k;
    s->value_bytes += m->value.len;
    return 0;
}

/* Read frames from blocking fd into s until it holds want of them or the
 * node closes (then *eof); fails after ms without progress. */
static void read_frames(int fd, rep_parser *p, seen *s, int want, int ms,
                        bool *eof) {
    static char buf[65536];
    if (eof) *eof = false;
    while (s->n < want) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        cr_assert_gt(poll(&pf, 1, ms), 0, "%d of %d frames, then nothing", s->n,
                     want);
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) {
            cr_assert(eof, "the node closed after %d of %d frames", s->n, want);
            *eof = true;
            return;
        }
        OK(rep_parser_feed(p, buf, (size_t)r, keep_frame, s));
    }
}

static uint64_t counter(atomic_uint_fast64_t *c) {
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Frames sent to a connection in one loop turn go out in one write: 2,000
 * pipelined pings (one burst) are answered by a handful of writes, not
 * 2,000, every pong in order with its ping's id and clock; and 1,000
 * pipelined gets, answered as the thread pool finishes them, each get
 * exactly one answer with the right value. */
Test(node, pipelined_requests_are_answered_in_few_writes) {
    start_node(60000);
    rep_client *c = client();
    char k[32], v[32];
    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof k, "pipe/%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        OK(rep_client_put(c, S(k), S(""), S(v), NULL));
    }
    rep_client_close(c);

    int fd = raw_connect();
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    seen s = {0};
    send_hello(fd);
    read_frames(fd, &p, &s, 1, 5000, NULL);
    cr_assert_eq(s.m[0].type, REP_HELLO);

    enum { PINGS = 2000, GETS = 1000 };
    kv_buf f = KV_BUF_INIT;
    for (int i = 0; i < PINGS; i++) {
        rep_msg m = {.type = REP_PING, .id = 100 + (uint64_t)i};
        m.u64 = 7 * (uint64_t)i + 1;
        OK(rep_msg_encode(&m, &f));
    }
    uint64_t frames0 = counter(&g_node->frames_out);
    uint64_t writes0 = counter(&g_node->writes_out);
    send_bytes(fd, f.ptr, f.len);
    read_frames(fd, &p, &s, 1 + PINGS, 5000, NULL);
    for (int i = 0; i < PINGS; i++) {
        rep_msg *m = &s.m[1 + i];
        cr_assert_eq(m->type, REP_PONG, "frame %d: type %u", i, m->type);
        cr_assert_eq(m->id, 100 + (uint64_t)i, "pong %d out of order", i);
        cr_assert_eq(m->u64, 7 * (uint64_t)i + 1);
    }
    uint64_t frames = counter(&g_node->frames_out) - frames0;
    uint64_t writes = counter(&g_node->writes_out) - writes0;
    cr_assert_geq(frames, PINGS);
    cr_assert_leq(writes, PINGS / 20,
                  "%llu writes for %llu frames: not coalesced",
                  (unsigned long long)writes, (unsigned long long)frames);

    kv_buf_reset(&f);
    for (int i = 0; i < GETS; i++) {
        snprintf(k, sizeof k, "pipe/%d", i % 10);
        rep_msg m = {.type = REP_GET, .id = 10000 + (uint64_t)i, .key = S(k)};
        OK(rep_msg_encode(&m, &f));
    }
    send_bytes(fd, f.ptr, f.len);
    s.n = 0;
    s.value_bytes = 0;
    read_frames(fd, &p, &s, GETS, 10000, NULL);
    bool *answered = calloc(GETS, 1);
    for (int i = 0; i < GETS; i++) {
        rep_msg *m = &s.m[i];
        cr_assert_eq(m->type, REP_GET_REPLY);
        OK(m->status);
        cr_assert(m->id >= 10000 && m->id < 10000 + GETS, "id %llu",
                  (unsigned long long)m->id);
        cr_assert(!answered[m->id - 10000], "get %llu answered twice",
                  (unsigned long long)m->id);
        answered[m->id - 10000] = true;
    }
    cr_assert_gt(s.value_bytes, 0);
    free(answered);
    free(s.m);
    rep_parser_release(&p);
    kv_buf_release(&f);
    close(fd);
}

/* Answers queued in a turn and a protocol error found later in the same
 * read: the answers and the error frame that explains the close arrive
 * before the close. */
Test(node, answers_and_the_error_frame_go_out_before_a_close) {
    start_node(60000);
    int fd = raw_connect();
    kv_buf f = KV_BUF_INIT;
    rep_msg h = {.type = REP_HELLO, .id = 1, .u64 = REP_PROTO_VERSION};
    h.text = S("raw");
    OK(rep_msg_encode(&h, &f));
    for (int i = 0; i < 50; i++) {
        rep_msg m = {.type = REP_PING, .id = 2 + (uint64_t)i, .u64 = 9};
        OK(rep_msg_encode(&m, &f));
    }
    rep_msg bad = {.type = REP_PONG, .id = 99}; /* not for a node */
    OK(rep_msg_encode(&bad, &f));
    send_bytes(fd, f.ptr, f.len);
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    seen s = {0};
    bool eof;
    read_frames(fd, &p, &s, 1000, 5000, &eof);
    cr_assert(eof);
    cr_assert_eq(s.n, 52, "%d frames before the close", s.n);
    cr_assert_eq(s.m[0].type, REP_HELLO);
    for (int i = 0; i < 50; i++) {
        cr_assert_eq(s.m[1 + i].type, REP_PONG);
        cr_assert_eq(s.m[1 + i].id, 2 + (uint64_t)i);
    }
    cr_assert_eq(s.m[51].type, REP_ERROR);
    cr_assert_eq(s.m[51].id, 99);
    cr_assert_eq(s.m[51].status, KV_EPROTO);
    free(s.m);
    rep_parser_release(&p);
    kv_buf_release(&f);
    close(fd);
}

/* Clients that ask for megabytes of answers and reset the connection
 * without reading any: their answers are queued, in flight or still being
 * computed when the node finds the connection gone. Another client
 * pipelining meanwhile gets every answer; the node frees what the gone
 * ones had queued (the sanitizer build checks no byte leaks). */
Test(node, a_client_gone_with_answers_pending_costs_others_nothing) {
    start_node(60000);
    rep_client *good = client();
    size_t vlen = 16384;
    char *big = kv_malloc(vlen);
    memset(big, 'y', vlen);
    OK(rep_client_put(good, S("big"), S(""), kv_slice_make(big, vlen), NULL));
    kv_buf f = KV_BUF_INIT;
    gets(&f, 1500, "big"); /* 24 MB of answers */
    int other = raw_connect();
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    seen s = {0};
    send_hello(other);
    read_frames(other, &p, &s, 1, 5000, NULL);
    for (int round = 0; round < 4; round++) {
        int fd = flood_connect();
        cr_assert_eq(push(fd, f.ptr, f.len, 2000), f.len);
        usleep(round * 20000); /* from the first answers to many queued */
        kv_buf pings = KV_BUF_INIT;
        for (int i = 0; i < 200; i++) {
            rep_msg m = {.type = REP_PING, .id = 1000 * (uint64_t)round + i};
            OK(rep_msg_encode(&m, &pings));
        }
        send_bytes(other, pings.ptr, pings.len);
        kv_buf_release(&pings);
        struct linger l = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        close(fd); /* a reset: whatever the node still writes fails */
        s.n = 0;
        read_frames(other, &p, &s, 200, 5000, NULL);
        for (int i = 0; i < 200; i++)
            cr_assert_eq(s.m[i].id, 1000 * (uint64_t)round + i);
        dvv_set *d = get(good, "big");
        cr_assert_not_null(d);
        cr_assert_eq(dvv_set_sibling(d, 0).value.bytes.len, vlen);
        dvv_set_free(d);
    }
    free(s.m);
    rep_parser_release(&p);
    kv_buf_release(&f);
    kv_free(big);
    close(other);
    rep_client_close(good);
}

/* ---- scans: the keys one node stores ---- */

#define LIST_MAX 1024

/* What a scan listed, in order. */
typedef struct listing {
    int n;
    char key[LIST_MAX][40];
    uint64_t newest[LIST_MAX];
    bool tomb[LIST_MAX];
    int stop_at, stop_rc; /* cb returns stop_rc at item stop_at (0: never) */
} listing;

static int note_item(void *arg, const rep_scan_item *it) {
    listing *l = arg;
    if (l->stop_at && l->n + 1 == l->stop_at) {
        l->n++;
        return l->stop_rc;
    }
    cr_assert_lt(l->n, LIST_MAX);
    cr_assert(it->key.len > 0 && it->key.len < sizeof l->key[0]);
    memcpy(l->key[l->n], it->key.ptr, it->key.len);
    l->key[l->n][it->key.len] = '\0';
    l->newest[l->n] = it->newest_us;
    l->tomb[l->n] = it->tombstone;
    l->n++;
    return 0;
}

static listing *listing_new(void) {
    listing *l = calloc(1, sizeof *l);
    cr_assert_not_null(l);
    return l;
}

/* Scan every batch of prefix, max items a batch, into l: the batches. */
static int scan_all(rep_client *c, const char *prefix, uint32_t max,
                    listing *l) {
    kv_buf cur = KV_BUF_INIT;
    bool more = true;
    int batches = 0;
    uint32_t lim = max ? max : REP_SCAN_MAX_ITEMS;
    while (more) {
        int before = l->n;
        OK(rep_client_scan(c, S(prefix), &cur, max, note_item, l, &more));
        cr_assert_leq(l->n - before, (int)lim, "a batch of %d items, max %u",
                      l->n - before, lim);
        cr_assert_lt(++batches, 10000, "the scan never ends");
        if (more) cr_assert_gt(cur.len, 0, "more to come from no cursor");
    }
    kv_buf_release(&cur);
    return batches;
}

/* l holds the keys in the node's storage order: by placement hash. */
static void expect_storage_order(const listing *l) {
    for (int i = 1; i < l->n; i++) {
        uint64_t a = ring_hash(S(l->key[i - 1])), b = ring_hash(S(l->key[i]));
        cr_assert(a < b || (a == b && strcmp(l->key[i - 1], l->key[i]) < 0),
                  "'%s' listed before '%s'", l->key[i - 1], l->key[i]);
    }
}

/* l holds exactly the count keys "<p>NNN", each once; only "<p>007" (when
 * deleted) a tombstone; every newest_us within [t0, t1]. */
static void expect_prefix(const listing *l, char p, int count, bool deleted,
                          uint64_t t0, uint64_t t1) {
    cr_assert_eq(l->n, count, "%d keys listed under '%c/', want %d", l->n, p,
                 count);
    bool seen_key[LIST_MAX] = {false};
    for (int i = 0; i < l->n; i++) {
        char q;
        int k = -1, used = 0;
        cr_assert(sscanf(l->key[i], "%c/%3d%n", &q, &k, &used) == 2 && q == p &&
                      used == 5 && l->key[i][5] == '\0' && k >= 0 && k < count,
                  "'%s' listed under '%c/'", l->key[i], p);
        cr_assert_not(seen_key[k], "'%s' listed twice", l->key[i]);
        seen_key[k] = true;
        cr_assert_eq(l->tomb[i], deleted && k == 7, "'%s': tombstone %d",
                     l->key[i], l->tomb[i]);
        cr_assert(l->newest[i] >= t0 && l->newest[i] <= t1,
                  "'%s': newest %llu not in [%llu, %llu]", l->key[i],
                  (unsigned long long)l->newest[i], (unsigned long long)t0,
                  (unsigned long long)t1);
    }
}

/* 300 keys under "a/" (a/007 then deleted), 50 under "b/", 10 under "c/",
 * through c. */
static void fill_prefixes(rep_client *c) {
    const struct {
        char p;
        int n;
    } set[] = {{'a', 300}, {'b', 50}, {'c', 10}};
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < set[s].n; k++) {
            char key[16];
            snprintf(key, sizeof key, "%c/%03d", set[s].p, k);
            OK(rep_client_put(c, S(key), S(""), S("v"), NULL));
        }
    dvv_set *d = get(c, "a/007");
    kv_buf ctx = KV_BUF_INIT;
    ctx_of(d, &ctx);
    dvv_set_free(d);
    OK(rep_client_del(c, S("a/007"), kv_buf_slice(&ctx), NULL));
    kv_buf_release(&ctx);
}

/* An engine key as docs/protocol.md gives a cursor: "o", the key's
 * placement hash big-endian, the key. */
static void cursor_of(const char *key, kv_buf *out) {
    uint8_t h[9] = {'o'};
    uint64_t v = ring_hash(S(key));
    for (int i = 0; i < 8; i++) h[1 + i] = (uint8_t)(v >> (56 - 8 * i));
    OK(kv_buf_set(out, h, sizeof h));
    OK(kv_buf_append(out, key, strlen(key)));
}

/* Every check of a scan through c of the keys fill_prefixes wrote between
 * wall clock t0 and t1; the whole listing (empty prefix) into all. */
static void scan_checks(rep_client *c, uint64_t t0, uint64_t t1, listing *all) {
    /* One prefix, seven a batch: every key once, nothing else. */
    listing *l = listing_new();
    int batches = scan_all(c, "a/", 7, l);
    cr_assert_geq(batches, 300 / 7, "%d batches of at most 7", batches);
    expect_prefix(l, 'a', 300, true, t0, t1);
    expect_storage_order(l);
    memset(l, 0, sizeof *l);
    scan_all(c, "c/", 3, l);
    expect_prefix(l, 'c', 10, false, t0, t1);
    memset(l, 0, sizeof *l);
    scan_all(c, "b/", 0, l);
    expect_prefix(l, 'b', 50, false, t0, t1);

    /* An empty prefix: all 360. */
    scan_all(c, "", 0, all);
    cr_assert_eq(all->n, 360);
    expect_storage_order(all);
    int per[3] = {0};
    for (int i = 0; i < all->n; i++) per[all->key[i][0] - 'a']++;
    cr_assert(per[0] == 300 && per[1] == 50 && per[2] == 10);

    /* A cursor made as the format says resumes right after its key. */
    kv_buf cur = KV_BUF_INIT;
    bool more;
    cursor_of(all->key[99], &cur);
    memset(l, 0, sizeof *l);
    OK(rep_client_scan(c, S(""), &cur, 0, note_item, l, &more));
    cr_assert_not(more);
    cr_assert_eq(l->n, 260);
    cr_assert_str_eq(l->key[0], all->key[100]);

    /* A second put raises the key's newest timestamp. */
    memset(l, 0, sizeof *l);
    kv_buf_reset(&cur);
    OK(rep_client_scan(c, S("b/010"), &cur, 0, note_item, l, &more));
    cr_assert_eq(l->n, 1);
    uint64_t first = l->newest[0];
    usleep(2000);
    dvv_set *d = get(c, "b/010");
    kv_buf ctx = KV_BUF_INIT;
    ctx_of(d, &ctx);
    dvv_set_free(d);
    OK(rep_client_put(c, S("b/010"), kv_buf_slice(&ctx), S("v2"), NULL));
    uint64_t t2 = kv_wall_us();
    kv_buf_release(&ctx);
    memset(l, 0, sizeof *l);
    kv_buf_reset(&cur);
    OK(rep_client_scan(c, S("b/010"), &cur, 0, note_item, l, &more));
    cr_assert_eq(l->n, 1);
    cr_assert_gt(l->newest[0], first);
    cr_assert_leq(l->newest[0], t2);
    cr_assert_not(l->tomb[0]);

    /* Cursors the node cannot use, and bad arguments: refused, and the
     * client stays usable. */
    const char *garbage[] = {"garbage", "o",
                             "o\x01\x02\x03\x04\x05\x06\x07"
                             "\x08"
                             "a/001"};
    for (int i = 0; i < 3; i++) {
        OK(kv_buf_set(&cur, garbage[i], strlen(garbage[i])));
        more = true;
        memset(l, 0, sizeof *l);
        EXPECT_RC(rep_client_scan(c, S("a/"), &cur, 7, note_item, l, &more),
                  KV_EPROTO);
        cr_assert_eq(l->n, 0);
        cr_assert_not(more);
        cr_assert_eq(cur.len, strlen(garbage[i]), "the cursor was changed");
        cr_assert_not(rep_client_broken(c));
    }
    kv_buf_reset(&cur);
    OK(kv_buf_reserve(&cur, REP_SCAN_MAX_CURSOR + 1));
    memset(cur.ptr, 'o', REP_SCAN_MAX_CURSOR + 1);
    cur.len = REP_SCAN_MAX_CURSOR + 1;
    EXPECT_RC(rep_client_scan(c, S(""), &cur, 0, note_item, l, &more),
              KV_EPROTO);
    kv_buf_reset(&cur);
    EXPECT_RC(rep_client_scan(c, S(""), &cur, REP_SCAN_MAX_ITEMS + 1, note_item,
                              l, &more),
              -EINVAL);
    EXPECT_RC(rep_client_scan(c, S(""), &cur, 1, NULL, l, &more), -EINVAL);
    cr_assert_eq(l->n, 0);
    cr_assert_not(rep_client_broken(c));
    scan_all(c, "c/", 4, l);
    expect_prefix(l, 'c', 10, false, t0, t1);

    /* A callback's nonzero return stops the scan and is returned; the
     * cursor stays where the batch began. */
    memset(l, 0, sizeof *l);
    l->stop_at = 3;
    l->stop_rc = 42;
    kv_buf_reset(&cur);
    EXPECT_RC(rep_client_scan(c, S("a/"), &cur, 7, note_item, l, &more), 42);
    cr_assert_eq(l->n, 3, "the callback ran %d times", l->n);
    cr_assert(more);
    cr_assert_eq(cur.len, 0);
    cr_assert_not(rep_client_broken(c));

    /* Siblings: newest_us is the newest of them (the same actor's come
     * newest first), tombstone only when every one is. */
    memset(l, 0, sizeof *l);
    OK(rep_client_scan(c, S("b/020"), &cur, 0, note_item, l, &more));
    cr_assert_eq(l->n, 1);
    first = l->newest[0];
    usleep(2000);
    OK(rep_client_put(c, S("b/020"), S(""), S("sibling"), NULL));
    dvv_set *two = get(c, "b/020");
    cr_assert_eq(dvv_set_siblings(two), 2);
    dvv_set_free(two);
    memset(l, 0, sizeof *l);
    kv_buf_reset(&cur);
    OK(rep_client_scan(c, S("b/020"), &cur, 0, note_item, l, &more));
    cr_assert_eq(l->n, 1);
    cr_assert_gt(l->newest[0], first, "not the newest sibling's time");
    d = get(c, "c/005");
    ctx_of(d, &ctx);
    dvv_set_free(d);
    OK(rep_client_put(c, S("c/005"), S(""), S("sibling"), NULL));
    OK(rep_client_del(c, S("c/005"), kv_buf_slice(&ctx), NULL));
    kv_buf_release(&ctx);
    d = get(c, "c/005");
    cr_assert_eq(dvv_set_siblings(d), 2, "a value and a tombstone");
    dvv_set_free(d);
    memset(l, 0, sizeof *l);
    kv_buf_reset(&cur);
    OK(rep_client_scan(c, S("c/005"), &cur, 0, note_item, l, &more));
    cr_assert_eq(l->n, 1);
    cr_assert_not(l->tomb[0], "one sibling is not a tombstone");
    kv_buf_release(&cur);
    free(l);
}

static void open_scan_node(bool listen) {
    rep_node_opts o;
    rep_node_opts_init(&o);
    o.data_dir = g_dir;
    o.listen = listen ? "127.0.0.1:0" : NULL;
    o.name = "solo";
    o.tombstone_grace_ms = 600000; /* the deleted key keeps its tombstone */
    o.engine.memtable_bytes = 64 << 10; /* keys spread over tables */
    OK(rep_node_open(&o, &g_node));
    OK(rep_node_start(g_node));
}

/* A scan over TCP lists each key of its prefix once across batches of at
 * most max_items, with its newest write time and whether it is deleted;
 * an empty prefix lists all; a cursor the node cannot use is refused with
 * KV_EPROTO and the client goes on; a callback can stop the scan. */
Test(node, scan_lists_every_key_of_a_prefix_once) {
    open_scan_node(true);
    rep_client *c = client();
    uint64_t t0 = kv_wall_us();
    fill_prefixes(c);
    uint64_t t1 = kv_wall_us();
    listing *all = listing_new();
    scan_checks(c, t0, t1, all);
    free(all);
    rep_client_close(c);
}

/* The local client (the embedded mount's) scans the store on the calling
 * thread: the same checks, and the same keys in the same order as a scan
 * over a connection to the same node; once the node stops, KV_ECLOSED. */
Test(node, local_clients_scan_as_the_node_does) {
    open_scan_node(false);
    rep_client *l, *w;
    OK(rep_node_connect_local(g_node, 5000, &l));
    OK(rep_node_connect(g_node, 5000, &w));
    uint64_t t0 = kv_wall_us();
    fill_prefixes(l);
    uint64_t t1 = kv_wall_us();
    listing *all = listing_new(), *wire = listing_new();
    scan_checks(l, t0, t1, all);
    /* On the caller's thread: not a frame through the node's loop. */
    uint64_t frames = counter(&g_node->frames_out);
    scan_all(l, "", 5, wire);
    cr_assert_eq(counter(&g_node->frames_out), frames);
    cr_assert_eq(wire->n, all->n);
    memset(wire, 0, sizeof *wire);
    scan_all(w, "", 5, wire);
    cr_assert_eq(wire->n, all->n);
    for (int i = 0; i < all->n; i++) {
        cr_assert_str_eq(wire->key[i], all->key[i]);
        cr_assert_eq(wire->tomb[i], all->tomb[i]);
    }
    rep_node_stop(g_node);
    kv_buf cur = KV_BUF_INIT;
    bool more;
    EXPECT_RC(rep_client_scan(l, S(""), &cur, 0, note_item, all, &more),
              KV_ECLOSED);
    cr_assert(rep_client_scan(w, S(""), &cur, 0, note_item, all, &more) != 0,
              "a stopped node answered a scan");
    free(all);
    free(wire);
    rep_client_close(w);
    rep_client_close(l);
}

static int count_items(void *arg, const rep_scan_item *it) {
    cr_assert_eq(it->key.len, 4000);
    (*(int *)arg)++;
    return 0;
}

/* A reply stops adding items once its keys pass 1 MiB: 300 keys of 4000
 * bytes come as 263 and 37, over a connection and locally alike. */
Test(node, a_scan_batch_stops_at_a_mebibyte_of_keys) {
    open_scan_node(false);
    rep_client *l, *w;
    OK(rep_node_connect_local(g_node, 5000, &l));
    OK(rep_node_connect(g_node, 5000, &w));
    char key[4001];
    for (int k = 0; k < 300; k++) {
        memset(key, 'k', 4000);
        snprintf(key, 16, "big/%05d", k);
        key[strlen(key)] = 'k';
        OK(rep_client_put(l, kv_slice_make(key, 4000), S(""), S("v"), NULL));
    }
    for (int i = 0; i < 2; i++) {
        rep_client *c = i ? w : l;
        kv_buf cur = KV_BUF_INIT;
        bool more;
        int n = 0;
        OK(rep_client_scan(c, S("big/"), &cur, 0, count_items, &n, &more));
        cr_assert_eq(n, 263, "%d items in the first batch", n);
        cr_assert(more);
        OK(rep_client_scan(c, S("big/"), &cur, 0, count_items, &n, &more));
        cr_assert_eq(n, 300);
        cr_assert_not(more);
        kv_buf_release(&cur);
    }
    rep_client_close(w);
    rep_client_close(l);
}

/* ---- a fake node answering a scan with a reply of our making ---- */

typedef struct fake_scan {
    int fd;
    rep_msg reply; /* sent to answer the scan (its id set then) */
    /* what the scan carried */
    bool got;
    uint64_t max;
    kv_buf prefix, cursor;
} fake_scan;

typedef struct one_frame {
    bool got;
    rep_msg m; /* slices not kept */
    kv_buf key, ctx;
} one_frame;

static int take_one(void *arg, const rep_msg *m) {
    one_frame *f = arg;
    if (f->got) return 0;
    f->got = true;
    f->m = *m;
    if (kv_buf_set(&f->key, m->key.ptr, m->key.len) ||
        kv_buf_set(&f->ctx, m->ctx.ptr, m->ctx.len))
        return -ENOMEM;
    return 0;
}

/* Read one frame from blocking fd (byte by byte: nothing after it). */
static bool read_one(int fd, one_frame *f) {
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    f->got = false;
    uint8_t b;
    while (!f->got && read(fd, &b, 1) == 1)
        if (rep_parser_feed(&p, &b, 1, take_one, f)) break;
    rep_parser_release(&p);
    return f->got;
}

static bool write_msg(int fd, const rep_msg *m) {
    kv_buf b = KV_BUF_INIT;
    bool ok =
        rep_msg_encode(m, &b) == 0 && write(fd, b.ptr, b.len) == (ssize_t)b.len;
    kv_buf_release(&b);
    return ok;
}

/* No assertions here (not the test's thread): what came is recorded. */
static void *fake_scan_node(void *arg) {
    fake_scan *s = arg;
    one_frame f = {0};
    rep_msg h = {.type = REP_HELLO, .u64 = REP_PROTO_VERSION};
    h.flags = REP_ROLE_NODE;
    h.text = S("fake");
    if (read_one(s->fd, &f) && f.m.type == REP_HELLO) {
        h.id = f.m.id;
        if (write_msg(s->fd, &h) && read_one(s->fd, &f) &&
            f.m.type == REP_SCAN) {
            s->got = true;
            s->max = f.m.u64;
            kv_buf_set(&s->prefix, f.key.ptr, f.key.len);
            kv_buf_set(&s->cursor, f.ctx.ptr, f.ctx.len);
            s->reply.id = f.m.id;
            write_msg(s->fd, &s->reply);
        }
    }
    kv_buf_release(&f.key);
    kv_buf_release(&f.ctx);
    close(s->fd);
    return NULL;
}

/* One item as docs/protocol.md encodes it. */
static void item(kv_buf *b, const char *key, uint64_t t, uint8_t flags) {
    OK(kv_buf_put_lenslice(b, S(key)));
    OK(kv_buf_put_u64(b, t));
    OK(kv_buf_append(b, &flags, 1));
}

/* Scan (prefix "p/", cursor "cur", max) from a fake node answering reply:
 * the client's code, its items into l, *more. */
static int scan_fake(const rep_msg *reply, uint32_t max, listing *l, bool *more,
                     bool *broken, fake_scan *s) {
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    *s = (fake_scan){.fd = sv[0], .reply = *reply};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, fake_scan_node, s), 0);
    rep_client *c;
    OK(rep_client_open_fd(sv[1], 5000, &c));
    kv_buf cur = KV_BUF_INIT;
    OK(kv_buf_set(&cur, "cur", 3));
    int rc = rep_client_scan(c, S("p/"), &cur, max, note_item, l, more);
    *broken = rep_client_broken(c);
    if (rc) cr_assert_eq(cur.len, 3, "the cursor changed on an error");
    rep_client_close(c);
    pthread_join(t, NULL);
    kv_buf_release(&cur);
    return rc;
}

/* The client checks a scan-reply before it uses any of it: a well-formed
 * one comes through as sent (and the request carried prefix, cursor and
 * max as the format says); every malformed one breaks the client with
 * KV_EPROTO, without a call of the callback, nor a read past the reply. */
Test(node, malformed_scan_replies_break_the_client_cleanly) {
    listing *l = listing_new();
    fake_scan s;
    bool more, broken;
    kv_buf v = KV_BUF_INIT, big = KV_BUF_INIT;
    item(&v, "p/1", 12345, 1);
    item(&v, "p/2", 7, 0);
    rep_msg ok = {.type = REP_SCAN_REPLY,
                  .flags = REP_SCAN_MORE,
                  .ctx = S("next"),
                  .value = kv_buf_slice(&v)};
    OK(scan_fake(&ok, 2, l, &more, &broken, &s));
    cr_assert(s.got && s.max == 2);
    cr_assert(kv_slice_eq(kv_buf_slice(&s.prefix), S("p/")));
    cr_assert(kv_slice_eq(kv_buf_slice(&s.cursor), S("cur")));
    cr_assert(more && !broken);
    cr_assert_eq(l->n, 2);
    cr_assert_str_eq(l->key[0], "p/1");
    cr_assert(l->newest[0] == 12345 && l->tomb[0]);
    cr_assert_str_eq(l->key[1], "p/2");
    cr_assert(l->newest[1] == 7 && !l->tomb[1]);
    kv_buf_release(&s.prefix);
    kv_buf_release(&s.cursor);

    /* The malformed ones. */
    OK(kv_buf_put_varint(&big, REP_MAX_KEY + 1));
    for (uint32_t i = 0; i < REP_MAX_KEY + 1 + 9; i++)
        OK(kv_buf_append(&big, "x", 1));
    static uint8_t long_cursor[REP_SCAN_MAX_CURSOR + 1];
    struct {
        const char *what;
        kv_slice value;
        uint32_t max, flags;
        kv_slice ctx;
        uint16_t type;
    } bad[] = {
        {"a key length past the end",
         S("\x32"
           "abc"),
         0, 0, S(""), 0},
        {"an empty key",
         kv_slice_make("\x00"
                       "12345678\x00",
                       10),
         0, 0, S(""), 0},
        {"an unknown item flag", S("\x01k12345678\x02"), 0, 0, S(""), 0},
        {"a short timestamp", S("\x01k1234"), 0, 0, S(""), 0},
        {"no flags byte", S("\x01k12345678"), 0, 0, S(""), 0},
        {"a key over REP_MAX_KEY", kv_buf_slice(&big), 0, 0, S(""), 0},
        {"a length varint of ten bytes",
         S("\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), 0, 0, S(""), 0},
        {"more items than asked for", kv_buf_slice(&v), 1, 0, S(""), 0},
        {"more to come from no cursor", kv_buf_slice(&v), 2, REP_SCAN_MORE,
         S(""), 0},
        {"a cursor longer than any", kv_buf_slice(&v), 2, 0,
         kv_slice_make(long_cursor, sizeof long_cursor), 0},
        {"another reply type", S(""), 0, 0, S(""), REP_GET_REPLY},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rep_msg m = {.type = bad[i].type ? bad[i].type : REP_SCAN_REPLY,
                     .flags = bad[i].flags,
                     .ctx = bad[i].ctx,
                     .value = bad[i].value};
        memset(l, 0, sizeof *l);
        more = true;
        int rc = scan_fake(&m, bad[i].max, l, &more, &broken, &s);
        cr_assert_eq(rc, KV_EPROTO, "%s: %d (%s)", bad[i].what, rc,
                     kv_strerror(rc));
        cr_assert(broken, "%s: the client is still usable", bad[i].what);
        cr_assert_eq(l->n, 0, "%s: %d items handed out", bad[i].what, l->n);
        cr_assert_not(more, "%s: more", bad[i].what);
        kv_buf_release(&s.prefix);
        kv_buf_release(&s.cursor);
    }
    kv_buf_release(&v);
    kv_buf_release(&big);
    free(l);
}

/* A node stopping with scans on its pool answers each of them, with its
 * batch or KV_ECLOSED, before the connection closes, and frees them once
 * their pool jobs end (the sanitizer build checks no byte leaks). */
Test(node, scans_in_flight_when_the_node_stops_are_answered) {
    open_scan_node(true);
    int fd = raw_connect();
    rep_parser p;
    rep_parser_init(&p, REP_MAX_PAYLOAD);
    seen s = {0};
    send_hello(fd);
    read_frames(fd, &p, &s, 1, 5000, NULL);
    enum { KEYS = 4000, SCANS = 64 };
    static char value[1024];
    memset(value, 'v', sizeof value);
    kv_buf f = KV_BUF_INIT;
    for (int i = 0; i < KEYS; i++) {
        char key[32];
        snprintf(key, sizeof key, "k/%05d", i);
        rep_msg m = {.type = REP_PUT,
                     .id = 100 + (uint64_t)i,
                     .key = S(key),
                     .value = kv_slice_make(value, sizeof value)};
        OK(rep_msg_encode(&m, &f));
    }
    send_bytes(fd, f.ptr, f.len);
    s.n = 0;
    read_frames(fd, &p, &s, KEYS, 10000, NULL);
    for (int i = 0; i < KEYS; i++)
        cr_assert(s.m[i].type == REP_PUT_REPLY && s.m[i].status == 0);
    /* Every scan read by the node before the stop: the ping after them is
     * answered once they are all on the pool. */
    kv_buf_reset(&f);
    for (int i = 0; i < SCANS; i++) {
        rep_msg m = {.type = REP_SCAN, .id = 10000 + (uint64_t)i};
        OK(rep_msg_encode(&m, &f));
    }
    rep_msg ping = {.type = REP_PING, .id = 20000};
    OK(rep_msg_encode(&ping, &f));
    send_bytes(fd, f.ptr, f.len);
    bool answered[SCANS] = {false}, pong = false;
    int closed = 0;
    s.n = 0;
    while (!pong) {
        read_frames(fd, &p, &s, s.n + 1, 10000, NULL);
        pong = s.m[s.n - 1].type == REP_PONG;
    }
    rep_node_stop(g_node);
    bool eof = false;
    while (!eof) read_frames(fd, &p, &s, s.n + 1, 10000, &eof);
    for (int i = 0; i < s.n; i++) {
        if (s.m[i].type == REP_PONG) continue;
        cr_assert_eq(s.m[i].type, REP_SCAN_REPLY);
        uint64_t k = s.m[i].id - 10000;
        cr_assert(k < SCANS && !answered[k], "scan %llu answered twice",
                  (unsigned long long)s.m[i].id);
        answered[k] = true;
        cr_assert(s.m[i].status == 0 || s.m[i].status == KV_ECLOSED,
                  "a scan answered %d", s.m[i].status);
        closed += s.m[i].status == KV_ECLOSED;
    }
    for (int i = 0; i < SCANS; i++)
        cr_assert(answered[i], "scan %d never answered", i);
    cr_log_info("%d of %d scans answered KV_ECLOSED", closed, (int)SCANS);
    free(s.m);
    rep_parser_release(&p);
    kv_buf_release(&f);
    close(fd);
}
