"""Strategies without storage: settings checked against Optuna, ``auto`` by budget, grid sizes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controller.spec import SpecInvalid, StudySpec, parse_study_text
from controller.strategies import (
    Spent,
    TrialCost,
    affordable_trials,
    build_sampler,
    choose_strategy,
    trial_cost,
)
from controller.strategies.choice import MeasuredCosts, StartCost, measure_costs
from controller.strategies.grid import count_configurations, enumerate_configurations, product_size
from controller.strategies.settings import pruner_options, sampler_options
from tests.support.specs import study_document

SAMPLER_NAMES = ("random", "grid", "tpe", "gp", "cmaes", "qmc")
MULTI_SAMPLER_NAMES = ("nsga2", "nsga3", "motpe")
ONE_METRIC = {"metrics": [{"name": "loss", "direction": "minimize"}]}
TWO_METRICS = {
    "metrics": [{"name": "loss", "direction": "minimize"}, {"name": "size", "direction": "minimize"}]
}
CONTINUOUS = {
    "x": {"type": "float", "low": -5.0, "high": 10.0},
    "y": {"type": "float", "low": 0.0, "high": 15.0},
}
CONDITIONAL_GRID = {
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "momentum": {"type": "float", "low": 0.8, "high": 0.9, "step": 0.05, "when": {"optimizer": "sgd"}},
    "layers": {"type": "int", "low": 1, "high": 2},
}


def spec_with(**changes: Any) -> StudySpec:
    """The test study with these spec keys; searchSpace is replaced, not merged."""
    space = changes.pop("searchSpace", None)
    document = study_document(**changes)
    if space is not None:
        document["spec"]["searchSpace"] = space
    return parse_study_text(yaml.safe_dump(document)).spec


def errors_of(**changes: Any) -> list[str]:
    """The spec errors, as ``path (line n): message`` strings."""
    with pytest.raises(SpecInvalid) as caught:
        spec_with(**changes)
    return [str(e) for e in caught.value.errors]


# -- settings, checked against the real constructor signatures ----------------------------------


def test_unknown_sampler_option_is_a_spec_error_naming_it() -> None:
    [error] = errors_of(strategy={"sampler": "tpe", "settings": {"foo": 1}})
    assert error.startswith("spec.strategy.settings.foo")
    assert "not an option of the tpe sampler" in error and "n_startup_trials" in error


def test_a_near_miss_gets_a_suggestion() -> None:
    [error] = errors_of(
        strategy={"sampler": "nsga2", "settings": {"populationSise": 10}}, objective=TWO_METRICS
    )
    assert "spec.strategy.settings.populationSise" in error and "did you mean 'population_size'" in error


def test_unknown_pruner_option_names_it() -> None:
    [error] = errors_of(strategy={"pruner": "hyperband", "prunerSettings": {"maxResources": 9}})
    assert error.startswith("spec.strategy.prunerSettings.maxResources")


def test_options_accept_optuna_names_camel_case_and_short_aliases() -> None:
    assert sampler_options("tpe", {"startupTrials": 5, "nEiCandidates": 12, "multivariate": False}) == {
        "n_startup_trials": 5,
        "n_ei_candidates": 12,
        "multivariate": False,
    }
    assert pruner_options("median", {"warmupSteps": 2, "n_startup_trials": 3}) == {
        "n_warmup_steps": 2,
        "n_startup_trials": 3,
    }


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"startupTrials": "10"}, "must be int"),
        ({"multivariate": 1}, "must be bool"),
        ({"seed": 3}, "strategy.seed"),
        ({"gamma": 0.1}, "takes a Python object"),
        ({"constraints_func": "x"}, "objective.constraints"),
    ],
)
def test_bad_option_values_say_why(settings: dict[str, Any], fragment: str) -> None:
    [error] = errors_of(strategy={"sampler": "tpe", "settings": settings})
    assert fragment in error


def test_the_constructor_itself_judges_values() -> None:
    [error] = errors_of(strategy={"pruner": "hyperband", "prunerSettings": {"bootstrapCount": 2}})
    assert error.startswith("spec.strategy.prunerSettings") and "max_resource" in error
    [error] = errors_of(strategy={"pruner": "asha", "prunerSettings": {"minResource": 0}})
    assert "spec.strategy.prunerSettings.minResource" in error


def test_settings_need_a_named_sampler() -> None:
    [error] = errors_of(strategy={"sampler": "auto", "settings": {"startupTrials": 5}})
    assert error.startswith("spec.strategy.settings") and "named sampler" in error


def test_named_options_for_python_objects() -> None:
    options = sampler_options("cmaes", {"independentSampler": "tpe", "withMargin": True})
    assert type(options["independent_sampler"]).__name__ == "TPESampler"
    [error] = errors_of(strategy={"sampler": "gp", "settings": {"independent_sampler": "bogus"}})
    assert "must be one of ['random', 'tpe']" in error


@pytest.mark.parametrize(
    ("strategy", "objective", "path"),
    [
        ({"sampler": "nsga2"}, None, "spec.strategy.sampler"),
        ({"sampler": "cmaes"}, TWO_METRICS, "spec.strategy.sampler"),
        ({"pruner": "median"}, TWO_METRICS, "spec.strategy.pruner"),
        ({"terminator": True}, TWO_METRICS, "spec.strategy.terminator"),
    ],
)
def test_strategy_must_fit_the_number_of_metrics(
    strategy: dict[str, Any], objective: dict[str, Any] | None, path: str
) -> None:
    changes: dict[str, Any] = {"strategy": strategy}
    if objective:
        changes["objective"] = objective
    [error] = errors_of(**changes)
    assert error.startswith(path)


def test_grid_needs_a_step_on_every_float() -> None:
    [error] = errors_of(strategy={"sampler": "grid"})
    assert error.startswith("spec.searchSpace") and "give float 'x' a step" in error


@pytest.mark.parametrize("name", SAMPLER_NAMES + MULTI_SAMPLER_NAMES)
def test_every_sampler_builds(name: str) -> None:
    space = CONDITIONAL_GRID if name == "grid" else CONTINUOUS
    objective = TWO_METRICS if name in MULTI_SAMPLER_NAMES else None
    changes: dict[str, Any] = {"searchSpace": space, "strategy": {"sampler": name}}
    if objective:
        changes["objective"] = objective
    sampler = build_sampler(name, spec_with(**changes), seed=1)
    assert sampler is not None


# -- the grid ----------------------------------------------------------------------------------


def test_conditional_grid_counts_effective_configurations() -> None:
    spec = spec_with(searchSpace=CONDITIONAL_GRID)
    # adam x 2 layers + sgd x 3 momenta x 2 layers; the cross product would say 12.
    assert spec.space_size() == 8 == len(enumerate_configurations(spec.searchSpace))
    assert product_size(spec.searchSpace) == 12
    configurations = enumerate_configurations(spec.searchSpace)
    assert all("momentum" not in c for c in configurations if c["optimizer"] == "adam")


def test_continuous_space_has_no_size() -> None:
    assert spec_with().space_size() is None
    assert count_configurations(spec_with().searchSpace) is None


# -- auto, by budget ---------------------------------------------------------------------------


def choice_for(trials: int, *, seconds: float = 10.0, reports: bool | None = None, **changes: Any) -> Any:
    changes.setdefault("strategy", {"sampler": "auto", "pruner": "auto"})
    changes.setdefault("searchSpace", {**CONTINUOUS, "c": {"type": "categorical", "choices": ["a", "b"]}})
    changes["budget"] = {"maxTrials": trials}
    spec = spec_with(**changes)
    return choose_strategy(spec, affordable_trials(spec, TrialCost(seconds, "expectedDuration")), reports)


def test_grid_when_the_finite_space_fits_the_budget() -> None:
    assert choice_for(8, searchSpace=CONDITIONAL_GRID).sampler == "grid"
    assert choice_for(7, searchSpace=CONDITIONAL_GRID).sampler == "random"
    assert choice_for(8, searchSpace=CONDITIONAL_GRID).pruner == "none"


def test_random_below_twenty_trials_tpe_from_twenty() -> None:
    assert choice_for(19).sampler == "random"
    assert choice_for(20).sampler == "tpe"
    assert choice_for(500).sampler == "tpe"


def test_gp_for_small_continuous_spaces_with_expensive_trials() -> None:
    assert choice_for(50, seconds=60, searchSpace=CONTINUOUS).sampler == "gp"
    assert choice_for(50, seconds=59, searchSpace=CONTINUOUS).sampler == "tpe"
    assert choice_for(100, seconds=600, searchSpace=CONTINUOUS).sampler == "tpe"
    assert choice_for(50, seconds=600).sampler == "tpe"  # a categorical parameter


def test_several_metrics_motpe_below_a_hundred_trials_nsga2_from_a_hundred() -> None:
    assert choice_for(99, objective=TWO_METRICS).sampler == "motpe"
    assert choice_for(100, objective=TWO_METRICS).sampler == "nsga2"
    assert choice_for(100, objective=TWO_METRICS).pruner == "none"


def test_pruner_hyperband_with_intermediate_values_and_enough_trials() -> None:
    assert choice_for(20, reports=True).pruner == "hyperband"
    assert choice_for(19, reports=True).pruner == "median"
    assert choice_for(200, reports=False).pruner == "none"
    assert choice_for(200, reports=None).pruner == "hyperband"


def test_explicit_names_are_kept_with_the_reason() -> None:
    choice = choice_for(5, strategy={"sampler": "cmaes", "pruner": "wilcoxon"})
    assert (choice.sampler, choice.pruner) == ("cmaes", "wilcoxon")
    assert "cmaes: named in strategy.sampler" in choice.reasons


def test_unlimited_studies_use_tpe() -> None:
    spec = spec_with(strategy={"sampler": "auto"}, budget={"maxTrials": None})
    choice = choose_strategy(spec)
    assert choice.sampler == "tpe" and choice.affordable_trials is None


# -- what the budget affords -------------------------------------------------------------------


def test_affordable_trials_per_limit() -> None:
    spec = spec_with(
        budget={"cpuHours": 1.0, "gpuHours": 2.0, "maxTrials": 500, "deadline": "1h"},
        trial={"python": "m:f", "gpus": 2, "cpus": 4, "expectedDuration": "5m"},
        parallelism=3,
    )
    affordability = affordable_trials(spec, trial_cost(spec))
    assert affordability.limits == {"maxTrials": 500, "gpuHours": 12, "cpuHours": 3, "deadline": 36}
    assert affordability.trials == 3


def test_cost_is_expected_then_measured_then_worst_case() -> None:
    assert trial_cost(spec_with(trial={"python": "m:f", "expectedDuration": "30s"}), [100.0]) == TrialCost(
        30.0, "expectedDuration"
    )
    measured = spec_with(trial={"python": "m:f", "maxDuration": "10m"})
    assert trial_cost(measured, [10.0, 20.0]) == TrialCost(15.0, "measured")
    assert trial_cost(measured) == TrialCost(600.0, "maxDuration")


def test_what_was_spent_is_taken_off_and_trials_already_run_kept() -> None:
    spec = spec_with(budget={"cpuHours": 1.0, "maxTrials": None}, trial={"python": "m:f", "cpus": 1})
    cost = TrialCost(60.0, "measured")
    assert affordable_trials(spec, cost).trials == 60
    assert affordable_trials(spec, cost, Spent(cpu_seconds=1800, trials_started=30)).trials == 60
    assert affordable_trials(spec, cost, Spent(cpu_seconds=3600, trials_started=10)).trials == 10


# -- objective.steps and the worst case ---------------------------------------------------------


def worst_case_choice(trials_affordable: int, **changes: Any) -> Any:
    """``auto`` before any trial finished: the deadline affords this many worst-case trials."""
    changes.setdefault("strategy", {"sampler": "auto", "pruner": "auto"})
    changes.setdefault("searchSpace", {**CONTINUOUS, "c": {"type": "categorical", "choices": ["a", "b"]}})
    changes["budget"] = {"deadline": f"{trials_affordable * 60}s"}
    changes["trial"] = {"python": "m:f", "maxDuration": "60s"}
    spec = spec_with(parallelism=1, **changes)
    return choose_strategy(spec)


def test_the_worst_case_alone_never_makes_auto_random() -> None:
    # A floor, not an estimate: TPE (random for its first trials) until durations are measured.
    assert worst_case_choice(5).sampler == "tpe"
    assert worst_case_choice(5).pruner == "hyperband"
    assert "only the worst case is known" in " ".join(worst_case_choice(5).reasons)
    measured = spec_with(strategy={"sampler": "auto", "pruner": "auto"}, budget={"deadline": "300s"})
    choice = choose_strategy(measured, affordable_trials(measured, TrialCost(60.0, "measured")), True)
    assert (choice.sampler, choice.pruner) == ("random", "median")


def test_objective_steps_give_hyperband_from_the_first_trial() -> None:
    assert choice_for(200, objective={**ONE_METRIC, "steps": 30}).pruner == "hyperband"
    assert "objective.steps" in " ".join(choice_for(200, objective={**ONE_METRIC, "steps": 30}).reasons)
    assert choice_for(19, objective={**ONE_METRIC, "steps": 30}).pruner == "median"
    assert choice_for(200, objective={**ONE_METRIC, "steps": 1}).pruner == "none"
    # What finished trials did overrides what the spec announced.
    assert choice_for(200, reports=False, objective={**ONE_METRIC, "steps": 30}).pruner == "none"


def test_objective_steps_with_mutable_parameters_mean_pbt_not_hyperband_nor_cost_aware() -> None:
    """One field, two uses: with mutable parameters, auto reads objective.steps as each member's
    training length (pbt, no pruner), not as Hyperband's rungs; cost-aware search stays off even
    where measured costs would turn it on, and the spec refuses it named."""
    space = {**CONTINUOUS, "lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True, "mutable": True}}
    objective = {**ONE_METRIC, "steps": 30}
    before_any_trial = [
        worst_case_choice(5, searchSpace=space, objective=objective),
        choice_for(200, searchSpace=space, objective=objective),
    ]
    for choice in before_any_trial:
        assert (choice.sampler, choice.pruner, choice.cost_aware) == ("pbt", "none", False)
    spec = spec_with(
        strategy={"sampler": "auto", "pruner": "auto"},
        searchSpace=space,
        objective=objective,
        budget={"maxTrials": 500},
    )
    costs = MeasuredCosts(spread=50.0, slow_seconds=30.0, slow_affordable=5, trials=40)
    measured = choose_strategy(spec, affordable_trials(spec, TrialCost(10.0, "measured")), True, costs)
    assert (measured.sampler, measured.pruner, measured.cost_aware) == ("pbt", "none", False)
    named = {"sampler": "auto", "costAware": True}
    errors = errors_of(strategy=named, searchSpace=space, objective=objective)
    assert any("strategy.costAware" in e and "population-based training" in e for e in errors), errors


# -- cost-aware search ------------------------------------------------------------------------


def costs_choice(spread: float, slow_affordable: int | None, now: bool = False, **strategy: Any) -> Any:
    spec = spec_with(strategy={"sampler": "auto", "pruner": "auto", **strategy}, budget={"maxTrials": 500})
    costs = MeasuredCosts(spread=spread, slow_seconds=30.0, slow_affordable=slow_affordable, trials=40)
    return choose_strategy(
        spec, affordable_trials(spec, TrialCost(10.0, "measured")), True, costs, cost_aware_now=now
    )


def test_auto_turns_cost_aware_search_on_when_costs_vary_widely_and_the_budget_is_tight() -> None:
    assert costs_choice(4.0, 99).cost_aware
    assert not costs_choice(3.9, 99).cost_aware  # near uniform
    assert not costs_choice(4.0, 100).cost_aware  # ample
    assert not costs_choice(50.0, None).cost_aware  # no time or money limit
    assert "expected improvement per second" in " ".join(costs_choice(4.0, 99).reasons)
    spec = spec_with(strategy={"sampler": "auto", "pruner": "auto"})
    assert not choose_strategy(spec).cost_aware  # nothing measured yet
    assert "decided once 10 trials finish" in " ".join(choose_strategy(spec).reasons)


def test_cost_aware_search_once_on_stays_on_until_well_below_the_line() -> None:
    assert not costs_choice(3.5, 120).cost_aware  # off: needs 4x and fewer than 100
    assert costs_choice(3.5, 120, now=True).cost_aware  # on: kept from 3x and below 150
    assert not costs_choice(2.9, 120, now=True).cost_aware
    assert not costs_choice(3.5, 150, now=True).cost_aware
    assert not costs_choice(50.0, None, now=True).cost_aware  # no limit at all: off
    assert "once on, until 3x and 150" in " ".join(costs_choice(2.9, 120, now=True).reasons)


def test_cost_aware_search_as_named() -> None:
    assert not costs_choice(50.0, 5, costAware=False).cost_aware
    assert costs_choice(1.0, None, costAware=True).cost_aware
    named_tpe = spec_with(strategy={"sampler": "tpe", "pruner": "none"})
    assert not choose_strategy(named_tpe).cost_aware  # a named sampler keeps its usual choice
    on = spec_with(strategy={"sampler": "tpe", "pruner": "none", "costAware": True})
    assert choose_strategy(on).cost_aware
    assert type(build_sampler("tpe", on, 1, cost_aware=True)).__name__ == "CostAwareTPESampler"
    assert any("costAware" in e for e in errors_of(strategy={"sampler": "random", "costAware": True}))


def test_measured_costs_spread_and_what_the_slow_end_affords() -> None:
    spec = spec_with(budget={"deadline": "1000s", "maxTrials": 5}, parallelism=2)
    assert measure_costs(spec, [1.0] * 9) is None
    costs = measure_costs(spec, [1.0] * 5 + [10.0] * 5, Spent(elapsed_s=500))
    assert costs is not None and costs.spread == pytest.approx(10.0)
    assert costs.slow_affordable == 100  # (1000 - 500) s / 10 s x 2 workers; maxTrials does not count


# -- pruning only where it buys trials ---------------------------------------------------------


def pruning_choice(median_s: float, start_ms: float, *, parallelism: int = 2, pruning_now: bool = True,
                   pruner: str = "auto") -> Any:
    spec = spec_with(strategy={"sampler": "auto", "pruner": pruner}, budget={"maxTrials": 500})
    costs = MeasuredCosts(spread=3.0, slow_seconds=median_s * 2, slow_affordable=None, trials=40,
                          median_seconds=median_s)
    start = StartCost(start_ms / 1000, parallelism)
    return choose_strategy(
        spec, affordable_trials(spec, TrialCost(median_s, "measured")), True, costs, start, pruning_now
    )


def test_auto_stops_pruning_trials_that_cost_few_trial_starts() -> None:
    """Trials of 0.3 s, 40 ms to start each, 2 workers: 3.75 starts per worker, under 10."""
    short = pruning_choice(0.3, 40)
    assert short.pruner == "none"
    assert any("no pruning" in r and "trial starts per worker" in r for r in short.reasons), short.reasons
    assert pruning_choice(0.8, 40).pruner == "hyperband"  # exactly 10 starts per worker
    assert pruning_choice(0.79, 40).pruner == "none"
    assert pruning_choice(0.79, 40, parallelism=1).pruner == "hyperband"  # one worker: 19.75
    assert pruning_choice(600.0, 40).pruner == "hyperband"  # a real training run


def test_pruning_comes_back_only_well_above_the_line() -> None:
    assert pruning_choice(1.2, 40, pruning_now=False).pruner == "none"  # 15 starts: not yet
    assert pruning_choice(1.6, 40, pruning_now=False).pruner == "hyperband"  # 20 starts
    assert pruning_choice(1.2, 40, pruning_now=True).pruner == "hyperband"  # kept while above 10


def test_a_named_pruner_and_unmeasured_costs_are_left_alone() -> None:
    assert pruning_choice(0.1, 40, pruner="hyperband").pruner == "hyperband"
    spec = spec_with(strategy={"sampler": "auto", "pruner": "auto"}, budget={"maxTrials": 500})
    no_costs = choose_strategy(spec, None, True, None, StartCost(0.04, 2))
    assert no_costs.pruner == "hyperband"  # nothing measured yet: the steps decide
    costs = MeasuredCosts(spread=3.0, slow_seconds=1.0, slow_affordable=None, trials=40, median_seconds=0.1)
    assert choose_strategy(spec, None, True, costs, None).pruner == "hyperband"  # the operator: no start cost


def test_the_median_full_trial_is_measured() -> None:
    spec = spec_with(budget={"deadline": "1000s"}, parallelism=2)
    costs = measure_costs(spec, [0.1] * 6 + [0.5] * 5)
    assert costs is not None and costs.median_seconds == pytest.approx(0.1)
