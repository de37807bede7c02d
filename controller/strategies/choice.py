"""``sampler: auto`` and ``pruner: auto``: what the budget affords decides the strategy.

Pure functions of the spec and of numbers the caller observed (trial durations, what was spent),
so the planner side, the operator and ``tunefleet plan`` all reach the same choice. The
thresholds are documented in docs/strategies.md and tested on both sides of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from controller.spec import CategoricalParam, StudySpec
from controller.strategies.grid import count_configurations

RANDOM_BELOW = 20
"""Fewer affordable trials than this: random search (a model cannot learn from so few)."""
MODEL_BAND_BELOW = 100
"""Below this, GP for small continuous spaces with expensive trials, and MOTPE over NSGA-II."""
GP_MAX_PARAMS = 8
GP_MIN_TRIAL_SECONDS = 60.0
"""A trial this long makes GP's own seconds of fitting per trial negligible."""
HYPERBAND_MIN_TRIALS = RANDOM_BELOW
"""Hyperband needs enough trials to fill its brackets; below, median pruning."""

CostBasis = Literal["expectedDuration", "measured", "maxDuration"]


@dataclass(frozen=True)
class TrialCost:
    """Wall seconds one trial is expected to take, and where the figure comes from."""

    seconds: float
    basis: CostBasis


@dataclass(frozen=True)
class Spent:
    """What the study used so far (zero at creation)."""

    gpu_seconds: float = 0.0
    cpu_seconds: float = 0.0
    elapsed_s: float = 0.0
    trials_started: int = 0


@dataclass(frozen=True)
class Affordability:
    """How many trials the study can run in all (``trials`` None: no limit) and per limit."""

    trials: int | None
    limits: dict[str, int]
    cost: TrialCost

    def describe(self) -> str:
        basis = {
            "expectedDuration": "trial.expectedDuration",
            "measured": "measured from finished trials",
            "maxDuration": "trial.maxDuration, the worst case, until trials finish",
        }[self.cost.basis]
        per_limit = ", ".join(f"{name}: {count}" for name, count in self.limits.items())
        head = "no limit on trials" if self.trials is None else f"the budget affords {self.trials} trials"
        limits = per_limit or "no budget, maxTrials or deadline"
        return f"{head} ({limits}; ~{self.cost.seconds:.0f} s per trial, {basis})"


@dataclass(frozen=True)
class StrategyChoice:
    """The sampler and pruner a study runs with, and why they were chosen."""

    sampler: str
    pruner: str
    reasons: tuple[str, ...] = field(default_factory=tuple)
    affordable_trials: int | None = None


def trial_cost(spec: StudySpec, measured_seconds: Sequence[float] = ()) -> TrialCost:
    """``trial.expectedDuration`` if given, else the mean of finished trials, else maxDuration."""
    if spec.trial.expectedDuration is not None:
        return TrialCost(float(spec.trial.expectedDuration), "expectedDuration")
    durations = [s for s in measured_seconds if s > 0 and math.isfinite(s)]
    if durations:
        return TrialCost(sum(durations) / len(durations), "measured")
    return TrialCost(float(spec.trial.maxDuration), "maxDuration")


def affordable_trials(spec: StudySpec, cost: TrialCost, spent: Spent | None = None) -> Affordability:
    """Trials the study can run in all: those started plus what the remaining budget covers."""
    spent = spent or Spent()
    seconds = max(cost.seconds, 1e-3)
    budget = spec.budget
    limits: dict[str, int] = {}
    if budget.maxTrials is not None:
        limits["maxTrials"] = budget.maxTrials
    if budget.gpuHours is not None and spec.trial.gpus > 0:
        left = budget.gpuHours * 3600 - spent.gpu_seconds
        limits["gpuHours"] = spent.trials_started + _whole(left / (spec.trial.gpus * seconds))
    if budget.cpuHours is not None:
        left = budget.cpuHours * 3600 - spent.cpu_seconds
        limits["cpuHours"] = spent.trials_started + _whole(left / (spec.trial.cpus * seconds))
    if budget.deadline is not None:
        left = budget.deadline - spent.elapsed_s
        limits["deadline"] = spent.trials_started + _whole(left / seconds) * spec.parallelism
    trials = min(limits.values()) if limits else None
    return Affordability(trials, limits, cost)


def _whole(value: float) -> int:
    return max(0, math.floor(value + 1e-9))


def choose_strategy(
    spec: StudySpec,
    affordability: Affordability | None = None,
    reports_intermediate: bool | None = None,
) -> StrategyChoice:
    """Resolve ``auto`` names; explicit names are kept.

    Args:
        spec: the study.
        affordability: what the budget affords; by default computed from the spec alone
            (``expectedDuration``, else ``maxDuration``).
        reports_intermediate: whether finished trials reported intermediate values (None: no
            trial has finished yet).
    """
    affordability = affordability or affordable_trials(spec, trial_cost(spec))
    reasons: list[str] = [affordability.describe()]
    sampler: str = spec.strategy.sampler
    if sampler == "auto":
        sampler, why = _auto_sampler(spec, affordability)
        reasons.append(why)
    else:
        reasons.append(f"{sampler}: named in strategy.sampler")
    if sampler == "pbt":
        reasons.append(_population_size(spec, affordability.trials))
    pruner: str = spec.strategy.pruner
    if pruner == "auto":
        pruner, why = _auto_pruner(spec, sampler, affordability.trials, reports_intermediate)
        reasons.append(why)
    else:
        reasons.append(f"{pruner}: named in strategy.pruner")
    return StrategyChoice(sampler, pruner, tuple(reasons), affordability.trials)


def _auto_sampler(spec: StudySpec, affordability: Affordability) -> tuple[str, str]:
    if spec.is_population_based:
        return "pbt", (
            "population-based training: parameters are marked mutable, so their schedule is tuned "
            "while members train (only marked parameters ever make auto choose it)"
        )
    limit = affordability.trials
    size = count_configurations(spec.searchSpace)
    if size is not None and (limit is None or size <= limit):
        return "grid", f"grid: the space is finite ({size} configurations) and the budget covers every one"
    if spec.is_multi_objective:
        if limit is not None and limit < MODEL_BAND_BELOW:
            return "motpe", (
                f"multi-objective TPE: several metrics and fewer than {MODEL_BAND_BELOW} trials, "
                "too few generations for NSGA-II"
            )
        return "nsga2", f"NSGA-II: several metrics and {MODEL_BAND_BELOW}+ trials to evolve a Pareto front"
    if limit is not None and limit < RANDOM_BELOW:
        return "random", f"random: fewer than {RANDOM_BELOW} trials are too few for a model to help"
    if (
        limit is not None
        and limit < MODEL_BAND_BELOW
        and _small_continuous(spec)
        and affordability.cost.seconds >= GP_MIN_TRIAL_SECONDS
    ):
        return "gp", (
            f"GP: a small continuous space, trials of ~{affordability.cost.seconds:.0f} s and fewer than "
            f"{MODEL_BAND_BELOW} of them, where a Gaussian process is the most sample-efficient"
        )
    band = f"fewer than {MODEL_BAND_BELOW}" if limit is not None and limit < MODEL_BAND_BELOW else "many"
    return "tpe", f"TPE: {band} trials; multivariate TPE handles conditional spaces and parallel workers"


def _population_size(spec: StudySpec, affordable: int | None) -> str:
    """How many segments (trials) the population trains, and whether the budget covers them."""
    from controller.spec.population import population_settings

    settings = population_settings(spec)
    steps = spec.objective.steps or 1
    interval = settings.interval_for(steps)
    segments = math.ceil(steps / interval)
    total = settings.population * segments
    text = (
        f"pbt: {settings.population} members x {segments} segments of {interval} steps = {total} "
        "segments (trials) at most"
    )
    if affordable is not None and affordable < total:
        text += f"; the budget affords {affordable}, so members stop before objective.steps"
    return text


def _small_continuous(spec: StudySpec) -> bool:
    space = spec.searchSpace
    return (
        0 < len(space) <= GP_MAX_PARAMS
        and not any(isinstance(p, CategoricalParam) for p in space.values())
        and not any(p.when for p in space.values())
    )


def _auto_pruner(
    spec: StudySpec, sampler: str, limit: int | None, reports_intermediate: bool | None
) -> tuple[str, str]:
    if spec.is_multi_objective:
        return "none", "no pruning: Optuna prunes single-objective studies only"
    if sampler == "pbt":
        return "none", "no pruning: population-based training stops weak members by copying strong ones"
    if sampler == "grid":
        return "none", "no pruning: a grid evaluates every configuration fully"
    if reports_intermediate is False:
        return "none", "no pruning: finished trials reported no intermediate values"
    if limit is not None and limit < HYPERBAND_MIN_TRIALS:
        return "median", f"median pruning: under {HYPERBAND_MIN_TRIALS} trials cannot fill Hyperband brackets"
    if reports_intermediate:
        return "hyperband", "Hyperband: the objective reports intermediate values, so weak trials stop early"
    return "hyperband", (
        "Hyperband, if the objective reports intermediate values (it prunes nothing until "
        "trials do; revised to none once trials finish without any)"
    )
