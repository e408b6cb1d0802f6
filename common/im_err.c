#include "im_err.h"

const char *im_strerror(im_err_t err)
{
    switch (err) {
#define IM__ERR_STR(name, val, str)                                                    \
    case name:                                                                         \
        return str;
        IM_ERR_MAP(IM__ERR_STR)
#undef IM__ERR_STR
    }
    return "unknown error";
}

const char *im_errname(im_err_t err)
{
    switch (err) {
#define IM__ERR_NAME(name, val, str)                                                   \
    case name:                                                                         \
        return #name;
        IM_ERR_MAP(IM__ERR_NAME)
#undef IM__ERR_NAME
    }
    return "IM_E?";
}
