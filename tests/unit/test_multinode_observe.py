"""Reading a multi-node trial's pods: which pod speaks for the trial, and when all are billed."""

from __future__ import annotations

from typing import Any

from controller.kube.observe import ClusterView, PodOutcome
from controller.multinode.manifests import speaks_for_trial
from controller.multinode.observe import all_pods_done

INDEX = "batch.kubernetes.io/job-completion-index"


def pod(index: str | None) -> dict[str, Any]:
    annotations = {} if index is None else {INDEX: index}
    return {"metadata": {"name": "p", "annotations": annotations}}


def test_rank_0_or_a_single_pod_speaks_for_its_trial_and_the_others_do_not() -> None:
    assert speaks_for_trial(pod(None)) and speaks_for_trial(pod("0"))
    assert not speaks_for_trial(pod("1"))


def outcome(kind: str, uid: str) -> PodOutcome:
    return PodOutcome(kind, trial_number=3, uid=uid, name=uid)  # type: ignore[arg-type]


def view(job_conditions: list[str] | None, *kinds: str) -> ClusterView:
    result = ClusterView()
    if job_conditions is not None:
        conditions = [{"type": kind, "status": "True"} for kind in job_conditions]
        result.jobs[3] = {"metadata": {"name": "s-t3"}, "status": {"conditions": conditions}}
    result.pods[3] = [outcome(kind, f"p{i}") for i, kind in enumerate(kinds)]
    return result


def test_a_trial_is_done_only_when_every_pod_finished_and_no_other_will_start() -> None:
    assert not all_pods_done(view([], "finished", "running"), 3, nodes=2)
    assert not all_pods_done(view([], "finished"), 3, nodes=2)  # the Job may still create rank 1
    assert all_pods_done(view([], "finished", "finished"), 3, nodes=2)  # the Job's status lags
    assert all_pods_done(view(["Failed"], "finished"), 3, nodes=2)
    assert all_pods_done(view(None, "finished"), 3, nodes=2)  # the Job is gone
    assert not all_pods_done(view(["Complete"], "finished", "pending"), 3, nodes=2)
