"""Local-mode budgets: ``tunefleet run`` reserves and settles in the same ledger as the cluster.

The objectives below are imported by the trial workers (``tests.storage.test_budget_local:...``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
import yaml

from controller.budget.ledger import Ledger
from controller.budget.schema import settlements
from controller.local.runner import LOCAL_GRACE_S, LocalRunner, RunOptions, RunResult
from controller.planner import StopReason
from controller.spec import parse_study_text
from tests.conftest import REPO_ROOT
from tests.support.specs import study_document, write_study

pytestmark = pytest.mark.storage
SLEEP_ENV = "TUNEFLEET_TEST_BUDGET_SLEEP"


def sleeps_uniformly(trial: optuna.Trial) -> float:
    """Every trial takes the same time (``TUNEFLEET_TEST_BUDGET_SLEEP`` seconds)."""
    x = trial.suggest_float("x", -10.0, 10.0)
    time.sleep(float(os.environ.get(SLEEP_ENV, "1")))
    return x * x


def records_its_gpus(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)
    trial.set_user_attr("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
    trial.set_user_attr("began", time.time())
    time.sleep(float(os.environ.get(SLEEP_ENV, "0.5")))
    trial.set_user_attr("ended", time.time())
    return x * x


def run_study(document: dict[str, Any], storage_url: str, tmp_path: Path) -> RunResult:
    runner = LocalRunner(
        parse_study_text(yaml.safe_dump(document)),
        RunOptions(
            storage_url=storage_url, workdir=str(REPO_ROOT), log_dir=tmp_path / "logs", show_progress=False
        ),
    )
    return runner.run()


def cpu_budget_study(**budget: Any) -> dict[str, Any]:
    return study_document(
        parallelism=2,
        budget={"maxTrials": 200, "cpuHours": 0.005, **budget},  # 18 CPU-seconds
        trial={"python": "tests.storage.test_budget_local:sleeps_uniformly", "maxDuration": "4s", "cpus": 1},
    )


def test_a_cpu_hour_budget_stops_with_budget_exhausted_within_the_budget(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "1")
    result = run_study(cpu_budget_study(), storage_url, tmp_path)
    assert result.stop_reason is StopReason.BUDGET_EXHAUSTED
    limit = 18
    worst = 1 * (4 + LOCAL_GRACE_S)
    with Ledger(storage_url) as ledger:
        totals = ledger.totals("test-study")
        charges = ledger.charges_by_trial("test-study")
        assert ledger.open_reservations("test-study") == {}
    spent = totals.settled.cpu_seconds
    print(
        f"cpu budget: spent {spent} of {limit} CPU-seconds ({spent / limit:.2f}), "
        f"overspend {max(0, spent - limit)}"
    )
    assert spent <= limit
    assert spent >= limit / 2
    # Stopped only because one more worst case no longer fits.
    assert limit - spent < worst
    assert sum(c.cpu_seconds for c in charges.values()) == spent
    assert result.summary.complete == len(charges)


def test_tunefleet_run_reports_budget_exhausted_and_exports_the_charges(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "1")
    spec = write_study(tmp_path / "study.yaml", cpu_budget_study())
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "run",
            str(spec),
            "--storage",
            sqlite_url,
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "BudgetExhausted" in done.stdout
    rows = (out / "trials.csv").read_text().splitlines()
    header = rows[0].split(",")
    spent = sum(int(row.split(",")[header.index("cpu_seconds")]) for row in rows[1:])
    assert 9 <= spent <= 18


def test_drain_stops_running_trials_once_no_further_trial_fits(
    storage_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLEEP_ENV, "3")
    result = run_study(cpu_budget_study(onExhausted="drain"), storage_url, tmp_path)
    assert result.stop_reason is StopReason.BUDGET_EXHAUSTED
    trials = optuna.load_study(study_name="test-study", storage=storage_url).get_trials()
    assert [(t.state.name, t.user_attrs.get("tunefleet.reason")) for t in trials] == [("FAIL", "budget")] * 2
    with Ledger(storage_url) as ledger:
        charges = ledger.charges_by_trial("test-study")
        assert ledger.totals("test-study").settled.cpu_seconds <= 18
    assert all(c.cpu_seconds < 9 for c in charges.values())  # charged what ran, not the worst case


@pytest.mark.parametrize("visible", ["0,1,2,3"])
def test_gpu_trials_get_disjoint_gpu_slots_and_pay_k_times_wall_seconds(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, visible: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv(SLEEP_ENV, "0.5")
    document = study_document(
        parallelism=4,  # capped at the 2 slots of 2 GPUs
        budget={"maxTrials": 6, "gpuHours": 1.0},
        trial={"python": "tests.storage.test_budget_local:records_its_gpus", "maxDuration": "20s", "gpus": 2},
    )
    result = run_study(document, sqlite_url, tmp_path)
    assert result.stop_reason is StopReason.MAX_TRIALS
    trials = optuna.load_study(study_name="test-study", storage=sqlite_url).get_trials()
    slots = {t.number: t.user_attrs["cuda_visible_devices"] for t in trials}
    assert set(slots.values()) <= {"0,1", "2,3"}
    for a in trials:
        for b in trials:
            overlap = (
                a.user_attrs["began"] < b.user_attrs["ended"]
                and b.user_attrs["began"] < a.user_attrs["ended"]
            )
            if a.number < b.number and overlap:
                assert slots[a.number] != slots[b.number]
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(settlements.c.gpu_seconds, settlements.c.wall_seconds)).all()
    engine.dispose()
    assert len(rows) == 6
    assert all(gpu == math.ceil(2 * wall) and wall >= 0.5 for gpu, wall in rows)


def test_a_gpu_study_on_a_machine_without_enough_gpus_names_the_field(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    document = study_document(trial={"python": "tests.support.objectives:quadratic", "gpus": 1})
    spec = write_study(tmp_path / "study.yaml", document)
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", str(spec), "--storage", sqlite_url, "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "spec.trial.gpus" in done.stderr and "offers 0" in done.stderr
