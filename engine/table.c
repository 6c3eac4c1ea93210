/*
 * Sorted tables (SSTables): the builder streams internal keys in order into
 * data blocks (zstd-compressed when that saves at least an eighth), then
 * writes the bloom filter, the index block, the properties block and a
 * fixed 72-byte footer, and fsyncs. The reader verifies the footer and the
 * three meta blocks at open and keeps the index and the filter for as long
 * as the table is open: in place in the mapping of a mapped table (page
 * cache, as LevelDB does with mmap reads), else as heap copies whose bytes
 * are reserved in the block cache, so that the cache's capacity bounds them
 * together with the data blocks. Data blocks are read on demand, verified
 * against their checksum, and shared through the block cache; scans read
 * ahead in windows unless lookups have already touched most of a mapping.
 *
 * Invariants: every block is followed by a 9-byte trailer (type, checksum of
 * stored bytes + type) and nothing read from the file is used before its
 * checksum matches; sizes are bounded (by the file, or by BLOCK_LIMIT for a
 * decompressed size) before anything is allocated. Index keys are >= every
 * key of their block and < every key of the next one. Every corruption is
 * logged with the path and offset and returns KV_ECORRUPT.
 * Format: docs/engine-format.md, "Sorted tables".
 */
#include "engine/engine_int.h"

#include <stdio.h>
#include <sys/mman.h>
#include <zstd.h>

#define TABLE_MAGIC UINT64_C(0x454c424154534651) /* "QFSTABLE" on disk */
#define TABLE_VERSION 1
#define FOOTER_SIZE 72
#define TRAILER_SIZE 9
#define BLOCK_RAW 0
#define BLOCK_ZSTD 1
/* Largest decompressed (or uncompressed data) block: one entry may carry a
 * value of ENG_MAX_VALUE plus its key, and the builder cuts blocks so that
 * none exceeds this. */
#define BLOCK_LIMIT ((size_t)ENG_MAX_VALUE + 1024u * 1024u)
#define WRITE_CHUNK (256u * 1024u)      /* builder's write buffer */
#define WRITEBACK_CHUNK (1024u * 1024u) /* start writeback every 1 MiB */
#define DEFAULT_BLOCK_BYTES 4096

typedef struct handle {
    uint64_t off, size; /* size excludes the trailer */
} handle;

static void put_handle(uint8_t *p, handle h) {
    kv_put_u64(p, h.off);
    kv_put_u64(p + 8, h.size);
}

static handle get_handle(const uint8_t *p) {
    handle h = {kv_get_u64(p), kv_get_u64(p + 8)};
    return h;
}

/* Index values are "varint offset | varint size", nothing after. */
static int decode_index_value(kv_slice v, handle *h) {
    kv_reader r = kv_reader_make(v);
    if (kv_get_varint(&r, &h->off) || kv_get_varint(&r, &h->size) ||
        kv_reader_left(&r) != 0)
        return KV_ECORRUPT;
    return 0;
}

static size_t common_prefix(kv_slice a, kv_slice b) {
    size_t n = KV_MIN(a.len, b.len), i = 0;
    while (i < n && a.ptr[i] == b.ptr[i]) i++;
    return i;
}

void eng__props_release(eng_table_props *p) {
    kv_buf_release(&p->smallest);
    kv_buf_release(&p->largest);
}

/* Property names, in the memcmp order the props block stores them in. */
enum {
    P_DELETIONS,
    P_ENTRIES,
    P_LARGEST,
    P_MAX_SEQ,
    P_MIN_SEQ,
    P_RAW_KEY,
    P_RAW_VALUE,
    P_SMALLEST,
    P_COUNT
};
static const char *const prop_names[P_COUNT] = {
    "qfs.deletions", "qfs.entries",       "qfs.largest",         "qfs.max_seq",
    "qfs.min_seq",   "qfs.raw_key_bytes", "qfs.raw_value_bytes", "qfs.smallest",
};

/* ======================================================================
 * builder
 * ====================================================================== */

struct eng_tbuilder {
    eng_file *file; /* NULL once closed */
    char *path;
    eng_table_opts o;
    eng_block_builder data, index;
    eng_bloom_builder bloom;
    bool use_filter;
    ZSTD_CCtx *cctx; /* NULL: no compression */
    kv_buf out;      /* bytes appended but not yet written */
    kv_buf cbuf;     /* compression output */
    kv_buf last_key;
    kv_buf sep;   /* scratch for index separators */
    bool pending; /* the last data block still needs its index entry */
    handle pending_h;
    uint64_t offset;       /* logical file size, buffered bytes included */
    uint64_t written_back; /* writeback started below this offset */
    eng_table_props props;
    int err; /* sticky: the first I/O or allocation failure */
    bool finished;
};

static int write_out(eng_tbuilder *b) {
    if (b->out.len == 0) return 0;
    int rc = eng__file_append(b->file, b->out.ptr, b->out.len);
    kv_buf_reset(&b->out);
    uint64_t size = b->file->size;
    if (rc == 0 && size - b->written_back >= WRITEBACK_CHUNK) {
        eng__file_writeback(b->file, b->written_back, size - b->written_back);
        b->written_back = size;
    }
    return rc;
}

/* Buffer small pieces, write big ones straight through. */
static int emit(eng_tbuilder *b, const void *p, size_t n) {
    int rc;
    if (b->out.len + n > WRITE_CHUNK) {
        rc = write_out(b);
        if (rc) return rc;
    }
    if (n >= WRITE_CHUNK) {
        rc = eng__file_append(b->file, p, n);
    } else {
        rc = kv_buf_append(&b->out, p, n);
    }
    if (rc) return rc;
    b->offset += n;
    return 0;
}

static int write_block(eng_tbuilder *b, kv_slice raw, bool compress,
                       handle *h) {
    uint8_t type = BLOCK_RAW;
    kv_slice stored = raw;
    if (compress && b->cctx && raw.len > 0) {
        size_t bound = ZSTD_compressBound(raw.len);
        kv_buf_reset(&b->cbuf);
        int rc = kv_buf_reserve(&b->cbuf, bound);
        if (rc) return rc;
        size_t n = ZSTD_compressCCtx(b->cctx, b->cbuf.ptr, bound, raw.ptr,
                                     raw.len, b->o.compression_level);
        /* A compression error only costs space: store the block raw. */
        if (!ZSTD_isError(n) && n <= raw.len - raw.len / 8) {
            type = BLOCK_ZSTD;
            stored = kv_slice_make(b->cbuf.ptr, n);
        }
    }
    uint8_t tr[TRAILER_SIZE];
    tr[0] = type;
    kv_put_u64(tr + 1, kv_checksum2(stored.ptr, stored.len, &type, 1));
    h->off = b->offset;
    h->size = stored.len;
    int rc = emit(b, stored.ptr, stored.len);
    if (rc == 0) rc = emit(b, tr, sizeof tr);
    /* One huge value should not pin a huge scratch buffer for the rest of
     * the table. */
    if (b->cbuf.cap > 4 * WRITE_CHUNK) kv_buf_release(&b->cbuf);
    return rc;
}

static int flush_data(eng_tbuilder *b) {
    kv_slice raw;
    int rc = eng__bb_finish(&b->data, &raw);
    if (rc) return rc;
    rc = write_block(b, raw, true, &b->pending_h);
    if (rc) return rc;
    eng__bb_reset(&b->data);
    b->pending = true;
    return 0;
}

/* A key k with last <= k < next, short when the user keys differ early: the
 * index then stores "abd" instead of "abcdefgh..." between "abc..." and
 * "abz...". With next NULL (the last block) it is last itself. */
static kv_slice separator(eng_tbuilder *b, const kv_slice *next) {
    kv_slice last = kv_buf_slice(&b->last_key);
    if (!next) return last;
    kv_slice ua = eng__ikey_user(last), ub = eng__ikey_user(*next);
    size_t n = common_prefix(ua, ub);
    if (n + 1 >= ua.len || n >= ub.len) return last;
    uint8_t c = ua.ptr[n];
    if (c == 0xff || c + 1 >= ub.ptr[n]) return last;
    kv_buf_reset(&b->sep);
    /* Without memory for the short key the long one is just as correct. */
    if (kv_buf_reserve(&b->sep, n + 1 + 8)) return last;
    memcpy(b->sep.ptr, ua.ptr, n);
    b->sep.ptr[n] = (uint8_t)(c + 1);
    /* The largest seq sorts first among entries of the separator's user key,
     * so the separator sorts after last and before next. */
    kv_put_u64(b->sep.ptr + n + 1, eng__trailer(ENG_MAX_SEQ, ENG_TYPE_SEEK));
    b->sep.len = n + 1 + 8;
    return kv_buf_slice(&b->sep);
}

static int add_index_entry(eng_tbuilder *b, const kv_slice *next) {
    uint8_t v[2 * KV_VARINT_MAX];
    size_t n = kv_varint_encode(v, b->pending_h.off);
    n += kv_varint_encode(v + n, b->pending_h.size);
    int rc = eng__bb_add(&b->index, separator(b, next), kv_slice_make(v, n));
    if (rc) return rc;
    b->pending = false;
    return 0;
}

static void builder_free(eng_tbuilder *b) {
    eng__file_close(b->file);
    kv_free(b->path);
    eng__bb_release(&b->data);
    eng__bb_release(&b->index);
    eng__bloom_release(&b->bloom);
    ZSTD_freeCCtx(b->cctx);
    kv_buf_release(&b->out);
    kv_buf_release(&b->cbuf);
    kv_buf_release(&b->last_key);
    kv_buf_release(&b->sep);
    eng__props_release(&b->props);
    kv_free(b);
}

int eng__tb_new(eng_fault *f, const char *path, const eng_table_opts *o,
                eng_tbuilder **out) {
    *out = NULL;
    eng_tbuilder *b = kv_calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    b->o = *o;
    if (b->o.block_bytes == 0) b->o.block_bytes = DEFAULT_BLOCK_BYTES;
    eng__bb_init(&b->data, o->restart_interval);
    /* The index is searched with binary search over every entry. */
    eng__bb_init(&b->index, 1);
    b->use_filter = o->bloom_bits_per_key > 0;
    eng__bloom_init(&b->bloom, o->bloom_bits_per_key);
    b->props.min_seq = UINT64_MAX;
    int rc = -ENOMEM;
    b->path = kv_strdup(path);
    if (!b->path) goto fail;
    if (o->compression_level > 0) {
        b->cctx = ZSTD_createCCtx();
        if (!b->cctx) goto fail;
    }
    rc = eng__file_create(f, path, &b->file);
    /* -ENOMEM can come after the file was created: do not leave it. */
    if (rc == -ENOMEM) eng__env_unlink(path);
    if (rc) goto fail;
    *out = b;
    return 0;
fail:
    builder_free(b);
    return rc;
}

int eng__tb_add(eng_tbuilder *b, kv_slice ikey, kv_slice value) {
    if (b->finished || !eng__ikey_valid(ikey)) return -EINVAL;
    if (b->err) return b->err;
    if (ikey.len > ENG_MAX_KEY + 8 || value.len > ENG_MAX_VALUE)
        return KV_ETOOLARGE;
    if (b->props.entries > 0 &&
        eng__ikey_cmp(ikey, kv_buf_slice(&b->last_key)) <= 0)
        return -EINVAL;

    int rc;
    /* An entry larger than a block gets a block of its own: lookups of its
     * neighbours then never read (or cache) the big value, and no block
     * grows past what a reader accepts (BLOCK_LIMIT). */
    size_t est = ikey.len + value.len + 3 * KV_VARINT_MAX + 8;
    if (!eng__bb_empty(&b->data) &&
        (est >= b->o.block_bytes ||
         eng__bb_size(&b->data) + est > BLOCK_LIMIT)) {
        rc = flush_data(b);
        if (rc) goto fail;
    }
    if (b->pending) {
        rc = add_index_entry(b, &ikey);
        if (rc) goto fail;
    }
    if (b->use_filter) {
        rc = eng__bloom_add(&b->bloom, eng__ikey_user(ikey));
        if (rc) goto fail;
    }
    rc = eng__bb_add(&b->data, ikey, value);
    if (rc) goto fail;
    rc = kv_buf_set(&b->last_key, ikey.ptr, ikey.len);
    if (rc) goto fail;
    if (b->props.entries == 0) {
        rc = kv_buf_set(&b->props.smallest, ikey.ptr, ikey.len);
        if (rc) goto fail;
    }
    uint64_t seq = eng__ikey_seq(ikey);
    b->props.entries++;
    if (eng__ikey_type(ikey) == ENG_TYPE_DEL) b->props.deletions++;
    b->props.min_seq = KV_MIN(b->props.min_seq, seq);
    b->props.max_seq = KV_MAX(b->props.max_seq, seq);
    b->props.raw_key_bytes += ikey.len;
    b->props.raw_value_bytes += value.len;

    if (eng__bb_size(&b->data) >= b->o.block_bytes) {
        rc = flush_data(b);
        if (rc) goto fail;
    }
    return 0;
fail:
    /* The builder's state may be half-updated; only abandon is left. */
    b->err = rc;
    return rc;
}

uint64_t eng__tb_size(const eng_tbuilder *b) {
    return b->offset;
}

uint64_t eng__tb_entries(const eng_tbuilder *b) {
    return b->props.entries;
}

static int add_u64_prop(eng_block_builder *pb, int id, uint64_t v) {
    uint8_t t[KV_VARINT_MAX];
    return eng__bb_add(pb, kv_slice_str(prop_names[id]),
                       kv_slice_make(t, kv_varint_encode(t, v)));
}

static int write_props(eng_tbuilder *b, handle *h) {
    eng_block_builder pb;
    eng__bb_init(&pb, 1);
    const eng_table_props *p = &b->props;
    uint64_t min_seq = p->entries ? p->min_seq : 0;
    kv_slice raw;
    int rc;
    if ((rc = add_u64_prop(&pb, P_DELETIONS, p->deletions)) ||
        (rc = add_u64_prop(&pb, P_ENTRIES, p->entries)) ||
        (rc = eng__bb_add(&pb, kv_slice_str(prop_names[P_LARGEST]),
                          kv_buf_slice(&b->last_key))) ||
        (rc = add_u64_prop(&pb, P_MAX_SEQ, p->max_seq)) ||
        (rc = add_u64_prop(&pb, P_MIN_SEQ, min_seq)) ||
        (rc = add_u64_prop(&pb, P_RAW_KEY, p->raw_key_bytes)) ||
        (rc = add_u64_prop(&pb, P_RAW_VALUE, p->raw_value_bytes)) ||
        (rc = eng__bb_add(&pb, kv_slice_str(prop_names[P_SMALLEST]),
                          kv_buf_slice(&p->smallest))) ||
        (rc = eng__bb_finish(&pb, &raw)))
        goto out;
    rc = write_block(b, raw, false, h);
out:
    eng__bb_release(&pb);
    return rc;
}

int eng__tb_finish(eng_tbuilder *b, eng_table_props *props) {
    memset(props, 0, sizeof *props);
    if (b->finished) return -EINVAL;
    if (b->err) return b->err;
    handle fh = {0, 0}, ih, ph;
    kv_buf fbuf = KV_BUF_INIT;
    kv_slice raw;
    int rc = 0;
    if (!eng__bb_empty(&b->data)) rc = flush_data(b);
    if (rc == 0 && b->pending) rc = add_index_entry(b, NULL);
    if (rc == 0 && b->use_filter) {
        rc = eng__bloom_finish(&b->bloom, &fbuf);
        if (rc == 0) rc = write_block(b, kv_buf_slice(&fbuf), false, &fh);
    }
    kv_buf_release(&fbuf);
    if (rc == 0) rc = eng__bb_finish(&b->index, &raw);
    if (rc == 0) rc = write_block(b, raw, false, &ih);
    if (rc == 0) rc = write_props(b, &ph);
    if (rc) goto fail;

    uint8_t ft[FOOTER_SIZE];
    put_handle(ft, fh);
    put_handle(ft + 16, ih);
    put_handle(ft + 32, ph);
    kv_put_u32(ft + 48, TABLE_VERSION);
    kv_put_u32(ft + 52, 0);
    kv_put_u64(ft + 56, kv_checksum(ft, 56));
    kv_put_u64(ft + 64, TABLE_MAGIC);
    if ((rc = emit(b, ft, sizeof ft)) || (rc = write_out(b)) ||
        (rc = eng__file_sync(b->file)))
        goto fail;
    eng__file_close(b->file);
    b->file = NULL;

    b->finished = true;
    *props = b->props;
    if (props->entries == 0) props->min_seq = 0;
    props->file_size = b->offset;
    props->largest = b->last_key; /* ownership moves to the caller */
    kv_buf_init(&b->last_key);
    kv_buf_init(&b->props.smallest);
    return 0;
fail:
    b->err = rc;
    return rc;
}

void eng__tb_abandon(eng_tbuilder *b) {
    if (!b) return;
    eng__file_close(b->file);
    b->file = NULL;
    eng__env_unlink(b->path);
    builder_free(b);
}

void eng__tb_free(eng_tbuilder *b) {
    if (!b) return;
    /* A builder that never finished leaves no half-written table behind. */
    if (!b->finished) {
        eng__tb_abandon(b);
        return;
    }
    builder_free(b);
}

/* ======================================================================
 * reader
 * ====================================================================== */

struct eng_table {
    eng_file *file;
    const uint8_t *map; /* whole file mapped read-only, or NULL: pread */
    uint64_t number;
    eng_cache *cache;
    uint64_t meta_end; /* where the footer starts: blocks end before it */
    eng_block *index;  /* its bytes are a view of map unless index->own */
    uint8_t *filter;   /* NULL: no filter (every key may match) */
    size_t filter_len;
    bool filter_own; /* filter is a heap copy, else a view of map */
    size_t charge;   /* bytes reserved in cache, given back at close */
    eng_table_props props;
    /* Data block bytes point lookups have read through the mapping, counted
     * up to WARM_READS x meta_end: how warm the mapping is (scan_windows). */
    _Atomic uint64_t mapped_reads;
};

#define CORRUPT(t, ...) corrupt_at((t)->file->path, __VA_ARGS__)

__attribute__((format(printf, 2, 3))) static int
corrupt_at(const char *path, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kv_error(ENG_MOD, "sstable '%s': %s", path, msg);
    return KV_ECORRUPT;
}

/* Decompression contexts are ~96 KiB each: one per thread, reused across
 * every table, rather than one per open table (a thousand open tables
 * would pin ~96 MiB). A thread's context is freed when the thread exits. */
static pthread_once_t dctx_once = PTHREAD_ONCE_INIT;
static pthread_key_t dctx_key;
static bool dctx_key_ok;

static void dctx_destroy(void *d) {
    ZSTD_freeDCtx(d);
}

static void dctx_key_init(void) {
    dctx_key_ok = pthread_key_create(&dctx_key, dctx_destroy) == 0;
}

/* The calling thread's context, or a new one *fresh to free after use
 * (no thread slot), or NULL on -ENOMEM. */
static ZSTD_DCtx *thread_dctx(bool *fresh) {
    pthread_once(&dctx_once, dctx_key_init);
    ZSTD_DCtx *d = dctx_key_ok ? pthread_getspecific(dctx_key) : NULL;
    *fresh = false;
    if (d) return d;
    d = ZSTD_createDCtx();
    if (d && (!dctx_key_ok || pthread_setspecific(dctx_key, d) != 0))
        *fresh = true;
    return d;
}

/* Readahead for iterators. Once an iterator has read two blocks that follow
 * each other on disk, it reads a window of the file at once (16 KiB,
 * doubling to 128 KiB) and serves the next blocks from it: one system call
 * per window instead of one per 4 KiB block. Blocks served from the window
 * are parsed in place (no copy, not cached); the iterator drops each block
 * before it reads the next, which is what keeps such a view valid. Point
 * lookups never read ahead. */
#define RA_MIN (16u << 10)
#define RA_MAX (128u << 10)

typedef struct readahead {
    uint8_t *buf;
    size_t cap, len, window;
    uint64_t off;  /* file offset of buf[0] */
    uint64_t next; /* where the next block would start if sequential */
    int streak;    /* consecutive sequential reads, capped at 2 */
    bool windows;  /* read windows even from a mapped table (scan_windows) */
} readahead;

static void ra_release(readahead *ra) {
    kv_free(ra->buf);
    memset(ra, 0, sizeof *ra);
}

/* Note a read of [off, off + n) and, when it continues a sequential
 * streak, make ra's window hold it. *have tells whether ra->buf now holds
 * the bytes. A first read starts a streak like a jump does: a scan from
 * the first block (offset 0, where a new ra's next also points) once kept
 * a window of 0 bytes and read every block with a pread of its own. */
static int ra_fill(eng_table *t, readahead *ra, uint64_t off, size_t n,
                   bool *have) {
    *have = false;
    if (ra->window == 0 || off != ra->next) {
        ra->streak = 0;
        ra->window = RA_MIN;
    } else if (ra->streak < 2) {
        ra->streak++;
    }
    ra->next = off + n;
    if (off >= ra->off && off + n <= ra->off + ra->len) {
        *have = true;
        return 0;
    }
    if (ra->streak < 2) return 0;
    /* The caller checked off + n <= meta_end: the window stays inside the
     * data blocks. */
    size_t w = KV_MAX(ra->window, n);
    if (off + w > t->meta_end) w = (size_t)(t->meta_end - off);
    if (w > ra->cap) {
        uint8_t *p = kv_realloc(ra->buf, w);
        if (!p) return -ENOMEM;
        ra->buf = p;
        ra->cap = w;
    }
    ra->len = 0;
    int rc = eng__file_pread(t->file, off, ra->buf, w);
    if (rc) return rc;
    ra->off = off;
    ra->len = w;
    if (ra->window < RA_MAX) ra->window *= 2;
    *have = true;
    return 0;
}

/* Whether a scan of t reads windows (true) or its mapping in place. The
 * first touch of each page of a mapping costs a fault (on a virtual
 * machine whose hypervisor shadows page tables, also an exit), 2-4 us
 * per 4 KiB page here: a scan of a mapping no lookup has touched ran at
 * 1.0-1.2 s per 400K entries of 4 KiB, through windows at 0.38 s, through
 * a mapping already touched at 0.25 s (100-byte values: 7.3M entries/s,
 * 11.3M and 12.9M). So a scan reads the mapping only once point lookups
 * have read WARM_READS times the table's size through it, by when random
 * lookups have touched about 86% of its pages; a compaction always reads
 * windows (it reads each byte once, and a window is one system call and a
 * copy where the mapping would stay mapped after the table is gone). */
#define WARM_READS 2

static uint64_t warm_bytes(const eng_table *t) {
    return WARM_READS * t->meta_end;
}

static bool scan_windows(const eng_table *t, bool compaction) {
    return compaction || !t->map ||
           atomic_load_explicit(&t->mapped_reads, memory_order_relaxed) <
               warm_bytes(t);
}

/* Read, verify and (if needed) decompress the block at h. On success *out
 * holds *len block bytes: a kv_malloc'd buffer the caller owns, or, when
 * borrowed is given and the block is stored uncompressed in the table's
 * mapping or in ra's window, a view of those bytes (*borrowed set), valid
 * while the table is open (mapping) or until the next read through ra. */
static int read_block(eng_table *t, handle h, const char *what, readahead *ra,
                      bool *borrowed, uint8_t **out, size_t *len) {
    *out = NULL;
    if (borrowed) *borrowed = false;
    if (h.size > t->meta_end || h.off > t->meta_end - h.size ||
        t->meta_end - h.off - h.size < TRAILER_SIZE)
        return CORRUPT(t, "bad %s block handle (offset %llu, size %llu)", what,
                       (unsigned long long)h.off, (unsigned long long)h.size);
    size_t n = (size_t)h.size;
    uint8_t *buf = NULL, *d = NULL;
    const uint8_t *src;
    bool have = false;
    /* Point reads of a mapped table read the mapping in place; scans read
     * windows unless told to read the mapping (see scan_windows). */
    int rc = ra && (!t->map || ra->windows)
                 ? ra_fill(t, ra, h.off, n + TRAILER_SIZE, &have)
                 : 0;
    if (rc) return rc;
    if (have && borrowed) {
        src = ra->buf + (h.off - ra->off);
    } else if (t->map && borrowed) {
        src = t->map + h.off;
        /* Counted until the limit, then only read: lookups on many threads
         * do not keep writing one cache line. */
        if (!ra && atomic_load_explicit(&t->mapped_reads,
                                        memory_order_relaxed) < warm_bytes(t))
            atomic_fetch_add_explicit(&t->mapped_reads, n + TRAILER_SIZE,
                                      memory_order_relaxed);
    } else {
        if (!(buf = kv_malloc(n + TRAILER_SIZE))) return -ENOMEM;
        if (have)
            memcpy(buf, ra->buf + (h.off - ra->off), n + TRAILER_SIZE);
        else if (t->map)
            memcpy(buf, t->map + h.off, n + TRAILER_SIZE);
        else if ((rc = eng__file_pread(t->file, h.off, buf, n + TRAILER_SIZE)))
            goto out;
        src = buf;
    }
    uint8_t type = src[n];
    if (kv_checksum2(src, n, &type, 1) != kv_get_u64(src + n + 1)) {
        rc = CORRUPT(t, "checksum mismatch in block at offset %llu",
                     (unsigned long long)h.off);
        goto out;
    }
    if (type == BLOCK_RAW) {
        *out = buf ? buf : (uint8_t *)src;
        if (!buf) *borrowed = true;
        *len = n;
        return 0;
    }
    if (type != BLOCK_ZSTD) {
        rc = CORRUPT(t, "unknown compression type %u in block at offset %llu",
                     type, (unsigned long long)h.off);
        goto out;
    }
    unsigned long long raw = ZSTD_getFrameContentSize(src, n);
    if (raw == ZSTD_CONTENTSIZE_ERROR || raw == ZSTD_CONTENTSIZE_UNKNOWN ||
        raw > BLOCK_LIMIT) {
        rc = CORRUPT(t, "bad decompressed size in block at offset %llu",
                     (unsigned long long)h.off);
        goto out;
    }
    bool fresh;
    d = kv_malloc((size_t)raw);
    ZSTD_DCtx *dc = d ? thread_dctx(&fresh) : NULL;
    if (!dc) {
        rc = -ENOMEM;
        goto out;
    }
    size_t got = ZSTD_decompressDCtx(dc, d, (size_t)raw, src, n);
    if (fresh) ZSTD_freeDCtx(dc);
    if (ZSTD_isError(got) || got != raw) {
        rc = CORRUPT(t, "cannot decompress block at offset %llu: %s",
                     (unsigned long long)h.off,
                     ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short");
        goto out;
    }
    *out = d;
    *len = (size_t)raw;
    d = NULL;
out:
    kv_free(d);
    if (*out != buf) kv_free(buf);
    return rc;
}

/* read_block, then parse; the parsed block owns its bytes unless
 * *borrowed says they are a view into ra's window. */
static int read_parsed(eng_table *t, handle h, const char *what, readahead *ra,
                       bool *borrowed, eng_block **out) {
    uint8_t *data;
    size_t len;
    bool view = false;
    int rc = read_block(t, h, what, ra, borrowed ? &view : NULL, &data, &len);
    if (rc) return rc;
    if (borrowed) *borrowed = view;
    rc = eng__block_parse(data, len, !view, out);
    if (rc) {
        if (!view) kv_free(data);
        if (rc == KV_ECORRUPT)
            rc = CORRUPT(t, "malformed %s block at offset %llu", what,
                         (unsigned long long)h.off);
    }
    return rc;
}

static int decode_props(eng_table *t, const eng_block *pb) {
    eng_iiter *it = eng__block_iter(pb, kv_slice_cmp, NULL, NULL);
    if (!it) return -ENOMEM;
    eng_table_props *p = &t->props;
    unsigned seen = 0;
    int rc = 0;
    for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it)) {
        kv_slice k = it->ops->key(it), v = it->ops->value(it);
        int id = -1;
        for (int i = 0; i < P_COUNT; i++)
            if (kv_slice_eq(k, kv_slice_str(prop_names[i]))) id = i;
        if (id < 0) continue; /* a property of a later writer: ignore */
        seen |= 1u << id;
        if (id == P_SMALLEST || id == P_LARGEST) {
            kv_buf *dst = id == P_SMALLEST ? &p->smallest : &p->largest;
            if ((rc = kv_buf_set(dst, v.ptr, v.len))) goto out;
            continue;
        }
        uint64_t x;
        kv_reader r = kv_reader_make(v);
        if (kv_get_varint(&r, &x) || kv_reader_left(&r)) {
            rc = KV_ECORRUPT;
            goto out;
        }
        uint64_t *dst[P_COUNT] = {
            [P_DELETIONS] = &p->deletions,
            [P_ENTRIES] = &p->entries,
            [P_MAX_SEQ] = &p->max_seq,
            [P_MIN_SEQ] = &p->min_seq,
            [P_RAW_KEY] = &p->raw_key_bytes,
            [P_RAW_VALUE] = &p->raw_value_bytes,
        };
        *dst[id] = x;
    }
    rc = it->ops->status(it);
    if (rc == 0 && seen != (1u << P_COUNT) - 1) rc = KV_ECORRUPT;
    if (rc == 0 && p->entries > 0 &&
        (!eng__ikey_valid(kv_buf_slice(&p->smallest)) ||
         !eng__ikey_valid(kv_buf_slice(&p->largest))))
        rc = KV_ECORRUPT;
out:
    it->ops->free(it);
    if (rc == KV_ECORRUPT) rc = CORRUPT(t, "malformed properties block");
    return rc;
}

void eng__table_close(eng_table *t) {
    if (!t) return;
    if (t->charge) eng__cache_unreserve(t->cache, t->charge);
    /* The index and filter may be views of the mapping: free them first. */
    eng__block_free(t->index);
    if (t->filter_own) kv_free(t->filter);
    if (t->map) munmap((void *)t->map, (size_t)t->file->size);
    eng__props_release(&t->props);
    eng__file_close(t->file);
    kv_free(t);
}

int eng__table_open(eng_fault *f, const char *path, uint64_t file_number,
                    eng_cache *cache, bool map, eng_table **out) {
    *out = NULL;
    eng_table *t = kv_calloc(1, sizeof *t);
    if (!t) return -ENOMEM;
    t->number = file_number;
    t->cache = cache;
    eng_block *pb = NULL;
    int rc = eng__file_open_read(f, path, &t->file);
    if (rc) goto out;

    uint64_t size = t->file->size;
    if (size < FOOTER_SIZE) {
        rc = CORRUPT(t, "file too short for a footer (%llu bytes)",
                     (unsigned long long)size);
        goto out;
    }
    uint8_t ft[FOOTER_SIZE];
    rc = eng__file_pread(t->file, size - FOOTER_SIZE, ft, sizeof ft);
    if (rc) goto out;
    if (kv_get_u64(ft + 64) != TABLE_MAGIC) {
        rc = CORRUPT(t, "bad magic number at offset %llu",
                     (unsigned long long)(size - 8));
        goto out;
    }
    if (kv_get_u64(ft + 56) != kv_checksum(ft, 56)) {
        rc = CORRUPT(t, "checksum mismatch in footer at offset %llu",
                     (unsigned long long)(size - FOOTER_SIZE));
        goto out;
    }
    uint32_t version = kv_get_u32(ft + 48);
    if (version != TABLE_VERSION) {
        kv_error(ENG_MOD, "sstable '%s': unknown format version %u", path,
                 version);
        rc = KV_EVERSION;
        goto out;
    }
    t->meta_end = size - FOOTER_SIZE;
    /* Reads through a mapping bypass the fault layer, so a store under
     * fault injection reads with pread. The footer is verified first: a
     * file that is not a table is never mapped. A failed mmap (address
     * space, limits) is not an error: the table is read with pread. */
    if (map && !f && size <= SIZE_MAX) {
        void *m =
            mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, t->file->fd, 0);
        if (m != MAP_FAILED)
            t->map = m;
        else
            kv_warn(ENG_MOD, "sstable '%s': cannot map (%s); using pread", path,
                    strerror(errno));
    }
    handle fh = get_handle(ft), ih = get_handle(ft + 16),
           ph = get_handle(ft + 32);

    /* Index and filter of a mapped table stay in the mapping (verified
     * here, once): copying them would put about 1% of the table's size on
     * the heap for as long as it is open (300 KiB per 32 MiB table of
     * 4 KiB values), where the page cache already holds the bytes. */
    bool view = false;
    rc = read_parsed(t, ih, "index", NULL, t->map ? &view : NULL, &t->index);
    if (rc) goto out;
    if (fh.size > 0 || fh.off > 0) {
        view = false;
        rc = read_block(t, fh, "filter", NULL, t->map ? &view : NULL,
                        &t->filter, &t->filter_len);
        if (rc) goto out;
        t->filter_own = !view;
    }
    if ((rc = read_parsed(t, ph, "properties", NULL, NULL, &pb))) goto out;
    if ((rc = decode_props(t, pb))) goto out;
    t->props.file_size = size;
    /* Copies are charged to the cache, so they push data blocks out
     * instead of adding to the memory the cache's capacity bounds. */
    if (cache) {
        size_t charge = t->index->own ? eng__block_charge(t->index) : 0;
        if (t->filter_own) charge += t->filter_len;
        eng__cache_reserve(cache, charge);
        t->charge = charge;
    }
    *out = t;
    t = NULL;
out:
    eng__block_free(pb);
    eng__table_close(t);
    return rc;
}

size_t eng__table_mem(const eng_table *t) {
    return sizeof *t + eng__block_charge(t->index) +
           (t->filter_own ? t->filter_len : 0) + t->props.smallest.cap +
           t->props.largest.cap;
}

size_t eng__table_charge(const eng_table *t) {
    return t->charge;
}

static void block_deleter(void *v) {
    eng__block_free(v);
}

/* The data block at h, from the cache or the file. On success *blk is the
 * block and *ch its cache handle, or NULL when the caller owns the block
 * (no cache, or fill_cache false); unload_block undoes either. */
static int load_block(eng_table *t, handle h, bool fill_cache, readahead *ra,
                      eng_block **blk, eng_cache_handle **ch) {
    *ch = NULL;
    *blk = NULL;
    if (t->cache) {
        *ch = eng__cache_lookup(t->cache, t->number, h.off);
        if (*ch) {
            *blk = eng__cache_value(*ch);
            return 0;
        }
    }
    if (h.size > BLOCK_LIMIT)
        return CORRUPT(t, "bad data block handle (offset %llu, size %llu)",
                       (unsigned long long)h.off, (unsigned long long)h.size);
    eng_block *b;
    bool borrowed = false;
    int rc = read_parsed(t, h, "data", ra, ra || t->map ? &borrowed : NULL, &b);
    if (rc) return rc;
    /* A block read by a scan is a view into its readahead window: used
     * once and not cached, so a scan neither copies nor evicts hot blocks.
     * An uncompressed block of a mapped table is a view of the mapping:
     * the page cache already holds it, and a copy in the block cache would
     * only cost a malloc, a copy and an eviction. */
    if (t->cache && fill_cache && !borrowed) {
        *ch = eng__cache_insert(t->cache, t->number, h.off, b,
                                eng__block_charge(b), block_deleter);
        if (!*ch) return -ENOMEM; /* b was freed by the deleter */
    }
    *blk = b;
    return 0;
}

static void unload_block(eng_table *t, eng_block *blk, eng_cache_handle *ch) {
    if (ch)
        eng__cache_release(t->cache, ch);
    else
        eng__block_free(blk);
}

/* Log the corruption an entry iterator ran into; other errors pass. */
static int iter_error(eng_table *t, int rc, const char *what, uint64_t off) {
    if (rc == KV_ECORRUPT)
        return CORRUPT(t, "corrupt entry in %s block at offset %llu", what,
                       (unsigned long long)off);
    return rc;
}

int eng__table_get(eng_table *t, kv_slice ukey, uint64_t snap_seq, int *type,
                   kv_buf *val, bool *probed, uint64_t *found_seq) {
    *probed = false;
    if (t->filter &&
        !eng__bloom_may_match(kv_slice_make(t->filter, t->filter_len), ukey))
        return KV_ENOTFOUND;
    *probed = true;

    /* The seek target (ukey, snap_seq): on the stack for usual keys. */
    uint8_t small[128], *tk = small;
    size_t tlen = ukey.len + 8;
    if (tlen > sizeof small && !(tk = kv_malloc(tlen))) return -ENOMEM;
    if (ukey.len) memcpy(tk, ukey.ptr, ukey.len);
    kv_put_u64(tk + ukey.len,
               eng__trailer(KV_MIN(snap_seq, ENG_MAX_SEQ), ENG_TYPE_SEEK));
    int rc;
    kv_slice target = kv_slice_make(tk, tlen);
    eng_iiter *ii = eng__block_iter(t->index, eng__ikey_cmp, NULL, NULL);
    if (!ii) {
        rc = -ENOMEM;
        goto out;
    }
    /* The first entry >= target is in the first block whose index key is
     * >= target, or (when target falls between that block's last key and
     * its separator) first in the block after it. */
    for (ii->ops->seek(ii, target);; ii->ops->next(ii)) {
        if (!ii->ops->valid(ii)) {
            rc = ii->ops->status(ii);
            rc = rc ? iter_error(t, rc, "index", 0) : KV_ENOTFOUND;
            break;
        }
        handle h;
        if (decode_index_value(ii->ops->value(ii), &h)) {
            rc = CORRUPT(t, "bad block handle in index");
            break;
        }
        eng_block *blk;
        eng_cache_handle *ch;
        if ((rc = load_block(t, h, true, NULL, &blk, &ch))) break;
        eng_iiter *di = eng__block_iter(blk, eng__ikey_cmp, NULL, NULL);
        if (!di) {
            unload_block(t, blk, ch);
            rc = -ENOMEM;
            break;
        }
        di->ops->seek(di, target);
        bool done = true;
        if (di->ops->valid(di)) {
            kv_slice k = di->ops->key(di);
            rc = KV_ENOTFOUND;
            if (kv_slice_eq(eng__ikey_user(k), ukey)) {
                *type = eng__ikey_type(k);
                if (found_seq) *found_seq = eng__ikey_seq(k);
                rc = 0;
                if (*type == ENG_TYPE_PUT) {
                    kv_slice v = di->ops->value(di);
                    rc = kv_buf_set(val, v.ptr, v.len);
                }
            }
        } else if ((rc = di->ops->status(di))) {
            rc = iter_error(t, rc, "data", h.off);
        } else {
            done = false;
        }
        di->ops->free(di);
        unload_block(t, blk, ch);
        if (done) break;
    }
out:
    if (ii) ii->ops->free(ii);
    if (tk != small) kv_free(tk);
    return rc;
}

/* ---- two-level iterator: index entries -> data block entries ---- */

typedef struct table_iter {
    eng_iiter base;
    eng_table *t;
    bool fill_cache;
    eng_iiter *index;
    eng_iiter *data; /* NULL when no block is loaded */
    eng_block *blk;
    eng_cache_handle *ch;
    uint64_t blk_off;
    int status;
    readahead ra;
} table_iter;

static void drop_block(table_iter *it) {
    if (!it->data) return;
    it->data->ops->free(it->data);
    unload_block(it->t, it->blk, it->ch);
    it->data = NULL;
    it->blk = NULL;
    it->ch = NULL;
}

static void fail(table_iter *it, int rc) {
    drop_block(it);
    if (it->status == 0) it->status = rc;
}

/* Load the block the index iterator points at. */
static int open_block(table_iter *it) {
    handle h;
    int rc;
    if (decode_index_value(it->index->ops->value(it->index), &h)) {
        rc = CORRUPT(it->t, "bad block handle in index");
        goto fail;
    }
    rc = load_block(it->t, h, it->fill_cache, &it->ra, &it->blk, &it->ch);
    if (rc) goto fail;
    it->data = eng__block_iter(it->blk, eng__ikey_cmp, NULL, NULL);
    if (!it->data) {
        unload_block(it->t, it->blk, it->ch);
        it->blk = NULL;
        it->ch = NULL;
        rc = -ENOMEM;
        goto fail;
    }
    it->blk_off = h.off;
    return 0;
fail:
    fail(it, rc);
    return rc;
}

/* Move past exhausted (or empty) blocks until an entry, the end, or an
 * error. A block iterator that is not loaded yet is opened at its first
 * entry. */
static void skip_forward(table_iter *it) {
    while (it->status == 0 && !(it->data && it->data->ops->valid(it->data))) {
        if (it->data) {
            int rc = it->data->ops->status(it->data);
            if (rc) {
                fail(it, iter_error(it->t, rc, "data", it->blk_off));
                return;
            }
            drop_block(it);
            it->index->ops->next(it->index);
        }
        if (!it->index->ops->valid(it->index)) {
            int rc = it->index->ops->status(it->index);
            if (rc) fail(it, iter_error(it->t, rc, "index", 0));
            return;
        }
        if (open_block(it)) return;
        it->data->ops->seek_first(it->data);
    }
}

static bool ti_valid(eng_iiter *base) {
    table_iter *it = (table_iter *)base;
    return it->status == 0 && it->data && it->data->ops->valid(it->data);
}

static void ti_seek_first(eng_iiter *base) {
    table_iter *it = (table_iter *)base;
    if (it->status) return;
    drop_block(it);
    it->index->ops->seek_first(it->index);
    skip_forward(it);
}

static void ti_seek(eng_iiter *base, kv_slice target) {
    table_iter *it = (table_iter *)base;
    if (it->status) return;
    drop_block(it);
    it->index->ops->seek(it->index, target);
    if (it->index->ops->valid(it->index)) {
        if (open_block(it)) return;
        it->data->ops->seek(it->data, target);
    }
    skip_forward(it);
}

static void ti_next(eng_iiter *base) {
    table_iter *it = (table_iter *)base;
    if (!ti_valid(base)) return;
    it->data->ops->next(it->data);
    skip_forward(it);
}

static kv_slice ti_key(eng_iiter *base) {
    table_iter *it = (table_iter *)base;
    return it->data->ops->key(it->data);
}

static kv_slice ti_value(eng_iiter *base) {
    table_iter *it = (table_iter *)base;
    return it->data->ops->value(it->data);
}

static int ti_status(eng_iiter *base) {
    return ((table_iter *)base)->status;
}

static void ti_free(eng_iiter *base) {
    table_iter *it = (table_iter *)base;
    if (!it) return;
    drop_block(it);
    it->index->ops->free(it->index);
    ra_release(&it->ra);
    kv_free(it);
}

static const eng_iiter_ops table_iter_ops = {
    .valid = ti_valid,
    .seek_first = ti_seek_first,
    .seek = ti_seek,
    .next = ti_next,
    .key = ti_key,
    .value = ti_value,
    .status = ti_status,
    .free = ti_free,
};

bool eng__table_scan_windows(const eng_table *t) {
    return scan_windows(t, false);
}

eng_iiter *eng__table_iter(eng_table *t, bool fill_cache) {
    table_iter *it = kv_calloc(1, sizeof *it);
    if (!it) return NULL;
    it->index = eng__block_iter(t->index, eng__ikey_cmp, NULL, NULL);
    if (!it->index) {
        kv_free(it);
        return NULL;
    }
    it->base.ops = &table_iter_ops;
    it->t = t;
    it->fill_cache = fill_cache;
    it->ra.windows = scan_windows(t, !fill_cache); /* decided per scan */
    return &it->base;
}
