"""Who owns what: study ids to names and trial ids to (study, number, state), cached.

A study's id and name never change, nor does the study or number of a trial, nor the state of a
finished trial: those are cached for the life of the process. A running trial's state is read
again after ``running_ttl_s``, so a trial the controller ended elsewhere stops being writable
within that time (Optuna's storage also refuses writes to a finished trial, in its transaction).
That state may come from the study's trial snapshot (``snapshots.StudySnapshots``) when the
snapshot was read within ``running_ttl_s``: busy studies are refreshed twice a second anyway,
so a report needs no query of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy
from optuna.trial import TrialState

_TRIAL = sqlalchemy.text(
    "SELECT t.study_id, s.study_name, t.number, t.state FROM trials t "
    "JOIN studies s ON s.study_id = t.study_id WHERE t.trial_id = :trial_id"
)
_STUDY = sqlalchemy.text("SELECT study_name FROM studies WHERE study_id = :study_id")


class NeedsDatabase(Exception):
    """Asked with ``cached_only``, and the answer needs a query: ask again where waiting is fine."""


@dataclass(frozen=True)
class TrialInfo:
    study_id: int
    study: str
    number: int
    state: TrialState
    read_at: float


class Directory:
    """Cached lookups on the study tables Optuna's ``RDBStorage`` keeps."""

    def __init__(
        self,
        engine: sqlalchemy.Engine,
        running_ttl_s: float = 1.0,
        snapshot_state: Callable[[int, int], tuple[TrialState, float] | None] | None = None,
    ) -> None:
        self._engine = engine
        self._snapshot_state = snapshot_state
        self._ttl = running_ttl_s
        self._studies: dict[int, str] = {}
        self._trials: dict[int, TrialInfo] = {}
        self._lock = threading.Lock()

    def study_name(self, study_id: int, cached_only: bool = False) -> str | None:
        cached = self._studies.get(study_id)
        if cached is not None:
            return cached
        if cached_only:
            raise NeedsDatabase
        with self._engine.connect() as connection:
            name = connection.execute(_STUDY, {"study_id": study_id}).scalar()
        if name is None:
            return None
        with self._lock:
            self._studies[study_id] = str(name)
        return str(name)

    def trial(self, trial_id: int, fresh_state: bool = False, cached_only: bool = False) -> TrialInfo | None:
        """The trial's owner and number; with ``fresh_state``, a running state at most
        ``running_ttl_s`` old (a finished state is final). With ``cached_only``, NeedsDatabase
        rather than a query."""
        now = time.monotonic()
        cached = self._trials.get(trial_id)
        if cached is not None and (
            not fresh_state or cached.state.is_finished() or now - cached.read_at < self._ttl
        ):
            return cached
        if cached is not None and self._snapshot_state is not None:
            seen = self._snapshot_state(cached.study_id, trial_id)
            if seen is not None and now - seen[1] < self._ttl:
                info = TrialInfo(cached.study_id, cached.study, cached.number, seen[0], seen[1])
                with self._lock:
                    self._trials[trial_id] = info
                return info
        if cached_only:
            raise NeedsDatabase
        with self._engine.connect() as connection:
            row = connection.execute(_TRIAL, {"trial_id": trial_id}).first()
        if row is None:
            return None
        state = row[3] if isinstance(row[3], TrialState) else TrialState[str(row[3])]
        info = TrialInfo(int(row[0]), str(row[1]), int(row[2]), state, now)
        with self._lock:
            self._trials[trial_id] = info
            self._studies[info.study_id] = info.study
        return info

    def record_state(self, trial_id: int, state: TrialState) -> None:
        """What a call through this gateway just stored (a told trial is final at once)."""
        with self._lock:
            cached = self._trials.get(trial_id)
            if cached is not None:
                self._trials[trial_id] = TrialInfo(
                    cached.study_id, cached.study, cached.number, state, time.monotonic()
                )
