/*
 * Crash tests of the engine's durability promise, through the public API.
 *
 * Each cycle forks a child that opens the store with ENG_SYNC_GROUP and
 * writes from several threads; after a write returns 0 the thread sends an
 * acknowledgement (16 bytes, atomic on a pipe) to the parent. The parent
 * SIGKILLs the child at a random moment (possibly during recovery, a flush
 * or a compaction: the memtable is tiny), reopens the store and checks:
 * open succeeds; every key holds exactly the last acknowledged operation on
 * it, or the one operation its writer had in flight; values are well formed.
 *
 * This is decidable because writer t owns its keys and numbers its
 * operations 0, 1, 2, ... per cycle; operation n's key, kind (put/delete)
 * and value are a pure function of (seed, cycle, t, n), and t starts n+1
 * only after acknowledging n. So at most one unacknowledged operation per
 * writer, and the parent can compute it. The store carries over between
 * cycles; QFS_CRASH_CYCLES raises the cycle count, QFS_SEED replays.
 */
#include "engine/engine.h"
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
    THREADS = 4,
    KPT = 300,          /* keys per writer thread */
    HDR = 24,           /* value header bytes */
    SPREAD = 1200,      /* values are HDR .. HDR+SPREAD-1 bytes */
    DEFAULT_CYCLES = 30 /* at least 30 kills per variant */
};

#define ACK_MAGIC 0x41434b31u   /* "ACK1": an acknowledged operation */
#define ACK_OPENERR 0x4f504e45u /* child could not open the store */
#define ACK_OPERR 0x45525231u   /* a write failed in the child */
#define VAL_MAGIC 0x43525631u   /* "CRV1" at the start of every value */

typedef struct ack {
    uint32_t magic, thread, cycle, counter; /* counter holds -rc on error */
} ack;

typedef struct variant {
    const char *name;
    bool deletes; /* a quarter of the operations are deletes */
    bool batches; /* each op writes key "c..." and its twin "d..." atomically */
} variant;

/* One key's state: absent, or the (cycle, counter) that wrote its value. */
typedef struct kstate {
    bool present;
    uint32_t cycle, counter;
} kstate;

static char g_dir[PATH_MAX];
static pid_t g_child = -1;
static int g_pipe = -1;

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-crash");
}

/* Runs after a failed assertion too: no child may outlive the test. */
static void teardown(void) {
    if (g_child > 0) {
        kill(g_child, SIGKILL);
        waitpid(g_child, NULL, 0);
        g_child = -1;
    }
    if (g_pipe >= 0) close(g_pipe);
    g_pipe = -1;
    if (g_dir[0]) rm_tree(g_dir);
    g_dir[0] = '\0';
}

static void small_opts(eng_options *o) {
    eng_options_init(o);
    o->sync = ENG_SYNC_GROUP;
    o->memtable_bytes = 32 * 1024; /* a flush or two in most cycles */
    o->table_bytes = 32 * 1024;
    o->block_bytes = 1024;
    o->level1_bytes = 256 * 1024;
    o->level_multiplier = 4;
    o->l0_compaction_trigger = 2;
}

/* ---- the operation schedule, shared by child and parent ---- */

typedef struct op {
    uint32_t key;
    bool del;
    uint32_t len; /* value bytes, HDR included */
    uint64_t h;
} op;

static op op_of(uint64_t seed, const variant *v, uint32_t cycle, uint32_t t,
                uint32_t n) {
    uint64_t h =
        mix64(seed ^ mix64(((uint64_t)cycle << 40) ^ ((uint64_t)t << 32) ^ n));
    op o;
    o.h = h;
    o.key = (uint32_t)(h % KPT);
    o.del = v->deletes && ((h >> 20) & 3) == 0;
    o.len = HDR + (uint32_t)((h >> 32) % SPREAD);
    return o;
}

static size_t make_key(char *buf, char ns, uint32_t t, uint32_t k) {
    return (size_t)snprintf(buf, 32, "%c%u-%05u", ns, t, k);
}

static void make_value(uint8_t *buf, const op *o, uint32_t t, uint32_t cycle,
                       uint32_t n) {
    kv_put_u32(buf, VAL_MAGIC);
    kv_put_u32(buf + 4, t);
    kv_put_u32(buf + 8, o->key);
    kv_put_u32(buf + 12, cycle);
    kv_put_u32(buf + 16, n);
    kv_put_u32(buf + 20, o->len);
    uint64_t s = o->h;
    for (uint32_t i = HDR; i < o->len; i++) {
        if ((i - HDR) % 8 == 0) s = mix64(s + i);
        buf[i] = (uint8_t)(s >> (8 * ((i - HDR) % 8)));
    }
}

/* ---- the child ---- */

typedef struct child_arg {
    eng_db *db;
    const variant *v;
    uint64_t seed;
    uint32_t cycle, t;
    int wfd;
} child_arg;

static void send_ack(int fd, const ack *a) {
    /* 16 bytes <= PIPE_BUF: the write is atomic, a kill never splits it. */
    ssize_t w;
    do {
        w = write(fd, a, sizeof *a);
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof *a) _exit(4);
}

static void *child_writer(void *p) {
    child_arg *a = p;
    uint8_t val[HDR + SPREAD];
    char k1[32], k2[32];
    eng_batch *b = NULL;
    if (a->v->batches && eng_batch_new(&b) != 0) _exit(5);
    for (uint32_t n = 0; n < 10000000; n++) {
        op o = op_of(a->seed, a->v, a->cycle, a->t, n);
        kv_slice key = kv_slice_make(k1, make_key(k1, 'c', a->t, o.key));
        kv_slice twin = kv_slice_make(k2, make_key(k2, 'd', a->t, o.key));
        make_value(val, &o, a->t, a->cycle, n);
        kv_slice value = kv_slice_make(val, o.len);
        int rc;
        if (a->v->batches) {
            eng_batch_clear(b);
            if (o.del) {
                rc = eng_batch_delete(b, key);
                if (!rc) rc = eng_batch_delete(b, twin);
            } else {
                rc = eng_batch_put(b, key, value);
                if (!rc) rc = eng_batch_put(b, twin, value);
            }
            if (!rc) rc = eng_db_write(a->db, b, ENG_WF_DEFAULT);
        } else if (o.del) {
            rc = eng_db_delete(a->db, key, ENG_WF_DEFAULT);
        } else {
            rc = eng_db_put(a->db, key, value, ENG_WF_DEFAULT);
        }
        if (rc != 0) {
            ack e = {ACK_OPERR, a->t, a->cycle, (uint32_t)-rc};
            send_ack(a->wfd, &e);
            _exit(3);
        }
        ack ok = {ACK_MAGIC, a->t, a->cycle, n};
        send_ack(a->wfd, &ok);
    }
    return NULL;
}

static _Noreturn void child_main(const variant *v, uint64_t seed,
                                 uint32_t cycle, int wfd) {
    eng_options o;
    small_opts(&o);
    eng_db *db = NULL;
    int rc = eng_db_open(g_dir, &o, &db);
    if (rc != 0) {
        ack e = {ACK_OPENERR, 0, cycle, (uint32_t)-rc};
        send_ack(wfd, &e);
        _exit(2);
    }
    pthread_t th[THREADS];
    child_arg args[THREADS];
    for (uint32_t t = 0; t < THREADS; t++) {
        args[t] = (child_arg){db, v, seed, cycle, t, wfd};
        if (pthread_create(&th[t], NULL, child_writer, &args[t]) != 0) _exit(6);
    }
    for (uint32_t t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    _exit(0); /* not reached: the parent kills us first */
}

/* ---- the parent ---- */

typedef struct crash_state {
    const variant *v;
    uint64_t seed, rng;
    uint32_t cycle;
    kstate state[THREADS][KPT]; /* verified contents after the last cycle */
    kstate acked[THREADS][KPT];
    bool has_ack[THREADS][KPT];
    bool any_ack[THREADS];
    uint32_t max_ack[THREADS];
    long total_acks, kills_before_ack;
    uint64_t cycle_start_ms,
        first_ack_ms_sum; /* how long the child's open took */
    long first_acks;
    int child_err; /* first error reported by the child, 0 if none */
    uint32_t child_err_magic;
    uint8_t buf[16 * 256]; /* ack bytes read but not yet taken */
    size_t have;
} crash_state;

/* A kill delay of 20..300 ms from the seeded stream. */
static uint64_t kill_delay_ms(crash_state *s) {
    s->rng = mix64(s->rng + UINT64_C(0x9e3779b97f4a7c15));
    return 20 + s->rng % 281;
}

static uint64_t now_ms(void) {
    return kv_now_ns() / 1000000u;
}

static void take_ack(crash_state *s, const ack *a) {
    if (a->magic == ACK_OPENERR || a->magic == ACK_OPERR) {
        if (!s->child_err) {
            s->child_err = -(int)a->counter;
            s->child_err_magic = a->magic;
        }
        return;
    }
    cr_assert_eq(a->magic, ACK_MAGIC, "seed=%" PRIu64 ": garbage on ack pipe",
                 s->seed);
    cr_assert(a->thread < THREADS && a->cycle == s->cycle);
    cr_assert(!s->any_ack[a->thread] || a->counter == s->max_ack[a->thread] + 1,
              "seed=%" PRIu64 " cycle=%u: writer %u acked %u after %u", s->seed,
              s->cycle, a->thread, a->counter, s->max_ack[a->thread]);
    op o = op_of(s->seed, s->v, a->cycle, a->thread, a->counter);
    s->has_ack[a->thread][o.key] = true;
    s->acked[a->thread][o.key] = (kstate){!o.del, a->cycle, a->counter};
    bool first = true;
    for (int t = 0; t < THREADS; t++) first &= !s->any_ack[t];
    if (first) {
        s->first_ack_ms_sum += now_ms() - s->cycle_start_ms;
        s->first_acks++;
    }
    s->any_ack[a->thread] = true;
    s->max_ack[a->thread] = a->counter;
    s->total_acks++;
}

/* Read whatever acks are available (or wait up to timeout_ms for some);
 * returns false at end of file. */
static bool pump_acks(crash_state *s, int fd, int timeout_ms) {
    uint8_t *buf = s->buf;
    struct pollfd pfd = {fd, POLLIN, 0};
    int pr = poll(&pfd, 1, timeout_ms);
    if (pr <= 0) return true;
    ssize_t r = read(fd, buf + s->have, sizeof s->buf - s->have);
    if (r < 0) return errno == EINTR || errno == EAGAIN;
    if (r == 0) {
        cr_assert_eq(s->have, 0, "a partial ack on the pipe");
        return false;
    }
    s->have += (size_t)r;
    size_t off = 0;
    for (; off + sizeof(ack) <= s->have; off += sizeof(ack)) {
        ack a;
        memcpy(&a, buf + off, sizeof a);
        take_ack(s, &a);
    }
    memmove(buf, buf + off, s->have - off);
    s->have -= off;
    return true;
}

/* Parse a value read back from the store: well formed and written for
 * (t, key) by some operation; returns its state. */
static kstate parse_value(const crash_state *s, kv_slice v, uint32_t t,
                          uint32_t key, const char *what) {
    cr_assert_geq(v.len, HDR, "seed=%" PRIu64 " cycle=%u: %s: %zu-byte value",
                  s->seed, s->cycle, what, v.len);
    uint32_t magic = kv_get_u32(v.ptr), vt = kv_get_u32(v.ptr + 4),
             vk = kv_get_u32(v.ptr + 8), cyc = kv_get_u32(v.ptr + 12),
             n = kv_get_u32(v.ptr + 16), len = kv_get_u32(v.ptr + 20);
    cr_assert(magic == VAL_MAGIC && vt == t && vk == key && len == v.len &&
                  cyc <= s->cycle,
              "seed=%" PRIu64 " cycle=%u: %s: malformed value header", s->seed,
              s->cycle, what);
    op o = op_of(s->seed, s->v, cyc, t, n);
    cr_assert(o.key == key && !o.del && o.len == len,
              "seed=%" PRIu64 " cycle=%u: %s: value names op %u of cycle %u, "
              "which is not a put of this key",
              s->seed, s->cycle, what, n, cyc);
    uint8_t want[HDR + SPREAD];
    make_value(want, &o, t, cyc, n);
    cr_assert(memcmp(want, v.ptr, len) == 0,
              "seed=%" PRIu64 " cycle=%u: %s: value bytes damaged", s->seed,
              s->cycle, what);
    return (kstate){true, cyc, n};
}

static bool kstate_eq(kstate a, kstate b) {
    if (a.present != b.present) return false;
    return !a.present || (a.cycle == b.cycle && a.counter == b.counter);
}

static const char *kstate_str(kstate k, char *buf) {
    if (!k.present) return "absent";
    snprintf(buf, 48, "cycle %u op %u", k.cycle, k.counter);
    return buf;
}

/* Reopen after the kill and check every key against the acks. */
static void verify(crash_state *s) {
    eng_options o;
    small_opts(&o);
    eng_db *db = NULL;
    int rc = eng_db_open(g_dir, &o, &db);
    cr_assert_eq(rc, 0, "seed=%" PRIu64 " cycle=%u: reopen after kill: %s",
                 s->seed, s->cycle, kv_strerror(rc));

    /* Each writer's single possibly-applied unacknowledged operation. */
    uint32_t fl_key[THREADS];
    kstate fl_state[THREADS];
    for (uint32_t t = 0; t < THREADS; t++) {
        uint32_t n = s->any_ack[t] ? s->max_ack[t] + 1 : 0;
        op f = op_of(s->seed, s->v, s->cycle, t, n);
        fl_key[t] = f.key;
        fl_state[t] = (kstate){!f.del, s->cycle, n};
    }

    kv_buf got = KV_BUF_INIT;
    char kb[32], what[64], b1[48], b2[48], b3[48];
    long present = 0;
    for (uint32_t t = 0; t < THREADS; t++) {
        for (uint32_t k = 0; k < KPT; k++) {
            kstate want = s->has_ack[t][k] ? s->acked[t][k] : s->state[t][k];
            kstate seen[2];
            int nns = s->v->batches ? 2 : 1;
            for (int ns = 0; ns < nns; ns++) {
                size_t kl = make_key(kb, ns ? 'd' : 'c', t, k);
                snprintf(what, sizeof what, "key %s", kb);
                rc = eng_db_get(db, NULL, kv_slice_make(kb, kl), &got);
                if (rc == KV_ENOTFOUND) {
                    seen[ns] = (kstate){false, 0, 0};
                } else {
                    cr_assert_eq(rc, 0, "seed=%" PRIu64 " cycle=%u: get %s: %s",
                                 s->seed, s->cycle, kb, kv_strerror(rc));
                    seen[ns] = parse_value(s, kv_buf_slice(&got), t, k, what);
                }
            }
            bool ok = kstate_eq(seen[0], want) ||
                      (fl_key[t] == k && kstate_eq(seen[0], fl_state[t]));
            cr_assert(ok,
                      "seed=%" PRIu64 " cycle=%u: key c%u-%05u holds %s, "
                      "expected %s%s%s (last acked op of writer: %d)",
                      s->seed, s->cycle, t, k, kstate_str(seen[0], b1),
                      kstate_str(want, b2),
                      fl_key[t] == k ? " or in-flight " : "",
                      fl_key[t] == k ? kstate_str(fl_state[t], b3) : "",
                      s->any_ack[t] ? (int)s->max_ack[t] : -1);
            if (s->v->batches)
                cr_assert(kstate_eq(seen[0], seen[1]),
                          "seed=%" PRIu64 " cycle=%u: batch torn: c%u-%05u "
                          "holds %s but d%u-%05u holds %s",
                          s->seed, s->cycle, t, k, kstate_str(seen[0], b1), t,
                          k, kstate_str(seen[1], b2));
            s->state[t][k] = seen[0];
            present += seen[0].present;
        }
    }

    /* A full scan sees the same keys, each well formed. */
    eng_iter *it = NULL;
    rc = eng_iter_new(db, NULL, &it);
    cr_assert_eq(rc, 0, "iter_new: %s", kv_strerror(rc));
    long scanned = 0;
    for (eng_iter_seek_first(it); eng_iter_valid(it); eng_iter_next(it)) {
        kv_slice key = eng_iter_key(it);
        char ks[32];
        cr_assert_lt(key.len, sizeof ks);
        memcpy(ks, key.ptr, key.len);
        ks[key.len] = '\0';
        char ns;
        unsigned t, k;
        int end = 0;
        cr_assert(sscanf(ks, "%c%u-%5u%n", &ns, &t, &k, &end) == 3 &&
                      (size_t)end == key.len && (ns == 'c' || ns == 'd') &&
                      t < THREADS && k < KPT,
                  "seed=%" PRIu64 " cycle=%u: scan found a foreign key '%s'",
                  s->seed, s->cycle, ks);
        cr_assert(ns == 'c' || s->v->batches);
        snprintf(what, sizeof what, "scan key %s", ks);
        kstate st = parse_value(s, eng_iter_value(it), t, k, what);
        cr_assert(kstate_eq(st, s->state[t][k]),
                  "seed=%" PRIu64 " cycle=%u: scan and get disagree on %s",
                  s->seed, s->cycle, ks);
        scanned++;
    }
    rc = eng_iter_status(it);
    cr_assert_eq(rc, 0, "scan status: %s", kv_strerror(rc));
    eng_iter_free(it);
    cr_assert_eq(scanned, present * (s->v->batches ? 2 : 1),
                 "seed=%" PRIu64 " cycle=%u: scan saw %ld keys, gets %ld",
                 s->seed, s->cycle, scanned, present);

    eng_stats st;
    cr_assert_eq(eng_db_stats(db, &st), 0);
    cr_assert_eq(st.bg_error, 0, "background error %s",
                 kv_strerror(st.bg_error));
    kv_buf_release(&got);
    rc = eng_db_close(db);
    cr_assert_eq(rc, 0, "close after verify: %s", kv_strerror(rc));
}

static void run_cycle(crash_state *s) {
    memset(s->has_ack, 0, sizeof s->has_ack);
    memset(s->any_ack, 0, sizeof s->any_ack);
    s->child_err = 0;
    s->have = 0;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fflush(NULL);
    s->cycle_start_ms = now_ms();
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork failed");
    if (pid == 0) {
        close(p[0]);
        child_main(s->v, s->seed, s->cycle, p[1]);
    }
    g_child = pid;
    close(p[1]);
    g_pipe = p[0];

    uint64_t delay = kill_delay_ms(s);
    uint64_t deadline = now_ms() + delay;
    bool open = true;
    while (open && !s->child_err) {
        uint64_t now = now_ms();
        if (now >= deadline) break;
        open = pump_acks(s, p[0], (int)(deadline - now));
    }
    kill(pid, SIGKILL);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    g_child = -1;
    while (pump_acks(s, p[0], -1)) {
    }
    close(p[0]);
    g_pipe = -1;
    if (s->child_err)
        cr_assert_fail("seed=%" PRIu64 " cycle=%u: child %s failed: %s",
                       s->seed, s->cycle,
                       s->child_err_magic == ACK_OPENERR ? "open" : "write",
                       kv_strerror(s->child_err));
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "seed=%" PRIu64 " cycle=%u: child ended by itself (status %#x)",
              s->seed, s->cycle, status);
    bool any = false;
    for (int t = 0; t < THREADS; t++) any |= s->any_ack[t];
    if (!any) s->kills_before_ack++;
    verify(s);
}

static long env_long(const char *name, long dflt) {
    const char *e = getenv(name);
    return e && *e ? strtol(e, NULL, 0) : dflt;
}

/* Static so that a failed assertion leaks nothing. */
static crash_state g_state;

static void run_variant(const variant *v) {
    crash_state *s = &g_state;
    memset(s, 0, sizeof *s);
    s->v = v;
    const char *e = getenv("QFS_SEED");
    s->seed = e && *e ? strtoull(e, NULL, 0)
                      : (uint64_t)time(NULL) * 1000003u ^ kv_now_ns() ^
                            (uint64_t)getpid();
    s->rng = s->seed;
    long cycles = env_long("QFS_CRASH_CYCLES", DEFAULT_CYCLES);
    fprintf(stderr, "crash/%s: seed=%" PRIu64 " cycles=%ld\n", v->name, s->seed,
            cycles);
    for (long c = 0; c < cycles; c++) {
        s->cycle = (uint32_t)c;
        run_cycle(s);
    }
    fprintf(stderr,
            "crash/%s: %ld cycles, %ld acknowledged writes, %ld kills before "
            "the first ack, first ack after %.0f ms on average\n",
            v->name, cycles, s->total_acks, s->kills_before_ack,
            s->first_acks ? (double)s->first_ack_ms_sum / (double)s->first_acks
                          : 0.0);
    cr_assert_gt(s->total_acks, 0, "no write was ever acknowledged");
}

TestSuite(crash, .init = setup, .fini = teardown, .timeout = 600);

Test(crash, puts) {
    static const variant v = {"puts", false, false};
    run_variant(&v);
}

Test(crash, puts_and_deletes) {
    static const variant v = {"puts+deletes", true, false};
    run_variant(&v);
}

Test(crash, batches_with_deletes) {
    static const variant v = {"batches", true, true};
    run_variant(&v);
}
