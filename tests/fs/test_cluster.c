/*
 * Two mounts on a 3-node cluster (N=3, R=2, W=2): what two machines
 * sharing one store rely on. Close-to-open visibility, concurrent writes
 * of one file surfacing as conflict files and their three resolutions,
 * concurrent creates in one directory, and a copy that goes on while a
 * node dies.
 */
#include "tests/fs/fsutil.h"

#include <fcntl.h>
#include <pthread.h>

static qcluster g_c;
static qmount g_a, g_b;

static void setup(void) {
    kv_log_set_level(KV_LOG_ERROR);
    qcluster_start(&g_c, 3);
    qmount_dirs(&g_a, "qfs-cla");
    qmount_dirs(&g_b, "qfs-clb");
    qmount_start(&g_a, g_c.join, "n=3,r=2,w=2");
    qmount_start(&g_b, g_c.join, "n=3,r=2,w=2");
}

static void teardown(void) {
    qmount_cleanup(&g_a);
    qmount_cleanup(&g_b);
    qcluster_stop(&g_c);
}

TestSuite(fscluster, .init = setup, .fini = teardown, .timeout = 300);

#define A_OK(...) cr_assert_eq(sh(g_a.dir, __VA_ARGS__), 0, __VA_ARGS__)
#define B_OK(...) cr_assert_eq(sh(g_b.dir, __VA_ARGS__), 0, __VA_ARGS__)

static void write_file(const char *dir, const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    cr_assert_eq(close(fd), 0, "close %s: %s", path, strerror(errno));
}

Test(fscluster, close_to_open_between_mounts) {
    write_file(g_a.dir, "f", "one\n");
    B_OK("test \"$(cat f)\" = one");
    write_file(g_a.dir, "f", "two, longer\n");
    B_OK("test \"$(cat f)\" = 'two, longer'");
    write_file(g_b.dir, "f", "3\n");
    A_OK("test \"$(cat f)\" = 3");
    A_OK("mkdir d && echo x > d/y");
    B_OK("test \"$(cat d/y)\" = x");
}

/* Both mounts open f (each reads its context), write, and close: the two
 * writes are concurrent and both must survive as f and f.conflict-1. */
static void make_conflict(void) {
    write_file(g_a.dir, "f", "base\n");
    B_OK("test \"$(cat f)\" = base");
    char pa[256], pb[256];
    snprintf(pa, sizeof pa, "%s/f", g_a.dir);
    snprintf(pb, sizeof pb, "%s/f", g_b.dir);
    int fa = open(pa, O_WRONLY), fb = open(pb, O_WRONLY);
    cr_assert(fa >= 0 && fb >= 0);
    cr_assert_eq(ftruncate(fa, 0), 0);
    cr_assert_eq(ftruncate(fb, 0), 0);
    cr_assert_eq(write(fa, "from-a\n", 7), 7);
    cr_assert_eq(write(fb, "from-b\n", 7), 7);
    cr_assert_eq(close(fa), 0);
    cr_assert_eq(close(fb), 0);
    /* Both mounts show both versions, whichever wins. */
    const char *check =
        "test \"$(ls | tr '\\n' ' ')\" = 'f f.conflict-1 ' && "
        "test \"$(cat f f.conflict-1 | sort | tr '\\n' ' ')\" = "
        "'from-a from-b ' && "
        "test \"$(getfattr --only-values -n user.quorumfs.siblings f)\" = 2";
    A_OK("%s", check);
    B_OK("%s", check);
}

Test(fscluster, concurrent_writes_become_conflict_files_resolved_by_mv) {
    make_conflict();
    A_OK("v=$(cat f.conflict-1) && mv f.conflict-1 f && "
         "test \"$(ls | tr '\\n' ' ')\" = 'f ' && test \"$(cat f)\" = \"$v\"");
    B_OK("test \"$(ls | tr '\\n' ' ')\" = 'f ' && "
         "test \"$(getfattr --only-values -n user.quorumfs.siblings f)\" = 1");
}

Test(fscluster, concurrent_writes_resolved_by_rm) {
    make_conflict();
    B_OK("v=$(cat f) && rm f.conflict-1 && "
         "test \"$(ls | tr '\\n' ' ')\" = 'f ' && test \"$(cat f)\" = \"$v\"");
    A_OK("test \"$(ls | tr '\\n' ' ')\" = 'f '");
}

Test(fscluster, concurrent_writes_resolved_by_a_write) {
    make_conflict();
    A_OK("echo settled > f && test \"$(ls | tr '\\n' ' ')\" = 'f '");
    B_OK("test \"$(ls | tr '\\n' ' ')\" = 'f ' && test \"$(cat f)\" = settled");
}

typedef struct creator {
    const char *dir;
    char prefix;
    int rc;
} creator;

static void *create_many(void *arg) {
    creator *c = arg;
    for (int i = 0; i < 400 && c->rc == 0; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/d/%c%03d", c->dir, c->prefix, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0 || write(fd, path, 1) != 1 || close(fd) != 0) c->rc = errno;
    }
    return NULL;
}

/* 800 names: both mounts add while level 0 splits (at 256) and below. */
Test(fscluster, concurrent_creates_in_one_directory_all_survive) {
    A_OK("mkdir d");
    B_OK("test -d d");
    creator ca = {g_a.dir, 'a', 0}, cb = {g_b.dir, 'b', 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, create_many, &ca);
    pthread_create(&tb, NULL, create_many, &cb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert_eq(ca.rc, 0, "mount a: %s", strerror(ca.rc));
    cr_assert_eq(cb.rc, 0, "mount b: %s", strerror(cb.rc));
    /* On failure the counts and odd names go to the log. */
    const char *all =
        "n=$(ls d | wc -l); c=$(ls d | grep -c conflict); "
        "u=$(ls d | sort -u | wc -l); "
        "m=$(for p in a b; do for i in $(seq -w 0 399); do "
        "test -f d/$p$i || echo $p$i; done; done); "
        "if [ $n = 800 ] && [ $c = 0 ] && [ $u = 800 ] && [ -z \"$m\" ]; "
        "then exit 0; fi; "
        "echo \"$PWD: $n names, $c conflicts, $u distinct, missing: $m\" >&2; "
        "ls d | grep conflict >&2; exit 1";
    A_OK("%s", all);
    B_OK("%s", all);
}

Test(fscluster, copy_goes_on_while_a_node_dies) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int rc = sh(g_a.dir, "cp -r /usr/include/linux tree");
        _exit(rc);
    }
    sleep_ms(300);
    qnode_kill(&g_c.n[2]);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "cp failed: %d", st);
    A_OK("diff -r /usr/include/linux tree");
    B_OK("diff -r /usr/include/linux tree");
}

Test(fscluster, without_a_quorum_calls_fail_with_eio_instead_of_hanging) {
    write_file(g_a.dir, "f", "kept\n");
    qnode_kill(&g_c.n[1]);
    qnode_kill(&g_c.n[2]);
    /* One node of three: no read or write quorum of 2. Each call fails
     * with EIO within the deadline (5 s); none hangs. */
    char path[256];
    snprintf(path, sizeof path, "%s/f", g_a.dir);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int fd = open(path, O_WRONLY | O_TRUNC);
    int err = errno;
    if (fd >= 0) {
        /* The open was answered from a cache: the write-back must fail. */
        cr_assert_eq(write(fd, "x", 1), 1);
        cr_assert_eq(close(fd), -1, "close without a write quorum succeeded");
        err = errno;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(err, EIO, "got %s", strerror(err));
    double secs = (double)(t1.tv_sec - t0.tv_sec) +
                  (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cr_assert_lt(secs, 12.0, "took %.1f s", secs);
    snprintf(path, sizeof path, "%s/new", g_a.dir);
    cr_assert_lt(open(path, O_WRONLY | O_CREAT, 0644), 0);
    cr_assert_eq(errno, EIO, "create: %s", strerror(errno));
}

Test(fscluster, a_conflict_version_is_read_only) {
    make_conflict();
    char path[256];
    snprintf(path, sizeof path, "%s/f.conflict-1", g_a.dir);
    cr_assert_lt(open(path, O_RDONLY | O_TRUNC), 0);
    cr_assert_eq(errno, EROFS, "O_TRUNC: %s", strerror(errno));
    cr_assert_lt(open(path, O_WRONLY), 0);
    cr_assert_eq(errno, EROFS, "O_WRONLY: %s", strerror(errno));
    cr_assert_neq(chmod(path, 0600), 0);
    /* Both versions are still there, unchanged. */
    A_OK("test \"$(cat f f.conflict-1 | sort | tr '\\n' ' ')\" = "
         "'from-a from-b '");
}

/* ---- a rival create, made deterministic ----
 * Two mounts creating one name at the same instant is a race a test
 * cannot time. Instead the test plays the other mount: it reads the root
 * directory's object, lets mount A create x, then writes its own version
 * of the root (the old one plus its own x) with the old context, which
 * makes it a sibling of A's, exactly what a concurrent create does. */

#include "fs/obj.h"
#include "replica/dvv.h"

typedef struct dirread {
    fs_inode ino;
    kv_buf ctx;
} dirread;

static void read_dir(rep_client *c, const fs_id *id, dirread *d) {
    kv_buf key = KV_BUF_INIT, raw = KV_BUF_INIT;
    OK(fs_key_inode("qfs", id, &key));
    OK(rep_client_get(c, kv_buf_slice(&key), NULL, &raw));
    dvv_set *s;
    dvv_ctx *x;
    OK(dvv_set_decode(kv_buf_slice(&raw), &s));
    cr_assert_eq(dvv_set_siblings(s), 1);
    OK(fs_inode_decode(dvv_set_sibling(s, 0).value.bytes, &d->ino));
    OK(dvv_set_join(s, &x));
    kv_buf_init(&d->ctx);
    OK(dvv_ctx_encode(x, &d->ctx));
    dvv_ctx_free(x);
    dvv_set_free(s);
    kv_buf_release(&raw);
    kv_buf_release(&key);
}

static void read_root(rep_client *c, dirread *d) {
    fs_id root;
    memset(&root, 0, sizeof root);
    read_dir(c, &root, d);
}

/* Another mount's create of name in directory dir (its level-0 object as
 * that mount read it: old). */
static void rival_add(rep_client *c, const fs_id *dir, dirread *old,
                      const char *name, const char *text) {
    fs_id id;
    fs_id_random(&id);
    fs_inode f;
    fs_inode_init(&f, FS_FILE);
    f.mode = 0644;
    f.size = strlen(text);
    f.mtime_ns = f.ctime_ns = f.atime_ns = 1;
    OK(kv_buf_set(&f.data, text, strlen(text)));
    kv_buf key = KV_BUF_INIT, val = KV_BUF_INIT;
    OK(fs_key_inode("qfs", &id, &key));
    OK(fs_inode_encode(&f, &val));
    rep_opts o = {.n = 3, .r = 2, .w = 2};
    OK(rep_client_put(c, kv_buf_slice(&key), kv_slice_make(NULL, 0),
                      kv_buf_slice(&val), &o));
    /* The other mount's root: what it read, plus its own name. */
    OK(fs_dir_add(&old->ino, name, &id, FS_FILE, 0x5157ull));
    OK(fs_key_inode("qfs", dir, &key));
    kv_buf_reset(&val);
    OK(fs_inode_encode(&old->ino, &val));
    OK(rep_client_put(c, kv_buf_slice(&key), kv_buf_slice(&old->ctx),
                      kv_buf_slice(&val), &o));
    fs_inode_release(&f);
    kv_buf_release(&val);
    kv_buf_release(&key);
}

static void rival_create(rep_client *c, dirread *old, const char *name,
                         const char *text) {
    fs_id root;
    memset(&root, 0, sizeof root);
    rival_add(c, &root, old, name, text);
}

Test(fscluster, concurrent_creates_of_one_name_show_both_and_keep_rivals) {
    rep_client *c;
    OK(rep_client_connect(g_c.n[0].addr, 5000, &c));
    A_OK("echo other > y");
    dirread before;
    read_root(c, &before);
    write_file(g_a.dir, "x", "mine\n");
    rival_create(c, &before, "x", "rival\n");
    const char *both = "test \"$(ls | tr '\\n' ' ')\" = 'x x.conflict-1 y ' && "
                       "test \"$(cat x x.conflict-1 | sort | tr '\\n' ' ')\" = "
                       "'mine rival '";
    A_OK("%s", both);
    B_OK("%s", both);
    /* A rename onto x replaces the x shown; the rival stays. */
    A_OK("v=$(cat x) && mv y x && test \"$(ls | wc -l)\" = 2 && "
         "test \"$(cat x x.conflict-1 | sort | tr '\\n' ' ')\" = "
         "\"$(printf 'other\\n%%s\\n' \"$([ \"$v\" = mine ] && echo rival "
         "|| echo mine)\" | sort | tr '\\n' ' ')\"");
    /* rm of the rival leaves one x. */
    B_OK("rm x.conflict-1 && test \"$(ls | tr '\\n' ' ')\" = 'x '");
    A_OK("test \"$(ls | tr '\\n' ' ')\" = 'x ' && test \"$(cat x)\" = other");
    fs_inode_release(&before.ino);
    kv_buf_release(&before.ctx);
    rep_client_close(c);
}

/* An add that raced a split: the test plays a mount that read level 0
 * of a directory just before it split and adds two names there, one of
 * them a name mount A made meanwhile (now in a shard below). Lookups read
 * the whole path, so both names are found, listed once and removable. */
Test(fscluster, an_add_that_raced_a_split_is_found_listed_and_removed) {
    A_OK("mkdir big && cd big && for i in $(seq 1 299); do : > f$i; done");
    rep_client *c;
    OK(rep_client_connect(g_c.n[0].addr, 5000, &c));
    dirread root, level0;
    read_root(c, &root);
    size_t pos = 0;
    ssize_t at = fs_dir_find(&root.ino, "big", &pos);
    cr_assert_geq(at, 0);
    fs_id big = root.ino.entries[at].id;
    read_dir(c, &big, &level0);
    cr_assert(level0.ino.split, "299 entries did not split level 0");
    cr_assert_eq(level0.ino.nentries, FS_SHARD_SPLIT);
    write_file(g_a.dir, "big/x", "mine\n");
    rival_add(c, &big, &level0, "late", "late\n");
    rival_add(c, &big, &level0, "x", "rival\n");
    const char *both = "cd big && test $(ls | wc -l) = 302 && "
                       "test $(ls | grep -c '^late$') = 1 && "
                       "test \"$(cat late)\" = late && "
                       "test \"$(cat x x.conflict-1 | sort | tr '\\n' ' ')\" = "
                       "'mine rival '";
    A_OK("%s", both);
    B_OK("%s", both);
    B_OK("cd big && rm late x.conflict-1 && test $(ls | wc -l) = 300");
    /* A listing is fresh; A's kernel may still hold the name late for
     * entry_timeout (1 s), as any cached entry. */
    A_OK("cd big && test $(ls | wc -l) = 300 && "
         "test $(ls | grep -c '^late$') = 0 && "
         "test $(ls | grep -c '^x') = 1 && rm -r * && cd .. && rmdir big && "
         "! test -e big");
    fs_inode_release(&root.ino);
    kv_buf_release(&root.ctx);
    fs_inode_release(&level0.ino);
    kv_buf_release(&level0.ctx);
    rep_client_close(c);
}

/* Two names for one object: what two mounts renaming one file at once
 * leave (each removed x and added its own new name). The test plays the
 * second mount: it adds y for x's object to the root it read. Removing
 * one name must not take the object from the other: objects go only when
 * nothing names them (the sweep). */
Test(fscluster, removing_one_of_two_names_keeps_the_object_for_the_other) {
    write_file(g_a.dir, "x", "shared\n");
    rep_client *c;
    OK(rep_client_connect(g_c.n[0].addr, 5000, &c));
    dirread root;
    read_root(c, &root);
    size_t pos = 0;
    ssize_t at = fs_dir_find(&root.ino, "x", &pos);
    cr_assert_geq(at, 0);
    fs_id id = root.ino.entries[at].id;
    OK(fs_dir_add(&root.ino, "y", &id, FS_FILE, 0x5157ull));
    kv_buf key = KV_BUF_INIT, val = KV_BUF_INIT;
    fs_id top;
    memset(&top, 0, sizeof top);
    OK(fs_key_inode("qfs", &top, &key));
    OK(fs_inode_encode(&root.ino, &val));
    rep_opts o = {.n = 3, .r = 2, .w = 2};
    OK(rep_client_put(c, kv_buf_slice(&key), kv_buf_slice(&root.ctx),
                      kv_buf_slice(&val), &o));
    B_OK("test \"$(cat x)\" = shared && test \"$(cat y)\" = shared");
    A_OK("rm x && test ! -e x");
    B_OK("test \"$(cat y)\" = shared && echo more >> y");
    A_OK("test \"$(cat y)\" = \"$(printf 'shared\\nmore')\"");
    fs_inode_release(&root.ino);
    kv_buf_release(&root.ctx);
    kv_buf_release(&val);
    kv_buf_release(&key);
    rep_client_close(c);
}

/* A directory removed on one mount takes no new names on another that
 * still holds it (an open descriptor, a cwd): they would go with it. */
Test(fscluster, a_directory_removed_elsewhere_takes_no_new_names) {
    A_OK("mkdir d && echo data > x");
    char path[256];
    snprintf(path, sizeof path, "%s/d", g_b.dir);
    int dfd = open(path, O_RDONLY | O_DIRECTORY);
    cr_assert_geq(dfd, 0, "open d on b: %s", strerror(errno));
    A_OK("rmdir d && ! test -e d");
    errno = 0;
    int fd = openat(dfd, "new", O_CREAT | O_WRONLY, 0644);
    int err = errno;
    if (fd >= 0) close(fd);
    cr_assert_lt(fd, 0, "a create in a removed directory succeeded");
    cr_assert_eq(err, ENOENT, "create: %s", strerror(err));
    char from[256];
    snprintf(from, sizeof from, "%s/x", g_b.dir);
    errno = 0;
    cr_assert_neq(renameat(AT_FDCWD, from, dfd, "x"), 0,
                  "a rename into a removed directory succeeded");
    cr_assert_eq(errno, ENOENT, "rename: %s", strerror(errno));
    close(dfd);
    B_OK("test \"$(cat x)\" = data");
}

/* Regression (review): lookups racing forgets and replaced names once
 * freed a node another thread was using. Mount B keeps replacing a name
 * while 8 threads on mount A, with no kernel caching, stat it. */
typedef struct stater {
    const char *path;
    volatile bool *stop;
    long n;
} stater;

static void *stat_loop(void *arg) {
    stater *s = arg;
    struct stat st;
    while (!*s->stop) {
        stat(s->path, &st); /* ENOENT between rename steps is fine */
        s->n++;
    }
    return NULL;
}

Test(fscluster, lookups_racing_renames_keep_the_mount_alive) {
    cr_assert_eq(qmount_stop(&g_a), 0);
    qmount_start(&g_a, g_c.join, "n=3,r=2,w=2,entry_timeout=0,attr_timeout=0");
    write_file(g_b.dir, "target", "0\n");
    char path[256];
    snprintf(path, sizeof path, "%s/target", g_a.dir);
    volatile bool stop = false;
    stater s[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        s[i] = (stater){path, &stop, 0};
        pthread_create(&th[i], NULL, stat_loop, &s[i]);
    }
    for (int i = 0; i < 60; i++) {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "t%d", i);
        write_file(g_b.dir, tmp, "x\n");
        char from[256], to[256];
        snprintf(from, sizeof from, "%s/%s", g_b.dir, tmp);
        snprintf(to, sizeof to, "%s/target", g_b.dir);
        cr_assert_eq(rename(from, to), 0, "rename: %s", strerror(errno));
    }
    stop = true;
    long total = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        total += s[i].n;
    }
    cr_assert_gt(total, 0);
    cr_assert(is_fuse_mount(g_a.dir), "mount a died");
    A_OK("test \"$(cat target)\" = x && test \"$(ls | tr '\\n' ' ')\" = "
         "'target '");
}
