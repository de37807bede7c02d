"""Local worker processes: each serves trial after trial (warm) or a single one (process)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from trial_worker.contract import Assignment, TrialReport

REPORT_FD_ENV = "TUNEFLEET_REPORT_FD"


@dataclass(frozen=True)
class WorkerEvent:
    """A worker reported a trial, or its process ended (``exit_code`` set, ``report`` None).

    With ``rank`` set, it was not the worker but rank ``rank`` of the multi-node trial the worker
    runs as rank 0 (controller.local.gang) that ended.
    """

    worker_id: int
    report: TrialReport | None = None
    exit_code: int | None = None
    rank: int | None = None
    trial_number: int | None = None  # the trial that rank belonged to


class LocalWorker:
    """A ``tunefleet-worker --serve`` process fed assignments on stdin.

    Reports come back on a separate pipe, so whatever the objective prints cannot be mistaken
    for one. The process runs in its own session: Ctrl-C reaches the runner, which decides.
    """

    def __init__(
        self, worker_id: int, events: queue.Queue[WorkerEvent], log_path: Path, cwd: str, env: dict[str, str]
    ) -> None:
        self.worker_id = worker_id
        # The trial it runs, then those queued behind it (read from stdin when it is free).
        self.assigned: list[int] = []
        read_fd, write_fd = os.pipe()
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "trial_worker", "--serve"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env={**os.environ, **env, REPORT_FD_ENV: str(write_fd), "PYTHONUNBUFFERED": "1"},
                cwd=cwd,
                start_new_session=True,
                text=True,
            )
        os.close(write_fd)
        self._reports = os.fdopen(read_fd, "r")
        self._events = events
        self._reader = threading.Thread(target=self._read_reports, name=f"worker-{worker_id}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def trial_number(self) -> int | None:
        """The trial it runs now (or starts next, if it is between trials)."""
        return self.assigned[0] if self.assigned else None

    @property
    def queued(self) -> int:
        """How many trials wait behind the one it runs."""
        return max(0, len(self.assigned) - 1)

    @property
    def exited(self) -> bool:
        return self._process.poll() is not None

    def assign(self, assignment: Assignment) -> None:
        """Send a trial; if the process has just died, the trial stays listed as assigned, and the
        runner deals with it when the exit event arrives."""
        assert self._process.stdin is not None
        self.assigned.append(assignment.trial_number)
        with contextlib.suppress(OSError, ValueError):  # the worker is gone, or was retired
            self._process.stdin.write(assignment.model_dump_json() + "\n")
            self._process.stdin.flush()

    def finished(self, trial_number: int) -> None:
        if trial_number in self.assigned:
            self.assigned.remove(trial_number)

    def retire(self) -> None:
        """Ask the worker to exit after its current trial (closes its stdin)."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(OSError):  # the worker is already gone
                self._process.stdin.close()

    def kill(self) -> None:
        """Stop the worker and everything it started, now."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self.retire()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _read_reports(self) -> None:
        for line in self._reports:
            try:
                report = TrialReport.model_validate_json(line)
            except ValidationError:
                continue
            self._events.put(WorkerEvent(self.worker_id, report=report))
        self._reports.close()
        code = self._process.wait()
        self._events.put(WorkerEvent(self.worker_id, exit_code=code))
