/*
 * client: talk to any quorumfs node over TCP. A client is one connection
 * with one request in flight at a time; calls block until the node
 * answers or the client's timeout passes. The node coordinates: it finds
 * the key's replicas and answers once R (get) or W (put) of them have.
 *
 * Objects come back encoded (replica/dvv.h decodes them): every sibling
 * with the causal context a later put passes back to supersede them.
 *
 * Threading: a rep_client belongs to one thread at a time.
 */
#ifndef QFS_REPLICA_CLIENT_H
#define QFS_REPLICA_CLIENT_H

#include "base/base.h"

#define REP_DEFAULT_PORT 7000
#define REP_DEFAULT_ADDRESS "127.0.0.1:7000"

typedef struct rep_client rep_client;

/* Per-request options; zero fields take the node's defaults (N = the
 * cluster's n_val, 3 unless configured; R and W a majority of N: 2 of 3;
 * the node's deadline). 1 <= R, W <= N <= n_val, else -EINVAL (here when
 * N is given, else from the node). R + W <= N is allowed (reads may then
 * miss the last write). */
typedef struct rep_opts {
    uint8_t n, r, w;
    uint32_t timeout_ms; /* the coordinator's deadline */
    bool sync;           /* put: acknowledged only from synced WALs */
    bool nosync;         /* put: acknowledged once in the WALs, before their
                          * fsync (not with sync: -EINVAL) */
} rep_opts;

/* Connect to "HOST:PORT" and exchange HELLOs, within timeout_ms. -EINVAL
 * for a bad address, -ECONNREFUSED and other -errno, KV_ETIMEDOUT,
 * KV_EVERSION (the node speaks another protocol version), KV_EPROTO. */
int rep_client_connect(const char *hostport, uint32_t timeout_ms,
                       rep_client **out);
/* A client on an already connected stream socket fd (taken over, closed
 * on failure): HELLO within timeout_ms. rep_node_connect uses it. */
int rep_client_open_fd(int fd, uint32_t timeout_ms, rep_client **out);
void rep_client_close(rep_client *c);
/* true once a connection error made c unusable (close it). */
bool rep_client_broken(const rep_client *c);
/* The node's name from its HELLO, valid while c lives. */
const char *rep_client_node(const rep_client *c);

/* The object of key (encoded, every sibling) into obj. -EINVAL for an
 * empty key or bad opts and KV_ETOOLARGE for a key over REP_MAX_KEY, both
 * before anything is sent; KV_ENOTFOUND when no replica that answered has
 * the key; KV_EQUORUM, KV_ETIMEDOUT from the coordinator; KV_ETIMEDOUT
 * (the deadline passed, however busy the connection), KV_EPROTO, -errno
 * from the connection (after which the client is unusable). */
int rep_client_get(rep_client *c, kv_slice key, const rep_opts *o, kv_buf *obj);
/* The same get in two steps, so one thread can have gets in flight on
 * several clients at once: start sends the request (errors as get's
 * before anything is sent, or the connection's), finish waits for the
 * answer and returns what get would (-EINVAL without a start). Nothing
 * else may be called on c between the two. A local client does the get
 * at start. */
int rep_client_get_start(rep_client *c, kv_slice key, const rep_opts *o);
int rep_client_get_finish(rep_client *c, kv_buf *obj);
/* Store value under key with the causal context ctx (empty: none; from
 * a get: supersede what that get returned). Errors as for get, and
 * KV_ETOOLARGE, before anything is sent, for a value or ctx over
 * REP_MAX_VALUE or a request whose frame would exceed REP_MAX_PAYLOAD. */
int rep_client_put(rep_client *c, kv_slice key, kv_slice ctx, kv_slice value,
                   const rep_opts *o);
/* As rep_client_put, and the context of the object the put made into
 * newctx: what a later put of the same writer passes to supersede this
 * one. Empty when the object kept other siblings (concurrent writes the
 * writer has not seen): read before writing again, or the next put
 * becomes a sibling too. */
int rep_client_put_ctx(rep_client *c, kv_slice key, kv_slice ctx,
                       kv_slice value, const rep_opts *o, kv_buf *newctx);
/* Delete: a put of a tombstone with context ctx. */
int rep_client_del(rep_client *c, kv_slice key, kv_slice ctx,
                   const rep_opts *o);

/* The cluster state the node holds (ring/ring.h: ring_cluster_decode),
 * into out. Errors of the connection, as above. */
int rep_client_state(rep_client *c, kv_buf *out);
/* Ask the node to leave its cluster: it moves its data to the members that
 * take its partitions and then stops. -EINVAL if it is the last member. */
int rep_client_leave(rep_client *c);
/* Remove member, down for good, through the node c talks to: its
 * partitions go to the others, who re-replicate from the copies that
 * remain; a move no longer waits for it. -EBUSY if the node sees it up
 * (ask it to leave instead), KV_ENOTFOUND if no such member. */
int rep_client_remove(rep_client *c, kv_slice member);
/* Set a bucket's settings cluster-wide (ring/ring.h: RING_BUCKET_LWW, or
 * 0 for siblings); the setting spreads by gossip. -EINVAL for a bad name
 * or flags. */
int rep_client_bucket(rep_client *c, kv_slice bucket, uint32_t flags);
/* ---- scans: the keys one node stores ---- */

/* The most items one scan batch holds (docs/protocol.md, "Scan"). */
#define REP_SCAN_MAX_ITEMS 4096

/* One key a node stores (its own copy: a scan is not a quorum read). */
typedef struct rep_scan_item {
    kv_slice key;
    uint64_t newest_us; /* the newest sibling's timestamp (the writing
                         * coordinator's clock, microseconds since the epoch) */
    bool tombstone;     /* every sibling is a tombstone */
} rep_scan_item;
typedef int (*rep_scan_cb)(void *arg, const rep_scan_item *it);
/* The keys the connected node stores that start with prefix (empty: all),
 * one batch of at most max_items (1..REP_SCAN_MAX_ITEMS; 0 means the
 * maximum): cb is called for each (a nonzero return stops and is
 * returned). *cursor (empty to start) is where the batch begins and is
 * set to where the next one does; *more says whether one remains. Keys
 * come in the node's storage order (by placement hash), each once per
 * full pass. Errors: -EINVAL (bad arguments), KV_EPROTO (a cursor the
 * node cannot use), connection and node errors.
 *
 * Details: the batch has arrived whole before cb first runs, so cb may
 * use c itself (delete a key it lists, say); it->key is valid during that
 * call of cb only. A batch can hold fewer than max_items items, none
 * even, while *more is true: a node reads a bounded part of its store per
 * batch, and a reply stops at about 1 MiB of keys; go on until *more is
 * false. A key written or deleted during a pass may or may not be listed;
 * every key stored throughout the pass is listed exactly once. *cursor is
 * opaque (a node's engine key); on any error, and when cb stops the scan,
 * *cursor is left unchanged (asking again from it repeats the batch) and
 * *more is false, except after a stop by cb, where it is true. A node
 * error (-EINVAL, KV_EPROTO for the cursor, engine errors, KV_ECLOSED from
 * a stopping node) leaves c usable; a malformed reply breaks c with
 * KV_EPROTO, as a connection error does with its own code. A local
 * client (rep_node_connect_local) scans the node's store on the calling
 * thread, with the same batches. */
int rep_client_scan(rep_client *c, kv_slice prefix, kv_buf *cursor,
                    uint32_t max_items, rep_scan_cb cb, void *arg, bool *more);

/* Any request frame m (its id is set here), for tools and tests that speak
 * the protocol directly (replica-get to one node, say): *reply is the
 * answer, valid until the next call on c. Connection errors as above. */
typedef struct rep_msg rep_msg;
int rep_client_call(rep_client *c, rep_msg *m, const rep_msg **reply);

#endif
