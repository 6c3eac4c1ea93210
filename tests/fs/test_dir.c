/*
 * Directory views (fs/dir.c) in memory, without a store: where an add
 * goes in a split directory, which actor it uses, how the objects of a
 * view read as one set, and which copies a directory node keeps. The
 * store side of views is tested on real mounts (test_syscalls.c,
 * test_cluster.c).
 */
#include "fs/fs_int.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OK(expr) cr_assert_eq((expr), 0, "%s", #expr)

static qfs_fs *g_fs;
static fs_id g_dir = {{7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}};

static void setup(void) {
    g_fs = calloc(1, sizeof *g_fs);
    cr_assert_not_null(g_fs);
    pthread_mutex_init(&g_fs->actor_mu, NULL);
    g_fs->actors = calloc(FS_ACTORS, sizeof *g_fs->actors);
    cr_assert_not_null(g_fs->actors);
}

static void teardown(void) {
    pthread_mutex_destroy(&g_fs->actor_mu);
    free(g_fs->actors);
    free(g_fs);
}

TestSuite(dview, .init = setup, .fini = teardown);

/* Put an object into v as if read: a copy of ino (NULL: empty). */
static fs_shard *have(fs_dview *v, unsigned level, uint64_t index,
                      const fs_inode *ino) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4;
        v->sh = realloc(v->sh, v->cap * sizeof *v->sh);
        cr_assert_not_null(v->sh);
    }
    fs_shard *s = &v->sh[v->n++];
    memset(s, 0, sizeof *s);
    s->level = level;
    s->index = index;
    fs__obj_init(&s->obj);
    if (ino) {
        fs_inode_release(&s->obj.ino);
        OK(fs_inode_copy(&s->obj.ino, ino));
    } else {
        fs_inode_init(&s->obj.ino, FS_DIR);
    }
    s->at_ns = kv_now_ns();
    v->all_ok = false;
    return s;
}

static fs_id id_of(int n) {
    fs_id id;
    memset(&id, 0, sizeof id);
    id.b[0] = 0xaa;
    id.b[15] = (uint8_t)n;
    id.b[14] = (uint8_t)(n >> 8);
    return id;
}

static void add(fs_dview *v, const char *name, int n, const fs_id *replace) {
    fs_id id = id_of(n);
    OK(fs__dview_add(g_fs, v, name, &id, FS_FILE, replace));
}

static size_t count_named(const fs_inode *d, const char *name) {
    size_t n = 0;
    for (size_t i = 0; i < d->nentries; i++)
        n += strcmp(d->entries[i].name, name) == 0;
    return n;
}

static uint64_t level1(const char *name) {
    return fs_shard_index(fs_name_hash(&g_dir, name), 1);
}

Test(dview, an_actor_builds_on_its_own_last_add) {
    fs_dview v;
    fs__dview_init(&v, &g_dir);
    fs_shard *top = have(&v, 0, 0, NULL);
    add(&v, "a", 1, NULL);
    add(&v, "b", 2, NULL);
    add(&v, "c", 3, NULL);
    cr_assert_eq(top->obj.ino.nclock, 1, "one actor for adds in a row");
    cr_assert_eq(top->obj.ino.clock[0].counter, 3);
    cr_assert(top->changed);
    fs__dview_release(&v);
}

/* A copy that lacks the actor's last add (a read that raced it, a sloppy
 * quorum) must not be added to with that actor: the dot would be used
 * twice, and a merge would drop both entries. */
Test(dview, an_add_to_a_copy_without_the_last_add_takes_a_new_actor) {
    fs_dview v, old;
    fs__dview_init(&v, &g_dir);
    fs__dview_init(&old, &g_dir);
    fs_shard *top = have(&v, 0, 0, NULL);
    add(&v, "a", 1, NULL);
    fs_shard *stale = have(&old, 0, 0, &top->obj.ino); /* has a, not b */
    add(&v, "b", 2, NULL);
    add(&old, "c", 3, NULL);
    cr_assert_eq(stale->obj.ino.nclock, 2, "the stale copy got a new actor");
    cr_assert_neq(stale->obj.ino.clock[0].actor, stale->obj.ino.clock[1].actor);

    /* Both versions stored as siblings merge with every name. */
    fs_inode merged;
    OK(fs_inode_copy(&merged, &top->obj.ino));
    OK(fs_dir_merge(&merged, &stale->obj.ino));
    cr_assert_eq(merged.nentries, 3, "a merge kept %zu of 3 entries",
                 merged.nentries);
    cr_assert_eq(count_named(&merged, "b"), 1);
    cr_assert_eq(count_named(&merged, "c"), 1);

    /* The mount remembers one actor per object, now the stale copy's: an
     * add to the other copy, which lacks that actor's add, takes another
     * new one rather than reuse a dot. */
    uint64_t before = top->obj.ino.nclock;
    add(&v, "d", 4, NULL);
    cr_assert_eq(top->obj.ino.nclock, before + 1);
    fs_inode_release(&merged);
    OK(fs_inode_copy(&merged, &top->obj.ino));
    OK(fs_dir_merge(&merged, &stale->obj.ino));
    cr_assert_eq(merged.nentries, 4);
    fs_inode_release(&merged);
    fs__dview_release(&old);
    fs__dview_release(&v);
}

Test(dview, an_object_splits_at_the_add_that_reaches_the_split_count) {
    fs_dview v;
    fs__dview_init(&v, &g_dir);
    fs_shard *top = have(&v, 0, 0, NULL);
    char name[32];
    for (unsigned i = 0; i + 1 < FS_SHARD_SPLIT; i++) {
        snprintf(name, sizeof name, "n%u", i);
        add(&v, name, (int)i, NULL);
    }
    cr_assert_not(top->obj.ino.split);
    add(&v, "last", 9999, NULL);
    cr_assert(top->obj.ino.split);
    cr_assert_eq(top->obj.ino.nentries, FS_SHARD_SPLIT);

    /* The next add goes one level down, on its path. */
    uint64_t at = level1("below");
    fs_shard *s = have(&v, 1, at, NULL);
    top = fs__dview_find(&v, 0, 0);
    add(&v, "below", 7777, NULL);
    cr_assert_eq(top->obj.ino.nentries, FS_SHARD_SPLIT);
    s = fs__dview_find(&v, 1, at);
    cr_assert_eq(s->obj.ino.nentries, 1);
    cr_assert_eq(count_named(&s->obj.ino, "below"), 1);
    const fs_inode *path[FS_SHARD_LEVELS + 1];
    cr_assert_eq(fs__dview_path_of(&v, "below", path, FS_SHARD_LEVELS + 1), 2);
    cr_assert_eq(path[0], &top->obj.ino);
    cr_assert_eq(path[1], &s->obj.ino);
    fs__dview_release(&v);
}

/* A split object holding x (two rivals) and the shard below: replacing
 * one x takes it out of level 0, keeps the rival, and adds below. */
Test(dview, a_replace_removes_the_old_entry_above_and_keeps_rivals) {
    fs_inode top, other;
    fs_inode_init(&top, FS_DIR);
    fs_inode_init(&other, FS_DIR);
    fs_id x1 = id_of(1), x2 = id_of(2);
    OK(fs_dir_add(&top, "x", &x1, FS_FILE, 11));
    OK(fs_dir_add(&other, "x", &x2, FS_FILE, 12)); /* at the same time */
    OK(fs_dir_merge(&top, &other));
    cr_assert_eq(count_named(&top, "x"), 2);
    top.split = true;
    fs_dview v;
    fs__dview_init(&v, &g_dir);
    have(&v, 0, 0, &top);
    have(&v, 1, level1("x"), NULL);
    add(&v, "x", 3, &x1);

    const fs_inode *all = fs__dview_entries(&v);
    cr_assert_not_null(all);
    cr_assert_eq(count_named(all, "x"), 2, "the rival and the new x");
    bool old = false, kept = false, added = false;
    for (size_t i = 0; i < all->nentries; i++) {
        if (strcmp(all->entries[i].name, "x")) continue;
        old |= all->entries[i].id.b[15] == 1;
        kept |= all->entries[i].id.b[15] == 2;
        added |= all->entries[i].id.b[15] == 3;
    }
    cr_assert(!old && kept && added);
    cr_assert(fs__dview_find(&v, 0, 0)->changed, "level 0 lost an entry");
    cr_assert(fs__dview_find(&v, 1, level1("x"))->changed);
    fs_inode_release(&other);
    fs_inode_release(&top);
    fs__dview_release(&v);
}

Test(dview, the_entries_of_all_objects_read_as_one_sorted_set) {
    fs_dview v;
    fs__dview_init(&v, &g_dir);
    fs_shard *top = have(&v, 0, 0, NULL);
    top->obj.ino.split = true;
    const char *names[] = {"m", "b", "z", "a", "q", "c"};
    for (int i = 0; i < 6; i++) {
        uint64_t at = level1(names[i]);
        if (!fs__dview_find(&v, 1, at)) have(&v, 1, at, NULL);
        add(&v, names[i], i, NULL);
    }
    const fs_inode *all = fs__dview_entries(&v);
    cr_assert_not_null(all);
    cr_assert_eq(all->nentries, 6);
    for (size_t i = 1; i < all->nentries; i++)
        cr_assert_lt(strcmp(all->entries[i - 1].name, all->entries[i].name), 0);
    cr_assert_eq(fs__dview_count(&v), 6);
    fs__dview_release(&v);
}

/* A directory node keeps the newest unchanged copy of each object: an
 * older read does not replace a newer write, a changed or stale copy is
 * not kept, and expiry drops what is too old. */
Test(dview, a_node_keeps_the_newest_unchanged_copies) {
    fs_dview kept, older, newer;
    fs__dview_init(&kept, &g_dir);
    fs__dview_init(&older, &g_dir);
    fs__dview_init(&newer, &g_dir);
    fs_shard *k = have(&kept, 0, 0, NULL);
    add(&kept, "written", 1, NULL);
    k->changed = false;
    k->at_ns = 2000;
    fs_shard *o = have(&older, 0, 0, NULL);
    o->at_ns = 1000;
    fs__dview_absorb(&kept, &older);
    cr_assert_eq(fs__dview_find(&kept, 0, 0)->obj.ino.nentries, 1,
                 "an older read replaced a newer copy");

    fs_shard *n = have(&newer, 0, 0, NULL);
    n->at_ns = 3000;
    fs_shard *c = have(&newer, 1, 5, NULL);
    c->changed = true;
    fs_shard *st = have(&newer, 1, 6, NULL);
    st->stale = true;
    have(&newer, 1, 7, NULL)->at_ns = 500;
    fs__dview_absorb(&kept, &newer);
    cr_assert_eq(fs__dview_find(&kept, 0, 0)->obj.ino.nentries, 0);
    cr_assert_null(fs__dview_find(&kept, 1, 5), "a changed copy was kept");
    cr_assert_null(fs__dview_find(&kept, 1, 6), "a stale copy was kept");
    cr_assert_not_null(fs__dview_find(&kept, 1, 7));

    fs__dview_expire(&kept, 1000);
    cr_assert_not_null(fs__dview_find(&kept, 0, 0));
    cr_assert_null(fs__dview_find(&kept, 1, 7), "expiry kept an old copy");
    fs__dview_release(&newer);
    fs__dview_release(&older);
    fs__dview_release(&kept);
}
