"""A trial's final state and values written in one SQL Core transaction, without the ORM.

Every trial ends with a tell (``SetTrialStateValues``). Optuna's own path opens an ORM session,
reads the trial ``FOR UPDATE``, looks up each value before writing it, and commits: several
round trips and ORM objects per tell, which at a thousand concurrent trials was one of the
larger shares of the gateway's CPU (``bench/gateway_scale.py``). Here the tell is one
conditional ``UPDATE`` that only an unfinished trial matches, and the values written with it,
in one transaction. When the ``UPDATE`` matches nothing (the trial finished already, or does not
exist) nothing was written and Optuna's own path answers, so callers get Optuna's errors
(``UpdateFinishedTrialError``, ``KeyError``) exactly as before. Only tells to a finished state
take this path; a claim (WAITING to RUNNING) stays Optuna's.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState

from trial_worker.trial_reads import stored_now

_TRIALS = models.TrialModel.__table__
_VALUES = models.TrialValueModel.__table__
_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)

_FINISH = (
    sqlalchemy.update(_TRIALS)
    .where(_TRIALS.c.trial_id == sqlalchemy.bindparam("id"), _TRIALS.c.state.in_(_UNFINISHED))
    .values(state=sqlalchemy.bindparam("new_state"), datetime_complete=sqlalchemy.bindparam("now"))
)
_CLEAR_VALUES = sqlalchemy.delete(_VALUES).where(_VALUES.c.trial_id == sqlalchemy.bindparam("id"))


def finish_trial(
    engine: sqlalchemy.Engine, trial_id: int, state: TrialState, values: Sequence[float] | None
) -> bool:
    """Store a finished ``state`` and its ``values``, as ``RDBStorage.set_trial_state_values``
    does; False (nothing written) when the trial is not running or waiting."""
    assert state.is_finished(), state
    rows = []
    for objective, value in enumerate(values or ()):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        rows.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
    with engine.begin() as connection:
        # Optuna's models store times as naive UTC (and show them in local time).
        finished = connection.execute(_FINISH, {"id": trial_id, "new_state": state, "now": stored_now()})
        if finished.rowcount != 1:
            return False
        if rows:
            connection.execute(_CLEAR_VALUES, {"id": trial_id})  # as Optuna's update of a value
            connection.execute(sqlalchemy.insert(_VALUES), rows)
    return True
