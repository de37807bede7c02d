"""``trials.csv``: one row per trial with state, values, params, duration, charges and reason.

``kind`` is ``search`` or ``confirm``; a confirmation run names the search trial it repeats in
``confirm_of``. A population-based study adds the lineage: each segment's ``member``, its
``segment`` count, the ``parent_member`` whose checkpoint it resumed (and that checkpoint's
trial, ``loaded_trial``), its ``step_start``/``step_end`` (end exclusive) and the ``decision``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from optuna.trial import FrozenTrial

from controller.budget.ledger import Charge
from controller.planner.segments import ATTR_SEGMENT, Segment
from trial_worker.contract import ATTR_REASON

LINEAGE_COLUMNS = ["member", "segment", "parent_member", "loaded_trial", "step_start", "step_end", "decision"]


def trial_columns(metrics: list[str], params: list[str], lineage: bool = False) -> list[str]:
    return [
        "number",
        "kind",
        "confirm_of",
        "state",
        *metrics,
        *(f"param_{p}" for p in params),
        "duration_s",
        "gpu_seconds",
        "cpu_seconds",
        "reason",
        *(LINEAGE_COLUMNS if lineage else []),
    ]


def write_trials_csv(
    path: Path,
    trials: list[FrozenTrial],
    metrics: list[str],
    charges: dict[int, Charge],
    confirm_of: dict[int, int] | None = None,
) -> None:
    """Write every trial; parameters a trial did not use (conditional ones) stay empty."""
    confirm_of = confirm_of or {}
    params = sorted({name for t in trials for name in t.params})
    segments = {t.number: Segment.from_attr(t.user_attrs.get(ATTR_SEGMENT)) for t in trials}
    lineage = any(s is not None for s in segments.values())
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(trial_columns(metrics, params, lineage))
        for trial in sorted(trials, key=lambda t: t.number):
            values = list(trial.values) if trial.values is not None else [None] * len(metrics)
            duration = trial.duration.total_seconds() if trial.duration is not None else None
            charge = charges.get(trial.number, Charge())
            writer.writerow(
                [
                    trial.number,
                    "confirm" if trial.number in confirm_of else "search",
                    confirm_of.get(trial.number, ""),
                    trial.state.name,
                    *("" if v is None else repr(float(v)) for v in values),
                    *(_cell(trial.params.get(p)) for p in params),
                    "" if duration is None else f"{duration:.3f}",
                    charge.gpu_seconds,
                    charge.cpu_seconds,
                    trial.user_attrs.get(ATTR_REASON, "") or "",
                    *(_lineage_cells(segments.get(trial.number)) if lineage else []),
                ]
            )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _lineage_cells(segment: Segment | None) -> list[str]:
    if segment is None:
        return [""] * len(LINEAGE_COLUMNS)
    return [
        str(segment.member),
        str(segment.index),
        _cell(segment.parent),
        _cell(segment.load),
        str(segment.start),
        str(segment.end),
        segment.decision,
    ]
