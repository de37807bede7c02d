"""The report's population-based training plots: members over steps, and the best model's schedule.

Apart from ``lineage`` so that reading a schedule (the controller does, for the best
configuration) does not load plotly.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from controller.analysis.data import StudyData
from controller.analysis.lineage import best_schedule, segments_of

DECISION_COLOURS = {"start": "#636efa", "continue": "#636efa", "exploit": "#ef553b", "recover": "#fecb52"}


def lineage_figure(data: StudyData) -> go.Figure | str:
    """Members over steps: one line per segment, a dashed jump where a member copied another."""
    segments = segments_of(data)
    if not segments:
        return "not a population-based study"
    by_number = {t.number: t for t in data.trials}
    figure = go.Figure()
    for decision, colour in DECISION_COLOURS.items():
        xs: list[float | None] = []
        ys: list[float | None] = []
        text: list[str] = []
        for number, segment in sorted(segments.items()):
            trial = by_number[number]
            if segment.decision != decision or trial.state != TrialState.COMPLETE:
                continue
            steps = f"{segment.start}-{segment.end}"
            label = f"trial {number}: member {segment.member}, steps {steps} ({decision})"
            xs += [segment.start, segment.end, None]
            ys += [segment.member, segment.member, None]
            text += [label, label, ""]
        if xs:
            figure.add_trace(
                go.Scatter(x=xs, y=ys, mode="lines", name=decision, line={"color": colour, "width": 4},
                           hovertext=text, hoverinfo="text")
            )
    jumps_x: list[float | None] = []
    jumps_y: list[float | None] = []
    for segment in segments.values():
        if segment.parent is not None and segment.parent != segment.member:
            jumps_x += [segment.start, segment.start, None]
            jumps_y += [segment.parent, segment.member, None]
    if jumps_x:
        figure.add_trace(
            go.Scatter(x=jumps_x, y=jumps_y, mode="lines+markers", name="copied from",
                       line={"color": "#888888", "dash": "dot"})
        )
    figure.update_layout(xaxis_title="step", yaxis_title="member", yaxis={"dtick": 1})
    return figure


def schedule_figure(data: StudyData, best_trial: int | None) -> go.Figure | str:
    """The best model's mutable parameters against the step (a step line per parameter)."""
    if best_trial is None:
        return "no segment has completed yet"
    schedule = best_schedule(data, best_trial)
    if not schedule:
        return "not a population-based study"
    names = sorted({name for entry in schedule for name in entry.params})
    if not names:
        return "the schedule has no parameters"
    figure = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names)
    for row, name in enumerate(names, start=1):
        xs: list[float] = []
        ys: list[Any] = []
        for entry in schedule:
            if name in entry.params:
                xs += [entry.steps[0], entry.steps[1]]
                ys += [entry.params[name], entry.params[name]]
        line = go.Scatter(x=xs, y=ys, mode="lines", name=name, line={"shape": "hv"})
        figure.add_trace(line, row=row, col=1)
    figure.update_xaxes(title_text="step", row=len(names), col=1)
    figure.update_layout(height=160 + 180 * len(names), showlegend=False)
    return figure
