"""Objectives shared by the benchmarks."""

from __future__ import annotations

import time

import numpy as np
import optuna

TRAIN_SECONDS = 0.5


def half_second_training(trial: optuna.Trial) -> float:
    """About 0.5 s of numeric work; records its own time so overhead can be measured."""
    started = time.perf_counter()
    x = trial.suggest_float("x", -5.0, 5.0)
    width = trial.suggest_int("width", 8, 64)
    weights = np.random.default_rng(trial.number).standard_normal((width, width))
    value = 0.0
    while time.perf_counter() - started < TRAIN_SECONDS:
        weights = np.tanh(weights @ weights.T / width)
        value = float(weights.mean())
    trial.set_user_attr("objective_s", time.perf_counter() - started)
    return (x - 1.0) ** 2 + abs(value)
