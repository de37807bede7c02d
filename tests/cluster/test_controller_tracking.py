"""The controller mirrors Studies to a real MLflow tracking server; trial pods never talk to it.

Credentials come from a Secret in the Study's namespace (``spec.tracking.mlflow.secretRef``),
read by the controller only; the controller process itself has no MLFLOW_TRACKING_* variables.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    condition,
    finished,
    load_trials,
    optuna_key,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_pods,
    wait_for,
)
from tests.cluster.emulator import KubeEmulator
from tests.support.curves import STEP_SLEEP_ENV, STEPS
from tests.support.mlflow_content import MirroredStudy, read_study
from tests.support.mlflow_server import MlflowServer

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow, pytest.mark.xdist_group("mlflow")]
TRIALS = 4
EXPORT_FILES = {"best_config.json", "best_config.yaml", "importance.json", "report.html", "trials.csv"}
FAST_MIRROR = {"TUNEFLEET_TRACKING_INTERVAL_S": "0.5", "TUNEFLEET_TRACKING_RETRY_MAX_S": "2"}


def credentials_secret(name: str, username: str, password: str) -> dict[str, Any]:
    encode = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {"username": encode(username), "password": encode(password)},
    }


def tracked_study(name: str, tracking: dict[str, Any], **options: Any) -> dict[str, Any]:
    body = study_manifest(name, **options)
    body["spec"]["tracking"] = {"mlflow": tracking}
    return body


def controller(kube: KubeEmulator, postgres_url: str, tmp_path: Path, name: str) -> ControllerProcess:
    # The chart grants the controller the MLflow Secrets it names, and no other.
    grants = {"rbac": {"trackingSecretNames": ["mlflow-login", "wrong-login"]}}
    return ControllerProcess(
        kube, postgres_url, tmp_path, name=name, env=FAST_MIRROR, chart_values=grants
    ).start()


def test_a_cluster_study_is_mirrored_while_it_runs_and_a_controller_restart_duplicates_nothing(
    kube_emulator: KubeEmulator, postgres_url: str, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    kube_emulator.api.create(
        "secrets",
        credentials_secret("mlflow-login", mlflow_server.username, mlflow_server.password),
        NAMESPACE,
    )
    body = tracked_study(
        "mirrored",
        {"trackingUri": mlflow_server.url, "secretRef": "mlflow-login", "tags": {"team": "vision"}},
        objective="tests.support.curves:curve",
        max_trials=TRIALS,
        parallelism=2,
    )
    body["spec"]["searchSpace"]["layers"] = {"type": "int", "low": 1, "high": 4}
    body["spec"]["trial"]["template"]["spec"]["containers"] = [
        {"name": "trial", "env": [{"name": STEP_SLEEP_ENV, "value": "0.5"}]}
    ]
    experiment = f"{NAMESPACE}/mirrored"
    first = controller(kube_emulator, postgres_url, tmp_path, "controller-1")
    second: ControllerProcess | None = None
    try:
        kube_emulator.api.create(STUDIES, body, NAMESPACE)

        def curve_while_running() -> bool:
            study = read_study(mlflow_server, experiment)
            return study is not None and any(
                t.run.info.status == "RUNNING" and t.histories.get("intermediate/loss")
                for t in study.trials.values()
            )

        wait_for(curve_while_running, 120,
                 lambda: "no running trial's curve in MLflow\n" + first.log()[-3000:])
        first.kill()  # mid-study, mid-whatever: the next controller must find the runs it made
        second = controller(kube_emulator, postgres_url, tmp_path, "controller-2")
        wait_for(
            lambda: finished(kube_emulator, "mirrored"), 180,
            lambda: "the study did not end\n" + second.log()[-3000:],
        )
        mirrored: MirroredStudy = wait_for(
            lambda: (
                (s := read_study(mlflow_server, experiment)) is not None
                and s.parent.run.info.status == "FINISHED"
                and s
            ),
            120,
            lambda: "the study's run did not finish in MLflow\n" + second.log()[-3000:],
        )
        wait_for(
            lambda: (
                (c := condition(kube_emulator, "mirrored", "TrackingDegraded")) and c["reason"] == "Mirrored"
            ),
            30,
            f"conditions: {study_status(kube_emulator, 'mirrored').get('conditions')}",
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()

    assert study_status(kube_emulator, "mirrored")["phase"] == "Succeeded"
    # read_study fails on a second run for the study or for any trial: the restart duplicated nothing.
    # One run per stored trial: a trial the kill caught between its asking and its Job is failed
    # and retried as a new trial, and MLflow shows both, as Optuna does.
    stored = load_trials(postgres_url, "mirrored")
    assert mirrored.all_runs == len(stored) + 1 and sorted(mirrored.trials) == [t.number for t in stored]
    completed = {t.number for t in stored if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(completed) == TRIALS
    parent = mirrored.parent
    # the experiment is <namespace>/<name>; the parent run names the study object it mirrors
    assert parent.tags["tunefleet.study"] == optuna_key(postgres_url, "mirrored") != experiment
    assert parent.tags["team"] == "vision"
    assert parent.tags["tunefleet.stop_reason"] == "MaxTrialsReached"
    assert {f"export/{name}" for name in EXPORT_FILES} | {"tunefleet/spec.yaml"} <= set(parent.artifacts)
    for number, trial in mirrored.trials.items():
        assert trial.tags["mlflow.parentRunId"] == parent.run.info.run_id
        if number not in completed:
            assert trial.run.info.status == "FAILED", (number, trial.tags)
            continue
        assert trial.run.info.status == "FINISHED", (number, trial.tags)
        assert [step for step, _ in trial.histories["intermediate/loss"]] == list(range(STEPS))
        assert trial.metrics["loss"] == pytest.approx(
            (float(trial.params["x"]) - 2) ** 2 + int(trial.params["layers"])
        )
        assert trial.tags["tunefleet.node"] == "emulated-node" and trial.tags["tunefleet.image"]
        assert {"tunefleet/gpu_seconds", "tunefleet/cpu_seconds"} <= set(trial.metrics)
    # Trial pods carry no tracker address, credential or reference to the Secret.
    for pod in trial_pods(kube_emulator, "mirrored"):
        text = json.dumps(pod)
        assert "MLFLOW" not in text and "mlflow-login" not in text and mlflow_server.url not in text


def test_a_wrong_uri_or_a_refused_credential_gives_a_condition_naming_the_field(
    kube_emulator: KubeEmulator, postgres_url: str, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    kube_emulator.api.create(
        "secrets", credentials_secret("wrong-login", mlflow_server.username, "not-the-password"), NAMESPACE
    )
    cases = {
        "unreachable": ({"trackingUri": "http://127.0.0.1:9"}, "TrackerUnreachable"),
        "refused": ({"trackingUri": mlflow_server.url, "secretRef": "wrong-login"}, "CredentialsRefused"),
        # not granted by the chart: the emulated API server answers 403, as a real one does
        "no-secret": ({"trackingUri": mlflow_server.url, "secretRef": "absent"}, "SecretUnreadable"),
    }
    process = controller(kube_emulator, postgres_url, tmp_path, "controller")
    try:
        for name, (tracking, _) in cases.items():
            kube_emulator.api.create(
                STUDIES, tracked_study(name, tracking, max_trials=1, parallelism=1), NAMESPACE
            )
        for name, (_, reason) in cases.items():
            wait_for(
                lambda n=name, r=reason: (
                    (c := condition(kube_emulator, n, "TrackingDegraded"))
                    and c["status"] == "True"
                    and c["reason"] == r
                ),
                120,
                f"{name}: {condition(kube_emulator, name, 'TrackingDegraded')}\n" + process.log()[-2000:],
            )
            wait_for(lambda n=name: finished(kube_emulator, n), 120, f"{name} did not end")
    finally:
        process.stop()
    for name, (tracking, reason) in cases.items():
        status = study_status(kube_emulator, name)
        assert status["phase"] == "Succeeded", name  # the tracker never fails the study
        found = condition(kube_emulator, name, "TrackingDegraded")
        assert found is not None and found["reason"] == reason
        assert found["message"].startswith("spec.tracking.mlflow"), found["message"]
        assert (tracking.get("secretRef") or tracking["trackingUri"]) in found["message"]
    assert "rbac.trackingSecretNames" in condition(kube_emulator, "no-secret", "TrackingDegraded")["message"]
