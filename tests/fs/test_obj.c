/*
 * Tests for the filesystem's objects (fs/obj.c): inodes of every type
 * survive their encoding, which is pinned byte for byte; every check of
 * the decoder, each on a hand-built encoding that breaks exactly it, with
 * the log line naming it and its offset; flipped bytes and truncations at
 * every position; counts that would allocate without bound; the encoder
 * refusing what the decoder refuses; directories as add-wins sets (the
 * concrete concurrent scenarios, then the merge laws and the survival
 * rule on random histories of three replicas); the split flag of version
 * 2 and version-1 directories still read; chunk manifests against a
 * model; ids, chunk hashes, keys, shard keys and name hashes (how names
 * spread over shards); allocation failures.
 */
#include "fs/obj.h"
#include "replica/proto.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <xxhash.h>

_Static_assert(FS_MAX_OBJECT == REP_MAX_VALUE,
               "an inode object is one replica value");

enum { A = 101, B = 202, C = 303 }; /* actors */

/* ---- helpers ---- */

static char last_log[1024];

static void capture_line(kv_log_level lvl, const char *line, void *arg) {
    (void)lvl;
    (void)arg;
    snprintf(last_log, sizeof last_log, "%s", line);
}

/* Keep the last log line, to check what a decode reports. */
static void capture_log(void) {
    last_log[0] = '\0';
    kv_log_set_sink(capture_line, NULL);
}

/* An id whose bytes sort as n does: 0xa5, zeros, then n big-endian. */
static fs_id idn(uint64_t n) {
    fs_id id;
    memset(&id, 0, sizeof id);
    id.b[0] = 0xa5;
    for (int i = 0; i < 8; i++) id.b[8 + i] = (uint8_t)(n >> (56 - 8 * i));
    return id;
}

static void add_xattr(fs_inode *ino, const char *name, const void *v,
                      size_t n) {
    fs_xattr *x = kv_realloc(ino->xattrs, (ino->nxattrs + 1) * sizeof *x);
    cr_assert_not_null(x);
    ino->xattrs = x;
    x += ino->nxattrs++;
    x->name = kv_strdup(name);
    kv_buf_init(&x->value);
    OK(kv_buf_set(&x->value, v, n));
}

static void encode(const fs_inode *ino, kv_buf *out) {
    kv_buf_reset(out);
    OK(fs_inode_encode(ino, out));
}

static void expect_buf_eq(const kv_buf *a, const kv_buf *b) {
    cr_assert_eq(a->len, b->len, "%zu bytes, expected %zu", a->len, b->len);
    cr_assert_eq(memcmp(a->ptr, b->ptr, a->len), 0);
}

/* a and b encode to the same bytes. */
static void expect_same(const fs_inode *a, const fs_inode *b) {
    kv_buf ea = KV_BUF_INIT, eb = KV_BUF_INIT;
    encode(a, &ea);
    encode(b, &eb);
    expect_buf_eq(&ea, &eb);
    kv_buf_release(&ea);
    kv_buf_release(&eb);
}

/* Encode, decode, encode again: the same bytes, and the decoded inode
 * into *out (if not NULL). */
static void roundtrip(const fs_inode *ino, fs_inode *out) {
    kv_buf e = KV_BUF_INIT, e2 = KV_BUF_INIT;
    encode(ino, &e);
    fs_inode d;
    OK(fs_inode_decode(kv_buf_slice(&e), &d));
    encode(&d, &e2);
    expect_buf_eq(&e, &e2);
    if (out)
        *out = d;
    else
        fs_inode_release(&d);
    kv_buf_release(&e);
    kv_buf_release(&e2);
}

static void reseal(kv_buf *e) {
    kv_put_u64(e->ptr + e->len - 8, kv_checksum(e->ptr, e->len - 8));
}

static size_t count_of(const fs_inode *dir, const char *name) {
    size_t pos = 0, n = 0;
    while (fs_dir_find(dir, name, &pos) >= 0) n++;
    return n;
}

/* The entry of name with id, or NULL. */
static const fs_dirent *entry_of(const fs_inode *dir, const char *name,
                                 const fs_id *id) {
    size_t pos = 0;
    ssize_t i;
    while ((i = fs_dir_find(dir, name, &pos)) >= 0)
        if (memcmp(dir->entries[i].id.b, id->b, FS_ID_LEN) == 0)
            return &dir->entries[i];
    return NULL;
}

static fs_inode new_dir(void) {
    fs_inode d;
    fs_inode_init(&d, FS_DIR);
    return d;
}

static void add(fs_inode *dir, const char *name, uint64_t id, uint64_t actor) {
    fs_id i = idn(id);
    OK(fs_dir_add(dir, name, &i, FS_FILE, actor));
}

static void merge(fs_inode *a, const fs_inode *b) {
    OK(fs_dir_merge(a, b));
}

static fs_inode copy_of(const fs_inode *src) {
    fs_inode d;
    OK(fs_inode_copy(&d, src));
    return d;
}

/* A copy of a with b merged in. */
static fs_inode merged(const fs_inode *a, const fs_inode *b) {
    fs_inode m = copy_of(a);
    merge(&m, b);
    return m;
}

static uint64_t clock_of(const fs_inode *dir, uint64_t actor) {
    for (size_t i = 0; i < dir->nclock; i++)
        if (dir->clock[i].actor == actor) return dir->clock[i].counter;
    return 0;
}

/* A file with inline bytes and two xattrs, a chunked sparse file, a
 * directory with entries from two actors, a symlink with an xattr. */
static void sample_file(fs_inode *f) {
    fs_inode_init(f, FS_FILE);
    f->mode |= 0640;
    f->uid = 1000;
    f->gid = UINT32_MAX;
    f->atime_ns = -1;
    f->mtime_ns = INT64_MIN;
    f->ctime_ns = INT64_MAX;
    OK(kv_buf_set(&f->data, "hello, world", 12));
    f->size = 12;
    add_xattr(f, "user.b", "", 0);
    add_xattr(f, "user.a", "\0\1\2", 3);
}

static void sample_chunked(fs_inode *f) {
    fs_inode_init(f, FS_FILE);
    f->mode |= 04755;
    f->chunked = true;
    f->size = 5ull * FS_CHUNK_SIZE + 7;
    uint64_t idx[] = {0, 3, 5};
    uint32_t len[] = {FS_CHUNK_SIZE, 100, 7};
    for (int i = 0; i < 3; i++) {
        fs_chunk c = {idx[i], len[i], {0}};
        memset(c.hash, 0x11 * (i + 1), FS_HASH_LEN);
        OK(fs_file_set_chunk(f, &c));
    }
}

static void sample_dir(fs_inode *d) {
    *d = new_dir();
    d->mode |= 0755;
    d->ctime_ns = 5;
    add(d, "b", 2, A);
    add(d, "a", 1, B);
    add(d, "gone", 3, A);
    cr_assert_eq(fs_dir_remove(d, "gone", NULL), 1);
    fs_id i4 = idn(4);
    OK(fs_dir_add(d, "sub", &i4, FS_DIR, B));
    add_xattr(d, "user.dir", "x", 1);
}

static void sample_symlink(fs_inode *s) {
    fs_inode_init(s, FS_SYMLINK);
    s->mode |= 0777;
    OK(kv_buf_set(&s->data, "../target", 9));
    s->size = 9;
    add_xattr(s, "trusted.t", "v", 1);
}

typedef void (*sample_fn)(fs_inode *);
static const sample_fn samples[] = {sample_file, sample_chunked, sample_dir,
                                    sample_symlink};

/* ---- round trips ---- */

Test(obj, every_type_survives_its_encoding) {
    for (size_t s = 0; s < KV_ARRAY_LEN(samples); s++) {
        fs_inode ino, d;
        samples[s](&ino);
        roundtrip(&ino, &d);
        cr_assert_eq(d.type, ino.type);
        cr_assert_eq(d.mode, ino.mode);
        cr_assert_eq(d.uid, ino.uid);
        cr_assert_eq(d.gid, ino.gid);
        cr_assert_eq(d.size, ino.size);
        cr_assert_eq(d.atime_ns, ino.atime_ns);
        cr_assert_eq(d.mtime_ns, ino.mtime_ns);
        cr_assert_eq(d.ctime_ns, ino.ctime_ns);
        cr_assert_eq(d.nxattrs, ino.nxattrs);
        /* Decoded xattrs come sorted by name, whatever order they had. */
        for (size_t i = 0; i < d.nxattrs; i++) {
            if (i)
                cr_assert_lt(strcmp(d.xattrs[i - 1].name, d.xattrs[i].name), 0);
            bool found = false;
            for (size_t j = 0; j < ino.nxattrs; j++) {
                if (strcmp(ino.xattrs[j].name, d.xattrs[i].name)) continue;
                found = kv_slice_eq(kv_buf_slice(&ino.xattrs[j].value),
                                    kv_buf_slice(&d.xattrs[i].value));
            }
            cr_assert(found, "xattr %s", d.xattrs[i].name);
        }
        cr_assert_eq(d.chunked, ino.chunked);
        cr_assert(kv_slice_eq(kv_buf_slice(&d.data), kv_buf_slice(&ino.data)));
        cr_assert_eq(d.nchunks, ino.nchunks);
        for (size_t i = 0; i < d.nchunks; i++) {
            cr_assert_eq(d.chunks[i].index, ino.chunks[i].index);
            cr_assert_eq(d.chunks[i].len, ino.chunks[i].len);
            cr_assert_eq(
                memcmp(d.chunks[i].hash, ino.chunks[i].hash, FS_HASH_LEN), 0);
        }
        cr_assert_eq(d.nclock, ino.nclock);
        for (size_t i = 0; i < d.nclock; i++) {
            cr_assert_eq(d.clock[i].actor, ino.clock[i].actor);
            cr_assert_eq(d.clock[i].counter, ino.clock[i].counter);
        }
        cr_assert_eq(d.nentries, ino.nentries);
        for (size_t i = 0; i < d.nentries; i++) {
            const fs_dirent *x = &d.entries[i], *y = &ino.entries[i];
            cr_assert_str_eq(x->name, y->name);
            cr_assert_eq(memcmp(x->id.b, y->id.b, FS_ID_LEN), 0);
            cr_assert_eq(x->type, y->type);
            cr_assert_eq(x->dot.actor, y->dot.actor);
            cr_assert_eq(x->dot.counter, y->dot.counter);
        }
        fs_inode_release(&d);
        fs_inode_release(&ino);
    }
}

Test(obj, the_sample_directory_holds_what_was_added) {
    fs_inode d;
    sample_dir(&d);
    cr_assert_eq(d.nentries, 3);
    cr_assert_str_eq(d.entries[0].name, "a");
    cr_assert_str_eq(d.entries[1].name, "b");
    cr_assert_str_eq(d.entries[2].name, "sub");
    cr_assert_eq(d.entries[2].type, FS_DIR);
    cr_assert_eq(d.entries[2].dot.actor, B);
    cr_assert_eq(d.entries[2].dot.counter, 2);
    /* "gone" was A's second add: its dot stays in the clock. */
    cr_assert_eq(clock_of(&d, A), 2);
    cr_assert_eq(clock_of(&d, B), 2);
    fs_inode_release(&d);
}

Test(obj, empty_inodes_and_extreme_values_survive) {
    for (int t = FS_FILE; t <= FS_DIR; t++) {
        fs_inode e;
        fs_inode_init(&e, (fs_type)t);
        roundtrip(&e, NULL);
        fs_inode_release(&e);
    }
    fs_inode f;
    fs_inode_init(&f, FS_FILE);
    f.chunked = true; /* a file of zeros, no chunk stored */
    f.size = FS_MAX_FILE_SIZE;
    f.uid = UINT32_MAX;
    f.mode = S_IFREG | 07777;
    f.atime_ns = INT64_MIN;
    f.mtime_ns = INT64_MAX;
    f.ctime_ns = 0;
    fs_chunk c = {FS_MAX_CHUNKS - 1, FS_CHUNK_SIZE, {1}};
    OK(fs_file_set_chunk(&f, &c));
    fs_inode d;
    roundtrip(&f, &d);
    cr_assert_eq(d.size, FS_MAX_FILE_SIZE);
    cr_assert_eq(d.atime_ns, INT64_MIN);
    cr_assert_eq(d.mtime_ns, INT64_MAX);
    cr_assert_eq(d.chunks[0].index, FS_MAX_CHUNKS - 1);
    fs_inode_release(&d);
    /* Inline data at its limit; a symlink target at its limit. */
    fs_inode_release(&f);
    fs_inode_init(&f, FS_FILE);
    OK(kv_buf_reserve(&f.data, FS_INLINE_MAX));
    memset(f.data.ptr, 'x', FS_INLINE_MAX);
    f.data.len = f.size = FS_INLINE_MAX;
    roundtrip(&f, NULL);
    fs_inode_release(&f);
    fs_inode_init(&f, FS_SYMLINK);
    OK(kv_buf_reserve(&f.data, FS_SYMLINK_MAX));
    memset(f.data.ptr, 'y', FS_SYMLINK_MAX);
    f.data.len = f.size = FS_SYMLINK_MAX;
    roundtrip(&f, NULL);
    fs_inode_release(&f);
}

/* In memory a mode may lack its S_IFMT bits and xattrs may be in any
 * order: the encoding is the same as for the canonical form, and decode
 * gives the canonical form. */
Test(obj, modes_without_type_bits_and_unsorted_xattrs_encode_canonically) {
    fs_inode a, b, d;
    fs_inode_init(&a, FS_DIR);
    fs_inode_init(&b, FS_DIR);
    cr_assert_eq(a.mode, S_IFDIR);
    a.mode = 0755;
    b.mode = S_IFDIR | 0755;
    add_xattr(&a, "user.z", "1", 1);
    add_xattr(&a, "user.a", "2", 1);
    add_xattr(&a, "user.m", "3", 1);
    add_xattr(&b, "user.a", "2", 1);
    add_xattr(&b, "user.m", "3", 1);
    add_xattr(&b, "user.z", "1", 1);
    expect_same(&a, &b);
    roundtrip(&a, &d);
    cr_assert_eq(d.mode, S_IFDIR | 0755);
    cr_assert_str_eq(d.xattrs[0].name, "user.a");
    cr_assert_str_eq(d.xattrs[2].name, "user.z");
    fs_inode_release(&a);
    fs_inode_release(&b);
    fs_inode_release(&d);
}

Test(obj, copies_are_deep) {
    for (size_t s = 0; s < KV_ARRAY_LEN(samples); s++) {
        fs_inode ino;
        samples[s](&ino);
        fs_inode c = copy_of(&ino);
        expect_same(&c, &ino);
        kv_buf before = KV_BUF_INIT;
        encode(&c, &before);
        fs_inode_release(&ino); /* the copy shares nothing with it */
        kv_buf after = KV_BUF_INIT;
        encode(&c, &after);
        expect_buf_eq(&before, &after);
        kv_buf_release(&before);
        kv_buf_release(&after);
        fs_inode_release(&c);
    }
}

/* ---- the encoding, pinned ---- */

static void expect_bytes(const kv_buf *e, const uint8_t *want, size_t n) {
    cr_assert_eq(e->len, n, "encoding is %zu bytes, expected %zu", e->len, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(e->ptr[i], want[i], "byte %zu is 0x%02x, expected 0x%02x",
                     i, e->ptr[i], want[i]);
}

/* The examples of docs/fs-format.md. */
Test(obj, encodings_never_change) {
    kv_buf e = KV_BUF_INIT;
    /* A symlink "t" -> "a/b", mode 0777, uid 1000, gid 100, times
     * 1, -1, 2 ns, xattr "user.k" = "v". */
    fs_inode s;
    fs_inode_init(&s, FS_SYMLINK);
    s.mode |= 0777;
    s.uid = 1000;
    s.gid = 100;
    s.atime_ns = 1;
    s.mtime_ns = -1;
    s.ctime_ns = 2;
    OK(kv_buf_set(&s.data, "a/b", 3));
    s.size = 3;
    add_xattr(&s, "user.k", "v", 1);
    encode(&s, &e);
    static const uint8_t sym[] = {
        'Q',  'F',  'S',  'I',  0x02, 0x03,      /* magic, version 2, type */
        0xff, 0x03,                              /* mode 0777 */
        0xe8, 0x07,                              /* uid 1000 */
        0x64,                                    /* gid 100 */
        0x03,                                    /* size 3 */
        0x02, 0x01, 0x04,                        /* times 1, -1, 2 */
        0x01,                                    /* 1 xattr */
        0x06, 'u',  's',  'e',  'r',  '.',  'k', /* name */
        0x01, 'v',                               /* value */
        0x03, 'a',  '/',  'b',                   /* target */
        0x99, 0xb3, 0xd0, 0x31, 0x07, 0xb9, 0x6d, 0x6c, /* checksum */
    };
    expect_bytes(&e, sym, sizeof sym);
    fs_inode_release(&s);

    /* A directory, mode 0755, owned by root, times 0, with "x" -> id
     * 00..07 (a file) added by actor 5 as its first add. */
    fs_inode d = new_dir();
    d.mode |= 0755;
    fs_id x;
    memset(&x, 0, sizeof x);
    x.b[15] = 7;
    OK(fs_dir_add(&d, "x", &x, FS_FILE, 5));
    encode(&d, &e);
    static const uint8_t dir[] = {
        'Q',  'F',  'S',  'I',  0x02, 0x02, /* magic, version 2, type */
        0xed, 0x03,                         /* mode 0755 */
        0x00, 0x00, 0x00,                   /* uid, gid, size */
        0x00, 0x00, 0x00,                   /* times */
        0x00,                               /* no xattrs */
        0x00,                               /* flags: not split */
        0x01,                               /* 1 clock entry */
        0x05, 0,    0,    0,    0,    0,    0,    0, /* actor 5 */
        0x01,                                        /* counter 1 */
        0x01,                                        /* 1 entry */
        0x01, 'x',                                   /* name */
        0,    0,    0,    0,    0,    0,    0,    0,
        0,    0,    0,    0,    0,    0,    0,    0x07, /* id */
        0x01,                                           /* type: file */
        0x05, 0,    0,    0,    0,    0,    0,    0,    /* dot actor 5 */
        0x01,                                           /* dot counter 1 */
        0x3b, 0x0d, 0x21, 0x12, 0x2f, 0x7b, 0x5c, 0x75, /* checksum */
    };
    expect_bytes(&e, dir, sizeof dir);
    fs_inode_release(&d);

    /* A chunked file of 1 MiB + 1 byte, two chunks, mode 0600. */
    fs_inode f;
    fs_inode_init(&f, FS_FILE);
    f.mode |= 0600;
    f.chunked = true;
    f.size = FS_CHUNK_SIZE + 1;
    fs_chunk c0 = {0, FS_CHUNK_SIZE, {0}}, c1 = {1, 1, {0}};
    memset(c0.hash, 0xaa, FS_HASH_LEN);
    memset(c1.hash, 0xbb, FS_HASH_LEN);
    OK(fs_file_set_chunk(&f, &c1));
    OK(fs_file_set_chunk(&f, &c0));
    encode(&f, &e);
    static const uint8_t
        file[] =
            {
                'Q',  'F',  'S',  'I',  0x02, 0x01, /* magic, version 2, type */
                0x80, 0x03,                         /* mode 0600 */
                0x00, 0x00,                         /* uid, gid */
                0x81, 0x80, 0x40,                   /* size 1048577 */
                0x00, 0x00, 0x00,                   /* times */
                0x00,                               /* no xattrs */
                0x01,                               /* chunked */
                0x02,                               /* 2 chunks */
                0x00, 0x80, 0x80, 0x40, /* index 0, length 1048576 */
                0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, /* hash */
                0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa,
                0x01, 0x01, /* index 1, length 1 */
                0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, /* hash */
                0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb,
                0xdf, 0xf4, 0xc8, 0x5e, 0xe0, 0xf8, 0x7d, 0xa9, /* checksum */
            };
    expect_bytes(&e, file, sizeof file);
    fs_inode_release(&f);
    kv_buf_release(&e);
}

/* ---- decoding damaged bytes ---- */

/* A hand-built encoding (docs/fs-format.md), to break one rule at a
 * time. */
static void b_raw(kv_buf *b, const void *p, size_t n) {
    OK(kv_buf_append(b, p, n));
}
static void b_u8(kv_buf *b, uint8_t v) {
    OK(kv_buf_append(b, &v, 1));
}
static void b_var(kv_buf *b, uint64_t v) {
    OK(kv_buf_put_varint(b, v));
}
static void b_u64(kv_buf *b, uint64_t v) {
    OK(kv_buf_put_u64(b, v));
}
static void b_mem(kv_buf *b, const void *p, size_t n) {
    OK(kv_buf_put_lenslice(b, kv_slice_make(p, n)));
}
static void b_str(kv_buf *b, const char *s) {
    b_mem(b, s, strlen(s));
}
/* Magic, version 2, type, permission bits, uid 0, gid 0, size, times 0.
 * (A version-1 object: the same with b.ptr[4] = 1 and, for a directory,
 * no flags byte.) */
static void b_head(kv_buf *b, uint8_t type, uint64_t perms, uint64_t size) {
    OK(kv_buf_append(b, "QFSI\x02", 5));
    b_u8(b, type);
    b_var(b, perms);
    b_var(b, 0);
    b_var(b, 0);
    b_var(b, size);
    for (int i = 0; i < 3; i++) b_var(b, 0);
}
static void b_dirent(kv_buf *b, const void *name, size_t nlen, uint8_t idb,
                     uint8_t type, uint64_t actor, uint64_t counter) {
    b_mem(b, name, nlen);
    uint8_t id[FS_ID_LEN] = {0};
    id[15] = idb;
    OK(kv_buf_append(b, id, FS_ID_LEN));
    b_u8(b, type);
    b_u64(b, actor);
    b_var(b, counter);
}
/* A directory body's first byte (version 2): its flags, bit 0 split. */
static void b_dflags(kv_buf *b, uint8_t flags) {
    b_u8(b, flags);
}
static void b_chunk(kv_buf *b, uint64_t index, uint64_t len) {
    b_var(b, index);
    b_var(b, len);
    uint8_t h[FS_HASH_LEN];
    memset(h, 0x5c, sizeof h);
    OK(kv_buf_append(b, h, sizeof h));
}
static void seal(kv_buf *b) {
    b_u64(b, kv_checksum(b->ptr, b->len));
}

/* Set when every allocation should fail during a failing decode: the
 * bad count is then the first thing that could allocate. */
static bool no_alloc;

/* Decode b, expect want and, for a failed check, a log line naming it at
 * offset `off`. */
static void expect_decode(const kv_buf *b, int want, const char *check,
                          size_t off, int line) {
    fs_inode d;
    last_log[0] = '\0';
    kv_alloc_fail_after(want != 0 && no_alloc ? 0 : -1);
    int rc = fs_inode_decode(kv_buf_slice(b), &d);
    kv_alloc_fail_after(-1);
    cr_assert_eq(rc, want, "line %d: %d (%s), expected %d (%s); log: %s", line,
                 rc, kv_strerror(rc), want, kv_strerror(want), last_log);
    if (check) {
        char at[64];
        snprintf(at, sizeof at, " at offset %zu", off);
        cr_assert(strstr(last_log, check) && strstr(last_log, at),
                  "line %d: log '%s' should name '%s'%s", line, last_log, check,
                  at);
    }
    if (rc) cr_assert(d.nentries == 0 && d.nxattrs == 0 && d.nchunks == 0);
    fs_inode_release(&d);
}

/* Build with the statements, seal, decode. `mark` is set by the
 * statements to the offset the failure must be reported at. */
#define CASE(want, check, ...)                                                 \
    do {                                                                       \
        kv_buf_reset(&b);                                                      \
        mark = 0;                                                              \
        __VA_ARGS__;                                                           \
        seal(&b);                                                              \
        expect_decode(&b, want, check, mark, __LINE__);                        \
    } while (0)
#define MARK() (mark = b.len)

Test(obj, every_decoder_check_rejects_its_case, .init = capture_log) {
    kv_buf b = KV_BUF_INIT;
    size_t mark = 0;
    char big[FS_SYMLINK_MAX + 2];
    memset(big, 'n', sizeof big);

    /* The builder itself: valid objects of each type. */
    CASE(0, NULL, b_head(&b, FS_FILE, 0644, 2), b_var(&b, 0), b_u8(&b, 0),
         b_str(&b, "hi"));
    CASE(0, NULL, b_head(&b, FS_FILE, 0, 2 * FS_CHUNK_SIZE), b_var(&b, 0),
         b_u8(&b, 1), b_var(&b, 2), b_chunk(&b, 0, 1),
         b_chunk(&b, 1, FS_CHUNK_SIZE));
    CASE(0, NULL, b_head(&b, FS_DIR, 0755, 0), b_var(&b, 0), b_dflags(&b, 0),
         b_var(&b, 2), b_u64(&b, 1), b_var(&b, 3), b_u64(&b, 9), b_var(&b, 1),
         b_var(&b, 3), b_dirent(&b, "a", 1, 1, FS_FILE, 1, 2),
         b_dirent(&b, "a", 1, 1, FS_FILE, 9, 1),
         b_dirent(&b, "a", 1, 2, FS_SYMLINK, 1, 1));
    CASE(0, NULL, b_head(&b, FS_SYMLINK, 0777, 1), b_var(&b, 1),
         b_str(&b, "user.x"), b_str(&b, "v"), b_str(&b, "/"));

    /* Frame: magic, version, type, length, trailing bytes. */
    CASE(KV_ECORRUPT, "bad magic", b_head(&b, FS_DIR, 0, 0), b.ptr[0] = 'X',
         b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_EVERSION, NULL, b_head(&b, FS_DIR, 0, 0), b.ptr[4] = 3,
         b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_EVERSION, NULL, b_head(&b, FS_DIR, 0, 0), b.ptr[4] = 0,
         b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_EVERSION, NULL, b_head(&b, FS_DIR, 0, 0), b.ptr[4] = 0xff,
         b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "type: unknown value", b_head(&b, 0, 0, 0), mark = 5,
         b_var(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "type: unknown value", b_head(&b, 4, 0, 0), mark = 5,
         b_var(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "trailing bytes", b_head(&b, FS_DIR, 0, 0), b_var(&b, 0),
         b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0), MARK(), b_u8(&b, 0));
    CASE(KV_ECORRUPT, "truncated", b_head(&b, FS_DIR, 0, 0), b_var(&b, 0),
         b_dflags(&b, 0), b_var(&b, 0), MARK());

    /* Attributes. */
    CASE(KV_ECORRUPT, "mode: bits other than permissions",
         b_raw(&b, "QFSI\x02\x01", 6), MARK(), b_var(&b, S_IFREG | 0644),
         b_var(&b, 0), b_var(&b, 0), b_var(&b, 0), b_var(&b, 0), b_var(&b, 0),
         b_var(&b, 0), b_var(&b, 0), b_u8(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "uid: over 32 bits", b_raw(&b, "QFSI\x02\x02\x00", 7),
         MARK(), b_var(&b, 1ull << 32), b_var(&b, 0), b_var(&b, 0),
         b_var(&b, 0), b_var(&b, 0), b_var(&b, 0), b_var(&b, 0),
         b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "gid: overlong varint",
         b_raw(&b, "QFSI\x02\x02\x00\x00", 8), MARK(), b_u8(&b, 0x80),
         b_u8(&b, 0x00), b_var(&b, 0), b_var(&b, 0), b_var(&b, 0), b_var(&b, 0),
         b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "atime: truncated or malformed varint",
         b_raw(&b, "QFSI\x02\x02\x00\x00\x00\x00", 10), MARK(),
         b_raw(&b, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 10));

    /* Xattrs. */
    CASE(KV_ECORRUPT, "xattr: empty name", b_head(&b, FS_DIR, 0, 0),
         b_var(&b, 1), MARK(), b_str(&b, ""), b_str(&b, "v"), b_dflags(&b, 0),
         b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "xattr: name contains a NUL byte",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 1), MARK(), b_mem(&b, "a\0b", 3),
         b_str(&b, "v"), b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "xattr name: length over its limit",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 1), MARK(),
         b_mem(&b, big, FS_XATTR_NAME_MAX + 1), b_str(&b, "v"), b_dflags(&b, 0),
         b_var(&b, 0), b_var(&b, 0));
    CASE(0, NULL, b_head(&b, FS_DIR, 0, 0), b_var(&b, 1),
         b_mem(&b, big, FS_XATTR_NAME_MAX), b_str(&b, "v"), b_dflags(&b, 0),
         b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "xattr: names not strictly ascending",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 2), b_str(&b, "user.b"),
         b_str(&b, ""), MARK(), b_str(&b, "user.a"), b_str(&b, ""),
         b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "xattr: names not strictly ascending",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 2), b_str(&b, "user.a"),
         b_str(&b, "1"), MARK(), b_str(&b, "user.a"), b_str(&b, "2"),
         b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    {
        static uint8_t v[FS_XATTR_VALUE_MAX + 1];
        CASE(KV_ECORRUPT, "xattr value: length over its limit",
             b_head(&b, FS_DIR, 0, 0), b_var(&b, 1), b_str(&b, "user.v"),
             MARK(), b_mem(&b, v, sizeof v), b_dflags(&b, 0), b_var(&b, 0),
             b_var(&b, 0));
        /* Four values at the limit and their names: over the total. */
        CASE(KV_ECORRUPT, "xattr: over FS_XATTR_TOTAL_MAX in all",
             b_head(&b, FS_DIR, 0, 0), b_var(&b, 4), b_str(&b, "user.1"),
             b_mem(&b, v, FS_XATTR_VALUE_MAX), b_str(&b, "user.2"),
             b_mem(&b, v, FS_XATTR_VALUE_MAX), b_str(&b, "user.3"),
             b_mem(&b, v, FS_XATTR_VALUE_MAX), MARK(), b_str(&b, "user.4"),
             b_mem(&b, v, FS_XATTR_VALUE_MAX), b_dflags(&b, 0), b_var(&b, 0),
             b_var(&b, 0));
        CASE(0, NULL, b_head(&b, FS_DIR, 0, 0), b_var(&b, 4),
             b_str(&b, "user.1"), b_mem(&b, v, FS_XATTR_VALUE_MAX - 6),
             b_str(&b, "user.2"), b_mem(&b, v, FS_XATTR_VALUE_MAX - 6),
             b_str(&b, "user.3"), b_mem(&b, v, FS_XATTR_VALUE_MAX - 6),
             b_str(&b, "user.4"), b_mem(&b, v, FS_XATTR_VALUE_MAX - 6),
             b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    }

    /* Files. */
    CASE(KV_ECORRUPT, "file body flag: unknown value",
         b_head(&b, FS_FILE, 0, 0), b_var(&b, 0), MARK(), b_u8(&b, 2),
         b_var(&b, 0));
    CASE(KV_ECORRUPT, "inline data: length differs from the size",
         b_head(&b, FS_FILE, 0, 3), b_var(&b, 0), b_u8(&b, 0), MARK(),
         b_str(&b, "hi"));
    {
        static uint8_t v[FS_INLINE_MAX + 1];
        CASE(KV_ECORRUPT, "inline data: length over its limit",
             b_head(&b, FS_FILE, 0, sizeof v), b_var(&b, 0), b_u8(&b, 0),
             MARK(), b_mem(&b, v, sizeof v));
    }
    CASE(KV_ECORRUPT, "chunk: zero length", b_head(&b, FS_FILE, 0, 100),
         b_var(&b, 0), b_u8(&b, 1), b_var(&b, 1), MARK(), b_chunk(&b, 0, 0));
    CASE(KV_ECORRUPT, "chunk: longer than FS_CHUNK_SIZE",
         b_head(&b, FS_FILE, 0, 3 * FS_CHUNK_SIZE), b_var(&b, 0), b_u8(&b, 1),
         b_var(&b, 1), MARK(), b_chunk(&b, 0, FS_CHUNK_SIZE + 1));
    CASE(KV_ECORRUPT, "chunk: indexes not strictly ascending",
         b_head(&b, FS_FILE, 0, 3 * FS_CHUNK_SIZE), b_var(&b, 0), b_u8(&b, 1),
         b_var(&b, 2), b_chunk(&b, 1, 5), MARK(), b_chunk(&b, 1, 5));
    CASE(KV_ECORRUPT, "chunk: indexes not strictly ascending",
         b_head(&b, FS_FILE, 0, 3 * FS_CHUNK_SIZE), b_var(&b, 0), b_u8(&b, 1),
         b_var(&b, 2), b_chunk(&b, 2, 5), MARK(), b_chunk(&b, 1, 5));
    CASE(KV_ECORRUPT, "chunk: reaches past the file size",
         b_head(&b, FS_FILE, 0, FS_CHUNK_SIZE + 4), b_var(&b, 0), b_u8(&b, 1),
         b_var(&b, 1), MARK(), b_chunk(&b, 1, 5));
    CASE(0, NULL, b_head(&b, FS_FILE, 0, FS_CHUNK_SIZE + 5), b_var(&b, 0),
         b_u8(&b, 1), b_var(&b, 1), b_chunk(&b, 1, 5));
    CASE(KV_ECORRUPT, "chunk: index at or past FS_MAX_CHUNKS",
         b_head(&b, FS_FILE, 0, FS_MAX_FILE_SIZE), b_var(&b, 0), b_u8(&b, 1),
         b_var(&b, 1), MARK(), b_chunk(&b, FS_MAX_CHUNKS, 5));
    CASE(KV_ECORRUPT, "size: over FS_MAX_FILE_SIZE",
         b_raw(&b, "QFSI\x02\x01\x00\x00\x00", 9), MARK(),
         b_var(&b, FS_MAX_FILE_SIZE + 1), b_var(&b, 0), b_var(&b, 0),
         b_var(&b, 0), b_var(&b, 0), b_u8(&b, 1), b_var(&b, 0));
    CASE(KV_ECORRUPT, "chunk length: over 32 bits", b_head(&b, FS_FILE, 0, 100),
         b_var(&b, 0), b_u8(&b, 1), b_var(&b, 1), b_var(&b, 0), MARK(),
         b_var(&b, 1ull << 32), b_raw(&b, "0123456789abcdef", 16));

    /* Directories. */
    CASE(KV_ECORRUPT, "size: not 0 for a directory",
         b_raw(&b, "QFSI\x02\x02\x00\x00\x00", 9), MARK(), b_var(&b, 1),
         b_var(&b, 0), b_var(&b, 0), b_var(&b, 0), b_var(&b, 0),
         b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
    /* The flags byte: bit 0 is split, bit 1 removed, every other bit is
     * unknown. */
    CASE(0, NULL, b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 1),
         b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "directory flags: unknown bits", b_head(&b, FS_DIR, 0, 0),
         b_var(&b, 0), MARK(), b_dflags(&b, 4), b_var(&b, 0), b_var(&b, 0));
    CASE(0, NULL, b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 3),
         b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "directory flags: unknown bits", b_head(&b, FS_DIR, 0, 0),
         b_var(&b, 0), MARK(), b_dflags(&b, 0x80), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "directory flags: unknown bits", b_head(&b, FS_DIR, 0, 0),
         b_var(&b, 0), MARK(), b_dflags(&b, 0xff), b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "directory flags: truncated", b_head(&b, FS_DIR, 0, 0),
         b_var(&b, 0), MARK());
    /* Version 1: the same layout without the flags byte, never split. */
    CASE(0, NULL, b_head(&b, FS_DIR, 0, 0), b.ptr[4] = 1, b_var(&b, 0),
         b_var(&b, 1), b_u64(&b, 1), b_var(&b, 1), b_var(&b, 1),
         b_dirent(&b, "a", 1, 1, FS_FILE, 1, 1));
    CASE(0, NULL, b_head(&b, FS_FILE, 0644, 2), b.ptr[4] = 1, b_var(&b, 0),
         b_u8(&b, 0), b_str(&b, "hi"));
    /* (A flags byte in a version-1 directory is its clock count, and the
     * entry count becomes a byte too many.) */
    CASE(KV_ECORRUPT, "object: trailing bytes", b_head(&b, FS_DIR, 0, 0),
         b.ptr[4] = 1, b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0), MARK(),
         b_var(&b, 0));
    CASE(KV_ECORRUPT, "clock: zero counter", b_head(&b, FS_DIR, 0, 0),
         b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 1), MARK(), b_u64(&b, 1),
         b_var(&b, 0), b_var(&b, 0));
    CASE(KV_ECORRUPT, "clock: actors not strictly ascending",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 2),
         b_u64(&b, 2), b_var(&b, 1), MARK(), b_u64(&b, 1), b_var(&b, 1),
         b_var(&b, 0));
    CASE(KV_ECORRUPT, "clock: actors not strictly ascending",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 2),
         b_u64(&b, 2), b_var(&b, 1), MARK(), b_u64(&b, 2), b_var(&b, 3),
         b_var(&b, 0));
#define DIR1(...)                                                              \
    b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 2),     \
        b_u64(&b, 1), b_var(&b, 5), b_u64(&b, 2), b_var(&b, 5), b_var(&b, 1),  \
        MARK(), b_dirent(&b, __VA_ARGS__)
    CASE(0, NULL, DIR1("ok", 2, 1, FS_FILE, 1, 5));
    /* (One byte more, so the count is not the first thing found out.) */
    CASE(KV_ECORRUPT, "entry: empty name", DIR1("", 0, 1, FS_FILE, 1, 1),
         b_u8(&b, 0));
    CASE(KV_ECORRUPT, "entry: name contains '/'",
         DIR1("a/b", 3, 1, FS_FILE, 1, 1));
    CASE(KV_ECORRUPT, "entry: name contains '/'",
         DIR1("/", 1, 1, FS_FILE, 1, 1));
    CASE(KV_ECORRUPT, "entry: name contains a NUL byte",
         DIR1("a\0b", 3, 1, FS_FILE, 1, 1));
    CASE(KV_ECORRUPT, "entry: name is '.' or '..'",
         DIR1(".", 1, 1, FS_FILE, 1, 1));
    CASE(KV_ECORRUPT, "entry: name is '.' or '..'",
         DIR1("..", 2, 1, FS_FILE, 1, 1));
    CASE(0, NULL, DIR1("...", 3, 1, FS_FILE, 1, 1));
    CASE(0, NULL, DIR1(".x", 2, 1, FS_FILE, 1, 1));
    CASE(KV_ECORRUPT, "entry name: length over its limit",
         DIR1(big, FS_NAME_MAX + 1, 1, FS_FILE, 1, 1));
    CASE(0, NULL, DIR1(big, FS_NAME_MAX, 1, FS_FILE, 1, 1));
    CASE(KV_ECORRUPT, "entry: unknown target type", DIR1("a", 1, 1, 0, 1, 1));
    CASE(KV_ECORRUPT, "entry: unknown target type", DIR1("a", 1, 1, 4, 1, 1));
    CASE(KV_ECORRUPT, "entry: zero dot counter",
         DIR1("a", 1, 1, FS_FILE, 1, 0));
    CASE(KV_ECORRUPT, "entry: dot not covered by the clock",
         DIR1("a", 1, 1, FS_FILE, 1, 6));
    CASE(KV_ECORRUPT, "entry: dot not covered by the clock",
         DIR1("a", 1, 1, FS_FILE, 3, 1)); /* an actor the clock lacks */
#undef DIR1
#define DIR2(...)                                                              \
    b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 2),     \
        b_u64(&b, 1), b_var(&b, 5), b_u64(&b, 2), b_var(&b, 5), b_var(&b, 2),  \
        b_dirent(&b, "m", 1, 5, FS_FILE, 1, 3), MARK(),                        \
        b_dirent(&b, __VA_ARGS__)
    /* Order: name bytes, then id bytes, then actor, then counter. */
    CASE(KV_ECORRUPT, "entry: entries not strictly ascending",
         DIR2("l", 1, 9, FS_FILE, 2, 5));
    CASE(KV_ECORRUPT, "entry: entries not strictly ascending",
         DIR2("m", 1, 4, FS_FILE, 2, 5));
    CASE(KV_ECORRUPT, "entry: entries not strictly ascending",
         DIR2("m", 1, 5, FS_FILE, 1, 2));
    CASE(KV_ECORRUPT, "entry: entries not strictly ascending",
         DIR2("m", 1, 5, FS_FILE, 1, 3)); /* a duplicate */
    CASE(0, NULL, DIR2("m", 1, 5, FS_FILE, 1, 4));
    CASE(0, NULL, DIR2("m", 1, 5, FS_FILE, 2, 1));
    CASE(0, NULL, DIR2("m", 1, 6, FS_FILE, 1, 1));
    CASE(0, NULL, DIR2("ma", 2, 0, FS_FILE, 1, 1)); /* a prefix sorts first */
    /* Bytes compare unsigned: 0xc3 sorts after 'm'. */
    CASE(0, NULL, DIR2("\xc3\xa9", 2, 1, FS_FILE, 1, 1));
#undef DIR2

    /* Symlinks. */
    CASE(KV_ECORRUPT, "symlink target: empty target",
         b_head(&b, FS_SYMLINK, 0, 0), b_var(&b, 0), MARK(), b_str(&b, ""));
    CASE(KV_ECORRUPT, "symlink target: target contains a NUL byte",
         b_head(&b, FS_SYMLINK, 0, 3), b_var(&b, 0), MARK(),
         b_mem(&b, "a\0b", 3));
    CASE(KV_ECORRUPT, "symlink target: target length differs from the size",
         b_head(&b, FS_SYMLINK, 0, 4), b_var(&b, 0), MARK(), b_str(&b, "abc"));
    CASE(KV_ECORRUPT, "symlink target: length over its limit",
         b_head(&b, FS_SYMLINK, 0, FS_SYMLINK_MAX + 1), b_var(&b, 0), MARK(),
         b_mem(&b, big, FS_SYMLINK_MAX + 1));
    kv_buf_release(&b);
}

/* Counts far beyond the input fail at once, before anything is
 * allocated for them (every allocation fails here, and the result is
 * still KV_ECORRUPT), even when they are within the format's limits. */
Test(obj, huge_counts_fail_before_allocating, .init = capture_log) {
    kv_buf b = KV_BUF_INIT;
    size_t mark = 0;
    no_alloc = true;
    uint64_t counts[] = {UINT64_MAX, 1ull << 40, FS_MAX_ENTRIES, 1000};
    for (size_t i = 0; i < KV_ARRAY_LEN(counts); i++) {
        uint64_t n = counts[i];
        CASE(KV_ECORRUPT, "xattr count: count", b_head(&b, FS_DIR, 0, 0),
             MARK(), b_var(&b, n), b_dflags(&b, 0), b_var(&b, 0), b_var(&b, 0));
        CASE(KV_ECORRUPT, "clock count: count", b_head(&b, FS_DIR, 0, 0),
             b_var(&b, 0), b_dflags(&b, 0), MARK(), b_var(&b, n), b_var(&b, 0));
        CASE(KV_ECORRUPT, "entry count: count", b_head(&b, FS_DIR, 0, 0),
             b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0), MARK(), b_var(&b, n),
             b_dirent(&b, "a", 1, 1, FS_FILE, 1, 1));
        CASE(KV_ECORRUPT, "chunk count: count",
             b_head(&b, FS_FILE, 0, FS_MAX_FILE_SIZE), b_var(&b, 0),
             b_u8(&b, 1), MARK(), b_var(&b, n), b_chunk(&b, 0, 1));
    }
    /* Over the format's own limits, whatever the input. */
    CASE(KV_ECORRUPT, "entry count: count over its limit",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0),
         MARK(), b_var(&b, FS_MAX_ENTRIES + 1ull));
    CASE(KV_ECORRUPT, "chunk count: count over its limit",
         b_head(&b, FS_FILE, 0, 0), b_var(&b, 0), b_u8(&b, 1), MARK(),
         b_var(&b, FS_MAX_CHUNKS + 1ull));
    /* A length beyond the input (after the bounded entry array). */
    no_alloc = false;
    CASE(KV_ECORRUPT, "entry name: length exceeds the input",
         b_head(&b, FS_DIR, 0, 0), b_var(&b, 0), b_dflags(&b, 0), b_var(&b, 0),
         b_var(&b, 1), MARK(), b_var(&b, 200), b_u64(&b, 0), b_u64(&b, 0),
         b_u64(&b, 0), b_u64(&b, 0));
    kv_buf_release(&b);
}

Test(obj, frames_that_are_too_short_or_too_long_are_refused,
     .init = quiet_log) {
    fs_inode d;
    kv_buf e = KV_BUF_INIT;
    fs_inode ino;
    sample_dir(&ino);
    encode(&ino, &e);
    EXPECT_RC(fs_inode_decode(kv_slice_make(NULL, 0), &d), KV_ECORRUPT);
    /* Longer than an object may be: refused before it is read. */
    EXPECT_RC(fs_inode_decode(kv_slice_make(e.ptr, FS_MAX_OBJECT + 1u), &d),
              KV_ECORRUPT);
    /* Another format's bytes. */
    static const uint8_t dvv[20] = {'Q', 'D', 'V', 'S', 1};
    EXPECT_RC(fs_inode_decode(kv_slice_make(dvv, sizeof dvv), &d), KV_ECORRUPT);
    fs_inode_release(&d);
    fs_inode_release(&ino);
    kv_buf_release(&e);
}

/* Every byte of every sample flipped, every cut: never accepted, never a
 * crash (the sanitizer build runs this too). With the checksum resealed
 * the body checks are reached: a flip then either fails or decodes to an
 * inode whose encoding is exactly the flipped bytes (one encoding per
 * inode: nothing non-canonical is accepted). */
Test(obj, flipped_bytes_and_truncations_never_get_through, .init = quiet_log) {
    size_t accepted = 0, refused = 0;
    for (size_t s = 0; s < KV_ARRAY_LEN(samples); s++) {
        fs_inode ino, d;
        samples[s](&ino);
        kv_buf e = KV_BUF_INIT, m = KV_BUF_INIT, again = KV_BUF_INIT;
        encode(&ino, &e);
        for (size_t cut = 0; cut < e.len; cut++) {
            EXPECT_RC(fs_inode_decode(kv_slice_make(e.ptr, cut), &d),
                      KV_ECORRUPT);
            fs_inode_release(&d);
            if (cut < 8) continue;
            /* The cut body with a good checksum. */
            OK(kv_buf_set(&m, e.ptr, cut - 8));
            seal(&m);
            EXPECT_RC(fs_inode_decode(kv_buf_slice(&m), &d), KV_ECORRUPT);
            fs_inode_release(&d);
        }
        static const uint8_t masks[] = {0x01, 0x02, 0x10, 0x80, 0xff};
        for (size_t i = 0; i < e.len; i++) {
            for (size_t k = 0; k < KV_ARRAY_LEN(masks); k++) {
                OK(kv_buf_set(&m, e.ptr, e.len));
                m.ptr[i] ^= masks[k];
                EXPECT_RC(fs_inode_decode(kv_buf_slice(&m), &d), KV_ECORRUPT);
                fs_inode_release(&d);
                if (i >= e.len - 8) continue;
                reseal(&m);
                int rc = fs_inode_decode(kv_buf_slice(&m), &d);
                if (i == 4) {
                    EXPECT_RC(rc, KV_EVERSION);
                } else if (rc == 0) {
                    encode(&d, &again);
                    expect_buf_eq(&again, &m);
                    accepted++;
                } else {
                    EXPECT_RC(rc, KV_ECORRUPT);
                    refused++;
                }
                fs_inode_release(&d);
            }
        }
        kv_buf_release(&e);
        kv_buf_release(&m);
        kv_buf_release(&again);
        fs_inode_release(&ino);
    }
    /* Both outcomes happen, so both branches were checked. */
    cr_assert_gt(accepted, 50);
    cr_assert_gt(refused, 200);
}

/* ---- the encoder refuses what the decoder refuses ---- */

/* Change a copy of *base with the statements; encoding it must fail with
 * want and leave the output as it was. */
#define BAD(base, want, ...)                                                   \
    do {                                                                       \
        fs_inode x_ = copy_of(base);                                           \
        fs_inode *x = &x_;                                                     \
        __VA_ARGS__;                                                           \
        kv_buf o_ = KV_BUF_INIT;                                               \
        OK(kv_buf_set(&o_, "keep", 4));                                        \
        int rc_ = fs_inode_encode(x, &o_);                                     \
        cr_assert_eq(rc_, (want), "line %d: %d (%s)", __LINE__, rc_,           \
                     kv_strerror(rc_));                                        \
        cr_assert(o_.len == 4 && memcmp(o_.ptr, "keep", 4) == 0);              \
        kv_buf_release(&o_);                                                   \
        fs_inode_release(x);                                                   \
    } while (0)

static void set_name(char **slot, const char *name) {
    kv_free(*slot);
    *slot = kv_strdup(name);
}

Test(obj, the_encoder_refuses_what_the_decoder_would) {
    fs_inode file, chunked, dir, sym;
    sample_file(&file);
    sample_chunked(&chunked);
    sample_dir(&dir);
    sample_symlink(&sym);
    static uint8_t big[FS_XATTR_VALUE_MAX + 1];
    char name[FS_NAME_MAX + 2];
    memset(name, 'n', sizeof name);
    name[FS_NAME_MAX + 1] = '\0';

    /* Type and mode. */
    BAD(&file, -EINVAL, x->type = 0);
    BAD(&file, -EINVAL, x->type = 4);
    BAD(&file, -EINVAL, x->mode = S_IFDIR | 0644);
    BAD(&dir, -EINVAL, x->mode = S_IFLNK | 0644);
    BAD(&file, -EINVAL, x->mode |= 01000000);
    /* Xattrs. */
    BAD(&file, -EINVAL, set_name(&x->xattrs[0].name, ""));
    BAD(&file, -EINVAL, set_name(&x->xattrs[0].name, name));
    BAD(&file, -EINVAL, set_name(&x->xattrs[0].name, "user.a")); /* dup */
    BAD(&file, -EINVAL, kv_buf_set(&x->xattrs[0].value, big, sizeof big));
    BAD(
        &file, -EINVAL, for (int i = 0; i < 4; i++) {
            char n[32];
            snprintf(n, sizeof n, "user.big%d", i);
            add_xattr(x, n, big, FS_XATTR_VALUE_MAX);
        });
    /* Files. */
    BAD(&file, -EINVAL, x->size = 11);
    BAD(&file, -EINVAL, kv_buf_set(&x->data, big, FS_INLINE_MAX + 1);
        x->size = FS_INLINE_MAX + 1);
    BAD(&file, -EINVAL, x->chunked = true); /* data with chunked */
    BAD(&chunked, -EINVAL, x->chunked = false);
    BAD(&chunked, -EINVAL, kv_buf_set(&x->data, "a", 1));
    BAD(&chunked, -EINVAL, x->chunks[1].len = 0);
    BAD(&chunked, -EINVAL, x->chunks[1].len = FS_CHUNK_SIZE + 1);
    BAD(&chunked, -EINVAL, x->chunks[1].index = 0);
    BAD(&chunked, -EINVAL, x->chunks[2].index = 3);
    BAD(&chunked, -EINVAL, x->size -= 1); /* the last chunk past size */
    BAD(&chunked, -EINVAL, x->size = FS_MAX_FILE_SIZE + 1);
    BAD(&chunked, -EINVAL, x->chunks[2].index = FS_MAX_CHUNKS;
        x->size = FS_MAX_FILE_SIZE);
    /* What belongs to another type. */
    BAD(&file, -EINVAL, x->entries = kv_calloc(1, sizeof *x->entries);
        x->entries[0] = (fs_dirent){kv_strdup("e"), idn(1), FS_FILE, {1, 1}};
        x->nentries = x->entries_cap = 1);
    BAD(&file, -EINVAL, x->clock = kv_malloc(sizeof(fs_dot));
        x->clock[0] = (fs_dot){1, 1}; x->nclock = 1);
    /* Directories. */
    BAD(&dir, -EINVAL, x->size = 1);
    BAD(&dir, -EINVAL, kv_buf_set(&x->data, "a", 1));
    BAD(&dir, -EINVAL, x->chunked = true);
    BAD(&dir, -EINVAL, x->clock[0].counter = 0);
    BAD(&dir, -EINVAL, x->clock[1].actor = x->clock[0].actor);
    BAD(&dir, -EINVAL, x->clock[1].counter = 1); /* sub's B:2 uncovered */
    BAD(&dir, -EINVAL, set_name(&x->entries[1].name, "x/y"));
    BAD(&dir, -EINVAL, set_name(&x->entries[1].name, "."));
    BAD(&dir, -EINVAL, set_name(&x->entries[2].name, ".."));
    BAD(&dir, -EINVAL, set_name(&x->entries[0].name, ""));
    BAD(&dir, -EINVAL, set_name(&x->entries[2].name, name)); /* too long */
    name[FS_NAME_MAX] = '\0';
    BAD(&dir, -EINVAL, set_name(&x->entries[0].name, name)); /* order */
    BAD(&dir, -EINVAL, set_name(&x->entries[1].name, "0"));  /* order */
    BAD(&dir, -EINVAL, x->entries[0].type = 0);
    BAD(&dir, -EINVAL, x->entries[0].type = 4);
    BAD(&dir, -EINVAL, x->entries[0].dot.counter = 0);
    BAD(&dir, -EINVAL, x->entries[0].dot.actor = C);
    BAD(&dir, -EINVAL, x->entries[0].dot.counter = 3);
    /* Symlinks. */
    BAD(&sym, -EINVAL, kv_buf_reset(&x->data); x->size = 0);
    BAD(&sym, -EINVAL, x->size = 8);
    BAD(&sym, -EINVAL, x->data.ptr[2] = '\0');
    BAD(&sym, -EINVAL, kv_buf_set(&x->data, big, FS_SYMLINK_MAX + 1);
        x->size = FS_SYMLINK_MAX + 1);
    BAD(&sym, -EINVAL, x->chunked = true);

    /* And each original still encodes: the changes made them bad. */
    kv_buf e = KV_BUF_INIT;
    fs_inode *all[] = {&file, &chunked, &dir, &sym};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) {
        encode(all[i], &e);
        fs_inode_release(all[i]);
    }
    kv_buf_release(&e);
}

/* The limit is the replica layer's value limit: only a directory of
 * many long names reaches it. Entries share one name string here (the
 * test frees them itself) to keep the memory down. */
static void big_dir(fs_inode *d, char *name, size_t n) {
    *d = new_dir();
    d->entries = kv_calloc(n, sizeof *d->entries);
    cr_assert_not_null(d->entries);
    d->nentries = d->entries_cap = n;
    for (size_t i = 0; i < n; i++) {
        d->entries[i].name = name;
        d->entries[i].id = idn(i);
        d->entries[i].type = FS_FILE;
        d->entries[i].dot = (fs_dot){A, i + 1};
    }
    d->clock = kv_malloc(sizeof *d->clock);
    d->clock[0] = (fs_dot){A, n};
    d->nclock = 1;
}

static void big_dir_free(fs_inode *d) {
    kv_free(d->entries);
    d->entries = NULL;
    d->nentries = 0;
    fs_inode_release(d);
}

Test(obj, objects_larger_than_a_replica_value_are_refused) {
    char name[FS_NAME_MAX + 1];
    memset(name, 'q', FS_NAME_MAX);
    name[FS_NAME_MAX] = '\0';
    /* 285 bytes an entry: 230,000 fit in 64 MiB, 240,000 do not. */
    fs_inode d;
    big_dir(&d, name, 240000);
    kv_buf e = KV_BUF_INIT;
    OK(kv_buf_set(&e, "keep", 4));
    EXPECT_RC(fs_inode_encode(&d, &e), KV_ETOOLARGE);
    cr_assert(e.len == 4 && memcmp(e.ptr, "keep", 4) == 0);
    big_dir_free(&d);
    big_dir(&d, name, 230000);
    kv_buf_reset(&e);
    OK(fs_inode_encode(&d, &e));
    cr_assert_leq(e.len, FS_MAX_OBJECT);
    cr_assert_gt(e.len, FS_MAX_OBJECT - 4u * 1024 * 1024);
    big_dir_free(&d);
    OK(fs_inode_decode(kv_buf_slice(&e), &d));
    cr_assert_eq(d.nentries, 230000);
    cr_assert_str_eq(d.entries[229999].name, name);
    fs_inode_release(&d);
    kv_buf_release(&e);
}

/* ---- directories: the operations ---- */

Test(obj, add_replaces_the_entries_of_its_name_and_advances_the_clock) {
    fs_inode d = new_dir();
    add(&d, "x", 1, A);
    add(&d, "y", 2, A);
    cr_assert_eq(clock_of(&d, A), 2);
    fs_id i3 = idn(3);
    OK(fs_dir_add(&d, "x", &i3, FS_SYMLINK, B));
    cr_assert_eq(count_of(&d, "x"), 1);
    const fs_dirent *e = entry_of(&d, "x", &i3);
    cr_assert_not_null(e);
    cr_assert_eq(e->type, FS_SYMLINK);
    cr_assert_eq(e->dot.actor, B);
    cr_assert_eq(e->dot.counter, 1);
    cr_assert_eq(clock_of(&d, A), 2);
    cr_assert_eq(clock_of(&d, B), 1);
    cr_assert_eq(d.nclock, 2);
    /* Actors are inserted in order. */
    add(&d, "z", 4, 1);
    cr_assert_eq(d.clock[0].actor, 1);
    cr_assert_eq(d.clock[1].actor, A);
    cr_assert_eq(d.clock[2].actor, B);
    roundtrip(&d, NULL);
    fs_inode_release(&d);
}

Test(obj, remove_drops_matching_entries_and_keeps_the_clock) {
    fs_inode d = new_dir(), o = new_dir();
    add(&d, "x", 1, A);
    add(&o, "x", 2, B); /* concurrently: two entries of x after merge */
    merge(&d, &o);
    add(&d, "xy", 3, A);
    add(&d, "w", 4, A);
    cr_assert_eq(count_of(&d, "x"), 2);
    fs_id i2 = idn(2), i9 = idn(9);
    cr_assert_eq(fs_dir_remove(&d, "x", &i9), 0);
    cr_assert_eq(fs_dir_remove(&d, "nope", NULL), 0);
    cr_assert_eq(fs_dir_remove(&d, "x", &i2), 1);
    cr_assert_eq(count_of(&d, "x"), 1);
    cr_assert_eq(fs_dir_remove(&d, "x", NULL), 1);
    cr_assert_eq(count_of(&d, "x"), 0);
    cr_assert_eq(count_of(&d, "xy"), 1); /* a longer name is another name */
    cr_assert_eq(count_of(&d, "w"), 1);
    cr_assert_eq(clock_of(&d, A), 3);
    cr_assert_eq(clock_of(&d, B), 1);
    roundtrip(&d, NULL);
    fs_inode_release(&d);
    fs_inode_release(&o);
}

Test(obj, find_walks_every_entry_of_a_name_and_only_those) {
    fs_inode d = new_dir();
    const char *names[] = {"a", "a.b", "ab", "b", "a-"};
    for (size_t i = 0; i < KV_ARRAY_LEN(names); i++)
        add(&d, names[i], i + 1, A);
    /* Three more entries of "ab", made concurrently elsewhere. */
    for (uint64_t actor = 1; actor <= 3; actor++) {
        fs_inode o = new_dir();
        add(&o, "ab", 10 + actor, actor);
        merge(&d, &o);
        fs_inode_release(&o);
    }
    size_t pos = 0, seen = 0;
    ssize_t i, last = -1;
    while ((i = fs_dir_find(&d, "ab", &pos)) >= 0) {
        cr_assert_str_eq(d.entries[i].name, "ab");
        cr_assert_gt(i, last);
        cr_assert_eq(pos, (size_t)i + 1);
        last = i;
        seen++;
    }
    cr_assert_eq(seen, 4);
    cr_assert_eq(count_of(&d, "a"), 1);
    cr_assert_eq(count_of(&d, "a."), 0);
    cr_assert_eq(count_of(&d, ""), 0);
    cr_assert_eq(count_of(&d, "zzz"), 0);
    /* A start past the name finds nothing. */
    pos = d.nentries;
    cr_assert_eq(fs_dir_find(&d, "a", &pos), -1);
    fs_inode_release(&d);
}

Test(obj, bad_directory_calls_change_nothing) {
    fs_inode d;
    sample_dir(&d);
    kv_buf before = KV_BUF_INIT, after = KV_BUF_INIT;
    encode(&d, &before);
    fs_id id = idn(1);
    char longname[FS_NAME_MAX + 2];
    memset(longname, 'l', sizeof longname);
    longname[FS_NAME_MAX + 1] = '\0';
    const char *bad[] = {"", "/", "a/b", "a/", ".", "..", longname};
    for (size_t i = 0; i < KV_ARRAY_LEN(bad); i++)
        EXPECT_RC(fs_dir_add(&d, bad[i], &id, FS_FILE, A), -EINVAL);
    EXPECT_RC(fs_dir_add(&d, NULL, &id, FS_FILE, A), -EINVAL);
    EXPECT_RC(fs_dir_add(&d, "ok", NULL, FS_FILE, A), -EINVAL);
    EXPECT_RC(fs_dir_add(&d, "ok", &id, 0, A), -EINVAL);
    EXPECT_RC(fs_dir_add(&d, "ok", &id, 4, A), -EINVAL);
    fs_inode f;
    sample_file(&f);
    EXPECT_RC(fs_dir_add(&f, "ok", &id, FS_FILE, A), -EINVAL);
    EXPECT_RC(fs_dir_merge(&d, &f), -EINVAL);
    EXPECT_RC(fs_dir_merge(&f, &d), -EINVAL);
    cr_assert_eq(fs_dir_remove(&f, "a", NULL), 0);
    size_t pos = 0;
    cr_assert_eq(fs_dir_find(&f, "a", &pos), -1);
    /* A counter at its end (only crafted bytes get there). */
    fs_inode full = new_dir();
    full.clock = kv_malloc(sizeof *full.clock);
    full.clock[0] = (fs_dot){A, UINT64_MAX};
    full.nclock = 1;
    EXPECT_RC(fs_dir_add(&full, "x", &id, FS_FILE, A), -EOVERFLOW);
    cr_assert_eq(full.nentries, 0);
    OK(fs_dir_add(&full, "x", &id, FS_FILE, B));
    fs_inode_release(&full);
    encode(&d, &after);
    expect_buf_eq(&before, &after);
    /* A name of exactly FS_NAME_MAX bytes is fine. */
    longname[FS_NAME_MAX] = '\0';
    OK(fs_dir_add(&d, longname, &id, FS_FILE, A));
    fs_inode_release(&f);
    fs_inode_release(&d);
    kv_buf_release(&before);
    kv_buf_release(&after);
}

Test(obj, a_full_directory_refuses_another_name) {
    /* FS_MAX_ENTRIES entries of one name (shared string): a new name is
     * refused, a re-add of that name replaces them all. */
    static char one[] = "n";
    fs_inode d = new_dir();
    d.entries = kv_calloc(FS_MAX_ENTRIES, sizeof *d.entries);
    cr_assert_not_null(d.entries);
    d.nentries = d.entries_cap = FS_MAX_ENTRIES;
    for (size_t i = 0; i < FS_MAX_ENTRIES; i++) {
        d.entries[i].name = one;
        d.entries[i].id = idn(i);
        d.entries[i].type = FS_FILE;
        d.entries[i].dot = (fs_dot){A, i + 1};
    }
    fs_id id = idn(1);
    EXPECT_RC(fs_dir_add(&d, "o", &id, FS_FILE, A), -ENOSPC);
    EXPECT_RC(fs_dir_add(&d, "a", &id, FS_FILE, A), -ENOSPC);
    cr_assert_eq(d.nentries, FS_MAX_ENTRIES);
    kv_free(d.entries);
    d.entries = NULL;
    d.nentries = 0;
    fs_inode_release(&d);
}

/* ---- directories: concurrent changes ---- */

/* Two replicas of a directory: each starts from base and changes it as
 * its own actor; then they exchange siblings and merge, in both orders. */
typedef struct pair {
    fs_inode r1, r2; /* replicas, actors A and B */
    fs_inode m12, m21;
} pair;

static void pair_start(pair *p, const fs_inode *base) {
    p->r1 = copy_of(base);
    p->r2 = copy_of(base);
}

static void pair_merge(pair *p) {
    p->m12 = copy_of(&p->r1);
    merge(&p->m12, &p->r2);
    p->m21 = copy_of(&p->r2);
    merge(&p->m21, &p->r1);
    expect_same(&p->m12, &p->m21);
}

static void pair_free(pair *p) {
    fs_inode_release(&p->r1);
    fs_inode_release(&p->r2);
    fs_inode_release(&p->m12);
    fs_inode_release(&p->m21);
}

Test(obj, concurrent_creates_of_different_names_both_survive) {
    fs_inode base = new_dir();
    pair p;
    pair_start(&p, &base);
    add(&p.r1, "left", 1, A);
    add(&p.r2, "right", 2, B);
    pair_merge(&p);
    fs_id i1 = idn(1), i2 = idn(2);
    cr_assert_not_null(entry_of(&p.m12, "left", &i1));
    cr_assert_not_null(entry_of(&p.m12, "right", &i2));
    cr_assert_eq(p.m12.nentries, 2);
    cr_assert_eq(clock_of(&p.m12, A), 1);
    cr_assert_eq(clock_of(&p.m12, B), 1);
    pair_free(&p);
    fs_inode_release(&base);
}

Test(obj, concurrent_creates_of_one_name_keep_both_entries) {
    fs_inode base = new_dir();
    pair p;
    pair_start(&p, &base);
    add(&p.r1, "same", 1, A);
    add(&p.r2, "same", 2, B);
    pair_merge(&p);
    cr_assert_eq(count_of(&p.m12, "same"), 2);
    fs_id i1 = idn(1), i2 = idn(2);
    cr_assert_eq(entry_of(&p.m12, "same", &i1)->dot.actor, A);
    cr_assert_eq(entry_of(&p.m12, "same", &i2)->dot.actor, B);
    /* A later add of that name, having seen both, replaces both. */
    add(&p.m12, "same", 3, C);
    cr_assert_eq(count_of(&p.m12, "same"), 1);
    /* ... and wins over a replica still holding both. */
    merge(&p.m21, &p.m12);
    cr_assert_eq(count_of(&p.m21, "same"), 1);
    fs_id i3 = idn(3);
    cr_assert_not_null(entry_of(&p.m21, "same", &i3));
    pair_free(&p);
    fs_inode_release(&base);
}

Test(obj, a_remove_stays_removed_and_a_concurrent_add_survives) {
    fs_inode base = new_dir();
    add(&base, "old", 1, C);
    pair p;
    pair_start(&p, &base);
    cr_assert_eq(fs_dir_remove(&p.r1, "old", NULL), 1);
    add(&p.r2, "new", 2, B);
    pair_merge(&p);
    cr_assert_eq(count_of(&p.m12, "old"), 0);
    fs_id i2 = idn(2);
    cr_assert_not_null(entry_of(&p.m12, "new", &i2));
    cr_assert_eq(p.m12.nentries, 1);
    /* The stale base merged in again changes nothing. */
    merge(&p.m12, &base);
    cr_assert_eq(count_of(&p.m12, "old"), 0);
    expect_same(&p.m12, &p.m21);
    pair_free(&p);
    fs_inode_release(&base);
}

Test(obj, a_readd_concurrent_with_a_remove_wins) {
    for (int same_id = 0; same_id < 2; same_id++) {
        fs_inode base = new_dir();
        add(&base, "x", 1, C);
        pair p;
        pair_start(&p, &base);
        cr_assert_eq(fs_dir_remove(&p.r1, "x", NULL), 1);
        uint64_t id = same_id ? 1 : 2;
        add(&p.r2, "x", id, B); /* replaces C's entry, as B saw it */
        pair_merge(&p);
        fs_id want = idn(id);
        cr_assert_eq(count_of(&p.m12, "x"), 1);
        const fs_dirent *e = entry_of(&p.m12, "x", &want);
        cr_assert_not_null(e);
        cr_assert_eq(e->dot.actor, B);
        pair_free(&p);
        fs_inode_release(&base);
    }
}

Test(obj, an_add_that_saw_an_entry_replaces_it_everywhere) {
    fs_inode base = new_dir();
    add(&base, "f", 1, A);
    pair p;
    pair_start(&p, &base);
    add(&p.r2, "f", 2, B); /* a rename over f, having seen it */
    pair_merge(&p);
    fs_id i2 = idn(2);
    cr_assert_eq(count_of(&p.m12, "f"), 1);
    cr_assert_not_null(entry_of(&p.m12, "f", &i2));
    pair_free(&p);
    fs_inode_release(&base);
}

/* The same link made twice concurrently (same name and id, two dots):
 * two entries, kept apart by their dots, both through the encoding. */
Test(obj, one_link_added_concurrently_keeps_both_dots) {
    fs_inode base = new_dir();
    add(&base, "l", 1, C);
    pair p;
    pair_start(&p, &base);
    add(&p.r1, "l", 1, A);
    add(&p.r2, "l", 1, B);
    pair_merge(&p);
    cr_assert_eq(count_of(&p.m12, "l"), 2);
    cr_assert_eq(p.m12.entries[0].dot.actor, A);
    cr_assert_eq(p.m12.entries[1].dot.actor, B);
    roundtrip(&p.m12, NULL);
    /* Removing the link by id removes both. */
    fs_id i1 = idn(1);
    cr_assert_eq(fs_dir_remove(&p.m12, "l", &i1), 2);
    pair_free(&p);
    fs_inode_release(&base);
}

Test(obj, attributes_come_from_the_later_ctime_and_ties_are_deterministic) {
    fs_inode a = new_dir(), b = new_dir();
    a.mode |= 0700;
    a.ctime_ns = 10;
    b.mode |= 0755;
    b.ctime_ns = 20;
    b.uid = 7;
    add_xattr(&b, "user.b", "1", 1);
    add_xattr(&a, "user.a", "1", 1);
    add(&a, "x", 1, A);
    fs_inode ab = copy_of(&a), ba = copy_of(&b);
    merge(&ab, &b);
    merge(&ba, &a);
    expect_same(&ab, &ba);
    cr_assert_eq(ab.mode, S_IFDIR | 0755);
    cr_assert_eq(ab.uid, 7);
    cr_assert_eq(ab.nxattrs, 1);
    cr_assert_str_eq(ab.xattrs[0].name, "user.b");
    cr_assert_eq(ab.nentries, 1); /* entries merge whatever the attributes */
    fs_inode_release(&ab);
    fs_inode_release(&ba);
    /* Equal ctimes: every other attribute breaks the tie, the same way in
     * both orders. */
    struct {
        int field;
        int64_t lo, hi;
    } ties[] = {{0, 1, 2}, {1, 1, 2}, {2, 0600, 0644},
                {3, 1, 2}, {4, 1, 2}, {5, 0, 1}};
    for (size_t t = 0; t < KV_ARRAY_LEN(ties); t++) {
        fs_inode lo = new_dir(), hi = new_dir();
        lo.ctime_ns = hi.ctime_ns = 50;
        int64_t *f[2][2] = {{&lo.mtime_ns, &hi.mtime_ns},
                            {&lo.atime_ns, &hi.atime_ns}};
        if (ties[t].field < 2) {
            *f[ties[t].field][0] = ties[t].lo;
            *f[ties[t].field][1] = ties[t].hi;
        } else if (ties[t].field == 2) {
            lo.mode = (uint32_t)ties[t].lo;
            hi.mode = S_IFDIR | (uint32_t)ties[t].hi;
        } else if (ties[t].field == 3) {
            lo.uid = (uint32_t)ties[t].lo;
            hi.uid = (uint32_t)ties[t].hi;
        } else if (ties[t].field == 4) {
            lo.gid = (uint32_t)ties[t].lo;
            hi.gid = (uint32_t)ties[t].hi;
        } else {
            add_xattr(&lo, "user.x", "a", 1);
            add_xattr(&hi, "user.x", "b", 1);
        }
        fs_inode x = copy_of(&lo), y = copy_of(&hi);
        merge(&x, &hi);
        merge(&y, &lo);
        expect_same(&x, &y);
        expect_same(&x, &hi);
        fs_inode_release(&x);
        fs_inode_release(&y);
        fs_inode_release(&lo);
        fs_inode_release(&hi);
    }
    fs_inode_release(&a);
    fs_inode_release(&b);
}

/* The worked example of docs/fs-format.md, step by step. */
Test(obj, the_worked_example_of_the_format_doc) {
    fs_inode d = new_dir();
    add(&d, "notes", 1, A); /* step 1: {A:1}, notes@A:1 */
    fs_inode r1 = copy_of(&d), r2 = copy_of(&d);
    /* Step 2, on replica 1 (actor A). */
    cr_assert_eq(fs_dir_remove(&r1, "notes", NULL), 1);
    add(&r1, "x", 2, A);
    cr_assert_eq(clock_of(&r1, A), 2);
    /* Step 3, on replica 2 (actor B), concurrently. */
    add(&r2, "draft", 3, B);
    add(&r2, "x", 4, B);
    cr_assert_eq(clock_of(&r2, A), 1);
    cr_assert_eq(clock_of(&r2, B), 2);
    /* Step 4: the merge. */
    fs_inode m = merged(&r1, &r2);
    fs_id i2 = idn(2), i3 = idn(3), i4 = idn(4), i5 = idn(5);
    cr_assert_eq(count_of(&m, "notes"), 0);
    cr_assert_eq(count_of(&m, "x"), 2);
    cr_assert_eq(entry_of(&m, "x", &i2)->dot.counter, 2);
    cr_assert_eq(entry_of(&m, "x", &i4)->dot.actor, B);
    cr_assert_not_null(entry_of(&m, "draft", &i3));
    cr_assert_eq(m.nentries, 3);
    cr_assert_eq(clock_of(&m, A), 2);
    cr_assert_eq(clock_of(&m, B), 2);
    /* Step 5: from m, A removes draft while B re-adds it. */
    fs_inode s1 = copy_of(&m), s2 = copy_of(&m);
    cr_assert_eq(fs_dir_remove(&s1, "draft", NULL), 1);
    add(&s2, "draft", 5, B);
    cr_assert_eq(entry_of(&s2, "draft", &i5)->dot.counter, 3);
    fs_inode n = merged(&s1, &s2);
    cr_assert_eq(count_of(&n, "draft"), 1);
    cr_assert_not_null(entry_of(&n, "draft", &i5));
    fs_inode all[] = {d, r1, r2, m, s1, s2, n};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) fs_inode_release(&all[i]);
}

/* ---- directories: the merge laws on random histories ---- */

#define POOL 150

/* States of one directory from one random history: three replicas
 * (actors A, B, C) add names (from a small set, so names collide; ids
 * from a small set, so links repeat), remove names or single links,
 * change attributes (ctimes collide), and merge each other's state. A
 * copy of the changed replica goes into the pool after each step. */
static void make_pool(uint64_t seed, fs_inode *pool) {
    static const char *names[] = {"a", "b", "c", "d", "e"};
    const uint64_t actors[3] = {A, B, C};
    fs_inode rep[3];
    for (int i = 0; i < 3; i++) rep[i] = new_dir();
    for (int t = 0; t < POOL; t++) {
        uint64_t r = mix64(seed * 1000003 + (uint64_t)t);
        int k = (int)(r % 3), j = (int)((r >> 4) % 3);
        int op = (int)((r >> 8) % 10);
        const char *name = names[(r >> 16) % KV_ARRAY_LEN(names)];
        fs_id id = idn(1 + (r >> 24) % 4);
        fs_inode *d = &rep[k];
        if (op < 4) {
            OK(fs_dir_add(d, name, &id, (uint8_t)(1 + (r >> 32) % 3),
                          actors[k]));
        } else if (op < 6) {
            fs_dir_remove(d, name, (r >> 40) % 2 ? &id : NULL);
        } else if (op < 7) {
            d->ctime_ns = (int64_t)((r >> 32) % 4);
            d->mode = S_IFDIR | (uint32_t)((r >> 40) % 8) * 0111;
            d->uid = (uint32_t)((r >> 48) % 3);
        } else {
            merge(d, &rep[j]);
        }
        pool[t] = copy_of(d);
    }
    for (int i = 0; i < 3; i++) fs_inode_release(&rep[i]);
}

static void free_pool(fs_inode *pool) {
    for (int i = 0; i < POOL; i++) fs_inode_release(&pool[i]);
}

static bool holds(const fs_inode *d, const fs_dirent *e) {
    size_t pos = 0;
    ssize_t i;
    while ((i = fs_dir_find(d, e->name, &pos)) >= 0) {
        const fs_dirent *x = &d->entries[i];
        if (memcmp(x->id.b, e->id.b, FS_ID_LEN) == 0 &&
            x->dot.actor == e->dot.actor && x->dot.counter == e->dot.counter)
            return true;
    }
    return false;
}

Test(obj, merge_is_idempotent_commutative_and_associative) {
    for (uint64_t seed = 1; seed <= 3; seed++) {
        fs_inode *pool = kv_calloc(POOL, sizeof *pool);
        make_pool(seed, pool);
        size_t dropped = 0, kept_one_side = 0;
        for (int n = 0; n < 400; n++) {
            uint64_t r = mix64(seed * 7919 + (uint64_t)n);
            const fs_inode *a = &pool[r % POOL], *b = &pool[(r >> 16) % POOL],
                           *c = &pool[(r >> 32) % POOL];
            fs_inode aa = merged(a, a);
            expect_same(&aa, a);
            fs_inode ab = merged(a, b), ba = merged(b, a);
            expect_same(&ab, &ba);
            fs_inode abb = merged(&ab, b);
            expect_same(&abb, &ab);
            fs_inode bc = merged(b, c);
            fs_inode ab_c = merged(&ab, c), a_bc = merged(a, &bc);
            expect_same(&ab_c, &a_bc);
            roundtrip(&ab_c, NULL);
            /* The survival rule, entry by entry, and the clock. */
            const fs_inode *side[2] = {a, b};
            for (int s = 0; s < 2; s++) {
                const fs_inode *me = side[s], *other = side[1 - s];
                for (size_t i = 0; i < me->nentries; i++) {
                    const fs_dirent *e = &me->entries[i];
                    bool both = holds(other, e);
                    bool unseen =
                        clock_of(other, e->dot.actor) < e->dot.counter;
                    cr_assert_eq(holds(&ab, e), both || unseen);
                    dropped += !both && !unseen;
                    kept_one_side += !both && unseen;
                }
            }
            for (size_t i = 0; i < ab.nentries; i++)
                cr_assert(holds(a, &ab.entries[i]) || holds(b, &ab.entries[i]));
            const uint64_t actors[3] = {A, B, C};
            for (int i = 0; i < 3; i++)
                cr_assert_eq(
                    clock_of(&ab, actors[i]),
                    KV_MAX(clock_of(a, actors[i]), clock_of(b, actors[i])));
            fs_inode all[] = {aa, ab, ba, abb, bc, ab_c, a_bc};
            for (size_t i = 0; i < KV_ARRAY_LEN(all); i++)
                fs_inode_release(&all[i]);
        }
        /* The pool is varied enough for the rule to mean something. */
        cr_assert_gt(dropped, 100);
        cr_assert_gt(kept_one_side, 100);
        free_pool(pool);
        kv_free(pool);
    }
}

/* Three replicas change independently, then exchange everything in
 * every order: they all end with the same directory. */
Test(obj, replicas_converge_whatever_order_they_merge_in) {
    const uint64_t actors[3] = {A, B, C};
    static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                     {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (uint64_t seed = 1; seed <= 20; seed++) {
        fs_inode rep[3];
        for (int i = 0; i < 3; i++) rep[i] = new_dir();
        for (int t = 0; t < 60; t++) {
            uint64_t r = mix64(seed << 20 | (uint64_t)t);
            int k = (int)(r % 3);
            char name[2] = {(char)('a' + (r >> 8) % 6), 0};
            if ((r >> 16) % 3)
                add(&rep[k], name, 1 + (r >> 24) % 3, actors[k]);
            else
                fs_dir_remove(&rep[k], name, NULL);
            if ((r >> 32) % 5 == 0) merge(&rep[k], &rep[(r >> 40) % 3]);
        }
        fs_inode result[6];
        for (int o = 0; o < 6; o++) {
            result[o] = copy_of(&rep[orders[o][0]]);
            merge(&result[o], &rep[orders[o][1]]);
            merge(&result[o], &rep[orders[o][2]]);
            if (o) expect_same(&result[o], &result[0]);
        }
        /* Merging pairwise first, then the pairs, ends the same. */
        fs_inode x = merged(&rep[0], &rep[1]), y = merged(&rep[1], &rep[2]);
        merge(&x, &y);
        expect_same(&x, &result[0]);
        fs_inode_release(&x);
        fs_inode_release(&y);
        for (int o = 0; o < 6; o++) fs_inode_release(&result[o]);
        for (int i = 0; i < 3; i++) fs_inode_release(&rep[i]);
    }
}

/* ---- split directories, and version 1 ---- */

/* The directory of the pinned example: mode 0755, "x" -> id 00..07 (a
 * file) added by actor 5 as its first add. */
static void example_dir(fs_inode *d) {
    *d = new_dir();
    d->mode |= 0755;
    fs_id x;
    memset(&x, 0, sizeof x);
    x.b[15] = 7;
    OK(fs_dir_add(d, "x", &x, FS_FILE, 5));
}

/* The same by hand, sealed: version 1 has no flags byte. */
static void b_example_dir(kv_buf *b, uint8_t version, uint8_t flags) {
    kv_buf_reset(b);
    b_head(b, FS_DIR, 0755, 0);
    b->ptr[4] = version;
    b_var(b, 0); /* no xattrs */
    if (version >= 2) b_dflags(b, flags);
    b_var(b, 1);
    b_u64(b, 5);
    b_var(b, 1); /* clock {5:1} */
    b_var(b, 1);
    b_dirent(b, "x", 1, 7, FS_FILE, 5, 1);
    seal(b);
}

/* Objects written before directories could split stay readable: a
 * version-1 directory has no flags byte, decodes unsplit, and is written
 * back as version 2 with the flags byte 0. */
Test(obj, a_version_1_directory_decodes_unsplit_and_reencodes_as_version_2) {
    kv_buf v1 = KV_BUF_INIT, v2 = KV_BUF_INIT, e = KV_BUF_INIT;
    b_example_dir(&v1, 1, 0);
    b_example_dir(&v2, 2, 0);
    cr_assert_eq(v1.len + 1, v2.len);
    /* The bytes version 1 wrote for the example (docs/fs-format.md). */
    static const uint8_t v1_sum[] = {0xd5, 0x38, 0x57, 0xa2,
                                     0xc6, 0xb9, 0x32, 0xcb};
    cr_assert_eq(v1.len, 62);
    cr_assert_eq(memcmp(v1.ptr + v1.len - 8, v1_sum, 8), 0);
    fs_inode d, want;
    OK(fs_inode_decode(kv_buf_slice(&v1), &d));
    cr_assert(!d.split);
    cr_assert_eq(d.mode, S_IFDIR | 0755);
    cr_assert_eq(d.nclock, 1);
    cr_assert_eq(clock_of(&d, 5), 1);
    cr_assert_eq(d.nentries, 1);
    cr_assert_str_eq(d.entries[0].name, "x");
    cr_assert_eq(d.entries[0].id.b[15], 7);
    cr_assert_eq(d.entries[0].type, FS_FILE);
    cr_assert_eq(d.entries[0].dot.actor, 5);
    cr_assert_eq(d.entries[0].dot.counter, 1);
    encode(&d, &e);
    cr_assert_eq(e.ptr[4], 2);
    expect_buf_eq(&e, &v2);
    /* The version-2 bytes are those of the example made through the
     * API. */
    example_dir(&want);
    expect_same(&d, &want);
    fs_inode_release(&d);
    fs_inode_release(&want);
    kv_buf_release(&v1);
    kv_buf_release(&v2);
    kv_buf_release(&e);
}

Test(obj, the_split_flag_is_bit_0_of_the_flags_byte_and_survives) {
    fs_inode d, got;
    example_dir(&d);
    kv_buf plain = KV_BUF_INIT, e = KV_BUF_INIT, hand = KV_BUF_INIT;
    encode(&d, &plain);
    cr_assert(!d.split);
    d.split = true;
    encode(&d, &e);
    b_example_dir(&hand, 2, 1);
    expect_buf_eq(&e, &hand);
    /* The flags byte follows the header (6), mode (2), uid, gid, size,
     * the times (6) and the xattr count (1): offset 15. Nothing else but
     * the checksum differs. */
    cr_assert_eq(e.len, plain.len);
    cr_assert_eq(plain.ptr[15], 0);
    for (size_t i = 0; i < e.len - 8; i++)
        cr_assert_eq(e.ptr[i], i == 15 ? 1 : plain.ptr[i], "byte %zu", i);
    cr_assert_neq(memcmp(e.ptr + e.len - 8, plain.ptr + plain.len - 8, 8), 0);
    OK(fs_inode_decode(kv_buf_slice(&e), &got));
    cr_assert(got.split);
    fs_inode_release(&got);
    OK(fs_inode_decode(kv_buf_slice(&plain), &got));
    cr_assert(!got.split);
    fs_inode_release(&got);
    fs_inode_release(&d);
    /* A fuller directory: split, xattrs, two actors. */
    sample_dir(&d);
    d.split = true;
    roundtrip(&d, &got);
    cr_assert(got.split);
    cr_assert_eq(got.nentries, 3);
    fs_inode_release(&got);
    fs_inode_release(&d);
    kv_buf_release(&plain);
    kv_buf_release(&e);
    kv_buf_release(&hand);
}

Test(obj, only_a_directory_can_be_split) {
    fs_inode file, chunked, sym, dir;
    sample_file(&file);
    sample_chunked(&chunked);
    sample_symlink(&sym);
    sample_dir(&dir);
    BAD(&file, -EINVAL, x->split = true);
    BAD(&chunked, -EINVAL, x->split = true);
    BAD(&sym, -EINVAL, x->split = true);
    /* Without the flag each encodes, and the directory does with it. */
    kv_buf e = KV_BUF_INIT;
    encode(&file, &e);
    encode(&chunked, &e);
    encode(&sym, &e);
    dir.split = true;
    encode(&dir, &e);
    kv_buf_release(&e);
    fs_inode all[] = {file, chunked, sym, dir};
    for (size_t i = 0; i < KV_ARRAY_LEN(all); i++) fs_inode_release(&all[i]);
}

/* Once any mount split a directory object, every merge keeps it split,
 * whichever side had the flag and whichever side's attributes win; the
 * merge stays commutative. */
Test(obj, a_merge_keeps_the_split_flag_of_either_side) {
    /* 0: r1 split, 1: r2 split, 2: both, 3: neither. */
    for (int side = 0; side < 4; side++) {
        fs_inode base = new_dir();
        add(&base, "a", 1, C);
        pair p;
        pair_start(&p, &base);
        add(&p.r1, "b", 2, A);
        p.r1.ctime_ns = 10; /* r1's attributes win */
        add(&p.r2, "c", 3, B);
        p.r1.split = side == 0 || side == 2;
        p.r2.split = side == 1 || side == 2;
        pair_merge(&p); /* both orders, equal encodings */
        bool want = side != 3;
        cr_assert_eq(p.m12.split, want, "side %d", side);
        cr_assert_eq(p.m21.split, want, "side %d", side);
        cr_assert_eq(p.m12.nentries, 3);
        cr_assert_eq(p.m12.ctime_ns, 10);
        /* A stale unsplit version merged in does not clear it. */
        merge(&p.m12, &base);
        cr_assert_eq(p.m12.split, want);
        fs_inode back = merged(&base, &p.m21);
        cr_assert_eq(back.split, want);
        expect_same(&back, &p.m12);
        fs_inode_release(&back);
        pair_free(&p);
        fs_inode_release(&base);
    }
}

Test(obj, copies_keep_the_split_flag) {
    fs_inode d;
    sample_dir(&d);
    d.split = true;
    fs_inode c = copy_of(&d);
    cr_assert(c.split);
    expect_same(&c, &d);
    fs_inode_release(&c);
    d.split = false;
    c = copy_of(&d);
    cr_assert(!c.split);
    expect_same(&c, &d);
    fs_inode_release(&c);
    fs_inode_release(&d);
}

/* ---- files ---- */

Test(obj, chunks_stay_sorted_and_are_found_by_index) {
    fs_inode f;
    fs_inode_init(&f, FS_FILE);
    f.chunked = true;
    uint64_t order[] = {7, 2, 9, 0, 5, 2, 100, 1};
    for (size_t i = 0; i < KV_ARRAY_LEN(order); i++) {
        fs_chunk c = {order[i], (uint32_t)(i + 1), {(uint8_t)i}};
        OK(fs_file_set_chunk(&f, &c));
    }
    cr_assert_eq(f.nchunks, 7); /* 2 was set twice */
    for (size_t i = 1; i < f.nchunks; i++)
        cr_assert_lt(f.chunks[i - 1].index, f.chunks[i].index);
    const fs_chunk *c = fs_file_chunk(&f, 2);
    cr_assert_not_null(c);
    cr_assert_eq(c->len, 6); /* the replacement */
    cr_assert_eq(c->hash[0], 5);
    cr_assert_null(fs_file_chunk(&f, 3));
    cr_assert_null(fs_file_chunk(&f, 101));
    cr_assert_eq(fs_file_chunk(&f, 100)->len, 7);
    cr_assert_eq(fs_file_chunk(&f, 0)->index, 0);
    f.size = 101 * (uint64_t)FS_CHUNK_SIZE;
    roundtrip(&f, NULL);
    fs_inode_release(&f);
}

Test(obj, bad_chunks_are_refused_and_change_nothing) {
    fs_inode f;
    sample_chunked(&f);
    fs_chunk c = {1, 0, {0}};
    EXPECT_RC(fs_file_set_chunk(&f, &c), -EINVAL);
    c.len = FS_CHUNK_SIZE + 1;
    EXPECT_RC(fs_file_set_chunk(&f, &c), -EINVAL);
    c.len = 1;
    c.index = FS_MAX_CHUNKS;
    EXPECT_RC(fs_file_set_chunk(&f, &c), -EFBIG);
    c.index = UINT64_MAX;
    EXPECT_RC(fs_file_set_chunk(&f, &c), -EFBIG);
    c.index = FS_MAX_CHUNKS - 1;
    fs_inode d = new_dir();
    EXPECT_RC(fs_file_set_chunk(&d, &c), -EINVAL);
    cr_assert_eq(f.nchunks, 3);
    OK(fs_file_set_chunk(&f, &c));
    cr_assert_eq(f.nchunks, 4);
    fs_inode_release(&d);
    fs_inode_release(&f);
}

Test(obj, truncate_drops_whole_chunks_past_the_size_and_keeps_the_cut_one) {
    const uint64_t K = FS_CHUNK_SIZE;
    fs_inode f;
    fs_inode_init(&f, FS_FILE);
    f.chunked = true;
    f.size = 10 * K;
    uint64_t idx[] = {0, 1, 2, 5, 9};
    for (size_t i = 0; i < KV_ARRAY_LEN(idx); i++) {
        fs_chunk c = {idx[i], FS_CHUNK_SIZE, {(uint8_t)i}};
        OK(fs_file_set_chunk(&f, &c));
    }
    fs_file_truncate_chunks(&f, UINT64_MAX);
    cr_assert_eq(f.nchunks, 5);
    fs_file_truncate_chunks(&f, 6 * K);
    cr_assert_eq(f.nchunks, 4);
    /* 2K + 10: chunk 2 is cut, not dropped, and keeps its length and
     * hash; the size is the caller's. */
    fs_file_truncate_chunks(&f, 2 * K + 10);
    cr_assert_eq(f.nchunks, 3);
    cr_assert_eq(fs_file_chunk(&f, 2)->len, FS_CHUNK_SIZE);
    cr_assert_eq(f.size, 10 * K);
    /* Until the caller rewrites it, the cut chunk cannot be encoded. */
    f.size = 2 * K + 10;
    kv_buf e = KV_BUF_INIT;
    EXPECT_RC(fs_inode_encode(&f, &e), -EINVAL);
    fs_chunk cut = {2, 10, {0xcc}};
    OK(fs_file_set_chunk(&f, &cut));
    OK(fs_inode_encode(&f, &e));
    fs_file_truncate_chunks(&f, 2 * K);
    cr_assert_eq(f.nchunks, 2);
    fs_file_truncate_chunks(&f, 1);
    cr_assert_eq(f.nchunks, 1);
    fs_file_truncate_chunks(&f, 0);
    cr_assert_eq(f.nchunks, 0);
    kv_buf_release(&e);
    fs_inode_release(&f);
}

/* Random sets and truncations against an array indexed by chunk. */
Test(obj, chunk_operations_match_a_model) {
    enum { N = 200 };
    uint32_t model[N] = {0}; /* length, 0: none */
    fs_inode f;
    fs_inode_init(&f, FS_FILE);
    f.chunked = true;
    for (uint64_t t = 0; t < 5000; t++) {
        uint64_t r = mix64(t + 77);
        uint64_t index = r % N;
        if ((r >> 20) % 50 == 0) {
            uint64_t size = (r >> 30) % ((uint64_t)N * FS_CHUNK_SIZE);
            fs_file_truncate_chunks(&f, size);
            for (uint64_t i = 0; i < N; i++)
                if (i * FS_CHUNK_SIZE >= size) model[i] = 0;
        } else {
            fs_chunk c = {
                index, 1 + (uint32_t)((r >> 8) % FS_CHUNK_SIZE), {(uint8_t)t}};
            OK(fs_file_set_chunk(&f, &c));
            model[index] = c.len;
        }
        if (t % 100 != 0) continue;
        size_t n = 0;
        for (uint64_t i = 0; i < N; i++) {
            const fs_chunk *c = fs_file_chunk(&f, i);
            cr_assert_eq(c ? c->len : 0, model[i], "chunk %llu at step %llu",
                         (unsigned long long)i, (unsigned long long)t);
            n += model[i] != 0;
        }
        cr_assert_eq(f.nchunks, n);
    }
    fs_inode_release(&f);
}

/* ---- ids, hashes, keys ---- */

static int by_id(const void *x, const void *y) {
    return memcmp(x, y, FS_ID_LEN);
}

Test(obj, random_ids_are_distinct_and_never_the_root) {
    enum { N = 2000 };
    fs_id *ids = kv_malloc(N * sizeof *ids);
    unsigned ones = 0;
    for (int i = 0; i < N; i++) {
        fs_id_random(&ids[i]);
        cr_assert(!fs_id_is_root(&ids[i]));
        for (int k = 0; k < FS_ID_LEN; k++)
            ones += (unsigned)__builtin_popcount(ids[i].b[k]);
    }
    qsort(ids, N, sizeof *ids, by_id);
    for (int i = 1; i < N; i++)
        cr_assert_neq(memcmp(&ids[i - 1], &ids[i], FS_ID_LEN), 0);
    /* About half the bits are set: 2000 * 128 / 2 = 128000 +- 1%. */
    cr_assert(ones > 126720 && ones < 129280, "%u bits set", ones);
    fs_id root;
    memset(&root, 0, sizeof root);
    cr_assert(fs_id_is_root(&root));
    root.b[15] = 1;
    cr_assert(!fs_id_is_root(&root));
    kv_free(ids);
}

Test(obj, chunk_hashes_are_xxh3_128_big_endian) {
    uint8_t h[FS_HASH_LEN];
    const char *inputs[] = {"", "a", "hello, world"};
    for (size_t i = 0; i < KV_ARRAY_LEN(inputs); i++) {
        kv_slice s = kv_slice_str(inputs[i]);
        fs_chunk_hash(s, h);
        XXH128_canonical_t want;
        XXH128_canonicalFromHash(&want, XXH3_128bits(s.ptr, s.len));
        cr_assert_eq(memcmp(h, want.digest, FS_HASH_LEN), 0);
    }
    /* Pinned: a library that hashed differently would orphan every chunk
     * stored. */
    static const uint8_t empty[FS_HASH_LEN] = {
        0x99, 0xaa, 0x06, 0xd3, 0x01, 0x47, 0x98, 0xd8,
        0x60, 0x01, 0xc3, 0x24, 0x46, 0x8d, 0x49, 0x7f};
    fs_chunk_hash(kv_slice_make(NULL, 0), h);
    cr_assert_eq(memcmp(h, empty, FS_HASH_LEN), 0);
    /* A chunk's bytes are its name: one byte more is another chunk. */
    uint8_t h2[FS_HASH_LEN];
    fs_chunk_hash(kv_slice_make("hello, world!", 13), h2);
    fs_chunk_hash(kv_slice_make("hello, world", 12), h);
    cr_assert_neq(memcmp(h, h2, FS_HASH_LEN), 0);
}

Test(obj, keys_name_the_volume_kind_and_id_in_lowercase_hex) {
    kv_buf k = KV_BUF_INIT;
    fs_id id;
    for (int i = 0; i < FS_ID_LEN; i++) id.b[i] = (uint8_t)(i * 0x11);
    OK(fs_key_inode("vol", &id, &k));
    const char *want = "vol/i/00112233445566778899aabbccddeeff";
    cr_assert_eq(k.len, strlen(want));
    cr_assert_eq(memcmp(k.ptr, want, k.len), 0);
    cr_assert_str_eq((const char *)k.ptr, want); /* NUL-terminated too */
    uint8_t h[FS_HASH_LEN];
    memset(h, 0xf0, sizeof h);
    OK(fs_key_chunk("my-volume.2", h, &k)); /* replaces the contents */
    cr_assert_str_eq((const char *)k.ptr,
                     "my-volume.2/c/f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0");
    cr_assert_eq(k.len, strlen("my-volume.2/c/") + 32);
    memset(&id, 0, sizeof id);
    OK(fs_key_inode("v", &id, &k));
    cr_assert_str_eq((const char *)k.ptr,
                     "v/i/00000000000000000000000000000000");
    /* Bad volumes change nothing. */
    const char *bad[] = {"", "/", "a/b", "vol/"};
    for (size_t i = 0; i < KV_ARRAY_LEN(bad); i++) {
        EXPECT_RC(fs_key_inode(bad[i], &id, &k), -EINVAL);
        EXPECT_RC(fs_key_chunk(bad[i], h, &k), -EINVAL);
    }
    EXPECT_RC(fs_key_inode(NULL, &id, &k), -EINVAL);
    cr_assert_str_eq((const char *)k.ptr,
                     "v/i/00000000000000000000000000000000");
    kv_buf_release(&k);
}

Test(obj, shard_keys_name_the_level_and_the_index_in_fixed_width_hex) {
    kv_buf k = KV_BUF_INIT, ik = KV_BUF_INIT;
    fs_id id;
    for (int i = 0; i < FS_ID_LEN; i++) id.b[i] = (uint8_t)(i * 0x11);
    /* Level 0 is the directory's own object. */
    OK(fs_key_shard("vol", &id, 0, 0, &k));
    OK(fs_key_inode("vol", &id, &ik));
    expect_buf_eq(&k, &ik);
    cr_assert_str_eq((const char *)k.ptr,
                     "vol/i/00112233445566778899aabbccddeeff");
    static const struct {
        unsigned level;
        uint64_t index;
        const char *tail;
    } ok[] = {
        {1, 0xa, "1/a"},
        {1, 0x0, "1/0"},
        {1, 0xf, "1/f"},
        {2, 0x0f, "2/0f"},
        {3, 0x0, "3/000"},
        {10, 0xabcdef0123, "10/abcdef0123"},
        {FS_SHARD_LEVELS, (1ull << 60) - 1, "15/fffffffffffffff"},
        {FS_SHARD_LEVELS, 1, "15/000000000000001"},
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(ok); i++) {
        char want[128];
        snprintf(want, sizeof want, "vol/s/00112233445566778899aabbccddeeff/%s",
                 ok[i].tail);
        OK(fs_key_shard("vol", &id, ok[i].level, ok[i].index, &k));
        cr_assert_str_eq((const char *)k.ptr, want); /* NUL-terminated */
        cr_assert_eq(k.len, strlen(want));
    }
    /* Too deep, an index too wide for its level, a bad volume: -EINVAL,
     * the output unchanged. */
    OK(fs_key_shard("v", &id, 2, 0x0f, &k));
    const char *kept = "v/s/00112233445566778899aabbccddeeff/2/0f";
    EXPECT_RC(fs_key_shard("v", &id, FS_SHARD_LEVELS + 1, 0, &k), -EINVAL);
    EXPECT_RC(fs_key_shard("v", &id, 64, 0, &k), -EINVAL);
    EXPECT_RC(fs_key_shard("v", &id, 1, 0x10, &k), -EINVAL);
    EXPECT_RC(fs_key_shard("v", &id, 2, 0x100, &k), -EINVAL);
    EXPECT_RC(fs_key_shard("v", &id, FS_SHARD_LEVELS, 1ull << 60, &k), -EINVAL);
    EXPECT_RC(fs_key_shard("v", &id, 1, UINT64_MAX, &k), -EINVAL);
    EXPECT_RC(fs_key_shard("a/b", &id, 1, 0, &k), -EINVAL);
    EXPECT_RC(fs_key_shard("", &id, 1, 0, &k), -EINVAL);
    EXPECT_RC(fs_key_shard(NULL, &id, 0, 0, &k), -EINVAL);
    cr_assert_str_eq((const char *)k.ptr, kept);
    cr_assert_eq(k.len, strlen(kept));
    kv_buf_release(&k);
    kv_buf_release(&ik);
}

Test(obj, a_shard_index_is_the_top_bits_of_the_hash) {
    const uint64_t h = 0xfedcba9876543210ull;
    cr_assert_eq(fs_shard_index(h, 0), 0);
    cr_assert_eq(fs_shard_index(h, 1), 0xf);
    cr_assert_eq(fs_shard_index(h, 1), h >> 60);
    cr_assert_eq(fs_shard_index(h, 2), 0xfe);
    cr_assert_eq(fs_shard_index(h, 2), h >> 56);
    cr_assert_eq(fs_shard_index(h, 3), 0xfed);
    cr_assert_eq(fs_shard_index(h, FS_SHARD_LEVELS), 0xfedcba987654321ull);
    cr_assert_eq(fs_shard_index(0x0123456789abcdefull, 1), 0);
    cr_assert_eq(fs_shard_index(0x0123456789abcdefull, 2), 0x01);
    /* Along any path, each object is one of the FS_SHARD_FANOUT children
     * of the one above it, and every index has a key. */
    kv_buf k = KV_BUF_INIT;
    fs_id id = idn(1);
    for (uint64_t n = 0; n < 200; n++) {
        uint64_t x = mix64(n);
        for (unsigned level = 1; level <= FS_SHARD_LEVELS; level++) {
            uint64_t i = fs_shard_index(x, level);
            cr_assert_eq(i / FS_SHARD_FANOUT, fs_shard_index(x, level - 1));
            cr_assert_eq(i, x >> (64 - FS_SHARD_BITS * level));
            OK(fs_key_shard("v", &id, level, i, &k));
        }
    }
    kv_buf_release(&k);
}

Test(obj, name_hashes_depend_on_the_directory_and_the_name) {
    fs_id d1, d2, d3;
    for (int i = 0; i < FS_ID_LEN; i++) d1.b[i] = (uint8_t)(i + 1);
    d2 = d1;
    d2.b[0] ^= 0x80; /* another directory */
    d3 = d1;
    d3.b[8] ^= 0x80; /* only the first 8 bytes seed the hash */
    char n1[] = "report.txt", n2[] = "report.txt";
    fs_id again = d1;
    uint64_t h = fs_name_hash(&d1, n1);
    cr_assert_eq(fs_name_hash(&again, n2), h);
    cr_assert_eq(fs_name_hash(&d3, n1), h);
    cr_assert_neq(fs_name_hash(&d2, n1), h);
    cr_assert_neq(fs_name_hash(&d1, "report.txu"), h);
    /* The definition: xxh3-64 of the name's bytes seeded with the id's
     * first 8 bytes as kv_get_u64 reads them: little-endian, so bytes
     * 01 02 .. 08 are the seed 0x0807060504030201. */
    cr_assert_eq(h, XXH3_64bits_withSeed(n1, strlen(n1), kv_get_u64(d1.b)));
    cr_assert_eq(h,
                 XXH3_64bits_withSeed(n1, strlen(n1), 0x0807060504030201ull));
    /* Pinned: a hash that changed would look for every name of a split
     * directory in the wrong shard. */
    cr_assert_eq(h, 0x795063d6ce02b6e4ull, "0x%016llx", (unsigned long long)h);
    cr_assert_eq(fs_name_hash(&d2, n1), 0xac0b7f86aa34b0baull);
    fs_id root;
    memset(&root, 0, sizeof root);
    cr_assert_eq(fs_name_hash(&root, "a"), 0xe6c632b61e964e1full);
}

/* A user relies on no shard getting most of a large directory: 10,000
 * names of one pattern fall on every first-level index about equally
 * (625 each on average). */
Test(obj, names_spread_evenly_over_the_first_level) {
    fs_id ids[3];
    memset(&ids[0], 0, sizeof ids[0]); /* the root */
    ids[1] = idn(1);
    for (int i = 0; i < FS_ID_LEN; i++) ids[2].b[i] = (uint8_t)(0xf0 - i);
    for (size_t d = 0; d < KV_ARRAY_LEN(ids); d++) {
        unsigned count[FS_SHARD_FANOUT] = {0};
        for (int n = 0; n < 10000; n++) {
            char name[32];
            snprintf(name, sizeof name, "file-%05d.txt", n);
            uint64_t i = fs_shard_index(fs_name_hash(&ids[d], name), 1);
            cr_assert_lt(i, FS_SHARD_FANOUT);
            count[i]++;
        }
        for (unsigned i = 0; i < FS_SHARD_FANOUT; i++)
            cr_assert(count[i] >= 400 && count[i] <= 850,
                      "directory %zu: index %u has %u names", d, i, count[i]);
    }
}

/* ---- allocation failures ---- */

/* call with the k-th allocation failing, k = 0, 1, ... until it succeeds:
 * every failure is -ENOMEM, then `check` runs after each failure and
 * `done` after the success (and, under the sanitizers, nothing leaks). */
#define FAIL_LOOP(call, check, done)                                           \
    for (long k_ = 0;; k_++) {                                                 \
        kv_alloc_fail_after(k_);                                               \
        int frc_ = (call);                                                     \
        kv_alloc_fail_after(-1);                                               \
        if (frc_ == 0) {                                                       \
            done;                                                              \
            break;                                                             \
        }                                                                      \
        EXPECT_RC(frc_, -ENOMEM);                                              \
        check;                                                                 \
        cr_assert_lt(k_, 1000);                                                \
    }

Test(obj, allocation_failures_change_nothing) {
    kv_buf e = KV_BUF_INIT, chk = KV_BUF_INIT;
    for (size_t s = 0; s < KV_ARRAY_LEN(samples); s++) {
        fs_inode ino, d;
        samples[s](&ino);
        encode(&ino, &e);
        FAIL_LOOP(fs_inode_decode(kv_buf_slice(&e), &d),
                  cr_assert(d.nentries == 0 && d.nxattrs == 0), {
                      expect_same(&d, &ino);
                      fs_inode_release(&d);
                  });
        FAIL_LOOP(fs_inode_copy(&d, &ino), cr_assert_eq(d.nentries, 0), {
            expect_same(&d, &ino);
            fs_inode_release(&d);
        });
        fs_inode_release(&ino);
    }
    /* The encoder, with unsorted xattrs (it sorts a view of them). */
    fs_inode f;
    sample_file(&f);
    for (long k = 0;; k++) {
        kv_buf out = KV_BUF_INIT;
        OK(kv_buf_set(&out, "keep", 4));
        kv_alloc_fail_after(k);
        int rc = fs_inode_encode(&f, &out);
        kv_alloc_fail_after(-1);
        if (rc) {
            EXPECT_RC(rc, -ENOMEM);
            cr_assert(out.len == 4 && memcmp(out.ptr, "keep", 4) == 0);
        }
        kv_buf_release(&out);
        if (rc == 0) break;
    }
    fs_inode_release(&f);

    /* Merge and add leave the directory as it was. */
    fs_inode pool[POOL];
    make_pool(9, pool);
    fs_inode *a = &pool[POOL - 1], *b = &pool[POOL - 2];
    cr_assert_gt(a->nentries + b->nentries, 2);
    add_xattr(b, "user.z", "z", 1);
    add_xattr(b, "user.a", "a", 1);
    b->ctime_ns = 1000; /* b's attributes (and xattrs) win */
    fs_inode want = merged(a, b);
    encode(a, &e);
    FAIL_LOOP(
        fs_dir_merge(a, b),
        {
            encode(a, &chk);
            expect_buf_eq(&chk, &e);
        },
        expect_same(a, &want));
    fs_inode_release(&want);
    encode(a, &e);
    fs_id id = idn(77);
    FAIL_LOOP(
        fs_dir_add(a, "brand-new", &id, FS_FILE, 999),
        {
            encode(a, &chk);
            expect_buf_eq(&chk, &e);
        },
        cr_assert_eq(count_of(a, "brand-new"), 1));
    /* Chunks. */
    fs_inode c;
    fs_inode_init(&c, FS_FILE);
    for (uint64_t i = 0; i < 20; i++) {
        fs_chunk ch = {i * 3, 1, {0}};
        size_t before = c.nchunks;
        FAIL_LOOP(fs_file_set_chunk(&c, &ch), cr_assert_eq(c.nchunks, before),
                  cr_assert_eq(c.nchunks, before + 1));
    }
    fs_inode_release(&c);
    /* Keys. */
    kv_buf key = KV_BUF_INIT;
    OK(kv_buf_set(&key, "old", 4));
    FAIL_LOOP(fs_key_inode("vol", &id, &key),
              cr_assert_str_eq((const char *)key.ptr, "old"),
              cr_assert_eq(key.len, 4 + 2 * FS_ID_LEN + 2));
    OK(kv_buf_set(&key, "old", 4));
    FAIL_LOOP(fs_key_shard("vol", &id, 2, 0x0f, &key),
              cr_assert_str_eq((const char *)key.ptr, "old"),
              cr_assert_eq(key.len, 4 + 2 + 2 * FS_ID_LEN + 5));
    kv_buf_release(&key);
    free_pool(pool);
    kv_buf_release(&e);
    kv_buf_release(&chk);
}
