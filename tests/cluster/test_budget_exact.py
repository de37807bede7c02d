"""A GPU budget worth exactly three worst cases runs exactly three trials, when each uses its worst case.

The faithful worst case is a hung trial (a stuck collective, a deadlock): its worker cannot even run
its own maxDuration watchdog, so only the pod's activeDeadlineSeconds (maxDuration + 30 s) ends it.
The emulator freezes such a pod's process group with SIGSTOP (``PodRunner.freeze_pod``).

Figures printed (run with ``-s``): limit, settled, fraction used, overspend, accounting error per pod.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.budget.ledger import Ledger
from controller.kube.commands import DEADLINE_GRACE_ENV
from controller.kube.manifests import KUBELET_REACTION_SECONDS
from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    TRIAL_TERMINATION_GRACE_S,
    ControllerProcess,
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
from tests.cluster.test_budget_cluster import BudgetWatch, accounting_errors, pod_gpu_seconds
from trial_worker.contract import ATTR_ATTEMPT, ATTR_REASON

pytestmark = pytest.mark.timeout(300)
MAX_DURATION_S = 5
# The controller's deadline grace, shortened (30 s by default): only the deadline ends a hung
# trial, and the budget arithmetic is the same at any grace.
DEADLINE_GRACE_S = 5
SHORT_GRACE_ENV = {DEADLINE_GRACE_ENV: str(DEADLINE_GRACE_S)}
DEADLINE_S = MAX_DURATION_S + DEADLINE_GRACE_S  # the pod's activeDeadlineSeconds
HUNG_POD_BILLS_S = DEADLINE_S + TRIAL_TERMINATION_GRACE_S  # the deadline, then the whole kill grace
WORST_CASE_S = HUNG_POD_BILLS_S + KUBELET_REACTION_SECONDS  # what one one-GPU trial reserves
HANGS_FOR_S = 600  # the objective would sleep this long: only the deadline can end the trial


def _process_state(pid: int) -> str | None:
    """The kernel's one-letter state of a process (T: stopped), None once it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    state = stat.rsplit(")", 1)[1].split()[0]
    return None if state in ("Z", "X") else state


def _sleeping_pod(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1, **spec,
        "containers": [{"name": "c", "image": "x",
                        "command": ["python", "-c", f"import time; time.sleep({HANGS_FOR_S})"]}]}}


def _start_frozen(kube: KubeEmulator, body: dict[str, Any]) -> int:
    """Create the pod, wait until it runs, freeze it; its process id."""
    before = set(kube.runner.running_pids())
    kube.api.create("pods", body, "default")
    name = body["metadata"]["name"]
    kube.wait_for(lambda: (kube.api.get("pods", "default", name).get("status") or {}).get("phase")
                  == "Running", 20, message=f"pod {name} never ran")
    (pid,) = set(kube.runner.running_pids()) - before
    kube.runner.freeze_pod("default", name)
    kube.wait_for(lambda: _process_state(pid) == "T", 5, message=f"pod {name} was not stopped")
    return pid


def test_a_frozen_pod_ends_only_by_its_deadline_or_a_delete_and_never_outlives_the_emulator(
    kube_emulator_factory: Callable[..., KubeEmulator],
) -> None:
    kube = kube_emulator_factory()
    with pytest.raises(KeyError, match="default/nowhere"):
        kube.runner.freeze_pod("default", "nowhere")

    deadline_pid = _start_frozen(kube, _sleeping_pod("hung-deadline", activeDeadlineSeconds=2))
    ended = kube.wait_for(lambda: (p := kube.api.get("pods", "default", "hung-deadline"))["status"].get(
        "phase") == "Failed" and p, 20, message="the deadline did not end the frozen pod")
    terminated = ended["status"]["containerStatuses"][0]["state"]["terminated"]
    assert ended["status"]["reason"] == "DeadlineExceeded"
    assert terminated["exitCode"] == 137 and terminated["finishedAt"]
    assert pod_gpu_seconds(ended) == 3  # the deadline, then the grace its SIGTERM could not use
    assert _process_state(deadline_pid) is None

    deleted_pid = _start_frozen(kube, _sleeping_pod("hung-deleted"))
    kube.api.delete("pods", "default", "hung-deleted")  # SIGTERM stays pending; SIGKILL after 1 s
    kube.wait_for(lambda: kube.api.find("pods", "default", "hung-deleted") is None, 20,
                  message="the graceful delete did not end the frozen pod")
    assert _process_state(deleted_pid) is None

    leftover_pid = _start_frozen(kube, _sleeping_pod("hung-at-shutdown"))
    kube.stop()
    assert _process_state(leftover_pid) is None, "a frozen process outlived the emulator"


def test_a_budget_worth_exactly_three_trials_runs_exactly_three(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    prepare_cluster(kube_emulator)
    limit = 3 * WORST_CASE_S
    body = with_sleep(study_manifest("exact", max_trials=8, parallelism=4, max_duration=f"{MAX_DURATION_S}s"),
                      HANGS_FOR_S)
    body["spec"]["trial"]["gpus"] = 1
    body["spec"]["budget"]["gpuHours"] = limit / 3600
    # Every trial hangs and fails: the GPU budget, not the failure budget, must end the study.
    body["spec"]["budget"]["maxFailedTrials"] = 8
    controller = ControllerProcess(kube_emulator, postgres_url, tmp_path, env=SHORT_GRACE_ENV).start()
    watch = BudgetWatch(postgres_url, limit, study="exact")
    frozen: set[str] = set()
    seen_pids: set[int] = set()  # every trial process, frozen ones included: none may survive
    try:
        kube_emulator.api.create(STUDIES, body, NAMESPACE)

        def hang_running_pods_until_the_study_ends() -> bool:
            for pod in trial_pods(kube_emulator, "exact"):
                uid = pod["metadata"]["uid"]
                if uid not in frozen and (pod.get("status") or {}).get("phase") == "Running":
                    kube_emulator.runner.freeze_pod(NAMESPACE, pod["metadata"]["name"])
                    frozen.add(uid)
                    seen_pids.update(kube_emulator.runner.running_pids())
            return study_status(kube_emulator, "exact").get("phase") in ("Succeeded", "Failed")

        wait_for(watch.sampling(hang_running_pods_until_the_study_ends), 240,
                 lambda: "the study did not end\n" + controller.log()[-3000:])
    finally:
        controller.stop()
    watch.sample()
    watch.close()

    pods = trial_pods(kube_emulator, "exact")
    trials = load_trials(postgres_url, "exact")
    with Ledger(postgres_url) as ledger:
        totals = ledger.totals(optuna_key(postgres_url, "exact"))
        open_reservations = ledger.open_reservations(optuna_key(postgres_url, "exact"))
    errors = accounting_errors(kube_emulator, postgres_url, "exact")
    settled = totals.settled.gpu_seconds
    print(
        f"exact budget: limit {limit} GPU-s (3 worst cases of {WORST_CASE_S}), settled {settled} GPU-s "
        f"({settled / limit:.3f} of it), per pod {[pod_gpu_seconds(p) for p in pods]} GPU-s, overspend "
        f"{watch.overspend} over {watch.samples} samples, trials {len(trials)}, pods {len(pods)}, "
        f"accounting error per pod {errors} s"
    )
    # Exactly three: no fourth Job or pod, and no fourth trial asked (not even one refused by the budget).
    assert len(frozen) == 3
    assert len(pods) == len(trial_jobs(kube_emulator, "exact")) == len(trials) == 3
    assert study_status(kube_emulator, "exact")["stopReason"] == "BudgetExhausted"
    # Each ended by Kubernetes' deadline, failed for maxDuration, and was not retried (not infrastructure).
    for pod in pods:
        status = pod["status"]
        assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
        assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
        assert pod_gpu_seconds(pod) == HUNG_POD_BILLS_S
    outcomes = [(t.state.name, t.user_attrs.get(ATTR_REASON), t.user_attrs.get(ATTR_ATTEMPT, 0))
                for t in trials]
    assert outcomes == [("FAIL", "maxDuration", 0)] * 3
    # The budget: never overcommitted, nothing left reserved, each pod billed its own timestamps.
    assert watch.overspend <= 0
    assert open_reservations == {}
    assert errors == [0, 0, 0]
    assert settled == sum(pod_gpu_seconds(p) for p in pods) <= limit
    # Three hung trials use the whole budget but the kubelet's reaction margin, which the emulated
    # kubelet (acting at once) never needs; a fourth worst case would not fit in what is left.
    assert settled == 3 * HUNG_POD_BILLS_S and limit - settled < WORST_CASE_S
    assert all(_process_state(pid) is None for pid in seen_pids)
    assert not kube_emulator.runner.running_pids()
