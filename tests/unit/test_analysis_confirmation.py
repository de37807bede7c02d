"""The confirmation phase as the planner decides it: pure, no storage, no clock."""

from __future__ import annotations

from typing import Any

import pytest

from controller.planner import BudgetView, Observation, StopReason, TrialView, decide
from controller.planner.confirmation import (
    budget_warning,
    confirmation_step,
    runs_still_needed,
    top_configurations,
)
from controller.spec import StudySpec


def make_spec(**overrides: Any) -> StudySpec:
    document: dict[str, Any] = {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
        "searchSpace": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "budget": {"maxTrials": 4},
        "parallelism": 2,
        "trial": {"python": "m:f", "maxRetries": 1},
        "confirm": {"topK": 2, "repeats": 3},
    }
    document.update(overrides)
    return StudySpec.model_validate(document)


def done(number: int, value: float, x: float | None = None, state: str = "COMPLETE") -> TrialView:
    return TrialView(
        number=number,
        state=state,
        values=(value,) if state == "COMPLETE" else None,
        params={"x": number / 10 if x is None else x},
    )


def observe(
    trials: list[TrialView], live: frozenset[int] = frozenset(), budget: BudgetView | None = None
) -> Observation:
    return Observation(trials=tuple(trials), live=live, now=0.0, started_at=0.0, budget=budget)


SEARCH = [done(0, 0.5), done(1, 0.1), done(2, 0.3), done(3, 0.2)]


def test_top_configurations_are_the_best_distinct_ones() -> None:
    spec = make_spec()
    trials = [*SEARCH, done(4, 0.1, x=0.1)]  # trial 4 repeats trial 1's configuration
    assert top_configurations(spec, trials, 3) == (1, 3, 2)


def test_top_configurations_for_maximize_and_pareto() -> None:
    maximize = make_spec(objective={"metrics": [{"name": "acc", "direction": "maximize"}]})
    assert top_configurations(maximize, SEARCH, 2) == (0, 2)
    pareto = make_spec(
        objective={
            "metrics": [{"name": "loss", "direction": "minimize"}, {"name": "ms", "direction": "minimize"}]
        }
    )
    trials = [
        TrialView(0, "COMPLETE", (1.0, 5.0), {"x": 0.0}),
        TrialView(1, "COMPLETE", (2.0, 6.0), {"x": 0.1}),  # dominated by trial 0
        TrialView(2, "COMPLETE", (3.0, 1.0), {"x": 0.2}),
    ]
    assert top_configurations(pareto, trials, 3) == (0, 2)


def test_search_trial_count_leaves_confirmation_trials_out() -> None:
    spec = make_spec()
    confirm = {4: 1, 5: 1}
    trials = [*SEARCH[:3], done(4, 0.1, x=0.1), done(5, 0.1, x=0.1)]
    plan = decide(spec, observe(trials), confirm)
    assert plan.stop is None
    assert plan.start_new == 1  # 3 of 4 search trials started; confirmation runs not counted


def test_confirmation_starts_after_the_search_and_waits_for_search_trials() -> None:
    spec = make_spec()
    running = [*SEARCH[:3], TrialView(3, "RUNNING", None, {"x": 0.3})]
    waiting = decide(spec, observe(running, live=frozenset({3})))
    assert waiting.stop is StopReason.MAX_TRIALS
    assert waiting.confirm == ()
    assert not waiting.finished
    plan = decide(spec, observe(SEARCH))
    assert plan.stop is StopReason.MAX_TRIALS
    assert plan.confirm == (1, 1)  # parallelism 2: the first two runs of the best configuration
    assert plan.confirming and not plan.finished


def test_confirmation_finishes_when_every_repeat_ran() -> None:
    spec = make_spec()
    confirm = {n: (1 if n < 7 else 3) for n in range(4, 10)}
    trials = [*SEARCH, *(done(n, 0.15, x=confirm[n] / 10) for n in confirm)]
    plan = decide(spec, observe(trials), confirm)
    assert plan.confirm == ()
    assert plan.finished
    assert plan.stop is StopReason.MAX_TRIALS


def test_an_infrastructure_failure_is_replaced_but_an_objective_failure_counts() -> None:
    spec = make_spec()
    lost = TrialView(4, "FAIL", None, {"x": 0.1}, reason="preempted")
    raised = TrialView(5, "FAIL", None, {"x": 0.1}, reason="objectiveRaised")
    confirm = {4: 1, 5: 1}
    step = confirmation_step(spec, [*SEARCH, lost, raised], confirm, frozenset(), slots=10, affordable=100)
    assert step.start == (1, 1, 3, 3, 3)  # config 1: 3 repeats - 1 counted; config 3: all 3


def test_interrupted_search_runs_no_confirmation() -> None:
    spec = make_spec()
    observation = Observation(
        trials=tuple(SEARCH), live=frozenset(), now=0.0, started_at=0.0, interrupted=True
    )
    plan = decide(spec, observation)
    assert plan.stop is StopReason.INTERRUPTED
    assert plan.confirm == ()
    assert plan.finished


def test_search_leaves_the_confirmation_budget_untouched() -> None:
    spec = make_spec(budget={"maxTrials": 100, "cpuHours": 1})
    # 10 trials fit at their worst case; 6 are held back for 2 x 3 confirmation runs.
    budget = BudgetView(limit=1000, settled=0, reserved=0, worst_case=100)
    assert runs_still_needed(spec, [], {}) == 6
    plan = decide(spec, observe([], budget=budget))
    assert plan.start_new == 2  # parallelism
    spent = BudgetView(limit=1000, settled=400, reserved=0, worst_case=100)
    assert decide(spec, observe(SEARCH, budget=spent)).stop is StopReason.BUDGET_EXHAUSTED
    plan = decide(spec, observe(SEARCH, budget=spent))
    assert plan.confirm == (1, 1)


def test_budget_warning_says_when_confirmation_does_not_fit() -> None:
    spec = make_spec()
    assert budget_warning(spec, None) is None
    assert budget_warning(spec, BudgetView(2000, 0, 0, 100)) is None
    exact = budget_warning(spec, BudgetView(600, 0, 0, 100))
    assert exact is not None and "no search trial will start" in exact
    short = budget_warning(spec, BudgetView(500, 0, 0, 100))
    assert short is not None and "only 5 trial(s)" in short and "6 confirmation runs" in short
    tight = budget_warning(spec, BudgetView(700, 0, 0, 100))
    assert tight is not None and "leaves 1 search trial(s), fewer than confirm.topK (2)" in tight
    assert budget_warning(make_spec(confirm=None), BudgetView(100, 0, 0, 100)) is None


def test_without_confirm_the_study_finishes_as_before() -> None:
    plan = decide(make_spec(confirm=None), observe(SEARCH))
    assert plan.finished and plan.confirm == () and plan.stop is StopReason.MAX_TRIALS


@pytest.mark.parametrize("field,value", [("topK", 0), ("repeats", 1)])
def test_confirm_settings_are_validated_with_the_field_named(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        make_spec(confirm={field: value})
