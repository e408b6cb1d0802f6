/*
 * im_config.h - one declarative table per binary drives command-line flags,
 * environment variables and --help (redis static_configs, nginx command
 * tables), instead of a strcmp chain.
 *
 *   typedef struct { int64_t port; const char *log_level; ... } lg_config_t;
 *   static const im_cfg_opt_t opts[] = {
 *       {"port", 'p', IM_CFG_INT, offsetof(lg_config_t, port), "9000", 1, 65535,
 *        "gRPC listen port"},
 *       ...
 *   };
 *
 * Precedence: default < environment (PREFIX_NAME, dashes become underscores,
 * upper case) < command line.  Flags may be written Go-style or GNU-style:
 * -name v, -name=v, --name v, --name=v, and -x v for a short name.  A bool flag
 * alone means true; --no-name means false; bool values are
 * true/false/1/0/yes/no/on/off.  Parsing stops at "--" or the first argument
 * that is not a flag (the first positional is reported to the caller).
 */
#ifndef IM_CONFIG_H
#define IM_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "im_err.h"

typedef enum {
    IM_CFG_INT,      /* int64_t, bounds checked */
    IM_CFG_BOOL,     /* int, 0 or 1 */
    IM_CFG_STR,      /* const char *: points into argv, environ or the default */
    IM_CFG_DURATION, /* int64_t milliseconds: "250ms", "30s", "2m", "1h30m", "0" */
    IM_CFG_SIZE      /* int64_t bytes: "4096", "4k"/"4KiB", "16M"/"16MiB", "1G" */
} im_cfg_type_t;

typedef struct im_cfg_opt_s {
    const char *name;    /* long flag name, also the environment variable's suffix */
    char short_name;     /* one-letter alias, or 0 */
    im_cfg_type_t type;  /* how the value is parsed and stored */
    size_t offset;       /* offsetof() the field in the caller's config struct */
    const char *def;     /* default, written as a user would write it; NULL = 0/NULL */
    int64_t min, max;    /* inclusive bounds for INT, DURATION, SIZE; min == max: none */
    const char *help;    /* one line */
} im_cfg_opt_t;

typedef struct im_cfg_spec_s {
    const char *prog;       /* name shown in usage */
    const char *summary;    /* one line shown at the top of --help */
    const char *env_prefix; /* e.g. "IM_LOGIC"; NULL = no environment lookup */
    const im_cfg_opt_t *opts;
    size_t nopts;
} im_cfg_spec_t;

/*
 * Fills the struct at cfg from defaults, then the environment, then argv[1..].
 * On success returns IM_OK and, if argi is not NULL, sets *argi to the index of
 * the first positional argument (argc if none).  Returns IM_EHELP for -h/--help
 * (nothing printed: call im_cfg_usage), or IM_EINVAL / IM_ERANGE with a one-line
 * explanation that names the flag or variable in err (always NUL-terminated).
 * Does not allocate.  Not thread-safe (reads the environment): call at start-up.
 */
im_err_t im_cfg_parse(const im_cfg_spec_t *spec, void *cfg, int argc, char **argv, int *argi,
                      char *err, size_t errlen);

/* Prints --help: usage line, summary, then each option with its environment
 * variable, default and bounds. */
void im_cfg_usage(const im_cfg_spec_t *spec, FILE *out);

/* Parsers the table uses, exposed for callers with ad-hoc values.  Return
 * IM_OK, or IM_EINVAL for bad syntax, IM_ERANGE for overflow. */
im_err_t im_cfg_parse_int(const char *s, int64_t *out);
im_err_t im_cfg_parse_bool(const char *s, int *out);
im_err_t im_cfg_parse_duration(const char *s, int64_t *out_ms);
im_err_t im_cfg_parse_size(const char *s, int64_t *out_bytes);

/* Loads the KEY=VALUE lines of an env file (scripts/infra.sh writes
 * $IM_STATE_DIR/env) into the environment without overwriting variables that
 * are already set, so the real environment and flags still win.  Blank
 * lines and # comments are skipped.  IM_ENOENT when the file cannot be
 * opened. */
im_err_t im_cfg_load_env_file(const char *path);

#endif
