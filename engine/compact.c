/*
 * Flush output and compaction: picking what to merge, merging it, and
 * installing the result.
 *
 * Leveled (LevelDB's shape): level 0 holds flushed tables that may overlap;
 * level n >= 1 holds disjoint tables totalling at most level1_bytes *
 * multiplier^(n-1). A level over its target (level 0: over
 * l0_compaction_trigger tables) merges into the next: all of level 0, or
 * one table of level n chosen round-robin, with every overlapping table
 * below. A table with nothing below it moves down without being rewritten.
 *
 * Size-tiered: every table is a sorted run in level 0. Tables are bucketed
 * by size (within 0.5x-1.5x of the bucket's mean; everything smaller than
 * a memtable in one bucket); a bucket of tier_min or more merges into one
 * table, smallest bucket first, at most tier_max tables at once.
 *
 * Invariants: outputs are cut only between user keys, so a key's versions
 * never straddle two tables of a level. An entry shadowed by a newer one
 * that every snapshot sees is dropped; a tombstone is dropped only when no
 * table outside the merge can hold an older version of its key. One
 * compaction runs at a time (compact_mu), beside at most one flush. The
 * inputs' tables are pinned in the table cache while they are merged, and
 * each output is opened once (verified) before an edit names it.
 */
#include "engine/db_int.h"

#include <stdlib.h>
#include <time.h>

typedef struct compaction {
    int level;     /* input level (0 when tiered) */
    int out_level; /* level of the outputs */
    eng_fmeta **in[2];
    int nin[2];
    bool manual;
} compaction;

static void compaction_release(compaction *c) {
    for (int w = 0; w < 2; w++) {
        for (int i = 0; i < c->nin[w]; i++) eng__fmeta_unref(c->in[w][i]);
        kv_free(c->in[w]);
    }
    memset(c, 0, sizeof *c);
}

static int add_input(compaction *c, int which, eng_fmeta *f) {
    void *p = kv_realloc(c->in[which],
                         (size_t)(c->nin[which] + 1) * sizeof(eng_fmeta *));
    if (!p) return -ENOMEM;
    c->in[which] = p;
    eng__fmeta_ref(f);
    c->in[which][c->nin[which]++] = f;
    return 0;
}

static kv_slice fuser_min(const eng_fmeta *f) {
    return eng__ikey_user(kv_buf_slice(&f->smallest));
}
static kv_slice fuser_max(const eng_fmeta *f) {
    return eng__ikey_user(kv_buf_slice(&f->largest));
}

/* Does f overlap the user-key range [lo, hi]? NULL bounds are open. */
static bool overlaps(const eng_fmeta *f, const kv_slice *lo,
                     const kv_slice *hi) {
    if (lo && kv_slice_cmp(fuser_max(f), *lo) < 0) return false;
    if (hi && kv_slice_cmp(fuser_min(f), *hi) > 0) return false;
    return true;
}

/* ---- table output ---- */

typedef struct output {
    eng_db *db;
    eng_vedit *edit;
    int level;
    eng_tbuilder *tb;
    char *path;
    uint64_t number;
    uint64_t written;
} output;

static int output_open(output *o) {
    eng_db *db = o->db;
    pthread_mutex_lock(&db->mu);
    o->number = db->next_file++;
    pthread_mutex_unlock(&db->mu);
    if (!(o->path = eng__path(db, o->number, "sst"))) return -ENOMEM;
    int rc = eng__tb_new(db->fault, o->path, &db->topts, &o->tb);
    if (rc) {
        kv_error(ENG_MOD, "cannot create table '%s': %s", o->path,
                 kv_strerror(rc));
        kv_free(o->path);
        o->path = NULL;
    }
    return rc;
}

static int output_finish(output *o) {
    eng_table_props props;
    memset(&props, 0, sizeof props);
    eng_fmeta *f = NULL;
    int rc = eng__tb_finish(o->tb, &props);
    eng__tb_free(o->tb);
    o->tb = NULL;
    /* The table's directory entry must be durable before an edit names it. */
    if (rc == 0) rc = eng__env_sync_dir(o->db->fault, o->db->dir);
    if (rc) {
        kv_error(ENG_MOD, "cannot write table '%s': %s", o->path,
                 kv_strerror(rc));
        eng__env_unlink(o->path);
        goto out;
    }
    o->written += props.file_size;
    if (!(f = eng__fmeta_new())) {
        rc = -ENOMEM;
    } else if ((rc = eng__fmeta_from_props(f, o->number, &props)) == 0) {
        f->path = o->path;
        o->path = NULL;
        rc = eng__fmeta_open(o->db, f);
        if (rc == 0) rc = eng__vedit_add(o->edit, o->level, f);
    }
    if (rc) {
        if (f && f->path)
            atomic_store(&f->obsolete, true);
        else
            eng__env_unlink(o->path);
    }
    eng__fmeta_unref(f);
out:
    eng__props_release(&props);
    kv_free(o->path);
    o->path = NULL;
    return rc;
}

static void output_abandon(output *o) {
    if (o->tb) eng__tb_abandon(o->tb);
    o->tb = NULL;
    kv_free(o->path);
    o->path = NULL;
}

/* Sleep while a paced flush is ahead of its schedule: done of total bytes
 * should not be reached before t0 + pace_ns * done / total. */
static void flush_pace(eng_db *db, uint64_t t0, uint64_t pace_ns, uint64_t done,
                       uint64_t total) {
    while (!atomic_load(&db->flush_hurry)) {
        uint64_t due = t0 + (uint64_t)((double)pace_ns * (double)done /
                                       (double)KV_MAX(total, 1));
        uint64_t now = kv_now_ns();
        if (now >= due) return;
        /* Short naps, so a writer that starts waiting is seen soon. */
        uint64_t ns = KV_MIN(due - now, 10000000u);
        struct timespec ts = {0, (long)ns};
        nanosleep(&ts, NULL);
        eng__ctr_add(&db->c.flush_paced_us, (kv_now_ns() - now) / 1000);
    }
}

int eng__write_level0(eng_db *db, eng_memtable *m, uint64_t pace_ns,
                      eng_vedit *e) {
    if (eng__mem_count(m) == 0) return 0;
    eng_iiter *it = eng__mem_iter(m);
    if (!it) return -ENOMEM;
    output o = {.db = db, .edit = e, .level = 0};
    int rc = output_open(&o);
    uint64_t t0 = kv_now_ns(), total = eng__mem_bytes(m), done = 0, next = 0;
    uint64_t step = KV_MIN(FLUSH_PACE_STEP, total / 64 + 1);
    for (it->ops->seek_first(it); rc == 0 && it->ops->valid(it);
         it->ops->next(it)) {
        kv_slice k = it->ops->key(it), v = it->ops->value(it);
        rc = eng__tb_add(o.tb, k, v);
        done += k.len + v.len;
        if (pace_ns && done >= next) {
            flush_pace(db, t0, pace_ns, done, total);
            next = done + step;
        }
    }
    if (rc == 0) rc = it->ops->status(it);
    if (rc == 0)
        rc = output_finish(&o);
    else
        output_abandon(&o);
    it->ops->free(it);
    if (rc == 0) {
        eng__ctr_add(&db->c.flush_bytes, o.written);
        kv_info(ENG_MOD, "flushed %llu entries to table %06llu (%llu bytes)",
                (unsigned long long)eng__mem_count(m),
                (unsigned long long)o.number, (unsigned long long)o.written);
    }
    return rc;
}

/* ---- picking ---- */

static int cmp_size(const void *a, const void *b) {
    const eng_fmeta *x = *(eng_fmeta *const *)a, *y = *(eng_fmeta *const *)b;
    if (x->size != y->size) return x->size < y->size ? -1 : 1;
    return x->number < y->number ? -1 : (x->number > y->number);
}

/* Tiered buckets over v's tables sorted by size. Calls fn for each bucket
 * (a run of the sorted array); fn returns true to stop. */
typedef bool (*bucket_fn)(void *arg, eng_fmeta **files, int n);
static int for_each_bucket(eng_db *db, eng_version *v, bucket_fn fn,
                           void *arg) {
    int n = v->nfiles[0];
    if (n == 0) return 0;
    eng_fmeta **s = kv_malloc((size_t)n * sizeof *s);
    if (!s) return -ENOMEM;
    memcpy(s, v->files[0], (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_size);
    uint64_t small = db->opt.memtable_bytes;
    int start = 0;
    uint64_t sum = 0;
    for (int i = 0; i <= n; i++) {
        bool fits = false;
        if (i < n && i > start) {
            uint64_t mean = sum / (uint64_t)(i - start);
            fits = (s[i]->size <= small && mean <= small) ||
                   (s[i]->size * 2 >= mean && s[i]->size * 2 <= mean * 3);
        }
        if (i == n || (!fits && i > start)) {
            if (fn(arg, s + start, i - start)) break;
            start = i;
            sum = 0;
        }
        if (i < n) sum += s[i]->size;
    }
    kv_free(s);
    return 0;
}

typedef struct debt_ctx {
    int min;
    uint64_t debt;
} debt_ctx;

static bool add_debt(void *arg, eng_fmeta **files, int n) {
    debt_ctx *d = arg;
    if (n >= d->min)
        for (int i = 0; i < n; i++) d->debt += files[i]->size;
    return false;
}

uint64_t eng__compaction_debt(eng_db *db) {
    eng_version *v = db->current;
    if (v->debt_known) return v->debt;
    uint64_t debt = 0;
    if (db->opt.style == ENG_COMPACT_TIERED) {
        debt_ctx d = {db->opt.tier_min, 0};
        if (for_each_bucket(db, v, add_debt, &d) != 0) return 0;
        debt = d.debt;
    } else {
        if (v->nfiles[0] >= db->opt.l0_compaction_trigger)
            debt += v->level_bytes[0];
        for (int l = 1; l < ENG_MAX_LEVELS - 1; l++) {
            uint64_t t = eng__level_target(db, l);
            if (v->level_bytes[l] > t) debt += v->level_bytes[l] - t;
        }
    }
    v->debt = debt;
    v->debt_known = true;
    return debt;
}

typedef struct tier_pick {
    int min, max;
    eng_fmeta **files;
    int n;
} tier_pick;

static bool pick_bucket(void *arg, eng_fmeta **files, int n) {
    tier_pick *p = arg;
    if (n < p->min) return false;
    /* Buckets come smallest first: merging small tables is cheap and cuts
     * the table count (read amplification) the most. */
    p->files = files;
    p->n = KV_MIN(n, p->max);
    return true;
}

typedef struct pick_copy {
    tier_pick p;
    compaction *c;
    int rc;
} pick_copy;

static bool pick_and_copy(void *arg, eng_fmeta **files, int n) {
    pick_copy *pc = arg;
    if (!pick_bucket(&pc->p, files, n)) return false;
    for (int i = 0; i < pc->p.n && pc->rc == 0; i++)
        pc->rc = add_input(pc->c, 0, pc->p.files[i]);
    return true;
}

/* Fill c with the files of level+1 overlapping c->in[0]. */
static int add_overlapping_below(eng_version *v, compaction *c) {
    kv_slice lo = fuser_min(c->in[0][0]), hi = fuser_max(c->in[0][0]);
    for (int i = 1; i < c->nin[0]; i++) {
        if (kv_slice_cmp(fuser_min(c->in[0][i]), lo) < 0)
            lo = fuser_min(c->in[0][i]);
        if (kv_slice_cmp(fuser_max(c->in[0][i]), hi) > 0)
            hi = fuser_max(c->in[0][i]);
    }
    int below = c->level + 1;
    for (int i = 0; i < v->nfiles[below]; i++) {
        if (!overlaps(v->files[below][i], &lo, &hi)) continue;
        int rc = add_input(c, 1, v->files[below][i]);
        if (rc) return rc;
    }
    return 0;
}

/* Choose the next background compaction from v. 0 with c filled, or
 * KV_ENOTFOUND when nothing needs doing. compact_mu held. */
static int pick(eng_db *db, eng_version *v, compaction *c) {
    memset(c, 0, sizeof *c);
    if (db->opt.style == ENG_COMPACT_TIERED) {
        pick_copy pc = {{db->opt.tier_min, db->opt.tier_max, NULL, 0}, c, 0};
        int rc = for_each_bucket(db, v, pick_and_copy, &pc);
        if (rc == 0) rc = pc.rc;
        if (rc == 0 && c->nin[0] == 0) rc = KV_ENOTFOUND;
        return rc;
    }
    double best = 0;
    int level = -1;
    double s0 = (double)v->nfiles[0] / db->opt.l0_compaction_trigger;
    if (s0 >= 1.0) {
        best = s0;
        level = 0;
    }
    for (int l = 1; l < ENG_MAX_LEVELS - 1; l++) {
        double s = (double)v->level_bytes[l] / (double)eng__level_target(db, l);
        if (s >= 1.0 && s > best) {
            best = s;
            level = l;
        }
    }
    if (level < 0) return KV_ENOTFOUND;
    c->level = level;
    c->out_level = level + 1;
    int rc = 0;
    if (level == 0) {
        for (int i = 0; i < v->nfiles[0] && rc == 0; i++)
            rc = add_input(c, 0, v->files[0][i]);
    } else {
        /* Round-robin through the level so every key range gets its turn. */
        kv_buf *ptr = &db->compact_ptr[level];
        int pickn = 0;
        for (int i = 0; i < v->nfiles[level]; i++) {
            if (ptr->len == 0 ||
                eng__ikey_cmp(kv_buf_slice(&v->files[level][i]->largest),
                              kv_buf_slice(ptr)) > 0) {
                pickn = i;
                break;
            }
        }
        eng_fmeta *f = v->files[level][pickn];
        rc = add_input(c, 0, f);
        if (rc == 0) rc = kv_buf_set(ptr, f->largest.ptr, f->largest.len);
    }
    if (rc == 0) rc = add_overlapping_below(v, c);
    return rc;
}

/* ---- merging ---- */

/* Could a table outside the merge hold a version of ukey older than seq? */
static bool older_version_elsewhere(eng_db *db, eng_version *v,
                                    const compaction *c, kv_slice ukey,
                                    uint64_t seq) {
    if (db->opt.style == ENG_COMPACT_LEVELED) {
        for (int l = c->out_level + 1; l < ENG_MAX_LEVELS; l++)
            for (int i = 0; i < v->nfiles[l]; i++)
                if (overlaps(v->files[l][i], &ukey, &ukey)) return true;
        return false;
    }
    for (int i = 0; i < v->nfiles[0]; i++) {
        eng_fmeta *f = v->files[0][i];
        bool input = false;
        for (int j = 0; j < c->nin[0] && !input; j++) input = c->in[0][j] == f;
        if (!input && f->min_seq < seq && overlaps(f, &ukey, &ukey))
            return true;
    }
    return false;
}

static int cmp_fmeta_min(const void *a, const void *b) {
    return kv_slice_cmp(fuser_min(*(eng_fmeta *const *)a),
                        fuser_min(*(eng_fmeta *const *)b));
}

/* Whether no two of the n tables share a user key. */
static bool disjoint(eng_fmeta **f, int n) {
    if (n == 1) return true;
    eng_fmeta **s = kv_malloc((size_t)n * sizeof *s);
    if (!s) return false; /* merging instead is always correct */
    memcpy(s, f, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_fmeta_min);
    bool ok = true;
    for (int i = 1; i < n && ok; i++)
        ok = kv_slice_cmp(fuser_max(s[i - 1]), fuser_min(s[i])) < 0;
    kv_free(s);
    return ok;
}

static int run(eng_db *db, compaction *c) {
    eng_vedit e;
    eng__vedit_init(&e);
    output o = {.db = db, .edit = &e, .level = c->out_level};
    kv_buf cur = KV_BUF_INIT;
    eng_iiter *it = NULL;
    eng_fmeta **pinned = NULL; /* inputs whose tables are pinned */
    int npinned = 0;
    uint64_t in_bytes = 0;
    int rc = 0;
    pthread_mutex_lock(&db->mu);
    uint64_t smallest_snap = eng__smallest_snapshot(db);
    eng_version *v = db->current;
    eng__version_ref(v);
    pthread_mutex_unlock(&db->mu);

    for (int w = 0; w < 2; w++)
        for (int i = 0; i < c->nin[w]; i++) {
            in_bytes += c->in[w][i]->size;
            if ((rc = eng__vedit_delete(&e, w ? c->out_level : c->level,
                                        c->in[w][i]->number)))
                goto out;
        }

    /* Tables that overlap neither each other nor anything below: move
     * them down unchanged. One table of a level always qualifies; level-0
     * tables do when their key ranges are disjoint, as a sequential load
     * makes them, which halves its write amplification. */
    if (db->opt.style == ENG_COMPACT_LEVELED && !c->manual && c->nin[1] == 0 &&
        disjoint(c->in[0], c->nin[0])) {
        for (int i = 0; i < c->nin[0] && rc == 0; i++)
            rc = eng__vedit_add(&e, c->out_level, c->in[0][i]);
        if (rc == 0) rc = eng__log_and_apply(db, &e);
        goto out;
    }

    int n = c->nin[0] + c->nin[1];
    eng_iiter **kids = kv_calloc((size_t)n, sizeof *kids);
    pinned = kv_calloc((size_t)n, sizeof *pinned);
    if (!kids || !pinned) {
        kv_free(kids);
        rc = -ENOMEM;
        goto out;
    }
    /* Each input's table stays pinned in the table cache until the merge
     * is freed: the table iterators read through it. */
    for (int w = 0; w < 2 && rc == 0; w++)
        for (int i = 0; i < c->nin[w] && rc == 0; i++) {
            eng_table *t;
            if ((rc = eng__table_acquire(db, c->in[w][i], &t))) break;
            int k = npinned++;
            pinned[k] = c->in[w][i];
            if (!(kids[k] = eng__table_iter(t, false))) rc = -ENOMEM;
        }
    if (rc) {
        for (int k = 0; k < n; k++)
            if (kids[k]) kids[k]->ops->free(kids[k]);
        kv_free(kids);
        goto out;
    }
    it = eng__merge_iter(kids, n);
    kv_free(kids);
    if (!it) {
        rc = -ENOMEM;
        goto out;
    }

    bool have_cur = false;
    uint64_t last_seq_for_key = ENG_MAX_SEQ + 1;
    uint64_t count = 0;
    bool split = db->opt.style == ENG_COMPACT_LEVELED;
    for (it->ops->seek_first(it); it->ops->valid(it); it->ops->next(it)) {
        kv_slice ikey = it->ops->key(it);
        if (!eng__ikey_valid(ikey)) {
            kv_error(ENG_MOD, "compaction: malformed internal key in input");
            rc = KV_ECORRUPT;
            break;
        }
        kv_slice ukey = eng__ikey_user(ikey);
        uint64_t seq = eng__ikey_seq(ikey);
        if ((++count & 4095) == 0) {
            pthread_mutex_lock(&db->mu);
            bool stop = db->shutting_down;
            pthread_mutex_unlock(&db->mu);
            if (stop) {
                rc = KV_ECLOSED;
                break;
            }
        }
        if (!have_cur || !kv_slice_eq(ukey, kv_buf_slice(&cur))) {
            if ((rc = kv_buf_set(&cur, ukey.ptr, ukey.len))) break;
            have_cur = true;
            last_seq_for_key = ENG_MAX_SEQ + 1;
            /* A new user key: the only place an output may end. */
            if (split && o.tb && eng__tb_size(o.tb) >= db->opt.table_bytes &&
                (rc = output_finish(&o)))
                break;
        }
        bool drop = false;
        if (last_seq_for_key <= smallest_snap) {
            drop = true; /* a newer version is visible to every reader */
        } else if (eng__ikey_type(ikey) == ENG_TYPE_DEL &&
                   seq <= smallest_snap &&
                   !older_version_elsewhere(db, v, c, ukey, seq)) {
            drop = true; /* nothing older left for the tombstone to hide */
        }
        last_seq_for_key = seq;
        if (drop) continue;
        if (!o.tb && (rc = output_open(&o))) break;
        if ((rc = eng__tb_add(o.tb, ikey, it->ops->value(it)))) break;
    }
    if (rc == 0) rc = it->ops->status(it);
    if (rc == 0 && o.tb) rc = output_finish(&o);
    if (rc) {
        output_abandon(&o);
        goto out;
    }
    uint64_t written = o.written;
    rc = eng__log_and_apply(db, &e);
    if (rc == 0) {
        eng__ctr_add(&db->c.compact_read, in_bytes);
        eng__ctr_add(&db->c.compact_written, written);
        eng__ctr_add(&db->c.compactions, 1);
        kv_info(ENG_MOD,
                "compacted %d+%d tables from level %d into %d tables at "
                "level %d (%llu -> %llu bytes)",
                c->nin[0], c->nin[1], c->level, e.nadded, c->out_level,
                (unsigned long long)in_bytes, (unsigned long long)written);
    }
out:
    if (it) it->ops->free(it);
    for (int i = 0; i < npinned; i++) eng__table_release(db, pinned[i]);
    kv_free(pinned);
    /* Outputs of a failed compaction are unlinked when released; a table
     * the edit only moves (an input) is left alone. */
    for (int i = 0; rc && !e.uncertain && i < e.nadded; i++) {
        bool is_input = false;
        for (int w = 0; w < 2 && !is_input; w++)
            for (int j = 0; j < c->nin[w]; j++)
                is_input |= c->in[w][j] == e.added[i].f;
        if (!is_input) atomic_store(&e.added[i].f->obsolete, true);
    }
    eng__vedit_release(&e);
    eng__version_unref(v);
    kv_buf_release(&cur);
    if (rc && rc != KV_ECLOSED)
        kv_error(ENG_MOD, "compaction of level %d failed: %s", c->level,
                 kv_strerror(rc));
    return rc;
}

/* ---- drivers ---- */

void *eng__compact_thread(void *arg) {
    eng_db *db = arg;
    pthread_setname_np(pthread_self(), "qfs-compact");
    for (;;) {
        pthread_mutex_lock(&db->compact_mu);
        pthread_mutex_lock(&db->mu);
        if (db->shutting_down) {
            pthread_mutex_unlock(&db->mu);
            pthread_mutex_unlock(&db->compact_mu);
            break;
        }
        eng_version *v = db->current;
        eng__version_ref(v);
        pthread_mutex_unlock(&db->mu);
        compaction c;
        int rc = pick(db, v, &c);
        eng__version_unref(v);
        if (rc == 0) rc = run(db, &c);
        compaction_release(&c);
        pthread_mutex_unlock(&db->compact_mu);

        pthread_mutex_lock(&db->mu);
        if (rc && rc != KV_ENOTFOUND && rc != KV_ECLOSED) db->bg_error = rc;
        if (rc == 0 && db->bg_error && !db->flush_error) db->bg_error = 0;
        pthread_cond_broadcast(&db->bg_cv);
        if (!db->shutting_down && rc != 0) {
            /* Nothing to do: sleep until a flush or close wakes us. After a
             * failure, retry no sooner than a second later. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += rc == KV_ENOTFOUND ? 5 : 1;
            pthread_cond_timedwait(&db->work_cv, &db->mu, &ts);
        }
        pthread_mutex_unlock(&db->mu);
    }
    return NULL;
}

/* Manual compaction of [begin, end] down to the deepest level holding data
 * in that range (leveled), or of every overlapping table into one (tiered). */
int eng__compact_manual(eng_db *db, const kv_slice *begin,
                        const kv_slice *end) {
    int rc = 0;
    pthread_mutex_lock(&db->compact_mu);
    if (db->opt.style == ENG_COMPACT_TIERED) {
        compaction c;
        memset(&c, 0, sizeof c);
        c.manual = true;
        pthread_mutex_lock(&db->mu);
        eng_version *v = db->current;
        eng__version_ref(v);
        pthread_mutex_unlock(&db->mu);
        for (int i = 0; i < v->nfiles[0] && rc == 0; i++)
            if (overlaps(v->files[0][i], begin, end))
                rc = add_input(&c, 0, v->files[0][i]);
        eng__version_unref(v);
        if (rc == 0 && c.nin[0] > 0) rc = run(db, &c);
        compaction_release(&c);
        pthread_mutex_unlock(&db->compact_mu);
        return rc;
    }
    pthread_mutex_lock(&db->mu);
    int deepest = 1;
    for (int l = 1; l < ENG_MAX_LEVELS; l++)
        for (int i = 0; i < db->current->nfiles[l]; i++)
            if (overlaps(db->current->files[l][i], begin, end)) deepest = l;
    pthread_mutex_unlock(&db->mu);
    for (int level = 0; level < deepest && rc == 0; level++) {
        compaction c;
        memset(&c, 0, sizeof c);
        c.manual = true;
        c.level = level;
        c.out_level = level + 1;
        pthread_mutex_lock(&db->mu);
        eng_version *v = db->current;
        eng__version_ref(v);
        pthread_mutex_unlock(&db->mu);
        bool any = false;
        for (int i = 0; i < v->nfiles[level]; i++)
            any |= overlaps(v->files[level][i], begin, end);
        /* Level-0 tables overlap each other: moving only those that touch
         * the range down could leave an older version of one of their keys
         * in level 0, above the newer one, and a get would return it. So
         * level 0 moves down whole, as in background compactions. */
        for (int i = 0; any && i < v->nfiles[level] && rc == 0; i++)
            if (level == 0 || overlaps(v->files[level][i], begin, end))
                rc = add_input(&c, 0, v->files[level][i]);
        if (rc == 0 && c.nin[0] > 0) rc = add_overlapping_below(v, &c);
        eng__version_unref(v);
        if (rc == 0 && c.nin[0] > 0) rc = run(db, &c);
        compaction_release(&c);
    }
    pthread_mutex_unlock(&db->compact_mu);
    return rc;
}
