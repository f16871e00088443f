#!/usr/bin/env bash
# The maintainers' checks beside the tests (CI runs them after scripts/test.sh): the linter and
# the formatter (ruff), the type checker (mypy, configured in pyproject.toml), and the built
# wheel installed and run outside the source tree (scripts/check_wheel.sh). The tools are pinned
# here so that a new release cannot change what passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
want="ruff==0.17.6 mypy==2.4.1 build==1.6.1"
if ! "$PY" - $want >/dev/null 2>&1 <<'PY'
import importlib.metadata as md, sys
sys.exit(any(md.version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))
PY
then
  echo "installing the checkers ($want) ..."
  "$PY" -m pip install -q --root-user-action=ignore $want
fi
echo "ruff check"; "$PY" -m ruff check .
echo "ruff format --check"; "$PY" -m ruff format --check .
echo "mypy"; "$PY" -m mypy
bash scripts/check_wheel.sh
