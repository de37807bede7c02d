"""Trials that span several nodes (``trial.nodes``): the checks a multi-node trial needs.

A trial of ``nodes`` pods is an Indexed Job behind a headless Service: Kubernetes names each pod
``<job>-<index>`` and puts it under the Service's subdomain, so rank 0 has a stable DNS name that
every rank can reach. A template that names the pods itself would break that, and a GPU budget
smaller than one trial's worst case could never start any trial. Neither is visible to CEL: the
template is free-form, and durations are strings CEL cannot read as seconds.
"""

from __future__ import annotations

from typing import Any

from controller.spec.rules import Rule

MAX_NODES = 64
POD_IDENTITY_FIELDS = ("hostname", "subdomain", "setHostnameAsFQDN")

NODES_OWN_POD_NAMES = Rule(
    "trial-nodes-own-pod-names",
    field="template",
    message="template sets spec.{name}, which a trial of several nodes sets itself (pod DNS for rank 0)",
    condition_time="trial.template is free-form (kept as written), so CEL cannot see its fields",
)
NODES_FIT_GPU_BUDGET = Rule(
    "trial-nodes-fit-gpu-budget",
    field="trial.nodes",
    message="one trial holds nodes x gpus = {gpus} GPUs for up to maxDuration, more than budget.gpuHours: "
    "no trial could start",
    condition_time="maxDuration may be a duration string (1h30m), which CEL cannot read as seconds",
)


def check_pod_identity(nodes: int, template: dict[str, Any]) -> None:
    """A multi-node trial's pods are named by the Indexed Job and its Service, not the template."""
    if nodes <= 1:
        return
    pod = template.get("spec") if isinstance(template.get("spec"), dict) else {}
    for name in POD_IDENTITY_FIELDS:
        if name in (pod or {}):
            raise NODES_OWN_POD_NAMES.error(name=name)


def check_fits_gpu_budget(nodes: int, gpus: int, max_duration_s: int, gpu_hours: float | None) -> None:
    """Even a trial that ran for exactly maxDuration (no grace) would not fit the study's budget."""
    if nodes <= 1 or not gpus or gpu_hours is None:
        return
    if nodes * gpus * max_duration_s > gpu_hours * 3600:
        raise NODES_FIT_GPU_BUDGET.error(gpus=nodes * gpus)
