"""``trials.csv``: one row per trial with state, values, params, duration, charges and reason.

``kind`` is ``search`` or ``confirm``; a confirmation run names the search trial it repeats in
``confirm_of``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from optuna.trial import FrozenTrial

from controller.budget.ledger import Charge
from trial_worker.contract import ATTR_REASON


def trial_columns(metrics: list[str], params: list[str]) -> list[str]:
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
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(trial_columns(metrics, params))
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
                ]
            )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
