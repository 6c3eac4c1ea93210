/*
 * Internal iterators that combine others: the empty iterator and the merging
 * iterator, which turns n sorted child streams (memtables, tables, levels)
 * into one stream in eng__ikey_cmp order.
 *
 * The merge keeps a binary min-heap of the valid children with each child's
 * current key cached next to it. A cached key stays valid because only the
 * child at the top of the heap is moved between full rebuilds (seek), and its
 * key is refreshed right after the move. Ties, which unique internal keys
 * rule out, are broken by child index so the output is still deterministic.
 *
 * A child that goes invalid with a non-zero status makes the merged iterator
 * invalid for good with that status: skipping the child would silently hide
 * its remaining entries from a reader or a compaction.
 */
#include "engine/engine_int.h"

/* ---- empty iterator ---- */

typedef struct empty_iter {
    eng_iiter base;
    int rc;
} empty_iter;

static bool empty_valid(eng_iiter *it) {
    return false;
}
static void empty_seek_first(eng_iiter *it) {}
static void empty_seek(eng_iiter *it, kv_slice ikey) {}
static void empty_next(eng_iiter *it) {}
static kv_slice empty_slice(eng_iiter *it) {
    return kv_slice_make(NULL, 0);
}
static int empty_status(eng_iiter *it) {
    return ((empty_iter *)it)->rc;
}
static void empty_free(eng_iiter *it);

static const eng_iiter_ops empty_ops = {
    empty_valid, empty_seek_first, empty_seek,   empty_next,
    empty_slice, empty_slice,      empty_status, empty_free,
};

/* Shared and never written, so handing out the plain empty iterator cannot
 * fail for lack of memory. */
static empty_iter empty_ok = {{&empty_ops}, 0};

static void empty_free(eng_iiter *it) {
    if (it != &empty_ok.base) kv_free(it);
}

eng_iiter *eng__iiter_empty(int rc) {
    if (rc == 0) return &empty_ok.base;
    empty_iter *e = kv_malloc(sizeof *e);
    if (!e) return NULL;
    e->base.ops = &empty_ops;
    e->rc = rc;
    return &e->base;
}

/* ---- merging iterator ---- */

typedef struct node {
    kv_slice key; /* the child's current key */
    int kid;      /* index into kids */
} node;

typedef struct merge_iter {
    eng_iiter base;
    eng_iiter **kids; /* owned */
    int n;
    node *heap; /* the valid children; heap[0] holds the smallest key */
    int nheap;
    int err; /* first child error seen; sticky */
} merge_iter;

static bool less(const node *a, const node *b) {
    int c = eng__ikey_cmp(a->key, b->key);
    return c < 0 || (c == 0 && a->kid < b->kid);
}

static void sift_down(merge_iter *m, int i) {
    node x = m->heap[i];
    for (;;) {
        int l = 2 * i + 1, r = l + 1;
        if (l >= m->nheap) break;
        int c = r < m->nheap && less(&m->heap[r], &m->heap[l]) ? r : l;
        if (!less(&m->heap[c], &x)) break;
        m->heap[i] = m->heap[c];
        i = c;
    }
    m->heap[i] = x;
}

/* Rebuild the heap after every child has been repositioned. */
static void rebuild(merge_iter *m) {
    m->nheap = 0;
    for (int i = 0; i < m->n; i++) {
        eng_iiter *k = m->kids[i];
        if (k->ops->valid(k)) {
            m->heap[m->nheap].key = k->ops->key(k);
            m->heap[m->nheap].kid = i;
            m->nheap++;
        } else {
            int rc = k->ops->status(k);
            if (rc && !m->err) m->err = rc;
        }
    }
    if (m->err) {
        m->nheap = 0;
        return;
    }
    for (int i = m->nheap / 2 - 1; i >= 0; i--) sift_down(m, i);
}

static bool merge_valid(eng_iiter *it) {
    merge_iter *m = (merge_iter *)it;
    return m->err == 0 && m->nheap > 0;
}

static void merge_seek_first(eng_iiter *it) {
    merge_iter *m = (merge_iter *)it;
    if (m->err) return;
    for (int i = 0; i < m->n; i++) m->kids[i]->ops->seek_first(m->kids[i]);
    rebuild(m);
}

static void merge_seek(eng_iiter *it, kv_slice ikey) {
    merge_iter *m = (merge_iter *)it;
    if (m->err) return;
    for (int i = 0; i < m->n; i++) m->kids[i]->ops->seek(m->kids[i], ikey);
    rebuild(m);
}

static void merge_next(eng_iiter *it) {
    merge_iter *m = (merge_iter *)it;
    if (!merge_valid(it)) return;
    node *top = &m->heap[0];
    eng_iiter *k = m->kids[top->kid];
    k->ops->next(k);
    if (k->ops->valid(k)) {
        top->key = k->ops->key(k);
    } else {
        int rc = k->ops->status(k);
        if (rc) {
            m->err = rc;
            m->nheap = 0;
            return;
        }
        m->heap[0] = m->heap[--m->nheap];
    }
    if (m->nheap > 1) sift_down(m, 0);
}

static kv_slice merge_key(eng_iiter *it) {
    merge_iter *m = (merge_iter *)it;
    if (!merge_valid(it)) return kv_slice_make(NULL, 0);
    return m->heap[0].key;
}

static kv_slice merge_value(eng_iiter *it) {
    merge_iter *m = (merge_iter *)it;
    if (!merge_valid(it)) return kv_slice_make(NULL, 0);
    eng_iiter *k = m->kids[m->heap[0].kid];
    return k->ops->value(k);
}

static int merge_status(eng_iiter *it) {
    return ((merge_iter *)it)->err;
}

static void merge_free(eng_iiter *it) {
    merge_iter *m = (merge_iter *)it;
    for (int i = 0; i < m->n; i++) m->kids[i]->ops->free(m->kids[i]);
    kv_free(m->kids);
    kv_free(m->heap);
    kv_free(m);
}

static const eng_iiter_ops merge_ops = {
    merge_valid, merge_seek_first, merge_seek,   merge_next,
    merge_key,   merge_value,      merge_status, merge_free,
};

/* A NULL child is taken to be a child whose creation ran out of memory, so
 * callers can pass their array straight through: the result is then NULL
 * and the other children are freed. */
eng_iiter *eng__merge_iter(eng_iiter **children, int n) {
    merge_iter *m = NULL;
    KV_ASSERT(n >= 0 && (n == 0 || children));
    for (int i = 0; i < n; i++) {
        if (!children[i]) goto fail;
    }
    if (n == 0) return eng__iiter_empty(0);
    if (n == 1) return children[0];
    m = kv_calloc(1, sizeof *m);
    if (!m) goto fail;
    m->kids = kv_malloc((size_t)n * sizeof *m->kids);
    m->heap = kv_malloc((size_t)n * sizeof *m->heap);
    if (!m->kids || !m->heap) goto fail;
    memcpy(m->kids, children, (size_t)n * sizeof *m->kids);
    m->base.ops = &merge_ops;
    m->n = n;
    return &m->base;
fail:
    for (int i = 0; i < n; i++) {
        if (children[i]) children[i]->ops->free(children[i]);
    }
    if (m) {
        kv_free(m->kids);
        kv_free(m->heap);
        kv_free(m);
    }
    return NULL;
}
