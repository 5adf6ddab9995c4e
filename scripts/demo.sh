#!/usr/bin/env bash
# Run the demo on built-in data (sets up .venv on first use). Extra arguments go to `mixmag demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup-env.sh"
cd "$ROOT"
mixmag demo "$@"
