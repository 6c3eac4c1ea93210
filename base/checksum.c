/*
 * Checksums and hashes: xxh3-64 from libxxhash. Formats store all 64 bits.
 */
#include "base/base.h"

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

uint64_t kv_checksum(const void *p, size_t n) {
    return XXH3_64bits(p, n);
}

uint64_t kv_checksum2(const void *a, size_t an, const void *b, size_t bn) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, a, an);
    XXH3_64bits_update(&st, b, bn);
    return XXH3_64bits_digest(&st);
}

uint64_t kv_hash64(const void *p, size_t n, uint64_t seed) {
    return XXH3_64bits_withSeed(p, n, seed);
}
