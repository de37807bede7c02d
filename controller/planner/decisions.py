"""One planning step: which trials to start, retry or stop, and whether the study is over."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from controller.planner.confirmation import confirmation_step, runs_still_needed
from controller.planner.failures import FailureVerdict, failure_verdict
from controller.planner.observation import INCOMPLETE_REASON, QUEUED, Observation, StopReason, TrialView
from controller.planner.population import PlannedSegment, PopulationState, population_state
from controller.spec import StudySpec

UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Plan:
    """The actions of one reconcile, executed in this order: abandon, mark lost, retry, start,
    confirm, drain.

    ``abandon`` holds trials whose asking never finished (no work, parameters or seed missing):
    they are failed ``incomplete`` and count towards nothing. ``finished`` means the study is
    over: it has a stop reason and nothing is in flight once this plan's drain is done.
    ``failure`` says why, when failed trials stopped it (``StopReason.FAILURE_BUDGET``).
    ``confirm`` holds one source trial number per confirmation run to start (see
    :mod:`controller.planner.confirmation`); ``confirming`` is set while that phase runs.
    ``segments`` (population-based training) says what each of the ``start_new`` trials trains
    (see :mod:`controller.planner.population`); empty otherwise, when the sampler is asked.
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
    budget_waiting: bool = False  # BudgetWaiting: the namespace's GPUBudget refills next period
    confirm: tuple[int, ...] = ()
    confirming: bool = False
    segments: tuple[PlannedSegment, ...] = ()
    abandon: tuple[int, ...] = ()
    failure: FailureVerdict | None = None


def decide(
    spec: StudySpec,
    observation: Observation,
    confirm_of: Mapping[int, int] | None = None,
    *,
    converged: bool = False,
) -> Plan:
    """Decide the next actions for a study from what was observed (a pure function).

    ``confirm_of`` maps each confirmation trial's number to the search trial it repeats; those
    trials are left out of the search's counts and stop conditions. ``converged`` is the verdict
    of Optuna's terminator (``strategy.terminator``), judged by the caller: the study stops as
    ``Converged``.
    """
    confirm_of = confirm_of or {}
    live = observation.live
    workless = [t for t in observation.trials if t.state in ("RUNNING", QUEUED) and t.number not in live]
    abandon = tuple(t.number for t in workless if not t.startable)
    lost = tuple(t.number for t in workless if t.startable)
    trials = [
        dataclasses.replace(t, state="FAIL", reason="lost")
        if t.number in lost
        else dataclasses.replace(t, state="FAIL", reason=INCOMPLETE_REASON)
        if t.number in abandon
        else t
        for t in observation.trials
    ]
    plan = _decide(spec, observation, trials, confirm_of, lost, converged)
    return dataclasses.replace(plan, abandon=abandon) if abandon else plan


def _decide(
    spec: StudySpec,
    observation: Observation,
    trials: list[TrialView],
    confirm_of: Mapping[int, int],
    lost: tuple[int, ...],
    converged: bool,
) -> Plan:
    live = observation.live
    all_trials = trials
    trials = [t for t in trials if t.number not in confirm_of]
    pending_retries = _pending_retries(trials, spec.trial.maxRetries)
    population = (
        population_state(spec, trials, live, spec.trial.maxRetries) if spec.is_population_based else None
    )
    failure = failure_verdict(spec, _own(trials))
    stop = (
        StopReason.FAILURE_BUDGET
        if failure is not None and not observation.interrupted
        else _stop_reason(
            spec,
            observation,
            trials,
            has_pending_retries=bool(pending_retries),
            converged=converged,
            population=population,
        )
    )

    if stop is not None and stop not in _NO_CONFIRMATION and spec.confirm is not None:
        return _confirm(spec, observation, all_trials, confirm_of, stop, lost)
    if stop is not None:
        drain_reason = _drain_reason(spec, stop)
        drain = tuple(sorted(live)) if drain_reason else ()
        return Plan(
            mark_lost=lost,
            stop=stop,
            drain=drain,
            drain_reason=drain_reason if drain else None,
            finished=not live,
            failure=failure if stop is StopReason.FAILURE_BUDGET else None,
        )
    if spec.suspend:
        return Plan(mark_lost=lost, suspended=True)

    parallelism = observation.parallelism_override or spec.parallelism
    slots = max(0, parallelism + observation.queue_slots - len(live))
    affordable = _affordable(observation)
    if observation.limiting_budget is not None:
        # The confirmation runs' worst case stays reserved for after the search.
        affordable = max(0, affordable - runs_still_needed(spec, all_trials, confirm_of))
    retry = tuple(t.number for t in pending_retries[: min(slots, affordable)])
    slots -= len(retry)
    affordable -= len(retry)

    started_logical = _logical_started(trials)
    remaining_trials = spec.budget.maxTrials - len(started_logical) if spec.budget.maxTrials else UNLIMITED
    size = spec.space_size() if population is None else None  # PBT revisits values on purpose
    remaining_space = size - _distinct_configs(trials) if size is not None else UNLIMITED
    start_new = max(0, min(slots, affordable, remaining_trials, remaining_space))
    segments: tuple[PlannedSegment, ...] = ()
    if population is not None:  # the planner chooses what each new trial trains
        segments = population.next_segments(observation.seed, start_new)
        start_new = len(segments)

    blocked_by_budget = (
        observation.limiting_budget is not None
        and affordable == 0
        and not retry
        and start_new == 0
        and (pending_retries or remaining_trials > 0)
    )
    if blocked_by_budget:
        limiting = observation.limiting_budget
        if limiting is not None and limiting.refills and limiting is observation.namespace_budget:
            # The namespace's periodic GPUBudget is empty: wait for the next period (BudgetWaiting).
            return Plan(mark_lost=lost, waiting_for_budget=True, budget_waiting=True)
        if not live and limiting is not None and limiting.reserved > 0 and (
            limiting.limit - limiting.settled >= limiting.worst_case
        ):
            # Only reservations (another study's, in a shared GPUBudget) hold the room: they end
            # by settling at most their worst case, so wait for them rather than end the study.
            return Plan(mark_lost=lost, waiting_for_budget=True)
        if not live:
            if spec.confirm is not None:
                return _confirm(spec, observation, all_trials, confirm_of, StopReason.BUDGET_EXHAUSTED, lost)
            return Plan(mark_lost=lost, stop=StopReason.BUDGET_EXHAUSTED, finished=True)
        if spec.budget.onExhausted == "drain":
            return Plan(
                mark_lost=lost,
                stop=StopReason.BUDGET_EXHAUSTED,
                drain=tuple(sorted(live)),
                drain_reason="budget",
            )
        return Plan(mark_lost=lost, waiting_for_budget=True)
    return Plan(mark_lost=lost, retry=retry, start_new=start_new, segments=segments)


def _confirm(
    spec: StudySpec,
    observation: Observation,
    trials: list[TrialView],
    confirm_of: Mapping[int, int],
    stop: StopReason,
    lost: tuple[int, ...],
) -> Plan:
    """The search has stopped: run the confirmation phase, then finish."""
    live = observation.live
    parallelism = observation.parallelism_override or spec.parallelism
    affordable = _affordable(observation)
    step = confirmation_step(
        spec, trials, confirm_of, live, slots=max(0, parallelism - len(live)), affordable=affordable
    )
    return Plan(
        mark_lost=lost,
        stop=stop,
        confirm=step.start,
        confirming=not step.finished,
        finished=step.finished,
    )


def _affordable(observation: Observation) -> int:
    """Trials that still fit in both the study's and the namespace's budget."""
    limiting = observation.limiting_budget
    return limiting.affordable if limiting is not None else UNLIMITED


_NO_CONFIRMATION = (StopReason.INTERRUPTED, StopReason.FAILURE_BUDGET)


def _drain_reason(spec: StudySpec, stop: StopReason) -> str | None:
    """Running trials stop now on an interrupt or when failures stopped the study, and at the
    deadline under ``onExhausted: drain``."""
    if stop is StopReason.INTERRUPTED:
        return "interrupted"
    if stop is StopReason.FAILURE_BUDGET:
        return "failureBudget"
    if stop is StopReason.DEADLINE and spec.budget.onExhausted == "drain":
        return "deadline"
    if stop is StopReason.BUDGET_EXHAUSTED and spec.budget.onExhausted == "drain":
        return "budget"
    return None


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


IMPORTED_REASON = "imported"  # warmStart.fromStudy copies: they inform the sampler, cost nothing


def _own(trials: list[TrialView]) -> list[TrialView]:
    """The trials this study ran (imported ones count for the grid, not for limits or stops;
    incomplete ones never ran)."""
    return [t for t in trials if t.reason != IMPORTED_REASON and not t.never_ran]


def _logical_started(trials: list[TrialView]) -> set[int]:
    return {t.logical for t in _own(trials) if t.state != "WAITING"}


def _distinct_configs(trials: list[TrialView]) -> int:
    return len(
        {
            tuple(sorted((k, repr(v)) for k, v in t.params.items()))
            for t in trials
            if t.state != "WAITING" and not t.never_ran
        }
    )


def _stop_reason(
    spec: StudySpec,
    observation: Observation,
    trials: list[TrialView],
    has_pending_retries: bool,
    converged: bool = False,
    population: PopulationState | None = None,
) -> StopReason | None:
    if observation.interrupted:
        return StopReason.INTERRUPTED
    if _goal_reached(spec, _own(trials)):
        return StopReason.GOAL
    deadline = spec.budget.deadline
    if deadline is not None and observation.now - observation.started_at >= deadline:
        return StopReason.DEADLINE
    if spec.budget.patience is not None and _stalled_for(spec, _own(trials)) >= spec.budget.patience:
        return StopReason.CONVERGED
    if converged:
        return StopReason.CONVERGED
    if spec.budget.onExhausted == "drain" and any(t.state == "FAIL" and t.reason == "budget" for t in trials):
        # Drained (or refused) for budget: over for good, even though the drain freed some room.
        return StopReason.BUDGET_EXHAUSTED
    if has_pending_retries:
        return None
    if population is not None and population.trained:
        return StopReason.POPULATION_TRAINED
    size = spec.space_size() if population is None else None
    if size is not None and _distinct_configs(trials) >= size:
        return StopReason.SPACE_EXHAUSTED
    max_trials = spec.budget.maxTrials
    if max_trials is not None and len(_logical_started(trials)) >= max_trials:
        return StopReason.MAX_TRIALS
    return None


def _completed_in_order(trials: list[TrialView]) -> list[TrialView]:
    return sorted((t for t in trials if t.state == "COMPLETE" and t.values), key=lambda t: t.number)


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
