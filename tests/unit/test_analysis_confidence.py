"""Confidence intervals, the best configuration by mean, and pruning's savings, on in-memory trials."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from controller.analysis.confidence import confidence_report, t_interval
from controller.analysis.data import StudyData
from controller.analysis.importance import compute_importance
from controller.analysis.summary import pruning_savings
from controller.export.best_config import NO_INTERVAL, best_config
from controller.planner.confirmation import ATTR_CONFIRM_OF, CONFIRM_KIND
from trial_worker.contract import ATTR_KIND

START = datetime.datetime(2026, 1, 1, 12, 0, 0)


def trial(
    number: int,
    value: float | None,
    x: float,
    seconds: float = 10.0,
    state: TrialState = TrialState.COMPLETE,
    confirm_of: int | None = None,
) -> FrozenTrial:
    attrs: dict[str, Any] = {}
    if confirm_of is not None:
        attrs = {ATTR_KIND: CONFIRM_KIND, ATTR_CONFIRM_OF: confirm_of}
    return FrozenTrial(
        number=number,
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        values=None,
        datetime_start=START,
        datetime_complete=START + datetime.timedelta(seconds=seconds),
        params={"x": x},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


def data_of(
    trials: list[FrozenTrial], direction: str = "minimize", spec: dict[str, Any] | None = None
) -> StudyData:
    attrs = {"tunefleet.spec": spec} if spec else {}
    return StudyData(name="s", metrics=["loss"], directions=[direction], user_attrs=attrs, trials=trials)


def test_t_interval_matches_a_hand_computation() -> None:
    samples = [0.80, 0.82, 0.79, 0.85, 0.84]
    interval = t_interval(samples)
    mean = 0.82
    sd = math.sqrt(sum((s - mean) ** 2 for s in samples) / 4)  # 0.0254951
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, df=4) from a t-table
    assert interval.n == 5
    assert interval.mean == pytest.approx(mean)
    assert interval.std == pytest.approx(sd)
    assert interval.low == pytest.approx(mean - half)
    assert interval.high == pytest.approx(mean + half)


def test_one_sample_has_no_interval() -> None:
    interval = t_interval([0.5])
    assert interval.mean == 0.5 and interval.low is None and interval.high is None and interval.std is None


CONFIRMED = [
    trial(0, 0.10, 0.1),  # lucky search value
    trial(1, 0.20, 0.2),
    trial(2, 0.90, 0.9),
    trial(3, 0.30, 0.1, confirm_of=0),
    trial(4, 0.32, 0.1, confirm_of=0),
    trial(5, 0.34, 0.1, confirm_of=0),
    trial(6, 0.21, 0.2, confirm_of=1),
    trial(7, 0.22, 0.2, confirm_of=1),
    trial(8, 0.0, 0.2, state=TrialState.FAIL, confirm_of=1),
]


def test_best_configuration_is_chosen_by_mean_of_confirmation_runs() -> None:
    data = data_of(CONFIRMED)
    report = confidence_report(data)
    assert report is not None
    assert [c.source_trial for c in report.configurations] == [1, 0]
    assert report.best_trial == 1
    second = report.configurations[0]
    assert second.completed_runs == 2 and second.runs == [6, 7, 8]
    assert second.metrics["loss"].mean == pytest.approx(0.215)
    best = best_config(data, report)
    assert best is not None
    assert best.trial == 1  # not trial 0, whose single search value was luckier
    assert best.confirmed is not None and best.confirmed["loss"].n == 2
    assert best.note is None


def test_without_confirmation_the_best_config_says_no_interval_was_measured() -> None:
    data = data_of(CONFIRMED[:3])
    assert confidence_report(data) is None
    best = best_config(data, None)
    assert best is not None and best.trial == 0
    assert best.confirmed is None and best.note == NO_INTERVAL
    assert "no confidence interval was measured" in best.to_document()["note"]


def test_confirmation_runs_do_not_compete_for_best() -> None:
    trials = [trial(0, 0.5, 0.5), trial(1, 0.01, 0.5, confirm_of=0)]
    best = best_config(data_of(trials), None)
    assert best is not None and best.trial == 0 and best.values == {"loss": 0.5}


def test_pruning_savings_use_the_median_complete_duration() -> None:
    trials = [
        trial(0, 0.1, 0.1, seconds=100),
        trial(1, 0.2, 0.2, seconds=120),
        trial(2, 0.3, 0.3, seconds=140),
        trial(3, None, 0.4, seconds=30, state=TrialState.PRUNED),
        trial(4, None, 0.5, seconds=150, state=TrialState.PRUNED),  # ran longer: saved nothing
    ]
    spec = {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
        "trial": {"gpus": 2, "cpus": 4},
    }
    savings = pruning_savings(data_of(trials, spec=spec))
    assert savings.median_complete_duration_s == 120
    assert savings.saved_seconds == pytest.approx(90)
    assert savings.saved_gpu_seconds == pytest.approx(180)
    assert savings.saved_cpu_seconds == pytest.approx(360)
    assert savings.pruned_trials == 2
    assert "median" in savings.method


def test_importance_covers_every_parameter_even_with_too_few_trials() -> None:
    report = compute_importance(data_of([trial(0, 0.1, 0.1)]))
    assert report.parameters == ["x"]
    assert report.metrics[0].importances == {"x": 0.0}
    assert report.metrics[0].note is not None and "1 completed" in report.metrics[0].note
