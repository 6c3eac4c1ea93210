/*
 * proto: the one binary protocol between clients and nodes and between
 * nodes. A connection carries frames: a 24-byte header (payload length,
 * type, flags, request id, checksum) and a payload of typed fields. The
 * first frame each way is HELLO (protocol version, role, name). Format,
 * limits and the coordinator's state machine: docs/protocol.md.
 *
 * Threading: pure encoding and decoding; a rep_parser belongs to one
 * connection and one thread. Nothing here does I/O.
 */
#ifndef QFS_REPLICA_PROTO_H
#define QFS_REPLICA_PROTO_H

#include "base/base.h"

/* 2: put-reply carries the new context; 3: scan and scan-reply */
#define REP_PROTO_VERSION 3u
#define REP_FRAME_HEADER 24u
#define REP_MAX_KEY 4096u                   /* bytes in a key */
#define REP_MAX_VALUE (64u * 1024u * 1024u) /* bytes in a value or object */
/* Largest payload: a value, its context and key, and field overhead. */
#define REP_MAX_PAYLOAD (REP_MAX_VALUE + (1u << 20))

typedef enum rep_msg_type {
    REP_HELLO = 1, /* first frame each way: version, role, name */
    REP_ERROR = 2, /* status and text; the sender then closes */
    REP_PING = 3,  /* u64: sender's clock, echoed by PONG */
    REP_PONG = 4,
    REP_GET = 10,          /* client -> coordinator: n r w, timeout, key */
    REP_GET_REPLY = 11,    /* status, value = encoded object (all siblings) */
    REP_PUT = 12,          /* n r w, flags, timeout, key, ctx, value */
    REP_PUT_REPLY = 13,    /* status, ctx = the new object's context (empty
                            * unless the put left it one sibling) */
    REP_RGET = 20,         /* coordinator -> replica: key */
    REP_RGET_REPLY = 21,   /* status, value = the replica's object */
    REP_RPUT = 22,         /* flags, key, value = object to merge */
    REP_RPUT_REPLY = 23,   /* status */
    REP_REAP = 24,         /* key, value = a tombstone every replica holds */
    REP_REAP_REPLY = 25,   /* status */
    REP_GOSSIP = 30,       /* value = sender's cluster state, or empty */
    REP_GOSSIP_REPLY = 31, /* status, value = receiver's merged state */
    REP_LEAVE = 32,        /* text = the receiving node's name: leave */
    REP_LEAVE_REPLY = 33,  /* status */
    REP_BUCKET = 34,       /* text = bucket, flags = its new settings */
    REP_BUCKET_REPLY = 35, /* status */
    REP_SCAN = 40,         /* client -> node: u64 = max items, key = prefix,
                            * ctx = cursor: the keys the node stores */
    REP_SCAN_REPLY = 41,   /* status, flags = REP_SCAN_MORE, ctx = the next
                            * cursor, value = items (rep_scan_item_put) */
} rep_msg_type;

/* flags of REP_HELLO: who is talking */
enum { REP_ROLE_CLIENT = 0, REP_ROLE_NODE = 1 };
/* flags of REP_LEAVE */
enum {
    /* text names another member, down for good: remove it on its behalf */
    REP_LEAVE_FORCE = 1,
};
/* flags of REP_PUT and REP_RPUT */
enum {
    REP_PUT_DELETE = 1,    /* write a tombstone instead of value */
    REP_PUT_SYNC = 2,      /* acknowledge only once in a synced WAL */
    REP_PUT_FORWARDED = 4, /* put: from a node that is not a replica */
    REP_PUT_LWW = 8,       /* replica-put: the key's bucket is LWW */
    /* acknowledge once in each replica's WAL, without waiting for its
     * fsync (the filesystem's close; its fsync sends REP_PUT_SYNC) */
    REP_PUT_NOSYNC = 16,
};

/* flags of REP_SCAN_REPLY */
enum {
    REP_SCAN_MORE = 1, /* a batch remains after this one */
};
/* A scan-reply stops adding items once its keys reach this many bytes
 * (so a reply holds at most this plus one key of them). */
#define REP_SCAN_REPLY_KEY_BYTES (1u << 20)
/* The longest cursor: a node's engine key, "o", 8 bytes of placement hash
 * and a key (docs/protocol.md, "Scan"). */
#define REP_SCAN_MAX_CURSOR (9u + REP_MAX_KEY)

/* Append one item of a scan-reply's value: varint key length (1 ..
 * REP_MAX_KEY), the key, u64 newest timestamp, u8 flags (1: every sibling
 * is a tombstone). -EINVAL for a key of another length, -ENOMEM; nothing
 * is appended on error. */
int rep_scan_item_put(kv_buf *items, kv_slice key, uint64_t newest_us,
                      bool tombstone);
/* Read the next item from r (r over a scan-reply's value; call while
 * kv_reader_left(r) > 0). key borrows r's bytes. KV_EPROTO, r unchanged,
 * for a length past the end or out of bounds, a short timestamp or flags,
 * or an unknown flag bit. */
int rep_scan_item_get(kv_reader *r, kv_slice *key, uint64_t *newest_us,
                      bool *tombstone);

/* A decoded message. Slices borrow the frame's payload: from
 * rep_msg_decode, as long as that payload; from a rep_parser, only during
 * the callback that receives the message. Fields a type does not carry
 * are zero. */
typedef struct rep_msg {
    uint16_t type;
    uint64_t id;     /* request id; replies carry their request's */
    int32_t status;  /* replies: 0 or an error code */
    uint8_t n, r, w; /* requests: replicas, read and write quorums */
    uint32_t flags;  /* per type, see above */
    uint32_t timeout_ms;
    uint64_t u64; /* HELLO: protocol version; PING/PONG: clock; SCAN: the
                   * most items the reply may hold (0: REP_SCAN_MAX_ITEMS) */
    kv_slice key, ctx, value, text;
} rep_msg;

/* Append m as one frame (header and payload) to out. -EINVAL for an
 * unknown type or flags the type does not define, KV_ETOOLARGE for a
 * field over its limit or a payload over REP_MAX_PAYLOAD (a frame every
 * receiver would refuse), -ENOMEM; nothing is appended on error. */
int rep_msg_encode(const rep_msg *m, kv_buf *out);

/* Decode a frame's payload of the given type into *m (slices into
 * payload). KV_EPROTO (unknown type, short, long or malformed payload, a
 * field over its limit). */
int rep_msg_decode(uint16_t type, uint64_t id, kv_slice payload, rep_msg *m);

/* Incremental frame reader for a byte stream. */
typedef struct rep_parser {
    kv_buf buf;   /* bytes received and not yet consumed */
    size_t start; /* offset in buf of the next frame */
    uint32_t max_payload;
    int error;       /* sticky: once a frame is bad, the stream is unusable */
    const char *why; /* static text naming the failed check */
} rep_parser;

void rep_parser_init(rep_parser *p, uint32_t max_payload);
/* The limit for frames from now on (a node raises it after a HELLO). */
static inline void rep_parser_set_limit(rep_parser *p, uint32_t max_payload) {
    p->max_payload = max_payload;
}
/* Payload limit until a connection's HELLO: a HELLO is small. */
#define REP_HELLO_MAX_PAYLOAD 4096u
void rep_parser_release(rep_parser *p);
/* Called for each whole, verified frame; a non-zero return stops the feed
 * and is returned by rep_parser_feed. */
typedef int (*rep_frame_fn)(void *arg, const rep_msg *m);
/* Consume n bytes of stream: each complete frame is checked and decoded
 * and given to fn. KV_EPROTO (logged by the caller) for a frame that is
 * too large (refused from its header, before its payload is buffered), has
 * a bad checksum or unknown flags, or does not decode; -ENOMEM; or fn's
 * code. After an error, fn's included, every later feed returns it and
 * parses nothing. A frame's buffer is allocated once its header is in,
 * exactly its size. */
int rep_parser_feed(rep_parser *p, const void *data, size_t n, rep_frame_fn fn,
                    void *arg);
/* What made the parser fail, for the log line ("", if nothing did or
 * fn's code did: the caller names that one). */
const char *rep_parser_why(const rep_parser *p);

const char *rep_msg_type_name(uint16_t type);

struct sockaddr_in;
/* Parse "A.B.C.D:PORT" (port 0..65535) into *sa. -EINVAL if malformed. */
int rep_parse_addr(const char *spec, struct sockaddr_in *sa);

#endif
