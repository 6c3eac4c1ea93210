/*
 * Inode objects (fs/obj.h): their encoding, the add-wins directory set and
 * its merge, file chunk manifests, ids, chunk hashes and replica keys.
 *
 * Invariants (encode refuses an inode breaking one, decode bytes that
 * would make one, so what decodes re-encodes to its own bytes): mode bits
 * are permissions plus at most the type's S_IFMT; xattr names distinct
 * (encoded sorted); a file inline (data is exactly size <= FS_INLINE_MAX
 * bytes) or chunked (indexes strictly ascending, no chunk past size); a
 * directory of size 0, its clock strictly ascending with counters >= 1,
 * its entries strictly ascending by (name, id, dot), each dot covered by
 * the clock; a symlink's target is its data and its size. Every count is
 * bounded by the bytes left before anything is allocated for it, and
 * varints must be minimal. Format and merge: docs/fs-format.md.
 */
#include "fs/obj.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <xxhash.h>

#define MOD "fs"
#define MAGIC "QFSI"
#define VERSION 2u     /* 1: the same without the directory flags byte */
#define DIR_SPLIT 1u   /* directory flags: split (see obj.h) */
#define DIR_REMOVED 2u /* ... removed (rmdir; see obj.h) */
#define HDR_BYTES 6u   /* magic, version, type */
#define SUM_BYTES 8u
#define BODY_INLINE 0u
#define BODY_CHUNKED 1u
#define PERM_BITS 07777u
/* The fewest bytes one item can take, to bound a count by the input. */
#define XATTR_MIN 3u  /* name length, one name byte, value length */
#define CHUNK_MIN 18u /* index, length, hash */
#define CLOCK_MIN 9u  /* actor, counter */
#define ENTRY_MIN 28u /* name length, one byte, id, type, actor, counter */

/* ---- rules shared by the encoder and the decoder ---- */

static int cmp_u64(uint64_t a, uint64_t b) {
    return a < b ? -1 : a > b;
}

static int cmp_i64(int64_t a, int64_t b) {
    return a < b ? -1 : a > b;
}

static uint32_t type_fmt(unsigned type) {
    switch (type) {
    case FS_FILE:
        return S_IFREG;
    case FS_DIR:
        return S_IFDIR;
    case FS_SYMLINK:
        return S_IFLNK;
    }
    return 0;
}

static bool type_ok(unsigned type) {
    return type >= FS_FILE && type <= FS_SYMLINK;
}

/* In memory a mode may carry its type's S_IFMT bits or none; the
 * encoding holds the permission bits alone. */
static bool mode_ok(unsigned type, uint32_t mode) {
    uint32_t fmt = mode & S_IFMT;
    return (fmt == 0 || fmt == type_fmt(type)) &&
           !(mode & ~(uint32_t)(S_IFMT | PERM_BITS));
}

/* Why s cannot be a directory entry's name, or NULL. */
static const char *name_problem(kv_slice s) {
    if (s.len == 0) return "empty name";
    if (s.len > FS_NAME_MAX) return "name longer than FS_NAME_MAX";
    if (memchr(s.ptr, '/', s.len)) return "name contains '/'";
    if (memchr(s.ptr, '\0', s.len)) return "name contains a NUL byte";
    if (s.ptr[0] == '.' && (s.len == 1 || (s.len == 2 && s.ptr[1] == '.')))
        return "name is '.' or '..'";
    return NULL;
}

static const char *xattr_name_problem(kv_slice s) {
    if (s.len == 0) return "empty name";
    if (s.len > FS_XATTR_NAME_MAX) return "name longer than FS_XATTR_NAME_MAX";
    if (memchr(s.ptr, '\0', s.len)) return "name contains a NUL byte";
    return NULL;
}

static const char *target_problem(kv_slice s, uint64_t size) {
    if (s.len == 0) return "empty target";
    if (s.len > FS_SYMLINK_MAX) return "target longer than FS_SYMLINK_MAX";
    if (memchr(s.ptr, '\0', s.len)) return "target contains a NUL byte";
    if (s.len != size) return "target length differs from the size";
    return NULL;
}

/* An xattr; *total counts the bytes of names and values so far. */
static const char *xattr_problem(kv_slice name, size_t vlen, uint64_t *total) {
    const char *why = xattr_name_problem(name);
    if (why) return why;
    if (vlen > FS_XATTR_VALUE_MAX)
        return "value longer than FS_XATTR_VALUE_MAX";
    *total += name.len + vlen;
    if (*total > FS_XATTR_TOTAL_MAX) return "over FS_XATTR_TOTAL_MAX in all";
    return NULL;
}

static const char *chunk_problem(const fs_chunk *c, const fs_chunk *prev,
                                 uint64_t size) {
    if (c->len == 0) return "zero length";
    if (c->len > FS_CHUNK_SIZE) return "longer than FS_CHUNK_SIZE";
    if (c->index >= FS_MAX_CHUNKS) return "index at or past FS_MAX_CHUNKS";
    if (prev && c->index <= prev->index)
        return "indexes not strictly ascending";
    if (c->index * FS_CHUNK_SIZE + c->len > size)
        return "reaches past the file size";
    return NULL;
}

static const char *clock_problem(const fs_dot *d, const fs_dot *prev) {
    if (d->counter == 0) return "zero counter";
    if (prev && d->actor <= prev->actor) return "actors not strictly ascending";
    return NULL;
}

/* Index of actor in a sorted clock, or where it would go. */
static size_t clock_find(const fs_dot *clock, size_t n, uint64_t actor,
                         bool *found) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (clock[mid].actor < actor)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < n && clock[lo].actor == actor;
    return lo;
}

static uint64_t clock_get(const fs_inode *d, uint64_t actor) {
    bool found;
    size_t i = clock_find(d->clock, d->nclock, actor, &found);
    return found ? d->clock[i].counter : 0;
}

/* What orders directory entries: name bytes, id bytes, actor, counter. */
typedef struct ekey {
    kv_slice name;
    const uint8_t *id;
    fs_dot dot;
} ekey;

static ekey ekey_of(const fs_dirent *e) {
    ekey k = {kv_slice_str(e->name), e->id.b, e->dot};
    return k;
}

static int ekey_cmp(const ekey *x, const ekey *y) {
    int c = kv_slice_cmp(x->name, y->name);
    if (c == 0) c = memcmp(x->id, y->id, FS_ID_LEN);
    if (c == 0) c = cmp_u64(x->dot.actor, y->dot.actor);
    if (c == 0) c = cmp_u64(x->dot.counter, y->dot.counter);
    return c;
}

static int ent_cmp(const fs_dirent *x, const fs_dirent *y) {
    ekey a = ekey_of(x), b = ekey_of(y);
    return ekey_cmp(&a, &b);
}

/* An entry of dir after prev (NULL for the first). */
static const char *entry_problem(const ekey *k, unsigned type,
                                 const fs_dirent *prev, const fs_inode *dir) {
    const char *why = name_problem(k->name);
    if (why) return why;
    if (!type_ok(type)) return "unknown target type";
    if (k->dot.counter == 0) return "zero dot counter";
    if (k->dot.counter > clock_get(dir, k->dot.actor))
        return "dot not covered by the clock";
    if (prev) {
        ekey p = ekey_of(prev);
        if (ekey_cmp(&p, k) >= 0) return "entries not strictly ascending";
    }
    return NULL;
}

/* xattrs in name order. In memory they may be in any order (the caller
 * appends); the encoding and the merge's comparison see them sorted. */
typedef struct xview {
    const fs_inode *ino;
    const fs_xattr **sorted; /* NULL: ino's own order is strictly sorted */
} xview;

static const fs_xattr *xview_at(const xview *v, size_t i) {
    return v->sorted ? v->sorted[i] : &v->ino->xattrs[i];
}

static int by_xattr_name(const void *x, const void *y) {
    const fs_xattr *a = *(const fs_xattr *const *)x;
    const fs_xattr *b = *(const fs_xattr *const *)y;
    return strcmp(a->name, b->name); /* names have no NUL: byte order */
}

/* 0, -EINVAL for two xattrs of one name, -ENOMEM. Release with
 * xview_release. */
static int xview_make(const fs_inode *ino, xview *v) {
    v->ino = ino;
    v->sorted = NULL;
    size_t n = ino->nxattrs;
    bool sorted = true;
    for (size_t i = 1; i < n && sorted; i++)
        sorted = strcmp(ino->xattrs[i - 1].name, ino->xattrs[i].name) < 0;
    if (sorted) return 0;
    v->sorted = kv_malloc(n * sizeof *v->sorted);
    if (!v->sorted) return -ENOMEM;
    for (size_t i = 0; i < n; i++) v->sorted[i] = &ino->xattrs[i];
    qsort(v->sorted, n, sizeof *v->sorted, by_xattr_name);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(v->sorted[i - 1]->name, v->sorted[i]->name) == 0) {
            kv_free(v->sorted);
            v->sorted = NULL;
            return -EINVAL;
        }
    }
    return 0;
}

static void xview_release(xview *v) {
    kv_free(v->sorted);
    v->sorted = NULL;
}

/* ---- lifecycle ---- */

void fs_inode_init(fs_inode *ino, fs_type t) {
    memset(ino, 0, sizeof *ino);
    ino->type = (uint8_t)t;
    ino->mode = type_fmt(ino->type);
}

static void free_xattrs(fs_xattr *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        kv_free(x[i].name);
        kv_buf_release(&x[i].value);
    }
    kv_free(x);
}

static void free_entries(fs_dirent *e, size_t n) {
    for (size_t i = 0; i < n; i++) kv_free(e[i].name);
    kv_free(e);
}

void fs_inode_release(fs_inode *ino) {
    free_xattrs(ino->xattrs, ino->nxattrs);
    kv_buf_release(&ino->data);
    kv_free(ino->chunks);
    kv_free(ino->clock);
    free_entries(ino->entries, ino->nentries);
    fs_inode_init(ino, (fs_type)ino->type);
}

/* A copy of n bytes (NULL for none). 0 or -ENOMEM. */
static int dup_mem(void **out, const void *p, size_t n) {
    *out = NULL;
    if (n == 0) return 0;
    *out = kv_malloc(n);
    if (!*out) return -ENOMEM;
    memcpy(*out, p, n);
    return 0;
}

static char *dup_slice(kv_slice s) {
    char *d = kv_malloc(s.len + 1);
    if (!d) return NULL;
    if (s.len) memcpy(d, s.ptr, s.len);
    d[s.len] = '\0';
    return d;
}

/* A deep copy of n xattrs into *out, all or nothing. */
static int copy_xattrs(fs_xattr **out, const fs_xattr *src, size_t n) {
    *out = NULL;
    if (n == 0) return 0;
    fs_xattr *x = kv_calloc(n, sizeof *x);
    if (!x) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        x[i].name = kv_strdup(src[i].name);
        if (!x[i].name ||
            kv_buf_set(&x[i].value, src[i].value.ptr, src[i].value.len)) {
            free_xattrs(x, i + 1);
            return -ENOMEM;
        }
    }
    *out = x;
    return 0;
}

int fs_inode_copy(fs_inode *dst, const fs_inode *src) {
    fs_inode t;
    fs_inode_init(&t, (fs_type)src->type);
    t.mode = src->mode;
    t.uid = src->uid;
    t.gid = src->gid;
    t.size = src->size;
    t.atime_ns = src->atime_ns;
    t.mtime_ns = src->mtime_ns;
    t.ctime_ns = src->ctime_ns;
    t.chunked = src->chunked;
    t.split = src->split;
    t.removed = src->removed;
    void *p;
    int rc = copy_xattrs(&t.xattrs, src->xattrs, src->nxattrs);
    if (rc) goto out;
    t.nxattrs = src->nxattrs;
    rc = kv_buf_set(&t.data, src->data.ptr, src->data.len);
    if (rc) goto out;
    rc = dup_mem(&p, src->chunks, src->nchunks * sizeof *src->chunks);
    if (rc) goto out;
    t.chunks = p;
    t.nchunks = t.chunks_cap = src->nchunks;
    rc = dup_mem(&p, src->clock, src->nclock * sizeof *src->clock);
    if (rc) goto out;
    t.clock = p;
    t.nclock = src->nclock;
    if (src->nentries) {
        rc = -ENOMEM;
        t.entries = kv_malloc(src->nentries * sizeof *t.entries);
        if (!t.entries) goto out;
        t.entries_cap = src->nentries;
        for (size_t i = 0; i < src->nentries; i++) {
            t.entries[i] = src->entries[i];
            t.entries[i].name = kv_strdup(src->entries[i].name);
            if (!t.entries[i].name) goto out;
            t.nentries++;
        }
        rc = 0;
    }
out:
    if (rc) fs_inode_release(&t);
    *dst = t;
    return rc;
}

/* ---- encoding ---- */

/* Where emit() writes: p NULL only counts the bytes. */
typedef struct writer {
    uint8_t *p;
    size_t n;
} writer;

static void put(writer *w, const void *src, size_t n) {
    if (w->p && n) memcpy(w->p + w->n, src, n);
    w->n += n;
}

static void put_u8(writer *w, uint8_t v) {
    put(w, &v, 1);
}

static void put_var(writer *w, uint64_t v) {
    uint8_t t[KV_VARINT_MAX];
    put(w, t, kv_varint_encode(t, v));
}

/* Signed: zigzag (0, -1, 1, -2 ... become 0, 1, 2, 3 ...), then a varint. */
static void put_zz(writer *w, int64_t v) {
    uint64_t u = (uint64_t)v;
    put_var(w, (u << 1) ^ (0 - (u >> 63)));
}

static void put_u64(writer *w, uint64_t v) {
    uint8_t t[8];
    kv_put_u64(t, v);
    put(w, t, 8);
}

static void put_slice(writer *w, kv_slice s) {
    put_var(w, s.len);
    put(w, s.ptr, s.len);
}

static void emit(const fs_inode *ino, const xview *xv, writer *w) {
    put(w, MAGIC, 4);
    put_u8(w, VERSION);
    put_u8(w, ino->type);
    put_var(w, ino->mode & PERM_BITS);
    put_var(w, ino->uid);
    put_var(w, ino->gid);
    put_var(w, ino->size);
    put_zz(w, ino->atime_ns);
    put_zz(w, ino->mtime_ns);
    put_zz(w, ino->ctime_ns);
    put_var(w, ino->nxattrs);
    for (size_t i = 0; i < ino->nxattrs; i++) {
        const fs_xattr *x = xview_at(xv, i);
        put_slice(w, kv_slice_str(x->name));
        put_slice(w, kv_buf_slice(&x->value));
    }
    switch (ino->type) {
    case FS_FILE:
        put_u8(w, ino->chunked ? BODY_CHUNKED : BODY_INLINE);
        if (!ino->chunked) {
            put_slice(w, kv_buf_slice(&ino->data));
            break;
        }
        put_var(w, ino->nchunks);
        for (size_t i = 0; i < ino->nchunks; i++) {
            const fs_chunk *c = &ino->chunks[i];
            put_var(w, c->index);
            put_var(w, c->len);
            put(w, c->hash, FS_HASH_LEN);
        }
        break;
    case FS_DIR:
        put_u8(w, (uint8_t)((ino->split ? DIR_SPLIT : 0) |
                            (ino->removed ? DIR_REMOVED : 0)));
        put_var(w, ino->nclock);
        for (size_t i = 0; i < ino->nclock; i++) {
            put_u64(w, ino->clock[i].actor);
            put_var(w, ino->clock[i].counter);
        }
        put_var(w, ino->nentries);
        for (size_t i = 0; i < ino->nentries; i++) {
            const fs_dirent *e = &ino->entries[i];
            put_slice(w, kv_slice_str(e->name));
            put(w, e->id.b, FS_ID_LEN);
            put_u8(w, e->type);
            put_u64(w, e->dot.actor);
            put_var(w, e->dot.counter);
        }
        break;
    case FS_SYMLINK:
        put_slice(w, kv_buf_slice(&ino->data));
        break;
    }
}

/* The decoder's rules, on the struct (xattr order and duplicates are
 * xview_make's). 0 or -EINVAL. */
static int check_inode(const fs_inode *ino) {
    if (!type_ok(ino->type) || !mode_ok(ino->type, ino->mode)) return -EINVAL;
    if (ino->nxattrs && !ino->xattrs) return -EINVAL;
    uint64_t total = 0;
    for (size_t i = 0; i < ino->nxattrs; i++) {
        const fs_xattr *x = &ino->xattrs[i];
        if (!x->name ||
            xattr_problem(kv_slice_str(x->name), x->value.len, &total))
            return -EINVAL;
    }
    bool is_file = ino->type == FS_FILE;
    bool is_dir = ino->type == FS_DIR;
    /* Nothing that the type's encoding would leave out. */
    if ((!is_file && (ino->chunked || ino->nchunks)) ||
        (!is_dir &&
         (ino->nclock || ino->nentries || ino->split || ino->removed)) ||
        (is_file && ino->chunked && ino->data.len) ||
        (is_file && !ino->chunked && ino->nchunks) || (is_dir && ino->data.len))
        return -EINVAL;
    switch (ino->type) {
    case FS_FILE:
        if (!ino->chunked)
            return ino->data.len == ino->size && ino->size <= FS_INLINE_MAX
                       ? 0
                       : -EINVAL;
        if (ino->size > FS_MAX_FILE_SIZE) return -EINVAL;
        for (size_t i = 0; i < ino->nchunks; i++)
            if (chunk_problem(&ino->chunks[i], i ? &ino->chunks[i - 1] : NULL,
                              ino->size))
                return -EINVAL;
        return 0;
    case FS_DIR:
        if (ino->size != 0 || ino->nentries > FS_MAX_ENTRIES) return -EINVAL;
        for (size_t i = 0; i < ino->nclock; i++)
            if (clock_problem(&ino->clock[i], i ? &ino->clock[i - 1] : NULL))
                return -EINVAL;
        for (size_t i = 0; i < ino->nentries; i++) {
            const fs_dirent *e = &ino->entries[i];
            if (!e->name) return -EINVAL;
            ekey k = ekey_of(e);
            if (entry_problem(&k, e->type, i ? e - 1 : NULL, ino))
                return -EINVAL;
        }
        return 0;
    default: /* FS_SYMLINK */
        return target_problem(kv_buf_slice(&ino->data), ino->size) ? -EINVAL
                                                                   : 0;
    }
}

int fs_inode_encode(const fs_inode *ino, kv_buf *out) {
    xview xv = {ino, NULL};
    int rc = check_inode(ino);
    if (rc == 0) rc = xview_make(ino, &xv);
    if (rc) return rc;
    writer count = {NULL, 0};
    emit(ino, &xv, &count);
    if (count.n > FS_MAX_OBJECT - SUM_BYTES) {
        rc = KV_ETOOLARGE;
        goto out;
    }
    rc = kv_buf_reserve(out, count.n + SUM_BYTES);
    if (rc) goto out;
    writer fill = {out->ptr + out->len, 0};
    emit(ino, &xv, &fill);
    KV_ASSERT(fill.n == count.n);
    kv_put_u64(fill.p + fill.n, kv_checksum(fill.p, fill.n));
    out->len += count.n + SUM_BYTES;
out:
    xview_release(&xv);
    return rc;
}

/* ---- decoding ---- */

typedef struct parser {
    kv_reader r;
    const uint8_t *base; /* offsets are from here */
    fs_inode *ino;
    unsigned version;
    const char *field, *check; /* the failed check, for the log */
    size_t off;
} parser;

static size_t at(const parser *p) {
    return (size_t)(p->r.p - p->base);
}

static int fail(parser *p, size_t off, const char *field, const char *check) {
    p->field = field;
    p->check = check;
    p->off = off;
    return KV_ECORRUPT;
}

/* A varint in its shortest form (so each value has one encoding). */
static int get_var(parser *p, const char *field, uint64_t *v) {
    size_t off = at(p);
    if (kv_get_varint(&p->r, v))
        return fail(p, off, field, "truncated or malformed varint");
    if (at(p) - off != kv_varint_len(*v))
        return fail(p, off, field, "overlong varint");
    return 0;
}

static int get_var32(parser *p, const char *field, uint32_t *v) {
    size_t off = at(p);
    uint64_t x;
    int rc = get_var(p, field, &x);
    if (rc) return rc;
    if (x > UINT32_MAX) return fail(p, off, field, "over 32 bits");
    *v = (uint32_t)x;
    return 0;
}

static int get_zz(parser *p, const char *field, int64_t *v) {
    uint64_t z;
    int rc = get_var(p, field, &z);
    if (rc) return rc;
    *v = (z & 1) ? -(int64_t)(z >> 1) - 1 : (int64_t)(z >> 1);
    return 0;
}

static int get_raw(parser *p, const char *field, size_t n,
                   const uint8_t **out) {
    if (kv_reader_left(&p->r) < n) return fail(p, at(p), field, "truncated");
    *out = p->r.p;
    p->r.p += n;
    return 0;
}

static int get_u64(parser *p, const char *field, uint64_t *v) {
    const uint8_t *b;
    int rc = get_raw(p, field, 8, &b);
    if (rc == 0) *v = kv_get_u64(b);
    return rc;
}

/* A length, then that many bytes, at most max. */
static int get_slice(parser *p, const char *field, size_t max, kv_slice *out) {
    size_t off = at(p);
    uint64_t n;
    int rc = get_var(p, field, &n);
    if (rc) return rc;
    if (n > max) return fail(p, off, field, "length over its limit");
    if (n > kv_reader_left(&p->r))
        return fail(p, off, field, "length exceeds the input");
    *out = kv_slice_make(p->r.p, (size_t)n);
    p->r.p += n;
    return 0;
}

/* A count of items of at least min bytes each, at most max: checked
 * against the bytes left, so what it allocates is bounded by the input. */
static int get_count(parser *p, const char *field, size_t min, uint64_t max,
                     size_t *out) {
    size_t off = at(p);
    uint64_t n;
    int rc = get_var(p, field, &n);
    if (rc) return rc;
    if (n > max) return fail(p, off, field, "count over its limit");
    if (n > kv_reader_left(&p->r) / min)
        return fail(p, off, field, "count exceeds the input");
    *out = (size_t)n;
    return 0;
}

static int parse_xattrs(parser *p) {
    fs_inode *ino = p->ino;
    size_t n;
    int rc = get_count(p, "xattr count", XATTR_MIN, FS_XATTR_TOTAL_MAX, &n);
    if (rc) return rc;
    if (n && !(ino->xattrs = kv_calloc(n, sizeof *ino->xattrs))) return -ENOMEM;
    uint64_t total = 0;
    kv_slice prev = {NULL, 0};
    for (size_t i = 0; i < n; i++) {
        size_t off = at(p);
        kv_slice name, value;
        if ((rc = get_slice(p, "xattr name", FS_XATTR_NAME_MAX, &name)) ||
            (rc = get_slice(p, "xattr value", FS_XATTR_VALUE_MAX, &value)))
            return rc;
        const char *why = xattr_problem(name, value.len, &total);
        if (!why && i && kv_slice_cmp(prev, name) >= 0)
            why = "names not strictly ascending";
        if (why) return fail(p, off, "xattr", why);
        fs_xattr *x = &ino->xattrs[i];
        if (!(x->name = dup_slice(name))) return -ENOMEM;
        ino->nxattrs++;
        if (kv_buf_set(&x->value, value.ptr, value.len)) return -ENOMEM;
        prev = name;
    }
    return 0;
}

static int parse_file(parser *p, size_t size_off) {
    fs_inode *ino = p->ino;
    size_t off = at(p);
    const uint8_t *flag;
    int rc = get_raw(p, "file body flag", 1, &flag);
    if (rc) return rc;
    if (*flag == BODY_INLINE) {
        kv_slice d;
        off = at(p);
        if ((rc = get_slice(p, "inline data", FS_INLINE_MAX, &d))) return rc;
        if (d.len != ino->size)
            return fail(p, off, "inline data", "length differs from the size");
        return kv_buf_set(&ino->data, d.ptr, d.len);
    }
    if (*flag != BODY_CHUNKED)
        return fail(p, off, "file body flag", "unknown value");
    ino->chunked = true;
    if (ino->size > FS_MAX_FILE_SIZE)
        return fail(p, size_off, "size", "over FS_MAX_FILE_SIZE");
    size_t n;
    if ((rc = get_count(p, "chunk count", CHUNK_MIN, FS_MAX_CHUNKS, &n)))
        return rc;
    if (n && !(ino->chunks = kv_malloc(n * sizeof *ino->chunks)))
        return -ENOMEM;
    ino->chunks_cap = n;
    for (size_t i = 0; i < n; i++) {
        fs_chunk *c = &ino->chunks[i];
        const uint8_t *h;
        off = at(p);
        if ((rc = get_var(p, "chunk index", &c->index)) ||
            (rc = get_var32(p, "chunk length", &c->len)) ||
            (rc = get_raw(p, "chunk hash", FS_HASH_LEN, &h)))
            return rc;
        memcpy(c->hash, h, FS_HASH_LEN);
        const char *why = chunk_problem(c, i ? c - 1 : NULL, ino->size);
        if (why) return fail(p, off, "chunk", why);
        ino->nchunks++;
    }
    return 0;
}

static int parse_dir(parser *p, size_t size_off, unsigned version) {
    fs_inode *ino = p->ino;
    if (ino->size != 0)
        return fail(p, size_off, "size", "not 0 for a directory");
    size_t n;
    int rc;
    if (version >= 2) {
        size_t off = at(p);
        const uint8_t *flags;
        if ((rc = get_raw(p, "directory flags", 1, &flags))) return rc;
        if (*flags & ~(DIR_SPLIT | DIR_REMOVED))
            return fail(p, off, "directory flags", "unknown bits");
        ino->split = *flags & DIR_SPLIT;
        ino->removed = *flags & DIR_REMOVED;
    }
    rc = get_count(p, "clock count", CLOCK_MIN, UINT64_MAX, &n);
    if (rc) return rc;
    if (n && !(ino->clock = kv_malloc(n * sizeof *ino->clock))) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        fs_dot *d = &ino->clock[i];
        size_t off = at(p);
        if ((rc = get_u64(p, "clock actor", &d->actor)) ||
            (rc = get_var(p, "clock counter", &d->counter)))
            return rc;
        const char *why = clock_problem(d, i ? d - 1 : NULL);
        if (why) return fail(p, off, "clock", why);
        ino->nclock++;
    }
    if ((rc = get_count(p, "entry count", ENTRY_MIN, FS_MAX_ENTRIES, &n)))
        return rc;
    if (n && !(ino->entries = kv_malloc(n * sizeof *ino->entries)))
        return -ENOMEM;
    ino->entries_cap = n;
    for (size_t i = 0; i < n; i++) {
        size_t off = at(p);
        ekey k;
        const uint8_t *type;
        if ((rc = get_slice(p, "entry name", FS_NAME_MAX, &k.name)) ||
            (rc = get_raw(p, "entry id", FS_ID_LEN, &k.id)) ||
            (rc = get_raw(p, "entry type", 1, &type)) ||
            (rc = get_u64(p, "entry actor", &k.dot.actor)) ||
            (rc = get_var(p, "entry counter", &k.dot.counter)))
            return rc;
        const char *why =
            entry_problem(&k, *type, i ? &ino->entries[i - 1] : NULL, ino);
        if (why) return fail(p, off, "entry", why);
        fs_dirent *e = &ino->entries[i];
        if (!(e->name = dup_slice(k.name))) return -ENOMEM;
        memcpy(e->id.b, k.id, FS_ID_LEN);
        e->type = *type;
        e->dot = k.dot;
        ino->nentries++;
    }
    return 0;
}

static int parse_symlink(parser *p) {
    fs_inode *ino = p->ino;
    size_t off = at(p);
    kv_slice t;
    int rc = get_slice(p, "symlink target", FS_SYMLINK_MAX, &t);
    if (rc) return rc;
    const char *why = target_problem(t, ino->size);
    if (why) return fail(p, off, "symlink target", why);
    return kv_buf_set(&ino->data, t.ptr, t.len);
}

/* Everything after the version byte and before the checksum. */
static int parse(parser *p) {
    fs_inode *ino = p->ino;
    size_t off = at(p);
    const uint8_t *type;
    int rc = get_raw(p, "type", 1, &type);
    if (rc) return rc;
    if (!type_ok(*type)) return fail(p, off, "type", "unknown value");
    ino->type = *type;
    off = at(p);
    if ((rc = get_var32(p, "mode", &ino->mode))) return rc;
    if (ino->mode & ~PERM_BITS)
        return fail(p, off, "mode", "bits other than permissions");
    ino->mode |= type_fmt(ino->type);
    if ((rc = get_var32(p, "uid", &ino->uid)) ||
        (rc = get_var32(p, "gid", &ino->gid)))
        return rc;
    size_t size_off = at(p);
    if ((rc = get_var(p, "size", &ino->size)) ||
        (rc = get_zz(p, "atime", &ino->atime_ns)) ||
        (rc = get_zz(p, "mtime", &ino->mtime_ns)) ||
        (rc = get_zz(p, "ctime", &ino->ctime_ns)) || (rc = parse_xattrs(p)))
        return rc;
    switch (ino->type) {
    case FS_FILE:
        rc = parse_file(p, size_off);
        break;
    case FS_DIR:
        rc = parse_dir(p, size_off, p->version);
        break;
    default:
        rc = parse_symlink(p);
        break;
    }
    if (rc) return rc;
    if (kv_reader_left(&p->r))
        return fail(p, at(p), "object", "trailing bytes");
    return 0;
}

static int corrupt(const char *check, size_t off) {
    kv_error(MOD, "corrupt inode object: %s at offset %zu", check, off);
    return KV_ECORRUPT;
}

int fs_inode_decode(kv_slice in, fs_inode *ino) {
    fs_inode_init(ino, FS_FILE);
    /* Checked in the order of dvv's: length, magic, checksum, version. */
    if (in.len < HDR_BYTES + SUM_BYTES || in.len > FS_MAX_OBJECT)
        return corrupt("bad length", 0);
    if (memcmp(in.ptr, MAGIC, 4) != 0) return corrupt("bad magic", 0);
    size_t body = in.len - SUM_BYTES;
    if (kv_get_u64(in.ptr + body) != kv_checksum(in.ptr, body))
        return corrupt("checksum mismatch", body);
    if (in.ptr[4] != VERSION && in.ptr[4] != 1) {
        kv_error(MOD, "inode object: unknown version %u", in.ptr[4]);
        return KV_EVERSION;
    }
    parser p = {.r = kv_reader_make(kv_slice_make(in.ptr + 5, body - 5)),
                .base = in.ptr,
                .ino = ino,
                .version = in.ptr[4]};
    int rc = parse(&p);
    if (rc == KV_ECORRUPT)
        kv_error(MOD, "corrupt inode object: %s: %s at offset %zu", p.field,
                 p.check, p.off);
    if (rc) fs_inode_release(ino);
    return rc;
}

/* ---- directories ---- */

/* The first entry at or after from whose name is not below name. */
static size_t name_lower_bound(const fs_inode *dir, kv_slice name,
                               size_t from) {
    size_t lo = from, hi = dir->nentries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (kv_slice_cmp(kv_slice_str(dir->entries[mid].name), name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The entries of name: [*first, return value). */
static size_t name_range(const fs_inode *dir, kv_slice name, size_t *first) {
    size_t i = *first = name_lower_bound(dir, name, 0);
    while (i < dir->nentries &&
           kv_slice_eq(kv_slice_str(dir->entries[i].name), name))
        i++;
    return i;
}

int fs_dir_add(fs_inode *dir, const char *name, const fs_id *id, uint8_t type,
               uint64_t actor) {
    if (dir->type != FS_DIR || !name || !id || !type_ok(type)) return -EINVAL;
    kv_slice nm = kv_slice_str(name);
    if (name_problem(nm)) return -EINVAL;
    bool found;
    size_t ci = clock_find(dir->clock, dir->nclock, actor, &found);
    if (found && dir->clock[ci].counter == UINT64_MAX) return -EOVERFLOW;
    size_t first, end = name_range(dir, nm, &first);
    size_t gone = end - first;
    if (dir->nentries - gone >= FS_MAX_ENTRIES) return -ENOSPC;
    /* Allocate everything first, so a failure changes nothing. */
    char *copy = kv_strdup(name);
    if (!copy) return -ENOMEM;
    if (dir->nentries + 1 > dir->entries_cap && gone == 0) {
        size_t cap = dir->entries_cap ? dir->entries_cap * 2 : 8;
        fs_dirent *e = kv_realloc(dir->entries, cap * sizeof *e);
        if (!e) goto nomem;
        dir->entries = e;
        dir->entries_cap = cap;
    }
    if (!found) {
        fs_dot *c =
            kv_realloc(dir->clock, (dir->nclock + 1) * sizeof *dir->clock);
        if (!c) goto nomem;
        dir->clock = c;
        memmove(c + ci + 1, c + ci, (dir->nclock - ci) * sizeof *c);
        c[ci].actor = actor;
        c[ci].counter = 0;
        dir->nclock++;
    }
    uint64_t counter = ++dir->clock[ci].counter;
    /* The adder saw every entry of name: they go, the new one takes their
     * place (all of one name, so the order holds). */
    for (size_t i = first; i < end; i++) kv_free(dir->entries[i].name);
    fs_dirent *e = dir->entries;
    memmove(e + first + 1, e + end, (dir->nentries - end) * sizeof *e);
    dir->nentries = dir->nentries - gone + 1;
    e[first].name = copy;
    e[first].id = *id;
    e[first].type = type;
    e[first].dot.actor = actor;
    e[first].dot.counter = counter;
    return 0;
nomem:
    kv_free(copy);
    return -ENOMEM;
}

int fs_dir_restore(fs_inode *dir, const fs_dirent *e) {
    if (dir->type != FS_DIR || !e || !e->name || !type_ok(e->type) ||
        name_problem(kv_slice_str(e->name)))
        return -EINVAL;
    bool found;
    size_t ci = clock_find(dir->clock, dir->nclock, e->dot.actor, &found);
    if (!found || dir->clock[ci].counter < e->dot.counter) return -EINVAL;
    if (dir->nentries >= FS_MAX_ENTRIES) return -ENOSPC;
    size_t at = 0;
    while (at < dir->nentries && ent_cmp(&dir->entries[at], e) < 0) at++;
    if (at < dir->nentries && ent_cmp(&dir->entries[at], e) == 0) return 0;
    char *copy = kv_strdup(e->name);
    if (!copy) return -ENOMEM;
    if (dir->nentries + 1 > dir->entries_cap) {
        size_t cap = dir->entries_cap ? dir->entries_cap * 2 : 8;
        fs_dirent *n = kv_realloc(dir->entries, cap * sizeof *n);
        if (!n) {
            kv_free(copy);
            return -ENOMEM;
        }
        dir->entries = n;
        dir->entries_cap = cap;
    }
    memmove(dir->entries + at + 1, dir->entries + at,
            (dir->nentries - at) * sizeof *dir->entries);
    dir->entries[at] = *e;
    dir->entries[at].name = copy;
    dir->nentries++;
    return 0;
}

size_t fs_dir_remove(fs_inode *dir, const char *name, const fs_id *id) {
    if (dir->type != FS_DIR || !name) return 0;
    size_t first, end = name_range(dir, kv_slice_str(name), &first);
    size_t keep = first;
    for (size_t i = first; i < end; i++) {
        fs_dirent *e = &dir->entries[i];
        if (!id || memcmp(e->id.b, id->b, FS_ID_LEN) == 0)
            kv_free(e->name);
        else
            dir->entries[keep++] = *e;
    }
    size_t gone = end - keep;
    if (gone == 0) return 0; /* entries may be NULL */
    memmove(dir->entries + keep, dir->entries + end,
            (dir->nentries - end) * sizeof *dir->entries);
    dir->nentries -= gone;
    return gone;
}

ssize_t fs_dir_find(const fs_inode *dir, const char *name, size_t *pos) {
    if (dir->type != FS_DIR || !name || *pos >= dir->nentries) return -1;
    kv_slice nm = kv_slice_str(name);
    size_t i = name_lower_bound(dir, nm, *pos);
    if (i >= dir->nentries ||
        !kv_slice_eq(kv_slice_str(dir->entries[i].name), nm))
        return -1;
    *pos = i + 1;
    return (ssize_t)i;
}

/* The attribute order of fs_dir_merge: a total order on what is encoded
 * of (times, permission bits, uid, gid, xattrs in name order), so the
 * larger is the same whichever side it is on. */
static int attr_cmp(const xview *xv, const xview *yv) {
    const fs_inode *x = xv->ino, *y = yv->ino;
    int c = cmp_i64(x->ctime_ns, y->ctime_ns);
    if (c == 0) c = cmp_i64(x->mtime_ns, y->mtime_ns);
    if (c == 0) c = cmp_i64(x->atime_ns, y->atime_ns);
    if (c == 0) c = cmp_u64(x->mode & PERM_BITS, y->mode & PERM_BITS);
    if (c == 0) c = cmp_u64(x->uid, y->uid);
    if (c == 0) c = cmp_u64(x->gid, y->gid);
    for (size_t i = 0; c == 0 && i < x->nxattrs && i < y->nxattrs; i++) {
        const fs_xattr *p = xview_at(xv, i), *q = xview_at(yv, i);
        c = kv_slice_cmp(kv_slice_str(p->name), kv_slice_str(q->name));
        if (c == 0)
            c = kv_slice_cmp(kv_buf_slice(&p->value), kv_buf_slice(&q->value));
    }
    if (c == 0) c = cmp_u64(x->nxattrs, y->nxattrs);
    return c;
}

/* What the merge does with one entry of either side. */
enum fate { KEEP_A, KEEP_B, DROP_A, DROP_B };

/* The next entry of the merge walk (entries of both sides in order; one
 * held by both is visited once, as a's): false at the end. */
static bool walk(const fs_inode *a, const fs_inode *b, size_t *i, size_t *j,
                 const fs_dirent **e, enum fate *fate) {
    const fs_dirent *x = *i < a->nentries ? &a->entries[*i] : NULL;
    const fs_dirent *y = *j < b->nentries ? &b->entries[*j] : NULL;
    if (!x && !y) return false;
    int c = !x ? 1 : !y ? -1 : ent_cmp(x, y);
    if (c == 0) {
        (*i)++;
        (*j)++;
        *e = x;
        *fate = KEEP_A;
    } else if (c < 0) {
        /* a only: b removed it if b's clock has seen its add. */
        (*i)++;
        *e = x;
        *fate = clock_get(b, x->dot.actor) < x->dot.counter ? KEEP_A : DROP_A;
    } else {
        (*j)++;
        *e = y;
        *fate = clock_get(a, y->dot.actor) < y->dot.counter ? KEEP_B : DROP_B;
    }
    return true;
}

int fs_dir_merge(fs_inode *a, const fs_inode *b) {
    if (a->type != FS_DIR || b->type != FS_DIR) return -EINVAL;
    if (a == b) return 0;
    /* Count, then allocate everything, then commit: a failure changes
     * nothing. */
    size_t nclock = 0, nents = 0, nfromb = 0;
    for (size_t i = 0, j = 0; i < a->nclock || j < b->nclock; nclock++) {
        uint64_t x = i < a->nclock ? a->clock[i].actor : UINT64_MAX;
        uint64_t y = j < b->nclock ? b->clock[j].actor : UINT64_MAX;
        bool ta = i < a->nclock && (j >= b->nclock || x <= y);
        bool tb = j < b->nclock && (i >= a->nclock || y <= x);
        i += ta;
        j += tb;
    }
    size_t i = 0, j = 0;
    const fs_dirent *e;
    enum fate fate;
    while (walk(a, b, &i, &j, &e, &fate)) {
        nents += fate == KEEP_A || fate == KEEP_B;
        nfromb += fate == KEEP_B;
    }
    fs_dot *clock = NULL;
    fs_dirent *ents = NULL;
    char **names = NULL;
    fs_xattr *xattrs = NULL;
    size_t nnames = 0;
    xview av = {a, NULL}, bv = {b, NULL};
    int rc = xview_make(a, &av);
    if (rc == 0) rc = xview_make(b, &bv);
    if (rc) goto out;
    bool b_attrs = attr_cmp(&bv, &av) > 0;
    rc = -ENOMEM;
    if (nclock && !(clock = kv_malloc(nclock * sizeof *clock))) goto out;
    if (nents && !(ents = kv_malloc(nents * sizeof *ents))) goto out;
    if (nfromb && !(names = kv_malloc(nfromb * sizeof *names))) goto out;
    for (i = 0, j = 0; walk(a, b, &i, &j, &e, &fate);) {
        if (fate != KEEP_B) continue;
        if (!(names[nnames] = kv_strdup(e->name))) goto out;
        nnames++;
    }
    if (b_attrs && copy_xattrs(&xattrs, b->xattrs, b->nxattrs)) goto out;

    /* Commit. */
    rc = 0;
    size_t k = 0, n = 0;
    for (i = 0, j = 0; i < a->nclock || j < b->nclock;) {
        const fs_dot *x = i < a->nclock ? &a->clock[i] : NULL;
        const fs_dot *y = j < b->nclock ? &b->clock[j] : NULL;
        if (!y || (x && x->actor < y->actor)) {
            clock[k++] = *x;
            i++;
        } else if (!x || y->actor < x->actor) {
            clock[k++] = *y;
            j++;
        } else {
            clock[k++] = x->counter >= y->counter ? *x : *y;
            i++;
            j++;
        }
    }
    KV_ASSERT(k == nclock);
    k = 0;
    for (i = 0, j = 0; walk(a, b, &i, &j, &e, &fate);) {
        if (fate == KEEP_A) {
            ents[n++] = *e; /* takes a's name */
        } else if (fate == KEEP_B) {
            ents[n] = *e;
            ents[n++].name = names[k++];
        } else if (fate == DROP_A) {
            kv_free(e->name);
        }
    }
    KV_ASSERT(n == nents && k == nfromb);
    kv_free(a->entries);
    a->entries = ents;
    a->nentries = a->entries_cap = nents;
    ents = NULL;
    a->split |= b->split;
    a->removed |= b->removed;
    kv_free(a->clock);
    a->clock = clock;
    a->nclock = nclock;
    clock = NULL;
    nnames = 0;
    if (b_attrs) {
        a->mode = b->mode;
        a->uid = b->uid;
        a->gid = b->gid;
        a->atime_ns = b->atime_ns;
        a->mtime_ns = b->mtime_ns;
        a->ctime_ns = b->ctime_ns;
        free_xattrs(a->xattrs, a->nxattrs);
        a->xattrs = xattrs;
        a->nxattrs = b->nxattrs;
        xattrs = NULL;
    }
out:
    xview_release(&av);
    xview_release(&bv);
    for (size_t q = 0; q < nnames; q++) kv_free(names[q]);
    kv_free(names);
    kv_free(ents);
    kv_free(clock);
    if (xattrs) free_xattrs(xattrs, b->nxattrs);
    return rc;
}

/* ---- files ---- */

/* The first chunk of f whose index is not below index. */
static size_t chunk_lower_bound(const fs_inode *f, uint64_t index) {
    size_t lo = 0, hi = f->nchunks;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->chunks[mid].index < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

const fs_chunk *fs_file_chunk(const fs_inode *f, uint64_t index) {
    size_t i = chunk_lower_bound(f, index);
    return i < f->nchunks && f->chunks[i].index == index ? &f->chunks[i] : NULL;
}

int fs_file_set_chunk(fs_inode *f, const fs_chunk *c) {
    if (f->type != FS_FILE || c->len == 0 || c->len > FS_CHUNK_SIZE)
        return -EINVAL;
    if (c->index >= FS_MAX_CHUNKS) return -EFBIG;
    size_t i = chunk_lower_bound(f, c->index);
    if (i < f->nchunks && f->chunks[i].index == c->index) {
        f->chunks[i] = *c;
        return 0;
    }
    if (f->nchunks == f->chunks_cap) {
        size_t cap = f->chunks_cap ? f->chunks_cap * 2 : 8;
        fs_chunk *p = kv_realloc(f->chunks, cap * sizeof *p);
        if (!p) return -ENOMEM;
        f->chunks = p;
        f->chunks_cap = cap;
    }
    memmove(f->chunks + i + 1, f->chunks + i,
            (f->nchunks - i) * sizeof *f->chunks);
    f->chunks[i] = *c;
    f->nchunks++;
    return 0;
}

void fs_file_truncate_chunks(fs_inode *f, uint64_t size) {
    /* The first index wholly at or past size: ceil(size / chunk). */
    uint64_t first = size / FS_CHUNK_SIZE + (size % FS_CHUNK_SIZE != 0);
    f->nchunks = chunk_lower_bound(f, first);
}

/* ---- ids, hashes and keys ---- */

void fs_id_random(fs_id *id) {
    do {
        size_t got = 0;
        while (got < FS_ID_LEN) {
            ssize_t n = getrandom(id->b + got, FS_ID_LEN - got, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                kv_error(MOD, "cannot make an object id: getrandom: %s",
                         kv_strerror(-errno));
                abort();
            }
            got += (size_t)n;
        }
    } while (fs_id_is_root(id)); /* 2^-128, but the root is taken */
}

bool fs_id_is_root(const fs_id *id) {
    static const fs_id root;
    return memcmp(id->b, root.b, FS_ID_LEN) == 0;
}

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

void fs_chunk_hash(kv_slice bytes, uint8_t out[FS_HASH_LEN]) {
    XXH128_hash_t h = XXH3_128bits(bytes.ptr, bytes.len);
    put_be64(out, h.high64);
    put_be64(out + 8, h.low64);
}

static int make_key(const char *volume, char kind, const uint8_t *b,
                    kv_buf *out) {
    static const char hex[] = "0123456789abcdef";
    if (!volume || !*volume || strchr(volume, '/')) return -EINVAL;
    size_t vlen = strlen(volume), n = vlen + 3 + 2 * FS_ID_LEN;
    kv_buf k = KV_BUF_INIT;
    if (kv_buf_reserve(&k, n + 1)) return -ENOMEM;
    memcpy(k.ptr, volume, vlen);
    uint8_t *p = k.ptr + vlen;
    *p++ = '/';
    *p++ = (uint8_t)kind;
    *p++ = '/';
    for (size_t i = 0; i < FS_ID_LEN; i++) {
        *p++ = (uint8_t)hex[b[i] >> 4];
        *p++ = (uint8_t)hex[b[i] & 15];
    }
    *p = '\0';
    k.len = n;
    kv_buf_release(out);
    *out = k;
    return 0;
}

int fs_key_inode(const char *volume, const fs_id *id, kv_buf *out) {
    return make_key(volume, 'i', id->b, out);
}

int fs_key_chunk(const char *volume, const uint8_t hash[FS_HASH_LEN],
                 kv_buf *out) {
    return make_key(volume, 'c', hash, out);
}

uint64_t fs_name_hash(const fs_id *dir, const char *name) {
    return XXH3_64bits_withSeed(name, strlen(name), kv_get_u64(dir->b));
}

uint64_t fs_shard_index(uint64_t hash, unsigned level) {
    return level == 0 ? 0 : hash >> (64 - FS_SHARD_BITS * level);
}

int fs_key_shard(const char *volume, const fs_id *dir, unsigned level,
                 uint64_t index, kv_buf *out) {
    if (level == 0) return fs_key_inode(volume, dir, out);
    if (level > FS_SHARD_LEVELS ||
        (level * FS_SHARD_BITS < 64 && index >> (level * FS_SHARD_BITS)))
        return -EINVAL;
    kv_buf k = KV_BUF_INIT;
    int rc = make_key(volume, 's', dir->b, &k);
    char tail[40];
    int n = snprintf(tail, sizeof tail, "/%u/%0*" PRIx64, level,
                     (int)(level * FS_SHARD_BITS / 4), index);
    if (rc == 0) rc = kv_buf_reserve(&k, k.len + (size_t)n + 1);
    if (rc == 0) {
        memcpy(k.ptr + k.len, tail, (size_t)n + 1);
        k.len += (size_t)n;
        kv_buf_release(out);
        *out = k;
    } else {
        kv_buf_release(&k);
    }
    return rc;
}
