"""Confidence intervals from confirmation runs, and the best configuration chosen by mean.

Each configuration the confirmation phase repeated gets, per metric, the mean and sample standard
deviation of its completed repeats and a two-sided 95% Student-t interval:
``mean +/- t(0.975, n-1) * sd / sqrt(n)``. The search trial that picked the configuration is not
one of the samples (it was chosen for scoring well, so it would bias the mean). With fewer than
two completed repeats no interval exists and none is given.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import TrialState
from pydantic import BaseModel

from controller.analysis.data import StudyData

CONFIDENCE = 0.95


class Interval(BaseModel):
    """One metric of one configuration over its confirmation runs."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None


class ConfirmedConfiguration(BaseModel):
    source_trial: int
    params: dict[str, Any]
    search_values: dict[str, float]
    runs: list[int]
    completed_runs: int
    metrics: dict[str, Interval]


class ConfidenceReport(BaseModel):
    """``confidence_intervals.json``: every confirmed configuration, best (by mean) first."""

    confidence: float = CONFIDENCE
    method: str = (
        "two-sided Student-t interval over the confirmation runs (the search trial excluded): "
        "mean +/- t(0.975, n-1) * sd / sqrt(n), sd with n-1 degrees of freedom"
    )
    configurations: list[ConfirmedConfiguration]
    best_trial: int | None = None
    chosen_by: str | None = None


def t_interval(samples: list[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean, sample standard deviation and the two-sided t-interval of ``samples``."""
    n = len(samples)
    if n == 0:
        raise ValueError("no samples")
    mean = math.fsum(samples) / n
    if n < 2:
        return Interval(n=n, mean=mean, std=None, low=None, high=None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in samples) / (n - 1))
    from scipy import stats  # loaded when an interval is computed: it costs a second at start

    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Interval(n=n, mean=mean, std=std, low=mean - half, high=mean + half)


def confidence_report(data: StudyData) -> ConfidenceReport | None:
    """Intervals per confirmed configuration, or None when the study ran no confirmation."""
    confirm_of = data.confirm_of
    if not confirm_of:
        return None
    by_number = {t.number: t for t in data.trials}
    runs: dict[int, list[int]] = {}
    for number, source in sorted(confirm_of.items()):
        runs.setdefault(source, []).append(number)
    configurations: list[ConfirmedConfiguration] = []
    for source, numbers in runs.items():
        origin = by_number.get(source)
        if origin is None:
            continue
        done = [
            by_number[n]
            for n in numbers
            if by_number[n].state == TrialState.COMPLETE and by_number[n].values is not None
        ]
        metrics = {
            metric: t_interval([float(t.values[i]) for t in done])
            for i, metric in enumerate(data.metrics)
            if done
        }
        configurations.append(
            ConfirmedConfiguration(
                source_trial=source,
                params=dict(origin.params),
                search_values=dict(zip(data.metrics, origin.values or [], strict=False)),
                runs=numbers,
                completed_runs=len(done),
                metrics=metrics,
            )
        )
    report = ConfidenceReport(configurations=configurations)
    if data.is_multi_objective:
        report.chosen_by = "several metrics: each Pareto configuration keeps its own interval"
        return report
    ranked = _ranked_by_mean(configurations, data.metrics[0], data.directions[0] == "maximize")
    report.configurations = ranked + [c for c in configurations if c not in ranked]
    if ranked:
        report.best_trial = ranked[0].source_trial
        report.chosen_by = f"the best mean {data.metrics[0]} over the confirmation runs"
    return report


def _ranked_by_mean(
    configurations: list[ConfirmedConfiguration], metric: str, maximize: bool
) -> list[ConfirmedConfiguration]:
    measured = [c for c in configurations if metric in c.metrics]
    sign = -1.0 if maximize else 1.0
    return sorted(measured, key=lambda c: (sign * c.metrics[metric].mean, c.source_trial))
