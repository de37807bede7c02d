"""Optuna's RDB storage with its read of trials done in SQL Core instead of the ORM.

Every sampler and pruner call reads the study's trials: Optuna's cache asks the database for
the unfinished and newer ones each time (``RDBStorage._get_trials``), and a worker's
``should_prune`` makes that read once per reported step. Through the ORM one such read of a
handful of trials costs about 7 ms of CPU (a session, six queries with ``selectinload``, an ORM
object per parameter, attribute and step); on a study of short trials that was a sixth of a
worker's time and a large part of the asking process's. The same rows read with precompiled
Core statements and put into ``FrozenTrial``s directly cost about a quarter of that, and a
whole study about a tenth (``tests/storage/test_trial_reads.py`` holds the two readers equal).

On PostgreSQL (the controller's and the gateway's database) one statement brings each trial as
one row with its children aggregated into arrays; elsewhere (the embedded SQLite file) each child
table is read by id.

What is read is exactly Optuna's: the same filter (states, ``included_trial_ids`` below the
watermark, ``trial_id_greater_than``), trials by id, parameters in the order they were set,
values and intermediate values decoded from their stored form, and a ``KeyError`` for a study
that does not exist. Writes stay Optuna's own.

This is the one place that reads trial rows: :class:`StoredTrial` is a trial as stored (internal
parameter values, attributes as JSON text), which the export, the operator and every worker turn
into ``FrozenTrial``s (:func:`read_trials`) and the trial gateway into gRPC messages.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

CHUNK = 500  # ids per IN list, as SQLAlchemy's selectinload batches them (SQLite bounds variables)

_IDS: sqlalchemy.BindParameter[Any] = sqlalchemy.bindparam("ids", expanding=True)
_TRIALS = models.TrialModel.__table__
_STUDIES = models.StudyModel.__table__
_STUDY_EXISTS = sqlalchemy.select(_STUDIES.c.study_id).where(
    _STUDIES.c.study_id == sqlalchemy.bindparam("study_id")
)
_TRIAL_COLUMNS = (
    _TRIALS.c.trial_id,
    _TRIALS.c.number,
    _TRIALS.c.state,
    _TRIALS.c.datetime_start,
    _TRIALS.c.datetime_complete,
)
_TRIAL_ROWS = sqlalchemy.select(*_TRIAL_COLUMNS).where(_TRIALS.c.study_id == sqlalchemy.bindparam("study_id"))
_ONE_TRIAL = sqlalchemy.select(*_TRIAL_COLUMNS).where(_TRIALS.c.trial_id == sqlalchemy.bindparam("trial_id"))
_TRIAL_ID = sqlalchemy.select(_TRIALS.c.trial_id).where(
    _TRIALS.c.study_id == sqlalchemy.bindparam("study_id"), _TRIALS.c.number == sqlalchemy.bindparam("number")
)


def _children(model: type, *columns: str) -> sqlalchemy.Select[Any]:
    table = model.__table__  # type: ignore[attr-defined]
    return sqlalchemy.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
        table.c.trial_id.in_(_IDS)
    )


_PARAMS = _children(models.TrialParamModel, "param_id", "param_name", "param_value", "distribution_json")
_VALUES = _children(models.TrialValueModel, "objective", "value", "value_type")
_STEPS = _children(
    models.TrialIntermediateValueModel, "step", "intermediate_value", "intermediate_value_type"
)
_USER_ATTRS = _children(models.TrialUserAttributeModel, "key", "value_json")
_SYSTEM_ATTRS = _children(models.TrialSystemAttributeModel, "key", "value_json")

# PostgreSQL: one row per trial, each child table aggregated in the order Optuna reads it
# (parameters in the order they were set). An aggregate over no rows is NULL.
_AGGREGATED = """
SELECT t.trial_id, t.number, t.state::text, t.datetime_start, t.datetime_complete,
       p.names, p.internals, p.distributions,
       v.objectives, v.numbers, v.kinds,
       s.steps, s.numbers, s.kinds,
       u.keys, u.texts, y.keys, y.texts
FROM trials AS t
LEFT JOIN LATERAL (
    SELECT array_agg(param_name ORDER BY param_id) AS names,
           array_agg(param_value ORDER BY param_id) AS internals,
           array_agg(distribution_json ORDER BY param_id) AS distributions
    FROM trial_params WHERE trial_id = t.trial_id) AS p ON true
LEFT JOIN LATERAL (
    SELECT array_agg(objective) AS objectives, array_agg(value) AS numbers,
           array_agg(value_type::text) AS kinds
    FROM trial_values WHERE trial_id = t.trial_id) AS v ON true
LEFT JOIN LATERAL (
    SELECT array_agg(step) AS steps, array_agg(intermediate_value) AS numbers,
           array_agg(intermediate_value_type::text) AS kinds
    FROM trial_intermediate_values WHERE trial_id = t.trial_id) AS s ON true
LEFT JOIN LATERAL (
    SELECT array_agg(key) AS keys, array_agg(value_json) AS texts
    FROM trial_user_attributes WHERE trial_id = t.trial_id) AS u ON true
LEFT JOIN LATERAL (
    SELECT array_agg(key) AS keys, array_agg(value_json) AS texts
    FROM trial_system_attributes WHERE trial_id = t.trial_id) AS y ON true
"""
_AGGREGATED_STUDY = sqlalchemy.text(
    _AGGREGATED
    + """WHERE t.study_id = :study_id
  AND (CAST(:states AS text[]) IS NULL OR t.state::text = ANY(CAST(:states AS text[])))
  AND (t.trial_id > :greater_than OR t.trial_id = ANY(CAST(:included AS integer[])))
ORDER BY t.trial_id"""
)
_AGGREGATED_TRIAL = sqlalchemy.text(_AGGREGATED + "WHERE t.trial_id = :trial_id")
# stored enum names (the statement reads them as text) to the enums Optuna decodes with
_VALUE_KINDS = {kind.name: kind for kind in models.TrialValueModel.TrialValueType}
_STEP_KINDS = {kind.name: kind for kind in models.TrialIntermediateValueModel.TrialIntermediateValueType}


@dataclass(slots=True)
class StoredTrial:
    """One trial as its rows hold it: parameters in their internal representation with their
    distribution's JSON (in the order they were set), attributes as JSON text, values and
    intermediate values decoded (infinities and NaN restored), times in local wall clock (as
    Optuna's models show them)."""

    trial_id: int
    number: int
    state: TrialState
    datetime_start: datetime | None
    datetime_complete: datetime | None
    params: list[tuple[str, float, str]] = field(default_factory=list)
    values: list[float] | None = None
    intermediate_values: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, str] = field(default_factory=dict)
    system_attrs: dict[str, str] = field(default_factory=dict)


def local_time(stored: datetime | None) -> datetime | None:
    """A stored trial time as Optuna's models show it: stored in UTC, shown as local wall clock."""
    if stored is None:
        return None
    return stored.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def stored_now() -> datetime:
    """The current time as Optuna's models store it (naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


@functools.lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> BaseDistribution:
    """Parsed once per distinct JSON: a study has one per parameter (the same object is shared,
    as Optuna's own cache of distributions shares it)."""
    return json_to_distribution(distribution_json)


class CoreReadStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` whose ``_get_trials`` reads without the ORM."""

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        return read_trials(
            self.engine, study_id, states, included_trial_ids, trial_id_greater_than
        )


def read_trials(
    engine: sqlalchemy.Engine,
    study_id: int,
    states: Container[TrialState] | None = None,
    included_trial_ids: Iterable[int] = (),
    trial_id_greater_than: int = -1,
) -> list[FrozenTrial]:
    """What ``RDBStorage._get_trials`` returns, for the same arguments (by default every trial),
    by id. KeyError: no such study."""
    stored = read_stored(engine, study_id, states, included_trial_ids, trial_id_greater_than)
    return [frozen_trial(trial) for trial in stored]


def read_stored(
    engine: sqlalchemy.Engine,
    study_id: int,
    states: Container[TrialState] | None = None,
    included_trial_ids: Iterable[int] = (),
    trial_id_greater_than: int = -1,
) -> list[StoredTrial]:
    """The study's trials with an id above ``trial_id_greater_than`` or in ``included_trial_ids``
    (Optuna's ``_get_trials`` filter), in ``states`` when given, by id. KeyError: no such study.

    On PostgreSQL one statement (:func:`read_stored_aggregated`), elsewhere one query per table
    (:func:`read_stored_by_table`): the same trials either way."""
    read = read_stored_aggregated if engine.dialect.name == "postgresql" else read_stored_by_table
    return read(engine, study_id, states, included_trial_ids, trial_id_greater_than)


def read_stored_by_table(
    engine: sqlalchemy.Engine,
    study_id: int,
    states: Container[TrialState] | None = None,
    included_trial_ids: Iterable[int] = (),
    trial_id_greater_than: int = -1,
) -> list[StoredTrial]:
    """:func:`read_stored` on any database: the trials, then each child table by id."""
    included = sorted({i for i in included_trial_ids if i <= trial_id_greater_than})
    statement = _TRIAL_ROWS
    if states is not None:
        assert isinstance(states, Iterable)
        statement = statement.where(_TRIALS.c.state.in_(list(states)))
    if included and trial_id_greater_than > -1:
        statement = statement.where(
            sqlalchemy.or_(
                _TRIALS.c.trial_id.in_(included), _TRIALS.c.trial_id > trial_id_greater_than
            )
        )
    elif trial_id_greater_than > -1:
        statement = statement.where(_TRIALS.c.trial_id > trial_id_greater_than)
    statement = statement.order_by(_TRIALS.c.trial_id)
    with engine.connect() as connection:
        rows = connection.execute(statement, {"study_id": study_id}).all()
        if not rows:
            if connection.execute(_STUDY_EXISTS, {"study_id": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            return []
        return _build(connection, rows)


def read_stored_aggregated(
    engine: sqlalchemy.Engine,
    study_id: int,
    states: Container[TrialState] | None = None,
    included_trial_ids: Iterable[int] = (),
    trial_id_greater_than: int = -1,
) -> list[StoredTrial]:
    """:func:`read_stored` on PostgreSQL, in one statement: each trial one row, its children
    aggregated into arrays that psycopg2 decodes in C (PostgreSQL, not Python, does the joining).
    A snapshot refresh of 20 running trials costs half the CPU of the six queries
    (``bench/gateway_reads.py``)."""
    assert states is None or isinstance(states, Iterable)
    parameters = {
        "study_id": study_id,
        "states": None if states is None else [state.name for state in states],
        "greater_than": trial_id_greater_than,
        "included": sorted({i for i in included_trial_ids if i <= trial_id_greater_than}),
    }
    with engine.connect() as connection:
        rows = connection.execute(_AGGREGATED_STUDY, parameters).all()
        if not rows and connection.execute(_STUDY_EXISTS, {"study_id": study_id}).first() is None:
            raise KeyError(models.NOT_FOUND_MSG)
    return [_aggregated(row) for row in rows]


def read_stored_trial(engine: sqlalchemy.Engine, trial_id: int) -> StoredTrial:
    """One trial by id. KeyError: no such trial."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            row = connection.execute(_AGGREGATED_TRIAL, {"trial_id": trial_id}).first()
            if row is None:
                raise KeyError(models.NOT_FOUND_MSG)
            return _aggregated(row)
        rows = connection.execute(_ONE_TRIAL, {"trial_id": trial_id}).all()
        if not rows:
            raise KeyError(models.NOT_FOUND_MSG)
        return _build(connection, rows)[0]


def trial_id_of(engine: sqlalchemy.Engine, study_id: int, number: int) -> int | None:
    """The id of the study's trial ``number``; None when there is none."""
    with engine.connect() as connection:
        found: int | None = connection.execute(_TRIAL_ID, {"study_id": study_id, "number": number}).scalar()
        return found


def frozen_trial(trial: StoredTrial) -> FrozenTrial:
    """The ``FrozenTrial`` Optuna's RDB storage builds from the same rows."""
    external: dict[str, Any] = {}
    distributions: dict[str, BaseDistribution] = {}
    for name, internal, distribution_json in trial.params:
        distribution = _distribution(distribution_json)
        external[name] = distribution.to_external_repr(internal)
        distributions[name] = distribution
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=trial.values,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=external,
        distributions=distributions,
        user_attrs={key: json.loads(text) for key, text in trial.user_attrs.items()},
        system_attrs={key: json.loads(text) for key, text in trial.system_attrs.items()},
        intermediate_values=trial.intermediate_values,
        trial_id=trial.trial_id,
    )


def _build(connection: sqlalchemy.Connection, rows: Sequence[Any]) -> list[StoredTrial]:
    trials = {
        trial_id: StoredTrial(trial_id, number, state, local_time(started), local_time(completed))
        for trial_id, number, state, started, completed in rows
    }
    ids = list(trials)
    params: dict[int, list[tuple[int, str, float, str]]] = {}
    for trial_id, param_id, name, value, distribution_json in _each(connection, _PARAMS, ids):
        params.setdefault(trial_id, []).append((param_id, name, value, distribution_json))
    for trial_id, in_order in params.items():
        trials[trial_id].params = [(name, value, text) for _, name, value, text in sorted(in_order)]
    values: dict[int, dict[int, float]] = {}
    for trial_id, objective, value, value_type in _each(connection, _VALUES, ids):
        values.setdefault(trial_id, {})[objective] = models.TrialValueModel.stored_repr_to_value(
            value, value_type
        )
    for trial_id, by_objective in values.items():
        trials[trial_id].values = [by_objective[k] for k in range(len(by_objective))]
    for trial_id, step, value, value_type in _each(connection, _STEPS, ids):
        trials[trial_id].intermediate_values[step] = (
            models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, value_type)
        )
    for trial_id, key, value_json in _each(connection, _USER_ATTRS, ids):
        trials[trial_id].user_attrs[key] = value_json
    for trial_id, key, value_json in _each(connection, _SYSTEM_ATTRS, ids):
        trials[trial_id].system_attrs[key] = value_json
    return list(trials.values())


def _aggregated(row: Sequence[Any]) -> StoredTrial:
    (trial_id, number, state, started, completed, names, internals, distributions,
     objectives, numbers, kinds, steps, step_numbers, step_kinds,
     user_keys, user_texts, system_keys, system_texts) = row
    trial = StoredTrial(trial_id, number, TrialState[state], local_time(started), local_time(completed))
    if names is not None:
        trial.params = list(zip(names, internals, distributions, strict=True))
    if objectives is not None:
        by_objective = {
            objective: models.TrialValueModel.stored_repr_to_value(value, _VALUE_KINDS[kind])
            for objective, value, kind in zip(objectives, numbers, kinds, strict=True)
        }
        trial.values = [by_objective[k] for k in range(len(by_objective))]
    if steps is not None:
        trial.intermediate_values = {
            step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                value, _STEP_KINDS[kind]
            )
            for step, value, kind in zip(steps, step_numbers, step_kinds, strict=True)
        }
    if user_keys is not None:
        trial.user_attrs = dict(zip(user_keys, user_texts, strict=True))
    if system_keys is not None:
        trial.system_attrs = dict(zip(system_keys, system_texts, strict=True))
    return trial


def _each(
    connection: sqlalchemy.Connection, statement: sqlalchemy.Select[Any], ids: list[int]
) -> Iterator[Any]:
    for start in range(0, len(ids), CHUNK):
        yield from connection.execute(statement, {"ids": ids[start : start + CHUNK]})
