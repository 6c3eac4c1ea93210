/*
 * Fixture plumbing shared by the Criterion tests: a temporary directory
 * made with mkdtemp and removed with nftw, the OK() and EXPECT_RC()
 * assertions that name the error code, a log sink that drops the error
 * lines tests provoke on purpose, and the 64-bit mixer that value
 * generators derive their bytes from.
 *
 * Each test file builds into its own executable, so everything here is
 * static (inline, so a file that uses only part of it compiles cleanly).
 * Nothing here checks the code under test; it only sets up and reports.
 */
#ifndef QFS_TESTS_TESTUTIL_H
#define QFS_TESTS_TESTUTIL_H

#include "base/base.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* expr must evaluate to 0; otherwise fail naming the code. */
#define OK(expr)                                                               \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        cr_assert_eq(rc_, 0, "%s returned %d (%s)", #expr, rc_,                \
                     kv_strerror(rc_));                                        \
    } while (0)

/* expr must evaluate to the code want. */
#define EXPECT_RC(expr, want)                                                  \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        cr_assert_eq(rc_, (want), "%s returned %d (%s), expected %d (%s)",     \
                     #expr, rc_, kv_strerror(rc_), (int)(want),                \
                     kv_strerror(want));                                       \
    } while (0)

/* Make a fresh directory "/tmp/<prefix>-XXXXXX" into buf (cap bytes). */
static inline void make_tmpdir(char *buf, size_t cap, const char *prefix) {
    int n = snprintf(buf, cap, "/tmp/%s-XXXXXX", prefix);
    cr_assert(n > 0 && (size_t)n < cap, "temp dir name too long: %s", prefix);
    cr_assert_not_null(mkdtemp(buf), "mkdtemp %s: %s", buf, strerror(errno));
}

static inline int rm_tree_entry(const char *path, const struct stat *st,
                                int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Remove path and everything below it. Best effort: a missing path or an
 * entry that cannot be removed is not a test failure. */
static inline void rm_tree(const char *path) {
    nftw(path, rm_tree_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void drop_log_line(kv_log_level lvl, const char *line,
                                 void *arg) {
    (void)lvl;
    (void)line;
    (void)arg;
}

/* Tests that provoke failures make the engine log errors by the hundred;
 * they are expected, so drop them unless QFS_TEST_LOG is set. */
static inline void quiet_log(void) {
    if (!getenv("QFS_TEST_LOG")) kv_log_set_sink(drop_log_line, NULL);
}

/* A bijective 64-bit mixer (the murmur3 finalizer): value bytes derived
 * from it need no stored copy to be checked. */
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

#endif
