"""The export directory against real storages: files, values equal to the storage, the record."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from controller.budget.ledger import Charge, Ledger
from controller.export import write_export
from controller.spec import StudySpec
from controller.strategies import build_sampler, choose_strategy
from controller.studies.asking import ask_new_trial
from controller.studies.record import record_study
from controller.studies.storage import create_or_load_study, open_storage
from trial_worker.contract import ATTR_SEED
from trial_worker.trial_reads import read_trials

SINGLE_SPEC: dict[str, Any] = {
    "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
    "searchSpace": {
        "x": {"type": "float", "low": -2.0, "high": 2.0},
        "kind": {"type": "categorical", "choices": ["a", "b"]},
        "depth": {"type": "int", "low": 1, "high": 4, "when": {"kind": "b"}},
    },
    "strategy": {"sampler": "tpe", "pruner": "median", "seed": 7},
    "budget": {"maxTrials": 40, "cpuHours": 1},
    "trial": {"python": "m:f", "cpus": 2},
}
MULTI_SPEC: dict[str, Any] = {
    "objective": {
        "metrics": [{"name": "loss", "direction": "minimize"}, {"name": "speed", "direction": "maximize"}]
    },
    "searchSpace": {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "y": {"type": "int", "low": 1, "high": 5},
    },
    "strategy": {"sampler": "nsga2", "pruner": "none", "seed": 3, "settings": {"population_size": 8}},
    "trial": {"python": "m:f"},
}


def build_study(url: str, name: str, spec_document: dict[str, Any], trials: int) -> optuna.Study:
    """A study recorded as the runner records it, with trials told in-process (fast)."""
    spec = StudySpec.model_validate(spec_document)
    choice = choose_strategy(spec)
    study = create_or_load_study(
        open_storage(url), name, spec.objective.directions, sampler=build_sampler(choice.sampler, spec, 7)
    )
    record_study(study, spec, spec.strategy.seed or 0, choice, 0.0)
    ledger = Ledger(url)
    for _ in range(trials):
        trial = ask_new_trial(study, spec.searchSpace, spec.strategy.seed or 0)
        x = trial.params["x"]
        ledger.reserve(f"{name}/{trial.number}", name, trial.number, Charge(0, 1000))
        ledger.settle(f"k{trial.number}", f"{name}/{trial.number}", Charge(0, 2 * (trial.number + 1)), 1.0)
        if spec.is_multi_objective:
            study.tell(trial, [(x - 0.3) ** 2 + trial.params["y"] / 10, 1.0 / (1 + x * trial.params["y"])])
            continue
        value = (x - 0.5) ** 2 + (0.3 if trial.params["kind"] == "a" else trial.params.get("depth", 0) / 10)
        for step in range(3):
            trial.report(value + (2 - step) * 0.1, step)
        if trial.number % 7 == 6:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif trial.number == 5:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
    ledger.close()
    return study


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_single_objective_export_matches_the_storage(storage_url: str, tmp_path: Path) -> None:
    study = build_study(storage_url, "single", SINGLE_SPEC, 24)
    result = write_export(storage_url, "single", tmp_path)
    assert set(result.files) == {
        "best_config.json",
        "best_config.yaml",
        "trials.csv",
        "importance.json",
        "reproducibility.json",
        "report.html",
    }
    stored = {t.number: t for t in study.get_trials()}

    rows = read_csv(tmp_path / "trials.csv")
    assert list(rows[0]) == [
        "number", "kind", "confirm_of", "state", "loss", "param_depth", "param_kind", "param_x",
        "duration_s", "gpu_seconds", "cpu_seconds", "reason",
    ]  # fmt: skip
    assert [int(r["number"]) for r in rows] == sorted(stored)
    for row in rows:
        trial = stored[int(row["number"])]
        assert row["state"] == trial.state.name
        assert row["loss"] == ("" if trial.value is None else repr(trial.value))
        assert float(row["param_x"]) == trial.params["x"]
        assert row["param_kind"] == trial.params["kind"]
        assert row["param_depth"] == str(trial.params.get("depth", ""))
        assert int(row["cpu_seconds"]) == 2 * (trial.number + 1)
        assert row["kind"] == "search"

    best = json.loads((tmp_path / "best_config.json").read_text())
    assert best["trial"] == study.best_trial.number
    assert best["params"] == study.best_trial.params
    assert best["values"] == {"loss": study.best_value}
    assert "no confidence interval was measured" in best["note"]
    assert yaml.safe_load((tmp_path / "best_config.yaml").read_text()) == best

    importance = json.loads((tmp_path / "importance.json").read_text())
    assert importance["evaluator"] == "ped-anova"
    assert importance["parameters"] == ["depth", "kind", "x"]
    scores = importance["metrics"][0]["importances"]
    assert set(scores) == {"depth", "kind", "x"}
    assert math.isclose(sum(scores.values()), 1.0, rel_tol=1e-6)

    record = json.loads((tmp_path / "reproducibility.json").read_text())
    assert record["study_seed"] == 7
    assert record["spec_hash_matches"] is True
    assert record["sampler"]["cls"] == "TPESampler"
    assert record["sampler"]["settings"]["seed"] == 7
    assert record["sampler"]["settings"]["multivariate"] is True
    assert record["pruner"]["cls"] == "MedianPruner"
    assert record["pruner"]["settings"]["n_startup_trials"] == 5
    assert {t["number"]: t["seed"] for t in record["trials"]} == {
        n: t.user_attrs[ATTR_SEED] for n, t in stored.items()
    }
    assert record["versions_at_export"]["optuna"] == optuna.__version__

    page = (tmp_path / "report.html").read_text()
    assert "<script src=" not in page and page.count("<script") > 0  # plotly.js inlined
    for key in ("history-0", "importance", "parallel-0", "slice-0", "contour-0", "intermediate", "timeline"):
        assert f'data-plot="{key}">' in page, key  # drawn, not replaced by a note
    assert "Pruning saved (estimate)" in page and "MaxTrialsReached" not in page


def test_the_direct_trial_reader_equals_optunas(storage_url: str) -> None:
    study = build_study(storage_url, "reader", SINGLE_SPEC, 15)
    running = study.ask()
    running.suggest_float("x", -2.0, 2.0)
    running.set_user_attr("note", {"nested": [1, 2]})
    storage = open_storage(storage_url)
    direct = sorted(read_trials(storage.engine, study._study_id), key=lambda t: t.number)
    assert direct == optuna.load_study(study_name="reader", storage=storage_url).get_trials()
    assert [t.state.name for t in direct].count("RUNNING") == 1


def test_multi_objective_export_lists_the_pareto_front(storage_url: str, tmp_path: Path) -> None:
    study = build_study(storage_url, "multi", MULTI_SPEC, 16)
    write_export(storage_url, "multi", tmp_path)
    best = json.loads((tmp_path / "best_config.json").read_text())
    front = sorted(study.best_trials, key=lambda t: t.number)
    assert [e["trial"] for e in best["pareto"]] == [t.number for t in front]
    assert best["pareto"][0]["values"] == dict(zip(["loss", "speed"], front[0].values, strict=True))
    importance = json.loads((tmp_path / "importance.json").read_text())
    assert [m["metric"] for m in importance["metrics"]] == ["loss", "speed"]
    for entry in importance["metrics"]:
        assert set(entry["importances"]) == {"x", "y"}
    rows = read_csv(tmp_path / "trials.csv")
    assert [float(r["speed"]) for r in rows] == [t.values[1] for t in study.get_trials()]
    page = (tmp_path / "report.html").read_text()
    for key in ("pareto", "hypervolume", "history-1", "parallel-1"):
        assert f'data-plot="{key}">' in page, key


def test_export_of_a_study_still_running_and_of_a_missing_one(sqlite_url: str, tmp_path: Path) -> None:
    study = build_study(sqlite_url, "live", SINGLE_SPEC, 3)
    running = study.ask()
    running.suggest_float("x", -2.0, 2.0)
    write_export(sqlite_url, "live", tmp_path)
    rows = read_csv(tmp_path / "trials.csv")
    assert rows[-1]["state"] == "RUNNING"
    assert "still running" in (tmp_path / "report.html").read_text()
    with pytest.raises(KeyError, match="no study named 'absent'"):
        write_export(sqlite_url, "absent", tmp_path / "none")


def test_fanova_is_available_and_named(sqlite_url: str, tmp_path: Path) -> None:
    build_study(sqlite_url, "fan", MULTI_SPEC, 12)
    write_export(sqlite_url, "fan", tmp_path, importance_evaluator="fanova")
    importance = json.loads((tmp_path / "importance.json").read_text())
    assert importance["evaluator"] == "fanova" and "fANOVA" in importance["description"]
    assert set(importance["metrics"][0]["importances"]) == {"x", "y"}
