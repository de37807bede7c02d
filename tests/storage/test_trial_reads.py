"""Trials read without the ORM are exactly the trials Optuna reads, on SQLite and PostgreSQL.

``trial_worker.trial_reads.CoreReadStorage`` replaces ``RDBStorage._get_trials``, which every
sampler, pruner and the controller's observation go through; a difference would change what
samplers propose and pruners decide. Each test compares the two readers on the same database.
"""

from __future__ import annotations

import math
import time

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.storages._grpc.servicer import _from_proto_trial
from optuna.trial import TrialState

from controller.gateway import trial_rows
from controller.studies.asking import ask_new_trial
from controller.studies.reading import AskingStorage
from controller.studies.storage import create_or_load_study, open_storage
from trial_worker import trial_reads
from trial_worker.trial_reads import CoreReadStorage, read_trials

pytestmark = pytest.mark.storage


def _fill(storage: RDBStorage, directions: list[str]) -> int:
    """A study with every kind of stored value, as objectives write them."""
    study = optuna.create_study(storage=storage, study_name="reads", directions=directions)

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        x = trial.suggest_float("x", 1e-3, 10.0, log=True)
        kind = trial.suggest_categorical("kind", ["a", "b", None, 3])
        if kind == "a":
            trial.suggest_int("depth", 1, 9, step=2)
        trial.set_user_attr("note", {"nested": [1, "two", None]})
        trial.storage.set_trial_system_attr(trial._trial_id, "sys", "value")
        for step, value in enumerate([x, math.inf, -math.inf, math.nan, 0.5]):
            # (what trial.report stores; it refuses multi-objective studies)
            trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
        number = trial.number
        if number % 5 == 3:
            raise optuna.TrialPruned()
        if number % 5 == 4:
            raise RuntimeError("a failed trial")
        values = (x, math.inf if number % 7 == 0 else -math.inf if number % 7 == 1 else x / 2)
        return values[0] if len(directions) == 1 else values[: len(directions)]

    study.optimize(objective, n_trials=24, catch=(RuntimeError,))
    study.enqueue_trial({"x": 2.0})
    study.enqueue_trial({"x": 3.0})  # stays WAITING
    running = study.ask()  # takes the first: RUNNING, with a parameter and a step
    running.suggest_float("x", 1e-3, 10.0, log=True)
    running.storage.set_trial_intermediate_value(running._trial_id, 0, 1.0)
    return study._study_id


def _comparable(trial: optuna.trial.FrozenTrial) -> dict[str, object]:
    """Every field, NaN made equal to NaN, and the order parameters were set in."""
    fields = dict(vars(trial))
    fields["intermediate_values"] = {
        step: "nan" if math.isnan(value) else value for step, value in trial.intermediate_values.items()
    }
    fields["param order"] = list(trial.params)
    return fields


def _without_order(trial: optuna.trial.FrozenTrial) -> dict[str, object]:
    """As :func:`_comparable`, but a gRPC message keeps no parameter order (nor does Optuna's)."""
    fields = _comparable(trial)
    del fields["param order"]
    return fields


@pytest.mark.parametrize("directions", [["minimize"], ["minimize", "maximize"]], ids=["single", "multi"])
def test_every_filter_reads_the_same_trials_as_optuna(storage_url: str, directions: list[str]) -> None:
    orm = RDBStorage(storage_url)
    study_id = _fill(orm, directions)
    ids = [t._trial_id for t in orm._get_trials(study_id, None, set(), -1)]
    cases = [
        (None, set(), -1),  # the whole study
        (None, set(), ids[10]),  # newer than a watermark
        (None, {ids[2], ids[5], ids[20]}, ids[10]),  # newer, or among the known unfinished
        (None, {ids[-1]}, ids[-1]),  # the watermark itself is not newer
        ((TrialState.COMPLETE, TrialState.PRUNED), set(), -1),
        ((TrialState.RUNNING, TrialState.WAITING), {ids[0]}, ids[3]),
        ((TrialState.FAIL,), set(), ids[5]),
    ]
    for states, included, greater_than in cases:
        expected = orm._get_trials(study_id, states, set(included), greater_than)
        got = read_trials(orm.engine, study_id, states, included, greater_than)
        assert [_comparable(t) for t in got] == [_comparable(t) for t in expected], (
            states, included, greater_than
        )
        assert got, (states, included, greater_than)  # every case reads something
    assert len(orm._get_trials(study_id, None, set(), -1)) == 26


def test_a_study_larger_than_one_in_list_reads_whole(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    orm = RDBStorage(sqlite_url)
    study_id = _fill(orm, ["minimize"])
    monkeypatch.setattr(trial_reads, "CHUNK", 4)  # 26 trials: seven IN lists per child table
    expected = orm._get_trials(study_id, None, set(), -1)
    got = read_trials(orm.engine, study_id, None, set(), -1)
    assert [_comparable(t) for t in got] == [_comparable(t) for t in expected]


def test_a_study_that_does_not_exist_is_a_key_error_as_in_optuna(storage_url: str) -> None:
    storage = CoreReadStorage(storage_url)
    optuna.create_study(storage=storage, study_name="exists")
    with pytest.raises(KeyError):
        RDBStorage(storage_url)._get_trials(999, None, set(), -1)
    with pytest.raises(KeyError):
        storage._get_trials(999, None, set(), -1)
    assert storage.get_all_trials(storage.get_study_id_from_name("exists")) == []


def test_optuna_runs_on_the_core_reader_and_sees_what_it_wrote(storage_url: str) -> None:
    study = optuna.create_study(
        storage=CoreReadStorage(storage_url),
        sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=4, multivariate=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        for step in range(3):
            trial.report((x - 1) ** 2 + step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return (x - 1) ** 2

    study.optimize(objective, n_trials=15)
    again = optuna.load_study(study_name=study.study_name, storage=RDBStorage(storage_url))
    assert [_comparable(t) for t in study.trials] == [_comparable(t) for t in again.trials]
    assert study.best_trial.number == again.best_trial.number


def _spec_space() -> dict[str, object]:
    from controller.spec import FloatParam

    return {"x": FloatParam(type="float", low=0.0, high=1.0)}


def test_an_ask_reads_the_study_once_and_reads_outside_an_ask_stay_fresh(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multivariate, grouped TPE with constant liar reads the trials four times per ask through
    Optuna's cache; through the asking storage, once. Between asks every read is fresh."""
    sampler = optuna.samplers.TPESampler(
        seed=3, n_startup_trials=2, multivariate=True, group=True, constant_liar=True
    )
    study = create_or_load_study(open_storage(sqlite_url), "once", ["minimize"], sampler=sampler)
    storage = study._storage
    assert isinstance(storage, AskingStorage)
    reads: list[int] = []
    original = trial_reads.read_trials

    def counted(*args: object, **kwargs: object) -> list[optuna.trial.FrozenTrial]:
        reads.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trial_reads, "read_trials", counted)
    space = _spec_space()
    for _ in range(4):
        trial = ask_new_trial(study, space, 7)  # type: ignore[arg-type]
        study.tell(trial, trial.params["x"])
    reads.clear()
    running = ask_new_trial(study, space, 7)  # type: ignore[arg-type]
    assert len(reads) == 1
    # Another process finishes the running trial: the next read outside an ask sees it.
    other = RDBStorage(sqlite_url)
    other.set_trial_state_values(running._trial_id, TrialState.COMPLETE, [0.25])
    reads.clear()
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(reads) == 1
    assert running.number in [t.number for t in finished]
    with storage.one_read():
        study.get_trials(deepcopy=False)
        study.get_trials(deepcopy=False)
        with storage.one_read():
            study.get_trials(deepcopy=False)
    assert len(reads) == 2


def test_the_gateways_messages_decode_to_the_trials_optuna_reads(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial gateway answers ``GetTrials`` from the same rows, encoded without ``FrozenTrial``s:
    what a worker decodes must be what Optuna's own servicer would have sent it."""
    orm = RDBStorage(storage_url)
    study_id = _fill(orm, ["minimize", "maximize"])
    monkeypatch.setattr(trial_reads, "CHUNK", 4)  # several IN lists per child table here too
    ids = [t._trial_id for t in orm._get_trials(study_id, None, set(), -1)]
    for included, greater_than in [(set(), -1), ({ids[2], ids[5]}, ids[10])]:
        expected = orm._get_trials(study_id, None, included, greater_than)
        sent = trial_rows.read_trials(orm.engine, study_id, included, greater_than)
        decoded = [_without_order(_from_proto_trial(message)) for message, _ in sent]
        assert decoded == [_without_order(t) for t in expected]
        assert [finished for _, finished in sent] == [t.state.is_finished() for t in expected]
    one = trial_rows.read_trial(orm.engine, ids[7])
    assert _without_order(_from_proto_trial(one)) == _without_order(orm.get_trial(ids[7]))
    assert trial_rows.trial_id_of(orm.engine, study_id, 7) == ids[7]
    assert trial_rows.trial_id_of(orm.engine, study_id, 999) is None
    with pytest.raises(KeyError):
        trial_rows.read_trials(orm.engine, 999, set(), -1)


def test_trial_times_are_optunas_in_any_time_zone(storage_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna stores trial times in UTC and shows them in local time; this reader (the workers',
    the operator's) used to show them in UTC, hours off away from UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        orm = RDBStorage(storage_url)
        study_id = _fill(orm, ["minimize"])
        expected = orm._get_trials(study_id, None, set(), -1)
        got = read_trials(orm.engine, study_id)
        assert [(t.datetime_start, t.datetime_complete) for t in got] == [
            (t.datetime_start, t.datetime_complete) for t in expected
        ]
    finally:
        monkeypatch.undo()
        time.tzset()
