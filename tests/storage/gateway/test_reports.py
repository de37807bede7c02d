"""tunefleet's ``Report`` and ``Reports``: a report that brings back the study's new trials, so the
``should_prune`` after it needs no call of its own, sent on one stream per trial. Against real
PostgreSQL and a real gateway; its rules are the report's and the read's together, on the stream
as on the unary call, and a gateway without either is still served."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc
from optuna.storages._grpc.servicer import OptunaStorageProxyService
from optuna.trial import TrialState

from tests.storage.gateway.world import DENIED, World, assert_refused, snapshot
from tests.support.gateway import RunningGateway, free_port, make_certificates
from trial_worker import gateway_protocol
from trial_worker.gateway import GatewayStorage
from trial_worker.gateway_protocol import ReportRequest

pytestmark = [pytest.mark.storage, pytest.mark.slow]


def served(gateway: RunningGateway, method: str) -> int:
    """How many calls of ``method`` the gateway served (code OK), from its /metrics."""
    pattern = rf'tunefleet_gateway_calls_total\{{code="OK",method="{method}"\}} ([0-9.e+]+)'
    found = re.search(pattern, gateway.metrics_text())
    return int(float(found.group(1))) if found else 0


def my_trial(client: GatewayStorage, world: World) -> tuple[optuna.Study, optuna.Trial]:
    """The trial as the worker opens it (trial_worker/storage.py): by its number."""
    study = optuna.load_study(
        study_name=world.mine,
        storage=client,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    trial_id = client.get_trial_id_from_study_id_trial_number(study._study_id, world.my_trial)
    return study, optuna.Trial(study, trial_id)


def test_each_step_is_one_message_on_the_trials_stream_and_prunes_as_before(
    gateway: RunningGateway, world: World
) -> None:
    client = gateway.client(world.claims())
    study, trial = my_trial(client, world)
    methods = ("Reports", "Report", "SetTrialIntermediateValue", "GetTrials")
    before = {m: served(gateway, m) for m in methods}

    trial.report(9.0, 0)
    assert trial.should_prune()  # worse than the finished trials' median at step 0 (1.0)
    trial.report(0.5, 1)
    assert not trial.should_prune()  # its best value now beats their median

    after = {m: served(gateway, m) for m in before}
    assert after["Reports"] - before["Reports"] == 2  # two reports on the stream
    assert after["Report"] == before["Report"]
    assert after["SetTrialIntermediateValue"] == before["SetTrialIntermediateValue"]
    assert after["GetTrials"] == before["GetTrials"]  # should_prune read what the report brought
    study.tell(trial, 0.25)
    client.close()
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    assert stored.intermediate_values == {0: 9.0, 1: 0.5}
    assert stored.state == TrialState.COMPLETE


def test_a_report_brings_back_what_other_trials_wrote(gateway: RunningGateway, world: World) -> None:
    client = gateway.client(world.claims())
    study, trial = my_trial(client, world)
    trial.report(1.0, 0)
    RDBStorage(world.url).set_trial_intermediate_value(world.sibling_id, 0, 7.5)  # another pod
    time.sleep(0.6)  # the gateway's snapshot of the study is at most 0.5 s old
    trial.report(1.0, 1)
    sibling = next(t for t in study.get_trials(deepcopy=False) if t._trial_id == world.sibling_id)
    assert sibling.intermediate_values == {0: 7.5}
    client.close()


@pytest.mark.parametrize("path", ["unary", "stream"])
@pytest.mark.parametrize("attempt", ["another trial", "another study's trials", "read-only token", "ended"])
def test_report_is_refused_what_a_report_or_a_read_would_be(
    gateway: RunningGateway, world: World, attempt: str, path: str
) -> None:
    claims = world.claims(trial=None) if attempt == "read-only token" else world.claims()
    client = gateway.client(claims)
    request = ReportRequest(
        study_id=world.mine_id, trial_id=world.my_trial_id, step=0, intermediate_value=1.0
    )
    if attempt == "another trial":
        request.trial_id = world.sibling_id
    elif attempt == "another study's trials":
        request.study_id = world.theirs_id
    elif attempt == "ended":
        RDBStorage(world.url).set_trial_state_values(world.my_trial_id, TrialState.FAIL)
    before = snapshot(world.url)
    send = client._report if path == "unary" else client._stream.send
    error = assert_refused(lambda: send(request))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert snapshot(world.url) == before
    client.close()


def test_a_stream_is_checked_per_report_and_reopened_after_a_refusal(
    gateway: RunningGateway, world: World
) -> None:
    """The stream's first report being allowed lets nothing through later: a report on another
    trial, sent on the same open stream, is refused, and the next stream serves the trial again."""
    client = gateway.client(world.claims())
    mine = ReportRequest(study_id=world.mine_id, trial_id=world.my_trial_id, step=0, intermediate_value=1.0)
    assert world.my_trial_id in {t.trial_id for t in client._stream.send(mine).trials}
    before = snapshot(world.url)
    sibling = ReportRequest(study_id=world.mine_id, trial_id=world.sibling_id, step=0, intermediate_value=1.0)
    error = assert_refused(lambda: client._stream.send(sibling))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "trial" in (error.details() or "")
    assert snapshot(world.url) == before
    mine.step = 1
    client._stream.send(mine)  # a new stream
    assert RDBStorage(world.url).get_trial(world.my_trial_id).intermediate_values == {0: 1.0, 1: 1.0}
    client.close()


def test_a_stream_without_a_token_or_with_a_forged_one_is_refused(
    gateway: RunningGateway, world: World
) -> None:
    client = gateway.client(world.claims())
    request = ReportRequest(
        study_id=world.mine_id, trial_id=world.my_trial_id, step=0, intermediate_value=1.0
    )
    before = snapshot(world.url)
    for metadata in ((), (("authorization", "Bearer " + client._token[:-4] + "AAAA"),)):
        stream = gateway_protocol.reports_method(client._raw_channel)(iter([request]), metadata=metadata)
        error = assert_refused(lambda stream=stream: next(stream))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert snapshot(world.url) == before
    client.close()


class _CountedTells:
    """The worker's unary ``SetTrialStateValues``, counted (what a tell costs in new calls)."""

    def __init__(self, client: GatewayStorage) -> None:
        self.calls = 0
        self._unary = client._stub.SetTrialStateValues

        def counted(request: object, *args: object, **kwargs: object) -> object:
            self.calls += 1
            return self._unary(request, *args, **kwargs)

        client._stub.SetTrialStateValues = counted


def test_the_trials_stream_is_open_before_its_first_report(gateway: RunningGateway, world: World) -> None:
    """Looking its trial up opens the stream, and the gateway accepts it (its initial metadata
    arrives) before anything is sent on it: the first report does not wait for the gateway to
    accept a new call."""
    client = gateway.client(world.claims())
    my_trial(client, world)
    replies = client._stream._replies
    assert replies is not None, "the stream was not opened when the trial was looked up"
    assert gateway_protocol.TELL_ON_STREAM in tuple(replies.initial_metadata())
    client.close()


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_the_tell_is_the_last_message_on_the_trials_stream(
    gateway: RunningGateway, world: World, state: TrialState
) -> None:
    client = gateway.client(world.claims())
    study, trial = my_trial(client, world)
    unary = _CountedTells(client)
    trial.report(0.5, 0)
    study.tell(trial, 0.25 if state == TrialState.COMPLETE else None, state=state)
    assert unary.calls == 0  # no new call: the tell went on the stream
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    assert stored.state == state
    # as Optuna stores them: a pruned trial's value is its last report, a failed one has none
    expected = {TrialState.COMPLETE: [0.25], TrialState.PRUNED: [0.5], TrialState.FAIL: None}
    assert stored.values == expected[state]
    assert stored.intermediate_values == {0: 0.5}
    client.close()


def test_a_trial_that_never_reported_is_told_by_a_call(gateway: RunningGateway, world: World) -> None:
    """Until a message on the stream was answered the worker cannot know the gateway takes tells
    there; its tell is then the unary call, and is stored all the same."""
    client = gateway.client(world.claims())
    study, trial = my_trial(client, world)
    unary = _CountedTells(client)
    study.tell(trial, 0.75)
    assert unary.calls == 1
    assert RDBStorage(world.url).get_trial(world.my_trial_id).values == [0.75]
    client.close()


@pytest.mark.parametrize(
    "attempt", ["another trial", "another study's trial", "read-only token", "ended", "not a finished state"]
)
def test_a_tell_on_the_stream_is_refused_what_the_tell_call_would_be(
    gateway: RunningGateway, world: World, attempt: str
) -> None:
    claims = world.claims(trial=None) if attempt == "read-only token" else world.claims()
    client = gateway.client(claims)
    trial_id, study_id, state = world.my_trial_id, world.mine_id, api_pb2.COMPLETE
    if attempt == "another trial":
        trial_id = world.sibling_id
    elif attempt == "another study's trial":
        trial_id, study_id = world.their_trial_id, world.theirs_id
    elif attempt == "ended":
        RDBStorage(world.url).set_trial_state_values(world.my_trial_id, TrialState.FAIL)
    elif attempt == "not a finished state":
        state = api_pb2.WAITING
    before = snapshot(world.url)
    tell = gateway_protocol.tell_message(study_id, trial_id, state, [1.0])
    codes = (grpc.StatusCode.INVALID_ARGUMENT,) if attempt == "not a finished state" else DENIED
    error = assert_refused(lambda: client._stream.send(tell), codes=codes)
    if attempt == "not a finished state":
        assert "must finish the trial" in (error.details() or "")
    assert snapshot(world.url) == before
    client.close()


@pytest.fixture
def optuna_only_server(tmp_path: Path) -> Iterator[tuple[int, bytes, str]]:
    """Optuna's own gRPC storage server over TLS (a gateway from before ``Report``), on SQLite."""
    certificates = make_certificates()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = RDBStorage(url)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    port = server.add_secure_port(
        f"127.0.0.1:{free_port()}",
        grpc.ssl_server_credentials([(certificates.key_pem, certificates.cert_pem)]),
    )
    server.start()
    try:
        yield port, certificates.ca_pem, url
    finally:
        server.stop(None)
        storage.engine.dispose()


def test_a_gateway_without_report_is_sent_optunas_own_calls(
    optuna_only_server: tuple[int, bytes, str],
) -> None:
    port, ca_pem, url = optuna_only_server
    optuna.create_study(study_name="old-gateway", storage=url)
    client = GatewayStorage(
        host="127.0.0.1", port=port, token="unused", ca_pem=ca_pem, server_name="localhost"
    )
    study = optuna.load_study(study_name="old-gateway", storage=client)
    trial = study.ask()
    client.get_trial_id_from_study_id_trial_number(study._study_id, trial.number)
    for step in range(3):
        trial.report(float(step), step)
        assert not trial.should_prune()
    study.tell(trial, 1.0)
    client.close()
    assert RDBStorage(url).get_trial(trial._trial_id).intermediate_values == {0: 0.0, 1: 1.0, 2: 2.0}
