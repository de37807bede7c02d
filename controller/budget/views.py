"""From ledger totals to what the planner needs and what Study / GPUBudget status shows."""

from __future__ import annotations

import datetime
from typing import Any

from controller.budget.accounting import Charge
from controller.budget.ledger import Ledger, NamespaceTotals, Totals
from controller.planner import BudgetView

SECONDS_PER_HOUR = 3600


def study_budget_view(totals: Totals, worst_case: Charge) -> BudgetView | None:
    """The tighter of the study's GPU and CPU limits, as trials-that-still-fit; None if unlimited.

    A resource the trial does not use (``gpus: 0`` under ``gpuHours``) never limits it.
    """
    views = []
    if totals.gpu_seconds_limit is not None and worst_case.gpu_seconds > 0:
        views.append(
            BudgetView(
                totals.gpu_seconds_limit,
                totals.settled.gpu_seconds,
                totals.reserved.gpu_seconds,
                worst_case.gpu_seconds,
            )
        )
    if totals.cpu_seconds_limit is not None and worst_case.cpu_seconds > 0:
        views.append(
            BudgetView(
                totals.cpu_seconds_limit,
                totals.settled.cpu_seconds,
                totals.reserved.cpu_seconds,
                worst_case.cpu_seconds,
            )
        )
    return min(views, key=lambda v: v.affordable) if views else None


def namespace_budget_view(totals: NamespaceTotals | None, worst_case: Charge) -> BudgetView | None:
    """The namespace's GPUBudget as the planner sees it: this period's room for this study.

    The per-study cap is folded into the limit, so ``affordable`` is what the study may reserve.
    """
    if totals is None or worst_case.gpu_seconds <= 0:
        return None
    return BudgetView(
        limit=totals.used + totals.reserved + totals.study_remaining,
        settled=totals.used,
        reserved=totals.reserved,
        worst_case=worst_case.gpu_seconds,
        refills=totals.next_period_start is not None,
    )


def planner_budgets(
    ledger: Ledger,
    study_key: str,
    worst_case: Charge,
    namespace: str | None = None,
    now: datetime.datetime | None = None,
) -> tuple[BudgetView | None, BudgetView | None]:
    """(study view, namespace view) for an :class:`~controller.planner.Observation`."""
    study = study_budget_view(ledger.totals(study_key), worst_case)
    if namespace is None:
        return study, None
    spent = ledger.namespace_totals(namespace, now, study_key=study_key)
    return study, namespace_budget_view(spent, worst_case)


def study_status(totals: Totals) -> dict[str, Any]:
    """Study ``status.budget``: GPU-seconds used and reserved, GPU-hours remaining, and a summary."""
    used = totals.settled.gpu_seconds
    status: dict[str, Any] = {
        "gpuSecondsUsed": used,
        "gpuSecondsReserved": totals.reserved.gpu_seconds,
        "cpuSecondsUsed": totals.settled.cpu_seconds,
    }
    limit = totals.gpu_seconds_limit
    if limit is not None:
        remaining = max(0, limit - used - totals.reserved.gpu_seconds)
        status["gpuHoursRemaining"] = round(remaining / SECONDS_PER_HOUR, 4)
        status["summary"] = f"{_hours(used)}/{_hours(limit)}"
    else:
        status["summary"] = _hours(used)
    return status


def gpubudget_status(totals: NamespaceTotals) -> dict[str, Any]:
    """GPUBudget ``status``: GPU-hours used, reserved and remaining this period, and its start."""
    return {
        "used": round(totals.used / SECONDS_PER_HOUR, 4),
        "reserved": round(totals.reserved / SECONDS_PER_HOUR, 4),
        "remaining": round(totals.remaining / SECONDS_PER_HOUR, 4),
        "periodStart": totals.period_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _hours(seconds: int) -> str:
    return f"{seconds / SECONDS_PER_HOUR:.2f}"
