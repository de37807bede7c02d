"""Local studies mirrored to a real MLflow tracking server (started once for the session).

The server runs MLflow's basic-auth app, so each mirror here authenticates with the admin's
MLFLOW_TRACKING_* credentials, as a local user would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from controller.local.runner import LocalRunner, RunOptions, RunResult
from controller.spec import StudyManifest
from controller.spec.tracking import Tracking
from controller.tracking import TrackingMirror
from controller.tracking.local import FINISH_TIMEOUT_ENV
from controller.tracking.service import RETRY_MAX_ENV
from tests.support.curves import STEP_SLEEP_ENV, STEPS
from tests.support.mlflow_content import MirroredStudy, read_study
from tests.support.mlflow_server import MlflowServer
from tests.support.specs import study_document

pytestmark = [pytest.mark.storage, pytest.mark.slow, pytest.mark.xdist_group("mlflow")]
TRIALS = 4
EXPORT_FILES = {"best_config.json", "best_config.yaml", "importance.json", "report.html", "trials.csv"}


def manifest(name: str, server_url: str, **tracking: Any) -> StudyManifest:
    document = study_document(
        searchSpace={
            "x": {"type": "float", "low": -10.0, "high": 10.0},
            "layers": {"type": "int", "low": 1, "high": 4},
        },
        budget={"maxTrials": TRIALS},
        parallelism=1,  # seeded and one at a time: every run of it samples the same trials
        trial={"python": "tests.support.curves:curve", "maxDuration": "60s", "maxRetries": 0},
        tracking={"mlflow": {"trackingUri": server_url, "tags": {"team": "vision"}, **tracking}},
    )
    document["metadata"]["name"] = name
    return StudyManifest.model_validate(document)


@pytest.fixture
def signed_in(monkeypatch: pytest.MonkeyPatch, mlflow_server: MlflowServer) -> MlflowServer:
    for name, value in mlflow_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(RETRY_MAX_ENV, "1")  # after an outage, try again within a second
    monkeypatch.setenv(FINISH_TIMEOUT_ENV, "120")
    return mlflow_server


def run_study(study: StudyManifest, tmp_path: Path) -> tuple[LocalRunner, RunResult]:
    options = RunOptions(
        storage_url=f"sqlite:///{tmp_path / (study.metadata.name + '.db')}",
        workdir=str(Path(__file__).resolve().parents[2]),
        log_dir=tmp_path / "logs",
        show_progress=False,
    )
    runner = LocalRunner(study, options)
    return runner, runner.run()


@dataclass(frozen=True)
class Mirrored:
    study: MirroredStudy
    manifest: StudyManifest
    directory: Path


@pytest.fixture(scope="module")
def calm(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrored]:
    """One local study mirrored with the tracker up all along."""
    study = manifest("curves-calm", mlflow_server.url)
    directory = tmp_path_factory.mktemp("calm")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in mlflow_server.env().items():
            patch.setenv(name, value)
        runner, result = run_study(study, directory)
    assert result.summary.complete == TRIALS
    assert runner.tracking_url is not None and runner.tracking_url.startswith(mlflow_server.url)
    mirrored = read_study(mlflow_server, "curves-calm")
    assert mirrored is not None
    yield Mirrored(mirrored, study, directory)


@pytest.fixture
def undisturbed(calm: Mirrored) -> MirroredStudy:
    return calm.study


def test_a_local_study_appears_with_every_trial_its_curve_and_the_export(undisturbed: MirroredStudy) -> None:
    parent = undisturbed.parent
    assert parent.run.info.status == "FINISHED"
    assert parent.tags["tunefleet.stop_reason"] == "MaxTrialsReached"
    assert parent.tags["tunefleet.sampler"] == "random" and parent.tags["tunefleet.strategy_why"]
    assert parent.tags["team"] == "vision"
    assert parent.params["objective"] == "loss:minimize" and parent.params["budget.maxTrials"] == str(TRIALS)
    assert parent.metrics["trials/complete"] == TRIALS
    assert {"budget/cpu_seconds_used", "best/loss"} <= set(parent.metrics)
    assert {f"export/{name}" for name in EXPORT_FILES} | {"tunefleet/spec.yaml"} <= set(parent.artifacts)

    assert sorted(undisturbed.trials) == list(range(TRIALS))
    assert undisturbed.all_runs == TRIALS + 1
    for number, trial in undisturbed.trials.items():
        assert trial.run.info.run_name == f"trial-{number}"
        assert trial.tags["mlflow.parentRunId"] == parent.run.info.run_id  # nested under the study
        assert trial.run.info.status == "FINISHED" and trial.tags["tunefleet.state"] == "COMPLETE"
        assert set(trial.params) == {"x", "layers"}
        x, layers = float(trial.params["x"]), int(trial.params["layers"])
        assert trial.metrics["loss"] == pytest.approx((x - 2.0) ** 2 + layers)
        curve = trial.histories["intermediate/loss"]
        assert [step for step, _ in curve] == list(range(STEPS))
        assert curve[0][1] == pytest.approx(trial.metrics["loss"] + STEPS)
        assert {"tunefleet/cpu_seconds", "tunefleet/gpu_seconds", "tunefleet/duration_s"} <= set(
            trial.metrics
        )
        assert trial.tags["team"] == "vision" and "tunefleet.seed" in trial.tags
        assert trial.run.info.end_time >= trial.run.info.start_time > 0


def test_the_tracker_down_mid_study_delays_the_mirror_and_the_end_is_the_same(
    signed_in: MlflowServer, undisturbed: MirroredStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STEP_SLEEP_ENV, "0.3")  # ~1.2 s a trial: time to stop the server between them
    study = manifest("curves-outage", signed_in.url)
    storage = f"sqlite:///{tmp_path / 'curves-outage.db'}"
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["runner"], outcome["result"] = run_study(study, tmp_path)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: (m := read_study(signed_in, "curves-outage")) is not None and m.trials, 60)
        signed_in.stop()
        wait_for(lambda: finished_trials(storage, "curves-outage") >= TRIALS - 1, 60)
    finally:
        signed_in.start()  # the session's other tests need it too
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert outcome["result"].summary.complete == TRIALS  # the study never noticed
    disturbed = read_study(signed_in, "curves-outage")
    assert disturbed is not None
    assert disturbed.comparable() == undisturbed.comparable()


def test_a_rerun_of_an_ended_study_duplicates_nothing(signed_in: MlflowServer, calm: Mirrored) -> None:
    run_study(calm.manifest, calm.directory)  # resumes the ended study: nothing to run, the mirror checks
    again = read_study(signed_in, "curves-calm")
    assert again is not None
    assert again.all_runs == calm.study.all_runs == TRIALS + 1
    assert again.parent.run.info.run_id == calm.study.parent.run.info.run_id
    assert {n: r.run.info.run_id for n, r in again.trials.items()} == {
        n: r.run.info.run_id for n, r in calm.study.trials.items()
    }
    assert again.comparable() == calm.study.comparable()


@pytest.mark.parametrize(
    ("where", "reason"),
    [("closed port", "TrackerUnreachable"), ("wrong password", "CredentialsRefused")],
)
def test_a_wrong_uri_or_a_refused_credential_says_so_naming_the_field(
    signed_in: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, reason: str
) -> None:
    url = signed_in.url
    if where == "closed port":
        url = "http://127.0.0.1:9"  # discard: nothing listens there
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    storage = f"sqlite:///{tmp_path / 'health.db'}"
    optuna.create_study(study_name="health", storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), 1
    )
    mirror = TrackingMirror(storage, interval_s=0.2)
    try:
        mirror.watch("health", "health", Tracking.model_validate({"mlflow": {"trackingUri": url}}))
        health = wait_for(lambda: (h := mirror.health("health")) is not None and not h.healthy and h, 30)
        exposition = _exposition(mirror)
    finally:
        mirror.close()
    assert health.reason == reason
    assert health.message.startswith("spec.tracking.mlflow: ")
    assert url in health.message
    assert health.condition()[:3] == ("TrackingDegraded", True, reason)
    assert 'tunefleet_tracking_up{namespace="",study="health"} 0.0' in exposition
    assert f'tunefleet_tracking_failures_total{{namespace="",reason="{reason}",study="health"}}' in exposition


def test_a_change_of_tracker_health_is_announced_once_so_the_condition_is_written_at_once(
    tmp_path: Path,
) -> None:
    """The controller pokes the Study's reconcile on each announcement: without it, an ended
    study showed TrackingDegraded only at its next periodic reconcile, half a minute later."""
    storage = f"sqlite:///{tmp_path / 'health.db'}"
    optuna.create_study(study_name="team-a/health/uid", storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), 1
    )
    announced: list[tuple[str, str]] = []
    mirror = TrackingMirror(storage, interval_s=0.2)
    mirror.on_health_change = lambda namespace, name: announced.append((namespace, name))
    try:
        tracking = Tracking.model_validate({"mlflow": {"trackingUri": "http://127.0.0.1:9"}})
        mirror.watch("team-a/health/uid", "health", tracking, "team-a")
        wait_for(lambda: announced, 30)
        wait_for(lambda: _failures(mirror) >= 3, 30)
    finally:
        mirror.close()
    assert announced == [("team-a", "health")]  # unreachable once; the retries changed nothing


def _failures(mirror: TrackingMirror) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in _exposition(mirror).splitlines()
        if line.startswith("tunefleet_tracking_failures_total{")
    )


def _exposition(mirror: TrackingMirror) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(mirror.collector())
    return generate_latest(registry).decode()


def finished_trials(storage: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def wait_for(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s")
        time.sleep(0.2)


def test_a_run_made_just_before_a_crash_is_adopted_not_duplicated(
    signed_in: MlflowServer, tmp_path: Path
) -> None:
    """A mirror died between creating a trial's run and recording it: the next one finds the run."""
    from controller.studies.record import ATTR_STARTED_AT, ATTR_STOP_REASON
    from controller.tracking.content import StudyFacts, trial_content
    from controller.tracking.mlflow_writer import MlflowWriter

    storage = f"sqlite:///{tmp_path / 'crash.db'}"
    study = optuna.create_study(study_name="crash", storage=storage)
    study.set_user_attr(ATTR_STARTED_AT, 1234.5)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), 2)
    study.set_user_attr(ATTR_STOP_REASON, "MaxTrialsReached")
    trials = study.get_trials()
    facts = StudyFacts("crash", "crash", dict(study.user_attrs), None, ["value"], ["minimize"], trials, None)
    writer = MlflowWriter(signed_in.url, "crash")
    orphan = writer.create_run(
        writer.ensure_experiment(),
        trial_content(trials[1], ["value"], None, "crash", {}),
        facts.identity,
        None,
    )
    mirror = TrackingMirror(storage, interval_s=0.2)
    try:
        mirror.watch("crash", "crash", Tracking.model_validate({"mlflow": {"trackingUri": signed_in.url}}))
        assert mirror.finish("crash", 60), mirror.health("crash")
    finally:
        mirror.close()
    mirrored = read_study(signed_in, "crash")
    assert mirrored is not None and mirrored.all_runs == 3  # the study's run and two trials'
    assert mirrored.trials[1].run.info.run_id == orphan
    assert mirrored.trials[1].tags["mlflow.parentRunId"] == mirrored.parent.run.info.run_id
    assert mirrored.trials[1].params == {"x": str(trials[1].params["x"])}
