/*
 * The one allocation wrapper. Failure injection is a process-wide atomic
 * counter: tests set it, run an operation, and check that every failure came
 * back as -ENOMEM with nothing corrupted.
 */
#include "base/base.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

static atomic_long fail_after = -1; /* -1: injection off */
static atomic_long injected;

void kv_alloc_fail_after(long n) {
    atomic_store(&fail_after, n);
}

long kv_alloc_injected_failures(void) {
    return atomic_load(&injected);
}

static bool should_fail(void) {
    long n = atomic_load_explicit(&fail_after, memory_order_relaxed);
    if (n < 0) return false;
    /* Count down to zero, then fail every call until reset. */
    while (n > 0) {
        if (atomic_compare_exchange_weak(&fail_after, &n, n - 1)) return false;
        if (n < 0) return false;
    }
    atomic_fetch_add(&injected, 1);
    return true;
}

void *kv_malloc(size_t n) {
    if (should_fail()) return NULL;
    return malloc(n ? n : 1);
}

void *kv_calloc(size_t count, size_t size) {
    if (should_fail()) return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *kv_realloc(void *p, size_t n) {
    if (should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void kv_free(void *p) {
    free(p);
}

char *kv_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = kv_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void *kv_map_alloc(size_t n) {
    if (should_fail()) return NULL;
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void kv_map_free(void *p, size_t n) {
    if (p) munmap(p, n ? n : 1);
}
