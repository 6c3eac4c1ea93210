/*
 * benchutil: what the benchmark programs in bench/ share. Clocks and a
 * random stream; a latency histogram; an error tally; parsing of options
 * and number arguments; JSON and table cells; finding programs; and child
 * processes, each in a process group of its own, that a signal handler
 * can reach.
 *
 * Threads: a bu_hist and a bu_tally belong to one thread at a time (each
 * worker fills its own, and they are merged after a join). A child in a
 * bu_procs is started, waited for and reaped by one thread (the main
 * thread in these programs) while any other thread may call
 * bu_procs_kill: every change of a slot and every kill is made under
 * p->lock, so such a kill never reaches a pid that was reaped.
 * bu_procs_signal is the one function meant for a signal handler; it
 * takes no lock and only reads pids. bu_prog_set is called once, at the
 * start of main, before any other thread exists; everything else here
 * only reads the name.
 *
 * Messages: the functions that report an error print one line on stderr
 * that starts with the program's name ("fs_bench: cannot fork: ...");
 * the others leave the reporting to their caller.
 */
#ifndef QFS_BENCH_BENCHUTIL_H
#define QFS_BENCH_BENCHUTIL_H

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

/* ---- the program's name --------------------------------------------------
 */

/* Set the name that starts every message of this library and names the
 * default run directory (for example "fs_bench"). name must stay valid
 * for the life of the program; call it once, first thing in main. */
void bu_prog_set(const char *name);

/* The name given to bu_prog_set, or "bench" if none was. */
const char *bu_prog(void);

/* ---- time -----------------------------------------------------------------
 */

/* The monotonic clock in nanoseconds. */
static inline uint64_t bu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Seconds elapsed since t0, a bu_now_ns value. */
double bu_secs_since(uint64_t t0);

/* Sleep for ms milliseconds (less if a signal interrupts the sleep). */
void bu_sleep_ms(int ms);

/* ---- random numbers -------------------------------------------------------
 */

/* The splitmix64 finalizer: a bijection on 64-bit values that mixes every
 * input bit into every output bit. */
static inline uint64_t bu_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The next value of the splitmix64 stream whose state is *s. Each thread
 * keeps a state of its own. */
static inline uint64_t bu_rnd_next(uint64_t *s) {
    *s += 0x9e3779b97f4a7c15ULL;
    return bu_mix64(*s);
}

/* ---- latency histogram ----------------------------------------------------
 * Log-linear, in nanoseconds. With 2^b sub-buckets per power of two (b is
 * the histogram's sub_bits), values below 2^(b+1) have a bucket each and
 * every bucket above is at most 1/2^b of its values wide. Values from
 * 2^BU_HIST_MAX_EXP ns (about 73 minutes) up count in the last bucket.
 */

#define BU_HIST_MAX_EXP 42
#define BU_HIST_MAX_SUB_BITS 6
/* Buckets needed at the finest precision, BU_HIST_MAX_SUB_BITS. */
#define BU_HIST_BUCKETS                                                        \
    ((2 << BU_HIST_MAX_SUB_BITS) +                                             \
     (BU_HIST_MAX_EXP - BU_HIST_MAX_SUB_BITS - 1) *                            \
         (1 << BU_HIST_MAX_SUB_BITS))

typedef struct bu_hist {
    int sub_bits;   /* log2 of the sub-buckets per power of two */
    uint64_t count; /* values added */
    uint64_t b[BU_HIST_BUCKETS];
} bu_hist;

/* Make h an empty histogram with 2^sub_bits sub-buckets per power of two;
 * sub_bits is 1 to BU_HIST_MAX_SUB_BITS. */
void bu_hist_init(bu_hist *h, int sub_bits);

/* A new empty histogram (as bu_hist_init), or NULL when out of memory.
 * The caller owns it and frees it with bu_hist_free. */
bu_hist *bu_hist_new(int sub_bits);

/* Free a histogram from bu_hist_new; NULL is ignored. */
void bu_hist_free(bu_hist *h);

/* Empty h, keeping its precision. */
void bu_hist_reset(bu_hist *h);

/* The bucket of value v in a histogram of the given sub_bits. */
static inline int bu_hist_index(int sub_bits, uint64_t v) {
    if (v >= (UINT64_C(1) << BU_HIST_MAX_EXP))
        v = (UINT64_C(1) << BU_HIST_MAX_EXP) - 1;
    if (v < (UINT64_C(2) << sub_bits)) return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= sub_bits + 1 */
    int sub = (int)((v >> (e - sub_bits)) & ((UINT64_C(1) << sub_bits) - 1));
    return (2 << sub_bits) + (e - sub_bits - 1) * (1 << sub_bits) + sub;
}

/* Count one value of ns nanoseconds. */
static inline void bu_hist_add(bu_hist *h, uint64_t ns) {
    h->b[bu_hist_index(h->sub_bits, ns)]++;
    h->count++;
}

/* Add the counts of h to into. Both must have the same sub_bits. */
void bu_hist_merge(bu_hist *into, const bu_hist *h);

/* The q-quantile (0 < q <= 1) in microseconds, interpolated linearly
 * inside the bucket that holds it; NAN for an empty histogram. */
double bu_hist_quantile_us(const bu_hist *h, double q);

/* The q-quantile (0 < q <= 1) in microseconds as the middle of the bucket
 * that holds the value of rank ceil(q * count) (at least 1), or the
 * bucket's value where a bucket holds one value; NAN for an empty
 * histogram. */
double bu_hist_midpoint_us(const bu_hist *h, double q);

/* ---- error tally ----------------------------------------------------------
 * Errors are counted by kind, a call's name and an error code, keeping
 * BU_TALLY_MAX kinds and the first text sample of each.
 */

#define BU_TALLY_MAX 8

typedef struct bu_tally {
    int n; /* kinds kept in e */
    struct {
        const char *op;   /* the call that failed; a string literal */
        int code;         /* the error code, in the caller's convention */
        uint64_t count;   /* errors of this kind */
        char sample[120]; /* the first text given for the kind, or "" */
    } e[BU_TALLY_MAX];
    uint64_t other; /* errors of kinds beyond the BU_TALLY_MAX kept */
    uint64_t total; /* all errors counted */
} bu_tally;

/* Count count errors of kind (op, code). sample (may be NULL) is copied
 * when the kind is new. op must outlive t: pass a string literal. */
void bu_tally_add(bu_tally *t, const char *op, int code, uint64_t count,
                  const char *sample);

/* Add the counts of t to into. */
void bu_tally_merge(bu_tally *into, const bu_tally *t);

/* Names the kind i of t into buf of len bytes, for bu_tally_json and
 * bu_tally_print. */
typedef void (*bu_tally_name_fn)(const bu_tally *t, int i, char *buf,
                                 size_t len);

/* Print t on f as a JSON object from each kind's name (from name) to its
 * count, with the key "other" for the kinds not kept:
 * {"open EIO":3,"other":1}. */
void bu_tally_json(FILE *f, const bu_tally *t, bu_tally_name_fn name);

/* Print t on f as a list, each kind as " COUNT x NAME" (NAME from name)
 * after a comma but the first, and the kinds not kept as ", COUNT x
 * other": " 3 x open EIO, 1 x other". No newline. */
void bu_tally_print(FILE *f, const bu_tally *t, bu_tally_name_fn name);

/* ---- output ---------------------------------------------------------------
 */

/* Print ,"name":v on f, with v in %.6g, or null for NAN and infinities. */
void bu_json_num(FILE *f, const char *name, double v);

/* Print s on f as a JSON string: quoted, with '"' and '\' escaped by a
 * backslash and control characters as \u00XX. */
void bu_json_str(FILE *f, const char *s);

/* A table cell: v formatted with fmt (one double conversion) into b of n
 * bytes, or "-" for NAN. */
void bu_fmt_num(char *b, size_t n, double v, const char *fmt);

/* The last lines of the file at path on f, each after indent and "| ",
 * under a line naming the file: at most max_lines of the last 2 KiB, the
 * first line left out if the 2 KiB begin inside it. Prints nothing if the
 * file cannot be read or holds no line. */
void bu_print_log_tail(FILE *f, const char *path, const char *indent,
                       int max_lines);

/* "exit status N", "signal N" or "status N" for a wait status, into buf. */
void bu_describe_status(int status, char *buf, size_t len);

/* ---- command line ---------------------------------------------------------
 */

/* Report a usage error: "<prog>: <message>" and "try '<prog> --help'" on
 * stderr. Returns -1, for `return bu_usage_error(...)`. */
int bu_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The options a program takes, for bu_opt_next. */
typedef struct bu_opt_spec {
    const char *const *flags;      /* names without a value, NULL-ended */
    const char *const *with_value; /* names that take one, NULL-ended */
    void (*usage)(FILE *f);        /* prints the program's usage on f */
} bu_opt_spec;

/* One command-line option, as bu_opt_next splits it. */
typedef struct bu_opt {
    const char *name;  /* the option, without "=VALUE" */
    const char *value; /* its value; NULL for a flag */
    char buf[64];      /* holds name when it came with "=VALUE" */
} bu_opt;

/* Read the option at argv[*i] into o. An option that starts with "--" may
 * carry its value as "--name=VALUE"; a name in spec->with_value otherwise
 * takes the next argument as its value, and *i is advanced past it.
 * Returns 0 for a flag or an option with its value, and -1 after
 * reporting (bu_usage_error) a name in neither list, a value given to a
 * flag, or a value missing at the end of argv. For -h or --help it prints
 * spec->usage on stdout and exits the program with status 0. o->name and
 * o->value stay valid while o and argv do. */
int bu_opt_next(const bu_opt_spec *spec, int argc, char **argv, int *i,
                bu_opt *o);

/* Parse an unsigned decimal: 0, or -1 for an empty string, a sign '-',
 * trailing characters or a value beyond 2^64 - 1. */
int bu_parse_u64(const char *s, uint64_t *out);

/* Parse a decimal in [lo, hi] (0 <= lo <= hi): 0, or -1 as bu_parse_u64
 * or for a value out of range. */
int bu_parse_int(const char *s, int lo, int hi, int *out);

/* Parse a number of seconds in [lo, hi] (a decimal fraction or exponent
 * is allowed): 0, or -1 for anything else. */
int bu_parse_secs(const char *s, double lo, double hi, double *out);

/* ---- files and programs ---------------------------------------------------
 */

/* snprintf into a path buffer: 0, or -1 if the result did not fit (out
 * then holds its start). */
int bu_path_fmt(char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Is path a regular file this process may execute? */
bool bu_executable(const char *path);

/* The first executable file called name in a directory of $PATH (or of
 * /usr/local/bin:/usr/bin:/bin when $PATH is unset or empty), into out of
 * len bytes. false, with out "", if there is none. */
bool bu_find_on_path(const char *name, char *out, size_t len);

/* The quorumfs binary of this build tree, next to this program or one
 * level above it, as an absolute path without symlinks into out (of at
 * least PATH_MAX bytes); else the first quorumfs on $PATH. false, with
 * out "", if none is found. */
bool bu_find_quorumfs(char *out, size_t len);

/* Remove path and everything under it, like rm -rf, without following
 * symbolic links or entering another mount (a mount point still mounted
 * fails to go). Each entry that cannot be removed is reported; a path
 * that does not exist is not an error. */
void bu_rm_rf(const char *path);

/* The run directory: dir as given, created if it does not exist; or, if
 * dir is "", a new directory /tmp/<prog>.XXXXXX written into dir (len
 * bytes), with *made set. 0, or -1 after reporting. */
int bu_work_dir(char *dir, size_t len, bool *made);

/* ---- signals --------------------------------------------------------------
 */

/* Run handler on SIGINT, SIGTERM and SIGHUP, and ignore SIGPIPE (a write
 * to a closed socket or pipe then fails with EPIPE). */
void bu_signals_catch(void (*handler)(int));

/* Block every signal in the calling thread, the previous mask into *old
 * (restore it with pthread_sigmask(SIG_SETMASK, old, NULL)). */
void bu_signals_block(sigset_t *old);

/* ---- child processes ------------------------------------------------------
 * A program keeps its children in one static bu_procs, so that its signal
 * handler and its atexit hook can reach them all. A child is started in a
 * process group of its own and killed by the kernel if the program dies
 * (PR_SET_PDEATHSIG); signals go to its whole group. Slots are taken by
 * bu_spawn and freed by bu_child_reap, which forgets the pid before it
 * reaps it, so no pid in the table is ever reused by another process.
 */

#define BU_MAX_CHILDREN 40

typedef struct bu_child {
    volatile pid_t pid; /* 0: a free slot */
    int group;          /* the caller's: which system or target it serves */
    int kind;           /* the caller's: what sort of process it is */
    char name[32];      /* for messages */
    char log[PATH_MAX]; /* where its stderr goes, "" for /dev/null */
} bu_child;

typedef struct bu_procs {
    bu_child c[BU_MAX_CHILDREN]; /* changed under lock */
    pthread_mutex_t lock;
    atomic_int stop; /* the signal that asked the program to stop, or 0 */
} bu_procs;

#define BU_PROCS_INIT                                                          \
    { .lock = PTHREAD_MUTEX_INITIALIZER }

/* For the program's signal handler: the first signal is recorded in
 * p->stop and sends SIGTERM to every child's group; a second sends
 * SIGKILL to them and exits the program with status 128 + sig.
 * Async-signal-safe. */
void bu_procs_signal(bu_procs *p, int sig);

/* Has a signal (or bu_procs_request_stop) asked the program to stop? */
bool bu_procs_stopping(bu_procs *p);

/* Ask the program to stop as if sig had arrived, without signalling any
 * child. */
void bu_procs_request_stop(bu_procs *p, int sig);

/* Start argv[0] (a path; argv NULL-terminated) as a child in a free slot:
 * stdin from /dev/null, stdout appended to out and stderr to err (NULL or
 * "": /dev/null; both may name one file). group, kind and name are kept
 * in the slot, and err as its log. Returns the slot, or -1 after
 * reporting. */
int bu_spawn(bu_procs *p, int group, int kind, const char *name,
             char *const argv[], const char *out, const char *err);

/* Has the child in slot exited? It is left unreaped, so its pid cannot be
 * reused until bu_child_reap. */
bool bu_child_exited(bu_procs *p, int slot);

/* Wait up to ms milliseconds for the child in slot to exit; true if it
 * did. It is left unreaped. */
bool bu_child_wait(bu_procs *p, int slot, int ms);

/* Free the slot of the child, then wait for it to exit and reap it. Call
 * it once the child has exited or has been told to (it blocks until the
 * child exits). Returns its wait status. */
int bu_child_reap(bu_procs *p, int slot);

/* Stop the child in slot: SIGTERM to its group, up to grace_ms for it to
 * exit, then SIGKILL; then reap it. Returns its wait status; *killed is
 * set if it needed the SIGKILL. */
int bu_child_stop(bu_procs *p, int slot, int grace_ms, bool *killed);

/* Stop every child of group (every child for group < 0) at once: SIGTERM
 * to each group, then up to grace_ms for them all to exit; those that did
 * are reaped. Returns how many are still running (use bu_child_stop on
 * each to kill them). */
int bu_procs_terminate(bu_procs *p, int group, int grace_ms);

/* SIGKILL to the process group of every child of this kind in group
 * (every group for group < 0). They are not reaped. */
void bu_procs_kill(bu_procs *p, int kind, int group);

#endif
