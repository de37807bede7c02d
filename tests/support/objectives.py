"""Small objectives for tests: fast, deterministic, and each failing in one documented way."""

from __future__ import annotations

import math
import os
import signal
import time

import optuna


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    return (x - 2.0) ** 2


def quadratic_with_steps(trial: optuna.Trial) -> float:
    """Reports 5 intermediate values, so pruners have something to judge."""
    x = trial.suggest_float("x", -10.0, 10.0)
    value = (x - 2.0) ** 2
    for step in range(5):
        trial.report(value + (5 - step), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def raises(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    if x > 0:
        raise RuntimeError(f"diverged at x={x:.3f}")
    return x


def returns_nan(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    return math.nan if x > 0 else x


def returns_wrong_count(trial: optuna.Trial) -> tuple[float, float, float]:
    trial.suggest_float("x", -10.0, 10.0)
    return (1.0, 2.0, 3.0)


def sleeps(trial: optuna.Trial) -> float:
    seconds = trial.suggest_float("x", -10.0, 10.0)
    time.sleep(float(os.environ.get("TUNEFLEET_TEST_SLEEP", "30")))
    return seconds


def killed_on_first_attempt(trial: optuna.Trial) -> float:
    """The worker process dies by a signal on a trial's first attempt (as if OOM-killed)."""
    x = trial.suggest_float("x", -10.0, 10.0)
    if trial.user_attrs.get("tunefleet.attempt", 0) == 0 and trial.number % 2 == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def define_by_run(trial: optuna.Trial) -> float:
    """Suggests a parameter the spec did not declare; it is sampled in place."""
    x = trial.suggest_float("x", -10.0, 10.0)
    extra = trial.suggest_int("undeclared", 1, 5)
    return x + extra


def slow_quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    time.sleep(0.3)
    return (x - 2.0) ** 2


def two_metrics(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    return x, (1.0 - x) ** 2


def sleeps_then_killed_once(trial: optuna.Trial) -> float:
    """Sleeps; the worker dies by a signal after sleeping on trial TUNEFLEET_TEST_KILL_TRIAL's first
    attempt (by then a short trial's worker holds the next trial queued)."""
    x = trial.suggest_float("x", -10.0, 10.0)
    time.sleep(float(os.environ.get("TUNEFLEET_TEST_SLEEP", "0.3")))
    victim = int(os.environ.get("TUNEFLEET_TEST_KILL_TRIAL", "-1"))
    if trial.number == victim and trial.user_attrs.get("tunefleet.attempt", 0) == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x
