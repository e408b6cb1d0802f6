#!/usr/bin/env bash
# The README's "start everything" command: installs what is missing, builds,
# and starts the infrastructure (RabbitMQ, MariaDB, Redis) as local processes
# under .run/.  Stop everything with scripts/down.sh.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

"$repo/scripts/deps.sh"
"$repo/scripts/build.sh" "$repo/build"
"$repo/scripts/infra.sh" up
echo
echo "Infrastructure is up (settings above, also in ${IM_STATE_DIR:-$repo/.run}/env)."
echo "Stop it with: scripts/down.sh"
