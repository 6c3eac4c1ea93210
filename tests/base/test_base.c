/*
 * Tests for base/: error names, buffers, fixed and varint coding, the
 * decoding cursor, checksums, the failing allocator and logging.
 *
 * What callers rely on: decoders never move the cursor on failure, every
 * fixed-width integer is little-endian on disk, checksum values never change
 * between builds (they are stored in files), and a buffer operation that runs
 * out of memory leaves the buffer as it was.
 *
 * Criterion forks a process per test, so the process-wide knobs touched here
 * (allocation fault counter, log level, log sink) cannot leak between tests;
 * each test still resets them so it can be read on its own.
 */
#include "base/base.h"

#include <criterion/criterion.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- errors -------------------------------------------------------------- */

Test(error, every_project_code_has_its_own_name) {
    static const struct {
        int rc;
        const char *name;
    } codes[] = {
        {KV_OK, "success"},
        {KV_ENOTFOUND, "not found"},
        {KV_ECORRUPT, "corrupt data"},
        {KV_EPROTO, "protocol error"},
        {KV_EQUORUM, "quorum not reached"},
        {KV_ETIMEDOUT, "deadline exceeded"},
        {KV_ETOOLARGE, "too large"},
        {KV_EVERSION, "unsupported format version"},
        {KV_ECLOSED, "closed"},
        {KV_EBUSY, "busy"},
        {KV_ESTALE, "not an owner under the current ring"},
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(codes); i++) {
        cr_assert_str_eq(kv_strerror(codes[i].rc), codes[i].name, "code %d",
                         codes[i].rc);
        /* Project codes must stay out of the errno range. */
        if (codes[i].rc != KV_OK) cr_assert_lt(codes[i].rc, -4095);
        for (size_t j = 0; j < i; j++)
            cr_assert_str_neq(kv_strerror(codes[i].rc),
                              kv_strerror(codes[j].rc));
    }
}

Test(error, errno_values_pass_through_to_strerror) {
    int errs[] = {ENOENT, EIO, ENOSPC, ENOMEM, EINVAL, EEXIST, 4095};
    for (size_t i = 0; i < KV_ARRAY_LEN(errs); i++) {
        char want[256];
        snprintf(want, sizeof want, "%s", strerror(errs[i]));
        cr_assert_str_eq(kv_strerror(-errs[i]), want, "errno %d", errs[i]);
    }
}

Test(error, unknown_codes_are_named_unknown) {
    cr_assert_str_eq(kv_strerror(-4200), "unknown error");
    cr_assert_str_eq(kv_strerror(1), "unknown error");
    cr_assert_str_eq(kv_strerror(INT32_MIN), "unknown error");
}

/* ---- slices -------------------------------------------------------------- */

Test(slice, cmp_is_memcmp_order_with_prefix_first) {
    kv_slice a = kv_slice_str("abc"), ab = kv_slice_str("ab");
    kv_slice abd = kv_slice_str("abd"), empty = kv_slice_make(NULL, 0);
    cr_assert_lt(kv_slice_cmp(ab, a), 0);
    cr_assert_gt(kv_slice_cmp(a, ab), 0);
    cr_assert_lt(kv_slice_cmp(a, abd), 0);
    cr_assert_eq(kv_slice_cmp(a, kv_slice_str("abc")), 0);
    cr_assert_lt(kv_slice_cmp(empty, ab), 0);
    cr_assert_eq(kv_slice_cmp(empty, empty), 0);
    /* Bytes compare unsigned: 0xff sorts after 0x01. */
    uint8_t hi = 0xff, lo = 0x01;
    cr_assert_gt(kv_slice_cmp(kv_slice_make(&hi, 1), kv_slice_make(&lo, 1)), 0);
    cr_assert(kv_slice_eq(empty, kv_slice_make("x", 0)));
    cr_assert_not(kv_slice_eq(a, abd));
}

/* ---- buffers ------------------------------------------------------------- */

Test(buf, append_grows_and_keeps_every_byte) {
    kv_buf b = KV_BUF_INIT;
    uint8_t want[10000];
    for (size_t i = 0; i < sizeof want; i++) want[i] = (uint8_t)(i * 31 + 7);
    /* Odd-sized appends cross several growth steps. */
    size_t off = 0, step = 1;
    while (off < sizeof want) {
        size_t n = KV_MIN(step, sizeof want - off);
        cr_assert_eq(kv_buf_append(&b, want + off, n), 0);
        off += n;
        step = step * 3 + 1;
        cr_assert_geq(b.cap, b.len);
    }
    cr_assert_eq(b.len, sizeof want);
    cr_assert_arr_eq(b.ptr, want, sizeof want);
    kv_slice s = kv_buf_slice(&b);
    cr_assert_eq(s.ptr, b.ptr);
    cr_assert_eq(s.len, b.len);
    kv_buf_release(&b);
    cr_assert_null(b.ptr);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
}

Test(buf, reserve_makes_room_without_changing_contents) {
    kv_buf b;
    kv_buf_init(&b);
    cr_assert_eq(kv_buf_append(&b, "hello", 5), 0);
    cr_assert_eq(kv_buf_reserve(&b, 1000), 0);
    cr_assert_geq(b.cap, 1005);
    cr_assert_eq(b.len, 5);
    cr_assert_arr_eq(b.ptr, "hello", 5);
    /* Reserving what is already there does not reallocate. */
    uint8_t *p = b.ptr;
    cr_assert_eq(kv_buf_reserve(&b, 1000), 0);
    cr_assert_eq(b.ptr, p);
    /* A request that would overflow size_t is refused. */
    cr_assert_eq(kv_buf_reserve(&b, SIZE_MAX), -ENOMEM);
    cr_assert_eq(b.len, 5);
    kv_buf_release(&b);
}

Test(buf, set_replaces_and_reset_empties) {
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_buf_set(&b, "first value", 11), 0);
    cr_assert_eq(kv_buf_set(&b, "second", 6), 0);
    cr_assert_eq(b.len, 6);
    cr_assert_arr_eq(b.ptr, "second", 6);
    cr_assert_eq(kv_buf_set(&b, NULL, 0), 0);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(kv_buf_append(&b, "x", 1), 0);
    kv_buf_reset(&b);
    cr_assert_eq(b.len, 0);
    cr_assert_geq(b.cap, 1);
    kv_buf_release(&b);
}

Test(buf, detach_hands_over_the_bytes) {
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_buf_append(&b, "owned", 5), 0);
    size_t len = 0;
    uint8_t *p = kv_buf_detach(&b, &len);
    cr_assert_not_null(p);
    cr_assert_eq(len, 5);
    cr_assert_arr_eq(p, "owned", 5);
    /* The buffer is empty and reusable; the bytes are the caller's. */
    cr_assert_null(b.ptr);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    cr_assert_eq(kv_buf_append(&b, "new", 3), 0);
    cr_assert_neq(b.ptr, p);
    kv_free(p);
    kv_buf_release(&b);
    /* Detaching an empty buffer gives NULL and length 0. */
    len = 99;
    cr_assert_null(kv_buf_detach(&b, &len));
    cr_assert_eq(len, 0);
    cr_assert_null(kv_buf_detach(&b, NULL));
}

/* ---- fixed-width coding ---------------------------------------------------
 */

Test(coding, fixed_width_is_little_endian) {
    uint8_t p[8];
    kv_put_u16(p, 0x0102);
    cr_assert_eq(p[0], 0x02);
    cr_assert_eq(p[1], 0x01);
    cr_assert_eq(kv_get_u16(p), 0x0102);

    kv_put_u32(p, 0x01020304u);
    const uint8_t w32[4] = {0x04, 0x03, 0x02, 0x01};
    cr_assert_arr_eq(p, w32, 4);
    cr_assert_eq(kv_get_u32(p), 0x01020304u);

    kv_put_u64(p, UINT64_C(0x0102030405060708));
    const uint8_t w64[8] = {0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01};
    cr_assert_arr_eq(p, w64, 8);
    cr_assert_eq(kv_get_u64(p), UINT64_C(0x0102030405060708));

    /* High bits survive (no sign extension through int promotion). */
    kv_put_u32(p, 0xfffffffeu);
    cr_assert_eq(kv_get_u32(p), 0xfffffffeu);
    kv_put_u64(p, UINT64_MAX - 1);
    cr_assert_eq(kv_get_u64(p), UINT64_MAX - 1);
    kv_put_u16(p, 0xfffe);
    cr_assert_eq(kv_get_u16(p), 0xfffe);
}

Test(coding, buf_put_fixed_appends_little_endian) {
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_buf_put_u32(&b, 0xa1b2c3d4u), 0);
    cr_assert_eq(kv_buf_put_u64(&b, UINT64_C(0x1122334455667788)), 0);
    const uint8_t want[12] = {0xd4, 0xc3, 0xb2, 0xa1, 0x88, 0x77,
                              0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
    cr_assert_eq(b.len, 12);
    cr_assert_arr_eq(b.ptr, want, 12);

    kv_reader r = kv_reader_make(kv_buf_slice(&b));
    uint32_t v32;
    uint64_t v64;
    cr_assert_eq(kv_get_fixed32(&r, &v32), 0);
    cr_assert_eq(v32, 0xa1b2c3d4u);
    cr_assert_eq(kv_get_fixed64(&r, &v64), 0);
    cr_assert_eq(v64, UINT64_C(0x1122334455667788));
    cr_assert_eq(kv_reader_left(&r), 0);
    kv_buf_release(&b);
}

/* ---- varints --------------------------------------------------------------
 */

Test(varint, round_trip_edge_values) {
    static const struct {
        uint64_t v;
        size_t len;
    } cases[] = {
        {0, 1},
        {1, 1},
        {127, 1},
        {128, 2},
        {16383, 2},
        {16384, 3},
        {UINT32_MAX, 5},
        {UINT64_C(1) << 32, 5},
        {UINT64_C(1) << 63, 10},
        {UINT64_MAX, 10},
    };
    for (size_t i = 0; i < KV_ARRAY_LEN(cases); i++) {
        uint64_t v = cases[i].v;
        uint8_t p[KV_VARINT_MAX + 1];
        memset(p, 0xaa, sizeof p);
        size_t n = kv_varint_encode(p, v);
        cr_assert_eq(n, cases[i].len, "value %llu", (unsigned long long)v);
        cr_assert_eq(kv_varint_len(v), n);
        cr_assert_eq(p[n], 0xaa, "encoder wrote past its length");

        /* Decoding consumes exactly n bytes, even with more input after. */
        kv_reader r = kv_reader_make(kv_slice_make(p, n + 1));
        uint64_t got = 0;
        cr_assert_eq(kv_get_varint(&r, &got), 0);
        cr_assert_eq(got, v);
        cr_assert_eq(kv_reader_left(&r), 1);

        kv_buf b = KV_BUF_INIT;
        cr_assert_eq(kv_buf_put_varint(&b, v), 0);
        cr_assert_eq(b.len, n);
        cr_assert_arr_eq(b.ptr, p, n);
        kv_buf_release(&b);
    }
}

Test(varint, known_encodings) {
    uint8_t p[KV_VARINT_MAX];
    cr_assert_eq(kv_varint_encode(p, 300), 2);
    cr_assert_eq(p[0], 0xac);
    cr_assert_eq(p[1], 0x02);
    cr_assert_eq(kv_varint_encode(p, UINT64_MAX), 10);
    for (int i = 0; i < 9; i++) cr_assert_eq(p[i], 0xff);
    cr_assert_eq(p[9], 0x01);
}

/* Decode p[0..n) and check it fails with the cursor left where it was. */
static void assert_varint_rejected(const uint8_t *p, size_t n) {
    kv_reader r = kv_reader_make(kv_slice_make(p, n));
    kv_reader before = r;
    uint64_t v = 12345;
    cr_assert_eq(kv_get_varint(&r, &v), KV_ECORRUPT);
    cr_assert_eq(r.p, before.p);
    cr_assert_eq(r.end, before.end);
    cr_assert_eq(v, 12345, "output written on failure");
}

Test(varint, rejects_truncated_input) {
    const uint8_t p[] = {0x80, 0x80, 0x80};
    assert_varint_rejected(p, 0);
    assert_varint_rejected(p, 1);
    assert_varint_rejected(p, 3);
    /* Every proper prefix of a multi-byte encoding is truncated. */
    uint8_t big[KV_VARINT_MAX];
    size_t n = kv_varint_encode(big, UINT64_MAX);
    for (size_t k = 0; k < n; k++) assert_varint_rejected(big, k);
}

Test(varint, rejects_eleven_bytes) {
    /* Ten continuation bytes then a terminator: longer than any uint64. */
    uint8_t p[11];
    memset(p, 0x80, 10);
    p[10] = 0x00;
    assert_varint_rejected(p, sizeof p);
    memset(p, 0xff, 10);
    p[10] = 0x01;
    assert_varint_rejected(p, sizeof p);
}

Test(varint, rejects_overflowing_tenth_byte) {
    /* The tenth byte holds bit 63 only; 0x02 would be bit 64. */
    uint8_t p[10];
    memset(p, 0xff, 9);
    for (int last = 0x02; last <= 0x7f; last++) {
        p[9] = (uint8_t)last;
        assert_varint_rejected(p, sizeof p);
    }
    p[9] = 0x01;
    kv_reader r = kv_reader_make(kv_slice_make(p, sizeof p));
    uint64_t v;
    cr_assert_eq(kv_get_varint(&r, &v), 0);
    cr_assert_eq(v, UINT64_MAX);
}

Test(varint, varint32_rejects_values_above_32_bits) {
    uint8_t p[KV_VARINT_MAX];
    size_t n = kv_varint_encode(p, UINT32_MAX);
    kv_reader r = kv_reader_make(kv_slice_make(p, n));
    uint32_t v = 0;
    cr_assert_eq(kv_get_varint32(&r, &v), 0);
    cr_assert_eq(v, UINT32_MAX);

    n = kv_varint_encode(p, (uint64_t)UINT32_MAX + 1);
    r = kv_reader_make(kv_slice_make(p, n));
    kv_reader before = r;
    v = 7;
    cr_assert_eq(kv_get_varint32(&r, &v), KV_ECORRUPT);
    cr_assert_eq(r.p, before.p);
    cr_assert_eq(v, 7);
}

/* ---- the decoding cursor --------------------------------------------------
 */

Test(reader, short_input_leaves_cursor_unchanged) {
    const uint8_t p[7] = {1, 2, 3, 4, 5, 6, 7};
    kv_reader r = kv_reader_make(kv_slice_make(p, sizeof p));
    uint32_t v32 = 0;
    uint64_t v64 = 0;
    kv_slice s = {NULL, 0};

    cr_assert_eq(kv_get_fixed64(&r, &v64), KV_ECORRUPT);
    cr_assert_eq(r.p, p);
    cr_assert_eq(kv_get_bytes(&r, 8, &s), KV_ECORRUPT);
    cr_assert_eq(r.p, p);
    cr_assert_null(s.ptr);

    cr_assert_eq(kv_get_fixed32(&r, &v32), 0);
    cr_assert_eq(v32, 0x04030201u);
    cr_assert_eq(kv_reader_left(&r), 3);
    cr_assert_eq(kv_get_fixed32(&r, &v32), KV_ECORRUPT);
    cr_assert_eq(kv_reader_left(&r), 3);
    cr_assert_eq(v32, 0x04030201u);

    cr_assert_eq(kv_get_bytes(&r, 3, &s), 0);
    cr_assert_eq(s.ptr, p + 4);
    cr_assert_eq(s.len, 3);
    cr_assert_eq(kv_reader_left(&r), 0);
    /* At the end every get fails, and zero bytes still succeed. */
    cr_assert_eq(kv_get_fixed32(&r, &v32), KV_ECORRUPT);
    cr_assert_eq(kv_get_bytes(&r, 1, &s), KV_ECORRUPT);
    cr_assert_eq(kv_get_bytes(&r, 0, &s), 0);
    cr_assert_eq(s.len, 0);
}

Test(reader, lenslice_round_trip_and_bounds) {
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_buf_put_lenslice(&b, kv_slice_str("key-1")), 0);
    cr_assert_eq(kv_buf_put_lenslice(&b, kv_slice_make(NULL, 0)), 0);
    cr_assert_eq(b.len, 1 + 5 + 1);

    kv_reader r = kv_reader_make(kv_buf_slice(&b));
    kv_slice s;
    /* A length above max is refused before anything is consumed. */
    cr_assert_eq(kv_get_lenslice(&r, 4, &s), KV_ECORRUPT);
    cr_assert_eq(r.p, b.ptr);
    cr_assert_eq(kv_get_lenslice(&r, 5, &s), 0);
    cr_assert(kv_slice_eq(s, kv_slice_str("key-1")));
    cr_assert_eq(kv_get_lenslice(&r, 0, &s), 0);
    cr_assert_eq(s.len, 0);
    cr_assert_eq(kv_reader_left(&r), 0);

    /* A length that runs past the input is corrupt, cursor unchanged. */
    const uint8_t lying[] = {0x05, 'a', 'b'};
    r = kv_reader_make(kv_slice_make(lying, sizeof lying));
    cr_assert_eq(kv_get_lenslice(&r, 100, &s), KV_ECORRUPT);
    cr_assert_eq(r.p, lying);
    kv_buf_release(&b);
}

/* ---- checksums ------------------------------------------------------------
 */

/* These values are stored in files: if one changes, every existing store is
 * unreadable. Computed once with libxxhash's XXH3_64bits directly; the empty
 * input value is also xxh3's published test vector. */
#define SAMPLE "quorumfs: 64-bit checksums everywhere"

Test(checksum, fixed_values_never_change) {
    cr_assert_eq(kv_checksum(SAMPLE, strlen(SAMPLE)),
                 UINT64_C(0xfdb9bf33639cc878));
    cr_assert_eq(kv_checksum("", 0), UINT64_C(0x2d06800538d394c2));
    cr_assert_eq(kv_hash64(SAMPLE, strlen(SAMPLE), 1),
                 UINT64_C(0xa4638f4460a74b3d));
    /* Seed 0 is the plain checksum; another seed is another hash. */
    cr_assert_eq(kv_hash64(SAMPLE, strlen(SAMPLE), 0),
                 kv_checksum(SAMPLE, strlen(SAMPLE)));
    cr_assert_neq(kv_hash64(SAMPLE, strlen(SAMPLE), 2),
                  kv_hash64(SAMPLE, strlen(SAMPLE), 1));
}

Test(checksum, checksum2_equals_checksum_of_concatenation) {
    /* Lengths straddle xxh3's internal size classes (16, 128, 240 bytes and
     * its 1 KiB stripes), where one-shot and streaming take different
     * paths. */
    static uint8_t data[2100];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)((i * 2654435761u) >> 13);
    const size_t lens[] = {0, 1, 3, 8, 16, 17, 128, 129, 240, 241, 1024, 2100};
    for (size_t i = 0; i < KV_ARRAY_LEN(lens); i++) {
        size_t n = lens[i];
        uint64_t whole = kv_checksum(data, n);
        size_t splits[] = {0, 1, n / 2, n ? n - 1 : 0, n};
        for (size_t j = 0; j < KV_ARRAY_LEN(splits); j++) {
            size_t a = KV_MIN(splits[j], n);
            cr_assert_eq(kv_checksum2(data, a, data + a, n - a), whole,
                         "len %zu split %zu", n, a);
        }
    }
}

Test(checksum, detects_a_single_bit_flip) {
    uint8_t data[512];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)i;
    uint64_t ref = kv_checksum(data, sizeof data);
    for (size_t bit = 0; bit < sizeof data * 8; bit += 37) {
        data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        cr_assert_neq(kv_checksum(data, sizeof data), ref, "bit %zu", bit);
        data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    cr_assert_eq(kv_checksum(data, sizeof data), ref);
}

/* ---- the failing allocator ------------------------------------------------
 */

static void alloc_reset(void) {
    kv_alloc_fail_after(-1);
}

Test(alloc, fails_exactly_the_nth_allocation_and_after, .fini = alloc_reset) {
    long base = kv_alloc_injected_failures();
    kv_alloc_fail_after(2);
    void *a = kv_malloc(16);
    void *b = kv_calloc(4, 4);
    void *c = kv_malloc(16);
    void *d = kv_strdup("x");
    void *e = kv_realloc(NULL, 8);
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    cr_assert_null(c, "third allocation should fail");
    cr_assert_null(d, "failure is sticky until reset");
    cr_assert_null(e);
    cr_assert_eq(kv_alloc_injected_failures() - base, 3);

    kv_alloc_fail_after(-1);
    void *f = kv_malloc(16);
    cr_assert_not_null(f);
    cr_assert_eq(kv_alloc_injected_failures() - base, 3);
    kv_free(a);
    kv_free(b);
    kv_free(f);
}

Test(alloc, zero_means_the_next_allocation_fails, .fini = alloc_reset) {
    kv_alloc_fail_after(0);
    cr_assert_null(kv_malloc(1));
    kv_alloc_fail_after(-1);
    void *p = kv_malloc(0);
    cr_assert_not_null(p, "a zero-byte request still gets a pointer");
    kv_free(p);
}

Test(alloc, calloc_zeroes_and_realloc_keeps_contents) {
    uint8_t *p = kv_calloc(100, 1);
    cr_assert_not_null(p);
    for (int i = 0; i < 100; i++) cr_assert_eq(p[i], 0);
    memset(p, 0x5a, 100);
    uint8_t *q = kv_realloc(p, 10000);
    cr_assert_not_null(q);
    for (int i = 0; i < 100; i++) cr_assert_eq(q[i], 0x5a);
    kv_free(q);
    kv_free(NULL);
}

/* Fill b to exactly its capacity so the next append must grow it. */
static void fill_to_capacity(kv_buf *b) {
    cr_assert_eq(kv_buf_append(b, "abcdefgh", 8), 0);
    while (b->len < b->cap) cr_assert_eq(kv_buf_append(b, "z", 1), 0);
}

Test(alloc, failed_growth_leaves_buffer_intact, .fini = alloc_reset) {
    kv_buf b = KV_BUF_INIT;
    fill_to_capacity(&b);
    kv_buf saved = b;
    uint8_t copy[4096];
    cr_assert_leq(b.len, sizeof copy);
    memcpy(copy, b.ptr, b.len);

    kv_alloc_fail_after(0);
    cr_assert_eq(kv_buf_append(&b, "more", 4), -ENOMEM);
    cr_assert_eq(kv_buf_reserve(&b, 1), -ENOMEM);
    cr_assert_eq(kv_buf_put_u32(&b, 1), -ENOMEM);
    cr_assert_eq(kv_buf_put_u64(&b, 1), -ENOMEM);
    cr_assert_eq(kv_buf_put_varint(&b, 1), -ENOMEM);
    cr_assert_eq(b.ptr, saved.ptr);
    cr_assert_eq(b.len, saved.len);
    cr_assert_eq(b.cap, saved.cap);
    cr_assert_arr_eq(b.ptr, copy, b.len);

    /* Appends that fit in the capacity need no allocation at all. */
    kv_buf_reset(&b);
    cr_assert_eq(kv_buf_append(&b, "fits", 4), 0);
    cr_assert_arr_eq(b.ptr, "fits", 4);

    /* Once memory is back, the same buffer grows normally. */
    kv_alloc_fail_after(-1);
    cr_assert_eq(kv_buf_append(&b, copy, b.cap), 0);
    cr_assert_eq(b.len, 4 + saved.cap);
    kv_buf_release(&b);
}

Test(alloc, first_allocation_failure_leaves_empty_buffer_empty,
     .fini = alloc_reset) {
    kv_buf b = KV_BUF_INIT;
    kv_alloc_fail_after(0);
    cr_assert_eq(kv_buf_append(&b, "x", 1), -ENOMEM);
    cr_assert_null(b.ptr);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    kv_buf_release(&b);
}

/* Regression: kv_buf_set used to reset len before growing, so an out-of-memory
 * set lost the old contents, and kv_buf_put_lenslice could leave its length
 * prefix behind when the bytes did not fit. */
Test(alloc, failed_set_keeps_old_contents, .fini = alloc_reset) {
    kv_buf b = KV_BUF_INIT;
    fill_to_capacity(&b);
    size_t len = b.len;
    kv_alloc_fail_after(0);
    uint8_t big[8192] = {0};
    cr_assert_eq(kv_buf_set(&b, big, sizeof big), -ENOMEM);
    cr_assert_eq(b.len, len);
    cr_assert_arr_eq(b.ptr, "abcdefgh", 8);
    kv_alloc_fail_after(-1);
    kv_buf_release(&b);
}

Test(alloc, failed_lenslice_appends_nothing, .fini = alloc_reset) {
    kv_buf b = KV_BUF_INIT;
    cr_assert_eq(kv_buf_append(&b, "abcdefgh", 8), 0);
    while (b.len < b.cap - 1) cr_assert_eq(kv_buf_append(&b, "z", 1), 0);
    size_t len = b.len;
    kv_alloc_fail_after(0);
    cr_assert_eq(kv_buf_put_lenslice(&b, kv_slice_str("does not fit")),
                 -ENOMEM);
    cr_assert_eq(b.len, len);
    kv_alloc_fail_after(-1);
    kv_buf_release(&b);
}

/* ---- logging --------------------------------------------------------------
 */

Test(log, parses_level_names) {
    static const struct {
        const char *s;
        kv_log_level lvl;
    } ok[] = {{"error", KV_LOG_ERROR},
              {"warn", KV_LOG_WARN},
              {"info", KV_LOG_INFO},
              {"debug", KV_LOG_DEBUG}};
    for (size_t i = 0; i < KV_ARRAY_LEN(ok); i++) {
        kv_log_level got = (kv_log_level)99;
        cr_assert_eq(kv_log_parse_level(ok[i].s, &got), 0);
        cr_assert_eq(got, ok[i].lvl);
    }
    const char *bad[] = {"", "WARN", "warning", "trace", "info ", "3"};
    for (size_t i = 0; i < KV_ARRAY_LEN(bad); i++) {
        kv_log_level got = KV_LOG_INFO;
        cr_assert_eq(kv_log_parse_level(bad[i], &got), -EINVAL, "'%s'", bad[i]);
        cr_assert_eq(got, KV_LOG_INFO, "output changed on failure");
    }
}

struct captured {
    int calls;
    kv_log_level lvl;
    char line[2048];
};

static void capture(kv_log_level lvl, const char *line, void *arg) {
    struct captured *c = arg;
    c->calls++;
    c->lvl = lvl;
    snprintf(c->line, sizeof c->line, "%s", line);
}

static void log_reset(void) {
    kv_log_set_sink(NULL, NULL);
    kv_log_set_level(KV_LOG_WARN);
}

Test(log, sink_receives_one_formatted_line, .fini = log_reset) {
    struct captured c = {0};
    kv_log_set_sink(capture, &c);
    kv_log_set_level(KV_LOG_INFO);
    kv_warn("engine", "cannot open sstable '%s': %s", "000042.sst",
            kv_strerror(KV_ECORRUPT));
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.lvl, KV_LOG_WARN);

    regex_t re;
    cr_assert_eq(
        regcomp(&re,
                "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                "\\.[0-9]{3}Z warn engine: cannot open sstable "
                "'000042\\.sst': corrupt data$",
                REG_EXTENDED | REG_NOSUB),
        0);
    int m = regexec(&re, c.line, 0, NULL, 0);
    regfree(&re);
    cr_assert_eq(m, 0, "unexpected line: %s", c.line);
    cr_assert_null(strchr(c.line, '\n'), "the sink gets no newline");
}

Test(log, level_filters_what_reaches_the_sink, .fini = log_reset) {
    struct captured c = {0};
    kv_log_set_sink(capture, &c);
    kv_log_set_level(KV_LOG_ERROR);
    cr_assert_eq(kv_log_get_level(), KV_LOG_ERROR);
    kv_warn("base", "dropped");
    kv_info("base", "dropped");
    kv_debug("base", "dropped");
    cr_assert_eq(c.calls, 0);
    kv_error("base", "kept %d", 1);
    cr_assert_eq(c.calls, 1);
    cr_assert_eq(c.lvl, KV_LOG_ERROR);
    cr_assert(strstr(c.line, " error base: kept 1") != NULL, "%s", c.line);

    kv_log_set_level(KV_LOG_DEBUG);
    kv_debug("ring", "now visible");
    cr_assert_eq(c.calls, 2);
    cr_assert(strstr(c.line, " debug ring: now visible") != NULL);
}

Test(log, long_messages_are_truncated_not_overflowed, .fini = log_reset) {
    struct captured c = {0};
    kv_log_set_sink(capture, &c);
    char big[3000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    kv_logf(KV_LOG_ERROR, "engine", "%s", big);
    cr_assert_eq(c.calls, 1);
    size_t n = strlen(c.line);
    cr_assert_gt(n, 900);
    cr_assert_lt(n, 1024);
    cr_assert_eq(c.line[n - 1], 'q');
}

/* ---- time -----------------------------------------------------------------
 */

Test(time, monotonic_clock_does_not_go_back) {
    uint64_t a = kv_now_ns(), b = kv_now_ns();
    cr_assert_geq(b, a);
    /* 2020-01-01 in microseconds: any sane wall clock is past it. */
    cr_assert_gt(kv_wall_us(), UINT64_C(1577836800000000));
}

/* Mapped buffers: zeroed, writable, failing under injection like every
 * other allocation. */
Test(base, map_alloc_is_zeroed_and_can_fail) {
    size_t n = 256u * 1024u + 8;
    uint8_t *p = kv_map_alloc(n);
    cr_assert_not_null(p);
    for (size_t i = 0; i < n; i += 4093) cr_assert_eq(p[i], 0);
    memset(p, 0xab, n);
    kv_map_free(p, n);
    kv_alloc_fail_after(0);
    cr_assert_null(kv_map_alloc(n));
    kv_alloc_fail_after(-1);
    kv_map_free(NULL, n); /* harmless */
}
