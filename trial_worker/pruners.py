"""Pruners built from the assignment, identically in every worker.

Hyperband assigns a trial to a bracket by hashing the study name and the trial number, which every
worker computes alike, but only once all workers agree on the brackets, that is on
``max_resource``. Optuna's ``"auto"`` infers it separately in each process from the trials that
happened to be complete when that process first pruned, so two pods could disagree. Here ``auto``
waits for the value the controller pins in the study (user attribute ``ATTR_PINNED_STEPS``: the
steps of the first completed trials, written once, by one process): until then nothing is pruned,
exactly as Optuna does before any trial completes. ASHA's ``min_resource: auto`` is estimated from
the same pinned figure.

Successive halving decides only at rung steps (``min_resource * reduction_factor ** k``, offset
by the bracket), yet Optuna's pruner reads the trial's completed rungs from the storage at every
report before it can tell. :class:`RungPruner` remembers the trial's next rung step and answers
"continue" below it without a query, so a trial reporting every epoch pays the storage only at
rungs: the same decisions, far fewer round trips.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from trial_worker.contract import ATTR_PINNED_STEPS, PrunerConfig

"""Study user attribute: steps a full trial reports (the largest last step + 1), pinned once."""


def build_pruner(config: PrunerConfig) -> BasePruner:
    """The pruner named in the assignment, with its settings (already checked by the controller)."""
    settings: dict[str, Any] = dict(config.settings)
    if config.name == "none":
        return optuna.pruners.NopPruner()
    if config.name == "median":
        return optuna.pruners.MedianPruner(**settings)
    if config.name == "percentile":
        settings.setdefault("percentile", 25.0)
        return optuna.pruners.PercentilePruner(**settings)
    if config.name in ("hyperband", "asha"):
        return RungPruner(config.name, settings)
    if config.name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(**settings)
    raise ValueError(f"unknown pruner {config.name!r}")


def resolved_settings(name: str, settings: dict[str, Any], steps: int) -> dict[str, Any]:
    """The ``auto`` resource of Hyperband or ASHA replaced by its value for ``steps``.

    Hyperband: ``max_resource = steps`` (Optuna's auto: largest last step + 1). ASHA:
    ``min_resource = max((steps - 1) // 100, 1)`` (Optuna's auto estimate).
    """
    resolved = dict(settings)
    if name == "hyperband":
        resolved["max_resource"] = steps
    else:
        resolved["min_resource"] = max((steps - 1) // 100, 1)
    return resolved


class RungPruner(BasePruner):
    """Hyperband or ASHA, asked only at the trial's rung steps.

    An ``auto`` resource comes from the value pinned in the study (nothing is pruned until it
    is); an explicit one is used at once.
    """

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self._name = name
        self._settings = settings
        self._pruner: BasePruner | None = None
        self._next_rung: dict[int, int] = {}  # trial number -> the first step that can decide
        resource = "max_resource" if name == "hyperband" else "min_resource"
        if settings.get(resource, "auto") != "auto":
            self._pruner = self._build(settings)

    @property
    def inner(self) -> BasePruner | None:
        """Optuna's pruner, once its resource is known."""
        return self._pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._pruner is None:
            steps = study.user_attrs.get(ATTR_PINNED_STEPS)
            if not isinstance(steps, int) or steps < 1:
                return False
            self._pruner = self._build(resolved_settings(self._name, self._settings, steps))
        step = trial.last_step
        if step is not None and step < self._next_rung.get(trial.number, 0):
            return False  # no rung ends before this step: Optuna's pruner would say the same
        pruned = self._pruner.prune(study, trial)
        if not pruned and step is not None:
            self._next_rung[trial.number] = self._rung_after(study, trial, step)
        return pruned

    def _build(self, settings: dict[str, Any]) -> BasePruner:
        if self._name == "hyperband":
            return optuna.pruners.HyperbandPruner(**settings)
        return optuna.pruners.SuccessiveHalvingPruner(**settings)

    def _rung_after(self, study: optuna.Study, trial: FrozenTrial, step: int) -> int:
        """The first rung step after ``step`` in the trial's bracket (0: unknown, ask every step)."""
        halving = self._pruner
        if isinstance(halving, optuna.pruners.HyperbandPruner):
            if not halving._pruners:
                return 0
            halving = halving._pruners[halving._get_bracket_id(study, trial)]
        if not isinstance(halving, optuna.pruners.SuccessiveHalvingPruner) or halving._min_resource is None:
            return 0
        rung = halving._min_resource * halving._reduction_factor**halving._min_early_stopping_rate
        while rung <= step:
            rung *= halving._reduction_factor
        return int(rung)
