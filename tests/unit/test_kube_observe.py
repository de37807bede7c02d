"""Pods read as trial outcomes: every situation by value, no cluster."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controller.kube.observe import classify_pod, observe_cluster
from controller.planner import INFRASTRUCTURE_REASONS

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def _iso(seconds_ago: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod(
    phase: str | None = "Running",
    *,
    trial: int = 4,
    exit_code: int | None = None,
    reason: str | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deleted_ago: float | None = None,
    waiting: str | None = None,
    terminated_reason: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "startTime": _iso(100), "conditions": conditions or []}
    if reason:
        status["reason"] = reason
    if exit_code is not None:
        status["containerStatuses"] = [
            {
                "name": "trial",
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": terminated_reason or "Error",
                        "startedAt": _iso(90),
                        "finishedAt": _iso(10),
                    }
                },
            }
        ]
    elif waiting:
        status["containerStatuses"] = [
            {"name": "trial", "state": {"waiting": {"reason": waiting, "message": "m"}}}
        ]
    meta: dict[str, Any] = {
        "name": f"s-t{trial}-abc",
        "uid": f"uid-{trial}",
        "creationTimestamp": _iso(200),
        "labels": {"tunefleet.dev/study": "s", "tunefleet.dev/trial": str(trial)},
        "finalizers": ["tunefleet.dev/gpu-accounting"],
    }
    if deleted_ago is not None:
        meta["deletionTimestamp"] = _iso(deleted_ago)
    return {"metadata": meta, "status": status}


def _disruption() -> list[dict[str, Any]]:
    return [
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": "preempted",
        }
    ]


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (_pod("Succeeded", exit_code=0, terminated_reason="Completed"), None),
        (_pod("Failed", exit_code=3), "objectiveRaised"),
        (_pod("Failed", exit_code=8), "storageUnavailable"),
        (_pod("Failed", exit_code=137), "killed"),
        (_pod("Failed", exit_code=137, terminated_reason="OOMKilled"), "oomKilled"),
        (_pod("Failed", exit_code=143, conditions=_disruption()), "preempted"),
        (_pod("Failed", exit_code=143, reason="DeadlineExceeded"), "maxDuration"),
        (_pod("Failed", exit_code=42), "exit42"),
        (_pod("Running", deleted_ago=30), "lost"),
        (_pod("Running", deleted_ago=30, conditions=_disruption()), "preempted"),
    ],
)
def test_finished_pods_give_the_trial_reason(pod: dict[str, Any], reason: str | None) -> None:
    outcome = classify_pod(pod, NOW)
    assert outcome.kind == "finished"
    assert outcome.reason == reason
    assert outcome.trial_number == 4


def test_killed_preempted_lost_and_storage_failures_are_retried_but_objective_failures_are_not() -> None:
    assert {"killed", "preempted", "lost", "storageUnavailable"} <= INFRASTRUCTURE_REASONS
    assert "objectiveRaised" not in INFRASTRUCTURE_REASONS
    assert "maxDuration" not in INFRASTRUCTURE_REASONS


def test_a_pod_being_deleted_gracefully_is_still_running() -> None:
    assert classify_pod(_pod("Running", deleted_ago=-20), NOW).kind == "running"


def test_unschedulable_and_image_pull_errors_become_stuck_only_after_their_timeout() -> None:
    unschedulable = _pod(
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes",
                "lastTransitionTime": _iso(120),
            }
        ],
    )
    assert classify_pod(unschedulable, NOW, unschedulable_timeout_s=600).kind == "pending"
    stuck = classify_pod(unschedulable, NOW, unschedulable_timeout_s=60)
    assert (stuck.kind, stuck.reason) == ("stuck", "unschedulable")
    pulling = _pod("Pending", waiting="ImagePullBackOff")
    assert classify_pod(pulling, NOW, image_pull_timeout_s=300).kind == "pending"
    stuck = classify_pod(pulling, NOW, image_pull_timeout_s=60)
    assert (stuck.kind, stuck.reason) == ("stuck", "ImagePullBackOff")


def test_live_trials_are_those_with_work_in_flight() -> None:
    def job(number: int, **status: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": f"s-t{number}", "labels": {"tunefleet.dev/trial": str(number)}},
            "status": status,
        }

    jobs = [job(1), job(2), job(3), job(4, failed=1, conditions=[{"type": "Failed", "status": "True"}])]
    pods = [_pod("Running", trial=1), _pod("Succeeded", trial=2, exit_code=0)]
    view = observe_cluster(jobs, pods, NOW)
    # 1 runs, 3 has a Job whose pod is not created yet; 2 finished; 4's Job failed without a pod left.
    assert view.live == frozenset({1, 3})
    assert [o.trial_number for o in view.finished] == [2]
