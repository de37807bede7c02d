"""``importance.json``: how much each parameter mattered, for each objective metric.

PED-ANOVA (Optuna's default evaluator) is used unless fANOVA is asked for. PED-ANOVA measures how
much each parameter's distribution among the top 10% of trials differs from all trials; it
handles conditional parameters, which fANOVA skips. It assumes lower is better, so maximized
metrics are negated before evaluation.
"""

from __future__ import annotations

import warnings
from typing import Literal

import optuna
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.trial import FrozenTrial
from pydantic import BaseModel, Field

from controller.analysis.data import StudyData

EvaluatorName = Literal["ped-anova", "fanova"]
MIN_TRIALS = 2  # Optuna's evaluators need at least two completed trials with differing values

EVALUATOR_DESCRIPTIONS = {
    "ped-anova": (
        "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, target_quantile=0.1, "
        "region_quantile=1.0): how much reaching the top 10% of trials depends on each parameter"
    ),
    "fanova": (
        "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0): the share of the "
        "objective's variance a random forest attributes to each parameter"
    ),
}


class MetricImportance(BaseModel):
    """Normalized importances (summing to 1) for one metric, most important first."""

    metric: str
    direction: str
    importances: dict[str, float]
    note: str | None = None


class ImportanceReport(BaseModel):
    evaluator: EvaluatorName
    description: str
    trials_used: int = Field(description="completed search trials the evaluation used")
    parameters: list[str]
    metrics: list[MetricImportance]

    def ranked_parameters(self, metric_index: int = 0) -> list[str]:
        """Parameters ordered by importance for one metric (then by name for unevaluated ones)."""
        if not self.metrics:
            return list(self.parameters)
        scores = self.metrics[metric_index].importances
        return sorted(self.parameters, key=lambda p: (-scores.get(p, -1.0), p))


def _evaluator(name: EvaluatorName) -> optuna.importance.BaseImportanceEvaluator:
    if name == "fanova":
        return FanovaImportanceEvaluator(seed=0)
    return PedAnovaImportanceEvaluator()


def _target(index: int, maximize: bool, evaluator: EvaluatorName) -> object:
    # PED-ANOVA ranks by "lower is better"; fANOVA only measures variance, so the sign is moot.
    sign = -1.0 if maximize and evaluator == "ped-anova" else 1.0

    def target(trial: FrozenTrial) -> float:
        return sign * float(trial.values[index])

    return target


def compute_importance(data: StudyData, evaluator: EvaluatorName = "ped-anova") -> ImportanceReport:
    """Every searched parameter's importance for every metric.

    A parameter the evaluator could not assess (too few trials, or fANOVA with a conditional
    parameter) gets 0.0 and the metric carries a note saying why, so the file always covers every
    parameter.
    """
    completed = data.completed_search()
    parameters = sorted({name for t in data.search_trials for name in t.params})
    results: list[MetricImportance] = []
    study = data.search_study() if len(completed) >= MIN_TRIALS else None
    for index, (metric, direction) in enumerate(zip(data.metrics, data.directions, strict=True)):
        if study is None:
            results.append(_empty(metric, direction, parameters, f"only {len(completed)} completed trial(s)"))
            continue
        target = _target(index, direction == "maximize", evaluator)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = optuna.importance.get_param_importances(
                    study,
                    evaluator=_evaluator(evaluator),
                    target=target,  # type: ignore[arg-type]
                )
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            results.append(_empty(metric, direction, parameters, f"the evaluator failed: {exc}"))
            continue
        missing = [p for p in parameters if p not in scores]
        importances = {p: float(scores[p]) for p in scores} | dict.fromkeys(missing, 0.0)
        note = (
            f"not assessed (set to 0): {', '.join(missing)}; "
            + (
                "fANOVA only assesses parameters every completed trial has"
                if evaluator == "fanova"
                else "no completed trial (or too few) used it"
            )
            if missing
            else None
        )
        results.append(
            MetricImportance(metric=metric, direction=direction, importances=importances, note=note)
        )
    return ImportanceReport(
        evaluator=evaluator,
        description=EVALUATOR_DESCRIPTIONS[evaluator],
        trials_used=len(completed),
        parameters=parameters,
        metrics=results,
    )


def _empty(metric: str, direction: str, parameters: list[str], why: str) -> MetricImportance:
    return MetricImportance(
        metric=metric,
        direction=direction,
        importances=dict.fromkeys(parameters, 0.0),
        note=f"importance not computed: {why}",
    )
