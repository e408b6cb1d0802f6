/* The build generates working protobuf-c code: a message survives a round trip
 * and the service descriptor names the gRPC method path the rpc layer uses. */
#include <stdlib.h>

#include "health.pb-c.h"
#include "im_test.h"

TEST(health_response_roundtrip)
{
    Grpc__Health__V1__HealthCheckResponse in = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT, *out;
    uint8_t buf[16];
    size_t len;

    in.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    len = grpc__health__v1__health_check_response__get_packed_size(&in);
    ASSERT_EQ(len, 2);
    ASSERT_EQ(grpc__health__v1__health_check_response__pack(&in, buf), len);
    ASSERT_EQ(buf[0], 0x08); /* field 1, varint */
    ASSERT_EQ(buf[1], 1);
    out = grpc__health__v1__health_check_response__unpack(NULL, len, buf);
    ASSERT_NOT_NULL(out);
    ASSERT_EQ(out->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    grpc__health__v1__health_check_response__free_unpacked(out, NULL);
}

TEST(garbage_is_rejected)
{
    static const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 'x'};
    ASSERT_NULL(grpc__health__v1__health_check_request__unpack(NULL, sizeof(junk), junk));
}

TEST(service_descriptor_gives_method_paths)
{
    const ProtobufCServiceDescriptor *sd = &grpc__health__v1__health__descriptor;

    ASSERT_STR_EQ(sd->name, "grpc.health.v1.Health");
    ASSERT_EQ(sd->n_methods, 1);
    ASSERT_STR_EQ(sd->methods[0].name, "Check");
    ASSERT_TRUE(sd->methods[0].input == &grpc__health__v1__health_check_request__descriptor);
}

int main(void)
{
    RUN(health_response_roundtrip);
    RUN(garbage_is_rejected);
    RUN(service_descriptor_gives_method_paths);
    return im_test_done();
}
