"""Population-based training in the export: each segment's lineage and the winning schedule
(the report's plots of them are in ``lineage_plots``).

A segment records which member it trained, its steps, and the checkpoint it resumed (``parent``
member, ``load`` trial). Following ``load`` back from any segment gives the chain of segments
its weights went through; along the best segment's chain, the parameter values per step are
the schedule that produced the best model.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial
from pydantic import BaseModel

from controller.analysis.data import StudyData
from controller.planner.segments import ATTR_SEGMENT, Segment


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
