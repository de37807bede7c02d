"""Running one trial: attach, seed, run the objective, tell the outcome."""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study._tell import _tell_with_warning
from optuna.trial import TrialState

from trial_worker import checkpoints
from trial_worker.checkpoints import CheckpointNotSaved, CheckpointUnavailable
from trial_worker.command import RunningCommand, run_command, unfilled_placeholders
from trial_worker.contract import (
    ATTR_DETAIL,
    ATTR_EXIT_CODE,
    ATTR_GPU_MODEL,
    ATTR_REASON,
    CHECKPOINT_UNREADABLE_EXIT,
    SEGMENT_PLACEHOLDERS,
    Assignment,
    CommandObjective,
    ExitCode,
    TrialReport,
)
from trial_worker.pruners import build_pruner
from trial_worker.seeding import gpu_model, seed_everything
from trial_worker.storage import claim_trial, load_trial, with_retries

TRACEBACK_TAIL_CHARS = 4000
CONSTRAINTS_PREFIX = "constraints:"  # trial.set_constraint's system attributes, read by Optuna 5's samplers


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    exit_code: ExitCode
    values: list[float] | None = None
    message: str | None = None
    detail: str | None = None
    constraints: dict[str, float] | None = None


def run_assignment(assignment: Assignment) -> TrialReport:
    """Run the assigned trial to an outcome stored in the study; never raises for trial errors."""
    started = time.monotonic()
    if assignment.queued:
        try:
            claimed = with_retries(lambda: claim_trial(assignment))
        except Exception as exc:  # noqa: BLE001
            return _report(assignment, "FAIL", ExitCode.STORAGE_UNAVAILABLE, f"cannot claim: {exc}", started)
        if not claimed:
            gone = "it was no longer waiting for this worker"
            return _report(assignment, "FAIL", ExitCode.NOT_RUNNING, gone, started)
    try:
        study, trial, state = with_retries(lambda: load_trial(assignment, build_pruner(assignment.pruner)))
    except Exception as exc:  # noqa: BLE001 - any storage failure is an infrastructure failure
        return _report(assignment, "FAIL", ExitCode.STORAGE_UNAVAILABLE, f"cannot attach: {exc}", started)
    if state != TrialState.RUNNING:
        return _report(assignment, "FAIL", ExitCode.NOT_RUNNING, f"trial is {state.name}", started)

    refusal = _incomplete(assignment, trial.params)
    if refusal is not None:
        outcome = refusal
    else:
        watchdog = _Watchdog(assignment, study, trial)
        watchdog.start()
        try:
            outcome = _run_with_checkpoints(assignment, trial)
        finally:
            watchdog.cancel()
    if outcome.state == TrialState.FAIL:
        _say_why(assignment, outcome)
    try:
        with_retries(lambda: _tell(study, trial, outcome))
    except Exception as exc:  # noqa: BLE001
        # The result could not be stored: exit as an infrastructure failure so the trial is retried
        # with the same params rather than silently dropped.
        return _report(
            assignment, "FAIL", ExitCode.STORAGE_UNAVAILABLE, f"cannot store the outcome: {exc}", started
        )
    return _report(assignment, outcome.state.name, outcome.exit_code, outcome.message, started)


def _say_why(assignment: Assignment, outcome: Outcome) -> None:
    """The failure in the trial's own log (its pod's log, its local log file), traceback included."""
    print(
        f"tunefleet-worker: trial {assignment.trial_number} failed with {outcome.exit_code.reason}: "
        f"{outcome.message or ''}",
        file=sys.stderr,
    )
    if outcome.detail:
        print(outcome.detail.rstrip(), file=sys.stderr)
    sys.stderr.flush()


def _incomplete(assignment: Assignment, params: dict[str, Any]) -> Outcome | None:
    """Refuse a trial that lacks a parameter it needs, rather than run it with a hole in it."""
    missing = [name for name in assignment.active_params or [] if name not in params]
    if isinstance(assignment.objective, CommandObjective):
        unfilled = unfilled_placeholders(assignment.objective.argv, params, assignment.active_params)
        # a PBT segment's own placeholders are filled when its checkpoints are known, not from params
        missing += [n for n in unfilled if n not in missing and n not in SEGMENT_PLACEHOLDERS]
    if not missing:
        return None
    names = ", ".join(missing)
    message = (
        f"refused to run trial {assignment.trial_number}: it has no value for {names}, so "
        + ("its command would get an empty placeholder" if isinstance(assignment.objective, CommandObjective)
           else "the objective would run without it")
        + " (its parameters were never all written)"
    )
    return Outcome(TrialState.FAIL, ExitCode.INCOMPLETE, message=message)


def _report(
    assignment: Assignment, state: str, code: ExitCode, reason: str | None, started: float
) -> TrialReport:
    return TrialReport(
        trial_number=assignment.trial_number,
        state=state,  # type: ignore[arg-type]
        exit_code=int(code),
        reason=reason,
        duration_s=time.monotonic() - started,
    )


def _run_with_checkpoints(assignment: Assignment, trial: optuna.Trial) -> Outcome:
    """A PBT segment: its checkpoint checked first, its saved state promoted once it completed."""
    if assignment.segment is None:
        return _run_objective(assignment, trial, None)
    try:
        current = checkpoints.prepare(assignment.segment)
    except CheckpointUnavailable as exc:
        return Outcome(TrialState.FAIL, ExitCode.CHECKPOINT_UNAVAILABLE, message=str(exc))
    except CheckpointNotSaved as exc:
        return Outcome(TrialState.FAIL, ExitCode.CHECKPOINT_NOT_SAVED, message=str(exc))
    with checkpoints.active(trial.number, current):
        outcome = _run_objective(assignment, trial, current)
    if outcome.state != TrialState.COMPLETE:
        checkpoints.discard(current)
        return outcome
    try:
        checkpoints.promote(current)
    except CheckpointNotSaved as exc:
        return Outcome(TrialState.FAIL, ExitCode.CHECKPOINT_NOT_SAVED, message=str(exc))
    return outcome


def _run_objective(
    assignment: Assignment, trial: optuna.Trial, segment: checkpoints.Segment | None
) -> Outcome:
    metric_names = [m.name for m in assignment.metrics]
    if isinstance(assignment.objective, CommandObjective):
        seed_everything(assignment.seed, assignment.deterministic)
        env = {f"TUNEFLEET_PARAM_{k.upper()}": str(v) for k, v in trial.params.items()}
        env["TUNEFLEET_TRIAL_NUMBER"] = str(trial.number)
        placeholders: dict[str, str] = {}
        if segment is not None:
            env.update(checkpoints.command_env(segment))
            placeholders = checkpoints.command_values(segment)
        result = run_command(
            trial, assignment.objective.argv, metric_names, assignment.constraints, env, assignment.workdir,
            placeholders=placeholders,
        )
        if result.pruned:
            return Outcome(TrialState.PRUNED, ExitCode.TOLD, message="pruned")
        if segment is not None and result.returncode == CHECKPOINT_UNREADABLE_EXIT:
            return Outcome(
                TrialState.FAIL,
                ExitCode.CHECKPOINT_UNAVAILABLE,
                message=f"the command could not read the checkpoint of member {segment.parent} at "
                f"{segment.load_dir} (it exited with code {CHECKPOINT_UNREADABLE_EXIT})",
            )
        if result.failure is not None:
            return Outcome(TrialState.FAIL, result.failure, message=result.message)
        values = [result.values[name] for name in metric_names]
        constraints = {name: result.values[name] for name in assignment.constraints}
        return _checked(values, len(metric_names), constraints)

    try:
        objective = _import_objective(assignment.objective.entry, assignment.workdir)
    except Exception as exc:  # noqa: BLE001
        return Outcome(
            TrialState.FAIL,
            ExitCode.OBJECTIVE_NOT_FOUND,
            message=f"cannot load {assignment.objective.entry}: {type(exc).__name__}: {exc}",
            detail=_traceback_tail(),
        )
    seed_everything(assignment.seed, assignment.deterministic)
    try:
        returned = objective(trial)
        _record_gpu_model(trial)
    except optuna.TrialPruned:
        return Outcome(TrialState.PRUNED, ExitCode.TOLD, message="pruned")
    except CheckpointUnavailable as exc:
        return Outcome(
            TrialState.FAIL, ExitCode.CHECKPOINT_UNAVAILABLE, message=str(exc), detail=_traceback_tail()
        )
    except Exception as exc:  # noqa: BLE001 - every objective error becomes the trial's reason
        return Outcome(
            TrialState.FAIL,
            ExitCode.OBJECTIVE_RAISED,
            message=f"{type(exc).__name__}: {exc}",
            detail=_traceback_tail(),
        )
    bounds: dict[str, float] = {}
    stored = trial.storage.get_trial_system_attrs(trial._trial_id) if assignment.constraints else {}
    for name in assignment.constraints:
        # trial.set_constraint(name, v) (Optuna 5) or trial.set_user_attr(name, v) both work.
        value = stored.get(CONSTRAINTS_PREFIX + name, trial.user_attrs.get(name))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return Outcome(
                TrialState.FAIL,
                ExitCode.INVALID_VALUE,
                message=f"no value for constraint {name!r}: call trial.set_constraint({name!r}, value)",
            )
        bounds[name] = float(value)
    return _checked(returned, len(metric_names), bounds)


def _checked(returned: Any, expected: int, constraints: dict[str, float]) -> Outcome:
    for name, bound in constraints.items():
        if not math.isfinite(bound):
            return _invalid(f"constraint {name!r} is {bound}; constraint values must be finite")
    if returned is None:
        return _invalid("the objective returned None")
    values: Sequence[Any] = (
        returned if isinstance(returned, Sequence) and not isinstance(returned, str) else [returned]
    )
    if len(values) != expected:
        return _invalid(
            f"the objective returned {len(values)} value(s) but the study has {expected} metric(s)"
        )
    floats: list[float] = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return _invalid(f"the objective returned {value!r}, which is not a number")
        if not math.isfinite(number):
            return _invalid(f"the objective returned {number}")
        floats.append(number)
    return Outcome(TrialState.COMPLETE, ExitCode.TOLD, values=floats, constraints=constraints or None)


def _invalid(message: str) -> Outcome:
    return Outcome(TrialState.FAIL, ExitCode.INVALID_VALUE, message=message)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    storage = study._storage
    if outcome.state == TrialState.FAIL:
        storage.set_trial_user_attr(trial._trial_id, ATTR_REASON, outcome.exit_code.reason)
        storage.set_trial_user_attr(trial._trial_id, ATTR_EXIT_CODE, int(outcome.exit_code))
        if outcome.message or outcome.detail:
            detail = "\n".join(p for p in (outcome.message, outcome.detail) if p)
            storage.set_trial_user_attr(trial._trial_id, ATTR_DETAIL, detail[-TRACEBACK_TAIL_CHARS:])
    for name, bound in (outcome.constraints or {}).items():
        # What trial.set_constraint stores, written directly so a retried tell stays idempotent.
        storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_PREFIX + name, bound)
    # What Study.optimize calls: Study.tell would also read the trial back and deep-copy it, which
    # costs a query per trial. skip_if_finished: a retried tell that already landed changes nothing.
    _tell_with_warning(
        study,
        trial,
        outcome.values if outcome.state == TrialState.COMPLETE else None,
        outcome.state,
        skip_if_finished=True,
        suppress_warning=True,
    )


def _record_gpu_model(trial: optuna.Trial) -> None:
    """Which GPU the objective ran on, for the reproducibility record (torch must be loaded)."""
    model = gpu_model()
    if model is not None:
        trial.set_user_attr(ATTR_GPU_MODEL, model)


def _import_objective(entry: str, workdir: str | None) -> Callable[[optuna.Trial], Any]:
    module_name, function_name = entry.split(":", 1)
    root = workdir or os.getcwd()
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise AttributeError(f"{module_name} has no callable {function_name!r}")
    return function


def _traceback_tail() -> str:
    return traceback.format_exc()[-TRACEBACK_TAIL_CHARS:]


class _Watchdog:
    """Ends the trial as FAIL maxDuration when it outlives its limit, then exits the process."""

    def __init__(self, assignment: Assignment, study: optuna.Study, trial: optuna.Trial) -> None:
        self._timer = threading.Timer(assignment.max_duration_s, self._expire)
        self._timer.daemon = True
        self._study = study
        self._trial = trial
        self._limit = assignment.max_duration_s

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        RunningCommand.terminate(grace_s=2.0)
        outcome = Outcome(
            TrialState.FAIL, ExitCode.MAX_DURATION, message=f"exceeded maxDuration ({self._limit} s)"
        )
        try:
            _tell(self._study, self._trial, outcome)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(ExitCode.MAX_DURATION))
