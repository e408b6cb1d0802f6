#!/bin/bash
# im-healthcheck PORT [PATH] - exit 0 when GET http://127.0.0.1:PORT/PATH (default /healthz)
# answers 200, 1 otherwise.  The images' HEALTHCHECK: the runtime images have no curl or wget,
# and bash's /dev/tcp needs nothing more.  Both services answer /healthz with 503 while a
# dependency they need is unreachable (gateway: logic or RabbitMQ; logic: RabbitMQ).
port=${1:?usage: im-healthcheck PORT [PATH]}
path=${2:-/healthz}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS=' ' read -r -t 3 _ status _ <&3 || exit 1
[ "$status" = 200 ]
