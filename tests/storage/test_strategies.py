"""Every strategy runs a real local study: samplers, pruners, the grid, multi-objective
constraints, warm start, convergence and exact maxTrials.

What a strategy does does not depend on the storage backend, so those tests run on the embedded
SQLite file (the local default); the ones where workers race for the study (the grid under
parallelism, exact maxTrials, cost-aware TPE with several workers) run on PostgreSQL too.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from controller.export import write_export
from controller.local.runner import LocalRunner, RunOptions, RunResult
from controller.planner import StopReason
from controller.spec import parse_study_text
from controller.strategies import feasible_pareto_front
from controller.strategies.grid import configuration_key
from controller.strategies.live import ATTR_REVISIONS
from tests.conftest import REPO_ROOT
from tests.support.specs import study_document
from trial_worker.contract import ATTR_PINNED_STEPS

pytestmark = pytest.mark.storage

HERE = "tests.storage.test_strategies"
XY = {"x": {"type": "float", "low": 0.0, "high": 1.0}, "y": {"type": "float", "low": 0.0, "high": 1.0}}
TWO_METRICS = [{"name": "loss", "direction": "minimize"}, {"name": "size", "direction": "minimize"}]


# Objectives (the worker imports them from this module).


def two_metrics_constrained(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    trial.set_constraint("memory", x + y - 1.2)  # feasible when x + y <= 1.2
    return x, (1.0 - x) ** 2 + y


def two_metrics_user_attr_constraint(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    trial.set_user_attr("memory", x - 0.5)
    return x, 1.0 - x + y


def grid_objective(trial: optuna.Trial) -> float:
    optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    layers = trial.suggest_int("layers", 1, 2)
    momentum = trial.suggest_float("momentum", 0.8, 0.9, step=0.05) if optimizer == "sgd" else 0.0
    return layers + momentum


def xy_with_steps(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    value = (x - 0.3) ** 2 + (y - 0.7) ** 2
    for step in range(9):
        trial.report(value + (9 - step) * 0.1, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def run_study(
    document: dict[str, Any], storage_url: str, tmp_path: Path, name: str = "test-study"
) -> RunResult:
    document["metadata"]["name"] = name
    manifest = parse_study_text(yaml.safe_dump(document))
    options = RunOptions(
        storage_url=storage_url, workdir=str(REPO_ROOT), log_dir=tmp_path / "logs" / name, show_progress=False
    )
    return LocalRunner(manifest, options).run()


def xy_document(**changes: Any) -> dict[str, Any]:
    """The test study over XY (or ``searchSpace``), running ``python`` (default xy_with_steps)."""
    space = changes.pop("searchSpace", XY)
    python = changes.pop("python", f"{HERE}:xy_with_steps")
    document = study_document(**changes)
    document["spec"]["searchSpace"] = space
    document["spec"]["trial"]["python"] = python
    return document


def trials_of(storage_url: str, name: str = "test-study") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage_url).get_trials()


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "cmaes", "qmc"])
def test_every_single_objective_sampler_runs_to_completion(
    sampler: str, sqlite_url: str, tmp_path: Path
) -> None:
    result = run_study(
        xy_document(strategy={"sampler": sampler, "pruner": "none"}, budget={"maxTrials": 5}),
        sqlite_url,
        tmp_path,
    )
    trials = trials_of(sqlite_url)
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    recorded = optuna.load_study(study_name="test-study", storage=sqlite_url).user_attrs[
        "tunefleet.strategy"
    ]
    assert recorded["sampler"] == sampler


@pytest.mark.parametrize("sampler", ["nsga2", "nsga3", "motpe"])
def test_every_multi_objective_sampler_runs_with_constraints(
    sampler: str, sqlite_url: str, tmp_path: Path
) -> None:
    document = xy_document(
        strategy={"sampler": sampler, "pruner": "none"},
        budget={"maxTrials": 6},
        objective={"metrics": TWO_METRICS, "constraints": ["memory"]},
        python=f"{HERE}:two_metrics_constrained",
    )
    result = run_study(document, sqlite_url, tmp_path)
    trials = trials_of(sqlite_url)
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert all(t.state == TrialState.COMPLETE and "memory" in t.constraints for t in trials)


@pytest.mark.parametrize("pruner", ["none", "median", "percentile", "hyperband", "asha", "wilcoxon"])
def test_every_pruner_runs_to_completion(pruner: str, sqlite_url: str, tmp_path: Path) -> None:
    settings = {"n_startup_trials": 1} if pruner in ("median", "percentile") else {}
    document = xy_document(
        strategy={"sampler": "random", "pruner": pruner, "prunerSettings": settings}, budget={"maxTrials": 8}
    )
    result = run_study(document, sqlite_url, tmp_path)
    trials = trials_of(sqlite_url)
    assert result.stop_reason is StopReason.MAX_TRIALS and len(trials) == 8
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if pruner == "median":
        assert any(t.state == TrialState.PRUNED for t in trials)  # steps are worse than the median
    if pruner in ("hyperband", "asha"):
        study = optuna.load_study(study_name="test-study", storage=sqlite_url)
        assert study.user_attrs[ATTR_PINNED_STEPS] == 9


def test_grid_runs_exactly_the_grid_once_under_parallelism_three(storage_url: str, tmp_path: Path) -> None:
    space = {
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.9, "step": 0.05, "when": {"optimizer": "sgd"}},
        "layers": {"type": "int", "low": 1, "high": 2},
    }
    document = xy_document(
        searchSpace=space,
        python=f"{HERE}:grid_objective",
        strategy={"sampler": "grid", "pruner": "none"},
        budget={"maxTrials": 50},
        parallelism=3,
    )
    result = run_study(document, storage_url, tmp_path)
    trials = trials_of(storage_url)
    assert result.stop_reason is StopReason.SPACE_EXHAUSTED
    keys = Counter(configuration_key(t.params) for t in trials)
    assert len(trials) == 8 and all(count == 1 for count in keys.values())
    expected = {("adam", None), ("sgd", 0.8), ("sgd", 0.85), ("sgd", 0.9)}
    seen = {(t.params["optimizer"], t.params.get("momentum")) for t in trials}
    assert {(o, None if m is None else round(m, 6)) for o, m in seen} == expected


def test_pareto_export_is_the_non_dominated_feasible_set(sqlite_url: str, tmp_path: Path) -> None:
    document = xy_document(
        strategy={"sampler": "motpe", "pruner": "none", "seed": 3},
        budget={"maxTrials": 16},
        objective={"metrics": TWO_METRICS, "constraints": ["memory"]},
        python=f"{HERE}:two_metrics_user_attr_constraint",
    )
    run_study(document, sqlite_url, tmp_path)
    study = optuna.load_study(study_name="test-study", storage=sqlite_url)
    trials = study.get_trials()
    infeasible = {t.number for t in trials if t.constraints["memory"] > 0}
    assert infeasible and len(infeasible) < len(trials)
    feasible = [t for t in trials if t.number not in infeasible]
    brute = {
        t.number
        for t in feasible
        if not any(
            all(a <= b for a, b in zip(o.values, t.values, strict=True)) and o.values != t.values
            for o in feasible
        )
    }
    export = write_export(sqlite_url, "test-study", tmp_path / "out")
    exported = json.loads((export.directory / "best_config.json").read_text())
    assert {entry["trial"] for entry in exported["pareto"]} == brute
    assert {t.number for t in feasible_pareto_front(study, ["memory"])} == brute


def test_warm_start_params_run_first_and_another_study_informs_the_sampler(
    sqlite_url: str, tmp_path: Path
) -> None:
    first = xy_document(strategy={"sampler": "random", "pruner": "none"}, budget={"maxTrials": 5})
    run_study(first, sqlite_url, tmp_path, name="source")
    warm = xy_document(
        strategy={"sampler": "tpe", "pruner": "none"},
        budget={"maxTrials": 4},
        parallelism=1,
        warmStart={"params": [{"x": 0.25, "y": 0.5}, {"x": 0.75}], "fromStudy": "source"},
    )
    result = run_study(warm, sqlite_url, tmp_path)
    trials = sorted(trials_of(sqlite_url), key=lambda t: t.number)
    imported = [t for t in trials if t.user_attrs.get("tunefleet.reason") == "imported"]
    own = [t for t in trials if t not in imported]
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert len(imported) == 5 and len(own) == 4  # imported trials do not use up maxTrials
    assert own[0].params == {"x": 0.25, "y": 0.5}
    assert own[1].params["x"] == 0.75
    assert {t.params["x"] for t in imported} == {t.params["x"] for t in trials_of(sqlite_url, "source")}
    again = run_study(warm, sqlite_url, tmp_path)  # resuming does not import twice
    assert again.stop_reason is StopReason.MAX_TRIALS and len(trials_of(sqlite_url)) == 9


def test_warm_start_from_a_missing_study_names_the_field(storage_url: str, tmp_path: Path) -> None:
    document = xy_document(warmStart={"fromStudy": "nowhere"})
    with pytest.raises(ValueError, match=r"warmStart\.fromStudy: no study named .nowhere."):
        run_study(document, storage_url, tmp_path)


def test_patience_ends_the_study_converged(sqlite_url: str, tmp_path: Path) -> None:
    document = xy_document(
        strategy={"sampler": "random", "pruner": "none"},
        budget={"maxTrials": 200, "patience": 4},
        parallelism=1,
    )
    result = run_study(document, sqlite_url, tmp_path)
    assert result.stop_reason is StopReason.CONVERGED
    assert len(trials_of(sqlite_url)) < 200


def test_max_trials_is_exact_across_workers_and_retries(storage_url: str, tmp_path: Path) -> None:
    document = study_document(
        strategy={"sampler": "tpe", "pruner": "none"},
        budget={"maxTrials": 7},
        parallelism=3,
        trial={"python": "tests.support.objectives:killed_on_first_attempt", "maxRetries": 1},
    )
    result = run_study(document, storage_url, tmp_path)
    trials = trials_of(storage_url)
    firsts = [t for t in trials if "tunefleet.retry_of" not in t.user_attrs]
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert len(firsts) == 7
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 7


def test_auto_starts_with_tpe_on_the_worst_case_and_revises_once_trials_are_measured(
    sqlite_url: str, tmp_path: Path
) -> None:
    # maxDuration 10 min against 1 CPU-hour: 6 worst-case trials, a floor rather than an estimate,
    # so TPE (random for its first trials) and Hyperband (objective.steps says trials report 9
    # steps) from the first trial; measured trials then show the budget affords all 24.
    document = xy_document(
        objective={"metrics": [{"name": "loss", "direction": "minimize"}], "steps": 9},
        strategy={"sampler": "auto", "pruner": "auto"},
        budget={"maxTrials": 24, "cpuHours": 1.0},
        trial={"python": f"{HERE}:xy_with_steps", "maxDuration": "10m"},
    )
    run_study(document, sqlite_url, tmp_path)
    study = optuna.load_study(study_name="test-study", storage=sqlite_url)
    started = study.user_attrs["tunefleet.strategy"]
    assert (started["sampler"], started["pruner"]) == ("tpe", "hyperband")
    assert "only the worst case is known" in " ".join(started["reasons"])
    assert study.user_attrs[ATTR_PINNED_STEPS] == 9  # before any trial completed
    configurations = [configuration_key(t.params) for t in study.trials]
    assert len(set(configurations)) == len(configurations) == 24


def costly_in_x(trial: optuna.Trial) -> float:
    """Costs ~0.01 s at x = 0 and ~1 s at x = 1; best at x = 0.2, y = 0.6."""
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    time.sleep(0.01 * 100.0**x)
    return (x - 0.2) ** 2 + (y - 0.6) ** 2


def test_cost_aware_tpe_runs_to_completion_with_several_workers(storage_url: str, tmp_path: Path) -> None:
    document = xy_document(
        strategy={"sampler": "tpe", "pruner": "none", "costAware": True, "settings": {"n_startup_trials": 4}},
        budget={"maxTrials": 16},
        parallelism=3,
        python=f"{HERE}:costly_in_x",
    )
    result = run_study(document, storage_url, tmp_path)
    trials = trials_of(storage_url)
    assert result.stop_reason is StopReason.MAX_TRIALS
    assert len(trials) == 16 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({configuration_key(t.params) for t in trials}) == 16
    study = optuna.load_study(study_name="test-study", storage=storage_url)
    recorded = study.user_attrs["tunefleet.strategy"]
    assert recorded["sampler"] == "tpe" and recorded["costAware"] is True


def costlier_in_x(trial: optuna.Trial) -> float:
    """Costs ~0.01 s at x = 0 and ~10 s at x = 1: a wide spread even with a second of overhead."""
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    time.sleep(0.01 * 1000.0**x)
    return (x - 0.2) ** 2 + (y - 0.6) ** 2


def test_auto_turns_cost_aware_search_on_when_measured_costs_vary_widely(
    sqlite_url: str, tmp_path: Path
) -> None:
    # 20 trials (auto prefers random below 20) and 216 CPU-seconds: ~6 trials at the worst case
    # (30 s, room for a slow start on a loaded machine), so TPE from the start. Measured, auto keeps
    # TPE while what is left affords 10+ more trials of the mean cost, and calls the budget tight
    # while it affords fewer than 90 of the slow tenth: with trials of ~1.5 s (mean) and ~4 s
    # (slow tenth) both hold for what is left between ~15 and ~300 CPU-seconds, and still do when
    # load makes every trial seconds longer.
    document = xy_document(
        strategy={"sampler": "auto", "pruner": "none"},
        budget={"maxTrials": 20, "cpuHours": 0.06},
        parallelism=3,
        python=f"{HERE}:costlier_in_x",  # xy_document sets trial.python
        trial={"maxDuration": "30s"},
    )
    result = run_study(document, sqlite_url, tmp_path)
    assert result.stop_reason is StopReason.MAX_TRIALS
    study = optuna.load_study(study_name="test-study", storage=sqlite_url)
    assert study.user_attrs["tunefleet.strategy"]["costAware"] is False  # nothing measured yet
    revisions = study.user_attrs[ATTR_REVISIONS]
    assert revisions[-1]["sampler"] == "tpe" and revisions[-1]["costAware"] is True, revisions
    assert "expected improvement per second" in " ".join(revisions[-1]["reasons"])
