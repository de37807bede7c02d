"""What a token may do through the gateway, against real PostgreSQL: its own trial and nothing else.

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
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from controller.analysis.ledger_snapshot import ATTR_LEDGER
from controller.budget.ledger import Charge, Ledger
from controller.gateway.tokens import TokenKeys
from controller.kube.finishing import record_ledger
from tests.storage.gateway.world import REPO_ROOT, World, assert_refused, snapshot
from tests.support.gateway import RunningGateway
from trial_worker.contract import (
    DB_PASSWORD_ENV,
)
from trial_worker.gateway import GatewayStorage

pytestmark = [pytest.mark.storage, pytest.mark.slow]


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


def test_a_retried_tell_that_already_landed_succeeds(gateway: RunningGateway, world: World) -> None:
    """The gateway died after storing a tell but before answering: the worker tells again."""
    client = gateway.client(world.claims())
    assert client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [2.0])
    assert client.set_trial_state_values(world.my_trial_id, TrialState.COMPLETE, [2.0])  # no error
    stored = RDBStorage(world.url).get_trial(world.my_trial_id)
    assert stored.state == TrialState.COMPLETE and stored.values == [2.0]
    client.close()


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
