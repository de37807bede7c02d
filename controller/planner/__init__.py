"""The pure planner: from the spec and what was observed, decide what to do next.

It imports no client, no database and no clock: time is an input. The local runner and the
Kubernetes controller both observe, call :func:`decide`, and execute the :class:`Plan`.
"""

from __future__ import annotations

from controller.planner.decisions import Plan, decide
from controller.planner.observation import (
    INCOMPLETE_REASON,
    INFRASTRUCTURE_REASONS,
    QUEUED,
    BudgetView,
    Observation,
    StopReason,
    TrialView,
)
from controller.planner.summary import StudySummary, summarize

__all__ = [
    "INCOMPLETE_REASON",
    "INFRASTRUCTURE_REASONS",
    "QUEUED",
    "BudgetView",
    "Observation",
    "Plan",
    "StopReason",
    "StudySummary",
    "TrialView",
    "decide",
    "summarize",
]
