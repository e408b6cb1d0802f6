#include "im_utf8.h"

#include <string.h>

#define HIGH_BITS UINT64_C(0x8080808080808080)

/* Index of the first non-ASCII byte at or after i (len if none).  Chat text
 * and protocol frames are mostly ASCII, so eight bytes are tested per step. */
static size_t skip_ascii(const unsigned char *s, size_t i, size_t len)
{
    uint64_t word;

    while (len - i >= sizeof(word)) {
        memcpy(&word, s + i, sizeof(word));
        if (word & HIGH_BITS)
            break;
        i += sizeof(word);
    }
    while (i < len && s[i] < 0x80)
        i++;
    return i;
}

bool im_utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    uint32_t cp;

    for (;;) {
        i = skip_ascii(u, i, len);
        if (i == len)
            return true;
        int n = im_utf8_decode(s + i, len - i, &cp);
        if (n < 0)
            return false;
        i += (size_t)n;
    }
}

int im_utf8_decode(const char *s, size_t len, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    /* Unicode table 3-7: only the second byte has a lead-dependent range; it
     * is what excludes overlong forms (E0, F0), surrogates (ED) and code
     * points above U+10FFFF (F4). */
    unsigned lo = 0x80, hi = 0xBF;
    uint32_t v;
    int n;

    if (len == 0)
        return IM_EAGAIN;
    unsigned c = u[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xC2) {
        return IM_EUTF8; /* continuation byte, or overlong 2-byte lead C0/C1 */
    } else if (c < 0xE0) {
        n = 2;
        v = c & 0x1F;
    } else if (c < 0xF0) {
        n = 3;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c < 0xF5) {
        n = 4;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return IM_EUTF8;
    }
    for (int i = 1; i < n; i++) {
        if ((size_t)i >= len)
            return IM_EAGAIN;
        if (u[i] < lo || u[i] > hi)
            return IM_EUTF8;
        lo = 0x80;
        hi = 0xBF;
        v = (v << 6) | (u[i] & 0x3F);
    }
    *cp = v;
    return n;
}

int im_utf8_encode(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;

    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            return IM_EUTF8;
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF)
        return IM_EUTF8;
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
