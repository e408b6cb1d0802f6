/*
 * im_utf8.h - strict UTF-8 validation, decoding and encoding.
 *
 * "Valid" means well-formed UTF-8 as defined by Unicode (table 3-7) and
 * RFC 3629: no overlong forms, no encoded surrogates (U+D800..U+DFFF), nothing
 * above U+10FFFF, no stray continuation bytes, no truncated sequences.  This is
 * the check RFC 6455 requires for text frames (close code 1007 on failure) and
 * the one the JSON codec applies to every string.
 *
 * All functions are pure: any thread, no allocation.
 */
#ifndef IM_UTF8_H
#define IM_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* The longest encoding of one code point, in bytes. */
#define IM_UTF8_MAX 4

/* True if s[0..len) is entirely valid UTF-8 (len 0 is valid).  s need not be
 * NUL-terminated and may contain NUL bytes (U+0000 is valid UTF-8).  Runs of
 * ASCII are checked a word at a time. */
bool im_utf8_valid(const char *s, size_t len);

/* Decodes the code point that starts at s[0], reading at most len bytes.
 * Returns its length in bytes (1..4) and stores the code point in *cp; or
 *   IM_EUTF8   the bytes are not the start of a valid sequence;
 *   IM_EAGAIN  s[0..len) is a valid but incomplete prefix of a sequence (or
 *              len is 0): a streaming caller waits for more bytes, a caller
 *              holding the whole text treats it as IM_EUTF8.
 * *cp is untouched on error. */
int im_utf8_decode(const char *s, size_t len, uint32_t *cp);

/* Writes the UTF-8 encoding of cp to out, which has room for IM_UTF8_MAX
 * bytes.  Returns the number of bytes written (1..4), or IM_EUTF8 (nothing
 * written) when cp is a surrogate or above U+10FFFF. */
int im_utf8_encode(uint32_t cp, char *out);

#endif
