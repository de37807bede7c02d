"""The Study's ``status``: phase, conditions, trial counts, best trial, budget; built as a dict.

Pure: the reconciler hands in what it observed and decided, this module says what the status
should read. Printer columns read ``phase``, ``trialsSummary``, ``trials.running``, ``bestValue``
and ``budget.summary``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.planner import Plan, StopReason, StudySummary, TrialView
from controller.spec import StudySpec

CONDITION_TYPES = (
    "Ready", "Running", "Succeeded", "Failed", "Invalid", "Suspended", "PodsStuck", "BudgetWaiting"
)
# Where the trial pods' database password comes from, or which Secret could not be read and why;
# set by the reconciler beside the types above (``replace_conditions``).
CREDENTIALS = "StorageCredentials"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class BudgetFigures:
    """Resource-seconds from the ledger (limits None when the spec sets none)."""

    gpu_seconds_used: int = 0
    gpu_seconds_reserved: int = 0
    gpu_seconds_limit: int | None = None
    cpu_seconds_used: int = 0
    cpu_seconds_reserved: int = 0
    cpu_seconds_limit: int | None = None


def now_iso(now: datetime.datetime | None = None) -> str:
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def phase_for(plan: Plan | None, summary: StudySummary | None, invalid: bool) -> str:
    if invalid:
        return "Invalid"
    if plan is None or summary is None:
        return "Pending"
    if plan.finished:
        failed = plan.stop is StopReason.FAILURE_BUDGET or summary.complete == 0
        return "Failed" if failed else "Succeeded"
    if plan.suspended:
        return "Suspended"
    if summary.running == 0 and summary.finished == 0 and plan.start_new == 0 and not plan.retry:
        return "Pending"
    return "Running"


def conditions_for(
    phase: str,
    plan: Plan | None,
    invalid_message: str | None = None,
    not_ready: tuple[str, str] | None = None,
    stuck: tuple[str, str] | None = None,
    budget_waiting: tuple[str, str] | None = None,
    failure: str | None = None,
) -> list[Condition]:
    """Every condition type, True or False, each with a reason and a message.

    ``failure`` words why failed trials stopped the study (the Failed condition's message).
    """
    stop = plan.stop.value if plan is not None and plan.stop is not None else None
    finished = plan is not None and plan.finished
    conditions = [
        Condition(
            "Invalid",
            invalid_message is not None,
            "SpecInvalid" if invalid_message else "SpecValid",
            invalid_message or "the spec is valid",
        ),
    ]
    if not_ready is not None:
        conditions.append(Condition("Ready", False, not_ready[0], not_ready[1]))
    elif invalid_message is not None:
        conditions.append(Condition("Ready", False, "SpecInvalid", "fix the spec; nothing was created"))
    else:
        conditions.append(Condition("Ready", True, "Reconciled", "the controller is running this study"))
    conditions.append(
        Condition(
            "Running",
            phase == "Running",
            "TrialsRunning" if phase == "Running" else phase or "Pending",
            "trials are being started and run" if phase == "Running" else f"the study is {phase.lower()}",
        )
    )
    conditions.append(
        Condition(
            "Suspended",
            phase == "Suspended",
            "SuspendRequested" if phase == "Suspended" else "NotSuspended",
            "spec.suspend is true: no new trials; running ones finish" if phase == "Suspended" else "",
        )
    )
    conditions.append(
        Condition(
            "Succeeded",
            finished and phase == "Succeeded",
            stop or "NotFinished",
            f"the study ended: {stop}" if finished and phase == "Succeeded" else "",
        )
    )
    conditions.append(
        Condition(
            "Failed",
            finished and phase == "Failed",
            stop or "NotFinished",
            (failure or f"the study ended ({stop}) without a completed trial")
            if finished and phase == "Failed"
            else "",
        )
    )
    if stuck is not None:
        conditions.append(Condition("PodsStuck", True, stuck[0], stuck[1]))
    else:
        conditions.append(Condition("PodsStuck", False, "PodsHealthy", ""))
    # The namespace's periodic GPUBudget is empty: (reason, message saying when it refills).
    if budget_waiting is not None:
        conditions.append(Condition("BudgetWaiting", True, budget_waiting[0], budget_waiting[1]))
    else:
        conditions.append(Condition("BudgetWaiting", False, "BudgetAvailable", ""))
    return conditions


def render_conditions(
    conditions: Sequence[Condition], previous: Sequence[Mapping[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Kubernetes condition dicts; lastTransitionTime moves only when the status flips."""
    before = {c.get("type"): c for c in previous}
    rendered = []
    for condition in conditions:
        text = "True" if condition.status else "False"
        old = before.get(condition.type)
        stamp = old.get("lastTransitionTime", now) if old and old.get("status") == text else now
        rendered.append(
            {
                "type": condition.type,
                "status": text,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": stamp,
            }
        )
    return rendered


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:.2f}".rstrip("0").rstrip(".") if seconds else "0"


def budget_status(figures: BudgetFigures) -> dict[str, Any]:
    limit = figures.gpu_seconds_limit
    return {
        "summary": f"{_hours(figures.gpu_seconds_used)}/{_hours(limit) if limit is not None else '-'}",
        "gpuSecondsUsed": figures.gpu_seconds_used,
        "gpuSecondsReserved": figures.gpu_seconds_reserved,
        "gpuSecondsLimit": limit,
        "cpuSecondsUsed": figures.cpu_seconds_used,
        "cpuSecondsReserved": figures.cpu_seconds_reserved,
        "cpuSecondsLimit": figures.cpu_seconds_limit,
    }


def best_trial_status(spec: StudySpec, best: TrialView | None) -> dict[str, Any] | None:
    if best is None or best.values is None:
        return None
    return {
        "number": best.number,
        "params": dict(best.params),
        "values": list(best.values),
        "metrics": {m.name: v for m, v in zip(spec.objective.metrics, best.values, strict=False)},
    }


def format_best(values: Sequence[float] | None) -> str:
    if not values:
        return ""
    return ", ".join(f"{v:.6g}" for v in values)


def study_status(
    spec: StudySpec,
    *,
    phase: str,
    conditions: list[dict[str, Any]],
    summary: StudySummary,
    best: TrialView | None,
    budget: BudgetFigures,
    generation: int | None,
    start_time: str | None,
    completion_time: str | None,
    stop: StopReason | None,
    optuna_study: str,
) -> dict[str, Any]:
    """The full status written with one merge patch."""
    max_trials = spec.budget.maxTrials
    return {
        "phase": phase,
        "conditions": conditions,
        "observedGeneration": generation,
        "trialsSummary": f"{summary.finished}/{max_trials if max_trials is not None else '-'}",
        "trials": {
            "complete": summary.complete,
            "pruned": summary.pruned,
            "failed": summary.failed,
            "retried": summary.retried,
            "running": summary.running,
            "waiting": summary.waiting,
            "finished": summary.finished,
        },
        "bestValue": format_best(best.values if best else None),
        "bestTrial": best_trial_status(spec, best),
        "budget": budget_status(budget),
        "startTime": start_time,
        "completionTime": completion_time,
        "stopReason": stop.value if stop is not None else None,
        "optunaStudy": optuna_study,
    }


def invalid_status(
    message: str, generation: int | None, previous: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    now = now_iso()
    conditions = conditions_for("Invalid", None, invalid_message=message)
    return {
        "phase": "Invalid",
        "observedGeneration": generation,
        "conditions": render_conditions(conditions, previous, now),
    }


def replace_conditions(
    rendered: Sequence[Mapping[str, Any]],
    updates: Sequence[Condition],
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """``rendered`` with the conditions of the ``updates``' types replaced or added."""
    fresh = render_conditions(updates, previous, now)
    types = {c["type"] for c in fresh}
    return [dict(c) for c in rendered if c.get("type") not in types] + fresh


def credentials_blocked_status(
    reason: str, message: str, previous: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """No trial may start until a Secret can be read: only the conditions change."""
    updates = [Condition("Ready", False, reason, message), Condition(CREDENTIALS, False, reason, message)]
    return {"conditions": replace_conditions(previous, updates, previous, now_iso())}
