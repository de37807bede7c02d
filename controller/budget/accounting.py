"""What a trial costs: resource-seconds of allocation, from a pod's own timestamps (pure functions).

A pod holds its GPUs from ``status.startTime`` (the kubelet admitted it, before images are pulled)
until its last container terminated. Kubernetes writes these timestamps in whole seconds, so the
charge of a finished pod is exact: ``gpus x (finishedAt - startTime)``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.budget.periods import as_naive_utc

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Charge:
    """Integer resource-seconds: what a trial reserves or is charged."""

    gpu_seconds: int = 0
    cpu_seconds: int = 0

    @classmethod
    def for_run(cls, gpus: int, cpus: float, seconds: float) -> Charge:
        """Allocated resources times wall seconds, rounded up to whole seconds."""
        seconds = max(0.0, seconds)
        return cls(gpu_seconds=math.ceil(gpus * seconds), cpu_seconds=math.ceil(cpus * seconds))

    def capped_by(self, limit: Charge) -> Charge:
        """Each resource no more than ``limit``'s (and never negative)."""
        return Charge(
            max(0, min(self.gpu_seconds, limit.gpu_seconds)),
            max(0, min(self.cpu_seconds, limit.cpu_seconds)),
        )

    def __add__(self, other: Charge) -> Charge:
        return Charge(self.gpu_seconds + other.gpu_seconds, self.cpu_seconds + other.cpu_seconds)

    def __sub__(self, other: Charge) -> Charge:
        return Charge(self.gpu_seconds - other.gpu_seconds, self.cpu_seconds - other.cpu_seconds)


def worst_case(gpus: int, cpus: float, max_duration_s: float, grace_s: float) -> Charge:
    """What a trial must reserve before it starts: its resources for maxDuration plus the grace."""
    return Charge.for_run(gpus, cpus, max_duration_s + grace_s)


def pod_charge(
    pod: Mapping[str, Any],
    gpus: int,
    now: datetime.datetime,
    grace_s: int,
    reserved: Charge,
    cpus: float = 0.0,
) -> tuple[Charge, float]:
    """The allocation a trial pod used, and its wall seconds (the charge never exceeds ``reserved``).

    Args:
        pod: the Pod as the API returns it (camelCase JSON; kopf bodies are this shape).
        gpus: GPUs the pod was allocated (its ``nvidia.com/gpu`` limit).
        now: when the controller settles it; the end for a pod that vanished with no deletion mark.
        grace_s: termination grace added to ``deletionTimestamp`` when the pod does not say its own.
        reserved: the trial's reservation; the charge is capped by it.
        cpus: CPUs to charge as well, for a study budgeted in CPU-hours.

    The span runs from ``status.startTime`` to the latest container ``terminated.finishedAt``. A
    pod lost without final status is charged up to its deletion plus grace: Kubernetes sets
    ``deletionTimestamp`` to the deletion request plus the pod's grace period already, so only when
    ``deletionGracePeriodSeconds`` is absent is ``grace_s`` added. A pod that never started costs 0.
    """
    seconds = pod_seconds(pod, now, grace_s)
    return Charge.for_run(gpus, cpus, seconds).capped_by(reserved), seconds


def pod_seconds(pod: Mapping[str, Any], now: datetime.datetime, grace_s: int) -> float:
    """Wall seconds the pod held its allocation (see :func:`pod_charge`)."""
    status = pod.get("status") or {}
    started = _timestamp(status.get("startTime"))
    if started is None:
        return 0.0
    end = _finished_at(status)
    if end is None:
        end = _lost_end(pod.get("metadata") or {}, as_naive_utc(now), grace_s)
    return max(0.0, (end - started).total_seconds())


def is_terminal(pod: Mapping[str, Any]) -> bool:
    """True once the pod can use nothing more: Succeeded/Failed, or every container terminated."""
    status = pod.get("status") or {}
    return status.get("phase") in TERMINAL_PHASES or _all_terminated(status)


def _finished_at(status: Mapping[str, Any]) -> datetime.datetime | None:
    """The last container's finish, if the pod is over and reported it."""
    if not (status.get("phase") in TERMINAL_PHASES or _all_terminated(status)):
        return None
    finishes = [
        moment
        for container in _container_statuses(status)
        if (moment := _timestamp(((container.get("state") or {}).get("terminated") or {}).get("finishedAt")))
    ]
    return max(finishes) if finishes else None


def _all_terminated(status: Mapping[str, Any]) -> bool:
    containers = status.get("containerStatuses") or []
    return bool(containers) and all((c.get("state") or {}).get("terminated") for c in containers)


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    # Init containers count too: a pod that failed in its init container still held its GPUs.
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _lost_end(metadata: Mapping[str, Any], now: datetime.datetime, grace_s: int) -> datetime.datetime:
    deleted = _timestamp(metadata.get("deletionTimestamp"))
    if deleted is None:
        return now
    if metadata.get("deletionGracePeriodSeconds") is None:
        return deleted + datetime.timedelta(seconds=grace_s)
    return deleted


def _timestamp(value: object) -> datetime.datetime | None:
    """An RFC 3339 string (or a datetime, as the kubernetes client returns) as naive UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        return as_naive_utc(value)
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 timestamp, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an RFC 3339 timestamp, got {value!r}") from None
    return as_naive_utc(parsed)
