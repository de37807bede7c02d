#!/usr/bin/env bash
# Runs every test tier. pytest's exit 5 (no tests collected) is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# Two pytest-xdist workers by default: most of the suite waits on child processes (controllers,
# trial pods, PostgreSQL), so on 2 cores two workers finish it in about 60% of one's time (1,115 s
# against 1,954 s, with the CPU 120% busy). Each worker starts its own PostgreSQL; tests that share
# the session's MLflow server stay on one worker (xdist_group). TUNEFLEET_TEST_WORKERS=N sets
# another count, 0 runs in this process (e.g. to use pdb).
workers=${TUNEFLEET_TEST_WORKERS:-2}
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
