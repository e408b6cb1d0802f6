/*
 * fuzz_json.c - libFuzzer target for im_json and im_utf8.
 *
 * Feeds the input to the tokenizer and checks, for every input:
 *   - im_utf8_valid agrees with decoding the input one code point at a time;
 *   - a failed parse leaves no tokens and an error offset inside the input;
 * and for every input that parses:
 *   - the token tree is consistent (offsets, next/parent links, sizes), and
 *     every accessor agrees with it;
 *   - fewer tokens or a lower depth limit fail with IM_EFULL / IM_EDEPTH;
 *   - re-encoding with im_jw gives valid UTF-8 that parses to the same
 *     structure and values, and re-encoding that gives the same bytes;
 *   - encoding into a buffer one byte too small fails with IM_ERANGE without
 *     writing past it (the buffer is a heap block of exactly that size).
 * A broken check calls abort() so libFuzzer records the input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_json.h"
#include "im_utf8.h"

#define MAX_TOK 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static im_json_tok_t toks[MAX_TOK], toks2[MAX_TOK];

/* Scratch for unescaped strings: at most as long as the input. */
static char *scratch;
static size_t scratch_cap;

static void reserve_scratch(size_t size)
{
    if (size + 1 <= scratch_cap)
        return;
    free(scratch);
    scratch_cap = size + 1;
    scratch = malloc(scratch_cap);
    CHECK(scratch != NULL);
}

static bool utf8_valid_slow(const char *s, size_t len)
{
    uint32_t cp;

    for (size_t i = 0; i < len;) {
        int n = im_utf8_decode(s + i, len - i, &cp);
        if (n < 0)
            return false;
        CHECK(n <= IM_UTF8_MAX);
        i += (size_t)n;
    }
    return true;
}

/* Copies string t into scratch; returns its length. */
static size_t copy_str(const im_json_t *doc, int t)
{
    size_t len = 0, len2 = 0;

    CHECK(im_json_str(doc, t, NULL, 0, &len) == IM_ERANGE);
    CHECK(im_json_str(doc, t, scratch, len, &len2) == IM_ERANGE);
    CHECK(len2 == len);
    CHECK(len == 0 || scratch[0] == '\0');
    CHECK(im_json_str(doc, t, scratch, scratch_cap, &len2) == IM_OK);
    CHECK(len2 == len && scratch[len] == '\0');
    return len;
}

static void check_string(const im_json_t *doc, int t)
{
    size_t len = copy_str(doc, t);

    CHECK(im_utf8_valid(scratch, len));
    if (!(doc->tok[t].flags & IM_JSON_F_ESC))
        CHECK(len == doc->tok[t].end - doc->tok[t].start);
    if (strlen(scratch) == len) {
        CHECK(im_json_str_eq(doc, t, scratch));
        if (len > 0) {
            scratch[len - 1] ^= 1;
            CHECK(!im_json_str_eq(doc, t, scratch));
            scratch[len - 1] = '\0';
            CHECK(!im_json_str_eq(doc, t, scratch));
        }
    }
    int64_t i;
    CHECK(im_json_int64(doc, t, &i) == IM_EINVAL);
}

static void check_number(const im_json_t *doc, int t)
{
    int64_t i;
    uint64_t u;
    im_err_t ei = im_json_int64(doc, t, &i), eu = im_json_uint64(doc, t, &u);

    if (!(doc->tok[t].flags & IM_JSON_F_INT)) {
        CHECK(ei == IM_ERANGE && eu == IM_ERANGE);
        return;
    }
    CHECK(ei == IM_OK || ei == IM_ERANGE);
    CHECK(eu == IM_OK || eu == IM_ERANGE);
    CHECK(ei == IM_OK || eu == IM_OK || doc->tok[t].end - doc->tok[t].start >= 20);
    if (ei == IM_OK && i >= 0)
        CHECK(eu == IM_OK && u == (uint64_t)i);
    if (eu == IM_OK && u <= INT64_MAX)
        CHECK(ei == IM_OK && (uint64_t)i == u);
}

static void check_container(const im_json_t *doc, int t)
{
    const im_json_tok_t *c = &doc->tok[t];
    bool object = c->type == IM_JSON_OBJECT;
    int n = 0, k;

    for (k = im_json_first(doc, t); k >= 0; k = im_json_next(doc, k)) {
        CHECK(k > t && k < c->next);
        CHECK(doc->tok[k].parent == t);
        n++;
        if (!object)
            continue;
        CHECK(doc->tok[k].flags & IM_JSON_F_KEY);
        CHECK(doc->tok[k + 1].parent == t);
        CHECK(im_json_next(doc, k + 1) == IM_EINVAL);
        size_t len = copy_str(doc, k);
        if (strlen(scratch) == len)
            CHECK(im_json_find(doc, t, scratch) == k + 1);
    }
    CHECK(k == IM_ENOENT);
    CHECK(n == c->size);
    CHECK(im_json_find(doc, t, "\xff") == (object ? IM_ENOENT : IM_EINVAL));
}

/* Checks every token and returns the deepest container nesting. */
static unsigned check_tokens(const im_json_t *doc, size_t size)
{
    unsigned max_depth = 0;

    CHECK(doc->count > 0 && doc->tok[0].parent == -1 && doc->tok[0].next == doc->count);
    for (int t = 0; t < doc->count; t++) {
        const im_json_tok_t *k = &doc->tok[t];
        CHECK(k->start <= k->end && k->end <= size);
        CHECK(k->next > t && k->next <= doc->count);
        CHECK(k->parent < t);
        CHECK(im_json_type(doc, t) == k->type);
        unsigned depth = 0;
        for (int p = k->parent; p >= 0; p = doc->tok[p].parent)
            depth++;
        switch (k->type) {
        case IM_JSON_OBJECT:
        case IM_JSON_ARRAY:
            check_container(doc, t);
            if (depth + 1 > max_depth)
                max_depth = depth + 1;
            break;
        case IM_JSON_STRING:
            check_string(doc, t);
            break;
        case IM_JSON_NUMBER:
            check_number(doc, t);
            break;
        case IM_JSON_BOOL: {
            bool b;
            CHECK(im_json_bool(doc, t, &b) == IM_OK);
            CHECK(b == (doc->js[k->start] == 't'));
            break;
        }
        default:
            CHECK(k->type == IM_JSON_NULL && k->end - k->start == 4);
        }
        if (k->type != IM_JSON_OBJECT && k->type != IM_JSON_ARRAY)
            CHECK(k->next == t + 1 && im_json_first(doc, t) == IM_EINVAL);
    }
    CHECK(im_json_type(doc, doc->count) == IM_JSON_NONE);
    return max_depth;
}

/* Writes value t of doc with w; returns the index after it. */
static int encode(im_jw_t *w, const im_json_t *doc, int t)
{
    const im_json_tok_t *k = &doc->tok[t];
    int64_t i;
    uint64_t u;
    size_t len;

    switch (k->type) {
    case IM_JSON_OBJECT:
        im_jw_obj_begin(w);
        for (int c = im_json_first(doc, t); c >= 0; c = im_json_next(doc, c)) {
            len = copy_str(doc, c);
            im_jw_keyn(w, scratch, len);
            encode(w, doc, c + 1);
        }
        im_jw_obj_end(w);
        break;
    case IM_JSON_ARRAY:
        im_jw_arr_begin(w);
        for (int c = im_json_first(doc, t); c >= 0; c = im_json_next(doc, c))
            encode(w, doc, c);
        im_jw_arr_end(w);
        break;
    case IM_JSON_STRING:
        len = copy_str(doc, t);
        im_jw_str(w, scratch, len);
        break;
    case IM_JSON_NUMBER:
        if (im_json_int64(doc, t, &i) == IM_OK)
            im_jw_int64(w, i);
        else if (im_json_uint64(doc, t, &u) == IM_OK)
            im_jw_uint64(w, u);
        else
            im_jw_number(w, doc->js + k->start, k->end - k->start);
        break;
    case IM_JSON_BOOL:
        im_jw_bool(w, doc->js[k->start] == 't');
        break;
    default:
        im_jw_null(w);
    }
    return k->next;
}

/* Encodes doc into a fresh heap block of cap bytes; returns it (caller
 * frees) with the writer's result in *err and the length in *len. */
static char *encode_doc(const im_json_t *doc, size_t cap, unsigned flags, im_err_t *err,
                        size_t *len)
{
    char *buf = malloc(cap ? cap : 1);
    im_jw_t w;

    CHECK(buf != NULL);
    im_jw_init(&w, buf, cap, flags);
    encode(&w, doc, 0);
    *err = im_jw_finish(&w, len);
    return buf;
}

/* Same tree, same values: strings by unescaped bytes, numbers by value. */
static void check_same(const im_json_t *a, const im_json_t *b)
{
    CHECK(a->count == b->count);
    for (int t = 0; t < a->count; t++) {
        const im_json_tok_t *x = &a->tok[t], *y = &b->tok[t];
        CHECK(x->type == y->type && x->size == y->size);
        CHECK(x->parent == y->parent && x->next == y->next);
        CHECK((x->flags & (IM_JSON_F_KEY | IM_JSON_F_INT)) ==
              (y->flags & (IM_JSON_F_KEY | IM_JSON_F_INT)));
        if (x->type == IM_JSON_STRING) {
            size_t len = copy_str(a, t);
            char *s = malloc(len + 1);
            CHECK(s != NULL);
            memcpy(s, scratch, len + 1);
            CHECK(copy_str(b, t) == len && memcmp(s, scratch, len) == 0);
            free(s);
        } else if (x->type == IM_JSON_NUMBER) {
            int64_t i, j;
            uint64_t u, v;
            if (im_json_int64(a, t, &i) == IM_OK)
                CHECK(im_json_int64(b, t, &j) == IM_OK && i == j);
            else if (im_json_uint64(a, t, &u) == IM_OK)
                CHECK(im_json_uint64(b, t, &v) == IM_OK && u == v);
            else
                CHECK(x->end - x->start == y->end - y->start &&
                      memcmp(a->js + x->start, b->js + y->start, x->end - x->start) == 0);
        } else if (x->type == IM_JSON_BOOL) {
            CHECK(a->js[x->start] == b->js[y->start]);
        }
    }
}

static void check_reencode(const im_json_t *doc, size_t size, unsigned flags)
{
    /* Escaping at most doubles a string (U+2028: 3 bytes to 6); structure
     * and numbers only shrink. */
    size_t cap = 2 * size + 2, len, len2;
    im_err_t err;
    im_json_t doc2;

    char *out = encode_doc(doc, cap, flags, &err, &len);
    CHECK(err == IM_OK);
    CHECK(im_utf8_valid(out, len));
    CHECK(im_json_parse(&doc2, out, len, toks2, MAX_TOK, 0) == IM_OK);
    check_same(doc, &doc2);

    char *again = encode_doc(&doc2, len, flags, &err, &len2);
    CHECK(err == IM_OK && len2 == len && memcmp(out, again, len) == 0);
    free(again);

    char *small = encode_doc(doc, len - 1, flags, &err, &len2);
    CHECK(err == IM_ERANGE);
    free(small);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *js = (const char *)data;
    im_json_t doc;

    CHECK(im_utf8_valid(js, size) == utf8_valid_slow(js, size));

    im_err_t err = im_json_parse(&doc, js, size, toks, MAX_TOK, 0);
    if (err != IM_OK) {
        CHECK(err < 0 && doc.count == 0 && doc.err_off <= size);
        return 0;
    }
    reserve_scratch(size);
    unsigned depth = check_tokens(&doc, size);

    im_json_t probe;
    CHECK(im_json_parse(&probe, js, size, toks2, (size_t)doc.count - 1, 0) == IM_EFULL);
    if (depth > 1)
        CHECK(im_json_parse(&probe, js, size, toks2, MAX_TOK, depth - 1) == IM_EDEPTH);

    check_reencode(&doc, size, size % 2 ? IM_JW_ESCAPE_U2028 : 0);
    return 0;
}
