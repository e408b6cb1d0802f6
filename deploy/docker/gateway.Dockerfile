# The WebSocket + REST gateway (8080: /ws, /api/v1, the web client at /, /healthz, /metrics).
#
#   docker build -f deploy/docker/gateway.Dockerfile -t imserver-gateway .   (from the repo root)
#
# Configuration is by environment only: every flag --foo-bar is IM_FOO_BAR (gateway --help
# lists them).  IM_JWT_SECRET is required (the same as logic's), IM_LOGIC names logic's gRPC
# address(es), IM_AMQP_* the broker.  One process runs one event loop: scale with more
# containers, not threads.
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
# One package per library the binary links (ldd + dpkg -S): librabbitmq.so.4, libsodium.so.23,
# libgrpc.so.29 + libgpr.so.29 (libgrpc29: it brings abseil, re2, c-ares, OpenSSL, zlib,
# libstdc++), libprotobuf-c.so.1, libwebsockets.so.17 (brings libcap2), libev.so.4 and lws's
# libev plugin, which lws loads at run time (the gateway's epoll loop).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        librabbitmq4 libsodium23 libgrpc29 libprotobuf-c1 libwebsockets17 libev4 \
        libwebsockets-evlib-ev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 im \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin im
COPY --from=build /src/build/gateway/gateway /usr/local/bin/gateway
COPY deploy/docker/healthcheck.sh /usr/local/bin/im-healthcheck
# The web client, served at / (the build's default --static-dir is the source tree's web/,
# which does not exist here).
COPY web/ /usr/share/imserver/web/
ENV IM_LISTEN=0.0.0.0:8080 \
    IM_STATIC_DIR=/usr/share/imserver/web
USER 10001:10001
EXPOSE 8080
# SIGTERM: refuse new upgrades, close every client with 1001 (going away), wait up to
# --shutdown-timeout for their close replies, exit 0.
STOPSIGNAL SIGTERM
# 200 while logic answers the heartbeat and the delivery consumer is connected.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD im-healthcheck "${IM_LISTEN##*:}" /healthz
ENTRYPOINT ["/usr/local/bin/gateway"]
