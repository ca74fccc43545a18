#!/usr/bin/env bash
# Sets up .venv if needed, then runs `gts demo` (arguments go to it, e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gts demo "$@"
