#!/usr/bin/env bash
# Stops everything scripts/up.sh started (by PID files under .run/).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/infra.sh" down
