"""Trials of two pods on the emulated cluster: an Indexed Job, a headless Service, one voice.

The emulated kubelet runs each pod as a process on 127.0.0.1 and maps a headless Service's pod
DNS names and ports there (tests/cluster/emulator/network.py), so the two ranks really meet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.budget.ledger import Ledger
from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    finished,
    load_trials,
    optuna_key,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_jobs,
    trial_pods,
    wait_for,
    with_sleep,
)
from tests.cluster.emulator import KubeEmulator
from tests.cluster.test_budget_cluster import BudgetWatch, pod_gpu_seconds
from tests.cluster.test_budget_exact import HANGS_FOR_S, MAX_DURATION_S, SHORT_GRACE_ENV, WORST_CASE_S
from trial_worker.contract import ATTR_REASON, ATTR_RETRY_OF

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
INDEX = "batch.kubernetes.io/job-completion-index"


def two_node_study(name: str, objective: str, **spec: Any) -> dict[str, Any]:
    body = study_manifest(name, objective=f"tests.support.distributed_objectives:{objective}", **spec)
    body["spec"]["trial"]["nodes"] = 2
    return body


def run(
    kube: KubeEmulator, controller: ControllerProcess, body: dict[str, Any]
) -> dict[str, tuple[str, str]]:
    """Run the study to its end; every pod seen meanwhile: uid -> (trial, index)."""
    kube.api.create(STUDIES, body, NAMESPACE)
    name = body["metadata"]["name"]
    seen: dict[str, tuple[str, str]] = {}

    def done() -> bool:
        for pod in trial_pods(kube, name):
            meta = pod["metadata"]
            seen[meta["uid"]] = (meta["labels"]["tunefleet.dev/trial"], meta["annotations"][INDEX])
        return finished(kube, name)

    wait_for(done, 200, lambda: f"{name} did not finish\n" + controller.log()[-3000:])
    return seen


def test_two_ranks_all_reduce_over_gloo_on_the_cluster_and_everything_goes_with_the_study(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch", reason="needs the examples extra (torch CPU build)")
    prepare_cluster(kube_emulator)
    # Left by an earlier Study "gang", deleted; garbage collection has not come for it yet.
    stale_owner = {"apiVersion": "tunefleet.dev/v1alpha1", "kind": "Study", "name": "gang", "uid": "gone"}
    kube_emulator.api.create(
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gang-t0", "namespace": NAMESPACE, "ownerReferences": [stale_owner]},
            "spec": {"clusterIP": "None", "selector": {"app": "nothing"}, "ports": [{"port": 29500}]},
        },
        NAMESPACE,
    )
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    try:
        body = two_node_study("gang", "allreduce", max_trials=2, parallelism=2)
        seen = run(kube_emulator, controller, body)
    finally:
        controller.stop()
    trials = load_trials(postgres_url, "gang")
    for trial in trials:
        print(
            f"trial {trial.number}: x={trial.params['x']:.6f} value={trial.value:.6f} "
            f"written_by_rank={trial.user_attrs['written_by_rank']}"
        )
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert trial.value == pytest.approx(3 * trial.params["x"])  # x * 1 + x * 2: both ranks
        assert trial.user_attrs["written_by_rank"] == 0 and trial.intermediate_values == {0: 0.0}

    study = kube_emulator.api.get(STUDIES, NAMESPACE, "gang")
    jobs = trial_jobs(kube_emulator, "gang")
    assert {j["spec"]["completionMode"] for j in jobs} == {"Indexed"}
    services = [kube_emulator.api.get("services", NAMESPACE, f"gang-t{n}") for n in (0, 1)]
    for obj in [*jobs, *services]:  # the stale Service was replaced, not adopted
        assert obj["metadata"]["ownerReferences"][0]["uid"] == study["metadata"]["uid"]
    assert sorted(seen.values()) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    # A rank stopped by the success policy was billed and let go (its pod may be gone already).
    pods = trial_pods(kube_emulator, "gang")
    assert all("tunefleet.dev/gpu-accounting" not in (p["metadata"].get("finalizers") or []) for p in pods)
    ledger = Ledger(postgres_url)
    try:
        wait_for(lambda: all(ledger.settlement(uid) is not None for uid in seen), 30, "a pod was not billed")
        assert ledger.open_reservations(optuna_key(postgres_url, "gang")) == {}
    finally:
        ledger.close()

    kube_emulator.api.delete(STUDIES, NAMESPACE, "gang")
    wait_for(
        lambda: (
            not trial_jobs(kube_emulator, "gang")
            and not trial_pods(kube_emulator, "gang")
            and not kube_emulator.api.list("services", NAMESPACE)
        ),
        30,
        "the Jobs, Services and pods outlived their Study",
    )


def test_a_lost_rank_1_fails_the_whole_trial_and_it_is_retried_with_the_same_params(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch", reason="needs the examples extra (torch CPU build)")
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    body = with_sleep(two_node_study("lose", "allreduce_after_a_pause", max_trials=1, parallelism=1), 60)
    try:
        kube_emulator.api.create(STUDIES, body, NAMESPACE)

        def rank_1_running() -> dict[str, Any] | None:
            return next(
                (
                    p
                    for p in trial_pods(kube_emulator, "lose")
                    if (p["metadata"].get("annotations") or {}).get(INDEX) == "1"
                    and (p.get("status") or {}).get("phase") == "Running"
                ),
                None,
            )

        pod = wait_for(rank_1_running, 60, lambda: "rank 1 never ran\n" + controller.log()[-3000:])
        kube_emulator.runner.kill_pod(NAMESPACE, pod["metadata"]["name"])
        wait_for(lambda: finished(kube_emulator, "lose"), 200,
                 lambda: "no finish\n" + controller.log()[-3000:])
    finally:
        controller.stop()
    first, retry = load_trials(postgres_url, "lose")
    assert first.state.name == "FAIL" and first.user_attrs[ATTR_REASON] == "killed"
    assert retry.state.name == "COMPLETE" and retry.user_attrs[ATTR_RETRY_OF] == 0
    assert retry.params == first.params
    assert retry.value == pytest.approx(3 * retry.params["x"])
    failed = next(j for j in trial_jobs(kube_emulator, "lose") if j["metadata"]["name"] == "lose-t0")
    assert any(c["type"] == "Failed" for c in failed["status"]["conditions"])


def test_rank_0_pruned_ends_the_trial_and_stops_the_other_pod(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path).start()
    body = two_node_study("prune", "pruned_at_once_or_sleeps", max_trials=1, parallelism=1)
    try:
        run(kube_emulator, controller, body)
        wait_for(
            lambda: all(
                (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                for p in trial_pods(kube_emulator, "prune")
            ),
            30,
            "rank 1 kept running after rank 0 was pruned",
        )
    finally:
        controller.stop()
    (trial,) = load_trials(postgres_url, "prune")
    assert trial.state.name == "PRUNED"
    (job,) = trial_jobs(kube_emulator, "prune")
    assert {c["type"] for c in job["status"]["conditions"]} >= {"SuccessCriteriaMet", "Complete"}


def test_a_rank_that_cannot_be_scheduled_ends_the_trial_unschedulable_and_releases_its_room(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    kube_emulator.runner.block_scheduling(
        lambda pod: (pod["metadata"].get("annotations") or {}).get(INDEX) == "1"
    )
    controller = ControllerProcess(
        kube_emulator, postgres_url, tmp_path, env={"TUNEFLEET_UNSCHEDULABLE_TIMEOUT_S": "3"}
    ).start()
    body = two_node_study("stuck", "allreduce", max_trials=1, parallelism=1, max_retries=0)
    try:
        run(kube_emulator, controller, body)
        wait_for(lambda: not trial_pods(kube_emulator, "stuck"), 30, "the trial's pods outlived it")
    finally:
        controller.stop()
    (trial,) = load_trials(postgres_url, "stuck")
    assert trial.state.name == "FAIL" and trial.user_attrs[ATTR_REASON] == "unschedulable"
    status = kube_emulator.api.get(STUDIES, NAMESPACE, "stuck")["status"]
    stuck = {c["type"]: c for c in status["conditions"]}["PodsStuck"]
    assert stuck["status"] == "True" and stuck["reason"] == "unschedulable"
    ledger = Ledger(postgres_url)
    try:
        assert ledger.open_reservations(optuna_key(postgres_url, "stuck")) == {}
    finally:
        ledger.close()


def test_a_budget_of_exactly_two_hung_two_pod_trials_bills_every_pod_and_never_overspends(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    limit = 2 * 2 * WORST_CASE_S  # two trials of two one-GPU pods, each at its worst case
    body = with_sleep(
        study_manifest("hung", max_trials=6, parallelism=3, max_duration=f"{MAX_DURATION_S}s"), HANGS_FOR_S
    )
    body["spec"]["trial"].update(nodes=2, gpus=1)
    body["spec"]["budget"]["gpuHours"] = limit / 3600
    # Every trial hangs and fails: the GPU budget, not the failure budget, must end the study.
    body["spec"]["budget"]["maxFailedTrials"] = 8
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path, env=SHORT_GRACE_ENV).start()
    watch = BudgetWatch(postgres_url, limit, study="hung")
    frozen: set[str] = set()
    try:
        kube_emulator.api.create(STUDIES, body, NAMESPACE)

        def hang_running_pods_until_the_study_ends() -> bool:
            for pod in trial_pods(kube_emulator, "hung"):
                uid = pod["metadata"]["uid"]
                if uid not in frozen and (pod.get("status") or {}).get("phase") == "Running":
                    kube_emulator.runner.freeze_pod(NAMESPACE, pod["metadata"]["name"])
                    frozen.add(uid)
            return study_status(kube_emulator, "hung").get("phase") in ("Succeeded", "Failed")

        wait_for(
            watch.sampling(hang_running_pods_until_the_study_ends),
            200,
            lambda: "the study did not end\n" + controller.log()[-3000:],
        )
    finally:
        controller.stop()
    watch.sample()
    watch.close()
    # The first pod of a trial to reach its deadline fails the Job (pod failure policy), which
    # deletes the other: that one is billed to its deletion and, let go, may be gone already.
    left = {p["metadata"]["uid"]: p for p in trial_pods(kube_emulator, "hung")}
    trials = load_trials(postgres_url, "hung")
    with Ledger(postgres_url) as ledger:
        settled = ledger.totals(optuna_key(postgres_url, "hung")).settled.gpu_seconds
        open_reservations = ledger.open_reservations(optuna_key(postgres_url, "hung"))
        billed = {uid: ledger.settlement(uid) for uid in frozen}
    per_pod = {uid: charge.gpu_seconds if charge else None for uid, charge in billed.items()}
    errors = [per_pod[uid] - pod_gpu_seconds(pod) for uid, pod in left.items()]  # type: ignore[operator]
    print(
        f"two-pod trials, exact budget: limit {limit} GPU-s (2 trials x 2 pods x {WORST_CASE_S}), "
        f"settled {settled} GPU-s, per pod {sorted(per_pod.values())} GPU-s, overspend {watch.overspend} "
        f"over {watch.samples} samples, trials {len(trials)}, pods {len(frozen)} ({len(left)} still listed), "
        f"accounting error per listed pod {errors} s"
    )
    assert len(trials) == 2 and len(frozen) == 4
    assert study_status(kube_emulator, "hung")["stopReason"] == "BudgetExhausted"
    assert watch.overspend <= 0 and open_reservations == {}
    assert all(seconds for seconds in per_pod.values())  # every pod of both trials was billed
    assert errors == [0] * len(left)  # from its own timestamps
    assert settled == sum(per_pod.values()) <= limit  # type: ignore[arg-type]
