/*
 * Levelled logging: one line per call, "2026-11-28T01:02:03.456Z warn
 * engine: message". The level and the sink are process-wide knobs set at the
 * program's edge; a line is formatted into a local buffer and written with one
 * call, so lines from threads never interleave.
 */
#include "base/base.h"

#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = KV_LOG_WARN;
static kv_log_sink log_sink;
static void *log_sink_arg;

static const char *level_names[] = {"error", "warn", "info", "debug"};

void kv_log_set_level(kv_log_level lvl) {
    atomic_store(&log_level, (int)lvl);
}

kv_log_level kv_log_get_level(void) {
    return (kv_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

int kv_log_parse_level(const char *s, kv_log_level *out) {
    for (size_t i = 0; i < KV_ARRAY_LEN(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (kv_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

void kv_log_set_sink(kv_log_sink sink, void *arg) {
    log_sink = sink;
    log_sink_arg = arg;
}

void kv_logf(kv_log_level lvl, const char *mod, const char *fmt, ...) {
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(
        line, sizeof line,
        "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ", tm.tm_year + 1900,
        tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
        ts.tv_nsec / 1000000,
        level_names[lvl <= KV_LOG_DEBUG ? lvl : KV_LOG_DEBUG], mod);
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n +
                 (m < 0 ? 0 : KV_MIN((size_t)m, sizeof line - (size_t)n - 2));
    line[len] = '\0';
    if (log_sink) {
        log_sink(lvl, line, log_sink_arg);
        return;
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

uint64_t kv_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t kv_wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t kv_wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ull + (uint64_t)ts.tv_nsec / 1000;
}
