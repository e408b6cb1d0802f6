#include <stddef.h>
#include <stdlib.h>

#include "im_config.h"
#include "im_test.h"

typedef struct {
    int64_t clients;
    int64_t duration_ms;
    int64_t max_body;
    int dev;
    const char *addr;
} cfg_t;

static const im_cfg_opt_t opts[] = {
    {"clients", 'c', IM_CFG_INT, offsetof(cfg_t, clients), "10", 1, 1000000, "clients"},
    {"duration", 'd', IM_CFG_DURATION, offsetof(cfg_t, duration_ms), "10s", 0, 86400000, "run time"},
    {"max-body", 0, IM_CFG_SIZE, offsetof(cfg_t, max_body), "4k", 1, 1 << 20, "body limit"},
    {"dev", 0, IM_CFG_BOOL, offsetof(cfg_t, dev), "false", 0, 0, "dev mode"},
    {"addr", 'a', IM_CFG_STR, offsetof(cfg_t, addr), "127.0.0.1:8080", 0, 0, "gateway"},
};
static const im_cfg_spec_t spec = {"bench", "test tool", "IMT", opts, sizeof(opts) / sizeof(opts[0])};

static im_err_t parse(cfg_t *c, char **argv, int *argi, char *err, size_t errlen)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    return im_cfg_parse(&spec, c, argc, argv, argi, err, errlen);
}

TEST(defaults)
{
    cfg_t c;
    char err[200];
    char *argv[] = {"bench", NULL};
    int argi;

    ASSERT_EQ(parse(&c, argv, &argi, err, sizeof(err)), IM_OK);
    ASSERT_EQ(c.clients, 10);
    ASSERT_EQ(c.duration_ms, 10000);
    ASSERT_EQ(c.max_body, 4096);
    ASSERT_EQ(c.dev, 0);
    ASSERT_STR_EQ(c.addr, "127.0.0.1:8080");
    ASSERT_EQ(argi, 1);
}

TEST(go_and_gnu_flags_and_positionals)
{
    cfg_t c;
    char err[200];
    char *argv[] = {"bench", "-c", "500", "-d=1m30s", "--max-body", "16KiB", "--dev",
                    "-addr=x:1", "rest", "-c", "1", NULL};
    int argi;

    ASSERT_EQ(parse(&c, argv, &argi, err, sizeof(err)), IM_OK);
    ASSERT_EQ(c.clients, 500);
    ASSERT_EQ(c.duration_ms, 90000);
    ASSERT_EQ(c.max_body, 16384);
    ASSERT_EQ(c.dev, 1);
    ASSERT_STR_EQ(c.addr, "x:1");
    ASSERT_EQ(argi, 8); /* parsing stops at the first positional */
}

TEST(environment_then_flags)
{
    cfg_t c;
    char err[200];
    char *argv1[] = {"bench", NULL};
    char *argv2[] = {"bench", "--clients=7", "--no-dev", NULL};

    setenv("IMT_CLIENTS", "33", 1);
    setenv("IMT_MAX_BODY", "1M", 1);
    setenv("IMT_DEV", "yes", 1);
    ASSERT_EQ(parse(&c, argv1, NULL, err, sizeof(err)), IM_OK);
    ASSERT_EQ(c.clients, 33);
    ASSERT_EQ(c.max_body, 1 << 20);
    ASSERT_EQ(c.dev, 1);
    ASSERT_EQ(parse(&c, argv2, NULL, err, sizeof(err)), IM_OK);
    ASSERT_EQ(c.clients, 7);
    ASSERT_EQ(c.dev, 0);
    unsetenv("IMT_CLIENTS");
    unsetenv("IMT_MAX_BODY");
    unsetenv("IMT_DEV");
}

TEST(errors_name_the_flag)
{
    cfg_t c;
    char err[200];
    char *unknown[] = {"bench", "--nope", NULL};
    char *range[] = {"bench", "-c", "0", NULL};
    char *syntax[] = {"bench", "-d", "30", NULL};
    char *missing[] = {"bench", "-c", NULL};
    char *help[] = {"bench", "--help", NULL};
    char *badenv[] = {"bench", NULL};

    ASSERT_EQ(parse(&c, unknown, NULL, err, sizeof(err)), IM_EINVAL);
    ASSERT_TRUE(strstr(err, "--nope") != NULL);
    ASSERT_EQ(parse(&c, range, NULL, err, sizeof(err)), IM_ERANGE);
    ASSERT_TRUE(strstr(err, "out of range") != NULL);
    ASSERT_EQ(parse(&c, syntax, NULL, err, sizeof(err)), IM_EINVAL);
    ASSERT_TRUE(strstr(err, "duration") != NULL);
    ASSERT_EQ(parse(&c, missing, NULL, err, sizeof(err)), IM_EINVAL);
    ASSERT_TRUE(strstr(err, "needs a value") != NULL);
    ASSERT_EQ(parse(&c, help, NULL, err, sizeof(err)), IM_EHELP);
    setenv("IMT_CLIENTS", "many", 1);
    ASSERT_EQ(parse(&c, badenv, NULL, err, sizeof(err)), IM_EINVAL);
    ASSERT_TRUE(strstr(err, "IMT_CLIENTS") != NULL);
    unsetenv("IMT_CLIENTS");
}

TEST(value_parsers)
{
    int64_t v;
    int b;

    ASSERT_EQ(im_cfg_parse_duration("250ms", &v), IM_OK);
    ASSERT_EQ(v, 250);
    ASSERT_EQ(im_cfg_parse_duration("1h2m3s4ms", &v), IM_OK);
    ASSERT_EQ(v, 3723004);
    ASSERT_EQ(im_cfg_parse_duration("0", &v), IM_OK);
    ASSERT_EQ(v, 0);
    ASSERT_EQ(im_cfg_parse_duration("", &v), IM_EINVAL);
    ASSERT_EQ(im_cfg_parse_duration("5x", &v), IM_EINVAL);
    ASSERT_EQ(im_cfg_parse_duration("-5s", &v), IM_EINVAL);
    ASSERT_EQ(im_cfg_parse_duration("99999999999999999999d", &v), IM_ERANGE);
    ASSERT_EQ(im_cfg_parse_duration("9999999999999999d", &v), IM_ERANGE);
    ASSERT_EQ(im_cfg_parse_size("64k", &v), IM_OK);
    ASSERT_EQ(v, 65536);
    ASSERT_EQ(im_cfg_parse_size("2GiB", &v), IM_OK);
    ASSERT_EQ(v, 2147483648LL);
    ASSERT_EQ(im_cfg_parse_size("2Q", &v), IM_EINVAL);
    ASSERT_EQ(im_cfg_parse_size("9999999999999G", &v), IM_ERANGE);
    ASSERT_EQ(im_cfg_parse_int("-12", &v), IM_OK);
    ASSERT_EQ(v, -12);
    ASSERT_EQ(im_cfg_parse_int("12abc", &v), IM_EINVAL);
    ASSERT_EQ(im_cfg_parse_int("99999999999999999999", &v), IM_ERANGE);
    ASSERT_EQ(im_cfg_parse_bool("On", &b), IM_OK);
    ASSERT_EQ(b, 1);
    ASSERT_EQ(im_cfg_parse_bool("maybe", &b), IM_EINVAL);
}

TEST(usage_lists_every_option)
{
    char buf[4096] = {0};
    FILE *f = fmemopen(buf, sizeof(buf) - 1, "w");

    ASSERT_NOT_NULL(f);
    im_cfg_usage(&spec, f);
    fclose(f);
    ASSERT_TRUE(strstr(buf, "-c, --clients") != NULL);
    ASSERT_TRUE(strstr(buf, "[IMT_MAX_BODY]") != NULL);
    ASSERT_TRUE(strstr(buf, "default: 10s") != NULL);
    ASSERT_TRUE(strstr(buf, "range: 1..1000000") != NULL);
}

int main(void)
{
    RUN(defaults);
    RUN(go_and_gnu_flags_and_positionals);
    RUN(environment_then_flags);
    RUN(errors_name_the_flag);
    RUN(value_parsers);
    RUN(usage_lists_every_option);
    return im_test_done();
}
