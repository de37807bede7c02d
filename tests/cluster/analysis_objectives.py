"""Objectives for the cluster analysis tests (importable by the trial worker: ``tests.cluster...``)."""

from __future__ import annotations

import random

import optuna


def noisy_quadratic(trial: optuna.Trial) -> float:
    """(x - 2)^2 plus noise from the trial's seed (the worker seeds ``random``): reruns differ."""
    x = trial.suggest_float("x", -10, 10)
    return float((x - 2.0) ** 2 + random.gauss(0.0, 0.5))


def two_distances(trial: optuna.Trial) -> tuple[float, float]:
    """Distances to 2 and to -2, both minimized: every x in [-2, 2] is Pareto-optimal."""
    x = trial.suggest_float("x", -10, 10)
    return float((x - 2.0) ** 2), float((x + 2.0) ** 2)
