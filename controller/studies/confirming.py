"""Confirmation runs in the study storage: which trials are reruns, and starting a new one.

The planner (:mod:`controller.planner.confirmation`) decides *which* configurations to rerun;
this module does the storage side for every process that asks trials (the local runner and the
cluster reconciler), so both mark reruns the same way: trial user attributes
``tunefleet.kind = "confirm"`` and ``tunefleet.confirm_of = <source trial number>``, a fresh
seed, and no pruner (a confirmation run measures the full value).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from controller.planner.confirmation import ATTR_CONFIRM_OF, CONFIRM_KIND
from controller.studies.asking import start_running_copy, trial_seed
from trial_worker.contract import ATTR_KIND, ATTR_SEED, PrunerConfig


def confirmation_sources(trials: Iterable[FrozenTrial]) -> dict[int, int]:
    """Confirmation trial number -> the search trial whose configuration it repeats."""
    return {
        t.number: int(t.user_attrs[ATTR_CONFIRM_OF])
        for t in trials
        if t.user_attrs.get(ATTR_KIND) == CONFIRM_KIND and ATTR_CONFIRM_OF in t.user_attrs
    }


def is_confirmation(user_attrs: Mapping[str, Any]) -> bool:
    return user_attrs.get(ATTR_KIND) == CONFIRM_KIND


def pruner_for(user_attrs: Mapping[str, Any], search_pruner: PrunerConfig) -> PrunerConfig:
    """The pruner a trial's worker builds: none for a confirmation run, the study's otherwise."""
    return PrunerConfig() if is_confirmation(user_attrs) else search_pruner


def start_confirmation(study: optuna.Study, source: FrozenTrial, study_seed: int) -> optuna.Trial:
    """A RUNNING trial with ``source``'s params, marked as a confirmation run, with its own seed."""
    trial = start_running_copy(study, source, {ATTR_KIND: CONFIRM_KIND, ATTR_CONFIRM_OF: source.number})
    trial.set_user_attr(ATTR_SEED, trial_seed(study_seed, trial.number))
    return trial
