"""Reading the study's trials as planner values, and failing trials whose work is gone."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from controller.planner import QUEUED, TrialView
from controller.planner.segments import ATTR_SEGMENT, Segment
from controller.studies.asking import Space, missing_for_start
from trial_worker.contract import ATTR_ATTEMPT, ATTR_DETAIL, ATTR_QUEUED, ATTR_REASON, ATTR_RETRY_OF


def trial_view(trial: FrozenTrial, space: Space | None = None) -> TrialView:
    """The planner's view of a trial; with ``space``, whether a live one may run at all."""
    root = trial.user_attrs.get(ATTR_RETRY_OF)
    unfinished = trial.state == TrialState.RUNNING or _is_queued(trial)
    return TrialView(
        number=trial.number,
        state=QUEUED if _is_queued(trial) else trial.state.name,
        values=tuple(trial.values) if trial.values is not None else None,
        params=trial.params,
        reason=trial.user_attrs.get(ATTR_REASON),
        root=int(root) if root is not None else None,
        attempt=int(trial.user_attrs.get(ATTR_ATTEMPT, 0)),
        segment=Segment.from_attr(trial.user_attrs.get(ATTR_SEGMENT)),
        startable=not (space is not None and unfinished and missing_for_start(trial, space)),
    )


def _is_queued(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.WAITING and bool(trial.user_attrs.get(ATTR_QUEUED))


def observe_trials(
    study: optuna.Study, space: Space | None = None
) -> tuple[list[FrozenTrial], tuple[TrialView, ...]]:
    trials = study.get_trials(deepcopy=False)
    return trials, tuple(trial_view(t, space) for t in trials)


def fail_trial(study: optuna.Study, number: int, reason: str, detail: str | None = None) -> bool:
    """Mark a RUNNING (or queued) trial FAIL with ``reason``; False if it had already finished."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    trial = storage.get_trial(trial_id)
    if _is_queued(trial):
        # Claim it first, as its worker would: whoever claims it owns it, and it never ran.
        try:
            storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
    elif trial.state != TrialState.RUNNING:
        return False
    try:
        storage.set_trial_user_attr(trial_id, ATTR_REASON, reason)
        if detail:
            storage.set_trial_user_attr(trial_id, ATTR_DETAIL, detail)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # the worker told its outcome in the meantime
    return True
