"""New trials: asking the sampler over the declared space, and retries with the same params.

Asking writes a trial in steps: the trial (RUNNING), each parameter, then its seed. Until the
seed is written the trial is not startable (:func:`missing_for_start`): a process that died
in between leaves a trial no one may run, which the next one fails as ``incomplete`` (it never
ran, so it counts towards nothing) and asks anew.
"""

from __future__ import annotations

import datetime
import hashlib
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from controller.crashpoints import crash_point
from controller.planner.segments import ATTR_SEGMENT
from controller.spec import CategoricalParam, FloatParam, IntParam, ordered_parameters
from controller.strategies.reseeding import reseed_for_trial
from controller.studies.reading import AskingStorage
from trial_worker.contract import ATTR_ATTEMPT, ATTR_KIND, ATTR_QUEUED, ATTR_RETRY_OF, ATTR_SEED, ExitCode

Space = dict[str, FloatParam | IntParam | CategoricalParam]
INCOMPLETE_REASON = ExitCode.INCOMPLETE.reason


def distribution_of(param: FloatParam | IntParam | CategoricalParam) -> BaseDistribution:
    """The Optuna distribution a declared parameter samples from."""
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntParam):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return CategoricalDistribution(param.choices)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A per-trial seed derived from the study seed: distinct per trial, stable across reruns."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def ask_new_trial(study: optuna.Study, space: Space, study_seed: int) -> optuna.Trial:
    """Ask the sampler for a trial and sample every declared parameter whose condition holds.

    Parameters are suggested parents-first, so a conditional parameter sees the values it
    depends on; the sampler learns the conditional structure from which ones appear. The seed
    is written last: it marks the trial complete. The study's trials are read once for the
    whole ask when its storage allows (``reading.AskingStorage``), not once per sampler call.
    """
    with _one_read(study):
        trial = _ask(study, study_seed)
        crash_point("after-create-trial")  # test hooks, see controller/crashpoints.py
        chosen: dict[str, Any] = {}
        for name in ordered_parameters(space):
            param = space[name]
            if not param.active_given(chosen):
                continue
            chosen[name] = _suggest(trial, name, param)
            crash_point("after-param")
    crash_point("before-seed")
    if ATTR_SEED not in trial.user_attrs:
        trial.set_user_attr(ATTR_SEED, trial_seed(study_seed, trial.number))
    return trial


def _one_read(study: optuna.Study) -> AbstractContextManager[None]:
    storage = study._storage
    return storage.one_read() if isinstance(storage, AskingStorage) else nullcontext()


def active_parameters(space: Space, chosen: dict[str, Any]) -> list[str]:
    """The declared parameters that apply given the values ``chosen``, parents first."""
    active: dict[str, Any] = {}
    for name in ordered_parameters(space):
        if space[name].active_given(active):
            active[name] = chosen.get(name)
    return list(active)


def missing_for_start(trial: FrozenTrial | optuna.Trial, space: Space) -> list[str]:
    """What the trial lacks before it may run: parameters that apply to it, and ``seed``."""
    params = trial.params
    missing = [name for name in active_parameters(space, params) if name not in params]
    if ATTR_SEED not in trial.user_attrs:
        missing.append("seed")
    return missing


def abandon_incomplete(study: optuna.Study, trial: FrozenTrial, missing: list[str]) -> bool:
    """Fail a trial whose asking never finished as ``incomplete``; False if it had finished.

    A warm-start configuration it had taken is enqueued again, so it is not lost with it.
    """
    from controller.studies.observe import fail_trial

    detail = (
        f"never started: {', '.join(missing)} never written (the process asking it stopped); "
        "a new trial is asked in its place"
    )
    if not fail_trial(study, trial.number, INCOMPLETE_REASON, detail):
        return False
    fixed = trial.system_attrs.get("fixed_params")
    if fixed:
        kind = {k: v for k, v in trial.user_attrs.items() if k == ATTR_KIND}
        study.enqueue_trial(dict(fixed), user_attrs=kind)
    return True


def _ask(study: optuna.Study, study_seed: int) -> optuna.Trial:
    """``Study.ask``, except that trials queued for a busy worker stay with it, and the sampler
    draws for this trial from states seeded by (study seed, trial number), not by the process.

    ``Study.ask`` takes the first WAITING trial; queued trials are WAITING too (so their start time
    is stamped when their worker claims them), so only the enqueued ones (warm start) are taken.
    """
    study._thread_local.cached_all_trials = None  # as Study.ask does: samplers read fresh trials
    storage = study._storage
    for waiting in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if waiting.user_attrs.get(ATTR_QUEUED):
            continue
        try:
            if storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return _sampled_trial(study, waiting._trial_id, waiting.number, study_seed)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process took and finished it
    trial_id = storage.create_new_trial(study._study_id)
    return _sampled_trial(study, trial_id, storage.get_trial_number_from_id(trial_id), study_seed)


def _sampled_trial(study: optuna.Study, trial_id: int, number: int, study_seed: int) -> optuna.Trial:
    # Before the Trial exists: its constructor already calls the sampler (before_trial).
    reseed_for_trial(study.sampler, study_seed, number)
    return optuna.Trial(study, trial_id)


def queue_for_worker(study: optuna.Study, trial: optuna.Trial) -> None:
    """Park an asked trial (RUNNING) as WAITING until its busy worker claims it.

    The worker's claim (WAITING -> RUNNING) stamps the trial's start, so its duration is its own
    run, not the wait. The mark keeps :func:`_ask` and the planner from taking it for an
    enqueued warm-start trial.
    """
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, ATTR_QUEUED, True)
    storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)


def _suggest(trial: optuna.Trial, name: str, param: FloatParam | IntParam | CategoricalParam) -> Any:
    if isinstance(param, FloatParam):
        return trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntParam):
        return trial.suggest_int(name, param.low, param.high, log=param.log, step=param.step)
    return trial.suggest_categorical(name, param.choices)


def start_retry(study: optuna.Study, failed: FrozenTrial) -> optuna.Trial:
    """A new RUNNING trial with the failed trial's params, seed and a link back to it.

    Created directly in the storage (not enqueued) so it cannot be confused with waiting
    warm-start configurations. A PBT segment keeps its record, so it resumes the same checkpoint.
    """
    root = failed.user_attrs.get(ATTR_RETRY_OF, failed.number)
    attempt = int(failed.user_attrs.get(ATTR_ATTEMPT, 0)) + 1
    user_attrs = {
        ATTR_RETRY_OF: root,
        ATTR_ATTEMPT: attempt,
        ATTR_SEED: failed.user_attrs.get(ATTR_SEED, 0),
    }
    if ATTR_SEGMENT in failed.user_attrs:
        user_attrs[ATTR_SEGMENT] = failed.user_attrs[ATTR_SEGMENT]
    return start_running_copy(study, failed, user_attrs)


def start_running_copy(study: optuna.Study, source: FrozenTrial, user_attrs: dict[str, Any]) -> optuna.Trial:
    """A new RUNNING trial with ``source``'s params and the given attributes, created directly in
    the storage: no sampler is asked and no waiting (warm-start) trial is consumed."""
    return start_running_with(study, dict(source.params), dict(source.distributions), user_attrs)


def start_running_with(
    study: optuna.Study,
    params: dict[str, Any],
    distributions: dict[str, BaseDistribution],
    user_attrs: dict[str, Any],
) -> optuna.Trial:
    """A new RUNNING trial with exactly these params and attributes, created in the storage."""
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params=params,
        distributions=distributions,
        user_attrs=user_attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return optuna.Trial(study, trial_id)
