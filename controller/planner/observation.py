"""What the planner sees: trials as plain values, the work in flight, the budget, the time."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.planner.segments import Segment


class StopReason(enum.StrEnum):
    """Why a study stops starting trials (and, once nothing runs, why it ended)."""

    MAX_TRIALS = "MaxTrialsReached"
    DEADLINE = "DeadlineReached"
    GOAL = "GoalReached"
    SPACE_EXHAUSTED = "SpaceExhausted"
    BUDGET_EXHAUSTED = "BudgetExhausted"
    CONVERGED = "Converged"
    INTERRUPTED = "Interrupted"
    POPULATION_TRAINED = "PopulationTrained"  # pbt: every member trained objective.steps (or stopped)
    FAILURE_BUDGET = "FailureBudgetExhausted"  # failed trials used up budget.maxFailedTrials


# Failures of the platform rather than the objective: retried with the same params.
INFRASTRUCTURE_REASONS = frozenset(
    {"killed", "preempted", "lost", "storageUnavailable", "interrupted", "unschedulable"}
)


# A trial whose asking never finished (its parameters or seed were never all written): it never
# ran, so it counts towards nothing (maxTrials, the failure budget, the summary); one is asked anew.
INCOMPLETE_REASON = "incomplete"


# A trial asked for a busy local worker, WAITING in the storage until that worker starts it. It
# counts as started (toward maxTrials and parallel work), like a RUNNING trial.
QUEUED = "QUEUED"


@dataclass(frozen=True)
class TrialView:
    """One Optuna trial as the planner needs it.

    ``root`` is the logical trial this attempt belongs to (its own number for a first attempt);
    ``attempt`` counts retries (0 first). ``segment``: the PBT segment the trial trains, if any.
    ``startable`` is False for a RUNNING or QUEUED trial
    whose parameters or seed were never all written: it must not run.
    """

    number: int
    state: str  # WAITING, QUEUED, RUNNING, COMPLETE, PRUNED or FAIL
    values: tuple[float, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    root: int | None = None
    attempt: int = 0
    segment: Segment | None = None
    startable: bool = True

    @property
    def never_ran(self) -> bool:
        """Failed as ``incomplete``: asked but never started (a crash while asking)."""
        return self.state == "FAIL" and self.reason == INCOMPLETE_REASON

    @property
    def logical(self) -> int:
        return self.number if self.root is None else self.root

    @property
    def is_retry(self) -> bool:
        return self.root is not None and self.root != self.number

    @property
    def failed_by_infrastructure(self) -> bool:
        return self.state == "FAIL" and self.reason in INFRASTRUCTURE_REASONS


@dataclass(frozen=True)
class BudgetView:
    """The study's budget in integer resource-seconds (GPU-seconds, or CPU-seconds).

    ``worst_case`` is what one more trial must reserve before it starts.
    """

    limit: int
    settled: int
    reserved: int
    worst_case: int
    refills: bool = False  # a periodic GPUBudget: when empty, wait for the next period

    @property
    def affordable(self) -> int:
        """How many more trials fit, at their worst case."""
        free = self.limit - self.settled - self.reserved
        return max(0, free // self.worst_case) if self.worst_case > 0 else 1_000_000


@dataclass(frozen=True)
class Observation:
    """Everything observed in one reconcile: trials, live work, budget and the current time.

    ``live`` holds the trial numbers that have work in flight (a local process, or a Job whose
    pod has not finished), queued trials included. A trial RUNNING (or QUEUED) in the storage but
    not live has lost its work. ``queue_slots`` is how many trials may wait queued behind running
    ones, beyond ``parallelism`` (the local runner's prefetch for short trials). ``seed`` is the
    study seed, from which population-based training draws its decisions.
    """

    trials: tuple[TrialView, ...]
    live: frozenset[int]
    now: float
    started_at: float
    budget: BudgetView | None = None
    interrupted: bool = False
    parallelism_override: int | None = None
    namespace_budget: BudgetView | None = None
    queue_slots: int = 0
    seed: int = 0

    @property
    def limiting_budget(self) -> BudgetView | None:
        """The study's or the namespace's budget, whichever fits fewer trials (the study's on a tie)."""
        views = [v for v in (self.budget, self.namespace_budget) if v is not None]
        return min(views, key=lambda v: v.affordable) if views else None
