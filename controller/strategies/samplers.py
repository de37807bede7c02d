"""Optuna samplers built from a resolved strategy name, the spec's settings and the seed."""

from __future__ import annotations

from typing import Any

import optuna

from controller.spec import CategoricalParam, FloatParam, IntParam, StudySpec


def grid_values(param: FloatParam | IntParam | CategoricalParam) -> list[Any]:
    """Every value a grid visits for one parameter (floats need a step)."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        return list(range(param.low, param.high + 1, param.step))
    if param.step is None:
        raise ValueError("a float needs a step to be part of a grid")
    count = param.grid_points() or 0
    return [round(param.low + i * param.step, 12) for i in range(count)]


def build_sampler(name: str, spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler called ``name`` with ``spec.strategy.settings`` passed to its constructor."""
    settings: dict[str, Any] = dict(spec.strategy.settings)
    settings.setdefault("seed", seed)
    if name == "random":
        return optuna.samplers.RandomSampler(**settings)
    if name == "grid":
        space = {key: grid_values(param) for key, param in spec.searchSpace.items()}
        return optuna.samplers.GridSampler(space, **settings)
    if name == "tpe":
        settings.setdefault("multivariate", True)
        settings.setdefault("group", True)
        settings.setdefault("constant_liar", spec.parallelism > 1)
        if "startupTrials" in settings:
            settings["n_startup_trials"] = settings.pop("startupTrials")
        return optuna.samplers.TPESampler(**settings)
    if name == "motpe":
        settings.setdefault("multivariate", True)
        settings.setdefault("constant_liar", spec.parallelism > 1)
        return optuna.samplers.TPESampler(**settings)
    if name == "gp":
        return optuna.samplers.GPSampler(**settings)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(**settings)
    if name == "qmc":
        settings.setdefault("qmc_type", "sobol")
        return optuna.samplers.QMCSampler(**settings)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(**settings)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(**settings)
    raise ValueError(f"unknown sampler {name!r}")
