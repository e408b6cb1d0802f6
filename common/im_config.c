#include "im_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

im_err_t im_cfg_parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
        return IM_EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (*end != '\0')
        return IM_EINVAL;
    if (errno == ERANGE)
        return IM_ERANGE;
    *out = v;
    return IM_OK;
}

im_err_t im_cfg_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return IM_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return IM_OK;
        }
    }
    return IM_EINVAL;
}

/* Reads the leading unsigned decimal of *sp, advancing it.  Overflow is
 * IM_ERANGE; no digits is IM_EINVAL. */
static im_err_t take_uint(const char **sp, uint64_t *out)
{
    const char *s = *sp;
    uint64_t v = 0;

    if (!isdigit((unsigned char)*s))
        return IM_EINVAL;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_C(0x7fffffffffffffff) - d) / 10)
            return IM_ERANGE;
        v = v * 10 + d;
    }
    *sp = s;
    *out = v;
    return IM_OK;
}

static im_err_t mul_add(uint64_t *acc, uint64_t n, uint64_t unit)
{
    if (n != 0 && unit > UINT64_C(0x7fffffffffffffff) / n)
        return IM_ERANGE;
    if (*acc > UINT64_C(0x7fffffffffffffff) - n * unit)
        return IM_ERANGE;
    *acc += n * unit;
    return IM_OK;
}

im_err_t im_cfg_parse_duration(const char *s, int64_t *out_ms)
{
    static const struct {
        const char *name;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    uint64_t total = 0;
    im_err_t rc;

    if (strcmp(s, "0") == 0) {
        *out_ms = 0;
        return IM_OK;
    }
    if (*s == '\0')
        return IM_EINVAL;
    /* Go's time.ParseDuration style: one or more <number><unit> parts. */
    while (*s) {
        uint64_t n;
        size_t ulen = 0, best = (size_t)-1;

        if ((rc = take_uint(&s, &n)) != IM_OK)
            return rc;
        while (isalpha((unsigned char)s[ulen]))
            ulen++;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            if (strlen(units[i].name) == ulen && strncmp(s, units[i].name, ulen) == 0)
                best = i;
        }
        if (best == (size_t)-1)
            return IM_EINVAL; /* a unit is required: "30" is ambiguous */
        if ((rc = mul_add(&total, n, units[best].ms)) != IM_OK)
            return rc;
        s += ulen;
    }
    *out_ms = (int64_t)total;
    return IM_OK;
}

im_err_t im_cfg_parse_size(const char *s, int64_t *out_bytes)
{
    uint64_t n, unit = 1, total = 0;
    im_err_t rc;

    if ((rc = take_uint(&s, &n)) != IM_OK)
        return rc;
    if (*s != '\0') {
        switch (toupper((unsigned char)*s)) {
        case 'K':
            unit = UINT64_C(1) << 10;
            break;
        case 'M':
            unit = UINT64_C(1) << 20;
            break;
        case 'G':
            unit = UINT64_C(1) << 30;
            break;
        default:
            return IM_EINVAL;
        }
        s++;
        /* Accept k, kb, kib (always binary multiples, as memory sizes are). */
        if (strcasecmp(s, "") != 0 && strcasecmp(s, "b") != 0 && strcasecmp(s, "ib") != 0)
            return IM_EINVAL;
    }
    if ((rc = mul_add(&total, n, unit)) != IM_OK)
        return rc;
    *out_bytes = (int64_t)total;
    return IM_OK;
}

static void env_name(const im_cfg_spec_t *spec, const im_cfg_opt_t *o, char *buf, size_t len)
{
    size_t i = 0;
    int n = snprintf(buf, len, "%s_", spec->env_prefix);

    if (n < 0 || (size_t)n >= len)
        return;
    for (i = (size_t)n; o->name[i - (size_t)n] && i + 1 < len; i++) {
        char c = o->name[i - (size_t)n];
        buf[i] = c == '-' ? '_' : (char)toupper((unsigned char)c);
    }
    buf[i] = '\0';
}

static im_err_t set_value(const im_cfg_opt_t *o, void *cfg, const char *val, const char *source,
                          char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    int64_t v = 0;
    im_err_t rc;

    switch (o->type) {
    case IM_CFG_STR:
        *(const char **)(void *)field = val;
        return IM_OK;
    case IM_CFG_BOOL: {
        int b = 0;
        if (val != NULL && (rc = im_cfg_parse_bool(val, &b)) != IM_OK) {
            snprintf(err, errlen, "%s: expected true or false, got \"%s\"", source, val);
            return IM_EINVAL;
        }
        *(int *)(void *)field = b;
        return IM_OK;
    }
    case IM_CFG_INT:
        rc = val ? im_cfg_parse_int(val, &v) : IM_OK;
        break;
    case IM_CFG_DURATION:
        rc = val ? im_cfg_parse_duration(val, &v) : IM_OK;
        break;
    case IM_CFG_SIZE:
        rc = val ? im_cfg_parse_size(val, &v) : IM_OK;
        break;
    default:
        rc = IM_EINVAL;
        break;
    }
    if (rc != IM_OK) {
        static const char *const want[] = {"an integer", "", "", "a duration like 500ms, 30s, 2m",
                                           "a size like 4096, 64k, 16M"};
        snprintf(err, errlen, "%s: expected %s, got \"%s\"", source, want[o->type], val);
        return rc;
    }
    if (o->min != o->max && (v < o->min || v > o->max)) {
        snprintf(err, errlen, "%s: %s is out of range [%lld, %lld]", source, val ? val : "0",
                 (long long)o->min, (long long)o->max);
        return IM_ERANGE;
    }
    *(int64_t *)(void *)field = v;
    return IM_OK;
}

static const im_cfg_opt_t *find_long(const im_cfg_spec_t *spec, const char *name, size_t len)
{
    for (size_t i = 0; i < spec->nopts; i++) {
        if (strlen(spec->opts[i].name) == len && strncmp(spec->opts[i].name, name, len) == 0)
            return &spec->opts[i];
    }
    return NULL;
}

static const im_cfg_opt_t *find_short(const im_cfg_spec_t *spec, char c)
{
    for (size_t i = 0; i < spec->nopts; i++) {
        if (spec->opts[i].short_name && spec->opts[i].short_name == c)
            return &spec->opts[i];
    }
    return NULL;
}

/* Parses one flag at argv[*i] (which starts with '-'), consuming its value. */
static im_err_t parse_flag(const im_cfg_spec_t *spec, void *cfg, int argc, char **argv, int *i,
                           char *err, size_t errlen)
{
    const char *arg = argv[*i], *name = arg + 1, *eq, *val = NULL;
    const im_cfg_opt_t *o;
    size_t len;
    int negated = 0;

    if (*name == '-')
        name++;
    eq = strchr(name, '=');
    len = eq ? (size_t)(eq - name) : strlen(name);
    if ((len == 1 && *name == 'h') || (len == 4 && strncmp(name, "help", 4) == 0))
        return IM_EHELP;

    o = len == 1 ? find_short(spec, *name) : find_long(spec, name, len);
    if (o == NULL && len > 3 && strncmp(name, "no-", 3) == 0) {
        o = find_long(spec, name + 3, len - 3);
        if (o && o->type == IM_CFG_BOOL && !eq)
            negated = 1;
        else
            o = NULL;
    }
    if (o == NULL) {
        snprintf(err, errlen, "unknown flag %.*s (see --help)", (int)(name - arg + len), arg);
        return IM_EINVAL;
    }
    if (eq)
        val = eq + 1;
    else if (o->type == IM_CFG_BOOL)
        val = negated ? "false" : "true";
    else if (*i + 1 < argc)
        val = argv[++*i];
    else {
        snprintf(err, errlen, "flag --%s needs a value", o->name);
        return IM_EINVAL;
    }
    return set_value(o, cfg, val, arg, err, errlen);
}

im_err_t im_cfg_parse(const im_cfg_spec_t *spec, void *cfg, int argc, char **argv, int *argi,
                      char *err, size_t errlen)
{
    char envbuf[128], source[160];
    im_err_t rc;
    int i;

    if (errlen)
        err[0] = '\0';
    for (size_t k = 0; k < spec->nopts; k++) {
        const im_cfg_opt_t *o = &spec->opts[k];
        snprintf(source, sizeof(source), "default of --%s", o->name);
        if ((rc = set_value(o, cfg, o->def, source, err, errlen)) != IM_OK)
            return rc;
        if (spec->env_prefix) {
            const char *ev;
            env_name(spec, o, envbuf, sizeof(envbuf));
            if ((ev = getenv(envbuf)) != NULL &&
                (rc = set_value(o, cfg, ev, envbuf, err, errlen)) != IM_OK)
                return rc;
        }
    }

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0')
            break;
        if ((rc = parse_flag(spec, cfg, argc, argv, &i, err, errlen)) != IM_OK)
            return rc;
    }
    if (argi)
        *argi = i;
    return IM_OK;
}

void im_cfg_usage(const im_cfg_spec_t *spec, FILE *out)
{
    static const char *const type_names[] = {"int", "bool", "string", "duration", "size"};
    char envbuf[128];

    fprintf(out, "Usage: %s [flags]\n", spec->prog);
    if (spec->summary)
        fprintf(out, "%s\n", spec->summary);
    fprintf(out, "\nFlags (environment variable in brackets; flags override it):\n");
    for (size_t k = 0; k < spec->nopts; k++) {
        const im_cfg_opt_t *o = &spec->opts[k];
        char lead[64];

        if (o->short_name)
            snprintf(lead, sizeof(lead), "-%c, --%s", o->short_name, o->name);
        else
            snprintf(lead, sizeof(lead), "    --%s", o->name);
        fprintf(out, "  %-28s %-8s %s\n", lead, type_names[o->type], o->help ? o->help : "");
        fprintf(out, "  %-28s          default: %s", "", o->def ? o->def : "(none)");
        if (o->min != o->max)
            fprintf(out, ", range: %lld..%lld", (long long)o->min, (long long)o->max);
        if (spec->env_prefix) {
            env_name(spec, o, envbuf, sizeof(envbuf));
            fprintf(out, " [%s]", envbuf);
        }
        fputc('\n', out);
    }
    fprintf(out, "  %-28s          show this help\n", "-h, --help");
}

im_err_t im_cfg_load_env_file(const char *path)
{
    char line[1024];
    FILE *f = fopen(path, "r");

    if (f == NULL)
        return IM_ENOENT;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *eq = strchr(line, '=');

        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || eq == NULL || eq == line)
            continue;
        *eq = '\0';
        setenv(line, eq + 1, 0);
    }
    fclose(f);
    return IM_OK;
}
