"""Counts and the best trial, for progress output and the Study status."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from controller.planner.observation import QUEUED, TrialView
from controller.spec import StudySpec


@dataclass(frozen=True)
class StudySummary:
    """Trial counts by state (every attempt counted once) and the best trial so far.

    ``retried`` counts failed attempts that were run again with the same params.
    """

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    retried: int
    best_number: int | None
    best_values: tuple[float, ...] | None
    queued: int = 0  # asked for a busy local worker, starting when it is free

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed - self.retried


def summarize(spec: StudySpec, trials: tuple[TrialView, ...] | list[TrialView]) -> StudySummary:
    trials = [t for t in trials if not t.never_ran]  # asked, never started: as if never asked
    counts = Counter(t.state for t in trials)
    retried_keys = {(t.logical, t.attempt - 1) for t in trials if t.is_retry}
    retried = sum(1 for t in trials if t.state == "FAIL" and (t.logical, t.attempt) in retried_keys)
    best = best_trial(spec, trials)
    return StudySummary(
        complete=counts["COMPLETE"],
        pruned=counts["PRUNED"],
        failed=counts["FAIL"],
        running=counts["RUNNING"],
        waiting=counts["WAITING"],
        queued=counts[QUEUED],
        retried=retried,
        best_number=best.number if best else None,
        best_values=best.values if best else None,
    )


def best_trial(spec: StudySpec, trials: tuple[TrialView, ...] | list[TrialView]) -> TrialView | None:
    """The best COMPLETE trial of a single-objective study (lowest number wins ties)."""
    if spec.is_multi_objective:
        return None
    maximize = spec.objective.metrics[0].direction == "maximize"
    best: TrialView | None = None
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != "COMPLETE" or not trial.values:
            continue
        if best is None or best.values is None or _better(trial.values[0], best.values[0], maximize):
            best = trial
    return best


def _better(value: float, than: float, maximize: bool) -> bool:
    return value > than if maximize else value < than
