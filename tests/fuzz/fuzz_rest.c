/*
 * fuzz_rest: a REST request body as the gateway reads it (gateway/gw_req.c
 * gw_body_*, used by gw_api.c): the JSON object and the string members
 * register, login and group creation take, at the sizes gw_api.c uses.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gw_req.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static gw_body_t body;
    char user[64], pass[256], name[256];

    if (!gw_body_parse(&body, (const char *)data, size))
        return 0;
    if (gw_body_str(&body, "username", user, sizeof(user)) && strlen(user) >= sizeof(user))
        __builtin_trap();
    if (gw_body_str(&body, "password", pass, sizeof(pass)) && strlen(pass) >= sizeof(pass))
        __builtin_trap();
    gw_body_str(&body, "name", name, sizeof(name));
    return 0;
}
