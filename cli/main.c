/*
 * quorumfs: one binary, subcommands like git. This file only dispatches;
 * each subcommand lives in its own file and returns the process exit code
 * (0 success, 1 "not found"-style negative answers, 2 usage or errors).
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: quorumfs [--log-level LEVEL] <command> [args]\n"
            "\n"
            "commands:\n"
            "  mount [--join HOST:PORT,...] [--data DIR] [-o n=N,r=R,w=W,...]\n"
            "        [-f] [--log FILE] MOUNTPOINT\n"
            "                           mount the filesystem: an embedded\n"
            "                           store, or the cluster of --join\n"
            "  engine demo DIR          run a sample workload on a store\n"
            "  engine put DIR KEY [VAL] store VAL (or stdin) under KEY\n"
            "  engine get DIR KEY       print KEY's value (exit 1 if absent)\n"
            "  engine del DIR KEY       delete KEY\n"
            "  engine scan DIR [START [END]]  list keys in order\n"
            "  engine stats DIR         print the store's statistics\n"
            "  engine compact DIR       compact the whole store\n"
            "  node --data DIR [--listen HOST:PORT] [--name NAME]\n"
            "       [--join HOST:PORT,...] [--n-val N] [--gossip-ms MS]\n"
            "       [--failure-timeout-ms MS]\n"
            "                           run a storage node (default listen\n"
            "                           127.0.0.1:7000); --join: through\n"
            "                           these members of a cluster\n"
            "  ring [--node HOST:PORT] [--ranges]\n"
            "                           members, status, share of the keys\n"
            "  leave [--node HOST:PORT] [--remove MEMBER]\n"
            "                           the node hands its data over and\n"
            "                           stops; --remove: a dead member\n"
            "  bucket [--node HOST:PORT] NAME [--lww | --siblings]\n"
            "                           show or set how keys NAME/... resolve\n"
            "                           concurrent writes\n"
            "  get [--node HOST:PORT] [-n N -r R -w W] KEY\n"
            "                           print KEY's value or its siblings\n"
            "                           (exit 1 if absent)\n"
            "  put [--node HOST:PORT] [-n N -r R -w W] [--sync] [--blind]\n"
            "      KEY [VALUE]          store VALUE (or stdin) under KEY\n"
            "  del [--node HOST:PORT] [-n N -r R -w W] KEY\n"
            "                           delete KEY\n"
            "\n"
            "see quorumfs(1)\n");
}

int cli_read_stdin(size_t max, kv_buf *b) {
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, stdin)) > 0) {
        if (b->len + n > max) return KV_ETOOLARGE;
        int rc = kv_buf_append(b, tmp, n);
        if (rc) return rc;
    }
    return ferror(stdin) ? -EIO : 0;
}

int main(int argc, char **argv) {
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            kv_log_level lvl;
            if (kv_log_parse_level(argv[i + 1], &lvl) != 0) {
                fprintf(stderr, "quorumfs: unknown log level '%s'\n",
                        argv[i + 1]);
                return 2;
            }
            kv_log_set_level(lvl);
            i += 2;
        } else if (strcmp(argv[i], "-h") == 0 ||
                   strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "quorumfs: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"engine", cli_engine}, {"node", cli_node},     {"get", cli_get},
        {"put", cli_put},       {"del", cli_del},       {"ring", cli_ring},
        {"leave", cli_leave},   {"bucket", cli_bucket}, {"mount", cli_mount}};
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++)
        if (strcmp(argv[i], cmds[c].name) == 0)
            return cmds[c].fn(argc - i - 1, argv + i + 1);
    fprintf(stderr, "quorumfs: unknown command '%s'\n", argv[i]);
    usage(stderr);
    return 2;
}
