"""Search strategies: samplers, pruners, ``auto`` by budget, warm start, convergence, Pareto sets."""

from __future__ import annotations

from controller.strategies.choice import (
    Affordability,
    Spent,
    StartCost,
    StrategyChoice,
    TrialCost,
    affordable_trials,
    choose_strategy,
    trial_cost,
)
from controller.strategies.pareto import feasible_pareto_front, is_feasible
from controller.strategies.samplers import build_sampler

__all__ = [
    "Affordability",
    "Spent",
    "StartCost",
    "StrategyChoice",
    "TrialCost",
    "affordable_trials",
    "build_sampler",
    "choose_strategy",
    "feasible_pareto_front",
    "is_feasible",
    "trial_cost",
]
