#!/usr/bin/env bash
# Runs every test tier. pytest's exit 5 (no tests collected) is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# One process by default: on a 2-core machine two workers double the child processes (controllers,
# trial pods) the cluster tier's timed waits compete with. TUNEFLEET_TEST_WORKERS=N spreads the
# tiers over N pytest-xdist workers on a bigger machine; tests that share the session's MLflow
# server then stay on one worker (xdist_group).
workers=${TUNEFLEET_TEST_WORKERS:-0}
if [ "$workers" = 0 ]; then
  .venv/bin/python -m pytest --durations=40 "$@"
else
  .venv/bin/python -m pytest --durations=40 -n "$workers" --dist loadgroup "$@"
fi
status=$?
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$status"
