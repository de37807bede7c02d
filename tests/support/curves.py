"""An objective with a learning curve, for the tracking tests: deterministic for given params."""

from __future__ import annotations

import os
import time

import optuna

STEP_SLEEP_ENV = "TUNEFLEET_TEST_STEP_SLEEP"  # seconds per step; lets a test act mid-study
STEPS = 4


def curve(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    layers = trial.suggest_int("layers", 1, 4)
    final = (x - 2.0) ** 2 + layers
    pause = float(os.environ.get(STEP_SLEEP_ENV, "0"))
    for step in range(STEPS):
        trial.report(final + (STEPS - step), step)
        time.sleep(pause)
    return final
