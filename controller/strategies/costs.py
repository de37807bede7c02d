"""What trials cost, as a function of their parameters.

The study knows each finished trial's duration exactly (Optuna's start and completion times; a
trial's GPU-seconds are its GPUs times the same seconds, so the two rank configurations alike).
A pruned trial stopped early: its cost is extrapolated to every step (``objective.steps``, else
the most steps a completed trial reported), since the question a sampler asks is what a
configuration costs if it is good enough to run to the end.

:class:`CostModel` fits the logarithm of those seconds with a ridge regression on each
parameter's position in its range (and its square: cost often grows with width times width) and
one-hot categorical choices. Compute cost is close to multiplicative in sizes, so a linear model
in log space fits it with few trials; predictions are clipped to the measured range, so the model
never extrapolates to costs nobody observed. Pure: no storage, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from controller.strategies.choice import COST_MIN_TRIALS

UNIFORM_BELOW = 2.0
"""Costs whose slowest tenth is within this factor of the fastest tenth are uniform: the sampler
then keeps its usual choice."""
RIDGE = 0.1
"""Ridge penalty on the (unit-range) features: keeps a fit on a handful of trials smooth."""

MEASURED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_steps(declared: int | None, trials: Sequence[FrozenTrial]) -> int | None:
    """The steps of a full trial: ``objective.steps``, else the most a completed trial reported."""
    if declared is not None:
        return declared
    reported = [t.last_step + 1 for t in trials if t.state == TrialState.COMPLETE and t.last_step is not None]
    return max(reported) if reported else None


def full_trial_seconds(trial: FrozenTrial, steps: int | None) -> float | None:
    """Seconds the trial took, extrapolated to ``steps`` if it was pruned; None when unknown."""
    if trial.state not in MEASURED or trial.datetime_start is None or trial.datetime_complete is None:
        return None
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    if not seconds > 0:
        return None
    done = trial.last_step + 1 if trial.last_step is not None else None
    if trial.state == TrialState.PRUNED and steps is not None and done is not None and 0 < done < steps:
        seconds *= steps / done
    return seconds


def measured_seconds(trials: Sequence[FrozenTrial], declared_steps: int | None) -> list[float]:
    """Full-trial seconds of every finished trial whose cost is known."""
    steps = study_steps(declared_steps, trials)
    costs = (full_trial_seconds(t, steps) for t in trials)
    return [c for c in costs if c is not None]


def spread(seconds: Sequence[float]) -> float:
    """The slowest tenth's cost over the fastest tenth's (1.0 for fewer than two costs)."""
    ordered = sorted(seconds)
    if len(ordered) < 2:
        return 1.0
    return float(np.quantile(ordered, 0.9) / np.quantile(ordered, 0.1))


class CostModel:
    """Predicted log-seconds of a full trial from its parameters (Optuna's internal values)."""

    def __init__(
        self,
        space: dict[str, BaseDistribution],
        coefficients: np.ndarray,
        feature_means: np.ndarray,
        intercept: float,
        log_range: tuple[float, float],
        log_floor: float,
    ) -> None:
        self.space = space
        self._coefficients = coefficients
        self._feature_means = feature_means
        self._intercept = intercept
        self.log_range = log_range
        self.log_floor = log_floor

    @classmethod
    def fit(
        cls,
        trials: Sequence[FrozenTrial],
        space: dict[str, BaseDistribution],
        declared_steps: int | None = None,
        uniform_below: float = UNIFORM_BELOW,
    ) -> CostModel | None:
        """Fit the finished trials that set every parameter of ``space``.

        None when fewer than ``COST_MIN_TRIALS`` costs are known or they are uniform (their
        spread is below ``uniform_below``): there is nothing to weigh.
        """
        if not space:
            return None
        steps = study_steps(declared_steps, trials)
        rows: list[np.ndarray] = []
        targets: list[float] = []
        for trial in trials:
            seconds = full_trial_seconds(trial, steps)
            if seconds is None or not all(name in trial.params for name in space):
                continue
            internal = {
                name: np.asarray([distribution.to_internal_repr(trial.params[name])])
                for name, distribution in space.items()
            }
            rows.append(features(space, internal)[0])
            targets.append(math.log(seconds))
        if len(targets) < COST_MIN_TRIALS or spread([math.exp(t) for t in targets]) < uniform_below:
            return None
        x = np.vstack(rows)
        y = np.asarray(targets)
        means = x.mean(axis=0)
        centred = x - means
        gram = centred.T @ centred + RIDGE * np.eye(x.shape[1])
        coefficients = np.linalg.solve(gram, centred.T @ (y - y.mean()))
        return cls(
            space, coefficients, means, float(y.mean()), (float(y.min()), float(y.max())), float(np.median(y))
        )

    def predict_log_seconds(self, samples: dict[str, np.ndarray]) -> np.ndarray:
        """Log-seconds for each candidate (internal values by parameter name, as TPE samples them)."""
        x = features(self.space, samples)
        predicted = self._intercept + (x - self._feature_means) @ self._coefficients
        low, high = self.log_range
        return np.clip(predicted, low, high)

    def charged_log_seconds(self, samples: dict[str, np.ndarray]) -> np.ndarray:
        """What a candidate is charged: its predicted cost, but never less than the median trial's.

        Below the median, a trial's wall time is mostly what every trial pays (asking the
        sampler, starting, reporting), and the cheapest corner of a space (the smallest model,
        one step per epoch) is rarely where the good configurations are: the cost term steers
        away from the costly tail without pulling every pick into that corner.
        """
        return np.maximum(self.predict_log_seconds(samples), self.log_floor)

    def predict_seconds(self, params: dict[str, object]) -> float:
        """Seconds of one configuration given in external values (for logs and tests)."""
        internal = {
            name: np.asarray([distribution.to_internal_repr(params[name])])
            for name, distribution in self.space.items()
        }
        return float(math.exp(self.predict_log_seconds(internal)[0]))


def features(space: dict[str, BaseDistribution], samples: dict[str, np.ndarray]) -> np.ndarray:
    """One row per sample: each number's position in its range and its square, choices one-hot."""
    columns: list[np.ndarray] = []
    for name, distribution in space.items():
        values = np.asarray(samples[name], dtype=float)
        if isinstance(distribution, CategoricalDistribution):
            for index in range(len(distribution.choices)):
                columns.append((values == index).astype(float))
            continue
        assert isinstance(distribution, (FloatDistribution, IntDistribution))
        low, high = float(distribution.low), float(distribution.high)
        if distribution.log:
            values, low, high = np.log(values), math.log(low), math.log(high)
        position = (values - low) / (high - low) if high > low else np.zeros_like(values)
        columns += [position, position**2]
    return np.column_stack(columns)
