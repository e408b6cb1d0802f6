/*
 * it_env.h - how integration tests find the servers started by scripts/infra.sh.
 *
 * `infra.sh up` writes $IM_STATE_DIR/env, KEY=VALUE lines such as IM_MYSQL_PORT=3307.
 * With IM_PORT_BASE=auto the ports are picked at the first `up` of a state dir, so that
 * file, not the test's own environment, is the source of truth:
 *
 *   int main(void) {
 *       if (it_env_load() != IM_OK) return 1;        // before any thread starts
 *       const char *host = it_env("IM_MYSQL_HOST");  // NULL when the key is missing
 *       unsigned port = it_env_port("IM_MYSQL_PORT");
 *
 * Everything here is static inline: include it from the one .c file of each test.
 */
#ifndef IT_ENV_H
#define IT_ENV_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_err.h"

/* Loads $IM_STATE_DIR/env into the process environment (setenv, overwriting: the file wins
 * over inherited values).  Blank lines and lines starting with '#' are skipped.
 * Returns IM_OK; IM_ENOENT if IM_STATE_DIR is unset or the file cannot be opened (infra
 * not up); IM_EPARSE on a line that is not KEY=VALUE or is longer than 1023 bytes.  Prints
 * the reason on stderr.  setenv is not thread-safe: call it from main before any thread. */
static inline im_err_t it_env_load(void)
{
    const char *dir = getenv("IM_STATE_DIR");
    char path[4096], line[1024];
    im_err_t err = IM_OK;
    unsigned lineno = 0;
    FILE *f;

    if (dir == NULL || *dir == '\0') {
        fprintf(stderr, "it_env: IM_STATE_DIR is not set; run under ctest or set it to the "
                        "state dir of scripts/infra.sh up\n");
        return IM_ENOENT;
    }
    if ((size_t)snprintf(path, sizeof(path), "%s/env", dir) >= sizeof(path))
        return IM_ENOENT;
    f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "it_env: cannot open %s (%s); is the infra up? scripts/infra.sh up\n", path,
                strerror(errno));
        return IM_ENOENT;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        size_t len = strcspn(line, "\r\n");
        char *eq = strchr(line, '=');

        lineno++;
        if (line[len] == '\0' && !feof(f)) {
            err = IM_EPARSE; /* no newline before the buffer filled: line too long */
            break;
        }
        line[len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        if (eq == NULL || eq == line) {
            err = IM_EPARSE;
            break;
        }
        *eq = '\0';
        if (setenv(line, eq + 1, 1) != 0) {
            err = IM_EPARSE; /* EINVAL: the key contains '=' or is empty */
            break;
        }
    }
    if (err != IM_OK)
        fprintf(stderr, "it_env: %s:%u: not a KEY=VALUE line\n", path, lineno);
    fclose(f);
    return err;
}

/* The value of key, or NULL when it is unset or empty.  The string belongs to the
 * environment: do not free it, and do not keep it across a later it_env_load. */
static inline const char *it_env(const char *key)
{
    const char *value = getenv(key);

    return value != NULL && *value != '\0' ? value : NULL;
}

/* The value of key as a TCP port (1-65535), or 0 when it is unset or not a port. */
static inline unsigned it_env_port(const char *key)
{
    const char *value = it_env(key);
    char *end;
    unsigned long port;

    if (value == NULL)
        return 0;
    errno = 0;
    port = strtoul(value, &end, 10);
    if (errno != 0 || *end != '\0' || port == 0 || port > 65535)
        return 0;
    return (unsigned)port;
}

#endif
