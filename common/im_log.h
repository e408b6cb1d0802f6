/*
 * im_log.h - leveled logging, one line per event.
 *
 * The level is checked before any argument is formatted (or even evaluated),
 * so a disabled im_log(IM_LOG_DEBUG, ...) on a hot path costs one compare.
 * A line looks like
 *   2026-11-22T07:38:13.123Z gateway-1 W gw_conn.c:88 conn=17 closing: slow reader
 * Put the connection or request id in the message (nginx-style context).
 * Any thread may log; each line is written with a single write(2), so lines
 * from different threads or processes sharing a file do not interleave.
 */
#ifndef IM_LOG_H
#define IM_LOG_H

#include <stddef.h>

#include "im_err.h"

typedef enum {
    IM_LOG_ERROR = 0,
    IM_LOG_WARN = 1,
    IM_LOG_INFO = 2,
    IM_LOG_DEBUG = 3,
    IM_LOG_TRACE = 4
} im_log_level_t;

/* Current threshold: lines with level <= im__log_level are emitted.  Read
 * racily by design (a stale level for a moment is harmless); set it with
 * im_log_set_level(). */
extern volatile int im__log_level;

#define im_log_enabled(level) ((int)(level) <= im__log_level)

#define im_log(level, ...)                                                             \
    do {                                                                               \
        if (im_log_enabled(level))                                                     \
            im__log((level), __FILE__, __LINE__, __VA_ARGS__);                         \
    } while (0)

#define im_log_error(...) im_log(IM_LOG_ERROR, __VA_ARGS__)
#define im_log_warn(...) im_log(IM_LOG_WARN, __VA_ARGS__)
#define im_log_info(...) im_log(IM_LOG_INFO, __VA_ARGS__)
#define im_log_debug(...) im_log(IM_LOG_DEBUG, __VA_ARGS__)

void im__log(im_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

void im_log_set_level(im_log_level_t level);

/* Parses "error", "warn", "info", "debug", "trace" (case-insensitive).
 * Returns IM_OK and sets *out, or IM_EINVAL. */
im_err_t im_log_parse_level(const char *s, im_log_level_t *out);

/* The process name shown on every line (copied, at most 31 bytes).  Call at
 * start-up before other threads log. */
void im_log_set_ident(const char *ident);

/* Where lines go: by default to fd 2.  A sink receives the complete line
 * (with its trailing newline) and must be thread-safe.  NULL restores stderr.
 * For tests and for embedding. */
typedef void (*im_log_sink_cb)(im_log_level_t level, const char *line, size_t len, void *arg);
void im_log_set_sink(im_log_sink_cb sink, void *arg);

#endif
