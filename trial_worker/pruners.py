"""Pruners built from the assignment, identically in every worker."""

from __future__ import annotations

from typing import Any

import optuna

from trial_worker.contract import PrunerConfig


def build_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner:
    """The pruner named in the assignment, with its settings.

    Hyperband assigns brackets by hashing the study name and trial number, so every worker that
    builds it from the same settings agrees on each trial's bracket.
    """
    settings: dict[str, Any] = dict(config.settings)
    if config.name == "none":
        return optuna.pruners.NopPruner()
    if config.name == "median":
        return optuna.pruners.MedianPruner(**settings)
    if config.name == "percentile":
        settings.setdefault("percentile", 25.0)
        return optuna.pruners.PercentilePruner(**settings)
    if config.name == "hyperband":
        return optuna.pruners.HyperbandPruner(**settings)
    if config.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(**settings)
    if config.name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(**settings)
    raise ValueError(f"unknown pruner {config.name!r}")
