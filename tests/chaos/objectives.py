"""Objectives of the chaos studies, run by in-process workers (see worker.py).

Each trial "trains" for a duration drawn from its own seed, in slices, and stops at once when
its pod is no longer running (a SIGTERM or SIGKILL in a real container: nothing is told). A
small share of trials raise, as buggy objectives do, so the failure budget has work to do.
"""

from __future__ import annotations

import random
import time

import optuna

from tests.chaos.worker import current_pod_alive

SLICE_S = 0.1
FAILING_SHARE = 0.08


def _train(trial: optuna.Trial) -> random.Random:
    """Sleep the trial's drawn duration (0.5-2.5 s); raise PodGone once its pod stops."""
    rng = random.Random(f"{trial.study.study_name}/{trial.number}")
    deadline = time.monotonic() + rng.uniform(0.5, 2.5)
    while time.monotonic() < deadline:
        current_pod_alive()
        time.sleep(SLICE_S)
    current_pod_alive()
    if rng.random() < FAILING_SHARE:
        raise RuntimeError("the objective failed on purpose (chaos: a buggy objective)")
    return rng


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 50)
    _train(trial)
    return float((x - 2.0) ** 2 + (y - 20) ** 2 / 100)


def noisy_quadratic(trial: optuna.Trial) -> float:
    """Reruns differ (noise from the trial's seed): what confirmation runs measure."""
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 50)
    rng = _train(trial)
    return float((x - 2.0) ** 2 + (y - 20) ** 2 / 100 + rng.gauss(0.0, 0.3))


def two_distances(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 50)
    _train(trial)
    return float((x - 2.0) ** 2 + y / 50), float((x + 2.0) ** 2 + (50 - y) / 50)
