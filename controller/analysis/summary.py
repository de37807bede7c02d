"""The report's summary: why the study stopped, trials by state, budget used, pruning's savings.

How pruning's savings are estimated: a pruned trial would have run about as long as a typical
complete trial, so each pruned search trial saved ``median(duration of complete search trials) -
its own duration`` seconds (never less than zero). Resource-seconds scale that by the trial's
allocation (spec.trial.gpus and cpus). It is an estimate: a pruned trial might have run shorter or
longer than the median had it been allowed to finish.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel

from controller.analysis.data import StudyData
from controller.planner.confirmation import ATTR_CONFIRM_WARNING
from controller.strategies.live import ATTR_REVISIONS
from controller.studies.record import ATTR_STOP_REASON, ATTR_STRATEGY

PRUNING_METHOD = (
    "each pruned search trial is credited with the median duration of the complete search trials "
    "minus its own duration (at least 0); resource-seconds multiply that by the trial's GPUs and "
    "CPUs from the spec"
)


class BudgetUse(BaseModel):
    gpu_seconds: int
    cpu_seconds: int
    reserved_gpu_seconds: int
    reserved_cpu_seconds: int
    gpu_seconds_limit: int | None
    cpu_seconds_limit: int | None


class PruningSavings(BaseModel):
    pruned_trials: int
    median_complete_duration_s: float | None
    saved_seconds: float
    saved_gpu_seconds: float
    saved_cpu_seconds: float
    method: str = PRUNING_METHOD


class Summary(BaseModel):
    study: str
    metrics: list[str]
    directions: list[str]
    stop_reason: str
    search_states: dict[str, int]
    confirmation_states: dict[str, int]
    budget: BudgetUse | None
    pruning: PruningSavings
    sampler: str | None
    pruner: str | None
    cost_aware: bool = False
    strategy_reasons: list[str]
    confirm_warning: str | None


def _durations(trials: list[FrozenTrial]) -> list[float]:
    return [t.duration.total_seconds() for t in trials if t.duration is not None]


def pruning_savings(data: StudyData) -> PruningSavings:
    search = data.search_trials
    complete = _durations([t for t in search if t.state == TrialState.COMPLETE])
    pruned = [t for t in search if t.state == TrialState.PRUNED]
    gpus, cpus = _allocation(data.spec)
    if not complete:
        return PruningSavings(
            pruned_trials=len(pruned),
            median_complete_duration_s=None,
            saved_seconds=0.0,
            saved_gpu_seconds=0.0,
            saved_cpu_seconds=0.0,
        )
    median = statistics.median(complete)
    saved = sum(max(0.0, median - d) for d in _durations(pruned))
    return PruningSavings(
        pruned_trials=len(pruned),
        median_complete_duration_s=median,
        saved_seconds=saved,
        saved_gpu_seconds=saved * gpus,
        saved_cpu_seconds=saved * cpus,
    )


def _allocation(spec: dict[str, Any] | None) -> tuple[float, float]:
    trial = (spec or {}).get("trial") or {}
    nodes = float(trial.get("nodes", 1) or 1)  # a trial of several pods holds each pod's allocation
    return nodes * float(trial.get("gpus", 0) or 0), nodes * float(trial.get("cpus", 1.0) or 1.0)


def _states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name for t in trials)
    return {state.name: counts[state.name] for state in TrialState if counts[state.name]}


def summarize_study(data: StudyData) -> Summary:
    # The strategy in use at the end: auto revises it as trials finish (the last revision wins).
    revisions = data.user_attrs.get(ATTR_REVISIONS) or []
    strategy = revisions[-1] if revisions else data.user_attrs.get(ATTR_STRATEGY) or {}
    running = any(t.state == TrialState.RUNNING for t in data.trials)
    stop = data.user_attrs.get(ATTR_STOP_REASON)
    stop_reason = str(stop) if stop else ("still running" if running else "not recorded")
    budget = None
    if data.totals is not None:
        budget = BudgetUse(
            gpu_seconds=data.totals.settled.gpu_seconds,
            cpu_seconds=data.totals.settled.cpu_seconds,
            reserved_gpu_seconds=data.totals.reserved.gpu_seconds,
            reserved_cpu_seconds=data.totals.reserved.cpu_seconds,
            gpu_seconds_limit=data.totals.gpu_seconds_limit,
            cpu_seconds_limit=data.totals.cpu_seconds_limit,
        )
    return Summary(
        study=data.name,
        metrics=data.metrics,
        directions=data.directions,
        stop_reason=stop_reason,
        search_states=_states(data.search_trials),
        confirmation_states=_states(data.confirmation_trials),
        budget=budget,
        pruning=pruning_savings(data),
        sampler=strategy.get("sampler"),
        pruner=strategy.get("pruner"),
        cost_aware=bool(strategy.get("costAware")),
        strategy_reasons=list(strategy.get("reasons") or []),
        confirm_warning=data.user_attrs.get(ATTR_CONFIRM_WARNING),
    )
