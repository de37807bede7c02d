"""A trial of ``trial.nodes`` > 1 pods: the Indexed Job and its headless Service, without I/O.

The trial Job of :func:`controller.kube.manifests.trial_job` becomes an Indexed Job of ``nodes``
completions run at once: each pod is named ``<job>-<index>`` by Kubernetes and, through the
Service named by ``subdomain``, reachable as ``<job>-<index>.<service>``, so every rank finds
rank 0 (``MASTER_ADDR``) without an operator. The Job succeeds when index 0 succeeds (rank 0 is
the trial's voice; the other pods are then stopped), and fails as a whole as soon as any pod
fails or is disrupted, so the controller retries the whole trial with the same parameters.
"""

from __future__ import annotations

from typing import Any

from controller.spec import StudySpec
from trial_worker.contract import (
    DEFAULT_MASTER_PORT,
    JOB_COMPLETION_INDEX_ANNOTATION,
    RANK_ENV_NAMES,
    rendezvous_static_env,
)

RENDEZVOUS_PORT_NAME = "rendezvous"
# controller.kube.manifests's labels (it imports this module, so they are not imported from it).
STUDY_LABEL = "tunefleet.dev/study"
TRIAL_LABEL = "tunefleet.dev/trial"


def trial_service_name(job_name: str) -> str:
    """The Service (and pod subdomain) of a trial: a DNS-1035 label, so it starts with a letter
    even when the study's name starts with a digit."""
    return job_name if job_name[:1].isalpha() else f"t{job_name}"


def master_address(job_name: str) -> str:
    """Rank 0's DNS name, as every pod of the trial resolves it in its namespace."""
    return f"{job_name}-0.{trial_service_name(job_name)}"


def rendezvous_env(nodes: int, job_name: str) -> list[dict[str, Any]]:
    """The trial container's rendezvous env: shared values, and the rank from the pod's index."""
    static = rendezvous_static_env(nodes, master_address(job_name), DEFAULT_MASTER_PORT)
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in static.items()]
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{JOB_COMPLETION_INDEX_ANNOTATION}']"}}
    env += [{"name": name, "valueFrom": index} for name in RANK_ENV_NAMES]
    return env


def reserved_env_names(nodes: int) -> frozenset[str]:
    """Names the template's env cannot set on a multi-node trial's container (rendezvous_env sets them)."""
    if nodes <= 1:
        return frozenset()
    return frozenset(rendezvous_static_env(nodes, "-", DEFAULT_MASTER_PORT)) | frozenset(RANK_ENV_NAMES)


def spread_over_nodes(job: dict[str, Any], spec: StudySpec, container_name: str) -> dict[str, Any]:
    """The trial Job as an Indexed Job of ``spec.trial.nodes`` pods (unchanged for one node)."""
    nodes = spec.trial.nodes
    if nodes <= 1:
        return job
    name = job["metadata"]["name"]
    job_spec = job["spec"]
    job_spec.update(
        completionMode="Indexed",
        completions=nodes,
        parallelism=nodes,
        # Rank 0 is the trial: once it succeeded (told, or pruned), the Job is complete and
        # Kubernetes stops the other pods.
        successPolicy={"rules": [{"succeededIndexes": "0"}]},
        # Any pod lost, preempted or failed fails the whole Job at once (backoffLimit 0 would
        # too, but only after the pod is gone); the controller retries the trial, same params.
        podFailurePolicy={
            "rules": [
                {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": container_name, "operator": "NotIn", "values": [0]},
                },
            ]
        },
    )
    pod = job_spec["template"]["spec"]
    pod["subdomain"] = trial_service_name(name)
    for container in pod["containers"]:
        if container["name"] == container_name:
            reserved = reserved_env_names(nodes)
            kept = [e for e in container.get("env") or [] if e.get("name") not in reserved]
            container["env"] = kept + rendezvous_env(nodes, name)
            ports = [p for p in container.get("ports") or [] if p.get("name") != RENDEZVOUS_PORT_NAME]
            container["ports"] = [
                *ports,
                {"name": RENDEZVOUS_PORT_NAME, "containerPort": DEFAULT_MASTER_PORT, "protocol": "TCP"},
            ]
    return job


def trial_service(job: dict[str, Any]) -> dict[str, Any]:
    """The headless Service that gives the pods of an Indexed trial Job their DNS names.

    Labelled and owned like the Job (by the Study, so it goes with it); it selects the trial's
    pods by their study and trial labels, and publishes them before they are ready, since ranks
    meet while starting.
    """
    meta = job["metadata"]
    metadata: dict[str, Any] = {
        "name": trial_service_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": dict(meta["labels"]),
    }
    if meta.get("ownerReferences"):
        metadata["ownerReferences"] = [dict(ref) for ref in meta["ownerReferences"]]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "selector": {key: pod_labels[key] for key in (STUDY_LABEL, TRIAL_LABEL)},
            "publishNotReadyAddresses": True,
            "ports": [{"name": RENDEZVOUS_PORT_NAME, "port": DEFAULT_MASTER_PORT, "protocol": "TCP"}],
        },
    }


def job_companions(job: dict[str, Any], spec: StudySpec) -> list[dict[str, Any]]:
    """The objects a trial Job needs beside it: its headless Service when it spans several nodes."""
    return [trial_service(job)] if spec.trial.nodes > 1 else []


def speaks_for_trial(pod: dict[str, Any]) -> bool:
    """Whether the pod is its trial's voice: rank 0 of a multi-node trial, or a trial's only pod.

    A rank > 0 that succeeded says nothing about the trial (rank 0 tells it), and one stopped
    after rank 0 ended the trial is no failure of it.
    """
    index = ((pod.get("metadata") or {}).get("annotations") or {}).get(JOB_COMPLETION_INDEX_ANNOTATION)
    return index in (None, "0")
