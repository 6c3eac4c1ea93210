/* Subcommands of the quorumfs binary. Each returns the exit code. */
#ifndef QFS_CLI_H
#define QFS_CLI_H

#include "base/base.h"

/* quorumfs engine <demo|put|get|del|scan|stats|compact> ... */
int cli_engine(int argc, char **argv);

#endif
