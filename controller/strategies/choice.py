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
COST_MIN_TRIALS = 10
"""Finished trials needed before costs count as measured (TPE's first 10 trials are random)."""
COST_SPREAD_FROM = 4.0
"""Costs vary widely when the slowest tenth of trials cost this many times the fastest tenth."""
COST_TIGHT_BELOW = MODEL_BAND_BELOW
"""A budget is tight when it affords fewer than this many of the costliest trials."""
COST_KEEP_SPREAD_FROM = 3.0
COST_KEEP_TIGHT_BELOW = 150
"""Once on, cost-aware search stays on until costs are within 3x or the budget affords 150 of the
costliest: measured spreads and counts move as trials finish, and a study near the line would
otherwise turn it on and off every few trials (``bench/search.py`` saw seven switches in 40)."""
PRUNE_FROM_STARTS = 10.0
"""``pruner: auto`` prunes only when a full trial costs at least this many trial starts per
parallel slot. One process asks every trial, so it starts at most one per ``start`` seconds; below
this, the trials are already about as many as it can start, and stopping them early buys few more
while hiding their final results from the sampler (``bench/search.py``: trials of 0.1-0.5 s, asks
of ~40 ms, 2 workers; TPE alone beat TPE with Hyperband)."""
PRUNE_AGAIN_FROM_STARTS = 2 * PRUNE_FROM_STARTS
"""Once pruning is off for this reason, it comes back only above this: no flapping near the line."""

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
class MeasuredCosts:
    """How much finished trials' costs vary, and what the budget affords of the costly ones.

    ``spread``: the slowest tenth's cost over the fastest tenth's (full-trial seconds, pruned
    trials extrapolated to every step). ``slow_affordable``: how many trials of the slow cost the
    time and money limits (gpuHours, cpuHours, deadline) still afford; None without such limits.
    """

    spread: float
    slow_seconds: float
    slow_affordable: int | None
    trials: int
    median_seconds: float | None = None


@dataclass(frozen=True)
class StartCost:
    """What starting one trial costs the process that asks them (sampler, ledger, hand-over),
    measured, and how many trials run at once."""

    seconds: float
    parallelism: int


@dataclass(frozen=True)
class StrategyChoice:
    """The sampler and pruner a study runs with, and why they were chosen.

    ``cost_aware``: TPE prefers expected improvement per second of predicted trial cost.
    """

    sampler: str
    pruner: str
    reasons: tuple[str, ...] = field(default_factory=tuple)
    affordable_trials: int | None = None
    cost_aware: bool = False


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
    if budget.gpuHours is not None and spec.trial.gpus_held > 0:
        left = budget.gpuHours * 3600 - spent.gpu_seconds
        limits["gpuHours"] = spent.trials_started + _whole(left / (spec.trial.gpus_held * seconds))
    if budget.cpuHours is not None:
        left = budget.cpuHours * 3600 - spent.cpu_seconds
        limits["cpuHours"] = spent.trials_started + _whole(left / (spec.trial.cpus_held * seconds))
    if budget.deadline is not None:
        left = budget.deadline - spent.elapsed_s
        limits["deadline"] = spent.trials_started + _whole(left / seconds) * spec.parallelism
    trials = min(limits.values()) if limits else None
    return Affordability(trials, limits, cost)


def _whole(value: float) -> int:
    return max(0, math.floor(value + 1e-9))


def measure_costs(
    spec: StudySpec, full_seconds: Sequence[float], spent: Spent | None = None
) -> MeasuredCosts | None:
    """The spread of measured full-trial costs and what the budget affords at the slow end.

    None until :data:`COST_MIN_TRIALS` trials have a measured cost.
    """
    seconds = sorted(s for s in full_seconds if s > 0 and math.isfinite(s))
    if len(seconds) < COST_MIN_TRIALS:
        return None
    fast, slow = _quantile(seconds, 0.1), _quantile(seconds, 0.9)
    at_slow = affordable_trials(spec, TrialCost(slow, "measured"), spent)
    by_cost = [count for name, count in at_slow.limits.items() if name != "maxTrials"]
    median = _quantile(seconds, 0.5)
    return MeasuredCosts(slow / fast, slow, min(by_cost) if by_cost else None, len(seconds), median)


def _quantile(ordered: Sequence[float], share: float) -> float:
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def choose_strategy(
    spec: StudySpec,
    affordability: Affordability | None = None,
    reports_intermediate: bool | None = None,
    costs: MeasuredCosts | None = None,
    start: StartCost | None = None,
    pruning_now: bool = True,
    cost_aware_now: bool = False,
) -> StrategyChoice:
    """Resolve ``auto`` names; explicit names are kept.

    Args:
        spec: the study.
        affordability: what the budget affords; by default computed from the spec alone
            (``expectedDuration``, else ``maxDuration``).
        reports_intermediate: whether finished trials reported intermediate values (None: no
            trial has finished yet; ``objective.steps`` then says whether they will).
        costs: how measured trial costs vary (None: too few trials finished), which decides
            cost-aware search when ``strategy.costAware`` is unset.
        start: what starting a trial costs the asking process (None: not measured), which with
            ``costs`` decides whether ``pruner: auto`` prunes at all.
        pruning_now: whether the study prunes now (``pruner: auto`` turns pruning back on only
            well above the line it turned it off at).
        cost_aware_now: whether cost-aware search is on now (it then stays on until well below
            the line it was turned on at).
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
        pruner, why = _auto_pruner(spec, sampler, affordability, reports_intermediate)
        if pruner != "none":
            pruner, why = _worth_pruning(pruner, why, costs, start, pruning_now)
        reasons.append(why)
    else:
        reasons.append(f"{pruner}: named in strategy.pruner")
    cost_aware, why_cost = _cost_aware(spec, sampler, costs, cost_aware_now)
    if why_cost:
        reasons.append(why_cost)
    return StrategyChoice(sampler, pruner, tuple(reasons), affordability.trials, cost_aware)


def _worst_case_only(affordability: Affordability) -> bool:
    """The count rests on maxDuration alone: a floor, not an estimate, until trials finish."""
    return affordability.cost.basis == "maxDuration" and affordability.trials is not None


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
        if _worst_case_only(affordability):
            return "tpe", (
                f"TPE: only the worst case is known, which affords fewer than {RANDOM_BELOW} trials; "
                "TPE's first trials are random anyway, and auto revises once trials finish"
            )
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
    spec: StudySpec, sampler: str, affordability: Affordability, reports_intermediate: bool | None
) -> tuple[str, str]:
    limit = affordability.trials
    steps = spec.objective.steps
    if spec.is_multi_objective:
        return "none", "no pruning: Optuna prunes single-objective studies only"
    if sampler == "pbt":
        return "none", "no pruning: population-based training stops weak members by copying strong ones"
    if sampler == "grid":
        return "none", "no pruning: a grid evaluates every configuration fully"
    if reports_intermediate is False:
        return "none", "no pruning: finished trials reported no intermediate values"
    if reports_intermediate is None and steps == 1:
        return "none", "no pruning: objective.steps is 1, so no trial has a step to stop at"
    if limit is not None and limit < HYPERBAND_MIN_TRIALS and not _worst_case_only(affordability):
        return "median", f"median pruning: under {HYPERBAND_MIN_TRIALS} trials cannot fill Hyperband brackets"
    if reports_intermediate:
        return "hyperband", "Hyperband: the objective reports intermediate values, so weak trials stop early"
    if steps is not None:
        return "hyperband", (
            f"Hyperband: each trial reports {steps} steps (objective.steps), so weak trials stop early "
            "from the first trial on"
        )
    return "hyperband", (
        "Hyperband, if the objective reports intermediate values (it prunes nothing until "
        "trials do; revised to none once trials finish without any)"
    )


def _worth_pruning(
    pruner: str, why: str, costs: MeasuredCosts | None, start: StartCost | None, pruning_now: bool
) -> tuple[str, str]:
    """``pruner`` unless full trials cost so few trial starts that stopping them early buys
    little (see :data:`PRUNE_FROM_STARTS`)."""
    if costs is None or costs.median_seconds is None or start is None or start.seconds <= 0:
        return pruner, why
    starts = costs.median_seconds / (start.seconds * max(start.parallelism, 1))
    line = PRUNE_FROM_STARTS if pruning_now else PRUNE_AGAIN_FROM_STARTS
    if starts >= line:
        return pruner, why
    return "none", (
        f"no pruning: a full trial (~{costs.median_seconds:.2f} s) costs {starts:.1f} trial starts per "
        f"worker (~{1000 * start.seconds:.0f} ms each; pruning needs {line:.0f}), so the trials are "
        "already about as many as can be started, and stopping them early would hide their results "
        "from the sampler"
    )


def _cost_aware(
    spec: StudySpec, sampler: str, costs: MeasuredCosts | None, now: bool = False
) -> tuple[bool, str | None]:
    """Whether TPE weighs expected improvement by predicted cost, and why (None: not worth a line).

    ``now``: it is on already, so the looser lines that keep it on apply (no flapping)."""
    named = spec.strategy.costAware
    if named is False or sampler != "tpe":
        return False, None
    if named:
        return True, "cost-aware: named in strategy.costAware (expected improvement per second)"
    if spec.strategy.sampler != "auto":
        return False, None
    rule = (
        f"on when the slowest tenth of trials cost {COST_SPREAD_FROM:.0f}x the fastest or more and the "
        f"budget affords fewer than {COST_TIGHT_BELOW} of the costliest; once on, until "
        f"{COST_KEEP_SPREAD_FROM:.0f}x and {COST_KEEP_TIGHT_BELOW}"
    )
    if costs is None:
        return False, f"cost-aware search: decided once {COST_MIN_TRIALS} trials finish ({rule})"
    spread_from, tight_below = (COST_KEEP_SPREAD_FROM, COST_KEEP_TIGHT_BELOW) if now else (
        COST_SPREAD_FROM, COST_TIGHT_BELOW
    )
    if costs.spread < spread_from:
        return False, f"cost-aware search off: trial costs are near uniform (x{costs.spread:.1f}; {rule})"
    if costs.slow_affordable is None or costs.slow_affordable >= tight_below:
        room = "no time or money limit" if costs.slow_affordable is None else "the budget is ample"
        return False, f"cost-aware search off: {room} ({rule})"
    return True, (
        f"cost-aware search: trial costs vary x{costs.spread:.0f} and the budget affords only "
        f"{costs.slow_affordable} trials of the costliest (~{costs.slow_seconds:.0f} s), so TPE prefers "
        "the highest expected improvement per second"
    )
