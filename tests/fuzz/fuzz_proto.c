/*
 * fuzz_proto: the request of every logic RPC as the gRPC server decodes it
 * (protobuf-c unpack of the method's input type; the first byte picks the
 * method), then the checks logic makes before touching a server: Send's
 * validation, conversation ids, gateway and session ids.  Any bytes must
 * give a request or a refusal, never a crash or a leak.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "im.pb-c.h"
#include "lg_message.h"
#include "lg_session.h"
#include "lg_sync.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCServiceDescriptor *const services[] = {
    &im__v1__auth__descriptor,
    &im__v1__message__descriptor,
    &im__v1__group__descriptor,
    &im__v1__session__descriptor,
};

static void check(const ProtobufCMessage *m)
{
    char msg[256];
    uint64_t a, b, g;

    if (m->descriptor == &im__v1__send_request__descriptor) {
        if (lg_message_validate((const Im__V1__SendRequest *)m, 4096, msg, sizeof(msg)) !=
                IM_RPC_OK &&
            strchr(msg, ':') == NULL)
            __builtin_trap(); /* refusals are "<code>: <text>" */
    } else if (m->descriptor == &im__v1__history_request__descriptor) {
        lg_conv_parse(((const Im__V1__HistoryRequest *)m)->conv, &a, &b, &g);
    } else if (m->descriptor == &im__v1__mark_read_request__descriptor) {
        lg_conv_parse(((const Im__V1__MarkReadRequest *)m)->conv, &a, &b, &g);
    } else if (m->descriptor == &im__v1__sync_request__descriptor) {
        const Im__V1__SyncRequest *s = (const Im__V1__SyncRequest *)m;
        for (size_t i = 0; i < s->n_have; i++)
            lg_conv_parse(s->have[i]->conv, &a, &b, &g);
    } else if (m->descriptor == &im__v1__session_request__descriptor) {
        const Im__V1__SessionRequest *s = (const Im__V1__SessionRequest *)m;
        lg_session_id_ok(s->gateway_id);
        lg_session_id_ok(s->session_id);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const ProtobufCServiceDescriptor *sd;
    const ProtobufCMessageDescriptor *in;
    ProtobufCMessage *m;

    if (size < 1)
        return 0;
    sd = services[data[0] % (sizeof(services) / sizeof(services[0]))];
    in = sd->methods[(data[0] / 4) % sd->n_methods].input;
    m = protobuf_c_message_unpack(in, NULL, size - 1, data + 1);
    if (m == NULL)
        return 0;
    check(m);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
