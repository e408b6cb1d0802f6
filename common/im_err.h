/*
 * im_err.h - the one error type of the project.
 *
 * Every fallible function returns im_err_t: IM_OK (0) on success, a negative
 * IM_E* code on failure.  IM_EAGAIN is the distinct "not now, try again" result
 * (like nginx's NGX_AGAIN): the operation did not fail, it could not complete yet.
 */
#ifndef IM_ERR_H
#define IM_ERR_H

typedef int im_err_t;

#define IM_ERR_MAP(X)                                                                  \
    X(IM_OK, 0, "ok")                                                                  \
    X(IM_EAGAIN, -1, "try again")                                                      \
    X(IM_ENOMEM, -2, "out of memory")                                                  \
    X(IM_EINVAL, -3, "invalid argument")                                               \
    X(IM_ERANGE, -4, "value out of range or buffer too small")                         \
    X(IM_ENOENT, -5, "not found")                                                      \
    X(IM_EEXIST, -6, "already exists")                                                 \
    X(IM_EPARSE, -7, "malformed input")                                                \
    X(IM_EUTF8, -8, "invalid UTF-8")                                                   \
    X(IM_EDEPTH, -9, "nesting too deep")                                               \
    X(IM_EFULL, -10, "resource exhausted")                                             \
    X(IM_EIO, -11, "I/O error")                                                        \
    X(IM_ETIMEDOUT, -12, "timed out")                                                  \
    X(IM_ECLOSED, -13, "closed")                                                       \
    X(IM_EPERM, -14, "permission denied")                                              \
    X(IM_EAUTH, -15, "authentication failed")                                          \
    X(IM_EUNAVAIL, -16, "service unavailable")                                         \
    X(IM_EHELP, -17, "help requested")

enum {
#define IM__ERR_ENUM(name, val, str) name = (val),
    IM_ERR_MAP(IM__ERR_ENUM)
#undef IM__ERR_ENUM
};

/* Human-readable text for err.  Never NULL; unknown codes give "unknown error".
 * The string is static: do not free it.  Any thread. */
const char *im_strerror(im_err_t err);

/* The symbolic name ("IM_EPARSE") of err, for logs and tests.  Static, any thread. */
const char *im_errname(im_err_t err);

#endif
