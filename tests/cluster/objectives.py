"""Tiny objectives for the controller's cluster tests: fast, deterministic, importable by workers."""

from __future__ import annotations

import os
import time

import optuna


def quadratic(trial: optuna.Trial) -> float:
    """Minimum 0 at x = 2; sleeps TUNEFLEET_TEST_SLEEP seconds so tests can act on running pods."""
    x = trial.suggest_float("x", -10, 10)
    time.sleep(float(os.environ.get("TUNEFLEET_TEST_SLEEP", "0")))
    return float((x - 2.0) ** 2)


def failing(trial: optuna.Trial) -> float:
    raise RuntimeError("the objective failed on purpose")


def pruned_when_negative(trial: optuna.Trial) -> float:
    """Reports one value, then stops itself (PRUNED) when x < 0; completes otherwise."""
    x = trial.suggest_float("x", -10, 10)
    trial.report(float(x), step=0)
    if x < 0:
        raise optuna.TrialPruned()
    return float((x - 2.0) ** 2)
