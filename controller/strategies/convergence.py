"""Stopping on convergence with Optuna's terminator (``strategy.terminator: true``).

``budget.patience`` is counted by the planner itself; the terminator needs a model of the
objective, so the process that observes the study evaluates it and hands the planner a yes/no.
"""

from __future__ import annotations

import warnings

import optuna
import structlog
from optuna.trial import TrialState

TERMINATOR_MIN_TRIALS = 20
"""Optuna's default: the terminator's regret bound means little with fewer completed trials."""

log = structlog.get_logger("tunefleet.strategies")


def terminator_converged(study: optuna.Study, min_trials: int = TERMINATOR_MIN_TRIALS) -> bool:
    """Whether Optuna's terminator judges that more trials cannot improve the study much.

    It compares the regret bound of a Gaussian process fitted to the completed trials with the
    statistical error of the best value (single-objective studies only).
    """
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < min_trials:
        return False
    from optuna.terminator import Terminator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return bool(Terminator(min_n_trials=min_trials).should_terminate(study))
        except (ValueError, RuntimeError) as exc:  # a degenerate fit must not end the study
            log.warning("terminator could not judge the study", study=study.study_name, error=str(exc))
            return False
