#include "im_json.h"

#include <limits.h>
#include <string.h>

#include "im_utf8.h"

/* A byte that stands for itself inside a JSON string, both when parsing and
 * when writing: printable ASCII other than the quote and the backslash. */
static bool is_plain(unsigned c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

static bool is_digit(unsigned c)
{
    return c - '0' < 10u;
}

static int hex_digit(unsigned c)
{
    if (is_digit(c))
        return (int)(c - '0');
    c |= 0x20;
    return c - 'a' < 6u ? (int)(c - 'a' + 10) : -1;
}

/* The value of four hex digits at h, or -1 if one is not a hex digit. */
static int hex4(const char *h)
{
    int v = 0;

    for (int i = 0; i < 4; i++) {
        int d = hex_digit((unsigned char)h[i]);
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

static size_t scan_digits(const unsigned char *s, size_t i, size_t len)
{
    while (i < len && is_digit(s[i]))
        i++;
    return i;
}

/* Length of the JSON number at the start of s[0..len), or 0 if s does not
 * start with one.  A malformed tail ("1.", "1e+") makes the whole number
 * invalid rather than a shorter one.  *is_int: no fraction or exponent. */
static size_t scan_number(const unsigned char *s, size_t len, bool *is_int)
{
    size_t i = 0, j;

    if (i < len && s[i] == '-')
        i++;
    if (i == len || !is_digit(s[i]))
        return 0;
    i = s[i] == '0' ? i + 1 : scan_digits(s, i, len);
    *is_int = true;
    if (i < len && s[i] == '.') {
        j = scan_digits(s, i + 1, len);
        if (j == i + 1)
            return 0;
        i = j;
        *is_int = false;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        j = scan_digits(s, i, len);
        if (j == i)
            return 0;
        i = j;
        *is_int = false;
    }
    return i;
}

/* Checks the escape sequence at e[0] == '\\' with avail bytes available.
 * Returns its length (2, 6, or 12 for a surrogate pair) or an error. */
static int scan_escape(const char *e, size_t avail)
{
    if (avail < 2)
        return IM_EPARSE;
    switch (e[1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        return 2;
    case 'u':
        break;
    default:
        return IM_EPARSE;
    }
    int hi = avail >= 6 ? hex4(e + 2) : -1;
    if (hi < 0)
        return IM_EPARSE;
    if (hi < 0xD800 || hi > 0xDFFF)
        return 6;
    if (hi > 0xDBFF)
        return IM_EUTF8; /* a low surrogate with no high one before it */
    int lo = avail >= 12 && e[6] == '\\' && e[7] == 'u' ? hex4(e + 8) : -1;
    if (lo < 0xDC00 || lo > 0xDFFF)
        return IM_EUTF8;
    return 12;
}

static char unescape_simple(char c)
{
    switch (c) {
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return c; /* '"', '\\', '/' */
    }
}

/* Decodes an escape that scan_escape accepted into out (IM_UTF8_MAX bytes).
 * Returns the number of bytes written; *adv gets the escape's length. */
static int unescape(const char *e, char *out, int *adv)
{
    if (e[1] != 'u') {
        out[0] = unescape_simple(e[1]);
        *adv = 2;
        return 1;
    }
    uint32_t cp = (uint32_t)hex4(e + 2);
    *adv = 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)hex4(e + 8) - 0xDC00);
        *adv = 12;
    }
    return im_utf8_encode(cp, out);
}

/* Walks the contents of a string as chunks: runs of bytes that stand for
 * themselves and decoded escapes.  Copying and comparing work chunk by chunk,
 * so a string without escapes is a single memcpy or memcmp. */
typedef struct chunkit_s {
    const char *p, *end;
    bool escaped; /* p..end is JSON string text, not plain bytes */
    char esc[IM_UTF8_MAX];
} chunkit_t;

static void chunkit_init(chunkit_t *it, const char *s, size_t len, bool escaped)
{
    it->p = s;
    it->end = s + len;
    it->escaped = escaped;
}

/* The next chunk: sets *data and returns its length, 0 at the end.  Every
 * escape decodes to at least one byte, so 0 means the end. */
static size_t chunk_next(chunkit_t *it, const char **data)
{
    size_t left = (size_t)(it->end - it->p);
    int adv;

    if (left == 0)
        return 0;
    if (!it->escaped || *it->p != '\\') {
        const char *bs = it->escaped ? memchr(it->p, '\\', left) : NULL;
        size_t n = bs ? (size_t)(bs - it->p) : left;
        *data = it->p;
        it->p += n;
        return n;
    }
    int n = unescape(it->p, it->esc, &adv);
    it->p += adv;
    *data = it->esc;
    return (size_t)n;
}

static bool chunks_equal(chunkit_t *a, chunkit_t *b)
{
    const char *da = NULL, *db = NULL;
    size_t na = 0, nb = 0;

    for (;;) {
        if (na == 0)
            na = chunk_next(a, &da);
        if (nb == 0)
            nb = chunk_next(b, &db);
        if (na == 0 || nb == 0)
            return na == nb;
        size_t n = na < nb ? na : nb;
        if (memcmp(da, db, n) != 0)
            return false;
        da += n;
        db += n;
        na -= n;
        nb -= n;
    }
}

/* Compares two texts, each either JSON string contents (escaped) or plain
 * bytes, by their unescaped bytes.  Without escapes that is a memcmp. */
static bool text_equal(const char *x, size_t xlen, bool xesc, const char *y, size_t ylen, bool yesc)
{
    chunkit_t a, b;

    if (!xesc && !yesc)
        return xlen == ylen && memcmp(x, y, xlen) == 0;
    chunkit_init(&a, x, xlen, xesc);
    chunkit_init(&b, y, ylen, yesc);
    return chunks_equal(&a, &b);
}

static bool tok_equal(const char *js, const im_json_tok_t *a, const im_json_tok_t *b)
{
    return text_equal(js + a->start, a->end - a->start, a->flags & IM_JSON_F_ESC, js + b->start,
                      b->end - b->start, b->flags & IM_JSON_F_ESC);
}

/* ---- parser ---- */

/* What one parsing step leaves the driver loop in parse_doc to do next. */
enum { VALUE_DONE, NEED_VALUE, DOC_DONE };

typedef struct parser_s {
    const char *js;
    uint32_t len;
    uint32_t pos;
    im_json_tok_t *tok;
    int cap;
    int count;
    int cur; /* innermost open container, -1 at the top level */
    unsigned depth;
    unsigned max_depth;
} parser_t;

/* The next byte that is not JSON whitespace, -1 at the end; not consumed. */
static int peek(parser_t *p)
{
    while (p->pos < p->len) {
        unsigned char c = (unsigned char)p->js[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return c;
        p->pos++;
    }
    return -1;
}

/* A new token starting at p->pos, counted in its container's size if it is an
 * array element or an object key.  Returns its index or IM_EFULL. */
static int new_tok(parser_t *p, im_json_type_t type, uint8_t flags)
{
    if (p->count == p->cap)
        return IM_EFULL;
    int t = p->count++;
    im_json_tok_t *k = &p->tok[t];
    k->type = (uint8_t)type;
    k->flags = flags;
    k->start = k->end = p->pos;
    k->size = 0;
    k->parent = p->cur;
    k->next = t + 1;
    if (p->cur >= 0 && (p->tok[p->cur].type == IM_JSON_ARRAY || (flags & IM_JSON_F_KEY)))
        p->tok[p->cur].size++;
    return t;
}

static im_err_t open_container(parser_t *p, im_json_type_t type)
{
    if (p->depth == p->max_depth)
        return IM_EDEPTH;
    int t = new_tok(p, type, 0);
    if (t < 0)
        return t;
    p->cur = t;
    p->depth++;
    p->pos++;
    return IM_OK;
}

static void close_container(parser_t *p)
{
    im_json_tok_t *k = &p->tok[p->cur];

    p->pos++;
    k->end = p->pos;
    k->next = p->count;
    p->cur = k->parent;
    p->depth--;
}

/* Scans the contents of string k, p->pos just past its opening quote. */
static im_err_t scan_string(parser_t *p, im_json_tok_t *k)
{
    const unsigned char *s = (const unsigned char *)p->js;
    uint32_t i = p->pos;
    uint32_t cp;
    int n;

    for (;;) {
        while (i < p->len && is_plain(s[i]))
            i++;
        p->pos = i;
        if (i == p->len)
            return IM_EPARSE;
        if (s[i] == '"')
            break;
        if (s[i] == '\\') {
            n = scan_escape(p->js + i, p->len - i);
            k->flags |= IM_JSON_F_ESC;
        } else if (s[i] < 0x20) {
            n = IM_EPARSE;
        } else {
            n = im_utf8_decode(p->js + i, p->len - i, &cp);
            if (n == IM_EAGAIN)
                n = IM_EUTF8; /* the input ends inside a sequence */
        }
        if (n < 0)
            return n;
        i += (uint32_t)n;
    }
    k->end = i;
    p->pos = i + 1;
    return IM_OK;
}

static int parse_string(parser_t *p, uint8_t flags)
{
    p->pos++;
    int t = new_tok(p, IM_JSON_STRING, flags);
    if (t < 0)
        return t;
    im_err_t err = scan_string(p, &p->tok[t]);
    return err < 0 ? err : VALUE_DONE;
}

static int parse_number(parser_t *p)
{
    bool is_int;
    size_t n = scan_number((const unsigned char *)p->js + p->pos, p->len - p->pos, &is_int);

    if (n == 0)
        return IM_EPARSE;
    int t = new_tok(p, IM_JSON_NUMBER, is_int ? IM_JSON_F_INT : 0);
    if (t < 0)
        return t;
    p->pos += (uint32_t)n;
    p->tok[t].end = p->pos;
    return VALUE_DONE;
}

static int parse_literal(parser_t *p, const char *word, im_json_type_t type)
{
    size_t n = strlen(word);

    if (p->len - p->pos < n || memcmp(p->js + p->pos, word, n) != 0)
        return IM_EPARSE;
    int t = new_tok(p, type, 0);
    if (t < 0)
        return t;
    p->pos += (uint32_t)n;
    p->tok[t].end = p->pos;
    return VALUE_DONE;
}

/* Rejects key k if an earlier key of the same object is equal to it.  Earlier
 * members are complete, so their values' next fields are final. */
static im_err_t check_duplicate(parser_t *p, int k)
{
    for (int j = p->cur + 1; j < k; j = p->tok[j + 1].next) {
        if (tok_equal(p->js, &p->tok[j], &p->tok[k])) {
            p->pos = p->tok[k].start - 1;
            return IM_EEXIST;
        }
    }
    return IM_OK;
}

/* An object key and the colon after it. */
static im_err_t parse_key(parser_t *p)
{
    if (peek(p) != '"')
        return IM_EPARSE;
    int err = parse_string(p, IM_JSON_F_KEY);
    if (err < 0)
        return err;
    err = check_duplicate(p, p->count - 1);
    if (err < 0)
        return err;
    if (peek(p) != ':')
        return IM_EPARSE;
    p->pos++;
    return IM_OK;
}

static int open_object(parser_t *p)
{
    im_err_t err = open_container(p, IM_JSON_OBJECT);

    if (err < 0)
        return err;
    if (peek(p) == '}') {
        close_container(p);
        return VALUE_DONE;
    }
    err = parse_key(p);
    return err < 0 ? err : NEED_VALUE;
}

static int open_array(parser_t *p)
{
    im_err_t err = open_container(p, IM_JSON_ARRAY);

    if (err < 0)
        return err;
    if (peek(p) == ']') {
        close_container(p);
        return VALUE_DONE;
    }
    return NEED_VALUE;
}

/* One value, or the opening of a container and what must precede its first
 * value (a key).  Returns VALUE_DONE, NEED_VALUE or an error. */
static int parse_value(parser_t *p)
{
    switch (peek(p)) {
    case '{':
        return open_object(p);
    case '[':
        return open_array(p);
    case '"':
        return parse_string(p, 0);
    case 't':
        return parse_literal(p, "true", IM_JSON_BOOL);
    case 'f':
        return parse_literal(p, "false", IM_JSON_BOOL);
    case 'n':
        return parse_literal(p, "null", IM_JSON_NULL);
    default:
        return parse_number(p);
    }
}

/* After a complete value: closes the containers that end here, then consumes
 * the comma (and key) before the next value.  Returns NEED_VALUE, DOC_DONE
 * or an error. */
static int after_value(parser_t *p)
{
    while (p->cur >= 0) {
        int c = peek(p);
        bool in_object = p->tok[p->cur].type == IM_JSON_OBJECT;
        if (c == ',') {
            p->pos++;
            if (!in_object)
                return NEED_VALUE;
            im_err_t err = parse_key(p);
            return err < 0 ? err : NEED_VALUE;
        }
        if (c != (in_object ? '}' : ']'))
            return IM_EPARSE;
        close_container(p);
    }
    return peek(p) < 0 ? DOC_DONE : IM_EPARSE;
}

/* The containers being parsed are tracked through the tokens' parent links,
 * not a recursion, so nesting costs no stack and max_depth is only a policy. */
static im_err_t parse_doc(parser_t *p)
{
    for (;;) {
        int r = parse_value(p);
        if (r == VALUE_DONE)
            r = after_value(p);
        if (r < 0)
            return r;
        if (r == DOC_DONE)
            return IM_OK;
    }
}

im_err_t im_json_parse(im_json_t *doc, const char *js, size_t len, im_json_tok_t *tok, size_t ntok,
                       unsigned max_depth)
{
    parser_t p = {
        .js = js,
        .len = (uint32_t)len,
        .tok = tok,
        .cap = ntok > INT_MAX ? INT_MAX : (int)ntok,
        .cur = -1,
        .max_depth = max_depth ? max_depth : IM_JSON_DEFAULT_DEPTH,
    };

    doc->js = js;
    doc->tok = tok;
    doc->count = 0;
    doc->err_off = 0;
    if (len > UINT32_MAX)
        return IM_ERANGE;
    im_err_t err = parse_doc(&p);
    if (err < 0) {
        doc->err_off = p.pos;
        return err;
    }
    doc->count = p.count;
    return IM_OK;
}

/* ---- accessors ---- */

/* Checks t for an accessor that needs a token of type (IM_JSON_NONE: any). */
static im_err_t want(const im_json_t *doc, int t, im_json_type_t type)
{
    if (t < 0)
        return t;
    if (t >= doc->count || (type != IM_JSON_NONE && doc->tok[t].type != type))
        return IM_EINVAL;
    return IM_OK;
}

im_json_type_t im_json_type(const im_json_t *doc, int t)
{
    return want(doc, t, IM_JSON_NONE) == IM_OK ? (im_json_type_t)doc->tok[t].type : IM_JSON_NONE;
}

int im_json_first(const im_json_t *doc, int t)
{
    im_err_t err = want(doc, t, IM_JSON_NONE);

    if (err < 0)
        return err;
    if (doc->tok[t].type != IM_JSON_OBJECT && doc->tok[t].type != IM_JSON_ARRAY)
        return IM_EINVAL;
    return doc->tok[t].size > 0 ? t + 1 : IM_ENOENT;
}

int im_json_next(const im_json_t *doc, int t)
{
    im_err_t err = want(doc, t, IM_JSON_NONE);

    if (err < 0)
        return err;
    const im_json_tok_t *k = &doc->tok[t];
    if (k->parent < 0)
        return IM_ENOENT;
    bool is_key = k->flags & IM_JSON_F_KEY;
    if (doc->tok[k->parent].type == IM_JSON_OBJECT && !is_key)
        return IM_EINVAL;
    int n = is_key ? doc->tok[t + 1].next : k->next;
    return n < doc->tok[k->parent].next ? n : IM_ENOENT;
}

bool im_json_str_eq(const im_json_t *doc, int t, const char *s)
{
    if (want(doc, t, IM_JSON_STRING) < 0)
        return false;
    const im_json_tok_t *k = &doc->tok[t];
    return text_equal(doc->js + k->start, k->end - k->start, k->flags & IM_JSON_F_ESC, s, strlen(s),
                      false);
}

int im_json_find(const im_json_t *doc, int obj, const char *key)
{
    im_err_t err = want(doc, obj, IM_JSON_OBJECT);

    if (err < 0)
        return err;
    for (int k = im_json_first(doc, obj); k >= 0; k = im_json_next(doc, k)) {
        if (im_json_str_eq(doc, k, key))
            return k + 1;
    }
    return IM_ENOENT;
}

im_err_t im_json_str(const im_json_t *doc, int t, char *buf, size_t cap, size_t *len)
{
    im_err_t err = want(doc, t, IM_JSON_STRING);
    chunkit_t it;
    const char *data;
    size_t n = 0, chunk;

    if (err < 0)
        return err;
    const im_json_tok_t *k = &doc->tok[t];
    chunkit_init(&it, doc->js + k->start, k->end - k->start, k->flags & IM_JSON_F_ESC);
    /* Count on past the end of buf so the caller learns the size needed. */
    while ((chunk = chunk_next(&it, &data)) > 0) {
        if (n + chunk < cap)
            memcpy(buf + n, data, chunk);
        n += chunk;
    }
    if (len)
        *len = n;
    if (n >= cap) {
        if (cap > 0)
            buf[0] = '\0';
        return IM_ERANGE;
    }
    buf[n] = '\0';
    return IM_OK;
}

/* The sign and magnitude of integer token t. */
static im_err_t read_integer(const im_json_t *doc, int t, bool *neg, uint64_t *mag)
{
    im_err_t err = want(doc, t, IM_JSON_NUMBER);

    if (err < 0)
        return err;
    const im_json_tok_t *k = &doc->tok[t];
    if (!(k->flags & IM_JSON_F_INT))
        return IM_ERANGE;
    const char *s = doc->js + k->start, *end = doc->js + k->end;
    uint64_t v = 0;
    *neg = *s == '-';
    for (s += *neg; s < end; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return IM_ERANGE;
        v = v * 10 + d;
    }
    *mag = v;
    return IM_OK;
}

im_err_t im_json_int64(const im_json_t *doc, int t, int64_t *out)
{
    bool neg;
    uint64_t mag;
    im_err_t err = read_integer(doc, t, &neg, &mag);

    if (err < 0)
        return err;
    if (mag > (uint64_t)INT64_MAX + neg)
        return IM_ERANGE;
    /* -(mag - 1) - 1 reaches INT64_MIN without overflowing. */
    *out = !neg ? (int64_t)mag : mag == 0 ? 0 : -(int64_t)(mag - 1) - 1;
    return IM_OK;
}

im_err_t im_json_uint64(const im_json_t *doc, int t, uint64_t *out)
{
    bool neg;
    uint64_t mag;
    im_err_t err = read_integer(doc, t, &neg, &mag);

    if (err < 0)
        return err;
    if (neg && mag != 0)
        return IM_ERANGE;
    *out = mag;
    return IM_OK;
}

im_err_t im_json_bool(const im_json_t *doc, int t, bool *out)
{
    im_err_t err = want(doc, t, IM_JSON_BOOL);

    if (err < 0)
        return err;
    *out = doc->js[doc->tok[t].start] == 't';
    return IM_OK;
}

/* ---- writer ---- */

void im_jw_init(im_jw_t *w, char *buf, size_t cap, unsigned flags)
{
    *w = (im_jw_t){.buf = buf, .cap = cap, .flags = flags};
}

/* Keeps err unless an earlier error is kept; returns false so that checks
 * can `return fail(...)`. */
static bool fail(im_jw_t *w, im_err_t err)
{
    if (w->err == IM_OK)
        w->err = err;
    return false;
}

static void put(im_jw_t *w, const char *s, size_t n)
{
    if (w->err || n == 0)
        return;
    if (n > w->cap - w->len) {
        fail(w, IM_ERANGE);
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static bool in_object(const im_jw_t *w)
{
    return w->depth > 0 && (w->objects >> (w->depth - 1) & 1);
}

/* Checks that a value may be written now and writes the comma before it.
 * In an object the comma went before the key. */
static bool begin_value(im_jw_t *w)
{
    if (w->err)
        return false;
    if (in_object(w)) {
        if (!w->after_key)
            return fail(w, IM_EINVAL);
    } else if (w->need_comma) {
        if (w->depth == 0)
            return fail(w, IM_EINVAL); /* a second top-level value */
        put(w, ",", 1);
    }
    return w->err == IM_OK;
}

static void end_value(im_jw_t *w)
{
    w->need_comma = true;
    w->after_key = false;
}

static void put_escape(im_jw_t *w, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    char e[6] = {'\\', (char)c, '0', '0'};
    size_t n = 2;

    switch (c) {
    case '"':
    case '\\':
        break;
    case '\b':
        e[1] = 'b';
        break;
    case '\f':
        e[1] = 'f';
        break;
    case '\n':
        e[1] = 'n';
        break;
    case '\r':
        e[1] = 'r';
        break;
    case '\t':
        e[1] = 't';
        break;
    default:
        e[1] = 'u';
        e[4] = hex[c >> 4];
        e[5] = hex[c & 0xF];
        n = 6;
    }
    put(w, e, n);
}

/* Writes the character at s (len > 0 bytes left) that is not plain: an
 * escape or a validated UTF-8 sequence.  Returns the bytes consumed, 0 on
 * error. */
static size_t put_special(im_jw_t *w, const char *s, size_t len)
{
    unsigned char c = (unsigned char)s[0];
    uint32_t cp;

    if (c < 0x80) {
        put_escape(w, c);
        return 1;
    }
    int n = im_utf8_decode(s, len, &cp);
    if (n < 0) {
        fail(w, IM_EUTF8);
        return 0;
    }
    /* U+2028/U+2029 are valid in JSON strings but end a line in JavaScript
     * source before ES2019, so a JSON text pasted into a script breaks. */
    if ((w->flags & IM_JW_ESCAPE_U2028) && (cp == 0x2028 || cp == 0x2029))
        put(w, cp == 0x2028 ? "\\u2028" : "\\u2029", 6);
    else
        put(w, s, (size_t)n);
    return (size_t)n;
}

static void put_string(im_jw_t *w, const char *s, size_t len)
{
    size_t i = 0;

    put(w, "\"", 1);
    while (i < len && w->err == IM_OK) {
        size_t j = i;
        while (j < len && is_plain((unsigned char)s[j]))
            j++;
        put(w, s + i, j - i);
        i = j;
        if (i < len)
            i += put_special(w, s + i, len - i);
    }
    put(w, "\"", 1);
}

static void put_scalar(im_jw_t *w, const char *s, size_t n)
{
    if (!begin_value(w))
        return;
    put(w, s, n);
    end_value(w);
}

static void begin_container(im_jw_t *w, bool object)
{
    if (!begin_value(w))
        return;
    if (w->depth == IM_JW_MAX_DEPTH) {
        fail(w, IM_EDEPTH);
        return;
    }
    put(w, object ? "{" : "[", 1);
    uint64_t bit = UINT64_C(1) << w->depth;
    w->objects = object ? w->objects | bit : w->objects & ~bit;
    w->depth++;
    w->need_comma = false;
    w->after_key = false;
}

static void end_container(im_jw_t *w, bool object)
{
    if (w->err)
        return;
    if (w->depth == 0 || in_object(w) != object || w->after_key) {
        fail(w, IM_EINVAL);
        return;
    }
    put(w, object ? "}" : "]", 1);
    w->depth--;
    end_value(w);
}

void im_jw_obj_begin(im_jw_t *w)
{
    begin_container(w, true);
}

void im_jw_obj_end(im_jw_t *w)
{
    end_container(w, true);
}

void im_jw_arr_begin(im_jw_t *w)
{
    begin_container(w, false);
}

void im_jw_arr_end(im_jw_t *w)
{
    end_container(w, false);
}

void im_jw_keyn(im_jw_t *w, const char *key, size_t len)
{
    if (w->err)
        return;
    if (!in_object(w) || w->after_key) {
        fail(w, IM_EINVAL);
        return;
    }
    if (w->need_comma)
        put(w, ",", 1);
    put_string(w, key, len);
    put(w, ":", 1);
    w->after_key = true;
}

void im_jw_key(im_jw_t *w, const char *key)
{
    im_jw_keyn(w, key, strlen(key));
}

void im_jw_str(im_jw_t *w, const char *s, size_t len)
{
    if (!begin_value(w))
        return;
    put_string(w, s, len);
    end_value(w);
}

void im_jw_cstr(im_jw_t *w, const char *s)
{
    im_jw_str(w, s, strlen(s));
}

/* Writes the decimal digits of v so that they end at end; returns how many. */
static size_t format_u64(char *end, uint64_t v)
{
    char *p = end;

    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return (size_t)(end - p);
}

void im_jw_uint64(im_jw_t *w, uint64_t v)
{
    char b[20];
    size_t n = format_u64(b + sizeof(b), v);

    put_scalar(w, b + sizeof(b) - n, n);
}

void im_jw_int64(im_jw_t *w, int64_t v)
{
    char b[21];
    uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    size_t n = format_u64(b + sizeof(b), mag);

    if (v < 0)
        b[sizeof(b) - ++n] = '-';
    put_scalar(w, b + sizeof(b) - n, n);
}

void im_jw_bool(im_jw_t *w, bool v)
{
    if (v)
        put_scalar(w, "true", 4);
    else
        put_scalar(w, "false", 5);
}

void im_jw_null(im_jw_t *w)
{
    put_scalar(w, "null", 4);
}

void im_jw_number(im_jw_t *w, const char *s, size_t len)
{
    bool is_int;

    if (w->err)
        return;
    if (len == 0 || scan_number((const unsigned char *)s, len, &is_int) != len) {
        fail(w, IM_EINVAL);
        return;
    }
    put_scalar(w, s, len);
}

im_err_t im_jw_finish(const im_jw_t *w, size_t *len)
{
    if (w->err)
        return w->err;
    if (w->depth > 0 || !w->need_comma)
        return IM_EINVAL;
    *len = w->len;
    return IM_OK;
}
