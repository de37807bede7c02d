"""Cost-aware search without storage: the cost model on synthetic costs, TPE by expected
improvement per second, and a seeded study that still repeats exactly.

Trials are simulated on a virtual clock: the sampler proposes a configuration (``study.ask``), the
test computes its value and its cost in seconds, and adds the finished trial with those seconds
as its duration, so nothing here depends on how fast this machine is.
"""

from __future__ import annotations

import datetime
import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from controller import cli
from controller.analysis.data import StudyData
from controller.analysis.report import render_report
from controller.analysis.summary import summarize_study
from controller.spec import parse_study_text
from controller.strategies import Spent
from controller.strategies.cost_aware import CostAwareTPESampler, log_expected_improvement
from controller.strategies.costs import CostModel, full_trial_seconds, measured_seconds, spread
from controller.strategies.live import ATTR_REVISIONS, LiveStrategy
from controller.strategies.reseeding import reseed_for_trial
from controller.studies.record import ATTR_STRATEGY
from tests.support.specs import study_document

START = datetime.datetime(2026, 1, 1)
SPACE = {
    "x": FloatDistribution(0.0, 1.0),
    "y": FloatDistribution(0.0, 1.0),
    "size": FloatDistribution(0.0, 1.0),
}
Params = dict[str, Any]


def finished(
    number: int,
    params: Params,
    seconds: float,
    value: float = 0.0,
    *,
    pruned_at: int | None = None,
    space: dict[str, Any] = SPACE,
) -> FrozenTrial:
    """A finished trial that took ``seconds`` (pruned after step ``pruned_at``, if given)."""
    steps = {step: value for step in range((pruned_at if pruned_at is not None else 9) + 1)}
    return FrozenTrial(
        number=number,
        state=TrialState.PRUNED if pruned_at is not None else TrialState.COMPLETE,
        value=None if pruned_at is not None else value,
        values=None,
        datetime_start=START,
        datetime_complete=START + datetime.timedelta(seconds=seconds),
        params=params,
        distributions={name: space[name] for name in params},
        user_attrs={},
        system_attrs={},
        intermediate_values=steps,
        trial_id=number,
    )


def quality(params: Params) -> float:
    """Maximized; ``size`` does not matter, only where (x, y) lands."""
    return -((params["x"] - 0.7) ** 2 + (params["y"] - 0.3) ** 2)


def cost(params: Params) -> float:
    """From 1 s to 100 s, set by ``size`` alone."""
    return float(math.exp(math.log(100.0) * params["size"]))


def simulate(
    seed: int,
    cost_aware: bool,
    trials: int,
    seconds: Callable[[Params], float] = cost,
    *,
    restart_every: int | None = None,
) -> list[tuple[Params, float, float]]:
    """(params, value, clock when it finished) for each trial, run one after another.

    As the asking side does (:mod:`controller.studies.asking`), the sampler's random states are
    reseeded from (study seed, trial number) before each trial; ``restart_every`` builds a new
    sampler after that many trials, as a process that takes the study over does.
    """
    study = optuna.create_study(direction="maximize", sampler=tpe(seed, cost_aware))
    clock = 0.0
    history: list[tuple[Params, float, float]] = []
    for _ in range(trials):
        if restart_every and study.trials and len(history) % restart_every == 0:
            study.sampler = tpe(seed, cost_aware)
        reseed_for_trial(study.sampler, seed, len(study.trials))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            asked = study.ask(SPACE)
        params = dict(asked.params)
        study.tell(asked, state=TrialState.FAIL)  # only the simulated copy below counts
        took = seconds(params)
        clock += took
        value = quality(params)
        trial = finished(0, params, took, value)
        study.add_trial(trial)
        history.append((params, value, clock))
    return history


def time_to(history: list[tuple[Params, float, float]], threshold: float) -> float:
    return next((clock for _, value, clock in history if value >= threshold), math.inf)


def tpe(seed: int, cost_aware: bool) -> optuna.samplers.BaseSampler:
    options: dict[str, Any] = {"seed": seed, "multivariate": True, "n_startup_trials": 10}
    return CostAwareTPESampler(**options) if cost_aware else optuna.samplers.TPESampler(**options)


# -- the cost model ----------------------------------------------------------------------------


def test_the_model_ranks_configurations_by_a_multiplicative_cost() -> None:
    space = {
        "width": IntDistribution(8, 512, log=True),
        "depth": IntDistribution(1, 4),
        "batch": CategoricalDistribution([16, 64, 256]),
    }

    def seconds(width: int, depth: int, batch: int) -> float:
        return 1e-4 * width**2 * depth * (1.0 + 64 / batch)

    grid = [(w, d, b) for w in (8, 32, 128, 512) for d in (1, 2, 4) for b in (16, 64, 256)]
    trials = [
        finished(n, {"width": w, "depth": d, "batch": b}, seconds(w, d, b), space=space)
        for n, (w, d, b) in enumerate(grid[::2])
    ]
    model = CostModel.fit(trials, space)
    assert model is not None
    for w, d, b in grid[1::2]:  # configurations it never saw
        predicted = model.predict_seconds({"width": w, "depth": d, "batch": b})
        assert seconds(w, d, b) / 3 <= predicted <= seconds(w, d, b) * 3, (w, d, b)
    cheap = model.predict_seconds({"width": 16, "depth": 1, "batch": 256})
    costly = model.predict_seconds({"width": 400, "depth": 4, "batch": 16})
    assert costly > 100 * cheap


def test_a_pruned_trial_costs_what_running_every_step_would() -> None:
    params = {"x": 0.5, "y": 0.5, "size": 0.5}
    pruned = finished(0, params, 2.0, pruned_at=1)  # 2 of 10 steps in 2 s
    assert full_trial_seconds(pruned, steps=10) == pytest.approx(10.0)
    assert full_trial_seconds(pruned, steps=None) == pytest.approx(2.0)
    complete = finished(1, params, 7.0)  # reported steps 0..9
    assert measured_seconds([pruned, complete], declared_steps=None) == pytest.approx([10.0, 7.0])


def test_uniform_or_too_few_costs_give_no_model() -> None:
    def trial(number: int, seconds: float) -> FrozenTrial:
        return finished(number, {"x": number / 20, "y": 0.5, "size": number / 20}, seconds)

    assert CostModel.fit([trial(n, 10.0 + 0.1 * n) for n in range(20)], SPACE) is None  # uniform
    assert CostModel.fit([trial(n, 2.0**n) for n in range(9)], SPACE) is None  # too few
    assert CostModel.fit([trial(n, 2.0**n) for n in range(10)], SPACE) is not None
    assert spread([1.0] * 5) == 1.0


def test_expected_improvement_follows_the_density_ratio() -> None:
    ratios = [-3.0, 0.0, 3.0]
    improvements = log_expected_improvement(np.asarray(ratios), 0.1)
    assert list(improvements) == sorted(improvements)
    assert improvements[-1] < math.log(1 / 0.1)  # bounded by 1/γ


# -- cost-aware TPE ----------------------------------------------------------------------------


def test_a_cheap_good_region_is_found_first() -> None:
    """Good configurations exist at every cost; cost-aware TPE reaches them in less time."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threshold = -0.005
    plain, aware = [], []
    for seed in range(4):
        plain.append(time_to(simulate(seed, False, 60), threshold))
        aware.append(time_to(simulate(seed, True, 60), threshold))
    assert sorted(aware)[1] + sorted(aware)[2] < sorted(plain)[1] + sorted(plain)[2], (aware, plain)
    assert sum(aware) < 0.9 * sum(plain), (aware, plain)


def test_with_uniform_costs_the_choice_is_tpe_s_own() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uniform = lambda params: 10.0 + params["size"]  # noqa: E731 - within a factor of 2
    plain = simulate(3, False, 25, uniform)
    aware = simulate(3, True, 25, uniform)
    assert [p for p, _, _ in aware] == [p for p, _, _ in plain]


def test_a_seeded_cost_aware_study_repeats_exactly() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = simulate(11, True, 25)
    second = simulate(11, True, 25)
    assert [p for p, _, _ in first] == [p for p, _, _ in second]
    assert len({tuple(sorted(p.items())) for p, _, _ in first}) == 25


def test_a_cost_aware_study_taken_over_by_new_processes_asks_what_one_process_would() -> None:
    """Restarts (a new sampler every 4 trials, through the random start-up and the cost-model
    phase) neither replay a configuration nor change what is asked: draws follow the trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uninterrupted = [p for p, _, _ in simulate(5, True, 25)]
    restarted = [p for p, _, _ in simulate(5, True, 25, restart_every=4)]
    assert restarted == uninterrupted
    assert len({tuple(sorted(p.items())) for p in restarted}) == 25


# -- auto, revised as trials finish ---------------------------------------------------------------


LIVE_SEED = 4


def live_study(spec_changes: dict[str, Any]) -> tuple[LiveStrategy, optuna.Study]:
    document = study_document(**spec_changes, trial={"python": "m:f", "maxDuration": "10s"})
    document["spec"]["searchSpace"] = {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "y": {"type": "float", "low": 0.0, "high": 1.0},
        "size": {"type": "float", "low": 0.0, "high": 1.0},
    }
    spec = parse_study_text(yaml.safe_dump(document)).spec
    strategy = LiveStrategy(spec, seed=LIVE_SEED)  # trials are simulated: maxDuration only keeps GP out
    study = optuna.create_study(direction="maximize", sampler=strategy.build_sampler())
    return strategy, study


def add_finished(study: optuna.Study, count: int, seconds: Callable[[Params], float]) -> None:
    for _ in range(count):
        reseed_for_trial(study.sampler, LIVE_SEED, len(study.trials))  # as the asking side does
        asked = study.ask(SPACE)
        params = dict(asked.params)
        study.tell(asked, state=TrialState.FAIL)
        study.add_trial(finished(0, params, seconds(params), quality(params)))


def test_auto_turns_cost_aware_on_from_measured_costs_without_asking_a_configuration_again() -> None:
    strategy, study = live_study(
        {
            "strategy": {"sampler": "auto", "pruner": "none"},
            "budget": {"deadline": "1h", "maxTrials": 500},
            "parallelism": 1,
        }
    )
    assert not strategy.choice.cost_aware and type(study.sampler).__name__ == "TPESampler"
    add_finished(study, 9, cost)
    strategy.refresh(study, study.trials, Spent(elapsed_s=100))
    assert not strategy.choice.cost_aware  # 9 measured: not yet
    before = [t.params for t in study.trials if t.state == TrialState.COMPLETE]
    add_finished(study, 1, cost)
    assert strategy.refresh(study, study.trials, Spent(elapsed_s=100))
    assert strategy.choice.cost_aware and isinstance(study.sampler, CostAwareTPESampler)
    assert study.user_attrs[ATTR_REVISIONS][-1]["costAware"] is True
    # The rebuilt sampler draws for new trial numbers: nothing asked before is asked again.
    add_finished(study, 3, cost)
    after = [t.params for t in study.trials if t.state == TrialState.COMPLETE][10:]
    assert not any(params in before for params in after)


def test_auto_leaves_uniform_costs_and_ample_budgets_alone() -> None:
    strategy, study = live_study(
        {
            "strategy": {"sampler": "auto", "pruner": "none"},
            "budget": {"deadline": "1h", "maxTrials": 500},
            "parallelism": 1,
        }
    )
    add_finished(study, 12, lambda params: 5.0 + params["size"])  # uniform
    strategy.refresh(study, study.trials, Spent(elapsed_s=100))
    assert not strategy.choice.cost_aware
    strategy, study = live_study(
        {
            "strategy": {"sampler": "auto", "pruner": "none"},
            "budget": {"deadline": "30d", "maxTrials": 500},
            "parallelism": 1,
        }
    )
    add_finished(study, 12, cost)  # 30 days afford thousands of the slowest
    strategy.refresh(study, study.trials, Spent(elapsed_s=100))
    assert not strategy.choice.cost_aware


# -- what tunefleet plan and the report say ------------------------------------------------------


def test_plan_says_when_cost_aware_search_is_on_or_will_be_decided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def plan(strategy: dict[str, Any]) -> str:
        document = study_document(strategy=strategy, trial={"python": "m:f", "maxDuration": "60s"})
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        assert cli.main(["plan", str(path)]) == 0
        return capsys.readouterr().out

    named = plan({"sampler": "tpe", "pruner": "none", "costAware": True})
    assert "sampler: tpe (cost-aware: expected improvement per second)" in named
    assert "named in strategy.costAware" in named
    auto = plan({"sampler": "auto", "pruner": "auto"})
    assert "(cost-aware" not in auto and "cost-aware search: decided once 10 trials finish" in auto
    assert "(cost-aware" not in plan({"sampler": "tpe", "pruner": "none"})


def test_the_report_names_the_strategy_in_use_at_the_end() -> None:
    first = {"sampler": "tpe", "pruner": "hyperband", "costAware": False, "reasons": ["started"]}
    revised = {**first, "costAware": True, "reasons": ["cost-aware search: trial costs vary x40"]}
    data = StudyData(
        name="s",
        metrics=["loss"],
        directions=["minimize"],
        user_attrs={ATTR_STRATEGY: first, ATTR_REVISIONS: [revised]},
        trials=[],
    )
    html = render_report(data, summarize_study(data), None, None, [], "test")
    assert "sampler tpe (cost-aware: expected improvement per second), pruner hyperband" in html
    assert "cost-aware search: trial costs vary x40" in html
    data = replace(data, user_attrs={ATTR_STRATEGY: first})
    html = render_report(data, summarize_study(data), None, None, [], "test")
    assert "sampler tpe, pruner hyperband" in html and "(cost-aware" not in html
