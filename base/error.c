/*
 * Error names and the always-on assert. Project codes are documented in
 * base.h; anything in the errno range is passed to strerror.
 */
#include "base/base.h"

#include <stdio.h>
#include <stdlib.h>

const char *kv_strerror(int rc) {
    switch (rc) {
    case KV_OK:
        return "success";
    case KV_ENOTFOUND:
        return "not found";
    case KV_ECORRUPT:
        return "corrupt data";
    case KV_EPROTO:
        return "protocol error";
    case KV_EQUORUM:
        return "quorum not reached";
    case KV_ETIMEDOUT:
        return "deadline exceeded";
    case KV_ETOOLARGE:
        return "too large";
    case KV_EVERSION:
        return "unsupported format version";
    case KV_ECLOSED:
        return "closed";
    case KV_EBUSY:
        return "busy";
    case KV_ESTALE:
        return "not an owner under the current ring";
    default:
        break;
    }
    if (rc < 0 && rc > -4096) return strerror(-rc);
    return "unknown error";
}

_Noreturn void kv__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "quorumfs: assertion failed: %s (%s:%d)\n", expr, file,
            line);
    fflush(stderr);
    abort();
}
