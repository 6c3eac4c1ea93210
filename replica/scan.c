/*
 * scan: one batch of a key listing of a node's own store, the work behind
 * the scan message and a local client's rep_client_scan (docs/protocol.md,
 * "Scan").
 *
 * A batch walks the store in engine order (placement hash, then key) from
 * the cursor, lists the keys that start with the prefix, each with its
 * newest sibling's timestamp and whether every sibling is a tombstone, and
 * ends at the first of: max_items items; REP_SCAN_REPLY_KEY_BYTES of keys
 * listed; SCAN_VISIT_KEYS keys or SCAN_VISIT_BYTES of keys and objects
 * read (a rare prefix costs a batch no more than a common one); the end
 * of the store. The cursor is the engine key of the last key read, so the
 * next batch starts right after it even if that key is gone by then.
 * Objects that do not decode are skipped (and counted in a log line).
 *
 * Blocks on the engine: never on the loop's thread.
 */
#include "replica/dvv.h"
#include "replica/node_int.h"

#include <inttypes.h>

#define SCAN_VISIT_KEYS 65536u                 /* keys read by one batch */
#define SCAN_VISIT_BYTES (64u * 1024u * 1024u) /* ... and their bytes */
#define SCAN_FULL 1 /* fn's code: the batch is full (not an error) */

typedef struct scan {
    kv_slice prefix;
    uint32_t max, count;
    size_t key_bytes; /* keys listed so far */
    uint64_t skipped; /* objects that do not decode */
    kv_buf *items;
} scan;

bool rep__scan_cursor_ok(kv_slice c) {
    if (c.len == 0) return true;
    if (c.len < 10 || c.len > REP_SCAN_MAX_CURSOR || c.ptr[0] != 'o')
        return false;
    uint64_t h = 0;
    for (int i = 0; i < 8; i++) h = h << 8 | c.ptr[1 + i];
    return h == ring_hash(kv_slice_make(c.ptr + 9, c.len - 9));
}

static int scan_one(void *arg, kv_slice key, kv_slice obj) {
    scan *s = arg;
    if (key.len < s->prefix.len ||
        (s->prefix.len && memcmp(key.ptr, s->prefix.ptr, s->prefix.len)))
        return 0;
    /* Refused before it is listed, so the cursor stays on the key before
     * it and the next batch starts with it. */
    if (s->count >= s->max || s->key_bytes >= REP_SCAN_REPLY_KEY_BYTES)
        return SCAN_FULL;
    if (key.len == 0 || key.len > REP_MAX_KEY) {
        s->skipped++;
        return 0;
    }
    dvv_set *set;
    int rc = dvv_set_decode(obj, &set);
    if (rc == -ENOMEM) return rc;
    if (rc) {
        s->skipped++;
        return 0;
    }
    uint64_t newest = 0;
    size_t n = dvv_set_siblings(set);
    bool tomb = n > 0;
    for (size_t i = 0; i < n; i++) {
        dvv_value v = dvv_set_sibling(set, i).value;
        newest = KV_MAX(newest, v.timestamp);
        tomb = tomb && (v.flags & DVV_TOMBSTONE);
    }
    dvv_set_free(set);
    rc = rep_scan_item_put(s->items, key, newest, tomb);
    if (rc) return rc;
    s->count++;
    s->key_bytes += key.len;
    return 0;
}

int rep__scan(rep_node *n, kv_slice prefix, kv_buf *cursor, uint32_t max_items,
              kv_buf *items, bool *more) {
    *more = false;
    if (max_items == 0 || max_items > REP_SCAN_MAX_ITEMS ||
        prefix.len > REP_MAX_KEY)
        return -EINVAL;
    if (!rep__scan_cursor_ok(kv_buf_slice(cursor))) return KV_EPROTO;
    scan s = {.prefix = prefix, .max = max_items, .items = items};
    int rc = rep_store_scan(n->store, 0, UINT64_MAX, cursor, SCAN_VISIT_KEYS,
                            SCAN_VISIT_BYTES, scan_one, &s, more);
    if (rc == SCAN_FULL) {
        rc = 0;
        *more = true; /* the key refused is still to come */
    }
    if (s.skipped)
        kv_warn(MOD,
                "scan of '%.*s': skipped %" PRIu64
                " objects that do not decode",
                (int)KV_MIN(prefix.len, 200),
                prefix.len ? (const char *)prefix.ptr : "", s.skipped);
    if (rc) *more = false;
    return rc;
}
