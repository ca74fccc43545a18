#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite; arguments go to pytest.
#   bash scripts/test.sh            everything (what CI runs): unit, integration and e2e; `gpu` tests skip without CUDA
#   bash scripts/test.sh --fast     the unit tier only (tests/unit, under 3 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ "${1:-}" == "--fast" ]]; then
    shift
    exec .venv/bin/python -m pytest tests/unit "$@"
fi
exec .venv/bin/python -m pytest "$@"
