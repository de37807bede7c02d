"""The feasible Pareto set of a multi-objective study.

A trial is feasible when every constraint value it stored (``objective.constraints``, via
``trial.set_constraint``) is <= 0; infeasible trials never enter the set, whatever their values.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def is_feasible(trial: FrozenTrial, constraint_names: Sequence[str] = ()) -> bool:
    """All stored constraints <= 0, and every named constraint present."""
    constraints = trial.constraints
    if any(name not in constraints for name in constraint_names):
        return False
    return all(value <= 0.0 for value in constraints.values())


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[StudyDirection]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in at least one."""
    better = False
    for x, y, direction in zip(a, b, directions, strict=True):
        if direction == StudyDirection.MAXIMIZE:
            x, y = -x, -y
        if x > y:
            return False
        better = better or x < y
    return better


def feasible_pareto_front(
    study: optuna.Study, constraint_names: Sequence[str] = (), trials: Sequence[FrozenTrial] | None = None
) -> list[FrozenTrial]:
    """The non-dominated feasible COMPLETE trials, by trial number.

    Trials with identical values are all kept (none dominates another).
    """
    pool = trials if trials is not None else study.get_trials(deepcopy=False)
    candidates = [
        t
        for t in pool
        if t.state == TrialState.COMPLETE and t.values is not None and is_feasible(t, constraint_names)
    ]
    directions = study.directions
    front = [
        t for t in candidates
        if not any(dominates(o.values, t.values, directions) for o in candidates if o is not t)
    ]
    return sorted(front, key=lambda t: t.number)
