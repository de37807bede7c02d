"""A study's trials read straight into Optuna's gRPC messages: what ``RDBStorage._get_trials`` reads,
without the ORM.

The snapshots refresh every busy study twice a second; through the ORM (a session, six
``selectinload`` queries, ``FrozenTrial``s, then encoding) that was most of the gateway's CPU.
Here the same rows are read with precompiled Core statements on one connection and put into
``api_pb2.Trial`` as stored: parameters are already in their internal representation, and
distributions and attributes already JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import sqlalchemy
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import DATETIME_FORMAT, _to_proto_trial_state
from optuna.storages._rdb import models

_IDS: sqlalchemy.BindParameter[Any] = sqlalchemy.bindparam("ids", expanding=True)
_T = models.TrialModel.__table__
_STUDY = sqlalchemy.select(models.StudyModel.__table__.c.study_id).where(
    models.StudyModel.__table__.c.study_id == sqlalchemy.bindparam("study_id")
)
_TRIAL_COLUMNS = (_T.c.trial_id, _T.c.number, _T.c.state, _T.c.datetime_start, _T.c.datetime_complete)
_ALL = (
    sqlalchemy.select(*_TRIAL_COLUMNS)
    .where(_T.c.study_id == sqlalchemy.bindparam("study_id"))
    .order_by(_T.c.trial_id)
)
_ONE = sqlalchemy.select(*_TRIAL_COLUMNS).where(_T.c.trial_id == sqlalchemy.bindparam("trial_id"))
_NEWER = _ALL.where(_T.c.trial_id > sqlalchemy.bindparam("greater_than"))
_NEWER_OR = _ALL.where(
    sqlalchemy.or_(_T.c.trial_id > sqlalchemy.bindparam("greater_than"), _T.c.trial_id.in_(_IDS))
)


def _children(model: type, *columns: str) -> sqlalchemy.Select[Any]:
    table = model.__table__  # type: ignore[attr-defined]
    return sqlalchemy.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
        table.c.trial_id.in_(_IDS)
    )


_PARAMS = _children(models.TrialParamModel, "param_name", "param_value", "distribution_json")
_VALUES = _children(models.TrialValueModel, "objective", "value", "value_type")
_STEPS = _children(
    models.TrialIntermediateValueModel, "step", "intermediate_value", "intermediate_value_type"
)
_USER = _children(models.TrialUserAttributeModel, "key", "value_json")
_SYSTEM = _children(models.TrialSystemAttributeModel, "key", "value_json")

_VALUE = models.TrialValueModel.TrialValueType
_STEP = models.TrialIntermediateValueModel.TrialIntermediateValueType


def read_trials(
    engine: sqlalchemy.Engine, study_id: int, included: Iterable[int], greater_than: int
) -> list[tuple[api_pb2.Trial, bool]]:
    """(trial, finished) for the study's trials with an id above ``greater_than`` or in
    ``included`` (Optuna's ``_get_trials`` filter), by id. KeyError: no such study."""
    ids = sorted(i for i in included if i <= greater_than)
    params = {"study_id": study_id, "greater_than": greater_than, "ids": ids}
    statement = _NEWER_OR if ids and greater_than > -1 else _NEWER if greater_than > -1 else _ALL
    with engine.connect() as connection:
        rows = connection.execute(statement, params).all()
        if not rows:
            if connection.execute(_STUDY, {"study_id": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            return []
        return _build(connection, rows)


_TRIAL_ID = sqlalchemy.select(_T.c.trial_id).where(
    _T.c.study_id == sqlalchemy.bindparam("study_id"), _T.c.number == sqlalchemy.bindparam("number")
)


def trial_id_of(engine: sqlalchemy.Engine, study_id: int, number: int) -> int | None:
    """The id of the study's trial ``number`` (what ``GetTrialIdFromStudyIdTrialNumber`` answers);
    None when there is none."""
    with engine.connect() as connection:
        return connection.execute(_TRIAL_ID, {"study_id": study_id, "number": number}).scalar()


def read_trial(engine: sqlalchemy.Engine, trial_id: int) -> api_pb2.Trial:
    """One trial (what ``GetTrial`` answers). KeyError: no such trial."""
    with engine.connect() as connection:
        rows = connection.execute(_ONE, {"trial_id": trial_id}).all()
        if not rows:
            raise KeyError(models.NOT_FOUND_MSG)
        return _build(connection, rows)[0][0]


def _build(connection: sqlalchemy.Connection, rows: Any) -> list[tuple[api_pb2.Trial, bool]]:
    trials: dict[int, api_pb2.Trial] = {}
    finished: dict[int, bool] = {}
    for trial_id, number, state, started, completed in rows:
        trials[trial_id] = api_pb2.Trial(
            trial_id=trial_id, number=number, state=_to_proto_trial_state(state),
            datetime_start=started.strftime(DATETIME_FORMAT) if started else "",
            datetime_complete=completed.strftime(DATETIME_FORMAT) if completed else "",
        )
        finished[trial_id] = state.is_finished()
    found = {"ids": list(trials)}
    for trial_id, name, value, distribution in connection.execute(_PARAMS, found):
        trials[trial_id].params[name] = value
        trials[trial_id].distributions[name] = distribution
    values: dict[int, dict[int, float]] = {}
    for trial_id, objective, value, kind in connection.execute(_VALUES, found):
        values.setdefault(trial_id, {})[objective] = (
            math.inf if kind == _VALUE.INF_POS else -math.inf if kind == _VALUE.INF_NEG else value
        )
    for trial_id, by_objective in values.items():
        trials[trial_id].values.extend(by_objective[k] for k in sorted(by_objective))
    for trial_id, step, value, kind in connection.execute(_STEPS, found):
        trials[trial_id].intermediate_values[step] = (
            math.nan if kind == _STEP.NAN
            else math.inf if kind == _STEP.INF_POS
            else -math.inf if kind == _STEP.INF_NEG
            else value
        )
    for trial_id, key, value_json in connection.execute(_USER, found):
        trials[trial_id].user_attributes[key] = value_json
    for trial_id, key, value_json in connection.execute(_SYSTEM, found):
        trials[trial_id].system_attributes[key] = value_json
    return [(trials[i], finished[i]) for i in trials]
