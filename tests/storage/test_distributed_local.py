"""``tunefleet run`` with trial.nodes > 1: every trial is several processes that really meet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from controller.budget.ledger import Ledger
from controller.planner import StopReason
from tests.conftest import REPO_ROOT
from tests.storage.test_local_runner import run_study, trials_of
from tests.support.specs import study_document

pytestmark = pytest.mark.storage


def two_node_study(entry: str, max_trials: int) -> dict[str, object]:
    return study_document(
        parallelism=1,
        budget={"maxTrials": max_trials, "cpuHours": 10},
        trial={"python": entry, "nodes": 2, "maxDuration": "60s", "maxRetries": 1},
    )


def test_two_ranks_all_reduce_over_gloo_and_only_rank_0_writes(sqlite_url: str, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the examples extra (torch CPU build)")
    document = two_node_study("tests.support.distributed_objectives:allreduce", max_trials=2)
    result = run_study(document, sqlite_url, tmp_path)
    trials = trials_of(sqlite_url)
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    for trial in trials:
        # x * 1 from rank 0 plus x * 2 from rank 1: both ranks took part, with the same params.
        assert trial.value == pytest.approx(3 * trial.params["x"])
        assert trial.user_attrs["written_by_rank"] == 0
        assert trial.user_attrs["world_size"] == 2
        assert trial.intermediate_values == {0: 0.0}  # rank 1 reported 1.0, which went nowhere
    # The second trial ran on the same warm rank-0 worker: the first left no process group behind.
    assert (tmp_path / "logs" / "trial-1.rank-1.log").exists()
    # Both ranks were billed for the trial's wall time (cpus: 1 each).
    settled = Ledger(sqlite_url).totals("test-study").settled
    ran = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)  # type: ignore[operator]
    assert settled.cpu_seconds >= 2 * ran * 0.95


def test_a_lost_rank_fails_the_whole_trial_and_it_is_retried_with_the_same_params(
    sqlite_url: str, tmp_path: Path
) -> None:
    document = two_node_study("tests.support.distributed_objectives:rank_one_fails", max_trials=1)
    run_study(document, sqlite_url, tmp_path)
    first, retry = trials_of(sqlite_url)
    assert first.state == TrialState.FAIL and first.user_attrs["tunefleet.reason"] == "killed"
    assert "rank 1 exited with code -9" in first.user_attrs["tunefleet.detail"]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == first.params and retry.user_attrs["tunefleet.retry_of"] == 0


def test_the_torchrun_example_runs_locally_as_written(tmp_path: Path) -> None:
    """examples/torchrun/study.yaml through ``tunefleet run``, with torchrun from the venv: only
    maxTrials is lowered (to keep the suite short), the command is the example's."""
    pytest.importorskip("torch", reason="needs the examples extra (torch CPU build)")
    document = yaml.safe_load((REPO_ROOT / "examples" / "torchrun" / "study.yaml").read_text())
    document["spec"]["budget"]["maxTrials"] = 1
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(document))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    venv_bin = str(Path(sys.executable).parent)  # torchrun, as `make quickstart`'s venv has it
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "run",
            str(spec),
            "--storage",
            storage,
            "-q",
            "--workdir",
            str(REPO_ROOT),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = optuna.load_study(study_name="torchrun-two-nodes", storage=storage).get_trials()
    logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(tmp_path.rglob("trial-*.log")))
    assert [t.state for t in trials] == [TrialState.COMPLETE], logs
    for trial in trials:
        assert 0 < trial.value < 10 and len(trial.intermediate_values) == 8  # rank 0's 8 epochs
    rank_1_logs = sorted(p.name for p in tmp_path.rglob("trial-*.rank-1.log"))
    assert rank_1_logs, "no second node ran"
    assert json.loads((tmp_path / "out" / "best_config.json").read_text())["params"].keys() == {
        "lr",
        "momentum",
        "hidden",
    }
