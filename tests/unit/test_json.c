/* Unit tests for im_utf8 and im_json: validation, tokenizer, accessors, writer. */
#include <limits.h>
#include <stdlib.h>

#include "im_alloc.h"
#include "im_json.h"
#include "im_test.h"
#include "im_utf8.h"

#define NTOK 256

static im_json_tok_t toks[NTOK];
static im_json_t doc;

/* Parses text[0..len) into the shared doc with the default depth. */
static im_err_t parse_n(const char *text, size_t len)
{
    return im_json_parse(&doc, text, len, toks, NTOK, 0);
}

static im_err_t parse(const char *text)
{
    return parse_n(text, strlen(text));
}

/* The unescaped value of string token t, in a static buffer. */
static const char *str_of(int t)
{
    static char buf[1024];
    size_t len;

    if (im_json_str(&doc, t, buf, sizeof(buf), &len) != IM_OK)
        return "(error)";
    return buf;
}

/* ---- UTF-8 ---- */

TEST(utf8_valid_text)
{
    static const char *ok[] = {
        "",
        "hello",
        "\x7f",
        "\xc2\x80",                                   /* U+0080 */
        "\xdf\xbf",                                   /* U+07FF */
        "\xe0\xa0\x80",                               /* U+0800 */
        "\xed\x9f\xbf",                               /* U+D7FF */
        "\xee\x80\x80",                               /* U+E000 */
        "\xef\xbf\xbf",                               /* U+FFFF */
        "\xf0\x90\x80\x80",                           /* U+10000 */
        "\xf4\x8f\xbf\xbf",                           /* U+10FFFF */
        "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", /* héllo € 😀 */
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        ASSERT_TRUE(im_utf8_valid(ok[i], strlen(ok[i])));
    ASSERT_TRUE(im_utf8_valid("a\0b", 3)); /* U+0000 is valid */
}

static const char *const bad_utf8[] = {
    "\x80",                     /* stray continuation */
    "\xbf",                     /* stray continuation */
    "\xc0\x80",                 /* overlong NUL */
    "\xc1\xbf",                 /* overlong U+007F */
    "\xe0\x80\x80",             /* overlong 3-byte */
    "\xe0\x9f\xbf",             /* overlong U+07FF */
    "\xf0\x80\x80\x80",         /* overlong 4-byte */
    "\xf0\x8f\xbf\xbf",         /* overlong U+FFFF */
    "\xed\xa0\x80",             /* U+D800 encoded */
    "\xed\xbf\xbf",             /* U+DFFF encoded */
    "\xed\xa0\xbd\xed\xb8\x80", /* CESU-8 surrogate pair */
    "\xf4\x90\x80\x80",         /* U+110000 */
    "\xf5\x80\x80\x80",         /* lead byte beyond U+10FFFF */
    "\xf8\x88\x80\x80\x80",     /* 5-byte form */
    "\xfe",
    "\xff",
    "\xc3",         /* truncated 2-byte */
    "\xe2\x82",     /* truncated 3-byte */
    "\xf0\x9f\x98", /* truncated 4-byte */
    "\xc3\x28",     /* bad continuation */
    "\xe2\x28\xa1",
    "\xf0\x9f\x28\x80",
};
#define N_BAD_UTF8 (sizeof(bad_utf8) / sizeof(bad_utf8[0]))

TEST(utf8_invalid_text)
{
    for (size_t i = 0; i < N_BAD_UTF8; i++)
        ASSERT_TRUE(!im_utf8_valid(bad_utf8[i], strlen(bad_utf8[i])));
}

/* The word-at-a-time ASCII scan must not skip a bad byte at any offset or
 * alignment, nor read past len. */
TEST(utf8_ascii_fast_path_every_offset)
{
    char buf[80];

    for (size_t len = 1; len <= 40; len++) {
        for (size_t at = 0; at < len; at++) {
            char *s = buf + 1 + len % 8; /* vary alignment */
            memset(s, 'a', len);
            s[at] = (char)0x80;
            ASSERT_TRUE(!im_utf8_valid(s, len));
            s[at] = 'a';
            ASSERT_TRUE(im_utf8_valid(s, len));
        }
    }
    /* A bad byte just past len is not looked at. */
    memcpy(buf, "abcdefgh\xff", 9);
    ASSERT_TRUE(im_utf8_valid(buf, 8));
}

TEST(utf8_decode_results)
{
    uint32_t cp = 0;

    ASSERT_EQ(im_utf8_decode("A", 1, &cp), 1);
    ASSERT_EQ(cp, 'A');
    ASSERT_EQ(im_utf8_decode("\xe2\x82\xac!", 4, &cp), 3);
    ASSERT_EQ(cp, 0x20AC);
    ASSERT_EQ(im_utf8_decode("\xf4\x8f\xbf\xbf", 4, &cp), 4);
    ASSERT_EQ(cp, 0x10FFFF);
    /* Valid but incomplete prefixes ask for more; bad bytes do not. */
    ASSERT_EQ(im_utf8_decode("", 0, &cp), IM_EAGAIN);
    ASSERT_EQ(im_utf8_decode("\xf0\x9f\x98", 3, &cp), IM_EAGAIN);
    ASSERT_EQ(im_utf8_decode("\xe2", 1, &cp), IM_EAGAIN);
    ASSERT_EQ(im_utf8_decode("\xed\xa0", 2, &cp), IM_EUTF8);
    ASSERT_EQ(im_utf8_decode("\xf4\x90", 2, &cp), IM_EUTF8);
    ASSERT_EQ(im_utf8_decode("\xe0\x80", 2, &cp), IM_EUTF8);
    cp = 7;
    ASSERT_EQ(im_utf8_decode("\x80", 1, &cp), IM_EUTF8);
    ASSERT_EQ(cp, 7);
}

/* Every code point encodes and decodes back; surrogates and values beyond
 * U+10FFFF are refused. */
TEST(utf8_encode_decode_every_code_point)
{
    char out[IM_UTF8_MAX];
    uint32_t cp;

    for (uint32_t c = 0; c <= 0x10FFFF; c++) {
        int n = im_utf8_encode(c, out);
        if (c >= 0xD800 && c <= 0xDFFF) {
            ASSERT_EQ(n, IM_EUTF8);
            continue;
        }
        ASSERT_EQ(n, c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4);
        ASSERT_EQ(im_utf8_decode(out, (size_t)n, &cp), n);
        ASSERT_EQ(cp, c);
        ASSERT_TRUE(im_utf8_valid(out, (size_t)n));
    }
    ASSERT_EQ(im_utf8_encode(0x110000, out), IM_EUTF8);
    ASSERT_EQ(im_utf8_encode(UINT32_MAX, out), IM_EUTF8);
}

/* A sequence is valid exactly when it is the unique encoding of a code point. */
static void check_sequence(const unsigned char *s, size_t len)
{
    char enc[IM_UTF8_MAX];
    uint32_t cp;
    bool expect = im_utf8_decode((const char *)s, len, &cp) == (int)len &&
                  im_utf8_encode(cp, enc) == (int)len && memcmp(enc, s, len) == 0;

    if (im_utf8_valid((const char *)s, len) != expect)
        IM__FAIL("%02x %02x %02x %02x (len %zu): valid should be %d", s[0], s[1], s[2], s[3], len,
                 expect);
}

/* Every 2- and 3-byte sequence, and every 4-byte one with interesting third
 * and fourth bytes, against the encoder. */
TEST(utf8_decode_agrees_with_encode)
{
    static const unsigned char tails[] = {0x00, 0x7f, 0x80, 0x8f, 0x90,
                                          0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    unsigned char s[4] = {0};

    for (unsigned a = 0xC0; a <= 0xFF; a++) {
        s[0] = (unsigned char)a;
        for (unsigned b = 0; b <= 0xFF; b++) {
            s[1] = (unsigned char)b;
            if (a < 0xE0) {
                check_sequence(s, 2);
                continue;
            }
            for (unsigned c = 0; c <= 0xFF; c++) {
                s[2] = (unsigned char)c;
                if (a < 0xF0) {
                    check_sequence(s, 3);
                    continue;
                }
                if (memchr(tails, (int)c, sizeof(tails)) == NULL)
                    continue;
                for (size_t d = 0; d < sizeof(tails); d++) {
                    s[3] = tails[d];
                    check_sequence(s, 4);
                }
            }
        }
    }
}

/* ---- tokenizer and accessors ---- */

TEST(json_send_frame)
{
    const char *f = "{\"type\":\"send\",\"cid\":\"c-17\",\"to\":{\"user\":42},\"body\":\"hello\"}";
    uint64_t uid = 0;

    ASSERT_EQ(parse(f), IM_OK);
    ASSERT_EQ(doc.count, 11);
    ASSERT_EQ(im_json_type(&doc, 0), IM_JSON_OBJECT);
    ASSERT_EQ(doc.tok[0].size, 4);
    ASSERT_TRUE(im_json_str_eq(&doc, im_json_find(&doc, 0, "type"), "send"));
    ASSERT_STR_EQ(str_of(im_json_find(&doc, 0, "cid")), "c-17");
    ASSERT_EQ(im_json_uint64(&doc, im_json_find(&doc, im_json_find(&doc, 0, "to"), "user"), &uid),
              IM_OK);
    ASSERT_U64_EQ(uid, 42);
    ASSERT_STR_EQ(str_of(im_json_find(&doc, 0, "body")), "hello");
    /* Lookups chain: a missing outer key propagates. */
    ASSERT_EQ(im_json_find(&doc, im_json_find(&doc, 0, "from"), "user"), IM_ENOENT);
    ASSERT_EQ(im_json_uint64(&doc, im_json_find(&doc, 0, "nope"), &uid), IM_ENOENT);
    ASSERT_EQ(im_json_find(&doc, im_json_find(&doc, 0, "cid"), "x"), IM_EINVAL);
    ASSERT_EQ(im_json_find(&doc, 99, "x"), IM_EINVAL);
}

TEST(json_msg_frame)
{
    const char *f = "{\"type\":\"msg\",\"id\":\"7291\",\"conv\":\"d:1:2\",\"seq\":5,\"from\":1,"
                    "\"to\":{\"group\":9},\"body\":\"line1\\nline2 \\u00e9\",\"ts\":1700000000000}";
    int64_t ts = 0, seq = 0;
    uint64_t group = 0;

    ASSERT_EQ(parse(f), IM_OK);
    ASSERT_EQ(im_json_int64(&doc, im_json_find(&doc, 0, "ts"), &ts), IM_OK);
    ASSERT_EQ(ts, 1700000000000LL);
    ASSERT_EQ(im_json_int64(&doc, im_json_find(&doc, 0, "seq"), &seq), IM_OK);
    ASSERT_EQ(seq, 5);
    ASSERT_EQ(
        im_json_uint64(&doc, im_json_find(&doc, im_json_find(&doc, 0, "to"), "group"), &group),
        IM_OK);
    ASSERT_U64_EQ(group, 9);
    ASSERT_STR_EQ(str_of(im_json_find(&doc, 0, "body")), "line1\nline2 \xc3\xa9");
    ASSERT_TRUE(im_json_str_eq(&doc, im_json_find(&doc, 0, "body"), "line1\nline2 \xc3\xa9"));
    ASSERT_TRUE(!im_json_str_eq(&doc, im_json_find(&doc, 0, "body"), "line1\nline2 "));
    ASSERT_TRUE(!im_json_str_eq(&doc, im_json_find(&doc, 0, "body"), "line1\nline2 \xc3\xa9!"));
}

/* tok layout: parent, size, next, and iteration with first/next. */
TEST(json_token_layout)
{
    const char *f = " { \"a\" : [1, {\"x\": null}, []], \"b\": {}, \"c\": true } ";
    int k, n;

    ASSERT_EQ(parse(f), IM_OK);
    /* 0:{ 1:"a" 2:[ 3:1 4:{ 5:"x" 6:null 7:[] 8:"b" 9:{} 10:"c" 11:true */
    ASSERT_EQ(doc.count, 12);
    ASSERT_EQ(doc.tok[0].start, 1);
    ASSERT_EQ(doc.tok[0].end, strlen(f) - 1);
    ASSERT_EQ(doc.tok[0].next, 12);
    ASSERT_EQ(doc.tok[0].parent, -1);
    ASSERT_EQ(doc.tok[2].size, 3);
    ASSERT_EQ(doc.tok[2].next, 8);
    ASSERT_EQ(doc.tok[2].parent, 0);
    ASSERT_EQ(doc.tok[4].size, 1);
    ASSERT_EQ(doc.tok[6].parent, 4);
    ASSERT_EQ(doc.tok[7].size, 0);
    ASSERT_EQ(doc.tok[1].flags, IM_JSON_F_KEY);
    ASSERT_EQ(doc.tok[1].end - doc.tok[1].start, 1);
    ASSERT_EQ(doc.tok[3].flags, IM_JSON_F_INT);

    const char *keys[] = {"a", "b", "c"};
    n = 0;
    for (k = im_json_first(&doc, 0); k >= 0; k = im_json_next(&doc, k))
        ASSERT_TRUE(im_json_str_eq(&doc, k, keys[n++]));
    ASSERT_EQ(n, 3);
    ASSERT_EQ(k, IM_ENOENT);

    const im_json_type_t types[] = {IM_JSON_NUMBER, IM_JSON_OBJECT, IM_JSON_ARRAY};
    n = 0;
    for (k = im_json_first(&doc, 2); k >= 0; k = im_json_next(&doc, k))
        ASSERT_EQ(im_json_type(&doc, k), types[n++]);
    ASSERT_EQ(n, 3);

    ASSERT_EQ(im_json_first(&doc, 7), IM_ENOENT); /* empty array */
    ASSERT_EQ(im_json_first(&doc, 9), IM_ENOENT); /* empty object */
    ASSERT_EQ(im_json_first(&doc, 3), IM_EINVAL); /* not a container */
    ASSERT_EQ(im_json_next(&doc, 0), IM_ENOENT);  /* the root */
    ASSERT_EQ(im_json_next(&doc, 2), IM_EINVAL);  /* an object's value */
    ASSERT_EQ(im_json_next(&doc, 12), IM_EINVAL); /* past count */
    ASSERT_EQ(im_json_next(&doc, IM_ENOENT), IM_ENOENT);
    ASSERT_EQ(im_json_type(&doc, -1), IM_JSON_NONE);
    ASSERT_EQ(im_json_type(&doc, 12), IM_JSON_NONE);
    ASSERT_EQ(im_json_type(&doc, 6), IM_JSON_NULL);
    ASSERT_EQ(im_json_first(&doc, IM_EINVAL), IM_EINVAL);
    ASSERT_TRUE(!im_json_str_eq(&doc, IM_ENOENT, "a"));
    ASSERT_TRUE(!im_json_str_eq(&doc, 3, "1")); /* a number */
}

TEST(json_top_level_scalars)
{
    bool b = false;
    int64_t v = 0;

    ASSERT_EQ(parse("\"x\""), IM_OK);
    ASSERT_STR_EQ(str_of(0), "x");
    ASSERT_EQ(parse(" -12 "), IM_OK);
    ASSERT_EQ(im_json_int64(&doc, 0, &v), IM_OK);
    ASSERT_EQ(v, -12);
    ASSERT_EQ(parse("true"), IM_OK);
    ASSERT_EQ(im_json_bool(&doc, 0, &b), IM_OK);
    ASSERT_TRUE(b);
    ASSERT_EQ(parse("\t\r\nfalse\n"), IM_OK);
    ASSERT_EQ(im_json_bool(&doc, 0, &b), IM_OK);
    ASSERT_TRUE(!b);
    ASSERT_EQ(parse("null"), IM_OK);
    ASSERT_EQ(im_json_type(&doc, 0), IM_JSON_NULL);
    ASSERT_EQ(im_json_bool(&doc, 0, &b), IM_EINVAL);
    ASSERT_EQ(parse("1.5e-3"), IM_OK);
    ASSERT_EQ(doc.tok[0].flags, 0);
}

TEST(json_string_escapes_decode)
{
    ASSERT_EQ(parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\""), IM_OK);
    ASSERT_STR_EQ(str_of(0), "\"\\/\b\f\n\r\t");
    ASSERT_EQ(doc.tok[0].flags, IM_JSON_F_ESC);
    /* \u escapes decode to UTF-8, upper and lower case hex. */
    ASSERT_EQ(parse("\"\\u0041\\u00e9\\u00E9\\u20AC\\u07ff\\uffff\""), IM_OK);
    ASSERT_STR_EQ(str_of(0), "A\xc3\xa9\xc3\xa9\xe2\x82\xac\xdf\xbf\xef\xbf\xbf");
    /* Surrogate pairs decode to one 4-byte sequence. */
    ASSERT_EQ(parse("\"\\ud83d\\ude00 \\uD800\\uDC00 \\udbff\\udfff\""), IM_OK);
    ASSERT_STR_EQ(str_of(0), "\xf0\x9f\x98\x80 \xf0\x90\x80\x80 \xf4\x8f\xbf\xbf");
    /* Non-ASCII passes through unchanged. */
    ASSERT_EQ(parse("\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\""), IM_OK);
    ASSERT_STR_EQ(str_of(0), "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");
    ASSERT_EQ(doc.tok[0].flags, 0);
    ASSERT_TRUE(im_json_str_eq(&doc, 0, "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"));
}

TEST(json_lone_surrogates_rejected)
{
    static const char *bad[] = {
        "\"\\ud800\"",    "\"\\udbff\"",        "\"\\udc00\"",        "\"\\udfff\"",
        "\"\\ud800x\"",   "\"\\ud800\\u0041\"", "\"\\ud800\\ud800\"", "\"\\udc00\\ud800\"",
        "\"\\ud800\\n\"", "\"a\\udc00b\"",      "[\"\\ud83d\"]",      "{\"\\ude00\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ASSERT_EQ(parse(bad[i]), IM_EUTF8);
}

TEST(json_str_copy_bounds)
{
    char buf[8];
    size_t len = 0;

    ASSERT_EQ(parse("[\"hello\", \"a\\u00e9\\n\", 5]"), IM_OK);
    ASSERT_EQ(im_json_str(&doc, 1, NULL, 0, &len), IM_ERANGE);
    ASSERT_EQ(len, 5);
    memset(buf, 'x', sizeof(buf));
    ASSERT_EQ(im_json_str(&doc, 1, buf, 5, &len), IM_ERANGE); /* no room for the NUL */
    ASSERT_EQ(buf[0], '\0');
    ASSERT_EQ(buf[5], 'x');
    ASSERT_EQ(im_json_str(&doc, 1, buf, 6, &len), IM_OK);
    ASSERT_STR_EQ(buf, "hello");
    /* Escaped: the unescaped length counts. */
    ASSERT_EQ(im_json_str(&doc, 2, NULL, 0, &len), IM_ERANGE);
    ASSERT_EQ(len, 4);
    memset(buf, 'x', sizeof(buf));
    ASSERT_EQ(im_json_str(&doc, 2, buf, 4, &len), IM_ERANGE);
    ASSERT_EQ(buf[0], '\0');
    ASSERT_EQ(buf[4], 'x');
    ASSERT_EQ(im_json_str(&doc, 2, buf, 5, NULL), IM_OK);
    ASSERT_STR_EQ(buf, "a\xc3\xa9\n");
    ASSERT_EQ(im_json_str(&doc, 3, buf, sizeof(buf), &len), IM_EINVAL);
    ASSERT_EQ(im_json_str(&doc, IM_ENOENT, buf, sizeof(buf), &len), IM_ENOENT);
}

/* \u0000 is legal JSON: it is copied as a NUL byte and never matches the end
 * of a C string. */
TEST(json_embedded_nul)
{
    char buf[8];
    size_t len = 0;

    ASSERT_EQ(parse("\"ab\\u0000cd\""), IM_OK);
    ASSERT_EQ(im_json_str(&doc, 0, buf, sizeof(buf), &len), IM_OK);
    ASSERT_EQ(len, 5);
    ASSERT_MEM_EQ(buf, "ab\0cd", 6);
    ASSERT_TRUE(!im_json_str_eq(&doc, 0, "ab"));
    ASSERT_TRUE(!im_json_str_eq(&doc, 0, "abcd"));
    ASSERT_EQ(parse("\"ab\\u0000\""), IM_OK);
    ASSERT_TRUE(!im_json_str_eq(&doc, 0, "ab"));
}

TEST(json_integers)
{
    int64_t i = 0;
    uint64_t u = 0;

    ASSERT_EQ(parse("[9223372036854775807, -9223372036854775808, 9223372036854775808,"
                    " -9223372036854775809, 18446744073709551615, 18446744073709551616,"
                    " -0, 0, 1.0, 1e2, -1, 99999999999999999999999, \"1\", 1E+2]"),
              IM_OK);
    ASSERT_EQ(im_json_int64(&doc, 1, &i), IM_OK);
    ASSERT_EQ(i, INT64_MAX);
    ASSERT_EQ(im_json_uint64(&doc, 1, &u), IM_OK);
    ASSERT_U64_EQ(u, INT64_MAX);
    ASSERT_EQ(im_json_int64(&doc, 2, &i), IM_OK);
    ASSERT_EQ(i, INT64_MIN);
    ASSERT_EQ(im_json_uint64(&doc, 2, &u), IM_ERANGE);
    ASSERT_EQ(im_json_int64(&doc, 3, &i), IM_ERANGE);
    ASSERT_EQ(im_json_uint64(&doc, 3, &u), IM_OK);
    ASSERT_U64_EQ(u, UINT64_C(9223372036854775808));
    ASSERT_EQ(im_json_int64(&doc, 4, &i), IM_ERANGE);
    ASSERT_EQ(im_json_uint64(&doc, 5, &u), IM_OK);
    ASSERT_U64_EQ(u, UINT64_MAX);
    ASSERT_EQ(im_json_int64(&doc, 5, &i), IM_ERANGE);
    ASSERT_EQ(im_json_uint64(&doc, 6, &u), IM_ERANGE);
    ASSERT_EQ(im_json_int64(&doc, 7, &i), IM_OK); /* -0 */
    ASSERT_EQ(i, 0);
    ASSERT_EQ(im_json_uint64(&doc, 7, &u), IM_OK);
    ASSERT_U64_EQ(u, 0);
    ASSERT_EQ(im_json_uint64(&doc, 8, &u), IM_OK);
    ASSERT_U64_EQ(u, 0);
    ASSERT_EQ(im_json_int64(&doc, 9, &i), IM_ERANGE);   /* 1.0 */
    ASSERT_EQ(im_json_uint64(&doc, 10, &u), IM_ERANGE); /* 1e2 */
    ASSERT_EQ(im_json_int64(&doc, 11, &i), IM_OK);
    ASSERT_EQ(i, -1);
    ASSERT_EQ(im_json_uint64(&doc, 11, &u), IM_ERANGE);
    ASSERT_EQ(im_json_int64(&doc, 12, &i), IM_ERANGE);
    ASSERT_EQ(im_json_int64(&doc, 13, &i), IM_EINVAL); /* a string */
    ASSERT_EQ(im_json_uint64(&doc, 14, &u), IM_ERANGE);
    ASSERT_EQ(im_json_int64(&doc, 0, &i), IM_EINVAL); /* the array */
}

TEST(json_duplicate_keys_rejected)
{
    ASSERT_EQ(parse("{\"a\":1,\"a\":2}"), IM_EEXIST);
    ASSERT_EQ(doc.err_off, 7);
    ASSERT_EQ(parse("{\"a\":1,\"b\":{\"c\":[1,2]},\"a\":2}"), IM_EEXIST);
    /* Equal after unescaping, in either position. */
    ASSERT_EQ(parse("{\"a\":1,\"\\u0061\":2}"), IM_EEXIST);
    ASSERT_EQ(parse("{\"\\u0061b\":1,\"a\\u0062\":2}"), IM_EEXIST);
    ASSERT_EQ(parse("{\"\\u00e9\":1,\"\xc3\xa9\":2}"), IM_EEXIST);
    /* Same key in different objects, and prefixes, are fine. */
    ASSERT_EQ(parse("{\"a\":{\"a\":1},\"b\":[{\"a\":1},{\"a\":2}],\"ab\":1,\"\\u0061c\":2}"),
              IM_OK);
    ASSERT_EQ(parse("{\"a\":1,\"a\\u0000\":2}"), IM_OK);
}

/* Every proper prefix of valid documents fails; none crashes. */
TEST(json_truncated_at_every_byte)
{
    static const char *docs[] = {
        "{\"type\":\"msg\",\"id\":\"7291\",\"conv\":\"d:1:2\",\"seq\":5,\"from\":1,"
        "\"to\":{\"group\":9},\"body\":\"h\\u00e9 \\ud83d\\ude00 "
        "\xe2\x82\xac\",\"ts\":1700000000000,"
        "\"x\":[true,false,null,-1.5e+3,{}]}",
        "[1]",
        "\"abc\"",
        "-0.5E-10",
        "true",
    };
    for (size_t d = 0; d < sizeof(docs) / sizeof(docs[0]); d++) {
        size_t len = strlen(docs[d]);
        ASSERT_EQ(parse_n(docs[d], len), IM_OK);
        for (size_t cut = 0; cut < len; cut++) {
            /* A heap copy of exactly cut bytes lets ASan catch a read past the end. */
            char *copy = im_malloc(cut + 1);
            memcpy(copy, docs[d], cut);
            im_err_t err = parse_n(copy, cut);
            im_free(copy);
            /* Some prefixes of a number are numbers ("-0.5E-1"). */
            if (err == IM_OK && d == 3)
                continue;
            ASSERT_LT(err, 0);
            ASSERT_EQ(doc.count, 0);
            ASSERT_LE(doc.err_off, cut);
        }
    }
}

TEST(json_syntax_errors)
{
    /* Lengths come from sizeof so that cases may hold NUL bytes. */
#define CASE(text)                                                                                 \
    {                                                                                              \
        text, sizeof(text) - 1                                                                     \
    }
    static const struct {
        const char *text;
        size_t len;
    } bad[] = {
        CASE(""),
        CASE(" "),
        CASE("\n\t"),
        CASE("{"),
        CASE("}"),
        CASE("["),
        CASE("]"),
        CASE("{]"),
        CASE("[}"),
        CASE("{\"a\"}"),
        CASE("{\"a\":}"),
        CASE("{\"a\" 1}"),
        CASE("{\"a\":1,}"),
        CASE("[1,]"),
        CASE("[,1]"),
        CASE("[1 2]"),
        CASE("{,}"),
        CASE("{1:2}"),
        CASE("{a:1}"),
        CASE("{'a':1}"),
        CASE("['a']"),
        CASE("[1]]"),
        CASE("[1] x"),
        CASE("{} {}"),
        CASE("1 2"),
        CASE("\"a\" \"b\""),
        CASE("[1]\0"),
        CASE("\0"),
        CASE("nul"),
        CASE("nulll"),
        CASE("tru"),
        CASE("True"),
        CASE("TRUE"),
        CASE("fals"),
        CASE("falsey"),
        CASE("NaN"),
        CASE("Infinity"),
        CASE("-Infinity"),
        CASE("undefined"),
        CASE("01"),
        CASE("-01"),
        CASE("00"),
        CASE("1."),
        CASE("-"),
        CASE("+1"),
        CASE(".5"),
        CASE("-.5"),
        CASE("1.e3"),
        CASE("1e"),
        CASE("1e+"),
        CASE("1E-"),
        CASE("0x10"),
        CASE("1.5.2"),
        CASE("1e5e5"),
        CASE("--1"),
        CASE("\"abc"),
        CASE("\"abc\\\""),
        CASE("\"\\"),
        CASE("\"\\x41\""),
        CASE("\"\\u12\""),
        CASE("\"\\u12g4\""),
        CASE("\"\\U0041\""),
        CASE("\"\\'\""),
        CASE("\"tab\there\""),
        CASE("\"nl\nhere\""),
        CASE("\"\x01\""),
        CASE("\"\x1f\""),
        CASE("\"a\0b\""),
        CASE("[\"a\":1]"),
        CASE("{\"a\"::1}"),
        CASE("//\n1"),
        CASE("/*x*/1"),
        CASE("\xef\xbb\xbf{}"),
        CASE("\xc3\xa9"),
        CASE("[\xc3\xa9]"),
        CASE("\x0b 1"),
        CASE("\x0c 1"),
        CASE("\xa0"
             "1"),
    };
#undef CASE
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        im_err_t err = parse_n(bad[i].text, bad[i].len);
        if (err != IM_EPARSE)
            IM__FAIL("case %zu \"%s\": %s", i, bad[i].text, im_errname(err));
    }
}

TEST(json_invalid_utf8_in_strings)
{
    char text[32];

    for (size_t i = 0; i < N_BAD_UTF8; i++) {
        /* Inside a string: in the middle, and running into the closing quote. */
        int n = snprintf(text, sizeof(text), "[\"a%sb\"]", bad_utf8[i]);
        ASSERT_EQ(parse_n(text, (size_t)n), IM_EUTF8);
        n = snprintf(text, sizeof(text), "{\"%s\":1}", bad_utf8[i]);
        ASSERT_EQ(parse_n(text, (size_t)n), IM_EUTF8);
        /* Input ending inside the sequence. */
        n = snprintf(text, sizeof(text), "\"%s", bad_utf8[i]);
        ASSERT_EQ(parse_n(text, (size_t)n), IM_EUTF8);
    }
}

static char *nested(size_t depth, const char *open, const char *close)
{
    char *s = im_malloc(depth * 2 + 1);

    for (size_t i = 0; i < depth; i++) {
        s[i] = open[i % strlen(open)];
        s[2 * depth - 1 - i] = close[i % strlen(close)];
    }
    s[2 * depth] = '\0';
    return s;
}

TEST(json_depth_limit)
{
    char *s = nested(IM_JSON_DEFAULT_DEPTH, "[", "]");
    ASSERT_EQ(parse(s), IM_OK);
    ASSERT_EQ(doc.count, IM_JSON_DEFAULT_DEPTH);
    im_free(s);

    s = nested(IM_JSON_DEFAULT_DEPTH + 1, "[", "]");
    ASSERT_EQ(parse(s), IM_EDEPTH);
    ASSERT_EQ(doc.err_off, IM_JSON_DEFAULT_DEPTH);
    ASSERT_EQ(im_json_parse(&doc, s, strlen(s), toks, NTOK, IM_JSON_DEFAULT_DEPTH + 1), IM_OK);
    ASSERT_EQ(im_json_parse(&doc, s, strlen(s), toks, NTOK, 3), IM_EDEPTH);
    im_free(s);

    ASSERT_EQ(im_json_parse(&doc, "{\"a\":[{}]}", 10, toks, NTOK, 3), IM_OK);
    ASSERT_EQ(im_json_parse(&doc, "{\"a\":[{}]}", 10, toks, NTOK, 2), IM_EDEPTH);
    ASSERT_EQ(im_json_parse(&doc, "1", 1, toks, NTOK, 1), IM_OK);

    /* Hostile nesting, only openers: an error, not a stack overflow. */
    size_t n = 1000000;
    s = im_malloc(n);
    memset(s, '[', n);
    ASSERT_EQ(parse_n(s, n), IM_EDEPTH);
    im_free(s);
}

/* The parser is iterative, so a huge depth limit costs no stack. */
TEST(json_deep_nesting_no_recursion)
{
    size_t depth = 200000;
    im_json_tok_t *big = im_malloc(depth * sizeof(*big));
    char *s = nested(depth, "[", "]");

    ASSERT_EQ(im_json_parse(&doc, s, 2 * depth, big, depth, (unsigned)depth), IM_OK);
    ASSERT_EQ(doc.count, (int)depth);
    ASSERT_EQ(doc.tok[depth - 1].parent, (int)depth - 2);
    ASSERT_EQ(doc.tok[0].next, (int)depth);
    im_free(s);
    im_free(big);
}

TEST(json_token_capacity)
{
    im_json_tok_t few[4];
    im_json_t d;

    ASSERT_EQ(im_json_parse(&d, "[1,2,3]", 7, few, 4, 0), IM_OK);
    ASSERT_EQ(d.count, 4);
    ASSERT_EQ(im_json_parse(&d, "[1,2,3,4]", 9, few, 4, 0), IM_EFULL);
    ASSERT_EQ(d.count, 0);
    ASSERT_EQ(im_json_parse(&d, "{\"a\":1,\"b\":2}", 13, few, 4, 0), IM_EFULL);
    ASSERT_EQ(im_json_parse(&d, "{\"a\":[]}", 8, few, 4, 0), IM_OK);
    ASSERT_EQ(im_json_parse(&d, "1", 1, few, 0, 0), IM_EFULL);
    ASSERT_EQ(im_json_parse(&d, "{}", 2, few, 1, 0), IM_OK);
    /* Every kind of value can be the one that does not fit. */
    ASSERT_EQ(im_json_parse(&d, "[\"a\"]", 5, few, 1, 0), IM_EFULL);
    ASSERT_EQ(im_json_parse(&d, "[[]]", 4, few, 1, 0), IM_EFULL);
    ASSERT_EQ(im_json_parse(&d, "[null]", 6, few, 1, 0), IM_EFULL);
    ASSERT_EQ(im_json_parse(&d, "[-1.5]", 6, few, 1, 0), IM_EFULL);
    /* Offsets are 32-bit: 4 GiB inputs are refused before any byte is read. */
    ASSERT_EQ(im_json_parse(&d, "1", (size_t)UINT32_MAX + 1, few, 4, 0), IM_ERANGE);
    ASSERT_EQ(d.count, 0);

    /* A long array of tiny values against the default array. */
    char big[2 * NTOK + 8];
    size_t n = 0;
    big[n++] = '[';
    for (int i = 0; i < NTOK; i++) {
        big[n++] = '0';
        big[n++] = ',';
    }
    big[n - 1] = ']';
    ASSERT_EQ(parse_n(big, n), IM_EFULL);
}

/* ---- writer ---- */

static char out[2048];
static im_jw_t jw;

/* Finishes jw and checks that the output is exactly expect. */
static void expect_output(const char *expect)
{
    size_t len = 0;
    im_err_t err = im_jw_finish(&jw, &len);

    if (err != IM_OK)
        IM__FAIL("im_jw_finish: %s", im_errname(err));
    if (len != strlen(expect) || memcmp(out, expect, len) != 0)
        IM__FAIL("output \"%.*s\" != \"%s\"", (int)len, out, expect);
}

/* Writes the msg frame of the protocol into jw. */
static void write_msg_frame(im_jw_t *w)
{
    im_jw_obj_begin(w);
    im_jw_key(w, "type");
    im_jw_cstr(w, "msg");
    im_jw_key(w, "id");
    im_jw_cstr(w, "7291");
    im_jw_key(w, "seq");
    im_jw_int64(w, 5);
    im_jw_key(w, "from");
    im_jw_uint64(w, 1);
    im_jw_key(w, "to");
    im_jw_obj_begin(w);
    im_jw_key(w, "group");
    im_jw_uint64(w, 9);
    im_jw_obj_end(w);
    im_jw_key(w, "body");
    im_jw_cstr(w, "hi \"you\"\n");
    im_jw_key(w, "ts");
    im_jw_int64(w, 1700000000000LL);
    im_jw_key(w, "tags");
    im_jw_arr_begin(w);
    im_jw_bool(w, true);
    im_jw_bool(w, false);
    im_jw_null(w);
    im_jw_arr_begin(w);
    im_jw_arr_end(w);
    im_jw_obj_begin(w);
    im_jw_obj_end(w);
    im_jw_arr_end(w);
    im_jw_obj_end(w);
}

static const char msg_frame[] =
    "{\"type\":\"msg\",\"id\":\"7291\",\"seq\":5,\"from\":1,\"to\":{\"group\":9},"
    "\"body\":\"hi \\\"you\\\"\\n\",\"ts\":1700000000000,\"tags\":[true,false,null,[],{}]}";

TEST(jw_frame)
{
    im_jw_init(&jw, out, sizeof(out), 0);
    write_msg_frame(&jw);
    expect_output(msg_frame);
}

TEST(jw_escapes_every_control_char)
{
    char all[32];
    char expect[256];
    size_t n = 0;

    for (int c = 0; c < 32; c++)
        all[c] = (char)c;
    n += (size_t)sprintf(expect + n, "\"");
    for (int c = 0; c < 32; c++) {
        const char *s = c == '\b'   ? "\\b"
                        : c == '\f' ? "\\f"
                        : c == '\n' ? "\\n"
                        : c == '\r' ? "\\r"
                        : c == '\t' ? "\\t"
                                    : NULL;
        if (s)
            n += (size_t)sprintf(expect + n, "%s", s);
        else
            n += (size_t)sprintf(expect + n, "\\u%04x", c);
    }
    sprintf(expect + n, "\"");
    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_str(&jw, all, sizeof(all));
    expect_output(expect);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_cstr(&jw, "q\"b\\s/d\x7f");
    expect_output("\"q\\\"b\\\\s/d\x7f\"");
}

TEST(jw_utf8_passthrough_and_u2028)
{
    const char *s = "h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe2\x80\xa8\xe2\x80\xa9";

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_cstr(&jw, s);
    expect_output("\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe2\x80\xa8\xe2\x80\xa9\"");
    im_jw_init(&jw, out, sizeof(out), IM_JW_ESCAPE_U2028);
    im_jw_cstr(&jw, s);
    expect_output("\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \\u2028\\u2029\"");
}

TEST(jw_rejects_invalid_utf8)
{
    size_t len;

    for (size_t i = 0; i < N_BAD_UTF8; i++) {
        im_jw_init(&jw, out, sizeof(out), 0);
        im_jw_arr_begin(&jw);
        im_jw_cstr(&jw, bad_utf8[i]);
        im_jw_arr_end(&jw);
        ASSERT_EQ(im_jw_finish(&jw, &len), IM_EUTF8);

        im_jw_init(&jw, out, sizeof(out), 0);
        im_jw_obj_begin(&jw);
        im_jw_key(&jw, bad_utf8[i]);
        im_jw_null(&jw);
        im_jw_obj_end(&jw);
        ASSERT_EQ(im_jw_finish(&jw, &len), IM_EUTF8);
    }
    /* A sequence cut by the length argument is truncated, hence invalid. */
    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_str(&jw, "\xe2\x82\xac", 2);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EUTF8);
}

TEST(jw_numbers)
{
    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_arr_begin(&jw);
    im_jw_int64(&jw, INT64_MIN);
    im_jw_int64(&jw, INT64_MAX);
    im_jw_int64(&jw, 0);
    im_jw_int64(&jw, -7);
    im_jw_uint64(&jw, UINT64_MAX);
    im_jw_uint64(&jw, 0);
    im_jw_number(&jw, "-1.25e+300", 10);
    im_jw_number(&jw, "0", 1);
    im_jw_arr_end(&jw);
    expect_output("[-9223372036854775808,9223372036854775807,0,-7,18446744073709551615,0,"
                  "-1.25e+300,0]");

    static const char *bad[] = {"", "01", "1.", ".1", "+1", "1e", "-", "NaN", "1 ", " 1", "1,2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len;
        im_jw_init(&jw, out, sizeof(out), 0);
        im_jw_number(&jw, bad[i], strlen(bad[i]));
        ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);
    }
}

/* Structural misuse is an error that sticks: later calls change nothing. */
TEST(jw_structure_errors)
{
    size_t len;

    im_jw_init(&jw, out, sizeof(out), 0);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL); /* empty */

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_obj_begin(&jw);
    im_jw_cstr(&jw, "value without key");
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);
    size_t at = jw.len;
    im_jw_key(&jw, "k");
    im_jw_cstr(&jw, "v");
    im_jw_obj_end(&jw);
    ASSERT_EQ(jw.len, at);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_arr_begin(&jw);
    im_jw_key(&jw, "k"); /* key in an array */
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_obj_begin(&jw);
    im_jw_key(&jw, "k");
    im_jw_key(&jw, "k2"); /* two keys */
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_obj_begin(&jw);
    im_jw_key(&jw, "k");
    im_jw_obj_end(&jw); /* key without value */
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_obj_begin(&jw);
    im_jw_arr_end(&jw); /* mismatched end */
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_arr_end(&jw); /* end at top level */
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_null(&jw);
    im_jw_null(&jw); /* second top-level value */
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_arr_begin(&jw); /* left open */
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EINVAL);

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_cstr(&jw, "top-level string is fine");
    expect_output("\"top-level string is fine\"");
}

TEST(jw_depth_limit)
{
    size_t len;

    im_jw_init(&jw, out, sizeof(out), 0);
    for (int i = 0; i < IM_JW_MAX_DEPTH; i++)
        im_jw_arr_begin(&jw);
    for (int i = 0; i < IM_JW_MAX_DEPTH; i++)
        im_jw_arr_end(&jw);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_OK);
    ASSERT_EQ(len, 2 * IM_JW_MAX_DEPTH);

    /* Alternating objects and arrays use the whole type bitmap. */
    im_jw_init(&jw, out, sizeof(out), 0);
    for (int i = 0; i < IM_JW_MAX_DEPTH; i++) {
        if (i % 2) {
            im_jw_arr_begin(&jw);
        } else {
            im_jw_obj_begin(&jw);
            im_jw_key(&jw, "");
        }
    }
    for (int i = IM_JW_MAX_DEPTH - 1; i >= 0; i--) {
        if (i % 2)
            im_jw_arr_end(&jw);
        else
            im_jw_obj_end(&jw);
    }
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_OK);

    im_jw_init(&jw, out, sizeof(out), 0);
    for (int i = 0; i <= IM_JW_MAX_DEPTH; i++)
        im_jw_arr_begin(&jw);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_EDEPTH);
}

/* Every buffer size short of the output fails with IM_ERANGE and leaves the
 * bytes past the end alone. */
TEST(jw_overflow_never_writes_past_end)
{
    char buf[sizeof(msg_frame) + 16];
    size_t need = sizeof(msg_frame) - 1, len;

    for (size_t cap = 0; cap <= need; cap++) {
        memset(buf, '#', sizeof(buf));
        im_jw_init(&jw, buf, cap, 0);
        write_msg_frame(&jw);
        im_err_t err = im_jw_finish(&jw, &len);
        ASSERT_EQ(err, cap == need ? IM_OK : IM_ERANGE);
        ASSERT_LE(jw.len, cap);
        for (size_t i = cap; i < sizeof(buf); i++)
            ASSERT_EQ(buf[i], '#');
    }
    /* A NULL buffer of capacity 0 is fine too. */
    im_jw_init(&jw, NULL, 0, 0);
    im_jw_cstr(&jw, "x");
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_ERANGE);
    /* Escapes expand: a string that fits raw may not fit escaped. */
    im_jw_init(&jw, buf, 7, 0);
    im_jw_str(&jw, "\x01", 1);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_ERANGE);
    im_jw_init(&jw, buf, 8, 0);
    im_jw_str(&jw, "\x01", 1);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_OK);
    ASSERT_MEM_EQ(buf, "\"\\u0001\"", 8);
}

/* ---- round trips ---- */

TEST(roundtrip_all_bytes_and_code_points)
{
    char text[1024];
    size_t n = 0;
    char back[1024];
    size_t len = 0;

    for (int c = 0; c < 0x80; c++)
        text[n++] = (char)c;
    const uint32_t cps[] = {0x80,   0xe9,   0x7ff,  0x800,   0x2028,  0x2029,  0xd7ff,
                            0xe000, 0xfffd, 0xffff, 0x10000, 0x1f600, 0x10ffff};
    for (size_t i = 0; i < sizeof(cps) / sizeof(cps[0]); i++)
        n += (size_t)im_utf8_encode(cps[i], text + n);

    for (unsigned flags = 0; flags <= IM_JW_ESCAPE_U2028; flags++) {
        im_jw_init(&jw, out, sizeof(out), flags);
        im_jw_obj_begin(&jw);
        im_jw_keyn(&jw, text, n);
        im_jw_str(&jw, text, n);
        im_jw_obj_end(&jw);
        size_t olen = 0;
        ASSERT_EQ(im_jw_finish(&jw, &olen), IM_OK);
        ASSERT_TRUE(im_utf8_valid(out, olen));
        ASSERT_EQ(parse_n(out, olen), IM_OK);
        ASSERT_EQ(doc.count, 3);
        ASSERT_EQ(im_json_str(&doc, 1, back, sizeof(back), &len), IM_OK);
        ASSERT_EQ(len, n);
        ASSERT_MEM_EQ(back, text, n);
        ASSERT_EQ(im_json_str(&doc, 2, back, sizeof(back), &len), IM_OK);
        ASSERT_EQ(len, n);
        ASSERT_MEM_EQ(back, text, n);
    }
}

TEST(roundtrip_frame)
{
    size_t len;
    int64_t ts;
    uint64_t g;
    bool b;

    im_jw_init(&jw, out, sizeof(out), 0);
    write_msg_frame(&jw);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_OK);
    ASSERT_EQ(parse_n(out, len), IM_OK);
    ASSERT_TRUE(im_json_str_eq(&doc, im_json_find(&doc, 0, "type"), "msg"));
    ASSERT_TRUE(im_json_str_eq(&doc, im_json_find(&doc, 0, "body"), "hi \"you\"\n"));
    ASSERT_EQ(im_json_int64(&doc, im_json_find(&doc, 0, "ts"), &ts), IM_OK);
    ASSERT_EQ(ts, 1700000000000LL);
    ASSERT_EQ(im_json_uint64(&doc, im_json_find(&doc, im_json_find(&doc, 0, "to"), "group"), &g),
              IM_OK);
    ASSERT_U64_EQ(g, 9);
    int tags = im_json_find(&doc, 0, "tags");
    ASSERT_EQ(doc.tok[tags].size, 5);
    ASSERT_EQ(im_json_bool(&doc, im_json_first(&doc, tags), &b), IM_OK);
    ASSERT_TRUE(b);
}

TEST(roundtrip_integers)
{
    const int64_t vals[] = {0,         1,         -1,           9, 10, -10, 1700000000000LL,
                            INT64_MAX, INT64_MIN, INT64_MIN + 1};
    size_t len;

    im_jw_init(&jw, out, sizeof(out), 0);
    im_jw_arr_begin(&jw);
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
        im_jw_int64(&jw, vals[i]);
    im_jw_uint64(&jw, UINT64_MAX);
    im_jw_arr_end(&jw);
    ASSERT_EQ(im_jw_finish(&jw, &len), IM_OK);
    ASSERT_EQ(parse_n(out, len), IM_OK);
    int k = im_json_first(&doc, 0);
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++, k = im_json_next(&doc, k)) {
        int64_t v;
        ASSERT_EQ(im_json_int64(&doc, k, &v), IM_OK);
        ASSERT_EQ(v, vals[i]);
    }
    uint64_t u;
    ASSERT_EQ(im_json_uint64(&doc, k, &u), IM_OK);
    ASSERT_U64_EQ(u, UINT64_MAX);
    ASSERT_EQ(im_json_next(&doc, k), IM_ENOENT);
}

int main(void)
{
    RUN(utf8_valid_text);
    RUN(utf8_invalid_text);
    RUN(utf8_ascii_fast_path_every_offset);
    RUN(utf8_decode_results);
    RUN(utf8_encode_decode_every_code_point);
    RUN(utf8_decode_agrees_with_encode);
    RUN(json_send_frame);
    RUN(json_msg_frame);
    RUN(json_token_layout);
    RUN(json_top_level_scalars);
    RUN(json_string_escapes_decode);
    RUN(json_lone_surrogates_rejected);
    RUN(json_str_copy_bounds);
    RUN(json_embedded_nul);
    RUN(json_integers);
    RUN(json_duplicate_keys_rejected);
    RUN(json_truncated_at_every_byte);
    RUN(json_syntax_errors);
    RUN(json_invalid_utf8_in_strings);
    RUN(json_depth_limit);
    RUN(json_deep_nesting_no_recursion);
    RUN(json_token_capacity);
    RUN(jw_frame);
    RUN(jw_escapes_every_control_char);
    RUN(jw_utf8_passthrough_and_u2028);
    RUN(jw_rejects_invalid_utf8);
    RUN(jw_numbers);
    RUN(jw_structure_errors);
    RUN(jw_depth_limit);
    RUN(jw_overflow_never_writes_past_end);
    RUN(roundtrip_all_bytes_and_code_points);
    RUN(roundtrip_frame);
    RUN(roundtrip_integers);
    return im_test_done();
}
