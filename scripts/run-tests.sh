#!/usr/bin/env bash
# Runs every test tier. pytest's exit 5 (no tests collected) is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# Two workers (pytest-xdist): most tests wait on child processes. Tests that share the session's
# MLflow server run on one worker (xdist_group). TUNEFLEET_TEST_WORKERS=0 runs them in one process.
.venv/bin/python -m pytest -n "${TUNEFLEET_TEST_WORKERS:-2}" --dist loadgroup "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$status"
