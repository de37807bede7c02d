"""Pruners built from the assignment, Hyperband brackets shared by workers, the feasible front,
and the planner's convergence and warm-start rules."""

from __future__ import annotations

import random
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import create_trial

from controller.planner import Observation, StopReason, TrialView, decide
from controller.strategies import feasible_pareto_front
from controller.strategies import pruning as controller_pruning
from controller.strategies.pareto import dominates
from tests.unit.test_strategies import spec_with
from trial_worker import pruners as worker_pruners
from trial_worker.contract import ATTR_PINNED_STEPS, PrunerConfig
from trial_worker.pruners import RungPruner, build_pruner

PRUNERS = ("none", "median", "percentile", "hyperband", "asha", "wilcoxon")


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_builds_from_the_spec_through_the_assignment(name: str) -> None:
    spec = spec_with(strategy={"sampler": "random", "pruner": name})
    config = controller_pruning.pruner_config(spec, name)
    restored = PrunerConfig.model_validate_json(config.model_dump_json())
    assert isinstance(build_pruner(restored), optuna.pruners.BasePruner)


def test_spec_settings_reach_the_worker_with_optuna_names() -> None:
    spec = spec_with(
        strategy={"pruner": "hyperband", "prunerSettings": {"reductionFactor": 2, "maxResource": 9}}
    )
    config = controller_pruning.pruner_config(spec, "hyperband")
    assert config.settings == {"reduction_factor": 2, "max_resource": 9}
    pruner = build_pruner(config)
    assert isinstance(pruner, RungPruner) and isinstance(pruner.inner, optuna.pruners.HyperbandPruner)


def _study_with_steps(steps_by_trial: list[int]) -> optuna.Study:
    study = optuna.create_study(study_name="brackets", direction="maximize")
    for steps in steps_by_trial:
        study.add_trial(
            create_trial(
                value=0.5,
                params={"x": 0.1},
                distributions={"x": FloatDistribution(0, 1)},
                intermediate_values={s: 0.1 * s for s in range(steps)},
            )
        )
    return study


def test_hyperband_auto_waits_for_the_pinned_steps_then_every_worker_agrees() -> None:
    study = _study_with_steps([27, 9])  # an early-stopped trial too: Optuna's auto could disagree
    config = PrunerConfig(name="hyperband", settings={"reduction_factor": 3})
    first, second = build_pruner(config), build_pruner(config)
    assert isinstance(first, RungPruner) and isinstance(second, RungPruner)
    running = study.ask()
    running.report(0.0, 0)
    frozen = study.trials[-1]
    assert first.prune(study, frozen) is False  # nothing pinned: no pruning, as before a completion

    assert controller_pruning.pin_steps(study, study.trials, config) == 27
    study.add_trial(
        create_trial(
            value=0.9,
            params={"x": 0.2},
            distributions={"x": FloatDistribution(0, 1)},
            intermediate_values={s: 0.1 for s in range(81)},
        )
    )
    assert controller_pruning.pin_steps(study, study.trials, config) == 27  # pinned once
    assert study.user_attrs[ATTR_PINNED_STEPS] == 27
    first.prune(study, frozen)
    second.prune(study, frozen)
    inner = [first.inner, second.inner]
    assert all(isinstance(p, optuna.pruners.HyperbandPruner) for p in inner)
    one, two = (p for p in inner if isinstance(p, optuna.pruners.HyperbandPruner))
    assert all(one._get_bracket_id(study, t) == two._get_bracket_id(study, t) for t in study.trials)
    assert one._n_brackets == two._n_brackets == 4  # log3(27) + 1


def test_explicit_max_resource_needs_no_pin() -> None:
    config = PrunerConfig(name="hyperband", settings={"max_resource": 20})
    pruner = build_pruner(config)
    assert isinstance(pruner, RungPruner) and isinstance(pruner.inner, optuna.pruners.HyperbandPruner)
    assert not controller_pruning.needs_pinned_steps(config)


def test_declared_steps_are_pinned_before_any_trial() -> None:
    config = PrunerConfig(name="hyperband", settings={})
    study = optuna.create_study(direction="maximize")
    assert controller_pruning.pin_steps(study, [], config, declared=30) == 30
    assert study.user_attrs[ATTR_PINNED_STEPS] == 30


FULL_STEPS = 27


def _stopping_steps(pruner: optuna.pruners.BasePruner) -> list[tuple[int, int]]:
    """(trial number, the step it stopped at; FULL_STEPS when it completed) for 40 seeded trials."""
    study = optuna.create_study(
        study_name="rungs", direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=5)
    )
    outcomes: list[tuple[int, int]] = []
    for _ in range(40):
        trial = study.ask()
        quality = trial.suggest_float("q", 0.0, 1.0)
        stopped_at = FULL_STEPS
        for step in range(FULL_STEPS):
            trial.report(quality * (1 - 0.9 ** (step + 1)), step)
            if trial.should_prune():
                stopped_at = step
                break
        if stopped_at < FULL_STEPS:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, quality)
        outcomes.append((trial.number, stopped_at))
    return outcomes


@pytest.mark.parametrize("name", ["hyperband", "asha"])
def test_rung_pruner_decides_as_optuna_asking_only_at_rungs(name: str) -> None:
    """Every trial of a seeded study gets the same verdict at the same step from both pruners,
    while the rung pruner consults Optuna's pruner (and so the storage) at rung steps only."""
    settings: dict[str, Any] = {"max_resource": FULL_STEPS} if name == "hyperband" else {"min_resource": 1}
    optuna_pruner = (
        optuna.pruners.HyperbandPruner(**settings)
        if name == "hyperband"
        else optuna.pruners.SuccessiveHalvingPruner(**settings)
    )
    rung_pruner = build_pruner(PrunerConfig(name=name, settings=settings))
    assert isinstance(rung_pruner, RungPruner) and rung_pruner.inner is not None
    inner = rung_pruner.inner
    asked: list[int] = []
    original = inner.prune

    def counted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        asked.append(trial.number)
        return original(study, trial)

    inner.prune = counted  # type: ignore[method-assign]
    expected = _stopping_steps(optuna_pruner)
    got = _stopping_steps(rung_pruner)
    assert got == expected
    assert any(stopped < FULL_STEPS for _, stopped in expected)
    reports = sum(min(stopped + 1, FULL_STEPS) for _, stopped in got)
    assert len(asked) < reports / 2, (len(asked), reports)


def test_asha_auto_min_resource_follows_optunas_estimate() -> None:
    assert worker_pruners.resolved_settings("asha", {}, 1000)["min_resource"] == 9
    assert worker_pruners.resolved_settings("asha", {}, 20)["min_resource"] == 1


# -- the feasible Pareto front -----------------------------------------------------------------


def test_feasible_front_equals_brute_force_non_dominated_feasible_trials() -> None:
    rng = random.Random(3)
    study = optuna.create_study(directions=["minimize", "maximize"])
    for _ in range(60):
        values = [rng.choice([0.0, 0.5, 1.0, rng.random()]), rng.random()]
        study.add_trial(
            create_trial(
                values=values,
                params={"x": 0.1},
                distributions={"x": FloatDistribution(0, 1)},
                system_attrs={"constraints:memory": rng.uniform(-1, 1)},
            )
        )
    front = feasible_pareto_front(study, ["memory"])
    feasible = [t for t in study.trials if t.constraints["memory"] <= 0]
    expected = [
        t.number
        for t in feasible
        if not any(dominates(o.values, t.values, study.directions) for o in feasible if o is not t)
    ]
    assert [t.number for t in front] == expected and front
    assert all(t.constraints["memory"] <= 0 for t in front)
    assert {t.number for t in study.best_trials} == set(expected)  # Optuna's best_trials agrees


def test_dominance_follows_each_direction() -> None:
    directions = [StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE]
    assert dominates([0.0, 1.0], [1.0, 0.0], directions)
    assert not dominates([0.0, 0.0], [1.0, 1.0], directions)
    assert not dominates([1.0, 1.0], [1.0, 1.0], directions)


def test_a_trial_missing_a_declared_constraint_is_not_feasible() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trial(create_trial(values=[0.0, 0.0], params={}, distributions={}))
    assert feasible_pareto_front(study, ["memory"]) == []
    assert len(feasible_pareto_front(study)) == 1


# -- the planner: terminator verdict, imported trials ------------------------------------------


def observation(trials: list[TrialView]) -> Observation:
    return Observation(trials=tuple(trials), live=frozenset(), now=100.0, started_at=0.0)


def done(number: int, value: float, reason: str | None = None) -> TrialView:
    return TrialView(
        number=number, state="COMPLETE", values=(value,), params={"x": float(number)}, reason=reason
    )


def test_the_terminator_verdict_ends_the_study_as_converged() -> None:
    spec = spec_with(budget={"maxTrials": 50})
    assert decide(spec, observation([done(0, 1.0)])).stop is None
    plan = decide(spec, observation([done(0, 1.0)]), converged=True)
    assert plan.stop is StopReason.CONVERGED and plan.finished


def test_imported_trials_do_not_count_towards_max_trials_goal_or_patience() -> None:
    spec = spec_with(budget={"maxTrials": 3, "patience": 2}, objective={"goal": 0.5}, parallelism=2)
    imported = [done(n, 0.1, reason="imported") for n in range(5)]  # all reach the goal, none improves
    plan = decide(spec, observation(imported))
    assert plan.stop is None and plan.start_new == 2
    own = [*imported, done(5, 3.0), done(6, 2.0), done(7, 1.0)]
    assert decide(spec, observation(own)).stop is StopReason.MAX_TRIALS


def test_patience_counts_finished_trials_since_the_last_improvement() -> None:
    spec = spec_with(budget={"maxTrials": 50, "patience": 3})
    values = [5.0, 4.0, 4.5, 4.2, 4.1]
    trials = [done(n, v) for n, v in enumerate(values)]
    assert decide(spec, observation(trials)).stop is StopReason.CONVERGED
    assert decide(spec, observation(trials[:4])).stop is None
