/*
 * Open files: the bytes of a file while some handle has it open. Small
 * files keep their bytes inline in the inode object; past FS_INLINE_MAX a
 * file becomes a manifest of FS_CHUNK_SIZE chunks, each stored once under
 * the hash of its bytes. Writes change chunks in memory (dirty chunks);
 * full chunks are written back once FS_DIRTY_CHUNKS_MAX are dirty, and
 * everything at flush, fsync and release, last the inode object with the
 * context read at open, so a concurrent writer elsewhere becomes a
 * sibling instead of being overwritten.
 */
#include "fs/fs_int.h"

#include <errno.h>
#include <string.h>

static fs_dchunk *dchunk_find(fs_file *f, uint64_t index) {
    for (fs_dchunk *d = f->dchunks; d; d = d->next)
        if (d->index == index) return d;
    return NULL;
}

static void dchunk_unlink(fs_file *f, fs_dchunk *d) {
    fs_dchunk **p = &f->dchunks;
    while (*p != d) p = &(*p)->next;
    *p = d->next;
    f->ndchunks--;
    kv_buf_release(&d->bytes);
    kv_free(d);
}

/* The stored bytes of chunk index (zero-length when there is none), into
 * out; the last one read is cached. */
static int chunk_bytes(qfs_fs *fs, fs_file *f, uint64_t index, kv_buf *out,
                       bool copy) {
    const fs_chunk *c = fs_file_chunk(&f->obj.ino, index);
    if (!c) {
        kv_buf_reset(out);
        return 0;
    }
    if (!f->have_cached || f->cached_index != index) {
        f->have_cached = false;
        int rc = fs__chunk_get(fs, c, &f->cached);
        if (rc == KV_ENOTFOUND) {
            /* The manifest names it, the store has none: damage (EIO),
             * not a missing file. */
            kv_error(FS_MOD, "chunk %llu of a file is missing",
                     (unsigned long long)index);
            rc = KV_ECORRUPT;
        }
        if (rc) return rc;
        f->have_cached = true;
        f->cached_index = index;
    }
    if (copy) return kv_buf_set(out, f->cached.ptr, f->cached.len);
    return 0;
}

/* The dirty chunk of index, made (with its stored bytes) if needed. */
static int dchunk_get(qfs_fs *fs, fs_file *f, uint64_t index, fs_dchunk **out) {
    fs_dchunk *d = dchunk_find(f, index);
    if (!d) {
        if (!(d = kv_calloc(1, sizeof *d))) return -ENOMEM;
        d->index = index;
        kv_buf_init(&d->bytes);
        int rc = chunk_bytes(fs, f, index, &d->bytes, true);
        if (rc == 0)
            rc = kv_buf_reserve(&d->bytes, FS_CHUNK_SIZE - d->bytes.len);
        if (rc) {
            kv_buf_release(&d->bytes);
            kv_free(d);
            return rc;
        }
        d->next = f->dchunks;
        f->dchunks = d;
        f->ndchunks++;
    }
    *out = d;
    return 0;
}

static void drop_chunk(fs_inode *ino, uint64_t index) {
    for (size_t i = 0; i < ino->nchunks; i++) {
        if (ino->chunks[i].index != index) continue;
        memmove(&ino->chunks[i], &ino->chunks[i + 1],
                (ino->nchunks - i - 1) * sizeof *ino->chunks);
        ino->nchunks--;
        return;
    }
}

/* Note chunk c as stored for f and not yet referred to by a written
 * inode. */
static int pending_add(fs_file *f, const fs_chunk *c, int64_t stored_ns) {
    if (f->npending == f->pending_cap) {
        size_t ncap = f->pending_cap ? f->pending_cap * 2 : 8;
        fs_chunk *p = kv_realloc(f->pending, ncap * sizeof *p);
        if (!p) return -ENOMEM;
        f->pending = p;
        f->pending_cap = ncap;
    }
    if (f->npending == 0 || stored_ns < f->pending_oldest_ns)
        f->pending_oldest_ns = stored_ns;
    f->pending[f->npending++] = *c;
    return 0;
}

bool fs__file_due(const qfs_fs *fs, const fs_file *f, int64_t now_ns) {
    return f->npending >= FS_PENDING_MAX ||
           (f->npending > 0 &&
            now_ns - f->pending_oldest_ns >= fs__pending_age_ns(fs));
}

/* Store dirty chunk d and point the manifest at it. */
static int dchunk_store(qfs_fs *fs, fs_file *f, fs_dchunk *d) {
    fs_chunk c = {.index = d->index};
    int rc = 0;
    if (d->bytes.len == 0) {
        /* A chunk cut to nothing reads as a hole. */
        drop_chunk(&f->obj.ino, d->index);
    } else {
        int64_t at;
        rc = fs__chunk_put(fs, kv_buf_slice(&d->bytes), &c, &at);
        if (rc == 0) rc = pending_add(f, &c, at);
        if (rc == 0) rc = fs_file_set_chunk(&f->obj.ino, &c);
    }
    if (rc == 0) {
        if (f->have_cached && f->cached_index == d->index)
            f->have_cached = false;
        dchunk_unlink(f, d);
    }
    return rc;
}

static int to_chunked(qfs_fs *fs, fs_file *f) {
    fs_inode *ino = &f->obj.ino;
    if (ino->chunked) return 0;
    ino->chunked = true;
    if (ino->data.len == 0) return 0;
    fs_dchunk *d;
    int rc = dchunk_get(fs, f, 0, &d);
    if (rc == 0) rc = kv_buf_set(&d->bytes, ino->data.ptr, ino->data.len);
    kv_buf_reset(&ino->data);
    return rc;
}

int fs__file_write(qfs_fs *fs, fs_file *f, uint64_t off, const void *buf,
                   size_t n) {
    fs_inode *ino = &f->obj.ino;
    uint64_t end = off + n;
    if (end < off || end > (uint64_t)FS_MAX_CHUNKS * FS_CHUNK_SIZE)
        return -EFBIG;
    int rc = 0;
    if (!ino->chunked && end <= FS_INLINE_MAX) {
        size_t have = ino->data.len;
        if (end > have) {
            if ((rc = kv_buf_reserve(&ino->data, end - have))) return rc;
            memset(ino->data.ptr + have, 0, end - have);
            ino->data.len = end;
        }
        memcpy(ino->data.ptr + off, buf, n);
    } else {
        if ((rc = to_chunked(fs, f))) return rc;
        const uint8_t *p = buf;
        while (n > 0) {
            uint64_t index = off / FS_CHUNK_SIZE;
            size_t at = off % FS_CHUNK_SIZE;
            size_t piece = KV_MIN(n, FS_CHUNK_SIZE - at);
            fs_dchunk *d;
            if ((rc = dchunk_get(fs, f, index, &d))) return rc;
            if (d->bytes.len < at) {
                memset(d->bytes.ptr + d->bytes.len, 0, at - d->bytes.len);
                d->bytes.len = at;
            }
            memcpy(d->bytes.ptr + at, p, piece);
            if (d->bytes.len < at + piece) d->bytes.len = at + piece;
            p += piece;
            off += piece;
            n -= piece;
        }
    }
    if (end > ino->size) ino->size = end;
    ino->mtime_ns = ino->ctime_ns = kv_wall_ns();
    f->dirty = true;
    /* Bound the memory of a long write: store the full chunks; if that
     * is not enough (writes scattered over many chunks), the partial ones
     * too: each holds the chunk's whole current bytes, so storing it is
     * correct, only a later write to it stores it again. */
    for (int pass = 0; pass < 2 && rc == 0 && f->ndchunks > FS_DIRTY_CHUNKS_MAX;
         pass++) {
        fs_dchunk *d = f->dchunks, *next;
        for (; rc == 0 && d; d = next) {
            next = d->next;
            if (pass == 1 || d->bytes.len == FS_CHUNK_SIZE)
                rc = dchunk_store(fs, f, d);
        }
    }
    return rc;
}

int fs__file_read(qfs_fs *fs, fs_file *f, uint64_t off, size_t n, kv_buf *out) {
    fs_inode *ino = &f->obj.ino;
    kv_buf_reset(out);
    if (off >= ino->size) return 0;
    n = (size_t)KV_MIN((uint64_t)n, ino->size - off);
    int rc = kv_buf_reserve(out, n);
    if (rc) return rc;
    if (!ino->chunked) {
        size_t have = off < ino->data.len ? ino->data.len - off : 0;
        size_t take = KV_MIN(have, n);
        if (take) memcpy(out->ptr, ino->data.ptr + off, take);
        memset(out->ptr + take, 0, n - take);
        out->len = n;
        return 0;
    }
    size_t done = 0;
    while (done < n) {
        uint64_t index = (off + done) / FS_CHUNK_SIZE;
        size_t at = (off + done) % FS_CHUNK_SIZE;
        size_t piece = KV_MIN(n - done, FS_CHUNK_SIZE - at);
        const kv_buf *src = NULL;
        fs_dchunk *d = dchunk_find(f, index);
        if (d) {
            src = &d->bytes;
        } else if (fs_file_chunk(ino, index)) {
            if ((rc = chunk_bytes(fs, f, index, NULL, false))) return rc;
            src = &f->cached;
        }
        size_t have = src && at < src->len ? src->len - at : 0;
        size_t take = KV_MIN(have, piece);
        if (take) memcpy(out->ptr + done, src->ptr + at, take);
        memset(out->ptr + done + take, 0, piece - take);
        done += piece;
    }
    out->len = n;
    return 0;
}

int fs__file_truncate(qfs_fs *fs, fs_file *f, uint64_t size) {
    fs_inode *ino = &f->obj.ino;
    int rc = 0;
    if (size > (uint64_t)FS_MAX_CHUNKS * FS_CHUNK_SIZE) return -EFBIG;
    if (!ino->chunked && size <= FS_INLINE_MAX) {
        size_t have = ino->data.len;
        if (size > have) {
            if ((rc = kv_buf_reserve(&ino->data, size - have))) return rc;
            memset(ino->data.ptr + have, 0, size - have);
        }
        ino->data.len = size;
    } else {
        if ((rc = to_chunked(fs, f))) return rc;
        uint64_t last = size / FS_CHUNK_SIZE;
        size_t at = size % FS_CHUNK_SIZE;
        /* The chunk the end cuts is read first (the one step that can
         * fail: nothing has changed then); chunks wholly past the end go. */
        fs_dchunk *cut = NULL, *d = f->dchunks, *next;
        if (at > 0 && size < ino->size && (rc = dchunk_get(fs, f, last, &cut)))
            return rc;
        for (; d; d = next) {
            next = d->next;
            if (d->index > last || (d->index == last && at == 0))
                dchunk_unlink(f, d);
        }
        if (cut && cut->bytes.len > at) cut->bytes.len = at;
        fs_file_truncate_chunks(ino, size);
        if (f->have_cached && f->cached_index >= last) f->have_cached = false;
    }
    ino->size = size;
    ino->mtime_ns = ino->ctime_ns = kv_wall_ns();
    f->dirty = true;
    return 0;
}

/* fs__chunk_keep for a chunk a version is about to refer to: one a sweep
 * took is damage (EIO, logged with when), not a missing file. */
static int keep_chunk(qfs_fs *fs, const fs_chunk *c, const char *when) {
    int rc = fs__chunk_keep(fs, c);
    if (rc == KV_ENOTFOUND) {
        kv_error(FS_MOD, "a chunk of a file was reclaimed %s", when);
        rc = KV_ECORRUPT;
    }
    return rc;
}

/* The chunks this file's manifest took from the version it read are
 * referred to by that version, or by this mount's last write-back; if
 * another mount wrote the file since, neither may be stored any more and
 * a sweep may take those chunks: store again any older than half the
 * grace before this version refers to them (EIO if one is gone). */
static int keep_if_overtaken(qfs_fs *fs, const fs_id *id, fs_file *f) {
    const fs_inode *ino = &f->obj.ino;
    if (!ino->chunked || ino->nchunks == 0) return 0;
    fs_obj cur;
    fs__obj_init(&cur);
    int rc = fs__obj_get(fs, id, &cur);
    bool ours = rc == 0 && cur.nsib == 0 &&
                (cur.ver == f->put_ver || cur.ver == f->obj.ver);
    if (rc == KV_ENOTFOUND) rc = 0;
    fs__obj_release(&cur);
    for (size_t i = 0; rc == 0 && !ours && i < ino->nchunks; i++)
        rc = keep_chunk(fs, &ino->chunks[i],
                        "after another mount rewrote the file");
    return rc;
}

int fs__file_writeback(qfs_fs *fs, const fs_id *id, fs_file *f, bool sync) {
    /* fsync of a clean file: what earlier closes wrote went out unsynced
     * (maybe from another open, whose state is gone); put the inode
     * again, synced: each replica's WAL sync covers its earlier writes of
     * the key. Chunks are synced when stored. */
    if (!f->dirty && !sync) return 0;
    int rc = 0;
    while (rc == 0 && f->dchunks) rc = dchunk_store(fs, f, f->dchunks);
    if (rc) return rc;
    /* Chunks stored long ago (the mount stalled, or write-backs failed)
     * may have outlived the sweep's grace: store them again before the
     * inode refers to them. One a sweep took is lost: EIO, not a manifest
     * pointing at nothing. */
    if ((rc = keep_if_overtaken(fs, id, f))) return rc;
    if (f->npending > 0 &&
        kv_wall_ns() - f->pending_oldest_ns >= fs__grace_half_ns(fs)) {
        for (size_t i = 0; rc == 0 && i < f->npending; i++) {
            const fs_chunk *m = fs_file_chunk(&f->obj.ino, f->pending[i].index);
            if (!m || memcmp(m->hash, f->pending[i].hash, FS_HASH_LEN))
                continue; /* replaced since: not referred to */
            rc = keep_chunk(fs, m, "before its inode was written");
        }
        if (rc) return rc;
        f->pending_oldest_ns = kv_wall_ns();
    }
    if (f->ctx_stale) {
        /* Our last put made a version our context does not cover. Take
         * the context of a fresh read when that version is all there is;
         * with siblings (someone else wrote meanwhile) keep the old one,
         * so this write becomes a sibling too instead of hiding theirs. */
        fs_obj cur;
        fs__obj_init(&cur);
        rc = fs__obj_get(fs, id, &cur);
        if (rc == 0 && cur.nsib == 0 && cur.ver == f->put_ver) {
            /* The one version is ours: nobody wrote or resolved since. */
            rc = kv_buf_set(&f->obj.ctx, cur.ctx.ptr, cur.ctx.len);
        } else if (rc == KV_ENOTFOUND) {
            rc = 0; /* deleted meanwhile: this write brings it back */
        }
        fs__obj_release(&cur);
        if (rc) return rc;
        f->ctx_stale = false;
    }
    kv_buf nc = KV_BUF_INIT;
    uint64_t ver = 0;
    rc = fs__obj_put_ver(fs, id, &f->obj.ino, kv_buf_slice(&f->obj.ctx), sync,
                         &nc, &ver);
    if (rc == 0) f->put_ver = ver;
    if (rc == 0) {
        f->dirty = false;
        f->npending = 0; /* the inode refers to them now */
        /* The put's context covers this write: the next one supersedes
         * it. Without one (other versions remain), read before then. */
        f->ctx_stale = nc.len == 0;
        if (nc.len) {
            kv_buf_release(&f->obj.ctx);
            f->obj.ctx = nc;
            kv_buf_init(&nc);
        }
    }
    kv_buf_release(&nc);
    return rc;
}

void fs__file_free(fs_file *f) {
    if (!f) return;
    while (f->dchunks) dchunk_unlink(f, f->dchunks);
    fs__obj_release(&f->obj);
    kv_buf_release(&f->cached);
    kv_free(f->pending);
    kv_free(f);
}
