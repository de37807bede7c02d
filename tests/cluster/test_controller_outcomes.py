"""Trial outcomes read from pods: failures of the objective, pruning, killed/preempted/lost pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    finished,
    load_trials,
    prepare_cluster,
    running_pod,
    study_manifest,
    study_status,
    trial_pods,
    wait_for,
    with_sleep,
)
from tests.cluster.emulator import KubeEmulator
from trial_worker.contract import ATTR_REASON, ATTR_RETRY_OF

pytestmark = pytest.mark.timeout(240)


def _run_until_finished(kube: KubeEmulator, controller: ControllerProcess, name: str) -> None:
    wait_for(lambda: finished(kube, name), 180, lambda: f"{name} did not finish\n" + controller.log()[-3000:])


def test_an_objective_that_always_raises_stops_the_study_after_three_trials_with_its_log(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    """An objective's own failure is not retried, and a study whose first trials all fail the same
    way stops (it used to fail every one of its maxTrials: 51 Jobs in 43 s)."""
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        body = study_manifest(
            "boom", objective="tests.cluster.objectives:failing", max_trials=50, parallelism=2
        )
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        _run_until_finished(kube_emulator, controller, "boom")
    finally:
        controller.stop()
    trials = load_trials(postgres_url, "boom")
    assert 3 <= len(trials) <= 4, "3 failures decide; a 4th may have been running, and was stopped"
    assert not any(ATTR_RETRY_OF in t.user_attrs for t in trials), "an objective's own failure is not retried"
    reasons = [t.user_attrs.get(ATTR_REASON) for t in trials]
    assert reasons.count("objectiveRaised") >= 3 and set(reasons) <= {"objectiveRaised", "failureBudget"}
    status = study_status(kube_emulator, "boom")
    assert status["phase"] == "Failed" and status["stopReason"] == "FailureBudgetExhausted"
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "FailureBudgetExhausted"
    message = failed["message"]
    assert message.startswith("the first 3 trials all failed with objectiveRaised and none completed")
    assert "trial 0 failed with objectiveRaised: RuntimeError: the objective failed on purpose" in message
    log_tail = message.split("its log ends with:\n", 1)[1]  # the pod's log, traceback included
    assert "raise RuntimeError(\"the objective failed on purpose\")" in log_tail
    events = kube_emulator.api.list("events", NAMESPACE)
    [stopped] = [e for e in events if e.get("reason") == "FailureBudgetExhausted"]
    assert stopped["type"] == "Warning" and stopped["message"] == message[:1024]
    assert any("objectiveRaised" in e.get("message", "") for e in events if e.get("reason") == "TrialFailed")


def test_pruned_trials_are_pruned_not_failed(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        body = study_manifest(
            "prune", objective="tests.cluster.objectives:pruned_when_negative", max_trials=6, parallelism=3
        )
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        _run_until_finished(kube_emulator, controller, "prune")
    finally:
        controller.stop()
    trials = load_trials(postgres_url, "prune")
    assert len(trials) == 6
    for trial in trials:
        expected = "PRUNED" if trial.params["x"] < 0 else "COMPLETE"
        assert trial.state.name == expected, trial
    status = study_status(kube_emulator, "prune")
    assert status["trials"]["pruned"] == sum(t.params["x"] < 0 for t in trials) > 0
    assert status["trials"]["failed"] == 0
    assert all(
        (p.get("status") or {}).get("phase") == "Succeeded" for p in trial_pods(kube_emulator, "prune")
    )


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("kill", "killed"), ("preempt", "preempted"), ("vanish", "lost")],
)
def test_a_pod_that_dies_under_its_trial_is_retried_with_the_same_params(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path, fault: str, reason: str
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        body = with_sleep(study_manifest("faulty", max_trials=2, parallelism=1, max_retries=2), 6)
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        pod = wait_for(lambda: running_pod(kube_emulator, "faulty"), 60, "no trial pod started")
        name = pod["metadata"]["name"]
        {
            "kill": kube_emulator.runner.kill_pod,
            "preempt": kube_emulator.runner.preempt_pod,
            "vanish": kube_emulator.runner.vanish_pod,
        }[fault](NAMESPACE, name)
        _run_until_finished(kube_emulator, controller, "faulty")
    finally:
        controller.stop()

    trials = sorted(load_trials(postgres_url, "faulty"), key=lambda t: t.number)
    first = trials[0]
    assert first.state.name == "FAIL"
    assert first.user_attrs[ATTR_REASON] == reason
    retry = next(t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == first.number)
    assert retry.params == first.params
    assert retry.state.name == "COMPLETE"
    assert len(trials) == 3, "two logical trials, one of them run twice"
    status = study_status(kube_emulator, "faulty")
    assert status["phase"] == "Succeeded"
    assert status["trials"]["retried"] == 1
    assert status["trialsSummary"] == "2/2"
    # The dead pod was settled and released like any other.
    assert not kube_emulator.api.list(
        "pods", NAMESPACE, field_selector=None, label_selector=("tunefleet.dev/study=faulty")
    ) or all(
        "tunefleet.dev/gpu-accounting" not in (p["metadata"].get("finalizers") or [])
        for p in trial_pods(kube_emulator, "faulty")
    )


def test_an_image_that_cannot_be_pulled_fails_the_trial_and_says_so_on_the_study(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(
        kube_emulator, postgres_url, tmp_path, env={"TUNEFLEET_IMAGE_PULL_TIMEOUT_S": "3"}
    ).start()
    try:
        body = study_manifest("noimage", max_trials=1, parallelism=1)
        body["spec"]["trial"]["image"] = "registry.example/does-not-exist:1"
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        _run_until_finished(kube_emulator, controller, "noimage")
    finally:
        controller.stop()
    (trial,) = load_trials(postgres_url, "noimage")
    assert trial.state.name == "FAIL"
    assert trial.user_attrs[ATTR_REASON] in ("ErrImagePull", "ImagePullBackOff")
    status = study_status(kube_emulator, "noimage")
    stuck = {c["type"]: c for c in status["conditions"]}["PodsStuck"]
    assert stuck["status"] == "True"
    assert stuck["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert "does-not-exist" in stuck["message"]


def test_a_trial_over_max_duration_fails_with_max_duration(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        body = with_sleep(study_manifest("slow", max_trials=1, parallelism=1, max_duration="3s"), 30)
        kube_emulator.api.create(STUDIES, body, NAMESPACE)
        _run_until_finished(kube_emulator, controller, "slow")
    finally:
        controller.stop()
    (trial,) = load_trials(postgres_url, "slow")
    assert trial.state.name == "FAIL"
    assert trial.user_attrs[ATTR_REASON] == "maxDuration"
