"""Warm workers: one process runs trial after trial for the local runner, paying start-up once."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

from pydantic import ValidationError

from trial_worker.command import RunningCommand
from trial_worker.contract import Assignment, ExitCode, TrialReport
from trial_worker.run import run_assignment

REPORT_FD_ENV = "TUNEFLEET_REPORT_FD"


def serve(lines: IO[str], reports: IO[str]) -> int:
    """Read one assignment per line, run it, write one :class:`TrialReport` line per trial.

    Returns when ``lines`` ends (the runner closed our stdin). Exits at once if the runner dies,
    so no orphaned worker keeps running a trial that the next run will mark lost and retry.
    """
    _exit_with_parent()
    _preload_storage_modules()
    for line in lines:
        if not line.strip():
            continue
        try:
            assignment = Assignment.model_validate_json(line)
        except ValidationError as exc:
            print(f"tunefleet-worker: bad assignment: {exc}", file=sys.stderr)
            return int(ExitCode.BAD_ASSIGNMENT)
        with _trial_output(assignment.log_path):
            report = run_assignment(assignment)
        reports.write(report.model_dump_json() + "\n")
        reports.flush()
    return 0


def _preload_storage_modules() -> None:
    """Import what Optuna's RDB storage imports lazily (alembic, its ORM models) now, while the
    runner is still creating the study, rather than when the first trial arrives."""
    import importlib

    for name in (
        "alembic.command",
        "alembic.config",
        "alembic.migration",
        "alembic.script",
        "sqlalchemy.orm",
        "optuna.storages._rdb.models",
    ):
        importlib.import_module(name)


def _exit_with_parent(poll_s: float = 0.5) -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        RunningCommand.terminate(grace_s=2.0)
        os._exit(int(ExitCode.STORAGE_UNAVAILABLE))

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def report_stream() -> IO[str]:
    """Where reports go: the pipe the runner passed, so objective output cannot mix in."""
    fd = os.environ.get(REPORT_FD_ENV)
    if fd is None:
        return sys.stdout
    return os.fdopen(int(fd), "w", buffering=1)


@contextlib.contextmanager
def _trial_output(log_path: str | None) -> Iterator[None]:
    """Send this trial's stdout and stderr (python and subprocesses alike) to its log file."""
    if log_path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_one_with_log(assignment: Assignment) -> TrialReport:
    with _trial_output(assignment.log_path):
        return run_assignment(assignment)
