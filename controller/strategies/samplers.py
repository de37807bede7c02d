"""Optuna samplers built from a resolved strategy name, the spec's settings and the seed.

Only the controller asks samplers (one process, serially), so a sampler sees every running trial
before it proposes the next: the grid never repeats a point, and TPE's constant liar treats the
running trials as bad so parallel trials spread out. Constraints need nothing here: Optuna 5's
samplers read each trial's constraint values (``trial.set_constraint``, stored by the worker).
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from controller.spec import StudySpec
from controller.strategies.grid import ConfigurationGridSampler, grid_values
from controller.strategies.settings import sampler_options

MULTI_OBJECTIVE_SAMPLERS = ("random", "grid", "tpe", "motpe", "gp", "qmc", "nsga2", "nsga3")
SINGLE_OBJECTIVE_ONLY = ("cmaes",)
MULTI_OBJECTIVE_ONLY = ("motpe", "nsga2", "nsga3")

__all__ = ["build_sampler", "grid_values", "sampler_defaults"]


def sampler_defaults(name: str, spec: StudySpec) -> dict[str, Any]:
    """tunefleet's defaults for a sampler (the spec's settings override them)."""
    if name in ("tpe", "motpe"):
        defaults: dict[str, Any] = {"multivariate": True, "constant_liar": spec.parallelism > 1}
        if any(p.when for p in spec.searchSpace.values()):
            defaults["group"] = True  # conditional spaces: one model per set of co-occurring params
        return defaults
    if name == "qmc":
        return {"qmc_type": "sobol", "scramble": True}  # scrambled, so the seed matters
    return {}


def build_sampler(name: str, spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler called ``name`` with ``spec.strategy.settings`` passed to its constructor.

    Settings only apply to the sampler they were written for: after ``auto`` they are empty
    (the spec refuses settings without a sampler name).
    """
    if name == "grid":
        return ConfigurationGridSampler(spec.searchSpace, seed=seed)
    if name == "pbt":
        # The planner chooses every segment's parameters (controller.planner.population); the
        # study's sampler is never asked, so its settings are PBT's, not a sampler's.
        return optuna.samplers.RandomSampler(seed=seed)
    explicit = spec.strategy.settings if spec.strategy.sampler == name else {}
    options = {**sampler_defaults(name, spec), **sampler_options(name, explicit), "seed": seed}
    if name == "random":
        return optuna.samplers.RandomSampler(**options)
    with warnings.catch_warnings():
        # multivariate/group TPE, QMC and the NSGA samplers are still marked experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name in ("tpe", "motpe"):
            return optuna.samplers.TPESampler(**options)
        if name == "gp":
            return optuna.samplers.GPSampler(**options)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(**options)
        if name == "qmc":
            return optuna.samplers.QMCSampler(**options)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(**options)
        if name == "nsga3":
            return optuna.samplers.NSGAIIISampler(**options)
    raise ValueError(f"unknown sampler {name!r}")
