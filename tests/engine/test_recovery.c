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
