/* Subcommands of the quorumfs binary. Each returns the exit code. */
#ifndef QFS_CLI_H
#define QFS_CLI_H

#include "base/base.h"

/* quorumfs engine <demo|put|get|del|scan|stats|compact> ... */
int cli_engine(int argc, char **argv);
/* All of standard input into b: KV_ETOOLARGE past max bytes, -EIO. */
int cli_read_stdin(size_t max, kv_buf *b);
/* quorumfs node --data DIR [--listen HOST:PORT] [--name NAME] */
int cli_node(int argc, char **argv);
/* quorumfs get|put|del [--node HOST:PORT] [-n N -r R -w W] KEY [VALUE] */
int cli_get(int argc, char **argv);
int cli_put(int argc, char **argv);
int cli_del(int argc, char **argv);
/* quorumfs ring [--node HOST:PORT] [--ranges]; quorumfs leave [--node] */
int cli_ring(int argc, char **argv);
int cli_leave(int argc, char **argv);
/* quorumfs bucket [--node HOST:PORT] NAME [--lww | --siblings] */
int cli_bucket(int argc, char **argv);
/* quorumfs mount [--join HOST:PORT,...] [--data DIR] [-o OPTS] [-f] DIR */
int cli_mount(int argc, char **argv);

#endif
