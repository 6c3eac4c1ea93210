/*
 * The engine's file layer: thin wrappers over POSIX calls that loop on short
 * writes and EINTR, and consult an optional eng_fault so tests can make any
 * k-th write, sync, open, rename or read fail with the errno of their choice.
 * No caching or buffering happens here; callers build whole records first.
 */
#include "engine/engine_int.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int eng_fault_new(eng_fault **out) {
    eng_fault *f = kv_calloc(1, sizeof *f);
    if (!f) return -ENOMEM;
    *out = f;
    return 0;
}

void eng_fault_free(eng_fault *f) {
    kv_free(f);
}

void eng_fault_arm(eng_fault *f, int mask, long after, int err, bool sticky) {
    atomic_store(&f->armed, false);
    atomic_store(&f->mask, mask);
    atomic_store(&f->countdown, after);
    atomic_store(&f->err, err > 0 ? err : EIO);
    atomic_store(&f->sticky, sticky);
    atomic_store(&f->armed, true);
}

void eng_fault_disarm(eng_fault *f) {
    atomic_store(&f->armed, false);
}

long eng_fault_hits(const eng_fault *f) {
    return atomic_load(&f->hits);
}

int eng__fault_check(eng_fault *f, int kind) {
    if (!f || !atomic_load_explicit(&f->armed, memory_order_acquire)) return 0;
    if (!(atomic_load(&f->mask) & kind)) return 0;
    long left = atomic_fetch_sub(&f->countdown, 1);
    if (left > 0) return 0;
    if (left < 0 && !atomic_load(&f->sticky)) return 0;
    atomic_fetch_add(&f->hits, 1);
    return -atomic_load(&f->err);
}

static int file_new(eng_fault *fault, const char *path, int fd, uint64_t size,
                    eng_file **out) {
    eng_file *f = kv_calloc(1, sizeof *f);
    char *p = kv_strdup(path);
    if (!f || !p) {
        kv_free(f);
        kv_free(p);
        close(fd);
        return -ENOMEM;
    }
    f->fd = fd;
    f->fault = fault;
    f->size = size;
    f->path = p;
    *out = f;
    return 0;
}

static int open_fd(eng_fault *fault, const char *path, int flags) {
    int rc = eng__fault_check(fault, ENG_FAULT_OPEN);
    if (rc) return rc;
    int fd;
    do {
        fd = open(path, flags | O_CLOEXEC, 0644);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int eng__file_create(eng_fault *fault, const char *path, eng_file **out) {
    *out = NULL;
    int fd = open_fd(fault, path, O_WRONLY | O_CREAT | O_TRUNC);
    if (fd < 0) return fd;
    return file_new(fault, path, fd, 0, out);
}

int eng__file_open_append(eng_fault *fault, const char *path, eng_file **out) {
    *out = NULL;
    int fd = open_fd(fault, path, O_WRONLY);
    if (fd < 0) return fd;
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return file_new(fault, path, fd, (uint64_t)end, out);
}

int eng__file_open_read(eng_fault *fault, const char *path, eng_file **out) {
    *out = NULL;
    int fd = open_fd(fault, path, O_RDONLY);
    if (fd < 0) return fd;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return file_new(fault, path, fd, (uint64_t)st.st_size, out);
}

int eng__file_append(eng_file *f, const void *p, size_t n) {
    int rc = eng__fault_check(f->fault, ENG_FAULT_WRITE);
    if (rc) return rc;
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = pwrite(f->fd, b, n, (off_t)f->size);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        b += w;
        n -= (size_t)w;
        f->size += (uint64_t)w;
    }
    return 0;
}

int eng__file_pread(eng_file *f, uint64_t off, void *buf, size_t n) {
    int rc = eng__fault_check(f->fault, ENG_FAULT_READ);
    if (rc) return rc;
    uint8_t *b = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(f->fd, b + done, n - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (r == 0) {
            kv_error(ENG_MOD,
                     "cannot read '%s': short read at offset %llu (%zu of "
                     "%zu bytes)",
                     f->path, (unsigned long long)off, done, n);
            return KV_ECORRUPT;
        }
        done += (size_t)r;
    }
    return 0;
}

int eng__file_sync(eng_file *f) {
    int rc = eng__fault_check(f->fault, ENG_FAULT_SYNC);
    if (rc) return rc;
    while (fdatasync(f->fd) < 0) {
        if (errno != EINTR) return -errno;
    }
    return 0;
}

void eng__file_writeback(eng_file *f, uint64_t off, uint64_t n) {
    /* Advisory: an error here (EINVAL on a filesystem without it) leaves
     * the whole range to the final sync, as before. */
    (void)sync_file_range(f->fd, (off_t)off, (off_t)n, SYNC_FILE_RANGE_WRITE);
}

int eng__file_truncate(eng_file *f, uint64_t size) {
    while (ftruncate(f->fd, (off_t)size) < 0) {
        if (errno != EINTR) return -errno;
    }
    f->size = size;
    return 0;
}

void eng__file_close(eng_file *f) {
    if (!f) return;
    close(f->fd);
    kv_free(f->path);
    kv_free(f);
}

int eng__env_rename(eng_fault *fault, const char *from, const char *to) {
    int rc = eng__fault_check(fault, ENG_FAULT_RENAME);
    if (rc) return rc;
    return rename(from, to) < 0 ? -errno : 0;
}

int eng__env_sync_dir(eng_fault *fault, const char *dir) {
    int rc = eng__fault_check(fault, ENG_FAULT_SYNC);
    if (rc) return rc;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int eng__env_unlink(const char *path) {
    return unlink(path) < 0 ? -errno : 0;
}

int eng__env_read_all(eng_fault *fault, const char *path, size_t max,
                      kv_buf *out) {
    eng_file *f;
    int rc = eng__file_open_read(fault, path, &f);
    if (rc) return rc;
    if (f->size > max) {
        kv_error(ENG_MOD, "cannot read '%s': %llu bytes exceeds %zu", path,
                 (unsigned long long)f->size, max);
        rc = KV_ECORRUPT;
        goto out;
    }
    kv_buf_reset(out);
    rc = kv_buf_reserve(out, (size_t)f->size);
    if (rc) goto out;
    rc = eng__file_pread(f, 0, out->ptr, (size_t)f->size);
    if (rc == 0) out->len = (size_t)f->size;
out:
    eng__file_close(f);
    return rc;
}
