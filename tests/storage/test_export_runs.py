"""Real local runs (worker processes, real storage): confirmation trials and seeded reruns."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from scipy import stats

from controller.export import write_export
from controller.local.runner import LocalRunner, RunOptions
from controller.planner import StopReason
from controller.planner.confirmation import ATTR_CONFIRM_OF, ATTR_CONFIRM_WARNING
from controller.spec import StudyManifest
from trial_worker.contract import ATTR_KIND, ATTR_SEED

REPO_ROOT = Path(__file__).resolve().parents[2]
# The value depends on x and on the trial's seed, so repeats of one configuration differ.
NOISY = (
    "import os; x={{x}}; s=int(os.environ['TUNEFLEET_SEED']); "
    "print(f'loss={(x - 0.3) ** 2 + (s % 1000) / 1e4}')"
)


def manifest(name: str, **spec: Any) -> StudyManifest:
    document: dict[str, Any] = {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
        "searchSpace": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "strategy": {"sampler": "tpe", "pruner": "none", "seed": 11},
        "budget": {"maxTrials": 4},
        "parallelism": 1,
        "trial": {"command": [sys.executable, "-c", NOISY], "maxDuration": 60},
    }
    document.update(spec)
    return StudyManifest.model_validate(
        {
            "apiVersion": "tunefleet.dev/v1alpha1",
            "kind": "Study",
            "metadata": {"name": name},
            "spec": document,
        }
    )


def run(study: StudyManifest, url: str, tmp_path: Path) -> Any:
    options = RunOptions(
        storage_url=url,
        workdir=str(REPO_ROOT),
        log_dir=tmp_path / "logs" / study.metadata.name,
        show_progress=False,
    )
    return LocalRunner(study, options).run()


def test_confirmation_reruns_the_top_configurations_and_gives_intervals(
    storage_url: str, tmp_path: Path
) -> None:
    study_manifest = manifest("confirmed", confirm={"topK": 2, "repeats": 3}, parallelism=2)
    result = run(study_manifest, storage_url, tmp_path)
    assert result.stop_reason is StopReason.MAX_TRIALS
    study = optuna.load_study(study_name="confirmed", storage=storage_url)
    trials = study.get_trials()
    search = [t for t in trials if t.user_attrs.get(ATTR_KIND) != "confirm"]
    confirmations = [t for t in trials if t.user_attrs.get(ATTR_KIND) == "confirm"]
    assert len(search) == 4  # maxTrials counts search trials only
    assert len(confirmations) == 6
    ranked = sorted((t for t in search if t.value is not None), key=lambda t: (t.value, t.number))
    top = [ranked[0].number, ranked[1].number]
    assert sorted({t.user_attrs[ATTR_CONFIRM_OF] for t in confirmations}) == sorted(top)
    seeds = [t.user_attrs[ATTR_SEED] for t in trials]
    assert len(set(seeds)) == len(seeds)  # every run has its own seed
    for run_trial in confirmations:
        origin = next(t for t in search if t.number == run_trial.user_attrs[ATTR_CONFIRM_OF])
        assert run_trial.params == origin.params

    out = tmp_path / "export"
    write_export(storage_url, "confirmed", out)
    intervals = json.loads((out / "confidence_intervals.json").read_text())
    by_source = {c["source_trial"]: c for c in intervals["configurations"]}
    for source in top:
        samples = [float(t.values[0]) for t in confirmations if t.user_attrs[ATTR_CONFIRM_OF] == source]
        mean, sd = statistics.mean(samples), statistics.stdev(samples)
        half = stats.t.ppf(0.975, len(samples) - 1) * sd / len(samples) ** 0.5
        loss = by_source[source]["metrics"]["loss"]
        assert loss["n"] == 3
        assert loss["mean"] == pytest.approx(mean)
        assert loss["low"] == pytest.approx(mean - half) and loss["high"] == pytest.approx(mean + half)
    best_mean = min(top, key=lambda s: by_source[s]["metrics"]["loss"]["mean"])
    best = json.loads((out / "best_config.json").read_text())
    assert best["trial"] == best_mean == intervals["best_trial"]
    assert best["confirmed"]["loss"]["n"] == 3
    with (out / "trials.csv").open(newline="") as handle:
        kinds = [row["kind"] for row in csv.DictReader(handle)]
    assert kinds.count("confirm") == 6
    assert "Confirmed configurations" in (out / "report.html").read_text()


def test_a_budget_too_small_for_confirmation_is_said_at_the_start(sqlite_url: str, tmp_path: Path) -> None:
    # 1 CPU x (60 s + 5 s grace) per trial: 0.1 CPU-hours covers 5 worst cases, fewer than 2 x 3 runs.
    study_manifest = manifest(
        "short", confirm={"topK": 2, "repeats": 3}, budget={"maxTrials": 4, "cpuHours": 0.1}
    )
    run(study_manifest, sqlite_url, tmp_path)
    study = optuna.load_study(study_name="short", storage=sqlite_url)
    warning = study.user_attrs[ATTR_CONFIRM_WARNING]
    assert "covers only 5 trial(s)" in warning and "no search trial will start" in warning
    out = tmp_path / "export"
    write_export(sqlite_url, "short", out)
    assert "covers only 5 trial(s)" in (out / "report.html").read_text()


def test_a_seeded_sequential_study_run_twice_gives_identical_parameters(
    sqlite_url: str, tmp_path: Path
) -> None:
    firsts: list[list[dict[str, Any]]] = []
    values: list[list[float | None]] = []
    for name in ("seeded-a", "seeded-b"):
        run(manifest(name, budget={"maxTrials": 6}), sqlite_url, tmp_path)
        trials = optuna.load_study(study_name=name, storage=sqlite_url).get_trials()
        firsts.append([t.params for t in trials])
        values.append([t.value for t in trials])
    assert len(firsts[0]) == 6
    assert firsts[0] == firsts[1]
    assert values[0] == values[1]  # the objective is deterministic given x and the trial seed
