"""The gateway answers trial reads from per-study snapshots: at most half a second stale, never wrong.

One worker writes, another reads through the same gateway, against real PostgreSQL: a report or a
tell shows up in the other's ``get_all_trials`` within the snapshot's refresh interval, finished
trials come back exactly as the database holds them, and another study's trials never appear.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.trial import FrozenTrial, TrialState

from controller.gateway.snapshots import MAX_AGE_S, StudySnapshots
from tests.storage.gateway.world import World, make_world
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.postgres import PostgresServer
from trial_worker.gateway import GatewayStorage

pytestmark = [pytest.mark.storage, pytest.mark.slow]

VISIBLE_WITHIN_S = MAX_AGE_S + 1.0  # the refresh interval, plus a round trip on a busy machine


@pytest.fixture(scope="module")
def gateway(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    url = postgres_server.create_database()
    RDBStorage(url).engine.dispose()
    with running_gateway(url, tmp_path=tmp_path_factory.mktemp("gw")) as running:
        yield running


@pytest.fixture
def world(gateway: RunningGateway) -> World:
    return make_world(gateway.storage_url)


def _summary(trial: FrozenTrial) -> tuple[Any, ...]:
    return (
        trial._trial_id, trial.number, trial.state, trial.values, trial.params, trial.distributions,
        trial.intermediate_values, trial.user_attrs, trial.system_attrs, trial.datetime_start,
        trial.datetime_complete,
    )


def _eventually(check: Callable[[], bool]) -> float:
    """Seconds until ``check`` held; fails after VISIBLE_WITHIN_S."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < VISIBLE_WITHIN_S, "not visible within the refresh interval"
        time.sleep(0.05)
    return time.monotonic() - started


def _reader(gateway: RunningGateway, world: World) -> GatewayStorage:
    return gateway.client(world.claims(trial=None))  # the export's read-only token


def test_a_report_and_a_tell_are_visible_to_another_client_within_the_refresh_interval(
    gateway: RunningGateway, world: World
) -> None:
    writer, reader = gateway.client(world.claims()), _reader(gateway, world)
    reader.get_all_trials(world.mine_id)  # the reader's cache and the gateway's snapshot exist

    def my_trial() -> FrozenTrial:
        return next(t for t in reader.get_all_trials(world.mine_id) if t._trial_id == world.my_trial_id)

    writer.set_trial_intermediate_value(world.my_trial_id, 0, 0.75)
    _eventually(lambda: my_trial().intermediate_values == {0: 0.75})
    writer.set_trial_user_attr(world.my_trial_id, "epoch", 1)
    writer.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [0.5])
    _eventually(lambda: my_trial().state == TrialState.COMPLETE)
    assert my_trial().values == [0.5] and my_trial().user_attrs == {"epoch": 1}
    writer.close()
    reader.close()


def test_finished_and_running_trials_are_served_as_the_database_holds_them(
    gateway: RunningGateway, world: World
) -> None:
    reader = _reader(gateway, world)
    database = RDBStorage(world.url)
    time.sleep(MAX_AGE_S)  # whatever snapshot a previous test left is due for a refresh
    served = [_summary(t) for t in reader.get_all_trials(world.mine_id)]
    assert served == [_summary(t) for t in database.get_all_trials(world.mine_id)]
    assert [s[2] for s in served] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING] * 2
    # one trial asked for by id (what optuna.Trial does first) is read as the database holds it
    assert [_summary(reader.get_trial(s[0])) for s in served] == served
    # a second client, its cache empty, is served the same finished trials again
    again = _reader(gateway, world)
    assert [_summary(t) for t in again.get_all_trials(world.mine_id)][:3] == served[:3]
    database.engine.dispose()
    reader.close()
    again.close()


def test_another_studys_trials_never_appear(gateway: RunningGateway, world: World) -> None:
    reader = _reader(gateway, world)
    ids = {t._trial_id for t in reader.get_all_trials(world.mine_id)}
    assert world.their_trial_id not in ids and len(ids) == 5
    # asked by id, in the request Optuna's client cache sends, it is still not served
    reply = reader._stub.GetTrials(api_pb2.GetTrialsRequest(
        study_id=world.mine_id, included_trial_ids=[world.their_trial_id], trial_id_greater_than=-1,
    ))
    assert world.their_trial_id not in {t.trial_id for t in reply.trials}
    reply = reader._stub.GetTrials(api_pb2.GetTrialsRequest(
        study_id=world.mine_id, included_trial_ids=[world.their_trial_id],
        trial_id_greater_than=max(ids),
    ))
    assert list(reply.trials) == []
    reader.close()


def test_a_trial_the_controller_ended_is_refused_writes_while_its_study_is_busy(
    gateway: RunningGateway, world: World
) -> None:
    """The gateway learns a running trial's state from the snapshot too: still no late writes."""
    writer, reader = gateway.client(world.claims()), _reader(gateway, world)
    writer.set_trial_intermediate_value(world.my_trial_id, 0, 1.0)  # seen RUNNING
    RDBStorage(world.url).set_trial_state_values(world.my_trial_id, TrialState.FAIL)  # pod vanished
    deadline = time.monotonic() + 1.2  # the directory's running-state time to live, and a margin
    while time.monotonic() < deadline:  # other trials keep pruning: the study's snapshot is fresh
        reader.get_all_trials(world.mine_id)
        time.sleep(0.1)
    with pytest.raises(grpc.RpcError) as refused:
        writer.set_trial_intermediate_value(world.my_trial_id, 1, 0.5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "FAIL" in (refused.value.details() or "")
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    assert stored.intermediate_values == {0: 1.0}
    writer.close()
    reader.close()


@pytest.mark.parametrize(
    ("included", "greater_than"), [((), -1), ((), "sibling"), (("mine",), "sibling"), (("mine",), "all")]
)
def test_a_reply_from_the_snapshot_is_what_get_trials_answers_byte_for_byte(
    world: World, included: tuple[str, ...], greater_than: int | str
) -> None:
    """The Reports stream answers from the snapshot's pre-encoded trials: they must parse to exactly
    the message GetTrials would build, for every filter, and say when the snapshot is due."""
    now = [0.0]
    database = RDBStorage(world.url)
    snapshots = StudySnapshots(database, clock=lambda: now[0])
    assert snapshots.cached_reply(world.mine_id, (), -1) is None  # nothing read yet: no answer
    ids = {"mine": world.my_trial_id, "sibling": world.sibling_id, "all": 10**9}
    wanted = [ids[name] for name in included]
    above = greater_than if isinstance(greater_than, int) else ids[greater_than]
    database.set_trial_intermediate_value(world.my_trial_id, 0, float("nan"))  # every kind of value
    database.set_trial_user_attr(world.my_trial_id, "note", {"nested": [1, "two"]})

    expected = api_pb2.GetTrialsReply(trials=snapshots.trials(world.mine_id, wanted, above))
    cached = snapshots.cached_reply(world.mine_id, wanted, above)
    assert cached is not None
    reply, due = cached
    assert not due
    assert api_pb2.GetTrialsReply.FromString(reply) == expected
    now[0] += MAX_AGE_S
    assert snapshots.cached_reply(world.mine_id, wanted, above) == (reply, True)  # due, same answer
    database.engine.dispose()
