/*
 * base: the few things every quorumfs module needs and none of them owns.
 *
 * Error codes, borrowed slices and owned buffers, fixed-width and varint
 * coding, xxh3 checksums, levelled logging, always-on asserts and an
 * allocator that can be told to fail (for tests).
 *
 * Threading: every function here is safe to call from any thread. The log
 * level, the log sink and the allocation fault counter are the only
 * process-wide state; they are test and program-edge knobs, set before
 * threads start or changed atomically.
 */
#ifndef QFS_BASE_H
#define QFS_BASE_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- errors ----------------------------------------------------------------
 * Functions return 0 on success and a negative value on failure. OS failures
 * are -errno; project codes sit below -4095 so they never collide with errno.
 */
enum {
    KV_OK = 0,
    KV_ENOTFOUND = -4096, /* key or object does not exist */
    KV_ECORRUPT = -4097,  /* bytes from disk failed a validity check */
    KV_EPROTO = -4098,    /* bytes from the network failed a validity check */
    KV_EQUORUM = -4099,   /* too few replicas answered */
    KV_ETIMEDOUT = -4100, /* a deadline passed */
    KV_ETOOLARGE = -4101, /* input exceeds a documented limit */
    KV_EVERSION = -4102,  /* a format version this build does not know */
    KV_ECLOSED = -4103,   /* the object is shutting down */
    KV_EBUSY = -4104,     /* the resource is locked by someone else */
    KV_ESTALE = -4105,    /* placement moved: the receiver does not own it */
};

/* A static string naming rc: "corrupt data", or strerror(-rc) for -errno. */
const char *kv_strerror(int rc);

/* ---- asserts ---------------------------------------------------------------
 * KV_ASSERT stays on in release builds: it guards our own invariants, never
 * bytes from outside (those return KV_ECORRUPT / KV_EPROTO).
 */
#define KV_ASSERT(c)                                                           \
    do {                                                                       \
        if (!(c)) kv__assert_fail(#c, __FILE__, __LINE__);                     \
    } while (0)
_Noreturn void kv__assert_fail(const char *expr, const char *file, int line);

/* ---- allocation ------------------------------------------------------------
 * Every allocation in the project goes through these; they return NULL on
 * failure and callers return -ENOMEM. kv_alloc_fail_after(n) makes the
 * (n+1)-th allocation from now on fail, and every one after it until
 * kv_alloc_fail_after(-1) turns injection off. Tests only.
 */
void *kv_malloc(size_t n);
void *kv_calloc(size_t count, size_t size);
void *kv_realloc(void *p, size_t n);
void kv_free(void *p);
char *kv_strdup(const char *s);
void kv_alloc_fail_after(long n);
/* Allocations that failed because of injection since the process started. */
long kv_alloc_injected_failures(void);
/* Large, long-lived buffers (memtable blocks) straight from the kernel
 * with mmap, returned to it by kv_map_free(p, n) with the same n. malloc
 * would keep them: once a large chunk is freed, glibc raises its mmap
 * threshold and serves later ones from arenas that never shrink. Zeroed
 * and populated (one system call instead of a fault per page); NULL on
 * failure or injection, like kv_malloc. */
void *kv_map_alloc(size_t n);
void kv_map_free(void *p, size_t n);

/* ---- slices and buffers ----------------------------------------------------
 * kv_slice is a borrowed view: whoever receives one never frees it, and every
 * function returning one says until when it stays valid.
 * kv_buf owns its bytes: kv_buf_release frees them, kv_buf_detach hands them
 * to the caller.
 */
typedef struct kv_slice {
    const uint8_t *ptr;
    size_t len;
} kv_slice;

static inline kv_slice kv_slice_make(const void *p, size_t n) {
    kv_slice s = {(const uint8_t *)p, n};
    return s;
}
static inline kv_slice kv_slice_str(const char *s) {
    return kv_slice_make(s, strlen(s));
}
/* memcmp order; a proper prefix sorts first. */
static inline int kv_slice_cmp(kv_slice a, kv_slice b) {
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c != 0) return c;
    return a.len < b.len ? -1 : (a.len > b.len ? 1 : 0);
}
static inline bool kv_slice_eq(kv_slice a, kv_slice b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

typedef struct kv_buf {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} kv_buf;

#define KV_BUF_INIT                                                            \
    { NULL, 0, 0 }
void kv_buf_init(kv_buf *b);
void kv_buf_release(kv_buf *b);
/* Make room for at least n more bytes. 0 or -ENOMEM (b unchanged). */
int kv_buf_reserve(kv_buf *b, size_t n);
int kv_buf_append(kv_buf *b, const void *p, size_t n);
int kv_buf_set(kv_buf *b, const void *p, size_t n);
static inline void kv_buf_reset(kv_buf *b) {
    b->len = 0;
}
static inline kv_slice kv_buf_slice(const kv_buf *b) {
    return kv_slice_make(b->ptr, b->len);
}
/* The caller now owns the bytes (free with kv_free); b is empty afterwards. */
uint8_t *kv_buf_detach(kv_buf *b, size_t *len);

/* ---- coding ----------------------------------------------------------------
 * Fixed-width integers are little-endian everywhere in quorumfs formats.
 * Varints are LEB128 (7 bits a byte, low first), at most 10 bytes.
 */
static inline void kv_put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void kv_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void kv_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t kv_get_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t kv_get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint64_t kv_get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#define KV_VARINT_MAX 10
/* Encode v at p (room for KV_VARINT_MAX bytes); returns the bytes written. */
size_t kv_varint_encode(uint8_t *p, uint64_t v);
size_t kv_varint_len(uint64_t v);

int kv_buf_put_u32(kv_buf *b, uint32_t v);
int kv_buf_put_u64(kv_buf *b, uint64_t v);
int kv_buf_put_varint(kv_buf *b, uint64_t v);
/* varint length followed by the bytes */
int kv_buf_put_lenslice(kv_buf *b, kv_slice s);

/* A decoding cursor over borrowed bytes. Every get returns 0, or
 * KV_ECORRUPT on short or malformed input, leaving the cursor unchanged. */
typedef struct kv_reader {
    const uint8_t *p;
    const uint8_t *end;
} kv_reader;

static inline kv_reader kv_reader_make(kv_slice s) {
    kv_reader r = {s.ptr, s.ptr + s.len};
    return r;
}
static inline size_t kv_reader_left(const kv_reader *r) {
    return (size_t)(r->end - r->p);
}
int kv__get_varint_slow(kv_reader *r, uint64_t *v);
/* Inline for the common one-byte case (block entries decode three a key). */
static inline int kv_get_varint(kv_reader *r, uint64_t *v) {
    if (r->p < r->end && *r->p < 0x80) {
        *v = *r->p++;
        return 0;
    }
    return kv__get_varint_slow(r, v);
}
int kv_get_varint32(kv_reader *r, uint32_t *v);
int kv_get_fixed32(kv_reader *r, uint32_t *v);
int kv_get_fixed64(kv_reader *r, uint64_t *v);
int kv_get_bytes(kv_reader *r, size_t n, kv_slice *out);
/* varint length, then that many bytes (at most max) */
int kv_get_lenslice(kv_reader *r, size_t max, kv_slice *out);

/* ---- checksums -------------------------------------------------------------
 * xxh3-64 over the bytes. Formats store all 64 bits.
 */
uint64_t kv_checksum(const void *p, size_t n);
/* Checksum of a followed by b, without copying. */
uint64_t kv_checksum2(const void *a, size_t an, const void *b, size_t bn);
/* xxh3-64 with a seed, for hashing (bloom filters, placement). */
uint64_t kv_hash64(const void *p, size_t n, uint64_t seed);

/* ---- logging ---------------------------------------------------------------
 * One line per call on stderr (or the sink set by kv_log_set_sink), prefixed
 * with time, level and the source module.
 */
typedef enum {
    KV_LOG_ERROR = 0,
    KV_LOG_WARN,
    KV_LOG_INFO,
    KV_LOG_DEBUG
} kv_log_level;

void kv_log_set_level(kv_log_level lvl);
kv_log_level kv_log_get_level(void);
/* Parse "error", "warn", "info", "debug". 0 or -EINVAL. */
int kv_log_parse_level(const char *s, kv_log_level *out);
typedef void (*kv_log_sink)(kv_log_level lvl, const char *line, void *arg);
void kv_log_set_sink(kv_log_sink sink, void *arg);
void kv_logf(kv_log_level lvl, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define KV_LOG(lvl, mod, ...)                                                  \
    do {                                                                       \
        if ((lvl) <= kv_log_get_level()) kv_logf((lvl), (mod), __VA_ARGS__);   \
    } while (0)
#define kv_error(mod, ...) KV_LOG(KV_LOG_ERROR, mod, __VA_ARGS__)
#define kv_warn(mod, ...) KV_LOG(KV_LOG_WARN, mod, __VA_ARGS__)
#define kv_info(mod, ...) KV_LOG(KV_LOG_INFO, mod, __VA_ARGS__)
#define kv_debug(mod, ...) KV_LOG(KV_LOG_DEBUG, mod, __VA_ARGS__)

/* ---- time ------------------------------------------------------------------
 */
uint64_t kv_now_ns(void);  /* CLOCK_MONOTONIC */
uint64_t kv_wall_us(void); /* CLOCK_REALTIME, microseconds since the epoch */
int64_t kv_wall_ns(void);  /* CLOCK_REALTIME, nanoseconds since the epoch */

#define KV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KV_MAX(a, b) ((a) > (b) ? (a) : (b))
#define KV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
