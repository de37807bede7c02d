"""The pruner side of the controller: the assignment's pruner config, and pinning Hyperband.

Workers build the pruner from :class:`~trial_worker.contract.PrunerConfig` alone. For Hyperband
and ASHA with an ``auto`` resource, the controller pins the steps of a full trial in the study
once (it is the only writer), and every worker derives the same brackets from that value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from controller.spec import StudySpec
from controller.strategies.settings import pruner_options
from trial_worker.contract import ATTR_PINNED_STEPS, PrunerConfig

# The same name as trial_worker.pruners.ATTR_PINNED_STEPS (the controller imports only the
# worker's contract); tests/unit/test_strategies_pruners.py keeps the two equal.
AUTO_RESOURCE_PRUNERS = {"hyperband": "max_resource", "asha": "min_resource"}


def pruner_config(spec: StudySpec, name: str) -> PrunerConfig:
    """The pruner ``name`` with ``strategy.prunerSettings`` (when written for it) as plain kwargs."""
    explicit = spec.strategy.prunerSettings if spec.strategy.pruner == name else {}
    return PrunerConfig(name=name, settings=pruner_options(name, explicit))  # type: ignore[arg-type]


def needs_pinned_steps(config: PrunerConfig) -> bool:
    option = AUTO_RESOURCE_PRUNERS.get(config.name)
    return option is not None and config.settings.get(option, "auto") == "auto"


def pin_steps(
    study: optuna.Study, trials: Sequence[FrozenTrial], config: PrunerConfig, declared: int | None = None
) -> int | None:
    """Pin the steps of a full trial; returns the pinned value (None: not known yet).

    Call it from the single process that asks trials (the runner, the operator). ``declared``
    (``objective.steps``) is pinned before the first trial starts, so every trial is pruned
    from its first report. Without it, the value is Optuna's own ``auto`` rule (largest last
    step + 1 among completed trials), fixed at its first evaluation so later completions cannot
    change the brackets under running trials.
    """
    pinned: Any = study.user_attrs.get(ATTR_PINNED_STEPS)
    if isinstance(pinned, int):
        return pinned
    if not needs_pinned_steps(config):
        return None
    if declared is not None:
        value = declared
    else:
        steps = [t.last_step for t in trials if t.state == TrialState.COMPLETE and t.last_step is not None]
        if not steps:
            return None
        value = max(steps) + 1
    study.set_user_attr(ATTR_PINNED_STEPS, value)
    return value


def reports_intermediate_values(trials: Sequence[FrozenTrial]) -> bool | None:
    """Whether finished trials reported intermediate values; None before any trial finished."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not finished:
        return None
    return any(t.intermediate_values for t in finished)
