/*
 * The record log: the framing shared by the WAL and the MANIFEST. A 32-byte
 * file header (magic, version, flags, log number, checksum) is followed by
 * records, each a 32-byte header (header checksum, length, type, log number,
 * payload checksum) and its payload. Format, validity rule and recovery are
 * in docs/engine-format.md, "Record log".
 *
 * Invariants: the writer only ever leaves whole records in the file (a failed
 * append is cut back); the reader never reads outside its window buffer and
 * allocates only for a length that passed the header checksum, the record
 * limit and the file size. A bad record followed by any valid record of the
 * same log is corruption; a bad record with nothing valid after it is a torn
 * tail, reported through eng__logr_torn_at().
 */
#include "engine/engine_int.h"

#define LOG_MAGIC "QFSLOG\r\n" /* 8 bytes; \r\n catches text-mode mangling */
#define LOG_VERSION 1u
#define FILE_HDR 32u /* bytes in the file header */
#define REC_HDR 32u  /* bytes in a record header */
#define REC_FULL 1u  /* the only record type of version 1 */
/* File header flag: the file is an older log reused in place, so bytes after
 * this log's last record may be records of that older log. */
#define FLAG_RECYCLED 1u
#define CHUNK (1u << 20) /* the reader reads at least this much at a time */
/* Writer scratch above this size is freed after each record, so one large
 * batch does not pin its copy for the writer's lifetime. */
#define SCRATCH_KEEP (1u << 20)

/* ---- writer ------------------------------------------------------------ */

struct eng_logw {
    eng_file *file;
    uint64_t lognum;
    kv_buf scratch; /* header + payload of the record being appended */
    int broken;     /* 0, or the append error that could not be undone */
};

static void file_header(uint8_t h[FILE_HDR], uint32_t flags, uint64_t lognum) {
    memcpy(h, LOG_MAGIC, 8);
    kv_put_u32(h + 8, LOG_VERSION);
    kv_put_u32(h + 12, flags);
    kv_put_u64(h + 16, lognum);
    kv_put_u64(h + 24, kv_checksum(h, 24));
}

int eng__logw_create(eng_fault *f, const char *path, uint64_t lognum,
                     eng_logw **out) {
    *out = NULL;
    eng_logw *w = kv_calloc(1, sizeof *w);
    if (!w) return -ENOMEM;
    w->lognum = lognum;
    kv_buf_init(&w->scratch);

    int rc = eng__file_create(f, path, &w->file);
    if (rc) goto out;
    uint8_t h[FILE_HDR];
    file_header(h, 0, lognum);
    rc = eng__file_append(w->file, h, FILE_HDR);
    if (rc) {
        /* A file without a whole header holds nothing; do not leave it. */
        eng__file_close(w->file);
        w->file = NULL;
        eng__env_unlink(path);
        goto out;
    }
    *out = w;
    w = NULL;
out:
    kv_free(w);
    return rc;
}

/* Overwriting blocks a file already has makes fdatasync write data only;
 * appending also changes the file size and extents, which costs a journal
 * commit per sync on ext4 (about 1.6x the time here). So an obsolete log is
 * reused: its new header (new number, FLAG_RECYCLED) is written and synced
 * first, then it takes its new name. Until that header is durable the file
 * keeps its old, obsolete name; a reader rejects its older records by their
 * log number. */
int eng__logw_recycle(eng_fault *f, const char *old_path, const char *path,
                      uint64_t lognum, eng_logw **out) {
    *out = NULL;
    eng_logw *w = kv_calloc(1, sizeof *w);
    char *p = kv_strdup(path);
    if (!w || !p) {
        kv_free(w);
        kv_free(p);
        return -ENOMEM;
    }
    w->lognum = lognum;
    kv_buf_init(&w->scratch);
    int rc = eng__file_open_append(f, old_path, &w->file);
    if (rc) goto out;
    uint8_t h[FILE_HDR];
    file_header(h, FLAG_RECYCLED, lognum);
    w->file->size = 0; /* appends overwrite from the start */
    if ((rc = eng__file_append(w->file, h, FILE_HDR)) ||
        (rc = eng__file_sync(w->file)) ||
        (rc = eng__env_rename(f, old_path, path)))
        goto out;
    kv_free(w->file->path);
    w->file->path = p;
    p = NULL;
    *out = w;
    w = NULL;
out:
    kv_free(p);
    eng__logw_close(w);
    return rc;
}

/* An append failed after the file held whole records up to end: cut off
 * whatever part of the record reached the file. */
static int undo_append(eng_logw *w, uint64_t end, int err) {
    int rc = eng__file_truncate(w->file, end);
    if (rc) {
        kv_error(ENG_MOD,
                 "log '%s': cannot cut partial record back to offset %llu: "
                 "%s; writer unusable after %s",
                 w->file->path, (unsigned long long)end, kv_strerror(rc),
                 kv_strerror(err));
        w->broken = err;
    }
    return err;
}

int eng__logw_add(eng_logw *w, kv_slice rec) {
    if (w->broken) return w->broken;
    if (rec.len > ENG_LOG_MAX_RECORD) return KV_ETOOLARGE;

    kv_buf_reset(&w->scratch);
    int rc = kv_buf_reserve(&w->scratch, REC_HDR + rec.len);
    if (rc) return rc;
    uint8_t *h = w->scratch.ptr;
    kv_put_u32(h + 8, (uint32_t)rec.len);
    kv_put_u32(h + 12, REC_FULL);
    kv_put_u64(h + 16, w->lognum);
    kv_put_u64(h + 24, kv_checksum(rec.ptr, rec.len));
    kv_put_u64(h, kv_checksum(h + 8, REC_HDR - 8));
    if (rec.len) memcpy(h + REC_HDR, rec.ptr, rec.len);

    /* One append per record, so a failure affects this record only. */
    uint64_t end = w->file->size;
    rc = eng__file_append(w->file, h, REC_HDR + rec.len);
    if (rc) rc = undo_append(w, end, rc);
    if (w->scratch.cap > SCRATCH_KEEP) kv_buf_release(&w->scratch);
    return rc;
}

int eng__logw_sync(eng_logw *w) {
    if (w->broken) return w->broken;
    return eng__file_sync(w->file);
}

uint64_t eng__logw_size(const eng_logw *w) {
    return w->file->size;
}

void eng__logw_close(eng_logw *w) {
    if (!w) return;
    eng__file_close(w->file);
    kv_buf_release(&w->scratch);
    kv_free(w);
}

/* ---- reader ------------------------------------------------------------ */

struct eng_logr {
    eng_file *file;
    uint64_t lognum;
    bool recycled;      /* older records may follow this log's last one */
    uint64_t size;      /* file size at open; bytes beyond are never read */
    uint64_t pos;       /* offset of the next record */
    uint64_t valid_end; /* end of the last record returned */
    int64_t torn_at;    /* offset of the torn tail, or -1 */
    int done;           /* 0, or what every later next returns */
    uint8_t *win;       /* window: file bytes [win_off, win_off + win_len) */
    size_t win_len, win_cap;
    uint64_t win_off;
};

/* What the bytes at an offset are; every state but REC_OK makes the record
 * invalid. */
typedef enum rec_state {
    REC_OK = 0,
    REC_SHORT_HEADER, /* fewer than 32 bytes left in the file */
    REC_ZEROED,       /* header all zero: never written, or preallocated */
    REC_BAD_HEADER,   /* header checksum mismatch */
    REC_OTHER_LOG,    /* checksummed header of another log (recycled file) */
    REC_BAD_TYPE,     /* checksummed header with an unknown type */
    REC_TOO_LONG,     /* checksummed header with length above the limit */
    REC_PAST_EOF,     /* good header, payload runs past the end of file */
    REC_BAD_PAYLOAD,  /* good header, payload checksum mismatch */
} rec_state;

static const char *const rec_why[] = {
    [REC_OK] = "valid",
    [REC_SHORT_HEADER] = "incomplete header",
    [REC_ZEROED] = "zeroed header",
    [REC_BAD_HEADER] = "header checksum mismatch",
    [REC_OTHER_LOG] = "record of another log number",
    [REC_BAD_TYPE] = "unknown record type",
    [REC_TOO_LONG] = "length above limit",
    [REC_PAST_EOF] = "payload past end of file",
    [REC_BAD_PAYLOAD] = "payload checksum mismatch",
};

typedef struct rec_check {
    rec_state state;
    uint32_t len;     /* payload length, once checks 2-5 passed */
    kv_slice payload; /* REC_OK: the payload, in the window */
} rec_check;

/* Make file bytes [off, off + n) available and point *out at them (valid
 * until the next call). The caller has checked off + n <= r->size, so n is
 * bounded by the file size. Reads at least CHUNK bytes when the file has
 * them, keeping what the window already holds from off onward. */
static int window(eng_logr *r, uint64_t off, size_t n, const uint8_t **out) {
    if (off >= r->win_off && off + n <= r->win_off + r->win_len) {
        *out = r->win + (off - r->win_off);
        return 0;
    }
    size_t keep = 0;
    if (off >= r->win_off && off < r->win_off + r->win_len) {
        keep = (size_t)(r->win_off + r->win_len - off);
        memmove(r->win, r->win + (off - r->win_off), keep);
    }
    r->win_off = off;
    r->win_len = keep;

    uint64_t left = r->size - off;
    size_t want = KV_MAX(n, (size_t)KV_MIN(left, (uint64_t)CHUNK));
    if (want > r->win_cap) {
        uint8_t *p = kv_realloc(r->win, want);
        if (!p) return -ENOMEM;
        r->win = p;
        r->win_cap = want;
    }
    size_t fill = (size_t)KV_MIN(left, (uint64_t)r->win_cap);
    if (fill > keep) {
        int rc =
            eng__file_pread(r->file, off + keep, r->win + keep, fill - keep);
        if (rc) return rc;
        r->win_len = fill;
    }
    *out = r->win;
    return 0;
}

static bool all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

/* Classify the bytes at off (see rec_state). 0 with *c filled, or an I/O
 * error or -ENOMEM. Checks run cheapest first; the payload is read only
 * after its header passed every check. */
static int check_record(eng_logr *r, uint64_t off, rec_check *c) {
    memset(c, 0, sizeof *c);
    if (r->size - off < REC_HDR) {
        c->state = REC_SHORT_HEADER;
        return 0;
    }
    const uint8_t *h;
    int rc = window(r, off, REC_HDR, &h);
    if (rc) return rc;
    if (kv_get_u64(h) != kv_checksum(h + 8, REC_HDR - 8)) {
        c->state = all_zero(h, REC_HDR) ? REC_ZEROED : REC_BAD_HEADER;
        return 0;
    }
    uint32_t len = kv_get_u32(h + 8);
    uint32_t type = kv_get_u32(h + 12);
    uint64_t lognum = kv_get_u64(h + 16);
    uint64_t sum = kv_get_u64(h + 24);
    if (lognum != r->lognum) {
        c->state = REC_OTHER_LOG;
    } else if (type != REC_FULL) {
        c->state = REC_BAD_TYPE;
    } else if (len > ENG_LOG_MAX_RECORD) {
        c->state = REC_TOO_LONG;
    } else {
        c->len = len;
        if (len > r->size - off - REC_HDR) c->state = REC_PAST_EOF;
    }
    if (c->state != REC_OK) return 0;

    rc = window(r, off, REC_HDR + (size_t)len, &h);
    if (rc) return rc;
    if (kv_checksum(h + REC_HDR, len) != sum) {
        c->state = REC_BAD_PAYLOAD;
        return 0;
    }
    c->payload = kv_slice_make(h + REC_HDR, len);
    return 0;
}

/* The first offset >= from where a valid record of this log starts: 0 with
 * *found, KV_ENOTFOUND if there is none, or an error. After a bad record the
 * boundaries are unknown, so every offset is a candidate. Only those holding
 * this log's number at +16 get their checksums computed, and memchr on one
 * nonzero byte of that number skips the rest without a per-byte loop (a
 * zeroed tail can be hundreds of MB). */
static int find_valid(eng_logr *r, uint64_t from, uint64_t *found) {
    uint8_t key[8];
    kv_put_u64(key, r->lognum);
    size_t j = 0;
    while (j < 7 && key[j] == 0) j++;
    uint64_t off = from;
    while (off + REC_HDR <= r->size) {
        const uint8_t *w;
        int rc = window(r, off, REC_HDR, &w);
        if (rc) return rc;
        /* Candidates are the headers lying wholly in the window, starting
         * at w + 0 .. w + span - REC_HDR. */
        size_t span = (size_t)(r->win_off + r->win_len - off);
        const uint8_t *hit = memchr(w + 16 + j, key[j], span - REC_HDR + 1);
        if (!hit) {
            off += span - REC_HDR + 1;
            continue;
        }
        size_t s = (size_t)(hit - w) - 16 - j;
        off += s;
        if (memcmp(w + s + 16, key, 8) == 0) {
            rec_check c;
            rc = check_record(r, off, &c);
            if (rc) return rc;
            if (c.state == REC_OK) {
                *found = off;
                return 0;
            }
        }
        off++;
    }
    return KV_ENOTFOUND;
}

/* The record at r->pos is invalid (c): decide between corruption and a torn
 * tail, log it and end the reader. */
static int stop_at_bad(eng_logr *r, const rec_check *c) {
    uint64_t bad = r->pos;
    uint64_t found = 0;
    int rc = KV_ENOTFOUND;
    if (c->state == REC_BAD_PAYLOAD) {
        /* The header passed its checksum, so its length is the writer's:
         * bytes inside the payload are user data that may look like records,
         * and the next record can only start after it. */
        rc = find_valid(r, bad + REC_HDR + c->len, &found);
    } else if (c->state != REC_SHORT_HEADER && c->state != REC_PAST_EOF) {
        rc = find_valid(r, bad + 1, &found);
    }
    /* else: the bad record reaches the end of the file; nothing follows. */
    if (rc != 0 && rc != KV_ENOTFOUND) return rc;

    if (rc == 0) {
        kv_error(ENG_MOD,
                 "log '%s': corrupt record at offset %llu (%s), valid records "
                 "follow at offset %llu",
                 r->file->path, (unsigned long long)bad, rec_why[c->state],
                 (unsigned long long)found);
        r->done = KV_ECORRUPT;
        return KV_ECORRUPT;
    }
    /* In a reused file the bytes after the last record are usually the
     * older log's: the expected end, not damage. */
    if (r->recycled)
        kv_info(ENG_MOD,
                "log '%s': end of records at offset %llu (%s); %llu bytes of "
                "an older log follow",
                r->file->path, (unsigned long long)bad, rec_why[c->state],
                (unsigned long long)(r->size - bad));
    else
        kv_warn(ENG_MOD,
                "log '%s': torn tail at offset %llu (%s), dropping %llu bytes",
                r->file->path, (unsigned long long)bad, rec_why[c->state],
                (unsigned long long)(r->size - bad));
    r->torn_at = (int64_t)bad;
    r->done = KV_ENOTFOUND;
    return KV_ENOTFOUND;
}

/* Validate the file header in the window. 0, KV_ECORRUPT, KV_EVERSION or
 * KV_ENOTFOUND (an all-zero file: created but its header never reached the
 * disk). */
static int check_file_header(eng_logr *r, const uint8_t *h) {
    const char *path = r->file->path;
    if (all_zero(h, FILE_HDR)) {
        /* Only harmless if nothing at all was written: a zeroed header in
         * front of data is damage. */
        for (uint64_t off = FILE_HDR; off < r->size;) {
            const uint8_t *p;
            size_t n = (size_t)KV_MIN(r->size - off, (uint64_t)CHUNK);
            int rc = window(r, off, n, &p);
            if (rc) return rc;
            if (!all_zero(p, n)) {
                kv_error(ENG_MOD,
                         "cannot open log '%s': zeroed header at offset 0 in "
                         "front of data",
                         path);
                return KV_ECORRUPT;
            }
            off += n;
        }
        kv_warn(ENG_MOD, "log '%s': all %llu bytes are zero, no log header",
                path, (unsigned long long)r->size);
        return KV_ENOTFOUND;
    }
    if (memcmp(h, LOG_MAGIC, 8) != 0) {
        kv_error(ENG_MOD, "cannot open log '%s': bad magic at offset 0", path);
        return KV_ECORRUPT;
    }
    if (kv_get_u64(h + 24) != kv_checksum(h, 24)) {
        kv_error(ENG_MOD,
                 "cannot open log '%s': header checksum mismatch at offset 24",
                 path);
        return KV_ECORRUPT;
    }
    uint32_t version = kv_get_u32(h + 8), flags = kv_get_u32(h + 12);
    if (version != LOG_VERSION || (flags & ~FLAG_RECYCLED) != 0) {
        kv_error(ENG_MOD,
                 "cannot open log '%s': format version %u flags 0x%x not "
                 "supported (this build reads version %u flags 0x%x)",
                 path, version, flags, LOG_VERSION, FLAG_RECYCLED);
        return KV_EVERSION;
    }
    r->recycled = (flags & FLAG_RECYCLED) != 0;
    r->lognum = kv_get_u64(h + 16);
    return 0;
}

/* 0 and *out; KV_ENOTFOUND for a file that never got its header (shorter
 * than 32 bytes, or all zero); KV_ECORRUPT, KV_EVERSION (logged); -errno,
 * -ENOMEM. */
int eng__logr_open(eng_fault *f, const char *path, eng_logr **out) {
    *out = NULL;
    eng_logr *r = kv_calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    int rc = eng__file_open_read(f, path, &r->file);
    if (rc) goto out;
    r->size = r->file->size;
    if (r->size < FILE_HDR) {
        /* The header is written first and in one piece; a shorter file was
         * cut off while being created and can hold no acknowledged record. */
        kv_warn(ENG_MOD, "log '%s': %llu bytes, too short for a log header",
                path, (unsigned long long)r->size);
        rc = KV_ENOTFOUND;
        goto out;
    }
    const uint8_t *h;
    rc = window(r, 0, FILE_HDR, &h);
    if (rc) goto out;
    rc = check_file_header(r, h);
    if (rc) goto out;
    r->pos = FILE_HDR;
    r->valid_end = FILE_HDR;
    r->torn_at = -1;
    *out = r;
    r = NULL;
out:
    eng__logr_close(r);
    return rc;
}

uint64_t eng__logr_lognum(const eng_logr *r) {
    return r->lognum;
}

int eng__logr_next(eng_logr *r, kv_slice *rec) {
    *rec = kv_slice_make(NULL, 0);
    if (r->done) return r->done;
    if (r->pos == r->size) {
        r->done = KV_ENOTFOUND; /* clean end at a record boundary */
        return KV_ENOTFOUND;
    }
    rec_check c;
    int rc = check_record(r, r->pos, &c);
    if (rc) return rc; /* I/O or memory: pos unchanged, a retry may work */
    if (c.state != REC_OK) return stop_at_bad(r, &c);
    *rec = c.payload;
    r->pos += REC_HDR + c.payload.len;
    r->valid_end = r->pos;
    return 0;
}

int64_t eng__logr_torn_at(const eng_logr *r) {
    return r->torn_at;
}

uint64_t eng__logr_valid_end(const eng_logr *r) {
    return r->valid_end;
}

void eng__logr_close(eng_logr *r) {
    if (!r) return;
    eng__file_close(r->file);
    kv_free(r->win);
    kv_free(r);
}
