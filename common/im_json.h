/*
 * im_json.h - a strict JSON (RFC 8259) tokenizer and a bounded JSON writer,
 * neither of which allocates.  Built for the WebSocket client protocol:
 *
 *   {"type":"send","cid":"c-17","to":{"user":42},"body":"hello"}
 *
 * Decoding
 * --------
 * im_json_parse() validates a whole document and describes it in a token
 * array the caller provides (typically on the stack); tokens point into the
 * input, which is not copied and must outlive the im_json_t.  Values are read
 * through accessors that take a token index.  Strings are unescaped only when
 * a caller copies one out (im_json_str), so a frame costs no allocation at all.
 *
 * Token layout: tokens are in document order, tok[0] is the root value.  A
 * container is followed by its contents; an object's contents are key, value,
 * key, value, ...  (a key is a string token with IM_JSON_F_KEY).  For any
 * value t, tok[t].next is the index just past t and everything inside it, so
 * a value is skipped in O(1).  Iterate an array's elements or an object's keys
 * with:
 *
 *   for (int k = im_json_first(doc, obj); k >= 0; k = im_json_next(doc, k))
 *       ... for an object, the value of key k is token k + 1 ...
 *
 * What is rejected (the parse fails, nothing is partially accepted):
 *   IM_EPARSE  any syntax error: truncation, trailing bytes after the value,
 *              leading zeros, "1.", ".5", bad literals, trailing commas,
 *              unescaped control characters in strings, bad escapes, a byte
 *              outside a string that JSON does not allow there (incl. NUL);
 *              an empty or whitespace-only input.
 *   IM_EUTF8   a string holds invalid UTF-8, or a \u escape denotes a lone
 *              surrogate (no valid UTF-8 could represent it).
 *   IM_EEXIST  an object has two keys that are equal after unescaping.  The
 *              protocol never sends duplicates and peers disagree on which
 *              one wins, so a duplicate is an error rather than a choice.
 *              The check compares each key with the earlier keys of its
 *              object: quadratic in members per object, which the token array
 *              size bounds (hundreds of tokens cost microseconds).
 *   IM_EDEPTH  containers nested deeper than max_depth.
 *   IM_EFULL   more values (keys included) than tokens in the array.
 *   IM_ERANGE  the input is 4 GiB or longer (offsets are 32-bit).
 * The top-level value may be of any type (RFC 8259); whitespace around it is
 * allowed.  Parsing is iterative: hostile nesting cannot exhaust the stack.
 *
 * Encoding
 * --------
 * im_jw_t writes compact JSON into a fixed buffer the caller provides.  It
 * inserts commas and colons itself and checks the call sequence (a value in
 * an object needs a key first, ends match begins).  Errors are sticky: the
 * first one is kept and later calls do nothing, so a caller issues all its
 * calls and checks im_jw_finish() once.  It never writes past the buffer.
 *
 * Threads: a parsed im_json_t is read-only and may be read from any number of
 * threads.  A writer belongs to one thread at a time.
 */
#ifndef IM_JSON_H
#define IM_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* Nesting limit used when im_json_parse is given max_depth 0. */
#define IM_JSON_DEFAULT_DEPTH 32

typedef enum {
    IM_JSON_NONE = 0, /* returned by im_json_type for an invalid index */
    IM_JSON_OBJECT,
    IM_JSON_ARRAY,
    IM_JSON_STRING,
    IM_JSON_NUMBER,
    IM_JSON_BOOL,
    IM_JSON_NULL
} im_json_type_t;

/* tok.flags */
#define IM_JSON_F_KEY 0x01 /* string: an object key (its value follows it) */
#define IM_JSON_F_ESC 0x02 /* string: contains backslash escapes */
#define IM_JSON_F_INT 0x04 /* number: no fraction or exponent */

typedef struct im_json_tok_s {
    uint8_t type;   /* im_json_type_t */
    uint8_t flags;  /* IM_JSON_F_* */
    uint32_t start; /* byte offset of the value; of a string's contents (after the quote) */
    uint32_t end;   /* one past the value's last byte; a string's closing quote */
    int size;       /* object: number of keys; array: number of elements; else 0 */
    int parent;     /* index of the enclosing container, -1 for the root */
    int next;       /* index just past this value and its contents */
} im_json_tok_t;

typedef struct im_json_s {
    const char *js;     /* the parsed text, not owned */
    im_json_tok_t *tok; /* the caller's token array, not owned */
    int count;          /* tokens in use (0 after a failed parse) */
    size_t err_off;     /* after a failed parse: byte offset of the problem */
} im_json_t;

/* Parses js[0..len) into tok[0..ntok).  max_depth limits container nesting
 * (the root container is depth 1); 0 means IM_JSON_DEFAULT_DEPTH.  Returns
 * IM_OK with doc filled in, or one of the errors listed at the top of this
 * file with doc->count 0 and doc->err_off set; tok contents are then
 * unspecified.  js need not be NUL-terminated.  Neither js nor tok is copied:
 * both must outlive doc. */
im_err_t im_json_parse(im_json_t *doc, const char *js, size_t len, im_json_tok_t *tok, size_t ntok,
                       unsigned max_depth);

/*
 * Accessors.  t is a token index of a parsed doc.  A negative t is an error
 * from an earlier lookup: functions returning im_err_t or an index return it
 * unchanged, so lookups chain:
 *
 *   im_json_uint64(doc, im_json_find(doc, im_json_find(doc, 0, "to"), "user"), &uid)
 *
 * returns IM_ENOENT if "to" is missing.  An index >= doc->count gives IM_EINVAL.
 */

/* The type of token t, IM_JSON_NONE if t is not a valid index. */
im_json_type_t im_json_type(const im_json_t *doc, int t);

/* The value for key in object obj: its token index, or IM_ENOENT (no such
 * key), IM_EINVAL (obj is not an object).  key is compared with the
 * unescaped key text.  O(members of obj). */
int im_json_find(const im_json_t *doc, int obj, const char *key);

/* The first element of array t or first key of object t; IM_ENOENT when it is
 * empty, IM_EINVAL when t is not a container. */
int im_json_first(const im_json_t *doc, int t);

/* The element or key after t in the same container (for a key, skipping its
 * value); IM_ENOENT after the last one or for the root; IM_EINVAL when t is
 * an object's value rather than a key.  O(1). */
int im_json_next(const im_json_t *doc, int t);

/* Copies the unescaped contents of string t (keys too) into buf and a NUL
 * after them.  *len (if not NULL) receives the unescaped length without the
 * NUL, on IM_ERANGE too, so buf = NULL, cap = 0 asks for the size needed.
 * Returns IM_OK; IM_ERANGE when cap < length + 1 (buf[0] is then set to NUL
 * if cap > 0); IM_EINVAL when t is not a string.  The copy is valid UTF-8.
 * It contains a NUL byte where the JSON had \u0000: code that treats it as a
 * C string must check strlen(buf) == *len. */
im_err_t im_json_str(const im_json_t *doc, int t, char *buf, size_t cap, size_t *len);

/* True if t is a string whose unescaped contents equal the C string s.
 * Unescaped strings are compared in place with memcmp; nothing is copied.
 * False for a negative or invalid t. */
bool im_json_str_eq(const im_json_t *doc, int t, const char *s);

/* Reads number t as an exact integer.  Returns IM_OK; IM_EINVAL when t is not
 * a number; IM_ERANGE when it has a fraction or exponent (even 1.0 or 1e2) or
 * does not fit the type (any negative value but -0 for uint64). */
im_err_t im_json_int64(const im_json_t *doc, int t, int64_t *out);
im_err_t im_json_uint64(const im_json_t *doc, int t, uint64_t *out);

/* Reads true/false.  Returns IM_OK or IM_EINVAL when t is not a boolean. */
im_err_t im_json_bool(const im_json_t *doc, int t, bool *out);

/*
 * The writer.  All fields are private; use the functions.
 */

/* Deepest nesting the writer supports. */
#define IM_JW_MAX_DEPTH 64

/* im_jw_init flags */
#define IM_JW_ESCAPE_U2028 0x01 /* also write U+2028/U+2029 as \u2028/\u2029 */

typedef struct im_jw_s {
    char *buf;
    size_t cap;
    size_t len;
    im_err_t err;     /* first error, sticky */
    unsigned flags;   /* IM_JW_* */
    unsigned depth;   /* open containers */
    uint64_t objects; /* bit d-1 set: the container at depth d is an object */
    bool need_comma;  /* a value was written at the current level */
    bool after_key;   /* a key was written, its value is due */
} im_jw_t;

/* Starts writing into buf[0..cap).  buf is not owned; the writer never writes
 * at or past buf + cap.  flags is 0 or IM_JW_ESCAPE_U2028. */
void im_jw_init(im_jw_t *w, char *buf, size_t cap, unsigned flags);

/*
 * Each call below writes one item.  Nothing happens once an error is set.
 * Errors (kept in the writer, reported by im_jw_finish):
 *   IM_ERANGE  the buffer is full (contents are then truncated, not valid JSON)
 *   IM_EUTF8   a string or key is not valid UTF-8
 *   IM_EINVAL  the call does not fit the structure: a value in an object with
 *              no key before it, a key outside an object, an end that does not
 *              match its begin, a second top-level value; a malformed number
 *   IM_EDEPTH  more than IM_JW_MAX_DEPTH nested containers
 */
void im_jw_obj_begin(im_jw_t *w);
void im_jw_obj_end(im_jw_t *w);
void im_jw_arr_begin(im_jw_t *w);
void im_jw_arr_end(im_jw_t *w);

/* An object key: key is a C string / key[0..len), may hold any valid UTF-8. */
void im_jw_key(im_jw_t *w, const char *key);
void im_jw_keyn(im_jw_t *w, const char *key, size_t len);

/* A string value: s[0..len) / the C string s, which must be valid UTF-8.
 * '"', '\\' and every control character are escaped (\b \f \n \r \t short,
 * others as \u00XX); other characters are written as UTF-8. */
void im_jw_str(im_jw_t *w, const char *s, size_t len);
void im_jw_cstr(im_jw_t *w, const char *s);

void im_jw_int64(im_jw_t *w, int64_t v);
void im_jw_uint64(im_jw_t *w, uint64_t v);
void im_jw_bool(im_jw_t *w, bool v);
void im_jw_null(im_jw_t *w);

/* A number given as text s[0..len), written verbatim (no precision is lost
 * converting through double).  It must match the JSON number grammar exactly,
 * else IM_EINVAL. */
void im_jw_number(im_jw_t *w, const char *s, size_t len);

/* Ends writing.  Returns the first error, else IM_EINVAL if the document is
 * incomplete (nothing written, or a container left open), else IM_OK with the
 * output length in *len.  The output is not NUL-terminated. */
im_err_t im_jw_finish(const im_jw_t *w, size_t *len);

#endif
