"""The trial gateway against real PostgreSQL: a trial's token runs its own trial and nothing else.

Each refused attempt is checked three ways: the gRPC status a client sees (PERMISSION_DENIED or
UNAUTHENTICATED, with a message naming what was refused), the gateway's log and metrics, and the
database itself, which must be unchanged (other trials, other studies, the list of studies).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from controller.analysis.ledger_snapshot import ATTR_LEDGER
from controller.budget.ledger import Charge, Ledger
from controller.gateway.tokens import TokenClaims, TokenKeys
from controller.kube.finishing import record_ledger
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.postgres import PostgresServer
from trial_worker.contract import (
    DB_PASSWORD_ENV,
    Assignment,
    MetricDirection,
    PrunerConfig,
    PythonObjective,
)
from trial_worker.gateway import GatewayStorage

pytestmark = [pytest.mark.storage, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
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


@pytest.fixture(scope="module")
def module_db(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture(scope="module")
def gateway(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    RDBStorage(module_db).engine.dispose()  # the schema exists before the gateway reads it
    with running_gateway(module_db, tmp_path=tmp_path_factory.mktemp("gw")) as running:
        yield running


@pytest.fixture
def world(gateway: RunningGateway) -> World:
    return make_world(gateway.storage_url)


def test_a_trial_token_runs_its_own_trial_report_prune_and_tell(
    gateway: RunningGateway, world: World
) -> None:
    client = gateway.client(world.claims())
    study = optuna.load_study(
        study_name=world.mine,
        storage=client,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    trial = optuna.Trial(study, world.my_trial_id)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # define-by-run: not declared beforehand
    assert 1e-4 <= lr <= 1e-1
    trial.report(9.0, 0)
    assert trial.should_prune()  # worse than the median of the finished trials at step 0
    trial.report(0.5, 1)
    assert not trial.should_prune()  # its best value now beats their median
    trial.set_user_attr("note", "mine")
    study.tell(trial, 0.25)
    client.close()

    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    assert stored.state == TrialState.COMPLETE and stored.values == [0.25]
    assert stored.intermediate_values == {0: 9.0, 1: 0.5}
    assert stored.params["lr"] == lr and stored.user_attrs == {"note": "mine"}


def _attempts(world: World) -> dict[str, Callable[[GatewayStorage], object]]:
    x = FloatDistribution(-10.0, 10.0)
    return {
        "tell another trial": lambda c: c.set_trial_state_values(
            world.sibling_id, TrialState.COMPLETE, [0.0]
        ),
        "report on another trial": lambda c: c.set_trial_intermediate_value(world.sibling_id, 0, 0.0),
        "set a parameter of another trial": lambda c: c.set_trial_param(world.sibling_id, "x", 1.0, x),
        "set an attribute of another trial": lambda c: c.set_trial_user_attr(world.sibling_id, "k", 1),
        "fail another trial's system attrs": lambda c: c.set_trial_system_attr(world.sibling_id, "k", 1),
        "find another study": lambda c: c.get_study_id_from_name(world.theirs),
        "read another study's trials": lambda c: c.get_all_trials(world.theirs_id),
        "read another study's attributes": lambda c: c.get_study_user_attrs(world.theirs_id),
        "read another study's trial": lambda c: c.get_trial(world.their_trial_id),
        "write another study's trial": lambda c: c.set_trial_intermediate_value(world.their_trial_id, 1, 0.0),
        "create a study": lambda c: c.create_new_study([StudyDirection.MINIMIZE], "team-a/new/x"),
        "delete its own study": lambda c: c.delete_study(world.mine_id),
        "delete another study": lambda c: c.delete_study(world.theirs_id),
        "list every study": lambda c: c.get_all_studies(),
        "create a trial": lambda c: c.create_new_trial(world.mine_id),
        "change its study's attributes": lambda c: c.set_study_user_attr(world.mine_id, "k", 1),
        "write its own trial out of range": lambda c: c.set_trial_param(world.my_trial_id, "x", 99.0, x),
    }


ATTEMPT_NAMES = [
    "tell another trial",
    "report on another trial",
    "set a parameter of another trial",
    "set an attribute of another trial",
    "fail another trial's system attrs",
    "find another study",
    "read another study's trials",
    "read another study's attributes",
    "read another study's trial",
    "write another study's trial",
    "create a study",
    "delete its own study",
    "delete another study",
    "list every study",
    "create a trial",
    "change its study's attributes",
    "write its own trial out of range",
]


def assert_refused(
    action: Callable[[], object], *, codes: tuple[grpc.StatusCode, ...] = DENIED
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        action()
    error = raised.value
    assert error.code() in codes, (error.code(), error.details())
    assert error.details(), "a refusal says what was refused"
    return error


@pytest.mark.parametrize("attempt", ATTEMPT_NAMES)
def test_a_trial_token_is_refused_everything_but_its_own_trial(
    gateway: RunningGateway, world: World, attempt: str
) -> None:
    client = gateway.client(world.claims())
    before = snapshot(world.url)
    error = assert_refused(lambda: _attempts(world)[attempt](client))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert snapshot(world.url) == before
    # ... while its own trial still works
    client.set_trial_intermediate_value(world.my_trial_id, 0, 1.0)
    client.close()


def test_refusals_name_what_was_refused_and_are_logged_and_counted(
    gateway: RunningGateway, world: World
) -> None:
    client = gateway.client(world.claims())
    error = assert_refused(
        lambda: client.set_trial_state_values(world.sibling_id, TrialState.COMPLETE, [0.0])
    )
    details = error.details()
    assert "SetTrialStateValues" in details and world.mine in details and "trial 4" in details
    error = assert_refused(lambda: client.get_all_trials(world.theirs_id))
    assert "GetTrials" in error.details() and world.theirs in error.details()
    client.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [e for e in gateway.log_events("gateway.refused") if e.get("study") == world.mine]
        if any(e["method"] == "GetTrials" and e["reason"] == "other-study" for e in lines):
            break
        time.sleep(0.1)
    assert any(e["method"] == "SetTrialStateValues" and e["reason"] == "other-trial" for e in lines)
    assert all(e["code"] == "PERMISSION_DENIED" and e["trial"] == 3 for e in lines)
    metrics = gateway.metrics_text()
    assert 'tunefleet_gateway_calls_total{code="PERMISSION_DENIED",method="GetTrials"}' in metrics
    assert 'tunefleet_gateway_refusals_total{method="SetTrialStateValues",reason="other-trial"}' in metrics


def test_nothing_is_written_after_the_trial_ended(gateway: RunningGateway, world: World) -> None:
    client = gateway.client(world.claims())
    client.set_trial_intermediate_value(world.my_trial_id, 0, 1.0)
    client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [1.0])
    before = snapshot(world.url)
    for late in (
        lambda: client.set_trial_intermediate_value(world.my_trial_id, 1, 0.5),
        lambda: client.set_trial_user_attr(world.my_trial_id, "late", True),
        lambda: client.set_trial_param(world.my_trial_id, "y", 0.0, FloatDistribution(0, 1)),
        lambda: client.set_trial_state_values(world.my_trial_id, TrialState.FAIL),
        lambda: client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [0.0]),
    ):
        error = assert_refused(late)
        assert "COMPLETE" in error.details() and "no longer running" in error.details()
    assert snapshot(world.url) == before
    # reads of its study still work (the trial's own summary, say)
    assert client.get_trial(world.my_trial_id).state == TrialState.COMPLETE
    client.close()


def test_the_trial_ended_by_the_controller_is_no_longer_writable(
    gateway: RunningGateway, world: World
) -> None:
    client = gateway.client(world.claims())
    client.set_trial_intermediate_value(world.my_trial_id, 0, 1.0)  # the gateway has seen it RUNNING
    RDBStorage(world.url).set_trial_state_values(world.my_trial_id, TrialState.FAIL)  # pod vanished
    time.sleep(1.2)  # the gateway re-reads a running trial's state after a second at most
    before = snapshot(world.url)
    assert_refused(lambda: client.set_trial_intermediate_value(world.my_trial_id, 1, 0.5))
    assert snapshot(world.url) == before
    client.close()


@pytest.mark.parametrize("kind", ["expired", "forged", "tampered", "garbage", "other namespace"])
def test_untrustworthy_tokens_are_refused(gateway: RunningGateway, world: World, kind: str) -> None:
    good = gateway.token(world.claims())
    if kind == "expired":
        token = gateway.token(world.claims(expires=int(time.time()) - 1))
    elif kind == "forged":
        token = TokenKeys([b"k" * 48]).mint(world.claims())
    elif kind == "tampered":
        prefix, _payload, signature = good.split(".")
        other = gateway.token(world.claims(trial=4)).split(".")[1]
        token = f"{prefix}.{other}.{signature}"
    elif kind == "garbage":
        token = "not-a-token"
    else:  # a token of team-b for team-a's study: the claims themselves do not hold together
        token = gateway.token(world.claims(namespace="team-b"))
    client = gateway.client(token=token)
    before = snapshot(world.url)
    for action in (
        lambda: client.set_trial_intermediate_value(world.my_trial_id, 0, 1.0),
        lambda: client.get_study_id_from_name(world.mine),
        lambda: client.set_trial_state_values(world.sibling_id, TrialState.COMPLETE, [0.0]),
    ):
        error = assert_refused(action)
        expected = (
            grpc.StatusCode.PERMISSION_DENIED
            if kind == "other namespace"
            else grpc.StatusCode.UNAUTHENTICATED
        )
        assert error.code() == expected
    assert snapshot(world.url) == before
    client.close()


def test_a_read_only_token_reads_its_study_and_writes_nothing(gateway: RunningGateway, world: World) -> None:
    client = gateway.client(world.claims(trial=None))
    study = optuna.load_study(study_name=world.mine, storage=client)
    assert len(study.trials) == 5 and study.best_trial.number == 0
    before = snapshot(world.url)
    for write in (
        lambda: client.set_trial_intermediate_value(world.my_trial_id, 0, 1.0),
        lambda: client.set_trial_user_attr(world.my_trial_id, "k", 1),
        lambda: client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [0.0]),
        lambda: client.create_new_trial(world.mine_id),
        lambda: client.set_study_user_attr(world.mine_id, "k", 1),
    ):
        error = assert_refused(write)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert_refused(lambda: client.get_all_trials(world.theirs_id))
    assert snapshot(world.url) == before
    client.close()


def test_the_export_reads_through_the_gateway_with_a_read_only_token_and_writes_nothing(
    gateway: RunningGateway, world: World, tmp_path: Path
) -> None:
    """As the export Job runs with the gateway on: the controller has copied the ledger's figures
    into the study; ``tunefleet export`` holds a read-only token and no database password."""
    ledger = Ledger(world.url)
    assert ledger.reserve(f"{world.mine}/r0", world.mine, 0, Charge(7200, 7200))
    ledger.settle(f"{world.mine}/pod0", f"{world.mine}/r0", Charge(3600, 1800), wall_seconds=1800)
    ledger.close()
    record_ledger(world.url, world.mine)
    before = snapshot(world.url)
    out = tmp_path / "export"
    env = {k: v for k, v in os.environ.items() if k != DB_PASSWORD_ENV and not k.startswith("TUNEFLEET_")}
    env.update(gateway.env_for(world.claims(trial=None)))
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "export", "--storage", gateway.url, "--study", world.mine,
         "--out", str(out)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in ("best_config.json", "trials.csv", "report.html"):
        assert (out / name).is_file(), name
    with (out / "trials.csv").open() as table:
        rows = {int(row["number"]): row for row in csv.DictReader(table)}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert (rows[0]["gpu_seconds"], rows[0]["cpu_seconds"]) == ("3600", "1800")  # from the attribute
    assert rows[1]["gpu_seconds"] == "0"
    assert json.loads((out / "best_config.json").read_text())["trial"] == 0
    assert snapshot(world.url) == before  # the export read, and wrote nothing
    # The same token writes nothing: not a trial, not the study's attributes (the ledger's figures).
    client = gateway.client(token=env["TUNEFLEET_GATEWAY_TOKEN"])
    for write in (
        lambda: client.set_study_system_attr(world.mine_id, ATTR_LEDGER, {"charges": {}}),
        lambda: client.set_study_user_attr(world.mine_id, "k", 1),
        lambda: client.set_trial_user_attr(world.my_trial_id, "k", 1),
        lambda: client.set_trial_state_values(world.my_trial_id, TrialState.FAIL),
        lambda: client.create_new_trial(world.mine_id),
        lambda: client.delete_study(world.mine_id),
    ):
        assert assert_refused(write).code() == grpc.StatusCode.PERMISSION_DENIED
    client.close()
    assert snapshot(world.url) == before


def test_a_gateway_restarted_mid_study_loses_no_report_and_no_trial(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    world = make_world(url)
    steps = 60
    with running_gateway(url, tmp_path=tmp_path) as gateway:
        client = gateway.client(world.claims())
        study = optuna.load_study(study_name=world.mine, storage=client)
        trial = optuna.Trial(study, world.my_trial_id)
        restarted = threading.Event()

        def restart_soon() -> None:
            time.sleep(0.5)
            gateway.restart(hard=True, down_s=2.0)  # SIGKILL, then a new process on the same port
            restarted.set()

        restarter = threading.Thread(target=restart_soon)
        restarter.start()
        for step in range(steps):
            trial.report(float(step), step)
            trial.should_prune()
            time.sleep(0.05)
        restarter.join()
        assert restarted.is_set()
        study.tell(trial, 1.0)
        client.close()
        assert gateway.log_text().count("gateway.started") == 2  # it did restart
    assert gateway.process is not None and gateway.process.returncode == 0  # SIGTERM: a clean stop
    assert "gateway.stopped" in gateway.log_text()

    stored = RDBStorage(url).get_trial(world.my_trial_id)
    assert stored.state == TrialState.COMPLETE and stored.values == [1.0]
    assert stored.intermediate_values == {step: float(step) for step in range(steps)}
    after = RDBStorage(url).get_all_trials(world.mine_id)
    assert len(after) == 5  # no trial lost, none added


def test_the_gateway_sheds_load_beyond_its_limit_and_clients_ride_it_out(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    world = make_world(url)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with running_gateway(url, tmp_path=tmp_path, max_in_flight=1) as gateway, engine.connect() as blocker:
        # A slow database: the study's first read waits on this lock, holding the gateway's only slot.
        blocker.execute(sqlalchemy.text("LOCK TABLE trials IN ACCESS EXCLUSIVE MODE"))
        errors: list[BaseException] = []

        def read() -> None:
            client = gateway.client(world.claims(trial=None))
            try:
                for _ in range(3):
                    client._stub.GetTrials(
                        optuna.storages._grpc.auto_generated.api_pb2.GetTrialsRequest(study_id=world.mine_id)
                    )
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)
            finally:
                client.close()

        threads = [threading.Thread(target=read) for _ in range(12)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        blocker.rollback()  # the database answers again
        for thread in threads:
            thread.join()
        assert errors == []
        metrics = gateway.metrics_text()
    engine.dispose()
    assert 'tunefleet_gateway_calls_total{code="RESOURCE_EXHAUSTED",method="GetTrials"}' in metrics


def test_a_worker_runs_its_trial_end_to_end_through_the_gateway(
    gateway: RunningGateway, world: World
) -> None:
    assignment = Assignment(
        storage_url=gateway.url,
        study_name=world.mine,
        trial_number=world.my_trial,
        objective=PythonObjective(entry="tests.support.objectives:quadratic_with_steps"),
        metrics=[MetricDirection(name="loss", direction="minimize")],
        pruner=PrunerConfig(name="median"),
        seed=7,
        max_duration_s=120,
        workdir=str(REPO_ROOT),
    )
    env = {k: v for k, v in os.environ.items() if k != DB_PASSWORD_ENV and not k.startswith("TUNEFLEET_")}
    env.update(assignment.to_env())
    env.update(gateway.env_for(world.claims()))
    done = subprocess.run(
        [sys.executable, "-m", "trial_worker"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    # x = 3.0 was declared and set by the controller; too few finished trials for the median to prune
    assert stored.state == TrialState.COMPLETE, stored
    assert stored.values == [pytest.approx(1.0)]
    assert stored.intermediate_values == {step: 1.0 + 5 - step for step in range(5)}


def test_a_retried_tell_that_already_landed_succeeds(gateway: RunningGateway, world: World) -> None:
    """The gateway died after storing a tell but before answering: the worker tells again."""
    client = gateway.client(world.claims())
    assert client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [2.0])
    assert client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [2.0])  # no error
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    assert stored.state == TrialState.COMPLETE and stored.values == [2.0]
    client.close()


def test_tls_is_verified_and_the_server_name_can_be_overridden(gateway: RunningGateway, world: World) -> None:
    from tests.support.gateway import make_certificates

    good = gateway.client(world.claims(), retry_budget_s=1.0)
    good.wait_server_ready(timeout=10)
    assert good.get_study_id_from_name(world.mine) == world.mine_id
    good.close()
    stranger = GatewayStorage(
        host="127.0.0.1",
        port=gateway.port,
        token=gateway.token(world.claims()),
        ca_pem=make_certificates().ca_pem,
        retry_budget_s=1.0,
    )
    error = assert_refused(
        lambda: stranger.get_study_id_from_name(world.mine), codes=(grpc.StatusCode.UNAVAILABLE,)
    )
    assert "ssl" in error.details().lower() or "handshake" in error.details().lower()
    stranger.close()
    renamed = gateway.client(world.claims(), server_name="gateway.example", retry_budget_s=1.0)
    assert_refused(lambda: renamed.get_study_id_from_name(world.mine), codes=(grpc.StatusCode.UNAVAILABLE,))
    renamed.close()
    named = GatewayStorage(
        host="127.0.0.1",
        port=gateway.port,
        token=gateway.token(world.claims()),
        ca_pem=gateway.ca_pem.encode(),
        server_name="localhost",
    )
    assert named.get_study_id_from_name(world.mine) == world.mine_id
    named.close()


def test_a_call_without_a_token_is_unauthenticated(gateway: RunningGateway, world: World) -> None:
    from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=gateway.ca_pem.encode())
    with grpc.secure_channel(gateway.address, credentials) as channel:
        stub = api_pb2_grpc.StorageServiceStub(channel)
        error = assert_refused(
            lambda: stub.GetStudyIdFromName(api_pb2.GetStudyIdFromNameRequest(study_name=world.mine))
        )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in error.details()


def test_health_readiness_and_metrics_endpoints(gateway: RunningGateway) -> None:
    import urllib.request

    for path, expected in (("/healthz", b"ok"), ("/readyz", b"ok")):
        with urllib.request.urlopen(gateway.http_url + path, timeout=10) as reply:
            assert reply.status == 200 and reply.read().strip() == expected
    assert "tunefleet_gateway_in_flight" in gateway.metrics_text()


def test_an_unreachable_gateway_is_a_transient_storage_error(world: World) -> None:
    from tests.support.gateway import free_port
    from trial_worker.storage import _is_transient

    nowhere = GatewayStorage(host="127.0.0.1", port=free_port(), token="t", ca_pem=b"", retry_budget_s=0.5)
    with pytest.raises(grpc.RpcError) as raised:
        nowhere.get_study_id_from_name(world.mine)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _is_transient(raised.value)  # the worker's with_retries retries it; exit code 8 if it lasts
    nowhere.close()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TUNEFLEET_STORAGE_URL", ""),
        ("TUNEFLEET_STORAGE_URL", "mysql://db/x"),
        ("TUNEFLEET_GATEWAY_LISTEN", "nowhere"),
        ("TUNEFLEET_GATEWAY_POOL_SIZE", "0"),
        ("TUNEFLEET_GATEWAY_MAX_IN_FLIGHT", "many"),
        ("TUNEFLEET_GATEWAY_HTTP_PORT", "70000"),
        ("TUNEFLEET_GATEWAY_TLS_CERT", ""),
        ("TUNEFLEET_GATEWAY_TLS_KEY", "/nonexistent/key.pem"),
        ("TUNEFLEET_GATEWAY_TOKEN_KEYS", "SHORT"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable(
    gateway: RunningGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    variable: str,
    value: str,
) -> None:
    from controller.cli import main

    for name, setting in gateway.environment().items():
        if name.startswith("TUNEFLEET_"):
            monkeypatch.setenv(name, setting)
    if value == "SHORT":
        value = str(tmp_path / "keys")
        Path(value).write_text("too-short\n")
    monkeypatch.setenv(variable, value)
    assert main(["gateway"]) == 2
    assert variable in capsys.readouterr().err


def test_a_gateway_started_before_its_database_waits_for_it_and_stops_cleanly(tmp_path: Path) -> None:
    from tests.support.gateway import free_port

    dead = f"postgresql+psycopg2://tunefleet@127.0.0.1:{free_port()}/tunefleet"
    gateway = RunningGateway(storage_url=dead, workdir=tmp_path)
    with gateway.log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "gateway"],
            env=gateway.environment(),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not gateway.log_events("gateway.database-unreachable") and time.monotonic() < deadline:
            assert process.poll() is None, gateway.log_text()
            time.sleep(0.1)
        assert gateway.log_events("gateway.database-unreachable"), gateway.log_text()
        assert process.poll() is None  # still waiting, not crash-looping
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def test_a_worker_without_its_token_says_which_variable_is_missing(
    gateway: RunningGateway, world: World
) -> None:
    assignment = Assignment(
        storage_url=gateway.url,
        study_name=world.mine,
        trial_number=world.my_trial,
        objective=PythonObjective(entry="tests.support.objectives:quadratic"),
        metrics=[MetricDirection(name="loss", direction="minimize")],
        seed=7,
        max_duration_s=60,
        workdir=str(REPO_ROOT),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}
    env.update(assignment.to_env())
    env["TUNEFLEET_GATEWAY_CA"] = gateway.ca_pem
    done = subprocess.run(
        [sys.executable, "-m", "trial_worker"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 8  # storageUnavailable: an infrastructure failure, retried
    assert "TUNEFLEET_GATEWAY_TOKEN" in done.stdout + done.stderr
    assert RDBStorage(world.url).get_trial(world.my_trial_id).state == TrialState.RUNNING
