"""``best_config.json`` / ``.yaml``: the best configuration, or the Pareto set for several metrics.

Only search trials compete (confirmation reruns repeat configurations already chosen). When the
study ran confirmation trials, a single-objective study's best configuration is the one with the
best *mean* over its confirmation runs, and it carries its 95% interval; otherwise the document
says that no interval was measured rather than inventing one.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial
from pydantic import BaseModel

from controller.analysis.confidence import ConfidenceReport, Interval
from controller.analysis.data import StudyData
from controller.analysis.lineage import ScheduleEntry, best_schedule

NO_INTERVAL = (
    "no confidence interval was measured: the values are one run's; set spec.confirm "
    "(topK, repeats) to rerun the best configurations with fresh seeds"
)


class BestTrial(BaseModel):
    trial: int
    params: dict[str, Any]
    values: dict[str, float]
    confirmed: dict[str, Interval] | None = None


class BestConfig(BaseModel):
    """Single objective: trial, params, values. Several metrics: ``pareto`` holds the front."""

    trial: int | None = None
    params: dict[str, Any] | None = None
    values: dict[str, float] | None = None
    pareto: list[BestTrial] | None = None
    chosen_by: str | None = None
    confirmed: dict[str, Interval] | None = None
    note: str | None = None
    schedule: list[ScheduleEntry] | None = None  # population-based training: the best model's history

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, mode="json")


def _as_best(trial: FrozenTrial, metrics: list[str]) -> BestTrial:
    return BestTrial(
        trial=trial.number,
        params=dict(trial.params),
        values=dict(zip(metrics, trial.values or [], strict=True)),
    )


def _intervals(confidence: ConfidenceReport | None) -> dict[int, dict[str, Interval]]:
    if confidence is None:
        return {}
    return {c.source_trial: c.metrics for c in confidence.configurations if c.metrics}


def best_config(data: StudyData, confidence: ConfidenceReport | None = None) -> BestConfig | None:
    """The best configuration, or None when no search trial completed."""
    completed = data.completed_search()
    if not completed:
        return None
    intervals = _intervals(confidence)
    if data.is_multi_objective:
        front = sorted(data.search_study().best_trials, key=lambda t: t.number)
        pareto = [_as_best(t, data.metrics) for t in front]
        for entry in pareto:
            entry.confirmed = intervals.get(entry.trial)
        return BestConfig(
            pareto=pareto,
            chosen_by="the Pareto front of the search trials",
            note=None if intervals else NO_INTERVAL,
        )
    if confidence is not None and confidence.best_trial is not None:
        chosen = next(t for t in completed if t.number == confidence.best_trial)
        best = _as_best(chosen, data.metrics)
        return BestConfig(
            trial=best.trial,
            params=best.params,
            values=best.values,
            chosen_by=confidence.chosen_by,
            confirmed=intervals.get(best.trial),
        )
    sign = -1.0 if data.directions[0] == "maximize" else 1.0
    chosen = min(completed, key=lambda t: (sign * float(t.values[0]), t.number))
    best = _as_best(chosen, data.metrics)
    return BestConfig(
        trial=best.trial,
        params=best.params,
        values=best.values,
        chosen_by=f"the best single value of {data.metrics[0]} among the search trials",
        note=NO_INTERVAL,
        schedule=best_schedule(data, best.trial),
    )
