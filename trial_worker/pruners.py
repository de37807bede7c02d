"""Pruners built from the assignment, identically in every worker.

Hyperband assigns a trial to a bracket by hashing the study name and the trial number, which every
worker computes alike, but only once all workers agree on the brackets, that is on
``max_resource``. Optuna's ``"auto"`` infers it separately in each process from the trials that
happened to be complete when that process first pruned, so two pods could disagree. Here ``auto``
waits for the value the controller pins in the study (user attribute ``ATTR_PINNED_STEPS``: the
steps of the first completed trials, written once, by one process): until then nothing is pruned,
exactly as Optuna does before any trial completes. ASHA's ``min_resource: auto`` is estimated from
the same pinned figure.
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
    if config.name == "hyperband":
        if settings.get("max_resource", "auto") == "auto":
            return PinnedResourcePruner(config.name, settings)
        return optuna.pruners.HyperbandPruner(**settings)
    if config.name == "asha":
        if settings.get("min_resource", "auto") == "auto":
            return PinnedResourcePruner(config.name, settings)
        return optuna.pruners.SuccessiveHalvingPruner(**settings)
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


class PinnedResourcePruner(BasePruner):
    """Hyperband or ASHA whose ``auto`` resource comes from the value pinned in the study."""

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self._name = name
        self._settings = settings
        self._pruner: BasePruner | None = None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._pruner is None:
            steps = study.user_attrs.get(ATTR_PINNED_STEPS)
            if not isinstance(steps, int) or steps < 1:
                return False
            settings = resolved_settings(self._name, self._settings, steps)
            if self._name == "hyperband":
                self._pruner = optuna.pruners.HyperbandPruner(**settings)
            else:
                self._pruner = optuna.pruners.SuccessiveHalvingPruner(**settings)
        return self._pruner.prune(study, trial)
