/*
 * exec: the engine threads. The replica-side reads and writes of requests
 * (a coordinator's own copy, replica-get, replica-put) run here instead of
 * one libuv pool job each.
 *
 * On this kind of machine a hand-off between threads costs more than the
 * engine call it carries: a pool job is a wake-up of a pool thread and a
 * wake-up of the loop, each a futex or eventfd system call and a context
 * switch, and with one job per frame they were half of a node's CPU. So
 * jobs go in batches. The loop collects the jobs of one turn and, after
 * the turn's I/O callbacks (a check handle), hands them over together and
 * wakes one thread. A thread takes every queued get, or up to
 * REP_STORE_MAX_GROUP writes, and wakes another thread only if work is
 * left and one is idle. Writes taken together are one rep_store_apply:
 * one engine batch and, in group-commit mode, one fsync for all of them,
 * where separate jobs each waited for a share of one. Finished jobs go
 * back in one list and one uv_async_send wakes the loop, which runs their
 * done callbacks.
 *
 * Nothing blocks the loop: the threads do the disk work; the loop only
 * moves lists under a mutex held for a few pointer updates.
 */
#include "replica/node_int.h"

#define MOD "node"
#define EXEC_THREADS 4             /* writes wait on fsync: several */
#define MAX_GETS 64                /* gets one thread takes at once */
#define MAX_WRITE_BYTES (4u << 20) /* bytes of writes taken at once */

struct rep_exec {
    rep_node *node;
    /* Shared with the threads, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rep_job *gets, *gets_tail;
    rep_job *writes, *writes_tail;
    rep_job *done, *done_tail;
    int idle;  /* threads waiting on cv */
    bool quit; /* threads return */
    pthread_t threads[EXEC_THREADS];
    int nthreads;
    /* The loop's own. */
    uv_async_t async;
    uv_check_t check;
    uv_idle_t spin;            /* keeps the poll from blocking with jobs held */
    rep_job *held, *held_tail; /* submitted this turn */
    uint64_t outstanding;      /* submitted, done not yet called */
    bool open, closing;
};

static void append(rep_job **head, rep_job **tail, rep_job *j) {
    j->next = NULL;
    *(*head ? &(*tail)->next : head) = j;
    *tail = j;
}

/* ---- the threads ---- */

static void run_gets(rep_exec *x, rep_job *list) {
    for (rep_job *j = list; j; j = j->next) {
        kv_buf_reset(&j->out);
        j->op.rc = rep_store_get(x->node->store, j->op.key, &j->out);
    }
}

static void run_writes(rep_exec *x, rep_job *list) {
    rep_store_op ops[REP_STORE_MAX_GROUP];
    size_t n = 0;
    for (rep_job *j = list; j; j = j->next) {
        ops[n] = j->op;
        ops[n].out = j->op.kind == REP_STORE_OP_UPDATE ? &j->out : NULL;
        n++;
    }
    rep_store_apply(x->node->store, ops, n);
    n = 0;
    for (rep_job *j = list; j; j = j->next) j->op.rc = ops[n++].rc;
}

/* Take a list of work from x's queues, under mu: every get up to
 * MAX_GETS, else writes up to REP_STORE_MAX_GROUP and MAX_WRITE_BYTES
 * (at least one). *gets says which, *lastp is the list's last job. */
static rep_job *take(rep_exec *x, bool *gets, rep_job **lastp) {
    rep_job **head = x->gets ? &x->gets : &x->writes;
    rep_job **tail = x->gets ? &x->gets_tail : &x->writes_tail;
    *gets = head == &x->gets;
    rep_job *first = *head, *last = first;
    size_t count = 1, bytes = first->op.value.len + first->op.key.len;
    while (last->next) {
        size_t more = last->next->op.value.len + last->next->op.key.len;
        if (*gets ? count >= MAX_GETS
                  : count >= REP_STORE_MAX_GROUP ||
                        bytes + more > MAX_WRITE_BYTES)
            break;
        last = last->next;
        count++;
        bytes += more;
    }
    *head = last->next;
    if (!*head) *tail = NULL;
    last->next = NULL;
    *lastp = last;
    return first;
}

static void *exec_thread(void *arg) {
    rep_exec *x = arg;
    pthread_setname_np(pthread_self(), "qfs-exec");
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while (!x->quit && !x->gets && !x->writes) {
            x->idle++;
            pthread_cond_wait(&x->cv, &x->mu);
            x->idle--;
        }
        if (x->quit) break;
        bool gets;
        rep_job *last, *list = take(x, &gets, &last);
        if ((x->gets || x->writes) && x->idle > 0) pthread_cond_signal(&x->cv);
        pthread_mutex_unlock(&x->mu);
        if (gets)
            run_gets(x, list);
        else
            run_writes(x, list);
        pthread_mutex_lock(&x->mu);
        bool wake = x->done == NULL;
        *(x->done ? &x->done_tail->next : &x->done) = list;
        x->done_tail = last;
        /* An empty list means the loop took the last one (or none came
         * yet): this one needs a wake-up; otherwise one is on its way. */
        if (wake) uv_async_send(&x->async);
    }
    pthread_mutex_unlock(&x->mu);
    return NULL;
}

/* ---- the loop ---- */

static void close_handles(rep_exec *x) {
    if (!x->open) return;
    x->open = false;
    uv_close((uv_handle_t *)&x->async, NULL);
    uv_close((uv_handle_t *)&x->check, NULL);
    uv_close((uv_handle_t *)&x->spin, NULL);
}

static void on_done(uv_async_t *a) {
    rep_exec *x = a->data;
    pthread_mutex_lock(&x->mu);
    rep_job *list = x->done;
    x->done = x->done_tail = NULL;
    pthread_mutex_unlock(&x->mu);
    while (list) {
        rep_job *j = list;
        list = j->next;
        x->outstanding--;
        j->done(j);
    }
    if (x->closing && x->outstanding == 0) close_handles(x);
}

/* After the turn's I/O callbacks: hand the jobs held to the threads. */
static void on_check(uv_check_t *c) {
    rep_exec *x = c->data;
    uv_idle_stop(&x->spin);
    if (!x->held) return;
    rep_job *list = x->held;
    x->held = x->held_tail = NULL;
    pthread_mutex_lock(&x->mu);
    while (list) {
        rep_job *j = list;
        list = j->next;
        if (j->op.kind == REP_JOB_GET)
            append(&x->gets, &x->gets_tail, j);
        else
            append(&x->writes, &x->writes_tail, j);
    }
    if (x->idle > 0 && (x->gets || x->writes)) pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

static void on_spin(uv_idle_t *h) {
    (void)h;
}

int rep__exec_open(rep_node *n) {
    rep_exec *x = kv_calloc(1, sizeof *x);
    if (!x) return -ENOMEM;
    x->node = n;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    n->exec = x;
    uv_async_init(&n->loop, &x->async, on_done);
    uv_check_init(&n->loop, &x->check);
    uv_idle_init(&n->loop, &x->spin);
    x->async.data = x->check.data = x->spin.data = x;
    uv_check_start(&x->check, on_check);
    /* The check handle must not keep the loop alive on its own. */
    uv_unref((uv_handle_t *)&x->check);
    x->open = true;
    for (int i = 0; i < EXEC_THREADS; i++) {
        int rc = pthread_create(&x->threads[i], NULL, exec_thread, x);
        if (rc) {
            kv_error(MOD, "cannot start an engine thread: %s", strerror(rc));
            return -rc;
        }
        x->nthreads++;
    }
    return 0;
}

int rep__exec(rep_node *n, rep_job *j) {
    rep_exec *x = n->exec;
    if (!x || !x->open || x->closing) return KV_ECLOSED;
    if (!x->held) uv_idle_start(&x->spin, on_spin);
    append(&x->held, &x->held_tail, j);
    x->outstanding++;
    return 0;
}

void rep__exec_stop(rep_node *n) {
    rep_exec *x = n->exec;
    if (!x || x->closing) return;
    x->closing = true;
    if (x->outstanding == 0) close_handles(x);
}

void rep__exec_free(rep_node *n) {
    rep_exec *x = n->exec;
    if (!x) return;
    pthread_mutex_lock(&x->mu);
    x->quit = true;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    for (int i = 0; i < x->nthreads; i++) pthread_join(x->threads[i], NULL);
    pthread_cond_destroy(&x->cv);
    pthread_mutex_destroy(&x->mu);
    kv_free(x);
    n->exec = NULL;
}
