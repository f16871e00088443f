#!/usr/bin/env bash
# Installs what the tests need, then runs the fast test suite (extra arguments go to pytest,
# e.g. `scripts/test.sh -m slow` for the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec "${PYTHON:-python3}" -m pytest -q --durations=15 "$@"
