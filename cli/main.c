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
            "  engine demo DIR          run a sample workload on a store\n"
            "  engine put DIR KEY [VAL] store VAL (or stdin) under KEY\n"
            "  engine get DIR KEY       print KEY's value (exit 1 if absent)\n"
            "  engine del DIR KEY       delete KEY\n"
            "  engine scan DIR [START [END]]  list keys in order\n"
            "  engine stats DIR         print the store's statistics\n"
            "  engine compact DIR       compact the whole store\n"
            "\n"
            "see quorumfs(1)\n");
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
    if (strcmp(argv[i], "engine") == 0)
        return cli_engine(argc - i - 1, argv + i + 1);
    fprintf(stderr, "quorumfs: unknown command '%s'\n", argv[i]);
    usage(stderr);
    return 2;
}
