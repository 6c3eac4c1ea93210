/*
 * node: one quorumfs storage node. It owns one engine (its replicas'
 * objects), one libuv event loop that serves the protocol (replica/proto.h)
 * to clients and to other nodes, and the coordinator that answers a get
 * or put once R or W replicas have. The loop never touches the disk:
 * every engine call runs on libuv's thread pool and comes back to the loop
 * with its result.
 *
 * Threading: rep_node_open and rep_node_close on one thread; the loop runs
 * in rep_node_run (the caller's thread) or in a thread of its own
 * (rep_node_start). rep_node_stop may be called from any thread and from
 * a signal handler's deferred context; everything else belongs to the
 * loop's thread. Nothing is process-wide except libuv's thread pool, so
 * several nodes can run in one process (tests do).
 */
#ifndef QFS_REPLICA_NODE_H
#define QFS_REPLICA_NODE_H

#include "engine/engine.h"

typedef struct rep_node rep_node;

typedef struct rep_node_opts {
    const char *data_dir;    /* the node's directory; created if missing */
    const char *listen;      /* "HOST:PORT"; NULL: no listener (in-process) */
    const char *name;        /* member name; default: the listen address */
    const char *join;        /* "HOST:PORT,...": seeds of a cluster to join */
    uint32_t partitions;     /* ring size of a new cluster, default 8192 */
    uint8_t n_val;           /* copies of every key (ownership, moves), 3 */
    uint32_t timeout_ms;     /* default request deadline, default 5000 */
    uint32_t idle_ms;        /* close connections idle this long, 60000 */
    uint32_t max_queued;     /* unwritten bytes of a connection before it is
                              * no longer read (backpressure), 64 MiB */
    uint32_t gossip_ms;      /* gossip and heartbeat period, default 500 */
    uint32_t fd_timeout_ms;  /* a member not heard this long is down, 3000 */
    bool handle_signals;     /* SIGINT and SIGTERM stop the node (CLI) */
    int64_t clock_offset_us; /* added to the wall clock (tests of skew) */
    uint32_t tombstone_grace_ms; /* purge a delete's tombstone after, 10000 */
    /* A get asks R replicas (its own copy first); the others once one of
     * those fails or after this many ms without R answers. 0: ask all N
     * at once. Default 20. */
    uint32_t read_hedge_ms;
    eng_options engine; /* the node's engine options */
} rep_node_opts;

/* Defaults as above (engine defaults too). */
void rep_node_opts_init(rep_node_opts *o);

/* Open the node: its engine, its identity (kept in the data directory, so
 * a restarted node is the same member) and its listening socket. The node
 * serves nothing until run or started. -EINVAL for bad options, -errno,
 * engine errors (reported), -ENOMEM. */
int rep_node_open(const rep_node_opts *o, rep_node **out);
/* Serve until rep_node_stop; returns 0 after a clean stop. */
int rep_node_run(rep_node *n);
/* Serve on a thread of the node's own. */
int rep_node_start(rep_node *n);
/* Ask the loop to stop: it stops accepting, closes connections, fails
 * pending requests with KV_ECLOSED and returns. Safe from any thread. */
void rep_node_stop(rep_node *n);
/* Stop (if running), join the thread (if started), close the engine and
 * free everything. Returns the engine's close code. */
int rep_node_close(rep_node *n);

/* An in-process connection to the node: a client (replica/client.h) on
 * one end of a socketpair, the node's loop on the other; no TCP and no
 * listener needed (the embedded single-node mode, tests). The node must
 * be running (rep_node_start, or rep_node_run on another thread) for the
 * HELLO to complete within timeout_ms. Thread-safe. -errno, -ENOMEM,
 * client errors. */
typedef struct rep_client rep_client;
int rep_node_connect(rep_node *n, uint32_t timeout_ms, rep_client **out);
/* A client whose gets and puts run on the calling thread, against the
 * node's store, without the loop: for a node that is alone in its ring
 * for good (no listener and nothing to join; else -ENOTSUP), the embedded
 * mount. It answers as that node's coordinator would with N = R = W = 1,
 * except that its bucket is always in siblings mode (an embedded node has
 * no way to change a bucket's mode). Deletes, whose tombstones the loop
 * reaps, and the other calls go through an in-process connection made on
 * first use. One thread at a time per client, like any client; the node
 * must outlive it. */
int rep_node_connect_local(rep_node *n, uint32_t timeout_ms, rep_client **out);

/* The address the node listens on (with the actual port when the listen
 * address asked for port 0), valid while the node lives. */
const char *rep_node_address(const rep_node *n);
const char *rep_node_name(const rep_node *n);

#endif
