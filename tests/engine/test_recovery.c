/*
 * Recovery against a damaged MANIFEST: a manifest cut short must never
 * open as a store that silently lost acknowledged data, and a failed open
 * must not overwrite any file (a stale next-file number once made recovery
 * create a table over an existing WAL).
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[64];

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-recovery");
    quiet_log();
}

static void teardown(void) {
    rm_tree(g_dir);
}

TestSuite(recovery, .init = setup, .fini = teardown);

enum { KEYS = 3000 };

static void key_of(char *k, int i) {
    snprintf(k, 32, "key%06d", i);
}

/* A store whose manifest holds many edits, several retiring WALs. */
static void build(const char *dir) {
    eng_options o;
    eng_options_init(&o);
    o.sync = ENG_SYNC_NONE;
    o.memtable_bytes = 32 * 1024;
    o.l0_compaction_trigger = 2;
    o.level1_bytes = 64 * 1024;
    eng_db *db;
    cr_assert_eq(eng_db_open(dir, &o, &db), 0);
    char k[32], v[64];
    for (int i = 0; i < KEYS; i++) {
        key_of(k, i);
        snprintf(v, sizeof v, "value-%d-%040d", i, i);
        cr_assert_eq(
            eng_db_put(db, kv_slice_str(k), kv_slice_str(v), ENG_WF_DEFAULT),
            0);
    }
    cr_assert_eq(eng_db_flush(db), 0);
    cr_assert_eq(eng_db_close(db), 0);
}

static char *manifest_path(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    char *out = NULL;
    while ((de = readdir(d)))
        if (strncmp(de->d_name, "MANIFEST-", 9) == 0) {
            out = malloc(strlen(dir) + strlen(de->d_name) + 2);
            sprintf(out, "%s/%s", dir, de->d_name);
        }
    closedir(d);
    cr_assert_not_null(out, "no manifest in %s", dir);
    return out;
}

/* Sum of (size * name hash) over the files: changes if any file changes. */
static unsigned long long fingerprint(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    unsigned long long fp = 0;
    char p[512];
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, "LOCK") == 0) continue;
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        cr_assert_eq(stat(p, &st), 0);
        fp += (unsigned long long)(st.st_size + 1) *
              kv_hash64(de->d_name, strlen(de->d_name), 0);
    }
    closedir(d);
    return fp;
}

Test(recovery, manifest_cut_short_never_loses_data_silently) {
    char src[96], trial[128], cmd[300];
    snprintf(src, sizeof src, "%s/src", g_dir);
    build(src);
    char *m = manifest_path(src);
    struct stat st;
    cr_assert_eq(stat(m, &st), 0);
    off_t full = st.st_size;
    free(m);
    int corrupt = 0, opened = 0;
    /* Cut the manifest at many points; each trial starts from a copy. */
    for (off_t cut = 0; cut < full; cut += full / 25 + 1) {
        snprintf(trial, sizeof trial, "%s/t%lld", g_dir, (long long)cut);
        snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", src, trial);
        cr_assert_eq(system(cmd), 0);
        m = manifest_path(trial);
        cr_assert_eq(truncate(m, cut), 0);
        free(m);
        unsigned long long before = fingerprint(trial);
        eng_options o;
        eng_options_init(&o);
        o.create_if_missing = false;
        eng_db *db;
        int rc = eng_db_open(trial, &o, &db);
        if (rc != 0) {
            cr_assert(rc == KV_ECORRUPT, "cut %lld: open returned %s",
                      (long long)cut, kv_strerror(rc));
            cr_assert_eq(fingerprint(trial), before,
                         "cut %lld: a failed open changed files",
                         (long long)cut);
            corrupt++;
            continue;
        }
        /* It opened: then every key must be there. */
        opened++;
        kv_buf v = KV_BUF_INIT;
        char k[32];
        for (int i = 0; i < KEYS; i++) {
            key_of(k, i);
            cr_assert_eq(eng_db_get(db, NULL, kv_slice_str(k), &v), 0,
                         "cut %lld: key %d lost", (long long)cut, i);
        }
        kv_buf_release(&v);
        cr_assert_eq(eng_db_close(db), 0);
    }
    fprintf(stderr, "recovery: %d cuts reported corrupt, %d opened intact\n",
            corrupt, opened);
    cr_assert_gt(corrupt, 0);
}

static int count_files(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    int n = 0;
    size_t sl = strlen(suffix);
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        n += l > sl && strcmp(de->d_name + l - sl, suffix) == 0;
    }
    closedir(d);
    return n;
}

static void check_keys(eng_db *db, int n) {
    kv_buf v = KV_BUF_INIT;
    char k[32], want[64];
    for (int i = 0; i < n; i++) {
        key_of(k, i);
        snprintf(want, sizeof want, "value-%d-%040d", i, i);
        cr_assert_eq(eng_db_get(db, NULL, kv_slice_str(k), &v), 0, "key %d", i);
        cr_assert(kv_slice_eq(kv_buf_slice(&v), kv_slice_str(want)), "key %d",
                  i);
    }
    kv_buf_release(&v);
}

/* Obsolete WALs are reused in place; every write survives a reopen, the
 * directory holds the live WAL and at most one kept for reuse, and the
 * older records left in a reused file are never replayed. */
Test(recovery, reused_wals_keep_every_write) {
    char dir[96];
    snprintf(dir, sizeof dir, "%s/reuse", g_dir);
    build(dir);
    eng_options o;
    eng_options_init(&o);
    o.memtable_bytes = 32 * 1024;
    eng_db *db;
    cr_assert_eq(eng_db_open(dir, &o, &db), 0);
    char k[32], v[64];
    for (int i = 0; i < KEYS; i++) { /* overwrite: same values, synced */
        key_of(k, i);
        snprintf(v, sizeof v, "value-%d-%040d", i, i);
        cr_assert_eq(
            eng_db_put(db, kv_slice_str(k), kv_slice_str(v), ENG_WF_DEFAULT),
            0);
    }
    /* A few deletes that a replay of older records would undo. */
    for (int i = 0; i < 10; i++) {
        key_of(k, KEYS + i);
        cr_assert_eq(
            eng_db_put(db, kv_slice_str(k), kv_slice_str("x"), ENG_WF_DEFAULT),
            0);
        cr_assert_eq(eng_db_delete(db, kv_slice_str(k), ENG_WF_DEFAULT), 0);
    }
    eng_stats s;
    cr_assert_eq(eng_db_stats(db, &s), 0);
    cr_assert_gt(s.wals_reused, 5, "reused %llu",
                 (unsigned long long)s.wals_reused);
    cr_assert_leq(count_files(dir, ".log"), 3);
    /* Reopen without close: what a crash leaves (the process keeps the
     * page cache, so this checks replay, not durability). */
    check_keys(db, KEYS);
    cr_assert_eq(eng_db_close(db), 0);
    cr_assert_eq(eng_db_open(dir, &o, &db), 0);
    check_keys(db, KEYS);
    kv_buf got = KV_BUF_INIT;
    for (int i = 0; i < 10; i++) {
        key_of(k, KEYS + i);
        cr_assert_eq(eng_db_get(db, NULL, kv_slice_str(k), &got), KV_ENOTFOUND);
    }
    kv_buf_release(&got);
    cr_assert_eq(eng_db_close(db), 0);
}

/* A WAL whose header names another log number is refused at open (it is
 * not the file the store wrote under that name), and nothing is changed. */
Test(recovery, wal_with_foreign_log_number_is_refused) {
    char dir[96], cmd[400];
    snprintf(dir, sizeof dir, "%s/foreign", g_dir);
    eng_options o;
    eng_options_init(&o);
    eng_db *db;
    cr_assert_eq(eng_db_open(dir, &o, &db), 0);
    cr_assert_eq(
        eng_db_put(db, kv_slice_str("a"), kv_slice_str("1"), ENG_WF_DEFAULT),
        0);
    cr_assert_eq(eng_db_close(db), 0);
    /* The store's one WAL, copied under the next higher number. */
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *de;
    unsigned long long num = 0;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".log")) num = strtoull(de->d_name, NULL, 10);
    closedir(d);
    cr_assert_gt(num, 0);
    snprintf(cmd, sizeof cmd, "cp '%s/%06llu.log' '%s/%06llu.log'", dir, num,
             dir, num + 1);
    cr_assert_eq(system(cmd), 0);
    unsigned long long before = fingerprint(dir);
    o.create_if_missing = false;
    cr_assert_eq(eng_db_open(dir, &o, &db), KV_ECORRUPT);
    cr_assert_eq(fingerprint(dir), before);
}
