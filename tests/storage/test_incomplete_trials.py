"""No trial runs without its parameters: runs that died while asking, and the worker's own refusal.

A run that dies at a write of the ask path (the crash points of controller/crashpoints.py; the
cluster tier kills the controller there for real) leaves a trial half-written. The next run must
fail it as ``incomplete``, ask another in its place and never run one with a missing parameter
or seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from controller.local.runner import LocalRunner, RunOptions
from controller.spec import parse_study_text
from controller.studies import asking
from tests.support.specs import study_document
from trial_worker.contract import (
    ATTR_REASON,
    ATTR_SEED,
    Assignment,
    CommandObjective,
    ExitCode,
    MetricDirection,
)
from trial_worker.run import run_assignment

pytestmark = pytest.mark.storage

XY = {"x": {"type": "float", "low": -5.0, "high": 5.0}, "y": {"type": "float", "low": -5.0, "high": 5.0}}
# float('') fails: a command given an empty placeholder would exit 1 (commandFailed), not run.
SCRIPT = "import sys; x, y = map(float, sys.argv[1:3]); print('loss=' + str((x - 1) ** 2 + y ** 2))"
COMMAND = [sys.executable, "-c", SCRIPT, "{{x}}", "{{y}}"]


def two_parameter_study(max_trials: int) -> dict[str, object]:
    document = study_document(parallelism=1, budget={"maxTrials": max_trials})
    document["spec"]["searchSpace"] = XY  # type: ignore[index]
    document["spec"]["trial"] = {"command": COMMAND, "maxDuration": "60s"}  # type: ignore[index]
    return document


class Crash(BaseException):
    """What SIGKILL would do at a crash point, without killing pytest: nothing after it runs."""


def half_ask(study: optuna.Study, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask a trial as the runner does, and stop dead at ``point``, leaving what a crash leaves."""

    def crash_at(name: str) -> None:
        if name == point:
            raise Crash(point)

    space = parse_study_text(yaml.safe_dump(two_parameter_study(3))).spec.searchSpace
    monkeypatch.setattr(asking, "crash_point", crash_at)
    with pytest.raises(Crash):
        asking.ask_new_trial(study, space, 7)
    monkeypatch.undo()


def test_a_run_after_runs_killed_at_each_write_of_the_ask_path_runs_no_trial_without_params(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three earlier runs died asking: after creating the trial, after its first parameter, and
    before its seed. The next run abandons all three and runs three complete trials."""
    study = optuna.create_study(study_name="test-study", storage=sqlite_url)
    points = ("after-create-trial", "after-param", "before-seed")
    for point in points:
        half_ask(study, point, monkeypatch)
    half = study.get_trials()
    assert [len(t.params) for t in half] == [0, 1, 2]
    assert all(t.state == TrialState.RUNNING and ATTR_SEED not in t.user_attrs for t in half)

    manifest = parse_study_text(yaml.safe_dump(two_parameter_study(3)))
    options = RunOptions(
        storage_url=sqlite_url, workdir=str(tmp_path), log_dir=tmp_path / "logs", show_progress=False
    )
    result = LocalRunner(manifest, options).run()

    trials = optuna.load_study(study_name="test-study", storage=sqlite_url).get_trials()
    abandoned, ran = trials[:3], trials[3:]
    assert all(t.state == TrialState.FAIL and t.user_attrs[ATTR_REASON] == "incomplete" for t in abandoned)
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 3  # the abandoned ones count for nothing
    assert all(set(t.params) == {"x", "y"} and ATTR_SEED in t.user_attrs for t in ran)
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 3
    assert result.summary.complete == 3 and result.summary.failed == 0


def assignment_for(storage_url: str, number: int, active: list[str] | None) -> Assignment:
    return Assignment(
        storage_url=storage_url,
        study_name="bare",
        trial_number=number,
        objective=CommandObjective(argv=[sys.executable, "-c", "open('ran', 'w'); print('loss=1')", "{{x}}"]),
        metrics=[MetricDirection(name="loss", direction="minimize")],
        seed=1,
        max_duration_s=60,
        active_params=active,
    )


@pytest.mark.parametrize("active", [["x"], None], ids=["declared-active", "older-assignment"])
def test_the_worker_refuses_a_command_that_would_get_an_empty_placeholder(
    active: list[str] | None, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="bare", storage=sqlite_url)
    trial = study.ask()  # RUNNING, no parameters: what a crash while asking leaves
    report = run_assignment(assignment_for(sqlite_url, trial.number, active))
    assert report.state == "FAIL" and report.exit_code == ExitCode.INCOMPLETE
    assert "no value for x" in (report.reason or "") and "empty placeholder" in (report.reason or "")
    stored = study.get_trials()[0]
    assert stored.state == TrialState.FAIL and stored.user_attrs[ATTR_REASON] == "incomplete"
    assert not (tmp_path / "ran").exists()  # the command never started


def test_an_inactive_conditional_parameter_may_still_be_empty(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="bare", storage=sqlite_url)
    trial = study.ask()
    report = run_assignment(assignment_for(sqlite_url, trial.number, active=[]))  # x does not apply
    assert report.state == "COMPLETE"
    assert (tmp_path / "ran").exists()
