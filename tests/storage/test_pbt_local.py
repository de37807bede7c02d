"""Population-based training run locally: real PyTorch weights move between members through
checkpoints, on SQLite and PostgreSQL; a killed segment resumes from its checkpoint; an
unreadable checkpoint is retried from the last good one; the export shows the lineage and the
winning schedule; command-mode segments get their checkpoints through placeholders and env."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from controller.export import write_export
from controller.local.runner import LocalRunner, RunOptions, RunResult
from controller.planner import StopReason
from controller.planner.segments import ATTR_SEGMENT, Segment
from controller.spec import parse_study_text
from tests.conftest import REPO_ROOT
from trial_worker.contract import ATTR_DETAIL, ATTR_REASON, ATTR_RETRY_OF

pytestmark = pytest.mark.storage


# Small on purpose (CI time): 3 members x 2 segments still exploit, and keep every fault apart.
POPULATION, STEPS, INTERVAL = 3, 4, 2


def pbt_document(
    objective: str, *, population: int = POPULATION, steps: int = STEPS, interval: int = INTERVAL
) -> dict[str, Any]:
    return {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": "pbt-local"},
        "spec": {
            "objective": {"metrics": [{"name": "loss", "direction": "minimize"}], "steps": steps},
            "searchSpace": {"lr": {"type": "float", "low": 0.001, "high": 0.3, "log": True, "mutable": True}},
            "strategy": {
                "sampler": "pbt",
                "seed": 5,
                "settings": {"population": population, "interval": interval},
            },
            "parallelism": 1,  # one segment at a time: the same decisions on every run
            "trial": {
                "python": f"tests.support.pbt_objectives:{objective}",
                "maxDuration": "60s",
                "maxRetries": 2,
            },
        },
    }


def run(document: dict[str, Any], storage_url: str, tmp_path: Path) -> RunResult:
    manifest = parse_study_text(yaml.safe_dump(document))
    options = RunOptions(
        storage_url=storage_url,
        workdir=str(REPO_ROOT),
        log_dir=tmp_path / "logs",
        show_progress=False,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    return LocalRunner(manifest, options).run()


def segments(storage_url: str) -> list[tuple[FrozenTrial, Segment]]:
    trials = optuna.load_study(study_name="pbt-local", storage=storage_url).get_trials()
    found = []
    for trial in trials:
        segment = Segment.from_attr(trial.user_attrs.get(ATTR_SEGMENT))
        assert segment is not None, f"trial {trial.number} is no segment"
        found.append((trial, segment))
    return found


def test_real_pytorch_weights_move_between_members(storage_url: str, tmp_path: Path) -> None:
    result = run(pbt_document("torch_regression"), storage_url, tmp_path)
    assert result.stop_reason is StopReason.POPULATION_TRAINED
    found = segments(storage_url)
    by_number = {t.number: t for t, _ in found}
    assert all(t.state == TrialState.COMPLETE for t, _ in found)

    # Each resumed segment loaded exactly the weights the segment it names saved, and some of
    # those belong to another member.
    for trial, segment in found:
        if segment.load is None:
            assert trial.user_attrs["loaded"] is None
            continue
        source = by_number[segment.load]
        assert trial.user_attrs["loaded"] == source.user_attrs["saved"]
        assert Segment.from_attr(source.user_attrs[ATTR_SEGMENT]).member == segment.parent  # type: ignore[union-attr]
    assert any(s.decision == "exploit" and s.parent != s.member for _, s in found)
    for member in range(POPULATION):  # each trained every step
        assert max(s.end for _, s in found if s.member == member) == STEPS
    assert (tmp_path / "checkpoints" / "member-0").is_dir()


def test_a_killed_segment_resumes_its_checkpoint_an_unreadable_one_the_last_good_and_the_export_shows_it(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_TEST_KILL_SEGMENT", "0:1")  # its worker dies mid-segment, once
    monkeypatch.setenv("TUNEFLEET_TEST_MARKER_DIR", str(tmp_path))
    monkeypatch.setenv("TUNEFLEET_TEST_CORRUPT_SEGMENT", "2:0")  # saves garbage, not its state
    result = run(pbt_document("pure_python"), sqlite_url, tmp_path)
    assert result.stop_reason is StopReason.POPULATION_TRAINED
    found = segments(sqlite_url)
    by_number = {t.number: t for t, _ in found}
    completed = [(t, s) for t, s in found if t.state == TrialState.COMPLETE]

    # The killed worker's segment was retried with the same record: from the same checkpoint.
    killed = int((tmp_path / "killed-0:1").read_text())
    assert by_number[killed].state == TrialState.FAIL
    assert by_number[killed].user_attrs[ATTR_REASON] == "killed"
    retry = next(t for t in by_number.values() if t.user_attrs.get(ATTR_RETRY_OF) == killed)
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs[ATTR_SEGMENT] == by_number[killed].user_attrs[ATTR_SEGMENT]
    assert retry.user_attrs["loaded"] == by_number[killed].user_attrs["loaded"] is not None

    # The garbage checkpoint failed whoever tried it (its own member and one that exploited it),
    # with the reason; each recovered from its own last good checkpoint (or afresh, having none),
    # and no completed segment ever resumed the garbage.
    garbage = next(t.number for t, s in found if (s.member, s.index) == (2, 0))
    unreadable = [(t, s) for t, s in found if t.user_attrs.get(ATTR_REASON) == "checkpointUnavailable"]
    assert {s.member for _, s in unreadable} >= {2} and len(unreadable) >= 2
    assert all(s.load == garbage for _, s in unreadable)
    assert "cannot be read" in unreadable[0][0].user_attrs[ATTR_DETAIL]
    for _, segment in unreadable:
        after = [s for _, s in found if s.member == segment.member and s.index == segment.index + 1]
        assert after and after[0].decision == "recover" and after[0].load != garbage
    assert all(s.load != garbage for _, s in completed)
    for trial, segment in completed:  # everything else resumed exactly what it names
        if segment.load is not None:
            assert trial.user_attrs["loaded"] == by_number[segment.load].user_attrs["saved"]
    for member in range(POPULATION):
        assert max(s.end for _, s in completed if s.member == member) == STEPS

    # The export: the best model's schedule, the lineage in trials.csv, both plots in the report.
    export = write_export(sqlite_url, "pbt-local", tmp_path / "out")
    best = json.loads((tmp_path / "out" / "best_config.json").read_text())
    schedule = best["schedule"]
    assert schedule[0]["steps"][0] == 0 and schedule[-1]["trial"] == best["trial"]
    assert all(a["steps"][1] == b["steps"][0] for a, b in itertools.pairwise(schedule))
    assert all(set(entry["params"]) == {"lr"} for entry in schedule)
    with (tmp_path / "out" / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"member", "parent_member", "loaded_trial", "step_start", "step_end", "decision"} <= set(rows[0])
    assert {row["decision"] for row in rows} >= {"start", "continue", "exploit", "recover"}
    page = (tmp_path / "out" / "report.html").read_text()
    for key in ("lineage", "schedule"):
        assert f'data-plot="{key}">' in page  # drawn, not a "could not be drawn" note
    assert export.best is not None and export.best.schedule is not None


def test_a_command_mode_population_gets_its_checkpoints_through_placeholders_and_env(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFLEET_TEST_CORRUPT_SEGMENT", "2:0")
    document = pbt_document("pure_python")
    document["spec"]["trial"] = {
        "command": [sys.executable, "tests/support/pbt_command.py", "--lr", "{{lr}}",
                    "--load", "{{checkpoint.load}}", "--save", "{{checkpoint.save}}"],
        "maxDuration": "60s",
    }
    result = run(document, sqlite_url, tmp_path)
    assert result.stop_reason is StopReason.POPULATION_TRAINED
    found = segments(sqlite_url)
    completed = [(t, s) for t, s in found if t.state == TrialState.COMPLETE]
    for member in range(POPULATION):
        assert max(s.end for _, s in completed if s.member == member) == STEPS
    assert all(len(t.intermediate_values) == s.end - s.start for t, s in completed)  # step=<n> lines
    garbage = next(t.number for t, s in found if (s.member, s.index) == (2, 0))
    unreadable = [t for t, s in found if t.user_attrs.get(ATTR_REASON) == "checkpointUnavailable"]
    assert unreadable and all(Segment.from_attr(t.user_attrs[ATTR_SEGMENT]).load == garbage  # type: ignore[union-attr]
                              for t in unreadable)
    assert "exited with code 74" in unreadable[0].user_attrs[ATTR_DETAIL]
    assert any(s.decision == "recover" for _, s in completed)
