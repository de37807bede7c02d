"""The report's plots, each built with Optuna's visualization module (or plotly for importance).

Every plot becomes a :class:`PlotSection` holding its HTML fragment (without plotly's JavaScript,
which the page inlines once) and the seconds it took, so ``bench/export.py`` can time each part.
A plot that cannot be drawn (too few trials, a single parameter, ...) becomes a section with a note
saying why instead of failing the export.
"""

from __future__ import annotations

import datetime
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
from controller.analysis.lineage import segments_of
from controller.analysis.lineage_plots import lineage_figure, schedule_figure

MAX_INTERMEDIATE_TRIALS = 300  # one line per trial: more makes the page heavy and unreadable
MAX_PARALLEL_LINES = 2000  # parallel coordinates: beyond this the lines are a solid block (and slow)
STATE_COLOURS = {
    "COMPLETE": "#636efa",
    "PRUNED": "#fecb52",
    "FAIL": "#ef553b",
    "RUNNING": "#00cc96",
    "WAITING": "#bbbbbb",
}
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
        lines, caption = _parallel_sample(study, data.directions[i])
        sections.append(
            _draw(
                f"parallel-{i}",
                f"Parallel coordinates: {metric}",
                f"Completed search trials as lines through their parameters, coloured by {metric}; "
                f"{caption}.",
                _parallel,
                lines,
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
            _timeline,
            data,
        )
    )
    if segments_of(data):
        sections += _population_sections(data)
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


def _population_sections(data: StudyData) -> list[PlotSection]:
    """Population-based training: who copied whom, and the schedule of the best model."""
    completed = data.completed_search()
    sign = -1.0 if data.directions[0] == "maximize" else 1.0
    best = min(completed, key=lambda t: (sign * float(t.values[0]), t.number)).number if completed else None
    return [
        _draw(
            "lineage",
            "Population lineage",
            "Each member's completed segments over the steps they trained; a dotted jump is a member "
            "that copied a better member's checkpoint (exploit) before exploring its parameters.",
            lineage_figure,
            data,
        ),
        _draw(
            "schedule",
            "Schedule of the best model",
            "The mutable parameters, step by step, along the segments whose checkpoints led to the "
            "best segment" + (f" (trial {best})." if best is not None else "."),
            schedule_figure,
            data,
            best,
        ),
    ]


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


def _parallel_sample(study: optuna.Study, direction: str) -> tuple[optuna.Study, str]:
    """At most MAX_PARALLEL_LINES trials: the best quarter of them, then an even spread of the rest."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) <= MAX_PARALLEL_LINES:
        return study, f"all {len(completed)} shown"
    sign = -1.0 if direction == "maximize" else 1.0
    ranked = sorted(completed, key=lambda t: (sign * float(t.values[0]), t.number))
    best = MAX_PARALLEL_LINES // 4
    rest = ranked[best:]
    stride = len(rest) / (MAX_PARALLEL_LINES - best)
    chosen = ranked[:best] + [rest[int(i * stride)] for i in range(MAX_PARALLEL_LINES - best)]
    chosen.sort(key=lambda t: t.number)
    directions = [d.name.lower() for d in study.directions]
    caption = (
        f"{MAX_PARALLEL_LINES} of {len(completed)} shown (the best {best}, then an even spread of "
        "the rest by value)"
    )
    return study_of(chosen, directions, study.metric_names or []), caption


def _timeline(data: StudyData) -> go.Figure | str:
    """One horizontal bar per trial from its start to its end, coloured by state.

    Drawn directly with plotly rather than optuna's plot_timeline, which copies every trial and
    takes seconds per thousand trials.
    """
    if not data.trials:
        return "no trials yet"
    confirm = data.confirm_of
    ends = [t.datetime_complete or t.datetime_start for t in data.trials if t.datetime_start]
    latest = max((e for e in ends if e is not None), default=None)
    figure = go.Figure()
    for state, colour in STATE_COLOURS.items():
        chosen = [t for t in data.trials if t.state.name == state and t.datetime_start is not None]
        if not chosen:
            continue
        starts = [t.datetime_start for t in chosen]
        durations = [_bar_ms(t, latest) for t in chosen]
        labels = [
            f"trial {t.number}{' (confirmation)' if t.number in confirm else ''}: {state}" for t in chosen
        ]
        figure.add_trace(
            go.Bar(
                name=state,
                orientation="h",
                base=starts,
                x=durations,
                y=[t.number for t in chosen],
                marker_color=colour,
                hovertext=labels,
                hoverinfo="text",
            )
        )
    figure.update_layout(
        xaxis={"type": "date", "title": "time"}, yaxis={"title": "trial"}, barmode="overlay", bargap=0
    )
    return figure


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


def _bar_ms(trial: FrozenTrial, latest: datetime.datetime | None) -> float:
    """A bar's length in milliseconds; running trials reach the latest time seen; at least 1 s."""
    start = trial.datetime_start
    end = trial.datetime_complete or latest
    if start is None or end is None:
        return 1000.0
    return max(1000.0, (end - start).total_seconds() * 1000)
