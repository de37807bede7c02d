"""The gateway as a service, against real PostgreSQL: restarts, load shedding, TLS, health,
settings, and the worker's side of it (retries, missing credentials, one process for many pods)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tests.storage.gateway.world import REPO_ROOT, World, assert_refused, make_world
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.postgres import PostgresServer
from trial_worker.contract import (
    Assignment,
    MetricDirection,
    PrunerConfig,
    PythonObjective,
)
from trial_worker.gateway import GatewayStorage
from trial_worker.storage import forget_storage, open_storage, pod_environment

pytestmark = [pytest.mark.storage, pytest.mark.slow]


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


def test_beyond_its_cap_of_streams_a_trial_reports_by_calls_and_loses_nothing(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    world = make_world(url)
    with running_gateway(url, tmp_path=tmp_path, TUNEFLEET_GATEWAY_MAX_STREAMS="1") as gateway:
        first = gateway.client(world.claims())  # trial 3 opens the one stream
        first.get_trial_id_from_study_id_trial_number(world.mine_id, world.my_trial)
        first.set_trial_intermediate_value(world.my_trial_id, 0, 1.0)
        second = gateway.client(world.claims(trial=4))  # the sibling: refused a stream
        second.get_trial_id_from_study_id_trial_number(world.mine_id, 4)
        for step in range(3):
            second.set_trial_intermediate_value(world.sibling_id, step, float(step))
        first.set_trial_intermediate_value(world.my_trial_id, 1, 2.0)  # still on its stream
        metrics = gateway.metrics_text()
        first.close()
        second.close()
    stored = RDBStorage(url)
    assert stored.get_trial(world.sibling_id).intermediate_values == {0: 0.0, 1: 1.0, 2: 2.0}
    assert stored.get_trial(world.my_trial_id).intermediate_values == {0: 1.0, 1: 2.0}
    # one stream refused, then (for 30 s) its reports went as Report calls, one each
    assert 'tunefleet_gateway_calls_total{code="RESOURCE_EXHAUSTED",method="Reports"} 1.0' in metrics
    assert 'tunefleet_gateway_calls_total{code="OK",method="Report"} 3.0' in metrics
    assert 'tunefleet_gateway_calls_total{code="OK",method="Reports"} 2.0' in metrics


def test_a_worker_runs_its_trial_end_to_end_through_the_gateway(
    gateway: RunningGateway, world: World
) -> None:
    done = _run_worker(gateway, world, "quadratic_with_steps", gateway.env_for(world.claims()),
                       pruner=PrunerConfig(name="median"), max_duration_s=120)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    # x = 3.0 was declared and set by the controller; too few finished trials for the median to prune
    assert stored.state == TrialState.COMPLETE, stored
    assert stored.values == [pytest.approx(1.0)]
    assert stored.intermediate_values == {step: 1.0 + 5 - step for step in range(5)}


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
        ("TUNEFLEET_GATEWAY_MAX_STREAMS", "0"),
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
    done = _run_worker(gateway, world, "quadratic", {"TUNEFLEET_GATEWAY_CA": gateway.ca_pem},
                       max_duration_s=60)
    assert done.returncode == 8  # storageUnavailable: an infrastructure failure, retried
    assert "TUNEFLEET_GATEWAY_TOKEN" in done.stdout + done.stderr
    assert RDBStorage(world.url).get_trial(world.my_trial_id).state == TrialState.RUNNING


def test_one_process_running_several_pods_trials_uses_each_pods_own_token(
    gateway: RunningGateway, world: World
) -> None:
    """A process that runs trials for several pods (the chaos tier's in-process kubelet) gives
    each its pod's environment: each trial is written with its own token, never another's."""
    mine, sibling = gateway.env_for(world.claims()), gateway.env_for(world.claims(trial=4))
    with pod_environment(mine):
        first = open_storage(gateway.url)
    with pod_environment(sibling):
        second = open_storage(gateway.url)
        assert open_storage(gateway.url) is second  # one storage per token, reused
    assert first is not second
    first.set_trial_intermediate_value(world.my_trial_id, 0, 1.0)
    second.set_trial_intermediate_value(world.sibling_id, 0, 2.0)
    assert_refused(lambda: first.set_trial_intermediate_value(world.sibling_id, 1, 0.0))
    for environ in (mine, sibling):
        with pod_environment(environ):
            forget_storage(gateway.url)
    stored = RDBStorage(world.url)
    assert stored.get_trial(world.my_trial_id).intermediate_values == {0: 1.0}
    assert stored.get_trial(world.sibling_id).intermediate_values == {0: 2.0}
    stored.engine.dispose()


def _run_worker(
    gateway: RunningGateway, world: World, objective: str, pod_env: dict[str, str], **fields: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m trial_worker`` for the world's trial 3, as its pod would start it: the
    assignment and ``pod_env`` (its token and CA, or not), no tunefleet setting of this process."""
    assignment = Assignment(
        storage_url=gateway.url,
        study_name=world.mine,
        trial_number=world.my_trial,
        objective=PythonObjective(entry=f"tests.support.objectives:{objective}"),
        metrics=[MetricDirection(name="loss", direction="minimize")],
        seed=7,
        workdir=str(REPO_ROOT),
        **fields,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFLEET_")}  # the password too
    env.update(assignment.to_env())
    env.update(pod_env)
    timeout = fields["max_duration_s"]
    return subprocess.run([sys.executable, "-m", "trial_worker"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
