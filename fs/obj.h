/*
 * obj: the filesystem's objects as the bytes of one replica value. An
 * inode object is a file, a directory or a symlink: its attributes, its
 * user xattrs, and either its bytes inline, a manifest of content-addressed
 * chunks (large files), its entries (directories) or its target
 * (symlinks). Encodings are versioned and checksummed; docs/fs-format.md
 * describes them byte by byte, with the key schema.
 *
 * A directory's entries are an add-wins set that merges without
 * coordination (an observed-remove set without tombstones, ORSWOT, as in
 * Riak's data types): each entry carries the dot (actor, counter) of the
 * add that made it, and the directory carries a version vector of every
 * add it has seen. Merging the siblings of a directory object keeps an
 * entry that both sides hold, and an entry one side holds that the other
 * side's vector has not seen; an entry one side removed (its dot seen by
 * that side's vector, and gone) stays removed. Concurrent adds of one name
 * keep both entries: the name then has several targets, shown as
 * `name` and `name.conflict-N`.
 *
 * Actors are random 64-bit ids a mount picks per object it adds to (see
 * fs/dir.c, "actors": an actor's adds to one object always build on each
 * other); counters start at 1.
 *
 * Threading: plain data, one owner at a time.
 */
#ifndef QFS_FS_OBJ_H
#define QFS_FS_OBJ_H

#include "base/base.h"

#include <sys/types.h> /* ssize_t */

#define FS_ID_LEN 16          /* bytes of an object id (random) */
#define FS_HASH_LEN 16        /* bytes of a chunk hash (xxh3-128) */
#define FS_NAME_MAX 255       /* bytes in one name (NAME_MAX) */
#define FS_SYMLINK_MAX 4095   /* bytes in a symlink target (PATH_MAX - 1) */
#define FS_XATTR_NAME_MAX 255 /* bytes in an xattr name */
#define FS_XATTR_VALUE_MAX (64u * 1024u)
#define FS_XATTR_TOTAL_MAX (256u * 1024u) /* all of a file's xattrs */
#define FS_INLINE_MAX (64u * 1024u)       /* larger files use chunks */
#define FS_CHUNK_SIZE (1024u * 1024u)     /* bytes per chunk */
/* The largest file: chunk count bounded so a manifest stays one value. */
#define FS_MAX_CHUNKS (1u << 20)  /* 1 TiB at 1 MiB chunks */
#define FS_MAX_ENTRIES (1u << 20) /* entries in one directory */
#define FS_MAX_FILE_SIZE ((uint64_t)FS_MAX_CHUNKS * FS_CHUNK_SIZE)
/* The largest encoded inode: one replica value (REP_MAX_VALUE of
 * replica/proto.h, not included here; tests/fs/test_obj.c checks they
 * agree). Only directories of many long names come near it. */
#define FS_MAX_OBJECT (64u * 1024u * 1024u)

typedef struct fs_id {
    uint8_t b[FS_ID_LEN];
} fs_id;

typedef enum fs_type { FS_FILE = 1, FS_DIR = 2, FS_SYMLINK = 3 } fs_type;

/* A dot: the add (or write) of one actor, counter from 1. */
typedef struct fs_dot {
    uint64_t actor;
    uint64_t counter;
} fs_dot;

/* A chunk of a file: bytes [index * FS_CHUNK_SIZE, + len) are the chunk
 * with this hash. A chunk not listed (or past size) reads as zeros. */
typedef struct fs_chunk {
    uint64_t index;
    uint32_t len;
    uint8_t hash[FS_HASH_LEN];
} fs_chunk;

typedef struct fs_dirent {
    char *name; /* NUL-terminated, 1..FS_NAME_MAX bytes, no '/', not "." or
                   ".." */
    fs_id id;
    uint8_t type; /* fs_type of the target */
    fs_dot dot;   /* the add that made this entry */
} fs_dirent;

typedef struct fs_xattr {
    char *name;   /* NUL-terminated, with its namespace ("user.x"), 1 ..
                     FS_XATTR_NAME_MAX bytes */
    kv_buf value; /* at most FS_XATTR_VALUE_MAX bytes */
} fs_xattr;

typedef struct fs_inode {
    uint8_t type; /* fs_type */
    /* Permission bits (07777) and the S_IFMT bits of the type: init and
     * decode set them; encode also takes a mode without them. */
    uint32_t mode;
    uint32_t uid, gid;
    uint64_t size; /* files: bytes; directories: 0; symlinks: target */
    int64_t atime_ns, mtime_ns, ctime_ns; /* since the epoch */
    /* In any order, no two of one name; names and values together at most
     * FS_XATTR_TOTAL_MAX bytes. Encoded sorted by name (bytes), so decode
     * gives them sorted. */
    fs_xattr *xattrs;
    size_t nxattrs;
    /* Files: inline bytes (!chunked: data holds exactly size <=
     * FS_INLINE_MAX bytes), or chunks (chunked, data empty) sorted by
     * index, without duplicates, none reaching past size, size at most
     * FS_MAX_FILE_SIZE. */
    bool chunked;
    kv_buf data;
    fs_chunk *chunks;
    size_t nchunks, chunks_cap;
    /* Directories: the add-wins set. clock holds one dot per actor (its
     * highest counter), sorted by actor; entries sorted by name, then id,
     * then dot (actor, counter), and every entry's dot is covered by the
     * clock (counter <= the clock's counter of its actor). One name may
     * have several entries, even with one id: concurrent adds. */
    fs_dot *clock;
    size_t nclock;
    fs_dirent *entries;
    size_t nentries, entries_cap;
    /* Directories and shards: adds of names whose path goes through this
     * object go one level down (see "shards" below). Never cleared; a
     * merge keeps it if either side has it. */
    bool split;
    /* Directories (level 0): removed by rmdir (or replaced by a rename);
     * no name can be added to it any more. Never cleared; a merge keeps
     * it if either side has it. */
    bool removed;
    /* Symlinks: the target is data (1 .. FS_SYMLINK_MAX bytes, no NUL,
     * size its length). */
} fs_inode;

/* An empty inode of type t (no entries, no data, times zero, ids zero;
 * mode is the S_IFMT bits of t with no permission bits). */
void fs_inode_init(fs_inode *ino, fs_type t);
/* Free what ino owns; it is then an empty inode of the same type. */
void fs_inode_release(fs_inode *ino);
/* Deep copy: *dst is overwritten (not released first). 0 or -ENOMEM (then
 * *dst is empty). */
int fs_inode_copy(fs_inode *dst, const fs_inode *src);

/* Append the encoding of ino to out. -EINVAL for an inode that breaks a
 * rule above (any inode the decoder would refuse), KV_ETOOLARGE if the
 * encoding would exceed FS_MAX_OBJECT, -ENOMEM; out is unchanged on
 * failure. The encoding is canonical: equal inodes, equal bytes. */
int fs_inode_encode(const fs_inode *ino, kv_buf *out);
/* Decode exactly the bytes of in into *ino (initialised here; release it
 * even on failure). KV_EVERSION for an unknown version, KV_ECORRUPT for
 * a failed check (checksum, bounds, sort order, a name with '/'; logged
 * with the field, the check and its offset), -ENOMEM. Every count is checked
 * against the remaining input before anything is allocated. */
int fs_inode_decode(kv_slice in, fs_inode *ino);

/* ---- directories ---- */

/* Add name -> (id, type) as actor: removes the entries of name this
 * directory holds (the adder saw them), then adds one with the next dot
 * of actor. -EINVAL for a bad name or type or a dir that is not a
 * directory, -ENOSPC at FS_MAX_ENTRIES, -EOVERFLOW if actor's counter is
 * at UINT64_MAX, -ENOMEM; dir is unchanged on failure. */
int fs_dir_add(fs_inode *dir, const char *name, const fs_id *id, uint8_t type,
               uint64_t actor);
/* Put entry e back as it was (its dot unchanged): an entry fs_dir_add
 * removed that the caller meant to keep (a rival under that name). The
 * clock must cover e's dot. 0 (also if e is there), -EINVAL, -ENOSPC,
 * -ENOMEM. */
int fs_dir_restore(fs_inode *dir, const fs_dirent *e);
/* Remove the entries of name whose id is *id (every entry of name when id
 * is NULL). The clock is unchanged: it remembers the removed dots, which
 * is what keeps them removed in a merge. Returns the count removed (0:
 * none). */
size_t fs_dir_remove(fs_inode *dir, const char *name, const fs_id *id);
/* The first entry of name at or after position *pos (entries are sorted
 * by name): returns its index and sets *pos past it, or -1 when none. */
ssize_t fs_dir_find(const fs_inode *dir, const char *name, size_t *pos);
/* Merge directory b into a (siblings of one directory object), as the
 * header comment says: an entry (name, id, dot) stays if both hold it, or
 * if one holds it and the other's clock does not cover its dot; the clock
 * becomes the pointwise maximum. a's attributes (mode, uid, gid, times,
 * xattrs) become those of the one with the later ctime; on a tie, the
 * later mtime, then atime, then the larger permission bits, uid, gid,
 * then the
 * xattrs compared name by name and value by value (bytes), so every mount
 * merging the same siblings gets the same result in any order.
 * Commutative, associative and idempotent. 0, -EINVAL if a or b is not a
 * directory (or has two xattrs of one name), -ENOMEM (a unchanged). */
int fs_dir_merge(fs_inode *a, const fs_inode *b);

/* ---- files ---- */

/* The chunk of index, or NULL. Valid until the next change of f's
 * chunks. */
const fs_chunk *fs_file_chunk(const fs_inode *f, uint64_t index);
/* Set (insert or replace) the chunk of c->index (copied). Changes neither
 * chunked nor size: the caller keeps the chunk within size. -EINVAL if f
 * is not a file or c->len is 0 or over FS_CHUNK_SIZE, -EFBIG if c->index
 * >= FS_MAX_CHUNKS, -ENOMEM; f is unchanged on failure. */
int fs_file_set_chunk(fs_inode *f, const fs_chunk *c);
/* Drop the chunks that lie wholly at or past size (index * FS_CHUNK_SIZE
 * >= size). The chunk containing size, if any, is kept as it is: its hash
 * names its stored bytes, which cannot be cut here. If it reaches past
 * size (index * FS_CHUNK_SIZE + len > size) the caller must write the
 * shortened chunk and set it (or drop it) before encoding, which refuses
 * a chunk past size. f->size is not changed. */
void fs_file_truncate_chunks(fs_inode *f, uint64_t size);

/* ---- shards ----
 *
 * A large directory spreads its entries over shard objects, a hash trie
 * whose entries never move: level 0 is the directory's own object; each
 * object, once split, has 2^FS_SHARD_BITS children one level down. A
 * name's path is the object at each level whose index is the top
 * FS_SHARD_BITS * level bits of fs_name_hash. An add goes to the first
 * object on the path that is not split (the add that brings an object to
 * FS_SHARD_SPLIT entries splits it); a lookup reads the path down to the
 * first object not split (an absent shard is empty and not split), so an
 * entry added to an object while another mount split it is still found.
 * Shards are directory objects whose attributes are unused (zero). */
#define FS_SHARD_BITS 4u
#define FS_SHARD_FANOUT (1u << FS_SHARD_BITS)
#define FS_SHARD_SPLIT 256u /* entries that split an object */
#define FS_SHARD_LEVELS 15u /* the deepest level (never split) */

/* The hash of name in directory dir: xxh3-64 of the name, seeded with
 * the id's first 8 bytes read little-endian (kv_get_u64). */
uint64_t fs_name_hash(const fs_id *dir, const char *name);
/* The index at level of the object on a path (0 at level 0). */
uint64_t fs_shard_index(uint64_t hash, unsigned level);
/* The key of directory dir's shard (level, index): fs_key_inode at level
 * 0, else "<volume>/s/<32 hex>/<level>/<index: level hex digits>"
 * (decimal level, lower-case hex). -EINVAL for a bad volume, level or index,
 * -ENOMEM. */
int fs_key_shard(const char *volume, const fs_id *dir, unsigned level,
                 uint64_t index, kv_buf *out);

/* ---- ids and hashes ---- */

/* A random id (getrandom(2); aborts the process if the kernel cannot give
 * random bytes, rather than make a guessable id). Never all zeros: that
 * is the root directory's id. */
void fs_id_random(fs_id *id);
bool fs_id_is_root(const fs_id *id);
/* The xxh3-128 hash of a chunk's bytes: the high 64 bits big-endian, then
 * the low 64 bits big-endian (xxhash's canonical form). */
void fs_chunk_hash(kv_slice bytes, uint8_t out[FS_HASH_LEN]);
/* Keys of the replica layer: "<volume>/i/<32 hex>" for an inode object,
 * "<volume>/c/<32 hex>" for a chunk, hex lower-case. The bucket of every
 * key of a volume is the volume's name (replica buckets are the part
 * before '/'). out's contents are replaced by the key, followed by a NUL
 * byte not counted in out->len (so out->ptr is also a C string). -EINVAL
 * for a NULL, empty volume or one containing '/', -ENOMEM; out is
 * unchanged on failure. */
int fs_key_inode(const char *volume, const fs_id *id, kv_buf *out);
int fs_key_chunk(const char *volume, const uint8_t hash[FS_HASH_LEN],
                 kv_buf *out);

#endif
