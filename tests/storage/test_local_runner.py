"""The local runner against real storage: many workers, resuming, and every kind of failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from controller.local.runner import LocalRunner, RunOptions, RunResult
from controller.planner import StopReason
from controller.spec import parse_study_text
from tests.conftest import REPO_ROOT
from tests.support.specs import study_document

pytestmark = pytest.mark.storage


def run_study(document: dict[str, Any], storage_url: str, tmp_path: Path, **options: Any) -> RunResult:
    manifest = parse_study_text(yaml.safe_dump(document))
    runner = LocalRunner(
        manifest,
        RunOptions(
            storage_url=storage_url,
            workdir=str(REPO_ROOT),
            log_dir=tmp_path / "logs",
            show_progress=False,
            **options,
        ),
    )
    return runner.run()


def trials_of(storage_url: str, name: str = "test-study") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage_url).get_trials()


def test_four_workers_share_one_study_without_losing_a_trial(storage_url: str, tmp_path: Path) -> None:
    document = study_document(parallelism=4, budget={"maxTrials": 100})
    result = run_study(document, storage_url, tmp_path)
    trials = trials_of(storage_url)
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert sorted(t.number for t in trials) == list(range(100))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len(list((tmp_path / "logs").glob("worker-*.log"))) == 4
    assert len(list((tmp_path / "logs").glob("trial-*.log"))) == 100


def test_rerun_resumes_without_losing_or_duplicating(storage_url: str, tmp_path: Path) -> None:
    run_study(study_document(budget={"maxTrials": 6}), storage_url, tmp_path)
    first = {t.number: (t.params, t.value) for t in trials_of(storage_url)}
    again = run_study(study_document(budget={"maxTrials": 6}), storage_url, tmp_path)
    assert again.stop_reason is StopReason.MAX_TRIALS
    assert {t.number: (t.params, t.value) for t in trials_of(storage_url)} == first
    run_study(study_document(budget={"maxTrials": 10}), storage_url, tmp_path)
    grown = trials_of(storage_url)
    assert sorted(t.number for t in grown) == list(range(10))
    assert {t.number: (t.params, t.value) for t in grown if t.number < 6} == first


@pytest.mark.parametrize(
    ("objective", "reason", "detail"),
    [
        ("raises", "objectiveRaised", "RuntimeError: diverged at x="),
        ("returns_nan", "invalidValue", "the objective returned nan"),
        ("returns_wrong_count", "invalidValue", "returned 3 value(s) but the study has 1"),
    ],
)
def test_objective_failures_end_the_trial_with_its_reason(
    sqlite_url: str, tmp_path: Path, objective: str, reason: str, detail: str
) -> None:
    document = study_document(  # returns_wrong_count fails every trial: let all 8 run
        trial={"python": f"tests.support.objectives:{objective}"},
        budget={"maxTrials": 8, "maxFailedTrials": 8},
    )
    result = run_study(document, sqlite_url, tmp_path)
    trials = trials_of(sqlite_url)
    assert result.stop_reason is StopReason.MAX_TRIALS and len(trials) == 8
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the seed should give some failing trials"
    for trial in failed:
        assert trial.user_attrs["tunefleet.reason"] == reason
        assert detail in trial.user_attrs["tunefleet.detail"]
    if objective == "raises":
        assert "Traceback" in failed[0].user_attrs["tunefleet.detail"]
    expected_complete = 0 if objective == "returns_wrong_count" else 8 - len(failed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == expected_complete


def test_objective_failures_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    document = study_document(trial={"python": "tests.support.objectives:raises"}, budget={"maxTrials": 6})
    run_study(document, postgres_url, tmp_path)
    states = {t.state for t in trials_of(postgres_url)}
    assert states == {TrialState.FAIL, TrialState.COMPLETE}


def command_document(*extra: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.support.command_objective", "--x", "{{x}}", *extra]
    # Some of these fail every trial on purpose: a failure budget as large as maxTrials runs them all.
    return study_document(
        trial={"python": None, "command": command}, budget={"maxTrials": 4, "maxFailedTrials": 4}
    )


def test_command_mode_records_exactly_the_printed_values(storage_url: str, tmp_path: Path) -> None:
    run_study(command_document(), storage_url, tmp_path)
    trials = trials_of(storage_url)
    assert len(trials) == 4
    for trial in trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.value == trial.params["x"]
        assert trial.intermediate_values == {s: trial.params["x"] + 3 - s for s in range(3)}
    log = (tmp_path / "logs" / "trial-0.log").read_text()
    assert "step=0 loss=" in log, "the command's output is streamed to the trial log"


def test_command_failures(sqlite_url: str, tmp_path: Path) -> None:
    run_study(command_document("--exit", "1"), sqlite_url, tmp_path)
    for trial in trials_of(sqlite_url):
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["tunefleet.reason"] == "commandFailed"
        assert "exited with code 1" in trial.user_attrs["tunefleet.detail"]


def test_command_without_metric(sqlite_url: str, tmp_path: Path) -> None:
    run_study(command_document("--silent"), sqlite_url, tmp_path)
    for trial in trials_of(sqlite_url):
        assert trial.user_attrs["tunefleet.reason"] == "noMetric"
        assert "no value for loss" in trial.user_attrs["tunefleet.detail"]


def test_max_duration_fails_the_trial_and_the_study_goes_on(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_TEST_SLEEP", "30")
    document = study_document(
        trial={"python": "tests.support.objectives:sleeps", "maxDuration": "2s"}, budget={"maxTrials": 2}
    )
    result = run_study(document, sqlite_url, tmp_path)
    trials = trials_of(sqlite_url)
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert [t.user_attrs["tunefleet.reason"] for t in trials] == ["maxDuration", "maxDuration"]
    assert all(t.duration is not None and t.duration.total_seconds() < 10 for t in trials)


def test_a_killed_worker_is_retried_with_the_same_params(storage_url: str, tmp_path: Path) -> None:
    document = study_document(
        trial={"python": "tests.support.objectives:killed_on_first_attempt", "maxRetries": 1},
        budget={"maxTrials": 4},
    )
    result = run_study(document, storage_url, tmp_path)
    trials = trials_of(storage_url)
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert killed and all(t.user_attrs["tunefleet.reason"] == "killed" for t in killed)
    retries = {t.user_attrs["tunefleet.retry_of"]: t for t in trials if "tunefleet.retry_of" in t.user_attrs}
    for trial in killed:
        assert retries[trial.number].params == trial.params
        assert retries[trial.number].state == TrialState.COMPLETE
    assert result.summary.complete == 4
    assert len([t for t in trials if "tunefleet.retry_of" not in t.user_attrs]) == 4


def test_undeclared_parameters_are_sampled_in_place(sqlite_url: str, tmp_path: Path) -> None:
    document = study_document(
        trial={"python": "tests.support.objectives:define_by_run"}, budget={"maxTrials": 3}
    )
    run_study(document, sqlite_url, tmp_path)
    for trial in trials_of(sqlite_url):
        assert trial.state == TrialState.COMPLETE
        assert 1 <= trial.params["undeclared"] <= 5
        assert trial.value == trial.params["x"] + trial.params["undeclared"]


def test_process_isolation_uses_a_fresh_worker_per_trial(sqlite_url: str, tmp_path: Path) -> None:
    document = study_document(trial={"isolation": "process"}, budget={"maxTrials": 4})
    run_study(document, sqlite_url, tmp_path)
    assert all(t.state == TrialState.COMPLETE for t in trials_of(sqlite_url))
    assert len(list((tmp_path / "logs").glob("worker-*.log"))) == 4


def test_goal_stops_the_study(sqlite_url: str, tmp_path: Path) -> None:
    document = study_document(
        objective={"metrics": [{"name": "loss", "direction": "minimize"}], "goal": 30.0},
        budget={"maxTrials": 50},
        parallelism=1,
    )
    result = run_study(document, sqlite_url, tmp_path)
    assert result.stop_reason is StopReason.GOAL
    assert result.best is not None and result.best.value <= 30.0
    assert len(trials_of(sqlite_url)) < 50


def test_seeded_sequential_runs_repeat_the_same_parameters(tmp_path: Path) -> None:
    document = study_document(
        parallelism=1, strategy={"sampler": "tpe", "seed": 11}, budget={"maxTrials": 12}
    )
    sequences = []
    for attempt in range(2):
        url = f"sqlite:///{tmp_path / f'run{attempt}.db'}"
        run_study(document, url, tmp_path / f"run{attempt}")
        sequences.append([(t.params, t.value) for t in trials_of(url)])
    assert sequences[0] == sequences[1]
