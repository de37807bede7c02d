"""A Study's lifecycle: invalid specs, suspend and resume, live changes, deletion."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    condition,
    finished,
    load_trials,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_jobs,
    trial_pods,
    wait_for,
    with_sleep,
)
from tests.cluster.emulator import KubeEmulator
from trial_worker.contract import ATTR_REASON

pytestmark = pytest.mark.timeout(240)


def _active_pods(kube: KubeEmulator, name: str) -> list[dict]:
    return [
        p
        for p in trial_pods(kube, name)
        if (p.get("status") or {}).get("phase") in (None, "Pending", "Running")
        and not p["metadata"].get("deletionTimestamp")
    ]


def test_an_invalid_spec_gets_an_invalid_condition_naming_the_field_and_nothing_is_created(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    body = study_manifest("bad")
    body["spec"]["searchSpace"]["momentum"] = {
        "type": "float",
        "low": 0.8,
        "high": 0.99,
        "when": {"optimizer": "sgd"},
    }
    kube_emulator.api.create(STUDIES, body, NAMESPACE)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        invalid = wait_for(
            lambda: condition(kube_emulator, "bad", "Invalid"),
            60,
            lambda: "no Invalid condition\n" + controller.log()[-2000:],
        )
        assert invalid["status"] == "True"
        assert "spec.searchSpace.momentum.when.optimizer" in invalid["message"]
        assert "not a parameter" in invalid["message"]
        assert study_status(kube_emulator, "bad")["phase"] == "Invalid"
        assert trial_jobs(kube_emulator, "bad") == []
        # The Event is posted after the status patch that shows the condition: wait for it.
        def spec_invalid_events() -> list[dict]:
            listed = kube_emulator.api.list("events", NAMESPACE)
            return [e for e in listed if e.get("reason") == "SpecInvalid"]

        events = wait_for(spec_invalid_events, 30, "no SpecInvalid Event")
        assert events[0]["type"] == "Warning"

        # Fixing the spec starts the study.
        kube_emulator.api.patch(STUDIES, NAMESPACE, "bad", {"spec": {"searchSpace": {"momentum": None}}})
        wait_for(lambda: trial_jobs(kube_emulator, "bad"), 60, "the fixed study started no Job")
        wait_for(
            lambda: condition(kube_emulator, "bad", "Invalid")["status"] == "False",
            30,
            "the Invalid condition was not cleared",
        )
    finally:
        controller.stop()


def test_suspend_stops_new_trials_and_resume_continues(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        kube_emulator.api.create(
            STUDIES, with_sleep(study_manifest("pause", max_trials=6, parallelism=2), 3), NAMESPACE
        )
        wait_for(lambda: len(trial_jobs(kube_emulator, "pause")) >= 2, 60, "no Jobs started")
        kube_emulator.api.patch(STUDIES, NAMESPACE, "pause", {"spec": {"suspend": True}})
        wait_for(
            lambda: study_status(kube_emulator, "pause").get("phase") == "Suspended",
            60,
            lambda: "the study did not report Suspended\n" + controller.log()[-2000:],
        )
        # The running ones finish; no new Job appears.
        wait_for(lambda: not _active_pods(kube_emulator, "pause"), 60, "running trials did not finish")
        jobs_when_suspended = len(trial_jobs(kube_emulator, "pause"))
        assert condition(kube_emulator, "pause", "Suspended")["status"] == "True"
        import time

        time.sleep(5)  # several resyncs
        assert len(trial_jobs(kube_emulator, "pause")) == jobs_when_suspended
        assert jobs_when_suspended < 6

        kube_emulator.api.patch(STUDIES, NAMESPACE, "pause", {"spec": {"suspend": False}})
        wait_for(lambda: finished(kube_emulator, "pause"), 120, "the resumed study did not finish")
    finally:
        controller.stop()
    assert len(load_trials(postgres_url, "pause")) == 6
    assert condition(kube_emulator, "pause", "Suspended")["status"] == "False"


def test_parallelism_changes_apply_to_a_running_study(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    peak_after = 0
    try:
        kube_emulator.api.create(
            STUDIES, with_sleep(study_manifest("wide", max_trials=9, parallelism=1), 3), NAMESPACE
        )
        wait_for(lambda: trial_jobs(kube_emulator, "wide"), 60, "no Job started")
        assert len(_active_pods(kube_emulator, "wide")) <= 1
        kube_emulator.api.patch(STUDIES, NAMESPACE, "wide", {"spec": {"parallelism": 3}})

        def three_at_once() -> bool:
            nonlocal peak_after
            peak_after = max(peak_after, len(_active_pods(kube_emulator, "wide")))
            return peak_after == 3

        wait_for(three_at_once, 60, lambda: "parallelism 3 was never reached\n" + controller.log()[-2000:])
        wait_for(lambda: finished(kube_emulator, "wide"), 120, "the study did not finish")
    finally:
        controller.stop()
    assert len(load_trials(postgres_url, "wide")) == 9
    assert study_status(kube_emulator, "wide")["observedGeneration"] == 2


def test_deleting_a_study_deletes_its_jobs_fails_running_trials_and_keeps_the_data(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        kube_emulator.api.create(
            STUDIES, with_sleep(study_manifest("gone", max_trials=20, parallelism=2), 20), NAMESPACE
        )
        wait_for(
            lambda: (
                len(
                    [
                        p
                        for p in trial_pods(kube_emulator, "gone")
                        if (p.get("status") or {}).get("phase") == "Running"
                    ]
                )
                == 2
            ),
            60,
            "two trials never ran",
        )
        kube_emulator.api.delete(STUDIES, NAMESPACE, "gone")
        wait_for(
            lambda: not trial_jobs(kube_emulator, "gone") and not trial_pods(kube_emulator, "gone"),
            60,
            lambda: "Jobs or pods of the deleted study remain\n" + controller.log()[-2000:],
        )
        trials = wait_for(
            lambda: (
                (t := load_trials(postgres_url, "gone")) and all(x.state.name != "RUNNING" for x in t) and t
            ),
            30,
            "trials stayed RUNNING",
        )
    finally:
        controller.stop()
    assert len(trials) == 2
    assert {t.user_attrs.get(ATTR_REASON) for t in trials} == {"studyDeleted"}
