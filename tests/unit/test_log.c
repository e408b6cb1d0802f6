#include "im_log.h"
#include "im_test.h"

static char last[4096];
static int lines;

static void capture(im_log_level_t level, const char *line, size_t len, void *arg)
{
    (void)level;
    (void)arg;
    lines++;
    snprintf(last, sizeof(last), "%.*s", (int)len, line);
}

static int evaluated;

static int side_effect(void)
{
    evaluated++;
    return 42;
}

TEST(level_checked_before_formatting)
{
    im_log_set_sink(capture, NULL);
    im_log_set_level(IM_LOG_WARN);
    lines = evaluated = 0;
    im_log_debug("value %d", side_effect());
    ASSERT_EQ(evaluated, 0); /* arguments not even evaluated */
    ASSERT_EQ(lines, 0);
    im_log_warn("value %d", side_effect());
    ASSERT_EQ(evaluated, 1);
    ASSERT_EQ(lines, 1);
    im_log_set_sink(NULL, NULL);
    im_log_set_level(IM_LOG_INFO);
}

TEST(line_format)
{
    im_log_set_sink(capture, NULL);
    im_log_set_ident("gateway-3");
    im_log_info("conn=%d hello", 17);
    ASSERT_TRUE(strstr(last, " gateway-3 I test_log.c:") != NULL);
    ASSERT_TRUE(strstr(last, " conn=17 hello\n") != NULL);
    ASSERT_EQ(last[4], '-');
    ASSERT_EQ(last[23], 'Z');
    im_log_set_sink(NULL, NULL);
}

TEST(long_line_is_cut_not_split)
{
    char big[5000];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    im_log_set_sink(capture, NULL);
    lines = 0;
    im_log_error("%s", big);
    ASSERT_EQ(lines, 1);
    ASSERT_EQ(last[strlen(last) - 1], '\n');
    ASSERT_LT(strlen(last), 2049);
    im_log_set_sink(NULL, NULL);
}

TEST(parse_level)
{
    im_log_level_t l;
    ASSERT_EQ(im_log_parse_level("DEBUG", &l), IM_OK);
    ASSERT_EQ(l, IM_LOG_DEBUG);
    ASSERT_EQ(im_log_parse_level("trace", &l), IM_OK);
    ASSERT_EQ(l, IM_LOG_TRACE);
    ASSERT_EQ(im_log_parse_level("loud", &l), IM_EINVAL);
}

int main(void)
{
    RUN(level_checked_before_formatting);
    RUN(line_format);
    RUN(long_line_is_cut_not_split);
    RUN(parse_level);
    return im_test_done();
}
