#include "im_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 2048

volatile int im__log_level = IM_LOG_INFO;

static char ident[32] = "im";
static im_log_sink_cb sink;
static void *sink_arg;

static const char level_char[] = {'E', 'W', 'I', 'D', 'T'};
static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void im_log_set_level(im_log_level_t level)
{
    im__log_level = (int)level;
}

im_err_t im_log_parse_level(const char *s, im_log_level_t *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (im_log_level_t)i;
            return IM_OK;
        }
    }
    return IM_EINVAL;
}

void im_log_set_ident(const char *id)
{
    snprintf(ident, sizeof(ident), "%s", id);
}

void im_log_set_sink(im_log_sink_cb cb, void *arg)
{
    sink = cb;
    sink_arg = arg;
}

static const char *basename_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

void im__log(im_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    char buf[LINE_MAX_BYTES];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n, m;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %c %s:%d ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000, ident, level_char[(unsigned)level % 5u],
                 basename_of(file), line);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(buf) - 1)
        n = (int)sizeof(buf) - 2;

    va_start(ap, fmt);
    m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    /* A line longer than the buffer is cut, never split over two writes. */
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n > sizeof(buf) - 2)
        n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    buf[n] = '\0';

    if (sink) {
        sink(level, buf, (size_t)n, sink_arg);
        return;
    }
    if (write(STDERR_FILENO, buf, (size_t)n) < 0) {
        /* Nowhere left to report a failed log write. */
    }
}
