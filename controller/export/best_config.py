"""``best_config.json`` / ``.yaml``: the best trial, or the Pareto set for several metrics."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel


class BestTrial(BaseModel):
    trial: int
    params: dict[str, Any]
    values: dict[str, float]


class BestConfig(BaseModel):
    """Single objective: trial, params, values. Several metrics: ``pareto`` holds the front."""

    trial: int | None = None
    params: dict[str, Any] | None = None
    values: dict[str, float] | None = None
    pareto: list[BestTrial] | None = None

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def _as_best(trial: FrozenTrial, metrics: list[str]) -> BestTrial:
    return BestTrial(
        trial=trial.number, params=dict(trial.params), values=dict(zip(metrics, trial.values or [], strict=True))
    )


def best_config(study: optuna.Study, metrics: list[str]) -> BestConfig | None:
    """The best configuration, or None when no trial completed."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None
    if len(metrics) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number)
        return BestConfig(pareto=[_as_best(t, metrics) for t in front])
    best = _as_best(study.best_trial, metrics)
    return BestConfig(trial=best.trial, params=best.params, values=best.values)
