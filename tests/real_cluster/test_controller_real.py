"""The controller's scenarios on a real cluster (kind, k3d, any kubeconfig): ``pytest --real-cluster``.

Assertions read only what a user sees with kubectl (Study status, Jobs, pods), so the tier needs no
access to the database.
"""

from __future__ import annotations

import pytest

from tests.real_cluster.conftest import RealCluster, command_study

pytestmark = [pytest.mark.real_cluster, pytest.mark.timeout(900)]


def _finished(cluster: RealCluster, name: str) -> bool:
    return cluster.status(name).get("phase") in ("Succeeded", "Failed")


def test_happy_path_eight_trials_three_at_a_time(real_cluster: RealCluster) -> None:
    real_cluster.apply_study(command_study("quad", real_cluster.image))
    real_cluster.wait(lambda: _finished(real_cluster, "quad"), 600, "the study did not finish")
    status = real_cluster.status("quad")
    assert status["phase"] == "Succeeded"
    assert status["trialsSummary"] == "8/8"
    assert status["bestTrial"]["number"] in range(8)
    assert sorted(j.metadata.name for j in real_cluster.jobs("quad")) == sorted(
        f"quad-t{n}" for n in range(8)
    )


def test_invalid_spec_creates_nothing(real_cluster: RealCluster) -> None:
    body = command_study("bad", real_cluster.image)
    body["spec"]["searchSpace"]["y"] = {"type": "float", "low": 0, "high": 1, "when": {"nope": "a"}}
    real_cluster.apply_study(body)
    invalid = real_cluster.wait(lambda: real_cluster.condition("bad", "Invalid"), 120, "no Invalid condition")
    assert invalid["status"] == "True" and "searchSpace.y.when.nope" in invalid["message"]
    assert real_cluster.jobs("bad") == []


def test_a_deleted_pod_is_retried_with_the_same_params(real_cluster: RealCluster) -> None:
    real_cluster.apply_study(
        command_study("faulty", real_cluster.image, max_trials=2, parallelism=1, sleep=60)
    )
    pod = real_cluster.wait(
        lambda: next((p for p in real_cluster.pods("faulty") if p.status.phase == "Running"), None),
        300,
        "no trial pod ran",
    )
    real_cluster.core.delete_namespaced_pod(pod.metadata.name, real_cluster.namespace, grace_period_seconds=0)
    real_cluster.wait(lambda: _finished(real_cluster, "faulty"), 600, "the study did not finish")
    status = real_cluster.status("faulty")
    assert status["trials"]["retried"] == 1
    assert status["trialsSummary"] == "2/2"


def test_suspend_and_resume(real_cluster: RealCluster) -> None:
    real_cluster.apply_study(
        command_study("pause", real_cluster.image, max_trials=6, parallelism=2, sleep=10)
    )
    real_cluster.wait(lambda: real_cluster.jobs("pause"), 300, "no Job started")
    real_cluster.patch_study("pause", {"spec": {"suspend": True}})
    real_cluster.wait(lambda: real_cluster.status("pause").get("phase") == "Suspended", 120, "not Suspended")
    real_cluster.patch_study("pause", {"spec": {"suspend": False}})
    real_cluster.wait(lambda: _finished(real_cluster, "pause"), 600, "the resumed study did not finish")
    assert real_cluster.status("pause")["trialsSummary"] == "6/6"


def test_deleting_a_study_deletes_its_jobs(real_cluster: RealCluster) -> None:
    real_cluster.apply_study(
        command_study("gone", real_cluster.image, max_trials=10, parallelism=2, sleep=120)
    )
    real_cluster.wait(lambda: real_cluster.jobs("gone"), 300, "no Job started")
    real_cluster.delete_study("gone")
    real_cluster.wait(
        lambda: not real_cluster.jobs("gone") and not real_cluster.pods("gone"),
        300,
        "Jobs or pods of the deleted study remain",
    )


def test_a_two_node_trial_is_an_indexed_job_behind_a_headless_service(real_cluster: RealCluster) -> None:
    """The real API server admits the Indexed Job (success and pod-failure policies) and the
    Service under the chart's RBAC; the real Job controller stamps each pod's index; the garbage
    collector takes both with the Study."""
    body = command_study("pair", real_cluster.image, max_trials=2, parallelism=2)
    body["spec"]["trial"]["nodes"] = 2
    real_cluster.apply_study(body)
    real_cluster.wait(lambda: _finished(real_cluster, "pair"), 600, "the two-node study did not finish")
    status = real_cluster.status("pair")
    assert status["phase"] == "Succeeded" and status["trialsSummary"] == "2/2"
    jobs = real_cluster.jobs("pair")
    assert sorted(j.metadata.name for j in jobs) == ["pair-t0", "pair-t1"]
    assert {(j.spec.completion_mode, j.spec.completions, j.spec.parallelism) for j in jobs} == {
        ("Indexed", 2, 2)
    }
    selector = "tunefleet.dev/study=pair"
    services = real_cluster.core.list_namespaced_service(
        real_cluster.namespace, label_selector=selector
    ).items
    assert sorted((s.metadata.name, s.spec.cluster_ip) for s in services) == [
        ("pair-t0", "None"),
        ("pair-t1", "None"),
    ]
    indexes = {
        (
            p.metadata.labels["tunefleet.dev/trial"],
            p.metadata.annotations["batch.kubernetes.io/job-completion-index"],
        )
        for p in real_cluster.pods("pair")
    }
    assert {("0", "0"), ("1", "0")} <= indexes  # rank 1's pod may be gone once rank 0 ended its trial
    real_cluster.delete_study("pair")
    real_cluster.wait(
        lambda: (
            not real_cluster.jobs("pair")
            and not real_cluster.core.list_namespaced_service(
                real_cluster.namespace, label_selector=selector
            ).items
        ),
        300,
        "the Jobs or Services of the deleted two-node study remain",
    )
