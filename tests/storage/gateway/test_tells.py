"""The gateway's tell (one Core transaction) stores what Optuna's own tell stores, and refuses what
Optuna refuses, on SQLite and PostgreSQL; through the gateway a told trial is final."""

from __future__ import annotations

import math
import time

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from controller.gateway.tells import finish_trial
from tests.storage.gateway.world import World
from tests.support.gateway import RunningGateway

pytestmark = pytest.mark.storage


def _twin_trials(storage: RDBStorage, directions: list[str]) -> tuple[int, int]:
    """Two running trials, alike but for their ids: one told by Optuna, one by the gateway."""
    study = optuna.create_study(storage=storage, directions=directions)
    first, second = study.ask(), study.ask()
    for trial in (first, second):
        trial.suggest_float("x", 0.0, 1.0)
        trial.storage.set_trial_intermediate_value(trial._trial_id, 0, 0.5)
    return first._trial_id, second._trial_id


def _stored(trial: FrozenTrial) -> tuple[object, ...]:
    values = None if trial.values is None else ["nan" if math.isnan(v) else v for v in trial.values]
    return trial.state, values, trial.datetime_start is not None, trial.datetime_complete is not None


@pytest.mark.parametrize(
    ("state", "values", "directions"),
    [
        (TrialState.COMPLETE, [0.25], ["minimize"]),
        (TrialState.COMPLETE, [math.inf, -math.inf], ["minimize", "maximize"]),
        (TrialState.PRUNED, [0.75], ["minimize"]),
        (TrialState.PRUNED, None, ["minimize"]),
        (TrialState.FAIL, None, ["minimize"]),
    ],
    ids=["complete", "complete-infinite-multi", "pruned-with-value", "pruned", "fail"],
)
def test_a_tell_stores_what_optunas_tell_stores(
    storage_url: str, state: TrialState, values: list[float] | None, directions: list[str]
) -> None:
    storage = RDBStorage(storage_url)
    by_optuna, by_gateway = _twin_trials(storage, directions)
    assert storage.set_trial_state_values(by_optuna, state, values)
    assert finish_trial(storage.engine, by_gateway, state, values)
    assert _stored(storage.get_trial(by_gateway)) == _stored(storage.get_trial(by_optuna))
    assert storage.get_trial(by_gateway).datetime_complete is not None


def test_a_tell_stamps_the_completion_time_as_optuna_does_in_any_time_zone(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna stores times in UTC and shows them in local time; the gateway used to store its local
    wall clock, so away from UTC a trial seemed to end hours before or after it started."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30
    time.tzset()
    try:
        storage = RDBStorage(storage_url)
        by_optuna, by_gateway = _twin_trials(storage, ["minimize"])
        assert storage.set_trial_state_values(by_optuna, TrialState.COMPLETE, [0.5])
        assert finish_trial(storage.engine, by_gateway, TrialState.COMPLETE, [0.5])
        told = storage.get_trial(by_gateway)
        assert told.datetime_complete is not None and told.datetime_start is not None
        assert abs((told.datetime_complete - told.datetime_start).total_seconds()) < 60
        optunas = storage.get_trial(by_optuna).datetime_complete
        assert optunas is not None and abs((told.datetime_complete - optunas).total_seconds()) < 60
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_finished_or_unknown_trial_is_not_written_and_optuna_says_why(storage_url: str) -> None:
    storage = RDBStorage(storage_url)
    trial_id, _ = _twin_trials(storage, ["minimize"])
    assert finish_trial(storage.engine, trial_id, TrialState.COMPLETE, [1.0])
    # Told again (a retried call), or told something else: nothing changes.
    assert not finish_trial(storage.engine, trial_id, TrialState.FAIL, None)
    assert not finish_trial(storage.engine, trial_id, TrialState.COMPLETE, [9.0])
    assert storage.get_trial(trial_id).values == [1.0]
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    assert not finish_trial(storage.engine, 987_654, TrialState.COMPLETE, [1.0])


def test_a_waiting_trial_can_be_told_as_with_optuna(storage_url: str) -> None:
    storage = RDBStorage(storage_url)
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 0.5})
    waiting = study.trials[0]
    assert waiting.state == TrialState.WAITING
    assert finish_trial(storage.engine, waiting._trial_id, TrialState.FAIL, None)
    assert storage.get_trial(waiting._trial_id).state == TrialState.FAIL


def test_through_the_gateway_a_told_trial_is_final(gateway: RunningGateway, world: World) -> None:
    client = gateway.client(world.claims())
    assert client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [3.0])
    with pytest.raises(Exception):  # noqa: B017 - refused at the gate or by the storage: either way, not stored
        client.set_trial_state_values(world.my_trial_id, TrialState.FAIL)
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    assert stored.state == TrialState.COMPLETE and stored.values == [3.0]
    assert stored.datetime_complete is not None
    client.close()
