"""The emulated Jobs controller and kubelet through the official client: pods that run as local
processes (or on timers), their status and logs, deadlines, faults, secrets and scheduling."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest
from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api

from tests.cluster.emulator import KubeEmulator

pytestmark = pytest.mark.timeout(60)

GROUP, VERSION = "tunefleet.dev", "v1alpha1"


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    pod_spec = spec.pop("pod_spec", {})
    meta = spec.pop("pod_metadata", {})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, **spec, "template": {"metadata": meta, "spec": {
                "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": "python:3.11", "command": command,
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                **pod_spec}}}}


def job_pod(kube: KubeEmulator, name: str, timeout: float = 15) -> dict[str, Any]:
    pods: list[dict[str, Any]] = kube.wait_for(
        lambda: kube.api.list("pods", "default", label_selector=f"job-name={name}"), timeout)
    assert len(pods) == 1
    return pods[0]


def pod_phase(kube: KubeEmulator, name: str, phase: str, timeout: float = 20) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = kube.api.find("pods", "default", name)
        return pod if pod and pod["status"].get("phase") == phase else None
    return kube.wait_for(check, timeout, message=f"pod {name} never reached {phase}")


def job_condition(kube: KubeEmulator, name: str, kind: str, timeout: float = 20) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.api.find("jobs.batch", "default", name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions") or []
                     if c["type"] == kind), None)
    return kube.wait_for(check, timeout, message=f"job {name} never got {kind}")


# -- Jobs and the pod runner --------------------------------------------------------------------


def test_job_succeeds_with_timestamps_and_log(kube_emulator: KubeEmulator,
                                              kube_client: ApiClient) -> None:
    batch, v1 = BatchV1Api(kube_client), CoreV1Api(kube_client)
    batch.create_namespaced_job("default", job("hi", ["python", "-c", "print('hi')"],
                                               pod_metadata={"labels": {"trial": "7"}}))
    job_condition(kube_emulator, "hi", "Complete")
    status = batch.read_namespaced_job_status("hi", "default").status
    assert status.succeeded == 1 and not status.failed and not status.active
    assert status.start_time is not None and status.completion_time is not None
    pod = v1.list_namespaced_pod("default", label_selector="job-name=hi").items[0]
    assert pod.metadata.name.startswith("hi-") and len(pod.metadata.name) == 8
    assert pod.metadata.labels["batch.kubernetes.io/job-name"] == "hi"
    assert pod.metadata.labels["trial"] == "7"
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Job", "hi", True)
    assert pod.status.phase == "Succeeded" and pod.status.start_time is not None
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at <= terminated.finished_at
    assert {c.type for c in pod.status.conditions} >= {"PodScheduled", "Initialized", "Ready",
                                                       "ContainersReady"}
    assert v1.read_namespaced_pod_log(pod.metadata.name, "default") == "hi\n"


def test_job_failure_exit_code_and_no_retry(kube_emulator: KubeEmulator) -> None:
    kube_emulator.api.create("jobs.batch", job("bad", ["python", "-c", "raise SystemExit(3)"]),
                             "default")
    condition = job_condition(kube_emulator, "bad", "Failed")
    assert condition["reason"] == "BackoffLimitExceeded"
    pod = job_pod(kube_emulator, "bad")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    time.sleep(0.3)
    assert len(kube_emulator.api.list("pods", "default", label_selector="job-name=bad")) == 1
    assert kube_emulator.api.get("jobs.batch", "default", "bad")["status"]["failed"] == 1


def test_active_deadlines(kube_emulator: KubeEmulator) -> None:
    sleep = ["python", "-c", "import time; time.sleep(30)"]
    kube_emulator.api.create("jobs.batch", job("pod-deadline", sleep,
                                               pod_spec={"activeDeadlineSeconds": 1}), "default")
    kube_emulator.api.create("jobs.batch", job("job-deadline", sleep, activeDeadlineSeconds=1),
                             "default")
    pod = pod_phase(kube_emulator, job_pod(kube_emulator, "pod-deadline")["metadata"]["name"],
                    "Failed")
    assert pod["status"]["reason"] == "DeadlineExceeded"
    # SIGTERM first, as the kubelet does (the pod's grace); python dies of it: 128 + 15.
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    assert job_condition(kube_emulator, "job-deadline", "Failed")["reason"] == "DeadlineExceeded"


def test_fault_injection(kube_emulator: KubeEmulator) -> None:
    sleep = ["python", "-c", "import time; time.sleep(30)"]
    hold = {"finalizers": ["tunefleet.dev/gpu-accounting"]}
    for name in ("killed", "preempted", "vanished"):
        kube_emulator.api.create("jobs.batch", job(name, sleep, pod_metadata=hold), "default")
    names = {n: job_pod(kube_emulator, n)["metadata"]["name"] for n in ("killed", "preempted",
                                                                         "vanished")}
    for name in names.values():
        pod_phase(kube_emulator, name, "Running")

    kube_emulator.runner.kill_pod("default", names["killed"])
    killed = pod_phase(kube_emulator, names["killed"], "Failed")
    terminated = killed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "Error")

    kube_emulator.runner.preempt_pod("default", names["preempted"])
    preempted = pod_phase(kube_emulator, names["preempted"], "Failed")
    disruption = next(c for c in preempted["status"]["conditions"]
                      if c["type"] == "DisruptionTarget")
    assert (disruption["status"], disruption["reason"]) == ("True", "PreemptionByScheduler")
    assert preempted["metadata"]["deletionTimestamp"]  # held by the accounting finalizer

    kube_emulator.runner.vanish_pod("default", names["vanished"])
    vanished = kube_emulator.wait_for(lambda: (p := kube_emulator.api.get(
        "pods", "default", names["vanished"]))["metadata"].get("deletionTimestamp") and p)
    assert "terminated" not in vanished["status"]["containerStatuses"][0]["state"]
    assert job_condition(kube_emulator, "vanished", "Failed")["reason"] == "BackoffLimitExceeded"
    # The Job controller released its own finalizer; ours still holds the pod.
    kube_emulator.wait_for(lambda: kube_emulator.api.get("pods", "default", names["vanished"])[
        "metadata"]["finalizers"] == ["tunefleet.dev/gpu-accounting"])
    kube_emulator.api.patch("pods", "default", names["vanished"],
                            {"metadata": {"finalizers": None}})
    assert kube_emulator.api.find("pods", "default", names["vanished"]) is None


def test_env_from_secrets_and_fields(kube_emulator: KubeEmulator) -> None:
    env = [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "TRIAL", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.labels['tunefleet.dev/trial']"}}},
           {"name": "GREETING", "value": "hello $(TRIAL)"}]
    script = "import os; print(os.environ['PASSWORD'], os.environ['POD'], os.environ['GREETING'])"
    spec = job("env", ["python", "-c", script],
               pod_metadata={"labels": {"tunefleet.dev/trial": "4"}})
    spec["spec"]["template"]["spec"]["containers"][0]["env"] = env
    kube_emulator.api.create("jobs.batch", spec, "default")
    name = job_pod(kube_emulator, "env")["metadata"]["name"]

    def waiting() -> Any:
        pod = kube_emulator.api.get("pods", "default", name)
        state = ((pod["status"].get("containerStatuses") or [{}])[0]).get("state") or {}
        return state.get("waiting", {}).get("reason") == "CreateContainerConfigError" and pod
    pod = kube_emulator.wait_for(waiting)
    assert pod["status"]["phase"] == "Pending"
    kube_emulator.api.create("secrets", {"metadata": {"name": "db"},
                                         "stringData": {"password": "s3cret"}}, "default")
    pod_phase(kube_emulator, name, "Succeeded")
    log = kube_emulator.runner.log_path("default", name)
    assert log is not None and log.read_text() == f"s3cret {name} hello 4\n"


def test_a_claim_is_a_host_directory_the_pod_reaches_at_its_mount_path(kube_emulator: KubeEmulator) -> None:
    writes = "import os, sys; open(sys.argv[1], 'w').write(os.environ['ROOT'])"
    pod_spec = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]}
    body = job("claim", ["python", "-c", writes, "/mnt/data/out.txt"], pod_spec=pod_spec)
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["volumeMounts"] = [{"name": "data", "mountPath": "/mnt/data"}]
    container["env"] = [{"name": "ROOT", "value": "/mnt/data"}]
    kube_emulator.api.create("jobs.batch", body, "default")
    name = job_pod(kube_emulator, "claim")["metadata"]["name"]

    def waiting() -> Any:
        pod = kube_emulator.api.get("pods", "default", name)
        state = ((pod["status"].get("containerStatuses") or [{}])[0]).get("state") or {}
        return "persistentvolumeclaim \"shared\" not found" in state.get("waiting", {}).get("message", "")
    kube_emulator.wait_for(waiting)
    kube_emulator.api.create("persistentvolumeclaims", {"metadata": {"name": "shared"}, "spec": {
        "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}, "default")
    pod_phase(kube_emulator, name, "Succeeded")
    host = kube_emulator.claim_path("default", "shared")
    assert (host / "out.txt").read_text() == str(host)  # env and argv under the mount point there


def test_scheduling_block_and_image_pull_failure(kube_emulator: KubeEmulator) -> None:
    kube_emulator.runner.block_scheduling(lambda pod: True)
    kube_emulator.api.create("pods", {"metadata": {"name": "waits"}, "spec": {"containers": [
        {"name": "c", "image": "x", "command": ["python", "-c", "pass"]}]}}, "default")

    def unschedulable() -> bool:
        pod = kube_emulator.api.get("pods", "default", "waits")
        return any(c["type"] == "PodScheduled" and c["reason"] == "Unschedulable"
                   for c in pod["status"].get("conditions") or [])
    kube_emulator.wait_for(unschedulable)
    kube_emulator.runner.block_scheduling(None)
    pod = pod_phase(kube_emulator, "waits", "Succeeded")
    assert pod["spec"]["nodeName"]

    kube_emulator.api.create("pods", {"metadata": {"name": "pull"}, "spec": {"containers": [
        {"name": "c", "image": "registry.example/does-not-exist:1"}]}}, "default")

    def backoff() -> bool:
        pod = kube_emulator.api.get("pods", "default", "pull")
        state = ((pod["status"].get("containerStatuses") or [{}])[0]).get("state") or {}
        return state.get("waiting", {}).get("reason") == "ImagePullBackOff"
    kube_emulator.wait_for(backoff)
    assert kube_emulator.api.get("pods", "default", "pull")["status"]["phase"] == "Pending"


def test_graceful_pod_deletion_and_job_ttl(kube_emulator: KubeEmulator,
                                           kube_client: ApiClient) -> None:
    v1 = CoreV1Api(kube_client)
    v1.create_namespaced_pod("default", {"metadata": {"name": "sleepy"}, "spec": {
        "terminationGracePeriodSeconds": 5, "containers": [
            {"name": "c", "image": "x",
             "command": ["python", "-c", "import time; time.sleep(30)"]}]}})
    pod_phase(kube_emulator, "sleepy", "Running")
    deleting = v1.delete_namespaced_pod("sleepy", "default")
    assert deleting.metadata.deletion_timestamp is not None
    kube_emulator.wait_for(lambda: kube_emulator.api.find("pods", "default", "sleepy") is None)
    assert not kube_emulator.runner.running_pids()

    kube_emulator.api.create("jobs.batch", job("ttl", ["python", "-c", "pass"],
                                               ttlSecondsAfterFinished=0), "default")
    kube_emulator.wait_for(lambda: kube_emulator.api.find("jobs.batch", "default", "ttl") is None,
                           message="ttlSecondsAfterFinished not honoured")
    kube_emulator.wait_for(lambda: not kube_emulator.api.list("pods", "default",
                                                              label_selector="job-name=ttl"))


@pytest.mark.kube_emulator(mode="simulate", behaviour=lambda pod: (
    0.2, 1 if pod["metadata"]["name"].startswith("sim-3") else 0))
def test_simulate_mode_scales_cheaply(kube_emulator: KubeEmulator) -> None:
    for index in range(50):
        kube_emulator.api.create("jobs.batch", job(f"sim-{index}", ["ignored"]), "default")

    def finished() -> int:
        jobs = kube_emulator.api.list("jobs.batch", "default")
        done = [j for j in jobs if any(c["type"] in ("Complete", "Failed")
                                       for c in j["status"].get("conditions") or [])]
        return len(done) == 50 and len(done)
    kube_emulator.wait_for(finished, timeout=30)
    failed = {j["metadata"]["name"] for j in kube_emulator.api.list("jobs.batch", "default")
              if j["status"].get("failed")}
    assert failed == {"sim-3"} | {f"sim-{i}" for i in range(30, 40)}
    assert not kube_emulator.runner.running_pids()


def test_a_simulated_pod_given_a_future_runs_until_it_resolves_and_exits_with_its_result(
    kube_emulator_factory: Any,
) -> None:
    futures: dict[str, concurrent.futures.Future[int]] = {}

    def behaviour(pod: dict[str, Any]) -> tuple[Any, ...]:
        futures[pod["metadata"]["name"]] = future = concurrent.futures.Future()
        return (future,)

    kube = kube_emulator_factory(mode="simulate", behaviour=behaviour)
    kube.api.create("jobs.batch", job("told", ["ignored"]), "default")
    kube.api.create("jobs.batch", job("raised", ["ignored"]), "default")
    told, raised = job_pod(kube, "told")["metadata"]["name"], job_pod(kube, "raised")["metadata"]["name"]
    pod_phase(kube, told, "Running")
    kube.wait_for(lambda: len(futures) == 2)
    time.sleep(0.3)
    assert kube.api.get("pods", "default", told)["status"]["phase"] == "Running"  # still running
    futures[told].set_result(8)
    futures[raised].set_exception(RuntimeError("the worker thread died"))
    for name, code in ((told, 8), (raised, 1)):
        pod = pod_phase(kube, name, "Failed")
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == code
