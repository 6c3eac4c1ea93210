/*
 * quorumfs node | get | put | del: run a storage node, and talk to one.
 *
 *   quorumfs node --data DIR [--listen HOST:PORT] [--name NAME]
 *                 [--join HOST:PORT,...] [--n-val N] [--gossip-ms MS]
 *                 [--failure-timeout-ms MS] [--clock-offset-ms MS]
 *                 [--tombstone-grace-ms MS] [--read-hedge-ms MS]
 *   quorumfs get [--node HOST:PORT] [-n N -r R -w W] KEY
 *   quorumfs put [--node HOST:PORT] [-n N -r R -w W] [--sync] [--blind]
 *                KEY [VALUE]
 *   quorumfs del [--node HOST:PORT] [-n N -r R -w W] KEY
 *
 * put and del first read the key and pass its context, so they supersede
 * every sibling they saw, as overwriting or removing a file does; --blind
 * writes without reading (a concurrent sibling if the key exists). get
 * prints the value, or every sibling with its dot; exit 1 if the key does
 * not exist (or holds only tombstones).
 */
#include "cli/cli.h"
#include "replica/client.h"
#include "replica/dvv.h"
#include "replica/node.h"
#include "replica/proto.h"

#include <stdio.h>
#include <stdlib.h>

#define ERR(cmd, ...)                                                          \
    (fprintf(stderr, "quorumfs %s: ", cmd), fprintf(stderr, __VA_ARGS__))

static bool parse_u8(const char *s, uint8_t *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < 1 || v > 255) return false;
    *out = (uint8_t)v;
    return true;
}

int cli_node(int argc, char **argv) {
    rep_node_opts o;
    rep_node_opts_init(&o);
    o.listen = REP_DEFAULT_ADDRESS;
    o.handle_signals = true;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            ERR("node", "option '%s' needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--data"))
            o.data_dir = v;
        else if (!strcmp(a, "--listen"))
            o.listen = v;
        else if (!strcmp(a, "--name"))
            o.name = v;
        else if (!strcmp(a, "--join"))
            o.join = v;
        else if (!strcmp(a, "--n-val")) {
            if (!parse_u8(v, &o.n_val) || o.n_val > 16) {
                ERR("node", "--n-val wants 1..16\n");
                return 2;
            }
        } else if (!strcmp(a, "--clock-offset-ms")) {
            char *end;
            long long ms = strtoll(v, &end, 10);
            if (*end || end == v || ms < -86400000LL || ms > 86400000LL) {
                ERR("node", "--clock-offset-ms wants -86400000..86400000\n");
                return 2;
            }
            o.clock_offset_us = ms * 1000;
        } else if (!strcmp(a, "--read-hedge-ms")) {
            char *end;
            long ms = strtol(v, &end, 10);
            if (*end || end == v || ms < 0 || ms > 600000) {
                ERR("node", "--read-hedge-ms wants 0..600000\n");
                return 2;
            }
            o.read_hedge_ms = (uint32_t)ms;
        } else if (!strcmp(a, "--gossip-ms") ||
                   !strcmp(a, "--failure-timeout-ms") ||
                   !strcmp(a, "--tombstone-grace-ms")) {
            char *end;
            long ms = strtol(v, &end, 10);
            if (*end || end == v || ms < 10 || ms > 600000) {
                ERR("node", "%s wants 10..600000\n", a);
                return 2;
            }
            if (a[2] == 'g')
                o.gossip_ms = (uint32_t)ms;
            else if (a[2] == 'f')
                o.fd_timeout_ms = (uint32_t)ms;
            else
                o.tombstone_grace_ms = (uint32_t)ms;
        } else {
            ERR("node", "unknown option '%s'\n", a);
            return 2;
        }
        i++;
    }
    if (!o.data_dir) {
        ERR("node", "--data DIR is required\n");
        return 2;
    }
    rep_node *n;
    int rc = rep_node_open(&o, &n);
    if (rc) {
        ERR("node", "cannot start: %s\n", kv_strerror(rc));
        return 2;
    }
    fprintf(stderr, "quorumfs node '%s' serving on %s (data %s)\n",
            rep_node_name(n), rep_node_address(n), o.data_dir);
    rep_node_run(n);
    rc = rep_node_close(n);
    return rc ? 2 : 0;
}

typedef struct cmd_args {
    const char *node;
    rep_opts o;
    bool blind;
    const char *pos[2];
    int npos;
} cmd_args;

static int parse_args(const char *cmd, int argc, char **argv, cmd_args *a) {
    memset(a, 0, sizeof *a);
    a->node = REP_DEFAULT_ADDRESS;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint8_t *q = !strcmp(s, "-n")   ? &a->o.n
                     : !strcmp(s, "-r") ? &a->o.r
                     : !strcmp(s, "-w") ? &a->o.w
                                        : NULL;
        if (q || !strcmp(s, "--node")) {
            if (!v || (q && !parse_u8(v, q))) {
                ERR(cmd, "option '%s' needs a value (1..255 for -n -r -w)\n",
                    s);
                return 2;
            }
            if (!q) a->node = v;
            i++;
        } else if (!strcmp(s, "--sync")) {
            a->o.sync = true;
        } else if (!strcmp(s, "--blind")) {
            a->blind = true;
        } else if (s[0] == '-' && s[1] && a->npos == 0) {
            ERR(cmd, "unknown option '%s'\n", s);
            return 2;
        } else if (a->npos < 2) {
            a->pos[a->npos++] = s;
        } else {
            ERR(cmd, "too many arguments\n");
            return 2;
        }
    }
    uint8_t n = a->o.n ? a->o.n : 3, r = a->o.r ? a->o.r : 2,
            w = a->o.w ? a->o.w : 2;
    if (r > n || w > n) {
        ERR(cmd, "need 1 <= R, W <= N (N %u, R %u, W %u)\n", n, r, w);
        return 2;
    }
    if (r + w <= n)
        fprintf(stderr,
                "quorumfs %s: warning: R + W <= N (%u + %u <= %u): a read "
                "may not see the last write\n",
                cmd, r, w, n);
    return 0;
}

static int connect_to(const char *cmd, const char *node, rep_client **c) {
    int rc = rep_client_connect(node, 10000, c);
    if (rc) ERR(cmd, "cannot connect to '%s': %s\n", node, kv_strerror(rc));
    return rc;
}

/* Read key; *set is NULL if it does not exist. */
static int read_object(const char *cmd, rep_client *c, const char *key,
                       const rep_opts *o, dvv_set **set) {
    *set = NULL;
    kv_buf obj = KV_BUF_INIT;
    int rc = rep_client_get(c, kv_slice_str(key), o, &obj);
    if (rc == 0) {
        rc = dvv_set_decode(kv_buf_slice(&obj), set);
        if (rc)
            ERR(cmd, "'%s': bad object from the node: %s\n", key,
                kv_strerror(rc));
    } else if (rc == KV_ENOTFOUND) {
        rc = 0;
    } else {
        ERR(cmd, "get '%s': %s\n", key, kv_strerror(rc));
    }
    kv_buf_release(&obj);
    return rc;
}

static size_t live_siblings(const dvv_set *s) {
    size_t live = 0;
    for (size_t i = 0; i < dvv_set_siblings(s); i++)
        live += !(dvv_set_sibling(s, i).value.flags & DVV_TOMBSTONE);
    return live;
}

int cli_get(int argc, char **argv) {
    cmd_args a;
    int rc = parse_args("get", argc, argv, &a);
    if (rc) return rc;
    if (a.npos != 1) {
        ERR("get", "usage: quorumfs get [--node HOST:PORT] [-n N -r R -w W] "
                   "KEY\n");
        return 2;
    }
    rep_client *c;
    if (connect_to("get", a.node, &c)) return 2;
    dvv_set *s;
    rc = read_object("get", c, a.pos[0], &a.o, &s);
    rep_client_close(c);
    if (rc) return 2;
    size_t live = live_siblings(s);
    if (live == 0) {
        dvv_set_free(s);
        return 1;
    }
    if (dvv_set_siblings(s) == 1) {
        kv_slice v = dvv_set_sibling(s, 0).value.bytes;
        fwrite(v.ptr, 1, v.len, stdout);
    } else {
        printf("%zu siblings\n", dvv_set_siblings(s));
        for (size_t i = 0; i < dvv_set_siblings(s); i++) {
            dvv_sibling sb = dvv_set_sibling(s, i);
            printf("--- sibling %zu: dot %016llx:%llu, time %llu%s\n", i + 1,
                   (unsigned long long)sb.actor, (unsigned long long)sb.counter,
                   (unsigned long long)sb.value.timestamp,
                   sb.value.flags & DVV_TOMBSTONE ? ", deleted" : "");
            fwrite(sb.value.bytes.ptr, 1, sb.value.bytes.len, stdout);
            if (sb.value.bytes.len &&
                sb.value.bytes.ptr[sb.value.bytes.len - 1] != '\n')
                putchar('\n');
        }
    }
    dvv_set_free(s);
    return fflush(stdout) == 0 ? 0 : 2;
}

/* put and del: read for the context (unless blind), then write. */
static int write_cmd(const char *cmd, int argc, char **argv, bool del) {
    cmd_args a;
    int rc = parse_args(cmd, argc, argv, &a);
    if (rc) return rc;
    if (a.npos != 1 && !(a.npos == 2 && !del)) {
        ERR(cmd,
            "usage: quorumfs %s [--node HOST:PORT] [-n N -r R -w W] "
            "[--sync] [--blind] KEY%s\n",
            cmd, del ? "" : " [VALUE]");
        return 2;
    }
    kv_buf value = KV_BUF_INIT, ctx = KV_BUF_INIT;
    rep_client *c = NULL;
    dvv_set *s = NULL;
    dvv_ctx *cx = NULL;
    int exit_code = 2;
    if (!del && a.npos == 2)
        rc = kv_buf_set(&value, a.pos[1], strlen(a.pos[1]));
    else if (!del)
        rc = cli_read_stdin(REP_MAX_VALUE, &value);
    if (rc) {
        ERR(cmd, "cannot read the value: %s\n", kv_strerror(rc));
        goto out;
    }
    if (connect_to(cmd, a.node, &c)) goto out;
    if (!a.blind) {
        if (read_object(cmd, c, a.pos[0], &a.o, &s)) goto out;
        if (del && live_siblings(s) == 0) {
            exit_code = 1; /* nothing to delete */
            goto out;
        }
        if (s && (dvv_set_join(s, &cx) || dvv_ctx_encode(cx, &ctx))) {
            ERR(cmd, "out of memory\n");
            goto out;
        }
    }
    kv_slice k = kv_slice_str(a.pos[0]);
    rc = del ? rep_client_del(c, k, kv_buf_slice(&ctx), &a.o)
             : rep_client_put(c, k, kv_buf_slice(&ctx), kv_buf_slice(&value),
                              &a.o);
    if (rc) {
        ERR(cmd, "'%s': %s\n", a.pos[0], kv_strerror(rc));
        goto out;
    }
    exit_code = 0;
out:
    dvv_ctx_free(cx);
    dvv_set_free(s);
    rep_client_close(c);
    kv_buf_release(&value);
    kv_buf_release(&ctx);
    return exit_code;
}

int cli_put(int argc, char **argv) {
    return write_cmd("put", argc, argv, false);
}

int cli_del(int argc, char **argv) {
    return write_cmd("del", argc, argv, true);
}
