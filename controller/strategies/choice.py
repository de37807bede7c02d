"""Resolving ``sampler: auto`` and ``pruner: auto`` into named strategies, with the reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.spec import StudySpec


@dataclass(frozen=True)
class StrategyChoice:
    """The sampler and pruner a study runs with, and why they were chosen."""

    sampler: str
    pruner: str
    reasons: tuple[str, ...] = field(default_factory=tuple)


def choose_strategy(spec: StudySpec, affordable_trials: int | None = None) -> StrategyChoice:
    """Resolve ``auto`` names from the spec (a pure function; explicit names are kept)."""
    reasons: list[str] = []
    sampler = spec.strategy.sampler
    if sampler == "auto":
        size = spec.space_size()
        limit = affordable_trials if affordable_trials is not None else spec.budget.maxTrials
        if spec.is_multi_objective:
            sampler = "nsga2"
            reasons.append("several metrics: NSGA-II finds a Pareto front")
        elif size is not None and limit is not None and size <= limit:
            sampler = "grid"
            reasons.append(f"the space is finite ({size} points) and the budget covers all of them")
        elif limit is not None and limit < 20:
            sampler = "random"
            reasons.append(f"only {limit} trials are affordable: too few for a model to help")
        else:
            sampler = "tpe"
            reasons.append("TPE adapts to conditional spaces and parallel workers")
    pruner = spec.strategy.pruner
    if pruner == "auto":
        if spec.is_multi_objective:
            pruner = "none"
            reasons.append("pruning needs a single objective")
        else:
            pruner = "median"
            reasons.append("median pruning stops trials that report worse than most at the same step")
    return StrategyChoice(sampler=sampler, pruner=pruner, reasons=tuple(reasons))
