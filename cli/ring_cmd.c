/*
 * quorumfs ring | leave: look at a cluster's membership, and take a node
 * out of it.
 *
 *   quorumfs ring [--node HOST:PORT] [--ranges]
 *   quorumfs leave [--node HOST:PORT] [--remove MEMBER]
 *   quorumfs bucket [--node HOST:PORT] NAME [--lww | --siblings]
 *
 * ring prints the state the node holds: the ring's version, every member
 * with its status, address, partitions and share of the keys (as primary
 * and as one of N replicas), the move in progress if any; --ranges adds
 * every run of partitions with one owner (partition numbers, hash range,
 * owner). leave asks the node to leave: it hands its data to the members
 * that take its partitions, then stops; with --remove, a member that is
 * down for good is removed on its behalf. bucket shows or sets how a
 * bucket (the part of a key before its first '/') resolves concurrent
 * writes: siblings (the default, vector clocks) or last writer wins.
 */
#include "cli/cli.h"
#include "replica/client.h"
#include "ring/ring.h"

#include <stdio.h>
#include <stdlib.h>

#define ERR(cmd, ...)                                                          \
    (fprintf(stderr, "quorumfs %s: ", cmd), fprintf(stderr, __VA_ARGS__))

static const char *status_name(ring_status s) {
    switch (s) {
    case RING_JOINING:
        return "joining";
    case RING_VALID:
        return "valid";
    case RING_LEAVING:
        return "leaving";
    default:
        return "removed";
    }
}

static int parse_node(const char *cmd, int argc, char **argv, const char **node,
                      bool *ranges) {
    *node = REP_DEFAULT_ADDRESS;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--node") && i + 1 < argc) {
            *node = argv[++i];
        } else if (ranges && !strcmp(argv[i], "--ranges")) {
            *ranges = true;
        } else {
            ERR(cmd, "usage: quorumfs %s [--node HOST:PORT]%s\n", cmd,
                ranges ? " [--ranges]" : "");
            return 2;
        }
    }
    return 0;
}

/* Copies of a partition held by each member: how many preference lists
 * of length n it appears in. */
static void replica_counts(const ring *r, int n, uint32_t *count) {
    uint32_t q = ring_partitions(r), list[16];
    int shift = 64 - __builtin_ctz(q);
    for (uint32_t p = 0; p < q; p++) {
        int got = ring_preflist(r, (uint64_t)p << shift, n, list);
        for (int i = 0; i < got; i++) count[list[i]]++;
    }
}

static void print_ring(const ring_cluster *s, bool ranges) {
    const ring *r = ring_cluster_ring(s), *nx = ring_cluster_next(s);
    uint32_t q = ring_partitions(r), nm = ring_members(r);
    printf("ring version %llu: %u members, %u partitions\n",
           (unsigned long long)ring_cluster_version(s), nm, q);
    if (nx)
        printf("moving to %u members (next ring, version %llu): members "
               "still moving data are marked\n",
               ring_members(nx),
               (unsigned long long)ring_cluster_next_version(s));
    uint32_t *copies = kv_calloc(nm, sizeof *copies);
    if (copies) replica_counts(r, 3, copies);
    printf("%-20s %-22s %-8s %10s %8s %8s\n", "member", "address", "status",
           "partitions", "primary", "N=3");
    for (uint32_t i = 0; i < ring_cluster_members(s); i++) {
        ring_member_info m = ring_cluster_member(s, i);
        int at = ring_find(r, m.name);
        char owned[16] = "-", primary[16] = "-", share[16] = "-";
        if (at >= 0) {
            uint32_t o = ring_owned(r, (uint32_t)at);
            snprintf(owned, sizeof owned, "%u", o);
            snprintf(primary, sizeof primary, "%.2f%%", 100.0 * o / q);
            if (copies)
                snprintf(share, sizeof share, "%.2f%%", 100.0 * copies[at] / q);
        }
        bool moving = nx && (at >= 0 || ring_find(nx, m.name) >= 0) &&
                      m.done < ring_cluster_next_version(s);
        printf("%-20.*s %-22.*s %-8s %10s %8s %8s%s\n", (int)m.name.len,
               (const char *)m.name.ptr, (int)m.addr.len,
               (const char *)m.addr.ptr, status_name(m.status), owned, primary,
               share, moving ? "  (moving)" : "");
    }
    kv_free(copies);
    for (uint32_t i = 0; i < ring_cluster_buckets(s); i++) {
        uint32_t flags;
        kv_slice b = ring_cluster_bucket(s, i, &flags);
        printf("bucket %.*s: %s\n", (int)b.len, (const char *)b.ptr,
               flags & RING_BUCKET_LWW ? "last writer wins" : "siblings");
    }
    if (!ranges) return;
    printf("\n%-13s %-37s %s\n", "partitions", "hashes", "owner");
    int shift = 64 - __builtin_ctz(q);
    for (uint32_t p = 0; p < q;) {
        uint32_t o = ring_owner(r, p), e = p;
        while (e + 1 < q && ring_owner(r, e + 1) == o) e++;
        kv_slice name = ring_member(r, o);
        uint64_t lo = (uint64_t)p << shift;
        uint64_t hi = ((uint64_t)e << shift) + ((UINT64_C(1) << shift) - 1);
        printf("%5u-%-7u %016llx-%016llx  %.*s\n", p, e, (unsigned long long)lo,
               (unsigned long long)hi, (int)name.len, (const char *)name.ptr);
        p = e + 1;
    }
}

int cli_ring(int argc, char **argv) {
    const char *node;
    bool ranges = false;
    if (parse_node("ring", argc, argv, &node, &ranges)) return 2;
    rep_client *c;
    int rc = rep_client_connect(node, 10000, &c);
    if (rc) {
        ERR("ring", "cannot connect to '%s': %s\n", node, kv_strerror(rc));
        return 2;
    }
    kv_buf b = KV_BUF_INIT;
    ring_cluster *s = NULL;
    rc = rep_client_state(c, &b);
    if (rc == 0) rc = ring_cluster_decode(kv_buf_slice(&b), &s);
    rep_client_close(c);
    kv_buf_release(&b);
    if (rc) {
        ERR("ring", "cluster state from '%s': %s\n", node, kv_strerror(rc));
        return 2;
    }
    if (!ring_cluster_ring(s)) {
        printf("'%s' knows no ring yet (joining through its seeds)\n", node);
        ring_cluster_unref(s);
        return 1;
    }
    print_ring(s, ranges);
    ring_cluster_unref(s);
    return fflush(stdout) == 0 ? 0 : 2;
}

int cli_leave(int argc, char **argv) {
    const char *node = REP_DEFAULT_ADDRESS, *remove = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--node") && i + 1 < argc) {
            node = argv[++i];
        } else if (!strcmp(argv[i], "--remove") && i + 1 < argc) {
            remove = argv[++i];
        } else {
            ERR("leave", "usage: quorumfs leave [--node HOST:PORT] "
                         "[--remove MEMBER]\n");
            return 2;
        }
    }
    rep_client *c;
    int rc = rep_client_connect(node, 10000, &c);
    if (rc) {
        ERR("leave", "cannot connect to '%s': %s\n", node, kv_strerror(rc));
        return 2;
    }
    const char *name = remove ? remove : rep_client_node(c);
    rc = remove ? rep_client_remove(c, kv_slice_str(remove))
                : rep_client_leave(c);
    if (rc == -EINVAL)
        ERR("leave",
            "'%s' cannot leave: it is the last member, or not yet "
            "in the ring\n",
            name);
    else if (rc == -EBUSY)
        ERR("leave",
            "'%s' is up as far as '%s' can tell: ask it to leave "
            "(quorumfs leave --node ITS-ADDRESS), or wait until it is "
            "seen down\n",
            name, rep_client_node(c));
    else if (rc)
        ERR("leave", "'%s': %s\n", name, kv_strerror(rc));
    else if (remove)
        printf("'%s' is being removed: its partitions go to the others, "
               "which copy its data from the remaining replicas\n",
               name);
    else
        printf("'%s' is leaving: it hands its data over, then stops "
               "(follow with: quorumfs ring)\n",
               name);
    rep_client_close(c);
    return rc ? 2 : 0;
}

int cli_bucket(int argc, char **argv) {
    const char *node = REP_DEFAULT_ADDRESS, *name = NULL;
    int set = -1;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--node") && i + 1 < argc)
            node = argv[++i];
        else if (!strcmp(argv[i], "--lww"))
            set = RING_BUCKET_LWW;
        else if (!strcmp(argv[i], "--siblings"))
            set = 0;
        else if (argv[i][0] != '-' && !name)
            name = argv[i];
        else
            name = NULL, i = argc;
    }
    if (!name || !ring_name_valid(kv_slice_str(name))) {
        ERR("bucket",
            "usage: quorumfs bucket [--node HOST:PORT] NAME "
            "[--lww | --siblings] (NAME: 1-%u of A-Z a-z 0-9 . _ : "
            "-)\n",
            RING_MAX_NAME);
        return 2;
    }
    rep_client *c;
    int rc = rep_client_connect(node, 10000, &c);
    if (rc) {
        ERR("bucket", "cannot connect to '%s': %s\n", node, kv_strerror(rc));
        return 2;
    }
    uint32_t flags = 0;
    if (set >= 0) {
        rc = rep_client_bucket(c, kv_slice_str(name), (uint32_t)set);
        flags = (uint32_t)set;
    } else {
        kv_buf b = KV_BUF_INIT;
        ring_cluster *s = NULL;
        rc = rep_client_state(c, &b);
        if (rc == 0) rc = ring_cluster_decode(kv_buf_slice(&b), &s);
        if (rc == 0) flags = ring_cluster_bucket_flags(s, kv_slice_str(name));
        ring_cluster_unref(s);
        kv_buf_release(&b);
    }
    rep_client_close(c);
    if (rc) {
        ERR("bucket", "'%s': %s\n", name, kv_strerror(rc));
        return 2;
    }
    printf("bucket %s: %s\n", name,
           flags & RING_BUCKET_LWW ? "last writer wins" : "siblings");
    return 0;
}
