/* placeholder until the CLI lands */
#include "base/base.h"
#include <stdio.h>
int main(void) {
    puts("quorumfs");
    return 0;
}
