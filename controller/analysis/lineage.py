"""Population-based training in the export: each segment's lineage, the winning schedule, and
the report's lineage and schedule plots.

A segment records which member it trained, its steps, and the checkpoint it resumed (``parent``
member, ``load`` trial). Following ``load`` back from any segment gives the chain of segments
its weights went through; along the best segment's chain, the parameter values per step are
the schedule that produced the best model.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots
from pydantic import BaseModel

from controller.analysis.data import StudyData
from controller.planner.segments import ATTR_SEGMENT, Segment

DECISION_COLOURS = {"start": "#636efa", "continue": "#636efa", "exploit": "#ef553b", "recover": "#fecb52"}


class ScheduleEntry(BaseModel):
    """One segment of the best model's history: its steps, the member and its parameters."""

    steps: tuple[int, int]  # [start, end)
    member: int
    trial: int
    decision: str
    params: dict[str, Any]
    value: float | None = None


def segments_of(data: StudyData) -> dict[int, Segment]:
    """Trial number -> its segment record, for the trials that are PBT segments."""
    found: dict[int, Segment] = {}
    for trial in data.trials:
        segment = Segment.from_attr(trial.user_attrs.get(ATTR_SEGMENT))
        if segment is not None:
            found[trial.number] = segment
    return found


def mutable_names(data: StudyData) -> list[str] | None:
    """The parameters the recorded spec marks mutable (None when the spec is not recorded)."""
    spec = data.spec
    if spec is None:
        return None
    space = spec.get("searchSpace") or {}
    return [name for name, param in space.items() if isinstance(param, dict) and param.get("mutable")]


def lineage(data: StudyData, trial_number: int) -> list[tuple[FrozenTrial, Segment]]:
    """The segments whose checkpoints led to ``trial_number``'s, first segment first."""
    segments = segments_of(data)
    by_number = {t.number: t for t in data.trials}
    chain: list[tuple[FrozenTrial, Segment]] = []
    current: int | None = trial_number
    seen: set[int] = set()
    while current is not None and current in segments and current not in seen:
        seen.add(current)
        chain.append((by_number[current], segments[current]))
        current = segments[current].load
    return list(reversed(chain))


def best_schedule(data: StudyData, trial_number: int) -> list[ScheduleEntry] | None:
    """The parameter values per step along the best segment's lineage (None: not a PBT study)."""
    chain = lineage(data, trial_number)
    if not chain:
        return None
    names = mutable_names(data)
    return [
        ScheduleEntry(
            steps=(segment.start, segment.end),
            member=segment.member,
            trial=trial.number,
            decision=segment.decision,
            params={k: v for k, v in trial.params.items() if names is None or k in names},
            value=float(trial.values[0]) if trial.values else None,
        )
        for trial, segment in chain
    ]


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
