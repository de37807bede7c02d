"""A trial of several nodes on the cluster: the Indexed Job and its headless Service, by value and
against the Kubernetes 1.33 schema (strict)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.kube.commands import render_objects
from controller.kube.executor import StudyRuntime
from controller.kube.manifests import TrialPodSettings
from controller.multinode.manifests import job_companions, master_address, trial_service_name
from controller.spec import StudySpec, load_study_file
from tests.conftest import REPO_ROOT
from tests.unit.test_manifests import REF, STORAGE, _job, _spec, _trial_container, _validate
from trial_worker.contract import PrunerConfig


def _two_nodes(**trial: Any) -> StudySpec:
    return _spec(nodes=2, **trial)


def _runtime(spec: StudySpec) -> StudyRuntime:
    study: Any = None  # worst_case reads the spec only
    return StudyRuntime(REF, spec, study, 0, PrunerConfig(), STORAGE, TrialPodSettings())


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _trial_container(job)["env"]}


def test_one_node_stays_a_plain_job_with_no_service() -> None:
    job = _job(_spec())
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert job_companions(job, _spec()) == []
    assert "MASTER_ADDR" not in _env(job)


def test_several_nodes_make_an_indexed_job_that_succeeds_with_index_0_and_fails_as_a_whole() -> None:
    spec = _two_nodes()
    job = _job(spec, number=3)
    _validate(job)
    body = job["spec"]
    assert (body["completionMode"], body["completions"], body["parallelism"]) == ("Indexed", 2, 2)
    assert body["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    assert body["backoffLimit"] == 0 and body["podReplacementPolicy"] == "Failed"
    actions = body["podFailurePolicy"]["rules"]
    assert {r["action"] for r in actions} == {"FailJob"}
    assert actions[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert actions[1]["onExitCodes"] == {"containerName": "trial", "operator": "NotIn", "values": [0]}
    assert body["template"]["spec"]["subdomain"] == "mlp-t3"


def test_every_pod_gets_the_rendezvous_environment_with_its_rank_from_its_index() -> None:
    env = _env(_job(_two_nodes(), number=3))
    assert env["MASTER_ADDR"] == "mlp-t3-0.mlp-t3" == master_address("mlp-t3")
    assert (env["MASTER_PORT"], env["WORLD_SIZE"], env["NNODES"], env["TUNEFLEET_NNODES"]) == (
        "29500",
        "2",
        "2",
        "2",
    )
    assert (env["PET_NNODES"], env["PET_MASTER_ADDR"], env["PET_MASTER_PORT"]) == (
        "2",
        "mlp-t3-0.mlp-t3",
        "29500",
    )
    index = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    for name in ("RANK", "NODE_RANK", "PET_NODE_RANK", "TUNEFLEET_NODE_RANK"):
        assert env[name] == index


def test_the_template_cannot_override_the_rendezvous() -> None:
    template = {"spec": {"containers": [{"name": "trial", "env": [{"name": "MASTER_PORT", "value": "1"}]}]}}
    env = _trial_container(_job(_two_nodes(template=template)))["env"]
    assert [e["value"] for e in env if e["name"] == "MASTER_PORT"] == ["29500"]


def test_the_headless_service_is_owned_by_the_study_and_selects_the_trials_pods() -> None:
    spec = _two_nodes()
    job = _job(spec, number=3)
    (service,) = job_companions(job, spec)
    _validate(service)
    assert service["metadata"]["name"] == "mlp-t3"
    assert service["metadata"]["labels"] == job["metadata"]["labels"]
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert service["metadata"]["ownerReferences"][0]["kind"] == "Study"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_a_study_named_with_a_leading_digit_still_gets_a_valid_service_name() -> None:
    assert trial_service_name("9lives-t0") == "t9lives-t0"
    assert master_address("9lives-t0") == "9lives-t0-0.t9lives-t0"


@pytest.mark.parametrize("nodes", [2, 64])
def test_the_budget_reserves_nodes_times_gpus_for_the_worst_case(nodes: int) -> None:
    one, many = _runtime(_spec()), _runtime(_spec(nodes=nodes))
    assert many.worst_case().gpu_seconds == nodes * one.worst_case().gpu_seconds
    # CPU-seconds are rounded once for the whole trial (1.5 CPUs here), not once per pod.
    assert abs(many.worst_case().cpu_seconds - nodes * one.worst_case().cpu_seconds) < nodes


def test_render_shows_the_indexed_job_and_its_service_for_the_torchrun_example() -> None:
    manifest = load_study_file(REPO_ROOT / "examples" / "torchrun" / "study.yaml")
    objects = render_objects(manifest, "team-a", 0, STORAGE, include_namespace_objects=False)
    assert [o["kind"] for o in objects] == ["Job", "Service"]
    for obj in objects:
        _validate(obj)
    assert objects[0]["spec"]["completions"] == 2
