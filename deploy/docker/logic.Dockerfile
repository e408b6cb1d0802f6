# The logic service: gRPC API (9000) and the batch writer; /metrics and /healthz on 9100.
#
#   docker build -f deploy/docker/logic.Dockerfile -t imserver-logic .     (from the repo root)
#
# Configuration is by environment only: every flag --foo-bar is IM_FOO_BAR (logic --help lists
# them).  IM_JWT_SECRET is required (>= 32 bytes, the same as the gateways'); IM_NODE_ID must
# be unique per running instance.
#
# The build stage is the same in both Dockerfiles (same packages, same commands, both
# binaries built), so building the second image reuses the first one's cached stage.

FROM debian:bookworm AS build
# The build and client-library packages of scripts/deps.sh (servers, fuzzing and test tools
# left out).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config git ca-certificates \
        librabbitmq-dev libmariadb-dev libhiredis-dev libprotobuf-c-dev protobuf-c-compiler \
        protobuf-compiler libgrpc-dev libwebsockets-dev libsodium-dev libjwt-dev libjsmn-dev \
        libev-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole tree: configuring needs every CMakeLists.txt (tests/ and benchmark/ included),
# though only the two service binaries are built (configure warns that node, npm and
# chromium are missing: only tests need them).
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DIM_WERROR=ON \
    && cmake --build build -j"$(nproc)" --target logic gateway

FROM debian:bookworm-slim
# One package per library the binary links (ldd + dpkg -S): libmariadb.so.3, librabbitmq.so.4,
# libhiredis.so.0.14, libsodium.so.23, libgrpc.so.29 + libgpr.so.29 (libgrpc29: it brings
# abseil, re2, c-ares, OpenSSL, zlib, libstdc++), libprotobuf-c.so.1.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libmariadb3 librabbitmq4 libhiredis0.14 libsodium23 libgrpc29 libprotobuf-c1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 im \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin im
COPY --from=build /src/build/logic/logic /usr/local/bin/logic
COPY deploy/docker/healthcheck.sh /usr/local/bin/im-healthcheck
# Inside a container both listeners must face the container network, not loopback.
ENV IM_GRPC_LISTEN=0.0.0.0:9000 \
    IM_HTTP_LISTEN=0.0.0.0:9100
USER 10001:10001
EXPOSE 9000 9100
# SIGTERM: stop taking calls, let the publisher drain (up to --publish-timeout), flush the
# writer's batch and ack it; give it time (compose stop_grace_period, k8s
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# 200 while the publisher and the writer hold their RabbitMQ connections.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD im-healthcheck "${IM_HTTP_LISTEN##*:}" /healthz
ENTRYPOINT ["/usr/local/bin/logic"]
