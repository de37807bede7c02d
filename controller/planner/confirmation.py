"""The confirmation phase: rerun the best configurations with fresh seeds (a pure decision).

After the search stops for any reason but an interruption, ``spec.confirm`` asks for the top
``topK`` configurations to be run ``repeats`` more times each with distinct seeds, so the export
can give a mean and a confidence interval per configuration instead of one lucky value. The
original search trial is not one of the repeats: it was selected *because* it scored well, so
including it would bias the mean upwards.

Confirmation trials carry the trial user attribute ``tunefleet.kind = "confirm"`` and
``tunefleet.confirm_of = <source trial number>``; the planner receives them as a mapping
(confirmation trial number -> source trial number) and leaves them out of the search's trial
count, stop conditions and retries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.planner.observation import BudgetView, TrialView
from controller.spec import StudySpec

CONFIRM_KIND = "confirm"
ATTR_CONFIRM_OF = "tunefleet.confirm_of"  # on a confirmation trial: the search trial it repeats
ATTR_CONFIRM_WARNING = "tunefleet.confirm_warning"  # on the study: the budget cannot cover them


@dataclass(frozen=True)
class ConfirmationStep:
    """What the confirmation phase does next.

    ``start`` holds one source trial number per confirmation run to start now; ``finished``
    means every run that will happen has happened (or the budget allows no more).
    """

    start: tuple[int, ...] = ()
    finished: bool = False
    sources: tuple[int, ...] = ()


def confirmation_runs(spec: StudySpec) -> int:
    """How many confirmation trials the spec asks for at most (0 without ``spec.confirm``)."""
    if spec.confirm is None:
        return 0
    return spec.confirm.topK * spec.confirm.repeats


def runs_still_needed(spec: StudySpec, trials: Iterable[TrialView], confirm_of: Mapping[int, int]) -> int:
    """Confirmation runs not yet started: what the search must leave room for in the budget."""
    started = sum(1 for t in trials if t.number in confirm_of and not t.failed_by_infrastructure)
    return max(0, confirmation_runs(spec) - started)


def budget_warning(spec: StudySpec, budget: BudgetView | None) -> str | None:
    """A message when the budget cannot cover the confirmation runs (checked at the start).

    The worst case of each run is what a search trial reserves, so the check is exact in the
    same units the ledger uses.
    """
    if spec.confirm is None or budget is None:
        return None
    runs = confirmation_runs(spec)
    affordable = budget.affordable
    search = affordable - runs
    if search <= 0:
        return (
            f"the budget covers only {affordable} trial(s) at their worst case, not the {runs} "
            "confirmation runs (confirm.topK x confirm.repeats) plus a search: no search trial "
            "will start; raise the budget or lower confirm.topK / confirm.repeats"
        )
    if search < spec.confirm.topK:
        return (
            f"after reserving the {runs} confirmation runs the budget leaves {search} search "
            f"trial(s), fewer than confirm.topK ({spec.confirm.topK})"
        )
    return None


def top_configurations(spec: StudySpec, search_trials: Sequence[TrialView], k: int) -> tuple[int, ...]:
    """The source trial numbers of the ``k`` best distinct configurations.

    Single objective: best value first (lowest trial number breaks ties). Several metrics: the
    Pareto-optimal trials, ordered by the first metric. A configuration tried twice counts once.
    """
    completed = [t for t in search_trials if t.state == "COMPLETE" and t.values]
    signs = [1.0 if m.direction == "minimize" else -1.0 for m in spec.objective.metrics]

    def key(trial: TrialView) -> tuple[float, int]:
        values = trial.values or ()
        return (signs[0] * values[0], trial.number)

    ordered = sorted(completed, key=key)
    if spec.is_multi_objective:
        ordered = _pareto_front(ordered, signs)
    chosen: list[int] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for trial in ordered:
        config = tuple(sorted((name, repr(value)) for name, value in trial.params.items()))
        if config in seen:
            continue
        seen.add(config)
        chosen.append(trial.number)
        if len(chosen) == k:
            break
    return tuple(chosen)


def _pareto_front(ordered: list[TrialView], signs: list[float]) -> list[TrialView]:
    """Non-dominated trials, keeping ``ordered``'s order (sorted by the first metric)."""
    front: list[tuple[float, ...]] = []
    kept: list[TrialView] = []
    for trial in ordered:
        point = tuple(s * v for s, v in zip(signs, trial.values or (), strict=True))
        if any(_dominates(other, point) for other in front):
            continue
        front.append(point)
        kept.append(trial)
    return kept


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def confirmation_step(
    spec: StudySpec,
    trials: Sequence[TrialView],
    confirm_of: Mapping[int, int],
    live: frozenset[int],
    slots: int,
    affordable: int,
) -> ConfirmationStep:
    """The next confirmation runs, once the search has stopped.

    Waits while search trials are still in flight (the top-k depends on them). A run that failed
    for an infrastructure reason is replaced by a new run, up to ``trial.maxRetries`` times per
    configuration; any other outcome (including an objective failure) counts as one repeat.
    """
    if spec.confirm is None:
        return ConfirmationStep(finished=not live)
    if any(number not in confirm_of for number in live):
        return ConfirmationStep()
    search = [t for t in trials if t.number not in confirm_of]
    sources = top_configurations(spec, search, spec.confirm.topK)
    counted: dict[int, int] = dict.fromkeys(sources, 0)
    replaced: dict[int, int] = dict.fromkeys(sources, 0)
    for trial in trials:
        source = confirm_of.get(trial.number)
        if source not in counted:
            continue
        if trial.failed_by_infrastructure:
            replaced[source] += 1
        else:
            counted[source] += 1
    wanted: list[int] = []
    for source in sources:
        missing = spec.confirm.repeats - counted[source]
        if replaced[source] > spec.trial.maxRetries:
            missing = 0  # the platform keeps failing this configuration; stop replacing runs
        wanted += [source] * max(0, missing)
    start = tuple(wanted[: max(0, min(slots, affordable))])
    finished = not live and (not wanted or affordable <= 0)
    return ConfirmationStep(start=start, finished=finished, sources=sources)
