"""Intermediate values written in groups: one transaction for the reports that arrive together.

With a thousand trials each reporting once a second, Optuna's own path (an ORM session per
report: read the trial, read the step, insert or update, commit) costs a connection checkout and
four round trips per report. Here one thread collects the reports that arrive within
``window_s``, and writes them in one transaction (the trials' states read once, one upsert),
then answers each call. No call is answered before its commit, and Optuna's rules stay: a
report on a finished trial is refused (``UpdateFinishedTrialError``), one on an unknown trial is
a ``KeyError``, a repeated step overwrites. On a database other than PostgreSQL (no upsert of
this form) each report takes Optuna's own path.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from sqlalchemy.dialects import postgresql

WINDOW_S = 0.003
MAX_BATCH = 500

_VALUES = models.TrialIntermediateValueModel.__table__


def _upsert(rows: list[dict[str, object]]) -> sqlalchemy.Insert:
    """One INSERT ... VALUES (...), (...) ON CONFLICT DO UPDATE for all the rows: one round trip.
    (Given as executemany, psycopg2 sends one statement per row, and each round trip waits for
    the interpreter again: with the gateway busy, a batch of hundreds took a second.)"""
    insert = postgresql.insert(_VALUES).values(rows)
    return insert.on_conflict_do_update(
        index_elements=[_VALUES.c.trial_id, _VALUES.c.step],
        set_={
            "intermediate_value": insert.excluded.intermediate_value,
            "intermediate_value_type": insert.excluded.intermediate_value_type,
        },
    )

_STATES = sqlalchemy.select(models.TrialModel.trial_id, models.TrialModel.state).where(
    models.TrialModel.trial_id.in_(sqlalchemy.bindparam("ids", expanding=True))
)


@dataclass
class _Report:
    trial_id: int
    step: int
    value: float
    done: futures.Future[None] = field(default_factory=futures.Future)


class ReportBatcher:
    """``submit`` blocks until the report is committed (or refused), ``submit_future`` answers when
    it is; one writer thread."""

    def __init__(self, backend: RDBStorage, window_s: float = WINDOW_S, max_batch: int = MAX_BATCH) -> None:
        self._backend = backend
        self._engine: sqlalchemy.Engine = backend.engine
        self._window_s = window_s
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Report | None] = queue.SimpleQueue()
        self._batched = self._engine.dialect.name == "postgresql"
        self._thread: threading.Thread | None = None
        if self._batched:
            self._thread = threading.Thread(target=self._run, name="gateway-reports", daemon=True)
            self._thread.start()

    @property
    def batched(self) -> bool:
        """Whether reports are written in groups (PostgreSQL); else ``submit`` writes each."""
        return self._batched

    def submit(self, trial_id: int, step: int, value: float) -> None:
        if not self._batched:
            self._backend.set_trial_intermediate_value(trial_id, step, value)
            return
        self.submit_future(trial_id, step, value).result()

    def submit_future(self, trial_id: int, step: int, value: float) -> futures.Future[None]:
        """The report's commit (or its refusal), to wait for where blocking is not welcome.
        Only when ``batched``."""
        assert self._batched, "submit_future needs the batched writer (PostgreSQL)"
        report = _Report(trial_id, step, value)
        self._queue.put(report)
        return report.done

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            time.sleep(self._window_s)  # let the reports of this instant gather
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._write(batch)
            if stopping:
                return

    def _write(self, batch: list[_Report]) -> None:
        # A report whose caller went away before this point is dropped (its worker sends it again);
        # the others can no longer be cancelled, so each gets its answer below.
        batch = [report for report in batch if report.done.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            with self._engine.begin() as connection:
                ids = sorted({r.trial_id for r in batch})
                states = dict(connection.execute(_STATES, {"ids": ids}).tuples().all())
                rows: dict[tuple[int, int], dict[str, object]] = {}
                refused: dict[int, BaseException] = {}
                for report in batch:
                    state = states.get(report.trial_id)
                    if state is None:
                        refused[id(report)] = KeyError(models.NOT_FOUND_MSG)
                    elif state.is_finished():
                        refused[id(report)] = UpdateFinishedTrialError(
                            f"Trial#{report.trial_id} has already finished and can not be updated."
                        )
                    else:  # a step repeated within the batch: the later report wins, as in order
                        rows[(report.trial_id, report.step)] = _row(report)
                if rows:
                    connection.execute(_upsert(list(rows.values())))
        except Exception as error:  # noqa: BLE001 - nothing was committed: every caller gets the error
            for report in batch:
                report.done.set_exception(error)
            return
        for report in batch:
            problem = refused.get(id(report))
            if problem is None:
                report.done.set_result(None)
            else:
                report.done.set_exception(problem)


def _row(report: _Report) -> dict[str, object]:
    value, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(report.value)
    assert value is None or math.isfinite(value)
    return {"trial_id": report.trial_id, "step": report.step, "intermediate_value": value,
            "intermediate_value_type": kind}
