#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the test suite in PYTEST_WORKERS (default 2)
# pytest-xdist worker processes, each test file in one worker (`--dist loadfile`: a file's
# module fixtures are built once); PYTEST_WORKERS=0 runs it in this process. Extra arguments go
# to pytest, e.g. `bash scripts/test.sh -m slow` for the long tests. No tests collected is a
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
set +e
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
