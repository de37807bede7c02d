"""The report's plots, each built with Optuna's visualization module (or plotly for importance).

Every plot becomes a :class:`PlotSection` holding its HTML fragment (without plotly's JavaScript,
which the page inlines once) and the seconds it took, so ``bench/export.py`` can time each part.
A plot that cannot be drawn (too few trials, a single parameter, ...) becomes a section with a note
saying why instead of failing the export.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna import visualization as vis
from optuna.trial import FrozenTrial, TrialState

from controller.analysis.data import StudyData, study_of
from controller.analysis.importance import ImportanceReport

MAX_INTERMEDIATE_TRIALS = 300  # one line per trial: more makes the page heavy and unreadable
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class PlotSection:
    key: str
    title: str
    caption: str
    html: str | None = None
    note: str | None = None
    seconds: float = 0.0


def _draw(
    key: str, title: str, caption: str, build: Callable[..., go.Figure | str], *args: Any
) -> PlotSection:
    """Build one figure (``build(*args)``) and serialize it; a string (or an error) becomes the note."""
    started = time.perf_counter()
    section = PlotSection(key=key, title=title, caption=caption)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure = build(*args)
        if isinstance(figure, str):
            section.note = figure
        else:
            figure.update_layout(title=None, margin={"t": 30})
            section.html = figure.to_html(
                full_html=False, include_plotlyjs=False, div_id=f"plot-{key}", config=PLOT_CONFIG
            )
    except (ValueError, RuntimeError, KeyError, IndexError, ZeroDivisionError) as exc:
        section.note = f"could not be drawn: {exc}"
    section.seconds = time.perf_counter() - started
    return section


def _metric_study(data: StudyData, index: int) -> optuna.Study:
    """A single-objective view of one metric (Optuna's per-metric plots need one direction)."""
    if not data.is_multi_objective:
        return data.search_study()
    trials = [_with_one_value(t, index) for t in data.search_trials]
    return study_of(trials, [data.directions[index]], [data.metrics[index]])


def _with_one_value(trial: FrozenTrial, index: int) -> FrozenTrial:
    values = [trial.values[index]] if trial.values is not None else None
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=values,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={},
        system_attrs=trial.system_attrs,
        intermediate_values=trial.intermediate_values,
        trial_id=trial.number,
    )


def build_plots(data: StudyData, importance: ImportanceReport) -> list[PlotSection]:
    """Every plot of the report, in page order."""
    optuna.logging.set_verbosity(logging.ERROR)  # "no trials" warnings become notes instead
    completed = len(data.completed_search())
    sections: list[PlotSection] = []
    studies = {i: _metric_study(data, i) for i in range(len(data.metrics))}
    for i, metric in enumerate(data.metrics):
        study = studies[i]
        sections.append(
            _draw(
                f"history-{i}",
                f"Optimization history: {metric}",
                f"Each search trial's {metric} ({data.directions[i]}) and the best so far.",
                _history,
                study,
                metric,
                completed,
            )
        )
    sections.append(
        _draw(
            "importance",
            "Parameter importance",
            importance.description,
            lambda: _importance_figure(importance),
        )
    )
    for i, metric in enumerate(data.metrics):
        study = studies[i]
        sections.append(
            _draw(
                f"parallel-{i}",
                f"Parallel coordinates: {metric}",
                f"Every completed search trial as a line through its parameters, coloured by {metric}.",
                _parallel,
                study,
                metric,
                completed,
            )
        )
        sections.append(
            _draw(
                f"slice-{i}",
                f"Slice plots: {metric}",
                f"{metric} against each parameter on its own.",
                _slice,
                study,
                metric,
                completed,
            )
        )
        top = importance.ranked_parameters(i)[:2]
        sections.append(
            _draw(
                f"contour-{i}",
                f"Contour of the two most important parameters: {metric}",
                f"{metric} over {' and '.join(top) or 'the two most important parameters'}.",
                _contour,
                study,
                top,
                metric,
                completed,
            )
        )
    sections.append(
        _draw(
            "intermediate",
            "Intermediate values",
            "The values trials reported while running, which the pruner compares.",
            lambda: _intermediate(data),
        )
    )
    sections.append(
        _draw(
            "timeline",
            "Timeline",
            "When each trial (confirmation runs included) started and ended, by state.",
            lambda: vis.plot_timeline(_all_trials_study(data)) if data.trials else "no trials yet",
        )
    )
    if data.is_multi_objective:
        sections.append(
            _draw(
                "pareto",
                "Pareto front",
                "Completed search trials; the non-dominated ones form the front.",
                lambda: (
                    _needs(completed, 1)
                    or vis.plot_pareto_front(data.search_study(), target_names=data.metrics)
                ),
            )
        )
        reference, described = _reference_point(data)
        sections.append(
            _draw(
                "hypervolume",
                "Hypervolume history",
                f"Hypervolume of the Pareto front after each trial; reference point {described}.",
                lambda: (
                    _needs(completed, 1)
                    or vis.plot_hypervolume_history(data.search_study(), reference_point=reference)
                ),
            )
        )
    return sections


def _history(study: optuna.Study, metric: str, completed: int) -> go.Figure | str:
    return _needs(completed, 1) or vis.plot_optimization_history(study, target_name=metric)


def _parallel(study: optuna.Study, metric: str, completed: int) -> go.Figure | str:
    return _needs(completed, 1) or vis.plot_parallel_coordinate(study, target_name=metric)


def _slice(study: optuna.Study, metric: str, completed: int) -> go.Figure | str:
    return _needs(completed, 1) or vis.plot_slice(study, target_name=metric)


def _needs(completed: int, at_least: int) -> str | None:
    if completed < at_least:
        return f"needs at least {at_least} completed search trial(s); there are {completed}"
    return None


def _importance_figure(importance: ImportanceReport) -> go.Figure | str:
    if not importance.parameters:
        return "the study has no parameters"
    figure = go.Figure()
    for entry in importance.metrics:
        ranked = sorted(entry.importances.items(), key=lambda item: item[1])
        figure.add_trace(
            go.Bar(
                x=[score for _, score in ranked],
                y=[name for name, _ in ranked],
                orientation="h",
                name=entry.metric,
            )
        )
    figure.update_layout(
        xaxis_title="normalized importance", barmode="group", height=120 + 40 * len(importance.parameters)
    )
    return figure


def _contour(study: optuna.Study, params: list[str], metric: str, completed: int) -> go.Figure | str:
    if len(params) < 2:
        return "a contour needs two parameters; the study searched fewer"
    return _needs(completed, 2) or vis.plot_contour(study, params=params, target_name=metric)


def _intermediate(data: StudyData) -> go.Figure | str:
    reporting = [t for t in data.search_trials if t.intermediate_values]
    if not reporting:
        return "no trial reported intermediate values (trial.report)"
    shown = reporting
    if len(reporting) > MAX_INTERMEDIATE_TRIALS:
        stride = len(reporting) / MAX_INTERMEDIATE_TRIALS
        shown = [reporting[int(i * stride)] for i in range(MAX_INTERMEDIATE_TRIALS)]
    figure = vis.plot_intermediate_values(study_of(shown, data.directions, data.metrics))
    if len(shown) < len(reporting):
        figure.add_annotation(
            text=f"{len(shown)} of {len(reporting)} trials shown, evenly spaced by trial number",
            xref="paper",
            yref="paper",
            x=0,
            y=1.08,
            showarrow=False,
        )
    return figure


def _all_trials_study(data: StudyData) -> optuna.Study:
    if not data.confirm_of:
        return data.search_study()
    return study_of(data.trials, data.directions, data.metrics)


def _reference_point(data: StudyData) -> tuple[list[float], str]:
    """Each metric's worst completed value pushed 10% of its range further from the optimum."""
    completed = [t for t in data.search_trials if t.state == TrialState.COMPLETE and t.values]
    point: list[float] = []
    for i, direction in enumerate(data.directions):
        values = [float(t.values[i]) for t in completed]
        if not values:
            point.append(0.0)
            continue
        low, high = min(values), max(values)
        margin = 0.1 * (high - low) or 0.1 * abs(high) or 1.0
        point.append(high + margin if direction == "minimize" else low - margin)
    described = ", ".join(f"{m}={p:.6g}" for m, p in zip(data.metrics, point, strict=True))
    return point, f"({described}: each metric's worst value moved 10% of its range further)"
