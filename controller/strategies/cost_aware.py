"""Cost-aware TPE: expected improvement per second of predicted trial cost (Snoek et al. 2012).

TPE draws candidates from its model of the good configurations and keeps the one with the best
ratio l(x)/g(x) of the good and bad densities. Its expected improvement is, up to a constant,
``1 / (γ + (1 - γ) g(x)/l(x))`` (Bergstra et al. 2011), with γ the share of trials counted as
good. Here each candidate's expected improvement is divided by its predicted cost
(:class:`~controller.strategies.costs.CostModel`, fitted on the finished trials), so between two
promising configurations the cheaper one runs first and a good one is found sooner; an expensive
configuration still runs when its expected improvement is worth its seconds.

When costs are uniform (or too few are measured) there is no cost model and the choice is
exactly TPE's: the same candidates, the same random draws, the same pick. Only the choice among
candidates changes, never how they are drawn, so seeding (and reseeding per trial) works as for
TPE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.samplers._tpe.sampler import default_gamma
from optuna.study import Study
from optuna.trial import FrozenTrial

from controller.strategies.costs import MEASURED, CostModel


def log_expected_improvement(log_ratio: np.ndarray, below_share: float) -> np.ndarray:
    """TPE's log expected improvement (up to a constant) from ``log l(x) - log g(x)``."""
    return -np.logaddexp(np.log(below_share), np.log1p(-below_share) - log_ratio)


class CostAwareTPESampler(TPESampler):
    """A :class:`~optuna.samplers.TPESampler` that picks by expected improvement per second.

    Args:
        steps: the steps of a full trial (``objective.steps``), to extrapolate pruned trials'
            costs; None: the most steps a completed trial reported.
        options: everything :class:`~optuna.samplers.TPESampler` takes.
    """

    def __init__(self, *, steps: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._declared_steps = steps
        self._cost_model: CostModel | None = None
        self._below_share = 0.1
        self.last_cost_model: CostModel | None = None  # the model behind the latest pick (tests, logs)

    def _sample(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        finished = study._get_trials(deepcopy=False, states=MEASURED, use_cache=True)
        self._cost_model = CostModel.fit(finished, search_space, self._declared_steps)
        self.last_cost_model = self._cost_model
        count = len(finished)
        gamma = self._gamma or default_gamma
        self._below_share = min(max(gamma(count) / max(count, 1), 1e-3), 1.0 - 1e-3)
        try:
            return super()._sample(study, trial, search_space)
        finally:
            self._cost_model = None

    def _compute_acquisition_func(
        self,
        samples: dict[str, np.ndarray],
        mpe_below: _ParzenEstimator,
        mpe_above: _ParzenEstimator,
    ) -> np.ndarray:
        log_ratio = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        if self._cost_model is None:
            return log_ratio
        log_seconds = self._cost_model.charged_log_seconds(samples)
        return log_expected_improvement(log_ratio, self._below_share) - log_seconds
