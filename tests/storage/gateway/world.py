"""Two teams' studies in one database, as the controller leaves them, and how to compare the
database before and after an attempt (the gateway storage tests' common ground)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from controller.gateway.tokens import TokenClaims

REPO_ROOT = Path(__file__).resolve().parents[3]
DENIED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


@dataclass(frozen=True)
class World:
    """Two teams' studies, as the controller leaves them: trials asked, RUNNING, a few finished."""

    url: str
    mine: str  # team-a's study
    theirs: str  # team-b's study
    mine_id: int
    theirs_id: int
    my_trial: int  # number 3 in team-a's study
    my_trial_id: int
    sibling_id: int  # trial 4 in team-a's study, RUNNING
    their_trial_id: int  # trial 0 in team-b's study, RUNNING

    def claims(self, trial: int | None = 3, **changes: Any) -> TokenClaims:
        fields: dict[str, Any] = {
            "namespace": "team-a",
            "study": self.mine,
            "trial": trial,
            "expires": int(time.time()) + 3600,
        }
        fields.update(changes)
        return TokenClaims(**fields)


def make_world(url: str) -> World:
    storage = RDBStorage(url)
    suffix = uuid.uuid4().hex[:8]
    mine, theirs = f"team-a/mlp/{suffix}", f"team-b/secret/{suffix}"
    mine_id = storage.create_new_study([StudyDirection.MINIMIZE], mine)
    theirs_id = storage.create_new_study([StudyDirection.MINIMIZE], theirs)
    storage.set_study_user_attr(theirs_id, "owner", "team-b")
    x = FloatDistribution(-10.0, 10.0)
    ids = []
    for number in range(5):  # 0-2 finished with curves (for the pruner), 3 mine, 4 a sibling
        trial_id = storage.create_new_trial(mine_id)
        storage.set_trial_param(trial_id, "x", float(number), x)
        if number < 3:
            for step in range(5):
                storage.set_trial_intermediate_value(trial_id, step, 1.0 + step * 0.1)
            storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0 + number])
        ids.append(trial_id)
    their_trial_id = storage.create_new_trial(theirs_id)
    storage.set_trial_param(their_trial_id, "x", 0.5, x)
    storage.set_trial_intermediate_value(their_trial_id, 0, 42.0)
    storage.engine.dispose()
    return World(url, mine, theirs, mine_id, theirs_id, 3, ids[3], ids[4], their_trial_id)


def snapshot(url: str) -> list[tuple[Any, ...]]:
    """Everything a refused call could have changed, read straight from PostgreSQL."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    queries = [
        "SELECT study_id, study_name FROM studies ORDER BY study_id",
        "SELECT study_id, key, value_json FROM study_user_attributes ORDER BY 1, 2",
        "SELECT study_id, key, value_json FROM study_system_attributes ORDER BY 1, 2",
        "SELECT trial_id, study_id, number, state::text FROM trials ORDER BY trial_id",
        "SELECT trial_id, param_name, param_value FROM trial_params ORDER BY 1, 2",
        "SELECT trial_id, step, intermediate_value FROM trial_intermediate_values ORDER BY 1, 2",
        "SELECT trial_id, objective, value FROM trial_values ORDER BY 1, 2",
        "SELECT trial_id, key, value_json FROM trial_user_attributes ORDER BY 1, 2",
        "SELECT trial_id, key, value_json FROM trial_system_attributes ORDER BY 1, 2",
    ]
    with engine.connect() as connection:
        rows = [tuple(connection.execute(sqlalchemy.text(q)).all()) for q in queries]
    engine.dispose()
    return rows


def assert_refused(
    action: Callable[[], object], *, codes: tuple[grpc.StatusCode, ...] = DENIED
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        action()
    error = raised.value
    assert error.code() in codes, (error.code(), error.details())
    assert error.details(), "a refusal says what was refused"
    return error
