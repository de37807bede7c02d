"""A study's trials as Optuna's gRPC messages, read in one statement per refresh.

The snapshots refresh every busy study twice a second; through the ORM (a session, six
``selectinload`` queries, ``FrozenTrial``s, then encoding) that was most of the gateway's CPU, and
through SQL Core (:mod:`trial_worker.trial_reads`: still six queries, each row a Python tuple)
about a third. On PostgreSQL, which the gateway always has, one statement brings each trial as
one row, its parameters, values, steps and attributes aggregated into arrays that psycopg2 decodes
in C; PostgreSQL, which has CPU to spare, does the joining. Other databases (the tests' SQLite)
take the six queries. Either way the rows go into ``api_pb2.Trial`` as stored: parameters already
in their internal representation, distributions and attributes already JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import DATETIME_FORMAT, _to_proto_trial_state
from optuna.storages._rdb import models
from optuna.trial import TrialState

from trial_worker.trial_reads import (
    StoredTrial,
    local_time,
    read_stored,
    read_stored_trial,
    trial_id_of,
)

__all__ = ["read_trial", "read_trials", "trial_id_of"]

# One row per trial; each child table aggregated in the order Optuna reads it (parameters in the
# order they were set). An aggregate over no rows is NULL: a trial without steps reads as None.
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
_STUDY_TRIALS = sqlalchemy.text(
    _AGGREGATED
    + """WHERE t.study_id = :study_id
  AND (t.trial_id > :greater_than OR t.trial_id = ANY(CAST(:included AS integer[])))
ORDER BY t.trial_id"""
)
_ONE_TRIAL = sqlalchemy.text(_AGGREGATED + "WHERE t.trial_id = :trial_id")
_STUDY_EXISTS = sqlalchemy.text("SELECT 1 FROM studies WHERE study_id = :study_id")

# stored enum names (the statement reads them as text) to the enums Optuna decodes with
_VALUE_KINDS = {kind.name: kind for kind in models.TrialValueModel.TrialValueType}
_STEP_KINDS = {kind.name: kind for kind in models.TrialIntermediateValueModel.TrialIntermediateValueType}


def read_trials(
    engine: sqlalchemy.Engine, study_id: int, included: Iterable[int], greater_than: int
) -> list[tuple[api_pb2.Trial, bool]]:
    """(trial, finished) for the study's trials with an id above ``greater_than`` or in
    ``included`` (Optuna's ``_get_trials`` filter), by id. KeyError: no such study."""
    if engine.dialect.name != "postgresql":
        stored = read_stored(engine, study_id, None, included, greater_than)
        return [(_message(trial), trial.state.is_finished()) for trial in stored]
    below = sorted({i for i in included if i <= greater_than})
    with engine.connect() as connection:
        rows = connection.execute(
            _STUDY_TRIALS, {"study_id": study_id, "greater_than": greater_than, "included": below}
        ).all()
        if not rows and connection.execute(_STUDY_EXISTS, {"study_id": study_id}).first() is None:
            raise KeyError(models.NOT_FOUND_MSG)
    return [_aggregated(row) for row in rows]


def read_trial(engine: sqlalchemy.Engine, trial_id: int) -> api_pb2.Trial:
    """One trial (what ``GetTrial`` answers). KeyError: no such trial."""
    if engine.dialect.name != "postgresql":
        return _message(read_stored_trial(engine, trial_id))
    with engine.connect() as connection:
        row = connection.execute(_ONE_TRIAL, {"trial_id": trial_id}).first()
    if row is None:
        raise KeyError(models.NOT_FOUND_MSG)
    return _aggregated(row)[0]


def _aggregated(row: Sequence[Any]) -> tuple[api_pb2.Trial, bool]:
    (trial_id, number, state, started, completed, names, internals, distributions,
     objectives, numbers, kinds, steps, step_numbers, step_kinds,
     user_keys, user_texts, system_keys, system_texts) = row
    trial = StoredTrial(trial_id, number, TrialState[state], local_time(started), local_time(completed))
    if names is not None:
        trial.params = list(zip(names, internals, distributions, strict=True))
    if objectives is not None:
        by_objective = {
            objective: models.TrialValueModel.stored_repr_to_value(number_, _VALUE_KINDS[kind])
            for objective, number_, kind in zip(objectives, numbers, kinds, strict=True)
        }
        trial.values = [by_objective[k] for k in range(len(by_objective))]
    if steps is not None:
        trial.intermediate_values = {
            step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                number_, _STEP_KINDS[kind]
            )
            for step, number_, kind in zip(steps, step_numbers, step_kinds, strict=True)
        }
    if user_keys is not None:
        trial.user_attrs = dict(zip(user_keys, user_texts, strict=True))
    if system_keys is not None:
        trial.system_attrs = dict(zip(system_keys, system_texts, strict=True))
    return _message(trial), trial.state.is_finished()


def _message(trial: StoredTrial) -> api_pb2.Trial:
    started, completed = trial.datetime_start, trial.datetime_complete
    message = api_pb2.Trial(
        trial_id=trial.trial_id,
        number=trial.number,
        state=_to_proto_trial_state(trial.state),
        datetime_start=started.strftime(DATETIME_FORMAT) if started else "",
        datetime_complete=completed.strftime(DATETIME_FORMAT) if completed else "",
        values=trial.values or (),
        intermediate_values=trial.intermediate_values,
        user_attributes=trial.user_attrs,
        system_attributes=trial.system_attrs,
    )
    for name, internal, distribution_json in trial.params:
        message.params[name] = internal
        message.distributions[name] = distribution_json
    return message
