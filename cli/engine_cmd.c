/*
 * quorumfs engine: drive a node-local engine store directly. Useful to
 * inspect a node's data directory, and the quick start's demo until the
 * filesystem exists. Options come before the directory:
 *   --style leveled|tiered   compaction style of a new store
 *   --sync none|group|always WAL sync mode
 */
#include "cli/cli.h"
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define ERR(...) fprintf(stderr, "quorumfs engine: " __VA_ARGS__)

static int open_store(const char *dir, const eng_options *o, eng_db **db) {
    int rc = eng_db_open(dir, o, db);
    if (rc) ERR("cannot open store '%s': %s\n", dir, kv_strerror(rc));
    return rc;
}

static int close_store(eng_db *db) {
    int rc = eng_db_close(db);
    if (rc) ERR("close: %s\n", kv_strerror(rc));
    return rc;
}

static void fmt_key(char *out, size_t n, uint64_t i) {
    snprintf(out, n, "user:%010llu", (unsigned long long)i);
}

/* Deterministic value for key i at version ver, so the demo can verify. */
static size_t fmt_value(char *out, size_t n, uint64_t i, int ver) {
    int len = snprintf(out, n, "{\"id\":%llu,\"version\":%d,\"state\":\"%s\"}",
                       (unsigned long long)i, ver, (i % 3) ? "on" : "off");
    return (size_t)len;
}

static int demo(const char *dir, eng_options *o) {
    eng_db *db = NULL;
    eng_batch *b = NULL;
    kv_buf val = KV_BUF_INIT;
    const uint64_t n = 200000;
    char k[32], v[128];
    int rc;
    uint64_t t0 = kv_now_ns();
    /* A small memtable so the demo exercises flushes and compactions. */
    o->memtable_bytes = 4u << 20;
    o->level1_bytes = 16u << 20;
    o->table_bytes = 4u << 20;
    if ((rc = open_store(dir, o, &db))) return 2;
    printf("store: %s\n", dir);
    if ((rc = eng_batch_new(&b))) goto out;
    for (uint64_t i = 0; i < n; i++) {
        fmt_key(k, sizeof k, i);
        size_t vl = fmt_value(v, sizeof v, i, 1);
        if ((rc = eng_batch_put(b, kv_slice_str(k), kv_slice_make(v, vl))))
            goto out;
        if (eng_batch_count(b) == 1000 || i + 1 == n) {
            if ((rc = eng_db_write(db, b, ENG_WF_DEFAULT))) goto out;
            eng_batch_clear(b);
        }
    }
    double secs = (double)(kv_now_ns() - t0) / 1e9;
    printf("wrote %llu keys in batches of 1000 (group commit): %.0f keys/s\n",
           (unsigned long long)n, (double)n / secs);
    for (uint64_t i = 0; i < n; i += 10) {
        fmt_key(k, sizeof k, i);
        size_t vl = fmt_value(v, sizeof v, i, 2);
        if ((rc = eng_db_put(db, kv_slice_str(k), kv_slice_make(v, vl),
                             ENG_WF_SYNC_NONE)))
            goto out;
    }
    for (uint64_t i = 5; i < n; i += 100) {
        fmt_key(k, sizeof k, i);
        if ((rc = eng_db_delete(db, kv_slice_str(k), ENG_WF_SYNC_NONE)))
            goto out;
    }
    printf("updated every 10th key, deleted every 100th\n");
    if ((rc = close_store(db))) {
        db = NULL;
        goto out;
    }
    db = NULL;
    if ((rc = open_store(dir, o, &db))) goto out;
    printf("reopened (recovery replayed the write-ahead log)\n");
    uint64_t bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        fmt_key(k, sizeof k, i);
        int ver = i % 10 == 0 ? 2 : 1;
        size_t vl = fmt_value(v, sizeof v, i, ver);
        rc = eng_db_get(db, NULL, kv_slice_str(k), &val);
        bool want_absent = i % 100 == 5;
        if (want_absent ? rc != KV_ENOTFOUND
                        : (rc != 0 || !kv_slice_eq(kv_buf_slice(&val),
                                                   kv_slice_make(v, vl))))
            bad++;
    }
    printf("verified %llu keys after reopen: %llu wrong\n",
           (unsigned long long)n, (unsigned long long)bad);
    if ((rc = eng_db_compact_range(db, NULL, NULL))) goto out;
    printf("compacted the whole store\n");
    eng_iter *it;
    if ((rc = eng_iter_new(db, NULL, &it))) goto out;
    printf("scan from user:0000000003:\n");
    int shown = 0;
    for (eng_iter_seek(it, kv_slice_str("user:0000000003"));
         eng_iter_valid(it) && shown < 5; eng_iter_next(it), shown++) {
        kv_slice ik = eng_iter_key(it), iv = eng_iter_value(it);
        printf("  %.*s = %.*s\n", (int)ik.len, (const char *)ik.ptr,
               (int)iv.len, (const char *)iv.ptr);
    }
    rc = eng_iter_status(it);
    eng_iter_free(it);
    if (rc) goto out;
    kv_buf st = KV_BUF_INIT;
    if ((rc = eng_db_stats_format(db, &st)) == 0)
        printf("stats:\n%.*s", (int)st.len, (const char *)st.ptr);
    kv_buf_release(&st);
    if (bad) rc = KV_ECORRUPT;
out:
    if (rc) ERR("demo failed: %s\n", kv_strerror(rc));
    eng_batch_free(b);
    kv_buf_release(&val);
    if (db && close_store(db) && !rc) rc = -EIO;
    if (rc == 0) printf("demo ok\n");
    return rc ? 2 : 0;
}

static int scan(eng_db *db, const char *start, const char *end) {
    eng_iter *it;
    int rc = eng_iter_new(db, NULL, &it);
    if (rc) return rc;
    if (start)
        eng_iter_seek(it, kv_slice_str(start));
    else
        eng_iter_seek_first(it);
    for (; eng_iter_valid(it); eng_iter_next(it)) {
        kv_slice k = eng_iter_key(it), v = eng_iter_value(it);
        if (end && kv_slice_cmp(k, kv_slice_str(end)) >= 0) break;
        fwrite(k.ptr, 1, k.len, stdout);
        fputc('\t', stdout);
        fwrite(v.ptr, 1, v.len, stdout);
        fputc('\n', stdout);
    }
    rc = eng_iter_status(it);
    eng_iter_free(it);
    return rc;
}

int cli_engine(int argc, char **argv) {
    eng_options o;
    eng_options_init(&o);
    int i = 0;
    for (; i + 1 < argc && strncmp(argv[i + 1], "--", 2) == 0; i += 2) {
        const char *opt = argv[i + 1], *arg = i + 2 < argc ? argv[i + 2] : "";
        if (strcmp(opt, "--style") == 0 && strcmp(arg, "leveled") == 0)
            o.style = ENG_COMPACT_LEVELED;
        else if (strcmp(opt, "--style") == 0 && strcmp(arg, "tiered") == 0)
            o.style = ENG_COMPACT_TIERED;
        else if (strcmp(opt, "--sync") == 0 && strcmp(arg, "none") == 0)
            o.sync = ENG_SYNC_NONE;
        else if (strcmp(opt, "--sync") == 0 && strcmp(arg, "group") == 0)
            o.sync = ENG_SYNC_GROUP;
        else if (strcmp(opt, "--sync") == 0 && strcmp(arg, "always") == 0)
            o.sync = ENG_SYNC_ALWAYS;
        else {
            ERR("bad option '%s %s'\n", opt, arg);
            return 2;
        }
    }
    /* argv[0] is the verb; options sat between it and the directory. */
    if (argc < 1) {
        ERR("missing command (demo, put, get, del, scan, stats, compact)\n");
        return 2;
    }
    const char *verb = argv[0];
    argv += i + 1;
    argc -= i + 1;
    if (argc < 1) {
        ERR("%s: missing store directory\n", verb);
        return 2;
    }
    const char *dir = argv[0];
    if (strcmp(verb, "demo") == 0) return demo(dir, &o);

    struct {
        const char *name;
        int min, max;
    } verbs[] = {{"put", 2, 3},  {"get", 2, 2},   {"del", 2, 2},
                 {"scan", 1, 3}, {"stats", 1, 1}, {"compact", 1, 1}};
    int vi = -1;
    for (size_t j = 0; j < KV_ARRAY_LEN(verbs); j++)
        if (strcmp(verb, verbs[j].name) == 0) vi = (int)j;
    if (vi < 0) {
        ERR("unknown command '%s'\n", verb);
        return 2;
    }
    if (argc < verbs[vi].min || argc > verbs[vi].max) {
        ERR("%s: wrong number of arguments (see quorumfs(1))\n", verb);
        return 2;
    }
    /* Only put creates a store; reading a mistyped path should say so. */
    o.create_if_missing = strcmp(verb, "put") == 0;
    eng_db *db;
    if (open_store(dir, &o, &db)) return 2;
    kv_buf val = KV_BUF_INIT;
    int rc = 0, code = 0;
    if (strcmp(verb, "put") == 0) {
        if (argc == 3)
            rc = kv_buf_set(&val, argv[2], strlen(argv[2]));
        else
            rc = cli_read_stdin(ENG_MAX_VALUE, &val);
        if (rc == 0)
            rc = eng_db_put(db, kv_slice_str(argv[1]), kv_buf_slice(&val),
                            ENG_WF_SYNC_GROUP);
    } else if (strcmp(verb, "get") == 0) {
        rc = eng_db_get(db, NULL, kv_slice_str(argv[1]), &val);
        if (rc == 0) {
            fwrite(val.ptr, 1, val.len, stdout);
            if (isatty(STDOUT_FILENO)) fputc('\n', stdout);
        } else if (rc == KV_ENOTFOUND) {
            ERR("'%s' not found\n", argv[1]);
            code = 1;
            rc = 0;
        }
    } else if (strcmp(verb, "del") == 0) {
        rc = eng_db_delete(db, kv_slice_str(argv[1]), ENG_WF_SYNC_GROUP);
    } else if (strcmp(verb, "scan") == 0) {
        rc = scan(db, argc > 1 ? argv[1] : NULL, argc > 2 ? argv[2] : NULL);
    } else if (strcmp(verb, "stats") == 0) {
        if ((rc = eng_db_stats_format(db, &val)) == 0)
            fwrite(val.ptr, 1, val.len, stdout);
    } else if (strcmp(verb, "compact") == 0) {
        rc = eng_db_compact_range(db, NULL, NULL);
    }
    if (rc) ERR("%s: %s\n", verb, kv_strerror(rc));
    kv_buf_release(&val);
    if (close_store(db) && !rc) rc = -EIO;
    return rc ? 2 : code;
}
