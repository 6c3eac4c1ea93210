/*
 * node_int: what the files of a node share (node.h is the public side).
 *
 *   node.c    lifecycle, identity, the listener and served connections,
 *             and the replica side of the protocol (replica-get/-put)
 *   coord.c   the coordinator: a client's get or put, from preference
 *             list to answer
 *   peer.c    connections this node opens to other members, calls on them,
 *             and the failure detector fed by what comes back
 *   member.c  the cluster state: gossip, the claimant's steps, persisting
 *             the state, moving data when ownership moves
 *   scan.c    one batch of a listing of the node's own keys (run on the
 *             pool for a scan message, on the caller's thread for a
 *             local client)
 *
 * Everything here runs on the loop's thread unless it says otherwise.
 */
#ifndef QFS_REPLICA_NODE_INT_H
#define QFS_REPLICA_NODE_INT_H

#include "replica/client.h"
#include "replica/node.h"
#include "replica/proto.h"
#include "replica/store.h"
#include "ring/ring.h"

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

#define MOD "node"
#define REP_MAX_N 16 /* replicas per request */

typedef struct conn conn;
typedef struct req req;
typedef struct peer peer;
typedef struct mover mover;
typedef struct reap reap;
typedef struct rep_outbuf rep_outbuf;

/* outbuf.c: the frames a connection sends, coalesced per loop turn.
 * Sending a frame encodes it onto the connection's pending bytes; once per
 * loop turn (the node's prepare handle, run right before the loop polls,
 * so after timers, I/O and pool completions alike) every connection with
 * pending bytes gets one uv_write of all of them, or earlier once they pass
 * REP_OUTBUF_FLUSH_AT. Frames stay in the order they were sent. */
#define REP_OUTBUF_FLUSH_AT (1u << 20)
/* After each write of o completes: status 0 or a libuv error. A write that
 * could not start is reported the same way, from the prepare handle. Never
 * called after rep__outbuf_release. */
typedef void (*rep__outbuf_cb)(rep_outbuf *o, int status);
struct rep_outbuf {
    rep_node *node;
    uv_stream_t *stream;     /* NULL once released: nothing more is written */
    kv_buf pending;          /* encoded frames not yet given to libuv */
    kv_buf spare;            /* a written buffer kept for the next turn */
    rep_outbuf *prev, *next; /* in node->dirty while a flush is due */
    bool dirty;
    int error;         /* a write that could not start, until reported */
    rep__outbuf_cb cb; /* see above */
    void *data;        /* the owner */
};
/* Attach o (zeroed or released) to stream s of node n. */
void rep__outbuf_init(rep_outbuf *o, rep_node *n, uv_stream_t *s,
                      rep__outbuf_cb cb, void *data);
/* Queue m (encoded) on o. rep_msg_encode's codes (nothing queued), or
 * KV_ECLOSED: o was released, or a write could not start (this frame is
 * lost with the others of that write, and every send fails so until cb,
 * called from the flusher, reported the write's error). */
int rep__outbuf_send(rep_outbuf *o, const rep_msg *m);
/* Queue bytes already encoded (whole frames). Codes as above. */
int rep__outbuf_append(rep_outbuf *o, kv_slice bytes);
/* Write what is pending now (a connection about to close: its last frames,
 * an error frame, go out first). 0, or the write's error (not reported to
 * cb: the caller handles it). */
int rep__outbuf_flush(rep_outbuf *o);
/* Drop what is pending and detach o from its stream: call before closing
 * it. Writes in flight still complete (or are cancelled by the close) and
 * free their bytes, without calling cb. Safe on a zeroed o. */
void rep__outbuf_release(rep_outbuf *o);
/* Bytes sent on o and not yet taken by the kernel: pending, and queued in
 * libuv (what backpressure counts). */
size_t rep__outbuf_queued(const rep_outbuf *o);
/* The node's flusher (rep_node.flusher): init right after the loop. It
 * is active only while a flush is due, so a loop with output pending
 * neither ends nor sleeps before writing it, and an idle loop is not kept
 * alive by it. Close it once the loop ended. */
void rep__outbuf_loop_init(rep_node *n);
typedef struct rep_exec rep_exec;
typedef struct rep_job rep_job;
typedef struct scan_work scan_work;

/* The local client's calls (rep_node_connect_local), on the caller's
 * thread. */
int rep__local_get(rep_node *n, kv_slice key, const rep_opts *o, kv_buf *obj);
int rep__local_put(rep_node *n, kv_slice key, kv_slice ctx, kv_slice value,
                   const rep_opts *o, kv_buf *newctx);
/* The local client's scan: rep__scan on the caller's thread, KV_ECLOSED
 * once the node is asked to stop. */
int rep__local_scan(rep_node *n, kv_slice prefix, kv_buf *cursor,
                    uint32_t max_items, kv_buf *items, bool *more);
/* client.c: a client in local mode for n. */
int rep__client_local(rep_node *n, uint32_t timeout_ms, rep_client **out);

struct rep_node {
    rep_node_opts opt;
    char *dir, *name;
    char addr[96]; /* actual listen address, "" without a listener */
    uint64_t incarnation;
    uint64_t actor; /* this node's id in object clocks */
    eng_db *db;
    rep_store *store;
    rep_exec *exec;      /* engine threads (exec.c) */
    ring_cluster *state; /* the cluster as this node knows it */
    char **seeds;        /* --join addresses */
    int nseeds;
    uv_loop_t loop;
    uv_tcp_t server;
    uv_async_t wake;
    uv_signal_t sigint, sigterm;
    uv_timer_t tick; /* gossip, heartbeats, claimant, moves */
    bool listening, signals, ticking;
    atomic_bool stop_asked;
    bool stopping;
    pthread_t thread;
    bool started;
    conn *conns; /* served connections */
    req *reqs;   /* coordinated requests not yet answered */
    peer *peers; /* connections to other members */
    uint64_t next_call_id;
    uint64_t rand;
    /* member.c */
    bool persisting, persist_again;
    mover *mover;
    uint64_t cleaned_version; /* serving ring whose leftovers are gone */
    bool cleaning;
    bool claiming; /* a claimant step is on the pool */
    /* in-process connections waiting for the loop (rep_node_connect) */
    pthread_mutex_t local_mu;
    int *local_fds;
    int nlocal;
    scan_work *scans; /* node.c: scans on the pool, not yet answered */
    /* coord.c: tombstones to purge, by due time */
    reap *reaps, *reaps_tail;
    uint32_t nreaps;
    /* outbuf.c */
    uv_prepare_t flusher; /* writes what connections queued, each turn */
    rep_outbuf *dirty;    /* connections with a flush due */
    /* frames queued and writes made on all connections: written on the
     * loop, read by tests from any thread */
    atomic_uint_fast64_t frames_out, writes_out;
};

/* A served connection. */
struct conn {
    rep_node *node;
    conn *prev, *next;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;   /* from the listener */
        uv_pipe_t pipe; /* in-process (rep_node_connect) */
    } io;
    uv_timer_t idle;
    rep_parser parser;
    rep_outbuf out; /* replies not yet written */
    int handles;    /* open uv handles (tcp, idle) */
    int refs;       /* answers still to come on this connection */
    bool hello;     /* the peer's HELLO arrived */
    bool closing;   /* no more reads or writes */
    bool paused;    /* reading stopped for backpressure */
    bool draining;  /* the node stops: close once replies are out */
    char member[RING_MAX_NAME + 1]; /* a node's name from its HELLO */
    char peer[96]; /* for log lines: address, then HELLO name */
};

#define CONN_STREAM(c) (&(c)->io.stream)

/* node.c */
void rep__conn_send(conn *c, const rep_msg *m);
void rep__conn_ref(conn *c);
void rep__conn_unref(conn *c);
uint64_t rep__now_us(rep_node *n);
/* libuv's read buffer for every connection of the loop: frames are
 * parsed (and copied where kept) before the next read reuses it. */
void rep__read_buf(uv_handle_t *h, size_t suggested, uv_buf_t *b);
/* Run fn(arg) on the thread pool, then done(arg, status) on the loop. */
int rep__work(rep_node *n, void (*fn)(void *), void (*done)(void *, int),
              void *arg);
/* Write bytes to dir/name atomically (temp file, fsync, rename, fsync of
 * the directory). Blocks: call it from the pool. */
int rep__write_atomic(const char *dir, const char *name, const void *p,
                      size_t len);

/* exec.c: replica reads and writes on the engine threads, handed over in
 * batches (one per loop turn) and, for writes, applied as one engine
 * write. A job's key, ctx and value must stay valid until done runs. */
#define REP_JOB_GET 0x100 /* op.kind: rep_store_get; else a REP_STORE_OP_* */
struct rep_job {
    rep_job *next;
    rep_store_op op;          /* op.rc: the result */
    kv_buf out;               /* get: the object; update: the new object */
    void (*done)(rep_job *j); /* on the loop, once */
};
int rep__exec_open(rep_node *n);
/* Queue j (KV_ECLOSED once the node stops: then done never runs). */
int rep__exec(rep_node *n, rep_job *j);
/* Take no more jobs; the handles close once every done has run. */
void rep__exec_stop(rep_node *n);
/* After the loop ended: stop the threads. */
void rep__exec_free(rep_node *n);

/* scan.c: one batch of a scan of n's store (docs/protocol.md, "Scan"):
 * the items (rep_scan_item_put) of the keys that start with prefix,
 * appended to items, from the engine key in cursor (empty: the start),
 * at most max_items (1..REP_SCAN_MAX_ITEMS); cursor is set to where the
 * next batch starts and *more says whether one remains. -EINVAL for bad
 * bounds, KV_EPROTO for a cursor that is not an engine key of an object
 * (rep__scan_cursor_ok), engine errors, -ENOMEM. Blocks on the engine:
 * any thread but the loop's. */
int rep__scan(rep_node *n, kv_slice prefix, kv_buf *cursor, uint32_t max_items,
              kv_buf *items, bool *more);
/* Whether c is empty or an object's engine key: "o", the placement hash
 * (big-endian) of the rest, and a key of 1..REP_MAX_KEY bytes. */
bool rep__scan_cursor_ok(kv_slice c);

/* coord.c */
void rep__coord_start(conn *c, const rep_msg *m);
void rep__coord_stop_all(rep_node *n);
/* Purge the tombstones that are due (from the member tick). */
void rep__coord_tick(rep_node *n);
/* After the loop ended. */
void rep__coord_free(rep_node *n);

/* peer.c: calls to other members. cb runs exactly once, on the loop: with
 * 0 and the reply (valid during the call), or with an error and NULL. A
 * call that cannot start returns the error and never calls cb. */
typedef void (*rep__peer_cb)(void *arg, int status, const rep_msg *reply);
int rep__peer_call(rep_node *n, kv_slice name, kv_slice addr, rep_msg *m,
                   rep__peer_cb cb, void *arg);
/* The failure detector: false once nothing came from name for
 * fd_timeout_ms while calls were made to it. Unknown members are up. */
bool rep__peer_up(rep_node *n, kv_slice name);
/* Something arrived from member name (on any connection). */
void rep__peer_heard(rep_node *n, kv_slice name);
/* Heartbeats to every member of the state and the stuck-call check. */
void rep__peer_tick(rep_node *n);
/* Close every peer connection, failing its calls with KV_ECLOSED. */
void rep__peer_close_all(rep_node *n);
/* After the loop ended: free every peer. */
void rep__peer_free_all(rep_node *n);

/* member.c */
/* Load dir/CLUSTER, or found a cluster, or wait for seeds. */
int rep__member_open(rep_node *n);
void rep__member_start(rep_node *n); /* on the loop: start the tick */
void rep__member_stop(rep_node *n);
void rep__member_gossip_in(conn *c, const rep_msg *m);
void rep__member_leave_in(conn *c, const rep_msg *m);
void rep__member_bucket_in(conn *c, const rep_msg *m);
/* Whether this node owns hash h (one of the first n_val of its preference
 * list) under the serving ring or, during a move, the next one. */
bool rep__member_owns(rep_node *n, uint64_t h);
/* Whether key's bucket (the part before its first '/') is LWW. */
bool rep__bucket_lww(rep_node *n, kv_slice key);
/* The members holding hash h now (serving ring), and in *next those that
 * will once a move in progress ends (0 when none). */
int rep__member_preflist(rep_node *n, uint64_t h, int want, kv_slice *names,
                         kv_slice *addrs, int *next_count, kv_slice *next_names,
                         kv_slice *next_addrs);

#endif
