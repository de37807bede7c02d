"""Trials queued behind a busy local worker: asked ahead, started (and timed) when the worker claims
them, never taken for an enqueued warm-start trial, never run once failed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from controller.spec import FloatParam
from controller.studies.asking import ask_new_trial, queue_for_worker
from controller.studies.observe import fail_trial, observe_trials
from controller.studies.storage import create_or_load_study, open_storage
from tests.conftest import REPO_ROOT
from tests.storage.test_local_runner import run_study, trials_of
from tests.support.specs import study_document
from trial_worker.contract import (
    ATTR_QUEUED,
    Assignment,
    ExitCode,
    MetricDirection,
    PythonObjective,
)
from trial_worker.run import run_assignment

pytestmark = pytest.mark.storage
SPACE = {"x": FloatParam(type="float", low=-10.0, high=10.0)}


def new_study(storage_url: str) -> optuna.Study:
    return create_or_load_study(open_storage(storage_url), "queued", ["minimize"])


def assignment(storage_url: str, number: int) -> Assignment:
    return Assignment(
        storage_url=storage_url,
        study_name="queued",
        trial_number=number,
        objective=PythonObjective(entry="tests.support.objectives:quadratic"),
        metrics=[MetricDirection(name="loss", direction="minimize")],
        seed=1,
        max_duration_s=60,
        workdir=str(REPO_ROOT),
        queued=True,
    )


def test_a_queued_trial_is_timed_from_when_its_worker_claims_it(storage_url: str) -> None:
    study = new_study(storage_url)
    trial = ask_new_trial(study, SPACE, study_seed=3)
    queue_for_worker(study, trial)
    _, views = observe_trials(study)
    assert [v.state for v in views] == ["QUEUED"]
    waited_until = time.time()
    time.sleep(1.0)  # the worker is busy with its current trial

    report = run_assignment(assignment(storage_url, trial.number))

    done = study._storage.get_trial(trial._trial_id)
    assert report.exit_code == ExitCode.TOLD and done.state == TrialState.COMPLETE
    assert done.datetime_start is not None and done.datetime_start.timestamp() >= waited_until + 0.9
    assert done.value == (done.params["x"] - 2.0) ** 2


def test_asking_takes_enqueued_trials_but_never_a_queued_one(storage_url: str) -> None:
    study = new_study(storage_url)
    parked = ask_new_trial(study, SPACE, study_seed=3)
    queue_for_worker(study, parked)
    study.enqueue_trial({"x": 1.5})  # a warm-start configuration, WAITING too

    first = ask_new_trial(study, SPACE, study_seed=3)
    second = ask_new_trial(study, SPACE, study_seed=3)

    assert first.params == {"x": 1.5}  # the enqueued one is taken first, as Study.ask would
    assert second.number not in (parked.number, first.number)
    stored = study._storage.get_trial(parked._trial_id)
    assert stored.state == TrialState.WAITING and stored.user_attrs[ATTR_QUEUED] is True


def test_a_failed_queued_trial_is_never_run_by_its_worker(storage_url: str) -> None:
    study = new_study(storage_url)
    trial = ask_new_trial(study, SPACE, study_seed=3)
    queue_for_worker(study, trial)

    assert fail_trial(study, trial.number, "lost", "its worker was gone")
    report = run_assignment(assignment(storage_url, trial.number))

    stored = study._storage.get_trial(trial._trial_id)
    assert report.exit_code == ExitCode.NOT_RUNNING
    assert stored.state == TrialState.FAIL and stored.user_attrs["tunefleet.reason"] == "lost"
    assert stored.value is None


def run_sleeping_trials(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: str, count: int
) -> tuple[Any, list[optuna.trial.FrozenTrial]]:
    """``count`` trials that each sleep ``seconds``, at parallelism 2: the run's result and its trials."""
    monkeypatch.setenv("TUNEFLEET_TEST_SLEEP", seconds)
    document = study_document(
        trial={"python": "tests.support.objectives:sleeps", "maxDuration": "60s"},
        budget={"maxTrials": count},
        parallelism=2,
    )
    result = run_study(document, storage_url, tmp_path)
    return result, trials_of(storage_url)


def test_short_trials_are_queued_ahead_and_keep_their_own_durations(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 s trials at parallelism 2: once a few have finished, each busy worker gets its next trial
    ahead. A queued trial's duration is its own run, not its wait behind the current one."""
    result, trials = run_sleeping_trials(sqlite_url, tmp_path, monkeypatch, seconds="1", count=12)
    assert result.summary.complete == 12
    assert sorted(t.number for t in trials) == list(range(12))
    queued = [t for t in trials if t.user_attrs.get(ATTR_QUEUED)]
    assert len(queued) >= 4  # prefetch engaged after the first few trials
    assert all(trial.state == TrialState.COMPLETE for trial in trials)
    # A queued trial waited about 1 s behind its worker's current one: counted from the ask it
    # would last 2 s or more; counted from its own start it lasts its 1 s sleep. (Unqueued
    # trials also count their worker's start-up, which a loaded machine stretches.)
    for trial in queued:
        assert trial.duration is not None and trial.duration.total_seconds() < 1.8, trial.number


def test_very_short_trials_are_asked_two_ahead_and_each_runs_once(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trials of 20 ms, shorter than asking one: the runner asks two ahead of each busy worker
    (it says so), and every trial still runs exactly once, timed from its own start. (Which
    worker gets a queued trial is tested without processes in tests/unit/test_local_prefetch.py.)"""
    result, trials = run_sleeping_trials(storage_url, tmp_path, monkeypatch, seconds="0.02", count=40)
    assert result.summary.complete == 40
    assert sorted(t.number for t in trials) == list(range(40))
    assert all(trial.state == TrialState.COMPLETE for trial in trials)
    queued = [t for t in trials if t.user_attrs.get(ATTR_QUEUED)]
    assert len(queued) >= 10
    for trial in queued:  # its own 20 ms run, not the wait behind the trials before it
        assert trial.duration is not None and trial.duration.total_seconds() < 1.0, trial.number
    logged = capsys.readouterr()
    text = logged.out + logged.err
    assert "trials asked ahead of each busy worker" in text
    assert "ahead=2" in text or '"ahead": 2' in text, text


def test_a_queued_trial_whose_worker_dies_moves_to_another_worker(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUNEFLEET_TEST_SLEEP", "0.3")
    monkeypatch.setenv("TUNEFLEET_TEST_KILL_TRIAL", "6")
    document = study_document(
        trial={"python": "tests.support.objectives:sleeps_then_killed_once", "maxRetries": 1},
        budget={"maxTrials": 12},
        parallelism=2,
    )
    result = run_study(document, storage_url, tmp_path)
    trials = trials_of(storage_url)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # Only the trial whose worker died failed (and was retried); whatever was queued behind it ran.
    assert [(t.number, t.user_attrs["tunefleet.reason"]) for t in failed] == [(6, "killed")]
    assert result.summary.complete == 12
    logged = capsys.readouterr()  # structlog writes to stdout or stderr, as configured earlier
    assert "a queued trial moved to another worker" in logged.out + logged.err
