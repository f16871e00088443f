#!/usr/bin/env bash
# Installs what the tests need, then runs the fast test suite on two pytest-xdist workers, one
# file per worker at a time (UL_TEST_WORKERS=0: in one process; extra arguments go to pytest,
# e.g. `scripts/test.sh -m slow` for the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
workers="${UL_TEST_WORKERS:-2}"
par=()
[ "$workers" != "0" ] && par=(-n "$workers" --dist loadfile)
exec "${PYTHON:-python3}" -m pytest -q --durations=15 "${par[@]}" "$@"
