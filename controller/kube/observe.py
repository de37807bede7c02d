"""What the cluster says about a study's trials: Jobs and pods by label, read as trial outcomes.

Pure functions of the listed objects and the current time, so every pod situation (killed,
preempted, vanished, stuck Pending) is tested by value.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller.kube.manifests import ACCOUNTING_FINALIZER, TRIAL_LABEL
from trial_worker.contract import ExitCode

UNSCHEDULABLE_TIMEOUT_S = 600.0
IMAGE_PULL_TIMEOUT_S = 300.0
# Past its deletion deadline a pod that never reported a final status has lost its node.
LOST_AFTER_DELETION_S = 5.0
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_ERROR_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
KILLED_EXIT_CODES = frozenset({137, 143})

PodKind = Literal["pending", "running", "finished", "stuck"]


@dataclass(frozen=True)
class PodOutcome:
    """One trial pod as the controller reads it.

    ``reason`` is None for a pod whose worker told its outcome itself (Succeeded, exit 0);
    otherwise the trial's FAIL reason. ``detail`` is the human message for events and trial
    attributes. ``seconds`` is the pod's billable wall time when it is finished.
    """

    kind: PodKind
    trial_number: int
    uid: str
    name: str
    reason: str | None = None
    detail: str | None = None
    seconds: float = 0.0
    has_finalizer: bool = False
    exit_code: int | None = None


@dataclass
class ClusterView:
    """A study's Jobs and pods, by trial number."""

    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    pods: dict[int, list[PodOutcome]] = field(default_factory=dict)
    finished: list[PodOutcome] = field(default_factory=list)
    stuck: list[PodOutcome] = field(default_factory=list)
    live: frozenset[int] = frozenset()


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def trial_number_of(obj: Mapping[str, Any]) -> int | None:
    raw = ((obj.get("metadata") or {}).get("labels") or {}).get(TRIAL_LABEL)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def _terminated(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "terminated" in state:
            return state["terminated"]
    return None


def _waiting_reason(status: Mapping[str, Any]) -> tuple[str, str] | None:
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in IMAGE_PULL_REASONS | CONFIG_ERROR_REASONS:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    return None


def billable_seconds(pod: Mapping[str, Any], now: datetime.datetime) -> float:
    """From the pod's start to its container's end (or now, for a pod that never reported one)."""
    status = pod.get("status") or {}
    terminated = _terminated(status) or {}
    start = parse_time(terminated.get("startedAt")) or parse_time(status.get("startTime"))
    if start is None:
        return 0.0
    end = parse_time(terminated.get("finishedAt")) or now
    return max(0.0, (end - start).total_seconds())


def classify_pod(
    pod: Mapping[str, Any],
    now: datetime.datetime,
    unschedulable_timeout_s: float = UNSCHEDULABLE_TIMEOUT_S,
    image_pull_timeout_s: float = IMAGE_PULL_TIMEOUT_S,
) -> PodOutcome:
    """Read one trial pod: still pending or running, finished (with the trial's reason), or stuck."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    number = trial_number_of(pod)
    base = PodOutcome(
        "pending",
        trial_number=number if number is not None else -1,
        uid=str(meta.get("uid", "")),
        name=str(meta.get("name", "")),
        has_finalizer=ACCOUNTING_FINALIZER in (meta.get("finalizers") or []),
    )
    phase = status.get("phase")
    seconds = billable_seconds(pod, now)
    if phase in ("Succeeded", "Failed"):
        reason, detail, code = _finished_reason(status)
        return replace(base, kind="finished", reason=reason, detail=detail, seconds=seconds, exit_code=code)

    deleted_at = parse_time(meta.get("deletionTimestamp"))
    if deleted_at is not None and (now - deleted_at).total_seconds() >= LOST_AFTER_DELETION_S:
        disruption = _condition(status, "DisruptionTarget")
        if disruption is not None and disruption.get("status") == "True":
            return replace(
                base,
                kind="finished",
                reason="preempted",
                detail=str(disruption.get("message") or ""),
                seconds=seconds,
            )
        return replace(
            base,
            kind="finished",
            reason="lost",
            detail="the pod was deleted without a final status (node lost?)",
            seconds=seconds,
        )

    created = parse_time(meta.get("creationTimestamp")) or now
    scheduled = _condition(status, "PodScheduled")
    if (
        scheduled is not None
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == "Unschedulable"
    ):
        since = parse_time(scheduled.get("lastTransitionTime")) or created
        if (now - since).total_seconds() >= unschedulable_timeout_s:
            return replace(
                base, kind="stuck", reason="unschedulable", detail=str(scheduled.get("message") or "")
            )
        return replace(base, kind="pending")
    waiting = _waiting_reason(status)
    if waiting is not None:
        started = parse_time(status.get("startTime")) or created
        if (now - started).total_seconds() >= image_pull_timeout_s:
            return replace(base, kind="stuck", reason=waiting[0], detail=waiting[1], seconds=seconds)
        return replace(base, kind="pending")
    return replace(base, kind="running" if phase == "Running" else "pending")


def _finished_reason(status: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    disruption = _condition(status, "DisruptionTarget")
    terminated = _terminated(status) or {}
    code = terminated.get("exitCode")
    if disruption is not None and disruption.get("status") == "True":
        return "preempted", str(disruption.get("message") or disruption.get("reason") or ""), code
    if status.get("reason") == "DeadlineExceeded":
        return "maxDuration", str(status.get("message") or "the pod exceeded its deadline"), code
    if status.get("phase") == "Succeeded":
        return None, None, code
    if status.get("reason") == "Evicted":
        return "preempted", str(status.get("message") or "evicted"), code
    if code is None:
        return "lost", "the pod failed without a container status", None
    if terminated.get("reason") == "OOMKilled":
        return "oomKilled", "the container ran out of memory (OOMKilled)", code
    if code in KILLED_EXIT_CODES:
        return "killed", f"the container was killed (exit code {code})", code
    try:
        known = ExitCode(code)
    except ValueError:
        return f"exit{code}", str(terminated.get("message") or f"the container exited with code {code}"), code
    return known.reason, f"the worker exited with code {code} ({known.reason})", code


def job_finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def observe_cluster(
    jobs: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    now: datetime.datetime,
    unschedulable_timeout_s: float = UNSCHEDULABLE_TIMEOUT_S,
    image_pull_timeout_s: float = IMAGE_PULL_TIMEOUT_S,
) -> ClusterView:
    """Trial numbers with work in flight, and the pods whose outcome must be recorded.

    A trial is live while its Job is not being deleted and either has no pod yet (and has not
    finished) or has a pod still pending or running. Finished pods that still hold the accounting
    finalizer are returned for settlement.
    """
    view = ClusterView()
    for job in jobs:
        number = trial_number_of(job)
        if number is not None:
            view.jobs[number] = dict(job)
    for pod in pods:
        outcome = classify_pod(pod, now, unschedulable_timeout_s, image_pull_timeout_s)
        if outcome.trial_number < 0:
            continue
        view.pods.setdefault(outcome.trial_number, []).append(outcome)
        if outcome.kind == "finished" and outcome.has_finalizer:
            view.finished.append(outcome)
        elif outcome.kind == "stuck":
            view.stuck.append(outcome)
    live: set[int] = set()
    for number, job in view.jobs.items():
        if (job.get("metadata") or {}).get("deletionTimestamp"):
            continue
        outcomes = view.pods.get(number, [])
        in_flight = any(o.kind in ("pending", "running") for o in outcomes)
        awaiting_pod = not outcomes and not job_finished(job) and not _job_counted_a_pod(job)
        if in_flight or awaiting_pod:
            live.add(number)
    view.live = frozenset(live)
    return view


def _job_counted_a_pod(job: Mapping[str, Any]) -> bool:
    status = job.get("status") or {}
    return bool(status.get("succeeded") or status.get("failed"))
