"""One planning step: which trials to start, retry or stop, and whether the study is over."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from controller.planner.observation import Observation, StopReason, TrialView
from controller.spec import StudySpec

UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Plan:
    """The actions of one reconcile, executed in this order: mark lost, retry, start, drain.

    ``finished`` means the study is over: it has a stop reason and nothing is in flight.
    """

    mark_lost: tuple[int, ...] = ()
    retry: tuple[int, ...] = ()
    start_new: int = 0
    drain: tuple[int, ...] = ()
    drain_reason: str | None = None
    stop: StopReason | None = None
    finished: bool = False
    suspended: bool = False
    waiting_for_budget: bool = False


def decide(spec: StudySpec, observation: Observation) -> Plan:
    """Decide the next actions for a study from what was observed (a pure function)."""
    live = observation.live
    lost = tuple(t.number for t in observation.trials if t.state == "RUNNING" and t.number not in live)
    trials = [
        dataclasses.replace(t, state="FAIL", reason="lost") if t.number in lost else t
        for t in observation.trials
    ]
    pending_retries = _pending_retries(trials, spec.trial.maxRetries)
    stop = _stop_reason(spec, observation, trials, has_pending_retries=bool(pending_retries))

    if stop is not None:
        drain = tuple(sorted(live)) if stop is StopReason.INTERRUPTED else ()
        return Plan(
            mark_lost=lost,
            stop=stop,
            drain=drain,
            drain_reason="interrupted" if drain else None,
            finished=not live,
        )
    if spec.suspend:
        return Plan(mark_lost=lost, suspended=True)

    parallelism = observation.parallelism_override or spec.parallelism
    slots = max(0, parallelism - len(live))
    affordable = observation.budget.affordable if observation.budget is not None else UNLIMITED
    retry = tuple(t.number for t in pending_retries[: min(slots, affordable)])
    slots -= len(retry)
    affordable -= len(retry)

    started_logical = _logical_started(trials)
    remaining_trials = (
        spec.budget.maxTrials - len(started_logical) if spec.budget.maxTrials else UNLIMITED
    )
    size = spec.space_size()
    remaining_space = size - _distinct_configs(trials) if size is not None else UNLIMITED
    start_new = max(0, min(slots, affordable, remaining_trials, remaining_space))

    blocked_by_budget = (
        observation.budget is not None
        and observation.budget.affordable == 0
        and not retry
        and start_new == 0
        and (pending_retries or remaining_trials > 0)
    )
    if blocked_by_budget:
        if not live:
            return Plan(mark_lost=lost, stop=StopReason.BUDGET_EXHAUSTED, finished=True)
        if spec.budget.onExhausted == "drain":
            return Plan(
                mark_lost=lost,
                stop=StopReason.BUDGET_EXHAUSTED,
                drain=tuple(sorted(live)),
                drain_reason="budget",
            )
        return Plan(mark_lost=lost, waiting_for_budget=True)
    return Plan(mark_lost=lost, retry=retry, start_new=start_new)


def _pending_retries(trials: list[TrialView], max_retries: int) -> list[TrialView]:
    attempts = {(t.logical, t.attempt) for t in trials}
    return sorted(
        (
            t
            for t in trials
            if t.failed_by_infrastructure
            and t.attempt < max_retries
            and (t.logical, t.attempt + 1) not in attempts
        ),
        key=lambda t: t.number,
    )


def _logical_started(trials: list[TrialView]) -> set[int]:
    return {t.logical for t in trials if t.state != "WAITING"}


def _distinct_configs(trials: list[TrialView]) -> int:
    return len(
        {tuple(sorted((k, repr(v)) for k, v in t.params.items())) for t in trials if t.state != "WAITING"}
    )


def _stop_reason(
    spec: StudySpec, observation: Observation, trials: list[TrialView], has_pending_retries: bool
) -> StopReason | None:
    if observation.interrupted:
        return StopReason.INTERRUPTED
    if _goal_reached(spec, trials):
        return StopReason.GOAL
    deadline = spec.budget.deadline
    if deadline is not None and observation.now - observation.started_at >= deadline:
        return StopReason.DEADLINE
    if spec.budget.patience is not None and _stalled_for(spec, trials) >= spec.budget.patience:
        return StopReason.CONVERGED
    if has_pending_retries:
        return None
    size = spec.space_size()
    if size is not None and _distinct_configs(trials) >= size:
        return StopReason.SPACE_EXHAUSTED
    max_trials = spec.budget.maxTrials
    if max_trials is not None and len(_logical_started(trials)) >= max_trials:
        return StopReason.MAX_TRIALS
    return None


def _completed_in_order(trials: list[TrialView]) -> list[TrialView]:
    return sorted(
        (t for t in trials if t.state == "COMPLETE" and t.values), key=lambda t: t.number
    )


def _goal_reached(spec: StudySpec, trials: list[TrialView]) -> bool:
    goal = spec.objective.goal
    if goal is None or spec.is_multi_objective:
        return False
    maximize = spec.objective.metrics[0].direction == "maximize"
    for trial in _completed_in_order(trials):
        value = trial.values[0] if trial.values else None
        if value is not None and (value >= goal if maximize else value <= goal):
            return True
    return False


def _stalled_for(spec: StudySpec, trials: list[TrialView]) -> int:
    """Finished trials since the best value last improved."""
    maximize = spec.objective.metrics[0].direction == "maximize"
    best: float | None = None
    since = 0
    for trial in sorted((t for t in trials if t.state in ("COMPLETE", "PRUNED")), key=lambda t: t.number):
        value = trial.values[0] if trial.state == "COMPLETE" and trial.values else None
        improved = value is not None and (best is None or (value > best if maximize else value < best))
        if improved:
            best = value
            since = 0
        else:
            since += 1
    return since
